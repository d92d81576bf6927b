"""The command line: config overrides, and a licensed corpus that is not built."""
import json
import pathlib
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_overrides_reach_the_config():
  argv = ["prog", f"--config={ROOT / 'configs' / 'synthetic.py'}:easy",
          "--config.optimizer.warmup_steps=7", "--config.model.variant=Ti/16",
          "--config.loss.loc_loss=bce", "--config.dataset.window=8"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv,
                                  sys_argv=argv)
  fv(argv)
  c = fv.config
  assert c.optimizer.warmup_steps == 7
  assert c.model.variant == "Ti/16"
  assert c.loss.loc_loss == "bce"
  assert c.dataset.builder_config == "easy"
  from meldae_jax import train  # pylint: disable=g-import-not-at-top
  assert train.model_config(c).num_frames == 8  # T follows the data window


def test_all_configs_load():
  for name, arg in [("synthetic", None), ("synthetic", "easy"), ("synthetic", "tiny"),
                    ("wdmd", None), ("casme2", None), ("samm_lv", None), ("mmew", None),
                    ("wdmd", "tiny")]:
    argv = ["prog", f"--config={ROOT / 'configs' / f'{name}.py'}" + (f":{arg}" if arg else "")]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv,
                                    sys_argv=argv)
    fv(argv)
    c = fv.config
    assert c.model.num_classes == len(c.dataset.classes)
    assert c.model.num_frames == c.dataset.window
    if name in ("wdmd", "casme2", "samm_lv", "mmew") and arg is None:
      assert (c.model.variant, c.model.image_size, c.batch_size) == ("B/16", 224, 16)
      assert tuple(map(tuple, c.optimizer.groups)) == (("backbone/.*", 1e-5), (".*", 5e-4))
      assert (c.loss.me_weight, c.loss.state_weight, c.loss.loc_weight) == (0.5, 0.2, 1.0)
      assert (c.model.num_queries, c.model.num_regions) == (16, 10)


def test_licensed_corpus_not_built_exits_with_instructions(tmp_path):
  workdir = tmp_path / "w"
  proc = subprocess.run(
      [sys.executable, "-m", "meldae_jax.main", f"--config={ROOT / 'configs' / 'wdmd.py'}:tiny",
       f"--workdir={workdir}", f"--config.dataset.data_dir={tmp_path / 'tfds'}",
       "--config.seed=17", "--config.optimizer.clip_norm=0.25"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  err = proc.stderr
  assert "not built" in err
  assert f"python -m meldae_jax.data.build wdmd --data_dir={tmp_path / 'tfds'}" in err
  assert "--manual_dir=" in err and "annotations" in err  # the manual_dir layout
  assert not workdir.exists()  # no workdir holding only a config.json


def test_overrides_reach_the_config_the_run_records(tmp_path):
  """A run stopped by a NaN at step 1 (exit 3) has recorded its config.json."""
  workdir = tmp_path / "w"
  proc = subprocess.run(
      [sys.executable, "-m", "meldae_jax.main",
       f"--config={ROOT / 'configs' / 'synthetic.py'}:tiny", f"--workdir={workdir}",
       f"--config.dataset.data_dir={tmp_path / 'tfds'}", "--config.debug.nan_at_step=1",
       "--config.seed=17", "--config.optimizer.clip_norm=0.25"],
      cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 3, proc.stderr[-2000:]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["seed"] == 17 and saved["optimizer"]["clip_norm"] == 0.25
  assert saved["dataset"]["data_dir"] == str(tmp_path / "tfds")


def test_evaluate_mode_with_a_loso_config_evaluates_the_folds_not_trains(tmp_path):
  """It was refused; now `loso.evaluate`, from main and from loso's own command line
  (whose --folds is for training only). A missing workdir: one line, nothing made."""
  casme2 = f"--config={ROOT / 'configs' / 'casme2.py'}:tiny"
  for module, extra, words in (
      ("meldae_jax.main", [], f"error: No workdir {tmp_path / 'w'} to evaluate."),
      ("meldae_jax.loso", [], f"error: No workdir {tmp_path / 'w'} to evaluate."),
      ("meldae_jax.loso", ["--folds=15"], "error: --folds is for --mode=train")):
    proc = subprocess.run(
        [sys.executable, "-m", module, casme2, f"--workdir={tmp_path / 'w'}",
         "--mode=evaluate"] + extra, cwd=tmp_path, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 2, (module, proc.stderr[-2000:])
    assert words in proc.stderr and "Traceback" not in proc.stderr, module
    assert not (tmp_path / "w").exists()


def _build_casme2_dummy(data_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from meldae_jax.data import corpus_utils as cu  # pylint: disable=g-import-not-at-top
  cu.builder_class("casme2")(data_dir=str(data_dir), file_format="array_record")\
      .download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=str(ROOT / "datasets" / "casme2" / "dummy_data")))


def test_evaluating_a_loso_workdir_without_a_finished_fold_says_why_and_writes_nothing(
    tmp_path):
  data_dir = tmp_path / "tfds"
  _build_casme2_dummy(data_dir)
  workdir = tmp_path / "w"
  (workdir / "fold_15").mkdir(parents=True)
  (workdir / "fold_16").mkdir()
  (workdir / "fold_16" / "metrics.json").write_text(json.dumps({"status": "done",
                                                                 "total_steps": 7}))
  proc = subprocess.run(
      [sys.executable, "-m", "meldae_jax.main", f"--config={ROOT / 'configs' / 'casme2.py'}:tiny",
       f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}", "--mode=evaluate",
       "--config.dataset.loso_val_subjects=1", "--config.total_steps=2"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "[loso] fold 15: not finished (no metrics.json): not evaluated" in proc.stdout
  assert ("[loso] fold 16: finished at total_steps 7, not this config's 2 (pass "
          "--config.total_steps=7 to evaluate it): not evaluated") in proc.stdout
  assert "[loso] fold 19: not finished (no metrics.json): not evaluated" in proc.stdout
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert errors == [f"error: No fold in {workdir} finished at total_steps 2 to evaluate "
                    "(train them with --mode=train, or pass the --config.total_steps they "
                    "were trained with)."]
  assert sorted(p.name for p in workdir.iterdir()) == ["fold_15", "fold_16"]
  assert not list((workdir / "fold_15").iterdir())


def test_too_few_subjects_for_the_loso_folds_is_a_one_line_error(tmp_path):
  """casme2's dummy data has 3 subjects; its config holds 2 out to validate on."""
  data_dir = tmp_path / "tfds"
  _build_casme2_dummy(data_dir)
  proc = subprocess.run(
      [sys.executable, "-m", "meldae_jax.main", f"--config={ROOT / 'configs' / 'casme2.py'}:tiny",
       f"--workdir={tmp_path / 'w'}", f"--config.dataset.data_dir={data_dir}"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert ("error: LOSO needs at least 4 subjects (a test subject, "
          "dataset.loso_val_subjects=2 to validate on") in proc.stderr


def test_an_unknown_corpus_config_arg_is_an_error():
  # `configs/wdmd.py:Tiny` (or any misspelling) used to give the full B/16 paper config.
  import pytest  # pylint: disable=g-import-not-at-top
  for name in ("wdmd", "mmew", "casme2", "samm_lv"):
    argv = ["prog", f"--config={ROOT / 'configs' / f'{name}.py'}:smoke"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv,
                                    sys_argv=argv)
    with pytest.raises(Exception, match=f"{name} config arg must be empty or 'tiny'"):
      fv(argv)
