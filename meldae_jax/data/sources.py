"""Opening record sources and indexing their videos without keeping frames.

A source is any random-access sequence of records (a TFDS `as_data_source` split or a
plain list of dicts, see docs/contracts.md). The pipeline needs per-video metadata
(length, labels) to lay out windows before reading any frame; `VideoIndex` gathers it in
one pass and drops the frame bytes.
"""
import collections
import collections.abc
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


def video_info(record: dict) -> VideoInfo:
  """Extracts the metadata of a record (dict or TFDS example)."""
  num_frames = len(record["frames"])
  iv = record.get("intervals") or {}
  intervals = {k: np.asarray(iv.get(k, ()), np.int32).reshape(-1)
               for k in ("onset", "apex", "offset", "type")}
  speaking = np.asarray(record.get("speaking", ()), np.int8).reshape(-1)
  if speaking.size != num_frames:  # missing/short speaking track -> unknown
    fixed = np.full((num_frames,), -1, np.int8)
    fixed[:min(num_frames, speaking.size)] = speaking[:num_frames]
    speaking = fixed
  return VideoInfo(
      video_id=_text(record.get("video_id", "")),
      subject=_text(record.get("subject", "")),
      fps=float(np.asarray(record.get("fps", 0.0))),
      num_frames=num_frames,
      intervals=intervals,
      speaking=speaking,
  )


class VideoIndex(collections.abc.Sequence):
  """Per-video metadata of a source, built by one pass, plus a reference to the source.

  Frames are not kept; `source` is kept so windows can be decoded later. `indices` maps
  position in the index to the record index in the source (filtering by subject keeps
  the source's numbering, which is what batches report as `video_index`).
  """

  def __init__(self, source: Sequence[dict], subjects: Sequence[str] | None = None,
               exclude_subjects: Sequence[str] | None = None):
    self.source = source
    infos, indices = [], []
    for i in range(len(source)):
      info = video_info(source[i])
      if subjects is not None and info.subject not in subjects:
        continue
      if exclude_subjects is not None and info.subject in exclude_subjects:
        continue
      infos.append(info)
      indices.append(i)
    self.infos: list[VideoInfo] = infos
    self.indices: list[int] = indices
    self._by_source = dict(zip(indices, infos))

  def __len__(self) -> int:
    return len(self.infos)

  def __getitem__(self, i):
    return self.infos[i]

  def info(self, source_index: int) -> VideoInfo:
    """Metadata by record index in the source."""
    return self._by_source[source_index]

  def to_annotations(self) -> dict:
    """The evaluator's `A.json` dict (SPEC §5) for these videos."""
    from meldae_jax.data import schema  # pylint: disable=g-import-not-at-top
    videos = {}
    for v in self.infos:
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


class FrameCache:
  """Thread-safe LRU of the `frames` lists of recently read records.

  Reading one record of a TFDS source deserialises the whole video, so consecutive
  windows of the same video should not read it again. Holds at most `size` videos per
  process (0 disables it; for in-memory lists it costs nothing either way).
  """

  def __init__(self, source: Sequence[dict], size: int = 4):
    self._source = source
    self._size = size
    self._items: collections.OrderedDict = collections.OrderedDict()
    self._lock = threading.Lock()

  def frames(self, index: int):
    if self._size <= 0:
      return self._source[index]["frames"]
    with self._lock:
      if index in self._items:
        self._items.move_to_end(index)
        return self._items[index]
    frames = self._source[index]["frames"]
    with self._lock:
      self._items[index] = frames
      while len(self._items) > self._size:
        self._items.popitem(last=False)
    return frames

  def __getstate__(self):  # worker processes start with an empty cache
    return {"_source": self._source, "_size": self._size}

  def __setstate__(self, state):
    self.__init__(state["_source"], state["_size"])


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
