"""AsyncEngine, AsyncConnection and AsyncTransaction on worker threads.

Every sync call of a connection runs on the one worker thread the connection
leased when it started, so the DBAPI connection only ever meets that thread.
Results of ``execute()`` are fully fetched there before they are returned.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from operator import attrgetter
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Generator,
    NoReturn,
    Optional,
    TypeVar,
    Union,
)

import anyio
from sqlalchemy import exc, inspection
from sqlalchemy import pool as sa_pool
from sqlalchemy import util as sa_util
from sqlalchemy.engine import Connection, Engine, Result, Transaction
from sqlalchemy.engine import create_engine as _create_engine
from sqlalchemy.engine import create_pool_from_url as _create_pool_from_url
from sqlalchemy.engine.url import URL, make_url

from . import _async_drivers, _cancel, _chunk, _fork, _guard
from . import exc as async_exc
from ._base import (
    ProxyComparable,
    StartableContext,
    asyncstartablecontext,
)
from ._bridge import (
    CANCEL_TIMEOUT,
    SharedWorkerPool,
    Worker,
    WorkerPool,
    _placement,
    bound_seconds,
    engine_gate,
    give_back_later,
)
from ._buffer import buffer_result
from ._engine_proxy import (
    CONNECTION_ATTRIBUTES,
    CONNECTION_METHODS,
    ENGINE_ATTRIBUTES,
    ENGINE_METHODS,
)
from ._forwarding import forward, typed
from ._pool import WorkerQueuePool
from ._urls import to_sync_url
from .result import AsyncResult, AsyncScalarResult

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import (
        CoreExecuteOptionsParameter,
        Dialect,
        IsolationLevel,
        _CoreAnyExecuteParams,
    )
    from sqlalchemy.pool import PoolProxiedConnection
    from sqlalchemy.sql.base import Executable

_T = TypeVar("_T")

#: Worker limit when the engine's pool does not bound its connections.
DEFAULT_WORKER_LIMIT = 40

_STREAM_OPTIONS = sa_util.immutabledict({"stream_results": True})


# --------------------------------------------------------------------------
# engine construction


def create_async_engine(url: Union[str, URL], **kw: Any) -> AsyncEngine:
    """Create an :class:`AsyncEngine`.

    Takes the arguments of :func:`sqlalchemy.create_engine`.  On asyncio, a
    URL naming asyncpg, psycopg_async, aiomysql or asyncmy runs that driver
    on the event loop where it is installed; other async drivers
    (``+aiosqlite``), and all of them under trio, are mapped to their
    synchronous counterpart.

    Options of this package:

    - ``async_driver=``: ``"native"`` requires the URL's async driver,
      ``"sync"`` always maps it to its synchronous counterpart
      (docs/async-drivers.md).
    - ``cancel_timeout=``: seconds, the bound on a cancelled call
      (docs/cancellation.md).
    - ``thread_placement=``: whether the event loop's thread and this
      engine's workers share one CPU under concurrent load: ``"auto"`` (the
      default) for databases on a server, ``"on"`` for SQLite too, ``"off"``
      (docs/bridge.md).
    - ``overflow_linger=``: seconds (default 1) an overflow connection no
      task needs stays open before the pool closes it; 0 closes it at once,
      as QueuePool does.
    """
    if kw.get("server_side_cursors", False):
        raise async_exc.AsyncMethodRequired(
            "Can't set server_side_cursors for async engine globally; "
            "use the connection.stream() method for an async "
            "streaming result set"
        )
    kw.pop("_is_async", None)
    cancel_timeout = _cancel_timeout(kw.pop("cancel_timeout", None))
    placement = _thread_placement(kw.pop("thread_placement", _placement.DEFAULT))
    linger = _overflow_linger(kw.pop("overflow_linger", None))
    given = make_url(url)
    native = _async_drivers.native_url(given, kw.pop("async_driver", None))
    async_creator = kw.pop("async_creator", None)
    if async_creator is not None and native is None:
        raise exc.ArgumentError(
            "async_creator needs an async driver run natively (an asyncpg, psycopg_async, "
            "aiomysql or asyncmy URL, on asyncio); for a synchronous driver pass creator= "
            "with a function returning a synchronous DBAPI connection instead."
        )
    if native is not None:
        _worker_pool_default(native, kw)
        sync_engine = _async_drivers.make_engine(given, native, _create_engine, kw, async_creator)
    else:
        sync_url = to_sync_url(given)
        _sqlite_defaults(sync_url, kw)
        _worker_pool_default(sync_url, kw)
        sync_engine = _create_engine(sync_url, **kw)
    engine = AsyncEngine(sync_engine)
    workers = workers_for(engine.sync_engine)
    if cancel_timeout is not None:
        workers.cancel_timeout = cancel_timeout
    workers.placement = _placement.placed(placement, local=sync_engine.dialect.name == "sqlite")
    if isinstance(workers, WorkerQueuePool):
        workers.gate = engine_gate(local=sync_engine.dialect.name == "sqlite")
        if linger is not None:
            workers.overflow_linger = linger
    elif linger is not None:
        raise exc.ArgumentError(
            f"overflow_linger applies to a QueuePool; this engine's pool is a "
            f"{type(sync_engine.pool).__name__}"
        )
    return engine


def _cancel_timeout(value: Any) -> Optional[float]:
    """The ``cancel_timeout=`` engine option: seconds, above 0 (None: the default)."""
    if value is None:
        return None
    seconds = bound_seconds(value)
    if seconds is None:
        raise exc.ArgumentError(
            f"cancel_timeout must be a number of seconds above 0, not {value!r}: it bounds "
            "how long a cancelled call waits for its statement, interrupt and recovery."
        )
    return seconds


def _overflow_linger(value: Any) -> Optional[float]:
    """The ``overflow_linger=`` engine option: seconds, 0 to an hour (None: the default)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or not 0 <= seconds <= 3600:
        raise exc.ArgumentError(
            f"overflow_linger must be a number of seconds from 0 to 3600, not {value!r}: "
            "how long an overflow connection the pool does not need is kept before it is "
            "closed (0: at once, as QueuePool does)."
        )
    return seconds


