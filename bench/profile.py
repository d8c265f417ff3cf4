"""Where the gateway's CPU goes, sampled with py-spy: the profile issue 14 starts from.

    .venv/bin/python bench/profile.py [--seconds 20] [--streams 200] [--output BENCHMARKS.md]

One gateway (ledger off, as in the benchmark's gateway rows) on core 0, the simulator and the
house load generator on core 1: ``--streams`` keep-alive connections looping paced streams
(``pace200``: 100 tokens at 50 tokens/s, one event per upstream read) on
``/v1/chat/completions``. py-spy samples the gateway without pausing it (``--nonblocking``:
time in C -- the event loop, sockets, orjson -- counts for the Python frame that called it;
``Runner.run`` is the event loop itself) for ``--seconds``; the
report lists the functions with the most samples of their own and the share of each layer
(uvicorn, Starlette/FastAPI, aiohttp, the relay, the event loop), beside the gateway's CPU per
chunk over the same window. With ``--output``, the section replaces its namesake in that file
(``bench/run.py`` keeps it when it rewrites BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from loadgen import Target
from processes import (
    GATEWAY_CORE,
    LOAD_CORE,
    PYTHON,
    Child,
    free_port,
    gateway_config,
    log,
    raise_nofile,
    spawn,
    start_simulator,
    stop_children,
    wait_ready,
)
from scenarios_load import throughput

SECTION = "## Where the gateway's CPU goes (bench/profile.py)"
# A frame's file decides its layer; the first match wins.
LAYERS = (
    ("uvicorn (HTTP server)", ("uvicorn/", "httptools")),
    ("Starlette / FastAPI (routing, middleware)", ("starlette/", "fastapi/")),
    ("tokenrelay middleware", ("tokenrelay/api/",)),
    ("aiohttp (upstream client)", ("aiohttp/", "yarl/", "multidict/")),
    ("tokenrelay upstream parsing", ("tokenrelay/upstreams/", "tokenrelay/sse.py")),
    ("tokenrelay relay and encoders", ("tokenrelay/relay/", "tokenrelay/protocols/", "tokenrelay/record.py")),
    ("tokenrelay other", ("tokenrelay/",)),
    ("asyncio / event loop", ("asyncio/", "uvloop", "selectors.py")),
)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("needs py-spy (a dev dependency: python3 dev.py installs it)")
    return found


def layer_of(frame: str) -> str:
    for name, markers in LAYERS:
        if any(marker in frame for marker in markers):
            return name
    return "other (stdlib, C)"


def summarize(raw: Path) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Samples in all, samples per innermost frame, samples per layer of the innermost Python frame."""
    own: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        python = [f for f in frames if ".py" in f]
        innermost = frames[-1]
        own[innermost] += n
        layers[layer_of(python[-1] if python else innermost)] += n
    return total, own, layers


def render(
    seconds: float,
    streams: int,
    chunks: int,
    cpu: float,
    total: int,
    own: collections.Counter[str],
    layers: collections.Counter[str],
) -> str:
    lines = [
        SECTION,
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; one gateway (ledger off) on core 0, {streams} connections "
        f"looping paced streams (`pace200`: one event per upstream read) on `/v1/chat/completions`, "
        f"sampled by py-spy for {seconds:g} s ({total:,} samples; C code counts for its Python caller).",
        "",
        f"Over the window: {chunks:,} chunks, {cpu:.2f} s of gateway CPU: "
        f"**{cpu / max(chunks, 1) * 1e6:.1f} µs per chunk** "
        f"({chunks / max(cpu, 1e-9):,.0f} chunks per CPU-second).",
        "",
        "Per layer, *µs per chunk* is its share of the samples times the CPU per chunk: what each "
        "layer that remains on the hot path costs a chunk (per-stream work, such as routing a "
        "request, is spread over the stream's 100 chunks).",
        "",
        "| layer (innermost Python frame) | share of samples | µs per chunk |",
        "|---|---:|---:|",
        *(
            f"| {name} | {n / total:.1%} | {n / total * cpu / max(chunks, 1) * 1e6:.1f} |"
            for name, n in layers.most_common()
        ),
        "",
        "| function (innermost Python frame) | share of samples |",
        "|---|---:|",
        *(f"| `{frame[:110]}` | {n / total:.1%} |" for frame, n in own.most_common(25)),
    ]
    return "\n".join(lines) + "\n"


async def measure(seconds: float, streams: int, workdir: Path) -> str:
    children: list[Child] = []
    try:
        gw_port = free_port()
        sim = start_simulator(workdir)
        children.append(sim)
        sim_port = sim.port
        config = workdir / "gateway.toml"
        config.write_text(gateway_config(sim_port))
        env = {"TOKENRELAY_LEDGER__ENABLED": "false", "TOKENRELAY_LOG_LEVEL": "WARNING"}
        argv = [PYTHON, "-m", "tokenrelay", "serve", "--port", str(gw_port), "--config", str(config)]
        gateway = spawn("gateway", GATEWAY_CORE, argv, env, gw_port, workdir)
        children.append(gateway)
        wait_ready(gateway, "/healthz")
        target = Target("gw", gw_port, "v1", gateway.proc)
        raw = workdir / "profile.txt"
        spy = await asyncio.create_subprocess_exec(
            py_spy(), "record", "--pid", str(gateway.popen.pid), "--duration", str(int(seconds) + 2),
            "--rate", "250", "--nonblocking", "--format", "raw", "--output", str(raw),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        run = await throughput(target, sim.proc, streams, 2.0, seconds, "pace200")
        _, errors = await asyncio.wait_for(spy.communicate(), 60)
        if not raw.exists():
            raise RuntimeError(f"py-spy wrote nothing: {errors.decode(errors='replace')[-500:]}")
        log(f"{run.events:,} chunks, {run.rate:,.0f}/s, {run.target_cpu:.2f} CPU-s")
        total, own, layers = summarize(raw)
        return render(seconds, streams, run.events, run.target_cpu, total, own, layers)
    finally:
        stop_children(children)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--output", type=Path, help="replace (or append) this section in the file")
    args = parser.parse_args(argv)
    raise_nofile()
    psutil.Process().cpu_affinity([LOAD_CORE])
    with tempfile.TemporaryDirectory(prefix="tokenrelay-profile-") as scratch:
        text = asyncio.run(measure(args.seconds, args.streams, Path(scratch)))
    print(text)
    if args.output:
        from resumable import with_section

        existing = args.output.read_text() if args.output.exists() else ""
        args.output.write_text(with_section(existing, text, SECTION))
    return 0


if __name__ == "__main__":
    sys.exit(main())
