"""Policies from command-line specs, so that ``lightswe rollout --policy SPEC`` and Ray workers build the same one.

    scripted                               gold-patch scripts of the rollout's tasks; ?tool_format=hermes
    model:tiny | model:/path/to/ckpt       the built-in model; options ?device=cuda&seed=0&max_batch=16
                                           (&batch_invariant=true: bit-identical rows, see ModelPolicy)
    hf:/path/to/ckpt                       a transformers causal LM (Qwen2, Llama, ...) with its ChatML tokenizer;
                                           options ?device=cuda&max_batch=16 (``lightswe.model.hf``)
    openai:http://host:8000/v1             an OpenAI-compatible server; options ?model=NAME&api_key=KEY
                                           (&timeout_s=600&retries=2: per request, see OpenAIPolicy;
                                           &ca_file=ca.pem: the CA of an https:// server's certificate)
    vllm:MODEL | vllm:hf:/path/to/ckpt     vLLM in-process; options become vllm.LLM keyword arguments
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl

from lightswe.agent.chat import Tokenizer
from lightswe.agent.policies.base import Policy
from lightswe.errors import UserInputError

KINDS = ("scripted", "model", "hf", "openai", "vllm")


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def split_spec(spec: str) -> tuple[str, str, dict]:
    """``"kind:target?k=v&..."`` -> (kind, target, options)."""
    kind = next((k for k in KINDS if spec == k or spec.startswith((k + ":", k + "?"))), None)
    if kind is None:
        raise UserInputError(f"policy spec {spec!r}: expected one of {[k + ':...' for k in KINDS]}, e.g. "
                         "'scripted', 'model:tiny', 'openai:http://localhost:8000/v1?model=NAME'")
    target, _, query = spec[len(kind):].removeprefix(":").partition("?")
    return kind, target, {k: _value(v) for k, v in parse_qsl(query)}


def _keywords(*functions, drop: tuple[str, ...] = ()) -> list[str]:
    """The keyword parameters of ``functions`` (what ``?k=v`` options of a spec may name), without ``drop``."""
    import inspect

    names = [n for f in functions for n, p in inspect.signature(f).parameters.items()
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in ("self", "cls", *drop)]
    return sorted(set(names))


def spec_options(kind: str) -> list[str] | None:
    """The ``?k=v`` options a policy ``kind`` accepts (None: any, e.g. ``vllm:``'s ``vllm.LLM`` arguments)."""
    if kind == "scripted":
        from lightswe.agent.policies.scripted import ScriptedPolicy

        return _keywords(ScriptedPolicy.__init__, drop=("scripts", "tokenizer"))
    if kind in ("model", "hf"):
        from lightswe.agent.policies.model import ModelPolicy

        extra = (ModelPolicy.from_spec,) if kind == "model" else ()
        return sorted({*_keywords(ModelPolicy.__init__, *extra, drop=("model", "name", "spec")), "device"})
    if kind == "openai":
        from lightswe.agent.policies.openai_server import OpenAIPolicy

        return _keywords(OpenAIPolicy.__init__, drop=("base_url",))
    return None


def check_spec(spec: str, *, option: str = "--policy") -> None:
    """Refuse a policy spec that cannot work, before any work and without importing torch: an unknown kind, a
    missing target, a ``model:`` target that is neither a preset nor a checkpoint directory, an ``hf:`` /
    ``vllm:hf:`` directory without ``config.json``, an ``openai:`` target that is not an http(s) URL or a ``ca_file``
    that is not a file, an option
    after ``?`` that the kind does not take (a misspelt ``devce=cuda``).

    Raises:
        UserInputError: one line, ``OPTION 'SPEC': what is wrong; fix: ...``.
    """
    from pathlib import Path

    try:
        kind, target, options = split_spec(spec)
    except ValueError as err:
        raise UserInputError(f"{option} {err}") from None
    if kind != "scripted" and not target:
        raise UserInputError(f"{option} {spec!r}: names no {kind} target; fix: e.g. {_EXAMPLES[kind]}")
    if kind == "model" and not Path(target).is_dir():
        from lightswe.model.config import PRESETS

        if target not in PRESETS:
            what = "is a file" if Path(target).exists() else "is neither a preset nor a checkpoint directory"
            raise UserInputError(f"{option} {spec!r}: {target} {what}; fix: model:PRESET ({', '.join(sorted(PRESETS))}) "
                                 f"or model:DIR, a directory written by save_pretrained")
    if kind == "model" and Path(target).is_dir():
        from lightswe.model.config import checkpoint_problem

        problem = checkpoint_problem(target)
        if problem:
            raise UserInputError(f"{option} {spec!r}: {problem}; fix: model:DIR with a checkpoint written by "
                                 f"save_pretrained (config.json + safetensors)")
    hf_dir = target if kind == "hf" else target.removeprefix("hf:") if kind == "vllm" and target.startswith("hf:") else None
    if hf_dir is not None:
        from lightswe.model.config import hf_checkpoint_problem

        problem = hf_checkpoint_problem(hf_dir, kind="vllm:hf:" if kind == "vllm" else "hf:")
        if problem:
            raise UserInputError(f"{option} {spec!r}: {problem}")
    if kind == "vllm" and not target.startswith("hf:") and target.startswith(("/", "./", "../", "~")):
        from lightswe.model.config import hf_checkpoint_problem

        problem = hf_checkpoint_problem(Path(target).expanduser(), kind="vllm:")  # a path, not a Hub name
        if problem:
            raise UserInputError(f"{option} {spec!r}: {problem}")
    if kind == "openai" and not target.startswith(("http://", "https://")):
        raise UserInputError(f"{option} {spec!r}: {target} is not an http(s) URL; fix: e.g. {_EXAMPLES['openai']}")
    if kind == "openai" and "ca_file" in options and not Path(str(options["ca_file"])).is_file():
        raise UserInputError(f"{option} {spec!r}: ca_file {options['ca_file']} is not a file; fix: the PEM file of the "
                             "CA that signed the server's certificate (its own, if self-signed)")
    allowed = spec_options(kind)
    unknown = [k for k in options if allowed is not None and k not in allowed]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], allowed, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UserInputError(f"{option} {spec!r}: unknown option(s) {', '.join(unknown)} for {kind}:; fix: {hint}"
                             f"options after '?' are {', '.join(allowed) or 'none'}")


