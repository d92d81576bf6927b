"""glibc malloc settings that keep XLA's per-step CPU buffers mapped between steps.

XLA's CPU runtime allocates a step's temporaries as one block (395 MiB for the Ti112
train step) and frees it when the step ends. With glibc's defaults a block that size is
mmapped and unmapped every step, so every page of it faults and is zeroed again: 101k
minor faults and ~0.35 CPU-seconds of kernel time per Ti112 train step, a fifth of the
step (docs/performance.md). One malloc arena, with the mmap and trim thresholds raised,
makes such blocks come from the heap and stay there, and the next step reuses them.
The cost: the process keeps its peak heap (as PyTorch's caching allocator does).

`meldae_jax/__init__.py` applies this on import, like `xla_flags`;
`MELDAE_MALLOC_TUNING=0` leaves malloc alone. Only glibc (Linux) is touched.
"""
import ctypes
import os
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1  # mallopt takes an int

# (parameter, value): blocks up to 2 GiB come from the heap, freed memory is kept, and
# all threads share one arena (a thread arena's heap is capped at 64 MiB, so XLA's worker
# threads would mmap big blocks regardless of the threshold).
SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, _INT_MAX),
            (_M_TRIM_THRESHOLD, _INT_MAX))


def apply(environ=os.environ) -> bool:
  """Sets SETTINGS with mallopt; True if all were accepted."""
  if environ.get("MELDAE_MALLOC_TUNING", "1") == "0":
    return False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  return all(libc.mallopt(ctypes.c_int(p), ctypes.c_int(v)) == 1 for p, v in SETTINGS)


APPLIED = apply()
