"""Bad corpus input fails loudly, names the file and row, and writes nothing."""
import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import openpyxl
import pytest
import tensorflow_datasets as tfds

from meldae_jax.data import corpus_utils as cu

CorpusError = cu.CorpusError


def copy(name, tmp_path):
  dst = tmp_path / "manual"
  shutil.copytree(os.path.join(cu.DATASETS_DIR, name, "dummy_data"), dst)
  return dst


def build(name, manual, data_dir):
  builder = cu.builder_class(name)(data_dir=str(data_dir),
                                   file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual)))
  return builder


def edit_cell(path, sheet, cell, value):
  wb = openpyxl.load_workbook(path)
  (wb[sheet] if sheet else wb.active)[cell] = value
  wb.save(path)


def no_finished_dataset(data_dir):
  """No dataset_info.json outside TFDS's incomplete.* working dirs."""
  for root, _, files in os.walk(data_dir):
    if "dataset_info.json" in files and "incomplete" not in root:
      return False
  return True


CASME_SHEET = "CAS(ME)^2code_final.xlsx"


def test_casme2_missing_spreadsheet(tmp_path):
  manual = copy("casme2", tmp_path)
  os.remove(manual / CASME_SHEET)
  with pytest.raises(CorpusError, match=r"code_final\(Updated\)\.xlsx: annotation "
                     r"spreadsheet is missing \(nor CAS\(ME\)\^2code_final\.xlsx or "
                     r"code_final\.xlsx there\)"):
    build("casme2", manual, tmp_path / "data")
  assert no_finished_dataset(tmp_path / "data")


def test_casme2_missing_frame(tmp_path):
  manual = copy("casme2", tmp_path)
  os.remove(manual / "rawpic/s16/16_0101disgustingteeth/img003.jpg")
  # The error names the file as the release names it (zero-padded), not `img3.jpg`.
  with pytest.raises(CorpusError, match=r"16_0101disgustingteeth/img003\.jpg: frame "
                     r"image is missing"):
    build("casme2", manual, tmp_path / "data")


def test_casme2_unreadable_frame_leaves_no_dataset(tmp_path):
  manual = copy("casme2", tmp_path)
  (manual / "rawpic/s16/16_0101disgustingteeth/img002.jpg").write_bytes(b"junk")
  with pytest.raises(CorpusError, match=r"img002\.jpg.*unreadable"):
    build("casme2", manual, tmp_path / "data")
  # The failure happened while writing: only TFDS's incomplete dir was used.
  assert not list((tmp_path / "data/casme2/default").glob("[0-9]*"))  # no version folder
  assert no_finished_dataset(tmp_path / "data")


@pytest.mark.parametrize("cell,value,pattern", [
    ("C2", 9, r"row 2: onset 8 is after offset 6"),
    ("H2", "meso-expression", r"row 2 column H: unknown expression type"),
    ("A3", 9, r"row 3: participant 9 is not in sheet 'naming rule1'"),
    ("B3", "anger9_1", r"row 3: video 'anger9_1' is not in sheet"),
    ("D2", "x", r"row 2: column 'D \(apex\)' is not an integer"),
])
def test_casme2_bad_rows(tmp_path, cell, value, pattern):
  manual = copy("casme2", tmp_path)
  edit_cell(manual / CASME_SHEET, "CASFEcode_final", cell, value)
  with pytest.raises(CorpusError, match=r"code_final\.xlsx sheet "
                     r"'CASFEcode_final' " + pattern):
    build("casme2", manual, tmp_path / "data")
  assert no_finished_dataset(tmp_path / "data")


def _casme2_disgust_intervals(tmp_path, caplog, **cells) -> list[tuple[int, int, int]]:
  """(onset, apex, offset) of s15/15_0101disgustingteeth (8 frames) built from the dummy
  sheet with `cells` (e.g. E2=10) edited, its WARNINGs in caplog."""
  manual = copy("casme2", tmp_path)
  for cell, value in cells.items():
    edit_cell(manual / CASME_SHEET, "CASFEcode_final", cell, value)
  with caplog.at_level("WARNING", logger="meldae_jax.data.casme2"):
    builder = build("casme2", manual, tmp_path / "data")
  (record,) = [r for r in builder.as_data_source("subject_15")
               if r["video_id"] == b"s15/15_0101disgustingteeth"]
  iv = record["intervals"]
  return [(int(a), int(b), int(c)) for a, b, c in zip(iv["onset"], iv["apex"], iv["offset"])]


def test_casme2_offset_past_the_last_frame_is_clamped(tmp_path, caplog):
  """Some CAS(ME)^2 releases code an offset past the last image; samm_lv and mmew clamp
  such an offset, and casme2 stopped the build on it."""
  # disgust1_2 becomes 6/7/10, past the 8 frames
  assert _casme2_disgust_intervals(tmp_path, caplog, E2=10) == [(1, 2, 4), (5, 6, 7)]
  assert re.search(r"casme2: offset past the last frame file, clamped to it: 1 row\(s\) "
                   r"of .*code_final\.xlsx: 2 \(disgust1_2 6/7/10\)", caplog.text)


