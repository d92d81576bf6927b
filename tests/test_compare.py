"""benchmarks/compare.py: alternating JAX/PyTorch processes and their ratio summary."""
import json
import pathlib
import stat
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import compare  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(autouse=True)
def _phases(monkeypatch):
  """The VM's phase as a count (1.0, 2.0, ...), instead of measuring an FMA peak."""
  calls = []
  def fake(seconds):
    calls.append(seconds)
    return float(len(calls))
  monkeypatch.setattr(compare, "vm_phase", fake)
  return calls


def _fake_interpreter(tmp_path, name, median, log):
  """An 'interpreter' that logs its call and prints the JSON line a benchmark prints."""
  path = tmp_path / name
  path.write_text(f"""#!{sys.executable}
import json, sys
open({str(log)!r}, "a").write({name!r} + " " + " ".join(sys.argv[1:]) + "\\n")
print("progress noise")
print(json.dumps(dict(config="Ti112", mode="train", median_s={median}, min_s=0.1,
                      max_s=1.0)))
""")
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


def _turn_taker(tmp_path, name, median, log, die_after=None, hang=False):
  """An 'interpreter' that takes its timed steps in turns (`--turns R,W`), logging the
  start and end of each, as step.py and torch_port.py do through common.Turns."""
  path = tmp_path / name
  path.write_text(f"""#!{sys.executable}
import json, os, sys, time
args = sys.argv[1:]
steps = int(args[args.index("--steps") + 1])
read, write = (int(fd) for fd in args[args.index("--turns") + 1].split(","))
if {hang}:
  time.sleep(60)
os.write(write, b"r")
for i in range(steps):
  if i == {die_after!r}:
    print("{name} gave up", file=sys.stderr)
    sys.exit(3)
  assert os.read(read, 1) == b"g"
  with open({str(log)!r}, "a") as f:
    f.write("{name} start %d\\n" % i)
  time.sleep(0.01)
  with open({str(log)!r}, "a") as f:
    f.write("{name} end %d\\n" % i)
  os.write(write, b"d")
print(json.dumps(dict(config="Ti112", mode="train", median_s={median}, min_s=0.1,
                      max_s=1.0)))
""")
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


def test_lockstep_rounds_take_the_timed_steps_in_turns(tmp_path, capsys):
  log = tmp_path / "turns.log"
  compare.main(["--lockstep", "--gap", "0", "--rounds", "2", "--steps", "3",
                "--jax-python", _turn_taker(tmp_path, "jaxpy", 0.25, log),
                "--torch-python", _turn_taker(tmp_path, "torchpy", 0.5, log)])
  events = log.read_text().split("\n")[:-1]
  # One step at a time: each start is followed by its own end.
  assert all(e.replace("start", "end") == f for e, f in zip(events[::2], events[1::2]))
  turns = [e.split()[0][:-2] for e in events[::2]]
  assert turns == ["jax", "torch", "torch", "jax", "jax", "torch",    # round 1: JAX first
                   "torch", "jax", "jax", "torch", "torch", "jax"]    # round 2: the port
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  assert [(l["side"], l["round"]) for l in lines[:-1]] == [
      ("jax", 1), ("torch", 1), ("torch", 2), ("jax", 2)]
  summary = lines[-1]
  assert summary["lockstep"] is True and summary["gap"] == 0
  assert summary["ratios"] == [2.0, 2.0]


@pytest.mark.parametrize("die_after, hang, message", [
    (1, False, "ended before its turns did"), (None, True, "sent nothing for 1 s")])
def test_a_side_that_fails_its_turns_is_named(tmp_path, die_after, hang, message):
  log = tmp_path / "turns.log"
  bad = _turn_taker(tmp_path, "torchpy", 0.5, log, die_after=die_after, hang=hang)
  cmds = dict(jax=[_turn_taker(tmp_path, "jaxpy", 0.25, log), "--steps", "3"],
              torch=[bad, "--steps", "3"])
  with pytest.raises(RuntimeError, match=message) as failure:
    compare.lockstep_round(cmds, "jax", 3, gap=0, timeout=1)
  assert bad in str(failure.value)
  if die_after:
    assert "torchpy gave up" in str(failure.value) and "(exit 3)" in str(failure.value)
  else:
    assert "(still running)" in str(failure.value)


