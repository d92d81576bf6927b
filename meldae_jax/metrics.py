"""The one interval metric of the project (SPEC §5), used by training, sweeps and the CLI.

`evaluate(annotations, predictions)` takes and returns the JSON shapes of SPEC §5:

* one-to-one matching per video and class at IoU >= 0.5 (greedy by IoU, ties by earlier GT
  onset, then earlier prediction onset), TP/FP/FN pooled over videos, P/R/F1 per class and
  overall, UF1 over the classes present in the ground truth;
* the dialogue-role split: each counted interval is attributed to the speaking state of its
  frames (matched pairs: the GT's state), giving F1_speaking, F1_listening and their
  harmonic mean F1_DR;
* the MEGC2020 variant, for comparison with published numbers.

Any ratio whose denominator is 0 is None (JSON null), never 0. Results keep their raw counts
so that `pool_results` can pool leave-one-subject-out folds exactly.
"""
from collections.abc import Mapping, Sequence
import json
import math
import numbers
from typing import Any, NoReturn

import numpy as np

from meldae_jax import intervals as intervals_lib

VALID_TYPES = ("micro", "macro")
STATES = ("speaking", "listening")


class AnnotationError(ValueError):
  """Malformed annotations or predictions; the one-line message names the file and video."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
  """json.load keeps the last of two equal keys, silently: a video listed twice (two
  files pasted together) would lose its first annotations."""
  out = {}
  for k, v in pairs:
    if k in out:
      raise ValueError(f"key {k!r} appears twice in one object")
    out[k] = v
  return out


def read_json(path: str) -> Any:
  """Reads one JSON file; any failure (a key twice in one object too) becomes a
  one-line AnnotationError naming it."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f, object_pairs_hook=_unique_keys)
  except OSError as e:
    raise AnnotationError(f"{path}: cannot read: {e.strerror or e}") from e
  except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, and
    # json.load's own: an integer literal over Python's digit limit, nesting too deep
    raise AnnotationError(f"{path}: invalid JSON: {e}".replace("\n", " ")) from e


def _fail(source: str, video: Any, message: str) -> NoReturn:
  where = f"{source}: video {str(video)!r}: " if video is not None else f"{source}: "
  raise AnnotationError((where + message).replace("\n", " "))


def _is_int(x: Any) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_finite_real(x: Any) -> bool:
  """A real number, not a bool, NaN or infinity (json.load accepts NaN and Infinity)."""
  if not isinstance(x, numbers.Real) or isinstance(x, bool):
    return False
  try:
    return math.isfinite(x)
  except OverflowError:  # an int of hundreds of digits: no float holds it
    return False


def _videos(data: Any, source: str) -> Mapping:
  if not isinstance(data, Mapping) or not isinstance(data.get("videos"), Mapping):
    _fail(source, None, 'expected an object with a "videos" object')
  return data["videos"]


def _interval(iv: Any, i: int, num_frames: int, source: str, vid: Any,
              prediction: bool) -> tuple:
  """Checks one interval and returns (onset, offset, type, score)."""
  if not isinstance(iv, Mapping):
    _fail(source, vid, f"interval {i}: expected an object, got {type(iv).__name__}")
  for key in ("onset", "offset", "type"):
    if key not in iv:
      _fail(source, vid, f'interval {i}: missing required key "{key}"')
  onset, offset, kind = iv["onset"], iv["offset"], iv["type"]
  for key, value in (("onset", onset), ("offset", offset)):
    if not _is_int(value):
      _fail(source, vid, f"interval {i}: {key} {value!r} is not an integer")
  if onset > offset:
    _fail(source, vid, f"interval {i}: onset {onset} > offset {offset}")
  if onset < 0 or offset >= num_frames:
    _fail(source, vid, f"interval {i}: [{onset}, {offset}] outside [0, {num_frames})")
  if kind not in VALID_TYPES:
    _fail(source, vid, f"interval {i}: unknown type {kind!r} (valid: {', '.join(VALID_TYPES)})")
  score = iv.get("score") if prediction else None
  if score is not None and not _is_finite_real(score):
    _fail(source, vid, f"interval {i}: score {score!r} is not a finite number")
  return int(onset), int(offset), str(kind), score


