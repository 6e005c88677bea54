"""What grading may see, the hardened pytest command and the runner-reactive code check (no Docker needed)."""

from __future__ import annotations

import shlex
import subprocess
import sys
import textwrap

import pytest
from lightswe.envs.agent_diff import REGULAR, SYMLINK, Change, Entry, blob_id, changes
from lightswe.envs.graded_files import Scope, keep_outside_runner_sections, select_changes
from lightswe.envs.hack_check import findings, suspicious_code
from lightswe.envs.pytest_run import pytest_command
from lightswe.errors import UserInputError


def entry(data: bytes, mode: str = REGULAR) -> Entry:
    return Entry(mode=mode, sha=blob_id(data), size=len(data), data=data)


def test_blob_id_is_gits(tmp_path):
    (tmp_path / "f").write_bytes(b"\x00\xffbinary\n")
    expected = subprocess.run(["git", "hash-object", str(tmp_path / "f")], capture_output=True, text=True, check=True).stdout.strip()
    assert blob_id(b"\x00\xffbinary\n") == expected


def test_changes_see_bytes_modes_links_and_deletions():
    base = {"a.py": entry(b"x"), "b.py": entry(b"y"), "c.sh": entry(b"z"), "link": entry(b"a.py", SYMLINK)}
    tree = {"a.py": entry(b"x"), "c.sh": entry(b"z", "100755"), "link": entry(b"b.py", SYMLINK), "new": entry(b"")}
    found = {c.path: c.kind for c in changes(base, tree)}
    assert found == {"b.py": "deleted", "c.sh": "mode", "link": "modified", "new": "added"}


SCOPE = Scope(test_paths=frozenset({"pkg/tests/test_a.py"}), test_dirs=("pkg/tests",),
              outside_modules=frozenset({"json", "pytest", "_pytest"}))


def select(tree: dict[str, bytes | None], base: dict[str, bytes] | None = None):
    base = base or {"pkg/__init__.py": b"", "pkg/mod.py": b"x = 1\n", "pkg/tests/test_a.py": b"def test(): pass\n",
                    "setup.cfg": b"[metadata]\nname = pkg\n\n[tool:pytest]\naddopts = -q\n"}
    base_entries = {p: Entry(mode=REGULAR, sha=blob_id(d), size=len(d)) for p, d in base.items()}
    found = [Change(path=p, old=base_entries.get(p), new=None if d is None else entry(d)) for p, d in tree.items()]
    paths = set(base) | {p for p, d in tree.items() if d is not None}
    kept, left = select_changes(found, SCOPE, base=base_entries, tree_paths=paths, read_base=lambda p: base[p])
    return {c.path: c for c in kept}, {x.path: x.reason for x in left}


@pytest.mark.parametrize("path, reason", [
    ("pkg/tests/test_a.py", "a test file of the task"),
    ("pkg/tests/helpers.py", "test directory"),
    ("other/test_b.py", "test module"),
    ("pkg/conftest.py", "conftest.py"),
    ("tox.ini", "test-runner configuration"),
    ("pkg/.pytest.ini", "test-runner configuration"),
    ("usercustomize.py", "site customization"),
    ("x.pth", ".pth"),
    ("evil-1.0.dist-info/entry_points.txt", "package metadata"),
    ("pkg.egg-info/PKG-INFO", "package metadata"),
    ("pkg/__pycache__/mod.cpython-311.pyc", "bytecode"),
    ("pkg/mod.pyc", "bytecode"),
    (".hypothesis/examples/x", "tool cache"),
    (".gitattributes", "git metadata"),
    ("pkg/_speedups.cpython-311-x86_64-linux-gnu.so", "native extension"),
    ("json.py", "would shadow the module 'json'"),
    ("pytest/__init__.py", "would shadow the module 'pytest'"),
    ("scripts/_pytest.py", "would shadow the module '_pytest'"),
    ("shadow/tests/test_a/__init__.py", "in a package named like a test module (test_a/)"),
    ("pkg/a_test/mod.py", "in a package named like a test module (a_test/)"),
])
def test_left_out_with_the_reason(path, reason):
    kept, left = select({path: b"print(1)\n", "pkg/mod.py": b"x = 2\n"})
    assert reason in left[path] and path not in kept and "pkg/mod.py" in kept


def test_new_module_inside_a_package_is_not_shadowing():
    kept, left = select({"pkg/json.py": b"x = 1\n"})
    assert "pkg/json.py" in kept and not left


