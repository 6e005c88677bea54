"""The trajectory record RL needs, and its append-only store.

A ``Trajectory`` is one episode in token space: ``token_ids`` exactly as the policy saw and produced them,
``loss_mask`` 1 only on tokens the policy generated, ``logprobs`` the sampler's log-probability of each
generated token (0.0 where the mask is 0), plus reward, status and what the viewer shows (``messages``, each
with its token span).

Storage (``TrajectoryWriter``): whole JSON lines appended to a segment ``part-<writer>-<n>.jsonl`` and fsynced
one by one, so a crash loses at most the episode in flight (a torn last line is skipped on read). A full
segment becomes ``part-<writer>-<n>.parquet`` through a temporary file and an atomic rename; the JSONL segment
is deleted after. ``read_trajectories`` reads both (a Parquet shard wins over a JSONL segment of the same
name) and validates every record.

Example::

    with TrajectoryWriter("runs/r1") as writer:
        writer.write(trajectory)
    done = {t.episode_id for t in read_trajectories("runs/r1")}
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from lightswe.durable import atomic_file, fsync_dir
from lightswe.errors import InfrastructureError, UserInputError
from lightswe.jsonl import jsonl_records

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class EpisodeStatus(str, Enum):
    """How an episode ended. Only ``SUBMITTED`` episodes were graded by the task's tests."""

    SUBMITTED = "submitted"
    STEP_LIMIT = "step_limit"
    CONTEXT_LIMIT = "context_limit"
    FORMAT_ERRORS_EXCEEDED = "format_errors_exceeded"
    SANDBOX_ERROR = "sandbox_error"  # infrastructure failure: the learner excludes the run, never scores it 0
    REPETITION_STOP = "repetition_stop"  # early stop: N consecutive tokens each with probability > p


class TrajectoryFormatError(UserInputError):
    """A stored record that does not match the schema: names the file, the record and the field."""


class TrajectoryStoreError(InfrastructureError, OSError):
    """Writing the store failed (disk full, I/O error): one line naming the folder, the cause and the fix. What
    was written before stays readable (a torn last line is skipped, a half-written shard removed)."""


@dataclass(kw_only=True, slots=True)
class Message:
    """One chat turn; ``[start, end)`` is its token span including the template glue."""

    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    start: int
    end: int
    tool_call: dict | None = None  # {"name": ..., "arguments": {...}} for a parsed assistant call
    format_error: str | None = None  # what was wrong with the assistant's output, if anything
    finish_reason: str | None = None  # assistant turns: "stop" | "length" | "early_stop"


@dataclass(kw_only=True, slots=True)
class Trajectory:
    episode_id: str  # "<group_id>/<sample_index>": stable, used to resume
    task_id: str
    group_id: str  # "<task_id>@<round>": the G samples of one task in one round share it (advantages)
    sample_index: int
    token_ids: list[int]
    loss_mask: list[int]  # 1 on policy-generated tokens only
    logprobs: list[float]  # sampler log-probs aligned to token_ids; 0.0 where loss_mask is 0
    reward: float | None  # None: not graded (sandbox error)
    status: EpisodeStatus
    messages: list[Message] = field(default_factory=list)
    tests: dict[str, str] = field(default_factory=dict)  # test id -> outcome ("passed", "failed", ...)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: reset, generate, env (steps), grade, total
    num_steps: int = 0
    num_format_errors: int = 0
    policy: str = ""  # the policy spec that produced it
    policy_version: int = 0  # weights version, for off-policy bookkeeping
    error: str = ""  # the exception text when status is sandbox_error
    model_patch: str = ""  # the agent's final diff against the base commit, as graded (SWE-bench predictions)
    created_at: float = 0.0
    schema_version: int = SCHEMA_VERSION

    @property
    def num_generated_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def resolved(self) -> bool:
        return self.reward is not None and self.reward >= 1.0

    @property
    def graded(self) -> bool:
        """Whether the task's tests scored the episode: not a ``sandbox_error`` and a reward (a broken task's
        grading gives None). Ungraded episodes are the machine's or the task's failure: left out of success
        rates and advantages, never counted as unresolved."""
        return self.status is not EpisodeStatus.SANDBOX_ERROR and self.reward is not None

    @property
    def truncated(self) -> bool:
        """A turn was cut by the token budget, or the context ran out (DAPO's "overlong" samples)."""
        return self.status is EpisodeStatus.CONTEXT_LIMIT or any(
            m.role == "assistant" and m.finish_reason == "length" for m in self.messages)

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        record["status"] = self.status.value
        return record

    @classmethod
    def from_dict(cls, record: dict, *, where: str = "record") -> Trajectory:
        """Validate and build; raises ``TrajectoryFormatError`` saying which field is wrong."""
        return cls(**_validated(record, where))


