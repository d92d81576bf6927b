#!/usr/bin/env bash
# The GPU rows of docs/performance.md (issue 5): B224 and the paper's 16-clip batch in
# bf16, with MFU against the GPU's bf16 peak, one JSON line each into $OUT/gpu.jsonl,
# and a table at the end. Made for one short call of a lent GPU machine:
#
#   here:   bash benchmarks/gpu_suite.sh prepare   # wheels the GPU image lacks, into .whl/
#   there:  bash benchmarks/gpu_suite.sh run       # (the device tool: carry [".whl"])
#
# The GPU image has its own jax (0.11.2 with CUDA, 2026-11) but not ml_collections; the
# wheels pin the pure-Python packages this project was tested with against jax 0.11.2
# (flax, optax, ml_collections, einops). `prepare` needs pip and a package index.
# Each run is bounded by $RUN_TIMEOUT seconds and all of them by $BUDGET; a run that
# fails, times out or finds the budget spent is reported (with its last stderr) and the
# rest go on. Order: most wanted first. The PyTorch port (benchmarks/torch_port.py) runs
# the same step on the GPU in eager mode with bf16 autocast, and compiled.
# SMOKE=1 runs every row on the tiny model (a check of this script on any machine);
# ROWS=REGEX runs only the rows whose label matches it (grep -E), e.g. ROWS='^B224 train'.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/meldae_gpu}
PY=${PY:-python3}
STEPS=${STEPS:-20}
RUN_TIMEOUT=${RUN_TIMEOUT:-240}
BUDGET=${BUDGET:-500}   # seconds for all rows: the device tool's call limit is 600
TORCH_PY=${TORCH_PY:-$PY}  # the GPU image's python3 holds torch (2.11, 2026-11) and jax
WHEELS="flax==0.12.12 optax==0.2.8 ml_collections==1.1.0 einops==0.8.2"

if [[ ${1:-run} == prepare ]]; then
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl $WHEELS
  ls -l .whl
  exit
fi

mkdir -p "$OUT"
: > "$OUT/gpu.jsonl"  # this run's rows only, not an earlier run's
WHL=${WHL:-.whl}  # the carried wheels (tests point it elsewhere)
if compgen -G "$WHL/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHL"/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1
$PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
  || exit 1

run_row() {  # label, jax|torch, arguments...: its JSON line, labelled, to $OUT/gpu.jsonl
  local label=$1 kind=$2; shift 2
  [[ -n ${ROWS:-} ]] && ! grep -qE -- "$ROWS" <<< "$label" && return
  local script=benchmarks/step.py py=$PY
  if [[ $kind == torch ]]; then script=benchmarks/torch_port.py; py=$TORCH_PY; fi
  if [[ ${SMOKE:-0} == 1 ]]; then
    set -- $(echo "$@" | sed -E 's/--config [A-Za-z0-9]+/--config tiny/; s/--device cuda/--device cpu/') \
      --steps 1 --warmup 1 --peak-size 64
    [[ $kind == jax ]] && set -- "$@" --bf16-peak-size 32
  fi
  local left=$((BUDGET - SECONDS))
  if (( left < 30 )); then  # keep the whole command inside one device call
    echo "== $label: skipped (${BUDGET} s budget spent)" >&2
    echo "{\"label\": \"$label\", \"rc\": -1, \"error\": \"the suite's $BUDGET s budget was spent\"}" >> "$OUT/gpu.jsonl"
    return
  fi
  echo "== $label: $*" >&2
  local t0=$SECONDS
  timeout $(( left < RUN_TIMEOUT ? left : RUN_TIMEOUT )) $py $script "$@" > "$OUT/run.out" 2> "$OUT/run.err"
  local rc=$?
  if [[ $rc == 0 ]] && grep -q '^{' "$OUT/run.out"; then
    grep '^{' "$OUT/run.out" | tail -1 | sed "s/^{/{\"label\": \"$label\", /" >> "$OUT/gpu.jsonl"
  else
    echo "   failed (rc $rc) after $((SECONDS - t0)) s:" >&2; tail -5 "$OUT/run.err" >&2
    $PY -c "import json,sys; print(json.dumps(dict(label=sys.argv[1], rc=int(sys.argv[2]), error=open(sys.argv[3]).read()[-1500:])))" \
      "$label" "$rc" "$OUT/run.err" >> "$OUT/gpu.jsonl"
  fi
  echo "   $((SECONDS - t0)) s" >&2
}

B16="--batch 16 --steps $STEPS"
run_row "B224 train bf16 B16" jax --config B224 --mode train --dtype bf16 $B16
run_row "torch B224 train bf16 B16 eager" torch --config B224 --mode train --dtype bf16 $B16 --device cuda
run_row "B224 train bf16 B1" jax --config B224 --mode train --dtype bf16 --steps "$STEPS"
run_row "B224 infer bf16 B16" jax --config B224 --mode infer --dtype bf16 $B16
run_row "B224 train fp32 B16" jax --config B224 --mode train $B16
run_row "S112 train bf16 B16" jax --config S112 --mode train --dtype bf16 $B16
run_row "torch B224 train bf16 B16 compile" torch --config B224 --mode train --dtype bf16 $B16 --device cuda --backend compile
rm -f "$OUT/run.out" "$OUT/run.err"

$PY benchmarks/table.py "$OUT/gpu.jsonl"
