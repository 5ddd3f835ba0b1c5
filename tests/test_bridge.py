"""The loop <-> worker bridge: Worker, WorkerPool, and the Job/Channel hand-off.

The Worker tests run on whichever implementation is active (the C
accelerator, or the pure-Python one under ``SQLALCHEMY_ANYIO_NO_CEXT=1``);
the Job/Channel tests run on both whenever the C one is built.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from sqlalchemy_anyio._bridge import (
    ACCELERATED,
    Worker,
    WorkerPool,
    _impl,
    _native,
    current_worker,
)

pytestmark = pytest.mark.anyio

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
NO_CEXT = bool(os.environ.get("SQLALCHEMY_ANYIO_NO_CEXT"))
CBRIDGE_SPEC = importlib.util.find_spec("sqlalchemy_anyio._bridge._cbridge")


def _implementations() -> list[Any]:
    params = [pytest.param(_native, id="native")]
    if CBRIDGE_SPEC is not None:
        from sqlalchemy_anyio._bridge import _cbridge

        params.append(pytest.param(_cbridge, id="cbridge"))
    return params


@pytest.fixture(params=_implementations())
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each hand-off implementation in turn (``_native``; ``_cbridge`` if built)."""
    return request.param  # type: ignore[no-any-return]


def _worker_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("sqlalchemy-anyio-worker")}


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    """Fail if the test leaves worker threads behind that it started."""
    before = _worker_threads()
    yield
    assert _worker_threads() <= before


@pytest.fixture
async def worker(no_leaked_threads: None) -> AsyncIterator[Worker]:
    w = Worker()
    try:
        yield w
    finally:
        w.stop()
        await w.wait_stopped()


# -- which implementation -------------------------------------------------------


def test_accelerated_when_the_extension_is_built() -> None:
    if NO_CEXT:
        assert not ACCELERATED
        assert _impl.Job is _native.Job and _impl.Channel is _native.Channel
        return
    if CBRIDGE_SPEC is None:
        if IN_CI:
            pytest.fail("the C bridge was not built (CI=true: required)")
        pytest.skip("the C bridge is not built")
    assert ACCELERATED
    assert _impl.Job.__module__ == "sqlalchemy_anyio._bridge._cbridge"
    assert _impl.LOOP_SPIN > 0


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SQLALCHEMY_ANYIO_")}
    full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=60
    )


