#!/usr/bin/env bash
# One GPU session: the CUDA tests of the sampler, kernels and model, then the sampler and learner tables.
# Writes logs under $OUT (default ./gpu_out). Usage: bash benchmarks/gpu_session.sh [tests] [sampler] [train] (default all)
# Needs lightswe importable with its light dependencies (gymnasium, tyro, docker, gitpython) and, for the kernel
# comparison, fla-core 0.6.0: on a machine without a registry, carry them as wheels and pip install --no-index them.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
what=${*:-all}
has() { [[ " $what " == *" $1 "* || " $what " == *" all "* ]]; }
nvidia-smi --query-gpu=name,memory.used,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
if has tests; then
  # every CUDA test of the sampler, model (MoE, head, fused chains), learner and kernels
  # with pytest-xdist, 6 workers share the GPU (60 tests: ~2 min on an H200; one worker takes over 4 min)
  python3 -c "import xdist" 2>/dev/null && workers="-n 6" || workers=""
  timeout 420 python3 -m pytest -q -p no:cacheprovider -m gpu tests/model tests/kernels tests/agent/test_learner_gpu.py \
    $workers -rfEP --durations=10 2>&1 | tee "$OUT/tests.txt" | grep -E "passed|failed|FAILED|ERROR|mean \|" | cut -c1-160 | tail -30
fi
if has sampler; then
  timeout 300 python3 benchmarks/sampler.py --device cuda --loop-steps 8 --logprobs ${SAMPLER_ARGS:-} --json "$OUT/sampler.json" \
    2>&1 | tee "$OUT/sampler.txt" | grep -v "^ " | grep -v "^{" | tail -40
fi
if has train; then
  # minimax-1b learner, T=8192 (issue 16): one GPU at 131,072 tokens per step (16 rows: one micro-batch), ALONE on
  # the machine, then FSDP2 on two GPUs with the same work per GPU (262,144 tokens in all), the layers' weights
  # kept gathered from forward to backward. Defaults: grouped-GEMM MoE, bf16x3 head (8,192-row chunks, backward
  # from the forward's saved log-probs), compiled chains with eager rounding and the norms' fp64 mean square, one
  # bf16 copy per norm, the lightning q/k/v silu pass, the SwiGLU backward kernel, the one-pass MoE dispatch and
  # combine, the clip in the fused AdamW (session 7, one H200: 382,712 tok/s, 36.4%, 83.6 GiB). ~60 s each, <= 165 s in all
  # (compilation; the one-GPU run warms the Inductor cache the ranks reuse).
  L="--device cuda --model minimax-1b --seq-lens 8192 --micro 16 --steps 3 --backends triton"
  CUDA_VISIBLE_DEVICES=0 timeout 150 python3 benchmarks/train.py $L --tokens 131072 --json "$OUT/train_1gpu.json" \
    2>&1 | tee "$OUT/train_1gpu.txt" | grep -E "^\| minimax|Error|error" | tail -3
  if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
    timeout 120 torchrun --standalone --nproc-per-node 2 benchmarks/train.py $L --fsdp --tokens 262144 \
      --reshard-after-forward 0 --json "$OUT/train_fsdp2.json" 2>&1 | tee "$OUT/train_fsdp2.txt" \
      | grep -E "^\| minimax|Error|error" | tail -3
  fi
fi
