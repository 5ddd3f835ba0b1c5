"""Nothing outlives its engine: threads and connections end when an engine is
dropped without ``dispose()``, and a cancelled ``dispose()`` still finishes.
"""

from __future__ import annotations

import gc
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Callable, ClassVar, Optional

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from conftest import subprocess_env
from sqlalchemy_anyio import AsyncEngine, create_async_engine

pytestmark = pytest.mark.anyio

BOUND = 30.0  # generous: a hang, not a speed, is what fails


def _worker_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("sqlalchemy-anyio-worker")}


def _session_id_sql(url: str) -> Optional[str]:
    if url.startswith("postgresql"):
        return "SELECT pg_backend_pid()"
    if url.startswith("mysql"):
        return "SELECT CONNECTION_ID()"
    return None


def _open_sessions(url: str, ids: set[int]) -> set[int]:
    """Which of these server sessions are still connected (sync, own connection)."""
    query = (
        "SELECT pid FROM pg_stat_activity"
        if url.startswith("postgresql")
        else "SELECT id FROM information_schema.processlist"
    )
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return ids & {row[0] for row in conn.exec_driver_sql(query)}
    finally:
        engine.dispose()


class _RecordingConnection(sqlite3.Connection):
    """A sqlite3 connection that notes the thread that closes it."""

    closed_on: ClassVar[list[str]] = []

    def close(self) -> None:
        type(self).closed_on.append(threading.current_thread().name)
        super().close()


def _engine(url: str, kind: str, tmp_path: Any) -> AsyncEngine:
    kw: dict[str, Any] = {"pool_size": 3} if kind == "queue" else {"poolclass": NullPool}
    if url.startswith("sqlite"):
        path = str(tmp_path / "rec.db")

        def creator() -> sqlite3.Connection:
            return sqlite3.connect(path, factory=_RecordingConnection, check_same_thread=False)

        kw["creator"] = creator
    return create_async_engine(url, **kw)


async def _use(engine: AsyncEngine, url: str) -> set[int]:
    """Three connections at once, then idle; their server session ids."""
    sql = _session_id_sql(url)
    ids: set[int] = set()

    async def one() -> None:
        async with engine.connect() as conn:
            value = await conn.scalar(sa.text(sql or "SELECT 1"))
            if sql:
                ids.add(value)
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
    return ids


async def _eventually(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + BOUND
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {BOUND} s")
        gc.collect()
        await anyio.sleep(0.05)


async def _sessions_end(url: str, ids: set[int]) -> None:
    """The server sees these sessions end (it may take a moment to notice)."""
    deadline = time.monotonic() + BOUND
    while ids:
        left = await anyio.to_thread.run_sync(_open_sessions, url, ids)
        if not left:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"server sessions {left} still open after {BOUND} s")
        await anyio.sleep(0.1)


@pytest.mark.parametrize("kind", ["queue", "null"])
async def test_dropped_engines_end_their_threads_and_connections(
    db_url: str, kind: str, tmp_path: Any
) -> None:
    before = _worker_threads()
    _RecordingConnection.closed_on = []
    engines = [_engine(db_url, kind, tmp_path) for _ in range(5)]
    ids: set[int] = set()
    for engine in engines:
        ids |= await _use(engine, db_url)
    started = _worker_threads() - before
    if kind == "queue":
        assert len(started) >= 5 * 3  # three idle workers per engine
    del engines, engine  # never disposed
    await _eventually(
        "the dropped engines' threads did not end", lambda: not any(t.is_alive() for t in started)
    )
    await _sessions_end(db_url, ids)
    if db_url.startswith("sqlite") and kind == "queue":
        # Each idle connection was closed by the worker thread that owned it.
        closed_on = _RecordingConnection.closed_on
        assert len(closed_on) >= 15
        assert all(name.startswith("sqlalchemy-anyio-worker") for name in closed_on), closed_on


async def test_dropped_memory_engines_end_their_shared_threads() -> None:
    before = _worker_threads()
    engines = [create_async_engine("sqlite://") for _ in range(5)]
    for engine in engines:
        await _use(engine, "sqlite://")
    started = _worker_threads() - before
    assert len(started) == 5  # one shared worker each
    del engines, engine
    await _eventually(
        "the dropped engines' threads did not end", lambda: not any(t.is_alive() for t in started)
    )


async def _cancelled_dispose(engine: AsyncEngine, url: str, when: str) -> None:
    before = _worker_threads()
    ids = await _use(engine, url)
    started = _worker_threads() - before
    assert started
    with anyio.CancelScope() as scope:
        if when == "at-once":
            scope.cancel()
        else:
            scope.deadline = anyio.current_time() + 0.001
        await engine.dispose()
        await anyio.sleep(BOUND)  # "midway" may have finished in time
    assert scope.cancelled_caught
    # Idle workers stopped, their connections closed: nothing else was awaited
    # on the engine since.
    await _eventually(
        "a cancelled dispose() left threads running",
        lambda: not any(t.is_alive() for t in started),
    )
    await _sessions_end(url, ids)
    # And the engine still works.
    await _use(engine, url)
    await engine.dispose()


@pytest.mark.parametrize("when", ["at-once", "midway"])
@pytest.mark.parametrize("kind", ["queue", "null"])
async def test_cancelled_dispose_still_finishes(
    db_url: str, kind: str, when: str, tmp_path: Any
) -> None:
    await _cancelled_dispose(_engine(db_url, kind, tmp_path), db_url, when)


@pytest.mark.parametrize("when", ["at-once", "midway"])
async def test_cancelled_dispose_of_a_memory_engine_still_finishes(when: str) -> None:
    await _cancelled_dispose(create_async_engine("sqlite://"), "sqlite://", when)


GC_IN_LOCKED_SECTIONS = textwrap.dedent(
    """
    import gc, json, sys

    import anyio
    import sqlalchemy as sa

    from sqlalchemy_anyio import _base, create_async_engine

    url, backend, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])


    async def main():
        # A proxied object collected (its weakref callback runs) while the
        # proxy registry's lock is held by the collecting thread.
        class Target:
            pass

        target = Target()
        target.cycle = target
        proxy = _base.ReversibleProxy()
        proxy._assign_proxied(target)
        del target
        with _base._proxy_lock:
            gc.collect()

        # An AsyncConnection dropped unclosed, collected (its finalizer runs)
        # while its pool's lock is held by the collecting thread.
        engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=30)
        conn = await engine.connect()
        await conn.scalar(sa.text("SELECT 1"))
        box = [conn]
        box.append(box)
        del conn, box
        with engine.pool._lock:
            gc.collect()
        async with engine.connect() as conn:  # the one connection came back
            assert await conn.scalar(sa.text("SELECT 2")) == 2
        await engine.dispose()
        print("ok")


    anyio.run(main, backend=backend, backend_options=options)
    """
)


def test_collections_inside_locked_sections_do_not_deadlock(
    sqlite_url: str, anyio_backend: Any
) -> None:
    """Finalizers and weakref callbacks run wherever the collector runs, also
    inside the package's own locked sections: none may wait for a lock its
    thread holds (a fresh interpreter, so a deadlock only fails this test)."""
    name, options = anyio_backend
    proc = subprocess.run(
        [sys.executable, "-c", GC_IN_LOCKED_SECTIONS, sqlite_url, name, json.dumps(options)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok"]
