"""WDMD (the MELDAE paper's conversational corpus) in the shared schema.

Layout read (designed here, see README.md):
  <manual_dir>/videos/<subject>/<video_id>.mp4   (.avi/.mov/.mkv also read)
  <manual_dir>/annotations/<video_id>.eaf        (ELAN)
  <manual_dir>/splits.json                       (optional)
ELAN tiers: `expression` (values `micro`/`macro`, optionally `apex=<ms>`) and
`speaking` (spans valued `speaking`; all other time is listening/silent).
ELAN milliseconds -> frames: onset = floor(t*fps/1000), offset =
ceil(t*fps/1000) - 1 (see `corpus_utils.ms_to_frames`).
"""
from __future__ import annotations

import logging
import os
import re

import cv2
import numpy as np
import tensorflow_datasets as tfds

from meldae_jax.data import corpus_utils as cu
from meldae_jax.data import face_crop
from meldae_jax.data import schema

log = logging.getLogger("meldae_jax.data.wdmd")

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")
EXPRESSION_TIERS = ("expression", "micro-expression", "ME")
SPEAKING_TIER = "speaking"
SPEAKING_VALUES = {"speaking": schema.SPEAKING, "listening": schema.LISTENING,
                   "silent": schema.LISTENING}

_CITATION = """\
@misc{feng2025meldae,
  title={Micro-Expression Spotting in Conversations via Noise-Disentangling
         and Boundary Aware Learning},
  author={Feng, Yigui and Wang, Qinglin and Liu, Yang and Liu, Ke and
          Mo, Haotian and Liu, Gencheng and Liu, Jie},
  note={Introduces the WDMD dataset and MELDAE}, year={2025}}
"""


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """WDMD conversational videos, one example per video, face crops."""

  name = "wdmd"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": cu.FACE_BOX_NOTE}
  BUILDER_CONFIGS = cu.default_configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  WDMD is distributed by the MELDAE authors on request. Arrange it as
  videos/<subject>/<video_id>.mp4 and annotations/<video_id>.eaf (optional
  splits.json) and pass that folder as manual_dir. See
  datasets/wdmd/README.md.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return cu.dataset_info(
        self, description=__doc__,
        homepage="https://github.com/meldae-jax/meldae-jax", citation=_CITATION)

  def _split_generators(self, dl_manager):
    root = cu.require_manual_dir(dl_manager, self.name)
    videos = _scan_videos(root)
    for video in videos:  # Parse every .eaf before writing anything.
      video["annotations"] = read_eaf(video["eaf"])
    splits = cu.subject_splits([v["subject"] for v in videos], root, self.name)
    return {split: self._generate_examples(
        [v for v in videos if v["subject"] in set(subjects)])
            for split, subjects in splits.items()}

  def _generate_examples(self, videos):
    for video in videos:
      yield video["video_id"], self._example(video)

  def _example(self, video):
    path, count = video["path"], [0]

    def frames_once():
      for frame in read_video(path):
        count[0] += 1
        yield frame

    fps = video_fps(path)
    box = face_crop.stable_face_box(
        frames_once(), sample=self.builder_config.face_sample,
        margin=self.builder_config.face_margin, name=path)
    num_frames = count[0]
    intervals, speaking = labels_to_frames(
        video["annotations"], fps, num_frames, video["eaf"])
    frames = [cu.encode_frame(
        face_crop.crop_and_resize(f, box, self.builder_config.size),
        self.builder_config.encoding) for f in cu.crop_progress(read_video(path),
                                                                 num_frames, path)]
    if len(frames) != num_frames:
      raise cu.CorpusError(f"{path}: read {len(frames)} frames, then "
                           f"{num_frames}; the video is not stable to decode")
    return cu.make_example(video_id=video["video_id"], subject=video["subject"],
                           fps=fps, frames=frames, intervals=intervals,
                           speaking=speaking)


