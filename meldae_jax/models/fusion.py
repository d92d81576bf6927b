"""Fusion of global and enhanced features into per-frame features (SPEC §1.5).

`per_frame_readout` splits the enhancer's last attention readout over time: since the
output projection is linear, sum_t e[b,t] == sum_n (attn_out[b,n] - bias), so the frame
features carry exactly the evidence the query tokens gathered from each frame.
"""
from typing import Any

import einops
import flax.linen as nn
import jax.numpy as jnp

from meldae_jax.models.enhancer import Attention, Mlp

Dtype = Any


def per_frame_readout(probs, v, out_kernel, num_frames: int):
  """e (B,T,D) from probs (B,H,N,T*R), v (B,T*R,H,dh), out_kernel (H,dh,D)."""
  a = jnp.sum(probs, axis=2)                                   # (B,H,M): over queries
  ctx = jnp.einsum("bhm,bmhc->bmhc", a.astype(v.dtype), v)
  ctx = einops.reduce(ctx, "b (t r) h c -> b t h c", "sum", t=num_frames)
  return jnp.einsum("bthc,hcd->btd", ctx, out_kernel.astype(v.dtype))


class TokenFusion(nn.Module):
  """`tokens` fusion: [F_global ; F_enhanced] -> one pre-LN self-attention block.

  Returns the frame positions (B,T,D). Padding frames are masked as keys.
  """
  num_heads: int = 12
  mlp_ratio: int = 4
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, f_global, f_enhanced, *, frame_mask=None, train=False):
    b, t, d = f_global.shape
    n = f_enhanced.shape[1]
    type_emb = self.param("type_embedding", nn.initializers.normal(0.02), (2, d))
    x = jnp.concatenate([f_global + type_emb[0], f_enhanced + type_emb[1]], axis=1)
    x = x.astype(self.dtype)
    mask = None
    if frame_mask is not None:
      mask = jnp.concatenate(
          [frame_mask.astype(jnp.float32), jnp.ones((b, n), jnp.float32)], axis=1)
    y = nn.LayerNorm(dtype=self.dtype, name="norm_attn")(x)
    y, _ = Attention(self.num_heads, dtype=self.dtype, name="self_attention")(
        y, y, mask)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm(dtype=self.dtype, name="norm_mlp")(x)
    y = Mlp(self.mlp_ratio * d, self.dropout, dtype=self.dtype, name="mlp")(
        y, train=train)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    return x[:, :t]
