"""``lightswe tasks build``: pool repositories -> synthesized, validated instances on disk, resumable.

Output folder (default ``tasks_out/``):

- ``instances.jsonl``: validated instances, one per line, appended (and flushed) as each passes validation;
- ``progress.jsonl``: one event per line (``accepted``, ``rejected`` with the reason, ``repo_done``,
  ``repo_error``): what resume skips and what ``tasks prune`` reads;
- ``report.json`` / ``report.md``: counts per repository and mutation kind, rates, rejections;
- ``train.jsonl``, ``test.jsonl``: the splits (see :mod:`lightswe.tasks.splits`).

Resume: a second run reads both files, keeps every instance already there, does not retry ids already
rejected, and only makes what is missing per repository. A repository that fails (its suite needs the network,
its sdist hash changed) is recorded as ``repo_error`` and the others go on; built instances are never rewritten
(the files are only appended to, and a torn last line from a killed run is ignored).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lightswe.durable import atomic_file
from lightswe.errors import UserInputError
from lightswe.tasks import pool as pool_mod
from lightswe.tasks import splits
from lightswe.tasks.instance import TaskFormatError, TaskInstance, write_jsonl

INSTANCES, PROGRESS = "instances.jsonl", "progress.jsonl"


@dataclass(kw_only=True, slots=True)
class BuildConfig:
    """Synthesize and validate instances from the curated pool (resumable: a rerun keeps what is built)."""

    # Output folder (instances.jsonl, progress.jsonl, report.md, train.jsonl, test.jsonl).
    out: Path = Path("tasks_out")
    # Pool names to build (default: the whole pool; see `lightswe tasks pool`).
    repos: list[str] = field(default_factory=list)
    # Validated instances wanted per repository.
    per_repo: int = 30
    # Repositories processed in parallel.
    workers: int = 1
    # Seed of the mutation order.
    seed: int = 0
    # A pool JSON file (default: the packaged one).
    pool_file: Path | None = None
    # A mutant failing more tests than this is too broad to be a task.
    max_fail: int = 25
    # Mutants tried at most per repository (0: 4 x per_repo); a repository that reaches it ends short, said.
    max_attempts: int = 0
    # Gold-patch runs per instance in validation (all must pass).
    gold_runs: int = 2
    # No-patch runs per instance in validation (the tests must fail, and pass, the same way in each).
    base_runs: int = 3

    def __post_init__(self) -> None:
        for name in ("per_repo", "workers", "max_fail", "gold_runs", "base_runs"):
            value = getattr(self, name)
            if value < 1:
                option = "--" + name.replace("_", "-")
                raise UserInputError(f"{option} {value}: must be >= 1; fix: e.g. {option} "
                                     f"{BuildConfig.__dataclass_fields__[name].default}")
        if self.max_attempts < 0:
            raise UserInputError(f"--max-attempts {self.max_attempts}: must be >= 0; fix: 0 tries up to 4 x "
                                 f"--per-repo mutants")
        if self.max_attempts and self.max_attempts < self.per_repo:
            raise UserInputError(f"--max-attempts {self.max_attempts} < --per-repo {self.per_repo}: could never "
                                 f"make {self.per_repo} instances; fix: raise --max-attempts or use 0")
        if self.out.exists() and not self.out.is_dir():
            raise UserInputError(f"--out {self.out}: is a file; pass a directory path (created if missing)")
        if self.pool_file is not None and not Path(self.pool_file).is_file():
            raise UserInputError(f"--pool-file {self.pool_file}: does not exist; pass a pool JSON file or leave it "
                                 f"out for the packaged pool")
        if self.pool_file is not None:  # absolute in config.json: `tasks report` finds it from any folder
            self.pool_file = Path(self.pool_file).resolve()

    @property
    def attempts(self) -> int:
        """Mutants tried at most per repository."""
        return self.max_attempts or 4 * self.per_repo


def _say(message: str) -> None:
    print(f"[tasks] {message}", file=sys.stderr, flush=True)


def read_built(out: Path) -> tuple[list[TaskInstance], list[dict]]:
    """(instances, progress events) already on disk; a torn last line (killed run) is skipped."""
    instances, events = [], []
    path = out / INSTANCES
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                instances.append(TaskInstance.from_dict(json.loads(line), where=f"{path}:{number}"))
            except (json.JSONDecodeError, TaskFormatError):
                if number == len(lines):
                    continue  # torn write of a killed run
                raise
    path = out / PROGRESS
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return instances, events


class _Store:
    """Append-only writers shared by the worker threads."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.out = out
        for name in (INSTANCES, PROGRESS):  # a torn last line (killed mid-write) is cut, never glued onto
            path = out / name
            data = path.read_bytes() if path.is_file() else b""
            if data and not data.endswith(b"\n"):
                with path.open("r+b") as handle:
                    handle.truncate(data.rfind(b"\n") + 1)

    def _append(self, name: str, record: dict) -> None:
        with self.lock, (self.out / name).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()

    def instance(self, instance: TaskInstance) -> None:
        self._append(INSTANCES, instance.to_dict())

    def event(self, **record) -> None:
        self._append(PROGRESS, {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record})