def test_setup_cfg_edit_outside_the_runner_section_is_graded():
    new = b"[metadata]\nname = pkg\nversion = 2\n\n[tool:pytest]\naddopts = -p evil\n\n[flake8]\nmax = 1\n"
    kept, left = select({"setup.cfg": new})
    assert kept["setup.cfg"].new.data == b"[metadata]\nname = pkg\nversion = 2\n\n[tool:pytest]\naddopts = -q\n[flake8]\nmax = 1\n"
    assert "[tool:pytest] section" in left["setup.cfg"]
    kept, left = select({"setup.cfg": b"[metadata]\nname = pkg\n\n[tool:pytest]\naddopts = -q\n[x]\ny = 1\n"})
    assert "setup.cfg" in kept and not left  # nothing of the runner section changed
    kept, left = select({"setup.cfg": None})
    assert "deletes the test-runner configuration" in left["setup.cfg"]


def test_pyproject_runner_tables_are_put_back():
    old = b'[project]\nname = "p"\n\n[tool.pytest.ini_options]\naddopts = "-q"\n'
    new = b'[project]\nname = "p"\nversion = "2"\n\n[tool.pytest.ini_options]\naddopts = "-p evil"\n[tool.black]\nx = 1\n'
    merged = keep_outside_runner_sections("pyproject.toml", old, new)
    assert b'version = "2"' in merged and b'addopts = "-q"' in merged and b"evil" not in merged and b"black" in merged
    dotted = b'[project]\nname = "p"\n[tool]\npytest.ini_options.addopts = "-p evil"\n'
    assert keep_outside_runner_sections("pyproject.toml", old, dotted) is None  # cannot separate: left out whole
    added = keep_outside_runner_sections("pyproject.toml", b"", b'[tool.pytest.ini_options]\naddopts = "-x"\n[a]\nb = 1\n')
    assert added is not None and b"addopts" not in added and b"[a]" in added


def test_link_replacing_the_test_directory_is_left_out():
    _, left = select({"pkg/tests/test_a.py": None, "pkg/tests": b"../fake"})
    assert "keeps a directory" in left["pkg/tests"] and "pkg/tests/test_a.py" in left


def test_pytest_command_is_isolated_and_loads_only_named_plugins():
    command = pytest_command("env A=1 python -m pytest -p no:cacheprovider -o addopts= -q", ["t.py::a b"],
                             "/tmp/j.xml", plugins=["pytest_timeout"])
    assert shlex.split(command) == ["env", "A=1", "python", "-I", "-B", "-m", "pytest", "-p", "pytest_timeout",
                                    "-p", "no:cacheprovider", "-o", "addopts=", "-q", "-o", "junit_family=xunit1",
                                    "--junitxml=/tmp/j.xml", "t.py::a b"]
    assert shlex.split(pytest_command("pytest -x"))[:6] == ["python3", "-I", "-B", "-m", "pytest", "-p"]
    with pytest.raises(UserInputError, match="must run pytest"):
        pytest_command("tox -e py311")


def test_isolated_pytest_ignores_a_shadowing_pytest_module(tmp_path):
    (tmp_path / "pytest.py").write_text("raise SystemExit('shadowed')\n")
    (tmp_path / "test_x.py").write_text("def test_x():\n    assert True\n")
    command = pytest_command(f"{sys.executable} -m pytest -q", ["test_x.py"], str(tmp_path / "j.xml"))
    done = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr


# ------------------------------------------------------------------------------------------------ hack check
@pytest.mark.parametrize("source, what", [
    ("import pytest\n", "imports the test framework pytest"),
    ("from _pytest.reports import TestReport\n", "imports the test framework _pytest.reports"),
    ("import sys\nif 'pytest' in sys.modules: x = 1\n", "names the test runner"),
    ("import os\nx = os.environ.get('PYTEST_CURRENT_TEST')\n", "names the test runner"),
    ("import sys\nargs = sys.argv\n", "reads the command line"),
    ("def pytest_runtest_makereport(item, call):\n    pass\n", "defines the pytest hook"),
    ("import os\nos._exit(0)\n", "os._exit"),
    ("import atexit\natexit.register(print)\n", "registers an exit handler"),
    ("import sys\nf = sys._getframe(1)\n", "inspects the call stack"),
    ("x = open('tests/test_a.py').read()\n", "names a test file"),
    ("import os\nd = os.path.join(os.path.dirname(__file__), 'tests')\n", "names a test file or directory"),
    ("m = __import__('py' + 'test')\n", "imports the test framework pytest"),
    ("import builtins\nbuiltins.AssertionError = Exception\n", "replaces builtins.AssertionError"),
    ("def f(report):\n    report.outcome = 'passed'\n", "sets a test outcome"),
    ("import sys\nsys.meta_path.insert(0, object())\n", "changes the import system"),
    ("import gc\nobjs = gc.get_objects()\n", "walks the garbage collector"),
    ("exec(compile(data, 'x', 'exec'))\n", "runs dynamically built code"),
])
def test_findings(source, what):
    assert any(what in w for _, w in findings(source)), findings(source)


