"""Checkpoints: exact resume (state + data iterator), SIGTERM, non-finite loss guard."""
import json
import os
import pathlib
import shutil
import signal
import threading
import time

import jax
import numpy as np
import pytest

import train_helpers as th
from meldae_jax import checkpointing
from meldae_jax import train


compilation_cache = th.compilation_cache_fixture()


@pytest.fixture(scope="module")
def data():
  # Training data only (no val/test): these tests are about the training loop.
  return th.splits(n_train=3, n_val=0, n_test=0, num_frames=24)


def _cfg(**overrides):
  kw = dict(total_steps=4, log_every=1, eval_every=0)
  kw.update(overrides)
  cfg = th.tiny_config(**kw)
  # Shuffled windows + augmentation: a resume that restarted the iterator would see
  # different batches.
  cfg.dataset.augment = True
  return cfg


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
  """4 steps in one go (checkpoints at 2 and 4): the reference of the resume tests."""
  workdir = tmp_path_factory.mktemp("full")
  r = train.train_and_evaluate(_cfg(**{"checkpoint.every_steps": 2}), str(workdir),
                               splits=data)
  assert r["status"] == "done"
  return str(workdir)


def _final_params(workdir, cfg):
  trainer = train.make_trainer(cfg)
  with jax.set_mesh(trainer.mesh):
    ckpt = checkpointing.Checkpointer(workdir)
    step = ckpt.latest_step()
    state = ckpt.restore(trainer.abstract_state)
    ckpt.close()
  return step, jax.device_get(state.params)


def test_stop_and_resume_is_exact(tmp_path, data, uninterrupted):
  cfg = _cfg(**{"checkpoint.every_steps": 2})
  part = tmp_path / "part"
  r = train.train_and_evaluate(_cfg(**{"checkpoint.every_steps": 100, "debug.stop_at_step": 1}),
                               str(part), splits=data)
  assert r["status"] == "preempted" and r["step"] == 1
  assert checkpointing.Checkpointer(str(part)).latest_step() == 1
  r = train.train_and_evaluate(cfg, str(part), splits=data)  # resumes at step 1
  assert r["status"] == "done"

  step_a, a = _final_params(uninterrupted, cfg)
  step_b, b = _final_params(str(part), cfg)
  assert step_a == step_b == 4
  jax.tree.map(np.testing.assert_array_equal, a, b)
  lines = (part / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines] == [1, 2, 3, 4]
  # metrics.json's train_seconds timed the resumed segment only, and says so
  assert json.loads((part / "metrics.json").read_text())["train_start_step"] == 1
  assert json.loads((pathlib.Path(uninterrupted) / "metrics.json").read_text())[
      "train_start_step"] == 0


def test_the_next_batch_is_sent_to_the_devices_while_a_step_runs(tmp_path, data,
                                                                 monkeypatch):
  # The loop fetched a step's metrics before reading the next batch: an accelerator idled
  # while the host stacked and sent each batch. Resuming stays exact (test above).
  events = th.record_transfers(monkeypatch, "loss", "metrics")
  r = train.train_and_evaluate(_cfg(total_steps=3), str(tmp_path / "w"), splits=data)
  assert r["status"] == "done"
  loop = [e for e in events if e in ("batch", "metrics")][:6]
  assert loop == ["batch", "batch", "metrics", "batch", "metrics", "metrics"]


def test_a_batch_that_cannot_be_read_stops_after_the_steps_before_it_saved(tmp_path, data,
                                                                          monkeypatch):
  # The next batch is read during the step before it; its error still comes at its step.
  from meldae_jax.data import sources  # pylint: disable=g-import-not-at-top
  make = train.train_iterator

  class Failing:
    def __init__(self, it):
      self.it, self.n = it, 0

    def __next__(self):
      self.n += 1
      if self.n == 3:
        raise sources.RecordError("video 'v': cannot decode frame 7")
      return next(self.it)

    def get_state(self):
      return self.it.get_state()

  monkeypatch.setattr(train, "train_iterator", lambda *a: Failing(make(*a)))
  workdir = tmp_path / "w"
  with pytest.raises(sources.RecordError, match="frame 7"):
    train.train_and_evaluate(_cfg(**{"checkpoint.every_steps": 1}), str(workdir),
                             splits=data)
  assert checkpointing.Checkpointer(str(workdir)).latest_step() == 2
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines] == [1, 2]


