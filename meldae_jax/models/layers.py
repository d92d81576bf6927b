"""Biases added in float32 when the compute dtype is lower, so that their gradients are
float32 sums.

The gradient of a bias is the sum of the output's cotangent over every row. With the
bias cast to bf16 and added in bf16 (flax's Dense with `dtype=bfloat16`), that sum is a
bf16 reduction, which XLA:CPU accumulates in bf16: under jit a bias over 1,600 rows (32
frames of 50 ViT tokens) got a gradient of 512 where it is 1,600, and one over 50,000
rows 8,192 (session 30). Adding the float32 bias to the upcast output and casting the sum
back keeps the forward's values (one bf16 rounding of the sum) and makes the reduction a
float32 one. In float32 models these are the plain adds they replace.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def low_precision(dtype) -> bool:
  return jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize < 4


def add_bias(y, bias):
  """y + bias in y's dtype, summed in float32 where y's dtype is lower."""
  if bias is None:
    return y
  if low_precision(y.dtype):
    return (y.astype(jnp.float32) + bias.astype(jnp.float32)).astype(y.dtype)
  return y + bias.astype(y.dtype)


def promote_keeping_bias(*args, dtype=None, inexact=True):
  """flax's promote_dtype for (inputs, kernel, bias): the bias stays in its parameter
  dtype, so that flax's `y += bias` runs in float32 (Dense / DenseGeneral below cast the
  result back)."""
  *rest, bias = args
  return (*nn.dtypes.promote_dtype(*rest, dtype=dtype, inexact=inexact), bias)


class Dense(nn.Dense):
  """nn.Dense (same parameters and names) whose bias is added in float32."""
  promote_dtype: Any = promote_keeping_bias

  @nn.compact
  def __call__(self, inputs):
    y = super().__call__(inputs)
    return y if self.dtype is None else y.astype(self.dtype)


class DenseGeneral(nn.DenseGeneral):
  """nn.DenseGeneral (same parameters and names) whose bias is added in float32."""
  promote_dtype: Any = promote_keeping_bias

  @nn.compact
  def __call__(self, inputs):
    y = super().__call__(inputs)
    return y if self.dtype is None else y.astype(self.dtype)
