"""Orbax checkpoints of the train state together with the grain iterator state.

Two managers under the workdir:
  * `checkpoints/`: the latest `keep` steps, each with the train state (`state`, sharded
    arrays) and the data iterator (`data`, one JSON file per process written by grain's
    own handler, `grain.checkpoint.CheckpointSave`). Resuming from one is exact.
  * `best/`: the single best state by the validation metric (`metrics` saved with it).

Preemption: `PreemptionFlag` installs a SIGTERM handler that only sets a flag; the
training loop checks it after each step, saves, and exits cleanly.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from typing import Any

from absl import logging
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from meldae_jax import sharding


# ----------------------------------------------------------------------------------------
# Data-iterator state.
# ----------------------------------------------------------------------------------------


class CheckpointMismatchError(ValueError):
  """A stored checkpoint does not fit this run's train state (other model or optimizer)."""


class CheckpointReadError(RuntimeError):
  """A stored checkpoint cannot be read (a damaged or incompletely copied folder)."""


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0].rstrip(":") if text else type(e).__name__


def _restore(manager, step: int, args, what: str):
  """`manager.restore`, turning orbax's tree/shape mismatch into CheckpointMismatchError
  and any other failure to read it into CheckpointReadError (one line naming the step's
  folder, not tensorstore's pages of traceback)."""
  try:
    return manager.restore(step, args=args)
  except ValueError as e:
    text = str(e)
    if "tree structure" not in text and "shape" not in text.lower():
      raise _read_error(manager, step, what, e) from e
    raise CheckpointMismatchError(
        f"The {what} checkpoint (step {step} in {manager.directory}) does not fit this "
        f"run's train state: it was saved with other model or optimizer settings. "
        f"Orbax says: {_first_line(e)}") from e
  except Exception as e:  # pylint: disable=broad-except
    raise _read_error(manager, step, what, e) from e


def _read_error(manager, step: int, what: str, e: Exception) -> CheckpointReadError:
  """Names the folder and the innermost cause (orbax wraps tensorstore's read error)."""
  cause = e
  while cause.__cause__ is not None:
    cause = cause.__cause__
  folder = os.path.join(os.fspath(manager.directory), str(step))
  return CheckpointReadError(
      f"The {what} checkpoint {folder} cannot be read ({_first_line(cause)[:300]}): it is "
      f"damaged or incompletely copied; move it out of {manager.directory} to use the "
      "checkpoints before it")


def _is_grain_iterator(it) -> bool:
  return isinstance(it, (grain.DatasetIterator, grain.DataLoaderIterator))


class IteratorState:
  """A data iterator's state taken now, saved later as the iterator itself would be.

  The training loop reads the next batch while a step runs, so when it saves the
  iterator is a batch ahead; it saves the state taken before that read.
  """

  def __init__(self, it):
    self.is_grain = _is_grain_iterator(it)
    self.state = it.get_state()

  def get_state(self):
    """What grain's handler writes for an item that is not a `DatasetIterator` (bytes):
    the text a `DatasetIterator` of this state would have written."""
    if isinstance(self.state, bytes):
      return self.state
    return json.dumps(self.state, indent=4).encode()


def _iterator_save_arg(it):
  if it is None:
    return None
  if _is_grain_iterator(it) or (isinstance(it, IteratorState) and it.is_grain):
    return grain.checkpoint.CheckpointSave(it)
  if hasattr(it, "get_state"):
    state = it.state if isinstance(it, IteratorState) else it.get_state()
    if isinstance(state, bytes):
      state = {"__bytes__": state.decode()}
    return ocp.args.JsonSave({"process_index": jax.process_index(), "state": state})
  raise TypeError(f"Cannot checkpoint data iterator of type {type(it).__name__}: "
                  "it has no get_state()/set_state().")


def _iterator_restore_arg(it):
  if _is_grain_iterator(it):
    return grain.checkpoint.CheckpointRestore(it)
  return ocp.args.JsonRestore()


def _apply_iterator_state(it, restored) -> None:
  if _is_grain_iterator(it):
    return  # grain's handler already called set_state() on `it`.
  state = restored["state"]
  if isinstance(state, dict) and set(state) == {"__bytes__"}:
    state = state["__bytes__"].encode()
  it.set_state(state)


# ----------------------------------------------------------------------------------------
# Manager.
# ----------------------------------------------------------------------------------------


