"""Scalar logging: TensorBoard event files (tensorboardX, no TensorFlow) + metrics.jsonl.

Only process 0 writes. Every `write_scalars(step, scalars)` call appends one JSON line
`{"step": s, "time": t, **scalars}` to `workdir/metrics.jsonl` and one scalar per key to
the TensorBoard events under `workdir/tensorboard/`.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

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

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "time": time.time()}
    for k, v in scalars.items():
      f = _to_float(v)
      record[k] = f if f is None or math.isfinite(f) else str(f)
      if self._tb is not None and f is not None:
        self._tb.add_scalar(k, f, int(step))
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
