"""Vector face renderer: a cartoon face crop whose features follow per-frame controls.

Geometry lives on a 112 px reference canvas; points are moved by the head pose, scaled to
the output size and drawn with OpenCV at sub-pixel precision (fixed point, anti-aliased),
so even a 1-2 px micro-movement is real, localized image motion. ~1.3 ms CPU per frame.
"""
import dataclasses

import cv2
import numpy as np

from meldae_jax.data.synthetic import events

REF = 112.0  # reference canvas size; control displacements are in px of this canvas
_SHIFT = 4  # fixed-point bits for sub-pixel drawing
_ONE = 1 << _SHIFT

SKIN_TONES = np.array([  # RGB, light to dark
    (255, 224, 196), (241, 194, 167), (224, 172, 138), (198, 134, 98),
    (170, 110, 75), (141, 85, 57), (110, 66, 44), (84, 52, 36)], np.float64)
HAIR_COLOURS = np.array([
    (25, 20, 18), (60, 40, 28), (105, 70, 40), (170, 135, 85), (140, 60, 30),
    (150, 150, 150)], np.float64)
IRIS_COLOURS = np.array([(70, 45, 25), (40, 25, 15), (70, 100, 140), (80, 110, 70)],
                        np.float64)


@dataclasses.dataclass(frozen=True)
class FaceParams:
  """Identity of a synthetic subject (reference-canvas px, RGB colours)."""
  cx: float
  cy: float
  half_w: float
  half_h: float
  chin_taper: float
  eye_y: float
  eye_dx: float
  eye_w: float
  eye_h: float
  iris_r: float
  brow_dy: float
  brow_len: float
  brow_thick: float
  brow_arch: float
  nose_y: float
  nose_w: float
  mouth_y: float
  mouth_hw: float
  upper_lip: float
  lower_lip: float
  hair_style: int  # 0 short, 1 long, 2 shaved
  hairline: float
  marks: tuple  # ((x, y, r), ...) moles/freckles, face-relative
  skin: tuple
  hair: tuple
  iris: tuple
  lips: tuple


def sample_face(rng) -> FaceParams:
  """Draws a random identity: shape, proportions, colours."""
  u = rng.uniform
  tone = SKIN_TONES[rng.integers(len(SKIN_TONES))] * u(0.93, 1.05, 3)
  skin = np.clip(tone, 0, 255)
  half_w, half_h = u(29, 35), u(39, 45)
  cy = 60 + u(-2, 2)
  eye_y = cy - half_h * u(0.08, 0.18)
  nose_y = eye_y + half_h * u(0.38, 0.48)
  marks = tuple((u(-0.7, 0.7) * half_w, u(-0.5, 0.7) * half_h, u(0.5, 1.1))
                for _ in range(rng.integers(2, 7)))
  lips = np.clip(skin * np.array([0.82, 0.55, 0.55]) + np.array([30, 0, 5]), 0, 255)
  return FaceParams(
      cx=56 + u(-2, 2), cy=cy, half_w=half_w, half_h=half_h, chin_taper=u(0.78, 0.95),
      eye_y=eye_y, eye_dx=half_w * u(0.38, 0.47), eye_w=u(6.5, 8.5), eye_h=u(3.0, 4.0),
      iris_r=u(2.6, 3.2), brow_dy=u(7.0, 9.5), brow_len=u(14, 19), brow_thick=u(1.8, 3.2),
      brow_arch=u(1.0, 3.0), nose_y=nose_y, nose_w=u(4.5, 7.0),
      mouth_y=nose_y + u(9, 12), mouth_hw=u(9, 12.5), upper_lip=u(1.6, 2.8),
      lower_lip=u(2.2, 3.5), hair_style=int(rng.integers(3)), hairline=u(0.88, 0.97),
      marks=marks, skin=tuple(skin), hair=tuple(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]),
      iris=tuple(IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]), lips=tuple(lips))