@pytest.mark.parametrize("apex, offset, expected", [
    (9, 7, (5, -1, 6)),  # apex past the last of 8 frames
    (12, 10, (5, -1, 7)),  # and the offset, clamped
])
def test_casme2_apex_past_the_last_frame_is_unknown(tmp_path, caplog, apex, offset,
                                                    expected):
  """samm_lv and mmew store an apex outside onset..offset as -1 (`RowRepairs`); casme2
  stopped the build on it."""
  # disgust1_2 is 6/7/7
  assert _casme2_disgust_intervals(tmp_path, caplog, D2=apex, E2=offset)[1] == expected
  assert re.search(r"casme2: apex not coded or outside onset\.\.offset, set to unknown "
                   rf"\(-1\): 1 row\(s\) of .*code_final\.xlsx: 2 \(disgust1_2 6/{apex}/"
                   rf"{offset}\)", caplog.text)


def test_casme2_onset_past_the_last_frame_is_an_error(tmp_path):
  manual = copy("casme2", tmp_path)
  edit_cell(manual / CASME_SHEET, "CASFEcode_final", "C2", 9)
  edit_cell(manual / CASME_SHEET, "CASFEcode_final", "E2", 40)
  with pytest.raises(CorpusError, match=r"sheet 'CASFEcode_final' row 2: interval 8\.\.39 "
                     r".*outside the video of 8 frames"):
    build("casme2", manual, tmp_path / "data")
  assert no_finished_dataset(tmp_path / "data")


def test_casme2_prefers_the_updated_spreadsheet(tmp_path, caplog):
  """With both releases there, the corrected `(Updated)` sheet is read, as the MEGC
  spotting baselines read it, and the WARNING names the other one."""
  manual = copy("casme2", tmp_path)
  updated = manual / "CAS(ME)^2code_final(Updated).xlsx"
  shutil.copy(manual / CASME_SHEET, updated)
  edit_cell(updated, "CASFEcode_final", "D2", "x")  # tells which sheet was read
  with caplog.at_level("WARNING"), pytest.raises(
      CorpusError, match=r"code_final\(Updated\)\.xlsx sheet 'CASFEcode_final' row 2"):
    build("casme2", manual, tmp_path / "data")
  assert re.search(r"using CAS\(ME\)\^2code_final\(Updated\)\.xlsx \(also there: "
                   r"CAS\(ME\)\^2code_final\.xlsx\)", caplog.text)


def test_casme2_missing_naming_sheet(tmp_path):
  manual = copy("casme2", tmp_path)
  wb = openpyxl.load_workbook(manual / CASME_SHEET)
  del wb["naming rule2"]
  wb.save(manual / CASME_SHEET)
  with pytest.raises(CorpusError, match="sheet 'naming rule2' is missing"):
    build("casme2", manual, tmp_path / "data")


SAMM_SHEET = "SAMM_LongVideos_V3_Release.xlsx"


@pytest.mark.parametrize("cell,value,pattern", [
    ("H11", "Mega", r"row 11 column Type: unknown expression type 'Mega'"),
    ("F13", "x", r"row 13: column 'Offset' is not an integer frame number"),
    ("B12", "099_1_1", r"row 12: Subject 6 does not match Filename"),
])
def test_samm_bad_rows(tmp_path, cell, value, pattern):
  manual = copy("samm_lv", tmp_path)
  edit_cell(manual / SAMM_SHEET, None, cell, value)
  with pytest.raises(CorpusError, match=r"Release\.xlsx " + pattern):
    build("samm_lv", manual, tmp_path / "data")


def test_samm_empty_cells_are_not_coded(tmp_path, caplog):
  manual = copy("samm_lv", tmp_path)
  wb = openpyxl.load_workbook(manual / SAMM_SHEET)
  wb.active["E11"] = None  # 006_1_1: apex empty -> unknown, logged
  wb.active["D13"] = None  # 007_3_1: onset empty -> the apex (default config)
  wb.save(manual / SAMM_SHEET)
  samm = sys.modules[cu.builder_class("samm_lv").__module__]
  videos = samm._scan_videos(str(manual / "SAMM_longvideos"))
  with caplog.at_level("INFO", logger="meldae_jax.data.samm_lv"):
    samm._read_annotations(str(manual / SAMM_SHEET), videos)
  assert sorted(videos["006_1"]["intervals"]) == [(0, -1, 7, "macro"), (1, -1, 5, "micro")]
  assert videos["007_3"]["intervals"] == [(3, 3, 4, "micro")]
  assert "set to unknown (-1): 1 row(s)" in caplog.text and "11 (006_1_1 2/0/6)" in caplog.text
  assert "set to the apex: 1 row(s)" in caplog.text and "13 (007_3_1 0/4/5)" in caplog.text


