"""``intents-mm simulate``: the whole market maker against the simulated venue, with play money.

Starts the simulated venue (relay, NEAR RPC with the Verifier, PoA bridge, four exchanges, users and
competing solvers), points the seven real services at it through their ordinary configuration (only
URLs and the play-money account differ from a live run), runs them on the runbook ports, arms the
strategy and the executor after warm-up through their own audited control endpoints, starts the user
flow and shows progress until the duration ends or Ctrl-C. Then it prints a summary (and writes it
as JSON with ``--summary-json``), including the venue's scoreboard of every solver
(``sim/scoreboard.py``: ours, each competitor and each ``[[accounts]]`` account).

A service task that dies (crash-only, ``services/runtime.py``) ends the run: it says which service
and task died and of what, stops everything, prints the summary and fails with ``simulate failed:
...`` (a non-zero exit).

Bus: in-process memory bus, or NATS JetStream when ``NATS_URL`` is set (a stream of its own, deleted
at the end). Store: the embedded SQLite file ``<INTENTS_MM_VAR_DIR>/history.sqlite3`` (the previous
run's file is kept as ``history.prev.sqlite3``), or PostgreSQL when ``POSTGRES_URL`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from intents_mm import eventloop
from intents_mm.app import Running, start_services, stop_services
from intents_mm.bus import make_bus
from intents_mm.bus.port import Bus
from intents_mm.config import SERVICES, Config, load_config
from intents_mm.domain.amounts import format_units
from intents_mm.domain.assets import AssetRegistry
from intents_mm.domain.stats import percentile
from intents_mm.errors import IntentsMMError
from intents_mm.eventloop import DEFAULT_EVENT_LOOP
from intents_mm.services.runtime import freeze_startup_heap, to_jsonable
from intents_mm.sim.scenario import Scenario, load_scenario
from intents_mm.sim.scoreboard import render_scoreboard
from intents_mm.sim.venue import SimVenue
from intents_mm.storage.migrate import migrate, redact_url, resolve_store_url
from intents_mm.storage.store import HistoryStore

WARMUP_TIMEOUT_S = 45.0
SETTLE_GRACE_S = 4.0
PROGRESS_EVERY_S = 5.0

# variables a simulation must not inherit from a live .env or environment: the venue supplies them
_VENUE_OWNED = (
    "NEAR_INTENTS_API_KEY",
    "NEAR_INTENTS_ACCOUNT_ID",
    "NEAR_INTENTS_SIGNER_PRIVATE_KEY",
    "NEAR_INTENTS_INSTANCE_ID",
)


def simulation_config(
    environ: Mapping[str, str], venue_env: Mapping[str, str], dotenv: Path | None
) -> Config:
    """The live configuration with the venue's URLs and play-money account laid over it."""
    env = {k: v for k, v in environ.items() if k not in _VENUE_OWNED}
    env.update(venue_env)
    return load_config(env, dotenv=dotenv)


def simulation_event_loop(environ: Mapping[str, str], dotenv: Path | None) -> str:
    """``INTENTS_MM_EVENT_LOOP`` as the simulation will read it (environment over ``.env``)."""
    return str(
        simulation_config(environ, {}, dotenv if dotenv is not None and dotenv.is_file() else None)[
            "INTENTS_MM_EVENT_LOOP"
        ]
    )


def sqlite_path_for(config: Config) -> Path:
    var_dir = Path(config["INTENTS_MM_VAR_DIR"])
    var_dir.mkdir(parents=True, exist_ok=True)
    return var_dir / "history.sqlite3"


def rotate_sqlite(path: Path) -> None:
    """Keep the previous simulation's history as ``history.prev.sqlite3``; start from an empty file.

    The executor's signed-command ledger file beside it belongs to that history (its entries are
    mirrored into the store), so it moves along to ``signed-commands.ledger.prev``.
    """
    from intents_mm.services.executor_ledger import FILE_NAME

    if path.exists():
        prev = path.with_name("history.prev.sqlite3")
        for suffix in ("", "-wal", "-shm"):
            old = Path(str(path) + suffix)
            if old.exists():
                old.replace(Path(str(prev) + suffix))
    ledger = path.parent / "trade-executor" / FILE_NAME
    if ledger.exists():
        ledger.replace(ledger.with_name(FILE_NAME + ".prev"))


