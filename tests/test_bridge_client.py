"""BridgeClient against fixture replies served by a tiny loopback aiohttp server."""

from __future__ import annotations

import asyncio
import dataclasses
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
    Deposit,
    DepositStatus,
    WithdrawalState,
)

FIXTURES = Path(__file__).parent / "fixtures" / "bridge"

BTC_NEAR = "btc.omft.near"
EURE_NEAR = "gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def docs_fixture(name: str) -> str:
    """A reply copied from the docs (``fixtures/bridge/docs/<name>.jsonc``), ``//`` source lines dropped."""
    lines = (FIXTURES / "docs" / f"{name}.jsonc").read_text().splitlines()
    body = "\n".join(line for line in lines if not line.lstrip().startswith("//"))
    json.loads(body)  # the fixture itself must be valid JSON once the comments are gone
    return body


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


async def test_an_integral_exponent_amount_is_exact(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("recent_deposits", fixture("recent_deposits_float_amount.json"))  # "amount":1.0e21
    page = await client.recent_deposits("mm.near")
    (dep,) = page.deposits
    assert dep.amount == 10**21 and isinstance(dep.amount, int) and page.skipped == ()


async def test_one_bad_deposit_entry_is_skipped_not_the_page(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("recent_deposits", fixture("recent_deposits_mixed.json"))
    page = await client.recent_deposits("mm.near")
    pending_btc, eure, done_btc = page.deposits
    # 1.5e8 and 1e+21 are JSON numbers in exponent form: parsed exactly from the raw text
    assert pending_btc.amount == 150_000_000 and pending_btc.tx_hash is None
    assert pending_btc.near_token_id == BTC_NEAR and pending_btc.status is DepositStatus.PENDING
    assert eure.amount == 10**21 and eure.near_token_id is None  # the docs' entries carry no near_token_id
    assert done_btc.tx_hash is None and done_btc.amount == 100_000_000  # null tx_hash: none
    assert pending_btc.deposit_id.startswith("nohash:") and pending_btc.deposit_id != done_btc.deposit_id
    assert eure.deposit_id == eure.tx_hash
    assert page.total == 7
    assert len(page.skipped) == 4
    fractional, status, not_object, exponent_string = page.skipped
    assert "deposits[2].amount is 1.5, not a whole number" in fractional and "0xbad1" in fractional
    assert "deposits[3].status 'SETTLED'" in status
    assert "deposits[4] is not an object" in not_object
    assert "deposits[6].amount is missing or not an integer amount" in exponent_string
    assert all("\n" not in line for line in page.skipped)


async def test_a_hash_less_deposit_id_is_stable_across_statuses() -> None:
    base = Deposit(
        tx_hash=None,
        chain="btc:mainnet",
        defuse_asset_identifier="btc:mainnet:native",
        near_token_id=None,
        decimals=8,
        amount=250_000,
        account_id="mm.near",
        address="bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh",
        status=DepositStatus.PENDING,
        created_at="2026-04-01T10:00:00.000Z",
    )
    credited = dataclasses.replace(base, status=DepositStatus.CREDITED, mint_tx_hash="4nY2Pm")
    assert base.deposit_id == credited.deposit_id and len(base.deposit_id) == len("nohash:") + 32
    assert dataclasses.replace(base, amount=250_001).deposit_id != base.deposit_id
    assert dataclasses.replace(base, tx_hash="").deposit_id == base.deposit_id  # "" is no hash either


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
    assert (est.token.min_deposit_amount, est.token.min_withdrawal_amount) == (10_000, 700)
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


# --- the docs' own examples (fixtures/bridge/docs) ---------------------------------------------------


async def test_docs_supported_tokens_example(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("supported_tokens", docs_fixture("supported_tokens"))
    (pepe,) = await client.supported_tokens(["eth:8453"])
    assert (pepe.asset_name, pepe.decimals) == ("PEPE", 18)
    assert (pepe.min_deposit_amount, pepe.min_withdrawal_amount, pepe.withdrawal_fee) == (
        100_000,
        10_000,
        1_000,
    )
    assert pepe.intents_token_id == "nep141:..." and pepe.standard == "nep141"  # derived, as the SDK does


async def test_docs_withdrawal_estimate_examples(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    for name, form in (("withdrawal_estimate", "string"), ("withdrawal_estimate_legacy", "JSON number")):
        state.set("withdrawal_estimate", docs_fixture(name))
        est = await client.withdrawal_estimate("eth:1", "eth.omft.near", "0x456def")
        assert est.withdrawal_fee == 12_500_000_000_000_000 and est.withdrawal_fee_decimals == 18, form
        # "0.001" ETH in whole units -> exactly 10**15 wei; the token lists no withdrawal minimum or fee
        assert est.token.min_deposit_amount == 10**15, form
        assert (est.token.min_withdrawal_amount, est.token.withdrawal_fee) == (None, None), form
        assert (est.token.near_token_id, est.token.asset_name, est.token.decimals) == (
            "eth.omft.near",
            "ETH",
            18,
        )


async def test_docs_recent_deposits_examples(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("recent_deposits", docs_fixture("recent_deposits"))
    page = await client.recent_deposits("user.near", chain="eth:42161")
    (dep,) = page.deposits
    assert (dep.tx_hash, dep.amount, dep.status) == ("0x...", 10_000_000_000, DepositStatus.COMPLETED)
    assert dep.near_token_id is None and dep.defuse_asset_identifier == "eth:42161:0x123"
    assert (page.total, page.limit, page.offset, page.skipped) == (1, 20, 0, ())  # defaults when absent
    state.set("recent_deposits", docs_fixture("recent_deposits_legacy"))
    (legacy,) = (await client.recent_deposits("user.near")).deposits
    assert legacy.tx_hash is None and legacy.amount == 10_000_000_000  # "" tx_hash, JSON-number amount
    assert legacy.deposit_id.startswith("nohash:")


async def test_docs_withdrawal_status_example(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("withdrawal_status", docs_fixture("withdrawal_status"))
    tx = "8yFNEk7GmRcM3NMJihwCKXt8ZANLpL2koVFWWH1MEEj"
    got = await client.withdrawal_status(tx)
    assert got.status is WithdrawalState.COMPLETED and got.data is not None
    assert got.data.amount == 10_000_000_000 and got.data.near_token_id is None
    assert got.data.transfer_tx_hash == "0x..."
    # the only entry, without near_token_id, is the one asked for by token
    assert (
        await client.withdrawal_status(tx, near_token_id="eth.omft.near")
    ).status is WithdrawalState.COMPLETED


async def test_docs_notify_deposit_example_without_result(canned: tuple[Canned, BridgeClient]) -> None:
    state, client = canned
    state.set("notify_deposit", docs_fixture("notify_deposit"))
    await client.notify_deposit("eth:42161", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0x" + "ab" * 32)
    # other methods still need a result
    state.set("supported_tokens", docs_fixture("notify_deposit"))
    with pytest.raises(RpcError, match="neither result nor error"):
        await client.supported_tokens()


async def test_decimal_string_minimums_convert_exactly_or_are_refused(
    canned: tuple[Canned, BridgeClient],
) -> None:
    state, client = canned
    state.set("supported_tokens", fixture("supported_tokens_decimal_strings.json"))
    btc = await client.supported_token("nep141:btc.omft.near", "btc:mainnet")
    assert state.requests[-1][1]["params"] == [{"chains": ["btc:mainnet"]}]
    assert (btc.min_deposit_amount, btc.min_withdrawal_amount, btc.withdrawal_fee) == (10_000, 700, 1_500)
    # EURe's "0.000000000000000000001" has 21 decimals, 18 allowed: refused, in one line
    with pytest.raises(RpcError) as info:
        await client.supported_token(
            "nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near", "eth:100"
        )
    assert "min_withdrawal_amount 0.000000000000000000001 has more than 18 decimals" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(RpcError, match="has more than 18 decimals"):
        await client.supported_tokens()  # the whole list is strict
    with pytest.raises(RpcError, match=r"nep141:sol\.omft\.near is not listed on btc:mainnet"):
        await client.supported_token("nep141:sol.omft.near", "btc:mainnet")


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ('"1.5.0"', "not a decimal amount"),
        ('"-0.1"', "not a decimal amount"),
        ('"0.1e3"', "not a decimal amount"),
        ("1e400", "out of the u128 range"),
        ('"340282366920938463463374607431768211456"', "out of the u128 range"),  # 2**128
        ('"0.000000001"', "0.000000001 has more than 8 decimals"),
        ("-5", "out of the u128 range"),
    ],
)
async def test_bad_token_amounts_are_refused(
    canned: tuple[Canned, BridgeClient], value: str, match: str
) -> None:
    state, client = canned
    token = (
        '{"defuse_asset_identifier":"btc:mainnet:native","near_token_id":"btc.omft.near","asset_name":"BTC",'
        f'"decimals":8,"min_deposit_amount":{value},"min_withdrawal_amount":"700","withdrawal_fee":"1500"}}'
    )
    state.set("supported_tokens", f'{{"jsonrpc":"2.0","id":"dontcare","result":{{"tokens":[{token}]}}}}')
    with pytest.raises(RpcError, match=match):
        await client.supported_tokens()
