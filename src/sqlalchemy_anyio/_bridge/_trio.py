"""Waiting for a :class:`Job` under trio."""

from __future__ import annotations

from typing import Any

import trio


async def wait(job: Any) -> None:
    """Suspend until ``job`` completes; woken through the run's TrioToken."""
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def wake() -> None:
        try:
            token.run_sync_soon(trio.lowlevel.reschedule, task)
        except trio.RunFinishedError:
            pass

    if not job.set_waker(wake):
        await trio.lowlevel.checkpoint()
        return

    def abort(_: Any) -> trio.lowlevel.Abort:
        # Only abandon the wait if the wake-up can no longer arrive; otherwise
        # the reschedule is already on its way and must find us blocked.
        return trio.lowlevel.Abort.SUCCEEDED if job.clear_waker() else trio.lowlevel.Abort.FAILED

    await trio.lowlevel.wait_task_rescheduled(abort)
