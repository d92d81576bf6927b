"""Per-frame ResNet-50 frame encoder (SPEC §1.7 ablation), BiT style (ResNet-v2).

GroupNorm + weight-standardised convolutions instead of BatchNorm, so the model keeps
no mutable batch statistics and stays a pure `params` pytree like the ViT. Same output
contract as the ViT: `(cls (N,D), patches (N,h,w,D))`, with the global average pool as
CLS and the last feature map as the patch grid, both projected to width D.

In bfloat16 (`model.dtype`) the sums that need float32 are float32: GroupNorm's
statistics and its scale/bias (flax's float32 reductions), the convolutions' accumulation
and the global pool (jnp.mean). A freshly initialised ResNet-50 still lands far from its
float32 outputs (224 px: CLS 7 %, patches 24 %) because it amplifies any perturbation: in
float32, rounding only the input to bf16 moves them 2 % / 9 %, and a residual stream kept
in float32 changes nothing (session 35's probes).
"""
import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from meldae_jax.models import layers
from meldae_jax.models.enhancer import kernel_init

Dtype = Any


def standardize(w, axis=(0, 1, 2), eps=1e-8):
  """Weight standardisation: zero mean, unit variance per output channel."""
  w = w - jnp.mean(w, axis=axis, keepdims=True)
  return w / jnp.sqrt(jnp.mean(jnp.square(w), axis=axis, keepdims=True) + eps)


class StdConv(nn.Conv):
  """Conv whose kernel is standardised on use (as big_vision's BiT)."""

  def param(self, name, init_fn, *init_args, **init_kwargs):
    p = super().param(name, init_fn, *init_args, **init_kwargs)
    return standardize(p) if name == "kernel" else p


def _conv(features, size, strides=1, name=None, dtype=jnp.float32):
  return StdConv(features, (size, size), (strides, strides), use_bias=False,
                 padding="SAME", dtype=dtype, name=name,
                 kernel_init=kernel_init(None, None, "conv_in", "conv_out",
                                         init=nn.initializers.he_normal()))


def _norm(x, name, dtype):
  return nn.GroupNorm(num_groups=math.gcd(32, x.shape[-1]), dtype=dtype,
                      name=name)(x)


class Bottleneck(nn.Module):
  """Pre-activation bottleneck unit (stride on the 3x3 conv)."""
  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = nn.relu(_norm(x, "gn1", self.dtype))
    residual = x
    if x.shape[-1] != 4 * self.features or self.strides != 1:
      residual = _conv(4 * self.features, 1, self.strides, "conv_proj",
                       self.dtype)(out)
    y = _conv(self.features, 1, name="conv1", dtype=self.dtype)(out)
    y = nn.relu(_norm(y, "gn2", self.dtype))
    y = _conv(self.features, 3, self.strides, "conv2", self.dtype)(y)
    y = nn.relu(_norm(y, "gn3", self.dtype))
    y = _conv(4 * self.features, 1, name="conv3", dtype=self.dtype)(y)
    return y + residual


class ResNet(nn.Module):
  """BiT ResNet-v2; `stages=(3,4,6,3)`, `base_width=64` is ResNet-50."""
  width: int = 768
  stages: Sequence[int] = (3, 4, 6, 3)
  base_width: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train  # no dropout / batch statistics
    x = x.astype(self.dtype)
    x = _conv(self.base_width, 7, 2, "root_conv", self.dtype)(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for i, n in enumerate(self.stages):
      for j in range(n):
        strides = 2 if (i > 0 and j == 0) else 1
        x = Bottleneck(self.base_width * 2**i, strides, self.dtype,
                       name=f"block{i + 1}_unit{j + 1}")(x)
    x = nn.relu(_norm(x, "norm_pre_head", self.dtype))
    cls = jnp.mean(x, axis=(1, 2))
    cls = layers.Dense(self.width, dtype=self.dtype, name="cls_proj",
                   kernel_init=kernel_init("conv_out", "embed"))(cls)
    patches = layers.Dense(self.width, dtype=self.dtype, name="patch_proj",
                       kernel_init=kernel_init("conv_out", "embed"))(x)
    return cls, patches