class Simulation:
    """One simulation run; :meth:`run` returns the summary.

    ``scenario`` is a built-in name, a TOML path, ``None`` (the default scenario) or a
    :class:`~intents_mm.sim.scenario.Scenario` (``intents-mm bench`` builds its own).
    """

    banner = "intents-mm simulate"
    failure_label = "simulate"

    def __init__(
        self,
        *,
        duration_s: float,
        seed: int,
        scenario: str | Scenario | None,
        environ: Mapping[str, str] | None = None,
        dotenv: Path | None = Path(".env"),
        ports: dict[str, int] | None = None,
        venue_ports: dict[str, int] | None = None,
        out: TextIO = sys.stdout,
        progress_every_s: float = PROGRESS_EVERY_S,
    ) -> None:
        self.duration_s = duration_s
        self.seed = seed
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.environ = dict(os.environ if environ is None else environ)
        self.dotenv = dotenv if dotenv is not None and dotenv.is_file() else None
        self.ports = ports
        self.venue_ports = venue_ports
        self.out = out
        self.progress_every_s = progress_every_s
        self.stop = asyncio.Event()
        self.venue: SimVenue | None = None
        self.running: Running | None = None
        self.bus: Bus | None = None
        self.store: HistoryStore | None = None
        self.store_url = ""
        self.nats_stream: str | None = None
        self.start_inventory: dict[str, int] = {}
        self.armed_at_ns: int | None = None
        #: why the run failed (a service task died, a process could not be restarted); None while fine
        self.failure: str | None = None
        self._died_watch: asyncio.Task[None] | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- life cycle ------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        """Run it; returns the summary, or (when :attr:`failure` is set) prints the summary and raises."""
        summary = await self._run()
        if self.failure is not None:
            self.say(render_summary(summary))
            raise IntentsMMError(f"{self.failure_label} failed: {self.failure}")
        return summary

    async def _run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            await self._start()
            await self._warm_up_and_arm()
            assert self.venue is not None
            await self.venue.start_flow()
            self.say(f"user flow started; running for {self.duration_s:g} s (Ctrl-C to stop early)")
            await self._progress_until_done(t0)
            await self._stop_flow()
            await asyncio.sleep(SETTLE_GRACE_S)  # let the last settlements and metrics land
            return await self.summary(time.monotonic() - t0)
        finally:
            await self._shutdown()

    async def _start_venue(self) -> tuple[dict[str, str], str]:
        """Start the simulated venue; returns its :meth:`SimVenue.env` and its admin URL.

        This one runs it in this process (:attr:`venue`); ``intents-mm bench`` may run it elsewhere.
        """
        self.venue = SimVenue(self.scenario, seed=self.seed, ports=self.venue_ports)
        await self.venue.start()
        return self.venue.env(), self.venue.urls["admin"]

    async def _start(self) -> None:
        venue_env, admin_url = await self._start_venue()
        config = simulation_config(self.environ, venue_env, self.dotenv)
        if config["POSTGRES_URL"]:
            self.store_url = resolve_store_url(config["POSTGRES_URL"], Path(config["INTENTS_MM_VAR_DIR"]))
        else:
            path = sqlite_path_for(config)
            rotate_sqlite(path)
            self.store_url = f"sqlite+aiosqlite:///{path}"
        await migrate(self.store_url)
        if config["NATS_URL"]:
            self.nats_stream = f"{config['NATS_STREAM']}_SIM_{uuid.uuid4().hex[:8].upper()}"
            self.bus = make_bus(
                config["NATS_URL"],
                stream=self.nats_stream,
                subject_prefix=f"{config['NATS_SUBJECT_PREFIX']}sim{uuid.uuid4().hex[:6]}",
            )
        else:
            self.bus = make_bus(None)
        await self.bus.start()
        self.store = HistoryStore(self.store_url)
        await self.store.connect()
        self.config = config
        self.running = await start_services(
            list(SERVICES), config, bus=self.bus, store=self.store, ports=self.ports
        )
        self._died_watch = asyncio.get_running_loop().create_task(self._watch_services(self.running))
        self.say(
            f"{self.banner}: PLAY MONEY on a simulated NEAR Intents venue (loopback only); "
            f"seed {self.seed}, scenario {self.scenario.name}"
        )
        for server in self.running.servers:
            self.say(f"  {server.service.name:<24} {server.url}")
        self.say(f"  history store            {redact_url(self.store_url)}")
        self.say(f"  bus                      {'NATS ' + self.nats_stream if self.nats_stream else 'memory'}")
        self.say(f"  venue admin (faults)     {admin_url}  (docs/fault-drills.md)")

    async def _watch_services(self, running: Running) -> None:
        """Crash-only: the first service task that dies ends the run (:attr:`failure`, :attr:`stop`)."""
        self.failure = await running.wait_died()
        self.say(f"!! {self.failure}; stopping the run")
        self.stop.set()

    async def _warm_up_and_arm(self) -> None:
        """Wait for a fresh reference, credited inventory and a registered key, then arm both services."""
        running = self.running
        assert running is not None
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        strategy = running.service("strategy-engine")
        executor = running.service("trade-executor")
        waiting: list[str] = []
        while time.monotonic() < deadline and not self.stop.is_set():
            s_state = strategy.state()
            e_state = executor.state()
            waiting = []
            if s_state["reference"]["quality"] not in ("ok", "degraded"):
                waiting.append("reference price")
            if s_state["inventory"]["credited"] is None:
                waiting.append("inventory snapshot")
            if s_state["fee_pips"] is None:
                waiting.append("protocol fee")
            if not e_state.get("key_registered"):
                waiting.append("executor key registration check")
            if not waiting:
                break
            await asyncio.sleep(0.25)
        if self.failure is not None:
            raise IntentsMMError(f"{self.failure_label} failed: {self.failure}")
        if waiting:
            raise IntentsMMError(
                f"warm-up did not complete in {WARMUP_TIMEOUT_S:g} s: waiting for {', '.join(waiting)}"
            )
        inv = strategy.state()["inventory"]["credited"]
        snapshot = getattr(strategy, "inventory", None)
        if snapshot is not None:
            self.start_inventory = dict(snapshot.credited)
        self.say(f"warm-up done: reference {strategy.state()['reference']['mid']} EUR/BTC, inventory {inv}")
        self.say("arming strategy-engine and trade-executor (PLAY MONEY: simulated venue, simulated funds)")
        headers = {"X-Operator": "simulate"}
        token = self.config["CONTROL_API_TOKEN"]
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession() as http:
            for name in ("strategy-engine", "trade-executor"):
                async with http.post(f"{running.url(name)}/arm", headers=headers) as resp:
                    body = await resp.text()
                    if resp.status != 200:
                        raise IntentsMMError(f"could not arm {name}: HTTP {resp.status} {body[:200]}")
        self.armed_at_ns = time.time_ns()
        freeze_startup_heap()  # before the flow: start-up objects leave the cyclic GC's full passes

    async def _progress_until_done(self, t0: float) -> None:
        end = time.monotonic() + self.duration_s
        next_progress = time.monotonic() + self.progress_every_s
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= end:
                break
            timeout = min(end, next_progress) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=max(0.0, timeout))
            if time.monotonic() >= next_progress:
                self.say(self.progress_line(time.monotonic() - t0))
                next_progress += self.progress_every_s

    async def _stop_flow(self) -> None:
        if self.venue is not None:
            for user in self.venue.users:
                await user.stop()

    async def _shutdown(self) -> None:
        if self._died_watch is not None:
            self._died_watch.cancel()
            self._died_watch = None
        if self.running is not None:
            await stop_services(self.running, close_bus=False)
            self.running = None
        if self.venue is not None:
            await self.venue.stop()
        if self.bus is not None:
            await self.bus.close()
        if self.nats_stream is not None:
            await _delete_stream(self.config["NATS_URL"], self.nats_stream)
        if self.store is not None:
            await self.store.close()

    # -- views -----------------------------------------------------------------------------------
    def _states(self) -> dict[str, dict[str, Any]]:
        assert self.running is not None
        return {svc.name: svc.state() for svc in self.running.services}

    def progress_line(self, elapsed_s: float) -> str:
        st = self._states()
        strat = st["strategy-engine"]
        counts = st["trade-executor"].get("counts", {})
        hw = st["history-writer"]
        metrics = hw.get("metrics") or {}
        inv = strat["inventory"]["credited"] or {}
        errors = counts.get("rejected", 0) + counts.get("error", 0)
        return (
            f"[{elapsed_s:6.1f}s] requests {strat['counters']['requests']:>5}  "
            f"quotes {strat['counters']['commands']:>5}  accepted {counts.get('accepted', 0):>5}  "
            f"fills {hw.get('settlements', {}).get('recorded', strat['counters']['fills']):>4}  "
            f"BTC {inv.get('BTC', '?')}  EURe {inv.get('EURe', '?')}  "
            f"trade PnL {metrics.get('trade_pnl_eure', 'n/a')} EURe  errors {errors}"
        )

    async def summary(self, elapsed_s: float) -> dict[str, Any]:
        assert self.running is not None and self.venue is not None and self.store is not None
        st = self._states()
        strat, execu, hw = st["strategy-engine"], st["trade-executor"], st["history-writer"]
        registry = AssetRegistry.default()
        pair = registry.active_pair
        settlements = await self.store.settlements(limit=100_000)
        volume_quote = sum(
            (s.amount_in if s.asset_in == pair.quote.token_id else s.amount_out) for s in settlements
        )
        volume_base = sum(
            (s.amount_in if s.asset_in == pair.base.token_id else s.amount_out) for s in settlements
        )
        markouts: dict[str, str | None] = {}
        for horizon in ("1s", "10s", "60s", "300s"):
            vals = [getattr(s, f"markout_{horizon}_bps") for s in settlements]
            present = [v for v in vals if v is not None]
            markouts[horizon] = str(sum(present, Decimal(0)) / len(present)) if present else None
        ours = [
            (s.response_ns - s.sent_ns) / 1e6
            for s in self.venue.relay.latency_samples()
            if s.partner_id == "market-maker" and s.response_ns is not None
        ]
        end_inventory = self.venue.verifier.balances(self.venue.mm_account)
        metrics = await self._metrics()
        counts = await self.store.counts()
        summary = {
            "seed": self.seed,
            "scenario": self.scenario.name,
            "duration_s": round(elapsed_s, 1),
            "play_money": True,
            "requests_seen": strat["counters"]["requests"],
            "declined_by_reason": strat["declined_by_reason"],
            "quotes_priced": strat["counters"]["quoted"],
            "quotes_sent": execu.get("counts", {}).get("accepted", 0)
            + execu.get("counts", {}).get("rejected", 0)
            + execu.get("counts", {}).get("error", 0),
            "executor_outcomes": execu.get("counts", {}),
            "accepted_by_relay": execu.get("counts", {}).get("accepted", 0),
            "won": len({s.quote_hash for s in settlements}),
            "settled": len([s for s in settlements if s.tx_hash]),
            "volume": {
                pair.base.symbol: format_units(pair.base, volume_base),
                pair.quote.symbol: format_units(pair.quote, volume_quote),
            },
            "inventory_start": {
                a.symbol: format_units(a, self.start_inventory.get(a.token_id, 0)) for a in pair.assets()
            },
            "inventory_end": {
                a.symbol: format_units(a, end_inventory.get(a.token_id, 0)) for a in pair.assets()
            },
            "pnl": metrics,
            "markouts_avg_bps": markouts,
            "quote_latency_ms": {
                "count": len(ours),
                "p50": percentile(ours, 50),
                "p90": percentile(ours, 90),
                "p99": percentile(ours, 99),
                "max": max(ours) if ours else None,
                "mean": statistics.fmean(ours) if ours else None,
            },
            "history_store": redact_url(self.store_url),
            "store_rows": counts,
            "history_writer": {k: hw.get(k) for k in ("backlog", "last_error") if k in hw},
            "venue": {
                "relay": self.venue.relay.stats(),
                "faults_applied": list(self.venue.faults_applied),
                "competitors": [s.account_id for s in self.venue.solvers],
            },
            # every solver (ours, competitors, [[accounts]]) from the venue's own records: sim/scoreboard.py
            "scoreboard": self.venue.scoreboard(),
        }
        return to_jsonable(summary)  # type: ignore[no-any-return]

    async def _metrics(self) -> dict[str, Any]:
        assert self.running is not None
        url = self.running.url("history-writer")
        async with aiohttp.ClientSession() as http, http.get(f"{url}/portfolio-metrics") as resp:
            if resp.status != 200:
                return {"error": f"HTTP {resp.status}"}
            doc: dict[str, Any] = await resp.json()
            return doc


