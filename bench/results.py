"""What a run measured, and its JSON form (``--save-results``, ``--render-from``).

JSON rather than pickle: a pickle names the classes that wrote it, so it stops loading once the
harness is reorganised, and it cannot be read outside Python. The file is the dataclasses as
nested dicts (``dataclasses.asdict``) under a version number; loading rebuilds them from their
type hints. NaN ("not measured") is written as the ``NaN`` literal Python's json reads back, so
a round trip renders the identical report. Fields added later load from files that lack them
(their defaults) and fields since removed are ignored: an older file can be rendered again with
newer report code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workload import Profile

FORMAT = "tokenrelay-bench-results"
VERSION = 1


@dataclass
class Latency:
    target: str
    concurrency: int
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    # Steady-state window of the concurrent run: chunks delivered and CPU of the process under test.
    window: float = 0.0
    events: int = 0
    target_cpu: float = 0.0
    sim_cpu: float = 0.0


@dataclass
class Throughput:
    target: str
    concurrency: int
    seconds: float
    events: int
    target_cpu: float  # CPU-seconds of the measured process (gateway, or sim for direct)
    sim_cpu: float
    load_cpu: float
    errors: int
    requests: int
    completed: int = 0  # streams completed inside the window
    key: str = "tput"
    after_cpu: float = 0.0  # CPU-seconds the process used after the window (streams we aborted)
    after_seconds: float = 0.0
    round_no: int = 0  # ledger comparison: which alternating round
    pg_cpu: float | None = None  # CPU-seconds of the PostgreSQL server over the window
    steal: float = math.nan  # CPU-seconds stolen by the hypervisor (all cores) over the window

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def streams_per_s(self) -> float:
        return self.completed / self.seconds

    @property
    def cpu_ms_per_stream(self) -> float:
        return 1000 * self.target_cpu / self.completed if self.completed else math.nan

    @property
    def per_cpu_s(self) -> float:
        return self.events / self.target_cpu if self.target_cpu > 0 else math.nan


@dataclass
class Memory:
    target: str
    streams: int
    opened: int
    rss_before: int
    rss_open: int
    rss_after: int
    sim_rss_delta: int
    open_seconds: float
    closed_clean: bool
    opened2: int = 0
    rss_open2: int = 0

    @property
    def kib_per_stream(self) -> float:
        return (self.rss_open - self.rss_before) / 1024 / max(self.opened, 1)

    @property
    def kib_per_stream_warm(self) -> float:
        return (self.rss_open2 - self.rss_after) / 1024 / max(self.opened2, 1)


@dataclass
class Abort:
    target: str
    phase: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    not_ended: int = 0  # the upstream request was still open when we stopped looking
    invalid: int = 0  # the client never reached the state the phase needs


@dataclass
class Wakeup:
    idle_ms: float  # how long the echo process slept before each ping
    rtts: list[float]


@dataclass
class Baseline:
    """``--baseline``: the gateways that ran an older commit's code beside this checkout's.

    Their long-stream rounds and short-stream slices are in ``Results.ledger`` (labelled
    ``gw-base``), which the ledger tables leave out; the rest is here, apart from the sections'
    own results so that those render as without a baseline.
    """

    ref: str  # as given on the command line
    commit: str  # what it resolved to (short hash)
    subject: str
    this_dirty: bool  # whether this checkout's src/ had uncommitted changes (they are what ran)
    tokenrelay_file: str = ""  # where the baseline's children imported tokenrelay from
    c1: dict[str, Latency] = field(default_factory=dict)  # gw-base, gw-off2: in section 1's interleaving
    c200: dict[str, Latency] = field(default_factory=dict)  # gw-base, gw-off2: right after gw-off's run
    mem: Memory | None = None  # gw-base-mem

    @property
    def name(self) -> str:
        """How the report names it: the ref as given, and the commit unless the ref is one."""
        if self.ref.startswith(self.commit) or self.commit.startswith(self.ref):
            return f"`{self.commit}`"
        return f"`{self.ref}` = `{self.commit}`"


@dataclass
class Results:
    profile: Profile
    c1: dict[str, Latency] = field(default_factory=dict)
    c200: dict[str, Latency] = field(default_factory=dict)
    c200l: dict[str, Latency] = field(default_factory=dict)
    tput: list[Throughput] = field(default_factory=list)
    setup: list[Throughput] = field(default_factory=list)
    ledger: list[Throughput] = field(default_factory=list)  # the alternating ledger comparison
    mem: list[Memory] = field(default_factory=list)
    aborts: list[Abort] = field(default_factory=list)
    rows_in_db: dict[str, int] = field(default_factory=dict)  # ledger gateway -> rows after the run
    rows_in_spool: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)  # gateway -> streams started through it
    rows_bench: dict[str, Any] | None = None  # bench/ledger_rows.py
    local_bench: dict[str, Any] | None = None  # bench/local_model.py
    metrics_bench: dict[str, Any] | None = None  # bench/metrics_overhead.py
    relay_bench: dict[str, Any] | None = None  # bench/relay_chunks.py (with --baseline)
    clients_bench: dict[str, Any] | None = None  # bench/upstream_clients.py
    selection_bench: dict[str, Any] | None = None  # bench/selection_overhead.py (section 11)
    # Sections 12 and 13: what this checkout's gateway offers ("deployments", "messages-api",
    # "anthropic-upstream"); their 1-stream TTFT (one interleaving: direct, gw-off and the new
    # targets); the gateway's attempt counts over that run, per model ("deployment: outcome" ->
    # attempts); and the throughput rounds of section 13 (``round_no``: the alternating round).
    features: list[str] = field(default_factory=list)
    c1_routes: dict[str, Latency] = field(default_factory=dict)
    attempts: dict[str, dict[str, float]] = field(default_factory=dict)
    protocol_tput: list[Throughput] = field(default_factory=list)
    wakeup: list[Wakeup] = field(default_factory=list)
    oversleep: list[float] = field(default_factory=list)
    tokenrelay_file: str = ""
    commit: str = ""  # HEAD when the run started (others may commit while it runs)
    pg_problem: str | None = None  # why the PostgreSQL rows are missing, if they are
    started: float = 0.0
    finished: float = 0.0
    notes: list[str] = field(default_factory=list)
    # The Machine table, taken when the run ends: rendering it later would describe the machine,
    # commit and packages at rendering time instead. Empty: taken at rendering (older files).
    machine: list[tuple[str, str]] = field(default_factory=list)
    baseline: Baseline | None = None
    # RSS (MiB) of each memory-test gateway right after it answered /readyz, before any stream.
    idle_rss_mib: dict[str, float] = field(default_factory=dict)


def to_json(results: Results) -> str:
    return json.dumps({"format": FORMAT, "version": VERSION, "results": dataclasses.asdict(results)})


def from_json(text: str) -> Results:
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError("not a results file of bench/run.py")
    if data.get("version") != VERSION:
        raise ValueError(f"results file version {data.get('version')!r}; this code reads version {VERSION}")
    results: Results = _build(Results, data["results"])
    return results


def save(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(results))


def load(path: Path) -> Results:
    return from_json(path.read_text())


def _build(cls: Any, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{name: _decode(hints[name], value) for name, value in data.items() if name in known})


def _decode(hint: Any, value: Any) -> Any:
    """``value`` as JSON gave it, turned back into ``hint`` (the field's type)."""
    if value is None:
        return None
    if dataclasses.is_dataclass(hint):
        return _build(hint, value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):  # only ``X | None`` is used
        (inner,) = [a for a in args if a is not type(None)]
        return _decode(inner, value)
    if origin is list:
        return [_decode(args[0], v) for v in value]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in value)
        return tuple(_decode(a, v) for a, v in zip(args, value, strict=True))
    if origin is dict:
        return {k: _decode(args[1], v) for k, v in value.items()}
    return value  # int, float, str, bool, Any: JSON keeps ints and floats apart already
