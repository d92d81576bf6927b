"""`python -m meldae_jax.spot`: a trained workdir run on videos that are not in a corpus."""
import json
import os
import pathlib
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

import train_helpers as th
from meldae_jax import metrics
from meldae_jax import predict
from meldae_jax import spot
from meldae_jax import train
from meldae_jax.data import corpus_utils as cu
from meldae_jax.data import pipeline
from meldae_jax.data import sources

compilation_cache = th.compilation_cache_fixture()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A 2-step tiny run with validation data (so a best checkpoint and its threshold)."""
  wd = tmp_path_factory.mktemp("run")
  cfg = th.tiny_config(total_steps=2, log_every=1, eval_every=2)
  result = train.train_and_evaluate(cfg, str(wd), splits=th.splits(
      n_train=2, n_val=1, n_test=0, num_frames=40))
  assert result["status"] == "done"
  return str(wd)


def _write_frames(record, folder, names=lambda i: f"img{i + 1}.png"):
  os.makedirs(folder, exist_ok=True)
  for i, data in enumerate(record["frames"]):
    bgr = cv2.cvtColor(cu.decode_frame(data), cv2.COLOR_RGB2BGR)
    cv2.imwrite(os.path.join(folder, names(i)), bgr)
  return folder


def test_spot_scores_a_frame_folder_as_evaluation_scores_the_record(workdir, tmp_path):
  """Lossless crops of the full frame (no face: the centre square) give the evaluation
  path's scores for the same record exactly; the output is a P.json the evaluator takes."""
  record = th.records(1, seed=700, num_frames=37)[0]
  folder = _write_frames(record, str(tmp_path / "v700"))
  cfg = spot.load_config(workdir, None)
  out = tmp_path / "out"
  before = sorted(os.walk(workdir))
  result = spot.spot(cfg, workdir, [folder], str(out), fps=float(record["fps"]),
                     crop_size=32, encoding="png", detector=lambda frame: [],
                     threshold=0.05)  # a corpus that stored 32 px PNG crops
  assert sorted(os.walk(workdir)) == before  # the workdir is only read
  trainer = train.make_trainer(cfg)
  import jax  # pylint: disable=g-import-not-at-top
  with jax.set_mesh(trainer.mesh):
    params, threshold, _ = spot.restore(cfg, workdir, trainer)
    expected, _ = predict.score_videos(trainer, params, sources.VideoIndex([record]), cfg)
  saved = np.load(out / "scores.npz")
  np.testing.assert_allclose(saved["v700"], expected["v700"], rtol=0, atol=1e-6)
  video = result["videos"]["v700"]
  assert video["num_frames"] == 37 and video["face_box"] == [0, 0, 32, 32]
  assert result["threshold"] == 0.05 != threshold  # --threshold overrides the chosen one
  annotations = sources.VideoIndex([record]).to_annotations()
  on_disk = json.loads((out / "predictions.json").read_text())
  assert on_disk["videos"]["v700"]["intervals"] == video["intervals"]
  metrics.evaluate(annotations, on_disk)  # valid SPEC §5 predictions for that video
  for iv in video["intervals"]:
    assert iv["onset_s"] == pytest.approx(iv["onset"] / float(record["fps"]), abs=1e-4)
  assert (out / "v700.png").stat().st_size > 0


def test_other_decoding_settings_warn_that_the_threshold_was_not_chosen_for_them(
    workdir, tmp_path, capsys):
  record = th.records(1, seed=701, num_frames=12)[0]
  folder = _write_frames(record, str(tmp_path / "v701"))
  cfg = spot.load_config(workdir, None)
  kw = dict(fps=float(record["fps"]), crop_size=32, encoding="png",
            detector=lambda frame: [])
  spot.spot(cfg, workdir, [folder], str(tmp_path / "o1"), **kw)
  assert "WARNING" not in capsys.readouterr().out  # the run's own settings
  cfg.eval.iou = 0.3
  spot.spot(cfg, workdir, [folder], str(tmp_path / "o2"), **kw)
  out = capsys.readouterr().out
  assert "eval.iou 0.5 -> 0.3 (--config): the threshold" in out and "give --threshold" in out
  spot.spot(cfg, workdir, [folder], str(tmp_path / "o3"), threshold=0.4, **kw)
  assert "WARNING" not in capsys.readouterr().out  # a threshold given for them


