"""Temporal model (SPEC §1.2): Bi-LSTM over the per-frame CLS tokens -> F_global.

The Bi-LSTM is `lstm.bilstm`: flax's `Bidirectional(RNN(OptimizedLSTMCell))` parameters and
function, with the input projection out of the time loop.
Padding: `frame_mask` becomes `seq_lengths = sum_t mask`, which flax's `nn.RNN` reads as
"the first L steps are real". That matches the pipeline, which pads windows at the end;
a mask with holes in the middle would be treated as its prefix length. Outputs at
padding steps are left as computed; downstream code masks them.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from meldae_jax.models import layers
from meldae_jax.models import lstm
from meldae_jax.models.enhancer import kernel_init
from meldae_jax.ops import blas_dot

Dtype = Any


class Temporal(nn.Module):
  """`kind='bilstm'`: Bi-LSTM (D/2 per direction) + Dense to D; `'none'`: a Dense.

  `hidden` (> 0) overrides the D/2 units per direction: a small frame encoder's D gives
  a tiny LSTM, and the LSTM's steps cost little next to the frame encoder.
  """
  width: int
  kind: str = "bilstm"
  dtype: Dtype = jnp.float32
  hidden: int = 0

  @nn.compact
  def __call__(self, cls, frame_mask=None):
    x = cls.astype(self.dtype)
    if self.kind == "bilstm":
      lengths = None
      if frame_mask is not None:
        lengths = jnp.sum(frame_mask > 0, axis=-1).astype(jnp.int32)
      h = self.hidden or self.width // 2
      x = lstm.bilstm(x, lengths, features=h, dtype=self.dtype)
    elif self.kind != "none":
      raise ValueError(f"unknown temporal model {self.kind!r}")
    return layers.Dense(self.width, dtype=self.dtype, name="proj",
                    kernel_init=kernel_init("mlp", "embed"),
                    dot_general=blas_dot.dot_general)(x.astype(self.dtype))
