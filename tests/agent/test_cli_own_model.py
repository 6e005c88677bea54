"""A researcher's own model behind ``rollout`` / ``eval``: what a wrong setting does, with real parts (a real
server process, real checkpoints and tokenizer files, the Docker engine).

Before these checks: an ``openai:`` spec naming a model the server does not serve (or none) sent every request to
vLLM's 404, so every episode became ``sandbox_error`` and the command blamed the Docker engine; a ``--tokenizer``
that was not a local model's ran (an ``hf:`` checkpoint with another tokenizer: exit 0, the model's ids decoded
as other text, stored and trainable) or failed every episode on its first prompt (ids past the vocabulary); a task
whose image cannot be built, beside good ones, ended as ``sandbox_error`` with exit 0 and no word of it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from lightswe.agent.policies.openai_server import OpenAIPolicy
from lightswe.agent.policies.spec import check_tokenizer
from lightswe.cli import main
from lightswe.errors import UserInputError

from .test_chat import _hf_tokenizer
from .test_model_server_faults import Server
from .vllm_support import needs_vllm


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "fix:" in lines[0], lines
    return lines[0]


def test_an_openai_model_name_the_server_does_not_serve_is_refused_before_any_episode(tmp_path, capsys):
    server = Server()  # a real server process; its /v1/models lists one model, "default"
    try:
        OpenAIPolicy(server.url, model="default").check_model()  # the served name passes
        with pytest.raises(UserInputError, match=r"asks for model 'Qwen/Qwen2.5-0.5B'.*serves 'default'"):
            OpenAIPolicy(server.url, model="Qwen/Qwen2.5-0.5B").check_model()
        out = tmp_path / "r"
        code = main(["rollout", "--tasks", "demo", "--policy", f"openai:{server.url}?model=mistyped", "--out", str(out),
                     "--no-progress"])
    finally:
        server.close()
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "'mistyped'" in line and "?model=default" in line and not out.exists()


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    """A real BPE tokenizer.json (298 ids, merges of its own): neither the byte tokenizer nor a checkpoint's."""
    folder = tmp_path_factory.mktemp("other-tokenizer")
    _hf_tokenizer(folder)
    return str(folder / "tokenizer.json")


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    pytest.importorskip("transformers")
    from lightswe.model.hf import tiny_checkpoint

    return str(tiny_checkpoint(tmp_path_factory.mktemp("qwen2"), "qwen2"))


