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
# Each run is bounded by $RUN_TIMEOUT seconds; a run that fails or times out is
# reported with its last stderr and the rest go on. Order: most wanted first.
# SMOKE=1 runs every row on the tiny model (a check of this script on any machine).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/meldae_gpu}
PY=${PY:-python3}
STEPS=${STEPS:-20}
RUN_TIMEOUT=${RUN_TIMEOUT:-240}
WHEELS="flax==0.12.12 optax==0.2.8 ml_collections==1.1.0 einops==0.8.2"

if [[ ${1:-run} == prepare ]]; then
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl $WHEELS
  ls -l .whl
  exit
fi

mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1
$PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
  || exit 1

gpu_run() {  # label, step.py arguments...: its JSON line, labelled, to $OUT/gpu.jsonl
  local label=$1; shift
  if [[ ${SMOKE:-0} == 1 ]]; then
    set -- $(echo "$@" | sed -E 's/--config [A-Za-z0-9]+/--config tiny/') \
      --steps 1 --warmup 1 --peak-size 64 --bf16-peak-size 32
  fi
  echo "== $label: $*" >&2
  local t0=$SECONDS
  timeout "$RUN_TIMEOUT" $PY benchmarks/step.py "$@" > "$OUT/run.out" 2> "$OUT/run.err"
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

gpu_run "B224 train bf16 B16" --config B224 --mode train --dtype bf16 --batch 16 --steps "$STEPS"
gpu_run "B224 train bf16 B1" --config B224 --mode train --dtype bf16 --steps "$STEPS"
gpu_run "B224 infer bf16 B16" --config B224 --mode infer --dtype bf16 --batch 16 --steps "$STEPS"
gpu_run "B224 train fp32 B16" --config B224 --mode train --batch 16 --steps "$STEPS"
gpu_run "S112 train bf16 B16" --config S112 --mode train --dtype bf16 --batch 16 --steps "$STEPS"
rm -f "$OUT/run.out" "$OUT/run.err"

$PY benchmarks/table.py "$OUT/gpu.jsonl"
