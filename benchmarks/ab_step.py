"""Before/after of one optimisation, measured in one process with the steps interleaved.

  python benchmarks/ab_step.py --config Ti112 --mode train current xla_dots conv_embed

Each variant is the project's step (`step.py`) with some choices changed, joined by
'+': `xla_dots` (XLA's dot instead of the sgemm custom call, `meldae_jax/ops/blas_dot.py`,
and instead of the AMX call),
`sgemm_dots` (the sgemm custom call also where the project would use XLA's dot, on
AVX-512 CPUs), `flax_attention` (flax's attention module: three q/k/v matmuls instead
of one, `models/attention.py`), `flax_lstm` (flax's Bi-LSTM modules: the input
projection inside the time loop, `models/lstm.py`), `lhs_t_weight_grads` (with
`--dtype bf16_matmul`: the weight gradients as XLA's transposed-lhs dot, which it runs
in float32, instead of a bf16 dot on a row-major copy, `blas_dot.weight_grad`),
`xla_weight_grads` (float32 weight gradients as XLA's transposed-lhs dot on its copy
of the wider operand, instead of `blas_dot.weight_grad`), `copy_weight_grads` (float32
weight gradients as a row-major copy and YNNPACK's dot, session 13's, instead of sgemm
with a transposed A, `blas_dot.sgemm_weight_grads`), `xla_attention` (the
attention's products as XLA's batched dots on transposed q, k, v instead of
`ops/blas_attention.py`'s sgemm per head), `flax_layer_norm` (the ViT's LayerNorms as
flax computes them instead of `ops/cpu_layer_norm.py`'s two custom calls),
`xla_bf16_dots` (with `--dtype bf16_matmul`: XLA's converts and bf16 dots instead of
`ops/amx_gemm.py`'s AMX call on CPUs with AMX), `xla_bias_gelu` (the MLP's bias add
and GELU as XLA's fusions instead of `ops/cpu_bias_gelu.py`'s two custom calls),
`xla_adamw` (the clip and AdamW as optax's XLA ops instead of `ops/cpu_adamw.py`'s two
custom calls),
`xla_qkv_bias` (the q|k|v bias added by XLA to the whole projection before the
sgemm attention's calls, instead of by the calls, `blas_attention.attention`),
`lstm_wh_grad` (the Bi-LSTM
loop's input gradient multiplied by W_h itself, a transposed rhs on every step, instead
of by a copy of W_h^T made before the loop), `conv_embed` (the patch embedding as XLA's
strided convolution instead of patchify + matmul), `erfc_gelu`
(`jax.nn.gelu(approximate=False)` instead of `models/gelu.py`, with `xla_bias_gelu`),
`row_split` (every sgemm
split over the threads by rows, also where columns repack less; set while that
variant's steps run); `current` changes nothing. All variants are
compiled first, then run in turns of `--per-turn` steps for `--rounds` rounds, so the
drift of a shared VM (+-20 % over minutes here) falls on all of them alike. Prints one
JSON line per variant, with the process's CPU time per step (median over the turns):
work done, whatever the VM's hypervisor took meanwhile.
Process-wide settings (XLA flags, malloc tunables) cannot be undone in-process: compare
those across processes (`MELDAE_XLA_FLAGS=0`, `MELDAE_HOST_ALLOC=0`, `GLIBC_TUNABLES=...`).
"""
import argparse
import contextlib
import json
import pathlib
import resource
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
import meldae_jax  # noqa: F401  first: the project's process settings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import step
from meldae_jax.models import attention
from meldae_jax.models import gelu
from meldae_jax.models import lstm
from meldae_jax.models import vit
from meldae_jax.ops import amx_gemm
from meldae_jax.ops import blas_attention
from meldae_jax.ops import blas_dot
from meldae_jax.ops import cpu_adamw
from meldae_jax.ops import cpu_bias_gelu
from meldae_jax.ops import cpu_layer_norm
# pylint: enable=g-import-not-at-top,wrong-import-position

UNDO = ("xla_dots", "sgemm_dots", "conv_embed", "erfc_gelu", "row_split",
        "flax_attention", "flax_lstm", "lhs_t_weight_grads", "lstm_wh_grad",
        "xla_weight_grads", "xla_attention", "copy_weight_grads", "flax_layer_norm",
        "xla_bf16_dots", "xla_bias_gelu", "xla_adamw", "xla_qkv_bias")


class ConvEmbed(nn.Module):
  """The patch embedding as it was: XLA's strided convolution, same parameters."""
  features: int
  patch: int
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (p, p, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype),
                                     (p, p), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


def flax_attention(num_heads, kernel_init, out_kernel_init, dtype, name):
  """The ViT's self-attention as it was: flax's module, three q/k/v matmuls."""
  mha = nn.MultiHeadDotProductAttention(
      num_heads=num_heads, dtype=dtype, kernel_init=kernel_init,
      out_kernel_init=out_kernel_init, qkv_dot_general=blas_dot.dot_general,
      out_dot_general=blas_dot.dot_general, deterministic=True, name=name)
  return lambda x: mha(x, x)


