"""Run real clients of SQLAlchemy's asyncio extension on sqlalchemy_anyio.

Clients, each on SQLite, PostgreSQL and MySQL/MariaDB, asyncio and trio:

* SQLAlchemy's own ``examples/asyncio`` (from the sdist of the installed
  SQLAlchemy), with ``sqlalchemy.ext.asyncio`` resolved to sqlalchemy_anyio by
  the import alias in ``shim/`` and the example's hard-coded
  ``postgresql+asyncpg://scott:tiger@localhost/test`` pointed at our database.
  On trio when the only asyncio call in the script is its
  ``asyncio.run(async_main())`` entry point (replaced by ``trio.run``).  Not on
  MySQL: their ``String`` columns have no length.
* Alembic's ``async`` template: ``alembic init -t async``, the generated
  env.py's import switched to sqlalchemy_anyio (the one-line edit a user
  makes; no alias), a model module, then ``revision --autogenerate``,
  ``upgrade head``, ``check``, ``downgrade base``, with the tables checked
  after each migration.  env.py's ``asyncio.run`` entry point is swapped for
  trio the same way.
* fastapi-users-db-sqlalchemy's test suite (from its sdist) through the import
  alias: on asyncio with pytest-asyncio as upstream runs it, and on trio
  through anyio's pytest plugin (shim/compat_anyio_trio.py).
* OpenTelemetry's SQLAlchemy instrumentation (otel_check.py) through the
  alias: concurrent requests, each in its own span; every SQL span must be a
  child of its request's span (asyncio, uvloop and trio).
* SQLAlchemy's own ``test/ext/asyncio`` (from the sdist of the SQLAlchemy in
  requirements/compat-suite.txt), run by its own pytest plugin on the official
  extension and then, through the alias, on sqlalchemy_anyio, in an environment
  of its own (its harness needs greenlet): ours must pass everything the
  official passes, but for the tests docs/sqlalchemy-suite.md lists with why.

The environment (requirements/compat.txt) has neither greenlet nor an async
driver, so the official extension cannot have served any of these: whatever
passes ran on sqlalchemy_anyio.  Async URLs (``+aiosqlite``, ``+asyncpg``,
``+aiomysql``) are kept as the clients write them and mapped by sqlalchemy_anyio.

The server databases, SQLALCHEMY_ANYIO_COMPAT_PG_URL and
SQLALCHEMY_ANYIO_COMPAT_MYSQL_URL (defaults below, database
``sqlalchemy_anyio_compat``), are created if missing and EMPTIED before each
client run (PostgreSQL: schema ``public`` dropped and re-created; MySQL: the
database dropped and re-created): never point them at data you want to keep.

Usage: run.py [--clients examples,alembic,fastapi-users,opentelemetry,sqlalchemy-suite]
              [--databases sqlite,postgresql,mysql] [--loops asyncio,trio]
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SHIM = HERE / "shim"
SOURCES = ROOT / "requirements" / "compat-sources.txt"
CACHE = Path(sys.prefix) / "compat-sources"
BIN = Path(sys.executable).parent
DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/sqlalchemy_anyio_compat"
DEFAULT_MYSQL = "mysql+aiomysql://root@127.0.0.1:3306/sqlalchemy_anyio_compat"
EXAMPLE_URL = '"postgresql+asyncpg://scott:tiger@localhost/test"'
ENTRY = "asyncio.run(async_main())"
ENV_PY_IMPORT = "from sqlalchemy.ext.asyncio import async_engine_from_config"
ENV_PY_ENTRY = "asyncio.run(run_async_migrations())"
TIMEOUT = 300  # seconds for one client command: a hang fails the job, not CI's clock


class Failed(Exception):
    """A client step failed; the message says which and why."""


@dataclass
class Outcome:
    client: str
    database: str
    loop: str
    ok: Optional[bool]  # None: skipped
    seconds: float
    note: str = ""


def log(msg: str) -> None:
    print(msg, flush=True)


def run(
    cmd: list[str],
    cwd: Path,
    env: Optional[dict[str, str]] = None,
    alias: bool = False,
    allow_failures: bool = False,
) -> str:
    """Run a client command; return its output, raise Failed with it if it fails
    (with ``allow_failures``, only if it exits non-zero: a test suite whose
    failures the caller reads itself)."""
    full_env = dict(os.environ)
    full_env.pop("PYTHONPATH", None)
    if alias:
        full_env["PYTHONPATH"] = str(SHIM)
    full_env.update(env or {})
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        output = e.output.decode(errors="replace") if isinstance(e.output, bytes) else e.output
        raise Failed(f"{' '.join(cmd)} still running after {TIMEOUT}s:\n{output or ''}") from None
    if proc.returncode != 0 and not (allow_failures and proc.returncode == 1):
        raise Failed(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-6000:]}")
    if allow_failures:
        return proc.stdout
    # what an exit status does not show: errors swallowed in finalizers,
    # callbacks or threads, and coroutines dropped unawaited
    for sign in ("Traceback (most recent call last)", "Exception ignored", "never awaited"):
        if sign in proc.stdout:
            raise Failed(f"{' '.join(cmd)} printed {sign!r}:\n{proc.stdout[-6000:]}")
    return proc.stdout


def replace_once(text: str, old: str, new: str, where: str) -> str:
    """Replace ``old`` exactly once, so an upstream change fails loudly."""
    n = text.count(old)
    if n != 1:
        raise Failed(f"{where}: expected {old!r} once, found it {n} times")
    return text.replace(old, new)


# -- environment ---------------------------------------------------------------


def check_environment() -> None:
    """The official extension must be unusable here (see module docstring).

    Without greenlet, SQLAlchemy 2.1 refuses to import ``sqlalchemy.ext.asyncio``
    at all, and 2.0 fails on the first statement.
    """
    async_drivers = ("greenlet", "aiosqlite", "asyncpg", "aiomysql", "asyncmy")
    present = [m for m in async_drivers if importlib.util.find_spec(m)]
    if present:
        raise SystemExit(
            f"{', '.join(present)} installed in {sys.prefix}: the compatibility environment "
            "must not be able to run the official extension; recreate it from "
            "requirements/compat.txt"
        )


def sdist(requirement: str) -> Path:
    """Download (once) and return the sdist for ``name==version``."""
    name, version = requirement.split("==")
    stem = f"{name.replace('-', '_').lower()}-{version}"
    CACHE.mkdir(exist_ok=True)
    found = [p for p in CACHE.iterdir() if p.name.lower().startswith(stem)]
    if not found:
        log(f"downloading the {requirement} sdist")
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        options = ["-q", "--no-deps", "--no-binary", ":all:", "-d", str(CACHE)]
        subprocess.run([*pip, "download", *options, requirement], check=True)
        found = [p for p in CACHE.iterdir() if p.name.lower().startswith(stem)]
    if len(found) != 1 or not found[0].name.endswith(".tar.gz"):
        raise SystemExit(f"expected one {stem}*.tar.gz in {CACHE}, found {found}")
    return found[0]


def extract(archive: Path, member_prefix: str, dest: Path) -> Path:
    """Extract the members under ``<top>/<member_prefix>`` and return that folder."""
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
        prefix = f"{top}/{member_prefix}".rstrip("/")
        members = [m for m in tar.getmembers() if (m.name + "/").startswith(prefix + "/")]
        if not members:
            raise SystemExit(f"{archive.name} has no {prefix}")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **kwargs)  # type: ignore[arg-type]
    return dest / prefix


def pinned_source(name: str) -> str:
    for line in SOURCES.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.lower().startswith(name + "=="):
            return line
    raise SystemExit(f"{SOURCES} pins no {name}")


# -- databases -----------------------------------------------------------------


@dataclass
class Database:
    name: str
    url: Callable[[Path], str]  # async URL as a client writes it, given a scratch folder
    reset: Callable[[], None]

    def tables(self, scratch: Path) -> set[str]:
        """Table names in the database, read with a plain synchronous engine."""
        from sqlalchemy import create_engine, inspect, make_url

        url = make_url(self.url(scratch))
        driver = {"postgresql": "psycopg", "mysql": "pymysql", "sqlite": "pysqlite"}[
            url.get_backend_name()
        ]
        engine = create_engine(url.set(drivername=f"{url.get_backend_name()}+{driver}"))
        try:
            return set(inspect(engine).get_table_names())
        finally:
            engine.dispose()


def postgresql(url: str) -> Database:
    from sqlalchemy import create_engine, make_url, text

    target = make_url(url)
    sync = target.set(drivername="postgresql+psycopg")

    admin = create_engine(sync.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.scalar(
            text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": target.database}
        )
        if not exists:
            log(f"creating database {target.database!r}")
            conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()

    def reset() -> None:
        engine = create_engine(sync, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()

    return Database("postgresql", lambda _: target.render_as_string(False), reset)


def mysql(url: str) -> Database:
    from sqlalchemy import create_engine, make_url, text

    target = make_url(url)
    sync = target.set(drivername="mysql+pymysql")
    name = target.database

    def reset() -> None:
        admin = create_engine(sync.set(database="mysql"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            conn.execute(text(f"CREATE DATABASE `{name}`"))
        admin.dispose()

    reset()
    return Database("mysql", lambda _: target.render_as_string(False), reset)


def sqlite() -> Database:
    return Database("sqlite", lambda d: f"sqlite+aiosqlite:///{d / 'compat.db'}", lambda: None)


# -- clients -------------------------------------------------------------------


class Skipped(Exception):
    """This client cannot run on this loop; the message says why."""


def attempt(
    client: str, db: Database, loop: str, step: Callable[..., str], *args: object
) -> Outcome:
    """Run one client on one database and loop: ``step(*args, db, loop)`` returns a note."""
    t0 = time.perf_counter()
    try:
        note = step(*args, db, loop)
    except Skipped as e:
        return Outcome(client, db.name, loop, None, 0.0, str(e))
    except Failed as e:
        return Outcome(client, db.name, loop, False, time.perf_counter() - t0, str(e))
    return Outcome(client, db.name, loop, True, time.perf_counter() - t0, note)


def trio_entry(source: str, entry: str, fn: str) -> str:
    """``source`` with its asyncio entry point run on trio; Skipped if it uses asyncio otherwise."""
    tree = ast.parse(source.replace(entry, "pass"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "asyncio":
                raise Skipped(f"calls asyncio.{node.attr} itself")
    return replace_once(source, entry, f'__import__("trio").run({fn})', "entry point")


def examples(dbs: list[Database], loops: list[str], scratch: Path) -> Iterator[Outcome]:
    import sqlalchemy

    folder = extract(sdist(f"sqlalchemy=={sqlalchemy.__version__}"), "examples/asyncio", scratch)

    def example(script: Path, db: Database, loop: str) -> str:
        if db.name == "mysql":
            raise Skipped("the examples' String columns have no length, which MySQL requires")
        work = Path(tempfile.mkdtemp(dir=scratch))
        source = replace_once(script.read_text(), EXAMPLE_URL, repr(db.url(work)), script.name)
        if loop == "trio":
            source = trio_entry(source, ENTRY, "async_main")
        (work / script.name).write_text(source)
        db.reset()
        run([sys.executable, script.name], work, alias=True)
        return ""

    for script in sorted(folder.glob("*.py")):
        if script.name != "__init__.py":
            for db in dbs:
                for loop in loops:
                    yield attempt(f"examples/asyncio/{script.name}", db, loop, example, script)


MODELS = '''\
"""Models for the compatibility job's Alembic run."""
import enum

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Role(enum.Enum):
    admin = "admin"
    member = "member"


