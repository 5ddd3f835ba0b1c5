"""Behaviour that must match the official extension (which needs greenlet, not
installed here): checked against its signatures and against the sync objects
whose semantics it forwards."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any, Callable, Optional

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

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
    __tablename__ = "parity_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20))


# -- every public signature against the official extension's

#: Where the signatures differ on purpose: the result classes are built by this
#: package (from a buffered result and its worker), never by the application.
_OWN_CONSTRUCTORS = {"AsyncResult", "AsyncScalarResult", "AsyncMappingResult", "AsyncTupleResult"}
_DUNDERS = {"__init__", "__call__", "__aenter__", "__aexit__", "__contains__", "__iter__"}


def _shape(fn: Any) -> Optional[list[tuple[str, Any, str]]]:
    """Parameter names, kinds and defaults (a class default by its name)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    return [
        (p.name, p.kind, p.default.__name__ if isinstance(p.default, type) else repr(p.default))
        for p in params
    ]


def _members(cls: type) -> dict[str, Any]:
    names = (n for n in dir(cls) if not n.startswith("_") or n in _DUNDERS)
    members = {}
    for name in names:
        attr = inspect.getattr_static(cls, name, None)
        if isinstance(attr, (classmethod, staticmethod)):
            attr = attr.__func__
        if isinstance(attr, property) or callable(attr):
            members[name] = attr
    return members


def test_every_public_signature_matches_the_official_one() -> None:
    """Every name both packages export, and every public method and property
    of their classes: the same parameters (names, kinds, defaults) and the
    same settable attributes.  The official module needs greenlet: where it is
    not installed (the test requirements) this is skipped, saying so; .ci/run
    runs it in the compatibility suite's environment, which has it."""
    pytest.importorskip("greenlet", reason="the official extension needs greenlet")
    import importlib

    from sqlalchemy.orm import state

    import sqlalchemy_anyio

    # Importing the official module makes its own lookup the one behind
    # ``inspect(obj).async_session``: put ours back for the tests after this one.
    provider = getattr(state, "_async_provider", None)
    try:
        official = importlib.import_module("sqlalchemy.ext.asyncio")
    finally:
        state._async_provider = provider  # type: ignore[attr-defined]
    differences, compared = [], 0
    for name in sqlalchemy_anyio.__all__:
        theirs, ours = getattr(official, name, None), getattr(sqlalchemy_anyio, name)
        if theirs is None:
            continue  # this package's own (its exceptions, await_)
        if not inspect.isclass(theirs):
            compared += 1
            if _shape(theirs) != _shape(ours):
                differences.append(name)
            continue
        our_members = _members(ours)
        for attr, their_member in _members(theirs).items():
            if (name in _OWN_CONSTRUCTORS and attr == "__init__") or attr.startswith("memoized"):
                continue
            label, compared = f"{name}.{attr}", compared + 1
            our_member = our_members.get(attr)
            if our_member is None:
                differences.append(f"{label} missing")
            elif isinstance(their_member, property):
                settable = their_member.fset is not None
                if (
                    not isinstance(our_member, property)
                    or (our_member.fset is not None) != settable
                ):
                    differences.append(f"{label}: property (settable: {settable})")
            elif _shape(their_member) != _shape(our_member):
                differences.append(f"{label}: {_shape(their_member)} != {_shape(our_member)}")
    assert compared > 200
    assert not differences, differences


# -- get()/get_one(): populate_existing defaults as in the official extension


def test_get_defaults_match_the_sync_session() -> None:
    """The official AsyncSession.get() has Session.get()'s default (None on 2.1,
    False on 2.0), and so must ours and the scoping proxy's."""
    sync_default = inspect.signature(Session.get).parameters["populate_existing"].default
    for method in (
        AsyncSession.get,
        AsyncSession.get_one,
        async_scoped_session.get,
        async_scoped_session.get_one,
    ):
        param = inspect.signature(method).parameters["populate_existing"]
        assert param.default is sync_default, method


@pytest.fixture
async def item_engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(db_url)
    async with eng.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(sa.insert(Item), [{"id": 1, "name": "old"}])
    try:
        yield eng
    finally:
        async with eng.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        await eng.dispose()


