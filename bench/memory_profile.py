"""Where the gateway's memory goes: an idle gateway's imports, and an idle open stream's heap.

    .venv/bin/python bench/memory_profile.py [--streams 500] [--output BENCHMARKS.md]

*Imports*: the resident memory a fresh interpreter gains by importing each large dependency on
its own (they share parts, so the figures overlap and do not add up), beside the gateway's
own ``import tokenrelay.app``. *Streams*: a gateway (ledger off; uvloop, as ``tokenrelay
serve`` runs) in this process, under ``tracemalloc``; a client in another process opens
``--streams`` streams that stall after their first delta
(``sim?tokens=50&stall_after=1&stall_seconds=60``), and the heap's growth is attributed to the
layer of the innermost frame that allocated it. tracemalloc sees Python's allocations only
(not the allocator's slack or the kernel's socket buffers), so the total is below the RSS
growth section 3 measures. With ``--output`` the section replaces its namesake in that file.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import uvloop

from processes import PYTHON, ROOT, free_port, start_simulator, stop_children

SECTION = "## Where the gateway's memory goes (bench/memory_profile.py)"
PACKAGES = (
    "fastapi",
    "sqlalchemy",
    "aiohttp",
    "uvicorn",
    "prometheus_client",
    "pydantic",
    "tiktoken",
    "orjson",
)
LAYERS = (
    ("uvicorn (HTTP server)", ("uvicorn/", "httptools")),
    ("Starlette / FastAPI", ("starlette/", "fastapi/")),
    ("aiohttp (upstream client)", ("aiohttp/", "yarl/", "multidict/", "aiohappyeyeballs/")),
    ("tokenrelay", ("tokenrelay/",)),
    ("asyncio / uvloop", ("asyncio/", "uvloop")),
)
CLIENT = r"""
import asyncio, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
body = b'{"model":"idle","stream":true,"messages":[{"role":"user","content":"hi"}]}'
head = ("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n").encode()
async def one():
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    seen = b""
    while b'"content"' not in seen:
        seen += await reader.read(65536)
    return writer
async def main():
    writers = []
    for start in range(0, n, 50):
        writers += await asyncio.gather(*(one() for _ in range(min(50, n - start))))
    print("open", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def import_cost(module: str) -> float:
    """MiB a fresh interpreter gains by importing ``module``."""
    code = (
        "import psutil; p = psutil.Process(); before = p.memory_info().rss; "
        f"import {module}; print((p.memory_info().rss - before) / 2**20)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip())


def layer_of(filename: str) -> str:
    for name, markers in LAYERS:
        if any(marker in filename for marker in markers):
            return name
    return "other (stdlib)"


async def stream_heap(
    streams: int, workdir: Path
) -> tuple[float, list[tuple[str, float]], list[tuple[str, float]]]:
    """(KiB per stream in all, KiB per stream per layer, the top allocation sites in bytes)."""
    sim = start_simulator(workdir)
    try:
        config = workdir / "gateway.toml"
        config.write_text(
            'default_model = "idle"\n[models.idle]\n'
            f'base_url = "http://127.0.0.1:{sim.port}/v1"\n'
            'upstream_model = "sim?tokens=50&stall_after=1&stall_seconds=60"\n'
        )
        os.environ.update(
            TOKENRELAY_CONFIG_FILE=str(config),
            TOKENRELAY_LEDGER__ENABLED="false",
            TOKENRELAY_LOG_LEVEL="ERROR",
        )
        import uvicorn

        sys.path.insert(0, str(ROOT / "src"))  # this checkout's code, whatever is installed
        from tokenrelay.app import create_app_from_env

        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app_from_env(), port=port, log_config=None, access_log=False)
        )
        serving = asyncio.ensure_future(server.serve())
        while not server.started:  # noqa: ASYNC110 (uvicorn sets a flag, no event to wait on)
            await asyncio.sleep(0.05)
        await run_client(port, 50)  # warm-up: first-use allocations are not per stream
        gc.collect()
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        client = await asyncio.create_subprocess_exec(
            PYTHON, "-c", CLIENT, str(port), str(streams), stdout=asyncio.subprocess.PIPE
        )
        assert client.stdout is not None
        await client.stdout.readline()
        await asyncio.sleep(0.5)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        client.kill()
        await client.wait()
        server.should_exit = True
        await serving
    finally:
        stop_children([sim])
    diffs = after.compare_to(before, "lineno")
    layers: collections.Counter[str] = collections.Counter()
    for diff in diffs:
        layers[layer_of(diff.traceback[0].filename)] += diff.size_diff
    total = sum(layers.values())
    sites = [
        (f"{_short(d.traceback[0].filename)}:{d.traceback[0].lineno}", d.size_diff / streams)
        for d in diffs[:15]
        if d.size_diff > 0
    ]
    per_layer = [(name, size / streams / 1024) for name, size in layers.most_common()]
    return total / streams / 1024, per_layer, sites


async def run_client(port: int, streams: int) -> None:
    client = await asyncio.create_subprocess_exec(
        PYTHON, "-c", CLIENT, str(port), str(streams), stdout=asyncio.subprocess.PIPE
    )
    assert client.stdout is not None
    await client.stdout.readline()
    client.kill()
    await client.wait()
    await asyncio.sleep(1.0)  # the gateway notices and cleans up


def _short(filename: str) -> str:
    for marker in ("site-packages/", "src/", "python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def render(imports: list[tuple[str, float]], total: float, layers: list[tuple[str, float]],
           sites: list[tuple[str, float]], streams: int) -> str:  # fmt: skip
    lines = [
        SECTION,
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}. Imports, each in a fresh interpreter (they overlap):",
        "",
        "| import | MiB |",
        "|---|---:|",
        *(f"| `{name}` | {mib:.1f} |" for name, mib in imports),
        "",
        f"An idle open stream's Python heap ({streams} streams, tracemalloc): "
        f"**{total:.1f} KiB per stream**.",
        "",
        "| layer (innermost frame) | KiB per stream |",
        "|---|---:|",
        *(f"| {name} | {kib:.2f} |" for name, kib in layers),
        "",
        "| allocation site | bytes per stream |",
        "|---|---:|",
        *(f"| `{site}` | {size:,.0f} |" for site, size in sites),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--output", type=Path, help="replace (or append) this section in the file")
    args = parser.parse_args(argv)
    imports = [("tokenrelay.app", import_cost("tokenrelay.app"))]
    imports += sorted(((name, import_cost(name)) for name in PACKAGES), key=lambda item: -item[1])
    with tempfile.TemporaryDirectory(prefix="tokenrelay-memprofile-") as scratch:
        total, layers, sites = uvloop.run(stream_heap(args.streams, Path(scratch)))
    section = render(imports, total, layers, sites, args.streams)
    print(section)
    if args.output is not None:
        from resumable import with_section

        text = args.output.read_text() if args.output.exists() else ""
        args.output.write_text(with_section(text, section, SECTION))
    return 0


if __name__ == "__main__":
    sys.exit(main())
