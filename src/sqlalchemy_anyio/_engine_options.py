"""The options create_async_engine takes on top of create_engine's.

Each is validated here, once, with an ``ArgumentError`` that says what is
allowed, so a mistyped setting fails at engine creation, not under load.
Also here: the pool and SQLite settings this package chooses by default.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from sqlalchemy import exc
from sqlalchemy import pool as sa_pool
from sqlalchemy.engine import Engine
from sqlalchemy.engine.url import URL

from ._bridge import _impl, _placement, bound_seconds
from ._pool import WorkerQueuePool


def _number(
    name: str,
    value: Any,
    high: float,
    allowed: str,
    what: str,
    *,
    whole: bool = False,
    above_zero: bool = False,
) -> float:
    """``value`` as a number from 0 (or above 0) to ``high``, whole if asked,
    else ArgumentError saying what ``name`` allows (``allowed``) and what it
    is for (``what``)."""
    try:
        number = float(value)  # (strings: from a config file)
    except (TypeError, ValueError):
        number = float("nan")
    if (
        isinstance(value, bool)
        or not 0 <= number <= high
        or (whole and number != int(number))
        or (above_zero and number == 0)
    ):
        raise exc.ArgumentError(f"{name} must be {allowed}, not {value!r}: {what}")
    return number


def parse_cancel_timeout(value: Any) -> Optional[float]:
    """The ``cancel_timeout=`` engine option: seconds, above 0 (None: the default)."""
    if value is None:
        return None
    seconds = bound_seconds(value)
    if seconds is None:
        raise exc.ArgumentError(
            f"cancel_timeout must be a number of seconds above 0, not {value!r}: it bounds "
            "how long a cancelled call waits for its statement, interrupt and recovery."
        )
    return seconds


def parse_thread_placement(value: Any) -> str:
    """The ``thread_placement=`` engine option: ``"auto"``, ``"on"`` or ``"off"``."""
    try:
        return _placement.parse_mode(value)
    except ValueError as error:
        raise exc.ArgumentError(str(error)) from None


class EngineOptions:
    """The options of one engine, validated; None: the process-wide default."""

    __slots__ = (
        "active_expire",
        "active_workers",
        "cancel_timeout",
        "loop_spin",
        "overflow_linger",
        "thread_placement",
        "worker_spin",
    )

    def __init__(self, kw: Dict[str, Any]) -> None:
        """Take this package's options out of ``kw`` (create_engine's arguments)."""
        self.cancel_timeout = parse_cancel_timeout(kw.pop("cancel_timeout", None))
        self.thread_placement = parse_thread_placement(
            kw.pop("thread_placement", _placement.DEFAULT)
        )
        self.overflow_linger = self._get(
            kw,
            "overflow_linger",
            3600,
            "a number of seconds from 0 to 3600",
            "how long an overflow connection the pool does not need is kept before it is "
            "closed (0: at once, as QueuePool does).",
        )
        self.loop_spin = self._get(
            kw,
            "loop_spin",
            1,
            "a number of seconds from 0 to 1",
            "the longest time the event loop waits, without the GIL, for a call it just "
            "handed to a worker, when nothing else is ready (0: never; the pure-Python "
            "bridge never does).",
        )
        self.worker_spin = self._get(
            kw,
            "worker_spin",
            1,
            "a number of seconds from 0 to 1",
            "the longest time a worker waits, without the GIL, for its next call before "
            "it parks (0: park at once).",
        )
        workers = self._get(
            kw,
            "active_workers",
            1_000_000,
            "a whole number from 0 to 1000000",
            "how many of this engine's workers run calls at once (0: no limit).",
            whole=True,
        )
        self.active_workers = None if workers is None else int(workers)
        self.active_expire = self._get(
            kw,
            "active_expire",
            1,
            "a number of seconds above 0, at most 1",
            "after how long a running call gives its place up (it is most likely "
            "waiting on the server, the disk or a lock).",
            above_zero=True,
        )

    @staticmethod
    def _get(
        kw: Dict[str, Any], name: str, high: float, allowed: str, what: str, **checks: bool
    ) -> Any:
        value = kw.pop(name, None)
        return None if value is None else _number(name, value, high, allowed, what, **checks)

    def apply(self, workers: Any, sync_engine: Engine) -> None:
        """Give an engine's worker source (``_engine_workers.workers_for``) these settings."""
        local = sync_engine.dialect.name == "sqlite"
        queue_pool = isinstance(workers, WorkerQueuePool)
        if self.cancel_timeout is not None:
            workers.cancel_timeout = self.cancel_timeout
        workers.placement = _placement.placed(self.thread_placement, local=local)
        workers.loop_spin = self.loop_spin
        workers.worker_spin = self.worker_spin
        try:
            workers.gate = _impl.engine_gate(
                local and queue_pool, self.active_workers, self.active_expire
            )
        except ValueError:
            raise exc.ArgumentError(
                "active_expire applies to an engine with an admission gate of its own: "
                "give active_workers= too (this engine's workers go through the "
                "process-wide gate, SQLALCHEMY_ANYIO_ACTIVE_WORKERS)."
            ) from None
        if queue_pool:
            if self.overflow_linger is not None:
                workers.overflow_linger = self.overflow_linger
        elif self.overflow_linger is not None:
            raise exc.ArgumentError(
                f"overflow_linger applies to a QueuePool; this engine's pool is a "
                f"{type(sync_engine.pool).__name__}"
            )


def worker_pool_default(url: URL, kw: Dict[str, Any]) -> None:
    """Use :class:`WorkerQueuePool` where a plain QueuePool would be used.

    That is the dialect's default, ``QueuePool`` and ``AsyncAdaptedQueuePool``
    (which code written for the official extension may name), as a class or
    as a ready-made ``pool=`` object (whose settings, creator and listeners
    are taken over).  Other pool classes and objects are kept as they are.
    """
    given = kw.get("pool")
    if isinstance(given, sa_pool.QueuePool) and not isinstance(given, WorkerQueuePool):
        kw["pool"] = WorkerQueuePool.adopt(given)
        return
    if given is not None:
        return
    poolclass = kw.get("poolclass")
    if poolclass is None:
        poolclass = url.get_dialect().get_pool_class(url)  # type: ignore[attr-defined]
    if poolclass in (sa_pool.QueuePool, sa_pool.AsyncAdaptedQueuePool):
        kw["poolclass"] = WorkerQueuePool


def sqlite_defaults(url: URL, kw: Dict[str, Any]) -> None:
    """Connections move between worker threads; memory databases are shared.

    An in-memory SQLite database is one database per DBAPI connection, so a
    single connection serves the whole engine (StaticPool), as with the
    official aiosqlite dialect, instead of one database per thread.
    """
    if url.get_backend_name() != "sqlite" or "creator" in kw:
        return
    connect_args = dict(kw.get("connect_args") or {})
    connect_args.setdefault("check_same_thread", False)
    kw["connect_args"] = connect_args
    is_file = bool(url.database and url.database != ":memory:") and (
        url.query.get("mode") != "memory"
    )
    if not is_file and "poolclass" not in kw and "pool" not in kw:
        kw["poolclass"] = sa_pool.StaticPool
