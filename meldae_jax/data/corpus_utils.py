"""Validation and encoding shared by the real-corpus TFDS builders.

The builders under `datasets/<name>/` only know their corpus's layout; the rules
that must be the same everywhere live here: 0-based inclusive frame indices,
clear errors that name the file and row (never a silently wrong dataset),
one stable face crop per video, subject-disjoint and leave-one-subject-out
splits, and the record layout of `schema.features()`.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds

from meldae_jax.data import face_crop
from meldae_jax.data import schema

log = logging.getLogger("meldae_jax.data.corpus")

SPLITS = ("train", "validation", "test")
LOSO_PREFIX = "subject_"
JPEG_QUALITY = 90


class CorpusError(ValueError):
  """Bad corpus input; the message names the file and row/annotation/video."""


# --------------------------------------------------------------------------
# Builder configuration and loading.

DATASETS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))), "datasets")


def builder_class(name: str, datasets_dir: str = DATASETS_DIR):
  """`Builder` of `datasets/<name>/<name>_dataset_builder.py`, imported once.

  The builders skip TFDS's registry (no TensorFlow, no name clashes when a
  module is imported twice); construct them directly:
  `builder_class('casme2')(data_dir=..., file_format='array_record')`.
  """
  from meldae_jax.data import build  # pylint: disable=g-import-not-at-top
  return build.load_builder_class(name, datasets_dir)


@dataclasses.dataclass(eq=False)
class CorpusConfig(tfds.core.BuilderConfig):
  """How face crops are stored: square `size` px, JPEG (q90) or PNG."""
  size: int = 112
  encoding: str = "jpeg"  # 'jpeg' (quality 90) or 'png'
  face_sample: int = 16  # frames sampled for the stable face box
  face_margin: float = 0.2  # box growth per side, fraction of the face size


def default_configs(cls: type[CorpusConfig] = CorpusConfig
                    ) -> list[CorpusConfig]:
  """The configs every corpus offers; the first one is the default."""
  return [
      cls(name="default", description="112x112 face crops, JPEG q90."),
      cls(name="crop224", size=224,
          description="224x224 face crops, JPEG q90."),
      cls(name="png112", encoding="png",
          description="112x112 face crops, lossless PNG."),
  ]


def dataset_info(builder: tfds.core.DatasetBuilder, *, description: str,
                 homepage: str, citation: str) -> tfds.core.DatasetInfo:
  """DatasetInfo with the shared schema (no metadata files needed)."""
  return tfds.core.DatasetInfo(
      builder=builder, description=description, features=schema.features(),
      homepage=homepage, citation=citation)


def require_manual_dir(dl_manager, name: str) -> str:
  """The manual dir as a string, or a clear error if it is missing/empty."""
  manual_dir = getattr(dl_manager, "manual_dir", None)
  if manual_dir is None or not os.path.isdir(os.fspath(manual_dir)):
    raise CorpusError(
        f"{name}: manual_dir {manual_dir} does not exist; pass the folder that "
        f"holds your licensed copy (see datasets/{name}/README.md)")
  return os.fspath(manual_dir)


# --------------------------------------------------------------------------
# Frames: reading, cropping, encoding.


def _cut_short(path: str) -> bool:
  """Whether PIL finds the image file truncated (it does not fill missing rows)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      im.load()
  except OSError:
    return True
  return False


