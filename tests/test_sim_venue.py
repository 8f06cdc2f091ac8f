"""SimVenue: the composed simulated venue on loopback, driven through its real wire protocols."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from conftest import free_port
from intents_mm.clock import ManualClock
from intents_mm.config import load_config
from intents_mm.domain.assets import BTC, EURE
from intents_mm.errors import InputError
from intents_mm.near.keys import PublicKey
from intents_mm.near.rpc import NearRpcClient
from intents_mm.near.verifier import VerifierClient
from intents_mm.sim.scenario import Fault, Scenario, key_from_label
from intents_mm.sim.venue import PORT_NAMES, SimVenue, ports_from_base
from intents_mm.venues.bridge import BridgeClient
from intents_mm.venues.exchanges import VENUES as EXCHANGE_SPECS

FAST = """
name = "test"
[bridge]
deposit_pending_s = 0.1
deposit_credit_s = 0.1
[flow]
rate_per_s = 20
users = 2
[[solvers]]
spread_bps = 30
[[solvers]]
spread_bps = 50
[[accounts]]
seed = "extra"
balances = { EURe = 7 }
[[accounts]]
account_id = "named.sim.near"
public_key = "ed25519:CVV71EkuAhrbbBnAjBh4bmoWYZp1NP7rLep9QTTrA3LL"
"""


@pytest.fixture
async def venue() -> AsyncIterator[SimVenue]:
    v = SimVenue(Scenario.from_toml(FAST, "fast.toml"), seed=11)
    await v.start()
    try:
        yield v
    finally:
        await v.stop()


async def rest_tick_mid(session: aiohttp.ClientSession, venue: SimVenue, name: str) -> Decimal:
    """The venue's REST ticker, fetched and parsed by the production parser of that exchange."""
    spec = EXCHANGE_SPECS[name]
    async with session.get(venue.urls[f"{name}_rest"] + spec.rest_path) as resp:
        assert resp.status == 200, await resp.text()
        tick = spec.parse_rest(await resp.read(), 0)
    return (tick.bid + tick.ask) / 2


async def test_every_url_answers_its_protocol(venue: SimVenue) -> None:
    urls = venue.urls
    assert set(urls) == {
        "relay_ws",
        "relay_rpc",
        "near_rpc",
        "bridge_rpc",
        "admin",
        *(f"{v}_{kind}" for v in EXCHANGE_SPECS for kind in ("ws", "rest")),
    }
    async with aiohttp.ClientSession() as session:
        # NEAR RPC: a block through the production client
        async with NearRpcClient([urls["near_rpc"]], session=session) as rpc:
            block = await rpc.block("final")
            served = venue.chain.block_at(block.height)
            assert served is not None and served.hash == block.hash_b58
        # PoA bridge: supported tokens through the production client
        tokens = await BridgeClient(urls["bridge_rpc"], session).supported_tokens()
        assert {t.intents_token_id for t in tokens} == {BTC.token_id, EURE.token_id}
        # Solver Relay: refused without a key, accepted with the generated one
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(urls["relay_ws"])
        assert refused.value.status == 403
        async with session.ws_connect(
            urls["relay_ws"], headers={"Authorization": f"Bearer {venue.api_key}"}
        ) as ws:
            await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": ["quote"]})
            reply = await asyncio.wait_for(ws.receive_json(), 5)
            assert reply["id"] == 1 and isinstance(reply["result"], str)
        # each exchange's REST ticker, parsed by the live adapter's parser, near the path's mid
        mid = venue.price_at(venue.clock.now_ns())
        for name in EXCHANGE_SPECS:
            venue_mid = await rest_tick_mid(session, venue, name)
            assert abs(venue_mid / mid - 1) < Decimal("0.001"), (name, venue_mid, mid)


