"""AsyncEngine: construction, connecting, transactions, options and proxies."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool, PoolProxiedConnection

from sqlalchemy_anyio import (
    AsyncConnection,
    AsyncEngine,
    async_engine_from_config,
    create_async_engine,
    create_async_pool_from_url,
)

pytestmark = pytest.mark.anyio


async def _count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)))


# -- construction --------------------------------------------------------------


async def test_create_async_engine_proxies_sync_engine(db_url: str) -> None:
    engine = create_async_engine(db_url, echo=False)
    try:
        assert isinstance(engine, AsyncEngine)
        sync = engine.sync_engine
        assert isinstance(sync, Engine)
        assert engine.url == sa.make_url(db_url)
        assert engine.pool is sync.pool
        assert isinstance(engine.pool, Pool)
        assert engine.dialect is sync.dialect
        assert engine.name == sync.name == sa.make_url(db_url).get_backend_name()
        assert engine.driver == sync.driver == sa.make_url(db_url).get_driver_name()
        assert engine.engine is sync
        assert engine.echo is False
        engine.echo = True
        assert engine.echo is True and sync.echo is True
        assert repr(engine) == f"AsyncEngine({sync.url!r})"
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.literal(7))) == 7
    finally:
        await engine.dispose()


async def test_async_engine_from_config(db_url: str) -> None:
    config = {
        "sqlalchemy.url": db_url,
        "sqlalchemy.echo": "false",
        "sqlalchemy.pool_size": "3",
        "other.url": "ignored://",
    }
    engine = async_engine_from_config(config)
    try:
        assert isinstance(engine, AsyncEngine)
        assert engine.url == sa.make_url(db_url)
        assert engine.echo is False  # string coerced, as engine_from_config does
        assert isinstance(engine.pool, sa.pool.QueuePool)
        assert engine.pool.size() == 3
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.literal(1))) == 1
    finally:
        await engine.dispose()


async def test_async_engine_from_config_prefix_and_kwargs(db_url: str) -> None:
    engine = async_engine_from_config({"db.url": db_url}, prefix="db.", echo=True)
    try:
        assert engine.url == sa.make_url(db_url)
        assert engine.echo is True
    finally:
        await engine.dispose()


async def test_create_async_pool_from_url_serves_an_engine(db_url: str) -> None:
    pool = create_async_pool_from_url(db_url)
    assert isinstance(pool, Pool)
    engine = create_async_engine(db_url, pool=pool)
    try:
        assert engine.pool is pool
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.literal(3))) == 3
        assert pool.checkedin() == 1
    finally:
        await engine.dispose()


# -- connecting ---------------------------------------------------------------


async def test_connect_as_context_manager(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert isinstance(conn, AsyncConnection)
        assert conn.engine is engine
        assert conn.sync_engine is engine.sync_engine
        assert not conn.closed
        assert await conn.scalar(sa.select(sa.literal(1))) == 1
    assert conn.closed
    assert engine.pool.checkedout() == 0


async def test_connect_awaited(engine: AsyncEngine) -> None:
    conn = await engine.connect()
    try:
        assert not conn.closed
        assert engine.pool.checkedout() == 1
        assert await conn.scalar(sa.select(sa.literal(2))) == 2
    finally:
        await conn.close()
    assert conn.closed
    assert engine.pool.checkedout() == 0


async def test_begin_commits_on_success(engine: AsyncEngine, table: sa.Table) -> None:
    async with engine.begin() as conn:
        assert conn.in_transaction()
        await conn.execute(table.insert(), [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    assert conn.closed
    assert await _count(engine, table) == 2


async def test_begin_rolls_back_on_exception(engine: AsyncEngine, table: sa.Table) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with engine.begin() as conn:
            await conn.execute(table.insert(), {"id": 1, "name": "a"})
            raise Boom()
    assert conn.closed
    assert await _count(engine, table) == 0
    assert engine.pool.checkedout() == 0


async def test_raw_connection(engine: AsyncEngine) -> None:
    raw = await engine.raw_connection()
    try:
        assert isinstance(raw, PoolProxiedConnection)
        assert raw.dbapi_connection is not None
        assert engine.pool.checkedout() == 1
        cursor = raw.cursor()
        cursor.execute("SELECT 5")
        assert cursor.fetchone()[0] == 5
        cursor.close()
    finally:
        raw.close()
    assert engine.pool.checkedout() == 0


# -- dispose ------------------------------------------------------------------


async def test_dispose_replaces_the_pool(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.scalar(sa.select(sa.literal(1)))
    old_pool = engine.pool
    assert old_pool.checkedin() == 1
    await engine.dispose()
    assert engine.pool is not old_pool
    assert old_pool.checkedin() == 0  # close=True: idle connections closed
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.literal(1))) == 1


async def test_dispose_without_close_leaves_checked_out_connection_usable(
    engine: AsyncEngine,
) -> None:
    held = await engine.connect()
    try:
        old_pool = engine.pool
        await engine.dispose(close=False)
        assert engine.pool is not old_pool
        # The connection checked out before dispose keeps working.
        assert await held.scalar(sa.select(sa.literal(4))) == 4
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.literal(5))) == 5
        assert engine.pool.checkedin() == 1
    finally:
        await held.close()


# -- execution options ----------------------------------------------------------


async def test_execution_options_returns_new_engine(engine: AsyncEngine) -> None:
    other = engine.execution_options(eng_option="x")
    assert isinstance(other, AsyncEngine)
    assert other is not engine
    assert other != engine
    assert other.get_execution_options()["eng_option"] == "x"
    assert "eng_option" not in engine.get_execution_options()
    assert other.pool is engine.pool
    async with other.connect() as conn:
        assert conn.sync_connection is not None
        assert conn.sync_connection.get_execution_options()["eng_option"] == "x"
        assert await conn.scalar(sa.select(sa.literal(1))) == 1


async def test_execution_options_isolation_level(engine: AsyncEngine) -> None:
    serial = engine.execution_options(isolation_level="SERIALIZABLE")
    async with serial.connect() as conn:
        assert await conn.get_isolation_level() == "SERIALIZABLE"
    # The original engine's connections come back with its own default.
    async with engine.connect() as conn:
        assert await conn.get_isolation_level() == conn.default_isolation_level


async def test_update_execution_options(engine: AsyncEngine) -> None:
    engine.update_execution_options(eng_updated=True)
    assert engine.get_execution_options()["eng_updated"] is True
    async with engine.connect() as conn:
        assert conn.sync_connection is not None
        assert conn.sync_connection.get_execution_options()["eng_updated"] is True


async def test_clear_compiled_cache(engine: AsyncEngine) -> None:
    cache = engine.sync_engine._compiled_cache
    assert cache is not None
    async with engine.connect() as conn:
        await conn.execute(sa.select(sa.literal(1).label("eng_cached")))
    assert len(cache) > 0
    engine.clear_compiled_cache()
    assert len(cache) == 0


# -- proxies --------------------------------------------------------------------


async def test_engine_and_connection_proxies_compare_and_hash(engine: AsyncEngine) -> None:
    same = AsyncEngine._retrieve_proxy_for_target(engine.sync_engine)
    assert same is engine
    twin = AsyncEngine(engine.sync_engine)
    assert twin == engine
    assert not (twin != engine)
    assert {engine: "e"}[engine] == "e"
    async with engine.connect() as c1, engine.connect() as c2:
        assert c1 == c1
        assert c1 != c2
        assert c1.engine == c2.engine
        assert len({c1, c2}) == 2
        assert c1.sync_connection is not None
        found = AsyncConnection._retrieve_proxy_for_target(c1.sync_connection)
        assert found is c1
    assert engine != "not an engine"


async def test_engine_usable_from_other_engine_copies(engine: AsyncEngine, table: sa.Table) -> None:
    """Copies made by execution_options() share the pool and see the same data."""
    tagged = engine.execution_options(eng_tag="t")
    async with tagged.begin() as conn:
        await conn.execute(table.insert(), {"id": 1, "name": "a"})
    assert await _count(engine, table) == 1


def _run_in_sync(conn: Any, value: int) -> int:
    return int(conn.scalar(sa.select(sa.literal(value))))


async def test_begin_yields_connection_that_runs_sync(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        assert await conn.run_sync(_run_in_sync, 11) == 11
