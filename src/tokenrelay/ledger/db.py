"""The ledger database: engine, readiness, and migrations (Alembic).

Alembic is imported only to migrate (``tokenrelay migrate``, or an empty database at
start-up): with its templating and syntax-highlighting dependencies it is about 12 MiB of a
gateway's memory. Start-up compares the database's revision with ``SCHEMA_HEAD`` instead.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tokenrelay.config import LedgerSettings

if TYPE_CHECKING:
    from alembic.config import Config

# The newest packaged migration; ``tests/unit/test_schema_head.py`` fails if a migration is
# added without moving this.
SCHEMA_HEAD = "0003"


def create_engine(settings: LedgerSettings) -> AsyncEngine:
    """An async engine for the ledger URL (SQLite in WAL mode, or PostgreSQL with a sized pool)."""
    url = make_url(settings.database_url)
    kwargs: dict[str, Any] = {"pool_pre_ping": settings.pool_pre_ping}
    if url.get_backend_name() != "sqlite":
        kwargs["pool_size"] = settings.pool_size
        kwargs["pool_timeout"] = settings.pool_timeout_seconds
        kwargs["connect_args"] = {"timeout": settings.connect_timeout_seconds}
    engine = create_async_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets readers (readyz, reports) work while the writer commits.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

    return engine


def alembic_config(database_url: str) -> Config:
    """Alembic configuration pointing at the packaged migrations."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("tokenrelay.ledger") / "migrations"))
    # Passed as an attribute, not an option: option values are %-interpolated and URLs contain %.
    config.attributes["database_url"] = database_url
    return config


def upgrade_to_head(database_url: str) -> None:
    """Apply every migration (blocking; runs its own event loop)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), "head")


async def schema_revision(engine: AsyncEngine) -> tuple[str | None, str]:
    """(current revision in the DB, newest packaged revision)."""

    def current(connection: Connection) -> str | None:
        # What Alembic's MigrationContext.get_current_revision reads, without importing Alembic.
        if not inspect(connection).has_table("alembic_version"):
            return None
        revisions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        if len(revisions) > 1:
            raise RuntimeError(f"ledger schema has several heads: {sorted(revisions)}")
        return revisions[0] if revisions else None

    async with engine.connect() as connection:
        return await connection.run_sync(current), SCHEMA_HEAD


async def prepare_schema(engine: AsyncEngine, *, migrate_if_empty: bool) -> None:
    """Create the schema in an empty DB; refuse to run against an outdated one."""
    current, head = await schema_revision(engine)
    if current == head:
        return
    if current is None and migrate_if_empty:
        url = engine.url.render_as_string(hide_password=False)
        try:
            await asyncio.to_thread(upgrade_to_head, url)
        except Exception:
            # Several workers starting on one empty DB race to migrate it; the loser finds it done.
            if (await schema_revision(engine))[0] != head:
                raise
        return
    raise RuntimeError(
        f"ledger schema is at revision {current}, this tokenrelay needs {head}: run `tokenrelay migrate`"
    )


async def is_reachable(engine: AsyncEngine, timeout_seconds: float = 2.0) -> bool:
    """True when a trivial query answers in time."""
    try:
        async with asyncio.timeout(timeout_seconds), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
