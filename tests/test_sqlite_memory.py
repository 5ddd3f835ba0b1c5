"""An in-memory SQLite URL is one database for the whole engine, on any worker."""

from __future__ import annotations

import anyio
import pytest
import sqlalchemy as sa

from sqlalchemy_anyio import create_async_engine

pytestmark = pytest.mark.anyio

MEMORY_URLS = ["sqlite://", "sqlite:///:memory:", "sqlite+aiosqlite://"]


def _table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "eng_memory",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(20)),
    )


@pytest.mark.parametrize("url", MEMORY_URLS)
async def test_table_visible_from_other_connections(url: str, metadata: sa.MetaData) -> None:
    table = _table(metadata)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(table.insert(), [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
        async with engine.connect() as conn:
            names = await conn.scalars(sa.select(table.c.name).order_by(table.c.id))
            assert names.all() == ["a", "b"]
        # Execution-option copies of the engine share the database, too.
        async with engine.execution_options(eng_copy=True).connect() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(table)) == 2
    finally:
        await engine.dispose()


@pytest.mark.parametrize("url", MEMORY_URLS)
async def test_tasks_share_one_database(url: str, metadata: sa.MetaData) -> None:
    """Tasks of a task group, taking turns, all see the one database."""
    table = _table(metadata)
    engine = create_async_engine(url)
    turn = anyio.Lock()
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

        async def insert(i: int) -> None:
            async with turn, engine.begin() as conn:
                await conn.execute(table.insert(), {"id": i, "name": f"t{i}"})

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(insert, i)

        seen: list[int] = []

        async def count() -> None:
            async with turn, engine.connect() as conn:
                seen.append(await conn.scalar(sa.select(sa.func.count()).select_from(table)))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(count)
        assert seen == [10] * 5
    finally:
        await engine.dispose()


@pytest.mark.parametrize("url", MEMORY_URLS)
async def test_concurrent_connections_share_one_database(url: str, metadata: sa.MetaData) -> None:
    """StaticPool's one sqlite3 connection meets one (shared) worker thread only.

    All connections share one DBAPI connection, so their transactions are not
    isolated from each other (as with aiosqlite): autocommit makes each write
    stand on its own.
    """
    table = _table(metadata)
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

        async def insert(i: int) -> None:
            async with engine.begin() as conn:
                await conn.execute(table.insert(), {"id": i, "name": f"t{i}"})
                await anyio.sleep(0)  # let the other tasks' connections overlap

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(insert, i)
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(table)) == 10
    finally:
        await engine.dispose()


async def test_separate_engines_have_separate_databases(metadata: sa.MetaData) -> None:
    table = _table(metadata)
    first = create_async_engine("sqlite://")
    second = create_async_engine("sqlite://")
    try:
        async with first.begin() as conn:
            await conn.run_sync(metadata.create_all)
        async with second.connect() as conn:
            names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        assert table.name not in names
    finally:
        await first.dispose()
        await second.dispose()


@pytest.mark.parametrize("url", MEMORY_URLS)
async def test_overlapping_use_and_cancellation_are_serialized(
    url: str, metadata: sa.MetaData
) -> None:
    """Many tasks, streams and cancellations on the one shared connection: no crash,
    every surviving query answers correctly, and the database is still there."""
    table = _table(metadata)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(table.insert(), [{"id": i, "name": f"r{i}"} for i in range(200)])

        async def reader(seed: int) -> None:
            for i in range(15):
                with anyio.move_on_after(0.0005 * ((seed + i) % 4)):
                    async with engine.connect() as conn:
                        n = await conn.scalar(sa.select(sa.func.count()).select_from(table))
                        assert n == 200
                        async with conn.stream(sa.select(table.c.id)) as result:
                            ids = [row.id async for row in result]
                        assert ids == list(range(200))

        async with anyio.create_task_group() as tg:
            for seed in range(12):
                tg.start_soon(reader, seed)
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(table)) == 200
    finally:
        await engine.dispose()
