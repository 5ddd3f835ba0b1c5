"""AsyncEngine, AsyncConnection and AsyncTransaction on worker threads.

Every sync call of a connection runs on the one worker thread the connection
leased when it started, so the DBAPI connection only ever meets that thread.
Results of ``execute()`` are fully fetched there before they are returned.
"""

from __future__ import annotations

import contextlib
import weakref
from operator import attrgetter
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Callable,
    Dict,
    Generator,
    NoReturn,
    Optional,
    TypeVar,
    Union,
)

from sqlalchemy import exc, inspection
from sqlalchemy import pool as sa_pool
from sqlalchemy.engine import Connection, Engine, Transaction
from sqlalchemy.engine import create_engine as _create_engine
from sqlalchemy.engine import create_pool_from_url as _create_pool_from_url
from sqlalchemy.engine.url import URL, make_url

from . import _async_drivers, _cancel, _chunk, _guard
from . import exc as async_exc
from ._base import (
    ProxyComparable,
    StartableContext,
)
from ._bridge import (
    Worker,
    give_back_later,
)
from ._connection_statements import ConnectionStatements
from ._engine_options import EngineOptions, sqlite_defaults, worker_pool_default
from ._engine_proxy import (
    CONNECTION_ATTRIBUTES,
    CONNECTION_METHODS,
    ENGINE_ATTRIBUTES,
    ENGINE_METHODS,
)
from ._engine_workers import dispose_workers, lease_worker, root_engine, spare_workers, workers_for
from ._forwarding import forward, typed
from ._urls import to_sync_url

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import (
        Dialect,
        IsolationLevel,
    )
    from sqlalchemy.pool import PoolProxiedConnection

_T = TypeVar("_T")


# --------------------------------------------------------------------------
# engine construction


def create_async_engine(url: Union[str, URL], **kw: Any) -> AsyncEngine:
    """Create an :class:`AsyncEngine`.

    Takes the arguments of :func:`sqlalchemy.create_engine`.  On asyncio, a
    URL naming asyncpg, psycopg_async, aiomysql or asyncmy runs that driver
    on the event loop where it is installed; other async drivers
    (``+aiosqlite``), and all of them under trio, are mapped to their
    synchronous counterpart.

    Options of this package (each engine keeps its own; a value out of range
    raises :class:`sqlalchemy.exc.ArgumentError`; the environment variables
    named give the process-wide defaults, in microseconds; docs/bridge.md,
    "Settings"):

    - ``async_driver=``: ``"native"`` requires the URL's async driver,
      ``"sync"`` always maps it to its synchronous counterpart
      (docs/async-drivers.md).
    - ``cancel_timeout=``: seconds (default 10, SQLALCHEMY_ANYIO_CANCEL_TIMEOUT),
      the bound on a cancelled call (docs/cancellation.md).
    - ``thread_placement=``: whether the event loop's thread and this
      engine's workers share one CPU under concurrent load: ``"auto"`` (the
      default, SQLALCHEMY_ANYIO_THREAD_PLACEMENT) for databases on a server,
      ``"on"`` for SQLite too, ``"off"``.
    - ``overflow_linger=``: seconds (0 to 3600, default 1) an overflow
      connection no task needs stays open before the pool closes it; 0
      closes it at once, as QueuePool does.
    - ``loop_spin=``: seconds (0 to 1, default 0.0005,
      SQLALCHEMY_ANYIO_LOOP_SPIN_US) the event loop may wait without the GIL
      for a call it just handed over, when nothing else is ready; 0 never.
      The pure-Python bridge never spins.
    - ``worker_spin=``: seconds (0 to 1, default 0.0001,
      SQLALCHEMY_ANYIO_WORKER_SPIN_US) a worker waits without the GIL for its
      next call before it parks; 0 parks at once.
    - ``active_workers=``: how many of this engine's workers run calls at
      once (0 to 1000000; 0: no limit), through an admission gate of the
      engine's own.  Default: SQLite engines 1
      (SQLALCHEMY_ANYIO_SQLITE_ACTIVE_WORKERS), others the process-wide gate
      (SQLALCHEMY_ANYIO_ACTIVE_WORKERS, default 0: no limit).
    - ``active_expire=``: seconds (above 0, at most 1, default 0.002,
      SQLALCHEMY_ANYIO_ACTIVE_EXPIRE_US) after which a running call gives its
      place up; needs a gate of the engine's own.
    """
    if kw.get("server_side_cursors", False):
        raise async_exc.AsyncMethodRequired(
            "Can't set server_side_cursors for async engine globally; "
            "use the connection.stream() method for an async "
            "streaming result set"
        )
    kw.pop("_is_async", None)
    options = EngineOptions(kw)
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
        worker_pool_default(native, kw)
        sync_engine = _async_drivers.make_engine(given, native, _create_engine, kw, async_creator)
    else:
        sync_url = to_sync_url(given)
        sqlite_defaults(sync_url, kw)
        worker_pool_default(sync_url, kw)
        sync_engine = _create_engine(sync_url, **kw)
    engine = AsyncEngine(sync_engine)
    options.apply(workers_for(sync_engine), sync_engine)
    return engine


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
        worker_pool_default(native, kwargs)
        return _create_pool_from_url(native, **kwargs)
    sync_url = to_sync_url(given)
    sqlite_defaults(sync_url, kwargs)
    worker_pool_default(sync_url, kwargs)
    return _create_pool_from_url(sync_url, **kwargs)


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
        _cancel.install_engine(root_engine(sync_engine))

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
        await dispose_workers(self.sync_engine, close)

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
    ConnectionStatements,
    ProxyComparable[Connection],
    StartableContext["AsyncConnection"],
    AsyncConnectable,
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

    async def _call_shielded(self, fn: Callable[..., Any], *args: Any, ending: bool = True) -> None:
        """Run to its end even if cancelled (within the bound): transaction ends,
        close; an ``ending`` one is queued behind a written-off call (``call_ending``)."""
        worker = self._worker
        if worker is None:
            conn = self._proxied
            worker = None if conn.closed else _guard.owner_of(conn)
            if worker is None:
                await self._call(fn, *args)
                return
        if ending:
            await worker.call_ending(fn, *args)
        else:
            await worker.call_shielded(fn, *args)

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


def _close_quietly(connection: Connection) -> None:
    connection.close()


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
        await self.connection._call_shielded(
            self._proxied.__exit__, type_, value, traceback, ending=type_ is not None
        )


def _no_inspection(subject: AsyncConnectable) -> NoReturn:
    raise exc.NoInspectionAvailable(
        f"Inspection on an {type(subject).__name__} is currently not supported.  Inspect "
        "inside conn.run_sync(), which passes a synchronous connection: "
        "await conn.run_sync(lambda c: inspect(c).get_table_names())",
        code="xd3s",
    )


inspection._inspects(AsyncEngine)(_no_inspection)
inspection._inspects(AsyncConnection)(_no_inspection)
