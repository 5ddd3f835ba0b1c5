"""async_scoped_session: one AsyncSession per scope (e.g. per task).

Its forwards to the current scope's session are generated from the
declaration in ``_session_proxy``, the one AsyncSession's own come from.
"""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, Generic

from sqlalchemy import exc as sa_exc
from sqlalchemy import util as sa_util
from sqlalchemy.util import ScopedRegistry

from ._forwarding import forward
from ._session_proxy import scoped_tables
from .session import _AS, AsyncSession, async_sessionmaker

if TYPE_CHECKING:
    # Type checkers see AsyncSession's signatures on the scoped session: every
    # one of its public methods and attributes is forwarded (below).
    _Proxies = AsyncSession
else:

    class _Proxies:
        __slots__ = ()


class async_scoped_session(Generic[_AS], _Proxies):
    """Scoped management of :class:`AsyncSession` objects.

    ``scopefunc`` names the current scope, e.g. ``lambda: anyio.get_current_task().id``.
    Every public method and attribute of :class:`AsyncSession` is forwarded
    to the current scope's session.
    """

    _support_async = True

    def __init__(
        self, session_factory: async_sessionmaker[_AS], scopefunc: Callable[[], Any]
    ) -> None:
        self.session_factory = session_factory
        self.registry: ScopedRegistry[_AS] = ScopedRegistry(session_factory, scopefunc)

    @property
    def _proxied(self) -> _AS:  # type: ignore[override]
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


_methods, _attributes, _class_methods = scoped_tables()
forward(
    async_scoped_session,
    AsyncSession,
    attrgetter("_proxied"),
    methods=_methods,
    attributes=_attributes,
    class_methods=_class_methods,
)

__all__ = ["async_scoped_session"]