def _interval_list(entry: Mapping, num_frames: int, source: str, vid: Any,
                   prediction: bool) -> list[tuple]:
  if "intervals" not in entry:
    _fail(source, vid, 'missing required key "intervals"')
  ivs = entry["intervals"]
  if not isinstance(ivs, (list, tuple)):
    _fail(source, vid, '"intervals" must be a list')
  return [_interval(iv, i, num_frames, source, vid, prediction) for i, iv in enumerate(ivs)]


def validate_annotations(annotations: Any, source: str = "annotations") -> dict:
  """Checks SPEC §5 annotations; returns {video: {num_frames, fps, intervals, speaking}}.

  `intervals` become (onset, offset, type, None) tuples and `speaking` an int8 array (or
  None when the video has no speaking labels).
  """
  out = {}
  for vid, entry in _videos(annotations, source).items():
    if not isinstance(entry, Mapping):
      _fail(source, vid, "expected an object")
    if "num_frames" not in entry:
      _fail(source, vid, 'missing required key "num_frames"')
    n = entry["num_frames"]
    if not _is_int(n) or n < 1:
      _fail(source, vid, f"num_frames {n!r} is not a positive integer")
    fps = entry.get("fps")
    if fps is not None and not (_is_finite_real(fps) and fps > 0):
      _fail(source, vid, f"fps {fps!r} is not a positive finite number")
    speaking = entry.get("speaking")
    if speaking is not None:
      if not isinstance(speaking, (list, tuple, np.ndarray)):
        _fail(source, vid, f"speaking must be a list of per-frame labels, "
                           f"got {type(speaking).__name__}")
      if len(speaking) != n:
        _fail(source, vid, f"speaking has length {len(speaking)}, expected num_frames = {n}")
      bad = [s for s in speaking if not _is_int(s) or s not in (-1, 0, 1)]
      if bad:
        _fail(source, vid, f"speaking value {bad[0]!r} is not one of -1, 0, 1")
      speaking = np.asarray(speaking, dtype=np.int8)
    out[vid] = {"num_frames": int(n), "fps": fps, "speaking": speaking,
                "intervals": _interval_list(entry, int(n), source, vid, prediction=False)}
  return out


def validate_predictions(predictions: Any, videos: Mapping,
                         source: str = "predictions") -> dict:
  """Checks SPEC §5 predictions against validated annotations; {video: [intervals]}."""
  out = {}
  for vid, entry in _videos(predictions, source).items():
    if vid not in videos:
      _fail(source, vid, "predicted video is not in the annotations")
    if not isinstance(entry, Mapping):
      _fail(source, vid, "expected an object")
    out[vid] = _interval_list(entry, videos[vid]["num_frames"], source, vid, prediction=True)
  return out


def match(gt: Sequence[Sequence[int]], pred: Sequence[Sequence[int]],
          iou_threshold: float = 0.5) -> list[tuple[int, int]]:
  """One-to-one greedy matching of (onset, offset) intervals of one video and class.

  Candidate pairs with IoU >= threshold are taken by IoU descending (ties: earlier GT
  onset, then earlier prediction onset, then list order) while both sides are free.
  Returns the matched (gt_index, pred_index) pairs.
  """
  pairs = []
  for gi, g in enumerate(gt):
    for pi, p in enumerate(pred):
      v = intervals_lib.iou(g, p)
      if v >= iou_threshold:
        pairs.append((-v, g[0], p[0], gi, pi))
  pairs.sort()
  used_g, used_p, out = set(), set(), []
  for _, _, _, gi, pi in pairs:
    if gi not in used_g and pi not in used_p:
      used_g.add(gi)
      used_p.add(pi)
      out.append((gi, pi))
  return out


def interval_state(speaking: Any, onset: int, offset: int) -> str | None:
  """'speaking' / 'listening' by majority of the known labels in [onset, offset].

  Ties go to speaking; -1 frames are ignored; no known frame (or no labels) gives None.
  """
  if speaking is None:
    return None
  frames = np.asarray(speaking)[onset:offset + 1]
  talk, listen = int(np.sum(frames == 1)), int(np.sum(frames == 0))
  if talk + listen == 0:
    return None
  return "speaking" if talk >= listen else "listening"


