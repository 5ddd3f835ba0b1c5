"""Async drivers (asyncpg, psycopg async, aiomysql, asyncmy) without greenlet.

SQLAlchemy's dialect for an async driver wraps it in an adapter whose sync
methods call ``await_(coroutine)``; with the official extension that is a
greenlet switch.  Here SQLAlchemy runs on a worker thread as for any driver,
and ``await_`` hands the coroutine to the event loop that called the worker
and blocks the worker until it is done: the driver's I/O stays on the loop.

The adapters name ``await_`` (2.1), ``await_only``/``await_fallback`` (2.0,
often as a class attribute) and ``in_greenlet`` as globals of their modules.
Those names are pointed, once, at dispatchers that do the above on our
worker threads and call SQLAlchemy's own function everywhere else, so the
official extension in the same process is unaffected.  The dialects are
subclasses registered under private names, so the engine keeps its URL.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import sys
import threading
from typing import Any, Awaitable, Callable, Optional, TypeVar, cast

from sqlalchemy import event, exc
from sqlalchemy.dialects import registry
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.util import concurrency as sa_concurrency

from ._bridge import current_worker

_T = TypeVar("_T")

#: (backend, driver) -> the driver's module.
_NATIVE: dict[tuple[str, str], str] = {
    ("postgresql", "asyncpg"): "asyncpg",
    ("postgresql", "psycopg_async"): "psycopg",
    ("mysql", "aiomysql"): "aiomysql",
    ("mysql", "asyncmy"): "asyncmy",
    ("mariadb", "aiomysql"): "aiomysql",
    ("mariadb", "asyncmy"): "asyncmy",
}

#: Values of the ``async_driver=`` engine option.
CHOICES = ("native", "sync")

_PREFIX = "sqlalchemy_anyio_"

#: Key in a pooled connection's notes (:func:`notes`): the thread that owns
#: it and its loop.
OWNER = "owner"


def notes(record: Any) -> dict[str, Any]:
    """This package's own notes on a pooled connection (its pool record).

    Kept apart from the record's ``info``, which is what the application sees
    as ``connection.info`` and may expect to hold only what it put there.
    """
    found: Optional[dict[str, Any]] = record.__dict__.get("_sqlalchemy_anyio_notes")
    if found is None:
        found = record.__dict__["_sqlalchemy_anyio_notes"] = {}
    return found


class Interrupted(Exception):
    """The driver's coroutine was cancelled because its call was cancelled."""


# --------------------------------------------------------------------------
# choosing


def _trio_running() -> bool:
    if "trio" not in sys.modules:
        return False
    import trio

    return bool(trio.lowlevel.in_trio_run())


def native_url(url: URL, choice: Optional[str]) -> Optional[URL]:
    """The URL to build a native engine from, or None to map to a sync driver.

    ``choice`` is the ``async_driver=`` option: ``"native"`` requires the
    async driver, ``"sync"`` asks for the mapping, None (the default) runs
    the driver natively unless this is trio or the driver is not installed.
    """
    if choice is not None and choice not in CHOICES:
        raise exc.ArgumentError(
            f"async_driver must be 'native' (run the URL's async driver on the event loop) "
            f"or 'sync' (use its synchronous counterpart on worker threads), not {choice!r}."
        )
    if choice == "sync" or "+" not in url.drivername:
        return None
    key = (url.get_backend_name(), url.get_driver_name())
    module = _NATIVE.get(key)
    if module is None:
        if choice == "native" and key[1] in ("aiosqlite", "oracledb_async", "aioodbc"):
            raise exc.ArgumentError(
                f"async_driver='native' is not available for {url.drivername!r}: "
                "it runs on its synchronous counterpart; leave async_driver unset."
            )
        return None
    installed = importlib.util.find_spec(module) is not None
    if choice == "native":
        if _trio_running():
            raise exc.ArgumentError(
                f"async_driver='native': {key[1]} needs an asyncio event loop and this is "
                "trio; use async_driver='sync' (its synchronous counterpart) instead."
            )
        if not installed:
            raise exc.ArgumentError(
                f"async_driver='native': the driver {module!r} is not installed "
                f"(pip install {module!r}), or use async_driver='sync'."
            )
    elif not installed or _trio_running():
        return None
    _register(key)
    return url.set(drivername=f"{key[0]}+{_PREFIX}{key[1]}")


_registered: set[tuple[str, str]] = set()
_lock = threading.Lock()