def test_no_cext_switches_to_pure_python() -> None:
    code = "from sqlalchemy_anyio._bridge import _impl; print(_impl.ACCELERATED, _impl.LOOP_SPIN)"
    out = _run_python(code, SQLALCHEMY_ANYIO_NO_CEXT="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "0.0"]


def test_bad_spin_settings_are_refused() -> None:
    out = _run_python("import sqlalchemy_anyio", SQLALCHEMY_ANYIO_LOOP_SPIN_US="-5")
    assert out.returncode != 0
    assert "SQLALCHEMY_ANYIO_LOOP_SPIN_US" in out.stderr
    if CBRIDGE_SPEC is not None:
        out = _run_python("import sqlalchemy_anyio", SQLALCHEMY_ANYIO_WORKER_SPIN_US="fast")
        assert out.returncode != 0
        assert "SQLALCHEMY_ANYIO_WORKER_SPIN_US" in out.stderr


# -- Worker.call: values and errors cross intact -----------------------------------


class _Opaque:
    __slots__ = ("__weakref__", "payload")

    def __init__(self, payload: Any) -> None:
        self.payload = payload


@pytest.mark.parametrize(
    "value",
    [None, 0, "text", b"\x00bytes", (1, "a"), {"k": [1, 2]}, _Opaque(3), 2**200, float("inf")],
    ids=["none", "int", "str", "bytes", "tuple", "dict", "object", "bigint", "inf"],
)
async def test_results_of_any_type(worker: Worker, value: Any) -> None:
    assert await worker.call(lambda: value) is value


async def test_large_result_and_arguments(worker: Worker) -> None:
    big = list(range(1_000_000))
    blob = b"x" * (8 * 1024 * 1024)
    assert await worker.call(len, big) == 1_000_000
    result = await worker.call(lambda b, n: b * n, blob, 2)
    assert len(result) == 16 * 1024 * 1024


async def test_args_and_kwargs_reach_the_worker(worker: Worker) -> None:
    def where(a: int, b: int = 0, *, c: int = 0) -> tuple[int, int, int, Any]:
        return a, b, c, current_worker()

    assert await worker.call(where, 1, 2, c=3) == (1, 2, 3, worker)
    assert await worker.call(where, 4) == (4, 0, 0, worker)


def _fail_on_worker(message: str) -> None:
    raise LookupError(message)


async def test_exception_type_message_and_traceback_cross(worker: Worker) -> None:
    with pytest.raises(LookupError, match=r"^no such row$") as info:
        await worker.call(_fail_on_worker, "no such row")
    names = [entry.name for entry in info.traceback]
    # the worker function's frame, and the awaiting test's
    assert "_fail_on_worker" in names
    assert "test_exception_type_message_and_traceback_cross" in names


async def test_exception_chain_and_identity_cross(worker: Worker) -> None:
    raised: list[BaseException] = []

    def chained() -> None:
        try:
            {}["missing"]
        except KeyError as exc:
            error = ValueError("wrapped")
            raised.append(error)
            raise error from exc

    with pytest.raises(ValueError) as info:
        await worker.call(chained)
    assert info.value is raised[0]
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt, GeneratorExit])
async def test_base_exception_on_worker_leaves_worker_and_loop_alive(
    worker: Worker, exc_type: type[BaseException]
) -> None:
    def die() -> None:
        raise exc_type("from the worker")

    with pytest.raises(exc_type):
        await worker.call(die)
    # the worker thread survived, and the loop goes on as usual
    assert await worker.call(threading.get_ident) == worker.ident
    await anyio.sleep(0)
    assert await worker.call(sum, [1, 2, 3]) == 6


async def test_reentrant_call_from_the_worker_runs_inline(worker: Worker) -> None:
    def outer() -> Any:
        return worker.is_current(), current_worker()

    assert await worker.call(outer) == (True, worker)
    assert not worker.is_current()
    assert current_worker() is None


async def test_call_shielded_completes_despite_cancellation(worker: Worker) -> None:
    """A cancelled shielded call runs to its end; then the cancellation propagates."""
    done = threading.Event()

    def slow() -> str:
        time.sleep(0.2)
        done.set()
        return "closed"

    reached = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        await worker.call_shielded(slow)
        reached.append(True)
    assert scope.cancelled_caught and not reached
    assert done.is_set()  # it was waited for, not abandoned
    assert await worker.call(lambda: "next") == "next"  # and the worker carries on


# -- cancellation ----------------------------------------------------------------


async def test_cancel_interrupts_then_waits_for_the_job(worker: Worker) -> None:
    interrupted: list[bool] = []
    finished = threading.Event()
    worker.interrupter = lambda: interrupted.append(finished.is_set())

    def slow() -> None:
        time.sleep(0.5)
        finished.set()

    with anyio.move_on_after(0.05) as scope:
        await worker.call(slow)
    assert scope.cancelled_caught
    assert finished.is_set()  # returned only after the job finished
    assert interrupted == [False]  # asked to stop it while it ran
    assert not worker.broken
    assert await worker.call(str, 5) == "5"


async def test_call_in_a_cancelled_scope_still_runs_once(worker: Worker) -> None:
    ran: list[int] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        await worker.call(ran.append, 1)
    assert scope.cancelled_caught
    assert ran == [1]  # the work is never abandoned halfway, nor run twice
    await worker.call(ran.append, 2)
    assert ran == [1, 2]


# -- volume and concurrency --------------------------------------------------------


async def test_a_thousand_sequential_calls(worker: Worker) -> None:
    total = 0
    for i in range(1000):
        total += await worker.call(int, str(i))
    assert total == sum(range(1000))


