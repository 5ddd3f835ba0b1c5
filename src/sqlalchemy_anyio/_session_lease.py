"""When an AsyncSession holds a worker, and how it calls it.

A session holds a worker only while its transaction holds a connection:
from the first statement until commit, rollback or close.  Calls that need
no connection lease one for their duration only, so idle sessions cost no
thread (DESIGN.md, "the worker follows the pooled DBAPI connection").
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Optional, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from . import _cancel, _guard
from . import exc as async_exc
from ._bridge import Worker, give_back_later
from ._engine_workers import lease_worker, spare_workers
from ._session_binds import SessionBinds
from .engine import AsyncConnection

_T = TypeVar("_T")


class _Lease:
    """The worker a session runs on; given back exactly once (also on GC)."""

    __slots__ = ("__weakref__", "exclusive", "owned", "worker")

    def __init__(self, worker: Worker, owned: bool) -> None:
        self.worker = worker
        #: False when the session runs on the worker of a connection it is
        #: bound to: that worker is the connection's to give back.
        self.owned = owned
        #: Only an exclusive worker may carry this session's interrupter.
        self.exclusive = owned and not getattr(worker.pool, "shared", False)

    def release(self) -> None:
        if self.owned:
            self.owned = False
            self.worker.pool.release(self.worker)


def _collected(lease: _Lease) -> None:
    """Finalizer of a session dropped holding its worker: give it back from
    the worker's own thread (see ``give_back_later``)."""
    if lease.owned:
        lease.owned = False
        give_back_later(lease.worker)


def _holds_connection(sync_session: Session) -> bool:
    """Whether the session's transaction has a connection checked out."""
    trans = sync_session._transaction
    while trans is not None:
        if trans._connections:
            return True
        trans = trans._parent
    return False


class LeasedSession(SessionBinds):
    """The worker-holding part of :class:`AsyncSession`."""

    _lease: Optional[_Lease]
    #: A close queued on the last worker and not awaited (see _end): the
    #: next lease waits for it, so the sync Session is never on two threads.
    _pending_end: Any
    _finalizer: Optional[weakref.finalize[Any, Any]]

    @property
    def _worker(self) -> Optional[Worker]:
        lease = self._lease
        return lease.worker if lease is not None else None

    async def _after_pending_end(self) -> None:
        """Wait for a close queued on the last worker and not awaited (see _end)."""
        pending = self._pending_end
        if pending is not None:
            await pending.wait()  # refused behind a written-off call
            self._pending_end = None

    async def _acquire(self) -> _Lease:
        """Lease a worker: the bind engine's (with its connection), or a spare one."""
        await self._after_pending_end()
        sync = self.sync_session
        bind = self._lease_bind()
        if isinstance(bind, Connection):
            # Joined to an external connection: run on the worker that owns it.
            proxy = AsyncConnection._retrieve_proxy_for_target(bind)
            owner = _guard.owner_of(bind)
            if owner is None:
                await proxy._call(int)  # make the connection lease its worker
                owner = proxy._current_worker()
            assert owner is not None
            worker, owned = owner, False
        elif isinstance(bind, Engine):
            worker, owned = await lease_worker(bind), True
        else:
            worker, owned = await spare_workers().lease(), True
        if self._lease is not None:  # another task of ours leased meanwhile
            if owned:
                worker.pool.release(worker)
            return self._lease
        lease = self._lease = _Lease(worker, owned)
        if lease.exclusive:
            _cancel.arm_session(worker, sync)
        if owned:
            finalizer = self._finalizer = weakref.finalize(self, _collected, lease)
            finalizer.atexit = False
        _guard.set_session_owner(sync, worker)
        return lease

    def _release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        _guard.set_session_owner(self.sync_session, None)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if lease.exclusive:
            lease.worker.disarm()
        lease.release()

    async def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        lease = self._lease or await self._acquire()
        try:
            return await lease.worker.call(fn, *args, **kwargs)
        finally:
            if lease.owned and self._lease is lease and not _holds_connection(self.sync_session):
                self._release()

    async def _call_shielded(self, fn: Callable[..., Any], *args: Any) -> None:
        """An ending call (rollback, close): runs to its end if cancelled, within
        the bound; behind a written-off call, queued (``Worker.call_ending``)."""
        lease = self._lease or await self._acquire()
        try:
            await lease.worker.call_ending(fn, *args)
        finally:
            if lease.owned and self._lease is lease and not _holds_connection(self.sync_session):
                self._release()

    async def _end(self, fn: Callable[[], Any], on_worker: bool = False) -> None:
        """Run close()/reset()/invalidate() to completion, then free the worker.

        With no worker held there is no connection to touch, so ``fn`` runs
        right here unless ``on_worker`` says it may need one (a commit).
        When others wait for a connection, ``fn`` is queued on the worker and
        the worker handed on at once: the next lessee's calls run after it.
        """
        await self._after_pending_end()
        lease = self._lease
        if lease is not None and lease.worker.stuck:
            # Written off: the close queues behind the stuck call, and the
            # session is refused until it has run.  A commit cannot happen.
            close = self.sync_session.close if on_worker else fn
            self._pending_end = await lease.worker.call_ending(close)
            self._release()
            if on_worker:
                raise async_exc.ConnectionWrittenOff()
            return
        if lease is not None and not on_worker and lease.owned and lease.worker.in_demand():
            pending = self._pending_end = lease.worker.hand_on("closing an AsyncSession", fn)
            self._release()
            await pending.wait(shield=True)  # sync methods after close() see it done
            self._pending_end = None
            return
        try:
            if lease is not None or on_worker:
                await self._call_shielded(fn)
            else:
                fn()
        finally:
            self._release()
