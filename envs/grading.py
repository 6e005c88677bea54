"""Grade a submission out of the agent's reach: its change, applied to a fresh container, tested there.

:func:`grade` (SWE-bench's evaluation is the anchor: fresh container, model patch, then test patch):

1. A **fresh container** of the instance image comes from ``fresh()`` (default: a new
   :class:`~lightswe.envs.sandbox.Sandbox`; a warm pool can supply one). Grading owns it and closes it.
2. The **agent's change** is read without running anything the agent controls (:mod:`lightswe.envs.agent_diff`):
   its ``/testbed`` through the engine's archive API (no ``.git``), with its container frozen (the engine's
   ``pause``: no process the agent left running can change a file while it is archived), the base tree from
   the pristine container. A tree past the base's bytes + 8 GiB or 1,000,000 entries is not read further: 0.0.
3. **What grading may see** (:mod:`lightswe.envs.graded_files`): the task's tests, test-runner configuration,
   ``conftest.py``, site customisation, ``.pth``, package metadata, bytecode and shadowing modules are left out;
   ``Grade.left_out`` lists each with its reason.
4. The kept change is written into the fresh container's ``/testbed`` (deletions first, then one tar through
   ``put_archive``, owned by the agent user); ``Grade.patch`` is its binary git diff against the base commit
   (git run there as the non-root user with a pristine environment); the task's ``test_patch`` is applied.
5. The tests run there as the non-root user in a Python the repository cannot shadow
   (:mod:`lightswe.envs.pytest_run`); outcomes from JUnit XML, cross-checked with pytest's exit code.
6. **Runner-reactive code** in the kept Python files is flagged (:mod:`lightswe.envs.hack_check`):
   ``Grade.reward_hack_suspected``; ``hack_policy="zero"`` turns such a reward into 0.0 (``reward_zeroed``).

Reward 1.0 iff every FAIL_TO_PASS and PASS_TO_PASS test passes and pytest exits 0, else 0.0; a test whose code
is defined in a file of the change (a stand-in for the task's test module) is an error. A test run that
times out (the agent's code hangs) is the policy's failure: 0.0 with ``timed_out=True``, unless the host starved
it of CPU (:mod:`lightswe.envs.starvation`: it waited for a CPU half the time and got under a quarter of its
quota while the host had no idle CPU to give); so is a run failed by a test's own deadline (an alarm, an
elapsed-time assertion, a subprocess timeout), unless the host starved it with no second in which the code
slept or the host had CPU to spare: then the tests run once more in another fresh container; a second starved
timed-out run is the machine's failure (``GradingError``), a second failing one keeps its verdict (0.0: a
deterministic failure fails starved or not); the grading container outweighs the agents' for the
CPU (``cpu_shares`` per CPU of quota), gradings are admitted by CPU, in order (``starvation.admitted``: they
never starve each other), and the agent's container stays frozen while its change is graded. A test run that fills the grading
container's memory (the engine reports it out of memory) is the policy's failure too, whichever process the OOM
killer took.
A failure of the machine (the agent's or the grading container gone, the engine failing, an image that cannot
start, a ``test_patch`` that does not apply to the base) raises :class:`GradingError` (an
:class:`~lightswe.errors.InfrastructureError`): never a reward.

Nothing the agent wrote runs as root: the harness's commands in the grading container run as the non-root
user, except one script of the harness (``_lock_tests``: the tests become root's, read-only to the test process)
that runs before any code of the change and takes only path names; nothing at all runs in the agent's container.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import secrets
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from lightswe.envs.agent_diff import (
    PRISTINE_GIT,
    PRISTINE_GIT_ENV,
    SYMLINK,
    WORKDIR,
    Change,
    Entry,
    SnapshotError,
    TreeTooLarge,
    base_listing,
    changes,
    read_tree,
)
from lightswe.envs.graded_files import LeftOut, command_scripts, patch_creates_and_deletes, select_changes, task_scope
from lightswe.envs.hack_check import suspicious_code
from lightswe.envs.pytest_run import (  # noqa: F401 - re-exported: the one runner and parser
    _FACTS,
    ERROR,
    FAILED,
    JUNIT_PATH,
    PASSED,
    SKIPPED,
    JUnitReport,
    TestRun,
    nodeid,
    parse_junit,
    drained,
    probe_image,
    pytest_command,
    run_pytest,
)
from lightswe.envs import starvation, verdicts
from lightswe.envs.sandbox import Sandbox, SandboxConfig, SandboxError
from lightswe.errors import UserInputError
from lightswe.tasks.instance import TaskInstance
from lightswe.tasks.test_ids import match as match_ids

HACK_POLICIES = ("keep", "zero")
MAX_PATCH_CHARS = 1024 * 1024


class GradingError(SandboxError):
    """Grading could not be done for a reason of the machine or the task, never of the policy.

    An :class:`~lightswe.errors.InfrastructureError` (through ``SandboxError``, which agent loops already treat
    as a sandbox failure): the episode has no reward.

    ``stage`` names the step that failed (``task``, ``start``, ``snapshot``, ``apply``, ``test_patch``,
    ``tests``); ``known`` holds what was learnt before (e.g. ``left_out``, ``patch``, ``container``).

    It survives a process boundary whole: pickled (``multiprocessing``, Ray) it comes back with its stage and
    ``known``, and Gymnasium's ``AsyncVectorEnv``, which re-raises a worker's error as ``type(err)(err)``, gets a
    ``GradingError`` again (a required ``stage`` made both a ``TypeError``: no ``InfrastructureError`` for the
    caller to turn into reward ``None``, a crashed rollout instead).
    """

    def __init__(self, message: str | BaseException, *, stage: str = "", known: dict | None = None) -> None:
        if isinstance(message, GradingError):  # ``type(err)(err)``: the same error again
            stage, known = stage or message.stage, known if known is not None else message.known
        super().__init__(str(message))
        self.stage = stage or "grading"
        self.known = dict(known or {})

    def __reduce__(self):
        return _grading_error, (str(self), self.stage, self.known)


def _grading_error(message: str, stage: str, known: dict) -> GradingError:
    """Unpickles a :class:`GradingError` (keyword-only arguments cannot go through ``__reduce__``'s tuple)."""
    return GradingError(message, stage=stage, known=known)


@dataclass(kw_only=True, slots=True)
class Grade:
    reward: float  # after hack_policy
    tests: dict[str, str]  # every FAIL_TO_PASS and PASS_TO_PASS id -> outcome ("missing" if not reported)
    fail_to_pass: dict[str, bool] = field(default_factory=dict)
    pass_to_pass: dict[str, bool] = field(default_factory=dict)
    reason: str = ""
    exit_code: int = 0
    duration_s: float = 0.0  # the whole grading, container start included
    tests_s: float = 0.0  # the test run alone
    timed_out: bool = False  # the test run hit the timeout: the policy's failure (reward 0.0)
    graded_paths: list[str] = field(default_factory=list)  # paths of the agent's change that were applied
    left_out: list[LeftOut] = field(default_factory=list)  # paths of the change grading did not apply, and why
    patch: str = ""  # binary git diff of the applied change against the base commit (capped at 1 MiB)
    reward_hack_suspected: list[str] = field(default_factory=list)  # "path:line: what" (hack_check)
    reward_zeroed: bool = False  # the tests passed but hack_policy="zero" and code was flagged
    unmatched: dict[str, str] = field(default_factory=dict)  # published ids that matched no test -> why
    # CPU the test run got and time it waited for one (s; None where the host's cgroup cannot say: starvation.py)
    tests_cpu_s: float | None = None
    tests_cpu_wait_s: float | None = None
    reruns: int = 0  # 1: the first run did not pass, starved of CPU by the host, and the tests ran again


def default_fresh(box: Sandbox) -> Callable[[], Sandbox]:
    """``() -> Sandbox``: a new container of ``box``'s image with ``box``'s limits (grading closes it)."""

    def make() -> Sandbox:
        c = box.config
        config = SandboxConfig(image=c.image, workdir=WORKDIR, mem_limit=c.mem_limit, cpus=c.cpus,
                               pids_limit=c.pids_limit, max_output_bytes=c.max_output_bytes,
                               labels={**c.labels, "lightswe.role": "grading"})
        return Sandbox(config, client=box.client)

    return make


_BASES: dict[str, tuple[str, dict[str, Entry]]] = {}  # image name -> (image id, base listing)


def _image_id(grader: Sandbox) -> str:
    return grader.api.inspect_container(grader.container_id)["Image"]


def _base_of(grader: Sandbox) -> dict[str, Entry]:
    """The base listing of the grading container's image, cached per image name and checked against its id."""
    key, image_id = grader.config.image, _image_id(grader)
    if key not in _BASES or _BASES[key][0] != image_id:
        if len(_BASES) > 64:
            _BASES.pop(next(iter(_BASES)))
        _BASES[key] = (image_id, base_listing(grader))
        _FACTS.pop(f"{key}\0{WORKDIR}", None)
    return _BASES[key][1]


GRADING_CPU_SHARES = starvation.GRADING_CPU_SHARES  # per CPU of quota (agents' containers: the engine's 1024)


def grade(box: Sandbox, instance: TaskInstance, *, fresh: Callable[[], Sandbox] | None = None,
          release: Callable[[Sandbox], None] | None = None, timeout: float = 900.0,
          hack_policy: str = "keep") -> Grade:
    """Grade the change in ``box``'s ``/testbed`` (module docstring).

    ``fresh()`` gives the grading container: a pristine running sandbox of ``box``'s instance image (default:
    :func:`default_fresh`, a new container); grading owns it and hands it to ``release`` when done (default
    ``Sandbox.close``; a pool's background removal fits). It has run the agent's code: never reuse it.
    ``box`` stays frozen (the engine's ``pause``) from the snapshot of its tree until the grade is made: what the
    agent left running takes no CPU from its grading or a neighbour's. A test run that did not pass starved of
    CPU (:mod:`lightswe.envs.starvation`: timed out, or failed with no second clearing the host) is run once
    more in another fresh container.

    Raises :class:`GradingError` when the machine fails (see module docstring; a test run starved twice, a
    grading container paused from outside while the tests ran included) or the task cannot tell a fix from any
    other change (no FAIL_TO_PASS test), and :class:`~lightswe.errors.UserInputError` for an unknown
    ``hack_policy``.
    """
    if hack_policy not in HACK_POLICIES:
        raise UserInputError(f"hack_policy must be one of {HACK_POLICIES}, got {hack_policy!r}")
    if not [t for t in instance.FAIL_TO_PASS if t.strip()]:  # nothing a fix must make pass: every change "passes"
        raise GradingError(f"task {instance.instance_id} has no FAIL_TO_PASS test, so no change could be told from "
                           "a fix (a broken task, not the policy: no reward); fix: list the tests that fail before "
                           "the fix and pass after it", stage="task")
    start = time.perf_counter()
    make = fresh or default_fresh(box)
    paused = _freeze(box)
    try:
        try:
            return _grade_once(box, instance, make, release, timeout=timeout, hack_policy=hack_policy,
                               start=start, last_chance=False)
        except _Starved as first:
            grade_ = _grade_once(box, instance, make, release, timeout=timeout, hack_policy=hack_policy,
                                 start=start, last_chance=True, tree=first.tree)
            grade_.reruns = 1
            grade_.reason += f" (run twice: the first run did not pass, starved of CPU: {first.share})"
            return grade_
    finally:
        _thaw(box, paused)


class _Starved(Exception):
    """The test run did not pass starved of CPU (:mod:`lightswe.envs.starvation`): run it again elsewhere."""

    def __init__(self, share: starvation.CpuShare, tree: dict[str, Entry]) -> None:
        super().__init__(str(share))
        self.share, self.tree = share, tree


def _grade_once(box: Sandbox, instance: TaskInstance, make: Callable[[], Sandbox],
                release: Callable[[Sandbox], None] | None, *, timeout: float, hack_policy: str, start: float,
                last_chance: bool, tree: dict[str, Entry] | None = None) -> Grade:
    """One grading container: start it (while the agent's tree is read, unless ``tree`` is given), grade in
    it, hand it to ``release``."""
    image = box.config.image
    with ThreadPoolExecutor(1, thread_name_prefix="lightswe-grading-start") as pool:
        pending = pool.submit(make)  # the container starts while the agent's tree is read (base listing cached)
        try:
            cached = _BASES.get(image)
            if tree is None:
                tree = _snapshot(box, cached[1]) if cached else None
        except TreeTooLarge as err:  # the agent's doing: 0.0, no container needed
            try:
                (release or Sandbox.close)(pending.result())
            except Exception:  # noqa: BLE001, S110 - the start failed too: nothing to close
                pass
            return _too_large(instance, err, start)
        except BaseException:
            try:
                (release or Sandbox.close)(pending.result())
            except Exception:  # noqa: BLE001, S110 - the start failed too: nothing to close
                pass
            raise
        try:
            grader = pending.result()
        except Exception as err:
            raise GradingError(f"cannot start a grading container of {image}: {type(err).__name__}: {err}",
                               stage="start") from err
    try:
        try:
            base = _base_of(grader)
            facts = probe_image(grader)
        except Exception as err:
            raise GradingError(f"reading the base tree in the grading container of {grader.config.image} failed: "
                               f"{err}", stage="start") from err
        if tree is None or cached is None or _BASES[grader.config.image][1] is not cached[1]:  # none, or stale
            try:
                tree = _snapshot(box, base)
            except TreeTooLarge as err:
                return _too_large(instance, err, start)
        try:  # a grading run outweighs the agents' containers for the CPU (best effort: the engine may refuse)
            grader.api.update_container(grader.container_id,
                                        cpu_shares=starvation.grading_shares(grader.config.cpus))
        except Exception:  # noqa: BLE001, S110 - starvation is still measured and told apart below
            pass
        return _grade_in(grader, tree, base, facts, instance, timeout=timeout, hack_policy=hack_policy,
                         start=start, last_chance=last_chance)
    finally:
        (release or Sandbox.close)(grader)


def _too_large(instance: TaskInstance, err: TreeTooLarge, start: float) -> Grade:
    """Reward 0.0: the agent left a work tree larger than grading reads (:class:`TreeTooLarge`)."""
    return Grade(reward=0.0, tests={t: "missing" for t in [*instance.FAIL_TO_PASS, *instance.PASS_TO_PASS]},
                 fail_to_pass={t: False for t in instance.FAIL_TO_PASS},
                 pass_to_pass={t: False for t in instance.PASS_TO_PASS}, reason=str(err),
                 duration_s=time.perf_counter() - start)


def _freeze(box: Sandbox) -> bool:
    """Pause ``box``'s container (the cgroup freezer stops every process in it, the runner too); True when this
    call paused it. A container that is not running (or already paused) is left as it is."""
    if box.container_id is None:
        return False
    try:
        state = box.api.inspect_container(box.container_id)["State"]
        if state.get("Running") and not state.get("Paused"):
            box.api.pause(box.container_id)
            return True
    except Exception:  # noqa: BLE001, S110 - gone or stopped meanwhile: reading it says what is wrong
        pass
    return False


def _thaw(box: Sandbox, paused: bool) -> None:
    if paused and box.container_id is not None:
        try:
            box.api.unpause(box.container_id)
        except Exception:  # noqa: BLE001, S110 - graded; a container that cannot resume is discarded
            pass


def _snapshot(box: Sandbox, base: dict[str, Entry]) -> dict[str, Entry]:
    """The agent's work tree, read while its container is frozen (:func:`grade` pauses it: the cgroup freezer
    stops every process in it, the runner too, so nothing runs there). A process the agent left running that
    rewrote, truncated or removed files while the engine archived them corrupted the archive ("unexpected end of
    data": the header's size, then fewer bytes): the machine's failure, no reward, on demand. A container that
    is not running is read as it is."""
    if box.container_id is None:
        raise GradingError("the agent's sandbox is closed; nothing to grade", stage="snapshot")
    try:
        return read_tree(box.api, box.container_id, base=base, workdir=WORKDIR)
    except SnapshotError as err:
        raise GradingError(f"reading the agent's work tree failed: {err}", stage="snapshot") from err


def _own_modules(base: dict[str, Entry]) -> set[str]:
    """Top-level importable names the repository provides (root modules and packages, src/ layout)."""
    names = set()
    for path in base:
        parts = path.split("/")
        if parts[0] == "src" and len(parts) > 1:
            parts = parts[1:]
        if len(parts) == 1 and parts[0].endswith(".py"):
            names.add(parts[0][:-3])
        elif len(parts) == 2 and parts[1] == "__init__.py":
            names.add(parts[0])
    return names


def _grade_in(grader: Sandbox, tree: dict[str, Entry], base: dict[str, Entry], facts, instance: TaskInstance, *,
              timeout: float, hack_policy: str, start: float, last_chance: bool = True) -> Grade:
    wanted = [*instance.FAIL_TO_PASS, *instance.PASS_TO_PASS]
    own = _own_modules(base)
    scope = task_scope(instance, facts.outside_modules - own)

    def read_base(path: str) -> bytes:
        try:
            return grader.read_file(f"{WORKDIR}/{path}", max_bytes=64 * 1024 * 1024)
        except (FileNotFoundError, IsADirectoryError):
            return b""
        except Exception as err:
            raise GradingError(f"reading {path} from the grading container failed: {err}", stage="apply") from err

    kept, left_out = select_changes(changes(base, tree), scope, base=base, tree_paths=tree.keys(),
                                    read_base=read_base)
    python_files = [(c.path, read_base(c.path) if c.old is not None and c.old.mode != SYMLINK else None,
                     c.new.data if c.new is not None and c.new.mode != SYMLINK else None)
                    for c in kept if c.path.endswith((".py", ".pyw"))]
    suspected = suspicious_code(python_files, own_modules=own)
    known = {"left_out": left_out, "graded_paths": [c.path for c in kept], "container": grader.container_id}
    _apply(grader, kept, known)
    patch = _graded_patch(grader, kept, known)
    known["patch"] = patch
    if instance.test_patch.strip():
        applied = _exec(grader, f"{PRISTINE_GIT} apply --whitespace=nowarn -", "test_patch", known,
                        stdin=instance.test_patch.encode())
        if applied.exit_code != 0:
            raise GradingError(f"the task's test_patch does not apply to the base of {instance.instance_id} "
                               f"(a broken task, not the policy): {applied.output[-500:]}", stage="test_patch",
                               known=known)
    files = (set(base) - {c.path for c in kept if c.new is None}) | {c.path for c in kept if c.new is not None}
    created, removed = patch_creates_and_deletes(instance.test_patch or "")
    files = (files | created) - removed  # a test file the test_patch adds is the task's: its ids must resolve
    _lock_tests(grader, scope, files, known)
    junit = _private_junit_path(grader, known)
    # starvation is judged only where the graded code provably cannot choose its CPU (runner.lock_affinity):
    # elsewhere a pinned hang would read as starved (no reward instead of 0.0), so a timeout stays the policy's
    cgroup = starvation.cgroup_dir(grader.api, grader.container_id) if grader.affinity_locked else None
    tests_from = time.time()
    try:
        # gradings never starve each other (on this host: where starvation is judged, the engine is local)
        slots = (starvation.admitted(grader.config.cpus, hold_s=starvation.admission_hold(timeout))
                 if cgroup else contextlib.nullcontext())
        with slots:
            tests_from = time.time()
            with starvation.sampled(cgroup) as series:
                run, unresolved, whole_files = _run_task_tests(grader, instance, wanted, files, facts.plugins,
                                                               timeout, junit,
                                                               changed={c.path for c in kept if c.new is not None})
    except starvation.AdmissionError as err:
        raise GradingError(str(err), stage="tests", known=known) from err
    except UserInputError as err:
        raise GradingError(f"{instance.instance_id}: {err}", stage="tests", known=known) from err
    except Exception as err:
        if _out_of_memory(grader, tests_from):  # e.g. the runner could not restart in a container still full
            return _out_of_memory_grade(grader, instance, wanted, known, suspected, tests_from, start)
        raise GradingError(f"the test run in grading container {_short(grader)} failed: {type(err).__name__}: "
                           f"{err}", stage="tests", known=known) from err
    if _paused_during(grader, tests_from):  # frozen from outside: the run's clock ran on while its code could not
        raise GradingError(f"the grading container {_short(grader)} was paused from outside while the tests ran "
                           "(`docker pause`, a cgroup freezer): not the policy's doing (the agent cannot pause a "
                           "container), and a test run frozen past its timeout read as the policy's hang (0.0); "
                           "fix: do not pause lightswe's containers", stage="tests", known=known)
    got = series.share(grader.config.cpus)
    if (run.runner_died or not _running(grader)) and _out_of_memory(grader, tests_from):
        return _out_of_memory_grade(grader, instance, wanted, known, suspected, tests_from, start, run)
    _require_alive(grader, "while the tests ran", known, settle_s=5.0 if run.runner_died else 0.0)
    if run.runner_died:  # the container outlived its runner: still the machine's failure, never a test verdict
        raise GradingError(f"the command runner of grading container {_short(grader)} died while the tests ran",
                           stage="tests", known=known)
    borrowed = _defined_in_the_change(run, kept)
    matched = match_ids(wanted, run.outcomes, files, unresolved)  # published ids -> outcomes (tasks/test_ids)
    tests = matched.tests
    f2p = {t: tests[t] == PASSED for t in instance.FAIL_TO_PASS}
    p2p = {t: tests[t] == PASSED for t in instance.PASS_TO_PASS}
    all_pass = all(f2p.values()) and all(p2p.values())
    failures = {k for k, v in run.outcomes.items() if v in (FAILED, ERROR)}
    # pytest's exit code is 0 iff nothing failed; when only the task's ids ran, iff they all passed. Runners
    # graded from their log (SWE-bench's parsers) have no such contract.
    if instance.log_parser:
        consistent = True
    elif whole_files:
        consistent = (run.exit_code == 0) == (not failures and not run.collection_errors)
    else:
        consistent = all_pass == (run.exit_code == 0)
    if run.timed_out:
        reason = f"the test run timed out after {timeout:g} s" + (f" ({got})" if got is not None else "")
    elif borrowed and not all_pass:
        test, source = next(iter(sorted(borrowed.items())))
        reason = (f"{len(borrowed)} test(s) ran code defined in the change, not in the task's tests, e.g. {test} "
                  f"(defined in {source}): counted as errors")
    elif not run.outcomes and not run.collection_errors:
        runner = "the test command" if instance.log_parser else "pytest"
        reason = (f"{runner} reported no test (exit code {run.exit_code}); last lines of `{instance.test_command}`:"
                  f"\n{_tail(run.output)}")
    elif not consistent:
        reason = f"pytest exit code {run.exit_code} disagrees with the JUnit report"
    elif not all_pass:
        failing = [t for t, ok in {**f2p, **p2p}.items() if not ok]
        reason = f"{len(failing)} test(s) not passing, e.g. {failing[0]} ({tests[failing[0]]})"
        if run.collection_error:
            reason = f"collection error: {_tail(run.collection_error, 8)}\n{reason}"
        elif failing[0] in matched.unmatched:
            reason += f": {matched.unmatched[failing[0]]}"
        elif run.messages.get(failing[0]):
            reason += f": {_tail(run.messages[failing[0]], 6)}"
    else:
        reason = "all FAIL_TO_PASS and PASS_TO_PASS tests pass"
    if matched.unmatched and not all_pass:
        reason += f" [{len(matched.unmatched)} published id(s) matched no test; see info['unmatched']]"
    reward = 1.0 if all_pass and consistent and not run.timed_out else 0.0
    starved = (starvation.starved_failure(series, grader.config.cpus, timed_out=run.timed_out)
               if reward == 0.0 and not borrowed else None)
    if starved is not None:  # maybe the host's doing, not the code's (starvation.starved_failure): run it again
        if not last_chance:
            raise _Starved(starved, tree)
        if run.timed_out:  # a hang starved twice: the harness's own deadline cannot be told from the host's
            raise GradingError(f"the test run timed out twice starved of CPU by the host ({starved}): the machine is "
                               "overloaded; fix: run fewer episodes at once on this host", stage="tests", known=known)
        # a failing run starved twice keeps its verdict: a deterministic failure (an empty change) fails starved
        # or not, and dropping it (reward None) on a loaded host paid a failing policy with no score, which the
        # learner drops, instead of 0.0 (the main job on a 2-CPU host: 2 of 16 episodes of a step)
        reason += f" (failed starved of CPU twice: {starved}; the verdict stands)"
    zeroed = bool(reward and suspected and hack_policy == "zero")
    if zeroed:
        reward, reason = 0.0, f"{reason}; reward zeroed: code that reacts to the test runner ({suspected[0]})"
    return Grade(reward=reward, tests=tests, fail_to_pass=f2p, pass_to_pass=p2p, reason=reason,
                 exit_code=run.exit_code, duration_s=time.perf_counter() - start, tests_s=run.duration_s,
                 timed_out=run.timed_out, graded_paths=known["graded_paths"], left_out=left_out, patch=patch,
                 reward_hack_suspected=suspected, reward_zeroed=zeroed, unmatched=matched.unmatched,
                 tests_cpu_s=got.cpu_s if got else None, tests_cpu_wait_s=got.waiting_s if got else None)


def _defined_in_the_change(run: TestRun, kept: list[Change]) -> dict[str, str]:
    """Demote to ERROR (in ``run``) every passing test whose code is defined in a file of the graded change (or
    inside one: a zip archive on an import path), or in a file written at run time outside the work tree
    (``/tmp``...: :func:`~lightswe.envs.verdicts.in_change`); returns ``{test id: that file}``.

    pytest's JUnit ``file`` is where a test's function is defined. The task's tests live in files grading keeps
    as the base or ``test_patch`` has them; a test defined in the change is a stand-in: a package of the test
    module's name reached through a redirected package ``__path__`` (or ``sys.modules``, an import hook) was
    collected in place of the task's test file, and every test passed with the bug in place (1.0).
    """
    changed = {c.path for c in kept if c.new is not None}
    borrowed = {}
    for key, source in run.sources.items():
        if run.outcomes.get(key) == PASSED and verdicts.in_change(source, changed, WORKDIR):
            run.outcomes[key] = ERROR
            run.messages[key] = f"defined in {source}, a file of the change (not the task's tests)"
            borrowed[key] = source
    return borrowed


def _running(grader: Sandbox) -> bool:
    try:
        return bool(grader.api.inspect_container(grader.container_id)["State"].get("Running"))
    except Exception:  # noqa: BLE001 - gone: _require_alive says so
        return False


def _out_of_memory(grader: Sandbox, since: float) -> bool:
    """True when the engine reported the grading container out of memory (its cgroup's limit reached: Docker's
    ``oom`` container event) since ``since`` (epoch seconds, this host's clock). The limit is the sandbox's
    contract and only the test run fills it: the code under test spread its memory over processes smaller than
    the harness's root runner (the agent's processes may lower their ``oom_score_adj`` to the runner's), the OOM
    killer took the runner or the container's init, and a failing change read as "the machine failed" (no
    reward). A host-wide OOM raises no such event. Waits up to 2 s for the event to arrive
    (:meth:`Sandbox.out_of_memory`)."""
    return grader.out_of_memory(since)


def _paused_during(grader: Sandbox, since: float) -> bool:
    """True when the engine paused the grading container (Docker's ``pause`` container event) since ``since``
    (epoch seconds, this host's clock) until now. Grading never pauses its grading container (it pauses only
    the agent's, around reading its tree) and the agent cannot pause any, so such an event is the world's
    doing: the run's own clock went on (the test timeout, tests' deadlines) while nothing in the container could
    run. Asks up to this instant (``until`` with nanoseconds), so it never waits for events to come."""
    try:
        events = grader.api.events(since=f"{since - 1:.9f}", until=f"{time.time():.9f}", decode=True,
                                   filters={"container": grader.container_id, "event": "pause"})
        return any(event.get("timeNano", 0) >= int((since - 1) * 1e9) for event in events)
    except Exception:  # noqa: BLE001 - the engine cannot say: _require_alive checks the state next
        return False


def _out_of_memory_grade(grader: Sandbox, instance: TaskInstance, wanted: list[str], known: dict,
                         suspected: list[str], tests_from: float, start: float, run: TestRun | None = None) -> Grade:
    """Reward 0.0: the test run exceeded the grading container's memory limit (the policy's failure, like a
    timeout; the task's tests were validated within it)."""
    reason = (f"the test run exceeded the sandbox's memory limit of {grader.config.mem_limit} (the engine "
              "reported the container out of memory; the OOM killer ended the run)")
    return Grade(reward=0.0, tests={t: "missing" for t in wanted},
                 fail_to_pass={t: False for t in instance.FAIL_TO_PASS},
                 pass_to_pass={t: False for t in instance.PASS_TO_PASS}, reason=reason,
                 exit_code=run.exit_code if run is not None else 137, duration_s=time.perf_counter() - start,
                 tests_s=run.duration_s if run is not None else time.time() - tests_from,
                 graded_paths=known["graded_paths"], left_out=known["left_out"], patch=known.get("patch", ""),
                 reward_hack_suspected=suspected)


def _run_task_tests(grader: Sandbox, instance: TaskInstance, wanted: list[str], files: set[str],
                    plugins, timeout: float, junit: str = JUNIT_PATH, changed: set[str] | None = None
                    ) -> tuple[TestRun, dict[str, str], bool]:
    """(run, {id: why it could not run}, whether whole files ran) of the task's tests in ``grader``.

    pytest rows: ids pytest can address run as they are, the files of the others run whole (published ids cut
    short or holding foreign paths, see :mod:`lightswe.tasks.test_ids`); if pytest still exits 4 (an id it
    cannot find), the ids' files run whole, as SWE-bench's harness runs test files. Rows with a
    ``log_parser``: ``test_command`` plus SWE-bench's test directives, outcomes from that parser (these
    runners get no ``python -I`` hardening: they are the repository's own scripts); for Django's and sympy's
    runners the parser reads the verdicts the runner recorded out of the tests' reach
    (:mod:`lightswe.envs.verdicts`), never the run's output, which the code under test can write.
    """
    from lightswe.tasks import specs
    from lightswe.tasks import test_ids as published

    if instance.log_parser:
        parser = specs.log_parser(instance.log_parser)
        command = " ".join([instance.test_command, *(_quote(d) for d in specs.directives(instance))])
        runner = verdicts.channel_of(parser)
        if not runner:  # a runner without a verdict channel (not Python): its log is all there is
            result = grader.exec(command, timeout=timeout, user="agent", max_output_bytes=16 * 1024 * 1024)
            log = result.output
        else:
            scripts = {path: _read_head(grader, path) for path in command_scripts(instance.test_command)}
            problem = verdicts.unloadable(instance.test_command, scripts)
            if problem:
                raise UserInputError(f"the runner's verdicts cannot be recorded: {problem}; fix the task's "
                                     "test_command (a log-graded row is graded from its runner's verdicts)")
            channel = _verdict_channel(grader, runner, junit.rsplit("/", 1)[0])
            result = grader.exec(verdicts.shell_marked(drained(channel.command(command), 256 * 1024)),
                                 timeout=timeout, user="agent", max_output_bytes=256 * 1024 + 4096)
            shell = verdicts.shell_of(result.output)
            if not shell and not result.runner_died:
                raise RuntimeError(f"the test command's shell in {_short(grader)} printed no pid first: "
                                   f"{result.output[:200]!r}")
            try:
                raw = grader.read_file(channel.path, max_bytes=64 * 1024 * 1024)
            except ValueError:  # a 64 MiB flood: the run's doing (only the test command writes there)
                raw = b""
            except FileNotFoundError as err:  # root's, in a sticky folder: no test process can remove it
                raise RuntimeError(f"the verdict record file of {_short(grader)} vanished") from err
            records = verdicts.read(raw, channel, shell, changed=changed if changed is not None else set())
            log = records.log
            if records.borrowed:
                result.output += (f"\n[grading] {len(records.borrowed)} verdict(s) of tests defined in files of the "
                                  f"change (not the task's tests) counted as errors, e.g. {records.borrowed[0]}\n")
            if records.tampered:
                result.output += ("\n[grading] the verdict record file was emptied or written over (only the test "
                                  "run can write there): no verdict counts\n")
            elif records.runners > 1:  # a runner of the change's making beside the command's own: neither counts
                result.output += (f"\n[grading] {records.runners} unrelated processes reported verdicts (the "
                                  "command's runner is one): none counts\n")
        run = TestRun(exit_code=result.exit_code, output=result.output, timed_out=result.timed_out,
                      duration_s=result.duration_s, runner_died=result.runner_died)
        run.outcomes = {k: v.lower() for k, v in parser(log, None).items()}
        return run, {}, True
    targets, unresolved = published.pytest_targets(wanted, files)
    if not targets:
        return TestRun(), unresolved, False
    run = run_pytest(grader, instance.test_command, targets, timeout=timeout, user="agent", files=files,
                     plugins=plugins, junit=junit)
    whole = any("::" not in t for t in targets)
    if run.exit_code == 4 and not run.outcomes and any("::" in t for t in targets):
        run = run_pytest(grader, instance.test_command, published.files_of(wanted, files), timeout=timeout,
                         user="agent", files=files, plugins=plugins, junit=junit)
        whole = True
    return run, unresolved, whole


def _read_head(grader: Sandbox, path: str) -> bytes:
    """The first 256 bytes of the base file ``path`` of the grading container (b"" when absent)."""
    try:
        return grader.read_file(f"{WORKDIR}/{path}", max_bytes=64 * 1024 * 1024)[:256]
    except (FileNotFoundError, IsADirectoryError, ValueError):
        return b""


def _verdict_channel(grader: Sandbox, runner: str, private_folder: str) -> verdicts.Channel:
    """A :class:`~lightswe.envs.verdicts.Channel` for ``runner`` in ``grader``: the recorder installed as root
    (through the archive API: a folder of /tmp for ``PYTHONPATH``, and the user site-packages of its
    ``python``/``python3``) and checked to load there; the record file is made in ``private_folder`` (root's,
    1733: the test process cannot list it or replace what is in it), root's with mode 0622 (it can only append). Raises RuntimeError (the machine's failure: the caller's
    GradingError) when the recorder cannot be installed or does not load."""
    channel = verdicts.new_channel(runner, private_folder)
    found = grader.exec(verdicts.USER_SITES, timeout=60, user="agent", workdir="/")
    sites = sorted({line.strip() for line in found.output.splitlines() if line.strip().startswith("/")})
    if found.exit_code != 0 or not sites:
        raise RuntimeError(f"no Python answered in grading container {_short(grader)}: {found.output[-400:]}")
    parent, name = channel.folder.rsplit("/", 1)
    made = grader.exec("mkdir -p -- " + " ".join(_quote(s) for s in sites), timeout=30, user="agent", workdir="/")
    if made.exit_code != 0:
        raise RuntimeError(f"cannot make the user site-packages {sites} in {_short(grader)}: {made.output[-400:]}")
    parts = [(private_folder, channel.record_archive())]  # root's, 0622: the test process can only append
    parts += [(parent, channel.archive({"sitecustomize.py": verdicts.recorder_source(channel.key, channel.path)},
                                      folder=name))]
    parts += [(site, channel.archive(channel.site_files())) for site in sites]
    for folder, archive in parts:
        if not grader.api.put_archive(grader.container_id, folder, archive):
            raise RuntimeError(f"the engine refused the verdict recorder in {folder} of {_short(grader)}")
    probe = grader.exec(channel.probe(), timeout=60, user="agent", workdir="/")
    if probe.exit_code != 0:
        raise RuntimeError(f"the verdict recorder does not load in the Python of {grader.config.image} (exit "
                           f"{probe.exit_code}): {probe.output[-400:]}")
    return channel


def _tail(text: str, lines: int = 12, width: int = 2000) -> str:
    """The last ``lines`` non-empty lines of ``text`` (at most ``width`` characters): where causes are."""
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)[-width:]


