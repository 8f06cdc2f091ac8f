"""SimBridge: raw wire shapes checked with plain aiohttp, and the live BridgeClient over loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from intents_mm.clock import ManualClock
from intents_mm.domain.addresses import validate_destination
from intents_mm.domain.assets import BTC, EURE
from intents_mm.errors import InputError, RpcError, TransportError
from intents_mm.sim.bridge import SimBridge, derive_deposit_address
from intents_mm.venues.bridge import BridgeClient, DepositStatus, WithdrawalState

SEC = 1_000_000_000
ACCOUNT = "mm.near"
BTC_DEST = "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"
EURE_DEST = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
NEAR_TX = "8xq1XH8zzyGBv6A8ahsyLMfy8M9uKc3Cz8qZuUE3Xk2u"

TOKEN_KEYS = {
    "defuse_asset_identifier",
    "near_token_id",
    "intents_token_id",
    "standard",
    "asset_name",
    "decimals",
    "min_deposit_amount",
    "min_withdrawal_amount",
    "withdrawal_fee",
}
WITHDRAWAL_DATA_KEYS = {
    "tx_hash",
    "transfer_tx_hash",
    "chain",
    "defuse_asset_identifier",
    "near_token_id",
    "decimals",
    "amount",
    "account_id",
    "address",
    "created_at",
    "withdrawal_fee",
    "withdraw_amount",
}


@dataclass
class Credits:
    calls: list[tuple[str, str, int]] = field(default_factory=list)
    fail_times: int = 0

    async def __call__(self, account: str, asset_id: str, amount: int) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("verifier unavailable")
        self.calls.append((account, asset_id, amount))


@dataclass
class Env:
    clock: ManualClock
    credits: Credits
    bridge: SimBridge
    url: str
    session: aiohttp.ClientSession
    client: BridgeClient

    async def raw(self, method: str, params: dict[str, Any] | None = None) -> tuple[int, Any]:
        """A plain aiohttp call, independent of BridgeClient."""
        body = {"jsonrpc": "2.0", "id": "dontcare", "method": method, "params": [params or {}]}
        async with self.session.post(f"{self.url}?method={method}", json=body) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if resp.status == 200 else text)

    async def move(self, seconds: float) -> None:
        self.clock.advance(int(seconds * SEC))
        await self.bridge.advance()


async def _env(**options: Any) -> AsyncIterator[Env]:
    clock = ManualClock()
    credits = Credits()
    bridge = SimBridge(clock, credits, tick_s=3600, **options)  # tests drive advance() themselves
    url = await bridge.start("127.0.0.1")
    try:
        async with aiohttp.ClientSession() as session:
            yield Env(clock, credits, bridge, url, session, BridgeClient(url, session, timeout_s=5))
    finally:
        await bridge.stop()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async for e in _env():
        yield e


@pytest.fixture
async def docs_env() -> AsyncIterator[Env]:
    async for e in _env(withdrawal_status_shape="docs"):
        yield e


# --- raw wire shapes (plain aiohttp) --------------------------------------------------------------


async def test_raw_supported_tokens_shape_and_filter(env: Env) -> None:
    status, doc = await env.raw("supported_tokens", {"chains": ["btc:mainnet", "eth:100"]})
    assert status == 200 and doc["jsonrpc"] == "2.0" and doc["id"] == "dontcare"
    tokens = doc["result"]["tokens"]
    assert [t["near_token_id"] for t in tokens] == [BTC.contract_id, EURE.contract_id]
    for t in tokens:
        assert set(t) == TOKEN_KEYS
        assert isinstance(t["decimals"], int)
        for key in ("min_deposit_amount", "min_withdrawal_amount", "withdrawal_fee"):
            assert isinstance(t[key], str) and t[key].isdigit()
    btc = tokens[0]
    assert btc["defuse_asset_identifier"] == "btc:mainnet:native" and btc["decimals"] == 8
    assert btc["intents_token_id"] == "nep141:btc.omft.near"
    assert tokens[1]["defuse_asset_identifier"] == "eth:100:0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430"
    assert tokens[1]["decimals"] == 18
    _, only_eth = await env.raw("supported_tokens", {"chains": ["eth:100"]})
    assert [t["asset_name"] for t in only_eth["result"]["tokens"]] == ["EURe"]
    _, unfiltered = await env.raw("supported_tokens")
    assert len(unfiltered["result"]["tokens"]) == 2


async def test_method_may_come_from_the_url_only(env: Env) -> None:
    body = {"jsonrpc": "2.0", "id": 7, "params": [{"account_id": ACCOUNT, "chain": "btc:mainnet"}]}
    async with env.session.post(f"{env.url}?method=deposit_address", json=body) as resp:
        doc = await resp.json()
    assert doc == {
        "jsonrpc": "2.0",
        "id": 7,
        "result": {"address": derive_deposit_address(ACCOUNT, "btc:mainnet"), "chain": "btc:mainnet"},
    }


async def test_raw_deposit_addresses_are_deterministic_and_valid(env: Env) -> None:
    _, a1 = await env.raw("deposit_address", {"account_id": ACCOUNT, "chain": "btc:mainnet"})
    _, a2 = await env.raw("deposit_address", {"account_id": ACCOUNT, "chain": "btc:mainnet"})
    _, b = await env.raw("deposit_address", {"account_id": "other.near", "chain": "btc:mainnet"})
    _, e = await env.raw("deposit_address", {"account_id": ACCOUNT, "chain": "eth:100"})
    btc_addr = a1["result"]["address"]
    assert a1 == a2 and set(a1["result"]) == {"address", "chain"}
    assert btc_addr.startswith("bc1q") and btc_addr != b["result"]["address"]
    assert validate_destination("btc:mainnet", btc_addr) == btc_addr
    eth_addr = e["result"]["address"]
    assert eth_addr.startswith("0x") and len(eth_addr) == 42
    assert validate_destination("eth:100", eth_addr) == eth_addr  # EIP-55 spelled
    _, bad = await env.raw("deposit_address", {"account_id": ACCOUNT, "chain": "sol:mainnet"})
    assert bad == {"jsonrpc": "2.0", "id": "dontcare", "error": "Unsupported chain: sol:mainnet"}


async def test_raw_recent_deposits_amount_is_a_json_number(env: Env) -> None:
    """The docs' shape (the default): no near_token_id; the amount a JSON number."""
    big = 3 * 2**64 + 5
    env.bridge.simulate_deposit(ACCOUNT, "eth:100", big)
    async with env.session.post(
        f"{env.url}?method=recent_deposits",
        json={
            "jsonrpc": "2.0",
            "id": "dontcare",
            "method": "recent_deposits",
            "params": [{"account_id": ACCOUNT}],
        },
    ) as resp:
        text = await resp.text()
    assert f'"amount":{big},' in text  # a number, not a string, and not rounded
    result = json.loads(text)["result"]
    (dep,) = result["deposits"]
    assert (result["total"], result["limit"], result["offset"]) == (1, 20, 0)
    assert dep["amount"] == big and dep["status"] == "PENDING" and dep["account_id"] == ACCOUNT
    assert dep["chain"] == "eth:100" and dep["decimals"] == 18 and "near_token_id" not in dep
    assert dep["defuse_asset_identifier"] == EURE.defuse_asset_id
    assert dep["address"] == derive_deposit_address(ACCOUNT, "eth:100")
    assert dep["tx_hash"].startswith("0x") and len(dep["tx_hash"]) == 66  # EVM: the hash is given
    assert "mint_tx_hash" not in dep


