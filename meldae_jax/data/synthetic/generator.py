"""Synthetic conversation videos with exact ground truth, and the corpus they form.

Everything is a pure function of integer seeds (NumPy PCG64 via SeedSequence) and
GENERATOR_VERSION, so a corpus rebuilds bit-identically; bump the version whenever the
rendered pixels or labels change.
"""
import dataclasses

import cv2
import numpy as np

from meldae_jax.data.synthetic import events as events_lib
from meldae_jax.data.synthetic import face as face_lib

GENERATOR_VERSION = 1


def _rng(*keys) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([GENERATOR_VERSION, *map(int, keys)]))


def subject_face(subject_seed: int):
  """The identity (face parameters) of a synthetic subject."""
  return face_lib.sample_face(_rng(1, subject_seed))


def video_timeline(seed: int, num_frames: int, fps: float, difficulty, me_period_s: float,
                   without_micro: bool = False):
  """The conversation of video `seed` without its pixels (cheap: no rendering)."""
  return events_lib.make_timeline(_rng(2, seed), num_frames, fps, difficulty, me_period_s,
                                  place_micro=not without_micro)


def render_timeline(timeline, face, image_size: int, rng, noise_sigma: float,
                    skip=()) -> np.ndarray:
  """Renders every frame; channels named in `skip` are zeroed (for counterfactuals)."""
  renderer = face_lib.FaceRenderer(face, image_size, rng, noise_sigma)
  names = list(timeline.controls)
  unknown = sorted(set(skip) - set(names))
  if unknown:
    raise ValueError(f"skip names no control channel: {unknown} (have {names})")
  table = np.stack([np.zeros_like(timeline.controls[n]) if n in skip
                    else timeline.controls[n] for n in names], 1).astype(np.float64)
  frames = np.empty((timeline.num_frames, image_size, image_size, 3), np.uint8)
  for t in range(timeline.num_frames):
    frames[t] = renderer.render(dict(zip(names, table[t].tolist())))
  return frames


def generate_video(seed: int, difficulty="default", image_size: int = 112,
                   num_frames: int = 900, fps: float = 30.0, subject_seed=None,
                   me_period_s: float = 3.6, without_micro: bool = False):
  """One video of a synthetic subject in conversation.

  Args:
    seed: seeds the conversation (timeline, backdrop, noise).
    difficulty: 'easy' | 'default' | 'hard' or a number in [0, 1].
    image_size: side of the square face crop.
    num_frames: video length; fps: frame rate.
    subject_seed: seeds the identity (defaults to `seed`); videos of one subject share it.
    me_period_s: mean seconds between micro-expressions.
    without_micro: render the same video with the MEs removed (same noise), so that
      `frames - frames_without_micro` is exactly the ME's image change.

  Returns:
    frames (T, S, S, 3) uint8 and annotations: `speaking` (T,) int8, `intervals` (list of
    dicts: onset, apex, offset (0-based inclusive), type, action, region, side, speaking,
    amplitude_px), `regions` (name -> neutral box x0, y0, x1, y1 in output px), `fps`.
  """
  subject_seed = seed if subject_seed is None else subject_seed
  face = subject_face(subject_seed)
  timeline = video_timeline(seed, num_frames, fps, difficulty, me_period_s, without_micro)
  frames = render_timeline(timeline, face, image_size, _rng(3, seed),
                           events_lib.noise_sigma(difficulty))
  annotations = {
      "fps": float(fps),
      "speaking": timeline.speaking.copy(),
      "intervals": [dict(onset=e.onset, apex=e.apex, offset=e.offset, type=e.kind,
                         action=e.action, region=e.region, side=e.side, speaking=e.speaking,
                         amplitude_px=e.amplitude * image_size / face_lib.REF)
                    for e in timeline.events],
      "regions": face_lib.region_boxes(face, image_size),
  }
  return frames, annotations


