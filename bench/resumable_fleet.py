"""bench/resumable.py, sections 3 and 4: three replicas behind nginx, resumes, a replica killed.

A raw HTTP/1.1 client (one exchange per new connection, the body de-chunked), nginx started on
``deploy/nginx/tokenrelay.conf`` itself (the way ``tests/e2e/conftest.py`` does), the resume
latency and the time from SIGKILL to the dead replica's ``replica_lost`` rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import orjson

from processes import LOAD_CORE, ROOT, Child, clock

NGINX = "/usr/sbin/nginx"
NGINX_MAIN = """\
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
_ID = re.compile(rb"^id: (\d+)$", re.MULTILINE)


def start_nginx(ports: list[int], port: int, workdir: Path) -> Child:
    """Debian's nginx (on the load core) with the deployment example in front of ``ports``."""
    tmp = workdir / "nginx"
    tmp.mkdir()
    site = (ROOT / "deploy" / "nginx" / "tokenrelay.conf").read_text()
    servers = "\n    ".join(f"server 127.0.0.1:{p};" for p in ports)
    for pattern, new in (
        (r"(?m)^    server 127\.0\.0\.1:8000;", f"    {servers}"),
        (r"listen 8080;", f"listen 127.0.0.1:{port};"),
    ):
        site, count = re.subn(pattern, new, site)
        if count != 1:
            raise RuntimeError(f"deploy/nginx/tokenrelay.conf no longer has {pattern!r}")
    (tmp / "tokenrelay.conf").write_text(site)
    (tmp / "nginx.conf").write_text(NGINX_MAIN.format(tmp=tmp))
    log = tmp / "error.log"
    argv = [
        "taskset",
        "-c",
        str(LOAD_CORE),
        NGINX,
        "-p",
        str(tmp),
        "-c",
        str(tmp / "nginx.conf"),
        "-e",
        str(log),
    ]
    child = Child(
        "nginx", subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT), port, log
    )
    deadline = clock() + 10
    while clock() < deadline:
        if child.popen.poll() is not None:
            raise RuntimeError(f"nginx exited: {log.read_text() if log.exists() else ''}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return child
        time.sleep(0.05)
    raise RuntimeError("nginx did not start listening")


class Http:
    """One request on a new connection (``connection: close``); ``read`` gives the body de-chunked."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunked = False

    @classmethod
    async def send(cls, port: int, method: str, path: str, body: bytes = b"", **headers: str) -> Http:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n"
        if body:
            head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        head += "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
        writer.write(head.encode() + b"\r\n" + body)
        self = cls(reader, writer)
        try:
            lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        except BaseException:
            writer.close()
            raise
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "")
        return self

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        if not self.chunked:
            return await self.reader.read(65536)
        line = await self.reader.readline()
        size = int(line.split(b";")[0] or b"0", 16)
        if size == 0:
            return b""
        return (await self.reader.readexactly(size + 2))[:-2]

    async def read_events(self, n: int, body: bytes = b"") -> bytes:
        """Read until ``body`` holds ``n`` whole events (or the body ends)."""
        while body.count(b"\n\n") < n and (data := await self.read()):
            body += data
        return body

    async def drain(self) -> bytes:
        body = b""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
            while data := await self.read():
                body += data
        return body

    def close(self) -> None:
        self.writer.close()


def last_whole_id(body: bytes) -> int:
    """The id of the last complete event in ``body``."""
    ids = _ID.findall(body[: body.rfind(b"\n\n") + 2])
    return int(ids[-1]) if ids else 0


@dataclass
class Resumes:
    model: str
    events: int  # in each stream
    streams: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, GET sent -> first replayed byte
    errors: list[str] = field(default_factory=list)
    cut_at: list[int] = field(default_factory=list)


async def resume_latency(port: int, model: str, events: int, n: int, workers: int, pause: float) -> Resumes:
    """``n`` resumable streams of ``model`` through nginx at ``port``, each cut after a random number
    of its ``events`` events; ``pause`` later, ``GET /v1/streams/{id}`` on a new connection, timed to
    the first replayed byte, then read to the end and checked (ids contiguous, ``[DONE]`` last)."""
    rng = random.Random(20)
    out = Resumes(model, events, streams=n)
    queue = list(range(n))

    async def one(i: int) -> None:
        body = orjson.dumps(
            {
                "model": model,
                "stream": True,
                "resumable": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
        )
        first = await Http.send(
            port, "POST", "/v1/chat/completions", body, x_request_id=f"bench-rs-{model}-{i}"
        )
        try:
            if first.status != 200:
                out.errors.append(f"POST {first.status}")
                return
            stream_id = first.headers["x-stream-id"]
            last = last_whole_id(await first.read_events(rng.randint(1, events - 5)))
        finally:
            first.close()  # the cut: the client's network went away
        out.cut_at.append(last)
        await asyncio.sleep(pause)
        sent = clock()
        again = await Http.send(port, "GET", f"/v1/streams/{stream_id}", last_event_id=str(last))
        try:
            data = await again.read()
            out.latencies.append(clock() - sent)
            rest = data + await again.drain()
        finally:
            again.close()
        ids = [int(x) for x in _ID.findall(rest)]
        if (
            again.status != 200
            or not data.startswith(b"id: ")
            or ids != list(range(last + 1, last + 1 + len(ids)))
        ):
            out.errors.append(f"resume of {stream_id} after {last}: HTTP {again.status}, ids {ids[:3]}...")
        elif not rest.endswith(b"data: [DONE]\n\n"):
            out.errors.append(f"resume of {stream_id} after {last}: no [DONE] at the end")

    async def worker() -> None:
        while queue:
            i = queue.pop(0)
            try:
                await asyncio.wait_for(one(i), 30)
            except (OSError, TimeoutError, ValueError, KeyError, asyncio.IncompleteReadError) as exc:
                out.errors.append(f"stream {i}: {exc!r}")

    await asyncio.gather(*(worker() for _ in range(workers)))
    return out


@dataclass
class Loss:
    streams: int
    resumable: int
    first_row: float = float("nan")  # seconds after SIGKILL
    all_rows: float = float("nan")
    rows: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    min_estimated_tokens: int = 0  # of the resumable streams' rows (content chunks in the log)
    errors: list[str] = field(default_factory=list)


async def replica_loss(victim: Child, pg_dsn: str, k: int, within: float) -> Loss:
    """``k`` streams open on ``victim`` (every other one resumable); SIGKILL its process group;
    poll the ledger until every stream has its row (or ``within`` seconds)."""
    out = Loss(streams=k, resumable=k // 2)
    ids = [f"bench-lost-{i}-{os.urandom(4).hex()}" for i in range(k)]
    resumable = set(ids[::2][: out.resumable])
    opened: list[Http] = []
    readers: list[asyncio.Task[bytes]] = []
    try:
        for rid in ids:
            body: dict[str, object] = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
            if rid in resumable:
                body["resumable"] = True
            http = await Http.send(victim.port, "POST", "/chat", orjson.dumps(body), x_request_id=rid)
            opened.append(http)
            if http.status != 200:
                out.errors.append(f"{rid}: HTTP {http.status}")
                continue
            await asyncio.wait_for(http.read_events(3), 10)
            readers.append(asyncio.ensure_future(http.drain()))
        await asyncio.sleep(0.3)
        os.killpg(victim.popen.pid, signal.SIGKILL)
        killed = clock()
        victim.popen.wait(10)
        connection = await asyncpg.connect(pg_dsn, timeout=10)
        try:
            while clock() - killed < within:
                rows = await connection.fetch(
                    "SELECT request_id, status, completion_tokens FROM usage_record"
                    " WHERE request_id = ANY($1::text[])",
                    ids,
                )
                now = clock() - killed
                if rows and out.first_row != out.first_row:  # still NaN
                    out.first_row = now
                if len(rows) >= k:
                    out.all_rows = now
                    break
                await asyncio.sleep(0.02)
            out.rows = len(rows)
            for row in rows:
                out.statuses[row["status"]] = out.statuses.get(row["status"], 0) + 1
            tokens = [row["completion_tokens"] for row in rows if row["request_id"] in resumable]
            out.min_estimated_tokens = min(tokens, default=0)
        finally:
            await connection.close()
    finally:
        for http in opened:
            http.close()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return out
