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
- each verdict is appended to a file in a root-owned folder the test process cannot list, as one line
  ``<key>\\t<runner>\\t<base64 of the line>``; ``key`` is 32 random hex digits of this grading, held by the
  recorder's module (nothing in the environment); only the first result object of the command (the runner's,
  claimed once per runner and test command with an exclusive create, so a nested unittest run or pytester
  session inside a test, or another process, records nothing) writes;
- :func:`read` keeps the lines that carry the key and rebuilds the runner's log from them (``<description> ...
  ok``, ``test_x F``, ``PASSED <node id>``), which goes to SWE-bench's parser as before: the published ids come out
  the same.

What is left: code of the change that finds the recorder's module (or its objects) and writes keyed verdicts,
which is runner-reactive code as for pytest rows (``.pth``, the runner's names: flagged by
:mod:`lightswe.envs.hack_check`). A recorder that cannot load is never the policy's failure: grading checks that
it loads in ``python``/``python3`` before the tests (``Channel.probe``), and a test command that keeps both ways
out (``python -I``, ``-S``, ``-E -s``, also in the shebang of the script it runs: :func:`unloadable`) is a broken
task, decided from the task alone: ``GradingError``, reward None. A run that leaves no verdict (the change broke
the runner or erased the records) reports no test: 0.0.

Log parsers without a channel here (runners that are not Python: Go, Rust, JavaScript...) still read the log;
:func:`channel_of` says which.
"""

from __future__ import annotations

import base64
import io
import re
import secrets
import shlex
import tarfile
import time
from dataclasses import dataclass

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
_RUNNERS = {"sympy.testing.runtests": "sympy", "sympy.utilities.runtests": "sympy", "_pytest.terminal": "pytest"}
_state = {"fd": None, "result": {}, "claimed": {}}  # per runner: the claimed result object, the claiming pid


def _write(runner, line):
    try:
        import binascii
        if _state["fd"] is None:
            _state["fd"] = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        data = binascii.b2a_base64(line.encode("utf-8", "backslashreplace")).decode("ascii").strip()
        os.write(_state["fd"], ("%s\t%s\t%s\n" % (_KEY, runner, data)).encode("ascii"))
    except Exception:
        pass


def _claim(runner, result):
    """Whether ``result`` reports this command's tests for ``runner``: the first to ask in the first process to
    ask (one claim per runner, so a stray run of another runner cannot take it)."""
    if runner not in _state["claimed"]:
        try:
            os.close(os.open("%s.claim-%s" % (_PATH, runner), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            _state["claimed"][runner] = os.getpid()
        except OSError:
            _state["claimed"][runner] = -1
    if runner not in _state["result"] and _state["claimed"][runner] == os.getpid():
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
                    _write("unittest", _describe(self, test) + " ... " + word(*args))
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
                _write("unittest", _describe(self, subtest) + " ... " + word)
        except Exception:
            pass
        return sub(self, test, subtest, err)

    base.addSubTest = addSubTest


def _hook_sympy(module):
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
                    _write("sympy", "%s %s" % (self._active_f.__name__, word))
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
    reporter = module.TerminalReporter
    original = reporter.pytest_runtest_logreport

    def pytest_runtest_logreport(self, report):
        try:
            if _claim("pytest", self):
                word = _pytest_word(report)
                if word:
                    _write("pytest", "%s %s" % (word, report.nodeid))
        except Exception:
            pass
        return original(self, report)

    reporter.pytest_runtest_logreport = functools.wraps(original)(pytest_runtest_logreport)  # hookimpl marks kept


_HOOKS = {"sympy": _hook_sympy, "pytest": _hook_pytest}


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
        raise ValueError(f"recorder key must be 32 hex digits and path a plain absolute path, got {key!r}, {path!r}")
    return _RECORDER.replace("@KEY@", key).replace("@PATH@", path)


@dataclass(frozen=True, slots=True)
class Channel:
    """Where one test command's verdicts go: the recorder's module name and folder, the record file, the key."""

    runner: str  # "unittest", "sympy" or "pytest"
    module: str  # the recorder's module name in the user site-packages (random)
    folder: str  # a root-owned folder holding it as sitecustomize.py, first on the command's PYTHONPATH
    path: str  # the record file, in a root-owned folder the test process cannot list
    key: str  # 32 hex digits

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


def new_channel(runner: str, private_folder: str) -> Channel:
    """A channel whose record file is a random name in ``private_folder`` (made by the caller, 0733 root's)."""
    return Channel(runner=runner, module=f"_lightswe_verdicts_{secrets.token_hex(6)}",
                   folder=f"/tmp/lightswe-recorder-{secrets.token_hex(8)}",
                   path=f"{private_folder}/{secrets.token_hex(16)}.verdicts", key=secrets.token_hex(16))


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


@dataclass(frozen=True, slots=True)
class Records:
    """What one test command left on its channel (:func:`read`)."""

    log: str  # the runner's log rebuilt from the verdicts that carry the key
    loaded: int  # interpreters that loaded the recorder
    ignored: int  # lines without the key or not decodable (written by something other than the recorder)


def read(raw: bytes, channel: Channel) -> Records:
    """The records of ``raw`` (the record file's bytes) that carry ``channel``'s key.

    Unittest verdicts become ``<description> ... <word>`` lines (the description may span two lines, as the
    runner prints a docstring's first line), sympy's ``<test> <word>``, pytest's ``<STATUS> <node id>`` (its
    ``-rA`` summary): the forms SWE-bench's parsers read.
    """
    lines, loaded, ignored = [], 0, 0
    for record in raw.decode("ascii", "replace").splitlines():
        key, _, rest = record.partition("\t")
        kind, _, data = rest.partition("\t")
        if key != channel.key or kind not in (channel.runner, "loaded"):
            ignored += 1
            continue
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8", "replace")
        except ValueError:
            ignored += 1
            continue
        if kind == "loaded":
            loaded += 1
        else:
            lines.append(text)
    return Records(log="\n".join(lines) + ("\n" if lines else ""), loaded=loaded, ignored=ignored)
