"""Task building throughput and image disk use, from a real ``lightswe tasks build`` folder.

    python -m lightswe tasks build --out tasks_out --per-repo 25 --workers 2   # makes the data
    python benchmarks/tasks.py --out tasks_out [--cycle 3]

Prints two tables:
1. per repository: validated instances, mutants tried and kept (yield), rejections, mean validation seconds,
   and instances validated per hour of wall time (accepted events over the span in which that repository
   was being built, from ``progress.jsonl`` timestamps);
2. per repository: disk of its environment image (its own layers over the base image) and of its instance
   images (each one's own top layer: the base tree and a one-commit git repository), from the Docker engine.

``--cycle N`` also times N validation cycles (no-patch + gold run through ``lightswe/SWE-v0``, images already
built) of the first instance, the unit cost that bounds the build rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

from lightswe.tasks.build import read_built


def _t(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").timestamp()


def _spans(times: list[float], gap: float = 600.0) -> float:
    """Busy seconds: sum of spans between consecutive events, ignoring pauses longer than ``gap`` (restarts)."""
    times = sorted(times)
    return sum(b - a for a, b in zip(times, times[1:]) if b - a <= gap)


def throughput_table(out: Path) -> list[str]:
    instances, events = read_built(out)
    per_repo = Counter(i.repo for i in instances)
    accepted = defaultdict(list)
    times = defaultdict(list)
    seconds = defaultdict(list)
    rejected = Counter()
    tried, kept = Counter(), Counter()
    for e in events:
        repo = e.get("repo", "?")
        times[repo].append(_t(e["time"]))
        if e["event"] == "accepted":
            accepted[repo].append(_t(e["time"]))
            seconds[repo].append(e.get("seconds", 0.0))
        elif e["event"] == "rejected":
            rejected[repo] += 1
        elif e["event"] == "repo_done":
            tried[repo] += e.get("tried", 0)
            kept[repo] += e.get("kept", 0)
    rows = ["| repository | instances | mutants tried | kept | rejected at validation | validation s (mean) "
            "| instances/hour |", "|---|---|---|---|---|---|---|"]
    for repo in sorted(per_repo):
        busy = _spans(times[repo])
        rate = len(accepted[repo]) / busy * 3600 if busy > 0 else float("nan")
        mean = statistics.mean(seconds[repo]) if seconds[repo] else float("nan")
        rows.append(f"| {repo} | {per_repo[repo]} | {tried[repo]} | {kept[repo]} | {rejected[repo]} | {mean:.1f} "
                    f"| {rate:.0f} |")
    all_times = [_t(e["time"]) for e in events]
    busy = _spans(all_times)
    total_accepted = sum(len(v) for v in accepted.values())
    rows.append(f"| **all** (wall, workers together) | {len(instances)} | {sum(tried.values())} "
                f"| {sum(kept.values())} | {sum(rejected.values())} | "
                f"{statistics.mean([s for v in seconds.values() for s in v] or [float('nan')]):.1f} "
                f"| {total_accepted / busy * 3600 if busy else float('nan'):.0f} |")
    return rows


def disk_table(out: Path) -> list[str]:
    from lightswe.envs.engine import BASE_IMAGE
    from lightswe.envs.sandbox import default_client

    instances, events = read_built(out)
    repo_of = {e["instance_id"]: e["repo"] for e in events if e.get("instance_id")}
    repo_of.update({i.instance_id: i.repo for i in instances})
    api = default_client().api
    base_size = api.inspect_image(BASE_IMAGE)["Size"]
    env_size: dict[str, int] = {}
    env_by_id: dict[str, int] = {}
    for image in api.images(filters={"label": "lightswe.kind=env"}):
        source = (image.get("Labels") or {}).get("lightswe.source", "")
        if source.startswith("pypi:"):
            repo = "pypi/" + source[5:].split("==")[0]
            env_size[repo] = max(env_size.get(repo, 0), image["Size"] - base_size)
        env_by_id[image["Id"]] = image["Size"]
    inst_bytes, inst_count = Counter(), Counter()
    for image in api.images(filters={"label": "lightswe.kind=instance"}):
        repo = repo_of.get((image.get("Labels") or {}).get("lightswe.instance_id", ""))
        if repo is None:
            continue
        parent = api.inspect_image(image["Id"]).get("Parent") or ""
        own = image["Size"] - env_by_id.get(parent, 0) if parent in env_by_id else image["Size"] - base_size
        inst_bytes[repo] += max(0, own - env_size.get(repo, 0)) if parent not in env_by_id else own
        inst_count[repo] += 1
    mb = 1e6
    rows = [f"Base image {BASE_IMAGE}: {base_size / mb:.0f} MB (shared by every repository).", "",
            "| repository | env image (own layers) MB | instance images | instance layers MB (total) "
            "| per instance MB |", "|---|---|---|---|---|"]
    for repo in sorted(set(env_size) | set(inst_count)):
        n = inst_count[repo]
        rows.append(f"| {repo} | {env_size.get(repo, 0) / mb:.1f} | {n} | {inst_bytes[repo] / mb:.1f} "
                    f"| {inst_bytes[repo] / mb / n if n else 0:.2f} |")
    rows.append(f"| **all** | {sum(env_size.values()) / mb:.1f} | {sum(inst_count.values())} "
                f"| {sum(inst_bytes.values()) / mb:.1f} | |")
    return rows


def cycle_times(out: Path, n: int) -> list[str]:
    from lightswe.tasks.validate import Validator

    instances, _ = read_built(out)
    if not instances:
        return ["(no instance to time)"]
    validator = Validator(gold_runs=1)
    validator.validate(instances[0])  # images built/cached
    took = []
    for _ in range(n):
        start = time.perf_counter()
        result = validator.validate(instances[0])
        took.append(time.perf_counter() - start)
        assert result.ok, result.reason
    return [f"Validation cycle of {instances[0].instance_id} (env reset, no-patch submit, reset, gold patch, "
            f"submit; images cached): median {statistics.median(took):.2f} s over {n}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tasks_out"))
    parser.add_argument("--cycle", type=int, default=0, help="time N validation cycles of one instance")
    parser.add_argument("--no-disk", action="store_true")
    args = parser.parse_args()
    print("\n".join(throughput_table(args.out)))
    if not args.no_disk:
        print()
        print("\n".join(disk_table(args.out)))
    if args.cycle:
        print()
        print("\n".join(cycle_times(args.out, args.cycle)))
    report = args.out / "report.json"
    if report.is_file():
        data = json.loads(report.read_text())
        print(f"\nreport.json: {data['total']} instances, {data['repositories']} repositories, "
              f"kinds {data['per_kind']}")


if __name__ == "__main__":
    main()
