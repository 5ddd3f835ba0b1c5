"""Shared fixtures: every async test runs on asyncio, asyncio+uvloop and trio.

Databases: SQLite files always; PostgreSQL and MariaDB when their servers
answer (URLs from SQLALCHEMY_ANYIO_PG_URL / SQLALCHEMY_ANYIO_MYSQL_URL).
Under CI=true an unreachable server fails the run instead of skipping.
``SQLALCHEMY_ANYIO_DATABASES`` (comma list of fixture ids, e.g. ``sqlite``)
narrows the set.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import sqlalchemy as sa

from sqlalchemy_anyio import AsyncEngine, create_async_engine

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

PG_URL = os.environ.get(
    "SQLALCHEMY_ANYIO_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("SQLALCHEMY_ANYIO_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


#: In the statements this run leaves for a server to inspect (a long query it
#: cancels, then looks for), so that runs sharing the servers (two suites at
#: once, CI beside a developer) each find only their own.
RUN_MARKER = f"sqlalchemy-anyio-test-{uuid.uuid4().hex[:12]}"


def _backends() -> list[Any]:
    params: list[Any] = [pytest.param(("asyncio", {}), id="asyncio")]
    params.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))
    params.append(pytest.param(("trio", {}), id="trio"))
    return params


@pytest.fixture(params=_backends())
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    name, options = request.param
    if options.get("use_uvloop") and importlib.util.find_spec("uvloop") is None:
        _unavailable("uvloop is not installed")
    if name == "trio" and importlib.util.find_spec("trio") is None:
        _unavailable("trio is not installed")
    return request.param


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required)")
    pytest.skip(reason)


# -- database URLs ------------------------------------------------------------

_DRIVER_MODULES = {
    "sqlite": "sqlite3",
    "postgresql+psycopg": "psycopg",
    "postgresql+psycopg2": "psycopg2",
    "mysql+pymysql": "pymysql",
    "mysql+mysqldb": "MySQLdb",
}

_reachable: dict[str, str | None] = {}


#: Each run works in a database of its own on each server, made at its first
#: server test and dropped at the end, so that runs sharing a server (two
#: suites at once, CI beside a developer) never meet in a table.  The URL
#: names the database to make it from; a server that refuses CREATE DATABASE
#: is used as it is.
RUN_DATABASE = f"sqlalchemy_anyio_t_{RUN_MARKER[-12:]}"
_own_databases: dict[str, Optional[sa.URL]] = {}  # base URL -> the run's own database


def _admin_url(base: sa.URL) -> sa.URL:
    driver = "postgresql+psycopg" if base.get_backend_name() == "postgresql" else "mysql+pymysql"
    return base.set(drivername=driver)


def _own_database(base: sa.URL) -> sa.URL:
    key = base.render_as_string(hide_password=False)
    if key not in _own_databases:
        admin = sa.create_engine(
            _admin_url(base), poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT"
        )
        quote = '"' if base.get_backend_name() == "postgresql" else "`"
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {quote}{RUN_DATABASE}{quote}")
            _own_databases[key] = base.set(database=RUN_DATABASE)
        except sa.exc.DBAPIError:  # not allowed here: share the given database
            _own_databases[key] = None
        finally:
            admin.dispose()
    own = _own_databases[key]
    return own if own is not None else base


def _drop_own_databases() -> None:
    for own in _own_databases.values():
        if own is None:
            continue
        quote = '"' if own.get_backend_name() == "postgresql" else "`"
        base = own.set(database="postgres" if own.get_backend_name() == "postgresql" else "mysql")
        admin = sa.create_engine(
            _admin_url(base), poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT"
        )
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quote}{RUN_DATABASE}{quote}")
        except sa.exc.DBAPIError as exc:  # left for the server's owner; say so
            print(f"\ncould not drop the test database {RUN_DATABASE}: {exc}")
        finally:
            admin.dispose()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _drop_own_databases()


def _server_url(kind: str) -> str:
    base = sa.make_url(PG_URL if kind.startswith("postgresql") else MYSQL_URL)
    return base.set(drivername=kind).render_as_string(hide_password=False)


def _check_server(kind: str) -> None:
    """Skip (or fail under CI) when the driver or the server is missing."""
    module = _DRIVER_MODULES[kind]
    if importlib.util.find_spec(module) is None:
        _unavailable(f"driver {module} for {kind} is not installed")
    url = _server_url(kind)
    if url not in _reachable:
        try:
            engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            engine.dispose()
            _reachable[url] = None
        except Exception as exc:  # noqa: BLE001 - reported as the skip reason
            _reachable[url] = f"{kind} server at {url} is unreachable: {exc}"
    problem = _reachable[url]
    if problem:
        _unavailable(problem)


def _run_url(kind: str) -> str:
    """A server test's URL: the run's own database on that server."""
    base = sa.make_url(PG_URL if kind.startswith("postgresql") else MYSQL_URL)
    own = _own_database(base)
    return own.set(drivername=kind).render_as_string(hide_password=False)


def _selected(kind: str) -> bool:
    wanted = os.environ.get("SQLALCHEMY_ANYIO_DATABASES")
    if not wanted:
        return True
    names = {w.strip() for w in wanted.split(",")}
    return kind in names or kind.split("+")[0] in names


ALL_DATABASES = [k for k in _DRIVER_MODULES if _selected(k)]
SERVER_DATABASES = [k for k in ALL_DATABASES if k != "sqlite"]


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    """A fresh SQLite database file."""
    return f"sqlite:///{tmp_path / 'test.db'}"


def url_for(kind: str, tmp_path: Any) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    _check_server(kind)
    return _run_url(kind)


@pytest.fixture(params=ALL_DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Each database kind in turn: SQLite file, then the servers' drivers."""
    if request.param != "sqlite":
        request.applymarker(pytest.mark.server)
    return url_for(request.param, tmp_path)


