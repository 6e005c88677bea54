"""The model a training run starts from: the one place that turns ``--model`` into a module and its tokenizer.

``--model`` is a preset name of the built-in MiniMax model (``tiny``, ``small``: random init from the run's
seed, the same weights on every rank), a checkpoint directory written by ``save_pretrained``, or ``hf:DIR``: any
transformers causal LM (Qwen2, Llama family, ...) with its tokenizer and ChatML chat template
(``lightswe.model.hf.HFCausalLM``; the checkpoint's own tokenizer then builds the conversations). New kinds of
model are added here, and only here.

Example::

    model, tokenizer = build_model("tiny", device="cpu", seed=0)
    model, tokenizer = build_model("hf:ckpt/qwen2", device="cpu", seed=0)
    copy = sampler_copy(model, device="cpu")     # a full, frozen copy (the sampler of a sharded learner)
"""

from __future__ import annotations

from pathlib import Path

from lightswe.errors import UserInputError


def check_model_spec(spec: str) -> None:
    """Refuse a ``--model`` that is neither a preset nor a checkpoint directory, before any work.

    Raises:
        UserInputError: naming the value and the choices.
    """
    from lightswe.model.config import PRESETS, hf_checkpoint_problem

    if spec.startswith("hf:"):
        problem = hf_checkpoint_problem(spec.removeprefix("hf:"))
        if problem:
            raise UserInputError(f"--model {spec!r}: {problem}")
        return
    if Path(spec).is_dir():
        from lightswe.model.config import checkpoint_problem

        problem = checkpoint_problem(spec)
        if problem:
            raise UserInputError(f"--model {spec!r}: {problem}; fix: a directory written by save_pretrained (e.g. a "
                                 f"run's final/), a preset ({', '.join(sorted(PRESETS))}) or hf:DIR")
        return
    if spec in PRESETS:
        return
    if Path(spec).exists():
        raise UserInputError(f"--model {spec!r} is a file; expected a checkpoint directory (save_pretrained) or "
                             f"a preset: {', '.join(sorted(PRESETS))}")
    raise UserInputError(f"--model {spec!r}: no such preset or checkpoint directory; expected one of "
                         f"{', '.join(sorted(PRESETS))}, a directory written by save_pretrained, or hf:DIR (a "
                         f"transformers checkpoint)")


def check_device(device: str, option: str = "--device") -> None:
    """Refuse a torch device this machine cannot use, before any work: a misspelt name (``cudaa``), CUDA where
    torch has none, a GPU index past the last one.

    Raises:
        UserInputError: ``"OPTION 'DEVICE': WHAT; fix: ..."`` on one line.
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserInputError(f"{option} {device!r}: not a torch device; fix: cpu, cuda or cuda:N") from err
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"{option} {device!r}: no CUDA device here (torch {torch.__version__}, "
                                 f"torch.cuda.is_available() is False); fix: {option} cpu, or run on a GPU machine "
                                 f"with a CUDA build of torch")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise UserInputError(f"{option} {device!r}: this machine has {count} CUDA device(s) (cuda:0 to "
                                 f"cuda:{count - 1}); fix: pick one of them")
    elif parsed.type != "cpu":
        backend = getattr(torch, parsed.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise UserInputError(f"{option} {device!r}: no {parsed.type} device here; fix: {option} cpu or cuda")


def build_model(spec: str, *, device: str, seed: int):
    """``(model, tokenizer)`` for a run: the learner's module (float32 weights on ``device``) and its tokenizer.

    Raises:
        UserInputError: ``spec`` is neither a preset nor a checkpoint directory.
    """
    from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM, load_tokenizer
    from lightswe.model.hf import HFCausalLM, check_chat_template, hf_path, is_hf_spec

    check_model_spec(spec)
    if is_hf_spec(spec):
        model = HFCausalLM.from_pretrained(spec, device=device)
        check_chat_template(model.tokenizer)
        return model, load_tokenizer(hf_path(spec))
    tokenizer = load_tokenizer(None)
    if Path(spec).is_dir():
        model = MiniMaxForCausalLM.from_pretrained(spec, device=device)
    else:
        model = MiniMaxForCausalLM(MiniMaxConfig.preset(spec)).to(device)
        model.init_weights(seed=seed)  # the same weights on every rank
    return model, tokenizer


def sampler_copy(model, *, device: str):
    """A full copy of ``model`` without gradients: each rank's sampler when the learner's copy is sharded."""
    from lightswe.model import MiniMaxForCausalLM
    from lightswe.model.hf import HFCausalLM

    if isinstance(model, HFCausalLM):
        sampler = model.empty_copy().to(device).requires_grad_(False)
    else:
        sampler = MiniMaxForCausalLM(model.config).to(device).requires_grad_(False)
    sampler.load_state_dict(model.state_dict())  # (deepcopy fails on tensors the last forward left behind)
    return sampler
