"""Training and evaluation loop of MELDAE: `train_and_evaluate(config, workdir)`.

Reads top to bottom:
  1. Data        open the train / validation / test splits (or take them from a caller).
  2. Model       model + optimiser; abstract train state via `jax.eval_shape`.
  3. Sharding    mesh, logical-axis rules -> state and batch shardings.
  4. State       sharded init, pretrained backbone, or resume (state + data iterator).
  5. Steps       one jitted, donated train step; one jitted eval forward.
  6. Loop        progress lines, scalars, checkpoints, SIGTERM, non-finite guard,
                 periodic validation keeping the best checkpoint.
  7. Final       evaluate the best checkpoint on the test split -> metrics.json,
                 predictions/annotations JSON (the `meldae_jax.evaluate` format).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Any

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from scipy import optimize

from meldae_jax import checkpointing
from meldae_jax import config_check
from meldae_jax import losses
from meldae_jax import metric_writers
from meldae_jax import optim
from meldae_jax import predict
from meldae_jax import sharding
from meldae_jax.data import augment as augment_lib
from meldae_jax.data import build as build_lib
from meldae_jax.data import pipeline
from meldae_jax.data import sources
from meldae_jax.models import build_model


class NonFiniteLossError(RuntimeError):
  """Training hit a NaN/Inf loss; the message names the step and the kept checkpoint."""


class CorpusNotBuiltError(RuntimeError):
  """The configured corpus is not prepared; the message says how to build it."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def model_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The model config with T and K taken from the data settings."""
  m = ml_collections.ConfigDict(cfg.model.to_dict())
  m.num_frames = int(cfg.dataset.window)
  m.num_classes = len(cfg.dataset.classes)
  return m


def _masked_mean(v, mask, axis):
  """Mean of `v` over `axis` where `mask` (broadcast to v) is 1; 0 where nothing is."""
  weight = jnp.broadcast_to(mask, v.shape)
  return (jnp.sum(v * weight, axis=axis, keepdims=True)
          / jnp.maximum(jnp.sum(weight, axis=axis, keepdims=True), 1.0))


def _shifted(x, lag: int):
  """x delayed by `lag` frames along axis 1; the first frame repeats at the start."""
  lag = min(lag, x.shape[1])  # a lag past the window: every frame sees the first one
  return jnp.concatenate([jnp.repeat(x[:, :1], lag, axis=1), x[:, :-lag]], axis=1)


def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
  """(n, n) row-normalised Gaussian blur along one image axis (edges renormalised)."""
  i = np.arange(n, dtype=np.float64)
  g = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
  g[np.abs(i[:, None] - i[None, :]) > 3 * sigma] = 0.0
  return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


def _blur(x, sigma: float):
  """Separable Gaussian blur of (B,T,H,W,C) frames over H and W."""
  gh = jnp.asarray(_gaussian_matrix(x.shape[2], sigma))
  gw = jnp.asarray(_gaussian_matrix(x.shape[3], sigma))
  return jnp.einsum("bthwc,Hh,Ww->btHWc", x, gh, gw)


def _log_scale(gain: float, full: float = 255.0, half: float = 127.0) -> float:
  """`a` with a * log1p(gain * full / a) == half: the knee of `compress`'s curve."""
  if gain * full <= half:
    return float("inf")  # nothing would saturate: stay linear
  # a * log1p(gain * full / a) rises with a, from 0 towards gain * full.
  return float(optimize.brentq(lambda a: a * np.log1p(gain * full / a) - half, 1e-6, 1e6))