def test_a_run_trained_on_more_devices_is_spotted_on_this_machines(workdir, tmp_path,
                                                                   capsys):
  """A run trained with FSDP over 2 devices (its config.json's mesh) was a sharding
  ValueError traceback on a machine of 1: spot now puts its devices on the data axis."""
  import jax  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 1
  record = th.records(1, seed=705, num_frames=12)[0]
  folder = _write_frames(record, str(tmp_path / "v705"))
  kw = dict(fps=float(record["fps"]), crop_size=32, encoding="png",
            detector=lambda frame: [])
  cfg = spot.load_config(workdir, None)
  expected = spot.spot(cfg, workdir, [folder], str(tmp_path / "o1"), **kw)
  capsys.readouterr()
  cfg.mesh.data, cfg.mesh.fsdp = 1, 2
  result = spot.spot(cfg, workdir, [folder], str(tmp_path / "o2"), **kw)
  assert "the run's mesh does not fit here" in capsys.readouterr().out
  assert result["videos"] == expected["videos"]
  assert cfg.mesh.fsdp == 2  # the caller's config is left as it was


def test_a_given_config_is_checked_as_a_run_checks_it(workdir, tmp_path):
  cfg = spot.load_config(workdir, None)
  cfg.eval.iou = 0.0
  with pytest.raises(spot.SpotError, match=r"--config.eval.iou=0.0: must be"):
    spot.load_config(workdir, cfg)


def test_spot_reads_a_video_file(workdir, tmp_path):
  path = str(tmp_path / "talk.avi")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (48, 40))
  for i in range(30):
    writer.write(np.full((40, 48, 3), 4 * i, np.uint8))
  writer.release()
  result = spot.spot(spot.load_config(workdir, None), workdir, [path], str(tmp_path / "o"))
  best = json.loads((pathlib.Path(workdir) / "metrics.json").read_text())["validation"]
  assert result["threshold"] == best["threshold"]  # chosen on validation for the checkpoint
  video = result["videos"]["talk"]
  assert (video["num_frames"], video["fps"]) == (30, 25.0)  # the container's rate
  assert video["face_box"] == [4, 0, 44, 40]  # no face: the centre square
  assert np.load(tmp_path / "o/scores.npz")["talk"].shape == (30, 1)
  (video,) = spot.open_videos([path], fps=200.0)  # a high-speed recording saved at 25
  assert video.fps == 200.0


def test_a_second_run_into_one_out_leaves_only_its_own_plots(workdir, tmp_path):
  cfg, out = spot.load_config(workdir, None), str(tmp_path / "out")
  kw = dict(fps=30.0, crop_size=32, encoding="png", detector=lambda frame: [])
  for name, seed in (("take.1", 710), ("take.2", 711)):  # folder names keep their dots
    _write_frames(th.records(1, seed=seed, num_frames=20)[0], str(tmp_path / name))
  spot.spot(cfg, workdir, [str(tmp_path / "take.1"), str(tmp_path / "take.2")], out, **kw)
  assert sorted(os.listdir(out)) == ["predictions.json", "scores.npz", "take.1.png",
                                     "take.2.png"]
  spot.spot(cfg, workdir, [str(tmp_path / "take.2")], out, **kw)
  assert sorted(os.listdir(out)) == ["predictions.json", "scores.npz", "take.2.png"]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no second filesystem to link to")
