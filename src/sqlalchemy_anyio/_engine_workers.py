"""Where each engine's callers lease their worker threads.

An engine with a :class:`WorkerQueuePool` leases workers with its
connections; other pools get a worker source of their own here, kept per
root engine (``execution_options()`` copies share it).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Awaitable, Callable, Optional

import anyio
from sqlalchemy import exc
from sqlalchemy import pool as sa_pool
from sqlalchemy.engine import Engine

from . import _fork
from ._bridge import CANCEL_TIMEOUT, SharedWorkerPool, Worker, WorkerPool
from ._pool import WorkerQueuePool

#: Worker limit when the engine's pool does not bound its connections.
DEFAULT_WORKER_LIMIT = 40


_pools: weakref.WeakKeyDictionary[Engine, WorkerPool | SharedWorkerPool] = (
    weakref.WeakKeyDictionary()
)
_pools_lock = threading.Lock()


@_fork.in_child
def _reset_after_fork() -> None:
    global _pools_lock
    _pools_lock = threading.Lock()


def root_engine(engine: Engine) -> Engine:
    while True:
        proxied = getattr(engine, "_proxied", None)
        if not isinstance(proxied, Engine):
            return engine
        engine = proxied


def _pool_capacity(pool: sa_pool.Pool) -> Optional[int]:
    if isinstance(pool, sa_pool.QueuePool):
        overflow = pool._max_overflow
        if overflow < 0:
            return None
        return pool.size() + overflow
    return None


def workers_for(engine: Engine) -> WorkerQueuePool | WorkerPool | SharedWorkerPool:
    """Where an engine's callers lease workers (shared by execution_options copies).

    A :class:`WorkerQueuePool` is its own source: its workers carry its
    connections.  Pools that hand one DBAPI connection to everybody
    (StaticPool) or one per thread (SingletonThreadPool) get a single shared
    worker, so that connection only ever meets one thread.  Any other pool
    (NullPool, custom pools) gets a bounded set of plain workers.
    """
    root = root_engine(engine)
    pool = root.pool
    if isinstance(pool, WorkerQueuePool):
        return pool
    with _pools_lock:
        workers = _pools.get(root)
        if workers is None:
            if isinstance(pool, (sa_pool.StaticPool, sa_pool.SingletonThreadPool)):
                workers = SharedWorkerPool()
            else:
                capacity = _pool_capacity(pool)
                workers = WorkerPool(capacity if capacity else DEFAULT_WORKER_LIMIT)
            _pools[root] = workers
    return workers


async def lease_worker(engine: Engine) -> Worker:
    """Lease a worker for ``engine``; the wait is bounded by ``pool_timeout``.

    Workers are bounded by the pool's capacity, so a lease that waits too
    long fails the way an exhausted pool does: with ``sqlalchemy.exc.TimeoutError``.
    Give the worker back with ``worker.pool.release(worker)``.
    """
    workers = workers_for(engine)
    if isinstance(workers, WorkerQueuePool):
        return await workers.lease()
    pool = engine.pool
    timeout = pool.timeout() if isinstance(pool, sa_pool.QueuePool) else None
    try:
        return await workers.lease(timeout)
    except TimeoutError:
        raise exc.TimeoutError(
            f"{pool.__class__.__name__} limit of size {pool.size()} overflow "
            f"{pool.overflow()} reached, connection timed out, timeout {timeout:.2f}"
            if isinstance(pool, sa_pool.QueuePool)
            else "timed out waiting for a worker thread",
            code="3o7r",
        ) from None


_spare: Optional[WorkerPool] = None


def spare_workers() -> WorkerPool:
    """Workers tied to no engine: sessions whose bind is only known per
    statement (several engines, a custom ``get_bind()``), ``raw_connection()``.
    Connections they check out are opened and closed on them (see ``_pool``)."""
    global _spare
    with _pools_lock:
        if _spare is None:
            _spare = WorkerPool(DEFAULT_WORKER_LIMIT)
        return _spare


async def dispose_workers(sync_engine: Engine, close: bool) -> None:
    """``AsyncEngine.dispose()``: dispose of the pool on the right thread and
    end the idle workers; runs to its end if cancelled (within the bound)."""
    workers = workers_for(sync_engine)
    bound = workers.cancel_timeout or CANCEL_TIMEOUT
    if isinstance(workers, SharedWorkerPool):
        # The one connection belongs to the shared worker: close it
        # there, after whatever that worker is running now.
        worker = await workers.lease()
        try:
            await worker.call_shielded(sync_engine.dispose, close=close)
        finally:
            workers.release(worker)
            await _shielded_within(bound, workers.dispose)
    else:
        # A short-lived thread of its own: dispose() waits for the idle
        # workers to close their connections, and leased ones may be busy.
        worker = Worker()
        try:
            await worker.call_shielded(sync_engine.dispose, close=close)
        finally:
            worker.stop()
            await _shielded_within(bound, worker.wait_stopped)
            if not isinstance(workers, WorkerQueuePool):
                await _shielded_within(bound, workers.dispose)


async def _shielded_within(bound: float, wait: Callable[[], Awaitable[Any]]) -> None:
    """``await wait()`` even if the caller is cancelled, for ``bound`` seconds
    at most (ending idle workers: their stop is sent at once; only waiting
    for their threads is bounded)."""
    with anyio.CancelScope(shield=True) as scope:
        scope.deadline = anyio.current_time() + bound
        await wait()