def shortfall(*, have: int, asked: int, tried: int, attempts: int) -> str | None:
    """Why a repository ended with ``have < asked`` instances after ``tried`` mutants (cap ``attempts``); None
    when it has them all."""
    if have >= asked:
        return None
    if tried >= attempts:
        return f"stopped at the attempt cap ({tried} mutants tried; raise --max-attempts)"
    return f"every mutation site was tried ({tried} new mutants; the repository offers no more)"


def build(config: BuildConfig, progress=_say, bar: bool = False) -> dict:
    """Build (or resume) the task set; returns the report (also written to ``report.json``), whose ``short``
    maps each repository that ended with fewer than ``per_repo`` instances to what it has and why.

    ``bar``: an overall progress bar on stderr (validated instances of all repositories, with an ETA); the
    ``progress`` lines are written above it.
    """
    from lightswe.tasks.synth import RepoSynthesizer, SynthConfig
    from lightswe.tasks.validate import Validator

    the_pool = pool_mod.load_pool(config.pool_file)
    specs = pool_mod.select(the_pool, config.repos)  # unknown names raise before any work
    from lightswe.envs.sandbox import default_client

    default_client()  # no engine: EngineError at once, not one per repository after each download
    built, events = read_built(config.out)
    store = _Store(config.out)
    done_ids = {i.instance_id for i in built} | {e["instance_id"] for e in events if e.get("instance_id")}
    per_repo = Counter(i.repo for i in built)
    test_repos = splits.held_out_repos(s.repo for s in the_pool.values())
    validator = Validator(gold_runs=config.gold_runs, base_runs=config.base_runs)
    started = time.perf_counter()
    overall = None
    if bar:
        from tqdm import tqdm

        overall = tqdm(total=config.per_repo * len(specs), initial=sum(min(per_repo[s.repo], config.per_repo)
                                                                        for s in specs),
                       desc="tasks build", unit="instance", file=sys.stderr, dynamic_ncols=True,
                       mininterval=1.0 if sys.stderr.isatty() else 30.0)
        if progress is _say:  # lines above the bar, not through it

            def progress(message: str) -> None:
                overall.write(f"[tasks] {message}", file=sys.stderr)
    short: dict[str, dict] = {}

    def one_repo(spec: pool_mod.RepoSpec) -> None:
        have = per_repo[spec.repo]
        if have >= config.per_repo:
            progress(f"{spec.name}: {have} instances already built, nothing to do")
            return
        progress(f"{spec.name}=={spec.version}: {have} built, making {config.per_repo - have} more")

        def emit(candidate: TaskInstance) -> bool:
            result = validator.validate(candidate)
            if not result.ok:
                store.event(event="rejected", repo=spec.repo, instance_id=candidate.instance_id,
                            reason=result.reason, image=result.image, seconds=round(result.seconds, 2))
                progress(f"{spec.name}: rejected {candidate.instance_id}: {result.reason[:200]}")
                return False
            candidate.metadata["split"] = splits.split_of(candidate, test_repos)
            candidate.metadata["validation"] = {"rewards": result.rewards, "seconds": round(result.seconds, 2)}
            store.instance(candidate)
            store.event(event="accepted", repo=spec.repo, instance_id=candidate.instance_id, image=result.image,
                        kind=candidate.metadata.get("mutation"), seconds=round(result.seconds, 2))
            if overall is not None:
                overall.update(1)
            return True

        try:
            synth = RepoSynthesizer(spec, SynthConfig(per_repo=config.per_repo, seed=config.seed,
                                                      max_fail=config.max_fail, max_attempts=config.attempts),
                                    progress=progress)
            stats = synth.run(emit, skip=done_ids, existing=have)
        except Exception as err:  # noqa: BLE001 - one repository's failure must not stop the others
            store.event(event="repo_error", repo=spec.repo, error=f"{type(err).__name__}: {err}"[:3000])
            progress(f"{spec.name}: FAILED: {type(err).__name__}: {str(err)[:400]}")
            short[spec.repo] = {"have": have, "asked": config.per_repo,
                                "reason": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"}
            return
        why = shortfall(have=have + stats.kept, asked=config.per_repo, tried=stats.tried, attempts=config.attempts)
        if why:
            short[spec.repo] = {"have": have + stats.kept, "asked": config.per_repo, "reason": why}
        store.event(event="repo_done", repo=spec.repo, tried=stats.tried, kept=stats.kept,
                    rejected=dict(stats.rejected), flaky=stats.flaky, stable_tests=stats.stable_tests,
                    baseline_s=round(stats.baseline_s, 2), seconds=round(stats.seconds, 1))
        progress(f"{spec.name}: +{stats.kept} instances ({stats.tried} mutants tried, "
                 f"rejected {dict(stats.rejected)}) in {stats.seconds:.0f} s")

    try:
        with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
            list(pool.map(one_repo, specs))
    finally:
        if overall is not None:
            overall.close()
    report = write_report(config.out, wall_s=time.perf_counter() - started, pool=the_pool)
    report["short"] = short
    for repo, gap in short.items():
        progress(f"{repo}: {gap['have']} of {gap['asked']} instances: {gap['reason']}")
    progress(f"{report['total']} validated instances from {len(report['per_repo'])} repositories in {config.out}")
    return report


def built_pool(out: Path) -> dict[str, pool_mod.RepoSpec]:
    """The pool a build folder was made from: its ``config.json``'s ``pool_file`` (the packaged pool when the
    folder names none). Raises UserInputError when that file is gone."""
    from lightswe.settings import CONFIG_FILE

    pool_file = None
    if (out / CONFIG_FILE).is_file():
        try:
            pool_file = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8")).get("pool_file")
        except json.JSONDecodeError:
            pool_file = None
    if pool_file and not Path(pool_file).is_file():
        where = ("a path relative to the folder the build ran in (older builds); fix: run this from that folder"
                 if not Path(pool_file).is_absolute() else "which no longer exists; fix: put it back")
        raise UserInputError(f"--out {out}: it was built from the pool file {pool_file}, {where} (its repositories "
                             "decide the held-out split)")
    return pool_mod.load_pool(pool_file)


def write_report(out: Path, wall_s: float | None = None, pool: dict[str, pool_mod.RepoSpec] | None = None) -> dict:
    """Counts per repository and mutation kind, rejection reasons, splits; ``report.json`` + ``report.md``.

    ``pool``: the build's pool (default: :func:`built_pool`), whose repositories decide the held-out ones.
    """
    instances, events = read_built(out)
    pool_repos = {s.repo for s in (pool if pool is not None else built_pool(out)).values()}
    test_repos = splits.held_out_repos(pool_repos | {i.repo for i in instances})
    by_split = splits.assign(instances, test_repos)
    write_jsonl(by_split[splits.TRAIN], out / "train.jsonl")
    write_jsonl(by_split[splits.TEST_REPO] + by_split[splits.TEST_FUNCTION], out / "test.jsonl")
    per_repo = Counter(i.repo for i in instances)
    per_kind = Counter(i.metadata.get("mutation", "?") for i in instances)
    table: dict[str, Counter] = defaultdict(Counter)
    for i in instances:
        table[i.repo][i.metadata.get("mutation", "?")] += 1
    rejected = Counter(e["reason"].split(":")[0][:60] for e in events if e.get("event") == "rejected")
    errors = {e["repo"]: e["error"][:300] for e in events if e.get("event") == "repo_error"}
    accepted = [e for e in events if e.get("event") == "accepted"]
    report = {
        "total": len(instances), "repositories": len(per_repo), "per_repo": dict(sorted(per_repo.items())),
        "per_kind": dict(per_kind.most_common()), "per_repo_kind": {r: dict(c) for r, c in sorted(table.items())},
        "splits": {k: len(v) for k, v in by_split.items()}, "held_out_repos": sorted(test_repos),
        "rejected_validation": dict(rejected), "repo_errors": errors,
        "validation_s_mean": round(sum(e.get("seconds", 0) for e in accepted) / max(1, len(accepted)), 2),
    }
    if wall_s is not None:
        report["last_run_wall_s"] = round(wall_s, 1)
    with atomic_file(out / "report.json") as handle:
        handle.write(json.dumps(report, indent=1) + "\n")
    kinds = sorted(per_kind)
    lines = [f"# Task build report: {len(instances)} validated instances from {len(per_repo)} repositories", "",
             "| repository | " + " | ".join(kinds) + " | total |", "|---" * (len(kinds) + 2) + "|"]
    for repo in sorted(table):
        lines.append(f"| {repo} | " + " | ".join(str(table[repo].get(k, 0)) for k in kinds)
                     + f" | {per_repo[repo]} |")
    lines.append("| **total** | " + " | ".join(str(per_kind[k]) for k in kinds) + f" | {len(instances)} |")
    lines += ["", f"Splits: {report['splits']} (held-out repositories: {', '.join(sorted(test_repos))})"]
    if errors:
        lines += ["", "Repository errors:"] + [f"- {r}: {e}" for r, e in errors.items()]
    if rejected:
        lines += ["", "Rejected at validation: " + ", ".join(f"{k} ({v})" for k, v in rejected.items())]
    with atomic_file(out / "report.md") as handle:
        handle.write("\n".join(lines) + "\n")
    return report