def test_out_linked_to_another_filesystem(workdir, tmp_path):
  import tempfile  # pylint: disable=g-import-not-at-top
  target = tempfile.mkdtemp(dir="/dev/shm")
  try:
    os.symlink(target, tmp_path / "link")
    _write_frames(th.records(1, seed=712, num_frames=20)[0], str(tmp_path / "v"))
    spot.spot(spot.load_config(workdir, None), workdir, [str(tmp_path / "v")],
              str(tmp_path / "link"), fps=30.0, detector=lambda frame: [])
    assert sorted(os.listdir(target)) == ["predictions.json", "scores.npz", "v.png"]
  finally:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(target, ignore_errors=True)


def test_open_videos_orders_frames_by_number_and_checks_inputs(tmp_path):
  record = th.records(1, seed=701, num_frames=12)[0]
  folder = _write_frames(record, str(tmp_path / "clip"), names=lambda i: f"clip_{i + 1}.png")
  (video,) = spot.open_videos([folder], fps=30.0)
  frames = list(video.frames())
  assert len(frames) == 12 and video.video_id == "clip"
  np.testing.assert_array_equal(frames[9], cu.decode_frame(record["frames"][9]))  # 10 > 9
  with pytest.raises(spot.SpotError, match="clip: a folder of frames has no frame rate"):
    spot.open_videos([folder])
  with pytest.raises(spot.SpotError, match="also that of"):
    spot.open_videos([folder, folder], fps=30.0)
  (tmp_path / "clip" / "cover.png").write_bytes(b"")
  with pytest.raises(spot.SpotError, match="cover.png: a frame image without a frame number"):
    spot.open_videos([folder], fps=30.0)
  with pytest.raises(spot.SpotError, match="nowhere.mp4: no such video"):
    spot.open_videos([str(tmp_path / "nowhere.mp4")])
  with pytest.raises(spot.SpotError, match="clip_1.png: one image; pass the folder"):
    spot.open_videos([os.path.join(folder, "clip_1.png")])
  videos = tmp_path / "recordings"  # a folder of video files, given as one video
  videos.mkdir()
  for name in ("s01.mp4", "s02.mp4", "s03.avi", "s04.mov"):
    (videos / name).write_bytes(b"")
  with pytest.raises(spot.SpotError, match=r"recordings: no frame images .* in this folder; "
                     r"it holds s01.mp4, s02.mp4, s03.avi, \.\.\.: give each video file "
                     "its own --video"):
    spot.open_videos([str(videos)])


def test_frame_folders_skip_dotfiles_and_warn_about_gaps(tmp_path, capsys):
  record = th.records(1, seed=702, num_frames=6)[0]
  folder = _write_frames(record, str(tmp_path / "gappy"),
                         names=lambda i: f"f{i + 1 + (i >= 3) * 2}.png")  # no f4, f5
  (tmp_path / "gappy" / "._f1.png").write_bytes(b"\0\0")  # macOS metadata, not a frame
  (video,) = spot.open_videos([folder], fps=30.0)
  assert video.num_frames == 6
  assert "2 frame number(s) missing (4, 5)" in capsys.readouterr().out
  stamps = _write_frames(record, str(tmp_path / "stamps"),  # microsecond timestamps
                         names=lambda i: f"{1701234567000000 + 33333 * i}.png")
  (video,) = spot.open_videos([stamps], fps=30.0)
  assert video.num_frames == 6
  assert "166660 frame number(s) missing (1701234567000001, " in capsys.readouterr().out


def test_a_variable_frame_rate_file_is_warned_about(tmp_path, capsys):
  """A VFR file's frames were scored and timed (onset_s) as evenly spaced at its average
  rate without a word: here frames 40 ms apart, then 120 ms apart, 0.85 s off mid-video."""
  ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
  lines = []
  for i in range(40):
    cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((40, 48, 3), 5 * i, np.uint8))
    lines.append(f"file 'f{i}.png'\nduration {0.04 if i < 20 else 0.12}\n")
  (tmp_path / "list.txt").write_text("".join(lines) + "file 'f39.png'\n")
  for name, rate in (("vfr.mp4", ["-fps_mode", "vfr"]), ("cfr.mp4", ["-fps_mode", "cfr",
                                                                   "-r", "25"])):
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-f", "concat", "-safe", "0", "-i",
                    str(tmp_path / "list.txt"), *rate, "-c:v", "libx264", "-pix_fmt",
                    "yuv420p", str(tmp_path / name)], check=True)
  (video,) = spot.open_videos([str(tmp_path / "vfr.mp4")])
  spot.face_record(video, 32, "png", detector=lambda frame: [])
  out = capsys.readouterr().out
  assert "vfr.mp4: WARNING: variable frame rate (frames 40.0 to 120.0 ms apart)" in out
  (video,) = spot.open_videos([str(tmp_path / "cfr.mp4")])  # the same, re-encoded at 25
  spot.face_record(video, 32, "png", detector=lambda frame: [])
  assert "variable frame rate" not in capsys.readouterr().out


