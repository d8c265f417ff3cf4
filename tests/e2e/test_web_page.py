"""The chat page in a real browser, and the JS client against a real gateway.

The browser tests are written with playwright-core (``tests/browser/``) and run by node;
this module gives them a live gateway and simulated upstream and checks their outcome.
``TOKENRELAY_TEST_TOOLS=required`` (set by ``.ci/run``) turns a missing node, chromium or
npm install into a failure instead of a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import Gateway, Sim

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


def node_test(directory: Path, env: dict[str, str], timeout: float, *files: str) -> None:
    """Run node's test runner in ``directory`` (on ``files``, or all tests); all must pass."""
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


@pytest.mark.timeout(120)
def test_js_client_unit_and_live_gateway(gateway: Gateway) -> None:
    missing((shutil.which("node") is not None, "node"))
    node_test(JS_CLIENT, {"TOKENRELAY_TEST_URL": gateway.url, "TOKENRELAY_TEST_MODEL": "fast"}, timeout=110)
