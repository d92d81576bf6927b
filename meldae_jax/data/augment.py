"""Clip-consistent augmentation: one draw per window, applied to every frame.

Labels are per frame and positional in time, so only spatial/photometric changes that
are identical across the window's frames are allowed: a horizontal flip, a small
crop-and-resize, a brightness/contrast change and a low-light view (the window dimmed
by one factor, with fresh sensor noise per frame). Nothing here moves frames in time.
"""
import dataclasses
from typing import Any

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Ranges of the per-window augmentation (defaults are mild: faces are aligned crops)."""
  flip_prob: float = 0.5
  min_crop: float = 0.85  # kept side fraction of the crop, uniform in [min_crop, 1]
  brightness: float = 0.1  # additive delta, uniform in +-brightness * 255
  contrast: float = 0.2  # factor uniform in [1 - contrast, 1 + contrast] around grey 128
  # Low light: with probability `low_light_prob` the window's intensities are scaled by a
  # gain uniform in [low_light_min, 1] (towards black) and Gaussian noise of
  # `low_light_noise` grey levels is added, drawn anew per frame. A dark face's MEs change
  # few grey levels while a camera's noise stays the same; this shows a model such faces.
  low_light_prob: float = 0.0
  low_light_min: float = 0.3
  low_light_noise: float = 1.0

  def __post_init__(self):
    for name, ok, want in (("flip_prob", 0 <= self.flip_prob <= 1, "in [0, 1]"),
                           ("min_crop", 0 < self.min_crop <= 1, "in (0, 1]"),
                           ("brightness", 0 <= self.brightness <= 1, "in [0, 1]"),
                           # 1 - contrast < 0 would invert the image
                           ("contrast", 0 <= self.contrast <= 1, "in [0, 1]"),
                           ("low_light_prob", 0 <= self.low_light_prob <= 1, "in [0, 1]"),
                           ("low_light_min", 0 < self.low_light_min <= 1, "in (0, 1]"),
                           ("low_light_noise", self.low_light_noise >= 0, ">= 0")):
      if not ok:
        raise ValueError(f"augment {name} must be {want}, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class WindowAugment:
  """One window's draw: crop box (y0, x0, h, w) in stored pixels, flip, photometric."""
  box: tuple[int, int, int, int] | None
  flip: bool
  brightness: float
  contrast: float
  low_light: float = 1.0  # intensity gain of the low-light view (1: off)
  noise: float = 0.0  # its per-frame sensor noise (grey levels)

  def lut(self) -> np.ndarray | None:
    """uint8 lookup table of the brightness/contrast change (None when it is identity)."""
    if self.brightness == 0.0 and self.contrast == 1.0:
      return None
    x = np.arange(256, dtype=np.float32)
    y = (x - 128.0) * self.contrast + 128.0 + self.brightness * 255.0
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def as_config(augment: Any, name: str = "augment") -> AugmentConfig | None:
  """Accepts False/None (off), True (defaults), a dict of fields or an AugmentConfig.

  A dict with a field AugmentConfig lacks is a TypeError naming it (as `name`, e.g. the
  config key it came from) and the valid fields.
  """
  if augment is None or augment is False:
    return None
  if augment is True:
    return AugmentConfig()
  if isinstance(augment, AugmentConfig):
    return augment
  fields = dict(augment)
  valid = {f.name for f in dataclasses.fields(AugmentConfig)}
  if unknown := sorted(set(fields) - valid):
    raise TypeError(f"{name} has unknown field(s) {', '.join(unknown)}; "
                    f"valid: {', '.join(sorted(valid))}")
  return AugmentConfig(**fields)


def sample(rng: np.random.Generator, height: int, width: int,
           config: AugmentConfig) -> WindowAugment:
  """Draws one window's augmentation for frames stored at `height` x `width`."""
  scale = rng.uniform(config.min_crop, 1.0) if config.min_crop < 1.0 else 1.0
  ch, cw = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
  y0 = int(rng.integers(0, height - ch + 1))
  x0 = int(rng.integers(0, width - cw + 1))
  box = None if (ch, cw) == (height, width) else (y0, x0, ch, cw)
  flip = bool(rng.random() < config.flip_prob)
  brightness = float(rng.uniform(-config.brightness, config.brightness))
  contrast = float(rng.uniform(1.0 - config.contrast, 1.0 + config.contrast))
  low_light, noise = 1.0, 0.0
  if config.low_light_prob > 0 and rng.random() < config.low_light_prob:
    low_light = float(rng.uniform(config.low_light_min, 1.0))
    noise = float(config.low_light_noise)
  return WindowAugment(box=box, flip=flip, brightness=brightness, contrast=contrast,
                       low_light=low_light, noise=noise)


def apply_to_frame(img: np.ndarray, aug: WindowAugment, lut: np.ndarray | None,
                   size: int) -> np.ndarray:
  """Crop, resize to `size`, flip and brightness/contrast of one (H, W, 3) uint8 frame.

  cv2 per frame (SIMD, releases the GIL) is several times faster than numpy on the window.
  """
  if aug.box is not None:
    y0, x0, h, w = aug.box
    img = img[y0:y0 + h, x0:x0 + w]
  img = resize(img, size)
  if aug.flip:
    img = cv2.flip(img, 1)
  if lut is not None:
    img = cv2.LUT(img, lut)
  return img


def apply_low_light(video: np.ndarray, aug: WindowAugment,
                    rng: np.random.Generator) -> np.ndarray:
  """Dims a (T, H, W, C) uint8 window by `aug.low_light` and adds per-frame noise, in place.

  Only call it on the window's real frames (padding must stay zero).
  """
  if aug.low_light == 1.0 and aug.noise == 0.0:
    return video
  x = video.astype(np.float32) * np.float32(aug.low_light)
  if aug.noise > 0:
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(aug.noise)
  np.clip(np.rint(x), 0, 255, out=x)
  video[...] = x.astype(np.uint8)
  return video


def resize(img: np.ndarray, size: int) -> np.ndarray:
  """Square resize (area when shrinking, bilinear when growing); no-op at `size`."""
  if img.shape[:2] == (size, size):
    return img
  shrink = img.shape[0] > size or img.shape[1] > size
  return cv2.resize(img, (size, size),
                    interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
