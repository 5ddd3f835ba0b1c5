"""Pure-Python hand-off between the event loop and a worker thread.

This is the twin of the optional C accelerator (``_cbridge``): the same two
classes with the same behaviour, chosen once at import by ``_bridge``.

A :class:`Job` is a one-shot result cell.  Its state is guarded by a lock, so
whoever reads ``done`` after the lock sees the value or error written before
it (correct without the GIL).  A :class:`Channel` carries jobs, in order, from
the loop to one worker thread.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Optional


def _worker_spin_ns() -> int:
    raw = os.environ.get("SQLALCHEMY_ANYIO_WORKER_SPIN_US", "")
    try:
        us = float(raw) if raw.strip() else 100.0
    except ValueError:
        us = -1.0
    if not 0 <= us <= 1e6:
        raise ValueError(f"SQLALCHEMY_ANYIO_WORKER_SPIN_US must be 0..1000000, not {raw!r}")
    return int(us * 1000)


#: The default worker spin budget in nanoseconds (SQLALCHEMY_ANYIO_WORKER_SPIN_US),
#: as the C twin reads it; this bridge's workers never spin (they would hold the GIL).
WORKER_SPIN_NS = _worker_spin_ns()


class Job:
    """A unit of work (or a bare signal when ``fn`` is None) and its outcome."""

    __slots__ = ("_args", "_done", "_error", "_fn", "_kwargs", "_lock", "_value", "_waker")

    def __init__(
        self,
        fn: Optional[Callable[..., Any]] = None,
        args: tuple[Any, ...] = (),
        kwargs: Optional[dict[str, Any]] = None,
    ) -> None:
        # Bad arguments fail here, as in the C twin, not later on the worker.
        if fn is not None and not callable(fn):
            raise TypeError("Job fn must be callable or None")
        if not isinstance(args, tuple):
            raise TypeError("Job args must be a tuple")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError("Job kwargs must be a dict or None")
        self._fn = fn
        self._args = args
        self._kwargs = kwargs or None
        self._lock = threading.Lock()
        self._done = False
        self._value: Any = None
        self._error: Optional[BaseException] = None
        self._waker: Optional[Callable[[], object]] = None

    @property
    def done(self) -> bool:
        with self._lock:
            return self._done

    def run(self) -> None:
        """Run the callable (on the worker thread) and publish its outcome.

        If ``set()`` published an outcome meanwhile, that one stands and the
        run's is dropped: ``run()`` never raises, so the worker survives.
        """
        fn, args, kwargs = self._fn, self._args, self._kwargs
        self._fn = self._args = self._kwargs = None  # type: ignore[assignment]
        error: Optional[BaseException] = None
        value: Any = None
        try:
            if fn is None:
                raise RuntimeError("job has nothing to run")
            value = fn(*args, **kwargs) if kwargs else fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            error = exc
        del fn, args, kwargs
        self._publish(value, error)
        del value, error

    def set(self, value: Any = None, error: Optional[BaseException] = None) -> None:
        """Publish the outcome once, from any thread, and wake the waiter."""
        if error is not None and not isinstance(error, BaseException):
            raise TypeError("error must be an exception instance or None")
        if not self._publish(value, error):
            raise RuntimeError("job outcome already set")

    def _publish(self, value: Any, error: Optional[BaseException]) -> bool:
        """Store the outcome and wake the waiter; False if one was set already."""
        with self._lock:
            if self._done:
                return False
            self._value = value
            self._error = error
            self._done = True
            waker, self._waker = self._waker, None
        if waker is not None:
            try:
                waker()
            except BaseException as exc:  # noqa: BLE001 - never lose the worker for a waker
                _report_unraisable(exc, waker)
        return True

    def set_waker(self, waker: Callable[[], object]) -> bool:
        """Arrange for ``waker()`` on completion; False if already complete."""
        with self._lock:
            if self._done:
                return False
            self._waker = waker
            return True

    def clear_waker(self) -> bool:
        """Withdraw the waker; True if it will now never be called."""
        with self._lock:
            self._waker = None
            return not self._done

    def spin_wait(self, budget: float) -> bool:
        """Wait up to ``budget`` seconds without yielding; the C twin spins.

        The pure-Python bridge never spins: it would hold the GIL.
        """
        return self.done

    def outcome(self) -> Any:
        """Return the value or raise the error of a completed job."""
        with self._lock:
            if not self._done:
                raise RuntimeError("job is not finished")
            error, value = self._error, self._value
        if error is not None:
            try:
                raise error
            finally:
                del error
        return value


def reset_after_fork() -> None:
    """In a forked child: no worker shares the loop's CPU any more (the C
    twin also forgets its spinning workers)."""
    global _placement
    _placement = (_placement[0], _placement[1], False)


#: (generation, CPUs, packed): where placed workers run from their next job
#: on, and whether they share the loop's CPU (see _placement.py).  Replaced
#: whole, so a reader sees one consistent tuple.
_placement: tuple[int, Optional[frozenset[int]], bool] = (0, None, False)
_placement_lock = threading.Lock()


def set_placement(cpus: Iterable[int], packed: bool) -> None:
    """Where placed workers run from their next job on, and whether they
    share that CPU with the event loop."""
    global _placement
    chosen = frozenset(int(cpu) for cpu in cpus)
    if not chosen:
        raise ValueError("set_placement needs at least one CPU")
    with _placement_lock:
        _placement = (_placement[0] + 1, chosen, bool(packed))


def _follow_placement(applied: int, policy: Optional[int]) -> tuple[int, Optional[int]]:
    """Move this worker's thread where the placement says if it changed since
    ``applied``, as the C twin does (SCHED_BATCH while packed, for a thread of
    the usual policy ``policy``); returns the generation applied and the policy."""
    generation, cpus, packed = _placement
    if generation == applied or cpus is None:
        return generation, policy
    try:
        os.sched_setaffinity(0, cpus)
        if policy is None:
            policy = os.sched_getscheduler(0)
        if policy == os.SCHED_OTHER:
            os.sched_setscheduler(
                0, os.SCHED_BATCH if packed else os.SCHED_OTHER, os.sched_param(0)
            )
    except (AttributeError, OSError):  # not Linux, or not allowed: stays
        pass
    return generation, policy


def _report_unraisable(exc: BaseException, obj: object) -> None:
    """Hand ``exc`` to ``sys.unraisablehook``, as the C twin does."""
    sys.unraisablehook(
        SimpleNamespace(
            exc_type=type(exc),
            exc_value=exc,
            exc_traceback=exc.__traceback__,
            err_msg="Exception ignored in job waker",
            object=obj,
        )
    )


class Gate:
    """Admission: at most ``limit`` channels run jobs at once (0: no limit).

    A channel with jobs but no place waits in line (in order); a place is
    handed straight from a channel that ran out of jobs to the first in line.
    A job that has run longer than ``expire`` seconds (blocked on the
    database, most likely) gives up its place, so a slow query never holds
    up the others for longer than that.  Fewer threads competing for the GIL
    at once cost fewer context switches than many.
    """

    __slots__ = ("_admitted", "_expire", "_line", "_lock", "limit")

    def __init__(self, limit: int = 0, expire: float = 0.002) -> None:
        if limit < 0 or not expire > 0:
            raise ValueError("Gate needs limit >= 0 and expire > 0")
        self.limit = limit
        self._expire = expire
        self._lock = threading.Lock()
        self._admitted: list[Channel] = []  # holding a place
        self._line: deque[Channel] = deque()  # waiting for one, in order

    @property
    def expire(self) -> float:
        """Seconds after which a running job gives its place up."""
        return int(self._expire * 1e9) / 1e9

    @property
    def active(self) -> int:
        """Channels holding a place now."""
        with self._lock:
            return len(self._admitted)

    def _enter(self, channel: Channel) -> list[Channel]:
        """Give ``channel`` a place, or put it in line; the channels to wake."""
        with self._lock:
            if channel._admitted or channel._waiting:
                return []
            if len(self._admitted) < self.limit and not self._line:
                channel._admitted = True
                self._admitted.append(channel)
                return [channel]
            channel._waiting = True
            self._line.append(channel)
            return [channel] if self._line[0] is channel else []

    def _leave(self, channel: Channel) -> list[Channel]:
        """``channel`` gives up its place (or its turn); the channels to wake."""
        with self._lock:
            first = self._line[0] if self._line else None
            if channel._admitted:
                channel._admitted = False
                self._admitted.remove(channel)
            elif channel._waiting:
                channel._waiting = False
                self._line.remove(channel)
            else:
                return []
            return self._advance_locked(first)

    def _expire_slow(self) -> list[Channel]:
        """Take the places of jobs running longer than ``expire``; the channels to wake."""
        now = time.monotonic()
        with self._lock:
            first = self._line[0] if self._line else None
            for channel in list(self._admitted):
                started = channel._started
                if started is not None and now - started > self._expire:
                    channel._admitted = False
                    self._admitted.remove(channel)
            return self._advance_locked(first)

    def _advance_locked(self, first: Optional[Channel]) -> list[Channel]:
        """Fill free places from the line.  A new first in line is woken too:
        it is the one that watches for slow jobs."""
        woken = []
        while self._line and len(self._admitted) < self.limit:
            nxt = self._line.popleft()
            nxt._waiting = False
            nxt._admitted = True
            self._admitted.append(nxt)
            woken.append(nxt)
        if self._line and self._line[0] is not first:
            woken.append(self._line[0])
        return woken

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's channels, renew the lock."""
        self._lock = threading.Lock()
        self._admitted = []
        self._line = deque()

    def _first_in_line(self, channel: Channel) -> bool:
        with self._lock:
            return bool(self._line) and self._line[0] is channel