def _params(kinds: list[str], what: str) -> list[Any]:
    """Fixture params: ``kinds``, or one skipped param saying none of ``what`` was selected."""
    if kinds:
        return list(kinds)
    reason = f"no {what} database selected (SQLALCHEMY_ANYIO_DATABASES)"
    return [pytest.param("none", marks=pytest.mark.skip(reason=reason))]


MYSQL_DATABASES = [k for k in SERVER_DATABASES if k.startswith("mysql")]
POSTGRESQL_DATABASES = [k for k in SERVER_DATABASES if k.startswith("postgresql")]


@pytest.fixture(params=_params(SERVER_DATABASES, "server"))
def server_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Each server database/driver in turn (PostgreSQL, MariaDB)."""
    return url_for(request.param, tmp_path)


@pytest.fixture(params=_params(MYSQL_DATABASES, "MySQL"))
def mysql_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Each MySQL/MariaDB driver in turn."""
    return url_for(request.param, tmp_path)


@pytest.fixture(params=_params(POSTGRESQL_DATABASES, "PostgreSQL"))
def postgresql_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Each PostgreSQL driver in turn."""
    return url_for(request.param, tmp_path)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine on each database, disposed afterwards."""
    eng = create_async_engine(db_url)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
async def sqlite_engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(sqlite_url)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def metadata() -> Iterator[sa.MetaData]:
    yield sa.MetaData()


@pytest.fixture
async def table(engine: AsyncEngine, metadata: sa.MetaData) -> AsyncIterator[sa.Table]:
    """A fresh (id, name) table with a unique ``eng_`` name: runs may share a server."""
    t = sa.Table(
        f"eng_{uuid.uuid4().hex[:12]}",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(30)),
    )
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        yield t
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)


SRC = Path(__file__).resolve().parents[1] / "src"


SERVER_LONG_QUERY = {
    "postgresql": f"SELECT pg_sleep(20), '{RUN_MARKER}'",
    "mysql": f"SELECT SLEEP(20), '{RUN_MARKER}'",
}


def server_still_running(sync_url: Any, kind: str) -> int:
    """How many copies of this run's long query (``SERVER_LONG_QUERY[kind]``)
    the server still executes, read through a synchronous ``sync_url``."""
    if kind == "postgresql":
        sql = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = :q"
    else:
        sql = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = :q"
    engine = sa.create_engine(sync_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            n = conn.scalar(sa.text(sql), {"q": SERVER_LONG_QUERY[kind]})
    finally:
        engine.dispose()
    return int(n or 0)


def subprocess_env() -> dict[str, str]:
    """Environment for a child Python that must import this checkout, if that
    is where the package under test came from."""
    import sqlalchemy_anyio

    env = os.environ.copy()
    if SRC in Path(sqlalchemy_anyio.__file__).resolve().parents:
        parts = [str(SRC), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(parts)
    return env
