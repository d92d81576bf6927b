"""GFLOP/s of the train step's Dense matmul shapes, per library, one JSON line per shape.

  python benchmarks/matmul_shapes.py jax|sgemm|numpy        # in .venv
  /tmp/torchvenv/bin/python benchmarks/matmul_shapes.py torch  # PyTorch's MKL/oneDNN
  python benchmarks/matmul_shapes.py jax|torch --dtype bf16   # bf16 operands
  python benchmarks/matmul_shapes.py amx --dtype bf16         # float32, rounded in the call
  OPENBLAS_NUM_THREADS=1 taskset -c 0 python benchmarks/matmul_shapes.py numpy  # 1 core

`jax` is XLA's own dot, `sgemm` the project's custom call (`meldae_jax/ops/blas_dot.py`),
`numpy` the OpenBLAS numpy ships (`sgemm` and `numpy` are float32 only). With
`--dtype bf16` both operands are bf16: JAX's dot sums into float32
(`preferred_element_type`, as `model.matmul_dtype` runs it), `torch.mm` returns bf16 as
autocast's does (oneDNN; on CPUs with AMX, its tiles); `amx` is the project's AMX call
(`meldae_jax/ops/amx_gemm.py`), given float32 operands that it rounds to bf16 itself, as
`--dtype bf16_matmul` runs it (so its figures include the rounding). (M, K, N) are Ti112's (1600 tokens, width 192, MLP 768)
forward and backward shapes and S112's, plus the 4096^2 peak.
"""
import argparse
import json
import os
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position

SHAPES = [(1600, 192, 576), (1600, 192, 192), (1600, 192, 768), (1600, 768, 192),
          (192, 1600, 768), (768, 1600, 192), (1600, 384, 1152), (1600, 384, 1536),
          (1600, 1536, 384), (384, 1600, 1152), (384, 1600, 1536), (1536, 1600, 384),
          (4096, 4096, 4096)]


def _matmul(which, dtype="fp32"):
  if which == "numpy":
    return np.dot, lambda x: x
  if which == "torch":
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(int(os.environ.get("THREADS", os.cpu_count())))
    if dtype == "bf16":
      return torch.mm, lambda x: torch.from_numpy(x).to(torch.bfloat16)
    return torch.mm, torch.from_numpy
  import meldae_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from meldae_jax.ops import amx_gemm  # pylint: disable=g-import-not-at-top
  from meldae_jax.ops import blas_dot  # pylint: disable=g-import-not-at-top
  if which == "amx":
    if not amx_gemm.available():
      raise ValueError("amx: no CPU with AMX-BF16 (or no C++ compiler) here")
    fn = jax.jit(amx_gemm.gemm)
    return (lambda a, b: fn(a, b).block_until_ready()), jnp.asarray
  if dtype == "bf16":
    fn = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    return (lambda a, b: fn(a, b).block_until_ready()), (
        lambda x: jnp.asarray(x, jnp.bfloat16))
  fn = jax.jit(blas_dot.gemm if which == "sgemm" else jnp.dot)
  return (lambda a, b: fn(a, b).block_until_ready()), jnp.asarray


def main(which: str, dtype: str = "fp32", shapes=SHAPES):
  if dtype == "bf16" and which not in ("jax", "torch", "amx"):
    raise ValueError(f"--dtype bf16 is for jax, torch and amx, not {which}")
  if which == "amx" and dtype != "bf16":
    raise ValueError("amx rounds its operands to bf16: pass --dtype bf16")
  mm, convert = _matmul(which, dtype)
  rng = np.random.default_rng(0)
  for m, k, n in shapes:
    a = convert(rng.standard_normal((m, k), dtype=np.float32))
    b = convert(rng.standard_normal((k, n), dtype=np.float32))
    times = common.time_steps(lambda: mm(a, b), 5 if m == 4096 else 50, 1)  # noqa: B023
    med = float(np.median(times))
    print(json.dumps(dict(library=which, dtype=dtype, m=m, k=k, n=n, median_ms=med * 1e3,
                          gflops_per_s=2 * m * k * n / med / 1e9)), flush=True)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("which", choices=("jax", "sgemm", "numpy", "torch", "amx"))
  parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
  args = parser.parse_args()
  try:
    main(args.which, args.dtype)
  except ValueError as e:
    parser.error(str(e))