def test_rounds_alternate_and_the_ratio_is_torch_over_jax(tmp_path, capsys):
  log = tmp_path / "calls.log"
  jax_py = _fake_interpreter(tmp_path, "jaxpy", 0.25, log)
  torch_py = _fake_interpreter(tmp_path, "torchpy", 0.5, log)
  compare.main(["--rounds", "3", "--steps", "4", "--jax-python", jax_py,
                "--torch-python", torch_py, "--backend", "compile", "--dtype", "bf16",
                "--jax-dtype", "bf16_matmul"])
  calls = log.read_text().splitlines()
  assert [c.split()[0] for c in calls] == ["jaxpy", "torchpy", "torchpy", "jaxpy",
                                           "jaxpy", "torchpy"]
  assert all("--steps 4" in c and "--peak-size 0" in c for c in calls)
  assert all(c.split()[1].endswith("step.py") for c in calls if c.startswith("jaxpy"))
  assert all("torch_port.py" in c and "--backend compile" in c and "--dtype bf16 " in c
             for c in calls if c.startswith("torchpy"))
  assert all("--dtype bf16_matmul" in c for c in calls if c.startswith("jaxpy"))
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  assert [l["kind"] for l in lines] == ["run"] * 6 + ["compare"]
  summary = lines[-1]
  assert summary["ratios"] == [2.0, 2.0, 2.0] and summary["ratio_median"] == 2.0
  assert summary["jax_median_s"] == 0.25 and summary["torch_median_s"] == 0.5
  assert summary["source"] == compare.source_fingerprint()
  assert summary["source_changed"] is False
  assert summary["cpu_model"] == common.cpu_model()["cpu_model"]  # the machine kind, with
  assert summary["cpu_family"] and summary["cpu_model_name"]  # its name and family


def test_each_process_records_the_phase_measured_right_before_it(tmp_path, capsys,
                                                                 _phases):
  log = tmp_path / "calls.log"
  compare.main(["--rounds", "2", "--steps", "1", "--phase-seconds", "0.05",
                "--jax-python", _fake_interpreter(tmp_path, "jaxpy", 0.25, log),
                "--torch-python", _fake_interpreter(tmp_path, "torchpy", 0.5, log)])
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  assert _phases == [0.05] * 4
  assert [(l["side"], l["fma_peak_gflops_per_s"]) for l in lines[:-1]] == [
      ("jax", 1.0), ("torch", 2.0), ("torch", 3.0), ("jax", 4.0)]
  assert lines[-1]["fma_peak_range"] == [1.0, 4.0]


def test_the_phase_is_the_fma_peak_or_none(monkeypatch):
  monkeypatch.undo()  # the real vm_phase
  assert compare.vm_phase(0) is None
  peak = compare.vm_phase(0.01)
  assert peak is None or peak > 0  # None: no C++ compiler here


def _tree(root, files):
  for name, text in files.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)


def test_the_source_fingerprint_follows_the_step_and_nothing_else(tmp_path):
  _tree(tmp_path, {"meldae_jax/models/vit.py": "a = 1\n", "meldae_jax/ops/k.cc": "int x;\n",
                   "benchmarks/step.py": "", "docs/performance.md": "# v1\n",
                   "tests/test_x.py": ""})
  before = compare.source_fingerprint(tmp_path)
  _tree(tmp_path, {"docs/performance.md": "# v2\n", "tests/test_y.py": "",
                   "benchmarks/scoreboard.py": ""})
  assert compare.source_fingerprint(tmp_path) == before
  for name in ("meldae_jax/ops/k.cc", "benchmarks/step.py", "benchmarks/compare.py"):
    _tree(tmp_path, {name: "changed\n"})
    assert compare.source_fingerprint(tmp_path) != before
    before = compare.source_fingerprint(tmp_path)
  (tmp_path / "meldae_jax/models/vit.py").rename(tmp_path / "meldae_jax/models/vit2.py")
  assert compare.source_fingerprint(tmp_path) != before  # a renamed file counts


