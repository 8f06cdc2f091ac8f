"""The emergency stop and cancel-on-move on today's Verifier, over real sockets against the simulated venue.

A quote is cancelled by an empty-intents payload with the same key and nonce, sent to the relay's
``publish_intents`` and/or executed on chain (``execute_intents``); ``/kill`` answers per nonce.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from intents_mm.messages import OperatorAction, ReferencePrice, TradeResult, encode, new_envelope
from intents_mm.near.encoding import b64decode
from intents_mm.services.quote_canceller import QuoteCanceller
from test_trade_executor import BTC, EUR, EURE, EXECUTOR_KEY, MM_ACCOUNT, Harness, _harness

PRICED_MID = Decimal("60000")  # Harness.command prices every quote at this mid


@pytest.fixture
async def h(sqlite_url: str) -> AsyncIterator[Harness]:
    async for harness in _harness(sqlite_url):
        yield harness


async def _live_quotes(h: Harness, n: int) -> list[TradeResult]:
    """``n`` accepted quotes where we buy BTC (asset_in BTC): a falling mid hurts them."""
    await h.arm()
    out = []
    for i in range(n):
        event = await h.ask(exact_in=5000 + i)
        await h.send(h.command(event, amount_in=5000 + i, amount_out=EUR))
        out.append((await h.collector.wait_results(len(h.collector.results) + 1))[-1])
    assert all(r.outcome == "accepted" and r.nonce_b64 and r.quote_hash for r in out), out
    return out


async def _reference(h: Harness, mid: str | None, *, quality: str = "ok", jump: bool = False) -> None:
    ref = ReferencePrice(
        pair="BTC/EURe",
        mid=Decimal(mid) if mid is not None else None,
        quality=quality,  # type: ignore[arg-type]
        sources=[],
        fresh_sources=3,
        quorum=2,
        jump_detected=jump,
        computed_ts_ns=h.clock.now_ns(),
    )
    env = new_envelope("market.reference_price", ref, clock=h.clock)
    await h.bus.publish("market.reference_price", encode(env), msg_id=env.msg_id)


async def _until(check: Any, what: str, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if await check() if asyncio.iscoroutinefunction(check) else check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _used(h: Harness, result: TradeResult) -> bool:
    assert result.nonce_b64
    return h.verifier.is_nonce_used(MM_ACCOUNT, b64decode(result.nonce_b64))


async def _user_takes(h: Harness, result: TradeResult) -> dict[str, Any]:
    assert result.quote_hash
    return await h.relay.publish_intent(
        [result.quote_hash], h.user_accepts({BTC: result.amount_in, EURE: -result.amount_out})
    )


async def test_kill_cancels_on_the_relay_and_on_chain_and_answers_per_nonce(h: Harness) -> None:
    await h.start_executor()
    settled, live, other = await _live_quotes(h, 3)
    assert (await _user_takes(h, settled))["status"] == "OK"
    balances = h.verifier.balances(MM_ACCOUNT)

    status, body = await h.post("/kill", {"reason": "drill"})
    assert status == 200 and body["ok"] is True and body["error"] is None, body
    by_nonce = {c["nonce"]: c for c in body["cancels"]}
    assert by_nonce[settled.nonce_b64]["outcome"] == "already_settled"
    for r in (live, other):
        c = by_nonce[r.nonce_b64]
        assert c["outcome"] == "cancelled" and c["chain"] == "cancelled", c
        assert c["chain_tx_hash"] and h.chain.tx_record(c["chain_tx_hash"]) is not None
        assert _used(h, r)
    assert body["counts"] == {"already_settled": 1, "cancelled": 2}
    assert sorted(body["nonces_cancelled"]) == sorted([live.nonce_b64, other.nonce_b64])
    assert body["already_used"] == [settled.nonce_b64]
    # every later acceptance fails and no balance moves
    for r in (live, other):
        failed = await _user_takes(h, r)
        assert failed["status"] == "FAILED", failed
    assert h.verifier.balances(MM_ACCOUNT) == balances
    state = await h.get_state()
    assert state["outstanding_quotes"]["count"] == 0 and state["cancels"]["by_trigger"]["kill"] == 3

    async def rows() -> bool:
        return len(await h.store.quote_cancels()) == 3

    await _until(rows, "quote_cancels rows")
    stored = {r["nonce"]: r for r in await h.store.quote_cancels()}
    assert stored[settled.nonce_b64]["outcome"] == "already_settled"
    assert {r["trigger"] for r in stored.values()} == {"kill"}
    assert stored[live.nonce_b64]["chain_tx_hash"] == by_nonce[live.nonce_b64]["chain_tx_hash"]


async def test_kill_batches_the_chain_cancels_within_the_configured_size(h: Harness) -> None:
    await h.start_executor(EXECUTOR_CANCEL_CHAIN_BATCH="2", EXECUTOR_CANCEL_ON_MOVE="false")
    quotes = await _live_quotes(h, 5)
    status, body = await h.post("/kill")
    assert status == 200 and body["counts"] == {"cancelled": 5}, body
    assert len(body["tx_hashes"]) == 3  # 2 + 2 + 1
    assert all(_used(h, r) for r in quotes)


async def test_kill_on_chain_only_when_the_relay_path_is_off(h: Harness) -> None:
    await h.start_executor(EXECUTOR_KILL_VIA_RELAY="false")
    (quote,) = await _live_quotes(h, 1)
    sent_before = h.relay.stats()["counts"].get("publish_requests", 0)
    status, body = await h.post("/kill")
    assert status == 200 and body["counts"] == {"cancelled": 1}, body
    (cancel,) = body["cancels"]
    assert cancel["relay"] is None and cancel["chain"] == "cancelled"
    assert h.relay.stats()["counts"].get("publish_requests", 0) == sent_before
    assert _used(h, quote)


async def test_kill_with_no_path_configured_cancels_nothing_and_says_so(h: Harness) -> None:
    await h.start_executor(EXECUTOR_KILL_VIA_RELAY="false", EXECUTOR_KILL_ON_CHAIN="false")
    (quote,) = await _live_quotes(h, 1)
    status, body = await h.post("/kill")
    assert status == 502 and body["ok"] is False and "no cancel path enabled" in body["error"]
    assert not _used(h, quote)
    assert (await h.get_state())["outstanding_quotes"]["count"] == 1  # still live: /kill must see it again


async def test_remove_public_key_needs_the_key_as_confirmation_then_voids_everything(h: Harness) -> None:
    executor = await h.start_executor()
    (quote,) = await _live_quotes(h, 1)
    pk = EXECUTOR_KEY.public_key.to_string()
    status, body = await h.post("/kill", {"remove_public_key": True})
    assert status == 400 and pk in body["error"]
    status, body = await h.post("/kill", {"remove_public_key": True, "confirm": "yes"})
    assert status == 400
    assert executor.armed is True and h.verifier.has_public_key(MM_ACCOUNT, pk)  # nothing happened

    status, body = await h.post("/kill", {"remove_public_key": True, "confirm": pk})
    assert status == 200 and body["ok"] is True, body
    assert body["key_removal"]["tx_hash"] and body["counts"] == {"voided": 1}
    assert not h.verifier.has_public_key(MM_ACCOUNT, pk)
    failed = await _user_takes(h, quote)
    assert failed["status"] == "FAILED"
    status, body = await h.post("/arm")
    assert status == 409 and "not registered" in body["error"]


async def test_an_adverse_move_cancels_only_the_quotes_it_hurts(h: Harness) -> None:
    await h.start_executor(EXECUTOR_CANCEL_ON_MOVE_BPS="10", EXECUTOR_CANCEL_ON_MOVE_ON_CHAIN="true")
    (bought,) = await _live_quotes(h, 1)  # we buy BTC at mid 60000
    await _reference(h, "60500")  # up: good for a buy
    await _reference(h, "59950")  # -8.3 bps: inside the threshold
    await asyncio.sleep(0.2)
    assert not _used(h, bought)
    assert (await h.get_state())["cancels"]["by_trigger"] == {}

    await _reference(h, "59900")  # -16.7 bps: against the quote

    await _until(lambda: _used(h, bought), "the cancel on chain")
    state = await h.get_state()
    assert state["cancels"]["by_trigger"] == {"move": 1} and state["cancels"]["by_outcome"] == {
        "cancelled": 1
    }
    assert state["cancels"]["reaction_ms"]["count"] == 1
    assert state["outstanding_quotes"]["count"] == 0
    assert (await _user_takes(h, bought))["status"] == "FAILED"


async def test_a_stale_reference_a_jump_and_a_disarm_cancel_every_live_quote(h: Harness) -> None:
    await h.start_executor(EXECUTOR_CANCEL_ON_MOVE_ON_CHAIN="true")
    first = await _live_quotes(h, 2)
    await _reference(h, None, quality="stale")
    await _until(lambda: all(_used(h, r) for r in first), "cancels on a stale reference")
    second = await _live_quotes(h, 1)
    await _reference(h, "60000", jump=True)
    await _until(lambda: all(_used(h, r) for r in second), "cancels on a jump")
    third = await _live_quotes(h, 1)
    status, _ = await h.post("/disarm")
    assert status == 200
    await _until(lambda: all(_used(h, r) for r in third), "cancels on a disarm")
    state = await h.get_state()
    assert state["cancels"]["by_trigger"] == {"reference_stale": 2, "jump": 1, "disarm": 1}


async def test_quotes_read_back_after_a_restart_are_cancelled(h: Harness) -> None:
    await h.start_executor(EXECUTOR_CANCEL_ON_MOVE_ON_CHAIN="true")
    (quote,) = await _live_quotes(h, 1)
    await h.stop_executor()
    await h.start_executor(EXECUTOR_CANCEL_ON_MOVE_ON_CHAIN="true")  # disarmed, nobody watches them
    await _until(lambda: _used(h, quote), "the restart cancel")
    assert (await h.get_state())["cancels"]["by_trigger"] == {"restart": 1}


async def test_cancel_on_move_can_be_switched_off(h: Harness) -> None:
    await h.start_executor(EXECUTOR_CANCEL_ON_MOVE="false")
    (quote,) = await _live_quotes(h, 1)
    await _reference(h, "50000")
    await _reference(h, None, quality="stale")
    await asyncio.sleep(0.3)
    assert not _used(h, quote) and (await h.get_state())["cancels"]["by_trigger"] == {}


async def test_kill_at_the_relay_only_makes_the_relay_refuse_the_quotes(h: Harness) -> None:
    await h.start_executor(EXECUTOR_KILL_ON_CHAIN="false")
    settled, live, other = await _live_quotes(h, 3)
    assert (await _user_takes(h, settled))["status"] == "OK"
    balances = h.verifier.balances(MM_ACCOUNT)
    status, body = await h.post("/kill")
    assert status == 200 and body["counts"] == {"already_settled": 1, "cancelled": 2}, body
    for r in (live, other):
        (c,) = [c for c in body["cancels"] if c["nonce"] == r.nonce_b64]
        assert c["relay"] == "ok" and c["chain"] is None and c["chain_tx_hash"] is None
        assert not _used(h, r)  # the relay path puts nothing on chain...
        assert h.relay.is_nonce_cancelled(MM_ACCOUNT, b64decode(r.nonce_b64))
        failed = await _user_takes(h, r)  # ...but the relay refuses the quote
        assert failed["status"] == "FAILED" and "nonce was already used" in failed["reason"], failed
    assert h.verifier.balances(MM_ACCOUNT) == balances
    assert body["tx_hashes"] == []


async def test_cancel_on_move_goes_to_the_relay_and_kill_later_spends_the_nonce_on_chain(h: Harness) -> None:
    await h.start_executor()  # defaults: cancel-on-move on, relay only
    (bought,) = await _live_quotes(h, 1)
    await _reference(h, "59000")
    await _until(
        lambda: h.relay.is_nonce_cancelled(MM_ACCOUNT, b64decode(bought.nonce_b64 or "")), "relay cancel"
    )
    assert not _used(h, bought)
    state = await h.get_state()
    assert state["cancels"]["by_trigger"] == {"move": 1} and state["cancels"]["cancelled_at_relay_only"] == 1
    assert (await _user_takes(h, bought))["status"] == "FAILED"
    status, body = await h.post("/kill")
    assert status == 200 and body["counts"] == {"cancelled": 1}, body
    assert _used(h, bought) and body["cancels"][0]["chain"] == "cancelled"


async def test_a_kill_whose_chain_cancel_fails_after_the_relay_took_it_is_not_ok(h: Harness) -> None:
    await h.start_executor()
    (quote,) = await _live_quotes(h, 1)
    await h.rpc_server.stop()  # no transaction can be sent
    status, body = await h.post("/kill")
    assert status == 502 and body["ok"] is False, body
    assert "cancelled at the relay only" in body["error"] and "run /kill again" in body["error"]
    (c,) = body["cancels"]
    assert c["outcome"] == "cancelled" and c["relay"] == "ok" and c["chain"].startswith("failed:")
    assert h.relay.is_nonce_cancelled(MM_ACCOUNT, b64decode(quote.nonce_b64 or ""))
    assert (await h.get_state())["outstanding_quotes"]["count"] == 1  # still live for the next /kill


async def test_a_strategy_pause_or_disarm_on_the_bus_cancels_every_live_quote(h: Harness) -> None:
    await h.start_executor(EXECUTOR_CANCEL_ON_MOVE_ON_CHAIN="true")
    for n, action in enumerate(("pause", "disarm"), start=1):
        quotes = await _live_quotes(h, 1)
        notice = OperatorAction(
            service="strategy-engine",
            action=action,
            params={},
            actor="strategy-engine/loss_guard" if action == "pause" else "operator",
            remote="",
            result="ok",
        )
        env = new_envelope("control.operator_action", notice, clock=h.clock)
        await h.bus.publish("control.operator_action", encode(env), msg_id=env.msg_id)
        await _until(lambda q=quotes: all(_used(h, r) for r in q), f"cancels on a strategy {action}")
        assert (await h.get_state())["cancels"]["by_trigger"].get(f"strategy_{action}") == 1, n
        await h.arm()


async def test_a_relay_batch_refused_for_a_settled_quote_is_sent_again_without_it(h: Harness) -> None:
    """The relay takes a cancel batch all or nothing: a quote that settled after the last look makes
    it refuse the batch (``nonce was already used``); the canceller leaves the used nonce out and sends
    the rest once more, one call, not one per quote."""
    executor = await h.start_executor(EXECUTOR_CANCEL_ON_MOVE="false")
    settled, live, other = await _live_quotes(h, 3)
    assert (await _user_takes(h, settled))["status"] == "OK"
    before = h.relay.stats()["counts"].get("publish_requests", 0)
    assert executor.canceller is not None
    targets = [o.target() for o in sorted(executor.outstanding.values(), key=lambda o: o.deadline_ns)]
    outcomes = await executor.canceller.cancel(targets, via_relay=True, on_chain=False, precheck=False)
    by_nonce = {o.target.nonce_b64: o for o in outcomes}
    assert by_nonce[settled.nonce_b64].outcome == "already_settled"
    assert "nonce was already used" in (by_nonce[settled.nonce_b64].relay or "")
    for r in (live, other):
        assert by_nonce[r.nonce_b64].outcome == "cancelled" and by_nonce[r.nonce_b64].relay == "ok"
        assert h.relay.is_nonce_cancelled(MM_ACCOUNT, b64decode(r.nonce_b64 or ""))
    assert h.relay.stats()["counts"].get("publish_requests", 0) - before == 2  # the batch, then the rest


async def test_quotes_the_relay_cancelled_before_a_restart_are_still_reported_cancelled(h: Harness) -> None:
    """The relay remembers cancels across our restarts and refuses them again with ``nonce was already
    used``; unused on chain, they are reported cancelled (at the relay), not settled, and stay on the
    live list so /kill still spends them on chain."""
    await h.start_executor()
    quotes = await _live_quotes(h, 2)
    await _reference(h, "59000")  # cancel-on-move: both cancelled at the relay
    await _until(
        lambda: all(h.relay.is_nonce_cancelled(MM_ACCOUNT, b64decode(r.nonce_b64 or "")) for r in quotes),
        "relay cancels",
    )
    await h.stop_executor()
    await h.start_executor()  # the restart trigger sends them to the relay again
    await _until(lambda: bool(h.executor.last_cancels), "the restart cancel")
    (run,) = h.executor.last_cancels
    assert run["trigger"] == "restart" and run.get("cancelled") == 2 and "already_settled" not in run, run
    status, body = await h.post("/kill")
    assert status == 200 and body["counts"] == {"cancelled": 2}, body
    assert all(_used(h, r) for r in quotes)


async def test_a_reverted_cancel_batch_that_no_view_explains_is_sent_one_transaction_each(h: Harness) -> None:
    """One settled nonce reverts the whole execute_intents; when the nonce views cannot say which (here:
    none configured, as when they lag or fail), each payload goes in a transaction of its own, so the
    settled quote is reported as such and every other one is still cancelled."""
    executor = await h.start_executor(EXECUTOR_CANCEL_ON_MOVE="false")
    settled, live, other = await _live_quotes(h, 3)
    assert (await _user_takes(h, settled))["status"] == "OK"
    assert executor.canceller is not None and executor.sender is not None
    blind = QuoteCanceller(
        key=EXECUTOR_KEY,
        signer_id=MM_ACCOUNT,
        contract_id="intents.near",
        standard="nep413",
        clock=h.clock,
        relay_rpc=None,
        sender=executor.sender,
        verifier=None,
    )
    targets = [o.target() for o in sorted(executor.outstanding.values(), key=lambda o: o.deadline_ns)]
    outcomes = {
        o.target.nonce_b64: o
        for o in await blind.cancel(targets, via_relay=False, on_chain=True, precheck=True)
    }
    assert outcomes[settled.nonce_b64].outcome == "already_settled", outcomes[settled.nonce_b64]
    for r in (live, other):
        assert outcomes[r.nonce_b64].outcome == "cancelled" and _used(h, r)


@pytest.fixture
async def h_lagged(sqlite_url: str) -> AsyncIterator[Harness]:
    async for harness in _harness(sqlite_url, lagged_views=True):
        yield harness


async def test_kill_right_after_a_settlement_on_a_chain_whose_final_views_lag(h_lagged: Harness) -> None:
    """`final` views lag the latest state (two blocks, as live); the stop checks nonces on the latest
    state: the settled quote is reported settled, the other cancelled in one transaction."""
    h = h_lagged
    await h.start_executor(EXECUTOR_CANCEL_ON_MOVE="false")
    settled, live = await _live_quotes(h, 2)
    assert (await _user_takes(h, settled))["status"] == "OK"
    ours_before = [r for r in h.chain.transactions if r.signer_id == MM_ACCOUNT]
    status, body = await h.post("/kill")  # at once: the settlement is not yet in a `final` view
    assert status == 200 and body["counts"] == {"already_settled": 1, "cancelled": 1}, body
    assert body["already_used"] == [settled.nonce_b64] and _used(h, live)
    ours = [r for r in h.chain.transactions if r.signer_id == MM_ACCOUNT]
    assert len(ours) - len(ours_before) == 1  # the check saw the settlement: no transaction reverted
