"""launch/: the sweeps' command lines parse into the configs they mean."""
import json
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


def test_resnet50_ablation_trains_from_scratch_at_the_rest_lr(monkeypatch):
  monkeypatch.setenv("MELDAE_VIT_INIT", "/ckpt/ViT-B_16.npz")  # the paper's ViT init
  (name, cmd), = [c for c in launch.commands("configs/wdmd.py", "ablations", "/w")
                  if "resnet50" in c[0]]
  assert name == "backbone=resnet50"
  args = [a for a in cmd[cmd.index("meldae_jax.main") + 1:] if not a.startswith("--workdir")]
  proc = subprocess.run([sys.executable, "-c", _PARSE, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, check=True)
  parsed = json.loads(proc.stdout.strip().splitlines()[-1])
  assert parsed == {"groups": [[".*", 5e-4]], "model_init": "", "backbone": "resnet50"}


def test_a_vit_checkpoint_into_the_resnet_backbone_is_an_error():
  cfg = th.tiny_config()
  cfg.model.backbone, cfg.model_init = "resnet50", "/ckpt/ViT-B_16.npz"
  with pytest.raises(ValueError, match="ViT checkpoint.*'resnet50'.*no pretrained loader"):
    train.load_pretrained(cfg, trainer=None, state=None)


def test_relative_paths_are_from_where_the_launcher_runs(tmp_path, monkeypatch):
  (tmp_path / "my.py").write_text("")
  monkeypatch.chdir(tmp_path)
  (_, cmd), *_ = launch.commands("my.py:easy", "seeds", "runs")
  assert f"--config={tmp_path / 'my.py'}:easy" in cmd
  assert any(a.startswith(f"--workdir={tmp_path / 'runs'}/") for a in cmd)
  (_, cmd), *_ = launch.commands("configs/wdmd.py", "seeds", "/w")  # not here: as given
  assert "--config=configs/wdmd.py" in cmd