def test_resume_without_iterator_state_differs(tmp_path, data, uninterrupted):
  """The exactness above depends on restoring the iterator: without it, it breaks."""
  cfg = _cfg(**{"checkpoint.every_steps": 2})
  part = tmp_path / "part"
  train.train_and_evaluate(_cfg(**{"checkpoint.every_steps": 100, "debug.stop_at_step": 2}),
                           str(part), splits=data)
  shutil.rmtree(part / "checkpoints" / "2" / "data")  # the resumed run replays batches 1-2
  train.train_and_evaluate(cfg, str(part), splits=data)
  _, a = _final_params(uninterrupted, cfg)
  _, b = _final_params(str(part), cfg)
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b))
  assert max(diffs) > 0


def test_sigterm_saves_and_stops(tmp_path, data):
  cfg = _cfg(total_steps=200, **{"checkpoint.every_steps": 1000})
  workdir = tmp_path / "w"
  handler = signal.getsignal(signal.SIGTERM)

  def send_sigterm_after_first_step():
    deadline = time.time() + 300
    while time.time() < deadline:
      path = workdir / "metrics.jsonl"
      if path.exists() and path.read_text().strip():
        os.kill(os.getpid(), signal.SIGTERM)
        return
      time.sleep(0.05)

  killer = threading.Thread(target=send_sigterm_after_first_step, daemon=True)
  killer.start()
  r = train.train_and_evaluate(cfg, str(workdir), splits=data)
  killer.join()
  assert r["status"] == "preempted"
  assert 1 <= r["step"] < 200
  ckpt = checkpointing.Checkpointer(str(workdir))
  assert ckpt.latest_step() == r["step"]
  assert os.path.isdir(workdir / "checkpoints" / str(r["step"]) / "data")
  assert signal.getsignal(signal.SIGTERM) is handler  # the loop's handler is removed


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data):
  cfg = _cfg(total_steps=6, **{"checkpoint.every_steps": 2, "debug.nan_at_step": 3})
  workdir = tmp_path / "nan"
  with pytest.raises(train.NonFiniteLossError, match=r"at step 3\b") as e:
    train.train_and_evaluate(cfg, str(workdir), splits=data)
  assert "step 2" in str(e.value)  # names the checkpoint that is kept
  ckpt = checkpointing.Checkpointer(str(workdir))
  assert ckpt.latest_step() == 2
  assert sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()) == [2]
  # The kept checkpoint is finite.
  _, params = _final_params(str(workdir), cfg)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_a_run_resumed_after_dying_between_checkpoints_logs_each_step_once(
    tmp_path, data, uninterrupted):
  """A NaN stop at step 4 leaves step 3's record after the checkpoint at 2 (as a hard kill
  does); the resumed run logs step 3 again, which replaces that record."""
  workdir = tmp_path / "w"
  with pytest.raises(train.NonFiniteLossError):
    train.train_and_evaluate(_cfg(**{"checkpoint.every_steps": 2, "debug.nan_at_step": 4}),
                             str(workdir), splits=data)
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 3, "time": 1.0, "train/lo')  # a kill in the middle of a write
  train.train_and_evaluate(_cfg(**{"checkpoint.every_steps": 2}), str(workdir), splits=data)
  steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2, 3, 4]
  assert _records(workdir, "train/loss") == _records(uninterrupted, "train/loss")


def _event_writer_threads():
  return [t for t in threading.enumerate()
          if type(t).__name__ == "_EventLoggerThread" and t.is_alive()]


