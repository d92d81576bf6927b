"""`python -m meldae_jax.evaluate`: the SPEC §5 JSON contract, run as a real subprocess."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
REQUIRED = ("tp", "fp", "fn", "precision", "recall", "f1", "f1_speaking", "f1_listening",
            "f1_dr", "uf1", "per_class", "megc2020")


def _ann(**video):
  entry = {"num_frames": 30, "fps": 30.0,
           "intervals": [{"onset": 10, "offset": 22, "type": "micro"}],
           "speaking": [0] * 15 + [1] * 15}
  entry.update(video)
  return {"videos": {"vid_42": entry}}


def _pred(vid="vid_42", **interval):
  iv = {"onset": 11, "offset": 21, "type": "micro", "score": 0.9}
  iv.update(interval)
  return {"videos": {vid: {"intervals": [iv]}}}


def _cli(tmp_path, ann, pred, *extra):
  a, p = tmp_path / "gt_file.json", tmp_path / "pred_file.json"
  for path, data in ((a, ann), (p, pred)):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
  return subprocess.run(
      [sys.executable, "-m", "meldae_jax.evaluate", "--annotations", str(a),
       "--predictions", str(p), *extra], cwd=ROOT, capture_output=True, text=True,
      timeout=60, check=False)


def test_valid_input_prints_one_json_object(tmp_path):
  proc = _cli(tmp_path, _ann(), _pred())
  assert proc.returncode == 0, proc.stderr
  assert len(proc.stdout.strip().splitlines()) == 1
  out = json.loads(proc.stdout)
  for key in REQUIRED:
    assert key in out, key
  # [10,22] vs [11,21]: inter 11, union 13 -> match; GT state: 7 listening (10-14) vs
  # 8 speaking (15-22) frames -> speaking.
  assert (out["tp"], out["fp"], out["fn"]) == (1, 0, 0)
  assert out["per_class"]["micro"] == {"tp": 1, "fp": 0, "fn": 0, "precision": 1.0,
                                       "recall": 1.0, "f1": 1.0}
  assert out["megc2020"]["found"] == 1
  assert out["f1_speaking"] == 1.0 and out["f1_listening"] is None
  assert out["f1_dr"] is None and out["uf1"] == 1.0


def test_iou_flag(tmp_path):
  # [10,22] vs [10,15]: inter 6, union 13 -> 0.46: FP + FN at 0.5, a match at 0.4.
  pred = _pred(onset=10, offset=15)
  assert json.loads(_cli(tmp_path, _ann(), pred).stdout)["tp"] == 0
  assert json.loads(_cli(tmp_path, _ann(), pred, "--iou", "0.4").stdout)["tp"] == 1


def test_video_absent_from_predictions(tmp_path):
  out = json.loads(_cli(tmp_path, _ann(), {"videos": {}}).stdout)
  assert (out["tp"], out["fp"], out["fn"]) == (0, 0, 1)
  assert out["precision"] is None and out["recall"] == 0.0


@pytest.mark.parametrize("ann, pred, bad_file", [
    (_ann(intervals=[{"onset": 22, "offset": 10, "type": "micro"}]), _pred(), "gt_file"),
    (_ann(), _pred(onset=25, offset=21), "pred_file"),
    (_ann(), _pred(offset=30), "pred_file"),
    (_ann(intervals=[{"onset": -2, "offset": 3, "type": "micro"}]), _pred(), "gt_file"),
    (_ann(), _pred(type="smile"), "pred_file"),
    (_ann(speaking=[0] * 29), _pred(), "gt_file"),
    (_ann(speaking=[3] * 30), _pred(), "gt_file"),
    (_ann(), _pred(vid="vid_99"), "pred_file"),
    (_ann(intervals=[{"onset": 1, "type": "micro"}]), _pred(), "gt_file"),
    (_ann(), _pred(onset=11.5), "pred_file"),
    (_ann(), _pred(score=float("nan")), "pred_file"),  # json.dumps writes NaN, as
    (_ann(), _pred(score=float("inf")), "pred_file"),  # json.load reads it
    (_ann(fps=float("inf")), _pred(), "gt_file"),
    (_ann(), _pred(score=10 ** 400), "pred_file"),  # an int no float holds
    (_ann(fps=10 ** 400), _pred(), "gt_file"),
    (_ann(speaking="0" * 30), _pred(), "gt_file"),
])
def test_malformed_input_fails_with_one_line(tmp_path, ann, pred, bad_file):
  proc = _cli(tmp_path, ann, pred)
  assert proc.returncode != 0
  assert proc.stdout == ""
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert bad_file in lines[0]
  video = "vid_99" if "vid_99" in json.dumps(pred) else "vid_42"
  assert video in lines[0]


def test_speaking_not_a_list_says_so(tmp_path):
  proc = _cli(tmp_path, _ann(speaking="0" * 30), _pred())
  assert "speaking must be a list" in proc.stderr and "length" not in proc.stderr


@pytest.mark.parametrize("ann, bad_file", [
    ('{"videos": {"vid_42": ', "gt_file"),
    ("[1, 2]", "gt_file"),
    ('{"videos": {"vid_42": {"num_frames": ' + "9" * 5000 + "}}}", "gt_file"),  # ValueError
    ("[" * 100_000 + "]" * 100_000, "gt_file"),  # RecursionError
])
def test_unreadable_json_names_the_file(tmp_path, ann, bad_file):
  proc = _cli(tmp_path, ann, _pred())
  assert proc.returncode == 2  # the one-line error, not a traceback's exit status 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and bad_file in lines[0]


def test_missing_file_names_the_file(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "meldae_jax.evaluate", "--annotations",
       str(tmp_path / "nowhere.json"), "--predictions", str(tmp_path / "p.json")],
      cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "nowhere.json" in lines[0]


def test_a_video_listed_twice_is_an_error_naming_it(tmp_path):
  """json.load kept the second entry of a repeated key: the first video's predictions
  were dropped without a word."""
  entry = '{"intervals": [{"onset": 11, "offset": 21, "type": "micro", "score": 0.9}]}'
  pred = '{"videos": {"vid_42": ' + entry + ', "vid_42": {"intervals": []}}}'
  proc = _cli(tmp_path, _ann(), pred)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "pred_file" in lines[0] and "'vid_42' appears twice" in lines[0]
