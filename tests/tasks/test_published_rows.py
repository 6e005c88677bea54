"""Rows in published form run unedited through `lightswe tasks validate`: no patch 0.0, gold 1.0.

Repositories with real history (consecutive PyPI releases with an upstream fix between them, see
``histories.py``); rows as the datasets publish them: ids as JSON strings, an id cut short at a space by
SWE-bench's log parser, an id holding a path of the machine that built the dataset, a prebuilt ``image_name``
with a foreign layout (root only, no ``agent`` user, Python in a conda-style env that only /root/.bashrc
activates) as SWE-bench and SWE-smith rows. Slow (``-m slow``): a row on Python 3.9 whose commands come from
SWE-bench's specs of its repo+version (pytest 5.4: setuptools-scm, version pins, installed from a later
``environment_setup_commit``), and a Django row graded by SWE-bench's Django log parser.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lightswe.tasks import sources
from lightswe.tasks.datasets import load_tasks
from lightswe.tasks.validate import Validator

from .histories import PYTEST_TEST, TEST, django_history, git, pytest_history, toolz_history

pytestmark = pytest.mark.docker
EXTRA_TEST = '''

import pytest


@pytest.mark.parametrize("sep", ["a b", "c d"])
def test_interpose_empty_separators(sep):
    assert list(interpose(sep, [])) == []
'''


def spaced_test_patch(repo, fix, tests, tmp_path) -> str:
    """The upstream test commit plus a parametrized test whose ids hold spaces (``[a b]``), as a diff."""
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(repo), str(work)], check=True)
    git(work, "checkout", "-q", tests)
    (work / TEST).write_text((work / TEST).read_text() + EXTRA_TEST)
    return git(work, "diff", fix)


def validate(path, *extra: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "lightswe", "tasks", "validate", str(path), "--gold-runs", "1",
                           "--base-runs", "1", *extra], capture_output=True, text=True, timeout=1800)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stderr[-3000:]
    return lines


@pytest.fixture(scope="module")
def toolz_row(tmp_path_factory):
    repo, base, fix, tests = toolz_history()
    return {  # published shape: JSON-text lists, no lightswe fields except where the row needs a local source
        "repo": "pytoolz/toolz", "instance_id": "pytoolz__toolz-published", "base_commit": base,
        "patch": git(repo, "diff", base, fix),
        "test_patch": spaced_test_patch(repo, fix, tests, tmp_path_factory.mktemp("tp")),
        "problem_statement": "interpose raises StopIteration on an empty sequence instead of yielding nothing",
        "hints_text": "", "created_at": "2025-10-17T00:00:00Z", "version": "1.1",
        "FAIL_TO_PASS": json.dumps([f"{TEST}::test_interpose_empty",
                                    f"{TEST}::test_interpose_empty_separators[a",  # cut at the space of [a b]
                                    f"{TEST}::test_interpose_empty_separators[c"]),
        "PASS_TO_PASS": json.dumps([f"/home/swe-builder/work/toolz/{TEST}::test_interpose",  # a foreign path
                                    f"{TEST}::test_frequencies"]),
        "environment_setup_commit": base, "source": str(repo),
        "install_command": "python -m pip install -q -e .",
        "test_command": "python -m pytest -p no:cacheprovider -o addopts= -q",
    }


def test_a_published_row_with_cut_short_and_foreign_ids_validates(toolz_row, tmp_path):
    (tmp_path / "rows.json").write_text(json.dumps([toolz_row]))
    [line] = validate(tmp_path / "rows.json")
    assert line["ok"], line
    assert line["rewards"] == {"no_patch": [0.0], "gold": [1.0]} and "unmatched" not in line
    datasets = pytest.importorskip("datasets")  # the same row from a Hugging Face dataset directory, by split
    datasets.DatasetDict({"test": datasets.Dataset.from_list([toolz_row])}).save_to_disk(tmp_path / "ds")
    [line] = validate(f"{tmp_path / 'ds'}:test")
    assert line["ok"] and line["rewards"] == {"no_patch": [0.0], "gold": [1.0]}, line


def test_an_id_that_matches_nothing_counts_against_itself_only(toolz_row):
    row = dict(toolz_row, instance_id="pytoolz__toolz-unmatched",
               PASS_TO_PASS=json.dumps([*json.loads(toolz_row["PASS_TO_PASS"]), f"{TEST}::test_renamed_upstream"]))
    [task] = load_tasks_from(row)
    result = Validator(gold_runs=1, base_runs=1).validate(task)  # rejected, saying which id and why
    assert not result.ok and result.rewards == {"no_patch": [0.0]}
    assert list(result.unmatched) == [f"{TEST}::test_renamed_upstream"], result
    assert "test_renamed_upstream" in result.reason and "no test of the run has this id" in result.reason
    from lightswe.envs.swe_env import SWEEnv
    from lightswe.envs.tool_calls import ToolCall

    env = SWEEnv([task])  # the gold patch: every other id is graded (and passes)
    try:
        env.reset(options={"task_id": task.instance_id})
        assert env.sandbox.exec("git apply -", stdin=task.patch.encode()).exit_code == 0
        _, reward, _, _, info = env.step(ToolCall(name="submit", arguments={}))
    finally:
        env.close()
    assert reward == 0.0 and info["unmatched"] == result.unmatched
    assert {t for t, o in info["tests"].items() if o != "passed"} == {f"{TEST}::test_renamed_upstream"}
    assert info["model_patch"].startswith("diff --git a/toolz/itertoolz.py")


def load_tasks_from(row: dict):
    from lightswe.tasks.datasets import from_record

    return [from_record(row)]


HOME_TEST = '''

def test_data_fetched_at_install_time():
    import pathlib

    assert (pathlib.Path.home() / ".cache" / "toolz-data" / "answer").read_text() == "42\\n"
'''


def test_tests_see_the_home_the_install_wrote_to(toolz_row, tmp_path):
    """An install step that fetches data into ~ (nltk, model caches...): the tests run with that same HOME."""
    repo, base, fix, tests = toolz_history()
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(repo), str(work)], check=True)
    git(work, "checkout", "-q", tests)
    (work / TEST).write_text((work / TEST).read_text() + HOME_TEST)
    row = dict(toolz_row, instance_id="pytoolz__toolz-home", test_patch=git(work, "diff", fix),
               install_command="python -m pip install -q -e . && mkdir -p ~/.cache/toolz-data && "
                               "echo 42 > ~/.cache/toolz-data/answer",
               FAIL_TO_PASS=json.dumps([f"{TEST}::test_interpose_empty"]),
               PASS_TO_PASS=json.dumps([f"{TEST}::test_data_fetched_at_install_time"]))
    [task] = load_tasks_from(row)
    result = Validator(gold_runs=1, base_runs=1).validate(task)
    assert result.ok, result.reason


# --------------------------------------------------------------------------------- prebuilt, foreign layout
FOREIGN = """set -e
sed -i '/^agent:/d' /etc/passwd /etc/group /etc/shadow && rm -rf /home/agent
python3 -m venv /opt/miniconda3/envs/testbed
/opt/miniconda3/envs/testbed/bin/python -m pip install -q 'pytest>=7,<9'
echo /testbed > /opt/miniconda3/envs/testbed/lib/python3.11/site-packages/testbed.pth
printf '# conda-style: only interactive root shells get the env\\n. /opt/miniconda3/envs/testbed/bin/activate\\n' \\
    >> /root/.bashrc