def input_transform(video, frame_mask, kind: str = "rgb", gain: float = 4.0,
                    normalize: bool = False, blur: float = 0.0, clip: bool = True,
                    compress: bool = False):
  """Optional on-device view of the input clip, applied before the model (train and eval).

  'rgb': the frames as they are (the paper's input). 'diff': each frame minus the previous
  one; 'diff124': grey frame minus the grey frame 1, 2 and 4 frames back, one lag per
  channel (an ME's 2-7-frame rise shows whole at lag 4, a blink's or a syllable's speed at
  lag 1); 'diff1248': the same plus lag 8 in a fourth channel (a slow speech-emphasis brow
  raise keeps moving for 8 frames, an ME has peaked by then); 'energy124': the magnitudes
  |diff124|, scaled by `gain` from 0 (no motion) up, so a linear patch embedding can sum
  motion energy over a patch, which signed differences (an edge moving gives a +/- pair)
  cancel in; 'dev': each frame minus the window's mean
  frame (over real frames). Signed differences are scaled by `gain` and re-centred on 128
  as uint8, so the model's own normalisation applies unchanged. 'rgb+dev': grey frame, and
  the grey deviation in two channels.
  Motion views make tiny transient facial movements (MEs) visible to a backbone trained
  from scratch; with a pretrained backbone keep 'rgb'. `normalize` divides the
  differences by the clip's contrast (intensity std over the central half of the frames,
  where the aligned face is, relative to 50 grey levels), so low-contrast faces give
  motion of the same strength as high-contrast ones. `blur` (pixels, 0 = off) smooths the
  frames before differencing: sensor noise is independent per pixel while an ME moves
  whole edges, and on dark faces the normalised noise otherwise rivals the ME's signal.
  `clip=False` returns the view as float32 without rounding or clipping to 0..255: with a
  high gain, clipping saturates sensor noise, the face outline's sub-pixel head motion and
  an ME's edge to the same value.
  `compress` maps a signed difference d to sign(d) * a * log1p(gain * |d| / a) instead of
  gain * d, with `a` set so that a full-range difference (255) reaches the edge of the
  uint8 range: the same gain for small motions (noise, MEs), but large ones (blinks, head
  motion, emphasis) keep their order instead of all saturating (at gain 10 on easy
  videos, 1-3% of the pixels of every frame clip, ME frames or not).
  """
  if kind == "rgb":
    return video
  x = video.astype(jnp.float32)
  m = frame_mask.astype(jnp.float32)[:, :, None, None, None]
  smooth = functools.partial(_blur, sigma=blur) if blur > 0 else (lambda v: v)
  if kind == "diff":
    xs = smooth(x)
    d = (xs - _shifted(xs, 1)) * m
  elif kind in ("diff124", "energy124", "diff1248"):
    grey = smooth(jnp.mean(x, axis=-1, keepdims=True))  # blur is linear: grey first
    lags = (1, 2, 4, 8) if kind == "diff1248" else (1, 2, 4)
    d = jnp.concatenate([grey - _shifted(grey, lag) for lag in lags], -1) * m
  elif kind in ("dev", "rgb+dev"):
    xs = smooth(x)
    d = (xs - _masked_mean(xs, m, 1)) * m
  else:
    raise ValueError(
        f"Unknown input transform {kind!r} ({', '.join(config_check.INPUT_TRANSFORMS)}).")
  if normalize:
    h, w = x.shape[2], x.shape[3]
    centre = x[:, :, h // 4:h - h // 4, w // 4:w - w // 4]
    clip_axes = (1, 2, 3, 4)
    var = _masked_mean(jnp.square(centre - _masked_mean(centre, m, clip_axes)), m, clip_axes)
    d = d * (50.0 / jnp.maximum(jnp.sqrt(var), 5.0))
  if compress and np.isfinite(a := _log_scale(gain)):
    d = jnp.sign(d) * a * jnp.log1p(gain * jnp.abs(d) / a)
  else:
    d = gain * d
  out = jnp.abs(d) if kind == "energy124" else 128.0 + d
  if kind == "rgb+dev":
    grey = jnp.mean(x, axis=-1, keepdims=True)
    dg = 128.0 + jnp.mean(d, axis=-1, keepdims=True)
    out = jnp.concatenate([grey, dg, dg], axis=-1)
  if not clip:
    return out
  return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


def say(msg: str) -> None:
  """A progress line: printed by process 0, logged by the others."""
  if jax.process_index() == 0:
    print(msg, flush=True)
  else:
    logging.info(msg)


# ========================================================================================
# 1. Data.
# ========================================================================================


@dataclasses.dataclass
class Splits:
  """Video indices (`sources.VideoIndex`) of the splits; val/test may be None."""
  train: Any
  val: Any = None
  test: Any = None


def _spec(d: ml_collections.ConfigDict) -> str:
  return f"{d.name}/{d.builder_config}" if d.get("builder_config") else d.name


def build_command(d: ml_collections.ConfigDict) -> str:
  return build_lib.build_command(_spec(d), d.data_dir)


def ensure_built(d: ml_collections.ConfigDict):
  """Returns the corpus's builder; builds a generated corpus if allowed, else explains.

  With several processes, process 0 builds while the others wait (all at once into one
  shared data_dir, every process but the last to finish fails renaming its copy into
  place); a process whose data_dir is not shared with process 0 then builds its own.
  """
  builder = build_lib.make_builder(_spec(d), d.data_dir)
  prepared = builder.is_prepared()
  # Every process takes part in the same collectives, whatever its own data_dir holds.
  if sharding.all_processes_agree(prepared):
    return builder
  instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
  if d.get("build_if_missing") and not instructions:
    t0 = time.time()
    error = None
    if jax.process_index() == 0 and not prepared:
      say(f"Building {_spec(d)} into {d.data_dir} (once) ...")
      try:
        builder = build_lib.build(_spec(d), d.data_dir)
      except Exception as e:  # pylint: disable=broad-except
        error = e
    built = sharding.all_processes_agree(error is None)  # the others wait here
    if error is not None:
      raise error
    if not built:
      raise CorpusNotBuiltError(
          f"Process 0 failed to build {_spec(d)} into {d.data_dir} (see its log); "
          f"build it once with: {build_command(d)}")
    if jax.process_index() != 0:
      builder = build_lib.make_builder(_spec(d), d.data_dir)
      if not builder.is_prepared():  # a data_dir of this host only
        builder = build_lib.build(_spec(d), d.data_dir)
    if not prepared:
      say(f"Built {_spec(d)} in {time.time() - t0:.0f}s: "
          f"{ {k: v.num_examples for k, v in builder.info.splits.items()} }")
    return builder
  if prepared:  # others would stop at their error while this one waited for them
    raise CorpusNotBuiltError(
        f"Corpus '{d.name}' is built in {d.data_dir} for this process but not for every "
        f"process of the run: build it where each process reads it ({build_command(d)})")
  lines = build_lib.not_built_lines(builder, _spec(d), d.data_dir, d.get("manual_dir"))
  if instructions:
    lines += ["Manual download (manual_dir layout):",
              "\n".join("  " + l.strip() for l in str(instructions).strip().splitlines())]
  lines.append(f"Then rerun with --config.dataset.data_dir={d.data_dir}.")
  raise CorpusNotBuiltError("\n".join(lines))


def open_splits(cfg: ml_collections.ConfigDict) -> Splits:
  d = cfg.dataset
  builder = ensure_built(d)
  available = set(builder.info.splits.keys())

  def index(split):
    if not split:
      return None
    if split.split("[")[0] not in available:
      logging.warning("Split %r not in %s (has %s).", split, d.name, sorted(available))
      return None
    return sources.VideoIndex(builder.as_data_source(split))

  return Splits(train=index(d.train_split), val=index(d.val_split), test=index(d.test_split))


def augment_config(d: ml_collections.ConfigDict) -> augment_lib.AugmentConfig | None:
  """`dataset.augment` (on/off) with the ranges of `dataset.augment_ranges`."""
  ranges = augment_lib.as_config(dict(d.get("augment_ranges") or {}),
                                 name="dataset.augment_ranges")  # checked even when off
  return ranges if d.augment else None


def train_iterator(cfg, index, image_size: int):
  d = cfg.dataset
  return pipeline.make_train_iterator(
      predict.dataset_view(index, cfg), window=d.window, stride=d.train_stride,
      batch_size=sharding.local_batch_size(cfg.batch_size), classes=tuple(d.classes),
      image_size=image_size, seed=cfg.seed, augment=augment_config(d),
      me_oversample=d.me_oversample, num_threads=d.num_threads,
      worker_count=d.worker_count, cache_videos=d.cache_videos)


# ========================================================================================
# 2-5. Model, shardings, state, steps.
# ========================================================================================


@dataclasses.dataclass
class Trainer:
  """Everything the loop and the evaluator need, built once."""
  cfg: ml_collections.ConfigDict
  model: nn.Module
  tx: optax.GradientTransformation
  schedules: dict
  mesh: jax.sharding.Mesh
  rules: tuple
  state_shardings: Any
  abstract_state: Any
  batch_sharding: Any
  init_fn: Any
  train_step: Any
  eval_step: Any


def check_eval_windows(cfg: ml_collections.ConfigDict) -> None:
  """Evaluation windows must overlap or touch: found before training, not after it."""
  found = config_check.eval_stride_problem(int(cfg.dataset.window),
                                           int(cfg.eval.get("stride") or 0))
  if found:
    raise ValueError(found)


def input_view(cfg: ml_collections.ConfigDict):
  """`view(video, frame_mask)`: the model's input view of uint8 frames, per `cfg.input`
  (its channels may differ from the stored RGB: 'diff1248' has 4)."""
  return functools.partial(input_transform, kind=cfg.input.transform, gain=cfg.input.gain,
                           normalize=bool(cfg.input.get("normalize", False)),
                           blur=float(cfg.input.get("blur", 0.0)),
                           clip=bool(cfg.input.get("clip", True)),
                           compress=bool(cfg.input.get("compress", False)))


def make_trainer(cfg: ml_collections.ConfigDict, devices=None) -> Trainer:
  """Model, optimiser, shardings and jitted steps (on `devices`, default all)."""
  check_eval_windows(cfg)
  predict.frame_step(cfg)  # checked before any data is read
  mcfg = model_config(cfg)
  model = build_model(mcfg)
  tx, schedules = optim.make_optimizer(cfg.optimizer, cfg.total_steps)
  t, s = mcfg.num_frames, mcfg.image_size

  # --- Abstract state (boxed params carry the logical axis names). ---------------------
  view = input_view(cfg)

  def init_params(rng):
    video = view(jnp.zeros((1, t, s, s, 3), jnp.uint8), jnp.ones((1, t), jnp.float32))
    variables = model.init({"params": rng, "dropout": rng}, video,
                           frame_mask=jnp.ones((1, t), jnp.float32), train=False)
    return variables["params"]

  def init_boxed_state(rng):
    params = init_params(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params))

  boxed_state = jax.eval_shape(init_boxed_state, jax.random.key(cfg.seed))

  # --- Shardings from the logical-axis rules (unannotated -> replicated). --------------
  # A mesh or batch this machine's devices cannot split is a bad setting (exit 2, one
  # line), found before anything is written, like those config_check finds without them.
  try:
    mesh = sharding.make_mesh(cfg.mesh, devices)
  except ValueError as e:
    raise config_check.ConfigError(
        f"--config.mesh.data={cfg.mesh.get('data', -1)} --config.mesh.fsdp="
        f"{cfg.mesh.get('fsdp', -1)}: {e}") from None
  rules = sharding.rules(cfg)
  state_sh = sharding.logical_shardings(boxed_state, mesh, rules)
  repl = sharding.replicated(mesh)
  abstract_state = jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
      nn.meta.unbox(boxed_state), state_sh)
  batch_sh = sharding.batch_sharding(mesh, rules)
  try:
    sharding.global_batch_size_ok(cfg.batch_size, mesh, rules)
    sharding.check_batch_split_over_processes(mesh, rules)
    sharding.global_batch_size_ok(int(cfg.eval.batch_size), mesh, rules, "eval.batch_size")
  except ValueError as e:
    raise config_check.ConfigError(str(e)) from None

  # --- Sharded init. ---------------------------------------------------------------------
  def init_state(rng):
    params = nn.meta.unbox(init_params(rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params))

  init_fn = jax.jit(init_state, out_shardings=state_sh)

  # --- Train step: forward + loss + backward + clip + AdamW (in `tx`). -----------------
  loss_cfg = cfg.loss
  groups = [tuple(g) for g in cfg.optimizer.groups]
  dropout_key = jax.random.key(cfg.seed + 1)

  def train_step(state: TrainState, batch):
    rngs = {"dropout": jax.random.fold_in(dropout_key, state.step)}
    video = view(batch["video"], batch["frame_mask"])

    def loss_fn(params):
      out = model.apply({"params": params}, video, frame_mask=batch["frame_mask"],
                        train=True, rngs=rngs)
      return losses.total_loss(out, batch, loss_cfg)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state = optim.apply_gradients(tx, grads, state.opt_state, state.params)
    metrics = {"loss": loss,
               "grad_norm": optim.global_norm(optim.trained_grads(grads, groups)),
               **{f"loss/{k}": v for k, v in aux.items()}}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  train_step = jax.jit(train_step, in_shardings=(state_sh, batch_sh),
                       out_shardings=(state_sh, repl), donate_argnums=(0,))

  # --- Eval forward: probabilities, gathered (replicated) on every process. -----------
  def eval_step(params, batch):
    out = model.apply({"params": params}, view(batch["video"], batch["frame_mask"]),
                      frame_mask=batch["frame_mask"], train=False)
    mask = batch["frame_mask"].astype(jnp.float32)
    state_logit = (jnp.sum(out["state_logits"].astype(jnp.float32) * mask, axis=1)
                   / jnp.maximum(mask.sum(axis=1), 1.0))
    res = {"loc": jax.nn.sigmoid(out["loc_logits"].astype(jnp.float32)),
           "me": jax.nn.sigmoid(out["me_logit"].astype(jnp.float32)),
           "state": jax.nn.sigmoid(state_logit)}
    for k in predict.PASS_THROUGH:
      res[k] = batch[k]
    return res

  eval_step = jax.jit(eval_step, in_shardings=(state_sh.params, batch_sh),
                      out_shardings=repl)

  return Trainer(cfg=cfg, model=model, tx=tx, schedules=schedules, mesh=mesh, rules=rules,
                 state_shardings=state_sh, abstract_state=abstract_state,
                 batch_sharding=batch_sh, init_fn=init_fn, train_step=train_step,
                 eval_step=eval_step)


