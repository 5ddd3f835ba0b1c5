"""The ORM guard: SQL through an AsyncSession off its worker is refused at once.

Each case counts pool checkouts and cursor executions to show that nothing
reached the database, and then shows the session still works.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any, Optional

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy import ForeignKey, String, event, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sqlalchemy_anyio import (
    AsyncAttrs,
    AsyncEngine,
    AsyncSession,
    WorkerThreadRequired,
    async_sessionmaker,
    create_async_engine,
)

pytestmark = pytest.mark.anyio


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "orm_guard_parent"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    note: Mapped[Optional[str]] = mapped_column(String(30), deferred=True)
    children: Mapped[list[Child]] = relationship(back_populates="parent")


class Child(Base):
    __tablename__ = "orm_guard_child"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("orm_guard_parent.id"))
    parent: Mapped[Parent] = relationship(back_populates="children")


class Probe:
    """Counts pool checkouts and statements sent on an engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.checkouts = 0
        self.statements = 0
        event.listen(engine.sync_engine.pool, "checkout", self._checkout)
        event.listen(engine.sync_engine, "before_cursor_execute", self._execute)

    def _checkout(self, *args: Any) -> None:
        self.checkouts += 1

    def _execute(self, *args: Any) -> None:
        self.statements += 1

    def snapshot(self) -> tuple[int, int]:
        return (self.checkouts, self.statements)


@pytest.fixture
async def guarded(db_url: str) -> AsyncIterator[tuple[AsyncEngine, Probe]]:
    eng = create_async_engine(db_url)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    async with AsyncSession(eng) as s:
        s.add(Parent(id=1, name="p", note="n", children=[Child(id=1), Child(id=2)]))
        await s.commit()
    try:
        yield eng, Probe(eng)
    finally:
        async with eng.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        await eng.dispose()


def _assert_refusal(exc: BaseException) -> None:
    assert isinstance(exc, WorkerThreadRequired)
    assert isinstance(exc, sa_exc.MissingGreenlet)
    text = str(exc)
    assert "awaitable_attrs" in text and "run_sync" in text and "selectinload" in text


async def test_lazy_load_refused_without_io(guarded: tuple[AsyncEngine, Probe]) -> None:
    engine, probe = guarded
    maker = async_sessionmaker(engine, expire_on_commit=False)
    async with maker() as s:
        parent = await s.get_one(Parent, 1)
        await s.commit()  # no transaction now: a load would have to check out
        before = probe.snapshot()
        with pytest.raises(sa_exc.MissingGreenlet) as info:
            parent.children  # noqa: B018
        _assert_refusal(info.value)
        assert "lazy load" in str(info.value)
        assert probe.snapshot() == before
        assert "children" not in parent.__dict__
        # the session is intact: the next awaited operation works
        assert len(await parent.awaitable_attrs.children) == 2


async def test_lazy_load_inside_transaction_refused(guarded: tuple[AsyncEngine, Probe]) -> None:
    engine, probe = guarded
    async with AsyncSession(engine) as s:
        child = await s.get_one(Child, 1)
        assert s.in_transaction()
        before = probe.snapshot()
        with pytest.raises(WorkerThreadRequired):
            child.parent  # noqa: B018
        assert probe.snapshot() == before
        parent = await child.awaitable_attrs.parent
        assert parent.name == "p"


async def test_expired_and_deferred_refused(guarded: tuple[AsyncEngine, Probe]) -> None:
    engine, probe = guarded
    async with AsyncSession(engine) as s:  # expire_on_commit=True
        parent = await s.get_one(Parent, 1)
        await s.commit()
        before = probe.snapshot()
        with pytest.raises(WorkerThreadRequired) as info:
            parent.name  # noqa: B018
        _assert_refusal(info.value)
        assert probe.snapshot() == before
        await s.refresh(parent)
        assert parent.name == "p"
        before = probe.snapshot()
        with pytest.raises(WorkerThreadRequired):
            parent.note  # noqa: B018 - deferred column
        assert probe.snapshot() == before
        assert await parent.awaitable_attrs.note == "n"


async def test_no_autoflush_before_refusal(guarded: tuple[AsyncEngine, Probe]) -> None:
    """A dirty session + lazy load on the loop: refused before autoflush runs."""
    engine, probe = guarded
    async with AsyncSession(engine) as s:
        parent = await s.get_one(Parent, 1)
        parent.name = "dirty"
        flushes: list[int] = []
        event.listen(s.sync_session, "after_flush", lambda *a: flushes.append(1))
        before = probe.snapshot()
        with pytest.raises(WorkerThreadRequired) as info:
            parent.children  # noqa: B018
        assert "lazy load" in str(info.value)  # not the flush guard
        assert probe.snapshot() == before and not flushes
        assert parent in s.dirty
        await s.commit()
        assert flushes
        assert await s.scalar(select(Parent.name)) == "dirty"


async def test_sync_session_calls_from_loop_refused(guarded: tuple[AsyncEngine, Probe]) -> None:
    engine, probe = guarded
    async with AsyncSession(engine) as s:
        sync = s.sync_session
        before = probe.snapshot()
        with pytest.raises(WorkerThreadRequired):
            sync.execute(select(Parent))
        with pytest.raises(WorkerThreadRequired):
            sync.get(Parent, 1)
        with pytest.raises(WorkerThreadRequired):
            sync.scalar(sa.text("select 1"))
        sync.add(Parent(id=2, name="new"))
        with pytest.raises(WorkerThreadRequired) as info:
            sync.flush()
        assert "flush" in str(info.value)
        with pytest.raises(WorkerThreadRequired):
            sync.commit()
        with pytest.raises(WorkerThreadRequired):
            sync.rollback()
        with pytest.raises(WorkerThreadRequired):
            sync.connection()
        assert probe.snapshot() == before
        await s.commit()  # on the worker: fine, and the pending object lands
        assert await s.scalar(select(sa.func.count()).select_from(Parent)) == 2


async def test_other_thread_refused(guarded: tuple[AsyncEngine, Probe]) -> None:
    engine, probe = guarded
    async with AsyncSession(engine, expire_on_commit=False) as s:
        parent = await s.get_one(Parent, 1)
        await s.commit()
        before = probe.snapshot()

        def touch() -> Any:
            assert threading.current_thread() is not threading.main_thread()
            return parent.children

        with pytest.raises(WorkerThreadRequired):
            await anyio.to_thread.run_sync(touch)
        assert probe.snapshot() == before
        assert len(await s.run_sync(lambda _: touch())) == 2


async def test_fresh_and_closed_sessions_refuse(guarded: tuple[AsyncEngine, Probe]) -> None:
    engine, probe = guarded
    s = AsyncSession(engine)
    before = probe.snapshot()
    with pytest.raises(WorkerThreadRequired):
        s.sync_session.execute(select(1))
    assert probe.snapshot() == before
    assert await s.scalar(select(1)) == 1
    await s.close()
    before = probe.snapshot()
    with pytest.raises(WorkerThreadRequired):
        s.sync_session.execute(select(1))
    assert probe.snapshot() == before
    assert await s.scalar(select(1)) == 1
    await s.close()


async def test_legacy_query_refused(
    guarded: tuple[AsyncEngine, Probe],
) -> None:
    """Legacy Query.all() on the loop hits the same guard."""
    engine, probe = guarded
    async with AsyncSession(engine) as s:
        before = probe.snapshot()
        with pytest.raises(WorkerThreadRequired):
            s.sync_session.query(Parent).all()
        assert probe.snapshot() == before
        rows = (await s.execute(select(Parent))).scalars().all()
        assert len(rows) == 1
