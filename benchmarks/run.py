"""Side-by-side benchmark: sync SQLAlchemy, the official asyncio extension, sqlalchemy_anyio.

    python benchmarks/run.py [--quick] [--servers | --pg-url URL --mysql-url URL]
    python benchmarks/run.py --http [--quick] ...   (the HTTP benchmark: http_bench.py)

Everything is measured in one run on one machine:

* ``sync``: plain SQLAlchemy with the sync driver, in this process, no event loop;
* ``official``: ``sqlalchemy.ext.asyncio`` (aiosqlite / asyncpg / aiomysql) in a
  subprocess, so greenlet never enters this process; asyncio and uvloop only;
* ``anyio-C``: sqlalchemy_anyio with the C bridge, in this process;
* ``anyio-py``: sqlalchemy_anyio with the pure-Python bridge, in a subprocess
  with ``SQLALCHEMY_ANYIO_NO_CEXT=1``;
* ``anyio-native``: sqlalchemy_anyio (C bridge) on the official extension's
  asyncpg / aiomysql URL, run natively (servers only; asyncio and uvloop);

each async one on asyncio, uvloop and trio (the official extension: asyncio and
uvloop).  Output: a table on stdout, ``benchmarks/results/latest.json`` and
``benchmarks/chart.png``.
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from typing import Any, Dict, List, Optional

import sqlalchemy as sa

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _workload as w  # noqa: E402
from _common import choices, drop_tables, git_commit, write_json  # noqa: E402

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test"

SCENARIOS = ["point", "page", "orm100", "concurrent", "lag"]
TITLES = {
    "point": "point select",
    "page": "100-row page",
    "orm100": "ORM 100 objects",
    "concurrent": "16 tasks / 8 conns",
    "lag": "ORM 40k load",
}
IMPLS = ["sync", "official", "anyio-C", "anyio-py", "anyio-native"]
BACKENDS = ["asyncio", "uvloop", "trio"]

# SQLAlchemy driver names per database kind and implementation
DRIVERS = {
    "sqlite": {"sync": "sqlite", "official": "sqlite+aiosqlite", "anyio": "sqlite"},
    "postgresql": {
        "sync": "postgresql+psycopg",
        "official": "postgresql+asyncpg",
        "anyio": "postgresql+psycopg",
    },
    "mysql": {"sync": "mysql+pymysql", "official": "mysql+aiomysql", "anyio": "mysql+pymysql"},
}


def url_for(base: str, kind: str, impl: str) -> str:
    """``anyio-native`` is sqlalchemy_anyio (C bridge) on the official extension's
    async driver URL, which it runs natively on asyncio."""
    drivers = DRIVERS[kind]
    if impl == "anyio-native":
        impl = "official"
    name = drivers["anyio" if impl.startswith("anyio") else impl]
    return sa.make_url(base).set(drivername=name).render_as_string(hide_password=False)


# ---------------------------------------------------------------------------
# one implementation on one loop on one database (in this process or a child)


def run_one(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Measure one (implementation, loop, database); returns its record."""
    cfg = w.Config(**spec["cfg"])
    impl, backend, kind = spec["impl"], spec["backend"], spec["kind"]
    record: Dict[str, Any] = {
        "db": kind,
        "impl": impl,
        "backend": backend,
        "url": sa.make_url(spec["url"]).render_as_string(hide_password=True),
        "driver": sa.make_url(spec["url"]).drivername,
        "scenarios": {},
        "notes": [],
        "pid": os.getpid(),
    }
    t0 = time.perf_counter()
    try:
        if impl == "sync":
            record["scenarios"] = w.run_sync(spec["url"], cfg, spec["scenarios"])
        else:
            import anyio

            if impl == "official":
                import sqlalchemy.ext.asyncio as mod
            else:
                import sqlalchemy_anyio as mod
                from sqlalchemy_anyio import _bridge

                record["accelerated"] = _bridge.ACCELERATED

            async def main() -> None:
                if not spec.get("cancel_only"):
                    record["scenarios"] = await w.run_async(
                        mod, spec["url"], cfg, spec["scenarios"], record["notes"]
                    )
                if spec.get("cancel"):
                    try:
                        record["cancel"] = await w.run_cancel(
                            mod, spec["url"], kind, spec.get("sync_url"), cfg, spec["marker"]
                        )
                    except Exception as exc:  # noqa: BLE001 - reported in the table
                        record["cancel"] = {"failed": f"{type(exc).__name__}: {exc}"[:300]}

            options = {"use_uvloop": True} if backend == "uvloop" else {}
            anyio.run(main, backend="trio" if backend == "trio" else "asyncio",
                      backend_options=options)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - one failure must not sink the run
        record["error"] = f"{type(exc).__name__}: {exc}"[:500]
    record["seconds"] = time.perf_counter() - t0
    record["greenlet_loaded"] = "greenlet" in sys.modules
    return record


