"""metrics.jsonl stays one record per step and evaluation across stops and reruns."""
import json

from meldae_jax import metric_writers


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