async def test_raw_btc_deposits_have_no_tx_hash_in_the_docs_shape(env: Env) -> None:
    env.bridge.simulate_deposit(ACCOUNT, "btc:mainnet", 250_000)
    _, doc = await env.raw("recent_deposits", {"account_id": ACCOUNT})
    (dep,) = doc["result"]["deposits"]
    assert "tx_hash" not in dep and "near_token_id" not in dep  # "EVM networks only"
    assert dep["defuse_asset_identifier"] == "btc:mainnet:native" and dep["amount"] == 250_000
    got = (await env.client.recent_deposits(ACCOUNT)).deposits[0]
    assert got.tx_hash is None and got.near_token_id is None and got.amount == 250_000
    assert got.deposit_id.startswith("nohash:")
    await env.move(10)  # the id does not change with the status
    later = (await env.client.recent_deposits(ACCOUNT)).deposits[0]
    assert later.status is DepositStatus.CREDITED and later.deposit_id == got.deposit_id


@pytest.mark.parametrize(
    ("form", "wire"),
    [("exponent", "25e4"), ("string", '"250000"'), ("number", "250000")],
)
async def test_raw_deposit_amount_forms_parse_exactly(form: str, wire: str) -> None:
    async for e in _env(deposit_amount_form=form, reply_shape="sdk"):
        e.bridge.simulate_deposit(ACCOUNT, "btc:mainnet", 250_000)
        e.bridge.simulate_deposit(ACCOUNT, "eth:100", 10**21)
        async with e.session.post(
            e.url,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "recent_deposits",
                "params": [{"account_id": ACCOUNT}],
            },
        ) as resp:
            text = await resp.text()
        assert f'"amount":{wire},' in text
        if form == "exponent":
            assert '"amount":1e21,' in text
        eure, btc = (await e.client.recent_deposits(ACCOUNT)).deposits
        assert (btc.amount, eure.amount) == (250_000, 10**21)
        assert btc.tx_hash is not None and btc.near_token_id == BTC.contract_id  # the SDK shape has both


