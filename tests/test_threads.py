"""Worker threads: bounded, reused, gone after dispose(), never blocking exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa

from conftest import subprocess_env
from sqlalchemy_anyio import create_async_engine

pytestmark = pytest.mark.anyio

WORKER_PREFIX = "sqlalchemy-anyio-worker-"
ONE = sa.select(sa.literal(1))


def _workers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX)}


def _thread_ident(sync_conn: object) -> int:
    return threading.get_ident()


async def test_dispose_ends_worker_threads(db_url: str) -> None:
    before = _workers()
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as c1, engine.connect() as c2:
            await c1.scalar(ONE)
            await c2.scalar(ONE)
        assert len(_workers() - before) >= 2
    finally:
        await engine.dispose()
    assert not {t for t in _workers() - before if t.is_alive()}


async def test_concurrent_connections_share_bounded_workers(db_url: str) -> None:
    before = _workers()
    engine = create_async_engine(db_url, pool_size=5, max_overflow=0, pool_timeout=60)
    done: list[int] = []
    peak = 0
    active = 0

    async def task(i: int) -> None:
        nonlocal peak, active
        async with engine.connect() as conn:
            active += 1
            peak = max(peak, active)
            assert await conn.scalar(sa.select(sa.literal(i))) == i
            await anyio.sleep(0.01)  # hold the connection so the others queue
            active -= 1
        done.append(i)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(task, i)
        assert sorted(done) == list(range(20))
        assert peak <= 5
        assert engine.pool.checkedout() == 0
        # dispose() makes one short-lived worker of its own; besides it, no
        # more workers than the pool has connections.
        assert 1 <= len(_workers() - before) <= 5
    finally:
        await engine.dispose()
    assert not {t for t in _workers() - before if t.is_alive()}


async def test_workers_are_reused(db_url: str) -> None:
    engine = create_async_engine(db_url)
    try:
        idents = []
        for _ in range(3):
            async with engine.connect() as conn:
                idents.append(await conn.run_sync(_thread_ident))
        assert len(set(idents)) == 1
        assert idents[0] != threading.get_ident()
        # Two connections at once run on two different threads.
        async with engine.connect() as c1, engine.connect() as c2:
            assert await c1.run_sync(_thread_ident) != await c2.run_sync(_thread_ident)
    finally:
        await engine.dispose()


async def test_pool_exhaustion_times_out(db_url: str) -> None:
    engine = create_async_engine(db_url, pool_size=1, max_overflow=0, pool_timeout=0.25)
    try:
        async with engine.connect() as held:
            await held.scalar(ONE)
            with pytest.raises(sa.exc.TimeoutError):
                async with engine.connect():
                    pass
            assert await held.scalar(ONE) == 1
        # Once the holder is gone the slot is free again.
        async with engine.connect() as conn:
            assert await conn.scalar(ONE) == 1
    finally:
        await engine.dispose()


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys
    import anyio
    import sqlalchemy as sa
    from sqlalchemy_anyio import create_async_engine

    BACKEND, URL = sys.argv[1], sys.argv[2]
    kept = []

    async def main():
        engine = create_async_engine(URL)
        for _ in range(3):
            async with engine.connect() as conn:
                await conn.scalar(sa.select(sa.literal(1)))
        async with engine.connect() as a, engine.connect() as b:
            await a.scalar(sa.select(sa.literal(1)))
            await b.scalar(sa.select(sa.literal(1)))
        # One connection is left open and the engine is never disposed.
        conn = await engine.connect()
        await conn.scalar(sa.select(sa.literal(1)))
        kept.append((engine, conn))

    anyio.run(main, backend=BACKEND)
    print("MAIN DONE")
    """
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_interpreter_exits_without_dispose(backend: str, tmp_path: Path) -> None:
    if backend == "trio":
        pytest.importorskip("trio")
    url = f"sqlite:///{tmp_path / 'exit.db'}"
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, backend, url],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MAIN DONE" in proc.stdout
