"""grain input pipeline: fixed-length windows of long videos -> numpy batches.

Training (`make_train_iterator`): the windows of every video start on a stride grid (plus
one end-aligned window, `align_end`); the window table is sharded per JAX process,
reshuffled every epoch in read-friendly order (`windows.EpochOrder`: a record holds a
whole video, so ~`windows_per_read` windows are taken per read and `mix_videos` videos
are mixed), and each window is read by decoding only its T frames, augmented
identically across its frames and batched into the dict of docs/contracts.md. Everything
random is a function of `seed` and the element index (`EpochOrder`, grain's
`random_map`), so the iterator is deterministic and its `get_state()` (a small JSON-able
dict) restores the exact next batch. The batch sequence also depends on `worker_count`
(grain deals elements to worker processes), so resume with the same settings.

Evaluation (`make_eval_iterator` / `eval_windows`): every video is covered by overlapping
windows (stride grid + one window aligned to the last frame; a video shorter than T gets
one padded window at 0), in source order, without augmentation. The last batch is padded
to `batch_size` with empty windows; `batch_valid` (B,) marks the real ones (padding rows
have `video_index = start = -1` and `frame_mask = 0`). `ScoreAverager` averages the
window scores per frame.

Checkpointing with orbax (grain >= 0.2.18 registers its handler with orbax):
  ocp.args.Composite(state=ocp.args.StandardSave(state),
                     data=grain.checkpoint.CheckpointSave(train_iter))
and on restore `data=grain.checkpoint.CheckpointRestore(fresh_train_iter)`; the handler
writes `process_<i>-of-<n>.json` with `iterator.get_state()`. Equivalently store
`json.dumps(it.get_state())` yourself and call `it.set_state(json.loads(...))` on an
iterator built with the same arguments.
"""
from typing import Any, Sequence

import cv2
import grain
import numpy as np

from meldae_jax import intervals
from meldae_jax.data import augment as augment_lib
from meldae_jax.data import sources
from meldae_jax.data import windows as windows_lib

BATCH_KEYS = ("video", "frame_mask", "labels", "boundary", "speaking", "me_label",
              "state_label", "state_valid", "video_index", "start")


def _seed(seed: int, salt: int, shard: int = 0) -> int:
  """Independent 32-bit seeds for the pipeline's random ops, all derived from `seed`.

  `shard` > 0 gives each process's own seed (shard 0 keeps a single process's seeds).
  """
  entropy = [int(seed) % 2**32, salt] + ([int(shard)] if shard else [])
  return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def decode_frame(data, video_id: str = "", frame: int = -1) -> np.ndarray:
  """Encoded PNG/JPEG bytes -> (H, W, 3) BGR uint8 (cv2's order; converted later).

  Bytes that are no image are a `sources.RecordError` (the commands' one-line error).
  """
  img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  if img is None:
    raise sources.RecordError(f"video {video_id!r}: cannot decode frame {frame}")
  return img


