"""A task family small enough for the tiny model to learn from reward: one real one-line bug, four candidate fixes.

Every instance is a commit of a small local git repository (``calc.py`` + ``tests/test_calc.py``) whose
``f(a, b)`` wrongly returns ``a // b``. The problem statement names the intended operation (sum, difference,
product, remainder); the task's test checks it on the statement's numbers, run by pytest in the Docker
sandbox. A fix is one ``str_replace`` of ``a // b`` by ``a <op> b``, then ``submit``: the format is the same for
every instance, so success depends only on the operator the policy writes.

Splits use disjoint number pairs: ``warm`` (behaviour cloning of a scripted policy that pairs every statement
with every operator equally often, so the warm start teaches the tool-call format, not the answer), ``rl`` (the
tasks trained on with reward) and ``eval`` (held out). A spec such as ``arith:rl:sum`` keeps the instances of
some operations only: the embedded training run uses the sum instances (the model starts choosing among the four
operators at random and learns from the tests which one fixes the bug; learning the statement-word -> operator
mapping for all four operations from reward alone is beyond the byte-level tiny model in CPU minutes, see the
README).

Example::

    tasks = arithmetic_tasks("rl")                  # 16 TaskInstances, repository built under ~/.cache/lightswe
    sums = arithmetic_tasks("eval", words=["sum"])  # 4 held-out instances of one operation
    scripts = warm_start_scripts(arithmetic_tasks("warm", words=["sum"]))
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from lightswe.tasks.instance import TaskInstance
from lightswe.tasks.sources import CACHE_DIR
from lightswe.errors import UserInputError

OPS = {"sum": "+", "difference": "-", "product": "*", "remainder": "%"}
PAIRS = {"warm": [(7, 3), (9, 4), (9, 2), (11, 4)], "rl": [(13, 5), (10, 3), (19, 4), (22, 5)],
         "eval": [(17, 5), (14, 4), (23, 7), (16, 3)]}
BUG = "a // b"
_ENV = {"GIT_AUTHOR_NAME": "lightswe", "GIT_AUTHOR_EMAIL": "lightswe@localhost", "GIT_COMMITTER_NAME": "lightswe",
        "GIT_COMMITTER_EMAIL": "lightswe@localhost", "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
        "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000", "PATH": "/usr/bin:/bin:/usr/local/bin"}


# Grading runs `python -I -m pytest` (no current directory on sys.path); a root conftest.py makes pytest put the
# repository root on sys.path (its rootdir conftest rule), so that the test's `from calc import f` resolves.
CONFTEST = "# the repository root on sys.path for the tests (pytest inserts a root conftest's folder)\n"


def _distinct(a: int, b: int) -> bool:
    """Every operator and the bug give different results, so only the asked-for operator passes."""
    values = [eval(f"{a} {op} {b}") for op in [*OPS.values(), "//"]]
    return len(set(values)) == len(values)


assert all(_distinct(a, b) for pairs in PAIRS.values() for a, b in pairs)


def _calc(expr: str) -> str:
    return f"def f(a, b):\n    return {expr}\n"


def _test(word: str, a: int, b: int) -> str:
    expected = eval(f"{a} {OPS[word]} {b}")
    return (f"from calc import f\n\n\ndef test_f():\n    assert f({a}, {b}) == {expected}  # the {word}\n\n\n"
            f"def test_returns_int():\n    assert isinstance(f(6, 2), int)\n")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=_ENV).stdout.strip()


def _commit(repo: Path, files: dict[str, str], branch: str, parent: str | None) -> str:
    if parent:
        _git(repo, "checkout", "-q", "--detach", parent)
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "--allow-empty", "-m", branch)
    sha = _git(repo, "rev-parse", "HEAD")
    _git(repo, "update-ref", f"refs/heads/{branch}", sha)
    return sha


def family_repo(root: Path | None = None) -> tuple[Path, dict[str, str]]:
    """Build (once, deterministically) the repository; returns its path and branch -> commit."""
    # v3: a root conftest.py (a new folder, so that a process still using the v2 repository keeps it)
    repo = (root or CACHE_DIR / "train-family") / "calc-v3"
    marker = repo / ".git" / "lightswe-family-v3"
    if not marker.exists():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "-q", "-b", "main")
        _git(repo, "config", "uploadpack.allowAnySHA1InWant", "true")
        base = _commit(repo, {"calc.py": _calc(BUG), "tests/test_calc.py": _test("sum", 1, 1),
                              "conftest.py": CONFTEST}, "main", None)
        for split, pairs in PAIRS.items():
            for a, b in pairs:
                for word in OPS:
                    _commit(repo, {"tests/test_calc.py": _test(word, a, b)}, f"{split}-{word}-{a}-{b}", base)
        _git(repo, "checkout", "-q", "main")
        marker.write_text("ok\n")
    branches = dict(line.split() for line in _git(repo, "for-each-ref", "--format=%(refname:short) %(objectname)",
                                                  "refs/heads").splitlines())
    return repo, branches


def arithmetic_tasks(split: str, root: Path | None = None, words: list[str] | None = None) -> list[TaskInstance]:
    """The instances of one split (``warm``, ``rl`` or ``eval``): its number pairs x the operations ``words``
    (default: all four)."""
    if split not in PAIRS:
        raise UserInputError(f"unknown split {split!r}; expected one of {sorted(PAIRS)}")
    unknown = sorted(set(words or []) - set(OPS))
    if unknown or words == []:
        raise UserInputError(f"operations {unknown or words}: expected a non-empty subset of {list(OPS)}")
    repo, branches = family_repo(root)
    tasks = []
    for a, b in PAIRS[split]:
        for word, op in OPS.items():
            if words and word not in words:
                continue
            fix = (f"diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n def f(a, b):\n"
                   f"-    return {BUG}\n+    return a {op} b\n")
            statement = (f"calc.f(a, b) must return the {word} of a and b, but f({a}, {b}) returns {a // b}. "
                         f"Fix calc.py.")
            tasks.append(TaskInstance(
                instance_id=f"arith__{split}-{word}-{a}-{b}", repo="lightswe/arith", source=str(repo),
                base_commit=branches[f"{split}-{word}-{a}-{b}"], environment_setup_commit=branches["main"],
                patch=fix, problem_statement=statement, FAIL_TO_PASS=["tests/test_calc.py::test_f"],
                PASS_TO_PASS=["tests/test_calc.py::test_returns_int"], test_files=["tests/test_calc.py"],
                install_command="true", python_version="3.11",
                metadata={"family": "arithmetic", "split": split, "op": op, "word": word}))
    return tasks


def warm_start_scripts(tasks: list[TaskInstance], shift: int = 0) -> dict:
    """Scripted-policy scripts for behaviour cloning: ``str_replace`` with an operator, then ``submit``. The four
    ``shift`` values together pair every statement with every operator once (no answer leaks), and within one
    shift consecutive tasks get different operators."""
    from lightswe.envs.tool_calls import ToolCall

    ops, words = list(OPS.values()), list(OPS)
    scripts = {}
    for i, task in enumerate(tasks):
        op = ops[(words.index(task.metadata["word"]) + i + shift) % len(ops)]
        scripts[task.problem_statement.strip()] = [
            ToolCall(name="str_replace", arguments={"path": "calc.py", "old_str": BUG, "new_str": f"a {op} b"}),
            ToolCall(name="submit", arguments={})]
    return scripts
