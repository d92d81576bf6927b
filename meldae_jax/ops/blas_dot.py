"""Float32 Dense matmuls on CPU through a CBLAS sgemm (an XLA FFI custom call): MKL's on
Intel CPUs where the `mkl` extra is installed, else the OpenBLAS numpy ships.

Why: on the 2-core AVX2 hosts this project was first measured on, XLA's CPU dot emitters
ran the ViT's skinny matmuls (1600x192x768 at Ti112) at 75-117 GFLOP/s, while numpy's
OpenBLAS ran them at 130-145; on an AVX-512 Intel Xeon with AMX (session 19) XLA's
YNNPACK dots run the step's shapes at 340-400 GFLOP/s and MKL's sgemm at 400-440
(docs/performance.md). `dot_general` below is a
drop-in for `lax.dot_general` that Flax's `Dense`, `DenseGeneral` and attention take as
their `dot_general` argument: a plain matmul (lhs's trailing axes contracted with rhs's
leading ones, float32, no batch axes) goes to sgemm, with a custom VJP whose two
gradients are sgemm calls too; anything else goes to `lax.dot_general` unchanged. Same
FLOPs, same maths; results differ from XLA's dot by float32 rounding only.

It is used only where it is the faster path (`sgemm_by_default`): the CPU backend with a
single device (a custom call has no sharding rule, so a multi-device mesh would gather
its operands), on a CPU without AVX-512, or where the BLAS is MKL. On an AVX-512 CPU
with OpenBLAS, XLA's own dots (YNNPACK) ran the step level with OpenBLAS's AVX-512
kernels and 1.5x faster than its AVX2 ones, which `OPENBLAS_CORETYPE=Haswell` selects
(set on some hosts for older OpenBLAS builds), so XLA's dot is used there
(docs/performance.md, session 10). MKL is looked for only on Intel CPUs: on AMD ones it
takes generic code paths.
Where XLA's dot runs the matmuls, the weight gradients of float32 Dense layers still go
to sgemm (`sgemm_weight_grads`): it reads the transposed operand in place.
The first trace on the CPU backend also installs `host_alloc`, the caching allocator for
XLA's step buffers, which the CPU step needs as much (docs/performance.md; its own switch).
`MELDAE_CPU_GEMM=0` turns it off, `=1` on whatever the CPU; `MELDAE_CBLAS_LIB=/path/
libX.so` picks the CBLAS (LP64 `cblas_sgemm`, or OpenBLAS's ILP64 names). The handler
(`blas_gemm.cc`) is compiled with the system C++ compiler on first use and cached under
`$MELDAE_CACHE` (default `~/.cache/meldae_jax`); if there is no compiler or no BLAS, a
warning says so once and XLA's dot is used.
"""
import contextlib
import ctypes
import functools
import glob
import logging
import os
import pathlib
import sys
import threading

import jax
from jax import lax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
import numpy as np

from meldae_jax.ops import host_alloc
from meldae_jax.ops import native

# The name a matmul done by a custom call (sgemm, the AMX call) carries for remat
# policies: `checkpoint_dots` saves `dot_general`'s outputs but cannot see a custom
# call's, so without it 'dots' would save nothing where these calls run
# (`models.vit.REMAT_POLICIES`).
DOT_NAME = "meldae_dot"

_SRC = pathlib.Path(__file__).with_name("blas_gemm.cc")
_TARGET = "meldae_gemm"
# (symbol, ilp64) in the order they are tried: numpy's scipy-openblas (ILP64), then a
# library named by $MELDAE_CBLAS_LIB (scipy-openblas32, OpenBLAS, MKL's cblas_sgemm).
_SYMBOLS = (("scipy_cblas_sgemm64_", True), ("scipy_cblas_sgemm", False),
            ("cblas_sgemm64_", True), ("cblas_sgemm", False))


def cpu_is_intel() -> bool:
  """Whether /proc/cpuinfo names an Intel CPU: where MKL runs its own AVX-512 kernels
  (on AMD CPUs it takes generic code paths, docs/performance.md)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      return any(line.startswith("vendor_id") and "GenuineIntel" in line for line in f)
  except OSError:
    return False


def mkl_libraries() -> list[str]:
  """MKL's single dynamic library (`libmkl_rt.so.N`) as the `mkl` wheel installs it,
  into this environment's lib/ (`pip install -e '.[mkl]'`); empty when it is not there."""
  found = set()
  for prefix in {sys.prefix, sys.base_prefix}:
    found.update(glob.glob(str(pathlib.Path(prefix) / "lib" / "libmkl_rt.so*")))
  return sorted(found)


