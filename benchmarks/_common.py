"""Small pieces every benchmark script uses: option lists, the commit, the
test tables, and process CPU from /proc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

import sqlalchemy as sa

HERE = os.path.dirname(os.path.abspath(__file__))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def choices(value: str, allowed: List[str], what: str) -> List[str]:
    """A comma list given on the command line, each item one of ``allowed``."""
    items = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        sys.exit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def git_commit() -> Optional[str]:
    """The checkout's commit, for the results' header (None outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        )
        return out.stdout.strip() or None
    except OSError:
        return None


def drop_tables(sync_url: str, metadata: sa.MetaData) -> None:
    """Drop a benchmark's tables after its run."""
    engine = sa.create_engine(sync_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            metadata.drop_all(conn)
    finally:
        engine.dispose()


def proc_stat(pid: str) -> Tuple[str, List[str]]:
    """A process's name and the fields of /proc/<pid>/stat after it (``fields[11]``
    is utime, ``[12]`` stime, ``[13:15]`` the same for reaped children, in ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    return name, stat[stat.rindex(")") + 2 :].split()


def fill_tables(
    sync_url: str, metadata: sa.MetaData, rows: List[Tuple[sa.Table, List[Dict[str, Any]]]]
) -> None:
    """Drop and create a benchmark's tables, then insert ``rows`` (table, dicts) in order."""
    engine = sa.create_engine(sync_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            metadata.drop_all(conn)
            metadata.create_all(conn)
            for table, values in rows:
                conn.execute(table.insert(), values)
    finally:
        engine.dispose()


def write_json(path: str, doc: Any) -> None:
    """Save a results document, making its folder if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