def test_samm_missing_header_and_sheet(tmp_path):
  manual = copy("samm_lv", tmp_path)
  edit_cell(manual / SAMM_SHEET, None, "B10", "File")
  with pytest.raises(CorpusError, match="no header row"):
    build("samm_lv", manual, tmp_path / "data")
  os.remove(manual / SAMM_SHEET)
  with pytest.raises(CorpusError, match=r"Release\.xlsx: annotation "
                     "spreadsheet is missing"):
    build("samm_lv", manual, tmp_path / "data")


def test_mmew_errors(tmp_path):
  manual = copy("mmew", tmp_path)
  sheet = manual / "MMEW_Final/MMEW_Micro_Exp.xlsx"
  edit_cell(sheet, None, "B4", "S02-09-009")
  with pytest.raises(CorpusError, match=r"row 4: no clip folder .*S02-09-009"):
    build("mmew", manual, tmp_path / "data")
  os.remove(sheet)
  with pytest.raises(CorpusError, match="MMEW_Micro_Exp.xlsx: annotation "
                     "spreadsheet is missing"):
    build("mmew", manual, tmp_path / "data")
  assert no_finished_dataset(tmp_path / "data")


def _rewrite_eaf(path, old, new):
  text = path.read_text()
  assert old in text
  path.write_text(text.replace(old, new, 1))


def test_wdmd_missing_eaf(tmp_path):
  manual = copy("wdmd", tmp_path)
  os.remove(manual / "annotations/P02_talkshow_01.eaf")
  with pytest.raises(CorpusError, match=r"P02_talkshow_01\.eaf: ELAN "
                     r"annotation file is missing for video .*P02_talkshow_01"):
    build("wdmd", manual, tmp_path / "data")


def test_wdmd_bad_values_name_the_annotation(tmp_path):
  manual = copy("wdmd", tmp_path)
  eaf = manual / "annotations/P01_interview_01.eaf"
  _rewrite_eaf(eaf, ">macro<", ">nano<")
  with pytest.raises(CorpusError, match=r"P01_interview_01\.eaf: annotation "
                     r"a3 on tier 'expression'.*unknown expression type 'nano'"):
    build("wdmd", manual, tmp_path / "data")
  _rewrite_eaf(eaf, ">nano<", ">macro<")
  _rewrite_eaf(eaf, "apex=120", "apex=12x")
  with pytest.raises(CorpusError, match=r"annotation a2 .*apex=<milliseconds>"):
    build("wdmd", manual, tmp_path / "data")
  _rewrite_eaf(eaf, "apex=12x", "apex=120")
  _rewrite_eaf(eaf, 'TIER_ID="speaking"', 'TIER_ID="talk"')
  with pytest.raises(CorpusError, match="no 'speaking' tier"):
    build("wdmd", manual, tmp_path / "data")


def test_wdmd_annotation_without_its_video_is_an_error(tmp_path):
  manual = copy("wdmd", tmp_path)  # e.g. a video in a format not read: not dropped silently
  os.rename(manual / "videos/P02/P02_talkshow_01.mp4",
            manual / "videos/P02/P02_talkshow_01.m4v")
  with pytest.raises(CorpusError, match=r"annotations/P02_talkshow_01\.eaf: no video "
                     r"P02_talkshow_01\{\.mp4,"):
    build("wdmd", manual, tmp_path / "data")
  assert no_finished_dataset(tmp_path / "data")


def test_wdmd_several_expression_tiers_are_an_error(tmp_path):
  import pympi  # pylint: disable=g-import-not-at-top
  eaf = pympi.Elan.Eaf()
  for tier in ("expression", "ME", "speaking"):
    eaf.add_tier(tier)
  eaf.add_annotation("ME", 80, 200, "micro")  # only on the second tier
  path = str(tmp_path / "two.eaf")
  eaf.to_file(path)
  with pytest.raises(CorpusError, match=r"two\.eaf: several expression tiers "
                     r"\['expression', 'ME'\]"):
    _wdmd_module().read_eaf(path)


def test_wdmd_interval_outside_video_leaves_no_dataset(tmp_path):
  manual = copy("wdmd", tmp_path)
  # 12 frames at 25 fps = 480 ms; an expression ending at 900 ms is outside.
  _rewrite_eaf(manual / "annotations/P01_interview_01.eaf",
               'TIME_VALUE="440"', 'TIME_VALUE="900"')
  with pytest.raises(CorpusError, match=r"P01_interview_01\.eaf: annotation "
                     r"a3: span 280\.\.900 ms = frames 7\.\.22 is outside the "
                     "video of 12 frames"):
    build("wdmd", manual, tmp_path / "data")
  assert not (tmp_path / "data/wdmd/default/1.0.0").exists()
  assert no_finished_dataset(tmp_path / "data")
  # The same data_dir builds cleanly once the input is fixed.
  _rewrite_eaf(manual / "annotations/P01_interview_01.eaf",
               'TIME_VALUE="900"', 'TIME_VALUE="440"')
  builder = build("wdmd", manual, tmp_path / "data")
  assert len(builder.as_data_source("all")) == 4