class WindowLoader:
  """Picklable grain map: `(video_index, start)` -> one window's arrays.

  Reads the record through a small per-process LRU (`cache_videos`) and decodes only
  frames `[start, start + T)`; a row `(-1, -1)` gives an empty (all padding) window.
  Frames and labels are those of `index`'s view: with `frame_step` k, frame j is native
  frame j k (`sources.VideoIndex.with_frame_step`). `keep_frames` > 0 keeps that many
  finished frames of unaugmented windows, so overlapping eval windows decode each frame
  about once (the frames are the same either way).
  """

  def __init__(self, index: sources.VideoIndex, window: int, classes: Sequence[str],
               image_size: int, augment: augment_lib.AugmentConfig | None = None,
               cache_videos: int = 4, keep_frames: int = 0):
    self.index = index
    self.window = int(window)
    self.classes = tuple(classes)
    self.image_size = int(image_size)
    self.augment = augment
    self._frames = sources.FrameCache(index.source, cache_videos, index.frame_step)
    # Finished frames of unaugmented windows, keyed (video_index, frame): overlapping eval
    # windows (stride < T) decoded and resized each frame T / stride times without them.
    self._done = (sources.LockedLRU(keep_frames) if keep_frames > 0 and augment is None
                  else None)
    windows_lib.class_ids(self.classes)  # fail early on unknown class names

  def empty(self) -> dict:
    t, s, k = self.window, self.image_size, len(self.classes)
    return {
        "video": np.zeros((t, s, s, 3), np.uint8),
        "frame_mask": np.zeros((t,), np.float32),
        "labels": np.zeros((t, k), np.float32),
        "boundary": np.zeros((t, k), np.float32),
        "speaking": np.full((t,), -1, np.int8),
        "me_label": np.float32(0), "state_label": np.float32(0),
        "state_valid": np.float32(0),
        "video_index": np.int32(-1), "start": np.int32(-1),
    }

  def __call__(self, entry, rng: np.random.Generator | None = None) -> dict:
    video_index, start = int(entry[0]), int(entry[1])
    if video_index < 0:
      return self.empty()
    info = self.index.info(video_index)
    out = windows_lib.window_labels(info.intervals, info.speaking, info.num_frames, start,
                                    self.window, self.classes)
    out["video"] = self._decode(video_index, info, start, rng)
    out["video_index"] = np.int32(video_index)
    out["start"] = np.int32(start)
    return out

  def _decode(self, video_index: int, info: sources.VideoInfo, start: int,
              rng: np.random.Generator | None) -> np.ndarray:
    s = self.image_size
    video = np.zeros((self.window, s, s, 3), np.uint8)
    n = max(0, min(self.window, info.num_frames - start))
    if n == 0:
      return video
    frames = self._frames.frames(video_index)
    aug = lut = None
    for j in range(n):
      if self._done is not None:
        done = self._done.get((video_index, start + j))
        if done is not None:
          video[j] = done
          continue
      img = decode_frame(frames[start + j], info.video_id,
                         (start + j) * self.index.frame_step)  # named as the corpus does
      if j == 0 and self.augment is not None and rng is not None:
        aug = augment_lib.sample(rng, img.shape[0], img.shape[1], self.augment)
        lut = aug.lut()
      if aug is None:
        img = augment_lib.resize(img, s)
      else:
        img = augment_lib.apply_to_frame(img, aug, lut, s)
      cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=video[j])
      if self._done is not None:
        self._done.put((video_index, start + j), video[j].copy())
    if aug is not None:
      augment_lib.apply_low_light(video[:n], aug, rng)
    return video


def collate(windows: Sequence[dict]) -> dict:
  """Stacks window dicts into the batch dict of docs/contracts.md (plus any extra keys)."""
  keys = [k for k in BATCH_KEYS if k in windows[0]]
  keys += [k for k in windows[0] if k not in BATCH_KEYS]
  return {k: np.stack([w[k] for w in windows]) for k in keys}


def train_windows(index: sources.VideoIndex, window: int, stride: int,
                  me_oversample: int = 1, align_end: bool = True) -> np.ndarray:
  """The epoch's window table, int32 rows `(video_index, start)`, in source order.

  `me_oversample = m > 1` lists every window that overlaps a micro interval m times, so
  ME windows are drawn m times as often per epoch (default 1: uniform over the grid).
  """
  rows = []
  for vi, info in zip(index.indices, index.infos):
    for st in windows_lib.train_starts(info.num_frames, window, stride, align_end):
      reps = 1
      if me_oversample > 1 and windows_lib.window_has_micro(
          info.intervals, info.num_frames, int(st), window):
        reps = int(me_oversample)
      rows.extend([(vi, int(st))] * reps)
  return np.asarray(rows, np.int32).reshape(-1, 2)


def eval_window_table(index: sources.VideoIndex, window: int, stride: int) -> np.ndarray:
  """All eval windows, `(video_index, start)` rows, videos in source order."""
  rows = [(vi, int(st)) for vi, info in zip(index.indices, index.infos)
          for st in windows_lib.eval_starts(info.num_frames, window, stride)]
  return np.asarray(rows, np.int32).reshape(-1, 2)


def _process_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"bad shard {shard_index} of {shard_count}")
  return int(shard_index), int(shard_count)


def _read_options(num_threads: int, buffer: int) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=int(num_threads),
                           prefetch_buffer_size=int(buffer) if num_threads else 0)