async def test_raw_withdrawal_status_sdk_shape(env: Env) -> None:
    env.bridge.register_withdrawal(NEAR_TX, ACCOUNT, BTC.token_id, 101_500, BTC_DEST)
    _, doc = await env.raw("withdrawal_status", {"withdrawal_hash": NEAR_TX})
    (entry,) = doc["result"]["withdrawals"]
    assert set(doc["result"]) == {"withdrawals"} and set(entry) == {"status", "data"}
    assert entry["status"] == "PENDING"
    assert set(entry["data"]) == WITHDRAWAL_DATA_KEYS | {"created"}
    assert entry["data"]["transfer_tx_hash"] is None
    assert entry["data"]["amount"] == 101_500 and entry["data"]["tx_hash"] == NEAR_TX


async def test_raw_withdrawal_status_docs_shape(docs_env: Env) -> None:
    docs_env.bridge.register_withdrawal(NEAR_TX, ACCOUNT, BTC.token_id, 101_500, BTC_DEST)
    await docs_env.move(3)
    _, doc = await docs_env.raw("withdrawal_status", {"withdrawal_hash": NEAR_TX})
    assert set(doc["result"]) == {"status", "data"}
    assert doc["result"]["status"] == "COMPLETED"
    data = doc["result"]["data"]
    assert set(data) == WITHDRAWAL_DATA_KEYS
    assert data["transfer_tx_hash"] and data["withdraw_amount"] == 100_000 and data["withdrawal_fee"] == 1500


async def test_raw_unknown_withdrawal_is_the_plain_string_error(env: Env) -> None:
    status, doc = await env.raw("withdrawal_status", {"withdrawal_hash": "nope"})
    assert status == 200
    assert doc == {"jsonrpc": "2.0", "id": "dontcare", "error": "Withdrawals not found"}