def test_ms_to_frames_rule():
  # floor(t0 * fps / 1000) .. ceil(t1 * fps / 1000) - 1
  assert cu.ms_to_frames(0, 1000, 30, 100, "x") == (0, 29)
  assert cu.ms_to_frames(40, 80, 25, 10, "x") == (1, 1)
  assert cu.ms_to_frames(50, 90, 25, 10, "x") == (1, 2)
  assert cu.ms_to_frames(45, 46, 25, 10, "x") == (1, 1)  # tiny span -> 1 frame
  assert cu.ms_to_frames(300, 420, 25, 10, "x") == (7, 9)  # ends at the end
  assert cu.ms_to_frames(300, 440, 25, 10, "x") == (7, 9)  # 1 frame over: clamp
  with pytest.raises(CorpusError, match="outside the video"):
    cu.ms_to_frames(300, 480, 25, 10, "x")
  with pytest.raises(CorpusError, match="outside the video"):
    cu.ms_to_frames(400, 440, 25, 10, "x")
  with pytest.raises(CorpusError, match="bad time span"):
    cu.ms_to_frames(200, 100, 25, 10, "x")


def test_one_based_and_checks():
  assert cu.one_based(1, 3, 5, 5, "w") == (0, 2, 4)
  assert cu.one_based(2, -1, 4, 5, "w") == (1, -1, 3)
  assert cu.one_based(2, 0, 4, 5, "w") == (1, -1, 3)
  with pytest.raises(CorpusError, match="w: apex 5 is outside"):
    cu.one_based(1, 6, 3, 10, "w")
  with pytest.raises(CorpusError, match="w: interval 0..5 .* outside"):
    cu.one_based(1, 2, 6, 5, "w")


def test_subject_splits(tmp_path):
  subjects = ["S01", "S02", "S03", "S08"]
  assert cu.subject_splits(subjects, str(tmp_path), "t") == {
      "train": ["S01", "S02"], "validation": ["S03"], "test": ["S08"]}
  (tmp_path / "splits.json").write_text(json.dumps(
      {"train": ["S01", "S02"], "test": ["S03"]}))
  with pytest.raises(CorpusError, match="subject S08 of the corpus is in no"):
    cu.subject_splits(subjects, str(tmp_path), "t")
  (tmp_path / "splits.json").write_text(json.dumps(
      {"train": ["S01", "S08"], "test": ["S08", "S02", "S03"]}))
  with pytest.raises(CorpusError, match="S08 is in both"):
    cu.subject_splits(subjects, str(tmp_path), "t")
  # One subject written bare, not in a list: was "S08 of the corpus is in no split".
  (tmp_path / "splits.json").write_text(json.dumps(
      {"train": ["S01", "S02"], "validation": ["S03"], "test": "S08"}))
  with pytest.raises(CorpusError, match=r"splits\.json: 'test' is 'S08', not a list of "
                     "subject ids"):
    cu.subject_splits(subjects, str(tmp_path), "t")


def test_numbered_frames_and_read(tmp_path):
  for n in (1, 2, 4):
    (tmp_path / f"img{n}.jpg").write_bytes(b"x")
  with pytest.raises(CorpusError, match=r"img3\.jpg: frame image is missing "
                     r"\(1 missing of frames 1\.\.4\)"):
    cu.numbered_frames(str(tmp_path), r"img(?P<n>\d+)\.jpg",
                       lambda n: f"img{n}.jpg")
  with pytest.raises(CorpusError, match=r"img1\.jpg: frame image is unreadable"):
    cu.read_rgb(str(tmp_path / "img1.jpg"))