def _scan_videos(root: str) -> list[dict]:
  """Videos of `videos/<subject>/`, each with its expected .eaf path."""
  vroot = os.path.join(root, "videos")
  if not os.path.isdir(vroot):
    raise cu.CorpusError(f"{vroot}: video folder is missing")
  videos, seen = [], {}
  for subject in sorted(os.listdir(vroot)):
    sdir = os.path.join(vroot, subject)
    if not os.path.isdir(sdir):
      continue
    for entry in sorted(os.listdir(sdir)):
      stem, ext = os.path.splitext(entry)
      if ext.lower() not in VIDEO_EXTS:
        continue
      path = os.path.join(sdir, entry)
      if stem in seen:
        raise cu.CorpusError(f"{path}: video id {stem} also used by "
                             f"{seen[stem]}")
      seen[stem] = path
      eaf = os.path.join(root, "annotations", stem + ".eaf")
      if not os.path.isfile(eaf):
        raise cu.CorpusError(f"{eaf}: ELAN annotation file is missing for "
                             f"video {path}")
      videos.append({"video_id": stem, "subject": subject, "path": path,
                     "eaf": eaf})
  if not videos:
    raise cu.CorpusError(f"{vroot}: no videos <subject>/<video_id>.mp4")
  adir = os.path.join(root, "annotations")
  orphans = sorted(e for e in os.listdir(adir)
                   if e.lower().endswith(".eaf") and os.path.splitext(e)[0] not in seen)
  if orphans:  # a labelled video that is not read (other extension, other folder)
    raise cu.CorpusError(
        f"{os.path.join(adir, orphans[0])}: no video {os.path.splitext(orphans[0])[0]}"
        f"{{{','.join(VIDEO_EXTS)}}} under {vroot}/<subject>/ for this annotation file"
        + (f" ({len(orphans)} such files)" if len(orphans) > 1 else ""))
  return videos


def read_eaf(path: str) -> dict:
  """Expression and speaking spans (ms) of one .eaf, values validated."""
  import pympi  # pylint: disable=g-import-not-at-top
  try:
    eaf = pympi.Elan.Eaf(path)
  except Exception as e:  # pympi raises various parse errors.
    raise cu.CorpusError(f"{path}: cannot parse ELAN file ({e})") from e
  tiers = eaf.get_tier_names()
  expr = [t for t in EXPRESSION_TIERS if t in tiers]
  if not expr:
    raise cu.CorpusError(f"{path}: no expression tier (one of "
                         f"{EXPRESSION_TIERS}; found {sorted(tiers)})")
  if len(expr) > 1:  # reading one would drop the other's annotations without a word
    raise cu.CorpusError(f"{path}: several expression tiers {expr}; keep one (merge "
                         "them in ELAN)")
  if SPEAKING_TIER not in tiers:
    raise cu.CorpusError(f"{path}: no {SPEAKING_TIER!r} tier "
                         f"(found {sorted(tiers)})")

  origins = [m.get("TIME_ORIGIN") for m in eaf.media_descriptors
             if float(m.get("TIME_ORIGIN") or 0) != 0]
  if origins:  # ELAN's media offset would shift every label against the frames
    raise cu.CorpusError(f"{path}: a linked media file has TIME_ORIGIN {origins[0]} ms; "
                         "media offsets are not supported (remove it in ELAN and "
                         "shift the annotations instead)")
  # Reference annotations (tiers of a Symbolic_Association type) take the time span of
  # the annotation they refer to; they are not in `tiers[t][0]` and were skipped before.
  aligned = {aid: (ts0, ts1) for t in eaf.tiers.values() for aid, (ts0, ts1, _, _)
             in t[0].items()}
  refers = {aid: (ref, name) for name, t in eaf.tiers.items()
            for aid, (ref, _, _, _) in t[1].items()}

  def constraint(tier):
    ltype = eaf.tiers[tier][2].get("LINGUISTIC_TYPE_REF")
    return eaf.linguistic_types.get(ltype, {}).get("CONSTRAINTS")

  def time_span(aid, tier):
    seen = aid
    while aid in refers:
      ref, ref_tier = refers[aid]
      if constraint(ref_tier) != "Symbolic_Association":
        raise cu.CorpusError(
            f"{path}: annotation {seen} on tier {tier!r} refers to its time through "
            f"tier {ref_tier!r} of type {constraint(ref_tier)!r}, which has no time "
            "span of its own (use a time-aligned or Symbolic_Association tier)")
      aid = ref
    ts0, ts1 = aligned.get(aid, (None, None))
    return eaf.timeslots.get(ts0), eaf.timeslots.get(ts1)

  def spans(tier):
    values = {aid: a[2] for aid, a in eaf.tiers[tier][0].items()}
    values.update({aid: a[1] for aid, a in eaf.tiers[tier][1].items()})
    for aid, value in sorted(values.items()):
      t0, t1 = time_span(aid, tier)
      if t0 is None or t1 is None:
        raise cu.CorpusError(f"{path}: annotation {aid} on tier {tier!r} is "
                             "not time-aligned")
      yield aid, t0, t1, (value or "").strip()

  expressions = []
  for aid, t0, t1, value in spans(expr[0]):
    where = f"{path}: annotation {aid} on tier {expr[0]!r}"
    tokens = value.split()
    kind = cu.expression_type(tokens[0] if tokens else "",
                              {"micro": "micro", "macro": "macro"}, where)
    apex = None
    for token in tokens[1:]:
      m = re.fullmatch(r"apex=(\d+(?:\.\d+)?)", token, re.IGNORECASE)
      if not m:
        raise cu.CorpusError(f"{where}: cannot parse {token!r} (expected "
                             "apex=<milliseconds>)")
      apex = float(m.group(1))
    expressions.append((aid, t0, t1, apex, kind))
  speaking = []
  for aid, t0, t1, value in spans(SPEAKING_TIER):
    label = SPEAKING_VALUES.get(value.lower())
    if label is None:
      raise cu.CorpusError(
          f"{path}: annotation {aid} on tier {SPEAKING_TIER!r} has value "
          f"{value!r} (expected one of {sorted(SPEAKING_VALUES)})")
    speaking.append((aid, t0, t1, label))
  return {"expressions": expressions, "speaking": speaking}