def make_train_dataset(source, *, window: int, stride: int, batch_size: int,
                       classes: Sequence[str] = ("micro",), image_size: int = 112,
                       seed: int = 0, augment: Any = True,
                       shard_index: int | None = None, shard_count: int | None = None,
                       num_epochs: int | None = None, drop_remainder: bool = True,
                       me_oversample: int = 1, align_end: bool = True,
                       num_threads: int = 2, prefetch_windows: int | None = None,
                       worker_count: int = 0, worker_buffer_size: int = 2,
                       windows_per_read: int = 16, mix_videos: int = 8,
                       cache_videos: int | None = None) -> grain.IterDataset:
  """The training `grain.IterDataset` of batch dicts (see module doc).

  Args:
    source: a record source or a `sources.VideoIndex` of one.
    window, stride: window length T and start grid step, in frames.
    batch_size: windows per batch on this process.
    classes: ('micro',) or ('micro', 'macro') -> K of `labels`/`boundary`.
    image_size: side S of the output frames (stored crops are resized when different).
    seed: drives the shard split, the per-epoch shuffles and the augmentation.
    augment: False/None, True (defaults of `augment.AugmentConfig`), a dict of its fields
      or an `AugmentConfig`.
    shard_index, shard_count: this process's shard; default `jax.process_index()` /
      `jax.process_count()`. The window table is permuted with `seed` (same on every
      process) and cut into equal strided shards (fixed for the run; each shard is
      reshuffled every epoch); the < shard_count leftover windows are dropped so all
      processes step in lockstep.
    num_epochs: None repeats forever (each epoch reshuffled).
    drop_remainder: drop the last incomplete batch (only matters for finite epochs).
    me_oversample: see `train_windows`.
    align_end: add an end-aligned window per video so tails are sampled too.
    num_threads: grain read threads decoding windows (0 = in the calling thread).
    prefetch_windows: windows read ahead per process (default 2 batches).
    worker_count: >0 moves the whole pipeline into that many worker processes
      (`mp_prefetch`); default 0 suits 2-core machines.
    worker_buffer_size: batches buffered per worker process.
    windows_per_read, mix_videos: read-friendly epoch order (`windows.EpochOrder`):
      about `windows_per_read` windows are drawn per record read, and consecutive windows
      mix `mix_videos` videos. 1 gives a uniform shuffle (fine for in-memory sources;
      for array_record sources of long videos every window would re-read its video).
    cache_videos: records kept per process (`FrameCache`); default `2 * mix_videos`.
  """
  index = sources.as_index(source)
  shard_index, shard_count = _process_shard(shard_index, shard_count)
  table = train_windows(index, window, stride, me_oversample, align_end)
  if len(table) == 0:
    raise ValueError("the source has no videos to sample windows from")
  if shard_count > 1:
    per_shard = len(table) // shard_count
    if per_shard == 0:
      raise ValueError(f"{len(table)} windows cannot fill {shard_count} shards")
    perm = np.random.default_rng(_seed(seed, 1)).permutation(len(table))
    table = table[perm[shard_index:per_shard * shard_count:shard_count]]
  # Per-process seeds for the order and the augmentation: grain draws an element's
  # randomness from the seed and the element's position, so one seed everywhere would
  # give every process's i-th window the same crop, flip and colour draws.
  order = windows_lib.EpochOrder(table, _seed(seed, 2, shard_index), windows_per_read,
                                 mix_videos, num_epochs)
  ds = grain.MapDataset.source(order)
  if cache_videos is None:
    cache_videos = 2 * mix_videos
  loader = WindowLoader(index, window, classes, image_size,
                        augment_lib.as_config(augment), cache_videos)
  if loader.augment is not None:
    ds = ds.random_map(loader, seed=_seed(seed, 3, shard_index))
  else:
    ds = ds.map(loader)
  buffer = prefetch_windows if prefetch_windows is not None else max(2 * batch_size, 4)
  it_ds = ds.to_iter_dataset(_read_options(num_threads, buffer))
  it_ds = it_ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=collate)
  if worker_count > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (outside app.run)
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=int(worker_count), per_worker_buffer_size=int(worker_buffer_size)),
        sequential_slice=True)
  return it_ds


