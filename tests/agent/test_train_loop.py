"""The RL loop end to end in real Docker sandboxes (tiny model, arithmetic family), and the family itself."""

from __future__ import annotations

import json

import pytest
from lightswe.agent.advantages import AdvantageConfig
from lightswe.agent.metrics import read_metrics
from lightswe.agent.sampling import SamplerConfig
from lightswe.agent.task_stream import TaskStreamConfig, arith_spec, load_tasks, tasks_at
from lightswe.agent.train import TrainConfig, WarmStartConfig, train
from lightswe.agent.train_step import step_advantages, step_lr
from lightswe.agent.train_tasks import OPS, arithmetic_tasks, warm_start_scripts
from lightswe.agent.trajectory import EpisodeStatus, Message, Trajectory, read_trajectories
from lightswe.errors import UserInputError


def test_family_splits_are_disjoint_and_warm_start_leaks_no_answer(tmp_path):
    splits = {s: arithmetic_tasks(s, root=tmp_path) for s in ("warm", "rl", "eval")}
    statements = [{t.problem_statement for t in tasks} for tasks in splits.values()]
    assert not (statements[0] & statements[1]) and not (statements[1] & statements[2])
    warm = splits["warm"]
    pairs = set()
    for shift in range(4):
        for task in warm:
            (edit, submit) = warm_start_scripts(warm, shift)[task.problem_statement]
            assert edit.name == "str_replace" and submit.name == "submit"
            pairs.add((task.instance_id, edit.arguments["new_str"]))
    assert len(pairs) == len(warm) * len(OPS)  # every statement with every operator: nothing to clone


def test_family_specs_select_operations_and_reject_unknown_ones(tmp_path):
    assert arith_spec("arith:rl:sum,product") == ("rl", ["sum", "product"]) and arith_spec("arith:eval") == ("eval", None)
    sums = load_tasks("arith:rl:sum")
    assert len(sums) == 4 and {t.metadata["op"] for t in sums} == {"+"}
    assert len(arithmetic_tasks("rl", root=tmp_path)) == 16
    with pytest.raises(ValueError, match="subset of"):
        arithmetic_tasks("rl", root=tmp_path, words=["quotient"])
    with pytest.raises(ValueError, match="expected arith:<split>"):
        load_tasks("arith:rl:sum:x")
    with pytest.raises(ValueError, match="unknown split"):
        load_tasks("arith:test")


def test_overlong_filtering_leaves_truncated_episodes_out_of_the_advantages():
    def episode(i: int, reward: float, finish: str) -> Trajectory:
        return Trajectory(episode_id=f"g/{i}", task_id="t", group_id="g", sample_index=i, token_ids=[1, 2],
                          loss_mask=[0, 1], logprobs=[0.0, -0.5], reward=reward, status=EpisodeStatus.SUBMITTED,
                          messages=[Message(role="assistant", content="x", start=1, end=2, finish_reason=finish)])

    group = [episode(0, 1.0, "stop"), episode(1, 1.0, "stop"), episode(2, 0.0, "length")]
    assert [t.truncated for t in group] == [False, False, True]
    adv = TrainConfig().advantages
    filtered = step_advantages(group, adv, overlong_filter=True)  # the cut run is out: the rest have equal rewards
    assert filtered.keep == [True, True, False] and filtered.values == [0.0, 0.0, 0.0]
    assert filtered.groups_filtered == 1  # no signal (its rows stay, with advantage 0, in the normaliser)
    kept = step_advantages(group, adv, overlong_filter=False)
    assert kept.keep == [True, True, True] and kept.values[2] < 0 < kept.values[0]
    group.append(episode(3, 0.0, "stop"))  # a run that failed on its own merits still counts
    assert step_advantages(group, adv, overlong_filter=True).keep == [True, True, False, True]


def test_rl_learning_rate_decays_linearly_to_its_final_ratio():
    assert [round(step_lr(1.0, s, steps=5, final_lr_ratio=0.2), 6) for s in range(1, 6)] == [1.0, 0.8, 0.6, 0.4, 0.2]
    assert step_lr(3e-3, 1, steps=1, final_lr_ratio=0.1) == 3e-3  # a one-step run keeps its lr
    assert step_lr(3e-3, 7, steps=10, final_lr_ratio=1.0) == 3e-3


def test_task_stream_is_a_seeded_permutation_per_epoch():
    tasks = list(range(5))
    first = tasks_at(tasks, 0, 5, seed=1)
    assert sorted(first) == tasks and tasks_at(tasks, 0, 5, seed=1) == first
    assert tasks_at(tasks, 3, 4, seed=1) == first[3:] + tasks_at(tasks, 5, 2, seed=1)


