"""Opening record sources and indexing their videos without keeping frames.

A source is any random-access sequence of records (a TFDS `as_data_source` split or a
plain list of dicts, see docs/contracts.md). The pipeline needs per-video metadata
(length, labels) to lay out windows before reading any frame; `VideoIndex` gathers it in
one pass and drops the frame bytes.

`VideoIndex.with_frame_step(k)` is the one place where a video is seen at every k-th frame
(`dataset.frame_step`): its infos and `FrameCache` present frames 0, k, 2k, ... as a video
of their own at fps / k, so windows and labels need no change; `native_infos` and
`to_annotations` stay in the corpus's frames, which evaluation uses.
"""
import collections
import collections.abc
import copy
import dataclasses
import threading
from typing import Any, Sequence

import numpy as np


def _text(value) -> str:
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("utf-8")
  if isinstance(value, np.ndarray):
    return _text(value.item())
  return str(value)


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """Metadata of one video: everything but its frames."""
  video_id: str
  subject: str
  fps: float
  num_frames: int
  intervals: dict  # onset/apex/offset/type int32 arrays
  speaking: np.ndarray  # int8 (num_frames,)


def subsample_info(info: VideoInfo, step: int) -> VideoInfo:
  """`info` as every `step`-th frame (native frames 0, step, 2 step, ...) at fps / step.

  An interval keeps the sampled frames inside it; one shorter than `step` that holds none
  gets the sampled frame nearest to it (its midpoint, rounded half up), so no expression
  is lost from training. A known apex moves to the nearest sampled frame in the interval.
  """
  if step == 1:
    return info
  n = -(-info.num_frames // step)
  iv = {k: np.asarray(v, np.int64) for k, v in info.intervals.items()}
  onset, offset = -(-iv["onset"] // step), iv["offset"] // step
  empty = onset > offset
  nearest = np.minimum((iv["onset"] + iv["offset"] + step) // (2 * step), n - 1)
  onset, offset = np.where(empty, nearest, onset), np.where(empty, nearest, offset)
  apex = np.where(iv["apex"] >= 0,
                  np.clip((2 * iv["apex"] + step) // (2 * step), onset, offset), -1)
  intervals = {"onset": onset, "apex": apex, "offset": offset, "type": iv["type"]}
  return dataclasses.replace(
      info, fps=info.fps / step, num_frames=n,
      intervals={k: v.astype(np.int32) for k, v in intervals.items()},
      speaking=np.ascontiguousarray(info.speaking[::step]))


class RecordError(ValueError):
  """A record that breaks the schema (SPEC §4); the message names the video."""


def _intervals(iv, name: str) -> dict:
  if not isinstance(iv, collections.abc.Mapping):
    raise RecordError(f"video {name}: intervals must be a dict of onset/apex/offset/type "
                      f"arrays (the schema of docs/contracts.md), got {type(iv).__name__}")
  try:
    out = {k: np.asarray(iv.get(k, ()), np.int64).reshape(-1)
           for k in ("onset", "apex", "offset", "type")}
  except (TypeError, ValueError) as e:
    raise RecordError(f"video {name}: intervals hold a non-integer value ({e})") from None
  n = out["onset"].size
  if out["apex"].size == 0:
    out["apex"] = np.full(n, -1, np.int64)  # apex is optional: unknown
  sizes = {k: v.size for k, v in out.items()}
  if len(set(sizes.values())) > 1:
    raise RecordError(f"video {name}: intervals' arrays differ in length {sizes}")
  return out


def _check_intervals(iv: dict, num_frames: int, name: str) -> None:
  from meldae_jax.data import schema  # pylint: disable=g-import-not-at-top
  for j, (on, off, ty) in enumerate(zip(iv["onset"], iv["offset"], iv["type"])):
    what = f"video {name}: interval {j} (onset {on}, offset {off})"
    if not 0 <= on <= off < num_frames:
      raise RecordError(f"{what} is not 0 <= onset <= offset < {num_frames} frames "
                        "(0-based inclusive)")
    if not 0 <= ty < len(schema.EXPRESSION_TYPES):
      raise RecordError(f"{what} has type {ty}, not an index of {schema.EXPRESSION_TYPES}")


def video_info(record: dict, position: int | None = None) -> VideoInfo:
  """Extracts and checks the metadata of a record (dict or TFDS example).

  Builders check their corpora; this catches a hand-made source (docs/contracts.md) that
  breaks the schema, with an error naming the video, instead of training on labels that
  were silently clipped or dropped. A missing or short speaking track is unknown (-1).
  """
  name = repr(_text(record["video_id"])) if "video_id" in record else f"record {position}"
  if "frames" not in record:
    raise RecordError(f"video {name}: no 'frames'")
  num_frames = len(record["frames"])
  if num_frames == 0:  # nothing to train on, and the evaluation refuses num_frames 0
    raise RecordError(f"video {name}: no frames (an empty video)")
  intervals = _intervals(record.get("intervals") or {}, name)
  _check_intervals(intervals, num_frames, name)
  try:
    speaking = np.asarray(record.get("speaking", ()), np.int64).reshape(-1)
  except (TypeError, ValueError) as e:
    raise RecordError(f"video {name}: speaking holds a non-integer value ({e})") from None
  if speaking.size > num_frames:
    raise RecordError(f"video {name}: speaking has {speaking.size} values for "
                      f"{num_frames} frames")
  if not np.isin(speaking, (-1, 0, 1)).all():
    raise RecordError(f"video {name}: speaking values must be 1, 0 or -1, got "
                      f"{sorted(set(speaking.tolist()) - {-1, 0, 1})[:5]}")
  if speaking.size < num_frames:  # missing/short speaking track -> unknown
    speaking = np.concatenate([speaking, np.full(num_frames - speaking.size, -1)])
  try:
    fps = float(np.asarray(record.get("fps", 0.0)))
  except (TypeError, ValueError):
    fps = float("nan")
  if not (np.isfinite(fps) and fps > 0):
    raise RecordError(f"video {name}: fps must be a positive number, got "
                      f"{record.get('fps')!r}")
  return VideoInfo(
      video_id=_text(record.get("video_id", "")),
      subject=_text(record.get("subject", "")),
      fps=fps,
      num_frames=num_frames,
      intervals={k: v.astype(np.int32) for k, v in intervals.items()},
      speaking=speaking.astype(np.int8),
  )


class VideoIndex(collections.abc.Sequence):
  """Per-video metadata of a source, built by one pass, plus a reference to the source.

  Frames are not kept; `source` is kept so windows can be decoded later. `indices` maps
  position in the index to the record index in the source (filtering by subject keeps
  the source's numbering, which is what batches report as `video_index`).
  `infos` are the videos as the model sees them (every `frame_step`-th frame, see
  `with_frame_step`); `native_infos` as the corpus holds them (the same with step 1).
  """
  frame_step = 1

  def __init__(self, source: Sequence[dict], subjects: Sequence[str] | None = None,
               exclude_subjects: Sequence[str] | None = None):
    self.source = source
    self._keep(((i, video_info(source[i], i)) for i in range(len(source))),
               subjects, exclude_subjects)

  def _keep(self, videos, subjects=None, exclude_subjects=None, max_videos: int = 0):
    """Keeps the (source index, info) pairs of `videos` that the subject filters pass
    (the first `max_videos` of them; 0: all). A single string is refused: `in` on it matches
    substrings, so subjects="s10" would keep s1 and s10 too."""
    for name, value in (("subjects", subjects), ("exclude_subjects", exclude_subjects)):
      if isinstance(value, str):
        raise TypeError(f"VideoIndex: {name} must be a list of subject ids, got the "
                        f"string {value!r}; pass [{value!r}]")
    kept = [(i, v) for i, v in videos
            if (subjects is None or v.subject in subjects)
            and (exclude_subjects is None or v.subject not in exclude_subjects)]
    kept = kept[:max_videos] if max_videos else kept
    self.indices: list[int] = [i for i, _ in kept]
    self.native_infos: list[VideoInfo] = [v for _, v in kept]
    self._native_by_source = dict(kept)
    self.infos: list[VideoInfo] = [subsample_info(v, self.frame_step)
                                   for v in self.native_infos]
    self._by_source = dict(zip(self.indices, self.infos))

  def __len__(self) -> int:
    return len(self.infos)

  def __getitem__(self, i):
    return self.infos[i]

  def subset(self, subjects: Sequence[str] | None = None,
             exclude_subjects: Sequence[str] | None = None,
             max_videos: int = 0) -> "VideoIndex":
    """The index `VideoIndex(self.source, subjects, exclude_subjects)` would build (its
    first `max_videos` videos; 0: all), from this one's metadata: no record is read again
    (a LOSO run splits a long-video corpus three ways per fold, and every pass reads
    every video's frames)."""
    out = copy.copy(self)
    out._keep(zip(self.indices, self.native_infos), subjects, exclude_subjects, max_videos)
    return out

  def with_frame_step(self, step: int) -> "VideoIndex":
    """These videos seen at every `step`-th frame (`subsample_info`; frames through
    `FrameCache(..., frame_step)`), from the native metadata: no record is read again.
    Step 1 is the native index itself, and any view gives any other."""
    if step == self.frame_step:
      return self
    out = copy.copy(self)
    out.frame_step = int(step)
    out._keep(zip(self.indices, self.native_infos))
    return out

  def info(self, source_index: int) -> VideoInfo:
    """Metadata by record index in the source (of the video as the model sees it)."""
    return self._by_source[source_index]

  def native_info(self, source_index: int) -> VideoInfo:
    """Metadata by record index in the source, in the corpus's own frames."""
    return self._native_by_source[source_index]

  def check_unique_ids(self) -> None:
    """Evaluation keys scores, annotations and predictions by `video_id`: two videos of
    one id would silently leave one out of the metrics, so that is a RecordError."""
    seen = {}
    for i, v in zip(self.indices, self.infos):
      if v.video_id in seen:
        raise RecordError(f"video {v.video_id!r}: records {seen[v.video_id]} and {i} have "
                          "the same video_id; evaluation needs one id per video")
      seen[v.video_id] = i

  def to_annotations(self) -> dict:
    """The evaluator's `A.json` dict (SPEC §5) for these videos, in their native frames
    and fps whatever the `frame_step`: evaluation is at the corpus's resolution."""
    from meldae_jax.data import schema  # pylint: disable=g-import-not-at-top
    self.check_unique_ids()
    videos = {}
    for v in self.native_infos:
      videos[v.video_id] = {
          "num_frames": v.num_frames, "fps": v.fps,
          "intervals": [{"onset": int(a), "offset": int(b),
                         "type": schema.EXPRESSION_TYPES[int(t)]}
                        for a, b, t in zip(v.intervals["onset"], v.intervals["offset"],
                                           v.intervals["type"])],
          "speaking": [int(s) for s in v.speaking],
      }
    return {"videos": videos}


def as_index(source_or_index) -> VideoIndex:
  """Accepts a `VideoIndex` or a source (then indexes it)."""
  if isinstance(source_or_index, VideoIndex):
    return source_or_index
  return VideoIndex(source_or_index)


class LockedLRU:
  """Thread-safe LRU of at most `size` items (grain's read threads share it). It pickles
  empty: each worker process starts its own."""

  def __init__(self, size: int):
    self.size = int(size)
    self._items: collections.OrderedDict = collections.OrderedDict()
    self._lock = threading.Lock()

  def get(self, key):
    """The item, most recently used now, or None."""
    with self._lock:
      item = self._items.get(key)
      if item is not None:
        self._items.move_to_end(key)
      return item

  def put(self, key, item) -> None:
    with self._lock:
      self._items[key] = item
      while len(self._items) > self.size:
        self._items.popitem(last=False)

  def __getstate__(self):
    return {"size": self.size}

  def __setstate__(self, state):
    self.__init__(state["size"])


class FrameCache:
  """Thread-safe LRU of the `frames` lists of recently read records.

  Reading one record of a TFDS source deserialises the whole video, so consecutive
  windows of the same video should not read it again. Holds at most `size` videos per
  process (0 disables it; for in-memory lists it costs nothing either way).
  With `frame_step` k it gives every k-th frame's encoded bytes (`VideoIndex.frame_step`):
  the others are never decoded.
  """

  def __init__(self, source: Sequence[dict], size: int = 4, frame_step: int = 1):
    self._source = source
    self._size = size
    self._step = int(frame_step)
    self._items = LockedLRU(size)  # worker processes start with an empty cache

  def _read(self, index: int):
    frames = self._source[index]["frames"]
    return frames if self._step == 1 else frames[::self._step]

  def frames(self, index: int):
    if self._size <= 0:
      return self._read(index)
    frames = self._items.get(index)
    if frames is None:
      frames = self._read(index)
      self._items.put(index, frames)
    return frames


def open_source(name_or_builder: Any, split: str = "train",
                data_dir: str | None = None, config: str | None = None):
  """Returns a random-access source of records without TensorFlow.

  Args:
    name_or_builder: a corpus spec `name[/config]` under `datasets/` (built into
      `data_dir` by `python -m meldae_jax.data.build`), a TFDS builder, or already a
      source (anything with `__len__`/`__getitem__`, returned as is).
    split: TFDS split (slicing syntax allowed, e.g. 'train[:80%]').
    data_dir: TFDS data dir holding the prepared array_record files.
    config: builder config name, when not given in the spec.
  """
  if isinstance(name_or_builder, str):
    from meldae_jax.data import build  # pylint: disable=g-import-not-at-top
    spec = name_or_builder
    if config and "/" not in spec:
      spec = f"{spec}/{config}"
    return build.make_builder(spec, data_dir).as_data_source(split)
  if hasattr(name_or_builder, "as_data_source"):
    return name_or_builder.as_data_source(split)
  if hasattr(name_or_builder, "__getitem__") and hasattr(name_or_builder, "__len__"):
    return name_or_builder
  raise TypeError(f"cannot open a source from {type(name_or_builder).__name__}")