async def _delete_stream(url: str, stream: str) -> None:
    import nats

    with contextlib.suppress(Exception):
        nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=1)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()


def render_summary(summary: Mapping[str, Any]) -> str:
    pnl = summary.get("pnl") or {}
    lat = summary["quote_latency_ms"]

    def fmt(value: Any) -> str:
        return "n/a" if value is None else str(value)

    lines = [
        "",
        f"=== simulate summary (PLAY MONEY; seed {summary['seed']}, {summary['duration_s']} s) ===",
        f"requests seen        {summary['requests_seen']}",
        f"declined by reason   {json.dumps(summary['declined_by_reason'], sort_keys=True)}",
        f"quotes sent          {summary['quotes_sent']}  (accepted by relay {summary['accepted_by_relay']})",
        f"won / settled        {summary['won']} / {summary['settled']}",
        f"volume               {summary['volume']}",
        f"inventory start      {summary['inventory_start']}",
        f"inventory end        {summary['inventory_end']}",
        f"portfolio value      {fmt(pnl.get('portfolio_value_eure'))} EURe",
        f"trade PnL            {fmt(pnl.get('trade_pnl_eure'))} EURe "
        f"(flow-adjusted {fmt(pnl.get('flow_adjusted_trade_pnl_eure'))})",
        f"mark-to-market PnL   {fmt(pnl.get('mark_to_market_pnl_eure'))} EURe "
        f"(flow-adjusted {fmt(pnl.get('flow_adjusted_mark_to_market_pnl_eure'))})",
        f"price-move PnL       {fmt(pnl.get('price_move_pnl_eure'))} EURe "
        f"(flow-adjusted {fmt(pnl.get('flow_adjusted_price_move_pnl_eure'))})",
        f"markouts (avg bps)   {summary['markouts_avg_bps']}",
        f"quote latency (ms)   p50 {fmt(lat['p50'])}  p90 {fmt(lat['p90'])}  p99 {fmt(lat['p99'])}  "
        f"max {fmt(lat['max'])}  (n={lat['count']})",
        f"history store        {summary['history_store']}",
    ]
    if summary.get("scoreboard"):
        lines += ["", render_scoreboard(summary["scoreboard"])]
    return "\n".join(lines)


def run_simulate(
    *,
    duration_s: float,
    seed: int,
    scenario: str | None,
    summary_json: str | None,
    make: Callable[..., Simulation] = Simulation,
    event_loop: str = DEFAULT_EVENT_LOOP,
) -> int:
    if duration_s <= 0:
        raise IntentsMMError("--duration must be positive")

    async def main() -> dict[str, Any]:
        sim = make(duration_s=duration_s, seed=seed, scenario=scenario)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, sim.stop.set)
        return await sim.run()

    summary = eventloop.run(main(), event_loop)
    print(render_summary(summary), flush=True)
    if summary_json:
        Path(summary_json).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"summary written to {summary_json}")
    return 0
