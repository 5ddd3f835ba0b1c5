"""Chaos soak: money transfers under random cancellation, killed backends and a restart.

    python benchmarks/soak.py [--servers | --pg-url URL --mysql-url URL]
                              [--seconds S | --minutes M] [--restart] [--impl ...] [--backend ...]

``--tasks`` (64) tasks share one engine with the default pool and move money
between ``--accounts`` (100) accounts, each transfer one ORM transaction::

    async with Session.begin() as s:
        SELECT ... FOR UPDATE the two accounts (in id order: no deadlocks)
        debit one, credit the other, add a ledger row with a unique id, flush
    # leaving the block commits

Meanwhile ``--cancel-rate`` (20 %) of the transfers run under
``anyio.move_on_after`` with a random deadline around the typical transfer
time; from a separate admin connection in this (parent) process a random
connection of the test database is killed every ``--kill-every`` seconds on
average (PostgreSQL ``pg_terminate_backend``, MariaDB ``KILL``); with
``--restart`` PostgreSQL is restarted once in the middle of each of its runs
(``pg_ctlcluster ... restart``: this disturbs everyone using that server).

Each (database, implementation, loop) runs in a fresh child process.  The
client records which transfers it believes committed and which are uncertain
(cancelled or failed while committing).  Checked afterwards:

* the ledger invariant: the total balance is unchanged, every account equals
  its initial balance plus the effects of the ledger rows (each applied
  exactly once), every transfer believed committed is in the ledger, and
  every ledger row not believed committed was uncertain;
* connections still checked out of the pool once every task has ended;
* threads alive after ``dispose()`` that were not there before the engine;
* RSS (``VmRSS``) at the start, after the first fifth of the run, at the end;
* server-side connections of the test database before and after.

The exit status is 1 if a ``sqlalchemy_anyio`` run breaks the invariant,
leaves a connection checked out, leaks a thread or a server connection,
hangs, crashes, or cannot run a query after the chaos (the official
extension's results are reported, not judged).
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from typing import Any, Dict, List, Optional, Set, Tuple

import sqlalchemy as sa
from _common import choices, drop_tables, fill_tables, git_commit, write_json
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

HERE = os.path.dirname(os.path.abspath(__file__))
IMPLS = ["anyio-C", "anyio-py", "official"]
BACKENDS = ["asyncio", "uvloop", "trio"]
DEFAULT_URLS = {
    "postgresql": "postgresql://postgres@127.0.0.1:5432/test",
    "mysql": "mysql://root@127.0.0.1:3306/test",
}
DRIVERS = {
    "postgresql": {"sync": "postgresql+psycopg", "official": "postgresql+asyncpg"},
    "mysql": {"sync": "mysql+pymysql", "official": "mysql+aiomysql"},
}
DB_TITLES = {"postgresql": "PostgreSQL", "mysql": "MariaDB"}
INITIAL = 10_000
now = time.monotonic


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "soak_accounts"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    balance: Mapped[int] = mapped_column(sa.BigInteger)


class Transfer(Base):
    """The ledger: one row per committed transfer, written in its transaction."""

    __tablename__ = "soak_ledger"
    id: Mapped[str] = mapped_column(sa.String(48), primary_key=True)
    src: Mapped[int]
    dst: Mapped[int]
    amount: Mapped[int]


def url_for(base: str, kind: str, impl: str) -> str:
    driver = DRIVERS[kind]["official" if impl == "official" else "sync"]
    return sa.make_url(base).set(drivername=driver).render_as_string(hide_password=False)


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------
# server-side views: connections of the test database, from outside it


def _admin_url(sync_url: str, kind: str) -> str:
    """A URL on the same server but another database, so it is never counted or killed."""
    url = sa.make_url(sync_url)
    url = url.set(database="postgres" if kind == "postgresql" else None)
    return url.render_as_string(hide_password=False)


def _connections_sql(kind: str) -> str:
    if kind == "postgresql":
        return (
            "SELECT pid FROM pg_stat_activity WHERE datname = :db "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
    return (
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = :db "
        "AND ID <> CONNECTION_ID() AND COMMAND <> 'Killed'"
    )


def server_connections(admin: sa.Engine, kind: str, db: str) -> List[int]:
    with admin.connect() as conn:
        return [r[0] for r in conn.execute(sa.text(_connections_sql(kind)), {"db": db})]


# ---------------------------------------------------------------------------
# one run, in a child process


async def soak(spec: Dict[str, Any], mod: Any, rec: Dict[str, Any]) -> None:
    """The transfers, then the end-of-run checks; fills ``rec``."""
    import anyio

    kind, seconds = spec["kind"], spec["seconds"]
    admin = sa.create_engine(spec["admin_url"], poolclass=sa.pool.NullPool)
    db = sa.make_url(spec["url"]).database or ""
    rec["server_conns_start"] = len(server_connections(admin, kind, db))
    baseline = {t.ident: t.name for t in threading.enumerate()}
    rec["threads_start"] = len(baseline)
    rec["rss_kb_start"] = _rss_kb()

    engine = mod.create_async_engine(spec["url"])
    maker = mod.async_sessionmaker(engine, expire_on_commit=False)
    token = spec["token"]
    committed: List[str] = []
    uncertain: List[str] = []
    errors: Counter[str] = Counter()
    examples: Dict[str, str] = {}
    stats = Counter()  # type: Counter[str]
    lat = {"ewma": 0.02, "max_overrun": 0.0, "max_call": 0.0}
    end = now() + seconds
    accounts = spec["accounts"]

    async def transfer(tid: str, src: int, dst: int, amount: int, at: List[str]) -> None:
        lo, hi = sorted((src, dst))
        async with maker.begin() as s:
            stmt = (
                sa.select(Account)
                .where(Account.id.in_((lo, hi)))
                .order_by(Account.id)
                .with_for_update()
            )
            found = {a.id: a for a in (await s.scalars(stmt)).all()}
            found[src].balance -= amount
            found[dst].balance += amount
            s.add(Transfer(id=tid, src=src, dst=dst, amount=amount))
            await s.flush()
            at[0] = "commit"  # from here on, leaving the block may commit

    async def task(k: int) -> None:
        trnd = random.Random(spec["seed"] * 1000 + k)
        seq = 0
        while now() < end:
            seq += 1
            tid = f"{token}-{k}-{seq}"
            src, dst = trnd.sample(range(1, accounts + 1), 2)
            amount = trnd.randint(1, 100)
            stats["attempted"] += 1
            deadline = None
            if trnd.random() < spec["cancel_rate"]:
                deadline = trnd.uniform(0.0, 2.0 * lat["ewma"])
                stats["cancel_armed"] += 1
            at = ["body"]
            t0 = now()
            outcome = "committed"
            try:
                with anyio.move_on_after(deadline) as scope:
                    await transfer(tid, src, dst, amount, at)
                if scope.cancelled_caught:
                    stats["cancelled"] += 1
                    outcome = "uncertain" if at[0] == "commit" else "rolled back"
                    if deadline is not None:
                        over = now() - t0 - deadline
                        lat["max_overrun"] = max(lat["max_overrun"], over)
            except Exception as exc:  # noqa: BLE001 - counted by kind
                errors[_kind(exc)] += 1
                examples.setdefault(_kind(exc), str(getattr(exc, "orig", exc))[:200])
                stats["errors"] += 1
                outcome = "uncertain" if at[0] == "commit" else "rolled back"
                await anyio.sleep(trnd.uniform(0.01, 0.1))  # a dead server: don't spin
            took = now() - t0
            lat["max_call"] = max(lat["max_call"], took)
            if outcome == "committed":
                committed.append(tid)
                lat["ewma"] = 0.95 * lat["ewma"] + 0.05 * took
            elif outcome == "uncertain":
                uncertain.append(tid)
            stats[outcome] += 1

    async def sample_rss() -> None:
        await anyio.sleep(seconds / 5)
        rec["rss_kb_warm"] = _rss_kb()

    t_start = now()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sample_rss)
        for k in range(spec["tasks"]):
            tg.start_soon(task, k)
        print("SOAK-STARTED", flush=True)
    rec["drain_s"] = now() - end
    rec["run_s"] = now() - t_start
    print("SOAK-ENDED", flush=True)

    # The engine must still work after the chaos (a restart leaves stale connections).
    rec["health"] = "failed"
    for _ in range(5):
        with anyio.move_on_after(15):
            try:
                async with maker() as s:
                    await s.scalar(sa.select(sa.func.count()).select_from(Transfer))
                rec["health"] = "ok"
                break
            except Exception as exc:  # noqa: BLE001 - reported
                rec["health"] = f"failed: {_kind(exc)}"
        await anyio.sleep(1)

    pool = engine.sync_engine.pool
    rec["checked_out_end"] = pool.checkedout()
    for _ in range(50):  # a release in flight may need a moment
        if pool.checkedout() == 0:
            break
        await anyio.sleep(0.1)
    rec["checked_out_settled"] = pool.checkedout()
    rec["pool_status"] = pool.status()
    await engine.dispose()

    extra: Dict[Optional[int], str] = {}
    for _ in range(150):  # retiring workers end after their last call
        extra = {
            t.ident: t.name
            for t in threading.enumerate()
            if t.ident not in baseline and t.is_alive()
        }
        if not extra:
            break
        await anyio.sleep(0.1)
    rec["threads_end"] = threading.active_count()
    rec["threads_leaked"] = sorted(extra.values())
    rec["rss_kb_end"] = _rss_kb()
    conns: List[int] = []
    for _ in range(50):
        conns = server_connections(admin, kind, db)
        if len(conns) <= rec["server_conns_start"]:
            break
        await anyio.sleep(0.2)
    rec["server_conns_end"] = len(conns)
    admin.dispose()
    rec.update(
        stats=dict(stats),
        errors=dict(errors),
        error_examples=examples,
        committed=committed,
        uncertain=uncertain,
        max_cancel_overrun_ms=lat["max_overrun"] * 1e3,
        max_call_ms=lat["max_call"] * 1e3,
    )


def _kind(exc: BaseException) -> str:
    """``OperationalError(AdminShutdown)``: SQLAlchemy's class and the driver's."""
    name = type(exc).__name__
    orig = getattr(exc, "orig", None)
    if orig is not None:
        name += f"({type(orig).__name__})"
    return name


def child_main(spec: Dict[str, Any]) -> None:
    faulthandler.dump_traceback_later(spec["seconds"] + 150, exit=True)
    rec: Dict[str, Any] = {"pid": os.getpid()}
    try:
        import anyio

        mod: Any
        if spec["impl"] == "official":
            import sqlalchemy.ext.asyncio as mod
        else:
            import sqlalchemy_anyio as mod
            from sqlalchemy_anyio import _bridge

            rec["accelerated"] = _bridge.ACCELERATED

        async def main() -> None:
            await soak(spec, mod, rec)

        backend = spec["backend"]
        anyio.run(
            main,
            backend="trio" if backend == "trio" else "asyncio",
            backend_options={"use_uvloop": True} if backend == "uvloop" else {},
        )
    except BaseException as exc:  # noqa: BLE001 - reported
        import traceback

        rec["error"] = f"{type(exc).__name__}: {exc}"[:500]
        traceback.print_exc()
    rec["greenlet_loaded"] = "greenlet" in sys.modules
    with open(spec["out"], "w") as f:
        json.dump(rec, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ---------------------------------------------------------------------------
# the chaos, in the parent


class Chaos:
    """Kills random connections of the test database; restarts PostgreSQL once if asked."""

    def __init__(self, kind: str, admin_url: str, db: str, spec: Dict[str, Any]) -> None:
        self.kind, self.db = kind, db
        self.admin = sa.create_engine(admin_url, poolclass=sa.pool.NullPool)
        self.kill_every = spec["kill_every"]
        self.restart = spec["restart"]
        self.seconds = spec["seconds"]
        self.rnd = random.Random(spec["seed"] + 1)
        self.stop = threading.Event()
        self.started = threading.Event()
        self.kills = 0
        self.kill_failures: Counter[str] = Counter()
        self.restart_info: Optional[Dict[str, Any]] = None
        self._threads: List[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._killer, daemon=True)]
        if self.restart:
            self._threads.append(threading.Thread(target=self._restarter, daemon=True))
        for t in self._threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(120)
        self.admin.dispose()

    def _killer(self) -> None:
        if not self.started.wait(self.seconds + 120):
            return
        while not self.stop.wait(self.rnd.expovariate(1.0 / self.kill_every)):
            try:
                victims = server_connections(self.admin, self.kind, self.db)
                if not victims:
                    continue
                victim = self.rnd.choice(victims)
                with self.admin.connect() as conn:
                    if self.kind == "postgresql":
                        conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": victim})
                    else:
                        conn.exec_driver_sql(f"KILL {int(victim)}")
                self.kills += 1
            except Exception as exc:  # noqa: BLE001 - gone already, server restarting
                self.kill_failures[_kind(exc)] += 1

    def _restarter(self) -> None:
        if not self.started.wait(self.seconds + 120):
            return
        at = self.seconds * self.rnd.uniform(0.3, 0.6)
        if self.stop.wait(at):
            return
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"]
        t0 = now()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        self.restart_info = {
            "at_s": round(at, 1),
            "took_s": round(now() - t0, 2),
            "exit": proc.returncode,
            "output": (proc.stderr or proc.stdout).strip()[-300:],
        }


def run_child(spec: Dict[str, Any], kind: str, admin_url: str) -> Dict[str, Any]:
    fd, out = tempfile.mkstemp(prefix="soak_", suffix=".json")
    os.close(fd)
    spec = dict(spec, out=out)
    env = dict(os.environ)
    env.pop("SQLALCHEMY_ANYIO_NO_CEXT", None)
    if spec["impl"] == "anyio-py":
        env["SQLALCHEMY_ANYIO_NO_CEXT"] = "1"
    chaos = Chaos(kind, admin_url, sa.make_url(spec["url"]).database or "", spec)
    err = tempfile.TemporaryFile(mode="w+")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    chaos.start()

    def watch_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("SOAK-STARTED"):
                chaos.started.set()
            elif line.startswith("SOAK-ENDED"):
                chaos.stop.set()

    reader = threading.Thread(target=watch_stdout, daemon=True)
    reader.start()
    timeout = spec["seconds"] + 240
    try:
        code: Optional[int] = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    chaos.finish()
    reader.join(5)
    err.seek(0)
    stderr_lines = err.read().strip().splitlines()
    stderr_tail = " | ".join(stderr_lines[-15:])
    err.close()
    try:
        with open(out) as f:
            text = f.read()
    finally:
        os.unlink(out)
    rec: Dict[str, Any] = json.loads(text) if text else {}
    if code is None:
        rec["error"] = f"HANG: child killed after {timeout:.0f} s: {stderr_tail}"[:2000]
    elif code != 0 or not text:
        rec["error"] = f"child exited {code}: {stderr_tail}"[:2000]
    if stderr_lines:
        rec["stderr_lines"] = len(stderr_lines)
        rec["stderr"] = stderr_lines[:60]
    rec["chaos"] = {
        "kills": chaos.kills,
        "kill_failures": dict(chaos.kill_failures),
        "restart": chaos.restart_info,
    }
    return rec


# ---------------------------------------------------------------------------
# setup and the ledger check, with the sync driver


def setup_database(sync_url: str, accounts: int) -> None:
    balances = [{"id": i, "balance": INITIAL} for i in range(1, accounts + 1)]
    fill_tables(sync_url, Base.metadata, [(Account.__table__, balances)])


def check_ledger(sync_url: str, rec: Dict[str, Any], accounts: int, token: str) -> Dict[str, Any]:
    """The invariant, from the database and what the client believed."""
    engine = sa.create_engine(sync_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            balances = dict(conn.execute(sa.select(Account.id, Account.balance)).all())
            ledger = conn.execute(
                sa.select(Transfer.id, Transfer.src, Transfer.dst, Transfer.amount)
            ).all()
    finally:
        engine.dispose()
    expected = {i: INITIAL for i in range(1, accounts + 1)}
    ids: Set[str] = set()
    doubled = 0
    for tid, src, dst, amount in ledger:
        doubled += tid in ids
        ids.add(tid)
        expected[src] -= amount
        expected[dst] += amount
    believed = set(rec.get("committed", []))
    uncertain = set(rec.get("uncertain", []))
    mismatched = [i for i in expected if balances.get(i) != expected[i]]
    lost = believed - ids
    unexpected = ids - believed - uncertain
    foreign = [t for t in ids if not t.startswith(token + "-")]
    problems = []
    if sum(balances.values()) != INITIAL * accounts:
        problems.append(f"total {sum(balances.values())} != {INITIAL * accounts}")
    if mismatched:
        problems.append(f"{len(mismatched)} accounts != initial + ledger (e.g. {mismatched[:3]})")
    if lost:
        problems.append(f"{len(lost)} committed transfers missing from the ledger")
    if unexpected:
        problems.append(f"{len(unexpected)} ledger rows neither committed nor uncertain")
    if doubled or foreign:
        problems.append(f"{doubled} doubled, {len(foreign)} foreign ledger rows")
    return {
        "ok": not problems,
        "problems": problems,
        "ledger_rows": len(ids),
        "uncertain_in_ledger": len(ids & uncertain),
        "examples": sorted(lost)[:3] + sorted(unexpected)[:3],
    }


def judge(rec: Dict[str, Any]) -> List[str]:
    """Why a run fails the soak (empty: it passed)."""
    out = []
    if rec.get("error"):
        out.append(rec["error"].split(":")[0])
    inv = rec.get("invariant")
    if inv is not None and not inv["ok"]:
        out.append("ledger invariant broken: " + "; ".join(inv["problems"]))
    if rec.get("checked_out_settled"):
        out.append(f"{rec['checked_out_settled']} connections left checked out")
    if rec.get("threads_leaked"):
        out.append(f"threads leaked: {', '.join(rec['threads_leaked'][:5])}")
    if "server_conns_end" in rec and rec["server_conns_end"] > rec["server_conns_start"]:
        out.append(f"{rec['server_conns_end']} server connections left open")
    if rec.get("health") not in (None, "ok"):
        out.append(f"no query after the chaos ({rec['health']})")
    return out


# ---------------------------------------------------------------------------
# the report


def render(result: Dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"soak {meta['date']} commit {meta.get('commit')}: python {meta['python']}, "
        f"SQLAlchemy {sa.__version__}, {meta['cpus']} CPUs; {meta['tasks']} tasks, "
        f"{meta['accounts']} accounts, default pool; {meta['seconds']:.0f} s per run; "
        f"{meta['cancel_rate']:.0%} of transfers under a random move_on_after; a connection "
        f"killed every {meta['kill_every']} s on average; PostgreSQL restart: "
        f"{'yes' if meta['restart'] else 'no'}; load average {meta['load_start']:.2f} at "
        f"start, {meta['load_end']:.2f} at end",
        "",
        "| database | implementation | transfers attempted | committed | cancelled | uncertain "
        "(in ledger) | errors | ledger invariant | checked out at end | threads start → end "
        "(leaked) | RSS MB start / warm / end | server conns start → end | chaos | verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- | --- | --- "
        "| --- |",
    ]
    notes = []
    for rec in result["runs"]:
        name = rec["label"]
        db = DB_TITLES[rec["db"]]
        verdict = "; ".join(rec["failures"]) or "pass"
        if rec["impl"] == "official" and rec["failures"]:
            verdict = "(not judged) " + verdict
        st = rec.get("stats")
        if not st:
            lines.append(f"| {db} | {name} | " + " |" * 11 + f" {verdict} |")
            continue
        inv = rec.get("invariant") or {}
        chaos = rec["chaos"]
        chaos_txt = f"{chaos['kills']} kills"
        if chaos.get("restart"):
            r = chaos["restart"]
            chaos_txt += f", restart at {r['at_s']} s ({r['took_s']} s, exit {r['exit']})"
        mb = [rec.get(k, 0) / 1024 for k in ("rss_kb_start", "rss_kb_warm", "rss_kb_end")]
        leaked = len(rec.get("threads_leaked", []))
        lines.append(
            f"| {db} | {name} | {st.get('attempted', 0)} | {st.get('committed', 0)} "
            f"| {st.get('cancelled', 0)} | {st.get('uncertain', 0)} "
            f"({inv.get('uncertain_in_ledger', '-')}) | {st.get('errors', 0)} "
            f"| {'ok' if inv.get('ok') else 'BROKEN'} | {rec.get('checked_out_settled')} "
            f"| {rec.get('threads_start')} → {rec.get('threads_end')} ({leaked}) "
            f"| {mb[0]:.0f} / {mb[1]:.0f} / {mb[2]:.0f} "
            f"| {rec.get('server_conns_start')} → {rec.get('server_conns_end')} "
            f"| {chaos_txt} | {verdict} |"
        )
        errs = ", ".join(f"{k} {v}" for k, v in sorted(rec.get("errors", {}).items(),
                                                         key=lambda kv: -kv[1]))  # fmt: skip
        notes.append(
            f"- {db} {name}: errors: {errs or 'none'}; longest transfer "
            f"{rec.get('max_call_ms', 0):.0f} ms; worst return after a cancel deadline "
            f"{rec.get('max_cancel_overrun_ms', 0):.0f} ms; drain after the end "
            f"{rec.get('drain_s', 0):.1f} s; query after the chaos: {rec.get('health')}"
        )
        if rec.get("stderr_lines"):
            first = next((x for x in rec["stderr"] if x.strip()), "")
            notes.append(f"  - stderr: {rec['stderr_lines']} lines, the first: {first[:200]}")
    return "\n".join([*lines, "", *notes])


# ---------------------------------------------------------------------------
# the run


def plan(impls: List[str], backends: List[str]) -> List[Tuple[str, str]]:
    return [
        (impl, backend)
        for impl in impls
        for backend in backends
        if not (impl == "official" and backend == "trio")  # asyncio only
    ]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pg-url", default=os.environ.get("SQLALCHEMY_ANYIO_PG_URL"))
    p.add_argument("--mysql-url", default=os.environ.get("SQLALCHEMY_ANYIO_MYSQL_URL"))
    p.add_argument(
        "--servers", action="store_true",
        help="use the local test servers where no URL is given "
        f"({DEFAULT_URLS['postgresql']}, {DEFAULT_URLS['mysql']})",
    )  # fmt: skip
    p.add_argument("--db", default="postgresql,mysql", help="databases (comma list)")
    p.add_argument("--impl", default="anyio-C,official", help="comma list of " + ",".join(IMPLS))
    p.add_argument("--backend", default="asyncio", help="comma list of " + ",".join(BACKENDS))
    length = p.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, help="per run (default 60)")
    length.add_argument("--minutes", type=float, help="per run")
    p.add_argument("--tasks", type=int, default=64)
    p.add_argument("--accounts", type=int, default=100)
    p.add_argument("--cancel-rate", type=float, default=0.2)
    p.add_argument("--kill-every", type=float, default=1.0, help="mean seconds between kills")
    p.add_argument(
        "--restart", action=argparse.BooleanOptionalAction, default=False,
        help="restart PostgreSQL once in the middle of each of its runs (disturbs every "
        "user of that server; needs pg_ctlcluster and root)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", default=os.path.join(HERE, "results", "soak.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    seconds = args.minutes * 60 if args.minutes else args.seconds or 60.0
    dbs = choices(args.db, list(DRIVERS), "database")
    impls = choices(args.impl, IMPLS, "implementation")
    backends = choices(args.backend, BACKENDS, "event loop")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    bases = {
        "postgresql": args.pg_url or (DEFAULT_URLS["postgresql"] if args.servers else None),
        "mysql": args.mysql_url or (DEFAULT_URLS["mysql"] if args.servers else None),
    }
    print(
        f"chaos soak: {seconds:.0f} s per run, {args.tasks} tasks, seed {seed}, "
        f"restart {'on' if args.restart else 'off'}; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    load_start = os.getloadavg()[0]
    runs: List[Dict[str, Any]] = []
    failed = False
    for kind in dbs:
        base = bases[kind]
        if not base:
            flag = "--pg-url" if kind == "postgresql" else "--mysql-url"
            print(f"skipped {kind}: no URL (pass {flag} or --servers)")
            continue
        sync_url = url_for(base, kind, "sync")
        admin_url = _admin_url(sync_url, kind)
        for n, (impl, backend) in enumerate(plan(impls, backends)):
            setup_database(sync_url, args.accounts)
            token = uuid.uuid4().hex[:12]
            spec = {
                "impl": impl,
                "backend": backend,
                "kind": kind,
                "url": url_for(base, kind, impl),
                "admin_url": admin_url,
                "seconds": seconds,
                "tasks": args.tasks,
                "accounts": args.accounts,
                "cancel_rate": args.cancel_rate,
                "kill_every": args.kill_every,
                "restart": args.restart and kind == "postgresql",
                "seed": seed + n,
                "token": token,
            }
            label = f"{impl}/{backend}"
            print(f"  {kind:<10} {label:<18}", end=" ", flush=True)
            rec = run_child(spec, kind, admin_url)
            rec.update(db=kind, impl=impl, backend=backend, label=label,
                       driver=sa.make_url(spec["url"]).drivername)  # fmt: skip
            if "stats" in rec:
                try:
                    rec["invariant"] = check_ledger(sync_url, rec, args.accounts, token)
                except Exception as exc:  # noqa: BLE001 - the server may be down
                    rec["invariant"] = {"ok": False, "problems": [f"check failed: {exc}"]}
            rec["failures"] = judge(rec)
            if impl.startswith("anyio") and rec["failures"]:
                failed = True
            st = rec.get("stats", {})
            print(
                f"{st.get('attempted', 0)} attempted, {st.get('committed', 0)} committed, "
                f"{st.get('errors', 0)} errors: {'; '.join(rec['failures']) or 'pass'}",
                flush=True,
            )
            rec.pop("committed", None)
            rec.pop("uncertain", None)
            runs.append(rec)
        drop_tables(sync_url, Base.metadata)
    result = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "seconds": seconds,
            "tasks": args.tasks,
            "accounts": args.accounts,
            "cancel_rate": args.cancel_rate,
            "kill_every": args.kill_every,
            "restart": args.restart,
            "seed": seed,
            "load_start": load_start,
            "load_end": os.getloadavg()[0],
            "argv": sys.argv[1:],
        },
        "runs": runs,
    }
    write_json(args.json, result)
    print()
    print(render(result))
    print(f"\njson: {os.path.relpath(args.json)}")
    if failed:
        print("\nSOAK FAILED: see the verdict column", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
