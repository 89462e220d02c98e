#!/bin/bash
# One GPU session's benchmarks inside a time budget: gpu_train.py's presets and decode_speed.py on
# JAX and torch (no TensorFlow needed), each stage under a timeout that keeps the whole run within
# $BUDGET seconds (default 560), results written to $OUT as each stage ends (log.txt, tables.md,
# rows.json), so a run cut short still returns what it finished.
#
#   OUT=results BUDGET=560 bash benchmarks/gpu_session.sh                 # every stage, in this order
#   OUT=results bash benchmarks/gpu_session.sh small_jax decode_jax       # some stages
#   WHEELS=.whl OUT=results bash benchmarks/gpu_session.sh               # install wheels first (no index)
#   SMOKE=1 OUT=/tmp/out PY=.venv/bin/python bash benchmarks/gpu_session.sh   # tiny shapes, any machine
#
# Corpora are prepared once into $DATA (default .gpu/data; gpu_train.py's --cache): prepare them
# before a short GPU lease with `python benchmarks/gpu_train.py --prepare-only --cache .gpu/data`.
# A machine with CUDA jax and torch but no package index needs keras and keras-hub as wheels (and
# what they import that such images lack); on 2026-12-04 an H200 image needed these, fetched with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#     --platform manylinux_2_17_x86_64 -d .whl keras==3.15.1 keras-hub==0.32.0 namex optree kagglehub kagglesdk
# Stage times seen on one H200 (2026-12-04): small_jax ~190 s for 5000 steps, small_torch ~360 s,
# gpt2_jax ~60 s, gpt2_torch ~110 s, decode_jax ~70 s a batch size, decode_torch ~70 s: more than
# one 10-minute call, so a session runs them as two calls (name the stages), the profiles
# (benchmarks/step_profile.py) after the figures.
START=$(date +%s); DEADLINE=$((START + ${BUDGET:-560} - 30))  # 30 s for the last stage's SIGKILL margin
PY=${PY:-python3}; DATA=${DATA:-.gpu/data}; OUT=${OUT:?set OUT to a folder for the results}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
if [ -n "$WHEELS" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -n "$SMOKE" ]; then
  TRAIN=(--steps 3 --batch-size 2 --seq-len 32 --override num_layers=1 --eval-blocks 2)
  DECODE=(--batches 1 --new-tokens 4 --eager-tokens 2 --repeats 1 --no-keras-hub)
  OVERHEAD=(--batches 1 --new-tokens 4 --rounds 1)
  PROFILE=(--steps 3 --warmup 1 --top 5 --override num_layers=1)
  PROFILE_TRAIN=(--override num_layers=1 --override hidden_dim=64 --override num_heads=2 --override intermediate_dim=128
                 --batch-size 2 --seq-len 32 --vocabulary 512 --steps 3 --warmup 1)
else
  TRAIN=(); DECODE=(--repeats 2); OVERHEAD=(--rounds 3); PROFILE=(); PROFILE_TRAIN=()
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
date -u; echo "cpus: $(nproc)"
KERAS_BACKEND=jax $PY -c "import sys, jax, torch, keras, keras_hub, numpy; print('python', sys.version.split()[0], \
'jax', jax.__version__, jax.devices(), 'torch', torch.__version__, torch.version.cuda, \
torch.cuda.is_available() and torch.cuda.get_device_name(0), 'keras', keras.__version__, \
'keras_hub', keras_hub.__version__, 'numpy', numpy.__version__)"
RES=$(mktemp -d)

stage() {  # NAME CAP_SECONDS COMMAND...
  local name=$1 cap=$2; shift 2
  local left=$((DEADLINE - $(date +%s))); local t=$(( cap < left ? cap : left ))
  if [ $t -lt 30 ]; then echo "=== $name skipped: ${left}s left"; return; fi
  echo "=== $name (timeout ${t}s) at $(( $(date +%s) - START ))s"
  local s=$(date +%s)
  # SIGTERM at the limit (a training run then stops after its step and writes its row), SIGKILL 30 s later
  timeout -k 30 $t "$@"; echo "=== $name exit $? after $(( $(date +%s) - s ))s"
  cat "$RES"/*.md > "$OUT/tables.md" 2>/dev/null
  $PY -c "import json, glob, sys; json.dump([r for f in sorted(glob.glob(sys.argv[1] + '/*.json')) \
for r in json.load(open(f))['rows']], open(sys.argv[2], 'w'), indent=1)" "$RES" "$OUT/rows.json"
}
train() {  # NAME CAP BACKEND PRESET
  stage "$1" "$2" env KERAS_BACKEND=${3%+compile} $PY benchmarks/gpu_train.py --backend "$3" --presets "$4" \
    --out "$RES/$1.json" --cache "$DATA" "${TRAIN[@]}"
}
run_stage() {
  case $1 in
    small_jax) train small_jax 240 jax small ;;
    gpt2_jax) train gpt2_jax 110 jax gpt2 ;;
    gpt2_torch) train gpt2_torch 150 torch gpt2 ;;
    gpt2_torch_compile) train gpt2_torch_compile 240 torch+compile gpt2 ;;
    decode_jax) stage decode_jax 160 env KERAS_BACKEND=jax $PY benchmarks/decode_speed.py "${DECODE[@]}" ;;
    decode_torch) stage decode_torch 100 env KERAS_BACKEND=torch $PY benchmarks/decode_speed.py "${DECODE[@]}" ;;
    small_torch) train small_torch 420 torch small ;;
    decode_overhead)  # each engine's own cost per token: a 1 x 32 model, whose step costs next to nothing
      stage decode_overhead 150 $PY benchmarks/decode_backends.py --backends jax torch --shape tiny "${OVERHEAD[@]}" ;;
    profile_decode_jax|profile_decode_torch)  # where a decode step's time goes (batch 1, then 8)
      local backend=${1#profile_decode_}
      stage "$1" 120 env KERAS_BACKEND=$backend $PY benchmarks/step_profile.py decode --batch 1 --steps 50 "${PROFILE[@]}"
      stage "$1_b8" 120 env KERAS_BACKEND=$backend $PY benchmarks/step_profile.py decode --batch 8 --steps 50 "${PROFILE[@]}" ;;
    profile_train_jax|profile_train_torch)  # where a gpt2 bf16 training step's time goes
      stage "$1" 150 env KERAS_BACKEND=${1#profile_train_} $PY benchmarks/step_profile.py train --preset gpt2 \
        --vocabulary 50257 --precision bf16 --batch-size 16 --seq-len 1024 --steps 10 "${PROFILE_TRAIN[@]}" ;;
    *) echo "unknown stage $1 (small_jax gpt2_jax gpt2_torch gpt2_torch_compile decode_jax decode_torch small_torch" \
            "decode_overhead profile_decode_jax profile_decode_torch profile_train_jax profile_train_torch)"; exit 2 ;;
  esac
}
for name in "${@:-small_jax gpt2_jax gpt2_torch decode_jax decode_torch decode_overhead profile_decode_jax profile_train_torch \
    profile_train_jax profile_decode_torch small_torch}"; do
  for one in $name; do run_stage "$one"; done
done
echo "=== done at $(( $(date +%s) - START ))s"
