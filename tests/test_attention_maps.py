"""`python -m meldae_jax.attention_maps`: the enhancer's attention per frame and group."""
import json
import os
import re

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import train_helpers as th
from configs import casme2
from meldae_jax import attention_maps
from meldae_jax import loso
from meldae_jax import spot
from meldae_jax import train
from meldae_jax.data import corpus_utils
from meldae_jax.data import sources

compilation_cache = th.compilation_cache_fixture()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  wd = tmp_path_factory.mktemp("run")
  cfg = th.tiny_config(total_steps=2, log_every=1, eval_every=2)
  assert train.train_and_evaluate(cfg, str(wd), splits=th.splits(
      n_train=2, n_val=1, n_test=0, num_frames=40))["status"] == "done"
  return str(wd)


def test_a_one_window_video_gets_the_models_own_attention(workdir):
  """A video as long as the window: its frame maps are the model's probabilities for
  that window, averaged over heads and queries, and they sum to 1 over frames and
  regions."""
  cfg = spot.load_config(workdir, None)
  window = int(cfg.dataset.window)
  record = th.records(1, seed=900, num_frames=window)[0]
  index = sources.VideoIndex([record])
  trainer = train.make_trainer(cfg)
  with jax.set_mesh(trainer.mesh):
    params, _, _ = spot.restore(cfg, workdir, trainer)
    maps = attention_maps.frame_maps(trainer, params, index, cfg)["v900"]
    batch = next(iter(attention_maps.pipeline.make_eval_iterator(
        index, window=window, stride=int(cfg.eval.stride), batch_size=1,
        classes=tuple(cfg.dataset.classes), image_size=int(cfg.model.image_size))))
    view = train.input_view(cfg)(batch["video"], batch["frame_mask"])
    out = trainer.model.apply({"params": params}, view, frame_mask=batch["frame_mask"],
                              train=False, return_attention=True)
  g = int(cfg.model.num_regions)
  assert maps.shape == (window, g, g)
  np.testing.assert_allclose(maps, np.asarray(out["attention"])[0].mean((0, 1)),
                             rtol=1e-5, atol=1e-7)
  assert maps.sum() == pytest.approx(1.0, abs=1e-5)


def test_a_video_shorter_than_the_window_has_its_own_uniform_level(workdir):
  """Its attention spreads over its n < T frames: the uniform level is 1 / (n G G), so
  peak_over_uniform is not inflated T / n times by full windows' 1 / (T G G)."""
  cfg = spot.load_config(workdir, None)
  window, g = int(cfg.dataset.window), int(cfg.model.num_regions)
  n = window // 2
  record = th.records(1, seed=902, num_frames=n)[0]
  index = sources.VideoIndex([record])
  trainer = train.make_trainer(cfg)
  with jax.set_mesh(trainer.mesh):
    params, _, _ = spot.restore(cfg, workdir, trainer)
    maps, levels = attention_maps.frame_maps_and_levels(trainer, params, index, cfg)
  assert maps["v902"].sum() == pytest.approx(1.0, abs=1e-5)  # all of it on n frames
  np.testing.assert_allclose(levels["v902"], 1.0 / (n * g * g))
  info = sources.VideoInfo(
      video_id="v", subject="s", fps=30.0, num_frames=n,
      intervals={"onset": np.array([0]), "apex": np.array([0]),
                 "offset": np.array([0]), "type": np.array([0])},
      speaking=np.zeros(n, np.int8))
  flat = {"v": np.full((n, g, g), 1.0 / (n * g * g), np.float32)}
  short = sources.VideoIndex([])
  short.infos = [info]
  summary = attention_maps.summarise(flat, short, 0.0, window,
                                     {"v": np.full(n, 1.0 / (n * g * g))})
  assert summary["ME apex"]["peak_over_uniform"] == pytest.approx(1.0)  # flat: 1x


def test_frame_groups_follow_the_labels():
  info = sources.VideoInfo(
      video_id="v", subject="s", fps=30.0, num_frames=40,
      intervals={"onset": np.array([10, 30]), "apex": np.array([12, -1]),
                 "offset": np.array([14, 33]), "type": np.array([0, 0])},
      speaking=np.array([1] * 20 + [0] * 20, np.int8))
  groups = attention_maps.frame_groups(info, margin=3)
  assert groups["ME apex"].tolist() == [12, 31]  # an unknown apex: the middle frame
  assert groups["speech only"].tolist() == list(range(0, 7)) + list(range(18, 20))
  assert groups["idle"].tolist() == list(range(20, 27)) + list(range(37, 40))


def test_the_margin_is_converted_at_each_videos_fps():
  """0.1 s: 3 frames at 30 fps, 20 at 200; idle frames keep that far from the ME."""
  def info(fps):
    return sources.VideoInfo(
        video_id=f"v{fps}", subject="s", fps=float(fps), num_frames=60,
        intervals={"onset": np.array([10]), "apex": np.array([12]),
                   "offset": np.array([14]), "type": np.array([0])},
        speaking=np.zeros(60, np.int8))
  index = sources.VideoIndex([])
  index.infos = [info(30), info(200)]
  maps = {i.video_id: np.ones((60, 2, 2), np.float32) for i in index.infos}
  summary = attention_maps.summarise(maps, index, 0.1, window=16)
  assert summary["idle"]["frames"] == (60 - len(range(7, 18))) + (60 - len(range(0, 35)))


