"""Episode planning: ids stay unique when a step lists a task twice (resume relies on them)."""

from __future__ import annotations

from lightswe.agent.rollout import RolloutConfig, plan_jobs
from lightswe.agent.task_stream import tasks_at
from lightswe.tasks.instance import TaskInstance


def task(name: str) -> TaskInstance:
    return TaskInstance(instance_id=name, repo="o/r", base_commit="0" * 40, patch="", problem_statement="s",
                        FAIL_TO_PASS=["t::a"], PASS_TO_PASS=[])


def test_a_task_listed_twice_gets_its_own_group_and_episode_ids():
    tasks = tasks_at([task("a"), task("b"), task("c")], cursor=2, count=3, seed=0)  # crosses an epoch boundary
    assert len({t.instance_id for t in tasks}) < len(tasks), "the seed should repeat a task across the boundary"
    jobs = plan_jobs(tasks, RolloutConfig(group_size=2, round=5))
    assert len({j.episode_id for j in jobs}) == len(jobs) == 6
    groups = [j.group_id for j in jobs]
    assert len(set(groups)) == 3 and all(groups.count(g) == 2 for g in groups)
    first = [j.group_id for j in jobs if j.task.instance_id == tasks[0].instance_id]
    assert first[0] == f"{tasks[0].instance_id}@5"


def test_a_later_draw_of_the_same_round_gets_its_own_group_ids():
    """Dynamic sampling may draw a task again in the same round: its groups must not merge with the first's."""
    first = plan_jobs([task("a")], RolloutConfig(group_size=2, round=3))
    again = plan_jobs([task("a"), task("a")], RolloutConfig(group_size=2, round=3, draw=1))
    assert {j.group_id for j in first} == {"a@3"} and {j.group_id for j in again} == {"a@3~1", "a@3~1.1"}
