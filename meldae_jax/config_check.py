"""The run's settings checked before it writes or trains anything.

A bad `--config.x=` value used to surface late (an unknown `checkpoint.best_metric` or an
empty `eval.thresholds` at the first validation, after training; `eval.batch_size=0` as
a ZeroDivisionError) or never (`total_steps=-1` "finished" at step -1, a negative
warmup, `model.dropout=1.5`, `eval.iou=0`). `check` lists every bad value in one
`ConfigError` (exit status 2, one line), each named as its `--config.` flag.
Settings a config does not have are not checked (a library user's partial config).
"""
import math
import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any

from meldae_jax import losses
from meldae_jax import sharding
from meldae_jax.data import augment as augment_lib
from meldae_jax.data import schema
from meldae_jax.models import vit

# Metrics the best checkpoint and the validation threshold can be chosen by: an F1 of
# `metrics.evaluate`, higher is better (precision or recall alone would pick the
# highest or lowest candidate threshold whatever the model).
SELECTION_METRICS = ("f1", "f1_dr", "uf1", "f1_speaking", "f1_listening")
# The on-device input views of `train.input_transform`.
INPUT_TRANSFORMS = ("rgb", "diff", "diff124", "diff1248", "energy124", "dev", "rgb+dev")
MISSING = object()


class ConfigError(ValueError):
  """Settings no run can use; the message names each as its `--config.` flag."""


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return (isinstance(v, numbers.Real) and not isinstance(v, bool)
          and math.isfinite(float(v)))


def integer(lo: int) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: _is_int(v) and v >= lo), f"an int >= {lo}"


def number(lo: float, hi: float = math.inf, *, lo_open=False, hi_open=False):
  def ok(v):
    return (_is_num(v) and (v > lo if lo_open else v >= lo)
            and (v < hi if hi_open else v <= hi))
  if hi == math.inf:
    return ok, f"a number {'>' if lo_open else '>='} {lo:g}"
  return ok, (f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}"
              f"{')' if hi_open else ']'}")


def choice(*options) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: v in options), "one of " + ", ".join(repr(o) for o in options)


def per_class():
  """A decoding length in seconds (0: off): a number, or {class: number} for some classes."""
  num, _ = number(0.0)
  def ok(v):
    if v is None:
      return True
    if isinstance(v, Mapping) or hasattr(v, "to_dict"):
      v = v.to_dict() if hasattr(v, "to_dict") else v
      return all(k in schema.EXPRESSION_TYPES and (x is None or num(x))
                 for k, x in v.items())
    return num(v)
  return ok, (f"seconds >= 0, or {{class: seconds}} with classes of "
              f"{schema.EXPRESSION_TYPES}")


def classes() -> tuple[Callable[[Any], bool], str]:
  def ok(v):
    v = tuple(v) if isinstance(v, (tuple, list)) else None
    return bool(v) and len(set(v)) == len(v) and all(c in schema.EXPRESSION_TYPES
                                                     for c in v)
  return ok, f"distinct names of {schema.EXPRESSION_TYPES}, at least one"


def thresholds() -> tuple[Callable[[Any], bool], str]:
  num, _ = number(0.0, 1.0, lo_open=True, hi_open=True)
  return (lambda v: isinstance(v, (tuple, list)) and bool(v) and all(map(num, v)),
          "at least one threshold, each in (0, 1)")


def _regex(s) -> bool:
  try:
    re.compile(s)
  except (re.error, TypeError):
    return False
  return True


def param_groups() -> tuple[Callable[[Any], bool], str]:
  lr, _ = number(0.0)
  def ok(v):
    return isinstance(v, (tuple, list)) and bool(v) and all(
        isinstance(g, (tuple, list)) and len(g) == 2 and isinstance(g[0], str)
        and _regex(g[0]) and lr(g[1]) for g in v)
  return ok, "(regex, learning rate >= 0) pairs, at least one"


def mesh_axis() -> tuple[Callable[[Any], bool], str]:
  return (lambda v: _is_int(v) and (v >= 1 or v == -1),
          "an int >= 1, or -1 (the devices left)")


