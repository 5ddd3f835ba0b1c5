"""A FastAPI app on sqlalchemy_anyio: one AsyncSession per request.

Run:  uvicorn examples.fastapi_app:app   (or: python examples/fastapi_app.py)
Set DATABASE_URL to use another database (default: a SQLite file).
"""

# (no "from __future__ import annotations": FastAPI reads the real annotations)

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Optional

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

from sqlalchemy_anyio import AsyncAttrs, AsyncSession, async_sessionmaker, create_async_engine

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///./fastapi_example.db")


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "orm_example_author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    books: Mapped[list["Book"]] = relationship(back_populates="author", order_by="Book.id")


class Book(Base):
    __tablename__ = "orm_example_book"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    author_id: Mapped[int] = mapped_column(ForeignKey("orm_example_author.id"))
    author: Mapped[Author] = relationship(back_populates="books")


class AuthorIn(BaseModel):
    name: str


class BookIn(BaseModel):
    title: str


class BookOut(BaseModel):
    id: int
    title: str


class AuthorOut(BaseModel):
    id: int
    name: str
    books: list[BookOut] = []


def create_app(database_url: str = DATABASE_URL) -> FastAPI:
    """Build the app; tests pass their own database URL."""
    engine = create_async_engine(database_url)
    Session = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with Session() as session:
            yield session

    SessionDep = Annotated[AsyncSession, Depends(get_session)]

    def out(author: Author, books: Optional[list[Book]] = None) -> AuthorOut:
        return AuthorOut(
            id=author.id,
            name=author.name,
            books=[BookOut(id=b.id, title=b.title) for b in books or []],
        )

    @app.post("/authors", status_code=201)
    async def create_author(data: AuthorIn, session: SessionDep) -> AuthorOut:
        author = Author(name=data.name)
        session.add(author)
        await session.commit()
        return out(author)

    @app.post("/authors/{author_id}/books", status_code=201)
    async def add_book(author_id: int, data: BookIn, session: SessionDep) -> BookOut:
        author = await session.get(Author, author_id)
        if author is None:
            raise HTTPException(404, "no such author")
        book = Book(title=data.title, author=author)
        session.add(book)
        await session.commit()
        return BookOut(id=book.id, title=book.title)

    @app.get("/authors")
    async def list_authors(session: SessionDep) -> list[AuthorOut]:
        authors = await session.scalars(
            select(Author).options(selectinload(Author.books)).order_by(Author.id)
        )
        return [out(a, a.books) for a in authors]

    @app.get("/authors/{author_id}")
    async def get_author(author_id: int, session: SessionDep) -> AuthorOut:
        author = await session.get(Author, author_id)
        if author is None:
            raise HTTPException(404, "no such author")
        # a lazy relationship, loaded on the session's worker
        return out(author, await author.awaitable_attrs.books)

    @app.delete("/authors/{author_id}", status_code=204)
    async def delete_author(author_id: int, session: SessionDep) -> None:
        async with session.begin():
            author = await session.get(Author, author_id)
            if author is None:
                raise HTTPException(404, "no such author")
            for book in await author.awaitable_attrs.books:
                await session.delete(book)
            await session.delete(author)

    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app)
