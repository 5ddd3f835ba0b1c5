"""sqlalchemy_anyio.sqlmodel.AsyncSession: SQLModel's exec() on a worker thread."""

# no "from __future__ import annotations": SQLModel reads real annotations

from collections.abc import AsyncIterator
from typing import Optional

import pytest

sqlmodel = pytest.importorskip("sqlmodel")

from sqlalchemy import exc as sa_exc  # noqa: E402
from sqlalchemy.engine import CursorResult, Result, ScalarResult  # noqa: E402
from sqlmodel import Field, Relationship, SQLModel, col, delete, func, select  # noqa: E402

from sqlalchemy_anyio import AsyncEngine, async_sessionmaker, create_async_engine  # noqa: E402
from sqlalchemy_anyio.sqlmodel import AsyncSession  # noqa: E402

pytestmark = pytest.mark.anyio


class Team(SQLModel, table=True):
    __tablename__ = "orm_sqlm_team"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str
    heroes: list["Hero"] = Relationship(back_populates="team")


class Hero(SQLModel, table=True):
    __tablename__ = "orm_sqlm_hero"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str
    age: Optional[int] = None
    team_id: Optional[int] = Field(default=None, foreign_key="orm_sqlm_team.id")
    team: Optional[Team] = Relationship(back_populates="heroes")


@pytest.fixture
async def sm_engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(db_url)
    tables = [Team.__table__, Hero.__table__]  # type: ignore[attr-defined]
    async with eng.begin() as conn:
        await conn.run_sync(SQLModel.metadata.drop_all, tables=tables)
        await conn.run_sync(SQLModel.metadata.create_all, tables=tables)
    try:
        yield eng
    finally:
        async with eng.begin() as conn:
            await conn.run_sync(SQLModel.metadata.drop_all, tables=tables)
        await eng.dispose()


async def test_exec_result_shapes(sm_engine: AsyncEngine) -> None:
    async with AsyncSession(sm_engine, expire_on_commit=False) as s:
        assert isinstance(s.sync_session, sqlmodel.Session)
        team = Team(name="T", heroes=[Hero(name="a", age=30), Hero(name="b", age=40)])
        s.add(team)
        await s.commit()

        heroes = await s.exec(select(Hero).order_by(col(Hero.id)))
        assert isinstance(heroes, ScalarResult)
        assert [h.name for h in heroes.all()] == ["a", "b"]

        pairs = await s.exec(select(Hero.name, Hero.age).order_by(col(Hero.id)))
        assert isinstance(pairs, Result)  # typed as TupleResult, as in sqlmodel
        assert pairs.all() == [("a", 30), ("b", 40)]

        assert (await s.exec(select(func.count()).select_from(Hero))).one() == 2
        ages = await s.exec(select(Hero.age).where(col(Hero.age) > 35))
        assert ages.all() == [40]

        deleted = await s.exec(delete(Hero).where(col(Hero.name) == "a"))
        assert isinstance(deleted, CursorResult) and deleted.rowcount == 1
        await s.commit()
        assert (await s.exec(select(func.count()).select_from(Hero))).one() == 1


async def test_relationships_and_guard(sm_engine: AsyncEngine) -> None:
    maker = async_sessionmaker(sm_engine, class_=AsyncSession)
    async with maker.begin() as s:
        s.add(Team(name="T", heroes=[Hero(name="x")]))
    async with maker() as s:
        team = (await s.exec(select(Team))).one()
        with pytest.raises(sa_exc.MissingGreenlet):
            team.heroes  # noqa: B018
        heroes = await s.run_sync(lambda _: list(team.heroes))
        assert [h.name for h in heroes] == ["x"]
        hero = await s.get_one(Hero, heroes[0].id)
        assert hero.team is team


def _sqlmodels_async_execute_deprecation() -> str:
    """The message sqlmodel's own AsyncSession.execute() is deprecated with, read
    from its source: that module cannot be imported without greenlet."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("sqlmodel.ext.asyncio.session")
    assert spec is not None and spec.origin is not None
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncFunctionDef) and node.name == "execute":
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == (
                    "deprecated"
                ):
                    value = ast.literal_eval(decorator.args[0])
                    assert isinstance(value, str)
                    return value
    raise AssertionError("sqlmodel's AsyncSession.execute is not deprecated any more")


async def test_execute_and_scalars_warn_as_in_sqlmodel(sm_engine: AsyncEngine) -> None:
    import warnings

    expected = _sqlmodels_async_execute_deprecation()
    async with AsyncSession(sm_engine) as s:
        s.add(Hero(name="w"))
        await s.commit()
        with pytest.warns(DeprecationWarning) as caught:
            rows = (await s.execute(select(Hero))).scalars().all()
        assert [h.name for h in rows] == ["w"]
        ours = [w for w in caught if str(w.message) == expected]
        assert len(ours) == 1, [str(w.message)[:60] for w in caught]
        assert ours[0].filename == __file__  # points at the caller, as sqlmodel's
        with pytest.warns(DeprecationWarning) as caught:
            assert [h.name for h in (await s.scalars(select(Hero))).all()] == ["w"]
        assert any(str(w.message) == expected for w in caught)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert [h.name for h in (await s.exec(select(Hero))).all()] == ["w"]