def test_a_frame_of_another_size_is_named(tmp_path):
  record = th.records(1, seed=703, num_frames=20)[0]
  folder = _write_frames(record, str(tmp_path / "mixed"))
  cv2.imwrite(os.path.join(folder, "img13.png"), np.zeros((40, 48, 3), np.uint8))
  (video,) = spot.open_videos([folder], fps=30.0)
  with pytest.raises(spot.SpotError, match=r"img13\.png: frame is 48x40 pixels, but "
                     r"img1\.png of the same video is 32x32"):
    spot.face_record(video, 32, "png", detector=lambda frame: [])


@pytest.mark.parametrize("builder_config, expected", [
    (None, (112, "jpeg")), ("png112", (112, "png")), ("crop224", (224, "jpeg"))])
def test_crops_are_cut_as_the_runs_corpus_stored_them(builder_config, expected):
  from configs import wdmd  # pylint: disable=g-import-not-at-top
  cfg = wdmd.get_config()
  cfg.dataset.builder_config = builder_config
  assert cfg.model.image_size == 224  # upsampled from the stored crops in training
  assert spot.stored_crops(cfg)[:2] == expected


def test_the_face_box_is_found_as_the_runs_corpus_found_it(tmp_path, monkeypatch):
  """A corpus config's face_sample/face_margin were not used: spot cut with the defaults
  (16 frames, 0.2), another crop than training saw."""
  import types  # pylint: disable=g-import-not-at-top
  from configs import wdmd  # pylint: disable=g-import-not-at-top
  from meldae_jax.data import corpus_utils  # pylint: disable=g-import-not-at-top
  wide = corpus_utils.CorpusConfig(name="wide", size=64, encoding="png", face_sample=4,
                                   face_margin=0.5)
  monkeypatch.setattr(corpus_utils, "builder_class",
                      lambda name: types.SimpleNamespace(BUILDER_CONFIGS=[wide]))
  crops = spot.stored_crops(wdmd.get_config())
  assert crops == (64, "png", 4, 0.5)
  record = th.records(1, seed=704, num_frames=12)[0]
  (video,) = spot.open_videos([_write_frames(record, str(tmp_path / "v"))], fps=30.0)
  seen = []
  face = lambda frame: (seen.append(1), [(11, 11, 10, 10)])[1]  # x, y, w, h (32x32 frames)
  _, box = spot.face_record(video, 32, "png", detector=face,
                            face_sample=crops.face_sample, face_margin=crops.face_margin)
  _, default_box = spot.face_record(video, 32, "png", detector=face)
  assert len(seen) == 4 + min(16, 12)  # frames sampled for each box
  assert box[2] - box[0] == 20 and default_box[2] - default_box[0] == 14  # 10 (1 + 2m)


def test_scores_of_videos_named_like_numpy_arguments(tmp_path):
  scores = {"file": np.zeros((3, 1)), "allow_pickle": np.ones((2, 1)), "v": np.ones((1, 2))}
  predict.write_scores(str(tmp_path / "s.npz"), scores)
  with np.load(tmp_path / "s.npz") as z:
    assert sorted(z.files) == sorted(scores)
    for name, array in scores.items():
      np.testing.assert_array_equal(z[name], array)


