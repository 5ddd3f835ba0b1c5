"""AsyncSession and friends: the ORM Session on one leased worker thread.

An :class:`AsyncSession` holds a worker while its transaction holds a
connection: from the first statement until commit, rollback or close.  Every
call of the sync :class:`~sqlalchemy.orm.Session` and every connection it
opens runs on that thread; calls that need no connection lease a worker for
their duration only.  Lazy loads attempted anywhere else are refused by the
guard (see ``_guard.guard_session``).
"""

from __future__ import annotations

import functools
import warnings
import weakref
from operator import attrgetter
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Dict,
    FrozenSet,
    Generic,
    Iterable,
    Mapping,
    NoReturn,
    Optional,
    Sequence,
    Type,
    TypeVar,
    Union,
    overload,
)

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import util as sa_util
from sqlalchemy.engine import Connection, Engine, Result, ScalarResult
from sqlalchemy.orm import Session, SessionTransaction, object_session
from sqlalchemy.orm import state as _instance_state

from . import _cancel, _chunk, _guard
from . import exc as async_exc
from ._base import ReversibleProxy, StartableContext
from ._bridge import Worker, _impl, give_back_later
from ._buffer import buffer_result
from ._forwarding import forward, typed
from ._session_proxy import SESSION_ATTRIBUTES, SESSION_CLASS_METHODS, SESSION_METHODS
from .engine import AsyncConnection, AsyncEngine, lease_worker, spare_workers
from .result import AsyncResult, AsyncScalarResult

#: ``get()``'s default as in the official extension: None from SQLAlchemy 2.1
#: (an explicit value overrides the ``populate_existing`` execution option),
#: False before.
POPULATE_EXISTING_DEFAULT: Optional[bool] = (
    None if tuple(int(p) for p in sa.__version__.split(".")[:2]) >= (2, 1) else False
)

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import CoreExecuteOptionsParameter, _CoreAnyExecuteParams
    from sqlalchemy.orm._typing import OrmExecuteOptionsParameter
    from sqlalchemy.orm.identity import IdentityMap
    from sqlalchemy.orm.interfaces import ORMOption
    from sqlalchemy.orm.session import _BindArguments, _PKIdentityArgument, _SessionBindKey
    from sqlalchemy.sql.base import Executable
    from sqlalchemy.sql.elements import ClauseElement
    from sqlalchemy.sql.selectable import ForUpdateParameter, TableClause
    from sqlalchemy.util import IdentitySet

_T = TypeVar("_T")
_O = TypeVar("_O", bound=object)

_AsyncSessionBind = Union[AsyncEngine, AsyncConnection]

_EXECUTE_OPTIONS = sa_util.immutabledict({"prebuffer_rows": True})
_STREAM_OPTIONS = sa_util.immutabledict({"stream_results": True})


def _to_sync_bind(bind: Any) -> Union[Engine, Connection]:
    """The sync Engine / Connection behind an async bind."""
    if isinstance(bind, AsyncEngine):
        return bind.sync_engine
    if isinstance(bind, AsyncConnection):
        return bind._proxied
    raise sa_exc.ArgumentError(
        f"AsyncEngine expected, got {bind!r}: an AsyncSession is bound to an AsyncEngine "
        "or AsyncConnection"
    )


class _Lease:
    """The worker a session runs on; given back exactly once (also on GC)."""

    __slots__ = ("__weakref__", "exclusive", "owned", "worker")

    def __init__(self, worker: Worker, owned: bool) -> None:
        self.worker = worker
        #: False when the session runs on the worker of a connection it is
        #: bound to: that worker is the connection's to give back.
        self.owned = owned
        #: Only an exclusive worker may carry this session's interrupter.
        self.exclusive = owned and not getattr(worker.pool, "shared", False)

    def release(self) -> None:
        if self.owned:
            self.owned = False
            self.worker.pool.release(self.worker)


def _collected(lease: _Lease) -> None:
    """Finalizer of a session dropped holding its worker: give it back from
    the worker's own thread (see ``give_back_later``)."""
    if lease.owned:
        lease.owned = False
        give_back_later(lease.worker)


def _holds_connection(sync_session: Session) -> bool:
    """Whether the session's transaction has a connection checked out."""
    trans = sync_session._transaction
    while trans is not None:
        if trans._connections:
            return True
        trans = trans._parent
    return False