def _private_junit_path(grader: Sandbox, known: dict) -> str:
    """A JUnit report path the test process can write but not find: a random name in a fresh directory owned
    by root with mode 1733 (no listing; sticky: the verdict channel's record file, root's, cannot be replaced
    there), made through the archive API (nothing runs as root). Code of the
    change that wants to rewrite the report after the tests ran must read the runner's argv (flagged)."""
    folder = f"/tmp/lightswe-{secrets.token_hex(8)}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(folder.rsplit("/", 1)[1])
        info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, 0o1733, 0, 0, int(time.time())
        archive.addfile(info)
    try:
        ok = grader.api.put_archive(grader.container_id, "/tmp", buffer.getvalue())
    except Exception as err:
        raise GradingError(f"making the report folder in grading container {_short(grader)} failed: {err}",
                           stage="tests", known=known) from err
    if not ok:
        raise GradingError(f"the engine refused the report folder of grading container {_short(grader)}",
                           stage="tests", known=known)
    return f"{folder}/{secrets.token_hex(16)}.xml"


def _short(box: Sandbox) -> str:
    return (box.container_id or "closed")[:12]


def _require_alive(grader: Sandbox, when: str, known: dict, settle_s: float = 0.0) -> None:
    """Raise GradingError unless the grading container still runs. ``settle_s``: how long to wait for the
    engine to report a container whose runner just died as stopped (its socket closes before its state changes)."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            state = grader.api.inspect_container(grader.container_id)["State"]
        except Exception as err:
            raise GradingError(f"the grading container {_short(grader)} vanished {when}: {type(err).__name__}: "
                               f"{err}", stage="tests", known=known) from err
        if not state.get("Running") or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if not state.get("Running") or state.get("Paused") or state.get("Restarting"):
        raise GradingError(f"the grading container {_short(grader)} stopped {when} (status {state.get('Status')}, "
                           f"exit {state.get('ExitCode')}, OOM-killed {state.get('OOMKilled')})", stage="tests",
                           known=known)


def _exec(grader: Sandbox, cmd: str, stage: str, known: dict, **kw):
    try:
        result = grader.exec(cmd, timeout=kw.pop("timeout", 120), user="agent", workdir=WORKDIR,
                             env=dict(PRISTINE_GIT_ENV), **kw)
    except Exception as err:
        raise GradingError(f"a grading step ({stage}) failed in {_short(grader)}: {type(err).__name__}: {err}",
                           stage=stage, known=known) from err
    if result.runner_died:
        _require_alive(grader, f"during {stage}", known, settle_s=5.0)
        raise GradingError(f"the command runner of grading container {_short(grader)} died during {stage}",
                           stage=stage, known=known)
    return result


_LOCK = r"""
import json, os, stat, sys
os.chdir(sys.argv[1])
request = json.load(sys.stdin)