_FIELDS = {f.name: f for f in dataclasses.fields(Trajectory)}
_REQUIRED = [n for n, f in _FIELDS.items()
             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
_PARQUET_JSON_FIELDS = ("messages", "tests", "timings")  # nested or free-form: stored as JSON text columns
_TYPES = {"episode_id": str, "task_id": str, "group_id": str, "sample_index": int, "num_steps": int,
          "num_format_errors": int, "policy": str, "policy_version": int, "error": str, "schema_version": int,
          "model_patch": str}


# The largest log-prob accepted: 0 plus float rounding of a near-certain token's log-softmax. The one bound of the
# store's reader, the learner's batch and the backends' samples (``policies.base.check_sample``).
MAX_LOGPROB = 1e-6


def check_tokens(token_ids: Sequence, loss_mask: Sequence, logprobs: Sequence, *, where: str) -> list[float]:
    """What a learner needs of a trajectory's token arrays: equal lengths, ids ints >= 0, mask 0/1, each log-prob
    a finite number <= 0 (``MAX_LOGPROB`` of float rounding allowed). Returns the log-probs as floats. Shared by
    the store's reader and the learner's batch (``train_step.batch_from``), so nothing inconsistent is trained on
    silently.

    Raises:
        TrajectoryFormatError: one line, ``where`` first, naming the field that is wrong.
    """
    if not (len(token_ids) == len(loss_mask) == len(logprobs)):
        raise TrajectoryFormatError(f"{where}: token_ids, loss_mask, logprobs lengths differ: {len(token_ids)}, "
                                    f"{len(loss_mask)}, {len(logprobs)}")
    if any(m not in (0, 1) for m in loss_mask):
        raise TrajectoryFormatError(f"{where}: loss_mask must hold only 0 and 1")
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in token_ids):
        raise TrajectoryFormatError(f"{where}: token_ids must be non-negative integers")
    try:
        lps = [float(x) for x in logprobs]
    except (TypeError, ValueError):
        raise TrajectoryFormatError(f"{where}: logprobs must be numbers") from None
    bad = next((i for i, x in enumerate(lps) if not math.isfinite(x) or x > MAX_LOGPROB), None)
    if bad is not None:
        raise TrajectoryFormatError(f"{where}: logprobs must be finite and <= 0 (not NaN or infinite); token {bad} "
                                    f"has {lps[bad]!r}")
    return lps


def _validated(record: dict, where: str) -> dict:
    def bad(msg: str) -> TrajectoryFormatError:
        fix = "" if "re-run the rollout" in msg else ("; fix: this record was not written by lightswe's trajectory "
                                                      "writer (edited or from elsewhere): remove the line, or re-run "
                                                      "the rollout into a new --out")
        return TrajectoryFormatError(f"{where}: {msg}{fix}")

    if not isinstance(record, dict):
        raise bad(f"expected a JSON object, got {type(record).__name__}")
    missing = [n for n in _REQUIRED if n not in record]
    if missing:
        raise bad(f"missing field(s) {missing}; a trajectory needs {_REQUIRED}")
    if record.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise bad(f"schema_version {record['schema_version']} is not {SCHEMA_VERSION}; re-run the rollout")
    values = {k: v for k, v in record.items() if k in _FIELDS}
    for name, kind in _TYPES.items():
        if name in values and not isinstance(values[name], kind):
            raise bad(f"field {name!r} must be {kind.__name__}, got {type(values[name]).__name__}")
    ids = values["token_ids"]
    values["logprobs"] = check_tokens(ids, values["loss_mask"], values["logprobs"], where=where)
    try:
        values["status"] = EpisodeStatus(values["status"])
    except ValueError:
        raise bad(f"status {values['status']!r} is not one of {[s.value for s in EpisodeStatus]}") from None
    reward = values["reward"]
    if reward is not None and not isinstance(reward, (int, float)):
        raise bad(f"reward must be a number or null, got {reward!r}")
    values["reward"] = None if reward is None or math.isnan(reward) else float(reward)
    for key in _PARQUET_JSON_FIELDS:  # Parquet stores these as JSON text
        if isinstance(values.get(key), str):
            values[key] = json.loads(values[key])
    messages = []
    for i, m in enumerate(values.get("messages") or []):
        try:
            msg = m if isinstance(m, Message) else Message(**m)
        except TypeError as err:
            raise bad(f"message {i} does not match the Message fields ({err})") from None
        if not 0 <= msg.start <= msg.end <= len(ids):
            raise bad(f"message {i} span [{msg.start}, {msg.end}) is outside the {len(ids)} tokens")
        messages.append(msg)
    values["messages"] = messages
    return values