def _blas_candidates() -> list[str]:
  """$MELDAE_CBLAS_LIB alone when set; else MKL first on Intel CPUs where it is
  installed, then numpy's bundled OpenBLAS."""
  if os.environ.get("MELDAE_CBLAS_LIB"):
    return [os.environ["MELDAE_CBLAS_LIB"]]
  site = pathlib.Path(np.__file__).resolve().parent.parent
  openblas = sorted(glob.glob(str(site / "numpy.libs" / "libscipy_openblas*.so*")))
  return (mkl_libraries() if cpu_is_intel() else []) + openblas


def is_mkl(path: str) -> bool:
  return os.path.basename(path).startswith("libmkl_rt")


_MKL_THREADING_SEQUENTIAL = 1  # MKL_Set_Threading_Layer's value for no threading layer


def _load(path: str) -> ctypes.CDLL:
  """The library at `path`, its BLAS single-threaded on the calling thread.

  OpenBLAS is loaded as a private copy (numpy's own stays as numpy set it); MKL in
  place, since it opens its other libraries from its own folder, with its sequential
  layer chosen before any other call, so it starts no OpenMP threads of its own."""
  if is_mkl(path):
    lib = ctypes.CDLL(path)
    if not hasattr(lib, "MKL_Set_Threading_Layer"):
      raise OSError(f"{path} has no MKL_Set_Threading_Layer (not MKL's runtime library?)")
    lib.MKL_Set_Threading_Layer(ctypes.c_int(_MKL_THREADING_SEQUENTIAL))
    return lib
  return ctypes.CDLL(native.private_copy(path))


_SET_THREADS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                "openblas_set_num_threads", "MKL_Set_Num_Threads")


_CORENAME = ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
             "openblas_get_corename64_", "openblas_get_corename")
_LOADED = {}  # what `available()` registered: library path, OpenBLAS kernel family


def corename(lib: ctypes.CDLL) -> str | None:
  """The kernel family an OpenBLAS library runs with ('Haswell', 'SkylakeX', ...): its
  own pick for this CPU, or $OPENBLAS_CORETYPE's when that is set as it is loaded;
  for MKL its version ('MKL 2026.2')."""
  for symbol in _CORENAME:
    fn = getattr(lib, symbol, None)
    if fn is not None:
      fn.restype = ctypes.c_char_p
      return fn().decode()
  if hasattr(lib, "MKL_Get_Version_String"):
    text = ctypes.create_string_buffer(256)
    lib.MKL_Get_Version_String(text, ctypes.c_int(len(text)))
    version = text.value.decode(errors="replace").split("Version ", 1)[-1]
    return "MKL " + version.split("-", 1)[0].split(" ", 1)[0]
  return None


def _find_sgemm() -> tuple[int, bool, str]:
  """(address, ilp64, library) of the first CBLAS sgemm found, its BLAS single-threaded."""
  for path in _blas_candidates():
    try:
      lib = _load(path)
    except OSError:
      continue
    for symbol, ilp64 in _SYMBOLS:
      fn = getattr(lib, symbol, None)
      if fn is not None:
        for name in _SET_THREADS:
          if hasattr(lib, name):
            getattr(lib, name)(ctypes.c_int(1))
            break
        _LOADED.update(library=path, core=corename(lib),
                       vendor="mkl" if is_mkl(path) else "openblas")
        return ctypes.cast(fn, ctypes.c_void_p).value, ilp64, path
  raise RuntimeError("no CBLAS sgemm found (numpy.libs/libscipy_openblas*.so, "
                     "MKL's libmkl_rt, $MELDAE_CBLAS_LIB)")


def info() -> dict:
  """The BLAS behind the custom call: {'library': path, 'core': kernel family or MKL
  version, 'vendor': 'mkl' or 'openblas'}; empty when the path is unavailable."""
  return dict(_LOADED) if available() else {}


@functools.cache
def library() -> ctypes.CDLL:
  """`blas_gemm.cc` built and loaded (its attention handlers are `blas_attention`'s)."""
  return ctypes.CDLL(str(native.build(_SRC)))


