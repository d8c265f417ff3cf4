"""BENCHMARKS.md from a run's results: the sections in order, the machine, how to reproduce."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import psutil

import pgdb
from processes import GATEWAY_CORE, LOAD_CORE, ROOT
from report_baseline import render_baseline
from report_format import table
from report_gateway import render_aborts, render_latency, render_memory, render_throughput, render_wakeup
from report_ledger import render_ledger, render_rows_bench
from report_micro import render_clients, render_local, render_metrics_overhead, render_relay_chunks
from report_perf import render_perf_targets
from report_routes import render_failover, render_messages, render_selection
from report_summary import observe, render_targets
from results import Results


def machine(r: Results) -> list[tuple[str, str]]:
    """The Machine table; ``run.py`` keeps it with the results, so that rendering them again later
    describes the machine, commit and packages they were measured with."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc", "--all"], capture_output=True, text=True, check=False).stdout.strip()
    versions = []
    for package in (
        "uvicorn",
        "httptools",
        "uvloop",
        "fastapi",
        "starlette",
        "aiohttp",
        "orjson",
        "sqlalchemy",
        "asyncpg",
        "aiosqlite",
        "openai",
        "httpx2",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{package} {importlib.metadata.version(package)}")
    commit = (
        r.commit
        or subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    )
    postgres = "not reachable" if r.pg_problem else "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        version = subprocess.run(
            ["psql", pgdb.ADMIN_DSN, "-Atc", "SHOW server_version"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
        if version and not r.pg_problem:
            postgres = f"{version}, loopback, not pinned (its processes run on either core)"
    origin = Path(r.tokenrelay_file)
    with contextlib.suppress(ValueError):
        origin = origin.resolve().relative_to(ROOT)
    return [
        ("CPU", cpu),
        (
            "nproc",
            f"{nproc or os.cpu_count()} (gateway pinned to core {GATEWAY_CORE}, "
            f"simulator + load to core {LOAD_CORE})",
        ),
        ("Memory", f"{psutil.virtual_memory().total / 2**30:.1f} GiB"),
        ("Kernel", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("PostgreSQL", postgres),
        ("Packages", ", ".join(versions)),
        ("Commit", commit or "unknown"),
        ("tokenrelay imported from", f"`{origin}` (children's `PYTHONPATH`)"),
        ("Date", datetime.datetime.fromtimestamp(r.finished, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        *([("Baseline", f"{b.name}, a git worktree's `src/` (`--baseline`)")] if (b := r.baseline) else []),
    ]


def render(r: Results) -> str:
    p = r.profile
    out: list[str] = ["# Benchmarks", ""]
    out += [
        f"Produced by `bench/run.py` ({p.name} profile, {r.finished - r.started:.0f} s). "
        "Every number below is measured in the same run against a direct connection to the "
        "simulated upstream; nothing is copied from elsewhere. Loopback only; the gateway runs on "
        "core 0, the simulator and the load generator share core 1.",
        "",
    ]
    if p.name != "full":
        out += [
            "> **Quick run**: small samples; run `bench/run.py` without `--quick` for the numbers to quote.",
            "",
        ]
    out += render_perf_targets(r)
    out += render_targets(r)
    out += render_baseline(r)
    out += ["## Machine", ""]
    out += table(["", ""], [[k, v] for k, v in r.machine or machine(r)])
    out += ["", *render_wakeup(r)]
    out += render_latency(r)
    out += render_throughput(r)
    out += render_memory(r)
    out += render_aborts(r)
    out += render_ledger(r)
    out += render_rows_bench(r)
    out += render_clients(r)
    out += render_local(r)
    out += render_metrics_overhead(r)
    out += render_relay_chunks(r)
    out += render_selection(r)
    out += render_failover(r)
    out += render_messages(r)
    observations = observe(r)
    if observations:
        out += ["## Observations", ""] + [f"- {o}" for o in observations] + [""]
    if r.notes:
        out += ["## Notes from the run", ""] + [f"- {n}" for n in r.notes] + [""]
    out += ["## Reproduce", ""]
    out += [
        "```sh",
        "python dev.py            # or: python -m venv .venv && .venv/bin/pip install -e '.[dev]'",
        ".venv/bin/python bench/run.py --baseline REF  # full run against commit REF, ~16 min; "
        "overwrites BENCHMARKS.md",
        ".venv/bin/python bench/run.py --save-results out.json  # keep the raw measurements; "
        "--render-from out.json re-renders them",
        ".venv/bin/python bench/run.py --quick   # ~3 min, smaller samples",
        ".venv/bin/python bench/ledger_rows.py       # section 6 alone",
        ".venv/bin/python bench/upstream_clients.py  # section 7 alone (starts its own simulator)",
        ".venv/bin/python bench/local_model.py       # section 8 alone (starts its own gateway)",
        ".venv/bin/python bench/metrics_overhead.py  # section 9 alone (its own simulator and gateways)",
        ".venv/bin/python bench/relay_chunks.py --baseline REF  # section 10 alone",
        ".venv/bin/python bench/selection_overhead.py  # section 11 alone",
        "# their own sections, which bench/run.py keeps:",
        ".venv/bin/python bench/profile.py --output BENCHMARKS.md         # where the CPU goes (py-spy)",
        ".venv/bin/python bench/memory_profile.py --output BENCHMARKS.md  # where the memory goes",
        ".venv/bin/python bench/hot_path.py --baseline REF --output BENCHMARKS.md  # whole-gateway A/B",
        ".venv/bin/python bench/hot_path.py --server granian --output BENCHMARKS.md",
        ".venv/bin/python bench/resumable.py --output BENCHMARKS.md       # resumable streams, replicas",
        "```",
        "",
        "Needs `taskset` and at least 2 cores; binds only 127.0.0.1; PostgreSQL at "
        "`postgresql://postgres@127.0.0.1:5432/test` or `$TOKENRELAY_BENCH_PG` (a database is created "
        "and dropped per run). Processes: `tokenrelay sim` (core 1), five `tokenrelay serve` gateways "
        "(core 0; ledger off, off again as the A/A control, on SQLite, on PostgreSQL, and a ledger-off "
        "one for the memory test only; each with its own spool directory in a scratch directory; "
        "`PYTHONHASHSEED=0`; `TOKENRELAY_LOG_LEVEL=WARNING`, so the per-stream `stream_end` log line "
        "is not written), `uvicorn bench/tutorial_app.py` (core 0), the in-process micro-benchmarks "
        "(core 0); the "
        "load generator runs in `bench/run.py` itself on core 1. Only one of them is under load at a "
        "time. Children import `tokenrelay` from this checkout's `src/` (their `PYTHONPATH`).",
        "",
    ]
    return "\n".join(out)
