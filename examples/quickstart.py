"""Quickstart: Core on SQLite, the same program on asyncio and on trio.

python examples/quickstart.py [sqlite:///quickstart.db]
"""

from __future__ import annotations

import sys

import anyio
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select

from sqlalchemy_anyio import create_async_engine

metadata = MetaData()
notes = Table(
    "notes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("text", String(100), nullable=False),
)


async def main(url: str, loop: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
        await conn.execute(notes.insert(), [{"text": f"note {i}"} for i in range(1000)])

    async with engine.connect() as conn:
        total = await conn.scalar(select(func.count()).select_from(notes))
        first = (await conn.execute(select(notes).order_by(notes.c.id).limit(3))).all()
        streamed = 0
        async with conn.stream(select(notes)) as result:
            async for part in result.partitions(250):
                streamed += len(part)

    await engine.dispose()
    print(f"{loop}: {total} notes, first {[r.text for r in first]}, streamed {streamed}")


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "sqlite:///quickstart.db"
    anyio.run(main, url, "asyncio")
    anyio.run(main, url, "trio", backend="trio")  # same code, unchanged
