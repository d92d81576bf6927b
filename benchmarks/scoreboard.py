"""Issue 5's targets in one table, computed from the saved runs in benchmarks/results/.

  python benchmarks/scoreboard.py                              # the markdown tables
  python benchmarks/scoreboard.py --check docs/performance.md  # exit 1 where one differs

Why: the table at the top of docs/performance.md is what a reader checks first, so its
figures should be reproducible from the rounds behind them, not typed. Each row names
its saved outputs (`ROWS`): `compare.py` runs against the port (pooled as `compare.py
--summarise` pools them), `step.py --memory-sweep` for remat, `bf16_loss.py` for the
bf16 loss; a row with no saved run yet says so. There is one table per machine kind
(`BOARDS`), found in the doc by its title (the header's first cell); a table's rounds
must have run on its CPU. Which files pool into a row is chosen here, by hand: only
runs of the same step (`compare.py` records each run's source fingerprint since session
24; the older files' sessions say theirs in docs/performance.md), and a warning names
files whose fingerprints differ.
"""
import argparse
import dataclasses
import difflib
import fnmatch
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import compare  # pylint: disable=g-import-not-at-top,wrong-import-position

RESULTS = ROOT / "benchmarks" / "results"


def header(title: str) -> str:
  """A table's two header lines; `title`, its first cell, names the table in a doc."""
  return (f"| {title} | JAX, s per step | against the port: median [interval, "
          "confidence], rounds | verdict | sessions |\n| --- | --- | --- | --- | --- |")


TITLE = "issue 5's target"  # the first cell of the issue's own machine kind's table
HEADER = header(TITLE)


@dataclasses.dataclass(frozen=True)
class Against:
  """A ratio target against the port: the pooled rounds of `files` (compare.py), which
  must have measured `measures`: config, mode, JAX dtype and the port's side (its
  backend; its dtype follows from JAX's: fp32 against fp32, a bf16 kind against
  autocast), in alternating processes or, with `lockstep`, in turns (`compare.py
  --lockstep`)."""
  label: str
  target: float
  measures: tuple[str, str, str, str]
  files: tuple[str, ...]
  lockstep: bool = False


@dataclasses.dataclass(frozen=True)
class _OneRun:
  """A target read from one saved run (`file`, None where there is none yet)."""
  label: str
  file: str | None

  @property
  def files(self) -> tuple[str, ...]:
    return (self.file,) if self.file else ()


# What a Remat row measures: the summary's figure (`common.sweep_summary`), its name.
REMAT_MEASURES = {"rss": ("rss_reduction", "peak RSS"),
                  "xla": ("xla_total_reduction", "XLA's buffers")}


@dataclasses.dataclass(frozen=True)
class Remat(_OneRun):
  """Peak memory cut at T = `frames` by remat, at a bounded slowdown, from step.py
  --memory-sweep's rows; `measure`: the process's peak RSS ('rss') or all of XLA's
  buffers for the step ('xla'), see `REMAT_MEASURES`."""
  frames: int = 64
  min_reduction: float = 2.0
  max_slowdown: float = 1.3
  measure: str = "rss"


@dataclasses.dataclass(frozen=True)
class Bf16Loss(_OneRun):
  """bf16 training loss within a tolerance of fp32 (bf16_loss.py)."""


@dataclasses.dataclass(frozen=True)
class NotRun:
  """A target with no run on this machine kind, why, and the sessions that say more."""
  label: str
  why: str
  sessions: str = ""


BF16 = "bf16_matmul"  # the JAX side of the rows against autocast (the port's --dtype bf16)

