"""async_scoped_session: one AsyncSession per scope (e.g. per task)."""

from __future__ import annotations

from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Generic,
    Iterable,
    Iterator,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
)

from sqlalchemy import exc as sa_exc
from sqlalchemy import util as sa_util
from sqlalchemy.engine import Connection, Engine, Result, ScalarResult
from sqlalchemy.orm import Session
from sqlalchemy.util import ScopedRegistry

from .engine import AsyncConnection
from .result import AsyncResult, AsyncScalarResult

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import _CoreAnyExecuteParams
    from sqlalchemy.orm._typing import OrmExecuteOptionsParameter
    from sqlalchemy.orm.interfaces import ORMOption
    from sqlalchemy.orm.session import _BindArguments, _PKIdentityArgument
    from sqlalchemy.sql.base import Executable
    from sqlalchemy.sql.selectable import ForUpdateParameter
from .session import (
    _AS,
    POPULATE_EXISTING_DEFAULT,
    AsyncSession,
    AsyncSessionTransaction,
    _AsyncSessionBind,
    async_sessionmaker,
)


def _proxy_attr(name: str, settable: bool) -> Any:
    def fget(self: async_scoped_session[Any]) -> Any:
        return getattr(self._proxied, name)

    def fset(self: async_scoped_session[Any], value: Any) -> None:
        setattr(self._proxied, name, value)

    return property(
        fget,
        fset if settable else None,
        doc=f"Proxy for :attr:`AsyncSession.{name}` of the current scope's session.",
    )


