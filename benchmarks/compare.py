"""JAX against the PyTorch port on this machine, in alternating processes, as JSON.

  python benchmarks/compare.py --config Ti112 --mode train --rounds 3 \
      --torch-python /tmp/torchvenv/bin/python [--backend eager|compile] [--dtype bf16]

Why: on a shared VM one process's median drifts by +-20 % over minutes, as much as the
gap being measured. Each round runs `step.py` (JAX) and `torch_port.py` (PyTorch) once
each, in fresh processes, the order swapped every round so that neither side always
runs first; the figure is the ratio PyTorch / JAX of each round's medians (> 1: JAX is
faster), summarised by the median, min and max over the rounds. Prints one JSON line per
run (`kind: run`) and a summary line (`kind: compare`). Both sides get the same
`--steps`/`--warmup`; the matmul peaks are skipped (`--peak-size 0`).
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position

KEEP = ("config", "mode", "dtype", "median_s", "min_s", "max_s", "cpu_s_per_step",
        "steps_steal_fraction", "compile_seconds", "steps_peak_rss_mib", "gflops_per_s",
        "cpu_gemm", "blas_core", "backend", "torch_threads", "loss")


def last_json(stdout: str) -> dict | None:
  lines = [l for l in stdout.splitlines() if l.startswith("{")]
  return json.loads(lines[-1]) if lines else None


def run_one(cmd: list[str], timeout: float | None = None) -> dict:
  """One benchmark process -> its JSON figures; a failure names the command."""
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
  figures = last_json(proc.stdout)
  if proc.returncode or figures is None:
    raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")
  return figures


def commands(a) -> dict[str, list[str]]:
  common_args = ["--config", a.config, "--mode", a.mode,
                 "--steps", str(a.steps), "--warmup", str(a.warmup), "--peak-size", "0"]
  here = pathlib.Path(__file__).resolve().parent
  return dict(
      jax=[a.jax_python, str(here / "step.py"), *common_args,
           "--dtype", a.jax_dtype or a.dtype],
      torch=[a.torch_python, str(here / "torch_port.py"), *common_args,
             "--dtype", a.dtype, "--backend", a.backend])


def summarise(rounds: list[dict]) -> dict:
  """Ratios PyTorch / JAX of each round's medians (> 1: JAX faster)."""
  ratios = [r["torch"]["median_s"] / r["jax"]["median_s"] for r in rounds]
  med = lambda side: statistics.median(r[side]["median_s"] for r in rounds)  # noqa: E731
  return dict(rounds=len(rounds), ratios=ratios, ratio_median=statistics.median(ratios),
              ratio_min=min(ratios), ratio_max=max(ratios), jax_median_s=med("jax"),
              torch_median_s=med("torch"))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="Ti112", choices=sorted(common.CONFIGS))
  p.add_argument("--mode", default="train", choices=("train", "infer"))
  p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
  p.add_argument("--backend", default="eager", choices=("eager", "compile"),
                 help="the PyTorch side's")
  p.add_argument("--jax-dtype", default=None, choices=("fp32", "bf16", "bf16_matmul"),
                 help="the JAX side's, if not --dtype (bf16_matmul: autocast's kind)")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--jax-python", default=sys.executable)
  p.add_argument("--torch-python", default="/tmp/torchvenv/bin/python",
                 help="an interpreter with torch (see torch_port.py)")
  p.add_argument("--timeout", type=float, default=1800, help="seconds per process")
  a = p.parse_args(argv)
  if a.rounds < 1 or a.steps < 1:
    p.error("--rounds and --steps must be at least 1")
  cmds = commands(a)
  rounds = []
  for r in range(a.rounds):
    order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
    result = {}
    for side in order:
      print(f"round {r + 1}/{a.rounds}: {side}", file=sys.stderr, flush=True)
      figures = run_one(cmds[side], a.timeout)
      result[side] = {k: figures.get(k) for k in KEEP}
      common.emit(dict(kind="run", side=side, round=r + 1, **result[side]))
    rounds.append(result)
  common.emit(dict(kind="compare", config=a.config, mode=a.mode, dtype=a.dtype,
                   jax_dtype=a.jax_dtype or a.dtype,
                   torch_backend=a.backend, steps=a.steps, warmup=a.warmup,
                   **summarise(rounds), **common.host_figures()))


if __name__ == "__main__":
  main()
