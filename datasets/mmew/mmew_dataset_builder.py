"""MMEW micro-expression clips in the shared MELDAE schema.

Layout read (see README.md): `MMEW_Final/Micro_Expression/<emotion>/<clip>/N.jpg`
plus `MMEW_Micro_Exp.xlsx` (header row `Subject, Filename, OnsetFrame,
ApexFrame, OffsetFrame, AUs, Estimated Emotion`). Each clip becomes one video
whose single micro interval is OnsetFrame..OffsetFrame; frame numbers are the
1-based numbers of the files (`1.jpg` is frame 0 here). 90 fps. Speaking is
unknown (-1). Fixed subject-disjoint train/validation/test splits.
"""
from __future__ import annotations

import logging
import os
import re

import tensorflow_datasets as tfds

from meldae_jax.data import corpus_utils as cu

log = logging.getLogger("meldae_jax.data.mmew")

FPS = 90.0
SPREADSHEET = "MMEW_Micro_Exp.xlsx"
SPREADSHEET_PATTERN = r"MMEW_Micro_Exp.*\.xlsx"
REQUIRED = ("subject", "filename", "onsetframe", "apexframe", "offsetframe")

_CITATION = """\
@article{ben2021mmew,
  title={Video-based Facial Micro-Expression Analysis: A Survey of Datasets,
         Features and Algorithms},
  author={Ben, Xianye and Ren, Yi and Zhang, Junping and Wang, Su-Jing and
          Kpalma, Kidiyo and Meng, Weixiao and Liu, Yong-Jin},
  journal={IEEE Transactions on Pattern Analysis and Machine Intelligence},
  volume={44}, number={9}, pages={5826--5846}, year={2022}}
"""


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """MMEW micro-expression clips, one example per clip, face crops."""

  name = "mmew"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": cu.FACE_BOX_NOTE}
  BUILDER_CONFIGS = cu.default_configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Request MMEW from http://www.dpailab.com/database.html and pass the folder
  holding `MMEW_Final/` (or `MMEW_Final` itself) as manual_dir; the label
  sheet `MMEW_Micro_Exp.xlsx` may sit in either. Optional `splits.json`.
  See datasets/mmew/README.md.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return cu.dataset_info(
        self, description=__doc__,
        homepage="http://www.dpailab.com/database.html", citation=_CITATION)

  def _split_generators(self, dl_manager):
    manual_dir = cu.require_manual_dir(dl_manager, self.name)
    root = manual_dir
    if os.path.isdir(os.path.join(manual_dir, "MMEW_Final")):
      root = os.path.join(manual_dir, "MMEW_Final")
    clips = _scan_clips(os.path.join(root, "Micro_Expression"))
    sheet = (cu.find_file(root, [SPREADSHEET], SPREADSHEET_PATTERN) or
             cu.find_file(manual_dir, [SPREADSHEET], SPREADSHEET_PATTERN))
    if sheet is None:
      raise cu.CorpusError(f"{os.path.join(root, SPREADSHEET)}: annotation "
                           "spreadsheet is missing")
    videos = _read_annotations(sheet, clips)
    splits = cu.subject_splits([v["subject"] for v in videos], manual_dir,
                               self.name)
    return {split: self._generate_examples(
        [v for v in videos if v["subject"] in set(subjects)])
            for split, subjects in splits.items()}

  def _generate_examples(self, videos):
    yield from cu.image_sequence_examples(videos, self.builder_config, FPS)


def _scan_clips(micro_dir: str) -> dict[str, str]:
  """{clip name: folder} for every `Micro_Expression/<emotion>/<clip>`."""
  if not os.path.isdir(micro_dir):
    raise cu.CorpusError(f"{micro_dir}: frame folder is missing")
  clips = {}
  for emotion in sorted(os.listdir(micro_dir)):
    edir = os.path.join(micro_dir, emotion)
    if not os.path.isdir(edir):
      continue
    for clip in sorted(os.listdir(edir)):
      path = os.path.join(edir, clip)
      if os.path.isdir(path):
        if clip in clips:
          raise cu.CorpusError(f"{path}: clip name also used by {clips[clip]}")
        clips[clip] = path
  if not clips:
    raise cu.CorpusError(f"{micro_dir}: no clip folders <emotion>/<clip>")
  return clips


def _subject(value, where):
  if isinstance(value, (int, float)) and float(value).is_integer():
    return f"S{int(value):02d}"
  text = str(value).strip() if value is not None else ""
  if not text:
    raise cu.CorpusError(f"{where}: Subject is empty")
  return f"S{int(text):02d}" if text.isdigit() else text


def _read_annotations(path, clips):
  """One video dict per spreadsheet row; unlabelled clips are skipped."""
  wb = cu.open_workbook(path)
  sheet = wb[wb.sheetnames[0]]
  cols, videos, seen = None, [], {}
  repairs = cu.RowRepairs("mmew", path)
  for row, cells in cu.sheet_rows(sheet):
    names = [re.sub(r"\s", "", str(c)).lower() if c is not None else ""
             for c in cells]
    if cols is None:
      if "filename" in names:
        cols = {n: i for i, n in enumerate(names) if n}
        missing = [c for c in REQUIRED if c not in cols]
        if missing:
          raise cu.CorpusError(f"{path} row {row}: header lacks {missing}")
      continue
    cells = tuple(cells) + (None,) * (len(cols) + 1)
    where = f"{path} row {row}"
    clip = str(cells[cols["filename"]]).strip()
    if clip in seen:
      raise cu.CorpusError(f"{where}: clip {clip} already labelled in row "
                           f"{seen[clip]}")
    seen[clip] = row
    if clip not in clips:
      raise cu.CorpusError(f"{where}: no clip folder Micro_Expression/*/{clip}")
    frames = cu.numbered_frames(clips[clip], r"(?P<n>\d+)\.jpg",
                                lambda n: f"{n}.jpg", start=None)
    first = int(os.path.splitext(os.path.basename(frames[0]))[0])  # 1, or the
    # recording's number of the clip's first frame: the sheet counts the same way
    onset, apex, offset = (cu.frame_number_or_zero(cells[cols[c.lower()]], where, c)
                           for c in ("OnsetFrame", "ApexFrame", "OffsetFrame"))
    label = f"{row} ({clip} {onset}/{apex}/{offset})"
    if first != 1:  # file numbers -> 1-based positions in the clip (0 stays not coded)
      if any(0 < v < first for v in (onset, apex, offset)):
        raise cu.CorpusError(f"{where}: frame numbers {onset}/{apex}/{offset} start before "
                             f"the clip's first file {first}.jpg")
      onset, apex, offset = (v - first + 1 if v > 0 else v for v in (onset, apex, offset))
    if apex == 0 and onset > 0 and offset > 0:  # not coded: unknown, not a missing bound
      repairs.note("apex_dropped", label)
    fixed = repairs.apply(label, onset, apex, offset, len(frames))
    if fixed is None:
      continue
    interval = cu.one_based(*fixed, len(frames), where)
    emotion = os.path.basename(os.path.dirname(clips[clip]))
    videos.append({"video_id": f"{emotion}/{clip}",
                   "subject": _subject(cells[cols["subject"]], where),
                   "frames": frames, "intervals": [interval + ("micro",)]})
  repairs.log(log)
  if cols is None:
    raise cu.CorpusError(f"{path}: no header row with a Filename column")
  unlabelled = sorted(set(clips) - set(seen))
  if unlabelled:
    log.warning("mmew: skipped %d clip folders without a spreadsheet row "
                "(e.g. %s)", len(unlabelled), unlabelled[0])
  return videos
