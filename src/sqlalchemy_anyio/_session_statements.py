"""An AsyncSession's statements: each runs on the session's worker.

``execute()`` and friends fetch every row (and build every ORM object) on the
worker before they return, so reading the result on the event loop does no
I/O; ``stream()`` keeps a server-side cursor and fetches batches there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Optional, Sequence, TypeVar

import sqlalchemy as sa
from sqlalchemy import util as sa_util
from sqlalchemy.engine import Result, ScalarResult
from sqlalchemy.orm import Session

from . import _chunk
from ._buffer import buffer_result
from ._session_lease import LeasedSession
from .result import AsyncResult, AsyncScalarResult

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import _CoreAnyExecuteParams
    from sqlalchemy.orm._typing import OrmExecuteOptionsParameter
    from sqlalchemy.orm.interfaces import ORMOption
    from sqlalchemy.orm.session import _BindArguments, _PKIdentityArgument
    from sqlalchemy.sql.base import Executable
    from sqlalchemy.sql.selectable import ForUpdateParameter

_T = TypeVar("_T")
_O = TypeVar("_O", bound=object)

#: ``get()``'s default as in the official extension: None from SQLAlchemy 2.1
#: (an explicit value overrides the ``populate_existing`` execution option),
#: False before.
POPULATE_EXISTING_DEFAULT: Optional[bool] = (
    None if tuple(int(p) for p in sa.__version__.split(".")[:2]) >= (2, 1) else False
)

_EXECUTE_OPTIONS = sa_util.immutabledict({"prebuffer_rows": True})
_STREAM_OPTIONS = sa_util.immutabledict({"stream_results": True})


class SessionStatements(LeasedSession):
    """The statement-running part of :class:`AsyncSession`."""

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
