"""Acceptance tests of the simulated Solver Relay, driven by an independent client.

The solver side is plain aiohttp WebSocket frames plus a few lines of NEP-413 signing with the
``intents_mm.near`` primitives; the user side is plain HTTP JSON-RPC. No project adapter is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from intents_mm.clock import SystemClock
from intents_mm.near.encoding import b64encode
from intents_mm.near.keys import SigningKey
from intents_mm.near.nonce import encode_versioned_nonce
from intents_mm.near.payload import parse_multipayload, sign_nep413, sign_raw_ed25519
from intents_mm.near.timefmt import format_deadline
from intents_mm.sim.near_rpc import SimNear, SimNearRpcServer
from intents_mm.sim.participants import CompetingSolver, SolverConfig
from intents_mm.sim.relay import SimRelay
from intents_mm.sim.verifier import Verifier

BTC = "nep141:btc.omft.near"
EURE = "nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"
KEYS = {"key-solver-a": "solver-a", "key-solver-b": "solver-b", "key-frontend": "frontend"}
NS_PER_MS = 1_000_000
EUR = 10**18


# ---------------------------------------------------------------------------- independent client


class WsClient:
    """A bare JSON-RPC-over-WebSocket client: replies by id, everything else into ``events``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._replies: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._orphans: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._next_id = 100
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            fut = self._replies.pop(frame.get("id"), None) if "id" in frame else None
            if fut is not None:
                fut.set_result(frame)
            elif "id" in frame:
                await self._orphans.put(frame)
            else:
                await self.events.put(frame)

    async def send_raw(self, text: str) -> dict[str, Any]:
        """Send any text; return the next reply that no call is waiting for (errors with id null)."""
        await self.ws.send_str(text)
        return await asyncio.wait_for(self._orphans.get(), 2)

    async def call(self, method: str, params: Any) -> dict[str, Any]:
        self._next_id += 1
        req_id = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[req_id] = fut
        await self.ws.send_str(
            json.dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params})
        )
        return await asyncio.wait_for(fut, 2)

    async def result(self, method: str, params: Any) -> Any:
        reply = await self.call(method, params)
        assert "error" not in reply, reply
        return reply["result"]

    async def next_event(self, timeout: float = 2.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def no_event(self, wait_s: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.events.get(), wait_s)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def sign_diff(
    key: SigningKey,
    signer_id: str,
    diff: dict[str, int],
    *,
    deadline_ns: int,
    salt: bytes,
    nonce: bytes | None = None,
) -> dict[str, Any]:
    """A NEP-413 token_diff written by hand (no project adapter)."""
    deadline_ns = deadline_ns // NS_PER_MS * NS_PER_MS
    message = json.dumps(
        {
            "signer_id": signer_id,
            "deadline": format_deadline(deadline_ns),
            "intents": [{"intent": "token_diff", "diff": {k: str(v) for k, v in diff.items()}}],
        },
        separators=(",", ":"),
    )
    if nonce is None:
        nonce = encode_versioned_nonce(salt, deadline_ns, os.urandom(15))
    return sign_nep413(key, message, nonce, "intents.near").to_json_obj()


def sign_cancel(key: SigningKey, signer_id: str, nonce: bytes, *, deadline_ns: int) -> dict[str, Any]:
    """The cancel of a signed payload, by hand: same key and nonce, ``intents: []``."""
    message = json.dumps(
        {
            "signer_id": signer_id,
            "deadline": format_deadline(deadline_ns // NS_PER_MS * NS_PER_MS),
            "intents": [],
        },
        separators=(",", ":"),
    )
    return sign_nep413(key, message, nonce, "intents.near").to_json_obj()


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def closure(mm_diff: dict[str, int], fee_pips: int) -> dict[str, int]:
    """The user's side of a two-party swap (section 3.9), computed independently."""
    out = {}
    for token, delta in mm_diff.items():
        if delta > 0:  # the solver receives delta: the user gives ceil(delta * 1e6 / (1e6 - fee))
            out[token] = -ceil_div(delta * 1_000_000, 1_000_000 - fee_pips)
        else:  # the solver gives -delta: the user receives it minus the fee
            out[token] = -delta - ceil_div(-delta * fee_pips, 1_000_000)
    return out


# ---------------------------------------------------------------------------- venue fixture


@dataclass
class Venue:
    clock: SystemClock
    verifier: Verifier
    chain: SimNear
    relay: SimRelay
    base: str
    session: aiohttp.ClientSession
    clients: list[WsClient]

    @property
    def ws_url(self) -> str:
        return self.base.replace("http://", "ws://") + "/ws"

    async def connect(self, key: str | None = "key-solver-a", instance_id: str | None = None) -> WsClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        url = self.ws_url + (f"?instance_id={instance_id}" if instance_id else "")
        client = WsClient(await self.session.ws_connect(url, headers=headers))
        self.clients.append(client)
        return client

    async def rpc(self, method: str, params: Any, *, headers: dict[str, str] | None = None) -> dict[str, Any]:
        hdrs = {"Authorization": "Bearer key-frontend"} if headers is None else headers
        body = {"jsonrpc": "2.0", "id": "dontcare", "method": method, "params": params}
        async with self.session.post(f"{self.base}/rpc?method={method}", json=body, headers=hdrs) as resp:
            doc: dict[str, Any] = await resp.json()
            doc["_http_status"] = resp.status
            return doc

    def solver_key(self, label: str, balances: dict[str, int]) -> tuple[SigningKey, str]:
        key = SigningKey.from_seed(label.encode().ljust(32, b"\0"))
        account = key.public_key.implicit_account_id()
        for token, amount in balances.items():
            self.verifier.credit(account, token, amount)
        return key, account

    def deadline(self, ms: int = 70_000) -> int:
        return self.clock.now_ns() + ms * NS_PER_MS


@pytest.fixture
async def venue() -> AsyncIterator[Venue]:
    clock = SystemClock()
    verifier = Verifier(clock)
    chain = SimNear(clock, verifier)
    relay = SimRelay(clock, chain, verifier, api_keys=KEYS, window_ms=300)
    base = await relay.start()
    session = aiohttp.ClientSession()
    v = Venue(clock, verifier, chain, relay, base, session, [])
    try:
        yield v
    finally:
        for c in v.clients:
            await c.close()
        await session.close()
        await relay.stop()


def exact_in_request(amount: int = 100_000, **extra: Any) -> dict[str, Any]:
    return {
        "defuse_asset_identifier_in": BTC,
        "defuse_asset_identifier_out": EURE,
        "exact_amount_in": str(amount),
        "min_deadline_ms": 60000,
        **extra,
    }


# ---------------------------------------------------------------------------- auth and socket protocol


async def test_ws_upgrade_without_valid_key_is_403(venue: Venue) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic key-solver-a"}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await venue.session.ws_connect(venue.ws_url, headers=headers)
        assert info.value.status == 403
    ok = await venue.connect("key-solver-a")
    assert isinstance(await ok.result("subscribe", ["quote"]), str)
    assert venue.relay.stats()["counts"]["ws_rejected_auth"] == 3


async def test_anonymous_allowed_when_configured() -> None:
    clock = SystemClock()
    verifier = Verifier(clock)
    relay = SimRelay(clock, SimNear(clock, verifier), verifier, api_keys=set(), allow_anonymous=True)
    base = await relay.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(base.replace("http", "ws") + "/ws") as ws:
                await ws.send_str('{"jsonrpc":"2.0","id":1,"method":"subscribe","params":["quote"]}')
                reply = json.loads((await ws.receive(timeout=2)).data)
                assert isinstance(reply["result"], str)
            async with session.post(
                base + "/rpc",
                json={"jsonrpc": "2.0", "id": 1, "method": "get_status", "params": [{"intent_hash": "x"}]},
            ) as resp:
                assert (await resp.json())["result"]["status"] == "NOT_FOUND_OR_NOT_VALID"
    finally:
        await relay.stop()


async def test_subscribe_unsubscribe_acknowledge_and_malformed_frames(venue: Venue) -> None:
    c = await venue.connect()
    sub = await c.result("subscribe", ["quote"])
    assert len(sub) == 36 and sub.count("-") == 4
    filtered = await c.result("subscribe", ["quote", {"tokens_in": [BTC], "tokens_out": [EURE]}])
    status = await c.result("subscribe", ["quote_status", None])
    assert len({sub, filtered, status}) == 3
    assert await c.result("unsubscribe", [filtered]) == "OK"
    err = await c.call("unsubscribe", [filtered])
    assert err["error"]["code"] == -32602 and "unknown subscription" in err["error"]["message"]
    # guaranteed delivery needs an instance_id, and acknowledge needs a guaranteed subscription
    err = await c.call("subscribe", ["quote_status", None, True])
    assert "instance_id" in err["error"]["message"]
    err = await c.call("acknowledge", [status, 1])
    assert err["error"]["code"] == -32602
    for params in ([], ["quotes"], ["quote", 5], ["quote", None, "yes"], ["a", "b", "c", "d"]):
        assert (await c.call("subscribe", params))["error"]["code"] == -32602
    assert (await c.call("frobnicate", []))["error"]["code"] == -32601
    parse = await c.send_raw("{not json")
    assert parse["error"]["code"] == -32700 and parse["id"] is None
    assert (await c.send_raw("[1,2]"))["error"]["code"] == -32600
    assert (await c.send_raw('{"jsonrpc":"2.0","id":5}'))["error"]["code"] == -32600
    # the socket is still up
    assert isinstance(await c.result("subscribe", ["quote"]), str)

    g = await venue.connect("key-solver-b", instance_id="prod-1")
    gsub = await g.result("subscribe", ["quote_status", None, True])
    assert await g.result("acknowledge", [gsub, 41]) == "OK"  # unknown seq: idempotent
    assert "quote_status" in (await g.call("subscribe", ["quote", None, True]))["error"]["message"]


async def test_token_filter_is_honoured(venue: Venue) -> None:
    both = await venue.connect("key-solver-a")
    only_eure_in = await venue.connect("key-solver-b")
    await both.result("subscribe", ["quote", {"tokens_in": [BTC, EURE], "tokens_out": [BTC, EURE]}])
    await only_eure_in.result("subscribe", ["quote", {"tokens_in": [EURE]}])
    task = asyncio.create_task(venue.relay.request_quote(exact_in_request()))
    event = await both.next_event()
    assert event["method"] == "event"
    data = event["params"]["data"]
    assert data["defuse_asset_identifier_in"] == BTC and data["exact_amount_in"] == "100000"
    assert data["min_deadline_ms"] == 60000 and "exact_amount_out" not in data
    assert event["params"]["metadata"]["partner_id"] == "1click"
    assert event["params"]["metadata"]["traceparent"].startswith("00-")
    await only_eure_in.no_event(0.2)
    assert await task is None

    reverse = {
        "defuse_asset_identifier_in": EURE,
        "defuse_asset_identifier_out": BTC,
        "exact_amount_out": "5000",
    }
    task = asyncio.create_task(venue.relay.request_quote(reverse))
    assert (await only_eure_in.next_event())["params"]["data"]["exact_amount_out"] == "5000"
    assert (await both.next_event())["params"]["data"]["defuse_asset_identifier_in"] == EURE
    assert await task is None


# ---------------------------------------------------------------------------- quote_response validation


async def _answer(
    venue: Venue, client: WsClient, *, build: Any, request: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    task = asyncio.create_task(venue.relay.request_quote(request or exact_in_request()))
    data = (await client.next_event())["params"]["data"]
    reply = await client.call("quote_response", [build(data)])
    return reply, await task


async def test_quote_response_refusals_name_the_reason(venue: Venue) -> None:
    c = await venue.connect()
    await c.result("subscribe", ["quote"])
    key, account = venue.solver_key("solver-a", {EURE: 100 * EUR})
    salt = venue.verifier.current_salt()
    out = 60 * EUR

    def response(
        data: dict[str, Any], signed: dict[str, Any], output: dict[str, str] | None = None
    ) -> dict[str, Any]:
        return {
            "quote_id": data["quote_id"],
            "quote_output": output or {"amount_out": str(out)},
            "signed_data": signed,
        }

    def good(diff: dict[str, int] | None = None, **kw: Any) -> dict[str, Any]:
        kw.setdefault("deadline_ns", venue.deadline())
        kw.setdefault("salt", salt)
        return sign_diff(key, account, diff or {BTC: 100_000, EURE: -out}, **kw)

    def other_recipient() -> dict[str, Any]:
        signed = good()
        payload = parse_multipayload(signed)
        return sign_nep413(key, payload.message, payload.nonce, "evil.near").to_json_obj()

    def raw_ed25519_quote() -> dict[str, Any]:
        deadline_ns = venue.deadline() // NS_PER_MS * NS_PER_MS
        payload = json.dumps(
            {
                "signer_id": account,
                "verifying_contract": "intents.near",
                "deadline": format_deadline(deadline_ns),
                "nonce": b64encode(encode_versioned_nonce(salt, deadline_ns, os.urandom(15))),
                "intents": [{"intent": "token_diff", "diff": {BTC: "100000", EURE: str(-out)}}],
            },
            separators=(",", ":"),
        )
        return sign_raw_ed25519(key, payload).to_json_obj()

    # unregistered key: a named account that never added this key
    named = sign_diff(key, "mm.near", {BTC: 100_000, EURE: -out}, deadline_ns=venue.deadline(), salt=salt)
    venue.verifier.credit("mm.near", EURE, 100 * EUR)
    used_nonce = encode_versioned_nonce(salt, venue.deadline() // NS_PER_MS * NS_PER_MS, os.urandom(15))
    poor_key, poor = venue.solver_key("solver-poor", {EURE: 59 * EUR})
    used_nonce_deadline = int.from_bytes(used_nonce[9:17], "little")
    venue.verifier.execute_intents([sign_cancel(key, account, used_nonce, deadline_ns=used_nonce_deadline)])
    cases: list[tuple[Any, str]] = [
        (lambda d: response(d, named), "doesn't exist for account 'mm.near'"),
        (
            lambda d: response(d, good(deadline_ns=used_nonce_deadline, nonce=used_nonce)),
            "nonce was already used",
        ),
        (lambda d: response(d, good(deadline_ns=venue.deadline(30_000))), "deadline too short"),
        (lambda d: response(d, good(deadline_ns=venue.clock.now_ns() - 10**9)), "expired"),
        (lambda d: response(d, good({BTC: -100_000, EURE: out})), "wrong token_diff signs"),
        (lambda d: response(d, good({BTC: 99_999, EURE: -out})), "token_diff amount mismatch"),
        (
            lambda d: response(d, good(), {"amount_in": "99999", "amount_out": str(out)}),
            "fixed amount mismatch",
        ),
        (lambda d: response(d, good(), {"amount_in": "100000"}), "amount_out is required"),
        (lambda d: response(d, good({BTC: 100_000, EURE: -out + 1})), "token_diff amount mismatch"),
        (lambda d: response(d, good({BTC: 100_000, EURE: -out, "nep141:x.near": 5})), "exactly"),
        (
            lambda d: response(
                d,
                sign_diff(
                    poor_key, poor, {BTC: 100_000, EURE: -out}, deadline_ns=venue.deadline(), salt=salt
                ),
            ),
            "insufficient balance",
        ),
        (lambda d: response(d, {**good(), "signature": named["signature"]}), "invalid signature"),
        (lambda d: response(d, {"standard": "erc191", "payload": "x"}), "invalid signed_data"),
        (lambda d: response(d, other_recipient()), "wrong verifying_contract"),
        (lambda d: response(d, good(salt=b"\xde\xad\xbe\xef")), "invalid salt"),
        (lambda d: {**response(d, good()), "quote_id": "nope"}, "unknown quote_id"),
    ]
    for build, expected in cases:
        reply, result = await _answer(venue, c, build=build)
        assert "error" in reply, (expected, reply)
        assert reply["error"]["code"] == -32000
        assert expected in reply["error"]["message"], (expected, reply["error"]["message"])
        assert result is None
    # a correct payload passes, in either standard
    reply, result = await _answer(venue, c, build=lambda d: response(d, good()))
    assert reply["result"] == "OK" and result is not None and len(result) == 1
    raw = raw_ed25519_quote()
    reply, result = await _answer(venue, c, build=lambda d: response(d, raw))
    assert reply["result"] == "OK" and result is not None
    assert result[0]["quote_hash"] == parse_multipayload(raw).hash_b58()
    assert venue.relay.stats()["counts"]["quote_responses_rejected"] == len(cases)


async def test_closed_window_and_legacy_nonce_switch(venue: Venue) -> None:
    c = await venue.connect()
    await c.result("subscribe", ["quote"])
    key, account = venue.solver_key("solver-a", {EURE: 100 * EUR})
    salt = venue.verifier.current_salt()
    task = asyncio.create_task(venue.relay.request_quote(exact_in_request(wait_ms=100)))
    data = (await c.next_event())["params"]["data"]
    assert await task is None  # window passed without an answer
    signed = sign_diff(key, account, {BTC: 100_000, EURE: -EUR}, deadline_ns=venue.deadline(), salt=salt)
    reply = await c.call(
        "quote_response",
        [{"quote_id": data["quote_id"], "quote_output": {"amount_out": str(EUR)}, "signed_data": signed}],
    )
    assert "quote window closed" in reply["error"]["message"]

    legacy = b"\x01" * 32
    for accept, expect_ok in ((True, True), (False, False)):
        venue.relay.accept_legacy_nonces = accept
        signed = sign_diff(
            key,
            account,
            {BTC: 100_000, EURE: -EUR},
            deadline_ns=venue.deadline(),
            salt=salt,
            nonce=legacy if accept else b"\x02" * 32,
        )
        reply, _ = await _answer(
            venue,
            c,
            build=lambda d, s=signed: {
                "quote_id": d["quote_id"],
                "quote_output": {"amount_out": str(EUR)},
                "signed_data": s,
            },
        )
        assert ("result" in reply) is expect_ok, reply
        if not expect_ok:
            assert "legacy nonce" in reply["error"]["message"]


# ---------------------------------------------------------------------------- full round trip


async def _balances_over_rpc(rpc_url: str, account: str, tokens: list[str]) -> list[int]:
    args = json.dumps({"account_id": account, "token_ids": tokens}).encode()
    body = {
        "jsonrpc": "2.0",
        "id": "dontcare",
        "method": "query",
        "params": {
            "request_type": "call_function",
            "finality": "final",
            "account_id": "intents.near",
            "method_name": "mt_batch_balance_of",
            "args_base64": b64encode(args),
        },
    }
    async with aiohttp.ClientSession() as session, session.post(rpc_url, json=body) as resp:
        doc = await resp.json()
    raw = bytes(doc["result"]["result"])
    return [int(x) for x in json.loads(raw)]


async def test_full_round_trip_over_sockets(venue: Venue) -> None:
    fee = venue.verifier.fee_pips
    solver = await venue.connect("key-solver-a")
    await solver.result("subscribe", ["quote"])
    status_sub = await solver.result("subscribe", ["quote_status"])
    bystander = await venue.connect("key-solver-b")
    await bystander.result("subscribe", ["quote_status"])
    s_key, s_acc = venue.solver_key("solver-a", {EURE: 1000 * EUR})
    u_key, u_acc = venue.solver_key("user-1", {BTC: 100_000_000})
    salt = venue.verifier.current_salt()
    amount_in, amount_out = 100_000, 60 * EUR

    quote_call = asyncio.create_task(
        venue.rpc("quote", [exact_in_request(amount_in, wait_ms=1000, min_wait_ms=50)])
    )
    data = (await solver.next_event())["params"]["data"]
    signed = sign_diff(
        s_key, s_acc, {BTC: amount_in, EURE: -amount_out}, deadline_ns=venue.deadline(), salt=salt
    )
    quote_hash = parse_multipayload(signed).hash_b58()
    reply = await solver.call(
        "quote_response",
        [
            {
                "quote_id": data["quote_id"],
                "quote_output": {"amount_out": str(amount_out)},
                "signed_data": signed,
            }
        ],
    )
    assert reply["result"] == "OK"
    answer = await quote_call
    assert answer["_http_status"] == 200 and answer["id"] == "dontcare"
    [quote] = answer["result"]
    assert quote == {
        "quote_hash": quote_hash,
        "defuse_asset_identifier_in": BTC,
        "defuse_asset_identifier_out": EURE,
        "amount_in": str(amount_in),
        "amount_out": str(amount_out),
        "expiration_time": format_deadline(parse_multipayload(signed).deadline_ns),
    }

    user_diff = closure({BTC: amount_in, EURE: -amount_out}, fee)
    user_signed = sign_diff(u_key, u_acc, user_diff, deadline_ns=venue.deadline(), salt=salt)
    intent_hash = parse_multipayload(user_signed).hash_b58()
    published = await venue.rpc(
        "publish_intent", [{"quote_hashes": [quote_hash], "signed_data": user_signed}]
    )
    assert published["result"] == {"status": "OK", "intent_hash": intent_hash}

    user_gives = -user_diff[BTC]
    user_gets = user_diff[EURE]
    assert venue.verifier.balance_of(s_acc, BTC) == amount_in
    assert venue.verifier.balance_of(s_acc, EURE) == 1000 * EUR - amount_out
    assert venue.verifier.balance_of(u_acc, BTC) == 100_000_000 - user_gives
    assert venue.verifier.balance_of(u_acc, EURE) == user_gets
    fees_btc = ceil_div(user_gives * fee, 1_000_000)
    fees_eure = ceil_div(amount_out * fee, 1_000_000)
    assert user_gets == amount_out - fees_eure and user_gives - fees_btc == amount_in
    assert venue.verifier.balance_of(venue.verifier.fee_collector, BTC) == fees_btc
    assert venue.verifier.balance_of(venue.verifier.fee_collector, EURE) == fees_eure

    event = await solver.next_event()
    assert event["method"] == "event" and event["params"]["subscription"] == status_sub
    st = event["params"]["data"]
    assert st["quote_hash"] == quote_hash and st["intent_hash"] == intent_hash
    assert venue.chain.tx_record(st["tx_hash"]) is not None
    await bystander.no_event(0.2)

    status = await venue.rpc("get_status", [{"intent_hash": intent_hash}])
    assert status["result"] == {
        "intent_hash": intent_hash,
        "status": "SETTLED",
        "data": {"hash": st["tx_hash"]},
    }

    # the same quote cannot be used twice
    again = await venue.rpc("publish_intent", [{"quote_hashes": [quote_hash], "signed_data": user_signed}])
    assert again["result"]["status"] == "FAILED"

    server = SimNearRpcServer(venue.chain)
    rpc_url = await server.start()
    try:
        assert await _balances_over_rpc(rpc_url, s_acc, [BTC, EURE]) == [amount_in, 1000 * EUR - amount_out]
        assert await _balances_over_rpc(rpc_url, u_acc, [BTC, EURE]) == [100_000_000 - user_gives, user_gets]
    finally:
        await server.stop()


async def test_publish_failure_reports_verifier_reason(venue: Venue) -> None:
    solver = await venue.connect()
    await solver.result("subscribe", ["quote"])
    s_key, s_acc = venue.solver_key("solver-a", {EURE: 100 * EUR})
    u_key, u_acc = venue.solver_key("user-broke", {BTC: 10})
    salt = venue.verifier.current_salt()
    signed = sign_diff(s_key, s_acc, {BTC: 100_000, EURE: -EUR}, deadline_ns=venue.deadline(), salt=salt)
    reply, result = await _answer(
        venue,
        solver,
        build=lambda d: {
            "quote_id": d["quote_id"],
            "quote_output": {"amount_out": str(EUR)},
            "signed_data": signed,
        },
    )
    assert reply["result"] == "OK" and result is not None
    user_signed = sign_diff(
        u_key,
        u_acc,
        closure({BTC: 100_000, EURE: -EUR}, venue.verifier.fee_pips),
        deadline_ns=venue.deadline(),
        salt=salt,
    )
    out = await venue.relay.publish_intent([result[0]["quote_hash"]], user_signed)
    assert out["status"] == "FAILED" and "insufficient balance" in out["reason"]
    assert out["intent_hash"] == parse_multipayload(user_signed).hash_b58()
    assert venue.verifier.balance_of(s_acc, EURE) == 100 * EUR  # nothing moved
    st = await venue.rpc("get_status", [{"intent_hash": out["intent_hash"]}])
    assert st["result"]["status"] == "NOT_FOUND_OR_NOT_VALID"
    unknown = await venue.relay.publish_intent(["NoSuchQuote"], user_signed)
    assert unknown["status"] == "FAILED" and "not found" in unknown["reason"]
    bad = await venue.rpc("publish_intent", [{"quote_hashes": [], "signed_data": {"standard": "nope"}}])
    assert bad["error"]["code"] == -32602


# ---------------------------------------------------------------------------- guaranteed delivery


async def _settle_one(
    venue: Venue, solver: WsClient, s_key: SigningKey, s_acc: str, u_key: SigningKey, u_acc: str
) -> str:
    salt = venue.verifier.current_salt()
    signed = sign_diff(s_key, s_acc, {BTC: 1000, EURE: -EUR}, deadline_ns=venue.deadline(), salt=salt)
    reply, result = await _answer(
        venue,
        solver,
        build=lambda d: {
            "quote_id": d["quote_id"],
            "quote_output": {"amount_out": str(EUR)},
            "signed_data": signed,
        },
        request=exact_in_request(1000),
    )
    assert reply["result"] == "OK" and result is not None
    user_signed = sign_diff(
        u_key,
        u_acc,
        closure({BTC: 1000, EURE: -EUR}, venue.verifier.fee_pips),
        deadline_ns=venue.deadline(),
        salt=salt,
    )
    assert (await venue.relay.publish_intent([result[0]["quote_hash"]], user_signed))["status"] == "OK"
    return str(result[0]["quote_hash"])


async def test_guaranteed_delivery_redelivers_unacked_status_after_reconnect(venue: Venue) -> None:
    s_key, s_acc = venue.solver_key("solver-g", {EURE: 100 * EUR})
    u_key, u_acc = venue.solver_key("user-g", {BTC: 10**8})
    first = await venue.connect("key-solver-a", instance_id="prod-1")
    await first.result("subscribe", ["quote"])
    gsub = await first.result("subscribe", ["quote_status", None, True])
    other_instance = await venue.connect("key-solver-a", instance_id="prod-2")
    other_sub = await other_instance.result("subscribe", ["quote_status", None, True])

    qh1 = await _settle_one(venue, first, s_key, s_acc, u_key, u_acc)
    ev = await first.next_event()
    assert ev["params"]["subscription"] == gsub and ev["params"]["seq"] == 1
    assert ev["params"]["data"]["quote_hash"] == qh1
    ev2 = await other_instance.next_event()
    assert ev2["params"]["subscription"] == other_sub and ev2["params"]["seq"] == 1
    assert await other_instance.result("acknowledge", [other_sub, 1]) == "OK"

    # not acknowledged: the event survives a drop and comes back with the same seq
    await first.close()
    await asyncio.sleep(0.05)
    second = await venue.connect("key-solver-a", instance_id="prod-1")
    gsub2 = await second.result("subscribe", ["quote_status", None, True])
    assert gsub2 != gsub
    re = await second.next_event()
    assert re["params"]["subscription"] == gsub2 and re["params"]["seq"] == 1
    assert re["params"]["data"] == ev["params"]["data"]
    assert await second.result("acknowledge", [gsub2, 1]) == "OK"

    # a forced disconnect: a new event queued while away is delivered on reconnect with the next seq
    await second.result("subscribe", ["quote"])
    assert await venue.relay.disconnect_all() == 2
    qh2_solver = await venue.connect("key-solver-b")
    await qh2_solver.result("subscribe", ["quote"])
    s2_key, s2_acc = venue.solver_key("solver-g2", {EURE: 100 * EUR})
    await _settle_one(venue, qh2_solver, s2_key, s2_acc, u_key, u_acc)  # partner solver-b: not queued for a
    third = await venue.connect("key-solver-a", instance_id="prod-1")
    await third.result("subscribe", ["quote"])
    gsub3 = await third.result("subscribe", ["quote_status", None, True])
    await third.no_event(0.2)  # seq 1 was acknowledged; solver-b's settlement is not ours
    qh3 = await _settle_one(venue, third, s_key, s_acc, u_key, u_acc)
    ev3 = await third.next_event()
    assert ev3["params"]["seq"] == 2 and ev3["params"]["data"]["quote_hash"] == qh3
    assert ev3["params"]["subscription"] == gsub3
    queues = venue.relay.stats()["guaranteed_queues"]
    assert queues["QS_solver-a_prod-1"]["pending"] == 1
    assert queues["QS_solver-a_prod-2"]["pending"] == 1  # prod-2 is offline, its copy waits


# ---------------------------------------------------------------------------- competition, envelope, faults


async def test_best_quote_first_with_a_competing_solver(venue: Venue) -> None:
    mid = Decimal(60000)
    competitor = CompetingSolver(
        venue.clock,
        venue.verifier,
        venue.ws_url,
        lambda ns: mid,
        api_key="key-solver-b",
        seed=7,
        config=SolverConfig(spread_bps=Decimal(50)),
        initial_balances={EURE: 1000 * EUR, BTC: 10**8},
    )
    await competitor.start()
    try:
        await competitor.wait_ready()
        ours = await venue.connect("key-solver-a")
        await ours.result("subscribe", ["quote"])
        await ours.result("subscribe", ["quote_status"])
        key, acc = venue.solver_key("solver-best", {EURE: 1000 * EUR, BTC: 10**8})
        salt = venue.verifier.current_salt()

        # exact in: 0.001 BTC -> EURe; competitor pays 59700 EUR/BTC, we pay 59900
        ours_out = 599 * EUR // 10
        signed = sign_diff(key, acc, {BTC: 100_000, EURE: -ours_out}, deadline_ns=venue.deadline(), salt=salt)
        reply, result = await _answer(
            venue,
            ours,
            build=lambda d: {
                "quote_id": d["quote_id"],
                "quote_output": {"amount_out": str(ours_out)},
                "signed_data": signed,
            },
        )
        assert reply["result"] == "OK" and result is not None
        assert [q["amount_out"] for q in result] == [str(ours_out), str(597 * EUR // 10)]
        assert result[0]["quote_hash"] == parse_multipayload(signed).hash_b58()

        # exact out: buy 0.001 BTC; competitor asks 60300 EUR/BTC, we ask 60100
        req = {
            "defuse_asset_identifier_in": EURE,
            "defuse_asset_identifier_out": BTC,
            "exact_amount_out": "100000",
        }
        ours_in = 601 * EUR // 10
        signed = sign_diff(key, acc, {EURE: ours_in, BTC: -100_000}, deadline_ns=venue.deadline(), salt=salt)
        reply, result = await _answer(
            venue,
            ours,
            request=req,
            build=lambda d: {
                "quote_id": d["quote_id"],
                "quote_output": {"amount_in": str(ours_in), "amount_out": "100000"},
                "signed_data": signed,
            },
        )
        assert reply["result"] == "OK" and result is not None
        assert [q["amount_in"] for q in result] == [str(ours_in), str(603 * EUR // 10)]

        # the user takes the competitor's (second) quote: only the competitor hears about it
        taken = result[1]
        u_key, u_acc = venue.solver_key("user-c", {EURE: 1000 * EUR})
        user_signed = sign_diff(
            u_key,
            u_acc,
            closure({EURE: int(taken["amount_in"]), BTC: -100_000}, venue.verifier.fee_pips),
            deadline_ns=venue.deadline(),
            salt=salt,
        )
        assert (await venue.relay.publish_intent([taken["quote_hash"]], user_signed))["status"] == "OK"
        await competitor.wait_status(1)
        assert competitor.statuses[0]["quote_hash"] == taken["quote_hash"]
        await ours.no_event(0.2)
        assert venue.verifier.balance_of(competitor.account_id, BTC) == 10**8 - 100_000
        assert competitor.stats.responses_ok == 2
    finally:
        await competitor.stop()


async def test_docs_envelope() -> None:
    clock = SystemClock()
    verifier = Verifier(clock)
    relay = SimRelay(
        clock, SimNear(clock, verifier), verifier, api_keys={"k"}, envelope="docs", window_ms=200
    )
    base = await relay.start()
    try:
        async with aiohttp.ClientSession() as session:
            c = WsClient(
                await session.ws_connect(
                    base.replace("http", "ws") + "/ws", headers={"Authorization": "Bearer k"}
                )
            )
            sub = await c.result("subscribe", ["quote"])
            task = asyncio.create_task(relay.request_quote(exact_in_request()))
            ev = await c.next_event()
            assert ev["method"] == "subscribe" and ev["params"]["subscription"] == sub
            assert ev["params"]["exact_amount_in"] == "100000" and "data" not in ev["params"]
            assert await task is None
            await c.close()
    finally:
        await relay.stop()


async def test_faults_stats_and_latency_samples(venue: Venue) -> None:
    c = await venue.connect()
    await c.result("subscribe", ["quote"])
    key, acc = venue.solver_key("solver-f", {EURE: 100 * EUR})
    salt = venue.verifier.current_salt()

    def build(d: dict[str, Any]) -> dict[str, Any]:
        signed = sign_diff(key, acc, {BTC: 100_000, EURE: -EUR}, deadline_ns=venue.deadline(), salt=salt)
        return {"quote_id": d["quote_id"], "quote_output": {"amount_out": str(EUR)}, "signed_data": signed}

    venue.relay.fail_next_responses(1, "relay overloaded")
    reply, result = await _answer(venue, c, build=build)
    assert reply["error"]["message"] == "relay overloaded" and result is None
    reply, result = await _answer(venue, c, build=build)
    assert reply["result"] == "OK" and result is not None

    samples = venue.relay.latency_samples()
    assert len(samples) == 2
    assert all(s.response_ns is not None and s.latency_ns is not None and s.latency_ns >= 0 for s in samples)
    assert [s.accepted for s in samples] == [False, True]
    assert {s.partner_id for s in samples} == {"solver-a"}

    venue.relay.set_window_ms(150)
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(venue.relay.request_quote(exact_in_request()))  # nobody answers
    await c.next_event()
    assert await task is None
    assert loop.time() - started >= 0.14

    # max_wait_ms caps wait_ms; min_wait_ms holds the window open after every solver answered
    started = loop.time()
    task = asyncio.create_task(venue.relay.request_quote(exact_in_request(wait_ms=60_000, max_wait_ms=100)))
    await c.next_event()
    assert await task is None
    assert loop.time() - started < 30
    started = loop.time()
    reply, result = await _answer(
        venue, c, build=build, request=exact_in_request(wait_ms=1000, min_wait_ms=250)
    )
    assert reply["result"] == "OK" and result is not None
    assert loop.time() - started >= 0.24

    stats = venue.relay.stats()
    assert stats["counts"]["faults_injected"] == 1
    assert stats["counts"]["quote_requests"] == 5
    assert stats["counts"]["quote_responses_accepted"] == 2
    assert stats["connections_open"] == 1 and stats["subscriptions"]["quote"] == 1
    assert "key-solver" not in json.dumps(stats)  # never leaks a key

    assert await venue.relay.disconnect_all() == 1
    await asyncio.sleep(0.05)
    assert venue.relay.stats()["connections_open"] == 0


async def test_frontend_rpc_auth_and_errors(venue: Venue) -> None:
    assert (await venue.rpc("get_status", [{"intent_hash": "x"}], headers={}))["_http_status"] == 401
    ok = await venue.rpc("get_status", [{"intent_hash": "x"}], headers={"X-API-Key": "key-frontend"})
    assert ok["result"]["status"] == "NOT_FOUND_OR_NOT_VALID"
    assert (await venue.rpc("nope", []))["error"]["code"] == -32601
    assert (await venue.rpc("quote", [{"defuse_asset_identifier_in": BTC}]))["error"]["code"] == -32602
    both = exact_in_request(exact_amount_out="5")
    assert "exactly one" in (await venue.rpc("quote", [both]))["error"]["message"]
    assert (await venue.rpc("quote", [exact_in_request(0)]))["error"]["code"] == -32602
    # nobody subscribed: no liquidity, answered at once
    assert (await venue.rpc("quote", [exact_in_request()]))["result"] is None
    async with venue.session.post(
        f"{venue.base}/rpc", data=b"{oops", headers={"X-API-Key": "key-frontend"}
    ) as r:
        assert (await r.json())["error"]["code"] == -32700