def _thread_placement(value: Any) -> str:
    """The ``thread_placement=`` engine option: ``"auto"``, ``"on"`` or ``"off"``."""
    try:
        return _placement.parse_mode(value)
    except ValueError as error:
        raise exc.ArgumentError(str(error)) from None


def async_engine_from_config(
    configuration: Dict[str, Any], prefix: str = "sqlalchemy.", **kwargs: Any
) -> AsyncEngine:
    """Create an :class:`AsyncEngine` from a configuration dictionary.

    Same arguments as :func:`sqlalchemy.engine_from_config`.
    """
    options = {
        key[len(prefix) :]: value for key, value in configuration.items() if key.startswith(prefix)
    }
    options["_coerce_config"] = True
    options.update(kwargs)
    url = options.pop("url")
    return create_async_engine(url, **options)


def create_async_pool_from_url(url: Union[str, URL], **kwargs: Any) -> sa_pool.Pool:
    """Create a connection pool for the URL, choosing its driver as
    :func:`create_async_engine` does (``async_driver=`` included)."""
    kwargs.pop("_is_async", None)
    given = make_url(url)
    native = _async_drivers.native_url(given, kwargs.pop("async_driver", None))
    if native is not None:
        _worker_pool_default(native, kwargs)
        return _create_pool_from_url(native, **kwargs)
    sync_url = to_sync_url(given)
    _sqlite_defaults(sync_url, kwargs)
    _worker_pool_default(sync_url, kwargs)
    return _create_pool_from_url(sync_url, **kwargs)


def _worker_pool_default(url: URL, kw: Dict[str, Any]) -> None:
    """Use :class:`WorkerQueuePool` where a plain QueuePool would be used.

    That is the dialect's default, ``QueuePool`` and ``AsyncAdaptedQueuePool``
    (which code written for the official extension may name), as a class or
    as a ready-made ``pool=`` object (whose settings, creator and listeners
    are taken over).  Other pool classes and objects are kept as they are.
    """
    given = kw.get("pool")
    if isinstance(given, sa_pool.QueuePool) and not isinstance(given, WorkerQueuePool):
        kw["pool"] = WorkerQueuePool.adopt(given)
        return
    if given is not None:
        return
    poolclass = kw.get("poolclass")
    if poolclass is None:
        poolclass = url.get_dialect().get_pool_class(url)  # type: ignore[attr-defined]
    if poolclass in (sa_pool.QueuePool, sa_pool.AsyncAdaptedQueuePool):
        kw["poolclass"] = WorkerQueuePool