ROWS = (
    Against("Ti112 train >= 1.3x eager (issue: <= 0.21 s)", 1.3,
            ("Ti112", "train", "fp32", "eager"),
            ("s22_Ti112_train_fp32_eager_a.jsonl", "s22_Ti112_train_fp32_eager_b.jsonl",
             "s23_Ti112_train_fp32_eager_a.jsonl", "s23_Ti112_train_fp32_eager_b.jsonl",
             "s24_Ti112_train_fp32_eager_a.jsonl", "s24_Ti112_train_fp32_eager_b.jsonl",
             "s25_Ti112_train_fp32_eager_a.jsonl")),
    Against("the same, timed in turns (`compare.py --lockstep`)", 1.3,
            ("Ti112", "train", "fp32", "eager"),
            ("s25_Ti112_train_fp32_eager_turns_a.jsonl", "s25_Ti112_train_fp32_eager_turns_b.jsonl",
             "s25_Ti112_train_fp32_eager_turns_c.jsonl"), lockstep=True),
    Against("S112 train >= 1.3x eager (issue: <= 0.61 s)", 1.3,
            ("S112", "train", "fp32", "eager"),
            ("s22_S112_train_fp32_eager_a.jsonl", "s22_S112_train_fp32_eager_b.jsonl",
             "s24_S112_train_fp32_eager_a.jsonl", "s25_S112_train_fp32_eager_a.jsonl")),
    Against("the same, timed in turns", 1.3, ("S112", "train", "fp32", "eager"),
            ("s25_S112_train_fp32_eager_turns_a.jsonl",), lockstep=True),
    Against("Ti112 infer faster than `torch.compile` (issue: < 0.074 s)", 1.0,
            ("Ti112", "infer", "fp32", "compile"),
            ("s22_Ti112_infer_fp32_compile_a.jsonl", "s23_Ti112_infer_fp32_compile_a.jsonl",
             "s24_Ti112_infer_fp32_compile_a.jsonl")),
    Against("the same, timed in turns", 1.0, ("Ti112", "infer", "fp32", "compile"),
            ("s25_Ti112_infer_fp32_compile_turns_a.jsonl",), lockstep=True),
    Against("S112 infer faster than `torch.compile` (issue: < 0.23 s)", 1.0,
            ("S112", "infer", "fp32", "compile"),
            ("s22_S112_infer_fp32_compile_a.jsonl", "s22_S112_infer_fp32_compile_b.jsonl",
             "s24_S112_infer_fp32_compile_a.jsonl", "s24_S112_infer_fp32_compile_b.jsonl",
             "s25_S112_infer_fp32_compile_a.jsonl")),
    Against("the same, timed in turns", 1.0, ("S112", "infer", "fp32", "compile"),
            ("s25_S112_infer_fp32_compile_turns_a.jsonl",), lockstep=True),
    Against("Stretch, bf16 (`bf16_matmul`) against autocast: S112 train", 1.0,
            ("S112", "train", BF16, "eager"),
            ("s24_S112_train_bf16_matmul_autocast_a.jsonl",
             "s25_S112_train_bf16_matmul_autocast_a.jsonl")),
    Against("the same, S112 train, timed in turns", 1.0, ("S112", "train", BF16, "eager"),
            ("s25_S112_train_bf16_matmul_autocast_turns_a.jsonl",), lockstep=True),
    Against("the same, S112 infer", 1.0, ("S112", "infer", BF16, "eager"),
            ("s24_S112_infer_bf16_matmul_autocast_a.jsonl",
             "s24_S112_infer_bf16_matmul_autocast_b.jsonl")),
    Against("the same, S112 infer, timed in turns", 1.0, ("S112", "infer", BF16, "eager"),
            ("s25_S112_infer_bf16_matmul_autocast_turns_a.jsonl",), lockstep=True),
    Against("the same, Ti112 train", 1.0, ("Ti112", "train", BF16, "eager"),
            ("s24_Ti112_train_bf16_matmul_autocast_a.jsonl",)),
    Against("the same, Ti112 train, timed in turns", 1.0, ("Ti112", "train", BF16, "eager"),
            ("s25_Ti112_train_bf16_matmul_autocast_turns_a.jsonl",), lockstep=True),
    Against("the same, Ti112 infer", 1.0, ("Ti112", "infer", BF16, "eager"),
            ("s24_Ti112_infer_bf16_matmul_autocast_a.jsonl",)),
    Against("the same, Ti112 infer, timed in turns", 1.0, ("Ti112", "infer", BF16, "eager"),
            ("s25_Ti112_infer_bf16_matmul_autocast_turns_a.jsonl",), lockstep=True),
    Against("the same, B224 train", 1.0, ("B224", "train", BF16, "eager"),
            ("s22_B224_train_bf16_matmul_autocast_a.jsonl",
             "s23_B224_train_bf16_matmul_autocast_a.jsonl",
             "s24_B224_train_bf16_matmul_autocast_a.jsonl")),
    Against("the same, B224 train, timed in turns", 1.0, ("B224", "train", BF16, "eager"),
            ("s25_B224_train_bf16_matmul_autocast_turns_a.jsonl",
             "s25_B224_train_bf16_matmul_autocast_turns_b.jsonl"), lockstep=True),
    Bf16Loss("bf16 training loss within a stated tolerance of fp32", "s24_bf16_loss.jsonl"),
    Remat("Remat: S112 train at T = 64, peak memory /2 at <= 30 % more time",
          "s24_memory.jsonl"),
    Remat("the same, the step's own memory: XLA's buffers for it (arguments, "
          "temporaries, outputs)", "s24_memory.jsonl", measure="xla"),
    NotRun("GPU: B224 and the 16-clip batch in bf16, MFU >= 45 %",
           "not run: no GPU lent (sessions 10-35); one prepared call, "
           "`benchmarks/gpu_suite.sh run`, re-checked in session 23", "16, 23"),
)


