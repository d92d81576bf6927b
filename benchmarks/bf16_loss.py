"""Training loss with bf16 compute against fp32 over a short run from the same start.

  python benchmarks/bf16_loss.py --config Ti112 --steps 30 [--rtol 0.02] [--dtype bf16_matmul]
      [--warmup-steps 0]

Both runs are the project's train step (`step.py`: forward, total loss, backward, clip,
AdamW, one jit), from the same initial parameters (float32 in both: `model.dtype`
bfloat16 computes activations and matmuls in bf16 and keeps float32 master weights;
`--dtype bf16_matmul` only rounds the Dense matmuls' operands to bf16), fed the same
sequence of synthetic batches (a new one per step, seeded by the step). The optimiser is
the project's (`configs/common.py`), whose 500-step warmup keeps a 30-step run below 6 %
of the peak learning rate; `--warmup-steps 0` runs at the peak from the first step, where
the two curves have room to part. `lr_max` in the output says which rates were reached.
Prints one JSON line: both loss curves, the largest and the final relative difference
|bf16 - fp32| / |fp32|, and `within_rtol`. Exit status 1 when a difference exceeds
--rtol or a loss is not finite.
"""
import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
import meldae_jax  # noqa: F401  first: the project's process settings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import common
from benchmarks import step
# pylint: enable=g-import-not-at-top,wrong-import-position


def optimizer_config(warmup_steps: int | None = None):
  """(loss config, optimiser config, total steps): the project's, with `warmup_steps` when
  given."""
  loss_cfg, opt_cfg, total = step.train_configs()
  if warmup_steps is not None:
    opt_cfg = ml_collections.ConfigDict(opt_cfg.to_dict())
    opt_cfg.warmup_steps = int(warmup_steps)
  return loss_cfg, opt_cfg, total


def lr_max(steps: int, warmup_steps: int | None = None) -> dict[str, float]:
  """The largest learning rate of each group over the first `steps` updates."""
  _, opt_cfg, total = optimizer_config(warmup_steps)
  schedules = step.optim.make_optimizer(opt_cfg, total)[1]
  return {k: max(float(s(i)) for i in range(steps)) for k, s in schedules.items()}


def losses(config: str, dtype: str, steps: int, seed: int = 0,
           compiler_options: dict | None = None,
           warmup_steps: int | None = None) -> list[float]:
  """The total loss before each of `steps` train steps at `dtype` ('fp32' or 'bf16')."""
  shape = common.CONFIGS[config]
  fp32 = step.model_config(shape, "fp32")
  mcfg = step.model_config(shape, dtype)
  model = step.meldae.MELDAE(mcfg)
  loss_cfg, opt_cfg, total = optimizer_config(warmup_steps)
  # The fp32 model's initial values for both (same shapes; params are float32 in both).
  params = step.init_params(step.meldae.MELDAE(fp32), fp32, seed,
                            compiler_options=compiler_options)
  tx = step.optim.make_optimizer(opt_cfg, total)[0]
  batch = {k: jnp.asarray(v) for k, v in common.make_batch(shape, seed=0).items()}
  fn, donate, (state, _) = step.step_fn_and_args(model, "train", params, batch, tx,
                                                 loss_cfg)
  train = jax.jit(fn, donate_argnums=donate).lower(state, batch).compile(compiler_options)
  out = []
  for i in range(steps):
    batch = {k: jnp.asarray(v) for k, v in common.make_batch(shape, seed=i).items()}
    state, aux = train(state, batch)
    out.append(float(aux["loss"]))
  return out


def compare(config: str = "Ti112", steps: int = 30, rtol: float = 0.02, seed: int = 0,
            compiler_options: dict | None = None, dtype: str = "bf16",
            warmup_steps: int | None = None) -> dict:
  ref = losses(config, "fp32", steps, seed, compiler_options, warmup_steps)
  low = losses(config, dtype, steps, seed, compiler_options, warmup_steps)
  rel = [abs(b - a) / max(abs(a), 1e-12) for a, b in zip(ref, low)]
  finite = bool(np.all(np.isfinite(ref)) and np.all(np.isfinite(low)))
  _, opt_cfg, _ = optimizer_config(warmup_steps)
  return dict(kind="bf16_loss", config=config, dtype=dtype, steps=steps, seed=seed,
              rtol=rtol, warmup_steps=int(opt_cfg.warmup_steps),
              lr_max=lr_max(steps, warmup_steps),
              fp32_loss=ref, bf16_loss=low, max_rel_diff=max(rel), final_rel_diff=rel[-1],
              within_rtol=finite and max(rel) <= rtol, **common.host_figures())


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="Ti112", choices=sorted(common.CONFIGS))
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--rtol", type=float, default=0.02)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dtype", default="bf16", choices=("bf16", "bf16_matmul"),
                 help="bf16: the whole model in bf16; bf16_matmul: matmul operands only")
  p.add_argument("--warmup-steps", type=int, default=None,
                 help="the optimiser's warmup (default: the project's, 500 updates)")
  a = p.parse_args(argv)
  if a.steps < 1:
    p.error("--steps must be at least 1")
  report = compare(a.config, a.steps, a.rtol, a.seed, dtype=a.dtype,
                   warmup_steps=a.warmup_steps)
  common.emit(report)
  sys.exit(0 if report["within_rtol"] else 1)


if __name__ == "__main__":
  main()
