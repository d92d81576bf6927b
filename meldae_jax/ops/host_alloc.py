"""Keeps XLA's large CPU buffers mapped from one step to the next.

Why: XLA's CPU runtime allocates a step's temporaries (395 MiB for the Ti112 train
step) with `posix_memalign` and frees them when the step ends. With glibc's malloc a
block that size is mmapped and unmapped every step, or left as a heap hole that the next
request, a few bytes larger after alignment, does not fit; either way every page faults
and is zeroed again: ~100k minor faults and ~0.35 CPU-seconds of kernel time per Ti112
train step on the 2-core host (docs/performance.md). glibc's own settings
(`mallopt`, `GLIBC_TUNABLES`) fixed it in only some processes.

`install()` compiles `host_alloc.cc` and points the GOT entries for `posix_memalign`,
`free`, `realloc` and `malloc_usable_size` of XLA's runtime library (`libjax_common`)
at a small caching allocator: aligned requests of at least 1 MiB come from one reserved
address range, and freed blocks stay there, mapped, for the next request (as PyTorch's
and XLA's own GPU allocators keep theirs). Every other pointer goes to glibc as before.
The cost: host memory stays at its peak, as with those allocators.

It is installed when a model's Dense layer is first traced on the CPU backend
(`blas_dot.enabled()`, also with the sgemm path switched off). `MELDAE_HOST_ALLOC=0` leaves malloc alone; without glibc on
x86-64/aarch64 Linux or a C++ compiler it is skipped with a log line.
"""
import ctypes
import functools
import logging
import os
import pathlib
import platform

from meldae_jax.ops import native

_SRC = pathlib.Path(__file__).with_name("host_alloc.cc")
# The libraries whose allocation calls are redirected: XLA's runtime in jaxlib >= 0.5
# (libjax_common.so) and before (xla_extension.so).
LIBRARIES = ("libjax_common", "xla_extension")
MIN_BYTES = 1 << 20
STAT_FIELDS = ("reserved", "mapped", "live", "cached", "blocks", "reused")


def _reserve_bytes() -> int:
  """Address space to reserve: the machine's RAM, as no more can be live at once."""
  return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def supported() -> bool:
  return (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
          and platform.machine() in ("x86_64", "aarch64"))


@functools.cache
def library() -> ctypes.CDLL:
  """The compiled allocator (built once, then cached on disk)."""
  lib = ctypes.CDLL(str(native.build(_SRC)))
  lib.meldae_host_alloc_install.restype = ctypes.c_int
  lib.meldae_host_alloc_install.argtypes = (ctypes.c_char_p, ctypes.c_size_t,
                                            ctypes.c_size_t)
  lib.meldae_host_alloc_posix_memalign.argtypes = (
      ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t)
  lib.meldae_host_alloc_free.argtypes = (ctypes.c_void_p,)
  lib.meldae_host_alloc_realloc.restype = ctypes.c_void_p
  lib.meldae_host_alloc_realloc.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
  lib.meldae_host_alloc_usable_size.restype = ctypes.c_size_t
  lib.meldae_host_alloc_usable_size.argtypes = (ctypes.c_void_p,)
  return lib


@functools.cache
def install() -> int:
  """Redirects XLA's large host allocations to the caching allocator, once per process.

  Returns the number of GOT entries patched (0 if it was not installed)."""
  if os.environ.get("MELDAE_HOST_ALLOC", "1") == "0" or not supported():
    return 0
  try:
    lib = library()
  except (OSError, RuntimeError) as e:
    logging.warning("XLA's host buffers stay with glibc malloc: %s", e)
    return 0
  import jax  # pylint: disable=g-import-not-at-top
  jax.devices()  # XLA's runtime library is loaded by now
  slots = lib.meldae_host_alloc_install(";".join(LIBRARIES).encode(), _reserve_bytes(),
                                        MIN_BYTES)
  if slots <= 0:
    logging.warning("XLA's host buffers stay with glibc malloc (install returned %d)",
                    slots)
    return 0
  logging.info("XLA's host buffers >= %d bytes are cached (%d GOT entries)",
               MIN_BYTES, slots)
  return slots


def stats() -> dict[str, int]:
  """Bytes and block counts of the allocator (all zero if it was never loaded)."""
  if not library.cache_info().currsize:
    return dict.fromkeys(STAT_FIELDS, 0)
  out = (ctypes.c_uint64 * len(STAT_FIELDS))()
  library().meldae_host_alloc_stats(out)
  return dict(zip(STAT_FIELDS, out))