def read_rgb(path: str) -> np.ndarray:
  """Reads an image file as HxWx3 uint8 RGB; CorpusError if unreadable.

  A JPEG cut short (an interrupted copy or unzip) is an error too: libjpeg decodes it
  without failing, its missing rows grey, a jump a spotter would take for motion.
  """
  if not os.path.isfile(path):
    raise CorpusError(f"{path}: frame image is missing")
  with open(path, "rb") as f:
    head = f.read(2)
    f.seek(max(0, os.fstat(f.fileno()).st_size - 64))
    tail = f.read()
  # FF D9 is the end marker only (0xFF in coded data is followed by 00 or D0..D7). A
  # file without it near its end is decoded once more by PIL, which refuses a cut
  # (libjpeg's grey rows aside): a longer trailer after the marker is no cut.
  if head == b"\xff\xd8" and b"\xff\xd9" not in tail and _cut_short(path):
    raise CorpusError(f"{path}: frame image is truncated (a JPEG without its end marker)")
  bgr = cv2.imread(path, cv2.IMREAD_COLOR)
  if bgr is None:
    raise CorpusError(f"{path}: frame image is unreadable or corrupt")
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class ImageSequence(collections.abc.Sequence):
  """Frames of an image-folder video, read lazily one file at a time.

  Every frame must have the size of the first one read: one crop box serves the whole
  video, so a frame of another size would be cut elsewhere without a word (or stop the
  build with an error that names no file).
  """

  def __init__(self, paths: Sequence[str]):
    self.paths = list(paths)
    self._first = None  # (path, shape) of the first frame read

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, i):
    rgb = read_rgb(self.paths[i])
    if self._first is None:
      self._first = (self.paths[i], rgb.shape)
    elif rgb.shape != self._first[1]:
      (h, w), (fh, fw) = rgb.shape[:2], self._first[1][:2]
      raise CorpusError(f"{self.paths[i]}: frame is {w}x{h} pixels, but "
                        f"{os.path.basename(self._first[0])} of the same video is {fw}x{fh}")
    return rgb


def numbered_frames(directory: str, pattern: str,
                    name_of: Callable[[int], str], start: int | None = 1) -> list[str]:
  """Frame files of `directory` numbered start..N without gaps, in order.

  `pattern` is a regex with a group `n` (the frame number); `name_of(n)` rebuilds a file
  name, to name a missing frame in the error (zero-padded like the folder's own files:
  `img005.jpg` where the folder holds `img001.jpg`). `start=None`: from the lowest number
  there (clips cut out of a recording may keep its frame numbers). Two files with one
  number (`img5.jpg` and `img005.jpg`) or a file numbered below `start` (`img0.jpg`) are
  errors: which file is which frame would be a guess.
  """
  if not os.path.isdir(directory):
    raise CorpusError(f"{directory}: frame folder is missing")
  regex = re.compile(pattern)
  found, matches = {}, {}
  for entry in sorted(os.listdir(directory)):
    m = regex.fullmatch(entry)
    if m:
      n = int(m.group("n"))
      if n in found:
        raise CorpusError(
            f"{os.path.join(directory, entry)}: frame number {n} is also "
            f"{os.path.basename(found[n])}")
      found[n] = os.path.join(directory, entry)
      matches[n] = m
  if not found:
    raise CorpusError(f"{directory}: no frame images matching {pattern}")
  first, last = (min(found) if start is None else start), max(found)
  if min(found) < first:
    raise CorpusError(f"{found[min(found)]}: frame number {min(found)} is below the "
                      f"first frame {first} (frames are numbered from {first})")
  missing = [n for n in range(first, last + 1) if n not in found]
  if missing:
    name = name_of(missing[0])
    padded = [m for m in matches.values() if re.fullmatch(r"0\d+", m.group("n"))]
    if padded:  # the folder zero-pads its numbers: name the file it lacks that way
      m = min(padded, key=lambda m: len(m.group("n")))
      name = (m.string[:m.start("n")] + str(missing[0]).zfill(len(m.group("n"))) +
              m.string[m.end("n"):])
    raise CorpusError(
        f"{os.path.join(directory, name)}: frame image is "
        f"missing ({len(missing)} missing of frames {first}..{last})")
  return [found[n] for n in range(first, last + 1)]


def encode_frame(rgb: np.ndarray, encoding: str) -> bytes:
  """Encodes an RGB crop as JPEG (quality 90) or PNG bytes."""
  bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
  if encoding == "jpeg":
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
  elif encoding == "png":
    ok, buf = cv2.imencode(".png", bgr)
  else:
    raise ValueError(f"unknown frame encoding {encoding!r} (jpeg or png)")
  if not ok:
    raise RuntimeError("frame encoding failed")
  return buf.tobytes()


def decode_frame(data: bytes) -> np.ndarray:
  """Decodes stored frame bytes to HxWx3 uint8 RGB."""
  bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  if bgr is None:
    raise ValueError("could not decode frame bytes")
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# Release note of the builders' 1.1.0 (face_crop.stable_face_box's consensus).
FACE_BOX_NOTE = ("The face box is the median over the boxes of the face found most often "
                 "in the sampled frames (IoU >= 0.3), not over every detection: crops of "
                 "videos with a second face or false detections change.")


