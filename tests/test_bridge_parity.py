"""The two hand-off implementations behave alike: the C ``_cbridge`` and its
pure-Python twin ``_native`` are both imported here, in one process, and
every test runs on each.

A job has four operations that may come in any order, from any thread:
``set`` (the outcome is published by somebody else: a pool hands a worker
to a waiter), ``run`` (the worker runs the call), ``wait`` (the loop
registers its waker) and ``cancel`` (the loop withdraws it).  For every
ordering of every subset of them, both implementations must give the same
results as the model below, and never raise inside ``run()`` (that would
kill the worker thread serving the channel).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import threading
from types import ModuleType
from typing import Any, Callable

import pytest

from sqlalchemy_anyio._bridge import _native

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
OPERATIONS = ("set", "run", "wait", "cancel")
ORDERINGS = [
    order
    for size in range(1, len(OPERATIONS) + 1)
    for order in itertools.permutations(OPERATIONS, size)
]


def _implementations() -> list[Any]:
    params = [pytest.param(_native, id="native")]
    if importlib.util.find_spec("sqlalchemy_anyio._bridge._cbridge") is not None:
        from sqlalchemy_anyio._bridge import _cbridge

        params.append(pytest.param(_cbridge, id="cbridge"))
    elif IN_CI:
        params.append(pytest.param(None, id="cbridge"))
    return params


@pytest.fixture(params=_implementations())
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each implementation in turn; under CI the C one must be built."""
    if request.param is None:
        pytest.fail("the C bridge was not built (CI=true: required)")
    return request.param  # type: ignore[no-any-return]


class _Call:
    """The job's callable: counts its calls, returns or raises as told."""

    def __init__(self, fails: bool) -> None:
        self.fails = fails
        self.calls = 0

    def __call__(self, arg: str) -> str:
        self.calls += 1
        if self.fails:
            raise KeyError(arg)
        return f"ran {arg}"


def _result(fn: Callable[[], Any]) -> Any:
    """What an operation gave: its return value, or its exception's type and text."""
    try:
        return ("returned", fn())
    except Exception as exc:  # noqa: BLE001 - compared, not hidden
        return ("raised", type(exc).__name__, str(exc))


def _expected(order: tuple[str, ...], fails: bool) -> dict[str, Any]:
    """The model: the first of set/run publishes; a registered waker is called
    exactly once, on publication, unless withdrawn before it."""
    done = registered = False
    outcome: Any = None
    calls = 0
    steps = []
    for op in order:
        if op == "set":
            if done:
                steps.append(("raised", "RuntimeError", "job outcome already set"))
            else:
                done, outcome = True, ("returned", "set by another")
                steps.append(("returned", None))
        elif op == "run":
            if not done:
                done = True
                outcome = ("raised", "KeyError", "'job'") if fails else ("returned", "ran job")
            steps.append(("returned", None))  # run() never raises
        elif op == "wait":
            steps.append(("returned", not done))
            registered = not done
        else:  # cancel
            steps.append(("returned", not done))
            registered = False
        if done and registered:
            calls, registered = calls + 1, False
        steps.append(done)
    return {
        "steps": steps,
        "outcome": outcome if done else ("raised", "RuntimeError", "job is not finished"),
        "waker calls": calls,
        "fn calls": 1 if "run" in order else 0,
    }


def _observed(impl: ModuleType, order: tuple[str, ...], fails: bool) -> dict[str, Any]:
    fn = _Call(fails)
    job = impl.Job(fn, ("job",))
    woken: list[int] = []
    actions: dict[str, Callable[[], Any]] = {
        "set": lambda: job.set("set by another"),
        "run": job.run,
        "wait": lambda: job.set_waker(lambda: woken.append(1)),
        "cancel": job.clear_waker,
    }
    steps = []
    for op in order:
        steps.append(_result(actions[op]))
        steps.append(job.done)
    return {
        "steps": steps,
        "outcome": _result(job.outcome),
        "waker calls": len(woken),
        "fn calls": fn.calls,
    }