async def test_get_honours_populate_existing_execution_option(item_engine: AsyncEngine) -> None:
    """With no populate_existing= given, the execution option decides (2.1)."""
    async with AsyncSession(item_engine, expire_on_commit=False) as session:
        item = await session.get(Item, 1)
        assert item is not None and item.name == "old"
        await session.commit()  # a new snapshot (MySQL) for the next get(); nothing expired
        async with item_engine.begin() as conn:
            await conn.execute(sa.update(Item).values(name="new"))
        refreshed = inspect.signature(Session.get).parameters["populate_existing"].default is None
        again = await session.get(Item, 1, execution_options={"populate_existing": True})
        assert again is item
        assert item.name == ("new" if refreshed else "old")
        assert (await session.get(Item, 1, populate_existing=True)) is item
        assert item.name == "new"
        maker = async_sessionmaker(item_engine, expire_on_commit=False)
        scoped = async_scoped_session(maker, scopefunc=lambda: "parity")
        try:
            one = await scoped.get_one(Item, 1)
            await scoped.commit()
            async with item_engine.begin() as conn:
                await conn.execute(sa.update(Item).values(name="newer"))
            await scoped.get_one(Item, 1, execution_options={"populate_existing": True})
            assert one.name == ("newer" if refreshed else "new")
        finally:
            await scoped.remove()


# -- no dispatch on the proxies


async def test_proxies_have_no_dispatch(sqlite_engine: AsyncEngine) -> None:
    """hasattr() is False, as on the official proxies; listening on them still
    says where to put the listener."""
    async with sqlite_engine.connect() as conn:
        session = AsyncSession(sqlite_engine)
        scoped = async_scoped_session(async_sessionmaker(sqlite_engine), scopefunc=lambda: 1)
        try:
            for target in (sqlite_engine, conn, session, scoped):
                assert not hasattr(target, "dispatch"), type(target)
            for target, name, where in (
                (sqlite_engine, "connect", "sync_engine"),
                (conn, "before_execute", "sync_connection"),
                (session, "after_commit", "sync_session"),
            ):
                with pytest.raises(NotImplementedError, match=where):
                    event.listen(target, name, lambda *a: None)
            assert hasattr(sqlite_engine.sync_engine, "dispatch")
            assert hasattr(session.sync_session, "dispatch")
        finally:
            await session.close()
            await scoped.remove()


# -- one() and friends after iteration has begun: as the sync Result


ROWS = [(1, "a"), (2, "b"), (3, "c")]


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "value", fn()
    except sa_exc.SQLAlchemyError as exc:
        return type(exc).__name__, str(exc)


async def _async_outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "value", await fn()
    except sa_exc.SQLAlchemyError as exc:
        return type(exc).__name__, str(exc)


def _plain(value: Any) -> Any:
    if isinstance(value, sa.Row):
        return tuple(value)
    if isinstance(value, sa.RowMapping):
        return dict(value)
    return value


@pytest.fixture
async def rows_engine(sqlite_url: str) -> AsyncIterator[tuple[AsyncEngine, sa.Table]]:
    table = sa.Table(
        "parity_rows",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(10)),
    )
    eng = create_async_engine(sqlite_url)
    async with eng.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
        await conn.execute(table.insert(), [{"id": i, "name": n} for i, n in ROWS])
    try:
        yield eng, table
    finally:
        await eng.dispose()


