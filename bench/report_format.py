"""How the report names things and lays out its tables."""

from __future__ import annotations

import math

LABELS = {
    "direct": "direct to simulator",
    "gw-off": "gateway `/v1/chat/completions`, ledger off",
    "gw-off-chat": "gateway `/chat`, ledger off",
    "gw-off2": "gateway `/v1/chat/completions`, ledger off (2nd process)",
    "gw-mem": "gateway `/v1/chat/completions`, ledger off (a process that serves only this test)",
    "gw-sqlite": "gateway `/v1/chat/completions`, ledger on (SQLite)",
    "gw-sqlite-chat": "gateway `/chat`, ledger on (SQLite)",
    "gw-pg": "gateway `/v1/chat/completions`, ledger on (PostgreSQL)",
    "gw-pg-chat": "gateway `/chat`, ledger on (PostgreSQL)",
    "tutorial": "tutorial app (`bench/tutorial_app.py`)",
    "direct-msg": "direct to simulator, `/v1/messages`",
    "gw-off-refused": "gateway `/v1/chat/completions`, failover after a refused connection",
    "gw-off-inband": "gateway `/v1/chat/completions`, failover after an in-band error",
    "gw-off-msg": "gateway `/v1/messages`, OpenAI upstream, ledger off",
    "gw-off-msg-anth": "gateway `/v1/messages`, Anthropic upstream, ledger off",
    "gw-base": "baseline gateway `/v1/chat/completions`, ledger off",
    "gw-base-mem": "baseline gateway `/v1/chat/completions`, ledger off (serves only the memory test)",
}
LEDGER_NAMES = {
    "gw-off": "ledger off",
    "gw-off2": "ledger off, 2nd process (A/A control)",
    "gw-sqlite": "ledger on, SQLite",
    "gw-pg": "ledger on, PostgreSQL",
}


def describe(label: str) -> str:
    return LABELS.get(label, label)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def ratio_cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines
