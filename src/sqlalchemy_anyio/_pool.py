"""A QueuePool whose every connection lives on its own worker thread.

SQLAlchemy's QueuePool hands any idle connection to any thread.  Here the
unit the pool hands out is a *worker*: one thread that owns at most one
pooled DBAPI connection, which it opens, uses, resets and closes for the
connection's whole life.  An async caller waits once, for a worker (and so
for a connection), with ``pool_timeout`` as the bound; when it lets go, the
worker goes straight to the next waiter with its connection still open.

Sizes, overflow, ``pool_timeout``, events, ``pre_ping``, ``recycle`` and
``reset_on_return`` keep QueuePool's meaning, with one difference: an
overflow connection that comes back while ``pool_size`` connections are idle
is not closed at once but after ``overflow_linger`` seconds in which it was
never needed (0: at once, as QueuePool does).  Under a load that moves around
``pool_size`` QueuePool closes and reopens connections many times a second,
and each reopening is a new thread and a new connection here (PyMySQL 1.2
spends 24 ms of CPU on every connect).  A checkout from any other
thread (code on the event loop, a second connection opened inside
``run_sync``, a session with binds on several engines) gets a *temporary*
connection, opened and closed on that thread and counted against the same
limit.
"""

from __future__ import annotations

import collections
import logging
import threading
import weakref
from typing import Any, Deque, Optional

from sqlalchemy import exc
from sqlalchemy.pool import Pool, QueuePool
from sqlalchemy.pool.base import ConnectionPoolEntry

from . import _fork
from ._bridge import Worker, _impl, _placement, current_worker

log = logging.getLogger("sqlalchemy_anyio")

#: Set on a record that was opened for a foreign thread: closed at check-in.
_TEMPORARY = "_sqlalchemy_anyio_temporary"

#: How long a synchronous dispose() waits for each idle worker to close.
DISPOSE_WAIT = 10.0

#: The default ``overflow_linger`` (seconds).
OVERFLOW_LINGER = 1.0