"""


def foreign_image(name: str, repo, commit: str, tmp_path) -> str:
    """A local image laid out as SWE-bench/SWE-smith images are, FROM lightswe/base:bookworm (no registry)."""
    import docker

    from lightswe.envs.sandbox import Sandbox, SandboxConfig, default_client
    from lightswe.tasks.images import HOST_CA

    client = default_client()
    try:
        client.images.get(name)
        return name
    except docker.errors.ImageNotFound:
        pass
    clone = tmp_path / f"clone-{commit[:8]}"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    git(clone, "checkout", "-q", "-B", "main", commit)
    git(clone, "remote", "remove", "origin")
    archive = subprocess.run(["tar", "-C", str(clone), "-cf", "-", "."], check=True, capture_output=True).stdout
    config = SandboxConfig(image="lightswe/base:bookworm", network="host", read_only_binds={HOST_CA: HOST_CA},
                           user="root", workdir="/", labels={"lightswe.test": "published-rows"})
    env = {"PIP_CERT": HOST_CA, "PIP_ROOT_USER_ACTION": "ignore"}
    with Sandbox(config, client=client) as box:
        assert box.exec("mkdir -p /testbed", user="root").exit_code == 0
        assert box.api.put_archive(box.container_id, "/testbed", archive)
        built = box.exec(FOREIGN, timeout=600, user="root", env=env)
        assert built.exit_code == 0, built.output
        repository, tag = name.split(":")
        box.api.commit(box.container_id, repository=repository, tag=tag,
                       changes=["LABEL lightswe.test=published-rows", "WORKDIR /testbed", 'CMD ["/bin/bash"]'])
    return name


def test_prebuilt_images_of_a_foreign_layout_are_adopted(toolz_row, tmp_path):
    """A SWE-bench row (image at the base commit) and a SWE-smith row (image clean, the bug in ``patch``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo, base, fix, tests = toolz_history()
    swebench_image = foreign_image("sweb.eval.x86_64.pytoolz__toolz-published:latest", repo, base, tmp_path)
    smith_image = foreign_image("lightswe-test/swesmith.x86_64.pytoolz__toolz.57272ea:latest", repo, tests,
                                tmp_path)
    swebench_row = {k: v for k, v in toolz_row.items() if k not in ("source", "install_command", "test_command")}
    swebench_row.update(instance_id="pytoolz__toolz-prebuilt", image_name=swebench_image)
    smith_row = {"instance_id": "pytoolz__toolz.57272ea.func_pm_interpose__1", "repo": "swesmith/pytoolz__toolz.57272ea",
                 "patch": git(repo, "diff", fix, base),  # SWE-smith's patch is the bug
                 "FAIL_TO_PASS": json.dumps([f"{TEST}::test_interpose_empty"]),
                 "PASS_TO_PASS": json.dumps([f"{TEST}::test_interpose", f"{TEST}::test_frequencies"]),
                 "image_name": smith_image, "problem_statement": "interpose fails on an empty sequence"}
    table = pa.Table.from_pylist([swebench_row, smith_row])
    pq.write_table(table, tmp_path / "prebuilt.parquet")
    lines = validate(tmp_path / "prebuilt.parquet")
    assert [line["ok"] for line in lines] == [True, True], lines
    # the agent's commands run as the added agent user and find the image's own Python
    from lightswe.envs.sandbox import Sandbox, SandboxConfig
    from lightswe.tasks.images import ensure_instance_image

    [task, _] = load_tasks(tmp_path / "prebuilt.parquet")
    with Sandbox(SandboxConfig(image=ensure_instance_image(task))) as box:
        seen = box.exec("id -un; command -v python; git log --oneline | wc -l")
    assert seen.output.split() == ["agent", "/opt/miniconda3/envs/testbed/bin/python", "1"], seen.output


# ----------------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_a_python_39_row_with_commands_from_the_swebench_specs(tmp_path):
    """pytest 5.4 as SWE-bench publishes it: Python 3.9 (Debian bullseye), pins, setuptools-scm without .git,
    installed at a later environment_setup_commit whose metadata must not reach the agent's tree."""
    pytest.importorskip("swebench.harness.constants")
    from lightswe.tasks import specs

    if not specs.available():
        pytest.skip("needs swebench>=3,<5 (specs)")
    repo, base, fix, tests, env = pytest_history()
    row = {"repo": "pytest-dev/pytest", "instance_id": "pytest-dev__pytest-7145-local", "base_commit": base,
           "patch": git(repo, "diff", base, fix, "--", "src"), "test_patch": git(repo, "diff", fix, tests),
           "problem_statement": "saferepr fails for classes with a broken __getattribute__", "hints_text": "",
           "created_at": "2020-05-01T00:00:00Z", "version": "5.4", "environment_setup_commit": env,
           "FAIL_TO_PASS": json.dumps([f"{PYTEST_TEST}::test_broken_getattribute"]),
           "PASS_TO_PASS": json.dumps([f"{PYTEST_TEST}::test_simple_repr", f"{PYTEST_TEST}::test_maxsize",
                                       f"/tmp/build/pytest/{PYTEST_TEST}::test_exceptions"]),
           "source": str(repo)}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    [task] = load_tasks(tmp_path / "rows.jsonl")
    assert task.python_version == "3.9" and "pluggy==0.13.1" in task.install_command
    [line] = validate(tmp_path / "rows.jsonl")
    assert line["ok"], line["reason"]
    from lightswe.envs.sandbox import Sandbox, SandboxConfig
    from lightswe.tasks.images import ensure_instance_image

    later = set(sources.tree_files(sources.SourceRepo(path=repo, commit=env))) - set(
        sources.tree_files(sources.SourceRepo(path=repo, commit=base)))
    assert "doc/en/announce/release-5.4.2.rst" in later
    with Sandbox(SandboxConfig(image=ensure_instance_image(task))) as box:
        listed = box.exec("git ls-files; cat src/*.egg-info/SOURCES.txt 2>/dev/null; python --version; "
                          "python -c 'import _pytest._version as v; print(v.version)'", max_output_bytes=1 << 22)
    names = set(listed.output.split())
    assert not later & names, sorted(later & names)[:5]  # nothing of the later commit in the agent's tree
    assert "Python 3.9" in listed.output and "5.4.2" not in listed.output


@pytest.mark.slow
def test_a_django_row_graded_through_the_swebench_django_parser(tmp_path):
    """Django 5.0 as SWE-bench publishes it: runtests.py from the specs, ids ``test_x (module.Class.test_x)``
    (Python 3.11's unittest) and one in the older ``test_x (module.Class)`` form, graded by swebench's parser."""
    pytest.importorskip("swebench.harness.constants")
    from lightswe.tasks import specs

    if not specs.available():
        pytest.skip("needs swebench>=3,<5 (specs)")
    repo, base, fix, tests = django_history()
    cls = "fixtures.tests.FixtureLoadingTests"
    row = {"repo": "django/django", "instance_id": "django__django-35159-local", "base_commit": base,
           "patch": git(repo, "diff", base, fix), "test_patch": git(repo, "diff", fix, tests),
           "problem_statement": "dumpdata crashes when a base queryset uses prefetch_related()", "hints_text": "",
           "created_at": "2024-01-30T00:00:00Z", "version": "5.0", "environment_setup_commit": base,
           # every dumpdata of the fixtures app crashes at the base once the test patch's manager prefetches
           "FAIL_TO_PASS": json.dumps([f"test_dumpdata_objects_with_prefetch_related ({cls}."
                                       "test_dumpdata_objects_with_prefetch_related)",
                                       f"test_dumpdata_with_excludes ({cls})"]),
           "PASS_TO_PASS": json.dumps([f"test_loading_using ({cls}.test_loading_using)",
                                       f"test_dumpdata_with_pks ({cls})"]),
           "source": str(repo)}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    [task] = load_tasks(tmp_path / "rows.jsonl")
    assert task.log_parser == "django/django" and "runtests.py" in task.test_command
    [line] = validate(tmp_path / "rows.jsonl")
    assert line["ok"], line["reason"]


def test_eval_writes_predictions_whose_patches_apply_at_the_base(toolz_row, tmp_path):
    """An episode's final diff is stored in its trajectory and written as a SWE-bench prediction."""
    from lightswe.agent.predictions import check_predictions

    (tmp_path / "rows.json").write_text(json.dumps([toolz_row]))
    done = subprocess.run([sys.executable, "-m", "lightswe", "eval", "--tasks", str(tmp_path / "rows.json"),
                           "--policy", "scripted", "--out", str(tmp_path / "run"), "--no-progress",
                           "--predictions", str(tmp_path / "preds.jsonl")], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert check_predictions(tmp_path / "preds.jsonl") == 1
    [row] = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert row["instance_id"] == toolz_row["instance_id"] and row["model_name_or_path"] == "scripted"
    repo, base, *_ = toolz_history()
    work = tmp_path / "check"
    subprocess.run(["git", "clone", "-q", str(repo), str(work)], check=True)
    git(work, "checkout", "-q", base)
    apply = subprocess.run(["git", "-C", str(work), "apply", "-"], input=row["model_patch"], text=True,
                           capture_output=True)
    assert apply.returncode == 0, apply.stderr
    assert git(work, "diff") == toolz_row["patch"]  # the scripted policy applies the gold fix: same diff
