"""The ViT MLP's bias add and exact GELU on CPU as two custom calls (forward, backward).

Why: XLA's CPU backend runs elementwise fusions on one core, and its derivative of the
GELU is a second array written in the forward pass. In an S112 train step the MLP's
elementwise work took ~39 ms, ~23 ms of it with the other core idle (`trace_step.py`,
docs/performance.md, session 21). `bias_gelu.cc` adds the bias and applies the GELU in
one pass over rows shared by XLA's thread pool; the backward recomputes the derivative
from the pre-activation as it reads it and sums the bias gradient in the same pass.

`bias_gelu(h, b)` is `models.gelu.exact_gelu(h + b)`: the custom calls where `enabled`
(one CPU device with AVX-512, float32, the handlers built; `MELDAE_CPU_GELU=0` turns it
off), else that expression for XLA. Same maths (erf by the rational interpolant XLA's CPU
backend uses); results differ by a few float32 ulps.
"""
import ctypes
import functools
import pathlib

import jax
import jax.numpy as jnp

from meldae_jax.models import gelu
from meldae_jax.ops import blas_dot
from meldae_jax.ops import native

_SRC = pathlib.Path(__file__).with_name("bias_gelu.cc")
_FWD, _BWD = "meldae_bias_gelu", "meldae_bias_gelu_grad"


@functools.cache
def library() -> ctypes.CDLL:
  """`bias_gelu.cc` built and loaded."""
  return ctypes.CDLL(str(native.build(_SRC)))


def set_plain(on: bool) -> None:
  """Whether the handlers run their plain loops instead of AVX-512 (tests); acts when the
  calls run, not when they are traced."""
  library().meldae_bias_gelu_plain(ctypes.c_int(int(on)))


@functools.cache
def available() -> bool:
  """Builds and registers the two handlers once; False (with one warning) if it cannot."""
  return native.register_or_warn(
      library, {_FWD: "MeldaeBiasGelu", _BWD: "MeldaeBiasGeluGrad"},
      "CPU bias+GELU unavailable, using XLA's")


_FORCED = []  # innermost last: False turns the path off (benchmarks, tests)


def xla_bias_gelu():
  """Within: trace the bias and GELU as XLA ops (benchmarks, tests)."""
  return blas_dot.within(_FORCED, False)


def enabled(dtype) -> bool:
  """Whether a bias+GELU over `dtype` values traced now takes the custom calls."""
  return (blas_dot.path_on(_FORCED, "MELDAE_CPU_GELU", dtype)
          and blas_dot.cpu_has_avx512() and available())


@jax.custom_vjp
def _calls(h, b):
  return _fwd(h, b)[0]


def _fwd(h, b):
  y = jax.ffi.ffi_call(_FWD, jax.ShapeDtypeStruct(h.shape, jnp.float32),
                       vmap_method="sequential")(h, b)
  return y, (h, b)


def _bwd(res, dy):
  h, b = res
  return tuple(jax.ffi.ffi_call(
      _BWD, (jax.ShapeDtypeStruct(h.shape, jnp.float32),
             jax.ShapeDtypeStruct(b.shape, jnp.float32)),
      vmap_method="sequential")(dy, h, b))


_calls.defvjp(_fwd, _bwd)


def bias_gelu(h, b):
  """exact_gelu(h + b) for h (..., D) and b (D,)."""
  if not (h.dtype == jnp.float32 and b.dtype == jnp.float32 and h.ndim >= 1
          and b.shape == h.shape[-1:] and enabled(h.dtype)):
    return gelu.exact_gelu(h + b)
  d = h.shape[-1]
  return _calls(h.reshape(-1, d), b).reshape(h.shape)
