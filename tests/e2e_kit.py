"""Shared helpers of the end-to-end tests (``tests/test_e2e_*.py``).

Two harnesses run the whole system against the simulated venue, with the same phases:

- :class:`InProcessRun`: ``intents-mm simulate``'s composition (:class:`~intents_mm.simulate.Simulation`:
  memory bus or NATS, SQLite or PostgreSQL, all seven services in this process) on ephemeral ports,
  with a publish-side tap on the bus (every message a producer published, counted when the bus
  acknowledged it);
- :class:`DistributedRun`: ``intents-mm simulate --distributed``
  (:class:`~intents_mm.distributed.DistributedSimulation`: seven processes, NATS JetStream,
  PostgreSQL) on free ports, with a consumer-side tap (a durable of its own on the run's stream,
  which sees every message the stream acknowledged).

Phases: ``start()`` → ``arm()`` (warm-up and audited arming) → ``venue.start_flow()`` → the run →
``stop_flow()`` → ``stop_producers()`` (every service but history-writer) → :func:`drain` →
``shutdown()``. :class:`InvariantSampler` samples balances and reservations during the run;
:class:`RelayResponses` records every ``quote_response`` the relay receives;
:func:`check_invariants` checks the end state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import io
import socket
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any, Protocol
from unittest import mock

import aiohttp
import sqlalchemy as sa

from conftest import free_port
from intents_mm import messages as m
from intents_mm.bus import make_bus
from intents_mm.bus.port import Bus, Delivery, Handler, Subscription
from intents_mm.config import SERVICES
from intents_mm.distributed import DistributedSimulation
from intents_mm.domain.amounts import Rounding, to_units
from intents_mm.domain.assets import AssetRegistry
from intents_mm.near.payload import parse_multipayload
from intents_mm.sim.relay import SimRelay
from intents_mm.sim.scenario import FlowConfig, Scenario, load_scenario
from intents_mm.sim.venue import SimVenue
from intents_mm.simulate import Simulation
from intents_mm.storage import schema
from intents_mm.storage.migrate import create_engine
from intents_mm.storage.store import HistoryStore

HW = "history-writer"
PAIR = AssetRegistry.default().active_pair
BTC, EURE = PAIR.base.token_id, PAIR.quote.token_id
MAX_NOTIONAL_EURE = Decimal(5)
NATS_SERVER = "/usr/sbin/nats-server"


def e2e_scenario(rate_per_s: float = 8.0, **changes: Any) -> Scenario:
    """The default market with a brisker flow (more requests in a short run)."""
    base = load_scenario("default")
    flow: FlowConfig = dataclasses.replace(base.flow, rate_per_s=rate_per_s)
    return dataclasses.replace(base, flow=flow, **changes)


def e2e_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Configuration of a test run: its own var dir, frequent inventory reads and metrics."""
    return {
        "INTENTS_MM_VAR_DIR": str(tmp / "var"),
        "HISTORY_METRICS_MS": "1000",
        "INVENTORY_POLL_MS": "1000",
        "NATS_MAX_BYTES": str(64 << 20),
        "NATS_MAX_AGE_S": "3600",
        "STRATEGY_MAX_NOTIONAL_EURE": str(MAX_NOTIONAL_EURE),
        **extra,
    }


