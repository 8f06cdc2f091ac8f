"""The simulated venue as one product: every simulated part composed, funded and served on loopback.

:class:`SimVenue` builds the parts from a :class:`~intents_mm.sim.scenario.Scenario` and a seed and
wires them the way the real venue is wired:

* the Verifier (:class:`~intents_mm.sim.verifier.Verifier`) is the ledger; the chain
  (:class:`~intents_mm.sim.near_rpc.SimNear`) executes transactions against it and is served over
  NEAR JSON-RPC (:class:`~intents_mm.sim.near_rpc.SimNearRpcServer`);
* bridge deposits credit the Verifier, PoA burns on the chain (``chain.on_withdraw``) reach the
  bridge (:class:`~intents_mm.sim.bridge.SimBridge`);
* the Solver Relay (:class:`~intents_mm.sim.relay.SimRelay`) validates quotes against the Verifier
  and settles through the chain;
* the four exchanges (:class:`~intents_mm.sim.exchanges.SimExchanges`) quote around one seeded
  :class:`~intents_mm.sim.pricepath.PricePath`, which also prices the simulated users and the
  competing solvers (:mod:`intents_mm.sim.participants`);
* the market maker's account (a deterministic play-money key), the competitors and any extra
  accounts are funded and their keys registered on the Verifier and the chain.

The same seed gives the same price path and the same request plan. Faults come from the scenario's
``[[faults]]`` timeline (started with the flow) or on demand through the admin HTTP endpoint
(``POST /admin/fault``, ``GET /admin/state``, ``POST /admin/deposit``); both go through
:meth:`SimVenue.apply_fault`. See ``docs/sim-venue.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import heapq
import json
import logging
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aiohttp import web

from intents_mm.clock import SYSTEM_CLOCK, Clock
from intents_mm.domain.amounts import Rounding, to_units
from intents_mm.errors import InputError
from intents_mm.near.keys import SigningKey
from intents_mm.sim.bridge import SimBridge
from intents_mm.sim.competitors import solver_class, solver_kwargs
from intents_mm.sim.exchanges import SimExchanges
from intents_mm.sim.near_rpc import SimNear, SimNearRpcServer
from intents_mm.sim.participants import (
    FLOW_KIND_KEYS,
    CompetingSolver,
    PlannedRequest,
    SimUser,
    SolverConfig,
    UserFlowConfig,
)
from intents_mm.sim.pricepath import PricePath
from intents_mm.sim.relay import SimRelay
from intents_mm.sim.scenario import VENUES, Fault, Scenario, human_balances, key_from_label, parse_fault
from intents_mm.sim.scoreboard import SolverEntry, build_scoreboard, render_scoreboard
from intents_mm.sim.verifier import Verifier

log = logging.getLogger(__name__)

PORT_NAMES: tuple[str, ...] = ("relay", "near_rpc", "bridge", "admin", *VENUES)
"""Keys of the ``ports`` mapping (0 or absent = any free port)."""

_NS_PER_S = 1_000_000_000
_FAULTS_KEPT = 1000
_ENV_PREFIX = {"kraken": "KRAKEN", "bitstamp": "BITSTAMP", "coinbase": "COINBASE", "binance": "BINANCE"}


def subseed(seed: int, label: str) -> int:
    """A 64-bit seed for one part, derived from the venue seed (parts never share an RNG stream)."""
    return int.from_bytes(hashlib.sha256(f"intents-mm-sim:{seed}:{label}".encode()).digest()[:8], "big")


def _secret_token(label: str) -> str:
    return hashlib.sha256(f"intents-mm-sim:api-key:{label}".encode()).hexdigest()[:40]


@dataclass(frozen=True)
class PlannedArrival:
    """A planned quote request of the flow: ``t_s`` seconds after the flow starts, by user ``user``."""

    t_s: float
    user: int
    request: PlannedRequest


class SimVenue:
    """The whole simulated venue. ``await start()``, optionally ``await start_flow()``, ``await stop()``.

    ``ports`` maps names of :data:`PORT_NAMES` to fixed ports (absent or 0 = any free port). The
    parts are public attributes (``verifier``, ``chain``, ``rpc_server``, ``bridge``, ``path``,
    ``exchanges``, ``relay``, ``users``, ``solvers``) for the composition root and tests.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        seed: int,
        clock: Clock = SYSTEM_CLOCK,
        host: str = "127.0.0.1",
        ports: Mapping[str, int] | None = None,
    ) -> None:
        ports = dict(ports or {})
        unknown = sorted(set(ports) - set(PORT_NAMES))
        if unknown:
            raise InputError(f"unknown port name {unknown[0]!r} (known: {', '.join(PORT_NAMES)})")
        for name, port in ports.items():
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise InputError(f"port {name} must be an integer in 0..65535, got {port!r}")
        self.scenario = scenario
        self.seed = seed
        self.clock = clock
        self.host = host
        self._ports = ports
        s = scenario

        grace = None if s.verifier.salt_grace_s is None else int(s.verifier.salt_grace_s * _NS_PER_S)
        self.verifier = Verifier(
            clock,
            fee_pips=s.verifier.fee_pips,
            accept_legacy_nonces=s.relay.accept_legacy_nonces,
            salt_grace_ns=grace,
        )
        self.path = PricePath.from_config(subseed(seed, "price"), s.price, clock=clock)
        self.bridge = SimBridge(
            clock,
            self.verifier.credit,
            deposit_pending_s=s.bridge.deposit_pending_s,
            deposit_credit_s=s.bridge.deposit_credit_s,
            withdrawal_complete_s=s.bridge.withdrawal_complete_s,
            withdrawal_visible_s=s.bridge.withdrawal_visible_s,
            withdrawal_status_shape="docs" if s.bridge.withdrawal_status_shape == "docs" else "sdk",
            seed=subseed(seed, "bridge"),
        )
        self.chain = SimNear(
            clock,
            self.verifier,
            block_time_ms=s.near.block_time_ms,
            final_lag_blocks=s.near.final_lag_blocks,
            lagged_views=s.near.lagged_views,
            history_blocks=s.near.history_blocks,
        )
        self.chain.on_withdraw = self._on_withdraw
        self.rpc_server = SimNearRpcServer(
            self.chain,
            contract_error_shape="rpc_error"
            if s.near.contract_error_shape == "rpc_error"
            else "result_error",
            fault_timeout_s=s.near.timeout_fault_hold_s,
            seed=subseed(seed, "near-rpc"),
        )
        self.exchanges = SimExchanges(
            self.path,
            clock,
            subseed(seed, "exchanges"),
            ports={v: ports[v] for v in VENUES if ports.get(v)},
            update_interval_s=s.exchanges.update_interval_s,
            heartbeat_s=s.exchanges.heartbeat_s,
        )
        for name, override in s.exchanges.per_venue.items():
            venue = self.exchanges.venue(name)
            changes: dict[str, Any] = {}
            if override.half_spread_bps is not None:
                changes["half_spread_bps"] = override.half_spread_bps
            if override.basis_bps is not None:
                changes["basis_bps"] = override.basis_bps
            if override.noise_bps is not None:
                changes["noise_bps"] = override.noise_bps
            venue.profile = dataclasses.replace(venue.profile, **changes)
        self.exchanges.configure(s.exchanges)

        # Accounts and keys (play money; deterministic so the printed .env block is stable).
        self.mm_key: SigningKey = s.market_maker.signing_key()
        self.mm_account: str = s.market_maker.account_id or self.mm_key.public_key.implicit_account_id()
        self.api_key: str = "sim-mm-" + _secret_token(f"market-maker:{s.market_maker.key_seed}")
        relay_keys: dict[str, str] = {self.api_key: "market-maker"}
        self._solver_keys = [
            f"sim-solver-{i + 1}-" + _secret_token(f"solver:{seed}:{i}") for i in range(len(s.solvers))
        ]
        for i, key in enumerate(self._solver_keys):
            relay_keys[key] = f"sim-solver-{i + 1}"
        for i, key in enumerate(s.relay.api_keys):
            relay_keys.setdefault(key, f"external-{i + 1}")
        self._frontend_key: str | None = None
        if s.flow.transport == "http":
            self._frontend_key = "sim-frontend-" + _secret_token(f"frontend:{seed}")
            relay_keys[self._frontend_key] = "frontend"
        self.relay = SimRelay(
            clock,
            self.chain,
            self.verifier,
            api_keys=relay_keys,
            allow_anonymous=s.relay.allow_anonymous,
            window_ms=s.relay.window_ms,
            min_deadline_ms=s.relay.min_deadline_ms,
            envelope="docs" if s.relay.envelope == "docs" else "event",
            accept_legacy_nonces=s.relay.accept_legacy_nonces,
            early_close=s.relay.early_close,
            settlement_delay_ms=s.near.settlement_delay_ms,
        )
        self.users: list[SimUser] = []
        self.solvers: list[CompetingSolver] = []
        self.faults_applied: deque[dict[str, Any]] = deque(maxlen=_FAULTS_KEPT)
        self.withdrawals_seen = 0
        self.salt_rotations = 0
        self._urls: dict[str, str] = {}
        self._admin: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fault_generation: Counter[tuple[str, str]] = Counter()
        self._started = False
        self._flow_started = False
        self._board_start: dict[str, dict[str, int]] = {}  # scoreboard: balances when the flow started
        self._board_start_ns: int | None = None
        self._stopped = False

    # ------------------------------------------------------------------ wiring helpers

    def _on_withdraw(self, tx_hash: str, account: str, asset_id: str, amount: int, destination: str) -> None:
        self.withdrawals_seen += 1
        self.bridge.register_withdrawal(tx_hash, account, asset_id, amount, destination)

    def _user_config(self) -> UserFlowConfig:
        f = self.scenario.flow
        return UserFlowConfig(
            rate_per_s=f.rate_per_s / f.users,
            median_notional_eur=f.median_notional_eur,
            notional_sigma=f.notional_sigma,
            min_notional_eur=f.min_notional_eur,
            max_notional_eur=f.max_notional_eur,
            sell_base_share=f.sell_base_share,
            exact_out_share=1.0 - f.exact_in_share,
            min_deadline_ms=f.min_deadline_ms,
            alt_min_deadline_ms=f.alt_min_deadline_ms,
            alt_deadline_share=f.alt_deadline_share,
            informed_share=f.informed_share,
            informed_horizon_ms=f.informed_horizon_ms,
            informed_edge_bps=f.informed_edge_bps,
            tolerance_bps=f.tolerance_bps,
            intent_ttl_ms=f.intent_ttl_ms,
            wait_ms=f.wait_ms,
            max_in_flight=f.max_in_flight,
            **{k: getattr(f, k) for k in FLOW_KIND_KEYS},
        )

    def _user_seed(self, i: int) -> int:
        return subseed(self.seed, f"user:{i}")

    def planned_requests(self, n: int) -> list[PlannedArrival]:
        """The first ``n`` quote requests of the flow, merged over the users by arrival time.

        A pure function of the scenario and the seed (drawn from fresh copies of the users' RNGs),
        so it can be called before, during or after the run without disturbing the flow.
        """
        config = self._user_config()
        previews = [
            SimUser(
                self.clock,
                self.relay,
                self.verifier,
                self.path.mid_at,
                seed=self._user_seed(i),
                config=config,
            )
            for i in range(self.scenario.flow.users)
        ]
        heap: list[tuple[float, int, PlannedRequest]] = []
        for i, user in enumerate(previews):
            first = user.next_request()
            heapq.heappush(heap, (first.delay_s, i, first))
        out: list[PlannedArrival] = []
        while len(out) < n:
            t, i, req = heapq.heappop(heap)
            out.append(PlannedArrival(t, i, req))
            nxt = previews[i].next_request()
            heapq.heappush(heap, (t + nxt.delay_s, i, nxt))
        return out

    def price_at(self, ns: int) -> Decimal:
        """The path's BTC/EUR mid at wall-clock ``ns`` (what users and competitors price from)."""
        return self.path.mid_at(ns)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind every server on ``host``, fund and register the accounts, connect the competitors.

        The request flow does not start here (see :meth:`start_flow`). On failure everything that
        was started is stopped again and the error is raised.
        """
        if self._started:
            raise InputError("the simulated venue was already started")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s, host, ports = self.scenario, self.host, self._ports
        near_url = await self.rpc_server.start(host, ports.get("near_rpc", 0))
        bridge_url = await self.bridge.start(host, ports.get("bridge", 0))
        exchange_urls = await self.exchanges.start(host)
        for name in VENUES:
            if name not in s.exchanges.venues:
                await self.exchanges.set_down(name, True)
        await self.relay.start(host, ports.get("relay", 0))
        urls = {
            "relay_ws": self.relay.ws_url,
            "relay_rpc": self.relay.rpc_url,
            "near_rpc": near_url,
            "bridge_rpc": bridge_url,
        }
        for name, ex in exchange_urls.items():
            urls[f"{name}_ws"] = ex.ws_url
            urls[f"{name}_rest"] = ex.rest_url

        self._fund(self.mm_account, self.mm_key.public_key.to_string(), s.market_maker.balances)
        for account in s.accounts:
            self._fund(account.account_id, account.public_key, account.balances)

        config = self._user_config()
        for i in range(s.flow.users):
            user = SimUser(
                self.clock,
                self.relay,
                self.verifier,
                self.path.mid_at,
                seed=self._user_seed(i),
                config=config,
                initial_balances=s.flow.balances,
                transport="http" if s.flow.transport == "http" else "inprocess",
                rpc_url=self.relay.rpc_url,
                api_key=self._frontend_key,
            )
            user.fund()
            self.users.append(user)

        for i, spec in enumerate(s.solvers):
            solver = solver_class(spec)(
                self.clock,
                self.verifier,
                self.relay.ws_url,
                self.path.mid_at,
                api_key=self._solver_keys[i],
                seed=subseed(self.seed, f"solver:{i}"),
                config=SolverConfig(
                    spread_bps=spec.spread_bps,
                    response_delay_ms=spec.response_delay_ms,
                    deadline_margin_ms=spec.deadline_margin_ms,
                    max_min_deadline_ms=spec.max_min_deadline_ms,
                    instance_id=spec.instance_id,
                ),
                initial_balances=spec.balances,
                **solver_kwargs(spec),
            )
            self.solvers.append(solver)
            await solver.start()
        await asyncio.gather(*(solver.wait_ready(5.0) for solver in self.solvers))

        if s.verifier.salt_rotation_s is not None:
            self._spawn(self._rotate_salts(s.verifier.salt_rotation_s), "sim-venue-salt-rotation")

        app = web.Application()
        app.router.add_post("/admin/fault", self._admin_fault)
        app.router.add_get("/admin/state", self._admin_state)
        app.router.add_post("/admin/deposit", self._admin_deposit)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._admin = runner
        await web.TCPSite(runner, host, ports.get("admin", 0)).start()
        shown = f"[{host}]" if ":" in host else host
        urls["admin"] = f"http://{shown}:{runner.addresses[0][1]}/admin"
        self._urls = urls

    def _fund(self, account_id: str, public_key: str, balances: Mapping[str, int]) -> None:
        for token, amount in balances.items():
            if amount > 0:
                self.verifier.credit(account_id, token, amount)
        if not self.verifier.has_public_key(account_id, public_key):
            self.verifier.add_public_key(account_id, public_key)
        self.chain.add_account(account_id, public_key)

    async def start_flow(self) -> None:
        """Start the simulated users' request flow and the scenario's fault timeline (``at_s`` counts
        from here). A second call does nothing."""
        if not self._started or self._stopped:
            raise InputError("start the simulated venue before its flow")
        if self._flow_started:
            return
        self._flow_started = True
        self.start_scoreboard()
        for user in self.users:
            await user.start()
        if self.scenario.faults:
            self._spawn(self._timeline(), "sim-venue-fault-timeline")

    async def stop(self) -> None:
        """Stop the flow, the competitors, the timeline and every server. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for user in self.users:
            await self._quietly(user.stop(), "user")
        for solver in self.solvers:
            await self._quietly(solver.stop(), "competing solver")
        if self._admin is not None:
            await self._quietly(self._admin.cleanup(), "admin server")
            self._admin = None
        await self._quietly(self.relay.stop(), "relay")
        await self._quietly(self.exchanges.stop(), "exchanges")
        await self._quietly(self.bridge.stop(), "bridge")
        await self._quietly(self.rpc_server.stop(), "near rpc")

    @staticmethod
    async def _quietly(coro: Any, what: str) -> None:
        try:
            await coro
        except Exception:
            log.exception("sim venue: stopping the %s failed", what)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _rotate_salts(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            self.verifier.rotate_salt()
            self.salt_rotations += 1

    async def _timeline(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for fault in self.scenario.faults:
            delay = t0 + (fault.at_s or 0.0) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await self.apply_fault(fault, source="schedule")
            except Exception:
                log.exception("sim venue: scheduled fault %s failed", fault.kind)

    # ------------------------------------------------------------------ endpoints for the services

    @property
    def urls(self) -> dict[str, str]:
        """``relay_ws``, ``relay_rpc``, ``near_rpc``, ``bridge_rpc``, ``admin`` and ``<venue>_ws`` /
        ``<venue>_rest`` for each exchange. Empty before :meth:`start`."""
        return dict(self._urls)

    @property
    def mm_secret_key(self) -> str:
        """The market maker's signing key, ``ed25519:<base58>`` (play money)."""
        return self.mm_key.to_secret_string()

    @property
    def mm_public_key(self) -> str:
        return self.mm_key.public_key.to_string()

    def env(self) -> dict[str, str]:
        """Environment variables (names as in ``intents_mm.config``) that point the services here."""
        if not self._urls:
            raise InputError("the simulated venue is not started")
        u = self._urls
        venues = self.scenario.exchanges.venues
        env = {
            "NEAR_INTENTS_RELAY_WS_URL": u["relay_ws"],
            "NEAR_INTENTS_RELAY_RPC_URL": u["relay_rpc"],
            "NEAR_RPC_URLS": u["near_rpc"],
            "NEAR_INTENTS_CONTRACT_ID": self.verifier.contract_id,
            "NEAR_INTENTS_BRIDGE_RPC_URL": u["bridge_rpc"],
            "REFERENCE_SOURCES": ",".join(v for v in VENUES if v in venues),
        }
        if len(venues) < 2:
            env["REFERENCE_QUORUM"] = str(len(venues))
        for name in VENUES:
            env[f"{_ENV_PREFIX[name]}_WS_URL"] = u[f"{name}_ws"]
            env[f"{_ENV_PREFIX[name]}_REST_URL"] = u[f"{name}_rest"]
        env["NEAR_INTENTS_API_KEY"] = self.api_key
        env["NEAR_INTENTS_ACCOUNT_ID"] = self.mm_account
        env["NEAR_INTENTS_SIGNER_PRIVATE_KEY"] = self.mm_secret_key
        return env

    # ------------------------------------------------------------------ faults

    async def apply_fault(self, fault: Fault, *, source: str = "admin") -> dict[str, Any]:
        """Apply one fault now and record it in :attr:`faults_applied`; returns the record.

        Exchange faults end by themselves after ``duration_s`` (a later fault of the same kind on the
        same venue restarts the clock). ``InputError`` for a venue this scenario does not run.
        """
        if fault.venue and fault.venue not in self.scenario.exchanges.venues:
            raise InputError(f"venue {fault.venue} is not enabled in this scenario")
        record: dict[str, Any] = {**fault.to_json(), "source": source, "applied_ns": self.clock.now_ns()}
        kind = fault.kind
        if kind == "relay_disconnect":
            record["connections_closed"] = await self.relay.disconnect_all()
        elif kind == "relay_error_replies":
            self.relay.fail_next_responses(fault.n, fault.message)
        elif kind == "rpc_timeouts":
            self.rpc_server.fail_next(fault.n, "timeout", method=fault.method)
        elif kind == "rpc_5xx":
            self.rpc_server.fail_next(fault.n, "500", method=fault.method)
        elif kind == "exchange_stale":
            self.exchanges.set_stale(fault.venue, True)
        elif kind == "exchange_outlier":
            self.exchanges.set_outlier(fault.venue, fault.bps)
        elif kind == "exchange_down":
            await self.exchanges.set_down(fault.venue, True)
        elif kind == "bridge_withdrawal_failure":
            self.bridge.fail_next_withdrawal(fault.reason)
        elif kind == "price_shock":
            now = self.clock.now_ns()
            record["mid_before"] = str(self.path.mid_at(now))
            self.path.shock(fault.bps, now)
            record["mid_after"] = str(self.path.mid_at(now))
        else:  # parse_fault admits only the kinds above
            raise InputError(f"unknown fault kind {kind!r}")
        if kind.startswith("exchange_"):
            key = (kind, fault.venue)
            self._fault_generation[key] += 1
            record["ends_ns"] = record["applied_ns"] + int(fault.duration_s * _NS_PER_S)
            self._spawn(
                self._end_later(fault, key, self._fault_generation[key], record), f"sim-venue-end-{kind}"
            )
        self.faults_applied.append(record)
        log.info("sim venue: fault %s applied (%s)", kind, source)
        return record

    async def _end_later(
        self, fault: Fault, key: tuple[str, str], generation: int, record: dict[str, Any]
    ) -> None:
        await asyncio.sleep(fault.duration_s)
        if self._fault_generation[key] != generation:
            return  # a newer fault of the same kind on this venue owns the flag now
        if fault.kind == "exchange_stale":
            self.exchanges.set_stale(fault.venue, False)
        elif fault.kind == "exchange_outlier":
            self.exchanges.set_outlier(fault.venue, 0)
        elif fault.kind == "exchange_down":
            await self.exchanges.set_down(fault.venue, False)
        record["ended_ns"] = self.clock.now_ns()

    # ------------------------------------------------------------------ scoreboard

    def scoreboard_entries(self) -> list[SolverEntry]:
        """Ours, each competitor and each ``[[accounts]]`` account, with their relay partner ids."""
        signers = {p: set(v["signers"]) for p, v in self.relay.partner_stats().items()}
        entries = [SolverEntry("market-maker", "ours", self.mm_account, ("market-maker",))]
        for i, solver in enumerate(self.solvers):
            label = f"sim-solver-{i + 1}"
            entries.append(SolverEntry(label, "competitor", solver.account_id, (label,)))
        for spec in self.scenario.accounts:
            partners = tuple(sorted(p for p, who in signers.items() if spec.account_id in who))
            entries.append(SolverEntry(spec.account_id, "external", spec.account_id, partners))
        return entries

    def start_scoreboard(self) -> None:
        """Take the scoreboard's start balances now (:meth:`start_flow` does; PnL counts from here)."""
        self._board_start_ns = self.clock.now_ns()
        self._board_start = {
            e.account_id: dict(self.verifier.balances(e.account_id)) for e in self.scoreboard_entries()
        }

    def flow_of(self, intent_hash: str) -> tuple[str, bool] | None:
        """``(kind, informed)`` of the simulated user request behind ``intent_hash`` (None = not ours).

        Read generically from the request plan: its ``kind`` when it has one, its ``informed`` flag."""
        return self._flow_index().get(intent_hash)

    def _flow_index(self) -> dict[str, tuple[str, bool]]:
        index: dict[str, tuple[str, bool]] = {}
        for user in self.users:
            for outcome in user.outcomes:
                publish = outcome.publish
                if not publish or publish.get("status") != "OK" or "intent_hash" not in publish:
                    continue
                informed = bool(getattr(outcome.planned, "informed", False))
                kind = getattr(outcome.planned, "kind", None)
                index[publish["intent_hash"]] = (
                    str(kind) if kind else ("informed" if informed else "uninformed"),
                    informed,
                )
        return index

    def scoreboard(self, mark_ns: int | None = None) -> dict[str, Any]:
        """Every solver's row (``sim/scoreboard.py``), PnL marked at the true price at ``mark_ns`` (now)."""
        if self._board_start_ns is None:
            self.start_scoreboard()
        mark = self.clock.now_ns() if mark_ns is None else mark_ns
        entries = self.scoreboard_entries()
        latency: dict[str, list[float]] = {}
        for sample in self.relay.latency_samples():
            if sample.latency_ns is not None:
                latency.setdefault(sample.partner_id, []).append(sample.latency_ns / 1e6)
        index = self._flow_index()
        return build_scoreboard(
            entries,
            start_balances=self._board_start,
            end_balances={e.account_id: dict(self.verifier.balances(e.account_id)) for e in entries},
            fills=list(self.relay.fills),
            partner_stats=self.relay.partner_stats(),
            latency_ms=latency,
            price_at=self.path.mid_at,
            mark_ns=mark,
            flow_of=index.get,
            start_ns=self._board_start_ns,
        )

    # ------------------------------------------------------------------ introspection

    def stats(self) -> dict[str, Any]:
        """A JSON-ready view for the summary and ``GET /admin/state`` (amounts as strings, no secrets)."""
        users = Counter[str]()
        for user in self.users:
            users.update(user.counts)
        deposits = Counter(d.status for d in self.bridge.deposits)
        withdrawals = Counter(w.status for ws in self.bridge.withdrawals.values() for w in ws)
        return {
            "scenario": self.scenario.name,
            "seed": self.seed,
            "started": self._started and not self._stopped,
            "flow_started": self._flow_started,
            "mm_account": self.mm_account,
            "balances": {
                "market_maker": _amounts(self.verifier.balances(self.mm_account)),
                "fee_collector": _amounts(self.verifier.balances(self.verifier.fee_collector)),
                "accounts": {
                    a.account_id: _amounts(self.verifier.balances(a.account_id))
                    for a in self.scenario.accounts
                },
            },
            "price": {
                "start": str(self.scenario.price.start_price),
                "mid": str(self.path.mid_at(self.clock.now_ns())),
            },
            "flow": {"users": len(self.users), "counts": dict(users)},
            "solvers": [
                {
                    "account_id": s.account_id,
                    "spread_bps": str(s.config.spread_bps),
                    "ready": s.ready,
                    "connects": s.stats.connects,
                    "quotes_seen": s.stats.quotes_seen,
                    "responses_sent": s.stats.responses_sent,
                    "responses_ok": s.stats.responses_ok,
                    "responses_rejected": s.stats.responses_rejected,
                    "statuses_received": s.statuses_received,
                }
                for s in self.solvers
            ],
            "relay": self.relay.stats(),
            "near_rpc": {
                "calls": dict(self.rpc_server.calls),
                "height": self.chain.height,
                "transactions": len(self.chain.transactions),
            },
            "bridge": {
                "calls": dict(self.bridge.calls),
                "deposits": dict(deposits),
                "withdrawals": dict(withdrawals),
                "burns_seen": self.withdrawals_seen,
            },
            "exchanges": self.exchanges.state(),
            "salt_rotations": self.salt_rotations,
            "faults_applied": list(self.faults_applied),
            "scoreboard": self.scoreboard() if self._started else None,
        }

    # ------------------------------------------------------------------ admin HTTP

    async def _admin_state(self, request: web.Request) -> web.Response:
        return _json_response(self.stats())

    async def _admin_fault(self, request: web.Request) -> web.Response:
        try:
            body = await _json_body(request)
            fault = parse_fault(body, "fault", scheduled=False)
            record = await self.apply_fault(fault, source="admin")
        except InputError as exc:
            return _json_response({"error": str(exc)}, status=400)
        return _json_response({"applied": record})

    async def _admin_deposit(self, request: web.Request) -> web.Response:
        try:
            body = await _json_body(request)
            result = self.simulate_deposit(body)
        except InputError as exc:
            return _json_response({"error": str(exc)}, status=400)
        return _json_response(result)

    def simulate_deposit(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``{"chain", "amount"[, "account_id"]}``: an external-chain payment to the account's deposit
        address (default: the market maker's); ``amount`` in whole tokens (``"0.01"``), exact."""
        unknown = sorted(set(body) - {"chain", "amount", "account_id"})
        if unknown:
            raise InputError(f"deposit: unknown key {unknown[0]!r}")
        chain, amount = body.get("chain"), body.get("amount")
        account = body.get("account_id", self.mm_account)
        if not isinstance(chain, str) or not chain:
            raise InputError("deposit chain: must be a chain id such as btc:mainnet or eth:100")
        if not isinstance(account, str) or not account:
            raise InputError("deposit account_id: must be a non-empty string")
        if isinstance(amount, bool) or not isinstance(amount, (str, int, Decimal)):
            raise InputError('deposit amount: must be a decimal amount in whole tokens, e.g. "0.01"')
        token = self.bridge.token_for(chain=chain)
        units = to_units(token.asset, amount, Rounding.EXACT, name="deposit amount")
        if units <= 0:
            raise InputError("deposit amount: must be positive")
        tx_hash = self.bridge.simulate_deposit(account, chain, units)
        return {
            "tx_hash": tx_hash,
            "chain": chain,
            "account_id": account,
            "asset": token.asset.token_id,
            "amount": str(units),
            "status": "PENDING",
        }


def _amounts(balances: Mapping[str, int]) -> dict[str, str]:
    return {token: str(amount) for token, amount in balances.items()}


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        doc = json.loads(raw, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        raise InputError("request body is not JSON") from None
    if not isinstance(doc, dict):
        raise InputError("request body must be a JSON object")
    return doc


def _json_response(doc: object, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(doc, default=str, separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


# ====================================================================== `intents-mm sim-venue`

DEFAULT_PORT_BASE = 18700
"""``intents-mm sim-venue`` binds fixed ports from here (so the printed .env block stays valid)."""


def ports_from_base(base: int) -> dict[str, int]:
    """Fixed ports ``base + i`` in :data:`PORT_NAMES` order; ``base == 0`` means any free ports."""
    if base == 0:
        return {}
    if not 1 <= base <= 65535 - len(PORT_NAMES):
        raise InputError(f"port base must be 0 or 1..{65535 - len(PORT_NAMES)}, got {base}")
    return {name: base + i for i, name in enumerate(PORT_NAMES)}


def banner(venue: SimVenue, started_s: float) -> str:
    """What ``intents-mm sim-venue`` prints once the venue is up: endpoints, key, account, env block."""
    s, u = venue.scenario, venue.urls
    mm = s.market_maker
    balances = ", ".join(f"{amount} {symbol}" for symbol, amount in human_balances(mm.balances).items())
    rows = [
        ("relay ws", u["relay_ws"]),
        ("relay rpc", u["relay_rpc"]),
        ("NEAR rpc", u["near_rpc"]),
        ("bridge rpc", u["bridge_rpc"]),
        *((f"{name} ws", u[f"{name}_ws"]) for name in VENUES),
        *((f"{name} rest", u[f"{name}_rest"]) for name in VENUES),
        ("admin", f"{u['admin']}  (POST /fault, GET /state, POST /deposit)"),
    ]
    down = [v for v in VENUES if v not in s.exchanges.venues]
    lines = [
        f"intents-mm sim-venue: scenario {s.name!r}, seed {venue.seed}, started in {started_s:.2f} s",
        "PLAY MONEY: every balance, key and endpoint below is simulated; nothing here is real.",
        "",
        "endpoints",
        *(f"  {label:<15} {url}" for label, url in rows),
    ]
    if down:
        lines.append(f"  (held down for the whole run by the scenario: {', '.join(down)})")
    lines += [
        "",
        f"relay API key     {venue.api_key}",
        "anonymous solvers "
        + ("allowed" if s.relay.allow_anonymous else "refused (403); --allow-anonymous admits them"),
        f"solver account    {venue.mm_account}"
        + (" (implicit)" if mm.account_id is None else " (named)")
        + ", key registered on the Verifier",
        f"public key        {venue.mm_public_key}",
        f"secret key        {venue.mm_secret_key}  (play money only)",
        f"balances          {balances}",
        f"flow              {s.flow.rate_per_s:g} requests/s over {s.flow.users} users, "
        f"{len(s.solvers)} competing solvers, {len(s.faults)} scheduled faults",
        "",
        *account_lines(venue),
        "",
        "# paste into .env to point the services at this venue (play money):",
        *(f"{name}={value}" for name, value in venue.env().items()),
        "",
        "Ctrl-C (or SIGTERM) stops the venue.",
    ]
    return "\n".join(lines)


def _human(balances: Mapping[str, int]) -> str:
    shown = ", ".join(f"{amount} {symbol}" for symbol, amount in human_balances(balances).items())
    return shown or "none"


def account_lines(venue: SimVenue) -> list[str]:
    """The banner's account list: every solver account the venue funded (ours, competitors, extras)."""
    s = venue.scenario
    lines = [f"accounts (every funded solver account; scoreboard rows; {len(s.accounts)} from [[accounts]])"]
    lines.append(f"  market-maker  {venue.mm_account}  {_human(s.market_maker.balances)}  (ours, above)")
    for i, (spec, solver) in enumerate(zip(s.solvers, venue.solvers, strict=False)):
        lines.append(
            f"  sim-solver-{i + 1}  {solver.account_id}  {_human(spec.balances)}  "
            f"(competitor, spread {spec.spread_bps} bps, delay {spec.response_delay_ms} ms)"
        )
    for acct in s.accounts:
        lines.append(f"  external      {acct.account_id}  {_human(acct.balances)}")
        lines.append(f"{'':16}public key {acct.public_key}, registered on the Verifier and the chain")
        if acct.secret_seed is not None:
            secret = key_from_label(f"account:{acct.secret_seed}").to_secret_string()
            lines.append(f"{'':16}secret key {secret}  (from seed {acct.secret_seed!r}; play money only)")
    if s.relay.api_keys:
        lines.append(
            f"  relay keys    {len(s.relay.api_keys)} extra key(s) from [relay] api_keys "
            f"(partners external-1..{len(s.relay.api_keys)})"
        )
    return lines


async def run_standalone(
    scenario: Scenario, *, seed: int, port_base: int = DEFAULT_PORT_BASE, host: str = "127.0.0.1"
) -> int:
    """Run the venue (with its request flow) until SIGINT/SIGTERM, then stop it cleanly; returns 0."""
    t0 = time.monotonic()
    venue = SimVenue(scenario, seed=seed, host=host, ports=ports_from_base(port_base))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await venue.start()
        except OSError as exc:
            raise InputError(
                f"cannot bind the simulated venue on {host} ({exc.strerror or exc}); "
                "another venue may be running: pass --port-base 0 for free ports"
            ) from None
        await venue.start_flow()
        print(banner(venue, time.monotonic() - t0), flush=True)
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await venue.stop()
    flow = venue.stats()["flow"]["counts"]
    print(render_scoreboard(venue.scoreboard()), file=sys.stderr, flush=True)
    print(
        f"sim-venue stopped: {flow.get('requests', 0)} requests, {flow.get('published_ok', 0)} settled, "
        f"{len(venue.faults_applied)} faults applied",
        file=sys.stderr,
        flush=True,
    )
    return 0
