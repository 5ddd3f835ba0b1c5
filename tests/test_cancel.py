"""Cancellation stops the statement, on every driver, and leaves the connection usable."""

from __future__ import annotations

import os
import random
import socket
import threading
import time

import anyio
import pytest
import sqlalchemy as sa

from conftest import SERVER_LONG_QUERY, server_still_running
from sqlalchemy_anyio import AsyncEngine, create_async_engine

pytestmark = pytest.mark.anyio

LONG_QUERY = {
    "sqlite": (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    ),
    **SERVER_LONG_QUERY,
}

# One table name per process, so parallel runs on one server don't collide.
accounts = sa.Table(
    f"cxl_accounts_{os.getpid()}",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("balance", sa.Integer, nullable=False),
)


def _still_running(url: str, name: str) -> int:
    """How many copies of this run's long query the server is still executing."""
    return 0 if name == "sqlite" else server_still_running(url, name)


def _worker_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("sqlalchemy-anyio-worker"))


async def test_timeout_stops_query_and_connection_is_reused(db_url: str) -> None:
    engine = create_async_engine(db_url, pool_size=1, max_overflow=0)
    name = engine.dialect.name
    try:
        async with engine.connect() as conn:
            raw_before = (await conn.get_raw_connection()).dbapi_connection
            started = time.monotonic()
            with anyio.move_on_after(0.5) as scope:
                await conn.exec_driver_sql(LONG_QUERY[name])
            elapsed = time.monotonic() - started
            assert scope.cancelled_caught
            # The statement was stopped, not waited out (it runs 20 s or forever).
            assert elapsed < 10, elapsed
            assert _still_running(db_url, name) == 0
            assert not conn.in_transaction()
            assert await conn.scalar(sa.select(sa.literal(7))) == 7
            assert (await conn.get_raw_connection()).dbapi_connection is raw_before
        # pool_size=1: the same pooled connection serves the next checkout.
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.literal(8))) == 8
        assert engine.pool.checkedout() == 0
    finally:
        await engine.dispose()


async def test_cancel_rolls_back_the_transaction(db_url: str) -> None:
    engine = create_async_engine(db_url)
    name = engine.dialect.name
    try:
        async with engine.begin() as conn:
            await conn.run_sync(accounts.metadata.drop_all)
            await conn.run_sync(accounts.metadata.create_all)
        async with engine.connect() as conn:
            await conn.begin()
            await conn.execute(accounts.insert(), [{"id": 1, "balance": 10}])
            with anyio.move_on_after(0.3):
                await conn.exec_driver_sql(LONG_QUERY[name])
            assert not conn.in_transaction()
            assert await conn.scalar(sa.select(sa.func.count()).select_from(accounts)) == 0
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(accounts.metadata.drop_all)
        await engine.dispose()


async def test_interrupt_never_hits_a_later_statement(db_url: str) -> None:
    """Cancel at random moments around short statements: the next one always runs."""
    engine = create_async_engine(db_url, pool_size=1, max_overflow=0)
    rnd = random.Random(1234)
    cancelled = 0
    try:
        async with engine.connect() as conn:
            for i in range(40):
                with anyio.move_on_after(rnd.uniform(0, 0.004)) as scope:
                    await conn.scalar(sa.select(sa.literal(i)))
                cancelled += scope.cancelled_caught
                assert await conn.scalar(sa.select(sa.literal(i + 1000))) == i + 1000
        assert engine.pool.checkedout() == 0
    finally:
        await engine.dispose()


async def test_cancel_while_streaming(db_url: str) -> None:
    engine = create_async_engine(db_url, pool_size=1, max_overflow=0)
    series = sa.select(sa.literal_column("1"))
    name = engine.dialect.name
    if name == "postgresql":
        stmt = sa.text("SELECT g, pg_sleep(0.01) FROM generate_series(1, 5000) AS g")
    elif name == "mysql":
        stmt = sa.text(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000) "
            "SELECT x, SLEEP(0.01) FROM c"
        )
    else:
        stmt = sa.text(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"
        )
    try:
        async with engine.connect() as conn:
            seen = 0
            with anyio.move_on_after(0.5) as scope:
                result = await conn.stream(stmt)
                async for _ in result:
                    seen += 1
            assert scope.cancelled_caught
            assert await conn.scalar(series) == 1
        assert engine.pool.checkedout() == 0
    finally:
        await engine.dispose()