async def wait_for(
    pred: Callable[[], Awaitable[bool] | bool], *, timeout_s: float, what: str, every_s: float = 0.2
) -> None:
    """Poll a predicate (plain or async) until true; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s

    async def check() -> bool:
        value = pred()
        return bool(await value) if inspect.isawaitable(value) else bool(value)

    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(every_s)


# ---------------------------------------------------------------------------------------- servers


class PrivateNats:
    """A nats-server of the test's own on a free port with its own store directory, restartable on
    the same port and store (never the shared server on 4222)."""

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.store = store
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"private nats-server on port {self.port} did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


# ---------------------------------------------------------------------------------------- bus taps


class PublishTap:
    """A bus that records every message its producers published, once the backend acknowledged it."""

    def __init__(self, inner: Bus) -> None:
        self.inner = inner
        self.published: list[tuple[str, str]] = []

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def publish(self, subject: str, data: bytes, *, msg_id: str) -> None:
        await self.inner.publish(subject, data, msg_id=msg_id)
        self.published.append((subject, msg_id))

    async def subscribe(
        self,
        subjects: Sequence[str],
        durable: str,
        handler: Handler,
        *,
        ack_wait_s: float = 30.0,
        max_in_flight: int = 256,
    ) -> Subscription:
        return await self.inner.subscribe(
            subjects, durable, handler, ack_wait_s=ack_wait_s, max_in_flight=max_in_flight
        )

    def healthy(self) -> bool:
        return self.inner.healthy()

    def describe(self) -> dict[str, object]:
        return self.inner.describe()

    def ids(self) -> dict[str, set[str]]:
        """What was published, by subject; state broadcasts that have no table are left out."""
        out: dict[str, set[str]] = defaultdict(set)
        for subject, msg_id in self.published:
            if subject not in m.EPHEMERAL_SUBJECTS:
                out[subject].add(msg_id)
        return out


class ConsumerTap:
    """A durable consumer of every subject: what the bus holds, each message recorded once."""

    def __init__(self) -> None:
        self.got: dict[str, set[str]] = defaultdict(set)
        self.deliveries = 0

    async def handler(self, d: Delivery) -> None:
        self.got[d.subject].add(d.msg_id)
        self.deliveries += 1
        await d.ack()

    def ids(self) -> dict[str, set[str]]:
        """What the bus holds, by subject; state broadcasts that have no table are left out."""
        return {k: set(v) for k, v in self.got.items() if k not in m.EPHEMERAL_SUBJECTS}


# ---------------------------------------------------------------------------------------- harnesses


class E2ERun(Protocol):
    venue: SimVenue | None
    store: HistoryStore | None
    store_url: str
    out: Any

    async def start(self) -> None: ...
    async def arm(self) -> None: ...
    def url(self, name: str) -> str: ...
    async def state(self, name: str) -> dict[str, Any]: ...
    async def stop_flow(self) -> None: ...
    async def stop_producers(self) -> None: ...
    async def shutdown(self) -> None: ...
    def published_ids(self) -> dict[str, set[str]]: ...


class InProcessRun(Simulation):
    """``simulate``'s in-process composition on ephemeral ports, with a publish tap on its bus."""

    def __init__(self, *, tmp: Path, scenario: Scenario, seed: int = 7, env: dict[str, str] | None = None):
        super().__init__(
            duration_s=1.0,
            seed=seed,
            scenario=scenario,
            environ=env if env is not None else e2e_env(tmp),
            dotenv=None,
            ports={name: 0 for name in SERVICES},
            out=io.StringIO(),
        )
        self.tap: PublishTap | None = None
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def start(self) -> None:
        def tapping(*args: Any, **kwargs: Any) -> Bus:
            self.tap = PublishTap(make_bus(*args, **kwargs))
            return self.tap

        with mock.patch("intents_mm.simulate.make_bus", tapping):
            await self._start()

    async def arm(self) -> None:
        await self._warm_up_and_arm()

    def url(self, name: str) -> str:
        assert self.running is not None
        return self.running.url(name)

    async def state(self, name: str) -> dict[str, Any]:
        async with self._http.get(f"{self.url(name)}/state") as resp:
            assert resp.status == 200, f"{name} /state: HTTP {resp.status}"
            body: dict[str, Any] = await resp.json()
            return body

    async def stop_flow(self) -> None:
        await self._stop_flow()

    async def stop_producers(self) -> None:
        """Stop every service but history-writer (their control APIs too)."""
        running = self.running
        assert running is not None
        for server in [s for s in running.servers if s.service.name != HW]:
            await server.stop()
            running.servers.remove(server)
        for svc in reversed([s for s in running.services if s.name != HW]):
            svc.ready = False
            await svc.cancel_tasks()
            with contextlib.suppress(Exception):
                await svc.stop()
            running.services.remove(svc)

    async def shutdown(self) -> None:
        try:
            await self._shutdown()
        finally:
            await self._http.close()

    def published_ids(self) -> dict[str, set[str]]:
        assert self.tap is not None
        return self.tap.ids()


