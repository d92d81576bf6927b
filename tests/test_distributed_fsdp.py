"""Two processes on localhost (jax.distributed over gloo), parameters FSDP-sharded over both.

One short run of three checks: the generated corpus built on the fly by a multi-process
run (process 0 builds, the others wait), a pretrained backbone loaded into parameters
sharded across processes, and a 'batch' rule that leaves the batch replicated over the
processes refused (it would silently mix the processes' different data).
"""
import pytest

import train_helpers as th

SCRIPT = r"""
import json, os, sys
sys.path.insert(0, {tests!r})
import numpy as np
import train_helpers as th
import jax
from jax.experimental import multihost_utils
from meldae_jax import optim, sharding, train

pid, tmp = {pid}, {tmp!r}
cfg = th.tiny_config()
cfg.distributed.coordinator_address = "127.0.0.1:{port}"
cfg.distributed.num_processes = 2
cfg.distributed.process_id = pid
sharding.maybe_initialize_distributed(cfg)
print("INIT_OK", flush=True)
out = {{}}

# 1. Both processes open a corpus that is not built yet (synthetic: build_if_missing).
cfg.dataset.data_dir = os.path.join(tmp, "data")
try:
  out["train_videos"] = len(train.open_splits(cfg).train)
except Exception as e:
  out["build_error"] = repr(e)[:300]
multihost_utils.sync_global_devices("built")

# 2. A 'batch' rule over a mesh axis of size 1: the batch would be replicated over processes.
bad = th.tiny_config()
bad.mesh.data, bad.mesh.fsdp = 1, 2
bad.logical_axis_rules = (("batch", "data"),) + tuple(
    r for r in bad.logical_axis_rules if r[0] != "batch")
try:
  train.make_trainer(bad)
  out["bad_batch_rule"] = "accepted"
except ValueError as e:
  out["bad_batch_rule"] = "refused" if "does not split the batch" in str(e) else repr(e)

# 3. A pretrained ViT loaded into a backbone sharded over both processes' devices.
cfg.mesh.data, cfg.mesh.fsdp = 1, 2
cfg.model.vit_stem = "patch"
trainer = train.make_trainer(cfg)
with jax.set_mesh(trainer.mesh):
  donor = multihost_utils.process_allgather(
      trainer.init_fn(jax.random.key(1)).params["backbone"], tiled=True)
  flat = {{optim.path_name(p): np.asarray(v)
           for p, v in jax.tree_util.tree_leaves_with_path(donor)}}
  path = os.path.join(tmp, "vit.npz")
  if pid == 0:
    np.savez(path, **flat)
  multihost_utils.sync_global_devices("npz written")
  cfg.model_init = path
  state = trainer.init_fn(jax.random.key(0))
  kernel = state.params["backbone"]["embedding"]["kernel"]
  out["sharded_over_processes"] = not kernel.is_fully_addressable
  try:
    state = train.load_pretrained(cfg, trainer, state)
    loaded = multihost_utils.process_allgather(state.params["backbone"], tiled=True)
    out["loaded_equal"] = all(
        np.array_equal(np.asarray(v), flat[optim.path_name(p)])
        for p, v in jax.tree_util.tree_leaves_with_path(loaded))
    out["same_shardings"] = (state.params["backbone"]["embedding"]["kernel"].sharding
                             == trainer.state_shardings.params["backbone"]["embedding"]["kernel"])
  except Exception as e:
    out["load_error"] = repr(e)[:300]
print("RESULT " + json.dumps(out), flush=True)
"""


def test_two_processes_fsdp_build_and_pretrained(tmp_path):
  runs = th.run_processes(SCRIPT, 300, tmp=str(tmp_path))
  if not all("INIT_OK" in out for _, out, _ in runs):
    pytest.skip("multi-process JAX on CPU is unavailable here: "
                + " | ".join(err[-300:] for _, _, err in runs))
  results = []
  for returncode, out, err in runs:
    assert returncode == 0, err[-4000:]
    results.append(th.result_line(out))
  for r in results:
    assert "build_error" not in r, r["build_error"]
    assert r["train_videos"] > 0
    assert r["bad_batch_rule"] == "refused"
    assert r["sharded_over_processes"]
    assert "load_error" not in r, r["load_error"]
    assert r["loaded_equal"] and r["same_shardings"]
