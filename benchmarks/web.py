"""Web-shaped load: many concurrent short ORM sessions on one engine.

    python benchmarks/web.py [--servers] [--db ...] [--impl ...] [--rounds N] [--seconds S]

What a web application does under load: ``--tasks`` (64) tasks share one engine
with the default pool (5 + 10 overflow); each request is one short session:

* ``read``:  ``async with Session() as s: await s.get(Item, id)``
* ``write``: ``async with Session.begin() as s: (await s.get(Item, id)).v += 1``

Every (database, implementation, loop, workload) runs in a fresh child process,
the implementations interleaved round by round.  Reported per run: requests
per second over a measured window after a warm-up, new DBAPI connections
opened during the window (a ``connect`` event listener), voluntary and
involuntary context switches and CPU seconds per request (``getrusage`` of
the whole process, all threads), the database server's CPU per request (its
processes in ``/proc``, when it runs on this machine), the share of the
machine's CPU left idle, and p50/p99 latency.  ``sync`` is plain
SQLAlchemy with one thread per task on the same pool (a threaded server).
``floor`` is the same with one thread: what a request costs the synchronous
driver and SQLAlchemy with no concurrency at all.  ``anyio-cdriver`` is
sqlalchemy_anyio on psycopg2 and mysqlclient instead of psycopg 3 and PyMySQL;
``anyio-free`` is sqlalchemy_anyio with ``thread_placement="off"`` (every
thread where the operating system puts it), to show what placement does.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import sqlalchemy as sa
from _common import CLOCK_TICKS, drop_tables, fill_tables, proc_stat, write_json
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

HERE = os.path.dirname(os.path.abspath(__file__))
ITEMS = 1000
WORKLOADS = ["read", "write"]
IMPLS = [
    "sync", "official", "anyio-C", "anyio-free", "anyio-py", "anyio-native", "anyio-cdriver",
    "floor",
]  # fmt: skip
BACKENDS = ["asyncio", "uvloop", "trio"]
DEFAULT_URLS = {
    "sqlite": None,  # a file in a temporary directory
    "postgresql": "postgresql://postgres@127.0.0.1:5432/test",
    "mysql": "mysql://root@127.0.0.1:3306/test",
}
DRIVERS = {
    "sqlite": {"sync": "sqlite", "official": "sqlite+aiosqlite"},
    "postgresql": {"sync": "postgresql+psycopg", "official": "postgresql+asyncpg"},
    "mysql": {"sync": "mysql+pymysql", "official": "mysql+aiomysql"},
}
#: ``anyio-cdriver``: sqlalchemy_anyio on the drivers written in C (psycopg2,
#: mysqlclient) instead of the ones the official extension's URLs map to.
C_DRIVERS = {"postgresql": "postgresql+psycopg2", "mysql": "mysql+mysqldb"}
SERVER_PROCESSES = ("postgres", "mariadbd", "mysqld")
MEASURING = "-- measuring --"  # a child's cue: its measured window starts now
now = time.perf_counter


def server_cpu_seconds() -> float:
    """CPU seconds used so far by the database server's processes on this machine."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            name, fields = proc_stat(pid)
        except OSError:
            continue  # ended between listdir and open
        if name.startswith(SERVER_PROCESSES):
            # utime, stime, and the same for children already reaped (ended backends)
            total += sum(int(v) for v in fields[11:15])
    return total / CLOCK_TICKS


def machine_idle_ticks() -> Tuple[int, int]:
    """(idle, total) clock ticks of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return values[3] + values[4], sum(values)  # idle + iowait


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "web_items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    v: Mapped[int]


def url_for(base: str, kind: str, impl: str) -> str:
    """``anyio-native``: sqlalchemy_anyio on the async driver's URL (run natively)."""
    if impl == "anyio-cdriver":
        driver = C_DRIVERS[kind]
    else:
        driver = DRIVERS[kind]["official" if impl in ("official", "anyio-native") else "sync"]
    return sa.make_url(base).set(drivername=driver).render_as_string(hide_password=False)


