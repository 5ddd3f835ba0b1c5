"""SQLModel's AsyncSession on worker threads: ``exec()`` as in sqlmodel.

``from sqlmodel.ext.asyncio.session import AsyncSession`` becomes
``from sqlalchemy_anyio.sqlmodel import AsyncSession``.  Needs ``sqlmodel``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Union

from sqlalchemy import util as sa_util
from sqlalchemy.engine import Result
from sqlmodel import Session as _SQLModelSession
from typing_extensions import deprecated

from ._buffer import buffer_result
from ._session_statements import _EXECUTE_OPTIONS
from .session import AsyncSession as _AsyncSession

# sqlmodel's own AsyncSession.execute() deprecation, word for word (its
# module cannot be imported without greenlet).
_EXECUTE_DEPRECATED = """
        🚨 You probably want to use `session.exec()` instead of `session.execute()`.

        This is the original SQLAlchemy `session.execute()` method that returns objects
        of type `Row`, on which you have to call `scalars()` to get the model objects.

        For example:

        ```Python
        result = await session.execute(select(Hero))
        heroes = result.scalars().all()
        ```

        Instead, you could use `exec()`:

        ```Python
        result = await session.exec(select(Hero))
        heroes = result.all()
        ```
        """


class AsyncSession(_AsyncSession):
    """An AsyncSession over ``sqlmodel.Session``, with its ``exec()``."""

    sync_session_class = _SQLModelSession
    sync_session: _SQLModelSession

    @deprecated(_EXECUTE_DEPRECATED)
    async def execute(
        self,
        statement: Any,
        params: Optional[Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]] = None,
        *,
        execution_options: Mapping[str, Any] = sa_util.EMPTY_DICT,
        bind_arguments: Optional[Dict[str, Any]] = None,
        _parent_execute_state: Optional[Any] = None,
        _add_event: Optional[Any] = None,
        **kw: Any,
    ) -> Result[Any]:
        """SQLAlchemy's ``execute()``, deprecated in favour of :meth:`exec` as in
        sqlmodel (``scalars()`` goes through it, and warns too, as there)."""
        return await super().execute(
            statement,
            params=params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            _parent_execute_state=_parent_execute_state,
            _add_event=_add_event,
            **kw,
        )

    async def exec(
        self,
        statement: Any,
        *,
        params: Optional[Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]] = None,
        execution_options: Mapping[str, Any] = sa_util.EMPTY_DICT,
        bind_arguments: Optional[Dict[str, Any]] = None,
        _parent_execute_state: Optional[Any] = None,
        _add_event: Optional[Any] = None,
    ) -> Any:
        """Run ``sqlmodel.Session.exec`` on the worker; the result is fully buffered.

        A ``select(Model)`` gives a ScalarResult of models, a multi-column
        ``select`` a TupleResult, DML a CursorResult, exactly as in sqlmodel.
        """
        options = (
            sa_util.immutabledict(execution_options).union(_EXECUTE_OPTIONS)
            if execution_options
            else _EXECUTE_OPTIONS
        )
        return await self._call(
            _exec_buffered,
            self.sync_session,
            statement,
            dict(
                params=params,
                execution_options=options,
                bind_arguments=bind_arguments,
                _parent_execute_state=_parent_execute_state,
                _add_event=_add_event,
            ),
        )


def _exec_buffered(sync_session: _SQLModelSession, statement: Any, kw: Dict[str, Any]) -> Any:
    result = sync_session.exec(statement, **kw)
    # a ScalarResult wraps the Result that owns the cursor
    buffer_result(getattr(result, "_real_result", None) or result, "AsyncSession", "exec")
    return result


__all__ = ["AsyncSession"]
