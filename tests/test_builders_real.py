"""Builds every real-corpus builder from its dummy_data and reads it back.

Expected values are read from the dummy spreadsheets/.eaf files themselves, so
the tests check the conversion rules (1-based -> 0-based, ms -> frames), not a
copy of the builder's output.
"""
import json
import logging
import os
import re
import shutil

import numpy as np
import openpyxl
import pytest
import tensorflow_datasets as tfds

from meldae_jax.data import corpus_utils as cu
from meldae_jax.data import schema
from meldae_jax.data import sources

DATASETS = cu.DATASETS_DIR
MICRO, MACRO = 0, 1


def dummy(name):
  return os.path.join(DATASETS, name, "dummy_data")


def build(name, data_dir, manual_dir=None, config=None):
  builder = cu.builder_class(name)(data_dir=str(data_dir), config=config,
                                   file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir or dummy(name)))
  return builder


def records(builder, split):
  out = {}
  for r in builder.as_data_source(split):
    out[r["video_id"].decode()] = r
  return out


def intervals_of(record):
  iv = record["intervals"]
  return sorted(zip((int(v) for v in iv["onset"]), (int(v) for v in iv["apex"]),
                    (int(v) for v in iv["offset"]), (int(v) for v in iv["type"])))


def check_common(builder, size=112):
  """Schema, frames decode to size x size, speaking length == frames."""
  assert set(builder.info.features.keys()) == set(schema.features().keys())
  for r in builder.as_data_source("all"):
    n = len(r["frames"])
    assert n > 0 and r["speaking"].shape == (n,)
    for f in (r["frames"][0], r["frames"][-1]):
      assert cu.decode_frame(f).shape == (size, size, 3)
    for onset, apex, offset, _ in intervals_of(r):
      assert 0 <= onset <= offset < n
      assert apex == -1 or onset <= apex <= offset
  sources.VideoIndex(builder.as_data_source("all"))  # the pipeline's record checks pass


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  cache = {}

  def get(name, config=None):
    if (name, config) not in cache:
      cache[name, config] = build(name, tmp_path_factory.mktemp(name),
                                  config=config)
    return cache[name, config]
  return get


def test_casme2(built):
  b = built("casme2")
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {
      "subject_15": 2, "subject_16": 1, "subject_19": 1}
  check_common(b)
  recs = records(b, "all")
  assert len(recs) == 4
  wb = openpyxl.load_workbook(os.path.join(dummy("casme2"),
                                           "CAS(ME)^2code_final.xlsx"))
  subjects = {r[2]: r[0] for r in wb["naming rule1"].iter_rows(values_only=True)}
  codes = {r[1]: f"{r[0]:04d}" for r in wb["naming rule2"].iter_rows(
      values_only=True)}
  expected = {}
  for row in wb["CASFEcode_final"].iter_rows(values_only=True):
    part, name, on, ap, off, _, _, kind, _ = row
    vid = next(v for v in recs
               if v.startswith(f"s{subjects[part]}/")
               and v.split("_", 1)[1].startswith(codes[name.split("_")[0]]))
    off = ap if off == 0 else off  # Documented: offset 0 -> apex.
    expected.setdefault(vid, []).append(
        (on - 1, ap - 1, off - 1, MICRO if kind == "micro-expression" else MACRO))
  for vid, r in recs.items():
    assert intervals_of(r) == sorted(expected.get(vid, []))
    assert (r["speaking"] == -1).all()
    assert r["fps"] == pytest.approx(30.0)
    assert r["subject"].decode() == vid[1:3]
  # Spot checks against the sheet by hand: disgust1_1 of s15 is 2/3/5 macro.
  assert intervals_of(recs["s15/15_0101disgustingteeth"])[0] == (1, 2, 4, MACRO)
  assert len(recs["s15/15_0101disgustingteeth"]["frames"]) == 8
  # The s19 folder named 23_0502... (a quirk of the real release) is found.
  assert intervals_of(recs["s19/23_0502funnyerrors"]) == [(2, 3, 4, MACRO)]


def test_casme2_skip_missing_offset(built):
  b = built("casme2", "skip_missing_offset")
  recs = records(b, "subject_15")
  assert intervals_of(recs["s15/15_0502funnyerrors"]) == []
  assert len(intervals_of(recs["s15/15_0101disgustingteeth"])) == 2


def test_loso_folds(built):
  b = built("casme2")
  folds = cu.loso_folds(b)
  assert [f[0] for f in folds] == ["15", "16", "19"]
  test_subject, train = folds[1]
  assert train == ["subject_15", "subject_19"]
  assert len(b.as_data_source("+".join(train))) == 3
  assert cu.loso_folds(["train", "subject_a", "subject_b"]) == [
      ("a", ["subject_b"]), ("b", ["subject_a"])]
  for _, r in records(b, cu.loso_split_name(test_subject)).items():
    assert r["subject"].decode() == test_subject


