"""async_scoped_session keyed by the current anyio task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from sqlalchemy import String, func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlalchemy_anyio import (
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)

pytestmark = pytest.mark.anyio


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "orm_scoped_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))


@pytest.fixture
async def sc_engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(sqlite_url)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        yield eng
    finally:
        await eng.dispose()


def _task_id() -> Any:
    return anyio.get_current_task().id


async def test_one_session_per_task(sc_engine: AsyncEngine) -> None:
    scoped = async_scoped_session(
        async_sessionmaker(sc_engine, expire_on_commit=False), scopefunc=_task_id
    )
    seen: dict[str, AsyncSession] = {}

    async def work(name: str) -> None:
        session = scoped()
        assert scoped() is session  # same task: same session
        seen[name] = session
        scoped.add(Item(name=name))
        await scoped.flush()
        await anyio.sleep(0.01)
        await scoped.commit()
        await scoped.remove()

    async with anyio.create_task_group() as tg:
        for name in ("a", "b", "c"):
            tg.start_soon(work, name)
    assert len({id(s) for s in seen.values()}) == 3
    assert all(s._worker is None for s in seen.values())  # remove() closed them

    main = scoped()
    assert main not in seen.values()
    assert await scoped.scalar(select(func.count()).select_from(Item)) == 3
    rows = (await scoped.scalars(select(Item.name).order_by(Item.name))).all()
    assert rows == ["a", "b", "c"]
    await scoped.remove()


async def test_proxies_and_configure(sc_engine: AsyncEngine) -> None:
    scoped = async_scoped_session(async_sessionmaker(sc_engine), scopefunc=_task_id)
    session = scoped(autoflush=False)
    assert session.autoflush is False and scoped.autoflush is False
    with pytest.raises(Exception, match="already present"):
        scoped(autoflush=True)
    item = Item(name="x")
    scoped.add(item)
    assert item in scoped and item in scoped.new
    async with scoped.begin_nested():
        await scoped.flush()
    assert scoped.in_transaction() and scoped.get_transaction() is not None
    got = await scoped.get(Item, item.id)
    assert got is item
    await scoped.refresh(item)
    assert scoped.is_active and scoped.bind is sc_engine
    conn = await scoped.connection()
    assert conn._current_worker() is session._worker
    assert [r async for r in await scoped.stream_scalars(select(Item.name))] == ["x"]
    await scoped.rollback()
    assert not scoped.in_transaction()
    assert scoped.identity_key(Item, 1) == (Item, (1,), None)
    with pytest.warns(sa_exc.SAWarning, match="configure"):
        scoped.configure(expire_on_commit=False)
    await scoped.remove()
    assert scoped().sync_session.expire_on_commit is False
    await scoped.remove()
