#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the CUDA-only tests, then the benchmark (its GPU rows included).
#
#   bash scripts/gpu_check.sh [OUTPUT_DIR] [benchmark flags ...]      # default OUTPUT_DIR: outputs/gpu_check
#
# Writes gpu.txt (nvidia-smi), gpu_tests.log, benchmark.log and benchmark.json to OUTPUT_DIR. The benchmark
# runs even if a test fails; the exit status is non-zero if either failed. PYTHON picks the interpreter
# (default: python3).
set -uo pipefail
out=${1:-"$(dirname "$0")/../outputs/gpu_check"}
shift || true
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
"$python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" 2>&1 | tee -a "$out/gpu.txt"
"$python" -m pytest -q -rs tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.log" || status=1
"$python" scripts/benchmark.py --output_json "$out/benchmark.json" "$@" 2>&1 | tee "$out/benchmark.log" || status=1
exit $status
