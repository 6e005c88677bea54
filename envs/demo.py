"""The embedded demo: a real-repository task and a scripted agent that drives ``lightswe/SWE-v0``.

``python -m lightswe demo`` runs a few episodes: the scripted agent either fixes the bug (view the file,
``str_replace`` each hunk of the task's gold patch, submit: reward 1.0) or submits without fixing (0.0).

``build_demo_task()`` is how ``tasks/data/demo.jsonl`` was made (re-run it to rebuild the file): toolz 1.0.0
from its PyPI source distribution with a one-line bug in ``nth`` (``islice(seq, n + 1, None)``);
FAIL_TO_PASS and PASS_TO_PASS come from real test runs in the instance image (two runs of the buggy tree
must agree, and every listed test passes once the fix is applied).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path

from lightswe.envs.tool_calls import ToolCall, format_minimax
from lightswe.tasks.instance import TaskInstance

DEMO_TEST_FILE = "toolz/tests/test_itertoolz.py"


def patch_edits(patch: str) -> list[tuple[str, int, str, str]]:
    """(path, first line, old, new) per hunk of a unified diff: old is context+removed, new context+added."""
    edits, path = [], None
    for block in re.split(r"^(?=diff --git )", patch, flags=re.M):
        match = re.search(r"^\+\+\+ b/(.+)$", block, re.M)
        if not match:
            continue
        path = match.group(1).strip()
        parts = re.split(r"^@@ -(\d+)[^\n]*@@[^\n]*\n", block, flags=re.M)
        for first, hunk in zip(parts[1::2], parts[2::2]):
            old, new = [], []
            for line in hunk.splitlines():
                if line.startswith("\\"):
                    continue
                tag, text = line[:1], line[1:]
                if tag in (" ", ""):
                    old.append(text)
                    new.append(text)
                elif tag == "-":
                    old.append(text)
                elif tag == "+":
                    new.append(text)
            edits.append((path, int(first), "\n".join(old) + "\n", "\n".join(new) + "\n"))
    return edits


def scripted_actions(task: TaskInstance, fix: bool) -> list[str]:
    """The scripted agent's actions (model text in MiniMax format): look, fix with str_replace if asked, submit."""
    actions = [ToolCall(name="bash", arguments={"command": "git log --oneline | head -5 && git status --short"})]
    for path, first, old, new in patch_edits(task.patch) if fix else []:
        actions.append(ToolCall(name="view", arguments={"path": path, "start_line": max(1, first - 5),
                                                        "end_line": first + old.count("\n") + 5}))
        actions.append(ToolCall(name="str_replace", arguments={"path": path, "old_str": old, "new_str": new}))
    if not fix:
        actions.append(ToolCall(name="search", arguments={"pattern": "def nth", "path": "."}))
    actions.append(ToolCall(name="submit", arguments={}))
    return [format_minimax([a]) for a in actions]


def run_demo(episodes: int = 3, tasks: str | None = None) -> int:
    """Run ``episodes`` episodes (fix, no fix, fix, ...) over the tasks in order and print each reward; exit code
    0 iff as expected. ``tasks``: any form of :func:`lightswe.tasks.datasets.load_tasks` (default: the embedded
    demo task); only the images of the tasks the episodes use are built."""
    import gymnasium as gym

    import lightswe  # noqa: F401 - registers the ids

    from lightswe.envs.swe_env import default_tasks_path
    from lightswe.tasks.images import ensure_instance_image
    from lightswe.tasks.datasets import load_tasks

    loaded = load_tasks(tasks or default_tasks_path())
    chosen = [loaded[episode % len(loaded)] for episode in range(episodes)]  # in order: only their images
    for task in {t.instance_id: t for t in chosen}.values():  # first run: build the images, saying so
        ensure_instance_image(task, progress=lambda message: print(f"[lightswe] {message}", flush=True))
    env = gym.make("lightswe/SWE-v0", tasks=loaded)
    ok = True
    try:
        for episode in range(episodes):
            fix = episode % 2 == 0
            start = time.perf_counter()
            obs, info = env.reset(seed=episode, options={"task_id": chosen[episode].instance_id})
            print(f"episode {episode}: task {info['task_id']} ({'fixes the bug' if fix else 'submits without a fix'})")
            print("  problem: " + obs.splitlines()[0][:100])
            reward, steps = 0.0, 0
            for action in scripted_actions(env.unwrapped.task, fix):
                obs, reward, terminated, truncated, info = env.step(action)
                steps += 1
                name = info.get("tool")
                print(f"  step {steps}: {name:<11} -> {obs.splitlines()[0][:90] if obs else ''}")
                if terminated or truncated:
                    break
            failed = [t for t, outcome in info.get("tests", {}).items() if outcome != "passed"]
            print(f"  reward {reward:.1f} in {time.perf_counter() - start:.1f} s; tests not passing: "
                  f"{failed[:3] if failed else 'none'}")
            ok &= reward == (1.0 if fix else 0.0)
    finally:
        env.close()
    print("demo finished: rewards as expected" if ok else "demo finished: UNEXPECTED rewards")
    return 0 if ok else 1


