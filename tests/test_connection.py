"""AsyncConnection and AsyncTransaction against every database."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Result
from sqlalchemy.pool import PoolProxiedConnection

from sqlalchemy_anyio import AsyncEngine, AsyncResult, AsyncTransaction

pytestmark = pytest.mark.anyio

ROWS = [{"id": i, "name": f"n{i}"} for i in range(1, 8)]


@pytest.fixture
async def filled(engine: AsyncEngine, table: sa.Table) -> sa.Table:
    async with engine.begin() as conn:
        await conn.execute(table.insert(), ROWS)
    return table


async def _ids(engine: AsyncEngine, table: sa.Table) -> list[int]:
    async with engine.connect() as conn:
        return list(await conn.scalars(sa.select(table.c.id).order_by(table.c.id)))


# -- start / execute -------------------------------------------------------------


async def test_start_explicitly(engine: AsyncEngine) -> None:
    conn = engine.connect()
    assert conn.sync_connection is None
    started = await conn.start()
    try:
        assert started is conn
        assert isinstance(conn.sync_connection, Connection)
        assert not conn.closed
    finally:
        await conn.close()
    assert conn.closed


async def test_execute_insert_many_and_select(engine: AsyncEngine, table: sa.Table) -> None:
    async with engine.connect() as conn:
        result = await conn.execute(table.insert(), ROWS)
        # psycopg's executemany (insertmanyvalues) reports -1, as in sync SQLAlchemy.
        assert result.rowcount == (-1 if conn.dialect.driver == "psycopg" else len(ROWS))
        result = await conn.execute(table.update().values(name=table.c.name + "!"))
        assert result.rowcount == len(ROWS)
        await conn.commit()
        rows = (await conn.execute(sa.select(table).order_by(table.c.id))).all()
    assert [tuple(r) for r in rows] == [(r["id"], r["name"] + "!") for r in ROWS]


async def test_execute_result_readable_after_close(engine: AsyncEngine, filled: sa.Table) -> None:
    """execute() fetches every row on the worker: the result needs no connection."""
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(filled).order_by(filled.c.id))
        mapped = await conn.execute(sa.select(filled.c.name).order_by(filled.c.id))
    assert conn.closed
    assert isinstance(result, Result)
    assert result.keys() == ["id", "name"]
    first = result.fetchone()
    assert first is not None and tuple(first) == (1, "n1")
    assert [r.id for r in result.fetchmany(2)] == [2, 3]
    assert [r.id for r in result] == [4, 5, 6, 7]
    assert mapped.scalars().all() == [r["name"] for r in ROWS]


async def test_execute_with_parameters(engine: AsyncEngine, filled: sa.Table) -> None:
    async with engine.connect() as conn:
        stmt = sa.select(filled.c.name).where(filled.c.id == sa.bindparam("wanted"))
        assert (await conn.execute(stmt, {"wanted": 3})).scalar_one() == "n3"
        result = await conn.execute(
            sa.text(f"SELECT name FROM {filled.name} WHERE id = :i"), {"i": 5}
        )
        assert result.scalar_one() == "n5"


async def test_exec_driver_sql(engine: AsyncEngine, filled: sa.Table) -> None:
    async with engine.connect() as conn:
        result = await conn.exec_driver_sql(f"SELECT COUNT(*) FROM {filled.name}")
        assert result.scalar() == len(ROWS)
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        result = await conn.exec_driver_sql(
            f"SELECT name FROM {filled.name} WHERE id = {mark}", (2,)
        )
        assert result.scalar_one() == "n2"
        result = await conn.exec_driver_sql(
            f"UPDATE {filled.name} SET name = {mark} WHERE id > {mark}", ("z", 5)
        )
        assert result.rowcount == 2


async def test_scalar_and_scalars(engine: AsyncEngine, filled: sa.Table) -> None:
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.max(filled.c.id))) == 7
        assert await conn.scalar(sa.select(filled.c.id).where(filled.c.id > 100)) is None
        scalars = await conn.scalars(sa.select(filled.c.id).order_by(filled.c.id.desc()))
    assert scalars.all() == [7, 6, 5, 4, 3, 2, 1]


# -- streaming ---------------------------------------------------------------------


async def test_stream_awaited(engine: AsyncEngine, filled: sa.Table) -> None:
    async with engine.connect() as conn:
        result = await conn.stream(sa.select(filled.c.id).order_by(filled.c.id))
        assert isinstance(result, AsyncResult)
        assert not result.closed
        parts = [list(p) async for p in result.partitions(3)]
        assert [[r.id for r in p] for p in parts] == [[1, 2, 3], [4, 5, 6], [7]]
        await result.close()
        assert result.closed
        # The connection is usable again afterwards.
        assert await conn.scalar(sa.select(sa.func.count()).select_from(filled)) == 7


async def test_stream_context_manager_closes(engine: AsyncEngine, filled: sa.Table) -> None:
    async with engine.connect() as conn:
        async with conn.stream(sa.select(filled).order_by(filled.c.id)) as result:
            seen = [row.name async for row in result]
            assert not result.closed
        assert result.closed
        assert seen == [r["name"] for r in ROWS]
        # Leaving early also closes.
        async with conn.stream(sa.select(filled).order_by(filled.c.id)) as early:
            assert (await early.fetchone()) is not None
        assert early.closed
        assert await conn.scalar(sa.select(sa.literal(1))) == 1


async def test_stream_scalars(engine: AsyncEngine, filled: sa.Table) -> None:
    async with engine.connect() as conn:
        async with conn.stream_scalars(sa.select(filled.c.name).order_by(filled.c.id)) as names:
            assert [n async for n in names] == [r["name"] for r in ROWS]
        assert names.closed
        awaited = await conn.stream_scalars(sa.select(filled.c.id).order_by(filled.c.id))
        assert await awaited.all() == list(range(1, 8))
        await awaited.close()


# -- run_sync ---------------------------------------------------------------------


def _sync_work(conn: Connection, table: sa.Table, start: int, *, name: str) -> int:
    conn.execute(table.insert(), [{"id": start, "name": name}, {"id": start + 1, "name": name}])
    return int(conn.scalar(sa.select(sa.func.count()).select_from(table)))


async def test_run_sync_create_all_and_args(engine: AsyncEngine) -> None:
    metadata = sa.MetaData()
    table = sa.Table(
        f"eng_runsync_{uuid.uuid4().hex[:10]}",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(30)),
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            assert await conn.run_sync(_sync_work, table, 10, name="x") == 2
            names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
            assert table.name in names
        assert await _ids(engine, table) == [10, 11]
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)


class _Custom(Exception):
    pass


def _fails(conn: Connection) -> None:
    conn.execute(sa.select(sa.literal(1)))
    raise _Custom("from the worker")


async def test_run_sync_propagates_exceptions(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        with pytest.raises(_Custom, match="from the worker"):
            await conn.run_sync(_fails)
        with pytest.raises(sa.exc.DBAPIError):
            await conn.run_sync(lambda c: c.exec_driver_sql("SELECT * FROM eng_no_such_table"))
        await conn.rollback()
        assert await conn.scalar(sa.select(sa.literal(1))) == 1


# -- transactions -----------------------------------------------------------------


async def test_commit_and_rollback(engine: AsyncEngine, table: sa.Table) -> None:
    async with engine.connect() as conn:
        assert not conn.in_transaction()
        await conn.execute(table.insert(), {"id": 1, "name": "keep"})
        assert conn.in_transaction()  # autobegin
        await conn.commit()
        assert not conn.in_transaction()
        await conn.execute(table.insert(), {"id": 2, "name": "drop"})
        await conn.rollback()
        assert not conn.in_transaction()
    assert await _ids(engine, table) == [1]


async def test_close_rolls_back(engine: AsyncEngine, table: sa.Table) -> None:
    conn = await engine.connect()
    await conn.execute(table.insert(), {"id": 1, "name": "lost"})
    await conn.close()
    assert await _ids(engine, table) == []


async def test_begin_nested_savepoint_rollback_keeps_outer(
    engine: AsyncEngine, table: sa.Table
) -> None:
    async with engine.connect() as conn:
        async with conn.begin() as outer:
            await conn.execute(table.insert(), {"id": 1, "name": "outer"})
            assert not conn.in_nested_transaction()
            nested = await conn.begin_nested()
            assert conn.in_nested_transaction()
            assert conn.get_nested_transaction() is nested
            assert conn.get_transaction() is outer
            await conn.execute(table.insert(), {"id": 2, "name": "inner"})
            await nested.rollback()
            assert not nested.is_active
            assert not conn.in_nested_transaction()
            assert outer.is_active
            async with conn.begin_nested() as kept:
                await conn.execute(table.insert(), {"id": 3, "name": "kept"})
                assert kept.is_active
            assert not kept.is_active
        assert not outer.is_active
    assert await _ids(engine, table) == [1, 3]


async def test_begin_nested_context_rolls_back_on_error(
    engine: AsyncEngine, table: sa.Table
) -> None:
    async with engine.begin() as conn:
        await conn.execute(table.insert(), {"id": 1, "name": "outer"})
        with pytest.raises(_Custom):
            async with conn.begin_nested():
                await conn.execute(table.insert(), {"id": 2, "name": "inner"})
                raise _Custom()
        assert conn.in_transaction()
    assert await _ids(engine, table) == [1]


async def test_transaction_awaited_commit(engine: AsyncEngine, table: sa.Table) -> None:
    async with engine.connect() as conn:
        trans = await conn.begin()
        assert isinstance(trans, AsyncTransaction)
        assert trans.is_active and trans.is_valid
        assert conn.get_transaction() is trans
        await conn.execute(table.insert(), {"id": 1, "name": "a"})
        await trans.commit()
        assert not trans.is_active
        assert conn.get_transaction() is None
    assert await _ids(engine, table) == [1]


async def test_transaction_rollback_and_close(engine: AsyncEngine, table: sa.Table) -> None:
    async with engine.connect() as conn:
        trans = await conn.begin()
        await conn.execute(table.insert(), {"id": 1, "name": "a"})
        await trans.rollback()
        assert not trans.is_active
        trans = await conn.begin()
        await conn.execute(table.insert(), {"id": 2, "name": "b"})
        await trans.close()  # a root transaction's close() rolls back
        assert not trans.is_active
        assert not conn.in_transaction()
    assert await _ids(engine, table) == []


async def test_transaction_context_commits_and_rolls_back(
    engine: AsyncEngine, table: sa.Table
) -> None:
    async with engine.connect() as conn:
        async with conn.begin():
            await conn.execute(table.insert(), {"id": 1, "name": "a"})
        with pytest.raises(_Custom):
            async with conn.begin():
                await conn.execute(table.insert(), {"id": 2, "name": "b"})
                raise _Custom()
        assert not conn.in_transaction()
    assert await _ids(engine, table) == [1]


async def test_get_transaction_returns_same_proxy(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert conn.get_transaction() is None
        assert conn.get_nested_transaction() is None
        await conn.execute(sa.select(sa.literal(1)))  # autobegin
        first = conn.get_transaction()
        assert isinstance(first, AsyncTransaction)
        assert conn.get_transaction() is first
        assert first.connection is conn
        nested = await conn.begin_nested()
        assert conn.get_nested_transaction() is nested
        assert conn.get_transaction() is first
        await nested.commit()
        await conn.rollback()


# -- close, invalidate, introspection --------------------------------------------------


async def test_aclose_with_contextlib_aclosing(engine: AsyncEngine) -> None:
    async with contextlib.aclosing(await engine.connect()) as conn:
        assert await conn.scalar(sa.select(sa.literal(1))) == 1
        assert engine.pool.checkedout() == 1
    assert conn.closed
    assert engine.pool.checkedout() == 0
    await conn.aclose()  # closing twice is harmless
    assert conn.closed


async def test_invalidate_and_reconnect(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.scalar(sa.select(sa.literal(1)))
        await conn.rollback()
        assert not conn.invalidated
        await conn.invalidate()
        assert conn.invalidated
        # A connection invalidated outside a transaction reconnects on next use.
        assert await conn.scalar(sa.select(sa.literal(2))) == 2
        assert not conn.invalidated


async def test_isolation_levels(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        level = await conn.get_isolation_level()
        assert level == conn.default_isolation_level
        assert level in {"SERIALIZABLE", "READ COMMITTED", "REPEATABLE READ", "READ UNCOMMITTED"}
        same = await conn.execution_options(isolation_level="SERIALIZABLE")
        assert same is conn
        assert await conn.get_isolation_level() == "SERIALIZABLE"


async def test_execution_options_in_place(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.execution_options(eng_flag=1) is conn
        assert conn.sync_connection is not None
        assert conn.sync_connection.get_execution_options()["eng_flag"] == 1


async def test_get_raw_connection_and_info(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert isinstance(raw, PoolProxiedConnection)
        assert conn.sync_connection is not None
        assert raw is conn.sync_connection.connection
        assert raw.dbapi_connection is not None
        conn.info["eng_key"] = "v"
        assert raw.info["eng_key"] == "v"
        assert conn.info is raw.info


async def test_sync_connection_and_dialect(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert isinstance(conn.sync_connection, Connection)
        assert conn.sync_connection.engine is engine.sync_engine
        assert conn.dialect is engine.dialect
        assert not conn.closed
        assert not conn.invalidated
    assert conn.closed


async def test_run_sync_sees_uncommitted_work(engine: AsyncEngine, table: sa.Table) -> None:
    """run_sync and execute share one connection (and transaction)."""
    async with engine.connect() as conn:
        await conn.execute(table.insert(), {"id": 1, "name": "a"})

        def count(sync_conn: Any) -> int:
            return int(sync_conn.scalar(sa.select(sa.func.count()).select_from(table)))

        assert await conn.run_sync(count) == 1
        await conn.rollback()
        assert await conn.run_sync(count) == 0
