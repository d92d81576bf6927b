"""The sgemm custom call (meldae_jax/ops/blas_dot.py): same results as XLA's dot, and
really taken (the lowered program holds the custom call) where it should be."""
import contextlib
import json
import os
import re
import subprocess
import sys

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from meldae_jax.ops import amx_gemm
from meldae_jax.ops import blas_dot
from meldae_jax.ops import native

DENSE = (((2,), (0,)), ((), ()))


def _rand(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def _uses_gemm(fn, *args) -> bool:
  return "meldae_gemm" in jax.jit(fn).lower(*args).as_text()


pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not blas_dot.available(),
    reason="no C++ compiler or BLAS on this host")


@pytest.fixture(autouse=True)
def _sgemm_path():
  """The path under test, also on AVX-512 CPUs (where the project uses XLA's dot)."""
  with blas_dot.sgemm_dots():
    yield


@pytest.mark.parametrize("lhs_shape,rhs_shape,dims", [
    ((2, 50, 192), (192, 3, 64), DENSE),                        # DenseGeneral (q, k, v)
    ((2, 50, 3, 64), (3, 64, 192), (((2, 3), (0, 1)), ((), ()))),  # attention output
    ((37, 5), (5, 1), (((1,), (0,)), ((), ()))),                # rows not a tile multiple
    ((1, 9), (9, 4), (((1,), (0,)), ((), ()))),                 # one row
])
def test_matches_xla_dot_values_and_gradients(lhs_shape, rhs_shape, dims):
  a, b = _rand(lhs_shape, 0), _rand(rhs_shape, 1)
  ours = lambda a, b: blas_dot.dot_general(a, b, dims)  # noqa: E731
  ref = lambda a, b: lax.dot_general(a, b, dims)  # noqa: E731
  assert _uses_gemm(ours, a, b)
  np.testing.assert_allclose(jax.jit(ours)(a, b), ref(a, b), rtol=1e-5, atol=1e-5)
  # A loss that weights every output differently, so a transposed gradient shows.
  w = _rand(ref(a, b).shape, 2)
  g_ours = jax.jit(jax.grad(lambda a, b: jnp.sum(w * ours(a, b)), (0, 1)))(a, b)
  g_ref = jax.grad(lambda a, b: jnp.sum(w * ref(a, b)), (0, 1))(a, b)
  for x, y in zip(g_ours, g_ref):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("column_split", [True, False])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False),
                                             (False, True), (True, True)])
def test_wide_products_split_by_columns_or_rows(trans_a, trans_b, column_split):
  """M < N (the weight gradients' shape) is split over the threads by columns unless
  told otherwise; either split gives the product, with N not a multiple of the tiles."""
  m, k, n = 24, 40, 67
  a = _rand((k, m) if trans_a else (m, k), 0)
  b = _rand((n, k) if trans_b else (k, n), 1)
  blas_dot.set_column_split(column_split)
  try:
    out = jax.jit(blas_dot._call, static_argnums=(2, 3))(a, b, trans_a, trans_b)  # pylint: disable=protected-access
  finally:
    blas_dot.set_column_split(True)
  ref = (a.T if trans_a else a) @ (b.T if trans_b else b)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["batch_dims", "bf16", "contract_leading_lhs"])
def test_other_dot_generals_go_to_xla_unchanged(case):
  if case == "batch_dims":
    a, b, dims = _rand((4, 6, 8), 0), _rand((4, 8, 3), 1), (((2,), (1,)), ((0,), (0,)))
  elif case == "bf16":
    a, b, dims = _rand((6, 8), 0).astype(jnp.bfloat16), _rand((8, 3), 1), (
        ((1,), (0,)), ((), ()))
  else:
    a, b, dims = _rand((8, 6), 0), _rand((8, 3), 1), (((0,), (0,)), ((), ()))
  ours = lambda a, b: blas_dot.dot_general(a, b, dims)  # noqa: E731
  assert not _uses_gemm(ours, a, b)
  np.testing.assert_array_equal(jax.jit(ours)(a, b),
                                jax.jit(lambda a, b: lax.dot_general(a, b, dims))(a, b))


