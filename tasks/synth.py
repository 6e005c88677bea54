"""The synthesizer: bugs made by mutating functions of a real repository, kept only when tests catch them.

For one pool repository (SWE-smith style, everything measured in the real sandbox):

1. the sdist becomes a git repository (``sources.sdist_repo``; a git entry is cloned at its commit) and an
   image with its dependencies
   (``images.ensure_instance_image`` of the unmodified repository);
2. one container from that image runs the suite twice (JUnit XML); tests that pass both times are the stable
   set, tests whose outcome differs are flaky and never used;
3. mutation sites of the library's functions (``mutate.find_mutations``) are tried in a seeded order that
   interleaves mutation kinds and functions; each mutant is written into the same container, the whole suite
   runs, and ``git checkout`` restores the file (about one suite run per mutant, no container start);
4. a mutant is kept when 1..``max_fail`` stable tests fail and every other stable test still passes, no
   collection error and no timeout: FAIL_TO_PASS are the failing ones, PASS_TO_PASS the other stable tests of
   the test files that hold a failing one (SWE-bench's scope: grading runs those files, not the whole suite);
5. ``patch`` (the fix) is ``git diff -R`` of the mutant in the container; ``base_commit`` is the sdist commit
   plus the reverse of that patch, committed deterministically on the host (``sources.commit_patch``, which
   also proves the patch applies with real git), so anyone with the sdist (or the git source) can rebuild the
   base (``sources.base_repo``).

Instances are handed to a callback one by one, so a caller can append them to disk as they come (resume).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from lightswe.errors import UserInputError
from lightswe.tasks import sources
from lightswe.tasks.instance import TaskInstance
from lightswe.tasks.mutate import Mutation, find_mutations, public_name
from lightswe.tasks.pool import RepoSpec
from lightswe.tasks.statement import write_statement
from lightswe.tasks.testrun import TestRun, run_tests

Progress = Callable[[str], None]


class SuiteError(UserInputError):
    """The repository's own suite does not run green offline (network needed, missing dependency): a pool entry to fix."""


@dataclass(kw_only=True, slots=True)
class SynthConfig:
    per_repo: int = 30  # instances wanted per repository
    max_attempts: int = 0  # mutants tried at most (0: 4 * per_repo)
    max_fail: int = 25  # a bug failing more tests than this is too broad to be a task
    per_function: int = 2  # instances per function at most (diversity)
    seed: int = 0
    baseline_runs: int = 2
    cpus: float = 1.0


@dataclass(kw_only=True, slots=True)
class SynthStats:
    repo: str
    tried: int = 0
    kept: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # reason -> count
    flaky: list[str] = field(default_factory=list)
    stable_tests: int = 0
    baseline_s: float = 0.0
    seconds: float = 0.0


def base_instance(spec: RepoSpec, commit: str) -> TaskInstance:
    """The unmodified repository as an instance (for its image); never written to a task file."""
    return TaskInstance(instance_id=f"{spec.name}-{spec.version}-base", base_commit=commit, patch="",
                        problem_statement="", FAIL_TO_PASS=[], environment_setup_commit=commit,
                        metadata=_source_metadata(spec), **spec.instance_fields())


def _source_metadata(spec: RepoSpec) -> dict:
    return {"sdist_sha256": spec.sha256} if spec.sha256 else {}


def instance_id(spec: RepoSpec, mutation: Mutation) -> str:
    module = mutation.path.removesuffix(".py").replace("/", ".").removeprefix("src.")
    digest = hashlib.sha256(f"{spec.name}=={spec.version}:{mutation.key}".encode()).hexdigest()[:8]
    return f"{spec.name}__{module}.{mutation.function}__{mutation.kind}__{digest}"