class DistributedRun(DistributedSimulation):
    """``simulate --distributed`` on free ports, with a consumer tap on the run's stream."""

    def __init__(self, *, tmp: Path, scenario: Scenario, env: dict[str, str], seed: int = 7) -> None:
        super().__init__(
            duration_s=1.0,
            seed=seed,
            scenario=scenario,
            environ=env,
            dotenv=None,
            ports={name: free_port() for name in SERVICES},
            out=io.StringIO(),
            stop_timeout_s=10.0,
        )
        self.tap = ConsumerTap()

    async def start(self) -> None:
        await self._start()
        assert self.bus is not None
        await self.bus.subscribe([">"], "e2e-tap", self.tap.handler, ack_wait_s=5.0)

    async def arm(self) -> None:
        await self._warm_up_and_arm()

    async def stop_flow(self) -> None:
        await self._stop_flow()

    async def stop_producers(self) -> None:
        await asyncio.gather(*(self.stop_service(n) for n in self.processes if n != HW))

    async def shutdown(self) -> None:
        await self._shutdown()

    def published_ids(self) -> dict[str, set[str]]:
        return self.tap.ids()


# ---------------------------------------------------------------------------------------- recorders


@dataclasses.dataclass(frozen=True)
class RelayResponse:
    partner_id: str
    quote_id: str
    quote_hash: str | None
    received_ns: int
    accepted: bool
    error: str | None


class RelayResponses:
    """Every ``quote_response`` frame the simulated relay receives, with its outcome."""

    def __init__(self, relay: SimRelay) -> None:
        self.responses: list[RelayResponse] = []
        original = relay._ws_quote_response
        clock = relay._clock

        def recording(conn: Any, params: Any, recv_ns: int) -> str:
            body = params[0] if isinstance(params, list) and params and isinstance(params[0], dict) else {}
            quote_id = body.get("quote_id") if isinstance(body, dict) else None
            try:
                quote_hash: str | None = parse_multipayload(body.get("signed_data")).hash_b58()
            except Exception:
                quote_hash = None
            now = clock.now_ns()
            try:
                result = original(conn, params, recv_ns)
            except Exception as exc:
                self.responses.append(
                    RelayResponse(conn.partner_id, str(quote_id), quote_hash, now, False, str(exc))
                )
                raise
            self.responses.append(RelayResponse(conn.partner_id, str(quote_id), quote_hash, now, True, None))
            return result

        relay._ws_quote_response = recording  # type: ignore[method-assign]

    def of(self, partner_id: str) -> list[RelayResponse]:
        return [r for r in self.responses if r.partner_id == partner_id]


class InvariantSampler:
    """Samples, while the run goes on: every Verifier balance of every account (never negative) and
    strategy-engine's reservations against its credited inventory (reserved never above credited)."""

    def __init__(self, run: E2ERun, every_s: float = 0.25) -> None:
        self.run = run
        self.every_s = every_s
        self.violations: list[str] = []
        self.balance_samples = 0
        self.reservation_samples = 0
        self.max_reserved: dict[str, Decimal] = defaultdict(Decimal)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample_balances()

    async def _loop(self) -> None:
        while True:
            self.sample_balances()
            with contextlib.suppress(aiohttp.ClientError, AssertionError, OSError, TimeoutError, KeyError):
                self.sample_reservations(await self.run.state("strategy-engine"))
            await asyncio.sleep(self.every_s)

    def sample_balances(self) -> None:
        venue = self.run.venue
        assert venue is not None
        for account in venue.verifier.accounts():
            for token, amount in venue.verifier.balances(account).items():
                if amount < 0:
                    self.violations.append(f"negative balance {account} {token} {amount}")
        self.balance_samples += 1

    def sample_reservations(self, state: dict[str, Any]) -> None:
        credited = state["inventory"]["credited"]
        if credited is None:
            return
        reserved = state["reservations"]["reserved_out"]
        for symbol, amount in reserved.items():
            value = Decimal(amount)
            self.max_reserved[symbol] = max(self.max_reserved[symbol], value)
            if value > Decimal(credited[symbol]):
                self.violations.append(f"reserved {symbol} {amount} above credited {credited[symbol]}")
        self.reservation_samples += 1


