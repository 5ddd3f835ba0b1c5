"""The way back to the event loop from code a worker runs.

``run_sync`` callables and event listeners run on a worker thread, while the
task that asked for them awaits on the loop.  Each job handed over from the
loop is wrapped in a :class:`Call`, which captures the loop's anyio token
there and, while the job runs, makes the worker look like an anyio worker
thread: ``anyio.from_thread.run()`` / ``run_sync()`` / ``check_cancelled()``
work, and so does :func:`await_`.

Everything sent to the loop goes through the :class:`Call`, so that when the
awaiting task is cancelled (:meth:`Call.cancel`, on the loop) whatever the
worker is waiting for on the loop is cancelled too and later attempts fail
at once: the worker unwinds instead of waiting for a task that is itself
waiting for the worker.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from contextvars import copy_context
from typing import Any, Awaitable, Callable, Optional, TypeVar

import anyio
import anyio.from_thread
from anyio.lowlevel import EventLoopToken, current_token
from sqlalchemy import exc as sa_exc

from ..exc import CallerCancelled
from . import _asyncio, _impl

_anyio_local: Optional[threading.local]
try:  # where anyio looks for the token of its own worker threads
    from anyio._core._eventloop import threadlocals as _anyio_local
except ImportError:  # pragma: no cover - a future anyio: only await_() works
    _anyio_local = None

_T = TypeVar("_T")


_state = threading.local()  # .call: the Call running here; .loop: whose stand-in is here
_get_ident = threading.get_ident
_get_running_loop = _impl._get_running_loop
_set_running_loop = asyncio._set_running_loop
_UNSET = object()

#: The last loop (asyncio) or trio token seen and its anyio token, so most
#: calls skip anyio's backend lookup.  Any thread reads and replaces it whole.
_last: tuple[Any, Optional[EventLoopToken]] = (None, None)

#: Set in the loop-side task that serves a worker's from_thread call: the
#: thread id of that worker, which is blocked until the task ends.
_serving: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar(
    "sqlalchemy_anyio_serving", default=None
)


def _loop_token() -> Optional[EventLoopToken]:
    global _last
    loop: Any = _get_running_loop()
    if loop is None:
        try:
            import trio

            loop = trio.lowlevel.current_trio_token()
        except (ImportError, RuntimeError):
            return None
    last = _last
    if last[0] is loop:
        return last[1]
    try:
        token: Optional[EventLoopToken] = current_token()
    except RuntimeError:  # not an event loop anyio knows
        token = None
    _last = (loop, token)
    return token


def refuse_if_serving(thread_id: Optional[int]) -> None:
    """Refuse to queue a job for a worker that waits for the running task.

    The job would sit behind the worker's own wait for this task: a deadlock.
    """
    if thread_id is not None and _serving.get() == thread_id:
        raise sa_exc.InvalidRequestError(
            "This connection's worker thread is waiting for this task (it called "
            "anyio.from_thread.run() or await_() from a run_sync callable or an event "
            "listener), so it cannot run another call of that connection or session "
            "now.  Inside that code use the synchronous connection/session you were "
            "given instead of the async one."
        )


class Call:
    """A job's callable, with its way back to the loop that handed it over,
    and the context of the task it runs for.

    Created on the loop thread; called on the worker.  :meth:`cancel` (on the
    loop) cuts the way back when the awaiting task is cancelled.

    The callable runs in a copy of the task's ``contextvars`` context, taken
    here; once it is done, :meth:`merge` (in the task) makes what it set the
    task's.  Running it in the task's own context object instead is not
    possible: that object is still entered on the loop thread until the task
    suspends, and the worker may start before, which ``Context.run()`` refuses.
    """

    __slots__ = ("_scopes", "cancelled", "context", "fn", "loop", "thread", "token")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.context = copy_context()
        #: The asyncio loop the call came from (None on trio, or off a loop).
        self.loop = _get_running_loop()
        self.token = _loop_token()
        self.cancelled = False
        self.thread: Optional[int] = None
        #: Cancel scopes of the loop-side tasks serving this call (loop thread
        #: only); made by the first one.
        self._scopes: Optional[set[anyio.CancelScope]] = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Thread-local dicts directly: this runs for every job.
        state = _state.__dict__
        outer = state.get("call")
        state["call"] = self
        self.thread = _get_ident()
        local = _anyio_local.__dict__ if _anyio_local is not None else {}
        previous = local.get("current_token")
        local["current_token"] = _TOKEN
        if self.loop is not state.get("loop", None):
            _stand_in(self.loop, state)
        try:
            if kwargs:
                return self.context.run(self.fn, *args, **kwargs)
            return self.context.run(self.fn, *args)
        except RuntimeError as error:
            _explain(error)
            raise
        finally:
            state["call"] = outer
            if previous is None:
                del local["current_token"]
            else:
                local["current_token"] = previous

    def merge(self) -> None:
        """Make what the callable set in its context the awaiting task's
        (on the loop, in that task, once the call is done)."""
        done = self.context
        now = copy_context()
        if done == now:  # nothing set: the common case, and cheap to tell
            return
        for var, value in done.items():
            if now.get(var, _UNSET) is not value:
                var.set(value)

    def cancel(self) -> None:
        """The awaiting task was cancelled: cancel what the worker waits for on
        the loop and refuse anything it asks later.  Loop thread only."""
        self.cancelled = True
        for scope in list(self._scopes or ()):
            scope.cancel()

    def _check(self) -> None:
        if self.cancelled:
            raise CallerCancelled(
                "the task awaiting this worker call was cancelled: the event loop no "
                "longer waits for this code, which should return (or raise) now"
            )
        if self.token is None:
            raise sa_exc.InvalidRequestError(
                "This worker call was not made from a running event loop, so there is "
                "no loop to go back to."
            )

    async def _serve(self, func: Callable[..., Awaitable[_T]], args: tuple[Any, ...]) -> _T:
        self._check()  # on the loop thread: ordered with cancel()
        _serving.set(self.thread)
        with anyio.CancelScope() as scope:
            if self._scopes is None:
                self._scopes = set()
            self._scopes.add(scope)
            try:
                return await func(*args)
            finally:
                self._scopes.discard(scope)
        self._check()  # only our cancel() cancels this scope
        raise AssertionError("unreachable")  # pragma: no cover

    def _serve_sync(self, func: Callable[..., _T], args: tuple[Any, ...]) -> _T:
        self._check()
        return func(*args)

    def run(self, func: Callable[..., Awaitable[_T]], args: tuple[Any, ...]) -> _T:
        """``await func(*args)`` on the loop, from the worker."""
        self._check()
        return anyio.from_thread.run(self._serve, func, args, token=self.token)

    def run_sync(self, func: Callable[..., _T], args: tuple[Any, ...]) -> _T:
        """``func(*args)`` on the loop, from the worker."""
        self._check()
        return anyio.from_thread.run_sync(self._serve_sync, func, args, token=self.token)


def _stand_in(loop: Optional[asyncio.AbstractEventLoop], state: dict[str, Any]) -> None:
    """Let asyncio code on this worker thread find a stand-in for ``loop``
    (see ``_asyncio.WorkerLoop``), or no loop at all for a call from trio.

    It stays in place between calls: setting the running loop costs more than
    a call's own hand-off on CPython 3.11 (a new holder object, and the cache
    of the loop thread's own lookup is dropped), and a worker's calls nearly
    always come from the same loop.
    """
    state["loop"] = loop
    _set_running_loop(None if loop is None else _asyncio.WorkerLoop(loop))  # type: ignore[arg-type]


def current_call() -> Optional[Call]:
    call: Optional[Call] = _state.__dict__.get("call")
    return call


def _call_or_error() -> Call:
    call = current_call()
    if call is None:
        raise anyio.NoEventLoopError(
            "This thread runs sqlalchemy_anyio jobs, but this code was not called on "
            "behalf of an awaiting task (it runs in the background), so there is no "
            "event loop waiting for it."
        )
    return call


class _Reentry:
    """What anyio's ``from_thread`` functions find on a worker thread.

    anyio calls these with the token it found on the thread (ours); they
    forward to the loop through the running :class:`Call`.
    """

    @classmethod
    def run_async_from_thread(
        cls, func: Callable[..., Awaitable[_T]], args: tuple[Any, ...], token: object
    ) -> _T:
        return _call_or_error().run(func, args)

    @classmethod
    def run_sync_from_thread(
        cls, func: Callable[..., _T], args: tuple[Any, ...], token: object
    ) -> _T:
        return _call_or_error().run_sync(func, args)

    @classmethod
    def check_cancelled(cls) -> None:
        _call_or_error()._check()


_TOKEN = EventLoopToken(_Reentry, None)  # type: ignore[arg-type]


async def _await(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def await_(awaitable: Awaitable[_T]) -> _T:
    """Await ``awaitable`` on the event loop from worker code; return its result.

    The counterpart of SQLAlchemy's ``await_only()``: for ``run_sync``
    callables and event listeners, which run on a worker thread while their
    task waits.  The worker waits for the result.  If that task is cancelled,
    the awaitable is cancelled and :class:`CallerCancelled` raised here.
    """
    call = current_call()
    if call is None:
        _close(awaitable)
        if _on_event_loop():
            raise sa_exc.InvalidRequestError(
                "await_() was called on the event loop thread, which it would block "
                "forever; in async code write 'await ...' instead.  await_() is for "
                "code that sqlalchemy_anyio runs on a worker thread (run_sync callables, "
                "event listeners)."
            )
        raise sa_exc.InvalidRequestError(
            "await_() can only be called from code that sqlalchemy_anyio runs on a "
            "worker thread for an awaiting task (run_sync callables, event listeners); "
            "elsewhere use anyio.from_thread.run(..., token=...) or your loop's own "
            "thread-safe API."
        )
    try:
        result: _T = call.run(_await, (awaitable,))
        return result
    except BaseException:
        _close(awaitable)
        raise


def _close(awaitable: object) -> None:
    """Close a coroutine that will never run (no 'never awaited' warning)."""
    if inspect.iscoroutine(awaitable) and inspect.getcoroutinestate(awaitable) == "CORO_CREATED":
        awaitable.close()


def _on_event_loop() -> bool:
    if _get_running_loop() is not None:
        return True
    try:
        import trio

        trio.lowlevel.current_trio_token()
    except (ImportError, RuntimeError):
        return False
    return True


_HINT = (
    "sqlalchemy_anyio runs this code on a worker thread, where no event loop runs. "
    "To reach the loop from here use anyio.from_thread.run_sync(fn, ...) (or "
    "anyio.from_thread.run(async_fn, ...)), or sqlalchemy_anyio.await_(awaitable); "
    "see docs/reentry.md."
)
_NO_LOOP_MESSAGES = (
    "no running event loop",  # asyncio.get_running_loop(), create_task()
    "no current event loop",  # asyncio.get_event_loop() in a thread
    "must be called from async context",  # trio
    "not in async context",  # sniffio
    "not currently running on any asynchronous event loop",  # anyio
)


def _explain(error: RuntimeError) -> None:
    """Add the way back to an error raised for the lack of an event loop."""
    text = str(error).lower()
    if not any(m in text for m in _NO_LOOP_MESSAGES) or _HINT in text:
        return
    add_note = getattr(error, "add_note", None)
    if add_note is not None:
        if _HINT not in getattr(error, "__notes__", ()):
            add_note(_HINT)
    elif error.args and isinstance(error.args[0], str):  # Python 3.10
        error.args = (f"{error.args[0]}. {_HINT}", *error.args[1:])