def _sqlite_defaults(url: URL, kw: Dict[str, Any]) -> None:
    """Connections move between worker threads; memory databases are shared.

    An in-memory SQLite database is one database per DBAPI connection, so a
    single connection serves the whole engine (StaticPool), as with the
    official aiosqlite dialect, instead of one database per thread.
    """
    if url.get_backend_name() != "sqlite" or "creator" in kw:
        return
    connect_args = dict(kw.get("connect_args") or {})
    connect_args.setdefault("check_same_thread", False)
    kw["connect_args"] = connect_args
    is_file = bool(url.database and url.database != ":memory:") and (
        url.query.get("mode") != "memory"
    )
    if not is_file and "poolclass" not in kw and "pool" not in kw:
        kw["poolclass"] = sa_pool.StaticPool


# --------------------------------------------------------------------------
# workers per engine

_pools: weakref.WeakKeyDictionary[Engine, WorkerPool | SharedWorkerPool] = (
    weakref.WeakKeyDictionary()
)
_pools_lock = threading.Lock()


@_fork.in_child
def _reset_after_fork() -> None:
    global _pools_lock
    _pools_lock = threading.Lock()


def _root_engine(engine: Engine) -> Engine:
    while True:
        proxied = getattr(engine, "_proxied", None)
        if not isinstance(proxied, Engine):
            return engine
        engine = proxied


def _pool_capacity(pool: sa_pool.Pool) -> Optional[int]:
    if isinstance(pool, sa_pool.QueuePool):
        overflow = pool._max_overflow
        if overflow < 0:
            return None
        return pool.size() + overflow
    return None


def workers_for(engine: Engine) -> WorkerQueuePool | WorkerPool | SharedWorkerPool:
    """Where an engine's callers lease workers (shared by execution_options copies).

    A :class:`WorkerQueuePool` is its own source: its workers carry its
    connections.  Pools that hand one DBAPI connection to everybody
    (StaticPool) or one per thread (SingletonThreadPool) get a single shared
    worker, so that connection only ever meets one thread.  Any other pool
    (NullPool, custom pools) gets a bounded set of plain workers.
    """
    root = _root_engine(engine)
    pool = root.pool
    if isinstance(pool, WorkerQueuePool):
        return pool
    with _pools_lock:
        workers = _pools.get(root)
        if workers is None:
            if isinstance(pool, (sa_pool.StaticPool, sa_pool.SingletonThreadPool)):
                workers = SharedWorkerPool()
            else:
                capacity = _pool_capacity(pool)
                workers = WorkerPool(capacity if capacity else DEFAULT_WORKER_LIMIT)
            _pools[root] = workers
    return workers


async def lease_worker(engine: Engine) -> Worker:
    """Lease a worker for ``engine``; the wait is bounded by ``pool_timeout``.

    Workers are bounded by the pool's capacity, so a lease that waits too
    long fails the way an exhausted pool does: with ``sqlalchemy.exc.TimeoutError``.
    Give the worker back with ``worker.pool.release(worker)``.
    """
    workers = workers_for(engine)
    if isinstance(workers, WorkerQueuePool):
        return await workers.lease()
    pool = engine.pool
    timeout = pool.timeout() if isinstance(pool, sa_pool.QueuePool) else None
    try:
        return await workers.lease(timeout)
    except TimeoutError:
        raise exc.TimeoutError(
            f"{pool.__class__.__name__} limit of size {pool.size()} overflow "
            f"{pool.overflow()} reached, connection timed out, timeout {timeout:.2f}"
            if isinstance(pool, sa_pool.QueuePool)
            else "timed out waiting for a worker thread",
            code="3o7r",
        ) from None


_spare: Optional[WorkerPool] = None