def region_boxes(face: FaceParams, image_size: int) -> dict:
  """Neutral-face boxes (x0, y0, x1, y1, output px, exclusive end) of the ME regions."""
  f = face
  boxes = {
      "brows": (f.cx - f.eye_dx - f.brow_len / 2 - 3, f.eye_y - f.brow_dy - 10,
                f.cx + f.eye_dx + f.brow_len / 2 + 3, f.eye_y - f.brow_dy + 5),
      "eyes": (f.cx - f.eye_dx - f.eye_w - 3, f.eye_y - f.eye_h - 3,
               f.cx + f.eye_dx + f.eye_w + 3, f.eye_y + f.eye_h + 3),
      "nose": (f.cx - f.nose_w - 5, f.eye_y + 5, f.cx + f.nose_w + 5, f.nose_y + 4),
      "mouth": (f.cx - f.mouth_hw - 6, f.mouth_y - 7,
                f.cx + f.mouth_hw + 6, f.mouth_y + 11),
  }
  k = image_size / REF
  out = {}
  for name, (x0, y0, x1, y1) in boxes.items():
    x0, y0 = max(0, int(np.floor(x0 * k))), max(0, int(np.floor(y0 * k)))
    x1 = min(image_size, int(np.ceil(x1 * k)))
    y1 = min(image_size, int(np.ceil(y1 * k)))
    out[name] = (x0, y0, x1, y1)
  return out


def _colour(rgb, scale=1.0, towards=None, amount=0.0):
  c = np.asarray(rgb, np.float64) * scale
  if towards is not None:
    c = (1 - amount) * c + amount * np.asarray(towards, np.float64)
  return tuple(float(v) for v in np.clip(c, 0, 255))


_UNIT_CIRCLES = {n: np.stack([np.cos(a), np.sin(a)], 1) for n in (8, 10, 12, 16, 24)
                 for a in [np.linspace(0, 2 * np.pi, n, endpoint=False)]}
_U9 = np.linspace(-1, 1, 9)
_U11 = np.linspace(-1, 1, 11)
_U6 = np.linspace(0, 1, 6)
_A36 = np.linspace(0, 2 * np.pi, 36, endpoint=False)
_ARC15 = np.linspace(np.pi, 2 * np.pi, 15)
_WRINKLE_X = np.linspace(-12, 12, 7)
_WRINKLE_Y = 1.2 * np.linspace(-1, 1, 7) ** 2


def _ellipse(cx, cy, ax, ay, n=24):
  return _UNIT_CIRCLES[n] * (ax, ay) + (cx, cy)


def _background(rng, size):
  """Static per-video backdrop: a tinted gradient with a few soft blobs."""
  c0, c1 = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
  y = np.linspace(0, 1, size)[:, None, None]
  img = c0 * (1 - y) + c1 * y + np.zeros((1, size, 3))
  for _ in range(4):
    blob = np.zeros((size, size), np.float32)
    cv2.circle(blob, tuple(int(v) for v in rng.uniform(0, size, 2)),
               int(rng.uniform(0.1, 0.3) * size), 1.0, -1)
    blob = cv2.GaussianBlur(blob, (0, 0), size * 0.06)
    img += blob[..., None] * rng.uniform(-40, 40, 3)
  return np.clip(img + 0.5, 0, 255).astype(np.uint8)


