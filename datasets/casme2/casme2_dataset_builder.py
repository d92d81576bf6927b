"""CAS(ME)^2 long videos (`CASME_sq`) in the shared MELDAE schema.

Layout read (see README.md): `rawpic/sNN/NN_CCCCname/imgN.jpg` plus
`CAS(ME)^2code_final.xlsx` with the sheets `CASFEcode_final` (annotations, no
header row), `naming rule1` (subject number, `sNN`, participant index) and
`naming rule2` (video code, video name). Frame numbers are 1-based (`img001.jpg`
is frame 0 here); an offset of 0 means "not annotated"; an offset past the last image
(some releases have rows a frame or two past it) is clamped to it, as the SAMM and MMEW
builders do (`corpus_utils.RowRepairs`), and logged with its rows; so is an apex outside
onset..offset (e.g. past the last image), stored as unknown (-1) as those builders store it.
30 fps.
One split per subject (`subject_15`, ...) for leave-one-subject-out.
"""

import dataclasses
import logging
import os
import re

import tensorflow_datasets as tfds

from meldae_jax.data import corpus_utils as cu

log = logging.getLogger("meldae_jax.data.casme2")

FPS = 30.0
SHEET_NAMES = ("CASFEcode_final", "CASMEcode_final")
RULE1, RULE2 = "naming rule1", "naming rule2"
# The corrected `(Updated)` release first (the MEGC spotting baselines read it).
SPREADSHEETS = ("CAS(ME)^2code_final(Updated).xlsx", "CAS(ME)^2code_final.xlsx",
                "code_final.xlsx")
TYPES = {"micro-expression": "micro", "macro-expression": "macro"}
# Columns of the annotation sheet (0-based).
C_PARTICIPANT, C_NAME, C_ONSET, C_APEX, C_OFFSET, C_TYPE = 0, 1, 2, 3, 4, 7

_CITATION = """\
@article{qu2018casme2,
  title={CAS(ME)^2: A Database for Spontaneous Macro-Expression and
         Micro-Expression Spotting and Recognition},
  author={Qu, Fangbing and Wang, Su-Jing and Yan, Wen-Jing and Li, He and
          Wu, Shuhang and Fu, Xiaolan},
  journal={IEEE Transactions on Affective Computing},
  volume={9}, number={4}, pages={424--436}, year={2018}}
"""


@dataclasses.dataclass(eq=False)
class Casme2Config(cu.CorpusConfig):
  """Adds the policy for annotations whose offset is 0 (missing)."""
  missing_offset: str = "apex"  # 'apex': offset := apex; 'skip': drop row


def _configs():
  configs = cu.default_configs(Casme2Config)
  configs.append(Casme2Config(
      name="skip_missing_offset", missing_offset="skip",
      description="112x112 JPEG crops; rows with offset 0 are skipped."))
  return configs


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """CAS(ME)^2 long videos, one example per video, face crops."""

  name = "casme2"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "Reads CAS(ME)^2code_final(Updated).xlsx first where both "
                            "releases of the spreadsheet are there. " + cu.FACE_BOX_NOTE}
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Request CAS(ME)^2 from http://casme.psych.ac.cn/casme/e3 and pass the
  `CASME_sq` folder (holding `rawpic/` and `CAS(ME)^2code_final.xlsx`) as
  manual_dir. See datasets/casme2/README.md.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return cu.dataset_info(
        self, description=__doc__, homepage="http://casme.psych.ac.cn/casme/e3",
        citation=_CITATION)

  def _split_generators(self, dl_manager):
    root = cu.require_manual_dir(dl_manager, self.name)
    if os.path.isdir(os.path.join(root, "CASME_sq")):
      root = os.path.join(root, "CASME_sq")
    videos = _scan_videos(os.path.join(root, "rawpic"))
    sheet = cu.find_file(root, SPREADSHEETS)
    if sheet is None:
      raise cu.CorpusError(
          f"{os.path.join(root, SPREADSHEETS[0])}: annotation spreadsheet is "
          f"missing (nor {' or '.join(SPREADSHEETS[1:])} there)")
    _read_annotations(sheet, videos, self.builder_config.missing_offset)
    return cu.loso_splits(videos.values(), self._generate_examples)

  def _generate_examples(self, videos):
    yield from cu.image_sequence_examples(videos, self.builder_config, FPS)


