"""End to end on the tiny config: build the tiny synthetic corpus, train, evaluate."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import train_helpers as th
from meldae_jax import loso
from meldae_jax import metrics
from meldae_jax import optim
from meldae_jax import predict
from meldae_jax import train
from meldae_jax.data import sources

ROOT = pathlib.Path(__file__).resolve().parents[1]
compilation_cache = th.compilation_cache_fixture()
SPEC_KEYS = ("tp", "fp", "fn", "precision", "recall", "f1", "f1_speaking", "f1_listening",
             "f1_dr", "uf1", "per_class", "megc2020")


def _evaluate_cli(annotations, predictions):
  proc = subprocess.run(
      [sys.executable, "-m", "meldae_jax.evaluate", "--annotations", str(annotations),
       "--predictions", str(predictions)], cwd=ROOT, capture_output=True, text=True,
      timeout=120)
  assert proc.returncode == 0, proc.stderr
  return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("e2e")
  cfg = th.tiny_config(total_steps=4, log_every=2, eval_every=2)
  cfg.dataset.data_dir = str(root / "tfds")   # not built yet: the tiny corpus is generated
  cfg.eval.thresholds = (0.1, 0.3, 0.5, 0.7, 0.9)
  workdir = root / "work"
  result = train.train_and_evaluate(cfg, str(workdir))
  return cfg, workdir, result


def test_builds_corpus_trains_and_writes_metrics(run):
  cfg, workdir, result = run
  assert (pathlib.Path(cfg.dataset.data_dir) / "synthetic_conversation" / "tiny").is_dir()
  m = json.loads((workdir / "metrics.json").read_text())
  for key in SPEC_KEYS + ("acc_me", "acc_state", "threshold", "best_step", "validation"):
    assert key in m, key
  assert m["split"] == "test"
  assert set(m["megc2020"]) >= {"found", "precision", "recall", "f1"}
  assert 0.0 <= m["acc_me"] <= 1.0 and 0.0 <= m["acc_state"] <= 1.0
  # The test threshold is the one chosen on validation for the best checkpoint.
  assert m["threshold"] == m["validation"]["threshold"] in cfg.eval.thresholds
  assert m["threshold_key"] == m["validation"]["threshold_key"] in ("f1_dr", "f1")
  assert m["best_step"] in (2, 4)
  assert m["num_gt"] > 0  # the tiny test video has micro-expressions
  assert result["f1"] == m["f1"]


def test_metrics_jsonl_and_tensorboard(run):
  _, workdir, _ = run
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_lines = [l for l in lines if "train/loss" in l]
  assert [l["step"] for l in train_lines] == [2, 4]
  assert all(np.isfinite(l["train/loss"]) and l["train/steps_per_sec"] > 0
             for l in train_lines)
  assert any(k.startswith("lr/") for k in train_lines[0])
  assert [l["step"] for l in lines if "val/f1" in l] == [2, 4]
  assert len([l for l in lines if "test/f1" in l]) == 1
  events = list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert events and events[0].stat().st_size > 0


def test_predictions_round_trip_through_evaluate_cli(run):
  _, workdir, _ = run
  m = json.loads((workdir / "metrics.json").read_text())
  cli = _evaluate_cli(workdir / "test_annotations.json", workdir / "test_predictions.json")
  for key in SPEC_KEYS:
    assert cli[key] == m[key], key


def test_evaluate_mode_chooses_the_threshold_again_when_its_settings_changed(
    run, tmp_path, capsys):
  """The threshold is chosen on validation under the decoding in use: --mode=evaluate
  with other candidates (or decoding, IoU) chooses it again, not the trained one."""
  import shutil  # pylint: disable=g-import-not-at-top
  cfg, src, _ = run
  workdir = pathlib.Path(shutil.copytree(src, tmp_path / "work"))
  trained = json.loads((src / "metrics.json").read_text())
  same = train.evaluate_only(cfg, str(workdir))
  assert same["threshold"] == trained["threshold"] and "trained_threshold" not in same
  assert "chosen again" not in capsys.readouterr().out
  other = cfg.copy_and_resolve_references()
  other.eval.thresholds = (0.95,)  # the only candidate: the choice cannot be the trained one
  again = train.evaluate_only(other, str(workdir))
  saved = json.loads((workdir / "metrics.json").read_text())
  assert again["threshold"] == saved["threshold"] == saved["validation"]["threshold"] == 0.95
  assert saved["trained_threshold"] == trained["threshold"] != 0.95
  assert saved["total_steps"] == trained["total_steps"]  # still the training's record
  out = capsys.readouterr().out
  assert "eval.thresholds (0.1, 0.3, 0.5, 0.7, 0.9) -> (0.95,)" in out and "chosen again" in out
  assert train.threshold_settings_change(None, cfg) == []
  assert train.threshold_settings_change(json.loads((src / "config.json").read_text()),
                                         cfg) == []


def test_round_trip_with_predictions(tmp_path):
  """Same check with scores that do produce intervals (a trained model's are arbitrary)."""
  index = th.splits(n_train=2, n_val=0, n_test=0, num_frames=60).train
  classes = ("micro",)
  ann = predict.annotations_for(index, classes)
  scores = {}
  for vid, v in ann["videos"].items():
    s = np.full((v["num_frames"], 1), 0.1)
    for iv in v["intervals"]:
      s[iv["onset"] + 1:iv["offset"] + 2] = 0.9  # off by one frame: still IoU >= 0.5
    s[5:8] = 0.8  # a false positive
    scores[vid] = s
  cfg = th.tiny_config()
  cfg.eval.merge_seconds, cfg.eval.min_seconds, cfg.eval.smooth_seconds = 0, 0.0, 0.0
  preds = predict.make_predictions(scores, ann, classes, 0.5, predict.decode_kwargs(cfg))
  assert sum(len(v["intervals"]) for v in preds["videos"].values()) > 0
  (tmp_path / "a.json").write_text(json.dumps(ann))
  (tmp_path / "p.json").write_text(json.dumps(preds))
  ours = metrics.evaluate(ann, preds)
  assert ours["tp"] > 0 and ours["fp"] > 0
  cli = _evaluate_cli(tmp_path / "a.json", tmp_path / "p.json")
  for key in SPEC_KEYS:
    assert cli[key] == ours[key], key


def test_missing_training_split_is_an_error(tmp_path, capsys):
  """A --config.dataset.train_split the corpus lacks was a ValueError's traceback."""
  from meldae_jax import cli  # pylint: disable=g-import-not-at-top
  cfg = th.tiny_config()
  with pytest.raises(SystemExit) as e, cli.one_line_errors():
    train.train_and_evaluate(cfg, str(tmp_path), splits=train.Splits(train=None))
  assert e.value.code == 2
  assert capsys.readouterr().err.splitlines()[-1] == (
      "error: No training split 'train' in synthetic_conversation "
      "(--config.dataset.train_split)")


def test_a_workdir_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
  """It was FileExistsError's traceback from os.makedirs (main and loso alike)."""
  from meldae_jax import cli  # pylint: disable=g-import-not-at-top
  (tmp_path / "w").write_text("x")
  for run in (train.train_and_evaluate, loso.run):
    with pytest.raises(SystemExit) as e, cli.one_line_errors():
      run(th.tiny_config(), str(tmp_path / "w"), **(
          {"splits": th.splits()} if run is train.train_and_evaluate else
          {"source": th.records(3, subjects=3)}))
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {tmp_path / 'w'}: --workdir is a file, not a folder")


def test_loso_folds_never_use_the_test_subject():
  plan = loso.folds(["c", "a", "b", "d"], num_val=1)
  assert [t for t, _, _ in plan] == ["a", "b", "c", "d"]
  for test, val, trn in plan:
    assert test not in val and test not in trn and not set(val) & set(trn)
    assert sorted([test] + val + trn) == ["a", "b", "c", "d"] and len(val) == 1


def test_loso_pools_counts_over_folds(tmp_path):
  records = th.records(3, seed=300, num_frames=24, subjects=3)
  cfg = th.tiny_config(total_steps=2, log_every=1, eval_every=0)
  cfg.dataset.protocol = "loso"
  cfg.dataset.loso_val_subjects = 1
  out = loso.run(cfg, str(tmp_path), source=records)
  assert out["num_folds"] == 3 and sorted(out["folds"]) == ["s000", "s001", "s002"]
  pooled = out["pooled"]
  for k in ("tp", "fp", "fn"):
    assert pooled[k] == sum(f[k] for f in out["folds"].values())
  assert pooled["megc2020"]["gt"] == sum(f["megc2020"]["gt"] for f in out["folds"].values())
  for key in ("acc_me", "acc_state"):  # over the folds' clips
    correct, clips = (sum(f[f"{key}_clips"][k] for f in out["folds"].values())
                      for k in ("correct", "clips"))
    assert clips > 0 and pooled[key] == correct / clips
  saved = json.loads((tmp_path / "loso_metrics.json").read_text())
  assert saved["pooled"]["fn"] == pooled["fn"]
  # Each fold evaluated only its own subject's video, with a validation-chosen threshold.
  for subject, fold in out["folds"].items():
    assert fold["num_videos"] == 1
    m = json.loads((tmp_path / f"fold_{subject}" / "metrics.json").read_text())
    assert m["validation"] is not None and m["threshold"] == m["validation"]["threshold"]
  # Rerunning skips the finished folds.
  again = loso.run(cfg, str(tmp_path), source=records)
  assert again["pooled"] == pooled


def test_loso_reads_each_record_once_to_split_the_folds(tmp_path, monkeypatch):
  """The folds' indexes come from the whole corpus's, not from reading it 3x a fold."""
  records = th.records(4, seed=301, num_frames=12, subjects=4)
  reads = []

  class Counting:
    def __len__(self):
      return len(records)

    def __getitem__(self, i):
      reads.append(i)
      return records[i]

  seen = []

  def fake_fold(cfg, workdir, splits):
    del cfg, workdir
    seen.append(splits)
    return {"status": "stopped"} if len(seen) == 3 else {"status": "done", **_EMPTY}

  _EMPTY.update(metrics.evaluate({"videos": {}}, {"videos": {}}, 0.5))
  monkeypatch.setattr(train, "train_and_evaluate", fake_fold)
  cfg = th.tiny_config()
  cfg.dataset.loso_val_subjects = 1
  source = Counting()
  assert loso.run(cfg, str(tmp_path), source=source)["status"] == "stopped"
  assert sorted(reads) == list(range(len(records)))  # one pass, for every fold
  for splits in seen:
    for index in (splits.train, splits.val, splits.test):
      direct = sources.VideoIndex(records, subjects=sorted({v.subject for v in index}))
      assert index.indices == direct.indices
      assert [v.video_id for v in index.infos] == [v.video_id for v in direct.infos]
      assert index.source is source and all(
          index.info(i) is v for i, v in zip(index.indices, index.infos))
  test_subjects = [s.test.infos[0].subject for s in seen]
  assert test_subjects == sorted(test_subjects) and len(set(test_subjects)) == 3


_EMPTY = {}


def test_min_seconds_is_converted_at_each_videos_fps():
  """One config, three frame rates: a 4-frame run is 0.16, 0.13 and 0.067 s long."""
  cfg = th.tiny_config()
  cfg.eval.merge_seconds, cfg.eval.min_seconds, cfg.eval.smooth_seconds = 0, 0.1, 0.0
  ann = {"videos": {f"v{int(fps)}": {"num_frames": 30, "fps": fps, "intervals": []}
                    for fps in (25.0, 30.0, 60.0)}}
  run = np.zeros((30, 1))
  run[10:14] = 0.9
  preds = predict.make_predictions({v: run for v in ann["videos"]}, ann, ("micro",), 0.5,
                                   predict.decode_kwargs(cfg))
  assert {v: len(p["intervals"]) for v, p in preds["videos"].items()} == {
      "v25": 1, "v30": 1, "v60": 0}


def test_a_finished_run_without_total_steps_is_finished_at_its_last_checkpoint(tmp_path):
  wd = tmp_path / "fold_s1"
  (wd / "checkpoints" / "2").mkdir(parents=True)
  (wd / "checkpoints" / "4").mkdir()
  (wd / "checkpoints" / "6.orbax-checkpoint-tmp-1").mkdir()  # an unfinished save
  (wd / "metrics.json").write_text(json.dumps({"status": "done", "f1": 0.5}))
  assert train.finished_metrics(str(wd), 4) == {"status": "done", "f1": 0.5}
  assert train.finished_metrics(str(wd), 8) is None  # a rerun with more steps trains on
  (wd / "metrics.json").write_text(json.dumps({"status": "done", "total_steps": 8}))
  assert train.finished_metrics(str(wd), 8) is not None
  assert train.finished_metrics(str(wd), 4) is None


def _loso_eval_config():
  """A tiny LOSO run whose folds predict (one whole-video interval each, IoU 0.42, 0.29
  and 0.5 with their expressions), so that eval.iou changes their counts."""
  cfg = th.tiny_config(total_steps=2, log_every=1, eval_every=0)
  cfg.dataset.protocol, cfg.dataset.loso_val_subjects = "loso", 1
  cfg.eval.thresholds = (0.01,)
  cfg.eval.max_seconds = {"micro": 10.0, "macro": 10.0}
  return cfg


@pytest.fixture(scope="module")
def loso_run(tmp_path_factory):
  """A finished 3-fold LOSO workdir (copied by each test) and its training result."""
  records = th.records(3, seed=300, num_frames=24, subjects=3)
  workdir = tmp_path_factory.mktemp("loso_eval") / "work"
  trained = loso.run(_loso_eval_config(), str(workdir), source=records)
  assert trained["status"] == "done" and trained["pooled"]["fp"] > 0
  return records, workdir, trained


def _copy(src, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  return pathlib.Path(shutil.copytree(src, tmp_path / "work"))


def test_loso_evaluate_reproduces_the_run_then_pools_other_decoding_settings(
    loso_run, tmp_path):
  records, src, trained = loso_run
  workdir = _copy(src, tmp_path)
  cfg = _loso_eval_config()
  same = loso.evaluate(cfg, str(workdir), source=records)
  assert same["pooled"] == trained["pooled"] and same["folds"] == trained["folds"]
  assert same["status"] == "done" and same["folds_to_run"] == []
  # A looser IoU: whole-video predictions that missed become hits.
  cfg.eval.iou = 0.3
  looser = loso.evaluate(cfg, str(workdir), source=records)
  before, after = trained["pooled"], looser["pooled"]
  assert after["tp"] > before["tp"] and after["fp"] < before["fp"]
  assert after["tp"] + after["fn"] == before["tp"] + before["fn"]  # the same expressions
  saved = json.loads((workdir / "loso_metrics.json").read_text())
  assert saved["pooled"] == after and saved["eval"]["iou"] == 0.3  # replaced
  # The pooled figures are the folds' metrics.json (replaced, the threshold as trained)
  # pooled, and those are what a fixed split's --mode=evaluate gives on each fold.
  own = []
  for test, val, trn in loso.folds(["s000", "s001", "s002"], 1):
    fold = workdir / f"fold_{test}"
    m = json.loads((fold / "metrics.json").read_text())
    assert m["iou"] == 0.3 and m["threshold"] == trained["folds"][test]["threshold"]
    assert m["total_steps"] == 2  # the training record is kept: the fold is still done
    index = sources.VideoIndex(records)
    own.append(train.evaluate_only(
        loso.fold_config(cfg, test, val, trn), str(fold), splits=train.Splits(
            train=None, val=index.subset(subjects=val), test=index.subset(subjects=[test]))))
    assert {k: own[-1][k] for k in ("tp", "fp", "fn")} == {
        k: looser["folds"][test][k] for k in ("tp", "fp", "fn")}
  pooled = metrics.pool_results(own)
  pooled.update(metrics.pool_clip_accuracies(own))
  assert pooled == after


def test_loso_evaluate_skips_unfinished_folds_and_says_which_it_pooled(
    loso_run, tmp_path, capsys):
  records, src, trained = loso_run
  workdir = _copy(src, tmp_path)
  (workdir / "fold_s001" / "metrics.json").unlink()
  m = json.loads((workdir / "fold_s002" / "metrics.json").read_text())
  (workdir / "fold_s002" / "metrics.json").write_text(json.dumps({**m, "total_steps": 1}))
  out = loso.evaluate(_loso_eval_config(), str(workdir), source=records)
  said = capsys.readouterr().out
  assert "[loso] fold s001: not finished (no metrics.json): not evaluated" in said
  assert ("[loso] fold s002: finished at total_steps 1, not this config's 2 (pass "
          "--config.total_steps=1 to evaluate it): not evaluated") in said
  assert out["status"] == "partial" and out["folds_to_run"] == ["s001", "s002"]
  assert sorted(out["folds"]) == ["s000"] and out["num_folds"] == 1
  assert out["pooled"]["tp"] == trained["folds"]["s000"]["tp"]
  assert json.loads((workdir / "loso_metrics.json").read_text())["folds_to_run"] == [
      "s001", "s002"]
  # The evaluated fold stays finished at its steps (a longer run trains it on).
  assert train.finished_metrics(str(workdir / "fold_s000"), 2) is not None
  assert train.finished_metrics(str(workdir / "fold_s000"), 4) is None
  # No finished fold: an error, nothing written.
  (workdir / "fold_s000" / "metrics.json").unlink()
  (workdir / "loso_metrics.json").unlink()
  with pytest.raises(FileNotFoundError, match="No fold in .* finished at total_steps 2"):
    loso.evaluate(_loso_eval_config(), str(workdir), source=records)
  assert not (workdir / "loso_metrics.json").exists()


def test_loso_pools_clip_accuracy_over_clips_not_folds(tmp_path, monkeypatch):
  """A 1-clip fold all right and three 9-clip folds all wrong: 1 of 28, not 1/4."""
  def record(vid, subject, n=20):
    return {"video_id": vid, "subject": subject, "fps": 30.0, "frames": [b""] * n,
            "intervals": {"onset": [5], "offset": [10], "apex": [-1], "type": [0]},
            "speaking": [-1] * n}
  source = [record(f"{s}/a", s) for s in ("s1", "s2", "s3", "s4")]

  def fake_fold(cfg, workdir, splits):
    del cfg, workdir
    annotations = splits.test.to_annotations()
    result = metrics.evaluate(annotations, {"videos": {}}, 0.5)
    small = splits.test.infos[0].subject == "s1"
    probs, labels = ([0.9], [1]) if small else ([0.1] * 9, [1] * 9)
    counts = metrics.clip_counts(probs, labels)
    result.update(status="done", acc_me=metrics.accuracy(counts), acc_me_clips=counts)
    return result

  monkeypatch.setattr(train, "train_and_evaluate", fake_fold)
  cfg = th.tiny_config()
  cfg.dataset.loso_val_subjects = 1
  pooled = loso.run(cfg, str(tmp_path), source=source)["pooled"]
  assert pooled["acc_me_clips"] == {"correct": 1, "clips": 28}
  assert pooled["acc_me"] == pytest.approx(1 / 28)
  assert "acc_state" not in pooled  # no fold measured it


def test_a_paper_config_without_model_init_warns(caplog, monkeypatch):
  """The paper's configs fine-tune a pretrained ViT: leaving model_init unset trains it
  from scratch at 1e-5, which a researcher comparing with Table 2 must hear about."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import wdmd  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv("MELDAE_VIT_INIT", raising=False)
  assert wdmd.get_config().model_init_expected
  assert not wdmd.get_config("tiny").model_init_expected
  cfg = th.tiny_config()
  trainer = train.make_trainer(cfg)
  with jax.set_mesh(trainer.mesh):
    state = trainer.init_fn(jax.random.key(0))
    with caplog.at_level("WARNING"):
      train.load_pretrained(cfg, trainer, state)
    assert "model_init is unset" not in caplog.text
    cfg.model_init_expected = True
    with caplog.at_level("WARNING"):
      assert train.load_pretrained(cfg, trainer, state) is state
  assert "model_init is unset: the backbone (Mu/8) trains from scratch" in caplog.text


def test_pretrained_backbone_is_loaded_except_dont_load(tmp_path, capsys):
  import jax  # pylint: disable=g-import-not-at-top
  from meldae_jax import optim  # pylint: disable=g-import-not-at-top
  cfg = th.tiny_config()
  cfg.model.vit_stem = "patch"  # pretrained ViTs have the linear patch embedding
  trainer = train.make_trainer(cfg)
  with jax.set_mesh(trainer.mesh):
    donor = jax.device_get(trainer.init_fn(jax.random.key(1)).params["backbone"])
    flat = {optim.path_name(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(donor)}
    np.savez(tmp_path / "vit.npz", **flat)
    cfg.model_init = str(tmp_path / "vit.npz")
    cfg.dont_load = ("Transformer/encoder_norm/.*",)
    state = trainer.init_fn(jax.random.key(0))
    before = jax.device_get(state.params)
    state = train.load_pretrained(cfg, trainer, state)
    after = jax.device_get(state.params)
  # The two dont_load params are counted as kept at init (the line said 0).
  assert "kept at init: 2 by dont_load, 0 not in the checkpoint" in capsys.readouterr().out
  assert after["backbone"]["embedding"]["kernel"].shape == flat["embedding/kernel"].shape
  np.testing.assert_array_equal(after["backbone"]["embedding"]["kernel"],
                                flat["embedding/kernel"])
  np.testing.assert_array_equal(after["backbone"]["cls"], flat["cls"])
  np.testing.assert_array_equal(
      after["backbone"]["Transformer"]["encoder_norm"]["scale"],
      before["backbone"]["Transformer"]["encoder_norm"]["scale"])  # dont_load
  # Non-backbone parameters are untouched, and the shardings are the state's.
  np.testing.assert_array_equal(after["heads"]["locator"]["out"]["kernel"],
                                before["heads"]["locator"]["out"]["kernel"])
  leaf = state.params["backbone"]["embedding"]["kernel"]
  assert leaf.sharding == trainer.state_shardings.params["backbone"]["embedding"]["kernel"]


def test_input_transform_views():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  video = rng.integers(0, 256, (2, 5, 4, 4, 3), dtype=np.uint8)
  mask = np.ones((2, 5), np.float32)
  mask[1, 3:] = 0  # padding at the end of the second clip
  np.testing.assert_array_equal(train.input_transform(video, mask, "rgb"), video)
  x = video.astype(np.float64)
  diff = np.asarray(train.input_transform(jnp.asarray(video), mask, "diff", gain=0.5))
  want = np.clip(np.round(128 + 0.5 * (x - np.concatenate([x[:, :1], x[:, :-1]], 1))), 0, 255)
  want[1, 3:] = 128
  np.testing.assert_array_equal(diff, want)
  assert diff.dtype == np.uint8 and (diff[:, 0] == 128).all()
  raw = np.asarray(train.input_transform(jnp.asarray(video), mask, "diff", gain=4.0, clip=False))
  want_raw = 128 + 4.0 * (x - np.concatenate([x[:, :1], x[:, :-1]], 1))
  want_raw[1, 3:] = 128
  assert raw.dtype == np.float32 and raw.max() > 255 and raw.min() < 0  # not clipped
  np.testing.assert_allclose(raw, want_raw, rtol=1e-6)
  dev = np.asarray(train.input_transform(jnp.asarray(video), mask, "dev", gain=0.5))
  mean1 = x[1, :3].mean(0)
  np.testing.assert_array_equal(dev[1, :3], np.clip(np.round(128 + 0.5 * (x[1, :3] - mean1)), 0, 255))
  np.testing.assert_array_equal(dev[1, 3:], 128)
  multi = np.asarray(train.input_transform(jnp.asarray(video), mask, "diff124", gain=0.5))
  grey = x.mean(-1)
  for channel, lag in enumerate((1, 2, 4)):
    prev = np.concatenate([np.repeat(grey[:, :1], lag, 1), grey[:, :-lag]], 1)
    want = np.clip(np.round(128 + 0.5 * (grey - prev)), 0, 255)
    want[1, 3:] = 128
    np.testing.assert_array_equal(multi[..., channel], want, err_msg=f"lag {lag}")
  energy = np.asarray(train.input_transform(jnp.asarray(video), mask, "energy124", gain=0.5))
  for channel, lag in enumerate((1, 2, 4)):
    prev = np.concatenate([np.repeat(grey[:, :1], lag, 1), grey[:, :-lag]], 1)
    want = np.clip(np.round(0.5 * np.abs(grey - prev)), 0, 255)
    want[1, 3:] = 0
    np.testing.assert_allclose(energy[..., channel], want, atol=1, err_msg=f"energy lag {lag}")  # .5 ties: float32 grey
  assert (energy[1, 3:] == 0).all() and energy.max() > 0
  with pytest.raises(ValueError, match="Unknown input transform"):
    train.input_transform(video, mask, "flow")


def test_input_transform_compress_keeps_large_motions_apart():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  gain = 10.0
  a = train._log_scale(gain)
  assert a * np.log1p(gain * 255.0 / a) == pytest.approx(127.0, abs=1e-6)
  assert train._log_scale(0.4) == float("inf")  # 0.4 * 255 < 127: nothing saturates
  # One pixel whose grey value steps by d between frames 0 and 1, for several d.
  steps = np.array([0, 1, 3, 10, 30, 100, 200, 255], np.float64)
  video = np.zeros((1, 2, 1, len(steps), 3), np.uint8)
  video[0, 1, 0] = steps[:, None].astype(np.uint8)
  mask = np.ones((1, 2), np.float32)
  plain = np.asarray(train.input_transform(jnp.asarray(video), mask, "diff", gain=gain))
  comp = np.asarray(train.input_transform(jnp.asarray(video), mask, "diff", gain=gain,
                                          compress=True))
  want = np.clip(np.round(128 + a * np.log1p(gain * steps / a)), 0, 255)
  np.testing.assert_array_equal(comp[0, 1, 0, :, 0], want)
  assert comp.dtype == np.uint8 and (comp[0, 0] == 128).all()
  assert (plain[0, 1, 0, 4:, 0] == 255).all()  # linear: 30 grey levels and up all saturate
  assert (np.diff(comp[0, 1, 0, :, 0].astype(int)) > 0).all()  # compressed: still ordered
  assert comp[0, 1, 0, -1, 0] == 255 and comp[0, 1, 0, 1, 0] >= 128 + 8  # ~gain near 0
  # Negative steps mirror positive ones around 128; a low gain stays linear.
  neg = np.asarray(train.input_transform(jnp.asarray(255 - video), mask, "diff", gain=gain,
                                         compress=True))
  np.testing.assert_array_equal(neg[0, 1, 0, :, 0].astype(int) - 128,
                                -(comp[0, 1, 0, :, 0].astype(int) - 128))
  low = [np.asarray(train.input_transform(jnp.asarray(video), mask, "diff", gain=0.4,
                                          compress=c)) for c in (False, True)]
  np.testing.assert_array_equal(low[0], low[1])


def test_input_transform_normalize_is_contrast_invariant():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  base = rng.normal(0, 20, (1, 6, 8, 8, 3))
  mask = np.ones((1, 6), np.float32)
  low = (128 + base).astype(np.float32)
  high = (128 + 2 * base).astype(np.float32)  # same face, twice the contrast
  view = lambda v, n: np.asarray(train.input_transform(  # pylint: disable=g-long-lambda
      jnp.asarray(v), mask, "diff", gain=1.0, normalize=n), np.float64)
  assert np.abs(view(high, False) - view(low, False)).max() > 10  # plain diff: 2x the motion
  np.testing.assert_allclose(view(high, True), view(low, True), atol=1)


def test_input_transform_blur_smooths_noise_not_edges():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  frames = np.full((1, 2, 24, 24, 3), 100.0)
  frames[:, 1, 8:16] = 160.0   # an edge band appears in the second frame
  noisy = frames + rng.normal(0, 4, frames.shape)
  mask = np.ones((1, 2), np.float32)
  view = lambda v, b: np.asarray(train.input_transform(  # pylint: disable=g-long-lambda
      jnp.asarray(v, jnp.float32), mask, "diff", gain=1.0, blur=b), np.float64)
  plain, smooth = view(noisy, 0.0), view(noisy, 1.0)
  flat = np.s_[0, 1, 18:, :]   # no motion there: only noise
  assert smooth[flat].std() < 0.5 * plain[flat].std()
  band = np.s_[0, 1, 10:14, 4:20]
  assert abs(smooth[band].mean() - 188) < 3   # 128 + 60: the moved band keeps its size
  blurred = np.asarray(train._blur(jnp.asarray(noisy, jnp.float32), 1.0))
  ref = ndimage.gaussian_filter(noisy, (0, 0, 1.0, 1.0, 0), truncate=3.0)
  np.testing.assert_allclose(blurred[:, :, 3:-3, 3:-3], ref[:, :, 3:-3, 3:-3], atol=1e-3)


def test_augment_ranges_come_from_the_config():
  from meldae_jax.data import augment  # pylint: disable=g-import-not-at-top
  cfg = th.synthetic.get_config("easy")
  assert train.augment_config(cfg.dataset) == augment.AugmentConfig()
  with cfg.unlocked():
    cfg.dataset.augment_ranges.min_crop = 1.0
    cfg.dataset.augment_ranges.flip_prob = 0.0
  got = train.augment_config(cfg.dataset)
  assert (got.min_crop, got.flip_prob, got.contrast) == (1.0, 0.0, 0.2)
  with cfg.unlocked():
    cfg.dataset.augment = False
  assert train.augment_config(cfg.dataset) is None
  with cfg.unlocked():
    cfg.dataset.augment = True
    cfg.dataset.augment_ranges.rotate = 5.0
  with pytest.raises(TypeError, match="rotate"):
    train.augment_config(cfg.dataset)


def test_four_lag_view_trains_with_a_four_channel_stem():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  video = rng.integers(0, 256, (1, 10, 4, 4, 3), dtype=np.uint8)
  mask = np.ones((1, 10), np.float32)
  view = np.asarray(train.input_transform(jnp.asarray(video), mask, "diff1248", gain=0.5))
  grey = video.astype(np.float64).mean(-1)
  lag8 = grey - np.concatenate([np.repeat(grey[:, :1], 8, 1), grey[:, :-8]], 1)
  assert view.shape == (1, 10, 4, 4, 4)
  np.testing.assert_allclose(view[..., 3], np.clip(np.round(128 + 0.5 * lag8), 0, 255), atol=1)
  short = np.asarray(train.input_transform(jnp.asarray(video[:, :3]), mask[:, :3], "diff1248",
                                           gain=0.5))  # lag 8 > 3 frames: the first frame
  np.testing.assert_allclose(short[..., 3], np.clip(np.round(128 + 0.5 * (
      grey[:, :3] - grey[:, :1])), 0, 255), atol=1)
  cfg = th.tiny_config(**{"input.transform": "diff1248"})
  trainer = train.make_trainer(cfg)
  stem = trainer.abstract_state.params["backbone"]["hmlp_stem"]["dense_0"]["kernel"]
  assert stem.shape[0] == 4 * 4 * 4  # 4x4 pixels x 4 channels (RGB views: 48)
  state = trainer.init_fn(jax.random.key(0))
  b, t, s = cfg.batch_size, cfg.dataset.window, cfg.model.image_size
  batch = dict(video=rng.integers(0, 256, (b, t, s, s, 3), dtype=np.uint8),
               frame_mask=np.ones((b, t), np.float32), labels=np.zeros((b, t, 1), np.float32),
               boundary=np.zeros((b, t, 1), np.float32), speaking=np.zeros((b, t), np.int32),
               me_label=np.zeros((b,), np.float32))
  state, metrics_ = trainer.train_step(state, batch)
  assert np.isfinite(float(metrics_["loss"]))


def test_eval_stride_longer_than_the_window_is_found_before_training():
  cfg = th.tiny_config()
  cfg.eval.stride = cfg.dataset.window + 1
  with pytest.raises(ValueError, match=r"eval.stride 5 must be in 1..dataset.window \(4\)"):
    train.make_trainer(cfg)


def test_loso_folds_must_name_known_subjects_and_finished_folds_still_pool(tmp_path):
  records = th.records(3, seed=310, num_frames=24, subjects=3)
  cfg = th.tiny_config(total_steps=2, log_every=1, eval_every=0)
  cfg.dataset.protocol, cfg.dataset.loso_val_subjects = "loso", 1
  with pytest.raises(ValueError, match=r"--folds \['s15'\]: no such test subject.*s000"):
    loso.run(cfg, str(tmp_path), source=records, only=["s15"])
  assert not (tmp_path / "loso_metrics.json").exists()
  first = loso.run(cfg, str(tmp_path), source=records, only=["s000"])
  assert first["status"] == "partial" and first["folds_to_run"] == ["s001", "s002"]
  second = loso.run(cfg, str(tmp_path), source=records, only=["s001"])
  assert sorted(second["folds"]) == ["s000", "s001"]  # the finished fold pools too
  assert second["folds_to_run"] == ["s002"]


def test_demo_refuses_zero_steps_and_expands_a_tilde_workdir(tmp_path, monkeypatch, capsys):
  from meldae_jax import demo  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as e:
    demo.main(["--steps", "0"])  # was ignored: the full default run
  assert e.value.code == 2 and "--steps must be at least 1" in capsys.readouterr().err
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  seen = {}
  monkeypatch.setattr(train, "open_splits", lambda cfg: seen.update(
      data_dir=cfg.dataset.data_dir) or train.Splits(train=None, val=None, test=None))
  monkeypatch.setattr(train, "train_and_evaluate", lambda cfg, workdir, splits: seen.update(
      workdir=workdir) or {"status": "preempted"})
  demo.main(["--workdir=~/demo", "--no_baseline", "--steps", "1"])
  assert seen == {"workdir": str(tmp_path / "demo" / "run"),
                  "data_dir": str(tmp_path / "demo" / "tensorflow_datasets")}


def test_demo_errors_are_one_line(tmp_path, capsys):
  """A --workdir or --data_dir that is a file were tracebacks (NotADirectoryError,
  build.BuildError)."""
  from meldae_jax import demo  # pylint: disable=g-import-not-at-top
  (tmp_path / "file").write_text("x")
  for args in (["--workdir", str(tmp_path / "file")],
               ["--workdir", str(tmp_path / "w"), "--data_dir", str(tmp_path / "file")]):
    with pytest.raises(SystemExit) as e:
      demo.main(args + ["--no_baseline", "--steps", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err.splitlines()[-1] and "Traceback" not in err


def test_a_preempted_demo_says_so_instead_of_failing_on_missing_metrics(tmp_path, monkeypatch,
                                                                         capsys):
  from meldae_jax import demo  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(train, "open_splits", lambda cfg: th.splits(n_val=0, n_test=0))
  monkeypatch.setattr(train, "train_and_evaluate", lambda cfg, workdir, splits: {
      "status": "preempted", "step": 63, "train_loss": 1.0})
  assert demo.main(["--workdir", str(tmp_path), "--no_baseline", "--steps", "2"]) == 1
  err = capsys.readouterr().err
  assert "Demo stopped at step 63 (preempted)" in err and "from scratch" in err


def test_evaluating_a_missing_workdir_creates_nothing(tmp_path):
  with pytest.raises(FileNotFoundError, match="No workdir"):
    train.evaluate_only(th.tiny_config(), str(tmp_path / "typo"), splits=th.splits())
  assert not (tmp_path / "typo").exists()


def test_loso_rerun_with_more_steps_trains_the_folds_on(tmp_path, monkeypatch):
  """A fold finished at 2 steps is not done for total_steps=4: it must not be pooled as
  if it were (a fixed-split workdir trains on in the same case)."""
  def record(vid, subject, n=20):
    return {"video_id": vid, "subject": subject, "fps": 30.0, "frames": [b""] * n,
            "intervals": {"onset": [5], "offset": [10], "apex": [-1], "type": [0]},
            "speaking": [-1] * n}
  source = [record(f"{s}/a", s) for s in ("s1", "s2", "s3")]
  calls = []

  def fake_fold(cfg, workdir, splits):
    calls.append((splits.test.infos[0].subject, int(cfg.total_steps)))
    result = metrics.evaluate(splits.test.to_annotations(), {"videos": {}}, 0.5)
    result.update(status="done", total_steps=int(cfg.total_steps))
    pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(workdir) / "metrics.json").write_text(json.dumps(result))
    return result

  monkeypatch.setattr(train, "train_and_evaluate", fake_fold)
  cfg = th.tiny_config(total_steps=2)
  cfg.dataset.loso_val_subjects = 1
  loso.run(cfg, str(tmp_path), source=source)
  assert calls == [("s1", 2), ("s2", 2), ("s3", 2)]
  loso.run(cfg, str(tmp_path), source=source)  # same steps: every fold is done
  assert len(calls) == 3
  cfg.total_steps = 4
  out = loso.run(cfg, str(tmp_path), source=source)
  assert calls[3:] == [("s1", 4), ("s2", 4), ("s3", 4)]
  assert out["status"] == "done" and out["num_folds"] == 3


def test_loso_warns_when_a_finished_fold_was_trained_at_another_frame_step(
    tmp_path, monkeypatch, capsys):
  """A finished fold is pooled without a training call, whose frame_step warning was the
  only one: a rerun at another dataset.frame_step pooled the old folds silently."""
  source = [{"video_id": f"{s}/a", "subject": s, "fps": 30.0, "frames": [b""] * 20,
             "intervals": {}, "speaking": [-1] * 20} for s in ("s1", "s2", "s3")]

  def fake_fold(cfg, workdir, splits):
    result = metrics.evaluate(splits.test.to_annotations(), {"videos": {}}, 0.5)
    result.update(status="done", total_steps=int(cfg.total_steps))
    pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(workdir) / "metrics.json").write_text(json.dumps(result))
    (pathlib.Path(workdir) / "config.json").write_text(json.dumps(cfg.to_dict()))
    return result

  monkeypatch.setattr(train, "train_and_evaluate", fake_fold)
  cfg = th.tiny_config(total_steps=2, **{"dataset.frame_step": 3})
  cfg.dataset.loso_val_subjects = 1
  loso.run(cfg, str(tmp_path), source=source)
  loso.run(cfg, str(tmp_path), source=source)  # the same step: nothing to say
  assert "WARNING" not in capsys.readouterr().out
  cfg.dataset.frame_step = 1
  out = loso.run(cfg, str(tmp_path), source=source)
  assert out["num_folds"] == 3
  said = capsys.readouterr().out
  for s in ("s1", "s2", "s3"):
    assert (f"[loso] fold {s}: WARNING: its metrics (trained and evaluated at "
            "dataset.frame_step=3, its config.json) are pooled with this run's at "
            "dataset.frame_step=1") in said
  assert "the model sees" not in said  # the training note: no model runs for these folds


def test_two_evaluated_videos_of_one_id_are_an_error_naming_it_before_training(tmp_path):
  """Scores, annotations and predictions are keyed by video_id: a second video of one id
  silently dropped the first's ground truth from the metrics."""
  def record(subject, onset, n=30):
    return {"video_id": "same", "subject": subject, "fps": 30.0, "frames": [b""] * n,
            "intervals": {"onset": [onset], "offset": [onset + 5], "type": [0]},
            "speaking": [0] * n}
  index = sources.VideoIndex([record("s1", 2), record("s2", 20)])
  with pytest.raises(sources.RecordError, match=r"video 'same': records 0 and 1 have the "
                     r"same video_id"):
    predict.annotations_for(index, ("micro",))
  splits = th.splits(n_train=1, n_val=0, n_test=0)
  splits.test = index
  with pytest.raises(sources.RecordError, match="same video_id"):
    train.train_and_evaluate(th.tiny_config(), str(tmp_path / "w"), splits=splits)
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_a_resume_with_another_total_steps_says_the_learning_rate_jumps():
  # The schedules span the new total_steps: a cosine near its end climbs back up.
  cfg = th.tiny_config(total_steps=100)
  cfg.optimizer.groups, cfg.optimizer.warmup_steps = ((".*", 1e-3),), 0
  cfg.optimizer.end_lr_factor = 0.0
  _, schedules = optim.make_optimizer(cfg.optimizer, 200)
  cfg.total_steps = 200
  note = train.schedule_change({"total_steps": 100}, cfg, schedules, 90)
  assert "total_steps 100 -> 200" in note and "at step 91" in note
  before, after = (float(x) for x in note.split("goes group_0 ")[1].rstrip(".").split(" -> "))
  assert before == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 90 / 100)), rel=1e-2)
  assert after == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 90 / 200)), rel=1e-2)
  assert train.schedule_change({"total_steps": 200}, cfg, schedules, 90) is None
  assert train.schedule_change(None, cfg, schedules, 90) is None


