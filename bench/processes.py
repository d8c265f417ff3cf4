"""The processes under test: starting them pinned to a core, waiting for them, stopping them.

Every child imports ``tokenrelay`` from a ``src`` directory given on its ``PYTHONPATH`` (this
checkout's, or a baseline worktree's), whatever the environment has installed; the harness checks
where with ``tokenrelay_origin``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil

from results import Wakeup
from workload import (
    ANTHROPIC_KEYS,
    ANTHROPIC_PREFIX,
    FAILOVER_KEYS,
    FAILOVER_PREFIXES,
    MODELS,
    NEVER_EJECT,
)

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
GATEWAY_CORE = 0
LOAD_CORE = 1  # the simulator and this process
clock = time.monotonic


def child_env(src: Path) -> dict[str, str]:
    """The environment that makes a child run the code in ``src``, not an installed ``tokenrelay``."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}


CHILD_ENV = child_env(ROOT / "src")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


async def wait_quiet(proc: psutil.Process, within: float = 15.0) -> tuple[float, float]:
    """Wait until ``proc`` uses < 5 % CPU over 0.2 s; returns (CPU-seconds used meanwhile, wall seconds)."""
    t0, c0 = clock(), cpu_seconds(proc)
    last = c0
    while clock() - t0 < within:
        await asyncio.sleep(0.2)
        now = cpu_seconds(proc)
        if now - last < 0.01:
            break
        last = now
    return cpu_seconds(proc) - c0, clock() - t0


def steal_seconds() -> float:
    """CPU time the hypervisor gave to others while our vCPUs wanted it (all cores, /proc/stat)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    return math.nan


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def proc(self) -> psutil.Process:
        return psutil.Process(self.popen.pid)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_limits() -> None:
    # Children inherit the raised limit already; set it again in case the parent could not.
    with contextlib.suppress(ValueError, OSError):
        raise_nofile()


def spawn(
    name: str,
    core: int,
    argv: list[str],
    env: dict[str, str],
    port: int,
    workdir: Path,
    src: Path = ROOT / "src",
) -> Child:
    """Start ``argv`` on ``core``, importing tokenrelay from ``src``, its output in ``workdir``."""
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            ["taskset", "-c", str(core), *argv],
            env={**os.environ, **child_env(src), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            # ``python -m`` puts the working directory first on sys.path: the checkout the code
            # comes from, so nothing else can shadow it.
            cwd=src.parent,
            preexec_fn=_child_limits,
        )
    return Child(name, popen, port, log)


def wait_ready(child: Child, path: str, timeout: float = 30.0) -> None:
    deadline = clock() + timeout
    url = f"http://127.0.0.1:{child.port}{path}"
    while clock() < deadline:
        if child.popen.poll() is not None:
            raise RuntimeError(f"{child.name} exited early:\n{child.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} not ready after {timeout}s:\n{child.log.read_text()[-3000:]}")


def stop_children(children: Iterable[Child]) -> None:
    children = list(children)
    for child in children:
        if child.popen.poll() is None:
            child.popen.terminate()
    deadline = clock() + 10
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(max(0.1, deadline - clock()))
        if child.popen.poll() is None:
            child.popen.kill()
            child.popen.wait(5)


def start_simulator(workdir: Path) -> Child:
    """The simulated upstream on the load core, ready to answer."""
    port = free_port()
    sim = spawn("sim", LOAD_CORE, [PYTHON, "-m", "tokenrelay", "sim", "--port", str(port)], {}, port, workdir)
    wait_ready(sim, "/_stats")
    return sim


def gateway_config(sim_port: int) -> str:
    lines = ['default_model = "pace1"', ""]
    for name, options in MODELS.items():
        lines += [
            f'[models."{name}"]',
            f'base_url = "http://127.0.0.1:{sim_port}/v1"',
            f'upstream_model = "sim?{options}"',
            "",
        ]
    return "\n".join(lines)


def routes_config(sim_port: int, closed_port: int, features: Iterable[str]) -> str:
    """The models of sections 12 and 13, for a gateway with ``features`` (see ``features``)."""
    features = set(features)
    lines: list[str] = []
    if "deployments" in features:
        for prefix in FAILOVER_PREFIXES:
            for key in FAILOVER_KEYS:
                name = prefix + key
                failing = (
                    f"http://127.0.0.1:{closed_port}/v1"
                    if prefix == "refused/"
                    else f"http://127.0.0.1:{sim_port}/v1",
                    f"sim?{MODELS[key]}" if prefix == "refused/" else f"sim?error_after=0&{MODELS[key]}",
                )
                lines += [f'[models."{name}"]', f"eject_after_failures = {NEVER_EJECT}", ""]
                for dname, priority, (url, upstream) in (
                    ("failing", 0, failing),
                    ("sim", 1, (f"http://127.0.0.1:{sim_port}/v1", f"sim?{MODELS[key]}")),
                ):
                    lines += [
                        f'[[models."{name}".deployments]]',
                        f'name = "{dname}"',
                        f"priority = {priority}",
                        f'base_url = "{url}"',
                        f'upstream_model = "{upstream}"',
                        "",
                    ]
    if "anthropic-upstream" in features:
        for key in ANTHROPIC_KEYS:
            lines += [
                f'[models."{ANTHROPIC_PREFIX}{key}"]',
                'provider = "anthropic"',
                f'base_url = "http://127.0.0.1:{sim_port}"',
                f'upstream_model = "sim?{MODELS[key]}"',
                "",
            ]
    return "\n".join(lines)


FEATURES_PROBE = """
import importlib.util, json, typing
import tokenrelay.config as c
found = []
if "deployments" in c.ModelConfig.model_fields and importlib.util.find_spec("tokenrelay.routing"):
    found.append("deployments")
