"""metrics.jsonl stays one record per step and evaluation across stops and reruns."""
import json
import math
import pathlib
import re
import struct
import time

import pytest

import train_helpers as th
from meldae_jax import checkpointing
from meldae_jax import metric_writers
from meldae_jax import train

compilation_cache = th.compilation_cache_fixture()  # the two training runs share programs


def _lines(tmp_path):
  return [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def _write(tmp_path, records, **kw):
  w = metric_writers.MetricWriter(str(tmp_path), tensorboard=False, **kw)
  for step, scalars in records:
    w.write_scalars(step, scalars)
  w.close()


def test_resume_step_drops_the_records_after_it(tmp_path):
  _write(tmp_path, [(s, {"train/loss": float(s)}) for s in (1, 2, 3)])
  _write(tmp_path, [(3, {"train/loss": 30.0})], resume_step=2)
  assert [(r["step"], r["train/loss"]) for r in _lines(tmp_path)] == [(1, 1.0), (2, 2.0),
                                                                       (3, 30.0)]


def test_without_resume_step_nothing_is_dropped(tmp_path):
  _write(tmp_path, [(5, {"train/loss": 1.0})])
  _write(tmp_path, [(2, {"test/f1": 0.5})])
  assert [r["step"] for r in _lines(tmp_path)] == [5, 2]


def test_the_same_step_and_keys_again_replace_the_record(tmp_path):
  _write(tmp_path, [(2, {"train/loss": 1.0}), (2, {"val/f1": 0.1}), (4, {"test/f1": 0.2})])
  _write(tmp_path, [(2, {"val/f1": 0.3}), (4, {"test/f1": 0.4})])
  got = [(r["step"], sorted(set(r) - {"step", "time"}), r.get("val/f1", r.get("test/f1")))
         for r in _lines(tmp_path)]
  assert got == [(2, ["train/loss"], None), (2, ["val/f1"], 0.3), (4, ["test/f1"], 0.4)]


def test_a_line_cut_short_is_dropped_not_joined(tmp_path):
  _write(tmp_path, [(1, {"train/loss": 1.0})])
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 2, "ti')
  _write(tmp_path, [(2, {"train/loss": 2.0})], resume_step=1)
  assert [(r["step"], r["train/loss"]) for r in _lines(tmp_path)] == [(1, 1.0), (2, 2.0)]


def test_a_last_line_without_its_newline_is_kept_apart(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 1.0}\n{"step": 2}')
  _write(tmp_path, [(3, {"train/loss": 3.0})])
  assert [r["step"] for r in _lines(tmp_path)] == [1, 3]


# ---------------------------------------------------------------------------------------
# The training loop's writer.
# ---------------------------------------------------------------------------------------


def _on_disk_events(logdir):
  """{tag: [steps]} of the scalar events an event file holds on disk now (what a hard kill
  would leave: tensorboardX buffers in the process and flushes every 120 s)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for path in sorted(pathlib.Path(logdir).glob("events.out.tfevents.*")):
    data, pos = path.read_bytes(), 0
    while pos + 12 <= len(data):
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      if pos + 12 + n + 4 > len(data):
        break  # cut short
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for v in event.summary.value:
        out.setdefault(v.tag, []).append(event.step)
  return out


def test_tensorboard_events_up_to_a_checkpoint_are_on_disk_when_it_is_saved(
    tmp_path, monkeypatch):
  """A run killed hard after a checkpoint resumes from it and does not log its steps
  again: TensorBoard must hold them by then, or its curves keep a gap."""
  seen = {}
  save = checkpointing.Checkpointer.save

  def save_and_look(self, step, *args, **kwargs):
    if step == 4:  # the checkpoint at 2 is saved: what would a kill now leave?
      seen.update(_on_disk_events(tmp_path / "tensorboard"))
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpointing.Checkpointer, "save", save_and_look)
  cfg = th.tiny_config(total_steps=4, log_every=1, eval_every=0,
                       **{"checkpoint.every_steps": 2})
  train.train_and_evaluate(cfg, str(tmp_path), splits=th.splits(n_val=0, n_test=0,
                                                                num_frames=24))
  assert {1, 2} <= set(seen.get("train/loss", ())), seen


def test_a_non_finite_loss_stop_logs_the_steps_since_the_last_log_line(tmp_path):
  """The steps just before a NaN are the ones that show the divergence: the stop writes
  their averages (as a preemption does) instead of losing up to log_every - 1 steps."""
  cfg = th.tiny_config(total_steps=4, log_every=4, eval_every=0,
                       **{"checkpoint.every_steps": 0, "debug.nan_at_step": 3})
  with pytest.raises(train.NonFiniteLossError, match=r"at step 3\b"):
    train.train_and_evaluate(cfg, str(tmp_path), splits=th.splits(n_val=0, n_test=0,
                                                                   num_frames=24))
  got = [r for r in _lines(tmp_path) if "train/loss" in r]
  assert [r["step"] for r in got] == [2], got
  assert math.isfinite(got[0]["train/loss"]) and math.isfinite(got[0]["train/grad_norm"])


def test_steps_per_sec_is_the_training_rate_and_the_eta_counts_validations(
    tmp_path, monkeypatch, capsys):
  """A validation inside a log window made its steps/s (and so its ETA) read as if
  training had slowed down by the validation's whole time."""
  validate = train.validate

  def slow_validate(*args, **kwargs):
    time.sleep(3.0)
    return validate(*args, **kwargs)

  monkeypatch.setattr(train, "validate", slow_validate)
  cfg = th.tiny_config(total_steps=4, log_every=1, eval_every=2,
                       **{"checkpoint.every_steps": 0})
  train.train_and_evaluate(cfg, str(tmp_path), splits=th.splits(n_val=1, n_test=0,
                                                                num_frames=24))
  sps = {r["step"]: r["train/steps_per_sec"] for r in _lines(tmp_path)
         if "train/steps_per_sec" in r}
  assert sps[3] > 0.6, sps  # one tiny step, not the 3 s validation before it
  m, s = re.search(r"step 3/4 .* ETA (\d+)m(\d+)s", capsys.readouterr().out).groups()
  assert 60 * int(m) + int(s) >= 3  # the final validation's 3 s still to come
  assert [train.validations_left(s, 10, 4, True) for s in (0, 4, 7, 8, 9)] == [3, 2, 2, 1, 1]
  assert train.validations_left(3, 10, 0, True) == 1
  assert train.validations_left(3, 10, 4, False) == 0
