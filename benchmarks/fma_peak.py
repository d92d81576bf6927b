"""The CPU's float32 FMA peak, measured on every core at once, as JSON.

  python benchmarks/fma_peak.py [--seconds 0.2] [--repeats 3] [--threads N]

One thread per core (default: the cores this process may run on) runs independent
vector FMAs and nothing else (`fma_peak.cc`, at the widest width the CPU has: AVX-512F,
AVX2+FMA, else SSE). The sum is the hardware's float32 limit; `step.py` reports the
step's FLOP rate against it (`fraction_of_fma_peak`) beside the 4096^2 `jnp.dot` it
also times, which is what XLA's dot reaches. Why measured, not taken from a datasheet:
a shared VM's cores run at whatever clock the host gives them.
"""
import argparse
import ctypes
import functools
import json
import os
import pathlib
import sys
import threading

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from meldae_jax.ops import native  # pylint: disable=g-import-not-at-top,wrong-import-position

_SRC = pathlib.Path(__file__).with_name("fma_peak.cc")


@functools.cache
def _library() -> ctypes.CDLL:
  lib = ctypes.CDLL(str(native.build(_SRC)))
  lib.meldae_fma_gflops.restype = ctypes.c_double
  lib.meldae_fma_gflops.argtypes = [ctypes.c_double, ctypes.POINTER(ctypes.c_int)]
  return lib


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def _together(lib, seconds: float, n: int) -> tuple[list[float], int]:
  """Each of n threads' GFLOP/s, run at the same time (ctypes lets go of the GIL)."""
  rates, bits = [0.0] * n, [ctypes.c_int(0) for _ in range(n)]

  def run(i):
    rates[i] = lib.meldae_fma_gflops(seconds, ctypes.byref(bits[i]))

  workers = [threading.Thread(target=run, args=(i,)) for i in range(n)]
  for w in workers:
    w.start()
  for w in workers:
    w.join()
  return rates, bits[0].value


def fma_peak(seconds: float = 0.2, threads: int | None = None, repeats: int = 3) -> dict:
  """{'fma_peak_gflops_per_s': the best of `repeats` sums over all threads,
  'fma_peak_per_thread': that repeat's rates, 'fma_peak_sums': every repeat's sum,
  'fma_vector_bits': 512/256/128, 'fma_threads': n}.

  The best, since a peak is what the cores can do: on a shared VM a repeat in which the
  hypervisor took a core away reads half (seen here: 118 against 222-232 GFLOP/s)."""
  if seconds <= 0:
    raise ValueError(f"--seconds must be > 0, got {seconds}")
  n = usable_cores() if threads is None else threads
  if n < 1:
    raise ValueError(f"--threads must be >= 1, got {n}")
  if repeats < 1:
    raise ValueError(f"--repeats must be >= 1, got {repeats}")
  lib = _library()
  runs = [_together(lib, seconds, n) for _ in range(repeats)]
  rates, bits = max(runs, key=lambda r: sum(r[0]))
  return dict(fma_peak_gflops_per_s=sum(rates), fma_peak_per_thread=rates,
              fma_peak_sums=[sum(r[0]) for r in runs], fma_vector_bits=bits,
              fma_threads=n)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seconds", type=float, default=0.2, help="per thread and repeat")
  p.add_argument("--repeats", type=int, default=3, help="the best repeat is reported")
  p.add_argument("--threads", type=int, default=None,
                 help="default: the cores this process may run on")
  a = p.parse_args(argv)
  try:
    figures = fma_peak(a.seconds, a.threads, a.repeats)
  except (ValueError, RuntimeError) as e:
    p.error(str(e))
  print(json.dumps(figures), flush=True)


if __name__ == "__main__":
  main()