# --------------------------------------------------------------------------------------------- storage


def _parquet_table(records: list[dict]):
    import pyarrow as pa

    rows = [{k: (json.dumps(v, ensure_ascii=False) if k in _PARQUET_JSON_FIELDS else v) for k, v in r.items()}
            for r in records]
    schema = pa.schema([
        ("episode_id", pa.string()), ("task_id", pa.string()), ("group_id", pa.string()),
        ("sample_index", pa.int64()), ("token_ids", pa.list_(pa.int32())), ("loss_mask", pa.list_(pa.int8())),
        ("logprobs", pa.list_(pa.float32())), ("reward", pa.float64()), ("status", pa.string()),
        ("messages", pa.string()), ("tests", pa.string()), ("timings", pa.string()), ("num_steps", pa.int64()),
        ("num_format_errors", pa.int64()), ("policy", pa.string()), ("policy_version", pa.int64()),
        ("error", pa.string()), ("created_at", pa.float64()), ("schema_version", pa.int64()),
        ("model_patch", pa.string()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


class TrajectoryWriter:
    """Append-only, thread-safe; every ``write`` is on disk (fsynced) before it returns.

    ``shard_size`` records per segment; ``parquet=False`` keeps JSONL segments only (no pyarrow needed).
    A new writer never appends to an old segment, so a torn line can only be a segment's last.

    Names and order do not depend on timing: the k-th writer of a folder writes ``part-wKKKK-SSSSS.jsonl``
    (the number claimed with an exclusive create, so concurrent writers never share one), and ``order`` (the
    rollout's episode ids in job order) sorts each segment when it is sealed: records arrive as episodes finish,
    a sealed segment lists them in job order (a rollout of at most ``shard_size`` episodes is one segment).
    """

    def __init__(self, out_dir: str | Path, *, shard_size: int = 64, parquet: bool = True,
                 order: Sequence[str] = ()) -> None:
        if shard_size < 1:
            raise UserInputError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size, self.parquet = shard_size, parquet
        self._rank = {episode_id: i for i, episode_id in enumerate(order)}
        self._name = ""  # "w0001", claimed at the first write
        self._seq, self._records, self._handle = 0, [], None
        self._lock = threading.Lock()
        if parquet:
            import pyarrow  # noqa: F401 - fail now, not at the first full shard
        self.written = 0

    def _segment(self, suffix: str) -> Path:
        return self.out_dir / f"part-{self._name}-{self._seq:05d}{suffix}"

    def write(self, trajectory: Trajectory) -> None:
        """Append one record, on disk (fsynced) when this returns.

        Raises:
            TrajectoryStoreError: the disk is full or failed; the segment is then left as it is (at most a torn
            last line, skipped on read) and the next write starts a new one, so no record follows a torn line.
        """
        record = trajectory.to_dict()
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            try:
                if self._handle is None:
                    self._handle = self._open_segment()
                    fsync_dir(self.out_dir)
                try:
                    self._handle.write(line)
                    self._handle.flush()
                    os.fsync(self._handle.fileno())
                except BaseException:  # disk full, I/O error, Ctrl-C mid-line: never append after a torn line
                    self._abandon_segment()
                    raise
                self._records.append(record)
                self.written += 1
                if len(self._records) >= self.shard_size:
                    self._seal()
            except OSError as err:
                raise self._store_error(err) from err

    def _store_error(self, err: OSError) -> TrajectoryStoreError:
        return TrajectoryStoreError(
            f"cannot write trajectories to {self.out_dir}: {err.strerror or err}; the finished episodes written "
            f"before are kept: fix: free space (df -h {self.out_dir}) or fix the disk, then run the same command "
            "again (it resumes)")

    def _abandon_segment(self) -> None:
        """Leave the current segment as it is on disk (its records stay readable as JSONL) and start the next
        write in a new one. The unwritten rest of a torn line is dropped, never flushed later."""
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                os.close(handle.fileno())  # the buffer's rest must not complete the line behind our back
            except OSError:
                pass
            try:
                handle.close()
            except (OSError, ValueError):
                pass
        self._records = []
        self._seq += 1

    def _open_segment(self):
        """The next segment, opened for writing; the first one claims this writer's number."""
        if self._name:
            return self._segment(".jsonl").open("x", encoding="utf-8")
        taken = [int(p.name[6:10]) for p in self.out_dir.glob("part-w[0-9][0-9][0-9][0-9]-*")
                 if p.name[6:10].isdigit()]
        number = max(taken, default=0) + 1
        while True:
            self._name = f"w{number:04d}"
            try:
                return self._segment(".jsonl").open("x", encoding="utf-8")
            except FileExistsError:  # another writer claimed this number meanwhile
                number += 1

    def _seal(self) -> None:
        """Sort the current segment into job order (``order``; an atomic rewrite), turn it into a Parquet shard
        (atomic rename) and drop the JSONL."""
        if self._handle is None:
            return
        self._handle.close()
        self._handle = None
        if self._rank and self._records:
            last = len(self._rank)  # episodes outside ``order`` keep their arrival order, after the others
            ordered = sorted(self._records, key=lambda r: self._rank.get(r.get("episode_id"), last))
            if ordered != self._records:
                self._records = ordered
                if not self.parquet:
                    with atomic_file(self._segment(".jsonl")) as handle:
                        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered)
        if self.parquet and self._records:
            import pyarrow.parquet as pq

            with atomic_file(self._segment(".parquet"), "wb") as handle:
                pq.write_table(_parquet_table(self._records), handle)
            self._segment(".jsonl").unlink()
        self._records = []
        self._seq += 1

    def close(self) -> None:
        """Seal the current segment. Raises TrajectoryStoreError when the disk fails (the JSONL segment stays)."""
        with self._lock:
            try:
                self._seal()
            except OSError as err:
                self._abandon_segment()
                raise self._store_error(err) from err

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _iter_jsonl(path: Path) -> Iterator[dict]:
    """A segment's records; a torn last line (an episode cut by a crash mid-write) is skipped, a bad line in the
    middle raises TrajectoryFormatError."""
    for _, record in jsonl_records(path, error=TrajectoryFormatError, torn_last=True):
        yield record


def _iter_parquet(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    yield from pq.read_table(path).to_pylist()


def read_trajectories(out_dir: str | Path) -> Iterator[Trajectory]:
    """Every stored trajectory of a rollout directory, validated; duplicates (same episode id) read once. A
    graded record supersedes a ``sandbox_error`` one of the same episode (a resume retried the machine's
    failure); episodes that only ever ended in ``sandbox_error`` come last."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"rollout directory {out_dir} does not exist; make one with `lightswe rollout`")
    parquet = {p.name[: -len(".parquet")] for p in out_dir.glob("part-*.parquet")}
    paths = sorted(out_dir.glob("part-*.parquet")) + sorted(
        p for p in out_dir.glob("part-*.jsonl") if p.stem not in parquet)
    seen: set[str] = set()
    infra: dict[str, Trajectory] = {}  # episodes seen so far only as sandbox_error
    for path in paths:
        records = _iter_parquet(path) if path.suffix == ".parquet" else _iter_jsonl(path)
        for i, record in enumerate(records):
            trajectory = Trajectory.from_dict(record, where=f"{path} record {i}")
            if trajectory.episode_id in seen:
                continue
            if trajectory.status is EpisodeStatus.SANDBOX_ERROR:
                infra.setdefault(trajectory.episode_id, trajectory)
                continue
            seen.add(trajectory.episode_id)
            infra.pop(trajectory.episode_id, None)
            yield trajectory
    yield from infra.values()


def finished_episode_ids(out_dir: str | Path) -> set[str]:
    """Episode ids already on disk with a grade (what a resumed rollout skips): an episode that ended in
    ``sandbox_error`` (the machine's failure, never scored) is run again."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return set()
    return {t.episode_id for t in read_trajectories(out_dir) if t.status is not EpisodeStatus.SANDBOX_ERROR}
