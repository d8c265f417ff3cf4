"""Ledger rows per second, in process: writer -> store -> database (or spool), no HTTP.

    python bench/ledger_rows.py                  # 20,000 rows per variant, prints a table
    python bench/ledger_rows.py --rows 5000 --json out.json

Drives the gateway's own ledger classes the way the app's lifespan wires them: a ``TokenCounter``,
a ``LedgerStore`` over ``create_engine(LedgerSettings(...))`` and a ``Spool``, and a
``LedgerWriter`` (batches of up to 200 rows or 0.1 s). N finished ``StreamRecord``\\s are built
first, then submitted all at once; the clock runs from the first ``submit`` until
``writer.close()`` has written the last batch. Variants:

* SQLite and PostgreSQL (a fresh database each, created and dropped here), with the usage
  already known (``UsageSource.UPSTREAM``: the pure database path) and unknown
  (``usage_source=None``: the writer counts tokens with tiktoken in a worker thread first);
* PostgreSQL unreachable (a closed loopback port, ``connect_timeout_seconds=1``): the store fails
  once in ``start()`` and every batch then goes to the fsynced spool;
* paced (``--paced-rate`` rows/s for ``--paced-seconds``, ``--paced-rounds`` alternating rounds,
  usage known), as a busy gateway's
  streams end, so batches have a gateway's sizes: no store (the ledger disabled), SQLite,
  PostgreSQL. The CPU per row with a store minus without one is what the ledger adds to each
  stream in the gateway's process.

Afterwards the rows are counted where they went (the table, or the spool's lines). Run from a
checkout: the script imports ``tokenrelay`` from the ``src`` directory next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import socket
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # this checkout's tokenrelay, whatever is installed

from sqlalchemy import text  # noqa: E402

import pgdb  # noqa: E402  (bench/ is the script's directory, first on sys.path)
import tokenrelay  # noqa: E402
from tokenrelay.config import LedgerSettings  # noqa: E402
from tokenrelay.ledger.db import create_engine  # noqa: E402
from tokenrelay.ledger.spool import Spool  # noqa: E402
from tokenrelay.ledger.store import LedgerStore  # noqa: E402
from tokenrelay.ledger.tokens import TokenCounter  # noqa: E402
from tokenrelay.ledger.writer import LedgerWriter  # noqa: E402
from tokenrelay.observability.metrics import NoMetrics  # noqa: E402
from tokenrelay.record import StreamRecord, StreamStatus, UsageSource  # noqa: E402

BATCH_MAX_ROWS = 200
BATCH_MAX_SECONDS = 0.1
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "Summarise the plot of a short story about a lighthouse keeper."},
]
# 60 words of answer: what the tokenizer has to count when the upstream sent no usage.
COMPLETION = [
    ("" if i == 0 else " ") + word for i, word in enumerate(("lorem ipsum dolor sit amet " * 12).split())
]


@dataclass
class Variant:
    name: str
    database: str  # "sqlite" | "postgresql" | "postgresql, unreachable" | "none" (ledger off)
    usage: str  # "upstream" | "estimated"
    rows: int
    paced_rate: float | None = None  # rows submitted per second (None: all at once)
    seconds: float = 0.0  # first submit -> writer closed
    cpu_seconds: float = 0.0  # this process (all threads) over the same span
    server_cpu_seconds: float | None = None  # the PostgreSQL server over the same span
    start_seconds: float = 0.0  # store.start() (includes the first failure when unreachable)
    rows_in_db: int | None = None
    rows_in_spool: int = 0
    rows_written: int = 0
    rows_spooled: int = 0
    write_failures: int = 0
    batches_failed: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else float("nan")

    @property
    def cpu_us_per_row(self) -> float:
        return 1e6 * self.cpu_seconds / self.rows


def finished_record(i: int, usage: str) -> StreamRecord:
    now = datetime.now(UTC)
    record = StreamRecord(
        stream_id=uuid.uuid4().hex,
        request_id=f"bench-{i}",
        model="bench-model",
        upstream_model="sim?tokens=60",
        messages=MESSAGES,
        tokenizer_encoding="cl100k_base",
        started_at=now,
        started_mono=0.0,
        first_token_mono=0.05,
        finished_at=now,
        finished_mono=0.5,
        chunk_count=len(COMPLETION) + 2,
        completion_parts=list(COMPLETION),
        finish_reason="stop",
        status=StreamStatus.COMPLETED,
    )
    if usage == "upstream":
        record.prompt_tokens = 31
        record.completion_tokens = len(COMPLETION)
        record.usage_source = UsageSource.UPSTREAM
    return record


def spool_lines(directory: Path) -> int:
    total = 0
    for path in directory.glob("spool-*.jsonl"):
        with path.open("rb") as handle:
            total += sum(1 for _ in handle)
    return total


async def run_variant(
    variant: Variant, url: str | None, spool_dir: Path, paced_rate: float | None = None, **settings: Any
) -> Variant:
    """Submit the variant's records (all at once, or ``paced_rate`` per second) and time the writer.

    ``url=None``: the writer without a store, as a gateway with the ledger disabled runs it.
    """
    counter = TokenCounter()
    await counter.load([])
    engine, store = None, None
    if url is not None:
        ledger = LedgerSettings(database_url=url, spool_dir=spool_dir, **settings)
        engine = create_engine(ledger)
        spool = Spool(spool_dir, min_free_bytes=0)
        store = LedgerStore(engine=engine, spool=spool, settings=ledger, events=NoMetrics())
    records = [finished_record(i, variant.usage) for i in range(variant.rows)]
    postgres = variant.database == "postgresql"  # the server is not involved when unreachable
    server_cpu = pgdb.ServerCpu() if postgres else None
    try:
        if store is not None:
            t = time.perf_counter()
            await store.start()
            variant.start_seconds = time.perf_counter() - t
        writer = LedgerWriter(
            store=store, counter=counter, batch_max_rows=BATCH_MAX_ROWS, batch_max_seconds=BATCH_MAX_SECONDS
        )
        await writer.start()
        if server_cpu:
            server_cpu.refresh()
        server0 = server_cpu() if server_cpu else 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        if paced_rate is None:
            for record in records:
                writer.submit(record)
        else:  # as streams end in a gateway: a few at a time, every 10 ms
            sent = 0
            while sent < len(records):
                due = min(len(records), int((time.perf_counter() - t0) * paced_rate) + 1)
                while sent < due:
                    writer.submit(records[sent])
                    sent += 1
                await asyncio.sleep(0.01)
        await writer.close()
        variant.seconds = time.perf_counter() - t0
        variant.cpu_seconds = time.process_time() - c0
        if server_cpu:
            variant.server_cpu_seconds = server_cpu() - server0
        variant.batches_failed = writer.batches_failed
        if store is not None:
            await store.close()
            variant.rows_written = store.rows_written
            variant.rows_spooled = store.rows_spooled
            variant.write_failures = store.write_failures
        if engine is not None and variant.database != "postgresql, unreachable":
            async with engine.connect() as connection:
                variant.rows_in_db = int(
                    (await connection.execute(text("SELECT count(*) FROM usage_record"))).scalar_one()
                )
        variant.rows_in_spool = spool_lines(spool_dir)
    finally:
        if engine is not None:
            await engine.dispose()
    return variant


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def measure(
    rows: int,
    rounds: int,
    workdir: Path,
    admin_dsn: str,
    paced_rate: float,
    paced_seconds: float,
    paced_rounds: int,
) -> list[Variant]:
    results: list[Variant] = []
    databases: list[str] = []
    try:
        for round_no in range(rounds):
            for usage in ("upstream", "estimated"):
                sqlite_url = f"sqlite+aiosqlite:///{workdir / f'ledger-{round_no}-{usage}.db'}"
                v = Variant(f"sqlite-{usage}", "sqlite", usage, rows)
                results.append(await run_variant(v, sqlite_url, workdir / f"spool-sq-{round_no}-{usage}"))
                name, pg_url = await pgdb.create_database(admin_dsn)
                databases.append(name)
                v = Variant(f"postgresql-{usage}", "postgresql", usage, rows)
                results.append(await run_variant(v, pg_url, workdir / f"spool-pg-{round_no}-{usage}"))
                await pgdb.drop_database(name, admin_dsn)
                databases.remove(name)
            dead = f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/nowhere"
            v = Variant("postgresql-unreachable", "postgresql, unreachable", "upstream", rows)
            results.append(
                await run_variant(
                    v,
                    dead,
                    workdir / f"spool-dead-{round_no}",
                    connect_timeout_seconds=1.0,
                    shutdown_flush_seconds=1.0,
                )
            )
        # Paced like a busy gateway's finished streams, so the batches have a gateway's sizes: the
        # writer's CPU per row with each store and without one (the ledger-off gateway), the three
        # alternating, ``paced_rounds`` times.
        paced_rows = max(1, int(paced_rate * paced_seconds))
        name, pg_url = await pgdb.create_database(admin_dsn)
        databases.append(name)
        urls: dict[str, str | None] = {
            "none": None,
            "sqlite": f"sqlite+aiosqlite:///{workdir / 'ledger-paced.db'}",
            "postgresql": pg_url,
        }
        for round_no in range(paced_rounds):
            for database, url in urls.items():
                v = Variant(f"paced-{database}", database, "upstream", paced_rows, paced_rate)
                spool = workdir / f"spool-paced-{database}-{round_no}"
                results.append(await run_variant(v, url, spool, paced_rate))
        await pgdb.drop_database(name, admin_dsn)
        databases.remove(name)
    finally:
        for name in databases:
            with contextlib.suppress(Exception):
                await pgdb.drop_database(name, admin_dsn)
    return results


def summarise(results: list[Variant]) -> list[dict[str, Any]]:
    """One row per variant: medians over the rounds, plus every round's rows/s."""
    out = []
    off = [v for v in results if v.name == "paced-none"]
    for name in dict.fromkeys(v.name for v in results):
        runs = [v for v in results if v.name == name]
        first = runs[0]
        server = [v.server_cpu_seconds for v in runs if v.server_cpu_seconds is not None]
        out.append(
            {
                "name": name,
                "database": first.database,
                "usage": first.usage,
                "rows": first.rows,
                "paced_rate": first.paced_rate,
                "rounds": len(runs),
                "rows_per_s": statistics.median(v.rows_per_s for v in runs),
                "rows_per_s_each": [round(v.rows_per_s) for v in runs],
                "cpu_us_per_row": statistics.median(v.cpu_us_per_row for v in runs),
                "cpu_us_per_row_each": [round(v.cpu_us_per_row, 1) for v in runs],
                # Paced runs: CPU per row minus the store-less writer's in the same round (median).
                "minus_off_us": (
                    statistics.median(
                        v.cpu_us_per_row - o.cpu_us_per_row for v, o in zip(runs, off, strict=False)
                    )
                    if first.paced_rate and off and name != "paced-none"
                    else None
                ),
                "server_cpu_us_per_row": (
                    statistics.median(1e6 * s / first.rows for s in server) if server else None
                ),
                "start_seconds": statistics.median(v.start_seconds for v in runs),
                "rows_in_db": [v.rows_in_db for v in runs],
                "rows_in_spool": [v.rows_in_spool for v in runs],
                "rows_written": [v.rows_written for v in runs],
                "rows_spooled": [v.rows_spooled for v in runs],
                "write_failures": sum(v.write_failures for v in runs),
                "batches_failed": sum(v.batches_failed for v in runs),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000, help="rows per variant (default 20,000)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every variant (median reported)")
    parser.add_argument("--paced-rate", type=float, default=800.0, help="rows/s of the paced variants")
    parser.add_argument("--paced-seconds", type=float, default=3.0, help="length of one paced run")
    parser.add_argument("--paced-rounds", type=int, default=3, help="alternating rounds of the paced runs")
    parser.add_argument("--pg", default=pgdb.ADMIN_DSN, help="maintenance DSN to create databases from")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # the unreachable variant logs errors by design
    if problem := pgdb.reachable(args.pg):
        print(f"PostgreSQL not reachable at {args.pg}: {problem}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tokenrelay-ledger-rows-") as tmp:
        results = asyncio.run(
            measure(
                args.rows,
                args.rounds,
                Path(tmp),
                args.pg,
                args.paced_rate,
                args.paced_seconds,
                args.paced_rounds,
            )
        )
    summary = summarise(results)
    print(f"tokenrelay from {tokenrelay.__file__}")
    print(f"{'variant':<24} {'rows/s':>9} {'CPU us/row':>11} {'PG CPU us/row':>14}  rows in DB / spool")
    for row in summary:
        server = row["server_cpu_us_per_row"]
        print(
            f"{row['name']:<24} {row['rows_per_s']:>9,.0f} {row['cpu_us_per_row']:>11.1f} "
            f"{'' if server is None else f'{server:.1f}':>14}  {row['rows_in_db']} / {row['rows_in_spool']}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "tokenrelay_file": tokenrelay.__file__,
                    "batch_max_rows": BATCH_MAX_ROWS,
                    "batch_max_seconds": BATCH_MAX_SECONDS,
                    "completion_words": len(COMPLETION),
                    "summary": summary,
                    "runs": [asdict(v) for v in results],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
