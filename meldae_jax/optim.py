"""AdamW with per-group learning rates chosen by regex over parameter paths.

The optimiser config (see `configs/common.py`) holds a table of `(regex, lr)` pairs. Each
parameter is named by its '/'-joined path (e.g. `backbone/Transformer/encoder_norm/scale`)
and goes to the first group whose regex matches the whole name; a parameter no group
covers is an error naming it. A group whose learning rate is 0 (or None) is frozen:
`optax.set_to_zero()`, and its gradients take no part in the clipping norm.

Chain: [freeze] -> global-norm clipping -> optax.partition(AdamW per group, each with
its own warmup + cosine schedule), optionally wrapped in `optax.MultiSteps` for gradient
accumulation.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from flax.core import meta
import jax
import ml_collections
import optax

FROZEN = "frozen"


def _is_box(x) -> bool:
  """Flax partitioning boxes are labelled as one leaf (so `eval_shape(tx.init)` of boxed
  params keeps the logical axis names on the optimiser state)."""
  return isinstance(x, meta.AxisMetadata)


def path_name(path) -> str:
  """'/'-joined name of a pytree path, e.g. ('params', 'backbone', 'cls') -> 'backbone/cls'."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(str(k.name))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(k))
  return "/".join(parts)


def group_labels(params, groups: Sequence[tuple[str, Any]]):
  """Label every parameter with its group's name ('group_<i>', or 'frozen' for lr 0).

  Raises:
    ValueError: naming every parameter that no group's regex covers.
  """
  compiled = [(re.compile(rx), lr) for rx, lr in groups]
  uncovered = []

  def label(path, _):
    name = path_name(path)
    for i, (rx, lr) in enumerate(compiled):
      if rx.fullmatch(name):
        return FROZEN if not lr else f"group_{i}"
    uncovered.append(name)
    return None

  labels = jax.tree_util.tree_map_with_path(label, params, is_leaf=_is_box)
  if uncovered:
    raise ValueError(
        f"Parameter(s) not covered by any optimizer group {[rx for rx, _ in groups]}: "
        f"{', '.join(repr(n) for n in uncovered)}; add a regex (e.g. ('.*', lr)) for them.")
  return labels


def make_schedule(lr: float, opt_cfg: ml_collections.ConfigDict,
                  total_steps: int) -> Callable[[Any], Any]:
  """Linear warmup from 0 to `lr`, then cosine to `lr * end_lr_factor` at `total_steps`."""
  schedule = opt_cfg.get("schedule", "warmup_cosine")
  warmup = int(opt_cfg.get("warmup_steps", 0))
  if schedule == "constant":
    return optax.constant_schedule(lr)
  if schedule != "warmup_cosine":
    raise ValueError(f"Unknown schedule {schedule!r} (expected 'warmup_cosine' or 'constant').")
  decay_steps = max(int(total_steps), warmup + 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=decay_steps,
      end_value=lr * float(opt_cfg.get("end_lr_factor", 0.0)))


def _decay_mask(params, regex: str):
  rx = re.compile(regex)
  return jax.tree_util.tree_map_with_path(
      lambda p, _: bool(rx.fullmatch(path_name(p))), params, is_leaf=_is_box)


def make_optimizer(opt_cfg: ml_collections.ConfigDict, total_steps: int
                   ) -> tuple[optax.GradientTransformation, dict[str, Callable]]:
  """Builds the optimiser and returns it with the per-group lr schedules.

  Args:
    opt_cfg: `config.optimizer`: `groups` ((regex, lr), ...), `warmup_steps`,
      `schedule`, `end_lr_factor`, `weight_decay`, `weight_decay_regex`, `b1`, `b2`,
      `eps`, `clip_norm` (0/None: off), `grad_accum_steps`.
    total_steps: number of train-step calls (micro-batches) of the whole run.

  Returns:
    (transformation, {group_name: schedule}) where schedules count optimiser updates.
  """
  groups = [tuple(g) for g in opt_cfg.groups]
  accum = max(int(opt_cfg.get("grad_accum_steps", 1)), 1)
  update_steps = max(int(total_steps) // accum, 1)
  wd = float(opt_cfg.get("weight_decay", 0.0))
  wd_regex = opt_cfg.get("weight_decay_regex", ".*/kernel")
  wd_mask = (lambda p: _decay_mask(p, wd_regex)) if wd_regex else None

  schedules, transforms = {}, {FROZEN: optax.set_to_zero()}
  for i, (_, lr) in enumerate(groups):
    if not lr:
      continue
    sched = make_schedule(float(lr), opt_cfg, update_steps)
    schedules[f"group_{i}"] = sched
    transforms[f"group_{i}"] = optax.adamw(
        sched, b1=opt_cfg.get("b1", 0.9), b2=opt_cfg.get("b2", 0.999),
        eps=opt_cfg.get("eps", 1e-8), weight_decay=wd, mask=wd_mask)

  labels = lambda params: group_labels(params, groups)
  is_trainable = lambda params: jax.tree.map(lambda l: l != FROZEN, labels(params))
  chain = [
      # Frozen gradients are zeroed first so that they do not count in the clip norm.
      optax.masked(optax.set_to_zero(),
                   lambda p: jax.tree.map(lambda t: not t, is_trainable(p))),
  ]
  if opt_cfg.get("clip_norm"):
    chain.append(optax.clip_by_global_norm(float(opt_cfg.clip_norm)))
  chain.append(optax.partition(transforms, labels))
  tx = optax.chain(*chain)
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum)
  return tx, schedules


def learning_rates(schedules: dict[str, Callable], step, grad_accum_steps: int = 1):
  """Current learning rate of each group at train step `step` (for logging)."""
  update = step // max(int(grad_accum_steps), 1)
  return {f"lr/{name}": sched(update) for name, sched in schedules.items()}
