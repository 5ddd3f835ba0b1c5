"""Thread placement: which CPUs the event loop's thread and the workers use.

Under the GIL one thread runs Python at a time, and the GIL changes hands
between a worker and the loop several times per statement (each time the
driver waits for the server).  When those threads run on different CPUs,
every hand-off wakes a thread on the other CPU that then fights for the
GIL: measured on PostgreSQL under a web-shaped load, 44-69 context switches
and 855-1014 µs of CPU per request, against about 4 and 430 µs with all of
them on one CPU (docs/bridge.md).  A single task is the other way round:
there two CPUs let each side spin for the other, and one CPU is slower.

So a loop whose calls to workers overlap (concurrent load) is *packed*: its
thread and the workers of engines with ``thread_placement="auto"`` are moved
onto one CPU of the loop's own, chosen so that several processes on one host
spread over the CPUs (:func:`_claim`).  ``"auto"`` leaves SQLite engines
out (see :func:`placed`).  Once its calls stop overlapping for
``RELEASE_AFTER`` seconds (one task at a time, or no calls at all), it is
*released*: back on the CPUs it had, and so are the workers.  Never on a
free-threaded build, where the threads are meant to run in parallel, and
never where the thread may use only one CPU anyway.

Threads inherit the CPUs of the thread that starts them, so a thread or a
process the application starts from a packed loop (``anyio.to_thread``, an
executor, a subprocess) would be confined too.  A keeper thread, alive while
a loop is packed, gives such newcomers the loop's own CPUs back within
``KEEP_EVERY`` seconds, and releases the loops that went quiet.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any, Callable, Optional

from .. import _fork
from . import _impl

#: Seconds without overlapping calls after which a packed loop is released.
RELEASE_AFTER = 1.0
#: Seconds between the keeper's rounds while a loop is packed.
KEEP_EVERY = 0.25
#: Where processes claim their CPUs (see :func:`_claim`); tests use their own.
CLAIMS = "sqlalchemy-anyio/cpu"

_clock = time.monotonic
_MODES = ("auto", "on", "off")

#: Whether this platform can place threads at all (Linux's sched_setaffinity).
SUPPORTED = sys.platform.startswith("linux") and hasattr(os, "sched_setaffinity")


def parse_mode(value: Any, name: str = "thread_placement") -> str:
    """``"auto"``, ``"on"`` or ``"off"``; anything else is refused."""
    mode = value.strip().lower() if isinstance(value, str) else None
    if mode in _MODES:
        return mode
    raise ValueError(
        f"{name} must be 'auto', 'on' or 'off', not {value!r}: 'on' packs the event "
        "loop's thread and the engine's workers onto one CPU under concurrent load (GIL "
        "builds only), 'auto' does so for databases on a server but not for SQLite, "
        "'off' leaves every thread where the operating system puts it."
    )


def placed(mode: str, local: bool) -> bool:
    """Whether an engine's workers follow the placement under ``mode``.

    ``"auto"`` leaves out a database that runs in this process (SQLite): its
    work without the GIL (SQLite's own C code, the kernel's part of a commit)
    gains from a second CPU, and measured under a web-shaped write load it
    lost 12% packed (reads gained 23%; docs/bridge.md).
    """
    return mode == "on" or (mode == "auto" and not local)


#: The default of the ``thread_placement=`` engine option.
DEFAULT = parse_mode(
    os.environ.get("SQLALCHEMY_ANYIO_THREAD_PLACEMENT", "").strip() or "auto",
    "SQLALCHEMY_ANYIO_THREAD_PLACEMENT",
)


def gil_enabled() -> bool:
    """False on a free-threaded build running without the GIL."""
    probe: Optional[Callable[[], bool]] = getattr(sys, "_is_gil_enabled", None)
    return True if probe is None else probe()


class Loop(threading.local):
    """What one event loop's thread knows of its own calls to workers."""

    #: Calls to workers this thread awaits right now.
    n = 0
    #: Its record while packed (shared with the keeper), else None.
    packed: Optional[_Packed] = None
    #: False once packing was found impossible for this thread (one CPU).
    placeable = True


class _Packed:
    """A packed loop thread, as the keeper sees it."""

    __slots__ = ("busy_at", "home", "released", "tid")

    def __init__(self, tid: int, home: frozenset[int]) -> None:
        self.tid = tid
        #: The CPUs the thread had before, and gets back on release.
        self.home = home
        #: When its calls last overlapped (written by the loop, read by the keeper).
        self.busy_at = _clock()
        #: Set (under the lock) by whoever released it.
        self.released = False


#: The per-thread state, one per event loop thread.
loop = Loop()

_lock = threading.Lock()
#: Packed loops by thread id.
_packed: dict[int, _Packed] = {}
#: This process's CPU and the socket that claims it (None: none claimed yet).
_claimed: Optional[tuple[int, Optional[socket.socket]]] = None
#: Where placed workers go back to when no loop is packed.
_workers_home: frozenset[int] = frozenset()
_keeper: Optional[threading.Thread] = None
#: Threads of ours (workers), never handed back: they follow the placement.
ours: set[int] = set()
#: Threads and child processes the keeper has looked at already.
_seen_threads: set[str] = set()
_seen_children: set[str] = set()


def crowded(state: Loop) -> None:
    """A call to a placed worker started while another is under way."""
    packed = state.packed
    if packed is not None and not packed.released:
        packed.busy_at = _clock()
    elif state.placeable and gil_enabled():
        _pack(state)