async def test_raw_withdrawal_estimate_and_notify(env: Env) -> None:
    _, doc = await env.raw(
        "withdrawal_estimate", {"chain": "eth:100", "token": EURE.contract_id, "address": EURE_DEST}
    )
    result = doc["result"]
    assert set(result) == {"tokenAddress", "userAddress", "withdrawalFee", "withdrawalFeeDecimals", "token"}
    assert result["tokenAddress"] == "0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430"
    assert result["userAddress"] == EURE_DEST
    assert result["withdrawalFee"] == str(10**17) and result["withdrawalFeeDecimals"] == 18
    # the docs' example: five fields, min_deposit_amount a decimal string in whole units
    assert result["token"] == {
        "defuse_asset_identifier": EURE.defuse_asset_id,
        "near_token_id": EURE.contract_id,
        "decimals": 18,
        "asset_name": "EURe",
        "min_deposit_amount": "1.0",
    }
    _, btc = await env.raw(
        "withdrawal_estimate", {"chain": "btc:mainnet", "token": BTC.contract_id, "address": BTC_DEST}
    )
    assert btc["result"]["token"]["min_deposit_amount"] == "0.0001"
    _, bad = await env.raw(
        "withdrawal_estimate", {"chain": "eth:100", "token": EURE.contract_id, "address": "0x12"}
    )
    assert isinstance(bad["error"], str) and "Invalid address" in bad["error"]

    params = {"chain": "btc:mainnet", "deposit_address": BTC_DEST, "tx_hash": "ab" * 32}
    _, note = await env.raw("notify_deposit", params)
    assert note == {"jsonrpc": "2.0", "id": "dontcare"}  # the docs' example: no result at all
    assert env.bridge.notifications == [params]


async def test_raw_sdk_shape_estimate_token_and_notify() -> None:
    async for e in _env(reply_shape="sdk"):
        _, doc = await e.raw(
            "withdrawal_estimate", {"chain": "eth:100", "token": EURE.contract_id, "address": EURE_DEST}
        )
        assert set(doc["result"]["token"]) == TOKEN_KEYS
        est = await e.client.withdrawal_estimate("eth:100", EURE.contract_id, EURE_DEST)
        assert (est.token.min_deposit_amount, est.token.min_withdrawal_amount) == (10**18, 10**18)
        _, note = await e.raw(
            "notify_deposit", {"chain": "btc:mainnet", "deposit_address": BTC_DEST, "tx_hash": "ab" * 32}
        )
        assert note == {"jsonrpc": "2.0", "id": "dontcare", "result": {}}
    with pytest.raises(InputError, match="reply_shape"):
        SimBridge(ManualClock(), Credits(), reply_shape="xml")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="deposit_amount_form"):
        SimBridge(ManualClock(), Credits(), deposit_amount_form="float")  # type: ignore[arg-type]


async def test_raw_protocol_errors_are_plain_strings(env: Env) -> None:
    _, doc = await env.raw("no_such_method")
    assert doc["error"] == "Method not found: no_such_method"
    async with env.session.post(env.url, data=b"{nope") as resp:
        assert isinstance((await resp.json())["error"], str)
    async with env.session.post(
        env.url, json={"jsonrpc": "2.0", "id": 1, "method": "supported_tokens", "params": {}}
    ) as resp:
        assert (await resp.json())["error"].startswith("Invalid params")
    _, doc = await env.raw("recent_deposits", {"account_id": ACCOUNT, "status": "SETTLED"})
    assert doc["error"] == "Invalid params: unknown status SETTLED"


async def test_fail_method_and_error_rate(env: Env) -> None:
    env.bridge.fail_method("supported_tokens", 2, message="Service temporarily unavailable")
    for _ in range(2):
        _, doc = await env.raw("supported_tokens")
        assert doc["error"] == "Service temporarily unavailable"
    _, doc = await env.raw("supported_tokens")
    assert "result" in doc
    env.bridge.fail_method("supported_tokens", 1, http_500=True)
    status, text = await env.raw("supported_tokens")
    assert status == 500 and text == "Internal Server Error"
    env.bridge.set_error_rate(1.0)
    assert "error" in (await env.raw("deposit_address", {"account_id": ACCOUNT, "chain": "eth:100"}))[1]
    env.bridge.set_error_rate(0.0)
    assert "result" in (await env.raw("deposit_address", {"account_id": ACCOUNT, "chain": "eth:100"}))[1]
    assert env.bridge.calls["supported_tokens"] == 4