def order_candidates(mutations: list[Mutation], seed: int) -> list[Mutation]:
    """Seeded order that alternates mutation kinds and spreads over functions (round robin)."""
    rng = random.Random(seed)
    by_kind: dict[str, list[Mutation]] = defaultdict(list)
    for m in mutations:
        by_kind[m.kind].append(m)
    for group in by_kind.values():
        rng.shuffle(group)
        # spread functions: the first site of each function before second sites
        seen: dict[str, int] = defaultdict(int)
        ranked = []
        for m in group:
            ranked.append((seen[m.path + m.function], rng.random(), m))
            seen[m.path + m.function] += 1
        group[:] = [m for _, _, m in sorted(ranked, key=lambda t: (t[0], t[1]))]
    kinds = sorted(by_kind)
    rng.shuffle(kinds)
    ordered = []
    while any(by_kind.values()):
        for kind in kinds:
            if by_kind[kind]:
                ordered.append(by_kind[kind].pop(0))
    return ordered


def stable_baseline(runs: list[TestRun]) -> tuple[set[str], list[str]]:
    """(tests passing in every run, tests whose outcome differs between runs)."""
    stable = set.intersection(*(r.passed for r in runs))
    ids = set().union(*(r.outcomes for r in runs))
    flaky = sorted(t for t in ids if len({r.outcomes.get(t) for r in runs}) > 1)
    return stable - set(flaky), flaky


