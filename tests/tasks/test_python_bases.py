"""Which base image a row's python_version gets, and what a user is told when none fits."""

from __future__ import annotations

import json

import pytest

from lightswe.envs.engine import PYTHON_SUITES, ensure_python_base
from lightswe.tasks.datasets import from_record


def test_the_debian_releases_on_the_mirror_cover_three_pythons():
    assert PYTHON_SUITES == {"3.9": "bullseye", "3.11": "bookworm", "3.13": "trixie"}


def test_a_python_no_base_has_is_refused_with_the_real_options(monkeypatch):
    monkeypatch.delenv("LIGHTSWE_PYTHON_IMAGE_3_6", raising=False)
    with pytest.raises(ValueError) as caught:
        ensure_python_base("3.6")
    message = str(caught.value)
    for option in ("3.9 (Debian bullseye)", "3.11 (Debian bookworm)", "3.13 (Debian trixie)",
                   "LIGHTSWE_PYTHON_IMAGE_3_6", "image_name"):
        assert option in message
    assert "LIGHTSWE_BASE_IMAGE" not in message


def test_a_django_30_row_asks_for_python_36_and_validation_says_so():
    """SWE-bench's spec of Django 3.0 says Python 3.6: the row loads, and building it names the options."""
    pytest.importorskip("swebench.harness.constants")
    from lightswe.tasks import specs
    from lightswe.tasks.validate import error_reason

    if not specs.available():
        pytest.skip("needs swebench>=3,<5")
    task = from_record({"repo": "django/django", "version": "3.0", "instance_id": "django__django-11099",
                        "base_commit": "b" * 40, "patch": "", "problem_statement": "",
                        "FAIL_TO_PASS": json.dumps(["test_x (auth_tests.test_validators.UsernameValidatorsTests)"])})
    assert task.python_version == "3.6"
    with pytest.raises(ValueError) as caught:
        ensure_python_base(task.python_version)
    assert error_reason(caught.value).startswith("UserInputError: no base image has Python 3.6")
