"""Tuning knobs as engine options: each engine has its own, validated with
ArgumentError; the environment variables are only the process-wide defaults."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa

from conftest import subprocess_env
from sqlalchemy_anyio import AsyncEngine, create_async_engine
from sqlalchemy_anyio._bridge import _impl
from sqlalchemy_anyio._engine_workers import workers_for


async def _worker_of(engine: AsyncEngine) -> Any:
    """The worker that runs one statement of ``engine``."""
    async with engine.connect() as conn:
        await conn.execute(sa.text("select 1"))
        worker = conn._current_worker()
        assert worker is not None
        return worker


@pytest.mark.anyio
async def test_two_engines_each_observe_their_own(tmp_path: Any) -> None:
    first = create_async_engine(
        f"sqlite:///{tmp_path}/a.db",
        loop_spin=0.0001,
        worker_spin=0.0002,
        active_workers=3,
        active_expire=0.004,
    )
    second = create_async_engine(
        f"sqlite:///{tmp_path}/b.db", loop_spin=0, worker_spin=0, active_workers=2
    )
    try:
        a, b = await _worker_of(first), await _worker_of(second)
        assert a._loop_spin == (0.0001 if _impl.ACCELERATED else 0.0)
        assert b._loop_spin == 0.0
        assert a._channel.worker_spin == 0.0002
        assert b._channel.worker_spin == 0.0
        gate_a, gate_b = workers_for(first.sync_engine).gate, workers_for(second.sync_engine).gate
        assert (gate_a.limit, gate_a.expire) == (3, 0.004)
        assert (gate_b.limit, gate_b.expire) == (2, _impl.ACTIVE_EXPIRE)
        assert gate_a is not gate_b and _impl.GATE not in (gate_a, gate_b)
    finally:
        await first.dispose()
        await second.dispose()


@pytest.mark.anyio
async def test_defaults_come_from_the_process(db_url: str) -> None:
    engine = create_async_engine(db_url)
    try:
        worker = await _worker_of(engine)
        assert worker._loop_spin == _impl.LOOP_SPIN
        assert worker._channel.worker_spin == _impl.Channel().worker_spin
        gate = workers_for(engine.sync_engine).gate
        if engine.dialect.name == "sqlite":  # its own gate, SQLALCHEMY_ANYIO_SQLITE_ACTIVE_WORKERS
            assert (gate.limit, gate.expire) == (_impl.SQLITE_ACTIVE_WORKERS, _impl.ACTIVE_EXPIRE)
        else:  # the process-wide one, SQLALCHEMY_ANYIO_ACTIVE_WORKERS
            assert gate is None
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_a_server_engine_may_have_a_gate_of_its_own(server_url: str) -> None:
    engine = create_async_engine(server_url, active_workers=2, active_expire=0.01)
    try:
        await _worker_of(engine)
        gate = workers_for(engine.sync_engine).gate
        assert (gate.limit, gate.expire) == (2, 0.01)
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_options_reach_engines_without_a_queue_pool(tmp_path: Any) -> None:
    """A memory database (one shared worker) and a NullPool take them too."""
    for url, kw in [
        ("sqlite://", {}),
        (f"sqlite:///{tmp_path}/n.db", {"poolclass": sa.pool.NullPool}),
    ]:
        engine = create_async_engine(url, worker_spin=0.0003, active_workers=4, **kw)
        try:
            worker = await _worker_of(engine)
            assert worker._channel.worker_spin == 0.0003
            assert workers_for(engine.sync_engine).gate.limit == 4
        finally:
            await engine.dispose()


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("loop_spin", -1, "a number of seconds from 0 to 1"),
        ("loop_spin", 2, "a number of seconds from 0 to 1"),
        ("loop_spin", "fast", "a number of seconds from 0 to 1"),
        ("loop_spin", True, "a number of seconds from 0 to 1"),
        ("worker_spin", -0.1, "a number of seconds from 0 to 1"),
        ("worker_spin", 1.5, "a number of seconds from 0 to 1"),
        ("worker_spin", [], "a number of seconds from 0 to 1"),
        ("active_workers", -1, "a whole number from 0 to 1000000"),
        ("active_workers", 1.5, "a whole number from 0 to 1000000"),
        ("active_workers", 10**7, "a whole number from 0 to 1000000"),
        ("active_workers", False, "a whole number from 0 to 1000000"),
        ("active_expire", 0, "a number of seconds above 0, at most 1"),
        ("active_expire", -1, "a number of seconds above 0, at most 1"),
        ("active_expire", 5, "a number of seconds above 0, at most 1"),
        ("overflow_linger", -1, "a number of seconds from 0 to 3600"),
    ],
)
def test_bad_values_say_what_is_allowed(
    option: str, value: Any, allowed: str, tmp_path: Any
) -> None:
    with pytest.raises(sa.exc.ArgumentError, match=f"{option} must be {allowed}"):
        create_async_engine(f"sqlite:///{tmp_path}/x.db", **{option: value})


def test_strings_from_a_configuration_file_are_read(tmp_path: Any) -> None:
    from sqlalchemy_anyio import async_engine_from_config

    engine = async_engine_from_config(
        {
            "sqlalchemy.url": f"sqlite:///{tmp_path}/c.db",
            "sqlalchemy.active_workers": "2",
            "sqlalchemy.active_expire": "0.005",
        }
    )
    gate = workers_for(engine.sync_engine).gate
    assert (gate.limit, gate.expire) == (2, 0.005)
    engine.sync_engine.dispose()


@pytest.mark.parametrize(
    "url", ["sqlite://", "postgresql+psycopg://nobody@127.0.0.1:1/none"], ids=["memory", "server"]
)
def test_active_expire_needs_a_gate_of_the_engines_own(url: str) -> None:
    with pytest.raises(sa.exc.ArgumentError, match="active_expire applies to an engine with"):
        create_async_engine(url, active_expire=0.01)
    create_async_engine(url, active_workers=1, active_expire=0.01).sync_engine.dispose()


def test_environment_variables_are_the_defaults(tmp_path: Any) -> None:
    code = f"""
import anyio, sqlalchemy as sa
from sqlalchemy_anyio import create_async_engine
from sqlalchemy_anyio._bridge import _impl
from sqlalchemy_anyio._engine_workers import workers_for

async def main():
    engine = create_async_engine("sqlite:///{tmp_path}/e.db")
    async with engine.connect() as conn:
        await conn.execute(sa.text("select 1"))
        worker = conn._current_worker()
        gate = workers_for(engine.sync_engine).gate
        print(worker._loop_spin, worker._channel.worker_spin, gate.limit, gate.expire,
              _impl.GATE.limit, _impl.ACCELERATED)
    await engine.dispose()

anyio.run(main)
"""
    env = subprocess_env()
    env.update(
        SQLALCHEMY_ANYIO_LOOP_SPIN_US="250",
        SQLALCHEMY_ANYIO_WORKER_SPIN_US="50",
        SQLALCHEMY_ANYIO_SQLITE_ACTIVE_WORKERS="3",
        SQLALCHEMY_ANYIO_ACTIVE_EXPIRE_US="4000",
        SQLALCHEMY_ANYIO_ACTIVE_WORKERS="5",
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    loop_spin, worker_spin, limit, expire, process_limit, accelerated = out.stdout.split()
    assert float(loop_spin) == (0.00025 if accelerated == "True" else 0.0)
    assert (float(worker_spin), int(limit), float(expire)) == (5e-05, 3, 0.004)
    assert int(process_limit) == 5