# The CPUs the boards' runs ran on, as compare.py records them (model name, family).
INTEL_XEON = ("Intel(R) Xeon(R) Processor", "6", "207")  # the machine kind
AMD_EPYC = ("AMD EPYC", "25", "17")  # Zen 4 (sessions 12-18, 26-32); Zen 3 shares 25


@dataclasses.dataclass(frozen=True)
class Board:
  """One machine kind's table: its title (the header's first cell, which finds it in a
  doc), the CPU its rounds against the port must have run on, and its rows."""
  title: str
  cpu: tuple[str, str] | None
  rows: tuple


# Rows of the step as session 28 left it, which no earlier session measured (session 29
# measured the rest of the table at it: its sources differ from session 28's only by a
# shape check in blas_attention.py, fingerprint 38888acf2aae against c8a8fd495c15).
S28 = "session 28's step (the projection's bias in the attention's calls)"
# Session 30's step: its CPU calls' numerics (erf clamp, no FMA contraction, fixed row
# blocks); measured with session 30's `--lockstep`, where no side's timed step overlaps
# the other side's work after its last turn.
S30 = "session 30's step and turns (no overlap after the last turn)"
S30_STEP = "session 30's step (the CPU calls' numerics fixed)"

ZEN4_ROWS = (
    Against("Ti112 train >= 1.3x eager, timed in turns", 1.3,
            ("Ti112", "train", "fp32", "eager"),
            ("s26_Ti112_train_fp32_eager_turns_a.jsonl",
             "s26_Ti112_train_fp32_eager_turns_b.jsonl",
             "s26_Ti112_train_fp32_eager_turns_c.jsonl",
             "s26_Ti112_train_fp32_eager_turns_d.jsonl"), lockstep=True),
    Against("the same, in alternating processes", 1.3, ("Ti112", "train", "fp32", "eager"),
            ("s26_Ti112_train_fp32_eager_a.jsonl",)),
    Against(f"the same, {S28}, timed in turns", 1.3, ("Ti112", "train", "fp32", "eager"),
            ("s28_Ti112_train_fp32_eager_turns_a.jsonl",), lockstep=True),
    Against(f"the same, {S30}, timed in turns", 1.3, ("Ti112", "train", "fp32", "eager"),
            ("s31_Ti112_train_fp32_eager_turns_a.jsonl",), lockstep=True),
    Against("S112 train >= 1.3x eager, timed in turns", 1.3,
            ("S112", "train", "fp32", "eager"),
            ("s26_S112_train_fp32_eager_turns_a.jsonl",
             "s26_S112_train_fp32_eager_turns_b.jsonl"), lockstep=True),
    Against("the same, in alternating processes", 1.3, ("S112", "train", "fp32", "eager"),
            ("s26_S112_train_fp32_eager_a.jsonl",)),
    Against(f"the same, {S28}, timed in turns", 1.3, ("S112", "train", "fp32", "eager"),
            ("s28_S112_train_fp32_eager_turns_a.jsonl",
             "s29_S112_train_fp32_eager_turns_a.jsonl",
             "s29_S112_train_fp32_eager_turns_b.jsonl"), lockstep=True),
    Against(f"the same, {S30}, timed in turns", 1.3, ("S112", "train", "fp32", "eager"),
            ("s31_S112_train_fp32_eager_turns_a.jsonl",
             "s32_S112_train_fp32_eager_turns_a.jsonl"), lockstep=True),
    Against("Ti112 infer faster than `torch.compile`, timed in turns", 1.0,
            ("Ti112", "infer", "fp32", "compile"),
            ("s26_Ti112_infer_fp32_compile_turns_a.jsonl",), lockstep=True),
    Against(f"the same, {S28}, timed in turns", 1.0, ("Ti112", "infer", "fp32", "compile"),
            ("s28_Ti112_infer_fp32_compile_turns_a.jsonl",), lockstep=True),
    Against(f"the same, {S30}, timed in turns", 1.0, ("Ti112", "infer", "fp32", "compile"),
            ("s31_Ti112_infer_fp32_compile_turns_a.jsonl",), lockstep=True),
    Against("S112 infer faster than `torch.compile`, timed in turns", 1.0,
            ("S112", "infer", "fp32", "compile"),
            ("s26_S112_infer_fp32_compile_turns_a.jsonl",), lockstep=True),
    Against(f"the same, {S28}, timed in turns", 1.0, ("S112", "infer", "fp32", "compile"),
            ("s29_S112_infer_fp32_compile_turns_a.jsonl",), lockstep=True),
    Against(f"the same, {S30}, timed in turns", 1.0, ("S112", "infer", "fp32", "compile"),
            ("s31_S112_infer_fp32_compile_turns_a.jsonl",), lockstep=True),
    Against("Stretch, bf16 (`bf16_matmul`) against autocast: S112 train, timed in turns",
            1.0, ("S112", "train", BF16, "eager"),
            ("s26_S112_train_bf16_matmul_autocast_turns_a.jsonl",), lockstep=True),
    Against(f"the same, S112 train, {S28}, timed in turns", 1.0,
            ("S112", "train", BF16, "eager"),
            ("s29_S112_train_bf16_matmul_autocast_turns_a.jsonl",), lockstep=True),
    Against(f"the same, S112 train, {S30}, timed in turns", 1.0,
            ("S112", "train", BF16, "eager"),
            ("s31_S112_train_bf16_matmul_autocast_turns_a.jsonl",), lockstep=True),
    Against("the same, S112 infer, timed in turns", 1.0, ("S112", "infer", BF16, "eager"),
            ("s26_S112_infer_bf16_matmul_autocast_turns_a.jsonl",
             "s27_S112_infer_bf16_matmul_autocast_turns_b.jsonl"), lockstep=True),
    Against(f"the same, S112 infer, {S28}, timed in turns", 1.0,
            ("S112", "infer", BF16, "eager"),
            ("s28_S112_infer_bf16_matmul_autocast_turns_a.jsonl",), lockstep=True),
    Against(f"the same, S112 infer, {S30}, timed in turns", 1.0,
            ("S112", "infer", BF16, "eager"),
            ("s31_S112_infer_bf16_matmul_autocast_turns_a.jsonl",), lockstep=True),
    Against("the same, Ti112 train, timed in turns", 1.0, ("Ti112", "train", BF16, "eager"),
            ("s26_Ti112_train_bf16_matmul_autocast_turns_a.jsonl",), lockstep=True),
    Against(f"the same, Ti112 train, {S28}, timed in turns", 1.0,
            ("Ti112", "train", BF16, "eager"),
            ("s29_Ti112_train_bf16_matmul_autocast_turns_a.jsonl",), lockstep=True),
    Against(f"the same, Ti112 train, {S30}, timed in turns", 1.0,
            ("Ti112", "train", BF16, "eager"),
            ("s31_Ti112_train_bf16_matmul_autocast_turns_a.jsonl",), lockstep=True),
    Against("the same, Ti112 infer, timed in turns", 1.0, ("Ti112", "infer", BF16, "eager"),
            ("s26_Ti112_infer_bf16_matmul_autocast_turns_a.jsonl",
             "s27_Ti112_infer_bf16_matmul_autocast_turns_b.jsonl"), lockstep=True),
    Against(f"the same, Ti112 infer, {S28}, timed in turns", 1.0,
            ("Ti112", "infer", BF16, "eager"),
            ("s28_Ti112_infer_bf16_matmul_autocast_turns_a.jsonl",
             "s28_Ti112_infer_bf16_matmul_autocast_turns_b.jsonl"), lockstep=True),
    Against(f"the same, Ti112 infer, {S30}, timed in turns", 1.0,
            ("Ti112", "infer", BF16, "eager"),
            ("s31_Ti112_infer_bf16_matmul_autocast_turns_a.jsonl",
             "s32_Ti112_infer_bf16_matmul_autocast_turns_a.jsonl"), lockstep=True),
    Against("the same, B224 train, timed in turns", 1.0, ("B224", "train", BF16, "eager"),
            ("s27_B224_train_bf16_matmul_autocast_turns_a.jsonl",), lockstep=True),
    Against(f"the same, B224 train, {S28}, timed in turns", 1.0,
            ("B224", "train", BF16, "eager"),
            ("s29_B224_train_bf16_matmul_autocast_turns_a.jsonl",), lockstep=True),
    Against(f"the same, B224 train, {S30}, timed in turns", 1.0,
            ("B224", "train", BF16, "eager"),
            ("s32_B224_train_bf16_matmul_autocast_turns_b.jsonl",), lockstep=True),
    Bf16Loss("bf16 training loss within a stated tolerance of fp32", "s26_bf16_loss.jsonl"),
    Bf16Loss(f"the same, {S28}", "s29_bf16_loss.jsonl"),
    Bf16Loss(f"the same, {S30_STEP}", "s32_bf16_loss.jsonl"),
    Bf16Loss("the same at the peak learning rates from the first step (`--warmup-steps 0`; "
             "the rows above stay below 6 % of them), session 33's step",
             "s33_bf16_loss_peak_lr.jsonl"),
    Remat("Remat: S112 train at T = 64, peak memory /2 at <= 30 % more time",
          "s27_memory.jsonl"),
    Remat(f"the same, {S28}", "s29_memory.jsonl"),
    Remat(f"the same, {S30_STEP}", "s32_memory.jsonl"),
    Remat("the same, the step's own memory: XLA's buffers for it (arguments, "
          "temporaries, outputs)", "s27_memory.jsonl", measure="xla"),
    Remat(f"the same, the step's own memory, {S28}", "s29_memory.jsonl", measure="xla"),
    Remat(f"the same, the step's own memory, {S30_STEP}", "s32_memory.jsonl",
          measure="xla"),
)

