"""One stable face box per video, so that cropping adds no motion of its own.

Micro-expressions are movements of a few pixels; a crop box that follows a
per-frame detector jitters by about as much and swamps them. We therefore
detect the face on a few sampled frames, take the median box of the face found
most often (boxes overlapping, IoU >= 0.3), grow it by a
margin, make it square, clamp it inside the image and use that one box for
every frame of the video.

API (shared by the TFDS builders and any inference command):

  box = stable_face_box(frames, sample=16, margin=0.2)  # (x0, y0, x1, y1)
  crop = crop_and_resize(frame, box, 112)               # (112, 112, 3) uint8

* Frames are HxWx3 uint8 RGB arrays (HxW grey also works), all the same size.
* `frames` is either a sequence (has `len` and indexing; may load lazily: only
  the sampled items are touched) or any iterable, e.g. a generator reading a
  video; an iterable is consumed once, keeping at most `2 * sample` frames.
* Boxes are integer pixel coordinates, x1/y1 exclusive (numpy slicing).
* `detector(frame) -> [(x, y, w, h), ...]` may be passed in (tests, better
  detectors); the default is OpenCV's Haar frontal-face cascade, run on a copy
  downscaled to at most 640 px, keeping the largest face per frame.
* If no sampled frame has a face the box is the centre square of the image
  and a warning is logged (`face_crop` logger).
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence

import cv2
import numpy as np

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
Detector = Callable[[np.ndarray], Sequence[Sequence[float]]]

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
_DETECT_MAX_SIDE = 640


@functools.lru_cache(maxsize=None)
def load_cascade(name: str = HAAR_CASCADE) -> cv2.CascadeClassifier:
  """Loads an OpenCV Haar cascade shipped with opencv (`cv2.data`)."""
  path = cv2.data.haarcascades + name
  cascade = cv2.CascadeClassifier(path)
  if cascade.empty():
    raise RuntimeError(f"could not load the Haar cascade {path}")
  return cascade


def haar_detector(frame: np.ndarray) -> list[tuple[int, int, int, int]]:
  """Default detector: the largest Haar frontal face, in full-frame pixels."""
  grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
  scale = min(1.0, _DETECT_MAX_SIDE / max(grey.shape[:2]))
  if scale < 1.0:
    grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
  min_side = max(12, int(0.1 * min(grey.shape[:2])))
  faces = load_cascade().detectMultiScale(
      grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
  if len(faces) == 0:
    return []
  x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
  return [tuple(int(round(v / scale)) for v in (x, y, w, h))]


def _sample(frames: Sequence[np.ndarray] | Iterable[np.ndarray],
            sample: int) -> list[np.ndarray]:
  """Up to `sample` frames spread evenly over the video."""
  if hasattr(frames, "__len__") and hasattr(frames, "__getitem__"):
    n = len(frames)
    if n == 0:
      return []
    idx = sorted(set(np.linspace(0, n - 1, min(sample, n)).round().astype(int)))
    return [frames[i] for i in idx]
  # Unknown length: keep every `stride`-th frame; when the buffer overflows,
  # drop every other kept frame and double the stride (bounded memory).
  kept, stride = [], 1
  for i, frame in enumerate(frames):
    if i % stride == 0:
      kept.append(frame)
      if len(kept) >= 2 * sample:
        kept, stride = kept[::2], stride * 2
  if len(kept) > sample:
    idx = np.linspace(0, len(kept) - 1, sample).round().astype(int)
    kept = [kept[i] for i in idx]
  return kept


def square_box(box: Sequence[float], margin: float, height: int,
               width: int) -> Box:
  """Grows `box` by `margin` of its size per side, squares and clamps it."""
  x0, y0, x1, y1 = (float(v) for v in box)
  w, h = x1 - x0, y1 - y0
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  side = max(w, h) * (1 + 2 * margin)
  side = int(round(min(side, height, width)))
  side = max(side, 1)
  left = int(round(cx - side / 2))
  top = int(round(cy - side / 2))
  left = min(max(left, 0), width - side)
  top = min(max(top, 0), height - side)
  return left, top, left + side, top + side


def centre_box(height: int, width: int) -> Box:
  """The largest centred square of the image (the no-face fallback)."""
  side = min(height, width)
  left, top = (width - side) // 2, (height - side) // 2
  return left, top, left + side, top + side


def stable_face_box(frames: Sequence[np.ndarray] | Iterable[np.ndarray], *,
                    sample: int = 16, margin: float = 0.2,
                    detector: Detector | None = None, name: str | None = None) -> Box:
  """One square face box (x0, y0, x1, y1) for a whole video; see module doc.

  `name` (the video's file or folder) starts the warnings: in a corpus build, a warning
  that names no video cannot be traced to the one cropped off its face.
  """
  prefix = f"{name}: " if name else ""
  if sample < 1:
    raise ValueError(f"sample must be >= 1, got {sample}")
  picked = _sample(frames, sample)
  if not picked:
    raise ValueError("stable_face_box got no frames")
  height, width = picked[0].shape[:2]
  detector = detector or haar_detector
  boxes = []
  for frame in picked:
    if frame.shape[:2] != (height, width):
      raise ValueError(
          f"frames differ in size: {frame.shape[:2]} vs {(height, width)}")
    for x, y, w, h in list(detector(frame))[:1]:
      boxes.append((x, y, x + w, y + h))
  if not boxes:
    log.warning("%sno face found in %d sampled frames (%dx%d); using the centre "
                "square crop", prefix, len(picked), width, height)
    return centre_box(height, width)
  median = np.median(_consensus(boxes, prefix), axis=0)
  return square_box(median, margin, height, width)


def _iou(boxes: np.ndarray) -> np.ndarray:
  x0 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
  y0 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
  x1 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
  y1 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  return inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-9)


def _consensus(boxes, prefix: str = "") -> np.ndarray:
  """The boxes of the face found most often (IoU >= 0.3 with the best-supported box).

  A coordinate-wise median of boxes on two faces (a conversation partner, a false
  detection in half the frames) is a box between them that holds neither face.
  """
  b = np.asarray(boxes, dtype=np.float64)
  same = _iou(b) >= 0.3
  members = same[int(np.argmax(same.sum(1)))]  # ties: the earliest frame's face
  if not members.all():
    log.warning("%sfaces found in %d of %d sampled frames lie elsewhere than the one "
                "found in the other %d; cropping that one", prefix, int((~members).sum()),
                len(b), int(members.sum()))
  return b[members]


def crop_and_resize(frame: np.ndarray, box: Sequence[int],
                    size: int) -> np.ndarray:
  """Crops `box` out of `frame` and resizes it to `size` x `size`."""
  x0, y0, x1, y1 = (int(v) for v in box)
  height, width = frame.shape[:2]
  if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
    raise ValueError(f"box {box} is not inside a {width}x{height} frame")
  crop = frame[y0:y1, x0:x1]
  interp = cv2.INTER_AREA if (x1 - x0) >= size else cv2.INTER_LINEAR
  return cv2.resize(crop, (size, size), interpolation=interp)