def spare_workers() -> WorkerPool:
    """Workers tied to no engine: sessions whose bind is only known per
    statement (several engines, a custom ``get_bind()``), ``raw_connection()``.
    Connections they check out are opened and closed on them (see ``_pool``)."""
    global _spare
    with _pools_lock:
        if _spare is None:
            _spare = WorkerPool(DEFAULT_WORKER_LIMIT)
        return _spare


# --------------------------------------------------------------------------
# AsyncConnectable, AsyncEngine


class AsyncConnectable:
    """Common base of AsyncEngine and AsyncConnection."""

    __slots__ = ()

    @classmethod
    def _no_async_engine_events(cls) -> NoReturn:
        raise NotImplementedError(
            "asynchronous events are not implemented at this time.  Apply "
            "synchronous listeners to the AsyncEngine.sync_engine or "
            "AsyncConnection.sync_connection attributes."
        )


class AsyncEngine(ProxyComparable[Engine], AsyncConnectable):
    """An async proxy for an :class:`~sqlalchemy.engine.Engine`."""

    __slots__ = ("sync_engine",)

    _connection_cls: type[AsyncConnection]

    def __init__(self, sync_engine: Engine) -> None:
        #: The proxied sync :class:`~sqlalchemy.engine.Engine`; use it as an event target.
        self.sync_engine = self._assign_proxied(sync_engine)
        _guard.install_engine(sync_engine)
        _chunk.install_engine(sync_engine)
        _cancel.install_engine(_root_engine(sync_engine))

    @property
    def _proxied(self) -> Engine:
        return self.sync_engine

    @classmethod
    def _regenerate_proxy_for_target(cls, target: Engine, **kw: Any) -> AsyncEngine:
        return AsyncEngine(target)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """``async with engine.begin() as conn:`` — a connection in a transaction,
        committed at the end of the block (rolled back on error), then closed."""
        conn = self.connect()
        async with conn:
            async with conn.begin():
                yield conn

    def connect(self) -> AsyncConnection:
        """Return an :class:`AsyncConnection`; await it or use ``async with``."""
        return self._connection_cls(self)

    async def raw_connection(self) -> PoolProxiedConnection:
        """A pooled DBAPI connection, checked out on a spare worker thread.

        It is a synchronous object: use it from a ``run_sync``-style worker
        or close it promptly.  It is not one of the pool's worker-owned
        connections but one opened for it (and closed when it is closed),
        counted against the pool's limit.
        """
        spare = spare_workers()
        worker = await spare.lease()
        try:
            return await worker.call(self.sync_engine.raw_connection)
        finally:
            spare.release(worker)

    def execution_options(self, **opt: Any) -> AsyncEngine:
        """A copy of this engine with the given execution options."""
        return AsyncEngine(self.sync_engine.execution_options(**opt))

    async def dispose(self, close: bool = True) -> None:
        """Dispose of the connection pool and end the idle worker threads.

        Every idle connection is closed on the thread that owns it; those
        checked out now are closed when they are given back.  Cancelled, it
        still finishes (within the cancellation bound), then re-raises.
        """
        workers = workers_for(self.sync_engine)
        bound = workers.cancel_timeout or CANCEL_TIMEOUT
        if isinstance(workers, SharedWorkerPool):
            # The one connection belongs to the shared worker: close it
            # there, after whatever that worker is running now.
            worker = await workers.lease()
            try:
                await worker.call_shielded(self.sync_engine.dispose, close=close)
            finally:
                workers.release(worker)
                await _shielded_within(bound, workers.dispose)
        else:
            # A short-lived thread of its own: dispose() waits for the idle
            # workers to close their connections, and leased ones may be busy.
            worker = Worker()
            try:
                await worker.call_shielded(self.sync_engine.dispose, close=close)
            finally:
                worker.stop()
                await _shielded_within(bound, worker.wait_stopped)
                if not isinstance(workers, WorkerQueuePool):
                    await _shielded_within(bound, workers.dispose)

    if TYPE_CHECKING:  # for type checkers; the forwards are made below (_engine_proxy)
        clear_compiled_cache = typed(Engine.clear_compiled_cache)

        def update_execution_options(self, **opt: Any) -> None: ...

        get_execution_options = typed(Engine.get_execution_options)
        url: URL
        pool: sa_pool.Pool
        dialect: Dialect
        engine: Engine
        name: str
        driver: str
        echo: Any

    def __repr__(self) -> str:
        return f"AsyncEngine({self.sync_engine.url!r})"


