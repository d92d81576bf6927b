"""SAMM long videos in the shared MELDAE schema.

Layout read (see README.md): `SAMM_longvideos/006_1/006_1_0001.jpg` plus the
release spreadsheet `SAMM_LongVideos_V3_Release.xlsx` (title rows, then a
header row `Subject, Filename, Inducement Code, Onset, Apex, Offset, Duration,
Type, Action Units, Notes`). Frame numbers are 1-based (`_0001.jpg` is frame 0
here); apex -1 = unknown; type `Micro - 1/2` is micro, `Macro` macro. 200 fps.
One split per subject (`subject_006`, ...) for leave-one-subject-out.

The released sheets hold rows that no interval check passes (V1, as the MEGC2020
baseline's dump of it shows: onset 0 on ten Macro rows, an apex after the offset, an
offset past the last frame file). Each kind has a stated policy
(`corpus_utils.RowRepairs`), logged with its rows, instead of stopping the build on the
real corpus.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re

import tensorflow_datasets as tfds

from meldae_jax.data import corpus_utils as cu

log = logging.getLogger("meldae_jax.data.samm_lv")

FPS = 200.0
FRAMES_DIR = "SAMM_longvideos"
SPREADSHEET_PATTERN = r"SAMM_LongVideos_V\d+_Release\.xlsx"
TYPES = {"micro - 1/2": "micro", "micro": "micro", "macro": "macro"}
REQUIRED = ("subject", "filename", "onset", "apex", "offset", "type")

_CITATION = """\
@inproceedings{yap2020samm,
  title={SAMM Long Videos: A Spontaneous Facial Micro- and Macro-Expressions
         Dataset},
  author={Yap, Chuin Hong and Kendrick, Connah and Yap, Moi Hoon},
  booktitle={IEEE International Conference on Automatic Face and Gesture
             Recognition (FG)}, pages={771--776}, year={2020}}

@article{davison2018samm,
  title={SAMM: A Spontaneous Micro-Facial Movement Dataset},
  author={Davison, Adrian K. and Lansley, Cliff and Costen, Nicholas and
          Tan, Kevin and Yap, Moi Hoon},
  journal={IEEE Transactions on Affective Computing},
  volume={9}, number={1}, pages={116--129}, year={2018},
  doi={10.1109/TAFFC.2016.2573832}}