# --- the live client against the simulator ----------------------------------------------------------


async def test_client_deposit_address(env: Env) -> None:
    got = await env.client.deposit_address(ACCOUNT, "btc:mainnet")
    assert got.address == derive_deposit_address(ACCOUNT, "btc:mainnet") and got.chain == "btc:mainnet"
    tokens = await env.client.supported_tokens(["btc:mainnet"])
    assert [(t.intents_token_id, t.withdrawal_fee) for t in tokens] == [(BTC.token_id, 1500)]


async def test_client_deposit_lifecycle_credits_once(env: Env) -> None:
    amount = 5 * 10**18 + 2**64 + 1  # EURe, beyond 2**64
    tx = env.bridge.simulate_deposit(ACCOUNT, "eth:100", amount)
    page = await env.client.recent_deposits(ACCOUNT, chain="eth:100")
    (dep,) = page.deposits
    assert (dep.tx_hash, dep.status, dep.amount) == (tx, DepositStatus.PENDING, amount)
    assert env.credits.calls == []

    await env.move(1.9)
    assert (await env.client.recent_deposits(ACCOUNT)).deposits[0].status is DepositStatus.PENDING
    await env.move(0.1)
    dep = (await env.client.recent_deposits(ACCOUNT)).deposits[0]
    assert dep.status is DepositStatus.CREDITED and dep.mint_tx_hash
    assert env.credits.calls == [(ACCOUNT, EURE.token_id, amount)]

    await env.move(3.9)
    assert (await env.client.recent_deposits(ACCOUNT)).deposits[0].status is DepositStatus.CREDITED
    await env.move(0.1)
    dep = (await env.client.recent_deposits(ACCOUNT)).deposits[0]
    assert dep.status is DepositStatus.COMPLETED
    await env.move(60)
    assert env.credits.calls == [(ACCOUNT, EURE.token_id, amount)]  # still exactly once
    assert (await env.client.recent_deposits(ACCOUNT, status=DepositStatus.PENDING)).total == 0


async def test_deposit_filters_and_paging(env: Env) -> None:
    txs = [env.bridge.simulate_deposit(ACCOUNT, "btc:mainnet", 20_000 + i) for i in range(5)]
    env.bridge.simulate_deposit("other.near", "btc:mainnet", 50_000)
    env.bridge.simulate_deposit(ACCOUNT, "eth:100", 10**18)
    page = await env.client.recent_deposits(ACCOUNT, chain="btc:mainnet", limit=2, offset=1)
    assert page.total == 5 and (page.limit, page.offset) == (2, 1)
    assert len(txs) == 5 and [d.amount for d in page.deposits] == [20_003, 20_002]  # newest first
    assert len({d.deposit_id for d in page.deposits}) == 2  # no tx_hash on BTC, distinct ids all the same
    assert (await env.client.recent_deposits(ACCOUNT)).total == 6


async def test_sync_credit_callback_and_retry_after_failure() -> None:
    calls: list[tuple[str, str, int]] = []
    failures = [1]

    def credit(account: str, asset_id: str, amount: int) -> None:
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("down")
        calls.append((account, asset_id, amount))

    clock = ManualClock()
    bridge = SimBridge(clock, credit)
    bridge.simulate_deposit(ACCOUNT, "btc:mainnet", 30_000)
    clock.advance(2 * SEC)
    await bridge.advance()
    assert bridge.deposits[0].status == "PENDING" and calls == []
    await bridge.advance()
    assert bridge.deposits[0].status == "CREDITED"
    assert calls == [(ACCOUNT, BTC.token_id, 30_000)]


