"""trade-executor against the simulated venue over loopback: SimRelay (WS), SimNear JSON-RPC, Verifier.

The executor runs through the composition root (memory bus, a real migrated store, its control API on
an ephemeral port). A separate ``SolverRelayClient`` plays the ingest side: it subscribes to quotes so
the relay opens a window and hands out the quote id the command answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from intents_mm.app import Running, start_services, stop_services
from intents_mm.bus import make_bus
from intents_mm.bus.port import Bus, Delivery
from intents_mm.cli import verify_signed_data
from intents_mm.clock import SystemClock
from intents_mm.config import load_config
from intents_mm.messages import ExecuteTrade, OperatorAction, TradeResult, decode, encode, new_envelope
from intents_mm.near.encoding import b64decode
from intents_mm.near.keys import SigningKey
from intents_mm.near.nonce import VersionedNonce, decode_nonce, encode_versioned_nonce
from intents_mm.near.payload import build_intent_message, parse_multipayload, sign_nep413, token_diff_intent
from intents_mm.services.strategy_engine import is_late_rejection
from intents_mm.services.trade_executor import TradeExecutor
from intents_mm.sim.near_rpc import SimNear, SimNearRpcServer
from intents_mm.sim.relay import SimRelay
from intents_mm.sim.verifier import Verifier, counterparty_diff
from intents_mm.storage import schema
from intents_mm.storage.migrate import migrate
from intents_mm.storage.store import HistoryStore
from intents_mm.venues.relay import QuoteRequestEvent, RelayReply, SolverRelayClient

BTC = "nep141:btc.omft.near"
EURE = "nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"
EUR = 10**18
MS = 1_000_000
API_KEY = "key-mm"
MM_ACCOUNT = "mm.near"
EXECUTOR_KEY = SigningKey.from_seed(b"trade-executor-test".ljust(32, b"\0"))
USER_KEY = SigningKey.from_seed(b"user".ljust(32, b"\0"))


class RecordingRelay(SolverRelayClient):
    """The production client, also keeping every ``quote_response`` params it sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[dict[str, Any]] = []

    async def send_quote_response(self, params: dict[str, Any]) -> RelayReply:
        self.sent.append(params)
        return await super().send_quote_response(params)


class Collector:
    """Every ``exec.trade_result`` and ``control.operator_action`` on the bus."""

    def __init__(self) -> None:
        self.results: list[TradeResult] = []
        self.actions: list[OperatorAction] = []

    async def handler(self, d: Delivery) -> None:
        payload = decode(d.data).payload
        if isinstance(payload, TradeResult):
            self.results.append(payload)
        elif isinstance(payload, OperatorAction):
            self.actions.append(payload)
        await d.ack()

    async def wait_results(self, n: int) -> list[TradeResult]:
        for _ in range(500):
            if len(self.results) >= n:
                return self.results
            await asyncio.sleep(0.01)
        raise AssertionError(f"expected {n} trade results, got {self.results}")