PROGRESS_EVERY = 1000  # frames between progress lines of one video (5 s of SAMM)


def crop_progress(frames: Iterable[np.ndarray], total: int | None,
                  name: str | None) -> Iterable[np.ndarray]:
  """Yields `frames`, with an INFO line every PROGRESS_EVERY frames of a longer video.

  The build's progress bar counts whole videos: a SAMM long video (thousands of 200 fps
  frames) showed nothing for minutes.
  """
  for i, frame in enumerate(frames, 1):
    yield frame
    if i % PROGRESS_EVERY == 0 and (total is None or i < total):
      log.info("%s: %d%s frames cropped", name or "video", i,
               "" if total is None else f" of {total}")


def face_crops(open_frames: Callable[[], Iterable[np.ndarray]],
               config: CorpusConfig,
               detector: face_crop.Detector | None = None,
               name: str | None = None) -> list[bytes]:
  """Encoded square face crops of one video, one stable box for all frames.

  `open_frames()` returns a fresh iterable (or lazy sequence) of RGB frames;
  it is called twice (box, then crops), so no whole video is held decoded.
  `name` (the video's folder) starts the face box's warnings and progress lines.
  """
  box = face_crop.stable_face_box(
      open_frames(), sample=config.face_sample, margin=config.face_margin,
      detector=detector, name=name)
  frames = open_frames()
  total = len(frames) if hasattr(frames, "__len__") else None
  return [encode_frame(face_crop.crop_and_resize(f, box, config.size),
                       config.encoding) for f in crop_progress(frames, total, name)]


# --------------------------------------------------------------------------
# Intervals and labels.


def check_interval(onset: int, apex: int, offset: int, num_frames: int,
                   where: str) -> tuple[int, int, int]:
  """Validates a 0-based inclusive interval; apex -1 means unknown."""
  if onset > offset:
    raise CorpusError(f"{where}: onset {onset} is after offset {offset} "
                      "(0-based frames)")
  if onset < 0 or offset > num_frames - 1:
    raise CorpusError(
        f"{where}: interval {onset}..{offset} (0-based) is outside the video "
        f"of {num_frames} frames (0..{num_frames - 1})")
  if apex != -1 and not onset <= apex <= offset:
    raise CorpusError(f"{where}: apex {apex} is outside onset..offset "
                      f"{onset}..{offset} (0-based)")
  return onset, apex, offset


def one_based(onset: int, apex: int, offset: int, num_frames: int,
              where: str) -> tuple[int, int, int]:
  """1-based frame numbers (apex <= 0 unknown) -> checked 0-based indices."""
  apex0 = apex - 1 if apex >= 1 else -1
  return check_interval(onset - 1, apex0, offset - 1, num_frames, where)