def test_a_truncated_jpeg_is_an_error_naming_it(tmp_path):
  # libjpeg decoded it without an error, the missing rows grey (a fake motion).
  img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)
  data = cv2.imencode(".jpg", img)[1].tobytes()
  (tmp_path / "whole.jpg").write_bytes(data + b"\x00\x00tail")  # bytes after the marker
  assert cu.read_rgb(str(tmp_path / "whole.jpg")).shape == (48, 64, 3)
  # a writer's longer trailer (a camera's metadata block) hides the marker from the
  # quick look at the file's end; the full decode finds the file whole
  (tmp_path / "trailer.jpg").write_bytes(data + b"\x00" * 4096)
  assert cu.read_rgb(str(tmp_path / "trailer.jpg")).shape == (48, 64, 3)
  (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
  with pytest.raises(CorpusError, match=r"cut\.jpg: frame image is truncated"):
    cu.read_rgb(str(tmp_path / "cut.jpg"))


def test_frame_of_another_size_names_its_file(tmp_path):
  """One box crops every frame: an odd-sized frame is an error naming it, whether the
  face box sampled it (was a ValueError naming no file) or not (was cut silently)."""
  manual = copy("casme2", tmp_path)
  video = manual / "rawpic/s16/16_0101disgustingteeth"
  cv2.imwrite(str(video / "img004.jpg"), np.zeros((96, 128, 3), np.uint8))
  pattern = r"img004\.jpg: frame is 128x96 pixels, but img001\.jpg of the same video is 64x48"
  with pytest.raises(CorpusError, match=pattern):
    build("casme2", manual, tmp_path / "data")
  assert no_finished_dataset(tmp_path / "data")
  frames = sorted(str(p) for p in video.glob("img*.jpg"))
  config = cu.CorpusConfig(name="sparse", face_sample=2)  # samples img001 and img008 only
  with pytest.raises(CorpusError, match=pattern):
    cu.face_crops(lambda: cu.ImageSequence(frames), config)


def test_long_videos_log_progress_within_the_video(tmp_path, caplog, monkeypatch):
  """The build's progress bar counts whole videos: a SAMM one (thousands of frames) showed
  nothing for minutes."""
  monkeypatch.setattr(cu, "PROGRESS_EVERY", 3)
  video = os.path.join(cu.DATASETS_DIR, "casme2/dummy_data/rawpic/s15/15_0101disgustingteeth")
  frames = sorted(os.path.join(video, f) for f in os.listdir(video))
  config = cu.CorpusConfig(name="p", face_sample=2)
  with caplog.at_level("INFO", logger="meldae_jax.data.corpus"):
    crops = cu.face_crops(lambda: cu.ImageSequence(frames), config, name="s15/v")
    assert len(crops) == 8
    assert re.findall(r"s15/v: \d+ of 8 frames cropped", caplog.text) == [
        "s15/v: 3 of 8 frames cropped", "s15/v: 6 of 8 frames cropped"]
    caplog.clear()
    cu.face_crops(lambda: (cu.read_rgb(f) for f in frames[:6]), config, name="w")
    assert re.findall(r"w: .*cropped", caplog.text) == ["w: 3 frames cropped",
                                                        "w: 6 frames cropped"]


def test_numbered_frames_padding_duplicates_and_frame_zero(tmp_path):
  name = lambda n: f"img{n}.jpg"  # pylint: disable=unnecessary-lambda-assignment
  for n in (1, 2, 4):  # CAS(ME)^2 rawpic names: img001.jpg ...
    (tmp_path / f"img{n:03d}.jpg").write_bytes(b"x")
  with pytest.raises(CorpusError, match=r"/img003\.jpg: frame image is missing"):
    cu.numbered_frames(str(tmp_path), r"img(?P<n>\d+)\.jpg", name)
  (tmp_path / "img003.jpg").write_bytes(b"x")
  assert [os.path.basename(p) for p in cu.numbered_frames(
      str(tmp_path), r"img(?P<n>\d+)\.jpg", name)] == [
          "img001.jpg", "img002.jpg", "img003.jpg", "img004.jpg"]
  (tmp_path / "img3.jpg").write_bytes(b"x")  # two files for frame 3: which one is it?
  with pytest.raises(CorpusError, match=r"img3\.jpg: frame number 3 is also img003\.jpg"):
    cu.numbered_frames(str(tmp_path), r"img(?P<n>\d+)\.jpg", name)
  os.remove(tmp_path / "img3.jpg")
  (tmp_path / "img000.jpg").write_bytes(b"x")  # numbered from 1: frame 0 was dropped
  with pytest.raises(CorpusError, match=r"img000\.jpg: frame number 0 is below the "
                     r"first frame 1"):
    cu.numbered_frames(str(tmp_path), r"img(?P<n>\d+)\.jpg", name)
  # start=None (clips keeping their recording's numbers) starts at the lowest file.
  assert len(cu.numbered_frames(str(tmp_path), r"img(?P<n>\d+)\.jpg", name,
                                start=None)) == 5


def _wdmd_module():
  return sys.modules[cu.builder_class("wdmd").__module__]


def _eaf_with_child_tiers(tmp_path, constraint="Symbolic_Association", origin=None):
  """expression and speaking as reference tiers under time-aligned parents."""
  import pympi  # pylint: disable=g-import-not-at-top
  eaf = pympi.Elan.Eaf()
  eaf.add_linguistic_type("child", constraint)
  eaf.add_tier("speaker")
  eaf.add_annotation("speaker", 80, 200, "x")
  eaf.add_annotation("speaker", 400, 1000, "y")
  eaf.add_tier("expression", ling="child", parent="speaker")
  eaf.add_tier("speaking", ling="child", parent="speaker")
  eaf.add_ref_annotation("expression", "speaker", 100, "micro apex=120")
  eaf.add_ref_annotation("speaking", "speaker", 500, "speaking")
  if origin is not None:
    eaf.add_linked_file("/x.mp4", mimetype="video/mp4", time_origin=origin)
  path = tmp_path / "child.eaf"
  eaf.to_file(str(path))
  return str(path)


def test_wdmd_reference_tiers_take_their_parents_time(tmp_path):
  wdmd = _wdmd_module()
  path = _eaf_with_child_tiers(tmp_path)
  intervals, speaking = wdmd.labels_to_frames(wdmd.read_eaf(path), 25.0, 30, path)
  assert intervals == [(2, 3, 4, "micro")]  # 80..200 ms at 25 fps, apex 120 ms
  assert list(np.flatnonzero(speaking == 1)) == list(range(10, 25))  # 400..1000 ms


def test_wdmd_subdivision_tiers_and_media_offsets_are_errors(tmp_path):
  wdmd = _wdmd_module()
  path = _eaf_with_child_tiers(tmp_path, constraint="Symbolic_Subdivision")
  with pytest.raises(CorpusError, match=r"child\.eaf: annotation a\d+ on tier "
                     r"'expression' refers .*'Symbolic_Subdivision'"):
    wdmd.read_eaf(path)
  path = _eaf_with_child_tiers(tmp_path, origin=1000)
  with pytest.raises(CorpusError, match=r"child\.eaf: .*TIME_ORIGIN 1000"):
    wdmd.read_eaf(path)


def test_sheet_rows_read_past_a_wrong_stated_size(tmp_path):
  """Read-only openpyxl trusts the file's <dimension>: a writer that states A1:B5 for
  A3:C9 lost rows 6-9 and column C without an error."""
  import zipfile  # pylint: disable=g-import-not-at-top
  wb = openpyxl.Workbook()
  for r in range(3, 10):
    for c in range(1, 4):
      wb.active.cell(r, c, r * 10 + c)
  wb.active.cell(10, 1, "short row")
  wb.save(tmp_path / "ok.xlsx")
  with zipfile.ZipFile(tmp_path / "ok.xlsx") as zin, \
      zipfile.ZipFile(tmp_path / "bad.xlsx", "w") as zout:
    for item in zin.infolist():
      data = zin.read(item.filename)
      if item.filename.endswith("sheet1.xml"):
        data, n = re.subn(rb"<dimension[^>]*>", b'<dimension ref="A1:B5"/>', data)
        assert n == 1
      zout.writestr(item, data)
  rows = list(cu.sheet_rows(cu.open_workbook(str(tmp_path / "bad.xlsx")).active))
  assert [n for n, _ in rows] == list(range(3, 11))
  assert rows[0][1] == (31, 32, 33) and rows[6][1] == (91, 92, 93)
  assert rows[-1][1] == ("short row", None, None)  # as wide as the widest


def test_find_file_takes_the_newest_release_and_names_the_others(tmp_path, caplog):
  for name in ("SAMM_LongVideos_V2_Release.xlsx", "SAMM_LongVideos_V10_Release.xlsx",
               "SAMM_LongVideos_V1_Release.xlsx", "notes.txt"):
    (tmp_path / name).write_bytes(b"")
  pattern = r"SAMM_LongVideos_V\d+_Release\.xlsx"
  with caplog.at_level("WARNING", logger="meldae_jax.data.corpus"):
    found = cu.find_file(str(tmp_path), ["SAMM_LongVideos_V3_Release.xlsx"], pattern)
  assert os.path.basename(found) == "SAMM_LongVideos_V10_Release.xlsx"
  assert "using SAMM_LongVideos_V10_Release.xlsx (also there: SAMM_LongVideos_V2" in caplog.text
  (tmp_path / "SAMM_LongVideos_V3_Release.xlsx").write_bytes(b"")  # a listed name first
  assert os.path.basename(cu.find_file(str(tmp_path), ["SAMM_LongVideos_V3_Release.xlsx"],
                                       pattern)) == "SAMM_LongVideos_V3_Release.xlsx"
  caplog.clear()
  with caplog.at_level("WARNING", logger="meldae_jax.data.corpus"):
    assert cu.find_file(str(tmp_path), ["notes.txt"]).endswith("notes.txt")
  assert caplog.text == ""  # one candidate: nothing to say


def test_mmew_rows_repaired_by_the_stated_rules(tmp_path, caplog):
  """The released sheet has rows with an apex missing or wrong and offsets a public
  reader (tvaranka/meb) corrects: they build, repaired and logged with their rows."""
  manual = copy("mmew", tmp_path)
  sheet = manual / "MMEW_Final/MMEW_Micro_Exp.xlsx"
  edit_cell(sheet, None, "D2", None)  # S01-01-001 (6 files): apex not coded
  edit_cell(sheet, None, "E3", 9)     # S01-02-001 (5 files): offset past the last file
  edit_cell(sheet, None, "C4", 7)     # S02-01-001 (6 files): onset past the last file
  with caplog.at_level("INFO", logger="meldae_jax.data.mmew"):
    builder = build("mmew", manual, tmp_path / "data")
  got = {}
  for split in builder.info.splits:
    for r in builder.as_data_source(split):
      iv = r["intervals"]
      got[r["video_id"].decode()] = [(int(a), int(b), int(c)) for a, b, c in
                                     zip(iv["onset"], iv["apex"], iv["offset"])]
  assert got["happiness/S01-01-001"] == [(1, -1, 4)]
  assert got["surprise/S01-02-001"] == [(0, 1, 4)]
  assert "disgust/S02-01-001" not in got
  for what, row in (("apex not coded", 2), ("clamped", 3), ("onset past the last", 4)):
    assert re.search(what + r".*Exp\.xlsx: " + str(row), caplog.text), what


def test_mmew_clip_files_numbered_as_in_the_recording(tmp_path):
  """A clip whose files keep the recording's frame numbers (25.jpg...), with the sheet
  counting the same way: frames from the lowest number, indices relative to it."""
  manual = copy("mmew", tmp_path)
  clip = manual / "MMEW_Final/Micro_Expression/fear/S08-04-001"
  for n in range(5, 0, -1):
    os.rename(clip / f"{n}.jpg", clip / f"{n + 24}.jpg")
  sheet = manual / "MMEW_Final/MMEW_Micro_Exp.xlsx"
  for cell, value in (("C6", 26), ("D6", 27), ("E6", 28)):  # S08-04-001: 2/3/4 before
    edit_cell(sheet, None, cell, value)
  builder = build("mmew", manual, tmp_path / "data")
  (record,) = [r for r in builder.as_data_source("test")
               if r["video_id"] == b"fear/S08-04-001"]
  iv = record["intervals"]
  assert (int(iv["onset"][0]), int(iv["apex"][0]), int(iv["offset"][0])) == (1, 2, 3)
  assert len(record["frames"]) == 5


@pytest.mark.parametrize("args, words", [
    (["wdmd"], "wdmd is built from your own copy of the corpus: pass --manual_dir"),
    (["synthetic_conversation/bogus"], "no config 'bogus'"),
    (["nosuch"], "no builder for 'nosuch'"),
])
def test_build_command_errors_are_one_line(tmp_path, args, words):
  proc = subprocess.run([sys.executable, "-m", "meldae_jax.data.build", *args,
                         "--data_dir", str(tmp_path / "data")], capture_output=True,
                        text=True, timeout=300, cwd=os.path.dirname(cu.DATASETS_DIR))
  assert proc.returncode == 2
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and words in lines[0], proc.stderr[-2000:]
  assert not (tmp_path / "data" / "wdmd").exists()


def test_build_command_with_an_empty_manual_dir_is_one_line(tmp_path, capsys):
  """TFDS asserts the manual_dir is not empty: its AssertionError was a traceback."""
  from meldae_jax.data import build as build_lib  # pylint: disable=g-import-not-at-top
  (tmp_path / "empty").mkdir()
  with pytest.raises(SystemExit) as exit_info:
    build_lib.main(["casme2", "--data_dir", str(tmp_path / "data"), "--manual_dir",
                    str(tmp_path / "empty")])
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].endswith(f"; {tmp_path / 'empty'} is empty"), lines
  assert no_finished_dataset(tmp_path / "data")