def load_pretrained(cfg, trainer: Trainer, state: TrainState) -> TrainState:
  """Loads `cfg.model_init` into the backbone (ViT only), keeping `dont_load` at init."""
  if not cfg.get("model_init"):
    if cfg.get("model_init_expected", False):
      logging.warning(
          "model_init is unset: the backbone (%s) trains from scratch with the config's "
          "fine-tuning learning rates %s; the paper's numbers start from a pretrained ViT "
          "(set MELDAE_VIT_INIT or --config.model_init=PATH; "
          "--config.model_init_expected=False silences this)",
          cfg.model.variant, [tuple(g) for g in cfg.optimizer.groups])
    return state
  if cfg.model.get("backbone", "vit") != "vit":
    raise ValueError(
        f"model_init {cfg.model_init!r} is a ViT checkpoint, and model.backbone is "
        f"{cfg.model.backbone!r}, which has no pretrained loader: pass --config.model_init= "
        "to train it from scratch (then give it the rest's learning rate in "
        "optimizer.groups, as launch/sweeps.py's ablation does)")
  from meldae_jax.models import pretrained  # pylint: disable=g-import-not-at-top
  # Only the backbone comes to the host, whole on every process (gathered where it is
  # sharded over several processes' devices: `jax.device_get` would refuse it).
  params = dict(state.params)
  backbone, report = pretrained.load_vit_params(
      sharding.to_host(params["backbone"]), cfg.model_init,
      variant=cfg.get("model_init_variant") or cfg.model.variant,
      dont_load=tuple(cfg.get("dont_load", ())))
  say(f"Loaded {len(report['loaded'])} backbone params from {cfg.model_init} "
      f"({report['format']}); kept at init: {len(report['dont_load'])} by dont_load, "
      f"{len(report['not_in_checkpoint'])} not in the checkpoint (biases it has none of).")
  params = dict(params, backbone=nn.meta.unbox(backbone))
  params = jax.device_put(params, trainer.state_shardings.params)
  return state.replace(params=params)


