#!/usr/bin/env bash
# One prepared GPU check (under 8 minutes on an H100/H200-class device):
#   1. the gpu-marked tests (pytest -m gpu),
#   2. training throughput, peak GPU memory and MFU (benchmarks/bench_gpu.py) of minilm
#      and smollm2 (full, LoRA) and of a ~1B-parameter Llama-shaped backbone built from a
#      config (bf16; full, LoRA, 4-bit, gradient checkpointing).
# Usage: benchmarks/gpu_check.sh [--dry-run] [bench_gpu.py options, e.g. --peak-tflops 989]
#   --dry-run: no GPU needed; skips the tests and builds every configuration tiny on the
#   CPU, one step each, and prints the table (exercised by tests/test_gpu_check.py).
# Environment: PYTHON (default: python) is the interpreter with nwb-llmdecode installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
dry=0
for a in "$@"; do [[ "$a" == "--dry-run" ]] && dry=1; done

if [[ $dry == 1 ]]; then
  echo "== gpu tests: skipped (--dry-run; would run: $PY -m pytest -m gpu -q)"
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device (use --dry-run)')"
  "$PY" -c "import torch; print('== device:', torch.cuda.get_device_name(0))"
  echo "== gpu tests (pytest -m gpu)"
  rc=0
  timeout 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests || rc=$?
  # 5: no test collected for the marker; anything else non-zero is a failure (reported,
  # then the throughput figures are still taken)
  if [[ $rc != 0 && $rc != 5 ]]; then echo "== gpu tests FAILED (exit $rc)"; fi
fi
echo "== throughput (benchmarks/bench_gpu.py $*)"
timeout 330 "$PY" benchmarks/bench_gpu.py "$@"