def test_two_subjects_of_one_loso_split_name_are_an_error():
  # 's-1' and 's_1' share the split name 'subject_s_1': one's videos replaced the other's.
  videos = [{"subject": "s-1", "id": 0}, {"subject": "s_1", "id": 1},
            {"subject": "s2", "id": 2}]
  with pytest.raises(CorpusError, match="'s-1' and 's_1'"):
    cu.loso_splits(videos, lambda vs: [v["id"] for v in vs])
  ok = cu.loso_splits(videos[1:], lambda vs: [v["id"] for v in vs])
  assert sorted(ok.values()) == [[1], [2]]


def test_build_command_names_two_subjects_of_one_split_name_in_one_line(monkeypatch,
                                                                         capsys):
  """It was a ValueError: the build command printed a traceback, not its error line."""
  from meldae_jax.data import build as build_lib  # pylint: disable=g-import-not-at-top
  videos = [{"subject": "s-1"}, {"subject": "s_1"}]
  monkeypatch.setattr(build_lib, "build",
                      lambda *a: cu.loso_splits(videos, lambda vs: vs))
  with pytest.raises(SystemExit) as exit_info:
    build_lib.main(["casme2"])
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and re.match(r"error: subjects 's-1' and 's_1' both map to the "
                                      r"split name 'subject_s_1'", lines[0]), lines