_EXAMPLES = {"model": "'model:tiny' or 'model:runs/t1/final'", "hf": "'hf:path/to/checkpoint'",
             "openai": "'openai:http://localhost:8000/v1?model=NAME'", "vllm": "'vllm:hf:path/to/checkpoint'",
             "scripted": "'scripted'"}


def tokenizer_path(spec: str) -> str | None:
    """The tokenizer a policy spec implies: the checkpoint's for ``hf:PATH`` and ``vllm:hf:PATH``, else None
    (the built-in byte tokenizer)."""
    kind, target, _ = split_spec(spec)
    if kind == "hf":
        return target
    if kind == "vllm" and target.startswith("hf:"):
        return target.removeprefix("hf:")
    return None


PROBE = "def add(x, y):\n    return x + y  # naïve ✓\n"  # code, an accent, a symbol: tokenizers differ on them


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return list((getattr(tokenizer, "encode_ordinary", None) or tokenizer.encode)(text))


def check_tokenizer(spec: str, path: str | None, *, option: str = "--tokenizer") -> None:
    """Refuse a tokenizer (``path``: a ``tokenizer.json`` or a folder holding one; None: the built-in byte tokenizer)
    that is not the local model's, before any episode (``openai:`` servers are checked against their ``/tokenize`` by
    ``OpenAIPolicy.check_tokenizer``): for ``hf:DIR`` / ``vllm:hf:DIR`` it must tokenize a probe text as the
    checkpoint's own ``tokenizer.json`` does (else the ids the model writes mean other text here: the env runs and
    the learner trains on what the model did not write); for every local model (``model:``, ``hf:``, ``vllm:hf:``)
    its vocabulary must fit the model's ``vocab_size`` (else every episode fails on its first prompt). Nothing is
    loaded but ``config.json`` and the tokenizers; other kinds pass.

    Raises:
        UserInputError: one line naming the tokenizer, what differs and the fix.
    """
    import json
    from pathlib import Path

    kind, target, _ = split_spec(spec)
    folder = target if kind == "hf" else target.removeprefix("hf:") if kind == "vllm" and target.startswith("hf:") \
        else target if kind == "model" and Path(target).is_dir() else None
    if folder is not None:
        try:
            config = json.loads((Path(folder) / "config.json").read_text())
            vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
        except (OSError, ValueError, AttributeError):
            vocab = None  # check_spec / the loader says what is wrong with the checkpoint
    elif kind == "model":
        from lightswe.model.config import PRESETS

        vocab = PRESETS[target]().vocab_size if target in PRESETS else None
    else:
        return
    from lightswe.model.tokenizer import load_tokenizer

    tokenizer, name = load_tokenizer(path), path or "(the built-in byte tokenizer)"
    own_file = Path(folder) / "tokenizer.json" if folder is not None and kind != "model" else None
    if path is not None and own_file is not None and own_file.is_file():
        ours, theirs = _encode(tokenizer, PROBE), _encode(load_tokenizer(own_file), PROBE)
        if ours != theirs:
            raise UserInputError(f"{option} {name}: tokenizes {PROBE!r} as {ours[:8]}... but the checkpoint's own "
                                 f"{own_file} gives {theirs[:8]}...: the ids {kind}:{target} writes would mean other "
                                 f"text here; fix: leave {option} out ({kind}: uses the checkpoint's tokenizer)")
    if isinstance(vocab, int) and tokenizer.vocab_size > vocab:
        own = "the built-in byte tokenizer: leave it out" if kind == "model" else f"leave {option} out"
        raise UserInputError(f"{option} {name}: has {tokenizer.vocab_size} token ids but {kind}:{target} has a "
                             f"vocabulary of {vocab} (ids past it cannot be read or written); fix: the tokenizer the "
                             f"model was trained with ({own})")


