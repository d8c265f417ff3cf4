"""The Grafana dashboard and the alert rules: valid PromQL, and only metrics the gateway exposes.

``promtool check rules`` (Debian's ``prometheus`` package, installed by ``.ci/run``) checks the
alert rules and, turned into recording rules, the dashboard's queries.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import Gateway

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "tokenrelay.json"
ALERTS = ROOT / "deploy" / "prometheus" / "tokenrelay-alerts.yml"
METRIC = re.compile(r"\btokenrelay_[a-z_]+\b")
SUFFIXES = {"counter": [""], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(queries) >= len(dashboard["panels"]) >= 6
    return queries


def exposed_metric_names(gateway_url: str) -> set[str]:
    """Every sample name ``/metrics`` can show, from its ``# TYPE`` lines."""
    names: set[str] = set()
    for line in httpx.get(f"{gateway_url}/metrics", timeout=5).text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.update(name + suffix for suffix in SUFFIXES.get(kind, [""]))
    return names


def test_every_metric_in_the_dashboard_and_alerts_is_exposed(gateway: Gateway) -> None:
    exposed = exposed_metric_names(gateway.url)
    used = set(METRIC.findall(ALERTS.read_text())) | {
        m for q in dashboard_queries() for m in METRIC.findall(q)
    }
    assert used, "the files name no metric"
    assert used <= exposed, f"not exposed by /metrics: {sorted(used - exposed)}"
    # And the dashboard covers what the issue asks an operator to see.
    queries = " ".join(dashboard_queries())
    for metric in (
        "tokenrelay_streams_in_flight",
        "tokenrelay_time_to_first_token_seconds_bucket",
        "tokenrelay_tokens_total",
        "tokenrelay_client_disconnects_total",
        "tokenrelay_upstream_errors_total",
        "tokenrelay_ledger_spooled_rows",
    ):
        assert metric in queries, metric


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("TOKENRELAY_TEST_TOOLS") == "required":
            pytest.fail("promtool is required here (Debian package prometheus)")
        pytest.skip("needs promtool (Debian package prometheus; .ci/run installs it)")
    return path


def test_promtool_accepts_the_alert_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout + done.stderr


def test_promtool_accepts_the_dashboard_queries(tmp_path: Path) -> None:
    # Grafana's variables, made concrete; then each query as a recording rule for promtool.
    rules: list[dict[str, Any]] = [
        {
            "record": f"dashboard:query_{n}",
            "expr": q.replace("$__rate_interval", "5m").replace("$model", ".*"),
        }
        for n, q in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-rules.json"  # JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