class async_scoped_session(Generic[_AS]):
    """Scoped management of :class:`AsyncSession` objects.

    ``scopefunc`` names the current scope, e.g. ``lambda: anyio.get_current_task().id``.
    """

    _support_async = True

    def __init__(
        self, session_factory: async_sessionmaker[_AS], scopefunc: Callable[[], Any]
    ) -> None:
        self.session_factory = session_factory
        self.registry: ScopedRegistry[_AS] = ScopedRegistry(session_factory, scopefunc)

    @property
    def _proxied(self) -> _AS:
        return self.registry()

    def __call__(self, **kw: Any) -> _AS:
        """The current scope's session, created with ``kw`` if not present yet."""
        if kw:
            if self.registry.has():
                raise sa_exc.InvalidRequestError(
                    "Scoped session is already present; no new arguments may be specified."
                )
            sess = self.session_factory(**kw)
            self.registry.set(sess)
            return sess
        return self.registry()

    def configure(self, **kwargs: Any) -> None:
        """Reconfigure the factory (does not affect sessions already made)."""
        if self.registry.has():
            sa_util.warn(
                "At least one scoped session is already present.  configure() can "
                "not affect sessions that have already been created."
            )
        self.session_factory.configure(**kwargs)

    async def remove(self) -> None:
        """Close the current scope's session (if any) and forget it."""
        if self.registry.has():
            await self.registry().close()
        self.registry.clear()

    # -- proxies (written out for type checkers and IDEs) --------------------

    def __contains__(self, instance: object) -> bool:
        return instance in self._proxied

    def __iter__(self) -> Iterator[object]:
        return iter(self._proxied)

    async def aclose(self) -> None:
        """Call :meth:`AsyncSession.aclose` on the current scope's session."""
        await self._proxied.aclose()

    def add(self, instance: object, *, _warn: bool = True) -> None:
        """Call :meth:`AsyncSession.add` on the current scope's session."""
        self._proxied.add(instance, _warn=_warn)

    def add_all(self, instances: Iterable[object]) -> None:
        """Call :meth:`AsyncSession.add_all` on the current scope's session."""
        self._proxied.add_all(instances)

    def begin(self) -> AsyncSessionTransaction:
        """Call :meth:`AsyncSession.begin` on the current scope's session."""
        return self._proxied.begin()

    def begin_nested(self) -> AsyncSessionTransaction:
        """Call :meth:`AsyncSession.begin_nested` on the current scope's session."""
        return self._proxied.begin_nested()

    async def close(self) -> None:
        """Call :meth:`AsyncSession.close` on the current scope's session."""
        await self._proxied.close()

    async def reset(self) -> None:
        """Call :meth:`AsyncSession.reset` on the current scope's session."""
        await self._proxied.reset()

    async def commit(self) -> None:
        """Call :meth:`AsyncSession.commit` on the current scope's session."""
        await self._proxied.commit()

    async def connection(
        self,
        bind_arguments: Optional[Dict[str, Any]] = None,
        execution_options: Optional[Any] = None,
        **kw: Any,
    ) -> AsyncConnection:
        """Call :meth:`AsyncSession.connection` on the current scope's session."""
        return await self._proxied.connection(
            bind_arguments=bind_arguments, execution_options=execution_options, **kw
        )

    async def delete(self, instance: object) -> None:
        """Call :meth:`AsyncSession.delete` on the current scope's session."""
        await self._proxied.delete(instance)

    async def delete_all(self, instances: Iterable[object]) -> None:
        """Call :meth:`AsyncSession.delete_all` on the current scope's session."""
        await self._proxied.delete_all(instances)  # type: ignore[attr-defined, unused-ignore]

    async def execute(
        self,
        statement: Executable,
        params: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: OrmExecuteOptionsParameter = sa_util.EMPTY_DICT,
        bind_arguments: Optional[_BindArguments] = None,
        **kw: Any,
    ) -> Result[Any]:
        """Call :meth:`AsyncSession.execute` on the current scope's session."""
        return await self._proxied.execute(
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )

    def expire(self, instance: object, attribute_names: Optional[Iterable[str]] = None) -> None:
        """Call :meth:`AsyncSession.expire` on the current scope's session."""
        self._proxied.expire(instance, attribute_names=attribute_names)

    def expire_all(self) -> None:
        """Call :meth:`AsyncSession.expire_all` on the current scope's session."""
        self._proxied.expire_all()

    def expunge(self, instance: object) -> None:
        """Call :meth:`AsyncSession.expunge` on the current scope's session."""
        self._proxied.expunge(instance)

    def expunge_all(self) -> None:
        """Call :meth:`AsyncSession.expunge_all` on the current scope's session."""
        self._proxied.expunge_all()

    async def flush(self, objects: Optional[Sequence[Any]] = None) -> None:
        """Call :meth:`AsyncSession.flush` on the current scope's session."""
        await self._proxied.flush(objects)

    def get_bind(
        self,
        mapper: Optional[Any] = None,
        clause: Optional[Any] = None,
        bind: Any = None,
        **kw: Any,
    ) -> Union[Engine, Connection]:
        """Call :meth:`AsyncSession.get_bind` on the current scope's session."""
        return self._proxied.get_bind(mapper=mapper, clause=clause, bind=bind, **kw)

    def get_async_bind(
        self,
        mapper: Optional[Any] = None,
        clause: Optional[Any] = None,
        bind: Any = None,
        **kw: Any,
    ) -> _AsyncSessionBind:
        """Call :meth:`AsyncSession.get_async_bind` on the current scope's session."""
        return self._proxied.get_async_bind(mapper=mapper, clause=clause, bind=bind, **kw)

    def is_modified(self, instance: object, include_collections: bool = True) -> bool:
        """Call :meth:`AsyncSession.is_modified` on the current scope's session."""
        return self._proxied.is_modified(instance, include_collections=include_collections)

    async def invalidate(self) -> None:
        """Call :meth:`AsyncSession.invalidate` on the current scope's session."""
        await self._proxied.invalidate()

    async def merge(self, instance: Any, *, load: bool = True, options: Any = None) -> Any:
        """Call :meth:`AsyncSession.merge` on the current scope's session."""
        return await self._proxied.merge(instance, load=load, options=options)

    async def merge_all(
        self, instances: Iterable[Any], *, load: bool = True, options: Any = None
    ) -> Any:
        """Call :meth:`AsyncSession.merge_all` on the current scope's session."""
        return await self._proxied.merge_all(  # type: ignore[attr-defined, unused-ignore]
            instances, load=load, options=options
        )

    async def refresh(
        self,
        instance: object,
        attribute_names: Optional[Iterable[str]] = None,
        with_for_update: Any = None,
    ) -> None:
        """Call :meth:`AsyncSession.refresh` on the current scope's session."""
        await self._proxied.refresh(
            instance, attribute_names=attribute_names, with_for_update=with_for_update
        )

    async def rollback(self) -> None:
        """Call :meth:`AsyncSession.rollback` on the current scope's session."""
        await self._proxied.rollback()

    async def scalar(
        self,
        statement: Executable,
        params: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: OrmExecuteOptionsParameter = sa_util.EMPTY_DICT,
        bind_arguments: Optional[_BindArguments] = None,
        **kw: Any,
    ) -> Any:
        """Call :meth:`AsyncSession.scalar` on the current scope's session."""
        return await self._proxied.scalar(
            statement,
            params,
            execution_options=execution_options,
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
        """Call :meth:`AsyncSession.scalars` on the current scope's session."""
        return await self._proxied.scalars(
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )

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
        """Call :meth:`AsyncSession.get` on the current scope's session."""
        return await self._proxied.get(
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
        """Call :meth:`AsyncSession.get_one` on the current scope's session."""
        return await self._proxied.get_one(
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
        """Call :meth:`AsyncSession.stream` on the current scope's session."""
        return await self._proxied.stream(
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )

    async def stream_scalars(
        self,
        statement: Executable,
        params: Optional[_CoreAnyExecuteParams] = None,
        *,
        execution_options: OrmExecuteOptionsParameter = sa_util.EMPTY_DICT,
        bind_arguments: Optional[_BindArguments] = None,
        **kw: Any,
    ) -> AsyncScalarResult[Any]:
        """Call :meth:`AsyncSession.stream_scalars` on the current scope's session."""
        return await self._proxied.stream_scalars(
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )

    async def run_sync(self, fn: Callable[..., Any], *arg: Any, **kw: Any) -> Any:
        """Call :meth:`AsyncSession.run_sync` on the current scope's session."""
        return await self._proxied.run_sync(fn, *arg, **kw)

    def get_transaction(self) -> Optional[AsyncSessionTransaction]:
        """Call :meth:`AsyncSession.get_transaction` on the current scope's session."""
        return self._proxied.get_transaction()

    def get_nested_transaction(self) -> Optional[AsyncSessionTransaction]:
        """Call :meth:`AsyncSession.get_nested_transaction` on the current scope's session."""
        return self._proxied.get_nested_transaction()

    def in_transaction(self) -> bool:
        """Call :meth:`AsyncSession.in_transaction` on the current scope's session."""
        return self._proxied.in_transaction()

    def in_nested_transaction(self) -> bool:
        """Call :meth:`AsyncSession.in_nested_transaction` on the current scope's session."""
        return self._proxied.in_nested_transaction()

    bind = _proxy_attr("bind", True)
    binds = _proxy_attr("binds", False)
    dirty = _proxy_attr("dirty", False)
    deleted = _proxy_attr("deleted", False)
    new = _proxy_attr("new", False)
    identity_map = _proxy_attr("identity_map", True)
    is_active = _proxy_attr("is_active", False)
    autoflush = _proxy_attr("autoflush", True)
    no_autoflush = _proxy_attr("no_autoflush", False)
    info = _proxy_attr("info", False)
    execution_options = _proxy_attr("execution_options", True)
    sync_session = _proxy_attr("sync_session", False)

    @classmethod
    async def close_all(cls) -> None:
        """Close all sessions (deprecated: use ``close_all_sessions()``)."""
        await AsyncSession.close_all()

    @classmethod
    def object_session(cls, instance: object) -> Optional[Session]:
        """Call :meth:`AsyncSession.object_session`."""
        return AsyncSession.object_session(instance)

    @classmethod
    def identity_key(
        cls,
        class_: Optional[Type[Any]] = None,
        ident: Union[Any, Tuple[Any, ...]] = None,
        *,
        instance: Optional[Any] = None,
        row: Optional[Any] = None,
        identity_token: Optional[Any] = None,
    ) -> Any:
        """Call :meth:`AsyncSession.identity_key`."""
        return AsyncSession.identity_key(
            class_=class_, ident=ident, instance=instance, row=row, identity_token=identity_token
        )


__all__ = ["async_scoped_session"]
