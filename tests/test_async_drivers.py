"""Async drivers (asyncpg, psycopg async, aiomysql, asyncmy) run natively on asyncio.

SQLAlchemy runs on the worker thread and the driver's coroutines on the
event loop; under trio the URL falls back to the synchronous counterpart.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Optional

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from conftest import (
    SERVER_LONG_QUERY,
    _selected,
    _unavailable,
    server_still_running,
    subprocess_env,
    url_for,
)
from sqlalchemy_anyio import (
    AsyncEngine,
    AsyncSession,
    _urls,
    create_async_engine,
    create_async_pool_from_url,
)

pytestmark = pytest.mark.anyio

#: async driver URL kind -> (driver module, sync kind whose server it uses, sync driver on trio)
NATIVE = {
    "postgresql+asyncpg": ("asyncpg", "postgresql+psycopg", "psycopg"),
    "postgresql+psycopg_async": ("psycopg", "postgresql+psycopg", "psycopg"),
    "mysql+aiomysql": ("aiomysql", "mysql+pymysql", "pymysql"),
    "mysql+asyncmy": ("asyncmy", "mysql+pymysql", "pymysql"),
}
KINDS = [k for k in NATIVE if _selected(k)]

LONG_QUERY = SERVER_LONG_QUERY


def _native_url(kind: str, tmp_path: Any) -> str:
    module, sync_kind, _ = NATIVE[kind]
    if importlib.util.find_spec(module) is None:
        _unavailable(f"driver {module} for {kind} is not installed")
    return sa.make_url(url_for(sync_kind, tmp_path)).set(drivername=kind).render_as_string(False)


@pytest.fixture(
    params=KINDS
    or [pytest.param("none", marks=pytest.mark.skip(reason="no server database selected"))]
)
def async_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Each async driver's URL in turn, on this machine's servers."""
    request.applymarker(pytest.mark.server)
    return _native_url(request.param, tmp_path)


def _on_trio(backend: Any) -> bool:
    return bool(backend[0] == "trio")


def _expected_driver(url: str, backend: Any) -> str:
    """``engine.driver``: the dialect's name for it (psycopg's async dialect says psycopg)."""
    kind = sa.make_url(url).drivername
    return NATIVE[kind][2] if _on_trio(backend) else kind.split("+")[1].replace("_async", "")


@pytest.fixture
async def engine(async_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(async_url)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
async def table(engine: AsyncEngine) -> AsyncIterator[sa.Table]:
    t = sa.Table(
        f"adrv_{uuid.uuid4().hex[:12]}",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(30)),
    )
    async with engine.begin() as conn:
        await conn.run_sync(t.metadata.create_all)
    try:
        yield t
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(t.metadata.drop_all)


def _still_running(url: str, name: str) -> int:
    """How many copies of this run's long query the server still runs."""
    sync_kind = NATIVE[sa.make_url(url).drivername][1]
    return server_still_running(sa.make_url(url).set(drivername=sync_kind), name)


def _backend_id(engine: AsyncEngine) -> str:
    return (
        "SELECT pg_backend_pid()"
        if engine.dialect.name == "postgresql"
        else "SELECT CONNECTION_ID()"
    )


# -- which driver runs -------------------------------------------------------


async def test_driver_is_native_on_asyncio_and_mapped_on_trio(
    async_url: str, anyio_backend: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setattr(_urls, "_warned", set())
    caplog.set_level(logging.WARNING, logger="sqlalchemy_anyio")
    engine = create_async_engine(async_url)
    try:
        assert engine.driver == _expected_driver(async_url, anyio_backend)
        notices = [r.getMessage() for r in caplog.records if r.name == "sqlalchemy_anyio"]
        if _on_trio(anyio_backend):
            assert engine.url.drivername != sa.make_url(async_url).drivername
            assert any(sa.make_url(async_url).drivername in m for m in notices), notices
        else:
            assert engine.url == sa.make_url(async_url)  # the URL as given
            assert notices == []
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.literal(41) + 1)) == 42
            raw = (await conn.get_raw_connection()).driver_connection
            module = type(raw).__module__.split(".")[0]
            expected = NATIVE[sa.make_url(async_url).drivername]
            if _on_trio(anyio_backend):
                assert module == expected[2]
                assert "Async" not in type(raw).__name__
            else:
                assert module == expected[0], type(raw)
                if module == "psycopg":
                    assert type(raw).__name__ == "AsyncConnection"
    finally:
        await engine.dispose()


