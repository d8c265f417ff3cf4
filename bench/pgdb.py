"""Throw-away PostgreSQL databases for the benchmarks (asyncpg, no tokenrelay import).

Every benchmark that writes to PostgreSQL creates its own database, ``tokenrelay_bench_<hex>``,
and drops it (``WITH (FORCE)``) when it is done, so nothing is left behind and no run sees
another's rows. ``TOKENRELAY_BENCH_PG`` overrides the maintenance DSN the databases are created
from (default ``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import asyncio
import os
import secrets

import asyncpg
import psutil

ADMIN_DSN = os.environ.get("TOKENRELAY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _server(admin_dsn: str) -> str:
    """``user@host:port`` of a DSN, for building the URLs of the databases created there."""
    rest = admin_dsn.split("://", 1)[1]
    return rest.rsplit("/", 1)[0]


async def create_database(admin_dsn: str = ADMIN_DSN, prefix: str = "tokenrelay_bench") -> tuple[str, str]:
    """Create an empty database; returns (its name, its SQLAlchemy asyncpg URL)."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    connection = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return name, f"postgresql+asyncpg://{_server(admin_dsn)}/{name}"


async def drop_database(name: str, admin_dsn: str = ADMIN_DSN) -> None:
    """Drop a database made by ``create_database`` (closing whatever is still connected to it)."""
    if not name.startswith("tokenrelay_bench"):
        raise ValueError(f"refusing to drop {name!r}: not a benchmark database")
    connection = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def count_rows(sqlalchemy_url: str, table: str = "usage_record") -> int:
    """Rows in ``table`` of the database behind a ``postgresql+asyncpg://`` URL."""
    connection = await asyncpg.connect(sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await connection.close()


def reachable(admin_dsn: str = ADMIN_DSN) -> str | None:
    """None when the server answers; else why not (for a message, not an exception)."""

    async def probe() -> None:
        connection = await asyncpg.connect(admin_dsn, timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class ServerCpu:
    """CPU of the server's processes, cheaply: ``refresh()`` scans all processes (milliseconds, do it
    outside a measurement window); calling the object then only reads those processes' times."""

    def __init__(self) -> None:
        self.procs: list[psutil.Process] = []
        self.refresh()

    def refresh(self) -> None:
        self.procs = [
            p for p in psutil.process_iter(["name"]) if p.info["name"] in ("postgres", "postmaster")
        ]

    def __call__(self) -> float:
        total = 0.0
        for proc in self.procs:
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += times.user + times.system
        return total


def server_cpu_seconds() -> float:
    """User+system CPU of all ``postgres`` processes (the server's share of a measurement)."""
    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("postgres", "postmaster"):
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += times.user + times.system
    return total
