"""The sgemm attention (meldae_jax/ops/blas_attention.py): XLA's attention's outputs and
gradients, taken where it should be, and left where it should not."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meldae_jax.models import attention
from meldae_jax.ops import blas_attention

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not blas_attention.available(),
    reason="no C++ compiler or BLAS on this host")


def _reference(qkv, heads):
  n, length, three_d = qkv.shape
  d = three_d // 3
  q5 = qkv.reshape(n, length, 3, heads, d // heads)
  return attention.dot_product_attention(q5[:, :, 0], q5[:, :, 1],
                                         q5[:, :, 2]).reshape(n, length, d)


def _reference64(qkv, heads):
  """The attention in float64 numpy: (N, L, 3D) -> (N, L, D)."""
  n, length, three_d = qkv.shape
  d = three_d // 3
  q, k, v = qkv.astype(np.float64).reshape(n, length, 3, heads, d // heads).transpose(
      2, 0, 3, 1, 4)
  s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return (p @ v).transpose(0, 2, 1, 3).reshape(n, length, d)


@pytest.mark.parametrize("n,length,heads,dh", [(3, 7, 2, 4), (2, 50, 6, 64), (1, 5, 3, 6),
                                               (1, 33, 1, 8)])
def test_outputs_and_gradients_are_xla_attentions(n, length, heads, dh):
  """q|k|v with its bias (which the calls add in their own way: `blas_gemm.cc`) against
  XLA's attention on q|k|v + bias; rows of 5-50 scores (within one 16-lane vector, and
  over several with a tail); scores up to ~+-60, where the softmax is nearly one-hot.
  Gradients for both q|k|v and the bias."""
  rng = np.random.default_rng(n * length + heads)
  qkv = jnp.asarray(rng.standard_normal((n, length, 3 * heads * dh), np.float32) * 2.5)
  bias = jnp.asarray(rng.standard_normal((3 * heads * dh,), np.float32))
  w = jnp.asarray(rng.standard_normal((n, length, heads * dh), np.float32))
  ours = lambda x, b: blas_attention.attention(x, heads, b)  # noqa: E731
  ref = lambda x, b: _reference(x + b, heads)  # noqa: E731
  want_out = jax.jit(ref)(qkv, bias)
  # against float64: no further off than XLA's float32 attention (whose error grows
  # with the logits, here up to ~+-60)
  exact = _reference64(np.asarray(qkv) + np.asarray(bias), heads)
  xla_err = np.abs(np.asarray(want_out) - exact).max()
  assert np.abs(np.asarray(jax.jit(ours)(qkv, bias)) - exact).max() <= 2 * xla_err + 1e-6
  no_bias = jax.jit(blas_attention.attention, static_argnums=1)(qkv + bias, heads)
  assert np.abs(np.asarray(no_bias) - exact).max() <= 2 * xla_err + 1e-6  # zeros
  grad = lambda f: jax.jit(jax.grad(  # noqa: E731
      lambda x, b: jnp.sum(w * f(x, b)), (0, 1)))(qkv, bias)
  want = grad(ref)
  assert float(jnp.abs(want[0]).max()) > 0.1  # the comparison compares something
  for got_g, want_g in zip(grad(ours), want):
    np.testing.assert_allclose(got_g, want_g, rtol=1e-4,
                               atol=2e-5 * max(1.0, float(jnp.abs(want_g).max())))
  # Under remat (the ViT's `remat` option) and vmap, the same.
  for got_g, want_g in zip(grad(jax.checkpoint(ours)), want):
    np.testing.assert_allclose(got_g, want_g, rtol=1e-4,
                               atol=2e-5 * max(1.0, float(jnp.abs(want_g).max())))
  batched = jax.jit(jax.vmap(ours, in_axes=(0, None)))(qkv[None], bias)
  np.testing.assert_allclose(batched[0], jax.jit(ours)(qkv, bias), rtol=1e-6, atol=1e-6)


def _module_hlo(dtype=jnp.float32):
  mod = attention.SelfAttention(num_heads=2, dtype=dtype)
  x = jax.random.normal(jax.random.key(0), (2, 6, 8))
  params = mod.init(jax.random.key(1), x)
  grad = jax.grad(lambda p: jnp.sum(mod.apply(p, x).astype(jnp.float32)))
  return jax.jit(grad).lower(params).as_text(), jax.jit(mod.apply)(params, x)


def test_self_attention_takes_it_on_one_cpu_device_in_float32(monkeypatch):
  text, out = _module_hlo()
  for name in ("scores", "context", "scores_grad", "qkv_grad"):
    assert f"meldae_attention_{name}" in text, name
  with blas_attention.xla_attention():
    ref_text, ref = _module_hlo()
  assert "meldae_attention" not in ref_text
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  bf16_text, _ = _module_hlo(jnp.bfloat16)  # a bf16 model keeps XLA's attention
  assert "meldae_attention" not in bf16_text
  monkeypatch.setenv("MELDAE_CPU_ATTENTION", "0")
  assert "meldae_attention" not in _module_hlo()[0]


def test_a_bias_of_the_wrong_shape_is_named():
  qkv = jnp.zeros((1, 5, 12), jnp.float32)
  with pytest.raises(ValueError, match=r"bias of shape \(4,\).*must be \(12,\)"):
    blas_attention.attention(qkv, 2, jnp.zeros((4,), jnp.float32))


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_a_non_finite_key_bias_shows_in_the_output(bad):
  """The scores do not depend on bk, so the calls never read it; a NaN or Inf there must
  still make the output NaN, as XLA's path (k + bk) does: a diverged bias is noticed."""
  mod = attention.SelfAttention(num_heads=2)
  x = jax.random.normal(jax.random.key(0), (1, 4, 6))
  params = mod.init(jax.random.key(1), x)
  params["params"]["key"]["bias"] = params["params"]["key"]["bias"].at[0, 1].set(bad)
  out = jax.jit(mod.apply)(params, x)
  with blas_attention.xla_attention():
    ref = jax.jit(mod.apply)(params, x)
  assert "meldae_attention_scores" in jax.jit(mod.apply).lower(params, x).as_text()
  assert bool(jnp.isnan(ref).all()) and bool(jnp.isnan(out).all())
  params["params"]["key"]["bias"] = params["params"]["key"]["bias"].at[0, 1].set(0.0)
  assert bool(jnp.isfinite(jax.jit(mod.apply)(params, x)).all())
