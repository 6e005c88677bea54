"""Remove the instance images of tasks that a build made and that are no longer in its instance file.

Only images this build folder knows about are candidates: ids recorded in its ``progress.jsonl`` (accepted or
rejected) whose instance is not in ``instances.jsonl`` any more (deleted by hand, or rejected at validation).
Images of other builds, of the demo task or of other users of the same engine are never touched. Environment
images are shared by every task of a repository and are kept.
"""

from __future__ import annotations

from pathlib import Path

from lightswe.tasks.build import read_built


def prune(out: Path, *, dry_run: bool = False, client=None) -> list[str]:
    from lightswe.envs.sandbox import default_client

    instances, events = read_built(out)
    live = {i.instance_id for i in instances}
    known = {e["instance_id"] for e in events if e.get("instance_id")}
    stale = known - live
    client = client or default_client()
    removed = []
    for image in client.api.images(filters={"label": "lightswe.kind=instance"}):
        labels = image.get("Labels") or {}
        if labels.get("lightswe.instance_id") in stale:
            tag = (image.get("RepoTags") or [image["Id"]])[0]
            if not dry_run:
                try:
                    client.api.remove_image(image["Id"], force=False)
                except Exception:  # noqa: BLE001 - in use by a running container: keep it
                    continue
            removed.append(tag)
    return removed
