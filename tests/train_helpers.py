"""Shared helpers of the training tests: tiny configs and in-memory synthetic corpora."""
import functools
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from configs import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position


def tiny_config(**overrides):
  """The `synthetic.py:tiny` config with dotted-key overrides."""
  c = synthetic.get_config("tiny")
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@functools.lru_cache(maxsize=None)
def _video(seed: int, num_frames: int, image_size: int, difficulty: str):
  from meldae_jax.data import synthetic as syn  # pylint: disable=g-import-not-at-top
  frames, ann = syn.generate_video(seed, difficulty, image_size=image_size,
                                   num_frames=num_frames)
  return syn.encode_frames(frames), ann


def records(n_videos: int, *, seed: int = 0, num_frames: int = 40, image_size: int = 32,
            difficulty: str = "easy", subjects: int | None = None) -> list:
  """In-memory records in the shared schema (docs/contracts.md)."""
  out = []
  for i in range(n_videos):
    frames, ann = _video(seed + i, num_frames, image_size, difficulty)
    ivs = ann["intervals"]
    subject = f"s{i % subjects if subjects else i:03d}"
    out.append({
        "video_id": f"v{seed + i:03d}".encode(), "subject": subject.encode(),
        "fps": np.float32(ann["fps"]), "frames": list(frames),
        "intervals": {
            "onset": [iv["onset"] for iv in ivs], "apex": [iv["apex"] for iv in ivs],
            "offset": [iv["offset"] for iv in ivs],
            "type": [0 if iv["type"] == "micro" else 1 for iv in ivs]},
        "speaking": np.asarray(ann["speaking"], np.int8),
    })
  return out


def splits(n_train=3, n_val=2, n_test=2, **kw):
  from meldae_jax import train  # pylint: disable=g-import-not-at-top
  from meldae_jax.data import sources  # pylint: disable=g-import-not-at-top
  return train.Splits(
      train=sources.VideoIndex(records(n_train, seed=0, **kw)),
      val=sources.VideoIndex(records(n_val, seed=100, **kw)) if n_val else None,
      test=sources.VideoIndex(records(n_test, seed=200, **kw)) if n_test else None)


def compilation_cache_fixture():
  """A module-scoped autouse fixture: runs of one config compile the same programs, so
  share them through an on-disk compilation cache (in a temporary directory)."""

  @pytest.fixture(scope="module", autouse=True)
  def compilation_cache(tmp_path_factory):
    import jax  # pylint: disable=g-import-not-at-top
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update(keys[0], str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update(keys[1], 0)
    jax.config.update(keys[2], -1)
    yield
    for k, v in old.items():
      jax.config.update(k, v)

  return compilation_cache


def run_processes(script: str, timeout: float, n: int = 2, **fields) -> list:
  """Runs `script`, a str.format template of {tests}, {port}, {pid} and `fields`, as the n
  processes of one jax.distributed run on localhost (CPU, gloo): (returncode, stdout,
  stderr) of each."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import portpicker  # pylint: disable=g-import-not-at-top
  port = portpicker.pick_unused_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen(
      [sys.executable, "-c", script.format(tests=str(ROOT / "tests"), port=port, pid=pid,
                                           **fields)],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for pid in range(n)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def result_line(out: str) -> dict:
  """The JSON of a process's last `RESULT {...}` line."""
  import json  # pylint: disable=g-import-not-at-top
  line = [l for l in out.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])



def record_transfers(monkeypatch, key: str, label: str) -> list:
  """Events in order: "batch" for each batch sent to the devices (make_global_batch) and
  `label` for each fetch of device outputs holding `key` (jax.device_get)."""
  import jax  # pylint: disable=g-import-not-at-top
  from meldae_jax import sharding  # pylint: disable=g-import-not-at-top
  events = []
  put, get = sharding.make_global_batch, jax.device_get
  monkeypatch.setattr(sharding, "make_global_batch",
                      lambda *a: events.append("batch") or put(*a))
  monkeypatch.setattr(jax, "device_get", lambda x: (
      events.append(label) if isinstance(x, dict) and key in x else None) or get(x))
  return events
