"""The ViT MLP's bias add and exact GELU on CPU as two custom calls (forward, backward).

Why: XLA's CPU backend differentiates the GELU by writing its derivative out in the
forward pass, a second array that the backward reads back, and sums the bias gradient in
a reduction of its own. In an S112 train step the MLP's elementwise work and reductions
took ~43 ms (`trace_step.py`, docs/performance.md, session 21). `bias_gelu.cc` adds the
bias and applies the GELU in one pass over rows shared by XLA's thread pool; the
backward recomputes the derivative from the pre-activation as it reads it and sums the
bias gradient in the same pass (train steps 2-5 % faster; the forward alone is level
with XLA's).

`bias_gelu(h, b)` is `models.gelu.exact_gelu(h + b)`: the custom calls where `enabled`
(one CPU device with AVX-512, float32, the handlers built; `MELDAE_CPU_GELU=0` turns it
off), else that expression for XLA. Same maths (erf by the rational interpolant XLA's CPU
backend uses); results differ by a few float32 ulps.
"""
import jax
import jax.numpy as jnp

from meldae_jax.models import gelu
from meldae_jax.ops import row_kernels

_FWD, _BWD = "meldae_bias_gelu", "meldae_bias_gelu_grad"
_KERNELS = row_kernels.RowKernels(
    "bias_gelu.cc", {_FWD: "MeldaeBiasGelu", _BWD: "MeldaeBiasGeluGrad"},
    env="MELDAE_CPU_GELU", fallback="CPU bias+GELU unavailable, using XLA's")
available = _KERNELS.available
set_plain = _KERNELS.set_plain
enabled = _KERNELS.enabled  # enabled(dtype): a bias+GELU over `dtype` takes the calls


def xla_bias_gelu():
  """Within: trace the bias and GELU as XLA ops (benchmarks, tests)."""
  return _KERNELS.off()


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
          and b.shape == h.shape[-1:] and h.shape[-1] > 0 and enabled(h.dtype)):
    return gelu.exact_gelu(h + b)
  d = h.shape[-1]
  return _calls(h.reshape(-1, d), b).reshape(h.shape)
