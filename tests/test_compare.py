"""benchmarks/compare.py: alternating JAX/PyTorch processes and their ratio summary."""
import json
import pathlib
import stat
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import compare  # pylint: disable=g-import-not-at-top,wrong-import-position


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
