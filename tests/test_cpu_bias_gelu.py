"""The CPU bias+GELU custom calls (meldae_jax/ops/cpu_bias_gelu.py): jax.nn.gelu's values
and gradients, taken only where they should be, and the ViT MLP's parameters kept."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meldae_jax.models import vit
from meldae_jax.ops import blas_dot
from meldae_jax.ops import cpu_bias_gelu

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not cpu_bias_gelu.available(),
    reason="no C++ compiler on this host")


def _rand(shape, seed, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32) * scale)


def _uses_calls(fn, *args) -> bool:
  # a new function each time: jit's trace cache would otherwise answer for `fn`
  return "meldae_bias_gelu" in jax.jit(lambda *a: fn(*a)).lower(*args).as_text()


def _reference(h, b):
  return jax.nn.gelu(h + b, approximate=False)


@pytest.fixture
def forced_on(monkeypatch):
  """The custom calls also on CPUs without AVX-512 (they fall back to plain loops)."""
  monkeypatch.delenv("MELDAE_CPU_GELU", raising=False)
  monkeypatch.setattr(blas_dot, "cpu_has_avx512", lambda: True)


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("shape", [(70, 384), (33, 40), (1, 19), (2, 5, 48)])
def test_matches_jax_gelu_values_and_gradients(forced_on, shape, plain):
  """Both kernels (AVX-512 rows and plain loops), widths that are and are not a multiple
  of 16, one row, a leading batch axis; pre-activations out to +-12, past erf's clamp
  (|z| > 5.4) and where the density underflows, and exact zeros."""
  h = _rand(shape, 0, 4.0).at[..., :3].set(jnp.array([0.0, 12.0, -12.0]))
  b = _rand(shape[-1:], 1)
  w = _rand(shape, 2)
  assert _uses_calls(cpu_bias_gelu.bias_gelu, h, b)
  loss = lambda f: lambda h, b: jnp.sum(f(h, b) * w)  # noqa: E731
  cpu_bias_gelu.set_plain(plain)
  try:
    got = jax.jit(cpu_bias_gelu.bias_gelu)(h, b)
    g_got = jax.jit(jax.grad(loss(cpu_bias_gelu.bias_gelu), (0, 1)))(h, b)
  finally:
    cpu_bias_gelu.set_plain(False)
  np.testing.assert_allclose(got, _reference(h, b), rtol=2e-6, atol=2e-6)
  g_ref = jax.grad(loss(_reference), (0, 1))(h, b)
  for a, r in zip(g_got, g_ref):
    np.testing.assert_allclose(a, r, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(r))))


@pytest.mark.parametrize("plain", [False, True])
def test_large_negative_preactivations_give_zero(forced_on, plain):
  """Past erf's clamp the cdf is 0 exactly: z * cdf was -1.9e12 at z = -1e20 (AVX-512,
  erf 1e-7 short of -1) and +6e12 (plain loop, 1e-7 past it)."""
  h = jnp.array([[-6.0, -10.0, -100.0, -1e4, -1e20, 6.0, 1e20]], jnp.float32)
  b = jnp.zeros((7,), jnp.float32)
  cpu_bias_gelu.set_plain(plain)
  try:
    y = np.asarray(jax.jit(cpu_bias_gelu.bias_gelu)(h, b))
    dh = np.asarray(jax.jit(jax.grad(lambda h: cpu_bias_gelu.bias_gelu(h, b).sum()))(h))
  finally:
    cpu_bias_gelu.set_plain(False)
  np.testing.assert_allclose(y, np.asarray(_reference(h, b)), rtol=1e-6, atol=1e-8)
  np.testing.assert_array_equal(y[0, 2:5], 0.0)  # the true values underflow
  np.testing.assert_array_equal(dh[0, 2:5], 0.0)
  assert dh[0, 6] == 1.0


def test_empty_rows(forced_on):
  h, b = jnp.zeros((0, 24)), _rand((24,), 0)
  y, vjp = jax.vjp(jax.jit(cpu_bias_gelu.bias_gelu), h, b)
  dh, db = vjp(jnp.zeros((0, 24)))
  assert y.shape == dh.shape == (0, 24)
  np.testing.assert_array_equal(db, np.zeros(24, np.float32))


def test_taken_only_where_it_should_be(forced_on, monkeypatch):
  """float32 on one CPU device; not for bf16, not within `xla_bias_gelu()`, not with
  MELDAE_CPU_GELU=0, not without AVX-512 by default; the same values on every path."""
  h, b = _rand((6, 32), 0, 2.0), _rand((32,), 1)
  want = _reference(h, b)
  assert _uses_calls(cpu_bias_gelu.bias_gelu, h, b)
  h16, b16 = h.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
  assert not _uses_calls(cpu_bias_gelu.bias_gelu, h16, b16)
  assert cpu_bias_gelu.bias_gelu(h16, b16).dtype == jnp.bfloat16
  with cpu_bias_gelu.xla_bias_gelu():
    assert not _uses_calls(cpu_bias_gelu.bias_gelu, h, b)
    np.testing.assert_allclose(cpu_bias_gelu.bias_gelu(h, b), want, rtol=1e-6, atol=1e-6)
  monkeypatch.setenv("MELDAE_CPU_GELU", "0")
  assert not _uses_calls(cpu_bias_gelu.bias_gelu, h, b)
  monkeypatch.delenv("MELDAE_CPU_GELU")
  monkeypatch.setattr(blas_dot, "cpu_has_avx512", lambda: False)
  assert not _uses_calls(cpu_bias_gelu.bias_gelu, h, b)


def test_vmap_and_remat(forced_on):
  h, b, w = _rand((3, 10, 48), 0, 2.0), _rand((48,), 1), _rand((3, 10, 48), 2)
  per_example = lambda f: jax.vmap(lambda h: f(h, b))  # noqa: E731
  np.testing.assert_allclose(jax.jit(per_example(cpu_bias_gelu.bias_gelu))(h),
                             per_example(_reference)(h), rtol=2e-6, atol=2e-6)
  loss = lambda f: jax.checkpoint(lambda h, b: jnp.sum(f(h, b) * w))  # noqa: E731
  g_got = jax.jit(jax.grad(loss(cpu_bias_gelu.bias_gelu), (0, 1)))(h, b)
  g_ref = jax.grad(loss(_reference), (0, 1))(h, b)
  for a, r in zip(g_got, g_ref):
    np.testing.assert_allclose(a, r, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(r))))


class _FlaxMlp(nn.Module):
  """The ViT's MLP as two flax Denses and the GELU (what MlpBlock was)."""
  mlp_dim: int

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    bias_init = nn.initializers.normal(stddev=1e-6)
    x = nn.Dense(self.mlp_dim, bias_init=bias_init,
                 kernel_init=nn.initializers.xavier_uniform())(x)
    x = jax.nn.gelu(x, approximate=False)
    return nn.Dense(d, bias_init=bias_init,
                    kernel_init=nn.initializers.xavier_uniform())(x)


