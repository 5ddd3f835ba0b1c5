"""Code run on a worker (run_sync callables, event listeners) reaches the event loop:
``anyio.from_thread.run()/run_sync()/check_cancelled()`` and ``await_()``."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any, Optional

import anyio
import anyio.from_thread
import pytest
import sqlalchemy as sa
from sqlalchemy import ForeignKey, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from sqlalchemy_anyio import (
    AsyncEngine,
    AsyncSession,
    CallerCancelled,
    async_sessionmaker,
    await_,
    create_async_engine,
)

pytestmark = pytest.mark.anyio

ONE = sa.select(sa.literal(1))


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "reentry_parent"
    id: Mapped[int] = mapped_column(primary_key=True)
    children: Mapped[list[Child]] = relationship(back_populates="parent")


class Child(Base):
    __tablename__ = "reentry_child"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("reentry_parent.id"))
    parent: Mapped[Parent] = relationship(back_populates="children")


@pytest.fixture
async def orm_engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(db_url)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    try:
        yield eng
    finally:
        async with eng.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        await eng.dispose()


def _on_loop_thread(loop_thread: int) -> tuple[int, bool]:
    return threading.get_ident(), threading.get_ident() == loop_thread


async def _async_double(x: int) -> int:
    await anyio.sleep(0)
    return 2 * x


async def test_from_thread_in_connection_run_sync(engine: AsyncEngine) -> None:
    loop_thread = threading.get_ident()

    def work(conn: sa.Connection) -> tuple[Any, ...]:
        worker = threading.get_ident()
        value = conn.scalar(ONE)
        ran_on, on_loop = anyio.from_thread.run_sync(_on_loop_thread, loop_thread)
        doubled = anyio.from_thread.run(_async_double, 21)
        anyio.from_thread.check_cancelled()  # not cancelled: returns
        awaited = await_(_async_double(5))
        return worker, value, ran_on, on_loop, doubled, awaited

    async with engine.connect() as conn:
        worker, value, ran_on, on_loop, doubled, awaited = await conn.run_sync(work)
    assert worker != loop_thread
    assert (value, ran_on, on_loop, doubled, awaited) == (1, loop_thread, True, 42, 10)


async def test_from_thread_in_session_run_sync_with_lazy_load(orm_engine: AsyncEngine) -> None:
    """A lazy load inside run_sync fires a 'load' listener that goes back to the loop."""
    loaded_on_loop: list[str] = []

    async def note(name: str) -> None:
        await anyio.sleep(0)
        loaded_on_loop.append(name)

    def on_load(target: Any, context: Any) -> None:
        anyio.from_thread.run(note, type(target).__name__)

    async with AsyncSession(orm_engine, expire_on_commit=False) as session:
        session.add(Parent(id=1, children=[Child(id=1), Child(id=2)]))
        await session.commit()
    event.listen(Child, "load", on_load)
    try:
        async with AsyncSession(orm_engine) as session:
            parent = await session.get(Parent, 1)
            assert parent is not None

            def lazy(sync_session: Session) -> list[int]:
                return sorted(c.id for c in parent.children)  # lazy load on the worker

            assert await session.run_sync(lazy) == [1, 2]
    finally:
        event.remove(Child, "load", on_load)
    assert loaded_on_loop == ["Child", "Child"]


async def test_core_listener_reaches_the_loop(engine: AsyncEngine) -> None:
    loop_thread = threading.get_ident()
    seen: list[tuple[str, bool]] = []

    def before_cursor_execute(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        on_loop = anyio.from_thread.run_sync(lambda: threading.get_ident() == loop_thread)
        seen.append((statement, on_loop))

    event.listen(engine.sync_engine, "before_cursor_execute", before_cursor_execute)
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.literal(7))) == 7
        result = await conn.stream(sa.select(sa.literal(8)))
        assert [row[0] async for row in result] == [8]
    assert len(seen) == 2 and all(on_loop for _, on_loop in seen), seen


async def test_orm_listeners_reach_the_loop(orm_engine: AsyncEngine) -> None:
    events: list[str] = []
    notified = anyio.Event()

    async def record(name: str) -> None:
        await anyio.sleep(0)
        events.append(name)

    maker = async_sessionmaker(orm_engine)

    @event.listens_for(maker.class_.sync_session_class, "after_commit")
    def after_commit(session: Session) -> None:
        anyio.from_thread.run(record, "after_commit")
        anyio.from_thread.run_sync(notified.set)

    @event.listens_for(maker.class_.sync_session_class, "before_flush")
    def before_flush(session: Session, *args: Any) -> None:
        await_(record("before_flush"))

    try:
        async with maker() as session:
            session.add(Parent(id=10))
            await session.commit()
    finally:
        event.remove(maker.class_.sync_session_class, "after_commit", after_commit)
        event.remove(maker.class_.sync_session_class, "before_flush", before_flush)
    assert notified.is_set()
    assert events == ["before_flush", "after_commit"]


async def test_await_propagates_the_awaitables_error(sqlite_engine: AsyncEngine) -> None:
    async def fails() -> None:
        await anyio.sleep(0)
        raise LookupError("from the loop")

    def work(conn: sa.Connection) -> str:
        try:
            await_(fails())
        except LookupError as exc:
            return str(exc)
        return "no error"

    async with sqlite_engine.connect() as conn:
        assert await conn.run_sync(work) == "from the loop"
        assert await conn.scalar(ONE) == 1


async def test_await_on_the_loop_is_refused() -> None:
    coro = _async_double(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the coroutine is closed: no "never awaited"
        with pytest.raises(sa_exc.InvalidRequestError, match=r"event loop thread.*'await"):
            await_(coro)
        del coro
        gc.collect()


def test_await_outside_worker_code_is_refused() -> None:
    def elsewhere() -> Optional[BaseException]:
        try:
            await_(_async_double(1))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            return exc
        return None

    errors: list[Optional[BaseException]] = []
    thread = threading.Thread(target=lambda: errors.append(elsewhere()))
    thread.start()
    thread.join()
    assert isinstance(errors[0], sa_exc.InvalidRequestError)
    assert "run_sync" in str(errors[0])
    with pytest.raises(sa_exc.InvalidRequestError, match="worker thread"):
        await_(_async_double(1))


async def test_other_threads_get_anyios_error(sqlite_engine: AsyncEngine) -> None:
    """The way back belongs to the job's thread: a thread it starts has none."""

    def in_a_thread(conn: sa.Connection) -> Optional[BaseException]:
        errors: list[BaseException] = []

        def attempt() -> None:
            try:
                anyio.from_thread.run_sync(lambda: None)
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                errors.append(exc)

        thread = threading.Thread(target=attempt)
        thread.start()
        thread.join()
        return errors[0] if errors else None

    async with sqlite_engine.connect() as conn:
        error = await conn.run_sync(in_a_thread)
    assert isinstance(error, anyio.NoEventLoopError)


