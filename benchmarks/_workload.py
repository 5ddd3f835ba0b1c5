"""The benchmark's schema, data and timed scenarios.

The async scenarios are written once against the extension API, so the same
code measures ``sqlalchemy.ext.asyncio`` and ``sqlalchemy_anyio``; the sync
twins use plain SQLAlchemy on the calling thread with no event loop.
Timing is timeit-style: a warm-up that also calibrates the number of
operations per round, then ``rounds`` rounds; the median per-op time is kept
together with every round's figure.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

now = time.perf_counter

# ---------------------------------------------------------------------------
# schema and data

ROWS = 10_000
POINT_IDS = [(i * 7919) % ROWS + 1 for i in range(ROWS)]


class Base(DeclarativeBase):
    pass


class Row(Base):
    """The 10k-row table of the Core scenarios (and the 100-object ORM load)."""

    __tablename__ = "bench_rows"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    value: Mapped[int]
    score: Mapped[float]


class Obj(Base):
    """The table of the big ORM load (event-loop lag)."""

    __tablename__ = "bench_objs"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    value: Mapped[int]
    note: Mapped[str] = mapped_column(sa.String(100))


rows_t = Row.__table__
POINT = sa.select(rows_t).where(rows_t.c.id == sa.bindparam("x"))
PAGE = sa.select(rows_t).where(rows_t.c.id > sa.bindparam("x")).order_by(rows_t.c.id).limit(100)
ORM100 = sa.select(Row).limit(100)
ORM_ALL = sa.select(Obj)
SELECT_ONE = sa.text("SELECT 1")


def setup_database(sync_url: str, objects: int) -> None:
    """(Re)create the bench_ tables and fill them."""
    engine = sa.create_engine(sync_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            Base.metadata.drop_all(conn)
            Base.metadata.create_all(conn)
            chunk = 5000
            rows = [
                {"id": i, "name": f"row {i}", "value": i * 3 % 1000, "score": i / 7.0}
                for i in range(1, ROWS + 1)
            ]
            for k in range(0, len(rows), chunk):
                conn.execute(rows_t.insert(), rows[k : k + chunk])
            objs = [
                {"id": i, "name": f"obj {i}", "value": i % 977, "note": f"note number {i}"}
                for i in range(1, objects + 1)
            ]
            for k in range(0, len(objs), chunk):
                conn.execute(Obj.__table__.insert(), objs[k : k + chunk])
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------
# configuration and timing


@dataclass
class Config:
    rounds: int = 7
    round_time: float = 0.08  # seconds per timed round (the op count is calibrated)
    warmup_ops: int = 30
    max_ops: int = 20_000
    tasks: int = 16
    pool_size: int = 8
    objects: int = 40_000
    lag_rounds: int = 3
    tick: float = 0.001
    cancel_after: float = 0.5
    next_timeout: float = 3.0
    official_cancel_limit: float = 10.0  # the official extension's trial is killed after this
    server_sleep: int = 20
    sqlite_cte_rows: int = 100_000_000

    @classmethod
    def quick(cls) -> Config:
        return cls(
            rounds=3, round_time=0.03, warmup_ops=15, lag_rounds=1, next_timeout=2.0,
            official_cancel_limit=3.0,
        )  # fmt: skip


def _summary(per_op: List[float], n: int) -> Dict[str, Any]:
    med = statistics.median(per_op)
    return {
        "median_us": med * 1e6,
        "min_us": min(per_op) * 1e6,
        "max_us": max(per_op) * 1e6,
        "rounds_us": [x * 1e6 for x in per_op],
        "ops_per_round": n,
        "ops_per_s": 1.0 / med,
    }


def _ops_for(per_op: float, cfg: Config) -> int:
    return max(5, min(cfg.max_ops, int(cfg.round_time / max(per_op, 1e-9))))


def bench_sync(op: Callable[[int], Any], cfg: Config) -> Dict[str, Any]:
    gc.collect()
    t0 = now()
    for i in range(cfg.warmup_ops):
        op(i)
    n = _ops_for((now() - t0) / cfg.warmup_ops, cfg)
    per_op = []
    for _ in range(cfg.rounds):
        t0 = now()
        for i in range(n):
            op(i)
        per_op.append((now() - t0) / n)
    return _summary(per_op, n)


async def bench_async(op: Callable[[int], Awaitable[Any]], cfg: Config) -> Dict[str, Any]:
    gc.collect()
    t0 = now()
    for i in range(cfg.warmup_ops):
        await op(i)
    n = _ops_for((now() - t0) / cfg.warmup_ops, cfg)
    per_op = []
    for _ in range(cfg.rounds):
        t0 = now()
        for i in range(n):
            await op(i)
        per_op.append((now() - t0) / n)
    return _summary(per_op, n)


def _point_id(i: int) -> int:
    return POINT_IDS[i % ROWS]


def _page_start(i: int) -> int:
    return (i * 100) % (ROWS - 100)


# ---------------------------------------------------------------------------
# sync SQLAlchemy: the baseline, on the calling thread, no event loop


def run_sync(url: str, cfg: Config, scenarios: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    engine = sa.create_engine(url, pool_size=cfg.pool_size, max_overflow=0)
    try:
        with engine.connect() as conn:
            conn.execute(POINT, {"x": 1}).one()
            if "point" in scenarios:
                out["point"] = bench_sync(
                    lambda i: conn.execute(POINT, {"x": _point_id(i)}).one(), cfg
                )
            if "page" in scenarios:
                out["page"] = bench_sync(
                    lambda i: conn.execute(PAGE, {"x": _page_start(i)}).all(), cfg
                )
        if "orm100" in scenarios:
            with Session(engine) as session:

                def orm100(i: int) -> None:
                    session.scalars(ORM100).all()
                    session.expunge_all()

                out["orm100"] = bench_sync(orm100, cfg)
        if "concurrent" in scenarios:
            out["concurrent"] = _sync_concurrent(engine, cfg)
        if "lag" in scenarios:
            out["lag"] = _sync_big_load(engine, cfg)
    finally:
        engine.dispose()
    return out


def _sync_concurrent(engine: sa.Engine, cfg: Config) -> Dict[str, Any]:
    """The sync counterpart of 16 tasks: 16 threads over the same 8-connection pool."""

    def one_round(per_task: int) -> float:
        barrier = threading.Barrier(cfg.tasks + 1)
        errors: List[Exception] = []

        def worker(k: int) -> None:
            barrier.wait()
            try:
                for i in range(per_task):
                    with engine.connect() as conn:
                        conn.execute(POINT, {"x": _point_id(k * 997 + i)}).one()
            except Exception as exc:  # noqa: BLE001 - re-raised after the round
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(cfg.tasks)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = now()
        for t in threads:
            t.join()
        elapsed = now() - t0
        if errors:
            raise errors[0]
        return elapsed

    return _concurrent_rounds(one_round, cfg)


def _concurrent_rounds(one_round: Callable[[int], float], cfg: Config) -> Dict[str, Any]:
    gc.collect()
    warm = max(2, cfg.warmup_ops // 4)
    per_op = one_round(warm) / (warm * cfg.tasks)
    per_task = max(2, _ops_for(per_op, cfg) // cfg.tasks)
    results = [one_round(per_task) / (per_task * cfg.tasks) for _ in range(cfg.rounds)]
    summary = _summary(results, per_task * cfg.tasks)
    summary["tasks"] = cfg.tasks
    summary["pool_size"] = cfg.pool_size
    return summary


async def _async_concurrent_rounds(
    one_round: Callable[[int], Awaitable[float]], cfg: Config
) -> Dict[str, Any]:
    gc.collect()
    warm = max(2, cfg.warmup_ops // 4)
    per_op = await one_round(warm) / (warm * cfg.tasks)
    per_task = max(2, _ops_for(per_op, cfg) // cfg.tasks)
    results = [await one_round(per_task) / (per_task * cfg.tasks) for _ in range(cfg.rounds)]
    summary = _summary(results, per_task * cfg.tasks)
    summary["tasks"] = cfg.tasks
    summary["pool_size"] = cfg.pool_size
    return summary


def _sync_big_load(engine: sa.Engine, cfg: Config) -> Dict[str, Any]:
    with Session(engine) as session:  # warm-up: compile, caches
        session.scalars(ORM_ALL.limit(1000)).all()
    durations = []
    count = 0
    for _ in range(cfg.lag_rounds):
        gc.collect()
        with Session(engine) as session:
            t0 = now()
            objs = session.scalars(ORM_ALL).all()
            durations.append(now() - t0)
            count = len(objs)
            del objs
    return {
        "objects": count,
        "load_ms": statistics.median(durations) * 1e3,
        "load_rounds_ms": [d * 1e3 for d in durations],
        "max_gap_ms": None,
        "note": "no event loop: the calling thread is blocked for the whole load",
    }


# ---------------------------------------------------------------------------
# the async API: sqlalchemy.ext.asyncio or sqlalchemy_anyio


async def run_async(
    mod: Any, url: str, cfg: Config, scenarios: List[str], notes: List[str]
) -> Dict[str, Any]:
    import anyio

    out: Dict[str, Any] = {}
    has_orm = hasattr(mod, "AsyncSession") and hasattr(mod, "async_sessionmaker")
    if not has_orm and ({"orm100", "lag"} & set(scenarios)):
        notes.append(f"{mod.__name__}.AsyncSession is missing: ORM scenarios skipped")
    engine = mod.create_async_engine(url, pool_size=cfg.pool_size, max_overflow=0)
    try:
        async with engine.connect() as conn:
            (await conn.execute(POINT, {"x": 1})).one()
            if "point" in scenarios:

                async def point(i: int) -> None:
                    (await conn.execute(POINT, {"x": _point_id(i)})).one()

                out["point"] = await bench_async(point, cfg)
            if "page" in scenarios:

                async def page(i: int) -> None:
                    (await conn.execute(PAGE, {"x": _page_start(i)})).all()

                out["page"] = await bench_async(page, cfg)
        if has_orm and "orm100" in scenarios:
            async with mod.AsyncSession(engine) as session:

                async def orm100(i: int) -> None:
                    (await session.scalars(ORM100)).all()
                    session.expunge_all()

                out["orm100"] = await bench_async(orm100, cfg)
        if "concurrent" in scenarios:

            async def one_round(per_task: int) -> float:
                async def task(k: int) -> None:
                    for i in range(per_task):
                        async with engine.connect() as c:
                            (await c.execute(POINT, {"x": _point_id(k * 997 + i)})).one()

                t0 = now()
                async with anyio.create_task_group() as tg:
                    for k in range(cfg.tasks):
                        tg.start_soon(task, k)
                return now() - t0

            out["concurrent"] = await _async_concurrent_rounds(one_round, cfg)
        if has_orm and "lag" in scenarios:
            out["lag"] = await _async_big_load(mod, engine, cfg)
    finally:
        await engine.dispose()
    return out


class _GcPauses:
    """Gen-2 collections (start, end) while installed: measurement only, no GC setting changes."""

    def __init__(self) -> None:
        self.passes: List[tuple] = []
        self._started = 0.0

    def __call__(self, phase: str, info: Dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = now()
        else:
            self.passes.append((self._started, now()))

    def within(self, a: float, b: float) -> float:
        """Seconds of gen-2 collection inside [a, b]."""
        return sum(max(0.0, min(b, y) - max(a, x)) for x, y in self.passes)


async def _ticker_window(cfg: Config, body: Callable[[], Awaitable[Any]]) -> Dict[str, Any]:
    """Run ``body`` while a task sleeping ``tick`` seconds records the gaps between its wake-ups.

    Also recorded: the gen-2 garbage collections in the window (``gc.callbacks``),
    so that the largest gap can be told apart from the collector's pauses.
    """
    import anyio

    state: Dict[str, Any] = {"done": False, "gaps": []}

    async def ticker() -> None:
        last = now()
        while not state["done"]:
            await anyio.sleep(cfg.tick)
            t = now()
            state["gaps"].append((last, t))
            last = t

    pauses = _GcPauses()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.sleep(0.01)
        state["gaps"] = []
        gc.callbacks.append(pauses)
        t0 = now()
        try:
            result = await body()
        finally:
            elapsed = now() - t0
            state["done"] = True
    gc.callbacks.remove(pauses)
    gaps = state["gaps"] or [(t0, t0)]
    collections = [y - x for x, y in pauses.passes]
    return {
        "elapsed": elapsed,
        "max_gap": max(b - a for a, b in gaps),
        "max_gap_outside_gc": max((b - a) - pauses.within(a, b) for a, b in gaps),
        "gc2_count": len(collections),
        "gc2_max": max(collections, default=0.0),
        "ticks": len(state["gaps"]),
        "result": result,
    }


async def _load_rounds(mod: Any, engine: Any, cfg: Config) -> List[Dict[str, Any]]:
    rounds = []
    for _ in range(cfg.lag_rounds):
        gc.collect()
        async with mod.AsyncSession(engine) as session:

            async def load() -> List[Any]:
                return list((await session.scalars(ORM_ALL)).all())

            window = await _ticker_window(cfg, load)
            # The objects are freed after the window: freeing 40k objects is
            # the caller's work on the loop thread, not the load's.
            window["result"] = len(window["result"])
            rounds.append(window)
    return rounds


def _rss_mb() -> float:
    """This process's resident memory now (MB), from /proc (0 where absent)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


