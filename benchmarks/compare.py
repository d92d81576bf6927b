"""JAX against the PyTorch port on this machine, in alternating processes, as JSON.

  python benchmarks/compare.py --config Ti112 --mode train --rounds 3 \
      --torch-python /tmp/torchvenv/bin/python [--backend eager|compile] [--dtype bf16]

Why: on a shared VM one process's median drifts by +-20 % over minutes, as much as the
gap being measured. Each round runs `step.py` (JAX) and `torch_port.py` (PyTorch) once
each, in fresh processes, the order swapped every round so that neither side always
runs first; the figure is the ratio PyTorch / JAX of each round's medians (> 1: JAX is
faster), summarised by the median, min and max over the rounds. Prints one JSON line per
run (`kind: run`) and a summary line (`kind: compare`). Both sides get the same
`--steps`/`--warmup`; the matmul peaks are skipped (`--peak-size 0`). Right before each
process, this script measures the cores' float32 FMA peak (`fma_peak.py`) and records it
on that process's line (`fma_peak_gflops_per_s`): the VM's phase, which the ratio absorbs
but absolute seconds from different sessions do not.

With `--lockstep`, each round starts both processes at once and, once both have warmed
up, lets them take the timed steps in turns (`common.Turns`): one step of one side
while the other waits, `--gap` seconds of quiet between turns, the side that goes first
alternating from step to step. Both sides' medians then come from the same minutes of
the VM, which the alternating processes cannot promise; the round's figure is the same
ratio of medians. Rounds pool only with rounds run the same way.

Whether a ratio target is met is a question about the median over rounds, so the summary
gives a distribution-free interval for it (order statistics, >= 95 % where there are
enough rounds) and, with `--target`, a verdict: `met` when the whole interval is at or
above the target, `missed` when it is below, `undecided` when it straddles it.

  python benchmarks/compare.py --summarise OUT1.jsonl OUT2.jsonl --target 1.3

pools the rounds of saved outputs (same config, mode, dtypes, kind of round and CPU)
without running anything.
"""
import argparse
import hashlib
import json
import math
import os
import pathlib
import select
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position

KEEP = ("config", "mode", "dtype", "median_s", "min_s", "max_s", "cpu_s_per_step",
        "steps_steal_fraction", "compile_seconds", "steps_peak_rss_mib", "gflops_per_s",
        "cpu_gemm", "blas_core", "backend", "torch_threads", "loss", "jax_version",
        "torch_version")


def last_json(stdout: str) -> dict | None:
  lines = [l for l in stdout.splitlines() if l.startswith("{")]
  return json.loads(lines[-1]) if lines else None


def run_one(cmd: list[str], timeout: float | None = None) -> dict:
  """One benchmark process -> its JSON figures; a failure names the command."""
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
  figures = last_json(proc.stdout)
  if proc.returncode or figures is None:
    raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")
  return figures


class _Side:
  """One side's process in a lock-step round: its pipes and its output files."""

  def __init__(self, name: str, cmd: list[str], tmp: pathlib.Path):
    self.name, self.cmd = name, cmd
    go_read, self.go = os.pipe()
    self.done, done_write = os.pipe()
    self.out = open(tmp / f"{name}.out", "w+")  # files, not pipes: no output can block
    self.err = open(tmp / f"{name}.err", "w+")
    self.proc = None
    try:
      self.proc = subprocess.Popen([*cmd, "--turns", f"{go_read},{done_write}"],
                                   stdout=self.out, stderr=self.err,
                                   pass_fds=(go_read, done_write))
    except OSError:
      self.close()
      raise
    finally:
      os.close(go_read)
      os.close(done_write)

  def failure(self, what: str, ended: bool = False) -> RuntimeError:
    """The error naming this side's command; `ended`: its pipe closed, so its exit
    status is a moment away."""
    try:
      self.proc.wait(5 if ended else 0)
    except subprocess.TimeoutExpired:
      pass
    code = self.proc.returncode
    self.err.seek(0)
    return RuntimeError(f"{' '.join(self.cmd)} {what} "
                        f"({'still running' if code is None else f'exit {code}'}):\n"
                        f"{self.err.read()[-3000:]}")

  def expect(self, token: bytes, timeout: float) -> None:
    ready, _, _ = select.select([self.done], [], [], timeout)
    if not ready:
      raise self.failure(f"sent nothing for {timeout:.0f} s")
    if os.read(self.done, 1) != token:
      raise self.failure("ended before its turns did", ended=True)

  def release(self) -> None:
    """The last `go`: both sides' timed steps are done, work after them may start."""
    try:
      os.write(self.go, b"g")
    except BrokenPipeError:
      pass  # it ended already (a turn-taker without a release); its exit status tells

  def go_on(self, timeout: float) -> None:
    try:
      os.write(self.go, b"g")
    except BrokenPipeError:
      raise self.failure("ended before its turns did", ended=True) from None
    self.expect(b"d", timeout)

  def close(self) -> None:
    if self.proc is not None and self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    for fd in (self.go, self.done):
      os.close(fd)
    self.out.close()
    self.err.close()