def _exit_and_close(
    sync_transaction: SessionTransaction, sync_session: Session, type_: Any, value: Any, tb: Any
) -> None:
    """End ``async with maker.begin()`` in one hop: commit (or roll back), then close."""
    try:
        sync_transaction.__exit__(type_, value, tb)
    finally:
        sync_session.close()


# --------------------------------------------------------------------------
# AsyncAttrs


class AsyncAttrs:
    """Mixin for mapped classes: ``await obj.awaitable_attrs.name`` loads on the worker."""

    class _AsyncAttrGetitem:
        __slots__ = ("_instance",)

        def __init__(self, _instance: Any) -> None:
            self._instance = _instance

        def __getattr__(self, name: str) -> Awaitable[Any]:
            return _load_attribute(self._instance, name)

    @property
    def awaitable_attrs(self) -> AsyncAttrs._AsyncAttrGetitem:
        """An accessor whose attributes are awaitables that load them."""
        return AsyncAttrs._AsyncAttrGetitem(self)


async def _load_attribute(instance: Any, name: str) -> Any:
    """getattr() on the worker of the instance's session (inline when loaded)."""
    if name in getattr(instance, "__dict__", ()):  # loaded (or plain): no I/O possible
        return getattr(instance, name)
    asession = async_object_session(instance)
    if asession is None:
        return getattr(instance, name)
    return await asession._call(getattr, instance, name)


# --------------------------------------------------------------------------
# AsyncSession


