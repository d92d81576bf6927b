"""What the commands share: one-line errors with the exit statuses `meldae_jax.main`
documents, and quiet logs where a command prints its own progress lines."""
import contextlib
import sys

from absl import flags
from absl import logging

from meldae_jax import checkpointing
from meldae_jax import config_check
from meldae_jax import train
from meldae_jax.data import build as build_lib
from meldae_jax.data import corpus_utils
from meldae_jax.data import sources

# Expected failures -> exit status; first match wins (CheckpointMismatchError is a
# ValueError: a table that adds ValueError lists it after this one).
EXIT_CODES = (
    (config_check.ConfigError, 2),  # bad settings (each named as its --config. flag)
    (train.CorpusNotBuiltError, 2),
    (sources.RecordError, 2),  # a record that breaks the schema (the video named)
    (corpus_utils.CorpusError, 2),  # a corpus built on the fly from bad input
    (build_lib.BuildError, 2),  # an unknown builder config, a data_dir that is a file
    (train.NonFiniteLossError, 3),
    (checkpointing.CheckpointMismatchError, 4),
    (checkpointing.CheckpointReadError, 4),  # a damaged checkpoint (its folder named)
    (FileNotFoundError, 2),  # --mode=evaluate on a workdir without checkpoints
    (NotADirectoryError, 2),  # a --workdir that is a file
)


@contextlib.contextmanager
def one_line_errors(codes=EXIT_CODES):
  """An error of `codes` becomes `error: ...` on stderr and its exit status, no traceback."""
  try:
    yield
  except tuple(cls for cls, _ in codes) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(next(code for cls, code in codes if isinstance(e, cls)))


def quiet_logs() -> None:
  """WARNING and up from absl (orbax's INFO lines), unless --verbosity was given."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