BOARDS = (
    Board(TITLE, INTEL_XEON, ROWS),
    Board("on AMD EPYC Zen 4 (family 25, model 17)", AMD_EPYC, ZEN4_ROWS),
)


def _sessions(files) -> str:
  """'22, 24-25' from the files' 'sNN_' prefixes: the sessions whose runs are pooled."""
  numbers = sorted({int(m.group(1)) for f in files
                    if (m := re.match(r"s(\d+)_", pathlib.Path(f).name))})
  spans = []
  for n in numbers:
    if spans and n == spans[-1][1] + 1:
      spans[-1][1] = n
    else:
      spans.append([n, n])
  return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _range(values) -> str:
  low, high = f"{min(values):#.3g}", f"{max(values):#.3g}"
  return low if low == high else f"{low}-{high}"


def _last(path: pathlib.Path, kind: str) -> dict:
  """The last `kind: <kind>` line of a saved run; an error naming the file if none."""
  found = [l for l in compare.json_lines(path) if l.get("kind") == kind]
  if not found:
    raise ValueError(f"{path}: no `kind: {kind}` line")
  return found[-1]


def _unmeasured(label: str, why: str, sessions: str = "") -> list[str]:
  return [label, "", why, "not measured", sessions]


def _check_cpu(what, line: dict, cpu: tuple[str, ...] | None) -> None:
  """Refuses a run from another CPU than the table's (None: no check): model name and
  family, and the model number where both the table and the run name one."""
  if cpu is None:
    return
  ran_on = (line.get("cpu_model_name"), line.get("cpu_family"))
  if ran_on != tuple(cpu[:2]):
    raise ValueError(f"{what} ran on {ran_on} (model name, family), the table is "
                     f"for {cpu[:2]}")
  model = line.get("cpu_model")
  if len(cpu) > 2 and model is not None and str(model) != cpu[2]:
    raise ValueError(f"{what} ran on CPU model {model}, the table is for model {cpu[2]}")


