"""Offline format health of weights: sample first turns (T=0.5) on the rl+eval prompts of a recorded run and count
valid str_replace calls, and the min/mean log-prob of the canonical correct turns' non-operator tokens."""

import sys
import re
import torch
from pathlib import Path
from lightswe.agent.trajectory import read_trajectories
from lightswe.agent.learner import sequence_logprobs
from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM, SamplingConfig, load_tokenizer

tok = load_tokenizer()
HDR = [257] + list(b"assistant\n")
CALL = re.compile(
    r'^<think>\nStep 1 of 2: str_replace\.\n</think>\n<tool_calls>\n\{"name": "str_replace", "arguments": \{"path": "calc\.py", "old_str": "a // b", "new_str": "a ([-+*%]) b"\}\}\n</tool_calls><\|im_end\|>$'
)


def prompts_and_canon(run):
    out = {}
    for d in ["rollouts/step-0001", "eval/step-0000"]:
        for t in read_trajectories(Path(run) / d):
            ids = t.token_ids
            pos = [i for i in range(len(ids)) if ids[i : i + len(HDR)] == HDR]
            if t.reward == 1.0 and t.task_id not in out:
                out[t.task_id] = (ids[: pos[0] + len(HDR)], ids, t.loss_mask)
    return out


def health(model, data, n=8, seed=0):
    ok, ops, lps = 0, {}, []
    for k, (prompt, full, mask) in sorted(data.items()):
        gens = model.generate(
            [prompt] * n, SamplingConfig(max_new_tokens=160, temperature=0.5, stop_token_ids=(258,), seed=seed)
        )
        for g in gens:
            m = CALL.match(tok.decode(g.token_ids))
            ok += bool(m)
            if m:
                ops[m.group(1)] = ops.get(m.group(1), 0) + 1
        with torch.no_grad():
            lp, _ = sequence_logprobs(model, torch.tensor([full]), temperature=0.5)
        gen_start = len(prompt)
        plus = [i for i in range(gen_start, len(full)) if full[i] == ord("+")][0]
        vals = [lp[0, i].item() for i in range(gen_start, len(full)) if i != plus and mask[i]]
        lps.append(min(vals))
    return ok / (n * len(data)), ops, min(lps)


if __name__ == "__main__":
    run = sys.argv[1]
    data = prompts_and_canon(run)
    model = MiniMaxForCausalLM(MiniMaxConfig.preset("tiny"))
    for w in sys.argv[2:]:
        model.load_state_dict(torch.load(w))
        print(w, health(model, data), flush=True)
