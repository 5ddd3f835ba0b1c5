"""Wrong uses of the Core API fail loudly, with the official exception types."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from sqlalchemy_anyio import (
    AsyncContextAlreadyStarted,
    AsyncContextNotStarted,
    AsyncEngine,
    AsyncMethodRequired,
    create_async_engine,
)
from sqlalchemy_anyio import exc as async_exc

pytestmark = pytest.mark.anyio

ONE = sa.select(sa.literal(1))


async def test_connection_never_started(engine: AsyncEngine) -> None:
    conn = engine.connect()
    with pytest.raises(AsyncContextNotStarted, match="AsyncConnection context has not been"):
        await conn.execute(ONE)
    with pytest.raises(AsyncContextNotStarted):
        await conn.scalar(ONE)
    with pytest.raises(AsyncContextNotStarted):
        conn.in_transaction()
    with pytest.raises(AsyncContextNotStarted):
        conn.begin()
    with pytest.raises(AsyncContextNotStarted):
        await conn.run_sync(lambda c: None)
    with pytest.raises(AsyncContextNotStarted):
        conn.closed  # noqa: B018 - the property raises
    assert engine.pool.checkedout() == 0
    await conn.close()  # closing what never started is harmless


async def test_transaction_never_started(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        trans = conn.begin()
        with pytest.raises(AsyncContextNotStarted, match="AsyncTransaction"):
            trans.is_active  # noqa: B018 - the property raises
        with pytest.raises(AsyncContextNotStarted):
            await trans.commit()
        assert not conn.in_transaction()


async def test_starting_twice(engine: AsyncEngine) -> None:
    assert issubclass(AsyncContextAlreadyStarted, sa.exc.InvalidRequestError)
    async with engine.connect() as conn:
        with pytest.raises(AsyncContextAlreadyStarted):
            await conn.start()
        with pytest.raises(AsyncContextAlreadyStarted):
            await conn
        assert await conn.scalar(ONE) == 1
        assert engine.pool.checkedout() == 1


async def test_connection_attribute_is_refused(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        with pytest.raises(sa.exc.InvalidRequestError, match="get_raw_connection"):
            conn.connection  # noqa: B018 - the property raises


async def test_execute_after_close(db_url: str) -> None:
    engine = create_async_engine(db_url, pool_size=2, max_overflow=0, pool_timeout=30)
    try:
        conn = await engine.connect()
        await conn.close()
        async with engine.connect() as a, engine.connect() as b:
            # Every worker and connection is taken: the closed connection
            # must fail at once, without waiting for (or keeping) a worker.
            with pytest.raises(sa.exc.ResourceClosedError):
                await conn.execute(ONE)
            with pytest.raises(sa.exc.ResourceClosedError):
                await conn.exec_driver_sql("SELECT 1")
            with pytest.raises(sa.exc.ResourceClosedError):
                await conn.stream(ONE)
            with pytest.raises(sa.exc.ResourceClosedError):
                await conn.get_raw_connection()
            await conn.rollback()  # nothing to roll back: a no-op, as in SQLAlchemy
            assert await a.scalar(ONE) == 1 and await b.scalar(ONE) == 1
        # The failed calls held on to nothing: both slots are free again.
        async with engine.connect() as a, engine.connect() as b:
            assert await a.scalar(ONE) == 1 and await b.scalar(ONE) == 1
    finally:
        await engine.dispose()


async def test_stream_results_needs_stream(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        with pytest.raises(AsyncMethodRequired, match=r"stream\(\)"):
            await conn.execute(ONE, execution_options={"stream_results": True})
        with pytest.raises(AsyncMethodRequired, match=r"stream\(\)"):
            await conn.exec_driver_sql("SELECT 1", execution_options={"stream_results": True})
        # The connection is still fine, and stream() does the job.
        assert await conn.scalar(ONE) == 1
        async with conn.stream(ONE) as result:
            assert await result.scalar() == 1


def test_server_side_cursors_refused(db_url: str) -> None:
    with pytest.raises(AsyncMethodRequired, match=r"stream\(\)"):
        create_async_engine(db_url, server_side_cursors=True)


def test_async_creator_refused(db_url: str) -> None:
    async def creator() -> object:
        raise AssertionError("never called")

    with pytest.raises(sa.exc.ArgumentError, match="creator"):
        create_async_engine(db_url, async_creator=creator)


async def test_engine_events_not_implemented(engine: AsyncEngine) -> None:
    def listener(*args: object) -> None:
        raise AssertionError("never called")

    for name in ("before_execute", "connect", "checkout"):
        with pytest.raises(NotImplementedError, match="sync_engine"):
            event.listen(engine, name, listener)
    async with engine.connect() as conn:
        with pytest.raises(NotImplementedError):
            event.listen(conn, "before_execute", listener)
    # Listeners on the sync engine are the supported route.
    seen: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SELECT 1")
    assert any("SELECT 1" in s for s in seen)


async def test_engine_works_after_dispose(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.scalar(ONE) == 1
    await engine.dispose()
    async with engine.connect() as conn:
        assert await conn.scalar(ONE) == 1
    await engine.dispose()
    await engine.dispose()  # twice in a row, too
    async with engine.begin() as conn:
        assert await conn.scalar(ONE) == 1


def test_exception_hierarchy() -> None:
    for cls in (
        async_exc.AsyncMethodRequired,
        async_exc.AsyncContextNotStarted,
        async_exc.AsyncContextAlreadyStarted,
        async_exc.AsyncBindNotFound,
    ):
        assert issubclass(cls, sa.exc.InvalidRequestError)
    assert issubclass(async_exc.WorkerThreadRequired, sa.exc.MissingGreenlet)
