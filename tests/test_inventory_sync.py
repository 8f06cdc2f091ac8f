"""inventory-sync against the simulated Verifier over loopback sockets (memory bus, SQLite store)."""

from __future__ import annotations

from typing import Any

from intents_mm.clock import SYSTEM_CLOCK
from intents_mm.messages import InventorySnapshot, QuoteStatus, TradeResult
from intents_mm.services.inventory_sync import InventorySync
from liquidity_testkit import BTC_ID, EURE_ID, EURE_UNIT, Services, eventually, run_services, sim_venue

NAME = "inventory-sync"


def snapshots(svc: Services) -> list[InventorySnapshot]:
    return [p for p in svc.payloads("inventory.snapshot") if isinstance(p, InventorySnapshot)]


async def state(svc: Services) -> dict[str, Any]:
    status, body = await svc.get(NAME, "/state")
    assert status == 200
    assert isinstance(body, dict)
    return body


async def test_shows_verifier_balances_publishes_snapshots_and_refresh_curl(sqlite_url: str) -> None:
    async with (
        sim_venue(btc=1_234_567, eure=42 * EURE_UNIT) as venue,
        run_services([NAME], venue.config(), sqlite_url) as svc,
    ):
        await eventually(lambda: len(snapshots(svc)) >= 1)
        first = snapshots(svc)[0]
        assert first.account_id == venue.account
        assert first.credited == {BTC_ID: 1_234_567, EURE_ID: 42 * EURE_UNIT}
        assert first.stale is False and first.fee_pips == 1 and first.unexplained_changes == []
        assert first.block_height > 0 and first.pending_deposits == {} and first.inflight_withdrawals == {}

        body = await state(svc)
        assert body["account_id"] == venue.account and body["stale"] is False
        assert body["assets"]["BTC"]["credited"] == {"units": "1234567", "human": "0.01234567"}
        assert body["assets"]["EURe"]["credited"] == {"units": str(42 * EURE_UNIT), "human": "42"}
        assert body["fee_pips"] == 1 and body["reconciliation"]["status"] == "ok"
        assert body["age_ms"] is not None and body["block_height"] >= first.block_height

        venue.verifier.credit(venue.account, BTC_ID, 1)  # visible at the next read
        status, snap = await svc.curl(
            "curl -s -X POST http://127.0.0.1:8083/refresh", {"http://127.0.0.1:8083": svc.url(NAME)}
        )
        assert status == 200
        assert snap["credited"][BTC_ID] == 1_234_568 and snap["stale"] is False
        assert snap["account_id"] == venue.account and snap["fee_pips"] == 1
        assert [c["delta"] for c in snap["unexplained_changes"]] == [1]  # nobody announced that credit

        status, health = await svc.get(NAME, "/healthz")
        assert status == 200 and health["ok"] is True


async def test_settlement_is_explained_and_unknown_change_is_flagged(sqlite_url: str) -> None:
    async with (
        sim_venue(btc=1_000_000, eure=50 * EURE_UNIT) as venue,
        run_services([NAME], venue.config(INVENTORY_POLL_MS="60000"), sqlite_url) as svc,
    ):
        await eventually(lambda: len(snapshots(svc)) >= 1)
        # our quote: we receive 3 EURe and give 10_000 sats
        result = TradeResult(
            command_id="cmd-1",
            quote_id="q-1",
            outcome="accepted",
            quote_hash="QH1",
            deadline_ns=SYSTEM_CLOCK.now_ns() + 70 * 10**9,
            amount_in=3 * EURE_UNIT,
            amount_out=10_000,
            asset_in=EURE_ID,
            asset_out=BTC_ID,
        )
        await svc.running.service(NAME).publish("exec.trade_result", result)
        # the settlement happens on the Verifier, then the relay tells us with quote_status
        venue.verifier.credit(venue.account, EURE_ID, 3 * EURE_UNIT)
        venue.verifier.ft_withdraw(venue.account, "btc.omft.near", "elsewhere.near", 10_000)
        count = len(snapshots(svc))
        status_msg = QuoteStatus(quote_hash="QH1", intent_hash="IH1", tx_hash="TX1", received_ts_ns=1)
        await svc.running.service(NAME).publish("demand.quote_status", status_msg)
        await eventually(lambda: len(snapshots(svc)) > count)  # the status triggered a read
        snap = snapshots(svc)[-1]
        assert snap.credited == {BTC_ID: 990_000, EURE_ID: 53 * EURE_UNIT}
        assert snap.unexplained_changes == []
        body = await state(svc)
        assert body["reconciliation"]["status"] == "ok"
        assert body["reconciliation"]["last_explained_by"] == ["settlement of quote QH1"]
        assert body["reconciliation"]["last_deltas"] == {BTC_ID: "-10000", EURE_ID: str(3 * EURE_UNIT)}

        # a change nobody explains: flagged in the snapshot and in /state
        venue.verifier.ft_withdraw(venue.account, "btc.omft.near", "thief.near", 777)
        status, snap_json = await svc.post(NAME, "/refresh")
        assert status == 200
        assert snap_json["unexplained_changes"][0]["asset"] == BTC_ID
        assert snap_json["unexplained_changes"][0]["delta"] == -777
        assert snapshots(svc)[-1].unexplained_changes[0].delta == -777
        body = await state(svc)
        assert body["reconciliation"]["status"] == "unexplained"
        assert body["reconciliation"]["unexplained_total"] == 1
        assert body["reconciliation"]["recent_unexplained"][0]["delta"] == "-777"