def setup_database(sync_url: str) -> None:
    items = [{"id": i, "name": f"item {i}", "v": 0} for i in range(1, ITEMS + 1)]
    fill_tables(sync_url, Base.metadata, [(Item.__table__, items)])


# ---------------------------------------------------------------------------
# one run, in a child process


class Meter:
    """Counts requests and latencies; snapshots rusage and connects at the window's edges."""

    def __init__(self) -> None:
        self.requests = 0
        self.connects = 0
        self.latencies: List[float] = []
        self.measuring = False
        self.stop = False
        self._lock = threading.Lock()

    def on_connect(self, *args: Any) -> None:
        with self._lock:
            self.connects += 1

    def done(self, started: float) -> None:
        elapsed = now() - started
        with self._lock:
            self.requests += 1
            if self.measuring:
                self.latencies.append(elapsed)

    def snapshot(self) -> Dict[str, float]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        here = resource.getrusage(resource.RUSAGE_THREAD)  # the event loop's thread
        server = server_cpu_seconds()
        idle, total = machine_idle_ticks()
        with self._lock:
            return {
                "t": now(),
                "requests": self.requests,
                "connects": self.connects,
                "vcsw": ru.ru_nvcsw,
                "ivcsw": ru.ru_nivcsw,
                "utime": ru.ru_utime,
                "stime": ru.ru_stime,
                "thread_utime": here.ru_utime,
                "server": server,
                "idle": idle,
                "ticks": total,
            }