def test_out_and_workdir_are_checked_first(tmp_path):
  (tmp_path / "taken").write_text("a file")
  with pytest.raises(spot.SpotError, match="taken: --out is a file"):
    spot.spot(th.tiny_config(), str(tmp_path), [], str(tmp_path / "taken"))
  with pytest.raises(spot.SpotError, match="nowhere: no such workdir"):
    spot.spot(th.tiny_config(), str(tmp_path / "nowhere"), [], str(tmp_path / "o"))
  assert not (tmp_path / "nowhere").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("options, words", [
    (dict(fps=-5.0), "--fps=-5: must be > 0"),
    (dict(fps=0.0), "--fps=0: must be > 0"),
    (dict(threshold=1.5), "--threshold=1.5: must be in (0, 1)"),
    (dict(threshold=0.0, crop_size=0), "--threshold=0: must be in (0, 1); --crop_size=0"),
])
def test_bad_options_are_named_before_anything_is_read(tmp_path, options, words):
  with pytest.raises(spot.SpotError) as e:
    spot.spot(th.tiny_config(), str(tmp_path / "nowhere"), [str(tmp_path / "v.avi")],
              str(tmp_path / "o"), **options)
  assert words in str(e.value)
  assert not (tmp_path / "o").exists()


def _fold_run(d):
  (d / "config.json").write_text(json.dumps(th.tiny_config().to_dict()))
  (d / "fold_s01").mkdir()


@pytest.mark.parametrize("make_workdir, words", [
    (lambda d: None, "config.json: missing"),
    (lambda d: (d / "config.json").write_text(json.dumps(th.tiny_config().to_dict())),
     "no checkpoint"),
    (_fold_run, "leave-one-subject-out run: pass a fold's folder"),
    # what `meldae_jax.loso` leaves: folds and loso_metrics.json, no config.json of its own
    (lambda d: ((d / "fold_s01").mkdir(), (d / "loso_metrics.json").write_text("{}")),
     "leave-one-subject-out run: pass a fold's folder"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, make_workdir, words):
  wd = tmp_path / "wd"
  wd.mkdir()
  make_workdir(wd)
  video = str(tmp_path / "v.avi")
  writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (32, 32))
  for _ in range(5):
    writer.write(np.zeros((32, 32, 3), np.uint8))
  writer.release()
  proc = subprocess.run(
      [sys.executable, "-m", "meldae_jax.spot", f"--workdir={wd}", f"--video={video}",
       f"--out={tmp_path / 'out'}"], cwd=th.ROOT, capture_output=True, text=True,
      timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and words in errors[0], proc.stderr[-2000:]
  assert not (tmp_path / "out").exists()
  assert not {"checkpoints", "best"} & set(os.listdir(wd))  # nothing created in the workdir


def test_the_plot_draws_the_track_the_decoder_thresholds(tmp_path, monkeypatch):
  """With eval.smooth_seconds the intervals come from the smoothed scores: the plot's solid
  line is that track (a raw track that crossed the threshold in single-frame spikes drew
  a plot whose line crossed it where no interval was spotted)."""
  from matplotlib import axes  # pylint: disable=g-import-not-at-top
  drawn = []
  real_plot = axes.Axes.plot
  def recording_plot(self, *args, **kwargs):
    drawn.append((kwargs.get("label"), kwargs.get("alpha"), np.asarray(args[1])))
    return real_plot(self, *args, **kwargs)
  monkeypatch.setattr(axes.Axes, "plot", recording_plot)
  scores = np.full((60, 1), 0.3, np.float32)
  scores[10::4, 0] = 0.7  # spikes over 0.5 that smoothing (0.1 s at 30 fps) flattens
  scores[40:48, 0] = 0.9  # one expression
  found = predict.make_predictions({"v": scores}, {"videos": {"v": {"fps": 30.0}}},
                                   ("micro",), 0.5, {"smooth_seconds": 0.1})
  intervals = found["videos"]["v"]["intervals"]
  assert len(intervals) == 1 and 36 <= intervals[0]["onset"] <= 40  # not at the spikes
  spot.plot(str(tmp_path / "v.png"), scores, 30.0, ("micro",), 0.5, intervals, "v",
            smooth_seconds=0.1)
  solid = [y for label, alpha, y in drawn if alpha is None]
  assert len(solid) == 1
  above = np.flatnonzero(solid[0] >= 0.5)  # one run, exactly the spotted interval
  assert above.tolist() == list(range(intervals[0]["onset"], intervals[0]["offset"] + 1))
  assert (tmp_path / "v.png").stat().st_size > 0


def test_the_plot_spans_the_last_frame(tmp_path, monkeypatch):
  """The time axis ends at the last frame's end (len / fps): it ended at its start, and
  an interval on the last frames lost its last frame's span."""
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  figures, real_close = [], plt.close
  monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig) or real_close(fig))
  scores = np.full((30, 1), 0.9, np.float32)
  spot.plot(str(tmp_path / "v.png"), scores, 10.0, ("micro",), 0.5,
            [{"onset": 20, "offset": 29, "type": "micro"}], "v")
  assert figures[0].axes[0].get_xlim() == pytest.approx((0.0, 3.0))