@pytest.mark.parametrize(
    ("method", "shape"),
    [(m, "rows") for m in ("one", "one_or_none", "scalar_one", "scalar_one_or_none")]
    + [(m, s) for m in ("one", "one_or_none") for s in ("scalars", "mappings")],
)
@pytest.mark.parametrize("taken", [0, 1, 2, 3])
@pytest.mark.parametrize("yield_per", [None, 2])
async def test_exactly_one_after_iteration_began(
    rows_engine: tuple[AsyncEngine, sa.Table],
    method: str,
    shape: str,
    taken: int,
    yield_per: Optional[int],
) -> None:
    """Rows handed out by ``async for`` are gone; what is left decides, and the
    error and message are the sync Result's (which the official one runs)."""
    engine, table = rows_engine
    stmt = sa.select(table).order_by(table.c.id)

    def shaped(result: Any) -> Any:
        if yield_per is not None:
            result = result.yield_per(yield_per)
        return {"rows": result, "scalars": result.scalars(), "mappings": result.mappings()}[shape]

    with engine.sync_engine.connect() as sync_conn:
        sync_result = shaped(sync_conn.execute(stmt))
        sync_taken = [_plain(next(sync_result)) for _ in range(taken)]
        expected = _outcome(getattr(sync_result, method))
        expected = (expected[0], _plain(expected[1]))
        expected_closed = sync_result.closed if shape == "rows" else None

    async with engine.connect() as conn:
        result = shaped(await conn.stream(stmt))
        ours_taken = []
        for _ in range(taken):
            ours_taken.append(_plain(await result.__anext__()))
        got = await _async_outcome(getattr(result, method))
        got = (got[0], _plain(got[1]))
        assert ours_taken == sync_taken
        assert got == expected
        if expected_closed is not None:
            assert result.closed == expected_closed


async def test_first_after_iteration_began(rows_engine: tuple[AsyncEngine, sa.Table]) -> None:
    engine, table = rows_engine
    stmt = sa.select(table).order_by(table.c.id)
    async with engine.connect() as conn:
        result = await conn.stream(stmt)
        assert tuple(await result.__anext__()) == (1, "a")
        assert tuple(await result.first()) == (2, "b")  # type: ignore[arg-type]
        assert result.closed


# -- unique(), columns(), scalars(), mappings()... after iteration has begun


DUPLICATES = [("a", 1), ("b", 1), ("a", 1), ("c", 2), ("b", 1), ("c", 2), ("d", 2)]

RESHAPES: dict[str, Callable[[Any], Any]] = {
    "unique": lambda r: r.unique(),
    "columns": lambda r: r.columns("grp"),
    "columns_unique": lambda r: r.columns("grp").unique(),
    "unique_columns": lambda r: r.unique().columns(1),
    "scalars": lambda r: r.scalars(),
    "scalars_key": lambda r: r.scalars("grp"),
    "scalars_unique": lambda r: r.scalars(1).unique(),
    "mappings": lambda r: r.mappings(),
    "mappings_unique": lambda r: r.mappings().unique(),
    "mappings_columns": lambda r: r.mappings().columns("name"),
    "tuples": lambda r: r.tuples(),
}


@pytest.fixture
async def dup_engine(sqlite_url: str) -> AsyncIterator[tuple[AsyncEngine, sa.Select[Any]]]:
    table = sa.Table(
        "parity_dups",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(10)),
        sa.Column("grp", sa.Integer),
    )
    eng = create_async_engine(sqlite_url)
    async with eng.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
        await conn.execute(
            table.insert(), [{"id": i, "name": n, "grp": g} for i, (n, g) in enumerate(DUPLICATES)]
        )
    try:
        yield eng, sa.select(table.c.name, table.c.grp).order_by(table.c.id)
    finally:
        await eng.dispose()


@pytest.mark.filterwarnings("ignore:The Result.tuples:sqlalchemy.exc.SADeprecationWarning")
@pytest.mark.parametrize("reshape", list(RESHAPES))
@pytest.mark.parametrize("taken", [1, 3])
@pytest.mark.parametrize("yield_per", [None, 2])
async def test_reshape_after_iteration_began(
    dup_engine: tuple[AsyncEngine, sa.Select[Any]],
    reshape: str,
    taken: int,
    yield_per: Optional[int],
) -> None:
    """Rows read ahead by ``async for`` but not handed out are reshaped like the
    rows the sync Result has not fetched yet."""
    engine, stmt = dup_engine
    op = RESHAPES[reshape]

    with engine.sync_engine.connect() as sync_conn:
        sync_result = sync_conn.execute(stmt)
        if yield_per:
            sync_result = sync_result.yield_per(yield_per)
        head = [_plain(next(sync_result)) for _ in range(taken)]
        expected = [_plain(x) for x in op(sync_result).all()]

    async with engine.connect() as conn:
        result = await conn.stream(stmt)
        if yield_per:
            result = result.yield_per(yield_per)
        ours = [_plain(await result.__anext__()) for _ in range(taken)]
        reshaped = op(result)
        got = [_plain(await reshaped.__anext__())] if expected else []
        got += [_plain(x) for x in await reshaped.all()]
    assert ours == head
    assert got == expected, (reshape, taken)


