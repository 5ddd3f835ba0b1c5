"""What a child process made by ``os.fork()`` must forget.

The child has one thread: the one that forked.  The parent's worker threads
do not exist there, yet every registry still lists them (idle workers in the
pools, channels in the gate), and any lock one of them held at the instant
of the fork stays held for ever.  Each module that keeps such state
registers a hook here that runs in the child right after the fork: it gives
its locks a fresh start and drops the parent's workers.  The parent's DBAPI
connections are kept, unused and unclosed (as ``dispose(close=False)``
promises): closing them would close the parent's sessions on the server.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

_F = TypeVar("_F", bound=Callable[[], None])

#: What the child inherited and must keep alive, untouched: the parent's
#: workers and, through them, its connections (collecting one would close it).
inherited: list[Any] = []


def in_child(hook: _F) -> _F:
    """Run ``hook()`` in every child process right after ``os.fork()``."""
    register = getattr(os, "register_at_fork", None)
    if register is not None:  # POSIX only: elsewhere there is no fork()
        register(after_in_child=hook)
    return hook
