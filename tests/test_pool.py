"""WorkerQueuePool: each pooled connection lives on one worker thread.

A connection is opened, used, reset and closed by the same thread; callers
wait once (for a worker with its connection); sessions hold a worker only
while they hold a connection; new connections stay within the pool's limit.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy import event

from sqlalchemy_anyio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy_anyio._pool import WorkerQueuePool

pytestmark = pytest.mark.anyio

ONE = sa.select(sa.literal(1))


class _Threads:
    """Which thread opened, checked out, checked in and closed each DBAPI connection."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.lock = threading.Lock()
        self.seen: dict[int, dict[str, set[int]]] = {}
        self.connects = self.closes = 0
        for name in ("connect", "checkout", "checkin", "close"):
            event.listen(engine.sync_engine.pool, name, self._recorder(name))

    def _recorder(self, name: str) -> Any:
        def record(dbapi_connection: Any, *args: Any) -> None:
            with self.lock:
                if name == "connect":
                    self.connects += 1
                elif name == "close":
                    self.closes += 1
                by_event = self.seen.setdefault(id(dbapi_connection), {})
                by_event.setdefault(name, set()).add(threading.get_ident())

        return record

    def one_thread_each(self) -> bool:
        return all(len(set().union(*events.values())) == 1 for events in self.seen.values())


async def test_queue_pools_become_worker_pools(db_url: str) -> None:
    for poolclass in (None, sa.pool.QueuePool, sa.pool.AsyncAdaptedQueuePool):
        kw = {} if poolclass is None else {"poolclass": poolclass}
        engine = create_async_engine(db_url, pool_size=3, max_overflow=2, pool_timeout=7, **kw)
        try:
            pool = engine.pool
            assert isinstance(pool, WorkerQueuePool) and isinstance(pool, sa.pool.QueuePool)
            assert (pool.size(), pool.overflow(), pool.timeout()) == (3, -3, 7)
            async with engine.connect() as conn:
                assert await conn.scalar(ONE) == 1
                assert pool.checkedout() == 1
            assert pool.checkedout() == 0 and pool.checkedin() == 1
            assert "Pool size: 3" in pool.status()
        finally:
            await engine.dispose()
    engine = create_async_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        assert isinstance(engine.pool, sa.pool.NullPool)
    finally:
        await engine.dispose()


async def test_each_connection_lives_on_one_thread(db_url: str) -> None:
    engine = create_async_engine(db_url, pool_size=3, max_overflow=3)
    threads = _Threads(engine)
    maker = async_sessionmaker(engine)

    async def task(i: int) -> None:
        for _ in range(5):
            async with engine.connect() as conn:
                assert await conn.scalar(sa.select(sa.literal(i))) == i
            async with maker() as session:
                assert await session.scalar(sa.select(sa.literal(i))) == i
            await anyio.sleep(0)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(task, i)
    finally:
        await engine.dispose()  # closes every idle connection on its own thread
    assert threads.seen, "no connection was recorded"
    unclosed = {k: v for k, v in threads.seen.items() if "close" not in v}
    assert not unclosed, (unclosed, len(threads.seen))
    assert threads.one_thread_each(), threads.seen


async def test_new_connections_stay_within_the_pool(db_url: str) -> None:
    """64 tasks, 5 + 10 connections: no churn, no more than 15 ever opened.

    (The overflow lingers for the whole test: a slow run, under a sanitizer,
    may stall the loop for longer than the default second.)"""
    engine = create_async_engine(db_url, overflow_linger=60)
    threads = _Threads(engine)
    maker = async_sessionmaker(engine)
    done = 0

    async def task() -> None:
        nonlocal done
        for _ in range(10):
            async with maker() as session:
                assert await session.scalar(ONE) == 1
            done += 1

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(task)
        assert done == 640
        assert 1 <= threads.connects <= 15
        assert threads.closes == 0
        assert engine.pool.checkedout() == 0
    finally:
        await engine.dispose()


async def _hold(engine: AsyncEngine, n: int) -> None:
    """Check out ``n`` connections at once, use them, give them back."""
    async with anyio.create_task_group() as tg:
        gate = anyio.Event()
        ready = 0

        async def one() -> None:
            nonlocal ready
            async with engine.connect() as conn:
                await conn.scalar(ONE)
                ready += 1
                if ready == n:
                    gate.set()
                await gate.wait()

        for _ in range(n):
            tg.start_soon(one)


