"""``lightswe tasks ...``: build, report, validate and prune task instances."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("tasks", help="build, validate and report task instances",
                                   description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="tasks_command", metavar="ACTION")
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)

    b = sub.add_parser("build", help="synthesize and validate instances from the curated pool (resumable)")
    b.add_argument("--out", type=Path, default=Path("tasks_out"), help="output folder (default: tasks_out)")
    b.add_argument("--repos", nargs="*", default=[], help="pool names (default: all); see `tasks pool`")
    b.add_argument("--per-repo", type=int, default=30, help="validated instances per repository (default 30)")
    b.add_argument("--workers", type=int, default=1, help="repositories processed in parallel (default 1)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--pool", type=Path, default=None, help="a pool JSON file (default: the packaged one)")
    b.add_argument("--gold-runs", type=int, default=2, help="gold-patch runs per instance in validation (default 2)")
    b.set_defaults(func=_build)

    r = sub.add_parser("report", help="counts per repository and mutation kind of a build folder")
    r.add_argument("--out", type=Path, default=Path("tasks_out"))
    r.set_defaults(func=_report)

    v = sub.add_parser("validate", help="check task instances in the environment: no patch 0.0, gold patch 1.0")
    v.add_argument("file", help="tasks: .jsonl, .json, .parquet, a Hugging Face dataset directory, or a dataset "
                   "name from the local cache (owner/name:split[0:50])")
    v.add_argument("--gold-runs", type=int, default=2)
    v.set_defaults(func=_validate)

    s = sub.add_parser("show", help="load task instances (any supported form) and print one line per instance")
    s.add_argument("file", help="same forms as `tasks validate`")
    s.set_defaults(func=_show)

    p = sub.add_parser("prune", help="remove instance images of tasks no longer in a build folder")
    p.add_argument("--out", type=Path, default=Path("tasks_out"))
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=_prune)

    lst = sub.add_parser("pool", help="list the curated repositories")
    lst.set_defaults(func=_pool)


def _build(args) -> int:
    from lightswe.tasks.build import BuildConfig, build

    if args.per_repo < 1 or args.workers < 1:
        raise SystemExit(f"--per-repo and --workers must be >= 1, got {args.per_repo} and {args.workers}")
    try:
        report = build(BuildConfig(out=args.out, repos=args.repos, per_repo=args.per_repo, workers=args.workers,
                                   seed=args.seed, pool_file=args.pool,
                                   gold_runs=args.gold_runs))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((args.out / "report.md").read_text())
    return 0 if report["total"] else 1


def _report(args) -> int:
    from lightswe.tasks.build import INSTANCES, write_report

    if not (args.out / INSTANCES).is_file():
        print(f"error: {args.out / INSTANCES} does not exist; run `lightswe tasks build --out {args.out}`",
              file=sys.stderr)
        return 2
    write_report(args.out)
    print((args.out / "report.md").read_text())
    return 0


def _validate(args) -> int:
    from lightswe.tasks.datasets import load_tasks
    from lightswe.tasks.instance import TaskFormatError
    from lightswe.tasks.validate import Validator

    try:
        instances = load_tasks(args.file)
    except (TaskFormatError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    validator = Validator(gold_runs=args.gold_runs)
    failed = 0
    for instance in instances:
        result = validator.validate(instance)
        failed += not result.ok
        record = {"instance_id": result.instance_id, "ok": result.ok, "reason": result.reason,
                  "rewards": result.rewards, "seconds": round(result.seconds, 1)}
        if result.unmatched:
            record["unmatched"] = result.unmatched
        print(json.dumps(record), flush=True)
    print(f"{len(instances) - failed}/{len(instances)} instances valid", file=sys.stderr)
    return 1 if failed else 0


def _show(args) -> int:
    from lightswe.tasks.datasets import load_tasks
    from lightswe.tasks.instance import TaskFormatError

    try:
        instances = load_tasks(args.file)
    except (TaskFormatError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for t in instances:
        print(json.dumps({"instance_id": t.instance_id, "repo": t.repo, "version": t.version,
                          "python_version": t.python_version, "image_name": t.image_name,
                          "install_command": t.install_command, "test_command": t.test_command,
                          "log_parser": t.log_parser, "FAIL_TO_PASS": len(t.FAIL_TO_PASS),
                          "PASS_TO_PASS": len(t.PASS_TO_PASS)}))
    print(f"{len(instances)} instance(s)", file=sys.stderr)
    return 0


def _prune(args) -> int:
    from lightswe.tasks.prune import prune

    removed = prune(args.out, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} image(s) of tasks no longer in {args.out}")
    for tag in removed:
        print(f"  {tag}")
    return 0


def _pool(_args) -> int:
    from lightswe.tasks.pool import load_pool

    for spec in load_pool().values():
        print(f"{spec.name:14} {spec.version:10} sha256:{spec.sha256[:12]}  tests: {' '.join(spec.tests)}")
    return 0