"""


@dataclasses.dataclass(eq=False)
class SammConfig(cu.CorpusConfig):
  """Adds the policy for rows whose onset or offset is 0 (not coded)."""
  missing_bound: str = "apex"  # 'apex': the missing bound := apex; 'skip': drop row


def _configs():
  configs = cu.default_configs(SammConfig)
  configs.append(SammConfig(
      name="skip_missing_bound", missing_bound="skip",
      description="112x112 JPEG crops; rows with onset or offset 0 are skipped."))
  return configs


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """SAMM long videos, one example per video, face crops."""

  name = "samm_lv"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": cu.FACE_BOX_NOTE}
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Request SAMM Long Videos from https://helward.mmu.ac.uk/STAFF/M.Yap/dataset.php
  and pass the folder holding `SAMM_longvideos/` and
  `SAMM_LongVideos_V3_Release.xlsx` as manual_dir. See
  datasets/samm_lv/README.md.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return cu.dataset_info(
        self, description=__doc__,
        homepage="https://helward.mmu.ac.uk/STAFF/M.Yap/dataset.php",
        citation=_CITATION)

  def _split_generators(self, dl_manager):
    root = cu.require_manual_dir(dl_manager, self.name)
    videos = _scan_videos(os.path.join(root, FRAMES_DIR))
    sheet = cu.find_file(root, ["SAMM_LongVideos_V3_Release.xlsx"],
                         SPREADSHEET_PATTERN)
    if sheet is None:
      raise cu.CorpusError(f"{os.path.join(root, 'SAMM_LongVideos_V3_Release.xlsx')}"
                           ": annotation spreadsheet is missing")
    _read_annotations(sheet, videos, self.builder_config.missing_bound)
    return cu.loso_splits(videos.values(), self._generate_examples)

  def _generate_examples(self, videos):
    yield from cu.image_sequence_examples(videos, self.builder_config, FPS)


def _scan_videos(frames_dir: str) -> dict[str, dict]:
  """{'006_1': video} for every `SAMM_longvideos/SSS_N` folder."""
  if not os.path.isdir(frames_dir):
    raise cu.CorpusError(f"{frames_dir}: frame folder is missing")
  videos = {}
  for vdir in sorted(os.listdir(frames_dir)):
    path = os.path.join(frames_dir, vdir)
    m = re.fullmatch(r"(\d+)_\d+", vdir)
    if not m or not os.path.isdir(path):
      continue
    frames = cu.numbered_frames(
        path, re.escape(vdir) + r"_(?P<n>\d+)\.jpg",
        lambda n, v=vdir: f"{v}_{n:04d}.jpg")
    videos[vdir] = {"video_id": vdir, "subject": m.group(1),
                    "frames": frames, "intervals": []}
  if not videos:
    raise cu.CorpusError(f"{frames_dir}: no video folders SSS_N")
  return videos


def _header(sheet, path):
  """(row number, {column name: index}) of the column-header row."""
  for row, cells in cu.sheet_rows(sheet):
    names = [str(c).strip().lower() if c is not None else "" for c in cells]
    if "filename" in names and "onset" in names:
      cols = {n: i for i, n in enumerate(names) if n}
      missing = [c for c in REQUIRED if c not in cols]
      if missing:
        raise cu.CorpusError(f"{path} row {row}: header lacks columns {missing}")
      return row, cols
  raise cu.CorpusError(f"{path}: no header row with Filename/Onset columns")


def _read_annotations(path, videos, missing_bound: str = "apex"):
  """Adds 0-based intervals from the release spreadsheet (in place)."""
  if missing_bound not in ("apex", "skip"):
    raise ValueError(f"missing_bound must be 'apex' or 'skip', got {missing_bound!r}")
  wb = cu.open_workbook(path)
  sheet = wb[wb.sheetnames[0]]
  header_row, cols = _header(sheet, path)
  repairs = cu.RowRepairs("samm_lv", path)
  for row, cells in cu.sheet_rows(sheet):
    if row <= header_row:
      continue
    cells = tuple(cells) + (None,) * (len(cols) + 1)
    where = f"{path} row {row}"
    filename = str(cells[cols["filename"]]).strip()
    m = re.fullmatch(r"((\d+)_\d+)_\d+", filename)
    if not m:
      raise cu.CorpusError(f"{where}: Filename {filename!r} is not SSS_V_N")
    video_id, subject = m.group(1), m.group(2)
    sheet_subject = cells[cols["subject"]]
    if sheet_subject is not None and str(sheet_subject).strip().lstrip("0") != (
        subject.lstrip("0")):
      raise cu.CorpusError(f"{where}: Subject {sheet_subject!r} does not match "
                           f"Filename {filename!r}")
    if video_id not in videos:
      raise cu.CorpusError(f"{where}: no frame folder {FRAMES_DIR}/{video_id}")
    # An empty cell is not coded, like 0 (onset/offset) or -1 (apex): `RowRepairs` rules.
    onset, apex, offset = (cu.frame_number_or_zero(cells[cols[c.lower()]], where, c)
                           for c in ("Onset", "Apex", "Offset"))
    type_name = re.sub(r"\s*-\s*", " - ", str(cells[cols["type"]] or "").strip())
    kind = cu.expression_type(type_name, TYPES, f"{where} column Type")
    video = videos[video_id]
    label = f"{row} ({filename} {onset}/{apex}/{offset})"
    if cells[cols["apex"]] is None or not str(cells[cols["apex"]]).strip():
      repairs.note("apex_dropped", label)  # empty: unknown, as -1 or 0 are
    fixed = repairs.apply(label, onset, apex, offset, len(video["frames"]), missing_bound)
    if fixed is not None:
      video["intervals"].append(
          cu.one_based(*fixed, len(video["frames"]), where) + (kind,))
  repairs.log(log)
