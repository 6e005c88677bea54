"""A verdict channel for runners graded from their log: what the test run printed is never read as a verdict.

Rows whose runner is not pytest (Django's ``tests/runtests.py``, sympy's ``bin/test``) are graded by SWE-bench's
log parser of the repository (``swebench.harness.log_parsers``), which reads lines such as
``test_x (app.tests.T) ... ok`` or ``test_x ok`` from the run's output. The code under test writes to the same
output: a bare ``sys.stderr.write("\\nok\\n")`` while a failing test ran made Django's parser mark it passed
(a line starting with ``ok`` after a ``... `` line), and no string of it looks like a verdict.

So the verdicts come from a second channel the test process's output does not reach:

- a harness module (:data:`RECORDER`, installed as ``sitecustomize`` in a root-owned folder of the grading
  container and put first on ``PYTHONPATH``) loads in every Python the test command starts, before any code of
  the repository. It wraps the runner's result methods: :class:`unittest.TestResult`'s ``addSuccess``,
  ``addFailure``, ``addError``, ``addSkip``, ``addExpectedFailure``, ``addUnexpectedSuccess``, ``addSubTest``
  (Django's runner and any unittest runner) and sympy's ``PyTestReporter.test_pass``/``test_fail``/
  ``test_exception``/``test_skip``/``test_xfail``/``test_xpass`` (``sympy.testing.runtests``, or
  ``sympy.utilities.runtests`` before sympy 1.6), when that module is imported;
- each verdict is appended to a file in a root-owned folder the test process cannot list, as one line
  ``<key>\\t<runner>\\t<base64 of the line the runner prints>``; ``key`` is 32 random hex digits of this grading;
  only the first result object of the run (the runner's, claimed once per test command with an exclusive
  create, so a nested unittest run inside a test or a subprocess records nothing) writes; the claiming process
  drops the key and the path from its environment before the first test runs;
- :func:`read` keeps the lines that carry the key and rebuilds the runner's verbose log from them (``<description>
  ... ok``, ``test_x F``), which goes to SWE-bench's parser as before: the published ids come out the same.

What is left: code of the change that reads the key and the path (environment variables named
``LIGHTSWE_VERDICT*``: the name is flagged by :mod:`lightswe.envs.hack_check`) or reaches the recorder's objects
(runner-reactive code, as for pytest). A recorder that does not load is never the policy's failure: grading
checks that it loads in the container's ``python``/``python3`` before the tests (:func:`probe_command`) and that
the test command started at least one Python that loaded it (``Records.loaded``; a command that ignores
``PYTHONPATH``, ``python -I``, is a broken task): ``GradingError``, reward None. A run that leaves no verdict
(the change broke the runner before any test) reports no test: 0.0.

Log parsers without a channel here (runners that are not Python) still read the log; ``channel_of`` says which.
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

KEY_ENV, PATH_ENV = "LIGHTSWE_VERDICT_KEY", "LIGHTSWE_VERDICTS"
# SWE-bench parser (function name) -> the runner whose verdicts the recorder writes
CHANNELS = {"parse_log_django": "unittest", "parse_log_sympy": "sympy"}

# Runs in the test command's Pythons (3.5+: no f-strings); never raises into them.
RECORDER = r'''"""lightswe grading: records the test runner's verdicts on a channel the tests' output does not reach."""
import os
import sys

LIGHTSWE_RECORDER = True
_KEY = os.environ.get("LIGHTSWE_VERDICT_KEY", "")
_PATH = os.environ.get("LIGHTSWE_VERDICTS", "")
_SYMPY = ("sympy.testing.runtests", "sympy.utilities.runtests")
_state = {"fd": None, "result": None, "claimed": None}


def _write(runner, line):
    try:
        import binascii
        if _state["fd"] is None:
            _state["fd"] = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        data = binascii.b2a_base64(line.encode("utf-8", "backslashreplace")).decode("ascii").strip()
        os.write(_state["fd"], ("%s\t%s\t%s\n" % (_KEY, runner, data)).encode("ascii"))
    except Exception:
        pass


def _claim():
    """Whether this process runs the command's tests: the first to ask, once per test command."""
    if _state["claimed"] is None:
        try:
            os.close(os.open(_PATH + ".claim", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            _state["claimed"] = os.getpid()
        except OSError:
            _state["claimed"] = -1
        for name in ("LIGHTSWE_VERDICT_KEY", "LIGHTSWE_VERDICTS"):  # the tests run next: out of their environment
            os.environ.pop(name, None)
    return _state["claimed"] > 0


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
        if _state["result"] is None and _claim():
            _state["result"] = self
        return start(self)

    base.startTestRun = startTestRun

    def wrap(name, word):
        original = getattr(base, name)

        def method(self, test, *args):
            try:
                if self is _state["result"]:
                    _write("unittest", _describe(self, test) + " ... " + word(self, *args))
            except Exception:
                pass
            return original(self, test, *args)

        method.__name__ = name
        setattr(base, name, method)

    wrap("addSuccess", lambda self: "ok")
    wrap("addFailure", lambda self, err: "FAIL")
    wrap("addError", lambda self, err: "ERROR")
    wrap("addSkip", lambda self, reason: "skipped %r" % (reason,))
    wrap("addExpectedFailure", lambda self, err: "expected failure")
    wrap("addUnexpectedSuccess", lambda self: "unexpected success")
    sub = base.addSubTest

    def addSubTest(self, test, subtest, err):
        try:
            if err is not None and self is _state["result"]:
                word = "FAIL" if issubclass(err[0], test.failureException) else "ERROR"
                _write("unittest", _describe(self, subtest) + " ... " + word)
        except Exception:
            pass
        return sub(self, test, subtest, err)

    base.addSubTest = addSubTest


def _hook_sympy(module):
    reporter = getattr(module, "PyTestReporter", None)
    if reporter is None:
        return
    start = reporter.start

    def begin(self, *args, **kwargs):
        if _state["result"] is None and _claim():
            _state["result"] = self
        return start(self, *args, **kwargs)

    reporter.start = begin

    def wrap(name, word):
        original = getattr(reporter, name)

        def method(self, *args, **kwargs):
            try:
                if self is _state["result"]:
                    _write("sympy", "%s %s" % (self._active_f.__name__, word))
            except Exception:
                pass
            return original(self, *args, **kwargs)

        method.__name__ = name
        setattr(reporter, name, method)

    for name, word in (("test_pass", "ok"), ("test_fail", "F"), ("test_exception", "E"), ("test_skip", "s"),
                       ("test_xfail", "f"), ("test_xpass", "X")):
        wrap(name, word)


class _AfterImport(object):
    """Hooks sympy's runner module when it is imported (nothing else is touched)."""

    def find_spec(self, name, path=None, target=None):
        if name not in _SYMPY:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                run = spec.loader.exec_module

                def exec_module(module, run=run):
                    run(module)
                    try:
                        _hook_sympy(module)
                    except Exception:
                        pass

                spec.loader.exec_module = exec_module
                return spec
            if spec is not None:
                return spec
        return None


def _chain():
    """The ``sitecustomize`` this one stands in front of (the image's), if any."""
    try:
        import importlib.machinery
        import importlib.util
        here = os.path.dirname(os.path.abspath(__file__))
        rest = [p for p in sys.path if p and os.path.abspath(p) != here]
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
    except Exception:
        pass


if _KEY and _PATH:
    _write("loaded", str(os.getpid()))
    try:
        _hook_unittest()
    except Exception:
        pass
    sys.meta_path.insert(0, _AfterImport())
    for _name in _SYMPY:
        if _name in sys.modules:
            _hook_sympy(sys.modules[_name])
_chain()
'''


@dataclass(frozen=True, slots=True)
class Channel:
    """Where one test command's verdicts go: the recorder's folder (on ``PYTHONPATH``), the record file, the key."""

    runner: str  # "unittest" or "sympy"
    folder: str  # root-owned, 0755, holds sitecustomize.py
    path: str  # the record file, in a root-owned folder the test process cannot list
    key: str  # 32 hex digits

    def env(self) -> dict[str, str]:
        """The environment of the test command (``PYTHONPATH`` is prepended by :meth:`command`)."""
        return {KEY_ENV: self.key, PATH_ENV: self.path}

    def command(self, test_command: str) -> str:
        """``test_command`` with the recorder's folder first on ``PYTHONPATH`` (the image's entries kept)."""
        folder = shlex.quote(self.folder)
        return f'export PYTHONPATH={folder}"${{PYTHONPATH:+:$PYTHONPATH}}"; {test_command}'


def channel_of(parser) -> str:
    """The runner whose verdicts are recorded for SWE-bench log parser ``parser`` ("" when none is)."""
    return CHANNELS.get(getattr(parser, "__name__", ""), "")


def recorder_archive(folder_name: str) -> bytes:
    """A tar of ``folder_name/`` (root's, 0755) holding :data:`RECORDER` as ``sitecustomize.py`` (0644)."""
    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(folder_name)
        info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, 0o755, 0, 0, now
        archive.addfile(info)
        data = RECORDER.encode()
        info = tarfile.TarInfo(f"{folder_name}/sitecustomize.py")
        info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o644, 0, 0, now
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def new_channel(runner: str, private_folder: str) -> Channel:
    """A channel whose record file is a random name in ``private_folder`` (made by the caller, 0733 root's)."""
    return Channel(runner=runner, folder=f"/tmp/lightswe-recorder-{secrets.token_hex(8)}",
                   path=f"{private_folder}/{secrets.token_hex(16)}.verdicts", key=secrets.token_hex(16))


_PYTHON = re.compile(r"^(?:.*/)?(?:python[\d.]*|pypy[\d.]*)$")


def unloadable(test_command: str, shebangs: dict[str, bytes] | None = None) -> str:
    """Why the recorder cannot load in ``test_command``'s Python ("" when nothing says so), read from the command
    (and the first line of the scripts it runs, ``shebangs``: path -> bytes) before it runs: ``python -I``,
    ``-E``, ``-S``, a ``PYTHONPATH`` of its own, ``env -i``. Such a task cannot be graded from its runner's verdicts
    (a broken task, whatever the policy did); decided from the task alone, so no change can make a failing run
    look like one."""
    try:
        tokens = shlex.split(test_command)
    except ValueError:
        tokens = test_command.split()
    for script, head in (shebangs or {}).items():
        line = head.split(b"\n", 1)[0].decode("utf-8", "replace")
        if line.startswith("#!"):
            tokens += ["&&", *line[2:].split()]
    for i, token in enumerate(tokens):
        name = token.split("=", 1)[0]
        if name in ("PYTHONPATH", "PYTHONSTARTUP") and "=" in token or token in ("unset", "-u") and \
                i + 1 < len(tokens) and tokens[i + 1] == "PYTHONPATH":
            return f"the test command sets PYTHONPATH itself ({token!r})"
        if token.rsplit("/", 1)[-1] == "env" and i + 1 < len(tokens) and tokens[i + 1] in ("-i", "--ignore-environment"):
            return "the test command clears the environment (env -i)"
        if _PYTHON.match(token):
            for flag in tokens[i + 1:]:
                if not flag.startswith("-") or flag.startswith("--"):
                    break
                for letter in flag[1:]:
                    if letter in "IES":
                        return f"its Python runs with {flag} (PYTHONPATH or site ignored)"
                    if letter in "WXcmQ":  # the rest is the option's argument
                        break
    return ""


PROBE = ("import sys; m = sys.modules.get('sitecustomize'); "
         "sys.exit(0 if getattr(m, 'LIGHTSWE_RECORDER', False) else 3)")


def probe_command(channel: Channel) -> str:
    """A command that exits 0 iff the Pythons the test command can start (``python``, ``python3``) load the
    recorder under the channel's environment (run from ``/``, nothing of the repository imported)."""
    check = " && ".join(f"{{ ! command -v {py} >/dev/null || {py} -c {shlex.quote(PROBE)}; }}"
                        for py in ("python", "python3"))
    return channel.command(check)


@dataclass(frozen=True, slots=True)
class Records:
    """What one test command left on its channel (:func:`read`)."""

    log: str  # the runner's verbose log rebuilt from the verdicts that carry the key
    loaded: int  # Pythons of the command that loaded the recorder (0: the command never ran one with it)
    ignored: int  # lines without the key or not decodable (written by something other than the recorder)


def read(raw: bytes, channel: Channel) -> Records:
    """The records of ``raw`` (the record file's bytes) that carry ``channel``'s key.

    Unittest verdicts become ``<description> ... <word>`` lines (the description may span two lines, as the
    runner prints a docstring's first line), sympy's ``<test> <word>``: the forms SWE-bench's parsers read.
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