# --------------------------------------------------------------------------
# AsyncConnection


class AsyncConnection(
    ProxyComparable[Connection], StartableContext["AsyncConnection"], AsyncConnectable
):
    """An async proxy for a :class:`~sqlalchemy.engine.Connection`."""

    __slots__ = ("_finalizer", "_worker", "engine", "sync_connection", "sync_engine")

    def __init__(
        self, async_engine: AsyncEngine, sync_connection: Optional[Connection] = None
    ) -> None:
        #: The :class:`AsyncEngine` this connection belongs to.
        self.engine = async_engine
        #: The sync :class:`~sqlalchemy.engine.Engine` of :attr:`engine`.
        self.sync_engine = async_engine.sync_engine
        #: The proxied sync :class:`~sqlalchemy.engine.Connection`, None until the
        #: connection is started; use it as an event target.
        self.sync_connection = self._assign_proxied(sync_connection)
        #: The worker this connection leased at start() and gives back at
        #: close().  None for a proxy of somebody else's connection (a
        #: session's): its calls go to the worker that owns it.
        self._worker: Optional[Worker] = None
        #: Gives the worker back if this object is dropped without close().
        self._finalizer: Optional[weakref.finalize[Any, Any]] = None

    @classmethod
    def _regenerate_proxy_for_target(cls, target: Connection, **kw: Any) -> AsyncConnection:
        return AsyncConnection(AsyncEngine._retrieve_proxy_for_target(target.engine), target)

    async def start(self, is_ctxmanager: bool = False) -> AsyncConnection:
        """Check out a connection on a leased worker thread."""
        if self.sync_connection is not None:
            raise async_exc.AsyncContextAlreadyStarted("connection is already started")
        worker = await lease_worker(self.sync_engine)
        try:
            sync_connection = await worker.call_or_abandon(
                _close_quietly, _guard.connect_on_worker, self.sync_engine, worker
            )
        except BaseException:
            worker.pool.release(worker)
            raise
        self._worker = worker
        finalizer = self._finalizer = weakref.finalize(self, _abandoned, worker, sync_connection)
        finalizer.atexit = False
        _cancel.arm(worker, sync_connection)
        self.sync_connection = self._assign_proxied(sync_connection)
        return self

    def _current_worker(self) -> Optional[Worker]:
        """The worker to run on: ours, or the owner of the proxied connection."""
        return self._worker or _guard.owner_of(self._proxied)

    async def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        worker = self._worker
        if worker is None:
            conn = self._proxied
            if conn.closed:
                # Closed for good: nothing can reach the database.  SQLAlchemy
                # raises ResourceClosedError (or, for rollback(), does nothing).
                return fn(*args, **kwargs)
            worker = _guard.owner_of(conn)
            if worker is None:
                # A proxy for a connection no worker owns (opened by sync
                # code elsewhere): lease a worker now, keep it until close().
                worker = self._worker = await lease_worker(self.sync_engine)
                _guard.claim(conn, worker)
                _cancel.arm(worker, conn)
        return await worker.call(fn, *args, **kwargs)

    async def _call_shielded(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run to its end even if cancelled (within the bound): transaction ends, close."""
        worker = self._worker
        if worker is None:
            conn = self._proxied
            worker = None if conn.closed else _guard.owner_of(conn)
            if worker is None:
                return await self._call(fn, *args)
        return await worker.call_shielded(fn, *args)

    @property
    def connection(self) -> NoReturn:
        """Not available; use :meth:`get_raw_connection`."""
        raise exc.InvalidRequestError(
            "AsyncConnection.connection accessor is not implemented as the "
            "attribute may need to reconnect on an invalidated connection.  "
            "Use the get_raw_connection() method."
        )

    async def get_raw_connection(self) -> PoolProxiedConnection:
        """The pool's wrapper of the DBAPI connection in use (a synchronous object)."""
        return await self._call(getattr, self._proxied, "connection")

    def _check_started(self) -> None:
        if self.sync_connection is None:
            self._raise_for_not_started()

    @property
    def _proxied(self) -> Connection:
        if self.sync_connection is None:
            self._raise_for_not_started()
        return self.sync_connection

    def begin(self) -> AsyncTransaction:
        """Begin a transaction; await it or use ``async with``."""
        self._check_started()
        return AsyncTransaction(self)

    def begin_nested(self) -> AsyncTransaction:
        """Begin a nested transaction (SAVEPOINT); await it or ``async with``."""
        self._check_started()
        return AsyncTransaction(self, nested=True)

    async def invalidate(self, exception: Optional[BaseException] = None) -> None:
        """Discard the DBAPI connection; the next use opens a new one.

        Inside a transaction, call :meth:`rollback` before using the connection again.
        """
        await self._call(self._proxied.invalidate, exception=exception)

    async def get_isolation_level(self) -> IsolationLevel:
        """The isolation level in effect on this connection, as the database reports it."""
        return await self._call(self._proxied.get_isolation_level)

    def get_transaction(self) -> Optional[AsyncTransaction]:
        """The current root transaction, if any."""
        trans = self._proxied.get_transaction()
        if trans is None:
            return None
        return AsyncTransaction._retrieve_proxy_for_target(trans)  # type: ignore[no-any-return]

    def get_nested_transaction(self) -> Optional[AsyncTransaction]:
        """The current nested transaction, if any."""
        trans = self._proxied.get_nested_transaction()
        if trans is None:
            return None
        return AsyncTransaction._retrieve_proxy_for_target(trans)  # type: ignore[no-any-return]

    async def execution_options(self, **opt: Any) -> AsyncConnection:
        """Set execution options on this connection (in place); returns self."""
        conn = self._proxied
        c2 = await self._call(conn.execution_options, **opt)
        assert c2 is conn
        return self

    async def commit(self) -> None:
        """Commit the current transaction."""
        await self._call(self._proxied.commit)

    async def rollback(self) -> None:
        """Roll back the current transaction."""
        await self._call(self._proxied.rollback)

    async def close(self) -> None:
        """Close the connection (rolling back any transaction) and free its worker."""
        sync_connection = self.sync_connection
        worker = self._worker
        if worker is None:
            # Not ours to give back (a session's connection), or never started.
            if sync_connection is not None and not sync_connection.closed:
                await self._call_shielded(sync_connection.close)
            return
        try:
            if sync_connection is not None:
                if worker.broken:
                    # Still stuck in a statement that ignored its interrupt:
                    # queue the close behind it rather than wait for it.
                    worker.submit(_close_quietly, sync_connection)
                elif worker.in_demand():
                    # Others wait for a connection: the next lessee's calls
                    # queue behind this close, so nobody waits for it here.
                    _guard.disown(sync_connection)
                    worker.submit_quietly("closing an AsyncConnection", sync_connection.close)
                else:
                    await worker.call_shielded(sync_connection.close)
                    _guard.disown(sync_connection)
        finally:
            self._release_worker()

    def _release_worker(self) -> None:
        worker, self._worker = self._worker, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if worker is not None:
            worker.pool.release(worker)

    async def aclose(self) -> None:
        """A synonym for :meth:`close`, for ``contextlib.aclosing``."""
        await self.close()

    async def exec_driver_sql(
        self,
        statement: str,
        parameters: Optional[_CoreAnyExecuteParams] = None,
        execution_options: Optional[CoreExecuteOptionsParameter] = None,
    ) -> Result[Any]:
        """Execute a driver-level SQL string; the result is fully fetched."""
        return await self._call(
            _buffered_call,
            self._proxied.exec_driver_sql,
            statement,
            parameters,
            execution_options,
        )

    @asyncstartablecontext
    async def stream(
        self,
        statement: Executable,
        parameters: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: Optional[CoreExecuteOptionsParameter] = None,
    ) -> AsyncGenerator[AsyncResult[Any], None]:
        """Execute and return an :class:`AsyncResult` that fetches in batches.

        Uses a server-side cursor where the dialect has one.  Await it, or use
        ``async with`` to have the result closed at the end of the block.
        """
        dialect = self.sync_engine.dialect
        if not dialect.supports_server_side_cursors and dialect.name != "sqlite":
            # (SQLite's cursors step through the rows as they are fetched:
            # batches pulled through the worker stream there too)
            raise exc.InvalidRequestError(
                "Can't use `stream` or `stream_scalars` with the current dialect since it "
                "does not support server side cursors.  Use execute(), which fetches the "
                "whole result on the worker."
            )
        result = await self._call(
            self._proxied.execute,
            statement,
            parameters,
            execution_options=sa_util.EMPTY_DICT.merge_with(execution_options, _STREAM_OPTIONS),
        )
        ar: AsyncResult[Any] = AsyncResult(result, self._require_worker())
        try:
            yield ar
        except GeneratorExit:
            pass
        else:
            await ar._close_shielded()

    def _require_worker(self) -> Worker:
        worker = self._current_worker()
        assert worker is not None
        return worker

    async def execute(
        self,
        statement: Executable,
        parameters: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: Optional[CoreExecuteOptionsParameter] = None,
    ) -> Result[Any]:
        """Execute a statement; the rows are fetched before this returns."""
        return await self._call(
            _buffered_call, self._proxied.execute, statement, parameters, execution_options
        )

    async def scalar(
        self,
        statement: Executable,
        parameters: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: Optional[CoreExecuteOptionsParameter] = None,
    ) -> Any:
        """Execute and return the first column of the first row."""
        result = await self.execute(statement, parameters, execution_options=execution_options)
        return result.scalar()

    async def scalars(
        self,
        statement: Executable,
        parameters: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: Optional[CoreExecuteOptionsParameter] = None,
    ) -> Any:
        """Execute and return a :class:`~sqlalchemy.engine.ScalarResult`."""
        result = await self.execute(statement, parameters, execution_options=execution_options)
        return result.scalars()

    @asyncstartablecontext
    async def stream_scalars(
        self,
        statement: Executable,
        parameters: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: Optional[CoreExecuteOptionsParameter] = None,
    ) -> AsyncGenerator[AsyncScalarResult[Any], None]:
        """Like :meth:`stream`, yielding an :class:`AsyncScalarResult`."""
        result: AsyncResult[Any]
        async with self.stream(
            statement, parameters, execution_options=execution_options
        ) as result:
            yield result.scalars()

    async def run_sync(self, fn: Callable[..., _T], *arg: Any, **kw: Any) -> _T:
        """Run ``fn(sync_connection, *arg, **kw)`` on this connection's worker.

        Inside ``fn`` everything is ordinary synchronous SQLAlchemy.
        """
        return await self._call(fn, self._proxied, *arg, **kw)

    def __await__(self) -> Generator[Any, None, AsyncConnection]:
        return self.start().__await__()

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        await self.close()

    if TYPE_CHECKING:  # for type checkers; the forwards are made below (_engine_proxy)
        in_transaction = typed(Connection.in_transaction)
        in_nested_transaction = typed(Connection.in_nested_transaction)
        info: Dict[str, Any]
        closed: bool
        invalidated: bool
        dialect: Dialect
        default_isolation_level: Optional[IsolationLevel]


forward(
    AsyncEngine,
    Engine,
    attrgetter("sync_engine"),
    methods=ENGINE_METHODS,
    attributes=ENGINE_ATTRIBUTES,
)
forward(
    AsyncConnection,
    Connection,
    attrgetter("_proxied"),
    methods=CONNECTION_METHODS,
    attributes=CONNECTION_ATTRIBUTES,
)
AsyncEngine._connection_cls = AsyncConnection


def _buffered_call(
    method: Callable[..., Result[Any]],
    statement: Any,
    parameters: Any,
    execution_options: Any,
) -> Result[Any]:
    """Run an execute method and fetch all of its rows (on the worker)."""
    if execution_options:
        result = method(statement, parameters, execution_options=execution_options)
    else:
        result = method(statement, parameters)
    return buffer_result(result, "AsyncConnection", method.__name__)


def _close_quietly(connection: Connection) -> None:
    connection.close()


async def _shielded_within(bound: float, wait: Callable[[], Awaitable[Any]]) -> None:
    """``await wait()`` even if the caller is cancelled, for ``bound`` seconds
    at most (ending idle workers: their stop is sent at once; only waiting
    for their threads is bounded)."""
    with anyio.CancelScope(shield=True) as scope:
        scope.deadline = anyio.current_time() + bound
        await wait()


def _abandoned(worker: Worker, connection: Connection) -> None:
    """Finalizer of an AsyncConnection dropped unclosed: close it on its worker
    (after whatever is queued there) and give the worker back."""
    give_back_later(worker, _close_quietly, connection)


# --------------------------------------------------------------------------
# AsyncTransaction


class AsyncTransaction(ProxyComparable[Transaction], StartableContext["AsyncTransaction"]):
    """An async proxy for a :class:`~sqlalchemy.engine.Transaction`."""

    __slots__ = ("connection", "nested", "sync_transaction")

    def __init__(self, connection: AsyncConnection, nested: bool = False) -> None:
        #: The :class:`AsyncConnection` this transaction runs on.
        self.connection = connection
        #: The proxied sync :class:`~sqlalchemy.engine.Transaction`, None until started.
        self.sync_transaction: Optional[Transaction] = None
        #: True for a SAVEPOINT (:meth:`AsyncConnection.begin_nested`).
        self.nested = nested

    @classmethod
    def _regenerate_proxy_for_target(cls, target: Transaction, **kw: Any) -> AsyncTransaction:
        sync_connection = target.connection
        sync_transaction = target
        nested = sync_connection.get_nested_transaction() is target
        async_connection = AsyncConnection._retrieve_proxy_for_target(sync_connection)
        obj = cls.__new__(cls)
        obj.connection = async_connection
        obj.sync_transaction = obj._assign_proxied(sync_transaction)
        obj.nested = nested
        return obj

    @property
    def _proxied(self) -> Transaction:
        if self.sync_transaction is None:
            self._raise_for_not_started()
        return self.sync_transaction

    @property
    def is_valid(self) -> bool:
        """True while the transaction is active and its connection not invalidated."""
        return self._proxied.is_valid

    @property
    def is_active(self) -> bool:
        """True until the transaction ends or an error deactivates it."""
        return self._proxied.is_active

    async def close(self) -> None:
        """Close the transaction, rolling it back if active (a nested one to its savepoint)."""
        await self.connection._call(self._proxied.close)

    async def rollback(self) -> None:
        """Roll back this transaction."""
        await self.connection._call(self._proxied.rollback)

    async def commit(self) -> None:
        """Commit this transaction."""
        await self.connection._call(self._proxied.commit)

    async def start(self, is_ctxmanager: bool = False) -> AsyncTransaction:
        """Begin the transaction outside of an ``async with`` block."""
        conn = self.connection._proxied
        begin = conn.begin_nested if self.nested else conn.begin
        self.sync_transaction = self._assign_proxied(await self.connection._call(begin))
        if is_ctxmanager:
            self.sync_transaction.__enter__()
        return self

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        await self.connection._call_shielded(self._proxied.__exit__, type_, value, traceback)


@inspection._inspects(AsyncEngine)
def _no_inspection_of_async_engine(subject: AsyncEngine) -> NoReturn:
    raise exc.NoInspectionAvailable(
        "Inspection on an AsyncEngine is currently not supported.  Inspect inside "
        "conn.run_sync(), which passes a synchronous connection: "
        "await conn.run_sync(lambda c: inspect(c).get_table_names())",
        code="xd3s",
    )


@inspection._inspects(AsyncConnection)
def _no_inspection_of_async_connection(subject: AsyncConnection) -> NoReturn:
    raise exc.NoInspectionAvailable(
        "Inspection on an AsyncConnection is currently not supported.  Inspect inside "
        "conn.run_sync(), which passes a synchronous connection: "
        "await conn.run_sync(lambda c: inspect(c).get_table_names())",
        code="xd3s",
    )
