"""Forwarding methods and attributes, generated from a declaration of names.

A proxy class (AsyncSession, async_scoped_session, AsyncEngine,
AsyncConnection) names what it forwards once; this module writes the
forwards.  Each keeps its source's signature (``__signature__``) and gets a
docstring, so ``help()``, ``inspect`` and the API reference show them as if
written out.  Type checkers do not run this: each class declares the
forwarded names for them (see the ``TYPE_CHECKING`` blocks).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Concatenate, Mapping, ParamSpec, Tuple, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: How a forward finds the object it forwards to, from ``self`` (or the class).
Target = Callable[[Any], Any]


def typed(fn: Callable[Concatenate[Any, _P], _R]) -> Callable[Concatenate[Any, _P], _R]:
    """For type checkers: ``fn``'s parameters as a method of another class."""
    return fn


def _named(fwd: Any, cls: type, name: str, source: Any, doc: str) -> Any:
    fwd.__name__ = name
    fwd.__qualname__ = f"{cls.__qualname__}.{name}"
    fwd.__module__ = cls.__module__
    fwd.__doc__ = doc
    fwd.__signature__ = inspect.signature(source)
    return fwd


def _method(name: str, target: Target, is_async: bool) -> Callable[..., Any]:
    if is_async:

        async def forward_async(self: Any, *args: Any, **kw: Any) -> Any:
            return await getattr(target(self), name)(*args, **kw)

        return forward_async

    def forward(self: Any, *args: Any, **kw: Any) -> Any:
        return getattr(target(self), name)(*args, **kw)

    return forward


def forward(
    cls: type,
    source: type,
    target: Target,
    *,
    methods: Mapping[str, str] = {},
    attributes: Mapping[str, Tuple[bool, str]] = {},
    class_methods: Mapping[str, str] = {},
) -> None:
    """Give ``cls`` the forwards of ``source``'s names.

    ``methods`` and ``class_methods`` map a name to its docstring,
    ``attributes`` a name to (settable, docstring).  A method calls
    ``target(self).name``; an attribute reads (and sets) it; a class method
    calls ``source.name``.  Names ``source`` lacks (e.g. on an older
    SQLAlchemy) are left out.
    """
    for name, doc in methods.items():
        fn = inspect.getattr_static(source, name, None)
        if fn is None:
            continue
        method = _method(name, target, inspect.iscoroutinefunction(fn))
        setattr(cls, name, _named(method, cls, name, fn, doc))
    for name, (settable, doc) in attributes.items():
        setattr(cls, name, _attribute(name, target, settable, doc))
    for name, doc in class_methods.items():
        fn = inspect.getattr_static(source, name).__func__
        method = _method(name, lambda _cls: source, inspect.iscoroutinefunction(fn))
        setattr(cls, name, classmethod(_named(method, cls, name, fn, doc)))


def _attribute(name: str, target: Target, settable: bool, doc: str) -> property:
    def fget(self: Any) -> Any:
        return getattr(target(self), name)

    def fset(self: Any, value: Any) -> None:
        setattr(target(self), name, value)

    return property(fget, fset if settable else None, doc=doc)
