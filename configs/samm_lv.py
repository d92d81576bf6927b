"""MELDAE on SAMM long videos (200 fps), leave-one-subject-out.

  python -m meldae_jax.data.build samm_lv --manual_dir=... --data_dir=...   # once
  python -m meldae_jax.loso --config=configs/samm_lv.py --workdir=/tmp/samm_lv

See `common.loso_corpus` for the protocol and decoding limits.
"""
import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg: str | None = None):
  return common.loso_corpus("samm_lv", arg)
