"""liquidity-manager against the simulated bridge, chain and Verifier over loopback sockets."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from intents_mm.bus import make_bus
from intents_mm.domain.addresses import to_checksum_address
from intents_mm.domain.assets import EURE
from intents_mm.messages import InventorySnapshot, LiquidityAction, LiquidityState
from intents_mm.near.rpc import NearRpcClient
from intents_mm.near.sender import TransactionSender
from intents_mm.sim.bridge import derive_deposit_address
from liquidity_testkit import (
    BTC_ADDRESS,
    BTC_ID,
    EURE_ID,
    EURE_UNIT,
    GNOSIS_ADDRESS,
    Services,
    Venue,
    eventually,
    run_services,
    sim_venue,
)

NAME = "liquidity-manager"
#: withdrawals need its reservation summary (risk.reservations) and hold acknowledgement
STRATEGY = "strategy-engine"
RUNBOOK = ("inventory-sync", "liquidity-manager")  # ports 8083, 8084

# The runbook's curls for 8084, verbatim except for the placeholders (<...>, 0xYourGnosisAddress).
# ruff: noqa: E501 (the curl commands are kept exactly as the runbook writes them)
CURL_REFRESH = "curl -s -X POST http://127.0.0.1:8084/refresh"
CURL_ESTIMATE = """curl -s -X POST http://127.0.0.1:8084/withdrawal-estimate \\
  -H 'content-type: application/json' \\
  -d '{"asset_id":"nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near","amount":"5000000000000000000","destination_address":"0xYourGnosisAddress"}'"""
CURL_UNFREEZE = """curl -s -X POST http://127.0.0.1:8084/freeze-withdrawals \\
  -H 'content-type: application/json' \\
  -d '{"frozen":false}'"""
CURL_WITHDRAW = """curl -s -X POST http://127.0.0.1:8084/withdraw \\
  -H 'content-type: application/json' \\
  -d '{"asset_id":"nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near","amount":"5000000000000000000","destination_address":"0xYourGnosisAddress"}'"""
CURL_TRACK = """curl -s -X POST http://127.0.0.1:8084/track-withdrawal \\
  -H 'content-type: application/json' \\
  -d '{"withdrawal_hash":"<near-burn-tx-hash>","asset_id":"nep141:btc.omft.near","chain":"btc:mainnet","amount":"1000"}'"""


def actions(svc: Services, kind: str | None = None) -> list[LiquidityAction]:
    return [
        p
        for p in svc.payloads("liquidity.action")
        if isinstance(p, LiquidityAction) and kind in (None, p.kind)
    ]


def states(svc: Services) -> list[LiquidityState]:
    return [p for p in svc.payloads("liquidity.state") if isinstance(p, LiquidityState)]


async def lm_state(svc: Services) -> dict[str, Any]:
    status, body = await svc.get(NAME, "/state")
    assert status == 200 and isinstance(body, dict)
    return body


def ports(svc: Services) -> dict[str, str]:
    """Runbook base URLs -> the ephemeral URLs of the running services."""
    return {
        f"http://127.0.0.1:{8083 + i}": svc.url(name) for i, name in enumerate(RUNBOOK) if name in svc.names
    }


def withdraw_body(amount: int = 5 * EURE_UNIT, **extra: Any) -> dict[str, Any]:
    return {"asset_id": EURE_ID, "amount": str(amount), "destination_address": GNOSIS_ADDRESS, **extra}


async def test_deposit_addresses_and_refresh_curl(sqlite_url: str) -> None:
    async with sim_venue() as venue, run_services([NAME, STRATEGY], venue.config(), sqlite_url) as svc:
        body = await lm_state(svc)
        expected = {c: derive_deposit_address(venue.account, c) for c in ("btc:mainnet", "eth:100")}
        assert {c: v["address"] for c, v in body["deposit_addresses"].items()} == expected
        assert body["deposit_addresses"]["btc:mainnet"]["assets"] == ["BTC"]
        assert body["withdrawals_frozen"] is True and body["account_id"] == venue.account
        status, refreshed = await svc.curl(CURL_REFRESH, {"http://127.0.0.1:8084": svc.url(NAME)})
        assert status == 200 and refreshed["deposit_addresses"]["eth:100"]["address"] == expected["eth:100"]
        assert venue.bridge.calls["deposit_address"] >= 4  # on start and on refresh, for both chains
        await eventually(lambda: bool(states(svc)))
        assert states(svc)[-1].deposit_addresses == expected
        assert states(svc)[-1].withdrawals_frozen is True
        assert actions(svc, "deposit_address_refresh")[0].detail == expected

        venue.bridge.fail_method("deposit_address", 2, http_500=True)
        status, failed = await svc.post(NAME, "/refresh")
        assert status == 502 and "deposit_address" in failed["error"]
        assert failed["state"]["deposit_addresses"]["btc:mainnet"]["address"] == expected["btc:mainnet"]


async def test_deposit_pending_then_credited_into_inventory(sqlite_url: str) -> None:
    async with (
        sim_venue(btc=0, eure=0) as venue,
        run_services([NAME, "inventory-sync", STRATEGY], venue.config(), sqlite_url) as svc,
    ):
        await eventually(lambda: bool(svc.payloads("inventory.snapshot")))
        tx = venue.bridge.simulate_deposit(venue.account, "btc:mainnet", 50_000)
        await eventually(lambda: any(s.pending_deposits for s in states(svc)), timeout_s=5)
        pending = next(s for s in states(svc) if s.pending_deposits).pending_deposits[0]
        # the bridge gives no tx_hash for BTC ("EVM networks only"): a stable synthetic id stands in
        assert tx and "tx_hash" not in venue.bridge.deposits[0].wire()
        assert pending.tx_hash.startswith("nohash:")
        assert (pending.asset_id, pending.amount, pending.status) == (BTC_ID, 50_000, "PENDING")
        lm = await lm_state(svc)
        assert lm["pending_deposits"][0]["human_amount"] == "0.0005"

        def inventory() -> list[InventorySnapshot]:
            return [p for p in svc.payloads("inventory.snapshot") if isinstance(p, InventorySnapshot)]

        # pending is shown apart from credited inventory, then it becomes credited
        await eventually(lambda: any(s.pending_deposits == {BTC_ID: 50_000} for s in inventory()))
        assert all(s.credited[BTC_ID] == 0 for s in inventory() if s.pending_deposits)
        await eventually(lambda: bool(actions(svc, "deposit_credited")), timeout_s=5)
        credited = actions(svc, "deposit_credited")
        assert len(credited) == 1
        assert (credited[0].asset_id, credited[0].amount, credited[0].status) == (BTC_ID, 50_000, "completed")
        assert credited[0].detail["tx_hash"] == pending.tx_hash  # the same id inventory-sync matched
        await eventually(
            lambda: inventory()[-1].credited[BTC_ID] == 50_000 and not inventory()[-1].pending_deposits
        )
        assert all(not s.unexplained_changes for s in inventory())  # the deposit explains the change
        _, inv = await svc.get("inventory-sync", "/state")
        assert inv["assets"]["BTC"]["credited"]["human"] == "0.0005"
        assert inv["reconciliation"]["unexplained_total"] == 0
        await eventually(lambda: not states(svc)[-1].pending_deposits)
        assert len(actions(svc, "deposit_credited")) == 1  # announced once


async def test_withdraw_frozen_by_default_then_completes_once(sqlite_url: str) -> None:
    async with (
        sim_venue(eure=20 * EURE_UNIT) as venue,
        run_services([NAME, "inventory-sync", STRATEGY], venue.config(), sqlite_url) as svc,
    ):
        status, body = await svc.post(NAME, "/withdraw", withdraw_body())
        assert status == 409 and "frozen" in body["error"]
        assert venue.verifier.balance_of(venue.account, EURE_ID) == 20 * EURE_UNIT
        assert actions(svc, "withdraw")[-1].status == "refused"

        status, body = await svc.curl(CURL_UNFREEZE, ports(svc))
        assert status == 200 and body == {"withdrawals_frozen": False}
        await eventually(lambda: states(svc)[-1].withdrawals_frozen is False)

        status, body = await svc.post(NAME, "/withdraw", withdraw_body())
        assert status == 200, body
        assert body["status"] == "SUBMITTED" and body["duplicate"] is False and body["near_tx_hash"]
        assert body["destination"] == GNOSIS_ADDRESS
        tx_hash = body["near_tx_hash"]
        assert venue.verifier.balance_of(venue.account, EURE_ID) == 15 * EURE_UNIT
        record = venue.chain.tx_record(tx_hash)
        assert record is not None and record.success

        # a retried identical request answers the same operation and withdraws nothing more
        status, again = await svc.post(NAME, "/withdraw", withdraw_body())
        assert status == 200 and again["duplicate"] is True and again["near_tx_hash"] == tx_hash

        async def completed() -> bool:
            wd = (await lm_state(svc))["withdrawals"]
            return bool(wd) and wd[-1]["status"] == "COMPLETED"

        await eventually(completed, timeout_s=6)
        wd = (await lm_state(svc))["withdrawals"][-1]
        assert wd["transfer_tx_hash"].startswith("0x") and wd["withdraw_amount"] == str(
            5 * EURE_UNIT - 10**17
        )
        steps = [a.status for a in actions(svc, "withdraw") if a.action_id == body["request_id"]]
        # the refusal while frozen carried the same (minute-hash) request id; it did not reserve it
        assert steps[:3] == ["refused", "requested", "submitted"] and steps[-1] == "completed"
        assert (
            len(venue.bridge.withdrawals) == 1
            and venue.bridge.withdrawals[tx_hash][0].amount == 5 * EURE_UNIT
        )
        assert venue.verifier.balance_of(venue.account, EURE_ID) == 15 * EURE_UNIT
        status, again = await svc.post(NAME, "/withdraw", withdraw_body())
        assert status == 200 and again["duplicate"] is True and again["status"] == "COMPLETED"

        # the in-flight amount and its completion are seen by inventory-sync, with nothing unexplained
        status, inv = await svc.post("inventory-sync", "/refresh")
        assert status == 200 and inv["credited"][EURE_ID] == str(15 * EURE_UNIT)
        snaps = [p for p in svc.payloads("inventory.snapshot") if isinstance(p, InventorySnapshot)]
        assert all(not s.unexplained_changes for s in snaps)
        assert states(svc)[-1].withdrawals[0].status == "COMPLETED"

        # an explicit request id is idempotent as well; a different withdrawal under it is refused
        first = await svc.post(NAME, "/withdraw", withdraw_body(2 * EURE_UNIT, request_id="op-7"))
        second = await svc.post(NAME, "/withdraw", withdraw_body(2 * EURE_UNIT, request_id="op-7"))
        assert first[0] == 200 and second[0] == 200 and second[1]["duplicate"] is True
        conflict = await svc.post(NAME, "/withdraw", withdraw_body(3 * EURE_UNIT, request_id="op-7"))
        assert conflict[0] == 409 and "already used" in conflict[1]["error"]
        assert venue.verifier.balance_of(venue.account, EURE_ID) == 13 * EURE_UNIT


FROZEN_AT_START = 'liquidity-manager: withdrawals frozen (every start; unfreeze with POST /freeze-withdrawals {"frozen":false})'


async def test_withdrawals_come_up_frozen_after_every_restart(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="intents_mm.services.liquidity_manager")
    async with sim_venue() as venue:
        bus = make_bus(None)
        await bus.start()
        try:
            async with run_services([NAME, STRATEGY], venue.config(), sqlite_url, bus=bus) as svc:
                assert (await lm_state(svc))["withdrawals_frozen"] is True
                status, _ = await svc.post(NAME, "/freeze-withdrawals", {"frozen": False})
                assert status == 200 and (await lm_state(svc))["withdrawals_frozen"] is False
                freeze = actions(svc, "freeze_withdrawals")
                assert freeze[-1].detail == {"frozen": False} and freeze[-1].status == "completed"
                ops = [p for p in svc.payloads("control.operator_action")]
                assert any(getattr(op, "action", "") == "freeze-withdrawals" for op in ops)
                # the change is recorded in the store, but a restart comes up frozen all the same
                assert await svc.store.get_state("liquidity-manager.withdrawals_frozen") is False
            caplog.clear()
            async with run_services([NAME, STRATEGY], venue.config(), sqlite_url, bus=bus) as svc:
                assert (await lm_state(svc))["withdrawals_frozen"] is True
                await eventually(lambda: bool(states(svc)) and states(svc)[-1].withdrawals_frozen is True)
                status, body = await svc.post(NAME, "/withdraw", withdraw_body())
                assert status == 409 and "frozen" in body["error"]
            lines = [r for r in caplog.records if r.getMessage() == FROZEN_AT_START]
            assert len(lines) == 1 and lines[0].levelno == logging.INFO
            # and again after a restart that followed an explicit freeze
            async with run_services([NAME], venue.config(), sqlite_url, bus=bus) as svc:
                await svc.post(NAME, "/freeze-withdrawals", {"frozen": True})
            async with run_services([NAME], venue.config(), sqlite_url, bus=bus) as svc:
                assert (await lm_state(svc))["withdrawals_frozen"] is True
        finally:
            await bus.close()


async def test_withdraw_request_ids_survive_a_restart(sqlite_url: str) -> None:
    async with sim_venue(eure=10 * EURE_UNIT) as venue:
        async with run_services([NAME, STRATEGY], venue.config(), sqlite_url) as svc:
            await svc.post(NAME, "/freeze-withdrawals", {"frozen": False})
            status, body = await svc.post(NAME, "/withdraw", withdraw_body(request_id="same-op"))
            assert status == 200 and body["status"] == "SUBMITTED"
        async with run_services([NAME, STRATEGY], venue.config(), sqlite_url) as svc:
            status, body = await svc.post(NAME, "/withdraw", withdraw_body(request_id="same-op"))
            assert status == 200 and body["duplicate"] is True
            assert venue.verifier.balance_of(venue.account, EURE_ID) == 5 * EURE_UNIT

            async def completed() -> bool:  # tracking resumes after the restart
                return bool((await lm_state(svc))["withdrawals"][-1]["status"] == "COMPLETED")

            await eventually(completed, timeout_s=6)


@pytest.mark.parametrize(
    ("raw", "status", "needle"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (
            b'{"amount": "5", "destination_address": "0x52908400098527886E0F7030069857D2E4169EE7"}',
            400,
            "asset_id",
        ),
        (
            b'{"asset_id": "'
            + EURE_ID.encode()
            + b'", "destination_address": "'
            + GNOSIS_ADDRESS.encode()
            + b'"}',
            400,
            "amount is required",
        ),
        (b'{"asset_id": "' + EURE_ID.encode() + b'", "amount": "1.5"}', 400, "string of digits"),
        (b'{"asset_id": "' + EURE_ID.encode() + b'", "amount": 1.5}', 400, "amount"),
        (b'{"asset_id": "' + EURE_ID.encode() + b'", "amount": "-5"}', 400, "string of digits"),
        (b'{"asset_id": "' + EURE_ID.encode() + b'", "amount": "0"}', 400, "greater than zero"),
        (b'{"asset_id": "nep141:wrap.near", "amount": "5"}', 400, "unknown asset_id"),
        (
            b'{"asset_id": "'
            + EURE_ID.encode()
            + b'", "amount": "5", "destination_address": "0xYourGnosisAddress"}',
            400,
            "bad destination_address",
        ),
        (
            b'{"asset_id": "'
            + BTC_ID.encode()
            + b'", "amount": "5000", "destination_address": "'
            + GNOSIS_ADDRESS.encode()
            + b'"}',
            400,
            "bad destination_address",
        ),
        (b'{"asset_id": "' + EURE_ID.encode() + b'", "amount": "5"}', 400, "TRADING_EURE_WITHDRAW_ADDRESS"),
        (
            b'{"asset_id": "' + EURE_ID.encode() + b'", "amount": "5", "destination": "0x1"}',
            400,
            "unknown field",
        ),
        (
            b'{"asset_id": "'
            + EURE_ID.encode()
            + b'", "amount": "5", "request_id": "a b", "destination_address": "'
            + GNOSIS_ADDRESS.encode()
            + b'"}',
            400,
            "request_id",
        ),
    ],
)
async def test_bad_withdraw_bodies_are_400(sqlite_url: str, raw: bytes, status: int, needle: str) -> None:
    async with sim_venue() as venue, run_services([NAME, STRATEGY], venue.config(), sqlite_url) as svc:
        await svc.post(NAME, "/freeze-withdrawals", {"frozen": False})
        got, body = await svc.post(NAME, "/withdraw", raw=raw)
        assert got == status and needle in body["error"], body
        if b"request_id" not in raw:
            got, body = await svc.post(NAME, "/withdrawal-estimate", raw=raw)
            assert got == status and needle in body["error"], body
        assert venue.verifier.balance_of(venue.account, EURE_ID) == 100 * EURE_UNIT
        assert not venue.bridge.withdrawals


async def test_withdraw_amount_checks_and_default_destination(sqlite_url: str) -> None:
    async with sim_venue(btc=5_000, eure=3 * EURE_UNIT) as venue:
        config = venue.config(TRADING_BTC_WITHDRAW_ADDRESS=BTC_ADDRESS)
        async with run_services([NAME, STRATEGY], config, sqlite_url) as svc:
            await svc.post(NAME, "/freeze-withdrawals", {"frozen": False})
            below_min = await svc.post(NAME, "/withdraw", {"asset_id": BTC_ID, "amount": "600"})
            assert below_min[0] == 400 and "minimum" in below_min[1]["error"]
            not_above_fee = await svc.post(NAME, "/withdraw", {"asset_id": BTC_ID, "amount": "1500"})
            assert not_above_fee[0] == 400 and "fee" in not_above_fee[1]["error"]
            too_much = await svc.post(NAME, "/withdraw", {"asset_id": BTC_ID, "amount": "5001"})
            assert too_much[0] == 409 and "credited balance 5000" in too_much[1]["error"]
            refused = [a for a in actions(svc, "withdraw") if a.status == "refused"]
            assert len(refused) == 3 and "minimum" in refused[0].detail["reason"]
            assert not venue.bridge.withdrawals
            # the destination defaults to TRADING_BTC_WITHDRAW_ADDRESS
            status, body = await svc.post(NAME, "/withdraw", {"asset_id": BTC_ID, "amount": "5000"})
            assert status == 200 and body["destination"] == BTC_ADDRESS
            entry = venue.bridge.withdrawals[body["near_tx_hash"]][0]
            assert (entry.address, entry.amount) == (BTC_ADDRESS, 5000)
            assert venue.verifier.balance_of(venue.account, BTC_ID) == 0


async def test_withdrawal_estimate_curl(sqlite_url: str) -> None:
    async with sim_venue() as venue, run_services([NAME, STRATEGY], venue.config(), sqlite_url) as svc:
        status, body = await svc.curl(
            CURL_ESTIMATE.replace("0xYourGnosisAddress", GNOSIS_ADDRESS.lower()), ports(svc)
        )
        assert status == 200, body
        assert body["withdrawal_fee"] == str(10**17) and body["min_withdrawal_amount"] == str(EURE_UNIT)
        assert body["receive_amount"] == str(5 * EURE_UNIT - 10**17) and body["ok"] is True
        assert body["destination_address"] == to_checksum_address(GNOSIS_ADDRESS)
        assert body["human"] == {
            "amount": "5",
            "withdrawal_fee": "0.1",
            "min_withdrawal_amount": "1",
            "receive_amount": "4.9",
            "symbol": "EURe",
        }
        assert actions(svc, "withdrawal_estimate")[-1].detail["withdrawal_fee"] == str(10**17)
        # as written, the placeholder address is refused with a clear reason
        status, body = await svc.curl(CURL_ESTIMATE, ports(svc))
        assert status == 400 and "0xYourGnosisAddress" in body["error"]
        small = await svc.post(NAME, "/withdrawal-estimate", withdraw_body(10**16))
        assert small[0] == 200 and small[1]["ok"] is False and small[1]["receive_amount"] == "0"
        assert len(small[1]["problems"]) == 2


async def _burn(venue: Venue, amount: int) -> str:
    """An ft_withdraw burn sent outside the service (e.g. by an operator with near-cli)."""
    async with NearRpcClient([venue.rpc_url]) as rpc:
        sender = TransactionSender(rpc, venue.account, venue.key)
        args = {
            "token": "btc.omft.near",
            "receiver_id": "btc.omft.near",
            "amount": str(amount),
            "memo": f"WITHDRAW_TO:{BTC_ADDRESS}",
        }
        result = await sender.call("intents.near", "ft_withdraw", args)
        return result.tx_hash


async def test_runbook_curls_for_8084_and_8083(sqlite_url: str) -> None:
    async with (
        sim_venue() as venue,
        run_services([NAME, "inventory-sync", STRATEGY], venue.config(), sqlite_url) as svc,
    ):
        tx_hash = await _burn(venue, 1000)
        status, body = await svc.curl(CURL_TRACK.replace("<near-burn-tx-hash>", tx_hash), ports(svc))
        assert status == 200, body
        assert (
            body["near_tx_hash"] == tx_hash
            and body["kind"] == "track_withdrawal"
            and body["amount"] == "1000"
        )
        status, dup = await svc.curl(CURL_TRACK.replace("<near-burn-tx-hash>", tx_hash), ports(svc))
        assert status == 200 and dup["duplicate"] is True
        status, bad = await svc.curl(CURL_TRACK, ports(svc))  # placeholder hash
        assert status == 400 and "withdrawal_hash" in bad["error"]
        mismatch = await svc.post(
            NAME,
            "/track-withdrawal",
            {"withdrawal_hash": tx_hash, "asset_id": BTC_ID, "chain": "eth:100", "amount": "1000"},
        )
        assert mismatch[0] == 400 and "chain" in mismatch[1]["error"]

        def tracked() -> list[Any]:
            return states(svc)[-1].withdrawals if states(svc) else []

        await eventually(lambda: any(w.withdrawal_hash == tx_hash for w in tracked()))
        # the bridge rejects 1000 sats (fee 1500): the tracked burn ends REJECTED, reported as failed
        await eventually(lambda: any(w.status == "REJECTED" for w in tracked()), timeout_s=6)
        steps = [a.status for a in actions(svc, "track_withdrawal")]
        assert steps[0] == "requested" and steps[-1] == "failed"

        status, _ = await svc.curl(CURL_REFRESH, ports(svc))
        assert status == 200
        status, body = await svc.curl("curl -s -X POST http://127.0.0.1:8083/refresh", ports(svc))
        assert status == 200 and body["credited"][BTC_ID] == 2_000_000 - 1000
        status, body = await svc.curl(CURL_UNFREEZE, ports(svc))
        assert status == 200 and body["withdrawals_frozen"] is False
        status, body = await svc.curl(
            CURL_WITHDRAW.replace("0xYourGnosisAddress", GNOSIS_ADDRESS), ports(svc)
        )
        assert status == 200 and body["status"] == "SUBMITTED"
        status, body = await svc.curl(
            CURL_ESTIMATE.replace("0xYourGnosisAddress", GNOSIS_ADDRESS), ports(svc)
        )
        assert status == 200 and body["ok"] is True
        for base in ("http://127.0.0.1:8083", "http://127.0.0.1:8084"):
            for path in ("/healthz", "/state"):
                status, _ = await svc.curl(f"curl -s {base}{path}", ports(svc))
                assert status == 200


async def test_failed_submission_is_recorded_and_not_retried(sqlite_url: str) -> None:
    async with (
        sim_venue(eure=10 * EURE_UNIT) as venue,
        run_services([NAME, STRATEGY], venue.config(), sqlite_url) as svc,
    ):
        await svc.post(NAME, "/freeze-withdrawals", {"frozen": False})
        venue.rpc.fail_next(1, "500", method="send_tx")
        status, body = await svc.post(NAME, "/withdraw", withdraw_body(request_id="flaky"))
        assert status == 502 and body["status"] == "SUBMIT_UNKNOWN" and "check the account" in body["error"]
        status, again = await svc.post(NAME, "/withdraw", withdraw_body(request_id="flaky"))
        assert status == 200 and again["duplicate"] is True and again["status"] == "SUBMIT_UNKNOWN"
        assert venue.verifier.balance_of(venue.account, EURE_ID) == 10 * EURE_UNIT
        failed = [a for a in actions(svc, "withdraw") if a.status == "failed"]
        assert failed and failed[-1].detail.get("outcome_unknown") is True
        assert "withdraw:flaky" in (await lm_state(svc))["last_errors"]


async def test_mutating_calls_need_the_token_when_one_is_set(sqlite_url: str) -> None:
    async with sim_venue() as venue:
        config = venue.config(CONTROL_API_TOKEN="s3cret-token")
        async with run_services([NAME, STRATEGY], config, sqlite_url) as svc:
            status, _ = await svc.post(NAME, "/freeze-withdrawals", {"frozen": False})
            assert status == 401 and (await lm_state(svc))["withdrawals_frozen"] is True
            status, _ = await svc.post(NAME, "/withdraw", withdraw_body())
            assert status == 401 and not venue.bridge.withdrawals
            status, _ = await svc.post(NAME, "/refresh")  # read-only calls stay open
            assert status == 200
            status, _ = await svc.post(NAME, "/withdrawal-estimate", withdraw_body())
            assert status == 200
            headers = {"Authorization": "Bearer s3cret-token", "content-type": "application/json"}
            async with svc.session.post(
                svc.url(NAME) + "/freeze-withdrawals", data=b'{"frozen":false}', headers=headers
            ) as resp:
                assert resp.status == 200
            assert (await lm_state(svc))["withdrawals_frozen"] is False


async def test_deposit_credited_while_down_is_still_announced(sqlite_url: str) -> None:
    async with sim_venue(btc=0, eure=0) as venue:
        tx = venue.bridge.simulate_deposit(venue.account, "eth:100", 2 * EURE_UNIT)
        async with run_services([NAME, STRATEGY], venue.config(), sqlite_url) as svc:
            await eventually(lambda: any(s.pending_deposits for s in states(svc)))
        await eventually(lambda: venue.bridge.deposits[0].status != "PENDING")  # credited while down
        async with run_services([NAME, STRATEGY], venue.config(), sqlite_url) as svc:
            await eventually(lambda: bool(actions(svc, "deposit_credited")))
            credited = actions(svc, "deposit_credited")
            assert [(a.detail["tx_hash"], a.asset_id, a.amount) for a in credited] == [
                (tx, EURE_ID, 2 * EURE_UNIT)
            ]
            assert not (await lm_state(svc))["pending_deposits"]
        async with run_services([NAME, STRATEGY], venue.config(), sqlite_url) as svc:  # history, not news
            await eventually(lambda: bool(states(svc)))
            await svc.post(NAME, "/refresh")
            assert actions(svc, "deposit_credited") == []


async def test_a_bad_recent_deposits_entry_is_skipped_logged_once_and_counted(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="intents_mm.services.liquidity_manager")
    async with sim_venue(btc=0, eure=0) as venue:
        bad = {
            "tx_hash": "0xbadbad",
            "chain": "eth:100",
            "defuse_asset_identifier": EURE.defuse_asset_id,
            "decimals": 18,
            "amount": "12.5",
            "account_id": venue.account,
            "address": GNOSIS_ADDRESS,
            "status": "COMPLETED",
        }
        venue.bridge.add_raw_deposit_entry(bad, chain="eth:100")
        async with run_services(["liquidity-manager", "inventory-sync"], venue.config(), sqlite_url) as svc:
            venue.bridge.simulate_deposit(venue.account, "eth:100", 3 * EURE_UNIT)
            # the good deposit on the same page is still followed to credited
            await eventually(lambda: bool(actions(svc, "deposit_credited")), timeout_s=8)
            (credited,) = actions(svc, "deposit_credited")
            assert (credited.asset_id, credited.amount) == (EURE_ID, 3 * EURE_UNIT)
            assert credited.detail["tx_hash"].startswith("0x")  # EVM deposits keep their hash
            await svc.post(NAME, "/refresh")
            skipped = (await lm_state(svc))["skipped_deposit_entries"]
            assert skipped["last_poll"] == {"btc:mainnet": 0, "eth:100": 1}
            assert skipped["total"] >= 2  # counted at every poll
            (reason,) = skipped["recent"]
            assert "amount is missing or not an integer amount" in reason and "0xbadbad" in reason
            assert (await svc.get(NAME, "/healthz"))[0] == 200  # a skipped entry is no bridge failure
        logged = [r for r in caplog.records if "entry skipped" in r.getMessage()]
        assert len(logged) == 1 and logged[0].levelno == logging.WARNING  # once, not at every poll


async def test_withdraw_takes_the_minimum_from_supported_tokens(sqlite_url: str) -> None:
    """The estimate's token carries the docs' "1.0" (whole EURe) and no withdrawal minimum; the
    minimum comes from supported_tokens, as the SDK takes it."""
    async with (
        sim_venue(eure=10 * EURE_UNIT) as venue,
        run_services([NAME, STRATEGY], venue.config(), sqlite_url) as svc,
    ):
        status, est = await svc.post(NAME, "/withdrawal-estimate", withdraw_body(5 * EURE_UNIT))
        assert status == 200 and est["ok"] is True
        assert est["min_withdrawal_amount"] == str(EURE_UNIT) and est["withdrawal_fee"] == str(10**17)
        await svc.post(NAME, "/freeze-withdrawals", {"frozen": False})
        status, body = await svc.post(NAME, "/withdraw", withdraw_body(EURE_UNIT // 2))
        assert status == 400 and f"below the bridge minimum withdrawal {EURE_UNIT}" in body["error"]
        assert venue.bridge.calls.get("supported_tokens", 0) >= 2
        venue.bridge.fail_method("supported_tokens", 1, message="Internal error")
        status, body = await svc.post(NAME, "/withdraw", withdraw_body(2 * EURE_UNIT))
        assert status == 502 and "bridge withdrawal terms failed" in body["error"]
        assert venue.verifier.balance_of(venue.account, EURE_ID) == 10 * EURE_UNIT  # nothing withdrawn


@pytest.mark.parametrize(
    ("shape", "form"), [("docs", "exponent"), ("sdk", "exponent"), ("docs", "string"), ("sdk", "number")]
)
async def test_deposits_in_every_reply_shape_are_credited_exactly(
    sqlite_url: str, shape: str, form: str
) -> None:
    """BTC 1.5 (150000000 sat, ``15e7`` in exponent form) and EURe 3 (``3e18``) through the whole path."""
    async with (
        sim_venue(btc=0, eure=0, reply_shape=shape, deposit_amount_form=form) as venue,
        run_services([NAME], venue.config(), sqlite_url) as svc,
    ):
        await eventually(lambda: bool(states(svc)))
        btc_tx = venue.bridge.simulate_deposit(venue.account, "btc:mainnet", 150_000_000)
        eure_tx = venue.bridge.simulate_deposit(venue.account, "eth:100", 3 * EURE_UNIT)
        await eventually(lambda: len(actions(svc, "deposit_credited")) == 2, timeout_s=8)
        got = {a.asset_id: a for a in actions(svc, "deposit_credited")}
        assert (got[BTC_ID].amount, got[EURE_ID].amount) == (150_000_000, 3 * EURE_UNIT)
        assert got[EURE_ID].detail["tx_hash"] == eure_tx  # EVM: the hash is always given
        btc_id = got[BTC_ID].detail["tx_hash"]
        assert btc_id == btc_tx if shape == "sdk" else btc_id.startswith("nohash:")
        assert (await lm_state(svc))["skipped_deposit_entries"]["total"] == 0


async def test_track_withdrawal_checks_the_hash_on_near_and_untrack_removes_it(sqlite_url: str) -> None:
    async with (
        sim_venue() as venue,
        run_services(["liquidity-manager", "inventory-sync"], venue.config(), sqlite_url) as svc,
    ):
        burn = await _burn(venue, 2000)

        def track(
            tx_hash: str, amount: str, asset: str = BTC_ID, chain: str = "btc:mainnet"
        ) -> dict[str, Any]:
            return {"withdrawal_hash": tx_hash, "asset_id": asset, "chain": chain, "amount": amount}

        # a well-formed hash NEAR does not know
        unknown = "11111111111111111111111111111111"
        status, body = await svc.post(NAME, "/track-withdrawal", track(unknown, "2000"))
        assert status == 409 and "is known to NEAR" in body["error"], body
        # the amount comes from the chain: another amount is refused, naming the burned one
        status, body = await svc.post(
            NAME, "/track-withdrawal", track(burn, "3400000000000000000000000000000")
        )
        assert status == 409 and "burned 2000" in body["error"], body
        # the burn withdraws BTC, not EURe
        status, body = await svc.post(NAME, "/track-withdrawal", track(burn, "2000", EURE_ID, "eth:100"))
        assert status == 409 and "withdraws btc.omft.near" in body["error"], body
        # a transaction of ours that is no ft_withdraw
        async with NearRpcClient([venue.rpc_url]) as rpc:
            sender = TransactionSender(rpc, venue.account, venue.key)
            other = (await sender.call("intents.near", "execute_intents", {"signed": []}, deposit=0)).tx_hash
        status, body = await svc.post(NAME, "/track-withdrawal", track(other, "2000"))
        assert status == 409 and "not a withdrawal of ours" in body["error"], body
        assert not [a for a in actions(svc, "track_withdrawal")]  # nothing was tracked

        status, body = await svc.post(NAME, "/track-withdrawal", track(burn, "2000"))
        assert status == 200 and body["amount"] == "2000", body
        await eventually(lambda: any(w.withdrawal_hash == burn for w in states(svc)[-1].withdrawals))

        # untrack: only tracked ones, audited, and the in-flight amount goes away
        status, body = await svc.post(
            NAME, "/untrack-withdrawal", {"withdrawal_hash": unknown, "asset_id": BTC_ID}
        )
        assert status == 404
        async with svc.session.delete(
            svc.url(NAME) + "/track-withdrawal",
            json={"withdrawal_hash": burn, "asset_id": BTC_ID},
        ) as resp:
            assert resp.status == 200 and (await resp.json())["untracked"] is True
        await eventually(lambda: not any(w.withdrawal_hash == burn for w in states(svc)[-1].withdrawals))
        assert actions(svc, "track_withdrawal")[-1].detail == {
            "untracked": True,
            "reason": "untracked by the operator",
        }
        status, body = await svc.post(
            NAME, "/untrack-withdrawal", {"withdrawal_hash": burn, "asset_id": BTC_ID}
        )
        assert status == 404  # already gone
        audits = [
            p
            for p in svc.payloads("control.operator_action")
            if getattr(p, "action", "").startswith("untrack") and p.result != "attempt"
        ]
        assert [a.result for a in audits] == ["refused", "ok", "refused"]