@functools.cache
def available() -> bool:
  """Builds and registers the handler once; False (with one warning) if it cannot."""
  def hand_over_sgemm(so):
    address, ilp64, _ = _find_sgemm()
    so.meldae_set_sgemm(ctypes.c_void_p(address), ctypes.c_int(int(ilp64)))

  if not native.register_or_warn(library, {_TARGET: "MeldaeGemm"},
                                 "CPU sgemm unavailable, using XLA's dot",
                                 hand_over_sgemm):
    return False
  logging.info("CPU sgemm from %s (kernels: %s)", _LOADED.get("library"),
               _LOADED.get("core"))
  return True


def set_column_split(on: bool) -> None:
  """Whether a GEMM with fewer rows than columns is split over the threads by columns
  (the default) or, as for all others, by rows. For benchmarks (`ab_step.py`): it acts
  when the call runs, not when it is traced."""
  if available():
    library().meldae_set_column_split(ctypes.c_int(int(on)))


class TraceSettings(threading.local):
  """A stack of tracing-time settings (`within`), innermost last, one per thread: a
  trace runs in the thread that asked for it, and a benchmark may trace two steps at
  once in two threads, each with its own settings."""

  def __init__(self):
    super().__init__()
    self.items = []

  def append(self, value):
    self.items.append(value)

  def pop(self):
    return self.items.pop()

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    return self.items[i]


_FORCED = TraceSettings()  # innermost last: True (sgemm wherever it can run), False (XLA's)


def innermost(stack, default=None):
  """A tracing-time setting's innermost value, or `default` outside every `within`."""
  return stack[-1] if stack else default


@contextlib.contextmanager
def within(stack, value):
  """`value` on top of `stack` (a tracing-time setting) for the duration."""
  stack.append(value)
  try:
    yield
  finally:
    stack.pop()


def path_on(stack, env: str, dtype, of=jnp.float32) -> bool:
  """The common switch of the custom-call paths (attention, LayerNorm: float32; the AMX
  products: bf16): not turned off by `within(stack, False)` nor by $env = '0', `dtype`
  is `of`, one CPU device."""
  if not innermost(stack, True):
    return False
  if os.environ.get(env, "1") == "0":
    return False
  return jnp.dtype(dtype) == jnp.dtype(of) and one_cpu_device()


def xla_dots():
  """Within: trace with XLA's dot everywhere (FLOP counts, reference outputs), the
  bf16-rounded products (`amx_gemm`) included."""
  return within(_FORCED, False)


def within_xla_dots() -> bool:
  """Whether the innermost of `xla_dots` / `sgemm_dots` now is `xla_dots`."""
  return not innermost(_FORCED, True)


def sgemm_dots():
  """Within: trace with the sgemm path wherever it can run, AVX-512 or not (benchmarks)."""
  return within(_FORCED, True)


def cpu_has_avx512() -> bool:
  """AVX-512 F/CD/BW/DQ/VL (numpy's own detection of this CPU)."""
  try:
    features = np._core._multiarray_umath.__cpu_features__  # pylint: disable=protected-access
  except AttributeError:
    return False
  return bool(features.get("AVX512_SKX"))


def one_cpu_device() -> bool:
  """The CPU backend with a single device: where the rewrites here may run. Accelerator
  dots take transposed operands as they are, and on a multi-device mesh a custom call or
  a 1-D reshape would gather a sharded operand."""
  return jax.default_backend() == "cpu" and jax.device_count() == 1


def _wanted(auto) -> bool:
  """The sgemm switch as `within` (innermost), else MELDAE_CPU_GEMM ('0' off, '1' on),
  else `auto()`, asked only then (it may build and load the BLAS)."""
  if (forced := innermost(_FORCED)) is not None:
    return forced
  mode = os.environ.get("MELDAE_CPU_GEMM", "auto")
  return mode == "1" if mode in ("0", "1") else auto()


def sgemm_by_default() -> bool:
  """Whether the sgemm path runs the Dense matmuls unless told otherwise: on CPUs
  without AVX-512 (OpenBLAS beats XLA's AVX2 dot emitters, sessions 3-9), and where the
  BLAS is MKL (on Intel CPUs with the `mkl` extra installed: it runs the step's shapes
  at 400-440 GFLOP/s where XLA's YNNPACK dots run 340-400, docs/performance.md,
  session 19). Elsewhere XLA's AVX-512 dots are level with OpenBLAS's (session 10)."""
  return not cpu_has_avx512() or (available() and info().get("vendor") == "mkl")


