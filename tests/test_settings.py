"""``lightswe.settings`` on the real commands' configs: repeated list options keep every value, and
``--allow-change`` names exact keys, shortcuts or globs (anything else is one line naming the valid keys)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightswe.agent.train_cli import SHORTCUTS, parse_train
from lightswe.agent.train_config import TrainConfig
from lightswe.errors import UserInputError
from lightswe.settings import allowed_keys, check_resume, flatten, parse, sequence_options, to_dict, write_config
from lightswe.tasks.build import BuildConfig


def test_sequence_options_of_the_commands():
    assert sequence_options(TrainConfig) == {"--sampler.vllm-args"}
    assert sequence_options(BuildConfig) == {"--repos"}


@pytest.mark.parametrize(("argv", "expected"), [
    (["--vllm-arg", "a=1", "--vllm-arg", "b=2"], ("a=1", "b=2")),
    (["--vllm-arg=a=1", "--steps", "3", "--vllm-arg", "b=2"], ("a=1", "b=2")),
    (["--sampler.vllm-args", "a=1", "b=2", "--vllm-arg", "c=3", "--sampler.vllm_args=d=4"], ("a=1", "b=2", "c=3", "d=4")),
    (["--vllm-arg", "only=1"], ("only=1",)),
], ids=["shortcut-twice", "with-equals-and-others-between", "long-short-and-underscore", "once"])
def test_a_repeated_list_option_keeps_every_value_in_order(tmp_path, argv, expected):
    from lightswe.agent.sampling import parse_kwargs

    cfg, _ = parse_train(["--out", str(tmp_path / "run"), *argv])
    assert cfg.sampler.vllm_args == expected
    kwargs = parse_kwargs(cfg.sampler.vllm_args)  # what vllm.LLM receives: every key, in order
    assert list(kwargs.items()) == [(k, int(v) if v.isdigit() else v) for k, v in (a.split("=") for a in expected)]
    if "--steps" in argv:
        assert cfg.steps == 3  # the option after a folded one is still read


def test_repeated_repos_of_tasks_build(tmp_path):
    cfg, _ = parse(BuildConfig, ["--out", str(tmp_path), "--repos", "toolz", "--per-repo", "2", "--repos=click"],
                   prog="lightswe tasks build")
    assert cfg.repos == ["toolz", "click"] and cfg.per_repo == 2


def test_command_line_values_replace_those_of_the_config_file(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[sampler]\nvllm_args = ["from_file=1"]\n')
    cfg, _ = parse_train(["--config", str(config), "--out", str(tmp_path / "r"), "--vllm-arg", "a=1", "--vllm-arg",
                          "b=2"])
    assert cfg.sampler.vllm_args == ("a=1", "b=2")
    with pytest.raises(UserInputError, match="--config given 2 times"):
        parse_train(["--config", str(config), "--config", str(config)])


def test_allow_change_is_repeatable_and_comma_separated(tmp_path):
    _, allow = parse_train(["--out", str(tmp_path / "r"), "--allow-change", "lr,steps", "--allow-change=learner.*"])
    assert allow == ("lr", "steps", "learner.*")


KEYS = flatten(to_dict(TrainConfig()))


@pytest.mark.parametrize(("names", "selected"), [
    (("learner.lr",), {"learner.lr"}),
    (("--learner.lr", "warm-start.steps"), {"learner.lr", "warm_start.steps"}),
    (("lr",), {"learner.lr"}),  # the shortcut --lr, not every *.lr
    (("warm-start-steps",), {"warm_start.steps"}),  # the shortcut --warm-start-steps
    (("*.lr",), {"learner.lr", "warm_start.lr"}),
    (("warm_start.*",), {k for k in KEYS if k.startswith("warm_start.")}),
], ids=["dotted", "dashes", "shortcut", "shortcut-dashed", "glob-last-part", "glob-section"])
def test_allow_change_names_select_exact_keys(names, selected):
    assert allowed_keys(names, KEYS, SHORTCUTS) == selected


@pytest.mark.parametrize(("name", "close"), [("lrr", "learner.lr"), ("eps", "learner.eps"), ("nosuch.*", None),
                                             ("temprature", "agent.temperature")])
def test_an_allow_change_name_that_selects_nothing_names_the_valid_keys(tmp_path, name, close):
    with pytest.raises(UserInputError) as caught:  # refused for a new run too: the typo shows at once
        check_resume(tmp_path / "new", TrainConfig(), allow=(name,), shortcuts=SHORTCUTS, command="train")
    message = str(caught.value)
    assert message.startswith(f"--allow-change {name!r}: no setting") and "\n" not in message
    assert "keys: advantages.eps," in message and "warm_start.steps" in message
    if close:
        assert f"did you mean {close}" in message or f"or {close}" in message


def test_lr_allows_the_learner_lr_only(tmp_path):
    run = tmp_path / "run"
    write_config(run, TrainConfig(out_dir=str(run)), command="train")
    (run / "metrics.jsonl").write_text("{}\n")  # the run did some work
    changed = TrainConfig(out_dir=str(run))
    changed.learner.lr, changed.warm_start.lr = 0.1, 0.2
    with pytest.raises(UserInputError, match=r"warm_start\.lr .* -> 0\.2") as caught:
        check_resume(Path(run), changed, allow=("lr",), shortcuts=SHORTCUTS, command="train")
    assert "learner.lr" not in str(caught.value).split(". Resume")[0]  # allowed through the shortcut
    check_resume(Path(run), changed, allow=("lr", "warm_start.lr"), shortcuts=SHORTCUTS, command="train")
    check_resume(Path(run), changed, allow=("*.lr",), shortcuts=SHORTCUTS, command="train")


def test_a_folder_holding_only_the_config_of_a_run_that_did_no_work_is_a_new_run(tmp_path):
    run = tmp_path / "run"  # e.g. an earlier command refused its model after writing the config
    write_config(run, TrainConfig(out_dir=str(run)), command="train")
    changed = TrainConfig(out_dir=str(run))
    changed.learner.lr = 0.1
    check_resume(Path(run), changed, command="train")  # nothing to resume: the corrected command may start
    # what a train run that stopped in its first step (a task that did not build) leaves: still no work
    (run / "metrics.jsonl").touch()
    (run / "tb").mkdir()
    (run / "tb" / "events.out.tfevents.1.host.1.0").write_bytes(b"hparams")
    (run / "checkpoints").mkdir()
    check_resume(Path(run), changed, command="train")
    for work in ("checkpoints/step-000001/state.json", "metrics.jsonl", "rollouts/step-0001/part-w0001-00000.jsonl"):
        (run / work).parent.mkdir(parents=True, exist_ok=True)
        (run / work).write_text("{}\n")
        with pytest.raises(UserInputError, match=r"learner\.lr 0\.003 -> 0\.1"):
            check_resume(Path(run), changed, command="train")
        (run / work).unlink()


@pytest.mark.parametrize("argv", [
    ["--lr", "1e-3", "--learner.lr", "2e-3"], ["--steps", "3", "--steps=5"], ["--progress", "--no-progress"],
    ["--sampler.no-batch-invariant", "--sampler.batch-invariant"], ["--learner.betas", "0.9", "0.95",
                                                                    "--learner.betas", "0.9", "0.99"],
    ["--out", "a", "--out-dir", "b"],
], ids=["shortcut-and-dotted", "twice-with-equals", "flag-pair", "nested-flag-pair", "tuple", "out-shortcut"])
def test_a_single_valued_option_given_twice_with_different_values_is_refused(argv):
    with pytest.raises(UserInputError, match=r"given twice with different values \(.*\); fix: pass it once"):
        parse_train(argv)


def test_a_bare_option_means_its_value_everywhere(tmp_path):
    """A bare ``--ray`` is ``--ray local`` (settings.BARE_VALUES) for the conflict check and the parse alike, in
    either command and spelling: one place gives it its value (before, the check had its own special case)."""
    from lightswe.agent.cli import RolloutArgs
    from lightswe.settings import parse

    out = str(tmp_path / "run")
    for argv in (["--ray", "--sampler.ray", "local"], ["--sampler.ray=local", "--ray", "--steps", "2"]):
        assert parse_train(["--out", out, *argv])[0].sampler.ray == "local"
    with pytest.raises(UserInputError, match=r"--sampler.ray given twice with different values \(--ray local, "
                                             r"--sampler.ray 10.0.0.1:6379\)"):
        parse_train(["--out", out, "--ray", "--sampler.ray", "10.0.0.1:6379"])
    (tmp_path / "t.jsonl").write_text("")
    base = ["--tasks", str(tmp_path / "t.jsonl"), "--policy", "scripted", "--out", out]
    assert parse(RolloutArgs, [*base, "--ray"], prog="lightswe rollout")[0].ray == "local"
    with pytest.raises(UserInputError, match="--ray given twice with different values"):
        parse(RolloutArgs, [*base, "--ray", "--ray", "auto"], prog="lightswe rollout")


def test_the_same_value_twice_and_list_options_pass(tmp_path):
    out = str(tmp_path / "run")
    cfg, _ = parse_train(["--out", out, "--lr", "1e-3", "--learner.lr=1e-3", "--progress", "--progress",
                          "--vllm-arg", "a=1", "--vllm-arg", "b=2", "--ray", "--ray", "local"])
    assert (cfg.learner.lr, cfg.progress, cfg.sampler.vllm_args, cfg.sampler.ray) == (1e-3, True, ("a=1", "b=2"),
                                                                                        "local")