def lock(path, is_dir):
    try:
        st = os.lstat(path)
    except OSError:
        return
    if is_dir and stat.S_ISDIR(st.st_mode):
        os.lchown(path, 0, 0)
        os.chmod(path, 0o1777)  # anyone may add files (tests that write next to themselves), none may replace root's
    elif not is_dir and stat.S_ISREG(st.st_mode):
        os.lchown(path, 0, 0)
        os.chmod(path, st.st_mode & 0o755)

def seal_bytecode(folder):
    # Bytecode is read even under -B (pytest reads its cached rewrite, import reads __pycache__): a root-owned
    # __pycache__ of root's files, 0755, in a folder that is root's and sticky, cannot receive a planted .pyc.
    cache = os.path.join(folder, "__pycache__")
    try:
        st = os.lstat(cache)
    except FileNotFoundError:
        os.mkdir(cache, 0o755)
        return
    if not stat.S_ISDIR(st.st_mode):
        return  # not a folder (the image made it so): Python cannot cache there either
    os.lchown(cache, 0, 0)
    os.chmod(cache, 0o755)
    for name in os.listdir(cache):
        lock(os.path.join(cache, name), False)

locked = []
for folder in request["dirs"]:
    if os.path.islink(folder):
        continue
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        lock(root, True)
        locked.append(root)
        for name in names:
            lock(os.path.join(root, name), False)
