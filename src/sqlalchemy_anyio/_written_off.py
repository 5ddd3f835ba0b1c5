"""Synchronous AsyncSession methods refused while a written-off call may still
be using the sync Session on its worker thread.

After a write-off (see ``Worker.call_ending``) the statement that ignored its
interrupt still runs inside the sync Session on the worker, and the close
queued behind it runs there later.  ``session.add()`` and the other methods
that read or change the session's state on the loop meanwhile would race
them: they are refused with ``ConnectionWrittenOff`` until both are done.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

from .exc import ConnectionWrittenOff

#: The synchronous methods and properties that touch the sync Session's state.
GUARDED = (
    "__contains__",
    "__iter__",
    "add",
    "add_all",
    "expire",
    "expire_all",
    "expunge",
    "expunge_all",
    "is_modified",
    "dirty",
    "deleted",
    "new",
    "identity_map",
)


def check(session: Any) -> None:
    """Raise ``ConnectionWrittenOff`` if ``session`` must not be touched now."""
    lease = session._lease
    if lease is not None and lease.worker.stuck:
        raise ConnectionWrittenOff()
    pending = session._pending_end
    if pending is not None:
        pending.check()


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._lease is not None or self._pending_end is not None:
            check(self)
        return fn(self, *args, **kwargs)

    return method


def guard(cls: type, names: Iterable[str] = GUARDED) -> None:
    """Make ``cls``'s synchronous ``names`` check the session first."""
    for name in names:
        attr = getattr(cls, name)
        if isinstance(attr, property):
            assert attr.fget is not None
            setattr(cls, name, property(_guarded(attr.fget), attr.fset, attr.fdel, attr.__doc__))
        else:
            setattr(cls, name, _guarded(attr))
