"""A child made by ``os.fork()`` after the engine was used (gunicorn
``--preload``) gets working connections of its own and leaves the parent's
alone.

Each case runs a small program in a fresh interpreter: it uses an engine,
forks, and in the child (optionally after SQLAlchemy's documented post-fork
step, ``await engine.dispose(close=False)``) runs queries; the parent
bounds the child's run, then checks that its own pooled connections are the
same server sessions as before and still work.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from conftest import subprocess_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no os.fork()")

PROGRAM = textwrap.dedent(
    r"""
    import json, os, sys, threading, time, traceback
    import warnings

    import anyio
    import sqlalchemy as sa

    from sqlalchemy_anyio import create_async_engine

    warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: on purpose
    url, backend, options, mode = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    CHILD_TIMEOUT = 60.0
    engine = create_async_engine(url, pool_size=3, max_overflow=2)
    if url.startswith("postgresql"):
        SESSION_ID = "SELECT pg_backend_pid()"
    elif url.startswith("mysql"):
        SESSION_ID = "SELECT CONNECTION_ID()"
    else:
        SESSION_ID = "SELECT 1"


    def run(fn):
        return anyio.run(fn, backend=backend, backend_options=options)


    async def hold_three():
        # Three connections at once: the pool keeps three idle workers after.
        async def one(ids):
            async with engine.connect() as conn:
                ids.append((await conn.execute(sa.text(SESSION_ID))).scalar())
                await anyio.sleep(0.05)
        ids = []
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one, ids)
        return sorted(ids)


    async def child_main():
        # The parent's idle workers are not this process's.
        assert engine.pool.checkedin() == 0, engine.pool.status()
        if mode != "no-dispose":
            await engine.dispose(close=False)
        results = []

        async def query(n):
            async with engine.begin() as conn:
                results.append((await conn.execute(sa.text(f"SELECT {n} + 1"))).scalar())

        with anyio.fail_after(CHILD_TIMEOUT / 2):
            async with anyio.create_task_group() as tg:
                for n in range(5):
                    tg.start_soon(query, n)
            await query(41)
        assert sorted(results) == [1, 2, 3, 4, 5, 42], results
        await engine.dispose()


    busy_stop = threading.Event()


    def busy():
        # Another engine's workers at work while the parent forks: their
        # locks may be held at the instant of the fork.
        other = create_async_engine(url, pool_size=2, max_overflow=0)

        async def loop():
            async def hammer():
                while not busy_stop.is_set():
                    async with other.connect() as conn:
                        await conn.execute(sa.text("SELECT 1"))
            async with anyio.create_task_group() as tg:
                for _ in range(2):
                    tg.start_soon(hammer)
            await other.dispose()
        run(loop)


    before = run(hold_three)
    busy_thread = None
    if mode == "busy":
        busy_thread = threading.Thread(target=busy)
        busy_thread.start()
        time.sleep(0.2)
    children = 3 if mode == "busy" else 1
    outcome = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                run(child_main)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + CHILD_TIMEOUT
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                outcome.append(os.waitstatus_to_exitcode(status))
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                outcome.append("hung")
                break
            time.sleep(0.02)
    busy_stop.set()
    if busy_thread is not None:
        busy_thread.join()
    after = run(hold_three)
    run(engine.dispose)
    print(json.dumps({"children": outcome, "before": before, "after": after}))
    """
)


def _run(url: str, anyio_backend: Any, mode: str) -> dict[str, Any]:
    name, options = anyio_backend
    env = subprocess_env()
    if mode == "busy":
        env["SQLALCHEMY_ANYIO_ACTIVE_WORKERS"] = "2"  # the gate in play too
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM, url, name, json.dumps(options), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    report: dict[str, Any] = json.loads(lines[-1])
    assert report["children"] == [0] * len(report["children"]), proc.stdout + proc.stderr
    return report


@pytest.mark.parametrize("mode", ["dispose", "no-dispose", "busy"])
def test_forked_child_gets_its_own_connections(db_url: str, anyio_backend: Any, mode: str) -> None:
    report = _run(db_url, anyio_backend, mode)
    assert len(report["children"]) == (3 if mode == "busy" else 1)
    # The parent's connections were neither closed nor used by the child:
    # the same server sessions serve the parent afterwards.
    assert report["after"] == report["before"]