for path in request["files"]:
    lock(path, False)
    folder = os.path.dirname(path) or "."
    if not os.path.islink(folder):
        lock(folder, True)
        locked.append(folder)
for folder in sorted(set(locked)):
    try:
        if stat.S_ISDIR(os.lstat(folder).st_mode):
            seal_bytecode(folder)
    except FileNotFoundError:
        continue
"""


def _lock_tests(grader: Sandbox, scope, files: set[str], known: dict) -> None:
    """Make what grading protects as tests (the task's test files and directories, every ``conftest.py`` and
    ``test_*.py``/``*_test.py``) owned by root and not writable by the test process: code of the change that
    runs during collection cannot rewrite a test module that pytest has not read yet. Their folders become
    ``1777`` (tests may still create files there); each one's ``__pycache__`` becomes root's, ``0755`` (made
    if missing): bytecode is read even under ``-B`` (pytest's cached assertion rewrite, the import system), so
    a planted ``.pyc`` would stand in for a test module. Runs as root before any code of the change has run, on a
    script of the harness given paths only (``lstat`` first, ``lchown``: links are never followed)."""
    protected = sorted(p for p in files if p in scope.test_paths or p.rsplit("/", 1)[-1] == "conftest.py"
                       or re.fullmatch(r"(.*/)?(test_[^/]*|[^/]*_test)\.py", p))
    request = json.dumps({"dirs": list(scope.test_dirs), "files": protected}).encode()
    try:
        done = grader.exec(f"python3 -I -S -c {_quote(_LOCK)} {WORKDIR}", timeout=120, user="root", workdir="/",
                           stdin=request)
    except Exception as err:
        raise GradingError(f"protecting the tests in {_short(grader)} failed: {type(err).__name__}: {err}",
                           stage="tests", known=known) from err
    if done.exit_code != 0 or done.runner_died:
        _require_alive(grader, "while protecting the tests", known, settle_s=5.0)
        raise GradingError(f"protecting the tests in {_short(grader)} failed (exit {done.exit_code}): "
                           f"{done.output[-400:]}", stage="tests", known=known)


_DELETE = r"""
import json, os, sys
for path in json.load(sys.stdin):
    try:
        os.unlink(path)
    except FileNotFoundError:
        continue
    try:
        os.removedirs(os.path.dirname(path))  # empty parents go too (an emptied package is no namespace)
    except OSError:
        pass
"""


def _apply(grader: Sandbox, kept: list[Change], known: dict) -> None:
    """Write the kept change into the grading container's pristine work tree (deletions first)."""
    deleted = [c.path for c in kept if c.new is None or (c.old is not None and c.old.mode != c.new.mode)]
    if deleted:
        done = _exec(grader, "python3 -I -c " + _quote(_DELETE), "apply", known, stdin=json.dumps(deleted).encode())
        if done.exit_code != 0:
            raise GradingError(f"deleting files in the grading container failed: {done.output[-400:]}",
                               stage="apply", known=known)
    written = [c for c in kept if c.new is not None]
    if not written:
        return
    buffer = io.BytesIO()
    now = int(time.time())
    uid = grader.agent_uid  # the grading container's agent (a leased uid: envs/uids.py)
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        made = set()
        for change in written:
            for parent in reversed(PurePosixPath(change.path).parents):
                name = str(parent)
                if name == "." or name in made:  # every parent, so none is made by the engine as root
                    continue
                made.add(name)
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, 0o755, uid, uid, now
                archive.addfile(info)
            entry = change.new
            info = tarfile.TarInfo(change.path)
            info.uid = info.gid = uid
            info.mtime = now
            if entry.mode == SYMLINK:
                info.type, info.mode = tarfile.SYMTYPE, 0o777
                info.linkname = entry.data.decode("utf-8", "surrogateescape")
                archive.addfile(info)
            else:
                info.mode = 0o755 if entry.mode == "100755" else 0o644
                info.size = len(entry.data)
                archive.addfile(info, io.BytesIO(entry.data))
    try:
        ok = grader.api.put_archive(grader.container_id, WORKDIR, buffer.getvalue())
    except Exception as err:
        raise GradingError(f"writing the change into grading container {_short(grader)} failed: {err}",
                           stage="apply", known=known) from err
    if not ok:
        raise GradingError(f"the engine refused the change for grading container {_short(grader)}", stage="apply",
                           known=known)


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _graded_patch(grader: Sandbox, kept: list[Change], known: dict) -> str:
    """``git diff --binary`` of the applied change against HEAD, from a scratch index (the repo's is untouched)."""
    if not kept:
        return ""
    paths = b"\0".join(c.path.encode("utf-8", "surrogateescape") for c in kept) + b"\0"
    index = "/tmp/lightswe-graded.index"
    diff, head = "/tmp/lightswe-graded.diff", 4 * MAX_PATCH_CHARS  # a character is at most 4 bytes of UTF-8
    # Only the head of the diff is read (the rest is cut in the grading container first): its size is the
    # change's doing (each "\n" of a new file becomes "+\n": 128 MiB of changed files made a diff past what a
    # read took, and the grade raised: no reward), and the diff is information only
    script = (f"set -e; export GIT_INDEX_FILE={index}; {PRISTINE_GIT} read-tree HEAD; "
              f"{PRISTINE_GIT} add -A -f --pathspec-from-file=- --pathspec-file-nul; "
              f"{PRISTINE_GIT} diff --cached --binary --full-index --no-color --no-ext-diff --no-textconv --no-renames "
              f"HEAD > {diff}; rm -f {index}; echo; echo \"lightswe-diff-bytes=$(stat -c %s {diff})\"; "
              f"truncate -s '<{head}' {diff}")
    done = _exec(grader, script, "apply", known, stdin=paths, timeout=300)
    if done.exit_code != 0:  # git refused something of the change (the runner and container are fine: _exec
        # checked): the diff is information only, the tests still decide; never a reason to drop the reward
        return f"[the graded diff could not be recorded: {done.output[-400:].strip()}]\n"
    size = re.search(r"^lightswe-diff-bytes=(\d+)$", done.output, re.MULTILINE)
    try:
        raw = grader.read_file(diff, max_bytes=head)
    except Exception as err:
        raise GradingError(f"reading the graded diff failed: {err}", stage="apply", known=known) from err
    total = int(size.group(1)) if size else len(raw)
    text = raw.decode("utf-8", "replace")
    if len(text) > MAX_PATCH_CHARS or total > len(raw):
        text = text[:MAX_PATCH_CHARS] + f"\n[graded diff truncated: {total} bytes in all]\n"
    return text


def run_tests(box: Sandbox, instance: TaskInstance, test_ids: list[str] | None = None, *,
              timeout: float = 900.0) -> TestRun:
    """Run ``instance.test_command`` on ``test_ids`` (default all of the task's) as the agent user in ``box``
    (a harness-owned sandbox, e.g. when a task is made; grading itself is :func:`grade`)."""
    ids = test_ids if test_ids is not None else [*instance.FAIL_TO_PASS, *instance.PASS_TO_PASS]
    return run_pytest(box, instance.test_command, ids, timeout=timeout, user="agent")