# ---------------------------------------------------------------------------------------- the store


async def stored(store: HistoryStore, table: str) -> list[m.Envelope[m.Payload]]:
    """Every envelope of an event table, in insertion order."""
    out: list[m.Envelope[m.Payload]] = []
    since: int | None = 0
    while True:
        page = await store.recent(table, limit=2000, since_id=since)
        out.extend(e.envelope for e in page)
        if len(page) < 2000:
            return out
        since = page[-1].id


async def stored_ids(store: HistoryStore) -> dict[str, list[str]]:
    """Subject → the msg_ids stored for it (a list: a repeat would show)."""
    out: dict[str, list[str]] = {}
    for table, subject in schema.TABLE_SUBJECTS.items():
        out[subject] = [env.msg_id for env in await stored(store, table)]
    return out


async def signed_ledger(store_url: str) -> list[dict[str, Any]]:
    """The executor's signed-commands ledger."""
    engine = create_engine(store_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(schema.signed_commands))).all()
    finally:
        await engine.dispose()
    return [dict(row._mapping) for row in rows]


async def drain(run: E2ERun, *, timeout_s: float = 45.0) -> dict[str, Any]:
    """Wait until the store holds every message the tap saw (and the tap every stored message).

    Returns ``{"before": tap ids, "stored": store ids, "after": tap ids}``: everything published
    before the store was read is stored, and everything stored was published.
    """
    store = run.store
    assert store is not None
    result: dict[str, Any] = {}

    async def settled() -> bool:
        before = run.published_ids()
        ids = await stored_ids(store)
        if any(not msgs <= set(ids.get(subject, ())) for subject, msgs in before.items()):
            return False
        after = run.published_ids()
        if any(not set(stored_msgs) <= after.get(subject, set()) for subject, stored_msgs in ids.items()):
            return False
        result.update(before=before, stored=ids, after=after)
        return True

    await wait_for(settled, timeout_s=timeout_s, what="the history store to hold every published message")
    return result


# ---------------------------------------------------------------------------------------- invariants


@dataclasses.dataclass
class Report:
    """What the run did, for assertions that the invariants were not checked on nothing."""

    requests: int = 0
    decisions: int = 0
    commands: int = 0
    results: Counter[str] = dataclasses.field(default_factory=Counter)
    settlements: int = 0
    signed: int = 0
    metrics_checked: int = 0
    stored: dict[str, int] = dataclasses.field(default_factory=dict)


def exact_sum(a: Decimal, b: Decimal) -> Decimal:
    """``a + b`` without rounding (the default context keeps only 28 digits)."""
    with localcontext() as ctx:
        ctx.prec = 200
        return a + b


def _payloads(envs: list[m.Envelope[m.Payload]], kind: type[Any]) -> list[Any]:
    return [e.payload for e in envs if isinstance(e.payload, kind)]


def _repeats(values: list[str]) -> list[str]:
    return sorted(v for v, n in Counter(values).items() if n > 1)


