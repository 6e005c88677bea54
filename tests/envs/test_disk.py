"""``lightswe.envs.disk``: which disk limit a sandbox gets, decided from what the real engine reports.

The ``storage-opt`` limit itself (Docker's quota) needs btrfs, zfs or overlay2 on xfs with ``pquota``; this
machine's engine is overlay2 on ext4 (``extfs``), so the quota cannot be exercised here: the tests check the
decision (driver report -> mode), that the decision agrees with what the engine accepts, and the fallback from a
refused ``--storage-opt`` to loop volumes. ``test_pristine.py`` checks that the limit holds.
"""

from __future__ import annotations

import pytest
from lightswe.envs import disk

# DriverStatus as `docker info` prints it for each storage driver (docker 20-27)
OVERLAY = [["Supports d_type", "true"], ["Native Overlay Diff", "true"], ["userxattr", "false"]]


@pytest.mark.parametrize(("info", "quota"), [
    ({"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "xfs"], *OVERLAY]}, True),
    ({"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"], *OVERLAY]}, False),
    ({"Driver": "overlay", "DriverStatus": [["Backing Filesystem", "XFS"]]}, True),
    ({"Driver": "btrfs", "DriverStatus": [["Btrfs", ""]]}, True),
    ({"Driver": "zfs", "DriverStatus": [["Zpool", "tank"], ["Zpool Health", "ONLINE"]]}, True),
    ({"Driver": "vfs", "DriverStatus": None}, False),
    ({"Driver": "fuse-overlayfs", "DriverStatus": []}, False),
    ({"Driver": "overlayfs", "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]]}, False),
    ({}, False),
], ids=["overlay2-xfs", "overlay2-ext4", "overlay-xfs-upper", "btrfs", "zfs", "vfs", "fuse-overlayfs",
        "containerd-snapshotter", "nothing-reported"])
def test_which_drivers_enforce_a_quota(info, quota):
    assert disk.quota_driver(info) is quota


@pytest.mark.docker
def test_the_decision_agrees_with_what_this_engine_accepts():
    """Quota said yes: the engine creates a container with ``--storage-opt size=``; no: it refuses it."""
    import docker

    from lightswe.envs.engine import BASE_IMAGE, ensure_base_image
    from lightswe.envs.sandbox import default_client

    ensure_base_image()
    client = default_client()
    info = client.api.info()
    host_config = client.api.create_host_config(storage_opt={"size": str(128 * 1024 ** 2)})
    try:
        created = client.api.create_container(BASE_IMAGE, command=["true"], host_config=host_config,
                                              labels={"lightswe.test": "disk"})
    except docker.errors.APIError as err:
        assert not disk.quota_driver(info), (info.get("Driver"), info.get("DriverStatus"), err)
        assert "storage-opt" in str(err).lower()  # what Sandbox._start recognises as "no quota after all"
        return
    client.api.remove_container(created["Id"], force=True)
    assert disk.quota_driver(info), (info.get("Driver"), info.get("DriverStatus"))


@pytest.mark.docker
def test_a_refused_storage_opt_falls_back_to_the_next_mode(monkeypatch):
    """LIGHTSWE_DISK_MODE=storage-opt on an engine without quota (as overlay2 on xfs without pquota would be):
    the engine refuses the container, the sandbox decides again without the quota and starts with a loop volume
    (root, local engine) or none, and that decision is kept for the next sandboxes."""
    from lightswe.envs.engine import ensure_base_image
    from lightswe.envs.sandbox import Sandbox, SandboxConfig, default_client

    ensure_base_image()
    client = default_client()
    if disk.quota_driver(client.api.info()):
        pytest.skip("this engine enforces --storage-opt: nothing to fall back from")
    monkeypatch.setattr(disk, "_MODE", {})  # decide afresh, and leave the process's decision as it was
    monkeypatch.setenv("LIGHTSWE_DISK_MODE", "storage-opt")
    assert disk.disk_mode(client) == "storage-opt"
    with Sandbox(SandboxConfig(disk_limit="96m", labels={"lightswe.test": "disk"})) as box:
        after = disk.disk_mode(client)
        assert after in ("loop", "none") and after == disk.disk_mode(client, no_quota=True)
        host = box.api.inspect_container(box.container_id)["HostConfig"]
        assert not host.get("StorageOpt")
        if after == "loop":
            assert host["ReadonlyRootfs"] and box._disk_path == "/tmp"
            full = box.exec("head -c 200000000 /dev/zero > /tmp/fill", timeout=60)
            assert full.disk_full, full.output[-300:]
