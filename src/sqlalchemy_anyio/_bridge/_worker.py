"""Worker threads and the per-engine pool that leases them.

A :class:`Worker` is one OS thread that runs the callables handed to it, in
order.  Whoever leases it (an AsyncConnection, an AsyncSession) runs every
sync call there, so a DBAPI connection only ever sees one thread at a time.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import logging
import threading
import weakref
from typing import Any, Callable, Deque, Optional, TypeVar

import anyio

from . import _impl

_T = TypeVar("_T")

log = logging.getLogger("sqlalchemy_anyio")
_local = threading.local()
_names = itertools.count(1)

#: How long a cancelled call waits (shielded) for its worker to come back
#: after the driver was asked to interrupt, before the worker is written off.
CANCEL_GRACE = 10.0


class _InFlight(threading.local):
    """Calls to workers this thread (an event loop's) is waiting for."""

    n = 0


_in_flight = _InFlight()


def current_worker() -> Optional[Worker]:
    """The worker whose thread is running this code, if any."""
    return getattr(_local, "worker", None)


class Worker:
    """One thread, one queue of jobs; see the module docstring."""

    def __init__(self, pool: Any = None, generation: int = 0) -> None:
        #: Where the worker goes back when its lessee lets go (``pool.release``).
        self.pool = pool
        self.generation = generation
        #: The pooled connection this worker owns, if its pool gives it one
        #: (see ``_pool``), and whether it is checked out; worker thread only.
        self.record: Any = None
        self.record_out = False
        #: False when several lessees share this worker (see ``_shared``):
        #: then no lessee may interrupt or recover on cancellation.
        self.exclusive = True
        #: Set by the lessee: called on the loop thread when a running call is
        #: cancelled, to make the driver stop the statement in flight.
        self.interrupter: Optional[Callable[[], None]] = None
        #: Set by the lessee: run on this worker after a cancelled call was
        #: interrupted, to leave the connection in a known state.
        self.recover: Optional[Callable[[], None]] = None
        #: Streaming results open on this worker, closed by a recovery.
        self._streams: list[weakref.ref[Any]] = []
        self._streams_lock = threading.Lock()
        #: True once a call outlived its cancellation grace: never reuse.
        self.broken = False
        self._channel = _impl.new_channel()
        self._exited = _impl.Job()
        #: Calls left before the loop tries spinning again, and the back-off
        #: after a spin that missed (the calls here take longer than the budget).
        self._spin_skip = self._spin_backoff = 0
        self._thread = threading.Thread(
            target=self._run, name=f"sqlalchemy-anyio-worker-{next(_names)}", daemon=True
        )
        self._thread.start()

    def track_stream(self, result: Any) -> None:
        """Remember an open streaming result (closed if a call is cancelled)."""
        with self._streams_lock:
            self._streams = [r for r in self._streams if r() is not None]
            self._streams.append(weakref.ref(result))

    def take_streams(self) -> list[Any]:
        """The open streaming results, forgetting them."""
        with self._streams_lock:
            refs, self._streams = self._streams, []
        return [r for r in (ref() for ref in refs) if r is not None]

    @property
    def ident(self) -> Optional[int]:
        return self._thread.ident

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def is_current(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def _run(self) -> None:
        _local.worker = self
        try:
            self._channel.serve()
        finally:
            self._exited.set()

    def stop(self) -> None:
        """Ask the thread to finish after the jobs already queued."""
        self._channel.put(None)

    def join(self, timeout: Optional[float] = None) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    async def wait_stopped(self) -> None:
        await _impl.wait(self._exited)
        self._thread.join()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Queue ``fn(*args, **kwargs)`` without waiting for it; returns its job."""
        job = _impl.Job(fn, args, kwargs)
        self._channel.put(job)
        return job

    def in_demand(self) -> bool:
        """Whether callers are waiting for a worker of this one's pool.

        Then a lessee letting go need not wait for its last call (a close)
        to finish: the next lessee's calls queue up behind it anyway.
        """
        pool = self.pool
        return pool is not None and not self.broken and pool.has_waiters()

    def submit_quietly(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``, nobody waiting for it: a failure is logged."""
        self.submit(_logged, what, fn, args)

    async def call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``fn(*args, **kwargs)`` on this worker and return its result.

        Cancellation does not abandon the work: the interrupter is asked to stop
        it, the worker is awaited (shielded, bounded), then the cancellation
        propagates.  A worker that does not come back is marked broken.
        """
        if self.is_current():  # re-entrant use from inside a run_sync callable
            return fn(*args, **kwargs)
        job = _impl.Job(fn, args, kwargs)
        self._channel.put(job)
        in_flight = _in_flight.n
        _in_flight.n = in_flight + 1
        try:
            if self._spin_skip:
                self._spin_skip -= 1
            elif not in_flight and _impl.LOOP_SPIN and _impl.loop_is_idle():
                # Nothing else of ours is under way and nothing else is ready
                # to run: wait for this call without going through the loop.
                if job.spin_wait(_impl.LOOP_SPIN):
                    self._spin_backoff = 0
                    await _impl.checkpoint()  # cancellation and fairness as usual
                    return job.outcome()  # type: ignore[no-any-return]
                self._spin_skip = self._spin_backoff = min(2 * self._spin_backoff + 1, 63)
            try:
                await _impl.wait(job)
            except BaseException:
                if not job.done:
                    await self._settle_cancelled(job)
                raise
            return job.outcome()  # type: ignore[no-any-return]
        finally:
            _in_flight.n -= 1

    async def call_shielded(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Like :meth:`call`, but run to completion even if cancelled (close, rollback)."""
        with anyio.CancelScope(shield=True):
            return await self.call(fn, *args, **kwargs)
        raise AssertionError("unreachable: a shielded scope swallows nothing")

    async def call_or_abandon(
        self, cleanup: Callable[[_T], object], fn: Callable[..., _T], *args: Any
    ) -> _T:
        """Like :meth:`call` for work that cannot be interrupted (``connect``).

        On cancellation the caller does not wait: ``cleanup(result)`` is queued
        to run on this worker if ``fn`` succeeds after all, the worker is
        marked broken (retired on release), and the cancellation propagates.
        """
        job = _impl.Job(fn, args, None)
        self._channel.put(job)
        try:
            await _impl.wait(job)
        except BaseException:
            # An exclusive worker is retired rather than wait on the call; a
            # shared one simply runs the cleanup after it, in order.
            self.broken = self.exclusive
            self._channel.put(_impl.Job(_cleanup_if_succeeded, (job, cleanup), None))
            raise
        return job.outcome()  # type: ignore[no-any-return]

    async def _settle_cancelled(self, job: Any) -> None:
        """Interrupt the running job, wait for it (shielded, bounded), recover."""
        interrupt_job = None
        interrupter = self.interrupter
        if interrupter is not None:
            # Off the loop: a network driver's cancel is a round trip.
            interrupt_job = _impl.Job(interrupter, (), None)
            threading.Thread(
                target=_run_quietly,
                args=(interrupt_job,),
                name="sqlalchemy-anyio-interrupt",
                daemon=True,
            ).start()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CANCEL_GRACE):
                await _impl.wait(job)
            if interrupt_job is not None:
                # The interrupt must land before anything else runs here,
                # never on a later statement.
                with anyio.move_on_after(CANCEL_GRACE):
                    await _impl.wait(interrupt_job)
            if not job.done or (interrupt_job is not None and not interrupt_job.done):
                self.broken = True
                return
            recover = self.recover
            if recover is not None:
                recover_job = _impl.Job(recover, (), None)
                self._channel.put(recover_job)
                with anyio.move_on_after(CANCEL_GRACE):
                    await _impl.wait(recover_job)
                if not recover_job.done:
                    self.broken = True


def _logged(what: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        fn(*args)
    except Exception:
        log.warning("%s failed on worker %s", what, threading.current_thread().name, exc_info=True)


def _run_quietly(job: Any) -> None:
    job.run()


def _cleanup_if_succeeded(job: Any, cleanup: Callable[[Any], object]) -> None:
    try:
        value = job.outcome()
    except BaseException:  # noqa: BLE001 - nothing was opened
        return
    cleanup(value)


class WorkerPool:
    """A bounded set of reusable workers, leased with an async wait."""

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
        worker.interrupter = worker.recover = None
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


_live_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


@atexit.register
def _stop_all_workers() -> None:
    """Let no idle worker outlive the interpreter (threads are daemonic too)."""
    for pool in list(_live_pools):
        pool.dispose_sync(timeout=1.0)
