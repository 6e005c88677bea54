"""Learner throughput and memory: CISPO updates of the ``small`` model, with and without the Triton lightning
attention kernels (``LIGHTSWE_LIGHTNING_BACKEND=triton`` vs ``reference``, the PyTorch chunked reference).

    python benchmarks/train.py                                  # CPU smoke: tiny model, short rows
    python benchmarks/train.py --device cuda --model small --seq-lens 2048,8192 --tokens 32768 --json out.json
    torchrun --nproc-per-node 2 benchmarks/train.py --fsdp --device cuda --model small --tokens 32768  # FSDP2

With ``--fsdp`` (under torchrun) the model is sharded with FSDP2 over the ranks (NCCL on CUDA, gloo on CPU) and
``--tokens`` is the step's total: each rank gets ``tokens / world`` of it, throughput counts all ranks' tokens and
memory is reported per GPU.

One step = one ``Learner.step`` on a batch of ``tokens / T`` random rows of T tokens (half of each row marked
as policy tokens), one optimiser step, micro-batches of ``--micro`` rows, bf16 autocast on CUDA (fp32 weights,
AdamW state and LM head). Throughput = all tokens forwarded / median step time after one warm-up step; memory =
peak CUDA memory allocated during the timed steps.

Measured (one run, NVIDIA H200 assigned when no H100 was free, torch 2.11+cu130, Triton 3.6; small model 98.6M
parameters, 32,768 tokens per step, 2 rows per micro-batch, bf16 autocast, no activation checkpointing):

| T | lightning backend | tokens/s | step s | peak GiB |
|---|---|---|---|---|
| 2,048 | Triton kernels | 30,207 | 1.085 | 3.76 |
| 2,048 | PyTorch reference | 8,140 | 4.026 | 4.01 |
| 8,192 | Triton kernels | 63,819 | 0.513 | 9.59 |
| 8,192 | PyTorch reference | 11,324 | 2.894 | 10.58 |

(At T=2,048 the step runs 8 micro-batches instead of 2, so per-call overheads weigh more.)

FSDP2 on two GPUs (one run, nvidia-h200-x2, torch 2.11+cu130, Triton kernels, NCCL with NVLS off, default
``--micro 4``, same machine for the one-GPU baseline): ``python3 benchmarks/train.py --device cuda --model small
--seq-lens 2048,8192 --tokens 32768 --backends triton`` and ``torchrun --standalone --nproc-per-node 2
benchmarks/train.py --fsdp`` with the same options and ``--tokens`` 32768 or 65536 (the step's total):

| GPUs | T | tokens/step | tokens/s | step s | peak GiB per GPU |
|---|---|---|---|---|---|
| 1 | 2,048 | 32,768 | 55,678 | 0.589 | 5.70 |
| 2 (FSDP2) | 2,048 | 32,768 | 77,263 | 0.424 | 4.96 |
| 2 (FSDP2) | 2,048 | 65,536 | 74,185 | 0.883 | 4.96 |
| 1 | 8,192 | 32,768 | 122,220 | 0.268 | 16.92 |
| 2 (FSDP2) | 8,192 | 32,768 | 127,591 | 0.257 | 8.99 |
| 2 (FSDP2) | 8,192 | 65,536 | 219,549 | 0.299 | 16.73 |

At the same work per GPU two GPUs give 1.80x at T=8,192 but 1.33x at T=2,048 (0.88 s against 0.59 s per step
for 4 micro-batches per GPU): every micro-batch all-gathers and reduce-scatters each layer, and short rows leave
less compute to hide that behind (not profiled). Memory per GPU is set by activations; sharding the weights and
AdamW state (~1.6 GB in all for this model) saves little at this size.

MFU before this work (2026-11-29, one H200, torch 2.11+cu130, Triton kernels, T=8,192, 32,768 tokens per step,
``--micro 2``, bf16 autocast with the fp32 LM head, the per-expert MoE loop; peak 989 TFLOP/s dense bf16):
``small`` 73,503 tokens/s, 2.1% MFU; ``minimax-1b`` 24,886 tokens/s, 2.4% MFU (1.32 s step, 470 ms of GPU time:
host-bound on ~4,900 per-expert matrix products and a host sync per MoE layer; 37% of GPU time in fp32 GEMMs).

MFU now (2026-11-30, ``minimax-1b``, 1,314M parameters / 149M active without the input embedding, T=8,192,
940.7 MFLOP per token by ``flops_per_token``; one H200, torch 2.11+cu130, Triton 3.6; one run each, median of 3
steps after a warm-up). Levers, measured in turn (each row adds to the ones above it; rows 2-7 in one run,
8-9 in a second, 10 in a third):

| change | tokens/step | micro | tokens/s | step s | MFU | peak GiB |
|---|---|---|---|---|---|---|
| before (per-expert loop, fp32 head) | 32,768 | 2 | 24,886 | 1.317 | 2.4% | 38.7 |
| bf16x3 head (torch ops), fused AdamW, still the per-expert loop (``--moe loop``) | 32,768 | 2 | 30,414 | 1.077 | 2.9% | 34.7 |
| same, 4 rows per micro-batch | 32,768 | 4 | 55,335 | 0.592 | 5.3% | 41.3 |
| + grouped-GEMM MoE (model/moe.py) | 32,768 | 2 | 109,170 | 0.300 | 10.4% | 33.4 |
| same | 32,768 | 4 | 136,193 | 0.241 | 13.0% | 39.2 |
| same, bigger step (fixed per-step costs amortised) | 131,072 | 4 | 148,904 | 0.880 | 14.2% | 44.1 |
| same | 131,072 | 8 | 159,730 | 0.821 | 15.2% | 65.5 |
| + one-pass Triton head kernels, atomic-free MoE dispatch; head split into 3 pieces (bf16x6, slower) (``--compile 0``) | 131,072 | 8 | 182,027 | 0.720 | 17.3% | 65.6 |
| + compiled elementwise chains (model/fused.py, ``--compile 1``) | 131,072 | 8 | 241,568 | 0.543 | 23.0% | 51.9 |
| + bf16x3 head instead of bf16x6 (the default; 2-GPU host, GPU 0) | 131,072 | 8 | **271,652** | 0.482 | **25.8%** | 51.7 |

Commands: rows 2-5 ``python3 benchmarks/train.py --device cuda --model minimax-1b --seq-lens 8192 --tokens 32768
--micro 2,4 --moe grouped,loop --backends triton --head-bench``; rows 6-7 ``--tokens 131072 --micro 4,8 --moe
grouped --profile``; rows 8-9 ``--tokens 131072 --micro 8 --moe grouped --compile 1,0 --profile``; row 10
``--tokens 131072 --micro 8`` (the defaults: ``--moe auto --compile 1``).

The LM head alone (``--head-bench``: 16,384 tokens, H 1024, V 32,768, log-prob + entropy, forward + backward,
error against fp64 logits ~N(0, 3.2) on 2,048 rows):

| head | forward ms | backward ms | log-prob error max | mean |
|---|---|---|---|---|
| fp32 GEMMs on CUDA cores (``LIGHTSWE_HEAD=fp32``; the CPU path) | 32.5 | 92.7 | 1.5e-5 | 1.7e-6 |
| bf16x3 split, tensor cores + Triton kernels (default under autocast) | 6.1 | 9.3 | 1.4e-4 | 4.9e-5 |
| bf16x6 split (3 pieces per operand) | 11.2 | 9.7 | 2.4e-4 | 1.1e-4 |

Where the 0.54 s step goes (``--profile``, compile on, bf16x6 head, 131,072 tokens: 588 ms wall, ~490 ms of GPU
kernel time, so the GPU idles ~15% of the step on the host): matrix products 247 ms (dense and head ``aten::mm``
157 ms, the experts' grouped GEMMs 90 ms: ~680 TFLOP/s on the work they do, the head's split products
included); memory-bound work ~240 ms: dtype casts (``aten::copy_``: autocast's per-use casts of the fp32
activations and weights, gradients back to fp32) 44 ms, gradient accumulation and other ``add_`` 30 ms, the
remaining unfused elementwise/reduction kernels (router, dispatch, rotary, losses) ~80 ms, Inductor's fused
chains ~30 ms, the head's Triton gradient kernel 14 ms, lightning attention ~18 ms, cuDNN flash attention 11 ms,
fused AdamW 11 ms. The bf16x3 head then removed ~45-60 ms of matrix products (row 10). Reaching 35% (~370K
tokens/s, a 0.35 s step) needs ~130 ms more off: the decoder layer compiled as a whole (regional
``torch.compile`` of attention + MoE, not only the chains), bf16 activations between layers instead of the fp32
residual stream (halves every cast and elementwise pass), a fused router + dispatch kernel, and the host gaps
closed (CUDA graphs or fewer syncs: the CISPO metrics' ``.item()`` calls sync once per micro-batch).

Session of 2026-11-30 morning (``mfu2``; one call on nvidia-h200-x2, torch 2.11+cu130, Triton 3.6; median of 3
steps (1 GPU) or 2 (FSDP2) after a warm-up; one run each). Changes measured: the learner reads the loss's metrics,
the loss and the grad norm after the optimiser step instead of after each micro-batch (no host sync inside a
mini-batch: the GPU queue never drains between micro-batches); FSDP2 accumulates gradients locally on all but a
mini-batch's last pass (``set_requires_gradient_sync`` / ``set_reshard_after_backward``: one reduce-scatter per
layer and step instead of one per micro-batch, no all-gather between micro-batches); ``--reshard-after-forward
0`` keeps each layer's gathered weights until its backward; ``--emulate`` A/B of Inductor's
``emulate_precision_casts`` in the compiled chains (model/fused.py). One GPU (GPU 0; the GPU tests ran on GPU 1
beside it, CPU-pinned to other cores: ``taskset -c 0-19`` here, ``20-31`` there):

| emulate_precision_casts | micro (rows) | tokens/step | tokens/s | step s | MFU | peak GiB |
|---|---|---|---|---|---|---|
| off | 8 | 131,072 | 280,324 | 0.468 | 26.7% | 51.7 |
| off | 16 | 131,072 | **298,756** | 0.439 | **28.4%** | 76.0 |
| on (the default) | 8 | 131,072 | 275,542 | 0.476 | 26.2% | 51.7 |
| on (the default) | 16 | 131,072 | 295,801 | 0.443 | 28.1% | 76.0 |

``CUDA_VISIBLE_DEVICES=0 python3 benchmarks/train.py --device cuda --model minimax-1b --seq-lens 8192 --backends
triton --tokens 131072 --micro 8,16 --emulate 0,1 --steps 3 --profile``. Eager rounding in the compiled chains
costs 1.0-1.7% (one run each, within run-to-run noise), so it stays on: the sampler mirrors eager rounding and
its log-probs must match the learner's (``tests/model/test_engine_gpu.py``). This morning's 222,159 tokens/s
(21.1%) at ``--micro 8`` was measured beside a pytest run on the other GPU with nothing pinned; the same setting
here gives 275,542. One micro-batch of 16 rows (the whole 131,072-token step) is the best: +7% for 24 GiB more.

FSDP2 on two H200s (NCCL, NVLS off), the same work per GPU (131,072 tokens per rank, 262,144 per step):
``torchrun --standalone --nproc-per-node 2 benchmarks/train.py --device cuda --model minimax-1b --seq-lens 8192
--backends triton --fsdp --tokens 262144 --micro 8,16 --fsdp-param-dtype fp32,bf16 --reshard-after-forward 1,0
--steps 2`` (the last build, bf16 with reshard 0, was cut by the call's time limit); x = against the one-GPU row
of the same micro-batch with the same rounding (275,542 / 295,801):

| gather dtype | reshard after forward | micro | tokens/s | step s | MFU | x one GPU | peak GiB per GPU |
|---|---|---|---|---|---|---|---|
| fp32 | yes | 8 | 511,545 | 0.512 | 24.3% | 1.86 | 45.3 |
| fp32 | yes | 16 | 543,477 | 0.482 | 25.8% | 1.84 | 70.1 |
| fp32 | no | 8 | 509,232 | 0.515 | 24.2% | 1.85 | 51.7 |
| fp32 | no | 16 | **560,233** | 0.468 | **26.6%** | **1.89** | 76.6 |
| bf16 | yes | 8 | 494,100 | 0.531 | 23.5% | 1.79 | 49.6 |
| bf16 | yes | 16 | 557,163 | 0.470 | 26.5% | 1.88 | 74.3 |

The first row is this morning's setting, which gave 403,962 tokens/s (19.2%) before the learner changes above
(+27%). Gathering in bf16 buys nothing here: the collectives already hide behind compute (NVLink, 1.3B
parameters); the remaining 5-11% per GPU against one GPU is (not profiled) the collectives' share of SMs and
memory bandwidth and the slower rank setting the pace.

Where the 0.44 s step goes now (``--profile``, one micro-batch of 16 rows, emulate on; 467 ms wall under the
profiler, compute kernels busy 415 ms, idle 52 ms): matrix products 200 ms (dense and LM-head ``aten::mm`` 116
ms, of which the bf16x3 head's ~73 ms; the experts' grouped GEMMs 85 ms); casts (``aten::copy_``) 39 ms;
``add_`` (autograd's gradient sums of multi-use activations, residual) 25 ms; other unfused elementwise kernels
~55 ms; Inductor's SwiGLU backward 14 ms; the head's Triton gradient kernel 13.5 ms; fused AdamW 10.6 ms; cuDNN
flash attention backward 9.8 ms; lightning attention backward 8.9 ms. The host is no longer the limit: the CPU
spends 158 of its 420 ms in ``cudaStreamSynchronize``, waiting for the GPU. 35%
(~368K tokens/s, a 0.356 s step) needs ~85 ms more off: the LM head (~90 ms with its kernels, for 21% of the
counted FLOPs: bf16x3 runs its forward products three times), the fp32 residual stream's casts and elementwise
passes (bf16 activations between layers, which the sampler would have to mirror), the decoder layer compiled
whole, and the remaining host gaps (CUDA graphs).

Session 6 (``learn3``; one H200 each, torch 2.11+cu130, Triton 3.6, T=8,192, 131,072 tokens per step, one
micro-batch of 16 rows, median of 3 steps after a warm-up, one run each). Changes: the split head's chunks of
8,192 rows instead of 1,024 (each chunk's weight gradient is accumulated into the fp32 [V, H] sum: 128
read-modify-writes of 128 MB became 16; ``--head-chunk``); its backward from the forward's saved log-probs
(fp16 offsets from block maxima, 2 bytes per logit, +8 GiB here) instead of recomputing the logits (one bf16
GEMM) and their statistics (``--head-save``); RMSNorm's mean square in fp64 on CUDA (``--norm-fp64``: issue 16's
sampler agreement, it costs nothing measurable); the decoder layer's norms writing the bf16 copy their matrix
products read, instead of autocast casting the fp32 activations once per product and each gradient back
(``--cast-once``). Rows 1-8 (before ``--cast-once`` existed, i.e. ``--cast-once 0``): ``CUDA_VISIBLE_DEVICES=1
python3 benchmarks/train.py --device cuda --model minimax-1b --seq-lens 8192 --micro 16 --steps 3 --backends
triton --tokens 131072 --head-chunk 1024,8192 --head-save 0,1 --norm-fp64 0,1 --profile`` (nvidia-h200-x2,
tests running on GPU 0, CPUs pinned apart);
rows 9-10 ``--cast-once 1,0`` with the other defaults (nvidia-h200, GPU tests sharing the GPU during the
warm-up):

| head chunk | head save | norm fp64 | cast once | tokens/s | step s | MFU | peak GiB |
|---|---|---|---|---|---|---|---|
| 1,024 | no | no | no | 294,822 | 0.445 | 28.0% | 76.0 |
| 1,024 | no | yes | no | 291,960 | 0.449 | 27.8% | 76.0 |
| 1,024 | yes | no | no | 308,007 | 0.426 | 29.3% | 84.0 |
| 1,024 | yes | yes | no | 308,350 | 0.425 | 29.3% | 84.0 |
| 8,192 | no | no | no | 309,812 | 0.423 | 29.5% | 77.8 |
| 8,192 | no | yes | no | 304,915 | 0.430 | 29.0% | 77.8 |
| 8,192 | yes | no | no | 319,871 | 0.410 | 30.4% | 85.8 |
| 8,192 | yes | yes | no | 320,959 | 0.408 | 30.5% | 85.8 |
| 8,192 | yes | yes | no (second run) | 312,387 | 0.420 | 29.7% | 85.8 |
| 8,192 | yes | yes | **yes (the defaults)** | **337,513** | **0.388** | **32.1%** | 83.5 |

The first row is the setting of session 5's 299,440 (28.5%). Where the 0.408 s step (row 8) went (``--profile``:
417 ms wall, compute kernels busy 388 ms, idle 29 ms): ``aten::mm`` 100 ms (116 ms before: the head's backward
no longer recomputes its logits), the experts' grouped GEMMs 87 ms, casts (``aten::copy_``, 400
calls) 38 ms, SwiGLU's compiled backward 14 ms, ``add_`` 14 ms, cuDNN attention backward 11 ms, fused AdamW 11
ms, lightning attention backward 9 ms. Casting once took ~32 ms off the step (row 10 against row 9). 35% (~368K
tokens/s, a 0.356 s step) needs ~32 ms more: the q, k, v split copies of the lightning layers and the remaining
casts (the output projections' fp32 inputs, the expert weights' bf16 stack and its gradient's fp32 copy), the
SwiGLU backward at half of its bandwidth bound, and the host's 29 ms of gaps (CUDA graphs).

Session 7 (``learn4``; nvidia-h200-x2, one GPU per run, the GPU tests on the other GPU, CPUs pinned apart;
torch 2.11+cu130, Triton 3.6; T=8,192, 131,072 tokens per step in one micro-batch of 16 rows, median of 5 steps
after a warm-up, one run each; every row on the defaults above plus the flags named). Changes: the lightning
layer's q, k, v written contiguous by one compiled silu pass (``fused.silu_split``: the silu pass and the
kernel's three ``.contiguous()`` copies were separate, and so were their backward cat and silu backward) and its
gated output written in bf16 for the output projection inside its compiled chain (the cast autocast made, and its
gradient's cast back; ``--fused-lightning``, ``layers.FUSED_LIGHTNING``); the experts' SwiGLU backward as one
Triton pass (``model/moe_kernels.py``, ``--swiglu-kernel``: 0.98 ms per layer, 4.1 TB/s, against Inductor's
concatenating backward); the gradient clip applied by the fused AdamW kernel as it reads each gradient
(``grad_scale``; ``--fused-clip``, ``agent/learner.py`` ``FUSED_CLIP``; ``clip_grad_norm_`` read and wrote every
gradient once more); no host sync per MoE layer (``offsets[-1] = rows`` copied a Python int from pageable host
memory, which waits for the GPU to drain: 8 stalls per step, found by the new GPU-idle table of ``--profile``);
the CISPO metrics read with two syncs instead of ~15 (same values); the MoE dispatch and combine as compiled
one-pass chains that read rows where they are (``--fused-dispatch``, ``moe.FUSED_DISPATCH``: no copy of x with a
zero row appended, no gathered [N k, H] copies forward or backward); RoPE's rotation compiled (the softmax layer).
Rows 1-4: ``CUDA_VISIBLE_DEVICES=0 python3 benchmarks/train.py --device cuda --model minimax-1b --seq-lens 8192
--micro 16 --backends triton --tokens 131072 --steps 5 --fused-lightning 0,1 --swiglu-kernel 0,1 --profile``
(before the sync, metrics, dispatch and RoPE changes; clip fused); row 5 the same with ``--fused-clip 0`` on the
other GPU; rows 6-9 with every change, ``--fused-clip 0,1 --fused-dispatch 0,1 --profile``:

| fused lightning | SwiGLU kernel | fused clip | no MoE sync, 2-sync metrics, RoPE compiled | fused dispatch | tokens/s | step s | MFU | peak GiB |
|---|---|---|---|---|---|---|---|---|
| no | no | yes | no | no | 342,370 | 0.383 | 32.6% | 83.5 |
| no | yes | yes | no | no | 344,241 | 0.381 | 32.7% | 83.5 |
| yes | no | yes | no | no | 346,660 | 0.378 | 33.0% | 83.5 |
| yes | yes | yes | no | no | 356,038 | 0.368 | 33.9% | 83.5 |
| yes | yes | no | no | no | 358,921 (GPU 1) | 0.365 | 34.1% | 83.5 |
| yes | yes | no | yes | no | 365,132 | 0.359 | 34.7% | 83.5 |
| yes | yes | no | yes | yes | 380,211 | 0.345 | 36.2% | 83.6 |
| yes | yes | yes | yes | no | 366,934 | 0.357 | 34.9% | 83.5 |
| yes | yes | yes | yes | **yes (the defaults)** | **382,712** | **0.342** | **36.4%** | 83.6 |

The first row is session 6's final setting (342,923 there). Where the 0.342 s step goes now (``--profile``: 346
ms wall, compute kernels busy 327 ms, idle 19 ms): matrix products 193 ms (``aten::mm`` 104 ms, of which the
bf16x3 head's forward 33 ms; the experts' grouped GEMMs 89 ms), fused AdamW 12.7 ms, cuDNN attention 15 ms
(backward 11.3), lightning attention 10.7 ms (backward 8.0), the norms' compiled backward 8.0 ms, the SwiGLU
backward 7.8 ms (at the memory bound), the head's Triton kernels 11.7 ms, ``aten::copy_`` 6.7 ms (25-38 ms
before: the expert weights' bf16 stack's gradient to fp32 is most of it), the q, k, v silu pass 4.4 ms and its
backward 4.6 ms; the GPU idles 3.0 ms before the step's first kernel (the host's set-up), 1.7 ms in
``zero_grad``, 5.8 ms after the last (the metrics' two reads) and 6.3 ms in 29 short gaps.

A third run of the final code (nvidia-h200-x2, ``benchmarks/gpu_session.sh``'s train commands with ``--steps 3``:
the 1-GPU run on GPU 0 beside a GPU test on GPU 1, then FSDP2 on both): one H200 **388,411 tokens/s, 36.9% MFU**
(0.337 s step, 83.6 GiB); FSDP2 on two H200s (``--fsdp --tokens 262144 --reshard-after-forward 0``) **704,018
tokens/s = 1.81x** that (0.372 s step, 81.7 GiB per GPU; the clip there stays ``clip_grad_norm_`` on the
DTensor gradients).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time

import torch
from lightswe.agent.cispo import CISPOLoss
from lightswe.agent import learner as learner_module
from lightswe.model import fused, head, layers
from lightswe.model import moe as moe_module
from lightswe.agent.distributed import DistContext
from lightswe.agent.learner import Learner, LearnerConfig, TrainBatch, shard_model
from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM

PEAK_BF16_FLOPS = 989e12  # H100/H200 SXM dense bf16, datasheet (a matrix product reached ~790e12 on the H200 here)


def flops_per_token(model: MiniMaxForCausalLM, length: int) -> float:
    """Training FLOPs per token (forward + backward), as PaLM's MFU (Chowdhery et al. 2022, appendix B):
    6 x active parameters (every matrix a token passes through: attention projections, the router, its top-k
    experts, the LM head; not the input embedding, a lookup) + 6 x T x H x D per softmax layer (QK^T and PV,
    12 T H D, halved for the causal mask). The lightning layers' own state work (~5 MFLOP per token per layer,
    a few % of the total) is left out, so this understates MFU slightly."""
    c = model.config
    active = model.num_parameters(active=True) - c.vocab_size * c.hidden_size * (not c.tie_word_embeddings)
    softmax_layers = c.attn_type_list.count(1)
    return 6 * active + 6 * softmax_layers * length * c.num_attention_heads * c.head_dim


def make_batch(rows: int, length: int, vocab: int, seed: int = 0) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(vocab, 256), (rows, length), generator=g)
    mask = torch.zeros(rows, length, dtype=torch.bool)
    mask[:, length // 2:] = True
    logp = -torch.rand(rows, length, generator=g) * 3 * mask
    return TrainBatch(input_ids=ids, mask=mask, sampler_logp=logp, advantages=torch.randn(rows, generator=g))


def to_device(batch: TrainBatch, device: torch.device) -> TrainBatch:
    return TrainBatch(input_ids=batch.input_ids.to(device), mask=batch.mask.to(device),
                      sampler_logp=batch.sampler_logp.to(device), advantages=batch.advantages.to(device))


def profile_step(learner: Learner, batch: TrainBatch, device: torch.device, title: str) -> None:
    """Print where one learner step's host and device time go (torch.profiler, top ops by each)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        learner.step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA") / 1e3  # kernels only
    kernels = [(e.time_range.start, e.time_range.end, "nccl" in e.name.lower()) for e in prof.events()
               if e.device_type.name == "CUDA"]
    compute = _union_ms([(a, b) for a, b, comm in kernels if not comm])
    comm = _union_ms([(a, b) for a, b, comm in kernels if comm])
    print(f"\nprofiled step, {title}: {wall * 1e3:.0f} ms wall, {busy:.0f} ms of GPU kernel time; compute "
          f"kernels busy {compute:.0f} ms (idle {wall * 1e3 - compute:.0f} ms: host gaps and waits on "
          f"collectives), collectives {comm:.0f} ms", flush=True)
    if device.type == "cuda":
        print_gaps(prof.events(), wall * 1e6)
    for sort in ("self_cpu_time_total", "self_cuda_time_total" if device.type == "cuda" else None):
        if sort:
            print(f"\nlearner step profile, {title}, by {sort}:\n" + events.table(sort_by=sort, row_limit=25 if "cpu" in sort else 50, max_name_column_width=60),
                  flush=True)


