"""A float32 LayerNorm on CPU as two custom calls (forward, backward), one pass each.

Why: XLA's CPU backend computes a LayerNorm as several reduction and elementwise fusions
(statistics, normalise; backward three reductions and two elementwise passes), each
reading the activations again. In an S112 train step its 25 LayerNorms took ~39 ms
forward and backward on an Intel Xeon (docs/performance.md, session 19), ~1.5 ms each,
where reading and writing their arrays once takes ~0.3 ms. `layer_norm.cc` does the
forward in one pass per row (two-pass mean and variance within the row, then y), keeping
each row's mean and 1/std for the backward, which is one pass too (dx, and dscale and
dbias summed per block of rows); rows are split over XLA's own thread pool.

`LayerNorm` is a drop-in for `flax.linen.LayerNorm` (same `scale` and `bias` parameters,
initial values and names; biased variance, eps inside the square root): where `enabled`
(one CPU device with AVX-512, which the kernels use; float32; the handlers built;
`MELDAE_CPU_LAYERNORM=0` turns it off) it
takes these calls, else flax's own LayerNorm. Same maths; results differ by float32
rounding (flax takes the variance as E[x^2] - E[x]^2).
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from meldae_jax.ops import row_kernels

_FWD, _BWD = "meldae_layer_norm", "meldae_layer_norm_grad"
_KERNELS = row_kernels.RowKernels(
    "layer_norm.cc", {_FWD: "MeldaeLayerNorm", _BWD: "MeldaeLayerNormGrad"},
    env="MELDAE_CPU_LAYERNORM", fallback="CPU LayerNorm unavailable, using flax's")
available = _KERNELS.available
set_plain = _KERNELS.set_plain
enabled = _KERNELS.enabled  # enabled(dtype): a LayerNorm over `dtype` inputs takes the calls


def flax_layer_norm():
  """Within: trace LayerNorms as flax's (benchmarks, tests)."""
  return _KERNELS.off()


def _stats_shapes(x):
  rows = x.shape[0]
  return (jax.ShapeDtypeStruct(x.shape, jnp.float32),
          jax.ShapeDtypeStruct((rows,), jnp.float32),
          jax.ShapeDtypeStruct((rows,), jnp.float32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, eps: float):
  """(rows, D) float32 -> (x - mean) / sqrt(var + eps) * scale + bias per row."""
  return _fwd(x, scale, bias, eps)[0]


def _fwd(x, scale, bias, eps):
  y, mean, rstd = jax.ffi.ffi_call(_FWD, _stats_shapes(x), vmap_method="sequential")(
      x, scale, bias, eps=np.float32(eps))
  return y, (x, scale, mean, rstd)


def _bwd(eps, res, dy):
  del eps
  x, scale, mean, rstd = res
  d = x.shape[1]
  vec = jax.ShapeDtypeStruct((d,), jnp.float32)
  dx, dscale, dbias = jax.ffi.ffi_call(
      _BWD, (jax.ShapeDtypeStruct(x.shape, jnp.float32), vec, vec),
      vmap_method="sequential")(dy, x, scale, mean, rstd)
  return dx, dscale, dbias


layer_norm.defvjp(_fwd, _bwd)


class LayerNorm(nn.Module):
  """`flax.linen.LayerNorm` over the last axis with scale and bias, by the custom calls
  where `enabled`; name it as the flax module it replaces (`LayerNorm_0`, ...)."""
  epsilon: float = 1e-6
  dtype: Any = None
  scale_init: Callable = nn.initializers.ones_init()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param("scale", self.scale_init, (d,), jnp.float32)
    bias = self.param("bias", self.bias_init, (d,), jnp.float32)
    out_dtype = self.dtype or x.dtype
    if not (jnp.dtype(out_dtype) == jnp.float32 and enabled(x.dtype) and d > 0):
      # flax's LayerNorm, on this module's parameters
      return nn.LayerNorm(epsilon=self.epsilon, dtype=self.dtype, parent=None).apply(
          {"params": {"scale": scale, "bias": bias}}, x)
    y = layer_norm(x.reshape(-1, d).astype(jnp.float32), scale, bias, self.epsilon)
    return y.reshape(x.shape).astype(out_dtype)
