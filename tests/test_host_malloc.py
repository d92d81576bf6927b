"""glibc malloc tuning (meldae_jax/host_malloc.py): XLA's step temporaries stay mapped."""
import json
import os
import platform
import subprocess
import sys

import pytest

from meldae_jax import host_malloc

_PROBE = r"""
import json, resource
import meldae_jax, jax, jax.numpy as jnp
from meldae_jax import host_malloc
x = jnp.ones((2048, 4096), jnp.float32)  # 32 MiB, and XLA's temporaries of that size
f = jax.jit(lambda x: (jnp.cumsum(jnp.exp(x), axis=0) * jnp.cos(x)).sum(axis=1))
for _ in range(3):
  f(x).block_until_ready()
faults = []
for _ in range(3):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(dict(applied=host_malloc.APPLIED, faults=min(faults))))
"""


def _probe(tuning: str) -> dict:
  env = dict(os.environ, MELDAE_MALLOC_TUNING=tuning)
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                       text=True, check=True, timeout=300).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_opt_out_leaves_malloc_alone():
  assert host_malloc.apply({"MELDAE_MALLOC_TUNING": "0"}) is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_step_temporaries_no_longer_fault_every_call():
  tuned, default = _probe("1"), _probe("0")
  assert tuned["applied"] and not default["applied"]
  # 32 MiB of fresh pages is ~8k faults a call with glibc's defaults; reused, ~none.
  assert default["faults"] > 4000, default
  assert tuned["faults"] < default["faults"] / 10, (tuned, default)