@contextlib.contextmanager
def undone(variant: str):
  """Traces within see the project with the optimisations named in `variant` undone."""
  names = set() if variant == "current" else set(variant.split("+"))
  unknown = names - set(UNDO)
  if unknown:
    raise ValueError(f"unknown variant part(s) {sorted(unknown)}; valid: {UNDO}")
  if {"xla_dots", "sgemm_dots"} <= names:
    raise ValueError(f"{variant!r}: xla_dots and sgemm_dots exclude each other")
  saved = (gelu.exact_gelu, vit.PatchEmbed, attention.SelfAttention, lstm.bilstm,
           blas_dot.weight_grad, lstm.pretransposed, blas_dot.cpu_weight_grads,
           blas_dot.sgemm_weight_grads)
  if "erfc_gelu" in names:
    gelu.exact_gelu = lambda x: jax.nn.gelu(x, approximate=False)
  if "conv_embed" in names:
    vit.PatchEmbed = ConvEmbed
  if "flax_attention" in names:
    attention.SelfAttention = flax_attention
  if "flax_lstm" in names:
    lstm.bilstm = lstm.flax_bilstm
  if "lhs_t_weight_grads" in names:
    blas_dot.weight_grad = blas_dot.transposed_lhs_dot
  if "lstm_wh_grad" in names:
    lstm.pretransposed = lambda wh: None
  if "xla_weight_grads" in names:
    blas_dot.cpu_weight_grads = lambda: False
  if "copy_weight_grads" in names:
    blas_dot.sgemm_weight_grads = lambda: False
  try:
    dots = (blas_dot.xla_dots() if "xla_dots" in names else blas_dot.sgemm_dots()
            if "sgemm_dots" in names else contextlib.nullcontext())
    attn = (blas_attention.xla_attention() if "xla_attention" in names
            else contextlib.nullcontext())
    norm = (cpu_layer_norm.flax_layer_norm() if "flax_layer_norm" in names
            else contextlib.nullcontext())
    amx = (amx_gemm.xla_bf16_dots() if "xla_bf16_dots" in names
           else contextlib.nullcontext())
    gelu_calls = (cpu_bias_gelu.xla_bias_gelu() if names & {"xla_bias_gelu", "erfc_gelu"}
                  else contextlib.nullcontext())
    adamw = cpu_adamw.xla_adamw() if "xla_adamw" in names else contextlib.nullcontext()
    qkv_bias = (blas_attention.xla_bias() if "xla_qkv_bias" in names
                else contextlib.nullcontext())
    with dots, attn, norm, amx, gelu_calls, adamw, qkv_bias:
      yield
  finally:
    (gelu.exact_gelu, vit.PatchEmbed, attention.SelfAttention, lstm.bilstm,
     blas_dot.weight_grad, lstm.pretransposed, blas_dot.cpu_weight_grads,
     blas_dot.sgemm_weight_grads) = saved


def setup(config: str, mode: str, dtype: str):
  """The benchmark step's pieces for one shape: (model, params, batch, tx, loss_cfg);
  tx is None in infer mode."""
  shape = common.CONFIGS[config]
  mcfg = step.model_config(shape, dtype)
  model = step.meldae.MELDAE(mcfg)
  loss_cfg, opt_cfg, total = step.train_configs()
  batch = {k: jnp.asarray(v) for k, v in common.make_batch(shape).items()}
  params = step.init_params(model, mcfg)
  tx = step.optim.make_optimizer(opt_cfg, total)[0] if mode == "train" else None
  return model, params, batch, tx, loss_cfg


def compile_variant(variant: str, mode: str, model, params, batch, tx, loss_cfg):
  """The step traced with `variant`'s optimisations undone, compiled with its state
  donated: (compiled, its arguments)."""
  with undone(variant):
    fn, donate, fn_args = step.step_fn_and_args(model, mode, params, batch, tx, loss_cfg)
    return jax.jit(fn, donate_argnums=donate).lower(*fn_args).compile(), fn_args


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("variants", nargs="+")
  p.add_argument("--config", default="Ti112", choices=sorted(common.CONFIGS))
  p.add_argument("--mode", default="train", choices=("train", "infer"))
  p.add_argument("--dtype", default="fp32", choices=sorted(step.DTYPES))
  p.add_argument("--rounds", type=int, default=8)
  p.add_argument("--per-turn", type=int, default=4)
  args = p.parse_args(argv)

  model, params, batch, tx, loss_cfg = setup(args.config, args.mode, args.dtype)
  compiled, inputs = {}, {}
  for v in args.variants:  # each its own copy of the state: the steps donate it
    compiled[v], inputs[v] = compile_variant(v, args.mode, model,
                                             jax.tree.map(jnp.copy, params), batch, tx,
                                             loss_cfg)
  times = {v: [] for v in args.variants}

  cpu = {v: [] for v in args.variants}  # process CPU seconds per step, one per turn

  def run(v, n, record=True):
    blas_dot.set_column_split("row_split" not in v.split("+"))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(n):
      t0 = time.perf_counter()
      out = jax.block_until_ready(compiled[v](*inputs[v]))
      if record:
        times[v].append(time.perf_counter() - t0)
      if args.mode == "train":
        inputs[v] = (out[0], batch)
    after = resource.getrusage(resource.RUSAGE_SELF)
    if record:
      cpu[v].append((after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime) / n)

  for v in args.variants:
    run(v, 2, record=False)  # warm-up
  for r in range(args.rounds):
    for v in args.variants:
      run(v, args.per_turn)
    print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
  for v in args.variants:
    t = np.asarray(times[v])
    print(json.dumps(dict(config=args.config, mode=args.mode, dtype=args.dtype,
                          variant=v, steps=len(t),
                          median_s=float(np.median(t)),
                          p25_s=float(np.percentile(t, 25)), min_s=float(t.min()),
                          max_s=float(t.max()),
                          cpu_s_per_step=float(np.median(cpu[v])))))


if __name__ == "__main__":
  main()
