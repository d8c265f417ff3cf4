"""Run the simulated upstream inside the gateway process, for the out-of-the-box demo model.

It gets its own thread and event loop so that uvicorn's signal handling (main thread only)
and the gateway's loop are left alone; it listens on a free loopback port.
"""

from __future__ import annotations

import threading
import time

import uvicorn

from tokenrelay.sim.server import SimulatedUpstream


class EmbeddedSim:
    """A simulated upstream on 127.0.0.1:<free port>, started and stopped with the gateway."""

    def __init__(self) -> None:
        config = uvicorn.Config(
            SimulatedUpstream(),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="tokenrelay-sim", daemon=True)

    def start(self, timeout_seconds: float = 10.0) -> str:
        """Start serving and return the base URL (blocking; call it from a worker thread)."""
        self._thread.start()
        deadline = time.monotonic() + timeout_seconds
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the embedded simulated upstream did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread (blocking)."""
        self._server.should_exit = True
        self._thread.join(timeout=5)
