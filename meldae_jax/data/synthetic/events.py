"""Timelines of a synthetic conversation: who speaks when, and what the face does.

A timeline is a set of per-frame control channels (displacements in pixels of a 112 px
reference face, or unitless 0..1 amounts) plus the annotated events. Speech is the
"noise" of the paper: large syllable-rate jaw motion, lip-corner jitter and emphasis
eyebrow raises. Micro-expressions (MEs) are the signal: brief, local, low-amplitude.
Blinks, saccades and nods are unlabelled distractors, macro-expressions are labelled
contrastive events.
"""
import dataclasses

import numpy as np
from scipy import ndimage

# Local ME actions (FACS-like) -> the face region they move.
ME_ACTIONS = {
    "brow_raise": "brows",        # AU1+2
    "brow_lower": "brows",        # AU4
    "eye_squint": "eyes",         # AU6/7
    "nose_wrinkle": "nose",       # AU9
    "lip_corner_pull": "mouth",   # AU12
    "lip_corner_depress": "mouth",  # AU15
}
MACRO_ACTIONS = ("smile", "frown", "surprise")

CHANNELS = (
    "jaw", "mouth_round", "lip_up_l", "lip_up_r", "lip_out_l", "lip_out_r",
    "brow_raise_l", "brow_raise_r", "brow_lower_l", "brow_lower_r",
    "lid_close_l", "lid_close_r", "squint_l", "squint_r", "nose_wrinkle", "cheek_raise",
    "gaze_x", "gaze_y", "head_tx", "head_ty", "head_roll", "head_scale", "head_yaw",
    "head_pitch", "light_gain", "light_dir", "light_slope",
)

# What the knob changes: ME amplitude (px at 112 px) falls, nuisance motion and noise
# rise. Speech motion is the same at every level, so difficulty = ME-to-speech ratio.
DIFFICULTY_LEVELS = {"easy": 0.0, "default": 0.5, "hard": 1.0}
JAW_PIXELS = 7.0  # lower-lip drop (px at 112 px) at jaw = 1


def difficulty_value(difficulty) -> float:
  """Accepts a level name or a number in [0, 1]."""
  if isinstance(difficulty, str):
    return DIFFICULTY_LEVELS[difficulty]
  value = float(difficulty)
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"difficulty must be in [0, 1], got {value}")
  return value


def me_amplitude_px(difficulty) -> float:
  """Peak displacement of an ME's main feature, in px of a 112 px face."""
  return 3.6 - 2.2 * difficulty_value(difficulty)


def noise_sigma(difficulty) -> float:
  """Sensor noise standard deviation (grey levels)."""
  return 1.0 + 1.5 * difficulty_value(difficulty)


def head_jitter_px(difficulty) -> float:
  """Scale of the slow head drift (px at 112 px)."""
  return 0.6 + 0.8 * difficulty_value(difficulty)


@dataclasses.dataclass
class Event:
  """One annotated expression; frame indices 0-based inclusive."""
  kind: str  # "micro" | "macro"
  action: str
  onset: int
  apex: int
  offset: int
  amplitude: float  # px at 112 px
  side: str  # "both" | "left" | "right"
  speaking: int  # speaking label at the apex

  @property
  def region(self) -> str:
    if self.kind == "micro":
      return ME_ACTIONS[self.action]
    return {"smile": "mouth", "frown": "brows", "surprise": "brows"}[self.action]


@dataclasses.dataclass
class Timeline:
  fps: float
  speaking: np.ndarray  # (T,) int8
  controls: dict  # channel -> (T,) float32
  events: list  # of Event, sorted by onset

  @property
  def num_frames(self) -> int:
    return len(self.speaking)


def _smoothstep(x):
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3.0 - 2.0 * x)


def me_profile(num_frames: int, onset: int, apex: int, offset: int) -> np.ndarray:
  """Onset-apex-offset intensity: > 0 exactly on [onset, offset], 1 at the apex."""
  t = np.arange(num_frames, dtype=np.float64)
  rise = _smoothstep((t - onset + 1) / (apex - onset + 1))
  fall = _smoothstep((offset + 1 - t) / (offset + 1 - apex))
  profile = np.where(t <= apex, rise, fall)
  profile[(t < onset) | (t > offset)] = 0.0
  return profile


