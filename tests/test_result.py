"""The streaming result API: AsyncResult, AsyncScalarResult, AsyncMappingResult."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import FrozenResult, RowMapping

from sqlalchemy_anyio import (
    AsyncConnection,
    AsyncEngine,
    AsyncMappingResult,
    AsyncResult,
    AsyncScalarResult,
    AsyncTupleResult,
)

pytestmark = pytest.mark.anyio

DATA = [(1, "a", 10), (2, "b", 20), (3, "b", 30), (4, "c", 40), (5, "a", 50)]


@pytest.fixture
async def table(engine: AsyncEngine, metadata: sa.MetaData) -> AsyncIterator[sa.Table]:
    """A fresh ``eng_`` table holding DATA (unique name: servers are shared)."""
    t = sa.Table(
        f"eng_result_{uuid.uuid4().hex[:10]}",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(30)),
        sa.Column("score", sa.Integer),
    )
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        rows = [dict(zip(("id", "name", "score"), r, strict=True)) for r in DATA]
        await conn.execute(t.insert(), rows)
    try:
        yield t
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)


@pytest.fixture
async def conn(engine: AsyncEngine, table: sa.Table) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as connection:
        yield connection


def _ordered(table: sa.Table, *where: sa.ColumnElement[bool]) -> sa.Select[tuple[int, str, int]]:
    return sa.select(table).where(*where).order_by(table.c.id)


# -- AsyncResult --------------------------------------------------------------------


async def test_fetchone_fetchmany_fetchall(conn: AsyncConnection, table: sa.Table) -> None:
    result = await conn.stream(_ordered(table))
    assert isinstance(result, AsyncResult)
    row = await result.fetchone()
    assert row is not None and tuple(row) == DATA[0]
    assert row.name == "a" and row._mapping["score"] == 10
    assert [tuple(r) for r in await result.fetchmany(2)] == DATA[1:3]
    assert [tuple(r) for r in await result.fetchall()] == DATA[3:]
    assert await result.fetchone() is None
    assert await result.fetchmany(3) == []
    await result.close()


async def test_all_first_and_close(conn: AsyncConnection, table: sa.Table) -> None:
    result = await conn.stream(_ordered(table))
    assert [tuple(r) for r in await result.all()] == DATA
    await result.close()

    result = await conn.stream(_ordered(table))
    first = await result.first()
    assert first is not None and tuple(first) == DATA[0]
    assert result.closed  # first() closes the result
    with pytest.raises(sa.exc.ResourceClosedError):
        await result.fetchone()

    result = await conn.stream(_ordered(table, table.c.id > 100))
    assert await result.first() is None

    result = await conn.stream(_ordered(table))
    assert not result.closed
    await result.close()
    assert result.closed
    with pytest.raises(sa.exc.ResourceClosedError):
        await result.fetchall()


async def test_one_and_scalar_variants(conn: AsyncConnection, table: sa.Table) -> None:
    one = await conn.stream(_ordered(table, table.c.id == 2))
    assert tuple(await one.one()) == DATA[1]

    with pytest.raises(sa.exc.MultipleResultsFound):
        await (await conn.stream(_ordered(table))).one()
    with pytest.raises(sa.exc.NoResultFound):
        await (await conn.stream(_ordered(table, table.c.id > 100))).one()

    none = await conn.stream(_ordered(table, table.c.id > 100))
    assert await none.one_or_none() is None
    with pytest.raises(sa.exc.MultipleResultsFound):
        await (await conn.stream(_ordered(table))).one_or_none()
    found = await (await conn.stream(_ordered(table, table.c.id == 4))).one_or_none()
    assert found is not None and found.name == "c"

    assert await (await conn.stream(_ordered(table))).scalar() == 1
    assert await (await conn.stream(_ordered(table, table.c.id > 100))).scalar() is None
    assert await (await conn.stream(_ordered(table, table.c.id == 3))).scalar_one() == 3
    with pytest.raises(sa.exc.MultipleResultsFound):
        await (await conn.stream(_ordered(table))).scalar_one()
    with pytest.raises(sa.exc.NoResultFound):
        await (await conn.stream(_ordered(table, table.c.id > 100))).scalar_one()
    empty = await conn.stream(_ordered(table, table.c.id > 100))
    assert await empty.scalar_one_or_none() is None
    assert await (await conn.stream(_ordered(table, table.c.id == 5))).scalar_one_or_none() == 5
    with pytest.raises(sa.exc.MultipleResultsFound):
        await (await conn.stream(_ordered(table))).scalar_one_or_none()


async def test_keys_columns_tuples(conn: AsyncConnection, table: sa.Table) -> None:
    result = await conn.stream(_ordered(table))
    assert list(result.keys()) == ["id", "name", "score"]
    narrowed = result.columns("score", table.c.id)
    assert narrowed is result
    assert list(result.keys()) == ["score", "id"]
    assert [tuple(r) for r in await result.fetchmany(2)] == [(10, 1), (20, 2)]
    await result.close()

    result = await conn.stream(_ordered(table))
    tuples = result.tuples()
    assert isinstance(tuples, AsyncTupleResult)
    assert [tuple(r) for r in await tuples.all()] == DATA
    result = await conn.stream(_ordered(table))
    assert isinstance(result.t, AsyncTupleResult)
    assert tuple(await result.t.fetchone()) == DATA[0]
    await result.close()


async def test_unique(conn: AsyncConnection, table: sa.Table) -> None:
    result = await conn.stream(sa.select(table.c.name).order_by(table.c.id))
    assert result.unique() is result
    assert [r.name for r in await result.all()] == ["a", "b", "c"]

    result = await conn.stream(sa.select(table.c.name, table.c.score).order_by(table.c.id))
    unique_by_name = result.unique(lambda row: row[0])
    assert [r.score for r in await unique_by_name.all()] == [10, 20, 40]


async def test_freeze(conn: AsyncConnection, table: sa.Table) -> None:
    result = await conn.stream(_ordered(table))
    frozen = await result.freeze()
    assert isinstance(frozen, FrozenResult)
    assert [tuple(r) for r in frozen().all()] == DATA
    assert [tuple(r) for r in frozen().all()] == DATA  # replayable
    await result.close()


async def test_async_iteration(conn: AsyncConnection, table: sa.Table) -> None:
    result = await conn.stream(_ordered(table))
    assert [tuple(r) async for r in result] == DATA
    assert [r async for r in result] == []
    await result.close()

    # Rows fetched ahead by iteration are still handed out by fetch methods.
    result = await conn.stream(_ordered(table))
    async for row in result:
        assert row.id == 1
        break
    assert [r.id for r in await result.fetchmany(2)] == [2, 3]
    assert [r.id for r in await result.fetchall()] == [4, 5]
    await result.close()


async def test_yield_per_and_partitions(conn: AsyncConnection, table: sa.Table) -> None:
    result = await conn.stream(_ordered(table))
    assert result.yield_per(2) is result
    parts = [[r.id for r in p] async for p in result.partitions()]
    assert parts == [[1, 2], [3, 4], [5]]
    await result.close()

    result = await conn.stream(_ordered(table))
    parts = [[r.id for r in p] async for p in result.partitions(4)]
    assert parts == [[1, 2, 3, 4], [5]]
    await result.close()

    result = await conn.stream(_ordered(table))
    result.yield_per(3)
    assert [r.id async for r in result] == [1, 2, 3, 4, 5]
    await result.close()


async def test_reshaping_after_iteration_began_continues_where_it_was(
    conn: AsyncConnection, table: sa.Table
) -> None:
    """As the sync Result: the rows read ahead are not lost (see test_parity)."""
    result = await conn.stream(_ordered(table))
    async for _ in result:
        break
    assert await result.scalars().all() == [2, 3, 4, 5]


# -- AsyncScalarResult ------------------------------------------------------------


async def test_scalar_result(conn: AsyncConnection, table: sa.Table) -> None:
    scalars = (await conn.stream(_ordered(table))).scalars()
    assert isinstance(scalars, AsyncScalarResult)
    assert await scalars.fetchmany(2) == [1, 2]
    assert await scalars.fetchall() == [3, 4, 5]
    assert await scalars.fetchmany(2) == []

    names = (await conn.stream(_ordered(table))).scalars("name")
    assert await names.all() == ["a", "b", "b", "c", "a"]
    scores = (await conn.stream(_ordered(table))).scalars(2)
    assert await scores.first() == 10
    assert scores.closed

    unique = (await conn.stream(_ordered(table))).scalars(1).unique()
    assert [n async for n in unique] == ["a", "b", "c"]

    parts = (await conn.stream(_ordered(table))).scalars()
    assert [list(p) async for p in parts.partitions(2)] == [[1, 2], [3, 4], [5]]

    single = (await conn.stream(_ordered(table, table.c.id == 4))).scalars()
    assert await single.one() == 4
    empty = (await conn.stream(_ordered(table, table.c.id > 100))).scalars()
    assert await empty.one_or_none() is None
    with pytest.raises(sa.exc.NoResultFound):
        await (await conn.stream(_ordered(table, table.c.id > 100))).scalars().one()
    with pytest.raises(sa.exc.MultipleResultsFound):
        await (await conn.stream(_ordered(table))).scalars().one()
    with pytest.raises(sa.exc.MultipleResultsFound):
        await (await conn.stream(_ordered(table))).scalars().one_or_none()

    closing = (await conn.stream(_ordered(table))).scalars()
    assert not closing.closed
    await closing.close()
    assert closing.closed


# -- AsyncMappingResult -----------------------------------------------------------


async def test_mapping_result(conn: AsyncConnection, table: sa.Table) -> None:
    mappings = (await conn.stream(_ordered(table))).mappings()
    assert isinstance(mappings, AsyncMappingResult)
    assert list(mappings.keys()) == ["id", "name", "score"]
    first = await mappings.fetchone()
    assert isinstance(first, RowMapping)
    assert dict(first) == {"id": 1, "name": "a", "score": 10}
    assert [m["id"] for m in await mappings.fetchmany(2)] == [2, 3]
    assert [m["id"] for m in await mappings.fetchall()] == [4, 5]
    assert await mappings.fetchone() is None

    every = (await conn.stream(_ordered(table))).mappings()
    assert [m["name"] for m in await every.all()] == ["a", "b", "b", "c", "a"]

    narrowed = (await conn.stream(_ordered(table))).mappings().columns("name")
    assert list(narrowed.keys()) == ["name"]
    assert [dict(m) async for m in narrowed.unique()] == [
        {"name": "a"},
        {"name": "b"},
        {"name": "c"},
    ]

    parts = (await conn.stream(_ordered(table))).mappings()
    assert [[m["id"] for m in p] async for p in parts.partitions(3)] == [[1, 2, 3], [4, 5]]

    head = (await conn.stream(_ordered(table))).mappings()
    assert (await head.first()) == {"id": 1, "name": "a", "score": 10}
    assert head.closed

    one = await (await conn.stream(_ordered(table, table.c.id == 2))).mappings().one()
    assert one["name"] == "b"
    empty = (await conn.stream(_ordered(table, table.c.id > 100))).mappings()
    assert await empty.one_or_none() is None
    with pytest.raises(sa.exc.NoResultFound):
        await (await conn.stream(_ordered(table, table.c.id > 100))).mappings().one()
    with pytest.raises(sa.exc.MultipleResultsFound):
        await (await conn.stream(_ordered(table))).mappings().one()

    closing = (await conn.stream(_ordered(table))).mappings()
    await closing.close()
    assert closing.closed


async def test_stream_scalars_view(conn: AsyncConnection, table: sa.Table) -> None:
    async with conn.stream_scalars(sa.select(table.c.score).order_by(table.c.id)) as scores:
        assert isinstance(scores, AsyncScalarResult)
        assert await scores.fetchmany(1) == [10]
        assert [s async for s in scores] == [20, 30, 40, 50]
    assert scores.closed
