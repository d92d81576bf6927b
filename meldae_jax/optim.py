"""AdamW with per-group learning rates chosen by regex over parameter paths.

The optimiser config (see `configs/common.py`) holds a table of `(regex, lr)` pairs. Each
parameter is named by its '/'-joined path (e.g. `backbone/Transformer/encoder_norm/scale`)
and goes to the first group whose regex matches the whole name; a parameter no group
covers is an error naming it. A group whose learning rate is 0 (or None) is frozen:
`optax.set_to_zero()`, and its gradients take no part in the clipping norm.

Chain: [freeze] -> global-norm clipping -> optax.partition(AdamW per group, each with
its own warmup + cosine schedule), optionally wrapped in `optax.MultiSteps` for gradient
accumulation.

Train steps call `apply_gradients`, which runs that chain as `tx.update` and
`optax.apply_updates` do, or, on one CPU device, as one fused call over every trainable
parameter (`ops/cpu_adamw.py`): same state, same maths, values equal to float32 rounding.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

from absl import logging
from flax.core import meta
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from meldae_jax.ops import cpu_adamw

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

  A group that labels no parameter is a WARNING naming it: a typo in its regex, or an
  earlier group taking all its matches, would train those parameters at another rate;
  but one table may serve several models (the enhancer-free ablation has no `enhancer/`
  parameters), so it is not an error.

  Raises:
    ValueError: naming every parameter that no group's regex covers.
  """
  compiled = [(re.compile(rx), lr) for rx, lr in groups]
  uncovered, names, used = [], [], set()

  def label(path, _):
    name = path_name(path)
    names.append(name)
    for i, (rx, lr) in enumerate(compiled):
      if rx.fullmatch(name):
        used.add(i)
        return FROZEN if not lr else f"group_{i}"
    uncovered.append(name)
    return None

  labels = jax.tree_util.tree_map_with_path(label, params, is_leaf=_is_box)
  if uncovered:
    raise ValueError(
        f"Parameter(s) not covered by any optimizer group {[rx for rx, _ in groups]}: "
        f"{', '.join(repr(n) for n in uncovered)}; add a regex (e.g. ('.*', lr)) for them.")
  unused = tuple(tuple(groups[i]) for i in range(len(groups)) if i not in used)
  if names and unused and (unused, names[0]) not in _WARNED:
    _WARNED.add((unused, names[0]))
    logging.warning("Optimizer group(s) %s label no parameter (first match wins; the "
                    "parameters are named like %r): check their regex.", list(unused),
                    names[0])
  return labels


_WARNED: set = set()  # group_labels runs at every trace: one warning per table


def make_schedule(lr: float, opt_cfg: ml_collections.ConfigDict,
                  total_steps: int) -> Callable[[Any], Any]:
  """Linear warmup from 0 to `lr` over `warmup_steps`, then cosine to `lr * end_lr_factor`
  at `total_steps` ('warmup_cosine') or `lr` to the end ('constant'; the base config's
  warmup applies to it too: 0 turns it off)."""
  schedule = opt_cfg.get("schedule", "warmup_cosine")
  warmup = int(opt_cfg.get("warmup_steps", 0))
  if schedule == "constant":
    if not warmup:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
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