def _zero_counts(classes: Sequence[str]) -> dict:
  return {"num_videos": 0,
          "per_class": {c: {"tp": 0, "fp": 0, "fn": 0} for c in classes},
          "speaking": {"tp": 0, "fp": 0, "fn": 0},
          "listening": {"tp": 0, "fp": 0, "fn": 0},
          "megc2020": {"found": 0, "gt": 0, "predictions": 0}}


def _count_video(counts: dict, gt: list, pred: list, speaking: Any, cls: str,
                 iou_threshold: float):
  """Adds one video's intervals of one class to the pooled counts."""
  g = [iv for iv in gt if iv[2] == cls]
  p = [iv for iv in pred if iv[2] == cls]
  pairs = match(g, p, iou_threshold)
  c = counts["per_class"][cls]
  c["tp"] += len(pairs)
  c["fp"] += len(p) - len(pairs)
  c["fn"] += len(g) - len(pairs)
  # Matched pairs take the GT's state; unmatched intervals their own; unknown: neither.
  matched_g = {gi for gi, _ in pairs}
  matched_p = {pi for _, pi in pairs}
  roles = [("tp" if i in matched_g else "fn", iv) for i, iv in enumerate(g)]
  roles += [("fp", iv) for i, iv in enumerate(p) if i not in matched_p]
  for role, iv in roles:
    state = interval_state(speaking, iv[0], iv[1])
    if state is not None:
      counts[state][role] += 1
  # MEGC2020: a GT is found when any prediction of its type reaches the IoU threshold;
  # several GTs may be found by the same prediction (no one-to-one constraint), so
  # precision = found / predictions can exceed 1. What the reference code does (looked up):
  # the MATLAB baseline of the challenge series (jingtingEmmaLi/MEGC_spotting,
  # saveTPFPFN_forMEinterval.m) flags each GT as spotted or not by its overlap ratio; the
  # Python evaluation reused across MEGC2020/21 entries (`cal_TP`/`spotting_evaluation`)
  # takes TP = GTs with >= 1 prediction at IoU >= 0.5, recall = TP / #GT and precision =
  # TP / n with n = #predictions minus the extra hits on already-found GTs. SPEC §5 fixes
  # precision = found / #predictions: the same unless several predictions hit one GT
  # (there the spec counts the duplicates against precision). We follow the spec.
  found = sum(any(intervals_lib.iou(gi, pi) >= iou_threshold for pi in p) for gi in g)
  m = counts["megc2020"]
  m["found"] += found
  m["gt"] += len(g)
  m["predictions"] += len(p)


def _ratio(num: float, den: float) -> float | None:
  return num / den if den else None


