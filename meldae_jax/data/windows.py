"""Window grids and per-window labels, pure numpy (no frames, no grain).

Kept apart from the pipeline so labels can be tested and reused (e.g. by the evaluator)
without decoding anything. Frame indices are 0-based and inclusive (SPEC §4).
"""
import threading
from typing import Sequence

import numpy as np

from meldae_jax import intervals
from meldae_jax.data import schema


def class_ids(classes: Sequence[str]) -> tuple[int, ...]:
  """Maps config class names to the `type` ids stored in records (0 micro, 1 macro)."""
  ids = []
  for name in classes:
    if name not in schema.EXPRESSION_TYPES:
      raise ValueError(f"unknown class {name!r}; expected one of {schema.EXPRESSION_TYPES}")
    ids.append(schema.EXPRESSION_TYPES.index(name))
  return tuple(ids)


def train_starts(num_frames: int, window: int, stride: int,
                 align_end: bool = True) -> np.ndarray:
  """Window starts on the stride grid `0, stride, ...` that fit inside the video.

  A video shorter than the window gives the single start 0 (the window is padded). With
  `align_end`, a last window ending on the last frame is added when the grid misses the
  tail, so every frame can be sampled (the evaluator's grid, `intervals.window_starts`).
  """
  if align_end:
    return np.asarray(intervals.window_starts(max(num_frames, 1), window, stride), np.int32)
  if stride <= 0 or window <= 0:
    raise ValueError(f"window and stride must be positive, got {window=} {stride=}")
  return np.arange(0, max(num_frames - window, 0) + 1, stride, dtype=np.int32)


def eval_starts(num_frames: int, window: int, stride: int) -> np.ndarray:
  """Overlapping eval windows covering every frame: the stride grid plus an end-aligned one.

  Windows never run past the end unless the video is shorter than the window (then one
  padded window at 0), so every real frame is scored at least once and the coverage of a
  frame is the number of windows containing it.
  """
  if not 1 <= stride <= window:
    raise ValueError(f"eval stride {stride} must be in [1, window {window}]: a larger one "
                     "leaves frames unscored")
  return train_starts(num_frames, window, stride, align_end=True)


def window_labels(intervals: dict, speaking: np.ndarray, num_frames: int, start: int,
                  window: int, classes: Sequence[str]) -> dict:
  """Labels of the window `[start, start + window)` of one video.

  Args:
    intervals: dict of arrays `onset`, `offset`, `type` (inclusive frame indices).
    speaking: int8 per frame (1/0/-1), length `num_frames`.
    num_frames: frames in the video; frames past it are padding.
    start: first frame of the window.
    window: window length T.
    classes: class names, K = len(classes).

  Returns:
    dict with `frame_mask (T,)`, `labels (T,K)`, `boundary (T,K)`, `speaking (T,) int8`,
    `me_label`, `state_label`, `state_valid` (float32 scalars).
  """
  ids = class_ids(classes)
  t = np.arange(start, start + window)
  valid = t < num_frames
  labels = np.zeros((window, len(ids)), np.float32)
  boundary = np.zeros((window, len(ids)), np.float32)
  me = False
  onsets = np.asarray(intervals.get("onset", ()), np.int64).reshape(-1)
  offsets = np.asarray(intervals.get("offset", ()), np.int64).reshape(-1)
  types = np.asarray(intervals.get("type", ()), np.int64).reshape(-1)
  end = min(start + window, num_frames) - 1  # last real frame of the window
  for on, off, ty in zip(onsets, offsets, types):
    if off < start or on > end:
      continue
    if ty == 0:
      me = True
    if ty not in ids:
      continue
    k = ids.index(int(ty))
    labels[max(on, start) - start:min(off, end) - start + 1, k] = 1.0
    for b in (on, off):
      if start <= b <= end:
        boundary[b - start, k] = 1.0
  spk = np.full((window,), -1, np.int8)
  speaking = np.asarray(speaking, np.int8).reshape(-1)
  n = max(0, min(len(speaking), num_frames) - start)
  n = min(n, window)
  if n:
    spk[:n] = speaking[start:start + n]
  known = spk[spk >= 0]
  state_valid = known.size > 0
  state = float(state_valid and 2 * int(known.sum()) >= known.size)  # tie -> speaking
  return {
      "frame_mask": valid.astype(np.float32),
      "labels": labels,
      "boundary": boundary,
      "speaking": spk,
      "me_label": np.float32(me),
      "state_label": np.float32(state),
      "state_valid": np.float32(state_valid),
  }


