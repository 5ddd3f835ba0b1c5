"""The HTTP benchmark's FastAPI app: one source for sqlalchemy_anyio and the official extension.

    BENCH_SYSTEM=anyio|official BENCH_DATABASE_URL=postgresql://... uvicorn http_app:app

``BENCH_SYSTEM`` picks the async SQLAlchemy package (``sqlalchemy_anyio`` or
``sqlalchemy.ext.asyncio``) and with it the driver put into
``BENCH_DATABASE_URL`` (psycopg / PyMySQL for ours, asyncpg / aiomysql for the
official extension); everything else is the same code.  The engine is
``create_async_engine(url)`` with the default pool, and every request gets its
own session from a dependency, as an application would.

Endpoints (TechEmpower-style; the tables are filled by ``http_bench.py``):

* ``GET /db``: one random ``world`` row by primary key;
* ``GET /updates?queries=N``: N random rows read and updated in one transaction;
* ``GET /authors/{id}``: an author and its books through a lazy relationship
  (``awaitable_attrs``), as in ``examples/fastapi_app.py``;
* ``GET /hash``: a password hash (``hashlib.scrypt``, about 9 ms of CPU
  without the GIL) in ``anyio.to_thread.run_sync``, as a login endpoint does:
  the GIL-free work of the mixed load;
* ``GET /stats``: this process's id and the DBAPI connections opened so far
  (a ``connect`` event listener), read by the runner around its measured window.

``BENCH_SYSTEM=anyio-off`` is sqlalchemy_anyio with ``thread_placement="off"``.
"""

# (no "from __future__ import annotations": FastAPI reads the real annotations)

import hashlib
import importlib
import os
import random
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import _common
import anyio.to_thread
import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Query
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SYSTEMS = {
    "anyio": "sqlalchemy_anyio",
    "anyio-off": "sqlalchemy_anyio",
    "official": "sqlalchemy.ext.asyncio",
}
DRIVERS = {
    "anyio": {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "sqlite": "sqlite"},
    "official": {
        "postgresql": "postgresql+asyncpg",
        "mysql": "mysql+aiomysql",
        "sqlite": "sqlite+aiosqlite",
    },
}
WORLD_ROWS = 10_000
AUTHORS = 100
BOOKS_PER_AUTHOR = 10

SYSTEM = os.environ.get("BENCH_SYSTEM", "anyio")
if SYSTEM not in SYSTEMS:
    raise SystemExit(f"BENCH_SYSTEM={SYSTEM!r}: choose one of {', '.join(SYSTEMS)}")
aio: Any = importlib.import_module(SYSTEMS[SYSTEM])


def url_for(base: str, system: str) -> str:
    """``base`` with the driver ``system`` uses for its database kind."""
    url = sa.make_url(base)
    kind = url.get_backend_name()
    drivers = DRIVERS["official" if system == "official" else "anyio"]
    if kind not in drivers:
        raise SystemExit(f"{base}: the HTTP benchmark runs on PostgreSQL, MySQL/MariaDB or SQLite")
    return url.set(drivername=drivers[kind]).render_as_string(hide_password=False)


class Base(aio.AsyncAttrs, DeclarativeBase):  # type: ignore[misc]
    pass


class World(Base):
    __tablename__ = "world"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    randomnumber: Mapped[int]


class Author(Base):
    __tablename__ = "bench_author"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(100))
    books: Mapped[list["Book"]] = relationship(order_by="Book.id")


class Book(Base):
    __tablename__ = "bench_book"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(200))
    author_id: Mapped[int] = mapped_column(sa.ForeignKey("bench_author.id"), index=True)


def create_app() -> FastAPI:
    options = {"thread_placement": "off"} if SYSTEM == "anyio-off" else {}
    engine = aio.create_async_engine(url_for(os.environ["BENCH_DATABASE_URL"], SYSTEM), **options)
    Session = aio.async_sessionmaker(engine, expire_on_commit=False)
    lock = threading.Lock()  # the listener runs on worker threads with sqlalchemy_anyio
    connects = 0

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _count(dbapi_conn: Any, record: Any) -> None:
        nonlocal connects
        with lock:
            connects += 1

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    async def get_session() -> AsyncIterator[Any]:
        async with Session() as session:
            yield session

    SessionDep = Annotated[Any, Depends(get_session)]

    @app.get("/db")
    async def single_query(session: SessionDep) -> dict[str, int]:
        row = await session.get(World, random.randint(1, WORLD_ROWS))
        return {"id": row.id, "randomNumber": row.randomnumber}

    @app.get("/updates")
    async def updates(
        session: SessionDep, queries: Annotated[int, Query(ge=1, le=500)] = 5
    ) -> list[dict[str, int]]:
        # sorted ids: concurrent transactions lock rows in the same order (no deadlocks)
        ids = sorted(random.sample(range(1, WORLD_ROWS + 1), queries))
        out = []
        async with session.begin():
            for ident in ids:
                row = await session.get(World, ident)
                row.randomnumber = random.randint(1, WORLD_ROWS)
                out.append({"id": row.id, "randomNumber": row.randomnumber})
        return out

    @app.get("/authors/{author_id}")
    async def get_author(author_id: int, session: SessionDep) -> dict[str, Any]:
        author = await session.get(Author, author_id)
        if author is None:
            raise HTTPException(404, "no such author")
        books = await author.awaitable_attrs.books
        return {
            "id": author.id,
            "name": author.name,
            "books": [{"id": b.id, "title": b.title} for b in books],
        }

    @app.get("/hash")
    async def password_hash() -> dict[str, str]:
        digest = await anyio.to_thread.run_sync(
            lambda: hashlib.scrypt(b"correct horse", salt=b"battery staple", n=4096, r=8, p=1)
        )
        return {"hash": digest.hex()[:16]}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        with lock:
            opened = connects
        return {
            "pid": os.getpid(),
            "system": SYSTEM,
            "module": aio.__name__,
            "driver": engine.dialect.driver,
            "connects": opened,
            "pool": engine.pool.status(),
            "threads": threading.active_count(),
        }

    return app


def setup_database(base_url: str) -> None:
    """Create and fill the tables (sync SQLAlchemy, ours' driver)."""
    rnd = random.Random(0)
    worlds = [
        {"id": i, "randomnumber": rnd.randint(1, WORLD_ROWS)} for i in range(1, WORLD_ROWS + 1)
    ]
    authors = [{"id": i, "name": f"author {i}"} for i in range(1, AUTHORS + 1)]
    books = [
        {"id": i, "title": f"book {i}", "author_id": 1 + (i - 1) // BOOKS_PER_AUTHOR}
        for i in range(1, AUTHORS * BOOKS_PER_AUTHOR + 1)
    ]
    _common.fill_tables(
        url_for(base_url, "anyio"),
        Base.metadata,
        [(World.__table__, worlds), (Author.__table__, authors), (Book.__table__, books)],
    )


def drop_tables(base_url: str) -> None:
    _common.drop_tables(url_for(base_url, "anyio"), Base.metadata)


app = create_app() if "BENCH_DATABASE_URL" in os.environ else None