async def _frozen_rounds(mod: Any, engine: Any, cfg: Config) -> Dict[str, Any]:
    """The same load after ``gc.freeze()``, the usual recipe of a server once it
    has started: what the collector then has to walk is the load's own objects.
    The freeze is undone afterwards (this process measures other things next)."""
    gc.collect()
    rss = _rss_mb()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        rounds = await _load_rounds(mod, engine, cfg)
    finally:
        gc.unfreeze()
    return {
        "frozen_objects": frozen,
        "max_gap_frozen_ms": statistics.median(r["max_gap"] * 1e3 for r in rounds),
        "gc2_max_frozen_ms": statistics.median(r["gc2_max"] * 1e3 for r in rounds),
        "rss_growth_frozen_mb": _rss_mb() - rss,
    }


async def _async_big_load(mod: Any, engine: Any, cfg: Config) -> Dict[str, Any]:
    import anyio

    async with mod.AsyncSession(engine) as session:  # warm-up: compile, caches, workers
        (await session.scalars(ORM_ALL.limit(1000))).all()
    idle = await _ticker_window(cfg, lambda: anyio.sleep(0.2))
    gc.collect()
    rss = _rss_mb()
    rounds = await _load_rounds(mod, engine, cfg)
    rss_growth = _rss_mb() - rss
    frozen = await _frozen_rounds(mod, engine, cfg)
    gaps = [r["max_gap"] * 1e3 for r in rounds]
    durations = [r["elapsed"] * 1e3 for r in rounds]
    return {
        "objects": rounds[-1]["result"],
        "load_ms": statistics.median(durations),
        "load_rounds_ms": durations,
        "max_gap_ms": statistics.median(gaps),
        "worst_gap_ms": max(gaps),
        "gap_rounds_ms": gaps,
        # each round's largest gap over its own load time
        "gap_share": statistics.median(r["max_gap"] / r["elapsed"] for r in rounds),
        "gap_outside_gc_ms": statistics.median(r["max_gap_outside_gc"] * 1e3 for r in rounds),
        "gc2_max_ms": statistics.median(r["gc2_max"] * 1e3 for r in rounds),
        "gc2_counts": [r["gc2_count"] for r in rounds],
        "ticks": [r["ticks"] for r in rounds],
        "idle_max_gap_ms": idle["max_gap"] * 1e3,
        "rss_growth_mb": rss_growth,
        **frozen,
    }