async def test_market_maker_funded_and_key_registered_through_near_rpc(venue: SimVenue) -> None:
    scenario = venue.scenario
    assert venue.mm_key == key_from_label("market-maker:market-maker")
    assert venue.mm_account == venue.mm_key.public_key.implicit_account_id()
    extra = scenario.accounts[0]
    async with NearRpcClient([venue.urls["near_rpc"]]) as rpc:
        verifier = VerifierClient(rpc)
        assert await verifier.has_public_key(venue.mm_account, venue.mm_public_key)
        other = key_from_label("somebody-else").public_key
        assert not await verifier.has_public_key(venue.mm_account, other)
        balances, _ = await verifier.mt_batch_balance_of(venue.mm_account, [BTC.token_id, EURE.token_id])
        assert balances == {BTC.token_id: 5_000_000, EURE.token_id: 5000 * 10**18}
        assert await verifier.has_public_key(extra.account_id, PublicKey.from_string(extra.public_key))
        extra_balances, _ = await verifier.mt_batch_balance_of(extra.account_id, [EURE.token_id])
        assert extra_balances == {EURE.token_id: 7 * 10**18}
        # the chain knows the keys too (accounts can send transactions, e.g. withdrawals)
        access = await rpc.view_access_key(venue.mm_account, venue.mm_public_key)
        assert (access.nonce, access.permission) == (0, "FullAccess")
        named = key_from_label("named-test-account").public_key
        assert scenario.accounts[1].account_id == "named.sim.near"
        assert await verifier.has_public_key("named.sim.near", named)
        access = await rpc.view_access_key("named.sim.near", named)
        assert access.permission == "FullAccess"
    # competitors are funded, registered and subscribed before start() returns
    assert len(venue.solvers) == 2 and all(s.ready for s in venue.solvers)
    for solver in venue.solvers:
        assert venue.verifier.balance_of(solver.account_id, BTC.token_id) == 10**8


async def test_env_points_the_services_here_and_passes_config_validation(venue: SimVenue) -> None:
    env = venue.env()
    config = load_config(env, dotenv=None)
    assert config["NEAR_INTENTS_RELAY_WS_URL"] == venue.urls["relay_ws"]
    assert config["NEAR_INTENTS_RELAY_RPC_URL"] == venue.urls["relay_rpc"]
    assert tuple(config["NEAR_RPC_URLS"]) == (venue.urls["near_rpc"],)
    assert config["NEAR_INTENTS_BRIDGE_RPC_URL"] == venue.urls["bridge_rpc"]
    for name in EXCHANGE_SPECS:
        assert config[f"{name.upper()}_WS_URL"] == venue.urls[f"{name}_ws"]
        assert config[f"{name.upper()}_REST_URL"] == venue.urls[f"{name}_rest"]
    assert config["NEAR_INTENTS_API_KEY"] == venue.api_key
    assert config["NEAR_INTENTS_ACCOUNT_ID"] == venue.mm_account
    assert config["NEAR_INTENTS_SIGNER_PRIVATE_KEY"] == venue.mm_secret_key
    # everything live trading needs from the venue is there (the history store is not the venue's)
    assert [p for p in config.live_problems() if not p.startswith("POSTGRES_URL")] == []


async def test_same_seed_same_plan_and_path_other_seed_differs() -> None:
    scenario = Scenario.from_toml(FAST)
    a = SimVenue(scenario, seed=5, clock=ManualClock())
    b = SimVenue(scenario, seed=5, clock=ManualClock())
    c = SimVenue(scenario, seed=6, clock=ManualClock())
    plan = a.planned_requests(40)
    assert plan == b.planned_requests(40)
    assert plan == a.planned_requests(40)  # a pure function: asking again changes nothing
    assert plan != c.planned_requests(40)
    assert [p.t_s for p in plan] == sorted(p.t_s for p in plan)
    assert {p.user for p in plan} == {0, 1}
    origin = ManualClock().now_ns()
    times = [origin + k * 250_000_000 for k in (0, 1, 7, 40, 400, 4000)]
    assert [a.price_at(t) for t in times] == [b.price_at(t) for t in times]
    assert [a.price_at(t) for t in times[1:]] != [c.price_at(t) for t in times[1:]]


async def test_the_live_flow_follows_the_plan(venue: SimVenue) -> None:
    await venue.start_flow()
    await venue.start_flow()  # a second call does nothing
    plan = venue.planned_requests(60)
    async with asyncio.timeout(10):
        while sum(u.counts["requests"] for u in venue.users) < 12:
            await asyncio.sleep(0.05)
    for i, user in enumerate(venue.users):
        sent = [o.planned for o in user.outcomes]
        expected = [p.request for p in plan if p.user == i]
        assert sent and sent == expected[: len(sent)]
    counts = venue.stats()["flow"]["counts"]
    assert counts["requests"] >= 12
    assert counts.get("published_ok", 0) >= 1  # competitors quote, users accept, the relay settles


