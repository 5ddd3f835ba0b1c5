"""Worker threads (the per-engine pool that leases them: ``_leasing``).

A :class:`Worker` is one OS thread that runs the callables handed to it, in
order.  Whoever leases it (an AsyncConnection, an AsyncSession) runs every
sync call there, so a DBAPI connection only ever sees one thread at a time.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import weakref
from typing import Any, Callable, Optional, TypeVar

import anyio

from .. import _fork
from ..exc import CLOSE_STILL_RUNNING, ConnectionWrittenOff
from . import _impl, _placement, _reentry

_T = TypeVar("_T")

log = logging.getLogger("sqlalchemy_anyio")
_local = threading.local()
_names = itertools.count(1)


def bound_seconds(value: Any) -> Optional[float]:
    """``value`` as a cancellation bound: seconds above 0 (a day at most), else None."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if 0 < seconds <= 86400 else None


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    value = bound_seconds(raw) if raw.strip() else default
    if value is None:
        raise ValueError(f"{name} must be a number of seconds above 0, not {raw!r}")
    return value


#: The one bound on a cancelled call, all included: the statement, the
#: driver's interrupt and the recovery.  Past it the caller gets control
#: back, the connection is invalidated and the worker retired.  Engines take
#: ``cancel_timeout=``; this is the default (SQLALCHEMY_ANYIO_CANCEL_TIMEOUT).
CANCEL_TIMEOUT = _seconds("SQLALCHEMY_ANYIO_CANCEL_TIMEOUT", 10.0)

# What a cancellation means for a call still running (see Worker._settle).
INTERRUPT = "interrupt"  # ask the driver to stop it, wait, recover
FINISH = "finish"  # let it run to its end (close, rollback)
ABANDON = "abandon"  # do not wait (connect): clean up after it, retire the worker


#: Calls this (event loop) thread awaits, and its placement (see _placement).
_loop = _placement.loop


def current_worker() -> Optional[Worker]:
    """The worker whose thread is running this code, if any."""
    ref: Optional[weakref.ref[Worker]] = getattr(_local, "worker", None)
    return None if ref is None else ref()


