"""Model -> per-frame scores -> intervals -> SPEC §5 predictions/annotations -> metrics.

`evaluate_split` scores every video of a split with overlapping windows (the pipeline's
eval windows; per-frame scores averaged), decodes them with `intervals.decode_video`
(threshold -> runs -> merge gap -> length filters in seconds), and scores the result with
`metrics.evaluate` exactly as `python -m meldae_jax.evaluate` does on the written files.
With `threshold=None` the threshold is chosen by `metrics.choose_threshold` — call that on
validation data only. With `dataset.frame_step` k the model sees every k-th frame
(`dataset_view`) and its scores come back in native frames (`pipeline.ScoreAverager`), so
decoding (at the native fps), the annotations and the written files are in the corpus's
frames. Also reports the clip accuracies Acc_ME and Acc_State (SPEC §5).
A "clip" is the model's input, one T-frame eval window (SPEC §1.6's clip logit), so both
accuracies count overlapping windows; the paper's global classifier speaks of "the
entire clip" (§4.3) without saying whether that is a window or a whole corpus clip.
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import jax
import numpy as np

from meldae_jax import checkpointing
from meldae_jax import intervals as intervals_lib
from meldae_jax import metrics as metrics_lib
from meldae_jax import sharding
from meldae_jax.data import pipeline

# Batch entries the eval step hands back (gathered) next to its outputs.
PASS_THROUGH = ("video_index", "start", "frame_mask", "batch_valid", "me_label",
                "state_label", "state_valid")

SUMMARY_KEYS = ("threshold", "threshold_key", "f1", "f1_dr", "uf1", "precision", "recall",
                "f1_speaking", "f1_listening", "acc_me", "acc_state", "tp", "fp", "fn")


def frame_step(cfg) -> int:
  """`dataset.frame_step`, checked: the model sees every k-th frame (1: every frame; a run
  saved before the key existed has none)."""
  k = cfg.dataset.get("frame_step", 1)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"dataset.frame_step must be an int >= 1 (the model sees every k-th "
                     f"frame), got {k!r}")
  return int(k)


def dataset_view(index, cfg):
  """`index` (a `sources.VideoIndex`) as the model sees it: every `dataset.frame_step`-th
  frame. Scores come back in native frames (`pipeline.ScoreAverager`)."""
  return index.with_frame_step(frame_step(cfg))


def subset(index, max_videos: int):
  """The first `max_videos` videos of a `sources.VideoIndex` (all when 0)."""
  if not max_videos or max_videos >= len(index):
    return index
  return index.subset(max_videos=max_videos)


def annotations_for(index, classes) -> dict:
  """The evaluator's A.json for these videos, keeping only intervals of `classes`."""
  ann = index.to_annotations()
  for v in ann["videos"].values():
    v["intervals"] = [iv for iv in v["intervals"] if iv["type"] in classes]
  return ann


def decode_kwargs(cfg) -> dict:
  """Decoding settings of `cfg.eval` for `intervals.decode_video`.

  The lengths in seconds stay in seconds: `decode_video` converts them at each video's fps
  (a split may mix frame rates, and validation and test must decode alike).
  A run saved before `eval.merge_seconds` existed has `eval.merge_gap` in frames; it is
  decoded as it was evaluated then.
  """
  e = cfg.eval
  merge_gap, merge_seconds = int(e.get("merge_gap") or 0), _seconds(e.get("merge_seconds"))
  if merge_gap and merge_seconds:
    raise ValueError(f"eval.merge_gap={merge_gap} (frames) and eval.merge_seconds="
                     f"{merge_seconds} both set; keep merge_seconds")
  return {"merge_gap": merge_gap, "merge_seconds": merge_seconds,
          "min_seconds": _seconds(e.get("min_seconds")),
          "max_seconds": _seconds(e.get("max_seconds")),
          "smooth_seconds": _seconds(e.get("smooth_seconds"))}


def _seconds(value):
  """An eval.*_seconds setting as `decode_video` takes it: a {class: seconds} dict (as
  config_check allows; a ConfigDict, e.g. from config.json, becomes a dict), else a float,
  None for 0 or unset."""
  if value is not None and hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, dict):
    return value
  return float(value or 0.0) or None


def eval_batches(trainer, index, cfg):
  """The global batches of `index`'s eval windows (every frame covered; this process's
  shard), laid out for the trainer's steps."""
  d, mcfg = cfg.dataset, trainer.model.config
  it = pipeline.make_eval_iterator(
      index, window=int(d.window), stride=int(cfg.eval.stride),
      batch_size=sharding.local_batch_size(int(cfg.eval.batch_size)),
      classes=tuple(d.classes), image_size=int(mcfg.image_size),
      shard_index=jax.process_index(), shard_count=jax.process_count(),
      num_threads=int(d.num_threads))
  for batch in it:
    yield sharding.make_global_batch(batch, trainer.batch_sharding)


