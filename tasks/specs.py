"""Install and test commands of a SWE-bench-family row, from the ``swebench`` package's per-version specs.

SWE-bench keeps, per repository and ``version``, the Python version, the dependencies, the install command,
extra set-up steps and the test command (``swebench.harness.constants.MAP_REPO_VERSION_TO_SPECS``), and a log
parser per repository (``swebench.harness.log_parsers.MAP_REPO_TO_PARSER``). This module translates a spec into
the row's ``python_version``, ``install_command``, ``test_command`` and ``log_parser`` without rewriting them:

- dependencies: ``packages`` = ``"requirements.txt"`` -> ``pip install -r`` of the first of SWE-bench's
  requirement paths (``MAP_REPO_TO_REQS_PATHS``) present in the tree; a package list -> ``pip install`` of it
  (conda names that are PyPI names); ``"environment.yml"`` -> the pip-installable entries of that file;
  ``pip_packages`` -> ``pip install`` (the pins today's PyPI no longer picks by default); then the repository's
  ``pre_install`` steps and ``install``, all in the tree (``/testbed``), with the source's own files only;
- tests: a pytest ``test_cmd`` runs as ``python -m pytest`` with its options and is graded from JUnit XML (full
  ids; published ids cut short are matched by :mod:`lightswe.tasks.test_ids`); any other runner (Django's
  ``runtests.py``, sympy's ``bin/test``) runs as written after the spec's ``eval_commands`` and is graded by
  SWE-bench's log parser of that repository (``log_parser``).

``swebench`` is an optional extra (``pip install 'lightswe[swebench]'``, versions 3 and 4 carry the specs); its
import takes about 2 s and happens only for rows that need it. Nothing here touches the network.
"""

from __future__ import annotations

import functools
import logging
import re
import shlex

from lightswe.tasks.instance import TaskFormatError, TaskInstance

log = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'lightswe[swebench]' (the SWE-bench package: per-version specs and log parsers)"
_PYTEST = re.compile(r"^((?:\w+=\S*\s+)*)(?:python\d?(?:\.\d+)? -m )?pytest(\s.*)?$", re.S)


class SpecError(TaskFormatError):
    """A row needs SWE-bench knowledge that is not available (package missing, unknown repo/version)."""


@functools.cache
def _swebench():
    """(MAP_REPO_VERSION_TO_SPECS, MAP_REPO_TO_REQS_PATHS, MAP_REPO_TO_INSTALL, MAP_REPO_TO_PARSER) or None."""
    try:
        from swebench.harness.constants import MAP_REPO_VERSION_TO_SPECS
        from swebench.harness.log_parsers import MAP_REPO_TO_PARSER
    except ImportError:
        return None
    from swebench.harness import constants

    return (MAP_REPO_VERSION_TO_SPECS, getattr(constants, "MAP_REPO_TO_REQS_PATHS", {}),
            getattr(constants, "MAP_REPO_TO_INSTALL", {}), MAP_REPO_TO_PARSER)


def available() -> bool:
    """Whether the ``swebench`` package with specs and parsers is installed."""
    return _swebench() is not None


def spec_for(repo: str, version: str) -> dict | None:
    """SWE-bench's spec of ``repo`` at ``version`` (a copy), or None (unknown, or swebench not installed)."""
    tables = _swebench()
    if tables is None or not version:
        return None
    spec = tables[0].get(repo, {}).get(str(version))
    return dict(spec) if spec else None


def log_parser(name: str):
    """SWE-bench's log parser of repository ``name``: ``(log: str, test_spec) -> {test id: status}``.

    Raises SpecError when swebench is missing or has no parser for ``name``.
    """
    tables = _swebench()
    if tables is None:
        raise SpecError(f"grading with the {name!r} log parser needs the swebench package; fix: {INSTALL_HINT}")
    parser = tables[3].get(name)
    if parser is None:
        raise SpecError(f"swebench has no log parser for {name!r}; known: {', '.join(sorted(tables[3])[:12])}...")
    return parser


def looks_pytest(ids: list[str]) -> bool:
    """Whether test ids are pytest node ids (``file.py::name``) rather than unittest/Django/sympy names."""
    return all("::" in t or t.endswith(".py") for t in ids)