def test_sources_changed_during_the_rounds_are_flagged(tmp_path, capsys, monkeypatch):
  log = tmp_path / "calls.log"
  prints = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])  # before the rounds, after them
  monkeypatch.setattr(compare, "source_fingerprint", lambda: next(prints))
  compare.main(["--rounds", "1", "--steps", "1",
                "--jax-python", _fake_interpreter(tmp_path, "jaxpy", 0.25, log),
                "--torch-python", _fake_interpreter(tmp_path, "torchpy", 0.5, log)])
  captured = capsys.readouterr()
  summary = json.loads(captured.out.splitlines()[-1])
  assert summary["source"] == "aaaaaaaaaaaa" and summary["source_changed"] is True
  assert "do not pool them" in captured.err


def test_git_commit_is_none_outside_a_checkout(tmp_path):
  assert compare.git_commit(tmp_path) is None


def test_summary_of_uneven_rounds():
  rounds = [dict(jax=dict(median_s=j), torch=dict(median_s=t))
            for j, t in ((0.2, 0.5), (0.25, 0.5), (0.5, 0.5))]
  s = compare.summarise(rounds)
  assert s["ratios"] == [2.5, 2.0, 1.0]
  assert (s["ratio_median"], s["ratio_min"], s["ratio_max"]) == (2.0, 1.0, 2.5)
  assert s["jax_median_s"] == 0.25


def test_a_failing_process_is_named(tmp_path):
  bad = tmp_path / "bad"
  bad.write_text("#!/bin/sh\necho oops >&2\nexit 3\n")
  bad.chmod(0o755)
  with pytest.raises(RuntimeError, match=r"(?s)bad step.py failed \(exit 3\).*oops"):
    compare.run_one([str(bad), "step.py"])


def test_median_interval_is_the_order_statistic_one():
  # n = 10: [x_(2), x_(9)] holds the median with 1 - 2 * 11 / 1024; [x_(3), x_(8)] only 0.89.
  low, high, achieved = compare.median_interval([float(v) for v in range(10, 0, -1)])
  assert (low, high) == (2.0, 9.0) and achieved == pytest.approx(1 - 22 / 1024)
  # Too few rounds for 95 %: [min, max] and the 75 % it reaches at n = 3.
  assert compare.median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0, 0.75)
  assert compare.median_interval([1.5]) == (1.5, 1.5, 0.0)


def _rounds(*pairs):
  return [dict(jax=dict(median_s=j), torch=dict(median_s=t)) for j, t in pairs]


@pytest.mark.parametrize("ratios,verdict,at_target", [
    ((1.4, 1.35, 1.5, 1.31, 1.45, 1.32), "met", 6),
    ((1.2, 1.25, 1.1, 1.28, 1.15, 1.29), "missed", 0),
    ((1.2, 1.35, 1.25, 1.4, 1.31, 1.28), "undecided", 3),
])
def test_the_verdict_needs_the_whole_interval_on_one_side(ratios, verdict, at_target):
  s = compare.summarise(_rounds(*[(1.0, r) for r in ratios]), target=1.3)
  assert s["verdict"] == verdict and s["rounds_at_target"] == at_target
  assert s["ratio_median_interval"] == [min(ratios), max(ratios)]  # n = 6: 96.9 %
  assert s["interval_confidence"] == pytest.approx(1 - 2 / 64)


def _saved_run(tmp_path, name, jax_median, torch_median, rounds=2, dtype="fp32",
               phase_seconds=0.0):
  log = tmp_path / f"{name}.log"
  jax_py = _fake_interpreter(tmp_path, f"{name}_jax", jax_median, log)
  torch_py = _fake_interpreter(tmp_path, f"{name}_torch", torch_median, log)
  out = tmp_path / f"{name}.jsonl"
  proc = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--rounds", str(rounds),
       "--steps", "1", "--dtype", dtype, "--jax-python", jax_py, "--torch-python",
       torch_py, "--phase-seconds", str(phase_seconds)],
      capture_output=True, text=True, check=True)
  out.write_text(proc.stdout)
  return str(out)