def test_tokenizer_takes_a_file_or_the_folder_holding_it(hf_checkpoint, other_tokenizer, tmp_path, capsys):
    """A checkpoint folder as --tokenizer (as load_tokenizer takes it): read and checked, not refused as a folder."""
    for given in (other_tokenizer, str(Path(other_tokenizer).parent)):
        assert main(["rollout", "--tasks", "demo", "--policy", f"hf:{hf_checkpoint}", "--tokenizer", given,
                     "--out", str(tmp_path / "r")]) == 2
        assert "would mean other text here" in _one_error_line(capsys.readouterr().err)
    assert main(["rollout", "--tasks", "demo", "--tokenizer", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "is a directory without tokenizer.json" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("kind", ["hf", "vllm:hf"], ids=["hf", "vllm-hf"])
def test_a_tokenizer_that_is_not_the_checkpoints_is_refused(hf_checkpoint, other_tokenizer, kind):
    spec = f"{kind}:{hf_checkpoint}"
    check_tokenizer(spec, None if kind == "hf" else f"{hf_checkpoint}/tokenizer.json")  # its own: passes
    with pytest.raises(UserInputError, match="would mean other text here; fix: leave --tokenizer out"):
        check_tokenizer(spec, other_tokenizer)


@pytest.mark.parametrize("target", ["tiny", "final"], ids=["preset", "checkpoint-dir"])
def test_a_tokenizer_past_a_models_vocabulary_is_refused(tmp_path, other_tokenizer, target, capsys):
    if target == "final":  # a run's final/ (save_pretrained): the vocabulary is read from its config.json
        from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM

        MiniMaxForCausalLM(MiniMaxConfig.preset("tiny")).save_pretrained(tmp_path / "final")
        target = str(tmp_path / "final")
    check_tokenizer(f"model:{target}", None)  # the built-in byte tokenizer fits
    out = tmp_path / "r"
    code = main(["rollout", "--tasks", "demo", "--policy", f"model:{target}", "--tokenizer", other_tokenizer,
                 "--out", str(out), "--no-progress"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "has 298 token ids" in line and "vocabulary of 272" in line and not out.exists()


@pytest.mark.docker
def test_a_task_whose_image_cannot_be_built_is_named_after_the_rollout(tmp_path, capsys):
    """One good task and one whose base commit its source does not have: the good one runs, the bad one is
    ``sandbox_error`` (never scored) and named in one warning line with the task's own fix (exit 0: the rest ran);
    alone, it is an error (exit 1) whose line carries that fix once, not a second one about the Docker engine."""
    from lightswe.tasks import load_tasks
    from lightswe.tasks.instance import write_jsonl

    good = load_tasks("demo")[0]
    bad = dataclasses.replace(good, instance_id="no-such-base", base_commit="0" * 40)
    write_jsonl([good, bad], tmp_path / "mixed.jsonl")
    write_jsonl([bad], tmp_path / "bad.jsonl")
    run = ["--policy", "model:tiny", "--max-steps", "1", "--max-new-tokens", "4", "--no-progress"]
    assert main(["rollout", "--tasks", str(tmp_path / "mixed.jsonl"), "--out", str(tmp_path / "m"), *run]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warning) == 1 and "1 episode(s) of task(s) no-such-base ended in sandbox_error" in warning[0]
    assert warning[0].count("fix:") == 1 and "base_commit" in warning[0] and "Docker engine" not in warning[0]
    assert main(["eval", "--out", str(tmp_path / "m")]) == 0
    report = json.loads((tmp_path / "m" / "eval_report.json").read_text())
    assert (report["episodes"], report["ungraded"]) == (1, 1)
    capsys.readouterr()
    assert main(["rollout", "--tasks", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "b"), *run]) == 1
    line = [line for line in capsys.readouterr().err.splitlines() if "error:" in line][0]
    assert "every episode (1) ended in sandbox_error" in line and line.count("fix:") == 1 and "then rerun" in line


@pytest.mark.parametrize(("argv", "expected"), [
    (["rollout", "--tasks", "demo", "--policy", "hf:HuggingFaceTB/SmolLM2-135M-Instruct"],
     ("--policy", "not a local folder (a Hugging Face Hub name?", "fix: hf download HuggingFaceTB/SmolLM2-135M-Instruct "
      "--local-dir DIR, then hf:DIR")),
    (["rollout", "--tasks", "demo", "--policy", "vllm:hf:Qwen/Qwen2.5-0.5B-Instruct"],
     ("then vllm:hf:DIR", "vllm:NAME loads a Hub name itself")),
    (["train", "--model", "hf:Qwen/Qwen2.5-0.5B-Instruct"], ("--model 'hf:Qwen/Qwen2.5-0.5B-Instruct'", "hf download")),
    (["rollout", "--tasks", "demo", "--policy", "hf:no-such-folder"], ("no-such-folder does not exist; fix: hf:DIR",)),
], ids=["hf-hub-name", "vllm-hf-hub-name", "train-hub-name", "missing-folder"])
def test_a_hub_name_where_a_checkpoint_folder_is_expected_says_how_to_get_it(tmp_path, capsys, argv, expected):
    out = tmp_path / "r"
    assert main([*argv, "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert all(text in line for text in expected), line
    assert not out.exists()


def test_a_train_runs_resume_checkpoint_is_not_taken_for_a_model_folder(tmp_path, capsys):
    import torch
    from lightswe.agent.checkpointing import save_checkpoint
    from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM

    model = MiniMaxForCausalLM(MiniMaxConfig.preset("tiny"))
    save_checkpoint(tmp_path / "run" / "checkpoints", step=1, model=model,
                    optimizer=torch.optim.AdamW(model.parameters()), keep=2, state={})
    (step,) = (tmp_path / "run" / "checkpoints").glob("step-*")
    assert main(["eval", "--tasks", "demo", "--policy", f"model:{step}", "--out", str(tmp_path / "e")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "resume checkpoint" in line and "final/" in line


@pytest.mark.parametrize("target", ["/no/such/checkpoint", "./"], ids=["missing-path", "folder-without-config"])
def test_a_vllm_path_that_holds_no_checkpoint_is_refused_before_vllm_starts(tmp_path, capsys, target):
    assert main(["rollout", "--tasks", "demo", "--policy", f"vllm:{target}", "--out", str(tmp_path / "r")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "fix: vllm:DIR" in line


@pytest.mark.slow  # (12 s: a real vLLM start; the one-line errors of the other backends run in the default suite)
@pytest.mark.vllm
@needs_vllm
def test_a_vllm_model_name_it_cannot_resolve_is_one_line(tmp_path):
    """The real vLLM (``.venv-vllm``), the Hub out of reach (``HF_HUB_OFFLINE=1``, as on this machine): the name is
    refused in one line, exit 2 (before: a 90-line traceback from transformers' hub code, exit 1)."""
    import subprocess

    from .vllm_support import child_env, vllm_python

    proc = subprocess.run([vllm_python(), "-m", "lightswe", "rollout", "--tasks", "demo", "--policy",
                           "vllm:no-such-owner/no-such-model", "--out", str(tmp_path / "r"), "--no-progress"],
                          env={**child_env(), "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if "lightswe rollout" in line or "Traceback" in line]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "vLLM cannot load no-such-owner/no-such-model" in lines[0] and "fix: vllm:hf:DIR" in lines[0]
    assert not (tmp_path / "r").exists()  # refused before the folder is written