def test_a_split_without_groups_writes_nothing(workdir, tmp_path):
  cfg = spot.load_config(workdir, None)
  record = dict(th.records(1, seed=901, num_frames=20)[0], speaking=np.full(20, -1, np.int8),
                intervals={"onset": [], "offset": [], "type": []})
  with pytest.raises(attention_maps.AttentionError, match="nothing written"):
    attention_maps.run(cfg, workdir, str(tmp_path / "o"), index=sources.VideoIndex([record]))
  assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_run_writes_maps_figure_and_summary(workdir, tmp_path):
  cfg = spot.load_config(workdir, None)
  index = th.splits(n_train=1, n_val=0, n_test=2, num_frames=60).test
  summary = attention_maps.run(cfg, workdir, str(tmp_path / "o"), index=index)
  saved = json.loads((tmp_path / "o/attention.json").read_text())
  assert saved["groups"] == json.loads(json.dumps(summary))
  g = int(cfg.model.num_regions)
  with np.load(tmp_path / "o/attention.npz") as z:
    assert sorted(z.files) == sorted(v.video_id for v in index.infos)
    assert all(z[k].shape == (60, g, g) for k in z.files)
  for name, group in summary.items():
    if group["frames"]:
      assert np.asarray(group["mean_map"]).shape == (g, g)
      assert sum(group["row_mass"]) == pytest.approx(1.0, abs=1e-3)
  assert (tmp_path / "o/attention.png").stat().st_size > 0
  assert len(saved["rows"]) == g


def test_a_model_without_enhancer_is_refused():
  cfg = th.tiny_config()
  cfg.model.enhancer = False
  with pytest.raises(attention_maps.AttentionError, match="no enhancer"):
    attention_maps.attention_step(train.make_trainer(cfg))


def test_a_loso_folds_splits_are_its_subjects(tmp_path):
  """On `fold_<S>/` of a LOSO run (CAS(ME)^2's layout: one split per subject, none named
  in the config), --split=test is S's videos and validation the held-out subject's; a
  fold saved before its subjects were kept still finds its test subject by its name."""
  cfg = casme2.get_config("tiny")
  cfg.dataset.data_dir = str(tmp_path / "tfds")
  cfg.dataset.loso_val_subjects, cfg.total_steps, cfg.checkpoint.every_steps = 1, 2, 2
  corpus_utils.builder_class("casme2")(
      data_dir=cfg.dataset.data_dir, file_format="array_record").download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=os.path.join(
              corpus_utils.DATASETS_DIR, "casme2", "dummy_data")))
  loso.run(cfg, str(tmp_path / "work"), only=["15"])  # fold 15: validate on 16
  fold = tmp_path / "work/fold_15"

  def videos(split, out):
    attention_maps.run(spot.load_config(str(fold), None), str(fold), str(tmp_path / out),
                       split=split)
    with np.load(tmp_path / out / "attention.npz") as z:
      return sorted(z.files)

  test = videos("test", "test")
  assert test and all(v.startswith("s15/") for v in test)
  val = videos("validation", "val")
  assert val and all(v.startswith("s16/") for v in val)
  old = json.loads((fold / "config.json").read_text())
  del old["dataset"]["loso_fold"]
  (fold / "config.json").write_text(json.dumps(old))
  assert videos("test", "old") == test
  with pytest.raises(loso.FoldError, match="only --split=test is known"):
    videos("validation", "o")


def test_a_frame_step_change_is_noted_as_attention_maps_own(workdir, tmp_path, capsys):
  """The note comes through `spot.restore`: it was prefixed '[spot]'."""
  cfg = spot.load_config(workdir, None)
  cfg.dataset.frame_step = 2
  index = th.splits(n_train=1, n_val=0, n_test=1, num_frames=60).test
  attention_maps.run(cfg, workdir, str(tmp_path / "o"), index=index)
  said = capsys.readouterr().out
  assert "[attention] WARNING: dataset.frame_step is 2" in said and "[spot]" not in said


def test_a_record_breaking_the_schema_is_a_one_line_error(tmp_path, monkeypatch, capsys):
  """`cli.EXIT_CODES` has sources.RecordError; attention_maps' own table lacked it."""
  import types  # pylint: disable=g-import-not-at-top
  bad = dict(th.records(1, seed=902, num_frames=20)[0], fps=0.0)
  monkeypatch.setattr(train, "open_splits", lambda cfg: train.Splits(
      train=None, test=sources.VideoIndex([bad])))
  monkeypatch.setattr(attention_maps, "flags", types.SimpleNamespace(
      FLAGS=types.SimpleNamespace(workdir=str(tmp_path), config=th.tiny_config(),
                                  out=str(tmp_path / "o"), split="test", max_videos=0,
                                  margin_seconds=0.5)))
  with pytest.raises(SystemExit) as exit_info:
    attention_maps.main(["attention_maps"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.splitlines()[-1].startswith(
      "error: video 'v902': fps must be a positive number")
  assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kwargs, words", [
    ({"max_videos": -1}, "--max_videos=-1: must be >= 0"),
    ({"margin_seconds": -0.5}, "--margin_seconds=-0.5: must be >= 0"),
    ({"out": "file"}, "--out is a file, not a folder"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, monkeypatch, kwargs, words):
  """An --out file was FileExistsError's traceback after all the maps; a negative
  --max_videos ran on no video, a negative margin on frames inside MEs."""
  (tmp_path / "file").write_text("x")
  kwargs = dict(kwargs, out=str(tmp_path / kwargs.get("out", "o")))
  monkeypatch.setattr(train, "make_trainer", lambda cfg: pytest.fail("work started"))
  with pytest.raises(attention_maps.AttentionError, match=re.escape(words)):
    attention_maps.run(th.tiny_config(), str(tmp_path), index=th.splits().test, **kwargs)
  assert not (tmp_path / "o").exists()
