"""After a write-off, the next call on the same connection or session is bounded too.

A statement that ignores its interrupt (a Python function inside SQLite, a
blocking bind parameter processor before a server statement is even sent)
is written off after ``cancel_timeout``: control returns to the cancelled
task.  What the task does next on the same AsyncConnection or AsyncSession
must not queue behind the stuck statement without a bound: it fails at once
with ``ConnectionWrittenOff``, closes are queued behind it without waiting,
the engine keeps serving other connections, and once the statement ends
nothing is left behind.
"""

from __future__ import annotations

import contextvars
import threading
import time
from typing import Any, AsyncIterator, Callable, Optional

import anyio
import anyio.from_thread
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlalchemy_anyio import (
    AsyncEngine,
    ConnectionWrittenOff,
    async_sessionmaker,
    await_,
    create_async_engine,
)

pytestmark = pytest.mark.anyio

BOUND = 0.3
#: The issue's bound on the next call after a write-off.
WITHIN = 2.0
BLOCK = sa.text("SELECT block()")
ONE = sa.select(sa.literal(1))

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "written_off_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(default="")


class Stuck:
    """``block()`` in SQL: stays in Python (out of reach of sqlite3's
    interrupt) until :meth:`release`; records the threads it ran on."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.entered = threading.Event()
        self.threads: list[threading.Thread] = []

    def __call__(self) -> int:
        self.threads.append(threading.current_thread())
        self.entered.set()
        self.released.wait(30)
        return 1

    def release(self) -> None:
        self.released.set()


@pytest.fixture
async def stuck_engine(sqlite_url: str) -> AsyncIterator[tuple[AsyncEngine, Stuck]]:
    engine = create_async_engine(sqlite_url, cancel_timeout=BOUND, pool_size=3, max_overflow=0)
    stuck = Stuck()

    @event.listens_for(engine.sync_engine, "connect")
    def add_block(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.create_function("block", 0, stuck)

    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        yield engine, stuck
    finally:
        stuck.release()
        await engine.dispose()


async def _write_off(call: Callable[[], Any]) -> None:
    """Run ``call`` (a statement that blocks) under a short timeout; control
    comes back after the timeout and the bound."""
    with anyio.move_on_after(0.2) as scope:
        await call()
    assert scope.cancelled_caught


async def _within(call: Callable[[], Any], error: Optional[type] = ConnectionWrittenOff) -> Any:
    """``call()`` returns, or raises ``error``, within the issue's bound."""
    started = time.monotonic()
    result = None
    if error is None:
        result = await call()
    else:
        with pytest.raises(error):
            await call()
    elapsed = time.monotonic() - started
    assert elapsed < WITHIN, elapsed
    return result


async def _settled(
    engine: AsyncEngine, stuck: Stuck, condition: Callable[[], bool] = lambda: True
) -> None:
    """Release the stuck statement; then its worker thread ends and no
    connection stays checked out."""
    stuck.release()
    with anyio.fail_after(20):
        while (
            any(t.is_alive() for t in stuck.threads)
            or engine.sync_engine.pool.checkedout()  # type: ignore[attr-defined]
            or not condition()
        ):
            await anyio.sleep(0.02)


async def test_next_call_on_the_connection(stuck_engine: tuple[AsyncEngine, Stuck]) -> None:
    engine, stuck = stuck_engine
    async with engine.connect() as conn:
        assert await conn.scalar(ONE) == 1
        await _write_off(lambda: conn.execute(BLOCK))
        await _within(lambda: conn.execute(ONE))
        await _within(lambda: conn.scalar(ONE))
        await _within(lambda: conn.exec_driver_sql("SELECT 1"))
        await _within(lambda: conn.commit())
        await _within(lambda: conn.stream(ONE))
        await _within(lambda: conn.run_sync(lambda c: c.scalar(ONE)))
        # Meanwhile the engine serves its other connections.
        async with engine.connect() as other:
            assert await other.scalar(sa.select(sa.literal(2))) == 2
        await _within(conn.rollback)  # a statement here: only close() is queued
        # Leaving the block closes without waiting for the stuck statement.
        started = time.monotonic()
    assert time.monotonic() - started < WITHIN
    await _settled(engine, stuck)
    async with engine.connect() as conn:
        assert await conn.scalar(ONE) == 1