async def test_freeze_after_iteration_began(
    dup_engine: tuple[AsyncEngine, sa.Select[Any]],
) -> None:
    engine, stmt = dup_engine
    async with engine.connect() as conn:
        result = await conn.stream(stmt)
        assert _plain(await result.__anext__()) == DUPLICATES[0]
        frozen = await result.freeze()
    assert [tuple(r) for r in frozen().all()] == DUPLICATES[1:]


class Owner(Base):
    __tablename__ = "parity_owner"
    id: Mapped[int] = mapped_column(primary_key=True)


class Pet(Base):
    __tablename__ = "parity_pet"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("parity_owner.id"))


@pytest.mark.parametrize("taken", [1, 2])
@pytest.mark.parametrize("shape", ["scalars", "rows"])
async def test_orm_unique_after_iteration_began(sqlite_url: str, taken: int, shape: str) -> None:
    """Entities repeated by a join: unique() after the first rows, as the sync Result."""
    engine = create_async_engine(sqlite_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            await conn.execute(sa.insert(Owner), [{"id": 1}, {"id": 2}, {"id": 3}])
            pets = [(1, 1), (2, 1), (3, 2), (4, 1), (5, 3), (6, 2), (7, 3)]
            await conn.execute(sa.insert(Pet), [{"id": i, "owner_id": o} for i, o in pets])
        stmt = sa.select(Owner).join(Pet, Pet.owner_id == Owner.id).order_by(Pet.id)

        def shaped(result: Any) -> Any:
            return result.scalars() if shape == "scalars" else result

        def ids(items: Any) -> list[int]:
            return [x.id if shape == "scalars" else x[0].id for x in items]

        with Session(engine.sync_engine) as sync_session:
            sync_result = shaped(sync_session.execute(stmt))
            head = ids([next(sync_result) for _ in range(taken)])
            expected = ids(sync_result.unique().all())

        async with AsyncSession(engine) as session:
            result = shaped(await session.stream(stmt))
            ours = ids([await result.__anext__() for _ in range(taken)])
            got = ids(await result.unique().all())
        assert (ours, got) == (head, expected)
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "reshape", ["columns", "mappings", "mappings_columns", "scalars", "scalars_key", "unique"]
)
@pytest.mark.parametrize("taken", [1, 2])
async def test_reshape_after_iteration_of_a_unique_result(
    dup_engine: tuple[AsyncEngine, sa.Select[Any]], reshape: str, taken: int
) -> None:
    """unique() before ``async for``, another reshape after: the rows its filter
    dropped while reading ahead cannot be brought back, so it is refused with a
    clear error (the official result, which reads one row at a time, allows it);
    with yield_per(1), nothing is read ahead and the sync semantics hold."""
    engine, stmt = dup_engine
    op = RESHAPES[reshape]

    with engine.sync_engine.connect() as sync_conn:
        sync_result = sync_conn.execute(stmt).unique()
        head = [_plain(next(sync_result)) for _ in range(taken)]
        expected = [_plain(x) for x in op(sync_result).all()]

    async with engine.connect() as conn:
        result = (await conn.stream(stmt)).unique()
        assert [_plain(await result.__anext__()) for _ in range(taken)] == head
        with pytest.raises(sa_exc.InvalidRequestError, match="before iterating"):
            op(result)
        assert [_plain(x) for x in await result.all()] == [
            _plain(x) for x in sync_conn_rows(engine, stmt)[taken:]
        ]

        one_at_a_time = (await conn.stream(stmt)).unique().yield_per(1)
        assert [_plain(await one_at_a_time.__anext__()) for _ in range(taken)] == head
        got = [_plain(x) for x in await op(one_at_a_time).all()]
    assert got == expected, (reshape, taken)


def sync_conn_rows(engine: AsyncEngine, stmt: sa.Select[Any]) -> list[Any]:
    with engine.sync_engine.connect() as sync_conn:
        return list(sync_conn.execute(stmt).unique().all())
