#!/usr/bin/env bash
# The GPU check in one command, offline: install the taken-along wheels, find cuBLAS, build
# random-weight models (Llama-3-8B shapes, and a small one), then self-check, ask, bench,
# lanes and compute types, writing one JSON line per step to $OUT/results.jsonl as it goes.
#
# On the GPU host (no network; prepare with bench/gpu-wheels.sh and take .gpu-take along):
#     OUT=/some/dir bench/gpu.sh
# On any machine, the same steps on the CPU with tiny models and no wheels (CI runs this):
#     bench/gpu.sh --rehearse            # OUT defaults to a new temporary folder
# GPU_WHEELS=1 adds the offline wheels step to the rehearsal, PYTHON picks the interpreter
# (a python3.12 with only the host's packages checks that the wheels cover the rest).
#
# Every step has its own time limit and the whole run a budget (GPU_BUDGET_S, default 420 s;
# the build of the 8B model takes a good part of it): a step that fails or times out is
# recorded with its error and the run goes on; steps the budget no longer allows are
# recorded as skipped. Nothing here calls pip against a registry.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

mode=gpu
[ "${1:-}" = "--rehearse" ] && mode=rehearse

# The benches, through one variable (the only place that names how they are invoked).
BENCH="${BENCH:-python3 -m bench --env-file /dev/null}"

if [ "$mode" = rehearse ]; then
    out="${OUT:-$(mktemp -d -t llamacord-gpu-rehearse.XXXXXX)}"
    budget="${GPU_BUDGET_S:-200}"
    py="${PYTHON:-$( [ -x .venv/bin/python ] && echo "$root/.venv/bin/python" || echo python3)}"
    device=cpu
    types=(int8 float32)          # stand-ins for int8_float16 and bfloat16
    big=rehearse-big small=rehearse-small
    new_tokens=16 mixed_minutes=0.05 agree_tokens=16
    agree_device_types=float32,int8 agree_cpu_types=float32,int8
else
    out="${OUT:-/tmp/llamacord-gpu-out}"
    budget="${GPU_BUDGET_S:-420}"
    py="${PYTHON:-python3}"
    device=cuda
    types=(int8_float16 bfloat16)  # CTranslate2 #1933: int8 may fail under cuBLAS 13
    big=8b small=small
    # CTranslate2 4.8.5 has no sm_90 code: the driver compiles its PTX once; keep all of it.
    export CUDA_CACHE_MAXSIZE=4294967296
    new_tokens=128 mixed_minutes=0.5 agree_tokens=64
    agree_device_types=float32,int8_float16 agree_cpu_types=float32,int8
