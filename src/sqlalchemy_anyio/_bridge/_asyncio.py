"""Waiting for a :class:`Job` on an asyncio (or uvloop) event loop."""

from __future__ import annotations

import asyncio
from typing import Any


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def wait(job: Any) -> None:
    """Suspend until ``job`` completes; woken by ``call_soon_threadsafe``."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        try:
            loop.call_soon_threadsafe(_resolve, fut)
        except RuntimeError:  # loop closed: nobody is waiting any more
            pass

    if not job.set_waker(wake):
        await asyncio.sleep(0)  # still a checkpoint, as every await must be
        return
    try:
        await fut
    except BaseException:
        job.clear_waker()
        raise
