"""Async results that fetch through the worker that owns their cursor.

Only :meth:`AsyncConnection.stream` and :meth:`AsyncSession.stream` make
these.  Each wraps a sync result (or a view of it: scalars, mappings) and
runs every fetch on the worker; async iteration pulls rows in batches, one
hop per batch.
"""

from __future__ import annotations

import collections
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Deque,
    Generic,
    Optional,
    Sequence,
    TypeVar,
)

from sqlalchemy import exc
from sqlalchemy.engine import (
    FrozenResult,
    IteratorResult,
    MappingResult,
    Result,
    Row,
    RowMapping,
    ScalarResult,
)
from sqlalchemy.util.typing import Self

from ._chunk import drain

if TYPE_CHECKING:
    from sqlalchemy.engine.result import RMKeyView, _KeyIndexType, _UniqueFilterType

    from ._bridge import Worker

_R = TypeVar("_R")
_T = TypeVar("_T")

#: Rows pulled per hop by ``async for`` when ``yield_per`` was not set.
ITERATION_BATCH = 100


# ``async for`` reads ahead.  For the sync Result (and so the official
# AsyncResult), rows read ahead but not handed out are rows not fetched yet: a
# reshape (unique(), columns(), scalars(), mappings()) applies to them too.
# So a reshape moves them into a sync result of the view's kind and shape
# (rebuilt as a FrozenResult is, values not processed again), reshaped as the
# view is and sharing its unique filter; it is read at the next fetch.


def _real(view: Any) -> Any:
    return view if view._real_result is None else view._real_result


def _scalar_source(view: Any) -> bool:
    return isinstance(view, ScalarResult) and bool(_real(view)._source_supports_scalars)


def _rebuilt(view: Any, items: Any) -> Any:
    """A sync result of ``view``'s kind and shape over ``items``."""
    scalar_source = _scalar_source(view)
    if scalar_source:
        data = list(items)
    elif isinstance(view, ScalarResult):
        data = [(i,) for i in items]
    elif isinstance(view, MappingResult):
        data = [tuple(m.values()) for m in items]
    else:
        data = [tuple(r) for r in items]
    rebuilt: Any = IteratorResult(view._metadata._for_freeze(), iter(data))
    if scalar_source:
        rebuilt._source_supports_scalars = True
    if isinstance(view, ScalarResult):
        return rebuilt.scalars()
    if isinstance(view, MappingResult):
        return rebuilt.mappings()
    return rebuilt