# ========================================================================================
# 6. Loop.
# ========================================================================================


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def validate(trainer: Trainer, params, index, step: int, writer, ckpt, state) -> dict | None:
  """Chooses the threshold on validation, logs, keeps the best checkpoint."""
  cfg = trainer.cfg
  if index is None:
    return None
  t0 = time.time()
  result = predict.evaluate_split(trainer, params, index, cfg, threshold=None)
  value = result.get(result["threshold_key"])
  say(f"[val] step {step}: f1={_f(result['f1'])} f1_dr={_f(result['f1_dr'])} "
      f"(threshold {result['threshold']:.2f}, chosen by {result['threshold_key']}) "
      f"acc_me={_f(result['acc_me'])} acc_state={_f(result['acc_state'])} "
      f"({time.time() - t0:.0f}s)")
  writer.write_scalars(step, metric_writers.flatten(
      {k: result[k] for k in ("f1", "f1_dr", "uf1", "precision", "recall", "acc_me",
                              "acc_state", "threshold", "f1_speaking", "f1_listening")},
      prefix="val/"))
  if ckpt is not None and value is not None:
    if ckpt.maybe_save_best(step, state, predict.summary(result), float(value),
                            metric=result["threshold_key"]):
      say(f"[val] new best {result['threshold_key']}={value:.4f} at step {step}")
  return result


