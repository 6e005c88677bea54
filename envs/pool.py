"""A warm pool of pre-started sandboxes: a fresh container per episode without waiting for one to start.

Anchor: the OpenHands runtime's warm pool. Episodes must share nothing (git objects, stash, reflog, hooks,
home, ``/tmp``, ``/var/tmp``, ``/dev/shm``, processes), and cleaning a used container cannot promise that.
So every ``acquire`` hands out a container that no episode has touched, started from the image in the
background, and ``discard`` removes the used one off the hot path.

- Per sandbox configuration (image, limits, ...) the pool keeps ``idle`` containers ready or starting
  (default 2); ``acquire`` takes the oldest (waiting for it if it is still starting), checks it answers
  (one runner round trip) and schedules a replacement; with none ready it starts one inline (a cold start).
- At most ``max_configs`` configurations are kept warm (least recently used first out), so a stream of tasks
  with different images does not pile up idle containers: at most ``idle * max_configs`` idle containers.
- Idle containers are ordinary lightswe sandboxes (labelled, named, owned by this process): ``close()``
  removes them; an ``atexit`` hook removes them and the handed-out ones still open when the process exits;
  :func:`lightswe.envs.sandbox.reap_orphans` removes those of a killed process.

Example::

    pool = SandboxPool(PoolConfig(idle=2))
    box = pool.acquire(SandboxConfig(image=tag))   # ready at once when the pool is warm
    ...
    pool.discard(box)                              # removed in the background
    pool.close()                                   # removes the idle ones too (waits for removals)
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
import weakref
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

from lightswe.envs.sandbox import Sandbox, SandboxConfig, SandboxError, default_client
from lightswe.errors import UserInputError

log = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class PoolConfig:
    """How many pre-started containers to keep; see the module docstring."""

    idle: int = 2  # ready (or starting) containers per sandbox configuration; 0 = no pool (cold starts)
    max_configs: int = 2  # configurations (images) kept warm at once, least recently used dropped first
    workers: int = 2  # background threads starting containers (one more removes them)

    def __post_init__(self) -> None:
        for name in ("idle", "max_configs", "workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "idle" else 1):
                raise UserInputError(f"PoolConfig.{name}={value!r}; fix: an integer >= {0 if name == 'idle' else 1}")


def _key(config: SandboxConfig) -> str:
    return json.dumps(asdict(config), sort_keys=True)


_POOLS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # no container of a pool outlives the process: idle ones and those handed out
    for pool in list(_POOLS):
        try:
            pool.close()
            for box in list(pool._handed):
                box.close()
        except Exception:  # noqa: BLE001 - best effort at exit; the reaper removes the rest
            pass


class SandboxPool:
    """Pre-started sandboxes per configuration; thread-safe. See the module docstring."""

    def __init__(self, config: PoolConfig | None = None, *, client=None) -> None:
        self.config = config or PoolConfig()
        self._client = client
        self._lock = threading.Lock()
        self._idle: OrderedDict[str, deque[Future]] = OrderedDict()  # key -> ready/starting, LRU order
        self._starter = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="sandbox-start")
        self._remover = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-remove")
        self._closed = False
        self._handed: weakref.WeakSet = weakref.WeakSet()  # acquired sandboxes, closed at exit if still open
        self.started = self.cold_starts = self.discarded = 0  # counters for benchmarks and tests
        _POOLS.add(self)

    @property
    def client(self):
        if self._client is None:
            self._client = default_client()
        return self._client

    # ---------------------------------------------------------------------------------------------- API
    def acquire(self, config: SandboxConfig) -> Sandbox:
        """A running sandbox no episode has used, from ``config``; the caller owns it (``discard`` or ``close``).

        Raises :class:`~lightswe.envs.sandbox.SandboxError` when no container can be started.
        """
        if self._closed:
            raise SandboxError("the sandbox pool is closed; create a new SandboxPool")
        key = _key(config)
        with self._lock:
            queue = self._touch(key)
            future = queue.popleft() if queue else None
            self._refill(key, config)
        if future is not None:
            try:
                box = future.result()
            except Exception as err:  # noqa: BLE001 - a failed background start: try inline below
                log.warning("a pre-started sandbox failed to start (%s); starting one now", err)
                box = None
            if box is not None:
                if self._healthy(box):
                    self._handed.add(box)
                    return box
                self.discard(box)
        self.cold_starts += 1
        box = Sandbox(config, client=self.client)
        self._handed.add(box)
        return box

    def warm(self, config: SandboxConfig) -> None:
        """Start filling the pool for ``config`` now (e.g. before the first episode)."""
        with self._lock:
            self._touch(_key(config))
            self._refill(_key(config), config)

    def fresh(self, config: SandboxConfig):
        """``() -> Sandbox``: a callable handing out fresh sandboxes of ``config`` (e.g. for grading)."""
        return lambda: self.acquire(config)

    def discard(self, box: Sandbox) -> None:
        """Remove a used sandbox in the background (inline once the pool is closed)."""
        self.discarded += 1
        if self._closed:
            box.close()
            return
        try:
            self._remover.submit(box.close)
        except RuntimeError:  # interpreter shutting down: executors refuse work
            box.close()

    def idle_count(self, config: SandboxConfig | None = None) -> int:
        """Containers ready or starting (for one configuration, or all)."""
        with self._lock:
            if config is not None:
                return len(self._idle.get(_key(config), ()))
            return sum(len(q) for q in self._idle.values())

    def wait_ready(self, config: SandboxConfig, timeout: float = 120.0) -> bool:
        """Block until every idle container of ``config`` has started; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            futures = list(self._idle.get(_key(config), ()))
        for future in futures:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - a timeout or a failed start
                return False
        return True

    def close(self) -> None:
        """Remove every idle container and wait for pending removals (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            futures = [f for q in self._idle.values() for f in q]
            self._idle.clear()
        for future in futures:
            future.cancel()
        self._starter.shutdown(wait=True, cancel_futures=True)
        for future in futures:
            if future.cancelled():
                continue
            try:
                future.result().close()
            except Exception:  # noqa: BLE001 - failed starts have nothing to remove
                pass
        self._remover.shutdown(wait=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ helpers
    def _touch(self, key: str) -> deque[Future]:
        """Mark ``key`` most recently used; drop the idle containers of configurations past ``max_configs``."""
        queue = self._idle.setdefault(key, deque())
        self._idle.move_to_end(key)
        while len(self._idle) > self.config.max_configs:
            _, old = self._idle.popitem(last=False)
            for future in old:
                future.add_done_callback(self._drop)
        return queue

    def _drop(self, future: Future) -> None:
        if not future.cancelled() and future.exception() is None:
            self.discard(future.result())

    def _refill(self, key: str, config: SandboxConfig) -> None:
        queue = self._idle[key]
        while len(queue) < self.config.idle and not self._closed:
            try:
                queue.append(self._starter.submit(self._start_one, config))
            except RuntimeError:  # interpreter shutting down
                return

    def _start_one(self, config: SandboxConfig) -> Sandbox:
        box = Sandbox(config, client=self.client)
        try:
            box.exec("true", timeout=60)  # starts the in-container runner now, not in the episode
        except Exception:
            box.close()
            raise
        self.started += 1
        if self._closed:
            box.close()
            raise SandboxError("the pool closed while this sandbox started")
        return box

    @staticmethod
    def _healthy(box: Sandbox) -> bool:
        try:
            return box.exec("true", timeout=30).exit_code == 0
        except Exception:  # noqa: BLE001 - any failure: not usable
            return False
