"""Micro-Expression Enhancer (SPEC §1.4): learnable queries cross-attend to regions.

The attention is written out (einsum, softmax in float32) rather than taken from
`nn.MultiHeadDotProductAttention`, because the attention maps (paper Figs. 6-8) and the
per-head values and output projection (per-frame fusion, SPEC §1.5) must be returned.
`Attention` and `Mlp` are reused by the `tokens` fusion block.
"""
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from meldae_jax.models import layers
from meldae_jax.ops import blas_dot

Dtype = Any


def kernel_init(*names, init=nn.initializers.xavier_uniform()):
  """Initializer that carries logical axis names (replicated where None)."""
  return nn.with_logical_partitioning(init, names)


def as_matrix(init, n_in: int):
  """`init` of a kernel whose `n_in` leading axes are its inputs, drawn as the
  (inputs, outputs) matrix it is and reshaped: variance scaling of the N-D shape counts
  the other axes as a receptive field (xavier on an (H, dh, D) kernel gave an std
  sqrt((1 + H) / 2) too small). As flax's DenseGeneral initialises its kernels."""
  def wrapped(key, shape, dtype=jnp.float32):
    flat = (int(np.prod(shape[:n_in])), int(np.prod(shape[n_in:])))
    return jnp.reshape(init(key, flat, dtype), shape)
  return wrapped


class Mlp(nn.Module):
  """GELU MLP of a pre-LN transformer block."""
  mlp_dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    d = x.shape[-1]
    x = layers.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0",
                 kernel_init=kernel_init("embed", "mlp"),
                 dot_general=blas_dot.dot_general)(x)
    x = nn.gelu(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return layers.Dense(d, dtype=self.dtype, name="Dense_1",
                    kernel_init=kernel_init("mlp", "embed"),
                    dot_general=blas_dot.dot_general)(x)


class Attention(nn.Module):
  """Multi-head attention of queries `x` over keys/values `kv`.

  Returns `(out, aux)`: `out (B,N,D)`, and in `aux` the probabilities `probs
  (B,heads,N,M)` (float32), per-head values `v (B,M,heads,dh)` and the output
  projection `out_kernel (heads,dh,D)`, `out_bias (D,)`.
  """
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, kv, kv_mask=None):
    d = x.shape[-1]
    dh = max(1, d // self.num_heads)  # L/16 (1024) with 12 heads: 12 x 85
    proj = lambda name: layers.DenseGeneral(  # noqa: E731
        (self.num_heads, dh), dtype=self.dtype, name=name,
        kernel_init=kernel_init("embed", "heads", "kv"),
        dot_general=blas_dot.dot_general)
    q, k, v = proj("query")(x), proj("key")(kv), proj("value")(kv)
    logits = jnp.einsum("bnhc,bmhc->bhnm", q, k,
                        preferred_element_type=jnp.float32) / jnp.sqrt(dh)
    logits = logits.astype(jnp.float32)
    if kv_mask is not None:
      keep = kv_mask[:, None, None, :] > 0
      logits = jnp.where(keep, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    ctx = jnp.einsum("bhnm,bmhc->bnhc", probs.astype(self.dtype), v)
    w_o = self.param("out_kernel", kernel_init(
        "heads", "kv", "embed", init=as_matrix(nn.initializers.xavier_uniform(), 2)),
                     (self.num_heads, dh, d))
    b_o = self.param("out_bias", nn.initializers.zeros, (d,))
    out = jnp.einsum("bnhc,hcd->bnd", ctx, w_o.astype(self.dtype))
    out = layers.add_bias(out, b_o)
    aux = dict(probs=probs, v=v, out_kernel=w_o, out_bias=b_o, out=out)
    return out, aux


class Enhancer(nn.Module):
  """`N` learnable queries, `L_e` pre-LN cross-attention + MLP layers.

  Returns `(F_enhanced (B,N,D), aux)`; `aux` is the last layer's `Attention` aux with
  `probs` reshaped to `attention (B, heads, N, T, G, G)`.
  """
  num_queries: int = 16
  num_layers: int = 1
  num_heads: int = 12
  mlp_ratio: int = 4
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, regional, grid, *, frame_mask=None, train=False):
    """regional (B, T*G*G, D); grid = (T, G); frame_mask (B,T) or None."""
    b, _, d = regional.shape
    t, g = grid
    queries = self.param("queries", nn.initializers.normal(0.02),
                         (self.num_queries, d))
    x = jnp.broadcast_to(queries.astype(self.dtype), (b, self.num_queries, d))
    kv_mask = None
    if frame_mask is not None:
      kv_mask = einops.repeat(frame_mask, "b t -> b (t r)", r=g * g)
    aux = None
    for i in range(self.num_layers):
      y = nn.LayerNorm(dtype=self.dtype, name=f"layer_{i}_norm_q")(x)
      kv = nn.LayerNorm(dtype=self.dtype, name=f"layer_{i}_norm_kv")(regional)
      y, aux = Attention(self.num_heads, dtype=self.dtype,
                         name=f"layer_{i}_cross_attention")(y, kv, kv_mask)
      x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
      y = nn.LayerNorm(dtype=self.dtype, name=f"layer_{i}_norm_mlp")(x)
      y = Mlp(self.mlp_ratio * d, self.dropout, dtype=self.dtype,
              name=f"layer_{i}_mlp")(y, train=train)
      x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    x = nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)
    aux = dict(aux)
    aux["attention"] = einops.rearrange(
        aux["probs"], "b h n (t g k) -> b h n t g k", t=t, g=g, k=g)
    return x, aux
