"""The simulated NEAR chain and JSON-RPC server, driven by an independent JSON-RPC client.

The client here is plain aiohttp plus a few lines of JSON-RPC (not the project's near/rpc.py), so
the server is checked against the wire format itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from intents_mm.clock import ManualClock
from intents_mm.near.encoding import b58decode, b64encode
from intents_mm.near.keys import SigningKey
from intents_mm.near.nonce import encode_versioned_nonce, random_versioned_nonce
from intents_mm.near.payload import build_intent_message, sign_nep413, token_diff_intent
from intents_mm.near.transaction import FunctionCall, Transaction, Transfer, sign_transaction
from intents_mm.sim.near_rpc import SimNear, SimNearRpcServer
from intents_mm.sim.verifier import Verifier, VerifierError, counterparty_diff

BTC = "nep141:btc.omft.near"
EURE = "nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"
MM = "solver.near"
USER = "alice.near"
RELAY = "solver-relay.near"
MS = 1_000_000
TGAS = 10**12
MM_KEY = SigningKey.from_seed(b"\x01" * 32)
USER_KEY = SigningKey.from_seed(b"\x02" * 32)
RELAY_KEY = SigningKey.from_seed(b"\x03" * 32)
BTC_DEST = "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"


@dataclass
class Venue:
    clock: ManualClock
    verifier: Verifier
    chain: SimNear
    server: SimNearRpcServer
    url: str
    http: aiohttp.ClientSession
    burns: list[tuple[str, str, str, int, str]]

    async def rpc(self, method: str, params: object, *, req_id: object = "dontcare") -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params}
        async with self.http.post(self.url + "/", json=body) as resp:
            assert resp.status == 200
            doc: dict[str, Any] = await resp.json()
        assert doc["jsonrpc"] == "2.0" and doc["id"] == req_id
        return doc

    async def view_raw(self, method: str, args: dict[str, Any], **ref: Any) -> dict[str, Any]:
        params = {
            "request_type": "call_function",
            "account_id": "intents.near",
            "method_name": method,
            "args_base64": base64.b64encode(json.dumps(args).encode()).decode(),
            **(ref or {"finality": "final"}),
        }
        return await self.rpc("query", params)

    async def view(self, method: str, args: dict[str, Any], **ref: Any) -> Any:
        doc = await self.view_raw(method, args, **ref)
        result = doc["result"]
        assert "error" not in result, result
        assert isinstance(result["block_height"], int) and isinstance(result["block_hash"], str)
        return json.loads(bytes(result["result"]))

    async def block_hash(self) -> bytes:
        doc = await self.rpc("block", {"finality": "final"})
        return b58decode(doc["result"]["header"]["hash"])

    async def access_nonce(self, account: str, key: SigningKey) -> int:
        doc = await self.rpc(
            "query",
            {
                "request_type": "view_access_key",
                "finality": "optimistic",
                "account_id": account,
                "public_key": key.public_key.to_string(),
            },
        )
        nonce: int = doc["result"]["nonce"]
        return nonce

    async def signed_tx(
        self,
        signer: str,
        key: SigningKey,
        method: str,
        args: dict[str, Any],
        *,
        deposit: int = 1,
        nonce: int | None = None,
        block_hash: bytes | None = None,
    ) -> str:
        if nonce is None:
            nonce = await self.access_nonce(signer, key) + 1
        tx = Transaction(
            signer_id=signer,
            public_key=key.public_key,
            nonce=nonce,
            receiver_id="intents.near",
            block_hash=block_hash or await self.block_hash(),
            actions=[FunctionCall(method, json.dumps(args).encode(), 100 * TGAS, deposit)],
        )
        return sign_transaction(tx, key).to_base64()

    async def send(self, signed_b64: str, wait_until: str = "EXECUTED_OPTIMISTIC") -> dict[str, Any]:
        return await self.rpc("send_tx", {"signed_tx_base64": signed_b64, "wait_until": wait_until})

    async def call(
        self, signer: str, key: SigningKey, method: str, args: dict[str, Any], **kw: Any
    ) -> dict[str, Any]:
        doc = await self.send(await self.signed_tx(signer, key, method, args, **kw))
        assert "error" not in doc, doc
        outcome: dict[str, Any] = doc["result"]
        return outcome

    def payload(
        self,
        key: SigningKey,
        signer: str,
        diff: dict[str, int],
        *,
        deadline_ms: int = 60_000,
        nonce: bytes | None = None,
        nonce_deadline_ns: int | None = None,
    ) -> dict[str, Any]:
        deadline_ns = self.clock.now_ns() + deadline_ms * MS
        if nonce is None:
            nd = deadline_ns if nonce_deadline_ns is None else nonce_deadline_ns
            nonce = random_versioned_nonce(self.verifier.current_salt(), nd)
        message = build_intent_message(signer, deadline_ns, [token_diff_intent(diff)])
        return sign_nep413(key, message, nonce).to_json_obj()

    def cancel(
        self, key: SigningKey, signer: str, nonce: bytes, *, deadline_ms: int = 60_000
    ) -> dict[str, Any]:
        """The cancel of a signed payload: same key and nonce, ``intents: []``."""
        message = build_intent_message(signer, self.clock.now_ns() + deadline_ms * MS, [])
        return sign_nep413(key, message, nonce).to_json_obj()


async def make_venue(
    fee_pips: int = 1, *, contract_error_shape: str = "result_error", fault_timeout_s: float = 30.0
) -> tuple[Venue, SimNearRpcServer]:
    clock = ManualClock()
    verifier = Verifier(clock, fee_pips=fee_pips, salt=bytes.fromhex("252812b3"))
    burns: list[tuple[str, str, str, int, str]] = []

    def on_withdraw(tx_hash: str, account: str, asset_id: str, amount: int, destination: str) -> None:
        burns.append((tx_hash, account, asset_id, amount, destination))

    chain = SimNear(clock, verifier, block_time_ms=600, on_withdraw=on_withdraw, lagged_views=True)
    for account, key in ((MM, MM_KEY), (USER, USER_KEY), (RELAY, RELAY_KEY)):
        chain.add_account(account, key.public_key.to_string(), nonce=5)
    verifier.add_public_key(MM, MM_KEY.public_key.to_string())
    verifier.add_public_key(USER, USER_KEY.public_key.to_string())
    server = SimNearRpcServer(
        chain,
        contract_error_shape=contract_error_shape,  # type: ignore[arg-type]
        fault_timeout_s=fault_timeout_s,
    )
    url = await server.start()
    http = aiohttp.ClientSession()
    return Venue(clock, verifier, chain, server, url, http, burns), server


@pytest.fixture
async def venue() -> AsyncIterator[Venue]:
    v, server = await make_venue()
    try:
        yield v
    finally:
        await v.http.close()
        await server.stop()


def status_of(outcome: dict[str, Any]) -> dict[str, Any]:
    status: dict[str, Any] = outcome["status"]
    return status


def panic_of(outcome: dict[str, Any]) -> str:
    failure = status_of(outcome)["Failure"]
    text: str = failure["ActionError"]["kind"]["FunctionCallError"]["ExecutionError"]
    return text


# --- views and blocks ------------------------------------------------------------------------------------


async def test_every_view_over_rpc(venue: Venue) -> None:
    v = venue
    v.verifier.credit(MM, BTC, 123)
    v.verifier.credit(MM, EURE, 45)
    nonce = b"\x07" * 32
    v.verifier.execute_intents([v.cancel(MM_KEY, MM, nonce)])
    pk = MM_KEY.public_key.to_string()

    assert await v.view("mt_balance_of", {"account_id": MM, "token_id": BTC}) == "123"
    assert await v.view(
        "mt_batch_balance_of", {"account_id": MM, "token_ids": [EURE, BTC, "nep141:z.near"]}
    ) == [
        "45",
        "123",
        "0",
    ]
    assert await v.view("has_public_key", {"account_id": MM, "public_key": pk}) is True
    assert await v.view("has_public_key", {"account_id": USER, "public_key": pk}) is False
    assert await v.view("public_keys_of", {"account_id": MM}) == [pk]
    assert await v.view("is_nonce_used", {"account_id": MM, "nonce": b64encode(nonce)}) is True
    assert await v.view("is_nonce_used", {"account_id": MM, "nonce": b64encode(b"\x08" * 32)}) is False
    assert await v.view("current_salt", {}) == "252812b3"
    assert await v.view("is_valid_salt", {"salt": "252812b3"}) is True
    assert await v.view("is_valid_salt", {"salt": "deadbeef"}) is False
    assert await v.view("fee", {}) == 1
    assert await v.view("fee_collector", {}) == "fees.intents.near"
    assert await v.view("is_auth_by_predecessor_id_enabled", {"account_id": MM}) is True
    assert await v.view("mt_tokens_for_owner", {"account_id": MM}) == [{"token_id": BTC}, {"token_id": EURE}]
    sim = await v.view("simulate_intents", {"signed": []})
    assert sim["state"] == {"fee": 1, "current_salt": "252812b3"} and sim["intents_executed"] == []

    # every finality, and a block id by height and by hash; the raw result is a JSON byte array
    for ref in ({"finality": "optimistic"}, {"finality": "near-final"}, {"finality": "final"}):
        raw = await v.view_raw("fee", {}, **ref)
        assert raw["result"]["result"] == list(b"1")
    v.clock.advance(6000 * MS)  # 10 blocks
    head = (await v.rpc("block", {"finality": "optimistic"}))["result"]["header"]
    final = (await v.rpc("block", {"finality": "final"}))["result"]["header"]
    assert final["height"] == head["height"] - 2
    by_height = await v.view_raw("fee", {}, block_id=head["height"] - 3)
    assert by_height["result"]["block_height"] == head["height"] - 3
    by_hash = await v.view_raw("fee", {}, block_id=head["hash"])
    assert by_hash["result"]["block_hash"] == head["hash"]
    assert (await v.rpc("block", {"block_id": head["hash"]}))["result"]["header"]["height"] == head["height"]
    assert (await v.rpc("block", [head["height"]]))["result"]["header"]["hash"] == head["hash"]
    unknown = await v.rpc("block", {"block_id": head["height"] + 100})
    assert unknown["error"]["cause"]["name"] == "UNKNOWN_BLOCK"
    bad_finality = await v.view_raw("fee", {}, finality="soon")
    assert bad_finality["error"]["cause"]["name"] == "PARSE_ERROR"


async def test_view_errors_and_request_errors(venue: Venue) -> None:
    v = venue
    missing_args = await v.view_raw("mt_balance_of", {"account_id": MM})
    assert missing_args["result"]["error"] == (
        'wasm execution failed with error: FunctionCallError(ExecutionError("Smart contract panicked: '
        'Failed to deserialize input from JSON."))'
    )
    no_method = await v.view_raw("nope", {})
    assert "MethodNotFound" in no_method["result"]["error"]
    change = await v.view_raw("execute_intents", {"signed": []})
    assert "ProhibitedInView" in change["result"]["error"]
    other = await v.rpc(
        "query",
        {
            "request_type": "call_function",
            "finality": "final",
            "account_id": "other.near",
            "method_name": "fee",
            "args_base64": "e30=",
        },
    )
    assert other["error"]["cause"]["name"] == "UNKNOWN_ACCOUNT"
    unknown_method = await v.rpc("teleport", {}, req_id=17)
    assert unknown_method["error"]["cause"]["name"] == "METHOD_NOT_FOUND"
    assert unknown_method["error"]["code"] == -32601
    async with v.http.post(v.url + "/", data=b"{not json") as resp:
        doc = await resp.json()
    assert doc["error"]["cause"]["name"] == "PARSE_ERROR" and doc["error"]["code"] == -32700
    key = await v.rpc(
        "query",
        {
            "request_type": "view_access_key",
            "finality": "final",
            "account_id": MM,
            "public_key": USER_KEY.public_key.to_string(),
        },
    )
    assert key["error"]["name"] == "HANDLER_ERROR"
    assert key["error"]["cause"]["name"] == "UNKNOWN_ACCESS_KEY"
    ok_key = await v.rpc(
        "query",
        {
            "request_type": "view_access_key",
            "finality": "final",
            "account_id": MM,
            "public_key": MM_KEY.public_key.to_string(),
        },
    )
    assert ok_key["result"]["nonce"] == 5 and ok_key["result"]["permission"] == "FullAccess"
    status = await v.rpc("status", [])
    assert status["result"]["sync_info"]["latest_block_height"] >= 100_000_000


async def test_contract_panic_in_rpc_error_shape() -> None:
    v, server = await make_venue(contract_error_shape="rpc_error")
    try:
        expired = v.payload(MM_KEY, MM, {BTC: -1, EURE: 1}, deadline_ms=-1)
        doc = await v.view_raw("simulate_intents", {"signed": [expired]})
        assert "result" not in doc
        err = doc["error"]
        assert err["name"] == "HANDLER_ERROR" and err["code"] == -32000
        assert err["cause"]["name"] == "CONTRACT_EXECUTION_ERROR"
        assert "Smart contract panicked: deadline has expired" in err["cause"]["info"]["vm_error"]
        assert "deadline has expired" in err["data"]
    finally:
        await v.http.close()
        await server.stop()


# --- transactions -------------------------------------------------------------------------------------------


async def test_send_tx_add_public_key_then_has_public_key(venue: Venue) -> None:
    v = venue
    new_key = SigningKey.from_seed(b"\x09" * 32).public_key.to_string()
    other_key = SigningKey.from_seed(b"\x0d" * 32).public_key.to_string()
    signed = await v.signed_tx(USER, USER_KEY, "add_public_key", {"public_key": other_key})
    outcome = await v.call(USER, USER_KEY, "add_public_key", {"public_key": new_key}, nonce=6)
    assert status_of(outcome) == {"SuccessValue": ""}
    assert outcome["final_execution_status"] == "EXECUTED_OPTIMISTIC"
    assert outcome["transaction"]["signer_id"] == USER and outcome["transaction"]["nonce"] == 6
    receipt = outcome["receipts_outcome"][0]["outcome"]
    assert receipt["status"] == {"SuccessValue": ""}
    assert any('"event":"public_key_added"' in line for line in receipt["logs"])
    assert outcome["transaction_outcome"]["outcome"]["status"] == {
        "SuccessReceiptId": outcome["receipts_outcome"][0]["id"]
    }
    assert await v.view("has_public_key", {"account_id": USER, "public_key": new_key}) is True
    assert await v.access_nonce(USER, USER_KEY) == 6
    # the earlier-signed tx carries nonce 6 too: now stale
    again = await v.send(signed)
    assert again["error"]["cause"]["name"] == "INVALID_TRANSACTION"
    assert again["error"]["data"]["TxExecutionError"]["InvalidTxError"] == {
        "InvalidNonce": {"ak_nonce": 6, "tx_nonce": 6}
    }
    # tx status lookup, modern and legacy params
    tx_hash = outcome["transaction"]["hash"]
    looked = await v.rpc("tx", {"tx_hash": tx_hash, "sender_account_id": USER, "wait_until": "FINAL"})
    assert looked["result"]["status"] == {"SuccessValue": ""}
    assert looked["result"]["transaction"]["hash"] == tx_hash
    legacy = await v.rpc("tx", [tx_hash, USER])
    assert legacy["result"]["receipts_outcome"][0]["id"] == outcome["receipts_outcome"][0]["id"]
    missing = await v.rpc("tx", {"tx_hash": "11111111111111111111111111111111", "sender_account_id": USER})
    assert missing["error"]["cause"]["name"] == "UNKNOWN_TRANSACTION"
    # adding it twice panics with the contract's text
    dup = await v.call(USER, USER_KEY, "add_public_key", {"public_key": new_key})
    assert (
        panic_of(dup)
        == f"Smart contract panicked: public key '{new_key}' already exists for account '{USER}'"
    )


async def test_ft_withdraw_burn_reports_to_bridge(venue: Venue) -> None:
    v = venue
    v.verifier.credit(MM, BTC, 250_000)
    args = {
        "token": "btc.omft.near",
        "receiver_id": "btc.omft.near",
        "amount": "100000",
        "memo": "WITHDRAW_TO:" + BTC_DEST,
    }
    outcome = await v.call(MM, MM_KEY, "ft_withdraw", args)
    assert status_of(outcome) == {"SuccessValue": base64.b64encode(b'"100000"').decode()}
    tx_hash = outcome["transaction"]["hash"]
    assert v.burns == [(tx_hash, MM, BTC, 100_000, BTC_DEST)]
    assert await v.view("mt_balance_of", {"account_id": MM, "token_id": BTC}) == "150000"
    logs = outcome["receipts_outcome"][0]["outcome"]["logs"]
    burn = json.loads(logs[0].removeprefix("EVENT_JSON:"))
    assert burn["standard"] == "nep245" and burn["event"] == "mt_burn"
    assert burn["data"][0]["amounts"] == ["100000"]
    # a plain withdrawal to another account is no burn; deposit must be exactly 1 yocto
    plain = await v.call(
        MM, MM_KEY, "ft_withdraw", {"token": "btc.omft.near", "receiver_id": "bob.near", "amount": "1"}
    )
    assert "SuccessValue" in status_of(plain) and len(v.burns) == 1
    no_yocto = await v.call(MM, MM_KEY, "ft_withdraw", args, deposit=0)
    assert panic_of(no_yocto) == "Smart contract panicked: Requires attached deposit of exactly 1 yoctoNEAR"
    too_much = await v.call(MM, MM_KEY, "ft_withdraw", {**args, "amount": "149999000"})
    assert panic_of(too_much) == "Smart contract panicked: insufficient balance or overflow"
    assert await v.view("mt_balance_of", {"account_id": MM, "token_id": BTC}) == "149999"
    assert len(v.burns) == 1


async def test_cancel_payloads_over_send_tx_then_is_nonce_used(venue: Venue) -> None:
    v = venue
    v.verifier.credit(MM, BTC, 1000)
    n1, n2, n3 = b"\x31" * 32, b"\x32" * 32, b"\x33" * 32
    cancels = [v.cancel(MM_KEY, MM, n1), v.cancel(MM_KEY, MM, n2)]
    outcome = await v.call(MM, MM_KEY, "execute_intents", {"signed": cancels}, deposit=0)
    assert status_of(outcome) == {"SuccessValue": ""}
    executed = [
        json.loads(line.removeprefix("EVENT_JSON:"))
        for line in outcome["receipts_outcome"][0]["outcome"]["logs"]
    ]
    assert [e["event"] for e in executed] == ["intents_executed"]
    assert [d["nonce"] for d in executed[0]["data"]] == [b64encode(n1), b64encode(n2)]
    assert await v.view("is_nonce_used", {"account_id": MM, "nonce": b64encode(n1)}) is True
    assert await v.view("is_nonce_used", {"account_id": MM, "nonce": b64encode(n2)}) is True
    assert v.verifier.balances(MM) == {BTC: 1000}
    # one used nonce reverts the whole transaction: n3 stays unused
    again = {"signed": [v.cancel(MM_KEY, MM, n3), v.cancel(MM_KEY, MM, n1)]}
    failed = await v.call(MM, MM_KEY, "execute_intents", again, deposit=0)
    assert panic_of(failed) == "Smart contract panicked: nonce was already used"
    assert await v.view("is_nonce_used", {"account_id": MM, "nonce": b64encode(n3)}) is False
    # the removed method fails as any unknown method, over a transaction and a view
    gone = await v.call(MM, MM_KEY, "invalidate_nonces", {"nonces": [b64encode(n3)]})
    kind = status_of(gone)["Failure"]["ActionError"]["kind"]
    assert kind == {"FunctionCallError": {"MethodResolveError": "MethodNotFound"}}
    view = await v.view_raw("invalidate_nonces", {"nonces": [b64encode(n3)]})
    assert "MethodNotFound" in view["result"]["error"]
    assert await v.view("is_nonce_used", {"account_id": MM, "nonce": b64encode(n3)}) is False
    assert v.verifier.balances(MM) == {BTC: 1000}


async def test_rejected_transactions(venue: Venue) -> None:
    v = venue
    pk = SigningKey.from_seed(b"\x0a" * 32).public_key.to_string()
    # a signature by another key over the same transaction
    good = await v.signed_tx(MM, MM_KEY, "add_public_key", {"public_key": pk})
    raw = bytearray(base64.b64decode(good))
    raw[-1] ^= 0x01
    bad_sig = await v.send(base64.b64encode(bytes(raw)).decode())
    assert bad_sig["error"]["cause"]["name"] == "INVALID_TRANSACTION"
    assert bad_sig["error"]["data"]["TxExecutionError"]["InvalidTxError"] == "InvalidSignature"
    assert await v.view("has_public_key", {"account_id": MM, "public_key": pk}) is False
    # reused access-key nonce (the key starts at 5)
    stale = await v.send(await v.signed_tx(MM, MM_KEY, "add_public_key", {"public_key": pk}, nonce=5))
    assert stale["error"]["data"]["TxExecutionError"]["InvalidTxError"] == {
        "InvalidNonce": {"ak_nonce": 5, "tx_nonce": 5}
    }
    # unknown block hash
    expired = await v.send(
        await v.signed_tx(MM, MM_KEY, "add_public_key", {"public_key": pk}, block_hash=b"\x01" * 32)
    )
    assert expired["error"]["data"]["TxExecutionError"]["InvalidTxError"] == "Expired"
    # a key the chain does not know
    stranger = SigningKey.from_seed(b"\x0b" * 32)
    unknown = await v.send(await v.signed_tx(MM, stranger, "add_public_key", {"public_key": pk}, nonce=1))
    assert (
        "AccessKeyNotFound"
        in unknown["error"]["data"]["TxExecutionError"]["InvalidTxError"]["InvalidAccessKeyError"]
    )
    # undecodable bytes
    garbage = await v.send(base64.b64encode(b"\x00\x01\x02").decode())
    assert garbage["error"]["cause"]["name"] == "PARSE_ERROR"
    assert await v.view("has_public_key", {"account_id": MM, "public_key": pk}) is False
    assert await v.access_nonce(MM, MM_KEY) == 5
    # the valid original still goes through afterwards, once (resubmission returns the same outcome)
    first = await v.send(good)
    second = await v.send(good)
    assert first["result"]["transaction"]["hash"] == second["result"]["transaction"]["hash"]
    assert status_of(second["result"]) == {"SuccessValue": ""}


async def test_broadcast_tx_commit_legacy_and_wait_until(venue: Venue) -> None:
    v = venue
    signed = await v.signed_tx(RELAY, RELAY_KEY, "execute_intents", {"signed": []}, deposit=0)
    doc = await v.rpc("broadcast_tx_commit", [signed])
    assert status_of(doc["result"]) == {"SuccessValue": ""}
    brief = await v.send(
        await v.signed_tx(RELAY, RELAY_KEY, "execute_intents", {"signed": []}, deposit=0), "NONE"
    )
    assert brief["result"] == {"final_execution_status": "NONE"}
    deposit = await v.call(RELAY, RELAY_KEY, "execute_intents", {"signed": []}, deposit=1)
    assert panic_of(deposit) == "Smart contract panicked: Method execute_intents doesn't accept deposit"
    # a transfer action and an unknown method
    tx = Transaction(
        RELAY,
        RELAY_KEY.public_key,
        await v.access_nonce(RELAY, RELAY_KEY) + 1,
        "intents.near",
        await v.block_hash(),
        [Transfer(5)],
    )
    transfer = await v.send(sign_transaction(tx, RELAY_KEY).to_base64())
    assert status_of(transfer["result"]) == {"SuccessValue": ""}
    missing = await v.call(RELAY, RELAY_KEY, "steal_everything", {})
    kind = status_of(missing)["Failure"]["ActionError"]["kind"]
    assert kind == {"FunctionCallError": {"MethodResolveError": "MethodNotFound"}}


# --- execute_intents round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("fee_pips", [1, 100])
async def test_two_party_swap_round_trip(fee_pips: int) -> None:
    v, server = await make_venue(fee_pips)
    try:
        v.verifier.credit(MM, BTC, 10**8)
        v.verifier.credit(USER, EURE, 10**22)
        amount_in, amount_out = 950 * 10**18, 10**6
        mm_diff = {EURE: amount_in, BTC: -amount_out}
        user_diff = counterparty_diff(mm_diff, fee_pips)
        batch = [v.payload(MM_KEY, MM, mm_diff), v.payload(USER_KEY, USER, user_diff)]
        sim = await v.view("simulate_intents", {"signed": batch})
        assert "invariant_violated" not in sim and sim["state"]["fee"] == fee_pips

        outcome = await v.call(RELAY, RELAY_KEY, "execute_intents", {"signed": batch}, deposit=0)
        assert status_of(outcome) == {"SuccessValue": ""}
        fee_btc = (amount_out * fee_pips + 10**6 - 1) // 10**6
        fee_eure = (-user_diff[EURE] * fee_pips + 10**6 - 1) // 10**6
        assert user_diff[BTC] == amount_out - fee_btc
        assert -user_diff[EURE] - fee_eure == amount_in
        assert await v.view("mt_batch_balance_of", {"account_id": MM, "token_ids": [BTC, EURE]}) == [
            str(10**8 - amount_out),
            str(amount_in),
        ]
        assert await v.view("mt_batch_balance_of", {"account_id": USER, "token_ids": [BTC, EURE]}) == [
            str(amount_out - fee_btc),
            str(10**22 + user_diff[EURE]),
        ]
        collector = await v.view("fee_collector", {})
        assert await v.view("mt_batch_balance_of", {"account_id": collector, "token_ids": [BTC, EURE]}) == [
            str(fee_btc),
            str(fee_eure),
        ]
        logs = outcome["receipts_outcome"][0]["outcome"]["logs"]
        events = [json.loads(line.removeprefix("EVENT_JSON:")) for line in logs]
        assert [e["event"] for e in events] == ["token_diff", "token_diff", "intents_executed"]
        assert events[0]["data"][0]["fees_collected"] == {BTC: str(fee_btc)}
        hashes = [d["intent_hash"] for d in events[2]["data"]]
        assert hashes == [e["intent_hash"] for e in sim["intents_executed"]]
        for p, account in zip(batch, (MM, USER), strict=True):
            assert (
                await v.view("is_nonce_used", {"account_id": account, "nonce": p["payload"]["nonce"]}) is True
            )
    finally:
        await v.http.close()
        await server.stop()


async def test_execute_intents_rejections_with_exact_strings(venue: Venue) -> None:
    v = venue
    v.verifier.credit(MM, BTC, 1000)
    diff = {BTC: -10, EURE: 10}

    async def failure(payloads: list[dict[str, Any]]) -> str:
        outcome = await v.call(RELAY, RELAY_KEY, "execute_intents", {"signed": payloads}, deposit=0)
        return panic_of(outcome).removeprefix("Smart contract panicked: ")

    stranger = SigningKey.from_seed(b"\x0c" * 32)
    assert await failure([v.payload(stranger, MM, diff)]) == (
        f"public key '{stranger.public_key.to_string()}' doesn't exist for account '{MM}'"
    )
    assert await failure([v.payload(MM_KEY, MM, diff, deadline_ms=-1)]) == "deadline has expired"
    bad_salt = encode_versioned_nonce(b"\x00\x11\x22\x33", v.clock.now_ns() + 60_000 * MS, b"\x05" * 15)
    assert await failure([v.payload(MM_KEY, MM, diff, nonce=bad_salt)]) == "invalid salt"
    short = v.payload(MM_KEY, MM, diff, nonce_deadline_ns=v.clock.now_ns() + 1000 * MS)
    assert await failure([short]) == "deadline is greater than nonce"
    assert await failure([v.payload(MM_KEY, MM, {BTC: -1001, EURE: 1})]) == "insufficient balance or overflow"

    used = b"\x44" * 32
    await v.call(MM, MM_KEY, "execute_intents", {"signed": [v.cancel(MM_KEY, MM, used)]}, deposit=0)
    assert await failure([v.payload(MM_KEY, MM, diff, nonce=used)]) == "nonce was already used"
    assert v.verifier.balances(MM) == {BTC: 1000}


async def test_invariant_violating_batch_fails_whole(venue: Venue) -> None:
    v = venue
    v.verifier.credit(MM, BTC, 10**8)
    v.verifier.credit(USER, EURE, 10**22)
    mm_diff = {EURE: 10**18, BTC: -(10**6)}
    good = [v.payload(MM_KEY, MM, mm_diff), v.payload(USER_KEY, USER, counterparty_diff(mm_diff, 1))]
    lonely = v.payload(MM_KEY, MM, {BTC: -5, EURE: 5})
    batch = [*good, lonely]
    sim = await v.view("simulate_intents", {"signed": batch})
    assert sim["invariant_violated"] == {
        "error": "unmatched_deltas",
        "unmatched_deltas": {BTC: "-4", EURE: "5"},
    }
    outcome = await v.call(RELAY, RELAY_KEY, "execute_intents", {"signed": batch}, deposit=0)
    assert panic_of(outcome) == (
        'Smart contract panicked: invariant violated: {"error":"unmatched_deltas",'
        f'"unmatched_deltas":{{"{BTC}":"-4","{EURE}":"5"}}}}'
    )
    for account, balances in (
        (MM, [str(10**8), "0"]),
        (USER, ["0", str(10**22)]),
        ("fees.intents.near", ["0", "0"]),
    ):
        assert (
            await v.view("mt_batch_balance_of", {"account_id": account, "token_ids": [BTC, EURE]}) == balances
        )
    for p, account in zip(batch, (MM, USER, MM), strict=True):
        assert await v.view("is_nonce_used", {"account_id": account, "nonce": p["payload"]["nonce"]}) is False
    # the failed transaction is still recorded and queryable
    looked = await v.rpc("tx", {"tx_hash": outcome["transaction"]["hash"], "sender_account_id": RELAY})
    assert "Failure" in looked["result"]["status"]


async def test_submit_internal_records_a_real_transaction(venue: Venue) -> None:
    v = venue
    v.verifier.credit(MM, BTC, 10**8)
    v.verifier.credit(USER, EURE, 10**22)
    mm_diff = {EURE: 10**18, BTC: -(10**6)}
    batch = [v.payload(MM_KEY, MM, mm_diff), v.payload(USER_KEY, USER, counterparty_diff(mm_diff, 1))]
    record = await v.chain.submit_internal(RELAY, "intents.near", "execute_intents", {"signed": batch})
    assert record.success and v.chain.tx_record(record.tx_hash) is record
    looked = await v.rpc("tx", {"tx_hash": record.tx_hash, "sender_account_id": RELAY})
    assert looked["result"]["status"] == {"SuccessValue": ""}
    assert len(looked["result"]["receipts_outcome"][0]["outcome"]["logs"]) == 3
    with pytest.raises(VerifierError, match=r"^nonce was already used$"):
        await v.chain.submit_internal(RELAY, "intents.near", "execute_intents", {"signed": batch})
    failed = v.chain.transactions[-1]
    assert not failed.success and failed.error == "nonce was already used"
    assert (await v.rpc("tx", [failed.tx_hash, RELAY]))["result"]["status"]["Failure"]


# --- faults -----------------------------------------------------------------------------------------------


async def test_faults_500_rpc_error_timeout_and_latency() -> None:
    v, server = await make_venue(fault_timeout_s=0.5)
    try:
        server.fail_next(1, "500")
        async with v.http.post(
            v.url + "/", json={"jsonrpc": "2.0", "id": 1, "method": "status", "params": []}
        ) as r:
            assert r.status == 500
        server.fail_next(1, "rpc_error", method="block")
        assert (await v.rpc("status", []))["result"]  # only `block` is affected
        err = await v.rpc("block", {"finality": "final"})
        assert err["error"]["name"] == "INTERNAL_ERROR"
        server.fail_next(1, "timeout")
        with pytest.raises(asyncio.TimeoutError):
            async with asyncio.timeout(0.1):
                await v.rpc("block", {"finality": "final"})
        assert (await v.rpc("block", {"finality": "final"}))["result"]["header"]["height"] > 0
        server.set_latency_ms(50)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await v.rpc("status", [])
        assert loop.time() - started >= 0.045
        server.set_latency_ms(0)
        server.set_fault_rate(1.0, "rpc_error")
        assert "error" in await v.rpc("status", [])
        server.set_fault_rate(0.0)
        assert server.calls["status"] >= 4
    finally:
        await v.http.close()
        await server.stop()


async def test_tx_timeout_fault_executes_then_status_finds_it(venue: Venue) -> None:
    v = venue
    n = b64encode(b"\x55" * 32)
    cancel = {"signed": [v.cancel(MM_KEY, MM, b"\x55" * 32)]}
    signed = await v.signed_tx(MM, MM_KEY, "execute_intents", cancel, deposit=0)
    v.server.fail_next(1, "tx_timeout", method="send_tx")
    doc = await v.send(signed)
    assert doc["error"]["cause"]["name"] == "TIMEOUT_ERROR"
    assert await v.view("is_nonce_used", {"account_id": MM, "nonce": n}) is True
    again = await v.send(signed)  # resubmitting the same signed tx is idempotent
    assert status_of(again["result"]) == {"SuccessValue": ""}
    assert len(v.chain.transactions) == 1


async def test_timeout_fault_released_on_stop() -> None:
    v, server = await make_venue(fault_timeout_s=30.0)
    try:
        server.fail_next(1, "timeout")
        pending = asyncio.create_task(v.rpc("status", []))
        await asyncio.sleep(0.1)
        assert not pending.done()
        await server.stop()
        doc = await asyncio.wait_for(pending, 5)
        assert doc["error"]["cause"]["name"] == "TIMEOUT_ERROR"
    finally:
        await v.http.close()
        await server.stop()


# --- lagged views (issue 16: chain realism) --------------------------------------------------------


async def test_final_view_misses_a_fill_the_latest_view_shows(venue: Venue) -> None:
    v = venue
    v.verifier.credit(MM, BTC, 10**8)  # at genesis: the genesis state, final at once
    v.verifier.credit(USER, EURE, 10**22)
    v.clock.advance(10 * 600 * MS)
    mm_diff = {EURE: 950 * 10**18, BTC: -(10**6)}
    batch = [v.payload(MM_KEY, MM, mm_diff), v.payload(USER_KEY, USER, counterparty_diff(mm_diff, 1))]
    outcome = await v.call(RELAY, RELAY_KEY, "execute_intents", {"signed": batch}, deposit=0)
    assert status_of(outcome) == {"SuccessValue": ""}
    fill_height = v.chain.tx_record(outcome["transaction"]["hash"]).block_height  # type: ignore[union-attr]
    args = {"account_id": MM, "token_ids": [BTC, EURE]}
    before, after = [str(10**8), "0"], [str(10**8 - 10**6), str(950 * 10**18)]
    nonce = batch[0]["payload"]["nonce"]

    assert await v.view("mt_batch_balance_of", args, finality="optimistic") == after
    assert await v.view("mt_batch_balance_of", args, finality="final") == before  # two blocks behind
    assert await v.view("is_nonce_used", {"account_id": MM, "nonce": nonce}, finality="final") is False
    assert await v.view("mt_batch_balance_of", args, block_id=fill_height) == after
    assert await v.view("mt_batch_balance_of", args, block_id=fill_height - 1) == before
    final = (await v.view_raw("mt_batch_balance_of", args, finality="final"))["result"]
    assert final["block_height"] == v.chain.height - 2 < fill_height

    v.clock.advance(600 * MS)
    assert await v.view("mt_batch_balance_of", args, finality="final") == before
    assert await v.view("mt_batch_balance_of", args, finality="near-final") == after
    v.clock.advance(600 * MS)  # the fill's block is final now
    assert await v.view("mt_batch_balance_of", args, finality="final") == after
    assert await v.view("is_nonce_used", {"account_id": MM, "nonce": nonce}, finality="final") is True
    assert v.verifier.balance_of(MM, BTC) == 10**8 - 10**6  # the past views never touched the state


async def test_past_simulate_does_not_touch_the_live_nonces(venue: Venue) -> None:
    v = venue
    v.verifier.credit(MM, BTC, 10**8)
    v.verifier.credit(USER, EURE, 10**22)
    v.clock.advance(10 * 600 * MS)
    mm_diff = {EURE: 950 * 10**18, BTC: -(10**6)}
    batch = [v.payload(MM_KEY, MM, mm_diff), v.payload(USER_KEY, USER, counterparty_diff(mm_diff, 1))]
    await v.call(RELAY, RELAY_KEY, "execute_intents", {"signed": batch}, deposit=0)
    # at `final` the nonces are not used yet: the batch simulates fine there, and nothing changes
    sim = await v.view("simulate_intents", {"signed": batch}, finality="final")
    assert "invariant_violated" not in sim and len(sim["intents_executed"]) == 2
    doc = await v.view_raw("simulate_intents", {"signed": batch}, finality="optimistic")
    assert "nonce was already used" in doc["result"]["error"]
    assert v.verifier.is_nonce_used(MM, base64.b64decode(batch[0]["payload"]["nonce"]))


async def test_lag_setting_and_garbage_collected_history() -> None:
    clock = ManualClock()
    verifier = Verifier(clock, salt=bytes.fromhex("252812b3"))
    chain = SimNear(
        clock, verifier, block_time_ms=600, final_lag_blocks=5, history_blocks=10, lagged_views=True
    )
    clock.advance(20 * 600 * MS)
    verifier.credit(MM, BTC, 7)
    assert chain.block_for_finality("final").height == chain.height - 5
    assert chain.state_at(chain.height - 5).balance_of(MM, BTC) == 0
    assert chain.state_at(chain.height).balance_of(MM, BTC) == 7
    clock.advance(20 * 600 * MS)
    verifier.credit(MM, BTC, 1)  # prunes the history older than ten blocks
    with pytest.raises(Exception, match="no longer kept"):
        chain.state_at(chain.height - 30)
    assert chain.state_at(chain.height - 5).balance_of(MM, BTC) == 7
    flat = SimNear(clock, Verifier(clock))  # a bare chain: every view reads the latest state
    flat.verifier.credit(MM, BTC, 3)
    assert flat.state_at(flat.height - 2).balance_of(MM, BTC) == 3
