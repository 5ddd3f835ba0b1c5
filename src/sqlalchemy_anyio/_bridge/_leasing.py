"""The per-engine pool of workers: a bounded set, leased with an async wait.

A lessee (an AsyncConnection, an AsyncSession) holds its worker for as long
as it holds a DBAPI connection; released workers wait idle for the next one.
``dispose()`` retires the idle ones at once and the leased ones as they come
back (a generation number tells them apart).
"""

from __future__ import annotations

import atexit
import collections
import threading
import weakref
from typing import Any, Deque, Optional

import anyio

from .. import _fork
from . import _impl, _placement
from ._worker import Worker


class WorkerPool:
    """A bounded set of reusable workers, leased with an async wait."""

    #: The bound on a cancelled call on these workers (None: the default).
    cancel_timeout: Optional[float] = None
    #: Whether these workers follow the thread placement (see ``_placement``).
    placement: bool = _placement.placed(_placement.DEFAULT, local=False)
    #: The engine's admission gate, ``loop_spin`` and ``worker_spin`` (None: defaults).
    gate: Optional[Any] = None
    loop_spin: Optional[float] = None
    worker_spin: Optional[float] = None

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a worker pool needs a limit of at least 1")
        self.limit = limit
        self._lock = threading.Lock()
        self._idle: list[Worker] = []
        self._count = 0
        self._generation = 0
        self._waiters: Deque[Any] = collections.deque()
        _live_pools.add(self)

    @property
    def size(self) -> int:
        """Workers alive (idle or leased)."""
        with self._lock:
            return self._count

    async def lease(self, timeout: Optional[float] = None) -> Worker:
        """Take an idle worker, start one, or wait for one to be released.

        Raises ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self._count < self.limit:
                self._count += 1
                generation = self._generation
                waiter = None
            else:
                waiter = _impl.Job()
                self._waiters.append(waiter)
        if waiter is None:
            try:
                return Worker(self, generation)
            except BaseException:
                with self._lock:
                    self._count -= 1
                raise
        try:
            with anyio.fail_after(timeout):
                await _impl.wait(waiter)
        except BaseException:
            with self._lock:
                if not waiter.done:
                    self._waiters.remove(waiter)
                    raise
            self.release(waiter.outcome())  # handed over as we gave up: pass it on
            raise
        return waiter.outcome()  # type: ignore[no-any-return]

    def release(self, worker: Worker) -> None:
        """Give a worker back; any thread, any loop.  Never blocks."""
        worker.disarm()
        worker.take_streams()
        with self._lock:
            if not worker.broken and worker.generation == self._generation:
                if self._waiters:
                    self._waiters.popleft().set(worker)
                else:
                    self._idle.append(worker)
                return
            # Broken, or from before a dispose(): retire it, and let the
            # longest waiter have a fresh worker in its place.
            self._count -= 1
            if self._waiters:
                self._count += 1
                self._waiters.popleft().set(Worker(self, self._generation))
        worker.stop()

    def _take_idle(self) -> list[Worker]:
        with self._lock:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._generation += 1
        for worker in idle:
            worker.stop()
        return idle

    async def dispose(self) -> None:
        """Stop idle workers and wait for their threads to end.

        Workers leased right now end when they are released.
        """
        for worker in self._take_idle():
            await worker.wait_stopped()

    def dispose_sync(self, timeout: Optional[float] = None) -> None:
        for worker in self._take_idle():
            worker.join(timeout)

    def has_waiters(self) -> bool:
        return bool(self._waiters)

    def _reset_after_fork(self) -> None:
        """In a forked child: none of the workers exists; those leased in
        the parent are retired if they ever come back."""
        self._lock = threading.Lock()
        self._count -= len(self._idle)
        self._idle = []
        self._waiters.clear()
        self._generation += 1


_live_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


@_fork.in_child
def _reset_after_fork() -> None:
    for pool in list(_live_pools):
        pool._reset_after_fork()


@atexit.register
def _stop_all_workers() -> None:
    """Let no idle worker outlive the interpreter (threads are daemonic too)."""
    for pool in list(_live_pools):
        pool.dispose_sync(timeout=1.0)