class AsyncCommon(Generic[_R]):
    """What all async result kinds share: the sync result, its worker, a row buffer."""

    __slots__ = ("__weakref__", "_ahead", "_pending", "_real_result", "_view", "_worker")

    def __init__(self, real_result: Result[Any], view: Any, worker: Worker) -> None:
        #: The sync Result whose cursor this reads (closed by close()).
        self._real_result = real_result
        worker.track_stream(self)
        #: The sync object fetched from: the Result, or its scalars()/mappings().
        self._view = view
        self._worker = worker
        #: Rows fetched ahead by ``async for``, not yet handed out.
        self._ahead: Deque[_R] = collections.deque()
        #: Rows fetched ahead, then reshaped: a sync result read at the next fetch.
        self._pending: Any = None

    @property
    def _buffer(self) -> Deque[_R]:
        """The rows read ahead, reshaped if a reshape came since."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._ahead = collections.deque(pending.fetchall())
        return self._ahead

    @_buffer.setter
    def _buffer(self, rows: Deque[_R]) -> None:
        self._pending = None
        self._ahead = rows

    def _check_reshape(self) -> None:
        if self._pending is None and self._ahead and self._view._unique_filter_state is not None:
            # Rows its filter dropped while reading ahead cannot come back for
            # a new shape or filter: refuse rather than differ.
            raise exc.InvalidRequestError(
                "Can't reshape (unique(), columns(), scalars(), mappings()) a unique() "
                "async result once 'async for' has begun: its rows are read ahead in "
                "batches and de-duplicated as they are read.  Apply the reshaping "
                "before iterating, or iterate with yield_per(1)."
            )

    def _reshape(self, apply: Any) -> Any:
        """Apply a reshape to the view and to the rows read ahead; the new view."""
        self._check_reshape()
        view = self._view
        if self._pending is None and self._ahead:
            self._pending = _rebuilt(view, self._ahead)
            self._ahead = collections.deque()
        view = apply(view)
        if self._pending is not None:
            self._pending = apply(self._pending)
            if view._unique_filter_state is not None:
                self._pending._unique_filter_state = view._unique_filter_state
        self._view = view
        return view

    async def close(self) -> None:
        """Close this result."""
        self._buffer = collections.deque()
        await self._worker.call_ending(self._real_result.close)

    def _close_on_worker(self) -> None:
        """Close the sync result; called on the worker by a cancellation's recovery."""
        self._real_result.close()

    async def _close_shielded(self) -> None:
        self._buffer = collections.deque()
        await self._worker.call_ending(self._real_result.close)

    @property
    def closed(self) -> bool:
        """Whether the underlying result is closed."""
        return bool(self._real_result.closed)

    def _hand_over(self, other: AsyncCommon[Any]) -> None:
        """Give the rows read ahead to a new view of the same cursor."""
        other._ahead, other._pending = self._ahead, self._pending
        self._ahead, self._pending = collections.deque(), None

    async def _drain_then(self, method: Any) -> list[_R]:
        """Buffered rows, then ``method`` (all / fetchall) of the rest, in chunks on the worker."""
        rows = list(self._buffer)
        self._buffer.clear()
        return rows + await self._worker.call(drain, self._view, method)

    async def partitions(self, size: Optional[int] = None) -> AsyncIterator[Sequence[_R]]:
        """Iterate over sub-lists of rows of the size given (one hop each)."""
        while True:
            part = await self.fetchmany(size)
            if not part:
                break
            yield part

    def yield_per(self, num: int) -> Self:
        """Fetch ``num`` rows per batch; returns this result."""
        self._view = self._view.yield_per(num)
        return self

    async def fetchall(self) -> Sequence[_R]:
        """All remaining rows, as a list."""
        return await self._drain_then(self._view.fetchall)

    async def fetchmany(self, size: Optional[int] = None) -> Sequence[_R]:
        """Up to ``size`` more rows (or the result's default batch)."""
        if self._buffer:
            want = size if size is not None else len(self._buffer)
            part = [self._buffer.popleft() for _ in range(min(want, len(self._buffer)))]
            if len(part) < want:
                part.extend(await self._worker.call(self._view.fetchmany, want - len(part)))
            return part
        return list(await self._worker.call(self._view.fetchmany, size))

    async def all(self) -> Sequence[_R]:
        """All remaining rows, as a list; closes the result."""
        return await self._drain_then(self._view.all)

    def __aiter__(self) -> AsyncCommon[_R]:
        return self

    async def __anext__(self) -> _R:
        ahead = self._ahead
        if not ahead:
            if self._pending is not None:
                ahead = self._buffer
            if not ahead:
                batch = self._real_result._yield_per or ITERATION_BATCH
                rows = await self._worker.call(self._view.fetchmany, batch)
                if not rows:
                    raise StopAsyncIteration()
                ahead.extend(rows)
        return ahead.popleft()

    async def first(self) -> Optional[_R]:
        """The first row (or None), then close the result."""
        if self._buffer:
            row = self._buffer.popleft()
            await self.close()
            return row
        return await self._worker.call(self._view.first)

    async def one_or_none(self) -> Optional[_R]:
        """At most one row, or raise if there are more."""
        if self._buffer:
            return await self._only_one_buffered("one or none")
        return await self._worker.call(self._view.one_or_none)

    async def one(self) -> _R:
        """Exactly one row, or raise."""
        if self._buffer:
            return await self._only_one_buffered("exactly one")
        return await self._worker.call(self._view.one)

    async def _only_one_buffered(self, wanted: str) -> _R:
        """one() and friends once ``async for`` has read ahead: as the sync
        Result, the rows not handed out yet count (the next one, and whether
        another follows), and the result is closed."""
        row = self._buffer.popleft()
        more = bool(self._buffer) or bool(await self._worker.call(self._view.fetchmany, 1))
        await self._close_shielded()
        if more:
            raise exc.MultipleResultsFound(f"Multiple rows were found when {wanted} was required")
        return row


class _WithKeys:
    __slots__ = ()
    _view: Any

    def keys(self) -> RMKeyView:
        """The column names of the rows."""
        keys: RMKeyView = self._view.keys()
        return keys


_TP = TypeVar("_TP", bound=Any)


