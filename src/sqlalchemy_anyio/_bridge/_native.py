"""Pure-Python hand-off between the event loop and a worker thread.

This is the twin of the optional C accelerator (``_cbridge``): the same two
classes with the same behaviour, chosen once at import by ``_bridge``.

A :class:`Job` is a one-shot result cell.  Its state is guarded by a lock, so
whoever reads ``done`` after the lock sees the value or error written before
it (correct without the GIL).  A :class:`Channel` carries jobs, in order, from
the loop to one worker thread.
"""

from __future__ import annotations

import queue
import sys
import threading
from types import SimpleNamespace
from typing import Any, Callable, Optional


class Job:
    """A unit of work (or a bare signal when ``fn`` is None) and its outcome."""

    __slots__ = ("_args", "_done", "_error", "_fn", "_kwargs", "_lock", "_value", "_waker")

    def __init__(
        self,
        fn: Optional[Callable[..., Any]] = None,
        args: tuple[Any, ...] = (),
        kwargs: Optional[dict[str, Any]] = None,
    ) -> None:
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
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
        """Run the callable (on the worker thread) and publish its outcome."""
        fn, args, kwargs = self._fn, self._args, self._kwargs
        self._fn = self._args = self._kwargs = None  # type: ignore[assignment]
        try:
            if fn is None:
                raise RuntimeError("job has nothing to run")
            value = fn(*args, **kwargs) if kwargs else fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.set(error=exc)
        else:
            self.set(value)
        del fn, args, kwargs

    def set(self, value: Any = None, error: Optional[BaseException] = None) -> None:
        """Publish the outcome once, from any thread, and wake the waiter."""
        with self._lock:
            if self._done:
                raise RuntimeError("job outcome already set")
            self._value = value
            self._error = error
            self._done = True
            waker, self._waker = self._waker, None
        if waker is not None:
            try:
                waker()
            except BaseException as exc:  # noqa: BLE001 - never lose the worker for a waker
                _report_unraisable(exc, waker)

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


class Channel:
    """Jobs in order from the loop to one worker thread (``None`` stops it)."""

    __slots__ = ("_closed", "_lock", "_queue")

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Optional[Job]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False

    def put(self, job: Optional[Job]) -> None:
        with self._lock:
            if self._closed:
                # A job put now would never run: say so rather than hang its caller.
                if job is None:
                    return  # stopping twice is fine
                raise RuntimeError("the worker is stopped: it takes no more jobs")
            self._closed = job is None
            self._queue.put(job)

    def get(self) -> Optional[Job]:
        return self._queue.get()

    def serve(self) -> None:
        """The worker's loop: run queued jobs, in order, until ``None``."""
        get = self._queue.get
        while True:
            job = get()
            if job is None:
                return
            job.run()
            del job
