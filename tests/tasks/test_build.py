"""``lightswe tasks build`` end to end on a real sdist: synthesize, validate in the env, resume, errors.

One repository (toolz 1.1.0 from PyPI, pinned by sha256), one or two instances: the same code path as the
full build (``lightswe tasks build``), small enough for the default run. The full >=300-instance build is
``test_full_build`` (marked slow).
"""

from __future__ import annotations

import json

import docker
import pytest
from lightswe.cli import main
from lightswe.tasks.build import BuildConfig, build, read_built
from lightswe.tasks.instance import read_jsonl

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def first_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    report = build(BuildConfig(out=out, repos=["toolz"], per_repo=1, seed=7, gold_runs=1, base_runs=1))
    return out, report


def test_build_makes_a_validated_instance_from_a_real_sdist(first_build):
    out, report = first_build
    assert report["total"] == 1 and report["per_repo"] == {"pypi/toolz": 1}
    [instance] = read_jsonl(out / "instances.jsonl")
    assert instance.source == "pypi:toolz==1.1.0" and instance.FAIL_TO_PASS and instance.PASS_TO_PASS
    assert not set(instance.FAIL_TO_PASS) & set(instance.PASS_TO_PASS)
    assert instance.metadata["validation"]["rewards"] == {"no_patch": [0.0], "gold": [1.0]}
    assert instance.metadata["split"] in ("train", "test_repo", "test_function")
    # the gold patch is a real git diff of one or two lines, and the statement never shows it
    changed = [line for line in instance.patch.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert 1 <= len(changed) <= 4 and instance.patch.startswith("diff --git a/")
    assert all(c[1:].strip() not in instance.problem_statement for c in changed if len(c[1:].strip()) > 12)
    assert instance.FAIL_TO_PASS[0] in instance.problem_statement
    assert (out / "report.md").read_text().startswith("# Task build report: 1 validated instances")


def test_resume_keeps_built_instances_and_adds_missing_ones(first_build):
    out, _ = first_build
    before = (out / "instances.jsonl").read_text()
    with (out / "instances.jsonl").open("a") as handle:
        handle.write('{"instance_id": "torn-by-a-kill')  # a run killed mid-write
    report = build(BuildConfig(out=out, repos=["toolz"], per_repo=2, seed=7, gold_runs=1, base_runs=1))
    assert report["total"] == 2
    text = (out / "instances.jsonl").read_text()
    assert text.startswith(before)  # append-only: the first instance is byte-for-byte intact
    ids = [i.instance_id for i in read_built(out)[0]]
    assert len(ids) == len(set(ids)) == 2
    events = [json.loads(e) for e in (out / "progress.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "accepted" for e in events) == 2


def test_suite_that_cannot_run_is_a_clear_error_and_keeps_instances(first_build, tmp_path, capsys):
    out, _ = first_build
    before = (out / "instances.jsonl").read_text()
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps({"repositories": [{
        "name": "toolz", "version": "1.1.0",
        "sha256": "27a5c770d068c110d9ed9323f24f1543e83b2f300a687b7891c1a6d56b697b5b",
        "tests": ["toolz/tests"], "src": ["toolz"],
        "env": {"PYTEST_ADDOPTS": "--option-of-a-missing-plugin"}}]}))  # the suite cannot start
    report = build(BuildConfig(out=out, repos=["toolz"], per_repo=5, pool_file=pool, gold_runs=1, base_runs=1))
    assert "does not run green offline" in report["repo_errors"]["pypi/toolz"]
    assert (out / "instances.jsonl").read_text() == before


def test_cli_errors_and_report(first_build, capsys):
    out, _ = first_build
    assert main(["tasks", "build", "--out", str(out), "--repos", "nosuchlib"]) == 2
    assert "unknown repository ['nosuchlib']" in capsys.readouterr().err
    assert main(["tasks", "report", "--out", str(out)]) == 0
    assert "pypi/toolz" in capsys.readouterr().out


def test_prune_finds_images_of_deleted_tasks_only(first_build):
    from lightswe.tasks.prune import prune

    out, _ = first_build
    assert prune(out, dry_run=True) == []  # every recorded task is still there
    lines = (out / "instances.jsonl").read_text().splitlines(keepends=True)
    deleted = json.loads(lines[0])["instance_id"]
    (out / "instances.jsonl").write_text("".join(lines[1:]))  # the user deletes the first task
    try:
        stale = prune(out, dry_run=True)
        # every image of the deleted task (one per image recipe this engine has seen), and no other
        assert stale and all(tag.startswith("lightswe/instance:") for tag in stale)
        client = docker.from_env()
        assert {client.images.get(tag).labels["lightswe.instance_id"] for tag in stale} == {deleted}
    finally:
        (out / "instances.jsonl").write_text("".join(lines))


@pytest.mark.slow
def test_full_build(tmp_path):
    """The whole pool: at least 300 validated instances from at least 10 repositories (about an hour on 2 cores)."""
    report = build(BuildConfig(out=tmp_path, per_repo=25, workers=2, gold_runs=1, base_runs=1))
    assert report["total"] >= 300 and report["repositories"] >= 10, report
