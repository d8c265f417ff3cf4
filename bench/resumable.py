"""Resumable streams and replicas: what they cost the gateway, Redis, and a client coming back.

    .venv/bin/python bench/resumable.py                      # full run (about 5 minutes)
    .venv/bin/python bench/resumable.py --quick              # smaller samples (about 1.5 minutes)
    .venv/bin/python bench/resumable.py --output FILE.md     # also write the section to FILE.md

Prints a Markdown section, ``## Resumable streams and replicas (bench/resumable.py)``:

1. One gateway (ledger off, cluster on) pinned to core 0, the simulator and this load generator
   on core 1 (as ``bench/run.py``): 100 paced streams (50 tokens/s, one event per upstream
   read) in alternating rounds, plain and resumable, on ``/v1/chat/completions`` and ``/chat``;
   chunks per gateway CPU-second and the resumable/plain ratio of CPU per chunk (goal <= 1.15).
   XADDs per chunk, counted in Redis (each stream log's length and last event id) and from
   ``INFO`` (server-wide). TTFT of 1 sequential stream, plain and resumable interleaved, against
   a direct connection to the simulator.
2. Redis memory per resumable stream of 1,000 tokens (``MEMORY USAGE`` of its keys).
3. Three replicas (PostgreSQL ledger in a throw-away database, ``bench/pgdb.py``) behind
   Debian's nginx with ``deploy/nginx/tokenrelay.conf``: streams (200 and 1,000 tokens) cut
   after a random number of events, resumed on a new connection; the time to the first replayed
   byte. Also the lease entries left once every stream ended (there should be none).
4. One replica's process group SIGKILLed with streams open on it (half resumable): the time
   until every one of them has its ``replica_lost`` row.

Every process is stopped at the end (on errors and Ctrl-C too), the database dropped and the
run's Redis namespaces (``bench-<hex>``) deleted. Loopback only; every load is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
import redis
import uvloop

import pgdb
from baseline import head
from processes import (
    CHILD_ENV,
    GATEWAY_CORE,
    LOAD_CORE,
    PYTHON,
    ROOT,
    Child,
    free_port,
    gateway_config,
    log,
    raise_nofile,
    spawn,
    stop_children,
    wait_ready,
)
from resumable_fleet import NGINX, Loss, Resumes, replica_loss, resume_latency, start_nginx
from resumable_single import (
    EXTRA_MODELS,
    FULL,
    QUICK,
    Plan,
    Single,
    delete_keys,
    measure_single,
    open_leases,
)
from stats import median, ms, pct

REDIS_URL = os.environ.get("TOKENRELAY_BENCH_REDIS", "redis://127.0.0.1:6379/0")
ORPHAN_AFTER = 3.0
RESUME_WORKERS = 10  # section 3: streams cut and resumed at a time
BASE_ENV = {
    "TOKENRELAY_LOG_LEVEL": "WARNING",
    "TOKENRELAY_DRAIN_SECONDS": "1",
    "PYTHONHASHSEED": "0",
    "TOKENRELAY_CLUSTER__REDIS_URL": REDIS_URL,
    "TOKENRELAY_CLUSTER__RESUME_GRACE_SECONDS": "5",
    "TOKENRELAY_CLUSTER__ORPHAN_AFTER_SECONDS": str(ORPHAN_AFTER),
}
LABELS = {"v1": "/v1/chat/completions", "chat": "/chat"}


# -- the report -----------------------------------------------------------------------------------


def _name(label: str) -> str:
    if label == "direct":
        return "simulator, direct"
    return f"`{LABELS[label.split('-')[0]]}` " + ("resumable" if label.endswith("-res") else "plain")


def render_single(s: Single, plan: Plan) -> list[str]:
    out = [
        "### 1. Per-chunk gateway CPU, Redis writes and TTFT (ledger off, cluster on)",
        "",
        f"{plan.concurrency} concurrent paced streams (`sim?tokens=100&tps=50`: one event per upstream "
        f"read), {plan.rounds} alternating rounds of {plan.window:.1f} s windows per variant (after 2 s of "
        "ramp); chunks = SSE events received by the load generator.",
        "",
        "| stream | chunks/s | chunks per gateway CPU-s | µs CPU per chunk | errors |",
        "|---|---:|---:|---:|---:|",
    ]
    verdicts = []
    for style in ("v1", "chat"):
        for label in (style, f"{style}-res"):
            ws = [w for w in s.windows if w.label == label]
            events, cpu, seconds = (
                sum(w.events for w in ws),
                sum(w.cpu for w in ws),
                sum(w.seconds for w in ws),
            )
            out.append(
                f"| {_name(label)} | {events / seconds:,.0f} | {events / cpu:,.0f} | "
                f"{1e6 * cpu / events:.1f} | {sum(w.errors for w in ws)} |"
            )
        ratios = []
        for r in range(plan.rounds):
            by = {w.label: w for w in s.windows if w.round_no == r}
            plain, res = by[style], by[f"{style}-res"]
            ratios.append((res.cpu / res.events) / (plain.cpu / plain.events))
        ratio = median(ratios)
        verdicts.append(
            f"- {_name(style)[:-6]}: CPU per chunk resumable/plain **{ratio:.3f}** (median of "
            f"{len(ratios)} rounds, {min(ratios):.3f} to {max(ratios):.3f}); goal ≤ 1.15: "
            f"**{'met' if ratio <= 1.15 else 'missed'}**"
        )
    streams, entries, events = s.census
    resumable = [w for w in s.windows if w.label.endswith("-res")]
    plains = [w for w in s.windows if not w.label.endswith("-res")]
    res_events, plain_events = sum(w.events for w in resumable), sum(w.events for w in plains)
    steal = sum(w.steal for w in s.windows) / sum(w.seconds for w in s.windows)
    out += [
        "",
        *verdicts,
        f"- XADDs per chunk, counted in Redis: **{entries / max(events, 1):.3f}** ({entries:,} stream-log "
        f"entries for {events:,} events of {streams:,} resumable streams; an entry is one XADD).",
        "- From `INFO` over the windows (server-wide: other clients of this Redis count too): "
        f"{sum(w.xadd for w in resumable) / res_events:.3f} XADD calls per resumable chunk; Redis "
        f"client reads (≈ round trips) per chunk {sum(w.reads for w in resumable) / res_events:.3f} "
        "resumable, "
        f"{sum(w.reads for w in plains) / plain_events:.3f} plain.",
        f"- Lease entries left in Redis once the rounds' streams had ended: {s.leases_left} (expected 0).",
        f"- CPU stolen by the hypervisor during the windows: {steal:.2f} CPU-s per second (all cores).",
        "",
        f"TTFT of 1 sequential stream (`sim?tokens=4&tps=200`), {plan.ttft_requests} requests per variant, "
        "interleaved; added = gateway minus direct (percentile minus percentile).",
        "",
        "| target | p50 ms | p99 ms | added p50 ms | added p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    direct = s.ttft["direct"]
    for label, values in s.ttft.items():
        p50, p99 = pct(values, 0.5), pct(values, 0.99)
        added = (
            ("n/a", "n/a") if label == "direct" else (ms(p50 - pct(direct, 0.5)), ms(p99 - pct(direct, 0.99)))
        )
        out.append(
            f"| {_name(label)} | {ms(p50)} | {ms(p99)} | {added[0]} | {added[1]} | {s.ttft_errors[label]} |"
        )
    out += [
        "",
        f"### 2. Redis memory per resumable stream of 1,000 tokens ({plan.memory_streams} streams each)",
        "",
        "`MEMORY USAGE … SAMPLES 0` of every `<namespace>:rs:*` key once the streams completed.",
        "",
        "| endpoint, model | entries per stream | stream log KiB | meta KiB | KiB per stream |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in s.memory:
        n = max(m.streams, 1)
        out.append(
            f"| {m.label} | {m.entries / n:.0f} | {m.stream_bytes / n / 1024:.1f} | "
            f"{m.meta_bytes / n / 1024:.2f} | **{(m.stream_bytes + m.meta_bytes) / n / 1024:.1f}** |"
        )
    return out


def render_fleet(resumes: list[Resumes], leases_left: int | None, loss: Loss | None, plan: Plan) -> list[str]:
    out = [
        "",
        "### 3. Resume latency through nginx in front of 3 replicas",
        "",
        "Three replicas on core 0 (PostgreSQL ledger in a throw-away database), Debian's nginx "
        "(`deploy/nginx/tokenrelay.conf`) and the client on core 1. Each resumable stream (on "
        "`/v1/chat/completions`) is cut after a random number of events (from 1 up to 5 before its end); "
        f"100 ms later `GET /v1/streams/{{id}}` with `Last-Event-ID` on a new connection, {RESUME_WORKERS} "
        "streams at a time. Timed from connecting to the first body byte (the first replayed event); "
        "every resumed stream is read to `[DONE]` and its ids checked.",
        "",
        "| model | events per stream | resumes | p50 ms | p99 ms | max ms | errors |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in resumes:
        lat = r.latencies
        errors = f"{len(r.errors)}" + (f" (first: {r.errors[0]})" if r.errors else "")
        out.append(
            f"| `sim?{EXTRA_MODELS[r.model]}` | {r.events:,} | {len(lat)} of {r.streams} | "
            f"**{ms(pct(lat, 0.5))}** | **{ms(pct(lat, 0.99))}** | {ms(max(lat, default=math.nan))} | "
            f"{errors} |"
        )
    if not resumes:
        out.append("| not measured (the run stopped before) | | | | | | |")
    if leases_left is not None:
        out += ["", f"Lease entries left once every stream had ended: {leases_left} (expected 0)."]
    out += [
        "",
        "### 4. Rows for a killed replica's streams",
        "",
        f"`orphan_after_seconds = {ORPHAN_AFTER:g}` (heartbeat renewed every {ORPHAN_AFTER / 5:g} s, "
        f"reaper sweep every {max(0.25, ORPHAN_AFTER / 4):g} s, ledger batches every 0.1 s). "
        f"{plan.kill_streams} streams (`sim?tokens=2000&tps=50` on `/chat`, half resumable) open on one "
        "replica, its process group SIGKILLed; the ledger polled every 20 ms by request id.",
        "",
    ]
    if loss is None:
        out.append("Not measured (the run stopped before).")
    else:
        statuses = ", ".join(f"{n} {status}" for status, n in sorted(loss.statuses.items()))
        out.append(
            f"First row after {loss.first_row:.2f} s, all {loss.rows} of {loss.streams} after "
            f"**{loss.all_rows:.2f} s** (**{loss.all_rows - ORPHAN_AFTER:+.2f} s** beyond orphan_after); "
            f"rows: {statuses or 'none'}; fewest completion tokens estimated for a resumable stream: "
            f"{loss.min_estimated_tokens}" + (f"; errors: {loss.errors}" if loss.errors else "")
        )
    return out


# -- processes ------------------------------------------------------------------------------------


def start_gateway(name: str, config: Path, workdir: Path, env: dict[str, str]) -> Child:
    """``tokenrelay serve`` on core 0, in a process group of its own (section 4 kills the group)."""
    port = free_port()
    path = workdir / f"{name}.log"
    serve = ["serve", "--port", str(port), "--config", str(config)]
    argv = ["taskset", "-c", str(GATEWAY_CORE), PYTHON, "-m", "tokenrelay", *serve]
    env = {**os.environ, **CHILD_ENV, **BASE_ENV, "TOKENRELAY_LEDGER__SPOOL_DIR": str(workdir / name), **env}
    with open(path, "wb") as out:
        popen = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
    return Child(name, popen, port, path)


def ready(child: Child, ledger: str) -> None:
    wait_ready(child, "/readyz", timeout=90)
    with urllib.request.urlopen(f"http://127.0.0.1:{child.port}/readyz", timeout=5) as response:
        body = orjson.loads(response.read())
    if body["ledger"]["state"] != ledger or body.get("cluster", {}).get("state") != "ok":
        raise RuntimeError(f"{child.name} is not ready as expected: {body}")


def write_config(path: Path, sim_port: int) -> None:
    lines = [gateway_config(sim_port)]
    for name, options in EXTRA_MODELS.items():
        lines += [f'[models."{name}"]', f'base_url = "http://127.0.0.1:{sim_port}/v1"']
        lines += [f'upstream_model = "sim?{options}"', ""]
    path.write_text("\n".join(lines))


def measure(plan: Plan, workdir: Path, rds: redis.Redis, namespaces: list[str], children: list[Child]) -> str:
    """Start, measure, return the section (the caller stops ``children`` and cleans up)."""
    started = time.time()
    sim_port = free_port()
    sim = spawn(
        "sim", LOAD_CORE, [PYTHON, "-m", "tokenrelay", "sim", "--port", str(sim_port)], {}, sim_port, workdir
    )
    children.append(sim)
    config = workdir / "gateway.toml"
    write_config(config, sim_port)
    gw = start_gateway(
        "gw",
        config,
        workdir,
        {"TOKENRELAY_LEDGER__ENABLED": "false", "TOKENRELAY_CLUSTER__NAMESPACE": namespaces[0]},
    )
    children.append(gw)
    wait_ready(sim, "/_stats")
    ready(gw, "disabled")
    log(f"sim :{sim_port}, gateway :{gw.port}, namespace {namespaces[0]}, logs in {workdir}")
    single = uvloop.run(measure_single(plan, sim, gw, rds, namespaces[0]))
    stop_children([gw])
    lines = [
        "## Resumable streams and replicas (bench/resumable.py)",
        "",
        f"Commit {head() or '?'}, {'quick' if plan is QUICK else 'full'} run, "
        f"{time.strftime('%Y-%m-%d %H:%M')}; gateways pinned to core 0, simulator, nginx and load "
        "generator on core 1.",
        "",
        *render_single(single, plan),
    ]
    resumes: list[Resumes] = []
    leases_left: int | None = None
    loss: Loss | None = None
    pg_name = ""
    try:
        pg_name, pg_url = asyncio.run(pgdb.create_database())
        log(f"PostgreSQL database {pg_name} created")
        on = {
            "TOKENRELAY_LEDGER__ENABLED": "true",
            "TOKENRELAY_LEDGER__DATABASE_URL": pg_url,
            "TOKENRELAY_CLUSTER__NAMESPACE": namespaces[1],
        }
        replicas = []
        for i in range(3):  # the first one alone: it migrates the empty database
            replicas.append(start_gateway(f"replica{i}", config, workdir, on))
            children.append(replicas[-1])
            if i == 0:
                ready(replicas[0], "ok")
        for replica in replicas[1:]:
            ready(replica, "ok")
        nginx = start_nginx([r.port for r in replicas], free_port(), workdir)
        children.append(nginx)
        log(f"replicas {[r.port for r in replicas]} behind nginx :{nginx.port}, namespace {namespaces[1]}")
        # role + contents + finish + [DONE]: 203 and 1,003 events
        for model, events, n in (("resume", 203, plan.resumes), ("rs1000p", 1003, plan.long_resumes)):
            resumes.append(uvloop.run(resume_latency(nginx.port, model, events, n, RESUME_WORKERS, 0.1)))
            log(f"{n} resumes of {model} done ({len(resumes[-1].errors)} errors)")
        time.sleep(1.0)  # the last rows and their lease entries
        leases_left = open_leases(rds, namespaces[1])
        dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")
        loss = uvloop.run(replica_loss(replicas[0], dsn, plan.kill_streams, ORPHAN_AFTER + 20))
    finally:
        stop_children(children)
        if pg_name:
            asyncio.run(pgdb.drop_database(pg_name))
            log(f"PostgreSQL database {pg_name} dropped")
    lines += [*render_fleet(resumes, leases_left, loss, plan), "", *log_problems(workdir)]
    lines += ["", f"(measured in {time.time() - started:.0f} s)", ""]
    return "\n".join(lines)


def log_problems(workdir: Path) -> list[str]:
    """The gateways' warnings and errors (the reaper's "replica lost" warning is expected)."""
    found: dict[str, int] = {}
    for path in sorted(workdir.glob("*.log")):
        for line in path.read_bytes().splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
                key = f"{path.stem}: {entry['level']} {str(entry.get('msg'))[:120]!r}"
                found[key] = found.get(key, 0) + 1
    if not found:
        return ["Gateway logs: no warnings or errors."]
    return ["Gateway logs, warnings and errors:", "", *(f"- {k} ({n} times)" for k, n in found.items())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller samples")
    parser.add_argument(
        "--output",
        type=Path,
        help="also write the section to this file (e.g. BENCHMARKS.md: its own section is replaced, "
        "or appended; the rest of the file is kept)",
    )
    args = parser.parse_args(argv)
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset") or not os.path.exists(NGINX):
        print(f"needs 2 cores, taskset and {NGINX}", file=sys.stderr)
        return 2
    raise_nofile()
    os.sched_setaffinity(0, {LOAD_CORE})
    rds = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
    rds.ping()
    workdir = Path(tempfile.mkdtemp(prefix="tokenrelay-resumable-"))
    namespaces = [f"bench-{secrets.token_hex(5)}" for _ in range(2)]
    children: list[Child] = []
    ok = False
    try:
        text = measure(QUICK if args.quick else FULL, workdir, rds, namespaces, children)
        ok = True
    finally:
        stop_children(children)
        for namespace in namespaces:
            delete_keys(rds, f"{namespace}:*")
        rds.close()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"the processes' logs stay in {workdir}")
    print(text)
    if args.output:
        existing = args.output.read_text() if args.output.exists() else ""
        args.output.write_text(with_section(existing, text))
    return 0


SECTION = "## Resumable streams and replicas (bench/resumable.py)"


def with_section(document: str, section: str, heading: str = SECTION) -> str:
    """``document`` with its section under ``heading`` replaced by ``section`` (or appended)."""
    before, found, after = document.partition(heading)
    if not found:
        return (document.rstrip() + "\n\n" if document.strip() else "") + section.rstrip() + "\n"
    rest = after.split("\n## ", 1)
    tail = "\n## " + rest[1] if len(rest) == 2 else ""
    return before + section.rstrip() + "\n" + tail


if __name__ == "__main__":
    sys.exit(main())