class RowRepairs:
  """Stated rules for released annotation rows no interval check passes; logged by kind.

  `apply(label, onset, apex, offset, num_frames, missing_bound)` takes 1-based frame
  numbers as released (0 or less = not coded) and returns ones `one_based` accepts, or
  None to skip the row:
  * a bound not coded becomes the apex (`missing_bound='apex'`, as the CAS(ME)^2 builder
    does for a missing offset) or drops the row ('skip'); so does a row with neither;
  * an offset past the last frame file is clamped to it, a row starting past it dropped;
  * an onset after its offset drops the row;
  * an apex outside onset..offset becomes unknown (-1): the evaluation uses onset and
    offset only.
  `log(logger)` reports each kind with its rows (label: e.g. spreadsheet row and values).
  """

  KINDS = {
      "bound_from_apex": (logging.INFO, "onset or offset not coded, set to the apex"),
      "skipped_missing_bound": (logging.WARNING, "skipped: onset or offset not coded"),
      "offset_clamped": (logging.WARNING, "offset past the last frame file, clamped to it"),
      "skipped_past_end": (logging.WARNING, "skipped: onset past the last frame file"),
      "apex_dropped": (logging.WARNING, "apex not coded or outside onset..offset, set to "
                                        "unknown (-1)"),
      "skipped_reversed": (logging.WARNING, "skipped: onset after offset"),
  }

  def __init__(self, corpus: str, path: str):
    self.corpus, self.path = corpus, path
    self.rows = {kind: [] for kind in self.KINDS}

  def apply(self, label: str, onset: int, apex: int, offset: int, num_frames: int,
            missing_bound: str = "apex") -> tuple[int, int, int] | None:
    if missing_bound not in ("apex", "skip"):
      raise ValueError(f"missing_bound must be 'apex' or 'skip', got {missing_bound!r}")
    fixed, done = self._repair(onset, apex, offset, num_frames, missing_bound)
    for kind in done:
      self.rows[kind].append(label)
    return fixed

  @staticmethod
  def _repair(onset, apex, offset, num_frames, missing_bound):
    done = []
    apex = apex if apex >= 1 else -1
    if onset <= 0 or offset <= 0:
      if missing_bound == "skip" or apex < 1 or (onset <= 0 and offset <= 0):
        return None, ["skipped_missing_bound"]
      onset, offset = (apex, offset) if onset <= 0 else (onset, apex)
      done.append("bound_from_apex")
    if onset > num_frames:
      return None, done + ["skipped_past_end"]
    if offset > num_frames:
      offset = num_frames
      done.append("offset_clamped")
    if onset > offset:
      return None, done + ["skipped_reversed"]
    if apex != -1 and not onset <= apex <= offset:
      apex = -1
      done.append("apex_dropped")
    return (onset, apex, offset), done

  def note(self, kind: str, label: str) -> None:
    """Records a repair a builder made itself (e.g. an empty apex cell read as unknown)."""
    self.rows[kind].append(label)

  def log(self, logger: logging.Logger) -> None:
    for kind, rows in self.rows.items():
      if rows:
        level, what = self.KINDS[kind]
        logger.log(level, "%s: %s: %d row(s) of %s: %s", self.corpus, what, len(rows),
                   self.path, ", ".join(rows[:8]) + (", ..." if len(rows) > 8 else ""))


def ms_to_frames(start_ms: float, end_ms: float, fps: float, num_frames: int,
                 where: str) -> tuple[int, int]:
  """ELAN span [start_ms, end_ms) -> 0-based inclusive frames.

  Frame k covers [k/fps, (k+1)/fps) seconds. onset = floor(start*fps/1000)
  (the frame containing the start), offset = ceil(end*fps/1000) - 1 (the
  last frame that starts before the end), at least onset. An offset of at
  most one frame past the last frame is clamped (rounding at the video's
  end); anything further outside the video is an error.
  """
  eps = 1e-6
  onset = math.floor(start_ms * fps / 1000 + eps)
  offset = max(onset, math.ceil(end_ms * fps / 1000 - eps) - 1)
  if start_ms < 0 or end_ms < start_ms:
    raise CorpusError(f"{where}: bad time span {start_ms}..{end_ms} ms")
  if offset == num_frames:
    offset = num_frames - 1
  if onset < 0 or onset > num_frames - 1 or offset > num_frames - 1:
    raise CorpusError(
        f"{where}: span {start_ms}..{end_ms} ms = frames {onset}..{offset} is "
        f"outside the video of {num_frames} frames at {fps:g} fps")
  return onset, offset


def ms_to_frame(t_ms: float, fps: float) -> int:
  """A time point (e.g. an apex) -> the 0-based frame that contains it."""
  return math.floor(t_ms * fps / 1000 + 1e-6)


def expression_type(value: Any, mapping: dict[str, str], where: str) -> str:
  """Maps a corpus type label to 'micro'/'macro'; error for unknown labels."""
  key = str(value).strip().lower() if value is not None else ""
  if key in mapping:
    return mapping[key]
  raise CorpusError(f"{where}: unknown expression type {value!r} "
                    f"(expected one of {sorted(mapping)})")


def to_int(value: Any, where: str, column: str) -> int:
  """A spreadsheet cell as an int; error naming row and column otherwise."""
  if isinstance(value, bool) or value is None:
    raise CorpusError(f"{where}: column {column!r} is empty or not a number "
                      f"({value!r})")
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, float) and value.is_integer():
    return int(value)
  text = str(value).strip()
  if re.fullmatch(r"-?\d+(\.0+)?", text):
    return int(float(text))
  raise CorpusError(f"{where}: column {column!r} is not an integer frame "
                    f"number ({value!r})")


