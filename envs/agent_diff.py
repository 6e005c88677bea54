"""The agent's change, taken without running anything the agent controls.

Why: the agent owns ``/testbed/.git`` (config, hooks, attributes, filters, replace refs, fsmonitor) and its home
directory (``~/.gitconfig``): any git command run in its container can execute or honour what it wrote there.
So the harness never runs git (or anything else) in the agent's container to learn what changed:

- the base tree comes from a *pristine* container of the instance image (:func:`base_listing`: ``git ls-tree``
  as the non-root user with a pristine git environment, :data:`PRISTINE_GIT_ENV`); it is the same for every
  episode of an image and cached per image;
- the agent's working tree is read through the Docker archive API (``get_archive``: a tar stream made by the
  engine, no process of the agent runs), every ``.git`` directory (the agent's or a nested one) skipped, and
  hashed here as git blobs (:func:`read_tree`);
- the change is the set of paths whose mode, type or bytes differ (:func:`changes`): binary-safe, symlinks
  as links (mode ``120000``, the target as the blob), the executable bit as git records it (``100755``),
  deletions included. A changed file over ``max_file_bytes`` is not retained (its :class:`Entry` has no
  data) and grading leaves it out, saying so. Directories, empty or not, are not part of a change (as in git).

Example::

    base = base_listing(fresh_box)                          # {path: Entry}, from the pristine image
    tree = read_tree(agent_box.api, agent_box.container_id, base=base)
    for change in changes(base, tree):
        print(change.kind, change.path)
"""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from lightswe.errors import ActionError, InfrastructureError

WORKDIR = "/testbed"
REGULAR, EXECUTABLE, SYMLINK, SPECIAL = "100644", "100755", "120000", "special"
TOO_DEEP = "too-deep"  # a folder whose contents the engine's archive may have dropped (see read_tree)
# The engine builds each archive member's path on the host (its storage root, e.g. /var/lib/docker/overlay2/<id>/
# merged, then the path in the container) and silently drops what reaches PATH_MAX (4,096 bytes with the final
# NUL): a file of a folder this deep may be missing from the archive. Allowance for the host's prefix: 512 bytes.
PATH_MAX, HOST_PREFIX_ALLOWANCE = 4096, 512
# git run by the harness: no system/global config, no home, no replace objects, no hooks, no fsmonitor,
# literal pathspecs, no terminal prompts. Repository config is pristine too: git only runs in fresh containers.
PRISTINE_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": "/nonexistent",
    "GIT_NO_REPLACE_OBJECTS": "1", "GIT_ATTR_NOSYSTEM": "1", "GIT_LITERAL_PATHSPECS": "1",
    "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "XDG_CONFIG_HOME": "/nonexistent",
}
PRISTINE_GIT = ("git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c core.untrackedCache=false "
                "-c core.symlinks=true -c core.fileMode=true -c core.autocrlf=false -c diff.external= "
                "-c core.attributesFile=/dev/null -c core.excludesFile=/dev/null")


class SnapshotError(InfrastructureError):
    """Reading a tree failed for a reason of the machine (engine, container, truncated listing)."""


class TreeTooLarge(ActionError):
    """The agent's work tree holds more than grading reads (bytes of files past the base's, or entries): the
    policy's doing (e.g. sparse files of terabytes, which take no disk and would stream for hours), graded 0.0."""


# What grading reads of a work tree beyond the base's own files. The disk limit (4 GiB by default) bounds what an
# honest episode writes; sparse files do not count against it (``truncate -s 4G`` x 1,000 is 4 TB to stream, at
# ~170 MB/s through the engine's archive on the loaded development machine: hours of one grading).
MAX_EXTRA_BYTES = 8 * 1024 ** 3
MAX_ENTRIES = 1_000_000


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of a tree as git would record it."""

    mode: str  # REGULAR, EXECUTABLE, SYMLINK, or SPECIAL (fifo, device: never part of a graded change)
    sha: str  # git blob id: sha1 of b"blob <size>\\0" + bytes (a symlink's bytes are its target)
    size: int  # bytes
    data: bytes | None = None  # the bytes, when retained (changed and within the cap)


@dataclass(frozen=True, slots=True)
class Change:
    path: str  # relative to the work tree, '/'-separated
    old: Entry | None  # None: added
    new: Entry | None  # None: deleted

    @property
    def kind(self) -> str:
        if self.old is None:
            return "added"
        if self.new is None:
            return "deleted"
        return "modified" if self.old.sha != self.new.sha else "mode"


def blob_id(data: bytes) -> str:
    """git's object id of a blob holding ``data`` (SHA-1 object format)."""
    digest = hashlib.sha1(b"blob %d\0" % len(data))
    digest.update(data)
    return digest.hexdigest()


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")  # tarfile's own decoding of names, so paths match