def test_the_vit_mlp_keeps_flax_parameters_and_values(forced_on):
  """MlpBlock's first Dense adds its bias inside the calls, under flax's names, shapes
  and initial values, so checkpoints and pretrained weights load as before; outputs and
  gradients are the two-Dense MLP's."""
  x = _rand((2, 7, 24), 0)
  ours = vit.MlpBlock(mlp_dim=48)
  params = nn.unbox(ours.init(jax.random.PRNGKey(0), x))  # without partitioning metadata
  ref_params = _FlaxMlp(mlp_dim=48).init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ref_params)
  for a, r in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_array_equal(a, r)
  params = jax.tree.map(lambda p: p + 0.1 * _rand(p.shape, 3), params)  # biases non-zero
  assert _uses_calls(ours.apply, params, x)
  np.testing.assert_allclose(ours.apply(params, x), _FlaxMlp(48).apply(params, x),
                             rtol=1e-5, atol=1e-5)
  loss = lambda m: lambda p: jnp.sum(m.apply(p, x) ** 2)  # noqa: E731
  for a, r in zip(jax.tree.leaves(jax.grad(loss(ours))(params)),
                  jax.tree.leaves(jax.grad(loss(_FlaxMlp(48)))(params))):
    np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5)


def test_zero_width_rows(forced_on):
  x = jnp.zeros((3, 0), jnp.float32)
  assert cpu_bias_gelu.bias_gelu(x, jnp.zeros(0, jnp.float32)).shape == (3, 0)