def _pack(state: Loop) -> None:
    global _claimed, _workers_home
    home = frozenset(os.sched_getaffinity(0))
    if len(home) < 2:
        state.placeable = False
        return
    tid = threading.get_native_id()
    with _lock:
        if _claimed is None:
            _claimed = _claim(sorted(home))
        cpu = _claimed[0]
        if cpu not in home:  # this thread may not use the process's CPU
            state.placeable = False
            return
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            state.placeable = False
            return
        state.packed = _packed[tid] = _Packed(tid, home)
        if len(_packed) == 1:
            _workers_home = home
            _impl.set_placement((cpu,), True)
        _start_keeper()


def _release_locked(record: _Packed) -> None:
    """Give a packed loop thread its CPUs back (from any thread); lock held."""
    record.released = True
    _packed.pop(record.tid, None)
    try:
        os.sched_setaffinity(record.tid, record.home)
    except OSError:  # the thread has ended
        pass
    if not _packed:
        _impl.set_placement(_workers_home, False)


def release_all() -> None:
    """Release every packed loop now (tests; the keeper does it after
    ``RELEASE_AFTER`` seconds)."""
    with _lock:
        for record in list(_packed.values()):
            _release_locked(record)


def packed_cpu() -> Optional[int]:
    """The CPU loops are packed onto right now, if any."""
    with _lock:
        return _claimed[0] if _packed and _claimed is not None else None


# -- choosing a CPU -------------------------------------------------------------


def _claim(cpus: list[int]) -> tuple[int, Optional[socket.socket]]:
    """A CPU for this process, spread over the processes of this host.

    A process claims a CPU by binding a name in Linux's abstract socket
    namespace, ``sqlalchemy-anyio/cpu/<cpu>/<n>``; the kernel frees it when the
    process ends.  The first free name wins, taking every CPU's ``n=0`` before
    any ``n=1``, so two processes on two CPUs get one each.
    """
    for n in range(4):
        for cpu in cpus:
            claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                claim.bind(f"\0{CLAIMS}/{cpu}/{n}")
            except OSError:
                claim.close()
                continue
            return cpu, claim
    return cpus[os.getpid() % len(cpus)], None


# -- the keeper -------------------------------------------------------------------


def _start_keeper() -> None:
    """Start the keeper if it is not running; lock held."""
    global _keeper
    if _keeper is not None and _keeper.is_alive():
        return
    _keeper = threading.Thread(target=_keep, name="sqlalchemy-anyio-placement", daemon=True)
    _keeper.start()


def _keep() -> None:
    """The keeper's life: release quiet loops, give newcomers their CPUs back."""
    global _keeper
    # It stays on the packed CPU it was started on: taking the GIL from a
    # thread on another CPU is just the hand-off packing avoids.
    me = threading.get_native_id()
    ours.add(me)
    try:
        while True:
            time.sleep(KEEP_EVERY)
            with _lock:
                now = _clock()
                for record in list(_packed.values()):
                    if now - record.busy_at > RELEASE_AFTER:
                        _release_locked(record)
                if not _packed:
                    if _keeper is threading.current_thread():
                        _keeper = None
                    return
                claimed = _claimed
                packed = list(_packed.values())
            if claimed is not None:
                _repair(claimed[0], packed)
    finally:
        ours.discard(me)


def _repair(cpu: int, packed: list[_Packed]) -> None:
    """Give threads that inherited a packed loop's CPU their creator's CPUs back.

    Only threads new since the last round, not ours, and confined to exactly
    that CPU; and the threads of the packed loops' new child processes.
    """
    home = packed[0].home
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return
    skip = ours | {record.tid for record in packed}
    for tid in tids:
        if tid not in _seen_threads and int(tid) not in skip:
            _unconfine(int(tid), cpu, home)
    _seen_threads.intersection_update(tids)
    _seen_threads.update(tids)
    children: list[str] = []
    for record in packed:
        try:
            with open(f"/proc/self/task/{record.tid}/children") as f:
                children.extend(f.read().split())
        except OSError:  # no such file on this kernel, or the thread ended
            pass
    for pid in children:
        if pid in _seen_children:
            continue
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                _unconfine(int(tid), cpu, home)
        except OSError:
            pass
    _seen_children.intersection_update(children)
    _seen_children.update(children)


def _unconfine(tid: int, cpu: int, home: frozenset[int]) -> None:
    try:
        if os.sched_getaffinity(tid) == {cpu}:
            os.sched_setaffinity(tid, home)
    except OSError:  # gone already, or not ours to change
        pass


@_fork.in_child
def _reset_after_fork() -> None:
    """In a child: the forking thread gets its CPUs back; the claim, the
    keeper and the parent's packed loops stay with the parent."""
    global _lock, _claimed, _keeper
    record = loop.packed
    if record is not None and not record.released:
        try:
            os.sched_setaffinity(0, record.home)
        except OSError:
            pass
    loop.packed = None
    loop.n = 0
    loop.placeable = True
    _lock = threading.Lock()
    if _claimed is not None and _claimed[1] is not None:
        _claimed[1].close()  # the parent's claim stays bound through its own copy
    _claimed = None
    _keeper = None
    _packed.clear()
    ours.clear()
    _seen_threads.clear()
    _seen_children.clear()
