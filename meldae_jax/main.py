r"""Entry point: train and evaluate MELDAE.

  python -m meldae_jax.main --config=configs/synthetic.py --workdir=/tmp/syn
  python -m meldae_jax.main --config=configs/synthetic.py:easy --workdir=/tmp/easy \
      --config.total_steps=2000 --config.optimizer.warmup_steps=200
  python -m meldae_jax.main --config=configs/synthetic.py --workdir=/tmp/syn --mode=evaluate

`--mode=train` trains (resuming from the workdir's latest checkpoint) and evaluates the best
checkpoint on the test split; `--mode=evaluate` only does the latter, again, with the
config's decoding settings (`--config.eval.*`) and the threshold the best checkpoint's
validation chose when it trained (chosen again on validation where the settings that decide
it changed since): metrics.json and test_*.json are written again. Configs with
`dataset.protocol='loso'` (casme2, samm_lv) run the leave-one-subject-out driver
(`meldae_jax.loso`, also runnable directly, `--mode` too): `--mode=evaluate` does the same
for each fold finished at the config's total_steps (`WORKDIR/fold_<S>/`, on subject S's
videos; a fold not finished is skipped with a line saying so) and pools them into
`WORKDIR/loso_metrics.json` as training does (replaced; status 'partial' and
`folds_to_run` when it covers only some folds).

Exit status: 0 done (or preempted with a checkpoint saved); 2 bad config settings (all
of them named, checked before anything is written; a mesh or batch size this machine's
devices cannot split, also before anything is written), corpus not built (or a generated
one failing to build), a record that breaks the schema, a --workdir that is a file, no
checkpoint (LOSO: no finished fold) to evaluate, or
a corpus with too few subjects for its LOSO folds;
3 non-finite loss; 4 the workdir's checkpoint was saved with other model/optimizer settings
(the message lists them), or cannot be read (a damaged copy: the message names its
folder). Errors are one line on stderr.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from meldae_jax import cli
from meldae_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and predictions go here.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "evaluate"], "train: train (or resume), then evaluate the "
    "best checkpoint on the test split; evaluate: only evaluate it, again (e.g. with other "
    "--config.eval.* settings; a LOSO config: every finished fold, pooled again).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  logging.info("Config:\n%s", config)
  from meldae_jax import loso  # pylint: disable=g-import-not-at-top
  with cli.one_line_errors(cli.EXIT_CODES + ((loso.FoldError, 2),)):
    if config.dataset.get("protocol") == "loso":
      if _MODE.value == "train":
        result = loso.run(config, _WORKDIR.value)
      else:
        result = loso.evaluate(config, _WORKDIR.value)
    elif _MODE.value == "train":
      result = train.train_and_evaluate(config, _WORKDIR.value)
    else:
      result = train.evaluate_only(config, _WORKDIR.value)
  if result.get("status") == "preempted":
    logging.info("Preempted at step %s; checkpoint saved.", result.get("step"))


if __name__ == "__main__":
  app.run(main)