async def test_admin_outlier_fault_moves_that_exchange_rest_price(venue: SimVenue) -> None:
    admin = venue.urls["admin"]
    async with aiohttp.ClientSession() as session:
        before = await rest_tick_mid(session, venue, "kraken")
        async with session.post(
            f"{admin}/fault",
            json={"kind": "exchange_outlier", "venue": "kraken", "bps": 500, "duration_s": 0.5},
        ) as resp:
            assert resp.status == 200
            applied = (await resp.json())["applied"]
        assert applied["kind"] == "exchange_outlier" and applied["source"] == "admin"
        during = await rest_tick_mid(session, venue, "kraken")
        other = await rest_tick_mid(session, venue, "binance")
        assert during / other - 1 > Decimal("0.045"), (during, other)
        assert during / before - 1 > Decimal("0.045")
        async with asyncio.timeout(5):
            while "ended_ns" not in venue.faults_applied[-1]:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the next requote comes without the offset
        after = await rest_tick_mid(session, venue, "kraken")
        other = await rest_tick_mid(session, venue, "binance")
        assert abs(after / other - 1) < Decimal("0.001"), (after, other)
        async with session.get(f"{admin}/state") as resp:
            state = await resp.json()
    assert state["faults_applied"][0]["kind"] == "exchange_outlier"
    assert "ended_ns" in state["faults_applied"][0]


async def test_admin_faults_reach_relay_near_rpc_bridge_and_price(venue: SimVenue) -> None:
    admin = venue.urls["admin"]
    async with aiohttp.ClientSession() as session:

        async def fault(body: dict[str, Any]) -> dict[str, Any]:
            async with session.post(f"{admin}/fault", json=body) as resp:
                doc: dict[str, Any] = await resp.json()
                assert resp.status == 200, doc
                applied: dict[str, Any] = doc["applied"]
                return applied

        # NEAR RPC 5xx: the next call answers HTTP 500, the one after is served
        await fault({"kind": "rpc_5xx", "n": 1})
        body = {"jsonrpc": "2.0", "id": 1, "method": "status", "params": []}
        async with session.post(venue.urls["near_rpc"], json=body) as resp:
            assert resp.status == 500
        async with session.post(venue.urls["near_rpc"], json=body) as resp:
            assert resp.status == 200
        # relay disconnect: both competitors lose their socket and come back
        applied = await fault({"kind": "relay_disconnect"})
        assert applied["connections_closed"] == 2
        async with asyncio.timeout(5):
            while not all(s.ready and s.stats.connects == 2 for s in venue.solvers):
                await asyncio.sleep(0.05)
        # relay error replies: the next quote_response is refused with the message
        await fault({"kind": "relay_error_replies", "n": 1, "message": "drill says no"})
        quotes = await venue.relay.request_quote(
            {
                "defuse_asset_identifier_in": BTC.token_id,
                "defuse_asset_identifier_out": EURE.token_id,
                "exact_amount_in": "100000",
                "min_deadline_ms": 60000,
            }
        )
        assert quotes is not None and len(quotes) == 1  # one of the two answers was refused
        async with asyncio.timeout(5):
            while not any("drill says no" in r for s in venue.solvers for r in s.stats.rejections):
                await asyncio.sleep(0.02)
        # bridge: the next withdrawal fails
        await fault({"kind": "bridge_withdrawal_failure", "reason": "drill"})
        assert venue.bridge.register_withdrawal(
            "tx1", venue.mm_account, BTC.token_id, 100_000, "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
        ).outcome == ("FAILED")
        # price shock: the path moves by the shock from now on
        applied = await fault({"kind": "price_shock", "bps": -100})
        ratio = Decimal(applied["mid_after"]) / Decimal(applied["mid_before"])
        assert abs(ratio - Decimal("0.99")) < Decimal("0.0001")
        # exchange down: REST 503 until the fault ends
        await fault({"kind": "exchange_down", "venue": "coinbase", "duration_s": 0.3})
        spec = EXCHANGE_SPECS["coinbase"]
        async with session.get(venue.urls["coinbase_rest"] + spec.rest_path) as resp:
            assert resp.status == 503
        await asyncio.sleep(0.5)
        async with session.get(venue.urls["coinbase_rest"] + spec.rest_path) as resp:
            assert resp.status == 200
        async with session.get(f"{admin}/state") as resp:
            state = await resp.json()
    kinds = [f["kind"] for f in state["faults_applied"]]
    assert kinds == [
        "rpc_5xx",
        "relay_disconnect",
        "relay_error_replies",
        "bridge_withdrawal_failure",
        "price_shock",
        "exchange_down",
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", "request body is not JSON"),
        (b"[1]", "request body must be a JSON object"),
        (b'{"kind": "meteor"}', "fault kind: must be one of"),
        (b'{"kind": "exchange_stale"}', "fault venue: missing"),
        (b'{"kind": "exchange_stale", "venue": "mtgox"}', "fault venue: must be one of"),
        (b'{"kind": "relay_disconnect", "at_s": 1}', "fault: unknown key 'at_s'"),
        (b'{"kind": "rpc_timeouts", "n": -1}', "fault n: must be an integer >= 1"),
    ],
)
async def test_admin_fault_bad_input_is_400(venue: SimVenue, body: bytes, expected: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{venue.urls['admin']}/fault", data=body) as resp,
    ):
        assert resp.status == 400
        assert expected in (await resp.json())["error"]
    assert list(venue.faults_applied) == []