async def check_invariants(
    run: E2ERun,
    *,
    drained: dict[str, Any],
    relay: RelayResponses,
    sampler: InvariantSampler,
    metrics: dict[str, Any] | None = None,
    exactly_one_result: bool = True,
) -> Report:
    """Every end-to-end invariant on a drained run; AssertionError naming the first one broken."""
    store = run.store
    assert store is not None and run.venue is not None
    report = Report()

    # -- the store holds every message exactly once, and only what was published
    before, ids, after = drained["before"], drained["stored"], drained["after"]
    for subject, msgs in ids.items():
        assert not _repeats(msgs), f"{subject}: msg_ids stored twice: {_repeats(msgs)[:5]}"
        assert before.get(subject, set()) <= set(msgs), f"{subject}: published but not stored"
        assert set(msgs) <= after.get(subject, set()), f"{subject}: stored but never published"
        report.stored[subject] = len(msgs)

    requests = _payloads(await stored(store, "swap_demand_events"), m.SwapRequest)
    decisions = _payloads(await stored(store, "trade_decisions"), m.TradeDecision)
    commands = _payloads(await stored(store, "execute_trade_commands"), m.ExecuteTrade)
    results = _payloads(await stored(store, "trade_execution_results"), m.TradeResult)
    statuses = _payloads(await stored(store, "quote_status_events"), m.QuoteStatus)
    report.requests, report.decisions, report.commands = len(requests), len(decisions), len(commands)
    report.results = Counter(r.outcome for r in results)

    # -- nothing published twice under another id
    for what, keys in (
        ("swap request per quote_id", [r.quote_id for r in requests]),
        ("decision per quote_id", [d.quote_id for d in decisions]),
        ("command per quote_id", [c.quote_id for c in commands]),
        ("trade result per command_id", [r.command_id for r in results]),
        ("quote status per quote_hash", [s.quote_hash for s in statuses]),
    ):
        assert not _repeats(keys), f"more than one {what}: {_repeats(keys)[:5]}"
    request_ids = {r.quote_id for r in requests}
    assert {d.quote_id for d in decisions} == request_ids, "every swap request gets exactly one decision"

    # -- no quote exceeds a limit
    limit_units = to_units(PAIR.quote, MAX_NOTIONAL_EURE * PAIR.quote_per_fiat, Rounding.FLOOR)
    by_decision = {d.decision_id: d for d in decisions}
    for cmd in commands:
        eure = cmd.amount_in if cmd.asset_in == EURE else cmd.amount_out
        assert {cmd.asset_in, cmd.asset_out} == {BTC, EURE}, f"{cmd.command_id}: off-pair command"
        assert 0 < eure <= limit_units, f"{cmd.command_id}: {eure} EURe units above max notional"
        decision = by_decision.get(cmd.decision_id)
        assert decision is not None and decision.outcome == "quote" and decision.armed, cmd.command_id
        assert (decision.amount_in, decision.amount_out) == (cmd.amount_in, cmd.amount_out)
        assert all(c.passed for c in decision.limit_checks), f"{cmd.command_id}: a failed limit check"
    armed_quotes = {d.quote_id for d in decisions if d.outcome == "quote" and d.armed}
    assert {c.quote_id for c in commands} == armed_quotes, "an armed quote decision without a command"
    assert not sampler.violations, sampler.violations[:5]
    assert sampler.balance_samples >= 5 and sampler.reservation_samples >= 3, "sampler did not run"

    # -- every command has exactly one result (at most one while a killed executor's deliveries wait)
    command_ids = {c.command_id for c in commands}
    result_ids = [r.command_id for r in results]
    assert set(result_ids) <= command_ids, "a trade result for no command"
    if exactly_one_result:
        missing = command_ids - set(result_ids)
        assert not missing, f"commands without a trade result: {sorted(missing)[:5]}"

    # -- no command signed twice, none after its relay deadline
    ledger = await signed_ledger(run.store_url)
    report.signed = len(ledger)
    commands_by_id = {c.command_id: c for c in commands}
    for row in ledger:
        cmd = commands_by_id.get(row["command_id"].removesuffix(":salt-retry"))
        assert cmd is not None, f"ledger entry {row['command_id']} for no command"
        assert row["signed_ts_ns"] <= cmd.relay_deadline_ns, f"{cmd.command_id} signed after its deadline"
    ours = relay.of("market-maker")
    per_quote = Counter(r.quote_id for r in ours)
    assert not [q for q, n in per_quote.items() if n > 1], "a quote answered twice at the relay"
    ledger_hashes = {row["quote_hash"] for row in ledger}
    assert {r.quote_hash for r in ours} <= ledger_hashes, "the relay got a quote the ledger does not hold"
    for result in results:
        if result.outcome in ("accepted", "rejected"):
            assert result.quote_hash in ledger_hashes, f"{result.command_id}: result quote hash not signed"
    accepted_at_relay = {r.quote_hash for r in ours if r.accepted}
    accepted_results = {r.quote_hash for r in results if r.outcome == "accepted"}
    assert accepted_results <= accepted_at_relay, "an accepted result the relay never accepted"

    # -- the three PnL figures add up exactly, in every stored snapshot and at the end
    snapshots = _payloads(await stored(store, "portfolio_metrics_snapshots"), m.PortfolioMetrics)
    for pm in snapshots:
        for trade, move, mtm in (
            (pm.trade_pnl_eure, pm.price_move_pnl_eure, pm.mark_to_market_pnl_eure),
            (
                pm.flow_adjusted_trade_pnl_eure,
                pm.flow_adjusted_price_move_pnl_eure,
                pm.flow_adjusted_mark_to_market_pnl_eure,
            ),
        ):
            if trade is not None and move is not None and mtm is not None:
                assert exact_sum(trade, move) == mtm, f"PnL identity broken: {trade} + {move} != {mtm}"
                report.metrics_checked += 1
    if metrics is not None:
        trade, move, mtm = (
            metrics.get("trade_pnl_eure"),
            metrics.get("price_move_pnl_eure"),
            metrics.get("mark_to_market_pnl_eure"),
        )
        assert trade is not None and move is not None and mtm is not None, metrics
        assert exact_sum(Decimal(trade), Decimal(move)) == Decimal(mtm), (
            f"final PnL: {trade} + {move} != {mtm}"
        )
        report.metrics_checked += 1

    report.settlements = len(await store.settlements(limit=100_000))
    return report