def test_non_finite_loss_closes_the_tensorboard_writer(tmp_path, data):
  # A writer left open is closed by TensorBoard's atexit hook, which fails at interpreter
  # shutdown ("can't create new thread") after the one-line error.
  before = len(_event_writer_threads())
  cfg = _cfg(total_steps=3, **{"checkpoint.every_steps": 2, "debug.nan_at_step": 2})
  with pytest.raises(train.NonFiniteLossError):
    train.train_and_evaluate(cfg, str(tmp_path / "nan"), splits=data)
  assert len(_event_writer_threads()) == before


def test_checkpoint_of_other_model_settings_is_a_clear_error(tmp_path, data, uninterrupted):
  workdir = tmp_path / "other"
  shutil.copytree(uninterrupted, workdir)
  cfg = _cfg(**{"checkpoint.every_steps": 2})
  cfg.model.scan_blocks = not cfg.model.scan_blocks
  expected = (rf"model\.scan_blocks: checkpoint {not cfg.model.scan_blocks}, "
              rf"now {cfg.model.scan_blocks}")
  with pytest.raises(checkpointing.CheckpointMismatchError, match=expected):
    train.train_and_evaluate(cfg, str(workdir), splits=data)   # resume
  with pytest.raises(checkpointing.CheckpointMismatchError, match=expected):
    train.evaluate_only(cfg, str(workdir), splits=data)
  # The failed resume did not replace the saved settings the message is based on.
  assert json.loads((workdir / "config.json").read_text())["model"]["scan_blocks"] == (
      not cfg.model.scan_blocks)


def test_a_damaged_latest_checkpoint_is_a_clear_error_naming_it(tmp_path, data,
                                                               uninterrupted):
  """A truncated array file (a copy cut short) was orbax's and tensorstore's pages of
  traceback; moving the folder away, as the message says, resumes from the one before."""
  workdir = tmp_path / "damaged"
  shutil.copytree(uninterrupted, workdir)
  files = [p for p in (workdir / "checkpoints" / "4" / "state").rglob("*") if p.is_file()]
  biggest = max(files, key=lambda p: p.stat().st_size)
  with open(biggest, "r+b") as f:
    f.truncate(biggest.stat().st_size // 2)
  folder = workdir / "checkpoints" / "4"
  with pytest.raises(checkpointing.CheckpointReadError,
                     match=rf"checkpoint {folder} cannot be read .*damaged"):
    train.train_and_evaluate(_cfg(**{"checkpoint.every_steps": 2}), str(workdir), splits=data)
  shutil.move(str(folder), str(tmp_path / "moved"))
  r = train.train_and_evaluate(_cfg(**{"checkpoint.every_steps": 2}), str(workdir), splits=data)
  assert r["status"] == "done" and checkpointing.Checkpointer(str(workdir)).latest_step() == 4


def test_failed_final_evaluation_closes_the_tensorboard_writer(tmp_path, data, monkeypatch):
  def broken(*args, **kwargs):
    raise RuntimeError("test split unreadable")
  monkeypatch.setattr(train, "final_evaluation", broken)
  before = len(_event_writer_threads())
  with pytest.raises(RuntimeError, match="unreadable"):
    train.train_and_evaluate(_cfg(total_steps=2), str(tmp_path / "final"), splits=data)
  assert len(_event_writer_threads()) == before


@pytest.fixture(scope="module")
def data_val():
  return th.splits(n_train=3, n_val=1, n_test=1, num_frames=24)


def _records(workdir, prefix):
  out = {}
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    for k, v in r.items():
      if k.startswith(prefix):
        out.setdefault(r["step"], {})[k] = v
  return out


def test_stop_on_a_validation_step_validates_it_on_resume(tmp_path, data_val):
  """The stop saves and leaves before validating; the resumed run validates that step,
  so the best checkpoint and the test result are the straight run's."""
  cfg = _cfg(**{"checkpoint.every_steps": 2, "eval_every": 2})
  straight = train.train_and_evaluate(cfg, str(tmp_path / "straight"), splits=data_val)
  part = tmp_path / "part"
  stop = _cfg(**{"checkpoint.every_steps": 2, "eval_every": 2, "debug.stop_at_step": 2})
  assert train.train_and_evaluate(stop, str(part), splits=data_val)["status"] == "preempted"
  assert 2 not in _records(part, "val/")  # not validated before the stop
  resumed = train.train_and_evaluate(cfg, str(part), splits=data_val)
  assert sorted(_records(part, "val/")) == sorted(_records(tmp_path / "straight", "val/"))
  assert _records(part, "val/") == _records(tmp_path / "straight", "val/")
  for key in ("best_step", "threshold", "tp", "fp", "fn", "acc_me", "acc_state"):
    assert resumed[key] == straight[key], key


def test_a_stop_logs_the_steps_since_the_last_log_line(tmp_path, data):
  straight = tmp_path / "straight"
  train.train_and_evaluate(_cfg(log_every=2), str(straight), splits=data)
  part = tmp_path / "part"
  train.train_and_evaluate(_cfg(log_every=2, **{"debug.stop_at_step": 3}), str(part),
                           splits=data)
  train.train_and_evaluate(_cfg(log_every=2), str(part), splits=data)
  a, b = _records(straight, "train/loss"), _records(part, "train/loss")
  assert sorted(a) == [2, 4] and sorted(b) == [2, 3, 4]
  assert b[2] == a[2]
  mean_3_4 = (b[3]["train/loss"] + b[4]["train/loss"]) / 2  # step 3 is not lost
  assert mean_3_4 == pytest.approx(a[4]["train/loss"], rel=1e-6)


def test_sigterm_in_the_final_validation_stops_cleanly_and_a_rerun_finishes(
    tmp_path, data_val, monkeypatch):
  validate, handler = train.validate, signal.getsignal(signal.SIGTERM)
  cfg = _cfg(total_steps=2, **{"checkpoint.every_steps": 2})

  def preempted_at_the_end(trainer, params, index, step, *args):
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)  # caught: the process lives on
    return validate(trainer, params, index, step, *args)

  monkeypatch.setattr(train, "validate", preempted_at_the_end)
  workdir = tmp_path / "w"
  r = train.train_and_evaluate(cfg, str(workdir), splits=data_val)
  assert r["status"] == "preempted" and r["step"] == 2
  assert not (workdir / "metrics.json").exists()
  assert signal.getsignal(signal.SIGTERM) is handler
  monkeypatch.setattr(train, "validate", validate)
  r = train.train_and_evaluate(cfg, str(workdir), splits=data_val)
  assert r["status"] == "done" and (workdir / "metrics.json").exists()
  assert sorted(_records(workdir, "train/loss")) == [1, 2]  # no step trained again


