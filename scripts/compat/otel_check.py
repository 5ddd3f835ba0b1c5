"""OpenTelemetry's SQLAlchemy instrumentation on the async engine: every SQL span
is a child of the span of the request that ran it.

    python otel_check.py URL asyncio|uvloop|trio

Run by scripts/compat/run.py with ``sqlalchemy.ext.asyncio`` resolved to
sqlalchemy_anyio, as an application instrumented this way imports it.  Six
requests run at once, each in its own span, each with a Core statement and an
ORM session; the instrumentation's ``before_cursor_execute`` listener starts
each SQL span in whatever context it runs in.
"""

from __future__ import annotations

import sys
from collections import Counter

import anyio
from opentelemetry import trace
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import literal, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

REQUESTS = 6

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("compat")


async def main(url: str) -> None:
    engine = create_async_engine(url)
    # (its declared range stops below SQLAlchemy 2.1; what it hooks is unchanged there)
    SQLAlchemyInstrumentor().instrument(
        engine=engine.sync_engine, tracer_provider=provider, skip_dep_check=True
    )
    maker = async_sessionmaker(engine)

    async def request(i: int) -> None:
        with tracer.start_as_current_span(f"request-{i}"):
            async with engine.connect() as conn:
                assert await conn.scalar(select(literal(i))) == i
            async with maker() as session:
                assert await session.scalar(select(literal(i))) == i

    try:
        async with anyio.create_task_group() as tg:
            for i in range(REQUESTS):
                tg.start_soon(request, i)
    finally:
        await engine.dispose()


def check() -> str:
    spans = exporter.get_finished_spans()
    requests = {s.context.span_id: s.name for s in spans if s.name.startswith("request-")}
    sql = [s for s in spans if not s.name.startswith("request-")]
    orphans = [s.name for s in sql if s.parent is None or s.parent.span_id not in requests]
    children = Counter(s.parent.span_id for s in sql if s.parent is not None)
    # each request ran the same statements: any misplaced span shows as one
    # request with more children than another
    if len(requests) != REQUESTS or orphans or len(set(children.values())) != 1:
        raise SystemExit(
            f"{len(requests)} request spans, {len(sql)} SQL spans, "
            f"{len(orphans)} SQL spans not parented to a request span ({orphans[:5]}), "
            f"children per request span: {sorted(children.values())}"
        )
    return f"{len(sql)} SQL spans, {len(sql) // REQUESTS} under each request's span"


if __name__ == "__main__":
    url, loop = sys.argv[1], sys.argv[2]
    anyio.run(
        main,
        url,
        backend="trio" if loop == "trio" else "asyncio",
        backend_options={"use_uvloop": True} if loop == "uvloop" else {},
    )
    print(check())