async def test_deposit_below_minimum_fails_without_credit(env: Env) -> None:
    env.bridge.simulate_deposit(ACCOUNT, "btc:mainnet", 9_999)  # min deposit is 10000
    await env.move(10)
    (dep,) = (await env.client.recent_deposits(ACCOUNT)).deposits
    assert dep.status is DepositStatus.FAILED and env.credits.calls == []


async def test_client_withdrawal_completes_with_transfer_hash(env: Env) -> None:
    env.bridge.register_withdrawal(NEAR_TX, ACCOUNT, BTC.token_id, 101_500, BTC_DEST)
    first = await env.client.withdrawal_status(NEAR_TX, near_token_id=BTC.contract_id)
    assert first.status is WithdrawalState.PENDING and first.data is not None
    assert first.data.transfer_tx_hash is None and first.data.amount == 101_500
    await env.move(2.9)
    assert (await env.client.withdrawal_status(NEAR_TX)).status is WithdrawalState.PENDING
    await env.move(0.1)
    done = await env.client.withdrawal_status(NEAR_TX)
    assert done.status is WithdrawalState.COMPLETED and done.status.is_final and done.data is not None
    assert done.data.transfer_tx_hash is not None and len(done.data.transfer_tx_hash) == 64
    assert (done.data.withdrawal_fee, done.data.withdraw_amount) == (1_500, 100_000)
    assert done.data.address == BTC_DEST and done.data.account_id == ACCOUNT


async def test_scripted_failed_withdrawal_then_normal_again(env: Env) -> None:
    env.bridge.fail_next_withdrawal("gnosis RPC down")
    env.bridge.register_withdrawal("tx1", ACCOUNT, EURE.token_id, 5 * 10**18, EURE_DEST)
    env.bridge.register_withdrawal("tx2", ACCOUNT, EURE.token_id, 5 * 10**18, EURE_DEST)
    await env.move(3)
    failed = await env.client.withdrawal_status("tx1")
    assert failed.status is WithdrawalState.FAILED and failed.data is not None
    assert failed.data.transfer_tx_hash is None
    assert env.bridge.withdrawals["tx1"][0].fail_reason == "gnosis RPC down"
    ok = await env.client.withdrawal_status("tx2")
    assert ok.status is WithdrawalState.COMPLETED and ok.data is not None
    assert ok.data.withdraw_amount == 5 * 10**18 - 10**17 and ok.data.transfer_tx_hash is not None
    assert ok.data.transfer_tx_hash.startswith("0x")


async def test_failing_an_asset_and_clearing_it(env: Env) -> None:
    env.bridge.fail_withdrawals_of(BTC.token_id, "btc node stuck")
    env.bridge.register_withdrawal("b1", ACCOUNT, BTC.token_id, 10_000, BTC_DEST)
    env.bridge.register_withdrawal("e1", ACCOUNT, EURE.token_id, 2 * 10**18, EURE_DEST)
    env.bridge.fail_withdrawals_of(BTC.token_id, None)
    env.bridge.register_withdrawal("b2", ACCOUNT, BTC.token_id, 10_000, BTC_DEST)
    await env.move(3)
    assert (await env.client.withdrawal_status("b1")).status is WithdrawalState.FAILED
    assert (await env.client.withdrawal_status("e1")).status is WithdrawalState.COMPLETED
    assert (await env.client.withdrawal_status("b2")).status is WithdrawalState.COMPLETED


async def test_invalid_destination_or_small_amount_is_rejected(env: Env) -> None:
    env.bridge.register_withdrawal("bad-dest", ACCOUNT, BTC.token_id, 10_000, "bc1qnotanaddress")
    env.bridge.register_withdrawal("too-small", ACCOUNT, BTC.token_id, 1_500, BTC_DEST)  # == fee
    await env.move(3)
    assert (await env.client.withdrawal_status("bad-dest")).status is WithdrawalState.REJECTED
    small = await env.client.withdrawal_status("too-small")
    assert (
        small.status is WithdrawalState.REJECTED
        and small.data is not None
        and small.data.withdraw_amount == 0
    )