# ---------------------------------------------------------------------------
# cancellation (issue 5)


def _long_query(kind: str, marker: str, cfg: Config) -> sa.TextClause:
    if kind == "postgresql":
        return sa.text(f"SELECT pg_sleep({cfg.server_sleep}), '{marker}'")
    if kind == "mysql":
        return sa.text(f"SELECT SLEEP({cfg.server_sleep}), '{marker}'")
    return sa.text(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
        f"WHERE x < {cfg.sqlite_cte_rows}) SELECT count(*), '{marker}' FROM c"
    )


_CONN_ID = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
}


class ServerWatch:
    """A separate sync connection that looks for the marked query on the server."""

    def __init__(self, kind: str, sync_url: Optional[str]) -> None:
        self.kind = kind
        self.engine = (
            sa.create_engine(sync_url, poolclass=sa.pool.NullPool)
            if kind in _CONN_ID and sync_url
            else None
        )

    def running(self, marker: str) -> List[int]:
        if self.engine is None:
            return []
        if self.kind == "postgresql":
            sql = (
                "SELECT pid FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE :m AND pid <> pg_backend_pid()"
            )
        else:
            sql = (
                "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE :m "
                "AND ID <> CONNECTION_ID() AND COMMAND = 'Query'"
            )
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text(sql), {"m": f"%{marker}%"})]

    def kill(self, ids: List[int]) -> None:
        """Cleanup after measuring: leave no benchmark query running."""
        if self.engine is None or not ids:
            return
        with self.engine.connect() as conn:
            for pid in ids:
                if self.kind == "postgresql":
                    conn.execute(sa.text("SELECT pg_cancel_backend(:p)"), {"p": pid})
                else:
                    conn.execute(sa.text(f"KILL QUERY {int(pid)}"))

    def dispose(self) -> None:
        if self.engine is not None:
            self.engine.dispose()


