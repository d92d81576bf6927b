"""A sweep's results as one table beside the paper's numbers, and as a plot.

  python launch/launch.py --config=configs/wdmd.py --sweep=ablations --workdir=/tmp/abl \
      --results [--plot=/tmp/abl/curves.png]

Reads each run's `metrics.json` (a LOSO run's `loso_metrics.json`, pooled over its folds)
under `workdir/<run name>`; runs not finished show their status: "stale" when the run's
`config.json` asks for more steps than its metrics were made at (a run being extended),
"failed (exit N)" when `launch.py --run` saw it end with an error. A run whose
`config.json` names another dataset than `--config`'s corpus gets no paper figure (a
warning names it): `--config` picks the paper's column, the runs' own config says what
they trained on. Figures are in percent,
as the paper gives them. The paper's column is its Table 2 (full model and the model
without the enhancer, per corpus), Table 3 (WDMD ablations), Table 4 (WDMD, lambda and N)
and, read off Figure 4's text, the converged F1_DR of the localisation losses ("~"). Each
corpus is compared on the paper's metric for it: F1_DR on WDMD, UF1 on the others.
Standalone (no project imports), like sweeps.py.
"""
from __future__ import annotations

import glob
import json
import math
import os

# The paper's metric per corpus (Table 2's columns).
KEY_METRIC = {"wdmd": "f1_dr", "casme2": "uf1", "samm_lv": "uf1", "mmew": "uf1"}

# Table 2: MELDAE (Full) and MELDAE* (w/o Enhancer); WDMD also Acc_ME and Acc_State.
TABLE2 = {
    "wdmd": {"full": {"f1_dr": 31.74, "acc_me": 81.76, "acc_state": 80.27},
             "enhancer=False": {"f1_dr": 18.87, "acc_me": 78.05, "acc_state": 76.59}},
    "casme2": {"full": {"uf1": 37.93}, "enhancer=False": {"uf1": 20.68}},
    "samm_lv": {"full": {"uf1": 88.13}, "enhancer=False": {"uf1": 76.05}},
    "mmew": {"full": {"uf1": 73.04}, "enhancer=False": {"uf1": 65.10}},
}
# Table 3 (rows 3-8), Table 4 and Figure 4 (approximate, from §5.6's text): WDMD F1_DR by
# run name (launch/sweeps.py's run_name).
WDMD_F1_DR = {
    "loc_loss=bal": 31.74,  # Table 3's row 1: the full model
    "backbone=resnet50": 26.13,
    "temporal=none": 28.05,
    "state_weight=0.0": 25.20,
    "loc_loss=bce": 22.04,
    "loc_loss=iou": 27.19,
    "loc_loss=focal_tversky": 28.33,
    "boundary_lambda=0.5": 30.15, "boundary_lambda=1.0": 31.74,
    "boundary_lambda=1.5": 31.09, "boundary_lambda=2.0": 29.88,
    "num_queries=4": 28.30, "num_queries=8": 31.02, "num_queries=16": 31.74,
    "num_queries=32": 31.71,
}
# Figure 4 for the losses Table 3 lacks (its BCE, ~30, is Table 3's 22.04 there).
FIGURE4_APPROX = {"loc_loss=mae": 12.0, "loc_loss=mse": 12.0, "loc_loss=smooth_l1": 28.5}
# The run each sweep compares with: the full model under that sweep's name.
BASELINE = {"loc_loss": "loc_loss=bal", "lambda": "boundary_lambda=1.0",
            "tokens": "num_queries=16", "seeds": "seed=0"}

COLUMNS = ("f1_dr", "f1", "uf1", "precision", "recall", "acc_me", "acc_state", "megc2020_f1")


def corpus_of(config: str) -> str | None:
  """'configs/wdmd.py:arg' -> 'wdmd' when it is one of the paper's corpora."""
  name = os.path.splitext(os.path.basename(config.partition(":")[0]))[0]
  return name if name in KEY_METRIC else None