@dataclass
class Harness:
    clock: SystemClock
    verifier: Verifier
    chain: SimNear
    rpc_server: SimNearRpcServer
    relay: SimRelay
    asker: SolverRelayClient
    bus: Bus
    store: HistoryStore
    collector: Collector
    http: aiohttp.ClientSession
    env: dict[str, str]
    running: Running | None = None
    asks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.running is not None
        return self.running.url("trade-executor")

    @property
    def executor(self) -> TradeExecutor:
        assert self.running is not None
        svc = self.running.service("trade-executor")
        assert isinstance(svc, TradeExecutor)
        return svc

    async def start_executor(self, overrides: dict[str, Any] | None = None, **env: str) -> TradeExecutor:
        config = load_config({**self.env, **env}, dotenv=None)
        self.running = await start_services(
            ["trade-executor"],
            config,
            bus=self.bus,
            store=self.store,
            overrides=overrides or {},
            ports={"trade-executor": 0},
        )
        return self.executor

    async def stop_executor(self) -> None:
        if self.running is not None:
            await stop_services(self.running, close_bus=False)
            self.running = None

    async def post(self, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        data = None if body is None else (body if isinstance(body, str) else json.dumps(body))
        headers = {} if data is None else {"content-type": "application/json"}
        async with self.http.post(self.url + path, data=data, headers=headers) as resp:
            return resp.status, await resp.json()

    async def get_state(self) -> dict[str, Any]:
        async with self.http.get(self.url + "/state") as resp:
            assert resp.status == 200
            doc: dict[str, Any] = await resp.json()
            return doc

    async def arm(self) -> None:
        status, body = await self.post("/arm")
        assert status == 200, body
        assert body["armed"] is True

    async def ask(self, *, exact_in: int | None = None, exact_out: int | None = None) -> QuoteRequestEvent:
        """A user's quote request at the relay; returns the event the ingest side sees."""
        req: dict[str, Any] = {
            "defuse_asset_identifier_in": BTC,
            "defuse_asset_identifier_out": EURE,
            "min_deadline_ms": 60000,
        }
        if exact_in is not None:
            req["exact_amount_in"] = str(exact_in)
        else:
            req["exact_amount_out"] = str(exact_out)
        self.asks.append(asyncio.create_task(self.relay.request_quote(req)))
        event = await asyncio.wait_for(self.asker.next_event(), 5)
        assert isinstance(event, QuoteRequestEvent)
        return event

    def command(
        self,
        event: QuoteRequestEvent | None,
        *,
        amount_in: int,
        amount_out: int,
        exact_side: str = "in",
        relay_deadline_ms: int = 3000,  # as the strategy sets it: received now + the relay window
        command_id: str | None = None,
    ) -> ExecuteTrade:
        now = self.clock.now_ns()
        return ExecuteTrade(
            command_id=command_id or f"cmd-{uuid.uuid4().hex[:12]}",
            decision_id=f"dec-{uuid.uuid4().hex[:12]}",
            quote_id=str(event.quote_id) if event is not None else f"q-{uuid.uuid4().hex[:8]}",
            asset_in=BTC,
            asset_out=EURE,
            amount_in=amount_in,
            amount_out=amount_out,
            exact_side=exact_side,  # type: ignore[arg-type]
            min_deadline_ms=60000,
            relay_deadline_ns=now + relay_deadline_ms * MS,
            reference_mid=Decimal("60000"),
        )

    async def send(self, cmd: ExecuteTrade, msg_id: str | None = None) -> None:
        env = new_envelope("cmd.execute_trade", cmd, clock=self.clock, msg_id=msg_id or uuid.uuid4().hex)
        await self.bus.publish("cmd.execute_trade", encode(env), msg_id=env.msg_id)

    def user_accepts(self, quote_diff: dict[str, int]) -> dict[str, Any]:
        """The user's signed side of a swap against our quote (closure with the protocol fee)."""
        account = USER_KEY.public_key.implicit_account_id()
        deadline = (self.clock.now_ns() + 30_000 * MS) // MS * MS
        message = build_intent_message(
            account, deadline, [token_diff_intent(counterparty_diff(quote_diff, self.verifier.fee_pips))]
        )
        nonce = encode_versioned_nonce(self.verifier.current_salt(), deadline, os.urandom(15))
        return sign_nep413(USER_KEY, message, nonce, "intents.near").to_json_obj()

    def quote_responses(self) -> int:
        counts: dict[str, int] = self.relay.stats()["counts"]
        return counts.get("quote_responses", 0)


async def _harness(
    store_url: str, *, register_key: bool = True, lagged_views: bool = False
) -> AsyncIterator[Harness]:
    with tempfile.TemporaryDirectory(prefix="executor-var-") as var_dir:
        async for h in _harness_in(store_url, var_dir, register_key=register_key, lagged_views=lagged_views):
            yield h


async def _harness_in(
    store_url: str, var_dir: str, *, register_key: bool, lagged_views: bool = False
) -> AsyncIterator[Harness]:
    clock = SystemClock()
    verifier = Verifier(clock)
    # lagged_views: `final` views 2 blocks (of 600 ms) behind the latest state, as on the live chain
    chain = SimNear(clock, verifier, lagged_views=lagged_views)
    pk = EXECUTOR_KEY.public_key.to_string()
    chain.add_account(MM_ACCOUNT, pk)
    if register_key:
        verifier.add_public_key(MM_ACCOUNT, pk)
    verifier.credit(MM_ACCOUNT, EURE, 1000 * EUR)
    verifier.credit(MM_ACCOUNT, BTC, 10**8)
    verifier.credit(USER_KEY.public_key.implicit_account_id(), BTC, 10**8)
    verifier.credit(USER_KEY.public_key.implicit_account_id(), EURE, 1000 * EUR)
    rpc_server = SimNearRpcServer(chain)
    rpc_url = await rpc_server.start("127.0.0.1", 0)
    relay = SimRelay(clock, chain, verifier, api_keys={API_KEY: "mm"}, window_ms=5000)
    await relay.start()
    asker = SolverRelayClient(relay.ws_url, api_key=API_KEY, backoff_initial_s=0.05)
    await asker.subscribe_quotes()
    await asker.start()
    assert await asker.wait_connected(5)
    await migrate(store_url)
    store = HistoryStore(store_url)
    await store.connect()
    bus = make_bus(None)
    await bus.start()
    collector = Collector()
    await bus.subscribe(["exec.trade_result", "control.operator_action"], "test-collector", collector.handler)
    http = aiohttp.ClientSession()
    env = {
        "NEAR_INTENTS_SIGNER_PRIVATE_KEY": EXECUTOR_KEY.to_secret_string(),
        "NEAR_INTENTS_ACCOUNT_ID": MM_ACCOUNT,
        "NEAR_RPC_URLS": rpc_url,
        "NEAR_INTENTS_RELAY_WS_URL": relay.ws_url,
        "NEAR_INTENTS_RELAY_RPC_URL": relay.rpc_url,
        "NEAR_INTENTS_API_KEY": API_KEY,
        "INTENTS_MM_VAR_DIR": var_dir,  # the executor's signed-command ledger file lives here
    }
    h = Harness(clock, verifier, chain, rpc_server, relay, asker, bus, store, collector, http, env)
    try:
        yield h
    finally:
        await h.stop_executor()
        await http.close()
        await asker.close()
        await relay.stop()
        await asyncio.gather(*h.asks, return_exceptions=True)
        await rpc_server.stop()
        await bus.close()
        await store.close()


@pytest.fixture
async def h(sqlite_url: str) -> AsyncIterator[Harness]:
    async for harness in _harness(sqlite_url):
        yield harness


@pytest.fixture
async def h_unregistered(sqlite_url: str) -> AsyncIterator[Harness]:
    async for harness in _harness(sqlite_url, register_key=False):
        yield harness


@pytest.fixture
async def h_any_store(store_url: str) -> AsyncIterator[Harness]:
    async for harness in _harness(store_url):
        yield harness


def signed_diff(params: dict[str, Any]) -> dict[str, str]:
    payload = parse_multipayload(params["signed_data"])
    (intent,) = payload.intents
    diff = intent["diff"]
    assert isinstance(diff, dict)
    return {str(k): str(v) for k, v in diff.items()}


# ---------------------------------------------------------------------------------------- tests


async def test_armed_exact_in_and_exact_out_become_accepted_signed_quotes(h: Harness) -> None:
    recorder = RecordingRelay(h.relay.ws_url, api_key=API_KEY)
    executor = await h.start_executor({"trade_executor_relay": recorder})
    try:
        assert executor.armed is False
        await h.arm()
        event = await h.ask(exact_in=5000)
        cmd_in = h.command(event, amount_in=5000, amount_out=3 * EUR, exact_side="in")
        await h.send(cmd_in, msg_id=cmd_in.command_id)
        (res_in,) = await h.collector.wait_results(1)
        assert res_in.outcome == "accepted", res_in
        assert res_in.relay_reply == "OK" and res_in.error is None
        assert (res_in.command_id, res_in.quote_id) == (cmd_in.command_id, cmd_in.quote_id)
        assert (res_in.amount_in, res_in.amount_out, res_in.asset_in, res_in.asset_out) == (
            5000,
            3 * EUR,
            BTC,
            EURE,
        )
        assert res_in.latency_us is not None and res_in.latency_us > 0

        event = await h.ask(exact_out=2 * EUR)
        cmd_out = h.command(event, amount_in=4000, amount_out=2 * EUR, exact_side="out")
        await h.send(cmd_out)
        res_out = (await h.collector.wait_results(2))[1]
        assert res_out.outcome == "accepted", res_out

        params_in, params_out = recorder.sent
        # exact-in: we receive the fixed BTC, we give EURe; quote_output names only amount_out
        assert params_in["quote_id"] == cmd_in.quote_id
        assert params_in["quote_output"] == {"amount_out": str(3 * EUR)}
        assert signed_diff(params_in) == {BTC: "5000", EURE: str(-3 * EUR)}
        # exact-out: we receive the quoted BTC, we give the fixed EURe; quote_output names only amount_in
        assert params_out["quote_output"] == {"amount_in": "4000"}
        assert signed_diff(params_out) == {BTC: "4000", EURE: str(-2 * EUR)}

        for params, res in ((params_in, res_in), (params_out, res_out)):
            report = verify_signed_data(json.dumps(params), parse_multipayload)
            assert report["valid"] is True and report["standard"] == "nep413"
            assert report["hash"] == res.quote_hash
            assert report["public_key"] == EXECUTOR_KEY.public_key.to_string()
            payload = parse_multipayload(params["signed_data"])
            assert payload.signer_id == MM_ACCOUNT and payload.recipient == "intents.near"
            assert payload.deadline_ns == res.deadline_ns
            assert res.nonce_b64 is not None
            assert res.nonce_b64 == params["signed_data"]["payload"]["nonce"]
            nonce = decode_nonce(b64decode(res.nonce_b64))
            assert isinstance(nonce, VersionedNonce)
            assert nonce.salt == h.verifier.current_salt() and nonce.deadline_ns == res.deadline_ns
            assert res.deadline_ns is not None
            # now + 60 s minimum + 10 s default buffer, measured loosely against the wall clock
            remaining_ms = (res.deadline_ns - h.clock.now_ns()) // MS
            assert 65_000 < remaining_ms <= 70_000

        # the user takes the exact-in quote: the Verifier moves our balances by exactly the signed diff
        before_btc = h.verifier.balance_of(MM_ACCOUNT, BTC)
        before_eure = h.verifier.balance_of(MM_ACCOUNT, EURE)
        assert res_in.quote_hash is not None
        published = await h.relay.publish_intent(
            [res_in.quote_hash], h.user_accepts({BTC: 5000, EURE: -3 * EUR})
        )
        assert published["status"] == "OK", published
        assert h.verifier.balance_of(MM_ACCOUNT, BTC) == before_btc + 5000
        assert h.verifier.balance_of(MM_ACCOUNT, EURE) == before_eure - 3 * EUR

        state = await h.get_state()
        assert state["counts"]["accepted"] == 2
        assert state["outstanding_quotes"]["count"] == 2
        assert state["relay"]["state"] == "connected"
        assert state["salt"]["current"] == h.verifier.current_salt().hex()
        assert state["key_registered"] is True and state["account_id"] == MM_ACCOUNT
        assert state["public_key"] == EXECUTOR_KEY.public_key.to_string()
        assert EXECUTOR_KEY.to_secret_string() not in json.dumps(state)
        assert API_KEY not in json.dumps(state)
        assert [r["outcome"] for r in state["last_results"]] == ["accepted", "accepted"]
    finally:
        await h.stop_executor()
        await recorder.close()


async def test_disarmed_never_sends_a_quote_response(h: Harness) -> None:
    await h.start_executor()
    event = await h.ask(exact_in=5000)
    cmd = h.command(event, amount_in=5000, amount_out=EUR)
    await h.send(cmd)
    (res,) = await h.collector.wait_results(1)
    assert res.outcome == "skipped_disarmed"
    assert res.quote_hash is None and res.nonce_b64 is None and res.relay_reply is None
    await asyncio.sleep(0.1)
    assert h.quote_responses() == 0
    (sample,) = [s for s in h.relay.latency_samples() if s.quote_id == event.quote_id]
    assert sample.response_ns is None  # only the ingest side got the event, and nobody answered
    # never signed: the ledger does not know the command
    assert await h.store.record_signed_command(cmd.command_id, "x", "y") is True
    # arming afterwards does not resurrect it: a redelivery gets the same single result
    await h.arm()
    await h.send(cmd)
    await asyncio.sleep(0.2)
    assert len(h.collector.results) == 1
    assert h.quote_responses() == 0


async def test_late_command_is_dropped_and_never_signed(h: Harness) -> None:
    await h.start_executor()
    await h.arm()
    event = await h.ask(exact_in=5000)
    cmd = h.command(event, amount_in=5000, amount_out=EUR, relay_deadline_ms=-1)
    await h.send(cmd)
    (res,) = await h.collector.wait_results(1)
    assert res.outcome == "dropped_late"
    assert res.quote_hash is None and res.nonce_b64 is None
    await asyncio.sleep(0.1)
    assert h.quote_responses() == 0
    assert await h.store.record_signed_command(cmd.command_id, "x", "y") is True
    assert (await h.get_state())["outstanding_quotes"]["count"] == 0


async def test_a_command_whose_request_waited_too_long_is_shed_never_signed(h: Harness) -> None:
    await h.start_executor(SHED_REQUEST_AGE_MS="50")
    await h.arm()
    event = await h.ask(exact_in=5000)
    # relay deadline 2.8 s away with a 3 s window: its frame was read 200 ms ago, beyond the 50 ms bound
    cmd = h.command(event, amount_in=5000, amount_out=EUR, relay_deadline_ms=2800)
    await h.send(cmd)
    (res,) = await h.collector.wait_results(1)
    assert res.outcome == "dropped_late" and res.error is not None
    assert res.error.startswith("shed_overload: the request waited"), res.error
    assert res.quote_hash is None and res.nonce_b64 is None
    await asyncio.sleep(0.1)
    assert h.quote_responses() == 0
    assert (await h.get_state())["outstanding_quotes"]["count"] == 0


async def test_the_relays_answer_to_a_late_quote_response_reads_as_our_lateness(h: Harness) -> None:
    """The simulated relay closed the quote's window (shorter than ours): its rejection is told apart
    from a venue error by the strategy's reading of the error (never a venue-error pause)."""
    await h.start_executor(SHED_REQUEST_AGE_MS="0")
    await h.arm()
    h.relay.set_window_ms(150)
    event = await h.ask(exact_in=5000)
    await asyncio.sleep(0.4)  # the relay's window has closed; ours (3 s from now) has not
    cmd = h.command(event, amount_in=5000, amount_out=EUR)
    await h.send(cmd)
    (res,) = await h.collector.wait_results(1)
    assert res.outcome == "rejected", res
    assert is_late_rejection(res.error), res.error
    assert h.quote_responses() == 1


async def test_same_command_twice_and_after_restart_is_signed_once(h_any_store: Harness) -> None:
    h = h_any_store
    await h.start_executor()
    await h.arm()
    event = await h.ask(exact_in=5000)
    cmd = h.command(event, amount_in=5000, amount_out=EUR, relay_deadline_ms=20_000)
    await h.send(cmd, msg_id="first")
    (res,) = await h.collector.wait_results(1)
    assert res.outcome == "accepted"
    await h.send(cmd, msg_id="second")  # the strategy (or an operator) sends it again
    await asyncio.sleep(0.2)
    assert h.quote_responses() == 1
    assert h.collector.results == [res]

    await h.stop_executor()
    executor = await h.start_executor()
    assert executor.armed is False  # always disarmed after a restart
    await h.arm()
    await h.send(cmd, msg_id="third")
    await asyncio.sleep(0.3)
    assert h.quote_responses() == 1  # the ledger refused a second signature
    assert h.collector.results == [res]  # the result msg_id is the same, so the bus kept one
    state = await h.get_state()
    assert state["counts"]["error"] == 1
    assert "already signed" in state["last_results"][-1]["error"]


async def test_restart_refuses_a_resign_from_the_ledger_file_alone(h: Harness) -> None:
    executor = await h.start_executor()
    await h.arm()
    event = await h.ask(exact_in=5000)
    cmd = h.command(event, amount_in=5000, amount_out=EUR, relay_deadline_ms=20_000)
    await h.send(cmd, msg_id="first")
    (res,) = await h.collector.wait_results(1)
    assert res.outcome == "accepted"
    ledger_file = executor.ledger.path
    assert cmd.command_id.encode() in ledger_file.read_bytes()  # written before the quote left
    await h.stop_executor()
    async with h.store._require_engine().begin() as conn:  # the mirror lost: only the file knows
        await conn.execute(sa.delete(schema.signed_commands))

    executor = await h.start_executor()
    assert cmd.command_id in executor.ledger
    await h.arm()
    await h.send(cmd, msg_id="second")
    await asyncio.sleep(0.3)
    assert h.quote_responses() == 1
    last = (await h.get_state())["last_results"][-1]
    assert "already signed" in last["error"]
    assert last["quote_hash"] == res.quote_hash  # a later settlement can still be matched to it


async def test_restart_refuses_a_resign_from_the_store_when_the_file_is_lost(h: Harness) -> None:
    executor = await h.start_executor()
    await h.arm()
    event = await h.ask(exact_in=5000)
    cmd = h.command(event, amount_in=5000, amount_out=EUR, relay_deadline_ms=20_000)
    await h.send(cmd, msg_id="first")
    (res,) = await h.collector.wait_results(1)
    assert res.outcome == "accepted"
    ledger_file = executor.ledger.path
    await h.stop_executor()  # the mirror is flushed on stop
    recorded = dict(await h.store.signed_commands_since(0))
    assert cmd.command_id in recorded
    ledger_file.unlink()  # a replacement machine: no local file

    executor = await h.start_executor()
    assert cmd.command_id in executor.ledger
    await h.arm()
    await h.send(cmd, msg_id="second")
    await asyncio.sleep(0.3)
    assert h.quote_responses() == 1
    state = await h.get_state()
    assert state["ledger"]["ready"] is True and state["ledger"]["loaded_from_file"] == 0


async def test_an_unwritable_ledger_sends_nothing(h: Harness) -> None:
    executor = await h.start_executor()
    await h.arm()
    fd = executor.ledger._fd
    assert fd is not None
    executor.ledger._fd = os.open(os.devnull, os.O_RDONLY)  # every write now fails (EBADF)
    try:
        event = await h.ask(exact_in=5000)
        cmd = h.command(event, amount_in=5000, amount_out=EUR)
        await h.send(cmd)
        (res,) = await h.collector.wait_results(1)
        assert res.outcome == "error" and "ledger unavailable, not sent" in (res.error or "")
        assert h.quote_responses() == 0
        async with h.http.get(h.url + "/healthz") as resp:
            assert resp.status == 503
            assert "ledger" in (await resp.json())["failing"]
    finally:
        os.close(executor.ledger._fd)
        executor.ledger._fd = fd


async def test_a_duplicate_arriving_while_the_first_is_in_flight_is_not_signed_again(h: Harness) -> None:
    executor = await h.start_executor()
    await h.arm()
    event = await h.ask(exact_in=5000)
    cmd = h.command(event, amount_in=5000, amount_out=EUR)
    await h.send(cmd, msg_id="a")
    await h.send(cmd, msg_id="b")  # delivered while the first is still being signed and sent
    (res,) = await h.collector.wait_results(1)
    assert res.outcome == "accepted"
    await asyncio.sleep(0.2)
    assert h.quote_responses() == 1
    assert len(h.collector.results) == 1
    assert sum(executor.counts.values()) == 1 and not executor._inflight


async def test_invalid_salt_is_refreshed_and_the_command_retried_once(h: Harness) -> None:
    recorder = RecordingRelay(h.relay.ws_url, api_key=API_KEY)
    try:
        await h.start_executor({"trade_executor_relay": recorder})
        await h.arm()
        old = h.verifier.current_salt()
        assert (await h.get_state())["salt"]["current"] == old.hex()
        new = h.verifier.rotate_salt()
        h.verifier.invalidate_salt(old)
        event = await h.ask(exact_in=5000)
        cmd = h.command(event, amount_in=5000, amount_out=EUR)
        await h.send(cmd)
        (res,) = await h.collector.wait_results(1)
        assert res.outcome == "accepted", res
        first, second = recorder.sent
        salts = [decode_nonce(parse_multipayload(p["signed_data"]).nonce) for p in (first, second)]
        assert [s.salt for s in salts if isinstance(s, VersionedNonce)] == [old, new]
        assert res.nonce_b64 == second["signed_data"]["payload"]["nonce"]
        assert h.relay.stats()["rejections"] == {"verifier check failed": 1}
        state = await h.get_state()
        assert state["salt"]["current"] == new.hex()
        assert state["salt"]["retries_after_invalid_salt"] == 1
        assert state["outstanding_quotes"]["count"] == 1  # the invalid-salt quote can never settle
    finally:
        await h.stop_executor()
        await recorder.close()


async def test_arming_refused_while_the_key_is_not_registered(h_unregistered: Harness) -> None:
    h = h_unregistered
    await h.start_executor()
    status, body = await h.post("/arm")
    assert status == 409
    assert "not registered" in body["error"] and MM_ACCOUNT in body["error"]
    state = await h.get_state()
    assert state["armed"] is False and state["key_registered"] is False
    await asyncio.sleep(0.05)
    refused = [a for a in h.collector.actions if a.action == "arm"]
    assert refused and refused[-1].result == "refused" and refused[-1].service == "trade-executor"

    h.verifier.add_public_key(MM_ACCOUNT, EXECUTOR_KEY.public_key.to_string())  # add_public_key done
    await h.arm()
    assert (await h.get_state())["key_registered"] is True
    status, body = await h.post("/disarm")
    assert status == 200 and body == {"armed": False}


async def test_arming_refused_without_a_signer_key(h: Harness) -> None:
    await h.start_executor(NEAR_INTENTS_SIGNER_PRIVATE_KEY="", NEAR_INTENTS_ACCOUNT_ID="")
    status, body = await h.post("/arm")
    assert status == 409 and "NEAR_INTENTS_SIGNER_PRIVATE_KEY" in body["error"]
    state = await h.get_state()
    assert state["armed"] is False and state["public_key"] is None and state["account_id"] is None


async def test_implicit_account_with_raw_ed25519(h: Harness) -> None:
    implicit = EXECUTOR_KEY.public_key.implicit_account_id()
    h.verifier.credit(implicit, EURE, 10 * EUR)
    await h.start_executor(NEAR_INTENTS_ACCOUNT_ID="", EXECUTOR_SIGNING_STANDARD="raw_ed25519")
    await h.arm()
    state = await h.get_state()
    assert state["account_id"] == implicit and state["key_check"]["source"] == "implicit"
    event = await h.ask(exact_in=7000)
    await h.send(h.command(event, amount_in=7000, amount_out=EUR))
    (res,) = await h.collector.wait_results(1)
    assert res.outcome == "accepted", res


async def test_relay_rejection_is_reported(h: Harness) -> None:
    await h.start_executor()
    await h.arm()
    event = await h.ask(exact_in=5000)
    # more EURe than the account holds: the relay refuses the quote
    await h.send(h.command(event, amount_in=5000, amount_out=10_000 * EUR))
    (res,) = await h.collector.wait_results(1)
    assert res.outcome == "rejected"
    assert res.error is not None and "insufficient balance" in res.error
    assert res.quote_hash is not None and res.latency_us is not None


async def _two_live_quotes(h: Harness) -> tuple[TradeResult, TradeResult]:
    await h.arm()
    results = []
    for n, amount_in in enumerate((5000, 6000), start=1):
        event = await h.ask(exact_in=amount_in)
        await h.send(h.command(event, amount_in=amount_in, amount_out=EUR))
        results.append((await h.collector.wait_results(n))[-1])
    first, second = results
    assert first.outcome == second.outcome == "accepted"
    return first, second


async def test_kill_invalidates_outstanding_nonces_and_disarms_the_strategy(h: Harness) -> None:
    strategy_disarmed: list[bool] = []
    await h.start_executor({"disarm_strategy": lambda: strategy_disarmed.append(True)})
    settled, live = await _two_live_quotes(h)
    assert settled.quote_hash and live.quote_hash and settled.nonce_b64 and live.nonce_b64
    published = await h.relay.publish_intent([settled.quote_hash], h.user_accepts({BTC: 5000, EURE: -EUR}))
    assert published["status"] == "OK"

    status, body = await h.post("/kill", {"reason": "test"})
    assert status == 200, body
    assert body["ok"] is True and body["executor_disarmed"] is True and body["error"] is None
    assert body["nonces_cancelled"] == [live.nonce_b64]
    assert body["already_used"] == [settled.nonce_b64]
    assert h.chain.tx_record(body["tx_hash"]) is not None
    assert h.verifier.is_nonce_used(MM_ACCOUNT, b64decode(live.nonce_b64))
    assert strategy_disarmed == [True]

    # the killed quote can no longer settle
    failed = await h.relay.publish_intent([live.quote_hash], h.user_accepts({BTC: 6000, EURE: -EUR}))
    assert failed["status"] == "FAILED" and "nonce was already used" in failed["reason"]

    state = await h.get_state()
    assert state["armed"] is False and state["last_kill"]["tx_hash"] == body["tx_hash"]
    assert state["outstanding_quotes"]["count"] == 0
    await asyncio.sleep(0.05)
    strategy = [a for a in h.collector.actions if a.service == "strategy-engine"]
    assert [(a.action, a.actor) for a in strategy] == [("disarm", "trade-executor/kill")]
    (kill_result,) = [a for a in h.collector.actions if a.action == "kill_result"]
    assert kill_result.params["tx_hash"] == body["tx_hash"] and kill_result.result == "ok"
    audit = [a for a in h.collector.actions if a.action == "kill" and a.service == "trade-executor"]
    assert audit and audit[-1].result == "ok"

    # disarmed by the kill: the next command is not signed
    event = await h.ask(exact_in=5000)
    await h.send(h.command(event, amount_in=5000, amount_out=EUR))
    assert (await h.collector.wait_results(3))[-1].outcome == "skipped_disarmed"

    # nothing left to cancel: no transaction
    status, body = await h.post("/kill")
    assert status == 200 and body["tx_hash"] is None and body["nonces_cancelled"] == []


async def test_kill_retries_without_a_nonce_the_view_missed(h: Harness) -> None:
    await h.start_executor()
    settled, live = await _two_live_quotes(h)
    assert settled.quote_hash and live.nonce_b64 and settled.nonce_b64
    published = await h.relay.publish_intent([settled.quote_hash], h.user_accepts({BTC: 5000, EURE: -EUR}))
    assert published["status"] == "OK"
    h.rpc_server.fail_next(2, "rpc_error", method="query")  # both is_nonce_used views fail
    status, body = await h.post("/kill")
    assert status == 200, body
    assert body["nonces_cancelled"] == [live.nonce_b64]
    assert body["already_used"] == [settled.nonce_b64]
    assert h.verifier.is_nonce_used(MM_ACCOUNT, b64decode(live.nonce_b64))


async def test_a_new_machine_rebuilds_the_live_quotes_from_the_store(h: Harness) -> None:
    """No ledger file (a new pod): the store's signed_commands, with their deadlines, bring the live
    quotes back, so /kill still cancels them."""
    await h.start_executor()
    await h.arm()
    event = await h.ask(exact_in=5000)
    await h.send(h.command(event, amount_in=5000, amount_out=EUR))
    (res,) = await h.collector.wait_results(1)
    assert res.outcome == "accepted" and res.nonce_b64
    await h.stop_executor()  # the mirror is flushed to the store on stop
    ledger_dir = Path(h.env["INTENTS_MM_VAR_DIR"]) / "trade-executor"
    removed = [p for p in ledger_dir.iterdir() if p.name.startswith("signed-commands.ledger")]
    assert removed
    for path in removed:
        path.unlink()

    await h.start_executor()
    state = await h.get_state()
    assert state["ledger"]["loaded_from_file"] == 0
    assert state["outstanding_quotes"]["count"] == 1
    status, body = await h.post("/kill")
    assert status == 200, body
    assert body["nonces_cancelled"] == [res.nonce_b64]
    assert h.verifier.is_nonce_used(MM_ACCOUNT, b64decode(res.nonce_b64))


async def test_kill_failure_is_reported_and_signed_quotes_survive_a_restart(h: Harness) -> None:
    await h.start_executor()
    await h.arm()
    event = await h.ask(exact_in=5000)
    await h.send(h.command(event, amount_in=5000, amount_out=EUR))
    (res,) = await h.collector.wait_results(1)
    assert res.outcome == "accepted" and res.nonce_b64
    await h.stop_executor()  # the list of signed quotes is persisted on stop

    executor = await h.start_executor(EXECUTOR_CANCEL_ON_MOVE="false")  # no restart cancel
    assert (await h.get_state())["outstanding_quotes"]["count"] == 1
    await h.rpc_server.stop()  # the NEAR RPC is down: the kill cannot send its transaction
    await h.relay.stop()  # and the relay too: no path can cancel
    status, body = await h.post("/kill")
    assert status == 502 and body["ok"] is False and "1 of 1 quotes not cancelled" in body["error"]
    (cancel,) = body["cancels"]
    assert cancel["outcome"] == "failed" and cancel["nonce"] == res.nonce_b64
    assert cancel["relay"].startswith("failed:") and cancel["chain"].startswith("failed:")
    assert executor.armed is False
    assert (await h.get_state())["last_kill"]["ok"] is False
    assert not h.verifier.is_nonce_used(MM_ACCOUNT, b64decode(res.nonce_b64))


async def test_bad_bodies_get_400(h: Harness) -> None:
    await h.start_executor()
    for path in ("/arm", "/disarm", "/kill"):
        status, body = await h.post(path, "{not json")
        assert status == 400 and "error" in body
    status, body = await h.post("/kill", {"reason": 5})
    assert status == 400
    assert (await h.get_state())["last_kill"] is None


def test_docs_name_every_route() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "services" / "trade-executor.md").read_text()
    for route in ("POST /arm", "POST /disarm", "POST /kill", "GET /state"):
        assert route in doc


