"""MELDAE on CAS(ME)^2 (`CASME_sq` long videos, 30 fps), leave-one-subject-out.

  python -m meldae_jax.data.build casme2 --manual_dir=... --data_dir=...   # once
  python -m meldae_jax.loso --config=configs/casme2.py --workdir=/tmp/casme2

Micro and macro expressions (K=2, UF1); per fold the threshold and the best checkpoint are
chosen on held-out training subjects, never the test subject; TP/FP/FN are pooled over
folds. Decoding limits: micro < 0.5 s, macro < 4 s, converted at each video's fps.
"""
import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg: str | None = None):
  c = common.paper_model(common.base_config())
  c.dataset.name = "casme2"
  c.dataset.protocol = "loso"
  c.dataset.train_split = ""        # all splits (one per subject); folds cut by subject
  c.dataset.val_split = ""
  c.dataset.test_split = ""
  c.dataset.loso_val_subjects = 2
  c.dataset.classes = ("micro", "macro")
  c.dataset.window = 16
  c.dataset.train_stride = 4
  c.dataset.me_oversample = 4
  c.total_steps = 5_000
  c.eval_every = 1_000
  c.checkpoint.every_steps = 1_000
  c.checkpoint.best_metric = "f1"   # no speaking labels: F1 (UF1 is reported too)
  c.eval.max_seconds = {"micro": 0.5, "macro": 4.0}
  c.eval.min_seconds = 0.1
  if arg == "tiny":
    common.local_variant(c)
  return common.finalize(c)