async def test_admin_deposit_credits_the_market_maker_and_state_shows_it(venue: SimVenue) -> None:
    admin = venue.urls["admin"]
    start = venue.verifier.balance_of(venue.mm_account, BTC.token_id)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{admin}/deposit", json={"chain": "btc:mainnet", "amount": "0.01"}) as resp:
            assert resp.status == 200
            doc = await resp.json()
        assert doc["account_id"] == venue.mm_account and doc["amount"] == "1000000"
        async with asyncio.timeout(5):
            while venue.verifier.balance_of(venue.mm_account, BTC.token_id) == start:
                await asyncio.sleep(0.05)
        assert venue.verifier.balance_of(venue.mm_account, BTC.token_id) == start + 1_000_000
        page = await BridgeClient(venue.urls["bridge_rpc"], session).recent_deposits(venue.mm_account)
        # the bridge answers in the docs' shape: no tx_hash on BTC ("EVM networks only")
        assert [(d.amount, d.tx_hash) for d in page.deposits] == [(1_000_000, None)] and doc["tx_hash"]
        for bad, expected in (
            ({"chain": "doge:mainnet", "amount": "1"}, "no single supported token"),
            ({"chain": "btc:mainnet", "amount": "0.000000001"}, "more than 8 decimals"),
            ({"chain": "btc:mainnet", "amount": "0"}, "must be positive"),
            ({"chain": "btc:mainnet"}, "deposit amount"),
            ({"chain": "btc:mainnet", "amount": "1", "memo": "x"}, "unknown key 'memo'"),
        ):
            async with session.post(f"{admin}/deposit", json=bad) as resp:
                assert resp.status == 400
                assert expected in (await resp.json())["error"]
        async with session.get(f"{admin}/state") as resp:
            state = await resp.json()
    assert state["mm_account"] == venue.mm_account
    assert state["balances"]["market_maker"][BTC.token_id] == str(start + 1_000_000)
    assert "fee_collector" in state["balances"]
    assert state["bridge"]["deposits"] in ({"CREDITED": 1}, {"COMPLETED": 1})
    assert state["relay"]["connections_open"] == 2
    assert set(state["exchanges"]) == set(EXCHANGE_SPECS)
    assert len(state["solvers"]) == 2
    text = str(state)
    assert venue.api_key not in text and venue.mm_secret_key not in text


