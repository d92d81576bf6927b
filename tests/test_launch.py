"""launch/: the sweeps' command lines parse into the configs they mean."""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
import launch  # pylint: disable=g-import-not-at-top,wrong-import-position

from meldae_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_helpers as th  # pylint: disable=g-import-not-at-top,wrong-import-position

# Reads --config and its overrides as meldae_jax.main does, prints the fields asked for.
_PARSE = """
import json, sys
from absl import app
from ml_collections import config_flags
C = config_flags.DEFINE_config_file("config", None, "")
def main(_):
  c = C.value
  print(json.dumps({"groups": c.optimizer.groups, "model_init": c.model_init,
                    "backbone": c.model.backbone}))
app.run(main)
"""


@pytest.mark.parametrize("sweep", ["ablations", "loc_loss", "seeds"])
def test_run_names_are_unique_plain_folder_names(sweep):
  names = [name for name, _ in launch.commands("configs/wdmd.py", sweep, "/w")]
  assert len(set(names)) == len(names)
  for name in names:
    assert re.fullmatch(r"[\w.=,+-]+", name), name


@pytest.mark.parametrize("config,rest", [("configs/wdmd.py", 5e-4),
                                         ("configs/synthetic.py:easy", 1e-3)])
def test_resnet50_ablation_trains_from_scratch_at_the_rest_lr(monkeypatch, config, rest):
  """Only the backbone changes: it takes the lr of the rest of the model, which keeps the
  config's (the paper configs' 5e-4, synthetic's 1e-3; a fixed 5e-4 moved synthetic's)."""
  monkeypatch.setenv("MELDAE_VIT_INIT", "/ckpt/ViT-B_16.npz")  # the paper's ViT init
  (name, cmd), = [c for c in launch.commands(config, "ablations", "/w")
                  if "resnet50" in c[0]]
  assert name == "backbone=resnet50"
  args = [a for a in cmd[cmd.index("meldae_jax.main") + 1:] if not a.startswith("--workdir")]
  proc = subprocess.run([sys.executable, "-c", _PARSE, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, check=True)
  parsed = json.loads(proc.stdout.strip().splitlines()[-1])
  assert parsed == {"groups": [["backbone/.*", rest], [".*", rest]], "model_init": "",
                    "backbone": "resnet50"}


def test_a_vit_checkpoint_into_the_resnet_backbone_is_an_error():
  cfg = th.tiny_config()
  cfg.model.backbone, cfg.model_init = "resnet50", "/ckpt/ViT-B_16.npz"
  with pytest.raises(ValueError, match="ViT checkpoint.*'resnet50'.*no pretrained loader"):
    train.load_pretrained(cfg, trainer=None, state=None)


def test_an_extra_flag_that_a_sweep_sets_itself_is_refused(capsys):
  # The last flag wins: every run would get 0.5 while its folder said otherwise.
  assert launch.main(["--config=configs/wdmd.py", "--sweep=lambda", "--workdir=/w",
                      "--config.loss.boundary_lambda=0.5"]) == 2
  assert "sets loss.boundary_lambda itself" in capsys.readouterr().err
  assert launch.main(["--config=configs/wdmd.py", "--sweep=ablations", "--workdir=/w",
                      "--config.model_init=/ckpt/ViT-B_16.npz"]) == 2
  assert "MELDAE_VIT_INIT" in capsys.readouterr().err
  assert launch.main(["--config=configs/wdmd.py", "--sweep=ablations", "--workdir=/w",
                      "--config.model=x"]) == 2  # holds model.enhancer, model.temporal
  assert launch.main(["--config=configs/wdmd.py", "--sweep=ablations", "--workdir=/w",
                      "--noconfig.model.enhancer"]) == 2  # absl's form of =False
  assert "sets model.enhancer itself" in capsys.readouterr().err
  launch.check_extra("lambda", ["--config.total_steps=10", "--config.loss.loc_loss=bce"])
  assert launch.main(["--config=configs/wdmd.py", "--sweep=lambda", "--workdir=/w",
                      "--config.total_steps=10"]) == 0
  assert "--config.total_steps=10" in capsys.readouterr().out


@pytest.mark.parametrize("corpus", ["wdmd", "casme2", "samm_lv", "mmew"])
def test_each_corpus_chooses_by_the_metric_the_paper_reports_for_it(corpus):
  """Threshold and best checkpoint are chosen by the metric Table 2 reports (and
  `--results` compares): UF1 on CAS(ME)^2, SAMM and MMEW, F1_DR on WDMD."""
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{corpus}").get_config()
  assert config.checkpoint.best_metric == launch._load("results").KEY_METRIC[corpus]  # pylint: disable=protected-access


def test_relative_paths_are_from_where_the_launcher_runs(tmp_path, monkeypatch):
  (tmp_path / "my.py").write_text("")
  monkeypatch.chdir(tmp_path)
  (_, cmd), *_ = launch.commands("my.py:easy", "seeds", "runs")
  assert f"--config={tmp_path / 'my.py'}:easy" in cmd
  assert any(a.startswith(f"--workdir={tmp_path / 'runs'}/") for a in cmd)
  (_, cmd), *_ = launch.commands("configs/wdmd.py", "seeds", "/w")  # not here: as given
  assert "--config=configs/wdmd.py" in cmd


def _write(path, data):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(data))


