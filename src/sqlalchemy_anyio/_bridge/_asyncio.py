"""Waiting for a :class:`Job` on an asyncio (or uvloop) event loop.

Completions from worker threads are batched per loop: the first one since
the loop last looked schedules one ``call_soon_threadsafe`` (one write to
the loop's self-pipe), later ones only join the batch.  A completion
published on the loop's own thread resolves its future directly.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from typing import Any, Callable, Optional

from .. import _fork


class _Wakeups:
    """The futures of one loop whose jobs completed, resolved in one callback."""

    __slots__ = ("__weakref__", "_lock", "_loop", "_ready", "_scheduled", "_thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.get_ident()
        self._lock = threading.Lock()
        self._ready: list[asyncio.Future[None]] = []
        self._scheduled = False

    def wake(self, fut: asyncio.Future[None]) -> None:
        """Resolve ``fut`` on its loop; called once, from any thread."""
        if threading.get_ident() == self._thread:
            if not fut.done():
                fut.set_result(None)
            return
        with self._lock:
            self._ready.append(fut)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # loop closed: nobody is waiting any more
            pass

    def _drain(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
            self._scheduled = False
        for fut in ready:
            if not fut.done():
                fut.set_result(None)


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wakeups] = (
    weakref.WeakKeyDictionary()
)
_local = threading.local()


@_fork.in_child
def _reset_after_fork() -> None:
    """The parent's loops are not running here; their wake-ups' locks may be
    held by threads that are gone."""
    global _by_loop, _local
    _by_loop = weakref.WeakKeyDictionary()
    _local = threading.local()


def _wakeups(loop: asyncio.AbstractEventLoop) -> _Wakeups:
    cached: Optional[_Wakeups] = getattr(_local, "wakeups", None)
    if cached is not None and cached._loop is loop:
        return cached
    wakeups = _by_loop.get(loop)
    if wakeups is None:
        wakeups = _by_loop[loop] = _Wakeups(loop)
    _local.wakeups = wakeups
    return wakeups


async def wait(job: Any) -> None:
    """Suspend until ``job`` completes."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    if not job.set_waker(functools.partial(_wakeups(loop).wake, fut)):
        await asyncio.sleep(0)  # still a checkpoint, as every await must be
        return
    try:
        await fut
    except BaseException:
        job.clear_waker()
        raise


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def wait_for(job: Any, timeout: float) -> bool:
    """Like :func:`wait`, giving up after ``timeout`` seconds; False if it did."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    if not job.set_waker(functools.partial(_wakeups(loop).wake, fut)):
        await asyncio.sleep(0)
        return True
    timer = loop.call_later(timeout, _expire, fut)
    try:
        await fut
    except BaseException:
        job.clear_waker()
        raise
    finally:
        timer.cancel()
    # Timed out unless the outcome is in, or already on its way.
    return job.done or not job.clear_waker()


class WorkerLoop:
    """What ``asyncio.get_running_loop()`` gives code that a worker runs for a
    task of this loop (event listeners, ``run_sync`` callables).

    On the official extension such code runs on the loop's own thread; here it
    runs on a worker thread, which must not touch the loop.  So the methods
    that schedule work do it on the loop's thread, the worker waiting for
    them: ``asyncio.create_task()``, ``ensure_future()``, ``loop.call_soon()``
    and ``call_later()`` work as they do there.  Anything else raises, naming
    the way back to the loop (docs/reentry.md).  ``asyncio.current_task()``
    is None here.
    """

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _on_loop(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from ._reentry import _call_or_error  # (it imports this module)

        return _call_or_error().run_sync(functools.partial(fn, *args, **kwargs), ())

    def create_task(self, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        return self._on_loop(self._loop.create_task, coro, **kwargs)  # type: ignore[no-any-return]

    def call_soon(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._loop.call_soon_threadsafe(callback, *args, **kwargs)

    call_soon_threadsafe = call_soon

    def call_later(
        self, delay: float, callback: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        return self._on_loop(self._loop.call_later, delay, callback, *args, **kwargs)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._on_loop(self._loop.call_at, when, callback, *args, **kwargs)

    def time(self) -> float:
        return self._loop.time()

    def is_running(self) -> bool:
        return self._loop.is_running()

    def is_closed(self) -> bool:
        return self._loop.is_closed()

    def get_debug(self) -> bool:
        return self._loop.get_debug()

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"loop.{name} cannot be used here: this code runs on a sqlalchemy_anyio worker "
            "thread, not on the event loop's.  Run it on the loop with "
            "anyio.from_thread.run_sync(fn, ...) or anyio.from_thread.run(async_fn, ...), "
            "or await it with sqlalchemy_anyio.await_(...); see docs/reentry.md."
        )

    def __repr__(self) -> str:
        return f"<WorkerLoop for {self._loop!r}>"
