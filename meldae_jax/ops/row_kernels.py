"""A handler library of this folder whose kernels work float32 arrays in blocks over
XLA's pool (`layer_norm.cc` and `bias_gelu.cc` by rows, `adamw.cc` by chunks of each
leaf, with `row_blocks.h`): built, loaded and registered once, and switched as one CPU
path.

The path is on for float32 on one CPU device with AVX-512 (the kernels use it)
where the library could be built, unless `$env` is '0' or within `off()`. The plain
loops that stand in for AVX-512 (`set_plain`) are for tests on any CPU.
"""
import ctypes
import functools
import pathlib

from meldae_jax.ops import blas_dot
from meldae_jax.ops import native


class RowKernels:
  """`source` (a file name in this folder) with its FFI `targets` ({name: symbol}),
  switched by `env`; `fallback` names what runs where it cannot be built."""

  def __init__(self, source: str, targets: dict[str, str], env: str, fallback: str):
    self.source = pathlib.Path(__file__).with_name(source)
    self.targets, self.env, self.fallback = targets, env, fallback
    self._forced = blas_dot.TraceSettings()  # innermost last: False turns the path off

  @functools.cached_property
  def library(self) -> ctypes.CDLL:
    """The source built and loaded."""
    return ctypes.CDLL(str(native.build(self.source)))

  @functools.cache  # noqa: B019  one instance per library, kept for the process
  def available(self) -> bool:
    """Builds and registers the handlers once; False (with one warning) if it cannot."""
    return native.register_or_warn(lambda: self.library, self.targets, self.fallback)

  def set_plain(self, on: bool) -> None:
    """Whether the handlers run their plain loops instead of AVX-512 (tests); acts when
    the calls run, not when they are traced."""
    self.library.meldae_plain_loops(ctypes.c_int(int(on)))

  def off(self):
    """Within: trace without these calls (benchmarks, tests)."""
    return blas_dot.within(self._forced, False)

  def enabled(self, dtype) -> bool:
    """Whether a computation over `dtype` values traced now takes the calls."""
    return (blas_dot.path_on(self._forced, self.env, dtype)
            and blas_dot.cpu_has_avx512() and self.available())