class AsyncSession(ReversibleProxy[Session]):
    """An async proxy for a :class:`~sqlalchemy.orm.Session` that runs it on worker threads.

    While its transaction holds a connection, all of the session's work runs on
    that connection's worker thread.  A lazy load attempted on the event loop
    raises :class:`WorkerThreadRequired`.
    """

    _is_asyncio = True

    #: The Session class (or callable) making the proxied Session.
    sync_session_class: Type[Session] = Session

    #: The proxied sync Session; use it as an event target.
    sync_session: Session

    def __init__(
        self,
        bind: Optional[_AsyncSessionBind] = None,
        *,
        binds: Optional[Dict[_SessionBindKey, _AsyncSessionBind]] = None,
        sync_session_class: Optional[Type[Session]] = None,
        **kw: Any,
    ) -> None:
        self._async_bind = bind
        self._async_binds: Dict[Any, _AsyncSessionBind] = dict(binds) if binds else {}
        sync_bind = _to_sync_bind(bind) if bind is not None else None
        sync_binds = {key: _to_sync_bind(b) for key, b in binds.items()} if binds else None
        if sync_session_class:
            self.sync_session_class = sync_session_class
        self._lease: Optional[_Lease] = None
        #: A close queued on the last worker and not awaited (see _end): the
        #: next lease waits for it, so the sync Session is never on two threads.
        self._pending_end: Any = None
        self._finalizer: Optional[weakref.finalize[Any, Any]] = None
        guarded = _guard.guarded_session_class(self.sync_session_class)
        self.sync_session = self._proxied = self._assign_proxied(
            (guarded or self.sync_session_class)(bind=sync_bind, binds=sync_binds, **kw)
        )
        if guarded is None:  # a factory, not a Session subclass: guard with events
            _guard.guard_session(self.sync_session)

    # -- the worker ---------------------------------------------------------
    #
    # The session holds a worker only while its transaction holds a
    # connection: from the first statement until commit, rollback or close.
    # Calls that need no connection lease one for their duration only.

    @property
    def _worker(self) -> Optional[Worker]:
        lease = self._lease
        return lease.worker if lease is not None else None

    def _lease_bind(self) -> Any:
        """The one Engine or Connection this session's SQL goes to, if known."""
        bind = self.sync_session.bind
        if bind is not None or not self._async_binds:
            return bind
        binds = {_to_sync_bind(b) for b in self._async_binds.values()}
        for candidate in binds:
            if isinstance(candidate, Connection):
                return candidate
        roots = {candidate.engine for candidate in binds}
        return roots.pop() if len(roots) == 1 else None

    async def _after_pending_end(self) -> None:
        """Wait for a close queued on the last worker and not awaited (see _end)."""
        pending = self._pending_end
        if pending is not None:
            if not pending.done:
                await _impl.wait(pending)
            self._pending_end = None

    async def _acquire(self) -> _Lease:
        """Lease a worker: the bind engine's (with its connection), or a spare one."""
        await self._after_pending_end()
        sync = self.sync_session
        bind = self._lease_bind()
        if isinstance(bind, Connection):
            # Joined to an external connection: run on the worker that owns it.
            proxy = AsyncConnection._retrieve_proxy_for_target(bind)
            owner = _guard.owner_of(bind)
            if owner is None:
                await proxy._call(int)  # make the connection lease its worker
                owner = proxy._current_worker()
            assert owner is not None
            worker, owned = owner, False
        elif isinstance(bind, Engine):
            worker, owned = await lease_worker(bind), True
        else:
            worker, owned = await spare_workers().lease(), True
        if self._lease is not None:  # another task of ours leased meanwhile
            if owned:
                worker.pool.release(worker)
            return self._lease
        lease = self._lease = _Lease(worker, owned)
        if lease.exclusive:
            _cancel.arm_session(worker, sync)
        if owned:
            finalizer = self._finalizer = weakref.finalize(self, _collected, lease)
            finalizer.atexit = False
        _guard.set_session_owner(sync, worker)
        return lease

    def _release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        _guard.set_session_owner(self.sync_session, None)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if lease.exclusive:
            lease.worker.disarm()
        lease.release()

    async def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        lease = self._lease or await self._acquire()
        try:
            return await lease.worker.call(fn, *args, **kwargs)
        finally:
            if lease.owned and self._lease is lease and not _holds_connection(self.sync_session):
                self._release()

    async def _call_shielded(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Like :meth:`_call`; a cancellation lets ``fn`` run to its end (within the bound)."""
        lease = self._lease or await self._acquire()
        try:
            return await lease.worker.call_shielded(fn, *args, **kwargs)
        finally:
            if lease.owned and self._lease is lease and not _holds_connection(self.sync_session):
                self._release()

    async def _end(self, fn: Callable[[], Any], on_worker: bool = False) -> None:
        """Run close()/reset()/invalidate() to completion, then free the worker.

        With no worker held there is no connection to touch, so ``fn`` runs
        right here unless ``on_worker`` says it may need one (a commit).
        When others wait for a connection, ``fn`` is queued on the worker and
        the worker handed on at once: the next lessee's calls run after it.
        """
        await self._after_pending_end()
        lease = self._lease
        if lease is not None and not on_worker and lease.owned and lease.worker.in_demand():
            self._pending_end = lease.worker.submit_quietly("closing an AsyncSession", fn)
            self._release()
            return
        try:
            if lease is not None or on_worker:
                await self._call_shielded(fn)
            else:
                fn()
        finally:
            self._release()

    # -- binds ----------------------------------------------------------------

    @property
    def bind(self) -> Optional[_AsyncSessionBind]:
        """The AsyncEngine or AsyncConnection this session is bound to, if any."""
        sync_bind = self.sync_session.bind
        if sync_bind is None:
            return None
        if self._async_bind is not None and _to_sync_bind(self._async_bind) is sync_bind:
            return self._async_bind
        return self._translate(sync_bind)

    @bind.setter
    def bind(self, bind: Optional[_AsyncSessionBind]) -> None:
        self.sync_session.bind = _to_sync_bind(bind) if bind is not None else None
        self._async_bind = bind

    def bind_mapper(self, mapper: Any, bind: _AsyncSessionBind) -> None:
        """Associate a mapper or class with an async bind."""
        self.sync_session.bind_mapper(mapper, _to_sync_bind(bind))
        self._async_binds[mapper] = bind

    def bind_table(self, table: TableClause, bind: _AsyncSessionBind) -> None:
        """Associate a Table with an async bind."""
        self.sync_session.bind_table(table, _to_sync_bind(bind))
        self._async_binds[table] = bind

    @property
    def binds(self) -> Mapping[Any, _AsyncSessionBind]:
        """The per-mapper / per-table binds, as async objects."""
        sync = self.sync_session
        sync_binds: Mapping[Any, Any] = (
            sync.binds if hasattr(sync, "binds") else sync._Session__binds  # type: ignore[attr-defined, unused-ignore]
        )
        return sa_util.immutabledict(
            {key: self._translate(bind) for key, bind in sync_binds.items()}
        )

    def _translate(self, sync_bind: Any) -> _AsyncSessionBind:
        """The async bind ``sync_bind`` was established from, among this
        session's own; any other is refused rather than wrapped anew."""
        for candidate in (self._async_bind, *self._async_binds.values()):
            if candidate is not None and _to_sync_bind(candidate) is sync_bind:
                return candidate
        raise async_exc.AsyncBindNotFound(
            f"Can't translate bind {sync_bind!r}; it is not among the binds "
            f"established for this {type(self).__name__}.  Establish binds on the "
            f"{type(self).__name__} (bind=, binds=, bind_mapper(), bind_table()), "
            "not directly on its sync_session."
        )

    @classmethod
    def _no_async_engine_events(cls) -> NoReturn:
        raise NotImplementedError(
            "asynchronous events are not implemented at this time.  Apply "
            "synchronous listeners to the AsyncSession.sync_session."
        )

    # -- I/O ------------------------------------------------------------------

    async def refresh(
        self,
        instance: object,
        attribute_names: Optional[Iterable[str]] = None,
        with_for_update: ForUpdateParameter = None,
    ) -> None:
        """Expire and reload the attributes of ``instance``."""
        await self._call(
            self.sync_session.refresh,
            instance,
            attribute_names=attribute_names,
            with_for_update=with_for_update,
        )

    async def run_sync(self, fn: Callable[..., _T], *arg: Any, **kw: Any) -> _T:
        """Run ``fn(sync_session, *arg, **kw)`` on the session's worker.

        Inside ``fn`` everything is plain synchronous SQLAlchemy, lazy loads included.
        """
        return await self._call(fn, self.sync_session, *arg, **kw)

    async def execute(
        self,
        statement: Executable,
        params: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: OrmExecuteOptionsParameter = sa_util.EMPTY_DICT,
        bind_arguments: Optional[_BindArguments] = None,
        **kw: Any,
    ) -> Result[Any]:
        """Execute a statement; all rows (and ORM objects) are loaded before this returns."""
        options = (
            sa_util.immutabledict(execution_options).union(_EXECUTE_OPTIONS)
            if execution_options
            else _EXECUTE_OPTIONS
        )
        return await self._call(
            _execute_buffered, self.sync_session, statement, params, options, bind_arguments, kw
        )

    async def scalar(
        self,
        statement: Executable,
        params: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: OrmExecuteOptionsParameter = sa_util.EMPTY_DICT,
        bind_arguments: Optional[_BindArguments] = None,
        **kw: Any,
    ) -> Any:
        """Execute and return the first column of the first row."""
        options = (
            sa_util.immutabledict(execution_options).union(_EXECUTE_OPTIONS)
            if execution_options
            else _EXECUTE_OPTIONS
        )
        return await self._call(
            self.sync_session.scalar,
            statement,
            params=params,
            execution_options=options,
            bind_arguments=bind_arguments,
            **kw,
        )

    async def scalars(
        self,
        statement: Executable,
        params: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: OrmExecuteOptionsParameter = sa_util.EMPTY_DICT,
        bind_arguments: Optional[_BindArguments] = None,
        **kw: Any,
    ) -> ScalarResult[Any]:
        """Execute and return a buffered :class:`~sqlalchemy.engine.ScalarResult`."""
        result = await self.execute(
            statement,
            params=params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )
        return result.scalars()

    async def get(
        self,
        entity: Any,
        ident: _PKIdentityArgument,
        *,
        options: Optional[Sequence[ORMOption]] = None,
        populate_existing: Optional[bool] = POPULATE_EXISTING_DEFAULT,
        with_for_update: ForUpdateParameter = None,
        identity_token: Optional[Any] = None,
        execution_options: OrmExecuteOptionsParameter = sa_util.EMPTY_DICT,
    ) -> Any:
        """The instance of ``entity`` with this primary key, or None."""
        return await self._call(
            self.sync_session.get,
            entity,
            ident,
            options=options,
            populate_existing=populate_existing,
            with_for_update=with_for_update,
            identity_token=identity_token,
            execution_options=execution_options,
        )

    async def get_one(
        self,
        entity: Any,
        ident: _PKIdentityArgument,
        *,
        options: Optional[Sequence[ORMOption]] = None,
        populate_existing: Optional[bool] = POPULATE_EXISTING_DEFAULT,
        with_for_update: ForUpdateParameter = None,
        identity_token: Optional[Any] = None,
        execution_options: OrmExecuteOptionsParameter = sa_util.EMPTY_DICT,
    ) -> Any:
        """Like :meth:`get`, raising ``NoResultFound`` instead of returning None."""
        return await self._call(
            self.sync_session.get_one,
            entity,
            ident,
            options=options,
            populate_existing=populate_existing,
            with_for_update=with_for_update,
            identity_token=identity_token,
            execution_options=execution_options,
        )

    async def stream(
        self,
        statement: Executable,
        params: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: OrmExecuteOptionsParameter = sa_util.EMPTY_DICT,
        bind_arguments: Optional[_BindArguments] = None,
        **kw: Any,
    ) -> AsyncResult[Any]:
        """Execute with a server-side cursor; rows are fetched in batches on the worker."""
        options = (
            sa_util.immutabledict(execution_options).union(_STREAM_OPTIONS)
            if execution_options
            else _STREAM_OPTIONS
        )
        result = await self._call(
            self.sync_session.execute,
            statement,
            params=params,
            execution_options=options,
            bind_arguments=bind_arguments,
            **kw,
        )
        # The open cursor keeps the transaction's connection, and so the worker.
        worker = self._worker
        assert worker is not None
        return AsyncResult(result, worker)

    async def stream_scalars(
        self,
        statement: Executable,
        params: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: OrmExecuteOptionsParameter = sa_util.EMPTY_DICT,
        bind_arguments: Optional[_BindArguments] = None,
        **kw: Any,
    ) -> AsyncScalarResult[Any]:
        """Like :meth:`stream`, returning an :class:`AsyncScalarResult`."""
        result = await self.stream(
            statement,
            params=params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )
        return result.scalars()

    async def delete(self, instance: object) -> None:
        """Mark ``instance`` as deleted (cascades may load related objects)."""
        await self._call(self.sync_session.delete, instance)

    if hasattr(Session, "delete_all"):  # SQLAlchemy 2.1

        async def delete_all(self, instances: Iterable[object]) -> None:
            """Mark each of ``instances`` as deleted."""
            await self._call(self.sync_session.delete_all, instances)  # type: ignore[attr-defined, unused-ignore]

    async def merge(
        self, instance: _O, *, load: bool = True, options: Optional[Sequence[ORMOption]] = None
    ) -> _O:
        """Copy the state of ``instance`` into a persistent instance of this session."""
        return await self._call(self.sync_session.merge, instance, load=load, options=options)

    if hasattr(Session, "merge_all"):  # SQLAlchemy 2.1

        async def merge_all(
            self,
            instances: Iterable[_O],
            *,
            load: bool = True,
            options: Optional[Sequence[ORMOption]] = None,
        ) -> Sequence[_O]:
            """:meth:`merge` for each of ``instances``."""
            return await self._call(
                self.sync_session.merge_all,  # type: ignore[attr-defined, unused-ignore]
                instances,
                load=load,
                options=options,
            )

    async def flush(self, objects: Optional[Sequence[Any]] = None) -> None:
        """Flush pending changes to the database."""
        await self._call(self.sync_session.flush, objects=objects)

    def get_transaction(self) -> Optional[AsyncSessionTransaction]:
        """The current root transaction, if any."""
        trans = self.sync_session.get_transaction()
        if trans is None:
            return None
        return AsyncSessionTransaction._retrieve_proxy_for_target(  # type: ignore[no-any-return]
            trans, async_session=self
        )

    def get_nested_transaction(self) -> Optional[AsyncSessionTransaction]:
        """The current nested transaction (SAVEPOINT), if any."""
        trans = self.sync_session.get_nested_transaction()
        if trans is None:
            return None
        return AsyncSessionTransaction._retrieve_proxy_for_target(  # type: ignore[no-any-return]
            trans, async_session=self
        )

    def get_bind(
        self,
        mapper: Optional[Any] = None,
        clause: Optional[ClauseElement] = None,
        bind: Optional[Union[Engine, Connection]] = None,
        **kw: Any,
    ) -> Union[Engine, Connection]:
        """The sync bind the sync session would use (see ``Session.get_bind``)."""
        return self.sync_session.get_bind(mapper=mapper, clause=clause, bind=bind, **kw)

    def get_async_bind(
        self,
        mapper: Optional[Any] = None,
        clause: Optional[ClauseElement] = None,
        bind: Optional[_AsyncSessionBind] = None,
        **kw: Any,
    ) -> _AsyncSessionBind:
        """Like :meth:`get_bind`, returning the AsyncEngine / AsyncConnection."""
        sync_bind = _to_sync_bind(bind) if bind is not None else None
        resolved = self.get_bind(mapper=mapper, clause=clause, bind=sync_bind, **kw)
        if bind is not None and resolved is sync_bind:
            return bind
        return self._translate(resolved)

    async def connection(
        self,
        bind_arguments: Optional[_BindArguments] = None,
        execution_options: Optional[CoreExecuteOptionsParameter] = None,
        **kw: Any,
    ) -> AsyncConnection:
        """The AsyncConnection of this session's transaction, on the session's worker."""
        sync_connection = await self._call(
            self.sync_session.connection,
            bind_arguments=bind_arguments,
            execution_options=execution_options,
            **kw,
        )
        return _proxy_connection(self, sync_connection)

    def begin(self) -> AsyncSessionTransaction:
        """Begin a transaction; await it or use ``async with``."""
        return AsyncSessionTransaction(self)

    def begin_nested(self) -> AsyncSessionTransaction:
        """Begin a SAVEPOINT; await it or use ``async with``."""
        return AsyncSessionTransaction(self, nested=True)

    async def rollback(self) -> None:
        """Roll back the current transaction (runs to completion if cancelled)."""
        await self._call_shielded(self.sync_session.rollback)

    async def commit(self) -> None:
        """Flush and commit the current transaction."""
        await self._call(self.sync_session.commit)

    async def close(self) -> None:
        """Release connections and objects, then give the worker back (even if cancelled)."""
        await self._end(self.sync_session.close)

    async def reset(self) -> None:
        """Like :meth:`close`, without preventing a closed session's reuse (2.0.22+)."""
        await self._end(self.sync_session.reset)

    async def aclose(self) -> None:
        """A synonym for :meth:`close`, for ``contextlib.aclosing``."""
        await self.close()

    async def invalidate(self) -> None:
        """Close, invalidating the connections, then give the worker back."""
        await self._end(self.sync_session.invalidate)

    @classmethod
    async def close_all(cls) -> None:
        """Close all sessions (deprecated: use :func:`close_all_sessions`)."""
        warnings.warn(
            "The AsyncSession.close_all() method is deprecated and will be removed "
            "in a future release.  Please refer to close_all_sessions().",
            sa_exc.SADeprecationWarning,
            stacklevel=2,
        )
        await close_all_sessions()

    async def __aenter__(self: _AS) -> _AS:
        return self

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        await self.close()  # runs to completion even if cancelled

    def _maker_context_manager(self: _AS) -> _AsyncSessionContextManager[_AS]:
        return _AsyncSessionContextManager(self)

    if TYPE_CHECKING:  # for type checkers; the forwards are made below (_session_proxy)
        __contains__ = typed(Session.__contains__)
        __iter__ = typed(Session.__iter__)
        add = typed(Session.add)
        add_all = typed(Session.add_all)
        expire = typed(Session.expire)
        expire_all = typed(Session.expire_all)
        expunge = typed(Session.expunge)
        expunge_all = typed(Session.expunge_all)
        is_modified = typed(Session.is_modified)
        in_transaction = typed(Session.in_transaction)
        in_nested_transaction = typed(Session.in_nested_transaction)
        dirty: IdentitySet
        deleted: IdentitySet
        new: IdentitySet
        identity_map: IdentityMap
        is_active: bool
        autoflush: bool
        no_autoflush: Any
        info: Dict[Any, Any]
        execution_options: Any
        object_session = staticmethod(Session.object_session)
        identity_key = staticmethod(Session.identity_key)


forward(
    AsyncSession,
    Session,
    attrgetter("sync_session"),
    methods=SESSION_METHODS,
    attributes=SESSION_ATTRIBUTES,
    class_methods=SESSION_CLASS_METHODS,
)


def _execute_buffered(
    sync_session: Session,
    statement: Any,
    params: Any,
    execution_options: Any,
    bind_arguments: Any,
    kw: Dict[str, Any],
) -> Result[Any]:
    """Session.execute and fetch everything, on the worker (in chunks: see ``_chunk``)."""
    with _chunk.prefetching():
        result = sync_session.execute(
            statement,
            params=params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )
    return buffer_result(result, "AsyncSession")


_AS = TypeVar("_AS", bound=AsyncSession)


# --------------------------------------------------------------------------
# async_sessionmaker


class async_sessionmaker(Generic[_AS]):
    """A configurable :class:`AsyncSession` factory."""

    #: The class of the sessions this maker makes (``class_=``).
    class_: Type[_AS]

    @overload
    def __init__(
        self,
        bind: Optional[_AsyncSessionBind] = ...,
        *,
        class_: Type[_AS],
        autoflush: bool = ...,
        expire_on_commit: bool = ...,
        info: Optional[Dict[Any, Any]] = ...,
        **kw: Any,
    ) -> None: ...

    @overload
    def __init__(
        self: async_sessionmaker[AsyncSession],
        bind: Optional[_AsyncSessionBind] = ...,
        *,
        autoflush: bool = ...,
        expire_on_commit: bool = ...,
        info: Optional[Dict[Any, Any]] = ...,
        **kw: Any,
    ) -> None: ...

    def __init__(
        self,
        bind: Optional[_AsyncSessionBind] = None,
        *,
        class_: Type[_AS] = AsyncSession,  # type: ignore[assignment]
        autoflush: bool = True,
        expire_on_commit: bool = True,
        info: Optional[Dict[Any, Any]] = None,
        **kw: Any,
    ) -> None:
        kw["bind"] = bind
        kw["autoflush"] = autoflush
        kw["expire_on_commit"] = expire_on_commit
        if info is not None:
            kw["info"] = info
        self.kw = kw
        self.class_ = class_

    def begin(self) -> _AsyncSessionContextManager[_AS]:
        """``async with maker.begin() as session:`` — a new session in a transaction,
        committed at the end of the block (rolled back on error), then closed."""
        return self()._maker_context_manager()

    def __call__(self, **local_kw: Any) -> _AS:
        """A new session with this maker's configuration (``local_kw`` overrides)."""
        for k, v in self.kw.items():
            if k == "info" and "info" in local_kw:
                d = v.copy()
                d.update(local_kw["info"])
                local_kw["info"] = d
            else:
                local_kw.setdefault(k, v)
        return self.class_(**local_kw)

    def configure(self, **new_kw: Any) -> None:
        """(Re)configure the arguments of this maker."""
        self.kw.update(new_kw)

    def __repr__(self) -> str:
        return "{}(class_={!r}, {})".format(
            self.__class__.__name__,
            self.class_.__name__,
            ", ".join(f"{k}={v!r}" for k, v in self.kw.items()),
        )


class _AsyncSessionContextManager(Generic[_AS]):
    __slots__ = ("async_session", "trans")

    async_session: _AS
    trans: AsyncSessionTransaction

    def __init__(self, async_session: _AS) -> None:
        self.async_session = async_session

    async def __aenter__(self) -> _AS:
        self.trans = self.async_session.begin()
        await self.trans.__aenter__()
        return self.async_session

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        session = self.async_session
        end = functools.partial(
            _exit_and_close,
            self.trans._sync_transaction(),
            session.sync_session,
            type_,
            value,
            traceback,
        )
        await session._end(end, on_worker=type_ is None)  # runs to its end if cancelled


def _proxy_connection(session: AsyncSession, sync_conn: Connection) -> AsyncConnection:
    """The AsyncConnection for one of the session's connections.

    It owns no worker: its calls go to the worker that owns the connection
    (the session's, recorded here on first sight).
    """
    existing = AsyncConnection._retrieve_proxy_for_target(sync_conn, regenerate=False)
    if existing is not None:
        return existing  # type: ignore[no-any-return]
    worker = session._worker
    if worker is not None and _guard.owner_of(sync_conn) is None:
        _guard.claim(sync_conn, worker)
    return AsyncConnection(AsyncEngine._retrieve_proxy_for_target(sync_conn.engine), sync_conn)


# --------------------------------------------------------------------------
# AsyncSessionTransaction


class AsyncSessionTransaction(
    ReversibleProxy[SessionTransaction], StartableContext["AsyncSessionTransaction"]
):
    """An async wrapper for a :class:`~sqlalchemy.orm.SessionTransaction`."""

    __slots__ = ("nested", "session", "sync_transaction")

    #: The :class:`AsyncSession` this transaction belongs to.
    session: AsyncSession
    #: The proxied sync :class:`~sqlalchemy.orm.SessionTransaction`, None until started.
    sync_transaction: Optional[SessionTransaction]

    def __init__(self, session: AsyncSession, nested: bool = False) -> None:
        self.session = session
        #: True for a SAVEPOINT (:meth:`AsyncSession.begin_nested`).
        self.nested = nested
        self.sync_transaction = None

    @property
    def is_active(self) -> bool:
        """True once started, until the transaction ends or an error deactivates it."""
        return self.sync_transaction is not None and self._sync_transaction().is_active

    def _sync_transaction(self) -> SessionTransaction:
        if not self.sync_transaction:
            self._raise_for_not_started()
        return self.sync_transaction

    @property
    def connections(self) -> FrozenSet[AsyncConnection]:
        """The AsyncConnections this transaction has acquired."""
        trans = self._sync_transaction()
        return frozenset(
            _proxy_connection(self.session, entry[0]) for entry in trans._connections.values()
        )

    def bound_connection(
        self, bindkey: Optional[Any] = None, *, bind: Optional[_AsyncSessionBind] = None, **kw: Any
    ) -> AsyncConnection:
        """The AsyncConnection acquired for ``bindkey`` / ``bind`` (SQLAlchemy 2.1.7+)."""
        if bind is not None:
            kw["bind"] = _to_sync_bind(bind)
        sync_conn = self._sync_transaction().bound_connection(bindkey, **kw)  # type: ignore[attr-defined, unused-ignore]
        return _proxy_connection(self.session, sync_conn)

    def _proxy_connection(self, sync_conn: Connection) -> AsyncConnection:
        return _proxy_connection(self.session, sync_conn)

    async def rollback(self) -> None:
        """Roll back this transaction."""
        await self.session._call_shielded(self._sync_transaction().rollback)

    async def commit(self) -> None:
        """Commit this transaction."""
        await self.session._call(self._sync_transaction().commit)

    @classmethod
    def _regenerate_proxy_for_target(  # type: ignore[override]
        cls, target: SessionTransaction, async_session: AsyncSession, **kw: Any
    ) -> AsyncSessionTransaction:
        obj = cls.__new__(cls)
        obj.session = async_session
        obj.sync_transaction = obj._assign_proxied(target)
        obj.nested = target.nested
        return obj

    async def start(self, is_ctxmanager: bool = False) -> AsyncSessionTransaction:
        """Begin the transaction outside of an ``async with`` block."""
        session = self.session
        sync = session.sync_session
        if self.nested or session._lease is not None:
            trans = await session._call(sync.begin_nested if self.nested else sync.begin)
        else:
            # A root begin() does no I/O (the first statement connects) and,
            # with no worker held, nothing else runs for this session.
            trans = sync.begin()
        self.sync_transaction = self._assign_proxied(trans)
        if is_ctxmanager:
            self.sync_transaction.__enter__()
        return self

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        exit_ = self._sync_transaction().__exit__
        if type_ is None:
            await self.session._call(exit_, type_, value, traceback)
        else:  # a rollback: finish it even if cancelled
            await self.session._call_shielded(exit_, type_, value, traceback)


# --------------------------------------------------------------------------
# module functions


def async_object_session(instance: object) -> Optional[AsyncSession]:
    """The AsyncSession ``instance`` belongs to, if any."""
    session = object_session(instance)
    if session is None:
        return None
    return async_session(session)


def async_session(session: Session) -> Optional[AsyncSession]:
    """The AsyncSession proxying the sync ``session``, if any."""
    return AsyncSession._retrieve_proxy_for_target(  # type: ignore[no-any-return]
        session, regenerate=False
    )


async def close_all_sessions() -> None:
    """Close every Session in memory: async ones on their workers, others on a spare one."""
    from sqlalchemy.orm import session as orm_session

    sessions = list(orm_session._sessions.values())
    plain = []
    for sess in sessions:
        asess = async_session(sess)
        if asess is not None:
            await asess.close()
        else:
            plain.append(sess)
    if plain:
        pool = spare_workers()
        worker = await pool.lease()
        try:
            for sess in plain:
                await worker.call_shielded(sess.close)
        finally:
            pool.release(worker)


# ``inspect(obj).async_session`` finds our sessions (and the official ones, if any).
_previous_provider: Optional[Callable[[Session], Any]] = getattr(
    _instance_state, "_async_provider", None
)


def _async_provider(session: Session) -> Any:
    found = async_session(session)
    if found is None and _previous_provider is not None:
        return _previous_provider(session)
    return found


_instance_state._async_provider = _async_provider  # type: ignore[attr-defined, unused-ignore]


__all__ = [
    "AsyncAttrs",
    "AsyncSession",
    "AsyncSessionTransaction",
    "async_object_session",
    "async_session",
    "async_sessionmaker",
    "close_all_sessions",
]