# ------------------------------------------------------------------------------------ making the demo task
def _diff(path: str, before: str, after: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp, "a"), Path(tmp, "b")
        a.mkdir(), b.mkdir()
        (a / "f").write_text(before)
        (b / "f").write_text(after)
        out = subprocess.run(["git", "diff", "--no-index", "--no-prefix", "a/f", "b/f"], cwd=tmp, capture_output=True,
                             text=True).stdout
    return out.replace("a/f", f"a/{path}").replace("b/f", f"b/{path}")


def build_demo_task(out: str | Path | None = None) -> TaskInstance:
    """Make the toolz demo task from real runs and write it to ``tasks/data/demo.jsonl`` (or ``out``)."""
    from lightswe.envs.grading import run_tests
    from lightswe.envs.sandbox import Sandbox, SandboxConfig
    from lightswe.tasks import sources
    from lightswe.tasks.images import ensure_instance_image
    from lightswe.tasks.instance import write_jsonl

    root = sources.sdist_repo("toolz", "1.0.0")
    path = "toolz/itertoolz.py"
    original = sources.read_blob(root, path).decode()
    good = "        return next(itertools.islice(seq, n, None))\n"
    assert original.count(good) == 1, "toolz 1.0.0 changed?"
    fix = _diff(path, original.replace(good, good.replace("n, None", "n + 1, None")), original)
    base = sources.commit_patch(root, fix, reverse=True)
    draft = TaskInstance(
        instance_id="pypi__toolz-1.0.0__nth-iterator", repo="pypi/toolz", base_commit=base.commit, patch=fix,
        problem_statement=(
            "`toolz.nth` returns the wrong element for iterators\n\n"
            "For lists and strings `nth` works, but for an iterator it is off by one:\n\n"
            "```python\n>>> from toolz import nth\n>>> nth(2, 'ABCDE')\n'C'\n>>> nth(2, iter('ABCDE'))\n'D'\n```\n\n"
            "The second call should also return `'C'`."),
        FAIL_TO_PASS=["placeholder"], source="pypi:toolz==1.0.0", version="1.0.0",
        test_command="python -m pytest -p no:cacheprovider -o addopts=", test_files=[DEMO_TEST_FILE],
        metadata={"mutation": "off-by-one in islice start", "function": "toolz.itertoolz.nth"},
    )
    image = ensure_instance_image(draft, progress=print)
    with Sandbox(SandboxConfig(image=image)) as box:
        runs = [run_tests(box, draft, ["toolz/tests"]).outcomes for _ in range(2)]
        assert runs[0] == runs[1], "flaky tests in the demo repository"
        box.exec("git apply -", stdin=fix.encode())
        fixed = run_tests(box, draft, ["toolz/tests"]).outcomes
    f2p = sorted(t for t, o in runs[0].items() if o != "passed" and fixed.get(t) == "passed")
    p2p = sorted(t for t, o in runs[0].items() if o == "passed" and fixed.get(t) == "passed")
    draft.FAIL_TO_PASS, draft.PASS_TO_PASS = f2p, p2p
    target = Path(out) if out else Path(__file__).resolve().parent.parent / "tasks" / "data" / "demo.jsonl"
    write_jsonl([draft], target)
    print(f"wrote {target}: FAIL_TO_PASS {f2p}, {len(p2p)} PASS_TO_PASS")
    return draft


if __name__ == "__main__":
    build_demo_task()
