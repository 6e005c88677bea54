"""False positives of grading's filters on gold patches: what an honest fix would lose or get flagged for.

    python benchmarks/hack_check.py [TASKS.jsonl ...]     # default: every tasks/data/*.jsonl

For each instance, the gold ``patch`` is applied to the base tree (``git apply`` on the base files, from the
task's source repository: no Docker) and the changed files go through the same two checks grading uses:
:func:`lightswe.envs.graded_files.select_changes` (a path left out is a false positive: an honest fix would
lose it) and :func:`lightswe.envs.hack_check.suspicious_code` (a flag is a false positive). Modules that would
be shadowed are approximated by this interpreter's standard library plus the test runner's modules (grading
reads them from the image). Prints one row per task file and every false positive with its reason.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightswe.envs.agent_diff import REGULAR, Change, Entry, blob_id
from lightswe.envs.graded_files import RUNNER_MODULES, patch_paths, select_changes, task_scope
from lightswe.envs.grading import _own_modules
from lightswe.envs.hack_check import suspicious_code
from lightswe.tasks import sources
from lightswe.tasks.instance import read_jsonl


def gold_changes(instance) -> tuple[list[Change], dict[str, Entry], dict[str, bytes]]:
    """The gold patch as changes against the base tree, with the base listing and base bytes it touches."""
    repo = sources.base_repo(instance)
    listing = sources.tree_files(repo, instance.base_commit)
    base = {p: Entry(mode=REGULAR, sha="", size=0) for p in listing}
    touched = sorted(patch_paths(instance.patch))
    old = {p: sources.read_blob(repo, p, instance.base_commit) for p in touched if p in base}
    with tempfile.TemporaryDirectory() as tmp:
        for path, data in old.items():
            Path(tmp, path).parent.mkdir(parents=True, exist_ok=True)
            Path(tmp, path).write_bytes(data)
        subprocess.run(["git", "apply", "--whitespace=nowarn", "-"], cwd=tmp, input=instance.patch.encode(),
                       check=True, capture_output=True)
        new = {p: Path(tmp, p).read_bytes() if Path(tmp, p).exists() else None for p in touched}
    for path, data in old.items():
        base[path] = Entry(mode=REGULAR, sha=blob_id(data), size=len(data))
    found = [Change(path=p, old=base.get(p), new=None if new[p] is None else
                    Entry(mode=REGULAR, sha=blob_id(new[p]), size=len(new[p]), data=new[p])) for p in touched]
    return found, base, old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="*", help="task JSONL files (default: tasks/data/*.jsonl)")
    args = parser.parse_args()
    files = args.tasks or sorted(str(p) for p in (Path(__file__).resolve().parent.parent / "tasks" / "data").glob("*.jsonl"))
    outside = set(sys.stdlib_module_names) | RUNNER_MODULES
    rows, problems = [], []
    for name in files:
        start = time.perf_counter()
        instances = read_jsonl(name)
        left_n = flagged_n = 0
        for instance in instances:
            found, base, old = gold_changes(instance)
            own = _own_modules(base)
            scope = task_scope(instance, outside - own)
            kept, left = select_changes(found, scope, base=base, tree_paths=set(base) | {c.path for c in found},
                                        read_base=lambda p, old=old: old.get(p, b""))
            flags = suspicious_code([(c.path, old.get(c.path), c.new.data if c.new else None) for c in kept],
                                    own_modules=own)
            left_n += bool(left)
            flagged_n += bool(flags)
            problems += [f"{instance.instance_id}: left out {x.path} ({x.reason})" for x in left]
            problems += [f"{instance.instance_id}: flagged {f}" for f in flags]
        rows.append((name, len(instances), left_n, flagged_n, time.perf_counter() - start))
    header = ("task file", "gold patches", "with a path left out", "flagged", "seconds")
    table = [header, *[(n, str(c), str(lo), str(f), f"{s:.1f}") for n, c, lo, f, s in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("-|-".join("-" * w for w in widths))
    total = sum(r[1] for r in rows)
    print(f"\n{total} gold patches; false positives: {sum(r[2] for r in rows)} left out, {sum(r[3] for r in rows)} "
          "flagged")
    for line in problems:
        print("  " + line)


if __name__ == "__main__":
    main()