@pytest.mark.docker
def test_family_pays_the_right_operator_only_under_the_hardened_grader(tmp_path):
    """The family's tests import ``calc`` from the repository root, which ``python -I -m pytest`` (the grader)
    leaves off sys.path: its root conftest.py puts it back. Without it every test is 'missing' and nothing is
    ever rewarded (the warm start's scripted success fell from 0.25 to 0.0)."""
    from lightswe.agent.policies.scripted import ScriptedPolicy
    from lightswe.agent.rollout import LocalExecutor, RolloutConfig, default_env_factory, run_rollout
    from lightswe.model import load_tokenizer

    # the shared family repository (as the train tests use): its images are reused, not rebuilt per run and left
    tasks = arithmetic_tasks("warm", words=["sum"])[:2]
    tok = load_tokenizer(None)
    executor = LocalExecutor(ScriptedPolicy(warm_start_scripts(tasks, 0), tok), tok, concurrency=2,
                             env_factory=default_env_factory(tasks))
    with executor:
        run_rollout(tasks, executor, out_dir=tmp_path / "out", config=RolloutConfig(progress=False, parquet=False))
    edits = {t.episode_id: next(m.tool_call for m in t.messages if m.tool_call) for t in
             read_trajectories(tmp_path / "out")}
    by_op = {edits[t.episode_id]["arguments"]["new_str"]: t for t in read_trajectories(tmp_path / "out")}
    assert by_op["a + b"].reward == 1.0 and by_op["a + b"].tests["tests/test_calc.py::test_f"] == "passed"
    assert by_op["a - b"].reward == 0.0 and by_op["a - b"].tests["tests/test_calc.py::test_f"] == "failed"


@pytest.mark.docker
def test_train_runs_writes_metrics_checkpoints_and_resumes(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), steps=1, tasks_per_step=2, group_size=2,
                      sampler=SamplerConfig(concurrency=2), data=TaskStreamConfig(eval_tasks=""), warm_start=WarmStartConfig(steps=0))
    train(cfg)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "latest").exists() and (run / "curves.png").exists()
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1] and rows[0]["episodes"] == 4
    assert len(list((run / "rollouts" / "step-0001").glob("part-*"))) >= 1

    cfg.steps = 3  # another schedule: refused by name before any work, unless allowed
    with pytest.raises(UserInputError, match=r"steps 1 -> 3.*--allow-change steps"):
        train(cfg)
    cfg.steps = 2  # resume: continues at step 2 with the data cursor and weights of step 1
    train(cfg, allow_change=("steps",))
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    state = json.loads((run / "checkpoints" / "step-000002" / "state.json").read_text())
    assert state["cursor"] == 4 and state["step"] == 2


@pytest.mark.docker
def test_dynamic_sampling_draws_new_tasks_while_groups_carry_no_signal(tmp_path):
    """A random model never solves a task: every group has equal rewards (0.0 from the real tests), so each
    extra round draws new tasks from the stream, and the step makes no update."""
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), steps=1, tasks_per_step=2, group_size=2,
                      sampler=SamplerConfig(concurrency=2), resample_rounds=1, data=TaskStreamConfig(eval_tasks=""), warm_start=WarmStartConfig(steps=0),
                      advantages=AdvantageConfig(filter_equal=True))  # DAPO: equal-reward groups filtered
    train(cfg)
    run = tmp_path / "run"
    (row,) = read_metrics(run / "metrics.jsonl")
    assert row["draws"] == 2 and row["episodes"] == 8 and row["filtered_share"] == 1.0 and "loss" not in row
    steps = run / "rollouts" / "step-0001"
    groups = {t.group_id for t in read_trajectories(steps)} | {t.group_id for t in read_trajectories(steps / "draw-1")}
    assert len(groups) == 4 and sum("~1" in g for g in groups) == 2
    state = json.loads((run / "checkpoints" / "step-000001" / "state.json").read_text())
    assert state["cursor"] == 4  # both draws moved the data cursor
    with pytest.raises(UserInputError, match="--resample-rounds -1: must be >= 0"):
        TrainConfig(out_dir=str(tmp_path / "bad"), resample_rounds=-1)


@pytest.mark.docker
@pytest.mark.slow
def test_the_embedded_default_run_learns(tmp_path):
    """The README's main job, as is: held-out success must rise well above the warm start's (about 10 minutes)."""
    summary = train(TrainConfig(out_dir=str(tmp_path / "run")))
    assert summary["eval_success_rate_last"] >= summary["eval_success_rate_first"] + 0.3, summary
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