def _scan_videos(rawpic: str) -> dict[tuple[str, str], dict]:
  """{(subject, video code): video} for every `rawpic/sNN/NN_CCCC*` folder."""
  if not os.path.isdir(rawpic):
    raise cu.CorpusError(f"{rawpic}: frame folder `rawpic` is missing")
  videos = {}
  for sdir in sorted(os.listdir(rawpic)):
    m = re.fullmatch(r"s(\d+)", sdir)
    if not m or not os.path.isdir(os.path.join(rawpic, sdir)):
      continue
    subject = f"{int(m.group(1)):02d}"
    for vdir in sorted(os.listdir(os.path.join(rawpic, sdir))):
      # Folder prefix is the subject number except for quirks like
      # s19/23_0502funnyerrors, so match on the video code only.
      vm = re.fullmatch(r"\d+_(\d{4}).*", vdir)
      path = os.path.join(rawpic, sdir, vdir)
      if not vm or not os.path.isdir(path):
        continue
      key = (subject, vm.group(1))
      if key in videos:
        raise cu.CorpusError(f"{path}: second folder for video code "
                             f"{key[1]} of subject s{subject}")
      frames = cu.numbered_frames(path, r"img(?P<n>\d+)\.jpg",
                                  lambda n: f"img{n}.jpg")
      videos[key] = {"video_id": f"{sdir}/{vdir}", "subject": subject,
                     "frames": frames, "intervals": []}
  if not videos:
    raise cu.CorpusError(f"{rawpic}: no video folders sNN/NN_CCCC*")
  return videos


def _naming_rules(wb, path):
  """participant index -> subject ('15'), video name -> code ('0101')."""
  for name in (RULE1, RULE2):
    if name not in wb.sheetnames:
      raise cu.CorpusError(f"{path}: sheet {name!r} is missing "
                           f"(found {wb.sheetnames})")
  participants = {}
  for row, cells in cu.sheet_rows(wb[RULE1]):
    where = f"{path} sheet {RULE1!r} row {row}"
    m = re.search(r"(\d+)", str(cells[1] if len(cells) > 1 else ""))
    number = cu.to_int(cells[0], where, "A") if cells[0] is not None else (
        int(m.group(1)) if m else None)
    if number is None or len(cells) < 3:
      raise cu.CorpusError(f"{where}: expected subject number, sNN, index")
    participants[cu.to_int(cells[2], where, "C")] = f"{number:02d}"
  codes = {}
  for row, cells in cu.sheet_rows(wb[RULE2]):
    where = f"{path} sheet {RULE2!r} row {row}"
    if len(cells) < 2 or cells[1] is None:
      raise cu.CorpusError(f"{where}: expected video code, video name")
    codes[str(cells[1]).strip().lower()] = f"{cu.to_int(cells[0], where, 'A'):04d}"
  return participants, codes


def _read_annotations(path, videos, missing_offset):
  """Adds 0-based intervals from the code sheet to `videos` (in place)."""
  wb = cu.open_workbook(path)
  participants, codes = _naming_rules(wb, path)
  names = [n for n in SHEET_NAMES if n in wb.sheetnames]
  sheet_name = names[0] if names else wb.sheetnames[0]
  skipped = derived = 0
  repairs = cu.RowRepairs("casme2", path)
  for row, cells in cu.sheet_rows(wb[sheet_name]):
    where = f"{path} sheet {sheet_name!r} row {row}"
    cells = tuple(cells) + (None,) * (C_TYPE + 1 - len(cells))
    participant = cu.to_int(cells[C_PARTICIPANT], where, "A")
    if participant not in participants:
      raise cu.CorpusError(f"{where}: participant {participant} is not in "
                           f"sheet {RULE1!r}")
    video_name = str(cells[C_NAME]).split("_")[0].strip().lower()
    if video_name not in codes:
      raise cu.CorpusError(f"{where}: video {cells[C_NAME]!r} is not in sheet "
                           f"{RULE2!r}")
    key = (participants[participant], codes[video_name])
    if key not in videos:
      raise cu.CorpusError(f"{where}: no frame folder rawpic/s{key[0]}/"
                           f"*_{key[1]}* for this annotation")
    onset = cu.to_int(cells[C_ONSET], where, "C (onset)")
    apex = cu.to_int(cells[C_APEX], where, "D (apex)")
    offset = cu.to_int(cells[C_OFFSET], where, "E (offset)")
    kind = cu.expression_type(cells[C_TYPE], TYPES, f"{where} column H")
    if offset == 0:
      if missing_offset == "skip" or apex <= 0:
        skipped += 1
        continue
      offset, derived = apex, derived + 1
    video = videos[key]
    label = f"{row} ({cells[C_NAME]} {onset}/{apex}/{offset})"
    if onset <= len(video["frames"]) < offset:  # an onset past it is still an error
      repairs.note("offset_clamped", label)
      offset = len(video["frames"])
    if apex >= 1 and not onset <= apex <= offset:  # e.g. past the last frame: unknown, as
      repairs.note("apex_dropped", label)  # RowRepairs has it (the metrics read no apex)
      apex = -1
    video["intervals"].append(
        cu.one_based(onset, apex, offset, len(video["frames"]), where) + (kind,))
  repairs.log(log)
  if derived:
    log.info("casme2: %d annotations with offset 0 use their apex as offset",
             derived)
  if skipped:
    log.warning("casme2: skipped %d annotations with offset 0 (missing)",
                skipped)
