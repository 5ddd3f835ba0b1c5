"""One bound on a cancelled call: statement, interrupt and recovery together.

A statement that ignores its interrupt (a slow SQL function in SQLite runs
in Python, between the points where SQLite checks for an interrupt) must
not hold a cancelled caller longer than the engine's ``cancel_timeout``;
past it the connection is invalidated, never used again, and the next
caller gets a fresh one.  A slow interrupt (MySQL's side connection waiting
on its connect hook) must not reach somebody else's statement.
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

pytestmark = pytest.mark.anyio

BOUND = 0.5
STATEMENT = 4.0
SLOW = sa.text(f"SELECT slow({STATEMENT})")
#: Control must come back well before the statement ends: the outer timeout,
#: the bound, and slack for a loaded machine.
WITHIN = 0.3 + BOUND + 1.7
assert WITHIN < STATEMENT


def _slow_sqlite(url: str, **kw: Any) -> tuple[AsyncEngine, list[int]]:
    """An engine whose connections know ``slow(seconds)``; records what connects."""
    engine = create_async_engine(url, cancel_timeout=BOUND, **kw)
    opened: list[int] = []

    @event.listens_for(engine.sync_engine, "connect")
    def add_slow(dbapi_connection: Any, record: Any) -> None:
        opened.append(id(dbapi_connection))
        dbapi_connection.create_function("slow", 1, lambda s: time.sleep(s) or s)

    return engine, opened


async def _bounded(body: Any, outer: float = 0.3) -> float:
    """Run ``body`` under move_on_after(outer); the seconds until control came back."""
    started = time.monotonic()
    with anyio.move_on_after(outer):
        await body()
    return time.monotonic() - started


async def test_cancelled_statement_is_bounded_then_written_off(sqlite_url: str) -> None:
    engine, opened = _slow_sqlite(sqlite_url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.literal(1))) == 1

        async def body() -> None:
            async with engine.connect() as conn:
                await conn.execute(SLOW)

        elapsed = await _bounded(body)
        assert elapsed < WITHIN, elapsed  # not the statement's full length
        # The connection stuck in the statement is never handed out again:
        # the next caller gets a new one, and its statements run untouched.
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.literal(2))) == 2
        assert len(opened) == 2
    finally:
        await engine.dispose()


async def _execute_inside(how: str, engine: Any, maker: Any, statement: Any) -> None:
    """Run ``statement`` inside a session, ``maker.begin()`` or an engine transaction."""
    if how == "session":
        async with maker() as session:
            await session.execute(statement)
    elif how == "maker_begin":
        async with maker.begin() as session:
            await session.execute(statement)
    else:
        async with engine.connect() as conn, conn.begin():
            await conn.execute(statement)


@pytest.mark.parametrize("how", ["session", "maker_begin", "transaction"])
async def test_closing_behind_a_stuck_statement_is_bounded(sqlite_url: str, how: str) -> None:
    """close()/__aexit__ queued behind a statement that ignores its interrupt."""
    engine, _ = _slow_sqlite(sqlite_url, pool_size=2, max_overflow=0)
    maker = async_sessionmaker(engine)
    try:

        async def body() -> None:
            await _execute_inside(how, engine, maker, SLOW)

        elapsed = await _bounded(body)
        assert elapsed < WITHIN, elapsed
        async with maker() as session:
            assert await session.scalar(sa.select(sa.literal(3))) == 3
        assert engine.pool.checkedout() == 0
    finally:
        await engine.dispose()


@pytest.mark.parametrize("how", ["session", "maker_begin", "transaction"])
async def test_way_out_behind_a_written_off_call_takes_one_bound(sqlite_url: str, how: str) -> None:
    """The rollback or close queued behind a written-off call is not waited
    for a second bound: control comes back one ``cancel_timeout`` after the
    cancellation, not two."""
    bound = 2.5
    release = threading.Event()
    engine = create_async_engine(sqlite_url, cancel_timeout=bound, pool_size=2, max_overflow=0)

    @event.listens_for(engine.sync_engine, "connect")
    def add_block(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.create_function("block", 0, lambda: release.wait(30) and 1)

    maker = async_sessionmaker(engine)
    block = sa.text("SELECT block()")
    try:

        async def body() -> None:
            await _execute_inside(how, engine, maker, block)

        elapsed = await _bounded(body)
        # 0.3 + one bound; two bounds would be 5.3 s
        assert elapsed < 0.3 + bound + 1.4, elapsed
        async with maker() as session:
            assert await session.scalar(sa.select(sa.literal(4))) == 4
        assert engine.pool.checkedout() == 0
    finally:
        release.set()
        await engine.dispose()


async def test_cancel_timeout_is_checked(sqlite_url: str) -> None:
    for bad in (0, -1, "soon"):
        with pytest.raises(sa.exc.ArgumentError, match="cancel_timeout"):
            create_async_engine(sqlite_url, cancel_timeout=bad)


async def test_mysql_cancel_connects_like_the_engine(mysql_url: str) -> None:
    """Host and port only in connect_args: the KILL QUERY connection finds them too."""
    url = sa.make_url(mysql_url)
    engine = create_async_engine(
        url.set(host=None, port=None),
        connect_args={"host": url.host, "port": url.port or 3306},
        pool_size=1,
        max_overflow=0,
    )
    try:
        async with engine.connect() as conn:
            started = time.monotonic()
            with anyio.move_on_after(0.5) as scope:
                await conn.exec_driver_sql("SELECT SLEEP(5)")
            assert scope.cancelled_caught
            assert time.monotonic() - started < 3.0  # not the statement's 5 s
            assert await conn.scalar(sa.select(sa.literal(5))) == 5
    finally:
        await engine.dispose()


async def test_late_interrupt_never_reaches_another_statement(mysql_url: str) -> None:
    """The KILL QUERY is slow to connect (past the bound): that connection is
    written off, and the next caller's statement is not killed."""
    engine = create_async_engine(mysql_url, pool_size=1, max_overflow=0, cancel_timeout=0.3)
    slow_interrupts = threading.Event()

    @event.listens_for(engine.sync_engine, "do_connect")
    def slow_side_connection(*args: Any) -> None:
        if threading.current_thread().name == "sqlalchemy-anyio-interrupt":
            slow_interrupts.set()
            time.sleep(1.5)

    try:
        async with engine.connect() as conn:
            victim_id = await conn.scalar(sa.text("SELECT CONNECTION_ID()"))
            with anyio.move_on_after(0.2):
                await conn.exec_driver_sql("SELECT SLEEP(2)")
        assert slow_interrupts.is_set()
        # Meanwhile the late KILL QUERY is still on its way: the only pooled
        # connection was written off, so this one is new, and not its target.
        async with engine.connect() as other:
            other_id = await other.scalar(sa.text("SELECT CONNECTION_ID()"))
            assert other_id != victim_id
            assert await other.scalar(sa.text("SELECT SLEEP(2) + 6")) == 6
    finally:
        await engine.dispose()


async def test_shared_worker_is_never_written_off() -> None:
    """In-memory SQLite has one connection on one shared worker.  A cancelled
    statement that outlives the bound must not retire that worker: a second
    thread on the same sqlite3 connection while the first still runs it is
    what the shared worker exists to prevent.  Later calls wait their turn."""
    engine, opened = _slow_sqlite("sqlite://")
    threads: list[int] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def record_thread(*args: Any) -> None:
        threads.append(threading.get_ident())

    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
            await conn.commit()

        async def body() -> None:
            async with engine.connect() as conn:
                await conn.execute(SLOW)

        elapsed = await _bounded(body)
        assert elapsed < WITHIN, elapsed
        async with engine.connect() as conn:
            # The table is still there: same in-memory database, same connection.
            assert await conn.scalar(sa.text("SELECT count(*) FROM t")) == 0
        assert len(opened) == 1
        assert len(set(threads)) == 1, "the shared connection ran on two threads"
    finally:
        await engine.dispose()