@pytest.mark.parametrize("how", ["await_", "from_thread.run", "check_cancelled"])
async def test_cancelled_caller_unwinds_the_worker(sqlite_url: str, how: str) -> None:
    """A worker waiting for the loop when its caller is cancelled gets
    CallerCancelled at once; later attempts fail at once too; the connection
    goes back to the pool."""
    engine = create_async_engine(sqlite_url, pool_size=1, max_overflow=0)
    entered = threading.Event()
    outcome: list[Any] = []

    def work(conn: sa.Connection) -> None:
        conn.scalar(ONE)
        entered.set()
        try:
            if how == "await_":
                await_(anyio.sleep(60))
            elif how == "from_thread.run":
                anyio.from_thread.run(anyio.sleep, 60)
            else:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    anyio.from_thread.check_cancelled()
                    time.sleep(0.005)
        except CallerCancelled as exc:
            outcome.append(exc)
            started = time.monotonic()
            try:
                anyio.from_thread.run_sync(lambda: None)
            except CallerCancelled:
                outcome.append(time.monotonic() - started)
            raise

    try:
        started = time.monotonic()
        with anyio.move_on_after(0.3) as scope:
            async with engine.connect() as conn:
                await conn.run_sync(work)
        assert scope.cancelled_caught
        assert time.monotonic() - started < 8  # not the 60 s wait, nor the bound
        assert entered.is_set()
        assert isinstance(outcome[0], CallerCancelled), outcome
        assert "cancelled" in str(outcome[0])
        assert outcome[1] < 5, outcome  # refused without a trip to the loop
        with anyio.fail_after(10):
            async with engine.connect() as conn:  # the one connection came back
                assert await conn.scalar(ONE) == 1
    finally:
        await engine.dispose()


