r"""Spot micro-expressions in your own videos with a trained workdir.

  python -m meldae_jax.spot --workdir=WORKDIR --video=clip.mp4 [--video=frames_dir/] \
      --out=OUT [--fps=200] [--threshold=0.4] [--config=configs/wdmd.py]

A video is a file OpenCV reads (.mp4, .avi, ...) or a folder of numbered frame images
(`img1.jpg`, `006_1_0001.jpg`, ...: ordered by the last number in the name; its frame rate
from `--fps`). A video file's rate is its container's unless `--fps` is given: high-speed
recordings are often saved with a player's rate (and OpenCV reports 25 for a file that
gives none), so an explicit `--fps` wins, with a note when it differs. Each is cut to
one stable face box as the corpus builders cut theirs (`data/face_crop.py`: Haar cascade on
16 frames spread over the video, median box, +20 % margin; the centre square when no face
is found, with a warning), stored as the run's corpus stored its crops (its builder
config's size and encoding, e.g. 112 px JPEG q90, which the input pipeline resizes to the
model's input as in training), scored with the workdir's best checkpoint over the
overlapping windows evaluation uses (every `dataset.frame_step`-th frame, as the run was
trained; the scores come back at every frame of the video), and decoded at the video's
fps with the threshold chosen on validation for that checkpoint (the config's
`eval.threshold` when the run had no validation data).
Videos are cut and scored one at a time (memory: one video's crops), a long one with a
progress line every 30 s (frames read, cut, windows scored). Every input and the
output folder are checked before the model runs, nothing is written to the workdir, and
the outputs appear in OUT only when all videos are done:

  OUT/predictions.json   SPEC §5's P.json (0-based inclusive frames, type, score; per
                         interval also onset_s/offset_s in seconds), with per video its
                         num_frames, fps, face_box and path, and for all of them the
                         threshold used, checkpoint_step, classes and workdir
  OUT/scores.npz         per-frame scores, video_id -> (num_frames, K classes)
  OUT/<video_id>.png     the score track against time, the threshold, the intervals
                         (the smoothed track decoding thresholds, with eval.smooth_seconds)

The model config is the workdir's `config.json` (written by training); `--config` (with
`--config.a.b=value` overrides) replaces it. Exit status: 0 done; 2 a video, the output
folder, the workdir or its checkpoint is missing or unusable (one line on stderr); 4 the
checkpoint was saved with other model settings than the config.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import time
from typing import Any, Callable, Iterable, NamedTuple, Sequence

from absl import app
from absl import flags
import cv2
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from meldae_jax import checkpointing
from meldae_jax import cli
from meldae_jax import config_check
from meldae_jax import intervals as intervals_lib
from meldae_jax import predict
from meldae_jax import sharding
from meldae_jax import train
from meldae_jax.data import corpus_utils
from meldae_jax.data import face_crop
from meldae_jax.data import sources

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
PROGRESS_SECONDS = 30.0  # between progress lines of one long video's reading and scoring


class SpotError(ValueError):
  """A video, folder or workdir that cannot be used; the one-line message names it."""


class Progress:
  """`progress(done, total, what)`: a line every PROGRESS_SECONDS of one video's long work
  (a 30-minute recording is read twice and scored for many minutes; it showed nothing)."""

  def __init__(self, video_id: str):
    self.video_id, self.what = video_id, None
    self.start = self.last = time.monotonic()

  def __call__(self, done: int, total: int | None, what: str) -> None:
    now = time.monotonic()
    if what != self.what:  # a new stage
      self.what, self.start, self.last = what, now, now
    if now - self.last < PROGRESS_SECONDS or (total and done >= total):
      return
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    left = f", about {(total - done) / rate:.0f} s left" if total else ""
    train.say(f"[spot] {self.video_id}: {done}{f' of {total}' if total else ''} {what} "
              f"({rate:.1f}/s{left})")


def _counted(frames: Iterable, progress: Progress, total: int | None, what: str):
  for i, frame in enumerate(frames, 1):
    yield frame
    progress(i, total, what)


@dataclasses.dataclass
class Video:
  """One input: where it is, its id and frame rate, and its RGB frames."""
  path: str
  video_id: str
  fps: float
  frames: Callable[[], Iterable[np.ndarray]]  # a fresh pass (or a lazy sequence) per call
  num_frames: int | None = None  # a file's are counted as they are read (face_record)
  files: Sequence[str] | None = None  # a folder's frame images, in order
  frame_times_ms: list | None = None  # a file's frame timestamps, from its last full read
  container: tuple[float, float] | None = None  # a file's (frame count, fps) as its
  # container says: estimates, the decoded count rules (`cut_short`)


def _video_file(path: str, fps: float | None) -> Video:
  cap = cv2.VideoCapture(path)
  try:
    if not cap.isOpened():
      raise SpotError(f"{path}: OpenCV cannot open this video")
    own = float(cap.get(cv2.CAP_PROP_FPS))
    said = float(cap.get(cv2.CAP_PROP_FRAME_COUNT))
  finally:
    cap.release()
  if fps and own > 0 and abs(own - fps) > 1e-3:
    train.say(f"[spot] {path}: the file gives {own:g} fps; read at --fps {fps:g}")
  rate = fps or own
  if not rate > 0:
    raise SpotError(f"{path}: the video reports no frame rate; give it with --fps")

  def read():
    cap = cv2.VideoCapture(path)
    times = []
    try:
      while True:
        ok, bgr = cap.read()
        if not ok:
          video.frame_times_ms = times  # a whole pass: the timestamps of every frame
          return
        times.append(float(cap.get(cv2.CAP_PROP_POS_MSEC)))
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
      cap.release()

  video = Video(path, _video_id(path), float(rate), read)  # frames counted as they are
  # read: a container's frame count is an estimate
  video.container = (said, own) if math.isfinite(said) and said > 0 else None
  if next(read(), None) is None:
    raise SpotError(f"{path}: no frame could be decoded")
  return video


def uneven_timing(times_ms: Sequence[float]) -> tuple[float, float, float] | None:
  """(drift s, shortest and longest frame interval ms) where a file's frames are not evenly
  spaced in time by more than one frame interval (a variable-frame-rate recording, e.g. a
  phone's), else None. Frames are scored as evenly spaced, so their times drift that much."""
  t = np.asarray(times_ms, np.float64)
  if len(t) < 3 or not np.all(np.isfinite(t)) or t[-1] <= t[0]:
    return None  # too short, or a backend that gives no timestamps
  dt = np.diff(t)
  even = t[0] + np.arange(len(t)) * (t[-1] - t[0]) / (len(t) - 1)
  drift = float(np.max(np.abs(t - even)))
  if drift <= float(np.median(dt)):
    return None
  return drift / 1000.0, float(dt.min()), float(dt.max())


def cut_short(num_frames: int, times_ms: Sequence[float] | None,
              container: tuple[float, float] | None) -> bool:
  """Whether a file decoded to over 10 % fewer frames than its container says, its last
  frame (where it gives timestamps) over 10 % before the container's end: a file whose
  end is missing (a half-copied download). A variable-frame-rate file's count can be an
  estimate (duration x its top rate) its frames fall short of, while their times reach
  the end."""
  if not container or num_frames >= 0.9 * container[0] - 1:
    return False
  said, fps = container
  last = times_ms[-1] / 1000.0 if times_ms else 0.0
  if fps > 0 and math.isfinite(last) and last > 0:
    return last + 1.0 / fps < 0.9 * said / fps
  return True


def _frame_folder(path: str, fps: float | None) -> Video:
  numbered = {}
  for name in os.listdir(path):
    if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
      continue  # dotfiles: macOS's ._img1.png and the like
    digits = re.findall(r"\d+", os.path.splitext(name)[0])
    if not digits:
      raise SpotError(f"{os.path.join(path, name)}: a frame image without a frame number "
                      "in its name")
    n = int(digits[-1])
    if n in numbered:
      raise SpotError(f"{path}: frames {numbered[n]} and {name} have the same number {n}")
    numbered[n] = name
  if not numbered:
    others = sorted(n for n in os.listdir(path) if not n.startswith(".")
                    and os.path.isfile(os.path.join(path, n)))
    hint = (f"; it holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}: "
            "give each video file its own --video" if others else "")
    raise SpotError(f"{path}: no frame images ({', '.join(IMAGE_SUFFIXES)}) in this "
                    f"folder{hint}")
  if not (fps and fps > 0):
    raise SpotError(f"{path}: a folder of frames has no frame rate; give it with --fps")
  order = sorted(numbered)
  gaps = [(a, b) for a, b in zip(order, order[1:]) if b > a + 1]  # not a set of the
  if gaps:  # whole range: timestamps as names span billions of numbers
    count = sum(b - a - 1 for a, b in gaps)
    first = [n for a, b in gaps[:5] for n in range(a + 1, min(b, a + 6))][:5]
    shown = ", ".join(map(str, first)) + (", ..." if count > len(first) else "")
    train.say(f"[spot] {path}: WARNING: {count} frame number(s) missing ({shown}); "
              "the frames after a gap are taken as consecutive, so their times shift")
  files = [os.path.join(path, numbered[n]) for n in order]
  sequence = corpus_utils.ImageSequence(files)  # sampled as the folder builders sample
  return Video(path, _video_id(path), float(fps), lambda: sequence, len(files), files)


def _video_id(path: str) -> str:
  """A file's name without its extension; a folder's whole name (`take.1`, and `.`'s)."""
  name = os.path.basename(os.path.abspath(path))
  return name if os.path.isdir(path) else os.path.splitext(name)[0]


def open_videos(paths: Sequence[str], fps: float | None = None) -> list[Video]:
  """Checks every input before any work: readable, a frame rate, ids unique."""
  videos, seen = [], {}
  for path in paths:
    if os.path.isdir(path):
      video = _frame_folder(path, fps)
    elif path.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(path):
      raise SpotError(f"{path}: one image; pass the folder of a video's frame images")
    elif os.path.isfile(path):
      video = _video_file(path, fps)
    else:
      raise SpotError(f"{path}: no such video file or frame folder")
    if video.video_id in seen:
      raise SpotError(f"{path}: video id {video.video_id!r} is also that of "
                      f"{seen[video.video_id]}; rename one of them")
    seen[video.video_id] = path
    videos.append(video)
  return videos


def face_record(video: Video, size: int, encoding: str = "jpeg",
                detector: face_crop.Detector | None = None,
                frame_step: int = 1, *, face_sample: int = 16,
                face_margin: float = 0.2) -> tuple[dict, tuple]:
  """The video as a corpus record (shared schema, no labels) and its face box (from
  `face_sample` frames, grown by `face_margin`: the run's corpus's `stored_crops`).

  With `frame_step` k (the run's `dataset.frame_step`) only frames 0, k, 2k, ... are cut
  and encoded, the only ones the model reads; the others hold b"" (never decoded), and a
  folder's images of those frames are not read.
  """
  count, shape, progress = [0], [None], Progress(video.video_id)

  def checked(frames):  # one size for all frames, and the frame named where it differs
    for i, frame in enumerate(frames):
      if shape[0] is None:
        shape[0] = frame.shape[:2]
      elif frame.shape[:2] != shape[0]:
        where = video.files[i] if video.files else f"{video.path} frame {i}"
        raise SpotError(f"{where}: {frame.shape[1]}x{frame.shape[0]} pixels, the frames "
                        f"before it {shape[0][1]}x{shape[0][0]}")
      count[0] = i + 1
      yield frame

  try:
    first = video.frames()
    try:  # a file is read whole (and counted) here, a folder's 16 images only
      box = face_crop.stable_face_box(first if video.files else _counted(
          checked(first), progress, None, "frames read for the face box"),
                                      sample=face_sample, margin=face_margin,
                                      detector=detector, name=video.path)
    except ValueError as e:  # sampled frames of different sizes: name the image
      for _ in checked(video.frames()):
        pass
      raise SpotError(f"{video.path}: {e}") from e
    expected = video.num_frames if video.files else count[0]
    if video.files:  # a folder's images are read only where cut (the sequence checks sizes)
      images = video.frames()
      source = (images[i] if i % frame_step == 0 else None for i in range(len(images)))
    else:  # a file is decoded frame after frame anyway
      source = checked(video.frames())
    frames = [corpus_utils.encode_frame(face_crop.crop_and_resize(f, box, size), encoding)
              if i % frame_step == 0 else b"" for i, f in enumerate(_counted(
                  source, progress, expected, "frames cut"))]
  except corpus_utils.CorpusError as e:  # an unreadable frame image
    raise SpotError(str(e)) from e
  if len(frames) != expected:
    raise SpotError(f"{video.path}: read {expected} frames, then {len(frames)}; "
                    "the video is not stable to decode")
  video.num_frames = len(frames)
  if cut_short(len(frames), video.frame_times_ms, video.container):
    train.say(f"[spot] {video.path}: WARNING: the file says {video.container[0]:.0f} "
              f"frames, {len(frames)} could be decoded (truncated or damaged?); only "
              "those are spotted")
  uneven = uneven_timing(video.frame_times_ms) if video.frame_times_ms else None
  if uneven:
    train.say(f"[spot] {video.path}: WARNING: variable frame rate (frames "
              f"{uneven[1]:.1f} to {uneven[2]:.1f} ms apart): frames are taken as evenly "
              f"spaced at {video.fps:g} fps, so times are off by up to {uneven[0]:.2f} s; "
              "re-encode at a constant rate (ffmpeg -i IN -fps_mode cfr OUT)")
  record = {"video_id": video.video_id, "subject": "", "fps": np.float32(video.fps),
            "frames": frames,
            "intervals": {k: [] for k in ("onset", "apex", "offset", "type")},
            "speaking": np.full((len(frames),), -1, np.int8)}
  return record, tuple(int(v) for v in box)


class Crops(NamedTuple):
  """How the run's corpus cut its face crops, so spot cuts the same: square `size` px in
  `encoding`, the face box from `face_sample` frames grown by `face_margin` per side."""
  size: int
  encoding: str
  face_sample: int = 16
  face_margin: float = 0.2


def stored_crops(cfg: ml_collections.ConfigDict) -> Crops:
  """The crops the run's corpus stored, as training saw them (the builder config's)."""
  default = Crops(int(train.model_config(cfg).image_size), "jpeg")
  try:
    builder = corpus_utils.builder_class(cfg.dataset.name)
  except Exception:  # pylint: disable=broad-except  (a corpus of the user's own)
    return default
  configs = {c.name: c for c in builder.BUILDER_CONFIGS}
  name = cfg.dataset.get("builder_config") or builder.BUILDER_CONFIGS[0].name
  config = configs.get(name)
  stored = getattr(config, "size", None) or getattr(config, "image_size", None)
  return Crops(int(stored or default.size), str(getattr(config, "encoding", default.encoding)),
               int(getattr(config, "face_sample", default.face_sample)),
               float(getattr(config, "face_margin", default.face_margin)))


def fit_mesh(cfg: ml_collections.ConfigDict, tag: str = "spot") -> ml_collections.ConfigDict:
  """`cfg` with a mesh this machine's devices fill: the run's where they do, else all of
  them on `data` (a note says so). A model trained with FSDP on 8 GPUs is spotted on the
  machine at hand; a mesh places the arrays, it does not change what they hold."""
  try:
    sharding.mesh_shape(cfg.mesh, jax.device_count())
    return cfg
  except ValueError as e:
    cfg = copy.deepcopy(cfg)
    with cfg.unlocked():
      cfg.mesh.data, cfg.mesh.fsdp = -1, 1
    train.say(f"[{tag}] the run's mesh does not fit here ({e}): all {jax.device_count()} "
              "device(s) on the data axis instead")
    return cfg


def load_config(workdir: str, config: ml_collections.ConfigDict | None
                ) -> ml_collections.ConfigDict:
  """`config` (checked as a run checks it), else the one the run in `workdir` saved
  (SpotError where neither is)."""
  if not os.path.isdir(workdir):
    raise SpotError(f"{workdir}: no such workdir")
  if config is not None:
    try:
      config_check.check(config)
    except config_check.ConfigError as e:
      raise SpotError(str(e)) from None
    return config
  saved = train._saved_config(workdir)  # pylint: disable=protected-access
  if saved is None:
    hint = _fold_hint(workdir)  # a LOSO driver's workdir holds no config.json of its own
    if hint:
      raise SpotError(f"{workdir}: no config.json or checkpoint to spot with{hint}")
    raise SpotError(f"{os.path.join(workdir, 'config.json')}: missing or unreadable; "
                    "pass the run's --config")
  return ml_collections.ConfigDict(saved)


def _fold_hint(workdir: str) -> str:
  """' (a leave-one-subject-out run: pass a fold's folder, e.g. ...)' where `workdir` is
  the LOSO driver's (its `fold_<S>/` folders hold the runs), else ''."""
  try:
    folds = sorted(d for d in os.listdir(workdir) if d.startswith("fold_")
                   and os.path.isdir(os.path.join(workdir, d)))
  except OSError:
    return ""
  return (f" (a leave-one-subject-out run: pass a fold's folder, e.g. "
          f"{os.path.join(workdir, folds[0])})" if folds else "")


def restore(cfg, workdir: str, trainer: train.Trainer, tag: str = "spot",
            saved: dict | None = None) -> tuple[Any, float, int]:
  """(params, threshold, step) of the best checkpoint, else of the latest. Read-only.
  `tag` prefixes its notes: the command's (attention_maps restores through here too).
  `saved`: the workdir's config.json where the caller has read it already."""
  if saved is None:
    saved = train._saved_config(workdir)  # pylint: disable=protected-access
  note = train.frame_step_change(saved, cfg)
  if note:  # a --config that is not the run's
    train.say(f"[{tag}] {note}")
  ckpt = checkpointing.Checkpointer(workdir, keep=cfg.checkpoint.keep,
                                    best_metric=cfg.checkpoint.best_metric, read_only=True)
  try:
    best_step, best_metrics = ckpt.best_info()
    if best_step is not None:
      _, state = ckpt.restore_best(trainer.abstract_state)
      return state.params, float(best_metrics["threshold"]), int(best_step)
    if ckpt.latest_step() is None:
      raise SpotError(f"{workdir}: no checkpoint to spot with{_fold_hint(workdir)}")
    state = ckpt.restore(trainer.abstract_state)
    train.say(f"[{tag}] no best checkpoint (the run had no validation data): the latest, "
              f"with eval.threshold {float(cfg.eval.threshold):.2f}")
    return state.params, float(cfg.eval.threshold), int(jax.device_get(state.step))
  finally:
    ckpt.close()


def plot(path: str, scores: np.ndarray, fps: float, classes: Sequence[str],
         threshold: float, intervals: Sequence[dict], title: str,
         smooth_seconds: Any = None) -> None:
  """The score track per class against time, the threshold and the spotted intervals.
  With `smooth_seconds` (the run's `eval.smooth_seconds`) the track that is thresholded is
  the smoothed one: it is drawn solid, the raw per-frame scores (scores.npz) faint."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  t = np.arange(len(scores)) / fps
  colours = {"micro": "tab:red", "macro": "tab:orange"}
  fig, ax = plt.subplots(figsize=(max(6.0, min(24.0, len(scores) / fps / 4)), 3.0))
  for k, name in enumerate(classes):
    sigma = intervals_lib.for_class(smooth_seconds, name, k)
    if sigma:
      ax.plot(t, scores[:, k], lw=0.6, alpha=0.35, color=colours.get(name),
              label=f"{name} score")
      ax.plot(t, intervals_lib.smooth(scores[:, k], sigma, fps), lw=1.2,
              color=colours.get(name), label=f"smoothed ({float(sigma):g} s), thresholded")
    else:
      ax.plot(t, scores[:, k], lw=1, color=colours.get(name), label=f"{name} score")
  for iv in intervals:
    ax.axvspan(iv["onset"] / fps, (iv["offset"] + 1) / fps, alpha=0.25,
               color=colours.get(iv["type"]))
  ax.axhline(threshold, ls="--", lw=0.8, color="k", label=f"threshold {threshold:.2f}")
  # To the last frame's end, not its start: an interval there spans to len / fps.
  ax.set(xlabel="time (s)", ylabel="score", ylim=(0, 1), xlim=(0, len(scores) / fps),
         title=title)
  ax.legend(loc="upper right", fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _check_out(out: str) -> None:
  if os.path.exists(out) and not os.path.isdir(out):
    raise SpotError(f"{out}: --out is a file, not a folder")
  parent = os.path.dirname(os.path.abspath(out))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.access(parent if not os.path.isdir(out) else out, os.W_OK):
    raise SpotError(f"{out}: cannot write there")


def _check_options(fps, threshold, crop_size) -> None:
  """The command's own numbers, before anything is read or written (a --fps of -5 read as
  'the video reports no frame rate', 0 was ignored; --threshold 1.5 spotted nothing)."""
  bad = []
  if fps is not None and not (math.isfinite(fps) and fps > 0):
    bad.append(f"--fps={fps:g}: must be > 0")
  if threshold is not None and not 0 < threshold < 1:
    bad.append(f"--threshold={threshold:g}: must be in (0, 1)")
  if crop_size is not None and crop_size < 1:
    bad.append(f"--crop_size={crop_size}: must be >= 1")
  if bad:
    raise SpotError("; ".join(bad))


def spot(cfg: ml_collections.ConfigDict, workdir: str, video_paths: Sequence[str], out: str,
         *, fps: float | None = None, threshold: float | None = None,
         crop_size: int | None = None, encoding: str | None = None,
         detector: face_crop.Detector | None = None) -> dict:
  """Spots every video; writes and returns OUT/predictions.json's dict."""
  _check_options(fps, threshold, crop_size)
  _check_out(out)
  if not os.path.isdir(workdir):
    raise SpotError(f"{workdir}: no such workdir")
  videos = open_videos(video_paths, fps)
  cfg = fit_mesh(cfg)
  trainer = train.make_trainer(cfg)
  crops = stored_crops(cfg)
  size, encoding = int(crop_size or crops.size), encoding or crops.encoding
  scores, boxes = {}, {}
  saved = train._saved_config(workdir)  # pylint: disable=protected-access
  with jax.set_mesh(trainer.mesh), train._explain_mismatch(  # pylint: disable=protected-access
      saved, cfg, workdir):
    params, chosen, step = restore(cfg, workdir, trainer, saved=saved)  # before the videos
    changed = train.threshold_settings_change(saved, cfg)
    if changed and threshold is None:  # no validation data here to choose it again
      train.say(f"[spot] WARNING: {'; '.join(changed)} (--config): the threshold "
                f"{chosen:.2f} was chosen on validation under the run's settings; give "
                "--threshold for these")
    threshold = chosen if threshold is None else float(threshold)
    train.say(f"[spot] checkpoint step {step}, threshold {threshold:.2f}; crops "
              f"{size}x{size} {encoding}, as the run's corpus stored them")
    for i, video in enumerate(videos):
      train.say(f"[spot] {i + 1}/{len(videos)} {video.path} ({video.fps:g} fps): finding "
                "the face, cutting crops...")
      record, boxes[video.video_id] = face_record(
          video, size, encoding, detector, predict.frame_step(cfg),
          face_sample=crops.face_sample, face_margin=crops.face_margin)
      train.say(f"[spot] {video.video_id}: {video.num_frames} frames, face box "
                f"{boxes[video.video_id]}; scoring...")
      progress = Progress(video.video_id)
      scores.update(predict.score_videos(
          trainer, params, sources.VideoIndex([record]), cfg,
          progress=lambda done, total: progress(done, total, "windows scored"))[0])
      del record
  classes = tuple(cfg.dataset.classes)
  meta = {"videos": {v.video_id: {"fps": v.fps} for v in videos}}
  decoding = predict.decode_kwargs(cfg)
  found = predict.make_predictions(scores, meta, classes, threshold, decoding)
  result = {"videos": {}, "checkpoint_step": step, "threshold": threshold,
            "classes": list(classes), "workdir": os.path.abspath(workdir)}
  for v in videos:
    intervals = found["videos"][v.video_id]["intervals"]
    for iv in intervals:
      iv["onset_s"] = round(iv["onset"] / v.fps, 4)
      iv["offset_s"] = round((iv["offset"] + 1) / v.fps, 4)
    result["videos"][v.video_id] = {
        "intervals": intervals, "num_frames": v.num_frames, "fps": v.fps,
        "face_box": list(boxes[v.video_id]), "path": os.path.abspath(v.path)}
  _write(out, result, scores, videos, classes, threshold, decoding["smooth_seconds"])
  return result