async def run_cancel(
    mod: Any, url: str, kind: str, sync_url: Optional[str], cfg: Config, marker: str
) -> Dict[str, Any]:
    """``move_on_after`` around a long query on a 1-connection pool, then the next query."""
    import anyio

    out: Dict[str, Any] = {"deadline_s": cfg.cancel_after}
    watch = ServerWatch(kind, sync_url)
    engine = mod.create_async_engine(url, pool_size=1, max_overflow=0)
    ident_sql = sa.text(_CONN_ID.get(kind, "SELECT 1"))
    try:
        async with engine.connect() as conn:
            out["conn_id_before"] = (await conn.execute(ident_sql)).scalar()
        t0 = now()
        error = None
        with anyio.move_on_after(cfg.cancel_after) as scope:
            try:
                async with engine.connect() as conn:
                    await conn.execute(_long_query(kind, marker, cfg))
            except Exception as exc:  # noqa: BLE001 - recorded: what the user would see
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        regain = now() - t0
        out["regain_s"] = regain
        out["regain_after_deadline_ms"] = (regain - cfg.cancel_after) * 1e3
        out["cancelled"] = scope.cancelled_caught
        out["error"] = error
        running = watch.running(marker) if watch.engine is not None else None
        out["server_query_running_at_regain"] = bool(running) if running is not None else None

        t1 = now()
        with anyio.move_on_after(cfg.next_timeout) as nscope:
            try:
                async with engine.connect() as conn:
                    out["conn_id_after"] = (await conn.execute(ident_sql)).scalar()
            except Exception as exc:  # noqa: BLE001 - recorded
                out["next_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        next_s = now() - t1
        out["next_query_ms"] = next_s * 1e3
        out["next_completed"] = not nscope.cancelled_caught and "next_error" not in out
        out["next_timeout_s"] = cfg.next_timeout
        if kind in _CONN_ID and out["next_completed"]:
            out["same_connection"] = out.get("conn_id_after") == out["conn_id_before"]
        if watch.engine is not None:
            # still there after the next query? poll briefly, then clean up
            gone_at = None
            t2 = now()
            while now() - t2 < 2.0:
                left = watch.running(marker)
                if not left:
                    gone_at = now() - t0
                    break
                time.sleep(0.05)
            out["server_query_gone_s"] = gone_at  # since the query was issued; None: > 2 s later
            watch.kill(watch.running(marker))
    finally:
        with anyio.move_on_after(3.0, shield=True):
            await engine.dispose()
        watch.dispose()
    return out


def environment() -> Dict[str, Any]:
    import platform

    import anyio

    info: Dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlalchemy": sa.__version__,
        "anyio": anyio.__version__ if hasattr(anyio, "__version__") else None,
    }
    from importlib import metadata

    for dist in (
        "anyio", "trio", "uvloop", "greenlet", "aiosqlite", "asyncpg", "aiomysql",
        "psycopg", "psycopg2-binary", "PyMySQL",
    ):  # fmt: skip
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    import sqlite3

    info["sqlite"] = sqlite3.sqlite_version
    return info
