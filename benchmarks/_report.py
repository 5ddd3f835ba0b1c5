"""Turn a results document (benchmarks/results/latest.json) into the table and the chart."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

PER_OP = ["point", "page", "orm100", "concurrent"]
TITLES = {
    "point": "point select",
    "page": "100-row page",
    "orm100": "ORM 100 objects",
    "concurrent": "16 tasks/8 conns",
    "lag": "ORM 40k load",
}
DB_TITLES = {"sqlite": "SQLite (file)", "postgresql": "PostgreSQL", "mysql": "MariaDB/MySQL"}


def _label(rec: Dict[str, Any]) -> str:
    return rec["impl"] + (f"/{rec['backend']}" if rec.get("backend") else "")


def _value(rec: Optional[Dict[str, Any]], scenario: str) -> Optional[float]:
    if rec is None:
        return None
    data = rec.get("scenarios", {}).get(scenario)
    if not data:
        return None
    return data["load_ms"] if scenario == "lag" else data["median_us"]


def _baselines(records: List[Dict[str, Any]], rec: Dict[str, Any]) -> tuple:
    """The sync record and the official record on the same loop (trio: asyncio)."""
    same_db = [r for r in records if r["db"] == rec["db"]]
    sync = next((r for r in same_db if r["impl"] == "sync"), None)
    loop = rec.get("backend") if rec.get("backend") in ("asyncio", "uvloop") else "asyncio"
    official = next(
        (r for r in same_db if r["impl"] == "official" and r.get("backend") == loop), None
    )
    return sync, official


def _ratio(value: Optional[float], base: Optional[float]) -> str:
    if value is None or base is None or base == 0:
        return "-"
    return f"{value / base:.3f}"


def _num(value: Optional[float], fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def render(result: Dict[str, Any]) -> str:
    meta, records = result["meta"], result["results"]
    env, cfg = meta["environment"], meta["config"]
    lines = [
        f"{meta['mode']} run {meta['date']} commit {meta.get('commit')}: python {env['python']}, "
        f"SQLAlchemy {env['sqlalchemy']}, anyio {env.get('anyio')}, trio {env.get('trio')}, "
        f"uvloop {env.get('uvloop')}, SQLite {env.get('sqlite')}, {env['cpus']} CPUs; "
        f"load average {meta['load_average_start'][0]:.2f} at start, "
        f"{meta['load_average_end'][0]:.2f} at end; {meta['wall_seconds']:.0f} s",
        f"rounds: {cfg['rounds']} timed rounds of ~{cfg['round_time'] * 1e3:.0f} ms after a "
        "warm-up; figures are medians, unrounded in the JSON.",
        "x sync = time / sync SQLAlchemy's time; x off = time / the official extension's time on "
        "the same loop (trio rows: vs asyncio). Lower is better.",
    ]
    lines.append(
        "greenlet imported in the main process (sync, anyio-C): "
        + ("YES" if meta.get("greenlet_in_main_process") else "no")
    )
    for note in meta.get("skipped", []):
        lines.append(f"skipped: {note}")
    for db in [d for d in ("sqlite", "postgresql", "mysql") if any(r["db"] == d for r in records)]:
        recs = [r for r in records if r["db"] == db]
        lines.append("")
        lines.append(f"=== {DB_TITLES[db]}: {meta['databases'].get(db, '')}")
        lines.extend(_per_op_table(records, recs))
        lines.append("")
        lines.extend(_lag_table(records, recs))
        cancels = [r for r in recs if r.get("cancel")]
        if cancels:
            lines.append("")
            lines.extend(_cancel_table(cancels, meta["config"]))
        for r in recs:
            for note in r.get("notes", []):
                lines.append(f"note ({_label(r)}): {note}")
            if r.get("error"):
                lines.append(f"ERROR ({_label(r)}): {r['error']}")
            if r.get("impl", "").startswith("anyio") and r.get("greenlet_loaded"):
                lines.append(f"WARNING ({_label(r)}): greenlet was imported in this process")
            if r.get("impl") == "anyio-C" and r.get("accelerated") is False:
                lines.append(f"WARNING ({_label(r)}): the C bridge was not active")
            if r.get("impl") == "anyio-py" and r.get("accelerated") is True:
                lines.append(f"WARNING ({_label(r)}): the C bridge was active")
    return "\n".join(lines)


def _per_op_table(records: List[Dict[str, Any]], recs: List[Dict[str, Any]]) -> List[str]:
    head1 = f"{'per-op time (µs)':<19} {'driver':<19}"
    head2 = f"{'implementation':<19} {'':<19}"
    for s in PER_OP:
        head1 += f" | {TITLES[s]:^26}"
        head2 += f" | {'µs':>10} {'x sync':>7} {'x off':>7}"
    out = [head1, head2, "-" * len(head2)]
    for r in recs:
        sync, official = _baselines(records, r)
        line = f"{_label(r):<19} {r.get('driver', ''):<19}"
        for s in PER_OP:
            v = _value(r, s)
            line += (
                f" | {_num(v):>10} {_ratio(v, _value(sync, s)):>7} "
                f"{_ratio(v, _value(official, s)):>7}"
            )
        out.append(line)
    return out


def _lag_table(records: List[Dict[str, Any]], recs: List[Dict[str, Any]]) -> List[str]:
    head = (
        f"{'ORM 40k-object load':<19} | {'load ms':>10} {'x sync':>7} {'x off':>7} | "
        f"{'max stall ms':>12} {'% load':>6} {'worst':>8} | {'outside GC':>10} "
        f"{'gen-2 GC ms':>11} {'n':>5} | {'idle gap':>8} | {'frozen: stall':>13} {'gen-2':>7}"
    )
    out = [head, "-" * len(head)]
    for r in recs:
        lag = r.get("scenarios", {}).get("lag")
        if not lag:
            continue
        sync, official = _baselines(records, r)
        v = lag["load_ms"]
        gap = lag.get("max_gap_ms")
        share = lag.get("gap_share")
        counts = lag.get("gc2_counts")
        out.append(
            f"{_label(r):<19} | {_num(v):>10} {_ratio(v, _value(sync, 'lag')):>7} "
            f"{_ratio(v, _value(official, 'lag')):>7} | "
            f"{_num(gap) if gap is not None else 'blocked':>12} "
            f"{_num(share * 100 if share is not None else None, '{:.1f}'):>6} "
            f"{_num(lag.get('worst_gap_ms')):>8} | {_num(lag.get('gap_outside_gc_ms')):>10} "
            f"{_num(lag.get('gc2_max_ms')):>11} "
            f"{'/'.join(str(c) for c in counts) if counts else '-':>5} | "
            f"{_num(lag.get('idle_max_gap_ms')):>8} | "
            f"{_num(lag.get('max_gap_frozen_ms')):>13} {_num(lag.get('gc2_max_frozen_ms')):>7}"
        )
    return out


def _cancel_table(recs: List[Dict[str, Any]], config: Dict[str, Any]) -> List[str]:
    head = (
        f"{'cancel after 0.5 s':<19} | {'regain ms':>9} {'error raised':<28} | "
        f"{'next query ms':>13} {'ran':>4} {'same conn':>9} | {'on server at regain':>19} "
        f"{'gone after s':>12}"
    )
    out = [head, "-" * len(head)]
    for r in recs:
        c = r["cancel"]
        if "failed" in c:
            out.append(f"{_label(r):<19} | failed: {c['failed']}")
            continue
        if "no_return_within_s" in c:
            out.append(
                f"{_label(r):<19} | {'>' + _num(c['no_return_within_s'] * 1e3, '{:.0f}'):>9} "
                "no control back: the trial's process was killed after "
                f"{c['no_return_within_s']:.0f} s"
            )
            continue
        running = c.get("server_query_running_at_regain")
        gone = c.get("server_query_gone_s")
        err = c.get("error") or ("(cancelled)" if c.get("cancelled") else "(none)")
        ran = "yes" if c.get("next_completed") else "NO"
        next_ms = _num(c.get("next_query_ms"))
        if not c.get("next_completed"):
            next_ms = f">{next_ms}" if "next_error" not in c else next_ms
        same = c.get("same_connection")
        out.append(
            f"{_label(r):<19} | {_num(c['regain_s'] * 1e3, '{:.1f}'):>9} {err[:28]:<28} | "
            f"{next_ms:>13} {ran:>4} {('-' if same is None else 'yes' if same else 'no'):>9} | "
            f"{('-' if running is None else 'yes' if running else 'no'):>19} "
            f"{('-' if running is None else _num(gone) if gone is not None else '>2 s later'):>12}"
        )
        if c.get("next_error"):
            out.append(f"{'':<19}   next query error: {c['next_error'][:120]}")
    return out


# ---------------------------------------------------------------------------
# chart

_COLORS = {
    "official/asyncio": "#d62728",
    "official/uvloop": "#ff9896",
    "anyio-C/asyncio": "#1f77b4",
    "anyio-C/uvloop": "#6baed6",
    "anyio-C/trio": "#08306b",
    "anyio-py/asyncio": "#2ca02c",
    "anyio-py/uvloop": "#98df8a",
    "anyio-py/trio": "#00441b",
    "anyio-native/asyncio": "#9467bd",
    "anyio-native/uvloop": "#c5b0d5",
}


def chart(result: Dict[str, Any], path: str) -> None:
    """Grouped bars of time relative to sync per scenario, and the loop-lag figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")

    records = result["results"]
    dbs = [d for d in ("sqlite", "postgresql", "mysql") if any(r["db"] == d for r in records)]
    scenarios = [*PER_OP, "lag"]
    fig, axes = plt.subplots(
        len(dbs), 2, figsize=(15, 4.2 * len(dbs)), squeeze=False,
        gridspec_kw={"width_ratios": [3, 1]},
    )  # fmt: skip
    for row, db in enumerate(dbs):
        recs = [r for r in records if r["db"] == db and r["impl"] != "sync"]
        sync = next((r for r in records if r["db"] == db and r["impl"] == "sync"), None)
        ax = axes[row][0]
        width = 0.8 / max(1, len(recs))
        ratios_all: List[float] = []
        for k, r in enumerate(recs):
            xs, ys = [], []
            for i, s in enumerate(scenarios):
                v, b = _value(r, s), _value(sync, s)
                if v is not None and b:
                    xs.append(i - 0.4 + width * (k + 0.5))
                    ys.append(v / b)
            ratios_all.extend(ys)
            ax.bar(xs, ys, width, label=_label(r), color=_COLORS.get(_label(r)))
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
        ax.set_xticks(range(len(scenarios)))
        ax.set_xticklabels([TITLES[s] for s in scenarios])
        ax.set_ylabel("time / sync SQLAlchemy (lower is better)")
        if ratios_all and max(ratios_all) / max(min(ratios_all), 1e-9) > 8:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.set_title(f"{DB_TITLES[db]}: per-op time relative to sync (dashed line = sync)")
        ax.legend(fontsize=7, ncol=2)

        ax2 = axes[row][1]
        labels, gaps = [], []
        for r in recs:
            lag = r.get("scenarios", {}).get("lag") or {}
            if lag.get("max_gap_ms") is not None:
                labels.append(_label(r))
                gaps.append(lag["max_gap_ms"])
        if gaps:
            ax2.barh(labels, gaps, color=[_COLORS.get(x) for x in labels])
            ax2.set_xscale("log")
            lo, hi = min(gaps) / 1.5, max(gaps) * 2.5
            ax2.set_xlim(lo, hi)
            ticks = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
            ax2.xaxis.set_major_locator(FixedLocator([t for t in ticks if lo <= t <= hi]))
            ax2.xaxis.set_major_formatter(plain)
            ax2.xaxis.set_minor_formatter(NullFormatter())
            for y, g in enumerate(gaps):
                ax2.text(g * 1.05, y, f"{g:.1f}", va="center", fontsize=7)
            ax2.invert_yaxis()
            ax2.tick_params(axis="y", labelsize=7)
        ax2.set_xlabel("max event-loop gap during the 40k load, ms (log)")
        ax2.set_title("loop responsiveness (lower is better)")
    meta = result["meta"]
    env = meta["environment"]
    fig.suptitle(
        f"sqlalchemy_anyio benchmark ({meta['mode']} run, {meta['date'][:10]}, "
        f"Python {env['python']}, SQLAlchemy {env['sqlalchemy']}, {env['cpus']} CPUs, "
        f"load average {meta['load_average_start'][0]:.1f} -> {meta['load_average_end'][0]:.1f})",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
