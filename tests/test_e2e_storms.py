"""End to end: bad input storms, while the market maker runs armed against the simulated venue.

- On the relay: a rogue solver spams its socket with malformed JSON, wrong types, huge numbers and
  unknown methods and quote ids, and a rogue frontend asks for quotes the market maker must refuse
  (zero and beyond-u128 amounts, absurd deadlines, unknown assets). The relay and near-intents-ingest
  survive: the socket stays up, nothing invalid reaches the bus, quoting goes on.
- On every control API: malformed JSON, non-objects, wrong types, huge numbers, NaN, unknown assets
  and fields. Every answer is a 4xx JSON error (never 5xx), nothing changes state, every service
  stays healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from e2e_kit import (
    BTC,
    EURE,
    InProcessRun,
    InvariantSampler,
    RelayResponses,
    check_invariants,
    drain,
    e2e_scenario,
    stored,
    wait_accepted,
    wait_for,
)
from intents_mm import messages as m
from intents_mm.config import SERVICES

pytestmark = pytest.mark.slow

ROGUE_KEY = "e2e-rogue-solver-key"
U128_MAX = 2**128 - 1


def storm_scenario() -> Any:
    base = e2e_scenario()
    return dataclasses.replace(base, relay=dataclasses.replace(base.relay, api_keys=(ROGUE_KEY,)))


async def healthy(run: InProcessRun, http: aiohttp.ClientSession) -> dict[str, int]:
    out = {}
    for name in SERVICES:
        async with http.get(f"{run.url(name)}/healthz") as resp:
            out[name] = resp.status
    return out


# ------------------------------------------------------------------------------------ relay socket


def socket_junk(live_quote_ids: list[str]) -> list[str | bytes]:
    """Frames a misbehaving solver might send: every one must be refused, none may break anything."""
    qid = live_quote_ids[0] if live_quote_ids else "no-such-quote"
    junk: list[str | bytes] = [
        "{",
        "not json at all",
        "[" * 5000,
        '"a string"',
        "42",
        "null",
        "[]",
        json.dumps({"jsonrpc": "1.0", "id": 1, "method": "subscribe", "params": ["quote"]}),
        json.dumps({"jsonrpc": "2.0", "id": True, "method": "subscribe", "params": ["quote"]}),
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": 7}),
        json.dumps({"jsonrpc": "2.0", "id": 2, "method": "no_such_method", "params": []}),
        json.dumps({"jsonrpc": "2.0", "id": 3, "method": "subscribe", "params": "quote"}),
        json.dumps({"jsonrpc": "2.0", "id": 4, "method": "subscribe", "params": ["quote", {"x": 1}]}),
        json.dumps(
            {"jsonrpc": "2.0", "id": 5, "method": "subscribe", "params": ["quote_status", None, "yes"]}
        ),
        json.dumps({"jsonrpc": "2.0", "id": 6, "method": "unsubscribe", "params": [12]}),
        json.dumps({"jsonrpc": "2.0", "id": 7, "method": "acknowledge", "params": ["x", 10**30]}),
        json.dumps({"jsonrpc": "2.0", "id": 8, "method": "quote_response", "params": []}),
        json.dumps({"jsonrpc": "2.0", "id": 9, "method": "quote_response", "params": [{"quote_id": 5}]}),
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 10,
                "method": "quote_response",
                "params": [{"quote_id": qid, "quote_output": {"amount_out": str(10**60)}, "signed_data": {}}],
            }
        ),
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 11,
                "method": "quote_response",
                "params": [{"quote_id": qid, "quote_output": {"amount_out": -1}, "signed_data": "x"}],
            }
        ),
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 12,
                "method": "quote_response",
                "params": [{"quote_id": "unknown-" + "x" * 5000, "quote_output": {"amount_in": "1e9"}}],
            }
        ),
        '{"jsonrpc":"2.0","id":13,"method":"quote_response","params":[{"quote_id":"'
        + qid
        + '","x":1e99999}]}',
        b"\x00\x01binary frame",
        json.dumps({"jsonrpc": "2.0", "id": "z" * 100_000, "method": "subscribe", "params": ["quote"]}),
    ]
    return junk


def frontend_junk() -> list[dict[str, Any]]:
    """Quote requests the relay forwards on the active pair but the market maker must refuse (or
    decline), plus some for unknown assets the pair filter keeps away from it."""
    return [
        {"defuse_asset_identifier_in": BTC, "defuse_asset_identifier_out": EURE, "exact_amount_in": "0"},
        {
            "defuse_asset_identifier_in": EURE,
            "defuse_asset_identifier_out": BTC,
            "exact_amount_in": str(U128_MAX),
            "min_deadline_ms": 60000,
        },
        {
            "defuse_asset_identifier_in": BTC,
            "defuse_asset_identifier_out": EURE,
            "exact_amount_out": str(U128_MAX),
            "min_deadline_ms": 60000,
        },
        {
            "defuse_asset_identifier_in": BTC,
            "defuse_asset_identifier_out": EURE,
            "exact_amount_in": "1000",
            "min_deadline_ms": 10**12,
        },
        {
            "defuse_asset_identifier_in": "nep141:unknown-token.near",
            "defuse_asset_identifier_out": EURE,
            "exact_amount_in": "1000",
        },
        {
            "defuse_asset_identifier_in": BTC,
            "defuse_asset_identifier_out": "nep141:x",
            "exact_amount_out": "5",
        },
        # refused by the relay itself
        {"defuse_asset_identifier_in": BTC, "defuse_asset_identifier_out": EURE, "exact_amount_in": "-5"},
        {"defuse_asset_identifier_in": BTC, "defuse_asset_identifier_out": EURE, "exact_amount_in": "1e30"},
        {"defuse_asset_identifier_in": BTC, "defuse_asset_identifier_out": BTC, "exact_amount_in": "1"},
        {"defuse_asset_identifier_in": 5, "defuse_asset_identifier_out": EURE, "exact_amount_in": "1"},
    ]


async def test_relay_socket_storm_relay_and_ingest_survive(tmp_path: Path) -> None:
    run = InProcessRun(tmp=tmp_path, scenario=storm_scenario())
    try:
        async with asyncio.timeout(90):
            await run.start()
            assert run.venue is not None
            relay = run.venue.relay
            responses = RelayResponses(relay)
            await run.arm()
            sampler = InvariantSampler(run)
            sampler.start()
            await run.venue.start_flow()
            await wait_accepted(run, 3, what="quotes before the storm")
            ingest_before = (await run.state("near-intents-ingest"))["quotes"]

            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(relay.ws_url, headers={"Authorization": f"Bearer {ROGUE_KEY}"})
                await ws.send_str(
                    json.dumps({"jsonrpc": "2.0", "id": 0, "method": "subscribe", "params": ["quote"]})
                )
                replies: list[Any] = []
                live: list[str] = []

                async def reader() -> None:
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            doc = json.loads(msg.data)
                            replies.append(doc)
                            params = doc.get("params") if isinstance(doc, dict) else None
                            if isinstance(params, dict) and isinstance(params.get("data"), dict):
                                quote_id = params["data"].get("quote_id")
                                if isinstance(quote_id, str):
                                    live.append(quote_id)

                reading = asyncio.create_task(reader())
                await wait_for(lambda: bool(live), timeout_s=10, what="a quote event at the rogue")
                for _ in range(20):  # a storm: every junk frame, many times, against live quote ids
                    for frame in socket_junk(live[-3:]):
                        if isinstance(frame, bytes):
                            await ws.send_bytes(frame)
                        else:
                            await ws.send_str(frame)
                    await asyncio.sleep(0.05)

                async def ask(request: dict[str, Any]) -> None:
                    body = {"jsonrpc": "2.0", "id": "storm", "method": "quote", "params": [request]}
                    headers = {"Authorization": f"Bearer {ROGUE_KEY}"}
                    async with http.post(relay.rpc_url, json=body, headers=headers) as resp:
                        assert resp.status == 200
                        doc = await resp.json()
                        assert "result" in doc or "error" in doc

                await asyncio.gather(*(ask(r) for r in frontend_junk()))
                await wait_for(lambda: len(replies) >= 20 * 20, timeout_s=15, what="the relay's replies")
                errors = [r for r in replies if isinstance(r, dict) and "error" in r]
                assert len(errors) >= 20 * 20, "every junk frame gets a JSON-RPC error reply"
                assert not ws.closed, "the rogue socket is still up: junk is answered, not fatal"
                await ws.close()
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading

            # the relay and ingest survived: still connected, still quoting, junk refused
            stats = relay.stats()
            assert stats["counts"]["malformed_frames"] >= 20 * 5
            ingest = await run.state("near-intents-ingest")
            assert ingest["connection"] == "connected"
            assert ingest["quotes"]["invalid"] > ingest_before["invalid"], ingest["quotes"]
            await wait_accepted(run, 3, what="quotes after the storm")
            async with aiohttp.ClientSession() as http:
                assert set((await healthy(run, http)).values()) == {200}

            await run.stop_flow()
            await asyncio.sleep(3)
            await sampler.stop()
            await run.stop_producers()
            drained = await drain(run)
            report = await check_invariants(run, drained=drained, relay=responses, sampler=sampler)
            assert report.commands >= 6
            # nothing invalid reached the bus: every stored request is on the pair, sane and sized
            assert run.store is not None
            for env in await stored(run.store, "swap_demand_events"):
                req = env.payload
                assert isinstance(req, m.SwapRequest)
                assert {req.asset_in, req.asset_out} == {BTC, EURE}
                fixed = req.exact_amount_in if req.exact_amount_in is not None else req.exact_amount_out
                assert fixed is not None and 0 < fixed <= U128_MAX
                assert 0 < req.min_deadline_ms <= 600_000
            # the huge but valid requests were seen and declined, never quoted
            decisions = [e.payload for e in await stored(run.store, "trade_decisions")]
            huge = [
                d
                for d in decisions
                if isinstance(d, m.TradeDecision) and U128_MAX in (d.exact_amount_in, d.exact_amount_out)
            ]
            assert len(huge) == 2 and all(d.outcome == "decline" for d in huge), huge
    finally:
        await run.shutdown()


# ------------------------------------------------------------------------------------ control APIs

MALFORMED: list[bytes] = [
    b"{",
    b'{"a":',
    b"not json",
    b"\xff\xfe\x00\x01",
    b"[" * 30000,
    b'{"a": ' + b"9" * 5000 + b"}",
    b"[]",
    b'"text"',
    b"42",
    b"null",
    b"true",
]

WRONG: dict[tuple[str, str], list[Any]] = {
    ("strategy-engine", "PUT /limits"): [
        {"max_notional_eure": "abc"},
        {"max_notional_eure": True},
        {"max_notional_eure": [1]},
        {"max_notional_eure": {"x": 1}},
        {"max_notional_eure": None},
        {"max_notional_eure": -1},
        {"max_notional_eure": 10**40},
        '{"max_notional_eure": 1e400}',
        '{"max_notional_eure": NaN}',
        '{"max_notional_eure": Infinity}',
        '{"max_notional_eure": -Infinity}',
        {"no_such_limit": 1},
        {"min_btc": 1, "max_btc": 0},
        {"max_min_deadline_ms": 1.5},
        {},
    ],
    ("trade-executor", "POST /kill"): [{"reason": 5}, {"reason": ["x"]}, {"reason": {"a": 1}}],
    ("liquidity-manager", "POST /withdrawal-estimate"): [
        {"asset_id": "nep141:unknown-token.near", "amount": "1000", "destination_address": "0xabc"},
        {"asset_id": 5, "amount": "1000", "destination_address": "0xabc"},
        {"asset_id": EURE, "amount": "-1", "destination_address": "0x" + "1" * 40},
        {"asset_id": EURE, "amount": str(2**200), "destination_address": "0x" + "1" * 40},
        {"asset_id": EURE, "amount": 1e30, "destination_address": "0x" + "1" * 40},
        '{"asset_id": "' + EURE + '", "amount": NaN, "destination_address": "0x1"}',
        {"asset_id": EURE, "amount": "5", "destination_address": 7},
        {"asset_id": EURE, "amount": "5", "destination_address": "not-an-address"},
        {"asset_id": BTC, "amount": "5", "destination_address": "0x" + "1" * 40},
        {"asset_id": EURE, "amount": "5", "destination_address": "0x" + "1" * 40, "extra": 1},
        {},
    ],
    ("liquidity-manager", "POST /withdraw"): [
        {"asset_id": "nep141:unknown-token.near", "amount": "1000", "destination_address": "0xabc"},
        {"asset_id": EURE, "amount": str(10**50), "destination_address": "0x" + "1" * 40},
        {"asset_id": EURE, "amount": "5", "destination_address": "0x" + "1" * 40, "request_id": "bad id!"},
        {"asset_id": [], "amount": {}, "destination_address": None},
        {},
    ],
    ("liquidity-manager", "POST /track-withdrawal"): [
        {"withdrawal_hash": 5, "asset_id": BTC, "chain": "btc:mainnet", "amount": "1000"},
        {
            "withdrawal_hash": "abc",
            "asset_id": "nep141:unknown-token.near",
            "chain": "btc:mainnet",
            "amount": "1",
        },
        {"withdrawal_hash": "abc", "asset_id": BTC, "chain": "doge:mainnet", "amount": "1"},
        {"withdrawal_hash": "abc", "asset_id": BTC, "chain": "btc:mainnet", "amount": str(2**130)},
        {},
    ],
    ("liquidity-manager", "POST /freeze-withdrawals"): [
        {"frozen": "false"},
        {"frozen": 0},
        {"frozen": None},
        {"frozen": True, "extra": 1},
        {},
    ],
}

#: every mutating or body-taking route, by service (GET routes take no body)
ROUTES: dict[str, list[str]] = {
    "near-intents-ingest": [],
    "market-reference-ingest": ["POST /refresh"],
    "inventory-sync": ["POST /refresh"],
    "liquidity-manager": [
        "POST /refresh",
        "POST /withdrawal-estimate",
        "POST /freeze-withdrawals",
        "POST /withdraw",
        "POST /track-withdrawal",
    ],
    "history-writer": [],
    "strategy-engine": ["POST /arm", "POST /disarm", "PUT /limits"],
    "trade-executor": ["POST /arm", "POST /disarm", "POST /kill"],
}


def _bodies(service: str, route: str) -> list[bytes]:
    out = list(MALFORMED)
    for item in WRONG.get((service, route), []):
        out.append(item.encode() if isinstance(item, str) else json.dumps(item).encode())
    return out


async def test_control_api_storm_answers_4xx_json_and_changes_nothing(tmp_path: Path) -> None:
    run = InProcessRun(tmp=tmp_path, scenario=e2e_scenario())
    try:
        async with asyncio.timeout(90):
            await run.start()
            await run.arm()
            assert run.venue is not None
            await run.venue.start_flow()
            await wait_accepted(run, 2, what="quotes before the storm")
            async with aiohttp.ClientSession() as http:
                limits_before = (await run.state("strategy-engine"))["limits"]
                frozen_before = (await run.state("liquidity-manager"))["withdrawals_frozen"]
                bad: list[str] = []
                sent = 0
                for service, routes in ROUTES.items():
                    base = run.url(service)
                    for route in [*routes, "GET /no-such-path", "DELETE /state"]:
                        method, path = route.split(" ", 1)
                        for body in _bodies(service, route) if method != "GET" else [b""]:
                            headers = {"content-type": "application/json", "X-Operator": "e2e-storm"}
                            async with http.request(
                                method, f"{base}{path}", data=body, headers=headers
                            ) as resp:
                                sent += 1
                                text = await resp.text()
                                ok = 400 <= resp.status < 500
                                try:
                                    doc = json.loads(text)
                                    ok = ok and isinstance(doc, dict) and isinstance(doc.get("error"), str)
                                except ValueError:
                                    ok = False
                                if not ok:
                                    bad.append(
                                        f"{service} {route} {body[:60]!r} -> {resp.status} {text[:160]}"
                                    )
                assert not bad, f"{len(bad)} of {sent} bad answers:\n" + "\n".join(bad[:40])
                assert sent > 150

                # nothing changed, everything is healthy and still quoting
                assert (await run.state("strategy-engine"))["armed"] is True
                assert (await run.state("trade-executor"))["armed"] is True
                assert (await run.state("strategy-engine"))["limits"] == limits_before
                assert (await run.state("liquidity-manager"))["withdrawals_frozen"] == frozen_before
                assert set((await healthy(run, http)).values()) == {200}
                await wait_accepted(run, 2, what="quotes after the storm")
    finally:
        await run.shutdown()