async def test_async_driver_sync_option_maps_on_asyncio(async_url: str) -> None:
    engine = create_async_engine(async_url, async_driver="sync")
    try:
        assert engine.driver == NATIVE[sa.make_url(async_url).drivername][2]
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.literal(5))) == 5
    finally:
        await engine.dispose()


async def test_async_driver_option_is_validated(anyio_backend: Any) -> None:
    url = "postgresql+asyncpg://scott:tiger@db.invalid/test"
    with pytest.raises(exc.ArgumentError, match=r"async_driver must be 'native'.*or 'sync'"):
        create_async_engine(url, async_driver="greenlet")
    with pytest.raises(exc.ArgumentError, match=r"not available for 'sqlite\+aiosqlite'"):
        create_async_engine("sqlite+aiosqlite://", async_driver="native")
    if _on_trio(anyio_backend):
        with pytest.raises(exc.ArgumentError, match="this is trio; use async_driver='sync'"):
            create_async_engine(url, async_driver="native")
    elif importlib.util.find_spec("asyncpg") is not None:
        engine = create_async_engine(url, async_driver="native")
        assert engine.driver == "asyncpg"
        await engine.dispose()


async def test_aiosqlite_still_maps_to_sqlite3(tmp_path: Any) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    try:
        assert engine.driver == "pysqlite"
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.literal(3))) == 3
    finally:
        await engine.dispose()


# -- Core and ORM --------------------------------------------------------------


async def test_core_crud_and_rollback(engine: AsyncEngine, table: sa.Table) -> None:
    async with engine.begin() as conn:
        await conn.execute(table.insert(), [{"id": i, "name": f"n{i}"} for i in range(20)])
        await conn.execute(table.update().where(table.c.id == 3).values(name="three"))
        await conn.execute(table.delete().where(table.c.id >= 10))
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(table).order_by(table.c.id))).all()
        assert [r.id for r in rows] == list(range(10))
        assert rows[3].name == "three"
        await conn.rollback()
        # A failed transaction leaves nothing behind.
        with pytest.raises(RuntimeError):
            async with conn.begin():
                await conn.execute(table.insert(), {"id": 100, "name": "gone"})
                raise RuntimeError("boom")
        assert await conn.scalar(sa.select(sa.func.count()).select_from(table)) == 10
        await conn.rollback()
        # A savepoint rolled back alone.
        async with conn.begin():
            await conn.execute(table.insert(), {"id": 200, "name": "kept"})
            nested = await conn.begin_nested()
            await conn.execute(table.insert(), {"id": 201, "name": "dropped"})
            await nested.rollback()
        ids = (await conn.scalars(sa.select(table.c.id).where(table.c.id >= 200))).all()
        assert ids == [200]
        # A driver error is SQLAlchemy's, and the connection stays usable.
        with pytest.raises(exc.IntegrityError):
            await conn.execute(table.insert(), {"id": 200, "name": "dup"})
        await conn.rollback()
        assert await conn.scalar(sa.select(sa.literal(1))) == 1


async def test_streaming(engine: AsyncEngine, table: sa.Table) -> None:
    async with engine.begin() as conn:
        await conn.execute(table.insert(), [{"id": i, "name": f"n{i}"} for i in range(500)])
    async with engine.connect() as conn:
        async with conn.stream(sa.select(table).order_by(table.c.id)) as result:
            seen = [row.id async for row in result]
        assert seen == list(range(500))
        result = await conn.stream_scalars(sa.select(table.c.id).order_by(table.c.id))
        first = await result.fetchmany(7)
        assert first == list(range(7))
        await result.close()
        assert await conn.scalar(sa.select(sa.func.count()).select_from(table)) == 500


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = f"adrv_item_{uuid.uuid4().hex[:8]}"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(30))


async def test_orm_crud_and_rollback(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            session.add_all([Item(id=i, name=f"i{i}") for i in range(5)])
            await session.commit()
            item = await session.get(Item, 2)
            assert item is not None and item.name == "i2"
            item.name = "two"
            await session.delete(await session.get(Item, 4))
            await session.commit()
            session.add(Item(id=99, name="rolled back"))
            await session.flush()
            await session.rollback()
        async with AsyncSession(engine) as session:
            names = (await session.scalars(sa.select(Item.name).order_by(Item.id))).all()
            assert names == ["i0", "i1", "two", "i3"]
            streamed = [i.id async for i in await session.stream_scalars(sa.select(Item))]
            assert sorted(streamed) == [0, 1, 2, 3]
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)


# -- cancellation ----------------------------------------------------------------


