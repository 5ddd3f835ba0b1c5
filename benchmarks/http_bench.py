"""End-to-end HTTP benchmark: one FastAPI app on sqlalchemy_anyio and on the official extension.

    sh scripts/bench.sh --http [--quick] [--pg-url URL] [--mysql-url URL] [--sqlite-url URL] [...]

The app (``http_app.py``) is served by a real ASGI server in its own process,
one worker, and loaded by ``wrk`` over keep-alive connections:

* ``uvicorn-asyncio``: uvicorn ``--loop asyncio --http httptools``;
* ``uvicorn-uvloop``: uvicorn ``--loop uvloop --http httptools``;
* ``hypercorn-trio``: hypercorn ``-k trio`` (sqlalchemy_anyio only: the
  official extension does not run on trio);
* ``hypercorn-asyncio``: hypercorn ``-k asyncio``, both systems: the same
  server as the trio row on asyncio, to tell the server's share from the loop's;
* ``uvicorn-asyncio-w2``, ``uvicorn-uvloop-w2``: uvicorn ``--workers 2``, and
  ``gunicorn-uvloop-w2``: gunicorn with two ``uvicorn_worker.UvicornWorker``
  processes (uvloop, httptools): two server processes on this host (not in the
  default ``--stacks``).

``--systems`` may add ``anyio-off``: sqlalchemy_anyio with
``thread_placement="off"``.  ``--mixed`` loads, at the same time as each
endpoint, ``/hash`` (a password hash in ``anyio.to_thread``, GIL-free CPU work)
with a second ``wrk`` of ``--hash-connections`` connections, and reports both
throughputs: what thread placement costs an application that also does such work.

For every (round, database, server, system) a fresh server process serves every
endpoint in turn: a warm-up ``wrk`` run, then the measured one; the app's
``/stats`` before and after it gives the DBAPI connections opened in the
measured window, ``/proc/<pid>/stat`` the server's CPU time.  The order of the
(server, system) pairs is reversed every other round.  Reported: medians over
the rounds (each figure on its own) and the req/s spread.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

import sqlalchemy as sa
from _common import CLOCK_TICKS, choices, git_commit, proc_stat, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
DB_TITLES = {"postgresql": "PostgreSQL", "mysql": "MariaDB", "sqlite": "SQLite"}
SYSTEMS = ["official", "anyio", "anyio-off"]
DEFAULT_SYSTEMS = ["official", "anyio"]
DEFAULT_STACKS = ["uvicorn-asyncio", "uvicorn-uvloop", "hypercorn-asyncio", "hypercorn-trio"]
STACKS = [*DEFAULT_STACKS, "uvicorn-asyncio-w2", "uvicorn-uvloop-w2", "gunicorn-uvloop-w2"]
ENDPOINTS = ["db", "updates", "author"]
# the official extension's configuration a row is compared with
BASELINE = {
    "uvicorn-asyncio": "uvicorn-asyncio",
    "uvicorn-uvloop": "uvicorn-uvloop",
    "hypercorn-trio": "uvicorn-asyncio",
    "hypercorn-asyncio": "hypercorn-asyncio",
    "uvicorn-asyncio-w2": "uvicorn-asyncio-w2",
    "uvicorn-uvloop-w2": "uvicorn-uvloop-w2",
    "gunicorn-uvloop-w2": "gunicorn-uvloop-w2",
}


def endpoint_path(endpoint: str, queries: int) -> str:
    return {"db": "/db", "updates": f"/updates?queries={queries}", "author": "/authors/1"}[endpoint]


# ---------------------------------------------------------------------------
# the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(stack: str, port: int) -> List[str]:
    workers = "2" if stack.endswith("-w2") else "1"
    if stack.startswith("uvicorn-"):
        return [
            sys.executable, "-m", "uvicorn", "http_app:app", "--app-dir", HERE,
            "--host", "127.0.0.1", "--port", str(port), "--workers", workers,
            "--loop", stack.split("-")[1], "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    if stack.startswith("gunicorn-"):
        return [
            sys.executable, "-m", "gunicorn", "http_app:app", "--chdir", HERE,
            "-k", "uvicorn_worker.UvicornWorker", "-w", workers,
            "-b", f"127.0.0.1:{port}", "--log-level", "warning",
        ]  # fmt: skip
    # -w 0: serve in this process (hypercorn's -w 1 forks a worker)
    return [
        sys.executable, "-m", "hypercorn", "-k", stack.split("-")[1], "-w", "0",
        "-b", f"127.0.0.1:{port}", "--log-level", "WARNING", "http_app:app",
    ]  # fmt: skip


class Server:
    """One server process with the app on one system and database."""

    def __init__(self, stack: str, system: str, base_url: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(
            os.environ,
            BENCH_SYSTEM=system,
            BENCH_DATABASE_URL=base_url,
            PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        )
        self.log = tempfile.NamedTemporaryFile(prefix="bench_http_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            server_command(stack, self.port),
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid: Optional[int] = None

    def get(self, path: str, timeout: float = 10.0) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def check(self, endpoint: str, path: str, queries: int, tries: int = 3) -> None:
        """The endpoint answers as it should; retried, since pooled connections can be stale
        after a database restart (the pool replaces them once they fail)."""
        for attempt in range(tries):
            try:
                check_response(endpoint, self.get(path), queries)
                return
            except OSError:
                if attempt == tries - 1:
                    raise
                time.sleep(0.5)

    def wait_ready(self, timeout: float = 60.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log_tail()}")
            try:
                stats: Dict[str, Any] = self.get("/stats", timeout=2.0)
                self.pid = stats["pid"]
                return stats
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not answering: {self.log_tail()}") from None
                time.sleep(0.2)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's processes (all their threads):
        the one started and, with several workers, its children (one session)."""
        ticks = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                fields = proc_stat(pid)[1]
            except OSError:
                continue
            if int(fields[3]) == self.proc.pid:  # the session the server leads
                ticks += int(fields[11]) + int(fields[12])
        return ticks / CLOCK_TICKS

    def log_text(self) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def log_tail(self, lines: int = 15) -> str:
        return " | ".join(self.log_text().strip().splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM: uvicorn shuts down cleanly; hypercorn -w 0 installs no handler and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def cleanup(self) -> None:
        os.unlink(self.log.name)


def check_response(endpoint: str, body: Any, queries: int) -> None:
    """The app answers what it should before it is measured."""
    if endpoint == "db":
        ok = isinstance(body, dict) and set(body) == {"id", "randomNumber"}
    elif endpoint == "updates":
        ok = isinstance(body, list) and len(body) == queries
    else:
        ok = isinstance(body, dict) and body.get("id") == 1 and len(body.get("books", [])) > 0
    if not ok:
        raise RuntimeError(f"/{endpoint} answered {str(body)[:200]}")


# ---------------------------------------------------------------------------
# wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> Dict[str, Any]:
    """Requests, req/s, p50/p99 and errors from ``wrk --latency`` output."""
    res: Dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise ValueError(f"no Requests/sec in wrk output: {out[-400:]}")
    res["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    if m:
        res["requests"] = int(m.group(1))
        res["seconds"] = _ms(m.group(2)) / 1e3
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[f"p{pct}_ms"] = _ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return res


def wrk(url: str, seconds: int, connections: int, threads: int) -> Dict[str, Any]:
    cmd = [
        "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
        "--timeout", "10s", "--latency", url,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        tail = (proc.stderr + proc.stdout).strip()[-300:]
        raise RuntimeError(f"wrk exited {proc.returncode}: {tail}")
    return parse_wrk(proc.stdout)


def wrk_mixed(base: str, path: str, args: argparse.Namespace) -> Dict[str, Any]:
    """``path`` and ``/hash`` loaded at once by two ``wrk``; the first's figures,
    with the hashes' req/s and p99 beside them."""
    seconds = args.duration

    def command(target: str, conns: int) -> List[str]:
        return [
            "wrk", "-t", "1", "-c", str(conns), "-d", f"{seconds}s",
            "--timeout", "10s", "--latency", base + target,
        ]  # fmt: skip

    procs = [
        subprocess.Popen(
            command(target, conns),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for target, conns in ((path, args.connections), ("/hash", args.hash_connections))
    ]
    outs = [proc.communicate(timeout=seconds + 60)[0] for proc in procs]
    run, hashed = parse_wrk(outs[0]), parse_wrk(outs[1])
    run["hash_rps"] = hashed["rps"]
    run["hash_p99_ms"] = hashed["p99_ms"]
    run["non_2xx"] += hashed["non_2xx"]
    run["socket_errors"] += hashed["socket_errors"]
    return run


# ---------------------------------------------------------------------------
# one server process: every endpoint, warm-up then measured


def measure_server(
    stack: str, system: str, base_url: str, args: argparse.Namespace
) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Any]]:
    server = Server(stack, system, base_url)
    results: Dict[str, Dict[str, Any]] = {}
    info: Dict[str, Any] = {}
    try:
        info = server.wait_ready()
        for endpoint in args.endpoints:
            path = endpoint_path(endpoint, args.queries)
            try:
                server.check(endpoint, path, args.queries)
                wrk(server.base + path, args.warmup, args.connections, args.threads)
                before, cpu0 = server.get("/stats"), server.cpu_seconds()
                if args.mixed:
                    run = wrk_mixed(server.base, path, args)
                else:
                    run = wrk(server.base + path, args.duration, args.connections, args.threads)
                after, cpu1 = server.get("/stats"), server.cpu_seconds()
                # with several workers /stats is one of them: its count says nothing
                run["new_connections"] = (
                    None if stack.endswith("-w2") else after["connects"] - before["connects"]
                )
                run["cpu_ms_per_req"] = (cpu1 - cpu0) / max(run.get("requests", 0), 1) * 1e3
                run["cpu_share"] = (cpu1 - cpu0) / run.get("seconds", args.duration)
                run["pool_after"] = after["pool"]
                run["threads_after"] = after["threads"]
                run["load_average"] = os.getloadavg()[0]
                results[endpoint] = run
            except Exception as exc:  # noqa: BLE001 - one failure must not sink the run
                results[endpoint] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    except Exception as exc:  # noqa: BLE001 - reported in the table
        for endpoint in args.endpoints:
            results.setdefault(endpoint, {"error": f"{type(exc).__name__}: {exc}"[:400]})
    finally:
        # what the server logged while it served (not its shutdown)
        log = server.log_text()
        server.stop()
        server.cleanup()
    info["tracebacks_logged"] = log.count("Traceback (most recent call last)")
    if info["tracebacks_logged"]:
        info["log_tail"] = log.strip().splitlines()[-30:]
        info["exceptions"] = dict(collections.Counter(_EXC_LINE.findall(log)).most_common(5))
    return results, info


# the closing line of a traceback: "package.module.SomeError: message"
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)\b.{0,150})", re.M)


