"""Scalar logging: TensorBoard event files (tensorboardX, no TensorFlow) + metrics.jsonl.

Only process 0 writes. Every `write_scalars(step, scalars)` call appends one JSON line
`{"step": s, "time": t, **scalars}` to `workdir/metrics.jsonl` and one scalar per key to
the TensorBoard events under `workdir/tensorboard/`.

A run that dies without a checkpoint at its last step (a hard kill, a crash, a NaN stop)
leaves records past the step it resumes from, and the resumed run logs those steps
again. So the training loop opens the writer with `resume_step`: records after it are
dropped from metrics.jsonl and hidden in TensorBoard (`purge_step`), and a record with
the same step and the same keys as an earlier one (a validation or test evaluation done
again) replaces it. Each record then appears once, as an uninterrupted run writes it.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np


def _to_float(v) -> float | None:
  if v is None:
    return None
  try:
    f = float(np.asarray(v))
  except (TypeError, ValueError):
    return None
  return f


class MetricWriter:
  """Writes scalars to TensorBoard and to a JSON-lines file."""

  def __init__(self, workdir: str, *, tensorboard: bool = True,
               resume_step: int | None = None):
    """`resume_step`: the step training goes on from; records after it are dropped."""
    self.enabled = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    self._keys: set[tuple[int, frozenset]] = set()
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._path = os.path.join(workdir, "metrics.jsonl")
    self._tidy(resume_step)
    self._jsonl = open(self._path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      purge = None if resume_step is None else int(resume_step) + 1
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge)

  def _read(self) -> tuple[list[dict], int]:
    """The file's whole records, and how many lines were cut short or unreadable (a
    last line without its newline counts: the next record would join it)."""
    try:
      with open(self._path) as f:
        text = f.read()
    except FileNotFoundError:
      return [], 0
    *lines, last = text.split("\n")  # `last` is "" unless a write was cut short
    records, bad = [], int(last != "")
    for line in filter(str.strip, lines):
      try:
        record = json.loads(line)
      except ValueError:
        record = None
      if isinstance(record, dict) and isinstance(record.get("step"), int):
        records.append(record)
      else:
        bad += 1
    return records, bad

  def _rewrite(self, records: list[dict]) -> None:
    tmp = self._path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, self._path)

  def _tidy(self, resume_step: int | None) -> None:
    records, bad = self._read()
    kept = [r for r in records if resume_step is None or r["step"] <= resume_step]
    if bad or len(kept) < len(records):
      self._rewrite(kept)
      logging.warning("%s: dropped %d record(s) after step %s (a run stopped without a "
                      "checkpoint there; its steps are logged again) and %d unreadable "
                      "line(s).", self._path, len(records) - len(kept), resume_step, bad)
    self._keys = {_key(r) for r in kept}

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "time": time.time()}
    for k, v in scalars.items():
      f = _to_float(v)
      record[k] = f if f is None or math.isfinite(f) else str(f)
      if self._tb is not None and f is not None:
        self._tb.add_scalar(k, f, int(step))
    key = _key(record)
    if key in self._keys:  # the same evaluation again: the new record replaces the old
      self._jsonl.close()
      self._rewrite([r for r in self._read()[0] if _key(r) != key])
      self._jsonl = open(self._path, "a")
    self._keys.add(key)
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def write_text(self, step: int, tag: str, text: str) -> None:
    if self.enabled and self._tb is not None:
      self._tb.add_text(tag, text, int(step))

  def flush(self) -> None:
    if not self.enabled or self._jsonl.closed:
      return
    self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Idempotent; call it on error paths too (TensorBoard's writer thread cannot be
    stopped at interpreter shutdown)."""
    if not self.enabled or self._jsonl.closed:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _key(record: Mapping[str, Any]) -> tuple[int, frozenset]:
  return record["step"], frozenset(k for k in record if k not in ("step", "time"))


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a/b': 1}, dropping non-numeric leaves."""
  out = {}
  for k, v in metrics.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, name + "/"))
    elif isinstance(v, (int, float, np.number, np.ndarray, jax.Array)) and not isinstance(v, bool):
      out[name] = v
    elif v is None:
      continue
  return out