def test_only_process_0_writes_the_outputs(tmp_path, monkeypatch):
  # Every process of a multi-process run has all the scores; the others writing the plots
  # (and removing an earlier run's) into one OUT raced with process 0.
  out = tmp_path / "out"
  out.mkdir()
  (out / "old.png").write_bytes(b"an earlier run's plot")
  (out / "predictions.json").write_text(json.dumps({"videos": {"old": {}}}))
  video = spot.Video(path="v", video_id="v", fps=30.0, frames=list, num_frames=4)
  result = {"videos": {"v": {"intervals": []}}}
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  spot._write(str(out), result, {"v": np.zeros((4, 1))}, [video], ("micro",), 0.5)
  assert sorted(os.listdir(out)) == ["old.png", "predictions.json"]


def test_only_the_frames_the_model_reads_are_cut(tmp_path, monkeypatch):
  # With dataset.frame_step 3 the model reads frames 0, 3, 6, ...: the others were cut and
  # encoded for nothing (7x the work at SAMM's step).
  folder = _write_frames(th.records(1, seed=704, num_frames=10)[0], str(tmp_path / "v"))
  (video,) = spot.open_videos([folder], fps=30.0)
  cut = []
  crop = spot.face_crop.crop_and_resize
  monkeypatch.setattr(spot.face_crop, "crop_and_resize",
                      lambda *a, **k: cut.append(1) or crop(*a, **k))
  record, _ = spot.face_record(video, 32, "png", detector=lambda frame: [], frame_step=3)
  assert len(record["frames"]) == 10 and len(cut) == 4
  assert [bool(f) for f in record["frames"]] == [i % 3 == 0 for i in range(10)]
  full, _ = spot.face_record(video, 32, "png", detector=lambda frame: [])
  assert record["frames"][::3] == full["frames"][::3]


def test_a_frame_folder_reads_only_the_images_it_cuts(tmp_path, monkeypatch):
  # With dataset.frame_step 7 (SAMM's) every image of a folder was still read and decoded
  # (2040x1088 JPEGs there) to be skipped: 7x the reading.
  folder = _write_frames(th.records(1, seed=706, num_frames=40)[0], str(tmp_path / "v"))
  (video,) = spot.open_videos([folder], fps=200.0)
  read = []
  real_read = cu.read_rgb
  monkeypatch.setattr(cu, "read_rgb", lambda path: read.append(path) or real_read(path))
  record, _ = spot.face_record(video, 32, "png", detector=lambda frame: [], frame_step=7)
  assert len(record["frames"]) == 40
  assert len(read) == 16 + 6  # the face box's 16 sampled images, then frames 0, 7, ..., 35


