#!/usr/bin/env bash
# One GPU session: the CUDA tests of the sampler, kernels and model, then the sampler and learner tables.
# Writes logs under $OUT (default ./gpu_out). Usage: bash benchmarks/gpu_session.sh [tests] [sampler] [train] (default all)
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
what=${*:-all}
has() { [[ " $what " == *" $1 "* || " $what " == *" all "* ]]; }
nvidia-smi --query-gpu=name,memory.used,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
if has tests; then
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/model/test_engine_gpu.py tests/model/test_gpu.py \
    tests/kernels/test_decode_attn.py -s 2>&1 | tee "$OUT/tests.txt" | grep -E "passed|failed|mean \||Error|error|Warning" | tail -20
fi
if has sampler; then
  timeout 300 python3 benchmarks/sampler.py --device cuda --loop-steps 8 --logprobs ${SAMPLER_ARGS:-} --json "$OUT/sampler.json" \
    2>&1 | tee "$OUT/sampler.txt" | grep -v "^ " | grep -v "^{" | tail -40
fi
if has train; then
  for m in small minimax-1b; do
    timeout 150 python3 benchmarks/train.py --device cuda --model $m --seq-lens 8192 --tokens 32768 --micro 2 \
      --steps 2 --backends triton --json "$OUT/train_$m.json" 2>&1 | tee "$OUT/train_$m.txt" | tail -3
  done
fi
