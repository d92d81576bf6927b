"""`dataset.frame_step`: the model sees every k-th frame; evaluation stays in native frames."""
import json
import os

import cv2
import jax
import ml_collections
import numpy as np
import pytest

import train_helpers as th
from meldae_jax import attention_maps
from meldae_jax import intervals
from meldae_jax import metrics
from meldae_jax import predict
from meldae_jax import spot
from meldae_jax import train
from meldae_jax.data import corpus_utils as cu
from meldae_jax.data import pipeline
from meldae_jax.data import sources

compilation_cache = th.compilation_cache_fixture()

STEP, NATIVE_FRAMES = 3, 60


def _numbered_record(num_frames: int, intervals_=(), fps: float = 200.0) -> dict:
  """Frame i is a flat 8x8 PNG of grey level i + 1, so a window's pixels name its frames."""
  frames = [cv2.imencode(".png", np.full((8, 8, 3), i + 1, np.uint8))[1].tobytes()
            for i in range(num_frames)]
  return {"video_id": b"num", "subject": b"s0", "fps": np.float32(fps), "frames": frames,
          "intervals": {"onset": [a for a, _, _ in intervals_],
                        "offset": [b for _, b, _ in intervals_],
                        "type": [t for _, _, t in intervals_]},
          "speaking": (np.arange(num_frames) // 5 % 2).astype(np.int8)}


def test_a_subsampled_window_holds_native_frames_start_k_and_decodes_no_other(monkeypatch):
  index = sources.VideoIndex([_numbered_record(40)]).with_frame_step(STEP)
  decoded = []
  real = pipeline.decode_frame
  monkeypatch.setattr(pipeline, "decode_frame",
                      lambda data, *a: decoded.append(real(data)[0, 0, 0] - 1) or real(data))
  loader = pipeline.WindowLoader(index, window=4, classes=("micro",), image_size=8)
  out = loader((0, 5))
  native = [(5 + j) * STEP for j in range(4)]  # 15, 18, 21, 24
  assert [int(out["video"][j, 0, 0, 0]) - 1 for j in range(4)] == native
  assert (out["video"] == np.asarray(native, np.uint8)[:, None, None, None] + 1).all()
  assert decoded == native  # the frames in between are never decoded
  assert out["start"] == 5 and out["frame_mask"].tolist() == [1, 1, 1, 1]
  last = loader((0, 12))  # 40 frames -> 14 sampled (0 .. 39); the window runs past them
  assert [int(v) - 1 for v in last["video"][:2, 0, 0, 0]] == [36, 39]
  assert last["frame_mask"].tolist() == [1, 1, 0, 0]
  assert sources.VideoIndex([_numbered_record(40)]).with_frame_step(1).frame_step == 1


def test_labels_are_those_of_the_sampled_frames_and_a_short_me_keeps_its_nearest():
  """k=7 (SAMM's): a 3-frame ME between two samples gets the nearest one; a longer
  interval the samples inside it; one after the last sample that sample."""
  k = 7
  record = _numbered_record(47, [(10, 12, 0), (15, 30, 1), (43, 46, 0)])
  record["intervals"]["apex"] = [11, 29, -1]
  index = sources.VideoIndex([record])
  info = index.with_frame_step(k).infos[0]
  assert info.num_frames == 7 and info.fps == pytest.approx(200 / 7)
  # 10..12 lies between samples 7 and 14; 14 is nearer (2 frames, 7 is 3 away).
  assert info.intervals["onset"].tolist() == [2, 3, 6]
  assert info.intervals["offset"].tolist() == [2, 4, 6]
  assert info.intervals["apex"].tolist() == [2, 4, -1]
  assert info.speaking.tolist() == record["speaking"][::k].tolist()
  loader = pipeline.WindowLoader(index.with_frame_step(k), window=4,
                                 classes=("micro", "macro"), image_size=8)
  out = loader((0, 1))  # sampled frames 1..4 = native 7, 14, 21, 28
  assert out["labels"][:, 0].tolist() == [0, 1, 0, 0]  # the 3-frame ME, at native 14
  assert out["labels"][:, 1].tolist() == [0, 0, 1, 1]  # macro 15..30 -> 21, 28
  assert out["boundary"][:, 0].tolist() == [0, 1, 0, 0]
  assert out["boundary"][:, 1].tolist() == [0, 0, 1, 1]
  assert out["me_label"] == 1
  assert out["speaking"].tolist() == record["speaking"][7:29:7].tolist()
  assert loader((0, 3))["labels"][:, 0].tolist() == [0, 0, 0, 1]  # 43..46 -> native 42
  assert index.native_infos[0].intervals["onset"].tolist() == [10, 15, 43]  # untouched
  assert index.to_annotations() == index.with_frame_step(k).to_annotations()


def test_scores_map_back_to_native_frames_linearly_then_held():
  s = np.asarray([[0.0, 1.0], [0.3, 0.4], [0.9, 0.1], [0.6, 0.6]], np.float32)
  out = intervals.to_native_frames(s, 11, 3)  # samples at 0, 3, 6, 9; 10 is past them
  assert out.shape == (11, 2) and out.dtype == np.float32
  np.testing.assert_allclose(out[:, 0], [0, .1, .2, .3, .5, .7, .9, .8, .7, .6, .6],
                             atol=1e-6)
  np.testing.assert_array_equal(out[::3], s)
  assert intervals.to_native_frames(s, 4, 1) is s
  with pytest.raises(ValueError, match="4 sampled scores for 13 frames"):
    intervals.to_native_frames(s, 13, 3)
  # The averager does it for a frame_step view: native length, sampled frames' means.
  index = sources.VideoIndex([_numbered_record(10)]).with_frame_step(3)  # 4 samples
  avg = pipeline.ScoreAverager(index)
  avg.add({"video_index": np.asarray([0, 0]), "start": np.asarray([0, 1]),
           "frame_mask": np.ones((2, 3))}, np.asarray([[.0, .3, .6], [.9, .9, .9]]))
  # sampled means 0, (.3 + .9) / 2, (.6 + .9) / 2, .9 at native 0, 3, 6, 9
  np.testing.assert_allclose(avg.result()[0], [0, .2, .4, .6, .65, .7, .75, .8, .85, .9],
                             atol=1e-6)


def test_frame_step_is_checked_and_only_samm_changes_it(tmp_path):
  for bad in (0, -2, 1.5, True, "7"):
    cfg = ml_collections.ConfigDict({"dataset": {"frame_step": bad}})
    with pytest.raises(ValueError, match="dataset.frame_step"):
      predict.frame_step(cfg)
  assert predict.frame_step(ml_collections.ConfigDict({"dataset": {}})) == 1  # old runs
  cfg = th.tiny_config(**{"dataset.frame_step": 0})
  with pytest.raises(ValueError, match="--config.dataset.frame_step=0: must be an int >= 1"):
    train.train_and_evaluate(cfg, str(tmp_path / "w"), splits=th.splits())
  assert not (tmp_path / "w" / "config.json").exists()
  import importlib  # pylint: disable=g-import-not-at-top
  steps = {name: importlib.import_module(f"configs.{name}").get_config().dataset.frame_step
           for name in ("synthetic", "wdmd", "casme2", "samm_lv", "mmew")}
  assert steps == {"synthetic": 1, "wdmd": 1, "casme2": 1, "samm_lv": 7, "mmew": 1}
  saved = {"dataset": {"frame_step": 3}}
  assert "trained with 3" in train.frame_step_change(saved, th.tiny_config())
  assert train.frame_step_change({"dataset": {}}, th.tiny_config()) is None
  assert train.frame_step_change(None, th.tiny_config()) is None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 2-step tiny run at frame_step 3 on 60-frame videos (20 sampled frames each)."""
  wd = tmp_path_factory.mktemp("step3")
  cfg = th.tiny_config(total_steps=2, log_every=1, eval_every=2,
                       **{"dataset.frame_step": STEP})
  splits = th.splits(n_train=2, n_val=1, n_test=1, num_frames=NATIVE_FRAMES)
  result = train.train_and_evaluate(cfg, str(wd), splits=splits)
  assert result["status"] == "done"
  return cfg, wd, splits, result


def test_evaluation_is_in_native_frames_and_fps(run):
  cfg, wd, splits, result = run
  assert json.loads((wd / "config.json").read_text())["dataset"]["frame_step"] == STEP
  annotations = json.loads((wd / "test_annotations.json").read_text())
  native = splits.test.native_infos[0]
  assert annotations == splits.test.to_annotations()
  video = annotations["videos"][native.video_id]
  assert video["num_frames"] == NATIVE_FRAMES and video["fps"] == native.fps
  assert [(iv["onset"], iv["offset"]) for iv in video["intervals"]] == list(
      zip(native.intervals["onset"].tolist(), native.intervals["offset"].tolist()))
  # Acc_ME counts the model's windows: 20 sampled frames, T=4, stride 2 -> 9.
  assert result["acc_me_clips"]["clips"] == 9
  trainer = train.make_trainer(cfg)
  with jax.set_mesh(trainer.mesh):
    params, threshold, _ = spot.restore(cfg, str(wd), trainer)
    scores, _ = predict.score_videos(trainer, params, splits.test, cfg)
    maps = attention_maps.frame_maps(trainer, params, splits.test, cfg)
  track = scores[native.video_id]
  assert track.shape == (NATIVE_FRAMES, 1)
  np.testing.assert_allclose(track[1:57:3], (2 * track[0:57:3] + track[3::3]) / 3,
                             atol=1e-6)  # frames 1, 4, ..., 55: linear between samples
  assert track[57, 0] == track[58, 0] == track[59, 0]  # held after the last sample
  assert np.ptp(track[:57:3]) > 1e-4  # the samples differ: the check above means something
  assert maps[native.video_id].shape[0] == NATIVE_FRAMES
  dk = predict.decode_kwargs(cfg)
  predictions = predict.make_predictions(scores, annotations, ("micro",), threshold, dk)
  assert predictions == json.loads((wd / "test_predictions.json").read_text())
  m = metrics.evaluate(annotations, predictions)
  assert (m["tp"], m["fp"], m["fn"]) == (result["tp"], result["fp"], result["fn"])
  # Decoding lengths are seconds at the native fps: a threshold that finds intervals
  # gives them in native frames, cut by the max length of 0.5 s at 30 fps (15 frames).
  low = float(np.median(track))
  found = predict.make_predictions(scores, annotations, ("micro",), low, dict(
      dk, max_seconds=None))["videos"][native.video_id]["intervals"]
  assert found and all(0 <= iv["offset"] < NATIVE_FRAMES for iv in found)
  capped = intervals.decode_video(track, ("micro",), native.fps, low, **dict(
      dk, max_seconds=0.5))
  assert all(iv["offset"] - iv["onset"] + 1 <= 15 for iv in capped)


def test_evaluate_mode_and_spot_use_the_saved_frame_step(run, tmp_path, capsys):
  _, wd, splits, result = run
  cfg = spot.load_config(str(wd), None)  # the saved config.json
  again = train.evaluate_only(cfg, str(wd), splits=splits)
  assert (again["tp"], again["fp"], again["fn"]) == (result["tp"], result["fp"],
                                                       result["fn"])
  assert "WARNING: dataset.frame_step" not in capsys.readouterr().out
  # spot: a frame folder of a 61-frame video, scored at every 3rd frame, is the model's
  # scores of those 21 frames as a video of its own, interpolated to all 61.
  record = th.records(1, seed=700, num_frames=61)[0]
  folder = tmp_path / "v700"
  folder.mkdir()
  for i, data in enumerate(record["frames"]):  # lossless: spot's crops are these frames
    cv2.imwrite(str(folder / f"img{i + 1}.png"),
                cv2.cvtColor(cu.decode_frame(data), cv2.COLOR_RGB2BGR))
  fps = float(record["fps"])
  out = spot.spot(cfg, str(wd), [str(folder)], str(tmp_path / "out"), fps=fps,
                  crop_size=32, encoding="png", detector=lambda frame: [], threshold=0.05)
  video = out["videos"]["v700"]
  assert video["num_frames"] == 61 and video["fps"] == fps
  sampled = dict(record, frames=record["frames"][::STEP], fps=np.float32(fps / STEP),
                 speaking=record["speaking"][::STEP], intervals={})
  cfg1 = ml_collections.ConfigDict(cfg.to_dict())
  cfg1.dataset.frame_step = 1
  trainer = train.make_trainer(cfg1)
  with jax.set_mesh(trainer.mesh):
    params, _, _ = spot.restore(cfg1, str(wd), trainer)
    own, _ = predict.score_videos(trainer, params, sources.VideoIndex([sampled]), cfg1)
  expected = intervals.to_native_frames(own["v700"], 61, STEP)
  saved = np.load(tmp_path / "out" / "scores.npz")["v700"]
  np.testing.assert_allclose(saved, expected, rtol=0, atol=1e-6)
  for iv in video["intervals"]:
    assert iv["onset_s"] == pytest.approx(iv["onset"] / fps, abs=1e-4)
  assert "WARNING: dataset.frame_step is 1" in capsys.readouterr().out  # cfg1's restore