def paper_value(corpus: str | None, run: str, sweep: str) -> tuple[float | None, str]:
  """The paper's figure for a run on the corpus's metric, and where it is from."""
  if corpus is None:
    return None, ""
  full = run == "full" or run.startswith("seed=")
  if full or run in TABLE2[corpus]:
    return TABLE2[corpus]["full" if full else run][KEY_METRIC[corpus]], "Table 2"
  if corpus != "wdmd":
    # The sweep's baseline (bal, lambda 1, N 16) is the paper config's full model: Table
    # 2's MELDAE row, the one figure the paper gives for these sweeps off WDMD.
    if run == BASELINE.get(sweep):
      return TABLE2[corpus]["full"][KEY_METRIC[corpus]], "Table 2"
    return None, ""
  if run in WDMD_F1_DR:
    table = "Table 4" if run.startswith(("boundary_lambda", "num_queries")) else "Table 3"
    return WDMD_F1_DR[run], table
  if run in FIGURE4_APPROX:
    return FIGURE4_APPROX[run], "Fig. 4, ~"
  return None, ""


def read_run(run_dir: str) -> dict:
  """{'status': ..., metric: value in [0, 1] or None, 'best_step', 'folds'}."""
  for name, loso in (("loso_metrics.json", True), ("metrics.json", False)):
    path = os.path.join(run_dir, name)
    if not os.path.exists(path):
      continue
    try:
      with open(path) as f:
        data = json.load(f)
    except (OSError, ValueError) as e:
      return {"status": f"unreadable {name}: {e}"}
    m = data.get("pooled", {}) if loso else data
    out = {k: m.get(k) for k in COLUMNS if k != "megc2020_f1"}
    out["megc2020_f1"] = (m.get("megc2020") or {}).get("f1")
    stale, failed = _stale(run_dir, data, loso), _failed(run_dir)
    out["status"] = data.get("status", "?")
    if stale:
      out["status"] = f"stale ({stale}): running or stopped"
    if failed:
      out["status"] = failed + (f" ({stale})" if stale else "")
    out["best_step"] = None if loso else data.get("best_step")
    out["folds"] = data.get("num_folds") if loso else None
    out["dataset"] = _dataset(run_dir)
    return out
  if not os.path.isdir(run_dir):
    return {"status": "not started"}
  return {"status": _failed(run_dir) or "running or stopped (no metrics.json yet)",
          "dataset": _dataset(run_dir)}


