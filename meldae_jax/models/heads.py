"""Multi-task heads (SPEC §1.6): temporal locator, speaking state, ME classifier.

All logits are returned in float32 whatever the compute dtype.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from meldae_jax.models import layers
from meldae_jax.models.enhancer import kernel_init
from meldae_jax.ops import blas_dot

Dtype = Any


def masked_mean(x, mask, axis: int = 1):
  """Mean of x over `axis` counting only positions where mask > 0 (mask (B,T))."""
  m = mask.astype(jnp.float32)
  m = m.reshape(m.shape + (1,) * (x.ndim - m.ndim))
  total = jnp.sum(x.astype(jnp.float32) * m, axis=axis)
  return total / jnp.maximum(jnp.sum(m, axis=axis), 1.0)


def clip_state_logit(state_logits, frame_mask=None):
  """Clip speaking logit = masked mean of per-frame logits; p_state = sigmoid."""
  if frame_mask is None:
    return jnp.mean(state_logits.astype(jnp.float32), axis=-1)
  return masked_mean(state_logits, frame_mask, axis=-1)


class Head(nn.Module):
  """LayerNorm -> Dense -> GELU -> Dense(out), float32 logits."""
  out_dim: int
  hidden: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = nn.LayerNorm(dtype=self.dtype, name="norm")(x.astype(self.dtype))
    x = layers.Dense(self.hidden, dtype=self.dtype, name="hidden",
                 kernel_init=kernel_init("embed", "mlp"),
                 dot_general=blas_dot.dot_general)(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(nn.gelu(x))
    x = nn.Dense(self.out_dim, dtype=jnp.float32, name="out",
                 kernel_init=kernel_init("mlp", None))(x)
    return x.astype(jnp.float32)


class Heads(nn.Module):
  """frame features (B,T,F) + clip features (B,C) -> the three logits."""
  num_classes: int
  hidden: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, frame_feats, clip_feats, *, train: bool = False):
    kw = dict(hidden=self.hidden, dropout=self.dropout, dtype=self.dtype)
    loc = Head(self.num_classes, name="locator", **kw)(frame_feats, train=train)
    state = Head(1, name="state", **kw)(frame_feats, train=train)[..., 0]
    me = Head(1, name="me_classifier", **kw)(clip_feats, train=train)[..., 0]
    return dict(loc_logits=loc, state_logits=state, me_logit=me)