def axis_rules() -> tuple[Callable[[Any], bool], str]:
  """Logical-axis rules: a mesh axis the mesh lacks (a typo, another codebase's 'model')
  was a KeyError or jax's ValueError traceback when the shardings were made."""
  def target(t):
    t = (t,) if isinstance(t, str) else t
    return t is None or (isinstance(t, (tuple, list)) and bool(t) and len(set(t)) == len(t)
                         and all(a in sharding.MESH_AXES for a in t))
  return (lambda v: isinstance(v, (tuple, list)) and all(
      isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[0], str) and target(r[1])
      for r in v),
          f"(logical axis, mesh axes) pairs, the mesh axes one of {sharding.MESH_AXES}, "
          "a tuple of them, or None")


def _vit_variant(v) -> bool:
  try:
    vit.vit_dims(v)
  except ValueError:
    return False
  return True


# (setting, (predicate, what it must be)); a setting absent from the config is skipped.
RULES = (
    ("seed", (_is_int, "an int")),
    ("batch_size", integer(1)),
    ("total_steps", integer(1)),
    ("log_every", integer(0)),
    ("eval_every", integer(0)),
    ("dataset.protocol", choice("fixed", "loso")),
    ("dataset.loso_val_subjects", integer(0)),
    ("dataset.classes", classes()),
    ("dataset.window", integer(1)),
    ("dataset.frame_step", integer(1)),
    ("dataset.train_stride", integer(1)),
    ("dataset.me_oversample", integer(1)),
    ("dataset.num_threads", integer(0)),
    ("dataset.worker_count", integer(0)),
    ("dataset.cache_videos", (lambda v: v is None or (_is_int(v) and v >= 1),
                              "an int >= 1, or None (the default)")),
    ("input.transform", choice(*INPUT_TRANSFORMS)),
    ("input.gain", number(0.0, lo_open=True)),
    ("input.blur", number(0.0)),
    ("model.image_size", integer(1)),
    ("model.num_regions", integer(1)),
    ("model.num_queries", integer(1)),
    ("model.enhancer_layers", integer(1)),
    ("model.enhancer_heads", integer(1)),
    ("model.temporal_hidden", integer(0)),
    ("model.dropout", number(0.0, 1.0, hi_open=True)),
    ("model.dtype", choice("float32", "bfloat16")),
    ("model.matmul_dtype", choice("", None, "bfloat16")),
    ("model.backbone", choice("vit", "resnet50")),
    ("model.resnet_width", integer(0)),
    ("model.temporal", choice("bilstm", "none")),
    ("model.fusion", choice("per_frame", "tokens")),
    ("model.vit_stem", choice("patch", "hmlp")),
    ("model.remat_policy", choice(*vit.REMAT_POLICIES)),
    ("loss.loc_loss", choice(*losses.LOC_LOSSES)),
    ("loss.me_weight", number(0.0)),
    ("loss.state_weight", number(0.0)),
    ("loss.loc_weight", number(0.0)),
    ("loss.boundary_lambda", number(0.0)),
    ("loss.boundary_weight", number(0.0)),
    ("loss.focal_alpha", number(0.0, 1.0)),
    ("loss.focal_gamma", number(0.0)),
    ("loss.tversky_alpha", number(0.0)),
    ("loss.tversky_beta", number(0.0)),
    ("loss.tversky_gamma", number(0.0, lo_open=True)),
    ("optimizer.groups", param_groups()),
    ("optimizer.schedule", choice("warmup_cosine", "constant")),
    ("optimizer.warmup_steps", integer(0)),
    ("optimizer.end_lr_factor", number(0.0)),
    ("optimizer.weight_decay", number(0.0)),
    # '' decayed every parameter here and none in the PyTorch port: say which
    ("optimizer.weight_decay_regex", (lambda v: isinstance(v, str) and bool(v) and _regex(v),
                                      "a non-empty regex ('.*' decays every parameter; "
                                      "optimizer.weight_decay=0 none)")),
    ("optimizer.b1", number(0.0, 1.0, hi_open=True)),
    ("optimizer.b2", number(0.0, 1.0, hi_open=True)),
    ("optimizer.eps", number(0.0, lo_open=True)),
    ("optimizer.clip_norm", (lambda v: v is None or number(0.0)[0](v),
                             "a number >= 0 (0 or None: no clipping)")),
    ("optimizer.grad_accum_steps", integer(1)),
    ("mesh.data", mesh_axis()),
    ("mesh.fsdp", mesh_axis()),
    ("logical_axis_rules", axis_rules()),
    ("checkpoint.every_steps", integer(0)),
    ("checkpoint.keep", integer(1)),
    ("checkpoint.best_metric", choice(*SELECTION_METRICS)),
    ("eval.stride", integer(1)),
    ("eval.batch_size", integer(1)),
    ("eval.thresholds", thresholds()),
    ("eval.threshold", number(0.0, 1.0, lo_open=True, hi_open=True)),
    ("eval.iou", number(0.0, 1.0, lo_open=True)),
    ("eval.merge_seconds", per_class()),
    ("eval.min_seconds", per_class()),
    ("eval.smooth_seconds", per_class()),
    ("eval.max_seconds", per_class()),
    ("eval.max_val_videos", integer(0)),
)


