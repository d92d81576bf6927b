"""The CPU LayerNorm custom calls (meldae_jax/ops/cpu_layer_norm.py): flax's values and
gradients, the same parameters, and taken only where they should be."""
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meldae_jax.ops import blas_dot
from meldae_jax.ops import cpu_layer_norm

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not cpu_layer_norm.available(),
    reason="no C++ compiler on this host")


def _rand(shape, seed, scale=1.0, shift=0.0):
  x = np.random.default_rng(seed).standard_normal(shape, np.float32) * scale + shift
  return jnp.asarray(x)


def _uses_calls(fn, *args) -> bool:
  return "meldae_layer_norm" in jax.jit(fn).lower(*args).as_text()


@pytest.fixture
def forced_on(monkeypatch):
  """The custom calls also on CPUs without AVX-512 (they fall back to plain loops)."""
  monkeypatch.delenv("MELDAE_CPU_LAYERNORM", raising=False)
  monkeypatch.setattr(blas_dot, "cpu_has_avx512", lambda: True)


def _params(shape, seed):
  d = shape[-1]
  return {"params": {"scale": _rand((d,), seed, 0.5, 1.0), "bias": _rand((d,), seed + 1)}}


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("shape", [(2, 50, 384), (70, 40), (1, 19), (3, 5, 16)])
def test_matches_flax_values_and_gradients(forced_on, shape, plain):
  """Both kernels (AVX-512 rows and plain loops), row widths that are and are not a
  multiple of 16, one row; inputs far from zero mean (where E[x^2] - E[x]^2 and the
  two-pass variance differ most) still agree to float32 rounding."""
  x, w = _rand(shape, 0, 3.0, 5.0), _rand(shape, 1)
  params = _params(shape, 2)
  ours, ref = cpu_layer_norm.LayerNorm(epsilon=1e-6), nn.LayerNorm(epsilon=1e-6)
  assert _uses_calls(lambda p, x: ours.apply(p, x), params, x)
  loss = lambda m: lambda p, x: jnp.sum(m.apply(p, x) * w)  # noqa: E731
  cpu_layer_norm.set_plain(plain)
  try:
    got = jax.jit(lambda p, x: ours.apply(p, x))(params, x)
    g_got = jax.jit(jax.grad(loss(ours), (0, 1)))(params, x)
  finally:
    cpu_layer_norm.set_plain(False)
  np.testing.assert_allclose(got, ref.apply(params, x), rtol=1e-5, atol=2e-5)
  g_ref = jax.grad(loss(ref), (0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_same_parameters_as_flax():
  x = _rand((4, 24), 0)
  ours = cpu_layer_norm.LayerNorm().init(jax.random.PRNGKey(0), x)
  ref = nn.LayerNorm().init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), ours) == jax.tree.map(
      lambda a: (a.shape, a.dtype), ref)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)


def test_taken_only_where_it_should_be(forced_on, monkeypatch):
  """float32 on one CPU device; not for bf16 inputs or outputs, not within
  `flax_layer_norm()`, not with MELDAE_CPU_LAYERNORM=0, not without AVX-512 by default;
  flax's values on every path."""
  x = _rand((6, 32), 0)
  params = _params(x.shape, 1)
  want = nn.LayerNorm().apply(params, x)
  apply = lambda m: lambda p, x: m.apply(p, x)  # noqa: E731
  assert _uses_calls(apply(cpu_layer_norm.LayerNorm()), params, x)
  assert not _uses_calls(apply(cpu_layer_norm.LayerNorm()), params, x.astype(jnp.bfloat16))
  bf16 = cpu_layer_norm.LayerNorm(dtype=jnp.bfloat16)
  assert not _uses_calls(apply(bf16), params, x)
  assert bf16.apply(params, x).dtype == jnp.bfloat16
  with cpu_layer_norm.flax_layer_norm():
    assert not _uses_calls(apply(cpu_layer_norm.LayerNorm()), params, x)
    np.testing.assert_allclose(cpu_layer_norm.LayerNorm().apply(params, x), want,
                               rtol=1e-6, atol=1e-6)
  monkeypatch.setenv("MELDAE_CPU_LAYERNORM", "0")
  assert not _uses_calls(apply(cpu_layer_norm.LayerNorm()), params, x)
  monkeypatch.delenv("MELDAE_CPU_LAYERNORM")
  monkeypatch.setattr(blas_dot, "cpu_has_avx512", lambda: False)
  assert not _uses_calls(apply(cpu_layer_norm.LayerNorm()), params, x)


