"""Run the local model server as a child process: start, health-check, restart, stop.

The child listens on a private loopback port chosen here (kept across restarts). Its output
goes to the gateway's log, each line prefixed ``[local-model]``. If it exits or stops
answering its health check it is (re)started with exponential backoff; requests that arrive
meanwhile wait in ``ready()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
from enum import StrEnum
from pathlib import Path

import aiohttp

from tokenrelay.config import LocalModelSettings
from tokenrelay.errors import UpstreamUnavailable

log = logging.getLogger("tokenrelay.local")
child_log = logging.getLogger("tokenrelay.local.child")


class ModelState(StrEnum):
    STOPPED = "stopped"
    LOADING = "loading"
    READY = "ready"
    RESTARTING = "restarting"
    STOPPING = "stopping"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalModelServer:
    """One supervised ``tokenrelay.local.child`` process serving ``model_path``."""

    def __init__(self, settings: LocalModelSettings, model_path: Path, alias: str) -> None:
        self._settings = settings
        self._model_path = model_path
        self._alias = alias
        self.state = ModelState.STOPPED
        self.restarts = 0
        self.pid: int | None = None
        # One port for the supervisor's life: restarts come back where clients expect them.
        self._port = _free_port()
        self.base_url = f"http://127.0.0.1:{self._port}/v1"
        self._ready = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- what the gateway calls ------------------------------------------------------------

    def start(self) -> None:
        """Begin supervising (idempotent); the model loads in the background."""
        if self._supervisor is None:
            self._session = aiohttp.ClientSession()
            self._supervisor = asyncio.create_task(self._supervise(), name="local-model-supervisor")

    async def ready(self) -> str:
        """The child's base URL once it answers; starts it first if it was lazy."""
        self.start()
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), self._settings.load_timeout_seconds)
            except TimeoutError:
                raise UpstreamUnavailable(
                    f"the local model is not ready ({self.state})", failure="connection"
                ) from None
        return self.base_url

    async def aclose(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL) and the supervisor."""
        self.state = ModelState.STOPPING
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.state = ModelState.STOPPED

    # -- supervision -------------------------------------------------------------------------

    async def _supervise(self) -> None:
        backoff = self._settings.restart_initial_seconds
        while True:
            started = time.monotonic()
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("local model supervisor error")
            finally:
                self._ready.clear()
                await self._stop_process()
            if time.monotonic() - started > 60:
                backoff = self._settings.restart_initial_seconds  # it ran well for a while
            self.restarts += 1
            self.state = ModelState.RESTARTING
            log.warning("local model server ended; restarting", extra={"in_seconds": backoff})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._settings.restart_max_seconds)

    async def _run_once(self) -> None:
        """Start the child, wait until it answers, then watch it until it dies or hangs."""
        self.state = ModelState.LOADING
        size_mb = self._model_path.stat().st_size / 1e6
        log.info(f"loading local model {self._model_path.name} ({size_mb:.0f} MB) …")
        loading_since = time.monotonic()
        self._process = await asyncio.create_subprocess_exec(
            *self._command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Its own session: a Ctrl-C in the gateway's terminal is the gateway's to handle.
            start_new_session=True,
        )
        self.pid = self._process.pid
        assert self._process.stdout is not None
        pump = asyncio.create_task(_pump_lines(self._process.stdout))
        exited = asyncio.create_task(self._process.wait())
        try:
            if not await self._wait_healthy(exited):
                return
            self.state = ModelState.READY
            self._ready.set()
            log.info(
                f"local model ready in {time.monotonic() - loading_since:.1f} s",
                extra={"model": self._alias, "pid": self.pid, "threads": self._settings.threads},
            )
            await self._watch(exited)
        finally:
            exited.cancel()
            # The pipe ends with the process; the pump then ends by itself.
            await asyncio.wait({pump}, timeout=2)
            pump.cancel()

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tokenrelay.local.child",
            "--model",
            str(self._model_path),
            "--alias",
            self._alias,
            "--port",
            str(self._port),
            "--threads",
            str(self._settings.threads),
            "--context",
            str(self._settings.context_tokens),
            "--nice",
            str(self._settings.nice),
        ]

    async def _wait_healthy(self, exited: asyncio.Task[int]) -> bool:
        deadline = time.monotonic() + self._settings.load_timeout_seconds
        while time.monotonic() < deadline:
            if exited.done():
                log.error("local model server exited while loading", extra={"exit_code": exited.result()})
                return False
            if await self._healthy(within_seconds=1.0):
                return True
            await asyncio.sleep(0.05)
        log.error(
            "local model server did not become ready", extra={"seconds": self._settings.load_timeout_seconds}
        )
        return False

    async def _watch(self, exited: asyncio.Task[int]) -> None:
        failures = 0
        while True:
            done, _ = await asyncio.wait({exited}, timeout=self._settings.health_interval_seconds)
            if done:
                log.error("local model server exited", extra={"exit_code": exited.result()})
                return
            within = min(5.0, self._settings.health_interval_seconds)
            failures = 0 if await self._healthy(within_seconds=within) else failures + 1
            if failures >= 3:
                log.error("local model server stopped answering; killing it")
                with contextlib.suppress(ProcessLookupError):
                    assert self._process is not None
                    self._process.kill()  # a hung process may not heed SIGTERM
                return

    async def _healthy(self, within_seconds: float) -> bool:
        assert self._session is not None
        try:
            # Not /v1/models: llama-cpp-python serves that under the generation lock, so it would
            # not answer during a long answer and a busy server would look hung.
            async with self._session.get(
                self.base_url.removesuffix("/v1") + "/tokenrelay/health",
                timeout=aiohttp.ClientTimeout(total=within_seconds),
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _stop_process(self) -> None:
        process, self._process = self._process, None
        self.pid = None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def _pump_lines(stream: asyncio.StreamReader) -> None:
    """The child's output, a line at a time, into the gateway's log."""
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        if text:
            child_log.info(f"[local-model] {text}")