class Checkpointer:
  """Latest-N checkpoints (state + data iterator) and the best state by a metric."""

  def __init__(self, workdir: str, *, keep: int = 2, best_metric: str = "f1_dr",
               async_save: bool = False, read_only: bool = False):
    """`read_only`: for readers of a run (spotting): creates and changes nothing.
    `workdir` may be relative (`--workdir=run`): orbax refuses a relative path."""
    self.workdir = os.path.abspath(os.fspath(workdir))
    self.best_metric = best_metric
    self._latest = ocp.CheckpointManager(
        os.path.join(self.workdir, "checkpoints"),
        item_names=("state", "data"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep, create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=async_save))
    self._best = ocp.CheckpointManager(
        os.path.join(self.workdir, "best"),
        item_names=("state", "metrics"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else 1, create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=async_save))

  # --- latest --------------------------------------------------------------------------

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def save(self, step: int, state, data_iter=None) -> None:
    """Saves the state and the data iterator at `step` (overwrite-free, forced)."""
    if step in self._latest.all_steps():
      return
    items = {"state": ocp.args.StandardSave(state)}
    data_arg = _iterator_save_arg(data_iter)
    if data_arg is not None:
      items["data"] = data_arg
    self._latest.save(step, args=ocp.args.Composite(**items), force=True)
    logging.info("Saved checkpoint at step %d to %s", step, self._latest.directory)

  def restore(self, abstract_state, data_iter=None, step: int | None = None):
    """Restores state (into the shardings of `abstract_state`) and the iterator in place."""
    step = self.latest_step() if step is None else step
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    has_data = data_iter is not None and os.path.isdir(
        os.path.join(os.fspath(self._latest.directory), str(step), "data"))
    if has_data:
      items["data"] = _iterator_restore_arg(data_iter)
    restored = _restore(self._latest, step, ocp.args.Composite(**items), "latest")
    if has_data:
      _apply_iterator_state(data_iter, restored["data"])
    logging.info("Restored checkpoint at step %d from %s", step, self._latest.directory)
    return restored["state"]

  # --- best ----------------------------------------------------------------------------

  def best_info(self) -> tuple[int | None, dict | None]:
    step = self._best.latest_step()
    if step is None:
      return None, None
    restored = self._best.restore(step, args=ocp.args.Composite(metrics=ocp.args.JsonRestore()))
    return step, dict(restored["metrics"])

  def best_value(self) -> float | None:
    _, metrics = self.best_info()
    return None if metrics is None else metrics.get("__best_value__")

  def maybe_save_best(self, step: int, state, metrics: dict[str, Any], value: float,
                      metric: str | None = None) -> bool:
    """Saves `state` as the best if `value` beats the stored best; returns whether it did.

    `metric` names what `value` is (the validation's `threshold_key`: `best_metric`, or
    F1 where the validation data cannot rank by it); default `best_metric`.
    """
    best = self.best_value()
    if value is None or not np.isfinite(value):
      return False
    if best is not None and value <= best:
      return False
    record = {k: _jsonable(v) for k, v in metrics.items()}
    record["__best_value__"] = float(value)
    record["__step__"] = int(step)
    if step in self._best.all_steps():
      # The same step validated again with a better value: a run resumed from an older
      # checkpoint, or on a validation step, after its evaluation came out differently
      # (another compile, non-deterministic kernels). Orbax refuses to save an existing
      # step (StepAlreadyExistsError, the same on every rerun): replace it.
      self._best.delete(step)
    self._best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), metrics=ocp.args.JsonSave(record)), force=True)
    self._best.wait_until_finished()
    logging.info("New best %s=%.4f at step %d", metric or self.best_metric, value, step)
    return True

  def restore_best(self, abstract_state):
    step = self._best.latest_step()
    if step is None:
      return None, None
    restored = _restore(self._best, step, ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)), "best")
    return step, restored["state"]

  def wait(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def _jsonable(v):
  if isinstance(v, dict):
    return {str(k): _jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  if isinstance(v, (np.generic, np.ndarray, jax.Array)):
    return np.asarray(v).tolist()
  return v


# ----------------------------------------------------------------------------------------
# Preemption.
# ----------------------------------------------------------------------------------------


class PreemptionFlag:
  """SIGTERM (and optionally SIGINT) sets a flag the training loop polls each step."""

  def __init__(self, signals=(signal.SIGTERM,)):
    self._event = threading.Event()
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for s in signals:
        self._previous[s] = signal.signal(s, self._handler)

  def _handler(self, signum, frame):
    del frame
    logging.warning("Received signal %d: will checkpoint and stop after this step.", signum)
    self._event.set()

  def set(self) -> None:
    self._event.set()

  def __bool__(self) -> bool:
    return self._event.is_set()

  def should_stop(self) -> bool:
    """True on any process if some process was signalled (multi-process agreement)."""
    return sharding.any_process(self._event.is_set())

  def restore_handlers(self) -> None:
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous = {}


@contextlib.contextmanager
def staged_folder(out: str):
  """Yields a temporary folder inside `out` (one filesystem, whatever `out` links to);
  the files written there move into `out` when the block ends without an error: a
  command's outputs appear all together or not at all."""
  os.makedirs(out, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".staged-", dir=os.path.realpath(out))
  try:
    yield tmp
    for name in os.listdir(tmp):
      os.replace(os.path.join(tmp, name), os.path.join(out, name))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str, obj) -> None:
  """Writes `obj` as JSON (process 0 only), atomically."""
  if jax.process_index() != 0:
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
  os.replace(tmp, path)
