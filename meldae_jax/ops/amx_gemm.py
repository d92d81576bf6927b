"""bf16-rounded matmuls on Intel's AMX tiles, as one XLA FFI custom call per product.

Why: with `--dtype bf16_matmul` (PyTorch's bf16 autocast: operands rounded to bf16,
float32 sums) XLA's CPU backend converts each float32 operand to bf16 in a pass of its
own and runs the dot through YNNPACK, which on an Intel Xeon with AMX reached 0.85-1.4
TFLOP/s on the ViT's shapes where PyTorch's oneDNN reached 1.6-2.9 (docs/performance.md,
session 19). `amx_gemm.cc` rounds the float32 operands while it packs them into tiles
(round to nearest even, as XLA's convert) and sums on AMX (TDPBF16PS), so
`blas_dot.rounded_gemm` takes it, forward and both gradients, for bf16 rounding on one
CPU device whose CPU has AMX-BF16 (`enabled`). Same products, same rounding of the
operands; the float32 sums differ from XLA's by their order. Like AMX itself (and
XLA's AMX dots), the conversion flushes float32 subnormals (|x| < 1.2e-38) to zero.

`MELDAE_CPU_AMX=0` turns it off (XLA's bf16 dots); `xla_bf16_dots()` does so within a
trace (benchmarks, tests), and so does `blas_dot.xla_dots()` (XLA's dots everywhere:
FLOP counts, reference outputs). The packed operands live in a buffer per calling
thread that grows to the largest call's needs and is kept (for B224's weight
gradients, ~24 MB). The handler is built with the system C++ compiler at first
use (`native.build`); Linux must grant the process AMX's tile state (arch_prctl), which
`available` asks for once.
"""
import ctypes
import functools
import pathlib

import jax.numpy as jnp

from meldae_jax.ops import blas_dot
from meldae_jax.ops import native

_SRC = pathlib.Path(__file__).with_name("amx_gemm.cc")
_TARGET = "meldae_amx_gemm"
_FLAGS = ("amx_tile", "amx_bf16", "avx512_bf16", "avx512bw", "avx512vl")


def cpu_has_amx() -> bool:
  """Whether /proc/cpuinfo lists AMX tiles with bf16 and the AVX-512 parts the packing
  uses (BW, VL, BF16)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      for line in f:
        if line.startswith("flags"):
          flags = set(line.split(":", 1)[1].split())
          return all(flag in flags for flag in _FLAGS)
  except OSError:
    pass
  return False


@functools.cache
def library() -> ctypes.CDLL:
  """`amx_gemm.cc` built and loaded."""
  return ctypes.CDLL(str(native.build(_SRC)))


@functools.cache
def available() -> bool:
  """On a CPU with AMX: builds and registers the handler, and asks Linux for the tile
  state, once; False (with one warning) if any of it fails."""
  def ask_for_tiles(so):
    if not so.meldae_amx_init():
      raise OSError("Linux refused AMX tile data to this process (arch_prctl)")

  return cpu_has_amx() and native.register_or_warn(
      library, {_TARGET: "MeldaeAmxGemm"},
      "AMX bf16 GEMM unavailable, using XLA's bf16 dot", ask_for_tiles)


_FORCED = blas_dot.TraceSettings()  # innermost last: False turns the path off


def xla_bf16_dots():
  """Within: trace bf16-rounded matmuls as XLA's converts and bf16 dots."""
  return blas_dot.within(_FORCED, False)


def enabled(dtype) -> bool:
  """Whether a Dense matmul rounded to `dtype`, traced now, takes the AMX call: bf16,
  one CPU device, not turned off ($MELDAE_CPU_AMX=0, `xla_bf16_dots`,
  `blas_dot.xla_dots`), AMX here."""
  return (blas_dot.path_on(_FORCED, "MELDAE_CPU_AMX", dtype, of=jnp.bfloat16)
          and not blas_dot.within_xla_dots() and available())


def gemm(a, b, trans_a: bool = False, trans_b: bool = False):
  """round(op(a)) @ round(op(b)) in float32, the operands rounded to bf16: a float32
  (M, K), or (K, M) with `trans_a`; b (K, N), or (N, K) with `trans_b`. Not
  differentiable itself (`blas_dot.rounded_gemm` is)."""
  if not available():
    raise RuntimeError("the AMX bf16 GEMM is unavailable on this host")
  return native.gemm_call(_TARGET, a.astype(jnp.float32), b.astype(jnp.float32),
                          trans_a, trans_b)
