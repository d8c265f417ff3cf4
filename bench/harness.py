"""One run: start the simulator, the gateways and the tutorial app, measure, stop, count rows.

Gateways are pinned to core 0 with ``taskset``; the simulator and this load generator share
core 1. Each gateway has a spool directory of its own in a scratch directory, which is removed
at the end unless ``--keep-logs`` (or the run failed: then the logs stay for a look).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sqlite3
import tempfile
import time
from pathlib import Path

import uvloop

import pgdb
from baseline import add_worktree, head, remove_worktree
from loadgen import Target
from measure import measure
from processes import (
    GATEWAY_CORE,
    LOAD_CORE,
    PYTHON,
    ROOT,
    Child,
    features,
    free_port,
    gateway_config,
    ledger_state,
    log,
    raise_nofile,
    routes_config,
    spawn,
    spool_rows,
    stop_children,
    tokenrelay_origin,
    wait_ready,
    wakeup_latency,
)
from results import Results
from workload import ANTHROPIC_PREFIX, BASELINE_GATEWAYS, BASELINE_MEM, LEDGER_GATEWAYS, Profile

LEDGER_OFF = {"TOKENRELAY_LEDGER__ENABLED": "false"}


def run(profile: Profile, keep_logs: bool = False, baseline_ref: str | None = None) -> Results:
    results = Results(profile=profile)
    results.started = time.time()
    results.commit = head()
    nofile = raise_nofile()
    os.sched_setaffinity(0, {LOAD_CORE})
    results.tokenrelay_file = tokenrelay_origin()
    if not Path(results.tokenrelay_file).resolve().is_relative_to(ROOT / "src"):
        raise RuntimeError(
            f"children would import tokenrelay from {results.tokenrelay_file}, not {ROOT / 'src'}"
        )
    log(f"children import tokenrelay from {results.tokenrelay_file}")
    workdir = Path(tempfile.mkdtemp(prefix="tokenrelay-bench-"))
    worktree = workdir / "baseline"
    children: list[Child] = []
    pg_name: str | None = None
    pg_url = ""
    ledger_db = workdir / "ledger.db"
    names = (*LEDGER_GATEWAYS, "gw-mem", *(BASELINE_GATEWAYS if baseline_ref else ()))
    spools = {name: workdir / f"spool-{name}" for name in names}
    # Sections 12 and 13 need deployments and the Messages API: what this checkout's gateway has
    # of them decides which of their models its TOML gets (a gateway refuses keys it lacks).
    results.features = features()
    missing = {"deployments", "messages-api", "anthropic-upstream"} - set(results.features)
    if missing:
        results.notes.append(
            f"this checkout's gateway lacks {', '.join(sorted(missing))}: sections 12-13 leave it out"
        )
    # The failover's refused deployment: a port bound (so nothing else gets it) but never listening.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    results.pg_problem = pgdb.reachable()
    if results.pg_problem:
        results.notes.append(f"PostgreSQL not reachable ({results.pg_problem}): no PostgreSQL rows")
    try:
        if baseline_ref:
            results.baseline = add_worktree(baseline_ref, worktree)
        if results.pg_problem is None:
            pg_name, pg_url = asyncio.run(pgdb.create_database())
            log(f"PostgreSQL database {pg_name} created")
        results.wakeup, results.oversleep = wakeup_latency(workdir, profile.wakeup_pings)
        sim_port = free_port()
        sim = spawn(
            "sim",
            LOAD_CORE,
            [PYTHON, "-m", "tokenrelay", "sim", "--port", str(sim_port)],
            {},
            sim_port,
            workdir,
        )
        children.append(sim)
        config = workdir / "gateway.toml"
        config.write_text(
            gateway_config(sim_port) + "\n" + routes_config(sim_port, closed_port, results.features)
        )
        # The baseline's gateways: the models every commit knows, nothing of sections 12-13.
        config_base = workdir / "gateway-base.toml"
        config_base.write_text(gateway_config(sim_port))
        # A fixed hash seed: one less way for two identical gateway processes to differ.
        base_env = {"TOKENRELAY_LOG_LEVEL": "WARNING", "TOKENRELAY_DRAIN_SECONDS": "1", "PYTHONHASHSEED": "0"}
        gateway_envs = {
            "gw-off": LEDGER_OFF,
            "gw-off2": LEDGER_OFF,
            "gw-mem": LEDGER_OFF,
            "gw-sqlite": {
                "TOKENRELAY_LEDGER__ENABLED": "true",
                "TOKENRELAY_LEDGER__DATABASE_URL": f"sqlite+aiosqlite:///{ledger_db}",
            },
        }
        if pg_url:
            gateway_envs["gw-pg"] = {
                "TOKENRELAY_LEDGER__ENABLED": "true",
                "TOKENRELAY_LEDGER__DATABASE_URL": pg_url,
            }
        if baseline_ref:
            # The same settings as gw-off and gw-mem; only the code differs.
            gateway_envs.update(dict.fromkeys(BASELINE_GATEWAYS, LEDGER_OFF))
        gateway_children: dict[str, Child] = {}
        for name, env in gateway_envs.items():
            port = free_port()
            toml = config_base if name in BASELINE_GATEWAYS else config
            argv = [PYTHON, "-m", "tokenrelay", "serve", "--port", str(port), "--config", str(toml)]
            # Every gateway gets a spool directory of its own in the scratch directory.
            env = {**base_env, **env, "TOKENRELAY_LEDGER__SPOOL_DIR": str(spools[name])}
            src = worktree / "src" if name in BASELINE_GATEWAYS else ROOT / "src"
            gateway_children[name] = spawn(name, GATEWAY_CORE, argv, env, port, workdir, src)
            children.append(gateway_children[name])
        tutorial_port = free_port()
        tutorial = spawn(
            "tutorial",
            GATEWAY_CORE,
            [
                PYTHON,
                "-m",
                "uvicorn",
                "--app-dir",
                str(ROOT / "bench"),
                "tutorial_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(tutorial_port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            {"TUTORIAL_UPSTREAM_URL": f"http://127.0.0.1:{sim_port}/v1"},
            tutorial_port,
            workdir,
        )
        children.append(tutorial)
        wait_ready(sim, "/_stats")
        for name, child in gateway_children.items():
            wait_ready(child, "/readyz", timeout=60)
            state = ledger_state(child.port)
            if state != ("ok" if name in ("gw-sqlite", "gw-pg") else "disabled"):
                raise RuntimeError(f"{name}: ledger state {state!r}:\n{child.log.read_text()[-3000:]}")
            if name in ("gw-mem", BASELINE_MEM):
                # An idle gateway: imports, settings and what start-up loads, before any stream.
                results.idle_rss_mib[name] = child.proc.memory_info().rss / 2**20
        wait_ready(tutorial, "/openapi.json", timeout=60)
        log(
            f"started: sim :{sim_port}, gateways "
            f"{ {name: c.port for name, c in gateway_children.items()} }, "
            f"tutorial :{tutorial_port} (RLIMIT_NOFILE {nofile}, logs in {workdir})"
        )

        targets: dict[str, Target] = {
            "direct": Target("direct", sim_port, "direct", sim.proc, "simulator, direct")
        }
        for name, child in gateway_children.items():
            targets[name] = Target(name, child.port, "v1", child.proc)
            targets[f"{name}-chat"] = Target(f"{name}-chat", child.port, "chat", child.proc)
        targets["tutorial"] = Target("tutorial", tutorial_port, "tutorial", tutorial.proc)
        # Sections 12 and 13: this checkout's ledger-off gateway only.
        targets["direct-msg"] = Target("direct-msg", sim_port, "direct-messages", sim.proc)
        off = gateway_children["gw-off"]
        if "deployments" in results.features:
            for prefix in ("refused", "inband"):
                label = f"gw-off-{prefix}"
                targets[label] = Target(label, off.port, "v1", off.proc, prefix=f"{prefix}/")
        if "messages-api" in results.features:
            targets["gw-off-msg"] = Target("gw-off-msg", off.port, "messages", off.proc)
            if "anthropic-upstream" in results.features:
                targets["gw-off-msg-anth"] = Target(
                    "gw-off-msg-anth", off.port, "messages", off.proc, prefix=ANTHROPIC_PREFIX
                )

        uvloop.run(measure(targets, sim, results, workdir))

        for child in children:
            if child.popen.poll() is not None:
                results.notes.append(f"{child.name} exited during the run (code {child.popen.returncode})")
        for name, child in gateway_children.items():  # every endpoint and model of the process
            results.sent[name] = sum(t.sent for t in targets.values() if t.proc.pid == child.popen.pid)
    finally:
        stop_children(children)  # the gateways write their last batches as they stop
        closed.close()
        try:
            if ledger_db.exists():
                with contextlib.closing(sqlite3.connect(ledger_db)) as db:
                    results.rows_in_db["gw-sqlite"] = db.execute(
                        "select count(*) from usage_record"
                    ).fetchone()[0]
            if pg_name:
                results.rows_in_db["gw-pg"] = asyncio.run(pgdb.count_rows(pg_url))
            for name, directory in spools.items():
                results.rows_in_spool[name] = spool_rows(directory)
        finally:
            if pg_name:
                asyncio.run(pgdb.drop_database(pg_name))
                log(f"PostgreSQL database {pg_name} dropped")
            if worktree.exists():
                remove_worktree(worktree)
    if not keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)  # on failure the logs stay for a look
    results.finished = time.time()
    return results