async def test_unknown_hash_is_not_found(env: Env) -> None:
    got = await env.client.withdrawal_status("GZ1sKzrYAfn2N3U9dsXrXDfaGCW7dbx2JMaMkxrTjSv")
    assert got.status is WithdrawalState.NOT_FOUND and got.data is None


async def test_transient_not_found_right_after_burn() -> None:
    async for env in _env(withdrawal_visible_s=1.0):
        env.bridge.register_withdrawal(NEAR_TX, ACCOUNT, BTC.token_id, 10_000, BTC_DEST)
        assert (await env.client.withdrawal_status(NEAR_TX)).status is WithdrawalState.NOT_FOUND
        await env.move(1.0)
        assert (await env.client.withdrawal_status(NEAR_TX)).status is WithdrawalState.PENDING


async def test_two_tokens_burned_in_one_transaction(env: Env) -> None:
    env.bridge.register_withdrawal(NEAR_TX, ACCOUNT, BTC.token_id, 10_000, BTC_DEST)
    env.bridge.register_withdrawal(NEAR_TX, ACCOUNT, EURE.token_id, 2 * 10**18, EURE_DEST)
    with pytest.raises(InputError, match="already registered"):
        env.bridge.register_withdrawal(NEAR_TX, ACCOUNT, BTC.token_id, 10_000, BTC_DEST)
    eure = await env.client.withdrawal_status(NEAR_TX, near_token_id=EURE.contract_id)
    assert eure.data is not None and eure.data.amount == 2 * 10**18
    assert len(await env.client.withdrawal_statuses(NEAR_TX)) == 2


async def test_docs_shape_through_the_client(docs_env: Env) -> None:
    docs_env.bridge.register_withdrawal(NEAR_TX, ACCOUNT, EURE.token_id, 3 * 10**18, EURE_DEST)
    assert (await docs_env.client.withdrawal_status(NEAR_TX)).status is WithdrawalState.PENDING
    await docs_env.move(3)
    got = await docs_env.client.withdrawal_status(NEAR_TX, near_token_id=EURE.contract_id)
    assert got.status is WithdrawalState.COMPLETED and got.data is not None
    assert got.data.withdraw_amount == 3 * 10**18 - 10**17
    assert (await docs_env.client.withdrawal_status("unknown")).status is WithdrawalState.NOT_FOUND


async def test_recent_withdrawals_and_estimate_through_the_client(env: Env) -> None:
    env.bridge.register_withdrawal("w1", ACCOUNT, BTC.token_id, 10_000, BTC_DEST)
    env.bridge.register_withdrawal("w2", ACCOUNT, EURE.token_id, 2 * 10**18, EURE_DEST)
    env.bridge.register_withdrawal("w3", "other.near", BTC.token_id, 10_000, BTC_DEST)
    mine = await env.client.recent_withdrawals(ACCOUNT)
    assert [w.withdrawal_hash for w in mine] == ["w2", "w1"]
    assert [w.withdrawal_hash for w in await env.client.recent_withdrawals(ACCOUNT, chain="btc:mainnet")] == [
        "w1"
    ]
    est = await env.client.withdrawal_estimate("eth:100", EURE.contract_id, EURE_DEST)
    assert est.withdrawal_fee == 10**17 and est.token.near_token_id == EURE.contract_id
    assert est.token.min_deposit_amount == 10**18  # "1.0" EURe on the wire, in whole units
    listed = await env.client.supported_token(EURE.token_id, "eth:100")
    assert (listed.min_withdrawal_amount, listed.withdrawal_fee) == (10**18, 10**17)
    with pytest.raises(RpcError, match="not listed on btc:mainnet"):
        await env.client.supported_token(EURE.token_id, "btc:mainnet")
    await env.client.notify_deposit("eth:100", derive_deposit_address(ACCOUNT, "eth:100"), "0x" + "ab" * 32)
    assert len(env.bridge.notifications) == 1


