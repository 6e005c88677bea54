"""Shared test set-up: markers that skip cleanly when a real component is absent."""

from __future__ import annotations

import functools

import pytest


@functools.cache
def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@functools.cache
def docker_available() -> str | None:
    """None when the engine answers, else the reason (shown in the skip message)."""
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as err:  # noqa: BLE001 - any failure means "no engine" for skipping purposes
        return f"Docker engine not reachable ({err}); run `python -m lightswe setup`"
    return None


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU; results recorded from a device run (see benchmarks/)")
    for item in items:
        if item.get_closest_marker("gpu") and not cuda_available():  # not `in keywords`: that matches folder names
            item.add_marker(no_gpu)
        if item.get_closest_marker("docker"):
            reason = docker_available()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
