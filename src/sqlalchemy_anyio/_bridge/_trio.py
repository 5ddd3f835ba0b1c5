"""Waiting for a :class:`Job` under trio.

As on asyncio, completions from worker threads are batched per run: the first
one since trio last looked calls ``TrioToken.run_sync_soon``, later ones only
join the batch.  A completion published on trio's own thread reschedules its
task directly.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any, Optional

import trio

from .. import _fork


class _Wakeups:
    """The tasks of one trio run whose jobs completed, rescheduled in one callback."""

    __slots__ = ("__weakref__", "_lock", "_ready", "_scheduled", "_thread", "_token")

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._thread = threading.get_ident()
        self._lock = threading.Lock()
        self._ready: list[trio.lowlevel.Task] = []
        self._scheduled = False

    def wake(self, task: trio.lowlevel.Task) -> None:
        """Reschedule ``task``; called once, from any thread."""
        if threading.get_ident() == self._thread:
            try:
                trio.lowlevel.reschedule(task)
            except RuntimeError:  # the run is over: nobody is waiting any more
                pass
            return
        with self._lock:
            self._ready.append(task)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._token.run_sync_soon(self._drain)
        except trio.RunFinishedError:
            pass

    def _drain(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
            self._scheduled = False
        for task in ready:
            trio.lowlevel.reschedule(task)


_by_token: weakref.WeakKeyDictionary[trio.lowlevel.TrioToken, _Wakeups] = (
    weakref.WeakKeyDictionary()
)
_local = threading.local()


@_fork.in_child
def _reset_after_fork() -> None:
    """The parent's loops are not running here; their wake-ups' locks may be
    held by threads that are gone."""
    global _by_token, _local
    _by_token = weakref.WeakKeyDictionary()
    _local = threading.local()


def _wakeups() -> _Wakeups:
    token = trio.lowlevel.current_trio_token()
    cached: Optional[_Wakeups] = getattr(_local, "wakeups", None)
    if cached is not None and cached._token is token:
        return cached
    wakeups = _by_token.get(token)
    if wakeups is None:
        wakeups = _by_token[token] = _Wakeups(token)
    _local.wakeups = wakeups
    return wakeups


checkpoint = trio.lowlevel.checkpoint


def is_idle() -> bool:
    """True if no other task is ready to run in this trio run."""
    runnable: int = trio.lowlevel.current_statistics().tasks_runnable
    return runnable == 0


async def wait(job: Any) -> None:
    """Suspend until ``job`` completes."""
    task = trio.lowlevel.current_task()
    if not job.set_waker(functools.partial(_wakeups().wake, task)):
        await trio.lowlevel.checkpoint()
        return

    def abort(_: Any) -> trio.lowlevel.Abort:
        # Only abandon the wait if the wake-up can no longer arrive; otherwise
        # the reschedule is already on its way and must find us blocked.
        return trio.lowlevel.Abort.SUCCEEDED if job.clear_waker() else trio.lowlevel.Abort.FAILED

    await trio.lowlevel.wait_task_rescheduled(abort)


async def wait_for(job: Any, timeout: float) -> bool:
    """Like :func:`wait`, giving up after ``timeout`` seconds; False if it did."""
    with trio.move_on_after(timeout):
        await wait(job)
    return bool(job.done)
