"""The hand-off implementation in use, chosen once at import.

The C accelerator (``_cbridge``) is used when it was built and
``SQLALCHEMY_ANYIO_NO_CEXT`` is not set; otherwise the pure-Python twin in
``_native``.  ``wait`` picks the running event loop's wake-up.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any, Awaitable, Optional

from .. import _fork
from . import _asyncio

if TYPE_CHECKING:  # both offer the same interface (see _cbridge.pyi)
    from ._native import Channel, Gate, Job, reset_after_fork, set_placement

    ACCELERATED: bool
elif os.environ.get("SQLALCHEMY_ANYIO_NO_CEXT"):
    from ._native import Channel, Gate, Job, reset_after_fork, set_placement

    ACCELERATED = False
else:
    try:
        from ._cbridge import Channel, Gate, Job, reset_after_fork, set_placement

        ACCELERATED = True
    except ImportError:
        from ._native import Channel, Gate, Job, reset_after_fork, set_placement

        ACCELERATED = False


def _micros(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    value = float(raw) if raw.strip() else default
    if not 0 <= value <= 1_000_000:
        raise ValueError(f"{name} must be between 0 and 1000000 (microseconds), not {raw!r}")
    return value / 1e6


def _count(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw.strip() else default
    except ValueError:
        value = -1
    if not 0 <= value <= 1_000_000:
        raise ValueError(f"{name} must be a whole number from 0 to 1000000, not {raw!r}")
    return value


#: Seconds the loop side may wait, without the GIL and without yielding, for a
#: call it just handed over, when no other task is ready.  Only the C bridge
#: can wait without the GIL; the pure-Python one never spins.  The default of
#: the engine option ``loop_spin=``.
LOOP_SPIN = _micros("SQLALCHEMY_ANYIO_LOOP_SPIN_US", 500) if ACCELERATED else 0.0


def loop_spin(value: Optional[float]) -> float:
    """The loop spin of an engine's workers: ``value`` (None: the default);
    0 on the pure-Python bridge."""
    if not ACCELERATED:
        return 0.0
    return LOOP_SPIN if value is None else value


#: How many workers may run jobs at once, process-wide (0: no limit), and
#: after how long a running job stops counting (it is waiting on the server):
#: the gate of engines that have none of their own (engine options
#: ``active_workers=`` and ``active_expire=``).
ACTIVE_WORKERS = _count("SQLALCHEMY_ANYIO_ACTIVE_WORKERS", 0)
ACTIVE_EXPIRE = _micros("SQLALCHEMY_ANYIO_ACTIVE_EXPIRE_US", 2000)
if not ACTIVE_EXPIRE:
    raise ValueError("SQLALCHEMY_ANYIO_ACTIVE_EXPIRE_US must be above 0")

#: The process-wide gate every worker's channel goes through.
GATE = Gate(ACTIVE_WORKERS, ACTIVE_EXPIRE)

#: How many workers of one SQLite engine run jobs at once (0: no limit).
#: SQLite does its work in this process, not on a server: with one worker
#: running at a time the others never compete for the GIL, and a web-shaped
#: read load runs about 1.7x faster than with every worker free to run
#: (docs/bridge.md).  A job past ``ACTIVE_EXPIRE`` (waiting for a lock held
#: by another connection) gives its place up, so nobody waits behind it.
SQLITE_ACTIVE_WORKERS = _count("SQLALCHEMY_ANYIO_SQLITE_ACTIVE_WORKERS", 1)


def engine_gate(
    local: bool, limit: Optional[int] = None, expire: Optional[float] = None
) -> Optional[Gate]:
    """The gate for a new engine's workers: its own of ``limit`` places when
    given, else its own for a database that runs in this process (SQLite),
    else None (the process-wide one).  ``expire`` (None: the default) needs
    a gate of the engine's own: ValueError otherwise."""
    if limit is None and local and SQLITE_ACTIVE_WORKERS:
        limit = SQLITE_ACTIVE_WORKERS
    if limit is None:
        if expire is not None:
            raise ValueError("expire applies to a gate of the engine's own")
        return None
    return Gate(limit, ACTIVE_EXPIRE if expire is None else expire)


@_fork.in_child
def _reset_after_fork() -> None:
    reset_after_fork()
    GATE.reset_after_fork()


def new_channel(
    gate: Optional[Gate] = None, placed: bool = False, worker_spin: Optional[float] = None
) -> Channel:
    """A channel for one new worker, behind ``gate`` or the process-wide one;
    a ``placed`` one's worker follows the thread placement (``_placement``);
    its worker spins up to ``worker_spin`` seconds for its next job (None:
    SQLALCHEMY_ANYIO_WORKER_SPIN_US)."""
    return Channel(GATE if gate is None else gate, placed, worker_spin)


_get_running_loop = asyncio._get_running_loop
_trio_side: Any = None


def _trio() -> Any:
    """The trio side of the bridge, imported once, on first use under trio
    (trio need not be installed)."""
    global _trio_side
    if _trio_side is None:
        from . import _trio as side

        _trio_side = side
    return _trio_side


def loop_is_idle() -> bool:
    """True if no other task or callback is ready to run on this event loop.

    Only then may the loop spin for a worker: spinning must never delay
    somebody else's work.  uvloop's run queue cannot be seen from Python:
    there only our own calls in flight count (the caller checks those).
    """
    loop = _get_running_loop()
    if loop is not None:
        ready = getattr(loop, "_ready", None)  # asyncio's deque of ready handles
        return ready is None or not ready
    return _trio().is_idle()  # type: ignore[no-any-return]


def wait(job: Any) -> Awaitable[None]:
    """Await completion of ``job`` on whichever event loop is running."""
    if _get_running_loop() is not None:
        return _asyncio.wait(job)
    return _trio().wait(job)  # type: ignore[no-any-return]


def wait_for(job: Any, timeout: float) -> Awaitable[bool]:
    """Like :func:`wait`, giving up after ``timeout`` seconds; False if it did."""
    if _get_running_loop() is not None:
        return _asyncio.wait_for(job, timeout)
    return _trio().wait_for(job, timeout)  # type: ignore[no-any-return]


def checkpoint() -> Awaitable[None]:
    if _get_running_loop() is not None:
        return asyncio.sleep(0)
    return _trio().checkpoint()  # type: ignore[no-any-return]


__all__ = [
    "ACCELERATED",
    "GATE",
    "Gate",
    "LOOP_SPIN",
    "Channel",
    "Job",
    "checkpoint",
    "engine_gate",
    "loop_is_idle",
    "new_channel",
    "set_placement",
    "wait",
    "wait_for",
]