def test_rerunning_a_finished_run_returns_its_metrics(tmp_path, data_val):
  cfg = _cfg(total_steps=2, **{"checkpoint.every_steps": 2})
  workdir = tmp_path / "w"
  first = train.train_and_evaluate(cfg, str(workdir), splits=data_val)
  lines = (workdir / "metrics.jsonl").read_text()
  again = train.train_and_evaluate(cfg, str(workdir), splits=data_val)
  assert again == json.loads((workdir / "metrics.json").read_text())
  assert again["tp"] == first["tp"] and again["best_step"] == first["best_step"]
  assert (workdir / "metrics.jsonl").read_text() == lines  # nothing validated or logged


def test_total_steps_below_the_latest_checkpoint_is_an_error(tmp_path, data, uninterrupted):
  workdir = tmp_path / "w"
  shutil.copytree(uninterrupted, workdir)
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match="latest checkpoint is at step 4, beyond total_steps 2"):
    train.train_and_evaluate(_cfg(total_steps=2), str(workdir), splits=data)


def test_a_mismatch_from_the_data_settings_names_them(tmp_path, data, uninterrupted):
  workdir = tmp_path / "w"
  shutil.copytree(uninterrupted, workdir)
  cfg = _cfg(**{"checkpoint.every_steps": 2})
  cfg.dataset.window = 8  # the model's T: a command-line override comes after finalize
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"dataset\.window: checkpoint 4, now 8"):
    train.train_and_evaluate(cfg, str(workdir), splits=data)