# Fingerprints of the files saved before compare.py recorded them (benchmarks/results/
# README.md, hashed from their commits), so that pooling them with later files is flagged
# as pooling different code, as it is between recorded ones.
KNOWN_SOURCES = (("s22_*_a.jsonl", "0f44c072421a"), ("s22_*_b.jsonl", "fd9c6577e582"),
                 ("s23_*.jsonl", "1f8a7ab775a0"),
                 ("s24_Ti112_train_fp32_eager_a.jsonl", "1f8a7ab775a0"))


def _source(name: str, recorded: str | None) -> str | None:
  if recorded is not None:
    return recorded
  return next((src for pattern, src in KNOWN_SOURCES if fnmatch.fnmatch(name, pattern)), None)


def against_cells(row: Against, results: pathlib.Path,
                  cpu: tuple[str, str] | None = None) -> list[str]:
  if not row.files:
    return _unmeasured(row.label, "no saved rounds")
  paths = [str(results / f) for f in row.files]
  setting, rounds, sources = compare.load_rounds(paths)
  sources = [_source(f, src) for f, src in zip(row.files, sources)]
  got = tuple(setting[k] for k in ("config", "mode", "jax_dtype", "torch_backend"))
  if got != row.measures:
    raise ValueError(f"{row.files} measured {got}, the row {row.measures}")
  port_dtype = "fp32" if row.measures[2] == "fp32" else "bf16"  # bf16 kinds: autocast
  if setting["dtype"] != port_dtype:
    raise ValueError(f"{row.files}: the port ran {setting['dtype']}, the row wants it in "
                     f"{port_dtype} against JAX's {row.measures[2]}")
  _check_cpu(row.files, setting, cpu)
  if setting["lockstep"] != row.lockstep:
    how = lambda lockstep: "in turns" if lockstep else "in alternating processes"  # noqa: E731
    raise ValueError(f"{row.files} ran {how(setting['lockstep'])}, the row wants them "
                     f"{how(row.lockstep)}")
  if len(set(sources) - {None}) > 1:
    print(f"warning: {row.label}: the pooled files measured different code "
          f"({sorted(set(sources) - {None})})", file=sys.stderr)
  s = compare.summarise(rounds, row.target)
  low, high = s["ratio_median_interval"]
  n = s["rounds"]
  ratio = (f"{s['ratio_median']:.2f} [{low:.2f}, {high:.2f}] "
           f"{100 * s['interval_confidence']:.0f} %, {n} "
           f"({s['rounds_at_target']} of {n} at >= {row.target:g})")
  return [row.label, _range([r["jax"]["median_s"] for r in rounds]), ratio, s["verdict"],
          _sessions(row.files)]