if importlib.util.find_spec("tokenrelay.api.anthropic"):
    found.append("messages-api")
if "anthropic" in typing.get_args(getattr(c, "Provider", None)):
    found.append("anthropic-upstream")
print(json.dumps(found))
"""


def features(src: Path = ROOT / "src") -> list[str]:
    """What the gateway of ``src`` offers of sections 12 and 13: ``deployments`` (failover),
    ``messages-api`` (``POST /v1/messages``), ``anthropic-upstream`` (``provider = "anthropic"``)."""
    out = subprocess.run(
        [PYTHON, "-c", FEATURES_PROBE],
        env={**os.environ, **child_env(src)},
        capture_output=True,
        text=True,
        check=False,
        cwd=src.parent,
    )
    if out.returncode != 0:
        return []
    found: list[str] = orjson.loads(out.stdout)
    return found


def tokenrelay_origin(src: Path = ROOT / "src") -> str:
    """Where a child process started with ``src`` imports ``tokenrelay`` from (must be ``src``)."""
    out = subprocess.run(
        [PYTHON, "-c", "import tokenrelay; print(tokenrelay.__file__)"],
        env={**os.environ, **child_env(src)},
        capture_output=True,
        text=True,
        check=True,
        cwd=src.parent,
    )
    return out.stdout.strip()


def ledger_state(port: int) -> str:
    """The ledger state a gateway's /readyz reports (``ok``, ``degraded``, ``disabled``...)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        return str(orjson.loads(response.read())["ledger"]["state"])


def spool_rows(directory: Path) -> int:
    total = 0
    for path in directory.glob("spool-*.jsonl"):
        with path.open("rb") as handle:
            total += sum(1 for _ in handle)
    return total


# -- how long this VM takes to wake an idle process ------------------------------------------------

ECHO_SERVER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(1)
conn, _ = server.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while data := conn.recv(64):
    conn.sendall(data)
"""


def wakeup_latency(workdir: Path, pings: int) -> tuple[list[Wakeup], list[float]]:
    """Loopback ping-pong with a process on the other core, after 0, 2 and 20 ms of idleness;
    and how late ``time.sleep(1 ms)`` wakes up. Blocking sockets: no event loop in between."""
    port = free_port()
    echo = spawn("echo", GATEWAY_CORE, [PYTHON, "-c", ECHO_SERVER, str(port)], {}, port, workdir)
    results: list[Wakeup] = []
    try:
        deadline = clock() + 10
        sock: socket.socket | None = None
        while sock is None and clock() < deadline:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                time.sleep(0.05)
        if sock is None:
            return [], []
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for idle in (0.0, 0.002, 0.020):
                rtts = []
                for _ in range(pings if idle < 0.01 else max(pings // 3, 10)):
                    if idle:
                        time.sleep(idle)
                    t0 = time.perf_counter()
                    sock.sendall(b"x")
                    sock.recv(64)
                    rtts.append(time.perf_counter() - t0)
                results.append(Wakeup(idle * 1000, rtts))
        oversleep = []
        for _ in range(pings):
            t0 = time.perf_counter()
            time.sleep(0.001)
            oversleep.append(time.perf_counter() - t0 - 0.001)
        return results, oversleep
    finally:
        stop_children([echo])