def test_results_table_beside_the_papers_numbers(tmp_path):
  """A real run's metrics.json as `full`, a LOSO-style pooled file and an unfinished run."""
  cfg = th.tiny_config(total_steps=2, log_every=1, eval_every=1)
  full = tmp_path / "abl" / "full"
  train.train_and_evaluate(cfg, str(full), splits=th.splits(n_train=2, n_val=1, n_test=1))
  m = json.loads((full / "metrics.json").read_text())
  saved = json.loads((full / "config.json").read_text())  # a stand-in for a WDMD run
  _write(full / "config.json", dict(saved, dataset=dict(saved["dataset"], name="wdmd")))
  pooled = dict(m, f1_dr=m["f1_dr"] - 0.1 if m["f1_dr"] is not None else None)
  _write(tmp_path / "abl" / "temporal=none" / "loso_metrics.json",
         {"pooled": pooled, "status": "partial", "num_folds": 3})
  (tmp_path / "abl" / "loc_loss=bce").mkdir()
  out = subprocess.run(
      [sys.executable, "launch/launch.py", "--config=configs/wdmd.py", "--sweep=ablations",
       f"--workdir={tmp_path / 'abl'}", "--results", f"--plot={tmp_path / 'c.png'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
  rows = {l.split(" | ")[0].strip("| "): l.split(" | ") for l in out.splitlines()
          if l.startswith("| ") and "---" not in l}
  pct = lambda v: "" if v is None else f"{100 * v:.2f}"
  assert rows["full"][1:3] == ["done", pct(m["f1_dr"])]
  assert rows["full"][4] == "31.74 (Table 2)"
  assert rows["temporal=none"][1] == "partial" and rows["temporal=none"][-1].startswith("3 folds")
  if m["f1_dr"] is not None:
    assert rows["temporal=none"][3] == "-10.00"
  assert rows["temporal=none"][4:6] == ["28.05 (Table 3)", "-3.69"]
  assert rows["loc_loss=bce"][1].startswith("running or stopped")
  assert rows["enhancer=False"][1:3] == ["not started", ""]
  assert rows["enhancer=False"][4] == "18.87 (Table 2)"
  assert (tmp_path / "c.png").stat().st_size > 1000  # the full run's validation curve


def test_results_of_seeds_give_mean_and_sd(tmp_path):
  for seed, f1_dr in ((0, 0.30), (1, 0.20), (2, 0.25)):
    _write(tmp_path / f"seed={seed}" / "metrics.json", {"status": "done", "f1_dr": f1_dr})
  text = launch.report("configs/synthetic.py", "seeds", str(tmp_path))
  assert "f1_dr over 3 seeds: mean 25.00, sd 5.00" in text
  assert "no paper figures" in text


def test_curves_take_the_last_record_of_a_step(tmp_path):
  results = launch._load("results")
  (tmp_path / "metrics.jsonl").write_text(
      '{"step": 2, "val/f1_dr": 0.1}\n{"step": 4, "train/loss": 1.0}\n'
      '{"step": 4, "val/f1_dr": 0.3}\n{"step": 2, "val/f1_dr": 0.2}\n')
  assert results.curves([("r", str(tmp_path))]) == {"r": [(2, 0.2), (4, 0.3)]}


def test_results_with_plot_but_no_curves_still_print_the_table_and_plot(tmp_path):
  """LOSO runs keep no top-level metrics.jsonl: --plot draws their test figures beside
  the paper's alone, and neither --results nor the end of --run may lose the table (or
  fail) over it."""
  for seed, uf1 in ((0, 0.30), (1, 0.20), (2, 0.25)):
    _write(tmp_path / f"seed={seed}" / "loso_metrics.json",
           {"status": "done", "num_folds": 3, "pooled": {"uf1": uf1}})
  proc = subprocess.run(
      [sys.executable, "launch/launch.py", "--config=configs/casme2.py", "--sweep=seeds",
       f"--workdir={tmp_path}", "--results", f"--plot={tmp_path / 'c.png'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "| seed=1 | done | 20.00 |" in proc.stdout
  assert "uf1 over 3 seeds: mean 25.00" in proc.stdout
  assert f"Plot: {tmp_path / 'c.png'}" in proc.stdout
  assert (tmp_path / "c.png").stat().st_size > 1000


def test_plot_with_neither_curves_nor_figures_says_so(tmp_path):
  text = launch.report("configs/synthetic.py", "seeds", str(tmp_path), str(tmp_path / "c.png"))
  assert "Plot: none written to" in text and "nor a test figure" in text
  assert not (tmp_path / "c.png").exists()


def test_a_plot_path_that_cannot_be_written_is_refused_before_any_run(tmp_path, capsys,
                                                                       monkeypatch):
  """A folder, a path under a file or a format matplotlib lacks: refused up front (exit 2,
  the path named), not with a traceback after the sweep's runs, losing their table."""
  calls = []
  monkeypatch.setattr(launch.subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 0)
  (tmp_path / "afile").write_text("")
  for bad, why in ((tmp_path / "afile" / "c.png", "is a file, not a folder"),
                   (tmp_path, "is a folder"), (tmp_path / "c.txt", "writes no .txt")):
    assert launch.main(["--config=configs/synthetic.py", "--sweep=seeds",
                        f"--workdir={tmp_path}", "--run", f"--plot={bad}"]) == 2
    err = capsys.readouterr().err
    assert f"--plot={bad}" in err and why in err, err
  assert not calls


def test_the_plot_named_is_the_file_written(tmp_path):
  """matplotlib adds '.png' to a name without a suffix: the report names that file."""
  _write(tmp_path / "seed=0" / "metrics.json", {"status": "done", "f1_dr": 0.3})
  (tmp_path / "seed=0" / "metrics.jsonl").write_text('{"step": 2, "val/f1_dr": 0.1}\n')
  text = launch.report("configs/synthetic.py", "seeds", str(tmp_path), str(tmp_path / "c"))
  assert f"Plot: {tmp_path / 'c.png'} (" in text
  assert (tmp_path / "c.png").exists()


def test_the_seeds_mean_leaves_out_a_partial_run(tmp_path):
  """A LOSO run stopped after some folds pools other subjects than the finished seeds:
  it is named, not averaged in."""
  for seed, uf1 in ((0, 0.30), (1, 0.20)):
    _write(tmp_path / f"seed={seed}" / "loso_metrics.json",
           {"status": "done", "num_folds": 3, "pooled": {"uf1": uf1}})
  _write(tmp_path / "seed=2" / "loso_metrics.json",
         {"status": "partial", "num_folds": 1, "pooled": {"uf1": 0.90}})
  text = launch.report("configs/casme2.py", "seeds", str(tmp_path))
  assert ("uf1 over 2 seeds: mean 25.00, sd 7.07 (the paper reports one figure). "
          "Left out, not finished: seed=2 (partial).") in text


def test_table2_sweep_is_its_two_rows_per_corpus(tmp_path):
  """Table 2 gives the full model and MELDAE* on CAS(ME)^2, SAMM and MMEW: two runs, not
  the eight of WDMD's ablations (LOSO runs each)."""
  names = [name for name, _ in launch.commands("configs/casme2.py", "table2", "/w")]
  assert names == ["full", "enhancer=False"]
  text = launch.report("configs/samm_lv.py", "table2", str(tmp_path))
  assert "| full | not started |  |  | 88.13 (Table 2) |  |" in text
  assert "| enhancer=False | not started |  |  | 76.05 (Table 2) | -12.08 |" in text


def test_a_run_extended_to_more_steps_is_not_done(tmp_path):
  """A run restarted with a larger total_steps rewrites its config.json at the start and
  keeps the old metrics.json (status 'done') until it finishes: the table says stale."""
  results = launch._load("results")  # pylint: disable=protected-access
  run = tmp_path / "seed=0"
  _write(run / "metrics.json", {"status": "done", "f1_dr": 0.3, "total_steps": 100})
  _write(run / "config.json", {"total_steps": 100})
  assert results.read_run(str(run))["status"] == "done"
  _write(run / "config.json", {"total_steps": 200})
  status = results.read_run(str(run))["status"]
  assert status == "stale (figures at 100 steps, config.json 200): running or stopped"
  # A LOSO run: a fold trained on at 200 while the others' metrics are at 100.
  loso = tmp_path / "seed=1"
  _write(loso / "loso_metrics.json", {"status": "done", "num_folds": 2, "pooled": {}})
  for fold, steps in (("a", 200), ("b", 100)):
    _write(loso / f"fold_{fold}" / "config.json", {"total_steps": steps})
    _write(loso / f"fold_{fold}" / "metrics.json", {"status": "done", "total_steps": steps})
  assert results.read_run(str(loso))["status"].startswith("stale (figures at 100 steps")
  text = launch.report("configs/synthetic.py", "seeds", str(tmp_path))
  assert "f1_dr over" not in text  # a stale run is not averaged in


def test_a_run_that_crashed_under_run_says_failed(tmp_path, monkeypatch, capsys):
  def crash(cmd, **kw):  # the run writes its config.json, then dies
    del kw
    workdir = pathlib.Path(next(a for a in cmd if a.startswith("--workdir="))[10:])
    _write(workdir / "config.json", {"total_steps": 4})
    return 3 if workdir.name == "seed=1" else 0
  monkeypatch.setattr(launch.subprocess, "call", crash)
  assert launch.main(["--config=configs/synthetic.py", "--sweep=seeds",
                      f"--workdir={tmp_path}", "--run"]) == 1
  out = capsys.readouterr().out
  assert "| seed=1 | failed (exit 3) |" in out
  assert "| seed=0 | running or stopped (no metrics.json yet) |" in out
  results = launch._load("results")  # pylint: disable=protected-access
  # Started again by hand (its config.json written since): no longer the failed try's.
  exit_file = tmp_path / "seed=1" / results.EXIT_FILE
  mtime = exit_file.stat().st_mtime
  os.utime(tmp_path / "seed=1" / "config.json", (mtime + 5, mtime + 5))
  assert results.read_run(str(tmp_path / "seed=1"))["status"].startswith("running or")


def test_runs_of_another_corpus_than_the_config_say_so(tmp_path):
  """--config names the corpus the paper's figures are taken for; runs whose own
  config.json names another dataset get none beside them, and a warning says so."""
  for name, dataset in (("full", "casme2"), ("enhancer=False", "wdmd")):
    _write(tmp_path / name / "metrics.json", {"status": "done", "f1_dr": 0.3, "uf1": 0.2})
    _write(tmp_path / name / "config.json", {"dataset": {"name": dataset}})
  text = launch.report("configs/wdmd.py", "table2", str(tmp_path))
  assert "WARNING: by their config.json, full (casme2) trained on another dataset" in text
  assert "| full | done (dataset casme2!) | 30.00 |  |  |  |" in text
  assert "| enhancer=False | done | 30.00 | +0.00 | 18.87 (Table 2) | -12.87 |" in text
  # A LOSO run: its folds keep the config.json.
  _write(tmp_path / "full" / "loso_metrics.json", {"status": "done", "pooled": {"uf1": 0.2}})
  (tmp_path / "full" / "config.json").unlink()
  _write(tmp_path / "full" / "fold_s1" / "config.json", {"dataset": {"name": "casme2"}})
  assert "| full | done | 20.00 |  | 37.93 (Table 2) |" in launch.report(
      "configs/casme2.py", "table2", str(tmp_path))


def test_ablations_on_a_config_that_cannot_be_read_here_is_refused(capsys):
  """The ResNet-50 run's learning rates come from the config: one the launcher cannot
  read is an error (exit 2) naming it, not a run at a guessed rate."""
  assert launch.main(["--config=/nowhere/my.py", "--sweep=ablations", "--workdir=/w"]) == 2
  assert "--config=/nowhere/my.py: cannot read its optimizer.groups" in capsys.readouterr().err
  assert launch.main(["--config=/nowhere/my.py", "--sweep=seeds", "--workdir=/w"]) == 0


@pytest.mark.parametrize("corpus,uf1", [("casme2", 37.93), ("samm_lv", 88.13),
                                        ("mmew", 73.04)])
@pytest.mark.parametrize("sweep,key,full", [("loc_loss", "loss.loc_loss", "bal"),
                                            ("lambda", "loss.boundary_lambda", 1.0),
                                            ("tokens", "model.num_queries", 16)])
def test_a_sweeps_full_model_run_shows_table2_on_every_corpus(tmp_path, corpus, uf1, sweep,
                                                               key, full):
  """Off WDMD the baseline run of loc_loss / lambda / tokens is the corpus config's full
  model, Table 2's MELDAE row: its figure stands beside it (the other runs have none)."""
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{corpus}").get_config()
  section, name = key.split(".")
  assert config[section][name] == full  # the run's override changes nothing: full model
  baseline = f"{name}={full}"
  text = launch.report(f"configs/{corpus}.py", sweep, str(tmp_path))
  row = next(l for l in text.splitlines() if l.startswith(f"| {baseline} |"))
  assert row.split(" | ")[4] == f"{uf1:.2f} (Table 2)", row
  others = [l for l in text.splitlines() if l.startswith("| ") and baseline not in l
            and "---" not in l and not l.startswith("| run |")]
  assert others and all(" (Table" not in l for l in others)


def _fake_xmanager(jobs, packages=None):
  """xmanager's xm and xm_local as far as launch_xm uses them, recording the jobs (and
  the packaged containers in `packages`)."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  record = lambda **kw: types.SimpleNamespace(**kw)
  package = lambda specs: (packages.extend(specs) if packages is not None else None,
                           ["executable"])[1]
  experiment = types.SimpleNamespace(package=package, add=jobs.append)
  local = lambda **kw: record(**kw)
  local.Spec = lambda: "local-spec"
  xm = types.SimpleNamespace(python_container=record, ModuleName=lambda m: m, Job=record)
  xm_local = types.SimpleNamespace(
      create_experiment=lambda **kw: contextlib.nullcontext(experiment), Local=local,
      DockerOptions=record)
  return types.SimpleNamespace(xm=xm, xm_local=xm_local)


def test_xm_jobs_carry_the_flags_as_given_the_vit_init_and_the_workdir(tmp_path,
                                                                       monkeypatch):
  """An extra flag in two words (`--config.K V`) reached XManager as two empty flags, and
  MELDAE_VIT_INIT (read by the config inside the container) not at all."""
  jobs = []
  fake = _fake_xmanager(jobs)
  monkeypatch.setitem(sys.modules, "xmanager", fake)
  monkeypatch.setitem(sys.modules, "xmanager.xm", fake.xm)
  monkeypatch.setitem(sys.modules, "xmanager.xm_local", fake.xm_local)
  (tmp_path / "ckpt").mkdir()
  (tmp_path / "ckpt" / "vit.npz").write_text("")
  monkeypatch.setenv("MELDAE_VIT_INIT", str(tmp_path / "ckpt" / "vit.npz"))
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  (tmp_path / "tfds").mkdir()
  work = tmp_path / "abl"
  assert launch.main(["--config=configs/wdmd.py", "--sweep=ablations", f"--workdir={work}",
                      "--xm", "--config.dataset.data_dir", str(tmp_path / "tfds"),
                      "--config.total_steps=10"]) == 0
  assert len(jobs) == 8
  full = jobs[0]
  assert full.args == ["--config=configs/wdmd.py", f"--workdir={work / 'full'}",
                       "--config.dataset.data_dir", str(tmp_path / "tfds"),
                       "--config.total_steps=10"]
  assert full.env_vars == {"MELDAE_VIT_INIT": str(tmp_path / "ckpt" / "vit.npz")}
  volumes = full.executor.docker_options.volumes
  assert volumes == {str(work): str(work), str(tmp_path / "ckpt"): str(tmp_path / "ckpt"),
                     str(tmp_path / "tfds"): str(tmp_path / "tfds")}
  assert work.is_dir()
  assert "--config.model.enhancer=False" in jobs[1].args


def test_xm_image_installs_the_repository_on_python_312(tmp_path, monkeypatch):
  """XManager's default image steps install a requirements.txt this repository lacks, on
  a CUDA 11 base image whose Python JAX >= 0.11 refuses: the image was never buildable."""
  jobs, packages = [], []
  fake = _fake_xmanager(jobs, packages)
  monkeypatch.setitem(sys.modules, "xmanager", fake)
  monkeypatch.setitem(sys.modules, "xmanager.xm", fake.xm)
  monkeypatch.setitem(sys.modules, "xmanager.xm_local", fake.xm_local)
  assert launch.main(["--config=configs/synthetic.py:tiny", "--sweep=seeds",
                      f"--workdir={tmp_path / 'w'}", "--xm"]) == 0
  [container] = packages
  assert container.path == str(launch.ROOT)
  assert container.base_image.startswith("python:3.12")
  steps = container.docker_instructions
  name = launch.ROOT.name
  assert steps[:2] == [f"COPY {name}/ /{name}", f"WORKDIR /{name}"]
  [install] = [s for s in steps if s.startswith("RUN ") and "pip install" in s]
  assert "-c constraints.txt" in install and install.endswith(" -e .")
  assert (launch.ROOT / "constraints.txt").is_file() and (launch.ROOT / "setup.py").is_file()
  assert jobs and all(j.args[0] == "--config=configs/synthetic.py:tiny" for j in jobs)
