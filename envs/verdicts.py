"""A verdict channel for runners graded from their log: what the test run printed is never read as a verdict.

Rows whose test command is not a plain pytest run (Django's ``tests/runtests.py``, sympy's ``bin/test``, sphinx's
``tox --current-env ... -- `` around pytest) are graded by SWE-bench's log parser of the repository
(``swebench.harness.log_parsers``), which reads lines such as ``test_x (app.tests.T) ... ok``, ``test_x ok`` or
``PASSED tests/test_x.py::test_y`` from the run's output. The code under test writes to the same output: a bare
``sys.stderr.write("ok\\n")`` while a failing test ran made Django's parser mark it passed (the runner had just
written ``test_x (...) ... `` on that line), and no string of it looks like a verdict.

So the verdicts come from a second channel the test process's output does not reach:

- a harness module (:func:`recorder_source`) is installed as root into the grading container twice: as
  ``sitecustomize.py`` in a root-owned folder put first on the command's ``PYTHONPATH`` (it runs the image's own
  ``sitecustomize`` after itself), and under a random name with a ``.pth`` that imports it in the agent user's
  site-packages (``~/.local``: read even where ``PYTHONPATH`` is filtered out, as ``tox`` does; the image's own
  site-packages are read-only). It loads once at the start of every interpreter of the test command, before any
  code of the repository. It wraps the runner's own reporting:
  :class:`unittest.TestResult`'s ``addSuccess``/``addFailure``/``addError``/``addSkip``/``addExpectedFailure``/
  ``addUnexpectedSuccess``/``addSubTest`` (Django's runner, any unittest runner), sympy's ``PyTestReporter``
  ``test_pass``/``test_fail``/``test_exception``/``test_skip``/``test_xfail``/``test_xpass``
  (``sympy.testing.runtests``, ``sympy.utilities.runtests`` before 1.6) and pytest's
  ``TerminalReporter.pytest_runtest_logreport`` (``_pytest.terminal``), each when its module is imported;
- each verdict is appended to a file in a root-owned, sticky folder the test process cannot list, as one line
  ``<key>\\t<runner>\\t<base64 of the line>\\t<lineage>`` (a verdict adds ``\\t<base64 of the file its test's
  code is defined in>``: a test defined in a file of the change is a stand-in for the task's, and its pass an
  error, :func:`read`); the harness makes that file before the run, root's
  with mode 0622 (:meth:`Channel.record_archive`): the test process can add lines and nothing else (it cannot
  read back, reorder, edit or replace what the runner wrote; emptying it leaves no verdict: 0.0); ``key`` is 32
  random hex digits of this grading, held by the recorder's module (nothing in the environment), ``lineage`` the
  writing process's pid and its ancestors' (from ``/proc``); the file begins with a nonce line of the harness
  (the tests cannot read it): emptied or written over, no verdict counts; in each process the first result object of a
  runner records (a nested unittest run or pytester session inside a test records nothing);
- :func:`read` keeps the lines that carry the key, of one process: the outermost that reported (a run that a
  test or the code under test starts in a child reports under it, and is dropped), under no interpreter but
  the runner's launchers (``tox`` marks itself when it is imported, unless pytest runs in the same process; sympy's ``bin/test`` marks the start and
  end of each rerun of itself in a child, ``run_in_subprocess_with_hash_randomization``, and the pid of the
  child it starts: only that child counts, when it is the one started in that span), and under the test
  command's shell (:func:`shell_marked` prints its pid first: a runner started in the background by a shell
  that exits has init for its parent); two such processes, or none, and no verdict counts (0.0). (The
  first process to claim was the runner before: a child unittest run of a look-alike module, started by the
  package when the runner imported it, took the claim with the run's key, and the runner recorded nothing:
  1.0 knowing nothing.) A keyed pass after the same test's failure is dropped. It rebuilds the runner's log
  from the kept lines (``<description> ... ok``, ``test_x F``, ``PASSED <node id>``), which goes to SWE-bench's
  parser as before: the published ids come out the same.

What is left: code of the change that finds the recorder's source, module or objects and writes keyed verdicts
(every interpreter must read the source, so the test process can too): runner-reactive code as for pytest rows,
flagged by :mod:`lightswe.envs.hack_check` where it takes a known way (``PYTHONPATH``, ``sys.path``, the user
site-packages, ``/dev/fd``, ``sys.modules``, ``gc``, the runner's reporting names; a walk of the home folder or
``/tmp`` that names none of them is not flagged). A recorder that cannot load is never the policy's failure:
grading checks that it loads in ``python``/``python3`` before the tests (``Channel.probe``), and a test command
that keeps both ways out (``python -I``, ``-S``, ``-E -s``, also in the shebang of the script it runs:
:func:`unloadable`) is a broken task, decided from the task alone: ``GradingError``, reward None. A run that
leaves no verdict (the change broke the runner or emptied the records) reports no test: 0.0; a record file that
is gone is the machine's failure (no test process can remove it).

Log parsers without a channel here (runners that are not Python: Go, Rust, JavaScript...) still read the log;
:func:`channel_of` says which.
"""

