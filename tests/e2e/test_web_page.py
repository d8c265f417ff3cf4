"""The chat page in a real browser, and the JS client against a real gateway.

The browser tests are written with playwright-core (``tests/browser/``) and run by node;
this module gives them a live gateway and simulated upstream and checks their outcome.
``TOKENRELAY_TEST_TOOLS=required`` (set by ``.ci/run``) turns a missing node, chromium or
npm install into a failure instead of a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Gateway, Sim, TcpProxy

ROOT = Path(__file__).resolve().parents[2]
BROWSER_TESTS = ROOT / "tests" / "browser"
JS_CLIENT = ROOT / "clients" / "js"
ARTIFACT_DIR = ROOT / "build" / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def missing(*needs: tuple[bool, str]) -> None:
    """Skip (or, in CI, fail) when a tool the test needs is absent."""
    absent = [what for ok, what in needs if not ok]
    if not absent:
        return
    message = "needs " + ", ".join(absent) + " (.ci/run installs them)"
    if os.environ.get("TOKENRELAY_TEST_TOOLS") == "required":
        pytest.fail(message)
    pytest.skip(message)


def node_test(directory: Path, env: dict[str, str], timeout: float, *files: str) -> str:
    """Run node's test runner in ``directory`` (on ``files``, or all tests); all must pass.

    Returns the runner's report."""
    done = subprocess.run(
        ["node", "--test", "--test-reporter=spec", *files],
        cwd=directory,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"node tests failed:\n{done.stdout}\n{done.stderr}"
    # Zero tests run is a failure too (a renamed file, a filter gone wrong).
    assert re.search(r"\bpass [1-9]", done.stdout) and re.search(r"\bfail 0\b", done.stdout), done.stdout
    return done.stdout


def needs_browser() -> None:
    """Node, chromium and playwright-core, or skip (fail in CI)."""
    missing(
        (shutil.which("node") is not None, "node"),
        (Path(CHROMIUM).exists(), "chromium"),
        ((BROWSER_TESTS / "node_modules" / "playwright-core").exists(), "npm ci in tests/browser"),
    )


@pytest.mark.timeout(180)
def test_chat_page_in_chromium(gateway: Gateway, sim: Sim) -> None:
    needs_browser()
    screenshot = ARTIFACT_DIR / "chat-page.png"
    screenshot.unlink(missing_ok=True)
    node_test(
        BROWSER_TESTS,
        {
            "TOKENRELAY_URL": gateway.url,
            "TOKENRELAY_SIM_URL": sim.url,
            "ARTIFACT_DIR": str(ARTIFACT_DIR),
            "CHROMIUM": CHROMIUM,
        },
        timeout=170,
    )
    assert screenshot.stat().st_size > 10_000, "a screenshot of the finished conversation was written"


@pytest.mark.timeout(300)
def test_chat_console_in_chromium(gateway: Gateway) -> None:
    """``tests/browser/chat_console.test.mjs``: kept conversations, sidebar, regenerate and edit,
    stats, code blocks with Copy, keyboard only, 375 px, frame time, axe-core (light and dark)."""
    needs_browser()
    missing(((BROWSER_TESTS / "node_modules" / "axe-core").exists(), "npm ci in tests/browser"))
    shots = [ARTIFACT_DIR / f"chat-{name}.png" for name in ("light", "dark", "375")]
    for shot in shots:
        shot.unlink(missing_ok=True)
    report = node_test(
        BROWSER_TESTS,
        {
            "TOKENRELAY_CHAT_CONSOLE": "1",
            "TOKENRELAY_URL": gateway.url,
            "ARTIFACT_DIR": str(ARTIFACT_DIR),
            "CHROMIUM": CHROMIUM,
        },
        290,
        "chat_console.test.mjs",
    )
    # The file skips itself without TOKENRELAY_CHAT_CONSOLE: make sure its tests ran here.
    assert re.search(r"\bpass 12\b", report) and not re.search(r"\bskipped [1-9]", report), report
    for shot in shots:
        assert shot.stat().st_size > 10_000, f"{shot.name} was written"


@pytest.mark.timeout(120)
def test_js_client_unit_and_live_gateway(gateway: Gateway) -> None:
    missing((shutil.which("node") is not None, "node"))
    node_test(JS_CLIENT, {"TOKENRELAY_TEST_URL": gateway.url, "TOKENRELAY_TEST_MODEL": "fast"}, timeout=110)


@contextlib.contextmanager
def proxy_switch(proxy: TcpProxy) -> Iterator[str]:
    """A loopback HTTP switch for ``proxy``: ``POST /cut`` and ``POST /restore`` (204 each).

    The browser test runs in node, the proxy here: this is how node cuts the page's connections."""

    class Switch(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            action = {"/cut": proxy.cut, "/restore": proxy.restore}.get(self.path)
            if action is None:
                self.send_error(404)
                return
            action()
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: pytest shows the node report

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Switch)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.timeout(180)
def test_chat_page_resumes_and_stops_resumable_streams(
    start_gateway: Any, redis_url: str, sim: Sim, tmp_path: Path
) -> None:
    """The page on a gateway with Redis: a cut connection is resumed, Stop stops on the gateway.

    ``tests/browser/resume.test.mjs`` drives chromium through a :class:`TcpProxy` it cuts and
    restores; here the rows its answers left in the ledger are checked."""
    needs_browser()
    gw: Gateway = start_gateway(
        env={
            "TOKENRELAY_CLUSTER__REDIS_URL": redis_url,
            "TOKENRELAY_CLUSTER__NAMESPACE": f"test-{uuid.uuid4().hex[:12]}",
            "TOKENRELAY_KEEPALIVE_SECONDS": "1",
        }
    )
    assert gw.readyz()["cluster"]["state"] == "ok", "the page asks for resumable streams only then"
    results = tmp_path / "resume-results.jsonl"
    proxy = TcpProxy(int(gw.url.rsplit(":", 1)[1])).start()
    try:
        with proxy_switch(proxy) as switch_url:
            report = node_test(
                BROWSER_TESTS,
                {
                    "TOKENRELAY_RESUME_URL": f"http://127.0.0.1:{proxy.port}",
                    "TOKENRELAY_PROXY_SWITCH": switch_url,
                    "TOKENRELAY_SIM_URL": sim.url,
                    "TOKENRELAY_RESULT_FILE": str(results),
                    "ARTIFACT_DIR": str(ARTIFACT_DIR),
                    "CHROMIUM": CHROMIUM,
                },
                170,
                "resume.test.mjs",
            )
    finally:
        proxy.close()
    # The file skips itself without TOKENRELAY_RESUME_URL: make sure its tests ran here.
    assert re.search(r"\bpass 3\b", report), report
    ran = {entry["test"]: entry for entry in map(json.loads, results.read_text().splitlines())}
    assert set(ran) == {"resumed", "resume_refused", "stopped"}, ran

    # The resumed answer: one row, complete, although its first connection was cut.
    rows = asyncio.run(gw.ledger_rows(ran["resumed"]["request_id"]))
    assert [(row["status"], row["finish_reason"]) for row in rows] == [("completed", "stop")], rows
    # The stopped one: one row that says so, and the upstream request ended (aborted).
    stopped = ran["stopped"]["request_id"]
    upstream = asyncio.run(sim.wait_ended(stopped))
    assert upstream["end"] == "client_closed" and upstream["chunks_sent"] < 500, upstream
    rows = asyncio.run(gw.ledger_rows(stopped))
    assert len(rows) == 1 and rows[0]["status"] == "stopped" and rows[0]["finish_reason"] == "stopped", rows
    assert rows[0]["completion_tokens"] >= 3
