"""What AsyncSession proxies, declared once.

AsyncSession forwards the sync Session's methods and attributes that do no
I/O (``SESSION_*``); async_scoped_session forwards all of AsyncSession's
(``SESSION_*`` and ``ASYNC_SESSION_*``) to the current scope's session.
Both classes' forwards are generated from these tables (``_forwarding``),
as the official extension generates its own from a list of names.
"""

from __future__ import annotations

from typing import Dict, Tuple

#: Session methods without I/O, run on the event loop, with their docstrings.
SESSION_METHODS: Dict[str, str] = {
    "__contains__": "True if ``instance`` belongs to the session.",
    "__iter__": "Iterate over the instances of the session.",
    "add": "Place ``instance`` in the session (flushed at the next flush).",
    "add_all": "Add each of ``instances``.",
    "expire": "Mark attributes of ``instance`` as stale (reload them with refresh()).",
    "expire_all": "Expire every instance of the session.",
    "expunge": "Remove ``instance`` from the session.",
    "expunge_all": "Remove all instances from the session.",
    "is_modified": "Whether ``instance`` has local changes to flush.",
    "in_transaction": "True if the session has begun a transaction.",
    "in_nested_transaction": "True if a SAVEPOINT is in progress.",
}

#: Session attributes: name -> (settable, docstring).
SESSION_ATTRIBUTES: Dict[str, Tuple[bool, str]] = {
    "dirty": (False, "Persistent instances with attribute changes not flushed yet."),
    "deleted": (False, "Instances marked as deleted, not flushed yet."),
    "new": (False, "Instances added and not flushed yet."),
    "identity_map": (True, "The persistent instances of the session, by identity key."),
    "is_active": (False, "False while a failed flush waits for rollback(), else True."),
    "autoflush": (True, "Whether queries flush pending changes first."),
    "no_autoflush": (False, "A context manager that disables autoflush."),
    "info": (False, "A dictionary for the application's own data about this session."),
    "execution_options": (True, "Session-wide execution options (SQLAlchemy 2.1)."),
}

#: Session class methods, called on the Session class.
SESSION_CLASS_METHODS: Dict[str, str] = {
    "object_session": "The sync Session ``instance`` belongs to.",
    "identity_key": "An identity key (see ``sqlalchemy.orm.util.identity_key``).",
}

#: AsyncSession's own methods (I/O on its worker, async binds, transactions).
ASYNC_SESSION_METHODS: Tuple[str, ...] = (
    "aclose",
    "begin",
    "begin_nested",
    "close",
    "commit",
    "connection",
    "delete",
    "delete_all",
    "execute",
    "flush",
    "get",
    "get_async_bind",
    "get_bind",
    "get_nested_transaction",
    "get_one",
    "get_transaction",
    "invalidate",
    "merge",
    "merge_all",
    "refresh",
    "reset",
    "rollback",
    "run_sync",
    "scalar",
    "scalars",
    "stream",
    "stream_scalars",
)

#: AsyncSession's own attributes: name -> settable.
ASYNC_SESSION_ATTRIBUTES: Dict[str, bool] = {"bind": True, "binds": False, "sync_session": False}

#: AsyncSession's own class methods.
ASYNC_SESSION_CLASS_METHODS: Tuple[str, ...] = ("close_all",)


def scoped(name: str, kind: str = "meth") -> str:
    """The docstring of a forward of async_scoped_session."""
    return f"Proxy for :{kind}:`AsyncSession.{name}` of the current scope's session."


def scoped_tables() -> Tuple[Dict[str, str], Dict[str, Tuple[bool, str]], Dict[str, str]]:
    """The methods, attributes and class methods async_scoped_session forwards."""
    methods = {name: scoped(name) for name in (*SESSION_METHODS, *ASYNC_SESSION_METHODS)}
    settable = {name: entry[0] for name, entry in SESSION_ATTRIBUTES.items()}
    settable.update(ASYNC_SESSION_ATTRIBUTES)
    attributes = {name: (flag, scoped(name, "attr")) for name, flag in settable.items()}
    class_methods = {
        name: f"Call :meth:`AsyncSession.{name}`."
        for name in (*SESSION_CLASS_METHODS, *ASYNC_SESSION_CLASS_METHODS)
    }
    return methods, attributes, class_methods