def _write(out, result, scores, videos, classes, threshold, smooth_seconds=None) -> None:
  """All outputs through `checkpointing.staged_folder` (all or nothing). The plots of
  videos an earlier run wrote there and this one does not have are removed, so OUT holds
  one run's outputs. Process 0 writes; every process of a multi-process run has all the
  scores, and two writing one OUT would race over the stale plots."""
  if jax.process_index() != 0:
    return
  stale = _previous_plots(out) - {f"{v.video_id}.png" for v in videos}
  try:
    with checkpointing.staged_folder(out) as tmp:
      for v in videos:
        intervals = result["videos"][v.video_id]["intervals"]
        plot(os.path.join(tmp, f"{v.video_id}.png"), scores[v.video_id], v.fps, classes,
             threshold, intervals, f"{v.video_id}: {len(intervals)} interval(s)",
             smooth_seconds=smooth_seconds)
        counts = ", ".join(f"{sum(iv['type'] == c for iv in intervals)} {c}"
                           for c in classes)
        train.say(f"[spot] {v.video_id}: {counts}")
      predict.write_scores(os.path.join(tmp, "scores.npz"), scores)
      checkpointing.write_json(os.path.join(tmp, "predictions.json"), result)
      for name in stale:
        os.remove(os.path.join(out, name))
  except OSError as e:
    raise SpotError(f"{out}: writing the outputs failed ({e})") from None
  train.say(f"[spot] wrote {os.path.join(out, 'predictions.json')}, scores.npz and "
            f"{len(videos)} plot(s)")