async def test_concurrent_calls_from_many_tasks_onto_several_workers(
    no_leaked_threads: None,
) -> None:
    workers = [Worker() for _ in range(4)]
    seen: dict[int, list[int]] = {}

    async def task(n: int) -> None:
        w = workers[n % len(workers)]
        for i in range(25):
            ident, value = await w.call(lambda v: (threading.get_ident(), v), (n, i))
            assert ident == w.ident
            seen.setdefault(n, []).append(value[1])

    async with anyio.create_task_group() as tg:
        for n in range(40):
            tg.start_soon(task, n)
    assert seen == {n: list(range(25)) for n in range(40)}
    for w in workers:
        w.stop()
    for w in workers:
        await w.wait_stopped()


async def test_jobs_run_in_order_one_at_a_time(worker: Worker) -> None:
    running = []
    order: list[int] = []

    def step(i: int) -> None:
        running.append(i)
        assert len(running) == 1
        order.append(i)
        running.pop()

    jobs = [worker.submit(step, i) for i in range(200)]
    await worker.call(lambda: None)
    assert all(job.done for job in jobs)
    for job in jobs:
        job.outcome()
    assert order == list(range(200))


# -- shutdown ------------------------------------------------------------------------


async def test_stop_lets_queued_jobs_finish(no_leaked_threads: None) -> None:
    w = Worker()
    gate = threading.Event()
    w.submit(gate.wait, 5)
    jobs = [w.submit(pow, 2, i) for i in range(50)]
    results: list[int] = []

    async def caller() -> None:
        results.append(await w.call(pow, 3, 2))

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await anyio.sleep(0.01)
        w.stop()
        gate.set()
        await w.wait_stopped()
    assert [job.outcome() for job in jobs] == [2**i for i in range(50)]
    assert results == [9]
    assert not w._thread.is_alive()


async def test_calls_after_stop_fail_instead_of_hanging(no_leaked_threads: None) -> None:
    w = Worker()
    w.stop()
    w.stop()  # stopping twice is harmless
    with pytest.raises(RuntimeError, match="stopped"):
        await w.call(int)
    with pytest.raises(RuntimeError, match="stopped"):
        w.submit(int)
    await w.wait_stopped()


async def test_idle_worker_parks_and_burns_no_cpu(worker: Worker) -> None:
    stat = Path(f"/proc/self/task/{worker._thread.native_id}/stat")
    if not stat.exists():
        pytest.skip("needs Linux /proc to read a thread's CPU time")

    def cpu_ticks() -> int:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    for _ in range(100):
        await worker.call(int)
    await anyio.sleep(0.2)  # far beyond any spin budget: the worker is parked now
    before = cpu_ticks()
    await anyio.sleep(0.5)
    assert cpu_ticks() - before <= 1  # a spinning thread would burn ~50 ticks


async def test_idle_worker_keeps_no_result_alive(worker: Worker) -> None:
    result = await worker.call(_Opaque, "big")
    gone = weakref.ref(result)
    del result
    for _ in range(500):  # the worker lets go of its last job once it parks
        if gone() is None:
            break
        await anyio.sleep(0.01)
    assert gone() is None


# -- WorkerPool ----------------------------------------------------------------------


async def test_pool_lease_release_reuses_workers(no_leaked_threads: None) -> None:
    pool = WorkerPool(limit=2)
    a = await pool.lease()
    b = await pool.lease()
    assert a is not b and pool.size == 2
    pool.release(a)
    assert await pool.lease() is a
    pool.release(a)
    pool.release(b)
    await pool.dispose()
    assert pool.size == 0
    assert not a._thread.is_alive() and not b._thread.is_alive()


async def test_pool_lease_waits_for_a_release(no_leaked_threads: None) -> None:
    pool = WorkerPool(limit=1)
    held = await pool.lease()
    got: list[Worker] = []

    async def waiter() -> None:
        got.append(await pool.lease())

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.05)
        assert got == []
        pool.release(held)
    assert got == [held]
    with pytest.raises(TimeoutError):
        await pool.lease(timeout=0.05)
    pool.release(held)
    await pool.dispose()