def _check_decay_mask(params, regex: str | None, trainable) -> None:
  """A WARNING (once per regex and model) when weight decay is on and `regex` names no
  trainable parameter: a regex of another naming (torch's '.*weight') or one that covers
  only frozen groups would decay nothing."""
  if not regex:
    return
  decayed = jax.tree.leaves(_decay_mask(params, regex))
  names = [path_name(p) for p, _ in
           jax.tree_util.tree_leaves_with_path(params, is_leaf=_is_box)]
  if (names and not any(d and t for d, t in zip(decayed, jax.tree.leaves(trainable)))
      and (regex, names[0]) not in _WARNED):
    _WARNED.add((regex, names[0]))
    logging.warning("optimizer.weight_decay_regex %r names no trainable parameter (the "
                    "parameters are named like %r): weight decay does nothing.", regex,
                    names[0])


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
  if int(total_steps) % accum:
    logging.warning("total_steps %d is not a multiple of grad_accum_steps %d: the last %d "
                    "micro-batch(es) are computed and go into no update.", int(total_steps),
                    accum, int(total_steps) % accum)
  warmup = int(opt_cfg.get("warmup_steps", 0))
  if warmup >= update_steps:  # 'constant' warms up too: its rate never reaches `lr` either
    cosine = opt_cfg.get("schedule", "warmup_cosine") == "warmup_cosine"
    logging.warning("optimizer.warmup_steps %d (updates) >= the run's %d updates "
                    "(total_steps %d / grad_accum_steps %d): the whole run is warmup, "
                    "%s.", warmup, update_steps, int(total_steps), accum,
                    "no cosine decay" if cosine else "the learning rate never reaches its "
                    "value")
  wd = float(opt_cfg.get("weight_decay", 0.0))
  wd_regex = opt_cfg.get("weight_decay_regex", ".*kernel")
  b1, b2, eps = (float(opt_cfg.get(k, v)) for k, v in (("b1", 0.9), ("b2", 0.999),
                                                       ("eps", 1e-8)))
  clip_norm = float(opt_cfg.get("clip_norm") or 0)
  wd_mask = (lambda p: _decay_mask(p, wd_regex)) if wd_regex else None

  schedules, transforms = {}, {FROZEN: optax.set_to_zero()}
  for i, (_, lr) in enumerate(groups):
    if not lr:
      continue
    sched = make_schedule(float(lr), opt_cfg, update_steps)
    schedules[f"group_{i}"] = sched
    transforms[f"group_{i}"] = optax.adamw(sched, b1=b1, b2=b2, eps=eps,
                                           weight_decay=wd, mask=wd_mask)

  labels = lambda params: group_labels(params, groups)
  is_trainable = lambda params: jax.tree.map(lambda l: l != FROZEN, labels(params))

  def is_frozen(params):
    trainable = is_trainable(params)
    if wd:
      _check_decay_mask(params, wd_regex, trainable)
    return jax.tree.map(lambda t: not t, trainable)

  chain = [
      # Frozen gradients are zeroed first so that they do not count in the clip norm.
      optax.masked(optax.set_to_zero(), is_frozen),
  ]
  if clip_norm:
    chain.append(optax.clip_by_global_norm(clip_norm))
  chain.append(optax.partition(transforms, labels))
  tx = optax.chain(*chain)
  if accum > 1:
    return optax.MultiSteps(tx, every_k_schedule=accum), schedules
  fused = _AdamWChain(*tx)
  fused.plan = _FusedPlan(groups=tuple(groups), schedules=schedules, b1=b1, b2=b2, eps=eps,
                          weight_decay=wd, wd_regex=wd_regex, clip_norm=clip_norm)
  return fused, schedules


class _AdamWChain(optax.GradientTransformationExtraArgs):
  """`make_optimizer`'s chain (its `init` and `update` unchanged) with the `plan` that
  lets `apply_gradients` run it as one fused call."""