async def test_timeout_stops_the_query_and_the_connection_is_reused(async_url: str) -> None:
    engine = create_async_engine(async_url, pool_size=1, max_overflow=0)
    name = engine.dialect.name
    try:
        async with engine.connect() as conn:
            server_id = await conn.scalar(sa.text(_backend_id(engine)))
            started = time.monotonic()
            with anyio.move_on_after(0.5) as scope:
                await conn.exec_driver_sql(LONG_QUERY[name])
            elapsed = time.monotonic() - started
            assert scope.cancelled_caught
            assert elapsed < 10, elapsed  # stopped, not waited out (20 s)
            assert _still_running(async_url, name) == 0
            assert not conn.in_transaction()
            assert await conn.scalar(sa.select(sa.literal(7))) == 7
            # The same server session: the connection was not replaced.
            assert await conn.scalar(sa.text(_backend_id(engine))) == server_id
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text(_backend_id(engine))) == server_id
        assert engine.pool.checkedout() == 0
    finally:
        await engine.dispose()


async def test_cancel_rolls_back_the_transaction(engine: AsyncEngine, table: sa.Table) -> None:
    async with engine.connect() as conn:
        await conn.begin()
        await conn.execute(table.insert(), {"id": 1, "name": "x"})
        with anyio.move_on_after(0.3) as scope:
            await conn.exec_driver_sql(LONG_QUERY[engine.dialect.name])
        assert scope.cancelled_caught
        assert not conn.in_transaction()
        assert await conn.scalar(sa.select(sa.func.count()).select_from(table)) == 0


async def test_cancelled_session_call_is_interrupted(async_url: str) -> None:
    engine = create_async_engine(async_url, pool_size=1, max_overflow=0)
    name = engine.dialect.name
    try:
        async with AsyncSession(engine) as session:
            # The session holds its connection before the long statement (a
            # cancel that lands while it connects has nothing to interrupt yet).
            assert await session.scalar(sa.select(sa.literal(2))) == 2
            with anyio.move_on_after(0.5) as scope:
                await session.execute(sa.text(LONG_QUERY[name]))
            assert scope.cancelled_caught
            assert _still_running(async_url, name) == 0
            assert await session.scalar(sa.select(sa.literal(3))) == 3
    finally:
        await engine.dispose()


# -- driver options ----------------------------------------------------------------


async def test_asyncpg_connect_args(tmp_path: Any, anyio_backend: Any) -> None:
    if "postgresql+asyncpg" not in KINDS:
        pytest.skip("PostgreSQL not selected")
    if _on_trio(anyio_backend):
        pytest.skip("asyncpg's own connect_args: under trio the URL runs on psycopg")
    url = _native_url("postgresql+asyncpg", tmp_path)
    engine = create_async_engine(
        url,
        connect_args={
            "server_settings": {"application_name": "sqlalchemy-anyio-native"},
            "prepared_statement_cache_size": 0,
        },
    )
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("SHOW application_name")) == "sqlalchemy-anyio-native"
            for i in range(3):
                assert await conn.scalar(sa.select(sa.literal(i))) == i
    finally:
        await engine.dispose()


async def test_async_creator(async_url: str, anyio_backend: Any) -> None:
    if _on_trio(anyio_backend):
        with pytest.raises(exc.ArgumentError, match="async_creator needs an async driver"):
            create_async_engine(async_url, async_creator=lambda: None)
        return
    url = sa.make_url(async_url)
    module = NATIVE[url.drivername][0]
    if module == "asyncpg":
        import asyncpg

        async def creator() -> Any:
            return await asyncpg.connect(
                host=url.host, port=url.port, user=url.username, database=url.database
            )
    else:
        creator = _creator_for(url)
    engine = create_async_engine(async_url, async_creator=creator)
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.literal(11))) == 11
    finally:
        await engine.dispose()


def _creator_for(url: sa.URL) -> Any:
    kind = url.drivername
    if kind == "postgresql+psycopg_async":
        import psycopg

        async def pg() -> Any:
            return await psycopg.AsyncConnection.connect(
                host=url.host, port=url.port, user=url.username, dbname=url.database
            )

        return pg
    if kind == "mysql+aiomysql":
        import aiomysql

        async def aio() -> Any:
            return await aiomysql.connect(
                host=url.host, port=url.port, user=url.username, db=url.database
            )

        return aio
    import asyncmy

    async def amy() -> Any:
        return await asyncmy.connect(
            host=url.host, port=url.port, user=url.username, database=url.database
        )

    return amy


# -- event loops ----------------------------------------------------------------------