def enabled() -> bool:
  """Whether Dense matmuls traced now go to sgemm. Decided when tracing: a function
  jit has already traced keeps the choice it was traced with."""
  if jax.default_backend() != "cpu":
    return False
  host_alloc.install()  # the CPU step's other half (its own switch): buffers stay mapped
  if not one_cpu_device():
    return False
  return _wanted(auto=sgemm_by_default) and available()


def cpu_weight_grads() -> bool:
  """Whether float32 Dense matmuls that XLA's dot runs take `weight_grad`'s weight
  gradient (one CPU device) instead of XLA's copy of the wider operand and its
  transposed-lhs dot: sgemm's product with a transposed A (`sgemm_weight_grads`), or
  else a row-major copy of the narrower operand and a dot YNNPACK runs. Same FLOPs; on
  an S112 train step XLA copied each MLP's (1600, 1536) cotangent, ~1.6 ms, where the
  (1600, 384) input suffices (docs/performance.md, session 13)."""
  return one_cpu_device()


def sgemm_weight_grads() -> bool:
  """Whether `weight_grad`'s float32 products go to sgemm with a transposed A (one CPU
  device, the sgemm handler built): OpenBLAS packs x's rows as they lie, so the
  transposed copy that YNNPACK's dot needs is not made. On an S112 train step those
  copies (48 a step, 1600 x 384 each) ran on one core with the other idle for ~28 ms
  (docs/performance.md, session 15). Off within `xla_dots()` and with
  MELDAE_CPU_GEMM=0."""
  if not one_cpu_device():
    return False
  return _wanted(auto=lambda: True) and available()


_OPERANDS = TraceSettings()  # innermost last: the dtype Dense operands round to, or None