def test_the_logged_grad_norm_leaves_frozen_groups_out():
  # The norm the clip sees: a frozen backbone's gradients are not in it (nor computed).
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  norms = {}
  for name, backbone_lr in (("trained", 1e-3), ("frozen", 0.0)):
    cfg = th.tiny_config()
    cfg.optimizer.groups = (("backbone/.*", backbone_lr), (".*", 1e-3))
    trainer = train.make_trainer(cfg)
    state = trainer.init_fn(jax.random.key(0))
    b, t, s = cfg.batch_size, cfg.dataset.window, cfg.model.image_size
    k = len(cfg.dataset.classes)
    batch = dict(video=np.random.default_rng(1).integers(0, 256, (b, t, s, s, 3), np.uint8),
                 frame_mask=np.ones((b, t), np.float32),
                 labels=np.zeros((b, t, k), np.float32),
                 boundary=np.zeros((b, t, k), np.float32),
                 speaking=np.zeros((b, t), np.int32), me_label=np.zeros((b,), np.float32))
    _, m = trainer.train_step(state, batch)
    norms[name] = float(m["grad_norm"])
  assert 0 < norms["frozen"] < norms["trained"]
  grads = {"backbone": {"k": np.full(3, 4.0)}, "head": {"k": np.full(1, 3.0)}}
  kept = optim.trained_grads(grads, (("backbone/.*", 0.0), (".*", 1.0)))
  assert [float(g[0]) for g in kept] == [3.0]