def remat_cells(row: Remat, results: pathlib.Path,
                cpu: tuple[str, str] | None = None) -> list[str]:
  """The summary recomputed from the sweep's rows (`common.sweep_summary`), so a
  figure added since a file was saved is read from it too."""
  if row.file is None:
    return _unmeasured(row.label, "no saved run")
  key, name = REMAT_MEASURES[row.measure]
  rows = [l for l in compare.json_lines(results / row.file)
          if l.get("kind") == "memory_sweep" and "remat" in l and "frames" in l]
  for line in rows:
    if "cpu_model_name" in line:  # recorded since session 27
      _check_cpu(row.file, line, cpu)
  summary = common.sweep_summary(rows)
  parts, ok = [], []
  for policy in ("full", "dots"):
    got = summary.get(f"T{row.frames}_{policy}")
    if not got or got.get(key) is None:
      continue
    cut, slow = got[key], got["slowdown"]
    parts.append(f"/{cut:.2f} at x{slow:.2f} ({policy})")
    ok.append(cut >= row.min_reduction and slow <= row.max_slowdown)
  if not parts:
    raise ValueError(f"{row.file}: no T{row.frames} remat rows with {name} against "
                     "no remat")
  verdict = "met" if any(ok) else "missed"
  return [row.label, "", f"{name} " + ", ".join(parts), verdict, _sessions([row.file])]


