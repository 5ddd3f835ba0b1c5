"""Thread placement: a loop whose calls overlap shares one CPU with its
workers, is released when its calls stop overlapping, spreads over CPUs
across processes, and gives the threads it confined by inheritance their
CPUs back.  Off on a free-threaded build, on one CPU, and when asked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from conftest import subprocess_env
from sqlalchemy_anyio import AsyncEngine, create_async_engine
from sqlalchemy_anyio._bridge import _placement

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        not _placement.SUPPORTED or len(os.sched_getaffinity(0)) < 2,
        reason="thread placement needs Linux and at least two CPUs",
    ),
]

ONE = sa.select(sa.literal(1))
KEEPER = "sqlalchemy-anyio-placement"


def _cpus(_: Any = None) -> frozenset[int]:
    return frozenset(os.sched_getaffinity(0))


def _policy(_: Any = None) -> int:
    return os.sched_getscheduler(0)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> Iterator[frozenset[int]]:
    """A short release delay and keeper round; every loop released after.
    Yields the CPUs this thread has before any packing."""
    _placement.release_all()
    monkeypatch.setattr(_placement, "RELEASE_AFTER", 0.3)
    monkeypatch.setattr(_placement, "KEEP_EVERY", 0.02)
    home = _cpus()
    yield home
    _placement.release_all()
    os.sched_setaffinity(0, home)


async def _load(
    engine: AsyncEngine, tasks: int = 4, calls: int = 30, seen: set[frozenset[int]] | None = None
) -> set[frozenset[int]]:
    """``tasks`` tasks making ``calls`` overlapping calls; the CPUs the loop
    and the workers had, as seen at each call."""
    seen = set() if seen is None else seen

    async def task() -> None:
        async with engine.connect() as conn:
            for _ in range(calls):
                seen.add(await conn.run_sync(_cpus))
                seen.add(_cpus())

    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(task)
    return seen


async def _until(condition: Any, what: str, seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds, shield=True):
        while not condition():
            await anyio.sleep(0.01)
    assert condition(), what


async def test_overlapping_calls_pack_loop_and_workers_onto_one_cpu(
    sqlite_url: str, quick: frozenset[int]
) -> None:
    engine = create_async_engine(sqlite_url, pool_size=4, thread_placement="on")
    try:
        seen = await _load(engine)
        cpu = _placement.packed_cpu()
        assert cpu is not None and cpu in quick
        assert _cpus() == {cpu}  # the loop's thread
        assert frozenset({cpu}) in seen
        async with engine.connect() as c1, engine.connect() as c2:
            # a worker that ran a job since the packing is on the loop's CPU
            assert await c1.run_sync(_cpus) == {cpu}
            assert await c2.run_sync(_cpus) == {cpu}
            # and never preempts the thread running (see channel_follow_placement)
            assert await c1.run_sync(_policy) == os.SCHED_BATCH
    finally:
        await engine.dispose()


async def test_released_when_calls_stop_overlapping(sqlite_url: str, quick: frozenset[int]) -> None:
    engine = create_async_engine(sqlite_url, pool_size=4, thread_placement="on")
    try:
        await _load(engine)
        assert _placement.packed_cpu() is not None
        async with engine.connect() as conn:
            # one call at a time from now on: released after RELEASE_AFTER
            for _ in range(100):
                await conn.scalar(ONE)
                if _cpus() == quick:
                    break
                await anyio.sleep(0.01)
            assert _cpus() == quick
            assert _placement.packed_cpu() is None
            assert await conn.run_sync(_cpus) == quick  # the worker too
            assert await conn.run_sync(_policy) == os.SCHED_OTHER
        await _until(
            lambda: not any(t.name == KEEPER for t in threading.enumerate()),
            "the keeper thread ends once no loop is packed",
        )
    finally:
        await engine.dispose()


async def test_auto_packs_for_a_server_database(server_url: str, quick: frozenset[int]) -> None:
    engine = create_async_engine(server_url, pool_size=4)
    try:
        seen = await _load(engine, calls=10)
        cpu = _placement.packed_cpu()
        assert cpu is not None
        assert frozenset({cpu}) in seen
    finally:
        await engine.dispose()


async def _never_packed(url: str, home: frozenset[int], **kw: Any) -> None:
    """Overlapping calls on an engine made with ``kw`` leave every thread on ``home``."""
    engine = create_async_engine(url, pool_size=4, **kw)
    try:
        seen = await _load(engine, calls=10)
        assert seen == {home}
        assert _placement.packed_cpu() is None
    finally:
        await engine.dispose()


async def test_auto_leaves_sqlite_alone(sqlite_url: str, quick: frozenset[int]) -> None:
    # SQLite's own work without the GIL gains from a second CPU (see _placement.placed)
    await _never_packed(sqlite_url, quick)


async def test_one_task_at_a_time_is_never_packed(sqlite_url: str, quick: frozenset[int]) -> None:
    engine = create_async_engine(sqlite_url, thread_placement="on")
    try:
        async with engine.connect() as c1, engine.connect() as c2:
            for _ in range(50):
                await c1.scalar(ONE)
                await c2.scalar(ONE)
                assert _cpus() == quick
        assert _placement.packed_cpu() is None
    finally:
        await engine.dispose()


async def test_off_on_a_free_threaded_build(
    sqlite_url: str, quick: frozenset[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_placement, "gil_enabled", lambda: False)
    await _never_packed(sqlite_url, quick, thread_placement="on")


async def test_off_when_the_thread_has_one_cpu(sqlite_url: str, quick: frozenset[int]) -> None:
    only = min(quick)
    os.sched_setaffinity(0, {only})
    engine = create_async_engine(sqlite_url, pool_size=4, thread_placement="on")
    try:
        await _load(engine)
        assert _placement.packed_cpu() is None
        assert _cpus() == {only}
    finally:
        await engine.dispose()
        os.sched_setaffinity(0, quick)
        _placement.loop.placeable = True  # this thread may be packed again later


async def test_off_when_the_engine_says_so(server_url: str, quick: frozenset[int]) -> None:
    await _never_packed(server_url, quick, thread_placement="off")


def test_thread_placement_option_is_validated(sqlite_url: str) -> None:
    with pytest.raises(
        sa.exc.ArgumentError, match="thread_placement must be 'auto', 'on' or 'off'"
    ):
        create_async_engine(sqlite_url, thread_placement="always")
    with pytest.raises(
        sa.exc.ArgumentError, match="thread_placement must be 'auto', 'on' or 'off'"
    ):
        create_async_engine(sqlite_url, thread_placement=True)


def test_bad_environment_default_is_refused() -> None:
    env = subprocess_env()
    env["SQLALCHEMY_ANYIO_THREAD_PLACEMENT"] = "sometimes"
    proc = subprocess.run(
        [sys.executable, "-c", "import sqlalchemy_anyio"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "SQLALCHEMY_ANYIO_THREAD_PLACEMENT must be 'auto', 'on' or 'off', not 'sometimes'" in (
        proc.stderr
    )


async def test_threads_started_from_a_packed_loop_get_its_cpus_back(
    sqlite_url: str, quick: frozenset[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_async_engine(sqlite_url, pool_size=4, thread_placement="on")
    stop = anyio.Event()
    inherited: list[frozenset[int]] = []
    later: list[frozenset[int]] = []
    # the keeper repairs only once the new thread has seen what it inherited
    seen_inherited = threading.Event()
    repair = _placement._repair
    monkeypatch.setattr(
        _placement, "_repair", lambda *args: seen_inherited.is_set() and repair(*args)
    )

    def thread_body() -> None:
        inherited.append(_cpus())
        seen_inherited.set()
        for _ in range(300):
            if _cpus() == quick:
                break
            threading.Event().wait(0.01)
        later.append(_cpus())

    async def keep_busy() -> None:
        while not stop.is_set():
            await _load(engine, calls=5)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_busy)
            await _until(lambda: _placement.packed_cpu() is not None, "packed under load")
            cpu = _placement.packed_cpu()
            assert _cpus() == {cpu}
            thread = threading.Thread(target=thread_body)
            thread.start()
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import os, time\n"
                    "for _ in range(300):\n"
                    f"    if os.sched_getaffinity(0) == {set(quick)!r}: break\n"
                    "    time.sleep(0.01)\n"
                    "print(sorted(os.sched_getaffinity(0)))",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            await anyio.to_thread.run_sync(thread.join)
            out, _ = await anyio.to_thread.run_sync(child.communicate)
            stop.set()
        assert inherited == [frozenset({cpu})]  # it did start confined ...
        assert later == [quick]  # ... and was given its creator's CPUs back
        assert json.loads(out) == sorted(quick)
    finally:
        await engine.dispose()


SPREAD = textwrap.dedent(
    r"""
    import os, sys
    import anyio
    import sqlalchemy as sa
    from sqlalchemy_anyio import create_async_engine
    from sqlalchemy_anyio._bridge import _placement

    _placement.RELEASE_AFTER = 3600  # stay packed while the parent looks
    _placement.CLAIMS = sys.argv[3]  # apart from other processes of this host

    async def load(url):
        engine = create_async_engine(url, pool_size=4, thread_placement="on")
        async def task():
            async with engine.connect() as conn:
                for _ in range(20):
                    await conn.scalar(sa.select(sa.literal(1)))
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(task)
        await engine.dispose()
        return _placement.packed_cpu()

    cpu = anyio.run(load, sys.argv[1])
    if sys.argv[2] == "fork":
        home = set(_placement._workers_home)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            back = os.sched_getaffinity(0) == home
            mine = anyio.run(load, sys.argv[1])
            os.write(w, f"{int(back)} {mine}\n".encode())
            os._exit(0)
        os.waitpid(pid, 0)
        print(cpu, os.read(r, 100).decode().strip(), flush=True)
    else:
        print(cpu, flush=True)
        sys.stdin.readline()  # keep the claim until the parent has seen both
    """
)


def _claims() -> str:
    """A claim namespace of this test's own: other processes of this host
    using the package (another test run) must not change what it sees."""
    return f"sqlalchemy-anyio-test/{uuid.uuid4().hex}"


def test_two_processes_choose_different_cpus(tmp_path: Any) -> None:
    claims = _claims()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SPREAD, f"sqlite:///{tmp_path / f'{n}.db'}", "stay", claims],
            env=subprocess_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    try:
        cpus = []
        for proc in procs:
            assert proc.stdout is not None
            cpus.append(proc.stdout.readline().strip())
        assert "None" not in cpus
        assert cpus[0] != cpus[1]
    finally:
        for proc in procs:
            proc.communicate("\n", timeout=60)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork()")
@pytest.mark.skipif(
    "libtsan" in os.environ.get("LD_PRELOAD", ""),
    reason="ThreadSanitizer cannot start threads in a child forked from several threads",
)
def test_a_forked_child_chooses_again(tmp_path: Any) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-c",
            SPREAD,
            f"sqlite:///{tmp_path / 'f.db'}",
            "fork",
            _claims(),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    parent, back, child = proc.stdout.split()
    assert parent != "None" and child != "None"
    assert back == "1"  # the forking thread got its CPUs back in the child
    assert child != parent  # the parent keeps its claim; the child takes another CPU
