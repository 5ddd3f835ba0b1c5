"""An AsyncSession's binds: the async engines and connections it was given.

The sync Session keeps sync binds; the session keeps the async objects they
came from, so that ``bind``, ``binds`` and ``get_async_bind()`` hand back the
very objects the application passed in, never new wrappers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Union

from sqlalchemy import exc as sa_exc
from sqlalchemy import util as sa_util
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from . import exc as async_exc
from .engine import AsyncConnection, AsyncEngine

if TYPE_CHECKING:
    from sqlalchemy.sql.elements import ClauseElement
    from sqlalchemy.sql.selectable import TableClause

_AsyncSessionBind = Union[AsyncEngine, AsyncConnection]


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


class SessionBinds:
    """The bind-related part of :class:`AsyncSession`."""

    #: The proxied sync Session; use it as an event target.
    sync_session: Session
    _async_bind: Optional[_AsyncSessionBind]
    _async_binds: Dict[Any, _AsyncSessionBind]

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