def _dataset(run_dir: str) -> str | None:
  """The dataset the run trained on, from its (or its first LOSO fold's) config.json."""
  for path in [os.path.join(run_dir, "config.json"),
               *sorted(glob.glob(os.path.join(run_dir, "fold_*", "config.json")))]:
    try:
      with open(path) as f:
        return json.load(f)["dataset"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
      continue
  return None


def other_corpus(corpus: str | None, run: dict) -> str | None:
  """The dataset a run trained on when its config.json names another than `--config`'s
  corpus (or a paper corpus that `--config` is not): its figures are not comparable with
  the paper's for `--config`, so none is shown beside them."""
  name = run.get("dataset")
  if name is None or name == corpus or (corpus is None and name not in KEY_METRIC):
    return None
  return name


def _total_steps(path: str):
  try:
    with open(path) as f:
      return json.load(f).get("total_steps")
  except (OSError, ValueError, AttributeError):
    return None


def _run_dirs(run_dir: str, loso: bool) -> list[str]:
  """The folders training writes config.json and metrics.json to: the run's, or its
  LOSO folds'."""
  return sorted(glob.glob(os.path.join(run_dir, "fold_*"))) if loso else [run_dir]


def _stale(run_dir: str, data: dict, loso: bool) -> str | None:
  """Why the figures are not the run's at its config.json's total_steps, or None: a run
  extended to more steps writes its config.json at the start and keeps the old
  metrics.json (status 'done') until it finishes again."""
  dirs = _run_dirs(run_dir, loso)
  want = [s for s in (_total_steps(os.path.join(d, "config.json")) for d in dirs)
          if s is not None]
  if not want:
    return None
  have = ([_total_steps(os.path.join(d, "metrics.json")) for d in dirs] if loso
          else [data.get("total_steps")])
  old = sorted({s for s in have if s is not None and s != max(want)})
  if not old:
    return None
  return f"figures at {'/'.join(map(str, old))} steps, config.json {max(want)}"


# Written by `launch.py --run` into a run's folder when its command ends.
EXIT_FILE = "launch_exit.json"


def write_exit(run_dir: str, code: int | None) -> None:
  """Records a run's exit status (None: removes the record, as a run starts)."""
  path = os.path.join(run_dir, EXIT_FILE)
  if code is None:
    if os.path.exists(path):
      os.remove(path)
    return
  os.makedirs(run_dir, exist_ok=True)
  with open(path, "w") as f:
    json.dump({"exit": code}, f)


def _failed(run_dir: str) -> str | None:
  """'failed (exit N)' when launch recorded an error exit that nothing since overrides:
  a later start (config.json) or finish (metrics.json) of the run is newer."""
  path = os.path.join(run_dir, EXIT_FILE)
  try:
    with open(path) as f:
      code = json.load(f)["exit"]
    when = os.path.getmtime(path)
  except (OSError, ValueError, KeyError, TypeError):
    return None
  if not code:
    return None
  files = [os.path.join(d, n) for d in [run_dir, *_run_dirs(run_dir, True)]
           for n in ("config.json", "metrics.json")]
  files.append(os.path.join(run_dir, "loso_metrics.json"))
  if any(os.path.exists(p) and os.path.getmtime(p) > when for p in files):
    return None
  return f"failed (signal {-code})" if code < 0 else f"failed (exit {code})"


def _pct(v) -> str:
  return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def table(config: str, sweep: str, runs: list[tuple[str, str]]) -> str:
  """Markdown: one row per (run name, run dir), ours beside the paper's figure."""
  corpus = corpus_of(config)
  key = KEY_METRIC.get(corpus, "f1_dr")
  results = {name: read_run(path) for name, path in runs}
  baseline = BASELINE.get(sweep, "full")
  base = results.get(baseline, {}).get(key)
  paper_base = paper_value(corpus, baseline, sweep)[0]
  head = (f"| run | status | {key} | vs {baseline} | paper | paper vs {baseline} | "
          + " | ".join(c for c in COLUMNS if c != key) + " | best step / folds |")
  lines = [f"{config}, sweep {sweep!r}: figures in %, on the test split "
           f"({'the paper compares ' + key.upper() if corpus else 'no paper figures: not one of its corpora'}).",
           "", head, "|" + " --- |" * (head.count("|") - 1)]
  other = {n: other_corpus(corpus, r) for n, r in results.items() if other_corpus(corpus, r)}
  if other:
    named = ", ".join(f"{n} ({d})" for n, d in other.items())
    lines.insert(1, f"WARNING: by their config.json, {named} trained on another dataset "
                 f"than {corpus or config} (--config): no paper figure beside them; give "
                 "--config the runs' corpus.")
  for name, _ in runs:
    r = results[name]
    ours = r.get(key)
    paper, source = paper_value(corpus, name, sweep)
    if name in other:
      paper, source = None, ""
    delta = "" if ours is None or base is None or name == baseline else (
        f"{100 * (ours - base):+.2f}")
    paper_delta = "" if paper is None or paper_base is None or name == baseline else (
        f"{paper - paper_base:+.2f}")
    where = r.get("best_step") if r.get("folds") is None else f"{r['folds']} folds"
    status = str(r.get("status")) + (f" (dataset {other[name]}!)" if name in other else "")
    cells = [name, status, _pct(ours), delta,
             f"{paper:.2f} ({source})" if paper is not None else "", paper_delta]
    cells += [_pct(r.get(c)) for c in COLUMNS if c != key]
    cells.append("" if where is None else str(where))
    lines.append("| " + " | ".join(cells) + " |")
  if sweep == "seeds":
    lines += _seed_summary(results, key)
  return "\n".join(lines)


def _seed_summary(results: dict[str, dict], key: str) -> list[str]:
  """Mean and sd of `key` over the finished seeds only: a partial LOSO run's figure pools
  other folds than the rest's, so it is named as left out, not averaged in."""
  values = [r[key] for r in results.values()
            if r.get("status") == "done" and r.get(key) is not None]
  left = [f"{n} ({r.get('status')})" for n, r in results.items()
          if r.get(key) is not None and r.get("status") != "done"]
  if len(values) < 2:
    return []
  mean = sum(values) / len(values)
  sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
  out = [f"{key} over {len(values)} seeds: mean {100 * mean:.2f}, "
         f"sd {100 * sd:.2f} (the paper reports one figure)."]
  if left:
    out[0] += f" Left out, not finished: {', '.join(left)}."
  return ["", *out]


def curves(runs: list[tuple[str, str]], key: str = "f1_dr") -> dict[str, list[tuple]]:
  """Validation `key` over the steps, per run, from each run's metrics.jsonl (the last
  record of a step wins; LOSO runs have one per fold and are left out)."""
  out = {}
  for name, path in runs:
    path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(path):
      continue
    points = {}
    with open(path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        value = record.get(f"val/{key}")
        if isinstance(value, (int, float)):
          points[record["step"]] = value
    if points:
      out[name] = sorted(points.items())
  return out


def plot_file(out: str) -> str:
  """The file `plot` writes for `--plot=out`, or a ValueError naming why it cannot: the
  launcher checks it before a sweep runs, not after. matplotlib would add '.png' to a
  name without a suffix, and write a hidden '.png' into a folder given as the name."""
  import matplotlib.figure  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(out)
  if out.endswith(("/", os.sep)) or os.path.isdir(path):
    raise ValueError(f"--plot={out} is a folder: name the file, e.g. "
                     f"{os.path.join(out, 'curves.png')}")
  parent = os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f"--plot={out}: {parent} is a file, not a folder")
  suffix = os.path.splitext(path)[1].lstrip(".").lower()
  types = matplotlib.figure.Figure().canvas.get_supported_filetypes()
  if suffix and suffix not in types:
    raise ValueError(f"--plot={out}: matplotlib writes no .{suffix} "
                     f"(it writes {', '.join(sorted(types))})")
  return path if suffix else path + ".png"


def plot(runs: list[tuple[str, str]], out: str, key: str = "f1_dr", title: str = "",
         bars=()) -> str:
  """The runs' validation curves (the paper's Figure 4 for loc_loss) and, beside them,
  each run's test figure with the paper's (Tables 2-4), the panel a LOSO sweep has alone
  (its curves stay in its folds). `bars`: (run, ours in [0, 1] or None, paper in % or
  None) per run. Returns the file written."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  out = plot_file(out)
  data = curves(runs, key)
  bars = [b for b in bars if b[1] is not None or b[2] is not None]
  if not data and not bars:
    raise ValueError(f"no run has validation records of {key} (val/{key} in "
                     "metrics.jsonl) nor a test figure, and the paper none for them")
  fig, axes = plt.subplots(1, bool(data) + bool(bars), squeeze=False,
                           figsize=(7 * (bool(data) + bool(bars)), 4.5))
  axes = list(axes[0])
  if data:
    ax = axes.pop(0)
    for name, points in data.items():
      steps, values = zip(*points)
      ax.plot(steps, [100 * v for v in values], marker="o", ms=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"validation {key} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if bars:
    _bar_panel(axes.pop(0), bars, key)
  fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


def _bar_panel(ax, bars, key: str) -> None:
  """Ours (test) beside the paper's figure per run; a missing one leaves a gap."""
  nan = float("nan")
  x = range(len(bars))
  ours = [nan if o is None else 100 * o for _, o, _ in bars]
  paper = [nan if p is None else p for _, _, p in bars]
  has_paper = any(p is not None for _, _, p in bars)
  width = 0.4 if has_paper else 0.8
  ax.bar([i - width / 2 * has_paper for i in x], ours, width, label="ours (test)")
  if has_paper:
    ax.bar([i + width / 2 for i in x], paper, width, label="paper")
  names = [name if o is not None else f"{name} (no result)" for name, o, _ in bars]
  ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
  ax.set_ylabel(f"test {key} (%)")
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=8)