async def test_overflow_connections_linger_then_close(db_url: str) -> None:
    engine = create_async_engine(db_url, pool_size=1, max_overflow=2, overflow_linger=0.3)
    threads = _Threads(engine)
    try:
        await _hold(engine, 3)
        assert threads.connects == 3
        assert engine.pool.checkedin() == 3  # the overflow is kept for now ...
        await _hold(engine, 3)
        assert threads.connects == 3  # ... and used again without reconnecting
        with anyio.fail_after(10):
            while engine.pool.checkedin() > 1:
                await anyio.sleep(0.02)
        # ... then closed, on their own threads, once not needed for 0.3 s
        with anyio.fail_after(10):
            while threads.closes < 2:
                await anyio.sleep(0.02)
        assert threads.one_thread_each(), threads.seen
        assert engine.pool.overflow() == 0  # one connection open, pool_size 1
        await _hold(engine, 1)
        assert threads.connects == 3  # the one kept serves on
    finally:
        await engine.dispose()
    assert not [t for t in threading.enumerate() if t.name == "sqlalchemy-anyio-pool-trim"]


async def test_overflow_linger_zero_closes_at_once_as_queuepool(db_url: str) -> None:
    engine = create_async_engine(db_url, pool_size=1, max_overflow=2, overflow_linger=0)
    threads = _Threads(engine)
    try:
        await _hold(engine, 3)
        assert engine.pool.checkedin() == 1
        await _hold(engine, 3)
        assert threads.connects == 5
    finally:
        await engine.dispose()


def test_overflow_linger_is_validated(sqlite_url: str) -> None:
    for bad in (-1, "soon", 7200, True):
        with pytest.raises(sa.exc.ArgumentError, match="overflow_linger must be a number"):
            create_async_engine(sqlite_url, overflow_linger=bad)
    with pytest.raises(sa.exc.ArgumentError, match="overflow_linger applies to a QueuePool"):
        create_async_engine(sqlite_url, poolclass=sa.pool.NullPool, overflow_linger=1)


async def test_committed_session_does_not_starve_others(db_url: str) -> None:
    """A session that committed holds no connection (nor thread) any more."""
    engine = create_async_engine(db_url, pool_size=1, max_overflow=0, pool_timeout=2)
    maker = async_sessionmaker(engine)
    try:
        async with maker() as session:
            assert await session.scalar(ONE) == 1
            await session.commit()
            assert engine.pool.checkedout() == 0
            async with engine.connect() as conn:  # the only connection is free
                assert await conn.scalar(ONE) == 1
            assert await session.scalar(ONE) == 1  # and the session can go on
            await session.rollback()
            with anyio.fail_after(5):
                async with maker() as other:
                    assert await other.scalar(ONE) == 1
    finally:
        await engine.dispose()


async def test_session_holds_no_worker_between_transactions(db_url: str) -> None:
    engine = create_async_engine(db_url, pool_size=1, max_overflow=0, pool_timeout=2)
    maker = async_sessionmaker(engine)
    try:
        async with maker() as one, maker() as two:
            assert await one.scalar(ONE) == 1
            await one.rollback()
            assert await two.scalar(ONE) == 1
            await two.commit()
            assert await one.scalar(ONE) == 1
    finally:
        await engine.dispose()


async def test_dispose_during_a_statement_on_memory_sqlite() -> None:
    """The one in-memory connection is closed on its own thread, after the statement."""
    engine = create_async_engine("sqlite://")
    long_query = sa.text(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000)"
        " SELECT count(*) FROM c"
    )
    outcome: list[Any] = []

    async def run_query() -> None:
        try:
            async with engine.connect() as conn:
                outcome.append(await conn.scalar(long_query))
        except Exception as exc:  # noqa: BLE001 - an error for the statement (or its close) is fine
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_query)
        await anyio.sleep(0.05)
        await engine.dispose()
    # The statement ran to its end (dispose waited for it); closing its
    # connection afterwards may fail, as the pool's connection is closed.
    assert outcome and outcome[0] == 3000000, outcome
    assert all(isinstance(o, sa.exc.DBAPIError) for o in outcome[1:]), outcome
    async with engine.connect() as conn:  # a new connection after dispose works
        assert await conn.scalar(ONE) == 1
    await engine.dispose()


async def test_dispose_while_checked_out_closes_on_return(db_url: str) -> None:
    engine = create_async_engine(db_url, pool_size=2, max_overflow=0)
    threads = _Threads(engine)
    try:
        conn = await engine.connect()
        assert await conn.scalar(ONE) == 1
        old_pool = engine.pool
        await engine.dispose()
        assert engine.pool is not old_pool
        assert await conn.scalar(ONE) == 1  # still usable until closed
        await conn.close()  # comes back to the replaced pool: closed on its thread
        with anyio.fail_after(10):
            while not all("close" in events for events in threads.seen.values()):
                await anyio.sleep(0.01)
        assert threads.one_thread_each()
        async with engine.connect() as again:
            assert await again.scalar(ONE) == 1
    finally:
        await engine.dispose()