def child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    # A hang must still leave a trace: dump every thread's stack before the
    # parent gives up on this child.
    if not spec.get("cancel_only"):
        faulthandler.dump_traceback_later(max(5.0, spec["timeout"] - 5.0), exit=True)
    record = run_one(spec)
    with open(spec["out"], "w") as f:
        json.dump(record, f)
    sys.stdout.flush()
    sys.stderr.flush()
    # The official extension may leave a driver thread running a cancelled
    # query (aiosqlite): don't wait for it at exit.
    os._exit(0)


def run_child(spec: Dict[str, Any], env_extra: Dict[str, str], timeout: float) -> Dict[str, Any]:
    fd, out = tempfile.mkstemp(prefix="bench_", suffix=".json")
    os.close(fd)
    spec = dict(spec, out=out, timeout=timeout)
    env = dict(os.environ, **env_extra)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
        with open(out) as f:
            text = f.read()
        if proc.returncode != 0 or not text:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
            return _failed(spec, f"child exited {proc.returncode}: {' | '.join(tail)}")
        return json.loads(text)  # type: ignore[no-any-return]
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        tail = " | ".join(err.strip().splitlines()[-12:])
        return _failed(spec, f"child timed out after {timeout:.0f} s: {tail}")
    finally:
        os.unlink(out)


def _failed(spec: Dict[str, Any], error: str) -> Dict[str, Any]:
    return {
        "db": spec["kind"], "impl": spec["impl"], "backend": spec["backend"],
        "scenarios": {}, "notes": [], "error": error,
    }  # fmt: skip