def window_has_micro(intervals: dict, num_frames: int, start: int, window: int) -> bool:
  """Whether any real frame of the window lies inside a `micro` interval (for oversampling)."""
  end = min(start + window, num_frames) - 1
  onsets = np.asarray(intervals.get("onset", ()), np.int64).reshape(-1)
  offsets = np.asarray(intervals.get("offset", ()), np.int64).reshape(-1)
  types = np.asarray(intervals.get("type", ()), np.int64).reshape(-1)
  return bool(np.any((types == 0) & (onsets <= end) & (offsets >= start)))


class EpochOrder:
  """Random-access epoch order of a window table, reshuffled every epoch, read-friendly.

  A record holds a whole video, and reading one (e.g. 3000 frames from array_record) costs
  far more than decoding a window, so windows are drawn in read-friendly order: each
  video's windows are shuffled and cut into chunks of `windows_per_read`, chunks are
  shuffled, and every `mix_videos` consecutive chunks are shuffled together. Consecutive
  windows then come from `mix_videos` videos that a small record cache serves after one
  read each. `windows_per_read=1` is a plain uniform shuffle.

  Index `i` is window `i % n` of epoch `i // n`, so grain can address it directly (and
  checkpoint by index); `len` is `n * num_epochs` (a huge number when None = forever).
  """

  def __init__(self, table: np.ndarray, seed: int, windows_per_read: int = 16,
               mix_videos: int = 8, num_epochs: int | None = None):
    self.table = np.asarray(table, np.int32).reshape(-1, 2)
    self.seed = int(seed)
    self.windows_per_read = max(1, int(windows_per_read))
    self.mix_videos = max(1, int(mix_videos))
    self.num_epochs = num_epochs
    videos = self.table[:, 0]
    self._rows_by_video = [np.flatnonzero(videos == v) for v in np.unique(videos)]
    self._cache: dict[int, np.ndarray] = {}  # the last two epochs (threads straddle them)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    n = len(self.table)
    if self.num_epochs is None:
      return 0 if n == 0 else 2**62
    return n * int(self.num_epochs)

  def permutation(self, epoch: int) -> np.ndarray:
    """Row order of one epoch (deterministic in seed and epoch)."""
    with self._lock:
      if epoch in self._cache:
        return self._cache[epoch]
    rng = np.random.default_rng([self.seed, int(epoch)])
    k = self.windows_per_read
    chunks = []
    for rows in self._rows_by_video:
      rows = rng.permutation(rows)
      chunks += [rows[i:i + k] for i in range(0, len(rows), k)]
    chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    m = self.mix_videos
    groups = [rng.permutation(np.concatenate(chunks[i:i + m]))
              for i in range(0, len(chunks), m)]
    perm = np.concatenate(groups) if groups else np.zeros((0,), np.int64)
    with self._lock:
      self._cache[epoch] = perm
      for old in sorted(self._cache)[:-2]:
        del self._cache[old]
    return perm

  def __getitem__(self, index: int) -> np.ndarray:
    epoch, i = divmod(int(index), len(self.table))
    return self.table[self.permutation(epoch)[i]]

  def __getstate__(self):
    state = dict(self.__dict__)
    del state["_cache"], state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._cache, self._lock = {}, threading.Lock()