async def test_engine_begin_way_out(stuck_engine: tuple[AsyncEngine, Stuck]) -> None:
    """Leaving ``engine.begin()`` normally commits: that cannot happen, and
    says so at once; the connection is closed behind the stuck statement."""
    engine, stuck = stuck_engine

    async def block_inside() -> None:
        async with engine.begin() as conn:
            await _write_off(lambda: conn.execute(BLOCK))

    await _within(block_inside)
    await _settled(engine, stuck)


async def test_dispose_does_not_wait_for_the_stuck_statement(
    stuck_engine: tuple[AsyncEngine, Stuck],
) -> None:
    engine, stuck = stuck_engine
    async with engine.connect() as conn:
        await _write_off(lambda: conn.execute(BLOCK))
    await _within(engine.dispose, None)
    async with engine.connect() as conn:  # a disposed engine opens anew
        assert await conn.scalar(ONE) == 1
    await _settled(engine, stuck)


async def test_stream_opened_before(stuck_engine: tuple[AsyncEngine, Stuck]) -> None:
    engine, stuck = stuck_engine
    async with engine.connect() as conn:
        await conn.execute(sa.insert(Item.__table__), [{"id": i} for i in range(1, 4)])
        result = await conn.stream(sa.select(Item.__table__.c.id).order_by(Item.__table__.c.id))
        assert await result.fetchone() == (1,)
        await _write_off(lambda: conn.execute(BLOCK))
        await _within(result.fetchone)
        await _within(result.partitions().__anext__)
        await _within(result.close, None)
    await _settled(engine, stuck)


async def test_next_call_on_the_session(stuck_engine: tuple[AsyncEngine, Stuck]) -> None:
    engine, stuck = stuck_engine
    maker = async_sessionmaker(engine, expire_on_commit=False)
    session = maker()
    item = Item(id=1, name="kept")
    session.add(item)
    await session.flush()
    await _write_off(lambda: session.execute(BLOCK))
    await _within(lambda: session.execute(ONE))
    await _within(lambda: session.scalar(ONE))
    await _within(lambda: session.get(Item, 1))
    await _within(lambda: session.stream(ONE))
    await _within(session.commit)
    await _within(session.flush)
    await _within(lambda: session.run_sync(lambda s: s.scalar(ONE)))
    # The sync Session is still in use on the worker: its state is off limits.
    with pytest.raises(ConnectionWrittenOff):
        session.add(Item(id=2))
    with pytest.raises(ConnectionWrittenOff):
        len(session.identity_map)
    with pytest.raises(ConnectionWrittenOff):
        item in session  # noqa: B015
    # Meanwhile the engine serves other sessions.
    async with maker() as other:
        assert await other.scalar(sa.select(sa.literal(2))) == 2
    # close() queues behind the stuck statement and returns at once ...
    await _within(session.close, None)
    # ... and until that close has run the session stays off limits.
    with pytest.raises(ConnectionWrittenOff):
        session.add(Item(id=3))
    await _within(lambda: session.execute(ONE))

    def closed() -> bool:
        return session._pending_end is None or session._pending_end.done

    await _settled(engine, stuck, closed)
    # Then it is usable again, as after any close().
    assert len(session.identity_map) == 0
    session.add(Item(id=4, name="new"))
    await session.commit()
    assert await session.scalar(sa.select(sa.func.count()).select_from(Item)) == 1
    await session.close()
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["maker_begin", "session_begin"])
async def test_session_way_out(stuck_engine: tuple[AsyncEngine, Stuck], how: str) -> None:
    """Leaving a session's transaction normally commits: refused at once."""
    engine, stuck = stuck_engine
    maker = async_sessionmaker(engine)

    async def block_inside() -> None:
        if how == "maker_begin":
            async with maker.begin() as session:
                await _write_off(lambda: session.execute(BLOCK))
        else:
            async with maker() as session, session.begin():
                await _write_off(lambda: session.execute(BLOCK))

    await _within(block_inside)
    async with maker() as other:
        assert await other.scalar(ONE) == 1
    await _settled(engine, stuck)


