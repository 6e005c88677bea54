"""The ``lightswe`` command as a user meets it, in subprocesses: a quick ``--help`` that imports nothing heavy,
``--version``, one-line errors with exit code 2 for every kind of bad input (numbers, files, unknown options,
config files, changed settings on resume), and Ctrl-C during ``train`` (exit 130, one line, no container left)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ENV = {**os.environ, "COLUMNS": "100"}


def lightswe(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightswe", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=ENV, check=False)


def test_help_and_version_import_nothing_heavy():
    code = ("import sys\nfrom lightswe.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['rollout', '--help'], ['tasks', 'build', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'docker', 'transformers', 'ray') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"
    version = lightswe("--version")
    assert version.returncode == 0 and version.stdout.startswith("lightswe 0.")


def test_train_help_shows_every_option_with_its_default_and_help():
    run = subprocess.run([sys.executable, "-m", "lightswe", "train", "--help"], capture_output=True, text=True,
                         timeout=60, env={**ENV, "COLUMNS": "1000"}, check=False)  # one option per line
    assert run.returncode == 0
    text = " ".join(run.stdout.split())
    for option, default in (("--steps", "10"), ("--group-size", "8"), ("--learner.lr", "0.003"),
                            ("--warm-start.steps", "150"), ("--agent.max-steps", "2"),
                            ("--data.eval-tasks", "arith:eval:sum"), ("--log.wandb", "False")):
        assert option in text and f"(default: {default})" in text, option
    assert "--config FILE" in text and "--lr = --learner.lr" in text
    assert text.count("(default:") >= 45
    # no option without a help text: every entry has more than its default
    assert "│ (default:" not in run.stdout


def one_line(run: subprocess.CompletedProcess, command: str, *needles: str) -> str:
    assert run.returncode == 2, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith(f"lightswe {command}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


BAD_NUMBERS = [
    (("train", "--steps", "-1"), "--steps -1", "fix:"),
    (("train", "--group-size", "0"), "--group-size 0", "fix:"),
    (("train", "--warm-start-steps", "-5"), "--warm-start.steps -5", "fix:"),
    (("train", "--tasks-per-step", "0"), "--tasks-per-step 0", "fix:"),
    (("train", "--agent.max-steps", "-1"), "--agent.max-steps -1", "fix:"),
    (("train", "--lr", "0"), "--learner.lr 0.0", "fix:"),
    (("train", "--final-lr-ratio", "2"), "--final-lr-ratio 2.0", "fix:"),
    (("train", "--resample-rounds", "-1"), "--resample-rounds -1", "fix:"),
    (("train", "--concurrency", "0"), "--concurrency 0", "fix:"),
    (("train", "--agent.temperature", "0"), "--agent.temperature 0.0", "fix:"),
    (("rollout", "--max-steps", "-1"), "--max-steps -1", "fix:"),
    (("rollout", "--group-size", "0"), "--group-size 0", "fix:"),
    (("rollout", "--concurrency", "-2"), "--concurrency -2", "fix:"),
    (("rollout", "--max-new-tokens", "0"), "--max-new-tokens 0", "fix:"),
    (("tasks", "build", "--per-repo", "0"), "--per-repo 0", "fix:"),
    (("tasks", "build", "--workers", "0"), "--workers 0", "fix:"),
    (("tasks", "build", "--per-repo", "5", "--max-attempts", "3"), "--max-attempts 3 < --per-repo 5", "fix:"),
    (("demo", "--episodes", "0"), "--episodes 0", "fix:"),
    (("view",), "required: dir", "see lightswe view --help"),
    (("tasks", "report", "--outt", "x"), "unrecognized arguments: --outt", "see lightswe tasks report --help"),
]


@pytest.mark.parametrize("args,option,fix", BAD_NUMBERS, ids=[" ".join(a) for a, _, _ in BAD_NUMBERS])
def test_bad_numbers_end_in_one_line_before_any_work(tmp_path, args, option, fix):
    out = tmp_path / "out"
    extra = (["--tasks", str(tmp_path / "t.jsonl"), "--out", str(out)] if args[0] == "rollout"
             else ["--out", str(out)] if args[0] in ("train", "tasks") and args[1] != "report" else [])
    (tmp_path / "t.jsonl").write_text("{}\n")
    command = " ".join(args[:2]) if args[0] == "tasks" else args[0]
    one_line(lightswe(*args, *extra), command, option, fix)
    assert not out.exists(), "nothing may be written before the settings are checked"


def test_ordinary_mistakes_end_in_one_line(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    tasks = tmp_path / "t.jsonl"
    tasks.write_text("{}\n")
    one_line(lightswe("train", "--out", str(a_file / "run")), "train", "--out", "lies under the file")
    one_line(lightswe("train", "--out", str(a_file)), "train", "is a file")
    one_line(lightswe("train", "--tasks", str(tmp_path / "missing.jsonl")), "train", "--tasks", "does not exist")
    one_line(lightswe("train", "--tasks", "arith:nosplit"), "train", "unknown split")
    one_line(lightswe("train", "--stepz", "3"), "train", "--stepz", "did you mean --steps")
    one_line(lightswe("train", "--steps", "three"), "train", "--steps", "three")
    one_line(lightswe("train", "--model", str(a_file), "--out", str(tmp_path / "r")), "train", "--model", "is a file")
    one_line(lightswe("train", "--config", str(tmp_path / "none.toml")), "train", "--config", "does not exist")
    one_line(lightswe("rollout", "--tasks", str(tasks), "--out", str(tmp_path / "r"), "--tokenizer",
                      str(tmp_path / "tokenizer.json")), "rollout", "--tokenizer", "does not exist")
    one_line(lightswe("rollout", "--tasks", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r")),
             "rollout", "--tasks", "does not exist")
    one_line(lightswe("rollout", "--tasks", str(tasks), "--out", str(a_file)), "rollout", "--out", "is a file")
    one_line(lightswe("rollout", "--tasks", str(tasks), "--out", str(tmp_path / "r"), "--policy", "gpt5"),
             "rollout", "--policy", "gpt5")
    one_line(lightswe("rollout", "--tasks", str(tasks), "--out", str(tmp_path / "r"), "--early-stop", "x"),
             "rollout", "--early-stop")
    one_line(lightswe("tasks", "validate", str(tmp_path / "missing.jsonl")), "tasks validate", "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line(lightswe("eval", "--out", str(empty)), "eval", "no episodes")
    one_line(lightswe("view", str(empty)), "view", "no episodes")
    one_line(lightswe("eval", "--out", str(tmp_path / "nowhere")), "eval", "does not exist")


def test_config_files_and_dotted_overrides(tmp_path):
    from lightswe.agent.train_cli import parse_train

    toml = tmp_path / "run.toml"
    toml.write_text('steps = 3\ngroup_size = 4\n[learner]\nlr = 0.001\nbetas = [0.8, 0.9]\n[data]\neval_tasks = ""\n')
    cfg, allow = parse_train(["--config", str(toml), "--learner.lr", "0.002", "--allow-change", "lr,steps"])
    assert (cfg.steps, cfg.group_size, cfg.learner.lr, cfg.learner.betas) == (3, 4, 0.002, (0.8, 0.9))
    assert cfg.data.eval_tasks == "" and cfg.learner.eps == 1e-3 and allow == ("lr", "steps")  # the rest: defaults
    yaml = tmp_path / "run.yaml"
    yaml.write_text("steps: 5\nwarm_start:\n  steps: 0\n")
    cfg, _ = parse_train(["--config", str(yaml), "--warm-start-steps", "7"])
    assert cfg.steps == 5 and cfg.warm_start.steps == 7
    yaml.write_text("learner:\n  lr: 1e-3\n")  # PyYAML reads 1e-3 as a string (YAML 1.1 wants 1.0e-3)
    cfg, _ = parse_train(["--config", str(yaml)])
    assert cfg.learner.lr == 1e-3
    # a run's own config.json reads back as a config file
    from lightswe.settings import write_config

    write_config(tmp_path / "run", cfg, command="train")
    again, _ = parse_train(["--config", str(tmp_path / "run" / "config.json")])
    assert again == cfg
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learner": {"lrr": 1}}))
    one_line(lightswe("train", "--config", str(bad)), "train", "unknown setting 'learner.lrr'")
    bad.write_text(json.dumps({"steps": -2}))
    one_line(lightswe("train", "--config", str(bad)), "train", "--steps -2")
    bad.write_text("{not json")
    one_line(lightswe("train", "--config", str(bad)), "train", "not valid JSON")


@pytest.mark.parametrize("text,message", [  # a value of the wrong type in a config file, for each kind of type
    ("steps: three", "steps = \"three\": expected a whole number"),
    ("steps: 1.5", "steps = 1.5: expected a whole number"),
    ("learner: 3", "learner = 3: expected a section of settings"),
    ("learner:\n  betas: [0.9]", "learner.betas = [0.9]: expected a list of 2 numbers"),
    ("learner:\n  lr: fast", "learner.lr = \"fast\": expected a number"),
    ("hack_policy: zeroo", "hack_policy = \"zeroo\": expected one of 'keep', 'zero'"),
    ("overlong_filter: 3", "overlong_filter = 3: expected true or false"),
    ("agent:\n  early_stop: {window: x}", "agent.early_stop.window = \"x\": expected a whole number"),
    ("sampler:\n  vllm_args: a=1", "sampler.vllm_args = \"a=1\": expected a list of strings"),
])
def test_a_config_value_of_the_wrong_type_is_one_line_before_any_work(tmp_path, capsys, text, message):
    from lightswe.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(text + "\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightswe train: error: --config: ") and message in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_resume_with_changed_settings_is_refused_by_name(tmp_path):
    from lightswe.agent.cli import RolloutArgs
    from lightswe.agent.train_config import TrainConfig
    from lightswe.settings import write_config

    run = tmp_path / "run"
    write_config(run, TrainConfig(out_dir=str(run)), command="train")
    (run / "metrics.jsonl").write_text("{}\n")  # the run did some work
    line = one_line(lightswe("train", "--out", str(run), "--lr", "0.1", "--steps", "20"), "train",
                    "learner.lr 0.003 -> 0.1", "steps 10 -> 20", "--allow-change steps,learner.lr")
    assert "use a new --out" in line
    before = (run / "config.json").read_text()
    assert json.loads(before)["learner"]["lr"] == 0.003  # the refused run changed nothing
    # allowed: the refusal moves on to the next check (no model of this name), the config is still untouched
    one_line(lightswe("train", "--out", str(run), "--lr", "0.1", "--allow-change", "lr,model", "--model", "nosuch"),
             "train", "--model 'nosuch'")
    assert (run / "config.json").read_text() == before

    tasks = tmp_path / "t.jsonl"
    tasks.write_text("{}\n")
    rollout = tmp_path / "rollout"
    write_config(rollout, RolloutArgs(tasks=str(tasks), out=str(rollout), policy="scripted"), command="rollout")
    (rollout / "part-w0001-00000.jsonl").write_text("")  # an episode under way
    one_line(lightswe("rollout", "--tasks", str(tasks), "--out", str(rollout), "--policy", "model:tiny"), "rollout",
             "policy 'scripted' -> 'model:tiny'", "--allow-change policy")
    one_line(lightswe("rollout", "--tasks", str(tasks), "--out", str(run)), "rollout",  # a train folder
             "holds a `lightswe train` run")


@pytest.mark.docker
def test_ctrl_c_during_train_is_one_line_exit_130_and_leaves_no_container(tmp_path):
    import docker

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "lightswe", "train", "--out", str(run), "--steps", "2",
                             "--tasks-per-step", "1", "--group-size", "2", "--concurrency", "2",
                             "--warm-start-steps", "0", "--eval-tasks", ""], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal (see tests/agent/test_interrupts.py)
    deadline = time.monotonic() + 240
    while not (run / "rollouts").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)  # episodes of step 1 are under way
    assert proc.poll() is None, proc.communicate()
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    try:  # how fast the workers stop is the rollout executors' part; this test holds the top-level contract
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    waited = time.monotonic() - start
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last == "lightswe train: interrupted; run the same command again to resume (finished work is kept)"
    print(f"stopped {waited:.1f} s after Ctrl-C")
    left = docker.from_env().containers.list(all=True, filters={"label": f"lightswe.owner_pid={proc.pid}"})
    assert not left, [c.name for c in left]


def test_train_help_gives_each_option_group_its_own_description(capsys, monkeypatch):
    from lightswe.cli import main

    monkeypatch.setenv("COLUMNS", "80")  # one panel per row
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    lines = capsys.readouterr().out.splitlines()
    firsts = {}  # group -> the first line under its title (tyro once gave every group --progress's help)
    for i, line in enumerate(lines):
        title = re.fullmatch(r"[\s╭─]*([\w.-]+) options[\s─╮]*", line)
        if title:
            below = (text.strip("│ ") for text in lines[i + 1:])
            firsts[title.group(1)] = next(text for text in below if text and set(text) - set("-─"))
    assert {"data", "sampler", "warm-start", "agent", "learner", "loss-config", "advantages", "log"} <= set(firsts)
    assert not [t for t, line in firsts.items() if "Progress bar" in line], firsts
    described = [line for line in firsts.values() if not line.startswith("--")]
    assert len(described) == len(set(described)) >= 8, firsts


NO_CUDA = not torch.cuda.is_available()


def new_user_mistakes(tmp: Path) -> list[tuple[tuple[str, ...], str, tuple[str, ...]]]:
    """(argv, command, needles): one of each kind of mistake a new user types, for every command it reaches."""
    from lightswe.model.config import MiniMaxConfig

    for name in ("empty_ckpt", "no_weights", "qwen2_ckpt", "bad_config"):
        (tmp / name).mkdir(exist_ok=True)
    MiniMaxConfig.preset("tiny").save(tmp / "no_weights" / "config.json")  # config without safetensors
    (tmp / "qwen2_ckpt" / "config.json").write_text('{"model_type": "qwen2", "hidden_size": 64, '
                                                    '"num_attention_heads": 4}')
    (tmp / "bad_config" / "config.json").write_text('{"vocab_size": 300}')
    (tmp / "bad_rows.jsonl").write_text('{"instance_id": "x"}\n')
    missing = str(tmp / "no_such_ckpt")
    run = ("--tasks", "demo", "--out", str(tmp / "out"))
    cases = [
        # a misspelt value of a typed option
        (("train", "--device", "cudaa", "--out", str(tmp / "out")), "train", ("--device 'cudaa'", "fix: cpu")),
        (("train", "--learner.autocast-dtype", "bf16", "--out", str(tmp / "out")), "train",
         ("--learner.autocast-dtype 'bf16'", "fix: bfloat16")),
        (("train", "--learner.temperature", "0", "--out", str(tmp / "out")), "train", ("--learner.temperature 0.0",)),
        (("train", "--agent.early-stop.window", "0", "--out", str(tmp / "out")), "train",
         ("--agent.early-stop.window", "fix: e.g. 3000")),
        (("rollout", "--policy", "model:tiny?devce=cpu", *run), "rollout", ("devce", "did you mean device?")),
        (("rollout", "--policy", "scripted?tool_fromat=hermes", *run), "rollout", ("did you mean tool_format?",)),
        (("rollout", "--policy", "openai:localhost:8000", *run), "rollout", ("not an http(s) URL", "fix:")),
        (("tasks", "show", "pool:train[0:x]"), "tasks show", ("bad slice [0:x]", "fix:")),
        # a task file that does not load (train once wrote its config first: the corrected rerun was refused)
        (("train", "--tasks", str(tmp / "bad_rows.jsonl"), "--out", str(tmp / "out")), "train",
         ("bad_rows.jsonl:1: missing field(s)",)),
        (("train", "--eval-tasks", str(tmp / "bad_rows.jsonl"), "--out", str(tmp / "out")), "train",
         ("bad_rows.jsonl:1: missing field(s)",)),
        # a dataset path that holds no dataset
        (("tasks", "show", str(tmp / "empty_ckpt")), "tasks show", ("cannot be loaded from the directory",
                                                                  "fix: pass a directory written by datasets' save_to_disk")),
        (("tasks", "build", "--repos", "toolzz", "--out", str(tmp / "out")), "tasks build",
         ("unknown repository", "toolz", "fix:")),
        # a wrong model name / a checkpoint that does not exist
        (("rollout", "--policy", "model:tinyy", *run), "rollout", ("tinyy is neither a preset", "fix: model:PRESET")),
        (("eval", "--policy", "model:tinyy", *run), "eval", ("tinyy is neither a preset",)),
        (("rollout", "--policy", f"model:{missing}", *run), "rollout", ("neither a preset nor a checkpoint",)),
        (("rollout", "--policy", f"model:{tmp / 'empty_ckpt'}", *run), "rollout", ("has no config.json", "fix:")),
        (("rollout", "--policy", f"hf:{missing}", *run), "rollout", ("does not exist", "fix: hf:DIR")),
        (("rollout", "--policy", f"model:{tmp / 'no_weights'}", *run), "rollout", ("no model.safetensors", "fix:")),
        (("rollout", "--policy", f"model:{tmp / 'qwen2_ckpt'}", *run), "rollout",
         ("describes a 'qwen2' model", f"hf:{tmp / 'qwen2_ckpt'}")),
        (("train", "--model", str(tmp / "no_weights"), "--out", str(tmp / "out")), "train", ("no model.safetensors",)),
        (("train", "--model", str(tmp / "bad_config"), "--out", str(tmp / "out")), "train",
         ("is not a MiniMax config (missing 'hidden_size')", "fix:")),
        (("train", "--model", str(tmp / "empty_ckpt"), "--out", str(tmp / "out")), "train", ("has no config.json",)),
        (("rollout", "--policy", f"vllm:hf:{missing}", *run), "rollout", ("does not exist", "fix: vllm:hf:DIR")),
        # a file that is not what the option takes
        (("rollout", "--tokenizer", str(tmp / "no_weights" / "config.json"), *run), "rollout",
         ("not a Hugging Face tokenizer.json", "fix:")),
        # an output file where a folder is
        (("view", str(tmp), "--output", str(tmp)), "view", ("--output", "is a directory", "fix:")),
        (("view", str(tmp), "--output", str(tmp / "bad_rows.jsonl" / "index.html")), "view",
         ("lies under the file", "fix:")),
        (("demo", "--tasks", "pool:nope"), "demo", ("unknown split 'nope'", "pool:test")),
        # a build folder that does not exist
        (("tasks", "report", "--out", str(tmp / "out")), "tasks report", ("instances.jsonl does not exist", "fix:")),
        (("tasks", "prune", "--out", str(tmp / "out")), "tasks prune", ("not a build folder", "fix:")),
    ]
    if NO_CUDA:  # a device this machine does not have
        cases += [(("train", "--device", "cuda", "--out", str(tmp / "out")), "train", ("no CUDA device", "fix: --device cpu")),
                  (("rollout", "--policy", "model:tiny?device=cuda", *run), "rollout", ("no CUDA device", "fix:"))]
    return cases


def test_new_user_mistakes_end_in_one_line_before_any_work(tmp_path, capsys):
    from lightswe.cli import main

    for argv, command, needles in new_user_mistakes(tmp_path):
        code = main(list(argv))
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (argv, code, err)
        assert lines[0].startswith(f"lightswe {command}: error: "), (argv, lines[0])
        for needle in needles:
            assert needle in lines[0], (argv, needle, lines[0])
        assert not (tmp_path / "out").exists(), (argv, "nothing may be written before the settings are checked")


@pytest.mark.docker
def test_demo_takes_the_task_forms_of_rollout(capsys):
    from lightswe.cli import main

    assert main(["demo", "--tasks", "demo[0:1]", "--episodes", "2"]) == 0  # a shipped set, sliced
    out = capsys.readouterr().out
    assert out.count("episode ") == 2 and "reward 1.0" in out and "reward 0.0" in out
    assert "demo finished: rewards as expected" in out
