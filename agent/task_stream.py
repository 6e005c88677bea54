"""Where a training run's tasks come from and in what order: a task spec, and an endless seeded stream.

A spec is ``arith:<split>[:<op word>,...]`` (the built-in arithmetic family, ``lightswe.agent.train_tasks``) or
the path of a JSONL file of task instances (SWE-bench format). The stream visits the tasks in a seeded
permutation per epoch; its position (the *cursor*) is all a checkpoint needs to resume the same order.

Example::

    stream = TaskStream(load_tasks("arith:rl:sum"), seed=0)
    batch = stream.take(4)        # the next 4 tasks; stream.cursor == 4
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from lightswe.errors import UserInputError


@dataclass(kw_only=True, slots=True)
class TaskStreamConfig:
    """The tasks trained on and the held-out ones."""

    # Training tasks: 'arith:<split>[:<op words>]' (built-in family, e.g. arith:rl:sum) or task instances in any
    # form of rollout's --tasks (.jsonl/.json/.parquet, a dataset directory, owner/name:split, pool:train).
    tasks: str = "arith:rl:sum"
    # Held-out tasks, same forms as tasks; '' skips evaluation.
    eval_tasks: str = "arith:eval:sum"

    def __post_init__(self) -> None:
        for name in ("tasks", "eval_tasks"):
            spec = getattr(self, name)
            if name == "eval_tasks" and spec == "":
                continue
            check_spec(spec, option=f"--{name.replace('_', '-')}")


def arith_spec(spec: str) -> tuple[str, list[str] | None]:
    """``arith:<split>[:<word>,<word>...]`` -> (split, words or None for all four operations)."""
    _, split, *rest = spec.split(":")
    if len(rest) > 1:
        raise UserInputError(f"tasks {spec!r}: expected arith:<split>[:<op word>,...], e.g. arith:rl:sum")
    return split, (rest[0].split(",") if rest else None)


def check_spec(spec: str, *, option: str = "--tasks") -> None:
    """Refuse a spec that names neither the built-in family nor an existing file, before any work.

    Raises:
        UserInputError: one line naming the option, the value and the fix.
    """
    if spec.startswith("arith:"):
        from lightswe.agent.train_tasks import OPS, PAIRS

        split, words = arith_spec(spec)
        if split not in PAIRS:
            raise UserInputError(f"{option} {spec!r}: unknown split {split!r}; expected one of {sorted(PAIRS)}, "
                                 f"e.g. arith:rl:sum")
        unknown = sorted(set(words or []) - set(OPS))
        if unknown or words == [""]:
            raise UserInputError(f"{option} {spec!r}: unknown operation(s) {unknown or words}; expected a "
                                 f"comma-separated subset of {list(OPS)}")
        return
    path = Path(spec)
    if not path.is_file():
        from lightswe.tasks.datasets import looks_like_dataset

        if looks_like_dataset(spec):  # a dataset directory or a cached Hub name: load_tasks says what is wrong
            return
        why = "is a directory" if path.is_dir() else "does not exist"
        raise UserInputError(f"{option} {spec!r}: {why}; expected 'arith:<split>[:<op words>]' (e.g. arith:rl:sum), "
                             f"a task file (.jsonl/.json/.parquet), a dataset directory or a cached dataset name")


def load_tasks(spec: str) -> list:
    """The ``TaskInstance`` list of a spec (the arithmetic family builds its git repository on first use).

    Raises:
        UserInputError (a ``ValueError``): an unknown spec, split or operation, or a missing file.
    """
    if spec.startswith("arith:"):
        from lightswe.agent.train_tasks import arithmetic_tasks

        split, words = arith_spec(spec)
        return arithmetic_tasks(split, words=words)
    from lightswe.tasks.datasets import load_tasks as load_instances

    check_spec(spec)
    return load_instances(spec)


def tasks_at(tasks: list, cursor: int, count: int, seed: int) -> list:
    """``count`` tasks from position ``cursor`` of an endless stream of seeded per-epoch permutations."""
    out, n = [], len(tasks)
    for pos in range(cursor, cursor + count):
        order = list(range(n))
        random.Random(seed * 1_000_003 + pos // n).shuffle(order)
        out.append(tasks[order[pos % n]])
    return out


class TaskStream:
    """The training tasks as an endless stream; ``cursor`` (tasks taken so far) is checkpointed."""

    def __init__(self, tasks: list, *, seed: int, cursor: int = 0) -> None:
        if not tasks:
            raise UserInputError("the training task set is empty; pass --tasks with at least one instance")
        self.tasks, self.seed, self.cursor = tasks, seed, cursor

    def take(self, count: int) -> list:
        """The next ``count`` tasks; moves the cursor past them."""
        out = tasks_at(self.tasks, self.cursor, count, self.seed)
        self.cursor += count
        return out

    def peek(self, count: int) -> list:
        """The next ``count`` tasks, cursor unmoved (to build their images ahead)."""
        return tasks_at(self.tasks, self.cursor, count, self.seed)