def encode_frames(frames: np.ndarray, quality: int = 90) -> list:
  """RGB uint8 frames -> JPEG bytes (4:2:0, ~3-4 KB at 112 px)."""
  out = []
  for frame in frames:
    ok, buf = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
      raise RuntimeError("JPEG encoding failed")
    out.append(buf.tobytes())
  return out


def decode_frame(data: bytes) -> np.ndarray:
  """JPEG/PNG bytes -> RGB uint8."""
  img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  if img is None:  # cv2 returns None for bytes it cannot decode
    raise ValueError(f"could not decode frame bytes ({len(data)} bytes, not a JPEG/PNG)")
  return img[..., ::-1]


@dataclasses.dataclass(frozen=True)
class VideoSpec:
  video_id: str
  subject: str
  split: str
  seed: int
  subject_seed: int
  num_frames: int


def _plan_seed(compact: int, fits: bool, *keys) -> int:
  """`compact` when `fits` (the seeds corpora have always had), else a 127-bit seed hashed
  from `keys`, above every compact seed: subject 1000 of corpus 0 and subject 0 of
  corpus 1, or video 100 of a subject and video 0 of the next, would share a compact one."""
  if fits:
    return compact
  hi, lo = np.random.SeedSequence([GENERATOR_VERSION, 5, *keys]).generate_state(2, np.uint64)
  return 2**127 | (int(hi) % 2**63) << 64 | int(lo)


def corpus_plan(num_subjects: int, splits=(0.7, 0.15, 0.15), videos_per_subject=(1, 2),
                seconds=(20.0, 40.0), fps: float = 30.0, corpus_seed: int = 0) -> list:
  """Subject-disjoint train/validation/test plan: which videos exist and their seeds."""
  rng = _rng(4, corpus_seed)
  order = rng.permutation(num_subjects)
  n_val = max(1, int(round(splits[1] * num_subjects)))
  n_test = max(1, int(round(splits[2] * num_subjects)))
  n_train = num_subjects - n_val - n_test
  if n_train < 1:
    raise ValueError(f"{num_subjects} subjects are too few for three splits")
  split_of = {}
  for rank, s in enumerate(order):
    split_of[int(s)] = ("train" if rank < n_train else
                        "validation" if rank < n_train + n_val else "test")
  plan = []
  for s in range(num_subjects):
    subject_seed = _plan_seed(1000 * corpus_seed + s, s < 1000, 0, corpus_seed, s)
    for v in range(int(rng.integers(videos_per_subject[0], videos_per_subject[1] + 1))):
      num_frames = int(round(rng.uniform(*seconds) * fps))
      plan.append(VideoSpec(video_id=f"s{s:03d}_v{v}", subject=f"s{s:03d}", split=split_of[s],
                            seed=_plan_seed(100_000 * corpus_seed + 100 * s + v,
                                            s < 1000 and v < 100, 1, corpus_seed, s, v),
                            subject_seed=subject_seed, num_frames=num_frames))
  return plan


def make_example(spec: VideoSpec, difficulty, image_size: int, fps: float,
                 jpeg_quality: int = 90, me_period_s: float = 3.6) -> dict:
  """One record of the shared schema (meldae_jax/data/schema.py) for `spec`."""
  frames, ann = generate_video(spec.seed, difficulty, image_size, spec.num_frames, fps,
                               subject_seed=spec.subject_seed, me_period_s=me_period_s)
  intervals = ann["intervals"]
  return {
      "video_id": spec.video_id,
      "subject": spec.subject,
      "fps": float(fps),
      "frames": encode_frames(frames, jpeg_quality),
      "intervals": {
          "onset": [i["onset"] for i in intervals],
          "apex": [i["apex"] for i in intervals],
          "offset": [i["offset"] for i in intervals],
          "type": [i["type"] for i in intervals],
      },
      "speaking": ann["speaking"].astype(np.int8),
  }


def make_keyed_example(args) -> tuple:
  """(video_id, example) for a pool worker; args as `make_example`'s."""
  return args[0].video_id, make_example(*args)
