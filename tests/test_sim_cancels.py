"""Cancelling signed quotes on the simulated venue, as on today's Verifier and relay (reference 4.3).

A quote is cancelled by an empty-intents payload signed with the same key and the same nonce, sent
(a) to the relay's ``publish_intents`` (checked, remembered in memory, not put on chain) or (b) on
chain in an ``execute_intents`` transaction (commits the nonce). Everything runs over real loopback
sockets: the solver is a bare WebSocket client, users and the operator talk plain HTTP JSON-RPC to
the relay and to the simulated NEAR node. No product service is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from intents_mm.clock import SystemClock
from intents_mm.near.encoding import b58decode, b64encode
from intents_mm.near.keys import SigningKey
from intents_mm.near.nonce import VersionedNonce, decode_nonce, encode_versioned_nonce, random_versioned_nonce
from intents_mm.near.payload import (
    SignedPayload,
    build_intent_message,
    parse_multipayload,
    sign_nep413,
    sign_raw_ed25519,
    token_diff_intent,
)
from intents_mm.near.timefmt import format_deadline
from intents_mm.near.transaction import FunctionCall, Transaction, sign_transaction
from intents_mm.sim.near_rpc import SimNear, SimNearRpcServer
from intents_mm.sim.relay import SimRelay
from intents_mm.sim.verifier import Verifier, counterparty_diff

BTC = "nep141:btc.omft.near"
EURE = "nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"
KEYS = {"key-solver-a": "solver-a", "key-solver-b": "solver-b", "key-frontend": "frontend"}
MS = 1_000_000
EUR = 10**18
TGAS = 10**12
FEE_PIPS = 100


# ---------------------------------------------------------------------------- solver over the socket


class Solver:
    """A solver on a bare WebSocket: one key, one implicit account, answers at a fixed rate."""

    def __init__(self, venue: Venue, label: str, api_key: str, rate: int) -> None:
        self.venue = venue
        self.api_key = api_key
        self.rate = rate  # EURe units per sat
        self.key = SigningKey.from_seed(label.encode().ljust(32, b"\0"))
        self.account = self.key.public_key.implicit_account_id()
        venue.verifier.credit(self.account, EURE, 10_000 * EUR)
        venue.chain.add_account(self.account, self.key.public_key.to_string())
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        self._ws = await self.venue.http.ws_connect(self.venue.relay.ws_url, headers=headers)
        self._reader = asyncio.create_task(self._read())
        reply = await self.call("subscribe", ["quote"])
        assert isinstance(reply.get("result"), str), reply

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            fut = self._replies.pop(frame["id"], None) if "id" in frame else None
            if fut is not None:
                fut.set_result(frame)
            else:
                await self.events.put(frame)

    async def call(self, method: str, params: Any) -> dict[str, Any]:
        assert self._ws is not None
        self._next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[self._next_id] = fut
        await self._ws.send_str(
            json.dumps({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})
        )
        return await asyncio.wait_for(fut, 5)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    def sign_quote(self, data: dict[str, Any], *, raw: bool = False) -> SignedPayload:
        """``{BTC: +in, EURE: -in·rate}`` with a fresh versioned nonce (NEP-413 or raw_ed25519)."""
        amount_in = int(data["exact_amount_in"])
        clock = self.venue.clock
        deadline_ns = (clock.now_ns() + (data["min_deadline_ms"] + 10_000) * MS) // MS * MS
        nonce = random_versioned_nonce(self.venue.verifier.current_salt(), deadline_ns)
        intents = [token_diff_intent({BTC: amount_in, EURE: -amount_in * self.rate})]
        if raw:
            body = {
                "signer_id": self.account,
                "verifying_contract": "intents.near",
                "deadline": format_deadline(deadline_ns),
                "nonce": b64encode(nonce),
                "intents": intents,
            }
            return sign_raw_ed25519(self.key, json.dumps(body, separators=(",", ":")))
        return sign_nep413(self.key, build_intent_message(self.account, deadline_ns, intents), nonce)

    async def answer(self, *, raw: bool = False) -> SignedPayload:
        """Answer the next quote event; the relay must accept it."""
        data = (await asyncio.wait_for(self.events.get(), 5))["params"]["data"]
        quote = self.sign_quote(data, raw=raw)
        amount_out = int(data["exact_amount_in"]) * self.rate
        reply = await self.call(
            "quote_response",
            [
                {
                    "quote_id": data["quote_id"],
                    "quote_output": {"amount_out": str(amount_out)},
                    "signed_data": quote.to_json_obj(),
                }
            ],
        )
        assert reply.get("result") == "OK", reply
        return quote

    def cancel_of(self, quote: SignedPayload, *, deadline_ns: int | None = None) -> dict[str, Any]:
        """Same key, same nonce, same standard, ``intents: []``, deadline no later than the nonce's."""
        nonce = decode_nonce(quote.nonce)
        assert isinstance(nonce, VersionedNonce)
        if deadline_ns is None:
            deadline_ns = min(self.venue.clock.now_ns() + 60_000 * MS, nonce.deadline_ns) // MS * MS
        if quote.standard == "raw_ed25519":
            body = {
                "signer_id": self.account,
                "verifying_contract": "intents.near",
                "deadline": format_deadline(deadline_ns),
                "nonce": b64encode(quote.nonce),
                "intents": [],
            }
            return sign_raw_ed25519(self.key, json.dumps(body, separators=(",", ":"))).to_json_obj()
        message = build_intent_message(self.account, deadline_ns, [])
        return sign_nep413(self.key, message, quote.nonce).to_json_obj()


