"""benchmarks/trace_step.py: thunks charged their share of the wall clock, matmuls found
with their FLOPs in the compiled HLO, and the whole run on the tiny config."""
import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import trace_step


def test_shares_split_each_interval_among_the_events_running_in_it():
  events = [dict(ts=0, dur=10), dict(ts=5, dur=10), dict(ts=20, dur=4)]
  # 0-5 the first alone, 5-10 both, 10-15 the second alone, 20-24 the third alone
  assert trace_step.shares(events) == [7.5, 7.5, 4.0]
  assert sum(trace_step.shares(events)) == 15 + 4  # the wall time with a thunk running
  got = trace_step.overlap(events, lambda e: e["dur"] == 10)
  assert got == {(1, 0): 10, (2, 0): 5, (0, 0): 5, (0, 1): 4}


def test_hlo_index_finds_the_matmul_and_its_flops():
  m, k, n = 48, 32, 16
  fn = jax.jit(lambda a, b: jnp.tanh(a @ b) * 2.0)
  a, b = jnp.ones((m, k)), jnp.ones((k, n))
  index = trace_step.hlo_index(fn.lower(a, b).compile().as_text())
  products = [v for v in index.values() if v["kind"] == "product"]
  assert products and {p["flops"] for p in products} == {2.0 * m * n * k}
  assert products[0]["shapes"][0] == [m, k] and products[0]["shapes"][2] == [m, n]
  assert any(v["kind"] == "elementwise" for v in index.values())


@pytest.mark.parametrize("op,part", [
    ("jit(train_step)/jvp(MELDAE)/backbone/Transformer/encoderblock_3/MlpBlock_0/mul",
     "mlp"),
    ("jit(train_step)/transpose(jvp(MELDAE))/backbone/Transformer/encoderblock_0/"
     "LayerNorm_1/add_any", "layernorm"),
    ("jit(train_step)/jvp(MELDAE)/backbone/Transformer/encoderblock_2/"
     "MultiHeadDotProductAttention_0/ffi_call", "attention"),
    ("jit(train_step)/add", "other")])
def test_part_of_names_the_innermost_module(op, part):
  assert trace_step.part_of(op) == part


def test_the_tiny_train_step_traces_and_adds_up(capsys, tmp_path):
  trace_step.main(["--config", "tiny", "--mode", "train", "--steps", "2",
                   "--trace-dir", str(tmp_path)])
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  head = lines[0]
  assert head["kind"] == "step" and head["thunks"] > 0 and head["product_gflop"] > 0
  assert 0 < head["thunk_s"] <= head["wall_s"] * 1.01
  categories = [l for l in lines if l["kind"] == "category"]
  assert sum(c["ms"] for c in categories) == pytest.approx(head["thunk_s"] * 1e3, rel=1e-6)
  products = [l for l in lines if l["kind"] == "products"]
  assert products and all(p["gflops_per_s"] > 0 for p in products)
  assert any(p["part"] in ("mlp", "attention") for p in products)
  overlap = [l for l in lines if l["kind"] == "overlap"]
  assert sum(o["ms"] for o in overlap) >= head["thunk_s"] * 1e3 * 0.99