class WorkerQueuePool(QueuePool):
    """QueuePool semantics; each connection on its own worker thread.

    The pool keeps, under one lock: the idle workers (connection checked
    in), the callers waiting for one, and how many connections are open or
    promised.  A worker's connection is ``worker.record``; whether it is
    checked out right now is ``worker.record_out``, only touched on that
    worker's thread.
    """

    _is_asyncio = False
    #: The bound on a cancelled call on this pool's workers (None: the default).
    cancel_timeout: Optional[float] = None
    #: The admission gate of this pool's workers (None: the process-wide one);
    #: SQLite engines and engines given ``active_workers=`` get their own
    #: (``_impl.engine_gate``).
    gate: Optional[Any] = None
    #: Whether this pool's workers follow the thread placement (the engine's
    #: ``thread_placement``; see ``_bridge._placement``).
    placement: bool = _placement.placed(_placement.DEFAULT, local=False)
    #: Seconds an idle overflow connection is kept for in case it is needed
    #: again (the engine's ``overflow_linger``; 0: closed at once).
    overflow_linger: float = OVERFLOW_LINGER
    #: The engine's ``loop_spin`` and ``worker_spin`` (None: the defaults).
    loop_spin: Optional[float] = None
    worker_spin: Optional[float] = None

    def __init__(
        self,
        creator: Any,
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout: float = 30.0,
        use_lifo: bool = False,
        **kw: Any,
    ) -> None:
        Pool.__init__(self, creator, **kw)
        self._pool_size = pool_size
        self._max_overflow = -1 if pool_size == 0 else max_overflow
        self._timeout = timeout
        self._use_lifo = use_lifo
        self._lock = threading.Lock()
        self._idle: Deque[Worker] = collections.deque()
        #: Waiters in arrival order: each is a Job whose outcome is a Worker
        #: (its connection checked in) or None (a free slot to open one in).
        self._waiters: Deque[Any] = collections.deque()
        #: Connections open or being opened, on workers and temporary ones.
        self._open = 0
        #: Set by recreate(): this pool is out of service; what comes back
        #: is closed.
        self._replaced = False
        #: Workers ending (their connection closing): dispose() waits for them.
        self._retiring: list[Worker] = []
        #: While more than ``pool_size`` workers are idle: the timer that
        #: closes those never needed, and the fewest idle since it started.
        self._trim_timer: Optional[threading.Timer] = None
        self._idle_low = 0
        _live.add(self)

    # -- capacity -------------------------------------------------------------

    def _may_open_locked(self) -> bool:
        return self._max_overflow == -1 or self._open < self._pool_size + self._max_overflow

    def _keeps_idle_locked(self) -> bool:
        if self._replaced:
            return False
        return self._pool_size == 0 or len(self._idle) < self._pool_size or self.overflow_linger > 0

    def _trim_later_locked(self) -> Optional[threading.Timer]:
        """A timer to start if idle workers now exceed ``pool_size`` and none runs."""
        if self._trim_timer is not None or not self._pool_size:
            return None
        if len(self._idle) <= self._pool_size:
            return None
        self._idle_low = len(self._idle)
        timer = self._trim_timer = threading.Timer(self.overflow_linger, self._trim)
        timer.daemon = True
        timer.name = "sqlalchemy-anyio-pool-trim"
        return timer

    def _trim(self) -> None:
        """Close the idle connections beyond ``pool_size`` that stayed idle
        for the whole ``overflow_linger`` (the timer's thread)."""
        with self._lock:
            if self._trim_timer is not threading.current_thread():
                return  # disposed or forked meanwhile
            self._trim_timer = None
            surplus = min(self._idle_low, len(self._idle)) - self._pool_size
            spare = [self._idle.popleft() for _ in range(max(surplus, 0))]
            self._open -= len(spare)
            timer = self._trim_later_locked()
        for worker in spare:
            self._retire(worker, close=True)
        if timer is not None:
            timer.start()

    def _grant_slot_locked(self) -> Optional[Any]:
        """A slot just freed: promise it to the longest waiter, if any."""
        if self._waiters and self._may_open_locked():
            self._open += 1
            return self._waiters.popleft()
        return None

    def _timeout_error(self) -> exc.TimeoutError:
        return exc.TimeoutError(
            f"QueuePool limit of size {self.size()} overflow {self.overflow()} reached, "
            f"connection timed out, timeout {self._timeout:.2f}",
            code="3o7r",
        )

    # -- the async side: leasing workers ------------------------------------

    async def lease(self) -> Worker:
        """A worker with this pool's connection idle on it, or a new one.

        Waits (cancellably) for one to be released; past ``pool_timeout``
        raises ``sqlalchemy.exc.TimeoutError`` as an exhausted QueuePool does.
        """
        with self._lock:
            if self._idle:
                worker = self._idle.pop() if self._use_lifo else self._idle.popleft()
                self._idle_low = min(self._idle_low, len(self._idle))
                return worker
            if self._may_open_locked():
                self._open += 1
                waiter = None
            else:
                waiter = _impl.Job()
                self._waiters.append(waiter)
        if waiter is None:
            return self._new_worker()
        try:
            arrived = await _impl.wait_for(waiter, self._timeout)
        except BaseException:
            self._give_up(waiter)
            raise
        if not arrived:
            self._give_up(waiter)
            raise self._timeout_error()
        worker = waiter.outcome()
        return worker if worker is not None else self._new_worker()

    def _give_up(self, waiter: Any) -> None:
        """Leave the line; what was handed over meanwhile goes to the next one."""
        with self._lock:
            if not waiter.done:
                self._waiters.remove(waiter)
                return
        handed = waiter.outcome()
        if handed is None:
            self._free_slot()
        else:
            self.release(handed)

    def _new_worker(self) -> Worker:
        """A worker for a slot already counted in ``_open``."""
        try:
            worker = Worker(self)
        except BaseException:
            self._free_slot()
            raise
        return worker

    def release(self, worker: Worker) -> None:
        """Take back a worker whose connection is checked in.  Never blocks.

        The longest waiter gets it as it is; with nobody waiting it stays
        idle, up to ``pool_size`` of them, and beyond that its connection is
        closed (on its thread) and the thread ends.
        """
        worker.disarm()
        worker.take_streams()
        grant = handed = timer = None
        with self._lock:
            retire = (
                worker.broken or worker.record is None or self._replaced or worker.pool is not self
            )
            if not retire and self._waiters:
                handed = self._waiters.popleft()
            elif not retire and self._keeps_idle_locked():
                self._idle.append(worker)
                timer = self._trim_later_locked()
            else:
                retire = True
                self._open -= 1
                grant = self._grant_slot_locked()
        if timer is not None:
            timer.start()
        if handed is not None:
            handed.set(worker)
        if retire:
            self._retire(worker, close=True)
        if grant is not None:
            grant.set(None)

    def _free_slot(self) -> None:
        with self._lock:
            self._open -= 1
            grant = self._grant_slot_locked()
        if grant is not None:
            grant.set(None)

    def has_waiters(self) -> bool:
        """Whether somebody waits for a connection right now (a hint: then a
        lessee need not wait for its worker to finish closing)."""
        return bool(self._waiters)

    # -- the worker side: SQLAlchemy's Pool interface ------------------------

    def _do_get(self) -> ConnectionPoolEntry:
        worker = current_worker()
        if worker is not None and worker.pool is self and not worker.record_out:
            record: ConnectionPoolEntry = worker.record
            if record is None:
                record = worker.record = self._create_connection()
            worker.record_out = True
            return record
        return self._temporary()

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        if getattr(record, _TEMPORARY, False):
            try:
                record.close()
            finally:
                self._free_slot()
            return
        worker = current_worker()
        if worker is not None and worker.record is record:
            worker.record_out = False
            worker.owned.dbapi_connection = record.dbapi_connection
        else:  # checked in elsewhere (a garbage-collected connection): log only
            log.warning("connection %r was returned to the pool off its worker thread", record)

    def _temporary(self) -> ConnectionPoolEntry:
        """A connection for a thread that is not one of this pool's workers."""
        evict = waiter = None
        with self._lock:
            if self._may_open_locked():
                self._open += 1
            elif self._idle:  # take over an idle worker's slot
                evict = self._idle.popleft()
            else:
                waiter = _impl.Job()
                self._waiters.append(waiter)
        if evict is not None:
            self._retire(evict, close=True)
        if waiter is not None:
            self._wait_for_slot(waiter)
        try:
            record = self._create_connection()
        except BaseException:
            self._free_slot()
            raise
        setattr(record, _TEMPORARY, True)
        return record

    def _wait_for_slot(self, waiter: Any) -> None:
        """Block this (non-loop) thread until ``waiter`` gets a slot, or time out."""
        arrived = threading.Event()
        if waiter.set_waker(arrived.set):
            arrived.wait(self._timeout)
        with self._lock:
            if not waiter.done:
                self._waiters.remove(waiter)
                raise self._timeout_error()
        handed = waiter.outcome()
        if handed is not None:  # a worker with a connection: close it, keep the slot
            self._retire(handed, close=True)

    # -- pool maintenance ------------------------------------------------------

    def _reset_after_fork(self) -> None:
        """In a forked child: the idle workers and their connections are the
        parent's; forget them (unclosed, see ``_fork``) and free their slots.
        Connections checked out at the fork are retired if they come back."""
        self._lock = threading.Lock()
        if self.gate is not None:
            self.gate.reset_after_fork()
        self._open -= len(self._idle)
        self._idle.clear()
        self._waiters.clear()
        self._retiring = []
        self._trim_timer = None

    def _retire(self, worker: Worker, close: bool) -> None:
        """End ``worker`` after what it has queued, closing its connection or not."""
        worker.broken = True  # never handed out again
        with self._lock:
            self._retiring = [w for w in self._retiring if w.is_alive()]
            self._retiring.append(worker)
        try:
            worker.submit(_close_record if close else _drop_record, worker)
            worker.stop()
        except RuntimeError:  # already stopped
            pass

    def _take_idle(self) -> list[Worker]:
        with self._lock:
            idle = list(self._idle)
            self._idle.clear()
            self._open -= len(idle)
            timer, self._trim_timer = self._trim_timer, None
            grants = []
            while (grant := self._grant_slot_locked()) is not None:
                grants.append(grant)
        if timer is not None:
            timer.cancel()
        for grant in grants:
            grant.set(None)
        return idle

    def dispose(self) -> None:
        """Close the idle connections, each on its own thread, and end those threads.

        Connections checked out now are closed when they come back.
        """
        for worker in self._take_idle():
            self._retire(worker, close=True)
        with self._lock:
            retiring, self._retiring = self._retiring, []
        for worker in retiring:
            if not worker.stuck:  # a written-off one ends when its stuck call returns
                worker.join(DISPOSE_WAIT)
        self.logger.info("Pool disposed. %s", self.status())

    @classmethod
    def adopt(cls, pool: QueuePool) -> WorkerQueuePool:
        """A pool with the settings, creator and listeners of a ready-made
        QueuePool (or AsyncAdaptedQueuePool), which is left unused."""
        return cls(
            pool._creator,
            pool_size=pool.size(),
            max_overflow=pool._max_overflow,
            pre_ping=pool._pre_ping,
            use_lifo=getattr(pool._pool, "lifo", False),
            timeout=pool.timeout(),
            recycle=pool._recycle,
            echo=pool.echo,
            logging_name=pool._orig_logging_name,
            reset_on_return=pool._reset_on_return,
            _dispatch=pool.dispatch,
            dialect=pool._dialect,
        )

    def recreate(self) -> WorkerQueuePool:
        """A new pool with this one's settings; this one goes out of service.

        Idle workers end without closing their connections (``close=False``
        means they are only de-referenced); checked-out ones are closed when
        they come back.
        """
        self.logger.info("Pool recreating")
        with self._lock:
            self._replaced = True
        for worker in self._take_idle():
            self._retire(worker, close=False)
        successor = self.__class__(
            self._creator,
            pool_size=self._pool_size,
            max_overflow=self._max_overflow,
            pre_ping=self._pre_ping,
            use_lifo=self._use_lifo,
            timeout=self._timeout,
            recycle=self._recycle,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )
        successor.cancel_timeout = self.cancel_timeout
        successor.gate = self.gate
        successor.placement = self.placement
        successor.overflow_linger = self.overflow_linger
        successor.loop_spin = self.loop_spin
        successor.worker_spin = self.worker_spin
        return successor

    def size(self) -> int:
        return self._pool_size

    def timeout(self) -> float:
        return self._timeout

    def checkedin(self) -> int:
        return len(self._idle)

    def overflow(self) -> int:
        return self._open - self._pool_size if self._pool_size else 0

    def checkedout(self) -> int:
        return self._open - len(self._idle)

    def status(self) -> str:
        return (
            f"Pool size: {self.size()}  Connections in pool: {self.checkedin()} "
            f"Current Overflow: {self.overflow()} "
            f"Current Checked out connections: {self.checkedout()}"
        )


_live: weakref.WeakSet[WorkerQueuePool] = weakref.WeakSet()


@_fork.in_child
def _reset_after_fork() -> None:
    for pool in list(_live):
        pool._reset_after_fork()


def _close_record(worker: Worker) -> None:
    record, worker.record = worker.record, None
    worker.owned.dbapi_connection = None
    if record is not None:
        try:
            record.close()
        except Exception:  # the pool has logged it
            log.debug("closing a pooled connection failed", exc_info=True)


def _drop_record(worker: Worker) -> None:
    worker.record = None
    worker.owned.dbapi_connection = None