def test_a_better_value_for_a_step_already_kept_as_best_replaces_it(tmp_path):
  # A run resumed from an older checkpoint (or on a validation step) validates a step a
  # second time; another compile or non-deterministic kernels can score it higher. Orbax
  # refuses to save an existing step: that was a StepAlreadyExistsError on every rerun.
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  old, new = {"w": np.ones(3, np.float32)}, {"w": np.full(3, 2.0, np.float32)}
  assert ckpt.maybe_save_best(10, old, {"f1": 0.3}, 0.3)
  assert not ckpt.maybe_save_best(10, new, {"f1": 0.2}, 0.2)
  assert ckpt.maybe_save_best(10, new, {"f1": 0.5}, 0.5)
  step, metrics = ckpt.best_info()
  assert step == 10 and metrics["__best_value__"] == 0.5 and metrics["f1"] == 0.5
  _, state = ckpt.restore_best({"w": np.zeros(3, np.float32)})
  np.testing.assert_array_equal(state["w"], new["w"])
  ckpt.close()


def test_a_relative_workdir_saves_and_restores(tmp_path, monkeypatch):
  # Orbax wants absolute paths: `--workdir=run` stopped training at its first checkpoint
  # and spot/attention_maps on a relative workdir at the restore ("should be absolute").
  monkeypatch.chdir(tmp_path)
  ckpt = checkpointing.Checkpointer("run")
  state = {"w": np.full(3, 2.0, np.float32)}
  ckpt.save(3, state)
  assert ckpt.maybe_save_best(3, state, {"f1": 0.5}, 0.5)
  ckpt.close()
  reader = checkpointing.Checkpointer("run", read_only=True)
  abstract = {"w": np.zeros(3, np.float32)}
  np.testing.assert_array_equal(reader.restore(abstract)["w"], state["w"])
  np.testing.assert_array_equal(reader.restore_best(abstract)[1]["w"], state["w"])
  reader.close()
  assert (tmp_path / "run" / "checkpoints" / "3").is_dir()


def test_zero_intervals_checkpoint_and_log_at_the_end_only(tmp_path, data):
  # eval_every=0 is "at the end only"; every_steps=0 and log_every=0 were a
  # ZeroDivisionError at the first step.
  cfg = _cfg(total_steps=3, log_every=0, **{"checkpoint.every_steps": 0})
  workdir = tmp_path / "w"
  assert train.train_and_evaluate(cfg, str(workdir), splits=data)["status"] == "done"
  ckpt = checkpointing.Checkpointer(str(workdir))
  assert ckpt._latest.all_steps() == [3]  # pylint: disable=protected-access
  ckpt.close()
  train_steps = [r["step"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text()
                                        .splitlines()) if "train/loss" in r]
  assert train_steps == [3]


def test_the_best_checkpoint_log_names_the_metric_validation_ranked_by(
    tmp_path, monkeypatch, caplog):
  # A validation split that cannot rank by checkpoint.best_metric (no listening MEs for
  # F1_DR) ranks by F1; the INFO line said "New best f1_dr=..." beside "[val] new best
  # f1=...".
  import logging
  import types
  from meldae_jax import predict
  result = {"f1": 0.4, "f1_dr": None, "uf1": 0.4, "precision": 0.5, "recall": 1 / 3,
            "acc_me": 0.5, "acc_state": 0.5, "threshold": 0.3, "threshold_key": "f1",
            "f1_speaking": 0.4, "f1_listening": None}
  monkeypatch.setattr(predict, "evaluate_split", lambda *a, **k: dict(result))
  writer = types.SimpleNamespace(write_scalars=lambda *a, **k: None)
  trainer = types.SimpleNamespace(cfg=None)
  ckpt = checkpointing.Checkpointer(str(tmp_path), best_metric="f1_dr")
  with caplog.at_level(logging.INFO):
    train.validate(trainer, None, object(), 4, writer, ckpt,
                   {"w": np.ones(3, np.float32)})
  ckpt.close()
  assert "New best f1=0.4000 at step 4" in caplog.text
  assert "New best f1_dr" not in caplog.text
