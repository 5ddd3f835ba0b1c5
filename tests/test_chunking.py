"""Results fetched in chunks on the worker are the results SQLAlchemy gives.

Big results are fetched ``CHUNK_ROWS`` rows at a time (see ``_chunk``); these
tests use a table of a little more than two chunks and compare every way of
reading it with plain SQLAlchemy run on the same connection (``run_sync``):
row counts, order, unique(), partitions, yield_per, and an error raised by a
row past the first chunk.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    mapped_column,
    relationship,
)

from sqlalchemy_anyio import AsyncEngine, AsyncSession, _chunk, exc

pytestmark = pytest.mark.anyio

ROWS = 2 * _chunk.CHUNK_ROWS + 37  # crosses two chunk boundaries, ends mid-chunk
BAD_ROW = _chunk.CHUNK_ROWS + 5  # the row whose expression fails


@pytest.fixture
async def models(engine: AsyncEngine) -> AsyncIterator[Any]:
    """Fresh mapped classes (unique table names: servers are shared), filled."""
    suffix = uuid.uuid4().hex[:10]

    class Base(DeclarativeBase):
        pass

    class Parent(Base):
        __tablename__ = f"chunk_parent_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(sa.String(30))
        grp: Mapped[int]
        children: Mapped[list[Child]] = relationship(order_by="Child.id")

    class Child(Base):
        __tablename__ = f"chunk_child_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        parent_id: Mapped[int] = mapped_column(sa.ForeignKey(Parent.id))

    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(
            sa.insert(Parent),
            [{"id": i, "name": f"p{i}", "grp": i % 7} for i in range(1, ROWS + 1)],
        )
        # Two children per parent: a joined load has 2 * ROWS rows.
        await conn.execute(
            sa.insert(Child),
            [{"id": 2 * i + k, "parent_id": i} for i in range(1, ROWS + 1) for k in (0, 1)],
        )
    try:
        yield Parent, Child
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)


def _plain(conn: sa.Connection, stmt: Any, how: Any) -> Any:
    """What plain SQLAlchemy gives: ``how(conn.execute(stmt))``."""
    return how(conn.execute(stmt))


async def test_core_execute_matches_sqlalchemy(engine: AsyncEngine, models: Any) -> None:
    Parent, _ = models
    t = Parent.__table__
    ordered = sa.select(t).order_by(t.c.id)
    async with engine.connect() as conn:
        expected = await conn.run_sync(_plain, ordered, lambda r: r.all())
        rows = (await conn.execute(ordered)).all()
        assert len(rows) == ROWS
        assert rows == expected
        assert [r.id for r in rows] == list(range(1, ROWS + 1))

        # scalars(), mappings(), unique(), columns()
        assert (await conn.scalars(ordered)).all() == list(range(1, ROWS + 1))
        maps = (await conn.execute(ordered)).mappings().all()
        assert [m["name"] for m in maps] == [f"p{i}" for i in range(1, ROWS + 1)]
        groups = (await conn.execute(sa.select(t.c.grp).order_by(t.c.id))).scalars().unique()
        assert groups.all() == [1, 2, 3, 4, 5, 6, 0]
        cols = (await conn.execute(ordered)).columns("name").all()
        assert cols[-1] == (f"p{ROWS}",)

        # partitions and yield_per of a buffered result
        result = (await conn.execute(ordered)).yield_per(700)
        sizes = [len(p) for p in result.partitions()]
        assert sizes == [700, 700, ROWS - 1400]
        parts = (await conn.execute(ordered)).partitions(1000)
        assert [row for part in parts for row in part] == expected

        # fetchmany across chunk boundaries, then the rest
        result = await conn.execute(ordered)
        head = result.fetchmany(_chunk.CHUNK_ROWS + 1)
        assert head == expected[: _chunk.CHUNK_ROWS + 1]
        assert result.fetchall() == expected[_chunk.CHUNK_ROWS + 1 :]

        # exec_driver_sql goes through the same buffering
        raw = await conn.exec_driver_sql(f"SELECT id FROM {t.name} ORDER BY id")
        assert [r[0] for r in raw] == list(range(1, ROWS + 1))


async def test_orm_load_matches_sqlalchemy(engine: AsyncEngine, models: Any) -> None:
    Parent, Child = models
    ordered = sa.select(Parent).order_by(Parent.id)

    def plain(session: Session) -> Any:
        objects = session.scalars(ordered).all()
        pairs = session.execute(sa.select(Parent.id, Child.id).join(Child).order_by(Child.id))
        return [o.name for o in objects], pairs.all()

    async with AsyncSession(engine) as session:
        expected_names, expected_pairs = await session.run_sync(plain)
        session.expunge_all()

        objects = (await session.scalars(ordered)).all()
        assert len(objects) == ROWS
        assert [o.name for o in objects] == expected_names
        assert [o.id for o in objects] == list(range(1, ROWS + 1))
        assert len(session.identity_map) == ROWS

        # rows of entities and columns, more than two chunks of them
        pairs = await session.execute(sa.select(Parent.id, Child.id).join(Child).order_by(Child.id))
        assert pairs.all() == expected_pairs

        # partitions of a buffered ORM result
        result = await session.execute(ordered)
        parts = list(result.scalars().partitions(900))
        assert [len(p) for p in parts] == [900, 900, ROWS - 1800]
        assert parts[0][0] is objects[0]  # same identity map

    # A joined collection load: 2 * ROWS rows, de-duplicated by unique()
    async with AsyncSession(engine) as session:
        joined = ordered.options(joinedload(Parent.children))
        with pytest.raises(sa_exc.InvalidRequestError, match="unique"):
            (await session.scalars(joined)).all()
        parents = (await session.scalars(joined)).unique().all()
        assert [p.id for p in parents] == list(range(1, ROWS + 1))
        assert all([c.id for c in p.children] == [2 * p.id, 2 * p.id + 1] for p in parents)

    # yield_per asks for a server-side cursor: refused as before, pointing at stream()
    async with AsyncSession(engine) as session:
        with pytest.raises(exc.AsyncMethodRequired, match="stream"):
            await session.execute(ordered.execution_options(yield_per=100))
        assert (await session.scalar(sa.select(sa.func.count()).select_from(Parent))) == ROWS


async def test_stream_all_matches_sqlalchemy(engine: AsyncEngine, models: Any) -> None:
    Parent, _ = models
    t = Parent.__table__
    ordered = sa.select(t).order_by(t.c.id)
    async with engine.connect() as conn:
        expected = await conn.run_sync(_plain, ordered, lambda r: r.all())
        async with conn.stream(ordered) as result:
            first = await result.fetchone()
            rest = await result.all()
            assert [first, *rest] == expected
            assert await result.fetchall() == []
        async with conn.stream(ordered) as result:
            assert await result.fetchall() == expected
        async with conn.stream(sa.select(t.c.grp).order_by(t.c.id)) as result:
            assert await result.scalars().unique().all() == [1, 2, 3, 4, 5, 6, 0]
        async with conn.stream(ordered) as result:
            maps = await result.mappings().all()
            assert [m["id"] for m in maps] == list(range(1, ROWS + 1))

    async with AsyncSession(engine) as session:
        result = await session.stream(
            sa.select(Parent).order_by(Parent.id).execution_options(yield_per=300)
        )
        sizes = []
        async for part in result.scalars().partitions():
            sizes.append(len(part))
            assert all(isinstance(p, Parent) for p in part)
        assert sizes == [300] * (ROWS // 300) + [ROWS % 300]

        result = await session.stream(sa.select(Parent).order_by(Parent.id))
        objects = await result.scalars().all()
        assert [o.id for o in objects] == list(range(1, ROWS + 1))


def _failing_expression(engine: AsyncEngine, table: sa.Table) -> sa.ColumnElement[Any]:
    """An expression that fails on row ``BAD_ROW`` only, on each database."""
    name = engine.dialect.name
    if name == "sqlite":

        def fail_at(value: int) -> int:
            if value == BAD_ROW:
                raise ValueError("row failed on purpose")
            return value

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _register(dbapi_conn: Any, record: Any) -> None:
            dbapi_conn.create_function("fail_at", 1, fail_at)

        return sa.func.fail_at(table.c.id)
    if name == "postgresql":
        return sa.literal_column("1") / (table.c.id - BAD_ROW)
    # MySQL/MariaDB: a scalar subquery that returns two rows for one row only
    return sa.literal_column(
        f"(SELECT 1 UNION ALL SELECT 2 FROM DUAL WHERE {table.name}.id = {BAD_ROW})"
    )


async def test_error_in_a_late_row_is_raised_like_sqlalchemy(
    engine: AsyncEngine, models: Any
) -> None:
    """Same exception class, raised by the same call; the connection stays usable."""
    Parent, _ = models
    t = Parent.__table__
    failing = sa.select(t.c.id, _failing_expression(engine, t).label("x")).order_by(t.c.id)
    await engine.dispose()  # new connections: the SQLite function is registered on connect

    def plain(conn: sa.Connection) -> type[BaseException]:
        try:
            conn.execute(failing).all()
        except sa_exc.DBAPIError as err:
            conn.rollback()
            return type(err)
        raise AssertionError("the statement did not fail")

    async with engine.connect() as conn:
        expected = await conn.run_sync(plain)
        with pytest.raises(sa_exc.DBAPIError) as info:
            await conn.execute(failing)
        assert type(info.value) is expected
        await conn.rollback()
        assert (await conn.execute(sa.select(sa.func.count()).select_from(t))).scalar() == ROWS

        with pytest.raises(sa_exc.DBAPIError) as info:
            async with conn.stream(failing) as result:
                await result.all()
        assert type(info.value) is expected
        await conn.rollback()

    async with AsyncSession(engine) as session:
        with pytest.raises(sa_exc.DBAPIError) as info:
            await session.execute(failing)
        assert type(info.value) is expected
        await session.rollback()
        objects = (await session.scalars(sa.select(Parent).order_by(Parent.id))).all()
        assert len(objects) == ROWS
