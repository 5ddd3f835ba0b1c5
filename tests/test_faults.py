"""Faults on the servers: killed backends, restarts, an exhausted pool."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import anyio
import pytest
import sqlalchemy as sa

from conftest import IN_CI, _selected, url_for
from sqlalchemy_anyio import AsyncConnection, create_async_engine

pytestmark = pytest.mark.anyio


async def _backend_id(conn: AsyncConnection) -> int:
    if conn.dialect.name == "postgresql":
        return int(await conn.scalar(sa.text("SELECT pg_backend_pid()")))
    return int(await conn.scalar(sa.text("SELECT CONNECTION_ID()")))


def _kill(url: str, dialect: str, backend: int) -> None:
    """Kill a server session from outside, as an operator or a failover would."""
    sync = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with sync.connect() as c:
        if dialect == "postgresql":
            c.exec_driver_sql(f"SELECT pg_terminate_backend({backend})")
        else:
            c.exec_driver_sql(f"KILL {backend}")
    sync.dispose()


async def test_killed_backend_invalidates_and_pre_ping_recovers(server_url: str) -> None:
    engine = create_async_engine(server_url, pool_size=1, max_overflow=0, pool_pre_ping=True)
    try:
        async with engine.connect() as conn:
            victim = await _backend_id(conn)
            _kill(server_url, engine.dialect.name, victim)
            await anyio.sleep(0.2)
            with pytest.raises(sa.exc.DBAPIError) as info:
                await conn.execute(sa.select(sa.literal(1)))
            assert info.value.connection_invalidated
            assert conn.invalidated
        # The pool's checkout pings, finds nothing usable and reconnects.
        async with engine.connect() as conn:
            assert await _backend_id(conn) != victim
            assert await conn.scalar(sa.select(sa.literal(2))) == 2
        # A connection killed while idle in the pool is replaced transparently.
        async with engine.connect() as conn:
            idle_victim = await _backend_id(conn)
        _kill(server_url, engine.dialect.name, idle_victim)
        await anyio.sleep(0.2)
        async with engine.connect() as conn:
            assert await _backend_id(conn) != idle_victim
        assert engine.pool.checkedout() == 0
    finally:
        await engine.dispose()


async def test_exhausted_pool_times_out(server_url: str) -> None:
    engine = create_async_engine(server_url, pool_size=1, max_overflow=0, pool_timeout=0.5)
    try:
        async with engine.connect():
            started = time.monotonic()
            with pytest.raises(sa.exc.TimeoutError):
                await engine.connect()
            assert time.monotonic() - started >= 0.4
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.literal(3))) == 3
    finally:
        await engine.dispose()


def _pg_restart() -> None:
    clusters = os.listdir("/etc/postgresql")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", clusters[0], "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
async def test_postgresql_restart_is_survived(anyio_backend: object, tmp_path: object) -> None:
    """A server restart mid-run: the caller sees a DBAPI error, then work resumes."""
    if not _selected("postgresql+psycopg"):
        pytest.skip("PostgreSQL not selected")  # and a SQLite-only run leaves the server be
    if os.environ.get("SQLALCHEMY_ANYIO_SHARED_SERVERS"):
        pytest.skip("the servers are shared with another suite (scripts/pythons.sh): no restart")
    if not (shutil.which("pg_ctlcluster") and os.path.isdir("/etc/postgresql")):
        if IN_CI:
            pytest.fail("pg_ctlcluster is required to restart PostgreSQL under CI")
        pytest.skip("no local PostgreSQL cluster to restart")
    url = url_for("postgresql+psycopg", tmp_path)
    engine = create_async_engine(url, pool_size=2, max_overflow=0, pool_pre_ping=True)
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(sa.literal(1))) == 1
            await anyio.to_thread.run_sync(_pg_restart)
            with pytest.raises(sa.exc.DBAPIError) as info:
                await conn.execute(sa.select(sa.literal(1)))
            assert info.value.connection_invalidated
        for _ in range(100):
            try:
                async with engine.connect() as conn:
                    assert await conn.scalar(sa.select(sa.literal(5))) == 5
                break
            except sa.exc.OperationalError:  # still starting up
                await anyio.sleep(0.1)
        else:
            pytest.fail("PostgreSQL did not come back after restart")
        assert engine.pool.checkedout() == 0
    finally:
        await engine.dispose()
