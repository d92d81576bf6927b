"""The stable face box: geometry, sampling, fallback and the Haar cascade."""
import logging

import numpy as np
import pytest

from meldae_jax.data import face_crop


def frames(n=10, h=120, w=160):
  return [np.full((h, w, 3), i, np.uint8) for i in range(n)]


def fixed(box):
  """A stub detector that always finds `box` = (x, y, w, h)."""
  return lambda frame: [box]


def test_cascade_loads_and_finds_nothing_in_blank_frames():
  assert not face_crop.load_cascade().empty()
  assert face_crop.haar_detector(np.zeros((100, 120, 3), np.uint8)) == []
  # Large frames are downscaled for detection and still work.
  assert face_crop.haar_detector(np.zeros((1440, 2560, 3), np.uint8)) == []


def test_fallback_is_centre_square_with_warning(caplog):
  with caplog.at_level(logging.WARNING, logger=face_crop.__name__):
    box = face_crop.stable_face_box(frames(h=120, w=160), sample=4)
  assert box == (20, 0, 140, 120)
  assert "no face found" in caplog.text


def test_box_is_square_with_margin_and_median():
  boxes = iter([(50, 30, 40, 40), (52, 31, 40, 40), (200, 0, 5, 5)] * 10)
  box = face_crop.stable_face_box(frames(3), sample=3, margin=0.25,
                                  detector=lambda f: [next(boxes)])
  x0, y0, x1, y1 = box
  assert x1 - x0 == y1 - y0 == 60  # median 40 px face, 25% margin per side.
  # The median centre (72, 51) is kept: the outlier does not move the box.
  assert (x0 + x1) / 2 == pytest.approx(72, abs=1)
  assert (y0 + y1) / 2 == pytest.approx(51, abs=1)


def test_two_faces_give_one_of_them_not_a_box_between(caplog):
  """The coordinate-wise median of 8 boxes on one face and 8 on another was (226, 80,
  397, 251): between the faces (x 60-180 and 440-564), holding neither."""
  frames = [np.zeros((360, 640, 3), np.uint8) for _ in range(16)]
  index = {id(f): i for i, f in enumerate(frames)}
  left, right = (60, 100, 120, 120), (440, 110, 124, 124)
  detector = lambda f: [right if index[id(f)] % 2 == 0 else left]
  box = face_crop.stable_face_box(frames, detector=detector)
  assert box == face_crop.square_box((440, 110, 564, 234), 0.2, 360, 640)
  assert "faces found in 8 of 16 sampled frames lie elsewhere" in caplog.text
  caplog.clear()  # one face, boxes jittering: every box counts, no warning
  jitter = lambda f: [(200 + index[id(f)] % 3, 100 - index[id(f)] % 2, 120, 121)]
  boxes = np.array([(200 + i % 3, 100 - i % 2, 320 + i % 3, 221 - i % 2) for i in range(16)])
  assert face_crop.stable_face_box(frames, detector=jitter) == face_crop.square_box(
      np.median(boxes, axis=0), 0.2, 360, 640)
  assert "elsewhere" not in caplog.text


def test_box_is_clamped_inside_the_image():
  box = face_crop.stable_face_box(frames(4), detector=fixed((140, 100, 30, 30)))
  x0, y0, x1, y1 = box
  assert x1 - x0 == y1 - y0 == 42
  assert (x1, y1) == (160, 120) and x0 >= 0 and y0 >= 0
  big = face_crop.stable_face_box(frames(4), detector=fixed((0, 0, 150, 110)))
  assert big[2] - big[0] == big[3] - big[1] == 120  # at most min(H, W).
  assert 0 <= big[0] and big[2] <= 160 and big[1] == 0 and big[3] == 120


def test_one_box_for_every_frame_and_crop_size():
  vid = frames(6)
  box = face_crop.stable_face_box(vid, detector=fixed((60, 40, 30, 30)))
  crops = [face_crop.crop_and_resize(f, box, 32) for f in vid]
  assert all(c.shape == (32, 32, 3) for c in crops)
  # Crop content is each frame's own pixels through the same box.
  assert [int(c[0, 0, 0]) for c in crops] == list(range(6))
  with pytest.raises(ValueError):
    face_crop.crop_and_resize(vid[0], (150, 0, 170, 20), 32)


class Lazy:
  """A sequence that records which frames were read."""

  def __init__(self, n):
    self.n, self.read = n, []

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    self.read.append(i)
    return np.full((60, 80, 3), i % 256, np.uint8)


def test_sequence_input_reads_only_sampled_frames():
  seq = Lazy(1000)
  face_crop.stable_face_box(seq, sample=5, detector=fixed((10, 10, 20, 20)))
  assert seq.read == [0, 250, 500, 749, 999]


def test_iterable_input_samples_spread_and_bounded():
  seen = []

  def detector(frame):
    seen.append(int(frame[0, 0, 0]))
    return [(10, 10, 20, 20)]

  gen = (np.full((60, 80, 3), i, np.uint8) for i in range(200))
  box = face_crop.stable_face_box(gen, sample=8, detector=detector)
  assert len(seen) == 8
  assert seen[0] == 0 and seen[-1] > 150 and seen == sorted(seen)
  assert box == face_crop.stable_face_box(
      [np.zeros((60, 80, 3), np.uint8)] * 3, detector=fixed((10, 10, 20, 20)))


def test_bad_input():
  with pytest.raises(ValueError):
    face_crop.stable_face_box([])
  with pytest.raises(ValueError):
    face_crop.stable_face_box([np.zeros((10, 10, 3), np.uint8),
                               np.zeros((12, 10, 3), np.uint8)],
                              detector=fixed((1, 1, 5, 5)))


def test_haar_finds_a_real_face():
  data = pytest.importorskip("skimage.data")
  img = data.astronaut()  # A photo bundled with scikit-image (512x512).
  canvas = np.zeros((600, 900, 3), np.uint8)  # Off-centre, non-square frame.
  canvas[50:562, 300:812] = img
  faces = face_crop.haar_detector(canvas)
  assert len(faces) == 1
  x, y, w, h = faces[0]
  assert 450 < x + w / 2 < 600 and 100 < y + h / 2 < 230
  x0, y0, x1, y1 = face_crop.stable_face_box([canvas, canvas], margin=0.2)
  assert x1 - x0 == y1 - y0 == round(w * 1.4)
  assert x0 <= x and y0 <= y and x + w <= x1 and y + h <= y1


def test_warnings_name_the_video(caplog):
  """A corpus build crops hundreds of videos: a warning naming none could not be traced."""
  two = iter([(10, 10, 40, 40), (100, 60, 40, 40)] * 4)
  with caplog.at_level(logging.WARNING, logger=face_crop.__name__):
    face_crop.stable_face_box(frames(), sample=4, name="rawpic/s15/15_0101x")
    face_crop.stable_face_box(frames(4), sample=4, detector=lambda f: [next(two)],
                              name="videos/P01/a.mp4")
  assert "rawpic/s15/15_0101x: no face found in 4 sampled frames" in caplog.text
  assert "videos/P01/a.mp4: faces found in 2 of 4 sampled frames lie elsewhere" in caplog.text