def frame_number_or_zero(value: Any, where: str, column: str) -> int:
  """A 1-based frame-number cell; an empty one is 0 (not coded, for `RowRepairs`)."""
  if value is None or (isinstance(value, str) and not value.strip()):
    return 0
  return to_int(value, where, column)


# --------------------------------------------------------------------------
# Spreadsheets.


def open_workbook(path: str):
  """Opens an .xlsx read-only; CorpusError naming the file if missing/bad."""
  import openpyxl  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise CorpusError(f"{path}: annotation spreadsheet is missing")
  try:
    return openpyxl.load_workbook(path, read_only=True, data_only=True)
  except Exception as e:  # openpyxl raises several types for bad files.
    raise CorpusError(f"{path}: cannot read spreadsheet ({e})") from e


def sheet_rows(sheet) -> Iterable[tuple[int, tuple]]:
  """(1-based spreadsheet row number, cell values) for non-empty rows, all as wide as the
  widest.

  A read-only sheet is read to its last cell, not to the size the file states: some
  writers state a wrong one (`A1:B5`), and openpyxl would then yield only that part,
  dropping annotation rows and columns without an error.
  """
  if hasattr(sheet, "reset_dimensions"):
    sheet.reset_dimensions()
  rows = [(number, tuple(row))
          for number, row in enumerate(sheet.iter_rows(values_only=True), start=1)
          if row and any(c is not None and str(c).strip() != "" for c in row)]
  width = max((len(row) for _, row in rows), default=0)
  for number, row in rows:
    yield number, row + (None,) * (width - len(row))