def test_saved_outputs_are_pooled(tmp_path, capsys):
  a = _saved_run(tmp_path, "a", 1.0, 1.2)
  b = _saved_run(tmp_path, "b", 1.0, 1.5, rounds=3)
  compare.main(["--summarise", a, b, "--target", "1.3"])
  s = json.loads(capsys.readouterr().out.splitlines()[-1])
  assert s["rounds"] == 5 and s["ratios"] == pytest.approx([1.2, 1.2, 1.5, 1.5, 1.5])
  assert s["ratio_median"] == pytest.approx(1.5) and s["rounds_at_target"] == 3
  assert s["verdict"] == "undecided" and s["config"] == "Ti112" and s["files"] == [a, b]
  assert s["fma_peak_range"] is None  # measured with --phase-seconds 0


def test_pooled_phases_come_from_the_files_that_have_them(tmp_path, capsys):
  a = _saved_run(tmp_path, "a", 1.0, 1.2)
  b = _saved_run(tmp_path, "b", 1.0, 1.5, phase_seconds=0.01)  # a real FMA peak
  peaks = [l["fma_peak_gflops_per_s"] for l in compare.json_lines(b) if l["kind"] == "run"]
  if None in peaks:
    pytest.skip("no C++ compiler for the FMA loop")
  compare.main(["--summarise", a, b])
  s = json.loads(capsys.readouterr().out.splitlines()[-1])
  assert s["fma_peak_range"] == [min(peaks), max(peaks)] and min(peaks) > 0


def test_pooling_warns_where_the_files_measured_different_code(tmp_path, capsys):
  a = _saved_run(tmp_path, "a", 1.0, 1.2)
  b = _saved_run(tmp_path, "b", 1.0, 1.5)
  compare.main(["--summarise", a, b])
  captured = capsys.readouterr()
  assert "different code" not in captured.err
  same = json.loads(captured.out.splitlines()[-1])["sources"]
  assert same == [compare.source_fingerprint()] * 2
  lines = pathlib.Path(b).read_text().splitlines()
  summary = json.loads(lines[-1])
  summary["source"] = "0123456789ab"
  pathlib.Path(b).write_text("\n".join(lines[:-1] + [json.dumps(summary)]) + "\n")
  compare.main(["--summarise", a, b])
  captured = capsys.readouterr()
  assert "different code" in captured.err and "0123456789ab" in captured.err
  assert json.loads(captured.out.splitlines()[-1])["sources"][1] == "0123456789ab"


def test_pooling_refuses_mixed_or_unfinished_outputs(tmp_path, capsys):
  a = _saved_run(tmp_path, "a", 1.0, 1.2)
  bf16 = _saved_run(tmp_path, "c", 1.0, 1.2, dtype="bf16")
  with pytest.raises(SystemExit):
    compare.main(["--summarise", a, bf16])
  assert "the first file" in capsys.readouterr().err
  cut = tmp_path / "cut.jsonl"
  cut.write_text("".join(l + "\n" for l in pathlib.Path(a).read_text().splitlines()[:3]))
  with pytest.raises(SystemExit):
    compare.main(["--summarise", str(cut)])
  assert "no `kind: compare` line" in capsys.readouterr().err


def test_rounds_on_another_cpu_do_not_pool(tmp_path, capsys):
  a = _saved_run(tmp_path, "a", 1.0, 1.2)
  lines = pathlib.Path(a).read_text().splitlines()
  summary = json.loads(lines[-1])
  summary.update(cpu_model_name="Another CPU", cpu_family="99")
  other = tmp_path / "other.jsonl"
  other.write_text("\n".join(lines[:-1] + [json.dumps(summary)]) + "\n")
  with pytest.raises(SystemExit):
    compare.main(["--summarise", a, str(other)])
  assert "'cpu_model_name': 'Another CPU'" in capsys.readouterr().err


def test_step_py_takes_its_timed_steps_in_turns(tmp_path):
  """The real JAX benchmark (tiny model) against a turn-taking stand-in for the port."""
  log = tmp_path / "turns.log"
  cmds = dict(jax=[sys.executable, str(ROOT / "benchmarks" / "step.py"), "--config", "tiny",
                   "--mode", "infer", "--steps", "2", "--warmup", "1", "--peak-size", "0"],
              torch=[_turn_taker(tmp_path, "torchpy", 0.5, log), "--steps", "2"])
  figures = compare.lockstep_round(cmds, "torch", 2, gap=0.01, timeout=600)
  assert figures["jax"]["config"] == "tiny" and figures["jax"]["steps"] == 2
  assert figures["jax"]["median_s"] > 0 and figures["torch"]["median_s"] == 0.5
  assert log.read_text().split()[:2] == ["torchpy", "start"]


