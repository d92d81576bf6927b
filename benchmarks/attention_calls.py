"""The ViT attention core's pieces on the CPU, one at a time: one JSON line per piece.

  python benchmarks/attention_calls.py [--config S112] [--reps 50]

Pieces (per layer of the config's train step, N = B T frames of L tokens, H heads): the
four custom calls of `meldae_jax/ops/blas_attention.py` (`scores` q k^T, `context` p v,
`scores_grad` dctx v^T, `qkv_grad` the three products of d(q|k|v); the q|k|v bias
taken apart, as in the model), XLA's softmax and its gradient between them, a
read-and-write pass over q|k|v for the memory's pace, and the
whole core forward + backward through the calls and through XLA's batched dots. Each
line gives the median milliseconds, GFLOP/s of its products, and the MiB it must touch
at least once with the GB/s that makes (inputs read, outputs written; q|k|v's unused
third not counted). Why: the calls took 44-50 ms of an S112 train step under the profiler
(docs/performance.md); this says how much of that is products and how much the bytes.
"""
import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
import meldae_jax  # noqa: F401  first: the project's process settings

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from meldae_jax.models import attention as reference
from meldae_jax.models import vit
from meldae_jax.ops import blas_attention as calls
from meldae_jax.ops import host_alloc
# pylint: enable=g-import-not-at-top,wrong-import-position

F32 = 4  # bytes


def dims(config: str) -> tuple[int, int, int, int]:
  """(N frames, L tokens, D width, H heads) of a benchmark config's ViT layers."""
  shape = common.CONFIGS[config]
  v = vit.vit_dims(shape.variant)
  side = shape.image_size // v["patch"]
  return shape.batch * shape.frames, side * side + 1, v["width"], v["num_heads"]


def pieces(n, length, d, h):
  """{name: (fn, args, GFLOP, bytes)} for one layer."""
  rng = np.random.default_rng(0)
  qkv = jnp.asarray(rng.standard_normal((n, length, 3 * d), np.float32))
  bias = jnp.asarray(rng.standard_normal((3 * d,), np.float32))
  dctx = jnp.asarray(rng.standard_normal((n, length, d), np.float32))
  p = jax.nn.softmax(jnp.asarray(rng.standard_normal((n, h, length, length), np.float32)))
  dh, heads = d // h, np.int64(h)
  scaled = calls._scaled(h, d)  # pylint: disable=protected-access
  call = calls._call  # pylint: disable=protected-access
  product = 2 * n * h * length * length * dh / 1e9  # one (L x dh x L) product per head
  tokens, scores = n * length * d * F32, n * h * length * length * F32

  def core(attend):
    def loss(x):
      return jnp.vdot(attend(x), dctx)
    return jax.jit(jax.value_and_grad(loss))

  def softmax_grad(dp, p):
    return p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))

  def xla_core(x):
    q, k, v = (t.reshape(n, length, h, dh) for t in jnp.split(x, 3, axis=-1))
    return reference.dot_product_attention(q, k, v).reshape(n, length, d)

  return {
      "scores": (jax.jit(lambda x, b: call("scores", (n, h, length, length), x, b,
                                           **scaled)),
                 (qkv, bias), product, 2 * tokens + scores),
      "softmax": (jax.jit(jax.nn.softmax), (p,), 0.0, 2 * scores),
      "context": (jax.jit(lambda p, x, b: call("context", (n, length, d), p, x, b,
                                               heads=heads)),
                  (p, qkv, bias), product, scores + 2 * tokens),
      "scores_grad": (jax.jit(lambda g, x: call("scores_grad", (n, h, length, length), g,
                                                 x, heads=heads)),
                      (dctx, qkv), product, 2 * tokens + scores),
      "softmax_grad": (jax.jit(softmax_grad), (p, p), 0.0, 3 * scores),
      "qkv_grad": (jax.jit(lambda ds, p, g, x, b: call("qkv_grad", (n, length, 3 * d), ds,
                                                        p, g, x, b, **scaled)),
                   (p, p, dctx, qkv, bias), 3 * product,
                   2 * scores + 3 * tokens + 3 * tokens),
      "qkv_read_write": (jax.jit(lambda x: x * 1.0001), (qkv,), 0.0, 6 * tokens),
      "core_calls": (core(lambda x: calls.attention(x, h)), (qkv,), 6 * product,
                     6 * tokens + 3 * tokens),
      "core_xla": (core(xla_core), (qkv,), 6 * product, 6 * tokens + 3 * tokens),
  }


def measure(config: str, reps: int):
  """One dict per piece, the pieces timed in turns (one call each per turn)."""
  host_alloc.install()  # as in the step: big buffers stay mapped
  if not calls.enabled(jnp.float32):
    raise SystemExit("the attention custom calls are not available here (see "
                     "meldae_jax/ops/blas_attention.py); nothing to measure")
  n, length, d, h = dims(config)
  table = pieces(n, length, d, h)
  for fn, args, _, _ in table.values():
    jax.block_until_ready(fn(*args))
  # The two cores must compute the same thing for their times to be compared.
  (value_calls, grad_calls), (value_xla, grad_xla) = (
      table[k][0](*table[k][1]) for k in ("core_calls", "core_xla"))
  grad_diff = float(jnp.max(jnp.abs(grad_calls - grad_xla)))
  if not np.isclose(value_calls, value_xla, rtol=1e-4) or grad_diff > 1e-3:
    raise SystemExit(f"the custom calls disagree with XLA's attention: loss "
                     f"{value_calls} against {value_xla}, gradient off by {grad_diff}")
  times = {name: [] for name in table}
  for _ in range(reps):
    for name, (fn, args, _, _) in table.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  out = []
  for name, (_, _, gflop, nbytes) in table.items():
    med = float(np.median(times[name]))
    out.append(dict(config=config, piece=name, frames=n, tokens=length, width=d, heads=h,
                    median_ms=med * 1e3, min_ms=min(times[name]) * 1e3, gflop=gflop,
                    gflops_per_s=gflop / med if gflop else None,
                    mib=nbytes / 2**20, gb_per_s=nbytes / med / 1e9,
                    **({"grad_max_abs_diff": grad_diff} if name.startswith("core") else {})))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="S112", choices=sorted(common.CONFIGS))
  p.add_argument("--reps", type=int, default=50)
  a = p.parse_args(argv)
  if a.reps < 1:
    p.error("--reps must be at least 1")
  for line in measure(a.config, a.reps):
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main()
