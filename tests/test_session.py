"""AsyncSession on one worker: the ORM API, transactions, relationships, binds."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any, Optional

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy import ForeignKey, String, event, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)

from sqlalchemy_anyio import (
    AsyncAttrs,
    AsyncConnection,
    AsyncEngine,
    AsyncResult,
    AsyncSession,
    AsyncSessionTransaction,
    WorkerThreadRequired,
    async_object_session,
    async_session,
    async_sessionmaker,
    close_all_sessions,
    create_async_engine,
)

pytestmark = pytest.mark.anyio


class Base(AsyncAttrs, DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "orm_user"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    fullname: Mapped[Optional[str]] = mapped_column(String(100))
    addresses: Mapped[list[Address]] = relationship(
        back_populates="user", cascade="all, delete-orphan", order_by="Address.id"
    )


class Address(Base):
    __tablename__ = "orm_address"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[int] = mapped_column(ForeignKey("orm_user.id"))
    user: Mapped[User] = relationship(back_populates="addresses")


async def _create(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)


async def _drop(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)


@pytest.fixture
async def orm_engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """Every database; the orm_ tables created fresh and dropped afterwards."""
    eng = create_async_engine(db_url)
    await _create(eng)
    try:
        yield eng
    finally:
        await _drop(eng)
        await eng.dispose()


@pytest.fixture
async def lite(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(sqlite_url)
    await _create(eng)
    try:
        yield eng
    finally:
        await eng.dispose()


async def _seed(maker: async_sessionmaker[Any]) -> None:
    async with maker.begin() as s:
        s.add_all(
            [
                User(name="ann", addresses=[Address(email="a1@x"), Address(email="a2@x")]),
                User(name="bob", addresses=[Address(email="b1@x")]),
                User(name="cid"),
            ]
        )


def _statement_threads(engine: AsyncEngine) -> list[int]:
    threads: list[int] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def record(*args: Any) -> None:
        threads.append(threading.get_ident())

    return threads


# -- the ORM API on every database --------------------------------------------


async def test_crud_roundtrip(orm_engine: AsyncEngine) -> None:
    maker = async_sessionmaker(orm_engine, expire_on_commit=False)
    async with maker() as s:
        ann = User(name="ann", addresses=[Address(email="a@x")])
        s.add(ann)
        assert ann in s.new and ann in s
        await s.flush()
        assert ann.id is not None and not s.new
        await s.commit()

        assert await s.get(User, ann.id) is ann
        got = await s.get_one(User, ann.id)
        assert got.name == "ann"
        with pytest.raises(sa_exc.NoResultFound):
            await s.get_one(User, 12345)
        assert await s.get(User, 12345) is None

        ann.fullname = "Ann A."
        assert ann in s.dirty and s.is_modified(ann)
        await s.commit()
        assert await s.scalar(select(User.fullname).where(User.id == ann.id)) == "Ann A."

        result = await s.execute(select(User.name, User.fullname))
        assert result.all() == [("ann", "Ann A.")]
        assert (await s.scalars(select(User))).one() is ann
        assert list(s) and s.identity_map.contains_state(sa.inspect(ann))

        await s.delete(ann)
        assert ann in s.deleted
        await s.commit()
        assert await s.scalar(select(sa.func.count()).select_from(Address)) == 0


async def test_merge_expunge_refresh(orm_engine: AsyncEngine) -> None:
    maker = async_sessionmaker(orm_engine)
    await _seed(maker)
    async with maker() as s:
        merged = await s.merge(User(id=1, name="ANN"))
        assert merged.name == "ANN" and merged in s.dirty
        await s.commit()
        user = await s.get_one(User, 1)
        s.expunge(user)
        assert user not in s
        user = await s.get_one(User, 1)
        user.name = "changed"
        await s.refresh(user, attribute_names=["name"])
        assert user.name == "ANN"
        s.expire(user, ["fullname"])
        await s.refresh(user)
        assert user.fullname is None
        s.expunge_all()
        assert not list(s)


async def test_begin_context_commits_and_rolls_back(orm_engine: AsyncEngine) -> None:
    maker = async_sessionmaker(orm_engine)
    async with maker.begin() as s:
        s.add(User(name="kept"))

    with pytest.raises(ZeroDivisionError):
        async with maker.begin() as s:
            s.add(User(name="lost"))
            await s.flush()
            1 / 0  # noqa: B018

    async with maker() as s:
        async with s.begin() as trans:
            assert isinstance(trans, AsyncSessionTransaction) and trans.is_active
            assert s.get_transaction() is trans
            s.add(User(name="also kept"))
        with pytest.raises(ValueError):
            async with s.begin():
                s.add(User(name="lost too"))
                raise ValueError("boom")
        # the session stays usable after the rollback
        names = (await s.scalars(select(User.name).order_by(User.id))).all()
        assert names == ["kept", "also kept"]


async def test_savepoint(orm_engine: AsyncEngine) -> None:
    maker = async_sessionmaker(orm_engine, expire_on_commit=False)
    async with maker() as s:
        s.add(User(name="outer"))
        nested = await s.begin_nested()
        assert s.in_nested_transaction() and s.get_nested_transaction() is nested
        s.add(User(name="inner"))
        await nested.rollback()
        async with s.begin_nested():
            s.add(User(name="inner2"))
        await s.commit()
        names = (await s.scalars(select(User.name).order_by(User.id))).all()
        assert names == ["outer", "inner2"]


async def test_explicit_rollback_discards(orm_engine: AsyncEngine) -> None:
    async with AsyncSession(orm_engine) as s:
        s.add(User(name="gone"))
        await s.flush()
        assert s.in_transaction()
        await s.rollback()
        assert not s.in_transaction()
        assert await s.scalar(select(sa.func.count()).select_from(User)) == 0


async def test_stream(orm_engine: AsyncEngine) -> None:
    maker = async_sessionmaker(orm_engine)
    await _seed(maker)
    async with maker() as s:
        result = await s.stream(select(User).order_by(User.id))
        assert isinstance(result, AsyncResult)
        names = [row[0].name async for row in result]
        assert names == ["ann", "bob", "cid"]
        scalars = await s.stream_scalars(select(Address.email).order_by(Address.id))
        assert [e async for e in scalars] == ["a1@x", "a2@x", "b1@x"]


async def test_one_worker_runs_every_statement(orm_engine: AsyncEngine) -> None:
    threads = _statement_threads(orm_engine)
    maker = async_sessionmaker(orm_engine)
    async with maker() as s:
        s.add(User(name="w", addresses=[Address(email="w@x")]))
        await s.commit()
        user = await s.scalar(select(User))
        await user.awaitable_attrs.addresses
        conn = await s.connection()
        await conn.execute(select(1))
        await s.run_sync(lambda ss: ss.execute(select(User)).all())
        worker = s._worker
        assert worker is not None
    assert len(threads) >= 5
    assert set(threads) == {worker.ident}
    assert threading.get_ident() not in threads
    assert s._worker is None  # released by close


# -- relationships (SQLite) ----------------------------------------------------


async def test_relationship_loading(lite: AsyncEngine) -> None:
    maker = async_sessionmaker(lite)
    await _seed(maker)
    async with maker() as s:
        users = (
            await s.scalars(select(User).options(selectinload(User.addresses)).order_by(User.id))
        ).all()
        assert [len(u.addresses) for u in users] == [2, 1, 0]

    async with maker() as s:
        result = await s.scalars(select(User).options(joinedload(User.addresses)).order_by(User.id))
        users = result.unique().all()
        assert [a.email for a in users[0].addresses] == ["a1@x", "a2@x"]

    async with maker() as s:
        bob = await s.scalar(select(User).where(User.name == "bob"))
        with pytest.raises(WorkerThreadRequired):
            bob.addresses  # noqa: B018 - a lazy load on the loop thread
        addresses = await bob.awaitable_attrs.addresses
        assert [a.email for a in addresses] == ["b1@x"]
        assert bob.addresses is addresses  # loaded now: plain access works
        address = addresses[0]
        s.expire(address, ["user"])
        assert await address.awaitable_attrs.user is bob
        assert await address.awaitable_attrs.email == "b1@x"  # loaded: no hop


async def test_run_sync_lazy_loads_freely(lite: AsyncEngine) -> None:
    maker = async_sessionmaker(lite)
    await _seed(maker)

    def report(session: Session, prefix: str) -> list[str]:
        assert threading.current_thread() is not threading.main_thread()
        return [
            f"{prefix}{u.name}:{len(u.addresses)}"
            for u in session.scalars(select(User).order_by(User.id))
        ]

    async with maker() as s:
        assert await s.run_sync(report, "u-") == ["u-ann:2", "u-bob:1", "u-cid:0"]


async def test_expire_on_commit_guards_then_refresh(lite: AsyncEngine) -> None:
    async with async_sessionmaker(lite, expire_on_commit=True)() as s:
        user = User(name="exp")
        s.add(user)
        await s.commit()
        with pytest.raises(sa_exc.MissingGreenlet) as info:
            user.name  # noqa: B018
        assert "awaitable_attrs" in str(info.value)
        await s.refresh(user)
        assert user.name == "exp"
        s.expire_all()
        assert await user.awaitable_attrs.name == "exp"


async def test_cascade_delete_loads_on_worker(lite: AsyncEngine) -> None:
    maker = async_sessionmaker(lite)
    await _seed(maker)
    async with maker() as s:
        ann = await s.scalar(select(User).where(User.name == "ann"))
        await s.delete(ann)  # the cascade lazy-loads addresses on the worker
        await s.commit()
        assert await s.scalar(select(sa.func.count()).select_from(Address)) == 1


# -- session plumbing -----------------------------------------------------------


async def test_connection_shares_the_session_worker(lite: AsyncEngine) -> None:
    async with AsyncSession(lite) as s:
        conn = await s.connection()
        assert isinstance(conn, AsyncConnection)
        assert conn._current_worker() is s._worker and conn._worker is None
        assert await s.connection() is conn
        await conn.execute(sa.insert(User).values(name="via conn"))
        assert await s.scalar(select(User.name)) == "via conn"
        trans = s.get_transaction()
        assert trans is not None and trans.is_active
        if hasattr(trans.sync_transaction, "connections"):  # SQLAlchemy 2.1.7+
            assert trans.connections == frozenset({conn})
        with pytest.raises(WorkerThreadRequired):
            conn.sync_connection.execute(select(1))  # type: ignore[union-attr]
        await s.commit()
    async with AsyncSession(lite) as s:
        assert await s.scalar(select(sa.func.count()).select_from(User)) == 1


async def test_close_releases_worker_for_reuse(sqlite_url: str) -> None:
    eng = create_async_engine(sqlite_url, pool_size=1, max_overflow=0, pool_timeout=5)
    try:
        await _create(eng)
        for i in range(3):  # one worker allowed: each session must give it back
            async with AsyncSession(eng) as s:
                s.add(User(name=f"u{i}"))
                await s.commit()
        s2 = AsyncSession(eng)
        await s2.scalar(select(1))
        await s2.reset()
        assert s2._worker is None
        await s2.scalar(select(1))  # usable again after reset
        await s2.invalidate()
        assert s2._worker is None
        s3 = AsyncSession(eng)
        await s3.execute(select(1))
        with anyio.CancelScope() as scope:
            scope.cancel()
            await s3.close()  # cancelled before it starts: still closes and releases
        assert s3._worker is None and not s3.in_transaction()
        async with AsyncSession(eng) as s4:
            assert await s4.scalar(select(sa.func.count()).select_from(User)) == 3
    finally:
        await eng.dispose()


async def test_sessionmaker_options(lite: AsyncEngine) -> None:
    class MySync(Session):
        pass

    class MyAsync(AsyncSession):
        sync_session_class = MySync

    maker = async_sessionmaker(lite, class_=MyAsync, expire_on_commit=False, info={"a": 1})
    assert "MyAsync" in repr(maker)
    s = maker(info={"b": 2})
    assert isinstance(s, MyAsync) and isinstance(s.sync_session, MySync)
    assert s.info == {"a": 1, "b": 2} and s.sync_session.expire_on_commit is False
    maker.configure(autoflush=False)
    s2 = maker()
    assert s2.autoflush is False
    s2.autoflush = True
    assert s2.sync_session.autoflush is True
    with s2.no_autoflush:
        assert s2.sync_session.autoflush is False
    await s.close()
    await s2.close()

    class OtherSync(Session):
        pass

    async with AsyncSession(lite, sync_session_class=OtherSync) as s3:
        assert isinstance(s3.sync_session, OtherSync)
        assert s3.sync_session_class is OtherSync
        s3.add(User(name="o"))
        await s3.commit()


async def test_object_session_lookups(lite: AsyncEngine) -> None:
    async with AsyncSession(lite) as s:
        user = User(name="look")
        s.add(user)
        assert async_object_session(user) is s
        assert async_session(s.sync_session) is s
        assert sa.inspect(user).async_session is s
        assert AsyncSession.object_session(user) is s.sync_session
        key = AsyncSession.identity_key(User, 5)
        assert key[0] is User and key[1] == (5,)
        await s.flush()
    assert async_object_session(User(name="none")) is None


async def test_close_all_sessions(lite: AsyncEngine) -> None:
    s1 = AsyncSession(lite)
    s1.add(User(name="pending"))
    await s1.flush()
    s2 = AsyncSession(lite)
    await s2.execute(select(1))
    await close_all_sessions()
    assert s1._worker is None and s2._worker is None
    assert not s1.in_transaction() and not list(s1)
    s3 = AsyncSession(lite)
    await s3.execute(select(1))
    with pytest.warns(sa_exc.SADeprecationWarning):
        await AsyncSession.close_all()
    assert s3._worker is None


async def test_several_engines_one_worker(tmp_path: Any) -> None:
    e1 = create_async_engine(f"sqlite:///{tmp_path / 'one.db'}")
    e2 = create_async_engine(f"sqlite:///{tmp_path / 'two.db'}")
    try:
        async with e1.begin() as c:
            await c.run_sync(User.__table__.create)  # type: ignore[attr-defined]
        async with e2.begin() as c:
            await c.run_sync(Address.__table__.create)  # type: ignore[attr-defined]
        threads = _statement_threads(e1)
        threads2 = _statement_threads(e2)
        async with AsyncSession(binds={User: e1, Address: e2}) as s:
            s.add(User(id=1, name="split"))
            s.add(Address(email="e@x", user_id=1))
            await s.commit()
            assert s.get_bind(User) is e1.sync_engine
            assert await s.scalar(select(Address.email)) == "e@x"
            assert await s.scalar(select(User.name)) == "split"
            worker = s._worker
            assert worker is not None
            assert s.get_async_bind(Address) is e2
            assert s.binds[User] is e1 and s.binds[Address] is e2
        assert threads and threads2 and set(threads + threads2) == {worker.ident}
    finally:
        await e1.dispose()
        await e2.dispose()


async def test_join_external_transaction(orm_engine: AsyncEngine) -> None:
    """The test-suite pattern: a session bound to a connection in a transaction."""
    # pysqlite's legacy transaction handling can't nest SAVEPOINTs in BEGIN
    mode = "rollback_only" if orm_engine.dialect.name == "sqlite" else "create_savepoint"
    async with orm_engine.connect() as conn:
        trans = await conn.begin()
        async with AsyncSession(bind=conn, join_transaction_mode=mode) as s:
            assert s.bind is conn
            s.add(User(name="temp"))
            await s.commit()
            assert s._worker is conn._worker
            assert await s.scalar(select(sa.func.count()).select_from(User)) == 1
        assert conn._worker is not None  # the connection keeps its worker
        await trans.rollback()
    async with AsyncSession(orm_engine) as s:
        assert await s.scalar(select(sa.func.count()).select_from(User)) == 0


async def test_bind_property(lite: AsyncEngine) -> None:
    s = AsyncSession()
    assert s.bind is None
    s.bind = lite
    assert s.bind is lite and s.sync_session.bind is lite.sync_engine
    assert s.get_async_bind() is lite
    assert await s.scalar(select(1)) == 1
    await s.close()


@pytest.mark.skipif(not hasattr(Session, "merge_all"), reason="SQLAlchemy 2.1 API")
async def test_21_additions(lite: AsyncEngine) -> None:
    async with AsyncSession(lite, expire_on_commit=False) as s:
        users = await s.merge_all([User(id=1, name="a"), User(id=2, name="b")])  # type: ignore[attr-defined]
        await s.commit()
        assert [u.name for u in users] == ["a", "b"]
        await s.delete_all(users)  # type: ignore[attr-defined]
        await s.commit()
        assert await s.scalar(select(sa.func.count()).select_from(User)) == 0
        assert isinstance(s.execution_options, sa.util.immutabledict)


# -- misuse -------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Usage of the 'Session.add\\(\\)':sqlalchemy.exc.SAWarning")
async def test_concurrent_tasks_serialize(lite: AsyncEngine) -> None:
    """Two tasks on one session: calls queue on its worker; nothing deadlocks."""
    maker = async_sessionmaker(lite, expire_on_commit=False)
    async with maker() as s:
        errors: list[BaseException] = []

        async def writer(prefix: str) -> None:
            for i in range(20):
                try:
                    s.add(User(name=f"{prefix}{i}"))
                    await s.flush()
                    await s.execute(select(User).limit(1))
                except sa_exc.SQLAlchemyError as exc:  # the sync Session's own complaint
                    errors.append(exc)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer, "a")
                tg.start_soon(writer, "b")
        await s.commit()
        count = await s.scalar(select(sa.func.count()).select_from(User))
        assert count == 40 - len(errors)
        await s.commit()

        # Task b tries to begin while task a's transaction is open: the sync
        # Session refuses, task a's block still commits, the session goes on.
        a_inside = anyio.Event()
        b_done = anyio.Event()
        refused: list[BaseException] = []

        async def task_a() -> None:
            async with s.begin():
                s.add(User(name="from a"))
                a_inside.set()
                await b_done.wait()

        async def task_b() -> None:
            await a_inside.wait()
            try:
                await s.begin()
            except sa_exc.InvalidRequestError as exc:
                refused.append(exc)
            b_done.set()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(task_a)
                tg.start_soon(task_b)
        assert refused and "already" in str(refused[0])
        assert await s.scalar(select(sa.func.count()).select_from(User)) == count + 1
        await s.rollback()
        assert await s.scalar(select(User.name).where(User.name == "from a")) == "from a"


async def test_not_started_transaction(lite: AsyncEngine) -> None:
    s = AsyncSession(lite)
    trans = s.begin()
    with pytest.raises(sa_exc.InvalidRequestError):
        await trans.commit()
    assert not trans.is_active
    await trans
    assert trans.is_active
    await trans.commit()
    await s.close()


async def test_memory_database_shared_worker() -> None:
    """In-memory SQLite (one shared DBAPI connection): sessions share its worker."""
    eng = create_async_engine("sqlite://")
    try:
        await _create(eng)
        maker = async_sessionmaker(eng, expire_on_commit=False)
        async with maker() as s1, maker() as s2:
            s1.add(User(name="mem"))
            await s1.commit()
            assert await s2.scalar(select(User.name)) == "mem"
            thread_of = lambda sync_session: threading.get_ident()  # noqa: E731
            assert await s1.run_sync(thread_of) == await s2.run_sync(thread_of)
    finally:
        await eng.dispose()