def test_score_videos_sends_the_next_batch_while_one_runs_and_scores_alike(monkeypatch):
  # score_videos fetched each batch's outputs before reading the next batch: the devices
  # idled while the host stacked and sent every batch.
  import jax  # pylint: disable=g-import-not-at-top
  cfg = th.tiny_config()
  index = sources.VideoIndex(th.records(2, num_frames=40))
  trainer = train.make_trainer(cfg)
  with jax.set_mesh(trainer.mesh):
    params = trainer.init_fn(jax.random.key(0)).params
    ref = predict.pipeline.ScoreAverager(index)
    me = []
    for batch in predict.eval_batches(trainer, index, cfg):  # one batch at a time
      out = jax.device_get(trainer.eval_step(params, batch))
      ref.add(out, out["loc"])
      me.append(np.asarray(out["me"])[np.asarray(out["batch_valid"]) > 0])
    events = th.record_transfers(monkeypatch, "loc", "outputs")
    scores, clips = predict.score_videos(trainer, params, index, cfg)
  n = events.count("batch")
  assert n >= 3
  assert events == ["batch", "batch"] + ["outputs", "batch"] * (n - 2) + ["outputs"] * 2
  want = ref.result()
  assert scores.keys() == {index.info(vi).video_id for vi in want}
  for vi, track in want.items():
    np.testing.assert_array_equal(scores[index.info(vi).video_id], track)
  np.testing.assert_array_equal(clips["me"], np.concatenate(me))
