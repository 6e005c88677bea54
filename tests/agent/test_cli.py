"""CLI pieces that need no sandbox: the Wilson interval, policy specs, eval over a stored run."""

from __future__ import annotations

import pytest
from lightswe.agent.cli import wilson_interval
from lightswe.agent.policies.model import ModelPolicy
from lightswe.agent.policies.openai_server import OpenAIPolicy
from lightswe.agent.policies.spec import make_policy, split_spec
from lightswe.cli import main
from lightswe.model import ByteTokenizer

from .test_viewer import episode


@pytest.mark.parametrize("k,n,low,high", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0)])
def test_wilson_interval_matches_published_values(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize("k,n", [(81, 263), (1, 7), (30, 31)])
def test_wilson_bounds_solve_the_score_equation(k, n):
    z, p_hat = 1.959964, k / n
    for p in wilson_interval(k, n):  # the bounds are where the score test is exactly at z
        assert (p_hat - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, rel=1e-9)


def test_policy_specs():
    assert split_spec("openai:http://h:8000/v1?model=m&timeout_s=5") == ("openai", "http://h:8000/v1",
                                                                          {"model": "m", "timeout_s": 5})
    assert split_spec("model:tiny") == ("model", "tiny", {})
    assert split_spec("scripted?tool_format=hermes") == ("scripted", "", {"tool_format": "hermes"})
    assert split_spec("scripted") == ("scripted", "", {})
    tok = ByteTokenizer()
    assert isinstance(make_policy("model:tiny?seed=3&max_batch=2", tokenizer=tok), ModelPolicy)
    assert make_policy("openai:http://h:1/v1?model=x", tokenizer=tok).model == "x"
    assert isinstance(make_policy("openai:http://h:1", tokenizer=tok), OpenAIPolicy)
    with pytest.raises(ValueError, match="expected one of"):
        make_policy("gpt5", tokenizer=tok)
    with pytest.raises(ValueError, match="needs the rollout's tasks"):
        make_policy("scripted", tokenizer=tok)


def test_eval_summarises_a_stored_run(tmp_path, capsys):
    from lightswe.agent.trajectory import TrajectoryWriter

    with TrajectoryWriter(tmp_path / "run") as writer:
        for i in range(4):
            writer.write(episode(i, resolved=i == 0))
    assert main(["eval", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "resolve rate 25.0% (1/4 graded), 95% CI [4.6%, 69.9%]" in out
    assert "resolve rate 25.0% (1/4 graded)" in (tmp_path / "run" / "eval_report.txt").read_text()
    assert main(["view", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "index.html").stat().st_size > 1000
    page = tmp_path / "new" / "folder" / "run.html"  # --output in a folder that does not exist yet: made
    assert main(["view", str(tmp_path / "run"), "--output", str(page)]) == 0
    assert page.read_text() == (tmp_path / "run" / "index.html").read_text()
    assert not list(page.parent.glob("*.tmp"))


def test_train_refuses_bad_engine_settings_before_any_work(tmp_path, capsys):
    import importlib.util

    from lightswe.cli import main

    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--vllm-arg", "gpu_memory_utilization"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    if importlib.util.find_spec("vllm") is None:
        assert main(["train", "--out", str(out), "--engine", "vllm"]) == 2
        assert "pip install 'lightswe[vllm]'" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--engine", "vllm", "--ray"]) == 2  # a bare --ray: a local cluster
    assert not out.exists(), "nothing may be written before the settings are checked"


def test_eval_and_view_find_the_episodes_of_a_train_run_in_its_sub_folders(tmp_path, capsys):
    import json

    from lightswe.agent.trajectory import TrajectoryWriter

    run = tmp_path / "train"
    for folder, resolved in (("eval/step-0000", [False, False]), ("rollouts/step-0001", [True, False, False]),
                             ("eval/step-0001", [True, True])):
        with TrajectoryWriter(run / folder) as writer:
            for i, ok in enumerate(resolved):
                writer.write(episode(i, resolved=ok))
    assert main(["eval", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "resolve rate 42.9% (3/7 graded)" in out and "eval/step-0001: resolve rate 100.0% (2/2 graded)" in out
    report = json.loads((run / "eval_report.json").read_text())
    assert report["episodes"] == 7 and report["folders"]["eval/step-0000"]["resolved"] == 0
    assert (run / "eval_report.txt").read_text().splitlines()[0].startswith("resolve rate 42.9% (3/7 graded)")
    assert main(["view", str(run)]) == 0
    page = (run / "index.html").read_text()
    assert page.count("<h2>") == 3 and "rollouts/step-0001" in page
    ids = [part.split('"')[0] for part in page.split(' id="')[1:]]
    assert len(ids) == len(set(ids)), "anchors must be unique across folders"

    empty = tmp_path / "empty"
    (empty / "rollouts").mkdir(parents=True)
    assert main(["eval", "--out", str(empty)]) == 2
    assert "no episodes in it or its sub-folders" in capsys.readouterr().err
    assert main(["view", str(empty)]) == 2


def test_an_openai_server_that_does_not_answer_fails_in_one_line_before_any_episode(tmp_path, capsys):
    import socket

    from .completions_server import CompletionsServer

    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    assert main(["rollout", "--tasks", "demo", "--policy", f"openai:http://127.0.0.1:{port}/v1?model=m",
                 "--out", str(out), "--no-progress"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"no OpenAI-compatible server answers at http://127.0.0.1:{port}/v1" in lines[0], lines
    assert "fix:" in lines[0] and not out.exists()  # no episode was run, no folder written
    with CompletionsServer(policy=None) as server:  # any HTTP answer counts (this one has no GET /v1/models: 501)
        OpenAIPolicy(server.url, model="m").check_reachable(timeout_s=10)


def test_a_ray_address_where_no_cluster_answers_fails_in_one_line_before_any_work(tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port nothing listens on once closed (ray.init retried it for minutes)
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    for argv in (["rollout", "--tasks", "demo", "--no-progress"], ["train"]):
        for spelled in (address, f"ray://{address}"):
            out = tmp_path / "out"
            assert main([*argv, "--ray", spelled, "--out", str(out)]) == 1
            lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
            assert len(lines) == 1 and f"--ray {spelled}: no Ray cluster answers there" in lines[0], lines
            assert "fix:" in lines[0] and not out.exists()
