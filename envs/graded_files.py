"""What of the agent's change grading may see, and what it leaves out (with the reason, for ``info``).

The agent fixes source code. Everything that decides *how the tests run* stays as the task defines it, so a
change there cannot earn reward, and an honest edit there is visible (:class:`LeftOut`) instead of silently
lost. Left out:

- the task's tests: its test files (the files of FAIL_TO_PASS/PASS_TO_PASS, ``test_files``, every path of
  ``test_patch``), the test directory each lives in (its nearest ancestor named ``test``/``tests``/``testing``:
  helpers and data the tests read), every ``test_*.py``/``*_test.py`` module, and everything under a folder
  named like one (``test_x/``, ``x_test/``): a package of the test module's name, reached through a package
  ``__path__`` the change redirects, was imported by pytest in place of the task's test file (1.0 unfixed);
- test-runner configuration: every ``conftest.py``, ``pytest.ini``/``.pytest.ini``/``pytest.toml``/
  ``.pytest.toml``/``tox.ini``/``tox.toml``, and the ``[tool:pytest]``/``[pytest]`` (pytest's) and
  ``[tox:tox]``/``[testenv...]`` (tox's) sections of ``setup.cfg`` and the ``[tool.pytest...]``/``[tool.tox...]``
  tables of ``pyproject.toml`` (the rest of those files is graded: the sections are put
  back as the base has them, checked with ``configparser``/``tomllib``; a file whose sections cannot be
  separated is left out whole; ``setup.cfg`` is also read with ``iniconfig``, pytest's own parser, which
  splits lines where ``configparser`` does not), and the repository scripts the task's test command runs
  (``bin/test``, ``./tests/runtests.py``: rows graded from the runner's log would believe its output);
- what Python runs at start-up or import time without being imported by name: ``sitecustomize.py``,
  ``usercustomize.py``, ``*.pth``;
- package metadata (``*.dist-info``, ``*.egg-info``, ``*.egg-link``, ``entry_points.txt``, ``PKG-INFO``),
  bytecode (``__pycache__``, ``*.pyc``/``*.pyo``), tool caches (``.pytest_cache``, ``.hypothesis``, ...), git
  metadata (``.gitattributes``, ``.gitmodules``), native extension modules (``*.so``, ``*.pyd``, ``*.dylib``:
  code no review can read), fifos and devices;
- a new module or package named like a module the test run imports from outside the repository (the
  standard library, pytest, site-packages) in a directory that can be on ``sys.path`` (one that is not a
  package): it would shadow it;
- a path git refuses to record (a component that git reads as ``.git``: any case, trailing dots or spaces,
  ``git~1``; git's ``verify_path``): no honest fix has one, and it would fail recording the graded diff;
- a changed file over ``max_file_bytes``; changes past ``max_files``/``max_total_bytes`` (edits of the base's
  files first, then new files, smallest first);
- a file or symbolic link where grading keeps a directory (e.g. ``tests`` replaced by a link), or a path
  under something grading keeps as a file.

``select_changes`` returns the graded changes and the left-out list; it runs nothing.
"""

from __future__ import annotations

import configparser
import posixpath
import re
import shlex
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

import tomllib
from lightswe.envs.agent_diff import PATH_MAX, SPECIAL, SYMLINK, TOO_DEEP, Change, Entry, blob_id

TEST_DIR_NAMES = frozenset({"test", "tests", "testing"})
RUNNER_CONFIG = frozenset({"pytest.ini", ".pytest.ini", "pytest.toml", ".pytest.toml", "tox.ini", "tox.toml"})
SITE_FILES = frozenset({"sitecustomize.py", "usercustomize.py"})
CACHE_DIRS = frozenset({"__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache", ".tox",
                        ".nox", ".cache"})