fi
# `python3` in BENCH means the interpreter chosen here (the rehearsal's may be .venv's).
BENCH="${BENCH/#python3 /$py }"
take="${GPU_TAKE:-$root/.gpu-take}"
work="$(mktemp -d "${GPU_WORK:-${TMPDIR:-/tmp}}/llamacord-gpu-work.XXXXXX")"  # models: 15 GB
mkdir -p "$out/steps"
results="$out/results.jsonl"
: > "$results"
started_run=$(date +%s)
deadline=$((started_run + budget))
smi_pid=""
cleanup() {
    [ -n "$smi_pid" ] && kill "$smi_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

export PYTHONPATH="$work/site:$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export BOT_DATABASE_PATH="$work/bot.sqlite3" BOT_MODELS_ROOT="$work/models" BOT_DEVICE="$device"
export BOT_LOG_LEVEL=WARNING CT2_VERBOSE="${CT2_VERBOSE:-1}"
steps="$py $root/bench/gpu_steps.py"

# step NAME LIMIT_S COMMAND...: run it under its own limit (and the budget's), record it.
step() {
    local name=$1 limit=$2; shift 2
    local now left t0 rc ms
    now=$(date +%s); left=$((deadline - now))
    if [ "$left" -lt 5 ]; then
        $steps record "$name" 0 0 "$now" /dev/null /dev/null "$results" --limit "$limit" \
            --skipped "the run's budget (${budget} s) was spent"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    t0=$(date +%s%N)
    timeout -k 5 "$limit" "$@" > "$out/steps/$name.out" 2> "$out/steps/$name.err"
    rc=$?
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    $steps record "$name" "$rc" "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))" "${t0:0:10}" \
        "$out/steps/$name.out" "$out/steps/$name.err" "$results" --limit "$limit"
    return "$rc"
}
skip() {  # skip NAME WHY
    $steps record "$1" 0 0 "$(date +%s)" /dev/null /dev/null "$results" --skipped "$2"
}

install_wheels() {
    # Into a private target: nothing of the host's Python changes. pip when the host has
    # it (never a registry: --no-index), else the wheels unpacked, which is what --target does.
    [ -d "$take/wheels" ] || { echo "no $take/wheels: run bench/gpu-wheels.sh first" >&2; return 1; }
    (cd "$take/wheels" && sha256sum -c --quiet ../SHA256SUMS) || return 1
    if "$py" -m pip --version >/dev/null 2>&1; then
        PIP_CONFIG_FILE=/dev/null "$py" -m pip install --quiet --no-index --no-deps --disable-pip-version-check \
            --target "$work/site" "$take"/wheels/*.whl || return 1
    else
        mkdir -p "$work/site"
        for w in "$take"/wheels/*.whl; do
            "$py" -m zipfile -e "$w" "$work/site" || return 1
        done
    fi
    ls "$work/site"
}

# ---------------------------------------------------------------------------- the steps
echo "llamacord GPU check ($mode): results in $results" >&2
step env 30 $steps env
if [ "$mode" = rehearse ] && [ "${GPU_WHEELS:-0}" != 1 ]; then
    skip wheels "rehearsal: the checkout's own environment (GPU_WHEELS=1 installs them)"
else
    export take py work
    export -f install_wheels
    step wheels 120 bash -c install_wheels
fi
step cublas 30 $steps cublas --shim "$work/cu12shim" --env-file "$work/cublas.env" \
    $( [ "$mode" = gpu ] && echo --require )
# shellcheck disable=SC1091
[ -f "$work/cublas.env" ] && . "$work/cublas.env"
step cublas_check 30 $steps cublas-check $( [ "$mode" = gpu ] && echo --require )
step imports 60 $steps imports $( [ "$mode" = gpu ] && echo --require-cuda )

if command -v nvidia-smi >/dev/null 2>&1; then
    # Memory every 0.5 s, time-stamped by nvidia-smi, for the gpu_memory step's per-step peaks.
    nvidia-smi --query-gpu=timestamp,memory.used,memory.total --format=csv,noheader,nounits \
        -lms 500 > "$out/smi.csv" 2>/dev/null &
    smi_pid=$!
fi

tok="$take/tokenizer"
if [ "$mode" = rehearse ]; then
    tok="$work/tokenizer"
    step tokenizer 60 $steps tokenizer "$tok"
fi
small_dir="$work/models/$small" big_dir="$work/models/$big"
step model_small 90 $steps build --shape "$small" --tokenizer "$tok" --out "$small_dir" \
    --device "$device"
step agree 120 $steps agree --model "$small_dir" --device "$device" \
    --device-types "$agree_device_types" --cpu-types "$agree_cpu_types" \
    --tokens "$agree_tokens"
step model_8b 300 $steps build --shape "$big" --tokenizer "$tok" --out "$big_dir" \
    --device "$device"
export BOT_MODEL_DIR="$big_dir"

export BOT_INTER_THREADS=1 BOT_COMPUTE_TYPE="${types[0]}"
# The start-up self-check per compute type until one passes (CTranslate2 #1933: int8 may
# fail under cuBLAS 13); the ask, the mixed bench and the lanes then use the one that passed.
good=""
for ct in "${types[@]}"; do
    if BOT_COMPUTE_TYPE="$ct" step "selfcheck_$ct" 150 $steps selfcheck; then good=$ct; break; fi
done
good=${good:-${types[0]}}
export BOT_COMPUTE_TYPE="$good"
# Default knobs: top_p 0.95 over the whole vocabulary (bounded to 8,192 on CUDA).
step ask 150 $py -m bot --env-file /dev/null ask \
    "Write two sentences about a lighthouse keeper." --seed 1
for ct in "${types[@]}"; do  # one stream, 4- and 8-way, TTFT; each compute type on its own
    BOT_COMPUTE_TYPE="$ct" step "bench_$ct" 180 $BENCH --json --new-tokens "$new_tokens"
done
step "mixed_$good" 240 $BENCH --mixed --json --minutes "$mixed_minutes"
for lanes in 2 4; do
    BOT_INTER_THREADS=$lanes step "lanes${lanes}_$good" 180 $BENCH --json \
        --new-tokens "$new_tokens"
done

[ -n "$smi_pid" ] && { kill "$smi_pid" 2>/dev/null; wait "$smi_pid" 2>/dev/null; smi_pid=""; }
deadline=$((deadline + 30))  # the two summaries are cheap; let them run even at the end
step gpu_memory 15 $steps gpu-memory --samples "$out/smi.csv" --results "$results"
step bandwidth 30 $steps bandwidth --model "$big_dir" --results "$results" --device "$device"

total=$(( $(date +%s) - started_run ))
"$py" - "$results" "$total" "$mode" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
failed = [l["step"] for l in lines if not l["ok"] and "skipped" not in l]
skipped = [l["step"] for l in lines if "skipped" in l]
summary = {"step": "summary", "mode": sys.argv[3], "seconds": int(sys.argv[2]),
           "steps": len(lines), "failed": failed, "skipped": skipped}
print(json.dumps(summary))
with open(sys.argv[1], "a", encoding="utf-8") as fh:
    fh.write(json.dumps(summary) + "\n")
EOF
echo "results: $results" >&2
