r"""Leave-one-subject-out protocol (CAS(ME)^2, SAMM-LV): train/evaluate per fold, pool counts.

  python -m meldae_jax.loso --config=configs/casme2.py --workdir=/tmp/casme2 [--folds=15,16]
  python -m meldae_jax.loso --config=configs/casme2.py --workdir=/tmp/casme2 \
      --mode=evaluate --config.eval.merge_seconds=0.5

For each subject S: the test fold is S's videos; `dataset.loso_val_subjects` other subjects
(the ones following S in sorted order) are held out of training to choose the decoding
threshold and the best checkpoint — the test subject is never used for either; the rest
train. Each fold runs `train.train_and_evaluate` in `workdir/fold_<S>/` (a fold
finished at the same total_steps is skipped, so the driver resumes; with a larger
total_steps the folds train on). TP/FP/FN are pooled over folds with
`metrics.pool_results`, and Acc_ME / Acc_State over their clips (not averaged over folds):
`workdir/loso_metrics.json` holds per-fold and pooled metrics. Each fold's config.json
names its subjects (`dataset.loso_fold`), so that `attention_maps --split=test` on
`fold_<S>/` reads S's videos.

`--mode=evaluate` (`evaluate`; also `meldae_jax.main --mode=evaluate`) evaluates every
fold finished at the config's total_steps again as a fixed split's `--mode=evaluate`
does (its best checkpoint and the threshold its validation chose, chosen again on its
validation subjects where the config's `eval.*` settings that decide it changed; the
fold's metrics.json and test_*.json are replaced) and pools them into loso_metrics.json
(replaced). Folds not finished are skipped, each with a line; the pooled file then says
which ran (`folds`, `status: partial`, `folds_to_run`). It evaluates every finished
fold or stops with an error (`--folds` is refused), so that the pooled figures are of
one setting; a run stopped part way leaves loso_metrics.json as it was and some folds'
metrics.json replaced: run it again.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

from absl import app
from absl import flags
import ml_collections
import numpy as np
from ml_collections import config_flags

from meldae_jax import checkpointing
from meldae_jax import cli
from meldae_jax import config_check
from meldae_jax import metrics as metrics_lib
from meldae_jax import predict
from meldae_jax import train
from meldae_jax.data import corpus_utils
from meldae_jax.data import sources

# attention_maps' --split names -> the config's split keys.
SPLIT_KEYS = {"test": "test_split", "validation": "val_split", "train": "train_split"}


class FoldError(ValueError):
  """The corpus cannot be cut into the folds asked for (exit status 2, one line)."""


class ConcatSource:
  """Random access over several record sources (e.g. the per-subject splits)."""

  def __init__(self, parts: Sequence[Any]):
    self.parts = list(parts)
    self._offsets = np.cumsum([0] + [len(p) for p in self.parts])

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def __getitem__(self, i: int):
    if not 0 <= i < len(self):
      raise IndexError(i)
    part = int(np.searchsorted(self._offsets, i, side="right") - 1)
    return self.parts[part][int(i - self._offsets[part])]


def open_all(cfg) -> Any:
  """All videos of the corpus (the listed split, or every split when it is empty)."""
  builder = train.ensure_built(cfg.dataset)
  split = cfg.dataset.get("train_split")
  names = [split] if split else sorted(builder.info.splits.keys())
  return ConcatSource([builder.as_data_source(s) for s in names])


def folds(subjects: Sequence[str], num_val: int) -> list[tuple[str, list[str], list[str]]]:
  """(test subject, validation subjects, training subjects) per fold."""
  subjects = sorted(set(subjects))
  if len(subjects) < 2 + num_val:
    raise FoldError(f"LOSO needs at least {2 + num_val} subjects (a test subject, "
                    f"dataset.loso_val_subjects={num_val} to validate on, one to train "
                    f"on), got {len(subjects)}: {subjects}")
  out = []
  for i, test in enumerate(subjects):
    others = subjects[i + 1:] + subjects[:i]
    val = others[:num_val]
    out.append((test, val, [s for s in others if s not in val]))
  return out


def _plan(cfg, source=None):
  """(the corpus's VideoIndex, its subjects, `folds` of them): read once per command."""
  everything = sources.VideoIndex(source if source is not None else open_all(cfg))
  subjects = sorted({v.subject for v in everything.infos})
  return everything, subjects, folds(subjects, int(cfg.dataset.get("loso_val_subjects", 1)))


def run(cfg, workdir: str, *, source=None, only: Sequence[str] | None = None) -> dict:
  """Runs (or resumes) every fold and writes `workdir/loso_metrics.json`."""
  config_check.check(cfg)  # before the corpus is read or a fold trains
  everything, subjects, plan = _plan(cfg, source)
  unknown = sorted(set(only or ()) - set(subjects))
  if unknown:
    raise FoldError(f"--folds {unknown}: no such test subject(s); the corpus's subjects "
                     f"are {subjects}")
  train.make_workdir(workdir)
  per_fold = {}
  for test, val, trn in plan:
    fold_dir = os.path.join(workdir, f"fold_{test}")
    # A fold finished at this config's total_steps pools whatever --folds runs now; one
    # finished at another total_steps is not done: it trains on (or is refused) as
    # `train.train_and_evaluate` decides, like a fixed-split run's workdir.
    finished = train.finished_metrics(fold_dir, int(cfg.total_steps))
    if finished is not None:
      per_fold[test] = finished
      train.say(f"[loso] fold {test}: done already")
      _say_frame_step_change(test, fold_dir, cfg)
      continue
    if only and test not in only:
      continue
    train.say(f"[loso] fold {test}: train on {len(trn)} subjects, validate on {val}")
    splits = train.Splits(
        train=everything.subset(subjects=trn),  # no record read again
        val=everything.subset(subjects=val) if val else None,
        test=everything.subset(subjects=[test]))
    result = train.train_and_evaluate(fold_config(cfg, test, val, trn), fold_dir,
                                      splits=splits)
    if result.get("status") != "done":
      train.say(f"[loso] stopped in fold {test}; rerun to resume.")
      return {"status": result.get("status"), "fold": test}
    per_fold[test] = result
  return _pool(cfg, workdir, plan, per_fold, "not run yet")


def evaluate(cfg, workdir: str, *, source=None) -> dict:
  """`--mode=evaluate` of a LOSO run: each finished fold's best checkpoint on its test
  subject, as `train.evaluate_only` (a fixed split's `--mode=evaluate`) does it — the
  config's decoding settings (`eval.*`), the threshold the fold's validation chose when it
  trained (chosen again on the fold's validation subjects where those settings changed),
  the fold's metrics.json and test_*.json written again —
  then pooled as `run` pools, into `workdir/loso_metrics.json` (replaced). A fold not
  finished at this config's total_steps is skipped, with a line saying so; the pooled
  file then has status 'partial' and names them (`folds_to_run`)."""
  config_check.check(cfg)
  if not os.path.isdir(workdir):  # before the corpus is read
    raise FileNotFoundError(f"No workdir {workdir} to evaluate.")
  everything, _, plan = _plan(cfg, source)
  total = int(cfg.total_steps)
  todo = []
  for test, val, trn in plan:
    fold_dir = os.path.join(workdir, f"fold_{test}")
    if train.finished_metrics(fold_dir, total) is None:
      train.say(f"[loso] fold {test}: {_not_finished(fold_dir, total)}: not evaluated")
      continue
    # The fold's subjects as it trained (its config.json), else this config's plan.
    saved = ((train._saved_config(fold_dir) or {}).get("dataset")  # pylint: disable=protected-access
             or {}).get("loso_fold") or {}
    todo.append((test, list(saved.get("validation", val)), list(saved.get("train", trn)),
                 fold_dir))
  if not todo:
    raise FileNotFoundError(
        f"No fold in {workdir} finished at total_steps {total} to evaluate (train them "
        "with --mode=train, or pass the --config.total_steps they were trained with).")
  per_fold = {}
  for test, val, trn, fold_dir in todo:
    train.say(f"[loso] fold {test}: evaluating its best checkpoint on subject {test}")
    splits = train.Splits(
        train=None,  # not read: only a workdir without a best checkpoint validates
        val=everything.subset(subjects=val) if val else None,
        test=everything.subset(subjects=[test]))
    per_fold[test] = train.evaluate_only(fold_config(cfg, test, val, trn), fold_dir,
                                         splits=splits)
  return _pool(cfg, workdir, plan, per_fold, "not finished")


def _not_finished(fold_dir: str, total: int) -> str:
  """Why a fold's metrics.json is not of a run finished at `total` steps."""
  try:
    with open(os.path.join(fold_dir, "metrics.json")) as f:
      m = json.load(f)
  except (OSError, ValueError):
    return "not finished (no metrics.json)"
  if m.get("status") != "done":
    return f"not finished (metrics.json status {m.get('status')!r})"
  return (f"finished at total_steps {m.get('total_steps')}, not this config's {total} "
          f"(pass --config.total_steps={m.get('total_steps')} to evaluate it)")


def _pool(cfg, workdir: str, plan, per_fold: dict, missing_words: str) -> dict:
  """Pools the folds' test counts (and clip accuracies) -> `workdir/loso_metrics.json`."""
  pooled = metrics_lib.pool_results(list(per_fold.values()))
  pooled.update(metrics_lib.pool_clip_accuracies(list(per_fold.values())))
  for key in metrics_lib.CLIP_ACCURACIES:
    old = sorted(t for t, r in per_fold.items() if key in r and f"{key}_clips" not in r)
    if old:
      train.say(f"[loso] {key} not pooled: folds {old} keep no clip counts (written "
                f"before they were kept); delete their metrics.json and rerun to pool it.")
  missing = [t for t, _, _ in plan if t not in per_fold]
  out = {"pooled": pooled, "folds": {k: _fold_summary(v) for k, v in per_fold.items()},
         "num_folds": len(per_fold), "status": "done" if not missing else "partial",
         "folds_to_run": missing, "eval": cfg.eval.to_dict()}
  if missing:
    train.say(f"[loso] {len(missing)} fold(s) {missing_words} ({missing}): the pooled "
              "figures are of the finished folds only")
  checkpointing.write_json(os.path.join(workdir, "loso_metrics.json"), out)
  train.say(f"[loso] pooled over {len(per_fold)} folds: f1={_f(pooled['f1'])} "
            f"uf1={_f(pooled['uf1'])} f1_dr={_f(pooled['f1_dr'])} "
            f"(tp {pooled['tp']} fp {pooled['fp']} fn {pooled['fn']}) "
            f"megc2020_f1={_f(pooled['megc2020']['f1'])}")
  return out


def fold_config(cfg, test: str, val: Sequence[str], trn: Sequence[str]):
  """The config a fold trains with and saves: the driver's plus the fold's subjects
  (`dataset.loso_fold`). The dataset's split names are the corpus's, not the fold's, so
  a tool given only the fold's workdir (attention_maps) reads its splits from these."""
  c = cfg.copy_and_resolve_references()
  with c.unlocked():
    c.dataset.loso_fold = ml_collections.ConfigDict(
        {"test": [test], "validation": list(val), "train": list(trn)})
  return c


def fold_subjects(cfg, workdir: str, split: str) -> list[str] | None:
  """The subjects of `split` ('test', 'validation', 'train') of the fold whose run is in
  `workdir`: its config's `dataset.loso_fold`; for a fold saved before that was kept, the
  test subject from the folder's name (`fold_<S>`) where the config names no such split.
  None: not a fold's run (its config's splits are the corpus's)."""
  fold = cfg.dataset.get("loso_fold")
  if fold is not None:
    return list(fold[split])
  name = os.path.basename(os.path.abspath(workdir))
  if (cfg.dataset.get("protocol") != "loso" or cfg.dataset.get(SPLIT_KEYS[split])
      or not name.startswith("fold_")):
    return None
  if split != "test":
    raise FoldError(
        f"{workdir}: its config.json does not name the fold's {split} subjects (saved "
        "before loso kept them); only --split=test is known, from the folder's name. "
        f"Pass --config=... --config.dataset.{SPLIT_KEYS[split]}=<their splits>")
  return [name[len("fold_"):]]


def open_subjects(cfg, subjects: Sequence[str]) -> sources.VideoIndex:
  """These subjects' videos: from their own splits where the corpus has one per subject
  (`corpus_utils.loso_split_name`), else from a pass over the whole corpus."""
  builder = train.ensure_built(cfg.dataset)
  names = [corpus_utils.loso_split_name(s) for s in subjects]
  if not cfg.dataset.get("train_split") and set(names) <= set(builder.info.splits.keys()):
    source = ConcatSource([builder.as_data_source(n) for n in names])
  else:
    source = open_all(cfg)
  return sources.VideoIndex(source, subjects=list(subjects))


def _say_frame_step_change(test: str, fold_dir: str, cfg) -> None:
  """Warns when a finished fold was trained at another `dataset.frame_step`: it is pooled
  as it is, and no training call (which would warn) is made for it. Its own words: the
  training note ('the model sees ...') is about a model about to run, this fold's is not."""
  saved = train._saved_config(fold_dir)  # pylint: disable=protected-access
  then = train.trained_frame_step(saved, cfg)
  if then is not None:
    now = predict.frame_step(cfg)
    train.say(f"[loso] fold {test}: WARNING: its metrics (trained and evaluated at "
              f"dataset.frame_step={then}, its config.json) are pooled with this run's "
              f"at dataset.frame_step={now}; pass --config.dataset.frame_step={then} to "
              "pool folds of one step, or use another --workdir.")


def _fold_summary(r: dict) -> dict:
  keep = ("tp", "fp", "fn", "precision", "recall", "f1", "uf1", "f1_dr", "f1_speaking",
          "f1_listening", "per_class", "speaking", "listening", "megc2020", "num_videos",
          "acc_me", "acc_me_clips", "acc_state", "acc_state_clips", "threshold",
          "best_step", "iou")
  return {k: r.get(k) for k in keep if k in r}


def _f(v) -> str:
  return "n/a" if v is None else f"{v:.4f}"


def main(argv):
  del argv
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  with cli.one_line_errors(cli.EXIT_CODES + ((FoldError, 2),)):  # e.g. --folds
    if flags.FLAGS.mode == "evaluate":
      if flags.FLAGS.folds:
        raise FoldError("--folds is for --mode=train: --mode=evaluate evaluates every "
                        "finished fold, so that loso_metrics.json pools one setting")
      evaluate(config, workdir)
    else:
      run(config, workdir, only=flags.FLAGS.folds)


if __name__ == "__main__":
  # Flags are defined here (not at import) so that the module can be imported next to
  # meldae_jax.main, which defines --config too.
  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Fold workdirs and loso_metrics.json go here.")
  flags.DEFINE_enum("mode", "train", ["train", "evaluate"], "train: train (or resume) the "
                    "folds, then pool; evaluate: evaluate every finished fold again (e.g. "
                    "with other --config.eval.* settings), then pool.")
  flags.DEFINE_list("folds", None, "Only run these test subjects (default: all); the pooled "
                    "figures cover every fold finished in WORKDIR, these and earlier ones.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