async def test_pool_lease_wait_is_cancellable(no_leaked_threads: None) -> None:
    pool = WorkerPool(limit=1)
    held = await pool.lease()
    with anyio.move_on_after(0.05) as scope:
        await pool.lease()
    assert scope.cancelled_caught
    pool.release(held)
    assert await pool.lease() is held  # the cancelled waiter took nothing
    pool.release(held)
    await pool.dispose()


async def test_pool_dispose_retires_leased_workers_on_release(no_leaked_threads: None) -> None:
    pool = WorkerPool(limit=2)
    leased = await pool.lease()
    idle = await pool.lease()
    pool.release(idle)
    await pool.dispose()
    assert not idle._thread.is_alive()
    assert await leased.call(int, "7") == 7  # still usable until released
    pool.release(leased)
    await leased.wait_stopped()
    fresh = await pool.lease()
    assert fresh is not leased and fresh is not idle
    pool.release(fresh)
    await pool.dispose()
    assert pool.size == 0


async def test_broken_worker_is_not_reused(no_leaked_threads: None) -> None:
    pool = WorkerPool(limit=1)
    w = await pool.lease()
    w.broken = True
    pool.release(w)
    await w.wait_stopped()
    other = await pool.lease()
    assert other is not w
    pool.release(other)
    await pool.dispose()


# -- when the loop may spin ------------------------------------------------------------


async def test_loop_reports_ready_work(anyio_backend: Any) -> None:
    _name, options = anyio_backend
    if options.get("use_uvloop"):
        # Its run queue cannot be seen: only our own calls in flight count.
        assert _impl.loop_is_idle()
        return
    assert _impl.loop_is_idle()
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep, 0)  # now another task is ready to run
        assert not _impl.loop_is_idle()
    assert _impl.loop_is_idle()


# -- Job and Channel, each implementation ------------------------------------------------


def test_job_runs_and_keeps_its_outcome(impl: ModuleType) -> None:
    job = impl.Job(divmod, (7, 2))
    assert not job.done
    with pytest.raises(RuntimeError, match="not finished"):
        job.outcome()
    job.run()
    assert job.done
    assert job.outcome() == (3, 1)
    assert job.outcome() == (3, 1)
    job = impl.Job(dict, (), {"a": 1})
    job.run()
    assert job.outcome() == {"a": 1}


def test_job_error_is_reraised_each_time(impl: ModuleType) -> None:
    job = impl.Job(int, ("nope",))
    job.run()
    for _ in range(2):
        with pytest.raises(ValueError, match="nope"):
            job.outcome()


def test_job_without_callable_is_a_signal(impl: ModuleType) -> None:
    job = impl.Job()
    job.set("value")
    assert job.done and job.outcome() == "value"
    with pytest.raises(RuntimeError, match="already set"):
        job.set("again")
    assert job.outcome() == "value"
    failed = impl.Job()
    failed.set(error=KeyError("k"))
    with pytest.raises(KeyError):
        failed.outcome()
    empty = impl.Job()
    empty.run()
    with pytest.raises(RuntimeError, match="nothing to run"):
        empty.outcome()


def test_waker_is_called_once_on_completion(impl: ModuleType) -> None:
    job = impl.Job()
    calls: list[int] = []
    assert job.set_waker(lambda: calls.append(threading.get_ident()))
    assert job.set_waker(lambda: calls.append(-1))  # replaces the first
    t = threading.Thread(target=job.set, args=(1,))
    t.start()
    t.join()
    assert calls == [-1]
    assert not job.set_waker(lambda: calls.append(-2))  # already done
    assert not job.clear_waker()
    assert calls == [-1]


def test_cleared_waker_is_never_called(impl: ModuleType) -> None:
    job = impl.Job()
    calls: list[int] = []
    assert job.set_waker(lambda: calls.append(1))
    assert job.clear_waker()
    job.set(None)
    assert calls == []