def _bump(num_frames: int, center: float, width: float) -> np.ndarray:
  """Raised-cosine bump of total width `width` frames."""
  t = np.arange(num_frames, dtype=np.float64)
  x = np.clip((t - center) / (width / 2.0), -1.0, 1.0)
  return 0.5 * (1.0 + np.cos(np.pi * x))


def _smooth_noise(rng, num_frames: int, sigma_frames: float, scale: float) -> np.ndarray:
  """Slow random drift with unit-ish standard deviation times `scale`."""
  pad = int(3 * sigma_frames) + 1
  white = rng.standard_normal(num_frames + 2 * pad)
  smooth = ndimage.gaussian_filter1d(white, sigma_frames)[pad:pad + num_frames]
  return scale * smooth / (np.std(smooth) + 1e-9)


def speaking_segments(rng, num_frames: int, fps: float) -> np.ndarray:
  """Alternating speaking/listening turns; speaking a bit over half of the time."""
  speaking = np.zeros(num_frames, np.int8)
  state = int(rng.random() < 0.55)
  t = 0
  while t < num_frames:
    seconds = rng.uniform(3.0, 9.0) if state else rng.uniform(2.5, 7.0)
    length = max(1, int(round(seconds * fps)))
    speaking[t:t + length] = state
    t += length
    state = 1 - state
  return speaking


def _runs(mask: np.ndarray):
  """(start, end_inclusive) of the runs of True."""
  padded = np.concatenate([[0], mask.astype(np.int8), [0]])
  edges = np.flatnonzero(np.diff(padded))
  return list(zip(edges[0::2], edges[1::2] - 1))


def _add_speech(rng, c, speaking, fps):
  """Syllable-rate jaw motion, lip-shape changes and emphasis brow raises."""
  n = len(speaking)
  jaw = np.zeros(n)
  for start, end in _runs(speaking == 1):
    t = start + rng.uniform(0, 0.3) * fps
    while t < end:
      phrase_end = min(end, t + rng.uniform(1.0, 3.0) * fps)
      rate = rng.uniform(4.0, 6.0)  # syllables per second
      while t < phrase_end - 0.5 * fps / rate:
        period = fps / (rate * rng.uniform(0.8, 1.2))
        bump = _bump(n, t + period / 2, period * 0.95)
        jaw += rng.uniform(0.35, 1.0) * bump
        c["mouth_round"] += rng.uniform(-0.6, 0.6) * bump
        c["lip_up_l"] += rng.normal(0.0, 0.6) * bump
        c["lip_up_r"] += rng.normal(0.0, 0.6) * bump
        t += period
      t += rng.uniform(0.15, 0.5) * fps  # pause between phrases (still "speaking")
    # Emphasis: large, slow, symmetric brow raises with a small nod.
    num_emph = rng.poisson(0.25 * (end - start + 1) / fps)
    for _ in range(num_emph):
      width = rng.uniform(0.5, 1.2) * fps
      bump = _bump(n, rng.uniform(start, end), width)
      amp = rng.uniform(4.0, 7.0)
      c["brow_raise_l"] += amp * rng.uniform(0.9, 1.1) * bump
      c["brow_raise_r"] += amp * rng.uniform(0.9, 1.1) * bump
      c["head_pitch"] += rng.uniform(1.0, 2.0) * bump
  c["jaw"] += jaw
  c["lip_out_l"] -= 1.5 * np.clip(c["mouth_round"], 0, None)
  c["lip_out_r"] -= 1.5 * np.clip(c["mouth_round"], 0, None)
  # The head bobs with the syllables.
  c["head_ty"] += 0.4 * jaw