async def test_scheduled_faults_run_on_the_timeline_after_start_flow() -> None:
    scenario = Scenario.from_toml(
        """
        [flow]
        rate_per_s = 0.01
        users = 1
        [[faults]]
        at_s = 0.3
        kind = "price_shock"
        bps = 250
        [[faults]]
        at_s = 0.1
        kind = "exchange_stale"
        venue = "bitstamp"
        duration_s = 60
        """
    )
    v = SimVenue(scenario, seed=1)
    await v.start()
    try:
        await asyncio.sleep(0.4)
        assert list(v.faults_applied) == []  # the timeline starts with the flow
        await v.start_flow()
        async with asyncio.timeout(5):
            while len(v.faults_applied) < 2:
                await asyncio.sleep(0.02)
        first, second = v.faults_applied
        assert (first["kind"], first["source"], first["at_s"]) == ("exchange_stale", "schedule", 0.1)
        assert second["kind"] == "price_shock" and second["applied_ns"] >= first["applied_ns"]
        assert v.exchanges.state()["bitstamp"]["stale"] is True
        assert Decimal(second["mid_after"]) > Decimal(second["mid_before"])
    finally:
        await v.stop()
    assert v.stats()["started"] is False


async def test_per_venue_profile_and_disabled_venue() -> None:
    scenario = Scenario.from_toml(
        """
        [exchanges]
        venues = ["kraken", "bitstamp", "coinbase"]
        [exchanges.kraken]
        half_spread_bps = [30, 30]
        basis_bps = 0
        [exchanges.coinbase]
        noise_bps = 0
        basis_bps = 0
        """
    )
    v = SimVenue(scenario, seed=2)
    await v.start()
    try:
        assert v.exchanges.venue("coinbase").profile.noise_bps == 0
        assert v.exchanges.venue("kraken").profile.noise_bps == 0.6  # built-in
        quote = v.exchanges.quote("kraken")
        spread_bps = (quote.ask - quote.bid) / ((quote.ask + quote.bid) / 2) * 10_000
        assert 59 < spread_bps < 61, spread_bps
        async with aiohttp.ClientSession() as session:
            spec = EXCHANGE_SPECS["binance"]
            async with session.get(v.urls["binance_rest"] + spec.rest_path) as resp:
                assert resp.status == 503
        env = v.env()
        assert env["REFERENCE_SOURCES"] == "kraken,bitstamp,coinbase"
        assert env["BINANCE_REST_URL"] == v.urls["binance_rest"]  # never the live exchange
        with pytest.raises(InputError, match="venue binance is not enabled"):
            await v.apply_fault(Fault(kind="exchange_down", venue="binance"))
    finally:
        await v.stop()


async def test_fixed_ports_stop_is_idempotent_and_frees_them() -> None:
    ports = {name: free_port() for name in ("relay", "near_rpc", "admin", "kraken")}
    v = SimVenue(Scenario(), seed=3, ports=ports)
    await v.start()
    try:
        assert v.urls["relay_ws"] == f"ws://127.0.0.1:{ports['relay']}/ws"
        assert v.urls["near_rpc"] == f"http://127.0.0.1:{ports['near_rpc']}"
        assert v.urls["admin"] == f"http://127.0.0.1:{ports['admin']}/admin"
        assert v.urls["kraken_rest"] == f"http://127.0.0.1:{ports['kraken']}"
        with pytest.raises(InputError, match="already started"):
            await v.start()
    finally:
        await v.stop()
    await v.stop()
    async with aiohttp.ClientSession() as session:
        for port in ports.values():
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get(f"http://127.0.0.1:{port}/"):
                    pass


async def test_start_failure_releases_what_was_bound() -> None:
    taken = free_port()
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", taken)
    near_port = free_port()
    try:
        v = SimVenue(Scenario(), seed=3, ports={"near_rpc": near_port, "relay": taken})
        with pytest.raises(OSError):
            await v.start()
    finally:
        blocker.close()
        await blocker.wait_closed()
    # the NEAR RPC server that had started is stopped again
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", near_port)
        writer.close()
        await writer.wait_closed()
        pytest.fail("the NEAR RPC port is still served after a failed start")


def test_bad_ports_and_port_base() -> None:
    with pytest.raises(InputError, match="unknown port name 'nats'"):
        SimVenue(Scenario(), seed=1, ports={"nats": 4222})
    with pytest.raises(InputError, match="port relay must be an integer"):
        SimVenue(Scenario(), seed=1, ports={"relay": 70000})
    assert ports_from_base(0) == {}
    assert ports_from_base(20000) == {name: 20000 + i for i, name in enumerate(PORT_NAMES)}
    with pytest.raises(InputError, match="port base"):
        ports_from_base(65530)