# ---------------------------------------------------------------------------
# summary and table


def _errors(run: Dict[str, Any]) -> int:
    return int(run.get("non_2xx", 0) + run.get("socket_errors", 0))


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians over the rounds; rounds with errors are left out while a clean one exists."""
    ok = [r for r in runs if "rps" in r]
    if not ok:
        return {"error": next((r["error"] for r in runs if "error" in r), "no run")}
    used = [r for r in ok if _errors(r) == 0] or ok

    def med(key: str) -> Optional[float]:
        vals = [r[key] for r in used if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    return {
        "rps": med("rps"),
        "rps_min": min(r["rps"] for r in used),
        "rps_max": max(r["rps"] for r in used),
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "new_connections": med("new_connections"),
        "cpu_ms_per_req": med("cpu_ms_per_req"),
        "cpu_share": med("cpu_share"),
        "hash_rps": med("hash_rps"),
        "hash_p99_ms": med("hash_p99_ms"),
        "errors": sum(_errors(r) for r in ok),
        "rounds": len(used),
        "left_out_rounds": len(ok) - len(used),
        "failed_rounds": len(runs) - len(ok),
    }


def build_summary(runs: Dict[str, Any], config: Dict[str, Any]) -> Dict[str, Any]:
    """Ordered for the table: database, endpoint, server as asked, official first."""
    summary: Dict[str, Any] = {}
    for kind in runs:
        for endpoint in config["endpoints"]:
            for stack in config["stacks"]:
                for system in SYSTEMS:
                    got = runs.get(kind, {}).get(endpoint, {}).get(stack, {}).get(system)
                    if got is not None:
                        summary.setdefault(kind, {}).setdefault(endpoint, {}).setdefault(stack, {})[
                            system
                        ] = summarize(got)
    return summary


def _f(v: Optional[float], fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


SYSTEM_LABELS = {
    "official": "official",
    "anyio": "sqlalchemy_anyio",
    "anyio-off": "sqlalchemy_anyio, placement off",
}


def render(doc: Dict[str, Any]) -> str:
    meta, summary = doc["meta"], doc["summary"]
    env = meta["environment"]
    mixed = meta["config"].get("mixed", False)
    lines = [
        f"HTTP benchmark {meta['date']} commit {meta.get('commit')}: python {env['python']}, "
        f"SQLAlchemy {env['SQLAlchemy']}, FastAPI {env['fastapi']}, uvicorn {env['uvicorn']}, "
        f"hypercorn {env['hypercorn']}, anyio {env['anyio']}, trio {env['trio']}, "
        f"uvloop {env['uvloop']}, psycopg {env['psycopg']}, PyMySQL {env['PyMySQL']}, "
        f"asyncpg {env['asyncpg']}, aiomysql {env['aiomysql']}; {env['cpus']} CPUs; "
        f"load average {meta['load_average_start'][0]:.2f} at start, "
        f"{meta['load_average_end'][0]:.2f} at end; {meta['wall_seconds']:.0f} s",
        f"wrk {meta['config']['connections']} connections, {meta['config']['threads']} thread(s), "
        f"{meta['config']['warmup']:g} s warm-up + {meta['config']['duration']:g} s measured, "
        f"{meta['config']['rounds']} round(s); one server process per (round, database, server, "
        "system); figures are medians over the rounds, req/s with its min-max.",
        "x official: req/s / the official extension's req/s on the same server and loop "
        "(hypercorn/trio: vs uvicorn/asyncio, and in brackets vs hypercorn/asyncio). "
        "new conns: DBAPI connections opened during the measured window. "
        "CPU ms/req: the server process's CPU time per request (all threads); server CPU: "
        "its CPU time / wall time in the window (100% = one core). errors: wrk's non-2xx "
        "responses and socket errors over all rounds; rounds with errors are left out of "
        "the medians while a clean round exists.",
        "",
        "| database | endpoint | server/loop | system | req/s | min-max | x official "
        "| p50 ms | p99 ms | new conns | CPU ms/req | server CPU | errors |"
        + (" /hash req/s | /hash p99 ms |" if mixed else ""),
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        + (" ---: | ---: |" if mixed else ""),
    ]
    if mixed:
        lines[2:2] = [
            f"Mixed load: each endpoint under wrk while a second wrk of "
            f"{meta['config']['hash_connections']} connection(s) loads /hash (scrypt in "
            "anyio.to_thread) at the same time; /hash req/s is the hashing throughput.",
            "",
        ]
    for kind, by_ep in summary.items():
        for endpoint, by_stack in by_ep.items():
            for stack, by_system in by_stack.items():
                for system, s in by_system.items():
                    server = stack.replace("-", "/")
                    label = SYSTEM_LABELS[system]
                    head = f"| {DB_TITLES[kind]} | {endpoint_label(endpoint, meta)} | {server} "
                    if "rps" not in s:
                        lines.append(
                            f"{head}| {label} | failed: {s['error'][:150]} |"
                            + " |" * (10 if mixed else 8)
                        )
                        continue
                    ratio = "1.00" if system == "official" else _ratio(s, by_stack, BASELINE[stack])
                    if stack == "hypercorn-trio" and "hypercorn-asyncio" in by_stack:
                        ratio += f" ({_ratio(s, by_stack, 'hypercorn-asyncio')} vs hypercorn)"
                    lines.append(
                        f"{head}| {label} | {s['rps']:.0f} | {s['rps_min']:.0f}-{s['rps_max']:.0f} "
                        f"| {ratio} | {_f(s['p50_ms'], '{:.1f}')} | {_f(s['p99_ms'], '{:.1f}')} "
                        f"| {_f(s['new_connections'], '{:g}')} "
                        f"| {_f(s['cpu_ms_per_req'], '{:.2f}')} "
                        f"| {_f(s.get('cpu_share'), '{:.0%}')} "
                        f"| {_errors_cell(s)} |"
                        + (
                            f" {_f(s.get('hash_rps'), '{:.0f}')} "
                            f"| {_f(s.get('hash_p99_ms'), '{:.1f}')} |"
                            if mixed
                            else ""
                        )
                    )
    for note in meta.get("notes", []):
        lines.append(f"\nnote: {note}")
    return "\n".join(lines)


def _errors_cell(s: Dict[str, Any]) -> str:
    extra = [
        f"{n} round(s) {what}"
        for n, what in ((s.get("left_out_rounds", 0), "left out"), (s["failed_rounds"], "failed"))
        if n
    ]
    return f"{s['errors']} ({', '.join(extra)})" if extra else str(s["errors"])


def _ratio(s: Dict[str, Any], by_stack: Dict[str, Any], stack: str) -> str:
    base = by_stack.get(stack, {}).get("official", {}).get("rps")
    return f"{s['rps'] / base:.2f}" if base else "-"


def endpoint_label(endpoint: str, meta: Dict[str, Any]) -> str:
    path = endpoint_path(endpoint, meta["config"]["queries"])
    return f"`{path}`"


def environment() -> Dict[str, Any]:
    from importlib import metadata

    info: Dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    for dist in (
        "SQLAlchemy", "fastapi", "starlette", "uvicorn", "httptools", "hypercorn", "h11",
        "anyio", "trio", "uvloop", "greenlet", "psycopg", "PyMySQL", "asyncpg", "aiomysql",
    ):  # fmt: skip
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    try:
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        info["wrk"] = (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, IndexError):
        info["wrk"] = None
    return info


# ---------------------------------------------------------------------------
# the run


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench.sh --http", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="1 round, 1 s warm-up + 3 s measured")
    p.add_argument(
        "--pg-url",
        default=os.environ.get("SQLALCHEMY_ANYIO_PG_URL", DEFAULT_PG_URL),
        help=f"PostgreSQL (default: $SQLALCHEMY_ANYIO_PG_URL or {DEFAULT_PG_URL})",
    )
    p.add_argument(
        "--mysql-url",
        default=os.environ.get("SQLALCHEMY_ANYIO_MYSQL_URL", DEFAULT_MYSQL_URL),
        help=f"MariaDB/MySQL (default: $SQLALCHEMY_ANYIO_MYSQL_URL or {DEFAULT_MYSQL_URL})",
    )
    p.add_argument(
        "--sqlite-url",
        help="SQLite (default: a file in a new temporary directory)",
    )
    p.add_argument("--db", default="postgresql,mysql,sqlite", help="databases (comma list)")
    p.add_argument("--stacks", default=",".join(DEFAULT_STACKS),
                   help=f"servers/loops (comma list of {', '.join(STACKS)})")  # fmt: skip
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                   help=f"comma list of {', '.join(SYSTEMS)}")  # fmt: skip
    p.add_argument("--mixed", action="store_true",
                   help="load /hash (GIL-free work in threads) beside each endpoint")  # fmt: skip
    p.add_argument("--hash-connections", type=int, default=4,
                   help="wrk connections on /hash with --mixed")  # fmt: skip
    p.add_argument("--endpoints", default=",".join(ENDPOINTS), help="db,updates,author")
    p.add_argument("--queries", type=int, default=5, help="rows per /updates request")
    p.add_argument("--rounds", type=int, help="default 3 (--quick: 1)")
    p.add_argument("--warmup", type=int, help="seconds per endpoint, default 2 (--quick: 1)")
    p.add_argument("--duration", type=int, help="measured seconds, default 10 (--quick: 3)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--json", default=os.path.join(HERE, "results", "http.json"))
    p.add_argument("--render", metavar="JSON", help="print the table of a saved run and exit")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.warmup = args.warmup or (1 if args.quick else 2)
    args.duration = args.duration or (3 if args.quick else 10)
    if min(args.warmup, args.duration, args.rounds, args.connections, args.threads) < 1:
        p.error("--warmup, --duration, --rounds, --connections and --threads must be >= 1")
    args.dbs = choices(args.db, ["postgresql", "mysql", "sqlite"], "database")
    args.stack_list = choices(args.stacks, STACKS, "server")
    args.system_list = choices(args.systems, SYSTEMS, "system")
    args.endpoints = choices(args.endpoints, ENDPOINTS, "endpoint")
    return args


def plan(stacks: List[str], systems: List[str]) -> List[Tuple[str, str]]:
    return [
        (stack, system)
        for stack in stacks
        for system in systems
        if not (stack.endswith("-trio") and system == "official")
    ]


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.render:
        with open(args.render) as f:
            doc = json.load(f)
        doc["summary"] = build_summary(doc["runs"], doc["meta"]["config"])
        print(render(doc))
        return 0
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (scripts/bench.sh --http does it)")
    sys.path.insert(0, HERE)
    import http_app

    bases: Dict[str, str] = {}
    notes: List[str] = []
    for kind in args.dbs:
        base = {
            "postgresql": args.pg_url,
            "mysql": args.mysql_url,
            "sqlite": args.sqlite_url
            or f"sqlite:///{tempfile.mkdtemp(prefix='bench_http_')}/http.db",
        }[kind]
        try:
            http_app.setup_database(base)
            bases[kind] = base
        except Exception as exc:  # noqa: BLE001 - reported as the skip reason
            notes.append(f"{kind} skipped: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            print(notes[-1], flush=True)
    if not bases:
        print("no database reachable", file=sys.stderr)
        return 1

    pairs = plan(args.stack_list, args.system_list)
    load_start = os.getloadavg()
    started = time.time()
    print(
        f"HTTP benchmark: {args.rounds} round(s) x {len(bases)} database(s) x {len(pairs)} "
        f"server/system pairs x {len(args.endpoints)} endpoint(s), "
        f"{args.warmup:g} s + {args.duration:g} s each; load average {load_start[0]:.2f}",
        flush=True,
    )
    runs: Dict[str, Dict[str, Dict[str, Dict[str, List[Dict[str, Any]]]]]] = {}
    servers: List[Dict[str, Any]] = []
    try:
        for rnd in range(args.rounds):
            order = pairs if rnd % 2 == 0 else pairs[::-1]
            for kind, base in bases.items():
                for stack, system in order:
                    results, info = measure_server(stack, system, base, args)
                    servers.append(dict(info, db=kind, stack=stack, system=system, round=rnd))
                    shown = []
                    for endpoint, rec in results.items():
                        by = runs.setdefault(kind, {}).setdefault(endpoint, {})
                        by.setdefault(stack, {}).setdefault(system, []).append(rec)
                        shown.append(
                            f"{endpoint} {rec['rps']:.0f}" if "rps" in rec else f"{endpoint} FAILED"
                        )
                    warn = (
                        f"  ({info['tracebacks_logged']} tracebacks in the server log)"
                        if info.get("tracebacks_logged")
                        else ""
                    )
                    print(
                        f"  round {rnd + 1} {kind:<10} {stack:<17} {system:<8} "
                        f"req/s: {', '.join(shown)}{warn}",
                        flush=True,
                    )
                    for endpoint, rec in results.items():
                        if "error" in rec:
                            print(f"    {endpoint}: {rec['error']}", flush=True)
                    for line, n in info.get("exceptions", {}).items():
                        print(f"    {n} x {line}", flush=True)
    finally:
        for base in bases.values():
            try:
                http_app.drop_tables(base)
            except Exception as exc:  # noqa: BLE001 - cleanup only
                print(f"(dropping the tables failed: {exc})", flush=True)

    for s in servers:
        if s.get("tracebacks_logged"):
            top = "; ".join(f"{n} x {line[:120]}" for line, n in s.get("exceptions", {}).items())
            notes.append(
                f"round {s['round'] + 1} {s['db']} {s['stack']} {s['system']}: "
                f"{s['tracebacks_logged']} tracebacks in the server log ({top or 'see the JSON'})"
            )
    doc = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(),
            "config": {
                "rounds": args.rounds,
                "warmup": args.warmup,
                "duration": args.duration,
                "connections": args.connections,
                "threads": args.threads,
                "queries": args.queries,
                "stacks": args.stack_list,
                "endpoints": args.endpoints,
                "mixed": args.mixed,
                "hash_connections": args.hash_connections,
            },
            "databases": {
                k: sa.make_url(v).render_as_string(hide_password=True) for k, v in bases.items()
            },
            "environment": environment(),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "wall_seconds": time.time() - started,
            "notes": notes,
        },
        "runs": runs,
        "servers": servers,
    }
    doc["summary"] = build_summary(runs, doc["meta"]["config"])
    write_json(args.json, doc)
    print()
    print(render(doc))
    print(f"\njson: {os.path.relpath(args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
