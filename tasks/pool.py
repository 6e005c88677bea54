"""The curated pool: real pure-Python libraries whose PyPI source distributions carry a green test suite.

``tasks/data/pool.json`` pins each library by version *and* sha256 of its sdist (metadata only, never code)
and says how to install and test it offline in the base image: extra test dependencies, test paths, ignored
files, environment variables. :meth:`RepoSpec.instance_fields` turns that into the install and test commands a
:class:`~lightswe.tasks.instance.TaskInstance` carries, so the image builder and the grader need nothing else.

A pool file of one's own (``tasks build --pool-file``) has the same format; an entry may instead name a git
repository, ``"git": URL or local path`` at ``"commit"`` (no ``sha256``; a relative path is taken from the
pool file's folder): its tasks' ``repo`` is ``git/<name>``, their ``source`` that URL or absolute path.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lightswe.errors import UserInputError

POOL_FILE = "pool.json"


@dataclass(kw_only=True, slots=True, frozen=True)
class RepoSpec:
    name: str  # PyPI project name
    version: str
    sha256: str = ""  # of the sdist, checked after download (required for a PyPI entry)
    git: str = ""  # instead of an sdist: a git URL or local path (absolute once loaded) ...
    commit: str = ""  # ... at this commit (a full hash keeps the tasks reproducible)
    python: str = "3.11"
    tests: tuple[str, ...] = ("tests",)  # test paths given to pytest
    ignore: tuple[str, ...] = ()  # test files pytest must not collect (network, benchmarks, slow)
    deselect: tuple[str, ...] = ()  # single tests to leave out (time- or locale-dependent)
    test_deps: tuple[str, ...] = ()  # installed next to pytest
    env: tuple[tuple[str, str], ...] = ()  # e.g. disable C speedups
    src: tuple[str, ...] = ()  # files/folders whose functions may be mutated (tests excluded)
    notes: str = ""

    @property
    def repo(self) -> str:
        return f"git/{self.name}" if self.git else f"pypi/{self.name}"

    @property
    def source(self) -> str:
        return self.git or f"pypi:{self.name}=={self.version}"

    def source_repo(self):
        """The repository to mutate: the sdist's root commit, or the git source at ``commit`` (SourceRepo)."""
        from lightswe.tasks import sources

        if self.git:
            return sources.git_repo(self.git, self.commit)
        return sources.sdist_repo(self.name, self.version, self.sha256)

    @property
    def test_command(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        # Test paths go in ``testpaths`` (not as arguments) so that a grader appending node ids runs only those.
        args = ["python", "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=",
                "-o", "testpaths=" + " ".join(self.tests), "-q", "-rN",
                *(f"--ignore={p}" for p in self.ignore), *(f"--deselect={t}" for t in self.deselect)]
        return (f"env {env} " if env else "") + " ".join(shlex.quote(a) for a in args)

    @property
    def install_command(self) -> str:
        deps = " ".join(shlex.quote(d) for d in ("pytest", *self.test_deps))
        return f"python -m pip install -q {deps} && python -m pip install -q -e ."

    def instance_fields(self) -> dict:
        """The TaskInstance fields this repository fixes (repo, source, python, install and test commands)."""
        return {"repo": self.repo, "source": self.source, "python_version": self.python,
                "install_command": self.install_command, "test_command": self.test_command,
                "version": self.version}

    def is_source_file(self, path: str) -> bool:
        """True for a module the synthesizer may mutate: under ``src``, not a test or conftest."""
        parts = path.split("/")
        if not path.endswith(".py") or any(p.startswith("test") or p in ("tests", "testing") for p in parts):
            return False
        if parts[-1] in ("conftest.py", "setup.py", "__main__.py", "_version.py", "version.py"):
            return False
        return any(path == s or path.startswith(s.rstrip("/") + "/") for s in self.src)


def _spec(record: dict, where: str, base: Path | None = None) -> RepoSpec:
    if not isinstance(record, dict):
        raise UserInputError(f"{where}: expected an object, got {type(record).__name__}")
    known = set(RepoSpec.__dataclass_fields__)
    unknown = set(record) - known
    if unknown:
        raise UserInputError(f"{where}: unknown field(s) {sorted(unknown)}; expected some of {sorted(known)}")
    needed = ("name", "git", "commit") if "git" in record else ("name", "version", "sha256")
    for key in needed:
        if not isinstance(record.get(key), str) or not record[key]:
            raise UserInputError(f"{where}: field {key!r} must be a non-empty string, got {record.get(key)!r}; fix: "
                                 "a PyPI entry needs name, version and sha256 (of the sdist), a git entry name, "
                                 "git (URL or path) and commit")
    values = dict(record)
    if "git" in record:
        if "sha256" in record:
            raise UserInputError(f"{where}: both 'git' and 'sha256'; fix: an entry is a PyPI sdist (version, "
                                 "sha256) or a git repository (git, commit), not both")
        if base is not None and "://" not in record["git"]:
            from lightswe.tasks.sources import local_source

            local = local_source(record["git"])
            if local is not None:  # a path: from the pool file's folder
                values["git"] = str((base / Path(record["git"]).expanduser()).resolve())
        values.setdefault("version", record["commit"][:12])
    for key in ("tests", "ignore", "deselect", "test_deps", "src"):
        if key in values:
            values[key] = tuple(values[key])
    if "env" in values:
        values["env"] = tuple(sorted(values["env"].items()))
    return RepoSpec(**values)


def load_pool(path: str | Path | None = None) -> dict[str, RepoSpec]:
    """Name -> spec, from ``path`` or the packaged ``tasks/data/pool.json``."""
    if path is None:
        text = resources.files("lightswe.tasks").joinpath("data", POOL_FILE).read_text(encoding="utf-8")
        where = f"lightswe/tasks/data/{POOL_FILE}"
    else:
        text, where = Path(path).read_text(encoding="utf-8"), str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserInputError(f"--pool-file {where}: not valid JSON ({err}); fix: the packaged "
                             f"lightswe/tasks/data/{POOL_FILE} shows the format") from None
    if not isinstance(data, dict) or not isinstance(data.get("repositories"), list):
        raise UserInputError(f"--pool-file {where}: expected an object with a \"repositories\" list; fix: the "
                             f"packaged lightswe/tasks/data/{POOL_FILE} shows the format")
    base = Path(path).parent if path is not None else None
    specs = [_spec(r, f"{where} repository {i}", base) for i, r in enumerate(data["repositories"])]
    return {s.name: s for s in specs}


def select(pool: dict[str, RepoSpec], names: list[str] | None) -> list[RepoSpec]:
    """The specs named (all when ``names`` is empty); an unknown name raises with the known ones."""
    if not names:
        return list(pool.values())
    unknown = [n for n in names if n not in pool]
    if unknown:
        raise UserInputError(f"--repos: unknown repository {unknown}; fix: one of {', '.join(sorted(pool))} "
                             "(`lightswe tasks pool` lists them), or add one to a pool file (--pool-file) with its "
                             "version and sdist sha256")
    return [pool[n] for n in names]