@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
@pytest.mark.parametrize("order", ORDERINGS, ids="-".join)
def test_every_ordering_matches_the_model(
    impl: ModuleType, order: tuple[str, ...], fails: bool
) -> None:
    assert _observed(impl, order, fails) == _expected(order, fails)


def test_orderings_are_all_there() -> None:
    assert len(ORDERINGS) == 4 + 12 + 24 + 24


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((print, None, None), "Job args must be a tuple"),
        ((print, [1]), "Job args must be a tuple"),
        ((print, (), []), "Job kwargs must be a dict or None"),
        ((print, (), ()), "Job kwargs must be a dict or None"),
        ((42,), "Job fn must be callable or None"),
        (("print", ()), "Job fn must be callable or None"),
        ((print, (), {}, "extra"), None),
    ],
    ids=["args-none", "args-list", "kwargs-list", "kwargs-tuple", "fn-int", "fn-str", "too-many"],
)
def test_bad_job_arguments_fail_at_construction(
    impl: ModuleType, args: tuple[Any, ...], message: str | None
) -> None:
    with pytest.raises(TypeError) as info:
        impl.Job(*args)
    if message is not None:
        assert str(info.value) == message


def test_good_job_arguments_are_accepted_alike(impl: ModuleType) -> None:
    class Args(tuple):  # type: ignore[type-arg]
        pass

    for job, expected in [
        (impl.Job(), None),
        (impl.Job(None), None),
        (impl.Job(dict, (), {}), {}),
        (impl.Job(dict, (), None), {}),
        (impl.Job(dict, kwargs={"a": 1}), {"a": 1}),
        (impl.Job(max, Args((1, 3))), 3),
        (impl.Job(fn=abs, args=(-2,)), 2),
    ]:
        if expected is None:
            job.set(None)
        else:
            job.run()
        assert job.outcome() == expected


def test_set_refuses_a_non_exception_error(impl: ModuleType) -> None:
    job = impl.Job()
    with pytest.raises(TypeError, match="error must be an exception instance or None"):
        job.set(error="boom")
    assert not job.done
    job.set(error=ValueError("v"))
    with pytest.raises(ValueError, match="v"):
        job.outcome()


def test_set_while_the_worker_runs_it_keeps_the_worker(impl: ModuleType) -> None:
    """A job set() elsewhere while it runs on a serving worker: set()'s outcome
    stands, the run's is dropped, and the worker goes on serving."""
    channel = impl.Channel()
    thread = threading.Thread(target=channel.serve)
    thread.start()
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(10)
        return "ran"

    try:
        job = impl.Job(slow)
        channel.put(job)
        assert started.wait(10)
        job.set("set first")
        release.set()
        after = impl.Job(int, ("7",))
        channel.put(after)
        woke = threading.Event()
        if after.set_waker(woke.set):
            assert woke.wait(10), "the worker stopped serving"
        assert after.outcome() == 7
        assert job.outcome() == "set first"
        assert thread.is_alive()
    finally:
        release.set()
        channel.put(None)
        thread.join(10)
    assert not thread.is_alive()


def _race_once(impl: ModuleType, channel: Any, fails: bool) -> None:
    fn = _Call(fails)
    job = impl.Job(fn, ("job",))
    woken: list[int] = []
    results: dict[str, Any] = {}
    barrier = threading.Barrier(3)

    def setter() -> None:
        barrier.wait()
        results["set"] = _result(lambda: job.set("set by another"))

    def loop_side() -> None:
        barrier.wait()
        results["wait"] = job.set_waker(lambda: woken.append(1))
        results["cancel"] = job.clear_waker()

    threads = [threading.Thread(target=setter), threading.Thread(target=loop_side)]
    for t in threads:
        t.start()
    barrier.wait()
    channel.put(job)
    for t in threads:
        t.join(10)
    # Jobs run in order: once the next one ran, this one has.
    done = threading.Event()
    channel.put(impl.Job(done.set))
    assert done.wait(10), "the worker stopped serving"
    assert fn.calls == 1
    assert job.done
    outcome = _result(job.outcome)
    if results["set"] == ("returned", None):
        assert outcome == ("returned", "set by another")
    else:
        assert results["set"] == ("raised", "RuntimeError", "job outcome already set")
        assert outcome == (("raised", "KeyError", "'job'") if fails else ("returned", "ran job"))
    # Woken once iff the waker was registered and not withdrawn in time.
    registered, withdrawn = results["wait"] is True, results["cancel"] is True
    assert len(woken) == (1 if registered and not withdrawn else 0)