def test_failing_waker_does_not_lose_the_outcome(
    impl: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    job = impl.Job(int, ("5",))

    def bad_waker() -> None:
        raise RuntimeError("waker failed")

    job.set_waker(bad_waker)
    job.run()  # reported, not raised: the worker must survive its waker
    assert job.done and job.outcome() == 5
    assert len(reported) == 1
    assert isinstance(reported[0].exc_value, RuntimeError)
    assert reported[0].object is bad_waker


def test_spin_wait(impl: ModuleType) -> None:
    job = impl.Job()
    assert job.spin_wait(0.0) is False
    job.set(1)
    assert job.spin_wait(0.0) is True
    if impl is _native:
        return  # the pure-Python bridge never spins (it would hold the GIL)
    job = impl.Job()
    t = threading.Thread(target=lambda: (time.sleep(0.01), job.set(2)))
    t.start()
    assert job.spin_wait(10.0) is True  # woken by the other thread, GIL released meanwhile
    t.join()
    assert job.outcome() == 2


def test_channel_serves_jobs_in_order_until_none(impl: ModuleType) -> None:
    channel = impl.Channel()
    order: list[int] = []
    jobs = [impl.Job(order.append, (i,)) for i in range(100)]
    for job in jobs[:50]:
        channel.put(job)
    thread = threading.Thread(target=channel.serve)
    thread.start()
    for job in jobs[50:]:
        channel.put(job)
    channel.put(None)
    thread.join(10)
    assert not thread.is_alive()
    assert order == list(range(100))
    assert all(job.done for job in jobs)
    with pytest.raises(RuntimeError, match="stopped"):
        channel.put(impl.Job(int))
    channel.put(None)


def test_channel_get_waits_for_a_job(impl: ModuleType) -> None:
    channel = impl.Channel()
    job = impl.Job(int)
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.extend([channel.get(), channel.get()]))
    thread.start()
    channel.put(job)
    channel.put(None)
    thread.join(10)
    assert got == [job, None]


def test_serve_wakes_a_waiting_loop_from_the_worker(impl: ModuleType) -> None:
    channel = impl.Channel()
    thread = threading.Thread(target=channel.serve)
    thread.start()
    woken = threading.Event()
    job = impl.Job(time.sleep, (0.05,))
    assert job.set_waker(woken.set)
    channel.put(job)
    assert woken.wait(10)
    assert job.done
    quick = [impl.Job(abs, (-i,)) for i in range(100)]
    for q in quick:  # nobody waits on these: published all the same
        channel.put(q)
    channel.put(None)
    thread.join(10)
    assert [q.outcome() for q in quick] == list(range(100))


def test_job_and_channel_hold_no_leaked_references(impl: ModuleType) -> None:
    arg, kwarg, value, waker = object(), object(), object(), (lambda: None)
    error = ValueError("e")
    refs = [sys.getrefcount(o) for o in (arg, kwarg, value, waker, error)]

    def fn(a: object, k: object = None) -> object:
        return value

    def fail(a: object) -> None:
        raise error

    channel = impl.Channel()
    thread = threading.Thread(target=channel.serve)
    thread.start()
    for _ in range(2000):
        ok = impl.Job(fn, (arg,), {"k": kwarg})
        bad = impl.Job(fail, (arg,))
        ok.set_waker(waker)
        channel.put(ok)
        channel.put(bad)
        signal = impl.Job()
        signal.set_waker(waker)
        signal.set(value)
        assert signal.outcome() is value
        del ok, bad, signal
    channel.put(None)
    thread.join(10)
    del channel
    error.__traceback__ = None
    gc.collect()
    assert [sys.getrefcount(o) for o in (arg, kwarg, value, waker, error)] == refs


def test_jobs_in_reference_cycles_are_collected(impl: ModuleType) -> None:
    class Holder:
        job: Any

    holder = Holder()
    holder.job = impl.Job(print, (holder,))
    gone = weakref.ref(holder)
    done = impl.Job()
    done.set(holder)
    holder.done = done  # type: ignore[attr-defined]
    channel = impl.Channel()
    channel.put(impl.Job(print, (holder, channel)))
    del holder, done, channel
    gc.collect()
    assert gone() is None