def check_workdir(workdir: str) -> None:
  """A --workdir that is a file is a one-line error (exit 2), not FileExistsError's
  traceback at os.makedirs."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"{workdir}: --workdir is a file, not a folder")


def make_workdir(workdir: str) -> None:
  check_workdir(workdir)
  os.makedirs(workdir, exist_ok=True)


def _f(v) -> str:
  return "n/a" if v is None else f"{v:.4f}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       splits: Splits | None = None) -> dict:
  """Trains per `config`, keeps checkpoints in `workdir`, returns the final metrics.

  Returns {'status': 'done'|'preempted', ...test metrics}. Raises NonFiniteLossError
  (naming the step) on a NaN/Inf loss and CorpusNotBuiltError for a missing corpus.
  """
  cfg = config
  config_check.check(cfg)  # every bad setting, before config.json or a step
  frame_step = predict.frame_step(cfg)
  sharding.maybe_initialize_distributed(cfg)
  check_workdir(workdir)
  previous = _saved_config(workdir)  # a resumed run's: replaced once its checkpoint fits
  note = frame_step_change(previous, cfg)
  if note:
    say(note)

  # --- 1. Data. --------------------------------------------------------------------------
  splits = splits or open_splits(cfg)
  if splits.train is None:
    raise config_check.ConfigError(  # exit 2, one line: a --config. flag value
        f"No training split {cfg.dataset.train_split!r} in {cfg.dataset.name} "
        "(--config.dataset.train_split)")
  for evaluated in (splits.val, splits.test):  # found before training, not after it
    if evaluated is not None:
      evaluated.check_unique_ids()
  say(f"Data: {cfg.dataset.name} train={len(splits.train)} videos, "
      f"val={len(splits.val) if splits.val else 0}, test={len(splits.test) if splits.test else 0}")
  if frame_step > 1:
    say(f"Data: 1 frame in {frame_step} (dataset.frame_step): a {cfg.dataset.window}-frame "
        f"window spans {cfg.dataset.window * frame_step} of the corpus's frames, which "
        "evaluation scores.")

  # --- 2-5. Model, shardings, steps. ---------------------------------------------------
  trainer = make_trainer(cfg)
  mcfg = model_config(cfg)
  # Only now: a corpus or model that cannot be opened or built leaves no workdir behind.
  make_workdir(workdir)
  if previous is None:
    _save_config(cfg, workdir)
  with jax.set_mesh(trainer.mesh), _explain_mismatch(previous, cfg, workdir):
    return _run(trainer, cfg, mcfg, workdir, splits)


def _config_json(cfg) -> dict:
  """The config as config.json holds it, with the model's T and K as the run uses them
  (`model_config`): a `--config.dataset.window=` override comes after `finalize`."""
  out = json.loads(cfg.to_json_best_effort())
  mcfg = model_config(cfg)
  out["model"].update(num_frames=mcfg.num_frames, num_classes=mcfg.num_classes)
  return out


def _save_config(cfg, workdir: str) -> None:
  """config.json, written by process 0 through a rename: the others (and a resumed run)
  read it, and a half-written one would hide the settings-mismatch hint."""
  checkpointing.write_json(os.path.join(workdir, "config.json"), _config_json(cfg))


def _saved_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


# The data settings that shape the train state besides the model and optimiser sections:
# the window is the model's T, the classes its K.
_STATE_DATA_KEYS = ("window", "classes")


def _settings_diff(saved: dict, cfg, sections=("model", "optimizer", "input")) -> list[str]:
  """'model.x: checkpoint A, now B' for the settings that shape the train state."""
  now = _config_json(cfg)
  then_data, now_data = saved.get("dataset"), now.get("dataset") or {}
  out = [f"dataset.{k}: checkpoint {then_data.get(k)!r}, now {now_data.get(k)!r}"
         for k in _STATE_DATA_KEYS if then_data and then_data.get(k) != now_data.get(k)]
  for sec in sections:
    a, b = saved.get(sec) or {}, now.get(sec) or {}
    for k in sorted(set(a) | set(b)):
      if a.get(k) != b.get(k):
        out.append(f"{sec}.{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}")
  return out


@contextlib.contextmanager
def _explain_mismatch(saved: dict | None, cfg, workdir: str):
  """Adds to a CheckpointMismatchError which settings differ from the saved run's."""
  try:
    yield
  except checkpointing.CheckpointMismatchError as e:
    diff = _settings_diff(saved, cfg) if saved else []
    hint = ("; settings that differ from " + os.path.join(workdir, "config.json") + ": "
            + "; ".join(diff) + ". Pass the checkpoint's values as --config overrides, or "
            "use another --workdir." if diff else
            "; use the config this workdir was trained with, or another --workdir.")
    raise checkpointing.CheckpointMismatchError(str(e) + hint) from e


def validations_left(step: int, total: int, every: int, has_val: bool) -> int:
  """Validations the loop still runs after `step`: every `every` steps before `total`,
  and the final one (with a validation split)."""
  if not has_val:
    return 0
  periodic = (total - 1) // every - step // every if every else 0
  return max(periodic, 0) + 1


def trained_frame_step(saved: dict | None, cfg) -> int | None:
  """The `dataset.frame_step` of the workdir's run (its saved config.json) where it is
  not `cfg`'s, else None."""
  then = ((saved or {}).get("dataset") or {}).get("frame_step", 1)
  return None if saved is None or then == predict.frame_step(cfg) else then


def frame_step_change(saved: dict | None, cfg) -> str | None:
  """A note when the workdir's run was trained at another `dataset.frame_step`: nothing
  in the checkpoint's shapes says so, but the model would see another frame rate."""
  then, now = trained_frame_step(saved, cfg), predict.frame_step(cfg)
  if then is None:
    return None
  return (f"WARNING: dataset.frame_step is {now}, but the run in this workdir was trained "
          f"with {then} (its config.json): the model sees 1 frame in {now} where it "
          f"learnt on 1 in {then}; pass --config.dataset.frame_step={then} to match.")


