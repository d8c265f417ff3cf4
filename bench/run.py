"""tokenrelay benchmark: gateway vs a direct connection to the simulated upstream, in one run.

    .venv/bin/python bench/run.py            # full run (~9 minutes), writes BENCHMARKS.md
    .venv/bin/python bench/run.py --quick    # smaller samples (~3 minutes)
    .venv/bin/python bench/run.py --save-results bench/results/latest.json   # also keep the numbers
    .venv/bin/python bench/run.py --render-from bench/results/latest.json    # the report again
    .venv/bin/python bench/run.py --baseline HEAD~3   # and an older commit beside this checkout

Starts the simulator and five gateways (ledger off; off again, the A/A control; on SQLite; on
PostgreSQL; and one more, ledger off, that serves only the memory test) as subprocesses on free
loopback ports (gateways pinned to core 0 with ``taskset``; the simulator and this load
generator share core 1), measures, stops everything and writes the report. The load generator
is a raw asyncio protocol (uvloop): it writes a prepared HTTP/1.1 request and counts SSE events
by counting ``b"\\n\\n"`` in what it reads, with ``time.monotonic()`` timestamps (system-wide,
comparable with the simulator's). In-process micro-benchmarks run as subprocesses too, among
them ``bench/ledger_rows.py`` (ledger rows per second), ``bench/upstream_clients.py`` (the
upstream HTTP client) and ``bench/selection_overhead.py`` (choosing a deployment).

Deployments and the Messages API (sections 12 and 13) are measured on this checkout's ledger-off
gateway only, with models its TOML gets in addition (failover between two deployments; an
Anthropic upstream); what its code lacks is left out with a note (``processes.features``), and
a baseline's gateways get the TOML without them. Every child imports ``tokenrelay`` from this
checkout's ``src`` (its ``PYTHONPATH``), whatever the environment has installed; the run checks
that it does.

PostgreSQL: a throw-away database is created for the run and dropped at the end (see
``bench/pgdb.py``; ``TOKENRELAY_BENCH_PG`` overrides the maintenance DSN). Without a reachable
server the PostgreSQL rows are left out and the report says so.

Results: ``--save-results FILE.json`` writes every measurement as JSON (``bench/results.py``)
and checks that the file renders the same report; ``--render-from FILE.json`` writes the report
from such a file without measuring, e.g. after the report code changed. Nothing is saved unless
asked: ``bench/results/`` is a convenient place, but it is not ignored by git.

Baseline: ``--baseline REF`` checks the commit REF out as a detached git worktree in the run's
scratch directory (removed at the end) and starts two more ledger-off gateways from its ``src``:
one joins the ledger-off gateway's TTFT, throughput and short-stream measurements, in the same
interleaved or alternating rounds, the other serves only the memory test. The report gains a
section "Against the baseline": each figure, this / baseline and a verdict, with the A/A control.

Two more scripts measure apart and keep their own sections of BENCHMARKS.md (this script keeps
them when it rewrites the file): ``bench/resumable.py`` (resumable streams and replicas: Redis,
nginx, three gateways, a SIGKILL) and ``bench/profile.py`` (where the gateway's CPU goes, sampled
by py-spy).

The harness, by module: ``harness`` (one run: processes up, ``measure``, processes down),
``measure`` (the order of the measurements), ``scenarios_load`` and ``scenarios_hold`` (the
measurements), ``loadgen`` (the load generator), ``processes``, ``baseline`` (the worktree),
``results`` (what was measured, and its JSON), ``report`` and ``report_*`` (BENCHMARKS.md),
``analysis`` and ``stats`` (derived figures), ``workload`` (models, gateways, sample sizes).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from baseline import resolve
from harness import run
from processes import ROOT, log
from report import machine, render
from results import load, save
from workload import FULL, QUICK


def keep_resumable_section(path: Path, report: str) -> str:
    """``report``, plus the sections other scripts wrote into ``path`` (``bench/resumable.py``,
    ``profile.py``, ``memory_profile.py``, ``hot_path.py``: they measure apart and keep their
    own sections up to date) and the hand-written analysis of the performance targets."""
    from profile import SECTION as PROFILE

    from hot_path import BASELINE_SECTION, SERVER_SECTION
    from memory_profile import SECTION as MEMORY
    from report_perf import ANALYSIS_SECTION
    from resumable import SECTION as RESUMABLE
    from resumable import with_section

    old = path.read_text() if path.exists() else ""
    for heading in (ANALYSIS_SECTION, PROFILE, MEMORY, BASELINE_SECTION, SERVER_SECTION, RESUMABLE):
        if heading in old:
            section = heading + old.split(heading, 1)[1].split("\n## ", 1)[0]
            report = with_section(report, section, heading)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small samples, about three minutes")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="report path")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs and ledger DB")
    parser.add_argument(
        "--save-results", type=Path, metavar="FILE.json", help="also write the measurements here as JSON"
    )
    parser.add_argument(
        "--render-from",
        type=Path,
        metavar="FILE.json",
        help="measure nothing: write the report from a file written by --save-results",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also measure the gateway of this git commit (e.g. HEAD~3), beside this checkout's",
    )
    args = parser.parse_args(argv)
    if args.render_from:
        if args.baseline or args.save_results:
            parser.error("--render-from measures nothing: no --baseline or --save-results with it")
        args.output.write_text(keep_resumable_section(args.output, render(load(args.render_from))))
        return 0
    if args.baseline:
        try:
            resolve(args.baseline)  # before anything starts
        except RuntimeError as exc:
            parser.error(str(exc))
    if (os.cpu_count() or 1) < 2:
        print("needs at least 2 cores (gateway on core 0, simulator and load on core 1)", file=sys.stderr)
        return 2
    results = run(QUICK if args.quick else FULL, args.keep_logs, args.baseline)
    results.machine = machine(results)
    report = render(results)
    code = 0
    if args.save_results is not None:
        save(results, args.save_results)
        # The file is only worth keeping if it gives this report back; say so now, not when a
        # re-render months later comes out different.
        if render(load(args.save_results)) != report:
            log(f"WARNING: {args.save_results} does not render the same report (a bug in bench/results.py)")
            code = 1
        else:
            log(f"saved the measurements in {args.save_results} (they render the same report)")
    args.output.write_text(keep_resumable_section(args.output, report))
    log(f"wrote {args.output} ({results.finished - results.started:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