def _get(cfg, path: str):
  node = cfg
  for key in path.split("."):
    if not (isinstance(node, Mapping) or hasattr(node, "get")):
      return MISSING
    node = node.get(key, MISSING)
    if node is MISSING:
      return MISSING
  return node


def _shown(v) -> str:
  v = v.to_dict() if hasattr(v, "to_dict") else v
  return repr(v) if isinstance(v, str) else str(v)


def problems(cfg) -> list[str]:
  """`--config.<setting>=<value>: must be ...` for every setting `RULES` refuses."""
  out = []
  for path, (ok, what) in RULES:
    v = _get(cfg, path)
    if v is not MISSING and not ok(v):
      out.append(f"--config.{path}={_shown(v)}: must be {what}")
  variant = _get(cfg, "model.variant")
  uses_vit = _get(cfg, "model.backbone") in ("vit", MISSING)
  # The ResNet reads the variant too when resnet_width is 0: D is the ViT's width.
  width_from_variant = (_get(cfg, "model.backbone") == "resnet50"
                        and _get(cfg, "model.resnet_width") == 0)
  if (uses_vit or width_from_variant) and variant is not MISSING and not _vit_variant(
      variant):
    out.append(f"--config.model.variant={_shown(variant)}: must be a ViT variant "
               f"<{'|'.join(vit.VARIANTS)}>/<patch>, e.g. 'B/16'")
  size = _get(cfg, "model.image_size")
  patch = vit.vit_dims(variant)["patch"] if uses_vit and _vit_variant(variant) else None
  if patch and isinstance(size, int) and 1 <= size < patch:
    out.append(f"--config.model.image_size={size}: must be at least the patch of "
               f"ViT {variant!r} ({patch} px): no patch, no grid")
  if _get(cfg, "mesh.data") == _get(cfg, "mesh.fsdp") == -1:
    out.append("--config.mesh.data=-1 and --config.mesh.fsdp=-1: at most one may be -1")
  ranges = _get(cfg, "dataset.augment_ranges")
  if ranges is not MISSING and ranges is not None:
    try:  # AugmentConfig's own checks, as the input pipeline makes it
      augment_lib.as_config(dict(ranges), name="--config.dataset.augment_ranges")
    except (TypeError, ValueError) as e:
      out.append(str(e).replace("augment ", "--config.dataset.augment_ranges.", 1))
  weights = [_get(cfg, f"loss.{k}_weight") for k in ("me", "state", "loc")]
  if all(_is_num(w) for w in weights) and not any(weights):
    out.append("--config.loss.me_weight, state_weight and loc_weight are all 0: no loss to "
               "train on")
  window, stride = _get(cfg, "dataset.window"), _get(cfg, "eval.stride")
  if _is_int(window) and _is_int(stride) and window >= 1 and stride >= 1:
    found = eval_stride_problem(window, stride)  # the per-setting rules name the rest
    if found:
      out.append(f"--config.{found}")
  return out


def eval_stride_problem(window: int, stride: int) -> str | None:
  """Evaluation windows must overlap or touch (`train.make_trainer` checks it too)."""
  if 1 <= stride <= window:
    return None
  return (f"eval.stride {stride} must be in 1..dataset.window ({window}): with a longer "
          "stride the frames between windows would get no score")


def check(cfg) -> None:
  """Raises ConfigError listing every bad setting of `cfg` (nothing is written first)."""
  found = problems(cfg)
  if found:
    raise ConfigError(f"{len(found)} bad config setting(s): " + "; ".join(found))
