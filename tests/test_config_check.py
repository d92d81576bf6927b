"""Bad settings are refused before a run writes or trains anything, all named at once."""
import importlib
import importlib.util
import pathlib
import subprocess
import sys

import pytest

from meldae_jax import config_check
from meldae_jax import loso
from meldae_jax import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _sweeps():
  """launch/sweeps.py by its path, as launch.py loads it (an `import launch` here would
  leave the folder in sys.modules where test_launch.py imports launch/launch.py)."""
  spec = importlib.util.spec_from_file_location("meldae_sweeps", ROOT / "launch" / "sweeps.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


sweeps = _sweeps()

CONFIGS = [("synthetic", a) for a in ("default", "easy", "tiny")] + [
    (n, a) for n in ("wdmd", "casme2", "samm_lv", "mmew") for a in (None, "tiny")]


def _config(name="synthetic", arg="tiny"):
  c = importlib.import_module(f"configs.{name}").get_config(arg)
  c.unlock()
  return c


def _set(c, path, value):
  *parents, last = path.split(".")
  for p in parents:
    c = c[p]
  c[last] = value


@pytest.mark.parametrize("name,arg", CONFIGS)
def test_every_shipped_config_passes(name, arg):
  assert config_check.problems(_config(name, arg)) == []


@pytest.mark.parametrize("sweep", sorted(sweeps.SWEEPS))
def test_every_sweep_run_passes(sweep):
  for overrides in sweeps.get_sweep(sweep):
    c = _config("wdmd", None)
    for k, v in overrides.items():
      _set(c, k, v)
    assert config_check.problems(c) == [], overrides


@pytest.mark.parametrize("path,bad,good", [
    ("total_steps", -1, 1),
    ("total_steps", True, 3),                 # a bool is not a step count
    ("log_every", -1, 0),
    ("dataset.frame_step", 0, 2),
    ("dataset.protocol", "LOSO", "loso"),
    ("dataset.classes", ("micro", "mcro"), ("micro", "macro")),
    ("dataset.classes", ("micro", "micro"), ("micro",)),
    ("dataset.classes", (), ("macro",)),
    ("dataset.cache_videos", 0, None),
    ("input.transform", "diff12", "diff124"),
    ("model.dropout", 1.0, 0.5),
    ("model.dtype", "bf16", "bfloat16"),
    ("model.resnet_width", -64, 0),
    ("loss.loc_loss", "BAL", "bal"),
    ("loss.state_weight", -0.2, 0.0),
    ("optimizer.groups", (), ((".*", 0.0),)),
    ("optimizer.groups", (("(", 1e-3),), ((".*", 1e-3),)),
    ("optimizer.groups", ((".*", -1e-3),), ((".*", 1e-3),)),
    ("optimizer.warmup_steps", -3, 0),
    ("optimizer.weight_decay_regex", "", ".*"),
    ("optimizer.weight_decay_regex", "[", ".*/kernel"),
    ("optimizer.schedule", "cosine", "constant"),
    ("optimizer.b2", 1.0, 0.98),
    ("optimizer.eps", 0.0, 1e-6),
    ("optimizer.clip_norm", -1.0, None),
    ("optimizer.grad_accum_steps", 0, 2),
    ("checkpoint.keep", 0, 1),
    ("logical_axis_rules", (("batch", "data"), ("embed", "model")),
     (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", None))),
    ("logical_axis_rules", (("batch", ("data", "dat")),), (("batch", ["data"]),)),
    ("checkpoint.best_metric", "f1dr", "uf1"),
    ("checkpoint.best_metric", "precision", "f1"),
    ("eval.batch_size", 0, 1),
    ("eval.thresholds", (), (0.5,)),
    ("eval.thresholds", (0.0, 0.5), (0.05, 0.5)),
    ("eval.iou", 0.0, 1.0),
    ("eval.threshold", float("nan"), 0.5),
    ("eval.max_seconds", {"micro": -1.0}, {"micro": 0.5}),
    ("eval.max_seconds", {"mirco": 0.5}, {"micro": 0.5}),  # a misspelt class: not skipped
    ("eval.merge_seconds", -0.1, 0.0),
])
def test_one_bad_setting_is_named(path, bad, good):
  c = _config()
  _set(c, path, good)
  assert config_check.problems(c) == []
  _set(c, path, bad)
  found = config_check.problems(c)
  assert len(found) == 1 and found[0].startswith(f"--config.{path}="), found


def test_model_variant_remat_policy_and_mesh():
  from meldae_jax.models import vit  # pylint: disable=g-import-not-at-top
  c = _config()
  for policy in vit.REMAT_POLICIES:  # every policy the ViT has passes
    c.model.remat_policy = policy
    assert config_check.problems(c) == []
  for path, bad in (("model.remat_policy", "dot"), ("model.variant", "B16"),
                    ("model.variant", "XL/16"), ("mesh.data", 0), ("mesh.fsdp", -2)):
    c = _config()
    _set(c, path, bad)
    found = config_check.problems(c)
    assert len(found) == 1 and found[0].startswith(f"--config.{path}="), found
  c = _config()
  c.model.backbone, c.model.variant = "resnet50", "unused"
  # resnet_width 0: the ResNet's D is the variant's width, so the variant must be one
  found = config_check.problems(c)
  assert len(found) == 1 and found[0].startswith("--config.model.variant='unused'"), found
  c.model.resnet_width = 256  # an explicit width: the ResNet reads no variant
  assert config_check.problems(c) == []
  c = _config()
  c.mesh.data, c.mesh.fsdp = -1, -1
  assert any("at most one may be -1" in p for p in config_check.problems(c))


def test_frames_smaller_than_a_patch_are_named():
  """They reached the model: a ValueError traceback at init, after the corpus was read."""
  c = _config()
  patch = int(str(c.model.variant).split("/")[1])
  c.model.image_size = patch
  assert config_check.problems(c) == []
  c.model.image_size = patch - 1
  assert config_check.problems(c) == [
      f"--config.model.image_size={patch - 1}: must be at least the patch of ViT "
      f"{c.model.variant!r} ({patch} px): no patch, no grid"]
  c.model.backbone = "resnet50"
  assert config_check.problems(c) == []


def test_augment_ranges_are_checked_as_the_pipeline_checks_them():
  c = _config()
  c.dataset.augment_ranges.min_crop = 0.0
  assert config_check.problems(c) == [
      "--config.dataset.augment_ranges.min_crop must be in (0, 1], got 0.0"]
  c = _config()
  c.dataset.augment_ranges = {"flip": 0.5}  # a field AugmentConfig lacks
  (found,) = config_check.problems(c)
  assert "--config.dataset.augment_ranges has unknown field(s) flip" in found


def test_all_loss_weights_zero():
  c = _config()
  c.loss.me_weight = c.loss.state_weight = 0.0
  assert config_check.problems(c) == []  # the localisation loss alone trains
  c.loss.loc_weight = 0.0
  assert any("all 0: no loss" in p for p in config_check.problems(c))


def test_eval_stride_longer_than_the_window():
  c = _config()
  c.eval.stride = c.dataset.window + 1
  assert any("eval.stride" in p and "dataset.window" in p for p in config_check.problems(c))


def test_settings_a_config_lacks_are_not_checked():
  c = _config()
  del c["eval"]
  del c.dataset["frame_step"]
  assert config_check.problems(c) == []


def test_library_entry_points_check_first(tmp_path):
  c = _config()
  c.total_steps = 0
  for run in (train.train_and_evaluate, train.evaluate_only, loso.run, loso.evaluate):
    with pytest.raises(config_check.ConfigError, match="total_steps=0"):
      run(c, str(tmp_path / "w"))  # before the corpus is opened or the workdir made
  assert not (tmp_path / "w").exists()


def test_command_line_names_every_bad_setting_and_writes_nothing(tmp_path):
  workdir = tmp_path / "w"
  proc = subprocess.run(
      [sys.executable, "-m", "meldae_jax.main",
       f"--config={ROOT / 'configs' / 'synthetic.py'}:tiny", f"--workdir={workdir}",
       "--config.total_steps=-1", "--config.checkpoint.best_metric=f1dr",
       "--config.eval.batch_size=0", f"--config.dataset.data_dir={tmp_path / 'tfds'}"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: 3 bad config setting(s):")
  for flag in ("--config.total_steps=-1", "--config.checkpoint.best_metric='f1dr'",
               "--config.eval.batch_size=0"):
    assert flag in last
  assert "Traceback" not in proc.stderr
  assert not workdir.exists() and not (tmp_path / "tfds").exists()