def test_build_command_shows_the_rows_it_repaired(tmp_path):
  """The casme2 README promises an INFO line counting offset-0 rows read as their apex;
  the command showed WARNING lines only."""
  proc = subprocess.run([sys.executable, "-m", "meldae_jax.data.build", "casme2",
                         "--data_dir", str(tmp_path / "data"), "--manual_dir",
                         os.path.join(cu.DATASETS_DIR, "casme2", "dummy_data")],
                        capture_output=True, text=True, timeout=300,
                        cwd=os.path.dirname(cu.DATASETS_DIR))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "casme2: 1 annotations with offset 0 use their apex as offset" in proc.stderr


def test_a_build_that_reuses_a_finished_one_says_its_manual_dir_was_not_read(tmp_path,
                                                                            caplog):
  """TFDS reuses a finished build: a second --manual_dir (the real corpus after the dummy
  one, into one data_dir) was ignored without a word."""
  from meldae_jax.data import build as build_lib  # pylint: disable=g-import-not-at-top
  dummy = os.path.join(cu.DATASETS_DIR, "casme2", "dummy_data")
  build_lib.build("casme2", tmp_path / "data", dummy)
  assert "was not read" not in caplog.text
  real = copy("casme2", tmp_path)
  with caplog.at_level("WARNING", logger="meldae_jax.data.build"):
    builder = build_lib.build("casme2", tmp_path / "data", str(real))
  assert re.search(r"casme2 is already built in .*casme2/default/[\d.]+: --manual_dir "
                   + re.escape(str(real)) + " was not read", caplog.text)
  assert builder.info.splits["all"].num_examples == 4