def lockstep_round(cmds: dict[str, list[str]], first: str, steps: int, gap: float,
                   timeout: float | None = None) -> dict[str, dict]:
  """Both sides started at once; after both have warmed up (and compiled), their timed
  steps in turns, `first` going first at even steps, the other at odd ones, `gap`
  seconds apart. -> each side's JSON figures; a failure names the command."""
  timeout = timeout or 1800
  order = (first, *(side for side in cmds if side != first))
  with tempfile.TemporaryDirectory() as tmp:
    sides = {}
    try:
      for name in order:
        sides[name] = _Side(name, cmds[name], pathlib.Path(tmp))
      for side in sides.values():
        side.expect(b"r", timeout)
      for i in range(steps):
        for name in (order if i % 2 == 0 else order[::-1]):
          time.sleep(gap)  # the other side's idle thread pools stop spinning
          sides[name].go_on(timeout)
      for side in sides.values():  # only now may either start its work after the steps
        side.release()
      figures = {}
      for name, side in sides.items():
        if side.proc.wait(timeout):
          raise side.failure("failed")
        side.out.seek(0)
        figures[name] = last_json(side.out.read())
        if figures[name] is None:
          raise side.failure("printed no JSON line")
      return figures
    finally:
      for side in sides.values():
        side.close()


def commands(a) -> dict[str, list[str]]:
  common_args = ["--config", a.config, "--mode", a.mode,
                 "--steps", str(a.steps), "--warmup", str(a.warmup), "--peak-size", "0"]
  here = pathlib.Path(__file__).resolve().parent
  return dict(
      jax=[a.jax_python, str(here / "step.py"), *common_args,
           "--dtype", a.jax_dtype or a.dtype],
      torch=[a.torch_python, str(here / "torch_port.py"), *common_args,
             "--dtype", a.dtype, "--backend", a.backend])


# What defines the two measured steps and how they are timed: a round pools with another
# only where these match. compare.py since session 31 (its --lockstep sets the turns).
SOURCES = ("meldae_jax/**/*.py", "meldae_jax/**/*.cc", "meldae_jax/**/*.h", "configs/*.py",
           "setup.py", "benchmarks/step.py", "benchmarks/torch_port.py",
           "benchmarks/common.py", "benchmarks/compare.py")


def source_fingerprint(root: pathlib.Path = ROOT) -> str:
  """A short hash of the files that define the step on either side (SOURCES): rounds
  from checkouts with the same fingerprint measured the same code, whatever else (docs,
  tests) changed between their commits."""
  digest = hashlib.sha256()
  for path in sorted({p for pattern in SOURCES for p in root.glob(pattern)}):
    digest.update(path.relative_to(root).as_posix().encode() + b"\0")
    digest.update(path.read_bytes() + b"\0")
  return digest.hexdigest()[:12]


def git_commit(root: pathlib.Path = ROOT) -> str | None:
  """The checkout's commit (short), '+dirty' with uncommitted changes; None outside git."""
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=root, check=True, capture_output=True, text=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return None
  return head + ("+dirty" if dirty.strip() else "")


def median_interval(values: list[float], confidence: float = 0.95):
  """(low, high, achieved): the narrowest order-statistic interval [x_(k), x_(n+1-k)]
  that holds the median with at least `confidence` for any continuous distribution of
  independent rounds; with too few rounds for that, [min, max] and what it achieves."""
  xs, n = sorted(values), len(values)
  def coverage(k):  # P(x_(k) <= median <= x_(n+1-k)) = 1 - 2 P(Binomial(n, 1/2) < k)
    return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0 ** n
  k = 1
  while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
    k += 1
  return xs[k - 1], xs[n - k], coverage(k)


