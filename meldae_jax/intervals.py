"""Frame scores to expression intervals (SPEC §5, first bullet).

Long videos are scored with overlapping windows; the per-frame scores of all windows that
cover a frame are averaged (`aggregate_windows`), then each class's score track is decoded:
(optional Gaussian smoothing) -> threshold -> runs -> merge runs separated by small gaps -> length filters (`decode`).
Frame indices are 0-based and inclusive everywhere, as in the rest of the project.
"""
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

# Typical upper durations, for configs that want length filters: a micro-expression lasts
# under 0.5 s (onset to offset); macro-expressions last up to a few seconds.
MICRO_MAX_SECONDS = 0.5
MACRO_MAX_SECONDS = 4.0
DEFAULT_MAX_SECONDS = {"micro": MICRO_MAX_SECONDS, "macro": MACRO_MAX_SECONDS}


def iou(a: Sequence[int], b: Sequence[int]) -> float:
  """IoU of two inclusive (onset, offset) frame intervals, exactly as SPEC §5 defines it."""
  s1, e1 = int(a[0]), int(a[1])
  s2, e2 = int(b[0]), int(b[1])
  inter = max(0, min(e1, e2) - max(s1, s2) + 1)
  union = (e1 - s1 + 1) + (e2 - s2 + 1) - inter
  # Correctly rounded division: an exact ratio of 1/2 compares equal to the threshold 0.5.
  return inter / union if union > 0 else 0.0


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
  """First frames of the windows that score a video, covering every frame.

  Windows start at 0, stride, 2*stride, ...; when the strided windows stop short of the last
  frame, one more window is aligned to the end (start = num_frames - window), so no window
  reaches past the video. A video shorter than `window` gets the single start 0: that window
  is padded (frame_mask 0) by the pipeline, and `aggregate_windows` ignores its overhang.
  """
  if window < 1 or stride < 1:
    raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  if num_frames <= window:
    return [0]
  last = num_frames - window
  starts = list(range(0, last + 1, stride))
  if starts[-1] != last:
    starts.append(last)
  return starts


def aggregate_windows(num_frames: int, starts: Sequence[int], window_scores: Any,
                      window_masks: Any = None, *, allow_gaps: bool = False) -> np.ndarray:
  """Averages the per-frame scores of overlapping windows into one track per video.

  Args:
    num_frames: length of the video.
    starts: first frame of each window, (N,).
    window_scores: (N, W, K) or (N, W) per-frame scores (probabilities) of each window.
    window_masks: optional (N, W); 0 marks padding frames, which do not vote.
    allow_gaps: frames covered by no window get score 0 when True; when False (default)
      such a frame raises, because silently scoring it 0 hides a windowing bug.

  Returns:
    (num_frames, K) or (num_frames,) float32 averaged scores (the rank of the input).
  """
  scores = np.asarray(window_scores, dtype=np.float64)
  squeeze = scores.ndim == 2
  if squeeze:
    scores = scores[..., None]
  if scores.ndim != 3:
    raise ValueError(f"window_scores must be (N, W) or (N, W, K), got {scores.shape}")
  n, w, k = scores.shape
  starts = np.asarray(starts, dtype=np.int64).reshape(-1)
  if starts.shape[0] != n:
    raise ValueError(f"{starts.shape[0]} starts for {n} windows")
  masks = np.ones((n, w)) if window_masks is None else np.asarray(window_masks, np.float64)
  if masks.shape != (n, w):
    raise ValueError(f"window_masks shape {masks.shape} != {(n, w)}")
  total = np.zeros((num_frames, k))
  count = np.zeros((num_frames,))
  for start, s, m in zip(starts, scores, masks):
    frames = start + np.arange(w)
    keep = (m > 0) & (frames >= 0) & (frames < num_frames)
    np.add.at(total, frames[keep], s[keep])
    np.add.at(count, frames[keep], 1.0)
  uncovered = np.flatnonzero(count == 0)
  if uncovered.size and not allow_gaps:
    raise ValueError(f"{uncovered.size} of {num_frames} frames are covered by no window "
                     f"(first: {uncovered[0]}); pass allow_gaps=True to score them 0")
  out = (total / np.maximum(count, 1.0)[:, None]).astype(np.float32)
  return out[:, 0] if squeeze else out