def bf16_loss_cells(row: Bf16Loss, results: pathlib.Path,
                    cpu: tuple[str, str] | None = None) -> list[str]:
  if row.file is None:
    return _unmeasured(row.label, "no saved run")
  report = _last(results / row.file, "bf16_loss")
  _check_cpu(row.file, report, cpu)
  worst = 100 * report["max_rel_diff"]
  cells = (f"max {worst:.2f} % over {report['steps']} {report['config']} steps, "
           f"`--dtype {report['dtype']}` (tolerance {100 * report['rtol']:g} %)")
  return [row.label, "", cells, "met" if report["within_rtol"] else "missed",
          _sessions([row.file])]


def table(results: pathlib.Path = RESULTS, rows=None, board: Board | None = None) -> str:
  """One scoreboard as markdown: the header and one line per row (`board`'s, or `rows`
  under the issue's machine kind's header with no CPU check, or `ROWS` by default)."""
  if board is None:
    board = Board(TITLE, None, ROWS if rows is None else rows)
  out = [header(board.title)]
  for row in board.rows:
    try:
      if isinstance(row, Against):
        cells = against_cells(row, results, board.cpu)
      elif isinstance(row, Remat):
        cells = remat_cells(row, results, board.cpu)
      elif isinstance(row, Bf16Loss):
        cells = bf16_loss_cells(row, results, board.cpu)
      else:
        cells = _unmeasured(row.label, row.why, row.sessions)
    except (OSError, ValueError, KeyError) as e:
      raise ValueError(f"row {row.label!r} ({', '.join(row.files)}): "
                       f"{type(e).__name__}: {e}") from e
    out.append("| " + " | ".join(cells) + " |")
  return "\n".join(out)


def table_in(text: str, title: str = TITLE) -> str | None:
  """The scoreboard table titled `title` in a markdown text: from its header line to the
  first line that is not a table row; None where there is none."""
  lines = text.splitlines()
  first = header(title).splitlines()[0]
  if first not in lines:
    return None
  start = lines.index(first)
  end = start
  while end < len(lines) and lines[end].startswith("|"):
    end += 1
  return "\n".join(lines[start:end])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--results", default=str(RESULTS), help="the saved runs' folder")
  p.add_argument("--check", metavar="DOC.md", default=None,
                 help="compare the tables in DOC.md with the computed ones; exit 1 if any "
                      "differs or is missing")
  a = p.parse_args(argv)
  text = None if a.check is None else pathlib.Path(a.check).read_text()
  status = 0
  for board in BOARDS:
    try:
      computed = table(pathlib.Path(a.results), board=board)
    except ValueError as e:
      print(f"scoreboard: a saved run could not be read: {e}", file=sys.stderr)
      return 1
    if text is None:
      print(computed + "\n")
      continue
    found = table_in(text, board.title)
    if found is None:
      print(f"{a.check}: no scoreboard table {board.title!r} (its header line is missing)",
            file=sys.stderr)
      status = 1
    elif found != computed:
      sys.stdout.writelines(difflib.unified_diff(
          (found + "\n").splitlines(True), (computed + "\n").splitlines(True),
          f"{a.check} (as written)", "computed from the saved runs"))
      status = 1
    else:
      print(f"{a.check}: the scoreboard {board.title!r} matches the saved runs")
  return status


if __name__ == "__main__":
  sys.exit(main())
