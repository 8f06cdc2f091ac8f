"""``intents-mm bench``: the quote hot path under a constant request rate, measured at the relay.

Starts the simulated venue and the seven services as ``intents-mm simulate`` does (same composition,
same wire protocols over loopback; control APIs and venue servers on ephemeral ports, a fresh SQLite
history store in a temporary directory), waits for warm-up, arms through the audited control
endpoints, then drives quote requests through the simulated relay's ``request_quote`` hook at a
constant rate (open loop: each request is scheduled by time, the driver never waits for answers).

Venue placement: by default (``venue_process=True``) the venue and the driver run in a child process
(:mod:`intents_mm.bench_venue`, loopback only, always stopped: SIGTERM then SIGKILL), as in production
where the venue is remote, so this process holds the market maker alone. ``--in-process-venue``
(``venue_process=False``) runs them on this process's event loop, as ``simulate`` does.

The latency of one quote is measured AT THE RELAY either way: from the moment the relay queues the
quote event for our ingest socket until our executor's ``quote_response`` frame is read on the
executor's socket (:meth:`SimRelay.latency_samples`, partner ``market-maker``). A request is
*dropped* when no ``quote_response`` of ours arrived inside the relay window (declined by the
strategy, skipped by the executor, or too late).

Overload figures (``overload`` in the report; :func:`overload_figures`): every request sent is either
answered (a ``quote_response`` of ours reached the relay) or declined with a reason, counted where it
was declined: ``ingest:<reason>`` (shed before publishing, or invalid), ``strategy:<reason>`` (the
decision record's reason) and ``executor:<outcome>`` (a command not sent: ``dropped_late``,
``skipped_disarmed``). ``unaccounted`` = sent − answered − declined must be 0 (an executor ``error``
whose response never reached the relay shows there, and in ``executor_errors``). ``pauses`` counts
the venue-error pauses the strategy went through and the declines for a pausing guard (venue errors,
loss limit, stale reference or inventory, price jump, unknown fee): 0 when overload is shed instead of
becoming an outage. ``our_side_ms``: for each quote sent, how long its request had waited since the
ingest read its frame when the executor handed the ``quote_response`` to its socket (the market
maker's own share of the latency, without the venue process's; the relay stamps both ends of its
figure on its own loop, so a starved venue process adds its lag there).

CPU: ``time.process_time()`` of this process over the driving phase, divided by the answered quotes:
the market maker alone with the venue in its own process (whose CPU is reported separately), the
market maker plus the venue and the driver with ``--in-process-venue``. A SIGPROF sampler (every
``CPU_SAMPLE_S`` of process CPU) attributes samples to the venue (any ``intents_mm/sim`` frame on the
stack), the driver, the market maker (any other ``intents_mm`` frame) or the rest (event loop, socket
callbacks, other threads).

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
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

from intents_mm import eventloop
from intents_mm.bench_venue import (
    DRIVER_CODE,
    REQUEST_MIN_DEADLINE_MS,
    VenueDriver,
    VenueProcess,
)
from intents_mm.clock import SYSTEM_CLOCK
from intents_mm.config import SERVICES
from intents_mm.domain.stats import ms_summary, percentile
from intents_mm.errors import IntentsMMError
from intents_mm.eventloop import DEFAULT_EVENT_LOOP
from intents_mm.messages import REFERENCE_PRICE, ReferencePrice, encode, new_envelope
from intents_mm.services.runtime import to_jsonable
from intents_mm.services.trade_executor import TradeExecutor
from intents_mm.sim.scenario import Scenario, builtin_scenario
from intents_mm.simulate import Simulation

DEFAULT_NATS_URL: Final = "nats://127.0.0.1:4222"
CPU_SAMPLE_S: Final = 0.002
MIN_NOTIONAL_EUR: Final = Decimal(1)
MAX_NOTIONAL_EUR: Final = Decimal(4)
CANCEL_PROBE_ROUNDS: Final = 100
CANCEL_PROBE_MAX_S: Final = 10.0

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
                elif not name.endswith(("intents_mm/bench.py", "intents_mm/bench_venue.py")):
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
    """One bench run; :meth:`run_bench` returns the report (JSON-ready).

    ``venue_process`` (default): the venue and the driver run in a child process; otherwise on this
    process's event loop.
    """

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
        venue_process: bool = True,
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
        self.venue_process = VenueProcess() if venue_process else None
        self.child_exit_code: int | None = None

    async def run_bench(self) -> dict[str, Any]:
        try:
            await self._start()
            await self._warm_up_and_arm()
            return await self._drive()
        finally:
            try:
                await self._shutdown()
            finally:
                if self.venue_process is not None:
                    self.child_exit_code = await self.venue_process.stop()

    async def _start_venue(self) -> tuple[dict[str, str], str]:
        if self.venue_process is None:
            return await super()._start_venue()
        env = await self.venue_process.start(self.seed)
        self.say(f"{self.banner}: simulated venue and driver in process {self.venue_process.pid}")
        return env, self.venue_process.admin_url

    async def _drive(self) -> dict[str, Any]:
        running = self.running
        assert running is not None
        total = max(1, round(self.rate * self.duration_s))
        where = "venue process" if self.venue_process is not None else "in-process venue"
        self.say(f"driving {total} quote requests at {self.rate:g}/s ({self.mode} bus, {where})")
        driver: VenueDriver | None = None
        if self.venue_process is None:
            assert self.venue is not None
            self.venue.relay.clear_latency_samples()
            driver = VenueDriver(
                self.venue,
                seed=self.seed,
                min_notional=MIN_NOTIONAL_EUR,
                max_notional=MAX_NOTIONAL_EUR,
                stop=self.stop,
            )
        sampler = CpuSampler() if self.cpu_split else None
        if sampler is not None:  # the frames that do the driving
            sampler.driver_code = DRIVER_CODE
        profiler = cProfile.Profile() if self.profile_path else None
        executor = running.service("trade-executor")
        send_ages = getattr(executor, "send_ages_ns", None)
        if send_ages is not None:
            send_ages.clear()
        cpu0, thread0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
        if sampler is not None:
            sampler.start()
        if profiler is not None:
            profiler.enable()
        child: dict[str, Any] | None = None
        try:
            if driver is not None:
                sent, drive_s = await driver.drive(self.rate, self.duration_s, self.accept_share)
                outcomes: dict[str, int] = dict(driver.outcomes)
                max_lag_ms = driver.max_lag_s * 1000
            else:
                assert self.venue_process is not None
                child = await self._drive_child()
                sent, drive_s = int(child["sent"]), float(child["drive_s"])
                outcomes = {str(k): int(v) for k, v in child["outcomes"].items()}
                max_lag_ms = float(child["max_lag_ms"])
        finally:
            if profiler is not None:
                profiler.disable()
            if sampler is not None:
                sampler.stop()
        cpu_s = time.process_time() - cpu0
        thread_s = time.thread_time() - thread0
        wall_s = time.perf_counter() - wall0
        if profiler is not None and self.profile_path:
            profiler.dump_stats(self.profile_path)
            self.say(f"cProfile statistics of the driving phase written to {self.profile_path}")
        if self.venue_process is not None:
            samples = await self.venue_process.samples("market-maker")
        else:
            assert self.venue is not None
            samples = [
                (s.sent_ns, s.response_ns, s.accepted)
                for s in self.venue.relay.latency_samples()
                if s.partner_id == "market-maker"
            ]
        answered = [(sent_ns, resp_ns, acc) for sent_ns, resp_ns, acc in samples if resp_ns is not None]
        lat_ms = [(resp_ns - sent_ns) / 1e6 for sent_ns, resp_ns, _ in answered]
        rejected = sum(1 for _, _, acc in answered if acc is False)
        cancel_reaction = await self._cancel_probe()
        states = self._states()
        strat, execu = states["strategy-engine"], states["trade-executor"]
        execu_counts = execu.get("counts", {})
        overload = overload_figures(
            sent=sent,
            answered=len(answered),
            ingest_quotes=states["near-intents-ingest"]["quotes"],
            strategy=strat,
            executor_counts=execu_counts,
        )
        overload["answered_latency_ms"] = {
            "p50": _round(percentile(lat_ms, 50)),
            "p99": _round(percentile(lat_ms, 99)),
        }
        ours_ms = [age / 1e6 for age in send_ages] if send_ages is not None else []
        overload["our_side_ms"] = {  # frame read by the ingest -> quote_response handed to the socket
            "p50": _round(percentile(ours_ms, 50)),
            "p99": _round(percentile(ours_ms, 99)),
            "max": _round(max(ours_ms) if ours_ms else None),
        }
        per_quote = round(cpu_s / len(answered) * 1e6, 1) if answered else None
        venue_cpu: dict[str, Any] | None = None
        if child is not None:
            child_cpu = float(child["cpu_s"])
            venue_cpu = {
                "process_s": round(child_cpu, 3),
                "wall_s": round(float(child["wall_s"]), 3),
                "per_answered_quote_us": round(child_cpu / len(answered) * 1e6, 1) if answered else None,
                "pid": self.venue_process.pid if self.venue_process is not None else None,
            }
        report = {
            "mode": self.mode,
            "venue": "process" if self.venue_process is not None else "in-process",
            "rate_per_s": self.rate,
            "duration_s": self.duration_s,
            "seed": self.seed,
            "sent": sent,
            "events_to_us": len(samples),
            "answered": len(answered),
            "dropped": sent - len(answered),
            "rejected_by_relay": rejected,
            "achieved_rate_per_s": round(sent / drive_s, 1) if drive_s > 0 else None,
            "driver_max_lag_ms": round(max_lag_ms, 3),
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
                "per_answered_quote_us": per_quote,
                "note": (
                    "the market maker's process only: the simulated venue and the driver run in a child "
                    "process (venue_cpu)"
                    if self.venue_process is not None
                    else "whole process: the simulated venue and the driver run in it too"
                ),
                "split": sampler.shares() if sampler is not None else None,
                "split_samples": sum(sampler.counts.values()) if sampler is not None else None,
                "split_by_task": sampler.top_tasks() if sampler is not None else None,
            },
            "venue_cpu": venue_cpu,
            "driver_outcomes": outcomes,
            "strategy": {
                "requests": strat["counters"]["requests"],
                "commands": strat["counters"]["commands"],
                "declined_by_reason": strat["declined_by_reason"],
            },
            "executor_outcomes": execu_counts,
            "overload": overload,
            "cancel_reaction_ms": cancel_reaction,
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

    async def _cancel_probe(self, rounds: int = CANCEL_PROBE_ROUNDS) -> dict[str, Any]:
        """Cancel-on-move reaction: from a reference update to its cancel leaving for the relay.

        ``during_drive``: the cancels the reference's own moves caused while driving. ``probe``: after
        driving, ``rounds`` reference updates on the bus, each just past the threshold against the live
        quote a move reaches first (alternately a buy and a sell), each waited for before the next.
        """
        assert self.running is not None and self.bus is not None
        executor = self.running.service("trade-executor")
        assert isinstance(executor, TradeExecutor)
        samples = executor.cancel_reaction_ns
        during = list(samples)
        t = executor.cancel_move_bps / Decimal(10_000)
        nudge = Decimal("0.000001")
        probe: list[int] = []
        probe_deadline = time.monotonic() + CANCEL_PROBE_MAX_S
        for i in range(rounds):
            buy, sell = executor.watch.most_exposed()
            if buy is None and sell is None:
                break
            if sell is None or (buy is not None and i % 2 == 0):
                assert buy is not None
                mid = buy * (1 - t) * (1 - nudge)
            else:
                mid = sell * (1 + t) * (1 + nudge)
            ref = ReferencePrice(
                pair="BTC/EUR",
                mid=mid.quantize(Decimal("0.000001")),
                quality="ok",
                sources=[],
                fresh_sources=0,
                quorum=0,
                computed_ts_ns=time.time_ns(),
            )
            seen = len(samples)
            env = new_envelope(REFERENCE_PRICE, ref, clock=SYSTEM_CLOCK)
            await self.bus.publish(REFERENCE_PRICE, encode(env), msg_id=env.msg_id)
            for _ in range(200):
                if len(samples) > seen:
                    probe.append(samples[-1])
                    break
                await asyncio.sleep(0.005)
            if time.monotonic() > probe_deadline:
                break
        return {
            "threshold_bps": str(executor.cancel_move_bps),
            "during_drive": ms_summary(during),
            "probe": ms_summary(probe),
        }

    async def _drive_child(self) -> dict[str, Any]:
        """Ask the venue process to drive; Ctrl-C (:attr:`stop`) abandons the run (the child is stopped)."""
        assert self.venue_process is not None
        call = asyncio.ensure_future(
            self.venue_process.drive(
                rate=self.rate,
                duration_s=self.duration_s,
                accept_share=self.accept_share,
                min_notional=MIN_NOTIONAL_EUR,
                max_notional=MAX_NOTIONAL_EUR,
            )
        )
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({call, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not call.done():
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            raise IntentsMMError("bench interrupted while driving; the venue process is being stopped")
        return call.result()


#: Strategy decline reasons that mean quoting is paused (as opposed to one request declined).
PAUSE_REASONS: Final = frozenset(
    {"venue_errors", "loss_limit", "reference_stale", "inventory_stale", "price_jump", "fee_unknown"}
)
#: near-intents-ingest counters of requests it did not publish (``/state`` ``quotes``).
INGEST_DECLINES: Final = ("shed_overload", "relay_window_passed", "invalid", "off_pair", "duplicate")


def overload_figures(
    *,
    sent: int,
    answered: int,
    ingest_quotes: Mapping[str, Any],
    strategy: Mapping[str, Any],
    executor_counts: Mapping[str, int],
) -> dict[str, Any]:
    """Where every request went: answered, or declined with a reason (see the module docstring)."""
    declined: Counter[str] = Counter()
    for reason in INGEST_DECLINES:
        if ingest_quotes.get(reason):
            declined[f"ingest:{reason}"] += int(ingest_quotes[reason])
    for reason, count in strategy.get("declined_by_reason", {}).items():
        declined[f"strategy:{reason}"] += int(count)
    for outcome in ("dropped_late", "skipped_disarmed"):
        if executor_counts.get(outcome):
            declined[f"executor:{outcome}"] += int(executor_counts[outcome])
    counters = strategy.get("counters", {})
    pause_declines = sum(
        int(n) for r, n in strategy.get("declined_by_reason", {}).items() if r in PAUSE_REASONS
    )
    total = sum(declined.values())
    return {
        "requests": sent,
        "answered": answered,
        "declined": total,
        "declined_by_reason": dict(sorted(declined.items())),
        "unaccounted": sent - answered - total,
        "pauses": {
            "venue_error_pauses": int(counters.get("venue_error_pauses", 0)),
            "pause_declines": pause_declines,
        },
        "late_rejections": int(counters.get("late_rejections", 0)),
        "executor_errors": int(executor_counts.get("error", 0)),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def render_report(report: Mapping[str, Any]) -> str:
    lat, cpu = report["latency_ms"], report["cpu"]
    split = cpu.get("split")
    lines = [
        "",
        f"=== intents-mm bench ({report['mode']} bus, {report['rate_per_s']:g} req/s for "
        f"{report['duration_s']:g} s, seed {report['seed']}, venue {report['venue']}, "
        f"{report.get('event_loop', 'asyncio')} loop) ===",
        f"requests sent        {report['sent']}  (achieved {report['achieved_rate_per_s']}/s, "
        f"driver max lag {report['driver_max_lag_ms']} ms)",
        f"answered by us       {report['answered']}  (rejected by the relay {report['rejected_by_relay']})",
        f"dropped              {report['dropped']}  (declined, late or unanswered within the relay window)",
        f"latency at relay ms  p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}",
    ]
    venue_cpu = report.get("venue_cpu")
    if venue_cpu:
        lines += [
            f"CPU per quote        {cpu['per_answered_quote_us']} us  (process {cpu['process_s']} s over "
            f"{cpu['wall_s']} s; the market maker's process only)",
            f"venue process CPU    {venue_cpu['per_answered_quote_us']} us per quote  (process "
            f"{venue_cpu['process_s']} s: simulated venue and driver, pid {venue_cpu['pid']})",
        ]
    else:
        lines.append(
            f"CPU per quote        {cpu['per_answered_quote_us']} us  (process {cpu['process_s']} s over "
            f"{cpu['wall_s']} s; whole process incl. the simulated venue and the driver)"
        )
    if split:
        lines.append("CPU split (sampled)  " + "  ".join(f"{k} {v:.0%}" for k, v in split.items()))
    cancels = report.get("cancel_reaction_ms")
    if cancels:
        lines.append(
            "cancel reaction ms   "
            + "  ".join(
                f"{name} n={c['count']} p50 {c['p50']} p99 {c['p99']}"
                for name, c in (("probe", cancels["probe"]), ("during drive", cancels["during_drive"]))
            )
            + f"  (reference update -> cancel leaving, threshold {cancels['threshold_bps']} bps)"
        )
    over = report.get("overload")
    if over:
        pauses = over["pauses"]
        lines += [
            f"overload             requests {over['requests']}: answered {over['answered']}, declined "
            f"{over['declined']}, unaccounted {over['unaccounted']}; quoting pauses "
            f"{pauses['venue_error_pauses']} (pause declines {pauses['pause_declines']})",
            f"answered latency ms  p50 {over['answered_latency_ms']['p50']}  "
            f"p99 {over['answered_latency_ms']['p99']}  (our side: frame read to quote_response sent "
            f"p50 {over['our_side_ms']['p50']}  p99 {over['our_side_ms']['p99']})",
        ]
        if over["declined_by_reason"]:
            lines.append(f"declined by reason   {json.dumps(over['declined_by_reason'], sort_keys=True)}")
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
    venue_process: bool = True,
    event_loop: str = DEFAULT_EVENT_LOOP,
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
            venue_process=venue_process,
            var_dir=var_dir,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, bench.stop.set)
        return await bench.run_bench()

    with tempfile.TemporaryDirectory(prefix="intents-mm-bench-") as tmp:
        report = eventloop.run(main(Path(tmp)), event_loop)
    report["event_loop"] = event_loop
    print(render_report(report), flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"report written to {json_path}", flush=True)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0