def base_listing(box, workdir: str = WORKDIR, rev: str = "HEAD") -> dict[str, Entry]:
    """``{path: Entry}`` of ``rev`` in ``box``'s repository (no data); ``box`` must be a pristine container.

    Runs ``git ls-tree`` as the non-root user with :data:`PRISTINE_GIT_ENV`; gitlinks (submodules) are skipped.
    Raises :class:`SnapshotError` when git fails or the listing is truncated.
    """
    result = box.exec(f"set -o pipefail; {PRISTINE_GIT} ls-tree -r -z -l --full-tree {rev} | base64 -w0", timeout=120,
                      user="agent", workdir=workdir, env=PRISTINE_GIT_ENV, max_output_bytes=512 * 1024 * 1024)
    if result.exit_code != 0 or result.truncated:
        raise SnapshotError(f"listing the base tree in {workdir} failed (exit {result.exit_code}): "
                            f"{result.output[-400:]}")
    import base64

    listing: dict[str, Entry] = {}
    for record in base64.b64decode(result.output).split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        mode, kind, sha, size = meta.split()
        if kind != b"blob":
            continue
        listing[_decode(path)] = Entry(mode=mode.decode(), sha=sha.decode(), size=int(size))
    return listing


class _StreamReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (the engine's archive stream), counting bytes."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = b""
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
            self.total += len(self._buffer)
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def _mode_of(member: tarfile.TarInfo) -> str:
    if member.issym():
        return SYMLINK
    if member.isreg():
        return EXECUTABLE if member.mode & stat.S_IXUSR else REGULAR
    return SPECIAL


def read_tree(api, container_id: str, *, base: dict[str, Entry], workdir: str = WORKDIR,
              max_file_bytes: int = 16 * 1024 * 1024, max_kept_bytes: int = 256 * 1024 * 1024,
              max_extra_bytes: int = MAX_EXTRA_BYTES, max_entries: int = MAX_ENTRIES) -> dict[str, Entry]:
    """``{path: Entry}`` of the working tree at ``workdir`` in a (possibly agent-controlled) container.

    Read with the engine's ``get_archive`` (nothing runs in the container). Every path with a ``.git``
    component is skipped, but counts against the budgets below (the engine streams it like any file). ``data`` is kept for entries that differ from ``base`` (mode or bytes) and are at most
    ``max_file_bytes`` (and while the bytes kept stay within ``max_kept_bytes``); others are hashed as they
    stream and keep ``data=None``. Hard links resolve to
    their target's bytes. Directories are not entries, except one so deep (its path in the container within
    ``HOST_PREFIX_ALLOWANCE`` + 256 bytes of ``PATH_MAX``) that the engine may have dropped what it holds without
    a word: it is the entry ``<folder>/`` with mode :data:`TOO_DEEP` (grading leaves it out, saying so; a change
    the grader cannot see is never silent). Raises :class:`SnapshotError` when the engine cannot give the archive
    (container gone, engine error), and :class:`TreeTooLarge` (the agent's doing) as soon as the files' bytes
    (their sizes: a sparse file counts whole, the archive streams it whole) pass the base's own plus
    ``max_extra_bytes``, or the tree passes ``max_entries`` entries.
    """
    budget = sum(entry.size for entry in base.values()) + max_extra_bytes
    limit = max(max_entries, 2 * len(base))
    streamed = entries = 0
    chunks = None
    try:
        chunks, _ = api.get_archive(container_id, workdir, chunk_size=1024 * 1024)
        reader = _StreamReader(chunks)
        tree: dict[str, Entry] = {}
        hard_links: list[tuple[str, str]] = []
        kept_bytes = 0
        with tarfile.open(fileobj=io.BufferedReader(reader, 1024 * 1024), mode="r|") as archive:
            for member in archive:
                parts = PurePosixPath(member.name).parts[1:]  # the archive's first component is the workdir
                if not parts:
                    continue
                path = "/".join(parts)
                entries += 1  # .git too: the engine streams it whole (a sparse "packfile" of 1 TB took hours)
                streamed += member.size if member.isreg() else 0
                if streamed > budget or entries > limit:
                    what = (f"{entries:,} entries (the most grading reads: {limit:,})" if entries > limit else
                            f"files of {streamed:,} bytes so far, {path} alone {member.size:,} (grading reads the "
                            f"base's own and at most {max_extra_bytes:,} more; a sparse file counts at its size)")
                    raise TreeTooLarge(f"the work tree is too large to grade: {what}; nothing was graded. Delete "
                                       "large or many generated files in /testbed before submitting")
                if ".git" in parts:
                    continue
                if member.isdir():
                    deep = len(f"{workdir}/{path}/".encode("utf-8", "surrogateescape")) + 256
                    if deep + HOST_PREFIX_ALLOWANCE >= PATH_MAX:
                        tree[f"{path}/"] = Entry(mode=TOO_DEEP, sha="", size=0)
                    continue
                known = base.get(path)
                if member.islnk():
                    target = "/".join(PurePosixPath(member.linkname).parts[1:])
                    if target in tree:
                        tree[path] = tree[target]
                        hard_links.append((path, target))
                    continue
                mode = _mode_of(member)
                if mode == SYMLINK:
                    data = member.linkname.encode("utf-8", "surrogateescape")
                    tree[path] = Entry(mode=mode, sha=blob_id(data), size=len(data), data=data)
                    continue
                if mode == SPECIAL:
                    tree[path] = Entry(mode=mode, sha="", size=0)
                    continue
                handle = archive.extractfile(member)
                digest = hashlib.sha1(b"blob %d\0" % member.size)
                keep = member.size <= max_file_bytes and kept_bytes + member.size <= max_kept_bytes
                parts_read = []
                while True:
                    block = handle.read(1024 * 1024) if handle else b""
                    if not block:
                        break
                    digest.update(block)
                    if keep:
                        parts_read.append(block)
                sha = digest.hexdigest()
                same = known is not None and known.sha == sha and known.mode == mode
                data = b"".join(parts_read) if keep and not same else None
                kept_bytes += len(data or b"")
                tree[path] = Entry(mode=mode, sha=sha, size=member.size, data=data)
        for path, target in hard_links:  # a link to a file that is unchanged at its own path: fetch its bytes
            entry, known = tree[path], base.get(path)
            changed = known is None or (known.sha, known.mode) != (entry.sha, entry.mode)
            if changed and entry.data is None and entry.mode != SPECIAL and entry.size <= max_file_bytes:
                data = _one_file(api, container_id, [f"{workdir}/{name}" for name in (path, target)])
                if data is not None:  # None: neither name travels through the engine's API (left out, said)
                    tree[path] = Entry(mode=entry.mode, sha=entry.sha, size=entry.size, data=data)
    except TreeTooLarge:
        if hasattr(chunks, "close"):  # stop the engine's stream now (the rest of the archive is never read)
            chunks.close()
        raise
    except tarfile.TarError as err:
        raise SnapshotError(f"the archive of {workdir} in container {container_id[:12]} is unreadable: {err}") \
            from err
    except SnapshotError:
        raise
    except Exception as err:  # docker.errors.NotFound/APIError, requests errors: the container or engine
        raise SnapshotError(f"cannot read {workdir} from container {container_id[:12]}: "
                            f"{type(err).__name__}: {err}") from err
    return tree


def _one_file(api, container_id: str, names: list[str]) -> bytes | None:
    """The bytes of one file through the first of its ``names`` (hard links of one inode) that the engine's
    archive API can carry: a name that is not UTF-8 (read from the tree with surrogateescape) cannot be sent
    (``requests`` refuses it; sent as bytes the engine answers an empty archive). None when no name can."""
    path = next((name for name in names if _utf8(name)), None)
    if path is None:
        return None
    chunks, _ = api.get_archive(container_id, path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
        member = archive.next()
        handle = archive.extractfile(member) if member is not None else None
        return handle.read() if handle else b""


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def changes(base: dict[str, Entry], tree: dict[str, Entry]) -> list[Change]:
    """Paths whose mode or bytes differ between ``base`` and ``tree``, sorted by path."""
    found = []
    for path in sorted(base.keys() | tree.keys()):
        old, new = base.get(path), tree.get(path)
        if old is not None and new is not None and old.mode == new.mode and old.sha == new.sha:
            continue
        found.append(Change(path=path, old=old, new=new))
    return found
