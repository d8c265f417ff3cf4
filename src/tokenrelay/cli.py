"""``tokenrelay`` command line: serve, sim, migrate, chat, top, keys."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenrelay.client import ChatResult, Client

# Imports of the server's parts sit inside the commands that need them: `tokenrelay chat`
# starts in a fraction of the time without them.


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tokenrelay.catalog import load_settings
    from tokenrelay.config import CONFIG_FILE_ENV

    if args.config:
        # Workers are separate processes: they find the file through the environment.
        os.environ[CONFIG_FILE_ENV] = str(Path(args.config).resolve())
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers)) if v}
    # Workers read their settings from the environment: they see the flags there too.
    for name, value in overrides.items():
        os.environ[f"TOKENRELAY_{name.upper()}"] = str(value)
    settings = load_settings()
    if not settings.auth.enabled and settings.host not in LOOPBACK_HOSTS:
        print(
            f"tokenrelay: refusing to serve on {settings.host} without API keys: anyone who can reach "
            "it could spend your model budget. Set auth.enabled = true (TOKENRELAY_AUTH__ENABLED=true) "
            "and create keys with `tokenrelay keys create`, or bind to 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    # uvicorn re-raises the stop signal once it has shut down; a no-op handler lets the
    # process then exit 0 after a graceful drain instead of dying by that signal.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    metrics_dir = _multiprocess_metrics_dir(settings.workers)
    try:
        uvicorn.run(
            "tokenrelay.app:create_app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_config=None,
            # The app's logging set-up decides (observability/logging.py: no query strings).
            access_log=settings.access_log,
            timeout_keep_alive=30,
            # Streams end by themselves after drain_seconds; this is only the last resort.
            timeout_graceful_shutdown=int(settings.drain_seconds) + 10,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _multiprocess_metrics_dir(workers: int) -> str | None:
    """With several workers, a fresh directory where they share their metrics (made here)."""
    if workers < 2 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    path = tempfile.mkdtemp(prefix="tokenrelay-metrics-")
    # Set before the workers start: prometheus-client picks its storage when it is imported.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def _sim(args: argparse.Namespace) -> int:
    import uvicorn

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
    from tokenrelay.catalog import load_settings
    from tokenrelay.ledger.db import upgrade_to_head

    settings = load_settings(Path(args.config) if args.config else None)
    upgrade_to_head(settings.ledger.database_url)
    print(f"ledger schema is up to date ({settings.ledger.database_url.split('@')[-1]})")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from tokenrelay.client import Client

    params: dict[str, Any] = {}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        params["temperature"] = args.temperature
    history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    prompt = args.prompt if args.prompt is not None else (None if sys.stdin.isatty() else sys.stdin.read())
    with Client(args.url) as client:
        if prompt is not None:
            code, _ = _answer(client, [*history, {"role": "user", "content": prompt}], args, params)
            return code
        # No prompt and a terminal: a conversation, until Ctrl-D (or Ctrl-C at the prompt).
        print(
            f"tokenrelay chat with {client.base_url} — Ctrl-C stops an answer, Ctrl-D quits", file=sys.stderr
        )
        while True:
            try:
                line = input("you> ")
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                return 0
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            _, answer = _answer(client, history, args, params)
            if answer:
                history.append({"role": "assistant", "content": answer})
            else:
                history.pop()


def _answer(
    client: Client, messages: list[dict[str, str]], args: argparse.Namespace, params: dict[str, Any]
) -> tuple[int, str]:
    """Stream one answer to stdout; returns the exit code and the text shown."""
    from tokenrelay.client import APIError, Delta, TokenRelayClientError

    shown: list[str] = []
    try:
        with client.stream_chat(messages, model=args.model, request_id=args.request_id, **params) as stream:
            for event in stream:
                if isinstance(event, Delta):
                    shown.append(event.text)
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
            result = stream.result
    except KeyboardInterrupt:
        # Leaving the stream's `with` closed the connection: the gateway aborts the upstream.
        print("\n[stopped]", file=sys.stderr)
        return 130, "".join(shown)
    except TokenRelayClientError as exc:
        if shown:
            print(file=sys.stderr)
        detail = f"{exc.code}, HTTP {exc.status}" if isinstance(exc, APIError) else exc.code
        print(f"tokenrelay chat: {exc.message} ({detail})", file=sys.stderr)
        if isinstance(exc, APIError) and exc.retry_after is not None:
            print(f"tokenrelay chat: retry after {exc.retry_after:g} s", file=sys.stderr)
        return 1, ""
    print()
    if not args.no_usage:
        print(_usage_line(result), file=sys.stderr)
    return 0, result.text


_USAGE_SOURCES = {"tokenizer": "model tokenizer", "estimated": "estimated by tokenrelay"}


def _usage_line(result: ChatResult) -> str:
    parts = []
    if result.usage is not None:
        usage = result.usage
        source = _USAGE_SOURCES.get(usage.source, usage.source)
        parts.append(f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens ({source})")
    if result.time_to_first_token is not None:
        parts.append(f"first token {result.time_to_first_token * 1000:.0f} ms")
    parts.append(f"{result.duration:.2f} s")
    return "[" + " · ".join(parts) + "]"


def _top(args: argparse.Namespace) -> int:
    from tokenrelay.top import run

    url = (args.url or os.environ.get("TOKENRELAY_URL") or "http://127.0.0.1:8000").rstrip("/")
    return run(url, args.interval, args.once)


def _keys(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_keys_command(args))


async def _keys_command(args: argparse.Namespace) -> int:
    from tokenrelay.auth.keys import KeyStore
    from tokenrelay.catalog import load_settings
    from tokenrelay.ledger.db import create_engine, prepare_schema

    settings = load_settings(Path(args.config) if args.config else None)
    engine = create_engine(settings.ledger)
    try:
        await prepare_schema(engine, migrate_if_empty=True)
        store = KeyStore(engine)
        if args.keys_command == "create":
            key, secret = await store.create(
                name=args.name,
                budget_tokens=args.budget_tokens,
                budget_usd=args.budget_usd,
                rpm=args.rpm,
                max_concurrent=args.max_concurrent,
                models=[m.strip() for m in args.models.split(",") if m.strip()] if args.models else None,
                expires_at=_expiry(args.expires) if args.expires else None,
            )
            print(secret)
            print(
                f"created {key.id} ({key.prefix}, {key.name!r}); the key is shown only now", file=sys.stderr
            )
        elif args.keys_command == "list":
            for key in await store.all():
                state = "revoked" if key.revoked_at else "expired" if not key.usable(_now()) else "active"
                limits = ", ".join(
                    f"{name}={value}"
                    for name, value in (
                        ("budget_tokens", key.budget_tokens),
                        ("budget_usd", key.budget_usd),
                        ("rpm", key.rpm),
                        ("max_concurrent", key.max_concurrent),
                        ("models", ",".join(sorted(key.models)) if key.models else None),
                        ("expires", key.expires_at.isoformat() if key.expires_at else None),
                    )
                    if value is not None
                )
                print(f"{key.id}  {key.prefix}  {state:8}  {key.name}  {limits}".rstrip())
        elif not await store.revoke(args.key):
            print(f"tokenrelay keys: no active key {args.key!r}", file=sys.stderr)
            return 1
        else:
            print(f"revoked {args.key}", file=sys.stderr)
        return 0
    finally:
        await engine.dispose()


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _expiry(text: str) -> Any:
    """``30d``, ``12h``, ``90m`` from now, or an ISO 8601 date/time (UTC if no zone)."""
    from datetime import UTC, datetime, timedelta

    units = {"d": "days", "h": "hours", "m": "minutes"}
    if text[:-1].isdigit() and text[-1] in units:
        return _now() + timedelta(**{units[text[-1]]: int(text[:-1])})
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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

    sim = commands.add_parser("sim", help="run the simulated upstream (OpenAI and Anthropic protocols)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8001)
    sim.set_defaults(handler=_sim)

    migrate = commands.add_parser("migrate", help="create or upgrade the ledger schema")
    migrate.add_argument("--config", help="TOML configuration file")
    migrate.set_defaults(handler=_migrate)

    chat = commands.add_parser(
        "chat",
        help="stream an answer to the terminal",
        description="Stream an answer from a running gateway. Without a prompt (and with a terminal) "
        "it holds a conversation. The key comes from TOKENRELAY_API_KEY.",
    )
    chat.add_argument("prompt", nargs="?", help="the question; read from stdin when it is piped")
    chat.add_argument("--url", help="the gateway (default $TOKENRELAY_URL or http://127.0.0.1:8000)")
    chat.add_argument("--model", help="a model id (default: the gateway's default model)")
    chat.add_argument("--system", help="a system message")
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("--temperature", type=float)
    chat.add_argument("--request-id", help="X-Request-ID to send (for tracing)")
    chat.add_argument("--no-usage", action="store_true", help="do not print usage at the end")
    chat.set_defaults(handler=_chat)

    top = commands.add_parser("top", help="a live view of a running gateway (from its /metrics)")
    top.add_argument("--url", help="the gateway (default $TOKENRELAY_URL or http://127.0.0.1:8000)")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between updates (default 2)")
    top.add_argument("--once", action="store_true", help="print one update and exit")
    top.set_defaults(handler=_top)

    keys = commands.add_parser("keys", help="create, list and revoke API keys (in the ledger database)")
    keys.add_argument("--config", help="TOML configuration file (for the database URL)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", required=True)
    create.add_argument("--budget-tokens", type=int)
    create.add_argument("--budget-usd", type=float)
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--max-concurrent", type=int, help="streams at once")
    create.add_argument("--models", help="comma-separated model names the key may use (default: all)")
    create.add_argument("--expires", help="30d, 12h, 90m, or an ISO 8601 date")
    key_commands.add_parser("list", help="list keys (prefixes only, never the keys)")
    revoke = key_commands.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key", help="key id (key_...) or prefix (trk_...)")
    keys.set_defaults(handler=_keys)
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
