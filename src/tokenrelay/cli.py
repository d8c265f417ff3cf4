"""``tokenrelay`` command line: serve, sim, migrate."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import uvicorn

from tokenrelay.config import CONFIG_FILE_ENV, load_settings


def _serve(args: argparse.Namespace) -> int:
    if args.config:
        # Workers are separate processes: they find the file through the environment.
        os.environ[CONFIG_FILE_ENV] = str(Path(args.config).resolve())
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers)) if v}
    settings = load_settings(**overrides)
    # uvicorn re-raises the stop signal once it has shut down; a no-op handler lets the
    # process then exit 0 after a graceful drain instead of dying by that signal.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    uvicorn.run(
        "tokenrelay.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,
        access_log=False,
        timeout_keep_alive=30,
        # Streams end by themselves after drain_seconds; this is only the last resort.
        timeout_graceful_shutdown=int(settings.drain_seconds) + 10,
    )
    return 0


def _sim(args: argparse.Namespace) -> int:
    from tokenrelay.sim.server import SimulatedUpstream

    uvicorn.run(
        SimulatedUpstream(),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from tokenrelay.ledger.db import upgrade_to_head

    settings = load_settings(Path(args.config) if args.config else None)
    upgrade_to_head(settings.ledger.database_url)
    print(f"ledger schema is up to date ({settings.ledger.database_url.split('@')[-1]})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="tokenrelay", description="LLM streaming gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.add_argument("--config", help="TOML configuration file")
    serve.set_defaults(handler=_serve)

    sim = commands.add_parser("sim", help="run the simulated OpenAI-compatible upstream")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8001)
    sim.set_defaults(handler=_sim)

    migrate = commands.add_parser("migrate", help="create or upgrade the ledger schema")
    migrate.add_argument("--config", help="TOML configuration file")
    migrate.set_defaults(handler=_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tokenrelay`` command."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"tokenrelay: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