def install_steps(instance: TaskInstance, spec: dict) -> list[str]:
    """Shell steps that install ``instance``'s environment in /testbed, per ``spec`` (see the module doc)."""
    tables = _swebench()
    reqs_paths = tables[1].get(instance.repo, []) if tables else []
    extra_install = tables[2].get(instance.repo) if tables else None
    steps: list[str] = []
    packages = spec.get("packages", "")
    if packages == "requirements.txt":
        candidates = " ".join(shlex.quote(p) for p in reqs_paths) or "requirements.txt"
        # All at once; if that fails (one package cannot build here, e.g. pywatchman for Django 5.0), one by
        # one, skipping and naming those that do not install: the tests that need them fail visibly later.
        steps.append(f'for f in {candidates}; do if [ -f "$f" ]; then sed -e "/^-e \\./d" -e "/^\\.\\[test/d" "$f" '
                     '> /tmp/lightswe-reqs.txt && (cd "$(dirname "$f")" && (python -m pip install -r '
                     '/tmp/lightswe-reqs.txt || while IFS= read -r line; do case "$line" in ""|"#"*) continue;; '
                     '-*) python -m pip install $line;; *) python -m pip install "$line";; esac || echo '
                     '"[lightswe] skipped a requirement that does not install here: $line"; done '
                     '< /tmp/lightswe-reqs.txt)); break; fi; done')
    elif packages == "environment.yml":
        steps.append("python - <<'EOF'\nimport re, subprocess, sys\ntext = open('environment.yml').read()\n"
                     "names = [m.strip() for m in re.findall(r'^\\s*-\\s+([A-Za-z0-9_.\\-\\[\\]<>=!~]+)\\s*$', text, re.M)]\n"
                     "names = [n for n in names if not n.startswith(('python', 'pip'))]\n"
                     "for name in names:\n    subprocess.run([sys.executable, '-m', 'pip', 'install', name])\nEOF")
    elif packages:
        steps.append("python -m pip install " + " ".join(shlex.quote(p) for p in packages.split()))
    if spec.get("pip_packages"):
        steps.append("python -m pip install " + " ".join(shlex.quote(p) for p in spec["pip_packages"]))
    if extra_install:
        steps.append(extra_install)
    steps += list(spec.get("pre_install", []))
    if spec.get("install"):
        steps.append(spec["install"])
    return steps


def test_command(spec: dict) -> tuple[str, bool]:
    """(command, is_pytest) for the spec's ``test_cmd`` with its ``eval_commands`` before it."""
    raw = spec.get("test_cmd", "")
    cmd = " && ".join(raw) if isinstance(raw, list) else str(raw)
    match = _PYTEST.match(cmd.strip())
    if match:
        options = (match.group(2) or "").strip()
        if "cacheprovider" not in options:
            options = ("-p no:cacheprovider " + options).strip()
        return f"{match.group(1)}python -m pytest {options}".strip(), True
    prefix = "".join(f"{step}; " for step in spec.get("eval_commands", []))
    return prefix + cmd, False


def apply_specs(instance: TaskInstance, *, keep: set[str] = frozenset(), where: str = "row") -> bool:
    """Fill ``instance``'s commands from SWE-bench's spec of its repo+version; fields in ``keep`` stay.

    Returns whether a spec was applied. Raises SpecError when the row's ids need a log parser (not pytest
    ids) and swebench is missing or does not know the row.
    """
    spec = spec_for(instance.repo, instance.version)
    if spec is None:
        if not looks_pytest([*instance.FAIL_TO_PASS, *instance.PASS_TO_PASS]) and "test_command" not in keep:
            if not available():
                raise SpecError(f"{where}: test ids such as {instance.FAIL_TO_PASS[0]!r} are not pytest ids and the "
                                f"row names no test_command; fix: {INSTALL_HINT}")
            raise SpecError(f"{where}: swebench has no spec for {instance.repo} version {instance.version!r} and "
                            f"the ids are not pytest ids; fix: give test_command and log_parser in the row")
        if instance.version and instance.environment_setup_commit and not available():
            log.warning("%s: no install_command/test_command in the row; the defaults (pip install -e ., pytest) "
                        "are used. For SWE-bench's per-version commands: %s", where, INSTALL_HINT)
        return False
    if "python_version" not in keep and spec.get("python"):
        instance.python_version = str(spec["python"])
    if "install_command" not in keep:
        steps = install_steps(instance, spec)
        instance.install_command = " && ".join(f"( {s} )" if "\n" not in s else s for s in steps) or \
            instance.install_command
    if "test_command" not in keep:
        command, is_pytest = test_command(spec)
        instance.test_command = command
        if "log_parser" not in keep:
            instance.log_parser = "" if is_pytest else instance.repo
    instance.metadata = {**instance.metadata, "spec": f"swebench:{instance.repo}@{instance.version}"}
    return True


def directives(instance: TaskInstance) -> list[str]:
    """What the runner is given to select tests: SWE-bench's test directives of the ``test_patch``.

    Without a test patch, Django-style ids ``test_x (module.Class)`` give ``module.Class``; other ids are
    passed as they are.
    """
    if instance.test_patch.strip():
        try:
            from swebench.harness.test_spec.python import get_test_directives
        except ImportError:
            get_test_directives = None
        if get_test_directives is not None:
            found = get_test_directives({"repo": instance.log_parser or instance.repo,
                                         "test_patch": instance.test_patch})
            if found:
                return found
    labels: list[str] = []
    for test in [*instance.FAIL_TO_PASS, *instance.PASS_TO_PASS]:
        match = re.fullmatch(r"(\w+) \(([\w.]+)\)", test.strip())
        label = match.group(2).removesuffix("." + match.group(1)) if match else test
        if label not in labels:
            labels.append(label)
    return labels
