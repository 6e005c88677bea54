"""Any Hugging Face causal LM (``transformers.AutoModelForCausalLM``) behind lightswe's model interface.

``HFCausalLM`` gives a transformers checkpoint (Qwen2, Llama family, ...) the methods the learner and the
built-in sampler use on ``MiniMaxForCausalLM``: ``score`` / ``token_logprobs`` (fp32 LM head, chunked, as in
``lightswe.model.model``), ``generate`` (KV-cached sampling with ``lightswe.model.generation.sample``, so the
sampler log-prob is the learner's: softmax(logits / T) before top-p), ``save_pretrained`` /
``from_pretrained`` (the transformers layout, tokenizer and chat template included, so vLLM loads a saved step
as it is). Its parameters carry the checkpoint's own names (``model.layers.0.self_attn.q_proj.weight`` ...):
the wrapper registers the transformers model's children as its own, so ``state_dict`` and the names pushed
into vLLM are exactly those of the checkpoint.

The agent builds conversations in ChatML token glue (``lightswe.agent.chat``); ``check_chat_template`` verifies
that the checkpoint's chat template renders system/user/assistant turns the same way (Qwen2, SmolLM2 and other
ChatML templates do) and raises ``UserInputError`` otherwise.

``tiny_checkpoint`` writes a random-weights checkpoint of a real architecture (Llama or Qwen2) with a
byte-level ChatML tokenizer whose ids equal ``lightswe.model.ByteTokenizer``'s: tests and demos run offline.

Example::

    model = HFCausalLM.from_pretrained("ckpt/")                     # or tiny_checkpoint("ckpt/", "qwen2")
    gens = model.generate([[1, 2, 3]], SamplingConfig(max_new_tokens=8, temperature=1.0, seed=0))
    lp = model.token_logprobs(torch.tensor([[1, 2, 3, *gens[0].token_ids]]), temperature=1.0)
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path

import torch
from lightswe.errors import UserInputError
from lightswe.model.generation import Generation, SamplingConfig, row_generators, row_seeds, sample
from lightswe.model.model import TokenLogprobs, _chunk_logprobs
from lightswe.model.tokenizer import SPECIAL_TOKENS
from torch import nn
from torch.utils.checkpoint import checkpoint

HF_PREFIX = "hf:"
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")


def is_hf_spec(spec: str) -> bool:
    return spec.startswith(HF_PREFIX)


def hf_path(spec: str) -> Path:
    """``"hf:PATH"`` -> PATH, checked to be a transformers checkpoint directory (``UserInputError`` if not)."""
    from lightswe.model.config import hf_checkpoint_problem

    path = Path(spec.removeprefix(HF_PREFIX))
    problem = hf_checkpoint_problem(path)
    if problem:
        raise UserInputError(f"{spec!r}: {problem}")
    return path


class HFCausalLM(nn.Module):
    """A transformers causal LM with lightswe's learner/sampler methods; parameters keep the checkpoint's names.

    ``hf_model``: an ``AutoModelForCausalLM`` instance (its children become this module's children).
    ``tokenizer``: the matching transformers tokenizer, saved with every ``save_pretrained``.
    """

    def __init__(self, hf_model: nn.Module, tokenizer=None) -> None:
        super().__init__()
        object.__setattr__(self, "hf", hf_model)  # not a child: its children are ours, under their own names
        for name, child in hf_model.named_children():
            self.add_module(name, child)
        self.config = hf_model.config
        self.tokenizer = tokenizer
        self.aux_loss = torch.zeros(())  # no MoE load-balancing loss (the learner's aux_loss_coef is 0 by default)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> HFCausalLM:
        """Load ``path`` (a directory, or ``hf:DIR``) in ``dtype`` (fp32 by default: the learner's precision)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = hf_path(str(path)) if str(path).startswith(HF_PREFIX) else Path(path)
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(hf_model, tokenizer).to(device)

    def empty_copy(self) -> HFCausalLM:
        """A new module of the same architecture and config (random weights; load a state dict into it)."""
        from transformers import AutoModelForCausalLM

        return HFCausalLM(AutoModelForCausalLM.from_config(self.config, dtype=self.hf.dtype), self.tokenizer)

    @property
    def spec_kind(self) -> str:
        """The policy-spec kind that loads a saved copy of this model (``hf:DIR``; the built-in one is ``model:``)."""
        return "hf"

    def save_pretrained(self, path: str | Path) -> None:
        """The transformers layout (``config.json``, safetensors) plus the tokenizer and its chat template."""
        path = Path(path)
        self.hf.save_pretrained(path)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)

    def train(self, mode: bool = True) -> HFCausalLM:
        self.hf.training = mode  # the children follow through nn.Module.train
        return super().train(mode)

    @property
    def vocab_size(self) -> int:
        return int(self.hf.get_output_embeddings().weight.shape[0])

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool = False):
        """The decoder's last hidden states [B, T, hidden] (before the LM head) and the KV cache."""
        decoder = self.hf.get_decoder()
        cache_arg = _cache_argument(type(decoder))  # transformers >= 5.2x renamed past_key_values to cache
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=use_cache, **{cache_arg: past_key_values})
        return out.last_hidden_state, getattr(out, cache_arg)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits from an fp32 copy of the LM head (as ``MiniMaxForCausalLM.logits``)."""
        return nn.functional.linear(hidden.float(), self.hf.get_output_embeddings().weight.float())

    def token_logprobs(self, input_ids: torch.Tensor, *, chunk_size: int = 1024, temperature: float = 1.0
                       ) -> torch.Tensor:
        """fp32 log p(x_t | x_<t) [B, T] aligned with ``input_ids`` (position 0: 0). Differentiable."""
        return self.score(input_ids, chunk_size=chunk_size, temperature=temperature, with_entropy=False).logprobs

    def score(self, input_ids: torch.Tensor, *, chunk_size: int = 1024, with_entropy: bool = True,
              temperature: float = 1.0) -> TokenLogprobs:
        """Log-probs (and entropies) [B, T] fp32 of ``input_ids`` [B, T] long, right-padded rows (causal
        attention: padding after a row's end does not change its tokens). ``temperature`` divides the logits."""
        if chunk_size < 1 or temperature <= 0:
            raise UserInputError(f"chunk_size must be >= 1 and temperature > 0, got {chunk_size} and {temperature}")
        hidden, _ = self.hidden_states(input_ids)
        batch, length = input_ids.shape
        flat_hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        targets = input_ids[:, 1:].reshape(-1)
        weight = self.hf.get_output_embeddings().weight.float()
        need_grad = torch.is_grad_enabled() and (flat_hidden.requires_grad or weight.requires_grad)
        lps, ents = [], []
        for start in range(0, targets.shape[0], chunk_size):
            args = (flat_hidden[start:start + chunk_size], weight, targets[start:start + chunk_size], temperature)
            lp, ent = checkpoint(_chunk_logprobs, *args, use_reentrant=False) if need_grad else _chunk_logprobs(*args)
            lps.append(lp)
            ents.append(ent)
        zeros = torch.zeros(batch, 1, device=hidden.device)

        def align(chunks: list[torch.Tensor]) -> torch.Tensor:
            flat = torch.cat(chunks) if chunks else torch.zeros(0, device=hidden.device)
            return torch.cat([zeros, flat.view(batch, length - 1)], dim=1)

        return TokenLogprobs(logprobs=align(lps), entropy=align(ents) if with_entropy else None,
                             aux_loss=self.aux_loss)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: SamplingConfig, *,
                 seeds: list[int | None] | None = None) -> list[Generation]:
        """Sample a continuation of every prompt (left-padded batch, KV cache); one ``Generation`` each, in order.
        Log-probs as in ``lightswe.model.generation``: fp32, under softmax(logits / T) before top-p; seeds per
        row as there (``seeds``, else ``row_seed(sampling.seed, i)``).

        Raises:
            lightswe.errors.NonFiniteError: an unfinished row's logits are not finite (``generation.sample``).
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserInputError("expected a non-empty list of non-empty prompts (token id lists)")
        vocab = self.vocab_size
        if any(not 0 <= t < vocab for p in prompts for t in p):
            raise UserInputError(f"prompt token ids must be in [0, vocab_size={vocab})")
        device = self.hf.get_output_embeddings().weight.device
        generators = row_generators(row_seeds(len(prompts), sampling, seeds), device)
        was_training = self.training
        self.eval()
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, device=device)
            mask[i, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden, cache = self.hidden_states(ids, mask, positions, use_cache=True)
        logits = self.logits(hidden[:, -1])
        stop = set(sampling.stop_token_ids)
        out: list[tuple[list[int], list[float]]] = [([], []) for _ in prompts]
        reasons: list[str | None] = [None] * len(prompts)
        last = positions[:, -1]
        for step in range(sampling.max_new_tokens):
            active = torch.tensor([r is None for r in reasons], device=device)  # finished rows' draws are unused
            tokens, logprobs = sample(logits, sampling, generators, active=active)
            for i, (token, logprob) in enumerate(zip(tokens.tolist(), logprobs.tolist())):
                if reasons[i] is not None:
                    continue
                out[i][0].append(token)
                out[i][1].append(logprob)
                if token in stop:
                    reasons[i] = "stop"
                elif step + 1 == sampling.max_new_tokens:
                    reasons[i] = "length"
            if all(r is not None for r in reasons):
                break
            last = last + 1
            mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype, device=device)], dim=1)
            hidden, cache = self.hidden_states(tokens[:, None], mask, last[:, None], cache, use_cache=True)
            logits = self.logits(hidden[:, -1])
        self.train(was_training)
        return [Generation(token_ids=t, logprobs=lp, finish_reason=r or "length", prompt_tokens=len(p))
                for (t, lp), r, p in zip(out, reasons, prompts)]


@functools.cache
def _cache_argument(decoder_class: type) -> str:
    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"


def check_chat_template(tokenizer) -> None:
    """Raise ``UserInputError`` unless the tokenizer's chat template renders system, user and the assistant
    header as ChatML, the glue ``lightswe.agent.chat.Conversation`` builds in token space."""
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    expected = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserInputError("the checkpoint's tokenizer has no chat template; lightswe's agent writes ChatML "
                             "(<|im_start|>role\\n...<|im_end|>): set tokenizer.chat_template to a ChatML template")
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if rendered != expected:
        raise UserInputError(f"the checkpoint's chat template renders {rendered[:120]!r}, not ChatML; lightswe's agent "
                             "builds ChatML turns in token space: use a ChatML-templated checkpoint (Qwen2, SmolLM2) "
                             "or save the tokenizer with a ChatML chat_template")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel pre-tokenizer's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def byte_chatml_tokenizer():
    """A transformers fast tokenizer with ``ByteTokenizer``'s ids (bytes 0-255, then ``SPECIAL_TOKENS``), eos
    ``<|im_end|>``, pad ``<|endoftext|>`` and a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHATML)


def tiny_checkpoint(path: str | Path, architecture: str = "llama", *, seed: int = 0, hidden_size: int = 128,
                    num_layers: int = 2, head_dim: int = 64, vocab_size: int = 320) -> Path:
    """Write a random-weights ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` checkpoint (fp32) with the byte ChatML
    tokenizer. head_dim 64: vLLM's CPU attention refuses 16. Returns ``path``."""
    import transformers

    configs = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}
    if architecture not in configs:
        raise UserInputError(f"architecture {architecture!r}: expected one of {sorted(configs)}")
    tokenizer = byte_chatml_tokenizer()
    heads = hidden_size // head_dim
    config = configs[architecture](
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=heads, head_dim=head_dim,
        max_position_embeddings=4096, tie_word_embeddings=False, torch_dtype="float32",
        bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    json.loads((path / "config.json").read_text())  # written and readable
    return path
