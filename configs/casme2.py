"""MELDAE on CAS(ME)^2 (`CASME_sq` long videos, 30 fps), leave-one-subject-out.

  python -m meldae_jax.data.build casme2 --manual_dir=... --data_dir=...   # once
  python -m meldae_jax.loso --config=configs/casme2.py --workdir=/tmp/casme2

See `common.loso_corpus` for the protocol and decoding limits.
"""
import pathlib
import sys

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # repo root
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg: str | None = None):
  return common.loso_corpus("casme2", arg)
