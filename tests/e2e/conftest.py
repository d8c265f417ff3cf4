"""Fixtures for the end-to-end tests that need more than ``tests/conftest.py`` gives.

* ``start_nginx``: Debian's nginx with ``deploy/nginx/tokenrelay.conf`` itself, in front of
  one gateway or several replicas.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "tokenrelay.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

MAIN_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/tokenrelay.conf;
}}
"""

StartNginx = Callable[..., str]


@pytest.fixture
def start_nginx(tmp_path: Path) -> Iterator[StartNginx]:
    """``start_nginx(gateway_url or [replica urls], read_timeout=None)`` → nginx's URL in front."""
    if not os.path.exists(NGINX):
        message = "needs nginx (.ci/run installs it)"
        if os.environ.get("TOKENRELAY_TEST_TOOLS") == "required":
            pytest.fail(message)
        pytest.skip(message)
    processes: list[subprocess.Popen[bytes]] = []

    def start(gateway_url: str | list[str], read_timeout: str | None = None) -> str:
        tmp = tmp_path / f"nginx-{len(processes)}"
        tmp.mkdir()
        port = free_port()
        urls = [gateway_url] if isinstance(gateway_url, str) else gateway_url
        servers = "\n    ".join(f"server {url[7:]};" for url in urls)  # one line per replica
        site = _substitute(EXAMPLE.read_text(), r"(?m)^    server 127\.0\.0\.1:8000;", f"    {servers}")
        site = _substitute(site, r"listen 8080;", f"listen 127.0.0.1:{port};")
        if read_timeout:
            site = _substitute(site, r"proxy_read_timeout \d+s;", f"proxy_read_timeout {read_timeout};")
        (tmp / "tokenrelay.conf").write_text(site)
        (tmp / "nginx.conf").write_text(MAIN_CONFIG.format(tmp=tmp))
        process = subprocess.Popen(
            [NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        _wait_listening(port, process, tmp / "error.log")
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def _substitute(text: str, pattern: str, replacement: str) -> str:
    new, count = re.subn(pattern, replacement, text)
    assert count == 1, f"the example config no longer has {pattern!r}"
    return new


def _wait_listening(port: int, process: subprocess.Popen[bytes], error_log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {error_log.read_text() if error_log.exists() else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not start listening")