def test_samm_lv(built):
  b = built("samm_lv")
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {
      "subject_006": 1, "subject_007": 1}
  check_common(b)
  recs = records(b, "all")
  ws = openpyxl.load_workbook(os.path.join(
      dummy("samm_lv"), "SAMM_LongVideos_V3_Release.xlsx")).active
  rows = list(ws.iter_rows(values_only=True))
  assert rows[9][1] == "Filename"  # Nine title rows, then the header.
  expected = {}
  for row in rows[10:]:
    vid = row[1].rsplit("_", 1)[0]
    ap = row[4] - 1 if row[4] > 0 else -1
    expected.setdefault(vid, []).append(
        (row[3] - 1, ap, row[5] - 1, MACRO if row[7] == "Macro" else MICRO))
  for vid, r in recs.items():
    assert intervals_of(r) == sorted(expected[vid])
    assert (r["speaking"] == -1).all() and r["fps"] == pytest.approx(200.0)
  assert intervals_of(recs["006_1"]) == [(0, -1, 7, MACRO), (1, 3, 5, MICRO)]
  assert recs["006_1"]["subject"] == b"006"


def test_samm_lv_released_rows_that_need_a_policy(tmp_path, caplog):
  """Rows of the kinds the released sheets hold (V1, per the MEGC2020 baseline's dump:
  onset 0 on Macro rows, apex after offset, offset past the last frame) build, each
  repaired by its stated policy and logged with its row."""
  manual = tmp_path / "manual"
  shutil.copytree(dummy("samm_lv"), manual)
  sheet = manual / "SAMM_LongVideos_V3_Release.xlsx"
  wb = openpyxl.load_workbook(sheet)
  ws = wb.active
  ws["F11"] = 20   # 006_1_1 (8 frames): offset 20 -> clamped to frame 8
  ws["D13"] = 0    # 007_3_1: onset 0 (not coded), apex 4
  ws.append((6, "006_1_3", 1, 2, 7, 3, 2, "Micro - 1/2", "12", None))  # apex after offset
  ws.append((7, "007_3_2", 3, 9, 10, 11, 3, "Macro", "12", None))  # past 6 frames
  wb.save(sheet)
  with caplog.at_level(logging.INFO, logger="meldae_jax.data.samm_lv"):
    recs = records(build("samm_lv", tmp_path / "data", str(manual)), "all")
  assert intervals_of(recs["006_1"]) == [(0, -1, 7, MACRO), (1, -1, 2, MICRO),
                                         (1, 3, 7, MICRO)]
  assert intervals_of(recs["007_3"]) == [(3, 3, 4, MICRO)]  # onset := apex
  log = caplog.text
  for what, row in (("clamped", 11), ("set to the apex", 13), ("outside onset..offset", 14),
                    ("onset past the last frame", 15)):
    assert re.search(what + r".*: 1 row\(s\) of .*Release\.xlsx: " + str(row), log), what
  skipping = records(build("samm_lv", tmp_path / "data_skip", str(manual),
                           config="skip_missing_bound"), "all")
  assert intervals_of(skipping["007_3"]) == []


def test_samm_lv_crop224(built):
  b = built("samm_lv", "crop224")
  check_common(b, size=224)


def test_mmew(built):
  b = built("mmew")
  sizes = {k: v.num_examples for k, v in b.info.splits.items()}
  assert sizes == {"train": 3, "validation": 1, "test": 1}
  check_common(b)
  subjects = {s: {r["subject"] for r in b.as_data_source(s)} for s in sizes}
  assert subjects == {"train": {b"S01", b"S02"}, "validation": {b"S03"},
                      "test": {b"S08"}}
  ws = openpyxl.load_workbook(os.path.join(
      dummy("mmew"), "MMEW_Final", "MMEW_Micro_Exp.xlsx")).active
  rows = list(ws.iter_rows(values_only=True))
  recs = records(b, "all")
  for subject, clip, on, ap, off, _, emotion in rows[1:]:
    r = recs[f"{emotion}/{clip}"]
    assert intervals_of(r) == [(on - 1, ap - 1, off - 1, MICRO)]
    assert r["subject"].decode() == subject
    assert (r["speaking"] == -1).all() and r["fps"] == pytest.approx(90.0)