def vm_phase(seconds: float) -> float | None:
  """The cores' float32 FMA peak now, GFLOP/s (`fma_peak.py`, best of 3 repeats of
  `seconds`): which phase of a shared VM a process ran in. None when off (seconds <= 0)
  or where there is no C++ compiler to build the loop."""
  if seconds <= 0:
    return None
  from benchmarks import fma_peak  # pylint: disable=g-import-not-at-top  (imports jax)
  try:
    return fma_peak.fma_peak(seconds)["fma_peak_gflops_per_s"]
  except RuntimeError as e:
    print(f"compare.py: no FMA peak: {e}", file=sys.stderr)
    return None


def summarise(rounds: list[dict], target: float | None = None) -> dict:
  """Ratios PyTorch / JAX of each round's medians (> 1: JAX faster), the median's
  interval and, with a target ratio, how many rounds reached it and the verdict; the
  range of the FMA peaks measured before each process, where there are any."""
  ratios = [r["torch"]["median_s"] / r["jax"]["median_s"] for r in rounds]
  med = lambda side: statistics.median(r[side]["median_s"] for r in rounds)  # noqa: E731
  low, high, achieved = median_interval(ratios)
  out = dict(rounds=len(rounds), ratios=ratios, ratio_median=statistics.median(ratios),
             ratio_min=min(ratios), ratio_max=max(ratios),
             ratio_median_interval=[low, high], interval_confidence=achieved,
             jax_median_s=med("jax"), torch_median_s=med("torch"))
  peaks = [r[side].get("fma_peak_gflops_per_s") for r in rounds for side in r]
  peaks = [x for x in peaks if x is not None]
  out.update(fma_peak_range=[min(peaks), max(peaks)] if peaks else None)
  if target is not None:
    verdict = "met" if low >= target else "missed" if high < target else "undecided"
    out.update(target=target, rounds_at_target=sum(r >= target for r in ratios),
               verdict=verdict)
  return out


# What rounds must share to pool: the step, and the CPU they ran on (model name and family
# as `common.cpu_model` records them: a ratio on one machine kind says little of another).
SAME = ("config", "mode", "dtype", "jax_dtype", "torch_backend", "lockstep",
        "cpu_model_name", "cpu_family")


# Known in newer files only: rounds pool where these agree or one file predates them
# (the CPU's model number tells Zen 3 from Zen 4 under one name and family; the steps,
# warm-up and gap shape each round's median).
SAME_WHERE_KNOWN = ("cpu_model", "steps", "warmup", "gap")


def json_lines(path) -> list[dict]:
  """The JSON lines of a saved benchmark output; other lines (progress) are skipped."""
  return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines()
          if l.startswith("{")]


def load_rounds(paths: list[str]) -> tuple[dict, list[dict], list[str | None]]:
  """The rounds of saved compare outputs, pooled: (what they measured, rounds, each
  file's source fingerprint or None where it predates them). Each file must hold whole
  rounds and its own `compare` line; all must agree on SAME."""
  setting, rounds, sources, known = None, [], [], {}
  for path in paths:
    lines = json_lines(path)
    summary = [l for l in lines if l.get("kind") == "compare"]
    if not summary:
      raise ValueError(f"{path}: no `kind: compare` line (an unfinished run?)")
    if len(summary) > 1:
      raise ValueError(f"{path}: {len(summary)} `kind: compare` lines; one run a file")
    if summary[-1].get("source_changed"):
      raise ValueError(f"{path}: the step's sources changed while it ran "
                       "(source_changed): its rounds measured two steps, do not pool them")
    this = {k: summary[-1].get(k) for k in SAME}
    this["lockstep"] = bool(this["lockstep"])  # files before --lockstep alternated
    sources.append(summary[-1].get("source"))
    for k in SAME_WHERE_KNOWN:
      value = summary[-1].get(k)
      if value is not None and known.setdefault(k, (value, path))[0] != value:
        raise ValueError(f"{path} measured {k}={value!r}, {known[k][1]} {k}="
                         f"{known[k][0]!r}")
    if setting is None:
      setting = this
    elif this != setting:
      raise ValueError(f"{path} measured {this}, the first file {setting}")
    by_round = {}
    for l in lines:
      if l.get("kind") == "run":
        if l["side"] in by_round.setdefault(l["round"], {}):
          raise ValueError(f"{path}: round {l['round']}'s {l['side']} side twice")
        by_round[l["round"]][l["side"]] = l
    for number, pair in sorted(by_round.items()):
      if set(pair) != {"jax", "torch"}:
        raise ValueError(f"{path}: round {number} lacks a side ({sorted(pair)})")
      rounds.append(pair)
  if setting is not None:
    setting.update({k: v for k, (v, _) in known.items()})  # e.g. cpu_model for the tables
  return setting, rounds, sources