def score_videos(trainer, params, index, cfg, progress=None) -> tuple[dict, dict]:
  """Runs the model over every eval window of `index` (seen every `dataset.frame_step`-th
  frame). `progress(done, total)` (optional) is called with the windows scored after each
  batch (`spot` reports a long video's scoring with it).

  Returns:
    ({video_id: (num_frames, K) averaged frame scores, in native frames},
     {'me': probs, 'me_label', 'state': probs, 'state_label', 'state_valid'} per window).
  """
  index = dataset_view(index, cfg)
  averager = pipeline.ScoreAverager(index)
  clips = {k: [] for k in ("me", "me_label", "state", "state_label", "state_valid")}
  total = done = 0
  if progress is not None:
    total = len(pipeline.eval_window_table(index, int(cfg.dataset.window),
                                           int(cfg.eval.stride)))

  def take(out):
    nonlocal done
    out = jax.device_get(out)
    averager.add(out, out["loc"])
    valid = np.asarray(out["batch_valid"]) > 0
    if progress is not None:
      done += int(valid.sum())  # gathered: every process's windows
      progress(done, total)
    for k in clips:
      clips[k].append(np.asarray(out[k])[valid])

  # A batch's outputs are fetched once the next batch is dispatched: the devices run a
  # batch while the host stacks and sends the next (it waited for each batch's outputs).
  pending = None
  for global_batch in eval_batches(trainer, index, cfg):
    out = trainer.eval_step(params, global_batch)
    if pending is not None:
      take(pending)
    pending = out
  if pending is not None:
    take(pending)
  scores = {index.info(vi).video_id: s for vi, s in averager.result().items()}
  return scores, {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in clips.items()}


def evaluate_split(trainer, params, index, cfg, *, threshold: float | None = None,
                   threshold_key: str | None = None,
                   out_prefix: str | None = None) -> dict[str, Any]:
  """Scores a split; `threshold=None` chooses it here (validation only!).

  Writes `<out_prefix>_predictions.json` and `<out_prefix>_annotations.json` when
  `out_prefix` is given. Returns the `metrics.evaluate` dict plus acc_me, acc_state,
  threshold, threshold_key (the metric the threshold was chosen by: here, or on validation
  as the caller says; None for a fixed one) and (when chosen here) threshold_values.
  """
  classes = tuple(cfg.dataset.classes)
  index = subset(index, int(cfg.eval.get("max_val_videos", 0))) if threshold is None else index
  scores, clips = score_videos(trainer, params, index, cfg)
  annotations = annotations_for(index, classes)
  dk = decode_kwargs(cfg)
  iou = float(cfg.eval.iou)
  key = cfg.checkpoint.best_metric
  chosen = None
  if threshold is None:
    chosen = metrics_lib.choose_threshold(
        scores, annotations, tuple(cfg.eval.thresholds), classes=classes, key=key,
        fallback_key="f1", iou=iou, decode_kwargs=dk)
    threshold = float(chosen["threshold"])
  predictions = make_predictions(scores, annotations, classes, threshold, dk)
  result = metrics_lib.evaluate(annotations, predictions, iou)
  for name, counts in (
      ("acc_me", metrics_lib.clip_counts(clips["me"], clips["me_label"])),
      ("acc_state", metrics_lib.clip_counts(clips["state"], clips["state_label"],
                                            clips["state_valid"]))):
    result[name], result[f"{name}_clips"] = metrics_lib.accuracy(counts), counts
  result["threshold"] = float(threshold)
  result["threshold_key"] = chosen["key"] if chosen else threshold_key
  if chosen:
    result["threshold_values"] = [[float(t), v] for t, v in chosen["values"]]
  if out_prefix:
    checkpointing.write_json(out_prefix + "_predictions.json", predictions)
    checkpointing.write_json(out_prefix + "_annotations.json", annotations)
  return result


def make_predictions(scores: dict, annotations: dict, classes, threshold: float,
                     dk: dict) -> dict:
  """{'videos': {id: {'intervals': [{onset, offset, type, score}]}}} for every video."""
  videos = {}
  for vid, s in scores.items():
    fps = annotations["videos"][vid].get("fps") or 1.0
    videos[vid] = {"intervals": intervals_lib.decode_video(s, classes, fps, threshold, **dk)}
  return {"videos": videos}


def summary(result: dict | None) -> dict | None:
  if result is None:
    return None
  return {k: result.get(k) for k in SUMMARY_KEYS}


def load_json(path: str):
  with open(path) as f:
    return json.load(f)


def write_scores(path: str, scores: dict) -> None:
  """Per-frame scores as .npz (video_id -> (num_frames, K)), e.g. for plots.

  Written member by member: `np.savez_compressed(path, **scores)` takes a video called
  `file` or `allow_pickle` for its own arguments. `np.load(path)[video_id]` reads it.
  """
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
    for name, array in scores.items():
      with z.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)