@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
def test_racing_threads_keep_the_invariants(impl: ModuleType, fails: bool) -> None:
    """set, run (on a serving worker) and wait-then-cancel (the loop's side)
    race from three threads; each round must end consistently, and the
    worker must go on serving."""
    channel = impl.Channel()
    worker = threading.Thread(target=channel.serve)
    worker.start()
    try:
        for _ in range(300):
            _race_once(impl, channel, fails)
            assert worker.is_alive()
    finally:
        channel.put(None)
        worker.join(10)
    assert not worker.is_alive()


def test_reset_after_fork_alike(impl: ModuleType) -> None:
    """What a forked child does to the parent's channels and gate: a channel
    takes no more jobs (its worker thread is gone), the gate starts empty."""
    gate = impl.Gate(1, 0.002)
    channel = impl.Channel(gate)
    channel.put(impl.Job(int))  # takes the gate's one place
    assert gate.active == 1
    gate.reset_after_fork()
    channel.reset_after_fork()
    impl.reset_after_fork()
    assert gate.active == 0
    with pytest.raises(RuntimeError, match="the worker is stopped"):
        channel.put(impl.Job(int))
    channel.put(None)  # stopping it is still fine
    other = impl.Channel(gate)
    job = impl.Job(abs, (-3,))
    other.put(job)
    other.put(None)
    other.serve()  # the renewed gate admits the child's own channels
    assert job.outcome() == 3 and gate.active == 0


# -- per-engine settings: a channel's worker spin, a gate's expiry


@pytest.mark.parametrize("spin", [None, 0, 0.00025, 1, 1e-7])
def test_worker_spin_reads_back_alike(impl: ModuleType, spin: Any) -> None:
    channel = impl.Channel(impl.Gate(2, 0.003), False, spin)
    expected = impl.WORKER_SPIN_NS / 1e9 if spin is None else int(spin * 1e9) / 1e9
    assert channel.worker_spin == expected
    assert impl.Channel(worker_spin=spin).worker_spin == expected
    assert impl.Channel().worker_spin == impl.WORKER_SPIN_NS / 1e9


@pytest.mark.parametrize(
    ("spin", "error"),
    [
        (-1, ValueError),
        (1.5, ValueError),
        (float("nan"), ValueError),
        ("x", TypeError),
        ([], TypeError),
    ],
)
def test_bad_worker_spin_fails_alike(impl: ModuleType, spin: Any, error: type) -> None:
    with pytest.raises(error) as info:
        impl.Channel(None, False, spin)
    if error is ValueError:
        assert str(info.value) == "Channel needs 0 <= worker_spin <= 1 (seconds)"
    else:
        assert str(info.value) == f"must be real number, not {type(spin).__name__}"


def test_default_worker_spin_is_the_same(impl: ModuleType) -> None:
    assert impl.WORKER_SPIN_NS == _native.WORKER_SPIN_NS


@pytest.mark.parametrize("expire", [0.002, 0.0005, 0.003, 1.0, 1e-6])
def test_gate_expire_reads_back_alike(impl: ModuleType, expire: float) -> None:
    assert impl.Gate(1, expire).expire == int(expire * 1e9) / 1e9
    assert impl.Gate().expire == 0.002