def test_mmew_splits_json(tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(dummy("mmew"), manual)
  (manual / "splits.json").write_text(json.dumps(
      {"train": ["S01"], "validation": ["S02", "S03"], "test": ["S08"]}))
  b = build("mmew", tmp_path / "data", manual_dir=str(manual))
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {
      "train": 2, "validation": 2, "test": 1}


def _eaf_spans(path, tier):
  import pympi  # pylint: disable=g-import-not-at-top
  eaf = pympi.Elan.Eaf(path)
  return [(eaf.timeslots[a], eaf.timeslots[b], v)
          for a, b, v, _ in eaf.tiers[tier][0].values()]


def test_wdmd(built):
  b = built("wdmd")
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {
      "train": 2, "validation": 1, "test": 1}
  check_common(b)
  recs = records(b, "all")
  fps = 25.0
  for vid, r in recs.items():
    assert r["fps"] == pytest.approx(fps)
    eaf = os.path.join(dummy("wdmd"), "annotations", vid + ".eaf")
    n = len(r["frames"])
    speaking = np.zeros(n, np.int8)
    for t0, t1, v in _eaf_spans(eaf, "speaking"):
      if v == "speaking":  # Documented rule: floor(t0*fps/1000) ..
        speaking[int(np.floor(t0 * fps / 1000)):
                 min(n, int(np.ceil(t1 * fps / 1000)))] = 1  # ceil(t1..) - 1
    np.testing.assert_array_equal(r["speaking"], speaking)
    expected = []
    for t0, t1, v in _eaf_spans(eaf, "expression"):
      kind, *rest = v.split()
      apex = int(np.floor(float(rest[0][5:]) * fps / 1000)) if rest else -1
      expected.append((int(np.floor(t0 * fps / 1000)), apex,
                       int(np.ceil(t1 * fps / 1000)) - 1,
                       MICRO if kind == "micro" else MACRO))
    assert intervals_of(r) == sorted(expected)
  # By hand: 80..200 ms at 25 fps = frames 2..4, apex 120 ms = frame 3.
  r = recs["P01_interview_01"]
  assert len(r["frames"]) == 12
  assert intervals_of(r) == [(2, 3, 4, MICRO), (7, -1, 10, MACRO)]
  assert r["speaking"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]
  assert recs["P04_film_01"]["speaking"].tolist() == [0] * 10
  assert {r["subject"] for r in b.as_data_source("test")} == {b"P04"}


def test_dummy_data_is_small():
  total = 0
  for name in ("wdmd", "casme2", "samm_lv", "mmew"):
    for root, _, files in os.walk(dummy(name)):
      total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  assert 0 < total < 1_000_000



@pytest.mark.parametrize("name", ["wdmd", "casme2", "samm_lv", "mmew",
                                  "synthetic_conversation"])
def test_dataset_info_cites_the_corpus_papers(tmp_path, name):
  """A built corpus's DatasetInfo carries its CITATIONS.bib (samm_lv's lacked the SAMM
  paper that SAMM Long Videos extends, Davison et al. 2018)."""
  builder = cu.builder_class(name)(data_dir=str(tmp_path), file_format="array_record")
  with open(os.path.join(DATASETS, name, "CITATIONS.bib")) as f:
    bib = f.read()
  assert builder.info.citation.strip() == bib.strip()
  if name == "samm_lv":
    assert "{SAMM: A Spontaneous Micro-Facial Movement Dataset}" in bib

def test_no_tensorflow(built):
  import sys  # pylint: disable=g-import-not-at-top
  built("mmew")
  assert "tensorflow" not in sys.modules


def test_preview_of_a_corpus_without_a_train_split(tmp_path):
  """casme2 holds one split per subject: preview's default `train` was an unknown split."""
  from meldae_jax.data import preview  # pylint: disable=g-import-not-at-top
  build("casme2", tmp_path / "data")
  preview.main(["--builder", "casme2", "--data_dir", str(tmp_path / "data"), "--videos", "4",
                "--no_video", "--out", str(tmp_path / "out")])
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
      "s15__15_0101disgustingteeth_sheet.png", "s15__15_0502funnyerrors_sheet.png",
      "s16__16_0101disgustingteeth_sheet.png", "s19__23_0502funnyerrors_sheet.png"]


def test_preview_of_a_corpus_not_built_names_the_build_command(tmp_path, capsys):
  """It was TFDS's KeyError traceback (`splits` is empty)."""
  from meldae_jax.data import preview  # pylint: disable=g-import-not-at-top
  data = tmp_path / "data"
  with pytest.raises(SystemExit) as exit_info:
    preview.main(["--builder", "casme2", "--data_dir", str(data), "--out",
                  str(tmp_path / "out")])
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith(f"error: Corpus 'casme2' is not built in {data} ")
  assert lines[0].endswith(f"Build it once with: python -m meldae_jax.data.build casme2 "
                           f"--data_dir={data} --manual_dir=<folder with the downloaded "
                           f"files>")


def test_face_box_warnings_name_the_video(tmp_path, caplog):
  """The dummy frames hold no face: each centre-square warning names its video."""
  with caplog.at_level(logging.WARNING, logger="meldae_jax.data.face_crop"):
    build("casme2", tmp_path / "data")
    build("wdmd", tmp_path / "data")
  for video in ("rawpic/s15/15_0101disgustingteeth", "rawpic/s19/23_0502funnyerrors",
                "videos/P04/P04_film_01.mp4"):
    assert re.search(re.escape(video) + ": no face found", caplog.text), video