def test_build_command_without_data_dir_builds_where_training_reads(tmp_path,
                                                                    monkeypatch):
  """Training reads $TFDS_DATA_DIR with `~` expanded; the build command left the data_dir
  to TFDS, which kept a `~` of it as a folder named `~` under the current one."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  env = dict(os.environ, HOME=str(tmp_path), TFDS_DATA_DIR="~/tfds",
             PYTHONPATH=os.path.dirname(cu.DATASETS_DIR))
  help_text = subprocess.run([sys.executable, "-m", "meldae_jax.data.build", "--help"],
                             capture_output=True, text=True, timeout=300, env=env).stdout
  assert "$TFDS_DATA_DIR" in help_text
  proc = subprocess.run([sys.executable, "-m", "meldae_jax.data.build", "casme2",
                         "--manual_dir", os.path.join(cu.DATASETS_DIR, "casme2",
                                                      "dummy_data")],
                        capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (tmp_path / "tfds/casme2/default").is_dir()
  assert not (cwd / "~").exists()
  from configs import common  # pylint: disable=g-import-not-at-top
  from meldae_jax.data import build as build_lib  # pylint: disable=g-import-not-at-top
  for value in (None, "~/tfds", str(tmp_path / "tfds")):
    if value is None:
      monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    else:
      monkeypatch.setenv("TFDS_DATA_DIR", value)
    assert build_lib.default_data_dir() == common.default_data_dir()


def test_a_corpus_error_while_training_builds_is_a_one_line_error(tmp_path, monkeypatch,
                                                                   capsys):
  """`train.ensure_built` builds a generated corpus on the fly: a CorpusError there was
  missing from `cli.EXIT_CODES`, a traceback."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from meldae_jax import cli  # pylint: disable=g-import-not-at-top
  from meldae_jax import train  # pylint: disable=g-import-not-at-top

  def fail(*_):
    raise CorpusError("splits.json: subject S08 of the corpus is in no split")
  monkeypatch.setattr(train.build_lib, "build", fail)
  d = ml_collections.ConfigDict({"name": "synthetic_conversation", "builder_config": "tiny",
                                 "data_dir": str(tmp_path / "data"),
                                 "build_if_missing": True})
  with pytest.raises(SystemExit) as exit_info, cli.one_line_errors():
    train.ensure_built(d)
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.splitlines()
  assert lines[-1] == "error: splits.json: subject S08 of the corpus is in no split"


@pytest.mark.parametrize("spec, words", [
    ("nosuch", "no builder for 'nosuch'"),
    ("synthetic_conversation/bogus", "synthetic_conversation has no config 'bogus' (have "),
])
def test_preview_of_an_unknown_builder_or_config_is_one_line(tmp_path, capsys, spec,
                                                             words):
  """Both were tracebacks (a FileNotFoundError, TFDS's ValueError)."""
  from meldae_jax.data import preview  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as exit_info:
    preview.main(["--builder", spec, "--data_dir", str(tmp_path / "data"), "--out",
                  str(tmp_path / "out")])
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines


@pytest.mark.parametrize("spec, words", [
    ("synthetic_conversation/bogus", "synthetic_conversation has no config 'bogus'"),
    ("synthetic_conversation/tiny", "is a file, not a folder"),
])
def test_a_corpus_training_cannot_build_as_asked_is_a_one_line_error(tmp_path, capsys,
                                                                     spec, words):
  """An unknown builder config or a data_dir that is a file (build.BuildError) was a
  traceback from the training commands."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from meldae_jax import cli  # pylint: disable=g-import-not-at-top
  from meldae_jax import train  # pylint: disable=g-import-not-at-top
  (tmp_path / "file").write_text("x")
  name, _, config = spec.partition("/")
  d = ml_collections.ConfigDict({"name": name, "builder_config": config,
                                 "data_dir": str(tmp_path / "file"), "build_if_missing": True})
  with pytest.raises(SystemExit) as exit_info, cli.one_line_errors():
    train.ensure_built(d)
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.splitlines()
  assert lines[-1].startswith("error: ") and words in lines[-1], lines