@dataclasses.dataclass(frozen=True)
class _FusedPlan:
  """`make_optimizer`'s chain (freeze, clip, AdamW per group) as `cpu_adamw`'s calls,
  reading and writing the chain's own optax state, so either path continues the other's
  run and checkpoints do not depend on which ran."""
  groups: tuple
  schedules: dict
  b1: float
  b2: float
  eps: float
  weight_decay: float
  wd_regex: str | None
  clip_norm: float

  @staticmethod
  def applies(grads, opt_state, params) -> bool:
    """Whether the calls can run this step: float32 arrays, no boxes, the chain's state."""
    leaves = jax.tree.leaves((grads, params), is_leaf=_is_box)
    return (all(not _is_box(x) and getattr(x, "dtype", None) == jnp.float32
                for x in leaves)
            and isinstance(opt_state, tuple) and len(opt_state) in (2, 3)
            and hasattr(opt_state[-1], "inner_states"))

  def _coefficients(self, count, lr, scale):
    """One group's row of `cpu_adamw.COEFFS` (weight decay before its per-leaf mask)."""
    return jnp.stack([
        scale, jnp.float32(1 - self.b1), jnp.float32(self.b1), jnp.float32(1 - self.b2),
        jnp.float32(self.b2), 1 / (1 - self.b1 ** count), 1 / (1 - self.b2 ** count),
        jnp.float32(self.eps), jnp.float32(self.weight_decay),
        jnp.asarray(lr, jnp.float32)]).astype(jnp.float32)

  def apply(self, grads, opt_state, params):
    """(params, opt_state) after one step, as `tx.update` + `optax.apply_updates`."""
    labels = jax.tree.leaves(group_labels(params, self.groups))
    decays = jax.tree.leaves(_decay_mask(params, self.wd_regex)) if self.wd_regex else None
    p_leaves, p_def = jax.tree.flatten(params)
    g_leaves = jax.tree.leaves(grads)
    partition = opt_state[-1]
    trained = [i for i, label in enumerate(labels) if label != FROZEN]
    # Every AdamW group counts the step, as optax.partition's do, also one whose regex
    # covers no parameter.
    names = sorted(name for name in partition.inner_states if name != FROZEN)

    # The clip: the global norm of the trainable gradients (frozen ones are zeroed first).
    scale = jnp.float32(1.0)
    if self.clip_norm and trained:
      norm = jnp.sqrt(cpu_adamw.sum_squares([g_leaves[i] for i in trained]))
      scale = jnp.where(norm < self.clip_norm, 1.0, self.clip_norm / norm)

    # Each group's AdamW state is (ScaleByAdamState, weight decay's, ScaleByScheduleState);
    # its moments are parameter-shaped trees with MaskedNodes where other groups' are.
    states, rows, mus, nus = {}, [], {}, {}  # mus, nus: name -> (leaves, treedef)
    for name in names:
      adam, *middle, sched = partition.inner_states[name].inner_state
      count = optax.safe_increment(adam.count)
      rows.append(self._coefficients(count, -1 * self.schedules[name](sched.count), scale))
      mus[name], nus[name] = _masked_flatten(adam.mu), _masked_flatten(adam.nu)
      states[name] = (adam._replace(count=count), middle,
                      sched._replace(count=optax.safe_increment(sched.count)))

    p_out = list(p_leaves)
    if trained:
      coeffs = jnp.stack(rows)[np.array([names.index(labels[i]) for i in trained])]
      decay = np.array([1.0 if decays is None or decays[i] else 0.0 for i in trained],
                       np.float32)
      coeffs = coeffs.at[:, cpu_adamw.COEFFS.index("weight_decay")].multiply(decay)
      new_p, new_mu, new_nu = cpu_adamw.adamw_step(
          coeffs, [p_leaves[i] for i in trained], [g_leaves[i] for i in trained],
          [mus[labels[i]][0][i] for i in trained], [nus[labels[i]][0][i] for i in trained])
      for slot, i in enumerate(trained):  # back where the chain keeps them
        p_out[i] = new_p[slot]
        mus[labels[i]][0][i], nus[labels[i]][0][i] = new_mu[slot], new_nu[slot]

    inner_states = dict(partition.inner_states)
    for name in names:
      adam, middle, sched = states[name]
      adam = adam._replace(mu=jax.tree.unflatten(mus[name][1], mus[name][0]),
                           nu=jax.tree.unflatten(nus[name][1], nus[name][0]))
      inner_states[name] = inner_states[name]._replace(inner_state=(adam, *middle, sched))
    opt_state = (*opt_state[:-1], partition._replace(inner_states=inner_states))
    return jax.tree.unflatten(p_def, p_out), opt_state


def _is_masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def _masked_flatten(tree):
  """Leaves and treedef of a moment tree with `MaskedNode`s kept as leaves, so its
  positions are the parameters'."""
  leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_masked)
  return list(leaves), treedef


def trained_grads(grads, groups: Sequence[tuple[str, Any]]) -> list:
  """The gradients of the parameters the optimiser moves (frozen groups left out): the
  norm the clip sees, and a frozen backbone's gradients, unused, are not computed."""
  labels = jax.tree.leaves(group_labels(grads, groups))
  return [g for g, label in zip(jax.tree.leaves(grads), labels) if label != FROZEN]


def global_norm(tree):
  """`optax.global_norm(tree)`, by one call over every leaf where `cpu_adamw` runs."""
  leaves = jax.tree.leaves(tree)
  if (leaves and cpu_adamw.enabled()
      and all(getattr(x, "dtype", None) == jnp.float32 for x in leaves)):
    return jnp.sqrt(cpu_adamw.sum_squares(leaves))
  return optax.global_norm(tree)


def apply_gradients(tx: optax.GradientTransformation, grads, opt_state, params):
  """One optimiser step: (new params, new opt_state).

  `tx.update` and `optax.apply_updates`; for `make_optimizer`'s chain on one CPU device
  with AVX-512 (`cpu_adamw.enabled()`), the same step as one fused call over every
  trainable parameter, which reads and writes the same optax state.
  """
  plan = getattr(tx, "plan", None)
  if (plan is not None and cpu_adamw.enabled()
      and plan.applies(grads, opt_state, params)):
    return plan.apply(grads, opt_state, params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def learning_rates(schedules: dict[str, Callable], step, grad_accum_steps: int = 1):
  """The learning rate of each group that the update of 1-based train step `step` used
  (or, with accumulation, the update its micro-batch goes into), for logging."""
  update = max(int(step) - 1, 0) // max(int(grad_accum_steps), 1)
  return {f"lr/{name}": sched(update) for name, sched in schedules.items()}