async def test_quote_status_burst_is_debounced_into_few_reads(sqlite_url: str) -> None:
    async with (
        sim_venue() as venue,
        run_services([NAME], venue.config(INVENTORY_POLL_MS="60000"), sqlite_url) as svc,
    ):
        await eventually(lambda: len(snapshots(svc)) >= 1)
        before = len(snapshots(svc))
        service = svc.running.service(NAME)
        for i in range(20):
            msg = QuoteStatus(quote_hash=f"Q{i}", intent_hash="I", tx_hash="T", received_ts_ns=1)
            await service.publish("demand.quote_status", msg)
        await eventually(lambda: len(snapshots(svc)) > before)
        await eventually(lambda: not service._wake.is_set())  # type: ignore[attr-defined]
        assert 1 <= len(snapshots(svc)) - before <= 3


async def test_goes_stale_without_publishing_zeros_and_recovers(sqlite_url: str) -> None:
    async with sim_venue(btc=5_000, eure=7 * EURE_UNIT) as venue:
        config = venue.config(INVENTORY_POLL_MS="200", INVENTORY_MAX_READ_FAILURES="2")
        async with run_services([NAME], config, sqlite_url) as svc:
            await eventually(lambda: len(snapshots(svc)) >= 1)
            good = snapshots(svc)[-1]
            venue.rpc.set_fault_rate(1.0, "500")
            status, body = await svc.post(NAME, "/refresh")
            assert status == 502 and body["stale"] is True and "inventory read failed" in body["error"]
            await eventually(lambda: any(s.stale for s in snapshots(svc)))
            stale = [s for s in snapshots(svc) if s.stale]
            assert len(stale) == 1  # published once, on the transition
            assert stale[0].credited == {BTC_ID: 5_000, EURE_ID: 7 * EURE_UNIT}  # the last GOOD balances
            assert stale[0].read_ts_ns <= good.read_ts_ns + 10**9 and stale[0].stale_reason
            body = await state(svc)
            assert body["stale"] is True and "balance read failed" in body["stale_reason"]
            await eventually(lambda: svc.running.service(NAME).consecutive_failures >= 2)  # type: ignore[attr-defined]
            status, health = await svc.get(NAME, "/healthz")
            assert status == 503 and "inventory" in health["failing"]
            assert all(s.credited[BTC_ID] == 5_000 for s in snapshots(svc))  # never a zero, never invented

            # the node comes back: fresh, non-stale snapshots and a healthy service
            venue.rpc.set_fault_rate(0.0)
            venue.verifier.credit(venue.account, BTC_ID, 10)
            await eventually(
                lambda: not snapshots(svc)[-1].stale and snapshots(svc)[-1].credited[BTC_ID] == 5_010
            )
            status, health = await svc.get(NAME, "/healthz")
            assert status == 200
            body = await state(svc)
            assert body["stale"] is False and body["consecutive_failures"] == 0

            # the node disappears altogether (connection refused), then returns on the same port
            port = int(venue.rpc_url.rsplit(":", 1)[1])
            await venue.rpc.stop()
            status, body = await svc.post(NAME, "/refresh")
            assert status == 502 and (await state(svc))["stale"] is True
            await venue.rpc.start(port=port)
            status, snap = await svc.post(NAME, "/refresh")
            assert status == 200 and snap["stale"] is False and snap["credited"][BTC_ID] == 5_010


async def test_without_account_it_reports_instead_of_reading(sqlite_url: str) -> None:
    async with sim_venue() as venue:
        config = venue.config(NEAR_INTENTS_SIGNER_PRIVATE_KEY="")
        async with run_services([NAME], config, sqlite_url) as svc:
            status, health = await svc.get(NAME, "/healthz")
            assert status == 503 and "NEAR_INTENTS_ACCOUNT_ID" in health["failing"]["inventory"]
            status, body = await svc.post(NAME, "/refresh")
            assert status == 503 and "NEAR_INTENTS_ACCOUNT_ID" in body["error"]
            assert snapshots(svc) == []


def test_account_is_named_or_implicit() -> None:
    from intents_mm.config import load_config
    from intents_mm.near.keys import SigningKey
    from intents_mm.services.inventory_sync import trading_account

    key = SigningKey.generate()
    implicit = load_config({"NEAR_INTENTS_SIGNER_PRIVATE_KEY": key.to_secret_string()}, dotenv=None)
    assert trading_account(implicit) == key.public_key.implicit_account_id()
    named = load_config(
        {"NEAR_INTENTS_SIGNER_PRIVATE_KEY": key.to_secret_string(), "NEAR_INTENTS_ACCOUNT_ID": "mm.near"},
        dotenv=None,
    )
    assert trading_account(named) == "mm.near"
    assert trading_account(load_config({}, dotenv=None)) is None
    assert InventorySync.name == "inventory-sync"
