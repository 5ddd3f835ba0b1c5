"""The hand-off implementation in use, chosen once at import.

The C accelerator (``_cbridge``) is used when it was built and
``SQLALCHEMY_ANYIO_NO_CEXT`` is not set; otherwise the pure-Python twin in
``_native``.  ``wait`` picks the running event loop's wake-up.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Awaitable

from . import _asyncio

if os.environ.get("SQLALCHEMY_ANYIO_NO_CEXT"):
    from ._native import Channel, Job

    ACCELERATED = False
else:
    try:
        from ._cbridge import Channel, Job  # type: ignore[no-redef]

        ACCELERATED = True
    except ImportError:
        from ._native import Channel, Job

        ACCELERATED = False

#: Seconds the loop side may wait, without yielding, for a call to finish.
LOOP_SPIN = float(os.environ.get("SQLALCHEMY_ANYIO_LOOP_SPIN", "0") or 0)

_get_running_loop = asyncio._get_running_loop


def wait(job: Any) -> Awaitable[None]:
    """Await completion of ``job`` on whichever event loop is running."""
    if _get_running_loop() is not None:
        return _asyncio.wait(job)
    from . import _trio

    return _trio.wait(job)


def checkpoint() -> Awaitable[None]:
    if _get_running_loop() is not None:
        return asyncio.sleep(0)
    import trio

    return trio.lowlevel.checkpoint()


__all__ = ["ACCELERATED", "LOOP_SPIN", "Channel", "Job", "checkpoint", "wait"]