from __future__ import annotations

import base64
import io
import posixpath
import re
import secrets
import shlex
import tarfile
import time
from collections.abc import Collection
from dataclasses import dataclass

from lightswe.errors import UserInputError

# SWE-bench parser (function name; the per-repository aliases keep it) -> the runner whose verdicts are recorded
CHANNELS = {"parse_log_django": "unittest", "parse_log_sympy": "sympy", "parse_log_pytest": "pytest",
            "parse_log_pytest_v2": "pytest", "parse_log_pytest_options": "pytest", "parse_log_seaborn": "pytest",
            "parse_log_matplotlib": "pytest"}

# Runs in every Python of the test command (3.5+: no f-strings); never raises into it.
_RECORDER = r'''"""lightswe grading: records the test runner's verdicts where the tests' output does not reach."""
import os
import sys

import functools

_KEY = "@KEY@"
_PATH = "@PATH@"
_RUNNERS = {"sympy.testing.runtests": "sympy", "sympy.utilities.runtests": "sympy", "_pytest.terminal": "pytest",
            "tox": "tox"}
_state = {"fd": None, "result": {}, "claimed": {}, "lineage": (0, "")}  # per runner: result object, its pid


def _lineage():
    """This process and its ancestors, "pid,parent,...": the harness keeps the outermost runner's verdicts."""
    pid = os.getpid()
    if _state["lineage"][0] != pid:
        pids, parent = [pid], os.getppid()
        while parent > 0 and len(pids) < 64:
            pids.append(parent)
            try:
                with open("/proc/%d/stat" % parent) as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except Exception:
                break
        _state["lineage"] = (pid, ",".join(str(p) for p in pids))
    return _state["lineage"][1]


def _b64(text):
    import binascii
    return binascii.b2a_base64(text.encode("utf-8", "backslashreplace")).decode("ascii").strip()


def _write(runner, line, source=None):
    """One record; ``source``: the file the reported test's code is defined in (verdicts only)."""
    try:
        if _state["fd"] is None:
            _state["fd"] = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        record = "%s\t%s\t%s\t%s" % (_KEY, runner, _b64(line), _lineage())
        if source is not None:
            record += "\t" + _b64(source)
        os.write(_state["fd"], (record + "\n").encode("ascii"))
    except Exception:
        pass


def _code_file(function):
    """Where ``function``'s code is defined ("" when unknown): the harness distrusts tests of the change's files."""
    try:
        function = getattr(function, "__func__", function)
        return getattr(getattr(function, "__code__", None), "co_filename", "") or ""
    except Exception:
        return ""


def _test_file(test):
    try:
        test = getattr(test, "test_case", test)  # a subtest reports for its test
        return _code_file(getattr(type(test), getattr(test, "_testMethodName", ""), None))
    except Exception:
        return ""


def _claim(runner, result):
    """Whether ``result`` reports for ``runner`` in this process: the first to ask in it (a nested run inside
    a test records nothing; a forked child starts over). Which process is the run's runner is decided by the
    harness from the records' lineages (the outermost), never by who came first."""
    if _state["claimed"].get(runner) != os.getpid():
        _state["claimed"][runner] = os.getpid()
        _state["result"][runner] = result
    return _state["result"].get(runner) is result


def _describe(result, test):
    try:
        describe = getattr(result, "getDescription", None)
        return describe(test) if describe is not None else str(test)
    except Exception:
        return str(test)


def _hook_unittest():
    import unittest.result as ur
    base = ur.TestResult
    start = base.startTestRun

    def startTestRun(self):
        _claim("unittest", self)
        return start(self)

    base.startTestRun = startTestRun

    def wrap(name, word):
        original = getattr(base, name)

        def method(self, test, *args):
            try:
                if self is _state["result"].get("unittest"):
                    _write("unittest", _describe(self, test) + " ... " + word(*args), _test_file(test))
            except Exception:
                pass
            return original(self, test, *args)

        method.__name__ = name
        setattr(base, name, method)

    wrap("addSuccess", lambda: "ok")
    wrap("addFailure", lambda err: "FAIL")
    wrap("addError", lambda err: "ERROR")
    wrap("addSkip", lambda reason: "skipped %r" % (reason,))
    wrap("addExpectedFailure", lambda err: "expected failure")
    wrap("addUnexpectedSuccess", lambda: "unexpected success")
    sub = base.addSubTest

    def addSubTest(self, test, subtest, err):
        try:
            if err is not None and self is _state["result"].get("unittest"):
                word = "FAIL" if issubclass(err[0], test.failureException) else "ERROR"
                _write("unittest", _describe(self, subtest) + " ... " + word, _test_file(subtest))
        except Exception:
            pass
        return sub(self, test, subtest, err)

    base.addSubTest = addSubTest


def _hook_sympy(module):
    spawn = getattr(module, "run_in_subprocess_with_hash_randomization", None)
    if spawn is not None:
        def run_in_subprocess_with_hash_randomization(*args, **kwargs):
            import subprocess
            popen = subprocess.Popen

            class Popen(popen):
                """Records the pid of each child the launch starts (but its ``python -RV`` version check)."""

                def __init__(self, *a, **k):
                    popen.__init__(self, *a, **k)
                    try:
                        if "-RV" not in list(a[0] if a else k.get("args", ())):
                            _write("launcher", "sympy:child:%d" % self.pid)
                    except Exception:
                        pass

            _write("launcher", "sympy:start")  # bin/test reruns itself in a child: the runner may sit under it
            subprocess.Popen = Popen
            try:
                return spawn(*args, **kwargs)
            finally:
                subprocess.Popen = popen
                _write("launcher", "sympy:end")

        module.run_in_subprocess_with_hash_randomization = run_in_subprocess_with_hash_randomization
    reporter = module.PyTestReporter
    start = reporter.start

    def begin(self, *args, **kwargs):
        _claim("sympy", self)
        return start(self, *args, **kwargs)

    reporter.start = begin

    def wrap(name, word):
        original = getattr(reporter, name)

        def method(self, *args, **kwargs):
            try:
                if self is _state["result"].get("sympy"):
                    _write("sympy", "%s %s" % (self._active_f.__name__, word), _code_file(self._active_f))
            except Exception:
                pass
            return original(self, *args, **kwargs)

        method.__name__ = name
        setattr(reporter, name, method)

    for name, word in (("test_pass", "ok"), ("test_fail", "F"), ("test_exception", "E"), ("test_skip", "s"),
                       ("test_xfail", "f"), ("test_xpass", "X")):
        wrap(name, word)


def _pytest_word(report):
    xfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if report.passed:
            return "XPASS" if xfail else "PASSED"
        if report.failed:
            return "FAILED"
        return "XFAIL" if xfail else ""
    return "ERROR" if report.failed else ""


def _hook_pytest(module):
    _write("launcher", "pytest:runner")  # pytest itself runs here: never a launcher of pytest (tox imported or not)
    reporter = module.TerminalReporter
    original = reporter.pytest_runtest_logreport

    def pytest_runtest_logreport(self, report):
        try:
            if _claim("pytest", self):
                word = _pytest_word(report)
                if word:
                    _write("pytest", "%s %s" % (word, report.nodeid), str(report.location[0]))
        except Exception:
            pass
        return original(self, report)

    reporter.pytest_runtest_logreport = functools.wraps(original)(pytest_runtest_logreport)  # hookimpl marks kept


def _hook_tox(module):
    _write("launcher", "pytest")  # tox starts pytest (sphinx's rows): the runner may sit under this one


_HOOKS = {"sympy": _hook_sympy, "pytest": _hook_pytest, "tox": _hook_tox}


class _AfterImport(object):
    """Hooks a runner's module right after it is imported (nothing else is touched)."""

    def find_spec(self, name, path=None, target=None):
        if name not in _RUNNERS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                run, hook = spec.loader.exec_module, _HOOKS[_RUNNERS[name]]

                def exec_module(module, run=run, hook=hook):
                    run(module)
                    try:
                        hook(module)
                    except Exception:
                        pass

                spec.loader.exec_module = exec_module
            return spec
        return None


def _install():
    _write("loaded", str(os.getpid()))
    try:
        _hook_unittest()
    except Exception:
        pass
    sys.meta_path.insert(0, _AfterImport())
    for name, runner in _RUNNERS.items():
        if name in sys.modules:
            try:
                _HOOKS[runner](sys.modules[name])
            except Exception:
                pass


def _chain():
    """Stands in front of the image's own sitecustomize (when loaded as one from PYTHONPATH): run that too."""
    try:
        import importlib.machinery
        import importlib.util
        here = os.path.dirname(os.path.abspath(__file__))
        rest = [p for p in sys.path if p and os.path.abspath(p) != here]
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
        if spec is not None and spec.loader is not None:
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
    except Exception:
        pass


if not getattr(sys, "_lightswe_recorder", False):
    sys._lightswe_recorder = True
    _install()
if __name__ == "sitecustomize":
    _chain()
'''


