"""The curated pool file: pinned, well-formed, and turned into working commands."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from lightswe.tasks.pool import load_pool, select


def test_pool_has_at_least_ten_pinned_repositories():
    pool = load_pool()
    assert len(pool) >= 10
    for spec in pool.values():
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.name
        assert re.fullmatch(r"\d+(\.\d+)+", spec.version), spec.name
        assert spec.src and spec.tests
        fields = spec.instance_fields()
        assert fields["source"] == f"pypi:{spec.name}=={spec.version}"
        argv = shlex.split(fields["test_command"].removeprefix("env "))
        assert "addopts=" in argv and any(a.startswith("testpaths=") for a in argv)
        assert not any(a in spec.tests for a in argv)  # paths via testpaths: appended node ids run alone


def test_source_files_exclude_tests():
    spec = load_pool()["voluptuous"]
    assert spec.is_source_file("voluptuous/validators.py")
    assert not spec.is_source_file("voluptuous/tests/tests.py")
    assert not spec.is_source_file("setup.py")


def test_unknown_repository_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown repository \['nosuchlib'\].*toolz"):
        select(load_pool(), ["toolz", "nosuchlib"])


def test_bad_pool_file_names_the_field(tmp_path):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps({"repositories": [{"name": "toolz", "version": "1.1.0", "sha": "x"}]}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['sha'\]"):
        load_pool(path)
    path.write_text(json.dumps({"repositories": [{"name": "toolz", "version": "1.1.0"}]}))
    with pytest.raises(ValueError, match="'sha256' must be a non-empty string"):
        load_pool(path)


@pytest.mark.parametrize("text,message", [
    ("{", "not valid JSON"),
    ('{"pool": []}', 'expected an object with a "repositories" list'),
    ('["toolz"]', 'expected an object with a "repositories" list'),
    ('{"repositories": ["toolz"]}', "repository 0: expected an object, got str"),
])
def test_a_pool_file_of_the_wrong_shape_is_one_user_error(tmp_path, text, message):
    from lightswe.errors import UserInputError

    path = tmp_path / "pool.json"
    path.write_text(text)
    with pytest.raises(UserInputError, match=re.escape(message)):
        load_pool(path)