GIT_METADATA = frozenset({".gitattributes", ".gitmodules"})
NATIVE_SUFFIXES = (".so", ".pyd", ".dylib")
METADATA_FILES = frozenset({"entry_points.txt", "PKG-INFO"})
# Always treated as imported from outside the repository, whatever the image lists.
RUNNER_MODULES = frozenset({"pytest", "_pytest", "py", "pluggy", "iniconfig", "sitecustomize", "usercustomize"})


@dataclass(frozen=True, slots=True)
class LeftOut:
    """A path of the agent's change that grading did not apply, and why."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class Scope:
    """What the task protects: its test paths, its test directories, names the test run imports from outside."""

    test_paths: frozenset[str]
    test_dirs: tuple[str, ...]
    outside_modules: frozenset[str] = RUNNER_MODULES
    runner_scripts: frozenset[str] = frozenset()  # repository scripts the test command runs (sympy's bin/test)


def command_scripts(command: str) -> set[str]:
    """Repository-relative files a shell test command names (``bin/test``, ``./tests/runtests.py``,
    ``python run_tests.py``): the runner reads them, and for rows graded from the log (SWE-bench's parsers)
    an edited runner could print passing lines for tests that never ran. Options, ``KEY=VALUE`` assignments,
    absolute paths and words without a ``/`` or ``.py`` are not files of the repository."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        words = command.split()
    found = set()
    for word in words:
        word = word.split("::", 1)[0]  # a pytest node id names its file
        if word.startswith(("-", "/", "$", "~")) or "=" in word:
            continue
        if "/" in word or word.endswith(".py"):
            path = posixpath.normpath(word)
            if not path.startswith("..") and path != ".":
                found.add(path)
    return found


def patch_paths(patch: str) -> set[str]:
    """Every path a unified (git) diff reads or writes."""
    found = set()
    for match in re.finditer(r"^(?:---|\+\+\+) (?:[ab]/)?(.+?)\t?$", patch, re.MULTILINE):
        if match.group(1) != "/dev/null":
            found.add(match.group(1).strip())
    for match in re.finditer(r"^(?:rename|copy) (?:from|to) (.+)$", patch, re.MULTILINE):
        found.add(match.group(1).strip())
    return found


def patch_creates_and_deletes(patch: str) -> tuple[set[str], set[str]]:
    """(paths a unified (git) diff creates, paths it deletes): ``--- /dev/null``, ``+++ /dev/null``, renames
    and copies. What the task's ``test_patch`` adds is part of the graded tree (its tests are the task's)."""
    created, deleted = set(), set()
    old = None
    for line in patch.splitlines():
        if line.startswith("--- "):
            old = re.sub(r"^(?:a/)?", "", line[4:].split("\t")[0].strip())
        elif line.startswith("+++ ") and old is not None:
            new = re.sub(r"^(?:b/)?", "", line[4:].split("\t")[0].strip())
            if old == "/dev/null" and new != "/dev/null":
                created.add(new)
            elif new == "/dev/null":
                deleted.add(old)
            old = None
        elif line.startswith("rename from "):
            deleted.add(line.split(" ", 2)[2].strip())
        elif line.startswith(("rename to ", "copy to ")):
            created.add(line.split(" ", 2)[2].strip())
    return created, deleted - created


def task_scope(instance, outside_modules: Iterable[str] = ()) -> Scope:
    """The :class:`Scope` of a :class:`~lightswe.tasks.instance.TaskInstance`."""
    paths = set(instance.test_files)
    paths.update(test.split("::", 1)[0] for test in [*instance.FAIL_TO_PASS, *instance.PASS_TO_PASS])
    paths.update(patch_paths(instance.test_patch or ""))
    dirs = set()
    for path in paths:
        parents = PurePosixPath(path).parents
        for parent in list(parents)[:-1]:  # nearest first; '.' excluded
            if parent.name in TEST_DIR_NAMES:
                dirs.add(str(parent))
                break
    return Scope(test_paths=frozenset(paths), test_dirs=tuple(sorted(dirs)),
                 outside_modules=frozenset(outside_modules) | RUNNER_MODULES,
                 runner_scripts=frozenset(command_scripts(getattr(instance, "test_command", "") or "")))


# ------------------------------------------------------------------------ test-runner sections of config files
_INI_HEADER = re.compile(rb"^\[([^\]\r\n]*)\]", re.MULTILINE)
_TOML_HEADER = re.compile(rb"^[ \t]*\[\[?([^\]\r\n]*)\]\]?[ \t]*(?:#[^\r\n]*)?\r?$", re.MULTILINE)


def _sections(data: bytes, header: re.Pattern) -> list[tuple[str | None, bytes]]:
    starts = [(m.start(), m.group(1).decode("utf-8", "replace")) for m in header.finditer(data)]
    out: list[tuple[str | None, bytes]] = [(None, data[: starts[0][0] if starts else len(data)])]
    for i, (start, name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(data)
        out.append((name, data[start:end]))
    return out


def _is_ini_runner(name: str | None) -> bool:
    """pytest's sections of ``setup.cfg``, and tox's (``[tox:tox]``, ``[testenv]``, ``[testenv:NAME]``: the
    commands and environment of rows run through tox)."""
    if name is None:
        return False
    name = name.strip()
    return name in ("tool:pytest", "pytest", "tox:tox") or name == "testenv" or name.startswith("testenv:")


def _is_toml_runner(name: str | None) -> bool:
    if name is None:
        return False
    key = re.sub(r"[\s\"']", "", name)
    return any(key == f"tool.{tool}" or key.startswith(f"tool.{tool}.") for tool in ("pytest", "tox"))


def _splice(old: bytes, new: bytes, header: re.Pattern, is_runner: Callable[[str | None], bool]) -> bytes:
    """``new`` with its runner sections replaced by ``old``'s (old ones it lacks appended)."""
    old_runner = [(n, t) for n, t in _sections(old, header) if is_runner(n)]
    used: set[int] = set()
    parts = []
    for name, text in _sections(new, header):
        if not is_runner(name):
            parts.append(text)
            continue
        for i, (old_name, old_text) in enumerate(old_runner):
            if i not in used and old_name.strip() == name.strip():
                used.add(i)
                parts.append(old_text if old_text.endswith(b"\n") else old_text + b"\n")
                break
    for i, (_, old_text) in enumerate(old_runner):
        if i not in used:
            if parts and not parts[-1].endswith(b"\n"):
                parts.append(b"\n")
            parts.append(old_text if old_text.endswith(b"\n") else old_text + b"\n")
    return b"".join(parts)


def _ini(data: bytes) -> tuple[dict, dict] | None:
    parser = configparser.ConfigParser(strict=False, interpolation=None, default_section="\0none")
    try:
        parser.read_string(data.decode("utf-8", "replace"))
    except (configparser.Error, ValueError, RecursionError, MemoryError):  # the agent's bytes: any failure
        return None
    runner = {s: dict(parser[s]) for s in parser.sections() if _is_ini_runner(s)}
    rest = {s: dict(parser[s]) for s in parser.sections() if not _is_ini_runner(s)}
    return runner, rest


def _toml(data: bytes) -> tuple[object, dict] | None:
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except (ValueError, RecursionError, MemoryError):  # TOMLDecodeError, UnicodeDecodeError; tomllib recurses
        return None  # per nested array/table: `a = [[[...` 1,000 deep was a RecursionError out of grade()
    tool = dict(parsed.get("tool", {})) if isinstance(parsed.get("tool"), dict) else parsed.get("tool")
    runner = ({name: tool.pop(name) for name in ("pytest", "tox") if name in tool} or None) \
        if isinstance(tool, dict) else None
    rest = {**parsed, "tool": tool} if "tool" in parsed else parsed
    if rest.get("tool") == {} and "tool" in parsed and set(parsed["tool"]) <= {"pytest", "tox"}:
        rest = {k: v for k, v in rest.items() if k != "tool"}
    return runner, rest


def keep_outside_runner_sections(name: str, old: bytes, new: bytes) -> bytes | None:
    """``new`` with the test-runner sections of ``old`` (``setup.cfg`` or ``pyproject.toml``); None when they
    cannot be separated (a parse fails, or the spliced file does not read back as old sections + new rest)."""
    header, is_runner, parse = ((_INI_HEADER, _is_ini_runner, _ini) if name == "setup.cfg"
                                else (_TOML_HEADER, _is_toml_runner, _toml))
    merged = _splice(old, new, header, is_runner)
    got, want_old, want_new = parse(merged), parse(old), parse(new)
    if got is None or want_old is None or want_new is None:
        return None
    if got[0] != want_old[0] or got[1] != want_new[1]:
        return None
    if name == "setup.cfg" and _pytest_ini_runner(merged) != _pytest_ini_runner(old):
        return None  # pytest's own parser reads a runner section that configparser does not (e.g. after a \f)
    return merged


def _pytest_ini_runner(data: bytes) -> object:
    """The ``[tool:pytest]`` section of a ``setup.cfg`` as pytest reads it: with ``iniconfig`` (pytest's
    parser: ``str.splitlines``, so a form feed or U+2028 starts a line that ``configparser`` never sees), from
    a file opened in text mode (universal newlines). An exception's type when it does not parse."""
    import iniconfig

    try:
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        parsed = iniconfig.IniConfig("setup.cfg", data=text)
    except Exception as err:  # noqa: BLE001 - pytest fails on this file too; compare the failure
        return type(err).__name__
    return {name: dict(parsed[name].items()) for name in parsed.sections if name in ("tool:pytest", "pytest")}


# ------------------------------------------------------------------------------------------------ selection
_TEST_PACKAGE = re.compile(r"test_\w*|\w*_test")  # a folder named like a test module (a package name)
_GIT_DIR_ALIASES = re.compile(r"(?i)^(?:\.git[. ]*|git~1|\.git:.*)$")


def git_refuses(path: str) -> bool:
    """True when git will not record ``path``: a component it treats as ``.git`` (git's ``verify_path`` with
    ``core.protectNTFS``, on by default: any case, trailing dots/spaces, the 8.3 name ``git~1``, an NTFS
    stream), an empty, ``.`` or ``..`` component."""
    return any(not part or part in (".", "..") or _GIT_DIR_ALIASES.match(part) for part in path.split("/"))


def _reason(change: Change, scope: Scope, tree_paths: Collection[str], max_file_bytes: int,
            folders: dict[str, str] | None = None) -> str:
    path = change.path
    parts = path.split("/")
    name = parts[-1]
    if change.new is not None and change.new.mode == TOO_DEEP:
        return (f"a folder too deep for the engine's archive: paths past {PATH_MAX} bytes on the host are dropped "
                "without a word, so what it holds was not read (nothing under it is graded)")
    if git_refuses(path):
        return "a path git refuses to record (a component git reads as .git)"
    if path in scope.test_paths:
        return "a test file of the task"
    if path in scope.runner_scripts:
        return "a script the task's test command runs (the test runner)"
    for folder in scope.test_dirs:
        if path.startswith(folder + "/"):
            return f"in the task's test directory {folder}/"
    if name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py")):
        return "a test module (test_*.py / *_test.py)"
    package = next((p for p in parts[:-1] if _TEST_PACKAGE.fullmatch(p)), None)
    if package:  # a package of that name is imported as the test module (a redirected __path__ reaches it)
        return f"in a package named like a test module ({package}/)"
    if name == "conftest.py":
        return "conftest.py (test configuration)"
    if name in RUNNER_CONFIG:
        return "test-runner configuration"
    if name in SITE_FILES:
        return "site customization (runs at interpreter start)"
    if name.endswith(".pth"):
        return "path configuration file (.pth: runs at interpreter start)"
    if any(p.endswith((".dist-info", ".egg-info")) for p in parts) or name.endswith(".egg-link") \
            or name in METADATA_FILES:
        return "package metadata"
    if "__pycache__" in parts or name.endswith((".pyc", ".pyo")):
        return "bytecode"
    cache = next((p for p in parts[:-1] if p in CACHE_DIRS), None)
    if cache:
        return f"tool cache ({cache})"
    if name in GIT_METADATA:
        return "git metadata"
    if name.endswith(NATIVE_SUFFIXES) or ".so." in name:
        return "native extension module (compiled code)"
    new = change.new
    if new is not None and new.mode == SPECIAL:
        return "not a regular file or symbolic link"
    if new is not None and new.data is None:
        if new.size > max_file_bytes:
            return f"{new.size} bytes, over the {max_file_bytes}-byte cap for a changed file"
        return "past the cap on the bytes of changed files grading reads"
    if change.old is None:
        shadowed = _shadowed(path, scope.outside_modules, tree_paths, folders)
        if shadowed:
            return f"would shadow the module {shadowed!r} that the test run imports from outside the repository"
    return ""


def _shadowed(path: str, outside: Collection[str], tree_paths: Collection[str],
              cache: dict[str, str] | None = None) -> str:
    """The outside module a new file would shadow: a component importable at top level under that name.

    ``cache`` (per call of :func:`select_changes`): the answer for each folder, so that a tree of thousands of
    folders 1,400 deep costs each folder once (every file's prefixes, joined anew, took two hours for 262,144)."""
    cache = {} if cache is None else cache
    folder, _, name = path.rpartition("/")
    found = _folder_shadows(folder, outside, tree_paths, cache) if folder else ""
    if found:
        return found
    if folder and f"{folder}/__init__.py" in tree_paths:
        return ""  # inside a package: importable only under the package's name
    if not name.endswith((".py", ".pyw")) and "." in name:
        return ""  # a data file cannot be imported
    module = name.split(".", 1)[0]
    return module if module in outside else ""


def _folder_shadows(folder: str, outside: Collection[str], tree_paths: Collection[str], cache: dict[str, str]) -> str:
    """The first component of ``folder`` (top down) importable at top level and named like an outside module."""
    pending = []
    while folder and folder not in cache:  # up to the nearest folder already answered (no recursion: depth)
        pending.append(folder)
        folder = folder.rpartition("/")[0]
    found = cache.get(folder, "") if folder else ""
    for current in reversed(pending):
        if not found:
            parent, _, name = current.rpartition("/")
            if name in outside and not (parent and f"{parent}/__init__.py" in tree_paths):
                found = name
        cache[current] = found
    return found


def _blocked_by_file(path: str, files: Collection[str], cache: dict[str, str] | None = None) -> str:
    """An ancestor of ``path`` that is a file (or link) in ``files`` (the topmost); ``cache`` as for
    :func:`_shadowed`."""
    cache = {} if cache is None else cache
    folder = path.rpartition("/")[0]
    pending = []
    while folder and folder not in cache:
        pending.append(folder)
        folder = folder.rpartition("/")[0]
    found = cache.get(folder, "") if folder else ""
    for current in reversed(pending):
        if not found and current in files:
            found = current
        cache[current] = found
    return found


def select_changes(changes: list[Change], scope: Scope, *, base: dict[str, Entry], tree_paths: Collection[str],
                   read_base: Callable[[str], bytes], max_file_bytes: int = 16 * 1024 * 1024,
                   max_files: int = 5_000, max_total_bytes: int = 128 * 1024 * 1024
                   ) -> tuple[list[Change], list[LeftOut]]:
    """Split ``changes`` into what grading applies and what it leaves out (module docstring: the rules).

    ``read_base(path)`` gives the base bytes of a file (for ``setup.cfg``/``pyproject.toml`` edits).
    """
    kept: list[Change] = []
    left: list[LeftOut] = []
    folders: dict[str, str] = {}  # _shadowed's answer per folder
    for change in changes:
        reason = _reason(change, scope, tree_paths, max_file_bytes, folders)
        if reason:
            left.append(LeftOut(change.path, reason))
            continue
        name = change.path.rsplit("/", 1)[-1]
        if name in ("setup.cfg", "pyproject.toml"):
            change, note = _config_change(change, name, read_base)
            if note is not None:
                left.append(note)
            if change is None:
                continue
        kept.append(change)
    kept, more = _drop_conflicts(kept, base, scope)
    left += more
    kept, more = _cap(kept, max_files, max_total_bytes)
    left += more
    return kept, sorted(left, key=lambda x: x.path)


def _config_change(change: Change, name: str, read_base: Callable[[str], bytes]
                   ) -> tuple[Change | None, LeftOut | None]:
    section = ("[tool:pytest] section (and tox's [tox:tox]/[testenv])" if name == "setup.cfg"
               else "[tool.pytest] tables (and tox's [tool.tox])")
    old = read_base(change.path) if change.old is not None and change.old.mode != SYMLINK else b""
    if change.new is None:
        runner = (_ini if name == "setup.cfg" else _toml)(old)
        if runner is not None and not runner[0]:
            return change, None  # deleting a file that holds no runner configuration
        return None, LeftOut(change.path, f"deletes the test-runner configuration ({section})")
    if change.new.mode == SYMLINK:
        return None, LeftOut(change.path, "test-runner configuration file replaced by a symbolic link")
    merged = keep_outside_runner_sections(name, old, change.new.data)
    if merged is None:
        return None, LeftOut(change.path, f"its {section} (test-runner configuration) could not be separated "
                                          "from the rest; the whole file is left out")
    if merged == change.new.data:
        return change, None
    note = LeftOut(change.path, f"its {section} (test-runner configuration); the rest of the file is graded")
    if change.old is not None and blob_id(merged) == change.old.sha and change.old.mode == change.new.mode:
        return None, note
    entry = replace(change.new, data=merged, sha=blob_id(merged), size=len(merged))
    return Change(path=change.path, old=change.old, new=entry), note


def _drop_conflicts(kept: list[Change], base: dict[str, Entry], scope: Scope
                    ) -> tuple[list[Change], list[LeftOut]]:
    """Leave out kept files/links where grading keeps a directory, and paths under what it keeps as a file."""
    left: list[LeftOut] = []
    while True:
        deleted = {c.path for c in kept if c.new is None}
        must_exist = (set(base) - deleted) | set(scope.test_paths)
        directories = {str(p) for path in must_exist for p in PurePosixPath(path).parents} - {"."}
        # the task's test paths are files grading keeps (test_patch may create them): nothing may sit under one
        final_files = ((set(base) - deleted) | {c.path for c in kept if c.new is not None}
                       | (set(scope.test_paths) - directories))
        dropped, blocked = [], {}  # _blocked_by_file's answer per folder, for this round's files
        for change in kept:
            if change.new is None:
                continue
            if change.path in directories:
                dropped.append((change, "a file or link where grading keeps a directory"))
                continue
            blocker = _blocked_by_file(change.path, final_files, blocked)
            if blocker:
                what = "a test file of the task" if blocker in scope.test_paths else "which grading keeps as a file"
                dropped.append((change, f"under {blocker}, {what}"))
        if not dropped:
            return kept, left
        gone = {id(c) for c, _ in dropped}
        kept = [c for c in kept if id(c) not in gone]
        left += [LeftOut(c.path, why) for c, why in dropped]


def _cap(kept: list[Change], max_files: int, max_total_bytes: int) -> tuple[list[Change], list[LeftOut]]:
    order = sorted(kept, key=lambda c: (c.old is None, c.new.size if c.new else 0, c.path))
    out, left, total = [], [], 0
    for change in order:
        size = change.new.size if change.new else 0
        if len(out) >= max_files or total + size > max_total_bytes:
            left.append(LeftOut(change.path, f"past the grading caps ({max_files} files, {max_total_bytes} bytes "
                                              "of changed files); edits of the base's files come first"))
            continue
        out.append(change)
        total += size
    return sorted(out, key=lambda c: c.path), left