def test_a_negative_gap_is_refused(capsys):
  with pytest.raises(SystemExit):
    compare.main(["--lockstep", "--gap", "-0.1"])
  assert "--gap must be >= 0" in capsys.readouterr().err


_SIDE = """
import json, sys, time
sys.path.insert(0, {root!r})
from benchmarks import common
spans = []
def step():
  t0 = time.monotonic(); time.sleep(0.05); spans.append((t0, time.monotonic()))
turns = common.Turns(sys.argv[sys.argv.index("--turns") + 1])
times = common.time_steps(step, {steps}, 1, turns)
t0 = time.monotonic(); time.sleep(0.3); post = (t0, time.monotonic())  # FLOP counts
print(json.dumps(dict(median_s=sorted(times)[len(times) // 2], timed=spans[1:], post=post)))
"""


@pytest.mark.parametrize("steps", [3, 4])
def test_no_timed_step_overlaps_the_other_sides_work_after_its_steps(tmp_path, steps):
  """The side whose turn comes last took its last timed step while the other side was
  already counting FLOPs (seconds of tracing, or a whole eager step): its median moved."""
  script = tmp_path / "side.py"
  script.write_text(_SIDE.format(root=str(ROOT), steps=steps))
  cmds = {side: [sys.executable, str(script)] for side in ("jax", "torch")}
  for first in ("jax", "torch"):
    figures = compare.lockstep_round(cmds, first, steps, gap=0.0)
    for side, other in (("jax", "torch"), ("torch", "jax")):
      post_start, post_end = figures[other]["post"]
      for start, end in figures[side]["timed"]:
        assert end <= post_start or start >= post_end, (first, side)


def test_pooling_refuses_files_of_another_cpu_model_or_step_count(tmp_path):
  """Where both files recorded them: the CPU's model number (Zen 3 and Zen 4 share a name
  and family) and the steps, warm-up and gap that shape each round's median."""
  def saved(name, **summary):
    lines = [dict(kind="run", side=side, round=1, median_s=0.2) for side in ("jax", "torch")]
    lines.append(dict(kind="compare", config="Ti112", mode="train", dtype="fp32",
                      jax_dtype="fp32", torch_backend="eager", lockstep=True,
                      cpu_model_name="AMD EPYC", cpu_family="25", **summary))
    path = tmp_path / name
    path.write_text("".join(json.dumps(l) + "\n" for l in lines))
    return str(path)
  zen4 = saved("a.jsonl", cpu_model="17", steps=10, warmup=2, gap=0.05)
  assert len(compare.load_rounds([zen4, saved("b.jsonl", steps=10)])[1]) == 2
  with pytest.raises(ValueError, match="cpu_model='1'"):
    compare.load_rounds([zen4, saved("c.jsonl", cpu_model="1")])
  with pytest.raises(ValueError, match="steps=3"):
    compare.load_rounds([zen4, saved("d.jsonl", cpu_model="17", steps=3)])


def test_pooling_refuses_a_file_whose_sources_changed_or_that_holds_two_runs(tmp_path):
  a = _saved_run(tmp_path, "a", 1.0, 1.2)
  lines = pathlib.Path(a).read_text().splitlines()
  summary = json.loads(lines[-1])
  changed = tmp_path / "changed.jsonl"
  changed.write_text("\n".join(lines[:-1] + [json.dumps(dict(summary, source_changed=True))])
                     + "\n")
  with pytest.raises(ValueError, match="sources changed while it ran"):
    compare.load_rounds([str(changed)])
  twice = tmp_path / "twice.jsonl"
  twice.write_text(pathlib.Path(a).read_text() * 2)
  with pytest.raises(ValueError, match="2 `kind: compare` lines"):
    compare.load_rounds([str(twice)])
  runs_twice = tmp_path / "runs_twice.jsonl"
  runs = [l for l in lines if json.loads(l).get("kind") == "run"]
  runs_twice.write_text("\n".join(runs + lines) + "\n")
  with pytest.raises(ValueError, match="round 1's .* side twice"):
    compare.load_rounds([str(runs_twice)])