class AsyncResult(_WithKeys, AsyncCommon[Row[Any]], Generic[_TP]):
    """An async wrapper around a streaming :class:`~sqlalchemy.engine.Result`."""

    __slots__ = ()

    def __init__(self, real_result: Result[Any], worker: Worker) -> None:
        super().__init__(real_result, real_result, worker)

    @property
    def t(self) -> AsyncTupleResult[Any]:
        """Same rows, typed as tuples (a synonym for :meth:`tuples`)."""
        return self.tuples()

    def tuples(self) -> AsyncTupleResult[Any]:
        """Same rows, typed as tuples."""
        result: AsyncTupleResult[Any] = AsyncTupleResult(
            self._real_result, self._view, self._worker
        )
        self._hand_over(result)
        return result

    def unique(self, strategy: Optional[_UniqueFilterType] = None) -> AsyncResult[_TP]:
        """De-duplicate rows (or objects) in Python; returns this result."""
        self._reshape(lambda view: view.unique(strategy))
        return self

    def columns(self, *col_expressions: _KeyIndexType) -> AsyncResult[_TP]:
        """Limit each row to the given columns; returns this result."""
        self._reshape(lambda view: view.columns(*col_expressions))
        return self

    async def fetchone(self) -> Optional[Row[Any]]:
        """The next row, or None."""
        if self._buffer:
            return self._buffer.popleft()
        return await self._worker.call(self._view.fetchone)

    async def scalar_one(self) -> Any:
        """Exactly one row's first column."""
        if self._buffer:
            return (await self._only_one_buffered("exactly one"))[0]
        return await self._worker.call(self._view.scalar_one)

    async def scalar_one_or_none(self) -> Optional[Any]:
        """At most one row's first column, or None."""
        if self._buffer:
            return (await self._only_one_buffered("one or none"))[0]
        return await self._worker.call(self._view.scalar_one_or_none)

    async def scalar(self) -> Any:
        """The first column of the first row, then close the result."""
        if self._buffer:
            row = self._buffer.popleft()
            await self.close()
            return row[0]
        return await self._worker.call(self._view.scalar)

    async def freeze(self) -> FrozenResult[Any]:
        """A :class:`~sqlalchemy.engine.FrozenResult` of the remaining rows."""
        read_ahead = list(self._buffer)
        self._buffer = collections.deque()
        frozen: FrozenResult[Any] = await self._worker.call(self._view.freeze)
        if not read_ahead:
            return frozen
        if frozen._source_supports_scalars:
            read_ahead = [row[0] for row in read_ahead]
        return frozen.with_new_rows(read_ahead + list(frozen.data))

    def scalars(self, index: _KeyIndexType = 0) -> AsyncScalarResult[Any]:
        """An :class:`AsyncScalarResult` of one column of each row."""
        self._check_reshape()
        result: AsyncScalarResult[Any] = AsyncScalarResult(
            self._real_result, self._view, self._worker
        )
        self._hand_over(result)
        result._reshape(lambda view: view.scalars(index))
        return result

    def mappings(self) -> AsyncMappingResult:
        """An :class:`AsyncMappingResult` of dict-like rows."""
        self._check_reshape()
        result = AsyncMappingResult(self._real_result, self._view, self._worker)
        self._hand_over(result)
        result._reshape(lambda view: view.mappings())
        return result


class AsyncScalarResult(AsyncCommon[_R]):
    """An async wrapper around a :class:`~sqlalchemy.engine.ScalarResult`."""

    __slots__ = ()

    def unique(self, strategy: Optional[_UniqueFilterType] = None) -> AsyncScalarResult[_R]:
        """De-duplicate values in Python; returns this result."""
        self._reshape(lambda view: view.unique(strategy))
        return self


class AsyncMappingResult(_WithKeys, AsyncCommon[RowMapping]):
    """An async wrapper around a :class:`~sqlalchemy.engine.MappingResult`."""

    __slots__ = ()

    def unique(self, strategy: Optional[_UniqueFilterType] = None) -> AsyncMappingResult:
        """De-duplicate rows in Python; returns this result."""
        self._reshape(lambda view: view.unique(strategy))
        return self

    def columns(self, *col_expressions: _KeyIndexType) -> AsyncMappingResult:
        """Limit each mapping to the given columns; returns this result."""
        self._reshape(lambda view: view.columns(*col_expressions))
        return self

    async def fetchone(self) -> Optional[RowMapping]:
        """The next mapping, or None."""
        if self._buffer:
            return self._buffer.popleft()
        return await self._worker.call(self._view.fetchone)


class AsyncTupleResult(AsyncResult[_TP]):
    """An :class:`AsyncResult` typed as plain tuples."""

    __slots__ = ()

    def __init__(self, real_result: Result[Any], view: Any, worker: Worker) -> None:
        AsyncCommon.__init__(self, real_result, view, worker)


__all__ = ["AsyncMappingResult", "AsyncResult", "AsyncScalarResult", "AsyncTupleResult"]
