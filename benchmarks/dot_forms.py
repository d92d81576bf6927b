"""GFLOP/s of the three products of a Dense layer (forward, input and weight gradient),
fp32 and bf16, on the train step's shapes: one JSON line per shape and dtype.

  python benchmarks/dot_forms.py [--reps 30]

For x (M, K) @ w (K, N) with cotangent g (M, N): `forward` x w, `input_grad` g w^T,
`weight_grad_xla` x^T g as XLA's dot with a transposed lhs (what JAX's autodiff emits),
`weight_grad_ours` the same product through `blas_dot.weight_grad` (in float32, sgemm
with a transposed A where the handler builds; else, and in bf16, a row-major copy of the
narrower operand transposed, then a canonical dot, the copy timed with it). bf16
means bf16 operands, float32 sums and output (`model.matmul_dtype`). Why: XLA's CPU
backend gives YNNPACK only dots with a row-major lhs and upcasts the others from bf16 to
float32, so XLA's own weight gradient runs at fp32 speed (docs/performance.md).
"""
import argparse
import json
import time
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
import meldae_jax  # noqa: F401  first: the project's process settings

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from meldae_jax.ops import blas_dot
# pylint: enable=g-import-not-at-top,wrong-import-position

# (M, K, N): Ti112's qkv, out, MLP in/out (1600 tokens, width 192) and S112's (width 384).
SHAPES = [(1600, 192, 576), (1600, 192, 192), (1600, 192, 768), (1600, 768, 192),
          (1600, 384, 1152), (1600, 384, 1536), (1600, 1536, 384)]
F32 = jnp.float32


def forms():
  return {
      "forward": lambda x, w, g: lax.dot(x, w, preferred_element_type=F32),
      "input_grad": lambda x, w, g: lax.dot_general(
          g, w, (((1,), (1,)), ((), ())), preferred_element_type=F32),
      "weight_grad_xla": lambda x, w, g: blas_dot.transposed_lhs_dot(x, g),
      "weight_grad_ours": lambda x, w, g: blas_dot.weight_grad(x, g),
  }


def measure(m, k, n, dtype, reps, seed=0):
  """{form: GFLOP/s}, the forms timed in turns (one call each per turn)."""
  rng = np.random.default_rng(seed)
  x, w, g = (jnp.asarray(rng.standard_normal(s, np.float32), dtype)
             for s in ((m, k), (k, n), (m, n)))
  fns = {name: jax.jit(f) for name, f in forms().items()}
  for f in fns.values():
    f(x, w, g).block_until_ready()
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, f in fns.items():
      t0 = time.perf_counter()
      f(x, w, g).block_until_ready()
      times[name].append(time.perf_counter() - t0)
  return {name: 2 * m * k * n / float(np.median(t)) / 1e9 for name, t in times.items()}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--reps", type=int, default=30)
  p.add_argument("--shapes", default="", help="M,K,N[;M,K,N...] instead of SHAPES")
  args = p.parse_args(argv)
  shapes = ([tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
            if args.shapes else SHAPES)
  for m, k, n in shapes:
    for dtype in ("float32", "bfloat16"):
      gf = measure(m, k, n, jnp.dtype(dtype), args.reps)
      figures = {f"{f}_gflops_per_s": float(f"{v:.4g}") for f, v in gf.items()}
      print(json.dumps(dict(m=m, k=k, n=n, dtype=dtype, **figures)), flush=True)


if __name__ == "__main__":
  main()
