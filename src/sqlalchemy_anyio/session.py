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
from operator import attrgetter
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Dict,
    FrozenSet,
    Generic,
    NoReturn,
    Optional,
    Type,
    TypeVar,
    overload,
)

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, SessionTransaction, object_session
from sqlalchemy.orm import state as _instance_state

from . import _guard, _written_off
from ._base import ReversibleProxy, StartableContext
from ._engine_workers import spare_workers
from ._forwarding import forward, typed
from ._session_binds import _AsyncSessionBind, _to_sync_bind
from ._session_proxy import SESSION_ATTRIBUTES, SESSION_CLASS_METHODS, SESSION_METHODS
from ._session_statements import SessionStatements
from .engine import AsyncConnection, AsyncEngine

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import CoreExecuteOptionsParameter
    from sqlalchemy.orm.identity import IdentityMap
    from sqlalchemy.orm.session import _BindArguments, _SessionBindKey
    from sqlalchemy.util import IdentitySet


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


class AsyncSession(SessionStatements, ReversibleProxy[Session]):
    """An async proxy for a :class:`~sqlalchemy.orm.Session` that runs it on worker threads.

    While its transaction holds a connection, all of the session's work runs on
    that connection's worker thread.  A lazy load attempted on the event loop
    raises :class:`WorkerThreadRequired`.
    """

    _is_asyncio = True

    #: The Session class (or callable) making the proxied Session.
    sync_session_class: Type[Session] = Session

    def __init__(
        self,
        bind: Optional[_AsyncSessionBind] = None,
        *,
        binds: Optional[Dict[_SessionBindKey, _AsyncSessionBind]] = None,
        sync_session_class: Optional[Type[Session]] = None,
        **kw: Any,
    ) -> None:
        self._async_bind = bind
        self._async_binds = dict(binds) if binds else {}
        sync_bind = _to_sync_bind(bind) if bind is not None else None
        sync_binds = {key: _to_sync_bind(b) for key, b in binds.items()} if binds else None
        if sync_session_class:
            self.sync_session_class = sync_session_class
        self._lease = None
        self._pending_end = None
        self._finalizer = None
        guarded = _guard.guarded_session_class(self.sync_session_class)
        self.sync_session = self._proxied = self._assign_proxied(
            (guarded or self.sync_session_class)(bind=sync_bind, binds=sync_binds, **kw)
        )
        if guarded is None:  # a factory, not a Session subclass: guard with events
            _guard.guard_session(self.sync_session)

    @classmethod
    def _no_async_engine_events(cls) -> NoReturn:
        raise NotImplementedError(
            "asynchronous events are not implemented at this time.  Apply "
            "synchronous listeners to the AsyncSession.sync_session."
        )

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


_written_off.guard(AsyncSession)  # refused while a written-off call may use the session