def test_engine_outlives_its_first_event_loop(async_url: str) -> None:
    """Connections belong to the loop that opened them; on the next loop the
    pool replaces them instead of failing."""
    engine = create_async_engine(async_url, pool_size=1, max_overflow=0)

    async def one(n: int) -> Optional[int]:
        async with engine.connect() as conn:
            return await conn.scalar(sa.select(sa.literal(n)))

    try:
        assert asyncio.run(one(1)) == 1
        assert asyncio.run(one(2)) == 2
        assert engine.pool.checkedout() == 0
    finally:
        asyncio.run(engine.dispose())


GREENLET_BLOCKED = """
import importlib.abc, sys

class BlockGreenlet(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "greenlet" or name.startswith("greenlet."):
            raise ImportError(f"{name} is blocked by the test")
        return None

sys.meta_path.insert(0, BlockGreenlet())
import anyio, sqlalchemy as sa
from sqlalchemy_anyio import create_async_engine

async def main():
    engine = create_async_engine(sys.argv[2])
    assert engine.driver == sys.argv[3], engine.driver
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.literal(5))) == 5
            async with conn.stream(sa.select(sa.literal(6))) as result:
                assert [r[0] async for r in result] == [6]
            with anyio.move_on_after(0.3):
                await conn.exec_driver_sql(sys.argv[4])
            assert await conn.scalar(sa.select(sa.literal(7))) == 7
    finally:
        await engine.dispose()

anyio.run(main, backend=sys.argv[1])
assert "greenlet" not in sys.modules, "greenlet was imported"
print("NO GREENLET OK")
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_greenlet_is_never_imported(async_url: str, backend: str) -> None:
    kind = sa.make_url(async_url).drivername
    driver = NATIVE[kind][2] if backend == "trio" else kind.split("+")[1].replace("_async", "")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            GREENLET_BLOCKED,
            backend,
            async_url,
            driver,
            LONG_QUERY[kind.split("+")[0]],
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "NO GREENLET OK" in proc.stdout


async def test_pool_from_url_serves_an_engine(async_url: str, anyio_backend: Any) -> None:
    pool = create_async_pool_from_url(async_url)
    engine = create_async_engine(async_url, pool=pool)
    try:
        assert engine.pool is pool
        assert engine.driver == _expected_driver(async_url, anyio_backend)
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.literal(3))) == 3
            # the loop check and the interrupters' hooks are on this pool too
            with anyio.move_on_after(0.3) as scope:
                await conn.exec_driver_sql(LONG_QUERY[engine.dialect.name])
            assert scope.cancelled_caught
            assert await conn.scalar(sa.select(sa.literal(4))) == 4
        assert pool.checkedin() == 1
    finally:
        await engine.dispose()


async def test_mariadb_url_keeps_the_mariadb_dialect(tmp_path: Any, anyio_backend: Any) -> None:
    if "mysql+aiomysql" not in KINDS:
        pytest.skip("MySQL not selected")
    url = sa.make_url(_native_url("mysql+aiomysql", tmp_path)).set(drivername="mariadb+aiomysql")
    engine = create_async_engine(url)
    try:
        assert engine.dialect.name == "mariadb"
        assert engine.driver == ("pymysql" if _on_trio(anyio_backend) else "aiomysql")
        async with engine.connect() as conn:
            assert "MariaDB" in await conn.scalar(sa.text("SELECT VERSION()"))
    finally:
        await engine.dispose()


def test_engine_made_outside_a_loop_is_native_and_says_so_under_trio(async_url: str) -> None:
    """Created before any loop runs, the engine runs the async driver: under
    trio it refuses clearly, and async_driver="sync" is the way there."""
    engine = create_async_engine(async_url)
    assert engine.driver == sa.make_url(async_url).get_driver_name().replace("_async", "")

    async def one() -> Any:
        async with engine.connect() as conn:
            return await conn.scalar(sa.select(sa.literal(1)))

    try:
        with pytest.raises(exc.InvalidRequestError, match="async_driver='sync'"):
            anyio.run(one, backend="trio")
        assert engine.pool.checkedout() == 0
        assert anyio.run(one, backend="asyncio") == 1
    finally:
        anyio.run(engine.dispose, backend="asyncio")
    mapped = create_async_engine(async_url, async_driver="sync")
    try:
        assert anyio.run(_scalar_one, mapped, backend="trio") == 1
    finally:
        anyio.run(mapped.dispose, backend="trio")


async def _scalar_one(engine: AsyncEngine) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(sa.select(sa.literal(1)))