class RepoSynthesizer:
    """Makes validated-by-construction instances for one pool repository; see the module docstring."""

    def __init__(self, spec: RepoSpec, config: SynthConfig | None = None, *, client=None,
                 progress: Progress = lambda _: None) -> None:
        self.spec, self.config, self.client, self.progress = spec, config or SynthConfig(), client, progress
        self.root = spec.source_repo()

    def source_files(self) -> dict[str, str]:
        files = [p for p in sources.tree_files(self.root) if self.spec.is_source_file(p)]
        if not files:
            raise UserInputError(f"{self.spec.name}: no source file matches src={list(self.spec.src)}; fix the 'src' "
                             "entry of the pool file (tasks/data/pool.json or --pool-file)")
        return {p: sources.read_blob(self.root, p).decode("utf-8", errors="replace") for p in files}

    def image(self) -> str:
        from lightswe.tasks.images import ensure_instance_image

        return ensure_instance_image(base_instance(self.spec, self.root.commit), client=self.client,
                                     progress=self.progress)

    def run(self, emit: Callable[[TaskInstance], bool], *, skip: set[str] = frozenset(),
            existing: int = 0) -> SynthStats:
        """Synthesize until ``per_repo`` instances exist (``existing`` already built); ``skip``: ids to not redo.

        ``emit`` gets each candidate and returns whether it was accepted (validated and stored); only accepted
        ones count toward ``per_repo``.
        """
        from lightswe.envs.sandbox import Sandbox, SandboxConfig

        cfg, spec = self.config, self.spec
        stats = SynthStats(repo=spec.repo)
        start = time.perf_counter()
        if existing >= cfg.per_repo:
            return stats
        files = self.source_files()
        mutations = [m for path, text in files.items() for m in find_mutations(text, path)]
        candidates = order_candidates(mutations, cfg.seed)
        tag = self.image()
        box_config = SandboxConfig(image=tag, user="root", workdir="/testbed", cpus=cfg.cpus, mem_limit="2g",
                                   pids_limit=1024, labels={"lightswe.tasks.synth": spec.name})
        with Sandbox(box_config, client=self.client) as box:
            runs = [run_tests(box, spec.test_command, timeout=600) for _ in range(cfg.baseline_runs)]
            stable, flaky = stable_baseline(runs)
            unaddressable = set().union(*(r.unaddressable for r in runs))
            stable -= unaddressable  # ids whose test file could not be found: a grader could not select them
            stats.flaky, stats.stable_tests = flaky, len(stable)
            stats.baseline_s = sum(r.duration_s for r in runs) / len(runs)
            if not stable or any(r.collection_errors for r in runs):
                raise SuiteError(f"{spec.name}=={spec.version}: the test suite does not run green offline "
                                 f"({len(stable)} stable passing tests, collection errors "
                                 f"{[r.collection_errors for r in runs]}); tests that need the network or a missing "
                                 f"dependency are the usual cause; fix 'ignore'/'test_deps' of the pool file."
                                 f"\nLast output:\n{runs[-1].output[-1500:]}")
            self.progress(f"{spec.name}: {len(stable)} stable tests ({len(flaky)} flaky, {len(unaddressable)} "
                          "without a known file, unused), suite "
                          f"{stats.baseline_s:.1f} s, {len(candidates)} mutation sites in {len(files)} files")
            timeout = max(30.0, 10 * stats.baseline_s)
            per_function: dict[str, int] = defaultdict(int)
            kept = existing
            limit = cfg.max_attempts or 4 * cfg.per_repo
            for mutation in candidates:
                if kept >= cfg.per_repo or stats.tried >= limit:
                    break
                iid = instance_id(spec, mutation)
                fkey = mutation.path + ":" + mutation.function
                if iid in skip:
                    per_function[fkey] += 1
                    continue
                if per_function[fkey] >= cfg.per_function:
                    continue
                stats.tried += 1
                made = self._try(box, mutation, files[mutation.path], stable, flaky, timeout, stats)
                if made is not None:
                    made.instance_id = iid
                    if emit(made):
                        per_function[fkey] += 1
                        kept += 1
                        stats.kept += 1
                    else:
                        stats.rejected["validation"] += 1
        stats.seconds = time.perf_counter() - start
        return stats

    def _try(self, box, mutation: Mutation, original: str, stable: set[str], flaky: list[str],
             timeout: float, stats: SynthStats) -> TaskInstance | None:
        spec, cfg = self.spec, self.config
        box.write_file(f"/testbed/{mutation.path}", mutation.apply(original), owner="root")
        try:
            run = run_tests(box, spec.test_command, timeout=timeout)
            diff = box.exec(f"git diff -R --no-color --no-ext-diff --src-prefix=b/ --dst-prefix=a/ -- '{mutation.path}'", timeout=30, user="agent",
                            max_output_bytes=1_000_000)
        finally:
            box.exec(f"git checkout -q -- '{mutation.path}'", timeout=30, user="agent")
        failing = sorted(stable - run.passed)
        reason = ("timeout" if run.timed_out else "collection_error" if run.collection_errors
                  else "no_test_fails" if not failing else "too_many_fail" if len(failing) > cfg.max_fail else "")
        if reason:
            stats.rejected[reason] += 1
            return None
        fix = diff.output if diff.exit_code == 0 else ""
        if not fix.strip():
            stats.rejected["no_diff"] += 1
            return None
        try:
            base = sources.commit_patch(self.root, fix, reverse=True, message="lightswe task base")
        except sources.SourceError:
            stats.rejected["patch_does_not_apply"] += 1
            return None
        # SWE-bench's scope: PASS_TO_PASS are the stable tests of the files that hold a failing test (the
        # grader then runs a few files, not the whole suite; a break elsewhere is in FAIL_TO_PASS anyway).
        files = {t.split("::")[0] for t in failing}
        passing = sorted(t for t in stable & run.passed if t.split("::")[0] in files)
        first = failing[0]
        statement = write_statement(package=spec.name, call=public_name(mutation.function), failing=failing,
                                    failure_text=run.messages.get(first, ""), message=run.messages.get(first, ""),
                                    seed=cfg.seed + mutation.start)
        test_files = sorted({t.split("::")[0] for t in failing + passing})
        return TaskInstance(
            instance_id="", base_commit=base.commit, patch=fix, problem_statement=statement,
            FAIL_TO_PASS=failing, PASS_TO_PASS=passing, environment_setup_commit=self.root.commit,
            test_files=test_files, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            metadata={**_source_metadata(spec), "synthesized": True, "mutation": mutation.kind,
                      "file": mutation.path, "function": mutation.function, "line": mutation.line,
                      "edit": mutation.describe(), "flaky_excluded": flaky, "mutant_test_s": round(run.duration_s, 2),
                      "p2p_scope": "failing_files"},
            **spec.instance_fields(),
        )
