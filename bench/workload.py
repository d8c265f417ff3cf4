"""What the benchmark asks of the processes under test: simulator models, gateways, sample sizes."""

from __future__ import annotations

from dataclasses import dataclass

# Simulator behaviours, by the public model name the gateways know them under.
MODELS = {
    "pace1": "tokens=4&tps=200",  # 1 stream: TTFT + 3 gaps of 5 ms per request
    "pace200": "tokens=100&tps=50",  # 200 streams of 2 s: 100 new streams/s, 10,000 chunks/s in total
    "pace200l": "tokens=60&tps=20",  # lighter: 200 streams of 3 s, 67 new streams/s, 4,000 chunks/s
    "tput": "tokens=20000",  # as fast as possible (the simulator writes 64 events at a time)
    "short": "tokens=1",  # stream set-up and tear-down cost
    "short20": "tokens=20",  # many short streams: the ledger's per-stream cost shows here
    "idle": "tokens=50&stall_after=1&stall_seconds=60",  # one delta, then silence
    "ab-headers": "headers_delay=30",
    "ab-first": "stall_after=0&stall_seconds=30&tokens=50",
    "ab-active": "tokens=2000&tps=100",
    "ab-stall": "tokens=50&stall_after=3&stall_seconds=30",
}
MESSAGES = [{"role": "user", "content": "hi"}]

# Sections 12 and 13: models that only this checkout's gateways are given (an older commit's
# gateway refuses their keys), public name "<prefix><key>" with MODELS[key]'s simulator options.
# Failover: priority 0 fails every request before its first token, priority 1 is the simulator;
# ``eject_after_failures`` out of reach, so that the failing deployment is never ejected and every
# request pays for one failover.
FAILOVER_PREFIXES = {
    "refused/": "connection refused (a bound, never listening loopback port)",
    "inband/": "200, then an in-band error before any content (`sim?error_after=0&…`)",
}
FAILOVER_KEYS = ("pace1",)
NEVER_EJECT = 1_000_000
# The same simulator behaviours, upstream over Anthropic's Messages API (``provider = "anthropic"``).
ANTHROPIC_PREFIX = "anthropic/"
ANTHROPIC_KEYS = ("pace1", "tput")


# The ledger comparison; gw-off2 is a second, identical ledger-off process: the A/A control.
LEDGER_GATEWAYS = ("gw-off", "gw-off2", "gw-sqlite", "gw-pg")
AA_GATEWAY = "gw-off2"
# With --baseline: a ledger-off gateway running the baseline's code beside gw-off, and one more
# that serves only the memory test (as gw-mem does for this checkout).
BASELINE_GATEWAY = "gw-base"
BASELINE_MEM = "gw-base-mem"
BASELINE_GATEWAYS = (BASELINE_GATEWAY, BASELINE_MEM)


@dataclass(frozen=True)
class Profile:
    name: str
    c1_requests: int  # sequential requests per target at concurrency 1
    c200_seconds: float
    baseline_c200_rounds: int  # --baseline: alternating rounds of gw-off, the baseline, the A/A process
    tput_warmup: float
    tput_seconds: float
    tput_concurrency: tuple[int, ...]
    mem_streams: int
    mem_targets: tuple[str, ...]
    abort_samples: int
    abort_targets: tuple[str, ...]
    ledger_rounds: int  # long streams: alternating rounds of the ledger comparison (median reported)
    ledger_long_seconds: float  # window of a long-stream run in a round (after 0.5 s of warm-up)
    slice_cycles: int  # short streams: interleaved cycles, one slice per gateway each
    slice_seconds: float  # measured window of one slice
    ledger_rows: int  # rows per variant in bench/ledger_rows.py
    client_requests: int  # timed requests per variant in bench/upstream_clients.py
    client_rounds: int
    # Sections 11-13 (defaults: what a results file written before them holds no data for).
    selection_rounds: int = 0  # bench/selection_overhead.py: rounds of ...
    selection_picks: int = 0  # ... pick + release pairs per variant
    routes_c1_requests: int = 0  # sequential requests per target, failover and /v1/messages TTFT
    protocol_rounds: int = 0  # alternating throughput rounds, /v1/messages beside /v1/chat/completions
    protocol_warmup: float = 0.0
    protocol_seconds: float = 0.0
    c1_targets: tuple[str, ...] = ("direct", "gw-off", "gw-off-chat", "gw-pg", "tutorial")
    c200_targets: tuple[str, ...] = ("direct", "gw-off", "gw-off-chat", "tutorial")
    c200_light_targets: tuple[str, ...] = ("direct", "gw-off")
    tput_targets: tuple[str, ...] = ("direct", "gw-off", "gw-off-chat")
    ledger_concurrency: int = 32
    setup_concurrency: int = 32
    wakeup_pings: int = 300
    tutorial_everything: bool = True


FULL = Profile(
    name="full",
    c1_requests=300,
    c200_seconds=10.0,
    baseline_c200_rounds=3,
    tput_warmup=1.0,
    tput_seconds=4.0,
    tput_concurrency=(4, 32),
    mem_streams=1000,
    mem_targets=("direct", "gw-mem", "tutorial"),
    abort_samples=50,
    abort_targets=("direct", "gw-off", "tutorial"),
    ledger_rounds=5,
    ledger_long_seconds=2.0,
    slice_cycles=12,
    slice_seconds=1.0,
    ledger_rows=20_000,
    client_requests=360,
    client_rounds=6,
    selection_rounds=9,
    selection_picks=30_000,
    routes_c1_requests=200,
    protocol_rounds=3,
    protocol_warmup=0.5,
    protocol_seconds=2.0,
)
QUICK = Profile(
    name="quick",
    c1_requests=30,
    c200_seconds=3.5,
    baseline_c200_rounds=1,
    tput_warmup=0.3,
    tput_seconds=1.0,
    tput_concurrency=(32,),
    mem_streams=1000,
    mem_targets=("direct", "gw-mem"),
    abort_samples=15,
    abort_targets=("direct", "gw-off"),
    ledger_rounds=2,
    ledger_long_seconds=1.0,
    slice_cycles=3,
    slice_seconds=0.5,
    ledger_rows=2_000,
    client_requests=60,
    client_rounds=3,
    selection_rounds=3,
    selection_picks=20_000,
    routes_c1_requests=40,
    protocol_rounds=1,
    protocol_warmup=0.3,
    protocol_seconds=1.0,
    c200_targets=("direct", "gw-off", "tutorial"),
    c200_light_targets=(),
    wakeup_pings=100,
)