def print_gaps(events, wall_us: float, top: int = 20, min_us: float = 50.0) -> None:
    """Where the GPU sat idle during a profiled step: the gaps between kernels (the union of their intervals)
    longer than ``min_us``, the largest ``top`` with their offset into the step, the kernels either side and the
    innermost host ops running at the gap's middle (what the host was doing instead of launching work)."""
    kernels = sorted((e.time_range.start, e.time_range.end, e.name) for e in events if e.device_type.name == "CUDA")
    host = [(e.time_range.start, e.time_range.end, e.name) for e in events if e.device_type.name != "CUDA"]
    if not kernels:
        return
    origin = min([k[0] for k in kernels] + [h[0] for h in host])
    gaps, end, last = [], kernels[0][1], kernels[0]
    for k in kernels[1:]:
        if k[0] - end > min_us:
            gaps.append((k[0] - end, end, last[2], k[2]))
        if k[1] > end:
            end, last = k[1], k
    lead = kernels[0][0] - origin
    print(f"\nGPU idle: {lead / 1e3:.1f} ms before the first kernel, {sum(g[0] for g in gaps) / 1e3:.1f} ms in "
          f"{len(gaps)} gaps > {min_us:.0f} us between kernels, {(origin + wall_us - end) / 1e3:.1f} ms after the "
          f"last (wall {wall_us / 1e3:.1f} ms)", flush=True)
    for dur, start, before, after in sorted(gaps, reverse=True)[:top]:
        mid = start + dur / 2
        inner = sorted((b - a, name) for a, b, name in host if a <= mid <= b)[:3]
        print(f"  {dur / 1e3:6.2f} ms at {(start - origin) / 1e3:7.1f} ms | after {before[:50]} | before "
              f"{after[:50]} | host: {' < '.join(n[:40] for _, n in inner)}", flush=True)