def _previous_plots(out: str) -> set[str]:
  """The plots an earlier spot run wrote in OUT (its predictions.json names the videos)."""
  try:
    with open(os.path.join(out, "predictions.json")) as f:
      ids = json.load(f)["videos"]
  except (OSError, ValueError, KeyError, TypeError):
    return set()
  return {f"{i}.png" for i in ids if os.path.isfile(os.path.join(out, f"{i}.png"))}


def _define_flags() -> None:
  """Defined when run as a command, not on import (attention_maps imports this module)."""
  config_flags.DEFINE_config_file(
      "config", None, "The run's config file (default: WORKDIR/config.json).",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "The trained run's workdir.")
  flags.DEFINE_multi_string("video", None, "A video file or a folder of frames.")
  flags.DEFINE_string("out", None, "Where predictions.json, scores.npz and plots go.")
  flags.DEFINE_float("fps", None, "Frame rate of the videos: needed for frame folders; for "
                     "a video file it replaces the container's rate.")
  flags.DEFINE_float("threshold", None, "Decoding threshold (default: the one chosen on "
                     "validation for the checkpoint).")
  flags.DEFINE_integer("crop_size", None, "Face crop size in pixels (default: the size "
                       "the run's corpus stored).")
  flags.DEFINE_enum("encoding", None, ["jpeg", "png"], "How the crops are stored before "
                    "scoring (default: as the run's corpus).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_logs()  # the [spot] lines, not orbax's INFO logs
  f = flags.FLAGS
  with cli.one_line_errors(((SpotError, 2), (FileNotFoundError, 2),
                            (config_check.ConfigError, 2),
                            (checkpointing.CheckpointMismatchError, 4),
                            (checkpointing.CheckpointReadError, 4))):
    spot(load_config(f.workdir, f.config), f.workdir, f.video, f.out, fps=f.fps,
         threshold=f.threshold, crop_size=f.crop_size, encoding=f.encoding)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["workdir", "video", "out"])
  app.run(main)
