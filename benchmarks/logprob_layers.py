"""Where the sampler's and the learner's log-probs part (issue 16): end-to-end agreement for each sampler
numerics mode, and a per-layer breakdown.

    python benchmarks/logprob_layers.py --device cuda      # one H200: see the README's sampler section

Setup: ``small`` with random weights (fp32, seed 0) and its bf16 copy; 16 prompts of 64-511 random tokens, 128
new tokens each at T=1 (the sampler's log-probs of its own tokens), scored by ``score`` on the same sequences.
Printed:
1. mean |sampler - learner| log-prob for each sampler mode (rows) and learner (columns: bf16 weights; fp32
   weights under bf16 autocast, the ``Learner`` on GPUs; fp32), first new token (from the prefill) apart.
2. drift per layer (eager instrumented step, no graph): relative mean |diff| of the attention output and of the
   layer output at the decode positions, the fraction of bf16 elements that differ, the fraction of tokens
   whose top-k experts differ.
3. local errors per layer on the learner's own inputs (teacher forcing): the decode kernels against the
   full-sequence kernels (lightning decode vs chunk; softmax decode vs SDPA), the engine's MoE and block tail
   (eager, compiled) against the learner's, each as relative mean |diff| and fraction of elements that differ.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch
import torch.nn.functional as F
from lightswe.kernels.decode_attn import decode_attention
from lightswe.kernels.lightning_attn import lightning_attn, lightning_attn_decode
from lightswe.kernels.lightning_attn.decode import lightning_attn_decode_chunk_form
from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM, SamplingConfig
from lightswe.model.engine import CHUNK, SamplerEngine, _moe, chunk_start
from lightswe.model.layers import LightningAttention, rotary


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).abs().mean() / b.abs().mean().clamp(min=1e-30)).item()


def frac(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.to(b.dtype) != b).float().mean().item()


def amp(device: torch.device, on: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()


@torch.no_grad()
def score_all(model, prompts, gens, autocast: bool) -> list[torch.Tensor]:
    device = model.lm_head.weight.device
    out = []
    for p, gen in zip(prompts, gens):
        ids = torch.tensor([p + gen.token_ids], device=device)
        with amp(device, autocast):
            out.append(model.score(ids).logprobs[0, len(p):].float().cpu())
    return out


def agreement(prompts, gens, scored) -> tuple[float, float, float]:
    diffs = [(s - torch.tensor(g.logprobs)).abs() for s, g in zip(scored, gens)]
    first = torch.stack([d[0] for d in diffs])
    rest = torch.cat([d[1:] for d in diffs])
    return torch.cat(diffs).mean().item(), first.mean().item(), rest.mean().item()


def agreement_table(fp32, bf16, prompts, sampling) -> list[dict]:
    """Mean |sampler - learner| log-prob of each sampler mode (rows) against each learner (columns), printed and
    returned; ``fp32`` the model, ``bf16`` its bf16 copy."""
    device = fp32.lm_head.weight.device
    cuda = device.type == "cuda"
    learners = {"bf16 weights": (bf16, False), "fp32 + bf16 autocast (Learner)": (fp32, True),
                "fp32": (fp32, False)}
    modes = [  # name, weights, engine settings, inductor options (None: the engine's), compiled step
        ("bf16 copy, bf16 residual, exact lightning decode, compiled without emulate_precision_casts (before)",
         bf16, {"autocast_dtype": None, "lightning_decode": "exact"}, {}, cuda),
        ("bf16 copy, fp32 residual (default 'auto')", bf16, {}, None, cuda),
        ("fp32 weights, autocast bf16, exact lightning decode", fp32,
         {"autocast_dtype": torch.bfloat16, "lightning_decode": "exact"}, None, cuda),
        ("fp32 weights, autocast bf16 (chunk-form lightning decode)", fp32, {"autocast_dtype": torch.bfloat16},
         None, cuda),
        ("fp32 weights, fp32", fp32, {}, None, False)]
    start = time.perf_counter()
    rows = []
    print("sampler | " + " | ".join(f"{n}: mean (first, rest)" for n in learners))
    for name, model, settings, options, compiled in modes:
        engine = SamplerEngine(model, max_slots=8, max_seq_len=1024, compile=compiled, **settings)
        if options is not None:
            engine.compile_options = options
        gens = engine.generate(prompts, sampling)
        cells = []
        for lname, (learner, autocast) in learners.items():
            m, f, r = agreement(prompts, gens, score_all(learner, prompts, gens, autocast))
            rows.append({"sampler": name, "learner": lname, "mean_abs": m, "first_token_mean": f,
                         "later_tokens_mean": r})
            cells.append(f"{m:.2e} ({f:.1e}, {r:.2e})")
        print(f"{name} | " + " | ".join(cells) + f"   [{time.perf_counter() - start:.0f} s]", flush=True)
        del engine
    return rows


def instrumented(engine: SamplerEngine, prompts, sampling):
    """Generate with every decode step's per-layer attention output, layer output and top-k experts recorded
    (eager step, no graph); all prompts must fit the slots (one prefill, rows in prompt order)."""
    rec: dict[int, list] = {}
    on = [False]
    plain = engine._region

    def region(name):
        fn = plain(name)
        if name != "block_tail" or not on[0]:
            return fn

        def wrapped(layer, x, h, a, w13, w2):
            out = fn(layer, x, h, a, w13, w2)
            with engine._autocast():
                xm = layer.attn_alpha * h + layer.attn_beta * a
                h2 = layer.post_attention_layernorm(xm)[:, 0]
                top = layer.block_sparse_moe.gate(h2).float().topk(layer.block_sparse_moe.top_k, -1).indices
            rec.setdefault(layer.self_attn.layer_idx, []).append((a[:, 0].clone(), out[:, 0].clone(),
                                                                  top.sort(-1).values))
            return out
        return wrapped

    engine._region = region
    decode = engine._decode

    def recording(use_top_p):
        on[0] = True
        try:
            decode(use_top_p)
        finally:
            on[0] = False

    engine._decode = recording
    return engine.generate(prompts, sampling), rec


@torch.no_grad()
def capture(model, ids: torch.Tensor, autocast: bool) -> dict:
    """Per layer of one learner forward: input x, attention input h and positions, attention output a, MoE input
    h2 and its top-k experts, MoE output, layer output (batch row 0)."""
    cap: dict = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def pre(mod, args, i=i):
            cap.setdefault(i, {})["x"] = args[0][0]

        def attn_pre(mod, args, i=i):
            cap[i]["h"], cap[i]["pos"] = args[0][0], args[1]

        def attn_post(mod, args, out, i=i):
            cap[i]["a"] = out[0]

        def moe_pre(mod, args, i=i):
            h2 = args[0][0]
            cap[i]["h2"] = h2
            cap[i]["top"] = mod.gate(h2).float().topk(mod.top_k, -1).indices.sort(-1).values

        def moe_post(mod, args, out, i=i):
            cap[i]["moe"] = out[0][0]

        def post(mod, args, out, i=i):
            cap[i]["out"] = out[0][0]
        hooks += [layer.register_forward_pre_hook(pre), layer.self_attn.register_forward_pre_hook(attn_pre),
                  layer.self_attn.register_forward_hook(attn_post),
                  layer.block_sparse_moe.register_forward_pre_hook(moe_pre),
                  layer.block_sparse_moe.register_forward_hook(moe_post), layer.register_forward_hook(post)]
    try:
        with amp(ids.device, autocast):
            model.score(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return cap


def drift_table(model, learner, autocast, prompts, sampling, engine_kwargs) -> None:
    engine = SamplerEngine(model, max_slots=len(prompts), max_seq_len=1024, cuda_graphs=False, compile=False,
                           **engine_kwargs)
    gens, rec = instrumented(engine, prompts, sampling)
    device = model.lm_head.weight.device
    caps = [capture(learner, torch.tensor([p + g.token_ids], device=device), autocast)
            for p, g in zip(prompts, gens)]
    print("layer | rel |a diff| | rel |out diff| | out elements differing | tokens with other top-k experts")
    for i, layer in enumerate(model.model.layers):
        a_s = torch.stack([r[0] for r in rec[i]], 1)
        o_s = torch.stack([r[1] for r in rec[i]], 1)
        t_s = torch.stack([r[2] for r in rec[i]], 1)
        cols = [[], [], [], []]
        for row, (p, cap) in enumerate(zip(prompts, caps)):
            n = len(gens[row].token_ids) - 1
            sl = slice(len(p), len(p) + n)
            cols[0].append(rel(a_s[row, :n], cap[i]["a"][sl]))
            cols[1].append(rel(o_s[row, :n], cap[i]["out"][sl]))
            cols[2].append(frac(o_s[row, :n], cap[i]["out"][sl]))
            cols[3].append((t_s[row, :n] != cap[i]["top"][sl]).any(-1).float().mean().item())
        kind = "L" if isinstance(layer.self_attn, LightningAttention) else "S"
        print(f"{i} {kind} | " + " | ".join(f"{sum(c) / len(c):.2e}" for c in cols), flush=True)
    return gens


@torch.no_grad()
def local_table(learner, autocast: bool, prompts, gens, compiled: bool) -> None:
    device = learner.lm_head.weight.device
    engine = SamplerEngine(learner, max_slots=1, max_seq_len=1024, cuda_graphs=False, compile=False,
                           autocast_dtype=torch.bfloat16 if autocast else None)
    regions = engine._regions
    comp = ({n: torch.compile(f, dynamic=False, options=engine.compile_options) for n, f in regions.items()}
            if compiled else {})
    rows: dict[int, dict[str, list[float]]] = {}
    for p, gen in zip(prompts, gens):
        ids = torch.tensor([p + gen.token_ids], device=device)
        cap = capture(learner, ids, autocast)
        P, n = len(p), len(gen.token_ids) - 1
        sl = slice(P, P + n)
        for i, layer in enumerate(learner.model.layers):
            c, attn, r = cap[i], layer.self_attn, rows.setdefault(i, {})
            h = c["h"][None]
            T = h.shape[1]
            with amp(device, autocast):
                if isinstance(attn, LightningAttention):
                    qkv = F.silu(attn.qkv_proj(h)).view(1, T, attn.num_heads, 3 * attn.head_dim)
                    q, k, v = (t.contiguous() for t in qkv.split(attn.head_dim, dim=-1))
                    slope = attn.slope(device)
                    o_chunk, _ = lightning_attn(q, k, v, slope)
                    _, state = lightning_attn(q[:, :P], k[:, :P], v[:, :P], slope)
                    state = state.contiguous()
                    o_dec = torch.stack([lightning_attn_decode(q[:, t], k[:, t], v[:, t], slope, state)
                                         for t in range(P, P + n)], 1)
                    r.setdefault("attn decode vs full: rel", []).append(rel(o_dec, o_chunk[:, sl]))
                    r.setdefault("frac", []).append(frac(o_dec, o_chunk[:, sl]))
                    if q.dtype != torch.float32:  # the chunk-form step (the engine's default with Triton)
                        state, keys, values = chunk_start(k[0, :P], v[0, :P], slope, [P], CHUNK)
                        o_form = torch.stack([lightning_attn_decode_chunk_form(
                            q[:, t], k[:, t], v[:, t], slope, state, keys, values,
                            torch.tensor([t], device=device, dtype=torch.int32)) for t in range(P, P + n)], 1)
                        r.setdefault("chunk-form decode: frac", []).append(frac(o_form, o_chunk[:, sl]))
                else:
                    pos = c["pos"]
                    qq = rotary(attn.q_proj(h).view(1, T, attn.num_heads, attn.head_dim), pos, attn.rotary_dim,
                                attn.theta).transpose(1, 2)
                    kk = rotary(attn.k_proj(h).view(1, T, attn.num_kv_heads, attn.head_dim), pos, attn.rotary_dim,
                                attn.theta).transpose(1, 2)
                    vv = attn.v_proj(h).view(1, T, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
                    scale = attn.head_dim ** -0.5
                    o_full = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, scale=scale, enable_gqa=True)
                    o_full = o_full[0, :, sl].transpose(0, 1)
                    lengths = torch.arange(P + 1, P + n + 1, device=device, dtype=torch.int32)
                    o_dec = decode_attention(qq[0, :, sl].transpose(0, 1).contiguous(),
                                             kk.expand(n, -1, -1, -1), vv.expand(n, -1, -1, -1), lengths, scale)
                    r.setdefault("attn decode vs full: rel", []).append(rel(o_dec, o_full))
                    r.setdefault("frac", []).append(frac(o_dec, o_full))
            h2 = c["h2"][sl]
            with amp(device, autocast):
                moe_e = _moe(layer.block_sparse_moe, h2, engine._w13[i], engine._w2[i])
            r.setdefault("MoE engine vs learner: rel", []).append(rel(moe_e, c["moe"][sl]))
            r.setdefault("frac ", []).append(frac(moe_e, c["moe"][sl]))
            args = (layer, c["x"][sl][:, None], c["h"][sl][:, None], c["a"][sl][:, None], engine._w13[i],
                    engine._w2[i])
            r.setdefault("block tail eager vs learner: frac", []).append(
                frac(regions["block_tail"](*args)[:, 0], c["out"][sl]))
            if comp:
                r.setdefault("compiled: frac", []).append(frac(comp["block_tail"](*args)[:, 0], c["out"][sl]))
    columns = list(dict.fromkeys(k for r in rows.values() for k in r))
    print("layer | " + " | ".join(columns))
    for i, r in rows.items():
        print(f"{i} | " + " | ".join(f"{sum(r[c]) / len(r[c]):.2e}" if c in r else "-" for c in columns), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--max-prompt", type=int, default=512)
    parser.add_argument("--layer-prompts", type=int, default=4, help="prompts in the per-layer tables")
    parser.add_argument("--skip-modes", action="store_true")
    parser.add_argument("--skip-layers", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    fp32 = MiniMaxForCausalLM(MiniMaxConfig.preset("small")).to(device).eval()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 256, (int(n),), generator=g).tolist()
               for n in torch.randint(64, args.max_prompt, (args.prompts,), generator=g)]
    sampling = SamplingConfig(max_new_tokens=args.new, temperature=1.0, seed=0)
    start = time.perf_counter()
    if not args.skip_modes:
        agreement_table(fp32, bf16, prompts, sampling)
    if not args.skip_layers:
        few = prompts[: args.layer_prompts]
        for name, model, ac, learner, autocast in (
                ("bf16 copy, bf16 residual vs bf16 weights", bf16, None, bf16, False),
                ("fp32 weights, autocast bf16 vs the Learner (fp32 + autocast)", fp32, torch.bfloat16, fp32, True)):
            print(f"\n## drift per layer: {name} (eager step)")
            gens = drift_table(model, learner, autocast, few, sampling, {"autocast_dtype": ac})
            print(f"\n## local errors per layer on the learner's inputs: {name}")
            local_table(learner, autocast, few, gens, compiled=cuda)
            print(f"[{time.perf_counter() - start:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