def test_only_what_the_change_adds_is_reported():
    old = b"import sys\n\ndef f():\n    return sys.argv\n"
    new = b"import sys\n\ndef f():\n    return sys.argv[1:]\n"
    assert suspicious_code([("pkg/cli.py", old, new)]) == []
    assert suspicious_code([("pkg/cli.py", old, new + b"\ndef g():\n    return sys.argv\n")]) == \
        ["pkg/cli.py:7: reads the command line (sys.argv)"]


def test_honest_code_is_not_flagged():
    honest = textwrap.dedent('''
        """Uses pytest-like words only in docstrings: pytest, unittest."""
        import itertools

        def nth(n, seq):
            """Return the nth item (see tests/test_itertoolz.py)."""
            return next(itertools.islice(seq, n, None))

        if __name__ == "__main__":
            import doctest
            doctest.testmod()
    ''')
    assert findings(honest) == []
    assert findings("import pytest\n", own_modules={"pytest"}) == []  # pytest's own repository


# ------------------------------------------------------------------ found by the attack pass (test_reward_attacks)
@pytest.mark.parametrize("source, what", [
    ("import os as _o\ngetattr(_o, '_ex' + 'it')(0)\n", "os._exit"),
    ("import sys\ngetattr(sys, 'mod' 'ules')['x']\n", "sys.modules"),
    ("import os\nf = getattr(os, name)\n", "named at run time"),
    ("import os\nf = getattr(os, f'{name}')\n", "named at run time"),
    ("import threading\nthreading.main_thread().join()\n", "main thread"),
    ("import weakref\nweakref.finalize(object(), print)\n", "weakref.finalize"),
    ("s = s.replace('<failure', '')\n", "names the test runner"),
    ("pytest_plugins = ['evil']\n", "pytest_plugins"),
    ("def setup_module(module):\n    pass\n", "setup_module"),
    ("f.__code__ = g.__code__\n", "code object"),
])
def test_findings_of_the_attack_pass(source, what):
    assert any(what in w for _, w in findings(source)), findings(source)


def test_attack_pass_checks_spare_ordinary_code():
    ordinary = ("x = getattr(obj, 'value', None)\nsetattr(self, name, 1)\nopen(p, errors='replace')\n"
                "class A:\n    def setup_module(self):\n        pass\n")
    assert findings(ordinary) == []


@pytest.mark.parametrize("path, refused", [
    ("pkg/.GIT/x", True), (".Git", True), ("a/.git. /b", True), ("GIT~1/x", True), ("x/.git:stream", True),
    ("a/.gitignore", False), (".github/workflows/ci.yml", False), ("pkg/mod.py", False),
])
def test_paths_git_refuses_are_left_out(path, refused):
    from lightswe.envs.graded_files import git_refuses

    assert git_refuses(path) is refused
    _, left = select({path: b"x\n"})
    assert ("git refuses" in left.get(path, "")) is refused


@pytest.mark.parametrize("separator", [b"\x0c", b"\r", "\u2028".encode(), b"\x1c", b"\x85".decode("latin-1").encode()])
def test_runner_section_hidden_from_configparser_is_caught(separator):
    old = b"[metadata]\nname = pkg\n"
    new = old + b"\n[flake8]\nmax-line-length = 100" + separator + b"[tool:pytest]\naddopts = -p evil\n"
    assert keep_outside_runner_sections("setup.cfg", old, new) is None
    assert keep_outside_runner_sections("setup.cfg", old, old + b"\n[flake8]\nx = 1\n") is not None


@pytest.mark.parametrize("command, scripts", [
    ("PYTHONWARNINGS='ignore::UserWarning,ignore::SyntaxWarning' bin/test -C --verbose", {"bin/test"}),
    ("./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1", {"tests/runtests.py"}),
    ("python run_tests.py -v  # the repository's runner", {"run_tests.py"}),
    ("pytest -rA -p no:cacheprovider", set()),
    ("tox -e py39 -- tests/test_a.py::test_x", {"tests/test_a.py"}),
    ("python /usr/bin/runner ../outside.py", set()),
])
def test_the_test_commands_own_scripts_are_found(command, scripts):
    from lightswe.envs.graded_files import command_scripts

    assert command_scripts(command) == scripts


