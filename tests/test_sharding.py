"""Sharded train steps on a (data, fsdp) mesh of 8 host devices match a single device.

Runs in a subprocess: XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set
before jax is imported.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
import jax
import numpy as np
sys.path.insert(0, {tests!r})
import train_helpers as th
from meldae_jax import sharding, train

MESHES = {meshes}
assert jax.device_count() == 8, jax.devices()


def batch(i, b=8, t=4, s=32):
  rng = np.random.default_rng(i)
  labels = np.zeros((b, t, 1), np.float32)
  labels[::2, 1:3] = 1.0
  boundary = np.zeros_like(labels)
  boundary[::2, 1] = boundary[::2, 2] = 1.0
  return dict(
      video=rng.integers(0, 255, (b, t, s, s, 3), dtype=np.uint8),
      frame_mask=np.ones((b, t), np.float32), labels=labels, boundary=boundary,
      speaking=rng.integers(-1, 2, (b, t)).astype(np.int8),
      me_label=(np.arange(b) % 2 == 0).astype(np.float32),
      state_label=(np.arange(b) % 3 == 0).astype(np.float32),
      state_valid=np.ones((b,), np.float32),
      video_index=np.zeros((b,), np.int32), start=np.zeros((b,), np.int32))


def run(mesh, devices, init=None):
  cfg = th.tiny_config(batch_size=8)
  cfg.mesh.data, cfg.mesh.fsdp = mesh
  tr = train.make_trainer(cfg, devices=devices)
  losses = []
  with jax.set_mesh(tr.mesh):
    # The sharded runs start from the reference's initial state, laid out on their mesh.
    state = (tr.init_fn(jax.random.key(0)) if init is None
             else jax.device_put(init, tr.state_shardings))
    for i in range(2):
      gb = sharding.make_global_batch(batch(i), tr.batch_sharding)
      state, m = tr.train_step(state, gb)
      losses.append(float(m["loss"]))
  return state, losses


ref_tr = train.make_trainer(th.tiny_config(batch_size=8), devices=jax.devices()[:1])
with jax.set_mesh(ref_tr.mesh):
  init = jax.device_get(ref_tr.init_fn(jax.random.key(0)))
ref, ref_losses = run((1, 1), jax.devices()[:1], init)
ref_params = jax.device_get(ref.params)
results = {{}}
for data, fsdp in MESHES:
  state, losses = run((data, fsdp), jax.devices(), init)
  sharded = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
    spec = leaf.sharding.spec
    if any(a == "fsdp" or (isinstance(a, tuple) and "fsdp" in a) for a in spec):
      shard = leaf.addressable_shards[0].data.shape
      sharded.append([jax.tree_util.keystr(path), list(leaf.shape), list(shard)])
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                       jax.device_get(state.params), ref_params)
  results[f"{{data}}x{{fsdp}}"] = dict(
      losses=losses, ref_losses=ref_losses, max_param_diff=max(jax.tree.leaves(diffs)),
      sharded=sharded, mesh=dict(state.params["backbone"]["cls"].sharding.mesh.shape))
cfg = th.tiny_config(batch_size=8)
cfg.eval.batch_size = 6  # not a multiple of the 8 batch shards: found before training
try:
  train.make_trainer(cfg)
  results["bad_eval_batch"] = None
except ValueError as e:
  results["bad_eval_batch"] = f"{{type(e).__name__}}: {{e}}"
print("RESULT " + json.dumps(results))
"""


def test_sharded_step_matches_single_device():
  meshes = [(2, 4), (4, 2)]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  script = SCRIPT.format(tests=str(ROOT / "tests"), meshes=meshes)
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  results = json.loads(line[len("RESULT "):])
  # A ConfigError: the commands' one-line error (exit 2), not a ValueError's traceback.
  assert "ConfigError: Global batch 6 (eval.batch_size) is not divisible by the 8" in (
      results["bad_eval_batch"] or "")
  for data, fsdp in meshes:
    r = results[f"{data}x{fsdp}"]
    assert r["mesh"] == {"data": data, "fsdp": fsdp}
    assert all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in
               zip(r["losses"], r["ref_losses"])), r
    assert r["losses"][0] != r["losses"][1]  # the parameters did change
    assert r["max_param_diff"] < 1e-4, r
    # Params annotated with `embed` are split over fsdp: each device holds 1/fsdp of them.
    assert r["sharded"], "no parameter is sharded along fsdp"
    for name, shape, shard in r["sharded"]:
      assert any(g == s * fsdp for g, s in zip(shape, shard)), (name, shape, shard)
    names = " ".join(n for n, _, _ in r["sharded"])
    assert "backbone" in names and "Transformer" in names


def test_a_process_without_its_id_is_a_clear_error(monkeypatch):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from meldae_jax import sharding  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
  cfg = ml_collections.ConfigDict({"distributed": {
      "coordinator_address": "localhost:1234", "num_processes": 2, "process_id": -1}})
  with pytest.raises(ValueError, match="set config.distributed.process_id or JAX_PROCESS_ID"):
    sharding.maybe_initialize_distributed(cfg)


def test_a_mesh_of_more_devices_than_there_are_is_a_config_error():
  """It was sharding's ValueError, a traceback from `meldae_jax.main` instead of its
  one-line error naming the settings (exit 2)."""
  import jax  # pylint: disable=g-import-not-at-top
  import train_helpers as th  # pylint: disable=g-import-not-at-top
  from meldae_jax import config_check  # pylint: disable=g-import-not-at-top
  from meldae_jax import train  # pylint: disable=g-import-not-at-top
  n = jax.device_count() + 1
  cfg = th.tiny_config()
  cfg.mesh.data, cfg.mesh.fsdp = n, 1
  with pytest.raises(config_check.ConfigError,
                     match=rf"--config.mesh.data={n} --config.mesh.fsdp=1: .*needs {n} devices"):
    train.make_trainer(cfg)
