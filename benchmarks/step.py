"""Seconds, FLOPs and memory of one MELDAE train step (or forward pass), as JSON.

  python benchmarks/step.py --config Ti112 --mode train [--dtype bf16] [--steps 10]
      [--warmup 2] [--remat none|full|dots|dots_no_batch] [--frames T] [--batch B]
  python benchmarks/step.py --memory-sweep     # S112 train, T=16/32/64 x remat, 1 line each
  python benchmarks/step.py --config Ti112 --export /tmp/ti112   # for torch_port.py --check

The step is the project's: `MELDAE` from its model config, `losses.total_loss` with the
default loss config and `optim.make_optimizer` with the default optimiser config (AdamW
per parameter group + global-norm clipping), as one jit with the state donated; the same
computation as `train.py`'s train step without its sharding and input view ('rgb' is the
identity). Infer is the jitted forward alone. Shapes are in `common.CONFIGS`.

FLOPs come from XLA's cost analysis of the lowered step with the ViT blocks unrolled and
XLA's own ops (`unrolled_flops`): the analysis counts a while loop's body once, and the
CPU custom calls (`meldae_jax/ops/`: the Dense matmuls, the attention's products, the
LayerNorms, the MLP's GELU, the fused AdamW) not at all, so the twin that computes the
same thing with XLA ops is the one counted.
`xla_flops_compiled` is the compiled program's own count (for reference only). With remat
both include the recomputation. The matmul peaks (4096^2 fp32: `jnp.dot`, and the sgemm
path when it is on) are measured in the same run, after the steps, and on the CPU so is
its float32 FMA peak over all cores (`fma_peak.py`, the hardware's limit:
`fraction_of_fma_peak`). On an accelerator,
`mfu` is the step's FLOP rate over the device's datasheet bf16 peak, and
`fraction_of_bf16_matmul_peak` the same over an 8192^2 bf16 `jnp.dot` timed in the run
(`accelerator_figures`; `benchmarks/gpu_suite.sh` runs the GPU rows). `frames_per_s` is
B*T over the median step: each frame is one image through the ViT.

Memory: `xla_*_mib` is XLA's buffer assignment of the compiled step (`xla_total_mib`:
arguments, temporaries and outputs, the donated state once: the step's own peak memory as
XLA plans it); `peak_rss_mib` the process's peak RSS (compilation included),
`steps_peak_rss_mib` the peak while stepping. `--memory-sweep` ends with a summary line
(`common.sweep_summary`): each figure's cut by each remat policy against none.
`minor_faults_per_step` is the median page-fault count of a timed step (XLA's step buffers
faulted in again every step show here), `host_alloc` whether they come from the caching
allocator (`meldae_jax/ops/host_alloc.py`) and `host_alloc_cached_mib` what it holds free.

The machine: `cpu_s_per_step` is the process's CPU time per step (both cores busy: up to
2x the seconds), `steps_steal_fraction` the share of the host's CPU time a shared VM's
hypervisor took while stepping (a slow run with a high one says little), `cpu_*` the
CPU model and whether it has AVX-512, `cpu_gemm` whether the Dense matmuls ran by the
sgemm custom call (on CPUs without AVX-512) and `blas_core` the OpenBLAS kernels it used;
`sgemm_weight_grads` whether the float32 weight gradients did (where XLA's dot runs the
rest).
"""
import argparse
import contextlib
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # configs/ and benchmarks/ from a checkout
  sys.path.insert(0, str(ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position,unused-import
import meldae_jax  # noqa: F401  first: sets the project's XLA flags before JAX starts

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from benchmarks import fma_peak
from configs import common as config_common
from meldae_jax import losses
from meldae_jax import optim
from meldae_jax.models import config as model_config_lib
from meldae_jax.models import meldae
from meldae_jax.ops import blas_attention
from meldae_jax.ops import blas_dot
from meldae_jax.ops import cpu_adamw
from meldae_jax.ops import cpu_bias_gelu
from meldae_jax.ops import cpu_layer_norm
from meldae_jax.ops import host_alloc
# pylint: enable=g-import-not-at-top,wrong-import-position,unused-import

# --dtype -> (model.dtype, model.matmul_dtype): 'bf16' computes the whole model in bf16,
# 'bf16_matmul' only the Dense matmuls' operands (float32 sums and all else, as autocast).
DTYPES = {"fp32": ("float32", ""), "bf16": ("bfloat16", ""),
          "bf16_matmul": ("float32", "bfloat16")}
REMATS = ("none", "full", "dots", "dots_no_batch")
SWEEP_FRAMES = (16, 32, 64)
MIB = 2.0 ** 20


def model_config(shape: common.Shape, dtype: str = "fp32", remat: str = "none",
                 frames: int | None = None, overrides: dict | None = None):
  """The project's model config at `shape` (num_frames = T sizes the temporal emb)."""
  c = model_config_lib.default_model_config()
  c.variant = shape.variant
  c.image_size = shape.image_size
  c.num_frames = frames or shape.frames
  c.num_regions = shape.regions
  c.num_queries = shape.queries
  c.enhancer_heads = shape.heads
  c.enhancer_layers = 1
  c.fusion = "per_frame"
  c.num_classes = common.NUM_CLASSES
  c.dtype, c.matmul_dtype = DTYPES[dtype]
  c.remat_policy = remat
  for key, value in (overrides or {}).items():  # `--model key=value`: before/after figures
    if key not in c:
      raise ValueError(f"--model {key}=...: the model config has no {key!r}")
    old = c[key]
    if isinstance(old, bool):
      value = str(value).lower() in ("1", "true", "yes")
    elif old is not None and not isinstance(old, (tuple, list)):
      value = type(old)(value)
    c[key] = value
  return c


def train_configs():
  """(loss config, optimiser config): the project's defaults (`configs/common.py`)."""
  base = config_common.base_config()
  return base.loss, base.optimizer, int(base.total_steps)


def make_train_step(model, tx, loss_cfg):
  """forward + total loss + backward + clip + AdamW; returns (state, loss aux)."""

  def train_step(state, batch):
    def loss_fn(params):
      out = model.apply({"params": params}, batch["video"],
                        frame_mask=batch["frame_mask"], train=True)
      return losses.total_loss(out, batch, loss_cfg)

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    params, opt_state = optim.apply_gradients(tx, grads, state["opt_state"],
                                              state["params"])
    return dict(step=state["step"] + 1, params=params, opt_state=opt_state), aux

  return train_step


def make_forward(model):
  def forward(params, video, frame_mask):
    return model.apply({"params": params}, video, frame_mask=frame_mask, train=False)
  return forward


def init_params(model, mcfg, seed: int = 0, abstract: bool = False,
                compiler_options: dict | None = None):
  """The model's own initialisers (as `train.py`), unboxed; shapes only if `abstract`."""
  if abstract:
    return jax.eval_shape(_init_fn(model, mcfg), jax.random.key(seed))
  key = (mcfg.to_json(), json.dumps(compiler_options, sort_keys=True))
  with _INIT_LOCK:  # the tests build the same model twice, in two threads
    if key not in _INIT_CACHE:
      _INIT_CACHE[key] = jax.jit(_init_fn(model, mcfg),
                                 compiler_options=compiler_options)
    init = _INIT_CACHE[key]
    return init(jax.random.key(seed))


_INIT_CACHE = {}
_INIT_LOCK = threading.Lock()


def _init_fn(model, mcfg):
  t, s = mcfg.num_frames, mcfg.image_size
  video = jnp.zeros((1, t, s, s, 3), jnp.uint8)
  return lambda rng: nn.meta.unbox(model.init(
      rng, video, frame_mask=jnp.ones((1, t), jnp.float32), train=False)["params"])


def step_fn_and_args(model, mode: str, params, batch, tx=None, loss_cfg=None):
  """The function to jit for `mode`, its donated argnums and its arguments."""
  if mode == "train":
    opt_state = (jax.eval_shape(tx.init, params)
                 if isinstance(jax.tree.leaves(params)[0], jax.ShapeDtypeStruct)
                 else jax.jit(tx.init)(params))
    state = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)
    return make_train_step(model, tx, loss_cfg), (0,), (state, batch)
  if mode == "infer":
    return make_forward(model), (), (params, batch["video"], batch["frame_mask"])
  raise ValueError(f"unknown mode {mode!r}")


def unrolled_flops(mcfg, mode: str, batch, tx=None, loss_cfg=None) -> float | None:
  """FLOPs of the step with the ViT blocks unrolled, from the lowered (unoptimised) HLO.

  XLA's cost analysis counts a while loop's body once, so a scanned encoder
  (`scan_blocks=True`) would be counted as one block of `depth`. The unrolled twin computes
  the same thing; lowering it (no compile) takes seconds on abstract arguments. The
  Bi-LSTM's scan over T is still counted once (< 0.1% of the step at T=16).
  """
  cfg = mcfg.copy_and_resolve_references()
  cfg.scan_blocks = False
  model = meldae.MELDAE(cfg)
  params = init_params(model, cfg, abstract=True)
  fn, _, args = step_fn_and_args(model, mode, params, batch, tx, loss_cfg)
  with xla_ops():  # a custom call has no FLOP count; XLA's ops, same maths
    return cost_flops(jax.jit(fn).lower(*args))


@contextlib.contextmanager
def xla_ops():
  """Within: trace with XLA's own ops, every CPU custom-call path of `meldae_jax/ops`
  off (the AMX products go with `xla_dots`)."""
  with (blas_dot.xla_dots(), blas_attention.xla_attention(),
        cpu_layer_norm.flax_layer_norm(), cpu_bias_gelu.xla_bias_gelu(),
        cpu_adamw.xla_adamw()):
    yield


def flatten_params(tree, prefix: str = "") -> dict:
  """'/'-joined path names (as `optim.path_name`) -> NumPy arrays."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat[prefix + optim.path_name(path)] = np.asarray(leaf)
  return flat


def cost_flops(compiled) -> float | None:
  """XLA's FLOP count of a compiled program (a dict, or a list of one per module)."""
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    return None
  return float(ca["flops"])


def memory_figures(compiled) -> dict:
  """XLA's buffer assignment of the compiled step, MiB (empty when not reported)."""
  try:
    ma = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    ma = None
  if ma is None:
    return {}
  get = lambda name: float(getattr(ma, name, 0) or 0) / MIB  # noqa: E731
  out = dict(xla_temp_mib=get("temp_size_in_bytes"),
             xla_argument_mib=get("argument_size_in_bytes"),
             xla_output_mib=get("output_size_in_bytes"),
             xla_alias_mib=get("alias_size_in_bytes"))
  # Donated state is aliased: its output buffers are the argument's.
  out["xla_total_mib"] = (out["xla_temp_mib"] + out["xla_argument_mib"]
                          + out["xla_output_mib"] - out["xla_alias_mib"])
  return out


def matmul_peak(n: int = 4096, reps: int = 3, dot=jnp.dot,
                dtype=jnp.float32) -> float | None:
  """GFLOP/s of a jitted n x n `dot` in `dtype` (median of `reps`); None if n <= 0."""
  if n <= 0:
    return None
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  dot = jax.jit(dot)
  times = common.time_steps(lambda: dot(a, b).block_until_ready(), reps, 1)
  return 2.0 * n ** 3 / statistics.median(times) / 1e9


def cpu_fma_figures(gflops_per_s: float | None, measure: bool) -> dict:
  """The step's FLOP rate against the cores' float32 FMA peak (`fma_peak.py`), the
  hardware's limit; None where not measured (accelerators, `--peak-size 0`) or where
  there is no C++ compiler to build the measuring loop."""
  figures = dict(fma_peak_gflops_per_s=None, fma_vector_bits=None,
                 fraction_of_fma_peak=None)
  if not measure:
    return figures
  try:
    peak = fma_peak.fma_peak()
  except RuntimeError as e:  # no compiler
    print(f"step.py: no FMA peak: {e}", file=sys.stderr)
    return figures
  rate = peak["fma_peak_gflops_per_s"]
  figures.update(fma_peak_gflops_per_s=rate, fma_vector_bits=peak["fma_vector_bits"],
                 fraction_of_fma_peak=gflops_per_s / rate if gflops_per_s else None)
  return figures


def accelerator_figures(gflops_per_s: float | None, device_kind: str, backend: str,
                        bf16_peak_size: int | None, reps: int = 20) -> dict:
  """MFU: the step's FLOP rate against the device's bf16 peak, as the issue asks.

  `mfu` divides by the datasheet's dense bf16 peak (`common.nominal_bf16_tflops`),
  `fraction_of_bf16_matmul_peak` by an n x n bf16 `jnp.dot` measured in the same run
  (n = `bf16_peak_size`; default 8192 on an accelerator, none on the CPU, where a bf16
  product that size takes minutes). Both count XLA's FLOPs of the step as it is (with
  remat, its recomputation too).
  """
  n = (0 if backend == "cpu" else 8192) if bf16_peak_size is None else bf16_peak_size
  measured = matmul_peak(n, reps, dtype=jnp.bfloat16) if n > 0 else None
  # No datasheet peak for a CPU, so no MFU there.
  return common.mfu_figures(gflops_per_s, "" if backend == "cpu" else device_kind,
                            measured, n)


def export(path: str, model, mcfg, params, batch: dict, loss_cfg, opt_cfg, meta: dict,
           compiler_options: dict | None = None, grads: bool = True) -> str:
  """Writes params, inputs, forward outputs, loss terms and gradients to `path`.npz.

  Everything is computed in one jit with the params as they are (before any step), so
  the PyTorch port can load the same weights and must reproduce the same numbers.
  `grads=False` leaves the gradients out (the backward pass is most of the compile).
  """

  def loss_fn(params, batch):
    out = model.apply({"params": params}, batch["video"],
                      frame_mask=batch["frame_mask"], train=False)
    loss, aux = losses.total_loss(out, batch, loss_cfg)
    return loss, (out, aux)

  def with_grads(params, batch):
    (_, (out, aux)), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    return out, aux, g

  def without_grads(params, batch):
    return loss_fn(params, batch)[1] + (None,)

  out, aux, g = jax.jit(with_grads if grads else without_grads,
                        compiler_options=compiler_options)(params, batch)
  arrays = flatten_params(params, "param/")
  if grads:
    arrays.update(flatten_params(g, "grad/"))
    arrays["grad_norm"] = np.asarray(optax.global_norm(g))
  arrays.update({f"batch/{k}": np.asarray(v) for k, v in batch.items()})
  arrays.update({f"out/{k}": np.asarray(v) for k, v in out.items()})
  arrays.update({f"loss/{k}": np.asarray(v) for k, v in aux.items()})
  meta = dict(meta, model=mcfg.to_dict(), loss_config=loss_cfg.to_dict(),
              optimizer_config=opt_cfg.to_dict())
  arrays["meta"] = np.asarray(json.dumps(meta, default=list))
  os.makedirs(path, exist_ok=True)
  file = os.path.join(path, f"meldae_{meta['config']}.npz")
  np.savez(file, **arrays)
  return file


def run(config: str = "Ti112", mode: str = "train", dtype: str = "fp32",
        remat: str = "none", frames: int | None = None, steps: int = 10,
        warmup: int = 2, peak_size: int = 4096, export_dir: str | None = None,
        seed: int = 0, compiler_options: dict | None = None,
        return_outputs: bool = False, export_grads: bool = True,
        model_overrides: dict | None = None, batch: int | None = None,
        bf16_peak_size: int | None = None, turns: common.Turns | None = None):
  """Builds, compiles and times one configuration; returns the figures.

  `compiler_options` go to XLA (the tests lower the optimisation level: tiny models
  compile for longer than they run); `return_outputs` also returns the last step's
  outputs (the loss terms in train mode), as `(figures, outputs)`; `export_grads`:
  see `export`. `batch` replaces the config's B (the paper trains on 16 clips);
  `bf16_peak_size`: see `accelerator_figures`; `turns`: see `common.Turns`.
  """
  shape = common.with_batch(common.CONFIGS[config], batch)
  t = frames or shape.frames
  mcfg = model_config(shape, dtype, remat, t, model_overrides)
  model = meldae.MELDAE(mcfg)
  loss_cfg, opt_cfg, total_steps = train_configs()
  batch = {k: jnp.asarray(v) for k, v in common.make_batch(shape, t, seed).items()}
  params = init_params(model, mcfg, seed, compiler_options=compiler_options)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))

  figures = dict(config=config, mode=mode, dtype=dtype, remat=remat, frames=t,
                 batch=shape.batch, steps=steps, warmup=warmup, variant=shape.variant,
                 image_size=shape.image_size, params=n_params,
                 scan_blocks=bool(mcfg.scan_blocks), model_overrides=model_overrides or {},
                 xla_flags=os.environ.get("XLA_FLAGS", ""))
  if export_dir:
    figures["export"] = export(export_dir, model, mcfg, params, batch, loss_cfg, opt_cfg,
                               dict(config=config, dtype=dtype, frames=t),
                               compiler_options, export_grads)

  tx = optim.make_optimizer(opt_cfg, total_steps)[0] if mode == "train" else None
  fn, donate, args = step_fn_and_args(model, mode, params, batch, tx, loss_cfg)
  jitted = jax.jit(fn, donate_argnums=donate)

  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile(compiler_options)
  compile_s = time.perf_counter() - t0
  rss_compiled = common.peak_rss_mib()

  holder = {"args": args, "out": None, "faults": []}

  def one_step():
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    _run_step()
    holder["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)

  def _run_step():
    if mode == "train":
      state, aux = compiled(*holder["args"])
      holder["args"] = (state, batch)
      holder["out"] = aux
      jax.block_until_ready((state, aux))  # the update too, not just the loss
    else:
      holder["out"] = jax.block_until_ready(compiled(*holder["args"]))

  times, rss = common.rss_figures(
      lambda: common.time_steps(one_step, steps, warmup, turns) if steps > 0 else [],
      rss_compiled)  # before the matmul peak's own matrices
  figures.update(common.timing_figures(times, shape, t))
  figures["cpu_s_per_step"] = rss.pop("steps_cpu_s") / max(1, steps + warmup)
  figures["compile_seconds"] = compile_s
  # Page faults of a timed step: XLA's step buffers re-faulted each step if not cached.
  timed_faults = holder["faults"][warmup:]
  figures["minor_faults_per_step"] = (int(np.median(timed_faults)) if timed_faults
                                      else None)
  figures.update(rss)
  figures.update(memory_figures(compiled))
  # Scanned blocks counted once, sgemm custom calls not at all: for reference only.
  figures["xla_flops_compiled"] = cost_flops(compiled)
  flops = unrolled_flops(mcfg, mode, batch, tx, loss_cfg)
  figures["flops_per_step"] = flops
  figures["flops_source"] = "xla_cost_analysis(lowered, unrolled blocks, XLA dots)"
  med = figures["median_s"]
  figures["gflops_per_s"] = flops / med / 1e9 if flops and med else None
  peak = matmul_peak(peak_size) if peak_size > 0 else None
  figures["matmul_peak_gflops_per_s"] = peak
  figures["fraction_of_peak"] = (figures["gflops_per_s"] / peak
                                 if peak and figures["gflops_per_s"] else None)
  figures.update(cpu_fma_figures(figures["gflops_per_s"],
                                 jax.default_backend() == "cpu" and peak_size > 0))
  figures["cpu_gemm"] = blas_dot.enabled()  # Dense matmuls by sgemm (ops/blas_dot.py)
  # float32 weight gradients by sgemm where XLA's dot runs the rest
  figures["sgemm_weight_grads"] = (mode == "train" and dtype == "fp32"
                                   and blas_dot.sgemm_weight_grads())
  figures["blas_core"] = blas_dot.info().get("core") if figures["cpu_gemm"] else None
  alloc = host_alloc.stats()  # XLA's big host buffers cached (ops/host_alloc.py)
  figures["host_alloc"] = alloc["reserved"] > 0
  figures["host_alloc_cached_mib"] = alloc["cached"] / 2**20
  figures["sgemm_peak_gflops_per_s"] = (
      matmul_peak(peak_size, dot=blas_dot.gemm) if figures["cpu_gemm"] else None)
  out = holder["out"]
  if out is not None:
    if mode == "train":
      figures["loss"] = float(out["loss"])
    else:
      figures["loc_logits_finite"] = bool(np.all(np.isfinite(np.asarray(
          out["loc_logits"]))))
  dev = jax.devices()[0]
  figures.update(accelerator_figures(figures["gflops_per_s"], dev.device_kind,
                                     jax.default_backend(), bf16_peak_size))
  figures.update(jax_version=jax.__version__, flax_version=flax.__version__,
                 backend=jax.default_backend(), device_kind=dev.device_kind,
                 device_count=jax.device_count(), **common.host_figures())
  return (figures, out) if return_outputs else figures


def memory_sweep(frames=SWEEP_FRAMES, remats=("none", "full", "dots"), steps: int = 2,
                 warmup: int = 1, config: str = "S112", dtype: str = "fp32") -> list:
  """One fresh process per (T, remat), so each peak RSS is that configuration's own."""
  rows = []
  for t in frames:
    for remat in remats:
      cmd = [sys.executable, __file__, "--config", config, "--mode", "train",
             "--dtype", dtype, "--remat", remat, "--frames", str(t), "--steps",
             str(steps), "--warmup", str(warmup), "--peak-size", "0"]
      proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
      lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
      if proc.returncode or not lines:
        row = dict(config=config, frames=t, remat=remat, error=proc.stderr[-2000:])
      else:
        full = json.loads(lines[-1])
        keep = ("config", "mode", "dtype", "remat", "frames", "batch", "steps",
                "median_s", "min_s", "max_s", "flops_per_step", "compile_seconds",
                "peak_rss_mib", "peak_rss_after_compile_mib", "rss_before_steps_mib",
                "steps_peak_rss_mib", "xla_temp_mib", "xla_total_mib", "loss",
                "cpu_model_name", "cpu_family", "cpu_model")
        row = {k: full.get(k) for k in keep}
      row["kind"] = "memory_sweep"
      common.emit(row)
      rows.append(row)
  common.emit(dict(kind="memory_sweep_summary", **common.sweep_summary(rows)))
  return rows


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default=None, choices=sorted(common.CONFIGS),
                 help="default Ti112 (S112 for --memory-sweep); 'tiny' is for the tests")
  p.add_argument("--mode", default="train", choices=("train", "infer"))
  p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
  p.add_argument("--remat", default="none", choices=REMATS)
  p.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                 help="model config override, e.g. scan_blocks=false (repeatable)")
  p.add_argument("--frames", type=int, default=None, help="T (default: the config's)")
  p.add_argument("--batch", type=int, default=None,
                 help="B clips (default: the config's; the paper's batch is 16)")
  p.add_argument("--bf16-peak-size", type=int, default=None,
                 help="side of the bf16 matmul measuring the MFU peak (default 8192 on "
                      "an accelerator, 0 = skip on the CPU)")
  p.add_argument("--steps", type=int, default=None,
                 help="timed steps, default 10 (2 per sweep run); 0: none")
  p.add_argument("--warmup", type=int, default=None, help="default 2 (1 per sweep run)")
  p.add_argument("--peak-size", type=int, default=4096,
                 help="side of the fp32 matmul measuring the peak (0: skip)")
  p.add_argument("--export", default=None, metavar="DIR",
                 help="write params/inputs/outputs/loss/grads for torch_port.py --check")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--turns", default=None, metavar="R,W",
                 help="pipes from compare.py --lockstep: timed steps in turns")
  p.add_argument("--memory-sweep", action="store_true",
                 help="S112 train at T=16/32/64 x remat (--sweep-remat), a process each")
  p.add_argument("--sweep-remat", default="none,full,dots")
  p.add_argument("--sweep-frames", default=",".join(map(str, SWEEP_FRAMES)))
  return p.parse_args(argv)


def main(argv=None):
  a = parse_args(argv)
  if a.memory_sweep:
    memory_sweep(tuple(int(x) for x in a.sweep_frames.split(",")),
                 tuple(a.sweep_remat.split(",")),
                 steps=2 if a.steps is None else a.steps,
                 warmup=1 if a.warmup is None else a.warmup,
                 config=a.config or "S112", dtype=a.dtype)
    return
  common.emit(run(a.config or "Ti112", a.mode, a.dtype, a.remat, a.frames,
                  10 if a.steps is None else a.steps,
                  2 if a.warmup is None else a.warmup, a.peak_size, a.export, a.seed,
                  model_overrides=dict(kv.split("=", 1) for kv in a.model),
                  batch=a.batch, bf16_peak_size=a.bf16_peak_size,
                  turns=common.Turns(a.turns) if a.turns else None))


if __name__ == "__main__":
  main()