async def test_client_sees_faults_as_the_right_errors(env: Env) -> None:
    env.bridge.fail_method("deposit_address", 1, http_500=True)
    with pytest.raises(TransportError, match="HTTP 500"):
        await env.client.deposit_address(ACCOUNT, "btc:mainnet")
    env.bridge.fail_method("deposit_address", 1, message="Rate limited")
    with pytest.raises(RpcError, match="Rate limited"):
        await env.client.deposit_address(ACCOUNT, "btc:mainnet")
    assert (await env.client.deposit_address(ACCOUNT, "btc:mainnet")).chain == "btc:mainnet"


async def test_background_ticker_drives_the_schedule() -> None:
    clock = ManualClock()
    credits = Credits()
    bridge = SimBridge(clock, credits, tick_s=0.01)
    await bridge.start()
    try:
        bridge.simulate_deposit(ACCOUNT, "btc:mainnet", 40_000)
        bridge.register_withdrawal(NEAR_TX, ACCOUNT, BTC.token_id, 10_000, BTC_DEST)
        clock.advance(10 * SEC)
        for _ in range(200):
            if (
                bridge.deposits[0].status == "COMPLETED"
                and bridge.withdrawals[NEAR_TX][0].status == "COMPLETED"
            ):
                break
            await asyncio.sleep(0.01)
        assert bridge.deposits[0].status in ("CREDITED", "COMPLETED")
        assert credits.calls == [(ACCOUNT, BTC.token_id, 40_000)]
        assert bridge.withdrawals[NEAR_TX][0].status == "COMPLETED"
    finally:
        await bridge.stop()
    await bridge.stop()  # idempotent


def test_scenario_input_checks() -> None:
    bridge = SimBridge(ManualClock(), Credits())
    with pytest.raises(InputError):
        bridge.simulate_deposit(ACCOUNT, "sol:mainnet", 1)
    with pytest.raises(InputError):
        bridge.simulate_deposit(ACCOUNT, "btc:mainnet", 0)
    with pytest.raises(InputError):
        bridge.register_withdrawal(NEAR_TX, ACCOUNT, "nep141:wrap.near", 1, BTC_DEST)
    with pytest.raises(InputError):
        SimBridge(ManualClock(), Credits(), deposit_pending_s=-1)
    tx = bridge.simulate_deposit(ACCOUNT, "btc:mainnet", 10_000, tx_hash="ff" * 32)
    assert tx == "ff" * 32
    with pytest.raises(InputError, match="already exists"):
        bridge.simulate_deposit(ACCOUNT, "btc:mainnet", 10_000, tx_hash="ff" * 32)


async def test_raw_deposit_entries_are_served_verbatim_and_skipped_by_the_client(env: Env) -> None:
    env.bridge.simulate_deposit(ACCOUNT, "eth:100", 10**18)
    env.bridge.add_raw_deposit_entry({"tx_hash": "0xbad", "amount": 1.5}, chain="eth:100")
    _, btc_page = await env.raw("recent_deposits", {"account_id": ACCOUNT, "chain": "btc:mainnet"})
    assert btc_page["result"]["deposits"] == []
    _, eth_page = await env.raw("recent_deposits", {"account_id": ACCOUNT, "chain": "eth:100"})
    assert eth_page["result"]["deposits"][-1] == {"tx_hash": "0xbad", "amount": 1.5}
    page = await env.client.recent_deposits(ACCOUNT)
    assert [d.amount for d in page.deposits] == [10**18]
    (reason,) = page.skipped
    assert reason.startswith("bridge recent_deposits: malformed reply: deposits[1].") and "0xbad" in reason
