"""Where a step's time goes on the CPU: a `jax.profiler` trace of a few steps, read back
per HLO instruction. Prints JSON lines.

  python benchmarks/trace_step.py --config S112 --mode train [--variant current]

XLA's CPU runtime runs independent thunks at once (here, on 2 cores), so a thunk's own
duration overstates its cost. Each thunk is charged its *share* of the wall clock: every
interval is split evenly among the thunks running in it. The shares add up to the time
the step spent in thunks, which is close to its wall time. Lines, all per step:
  `step`      wall seconds under the profiler, thunk seconds (the shares' sum);
  `overlap`   wall ms with `products` matmul thunks and `others` other thunks running;
  `products`  each matmul shape (lhs, rhs, out, where in the model): calls, ms (shares),
              GFLOP/s on those shares; YNNPACK's dot fusions, XLA's dots and the sgemm
              custom calls (`meldae_gemm`, `meldae_amx_gemm`), the FLOPs read from the compiled HLO;
  `category`  ms per (kind of thunk, part of the model);
  `alone`     the thunks that ran with no other thunk beside them (`--top`), summed over
              the encoder blocks; XLA's own loop fusions run on one core, so there the
              other core was idle (YNNPACK's fusions and the custom calls use both).
`--variant` is `ab_step.py`'s (an optimisation undone). The trace stays in `--trace-dir`
(default: a temporary folder) for Perfetto or TensorBoard.
"""
import argparse
import collections
import glob
import gzip
import json
import math
import pathlib
import re
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
import meldae_jax  # noqa: F401  first: the project's process settings

import jax

from benchmarks import ab_step
from benchmarks import common
from benchmarks import step
# pylint: enable=g-import-not-at-top,wrong-import-position

# name, result type (an array's or a tuple's), opcode, the rest of the line
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\w+\[[\d,]*\]\S*) ([\w\-]+)\((.*)$",
                    re.M)
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) [^\n]*\{\n(.*?)\n\}", re.M | re.S)
PARTS = (("optimizer", ("optax", "adam", "clip", "global_norm")),
         ("layernorm", ("LayerNorm", "encoder_norm")), ("mlp", ("MlpBlock",)),
         ("attention", ("Attention",)), ("vit", ("Transformer", "embedding")),
         ("temporal", ("temporal", "lstm")), ("enhancer", ("enhancer",)))


def _dims(text: str) -> list[int]:
  return [int(d) for d in text.split(",") if d]


def part_of(op_name: str) -> str:
  """The model part an HLO op_name names (its innermost module scope wins)."""
  best, where = -1, "other"
  for part, keys in PARTS:
    for key in keys:
      i = op_name.rfind(key)
      if i > best:
        best, where = i, part
  return where


_DOT = re.compile(r"= \w+\[([\d,]*)\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\),[^\n]*?"
                  r"lhs_contracting_dims=\{([\d,]*)\}")
_GEMM = re.compile(r"custom-call\(%([\w.\-]+), %([\w.\-]+)\)[^\n]*"
                   r"custom_call_target=\"meldae_(?:amx_)?gemm\"")


