#!/usr/bin/env bash
# Every CPU figure of docs/performance.md, one JSON line each, into $OUT (default
# /tmp/meldae_perf). Run on an otherwise idle machine:
#   bash benchmarks/cpu_suite.sh [compare|jax|torch|flags|optimizer|memory|bf16|trace|all]
# `compare` is the JAX/PyTorch table (benchmarks/compare.py: alternating processes);
# `trace` where the S112 train step's time goes (benchmarks/trace_step.py).
# JAX runs in .venv; the PyTorch port in $TORCH_PY (a Python 3.11 venv with
# torch==2.13.0 and numpy: see benchmarks/torch_port.py).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/meldae_perf}
PY=${PY:-.venv/bin/python}
TORCH_PY=${TORCH_PY:-/tmp/torchvenv/bin/python}
STEPS=${STEPS:-10}
mkdir -p "$OUT"
what=${1:-all}

labelled() {  # kind (jax|torch), label, command...: its last line, labelled, to $OUT/kind.jsonl
  local kind=$1 label=$2; shift 2
  echo "== $kind $label: ${*:3}" >&2   # the arguments after interpreter and script
  "$@" | tail -1 | sed "s/^{/{\"label\": \"$label\", /" >> "$OUT/$kind.jsonl"
}
jax_run() { local label=$1; shift; labelled jax "$label" $PY benchmarks/step.py "$@"; }
torch_run() { local label=$1; shift; labelled torch "$label" $TORCH_PY benchmarks/torch_port.py "$@"; }

compare_run() {  # rounds, compare.py arguments...: the summary line to $OUT/compare.jsonl
  local rounds=$1; shift
  echo "== compare $*" >&2
  $PY benchmarks/compare.py --rounds "$rounds" --torch-python "$TORCH_PY" "$@" \
    | tee -a "$OUT/compare_runs.jsonl" | grep '"kind": "compare"' >> "$OUT/compare.jsonl"
}
if [[ $what == compare || $what == all ]]; then
  compare_run 3 --config Ti112 --mode train --steps 20
  compare_run 3 --config Ti112 --mode infer --backend compile --steps 20
  compare_run 2 --config S112 --mode train --steps 10
  compare_run 2 --config S112 --mode infer --backend compile --steps 10
  compare_run 1 --config B224 --mode train --steps 3 --warmup 1
  compare_run 2 --config Ti112 --mode train --dtype bf16 --steps 10
  compare_run 2 --config Ti112 --mode infer --dtype bf16 --steps 20
  compare_run 1 --config S112 --mode train --dtype bf16 --steps 5
  compare_run 1 --config S112 --mode infer --dtype bf16 --steps 10
  # JAX with only the matmul operands in bf16 (model.matmul_dtype), as autocast does
  compare_run 3 --config Ti112 --mode train --dtype bf16 --jax-dtype bf16_matmul --steps 20
  compare_run 2 --config Ti112 --mode infer --dtype bf16 --jax-dtype bf16_matmul --steps 20
  compare_run 2 --config S112 --mode train --dtype bf16 --jax-dtype bf16_matmul --steps 10
  compare_run 1 --config S112 --mode infer --dtype bf16 --jax-dtype bf16_matmul --steps 10
fi
if [[ $what == bf16 || $what == all ]]; then
  $PY benchmarks/bf16_loss.py --config Ti112 --steps 30 >> "$OUT/bf16_loss.jsonl"
  $PY benchmarks/bf16_loss.py --config Ti112 --steps 30 --dtype bf16_matmul >> "$OUT/bf16_loss.jsonl"
  $PY benchmarks/dot_forms.py >> "$OUT/dot_forms.jsonl"  # each Dense product, fp32 and bf16
  $PY benchmarks/bf16_loss.py --config S112 --steps 30 --dtype bf16_matmul >> "$OUT/bf16_loss.jsonl"
  # XLA's bf16 path (the AMX call off): weight gradients as dots on a row-major copy
  MELDAE_CPU_AMX=0 $PY benchmarks/ab_step.py --config Ti112 --dtype bf16_matmul current \
    lhs_t_weight_grads --rounds 6 >> "$OUT/ab_step.jsonl"
  # on CPUs with AMX: the AMX call against XLA's converts and bf16 dots
  for c in Ti112 S112; do
    $PY benchmarks/ab_step.py --config $c --dtype bf16_matmul current xla_bf16_dots \
      --rounds 8 --per-turn 3 >> "$OUT/ab_step.jsonl"
  done
  $PY benchmarks/matmul_shapes.py amx --dtype bf16 >> "$OUT/matmul_shapes.jsonl"
  $PY benchmarks/matmul_shapes.py jax --dtype bf16 >> "$OUT/matmul_shapes.jsonl"
  $TORCH_PY benchmarks/matmul_shapes.py torch --dtype bf16 >> "$OUT/matmul_shapes.jsonl"
fi
if [[ $what == jax || $what == all ]]; then
  for c in Ti112 S112; do
    for m in train infer; do
      jax_run "$c $m fp32" --config $c --mode $m --steps $STEPS
      jax_run "$c $m bf16" --config $c --mode $m --dtype bf16 --steps $STEPS
      jax_run "$c $m bf16_matmul" --config $c --mode $m --dtype bf16_matmul --steps $STEPS
    done
  done
  jax_run "B224 train fp32" --config B224 --mode train --steps 3 --warmup 1
  jax_run "B224 infer fp32" --config B224 --mode infer --steps 3 --warmup 1
  jax_run "B224 train bf16_matmul" --config B224 --mode train --dtype bf16_matmul --steps 3 --warmup 1
fi
if [[ $what == torch || $what == all ]]; then
  for c in Ti112 S112; do
    for m in train infer; do
      torch_run "$c $m eager fp32" --config $c --mode $m --steps $STEPS
      torch_run "$c $m eager bf16" --config $c --mode $m --dtype bf16 --steps $STEPS
    done
    torch_run "$c infer compile fp32" --config $c --mode infer --backend compile --steps $STEPS
  done
  torch_run "B224 train eager fp32" --config B224 --mode train --steps 3 --warmup 1
fi
if [[ $what == flags || $what == all ]]; then
  # Before/after of each candidate XLA flag, with the project's own flags switched off.
  for f in "" "--xla_cpu_experimental_ynn_fusion_type=" "--xla_cpu_use_onednn=true" \
           "--xla_cpu_experimental_xnn_fusion_type=dot"; do
    for m in train infer; do
      MELDAE_XLA_FLAGS=0 XLA_FLAGS="$f" jax_run "flags[$f] Ti112 $m" --config Ti112 --mode $m --steps $STEPS
    done
  done
fi
if [[ $what == optimizer || $what == all ]]; then
  # the optimiser step alone: the fused AdamW call against optax's XLA ops
  for c in Ti112 S112; do
    $PY benchmarks/optimizer_step.py --config $c >> "$OUT/optimizer.jsonl"
  done
fi
if [[ $what == memory || $what == all ]]; then
  $PY benchmarks/step.py --memory-sweep --sweep-remat none,full,dots --steps 3 --warmup 1 >> "$OUT/memory.jsonl"
fi
if [[ $what == trace || $what == all ]]; then
  $PY benchmarks/trace_step.py --config S112 --mode train --top 25 >> "$OUT/trace.jsonl"
fi
echo "results in $OUT" >&2
