"""``intents-mm bench``: the quote hot path under a constant request rate, measured at the relay.

Starts the simulated venue and the seven services exactly as ``intents-mm simulate`` does (same
composition, same wire protocols over loopback; control APIs and venue servers on ephemeral ports, a
fresh SQLite history store in a temporary directory), waits for warm-up, arms through the audited
control endpoints, then drives quote requests through the simulated relay's in-process
``request_quote`` hook at a constant rate (open loop: each request is scheduled by time, the driver
never waits for answers).

The latency of one quote is measured AT THE RELAY: from the moment the relay queues the quote event
for our ingest socket until our executor's ``quote_response`` frame is read on the executor's socket
(:meth:`SimRelay.latency_samples`, partner ``market-maker``). A request is *dropped* when no
``quote_response`` of ours arrived inside the relay window (declined by the strategy, skipped by the
executor, or too late).

CPU: ``time.process_time()`` over the driving phase, divided by the answered quotes. The process holds
the venue (relay, Verifier signature checks, exchanges, NEAR RPC) as well as the market maker, so this
is an upper bound for the market maker alone; a SIGPROF sampler (every ``CPU_SAMPLE_S`` of process CPU)
attributes samples to the venue (any ``intents_mm/sim`` frame on the stack), the driver, the market
maker (any other ``intents_mm`` frame) or the rest (event loop, socket callbacks, other threads).

Bench-only configuration (laid over the defaults, never read from ``.env``): limits that never
decline the bench's requests (:data:`BENCH_CONFIG`), a funded play-money account, no competing
solvers and no price jumps (so no guard pauses quoting), and request sizes of 1-4 EUR (within the
default ``STRATEGY_MAX_NOTIONAL_EURE`` of 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import dataclasses
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal, localcontext
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

from intents_mm.config import SERVICES
from intents_mm.domain.amounts import Rounding, to_units
from intents_mm.domain.assets import AssetRegistry
from intents_mm.errors import IntentsMMError
from intents_mm.services.runtime import to_jsonable
from intents_mm.sim.relay import RelayRequestError
from intents_mm.sim.scenario import Scenario, builtin_scenario
from intents_mm.simulate import Simulation, percentile

DEFAULT_NATS_URL: Final = "nats://127.0.0.1:4222"
DRAIN_GRACE_S: Final = 1.0
CPU_SAMPLE_S: Final = 0.002
MIN_NOTIONAL_EUR: Final = Decimal(1)
MAX_NOTIONAL_EUR: Final = Decimal(4)
REQUEST_MIN_DEADLINE_MS: Final = 30_000
BENCH_PARTNER: Final = "bench"

#: Configuration laid over the defaults for a bench run (strings, as in the environment).
BENCH_CONFIG: Final[Mapping[str, str]] = {
    "STRATEGY_MAX_OUTSTANDING_EURE": "1000000000",
    "STRATEGY_MIN_BTC": "0",
    "STRATEGY_MAX_BTC": "20",
    "STRATEGY_MIN_EURE": "0",
    "STRATEGY_MAX_EURE": "100000000",
    "STRATEGY_DAILY_LOSS_LIMIT_EURE": "1000000",
    "STRATEGY_MAX_DRAWDOWN_EURE": "1000000",
}
#: The market maker's play-money balances: room for every reservation of a long run at 500/s.
BENCH_BALANCES: Final[Mapping[str, str]] = {"BTC": "10", "EURe": "1000000"}


def bench_scenario() -> Scenario:
    """The default market without competitors or price jumps, with a well-funded market maker."""
    base = builtin_scenario("default")
    mm = Scenario.from_dict({"market_maker": {"balances": dict(BENCH_BALANCES)}}).market_maker
    return dataclasses.replace(
        base,
        name="bench",
        description="intents-mm bench: no competitors, no price jumps, funded market maker",
        price=dataclasses.replace(base.price, jump_rate_per_hour=0.0),
        solvers=(),
        market_maker=dataclasses.replace(base.market_maker, balances=mm.balances),
    )


# ------------------------------------------------------------------------------ CPU attribution


class CpuSampler:
    """Attributes process CPU time by sampling the main thread's stack on SIGPROF.

    ``ITIMER_PROF`` fires after every ``interval_s`` of CPU consumed by the process (any thread), so
    samples are proportional to CPU time and an idle loop is never sampled. Each sample is counted
    under ``venue`` (a frame of ``intents_mm/sim`` on the stack), ``driver`` (this module),
    ``market_maker`` (any other ``intents_mm`` frame) or ``other`` (event loop and socket callbacks
    outside any task of ours, and CPU of other threads such as aiosqlite's, which the main thread
    sees while idle).
    """

    def __init__(self, interval_s: float = CPU_SAMPLE_S) -> None:
        self.interval_s = interval_s
        self.counts: Counter[str] = Counter()
        self.by_task: Counter[str] = Counter()
        self._previous: Any = None
        self.active = False

    driver_code: frozenset[Any] = frozenset()

    def _classify(self, frame: FrameType | None) -> str:
        driver = market_maker = False
        driver_code = self.driver_code
        while frame is not None:
            code = frame.f_code
            name = code.co_filename
            if "intents_mm" in name:
                if "intents_mm/sim/" in name:
                    return "venue"
                if code in driver_code:
                    driver = True
                elif not name.endswith("intents_mm/bench.py"):
                    market_maker = True
            frame = frame.f_back
        return "driver" if driver else "market_maker" if market_maker else "other"

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        kind = self._classify(frame)
        self.counts[kind] += 1
        self.by_task[f"{kind} {self._task_name()}"] += 1

    @staticmethod
    def _task_name() -> str:
        """The running asyncio task: its name, or for an unnamed one its coroutine's."""
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        if task is None:
            return "(no task: event loop, socket callbacks, other threads)"
        name = task.get_name()
        if name.startswith("Task-"):
            return getattr(task.get_coro(), "__qualname__", "?")
        return name

    def start(self) -> None:
        if not hasattr(signal, "setitimer"):
            return
        self._previous = signal.signal(signal.SIGPROF, self._on_signal)
        signal.setitimer(signal.ITIMER_PROF, self.interval_s, self.interval_s)
        self.active = True

    def stop(self) -> None:
        if not self.active:
            return
        signal.setitimer(signal.ITIMER_PROF, 0.0, 0.0)
        signal.signal(signal.SIGPROF, self._previous if self._previous is not None else signal.SIG_DFL)
        self.active = False

    def shares(self) -> dict[str, float]:
        total = sum(self.counts.values())
        if not total:
            return {}
        return {k: round(v / total, 3) for k, v in sorted(self.counts.items())}

    def top_tasks(self, n: int = 15) -> dict[str, float]:
        """The ``n`` asyncio tasks that used the most CPU, as shares of all samples."""
        total = sum(self.by_task.values())
        return {k: round(v / total, 3) for k, v in self.by_task.most_common(n)} if total else {}


