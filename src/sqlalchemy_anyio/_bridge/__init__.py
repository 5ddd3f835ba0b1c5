"""The bridge between an event loop and the worker threads that run SQL.

``Worker.call`` is the whole interface the rest of the package uses; how the
hand-off is done (C accelerator or pure Python, asyncio or trio) stays here.
"""

from ._impl import ACCELERATED, engine_gate
from ._leasing import WorkerPool
from ._shared import SharedWorkerPool
from ._worker import (
    CANCEL_TIMEOUT,
    Worker,
    bound_seconds,
    current_worker,
    give_back_later,
)

__all__ = [
    "ACCELERATED",
    "CANCEL_TIMEOUT",
    "bound_seconds",
    "SharedWorkerPool",
    "Worker",
    "WorkerPool",
    "current_worker",
    "engine_gate",
    "give_back_later",
]
