"""URLs written for the official extension (async drivers) map to sync drivers.

The drivers that can run natively on asyncio (see test_async_drivers) are
mapped when asked with ``async_driver="sync"``, and under trio.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import sqlalchemy as sa

from sqlalchemy_anyio import (
    _urls,
    async_engine_from_config,
    create_async_engine,
    create_async_pool_from_url,
    exc,
)

pytestmark = pytest.mark.anyio

ONE = sa.select(sa.literal(1))


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Forget which mappings were already announced, and capture the log."""
    monkeypatch.setattr(_urls, "_warned", set())
    caplog.set_level(logging.WARNING, logger="sqlalchemy_anyio")


def _mapping_records(caplog: pytest.LogCaptureFixture, async_driver: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "sqlalchemy_anyio" and async_driver in r.getMessage()
    ]


async def test_aiosqlite_url_runs_on_pysqlite(
    tmp_path: Path, fresh_warnings: None, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'aio.db'}"
    with pytest.warns(exc.DriverMappedWarning) as caught:
        engine = create_async_engine(url)
        again = create_async_engine(url)
    try:
        assert engine.driver == "pysqlite"
        assert engine.url.drivername == "sqlite+pysqlite"
        assert engine.url.database == str(tmp_path / "aio.db")
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE eng_aio (id INTEGER PRIMARY KEY)")
            await conn.exec_driver_sql("INSERT INTO eng_aio (id) VALUES (1), (2)")
        async with again.connect() as conn:
            assert await conn.scalar(sa.text("SELECT COUNT(*) FROM eng_aio")) == 2
    finally:
        await engine.dispose()
        await again.dispose()
    messages = _mapping_records(caplog, "sqlite+aiosqlite")
    assert len(messages) == 1, messages  # one warning per mapping, not per engine
    assert "sqlite+pysqlite" in messages[0]
    mapped = [w for w in caught if issubclass(w.category, exc.DriverMappedWarning)]
    assert len(mapped) == 1, [str(w.message) for w in mapped]
    assert "sqlite+pysqlite" in str(mapped[0].message)
    assert mapped[0].filename == __file__  # points at the caller, not at the package


def test_mapping_warns_with_logging_configured_away(fresh_warnings: None) -> None:
    """Alembic's env.py calls logging.config.fileConfig(), which disables every
    existing logger it does not name (ours); the warning still reaches the user."""
    logging.getLogger("sqlalchemy_anyio").disabled = True
    try:
        with pytest.warns(exc.DriverMappedWarning, match="postgresql\\+asyncpg"):
            engine = async_engine_from_config(
                {"sqlalchemy.url": "postgresql+asyncpg://u@db.invalid/t"}, async_driver="sync"
            )
        assert engine.url.drivername == "postgresql+psycopg"
    finally:
        logging.getLogger("sqlalchemy_anyio").disabled = False


def test_mapping_warning_can_be_silenced(fresh_warnings: None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=exc.DriverMappedWarning)
        engine = create_async_engine("mysql+aiomysql://u@db.invalid/t", async_driver="sync")
    assert engine.url.drivername == "mysql+pymysql"
    assert issubclass(exc.DriverMappedWarning, UserWarning)


def test_sync_url_logs_nothing(
    tmp_path: Path, fresh_warnings: None, caplog: pytest.LogCaptureFixture
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = create_async_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    assert engine.driver == "pysqlite"
    assert [r for r in caplog.records if r.name == "sqlalchemy_anyio"] == []


@pytest.mark.parametrize(
    ("async_url", "sync_drivername"),
    [
        ("sqlite+aiosqlite://", "sqlite+pysqlite"),
        ("postgresql+asyncpg://scott:tiger@db.invalid/test", "postgresql+psycopg"),
        ("postgresql+psycopg_async://scott:tiger@db.invalid/test", "postgresql+psycopg"),
        ("mysql+aiomysql://scott:tiger@db.invalid/test", "mysql+pymysql"),
        ("mysql+asyncmy://scott:tiger@db.invalid/test", "mysql+pymysql"),
        ("mariadb+aiomysql://scott:tiger@db.invalid/test", "mariadb+pymysql"),
    ],
)
def test_async_drivers_map_to_sync_ones(async_url: str, sync_drivername: str) -> None:
    """Creating the engine connects to nothing: the mapping alone is checked."""
    engine = create_async_engine(async_url, async_driver="sync")
    assert engine.url.drivername == sync_drivername
    assert engine.driver == sync_drivername.split("+")[1]
    expected = sa.make_url(async_url).set(drivername=sync_drivername)
    assert engine.url == expected  # host, credentials, database kept
    assert create_async_pool_from_url(sa.make_url(async_url)) is not None
    if async_url.startswith("sqlite"):  # always mapped, whatever the option says
        assert create_async_engine(async_url).url.drivername == sync_drivername


# Which async URL maps to each server driver of the db fixtures, and which
# preferred sync drivers must look uninstalled for that mapping to be chosen.
_ASYNC_FOR = {
    "postgresql+psycopg": ("postgresql+asyncpg", set()),
    "postgresql+psycopg2": ("postgresql+asyncpg", {"psycopg"}),
    "mysql+pymysql": ("mysql+aiomysql", set()),
    "mysql+mysqldb": ("mysql+asyncmy", {"pymysql"}),
}


async def test_async_server_url_queries(server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sync_url = sa.make_url(server_url)
    async_drivername, hidden = _ASYNC_FOR[sync_url.drivername]
    installed = _urls._installed
    monkeypatch.setattr(
        _urls, "_installed", lambda module: module not in hidden and installed(module)
    )
    engine = create_async_engine(sync_url.set(drivername=async_drivername), async_driver="sync")
    try:
        assert engine.url.drivername == sync_url.drivername
        assert engine.driver == sync_url.get_driver_name()
        async with engine.connect() as conn:
            assert await conn.scalar(ONE) == 1
    finally:
        await engine.dispose()


def test_async_engine_from_config_maps_too() -> None:
    engine = async_engine_from_config({"sqlalchemy.url": "sqlite+aiosqlite://"})
    assert engine.url.drivername == "sqlite+pysqlite"


@pytest.mark.parametrize(
    ("async_url", "requirements"),
    [
        ("postgresql+asyncpg://u@db.invalid/t", ["psycopg[binary]", "psycopg2-binary"]),
        ("mysql+aiomysql://u@db.invalid/t", ["PyMySQL", "mysqlclient"]),
        ("mssql+aioodbc://u@db.invalid/t", ["pyodbc"]),
    ],
)
def test_missing_sync_driver_names_what_to_install(
    async_url: str, requirements: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_urls, "_installed", lambda module: False)
    with pytest.raises(sa.exc.ArgumentError) as info:
        create_async_engine(async_url, async_driver="sync")
    message = str(info.value)
    assert "pip install" in message
    for requirement in requirements:
        assert repr(requirement) in message
    assert sa.make_url(async_url).drivername in message
    with pytest.raises(sa.exc.ArgumentError):
        create_async_pool_from_url(async_url, async_driver="sync")


def test_unknown_driver_is_sqlalchemys_error() -> None:
    with pytest.raises(sa.exc.NoSuchModuleError):
        create_async_engine("postgresql+eng_no_such_driver://u@db.invalid/t")
    assert issubclass(sa.exc.NoSuchModuleError, sa.exc.ArgumentError)
