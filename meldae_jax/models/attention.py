"""The ViT's self-attention with its q, k and v projections as one matmul.

Same parameters (names, shapes, initial values, logical axes) and the same function as
`nn.MultiHeadDotProductAttention(x, x)`, so checkpoints and pretrained weights load
unchanged. Why not flax's module: it runs three (N*L, D) x (D, D) matmuls and sums each
bias gradient over a 4-D (N, L, H, dh) array; XLA's CPU backend rewrites those sums into
slow reduce-windows (about 2.5 ms each in a Ti112 train step, 36 per step). Here the
kernels are concatenated into one (D, 3D) matrix (a copy of the weights, not of the
activations), the projection is one `blas_dot` matmul on the 2-D (N*L, D) tokens, and
every bias gradient is a 2-D column sum. PyTorch's `nn.MultiheadAttention` and timm's
ViT fuse the projection the same way; `benchmarks/torch_port.py` does too. On one CPU
device, in float32, the softmax attention itself is `ops/blas_attention.py`'s, which
reads q, k and v in this projection's layout and takes the bias apart (its calls add
what of it the result depends on, with no pass over the (N*L, 3D) array).
"""
from typing import Any, Callable

import flax.linen as nn
from flax.linen import meta
import jax
import jax.numpy as jnp
import numpy as np

from meldae_jax.models import layers
from meldae_jax.ops import blas_attention
from meldae_jax.ops import blas_dot


class _DenseGeneralParams(nn.Module):
  """`nn.DenseGeneral`'s kernel and bias (its flat-shape initialisation), not applied."""
  kernel_shape: tuple[int, ...]
  bias_shape: tuple[int, ...]
  n_in: int  # leading kernel axes contracted with the input
  kernel_init: Callable
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self):
    def flat_init(init, flat):
      def wrapped(rng, shape, dtype=jnp.float32):
        value = init(rng, flat, dtype)
        if isinstance(value, meta.AxisMetadata):
          return meta.replace_boxed(value, jnp.reshape(value.unbox(), shape))
        return jnp.reshape(value, shape)
      return wrapped

    ks = self.kernel_shape
    kernel = self.param(
        "kernel", flat_init(self.kernel_init, (int(np.prod(ks[:self.n_in])),
                                               int(np.prod(ks[self.n_in:])))), ks)
    bias = self.param("bias", flat_init(self.bias_init, (int(np.prod(self.bias_shape)),)),
                      self.bias_shape)
    return kernel, bias


def dot_product_attention(q, k, v):
  """softmax(q k^T / sqrt(dh)) v over (N, L, H, dh) arrays, as flax computes it."""
  q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  weights = jnp.einsum("...qhd,...khd->...hqk", q, k)
  weights = jax.nn.softmax(weights.astype(jnp.float32)).astype(q.dtype)
  return jnp.einsum("...hqk,...khd->...qhd", weights, v)


class SelfAttention(nn.Module):
  """Multi-head self-attention over (N, L, D) tokens with biases, no mask, no dropout.

  Name it `MultiHeadDotProductAttention_0` where it replaces flax's module: the
  parameters are `{query,key,value}/{kernel (D, H, dh), bias (H, dh)}` and
  `out/{kernel (H, dh, D), bias (D,)}`, as flax's.
  """
  num_heads: int
  kernel_init: Callable = nn.initializers.xavier_uniform()
  out_kernel_init: Callable | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, length, d = x.shape
    h = self.num_heads
    if d % h:
      raise ValueError(f"width {d} is not a multiple of num_heads {h}")
    dh = d // h
    kernels, biases = [], []
    for name in ("query", "key", "value"):
      kernel, bias = _DenseGeneralParams((d, h, dh), (h, dh), 1, self.kernel_init,
                                         name=name)()
      kernels.append(kernel.reshape(d, d))
      biases.append(bias.reshape(d))
    out_kernel, out_bias = _DenseGeneralParams(
        (h, dh, d), (d,), 2, self.out_kernel_init or self.kernel_init, name="out")()
    x, kernel, out_kernel = nn.dtypes.promote_dtype(
        x, jnp.concatenate(kernels, axis=1), out_kernel, dtype=self.dtype)
    bias = jnp.concatenate(biases)  # float32: added by layers.add_bias (or the calls)

    tokens = x.reshape(n * length, d)
    qkv = blas_dot.dot_general(tokens, kernel, (((1,), (0,)), ((), ())))
    if blas_attention.enabled(qkv.dtype):  # one CPU device: sgemm per head, no transposes
      ctx = blas_attention.attention(qkv.reshape(n, length, 3 * d), h,
                                     bias.astype(qkv.dtype))
    else:
      qkv = layers.add_bias(qkv, bias).reshape(n, length, 3, h, dh)
      ctx = dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    out = layers.add_bias(blas_dot.dot_general(ctx.reshape(n * length, d),
                                               out_kernel.reshape(d, d),
                                               (((1,), (0,)), ((), ()))), out_bias)
    return out.reshape(n, length, d)