def _product(text: str, shapes: dict):
  """(FLOPs, (lhs, rhs, out) shapes) of the first dot or sgemm call in `text`, or None."""
  m = _DOT.search(text)
  if m and m.group(2) in shapes:
    out, lhs = _dims(m.group(1)), shapes[m.group(2)]
    k = math.prod(lhs[int(i)] for i in m.group(4).split(","))
    return 2.0 * math.prod(out) * k, (lhs, shapes.get(m.group(3)), out)
  m = _GEMM.search(text)
  if m and m.group(1) in shapes and m.group(2) in shapes:
    a, b = shapes[m.group(1)], shapes[m.group(2)]
    out = _dims(re.search(r"= \w+\[([\d,]*)\]", text).group(1))
    k = math.isqrt(math.prod(a) * math.prod(b) // math.prod(out))  # 2-D, one K
    return 2.0 * math.prod(out) * k, (a, b, out)
  return None


def hlo_index(hlo: str) -> dict[str, dict]:
  """Instruction name -> {op, part, kind, flops, shapes}: what each thunk of the trace is.
  `kind` is 'product' for matmuls (a dot, a YNNPACK fusion holding one, the sgemm call),
  else 'custom call', 'reduction', 'copy' or 'elementwise'; `flops` is 2 M N K."""
  bodies = {m.group(1): m.group(2) for m in _COMPUTATION.finditer(hlo)}
  instructions = list(_INSTR.finditer(hlo))
  shapes = {m.group(1): _dims(m.group(2)[m.group(2).index("[") + 1:m.group(2).index("]")])
            for m in instructions if not m.group(2).startswith("(")}  # unique names
  index = {}
  for m in instructions:
    name, opcode, rest = m.group(1), m.group(3), m.group(4)
    op = re.search(r'op_name="([^"]*)"', rest)
    op = op.group(1) if op else ""
    calls = re.search(r"calls=%([\w.\-]+)", rest)
    body = bodies.get(calls.group(1), "") if calls else ""
    product = _product(m.group(0), shapes) if opcode in ("dot", "custom-call") else (
        _product(body, shapes) if " dot(" in body else None)
    kind = ("product" if product else "custom call" if opcode == "custom-call"
            else "reduction" if opcode == "reduce" or " reduce(" in body
            else "copy" if opcode in ("copy", "transpose") or name.startswith(
                ("copy", "transpose")) else "elementwise")
    index[name] = dict(op=op, part=part_of(op), kind=kind,
                       flops=product[0] if product else 0.0,
                       shapes=product[1] if product else None)
  return index


def _intervals(events: list[dict]):
  """(length, indices of the events running) for each interval between the events'
  starts and ends, in time order (gaps included, with nothing running)."""
  points = sorted([(e["ts"], 1, i) for i, e in enumerate(events)] +
                  [(e["ts"] + e["dur"], -1, i) for i, e in enumerate(events)],
                  key=lambda p: (p[0], p[1]))
  active, last = set(), None
  for t, kind, i in points:
    if last is not None:
      yield t - last, active
    last = t
    if kind == 1:
      active.add(i)
    else:
      active.discard(i)


def shares(events: list[dict]) -> list[float]:
  """Each event's share of the wall clock: every interval split evenly among the events
  running in it (events: dicts with `ts` and `dur`, in the same unit)."""
  out = [0.0] * len(events)
  for length, active in _intervals(events):
    for j in active:
      out[j] += length / len(active)
  return out


def overlap(events: list[dict], is_product) -> dict[tuple[int, int], float]:
  """(products running, others running) -> wall time, over the events' span."""
  out = collections.Counter()
  for length, active in _intervals(events):
    n = sum(1 for j in active if is_product(events[j]))
    out[(n, len(active) - n)] += length
  return dict(out)


def thunk_events(trace_dir: str, index: dict) -> list[dict]:
  """The trace's complete events that are instructions of the compiled program."""
  files = glob.glob(str(pathlib.Path(trace_dir) / "**" / "*perfetto_trace.json.gz"),
                    recursive=True)
  if not files:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(sorted(files)[-1]) as f:
    trace = json.load(f)
  trace = trace["traceEvents"] if isinstance(trace, dict) else trace
  return [e for e in trace if e.get("ph") == "X" and e.get("name") in index]


def summarize(events: list[dict], share: list[float], index: dict, steps: int,
              top: int = 15) -> list[dict]:
  """The JSON lines (all but `step`) from the thunk events of `steps` steps and their
  `shares` (us)."""
  lines = []
  is_product = lambda e: index[e["name"]]["kind"] == "product"  # noqa: E731
  for (n, m), us in sorted(overlap(events, is_product).items(), key=lambda kv: -kv[1]):
    lines.append(dict(kind="overlap", products=n, others=m, ms=us / steps / 1e3))
  products = collections.defaultdict(lambda: [0, 0.0, 0.0])
  category = collections.defaultdict(float)
  for e, s in zip(events, share):
    info = index[e["name"]]
    category[(info["kind"], info["part"])] += s
    if info["kind"] == "product":
      scope = info["op"].split("/")[-2] if info["op"].count("/") > 1 else ""
      key = (json.dumps(info["shapes"]), info["part"], scope)
      products[key][0] += 1
      products[key][1] += s
      products[key][2] += info["flops"]
  for (shapes, part, scope), (n, us, flops) in sorted(products.items(),
                                                      key=lambda kv: -kv[1][1]):
    lhs, rhs, out = json.loads(shapes)
    lines.append(dict(kind="products", lhs=lhs, rhs=rhs, out=out, part=part, scope=scope,
                      calls_per_step=n / steps, ms=us / steps / 1e3,
                      gflops_per_s=flops / us / 1e3 if us else None))
  for (kind, part), us in sorted(category.items(), key=lambda kv: -kv[1]):
    lines.append(dict(kind="category", thunks=kind, part=part, ms=us / steps / 1e3))
  alone = collections.Counter()  # same thunk kind and op in every block: one entry
  for e, s in zip(events, share):
    if abs(s - e["dur"]) < 1e-6 * max(1.0, e["dur"]) and not is_product(e):
      info = index[e["name"]]
      alone[(re.sub(r"\.\d+$", "", e["name"]), info["kind"],
             re.sub(r"encoderblock_\d+", "encoderblock_*", info["op"]))] += s
  for (name, kind, op), us in alone.most_common(top):
    lines.append(dict(kind="alone", thunk=name, thunks=kind, op=op, ms=us / steps / 1e3))
  return lines


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="S112", choices=sorted(common.CONFIGS))
  p.add_argument("--mode", default="train", choices=("train", "infer"))
  p.add_argument("--dtype", default="fp32", choices=sorted(step.DTYPES))
  p.add_argument("--variant", default="current")
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--top", type=int, default=15)
  p.add_argument("--trace-dir", default=None)
  args = p.parse_args(argv)

  model, params, batch, tx, loss_cfg = ab_step.setup(args.config, args.mode, args.dtype)
  compiled, fn_args = ab_step.compile_variant(args.variant, args.mode, model, params,
                                              batch, tx, loss_cfg)
  index = hlo_index(compiled.as_text())

  def run(fn_args):
    out = jax.block_until_ready(compiled(*fn_args))
    return (out[0], batch) if args.mode == "train" else fn_args

  for _ in range(2):  # warm-up
    fn_args = run(fn_args)
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="meldae_trace_")
  print(f"tracing {args.steps} steps into {trace_dir}", file=sys.stderr, flush=True)
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      fn_args = run(fn_args)
    wall = (time.perf_counter() - t0) / args.steps
  events = thunk_events(trace_dir, index)
  share = shares(events)
  head = dict(kind="step", config=args.config, mode=args.mode, dtype=args.dtype,
              variant=args.variant, steps=args.steps, wall_s=wall,
              thunk_s=sum(share) / args.steps / 1e6, thunks=len(events),
              product_gflop=sum(index[e["name"]]["flops"] for e in events) / args.steps / 1e9)
  for line in [head] + summarize(events, share, index, args.steps, args.top):
    print(json.dumps(line))


if __name__ == "__main__":
  main()
