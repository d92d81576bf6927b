"""Region pooling (SPEC §1.3): patch grid -> G x G regions + temporal/region embeddings.

Adaptive average pooling is a fixed linear map per axis, so it is precomputed as a
(G, h) matrix in NumPy and applied with one einsum; this also covers `G > h`, where
bins overlap and several regions read the same patch.
"""
from typing import Any

import einops
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from meldae_jax.models import layers

Dtype = Any


def pool_matrix(n: int, g: int) -> np.ndarray:
  """(g, n) averaging matrix; row i averages [floor(i*n/g), ceil((i+1)*n/g))."""
  m = np.zeros((g, n), np.float32)
  for i in range(g):
    lo, hi = (i * n) // g, -((-(i + 1) * n) // g)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def adaptive_avg_pool(x, g: int):
  """(..., h, w, D) -> (..., g, g, D) adaptive average pooling."""
  h, w = x.shape[-3], x.shape[-2]
  ph = jnp.asarray(pool_matrix(h, g), x.dtype)
  pw = jnp.asarray(pool_matrix(w, g), x.dtype)
  return jnp.einsum("...hwd,ih,jw->...ijd", x, ph, pw)


class RegionPool(nn.Module):
  """(B,T,h,w,D) patches -> F_regional (B, T*G*G, D) with learned embeddings."""
  num_regions: int = 10
  max_frames: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, patches):
    _, t, _, _, d = patches.shape
    g = self.num_regions
    if t > self.max_frames:
      raise ValueError(f"{t} frames > num_frames={self.max_frames} (temporal emb)")
    pooled = adaptive_avg_pool(patches.astype(self.dtype), g)  # (B,T,G,G,D)
    emb_t = self.param("temporal_embedding", nn.initializers.normal(0.02),
                       (self.max_frames, d))[:t]
    emb_r = self.param("region_embedding", nn.initializers.normal(0.02),
                       (g * g, d))
    pooled = einops.rearrange(pooled, "b t i j d -> b t (i j) d")
    pooled = layers.add_bias(pooled, emb_t[:, None] + emb_r[None])
    return einops.rearrange(pooled, "b t r d -> b (t r) d")