async def test_reused_session_waits_for_its_queued_close(db_url: str) -> None:
    """A close handed to the worker without waiting (others wait for a
    connection) must finish before the same session runs anything again,
    even on another worker: the sync Session is never on two threads."""
    engine = create_async_engine(db_url, pool_size=2, max_overflow=0)
    maker = async_sessionmaker(engine)
    marks: dict[str, float] = {}
    c_release = anyio.Event()
    session = maker()

    @event.listens_for(session.sync_session, "after_transaction_end")
    def slow_close(*args: Any) -> None:
        if "closed" not in marks:
            time.sleep(0.5)
            marks["closed"] = time.monotonic()

    @event.listens_for(session.sync_session, "do_orm_execute")
    def record(state: Any) -> None:
        if "closed" in marks or "queued" in marks:
            marks.setdefault("reused", time.monotonic())

    async def holder() -> None:
        async with maker() as other:
            await other.execute(sa.select(1))
            await c_release.wait()

    async def waiter() -> None:
        async with maker() as other:
            await other.execute(sa.select(1))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await session.execute(sa.select(1))
            tg.start_soon(waiter)
            with anyio.fail_after(10):
                while not engine.sync_engine.pool.has_waiters():  # type: ignore[attr-defined]
                    await anyio.sleep(0.01)
            await session.close()
            marks["queued"] = time.monotonic()
            c_release.set()
            assert await session.scalar(sa.select(sa.literal(7))) == 7
        assert marks["reused"] >= marks["closed"], marks
    finally:
        await session.close()
        await engine.dispose()


# -- admission for SQLite: one worker of the engine runs at a time ------------------


async def test_sqlite_workers_run_one_at_a_time(sqlite_url: str) -> None:
    """SQLite runs in this process: an engine's workers take turns (its own
    gate, one place), so they do not compete for the GIL."""
    engine = create_async_engine(sqlite_url, pool_size=4, max_overflow=0)
    gate = engine.pool.gate  # type: ignore[attr-defined]
    assert gate is not None and gate.limit == 1
    seen: list[int] = []
    lock = threading.Lock()

    def look(conn: sa.Connection) -> None:
        with lock:
            seen.append(gate.active)
        conn.execute(ONE)

    async def client() -> None:
        for _ in range(25):
            async with engine.connect() as conn:
                await conn.run_sync(look)

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(client)
        # Never two places held at once; and the jobs did hold theirs.
        assert len(seen) == 200 and max(seen) == 1
    finally:
        await engine.dispose()


async def test_sqlite_worker_waiting_gives_up_its_turn(sqlite_url: str) -> None:
    """A job that blocks (here: until another job has run) does not hold up
    the engine's other workers: past the gate's expiry they run anyway."""
    engine = create_async_engine(sqlite_url, pool_size=2, max_overflow=0)
    ran = threading.Event()

    def wait_for_the_other(conn: sa.Connection) -> bool:
        conn.execute(ONE)
        return ran.wait(10)

    def the_other(conn: sa.Connection) -> None:
        conn.execute(ONE)
        ran.set()

    try:
        async with engine.connect() as first, engine.connect() as second:
            async with anyio.create_task_group() as tg:
                outcome: list[bool] = []

                async def blocked() -> None:
                    outcome.append(await first.run_sync(wait_for_the_other))

                tg.start_soon(blocked)
                await anyio.sleep(0.05)
                await second.run_sync(the_other)
            assert outcome == [True]
    finally:
        await engine.dispose()


async def test_server_engines_have_no_gate_of_their_own(server_url: str) -> None:
    engine = create_async_engine(server_url)
    try:
        assert engine.pool.gate is None  # type: ignore[attr-defined]
        successor = engine.pool.recreate()
        assert successor.gate is None  # type: ignore[attr-defined]
        successor.dispose()
    finally:
        await engine.dispose()


async def test_recreated_sqlite_pool_keeps_the_gate(sqlite_url: str) -> None:
    engine = create_async_engine(sqlite_url)
    try:
        gate = engine.pool.gate  # type: ignore[attr-defined]
        await engine.dispose()  # recreates the pool
        assert engine.pool.gate is gate  # type: ignore[attr-defined]
        async with engine.connect() as conn:
            assert await conn.scalar(ONE) == 1
    finally:
        await engine.dispose()
