"""MELDAE on MMEW (micro + macro expressions), fixed subject-disjoint splits.

  python -m meldae_jax.data.build mmew --manual_dir=... --data_dir=...   # once
  python -m meldae_jax.main --config=configs/mmew.py --workdir=/tmp/mmew
"""
import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg: str | None = None):
  c = common.paper_model(common.base_config())
  c.dataset.name = "mmew"
  c.dataset.classes = ("micro", "macro")
  c.dataset.window = 16
  c.dataset.train_stride = 4
  c.dataset.me_oversample = 2
  c.total_steps = 5_000
  c.eval_every = 500
  c.checkpoint.every_steps = 500
  c.checkpoint.best_metric = "f1"   # no speaking labels
  c.eval.max_seconds = {"micro": 0.5, "macro": 4.0}
  if arg == "tiny":
    common.local_variant(c)
  return common.finalize(c)
