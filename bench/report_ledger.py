"""Report sections on the ledger: 5 its cost on the hot path, 6 rows per second in process."""

from __future__ import annotations

import math

from analysis import LedgerRow, compare, efficiency, ledger_rows, work
from report_format import LEDGER_NAMES, ratio_cell, table
from results import Results, Throughput
from stats import median
from workload import MODELS


def render_ledger(r: Results) -> list[str]:
    p = r.profile
    long_rows, short_rows = ledger_rows(r, "tput"), ledger_rows(r, "short20")
    if not long_rows and not short_rows:
        return []
    out = ["## 5. Ledger cost on the hot path", ""]
    out += [
        "Four gateway processes, identical but for the ledger: off, off again (a second process: the "
        "A/A control, which shows how far two identical processes differ on this machine), SQLite (a file "
        "in the scratch directory) and PostgreSQL (a database created for this run). Each gets "
        f"{p.ledger_concurrency} keep-alive connections looping requests, alone on core 0. The simulator "
        "sends usage (the gateway always asks for it), so no tokenizer runs.",
        "",
        f"- *Long fast streams*: `sim?{MODELS['tput']}` (the relay's per-chunk work; a stream ends every "
        f"~60 ms). {p.ledger_rounds} alternating rounds; in each, every gateway gets a run of "
        f"{p.ledger_long_seconds:g} s after 0.5 s of warm-up, the gateways' order rotating from round to "
        "round.",
        f"- *Many short streams*: `sim?{MODELS['short20']}` as fast as the gateway goes (the per-stream "
        "work, where a row per stream weighs most). Interleaved slices: the connections to all four "
        "gateways stay open; one gateway at a time is loaded for a slice (0.15 s of ramp, then "
        f"{p.slice_seconds:g} s measured, then its last requests finish), round-robin, "
        f"{p.slice_cycles} cycles after a warm-up cycle, the order rotating: "
        f"{p.slice_cycles * p.slice_seconds:g} s measured per gateway. Slices of one cycle lie a few "
        "seconds apart, so the ratio between two gateways within a cycle cancels most of the machine's "
        "drift. *Chunks* = SSE events at the client (role, 20 content, finish, `[DONE]`).",
        "",
        "*x off* = the median over rounds (cycles) of this gateway's figure / the ledger-off gateway's "
        "in the same round; *per CPU-s* = work per gateway CPU-second (chunks, or streams = 1 / CPU per "
        "stream). *PostgreSQL server CPU*: all `postgres` processes (psutil), as a share of one core; "
        "*steal*: CPU time the hypervisor took from this VM's two vCPUs (`/proc/stat`), as a share of one "
        "core. Medians.",
        "",
    ]
    if r.baseline is not None:
        out += [
            "With `--baseline` the baseline's gateway was a fifth gateway in these rounds and slices (in the "
            "rotation, and a slice of its own in every cycle); it is compared in *Against the baseline*, "
            "not in these tables.",
            "",
        ]

    def pg_cell(row: LedgerRow) -> str:
        if math.isnan(row.pg_busy):
            return ""
        return f"{100 * row.pg_busy:.0f} % ({row.pg_ms:.3f} ms per stream)"

    def steal_cell(runs: list[Throughput]) -> str:
        steal = median(t.steal / t.seconds for t in runs)
        return "" if math.isnan(steal) else f"{100 * steal:.1f} %"

    for key, title in (("tput", "Long fast streams"), ("short20", "Many short streams")):
        rows_by = long_rows if key == "tput" else short_rows
        if not rows_by:
            continue
        unit = "Chunks/s" if key == "tput" else "Streams/s"
        out += [f"### {title}", ""]
        rows = []
        for label, row in rows_by.items():
            c = compare(r, key, label) if label != "gw-off" else None
            values = [work(key, t) for t in row.runs]
            e = median(efficiency(key, t) for t in row.runs)
            rows.append(
                [
                    LEDGER_NAMES[label],
                    f"{median(values):,.0f}",
                    f"**{c.ratio:.3f}**" if c else "",
                    ", ".join(f"{v:,.0f}" for v in values)
                    if key == "tput"
                    else f"{min(values):,.0f}-{max(values):,.0f}",
                    f"{row.rate:,.0f}" if key == "short20" else f"{row.streams:,.1f}",
                    f"{100 * row.busy:.0f} %",
                    f"{e:,.0f}" + (f" ({1000 / e:.3f} ms)" if key == "short20" and e else ""),
                    ratio_cell(c.efficiency) if c else "",
                    pg_cell(row),
                    steal_cell(row.runs),
                    row.core1,
                    str(row.errors),
                ]
            )
        out += table(
            [
                "Gateway",
                f"{unit} (median)",
                "x off",
                "Each round" if key == "tput" else "Range over the slices",
                "Chunks/s" if key == "short20" else "Streams/s",
                "Gateway CPU",
                "Per CPU-s" + (" (CPU per stream)" if key == "short20" else ""),
                "Per CPU-s x off",
                "PostgreSQL server CPU",
                "Steal",
                "Sim + load CPU (core 1)",
                "Errors",
            ],
            rows,
        )
        out += [""]
        for label in ("gw-off2", "gw-sqlite", "gw-pg"):
            c = compare(r, key, label)
            if c and c.rounds:
                out.append(
                    f"- {LEDGER_NAMES[label]} / ledger off, {unit.lower()}, "
                    f"{'round' if key == 'tput' else 'cycle'} by {'round' if key == 'tput' else 'cycle'}: "
                    + ", ".join(f"{x:.3f}" for x in c.rounds)
                    + f" (ratio of the medians: {c.of_medians:.3f})"
                )
        out += [""]
    rows_text = []
    for label in ("gw-sqlite", "gw-pg"):
        if label in r.rows_in_db:
            db = "SQLite" if label == "gw-sqlite" else "PostgreSQL"
            rows_text.append(
                f"the {db} gateway's database holds {r.rows_in_db[label]:,} rows for "
                f"{r.sent.get(label, 0):,} streams the load generator started through it "
                f"({r.rows_in_spool.get(label, 0):,} rows left in its spool)"
            )
    if rows_text:
        out += ["After the run " + "; ".join(rows_text) + ".", ""]
    return out