# ---------------------------------------------------------------------------
# the run


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds (~1 minute)")
    p.add_argument("--pg-url", default=os.environ.get("SQLALCHEMY_ANYIO_PG_URL"))
    p.add_argument("--mysql-url", default=os.environ.get("SQLALCHEMY_ANYIO_MYSQL_URL"))
    p.add_argument(
        "--servers", action="store_true",
        help=f"use the local test servers ({DEFAULT_PG_URL}, {DEFAULT_MYSQL_URL}) "
        "where no URL is given",
    )  # fmt: skip
    p.add_argument("--db", default="sqlite,postgresql,mysql", help="databases to run (comma list)")
    p.add_argument("--impl", default=",".join(IMPLS), help="implementations (comma list)")
    p.add_argument("--backend", default=",".join(BACKENDS), help="event loops (comma list)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="scenarios (comma list)")
    p.add_argument("--no-cancel", action="store_true", help="skip the cancellation figures")
    p.add_argument("--rounds", type=int, help="timed rounds per scenario")
    p.add_argument("--round-time", type=float, help="seconds per timed round")
    p.add_argument("--objects", type=int, help="objects in the big ORM load (default 40000)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "latest.json"))
    p.add_argument("--chart", default=os.path.join(HERE, "chart.png"))
    p.add_argument("--no-chart", action="store_true")
    p.add_argument(
        "--isolate",
        action="store_true",
        help="run sync and anyio-C in subprocesses too (default: in this process)",
    )
    p.add_argument("--child-timeout", type=float, default=240.0)
    p.add_argument(
        "--http",
        action="store_true",
        help="run the end-to-end HTTP benchmark instead (benchmarks/http_bench.py); "
        "--http --help lists its options",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _reachable(url: str) -> Optional[str]:
    try:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - reported as the skip reason
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--http" in argv:
        import http_bench

        return http_bench.main([a for a in argv if a != "--http"])
    args = parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    cfg = w.Config.quick() if args.quick else w.Config()
    if args.rounds:
        cfg.rounds = args.rounds
    if args.round_time:
        cfg.round_time = args.round_time
    if args.objects:
        cfg.objects = args.objects
    dbs = choices(args.db, ["sqlite", "postgresql", "mysql"], "database")
    impls = choices(args.impl, IMPLS, "implementation")
    backends = choices(args.backend, BACKENDS, "event loop")
    scenarios = choices(args.scenarios, SCENARIOS, "scenario")

    skipped: List[str] = []
    bases: Dict[str, str] = {}
    tmpdir = tempfile.mkdtemp(prefix="bench_sqlite_")
    if "sqlite" in dbs:
        bases["sqlite"] = f"sqlite:///{os.path.join(tmpdir, 'bench.db')}"
    pg = args.pg_url or (DEFAULT_PG_URL if args.servers else None)
    my = args.mysql_url or (DEFAULT_MYSQL_URL if args.servers else None)
    for kind, base in (("postgresql", pg), ("mysql", my)):
        if kind not in dbs:
            continue
        if not base:
            flag = "--pg-url" if kind == "postgresql" else "--mysql-url"
            skipped.append(f"{kind}: no URL (pass {flag} or --servers)")
            continue
        problem = _reachable(url_for(base, kind, "sync"))
        if problem:
            skipped.append(f"{kind}: unreachable ({problem})")
            continue
        bases[kind] = base

    import sqlalchemy_anyio
    from sqlalchemy_anyio import _bridge

    accelerated = _bridge.ACCELERATED
    if "anyio-C" in impls and not accelerated:
        skipped.append(
            "anyio-C: the C bridge is not built (or SQLALCHEMY_ANYIO_NO_CEXT is set): "
            "only the Python bridge was measured"
        )
        impls = [i for i in impls if i != "anyio-C"]
    has_orm = hasattr(sqlalchemy_anyio, "AsyncSession")
    if not has_orm:
        skipped.append("sqlalchemy_anyio.AsyncSession is missing: ORM scenarios skipped for anyio")

    started = time.time()
    load_before = os.getloadavg()
    print(
        f"benchmark: {'quick' if args.quick else 'full'} run, {cfg.rounds} rounds of "
        f"~{cfg.round_time * 1e3:.0f} ms per scenario, median per-op time; "
        f"load average at start {load_before[0]:.2f}",
        flush=True,
    )
    records: List[Dict[str, Any]] = []
    try:
        for kind, base in bases.items():
            print(f"== preparing {kind}: bench_rows ({w.ROWS}), bench_objs ({cfg.objects})",
                  flush=True)  # fmt: skip
            w.setup_database(url_for(base, kind, "sync"), cfg.objects)
            plan = _plan(kind, impls, backends)
            for impl, backend in plan:
                spec = {
                    "impl": impl,
                    "backend": backend,
                    "kind": kind,
                    "url": url_for(base, kind, impl),
                    "sync_url": url_for(base, kind, "sync"),
                    "cfg": asdict(cfg),
                    "scenarios": scenarios,
                    # --quick: the cancellation trial on asyncio only
                    "cancel": not args.no_cancel
                    and impl.startswith("anyio")
                    and (not args.quick or backend == "asyncio"),
                    "marker": f"bench_cancel_{uuid.uuid4().hex[:12]}",
                }
                label = f"{impl}/{backend}" if backend else impl
                print(f"   {kind:<10} {label:<18}", end=" ", flush=True)
                step = time.perf_counter()
                if impl in ("sync", "anyio-C") and not args.isolate:
                    record = run_one(spec)
                else:
                    env = {"SQLALCHEMY_ANYIO_NO_CEXT": "1"} if impl == "anyio-py" else {}
                    record = run_child(spec, env, args.child_timeout)
                if impl == "official" and backend == "asyncio" and not args.no_cancel:
                    record["cancel"] = _official_cancel(spec, cfg)
                if spec["cancel"] or "cancel" in record:
                    _kill_leftovers(kind, spec["sync_url"], spec["marker"])
                records.append(record)
                status = record.get("error") or "ok"
                print(f"{time.perf_counter() - step:6.1f} s  {status}", flush=True)
            if kind != "sqlite":
                drop_tables(url_for(base, kind, "sync"), w.Base.metadata)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

    greenlet_here = "greenlet" in sys.modules
    result = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full",
            "config": asdict(cfg),
            "environment": w.environment(),
            "accelerated_in_main": accelerated,
            "greenlet_in_main_process": greenlet_here,
            "load_average_start": load_before,
            "load_average_end": os.getloadavg(),
            "wall_seconds": time.time() - started,
            "commit": git_commit(),
            "skipped": skipped,
            "databases": {
                k: sa.make_url(v).render_as_string(hide_password=True) for k, v in bases.items()
            },
        },
        "results": records,
    }
    write_json(args.json, result)

    import _report

    print()
    print(_report.render(result))
    if not args.no_chart:
        try:
            _report.chart(result, args.chart)
            print(f"chart: {os.path.relpath(args.chart)}")
        except ImportError as exc:
            print(f"chart skipped: {exc}")
    print(f"json: {os.path.relpath(args.json)}")
    return 0


def _official_cancel(spec: Dict[str, Any], cfg: w.Config) -> Dict[str, Any]:
    """The official extension's cancellation trial, in a child killed after a bound.

    Its ``AsyncConnection.__aexit__`` runs ``close()`` to completion even when
    cancelled, which waits for the driver to finish the query.
    """
    limit = cfg.official_cancel_limit
    rec = run_child(dict(spec, cancel=True, cancel_only=True), {}, limit)
    if rec.get("cancel"):
        return rec["cancel"]  # type: ignore[no-any-return]
    if "timed out" in rec.get("error", ""):
        return {"no_return_within_s": limit, "deadline_s": cfg.cancel_after}
    return {"failed": rec.get("error", "no result")}


def _kill_leftovers(kind: str, sync_url: str, marker: str) -> None:
    """Leave no benchmark query running on a server (after a killed child, say)."""
    if kind == "sqlite":
        return
    watch = w.ServerWatch(kind, sync_url)
    try:
        watch.kill(watch.running(marker))
    except Exception as exc:  # noqa: BLE001 - cleanup only
        print(f"(cleanup of {marker} failed: {exc})", flush=True)
    finally:
        watch.dispose()


def _plan(kind: str, impls: List[str], backends: List[str]) -> List[tuple]:
    plan: List[tuple] = []
    for impl in impls:
        if impl == "sync":
            plan.append(("sync", None))
            continue
        for backend in backends:
            if impl == "official" and backend == "trio":
                continue  # the official extension runs on asyncio only
            if impl == "anyio-native" and (backend == "trio" or kind == "sqlite"):
                continue  # async drivers run natively on asyncio; aiosqlite maps to sqlite3
            plan.append((impl, backend))
    return plan


if __name__ == "__main__":
    sys.exit(main())