def make_train_iterator(source, **kwargs) -> grain.DatasetIterator:
  """`iter(make_train_dataset(...))`: has `get_state()` / `set_state()` for resuming."""
  return iter(make_train_dataset(source, **kwargs))


def make_eval_dataset(source, *, window: int, stride: int | None = None,
                      batch_size: int, classes: Sequence[str] = ("micro",),
                      image_size: int = 112, shard_index: int = 0, shard_count: int = 1,
                      num_threads: int = 2, prefetch_windows: int | None = None,
                      cache_videos: int = 2) -> grain.IterDataset:
  """The evaluation `grain.IterDataset` (see module doc); finite, deterministic order.

  `stride` defaults to `window // 2`. Sharding is off by default (every process sees
  every window); with `shard_count > 1` windows are dealt round-robin and every shard is
  padded to the same number of full batches, so processes stay in lockstep and the
  evaluator must gather the per-process results.
  """
  index = sources.as_index(source)
  stride = stride or max(1, window // 2)
  table = eval_window_table(index, window, stride)
  if shard_count > 1:
    per_shard = -(-len(table) // shard_count)
    table = _pad_rows(table, per_shard * shard_count)[shard_index::shard_count]
  table = _pad_rows(table, -(-len(table) // batch_size) * batch_size)
  # Finished frames kept: the frames of the windows the read threads work on at once
  # (consecutive windows, in order), so overlapping windows decode each frame once.
  loader = WindowLoader(index, window, classes, image_size, None, cache_videos,
                        keep_frames=(int(num_threads) + 2) * int(window))
  ds = grain.MapDataset.source(table).map(loader).map(_mark_valid)
  buffer = prefetch_windows if prefetch_windows is not None else max(2 * batch_size, 4)
  return ds.to_iter_dataset(_read_options(num_threads, buffer)).batch(
      batch_size, drop_remainder=False, batch_fn=collate)


def make_eval_iterator(source, **kwargs) -> grain.DatasetIterator:
  """`iter(make_eval_dataset(...))`."""
  return iter(make_eval_dataset(source, **kwargs))


def eval_windows(source_or_index, window: int, stride: int | None = None, *,
                 batch_size: int = 8, **kwargs):
  """Yields the eval batches (with `batch_valid`) covering every frame of every video."""
  yield from make_eval_iterator(source_or_index, window=window, stride=stride,
                                batch_size=batch_size, **kwargs)


def _pad_rows(table: np.ndarray, n: int) -> np.ndarray:
  pad = np.full((n - len(table), 2), -1, np.int32)
  return np.concatenate([table, pad]) if len(pad) else table


def _mark_valid(window: dict) -> dict:
  window["batch_valid"] = np.float32(window["video_index"] >= 0)
  return window


class ScoreAverager:
  """Averages overlapping window scores per frame (SPEC §5, first step of decoding).

  `add(batch, scores)` with scores (B, T, ...) uses `video_index`, `start`, `frame_mask`
  and `batch_valid`; `result()` maps source video index -> (num_frames, ...) mean score,
  in native frames: with a `frame_step` view the sampled frames' means are interpolated
  back to every frame of the video (`intervals.to_native_frames`), so decoding and the
  evaluation see the corpus's own frames.
  """

  def __init__(self, source_or_index):
    self.index = sources.as_index(source_or_index)
    self._windows: dict[int, list] = {}  # video index -> [(start, scores, mask)]

  def add(self, batch: dict, scores) -> None:
    scores = np.asarray(scores, np.float64)
    valid = np.asarray(batch.get("batch_valid", np.ones(len(scores))))
    for b in range(len(scores)):
      vi = int(batch["video_index"][b])
      if vi < 0 or not valid[b]:
        continue
      self._windows.setdefault(vi, []).append(
          (int(batch["start"][b]), scores[b], np.asarray(batch["frame_mask"][b])))

  def result(self) -> dict[int, np.ndarray]:
    out = {}
    for vi, wins in self._windows.items():
      starts, scores, masks = zip(*wins)
      mean = intervals.aggregate_windows(
          self.index.info(vi).num_frames, starts, np.stack(scores), np.stack(masks))
      out[vi] = intervals.to_native_frames(mean, self.index.native_info(vi).num_frames,
                                           self.index.frame_step)
    return out
