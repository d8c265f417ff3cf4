"""Fixtures: real servers in subprocesses, talking over loopback TCP (built from ``helpers``).

* ``sim``: the simulated upstream (``tokenrelay sim``), one per session.
* ``gateway``: ``tokenrelay serve`` on SQLite with the model table of ``helpers``, one per session.
* ``pg_gateway``: the same on PostgreSQL (127.0.0.1:5432/test).
* ``start_gateway``: a private gateway for tests that stop it or need other settings.
* ``pg_proxy`` / ``redis_proxy``: loopback proxies in front of PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.helpers import (
    PG_ADMIN_URL,
    REDIS_URL,
    Gateway,
    Sim,
    TcpProxy,
    launch_gateway,
    model_table,
    postgres_available,
    redis_available,
    start_sim,
)


@pytest.fixture(scope="session")
def sim() -> Iterator[Sim]:
    started = start_sim()
    yield started
    started.stop()


@pytest.fixture(scope="session")
def gateway(sim: Sim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    gw = launch_gateway(
        tmp, config=model_table(sim.base_url), database_url=f"sqlite+aiosqlite:///{tmp / 'ledger.db'}"
    )
    yield gw
    gw.stop()


def _required(env: str, what: str) -> None:
    if os.environ.get(env) == "required":
        pytest.fail(f"{what} is required ({env}=required) but is not running")
    pytest.skip(f"{what} is not running")


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    if not postgres_available():
        _required("TOKENRELAY_TEST_POSTGRES", "PostgreSQL on 127.0.0.1:5432")
    name = f"tokenrelay_test_{uuid.uuid4().hex[:8]}"

    async def admin(statement: str) -> None:
        engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    def run(statement: str) -> None:
        # In a thread of its own: the fixture may be first requested from inside a running loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, admin(statement)).result()

    run(f'CREATE DATABASE "{name}"')
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_gateway(sim: Sim, pg_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("pg-gateway")
    gw = launch_gateway(tmp, config=model_table(sim.base_url), database_url=pg_database_url)
    yield gw
    gw.stop()


@pytest.fixture
def start_gateway(sim: Sim, tmp_path: Path) -> Iterator[Any]:
    """Start a private gateway: ``start_gateway(env={...})``; stopped (killed if need be) at the end."""
    started: list[Gateway] = []

    def start(
        env: dict[str, str] | None = None,
        database_url: str | None = None,
        config: str | None = None,
        args: tuple[str, ...] = (),
    ) -> Gateway:
        gw = launch_gateway(
            tmp_path,
            config=config if config is not None else model_table(sim.base_url),
            database_url=database_url or f"sqlite+aiosqlite:///{tmp_path / f'ledger-{len(started)}.db'}",
            env=env,
            args=args,
        )
        started.append(gw)
        return gw

    yield start
    for gw in started:
        if gw.process.poll() is None:
            os.killpg(gw.process.pid, signal.SIGKILL)
            gw.process.wait(10)


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    if not postgres_available():
        _required("TOKENRELAY_TEST_POSTGRES", "PostgreSQL on 127.0.0.1:5432")
    proxy = TcpProxy(5432).start()
    yield proxy
    proxy.close()


@pytest.fixture
def redis_url() -> str:
    """The shared Redis (skipped, or failed where required, when it is not running)."""
    if not redis_available():
        _required("TOKENRELAY_TEST_REDIS", "Redis on 127.0.0.1:6379")
    return REDIS_URL


@pytest.fixture
def redis_proxy() -> Iterator[TcpProxy]:
    if not redis_available():
        _required("TOKENRELAY_TEST_REDIS", "Redis on 127.0.0.1:6379")
    proxy = TcpProxy(6379).start()
    yield proxy
    proxy.close()