def summarize(meter: Meter, a: Dict[str, float], b: Dict[str, float]) -> Dict[str, Any]:
    n = b["requests"] - a["requests"]
    secs = b["t"] - a["t"]
    lat = sorted(meter.latencies)

    def pct(p: float) -> Optional[float]:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3 if lat else None

    per = max(n, 1)
    return {
        "requests": n,
        "seconds": secs,
        "rps": n / secs,
        "new_connections": b["connects"] - a["connects"],
        "connections_total": b["connects"],
        "vcsw_per_req": (b["vcsw"] - a["vcsw"]) / per,
        "ivcsw_per_req": (b["ivcsw"] - a["ivcsw"]) / per,
        "cpu_us_per_req": (b["utime"] - a["utime"] + b["stime"] - a["stime"]) / per * 1e6,
        "sys_us_per_req": (b["stime"] - a["stime"]) / per * 1e6,
        "user_us_per_req": (b["utime"] - a["utime"]) / per * 1e6,
        # the thread that took the snapshots: the event loop's, in async runs
        "loop_user_us_per_req": (b["thread_utime"] - a["thread_utime"]) / per * 1e6,
        "server_cpu_us_per_req": (b["server"] - a["server"]) / per * 1e6,
        "machine_idle": (b["idle"] - a["idle"]) / max(b["ticks"] - a["ticks"], 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "threads_end": threading.active_count(),
    }


def run_sync(spec: Dict[str, Any]) -> Dict[str, Any]:
    engine = sa.create_engine(spec["url"], **spec.get("engine_kw", {}))
    meter = Meter()
    sa.event.listen(engine, "connect", meter.on_connect)
    write = spec["workload"] == "write"

    def task(k: int) -> None:
        rnd = random.Random(k)
        while not meter.stop:
            t0 = now()
            ident = rnd.randint(1, ITEMS)
            if write:
                with Session(engine, expire_on_commit=False) as s, s.begin():
                    s.get(Item, ident).v += 1  # type: ignore[union-attr]
            else:
                with Session(engine, expire_on_commit=False) as s:
                    s.get(Item, ident)
            meter.done(t0)

    threads = [threading.Thread(target=task, args=(k,)) for k in range(spec["tasks"])]
    for t in threads:
        t.start()
    time.sleep(spec["warmup"])
    a = meter.snapshot()
    meter.measuring = True
    print(MEASURING, flush=True)
    time.sleep(spec["seconds"])
    b = meter.snapshot()
    meter.stop = True
    for t in threads:
        t.join()
    out = summarize(meter, a, b)
    engine.dispose()
    return out


def run_async(spec: Dict[str, Any]) -> Dict[str, Any]:
    import anyio

    if spec["impl"] == "official":
        import sqlalchemy.ext.asyncio as mod
    else:
        import sqlalchemy_anyio as mod

    write = spec["workload"] == "write"
    result: Dict[str, Any] = {}

    async def main() -> None:
        kw = dict(spec.get("engine_kw", {}))
        if spec["impl"] == "anyio-free":
            kw["thread_placement"] = "off"
        engine = mod.create_async_engine(spec["url"], **kw)
        meter = Meter()
        sa.event.listen(engine.sync_engine, "connect", meter.on_connect)
        maker = mod.async_sessionmaker(engine, expire_on_commit=False)

        async def task(k: int) -> None:
            rnd = random.Random(k)
            while not meter.stop:
                t0 = now()
                ident = rnd.randint(1, ITEMS)
                if write:
                    async with maker.begin() as s:
                        (await s.get(Item, ident)).v += 1
                else:
                    async with maker() as s:
                        await s.get(Item, ident)
                meter.done(t0)

        async with anyio.create_task_group() as tg:
            for k in range(spec["tasks"]):
                tg.start_soon(task, k)
            await anyio.sleep(spec["warmup"])
            a = meter.snapshot()
            meter.measuring = True
            print(MEASURING, flush=True)
            await anyio.sleep(spec["seconds"])
            b = meter.snapshot()
            meter.stop = True
        result.update(summarize(meter, a, b))
        await engine.dispose()

    backend = spec["backend"]
    anyio.run(
        main,
        backend="trio" if backend == "trio" else "asyncio",
        backend_options={"use_uvloop": True} if backend == "uvloop" else {},
    )
    result["greenlet_loaded"] = "greenlet" in sys.modules
    return result


def child_main(spec: Dict[str, Any]) -> None:
    if spec["impl"] == "anyio-py":
        os.environ["SQLALCHEMY_ANYIO_NO_CEXT"] = "1"
    if spec["impl"] == "floor":
        spec = dict(spec, tasks=1)
    try:
        out = run_sync(spec) if spec["impl"] in ("sync", "floor") else run_async(spec)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        out = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    print(json.dumps(out), flush=True)
    os._exit(0)


def run_child(
    spec: Dict[str, Any], timeout: float, profile: Optional[str] = None
) -> Dict[str, Any]:
    """Run one spec in a fresh child; with ``profile`` (a file name), record
    its measured window with ``perf`` and add the summary to the result."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        profiler = None
        lines = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip() == MEASURING:
                    if profile:
                        profiler = start_perf(proc.pid, spec["seconds"], profile)
                elif line.strip():
                    lines.append(line.strip())
            proc.wait()
        finally:
            killer.cancel()
            if profiler is not None:
                profiler.wait()
        if proc.returncode == -9:
            return {"error": f"timed out after {timeout:.0f} s"}
        if proc.returncode != 0 or not lines:
            errors.seek(0)
            tail = " | ".join(errors.read().strip().splitlines()[-6:])
            return {"error": f"exit {proc.returncode}: {tail}"}
    out: Dict[str, Any] = json.loads(lines[-1])
    if profiler is not None and profile is not None:
        out["profile"] = summarize_perf(profile)
    return out


def start_perf(pid: int, seconds: float, path: str) -> subprocess.Popen[bytes]:
    """``perf record`` of process ``pid`` (all its threads) for ``seconds``."""
    cmd = ["perf", "record", "-q", "-F", "499", "-g", "-p", str(pid), "-o", path]
    return subprocess.Popen(
        [*cmd, "--", "sleep", str(seconds)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize_perf(path: str) -> Dict[str, float]:
    """Shares of the CPU samples: the kernel, of which switching threads
    (``finish_task_switch``), and the Python interpreter."""

    def report(sort: str) -> List[Tuple[float, str]]:
        cmd = ["perf", "report", "-i", path, "--no-children", "--sort", sort, "--stdio"]
        proc = subprocess.run(
            [*cmd, "-g", "none"],
            capture_output=True,
            text=True,
        )
        rows = []
        for line in proc.stdout.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0].endswith("%"):
                rows.append((float(parts[0][:-1]), parts[1].strip()))
        return rows

    out = {"kernel": 0.0, "interpreter": 0.0, "switching": 0.0}
    for share, dso in report("dso"):
        if dso == "[kernel.kallsyms]":
            out["kernel"] += share
        elif "python3" in dso and ".cpython-" not in dso:  # the binary or libpython
            out["interpreter"] += share
    for share, symbol in report("sym"):
        if "finish_task_switch" in symbol:
            out["switching"] += share
    return out


# ---------------------------------------------------------------------------
# the run


def label(impl: str, backend: Optional[str]) -> str:
    return f"{impl}/{backend}" if backend else impl


def plan(impls: List[str], backends: List[str], kind: str) -> List[tuple]:
    out: List[tuple] = []
    for impl in impls:
        if impl in ("sync", "floor"):
            out.append((impl, None))
            continue
        for backend in backends:
            if impl == "official" and backend == "trio":
                continue
            if impl == "anyio-native" and (backend == "trio" or kind == "sqlite"):
                continue
            if impl in ("anyio-cdriver", "anyio-free") and kind == "sqlite":
                continue  # (placement is off for SQLite by default)
            out.append((impl, backend))
    return out


def pick(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The median run by req/s (the spread is reported beside it)."""
    ok = [r for r in runs if "rps" in r]
    if not ok:
        return runs[-1] if runs else {"error": "no run"}
    ok.sort(key=lambda r: r["rps"])
    med = dict(ok[len(ok) // 2])
    med["rps_runs"] = [r["rps"] for r in runs if "rps" in r]
    return med


def profiles(rows: Dict[str, Any]) -> List[str]:
    """One line per profiled run (``--perf``): where its CPU went."""
    return [
        f"profile {name}: kernel {prof['kernel']:.0f}% of CPU samples (switching threads "
        f"{prof['switching']:.0f}%), Python interpreter {prof['interpreter']:.0f}%"
        for name, rec in rows.items()
        if (prof := rec.get("profile"))
    ]


def render(results: Dict[str, Any]) -> str:
    lines = []
    for kind, by_workload in results.items():
        for workload, rows in by_workload.items():
            lines.append(f"\n{kind} / {workload}  (median of rounds by req/s; spread in brackets)")
            lines.append(
                "| impl | req/s | x official (same loop) | new conns | vcsw/req | ivcsw/req "
                "| CPU µs/req | server CPU µs/req | idle | p50 ms | p99 ms | rounds req/s |"
            )
            lines.append("| --- " * 12 + "|")
            for name, rec in rows.items():
                if "rps" not in rec:
                    lines.append(f"| {name} | {rec.get('error', '?')} |" + " |" * 10)
                    continue
                backend = name.split("/")[1] if "/" in name else None
                base_loop = backend if backend in ("asyncio", "uvloop") else "asyncio"
                off = rows.get(f"official/{base_loop}", {}).get("rps")
                ratio = f"{rec['rps'] / off:.2f}x" if off else "-"
                spread = ", ".join(f"{x:.0f}" for x in rec.get("rps_runs", []))
                lines.append(
                    f"| {name} | {rec['rps']:.0f} | {ratio} | {rec['new_connections']} "
                    f"| {rec['vcsw_per_req']:.1f} | {rec['ivcsw_per_req']:.1f} "
                    f"| {rec['cpu_us_per_req']:.0f} | {rec.get('server_cpu_us_per_req', 0):.0f} "
                    f"| {rec.get('machine_idle', 0):.0%} | {rec['p50_ms']:.1f} "
                    f"| {rec['p99_ms']:.1f} | {spread} |"
                )
            lines.extend(profiles(rows))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--servers", action="store_true", help="PostgreSQL and MariaDB too")
    p.add_argument("--db", default=None, help="comma list of sqlite,postgresql,mysql")
    p.add_argument("--pg-url", default=DEFAULT_URLS["postgresql"])
    p.add_argument("--mysql-url", default=DEFAULT_URLS["mysql"])
    p.add_argument("--impl", default=",".join(IMPLS))
    p.add_argument("--backend", default=",".join(BACKENDS))
    p.add_argument("--workload", default=",".join(WORKLOADS))
    p.add_argument("--tasks", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="measured window per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--pool-size", type=int, help="default: the engine's default (5)")
    p.add_argument("--max-overflow", type=int, help="default: the engine's default (10)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "web.json"))
    p.add_argument(
        "--perf",
        action="store_true",
        help="profile each measured window with perf: where the CPU goes (kernel, "
        "switching threads, interpreter), reported under the tables",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return 0

    dbs = (args.db or ("sqlite,postgresql,mysql" if args.servers else "sqlite")).split(",")
    impls = args.impl.split(",")
    backends = args.backend.split(",")
    workloads = args.workload.split(",")
    engine_kw: Dict[str, Any] = {}
    if args.pool_size is not None:
        engine_kw["pool_size"] = args.pool_size
    if args.max_overflow is not None:
        engine_kw["max_overflow"] = args.max_overflow

    if args.perf and shutil.which("perf") is None:
        p.error("--perf needs perf (Debian: apt-get install linux-perf)")
    tmp = tempfile.mkdtemp(prefix="bench_web_")
    bases = {
        "sqlite": f"sqlite:///{os.path.join(tmp, 'web.db')}",
        "postgresql": args.pg_url,
        "mysql": args.mysql_url,
    }
    print(
        f"web-shaped load: {args.tasks} tasks, pool {engine_kw or 'default (5 + 10)'}, "
        f"{args.rounds} rounds of {args.warmup:.1f} s warm-up + {args.seconds:.1f} s measured; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: Dict[str, Any] = {}
    raw: Dict[str, Any] = {}
    for kind in dbs:
        base = bases[kind]
        sync_url = url_for(base, kind, "sync")
        for workload in workloads:
            setup_database(sync_url)
            runs: Dict[str, List[Dict[str, Any]]] = {}
            for rnd in range(args.rounds):
                for impl, backend in plan(impls, backends, kind):
                    spec = {
                        "impl": impl,
                        "backend": backend,
                        "workload": workload,
                        "url": url_for(base, kind, impl),
                        "tasks": args.tasks,
                        "seconds": args.seconds,
                        "warmup": args.warmup,
                        "engine_kw": engine_kw,
                    }
                    profile = os.path.join(tmp, "perf.data") if args.perf else None
                    rec = run_child(spec, 60 + 3 * (args.seconds + args.warmup), profile)
                    name = label(impl, backend)
                    runs.setdefault(name, []).append(rec)
                    shown = f"{rec['rps']:.0f} req/s" if "rps" in rec else rec.get("error")
                    print(f"  {kind} {workload} round {rnd + 1} {name:<18} {shown}", flush=True)
            results.setdefault(kind, {})[workload] = {k: pick(v) for k, v in runs.items()}
            raw.setdefault(kind, {})[workload] = runs
        if kind != "sqlite":
            drop_tables(sync_url, Base.metadata)
    print(render(results))
    write_json(args.json, {"config": vars(args), "load_average_end": os.getloadavg(), "runs": raw})
    print(f"\njson: {os.path.relpath(args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
