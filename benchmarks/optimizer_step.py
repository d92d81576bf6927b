"""Seconds of the optimiser step alone (clip + AdamW + apply), fused call against optax's
XLA ops, interleaved in one process; one JSON line per path.

  python benchmarks/optimizer_step.py --config S112 [--rounds 10] [--per-turn 5]

The step is `optim.apply_gradients` with the project's default optimiser config on the
config's parameters (`step.py`'s model), jitted with the parameters and state donated, as
in the train step; the gradients are fixed. `fused` is the CPU custom-call path
(`meldae_jax/ops/cpu_adamw.py`, where it is enabled), `optax` the same step traced within
`cpu_adamw.xla_adamw()` (`fused_call`: whether the compiled step has the call). Also
printed: the parameter count and the rate each path moves the bytes one step must move
at least (read p, g, m, v; write p, m, v: 28 bytes per parameter).
"""
import argparse
import contextlib
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
import meldae_jax  # noqa: F401  first: the project's process settings

import jax
import jax.numpy as jnp

from benchmarks import common
from benchmarks import step
from meldae_jax import optim
from meldae_jax.models import meldae
from meldae_jax.ops import cpu_adamw
# pylint: enable=g-import-not-at-top,wrong-import-position

BYTES_PER_PARAM = 28  # float32 p, g, m, v read; p, m, v written


def compile_path(tx, params, grads, fused: bool):
  """The jitted optimiser step, compiled on `params`' shapes, for one path."""
  fn = lambda p, s, g: optim.apply_gradients(tx, g, s, p)  # noqa: E731
  with contextlib.nullcontext() if fused else cpu_adamw.xla_adamw():
    jitted = jax.jit(fn, donate_argnums=(0, 1))
    return jitted.lower(params, tx.init(params), grads).compile()


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="Ti112", choices=sorted(common.CONFIGS))
  p.add_argument("--rounds", type=int, default=10)
  p.add_argument("--per-turn", type=int, default=5)
  args = p.parse_args(argv)

  shape = common.CONFIGS[args.config]
  mcfg = step.model_config(shape)
  params = step.init_params(meldae.MELDAE(mcfg), mcfg)
  _, opt_cfg, total = step.train_configs()
  tx = optim.make_optimizer(opt_cfg, total)[0]
  grads = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), params)
  n = sum(x.size for x in jax.tree.leaves(params))
  paths = {"fused": cpu_adamw.enabled(), "optax": False}
  if not paths["fused"]:
    print("# the fused path is not enabled here (see cpu_adamw.enabled); both run optax's",
          file=sys.stderr)
  runs = {}
  for name, fused in paths.items():
    copy = jax.tree.map(jnp.copy, params)
    runs[name] = dict(compiled=compile_path(tx, copy, grads, fused),
                      state=[copy, tx.init(copy)], times=[])

  def one_step(run):
    t0 = time.perf_counter()
    run["state"] = list(run["compiled"](*run["state"], grads))
    jax.block_until_ready(run["state"][0])
    return time.perf_counter() - t0

  for run in runs.values():  # warm-up
    one_step(run)
  for _ in range(args.rounds):
    for run in runs.values():
      run["times"] += [one_step(run) for _ in range(args.per_turn)]
  for name, run in runs.items():
    med = statistics.median(run["times"])
    common.emit(dict(
        config=args.config, path=name, params=n, steps=len(run["times"]),
        fused_call="meldae_adamw" in run["compiled"].as_text(),
        median_ms=med * 1e3, min_ms=min(run["times"]) * 1e3,
        gbytes_per_s=BYTES_PER_PARAM * n / med / 1e9))


if __name__ == "__main__":
  main()