def preflight(policy: Policy, tokenizer: Tokenizer) -> None:
    """The checks a built policy gets before its first episode, in the process that will run its episodes (the
    rollout's own for threads, an actor's with ``--ray``: the node that talks to the server): a policy with a
    ``check(tokenizer)`` method runs it (``OpenAIPolicy.check``: the server answers, serves the model asked for,
    tokenizes as ``tokenizer`` does), so that a misconfigured policy fails in one line instead of as N
    ``sandbox_error`` episodes. The one place both paths call.

    Raises:
        whatever the policy's ``check`` raises (UserInputError, InfrastructureError), naming the fix.
    """
    check = getattr(policy, "check", None)
    if callable(check):
        check(tokenizer)


def make_policy(spec: str, *, tokenizer: Tokenizer, tasks: Sequence = ()) -> Policy:
    """The policy ``spec`` names (see the module docs), built in this process.

    Raises:
        UserInputError: a spec :func:`check_spec` refuses, or a ``device`` option this machine cannot use.
        ValueError: the scripted policy without tasks.
    """
    check_spec(spec)
    kind, target, options = split_spec(spec)
    if kind in ("model", "hf") and "device" in options:
        from lightswe.agent.train_model import check_device

        try:
            check_device(str(options["device"]), option="device")
        except UserInputError as err:
            raise UserInputError(f"--policy {spec!r}: {err}") from None
    if kind == "scripted":
        from lightswe.agent.policies.scripted import ScriptedPolicy

        if not tasks:
            raise UserInputError("the scripted policy needs the rollout's tasks (it replays their gold patches)")
        return ScriptedPolicy.from_tasks(tasks, tokenizer, **options)
    if not target:
        raise UserInputError(f"policy spec {spec!r} names no {kind} target; e.g. '{kind}:...' as in the module docs")
    if kind == "model":
        from lightswe.agent.policies.model import ModelPolicy

        return ModelPolicy.from_spec(target, **options)
    if kind == "hf":
        from lightswe.agent.policies.model import ModelPolicy
        from lightswe.model.hf import HFCausalLM, check_chat_template

        device = options.pop("device", "cpu")
        model = HFCausalLM.from_pretrained("hf:" + target, device=device)
        check_chat_template(model.tokenizer)
        options.setdefault("continuous", False)  # the continuous engine is the built-in model's (CUDA)
        return ModelPolicy(model, name=f"hf:{target}", **options)
    if kind == "openai":
        from lightswe.agent.policies.openai_server import OpenAIPolicy

        return OpenAIPolicy(target, **options)
    from lightswe.agent.policies.vllm_engine import VLLMPolicy

    try:
        return VLLMPolicy(target, **options)
    except OSError as err:  # a name vLLM cannot resolve: no such Hub repository, or the Hub out of reach
        first = " ".join(str(err).split())[:300]
        raise UserInputError(f"--policy {spec!r}: vLLM cannot load {target} ({type(err).__name__}: {first}); fix: "
                             "vllm:hf:DIR with a local checkpoint, or a Hub name this machine can download") from None