async def test_cancelled_commit_leaves_a_consistent_state(db_url: str) -> None:
    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(accounts.metadata.drop_all)
            await conn.run_sync(accounts.metadata.create_all)
        for i in range(10):
            async with engine.connect() as conn:
                await conn.begin()
                await conn.execute(accounts.insert(), [{"id": i, "balance": 1}])
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    await conn.commit()
                assert not conn.in_transaction()
        async with engine.connect() as conn:
            # Each commit either happened or was rolled back; the table is sane.
            n = await conn.scalar(sa.select(sa.func.count()).select_from(accounts))
            assert 0 <= n <= 10
        assert engine.pool.checkedout() == 0
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(accounts.metadata.drop_all)
        await engine.dispose()


async def test_connect_to_an_unresponsive_host_is_cancellable() -> None:
    """A server that accepts TCP but never answers: connect must still be cancellable."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    engine = create_async_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/test")
    baseline = _worker_threads()
    try:
        started = time.monotonic()
        with anyio.move_on_after(0.5) as scope:
            await engine.connect()
        assert scope.cancelled_caught
        assert time.monotonic() - started < 5
    finally:
        listener.close()  # the stuck driver connect now fails and its worker ends
        await engine.dispose()
    for _ in range(200):
        if _worker_threads() <= baseline:
            break
        await anyio.sleep(0.05)
    assert _worker_threads() <= baseline


async def _transfer(engine: AsyncEngine, rnd: random.Random, n_accounts: int) -> None:
    a, b = rnd.sample(range(n_accounts), 2)
    amount = rnd.randint(1, 5)
    async with engine.begin() as conn:
        await conn.execute(
            accounts.update().where(accounts.c.id == a).values(balance=accounts.c.balance - amount)
        )
        await anyio.sleep(rnd.uniform(0, 0.002))
        await conn.execute(
            accounts.update().where(accounts.c.id == b).values(balance=accounts.c.balance + amount)
        )


async def test_cancellation_storm(db_url: str) -> None:
    """200 transfers over a pool of 10, 30% cancelled at random: money is conserved."""
    engine = create_async_engine(db_url, pool_size=10, max_overflow=0, pool_timeout=60)
    n_accounts = 20
    baseline = _worker_threads()
    try:
        async with engine.begin() as conn:
            await conn.run_sync(accounts.metadata.drop_all)
            await conn.run_sync(accounts.metadata.create_all)
            await conn.execute(
                accounts.insert(), [{"id": i, "balance": 100} for i in range(n_accounts)]
            )
        rnd = random.Random(42)
        cancelled = 0
        deadlocks = 0

        async def one(seed: int) -> None:
            nonlocal cancelled, deadlocks
            r = random.Random(seed)
            try:
                if r.random() < 0.3:
                    with anyio.move_on_after(r.uniform(0, 0.02)) as scope:
                        await _transfer(engine, r, n_accounts)
                    cancelled += scope.cancelled_caught
                else:
                    await _transfer(engine, r, n_accounts)
            except sa.exc.DBAPIError:  # a lock conflict is the database's answer
                deadlocks += 1

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(one, rnd.randrange(1 << 30))

        assert engine.pool.checkedout() == 0
        async with engine.connect() as conn:
            total = await conn.scalar(sa.select(sa.func.sum(accounts.c.balance)))
        assert total == 100 * n_accounts
        assert cancelled > 0
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(accounts.metadata.drop_all)
        await engine.dispose()
    assert _worker_threads() <= baseline


async def test_cancelled_session_call_is_interrupted_and_rolled_back(db_url: str) -> None:
    from sqlalchemy_anyio import async_sessionmaker

    engine = create_async_engine(db_url, pool_size=1, max_overflow=0)
    name = engine.dialect.name
    try:
        async with engine.begin() as conn:
            await conn.run_sync(accounts.metadata.drop_all)
            await conn.run_sync(accounts.metadata.create_all)
        maker = async_sessionmaker(engine)
        async with maker() as session:
            await session.execute(accounts.insert(), [{"id": 1, "balance": 5}])
            started = time.monotonic()
            with anyio.move_on_after(0.5) as scope:
                await session.execute(sa.text(LONG_QUERY[name]))
            assert scope.cancelled_caught
            assert time.monotonic() - started < 10
            assert _still_running(db_url, name) == 0
            # The unit of work was rolled back; the session carries on.
            assert not session.in_transaction()
            assert await session.scalar(sa.select(sa.func.count()).select_from(accounts)) == 0

            # A flush cancelled at once: afterwards the session still works.
            await session.execute(
                accounts.insert(), [{"id": i, "balance": 1} for i in range(2, 400)]
            )
            with anyio.CancelScope() as cancelled:
                cancelled.cancel()
                await session.commit()
            n = await session.scalar(sa.select(sa.func.count()).select_from(accounts))
            assert n in (0, 398)
        assert engine.pool.checkedout() == 0
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(accounts.metadata.drop_all)
        await engine.dispose()
