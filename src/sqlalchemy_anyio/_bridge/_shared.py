"""One worker shared by every lessee, for pools that hold one DBAPI connection.

``StaticPool`` (an in-memory SQLite database) hands the same DBAPI connection
to every ``AsyncConnection``.  Exclusive workers would then use it from
several threads at once, which sqlite3 does not survive.  Sharing one worker
serializes every call on that connection instead, as aiosqlite's single
thread does.  Cancellation waits for the call rather than interrupting it:
the statement running may belong to another task.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Optional

from .. import _fork
from . import _placement
from ._worker import Worker


class SharedWorkerPool:
    """A :class:`WorkerPool` look-alike whose every lease is the same worker."""

    #: Lessees must not arm per-connection interrupters on a shared worker.
    shared = True
    #: The bound on a cancelled call on the worker (None: the default).
    cancel_timeout: Optional[float] = None
    #: Whether the worker follows the thread placement (see ``_placement``).
    placement: bool = _placement.placed(_placement.DEFAULT, local=False)
    #: The engine's admission gate, ``loop_spin`` and ``worker_spin`` (None: defaults).
    gate: Optional[Any] = None
    loop_spin: Optional[float] = None
    worker_spin: Optional[float] = None

    def __init__(self) -> None:
        self.limit = 1
        self._lock = threading.Lock()
        self._worker: Optional[Worker] = None
        #: Lessees per worker; a worker replaced after it broke ends with its
        #: last lessee.
        self._leases: dict[Worker, int] = {}
        _live.add(self)

    @property
    def size(self) -> int:
        with self._lock:
            return len(self._leases) or (0 if self._worker is None else 1)

    async def lease(self, timeout: Optional[float] = None) -> Worker:
        with self._lock:
            worker = self._worker
            if worker is None or worker.broken:
                worker = self._worker = Worker(self)
                worker.exclusive = False
            self._leases[worker] = self._leases.get(worker, 0) + 1
            return worker

    def release(self, worker: Worker) -> None:
        with self._lock:
            left = self._leases[worker] - 1
            if left:
                self._leases[worker] = left
                return
            del self._leases[worker]
            if worker is self._worker and not worker.broken:
                return  # stays, idle, for the next lessee
            if worker is self._worker:
                self._worker = None
        worker.stop()

    def has_waiters(self) -> bool:
        """Never: lessees of the one shared worker queue behind each other."""
        return False

    def _take_idle(self) -> Optional[Worker]:
        with self._lock:
            worker = self._worker
            if worker is None or worker in self._leases:
                return None
            self._worker = None
        worker.stop()
        return worker

    async def dispose(self) -> None:
        """End the worker if nobody holds it."""
        worker = self._take_idle()
        if worker is not None:
            await worker.wait_stopped()

    def dispose_sync(self, timeout: Optional[float] = None) -> None:
        worker = self._take_idle()
        if worker is not None:
            worker.join(timeout)

    def _reset_after_fork(self) -> None:
        """In a forked child: the shared worker is gone; the next lessee
        starts another."""
        self._lock = threading.Lock()
        self._worker = None


_live: weakref.WeakSet[SharedWorkerPool] = weakref.WeakSet()


@_fork.in_child
def _reset_after_fork() -> None:
    for pool in list(_live):
        pool._reset_after_fork()