def _wake(channels: list[Channel]) -> None:
    for channel in channels:
        with channel._cond:
            channel._cond.notify()


class Channel:
    """Jobs in order from the loop to one worker thread (``None`` stops it).

    With a :class:`Gate`, the worker runs jobs only while it holds a place.
    A ``placed`` channel's worker follows the thread placement at each job.
    """

    __slots__ = (
        "_admitted",
        "_closed",
        "_cond",
        "_gate",
        "_items",
        "_placed",
        "_spin_max",
        "_started",
        "_waiting",
    )

    def __init__(
        self, gate: Optional[Gate] = None, placed: bool = False, worker_spin: Any = None
    ) -> None:
        if worker_spin is None:
            self._spin_max = WORKER_SPIN_NS
        else:
            try:  # what float() takes but a string, as the C twin's PyFloat_AsDouble
                seconds = float(worker_spin) if not isinstance(worker_spin, str) else None
            except TypeError:
                seconds = None
            if seconds is None:
                raise TypeError(f"must be real number, not {type(worker_spin).__name__}")
            if not 0 <= seconds <= 1:
                raise ValueError("Channel needs 0 <= worker_spin <= 1 (seconds)")
            self._spin_max = int(seconds * 1e9)
        self._placed = placed
        self._items: deque[Optional[Job]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._gate = gate if gate is not None and gate.limit else None
        # Under the gate's lock: holding a place / waiting in line.
        self._admitted = self._waiting = False
        #: When the running job started (monotonic), None between jobs.
        self._started: Optional[float] = None

    @property
    def worker_spin(self) -> float:
        """Longest time (seconds) the worker spins for its next job before parking
        (kept for the C twin's sake: this bridge's workers never spin)."""
        return self._spin_max / 1e9

    def put(self, job: Optional[Job]) -> None:
        with self._cond:
            if self._closed:
                # A job put now would never run: say so rather than hang its caller.
                if job is None:
                    return  # stopping twice is fine
                raise RuntimeError("the worker is stopped: it takes no more jobs")
            self._closed = job is None
            self._items.append(job)
            if self._gate is None or job is None:
                self._cond.notify()
                return
        _wake(self._gate._enter(self))

    def reset_after_fork(self) -> None:
        """In a forked child: renew the lock; the worker thread is gone, so
        take no more jobs (``put`` fails instead of waiting for ever)."""
        self._cond = threading.Condition(threading.Lock())
        self._closed = True
        self._admitted = self._waiting = False
        self._started = None

    def get(self) -> Optional[Job]:
        """The next item, waiting for it (ignores the gate)."""
        with self._cond:
            while not self._items:
                self._cond.wait()
            return self._items.popleft()

    def _take(self) -> Optional[Job]:
        """Wait until the next item may be taken, and take it (the worker's side)."""
        gate = self._gate
        while True:
            with self._cond:
                items = self._items
                if items and (items[0] is None or gate is None or self._admitted):
                    return items.popleft()
                lost = bool(items) and not (self._admitted or self._waiting)
                if not lost:
                    # Whoever changes what we wait for wakes us; the first in
                    # line also looks every ``expire`` for a slow job to expire.
                    first = gate is not None and self._waiting and gate._first_in_line(self)
                    if self._cond.wait(gate._expire if first else None):  # type: ignore[union-attr]
                        continue
                    if not first:
                        continue
            assert gate is not None
            # Lost our place while running a slow job: back in line.  Or the
            # first in line timed out: expire slow jobs.
            _wake(gate._enter(self) if lost else gate._expire_slow())

    def serve(self) -> None:
        """The worker's loop: run queued jobs, in order, until ``None``."""
        gate = self._gate
        applied, policy = 0, None
        while True:
            if gate is not None:
                with self._cond:
                    empty = not self._items
                if empty:  # out of jobs: hand the place on
                    _wake(gate._leave(self))
            job = self._take()
            if job is None:
                if gate is not None:
                    _wake(gate._leave(self))
                return
            if self._placed and _placement[0] != applied:
                applied, policy = _follow_placement(applied, policy)
            self._started = time.monotonic()
            job.run()
            self._started = None
            del job