def matmul_operands(dtype):
  """Within: float32 Dense matmuls traced here round their operands to `dtype` (e.g.
  bfloat16) and accumulate in float32; outputs, gradients and all other ops stay float32.

  Why: PyTorch's bf16 autocast; XLA's CPU dots run bf16 x bf16 -> f32 at 2x their
  float32 speed on CPUs with AVX512-BF16 (`benchmarks/dot_forms.py`), while a model
  computed wholly in bf16 (`model.dtype`) pays for converts and slow bf16 reductions.
  None: unchanged.
  """
  return within(_OPERANDS, None if dtype is None else jnp.dtype(dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rounded_gemm(a, b, dtype):
  """(M, K) @ (K, N) float32 with both operands rounded to `dtype`, float32 sums; its
  gradients are the same kind of product (g rounded too), as under autocast. The weight
  gradient is `weight_grad`'s. With `dtype` float32 nothing is rounded: XLA's float32
  dot with `weight_grad`'s weight gradient (`cpu_weight_grads`). Rounded to bf16 on
  a CPU with AMX, all three products are `amx_gemm`'s, which rounds as it packs."""
  return _rounded_fwd(a, b, dtype)[0]


def _amx():
  """`amx_gemm`, imported when first needed (it imports this module)."""
  from meldae_jax.ops import amx_gemm  # pylint: disable=g-import-not-at-top
  return amx_gemm


def _rounded_fwd(a, b, dtype):
  if _amx().enabled(dtype):  # rounds while it packs: float32 residuals, no converts
    return _amx().gemm(a, b), (a, b)
  a16, b16 = a.astype(dtype), b.astype(dtype)
  return lax.dot(a16, b16, preferred_element_type=jnp.float32), (a16, b16)


def _rounded_bwd(dtype, res, g):
  a16, b16 = res
  if a16.dtype != jnp.dtype(dtype):  # the forward took amx_gemm (float32 residuals)
    return _amx().gemm(g, b16, trans_b=True), _amx().gemm(a16, g, trans_a=True)
  g16 = g.astype(dtype)
  da = lax.dot_general(g16, b16, (((1,), (1,)), ((), ())),
                       preferred_element_type=jnp.float32)
  return da, weight_grad(a16, g16)


def weight_grad(a16, g16):
  """a16^T g16 (M contracted) as a canonical bf16 x bf16 -> f32 dot.

  Why: XLA's CPU backend hands a dot to YNNPACK only when its lhs is row-major. a^T g
  contracts a's rows, so XLA would upcast both bf16 operands and run a float32 dot, at
  half the bf16 speed or less. So the narrower of the two is copied transposed
  (`_row_major_transpose`) and made the lhs: a^T g directly, or (g^T a)^T when g is
  narrower. The product sits behind an optimization barrier there: otherwise XLA folds
  the outer transpose back into the dot, after its bf16 decision, and XLA 0.12 then
  fails at run time ("Unsupported element type for DotThunk::Execute: BF16 x BF16 = F32").
  Only on one CPU device (`one_cpu_device`); elsewhere XLA's transposed-lhs dot. In
  float32 it is sgemm's product with a transposed A where that can run
  (`sgemm_weight_grads`), which needs no copy.
  """
  if not one_cpu_device():
    return transposed_lhs_dot(a16, g16)
  if a16.dtype == g16.dtype == jnp.float32 and sgemm_weight_grads():
    return _call(a16, g16, True, False)
  if a16.shape[1] <= g16.shape[1]:
    return lax.dot(_row_major_transpose(a16), g16, preferred_element_type=jnp.float32)
  gta = lax.dot(_row_major_transpose(g16), a16, preferred_element_type=jnp.float32)
  return lax.optimization_barrier(gta).T


def transposed_lhs_dot(a, g):
  """a^T g as XLA's dot with a transposed lhs (what `weight_grad` replaces)."""
  return lax.dot_general(a, g, (((0,), (0,)), ((), ())),
                         preferred_element_type=jnp.float32)


def _row_major_transpose(x):
  """x.T (2-D) as a real row-major copy: through a 1-D reshape behind an optimization
  barrier, so that XLA can neither fold it into the dot nor make it a layout change."""
  rows, cols = x.shape
  return lax.optimization_barrier(x.T.reshape(-1)).reshape(cols, rows)


rounded_gemm.defvjp(_rounded_fwd, _rounded_bwd)


def _call(a, b, trans_a: bool, trans_b: bool):
  if not available():
    raise RuntimeError("the sgemm custom call is unavailable (see the warning above)")
  return native.gemm_call(_TARGET, a, b, trans_a, trans_b)


@jax.custom_vjp
def gemm(a, b):
  """(M, K) @ (K, N) in float32 by sgemm; differentiable."""
  return _call(a, b, False, False)


def _gemm_fwd(a, b):
  return _call(a, b, False, False), (a, b)


def _gemm_bwd(res, g):
  a, b = res
  return _call(g, b, False, True), _call(a, g, True, False)


gemm.defvjp(_gemm_fwd, _gemm_bwd)


def _is_plain_matmul(lhs, rhs, dimension_numbers, precision,
                     preferred_element_type) -> bool:
  (lc, rc), (lb, rb) = dimension_numbers
  nc = len(lc)
  return (not lb and not rb and nc > 0
          and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
          and preferred_element_type in (None, jnp.float32)
          and precision in (None, lax.Precision.DEFAULT,
                            (lax.Precision.DEFAULT, lax.Precision.DEFAULT))
          and tuple(lc) == tuple(range(lhs.ndim - nc, lhs.ndim))
          and tuple(rc) == tuple(range(nc))
          and lhs.ndim > nc and rhs.ndim > nc and lhs.size > 0 and rhs.size > 0)


def dot_general(lhs, rhs, dimension_numbers, precision=None,
                preferred_element_type=None, **kwargs):
  """`lax.dot_general`, with plain float32 matmuls on CPU done by sgemm, or with their
  operands rounded within `matmul_operands`, or else (one CPU device) with
  `weight_grad`'s weight gradient."""
  rounded_to = innermost(_OPERANDS)
  plain = not kwargs and _is_plain_matmul(lhs, rhs, dimension_numbers, precision,
                                          preferred_element_type)
  sgemm = plain and enabled()  # asked first, whatever the path: it installs host_alloc
  if plain and rounded_to is None and not sgemm and cpu_weight_grads():
    rounded_to = jnp.dtype(jnp.float32)  # XLA's dots, row-major weight gradients
  if not plain or not (rounded_to is not None or sgemm):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, **kwargs)
  nc = len(dimension_numbers[0][0])
  lhs_free, k_dims = lhs.shape[:lhs.ndim - nc], lhs.shape[lhs.ndim - nc:]
  rhs_free = rhs.shape[nc:]
  k = int(np.prod(k_dims))
  if rounded_to is not None:
    out = rounded_gemm(lhs.reshape(-1, k), rhs.reshape(k, -1), rounded_to)
  else:
    out = gemm(lhs.reshape(-1, k), rhs.reshape(k, -1))
  out = checkpoint_name(out, DOT_NAME)  # a matmul's output, whatever ran it
  return out.reshape(*lhs_free, *rhs_free)