def to_native_frames(scores: Any, num_frames: int, frame_step: int) -> np.ndarray:
  """Scores of the sampled frames 0, k, 2k, ... (k = `frame_step`) at every native frame.

  Linear between neighbouring sampled frames, held at the last sampled frame's value after
  it (the video's last frames lie past the last sample). `scores` is (n, ...) with
  n = ceil(num_frames / k); the result (num_frames, ...) has its dtype. Step 1 returns
  `scores` itself.
  """
  if frame_step == 1:
    return scores
  s = np.asarray(scores)
  if len(s) != -(-num_frames // frame_step):
    raise ValueError(f"{len(s)} sampled scores for {num_frames} frames at step {frame_step}")
  t = np.arange(num_frames)
  j0 = t // frame_step
  j1 = np.minimum(j0 + 1, len(s) - 1)
  w = ((t - j0 * frame_step) / frame_step).reshape((-1,) + (1,) * (s.ndim - 1))
  out = s[j0].astype(np.float64) * (1.0 - w) + s[j1].astype(np.float64) * w
  return out.astype(s.dtype)


def seconds_to_frames(seconds: float, fps: float) -> int:
  """A duration in seconds as whole frames at `fps` (rounded half up, at least 1)."""
  if fps is None or not fps > 0:
    raise ValueError(f"fps must be > 0, got {fps}")
  return max(1, int(np.floor(seconds * fps + 0.5)))


def decode(scores: Any, threshold: float, *, merge_gap: int = 0, min_len: int = 1,
           max_len: int | None = None) -> list[dict]:
  """One class's frame scores to intervals.

  Frames with score >= threshold form runs; runs separated by at most `merge_gap` frames
  below threshold are merged (the gap frames join the interval); intervals shorter than
  `min_len` or longer than `max_len` frames are dropped, after merging. The score of an
  interval is the mean frame score over all its frames, gap frames included.

  Returns:
    A list of {onset, offset, score} (inclusive frames, Python int/float), by onset.
  """
  s = np.asarray(scores, dtype=np.float64).reshape(-1)
  above = np.concatenate([[False], s >= threshold, [False]])
  edges = np.flatnonzero(np.diff(above.astype(np.int8)))
  runs = [[int(a), int(b) - 1] for a, b in zip(edges[::2], edges[1::2])]
  merged: list[list[int]] = []
  for run in runs:
    if merged and run[0] - merged[-1][1] - 1 <= merge_gap:
      merged[-1][1] = run[1]
    else:
      merged.append(run)
  out = []
  for onset, offset in merged:
    length = offset - onset + 1
    if length < min_len or (max_len is not None and length > max_len):
      continue
    out.append({"onset": onset, "offset": offset,
                "score": float(s[onset:offset + 1].mean())})
  return out


def for_class(value: Any, name: str, index: int) -> Any:
  """A per-class setting given as a scalar, a {class: value} mapping or a sequence."""
  if isinstance(value, Mapping):
    return value.get(name)
  if isinstance(value, (list, tuple)):
    return value[index]
  return value


def smooth(track: Any, smooth_seconds: Any, fps: float) -> np.ndarray:
  """One class's score track as `decode_video` thresholds it: Gaussian-smoothed with
  standard deviation `smooth_seconds` (at `fps`), unchanged when that is 0 or None."""
  track = np.asarray(track, dtype=np.float64)
  if smooth_seconds:
    track = ndimage.gaussian_filter1d(track, float(smooth_seconds) * fps, mode="nearest")
  return track


def decode_video(scores: Any, classes: Sequence[str], fps: float, threshold: Any, *,
                 merge_gap: Any = 0, min_len: Any = 1, max_len: Any = None,
                 merge_seconds: Any = None, min_seconds: Any = None,
                 max_seconds: Any = None, smooth_seconds: Any = None) -> list[dict]:
  """All classes of one video's (T, K) scores to typed intervals for `metrics.evaluate`.

  Every setting may be a scalar, a {class: value} mapping or a per-class sequence. Lengths
  are in frames; `merge_seconds`, `min_seconds` and `max_seconds` (e.g.
  `DEFAULT_MAX_SECONDS`) are converted at this video's `fps` and, when given (and not 0),
  override `merge_gap`, `min_len` and `max_len` for that class, so one setting means the
  same duration in a 25 and a 200 fps video.
  `smooth_seconds` (> 0) is the standard deviation of a Gaussian the score track is
  smoothed with before thresholding: a motion detector's score dips at an expression's
  apex, and smoothing keeps one expression one interval instead of two fragments.

  Returns:
    [{onset, offset, type, score}] sorted by onset, then class order.
  """
  s = np.asarray(scores, dtype=np.float64)
  if s.ndim == 1:
    s = s[:, None]
  if s.ndim != 2 or s.shape[1] != len(classes):
    raise ValueError(f"scores shape {s.shape} does not match classes {tuple(classes)}")
  out = []
  for k, name in enumerate(classes):
    limit = for_class(max_len, name, k)
    seconds = for_class(max_seconds, name, k)
    if seconds:  # 0 or None: no override (as for min_seconds)
      limit = seconds_to_frames(seconds, fps)
    shortest = for_class(min_len, name, k) or 1
    if for_class(min_seconds, name, k):
      shortest = seconds_to_frames(for_class(min_seconds, name, k), fps)
    gap = for_class(merge_gap, name, k) or 0
    if for_class(merge_seconds, name, k):
      gap = seconds_to_frames(for_class(merge_seconds, name, k), fps)
    track = smooth(s[:, k], for_class(smooth_seconds, name, k), fps)
    found = decode(track, for_class(threshold, name, k), merge_gap=gap,
                   min_len=shortest, max_len=limit)
    out += [dict(iv, type=name, _k=k) for iv in found]
  out.sort(key=lambda iv: (iv["onset"], iv["_k"]))
  for iv in out:
    del iv["_k"]
  return out