def _register(key: tuple[str, str]) -> None:
    """Make ``backend+sqlalchemy_anyio_driver://`` load our dialect class."""
    with _lock:
        if key in _registered:
            return
        _registered.add(key)
        registry.impls[f"{key[0]}.{_PREFIX}{key[1]}"] = functools.partial(dialect_class, key)


def dialect_class(key: tuple[str, str]) -> type[Any]:
    """Our subclass of SQLAlchemy's dialect for the async driver ``key``."""
    with _lock:
        cls = _classes.get(key)
        if cls is not None:
            return cls
    # SQLAlchemy's own class for the URL (MariaDB's variants included), and
    # the modules its adapters live in.
    base = make_url(f"{key[0]}+{key[1]}://").get_dialect()
    for klass in base.__mro__:
        if klass.__module__.startswith("sqlalchemy.dialects."):
            _patch_modules(sys.modules[klass.__module__])
    cls = type(
        base.__name__,
        (_NativeDialect, base),
        {"__module__": __name__, "supports_statement_cache": True, "native_driver": key[1]},
    )
    with _lock:
        return _classes.setdefault(key, cls)


_classes: dict[tuple[str, str], type[Any]] = {}


class _NativeDialect:
    """What our dialects add to SQLAlchemy's async ones."""

    #: SQLAlchemy reads ``is_async`` as "driven by greenlet_spawn": pool
    #: events would take asyncio locks through ``await_`` and garbage-collected
    #: connections would be dropped unreset.  Ours are driven from threads.
    is_async = False
    #: The URL's driver name (psycopg's async dialect calls itself "psycopg").
    native_driver = ""

    def connect(self, *cargs: Any, **cparams: Any) -> Any:
        """Refuse at once where no asyncio loop can run the driver (trio),
        before any of its coroutines is made."""
        _loop_for_thread()
        return super().connect(*cargs, **cparams)  # type: ignore[misc]

    def do_terminate(self, dbapi_connection: Any) -> None:
        """Close gracefully on the loop if we can, else drop the socket.

        SQLAlchemy's ``terminate()`` schedules the graceful close with
        ``asyncio.shield`` on the calling thread, which has no loop here.
        """
        if _stranded(dbapi_connection):
            _force_close(dbapi_connection)
        elif not hasattr(dbapi_connection, "_terminate_force_close"):  # psycopg: a close
            super().do_terminate(dbapi_connection)  # type: ignore[misc]
        else:
            try:
                run_on_loop(asyncio.wait_for(dbapi_connection._terminate_graceful_close(), 2))
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 - as SQLAlchemy's
                run_on_loop(_call_async(dbapi_connection._terminate_force_close))

    def do_close(self, dbapi_connection: Any) -> None:
        """A connection whose event loop is gone cannot say goodbye: drop it."""
        if _stranded(dbapi_connection):
            _force_close(dbapi_connection)
        else:
            super().do_close(dbapi_connection)  # type: ignore[misc]


def _stranded(dbapi_connection: Any) -> bool:
    """True when this thread cannot run the connection's coroutines: it is not
    ours (garbage collection), or the connection's event loop is another one."""
    loop = _loop_for_thread()
    return (
        loop is None
        or loop.is_closed()
        or getattr(dbapi_connection.driver_connection, "_loop", loop) is not loop
    )


def _force_close(dbapi_connection: Any) -> None:
    """Drop the connection from any thread, even once its event loop is closed
    (the driver's own close needs the loop then: the socket is closed here)."""
    driver = dbapi_connection.driver_connection
    pgconn = getattr(driver, "pgconn", None)
    if pgconn is not None:  # psycopg: libpq closes it, no loop needed
        pgconn.finish()
        return
    try:
        dbapi_connection._terminate_force_close()
        return
    except Exception:  # noqa: BLE001 - its loop is closed
        pass
    writer = getattr(driver, "_writer", None)
    transport = getattr(driver, "_transport", None) or getattr(writer, "transport", None)
    sock = getattr(transport, "_sock", None)
    if sock is not None:
        sock.close()
        transport._sock = None  # type: ignore[union-attr]
    for attr in ("_writer", "_reader", "_transport"):  # so its finalizer does not retry
        try:
            if getattr(driver, attr, None) is not None:
                setattr(driver, attr, None)
        except (AttributeError, TypeError):
            pass


async def _call_async(fn: Callable[[], _T]) -> _T:
    return fn()


