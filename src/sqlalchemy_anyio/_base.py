"""Proxy bookkeeping and startable contexts shared by the public classes.

``ReversibleProxy`` maps a sync object (Connection, Session, ...) back to the
async object wrapping it.  ``StartableContext`` is an object that is both
awaitable (``conn = await engine.connect()``) and an async context manager.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import (
    Any,
    AsyncGenerator,
    Awaitable,
    Callable,
    ClassVar,
    Dict,
    Generator,
    Generic,
    NoReturn,
    Optional,
    TypeVar,
)

from . import _fork
from . import exc as async_exc

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)
_PT = TypeVar("_PT")

# Reentrant: the weakref callback below may run inside a block holding it,
# when the allocation of a weakref there sets off the garbage collector.
_proxy_lock = threading.RLock()


@_fork.in_child
def _reset_after_fork() -> None:
    global _proxy_lock
    _proxy_lock = threading.RLock()


class ReversibleProxy(Generic[_PT]):
    """Remembers which async proxy wraps which sync target (weakly)."""

    _proxy_objects: ClassVar[Dict[weakref.ref[Any], weakref.ref[ReversibleProxy[Any]]]] = {}
    __slots__ = ("__weakref__",)

    def _assign_proxied(self, target: _T) -> _T:
        if target is not None:
            key = weakref.ref(target, ReversibleProxy._target_gced)
            # the entry goes when either side does: a proxy dropped by its user
            # must not stay registered for as long as its target lives
            proxy = weakref.ref(self, functools.partial(ReversibleProxy._target_gced, key))
            with _proxy_lock:
                ReversibleProxy._proxy_objects[key] = proxy
        return target

    @staticmethod
    def _target_gced(ref: weakref.ref[Any], proxy: Optional[weakref.ref[Any]] = None) -> None:
        with _proxy_lock:
            if proxy is None or ReversibleProxy._proxy_objects.get(ref) is proxy:
                ReversibleProxy._proxy_objects.pop(ref, None)

    @classmethod
    def _regenerate_proxy_for_target(cls, target: Any, **kw: Any) -> Any:
        raise NotImplementedError()

    @classmethod
    def _retrieve_proxy_for_target(cls, target: Any, regenerate: bool = True, **kw: Any) -> Any:
        with _proxy_lock:
            proxy_ref = ReversibleProxy._proxy_objects.get(weakref.ref(target))
        if proxy_ref is not None:
            proxy = proxy_ref()
            if proxy is not None:
                return proxy
        if regenerate:
            return cls._regenerate_proxy_for_target(target, **kw)
        return None


class ProxyComparable(ReversibleProxy[_PT]):
    """Two proxies are equal when they wrap the same sync object."""

    __slots__ = ()

    @property
    def _proxied(self) -> _PT:
        raise NotImplementedError()

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, self.__class__) and self._proxied == other._proxied

    def __ne__(self, other: Any) -> bool:
        return not self.__eq__(other)


class StartableContext(Awaitable[_T_co]):
    """Awaitable that starts the object, or an ``async with`` block around it."""

    __slots__ = ()

    async def start(self, is_ctxmanager: bool = False) -> _T_co:
        raise NotImplementedError()

    def __await__(self) -> Generator[Any, Any, _T_co]:
        return self.start().__await__()

    async def __aenter__(self) -> _T_co:
        return await self.start(is_ctxmanager=True)

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> Optional[bool]:
        raise NotImplementedError()

    def _raise_for_not_started(self) -> NoReturn:
        raise async_exc.AsyncContextNotStarted(
            f"{self.__class__.__name__} context has not been started and object "
            "has not been awaited."
        )


class GeneratorStartableContext(StartableContext[_T_co]):
    """``await f()`` or ``async with f() as x`` over an async generator function."""

    __slots__ = ("gen",)

    def __init__(
        self, func: Callable[..., AsyncGenerator[_T_co, Any]], args: Any, kwds: Any
    ) -> None:
        self.gen = func(*args, **kwds)

    async def start(self, is_ctxmanager: bool = False) -> _T_co:
        try:
            start_value = await self.gen.__anext__()
        except StopAsyncIteration:
            raise RuntimeError("generator didn't yield") from None
        if not is_ctxmanager:
            # Plain ``await``: the caller owns the value now; close nothing.
            await self.gen.aclose()
        return start_value

    async def __aexit__(self, typ: Any, value: Any, traceback: Any) -> Optional[bool]:
        if typ is None:
            try:
                await self.gen.__anext__()
            except StopAsyncIteration:
                return False
            raise RuntimeError("generator didn't stop")
        if value is None:
            value = typ()
        try:
            await self.gen.athrow(value)
        except StopAsyncIteration as exc:
            return exc is not value
        except RuntimeError as exc:
            if exc is value:
                return False
            if isinstance(value, (StopIteration, StopAsyncIteration)) and exc.__cause__ is value:
                return False
            raise
        except BaseException as exc:
            if exc is not value:
                raise
            return False
        raise RuntimeError("generator didn't stop after athrow()")


def asyncstartablecontext(
    func: Callable[..., AsyncGenerator[_T_co, Any]],
) -> Callable[..., GeneratorStartableContext[_T_co]]:
    """Decorate an async generator so its call is awaitable or an ``async with``.

    On plain ``await``, the generator is closed right after its first yield
    with ``GeneratorExit``, which the generator must catch and not clean up.
    """

    @functools.wraps(func)
    def helper(*args: Any, **kwds: Any) -> GeneratorStartableContext[_T_co]:
        return GeneratorStartableContext(func, args, kwds)

    return helper