def _add_distractors(rng, c, speaking, fps, jitter):
  """Unlabelled motion: blinks, saccades, nods, head drift, illumination drift.

  Widths were tuned in frames at 30 fps; `k` keeps them the same in seconds at any fps.
  """
  n = len(speaking)
  seconds = n / fps
  k = fps / 30.0
  for _ in range(rng.poisson(0.25 * seconds)):  # blinks: fast, full closure
    width = rng.uniform(4, 7) * fps / 30.0
    bump = _bump(n, rng.uniform(0, n), width)
    c["lid_close_l"] += bump
    c["lid_close_r"] += bump
  gaze_x = np.zeros(n)
  gaze_y = np.zeros(n)
  for start in np.sort(rng.uniform(0, n, rng.poisson(0.3 * seconds))).astype(int):
    gaze_x[start:] = rng.uniform(-1.2, 1.2)
    gaze_y[start:] = rng.uniform(-0.4, 0.4)
  c["gaze_x"] += ndimage.gaussian_filter1d(gaze_x, 0.7 * k)
  c["gaze_y"] += ndimage.gaussian_filter1d(gaze_y, 0.7 * k)
  listening = speaking == 0
  for _ in range(rng.poisson(0.1 * seconds)):  # nods while listening
    center = rng.uniform(0, n)
    if listening[min(n - 1, int(center))]:
      c["head_pitch"] += rng.uniform(1.5, 3.0) * _bump(n, center, rng.uniform(0.6, 1.2) * fps)
  # Slow drift, livelier while speaking.
  liveliness = 0.5 + ndimage.gaussian_filter1d(speaking.astype(np.float64), 10 * k)
  c["head_tx"] += liveliness * _smooth_noise(rng, n, 12 * k, jitter)
  c["head_ty"] += liveliness * _smooth_noise(rng, n, 12 * k, 0.7 * jitter)
  c["head_roll"] += liveliness * _smooth_noise(rng, n, 20 * k, 1.2 * jitter)
  c["head_scale"] += _smooth_noise(rng, n, 30 * k, 0.01 * jitter)
  c["head_yaw"] += liveliness * _smooth_noise(rng, n, 25 * k, 1.2 * jitter)
  c["light_gain"] += 1.0 + _smooth_noise(rng, n, 45 * k, 0.04)
  c["light_dir"] += rng.uniform(0, 2 * np.pi) + _smooth_noise(rng, n, 60 * k, 0.3)
  c["light_slope"] += rng.uniform(0.08, 0.22) + _smooth_noise(rng, n, 60 * k, 0.02)


def _apply_expression(c, action, amp, side, profile):
  """Adds one expression's control displacements (amp in px at its peak)."""
  sides = ("_l", "_r") if side == "both" else (("_l",) if side == "left" else ("_r",))
  p = amp * profile
  if action in ("brow_raise", "surprise"):
    for s in sides:
      c["brow_raise" + s] += p
    if action == "surprise":
      c["jaw"] += 0.05 * p
      c["lid_close_l"] -= 0.04 * p
      c["lid_close_r"] -= 0.04 * p
  elif action in ("brow_lower", "frown"):
    for s in ("_l", "_r"):
      c["brow_lower" + s] += p
    if action == "frown":
      c["lip_up_l"] -= 0.35 * p
      c["lip_up_r"] -= 0.35 * p
  elif action == "eye_squint":
    for s in sides:
      c["squint" + s] += 0.8 * p
      c["lid_close" + s] += 0.03 * p
  elif action == "nose_wrinkle":
    c["nose_wrinkle"] += p
  elif action in ("lip_corner_pull", "smile"):
    for s in sides:
      c["lip_up" + s] += 0.8 * p
      c["lip_out" + s] += 0.6 * p
    c["cheek_raise"] += 0.3 * p
    if action == "smile":
      c["squint_l"] += 0.15 * p
      c["squint_r"] += 0.15 * p
  elif action == "lip_corner_depress":
    for s in sides:
      c["lip_up" + s] -= p
  else:
    raise ValueError(f"unknown action {action}")


def _free(occupied, onset, offset, gap):
  return not occupied[max(0, onset - gap):offset + gap + 1].any()


def _gap_frames(fps: float) -> int:
  """Free frames between two expressions: at least 0.6 s at any fps (rounding gave 14
  frames, 0.58 s, at 24 fps). Whole products stay as they were (18 at 30 fps); the 1e-9
  keeps one that float rounding puts a hair above a whole number at it."""
  return int(np.ceil(0.6 * fps - 1e-9))