class Owned:
    """The DBAPI connection an idle worker owns, held apart from the pool's
    record of it (which refers to the pool): if the worker is collected with
    its pool, its finalizer closes this connection on the worker's thread."""

    __slots__ = ("dbapi_connection",)

    def __init__(self) -> None:
        self.dbapi_connection: Any = None


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
        #: Set by the lessee: run on this worker when a cancelled call did not
        #: settle within the bound, so its connection is never used again.
        self.invalidate: Optional[Callable[[], None]] = None
        #: Streaming results open on this worker, closed by a recovery.
        self._streams: list[weakref.ref[Any]] = []
        self._streams_lock = threading.Lock()
        #: True once a call outlived its cancellation grace: never reuse.
        self.broken = False
        #: Once written off: the last job queued behind the call that is
        #: stuck (its invalidation, then ending calls); see :attr:`stuck`.
        self._behind: Any = None
        #: Whether this worker follows the thread placement (its engine's
        #: ``thread_placement``): then the loops calling it may be packed.
        self.placed = _placement.SUPPORTED and bool(getattr(pool, "placement", False))
        self._channel = _impl.new_channel(
            getattr(pool, "gate", None), self.placed, getattr(pool, "worker_spin", None)
        )
        #: Seconds the loop may spin for a call here (its engine's ``loop_spin``).
        self._loop_spin = _impl.loop_spin(getattr(pool, "loop_spin", None))
        self._exited = _impl.Job()
        #: Calls left before the loop tries spinning again, and the back-off
        #: after a spin that missed (the calls here take longer than the budget).
        self._spin_skip = self._spin_backoff = 0
        #: The asyncio loop of the latest call (None on trio): async drivers
        #: run their coroutines there (see ``_async_drivers``), and then the
        #: loop must not spin waiting for this worker.
        self.loop: Any = None
        self.loop_spin = True
        #: Kept up to date by the pool at each check-in (see ``_pool``).
        self.owned = Owned()
        # The thread must not keep the worker alive (only the channel): an
        # engine dropped without dispose() is collected, workers and all, and
        # the finalizer then ends the threads.
        self._thread = threading.Thread(
            target=_serve,
            args=(self._channel, weakref.ref(self), self._exited),
            name=f"sqlalchemy-anyio-worker-{next(_names)}",
            daemon=True,
        )
        self._thread.start()
        finalizer = weakref.finalize(self, _collected, self._channel, self.owned)
        finalizer.atexit = False  # at exit, _leasing._stop_all_workers and daemon threads
        _workers.add(self)

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
        """Queue ``fn(*args, **kwargs)`` without waiting for it; returns its job.

        It runs in a copy of the caller's context, with the way back to the
        caller's loop (if it has one), as awaited calls do.
        """
        job = _impl.Job(_reentry.Call(fn), args, kwargs)
        self._channel.put(job)
        return job

    def in_demand(self) -> bool:
        """Whether callers are waiting for a worker of this one's pool.

        Then a lessee letting go need not wait for its last call (a close)
        to finish: the next lessee's calls queue up behind it anyway.
        """
        pool = self.pool
        return pool is not None and not self.broken and pool.has_waiters()

    def submit_quietly(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Queue ``fn(*args)``, nobody waiting for it: a failure is logged.
        Returns the job, for whoever must not overtake it."""
        return self.submit(_logged, what, fn, args)

    async def call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``fn(*args, **kwargs)`` on this worker and return its result.

        If the caller is cancelled meanwhile, the driver is asked to stop the
        statement, the call and a recovery (rollback) are awaited within the
        cancellation bound, then the cancellation propagates (see _settle).
        """
        if self.is_current():  # re-entrant use from inside a run_sync callable
            return fn(*args, **kwargs)
        return await self._call_job(fn, args, kwargs, INTERRUPT)  # type: ignore[no-any-return]

    async def call_shielded(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Like :meth:`call`, but a cancellation lets it run to its end (close,
        rollback), within the cancellation bound."""
        if self.is_current():
            return fn(*args, **kwargs)
        return await self._call_job(fn, args, kwargs, FINISH)  # type: ignore[no-any-return]

    @property
    def stuck(self) -> bool:
        """Written off, and the call that outlived its bound (or something
        queued behind it) still runs: calls are refused, not queued."""
        behind = self._behind
        return behind is not None and not behind.done

    async def call_ending(self, fn: Callable[..., Any], *args: Any) -> Optional[Ending]:
        """Run an ending call (close, rollback, reset, invalidate) to its end,
        even if cancelled, within the bound (as :meth:`call_shielded`).

        On a worker written off and still stuck it is queued behind the stuck
        call instead, nobody waiting for it (a failure is logged), and the
        returned :class:`Ending` says when it has run.
        """
        if self.stuck:
            job = self._behind = self.submit_quietly("ending a written-off call", fn, *args)
            return Ending(self, job)
        await self.call_shielded(fn, *args)
        return None

    def hand_on(self, what: str, fn: Callable[..., Any], *args: Any) -> Ending:
        """Queue an ending call not waited for here (the worker is handed on
        to the next lessee, whose calls queue behind it)."""
        return Ending(self, self.submit_quietly(what, fn, *args))

    async def call_or_abandon(
        self, cleanup: Callable[[_T], object], fn: Callable[..., _T], *args: Any
    ) -> _T:
        """Like :meth:`call` for work that cannot be interrupted (``connect``).

        On cancellation the caller does not wait: ``cleanup(result)`` runs on
        this worker if ``fn`` succeeds after all, and the worker is retired.
        """
        return await self._call_job(fn, args, None, ABANDON, cleanup)  # type: ignore[no-any-return]

    async def _call_job(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Optional[dict[str, Any]],
        on_cancel: str,
        cleanup: Optional[Callable[[Any], object]] = None,
    ) -> Any:
        if self._behind is not None and on_cancel != ABANDON and self.stuck:
            # The one policy for a written-off connection: never wait behind
            # the call that ignored its interrupt (see call_ending for closes).
            raise ConnectionWrittenOff()
        self.loop = _impl._get_running_loop()
        # The Call lets the job reach this loop (anyio.from_thread, await_).
        _reentry.refuse_if_serving(self.ident)
        call = _reentry.Call(fn)
        job = _impl.Job(call, args, kwargs)
        self._channel.put(job)
        loop = _loop
        in_flight = loop.n
        loop.n = in_flight + 1
        if in_flight and self.placed:
            _placement.crowded(loop)
        try:
            if self._spin_skip:
                self._spin_skip -= 1
            elif (
                not in_flight
                and self.loop_spin
                and self._loop_spin
                and (loop.packed is None or loop.packed.released)
                and _impl.loop_is_idle()
            ):
                # Nothing else of ours is under way and nothing else is ready
                # to run: wait for this call without going through the loop.
                if job.spin_wait(self._loop_spin):
                    self._spin_backoff = 0
                    await _impl.checkpoint()  # cancellation and fairness as usual
                    call.merge()
                    return job.outcome()
                self._spin_skip = self._spin_backoff = min(2 * self._spin_backoff + 1, 63)
            try:
                await _impl.wait(job)
            except BaseException:
                if not job.done:
                    call.cancel()  # what the job waits for on this loop ends now
                    await self._settle(job, on_cancel, cleanup)
                raise
            call.merge()
            return job.outcome()
        finally:
            loop.n -= 1

    async def _settle(
        self, job: Any, on_cancel: str, cleanup: Optional[Callable[[Any], object]]
    ) -> None:
        """What a cancellation means for a call still running; the one place.

        ABANDON: nobody waits; ``cleanup`` runs after the call if it succeeds,
        and an exclusive worker is retired.  INTERRUPT: the interrupter stops
        the statement (off the loop: a network driver's cancel is a round
        trip), then the call, the interrupt and the recovery are awaited.
        FINISH: the call is awaited.  Whatever is awaited shares one bound;
        past it the connection is invalidated (after the call, on this
        worker) and the worker retired.  A shared worker is never retired:
        its one connection has no other thread to go to.  A call queued on
        a worker already written off is not waited for: it runs after the
        call that is stuck, on the invalidated connection, and waiting a
        second bound for it would only delay the caller.
        """
        if self.broken and self.exclusive and on_cancel != ABANDON:
            return
        if on_cancel == ABANDON:
            self.broken = self.exclusive
            self._channel.put(_impl.Job(_reentry.Call(_cleanup_if_succeeded), (job, cleanup), None))
            return
        interrupt = None
        if on_cancel == INTERRUPT and self.exclusive and self.interrupter is not None:
            interrupt = _impl.Job(self.interrupter, (), None)
            threading.Thread(
                target=_run_quietly,
                args=(interrupt,),
                name="sqlalchemy-anyio-interrupt",
                daemon=True,
            ).start()
        recovered = True
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + self.cancel_timeout()
            await _impl.wait(job)
            if interrupt is not None:
                # It must have landed before anything else runs here, never on
                # a later statement.
                await _impl.wait(interrupt)
            if on_cancel == INTERRUPT and self.exclusive and self.recover is not None:
                recovered = False
                recover = _reentry.Call(self.recover)
                recovery = _impl.Job(recover, (), None)
                self._channel.put(recovery)
                try:
                    await _impl.wait(recovery)
                finally:
                    if not recovery.done:
                        recover.cancel()  # the bound passed: let it unwind
                recovered = True
        settled = job.done and recovered and (interrupt is None or interrupt.done)
        if not settled and self.exclusive:
            self.write_off()

    def cancel_timeout(self) -> float:
        """The bound on a cancelled call on this worker (its engine's setting)."""
        return getattr(self.pool, "cancel_timeout", None) or CANCEL_TIMEOUT

    def _orphaned(self) -> None:
        """In a forked child: this worker's thread is the parent's and does
        not exist here.  It is never handed out again, takes no more jobs,
        counts as stopped, and its connection is left alone (kept, unclosed:
        closing it would end the parent's session on the server)."""
        self.broken = True
        self._channel.reset_after_fork()
        self._exited = _impl.Job()
        self._exited.set()
        self._streams_lock = threading.Lock()
        self._streams = []

    def disarm(self) -> None:
        """Forget what the last lessee set up for its cancellations."""
        self.interrupter = self.recover = self.invalidate = None

    def write_off(self) -> None:
        """Never hand this worker out again; its connection is invalidated
        once whatever it is stuck in returns."""
        self.broken = True
        try:
            self._behind = self.submit_quietly(
                "invalidating a connection after a cancellation", self.invalidate or _nothing
            )
        except RuntimeError:  # stopped already
            pass


class Ending:
    """An ending call (a close) queued on a worker and not waited for: behind a
    written-off call, or handed on with the worker.  Whoever uses the session
    next must not overtake it."""

    __slots__ = ("job", "worker")

    def __init__(self, worker: Worker, job: Any) -> None:
        self.worker = worker
        self.job = job

    @property
    def done(self) -> bool:
        return bool(self.job.done)

    def check(self) -> None:
        """For synchronous code on the loop: refuse while it still runs."""
        if not self.job.done:
            raise ConnectionWrittenOff("" if self.worker.broken else CLOSE_STILL_RUNNING)

    async def wait(self, shield: bool = False) -> None:
        """Wait for it, within the cancellation bound; behind a stuck call,
        refuse at once."""
        if self.job.done:
            return
        if self.worker.stuck:
            raise ConnectionWrittenOff()
        with anyio.CancelScope(shield=shield):
            done = await _impl.wait_for(self.job, self.worker.cancel_timeout())
        if not done:
            self.check()


def _nothing() -> None:
    pass


def give_back_later(worker: Worker, fn: Optional[Callable[..., Any]] = None, *args: Any) -> None:
    """For finalizers: run ``fn(*args)``, then give ``worker`` back to its pool,
    both on the worker's own thread.

    A finalizer runs wherever the garbage collector happens to run, possibly
    inside code that holds the pool's lock (not reentrant): it must not take it.
    """
    try:
        worker.submit(_give_back, worker, fn, args)
    except RuntimeError:  # stopped: nothing runs there any more
        worker.pool.release(worker)


def _give_back(worker: Worker, fn: Optional[Callable[..., Any]], args: tuple[Any, ...]) -> None:
    try:
        if fn is not None:
            fn(*args)
    finally:
        worker.pool.release(worker)


def _serve(channel: Any, worker: weakref.ref[Worker], exited: Any) -> None:
    """A worker thread's whole life."""
    _local.worker = worker
    me = threading.get_native_id()
    _placement.ours.add(me)
    try:
        channel.serve()
    finally:
        _placement.ours.discard(me)
        exited.set()


def _collected(channel: Any, owned: Owned) -> None:
    """Finalizer of a worker collected unstopped (its engine was dropped
    without dispose()): close its connection on its thread, end the thread."""
    try:
        channel.put(_impl.Job(_close_owned, (owned,), None))
        channel.put(None)
    except RuntimeError:  # stopped already
        pass


def _close_owned(owned: Owned) -> None:
    conn, owned.dbapi_connection = owned.dbapi_connection, None
    if conn is not None:
        try:
            conn.close()
        except Exception:
            log.debug("closing the connection of a collected worker failed", exc_info=True)


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


#: Every worker started in this process and not yet collected.
_workers: weakref.WeakSet[Worker] = weakref.WeakSet()


@_fork.in_child
def _reset_after_fork() -> None:
    workers = list(_workers)
    _workers.clear()
    for worker in workers:
        worker._orphaned()
    _fork.inherited.extend(workers)
