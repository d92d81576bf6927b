"""Clip-consistent augmentation: one draw per window, applied to every frame.

Labels are per frame and positional in time, so only spatial/photometric changes that
are identical across the window's frames are allowed: a horizontal flip, a small
crop-and-resize and a brightness/contrast change. Nothing here moves frames in time.
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


@dataclasses.dataclass(frozen=True)
class WindowAugment:
  """One window's draw: crop box (y0, x0, h, w) in stored pixels, flip, photometric."""
  box: tuple[int, int, int, int] | None
  flip: bool
  brightness: float
  contrast: float

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
  return WindowAugment(box=box, flip=flip, brightness=brightness, contrast=contrast)


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


def resize(img: np.ndarray, size: int) -> np.ndarray:
  """Square resize (area when shrinking, bilinear when growing); no-op at `size`."""
  if img.shape[:2] == (size, size):
    return img
  shrink = img.shape[0] > size or img.shape[1] > size
  return cv2.resize(img, (size, size),
                    interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