def test_xla_dots_context_and_env_switch_it_off(monkeypatch):
  a, b = _rand((2, 5, 8), 0), _rand((8, 3), 1)
  # A new function each time: jit caches a trace, and the choice is made when tracing.
  ours = lambda: lambda a, b: blas_dot.dot_general(a, b, DENSE)  # noqa: E731
  assert _uses_gemm(ours(), a, b)  # within sgemm_dots (the fixture)
  with blas_dot.xla_dots():
    assert not _uses_gemm(ours(), a, b)
  assert _uses_gemm(ours(), a, b)
  monkeypatch.setattr(blas_dot, "_FORCED", [])  # the env and the CPU decide
  monkeypatch.setenv("MELDAE_CPU_GEMM", "0")
  assert not _uses_gemm(ours(), a, b)
  monkeypatch.setenv("MELDAE_CPU_GEMM", "1")
  assert _uses_gemm(ours(), a, b)


@pytest.mark.parametrize("avx512,vendor,want", [
    (True, "openblas", False), (False, "openblas", True), (True, "mkl", True),
    (False, "mkl", True)])
def test_by_default_sgemm_only_without_avx512_or_with_mkl(monkeypatch, avx512, vendor, want):
  """XLA's dots use AVX-512 themselves and were level with OpenBLAS's (docs/performance.md,
  session 10): the custom call is for CPUs without it, or where the BLAS is MKL (faster
  than XLA's dots on Intel CPUs, session 19), unless MELDAE_CPU_GEMM says otherwise."""
  a, b = _rand((2, 5, 8), 0), _rand((8, 3), 1)
  ours = lambda: lambda a, b: blas_dot.dot_general(a, b, DENSE)  # noqa: E731
  monkeypatch.setattr(blas_dot, "_FORCED", [])
  monkeypatch.delenv("MELDAE_CPU_GEMM", raising=False)
  monkeypatch.setattr(blas_dot, "cpu_has_avx512", lambda: avx512)
  monkeypatch.setattr(blas_dot, "info", lambda: {"vendor": vendor})
  assert blas_dot.sgemm_by_default() is want
  assert _uses_gemm(ours(), a, b) is want
  monkeypatch.setenv("MELDAE_CPU_GEMM", "auto")
  assert _uses_gemm(ours(), a, b) is want
  monkeypatch.setenv("MELDAE_CPU_GEMM", "0")
  assert not _uses_gemm(ours(), a, b)


def test_info_names_the_library_and_its_kernels():
  info = blas_dot.info()
  assert os.path.exists(info["library"])
  assert info["vendor"] == ("mkl" if blas_dot.is_mkl(info["library"]) else "openblas")
  if "openblas" in os.path.basename(info["library"]).lower():
    assert info["core"]  # e.g. 'Haswell', 'SkylakeX'
  if info["vendor"] == "mkl":
    assert re.fullmatch(r"MKL \d{4}\.\d+(\.\d+)?", info["core"]), info["core"]


@pytest.mark.parametrize("intel", [True, False])
def test_mkl_is_tried_first_on_intel_cpus_only(monkeypatch, tmp_path, intel):
  """MKL (where the `mkl` extra installed it) comes before numpy's OpenBLAS on Intel
  CPUs; on others it is not tried (generic code paths there); $MELDAE_CBLAS_LIB alone
  wins over both."""
  mkl = str(tmp_path / "libmkl_rt.so.3")
  monkeypatch.delenv("MELDAE_CBLAS_LIB", raising=False)
  monkeypatch.setattr(blas_dot, "cpu_is_intel", lambda: intel)
  monkeypatch.setattr(blas_dot, "mkl_libraries", lambda: [mkl])
  found = blas_dot._blas_candidates()  # pylint: disable=protected-access
  openblas = [p for p in found if "openblas" in os.path.basename(p)]
  assert openblas, found  # numpy's own, always after
  assert found == ([mkl] if intel else []) + openblas
  monkeypatch.setenv("MELDAE_CBLAS_LIB", "/some/libcblas.so")
  assert blas_dot._blas_candidates() == ["/some/libcblas.so"]  # pylint: disable=protected-access