def _place_macros(rng, c, speaking, fps, occupied, events):
  n = len(speaking)
  for _ in range(rng.poisson(n / fps / 20.0)):
    length = int(round(rng.uniform(1.0, 4.0) * fps))
    if length > n // 2:  # short videos keep room for MEs
      continue
    for _ in range(30):
      onset = int(rng.integers(1, n - length))
      offset = onset + length - 1
      if _free(occupied, onset, offset, _gap_frames(fps)):
        break
    else:
      continue
    rise = max(2, int(round(rng.uniform(0.25, 0.6) * fps)))
    fall = max(2, int(round(rng.uniform(0.3, 0.8) * fps)))
    t = np.arange(n, dtype=np.float64)
    profile = np.minimum(_smoothstep((t - onset + 1) / rise),
                         _smoothstep((offset + 1 - t) / fall))
    action = str(rng.choice(MACRO_ACTIONS))
    amp = rng.uniform(6.0, 9.0) if action == "smile" else rng.uniform(4.5, 7.0)
    _apply_expression(c, action, amp, "both", profile)
    apex = min(offset, onset + rise - 1)
    occupied[onset:offset + 1] = True
    events.append(Event("macro", action, onset, apex, offset, float(amp), "both",
                        int(speaking[apex])))


def _place_micros(rng, c, speaking, fps, occupied, events, difficulty, me_period_s):
  """MEs: ~58% while speaking (WDMD §3.3), each inside one speaking/listening turn."""
  n = len(speaking)
  min_len = max(3, int(round(0.1 * fps)))
  max_len = max(min_len, int(round(0.5 * fps)))
  gap = _gap_frames(fps)
  turns = {s: [r for r in _runs(speaking == s) if r[1] - r[0] + 1 >= max_len + 4]
           for s in (0, 1)}
  count = max(1, rng.poisson(n / fps / me_period_s))
  base_amp = me_amplitude_px(difficulty)
  for _ in range(count):
    state = int(rng.random() < 0.58)
    if not turns[state]:
      state = 1 - state
    if not turns[state]:
      break
    length = int(rng.integers(min_len, max_len + 1))
    lengths = np.array([e - s + 1 for s, e in turns[state]], np.float64)
    for _ in range(30):
      start, end = turns[state][rng.choice(len(lengths), p=lengths / lengths.sum())]
      if end - start + 1 < length + 5:  # room for an onset in [start + 2, end - length - 1)
        continue  # (a turn of length + 4 frames left none: rng.integers raised)
      onset = int(rng.integers(start + 2, end - length - 1))
      offset = onset + length - 1
      if _free(occupied, onset, offset, gap):
        break
    else:
      continue
    apex = onset + int(round(rng.uniform(0.3, 0.55) * (length - 1)))
    action = str(rng.choice(list(ME_ACTIONS)))
    side = "both"
    if action in ("brow_raise", "lip_corner_pull", "eye_squint") and rng.random() < 0.35:
      side = str(rng.choice(["left", "right"]))
    amp = base_amp * rng.uniform(0.85, 1.15)
    _apply_expression(c, action, amp, side, me_profile(n, onset, apex, offset))
    occupied[onset:offset + 1] = True
    events.append(Event("micro", action, onset, apex, offset, float(amp), side,
                        int(speaking[apex])))


def make_timeline(rng, num_frames: int, fps: float, difficulty, me_period_s: float = 3.6,
                  place_micro: bool = True):
  """Samples one conversation: turns, speech, distractors, macro- and micro-expressions.

  MEs are sampled last, so `place_micro=False` gives the very same video without them.
  """
  c = {name: np.zeros(num_frames) for name in CHANNELS}
  speaking = speaking_segments(rng, num_frames, fps)
  _add_speech(rng, c, speaking, fps)
  _add_distractors(rng, c, speaking, fps, head_jitter_px(difficulty))
  occupied = np.zeros(num_frames, bool)
  events = []
  _place_macros(rng, c, speaking, fps, occupied, events)
  if place_micro:
    _place_micros(rng, c, speaking, fps, occupied, events, difficulty, me_period_s)
  for s in ("_l", "_r"):
    c["lid_close" + s] = np.clip(c["lid_close" + s], -0.4, 1.0)
  c["jaw"] = np.clip(c["jaw"], 0.0, 1.3)
  events.sort(key=lambda e: e.onset)
  controls = {k: v.astype(np.float32) for k, v in c.items()}
  return Timeline(fps=float(fps), speaking=speaking, controls=controls, events=events)
