"""The package never needs greenlet: a Core round trip with its import blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import _selected, subprocess_env, url_for

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class BlockGreenlet(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "greenlet" or name.startswith("greenlet."):
                raise ImportError(f"{name} is blocked by the test")
            return None

    sys.meta_path.insert(0, BlockGreenlet())
    assert "greenlet" not in sys.modules

    import anyio
    import sqlalchemy as sa
    import sqlalchemy_anyio
    from sqlalchemy_anyio import create_async_engine

    BACKEND, URL = sys.argv[1], sys.argv[2]
    metadata = sa.MetaData()
    table = sa.Table(
        "eng_nogreenlet",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(20)),
    )

    async def main():
        engine = create_async_engine(URL)
        if "+asyncpg" in URL:
            assert engine.driver == ("asyncpg" if BACKEND == "asyncio" else "psycopg")
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.drop_all)
                await conn.run_sync(metadata.create_all)
                await conn.execute(table.insert(), [{"id": i, "name": f"n{i}"} for i in range(50)])
            async with engine.connect() as conn:
                count = await conn.scalar(sa.select(sa.func.count()).select_from(table))
                assert count == 50, count
                async with conn.stream(sa.select(table).order_by(table.c.id)) as result:
                    ids = [row.id async for row in result]
                assert ids == list(range(50)), ids
                names = await (await conn.stream_scalars(sa.select(table.c.name))).all()
                assert len(names) == 50
            async with engine.begin() as conn:
                await conn.run_sync(metadata.drop_all)
        finally:
            await engine.dispose()

    anyio.run(main, backend=BACKEND)
    assert "greenlet" not in sys.modules, "greenlet was imported"
    print("ROUND TRIP OK", BACKEND)
    """
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_core_round_trip_with_greenlet_blocked(backend: str, tmp_path: Path) -> None:
    if backend == "trio":
        pytest.importorskip("trio")
    url = f"sqlite:///{tmp_path / 'nogreenlet.db'}"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, backend, url],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"ROUND TRIP OK {backend}" in proc.stdout


@pytest.mark.server
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_asyncpg_round_trip_with_greenlet_blocked(backend: str, tmp_path: Path) -> None:
    """asyncpg runs natively on asyncio (and maps to psycopg on trio), without greenlet."""
    if not _selected("postgresql+asyncpg"):
        pytest.skip("PostgreSQL not selected")
    pytest.importorskip("asyncpg")
    url = sa.make_url(url_for("postgresql+psycopg", tmp_path)).set(drivername="postgresql+asyncpg")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, backend, url.render_as_string(hide_password=False)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"ROUND TRIP OK {backend}" in proc.stdout


def test_blocker_really_blocks() -> None:
    """The finder used above does stop an import of greenlet (it is installed here)."""
    code = SCRIPT.split('assert "greenlet" not in sys.modules', 1)[0] + "import greenlet\n"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "greenlet is blocked by the test" in proc.stderr