def labels_to_frames(annotations: dict, fps: float, num_frames: int,
                     path: str):
  """ELAN spans (ms) -> 0-based intervals and per-frame speaking (1/0)."""
  intervals = []
  for aid, t0, t1, apex_ms, kind in annotations["expressions"]:
    where = f"{path}: annotation {aid}"
    onset, offset = cu.ms_to_frames(t0, t1, fps, num_frames, where)
    apex = -1 if apex_ms is None else cu.ms_to_frame(apex_ms, fps)
    intervals.append(cu.check_interval(onset, apex, offset, num_frames, where)
                     + (kind,))
  speaking = np.full((num_frames,), schema.LISTENING, np.int8)
  for aid, t0, t1, label in annotations["speaking"]:
    if label == schema.SPEAKING:
      onset, offset = cu.ms_to_frames(t0, t1, fps, num_frames,
                                      f"{path}: annotation {aid}")
      speaking[onset:offset + 1] = schema.SPEAKING
  return intervals, speaking


def video_fps(path: str) -> float:
  cap = cv2.VideoCapture(path)
  try:
    if not cap.isOpened():
      raise cu.CorpusError(f"{path}: cannot open video")
    fps = float(cap.get(cv2.CAP_PROP_FPS))
  finally:
    cap.release()
  if not fps > 0:
    raise cu.CorpusError(f"{path}: video reports no frame rate")
  return fps


def read_video(path: str):
  """RGB frames of a video, one at a time (cv2.VideoCapture)."""
  cap = cv2.VideoCapture(path)
  try:
    if not cap.isOpened():
      raise cu.CorpusError(f"{path}: cannot open video")
    n = 0
    while True:
      ok, bgr = cap.read()
      if not ok:
        break
      n += 1
      yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if n == 0:
      raise cu.CorpusError(f"{path}: video has no readable frames")
  finally:
    cap.release()