async def test_sync_methods_after_a_close_handed_on(sqlite_url: str) -> None:
    """Under pool contention close() hands the worker on with the close queued;
    it still waits for that close, so the session is consistent right after."""
    engine = create_async_engine(sqlite_url, pool_size=1, max_overflow=0)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    maker = async_sessionmaker(engine)
    ended: list[bool] = []

    try:
        session = maker()

        @event.listens_for(session.sync_session, "after_transaction_end")
        def slow_end(sess: Any, trans: Any) -> None:
            if trans.parent is None:
                time.sleep(0.3)  # the close is still running when close() hands on
                ended.append(True)

        session.add(Item(id=1))
        await session.flush()
        async with anyio.create_task_group() as tg:
            waiting = anyio.Event()

            async def other() -> None:
                waiting.set()
                async with engine.connect() as conn:
                    assert await conn.scalar(ONE) == 1

            tg.start_soon(other)
            await waiting.wait()
            await anyio.sleep(0.05)  # the other task waits for the connection
            await session.close()
            assert ended == [True]
            assert len(session.identity_map) == 0
            assert not session.in_transaction()
            session.add(Item(id=2))
            assert len(session.new) == 1
        await session.close()
    finally:
        await engine.dispose()


async def test_background_close_has_the_task_context(
    stuck_engine: tuple[AsyncEngine, Stuck],
) -> None:
    """A close queued behind a written-off statement runs, later, in the
    queuing task's context and with the way back to the loop."""
    engine, stuck = stuck_engine
    maker = async_sessionmaker(engine)
    seen: list[Any] = []
    session = maker()

    @event.listens_for(session.sync_session, "after_transaction_end")
    def listener(sess: Any, trans: Any) -> None:
        if trans.parent is None:
            seen.append(marker.get())
            seen.append(anyio.from_thread.run_sync(lambda: "from_thread"))
            seen.append(await_(_answer()))

    await _write_off(lambda: session.execute(BLOCK))
    marker.set("queuer")
    await _within(session.close, None)
    marker.set("changed later")
    await _settled(engine, stuck, lambda: bool(seen))
    assert seen == ["queuer", "from_thread", "await_"]


async def _answer() -> str:
    await anyio.sleep(0)
    return "await_"


class _Blocking(sa.types.TypeDecorator[str]):
    """A bind parameter whose processing blocks in Python, before the
    statement reaches the server: a server-side cancel cannot stop it."""

    impl = sa.String
    cache_ok = True
    #: Set by the test (types are copied per dialect: a class attribute).
    stuck: Optional[Stuck] = None

    def process_bind_param(self, value: Optional[str], dialect: Any) -> Optional[str]:
        stuck = _Blocking.stuck
        if value == "block" and stuck is not None:
            stuck()
        return value


async def test_server_statement_that_ignores_cancel(server_url: str) -> None:
    engine = create_async_engine(server_url, cancel_timeout=BOUND, pool_size=2, max_overflow=0)
    stuck = _Blocking.stuck = Stuck()
    statement = sa.select(sa.bindparam("v", type_=_Blocking()))
    maker = async_sessionmaker(engine)
    try:
        async with engine.connect() as conn:
            await _write_off(lambda: conn.execute(statement, {"v": "block"}))
            await _within(lambda: conn.execute(ONE))
            async with engine.connect() as other:
                assert await other.scalar(ONE) == 1
        await _settled(engine, stuck)

        stuck = _Blocking.stuck = Stuck()
        session = maker()
        await _write_off(lambda: session.execute(statement, {"v": "block"}))
        await _within(lambda: session.execute(ONE))
        await _within(session.close, None)
        await _within(lambda: session.execute(ONE))
        await _settled(engine, stuck)
        assert await session.scalar(sa.select(sa.literal(7))) == 7
        await session.close()
    finally:
        stuck.release()
        _Blocking.stuck = None
        await engine.dispose()


async def test_postgresql_cancel_stops_a_blocked_lock(postgresql_url: str) -> None:
    """A lock wait is a statement the server can cancel: no write-off."""
    engine = create_async_engine(postgresql_url, cancel_timeout=5, pool_size=2, max_overflow=0)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS written_off_lock (id int)")
        async with engine.connect() as holder, engine.connect() as waiter:
            await holder.exec_driver_sql("LOCK TABLE written_off_lock IN ACCESS EXCLUSIVE MODE")

            async def lock() -> None:
                await waiter.exec_driver_sql("LOCK TABLE written_off_lock IN ACCESS EXCLUSIVE MODE")

            started = time.monotonic()
            await _write_off(lock)
            assert time.monotonic() - started < WITHIN
            assert await _within(lambda: waiter.scalar(ONE), None) == 1
            await holder.rollback()
        assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