class FaceRenderer:
  """Renders frames of one video: one identity, one backdrop, one noise level."""

  def __init__(self, face: FaceParams, image_size: int, rng, noise_sigma: float):
    self.f = face
    self.size = int(image_size)
    self.k = self.size / REF
    self.rng = rng
    self.background = _background(rng, self.size)
    self.noise_sigma = float(noise_sigma)
    pad = 8
    self._noise_bank = rng.standard_normal(
        (8, self.size + pad, self.size + pad, 3)).astype(np.float32) * self.noise_sigma
    grid = ((np.arange(self.size) + 0.5) / self.size * 2 - 1).astype(np.float32)
    self._gx, self._gy = np.meshgrid(grid, grid)
    self._thin = max(1, int(round(self.k)))
    skin = face.skin
    self.c = {
        "neck": _colour(skin, 0.8), "hair": _colour(face.hair), "ear": _colour(skin, 0.88),
        "skin": _colour(skin), "highlight": _colour(skin, 1.05),
        "cheek": _colour(skin, 1.0, (220, 90, 90), 0.12), "mark": _colour(skin, 0.72),
        "sclera": (235.0, 232.0, 225.0), "iris": _colour(face.iris),
        "pupil": (15.0, 12.0, 12.0), "lid": _colour(skin, 0.97), "lash": (30.0, 22.0, 20.0),
        "crease": _colour(skin, 0.8), "under_eye": _colour(skin, 0.86),
        "brow": _colour(face.hair, 0.8), "bridge": _colour(skin, 0.9),
        "ala": _colour(skin, 0.92), "nostril": _colour(skin, 0.45),
        "nose_line": _colour(skin, 0.85), "lips": _colour(face.lips),
        "mouth": (70.0, 25.0, 30.0), "teeth": (230.0, 225.0, 215.0),
        "lip_line": _colour(face.lips, 0.55), "fold": _colour(skin, 0.87),
    }

  # --- display list: shapes are queued in face coordinates, posed and drawn at once ---
  def _fill(self, p, depth, colour):
    self._ops.append((None, np.asarray(p, np.float64), depth, colour))

  def _line(self, p, depth, colour, thickness=None):
    self._ops.append((thickness or self._thin, np.asarray(p, np.float64), depth, colour))

  def _draw_queued(self, img, ct):
    """Applies the head pose (depth parallax for yaw/pitch, roll, scale, shift) and draws."""
    f = self.f
    pts = np.concatenate([op[1] for op in self._ops])
    sizes = [len(op[1]) for op in self._ops]
    depth = np.repeat([op[2] for op in self._ops], sizes)[:, None]
    roll = np.deg2rad(ct["head_roll"])
    scale = (1.0 + ct["head_scale"]) * self.k * _ONE
    rot = scale * np.array([[np.cos(roll), -np.sin(roll)], [np.sin(roll), np.cos(roll)]])
    centre = np.array([f.cx, f.cy])
    shift = (centre + np.array([ct["head_tx"], ct["head_ty"]])) * self.k * _ONE
    pts = pts + depth * np.array([ct["head_yaw"], ct["head_pitch"]]) - centre
    posed = np.round(pts @ rot.T + shift).astype(np.int32)
    start = 0
    for (thickness, _, _, colour), n in zip(self._ops, sizes):
      poly = posed[start:start + n]
      start += n
      if thickness is None:
        cv2.fillPoly(img, [poly], colour, cv2.LINE_AA, _SHIFT)
      else:
        cv2.polylines(img, [poly], False, colour, thickness, cv2.LINE_AA, _SHIFT)
    self._ops = []

  def render(self, ct: dict) -> np.ndarray:
    """One RGB uint8 frame for controls `ct` (channel -> float, see events.CHANNELS)."""
    f = self.f
    img = self.background.copy()
    c = self.c
    self._ops = []
    jaw = ct["jaw"] * events.JAW_PIXELS
    # Neck, hair behind, ears.
    neck = [(f.cx - f.half_w * 0.45, f.cy + f.half_h * 0.5), (f.cx + f.half_w * 0.45,
            f.cy + f.half_h * 0.5), (f.cx + f.half_w * 0.55, 130), (f.cx - f.half_w * 0.55, 130)]
    self._fill(neck, -0.3, c["neck"])
    if f.hair_style == 1:
      self._fill(_ellipse(f.cx, f.cy + 4, f.half_w * 1.25, f.half_h * 1.12), -0.6, c["hair"])
    for sx in (-1, 1):
      self._fill(_ellipse(f.cx + sx * f.half_w * 0.98, f.eye_y + 5, 4.0, 8.0, 12), -0.5,
                 c["ear"])
    # Face outline: the chin drops with the jaw.
    a = _A36
    sin = np.sin(a)
    lower = np.clip(sin, 0, None)
    width = f.half_w * (1 - (1 - f.chin_taper) * lower ** 1.5)
    outline = np.stack([f.cx + width * np.cos(a),
                        f.cy + f.half_h * sin + 0.55 * jaw * lower ** 2], 1)
    self._fill(outline, 0.0, c["skin"])
    self._fill(_ellipse(f.cx, f.cy - 4, f.half_w * 0.7, f.half_h * 0.75), 0.3,
               c["highlight"])
    # Cheeks rise with a smile.
    cheek_y = f.nose_y - 1 - ct["cheek_raise"]
    for sx in (-1, 1):
      self._fill(_ellipse(f.cx + sx * f.eye_dx * 1.05, cheek_y, 6.5, 4.5, 16), 0.4,
                 c["cheek"])
    for mx, my, mr in f.marks:
      self._fill(_ellipse(f.cx + mx, f.cy + my, mr, mr, 8), 0.3, c["mark"])
    # Hair on top.
    if f.hair_style != 2:
      top = f.cy - f.half_h * f.hairline
      arc = _ARC15
      cap = np.stack([f.cx + 1.06 * f.half_w * np.cos(arc),
                      f.cy - 0.1 * f.half_h + 1.0 * f.half_h * np.sin(arc)], 1)
      line = [(f.cx + 0.97 * f.half_w, f.cy - 0.2 * f.half_h), (f.cx + 0.55 * f.half_w, top + 3),
              (f.cx, top), (f.cx - 0.5 * f.half_w, top + 2),
              (f.cx - 0.97 * f.half_w, f.cy - 0.2 * f.half_h)]
      self._fill(np.concatenate([cap, line]), 0.0, c["hair"])
    self._draw_eyes(ct)
    self._draw_brows(ct)
    self._draw_nose(ct)
    self._draw_mouth(ct, jaw)
    self._draw_queued(img, ct)
    return self._finish(img, ct)

  def _draw_eyes(self, ct):
    f = self.f
    c = self.c
    x = _U9
    bow = 1 - x ** 2
    for sx, side in ((-1, "_l"), (1, "_r")):
      ex = f.cx + sx * f.eye_dx
      openness = 1.0 - ct["lid_close" + side]
      squint = ct["squint" + side]
      lower_y = f.eye_y + (0.55 * f.eye_h - squint) * bow
      upper_y = lower_y - max(0.0, 1.55 * f.eye_h - 0.5 * squint) * bow * max(openness, 0.0)
      upper = np.stack([ex + f.eye_w * x, upper_y], 1)
      lower = np.stack([ex + f.eye_w * x, lower_y], 1)
      sclera = np.concatenate([upper, lower[::-1]])
      self._fill(sclera, 0.5, c["sclera"])
      ix, iy = ex + ct["gaze_x"], f.eye_y - 0.1 * f.eye_h + ct["gaze_y"]
      self._fill(_ellipse(ix, iy, f.iris_r, f.iris_r, 16), 0.55, c["iris"])
      self._fill(_ellipse(ix, iy, f.iris_r * 0.45, f.iris_r * 0.45, 10), 0.55, c["pupil"])
      # Lids (skin) clip the iris; the lower lid rises with a squint.
      cap = np.stack([ex + 1.3 * f.eye_w * x[::-1], np.full(9, f.eye_y - 2.2 * f.eye_h)], 1)
      self._fill(np.concatenate([upper, cap]), 0.5, c["lid"])
      base = np.stack([ex + 1.3 * f.eye_w * x[::-1], np.full(9, f.eye_y + 2.0 * f.eye_h)], 1)
      self._fill(np.concatenate([lower, base]), 0.5, c["skin"])
      self._line(upper, 0.5, c["lash"])
      crease = upper.copy()
      crease[:, 1] = f.eye_y - (1.9 * f.eye_h - 0.3 * squint) * bow
      self._line(crease, 0.5, c["crease"])
      self._line(lower + (0, 0.8), 0.5, c["under_eye"])

  def _draw_brows(self, ct):
    f = self.f
    u = _U6  # 0 inner -> 1 outer
    for sx, side in ((-1, "_l"), (1, "_r")):
      raise_, lower = ct["brow_raise" + side], ct["brow_lower" + side]
      inner_x = f.cx + sx * (f.eye_dx - f.brow_len * 0.45)
      x = inner_x + sx * f.brow_len * u - sx * lower * 0.6 * (1 - u)
      y = (f.eye_y - f.brow_dy - f.brow_arch * np.sin(np.pi * (0.3 + 0.7 * u))
           - raise_ * (1.0 - 0.2 * u) + lower * (1.0 - 0.7 * u))
      half = f.brow_thick * (0.6 + 0.4 * (1 - u)) / 2
      poly = np.concatenate([np.stack([x, y - half], 1), np.stack([x, y + half], 1)[::-1]])
      self._fill(poly, 0.5, self.c["brow"])
    # Forehead lines with a raise, glabella lines with a frown.
    raise_ = 0.5 * (ct["brow_raise_l"] + ct["brow_raise_r"])
    if raise_ > 0.5:
      tone = _colour(f.skin, 1.0, (60, 40, 30), min(0.35, 0.06 * raise_))
      for dy in (5, 8.5):
        y0 = f.eye_y - f.brow_dy - f.brow_arch - dy - 0.3 * raise_
        line = np.stack([f.cx + _WRINKLE_X, y0 + _WRINKLE_Y], 1)
        self._line(line, 0.4, tone)
    lower = 0.5 * (ct["brow_lower_l"] + ct["brow_lower_r"])
    if lower > 0.3:
      tone = _colour(f.skin, 1.0, (60, 40, 30), min(0.4, 0.1 * lower))
      for sx in (-1.5, 1.5):
        y0 = f.eye_y - f.brow_dy
        self._line([(f.cx + sx, y0 - 3), (f.cx + sx * 0.8, y0 + 3)], 0.5, tone)

  def _draw_nose(self, ct):
    f = self.f
    w = ct["nose_wrinkle"]
    tip = f.nose_y - 0.8 * w
    c = self.c
    self._line([(f.cx - 1.5, f.eye_y + 2), (f.cx - 2.5, tip - 4)], 0.8, c["bridge"])
    for sx in (-1, 1):
      ala = _ellipse(f.cx + sx * (f.nose_w - 1.2 + 0.3 * w), tip, 2.6, 2.2, 12)
      self._fill(ala, 0.9, c["ala"])
      self._fill(_ellipse(f.cx + sx * (f.nose_w * 0.45), tip + 1.3, 1.5, 0.9, 8), 1.0,
                 c["nostril"])
    self._line([(f.cx - f.nose_w + 1, tip - 1.8), (f.cx, tip - 2.4 - 0.2 * w),
                (f.cx + f.nose_w - 1, tip - 1.8)], 1.0, c["nose_line"])
    if w > 0.3:
      tone = _colour(f.skin, 1.0, (60, 40, 30), min(0.45, 0.12 * w))
      for dy in (0, 2.5):
        y0 = f.eye_y + 4 + dy
        self._line([(f.cx - 3.5, y0 + 1), (f.cx, y0), (f.cx + 3.5, y0 + 1)], 0.8, tone)

  def _draw_mouth(self, ct, jaw):
    f = self.f
    rnd = ct["mouth_round"]
    hw = f.mouth_hw * (1 - 0.2 * max(rnd, 0.0) + 0.05 * max(-rnd, 0.0))
    corners = {}
    for sx, side in ((-1, "_l"), (1, "_r")):
      corners[sx] = (f.cx + sx * (hw + ct["lip_out" + side]),
                     f.mouth_y - ct["lip_up" + side] + 0.25 * jaw)
    c = self.c
    u = _U11
    xl, yl = corners[-1]
    xr, yr = corners[1]
    t = (u + 1) / 2
    x = xl + (xr - xl) * t
    base = yl + (yr - yl) * t
    bow = 1 - u ** 2
    # Cupid's bow on the upper lip; the jaw drops the lower lip.
    upper_out = base - f.upper_lip * bow - 0.9 * np.exp(-((np.abs(u) - 0.35) / 0.18) ** 2) * bow
    upper_in = base + 0.15 * bow - 0.12 * jaw * bow
    lower_in = base + (0.2 + 0.9 * jaw) * bow
    lower_out = lower_in + f.lower_lip * bow ** 0.7 + 0.1 * jaw * bow
    self._fill(np.concatenate([np.stack([x, upper_out], 1),
                                         np.stack([x, lower_out], 1)[::-1]]), 0.6,
               c["lips"])
    if jaw > 0.3:
      inner = np.concatenate([np.stack([x, upper_in], 1), np.stack([x, lower_in], 1)[::-1]])
      self._fill(inner, 0.6, c["mouth"])
      teeth_h = np.minimum(0.45 * (lower_in - upper_in), 2.5)
      keep = np.abs(u) < 0.75
      teeth = np.concatenate([np.stack([x[keep], upper_in[keep]], 1),
                              np.stack([x[keep], (upper_in + teeth_h)[keep]], 1)[::-1]])
      self._fill(teeth, 0.6, c["teeth"])
    self._line(np.stack([x, upper_in], 1), 0.6, c["lip_line"])
    # Nasolabial folds follow the lip corners and the cheeks.
    for sx in (-1, 1):
      cxr, cyr = corners[sx]
      start = (f.cx + sx * (f.nose_w + 1.5), f.nose_y - 1 - 0.5 * ct["cheek_raise"])
      fold = [start, (0.5 * (start[0] + cxr) + sx * 2.5, 0.5 * (start[1] + cyr)),
              (cxr + sx * 2.5, cyr + 2.5)]
      self._line(fold, 0.5, c["fold"])

  def _finish(self, img, ct):
    """Directional illumination, global gain drift, sensor noise (float32, OpenCV)."""
    slope, angle, gain = ct["light_slope"], ct["light_dir"], ct["light_gain"]
    light = cv2.addWeighted(self._gx, gain * slope * np.cos(angle),
                            self._gy, gain * slope * np.sin(angle), gain)
    i, dy, dx = self.rng.integers(len(self._noise_bank)), *self.rng.integers(0, 8, 2)
    out = img.astype(np.float32)
    out *= light[..., None]
    out += self._noise_bank[i, dy:dy + self.size, dx:dx + self.size]
    np.maximum(out, 0.0, out=out)
    return cv2.convertScaleAbs(out)  # rounds and saturates to uint8