# ---------------------------------------------------------------------------------------- a whole run


@dataclasses.dataclass
class Exercise:
    """The outcome of :func:`exercise`: the invariant report, the producers' ``/state`` (read after the
    flow stopped) and history-writer's final ``/portfolio-metrics``."""

    report: Report
    states: dict[str, dict[str, Any]]
    metrics: dict[str, Any]


PRODUCERS = ("near-intents-ingest", "strategy-engine", "trade-executor", "market-reference-ingest")


async def get_json(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body if isinstance(body, dict) else {}


async def exercise(
    run: E2ERun,
    *,
    drill: Callable[[E2ERun], Awaitable[None]] | None = None,
    flow_s: float = 8.0,
    settle_s: float = 4.0,
    after_flow: Callable[[E2ERun], Awaitable[None]] | None = None,
) -> Exercise:
    """A whole run: start, arm, the user flow with the invariant sampler, then ``drill(run)`` (the
    fault and its recovery checks; without one the flow runs ``flow_s`` seconds), stop the flow, let
    the last settlements land, ``after_flow(run)``, stop the producers, drain and check every
    invariant. The run is always shut down."""
    try:
        await run.start()
        assert run.venue is not None
        relay = RelayResponses(run.venue.relay)
        await run.arm()
        sampler = InvariantSampler(run)
        sampler.start()
        await run.venue.start_flow()
        if drill is None:
            await asyncio.sleep(flow_s)
        else:
            await drill(run)
        await run.stop_flow()
        await asyncio.sleep(settle_s)  # the last settlements, statuses and metrics land
        if after_flow is not None:
            await after_flow(run)
        status, metrics = await get_json(f"{run.url(HW)}/portfolio-metrics")
        assert status == 200, metrics
        states = {name: await run.state(name) for name in PRODUCERS}
        await sampler.stop()
        await run.stop_producers()
        drained = await drain(run)
        report = await check_invariants(run, drained=drained, relay=relay, sampler=sampler, metrics=metrics)
        failure = getattr(run, "failure", None)  # crash-only: no service task died during the run
        assert failure is None, f"the run failed: {failure}"
    finally:
        await run.shutdown()
    return Exercise(report, states, metrics)


async def accepted(run: E2ERun) -> int:
    """trade-executor's count of quotes the relay accepted (this process's, since its start)."""
    count: int = (await run.state("trade-executor"))["counts"]["accepted"]
    return count


async def wait_accepted(run: E2ERun, more: int, *, timeout_s: float = 20.0, what: str = "quotes") -> None:
    """Wait until trade-executor reports ``more`` accepted quotes beyond its count now."""
    base = await accepted(run)

    async def enough() -> bool:
        return await accepted(run) >= base + more

    await wait_for(enough, timeout_s=timeout_s, what=f"{more} more accepted {what}")
