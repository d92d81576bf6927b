"""The AMX bf16 GEMM custom call (meldae_jax/ops/amx_gemm.py): the product of the
bf16-rounded operands for every layout and edge, XLA's rounding, the Dense path's
gradients, and where the path is taken. The kernel tests need a CPU with AMX; the
switch tests run anywhere."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meldae_jax.models import vit
from meldae_jax.ops import amx_gemm
from meldae_jax.ops import blas_dot

needs_amx = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not amx_gemm.available(),
    reason="no CPU with AMX-BF16 (or no C++ compiler) on this host")

DENSE = (((1,), (0,)), ((), ()))


def _rand(shape, seed, scale=1.0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * scale


def _rounded64(x):
  """x rounded to bf16 as XLA rounds it, in float64."""
  return np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


@needs_amx
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("mkn", [(1, 1, 1), (17, 33, 15), (32, 64, 32), (33, 31, 47),
                                 (40, 70, 50), (3, 200, 5), (40, 1100, 50),
                                 (100, 2000, 1200)])
def test_product_of_rounded_operands(mkn, trans_a, trans_b):
  """Every layout, sizes that are and are not multiples of the tiles (16 rows and
  columns, 32 along k), one element, and a shape whose packed B is split into groups
  (100 x 2000 x 1200), one whose contraction goes in parts (40 x 1100 x 50): float32
  sums of the bf16-rounded operands."""
  m, k, n = mkn
  a = _rand((k, m) if trans_a else (m, k), 0)
  b = _rand((n, k) if trans_b else (k, n), 1)
  got = jax.jit(amx_gemm.gemm, static_argnums=(2, 3))(a, b, trans_a, trans_b)
  assert got.shape == (m, n) and got.dtype == jnp.float32
  ra, rb = _rounded64(a), _rounded64(b)
  want = (ra.T if trans_a else ra) @ (rb.T if trans_b else rb)
  scale = np.abs(want).max()
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0,
                             atol=1e-6 * scale * np.sqrt(k))
  unrounded = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
  if k > 8:  # the operands were rounded: far from the float32 product
    assert np.abs(np.asarray(got) - unrounded).max() > 1e-3 * scale


@needs_amx
def test_rounds_to_nearest_even_as_xla():
  """Ties and near-ties of the bf16 rounding, against XLA's convert: 1 + 2^-8 (a tie,
  to even: 1), 1 + 3 * 2^-8 (a tie, to even: 1 + 2^-6), just above a tie, negatives."""
  ties = np.array([1 + 2.0**-8, 1 + 3 * 2.0**-8, 1 + 2.0**-8 + 2.0**-20, -(1 + 2.0**-8),
                   3.0, -0.0, 1e-3, 65504.0], np.float32)
  a = ties.reshape(-1, 1)
  b = np.ones((1, 1), np.float32)
  got = np.asarray(jax.jit(amx_gemm.gemm)(a, b))[:, 0]
  np.testing.assert_array_equal(got, np.asarray(
      jnp.asarray(ties).astype(jnp.bfloat16).astype(jnp.float32)))


@needs_amx
def test_empty_contraction_is_zero():
  a, b = np.zeros((5, 0), np.float32), np.zeros((0, 7), np.float32)
  np.testing.assert_array_equal(jax.jit(amx_gemm.gemm)(a, b), np.zeros((5, 7)))


@needs_amx
@pytest.mark.parametrize("mkn", [(64, 48, 96), (50, 96, 40)])
def test_rounded_gemm_gradients_match_xla_path(mkn):
  """`blas_dot.rounded_gemm` through AMX (forward, dx = g b^T, dW = a^T g): XLA's
  converts-and-bf16-dots path's values and gradients, up to the order of float32 sums."""
  m, k, n = mkn
  a, b, w = _rand((m, k), 0), _rand((k, n), 1), _rand((m, n), 2)

  def value_and_grads():
    f = lambda a, b: jnp.sum(w * blas_dot.rounded_gemm(a, b, jnp.bfloat16))  # noqa: E731
    fn = jax.jit(jax.value_and_grad(f, (0, 1)))
    return fn(a, b), fn.lower(a, b).as_text().count("@meldae_amx_gemm")

  (v, (ga, gb)), calls = value_and_grads()
  with amx_gemm.xla_bf16_dots():
    (v_ref, (ga_ref, gb_ref)), calls_ref = value_and_grads()
  assert (calls, calls_ref) == (3, 0)
  np.testing.assert_allclose(v, v_ref, rtol=1e-5)
  for got, want in ((ga, ga_ref), (gb, gb_ref)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


@needs_amx
def test_vit_bf16_matmul_takes_amx_and_agrees():
  """A Mu ViT forward under `matmul_operands(bf16)`: every Dense matmul (4 per block,
  the patch embedding) is an AMX call, and the output is the XLA path's."""
  model = vit.ViT("Mu/8", scan=False)
  x = jnp.asarray(_rand((2, 32, 32, 3), 0))
  params = model.init(jax.random.key(0), x, train=False)

  def run():
    with blas_dot.matmul_operands(jnp.bfloat16):
      fn = jax.jit(lambda p, x: model.apply(p, x, train=False))
      return fn(params, x), fn.lower(params, x).as_text().count("@meldae_amx_gemm")

  (out, calls) = run()
  with amx_gemm.xla_bf16_dots():
    out_ref, calls_ref = run()
  assert calls == 1 + 4 * vit.VARIANTS["Mu"]["depth"] and calls_ref == 0
  for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(out_ref)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_enabled_only_for_bf16_on_one_cpu_device_with_amx(monkeypatch):
  """The switch, on any host: bf16 only; off without AMX, with MELDAE_CPU_AMX=0, within
  `xla_bf16_dots` or `blas_dot.xla_dots`, and off a single CPU device."""
  monkeypatch.delenv("MELDAE_CPU_AMX", raising=False)
  monkeypatch.setattr(amx_gemm, "available", lambda: True)
  monkeypatch.setattr(blas_dot, "one_cpu_device", lambda: True)
  assert amx_gemm.enabled(jnp.bfloat16)
  assert not amx_gemm.enabled(jnp.float32) and not amx_gemm.enabled(jnp.float16)
  with amx_gemm.xla_bf16_dots():
    assert not amx_gemm.enabled(jnp.bfloat16)
  with blas_dot.xla_dots():  # XLA's dots everywhere: FLOP counts, reference outputs
    assert not amx_gemm.enabled(jnp.bfloat16)
    with blas_dot.sgemm_dots():
      assert amx_gemm.enabled(jnp.bfloat16)
  monkeypatch.setenv("MELDAE_CPU_AMX", "0")
  assert not amx_gemm.enabled(jnp.bfloat16)
  monkeypatch.delenv("MELDAE_CPU_AMX")
  monkeypatch.setattr(blas_dot, "one_cpu_device", lambda: False)
  assert not amx_gemm.enabled(jnp.bfloat16)
  monkeypatch.setattr(blas_dot, "one_cpu_device", lambda: True)
  monkeypatch.setattr(amx_gemm, "available", lambda: False)
  assert not amx_gemm.enabled(jnp.bfloat16)


def test_cpu_has_amx_reads_cpuinfo_flags(monkeypatch, tmp_path):
  """AMX tiles with bf16 and the AVX-512 parts the packing uses, from the flags line."""
  import builtins  # pylint: disable=g-import-not-at-top
  real_open = builtins.open

  def cpuinfo(flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(builtins, "open", lambda p, *a, **kw: real_open(
        path if p == "/proc/cpuinfo" else p, *a, **kw))

  cpuinfo("fpu avx512f avx512bw avx512vl avx512_bf16 amx_bf16 amx_tile amx_int8")
  assert amx_gemm.cpu_has_amx()
  cpuinfo("fpu avx512f avx512bw avx512vl avx512_bf16")  # AVX-512 BF16, no AMX (Zen 4)
  assert not amx_gemm.cpu_has_amx()
  cpuinfo("fpu avx2 amx_bf16 amx_tile")  # no AVX-512 for the packing
  assert not amx_gemm.cpu_has_amx()


def test_without_amx_the_path_is_xla_and_nothing_is_built(monkeypatch):
  """On a CPU without AMX `available` is False before any build, and bf16_matmul
  products stay XLA's converts and bf16 dots."""
  monkeypatch.setattr(amx_gemm, "cpu_has_amx", lambda: False)
  amx_gemm.available.cache_clear()
  built = []
  monkeypatch.setattr(amx_gemm, "library", lambda: built.append(1))
  try:
    assert not amx_gemm.available() and not built
    a, b = jnp.asarray(_rand((16, 8), 0)), jnp.asarray(_rand((8, 4), 1))
    with blas_dot.matmul_operands(jnp.bfloat16):
      hlo = jax.jit(lambda a, b: blas_dot.dot_general(a, b, DENSE)).lower(a, b).as_text()
    assert "meldae_amx_gemm" not in hlo and "bf16" in hlo
  finally:
    amx_gemm.available.cache_clear()


def test_a_refused_tile_state_falls_back_with_a_warning(monkeypatch, caplog):
  """Where Linux refuses AMX's tile state (arch_prctl), `available` is False with a
  warning that says so, and nothing is registered."""
  class Refusing:  # the built library, as ctypes would load it
    def meldae_amx_init(self):
      return 0

  registered = []
  monkeypatch.setattr(amx_gemm, "cpu_has_amx", lambda: True)
  monkeypatch.setattr(amx_gemm, "library", Refusing)
  monkeypatch.setattr(amx_gemm.native, "register_targets",
                      lambda *args: registered.append(args))
  amx_gemm.available.cache_clear()
  try:
    assert not amx_gemm.available()
  finally:
    amx_gemm.available.cache_clear()
  assert not registered
  assert "arch_prctl" in caplog.text and "XLA's bf16 dot" in caplog.text
