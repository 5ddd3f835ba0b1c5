"""Worker code runs in its task's context, as it does on the official
extension's greenlet: ``contextvars`` the task set are seen by event
listeners and ``run_sync`` callables on the worker, what they set is the
task's after the await, and nothing set on a worker reaches another task.
"""

from __future__ import annotations

import contextvars
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from sqlalchemy_anyio import AsyncEngine, async_sessionmaker, create_async_engine

pytestmark = pytest.mark.anyio

REQUEST = contextvars.ContextVar("request", default="unset")


def _param(n: int) -> sa.Select[Any]:
    return sa.select(sa.literal(n, sa.Integer).label("n"))


async def test_core_listener_sees_the_tasks_value(engine: AsyncEngine) -> None:
    seen: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def record(*args: Any) -> None:
        seen.append(REQUEST.get())

    REQUEST.set("req-1")
    async with engine.connect() as conn:
        await conn.execute(_param(1))
        assert await conn.run_sync(lambda c: REQUEST.get()) == "req-1"
    assert seen == ["req-1"]


async def test_orm_listeners_and_run_sync_see_the_tasks_value(engine: AsyncEngine) -> None:
    seen: list[tuple[str, str]] = []
    maker = async_sessionmaker(engine)

    @event.listens_for(maker.class_.sync_session_class, "after_begin")
    def begun(session: Session, transaction: Any, connection: Any) -> None:
        seen.append(("after_begin", REQUEST.get()))

    @event.listens_for(maker.class_.sync_session_class, "do_orm_execute")
    def executing(state: Any) -> None:
        seen.append(("do_orm_execute", REQUEST.get()))

    try:
        REQUEST.set("req-2")
        async with maker() as session:
            await session.execute(_param(2))
            assert await session.run_sync(lambda s: REQUEST.get()) == "req-2"
        assert seen == [("do_orm_execute", "req-2"), ("after_begin", "req-2")]
    finally:
        event.remove(maker.class_.sync_session_class, "after_begin", begun)
        event.remove(maker.class_.sync_session_class, "do_orm_execute", executing)


async def test_concurrent_tasks_each_see_their_own_value(engine: AsyncEngine) -> None:
    seen: list[tuple[int, str]] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        n = params[0] if isinstance(params, (tuple, list)) else next(iter(params.values()))
        seen.append((int(n), REQUEST.get()))

    async def task(i: int) -> None:
        REQUEST.set(f"task-{i}")
        for _ in range(5):
            async with engine.connect() as conn:
                await conn.execute(_param(i))
                await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(task, i)
    assert len(seen) == 30
    assert all(value == f"task-{n}" for n, value in seen), seen


async def test_what_worker_code_sets_is_the_tasks_after_the_await(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def mark(*args: Any) -> None:
        REQUEST.set(REQUEST.get() + "+listener")

    REQUEST.set("mine")
    async with engine.connect() as conn:
        await conn.execute(_param(3))
        assert REQUEST.get() == "mine+listener"
        await conn.run_sync(lambda c: REQUEST.set("from run_sync"))
        assert REQUEST.get() == "from run_sync"
    assert REQUEST.get() == "from run_sync"


async def test_nothing_set_on_a_worker_reaches_another_task(db_url: str) -> None:
    # one connection, so one worker thread serves every task in turn
    engine = create_async_engine(db_url, pool_size=1, max_overflow=0)
    seen: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def leak(*args: Any) -> None:
        seen.append(REQUEST.get())
        REQUEST.set("leaked")

    async def task(name: str) -> None:
        if name:
            REQUEST.set(name)
        async with engine.connect() as conn:
            await conn.execute(_param(4))
            assert await conn.run_sync(lambda c: REQUEST.get()) == "leaked"

    try:
        for name in ("a", "", "b", ""):
            async with anyio.create_task_group() as tg:
                tg.start_soon(task, name)
        assert seen == ["a", "unset", "b", "unset"]
        assert REQUEST.get() == "unset"  # and nothing reached this task either
    finally:
        await engine.dispose()


async def test_a_close_queued_without_waiting_runs_in_its_tasks_context(db_url: str) -> None:
    """With others waiting for the one connection, a session's close is queued
    on its worker and not awaited: it still runs in the closing task's context."""
    engine = create_async_engine(db_url, pool_size=1, max_overflow=0)
    maker = async_sessionmaker(engine)
    reset: list[str] = []
    event.listen(engine.sync_engine.pool, "reset", lambda *args: reset.append(REQUEST.get()))
    holding = anyio.Event()

    async def first() -> None:
        REQUEST.set("first")
        async with maker() as session:
            await session.execute(_param(5))
            holding.set()
            await anyio.sleep(0.2)  # the second task queues for the connection meanwhile

    async def second() -> None:
        REQUEST.set("second")
        await holding.wait()
        async with maker() as session:
            await session.execute(_param(6))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(second)
        assert reset == ["first", "second"]
    finally:
        await engine.dispose()
