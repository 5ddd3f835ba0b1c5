"""What AsyncEngine and AsyncConnection forward to their sync objects, declared once.

Only what does no I/O: read on the event loop, from the sync Engine or
Connection.  The forwards are generated from these tables (``_forwarding``).
"""

from __future__ import annotations

from typing import Dict, Tuple

#: Engine methods: name -> docstring.
ENGINE_METHODS: Dict[str, str] = {
    "clear_compiled_cache": "Empty the dialect's cache of compiled statements.",
    "update_execution_options": "Add to this engine's default execution options, in place.",
    "get_execution_options": "This engine's default execution options.",
}

#: Engine attributes: name -> (settable, docstring).
ENGINE_ATTRIBUTES: Dict[str, Tuple[bool, str]] = {
    "url": (True, "The database URL of the sync engine."),
    "pool": (True, "The connection pool of the sync engine."),
    "dialect": (True, "The dialect of the sync engine."),
    "engine": (False, "The sync :class:`~sqlalchemy.engine.Engine`, as ``Engine.engine`` does."),
    "name": (False, 'The dialect\'s name, e.g. ``"postgresql"``.'),
    "driver": (False, 'The name of the DBAPI driver in use, e.g. ``"psycopg"``.'),
    "echo": (True, "Whether the engine logs its SQL statements."),
}

#: Connection methods: name -> docstring.
CONNECTION_METHODS: Dict[str, str] = {
    "in_transaction": "True if a transaction is in progress.",
    "in_nested_transaction": "True if a nested transaction (SAVEPOINT) is in progress.",
}

#: Connection attributes: name -> (settable, docstring).
CONNECTION_ATTRIBUTES: Dict[str, Tuple[bool, str]] = {
    "info": (False, "The ``info`` dictionary of the underlying DBAPI connection."),
    "closed": (False, "True once the connection is closed."),
    "invalidated": (False, "True if the DBAPI connection was invalidated (see invalidate())."),
    "dialect": (True, "The dialect of the connection's engine."),
    "default_isolation_level": (
        False,
        "The dialect's default isolation level, read at the engine's first connect.",
    ),
}
