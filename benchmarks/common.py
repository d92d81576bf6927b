"""Pieces shared by `step.py` (JAX) and `torch_port.py` (PyTorch).

NumPy-only: the PyTorch port runs under its own interpreter without JAX, and both
sides must time, size and feed the model the same way for their figures to compare.
"""
import dataclasses
import json
import os
import platform
import re
import resource
import statistics
import time
from typing import Callable

import numpy as np

# Copy of `meldae_jax/models/vit.py` VARIANTS (the port cannot import JAX code);
# tests/test_benchmarks.py checks that the two agree.
VIT_VARIANTS = {
    "Mu": dict(width=64, depth=2, mlp_dim=128, num_heads=2),
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
}


@dataclasses.dataclass(frozen=True)
class Shape:
  """One benchmark configuration: model size and the clip batch it is fed."""
  variant: str     # ViT variant, e.g. 'Ti/16'
  image_size: int
  frames: int      # T
  batch: int       # B clips
  regions: int     # G
  queries: int     # N
  heads: int       # enhancer heads


# K=1 class, 1 enhancer layer, per-frame fusion throughout.
CONFIGS = {
    "Ti112": Shape("Ti/16", 112, 16, 2, 7, 16, 3),
    "S112": Shape("S/16", 112, 16, 2, 7, 16, 6),
    "B224": Shape("B/16", 224, 16, 1, 10, 16, 12),
    # Not a benchmark: the smallest model with every part, for the tests.
    "tiny": Shape("Mu/8", 32, 4, 2, 2, 4, 2),
}

NUM_CLASSES = 1


def with_batch(shape: Shape, batch: int | None) -> Shape:
  """`shape` with B = `batch` clips (`--batch`; None keeps the config's)."""
  if batch is None:
    return shape
  if batch < 1:
    raise ValueError(f"--batch {batch}: a step needs at least one clip")
  return dataclasses.replace(shape, batch=batch)


