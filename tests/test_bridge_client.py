"""BridgeClient against fixture replies served by a tiny loopback aiohttp server."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from intents_mm.errors import InputError, RpcError, TransportError
from intents_mm.venues.bridge import (
    BridgeClient,
    DepositStatus,
    WithdrawalState,
)

FIXTURES = Path(__file__).parent / "fixtures" / "bridge"

BTC_NEAR = "btc.omft.near"
EURE_NEAR = "gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


@dataclass
class Canned:
    """Serves one canned (status, body) per method; records every request it gets."""

    replies: dict[str, tuple[int, str]] = field(default_factory=dict)
    requests: list[tuple[str | None, Any]] = field(default_factory=list)
    delay_s: float = 0.0

    def set(self, method: str, body: str, status: int = 200) -> None:
        self.replies[method] = (status, body)

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.requests.append((request.query.get("method"), body))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status, text = self.replies[body["method"]]
        return web.Response(status=status, text=text, content_type="application/json")


@pytest.fixture
async def canned() -> AsyncIterator[tuple[Canned, BridgeClient]]:
    state = Canned()
    app = web.Application()
    app.router.add_post("/rpc", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        yield state, BridgeClient(f"http://127.0.0.1:{port}/rpc", session, timeout_s=2.0)
    await runner.cleanup()


async def test_request_shape_matches_the_sdk(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("deposit_address", fixture("deposit_address_btc.json"))
    await client.deposit_address("mm.near", "btc:mainnet")
    query_method, body = state.requests[0]
    assert query_method == "deposit_address"
    assert body == {
        "jsonrpc": "2.0",
        "id": "dontcare",
        "method": "deposit_address",
        "params": [{"account_id": "mm.near", "chain": "btc:mainnet"}],
    }


async def test_supported_tokens(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("supported_tokens", fixture("supported_tokens.json"))
    tokens = await client.supported_tokens(["btc:mainnet", "eth:100"])
    assert state.requests[0][1]["params"] == [{"chains": ["btc:mainnet", "eth:100"]}]
    btc, eure, usdt = tokens
    assert (btc.near_token_id, btc.intents_token_id, btc.decimals) == (BTC_NEAR, "nep141:btc.omft.near", 8)
    assert (btc.min_deposit_amount, btc.min_withdrawal_amount, btc.withdrawal_fee) == (10_000, 700, 1_500)
    assert eure.defuse_asset_identifier == "eth:100:0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430"
    assert eure.withdrawal_fee == 10**17 and isinstance(eure.withdrawal_fee, int)
    assert usdt.standard == "nep245" and usdt.multi_token_id is not None
    assert btc.multi_token_id is None


async def test_deposit_addresses_are_returned_and_checked(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("deposit_address", fixture("deposit_address_eth.json"))
    got = await client.deposit_address("mm.near", "eth:100")
    assert (got.address, got.chain, got.memo) == (
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "eth:100",
        None,
    )
    # a reply for another chain than asked is refused
    with pytest.raises(RpcError, match="asked for chain btc:mainnet"):
        await client.deposit_address("mm.near", "btc:mainnet")
    # an address with a broken checksum is never handed out
    state.set("deposit_address", fixture("deposit_address_bad_checksum.json"))
    with pytest.raises(RpcError, match="not valid on btc:mainnet"):
        await client.deposit_address("mm.near", "btc:mainnet")


async def test_recent_deposits_parse_big_numbers_exactly(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("recent_deposits", fixture("recent_deposits.json"))
    page = await client.recent_deposits("mm.near", status=DepositStatus.CREDITED, limit=2, offset=0)
    assert state.requests[0][1]["params"] == [
        {"account_id": "mm.near", "limit": 2, "offset": 0, "status": "CREDITED"}
    ]
    assert (page.total, page.limit, page.offset) == (7, 2, 0)
    eure, btc = page.deposits
    assert eure.amount == 123456789012345678901234567  # > 2**64, exact
    assert eure.amount > 2**64
    assert eure.status is DepositStatus.CREDITED
    assert eure.mint_tx_hash == "4nY2PmQu1E3tBfS8Z8oDq1o7wQYp6k3xV9Ck5mJx2uRr"
    assert eure.from_address == "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"
    assert btc.amount == 250_000 and btc.status is DepositStatus.PENDING and btc.mint_tx_hash is None


async def test_a_float_amount_is_an_rpc_error(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("recent_deposits", fixture("recent_deposits_float_amount.json"))
    with pytest.raises(RpcError, match=r"amount is a float"):
        await client.recent_deposits("mm.near")


async def test_recent_deposits_argument_checks(canned: tuple[Canned, BridgeClient]) -> None:
    _, client = canned
    with pytest.raises(InputError):
        await client.recent_deposits("mm.near", limit=101)
    with pytest.raises(InputError):
        await client.recent_deposits("")
    with pytest.raises(InputError, match="unknown deposit status"):
        await client.recent_deposits("mm.near", status="SETTLED")


async def test_notify_deposit(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("notify_deposit", fixture("notify_deposit.json"))
    await client.notify_deposit("btc:mainnet", "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh", "ab" * 32)
    assert state.requests[0][1]["params"] == [
        {
            "chain": "btc:mainnet",
            "deposit_address": "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh",
            "tx_hash": "ab" * 32,
        }
    ]


async def test_withdrawal_estimate(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("withdrawal_estimate", fixture("withdrawal_estimate.json"))
    est = await client.withdrawal_estimate(
        "btc:mainnet", BTC_NEAR, "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"
    )
    assert est.withdrawal_fee == 1500 and est.withdrawal_fee_decimals == 8
    assert est.token_address == "native"
    assert est.token.near_token_id == BTC_NEAR
    with pytest.raises(InputError, match="unprefixed"):
        await client.withdrawal_estimate(
            "btc:mainnet", "nep141:btc.omft.near", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"
        )


async def test_withdrawal_status_sdk_list_shape(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("withdrawal_status", fixture("withdrawal_status_sdk.json"))
    tx = "8xq1XH8zzyGBv6A8ahsyLMfy8M9uKc3Cz8qZuUE3Xk2u"
    btc = await client.withdrawal_status(tx, near_token_id=BTC_NEAR)
    assert btc.status is WithdrawalState.PENDING and btc.data is not None
    assert btc.data.transfer_tx_hash is None and btc.data.amount == 101_500
    assert btc.data.created_at == "2026-04-01T10:05:00.000Z"  # from the SDK's "created"
    eure = await client.withdrawal_status(tx, near_token_id=EURE_NEAR)
    assert eure.status is WithdrawalState.COMPLETED and eure.data is not None
    assert eure.data.amount == 2**65
    assert eure.data.withdrawal_fee == 10**17  # string on the wire
    assert eure.data.withdraw_amount == 2**65 - 10**17
    assert eure.data.transfer_tx_hash is not None and eure.data.transfer_tx_hash.startswith("0x9c1e")
    # two entries and no token named: ambiguous
    with pytest.raises(RpcError, match="pass near_token_id"):
        await client.withdrawal_status(tx)
    assert len(await client.withdrawal_statuses(tx)) == 2
    # a token that is not in the transaction
    other = await client.withdrawal_status(tx, near_token_id="sol.omft.near")
    assert other.status is WithdrawalState.NOT_FOUND and other.data is None


async def test_withdrawal_status_docs_shape(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("withdrawal_status", fixture("withdrawal_status_docs.json"))
    tx = "8xq1XH8zzyGBv6A8ahsyLMfy8M9uKc3Cz8qZuUE3Xk2u"
    got = await client.withdrawal_status(tx)
    assert got.withdrawal_hash == tx
    assert got.status is WithdrawalState.COMPLETED and got.status.is_final
    assert got.data is not None
    assert (got.data.withdrawal_fee, got.data.withdraw_amount) == (1500, 100_000)  # numbers on the wire
    assert got.data.created_at == "2026-04-01T10:05:00.000Z"
    assert (await client.withdrawal_status(tx, near_token_id=BTC_NEAR)).status is WithdrawalState.COMPLETED

    state.set("withdrawal_status", fixture("withdrawal_status_docs_not_found.json"))
    missing = await client.withdrawal_status(tx)
    assert missing.status is WithdrawalState.NOT_FOUND and not missing.status.is_final


async def test_withdrawals_not_found_error_is_a_status(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("withdrawal_status", fixture("error_withdrawals_not_found.json"))
    got = await client.withdrawal_status("GZ1sKzrYAfn2N3U9dsXrXDfaGCW7dbx2JMaMkxrTjSv")
    assert got.status is WithdrawalState.NOT_FOUND and got.data is None
    assert await client.withdrawal_statuses("GZ1sKzrYAfn2N3U9dsXrXDfaGCW7dbx2JMaMkxrTjSv") == ()


async def test_completed_without_transfer_hash_is_refused(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("withdrawal_status", fixture("withdrawal_status_completed_without_transfer.json"))
    with pytest.raises(RpcError, match="COMPLETED without transfer_tx_hash"):
        await client.withdrawal_status("8xq1XH8zzyGBv6A8ahsyLMfy8M9uKc3Cz8qZuUE3Xk2u")


async def test_recent_withdrawals(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("recent_withdrawals", fixture("recent_withdrawals.json"))
    (w,) = await client.recent_withdrawals("mm.near", chain="eth:100")
    assert state.requests[0][1]["params"] == [{"account_id": "mm.near", "chain": "eth:100"}]
    assert w.withdrawal_hash == "3kTr9cBvYqJbq1mX3Pq3yPpC7o1u3dXWc8f2L1ZxY9Q"
    assert w.status is WithdrawalState.FAILED and w.data is not None
    assert w.data.amount == 5 * 10**18 and w.data.withdrawal_fee is None


async def test_plain_string_error_is_an_rpc_error(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("deposit_address", fixture("error_plain.json"))
    with pytest.raises(RpcError) as info:
        await client.deposit_address("mm.near", "sol:devnet")
    assert info.value.data == "Unsupported chain: sol:devnet"
    assert "Unsupported chain: sol:devnet" in str(info.value)
    assert not isinstance(info.value, TransportError)
    # other methods do not turn "Withdrawals not found" into anything but an error
    state.set("recent_withdrawals", fixture("error_withdrawals_not_found.json"))
    with pytest.raises(RpcError, match="Withdrawals not found"):
        await client.recent_withdrawals("mm.near")


async def test_json_rpc_error_object_is_tolerated(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set(
        "supported_tokens", '{"jsonrpc":"2.0","id":"dontcare","error":{"code":-32000,"message":"boom"}}'
    )
    with pytest.raises(RpcError, match="boom") as info:
        await client.supported_tokens()
    assert info.value.code == -32000


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, "Internal Server Error"),
        (502, '{"jsonrpc":"2.0","id":"dontcare","error":"upstream"}'),
        (404, "<html>not here</html>"),
    ],
)
async def test_http_failures_are_transport_errors(
    canned: tuple[Canned, BridgeClient], status: int, body: str
) -> None:
    state, client = canned
    state.set("supported_tokens", body, status=status)
    with pytest.raises(TransportError, match=f"HTTP {status}"):
        await client.supported_tokens()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("not json", "body is not JSON"),
        ("[1,2]", "not a JSON object"),
        ('{"jsonrpc":"2.0","id":"dontcare"}', "neither result nor error"),
        ('{"jsonrpc":"2.0","id":"dontcare","result":{"tokens":{}}}', "tokens is not an array"),
        ('{"jsonrpc":"2.0","id":"dontcare","result":{"tokens":[{"near_token_id":1}]}}', "near_token_id"),
        ('{"jsonrpc":"2.0","id":"dontcare","result":{"tokens":[],"x":NaN}}', "body is not JSON"),
    ],
)
async def test_malformed_replies_are_rpc_errors(
    canned: tuple[Canned, BridgeClient], body: str, match: str
) -> None:
    state, client = canned
    state.set("supported_tokens", body)
    with pytest.raises(RpcError, match=match):
        await client.supported_tokens()


async def test_timeout_is_a_transport_error() -> None:
    state = Canned(delay_s=1.0)
    state.set("supported_tokens", fixture("supported_tokens.json"))
    app = web.Application()
    app.router.add_post("/rpc", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            client = BridgeClient(f"http://127.0.0.1:{port}/rpc", session, timeout_s=0.2)
            with pytest.raises(TransportError, match=r"no answer within 0\.2s"):
                await client.supported_tokens()
    finally:
        await runner.cleanup()


async def test_connection_refused_is_a_transport_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        client = BridgeClient(f"http://127.0.0.1:{port}/rpc", session, timeout_s=2.0)
        with pytest.raises(TransportError, match="supported_tokens"):
            await client.supported_tokens()


def test_bad_url_or_timeout_is_rejected() -> None:
    async def build(url: str, timeout_s: float) -> None:
        async with aiohttp.ClientSession() as session:
            BridgeClient(url, session, timeout_s)

    with pytest.raises(InputError):
        asyncio.run(build("ftp://x/rpc", 1.0))
    with pytest.raises(InputError):
        asyncio.run(build("http://127.0.0.1:1/rpc", 0))