def schedule_change(saved: dict | None, cfg, schedules: dict, step: int) -> str | None:
  """A note when a resumed run's total_steps differs from the checkpoint's run's: the
  schedules are stretched (or squeezed) to the new length, so the learning rate jumps at
  the resume step (e.g. a cosine near its end climbs back towards its peak)."""
  then = (saved or {}).get("total_steps")
  if then is None or int(then) == int(cfg.total_steps):
    return None
  accum = int(cfg.optimizer.get("grad_accum_steps", 1))
  _, old = optim.make_optimizer(cfg.optimizer, int(then))
  before = optim.learning_rates(old, step + 1, accum)
  after = optim.learning_rates(schedules, step + 1, accum)
  jumps = ", ".join(f"{k[len('lr/'):]} {float(before[k]):.3g} -> {float(after[k]):.3g}"
                    for k in sorted(after) if k in before)
  return (f"total_steps {then} -> {cfg.total_steps}: the learning-rate schedule now spans "
          f"{cfg.total_steps} steps, so at step {step + 1} the rate goes {jumps}.")


def _run(trainer: Trainer, cfg, mcfg, workdir: str, splits: Splits) -> dict:
  # --- 4. State: resume, or init (+ pretrained backbone). ----------------------------
  ckpt = checkpointing.Checkpointer(
      workdir, keep=cfg.checkpoint.keep, best_metric=cfg.checkpoint.best_metric,
      async_save=cfg.checkpoint.async_save)
  train_iter = train_iterator(cfg, splits.train, mcfg.image_size)
  total = int(cfg.total_steps)
  latest = ckpt.latest_step()
  if latest is not None and latest > total:
    ckpt.close()
    raise checkpointing.CheckpointMismatchError(
        f"{workdir}: the latest checkpoint is at step {latest}, beyond total_steps {total}; "
        f"pass --config.total_steps={latest} (or more), or use another --workdir")
  if latest is not None:
    state = ckpt.restore(trainer.abstract_state, train_iter)  # checks the settings fit
    finished = finished_metrics(workdir, total) if latest == total else None
    if finished is not None:
      ckpt.close()
      say(f"Finished already at step {total} ({workdir}/metrics.json); nothing to do. "
          "--mode=evaluate evaluates again, a larger total_steps trains on.")
      return finished
    say(f"Resumed from step {int(state.step)} ({workdir}).")
    note = schedule_change(_saved_config(workdir), cfg, trainer.schedules, int(state.step))
    if note:
      say(note)
  else:
    state = trainer.init_fn(jax.random.key(cfg.seed))
    state = load_pretrained(cfg, trainer, state)
  _save_config(cfg, workdir)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  say(f"Model {mcfg.variant} {mcfg.image_size}px T={mcfg.num_frames}: {n_params:,} params; "
      f"mesh {dict(trainer.mesh.shape)} on {jax.device_count()} devices, "
      f"{jax.process_count()} process(es).")

  # --- 6. Loop. ----------------------------------------------------------------------
  start = int(jax.device_get(state.step))
  writer = metric_writers.MetricWriter(workdir, resume_step=start)
  preempt = checkpointing.PreemptionFlag()
  accum = int(cfg.optimizer.get("grad_accum_steps", 1))
  window, t_log, sums, n_sum = start, time.time(), {}, 0
  val_seconds = 0.0  # the last periodic validation's time, for the ETA
  t_start = time.time()
  status, loss, step = "done", None, start

  def averages() -> dict:  # the train/* means of the steps since the last log line
    return {f"train/{k}": v / n_sum for k, v in sums.items()}

  def timed_validation(at: int) -> float:  # its seconds: steps/s leaves them out
    t0 = time.time()
    validate(trainer, state.params, splits.val, at, writer, ckpt, state)
    return time.time() - t0

  def device_batch(at: int):  # step `at`'s batch on the devices, or the error reading it
    try:
      batch = next(train_iter)
      if at == cfg.debug.nan_at_step:
        batch = dict(batch, frame_mask=np.full_like(batch["frame_mask"], np.nan))
      return sharding.make_global_batch(batch, trainer.batch_sharding)
    except Exception as e:  # pylint: disable=broad-except
      return e  # raised at step `at`: the steps before it log and save first

  try:
    if 0 < start < total and cfg.eval_every and start % cfg.eval_every == 0:
      # A stop on a validation step saves and leaves before validating (a preemption's
      # grace is short): the straight run's validation of this step happens here.
      val_seconds = timed_validation(start)
      t_log += val_seconds
    batch = device_batch(start + 1) if start < total else None
    for step in range(start + 1, total + 1):
      if isinstance(batch, Exception):
        raise batch
      state, metrics = trainer.train_step(state, batch)
      # The next batch is read, stacked and sent to the devices while this step runs
      # (an accelerator waited for it every step); a checkpoint of this step saves the
      # iterator's state from before that read, so resuming is still exact.
      data_state = checkpointing.IteratorState(train_iter)
      batch = device_batch(step + 1) if step < total else None
      metrics = jax.device_get(metrics)
      loss = float(metrics["loss"])
      if not np.isfinite(loss):
        last = ckpt.latest_step()
        raise NonFiniteLossError(
            f"Non-finite loss ({loss}) at step {step}; stopping without saving. "
            f"Last good checkpoint: "
            f"{'step %d in %s' % (last, os.path.join(workdir, 'checkpoints')) if last is not None else 'none'}.")
      for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + float(v)
      n_sum += 1

      if (cfg.log_every and step % cfg.log_every == 0) or step == total:
        dt = time.time() - t_log
        sps = (step - window) / max(dt, 1e-9)
        scalars = averages()
        scalars.update({k: float(v) for k, v in optim.learning_rates(
            trainer.schedules, step, accum).items()})
        scalars["train/steps_per_sec"] = sps
        writer.write_scalars(step, scalars)
        eta = (total - step) / max(sps, 1e-9) + val_seconds * validations_left(
            step, total, cfg.eval_every, splits.val is not None)
        say(f"step {step}/{total} loss {scalars['train/loss']:.4f} "
            f"{sps:.2f} steps/s ETA {_fmt_time(eta)} (elapsed {_fmt_time(time.time() - t_start)})")
        window, t_log, sums, n_sum = step, time.time(), {}, 0

      stop = preempt.should_stop() or step == cfg.debug.stop_at_step
      every = cfg.checkpoint.every_steps  # 0: at the end and on a stop only
      if stop or (every and step % every == 0) or step == total:
        ckpt.save(step, state, data_state)
        # The run resumes from here without logging these steps again: TensorBoard's
        # events (buffered, flushed every 2 min) must not die with a hard kill.
        writer.flush()
      if stop:
        if n_sum:  # the steps since the last log line, not lost with the stop
          writer.write_scalars(step, averages())
        ckpt.wait()
        say(f"Stopping at step {step} (preempted); checkpoint saved, resume with the same "
            f"command.")
        status = "preempted"
        break
      if cfg.eval_every and step % cfg.eval_every == 0 and step != total:
        val_seconds = timed_validation(step)
        t_log += val_seconds  # steps/s is the training rate; the ETA adds validations
  except BaseException:
    if n_sum:  # the steps since the last log line: the lead-up to a NaN stop or a crash
      with contextlib.suppress(Exception):  # the error that stopped the run is raised
        writer.write_scalars(window + n_sum, averages())
    writer.close()  # a NaN stop or a crash: no TensorBoard thread left for shutdown
    preempt.restore_handlers()
    raise
  finally:
    ckpt.wait()
    writer.flush()

  if status == "preempted":
    preempt.restore_handlers()
    writer.close()
    ckpt.close()
    return {"status": status, "step": step, "train_loss": loss}

  # --- 7. Final: validation at the end, best checkpoint on the test split. ----------
  # Still under the SIGTERM handler: a preemption here stops after the final validation
  # (the test evaluation is then redone by the next run, from the saved checkpoint).
  try:
    if splits.val is not None and ckpt.best_info()[0] != total:
      validate(trainer, state.params, splits.val, total, writer, ckpt, state)
    if preempt.should_stop():
      say(f"Stopping before the test evaluation (preempted); the checkpoint at step {total} "
          "is saved, rerun the same command to evaluate it.")
      return {"status": "preempted", "step": total, "train_loss": loss}
    return final_evaluation(trainer, cfg, workdir, splits, ckpt, writer, state,
                            # train_seconds: this run's, steps train_start_step+1..total
                            # (a resumed run's earlier segments are not in it)
                            extra={"train_loss": loss, "train_seconds": time.time() - t_start,
                                   "train_start_step": start, "total_steps": total})
  finally:
    preempt.restore_handlers()
    writer.close()
    ckpt.close()