# ---------------------------------------------------------------------------- the venue


@dataclass
class Venue:
    clock: SystemClock
    verifier: Verifier
    chain: SimNear
    relay: SimRelay
    node: SimNearRpcServer
    node_url: str
    http: aiohttp.ClientSession
    solvers: list[Solver] = field(default_factory=list)

    async def solver(self, label: str, api_key: str = "key-solver-a", rate: int = 600 * 10**9) -> Solver:
        s = Solver(self, label, api_key, rate)
        await s.connect()
        self.solvers.append(s)
        return s

    def user(self, label: str, sats: int = 10**8) -> tuple[SigningKey, str]:
        key = SigningKey.from_seed(label.encode().ljust(32, b"\0"))
        account = key.public_key.implicit_account_id()
        self.verifier.credit(account, BTC, sats)
        return key, account

    async def relay_rpc(self, method: str, params: dict[str, Any]) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": [params]}
        headers = {"Authorization": "Bearer key-frontend"}
        async with self.http.post(self.relay.rpc_url, json=body, headers=headers) as resp:
            assert resp.status == 200
            doc = await resp.json()
        assert "error" not in doc, doc
        return doc["result"]

    def quote_request(self, amount_in: int = 100_000) -> asyncio.Task[Any]:
        req = {
            "defuse_asset_identifier_in": BTC,
            "defuse_asset_identifier_out": EURE,
            "exact_amount_in": str(amount_in),
            "min_deadline_ms": 60_000,
        }
        return asyncio.create_task(self.relay_rpc("quote", req))

    def accept(self, key: SigningKey, account: str, quote: SignedPayload) -> dict[str, Any]:
        """The user's side of the swap: the closure of the solver's diff, signed NEP-413."""
        diff_obj = quote.intents[0]["diff"]
        assert isinstance(diff_obj, dict)
        solver_diff = {token: int(amount) for token, amount in diff_obj.items()}
        deadline_ns = (self.clock.now_ns() + 60_000 * MS) // MS * MS
        nonce = random_versioned_nonce(self.verifier.current_salt(), deadline_ns)
        user_diff = counterparty_diff(solver_diff, self.verifier.fee_pips)
        message = build_intent_message(account, deadline_ns, [token_diff_intent(user_diff)])
        return sign_nep413(key, message, nonce).to_json_obj()

    async def publish_accept(self, key: SigningKey, account: str, quote: SignedPayload) -> dict[str, Any]:
        params = {"quote_hashes": [quote.hash_b58()], "signed_data": self.accept(key, account, quote)}
        result: dict[str, Any] = await self.relay_rpc("publish_intent", params)
        return result

    async def node_rpc(self, method: str, params: Any) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "id": "dontcare", "method": method, "params": params}
        async with self.http.post(self.node_url + "/", json=body) as resp:
            doc: dict[str, Any] = await resp.json()
        return doc

    async def execute_on_chain(self, solver: Solver, signed: list[dict[str, Any]]) -> dict[str, Any]:
        """One ``execute_intents`` transaction from the solver's own account, over ``send_tx``."""
        access = await self.node_rpc(
            "query",
            {
                "request_type": "view_access_key",
                "finality": "optimistic",
                "account_id": solver.account,
                "public_key": solver.key.public_key.to_string(),
            },
        )
        block = await self.node_rpc("block", {"finality": "final"})
        args = json.dumps({"signed": signed}).encode()
        tx = Transaction(
            signer_id=solver.account,
            public_key=solver.key.public_key,
            nonce=access["result"]["nonce"] + 1,
            receiver_id="intents.near",
            block_hash=b58decode(block["result"]["header"]["hash"]),
            actions=[FunctionCall("execute_intents", args, 300 * TGAS, 0)],
        )
        signed_b64 = sign_transaction(tx, solver.key).to_base64()
        doc = await self.node_rpc(
            "send_tx", {"signed_tx_base64": signed_b64, "wait_until": "EXECUTED_OPTIMISTIC"}
        )
        assert "error" not in doc, doc
        outcome: dict[str, Any] = doc["result"]
        return outcome

    async def is_nonce_used_on_chain(self, account: str, nonce: bytes) -> bool:
        args = json.dumps({"account_id": account, "nonce": b64encode(nonce)}).encode()
        doc = await self.node_rpc(
            "query",
            {
                "request_type": "call_function",
                "finality": "optimistic",
                "account_id": "intents.near",
                "method_name": "is_nonce_used",
                "args_base64": b64encode(args),
            },
        )
        used = json.loads(bytes(doc["result"]["result"]))
        assert isinstance(used, bool)
        return used

    def ledger(self, accounts: list[str]) -> dict[str, dict[str, int]]:
        return {a: self.verifier.balances(a) for a in [*accounts, self.verifier.fee_collector]}