def recorder_source(key: str, path: str) -> str:
    """The recorder module's source, writing records with ``key`` to ``path`` (see the module docstring)."""
    if not re.fullmatch(r"[0-9a-f]{32}", key) or not re.fullmatch(r"/[\w./-]+", path):
        raise UserInputError(f"recorder key must be 32 hex digits and path a plain absolute path, got {key!r}, {path!r}")
    return _RECORDER.replace("@KEY@", key).replace("@PATH@", path)


@dataclass(frozen=True, slots=True)
class Channel:
    """Where one test command's verdicts go: the recorder's module name and folder, the record file, the key."""

    runner: str  # "unittest", "sympy" or "pytest"
    module: str  # the recorder's module name in the user site-packages (random)
    folder: str  # a root-owned folder holding it as sitecustomize.py, first on the command's PYTHONPATH
    path: str  # the record file, in a root-owned folder the test process cannot list
    key: str  # 32 hex digits
    nonce: str = ""  # 32 hex digits the harness writes first into the record file (unreadable to the tests)

    def archive(self, entries: dict[str, str], folder: str = "") -> bytes:
        """A tar (root's: files 0644, ``folder`` 0755 when given) of ``{name: source}``."""
        buffer = io.BytesIO()
        now = int(time.time())
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            if folder:
                info = tarfile.TarInfo(folder)
                info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, 0o755, 0, 0, now
                archive.addfile(info)
            for name, text in entries.items():
                data = text.encode()
                info = tarfile.TarInfo(f"{folder}/{name}" if folder else name)
                info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o644, 0, 0, now
                archive.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    def record_archive(self) -> bytes:
        """A tar of the record file (its base name) holding the nonce line, root's with mode 0622: the test process (another
        user) may open it to append and nothing else, so what the runner wrote cannot be read back, reordered or
        edited by the code under test (made by the harness before any of it runs, in a sticky folder, so it
        cannot be replaced either)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            data = f"{self.nonce}\n".encode() if self.nonce else b""
            info = tarfile.TarInfo(self.path.rsplit("/", 1)[1])
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o622, 0, 0, int(time.time())
            archive.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    def site_files(self) -> dict[str, str]:
        """``<module>.py`` and ``<module>.pth`` (``import <module>``), for a user site-packages folder."""
        return {f"{self.module}.py": recorder_source(self.key, self.path),
                f"{self.module}.pth": f"import {self.module}\n"}

    def command(self, test_command: str) -> str:
        """``test_command`` with the recorder's folder first on ``PYTHONPATH`` (the image's entries kept)."""
        return f'export PYTHONPATH={shlex.quote(self.folder)}"${{PYTHONPATH:+:$PYTHONPATH}}"; {test_command}'

    def probe(self) -> str:
        """A command that exits 0 iff the recorder loads in ``python`` and ``python3`` (those present) under
        :meth:`command`, run from ``/`` (nothing of the repository imported)."""
        check = "import sys; sys.exit(0 if getattr(sys, '_lightswe_recorder', False) else 3)"
        return self.command(" && ".join(f"{{ ! command -v {py} >/dev/null || {py} -c {shlex.quote(check)}; }}"
                                        for py in ("python", "python3")))


def channel_of(parser) -> str:
    """The runner whose verdicts are recorded for SWE-bench log parser ``parser`` ("" when none is)."""
    return CHANNELS.get(getattr(parser, "__name__", ""), "")


SHELL_MARK = "lightswe-shell"


def shell_marked(command: str) -> str:
    """``command`` after a first line of output ``lightswe-shell <pid>`` (its shell's pid, printed before any
    code of the test run: nothing the tests write can come first). See :func:`shell_of`."""
    return f'echo "{SHELL_MARK} $$"; {command}'


def shell_of(output: str) -> int:
    """The shell's pid of :func:`shell_marked` from the command's output (0 when its first line is not it)."""
    match = re.match(rf"{SHELL_MARK} (\d+)\r?\n", output)
    return int(match.group(1)) if match else 0


def new_channel(runner: str, private_folder: str) -> Channel:
    """A channel whose record file is a random name in ``private_folder`` (made by the caller, 1733 root's)."""
    return Channel(runner=runner, module=f"_lightswe_verdicts_{secrets.token_hex(6)}",
                   folder=f"/tmp/lightswe-recorder-{secrets.token_hex(8)}",
                   path=f"{private_folder}/{secrets.token_hex(16)}.verdicts", key=secrets.token_hex(16),
                   nonce=secrets.token_hex(16))


# The user site-packages folder of each Python (where site reads .pth files of the user); -I -S: nothing of the
# repository, and no .pth, runs to answer.
USER_SITES = ("for py in python python3; do command -v $py >/dev/null && $py -I -S -c 'import site; "
              "print(site.getusersitepackages())'; done; true")


def unloadable(test_command: str, shebangs: dict[str, bytes] | None = None) -> str:
    """Why the recorder cannot load in ``test_command``'s Python ("" when nothing says so): ``python -I`` or
    ``-S``, or ``-E`` with ``-s`` (neither ``PYTHONPATH`` nor the user site-packages), in the command or in the
    first line of the scripts it runs (``shebangs``: path -> bytes). Such a task cannot be graded from its
    runner's verdicts (a broken task, whatever the policy did); decided from the task alone, so no change can
    make a failing run look like one."""
    try:
        tokens = shlex.split(test_command)
    except ValueError:
        tokens = test_command.split()
    for head in (shebangs or {}).values():
        line = head.split(b"\n", 1)[0].decode("utf-8", "replace")
        if line.startswith("#!"):
            tokens += [";", *line[2:].split()]
    for i, token in enumerate(tokens):
        if not re.fullmatch(r"(?:.*/)?(?:python[\d.]*|pypy[\d.]*)", token):
            continue
        letters = ""
        for flag in tokens[i + 1:]:
            if not flag.startswith("-") or flag.startswith("--"):
                break
            for letter in flag[1:]:
                if letter in "WXcmQ":  # the rest is the option's argument
                    break
                letters += letter
        if "I" in letters or "S" in letters or ("E" in letters and "s" in letters):
            flags = "".join(sorted(set(letters) & set("IESs")))
            return f"its Python runs with -{flags} (neither PYTHONPATH nor site-packages .pth files are read)"
    return ""


def _verdict(runner: str, line: str) -> tuple[str, bool]:
    """(the test a recorded line reports, whether it reports a failure or an error); ("", False) for sympy's
    lines (bare test names repeat across files)."""
    if runner == "unittest":
        test, _, word = line.rpartition(" ... ")
        return test, word in ("FAIL", "ERROR", "unexpected success")
    if runner == "pytest":
        word, _, test = line.partition(" ")
        return test, word in ("FAILED", "ERROR")
    return "", False


@dataclass(frozen=True, slots=True)
class Records:
    """What one test command left on its channel (:func:`read`)."""

    log: str  # the runner's log rebuilt from the verdicts that carry the key
    loaded: int  # interpreters that loaded the recorder
    ignored: int  # lines without the key, not decodable, of another process than the runner's, or a pass after
    # the same test's failure (not the runner's)
    runners: int = 1  # outermost reporting processes: the log is empty unless exactly one (the run's runner)
    tampered: bool = False  # the file was emptied or written over (not only appended to): no verdict counts
    borrowed: tuple[str, ...] = ()  # recorded lines whose test is defined in a file of the change (made errors)


def read(raw: bytes, channel: Channel, shell: int = 0, changed: Collection[str] | None = None,
         workdir: str = "/testbed") -> Records:
    """The records of ``raw`` (the record file's bytes) that carry ``channel``'s key; ``shell``: the test
    command's shell (:func:`shell_of`; 0: any), which the runner must descend from.

    ``changed``: the paths (relative to ``workdir``) of the graded change (grading; None: no check). A verdict
    whose test is defined in one of them, or in a file the test process wrote outside ``workdir``
    (:func:`in_change`; the recorder notes where each reported test's code is), is a stand-in for the task's
    test (a module put in its place through ``sys.modules``, an import hook or a redirected package
    ``__path__``): its pass becomes an error (``Records.borrowed``).

    With ``channel.nonce``, the file must begin with it and hold nothing but records: anything else (the nonce
    gone: emptied or overwritten; a line that is no record: written over blindly) voids every verdict
    (``tampered``): the test process can append, and an erased ``loaded`` line of the runner would let a runner
    it started count.

    Unittest verdicts become ``<description> ... <word>`` lines (the description may span two lines, as the
    runner prints a docstring's first line), sympy's ``<test> <word>``, pytest's ``<STATUS> <node id>`` (its
    ``-rA`` summary): the forms SWE-bench's parsers read. Those parsers let a test's last line win; a runner
    reports a unittest test once and a pytest node's call once (a teardown ``ERROR`` may follow), so a keyed
    pass that comes after the test's failure is dropped (counted in ``ignored``): code of the change that
    learnt the key cannot turn the runner's ``FAIL`` into a pass by writing after it.
    """
    interpreters: dict[int, tuple[int, list[int]]] = {}  # pids that loaded the recorder -> (when, ancestors)
    launchers: set[int] = set()  # pids that start the runner in a child (sympy's bin/test, tox), as the runner does
    windows: dict[int, list[list[float]]] = {}  # launcher -> [start, end] of each launch it marked (sympy's)
    children: dict[int, list[tuple[int, int]]] = {}  # launcher -> (when, pid) of each child a launch started
    runs: set[int] = set()  # pids where the runner itself runs (pytest imported): launchers of nothing
    reported: dict[int, tuple[list[int], list[str]]] = {}  # reporting pid -> (its ancestors, its lines)
    ignored, tampered = 0, False
    records = raw.decode("ascii", "replace").splitlines()
    if channel.nonce:
        tampered = not records or records[0] != channel.nonce
        records = records[1:]
    for when, record in enumerate(records):
        fields = record.split("\t")
        if len(fields) not in (4, 5) or fields[0] != channel.key or fields[1] not in (channel.runner, "loaded", "launcher") \
                or not re.fullmatch(r"\d+(,\d+)*", fields[3]):
            ignored += 1
            tampered = tampered or bool(channel.nonce)
            continue
        try:
            text = base64.b64decode(fields[2], validate=True).decode("utf-8", "replace")
            source = base64.b64decode(fields[4], validate=True).decode("utf-8", "replace") if len(fields) == 5 else ""
        except ValueError:
            ignored += 1
            tampered = tampered or bool(channel.nonce)
            continue
        pid, *ancestors = (int(p) for p in fields[3].split(","))
        if fields[1] == "loaded":
            interpreters[pid] = (when, ancestors)
        elif fields[1] == "launcher":
            runner, _, edge = text.partition(":")
            if runner == channel.runner:
                launchers.add(pid)
                if edge == "start":
                    windows.setdefault(pid, []).append([when, float("inf")])
                elif edge == "end" and windows.get(pid):
                    windows[pid][-1][1] = when
                elif edge == "runner":
                    runs.add(pid)
                elif edge.startswith("child:") and edge[6:].isdigit():
                    children.setdefault(pid, []).append((when, int(edge[6:])))
        else:
            reported.setdefault(pid, (ancestors, []))[1].append((text, source))
    # the run's runner: a reporting process under no interpreter but the runner's launchers (a run nested in a
    # test, or started by the code under test, is under the runner's or another interpreter); exactly one
    launchers -= runs

    def parent(pid: int) -> int:  # the nearest interpreter above ``pid`` (0: none)
        return next((a for a in interpreters.get(pid, (0, reported.get(pid, ([],))[0]))[1] if a in interpreters), 0)

    def launched(pid: int) -> bool:
        """Under a launcher that marks its launches: the one child it started in one of them."""
        above = parent(pid)
        if above not in windows:
            return True
        for start, end in windows[above]:
            started = [child for at, child in children.get(above, []) if start < at < end]
            if started == [pid]:
                return True
        return False

    outermost = [pid for pid, (ancestors, _) in reported.items()
                 if not set(ancestors) & (reported.keys() | (interpreters.keys() - launchers)) and launched(pid)
                 and (not shell or shell in ancestors)]
    if tampered:
        outermost = []
    runners = len(outermost)
    ignored += sum(len(texts) for pid, (_, texts) in reported.items() if runners != 1 or pid != outermost[0])
    lines, failed = [], set()  # failed: tests (unittest descriptions, pytest node ids) already reported failing
    borrowed = []
    for text, source in reported[outermost[0]][1] if runners == 1 else []:
        if changed is not None and in_change(source, changed, workdir):
            text = _as_error(channel.runner, text)
            borrowed.append(text)
        test, failing = _verdict(channel.runner, text)
        if test in failed and not failing:
            ignored += 1  # a runner reports a test once (pytest: a teardown error after its call): a pass
            continue  # after its failure is not the runner's, whoever knew the key
        if failing:
            failed.add(test)
        lines.append(text)
    return Records(log="\n".join(lines) + ("\n" if lines else ""), loaded=len(interpreters), ignored=ignored,
                   runners=runners, tampered=tampered, borrowed=tuple(borrowed))


# Where the test process may write outside the work tree: code there was written at run time, never the task's.
RUN_TIME_FOLDERS = ("/tmp/", "/var/tmp/", "/dev/shm/", "/home/", "/run/")


def in_change(source: str, changed: Collection[str], workdir: str = "/testbed") -> bool:
    """Whether a test whose code is in ``source`` (absolute, or relative to ``workdir``: ``../tmp/x.py`` too)
    cannot be the task's: a path of the change or inside one (a zip archive on an import path), or a file the
    test process wrote outside the work tree (:data:`RUN_TIME_FOLDERS`)."""
    if not source:
        return False
    path = posixpath.normpath(source if source.startswith("/") else f"{workdir}/{source}")
    if path.startswith(RUN_TIME_FOLDERS):
        return True
    if not path.startswith(workdir + "/"):
        return False
    parts = path[len(workdir) + 1:].split("/")
    return any("/".join(parts[:i]) in changed for i in range(1, len(parts) + 1))


def _as_error(runner: str, text: str) -> str:
    """A recorded verdict line turned into the runner's error for the same test."""
    if runner == "unittest":
        return text.rpartition(" ... ")[0] + " ... ERROR"
    if runner == "pytest":
        return "ERROR " + text.partition(" ")[2]
    return text.rsplit(" ", 1)[0] + " E"  # sympy: "<test> <word>"