def _natural_key(name: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def find_file(directory: str, names: Sequence[str],
              pattern: str | None = None) -> str | None:
  """The first of `names` in `directory`, else the newest file matching `pattern`.

  Files matching `pattern` are taken in descending natural order (`..._V10_...` before
  `..._V9_...`: the newest release first). When several candidates are there, the one
  used and the others are named in a WARNING: which annotation release a dataset was
  built from should not be a guess.
  """
  found = [os.path.join(directory, n) for n in names
           if os.path.isfile(os.path.join(directory, n))]
  if pattern and os.path.isdir(directory):
    regex = re.compile(pattern)
    matches = sorted((e for e in os.listdir(directory) if regex.fullmatch(e)),
                     key=_natural_key, reverse=True)
    found += [p for p in (os.path.join(directory, e) for e in matches) if p not in found]
  if len(found) > 1:
    log.warning("%s: %d candidate files; using %s (also there: %s)", directory,
                len(found), os.path.basename(found[0]),
                ", ".join(os.path.basename(f) for f in found[1:]))
  return found[0] if found else None


# --------------------------------------------------------------------------
# Splits.


def hash_split(subject: str) -> str:
  """Deterministic 70/15/15 train/validation/test bucket of a subject."""
  bucket = int(hashlib.sha256(subject.encode("utf-8")).hexdigest(), 16) % 100
  if bucket < 70:
    return "train"
  return "validation" if bucket < 85 else "test"


def subject_splits(subjects: Iterable[str], manual_dir: str,
                   name: str) -> dict[str, list[str]]:
  """Subject-disjoint splits: `<manual_dir>/splits.json` or `hash_split`.

  splits.json is {"train": [...], "validation": [...], "test": [...]} of
  subject ids; every subject of the corpus must be listed exactly once.
  Returns {split: sorted subjects}; empty splits are left out (logged).
  """
  subjects = sorted(set(subjects))
  path = os.path.join(manual_dir, "splits.json")
  out = {s: [] for s in SPLITS}
  if os.path.isfile(path):
    try:
      with open(path) as f:
        given = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise CorpusError(f"{path}: cannot read splits ({e})") from e
    if not isinstance(given, dict) or set(given) - set(SPLITS):
      raise CorpusError(f"{path}: expected keys among {SPLITS}")
    for split, members in given.items():  # a bare "S01" would be read as 'S', '0', '1'
      if not isinstance(members, list):
        raise CorpusError(f"{path}: {split!r} is {members!r}, not a list of subject ids")
    owner = {}
    for split, members in given.items():
      for s in members:
        s = str(s)
        if s in owner:
          raise CorpusError(f"{path}: subject {s} is in both {owner[s]} and "
                            f"{split}")
        owner[s] = split
    for s in subjects:
      if s not in owner:
        raise CorpusError(f"{path}: subject {s} of the corpus is in no split")
      out[owner[s]].append(s)
    unused = sorted(set(owner) - set(subjects))
    if unused:
      log.warning("%s: %s: subjects not in the corpus: %s", name, path, unused)
  else:
    for s in subjects:
      out[hash_split(s)].append(s)
  for split in SPLITS:
    if not out[split]:
      log.warning("%s: split %s has no subjects; it is left out", name, split)
  return {k: v for k, v in out.items() if v}


def loso_split_name(subject: str) -> str:
  """TFDS split name holding one subject's videos (leave-one-subject-out)."""
  return LOSO_PREFIX + re.sub(r"\W", "_", subject)


def loso_folds(builder_or_split_names) -> list[tuple[str, list[str]]]:
  """[(test_subject, train_split_names)] for leave-one-subject-out.

  Accepts a prepared builder (its `info.splits`) or split names. Read a fold
  with `builder.as_data_source('+'.join(train))` and
  `builder.as_data_source(loso_split_name(test_subject))`.
  """
  if hasattr(builder_or_split_names, "info"):
    names = list(builder_or_split_names.info.splits.keys())
  else:
    names = list(builder_or_split_names)
  loso = sorted(n for n in names if str(n).startswith(LOSO_PREFIX))
  return [(n[len(LOSO_PREFIX):], [m for m in loso if m != n]) for n in loso]


# --------------------------------------------------------------------------
# Records.


Interval = tuple[int, int, int, str]  # (onset, apex, offset, 'micro'|'macro')


def make_example(*, video_id: str, subject: str, fps: float,
                 frames: list[bytes], intervals: Sequence[Interval],
                 speaking: np.ndarray | None = None) -> dict[str, Any]:
  """One record of `schema.features()`; speaking defaults to all -1."""
  n = len(frames)
  for onset, apex, offset, kind in intervals:
    check_interval(onset, apex, offset, n, f"video {video_id}")
    if kind not in schema.EXPRESSION_TYPES:
      raise CorpusError(f"video {video_id}: bad type {kind!r}")
  if speaking is None:
    speaking = np.full((n,), schema.UNKNOWN, np.int8)
  speaking = np.asarray(speaking, np.int8)
  if speaking.shape != (n,):
    raise CorpusError(f"video {video_id}: {speaking.shape[0]} speaking labels "
                      f"for {n} frames")
  intervals = sorted(intervals)
  return {
      "video_id": video_id,
      "subject": subject,
      "fps": np.float32(fps),
      "frames": frames,
      "intervals": {
          "onset": np.asarray([i[0] for i in intervals], np.int32),
          "apex": np.asarray([i[1] for i in intervals], np.int32),
          "offset": np.asarray([i[2] for i in intervals], np.int32),
          "type": [i[3] for i in intervals],
      },
      "speaking": speaking,
  }


def image_sequence_examples(videos: Iterable[dict], config, fps: float):
  """(key, example) for videos given as numbered frame files: one stable face box each.

  `videos`: dicts with `video_id`, `subject`, `frames` (frame paths) and `intervals`.
  """
  for video in videos:
    seq = ImageSequence(video["frames"])
    frames = face_crops(lambda seq=seq: seq, config,
                        name=os.path.dirname(video["frames"][0]) if video["frames"] else None)
    yield video["video_id"], make_example(
        video_id=video["video_id"], subject=video["subject"], fps=fps,
        frames=frames, intervals=video["intervals"])


def loso_splits(videos: Iterable[dict], generate: Callable[[list], Any]) -> dict:
  """One split per subject (`loso_split_name`), each generated by `generate(videos)`.

  Two subjects whose ids differ only in punctuation ('s-1', 's_1') would share a split
  name, and one's videos would replace the other's: that is an error naming both (a
  CorpusError, which the build command prints as its one-line error).
  """
  by_subject, names = {}, {}
  for video in videos:
    by_subject.setdefault(video["subject"], []).append(video)
  for s in sorted(by_subject):
    other = names.setdefault(loso_split_name(s), s)
    if other != s:
      raise CorpusError(f"subjects {other!r} and {s!r} both map to the split name "
                       f"{loso_split_name(s)!r}; rename one in the corpus's metadata")
  return {name: generate(by_subject[s]) for name, s in names.items()}