# -- Gate: how many workers run jobs at once -------------------------------------


class _Concurrency:
    """Counts callables running at once (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def job(self, record: list[int], i: int, hold: float = 0.0005) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(hold)  # releases the GIL, as a driver waiting on the server does
        record.append(i)
        with self.lock:
            self.now -= 1


def _serve(channels: list[Any]) -> list[threading.Thread]:
    threads = [threading.Thread(target=ch.serve) for ch in channels]
    for t in threads:
        t.start()
    return threads


def _stop(channels: list[Any], threads: list[threading.Thread]) -> None:
    for ch in channels:
        ch.put(None)
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("limit", [1, 2])
def test_gate_bounds_jobs_running_at_once(impl: ModuleType, limit: int) -> None:
    gate = impl.Gate(limit, 5.0)
    conc = _Concurrency()
    channels = [impl.Channel(gate) for _ in range(5)]
    records: list[list[int]] = [[] for _ in channels]
    threads = _serve(channels)
    jobs = []
    for i in range(40):
        for ch, rec in zip(channels, records, strict=True):
            job = impl.Job(conc.job, (rec, i))
            jobs.append(job)
            ch.put(job)
    _stop(channels, threads)
    assert all(job.done for job in jobs)
    assert records == [list(range(40))] * 5  # every job ran, each channel in order
    assert conc.peak == limit
    assert gate.active == 0


def test_open_gate_does_not_bound(impl: ModuleType) -> None:
    gate = impl.Gate(0)
    channels = [impl.Channel(gate) for _ in range(4)]
    threads = _serve(channels)
    barrier = threading.Barrier(4, timeout=10)
    jobs = [impl.Job(barrier.wait) for _ in channels]  # completes only if all 4 run at once
    for ch, job in zip(channels, jobs, strict=True):
        ch.put(job)
    _stop(channels, threads)
    assert sorted(job.outcome() for job in jobs) == [0, 1, 2, 3]


def test_slow_job_gives_up_its_place(impl: ModuleType) -> None:
    """A job blocked longer than `expire` does not hold up the next channel."""
    gate = impl.Gate(1, 0.02)
    slow_ch, quick_ch = impl.Channel(gate), impl.Channel(gate)
    threads = _serve([slow_ch, quick_ch])
    release = threading.Event()
    slow = impl.Job(release.wait, (10.0,))
    slow_ch.put(slow)
    time.sleep(0.05)  # the slow job holds the only place
    quick = impl.Job(time.monotonic)
    started = time.monotonic()
    quick_ch.put(quick)
    woken = threading.Event()
    if quick.set_waker(woken.set):
        assert woken.wait(5), "the quick job never got a place"
    assert not slow.done
    assert quick.outcome() - started < 2.0
    release.set()
    _stop([slow_ch, quick_ch], threads)
    assert slow.outcome() is True


def test_gated_channel_in_line_still_stops(impl: ModuleType) -> None:
    gate = impl.Gate(1, 5.0)
    busy_ch, waiting_ch = impl.Channel(gate), impl.Channel(gate)
    threads = _serve([busy_ch, waiting_ch])
    release = threading.Event()
    busy_ch.put(impl.Job(release.wait, (10.0,)))
    time.sleep(0.02)
    queued = impl.Job(int, ("7",))
    waiting_ch.put(queued)
    waiting_ch.put(None)
    time.sleep(0.05)
    assert not queued.done  # in line behind the busy channel
    release.set()
    _stop([busy_ch], threads[:1])
    threads[1].join(10)
    assert not threads[1].is_alive()
    assert queued.outcome() == 7
    assert gate.active == 0


def test_gate_settings_are_checked(impl: ModuleType) -> None:
    with pytest.raises(ValueError):
        impl.Gate(-1)
    with pytest.raises(ValueError):
        impl.Gate(1, 0.0)