# ------------------------------------------------------------------------------ the run


class Bench(Simulation):
    """One bench run; :meth:`run_bench` returns the report (JSON-ready)."""

    banner = "intents-mm bench"

    def __init__(
        self,
        *,
        mode: str,
        rate: float,
        duration_s: float,
        seed: int,
        accept_share: float = 0.0,
        nats_url: str = DEFAULT_NATS_URL,
        cpu_split: bool = True,
        profile_path: str | None = None,
        var_dir: Path,
        out: TextIO = sys.stdout,
    ) -> None:
        if mode not in ("memory", "nats"):
            raise IntentsMMError(f"--mode must be memory or nats, got {mode!r}")
        if rate <= 0 or duration_s <= 0:
            raise IntentsMMError("--rate and --duration must be positive")
        if not 0.0 <= accept_share <= 1.0:
            raise IntentsMMError("--accept-share must be between 0 and 1")
        environ = {"INTENTS_MM_VAR_DIR": str(var_dir), **BENCH_CONFIG}
        if mode == "nats":
            environ["NATS_URL"] = nats_url
        super().__init__(
            duration_s=duration_s,
            seed=seed,
            scenario=bench_scenario(),
            environ=environ,
            dotenv=None,
            ports={name: 0 for name in SERVICES},
            venue_ports=None,
            out=out,
        )
        self.mode = mode
        self.rate = rate
        self.accept_share = accept_share
        self.cpu_split = cpu_split
        self.profile_path = profile_path
        self._rng = random.Random(seed)
        self.outcomes: Counter[str] = Counter()
        self.max_lag_s = 0.0

    async def run_bench(self) -> dict[str, Any]:
        try:
            await self._start()
            await self._warm_up_and_arm()
            return await self._drive()
        finally:
            await self._shutdown()

    def _request(self, mid_eur: Decimal) -> dict[str, Any]:
        pair = AssetRegistry.default().active_pair
        base, quote = pair.base, pair.quote
        sell_base = self._rng.random() < 0.5
        exact_in = self._rng.random() < 0.7
        notional = MIN_NOTIONAL_EUR + (MAX_NOTIONAL_EUR - MIN_NOTIONAL_EUR) * Decimal(
            f"{self._rng.random():.6f}"
        )
        asset_in, asset_out = (base, quote) if sell_base else (quote, base)
        fixed_asset = asset_in if exact_in else asset_out
        with localcontext() as ctx:
            ctx.prec = 40
            human = notional / mid_eur if fixed_asset == base else notional * pair.quote_per_fiat
        fixed = max(1, to_units(fixed_asset, human, Rounding.FLOOR))
        return {
            "defuse_asset_identifier_in": asset_in.token_id,
            "defuse_asset_identifier_out": asset_out.token_id,
            ("exact_amount_in" if exact_in else "exact_amount_out"): str(fixed),
            "min_deadline_ms": REQUEST_MIN_DEADLINE_MS,
        }

    async def _one(self, req: dict[str, Any], accept: bool) -> None:
        venue = self.venue
        assert venue is not None
        try:
            quotes = await venue.relay.request_quote(req, partner_id=BENCH_PARTNER)
        except RelayRequestError:
            self.outcomes["request_refused"] += 1
            return
        if not quotes:
            self.outcomes["no_quote"] += 1
            return
        self.outcomes["quoted"] += 1
        if accept and venue.users:
            user = venue.users[0]
            try:
                result = await venue.relay.publish_intent(
                    [quotes[0]["quote_hash"]], user.sign_acceptance(quotes[0])
                )
            except IntentsMMError:
                self.outcomes["publish_error"] += 1
                return
            self.outcomes["published_ok" if result.get("status") == "OK" else "published_failed"] += 1

    async def _drive(self) -> dict[str, Any]:
        venue, running = self.venue, self.running
        assert venue is not None and running is not None
        relay = venue.relay
        loop = asyncio.get_running_loop()
        total = max(1, round(self.rate * self.duration_s))
        interval = 1.0 / self.rate
        self.say(f"driving {total} quote requests at {self.rate:g}/s ({self.mode} bus)")
        relay.clear_latency_samples()
        tasks: set[asyncio.Task[None]] = set()
        sampler = CpuSampler() if self.cpu_split else None
        if sampler is not None:  # the bench's own frames that do the driving (not run_bench/main)
            sampler.driver_code = frozenset(f.__code__ for f in (Bench._drive, Bench._one, Bench._request))
        profiler = cProfile.Profile() if self.profile_path else None
        cpu0, thread0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
        if sampler is not None:
            sampler.start()
        if profiler is not None:
            profiler.enable()
        try:
            start = loop.time() + 0.01
            for i in range(total):
                if self.stop.is_set():
                    total = i
                    break
                due = start + i * interval
                now = loop.time()
                if due > now:
                    await asyncio.sleep(due - now)
                else:
                    self.max_lag_s = max(self.max_lag_s, now - due)
                mid = venue.price_at(venue.clock.now_ns())
                accept = self.accept_share > 0 and self._rng.random() < self.accept_share
                task = loop.create_task(self._one(self._request(mid), accept))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            drive_s = time.perf_counter() - wall0
            if tasks:
                await asyncio.wait(set(tasks), timeout=relay.window_ms / 1000 + DRAIN_GRACE_S)
        finally:
            if profiler is not None:
                profiler.disable()
            if sampler is not None:
                sampler.stop()
        cpu_s = time.process_time() - cpu0
        thread_s = time.thread_time() - thread0
        wall_s = time.perf_counter() - wall0
        for task in list(tasks):
            task.cancel()
        if profiler is not None and self.profile_path:
            profiler.dump_stats(self.profile_path)
            self.say(f"cProfile statistics of the driving phase written to {self.profile_path}")
        samples = [s for s in relay.latency_samples() if s.partner_id == "market-maker"]
        answered = [s for s in samples if s.response_ns is not None]
        lat_ms = [(s.response_ns - s.sent_ns) / 1e6 for s in answered if s.response_ns is not None]
        rejected = sum(1 for s in answered if s.accepted is False)
        states = self._states()
        strat, execu = states["strategy-engine"], states["trade-executor"]
        report = {
            "mode": self.mode,
            "rate_per_s": self.rate,
            "duration_s": self.duration_s,
            "seed": self.seed,
            "sent": total,
            "events_to_us": len(samples),
            "answered": len(answered),
            "dropped": total - len(answered),
            "rejected_by_relay": rejected,
            "achieved_rate_per_s": round(total / drive_s, 1) if drive_s > 0 else None,
            "driver_max_lag_ms": round(self.max_lag_s * 1000, 3),
            "latency_ms": {
                "p50": _round(percentile(lat_ms, 50)),
                "p90": _round(percentile(lat_ms, 90)),
                "p99": _round(percentile(lat_ms, 99)),
                "max": _round(max(lat_ms) if lat_ms else None),
                "mean": _round(statistics.fmean(lat_ms) if lat_ms else None),
            },
            "cpu": {
                "process_s": round(cpu_s, 3),
                "main_thread_s": round(thread_s, 3),
                "wall_s": round(wall_s, 3),
                "per_answered_quote_us": round(cpu_s / len(answered) * 1e6, 1) if answered else None,
                "note": "whole process: the simulated venue and the driver run in it too",
                "split": sampler.shares() if sampler is not None else None,
                "split_samples": sum(sampler.counts.values()) if sampler is not None else None,
                "split_by_task": sampler.top_tasks() if sampler is not None else None,
            },
            "driver_outcomes": dict(self.outcomes),
            "strategy": {
                "requests": strat["counters"]["requests"],
                "commands": strat["counters"]["commands"],
                "declined_by_reason": strat["declined_by_reason"],
            },
            "executor_outcomes": execu.get("counts", {}),
            "history_writer": {k: states["history-writer"].get(k) for k in ("backlog", "last_error")},
            "config": dict(BENCH_CONFIG),
            "request_min_deadline_ms": REQUEST_MIN_DEADLINE_MS,
            "accept_share": self.accept_share,
            "bus": "NATS " + (self.nats_stream or "") if self.nats_stream else "memory",
            "store": "sqlite (temporary file)",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        }
        return to_jsonable(report)  # type: ignore[no-any-return]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def render_report(report: Mapping[str, Any]) -> str:
    lat, cpu = report["latency_ms"], report["cpu"]
    split = cpu.get("split")
    lines = [
        "",
        f"=== intents-mm bench ({report['mode']} bus, {report['rate_per_s']:g} req/s for "
        f"{report['duration_s']:g} s, seed {report['seed']}) ===",
        f"requests sent        {report['sent']}  (achieved {report['achieved_rate_per_s']}/s, "
        f"driver max lag {report['driver_max_lag_ms']} ms)",
        f"answered by us       {report['answered']}  (rejected by the relay {report['rejected_by_relay']})",
        f"dropped              {report['dropped']}  (declined, late or unanswered within the relay window)",
        f"latency at relay ms  p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}",
        f"CPU per quote        {cpu['per_answered_quote_us']} us  (process {cpu['process_s']} s over "
        f"{cpu['wall_s']} s; whole process incl. the simulated venue and the driver)",
    ]
    if split:
        lines.append("CPU split (sampled)  " + "  ".join(f"{k} {v:.0%}" for k, v in split.items()))
    declined = report["strategy"]["declined_by_reason"]
    if declined:
        lines.append(f"declined by reason   {json.dumps(declined, sort_keys=True)}")
    return "\n".join(lines)


def run_bench(
    *,
    mode: str,
    rate: float,
    duration_s: float,
    seed: int,
    json_path: str | None,
    accept_share: float = 0.0,
    cpu_split: bool = True,
    profile_path: str | None = None,
) -> int:
    async def main(var_dir: Path) -> dict[str, Any]:
        bench = Bench(
            mode=mode,
            rate=rate,
            duration_s=duration_s,
            seed=seed,
            accept_share=accept_share,
            cpu_split=cpu_split,
            profile_path=profile_path,
            var_dir=var_dir,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, bench.stop.set)
        return await bench.run_bench()

    with tempfile.TemporaryDirectory(prefix="intents-mm-bench-") as tmp:
        report = asyncio.run(main(Path(tmp)))
    print(render_report(report), flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"report written to {json_path}", flush=True)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0