async def test_a_ledger_row_the_store_refuses_does_not_stop_the_mirror(h_any_store: Harness) -> None:
    h = h_any_store
    executor = await h.start_executor()
    await h.arm()
    cmds = []
    for i, command_id in enumerate(["cmd-before", "cmd-\x00-nul", "cmd-after"]):
        event = await h.ask(exact_in=5000 + i)
        cmd = h.command(event, amount_in=5000 + i, amount_out=EUR, command_id=command_id)
        await h.send(cmd)
        cmds.append(cmd)
    results = await h.collector.wait_results(3)
    assert [r.outcome for r in results] == ["accepted"] * 3
    refused = 1 if h.store.dialect == "postgresql" else 0  # PostgreSQL text cannot hold NUL
    for _ in range(200):
        if executor.mirrored == 3 and not executor._mirror:
            break
        await asyncio.sleep(0.05)
    recorded = dict(await h.store.signed_commands_since(0))
    assert {"cmd-before", "cmd-after"} <= set(recorded)  # the refused row did not block the others
    assert ("cmd-\x00-nul" in recorded) is (refused == 0)
    state = await h.get_state()
    assert state["ledger"]["mirror_rejected"] == refused
    assert state["ledger"]["mirror_backlog"] == 0 and state["ledger"]["mirror_error"] is None
    assert "cmd-\x00-nul" in executor.ledger  # the local file still holds it: never signed again
    async with h.http.get(h.url + "/healthz") as resp:
        assert resp.status == 200


async def test_a_mirror_failing_for_long_fails_healthz(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from intents_mm.errors import StoreError
    from intents_mm.services import trade_executor as te

    executor = await h.start_executor()
    await h.arm()

    async def down(entries: Any) -> int:
        raise StoreError("history store signed command records (1) failed: connection refused")

    monkeypatch.setattr(h.store, "record_signed_commands", down)
    monkeypatch.setattr(te, "MIRROR_UNHEALTHY_S", 0.3)
    event = await h.ask(exact_in=5000)
    await h.send(h.command(event, amount_in=5000, amount_out=EUR))
    assert (await h.collector.wait_results(1))[0].outcome == "accepted"  # signing does not wait for it
    for _ in range(100):
        if executor.mirror_failing_since is not None:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.4)
    async with h.http.get(h.url + "/healthz") as resp:
        assert resp.status == 503
        body = await resp.json()
    detail = body["failing"]["ledger_mirror"]
    assert "not mirrored to the store" in detail and "connection refused" in detail and "1 waiting" in detail
    monkeypatch.undo()  # the store is back
    for _ in range(200):
        if executor.mirror_failing_since is None:
            break
        await asyncio.sleep(0.05)
    async with h.http.get(h.url + "/healthz") as resp:
        assert resp.status == 200