async def test_calling_the_same_connection_back_is_refused(sqlite_engine: AsyncEngine) -> None:
    """The worker waits for the loop: the same connection on the loop would wait
    for the worker.  A clear error instead of a deadlock."""
    async with sqlite_engine.connect() as conn:

        def work(sync_conn: sa.Connection) -> str:
            try:
                anyio.from_thread.run(conn.scalar, ONE)
            except sa_exc.InvalidRequestError as exc:
                return str(exc)
            return "no error"

        with anyio.fail_after(20):
            message = await conn.run_sync(work)
        assert "waiting for this task" in message
        assert "synchronous connection" in message
        assert await conn.scalar(ONE) == 1


async def test_another_connection_from_the_loop_is_fine(sqlite_engine: AsyncEngine) -> None:
    async with sqlite_engine.connect() as conn, sqlite_engine.connect() as other:

        def work(sync_conn: sa.Connection) -> Any:
            return anyio.from_thread.run(other.scalar, sa.select(sa.literal(3)))

        with anyio.fail_after(20):
            assert await conn.run_sync(work) == 3


async def test_loop_only_apis_on_the_worker_say_what_to_do(
    sqlite_engine: AsyncEngine, anyio_backend: Any
) -> None:
    """What cannot be done from a worker thread fails with the recipe: on
    asyncio, loop methods that are not scheduling; on trio, any asyncio."""

    def work(conn: sa.Connection) -> None:
        asyncio.get_running_loop().create_future()

    async with sqlite_engine.connect() as conn:
        with pytest.raises(RuntimeError) as info:
            await conn.run_sync(work)
    text = str(info.value) + "".join(getattr(info.value, "__notes__", ()))
    if anyio_backend[0] == "trio":
        assert "no running event loop" in text
    else:
        assert "loop.create_future cannot be used here" in text
    assert "anyio.from_thread.run_sync" in text
    assert "await_" in text


async def test_after_commit_listener_schedules_a_coroutine_on_the_loop(
    sqlite_engine: AsyncEngine, anyio_backend: Any
) -> None:
    """A session listener calling asyncio.create_task(), as repository libraries
    do after a commit: the coroutine runs on the loop, in the committing task's
    context, as on the official extension.  Under trio, where there is no
    asyncio loop, it fails with the recipe (whose own test is below)."""
    request = contextvars.ContextVar("request", default="unset")
    ran: list[tuple[str, int]] = []
    tasks: list[Any] = []

    async def cleanup() -> None:
        await asyncio.sleep(0)
        ran.append((request.get(), threading.get_ident()))

    maker = async_sessionmaker(sqlite_engine)

    @event.listens_for(maker.class_.sync_session_class, "after_commit")
    def after_commit(session: Session) -> None:
        coro = cleanup()
        try:
            tasks.append(asyncio.create_task(coro))
        except RuntimeError:
            coro.close()  # under trio: never to run
            raise

    try:
        request.set("req-7")
        async with maker() as session:
            await session.execute(ONE)
            if anyio_backend[0] == "trio":
                with pytest.raises(RuntimeError) as info:
                    await session.commit()
                text = str(info.value) + "".join(getattr(info.value, "__notes__", ()))
                assert "anyio.from_thread.run_sync" in text
                return
            await session.commit()
        assert len(tasks) == 1 and isinstance(tasks[0], asyncio.Task)
        await tasks[0]
        assert ran == [("req-7", threading.get_ident())]  # on the loop's thread
    finally:
        event.remove(maker.class_.sync_session_class, "after_commit", after_commit)


