"""The proxies of AsyncSession and async_scoped_session, generated from one
declaration (``_session_proxy``): every declared name is there on both, with
a signature and a docstring, and forwards to what it should."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqlalchemy_anyio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    _engine_proxy,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy_anyio._session_proxy import (
    ASYNC_SESSION_ATTRIBUTES,
    ASYNC_SESSION_CLASS_METHODS,
    ASYNC_SESSION_METHODS,
    SESSION_ATTRIBUTES,
    SESSION_CLASS_METHODS,
    SESSION_METHODS,
)


class Base(DeclarativeBase):
    pass


class Thing(Base):
    __tablename__ = "proxy_thing"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20))


def _present(cls: type, names: Any) -> list[str]:
    return [name for name in names if hasattr(cls, name)]


METHODS = _present(AsyncSession, [*SESSION_METHODS, *ASYNC_SESSION_METHODS])
ATTRIBUTES = [*SESSION_ATTRIBUTES, *ASYNC_SESSION_ATTRIBUTES]
CLASS_METHODS = [*SESSION_CLASS_METHODS, *ASYNC_SESSION_CLASS_METHODS]


def test_the_declaration_covers_every_public_name() -> None:
    """Nothing public of AsyncSession is left out of the scoped session."""
    own = {"sync_session_class"}
    public = {name for name in dir(AsyncSession) if not name.startswith("_")} - own
    declared = set(METHODS) | set(ATTRIBUTES) | set(CLASS_METHODS)
    # bind_mapper/bind_table configure one session: the official scoped session lacks them too
    assert public - declared == {"bind_mapper", "bind_table"}
    assert all(hasattr(async_scoped_session, name) for name in declared)


@pytest.mark.parametrize("name", METHODS)
def test_methods_keep_signature_and_docstring(name: str) -> None:
    method = getattr(AsyncSession, name)
    scoped = getattr(async_scoped_session, name)
    assert inspect.signature(scoped) == inspect.signature(method)
    assert inspect.iscoroutinefunction(scoped) == inspect.iscoroutinefunction(method)
    assert method.__doc__ and scoped.__doc__
    assert scoped.__qualname__ == f"async_scoped_session.{name}"
    if name in SESSION_METHODS:
        assert inspect.signature(method) == inspect.signature(getattr(Session, name))
        assert method.__qualname__ == f"AsyncSession.{name}"


@pytest.mark.parametrize("name", ATTRIBUTES)
def test_attributes_are_documented_properties(name: str) -> None:
    for cls in (AsyncSession, async_scoped_session):
        if name == "sync_session" and cls is AsyncSession:
            continue  # a plain instance attribute
        attr = inspect.getattr_static(cls, name)
        assert isinstance(attr, property) and attr.__doc__, (cls, name)
    settable = SESSION_ATTRIBUTES.get(name, (ASYNC_SESSION_ATTRIBUTES.get(name),))[0]
    assert (inspect.getattr_static(async_scoped_session, name).fset is not None) == settable


@pytest.mark.parametrize("name", CLASS_METHODS)
def test_class_methods(name: str) -> None:
    for cls in (AsyncSession, async_scoped_session):
        assert isinstance(inspect.getattr_static(cls, name), classmethod)
        assert getattr(cls, name).__doc__
    assert inspect.signature(getattr(async_scoped_session, name)) == inspect.signature(
        getattr(AsyncSession, name)
    )


def test_class_methods_forward() -> None:
    key = async_scoped_session.identity_key(Thing, 5)
    assert key == AsyncSession.identity_key(Thing, 5) == Session.identity_key(Thing, 5)
    thing = Thing(id=1, name="x")
    assert async_scoped_session.object_session(thing) is None
    sync = Session()
    sync.add(thing)
    assert AsyncSession.object_session(thing) is sync
    assert async_scoped_session.object_session(thing) is sync


@pytest.fixture
async def proxy_engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(sqlite_url)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.mark.anyio
async def test_session_forwards_to_its_sync_session(proxy_engine: AsyncEngine) -> None:
    async with AsyncSession(proxy_engine) as session:
        thing = Thing(id=1, name="a")
        session.add(thing)
        assert thing in session and list(session) == [thing]
        assert session.new == session.sync_session.new and thing in session.new
        assert session.is_modified(thing)
        session.autoflush = False
        assert session.sync_session.autoflush is False
        session.info["k"] = 1
        assert session.sync_session.info == {"k": 1}
        await session.flush()
        assert session.in_transaction() and not session.in_nested_transaction()
        thing.name = "b"
        assert thing in session.dirty
        session.expire(thing, ["name"])
        assert "name" not in thing.__dict__
        session.expunge(thing)
        assert thing not in session
        await session.rollback()


@pytest.mark.anyio
async def test_scoped_session_forwards_to_the_current_scope(proxy_engine: AsyncEngine) -> None:
    """Each task sees its own session through every kind of forward."""
    scoped = async_scoped_session(
        async_sessionmaker(proxy_engine), scopefunc=lambda: anyio.get_current_task().id
    )
    seen: dict[int, Any] = {}

    async def work(n: int) -> None:
        session = scoped()
        thing = Thing(id=n, name=f"n{n}")
        scoped.add(thing)  # a sync method
        assert thing in scoped and thing in scoped.new  # a dunder, an attribute
        scoped.autoflush = False  # a settable attribute
        assert session.autoflush is False
        await scoped.flush()  # an async method
        assert await scoped.scalar(sa.select(Thing.name).where(Thing.id == n)) == f"n{n}"
        assert scoped.bind is proxy_engine and scoped.sync_session is session.sync_session
        assert scoped.get_transaction() is session.get_transaction()
        seen[n] = session
        await scoped.commit()
        await scoped.remove()

    async with anyio.create_task_group() as tg:
        for n in (1, 2, 3):
            tg.start_soon(work, n)
    assert len({id(s) for s in seen.values()}) == 3
    async with AsyncSession(proxy_engine) as check:
        assert (await check.scalars(sa.select(Thing.id).order_by(Thing.id))).all() == [1, 2, 3]


# -- AsyncEngine and AsyncConnection: the same mechanism (_engine_proxy)


@pytest.mark.parametrize(
    ("cls", "sync_cls", "methods", "attributes"),
    [
        (AsyncEngine, sa.Engine, "ENGINE_METHODS", "ENGINE_ATTRIBUTES"),
        (AsyncConnection, sa.Connection, "CONNECTION_METHODS", "CONNECTION_ATTRIBUTES"),
    ],
)
def test_engine_and_connection_forwards(
    cls: type, sync_cls: type, methods: str, attributes: str
) -> None:
    for name in getattr(_engine_proxy, methods):
        method = getattr(cls, name)
        assert inspect.signature(method) == inspect.signature(getattr(sync_cls, name))
        assert method.__doc__ and method.__qualname__ == f"{cls.__name__}.{name}"
    for name, (settable, _doc) in getattr(_engine_proxy, attributes).items():
        attr = inspect.getattr_static(cls, name)
        assert isinstance(attr, property) and attr.__doc__
        assert (attr.fset is not None) == settable


@pytest.mark.anyio
async def test_engine_and_connection_forward_to_their_sync_objects(
    proxy_engine: AsyncEngine,
) -> None:
    sync = proxy_engine.sync_engine
    assert (proxy_engine.url, proxy_engine.pool, proxy_engine.dialect) == (
        sync.url,
        sync.pool,
        sync.dialect,
    )
    assert (proxy_engine.name, proxy_engine.driver, proxy_engine.engine) == (
        "sqlite",
        "pysqlite",
        sync,
    )
    proxy_engine.update_execution_options(logging_token="t")
    assert proxy_engine.get_execution_options()["logging_token"] == "t"
    proxy_engine.echo = False
    assert sync.echo is False
    async with proxy_engine.connect() as conn:
        assert not conn.in_transaction() and not conn.closed and not conn.invalidated
        await conn.execute(sa.text("select 1"))
        assert conn.in_transaction() and not conn.in_nested_transaction()
        assert conn.info is conn.sync_connection.info
        assert conn.dialect is sync.dialect
    assert conn.closed