@pytest.fixture
async def venue() -> AsyncIterator[Venue]:
    clock = SystemClock()
    verifier = Verifier(clock, fee_pips=FEE_PIPS)
    chain = SimNear(clock, verifier)
    relay = SimRelay(clock, chain, verifier, api_keys=KEYS, window_ms=3000)
    await relay.start()
    node = SimNearRpcServer(chain)
    node_url = await node.start()
    http = aiohttp.ClientSession()
    v = Venue(clock, verifier, chain, relay, node, node_url, http)
    try:
        yield v
    finally:
        for s in v.solvers:
            await s.close()
        await http.close()
        await node.stop()
        await relay.stop()


async def offered(venue: Venue, solver: Solver, *, raw: bool = False) -> SignedPayload:
    """One quote request answered by ``solver``: the quote the user is offered."""
    task = venue.quote_request()
    quote = await solver.answer(raw=raw)
    answer = await task
    assert [q["quote_hash"] for q in answer] == [quote.hash_b58()]
    return quote


# ---------------------------------------------------------------------------- the relay path


async def test_relay_cancel_is_remembered_not_executed_and_refuses_the_quote(venue: Venue) -> None:
    solver = await venue.solver("solver-a")
    ukey, user = venue.user("user-1")
    q1, q2 = await offered(venue, solver), await offered(venue, solver, raw=True)
    before = venue.ledger([solver.account, user])
    txs = len(venue.chain.transactions)
    cancels = [solver.cancel_of(q1), solver.cancel_of(q2)]

    result = await venue.relay_rpc("publish_intents", {"quote_hashes": [], "signed_datas": cancels})

    assert result == {"status": "OK", "intent_hashes": [parse_multipayload(c).hash_b58() for c in cancels]}
    for q in (q1, q2):
        assert venue.relay.is_nonce_cancelled(solver.account, q.nonce)
        # the relay does not put cancels on chain (SDK: "it invalidates in-memory only")
        assert await venue.is_nonce_used_on_chain(solver.account, q.nonce) is False
    assert len(venue.chain.transactions) == txs
    assert venue.relay.stats()["cancelled_nonces"] == 2
    status = await venue.relay_rpc("get_status", {"intent_hash": result["intent_hashes"][0]})
    assert status["status"] == "NOT_FOUND_OR_NOT_VALID"

    for q in (q1, q2):
        refused = await venue.publish_accept(ukey, user, q)
        assert refused["status"] == "FAILED" and refused["reason"] == "nonce was already used"
    assert venue.ledger([solver.account, user]) == before
    assert len(venue.chain.transactions) == txs
    # cancelling again is refused the same way: the relay counts the nonce as used
    repeat = solver.cancel_of(q1)
    again = await venue.relay_rpc("publish_intent", {"quote_hashes": [], "signed_data": repeat})
    assert again == {
        "status": "FAILED",
        "reason": "nonce was already used",
        "intent_hash": parse_multipayload(repeat).hash_b58(),
    }
    assert venue.relay.stats()["cancelled_nonces"] == 2