def test_an_edited_runner_script_is_left_out():
    """Rows graded from the runner's log (sympy's bin/test, Django's runtests.py): an agent that makes the
    runner print 'test_x ok' must not be believed, so the script the test command runs stays the base's."""
    from types import SimpleNamespace

    from lightswe.envs.graded_files import task_scope

    instance = SimpleNamespace(test_files=["sympy/core/tests/test_basic.py"], FAIL_TO_PASS=[], PASS_TO_PASS=[],
                               test_patch="", test_command="PYTHONWARNINGS='ignore' bin/test -C --verbose")
    scope = task_scope(instance)
    base = {"bin/test": b"#!/usr/bin/env python\nrun()\n", "sympy/core/basic.py": b"x = 1\n",
            "sympy/core/tests/test_basic.py": b"def test_x(): pass\n"}
    tree = {**base, "bin/test": b"#!/usr/bin/env python\nprint('test_x ok')\n", "sympy/core/basic.py": b"x = 2\n"}
    kept, left = select_changes(changes({k: entry(v) for k, v in base.items()},
                                        {k: entry(v) for k, v in tree.items()}), scope,
                                base={k: entry(v) for k, v in base.items()}, tree_paths=set(tree),
                                read_base=lambda p: base[p])
    assert [c.path for c in kept] == ["sympy/core/basic.py"]
    assert [(x.path, x.reason) for x in left] == [("bin/test", "a script the task's test command runs (the test runner)")]


@pytest.mark.parametrize("source", [
    "print('test_nth ... ok')\n",  # unittest / Django verbose, read by SWE-bench's Django parser
    "import sys\nsys.stdout.write('test_x (utils.tests.T) ... ok\\n')\n",
    "print('PASSED tests/test_a.py::test_x')\n",  # pytest -rA summary line
    "print('    test_basic ok')\n",  # sympy bin/test
])
def test_printed_verdict_lines_are_flagged(source):
    """Rows graded from the runner's log: graded code that prints a passing line could pass a test unrun."""
    assert any("verdict line" in w for _, w in findings(source)), findings(source)


@pytest.mark.parametrize("source", ["print('all tests passed')\n", "log('FAILED to open file')\n",
                                    "msg = 'running the suite ... done'\n"])
def test_ordinary_status_messages_are_not_verdict_lines(source):
    assert not any("verdict line" in w for _, w in findings(source)), findings(source)


@pytest.mark.parametrize("name, old, new, kept", [
    ("setup.cfg", b"[metadata]\nname = pkg\n\n[testenv]\ncommands = pytest\n",
     b"[metadata]\nname = pkg2\n\n[testenv]\ncommands = python -c 'print(1)'\nsetenv = PYTHONPATH=/x\n",
     b"[metadata]\nname = pkg2\n\n[testenv]\ncommands = pytest\n"),
    ("setup.cfg", b"[metadata]\nname = pkg\n", b"[metadata]\nname = pkg\n\n[tox:tox]\nenvlist = evil\n",
     None),
    ("pyproject.toml", b'[project]\nname = "pkg"\n\n[tool.tox]\nlegacy_tox_ini = "ok"\n',
     b'[project]\nname = "pkg2"\n\n[tool.tox]\nlegacy_tox_ini = "evil"\n\n[tool.tox.env.py]\ncommands = [["true"]]\n',
     b'[project]\nname = "pkg2"\n\n[tool.tox]\nlegacy_tox_ini = "ok"\n'),
    ("pyproject.toml", b'[project]\nname = "pkg"\n', b'[project]\nname = "pkg"\n\n[tool.black]\nline-length = 99\n',
     b'[project]\nname = "pkg"\n\n[tool.black]\nline-length = 99\n'),
], ids=["setup-cfg-testenv", "setup-cfg-new-tox", "pyproject-tool-tox", "pyproject-other-tool"])
def test_tox_sections_are_runner_configuration(name, old, new, kept):
    """tox runs the commands (and environment) of its sections: rows run through tox would run the change's
    ones. Kept as the base has them, the rest of the file graded (``tox.toml`` is left out whole)."""
    merged = keep_outside_runner_sections(name, old, new)
    if kept is None:  # a section the base lacks is dropped: the rest of the file is the base's
        assert merged is not None and b"tox:tox" not in merged
    else:
        assert merged == kept
    assert select({"tox.toml": b"[env.py]\ncommands = [['true']]\n"})[1]["tox.toml"] == "test-runner configuration"