def _checkpoint_steps(workdir: str) -> list[int]:
  """The steps of the workdir's checkpoints (orbax's numbered folders), none opened."""
  try:
    names = os.listdir(os.path.join(workdir, "checkpoints"))
  except OSError:
    return []
  return sorted(int(n) for n in names if n.isdigit())


def finished_metrics(workdir: str, total: int) -> dict | None:
  """metrics.json of a run that finished at `total` steps, else None. A metrics.json
  without `total_steps` (written by an older `--mode=evaluate`) is of a run finished at
  its last checkpoint's step: read as finished at any step, a LOSO fold was pooled as
  done by a rerun with a larger total_steps instead of training on."""
  try:
    with open(os.path.join(workdir, "metrics.json")) as f:
      result = json.load(f)
  except (OSError, ValueError):
    return None
  if result.get("status") != "done":
    return None
  steps = [result["total_steps"]] if "total_steps" in result else _checkpoint_steps(workdir)
  return result if steps and steps[-1] == total else None


# ========================================================================================
# 7. Final evaluation.
# ========================================================================================


def final_evaluation(trainer: Trainer, cfg, workdir: str, splits: Splits, ckpt, writer,
                     state=None, extra: dict | None = None,
                     rechoose: list[str] | None = None) -> dict:
  """Evaluates the best checkpoint (else `state`) on the test split -> metrics.json.

  The threshold is the one chosen on validation for that checkpoint; without validation
  data it is `cfg.eval.threshold`. With `rechoose` (the settings, changed since training,
  that decide that choice: `threshold_settings_change`) and validation data, it is chosen
  again on validation for the best checkpoint. Predictions/annotations go to
  `workdir/test_*.json`.
  """
  best_step, best_metrics = ckpt.best_info()
  if best_step is not None:
    _, best = ckpt.restore_best(trainer.abstract_state)
    params, threshold = best.params, float(best_metrics["threshold"])
    key = best_metrics.get("threshold_key")
    if rechoose and splits.val is not None:
      val = predict.evaluate_split(trainer, params, splits.val, cfg, threshold=None)
      say(f"[val] {'; '.join(rechoose)} since training: the threshold chosen again on "
          f"validation for the best checkpoint (step {best_step}): {val['threshold']:.2f} "
          f"by {val['threshold_key']} (it was {threshold:.2f})")
      extra = dict(extra or {}, trained_threshold=threshold)
      best_metrics = predict.summary(val)
      threshold, key = float(val["threshold"]), val["threshold_key"]
  else:
    params, threshold, key = state.params, float(cfg.eval.threshold), None
    best_step = int(jax.device_get(state.step))
  result = {"status": "done", "best_step": best_step, "threshold": threshold,
            "validation": best_metrics, **(extra or {})}
  if splits.test is not None:
    test = predict.evaluate_split(trainer, params, splits.test, cfg, threshold=threshold,
                                  threshold_key=key, out_prefix=os.path.join(workdir, "test"))
    result.update(test)
    result["split"] = "test"
    writer.write_scalars(best_step, metric_writers.flatten(
        {k: test[k] for k in ("f1", "f1_dr", "uf1", "precision", "recall", "acc_me",
                              "acc_state")}, prefix="test/"))
    say(f"[test] best step {best_step}, thr {threshold:.2f}: f1={_f(test['f1'])} "
        f"f1_dr={_f(test['f1_dr'])} uf1={_f(test['uf1'])} P={_f(test['precision'])} "
        f"R={_f(test['recall'])} (tp {test['tp']} fp {test['fp']} fn {test['fn']}) "
        f"acc_me={_f(test['acc_me'])} acc_state={_f(test['acc_state'])} "
        f"megc2020_f1={_f(test['megc2020']['f1'])}")
  checkpointing.write_json(os.path.join(workdir, "metrics.json"), result)
  return result


