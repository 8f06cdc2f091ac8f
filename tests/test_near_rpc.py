"""NearRpcClient, VerifierClient and TransactionSender against a local fake NEAR node.

The fake node is an aiohttp server on 127.0.0.1 that answers with the shapes nearcore sends
(recorded-payload fake of a remote venue): success, both contract-panic shapes, UNKNOWN_ACCESS_KEY,
InvalidNonce, Failure outcomes. Extra servers answer HTTP 500 or never answer, to prove failover.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from intents_mm.clock import ManualClock
from intents_mm.errors import ContractError, RpcError, TransportError
from intents_mm.near.encoding import b58encode, b64decode, b64encode
from intents_mm.near.keys import SigningKey
from intents_mm.near.rpc import (
    AccessKeyView,
    BlockView,
    InvalidNonceError,
    NearRpcClient,
    UnknownAccessKeyError,
)
from intents_mm.near.transaction import (
    FunctionCall,
    SignedTransaction,
    Transaction,
    deserialize_signed_transaction,
    sign_transaction,
    transaction_hash,
)
from intents_mm.near.verifier import TransactionSender, VerifierClient

ACCOUNT = "solver.near"
KEY = SigningKey.from_seed(bytes(range(32)))
BLOCK_HASH = b58encode(bytes([7]) * 32)


def handler_error(cause: str, info: object, data: object) -> dict[str, Any]:
    return {
        "name": "HANDLER_ERROR",
        "cause": {"name": cause, "info": info},
        "code": -32000,
        "message": "Server error",
        "data": data,
    }


@dataclass
class FakeNode:
    """A scripted NEAR node. ``views`` maps a method name to a function of the decoded args."""

    views: dict[str, Callable[[dict[str, Any]], object]] = field(default_factory=dict)
    panic_shape: str = "error"  # "error" (JSON-RPC error) or "result" (older nodes: result.error)
    ak_nonce: int = 40  # committed access-key nonce before the in-flight transactions
    height: int = 1000
    keys: set[str] = field(default_factory=lambda: {KEY.public_key.to_string()})
    requests: list[dict[str, Any]] = field(default_factory=list)
    txs: list[SignedTransaction] = field(default_factory=list)
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    used_nonces: set[int] = field(default_factory=set)
    bump_nonce_before_next_tx: int = 0
    view_delay_s: float = 0.0

    def current_nonce(self) -> int:
        return max([self.ak_nonce, *self.used_nonces])

    def answer(self, result: object = None, error: object = None) -> web.Response:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": "dontcare"}
        if error is not None:
            body["error"] = error
        else:
            body["result"] = result
        return web.json_response(body)

    async def handle(self, request: web.Request) -> web.Response:
        doc = await request.json()
        self.requests.append(doc)
        assert doc["jsonrpc"] == "2.0" and doc["id"] == "dontcare"
        method, params = doc["method"], doc["params"]
        if method == "query" and params["request_type"] == "call_function":
            return self.call_function(params)
        if method == "query" and params["request_type"] == "view_access_key":
            if self.view_delay_s:
                await asyncio.sleep(self.view_delay_s)
            if params["public_key"] not in self.keys:
                info = {
                    "public_key": params["public_key"],
                    "block_height": self.height,
                    "block_hash": BLOCK_HASH,
                }
                data = f"Access key for public key {params['public_key']} has never been observed on the node"
                return self.answer(error=handler_error("UNKNOWN_ACCESS_KEY", info, data))
            return self.answer(
                {
                    "nonce": self.current_nonce(),
                    "permission": "FullAccess",
                    "block_height": self.height,
                    "block_hash": BLOCK_HASH,
                }
            )
        if method == "block":
            return self.answer({"header": {"height": self.height, "hash": BLOCK_HASH}, "chunks": []})
        if method in ("send_tx", "broadcast_tx_commit"):
            b64 = params["signed_tx_base64"] if method == "send_tx" else params[0]
            return self.submit(deserialize_signed_transaction(b64decode(b64)))
        if method == "tx":
            return self.answer(self.outcomes[params["tx_hash"]])
        return self.answer(
            error={"name": "REQUEST_VALIDATION_ERROR", "code": -32601, "message": "Method not found"}
        )

    def call_function(self, params: dict[str, Any]) -> web.Response:
        name = params["method_name"]
        args = json.loads(b64decode(params["args_base64"]))
        if name not in self.views:
            panic = f"wasm execution failed with error: MethodResolveError(MethodNotFound) {name}"
            return self.panic(panic)
        try:
            value = self.views[name](args)
        except ValueError as exc:
            guest_panic = f'HostError(GuestPanic {{ panic_msg: "{exc}" }})'
            return self.panic(f"wasm execution failed with error: FunctionCallError({guest_panic})")
        raw = b"" if value is None else json.dumps(value).encode()
        return self.answer(
            {"result": list(raw), "logs": [], "block_height": self.height, "block_hash": BLOCK_HASH}
        )

    def panic(self, text: str) -> web.Response:
        if self.panic_shape == "result":
            return self.answer(
                {"error": text, "logs": [], "block_height": self.height, "block_hash": BLOCK_HASH}
            )
        info = {"vm_error": text, "block_height": self.height, "block_hash": BLOCK_HASH}
        return self.answer(error=handler_error("CONTRACT_EXECUTION_ERROR", info, text))

    def submit(self, stx: SignedTransaction) -> web.Response:
        tx = stx.transaction
        assert tx.public_key.verify(transaction_hash(tx), stx.signature), "bad tx signature"
        if self.bump_nonce_before_next_tx:
            self.ak_nonce = self.current_nonce() + self.bump_nonce_before_next_tx
            self.bump_nonce_before_next_tx = 0
        # Transactions in flight together land in one chunk ordered by nonce (as nearcore's pool
        # does), so only a nonce at or below the committed one, or a reused nonce, is rejected.
        if tx.nonce <= self.ak_nonce or tx.nonce in self.used_nonces:
            invalid = {"InvalidNonce": {"ak_nonce": self.current_nonce(), "tx_nonce": tx.nonce}}
            return self.answer(
                error=handler_error(
                    "INVALID_TRANSACTION",
                    {"InvalidTxError": invalid},
                    {"TxExecutionError": {"InvalidTxError": invalid}},
                )
            )
        self.used_nonces.add(tx.nonce)
        self.txs.append(stx)
        action = tx.actions[0]
        assert isinstance(action, FunctionCall)
        tx_hash = stx.hash_b58()
        ok: dict[str, Any] = {"SuccessValue": b64encode(b'"done"')}
        panic = {
            "ActionError": {
                "index": 0,
                "kind": {
                    "FunctionCallError": {
                        "ExecutionError": "Smart contract panicked: insufficient balance or overflow"
                    }
                },
            }
        }
        status = {"Failure": panic} if action.method_name == "fail_me" else ok
        receipt_status = {"Failure": panic} if action.method_name == "fail_receipt" else ok
        outcome = {
            "status": status,
            "transaction": {"hash": tx_hash, "signer_id": tx.signer_id, "nonce": tx.nonce},
            "transaction_outcome": {
                "id": tx_hash,
                "outcome": {"logs": [], "status": {"SuccessReceiptId": "x"}},
            },
            "receipts_outcome": [
                {"id": "r1", "outcome": {"logs": ["EVENT_JSON:{}"], "status": receipt_status}},
            ],
            "final_execution_status": "EXECUTED_OPTIMISTIC",
        }
        self.outcomes[tx_hash] = outcome
        return self.answer(outcome)


async def start_app(handler: Callable[[web.Request], Any]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/"


@dataclass
class Servers:
    node: FakeNode
    good_url: str
    error500_url: str
    hanging_url: str
    hits_500: list[int]
    hanging_connections: list[int]


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    node = FakeNode()
    hits_500 = [0]

    async def error500(request: web.Request) -> web.Response:
        hits_500[0] += 1
        return web.Response(status=500, text="upstream exploded")

    release = asyncio.Event()
    hanging_connections = [0]

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hanging_connections[0] += 1
        await release.wait()
        writer.close()

    good_runner, good_url = await start_app(node.handle)
    bad_runner, bad_url = await start_app(error500)
    hang_server = await asyncio.start_server(hang, "127.0.0.1", 0)
    hang_port = hang_server.sockets[0].getsockname()[1]
    try:
        yield Servers(
            node, good_url, bad_url, f"http://127.0.0.1:{hang_port}/", hits_500, hanging_connections
        )
    finally:
        release.set()
        hang_server.close()
        await hang_server.wait_closed()
        await good_runner.cleanup()
        await bad_runner.cleanup()


@pytest.fixture
async def client(servers: Servers) -> AsyncIterator[NearRpcClient]:
    async with NearRpcClient([servers.good_url], timeout_s=2.0) as rpc:
        yield rpc


# ----------------------------------------------------------------------------------- JSON-RPC core


async def test_call_function_success_and_request_shape(servers: Servers, client: NearRpcClient) -> None:
    servers.node.views["mt_batch_balance_of"] = lambda args: (
        ["5", "0"] if args["account_id"] == ACCOUNT else []
    )
    value, height = await client.call_function(
        "intents.near", "mt_batch_balance_of", {"account_id": ACCOUNT, "token_ids": ["a", "b"]}
    )
    assert value == ["5", "0"]
    assert height == 1000
    sent = servers.node.requests[-1]
    assert sent["method"] == "query"
    assert sent["params"]["request_type"] == "call_function"
    assert sent["params"]["finality"] == "final"
    assert sent["params"]["account_id"] == "intents.near"
    assert json.loads(b64decode(sent["params"]["args_base64"])) == {
        "account_id": ACCOUNT,
        "token_ids": ["a", "b"],
    }


async def test_empty_args_are_e30(servers: Servers, client: NearRpcClient) -> None:
    servers.node.views["fee"] = lambda args: 1
    await client.call_function("intents.near", "fee", {})
    assert servers.node.requests[-1]["params"]["args_base64"] == "e30="


@pytest.mark.parametrize("shape", ["error", "result"])
async def test_contract_panic_both_shapes(servers: Servers, client: NearRpcClient, shape: str) -> None:
    servers.node.panic_shape = shape

    def boom(args: dict[str, Any]) -> object:
        raise ValueError("insufficient balance or overflow")

    servers.node.views["explode"] = boom
    with pytest.raises(ContractError, match="insufficient balance or overflow") as info:
        await client.call_function("intents.near", "explode", {})
    assert "\n" not in str(info.value)
    if shape == "error":
        assert info.value.code == "CONTRACT_EXECUTION_ERROR"


async def test_view_access_key_and_unknown_key(servers: Servers, client: NearRpcClient) -> None:
    view = await client.view_access_key(ACCOUNT, KEY.public_key)
    assert view == AccessKeyView(nonce=40, permission="FullAccess", block_height=1000, block_hash=BLOCK_HASH)
    other = SigningKey.generate().public_key
    with pytest.raises(UnknownAccessKeyError) as info:
        await client.view_access_key(ACCOUNT, other)
    assert info.value.code == "UNKNOWN_ACCESS_KEY"
    assert isinstance(info.value, RpcError)
    assert not isinstance(info.value, ContractError)


async def test_block(client: NearRpcClient) -> None:
    assert await client.block() == BlockView(height=1000, hash_b58=BLOCK_HASH)


async def test_unknown_method_is_rpc_error(client: NearRpcClient) -> None:
    with pytest.raises(RpcError) as info:
        await client.request("no_such_method", {})
    assert not isinstance(info.value, ContractError)
    assert info.value.code == -32601


# ------------------------------------------------------------------------------------------ failover


async def test_failover_on_500_and_sticky_good_endpoint(servers: Servers) -> None:
    servers.node.views["fee"] = lambda args: 1
    async with NearRpcClient([servers.error500_url, servers.good_url], timeout_s=2.0) as rpc:
        assert await rpc.call_function("intents.near", "fee", {}) == (1, 1000)
        assert servers.hits_500[0] == 1
        assert await rpc.call_function("intents.near", "fee", {}) == (1, 1000)
        assert servers.hits_500[0] == 1  # round robin starts at the last good endpoint
    assert len(servers.node.requests) == 2


async def test_failover_on_timeout(servers: Servers) -> None:
    servers.node.views["fee"] = lambda args: 7
    async with NearRpcClient([servers.hanging_url, servers.good_url], timeout_s=0.3) as rpc:
        assert await rpc.call_function("intents.near", "fee", {}) == (7, 1000)
    assert servers.hanging_connections[0] == 1


async def test_all_endpoints_fail(servers: Servers) -> None:
    secret_url = servers.error500_url + "?apiKey=SECRET123"
    async with NearRpcClient([secret_url, servers.hanging_url], timeout_s=0.3) as rpc:
        with pytest.raises(TransportError) as info:
            await rpc.block()
    text = str(info.value)
    assert "all 2 endpoints failed" in text
    assert "HTTP 500" in text and "timed out" in text
    assert "SECRET123" not in text


async def test_connection_refused_fails_over(servers: Servers) -> None:
    dead_runner, dead_url = await start_app(servers.node.handle)
    await dead_runner.cleanup()  # nothing listens there any more
    async with NearRpcClient([dead_url, servers.good_url], timeout_s=2.0) as rpc:
        assert (await rpc.block()).height == 1000


# ------------------------------------------------------------------------------------------ Verifier


async def test_verifier_views(servers: Servers, client: NearRpcClient) -> None:
    pk = KEY.public_key.to_string()
    views = servers.node.views
    views["mt_batch_balance_of"] = lambda args: ["3000004000004000006", "0"]
    views["has_public_key"] = lambda args: args["public_key"] == pk and args["account_id"] == ACCOUNT
    views["public_keys_of"] = lambda args: [pk]
    views["is_nonce_used"] = lambda args: args["nonce"] == b64encode(bytes(32))
    views["current_salt"] = lambda args: "252812b3"
    views["is_valid_salt"] = lambda args: args["salt"] == "252812b3"
    views["fee"] = lambda args: 100
    views["simulate_intents"] = lambda args: {
        "intents_executed": [],
        "logs": [],
        "state": {"fee": 100, "current_salt": "252812b3"},
        "echo": args["signed"],
    }
    verifier = VerifierClient(client)
    balances, height = await verifier.mt_batch_balance_of(ACCOUNT, ["nep141:a", "nep141:b"])
    assert balances == {"nep141:a": 3000004000004000006, "nep141:b": 0} and height == 1000
    assert await verifier.has_public_key(ACCOUNT, KEY.public_key) is True
    assert await verifier.has_public_key("other.near", pk) is False
    assert await verifier.public_keys_of(ACCOUNT) == [pk]
    assert await verifier.is_nonce_used(ACCOUNT, bytes(32)) is True
    assert await verifier.is_nonce_used(ACCOUNT, bytes([1]) * 32) is False
    assert await verifier.current_salt() == bytes.fromhex("252812b3")
    assert await verifier.is_valid_salt(bytes.fromhex("252812b3")) is True
    assert await verifier.is_valid_salt(bytes(4)) is False
    assert await verifier.fee() == 100
    report = await verifier.simulate_intents([{"standard": "nep413"}])
    assert report["state"]["current_salt"] == "252812b3"
    assert report["echo"] == [{"standard": "nep413"}]


@pytest.mark.parametrize(
    ("method", "bad"),
    [
        ("mt_batch_balance_of", ["1"]),
        ("mt_batch_balance_of", [1, 2]),
        ("mt_batch_balance_of", ["-1", "2"]),
        ("mt_batch_balance_of", ["1", str(2**128)]),
        ("has_public_key", "true"),
        ("public_keys_of", ["not a key"]),
        ("current_salt", "25281"),
        ("current_salt", "zz2812b3"),
        ("fee", "100"),
        ("fee", 1.5),
        ("fee", True),
        ("simulate_intents", []),
    ],
)
async def test_verifier_rejects_malformed_answers(
    servers: Servers, client: NearRpcClient, method: str, bad: object
) -> None:
    servers.node.views[method] = lambda args: bad
    verifier = VerifierClient(client)
    with pytest.raises(RpcError, match="malformed"):
        if method == "mt_batch_balance_of":
            await verifier.mt_batch_balance_of(ACCOUNT, ["a", "b"])
        elif method == "has_public_key":
            await verifier.has_public_key(ACCOUNT, KEY.public_key)
        elif method == "public_keys_of":
            await verifier.public_keys_of(ACCOUNT)
        elif method == "current_salt":
            await verifier.current_salt()
        elif method == "fee":
            await verifier.fee()
        else:
            await verifier.simulate_intents([])


# ------------------------------------------------------------------------------------- transactions


async def test_sender_call_success(servers: Servers, client: NearRpcClient) -> None:
    sender = TransactionSender(client, ACCOUNT, KEY)
    result = await sender.call("intents.near", "ft_withdraw", {"token": "btc.omft.near", "amount": "1"})
    assert result.outcome["status"] == {"SuccessValue": b64encode(b'"done"')}
    [stx] = servers.node.txs
    assert result.tx_hash == stx.hash_b58()
    tx = stx.transaction
    assert (tx.signer_id, tx.receiver_id, tx.nonce) == (ACCOUNT, "intents.near", 41)
    assert tx.block_hash == bytes([7]) * 32
    action = tx.actions[0]
    assert isinstance(action, FunctionCall)
    assert action.args == b'{"token":"btc.omft.near","amount":"1"}'
    assert (action.gas, action.deposit) == (100 * 10**12, 1)
    sent = servers.node.requests[-1]
    assert sent["method"] == "send_tx" and sent["params"]["wait_until"] == "EXECUTED_OPTIMISTIC"
    # status polling returns the same outcome
    assert await client.tx_status(result.tx_hash, ACCOUNT) == result.outcome
    assert "SECRET" not in repr(sender) and KEY.to_secret_string() not in repr(sender)


@pytest.mark.parametrize("method", ["fail_me", "fail_receipt"])
async def test_sender_failure_outcomes(servers: Servers, client: NearRpcClient, method: str) -> None:
    sender = TransactionSender(client, ACCOUNT, KEY)
    with pytest.raises(ContractError, match="insufficient balance or overflow"):
        await sender.call("intents.near", method, {})
    assert len(servers.node.txs) == 1  # executed (and failed) once, not retried


async def test_sender_concurrent_calls_get_distinct_nonces(servers: Servers, client: NearRpcClient) -> None:
    servers.node.view_delay_s = 0.05  # let every call queue on the nonce lock while the first fetches
    sender = TransactionSender(client, ACCOUNT, KEY)
    results = await asyncio.gather(
        *(sender.call("intents.near", "add_public_key", {"i": i}) for i in range(8))
    )
    nonces = [stx.transaction.nonce for stx in servers.node.txs]
    assert len(results) == 8
    assert sorted(nonces) == list(range(41, 49))
    access_key_reads = [
        r
        for r in servers.node.requests
        if r["method"] == "query" and r["params"]["request_type"] == "view_access_key"
    ]
    assert len(access_key_reads) == 1  # fetched once, then counted locally
    assert len({r.tx_hash for r in results}) == 8


async def test_sender_invalid_nonce_refetches_and_retries(servers: Servers, client: NearRpcClient) -> None:
    sender = TransactionSender(client, ACCOUNT, KEY)
    await sender.call("intents.near", "noop", {})  # local counter now 41
    servers.node.bump_nonce_before_next_tx = 100  # another process used the key: ak nonce jumps to 141
    result = await sender.call("intents.near", "noop", {})
    assert [stx.transaction.nonce for stx in servers.node.txs] == [41, 142]
    assert result.tx_hash == servers.node.txs[-1].hash_b58()


async def test_sender_gives_up_after_one_retry(servers: Servers, client: NearRpcClient) -> None:
    sender = TransactionSender(client, ACCOUNT, KEY)
    await sender.call("intents.near", "noop", {})

    original = servers.node.submit

    def always_ahead(stx: SignedTransaction) -> web.Response:
        servers.node.ak_nonce = stx.transaction.nonce + 5
        return original(stx)

    servers.node.submit = always_ahead  # type: ignore[method-assign]
    with pytest.raises(InvalidNonceError) as info:
        await sender.call("intents.near", "noop", {})
    assert info.value.ak_nonce is not None and info.value.ak_nonce > 41


async def test_broadcast_tx_commit_legacy(servers: Servers, client: NearRpcClient) -> None:
    tx = Transaction(
        ACCOUNT, KEY.public_key, 99, "intents.near", bytes([7]) * 32, [FunctionCall("noop", b"{}", 1, 0)]
    )
    outcome = await client.broadcast_tx_commit(sign_transaction(tx, KEY))
    assert outcome["transaction"]["nonce"] == 99
    assert servers.node.requests[-1]["params"] == [sign_transaction(tx, KEY).to_base64()]


async def test_sender_expired_tx_refreshes_and_retries(servers: Servers, client: NearRpcClient) -> None:
    sender = TransactionSender(client, ACCOUNT, KEY)
    original = servers.node.submit
    rejected: list[int] = []

    def expire_first(stx: SignedTransaction) -> web.Response:
        if not rejected:
            rejected.append(stx.transaction.nonce)
            expired = {"InvalidTxError": "Expired"}
            return servers.node.answer(
                error=handler_error("INVALID_TRANSACTION", expired, {"TxExecutionError": expired})
            )
        return original(stx)

    servers.node.submit = expire_first  # type: ignore[method-assign]
    result = await sender.call("intents.near", "noop", {})
    assert rejected == [41]
    assert [stx.transaction.nonce for stx in servers.node.txs] == [42]
    assert result.tx_hash == servers.node.txs[0].hash_b58()


async def test_sender_refreshes_stale_block_hash(servers: Servers, client: NearRpcClient) -> None:
    clock = ManualClock()
    sender = TransactionSender(client, ACCOUNT, KEY, clock=clock)
    await sender.call("intents.near", "noop", {})
    await sender.call("intents.near", "noop", {})
    assert not [r for r in servers.node.requests if r["method"] == "block"]
    clock.advance(61 * 10**9)
    await sender.call("intents.near", "noop", {})
    assert len([r for r in servers.node.requests if r["method"] == "block"]) == 1
    assert [stx.transaction.nonce for stx in servers.node.txs] == [41, 42, 43]


async def test_unknown_access_key_surfaces_from_sender(servers: Servers, client: NearRpcClient) -> None:
    sender = TransactionSender(client, ACCOUNT, SigningKey.generate())
    with pytest.raises(UnknownAccessKeyError):
        await sender.call("intents.near", "noop", {})
    assert servers.node.txs == []