def _prf(c: Mapping) -> dict:
  tp, fp, fn = c["tp"], c["fp"], c["fn"]
  return {"tp": tp, "fp": fp, "fn": fn, "precision": _ratio(tp, tp + fp),
          "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn)}


def harmonic(a: float | None, b: float | None) -> float | None:
  """F1_DR's harmonic mean, with the rules in SPEC §5 order.

  0 if either is 0, else None if either is None: (0, None) gives 0, since a state that was
  scored and missed entirely already sinks F1_DR, whatever the other state holds.
  """
  if a == 0 or b == 0:
    return 0.0
  if a is None or b is None:
    return None
  return 2 * a * b / (a + b)


def summarize(counts: Mapping) -> dict:
  """Ratios from pooled counts: the result dict of `evaluate` (counts kept alongside)."""
  per_class = {c: _prf(v) for c, v in counts["per_class"].items()}
  total = {k: sum(v[k] for v in counts["per_class"].values()) for k in ("tp", "fp", "fn")}
  out = _prf(total)
  states = {s: _prf(counts[s]) for s in STATES}
  # UF1 averages over the classes with GT; such a class always has an F1 (tp + fn > 0).
  present = [v["f1"] for v in per_class.values() if v["tp"] + v["fn"] > 0]
  m = counts["megc2020"]
  out.update({
      "f1_speaking": states["speaking"]["f1"],
      "f1_listening": states["listening"]["f1"],
      "f1_dr": harmonic(states["speaking"]["f1"], states["listening"]["f1"]),
      "uf1": sum(present) / len(present) if present else None,
      "per_class": per_class,
      "speaking": states["speaking"],
      "listening": states["listening"],
      # f1 = 2PR/(P+R) = 2 found/(gt + predictions); 0 (not None) when nothing is found.
      "megc2020": {"found": m["found"], "gt": m["gt"], "predictions": m["predictions"],
                   "precision": _ratio(m["found"], m["predictions"]),
                   "recall": _ratio(m["found"], m["gt"]),
                   "f1": _ratio(2 * m["found"], m["gt"] + m["predictions"])},
      "num_videos": counts["num_videos"],
      "num_gt": total["tp"] + total["fn"],
      "num_predictions": total["tp"] + total["fp"],
  })
  return out


def evaluate(annotations: Any, predictions: Any, iou: float = 0.5,
             classes: Sequence[str] | None = None, *,
             annotations_source: str = "annotations",
             predictions_source: str = "predictions") -> dict:
  """Scores predicted intervals against annotations (the JSON shapes of SPEC §5).

  Args:
    annotations: {"videos": {id: {num_frames, fps?, intervals, speaking?}}}.
    predictions: {"videos": {id: {intervals: [{onset, offset, type, score?}]}}}; a video of
      the annotations absent here simply has no predictions.
    iou: match threshold (a pair matches at IoU >= iou).
    classes: types to evaluate (intervals of other types are ignored everywhere); default:
      the valid types that occur in the annotations or predictions.
    annotations_source, predictions_source: names (file paths) used in error messages.

  Returns:
    The result dict (tp fp fn precision recall f1 f1_speaking f1_listening f1_dr uf1,
    per_class, speaking, listening, megc2020, num_videos, num_gt, num_predictions, iou).

  Raises:
    AnnotationError: on malformed input, naming the source and the video.
  """
  videos = validate_annotations(annotations, annotations_source)
  preds = validate_predictions(predictions, videos, predictions_source)
  if classes is None:
    seen = {iv[2] for v in videos.values() for iv in v["intervals"]}
    seen |= {iv[2] for ivs in preds.values() for iv in ivs}
    classes = [c for c in VALID_TYPES if c in seen]
  else:
    unknown = [c for c in classes if c not in VALID_TYPES]
    if unknown:
      raise ValueError(f"unknown classes {unknown} (valid: {', '.join(VALID_TYPES)})")
  counts = _zero_counts(classes)
  for vid, video in videos.items():
    counts["num_videos"] += 1
    for cls in classes:
      _count_video(counts, video["intervals"], preds.get(vid, []), video["speaking"], cls,
                   iou)
  return dict(summarize(counts), iou=iou)


def pool_results(results: Sequence[Mapping]) -> dict:
  """Pools `evaluate` results (e.g. leave-one-subject-out folds) by summing their counts.

  Ratios are recomputed from the pooled counts (never averaged), so pooling the folds
  equals evaluating their union.
  """
  classes = []
  for r in results:
    classes += [c for c in r["per_class"] if c not in classes]
  counts = _zero_counts(classes)
  for r in results:
    counts["num_videos"] += r.get("num_videos", 0)
    for c, v in r["per_class"].items():
      for k in ("tp", "fp", "fn"):
        counts["per_class"][c][k] += v[k]
    for s in STATES:
      for k in ("tp", "fp", "fn"):
        counts[s][k] += r[s][k]
    for k in ("found", "gt", "predictions"):
      counts["megc2020"][k] += r["megc2020"][k]
  out = summarize(counts)
  ious = {r.get("iou") for r in results}
  if len(ious) == 1:
    out["iou"] = ious.pop()
  return out


def clip_counts(probs: Any, labels: Any, valid: Any = None) -> dict:
  """{"correct", "clips"}: clips whose probability >= 0.5 agrees with the 0/1 label.

  Items with valid == 0 are left out. Kept in results so that folds pool by clips.
  """
  p = np.asarray(probs, dtype=np.float64).reshape(-1) >= 0.5
  y = np.asarray(labels, dtype=np.float64).reshape(-1) >= 0.5
  keep = np.ones_like(p) if valid is None else np.asarray(valid).reshape(-1) > 0
  return {"correct": int(np.sum(p[keep] == y[keep])), "clips": int(np.sum(keep))}


def accuracy(counts: Mapping) -> float | None:
  """correct / clips of `clip_counts`; None when there is no clip."""
  return counts["correct"] / counts["clips"] if counts["clips"] else None


def clip_accuracy(probs: Any, labels: Any, valid: Any = None) -> float | None:
  """Acc_ME / Acc_State: accuracy of probability >= 0.5 against 0/1 labels.

  Items with valid == 0 are left out; None when no item is valid.
  """
  return accuracy(clip_counts(probs, labels, valid))


CLIP_ACCURACIES = ("acc_me", "acc_state")


def pool_clip_accuracies(results: Sequence[Mapping]) -> dict:
  """Acc_ME / Acc_State over the clips of all `results` (e.g. LOSO folds), not a mean of
  their accuracies: {acc_me, acc_me_clips, acc_state, acc_state_clips}.

  A mean over folds would weigh a 1-clip fold like a 9-clip one. Where a result keeps no
  `<acc>_clips` counts (written before they were kept), that accuracy and its counts are
  None: it cannot be pooled.
  """
  out = {}
  for key in CLIP_ACCURACIES:
    if not any(key in r for r in results):
      continue
    if not all(f"{key}_clips" in r for r in results):
      out[key] = out[f"{key}_clips"] = None
      continue
    total = {k: sum(r[f"{key}_clips"][k] for r in results) for k in ("correct", "clips")}
    out[key], out[f"{key}_clips"] = accuracy(total), total
  return out


def _ground_truth_defines(result: Mapping, key: str) -> bool:
  """Whether the ground truth alone lets `key` rank predictions (the same for every
  candidate and validation round). F1_DR needs ground truth in both speaking states: with
  one state empty, its F1 is 0 or None by the predictions alone, so F1_DR is 0 or None
  whatever the threshold, and whether it is defined would change between rounds, making
  the best checkpoint's comparisons mix two metrics."""
  states = {"f1_dr": STATES, "f1_speaking": ("speaking",), "f1_listening": ("listening",)}
  return all(result[s]["tp"] + result[s]["fn"] > 0 for s in states.get(key, ()))


def choose_threshold(video_scores: Mapping, annotations: Any, candidates: Sequence[float], *,
                     classes: Sequence[str] = ("micro",), key: str = "f1_dr",
                     fallback_key: str = "f1", iou: float = 0.5,
                     decode_kwargs: Mapping | None = None) -> dict:
  """Picks the decoding threshold on VALIDATION data only (never on the test fold).

  Each candidate decodes every video's (T, K) scores (`intervals.decode_video`, columns in
  `classes`) and is scored with `evaluate`. The metric is `key` when the ground truth
  lets it rank (for F1_DR: intervals in both speaking states) and it is defined for every
  candidate, otherwise `fallback_key` for all of them (e.g. F1 when the corpus has no
  speaking labels, so F1_DR is None); one metric ranks all candidates. The best value wins,
  ties go to the lower threshold, None ranks last.

  Returns:
    {threshold, key (the metric used), value, values: [(threshold, value), ...]}.
  """
  decode_kwargs = dict(decode_kwargs or {})
  videos = _videos(annotations, "annotations")
  results = []
  for thr in sorted(candidates):
    preds = {}
    for vid, scores in video_scores.items():
      fps = videos.get(vid, {}).get("fps")   # unknown videos are reported by evaluate
      preds[vid] = {"intervals": intervals_lib.decode_video(scores, classes, fps, thr,
                                                             **decode_kwargs)}
    results.append((thr, evaluate(annotations, {"videos": preds}, iou, classes)))
  if not results:
    raise ValueError("no candidate thresholds")
  first = results[0][1]
  used = key if (_ground_truth_defines(first, key)
                 and all(r[key] is not None for _, r in results)) else fallback_key
  values = [(thr, r[used]) for thr, r in results]
  best_thr, best = values[0]
  for thr, v in values[1:]:
    if v is not None and (best is None or v > best):
      best_thr, best = thr, v
  return {"threshold": best_thr, "key": used, "value": best, "values": values}
