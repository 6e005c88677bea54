#!/usr/bin/env bash
# One GPU session: the CUDA tests of the sampler, kernels and model, then the sampler and learner tables.
# Writes logs under $OUT (default ./gpu_out). Usage: bash benchmarks/gpu_session.sh [tests|sampler|train|all]...
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
what=${*:-all}
has() { [[ " $what " == *" $1 "* || " $what " == *" all "* ]]; }
nvidia-smi --query-gpu=name,memory.used,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
if has tests; then
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/model/test_engine_gpu.py tests/model/test_gpu.py \
    tests/kernels/test_decode_attn.py tests/model/test_engine.py -s 2>&1 | tee "$OUT/tests.txt" | tail -25
fi
if has sampler; then
  timeout 330 python3 benchmarks/sampler.py --device cuda --profile --loop-steps 8 --json "$OUT/sampler.json" \
    2>&1 | tee "$OUT/sampler.txt" | grep -v "^ " | tail -60
fi
if has train; then
  for m in small minimax-1b; do
    timeout 240 python3 benchmarks/train.py --device cuda --model $m --seq-lens 8192 --tokens 32768 --micro 2 \
      --steps 2 --backends triton --json "$OUT/train_$m.json" 2>&1 | tee "$OUT/train_$m.txt" | tail -4
  done
fi