def round_runs(a, cmds: dict[str, list[str]], label: str, order: tuple[str, str]):
  """Yields (side, its JSON figures, the FMA peak read before it) for one round, in
  `order`: each process as it ends, one after the other, or with `--lockstep` both at
  once (one phase reading before them)."""
  if a.lockstep:
    print(f"round {label}: both, in turns", file=sys.stderr, flush=True)
    phase = vm_phase(a.phase_seconds)
    figures = lockstep_round(cmds, order[0], a.steps, a.gap, a.timeout)
    for side in order:
      yield side, figures[side], phase
    return
  for side in order:
    print(f"round {label}: {side}", file=sys.stderr, flush=True)
    phase = vm_phase(a.phase_seconds)
    yield side, run_one(cmds[side], a.timeout), phase


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="Ti112", choices=sorted(common.CONFIGS))
  p.add_argument("--mode", default="train", choices=("train", "infer"))
  p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
  p.add_argument("--backend", default="eager", choices=("eager", "compile"),
                 help="the PyTorch side's")
  p.add_argument("--jax-dtype", default=None, choices=("fp32", "bf16", "bf16_matmul"),
                 help="the JAX side's, if not --dtype (bf16_matmul: autocast's kind)")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--jax-python", default=sys.executable)
  p.add_argument("--torch-python", default="/tmp/torchvenv/bin/python",
                 help="an interpreter with torch (see torch_port.py)")
  p.add_argument("--timeout", type=float, default=1800, help="seconds per process")
  p.add_argument("--target", type=float, default=None,
                 help="a ratio to judge the rounds' median against (e.g. 1.3)")
  p.add_argument("--lockstep", action="store_true",
                 help="both sides at once, timed steps in turns (see above)")
  p.add_argument("--gap", type=float, default=0.05,
                 help="seconds between turns with --lockstep")
  p.add_argument("--phase-seconds", type=float, default=0.2,
                 help="per repeat of the FMA peak measured before each process; 0: none")
  p.add_argument("--summarise", nargs="+", metavar="OUT.jsonl", default=None,
                 help="pool saved outputs of this script instead of running")
  a = p.parse_args(argv)
  if a.summarise:
    try:
      setting, rounds, sources = load_rounds(a.summarise)
    except (OSError, ValueError, KeyError) as e:
      p.error(str(e))
    if len(set(sources) - {None}) > 1:
      print("warning: these files measured different code (source fingerprints "
            f"{sorted(set(sources) - {None})}); pool only rounds of the same step",
            file=sys.stderr)
    common.emit(dict(kind="compare", files=a.summarise, **setting, sources=sources,
                     **summarise(rounds, a.target)))
    return
  if a.rounds < 1 or a.steps < 1:
    p.error("--rounds and --steps must be at least 1")
  if a.gap < 0:
    p.error("--gap must be >= 0")
  cmds = commands(a)
  source, commit = source_fingerprint(), git_commit()  # what the rounds start from
  rounds = []
  for r in range(a.rounds):
    order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
    result = {}
    for side, figures, phase in round_runs(a, cmds, f"{r + 1}/{a.rounds}", order):
      result[side] = {k: figures.get(k) for k in KEEP}
      result[side]["fma_peak_gflops_per_s"] = phase
      common.emit(dict(kind="run", side=side, round=r + 1, **result[side]))
    rounds.append(result)
  changed = source_fingerprint() != source
  common.emit(dict(kind="compare", config=a.config, mode=a.mode, dtype=a.dtype,
                   jax_dtype=a.jax_dtype or a.dtype,
                   torch_backend=a.backend, lockstep=a.lockstep,
                   gap=a.gap if a.lockstep else None, steps=a.steps, warmup=a.warmup,
                   **summarise(rounds, a.target), **common.host_figures(),
                   commit=commit, source=source, source_changed=changed))
  if changed:
    print("warning: the step's sources changed during the rounds; do not pool them",
          file=sys.stderr)

if __name__ == "__main__":
  main()