def render_rows_bench(r: Results) -> list[str]:
    data = r.rows_bench
    if not data:
        return []
    out = ["## 6. Ledger rows per second", ""]
    out += [
        "`bench/ledger_rows.py`, in process, no HTTP: the gateway's own `LedgerWriter` (batches of "
        f"{data['batch_max_rows']} rows or {data['batch_max_seconds']:g} s) over `LedgerStore` + `Spool`, as "
        "the app wires them. N finished `StreamRecord`s built first, then all submitted; rows/s = N / time "
        "from the first `submit` to `writer.close()` having written the last batch. *Upstream usage*: "
        "token counts known (the pure database path); *estimated*: `usage_source=None`, so the writer "
        f"counts the prompt (2 messages) and a {data['completion_words']}-word answer with tiktoken first. "
        "*Unreachable*: the URL points at a closed loopback port (`connect_timeout_seconds=1`): the store "
        "fails once in `start()`, after which every batch goes to the fsynced spool. *CPU per row*: the "
        "benchmark process (pinned to one core; all threads); *PostgreSQL CPU*: the server's processes. "
        "A fresh database per variant; rows counted afterwards where they went.",
        "",
    ]
    rows = []
    for row in data["summary"]:
        if row["paced_rate"]:
            continue
        where = (
            f"{row['rows_in_spool'][0]:,} in the spool"
            if row["database"].endswith("unreachable")
            else f"{row['rows_in_db'][0]:,} in the table, {row['rows_in_spool'][0]:,} in the spool"
        )
        server = row["server_cpu_us_per_row"]
        rows.append(
            [
                row["database"],
                "upstream" if row["usage"] == "upstream" else "estimated (tiktoken)",
                f"{row['rows']:,}",
                f"**{row['rows_per_s']:,.0f}**",
                f"{row['cpu_us_per_row']:.1f}",
                "" if server is None else f"{server:.1f}",
                f"{row['start_seconds']:.2f}",
                where,
                str(row["batches_failed"] + row["write_failures"]),
            ]
        )
    out += table(
        [
            "Database",
            "Usage",
            "Rows",
            "Rows/s",
            "CPU µs per row",
            "PostgreSQL CPU µs per row",
            "`store.start()` (s)",
            "Rows found afterwards",
            "Failures",
        ],
        rows,
    )
    paced = [row for row in data["summary"] if row["paced_rate"]]
    if paced:
        first = paced[0]
        out += ["", "### The ledger's CPU per stream in the gateway's process", ""]
        out += [
            f"The same writer fed {first['paced_rate']:,.0f} records/s for "
            f"{first['rows'] / first['paced_rate']:g} s (a few every 10 ms, as a busy gateway's streams "
            "end), so its batches have a gateway's sizes; without a store (what the ledger-off gateway "
            f"runs), with SQLite and with PostgreSQL, alternating; {first['rounds']} round(s), medians. The "
            "process's CPU per record includes the feeding loop, the same in every row; *minus no store* "
            "(the median of the round-by-round differences) is what the ledger adds to each stream in the "
            "gateway's process. Usage known (no tokenizer).",
            "",
        ]
        names = {"none": "no store (ledger off)", "sqlite": "SQLite", "postgresql": "PostgreSQL"}
        out += table(
            [
                "Store",
                "Records",
                "CPU µs per record (each round)",
                "Minus no store (µs)",
                "PostgreSQL server CPU µs per row",
                "Rows in the table afterwards",
            ],
            [
                [
                    names.get(row["database"], row["database"]),
                    f"{row['rows']:,} x {row['rounds']}",
                    f"{row['cpu_us_per_row']:.1f} "
                    f"({', '.join(f'{x:.1f}' for x in row['cpu_us_per_row_each'])})",
                    "" if row["minus_off_us"] is None else f"**{row['minus_off_us']:+.1f}**",
                    "" if row["server_cpu_us_per_row"] is None else f"{row['server_cpu_us_per_row']:.1f}",
                    "" if row["rows_in_db"][-1] is None else f"{row['rows_in_db'][-1]:,}",
                ]
                for row in paced
            ],
        )
    return [*out, ""]