class Account(Base):
    __tablename__ = "compat_account"
    __table_args__ = (UniqueConstraint("email", name="uq_compat_account_email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))
    role: Mapped[Role] = mapped_column(default=Role.member)
    status: Mapped[str] = mapped_column(String(20), server_default="active")
    notes: Mapped[list["Note"]] = relationship(back_populates="account")


class Note(Base):
    __tablename__ = "compat_note"
    __table_args__ = (Index("ix_compat_note_title", "title"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("compat_account.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(100))
    body: Mapped[str | None] = mapped_column(String(2000))
    account: Mapped[Account] = relationship(back_populates="notes")
'''
AUTOGENERATED = (
    "op.create_table('compat_account'",
    "op.create_table('compat_note'",
    "ix_compat_note_title",
    "uq_compat_account_email",
)


def alembic(dbs: list[Database], loops: list[str], scratch: Path) -> Iterator[Outcome]:
    exe = str(BIN / "alembic")

    def migrate(db: Database, loop: str) -> str:
        work = Path(tempfile.mkdtemp(dir=scratch))
        db.reset()
        run([exe, "init", "-t", "async", "migrations"], work)
        ini = work / "alembic.ini"
        pattern, url = r"^sqlalchemy\.url = .*$", f"sqlalchemy.url = {db.url(work)}"
        text, n = re.subn(pattern, url, ini.read_text(), flags=re.M)
        if n != 1:
            raise Failed(f"alembic.ini: expected one sqlalchemy.url line, found {n}")
        ini.write_text(text)
        env_py = work / "migrations" / "env.py"
        src = env_py.read_text()
        ours = "from sqlalchemy_anyio import async_engine_from_config"
        src = replace_once(src, ENV_PY_IMPORT, ours, "env.py")
        metadata = "from models import Base\ntarget_metadata = Base.metadata"
        src = replace_once(src, "target_metadata = None", metadata, "env.py")
        if loop == "trio":
            src = trio_entry(src, ENV_PY_ENTRY, "run_async_migrations")
        env_py.write_text(src)
        (work / "models.py").write_text(MODELS)

        run([exe, "revision", "--autogenerate", "-m", "init"], work)
        (revision,) = (work / "migrations" / "versions").glob("*_init.py")
        body = revision.read_text()
        missed = [name for name in AUTOGENERATED if name not in body]
        if missed:
            raise Failed(f"autogenerate missed {missed}:\n{body}")
        run([exe, "upgrade", "head"], work)
        tables = db.tables(work)
        if not {"compat_account", "compat_note", "alembic_version"} <= tables:
            raise Failed(f"tables after upgrade head: {sorted(tables)}")
        run([exe, "check"], work)
        run([exe, "downgrade", "base"], work)
        tables = db.tables(work)
        if tables & {"compat_account", "compat_note"}:
            raise Failed(f"tables after downgrade base: {sorted(tables)}")
        return ""

    for db in dbs:
        for loop in loops:
            yield attempt("alembic -t async", db, loop, migrate)


def fastapi_users(dbs: list[Database], loops: list[str], scratch: Path) -> Iterator[Outcome]:
    root = extract(sdist(pinned_source("fastapi-users-db-sqlalchemy")), "", scratch)

    def suite(db: Database, loop: str) -> str:
        # asyncio: on pytest-asyncio, as upstream runs it; trio: through
        # anyio's pytest plugin (shim/compat_anyio_trio.py).
        plugins = ["-p", "compat_anyio_trio", "-p", "no:asyncio"] if loop == "trio" else []
        db.reset()
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugins, "tests"]
        output = run(cmd, root, env={"DATABASE_URL": db.url(root)}, alias=True)
        summary = output.strip().splitlines()[-1]
        if " passed" not in summary or "failed" in summary or "error" in summary:
            raise Failed(f"unexpected pytest summary: {summary}\n{output[-6000:]}")
        return summary

    for db in dbs:
        for loop in loops:
            yield attempt("fastapi-users-db-sqlalchemy tests", db, loop, suite)


SUITE_DOC = ROOT / "docs" / "sqlalchemy-suite.md"
#: The async URL each database's run of SQLAlchemy's suite uses (its --dburi).
SUITE_CLASS = re.compile(r"^([A-Za-z0-9]+)_(?:sqlite|postgresql|mysql|mariadb)\b.*$")


def suite_exclusions() -> list[tuple[list[str], set[str], str]]:
    """(patterns, databases, why) from the table in docs/sqlalchemy-suite.md."""
    rows = []
    for line in SUITE_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        patterns = re.findall(r"`([^`]+)`", cells[0])
        dbs = (
            {"sqlite", "postgresql", "mysql"}
            if cells[1] == "all"
            else set(d.strip() for d in cells[1].split(","))
        )
        rows.append((patterns, dbs, cells[2]))
    if not rows:
        raise SystemExit(f"no exclusion table found in {SUITE_DOC}")
    return rows


def _like(test: str, pattern: str) -> bool:
    """``test`` matches ``pattern``, where only ``*`` is a wildcard (test ids
    have brackets, which fnmatch would read as character sets)."""
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), test) is not None


def suite_outcomes(xml: Path) -> dict[str, str]:
    """test id (class without its dialect suffix :: name) -> passed/failed/skipped."""
    import xml.etree.ElementTree as ET

    found: dict[str, str] = {}
    for case in ET.parse(xml).iter("testcase"):
        cls = (case.get("classname") or "").rsplit(".", 1)[-1]
        cls = SUITE_CLASS.sub(r"\1", cls)
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                state = "failed"
            elif child.tag == "skipped" and state == "passed":
                state = "skipped"
        found[f"{cls}::{case.get('name')}"] = state
    return found


def sqlalchemy_suite(dbs: list[Database], loops: list[str], scratch: Path) -> Iterator[Outcome]:
    """SQLAlchemy's test/ext/asyncio on the official extension and on ours, in the
    environment of requirements/compat-suite.txt (SQLALCHEMY_ANYIO_SUITE_PYTHON);
    ours must pass what the official passes, but for docs/sqlalchemy-suite.md."""
    python = os.environ.get("SQLALCHEMY_ANYIO_SUITE_PYTHON")
    if not python:
        raise SystemExit("SQLALCHEMY_ANYIO_SUITE_PYTHON is not set: run scripts/compat/run.sh")
    version = subprocess.run(
        [python, "-c", "import sqlalchemy; print(sqlalchemy.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    root = extract(sdist(f"sqlalchemy=={version}"), "", scratch)
    exclusions = suite_exclusions()

    def run_suite(db: Database, ours: bool) -> dict[str, str]:
        db.reset()
        xml = scratch / f"suite-{db.name}-{'ours' if ours else 'official'}.xml"
        cmd = [
            python, "-s", "-m", "pytest", "test/ext/asyncio", "--dburi", db.url(scratch),
            "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
            f"--junitxml={xml}",
        ]  # fmt: skip
        if ours:
            cmd += ["-p", "compat_ours_check"]
        run(cmd, root, alias=ours, allow_failures=True)  # (failures: read from the XML)
        return suite_outcomes(xml)

    def suite(db: Database, loop: str) -> str:
        if loop != "asyncio":
            raise Skipped("SQLAlchemy's harness runs asyncio only")
        official, ours = run_suite(db, False), run_suite(db, True)
        gaps = [t for t, st in official.items() if st == "passed" and ours.get(t) != "passed"]
        listed = [
            (p, why) for patterns, where, why in exclusions if db.name in where for p in patterns
        ]
        unexplained = [t for t in gaps if not any(_like(t, p) for p, _ in listed)]
        stale = [
            patterns[0]
            for patterns, where, _ in exclusions
            if db.name in where and not any(_like(t, p) for t in gaps for p in patterns)
        ]
        passed = [sum(st == "passed" for st in r.values()) for r in (official, ours)]
        note = (
            f"official {passed[0]} passed, ours {passed[1]} passed; "
            f"{len(gaps)} differences, all listed in docs/sqlalchemy-suite.md"
        )
        if unexplained or stale:
            raise Failed(
                f"{note.split(';')[0]}; not explained by docs/sqlalchemy-suite.md: "
                f"{unexplained}; listed there but passing now: {stale}"
            )
        return note

    for db in dbs:
        for loop in loops:
            yield attempt("SQLAlchemy test/ext/asyncio", db, loop, suite)


def opentelemetry(dbs: list[Database], loops: list[str], scratch: Path) -> Iterator[Outcome]:
    """OpenTelemetry's SQLAlchemy instrumentation: SQL spans under their request's span
    (otel_check.py), on asyncio and uvloop for the asyncio loop, and on trio."""

    def traced(db: Database, loop: str) -> str:
        notes = []
        for flavour in ("asyncio", "uvloop") if loop == "asyncio" else (loop,):
            db.reset()
            out = run([sys.executable, str(HERE / "otel_check.py"), db.url(scratch), flavour],
                      scratch, alias=True)  # fmt: skip
            notes.append(f"{flavour}: {out.strip().splitlines()[-1]}")
        return "; ".join(notes)

    for db in dbs:
        for loop in loops:
            yield attempt("opentelemetry-instrumentation-sqlalchemy", db, loop, traced)


CLIENTS = {
    "examples": examples,
    "alembic": alembic,
    "fastapi-users": fastapi_users,
    "opentelemetry": opentelemetry,
    "sqlalchemy-suite": sqlalchemy_suite,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--databases", default="sqlite,postgresql,mysql")
    parser.add_argument("--loops", default="asyncio,trio")
    args = parser.parse_args()
    check_environment()

    dbs: list[Database] = []
    for name in args.databases.split(","):
        if name == "sqlite":
            dbs.append(sqlite())
        elif name == "postgresql":
            dbs.append(postgresql(os.environ.get("SQLALCHEMY_ANYIO_COMPAT_PG_URL", DEFAULT_PG)))
        elif name == "mysql":
            dbs.append(mysql(os.environ.get("SQLALCHEMY_ANYIO_COMPAT_MYSQL_URL", DEFAULT_MYSQL)))
        else:
            parser.error(f"unknown database {name!r}: sqlite, postgresql or mysql")
    loops = args.loops.split(",")
    for loop in loops:
        if loop not in ("asyncio", "trio"):
            parser.error(f"unknown loop {loop!r}: asyncio or trio")

    t0 = time.perf_counter()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="sqlalchemy-anyio-compat-") as tmp:
        for name in args.clients.split(","):
            if name not in CLIENTS:
                parser.error(f"unknown client {name!r}: one of {', '.join(CLIENTS)}")
            log(f"--- {name}")
            for o in CLIENTS[name](dbs, loops, Path(tmp)):
                status = {True: "ok", False: "FAILED", None: "skipped"}[o.ok]
                extra = o.note if o.ok is not False else ""
                log(f"{status:8} {o.client} [{o.database}, {o.loop}] {o.seconds:.1f}s {extra}")
                outcomes.append(o)
        # remove the scratch files while the working directory is not inside them
        shutil.rmtree(tmp, ignore_errors=True)

    failed = [o for o in outcomes if o.ok is False]
    for o in failed:
        log(f"\n=== FAILED: {o.client} [{o.database}, {o.loop}]\n{o.note}")
    passed = sum(o.ok is True for o in outcomes)
    skipped = sum(o.ok is None for o in outcomes)
    log(f"\ncompatibility job took {time.perf_counter() - t0:.0f}s")
    log(f"compat: {passed} passed, {len(failed)} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