def make_engine(
    url: URL,
    native: URL,
    create: Callable[..., Engine],
    kw: dict[str, Any],
    async_creator: Optional[Callable[..., Any]] = None,
) -> Engine:
    """Build the engine on the native URL; it reports the URL it was given.

    ``async_creator`` is the official extension's option: a coroutine
    function returning a driver connection.
    """
    if async_creator is not None:
        if kw.get("creator") is not None:
            raise exc.ArgumentError(
                "Can only specify one of 'async_creator' or 'creator', not both."
            )
        engine_box: list[Engine] = []

        def creator() -> Any:
            return engine_box[0].dialect.dbapi.connect(async_creator_fn=async_creator)  # type: ignore[union-attr]

        kw["creator"] = creator
    engine = create(native, **kw)
    engine.url = url
    if async_creator is not None:
        engine_box.append(engine)
    event.listen(engine, "connect", _note_owner)
    event.listen(engine, "checkout", _check_loop)
    return engine


def _note_owner(dbapi_connection: Any, record: Any) -> None:
    """Pool ``connect`` hook: the thread and event loop the connection belongs to."""
    notes(record)[OWNER] = (_state(), _loop_for_thread())


def _check_loop(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Pool ``checkout`` hook: a connection made on another (closed) event loop
    cannot be used on this one; the pool replaces it."""
    owner = notes(record).get(OWNER)
    loop = _loop_for_thread()
    if owner is not None and loop is not None and owner[1] is not loop:
        raise exc.DisconnectionError("connection belongs to another event loop")


# --------------------------------------------------------------------------
# running coroutines on the loop from a worker


class _Call:
    """One coroutine run on the loop for a blocked worker thread."""

    __slots__ = ("coro", "done", "error", "interrupted", "loop", "result", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, coro: Any) -> None:
        self.loop = loop
        self.coro = coro
        self.done = threading.Lock()
        self.done.acquire()
        self.task: Optional[asyncio.Future[Any]] = None
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.interrupted = False

    def start(self) -> None:  # on the loop
        if self.interrupted:
            _close(self.coro)
            self.error = Interrupted("the call was cancelled")
            self.done.release()
            return
        try:
            self.task = asyncio.ensure_future(self.coro, loop=self.loop)
        except BaseException as error:  # noqa: BLE001 - handed to the worker
            self.error = error
            self.done.release()
            return
        self.task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[Any]) -> None:  # on the loop
        if task.cancelled():
            self.error = (
                Interrupted("the call was cancelled")
                if self.interrupted
                else asyncio.CancelledError()
            )
        else:
            self.error = task.exception()
            if self.error is None:
                self.result = task.result()
        self.done.release()

    def interrupt(self) -> None:
        """Cancel the coroutine (any thread)."""
        try:
            self.loop.call_soon_threadsafe(self._interrupt)
        except RuntimeError:  # loop closed: the call ends by itself
            pass

    def _interrupt(self) -> None:  # on the loop
        self.interrupted = True
        if self.task is not None:
            self.task.cancel()


def _close(coro: Any) -> None:
    close = getattr(coro, "close", None)
    if close is not None:
        close()


class ThreadState:
    """Per worker thread: the call it waits for (read by interrupters)."""

    __slots__ = ("call",)

    def __init__(self) -> None:
        self.call: Optional[_Call] = None


_local = threading.local()


def _state() -> ThreadState:
    state: Optional[ThreadState] = getattr(_local, "state", None)
    if state is None:
        state = _local.state = ThreadState()
    return state


def _loop_for_thread() -> Optional[asyncio.AbstractEventLoop]:
    """The loop to run driver coroutines on from this thread, or None if this
    thread is not one of ours (then SQLAlchemy's own ``await_`` applies)."""
    loop: Optional[asyncio.AbstractEventLoop] = getattr(_local, "loop", None)
    if loop is not None:
        return loop
    worker = current_worker()
    if worker is None:
        return None
    worker.loop_spin = False  # the loop must stay free to run our coroutines
    loop = worker.loop
    if loop is None:
        raise exc.InvalidRequestError(
            "This engine runs an async driver, which needs an asyncio event loop; "
            "under trio create the engine with async_driver='sync' (or inside trio)."
        )
    return loop


def run_on_loop(coro: Awaitable[_T]) -> _T:
    """Run ``coro`` on this thread's event loop and block until it is done."""
    try:
        loop = _loop_for_thread()
    except BaseException:
        _close(coro)
        raise
    if loop is None:
        _close(coro)
        raise exc.InvalidRequestError("not on a worker thread of sqlalchemy_anyio")
    return cast(_T, _run(loop, coro))


def _run(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    call = _Call(loop, coro)
    state = _state()
    state.call = call
    try:
        try:
            loop.call_soon_threadsafe(call.start)
        except RuntimeError:  # closed
            _close(coro)
            raise exc.InvalidRequestError("the event loop of this connection is closed") from None
        while not call.done.acquire(timeout=1.0):
            if loop.is_closed():
                raise exc.InvalidRequestError("the event loop of this connection is closed")
    finally:
        state.call = None
    if call.error is not None:
        error, call.error = call.error, None
        raise error
    return call.result


def interrupt(info: dict[str, Any]) -> bool:
    """Cancel the coroutine that the owner of a pooled connection (its
    :func:`notes`) waits for; False if it waits for none."""
    owner = info.get(OWNER)
    call = owner[0].call if owner is not None else None
    if call is None:
        return False
    call.interrupt()
    return True


def asyncpg_server_cancel(driver: Any, timeout: float) -> bool:
    """Cancel what an asyncpg connection runs, on the server (from a thread in
    :class:`on_loop`); False if this asyncpg has no such helper."""
    try:
        cancel = importlib.import_module("asyncpg.connect_utils")._cancel
        coro = cancel(
            loop=driver._loop,
            addr=driver._addr,
            params=driver._params,
            backend_pid=driver._protocol.backend_pid,
            backend_secret=driver._protocol.backend_secret,
        )
    except (ImportError, AttributeError, TypeError):
        return False
    try:
        run_on_loop(asyncio.wait_for(coro, timeout))
    except ConnectionResetError:  # some servers reset the side connection: sent anyway
        pass
    return True


def owner_loop(info: dict[str, Any]) -> Optional[asyncio.AbstractEventLoop]:
    """The event loop a pooled connection (its :func:`notes`) belongs to."""
    owner = info.get(OWNER)
    return owner[1] if owner is not None else None


class on_loop:
    """``with on_loop(loop):`` lets this (non-worker) thread drive an async
    driver's connections, as the interrupters' side connections do."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def __enter__(self) -> None:
        _local.loop = self.loop

    def __exit__(self, *exc_info: object) -> None:
        _local.loop = None


# --------------------------------------------------------------------------
# pointing SQLAlchemy's await_ at run_on_loop


def _await_dispatcher(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def await_(awaitable: Any) -> Any:
        try:
            loop = _loop_for_thread()
        except BaseException:  # trio: nothing will run it
            _close(awaitable)
            raise
        if loop is not None:
            return _run(loop, awaitable)
        if "greenlet" not in sys.modules:  # no greenlet_spawn can be under way
            _close(awaitable)
            raise exc.MissingGreenlet(  # SQLAlchemy's own words, without importing it
                "greenlet_spawn has not been called; can't call await_() "
                "here. Was IO attempted in an unexpected place?"
            )
        return original(awaitable)

    await_._sqlalchemy_anyio = True  # type: ignore[attr-defined]
    return await_


def _in_greenlet_dispatcher(original: Callable[[], bool]) -> Callable[[], bool]:
    @functools.wraps(original)
    def in_greenlet() -> bool:
        if _loop_for_thread() is not None:
            return True
        return "greenlet" in sys.modules and original()

    in_greenlet._sqlalchemy_anyio = True  # type: ignore[attr-defined]
    return in_greenlet


def _originals() -> dict[Any, Callable[..., Any]]:
    found: dict[Any, Callable[..., Any]] = {}
    for name in ("await_", "await_only", "await_fallback"):
        fn = getattr(sa_concurrency, name, None)
        if fn is not None and fn not in found:
            found[fn] = _await_dispatcher(fn)
    in_greenlet = getattr(sa_concurrency, "in_greenlet", None)
    if in_greenlet is not None:
        found[in_greenlet] = _in_greenlet_dispatcher(in_greenlet)
    return found


_patched: set[str] = set()


def _patch_modules(dialect_module: Any) -> None:
    """Point the adapter modules' ``await_`` names at the dispatchers (once)."""
    import sqlalchemy.connectors.asyncio as connectors_asyncio
    import sqlalchemy.engine.interfaces as engine_interfaces

    with _lock:
        replacements = _originals()
        for module in (connectors_asyncio, engine_interfaces, dialect_module):
            if module.__name__ in _patched:
                continue
            _patched.add(module.__name__)
            _patch_namespace(module, replacements)


def _patch_namespace(module: Any, replacements: dict[Any, Callable[..., Any]]) -> None:
    for name, value in list(vars(module).items()):
        if _hashable(value) and value in replacements:
            setattr(module, name, replacements[value])
        elif isinstance(value, type) and value.__module__ == module.__name__:
            for attr, raw in list(vars(value).items()):
                if isinstance(raw, staticmethod) and raw.__func__ in replacements:
                    setattr(value, attr, staticmethod(replacements[raw.__func__]))


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True
