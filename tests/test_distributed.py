"""Two processes on localhost (jax.distributed over gloo) train the tiny config together."""
import json
import os

import train_helpers as th

SCRIPT = r"""
import json, sys
sys.path.insert(0, {tests!r})
import train_helpers as th
from meldae_jax import train

cfg = th.tiny_config(total_steps=3, log_every=1, batch_size=4)
cfg.checkpoint.every_steps = 2
cfg.eval.batch_size = 4
cfg.distributed.coordinator_address = "127.0.0.1:{port}"
cfg.distributed.num_processes = 2
cfg.distributed.process_id = {pid}
data = th.splits(n_train=2, n_val=0, n_test=1, num_frames=16)
r = train.train_and_evaluate(cfg, {workdir!r}, splits=data)
import jax
print("RESULT " + json.dumps(dict(
    process=jax.process_index(), processes=jax.process_count(), devices=jax.device_count(),
    loss=r["train_loss"], status=r["status"], tp=r["tp"], fp=r["fp"], fn=r["fn"],
    acc_me=r["acc_me"])), flush=True)
"""


def test_two_processes_agree(tmp_path):
  results = []
  for returncode, out, err in th.run_processes(SCRIPT, 600, workdir=str(tmp_path / "w")):
    assert returncode == 0, err[-4000:]
    results.append(th.result_line(out))
  a, b = results
  assert {a["process"], b["process"]} == {0, 1}
  assert a["processes"] == b["processes"] == 2 and a["devices"] == 2
  assert a["status"] == b["status"] == "done"
  assert a["loss"] is not None and a["loss"] == b["loss"]
  assert (a["tp"], a["fp"], a["fn"], a["acc_me"]) == (b["tp"], b["fp"], b["fn"], b["acc_me"])
  # One checkpoint, with the iterator state of each process.
  data_dir = tmp_path / "w" / "checkpoints" / "3" / "data"
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_dir))
  metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
  assert metrics["train_loss"] == a["loss"]