def test_the_face_box_warnings_name_the_video(tmp_path, caplog):
  # Without a face the crop is the centre square, with a warning on stderr: it named no
  # video, so with several videos it could not be told which one was cropped blind.
  folder = _write_frames(th.records(1, seed=705, num_frames=6)[0], str(tmp_path / "take 3"))
  (video,) = spot.open_videos([folder], fps=30.0)
  with caplog.at_level("WARNING", logger="meldae_jax.data.face_crop"):
    spot.face_record(video, 32, "png", detector=lambda frame: [])
  (warning,) = [r.getMessage() for r in caplog.records if "no face found" in r.getMessage()]
  assert warning.startswith(f"{folder}: no face found in 6 sampled frames")


def test_a_file_cut_short_is_warned_about(tmp_path, capsys):
  """A file whose end is missing (a half-copied download) decodes fewer frames than its
  container says: it was spotted as a shorter video without a word."""
  path = str(tmp_path / "whole.avi")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (48, 40))
  for i in range(60):
    writer.write(np.full((40, 48, 3), 4 * i, np.uint8))
  writer.release()
  data = pathlib.Path(path).read_bytes()
  (tmp_path / "cut.avi").write_bytes(data[:len(data) // 2])
  (video,) = spot.open_videos([path])
  spot.face_record(video, 32, "png", detector=lambda frame: [])
  assert video.num_frames == 60 and "WARNING" not in capsys.readouterr().out
  (video,) = spot.open_videos([str(tmp_path / "cut.avi")])
  spot.face_record(video, 32, "png", detector=lambda frame: [])
  assert 0 < video.num_frames < 40
  assert (f"cut.avi: WARNING: the file says 60 frames, {video.num_frames} could be decoded "
          "(truncated or damaged?)") in capsys.readouterr().out


def test_cut_short_tells_a_missing_end_from_a_variable_rate():
  # 300 frames at 30 fps said, 85 decoded, timed up to 2.8 s: cut short.
  assert spot.cut_short(85, [i * 1000 / 30 for i in range(85)], (300.0, 30.0))
  assert spot.cut_short(85, None, (300.0, 30.0))  # no timestamps: the count alone
  assert not spot.cut_short(298, None, (300.0, 30.0))  # an estimate a little off
  assert not spot.cut_short(85, None, None)  # no count (a raw stream's is garbage)
  # A VFR file's count estimate (3.24 s x 25 fps = 81) its 41 frames fall short of, timed
  # to the end (20 frames 40 ms apart, 20 frames 120 ms apart).
  times = [40.0 * i for i in range(21)] + [800.0 + 120.0 * i for i in range(1, 21)]
  assert not spot.cut_short(41, times, (81.0, 25.0))


def test_long_work_reports_progress(workdir, tmp_path, capsys, monkeypatch):
  """A long video is read twice and scored for minutes (a 30-minute 1080p recording read
  at about 45 frames/s here): the reading and the scoring report how far they are (they
  printed nothing between 'cutting crops...' and the end)."""
  path = str(tmp_path / "long take.avi")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (48, 40))
  for i in range(30):
    writer.write(np.full((40, 48, 3), 4 * i, np.uint8))
  writer.release()
  cfg = spot.load_config(workdir, None)
  spot.spot(cfg, workdir, [path], str(tmp_path / "o1"), detector=lambda frame: [])
  assert " of " not in capsys.readouterr().out  # a short video: no progress lines
  monkeypatch.setattr(spot, "PROGRESS_SECONDS", 0.0)
  spot.spot(cfg, workdir, [path], str(tmp_path / "o2"), detector=lambda frame: [])
  out = capsys.readouterr().out
  assert "[spot] long take: 29 frames read for the face box" in out
  assert "[spot] long take: 29 of 30 frames cut" in out
  windows = len(pipeline.eval_window_table(sources.VideoIndex(th.records(1, num_frames=30)),
                                           int(cfg.dataset.window), int(cfg.eval.stride)))
  assert windows > cfg.eval.batch_size  # two batches: a line after the first
  assert f"[spot] long take: {cfg.eval.batch_size} of {windows} windows scored" in out
  assert f"{windows} of {windows}" not in out  # not for the end: the next line says it