async def test_loop_scheduling_from_the_worker(
    sqlite_engine: AsyncEngine, anyio_backend: Any
) -> None:
    """On asyncio, worker code finds a stand-in for the loop whose scheduling
    methods run on the loop's thread; under trio there is no asyncio loop to
    stand in for."""
    if anyio_backend[0] == "trio":
        async with sqlite_engine.connect() as conn:
            with pytest.raises(RuntimeError, match="no running event loop"):
                await conn.run_sync(lambda c: asyncio.get_running_loop())
        return
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, int]] = []
    ready = anyio.Event()

    def note(what: str) -> None:
        fired.append((what, threading.get_ident()))
        if len(fired) == 3:
            ready.set()

    def work(conn: sa.Connection) -> tuple[Any, ...]:
        stand_in = asyncio.get_running_loop()
        stand_in.call_soon(note, "call_soon")
        stand_in.call_later(0.01, note, "call_later")
        stand_in.call_at(stand_in.time() + 0.01, note, "call_at")
        return (
            stand_in.is_running(),
            stand_in.is_closed(),
            asyncio.current_task(),
            asyncio.get_event_loop() is stand_in,
        )

    async with sqlite_engine.connect() as conn:
        running, closed, task, same = await conn.run_sync(work)
    assert (running, closed, task, same) == (True, False, None, True)
    with anyio.fail_after(10):
        await ready.wait()
    assert sorted(what for what, _ in fired) == ["call_at", "call_later", "call_soon"]
    assert {thread for _, thread in fired} == {threading.get_ident()}
    assert asyncio.get_running_loop() is loop


async def test_scheduling_on_the_loop_recipe(
    sqlite_engine: AsyncEngine, anyio_backend: Any
) -> None:
    """The documented recipe for create_task()-style code in a listener: hand the
    scheduling to the loop with anyio.from_thread.run_sync()."""
    done = anyio.Event()

    async def background() -> None:
        await anyio.sleep(0)
        done.set()

    def schedule() -> None:
        if anyio_backend[0] == "trio":
            import trio

            trio.lowlevel.spawn_system_task(background)
        else:
            asyncio.get_running_loop().create_task(background())

    def after_commit(conn: sa.Connection) -> None:
        anyio.from_thread.run_sync(schedule)

    event.listen(sqlite_engine.sync_engine, "commit", after_commit)
    try:
        async with sqlite_engine.begin() as conn:
            await conn.execute(ONE)
        with anyio.fail_after(10):
            await done.wait()
    finally:
        event.remove(sqlite_engine.sync_engine, "commit", after_commit)


async def test_trio_only_apis_on_the_worker_say_what_to_do(sqlite_engine: AsyncEngine) -> None:
    trio = pytest.importorskip("trio")

    async with sqlite_engine.connect() as conn:
        with pytest.raises(RuntimeError, match="must be called from async context") as info:
            await conn.run_sync(lambda c: trio.lowlevel.current_task())
    text = str(info.value) + "".join(getattr(info.value, "__notes__", ()))
    assert "anyio.from_thread.run_sync" in text


async def test_from_thread_in_run_sync_of_a_shared_worker(tmp_path: Any) -> None:
    """An in-memory SQLite engine shares one worker: re-entry works there too."""
    engine = create_async_engine("sqlite://")
    try:
        async with engine.connect() as conn:
            value = await conn.run_sync(
                lambda c: anyio.from_thread.run(_async_double, c.scalar(ONE))
            )
        assert value == 2
    finally:
        await engine.dispose()
