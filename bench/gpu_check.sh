#!/usr/bin/env bash
# GPU checks of the TensorRT backend, in one go (under 10 minutes on one NVIDIA GPU):
#   1. build every TensorRT plan a run uses   (cer-stream engines build --backend tensorrt)
#   2. the `gpu` tests                         (pytest -m gpu: real models, TensorRT vs ONNX Runtime)
#   3. the end-to-end latency benchmark        (bench/latency.py --backend tensorrt)
#   4. per-model engine latency                (bench/engines.py, ONNX Runtime and TensorRT)
# Figures go to bench/results/ (gpu-*.json / gpu-*.md, and the logs gpu-*.log).
# Where there is no NVIDIA GPU, or tensorrt/pycuda are missing, it stops at once with one line
# and exit status 2. Otherwise every step runs (a failed one does not stop the others) and the
# exit status is 1 if any failed.
#
#   bash bench/gpu_check.sh            (from anywhere; uses $PYTHON, else .venv/bin/python, else python3)
#   bash bench/gpu_check.sh --smoke [--smoke-dir DIR]
#
# --smoke checks that the script still runs (tests/test_bench_smoke.py): only the two benchmarks,
# each in its own --smoke mode on TensorRT (bench/latency.py: 2 s of the clip; bench/engines.py:
# batch 1, 3 calls), into --smoke-dir (default a new temporary folder, never bench/results/).
# Where there is no GPU or TensorRT it says so in one line and exits 77 (skipped).
set -euo pipefail

SMOKE=0
SMOKE_DIR=
while (( $# )); do
    case $1 in
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
        --smoke) SMOKE=1 ;;
        --smoke-dir) SMOKE_DIR=$(realpath -m "${2:?--smoke-dir needs a folder}"); shift ;;
        *) echo "gpu_check: error: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
BUDGET_S=${GPU_CHECK_BUDGET_S:-570}   # all steps together, under 10 minutes
OUT=bench/results
if (( SMOKE )); then
    results=$(realpath -m bench/results)
    if [[ $SMOKE_DIR == "$results" || $SMOKE_DIR == "$results"/* ]]; then
        echo "gpu_check: error: --smoke-dir $SMOKE_DIR: a smoke run never writes into bench/results/" >&2; exit 2
    fi
    NO_RUN="skipped"; NO_RUN_STATUS=77; PREFIX="gpu_check: smoke: "
else
    NO_RUN="nothing run"; NO_RUN_STATUS=2; PREFIX="gpu_check: "
fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "${PREFIX}no NVIDIA GPU here (nvidia-smi missing or failing); $NO_RUN" >&2
    exit $NO_RUN_STATUS
fi
if ! "$PYTHON" -c "import tensorrt, pycuda.driver" >/dev/null 2>&1; then
    echo "${PREFIX}tensorrt or pycuda not importable by $PYTHON (pip install '.[gpu]'); $NO_RUN" >&2
    exit $NO_RUN_STATUS
fi

if (( SMOKE )); then
    OUT=${SMOKE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/cer-bench-gpu_check-smoke-XXXXXX")}
fi
mkdir -p "$OUT"
failed=()
# run NAME CAP_S CMD...: the step's output to $OUT/gpu-NAME.log and the terminal, within CAP_S
# seconds and what is left of the budget.
run() {
    local name=$1 cap=$2; shift 2
    local left=$((BUDGET_S - SECONDS))
    local limit=$(( cap < left ? cap : left ))
    if (( limit < 20 )); then
        echo "gpu_check: $name skipped (time budget spent)"; failed+=("$name (no time left)"); return 0
    fi
    echo "== $name (limit ${limit}s): $*"
    local rc=0
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/gpu-$name.log" || rc=${PIPESTATUS[0]}
    if (( rc != 0 )); then failed+=("$name (exit $rc)"); fi
    return 0
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$PYTHON" -c "import tensorrt, pycuda, onnxruntime; print('tensorrt', tensorrt.__version__, '| pycuda', pycuda.VERSION_TEXT, '| onnxruntime', onnxruntime.__version__)"
} | tee "$OUT/gpu-machine.txt"

if (( SMOKE )); then
    run latency 240 "$PYTHON" bench/latency.py --smoke --smoke-dir "$OUT/latency" --backend tensorrt
    run engines 240 "$PYTHON" bench/engines.py --smoke --smoke-dir "$OUT/engines" --backends onnxruntime tensorrt
    if (( ${#failed[@]} )); then echo "gpu_check: smoke: FAILED: ${failed[*]} (logs in $OUT)" >&2; exit 1; fi
    echo "gpu_check: smoke: ok; reports and logs in $OUT"
    exit 0
fi
run build   240 "$PYTHON" -m stream.cli engines build --backend tensorrt
run tests   200 "$PYTHON" -m pytest -q -m gpu tests/test_engines.py tests/test_engine_fallback.py
run latency 240 "$PYTHON" bench/latency.py --video samples/astronaut.mp4 --backend tensorrt --repeat 3 --no-peer \
    --json "$OUT/gpu-latency.json" --md "$OUT/gpu-latency.md"
run engines 120 "$PYTHON" -m bench.engines --backends onnxruntime tensorrt --runs 30 \
    --json "$OUT/gpu-engines.json" --markdown "$OUT/gpu-engines.md"

echo "gpu_check: ${SECONDS}s; figures in $OUT/gpu-*.{json,md}, logs in $OUT/gpu-*.log"
if (( ${#failed[@]} )); then
    echo "gpu_check: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "gpu_check: all steps passed"