_MKL_CHILD = """
import json, numpy as np, jax
import meldae_jax
from meldae_jax.ops import amx_gemm
from meldae_jax.ops import blas_dot
a = np.random.default_rng(0).standard_normal((300, 70), np.float32)
b = np.random.default_rng(1).standard_normal((70, 90), np.float32)
got = np.asarray(jax.jit(blas_dot.gemm)(a, b))
np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
maps = open("/proc/self/maps").read()
print(json.dumps(dict(blas_dot.info(), default=blas_dot.sgemm_by_default(),
                      sequential="libmkl_sequential" in maps, iomp="libiomp5" in maps)))
"""


@pytest.mark.skipif(not blas_dot.mkl_libraries(), reason="the mkl extra is not installed")
def test_mkl_runs_the_gemm_in_place_and_sequential():
  """MKL loaded where it lies (it opens its other libraries from there, so no private
  copy), with its sequential layer: right products, no OpenMP runtime; and it makes the
  sgemm path the default."""
  env = dict(os.environ, MELDAE_CBLAS_LIB=blas_dot.mkl_libraries()[0])
  env.pop("MELDAE_CPU_GEMM", None)
  out = subprocess.run([sys.executable, "-c", _MKL_CHILD], env=env, capture_output=True,
                       text=True, check=False, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got["vendor"] == "mkl" and got["core"].startswith("MKL"), got
  assert got["sequential"] and not got["iomp"], got
  assert got["default"] is True, got


def test_vmap_of_the_custom_call():
  a, b = _rand((3, 7, 8), 0), _rand((8, 5), 1)
  out = jax.vmap(blas_dot.gemm, in_axes=(0, None))(a, b)
  np.testing.assert_allclose(out, jnp.einsum("bmk,kn->bmn", a, b), rtol=1e-5, atol=1e-5)


def test_the_compiled_handler_is_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("MELDAE_CACHE", str(tmp_path))
  first = native.build(blas_dot._SRC)  # pylint: disable=protected-access
  mtime = os.path.getmtime(first)
  assert first.parent == tmp_path and first.suffix == ".so"
  assert native.build(blas_dot._SRC) == first  # pylint: disable=protected-access
  assert os.path.getmtime(first) == mtime


def test_vit_dense_layers_take_the_gemm_path():
  """Patch embedding, the fused q/k/v projection, out and both MLP layers of every
  block: 1 + 4 * depth calls forward, and the same outputs as with XLA's dots."""
  from meldae_jax.models import vit  # pylint: disable=g-import-not-at-top
  model = vit.ViT("Mu/8", scan=False)
  x = _rand((2, 32, 32, 3), 0)
  params = model.init(jax.random.key(0), x, train=False)
  apply = lambda: lambda p, x: model.apply(p, x, train=False)  # noqa: E731
  text = jax.jit(apply()).lower(params, x).as_text()
  assert text.count("@meldae_gemm") == 1 + 4 * vit.VARIANTS["Mu"]["depth"]
  with blas_dot.xla_dots():
    ref = jax.jit(apply())(params, x)
  for got, want in zip(jax.jit(apply())(params, x), ref):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("path", ["xla", "amx"])
@pytest.mark.parametrize("k,n", [(8, 3), (3, 8), (6, 6)])  # both ways of weight_grad
def test_matmul_operands_rounds_to_bf16_and_keeps_float32(k, n, path):
  """Within `matmul_operands(bfloat16)`: the product of the bf16-rounded operands with
  float32 sums, float32 out; its gradients are products of rounded values too. Both
  paths: XLA's converts and bf16 dots, and `amx_gemm`'s call (on CPUs with AMX)."""
  if path == "amx" and not amx_gemm.enabled(jnp.bfloat16):
    pytest.skip("no AMX on this host")
  a, b = _rand((2, 5, k), 0), _rand((k, n), 1)
  w = _rand((2, 5, n), 2)
  fn = lambda: lambda a, b: jnp.sum(w * blas_dot.dot_general(a, b, DENSE))  # noqa: E731
  xla = amx_gemm.xla_bf16_dots() if path == "xla" else contextlib.nullcontext()
  with blas_dot.matmul_operands(jnp.bfloat16), xla:
    ours = lambda a, b: blas_dot.dot_general(a, b, DENSE)  # noqa: E731
    out = jax.jit(ours)(a, b)
    grads = jax.jit(jax.grad(fn(), (0, 1)))(a, b)
    assert not _uses_gemm(ours, a, b)
    hlo = jax.jit(jax.value_and_grad(fn(), (0, 1))).lower(a, b).as_text()
    assert hlo.count("@meldae_amx_gemm") == (3 if path == "amx" else 0)
  r = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, jnp.einsum("bmk,kn->bmn", r(a), r(b)), rtol=1e-6,
                             atol=1e-6)
  assert float(jnp.abs(out - jnp.einsum("bmk,kn->bmn", a, b)).max()) > 1e-4  # rounded
  g = r(w)  # the cotangent is rounded as well
  np.testing.assert_allclose(grads[0], jnp.einsum("bmn,kn->bmk", g, r(b)), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(grads[1], jnp.einsum("bmk,bmn->kn", r(a), g), rtol=1e-5,
                             atol=1e-5)
  with blas_dot.matmul_operands(None):  # None: unchanged
    assert _uses_gemm(lambda a, b: blas_dot.dot_general(a, b, DENSE), a, b)


def _dot_operand_types(hlo: str) -> list:
  """(lhs, rhs) element types of every dot in a compiled HLO module's text."""
  types, found = {}, []
  for line in hlo.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.-]+) = (\w+)\[", line)
    if not m:
      continue
    types[m.group(1)] = m.group(2)
    d = re.search(r" dot\(%([\w.-]+), %([\w.-]+)\)", line)
    if d:
      found.append((types[d.group(1)], types[d.group(2)]))
  return found


@pytest.mark.parametrize("k,n", [(48, 96), (96, 48)])
def test_bf16_weight_gradients_stay_bf16_dots(k, n, monkeypatch):
  """XLA runs a^T g with bf16 operands as a float32 dot (it upcasts dots whose lhs is
  transposed); `weight_grad` keeps every dot of the backward pass bf16 x bf16."""
  a, b, w = _rand((64, k), 0), _rand((k, n), 1), _rand((64, n), 2)

  def dots():
    with blas_dot.matmul_operands(jnp.bfloat16), amx_gemm.xla_bf16_dots():
      loss = lambda a, b: jnp.sum(  # noqa: E731
          w * blas_dot.dot_general(a, b, (((1,), (0,)), ((), ()))))
      hlo = jax.jit(jax.grad(loss, (0, 1))).lower(a, b).compile().as_text()
    return _dot_operand_types(hlo)

  ours = dots()
  assert len(ours) == 2 and set(ours) == {("bf16", "bf16")}, ours
  monkeypatch.setattr(blas_dot, "weight_grad", blas_dot.transposed_lhs_dot)
  assert ("f32", "f32") in dots()  # what it replaces


def _dot_dims(hlo: str) -> list:
  """(lhs contracting dims, rhs contracting dims) of every dot in a compiled HLO text."""
  return re.findall(r" dot\(.*?lhs_contracting_dims=\{([\d,]*)\}.*?"
                    r"rhs_contracting_dims=\{([\d,]*)\}", hlo)


@pytest.mark.parametrize("k,n", [(48, 96), (96, 48)])  # both ways of weight_grad
def test_float32_weight_gradients_are_row_major_dots(k, n, monkeypatch):
  """With XLA's float32 dots on one CPU device, a Dense's weight gradient is
  `weight_grad`'s dot on a row-major copy (lhs contracted on its last axis), not XLA's
  transposed-lhs dot; values and gradients as `lax.dot_general`'s."""
  if not blas_dot.one_cpu_device():
    pytest.skip("the rewrite runs on one CPU device only")
  a, b, w = _rand((64, k), 0), _rand((k, n), 1), _rand((64, n), 2)
  dims = (((1,), (0,)), ((), ()))

  def grads(dot):
    loss = lambda a, b: jnp.sum(w * dot(a, b, dims))  # noqa: E731
    fn = jax.jit(jax.grad(loss, (0, 1)))
    return fn(a, b), fn.lower(a, b).compile().as_text()

  with blas_dot.xla_dots():
    (ga, gb), hlo = grads(blas_dot.dot_general)
    want, _ = grads(lax.dot_general)
    np.testing.assert_allclose(ga, want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gb, want[1], rtol=1e-5, atol=1e-5)
    assert len(_dot_dims(hlo)) == 2 and ("0", "0") not in _dot_dims(hlo), hlo
    assert all(lhs == "1" for lhs, _ in _dot_dims(hlo)), _dot_dims(hlo)
    monkeypatch.setattr(blas_dot, "cpu_weight_grads", lambda: False)
    _, hlo = grads(blas_dot.dot_general)
    assert any(lhs == "0" for lhs, _ in _dot_dims(hlo)), _dot_dims(hlo)  # what it replaces


def _eqns(jaxpr, prim: str) -> list:
  return [e for e in jaxpr.eqns if e.primitive.name == prim]


@pytest.mark.parametrize("k,n", [(48, 96), (96, 48)])
def test_float32_weight_gradient_is_sgemm_on_the_input_itself(k, n, monkeypatch):
  """Where XLA's dot runs a float32 Dense (as on an AVX-512 CPU), its weight gradient is
  one sgemm call with a transposed A on the layer input itself, no transposed copy;
  values and gradients as `lax.dot_general`'s. Without it, no custom call."""
  if not blas_dot.one_cpu_device():
    pytest.skip("the rewrite runs on one CPU device only")
  monkeypatch.setattr(blas_dot, "_FORCED", [])  # not the fixture's sgemm_dots
  monkeypatch.setattr(blas_dot, "sgemm_by_default", lambda: False)  # XLA's dots, whatever the CPU
  monkeypatch.delenv("MELDAE_CPU_GEMM", raising=False)
  a, b, w = _rand((64, k), 0), _rand((k, n), 1), _rand((64, n), 2)
  dims = (((1,), (0,)), ((), ()))
  grad = lambda dot: jax.grad(  # noqa: E731
      lambda a, b: jnp.sum(w * dot(a, b, dims)), (0, 1))

  got, want = jax.jit(grad(blas_dot.dot_general))(a, b), jax.jit(grad(lax.dot_general))(a, b)
  for x, y in zip(got, want):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
  jaxpr = jax.make_jaxpr(grad(blas_dot.dot_general))(a, b).jaxpr
  (call,) = _eqns(jaxpr, "ffi_call")
  assert call.params["attributes"] == (("trans_a", True), ("trans_b", False))
  assert call.invars[0] is jaxpr.invars[0]  # a itself, not a transposed copy
  monkeypatch.setenv("MELDAE_CPU_GEMM", "0")
  assert not _eqns(jax.make_jaxpr(grad(blas_dot.dot_general))(a, b).jaxpr, "ffi_call")