def threshold_settings_change(saved: dict | None, cfg) -> list[str]:
  """The settings that decide the validation's threshold choice (decoding, IoU, candidate
  thresholds, the metric), as 'eval.iou 0.5 -> 0.3', where `cfg`'s differ from the run's
  config.json: a threshold chosen under other decoding is not this decoding's choice."""
  if not saved:
    return []
  old = ml_collections.ConfigDict(saved)
  out = []
  try:
    before, now = predict.decode_kwargs(old), predict.decode_kwargs(cfg)
  except ValueError:  # a saved config this code cannot decode with: say nothing of it
    return []
  for k in now:  # decode_kwargs' keys are the eval.* settings of the same names
    if before.get(k) != now[k]:
      out.append(f"eval.{k} {before.get(k)} -> {now[k]}")
  pairs = (("eval.iou", lambda c: float(c.eval.iou)),
           ("eval.thresholds", lambda c: tuple(float(t) for t in c.eval.thresholds)),
           ("checkpoint.best_metric", lambda c: c.checkpoint.best_metric))
  for name, get in pairs:
    try:
      a, b = get(old), get(cfg)
    except (AttributeError, KeyError, TypeError):
      continue
    if a != b:
      out.append(f"{name} {a} -> {b}")
  return out


# What metrics.json says of the training run (not of the evaluation): kept by
# `--mode=evaluate`, which writes metrics.json again.
TRAINING_KEYS = ("train_loss", "train_seconds", "train_start_step", "total_steps")


def _training_record(workdir: str, latest: int | None) -> dict:
  """The training keys of the workdir's metrics.json when it is of the run whose last
  checkpoint is `latest` (a run extended since, or preempted before, keeps none): an
  evaluation that dropped `total_steps` made a LOSO fold read finished at any steps."""
  try:
    with open(os.path.join(workdir, "metrics.json")) as f:
      old = json.load(f)
  except (OSError, ValueError):
    return {}
  if not isinstance(old, dict) or latest is None or old.get("total_steps") != latest:
    return {}
  return {k: old[k] for k in TRAINING_KEYS if k in old}


def evaluate_only(config: ml_collections.ConfigDict, workdir: str, *,
                  splits: Splits | None = None) -> dict:
  """`--mode=evaluate`: the workdir's best (else latest) checkpoint on the test split.

  metrics.json (and test_*.json) are written again, with the config's decoding settings
  (`eval.*`) and the threshold the best checkpoint's validation chose; where the settings
  that decide that choice differ from the run's (`threshold_settings_change`), it is
  chosen again on validation (metrics.json keeps the old one as `trained_threshold`).
  The training keys (`TRAINING_KEYS`) of the run that made the checkpoint are kept."""
  cfg = config
  config_check.check(cfg)
  if not os.path.isdir(workdir):  # before the checkpoint managers create folders in it
    raise FileNotFoundError(f"No workdir {workdir} to evaluate.")
  sharding.maybe_initialize_distributed(cfg)
  splits = splits or open_splits(cfg)
  trainer = make_trainer(cfg)
  saved = _saved_config(workdir)
  note = frame_step_change(saved, cfg)
  if note:
    say(note)
  with jax.set_mesh(trainer.mesh), _explain_mismatch(saved, cfg, workdir):
    ckpt = checkpointing.Checkpointer(workdir, keep=cfg.checkpoint.keep,
                                      best_metric=cfg.checkpoint.best_metric)
    if ckpt.best_info()[0] is None and ckpt.latest_step() is None:
      ckpt.close()
      raise FileNotFoundError(f"No checkpoint in {workdir} to evaluate.")
    writer = metric_writers.MetricWriter(workdir)
    try:
      state = None
      if ckpt.best_info()[0] is None:
        state = ckpt.restore(trainer.abstract_state)
        if splits.val is not None:
          validate(trainer, state.params, splits.val, int(jax.device_get(state.step)),
                   writer, ckpt, state)
      result = final_evaluation(trainer, cfg, workdir, splits, ckpt, writer, state,
                                extra=_training_record(workdir, ckpt.latest_step()),
                                rechoose=threshold_settings_change(saved, cfg))
    finally:
      writer.close()
      ckpt.close()
  return result