def _union_ms(intervals: list[tuple[float, float]]) -> float:
    """Total length in ms of the union of [start, end] intervals given in us."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total / 1e3


def build(model_name: str, device: torch.device, checkpointing: bool, ctx: DistContext,
          param_dtype: torch.dtype | None, reshard_after_forward: bool) -> MiniMaxForCausalLM:
    torch.manual_seed(0)
    with torch.device(device):  # random init on the device itself (1.3B normals on the host take seconds)
        model = MiniMaxForCausalLM(MiniMaxConfig.preset(model_name))
    model.gradient_checkpointing = checkpointing
    if ctx.distributed:
        shard_model(model, param_dtype=param_dtype, reshard_after_forward=reshard_after_forward)
    return model


def run(model: MiniMaxForCausalLM, model_name: str, device: torch.device, length: int, tokens: int, micro: int,
        steps: int, backend: str, moe: str, compiled: str, emulate: bool, ctx: DistContext, profile: bool = False,
        head_chunk: int = head.CHUNK_ROWS, head_save: bool = head.SAVE_LOGITS, norm_fp64: bool = fused.NORM_FP64,
        cast_once: bool = layers.CAST_ONCE, fused_lightning: bool = layers.FUSED_LIGHTNING,
        swiglu_kernel: bool = moe_module.SWIGLU_KERNEL, fused_clip: bool = learner_module.FUSED_CLIP,
        fused_dispatch: bool = moe_module.FUSED_DISPATCH) -> dict:
    os.environ["LIGHTSWE_LIGHTNING_BACKEND"] = backend
    os.environ["LIGHTSWE_MOE_BACKEND"] = moe
    os.environ["LIGHTSWE_COMPILE"] = compiled
    fused.set_emulate_precision_casts(emulate)
    head.CHUNK_ROWS, head.SAVE_LOGITS, fused.NORM_FP64, layers.CAST_ONCE = head_chunk, head_save, norm_fp64, cast_once
    layers.FUSED_LIGHTNING, moe_module.SWIGLU_KERNEL, learner_module.FUSED_CLIP = fused_lightning, swiglu_kernel, fused_clip
    moe_module.FUSED_DISPATCH = fused_dispatch
    cfg = LearnerConfig(lr=1e-5, minibatches=1, micro_batch_size=micro,
                        autocast_dtype="bfloat16" if device.type == "cuda" else None)
    learner = Learner(model, CISPOLoss(), cfg)
    rows = max(tokens // length // ctx.world, 1)  # per rank
    batch = to_device(make_batch(rows, length, model.config.vocab_size, seed=ctx.rank), device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        learner.step(batch)  # warm-up (Triton compilation, allocator)
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            learner.step(batch)
            sync()
            times.append(time.perf_counter() - t0)
        (step_s,) = ctx.max([statistics.median(times)])  # the slowest rank sets the pace
        if profile:  # every rank steps (FSDP collectives); rank 0 prints
            title = f"{model_name}, T={length}, micro {micro}, moe {moe}, ranks {ctx.world}"
            if ctx.main:
                profile_step(learner, batch, device, title)
            else:
                learner.step(batch)
    finally:
        model.zero_grad(set_to_none=True)
        del learner
    step_tokens = len(batch) * length * ctx.world
    out = {"model": model_name, "backend": backend, "moe": moe, "compile": compiled, "emulate_precision_casts": emulate,
           "head_chunk": head_chunk, "head_save": head_save, "norm_fp64": norm_fp64, "cast_once": cast_once,
           "fused_lightning": fused_lightning, "swiglu_kernel": swiglu_kernel, "fused_clip": fused_clip,
           "fused_dispatch": fused_dispatch,
           "seq_len": length, "rows": len(batch) * ctx.world,
           "tokens_per_step": step_tokens, "micro_batch_rows": micro, "step_s": step_s,
           "tokens_per_s": step_tokens / step_s, "gradient_checkpointing": model.gradient_checkpointing,
           "ranks": ctx.world, "params_M": sum(p.numel() for p in model.parameters()) / 1e6}  # DTensor: full size
    flops = flops_per_token(model, length)
    out.update(flops_per_token=flops, mfu=out["tokens_per_s"] * flops / (PEAK_BF16_FLOPS * ctx.world))
    if device.type == "cuda":
        peaks = [0.0] * ctx.world
        peaks[ctx.rank] = torch.cuda.max_memory_allocated(device) / 2**30
        peaks = ctx.sum(peaks)
        out["peak_mem_GiB"] = max(peaks)  # per GPU (the largest)
        if ctx.distributed:
            out["peak_mem_GiB_per_rank"] = peaks
    return out


def head_bench(device: torch.device, tokens: int, hidden: int, vocab: int, chunk: int = 1024) -> list[dict]:
    """The LM head alone, forward + backward of (log-prob, entropy) for ``tokens`` rows: the fp32 chunked head
    (``_chunk_logprobs`` under checkpointing, as on CPU) against the split-bf16 head (``model/head.py``) with 2
    and 3 pieces per operand; max error of each against fp64 logits on the first 2,048 rows."""
    from lightswe.model import head
    from lightswe.model.head import head_logprobs, logprob_entropy
    from lightswe.model.model import _chunk_logprobs
    from torch.utils.checkpoint import checkpoint

    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(tokens, hidden, device=device, generator=g)
    w = torch.randn(vocab, hidden, device=device, generator=g) * 0.1  # logits ~ N(0, 3.2) for H = 1024
    t = torch.randint(0, vocab, (tokens,), device=device, generator=g)
    gl, ge = torch.randn(tokens, device=device, generator=g), torch.randn(tokens, device=device, generator=g)

    def fp32_head(hh, ww):
        parts = [checkpoint(_chunk_logprobs, hh[s:s + chunk], ww, t[s:s + chunk], 1.0, use_reentrant=False)
                 for s in range(0, tokens, chunk)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def split_head(pieces: int):
        def fn(hh, ww):
            old, head.PIECES = head.PIECES, pieces
            try:
                return head_logprobs(hh, ww, t, 1.0, chunk)
            finally:
                head.PIECES = old
        return fn

    ref_rows = slice(0, min(tokens, 2048))
    z64 = h[ref_rows].double() @ w.double().T
    lp64, _ = logprob_entropy(z64, t[ref_rows])
    out = []
    variants = (("fp32 (CUDA cores)", fp32_head), ("bf16x3 (tensor cores)", split_head(2)),
                ("bf16x6 (tensor cores)", split_head(3)))
    for name, fn in variants:
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        lp, ent = fn(hh, ww)
        (lp * gl + ent * ge).sum().backward()
        err = (lp[ref_rows].double() - lp64).abs()
        times = []
        for _ in range(3):
            hh.grad = ww.grad = None
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            lp, ent = fn(hh, ww)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            (lp * gl + ent * ge).sum().backward()
            torch.cuda.synchronize()
            times.append((t1 - t0, time.perf_counter() - t1))
        fwd, bwd = (statistics.median(x) for x in zip(*times))
        out.append({"head": name, "tokens": tokens, "fwd_ms": fwd * 1e3, "bwd_ms": bwd * 1e3,
                    "logprob_err_vs_fp64_max": err.max().item(), "logprob_err_vs_fp64_mean": err.mean().item(), "tflops_fwd": 2 * tokens * hidden * vocab / fwd / 1e12})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="tiny")
    p.add_argument("--seq-lens", default="256")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per optimiser step")
    p.add_argument("--micro", default="4", help="rows per micro-batch (comma list: one run each)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--backends", default=None, help="comma list; default triton,reference on CUDA, reference on CPU")
    p.add_argument("--moe", default="auto", help="comma list of MoE backends: auto, grouped, loop")
    p.add_argument("--compile", default="1", help="comma list: 1 = the fused elementwise chains of model/fused.py "
                   "compiled (the CUDA default), 0 = eager")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing per layer")
    p.add_argument("--fsdp", action="store_true", help="FSDP2 over the torchrun ranks; --tokens is the total")
    p.add_argument("--fsdp-param-dtype", default="fp32", help="comma list: fp32, bf16 = FSDP2 all-gathers the "
                   "layers' weights in bf16 (MixedPrecisionPolicy; the root with the LM head stays fp32; gradients "
                   "reduced in fp32)")
    p.add_argument("--reshard-after-forward", default="1", help="comma list: 1 = FSDP2 frees each layer's "
                   "gathered weights after its forward (the default), 0 = keeps them until its backward")
    p.add_argument("--emulate", default="1", help="comma list: 1 = the compiled chains round bf16 intermediates "
                   "as eager (Inductor's emulate_precision_casts, the default), 0 = as Inductor fuses them")
    p.add_argument("--head-chunk", default=str(head.CHUNK_ROWS), help="comma list: rows per chunk of the split "
                   "LM head (model/head.py CHUNK_ROWS)")
    p.add_argument("--head-save", default=str(int(head.SAVE_LOGITS)), help="comma list: 1 = the split head's "
                   "backward uses the forward's saved fp16 log-prob offsets (SAVE_LOGITS), 0 = recomputes the logits")
    p.add_argument("--norm-fp64", default=str(int(fused.NORM_FP64)), help="comma list: 1 = RMSNorm's mean square "
                   "in fp64 on CUDA (model/fused.py NORM_FP64), 0 = fp32")
    p.add_argument("--cast-once", default=str(int(layers.CAST_ONCE)), help="comma list: 1 = the decoder layer's "
                   "norms write the bf16 copy their matrix products read (model/layers.py CAST_ONCE), 0 = autocast "
                   "casts per product")
    p.add_argument("--fused-lightning", default=str(int(layers.FUSED_LIGHTNING)), help="comma list: 1 = the "
                   "lightning layer's q, k, v written contiguous by its compiled silu pass and its gated output "
                   "written in bf16 for the output projection (model/layers.py FUSED_LIGHTNING), 0 = silu, then "
                   "copies and autocast's cast")
    p.add_argument("--swiglu-kernel", default=str(int(moe_module.SWIGLU_KERNEL)), help="comma list: 1 = the experts' "
                   "SwiGLU backward as one Triton pass (model/moe_kernels.py), 0 = Inductor's")
    p.add_argument("--fused-clip", default=str(int(learner_module.FUSED_CLIP)), help="comma list: 1 = the "
                   "gradient clip applied by the fused AdamW kernel (agent/learner.py FUSED_CLIP), 0 = "
                   "clip_grad_norm_")
    p.add_argument("--fused-dispatch", default=str(int(moe_module.FUSED_DISPATCH)), help="comma list: 1 = the "
                   "MoE dispatch and combine as compiled one-pass chains (model/moe.py FUSED_DISPATCH), 0 = copies")
    p.add_argument("--head-bench", action="store_true", help="also time the LM head alone (fp32 vs bf16x3)")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one step of the last "
                   "variant")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    ctx = DistContext.from_env(args.device) if args.fsdp else DistContext(device=args.device)
    if args.fsdp and not ctx.distributed:
        raise SystemExit("--fsdp needs several ranks: torchrun --nproc-per-node N benchmarks/train.py --fsdp ...")
    device = torch.device(ctx.device)
    say = print if ctx.main else (lambda *a, **k: None)
    backends = (args.backends or ("triton,reference" if device.type == "cuda" else "reference")).split(",")
    results = []
    start = time.perf_counter()
    if args.head_bench and device.type == "cuda" and ctx.main:
        c = MiniMaxConfig.preset(args.model)
        for r in head_bench(device, 16384, c.hidden_size, c.vocab_size):
            say(json.dumps(r), flush=True)
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    builds = list(itertools.product([int(x) for x in args.seq_lens.split(",")], backends,
                                    args.fsdp_param_dtype.split(",") if ctx.distributed else ["fp32"],
                                    args.reshard_after_forward.split(",") if ctx.distributed else ["1"]))
    for b, (length, backend, dtype, reshard) in enumerate(builds):
        model = build(args.model, device, args.checkpointing, ctx, dtypes[dtype], reshard == "1")
        variants = list(itertools.product(args.moe.split(","), args.compile.split(","), args.emulate.split(","),
                                          [int(x) for x in args.micro.split(",")],
                                          [int(x) for x in args.head_chunk.split(",")], args.head_save.split(","),
                                          args.norm_fp64.split(","), args.cast_once.split(","),
                                          args.fused_lightning.split(","), args.swiglu_kernel.split(","),
                                          args.fused_clip.split(","), args.fused_dispatch.split(",")))
        for i, (moe_backend, compiled, emulate, micro, chunk, save, fp64, once, lightning, swiglu, clip, dispatch) in \
                enumerate(variants):
            try:
                r = run(model, args.model, device, length, args.tokens, micro, args.steps, backend, moe_backend,
                        compiled, emulate == "1", ctx, args.profile and (b, i) == (len(builds) - 1, len(variants) - 1),
                        chunk, save == "1", fp64 == "1", once == "1", lightning == "1", swiglu == "1", clip == "1",
                        dispatch == "1")
            except Exception as err:  # noqa: BLE001 - an OOM or a failing variant is a row of the table
                r = {"model": args.model, "backend": backend, "moe": moe_backend, "compile": compiled, "seq_len": length,
                     "micro_batch_rows": micro, "error": f"{type(err).__name__}: {err}"[:300]}
            if ctx.distributed:
                r.update(fsdp_param_dtype=dtype, reshard_after_forward=reshard == "1")
            r["done_at_s"] = time.perf_counter() - start
            if device.type == "cuda":
                torch.cuda.empty_cache()
            results.append(r)
            say(json.dumps(r), flush=True)
        del model
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
           else platform.processor() or platform.machine()}
    env["ranks"] = ctx.world
    say(f"\n| model | T | backend | MoE | compile | emulate | head chunk | head save | norm fp64 | cast once | fused lightning | "
        f"SwiGLU kernel | fused clip | fused dispatch | FSDP gather | "
        f"reshard | micro | tokens/step | tokens/s | step s | MFU (of 989 TFLOP/s) | peak GiB per GPU |  "
        f"({env['device']} x{ctx.world}, torch {env['torch']})")
    for r in results:
        row = (f"| {r['model']} | {r['seq_len']} | {r['backend']} | {r.get('moe')} | {r.get('compile')} | "
               f"{r.get('emulate_precision_casts')} | {r.get('head_chunk')} | {r.get('head_save')} | "
               f"{r.get('norm_fp64')} | {r.get('cast_once')} | {r.get('fused_lightning')} | {r.get('swiglu_kernel')} | "
               f"{r.get('fused_clip')} | {r.get('fused_dispatch')} | {r.get('fsdp_param_dtype', '-')} | "
               f"{r.get('reshard_after_forward', '-')} | {r.get('micro_batch_rows')} |")
        if "error" in r:
            say(f"{row} {r['error'][:60]} | | | | |")
        else:
            say(f"{row} {r['tokens_per_step']:,} | {r['tokens_per_s']:,.0f} | {r['step_s']:.3f} | {r['mfu']:.1%} | "
                f"{r.get('peak_mem_GiB', float('nan')):.2f} |")
    ctx.close()
    if args.json and ctx.main:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