async def test_relay_cancel_checks_each_payload_and_fails_the_whole_batch(venue: Venue) -> None:
    solver = await venue.solver("solver-a")
    quotes = [await offered(venue, solver) for _ in range(3)]
    stranger = SigningKey.from_seed(b"stranger".ljust(32, b"\0"))
    nonce_deadline = decode_nonce(quotes[0].nonce)
    assert isinstance(nonce_deadline, VersionedNonce)
    good = solver.cancel_of(quotes[0])
    bad_salt_nonce = encode_versioned_nonce(b"\xde\xad\xbe\xef", nonce_deadline.deadline_ns, b"\x07" * 15)
    stranger_msg = build_intent_message(solver.account, venue.clock.now_ns() + 30_000 * MS, [])

    def nep413(message: str, nonce: bytes, key: SigningKey = solver.key) -> dict[str, Any]:
        return sign_nep413(key, message, nonce).to_json_obj()

    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "signature": solver.cancel_of(quotes[1])["signature"]}, "invalid signature"),
        (nep413(stranger_msg, quotes[0].nonce, stranger), "doesn't exist for account"),
        (solver.cancel_of(quotes[0], deadline_ns=venue.clock.now_ns() - 1000 * MS), "deadline has expired"),
        (
            solver.cancel_of(quotes[0], deadline_ns=nonce_deadline.deadline_ns + 1000 * MS),
            "deadline is greater than nonce",
        ),
        (
            nep413(
                build_intent_message(solver.account, venue.clock.now_ns() + 30_000 * MS, []), bad_salt_nonce
            ),
            "invalid salt",
        ),
        (
            sign_nep413(
                solver.key,
                build_intent_message(solver.account, venue.clock.now_ns() + 30_000 * MS, []),
                quotes[0].nonce,
                "evil.near",
            ).to_json_obj(),
            "wrong verifying_contract",
        ),
    ]
    for bad, reason in cases:
        result = await venue.relay_rpc("publish_intents", {"quote_hashes": [], "signed_datas": [good, bad]})
        assert result["status"] == "FAILED", (reason, result)
        assert reason in result["reason"], (reason, result["reason"])
        assert len(result["intent_hashes"]) == 2
        # all or nothing: the good cancel in the same batch is not remembered either
        assert not venue.relay.is_nonce_cancelled(solver.account, quotes[0].nonce)

    # the same nonce twice in one batch
    twice = [good, solver.cancel_of(quotes[0], deadline_ns=(venue.clock.now_ns() + 20_000 * MS) // MS * MS)]
    result = await venue.relay_rpc("publish_intents", {"quote_hashes": [], "signed_datas": twice})
    assert (result["status"], result["reason"]) == ("FAILED", "nonce was already used")

    # a quote that already settled on chain: its cancel fails the batch with the contract's text
    ukey, user = venue.user("user-1")
    settled = await venue.publish_accept(ukey, user, quotes[2])
    assert settled["status"] == "OK"
    batch = [solver.cancel_of(q) for q in quotes]
    result = await venue.relay_rpc("publish_intents", {"quote_hashes": [], "signed_datas": batch})
    assert (result["status"], result["reason"]) == ("FAILED", "nonce was already used")
    assert not any(venue.relay.is_nonce_cancelled(solver.account, q.nonce) for q in quotes)
    # without it, the rest goes through
    result = await venue.relay_rpc("publish_intents", {"quote_hashes": [], "signed_datas": batch[:2]})
    assert result["status"] == "OK"
    assert [venue.relay.is_nonce_cancelled(solver.account, q.nonce) for q in quotes] == [True, True, False]


async def test_cancelled_nonce_is_refused_in_quote_response_and_forgotten_after_expiry(venue: Venue) -> None:
    solver = await venue.solver("solver-a")
    task = venue.quote_request()
    data = (await asyncio.wait_for(solver.events.get(), 5))["params"]["data"]
    quote = solver.sign_quote(data)
    result = await venue.relay_rpc(
        "publish_intents", {"quote_hashes": [], "signed_datas": [solver.cancel_of(quote)]}
    )
    assert result["status"] == "OK"
    amount_out = int(data["exact_amount_in"]) * solver.rate
    reply = await solver.call(
        "quote_response",
        [
            {
                "quote_id": data["quote_id"],
                "quote_output": {"amount_out": str(amount_out)},
                "signed_data": quote.to_json_obj(),
            }
        ],
    )
    assert reply["error"]["code"] == -32000
    assert reply["error"]["message"].startswith("nonce was already used")
    assert await task is None
    assert venue.relay.stats()["rejections"]["nonce was already used"] == 1

    # a cancelled versioned nonce is forgotten once its deadline passes (the Verifier refuses it anyway)
    deadline_ns = (venue.clock.now_ns() + 300 * MS) // MS * MS
    short = random_versioned_nonce(venue.verifier.current_salt(), deadline_ns)
    message = build_intent_message(solver.account, deadline_ns, [])
    cancel = sign_nep413(solver.key, message, short).to_json_obj()
    assert (await venue.relay_rpc("publish_intents", {"quote_hashes": [], "signed_datas": [cancel]}))[
        "status"
    ] == "OK"
    assert venue.relay.stats()["cancelled_nonces"] == 2
    await asyncio.sleep(0.4)
    assert not venue.relay.is_nonce_cancelled(solver.account, short)
    assert venue.relay.stats()["cancelled_nonces"] == 1


async def test_mixed_batches_are_handled_as_the_chain_does(venue: Venue) -> None:
    solver = await venue.solver("solver-a")
    ukey, user = venue.user("user-1")
    quote = await offered(venue, solver)
    # the user publishes its swap together with a cancel of one of its own earlier nonces
    own = random_versioned_nonce(
        venue.verifier.current_salt(), (venue.clock.now_ns() + 60_000 * MS) // MS * MS
    )
    own_cancel = sign_nep413(ukey, build_intent_message(user, venue.clock.now_ns() + 30_000 * MS, []), own)
    params = {
        "quote_hashes": [quote.hash_b58()],
        "signed_datas": [venue.accept(ukey, user, quote), own_cancel.to_json_obj()],
    }
    result = await venue.relay_rpc("publish_intents", params)
    assert result["status"] == "OK"
    assert await venue.is_nonce_used_on_chain(user, own) is True
    assert venue.verifier.balance_of(solver.account, BTC) == 100_000
    # user intents without quote hashes are still refused, cancels or not
    swap_only = await offered(venue, solver)
    params = {
        "quote_hashes": [],
        "signed_datas": [venue.accept(ukey, user, swap_only), solver.cancel_of(swap_only)],
    }
    result = await venue.relay_rpc("publish_intents", params)
    assert (result["status"], result["reason"]) == ("FAILED", "no quote_hashes given")
    assert not venue.relay.is_nonce_cancelled(solver.account, swap_only.nonce)


# ---------------------------------------------------------------------------- ranking


@pytest.mark.parametrize("path", ["relay", "chain"])
async def test_ranking_drops_a_cancelled_best_quote_and_the_user_takes_the_next(
    venue: Venue, path: str
) -> None:
    best = await venue.solver("solver-a", "key-solver-a", rate=610 * 10**9)
    second = await venue.solver("solver-b", "key-solver-b", rate=600 * 10**9)
    ukey, user = venue.user("user-1")
    task = venue.quote_request()
    top = await best.answer()
    if path == "relay":
        result = await venue.relay_rpc(
            "publish_intents", {"quote_hashes": [], "signed_datas": [best.cancel_of(top)]}
        )
        assert result["status"] == "OK"
    else:
        outcome = await venue.execute_on_chain(best, [best.cancel_of(top)])
        assert outcome["status"] == {"SuccessValue": ""}
    runner_up = await second.answer()
    answer = await task
    assert [q["quote_hash"] for q in answer] == [runner_up.hash_b58()]
    assert venue.relay.stats()["counts"]["quote_candidates_dropped_nonce"] == 1

    before_best = venue.verifier.balances(best.account)
    result = await venue.publish_accept(ukey, user, runner_up)
    assert result["status"] == "OK"
    assert venue.verifier.balance_of(second.account, BTC) == 100_000
    assert venue.verifier.balance_of(second.account, EURE) == 10_000 * EUR - 100_000 * second.rate
    assert venue.verifier.balances(best.account) == before_best

    # when the only quote is cancelled, the user gets no quote at all
    task = venue.quote_request()
    only = await best.answer()
    await venue.relay_rpc("publish_intents", {"quote_hashes": [], "signed_datas": [best.cancel_of(only)]})
    data = (await asyncio.wait_for(second.events.get(), 5))["params"]["data"]
    refused = await second.call("quote_response", [{"quote_id": data["quote_id"], "quote_output": {}}])
    assert refused["error"]["code"] == -32000  # the second solver's answer is refused: nothing is left
    assert await task is None


# ---------------------------------------------------------------------------- the drill


async def test_drill_cancel_every_signed_quote_by_both_paths(venue: Venue) -> None:
    """Sign N quotes with one key, offer them to users, cancel them all (half at the relay, half on
    chain, two by both, NEP-413 and raw_ed25519), then every acceptance fails and no balance moves by
    one unit."""
    n = 8
    solver = await venue.solver("solver-a")
    users = [venue.user(f"user-{i}") for i in range(n)]
    quotes = [await offered(venue, solver, raw=i % 4 == 3) for i in range(n)]
    assert {q.standard for q in quotes} == {"nep413", "raw_ed25519"}
    accounts = [solver.account, *(u for _, u in users)]
    before = venue.ledger(accounts)
    totals = {t: venue.verifier.total_of(t) for t in (BTC, EURE)}

    # (a) the relay path, one batch
    via_relay, via_chain = quotes[: n // 2], quotes[n // 2 :]
    relay_batch = [solver.cancel_of(q) for q in via_relay]
    result = await venue.relay_rpc("publish_intents", {"quote_hashes": [], "signed_datas": relay_batch})
    assert result["status"] == "OK" and len(result["intent_hashes"]) == len(via_relay)
    # (b) the on-chain path, one execute_intents transaction from the solver's own account
    outcome = await venue.execute_on_chain(solver, [solver.cancel_of(q) for q in via_chain])
    assert outcome["status"] == {"SuccessValue": ""}
    logs = outcome["receipts_outcome"][0]["outcome"]["logs"]
    executed = [json.loads(line.removeprefix("EVENT_JSON:")) for line in logs]
    assert [d["nonce"] for d in executed[0]["data"]] == [b64encode(q.nonce) for q in via_chain]

    for q in via_chain:
        assert await venue.is_nonce_used_on_chain(solver.account, q.nonce) is True
    for q in via_relay:
        assert venue.relay.is_nonce_cancelled(solver.account, q.nonce)

    # (a) then (b) with the same signed payloads, as the product's stop does by default: the chain
    # does not know the relay's memory, so the transaction commits the relay-cancelled nonces too
    both = via_relay[:2]
    outcome = await venue.execute_on_chain(solver, relay_batch[:2])
    assert outcome["status"] == {"SuccessValue": ""}
    for q in both:
        assert await venue.is_nonce_used_on_chain(solver.account, q.nonce) is True

    # every later acceptance fails, at the relay or on chain, with the contract's text
    for (ukey, user), q in zip(users, quotes, strict=True):
        refused = await venue.publish_accept(ukey, user, q)
        assert refused["status"] == "FAILED" and refused["reason"] == "nonce was already used", refused
    # a second cancel through the relay of the chain-cancelled quotes is an outcome, not an error
    again = await venue.relay_rpc(
        "publish_intents", {"quote_hashes": [], "signed_datas": [solver.cancel_of(via_chain[0])]}
    )
    assert (again["status"], again["reason"]) == ("FAILED", "nonce was already used")

    assert venue.ledger(accounts) == before
    assert {t: venue.verifier.total_of(t) for t in (BTC, EURE)} == totals
    assert venue.relay.stats()["counts"].get("publish_ok", 0) == 0