def make_batch(shape: Shape, frames: int | None = None, seed: int = 0) -> dict:
  """A synthetic batch in the pipeline's format (docs/contracts.md) and dtypes.

  Random uint8 frames; the last clip (when B > 1) ends in padding, as the pipeline pads
  windows at the end; one ME interval per clip with its onset/offset boundary frames;
  speaking labels in {-1, 0, 1}.
  """
  rng = np.random.default_rng(seed)
  b, t, s, k = shape.batch, frames or shape.frames, shape.image_size, NUM_CLASSES
  frame_mask = np.ones((b, t), np.float32)
  if b > 1:
    frame_mask[-1, t - max(1, t // 4):] = 0.0
  labels = np.zeros((b, t, k), np.float32)
  boundary = np.zeros((b, t, k), np.float32)
  for i in range(b):
    onset = int(rng.integers(0, max(1, t // 2)))
    offset = min(onset + max(1, t // 4), t - 1)
    labels[i, onset:offset + 1, 0] = 1.0
    boundary[i, [onset, offset], 0] = 1.0
  labels *= frame_mask[..., None]
  boundary *= frame_mask[..., None]
  return {
      "video": rng.integers(0, 256, (b, t, s, s, 3), dtype=np.uint8),
      "frame_mask": frame_mask,
      "labels": labels,
      "boundary": boundary,
      "speaking": rng.integers(-1, 2, (b, t)).astype(np.int8),
      "me_label": labels.max(axis=(1, 2)).astype(np.float32),
  }


def stack_blocks(flat: dict) -> dict:
  """Unrolled ViT blocks ('.../encoderblock_3/...', the model's default) stacked into the
  scanned layout ('.../encoderblock/...', leading axis = block) that `torch_port.py
  --check` reads; a scanned export passes through unchanged."""
  out, blocks = {}, {}
  for name, value in flat.items():
    m = re.fullmatch(r"(.*)/encoderblock_(\d+)/(.*)", name)
    if m is None:
      out[name] = value
    else:
      blocks.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = value
  for (prefix, suffix), by_index in blocks.items():
    if sorted(by_index) != list(range(len(by_index))):
      raise ValueError(f"{prefix}/encoderblock_*/{suffix}: blocks {sorted(by_index)}")
    out[f"{prefix}/encoderblock/{suffix}"] = np.stack([by_index[i]
                                                      for i in range(len(by_index))])
  return out


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mib(field: str) -> float | None:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return None


def reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS mark to the current RSS (Linux >= 4.0).

  Compilation can need more memory than running, so the lifetime peak would hide what
  the steps use; after a reset, `steps_peak_rss_mib` is the steps' own peak.
  """
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _proc_stat() -> list[int] | None:
  """The machine's CPU time so far, in jiffies: user nice system idle iowait irq softirq
  steal ... (the first line of /proc/stat); None where there is none."""
  try:
    with open("/proc/stat") as f:
      return [int(v) for v in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None


def rss_figures(time_steps_fn: Callable[[], list], rss_after_compile: float):
  """Runs `time_steps_fn` between peak-RSS marks -> (its result, figures of the run).

  `peak_rss_mib` is the process's lifetime peak (compilation included),
  `steps_peak_rss_mib` the peak while stepping, `rss_before_steps_mib` the RSS the
  steps started from (their difference is what the steps add). `steps_cpu_s` is the
  CPU time this process used while stepping (user + system, every thread; spinning
  thread pools count), and `steps_steal_fraction` the share of the machine's CPU time
  the hypervisor gave to others meanwhile: on a shared VM a high one explains a slow run.
  """
  reset = reset_peak_rss()
  before = _status_mib("VmRSS") if reset else None
  usage0, stat0 = resource.getrusage(resource.RUSAGE_SELF), _proc_stat()
  result = time_steps_fn()
  usage1, stat1 = resource.getrusage(resource.RUSAGE_SELF), _proc_stat()
  steps_peak = _status_mib("VmHWM") if reset else None
  figures = dict(peak_rss_after_compile_mib=rss_after_compile,
                 rss_before_steps_mib=before, steps_peak_rss_mib=steps_peak,
                 peak_rss_mib=max(rss_after_compile, peak_rss_mib(), steps_peak or 0.0))
  figures["steps_cpu_s"] = (usage1.ru_utime - usage0.ru_utime
                            + usage1.ru_stime - usage0.ru_stime)
  steal = None
  if stat0 and stat1 and len(stat0) > 7:
    delta = [b - a for a, b in zip(stat0, stat1)]
    steal = delta[7] / sum(delta) if sum(delta) > 0 else 0.0
  figures["steps_steal_fraction"] = steal
  return result, figures


def sweep_summary(rows: list) -> dict:
  """`step.py --memory-sweep`'s rows -> per T and remat policy, memory saved and time
  lost relative to no remat at that T.

  `rss_reduction` compares the process's lifetime peak RSS, which what is there before
  the first step (the runtime, what compiling left allocated) sets in part;
  `steps_rss_reduction` what the steps add to the RSS (their peak minus the RSS they
  start from); `xla_temp_reduction` XLA's temporaries; `xla_total_reduction` all of
  XLA's buffers for the step (arguments, temporaries and outputs, the donated state
  counted once): the step's own peak memory as XLA plans it, the same figure an
  accelerator's memory would show, and the one the allocator's habits cannot move.
  """
  out = {}
  ratio = lambda a, b: (a / b) if a and b else None  # noqa: E731
  added = lambda r: (r["steps_peak_rss_mib"] - r["rss_before_steps_mib"]  # noqa: E731
                     if r.get("steps_peak_rss_mib") and r.get("rss_before_steps_mib")
                     else None)
  for row in rows:
    if "error" in row or row["remat"] == "none":
      continue
    base = next((r for r in rows if r["frames"] == row["frames"]
                 and r["remat"] == "none" and "error" not in r), None)
    if base is None:
      continue
    out[f"T{row['frames']}_{row['remat']}"] = dict(
        rss_reduction=ratio(base["peak_rss_mib"], row["peak_rss_mib"]),
        steps_rss_reduction=ratio(added(base), added(row)),
        xla_temp_reduction=ratio(base["xla_temp_mib"], row["xla_temp_mib"]),
        xla_total_reduction=ratio(base.get("xla_total_mib"), row.get("xla_total_mib")),
        slowdown=ratio(row["median_s"], base["median_s"]))
  return out


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> dict:
  """What the CPU is (the figures depend on it): model name, family, model number (it
  tells apart kinds that share a name and family: AMD EPYC family 25 is Zen 3 and Zen
  4), AVX-512 or not, and the OpenBLAS kernel family asked for through the environment."""
  wanted = ("model name", "cpu family", "model", "flags")
  info = {}
  try:
    with open(cpuinfo) as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in wanted and key not in info:
          info[key] = value.strip()
        if len(info) == len(wanted):
          break
  except OSError:
    pass
  flags = set(info.get("flags", "").split())
  return dict(cpu_model_name=info.get("model name"), cpu_family=info.get("cpu family"),
              cpu_model=info.get("model"), cpu_avx512=("avx512f" in flags) if flags else None,
              openblas_coretype_env=os.environ.get("OPENBLAS_CORETYPE"))


class Turns:
  """Timed steps taken in turns with another benchmark process (`compare.py
  --lockstep`), over two pipes the coordinator opened: this process says `ready` after
  its warm-up, then waits for `go` before each timed step and says `done` after it, and
  after its last one waits for a last `go`, the release, which comes once both sides have
  taken every timed step: its work after them (memory and FLOP counts: seconds of
  tracing, or a whole eager step) then overlaps no timed step of the other side.

  Why: on a shared VM the cores' speed drifts over minutes, so two processes timed one
  after the other can run in different phases; steps taken in turns run in the same one.
  """

  def __init__(self, spec: str):
    """`spec`: 'R,W', the file descriptors this process inherited (read, write)."""
    try:
      self._read, self._write = (int(fd) for fd in spec.split(","))
    except ValueError:
      raise ValueError(f"--turns wants two file descriptors 'R,W', got {spec!r}") from None

  def ready(self) -> None:
    os.write(self._write, b"r")

  def wait(self) -> None:
    if os.read(self._read, 1) != b"g":
      raise RuntimeError("the coordinator of the turns went away")

  def done(self) -> None:
    os.write(self._write, b"d")


def time_steps(step: Callable[[], None], steps: int, warmup: int,
               turns: Turns | None = None) -> list[float]:
  """Seconds of each of `steps` calls after `warmup` untimed ones; `step` must block.
  With `turns`, each timed call waits for its turn (the wait is not timed)."""
  for _ in range(warmup):
    step()
  if turns:
    turns.ready()
  times = []
  for _ in range(steps):
    if turns:
      turns.wait()
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
    if turns:
      turns.done()
  if turns:
    turns.wait()  # the release: the other side's timed steps are all done
  return times


def timing_figures(times: list[float], shape: Shape, frames: int) -> dict:
  """median/min/max seconds per step and frames/s (B*T / median); None when untimed."""
  if not times:
    return dict(median_s=None, min_s=None, max_s=None, frames_per_s=None)
  med = statistics.median(times)
  return dict(median_s=med, min_s=min(times), max_s=max(times),
              frames_per_s=shape.batch * frames / med)


# Dense bf16 tensor-core peaks, TFLOP/s: half the with-sparsity figures of NVIDIA's
# datasheets. Matched against the device kind in order (the first name it contains);
# `MELDAE_BF16_PEAK_TFLOPS` gives any other device's.
NOMINAL_BF16_TFLOPS = (
    ("H200 NVL", 835.5),
    ("H200", 989.4),
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.5),
    ("H100", 989.4),
    ("A100", 312.0),
)


def nominal_bf16_tflops(device_kind: str, environ=os.environ) -> float | None:
  """The datasheet bf16 peak of `device_kind` (e.g. 'NVIDIA H200'), None if unknown."""
  if environ.get("MELDAE_BF16_PEAK_TFLOPS"):
    return float(environ["MELDAE_BF16_PEAK_TFLOPS"])
  for name, tflops in NOMINAL_BF16_TFLOPS:
    if name.lower() in (device_kind or "").lower():
      return tflops
  return None


def mfu_figures(gflops_per_s: float | None, device_kind: str,
                bf16_peak_gflops: float | None, bf16_peak_size: int | None) -> dict:
  """MFU figures of a step on an accelerator: its FLOP rate over the datasheet bf16 peak
  (`mfu`) and over a bf16 matmul measured in the same run; None where a term is."""
  nominal = nominal_bf16_tflops(device_kind)
  rate = lambda peak_gflops: (gflops_per_s / peak_gflops  # noqa: E731
                              if peak_gflops and gflops_per_s else None)
  return dict(nominal_bf16_peak_tflops=nominal,
              mfu=rate(nominal * 1e3 if nominal else None),
              bf16_matmul_peak_tflops=bf16_peak_gflops / 1e3 if bf16_peak_gflops else None,
              bf16_matmul_peak_size=bf16_peak_size or None,
              fraction_of_bf16_matmul_peak=rate(bf16_peak_gflops))


def host_figures() -> dict:
  return dict(cpu_count=os.cpu_count(), machine=platform.machine(),
              python=platform.python_version(), **cpu_model())


def emit(figures: dict) -> None:
  """The one JSON line a run prints."""
  print(json.dumps(figures, sort_keys=False), flush=True)