def test_vmap_and_remat(forced_on):
  x, w = _rand((3, 10, 48), 0, 2.0, 1.0), _rand((3, 10, 48), 1)
  params = _params(x.shape, 2)
  ours, ref = cpu_layer_norm.LayerNorm(), nn.LayerNorm()
  per_example = lambda m: jax.vmap(lambda x: m.apply(params, x))  # noqa: E731
  np.testing.assert_allclose(jax.jit(per_example(ours))(x), per_example(ref)(x),
                             rtol=1e-5, atol=1e-5)
  loss = lambda m: jax.checkpoint(lambda p, x: jnp.sum(m.apply(p, x) * w))  # noqa: E731
  g_got = jax.jit(jax.grad(loss(ours)))(params, x)
  g_ref = jax.grad(loss(ref))(params, x)
  for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_the_vit_keeps_its_parameter_names():
  """The ViT's LayerNorms are this module under flax's names, so checkpoints and
  pretrained weights load as before."""
  from meldae_jax.models import vit  # pylint: disable=import-outside-toplevel
  block = vit.Encoder1DBlock(mlp_dim=32, num_heads=2)
  params = block.init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 16)))["params"]
  assert {"LayerNorm_0", "LayerNorm_1"} <= set(params)
  assert set(params["LayerNorm_0"]) == {"scale", "bias"}


def test_zero_width_rows_as_flax(forced_on):
  """A last axis of 0 (x.reshape(-1, 0) raised ZeroDivisionError before the call)."""
  x = jnp.zeros((3, 0), jnp.float32)
  params = {"params": {"scale": jnp.ones(0), "bias": jnp.zeros(0)}}
  assert cpu_layer_norm.LayerNorm().apply(params, x).shape == (3, 0)


_SUMS = """
import hashlib, jax, jax.numpy as jnp, numpy as np
from meldae_jax.ops import blas_dot, cpu_bias_gelu, cpu_layer_norm
blas_dot.cpu_has_avx512 = lambda: True  # the calls on any CPU (plain loops without it)
r = np.random.default_rng(0)
x = jnp.asarray(r.standard_normal((3000, 40)), jnp.float32)
w = jnp.asarray(r.standard_normal((3000, 40)), jnp.float32)
p = {"params": {"scale": jnp.ones(40), "bias": jnp.asarray(r.standard_normal(40), jnp.float32)}}
m = cpu_layer_norm.LayerNorm()
g = jax.jit(jax.grad(lambda p: jnp.sum(m.apply(p, x) * w)))(p)
db = jax.jit(jax.grad(lambda b: jnp.sum(cpu_bias_gelu.bias_gelu(x, b) * w)))(p["params"]["bias"])
print(hashlib.md5(b"".join(np.asarray(a).tobytes() for a in (
    g["params"]["scale"], g["params"]["bias"], db))).hexdigest())
"""


@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2,
                    reason="needs taskset and two cores")
def test_parameter_gradients_do_not_depend_on_the_core_count():
  """The row blocks' column sums are grouped the same way on 1 and 2 cores (the block
  size followed the thread count, and with it the sums' last bits)."""
  cores = sorted(os.sched_getaffinity(0))[:2]
  digests = {
      n: subprocess.run(["taskset", "-c", ",".join(map(str, cores[:n])), sys.executable,
                         "-c", _SUMS], capture_output=True, text=True, timeout=300,
                        check=True, env={**os.environ, "MELDAE_CPU_LAYERNORM": "1",
                                         "MELDAE_CPU_GELU": "1"}).stdout.split()[-1]
      for n in (1, 2)}
  assert digests[1] == digests[2]


@pytest.mark.skipif("avx512f" not in open("/proc/cpuinfo").read(),
                    reason="the AVX-512 rows (the plain loops' sequential mean is inexact "
                    "for a constant row, and rstd = 1/sqrt(eps) magnifies that)")
def test_a_constant_row_has_zero_input_gradient(forced_on):
  """The output of a constant row is the bias whatever x: dx = 0 exactly, as flax's. With
  GCC fusing dy * scale - a into an FMA, the product's rounding (~1e-8) was left there,
  times rstd = 1/sqrt(eps): -0.0155 at eps = 1e-12."""
  m = cpu_layer_norm.LayerNorm(epsilon=1e-12)
  params = {"params": {"scale": jnp.full((16,), 1.3), "bias": jnp.zeros(16)}}
  dx = jax.jit(jax.grad(lambda x: jnp.sum(m.apply(params, x) * 0.7)))(
      jnp.full((3, 16), 0.3, jnp.float32))
  np.testing.assert_array_equal(dx, 0.0)
