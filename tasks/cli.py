"""``lightswe tasks ...``: build, report, validate and prune task instances."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lightswe.errors import UserInputError


def register(subparsers) -> None:
    from lightswe.settings import typed_command

    parser = subparsers.add_parser("tasks", help="build, validate and report task instances",
                                   description="Build, report, validate, show and prune task instances.")
    sub = parser.add_subparsers(dest="tasks_command", metavar="ACTION")
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)

    typed_command(sub, ("tasks", "build"), run=_build,
                  help="synthesize and validate instances from the curated pool (resumable; overall progress)")

    r = sub.add_parser("report", help="counts per repository and mutation kind of a build folder")
    r.add_argument("--out", type=Path, default=Path("tasks_out"),
                   help="build folder (the --out of `lightswe tasks build`; default: %(default)s)")
    r.set_defaults(func=_report)

    typed_command(sub, ("tasks", "validate"), run=_validate,
                  help="check task instances in the environment: no patch 0.0, gold patch 1.0 (any supported form)")

    s = sub.add_parser("show", help="load task instances (any supported form) and print one line per instance")
    s.add_argument("file", help="same forms as `tasks validate`")
    s.set_defaults(func=_show)

    p = sub.add_parser("prune", help="remove instance images of tasks no longer in a build folder")
    p.add_argument("--out", type=Path, default=Path("tasks_out"),
                   help="build folder (the --out of `lightswe tasks build`; default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="list the images that would be removed, remove none")
    p.set_defaults(func=_prune)

    lst = sub.add_parser("pool", help="list the curated repositories (or those of a pool file)")
    lst.add_argument("--pool-file", type=Path, default=None,
                     help="a pool JSON file (the format of the packaged one; default: the packaged pool)")
    lst.set_defaults(func=_pool)


def _build(argv: list[str]) -> int:
    """Exit 0 when every repository has ``--per-repo`` instances; 1 when some ended short (each said, with why)."""
    from lightswe.settings import check_resume, parse, write_config
    from lightswe.tasks.build import BuildConfig, build

    cfg, allow = parse(BuildConfig, argv, prog="lightswe tasks build", description=BuildConfig.__doc__,
                       shortcuts={"--pool": "--pool-file"})
    from lightswe.tasks.pool import load_pool, select

    select(load_pool(cfg.pool_file), cfg.repos)  # an unknown --repos name fails before the folder is written
    # a build folder grows: more repositories or instances per repository are fine, other mutants are not
    check_resume(cfg.out, cfg, allow=allow, free={"repos", "per_repo", "workers", "max_attempts"},
                 command="tasks build")
    write_config(cfg.out, cfg, command="tasks build")
    report = build(cfg, bar=True)
    print((cfg.out / "report.md").read_text())
    if report["short"]:
        gaps = "; ".join(f"{repo} {g['have']}/{g['asked']} ({g['reason']})" for repo, g in report["short"].items())
        print(f"lightswe tasks build: {len(report['short'])} repositories ended with fewer instances than "
              f"--per-repo {cfg.per_repo}: {gaps}", file=sys.stderr)
        return 1
    return 0 if report["total"] else 1


def _report(args) -> int:
    from lightswe.tasks.build import INSTANCES, write_report

    if not (args.out / INSTANCES).is_file():
        raise UserInputError(f"--out {args.out}: {args.out / INSTANCES} does not exist; fix: pass the --out of a "
                             f"`lightswe tasks build` (or run `lightswe tasks build --out {args.out}`)")
    write_report(args.out)
    print((args.out / "report.md").read_text())
    return 0


def _validate(argv: list[str]) -> int:
    from lightswe.settings import parse
    from lightswe.tasks.validate_args import ValidateArgs

    args, _ = parse(ValidateArgs, argv, prog="lightswe tasks validate", description=ValidateArgs.__doc__)
    from lightswe.tasks.datasets import load_tasks
    from lightswe.tasks.images import ensure_instance_image
    from lightswe.tasks.validate import Validation, Validator, error_reason
    from tqdm import tqdm

    instances = load_tasks(args.file)  # TaskFormatError (a UserInputError) names the row and the fix
    validator = Validator(gold_runs=args.gold_runs, base_runs=args.base_runs)
    failed = 0
    with tqdm(total=len(instances), desc="tasks validate", unit="instance", file=sys.stderr, dynamic_ncols=True,
              disable=not args.progress) as bar:
        for instance in instances:
            bar.set_postfix_str(instance.instance_id[:40], refresh=True)
            # images first, with their steps above the bar (building one can take minutes); a build that fails
            # rejects this instance with its cause, never the whole run
            try:
                ensure_instance_image(instance, progress=lambda message: bar.write(f"[tasks] {message}",
                                                                                   file=sys.stderr))
            except Exception as err:  # noqa: BLE001 - reported per instance below
                result = Validation(instance_id=instance.instance_id, ok=False, reason=error_reason(err))
            else:
                result = validator.validate(instance)
            failed += not result.ok
            record = {"instance_id": result.instance_id, "ok": result.ok, "reason": result.reason,
                      "rewards": result.rewards, "seconds": round(result.seconds, 1)}
            if result.unmatched:
                record["unmatched"] = result.unmatched
            bar.write(json.dumps(record), file=sys.stdout)
            bar.update(1)
    print(f"{len(instances) - failed}/{len(instances)} instances valid", file=sys.stderr)
    return 1 if failed else 0


def _show(args) -> int:
    from lightswe.tasks.datasets import load_tasks

    try:
        instances = load_tasks(args.file)
    except FileNotFoundError as err:
        raise UserInputError(str(err)) from None
    for t in instances:
        print(json.dumps({"instance_id": t.instance_id, "repo": t.repo, "version": t.version,
                          "python_version": t.python_version, "image_name": t.image_name,
                          "install_command": t.install_command, "test_command": t.test_command,
                          "log_parser": t.log_parser, "FAIL_TO_PASS": len(t.FAIL_TO_PASS),
                          "PASS_TO_PASS": len(t.PASS_TO_PASS)}))
    print(f"{len(instances)} instance(s)", file=sys.stderr)
    return 0


def _prune(args) -> int:
    from lightswe.tasks.build import INSTANCES, PROGRESS
    from lightswe.tasks.prune import prune

    if not (args.out / PROGRESS).is_file() and not (args.out / INSTANCES).is_file():
        raise UserInputError(f"--out {args.out}: not a build folder (no {PROGRESS} or {INSTANCES} in it); fix: pass "
                             "the --out of a `lightswe tasks build`")
    removed = prune(args.out, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} image(s) of tasks no longer in {args.out}")
    for tag in removed:
        print(f"  {tag}")
    return 0


def _pool(args) -> int:
    from lightswe.tasks.pool import load_pool

    if args.pool_file is not None and not args.pool_file.is_file():
        raise UserInputError(f"--pool-file {args.pool_file}: does not exist; fix: pass a pool JSON file or leave it "
                             "out for the packaged pool")
    for spec in load_pool(args.pool_file).values():
        pin = f"git:{spec.git}@{spec.commit[:12]}" if spec.git else f"sha256:{spec.sha256[:12]}"
        print(f"{spec.name:14} {spec.version:12} {pin}  tests: {' '.join(spec.tests)}")
    return 0
