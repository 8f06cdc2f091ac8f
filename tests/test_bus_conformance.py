"""One conformance suite for the bus port, run on the memory backend and on the real NATS JetStream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bus_helpers import Recorder, wait_until
from intents_mm.bus import make_bus
from intents_mm.bus.memory import MemoryBus
from intents_mm.bus.port import Bus, Delivery
from intents_mm.bus.subjects import ALL_SUBJECTS
from intents_mm.errors import BusError, InputError

ACK_WAIT_S = 0.5


def _new_bus(request: pytest.FixtureRequest, backend: str) -> Bus:
    if backend == "memory":
        return make_bus(None)
    url: str = request.getfixturevalue("nats_server_url")
    prefix: str = request.getfixturevalue("stream_prefix")
    return make_bus(url, stream=f"{prefix}_S", subject_prefix=prefix.lower())


@pytest.fixture(params=["memory", "nats"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    b = _new_bus(request, request.param)
    await b.start()
    try:
        yield b
    finally:
        await b.close()


async def _quiet_period(seconds: float) -> None:
    """Give a backend time to (wrongly) redeliver something."""
    await asyncio.sleep(seconds)


async def test_publish_consume_ack(bus: Bus) -> None:
    rec = Recorder()
    await bus.subscribe(["demand.swap_request"], "basic", rec.handler, ack_wait_s=ACK_WAIT_S)
    for i in range(3):
        await bus.publish("demand.swap_request", f"payload-{i}".encode(), msg_id=f"m{i}")
    await bus.publish("market.reference_price", b"other subject", msg_id="other")
    await wait_until(lambda: len(rec.got) >= 3, what="3 deliveries")
    # acked messages are not redelivered after the ack wait, and the other subject never arrives
    await _quiet_period(ACK_WAIT_S * 2.5)
    assert [(g.subject, g.msg_id, g.data, g.num_delivered) for g in rec.got] == [
        ("demand.swap_request", f"m{i}", f"payload-{i}".encode(), 1) for i in range(3)
    ]
    assert bus.healthy()
    info = bus.describe()
    assert info["backend"] in ("memory", "nats")
    assert isinstance(info["counters"], dict)
    assert info["counters"]["acked"] == 3
    assert info["counters"]["published"] == 4


async def test_per_subject_ordering_of_1000_messages(bus: Bus) -> None:
    rec = Recorder()
    await bus.subscribe([">"], "ordering", rec.handler)
    subjects = ["demand.swap_request", "market.reference_price", "inventory.snapshot"]
    for i in range(1000):
        subject = subjects[i % 3]
        await bus.publish(subject, str(i).encode(), msg_id=f"o{i}")
    await wait_until(lambda: len(rec.got) >= 1000, what="1000 deliveries")
    assert len(rec.got) == 1000
    for subject in subjects:
        seen = [int(g.data) for g in rec.got if g.subject == subject]
        assert seen == sorted(seen)
        assert len(seen) == len([i for i in range(1000) if subjects[i % 3] == subject])
    assert all(g.num_delivered == 1 for g in rec.got)


async def test_msg_id_dedupe(bus: Bus) -> None:
    rec = Recorder()
    await bus.subscribe(["exec.trade_result"], "dedupe", rec.handler)
    await bus.publish("exec.trade_result", b"first", msg_id="same")
    await bus.publish("exec.trade_result", b"second copy", msg_id="same")
    await bus.publish("exec.trade_result", b"third copy", msg_id="same")
    await bus.publish("exec.trade_result", b"sentinel", msg_id="sentinel")
    await wait_until(lambda: "sentinel" in rec.ids(), what="sentinel")
    await _quiet_period(0.2)
    assert [(g.msg_id, g.data) for g in rec.got] == [("same", b"first"), ("sentinel", b"sentinel")]
    counters = bus.describe()["counters"]
    assert isinstance(counters, dict)
    assert counters["deduplicated"] == 2


async def test_nak_redelivers_with_num_delivered_2(bus: Bus) -> None:
    rec = Recorder(decide=lambda d: "nak" if d.num_delivered == 1 else "ack")
    await bus.subscribe(["cmd.execute_trade"], "nak", rec.handler, ack_wait_s=5)
    await bus.publish("cmd.execute_trade", b"x", msg_id="n1")
    await wait_until(lambda: len(rec.got) >= 2, what="redelivery after nak")
    await _quiet_period(0.3)
    assert [(g.msg_id, g.num_delivered, g.data) for g in rec.got] == [("n1", 1, b"x"), ("n1", 2, b"x")]


async def test_nak_with_delay_waits_before_redelivery(bus: Bus) -> None:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def handler(d: Delivery) -> None:
        times.append(loop.time())
        if d.num_delivered == 1:
            await d.nak(0.4)
        else:
            await d.ack()

    await bus.subscribe(["cmd.execute_trade"], "nak-delay", handler, ack_wait_s=5)
    await bus.publish("cmd.execute_trade", b"x", msg_id="nd1")
    await wait_until(lambda: len(times) >= 2, what="delayed redelivery")
    assert times[1] - times[0] >= 0.35


async def test_handler_exception_causes_redelivery(bus: Bus) -> None:
    rec = Recorder(decide=lambda d: "raise" if d.num_delivered == 1 else "ack")
    await bus.subscribe(["decision.trade_decision"], "raises", rec.handler, ack_wait_s=5)
    await bus.publish("decision.trade_decision", b"boom", msg_id="e1")
    await bus.publish("decision.trade_decision", b"fine later", msg_id="e2")
    await wait_until(lambda: len(rec.got) >= 4, what="both messages redelivered")
    await _quiet_period(0.3)
    got = sorted((g.msg_id, g.num_delivered) for g in rec.got)
    assert got == [("e1", 1), ("e1", 2), ("e2", 1), ("e2", 2)]
    counters = bus.describe()["counters"]
    assert isinstance(counters, dict)
    assert counters["handler_errors"] == 2


async def test_unacked_message_is_redelivered_after_ack_wait(bus: Bus) -> None:
    rec = Recorder(decide=lambda d: "hold" if d.num_delivered == 1 else "ack")
    await bus.subscribe(["liquidity.action"], "ackwait", rec.handler, ack_wait_s=ACK_WAIT_S)
    await bus.publish("liquidity.action", b"slow", msg_id="t1")
    await wait_until(lambda: len(rec.got) >= 2, timeout_s=ACK_WAIT_S * 10, what="ack-timeout redelivery")
    await _quiet_period(ACK_WAIT_S * 2.5)
    assert [(g.msg_id, g.num_delivered) for g in rec.got] == [("t1", 1), ("t1", 2)]


async def test_ack_after_ack_wait_still_acks(bus: Bus) -> None:
    """Acking the first delivery after it was redelivered stops further redeliveries."""
    rec = Recorder(decide=lambda d: "hold")
    await bus.subscribe(["liquidity.action"], "lateack", rec.handler, ack_wait_s=ACK_WAIT_S)
    await bus.publish("liquidity.action", b"late", msg_id="la1")
    await wait_until(lambda: len(rec.got) >= 2, what="ack-timeout redelivery")
    await rec.held[0].ack()  # the stale first delivery
    await _quiet_period(ACK_WAIT_S * 3)
    assert [(g.msg_id, g.num_delivered) for g in rec.got] == [("la1", 1), ("la1", 2)]


async def test_late_ack_and_acks_from_other_tasks_count(bus: Bus) -> None:
    """A handler may return without acking and ack later (e.g. after a batch commit)."""
    rec = Recorder(decide=lambda d: "hold")
    await bus.subscribe(["liquidity.state"], "deferred", rec.handler, ack_wait_s=1.0)
    for i in range(5):
        await bus.publish("liquidity.state", b"s", msg_id=f"d{i}")
    await wait_until(lambda: len(rec.held) == 5, what="5 held deliveries")
    await asyncio.gather(*(d.ack() for d in rec.held))
    await _quiet_period(1.4)
    assert [(g.msg_id, g.num_delivered) for g in rec.got] == [(f"d{i}", 1) for i in range(5)]


async def test_max_in_flight_limits_unacked_deliveries(bus: Bus) -> None:
    rec = Recorder(decide=lambda d: "hold")
    await bus.subscribe(["portfolio.metrics"], "inflight", rec.handler, ack_wait_s=10, max_in_flight=3)
    for i in range(8):
        await bus.publish("portfolio.metrics", b"m", msg_id=f"f{i}")
    await wait_until(lambda: len(rec.got) >= 3, what="3 deliveries")
    await _quiet_period(0.3)
    assert rec.ids() == ["f0", "f1", "f2"]
    for d in list(rec.held):
        await d.ack()
    await wait_until(lambda: len(rec.got) >= 6, what="3 more deliveries after acks")
    await _quiet_period(0.3)
    assert rec.ids() == [f"f{i}" for i in range(6)]


async def test_durable_resumes_after_stop(bus: Bus) -> None:
    """Stopped mid-stream and restarted: nothing lost, acked messages not redelivered."""
    first = Recorder(decide=lambda d: "hold" if d.msg_id == "r10" else "ack")
    sub = await bus.subscribe(["inventory.snapshot"], "resume", first.handler, ack_wait_s=1.0)
    for i in range(11):
        await bus.publish("inventory.snapshot", str(i).encode(), msg_id=f"r{i}")
    await wait_until(lambda: len(first.got) >= 11, what="first 11 deliveries")
    await sub.stop()
    for i in range(11, 30):  # published while nobody listens
        await bus.publish("inventory.snapshot", str(i).encode(), msg_id=f"r{i}")
    await _quiet_period(0.2)
    assert len(first.got) == 11  # stop() really stopped deliveries

    second = Recorder()
    sub2 = await bus.subscribe(["inventory.snapshot"], "resume", second.handler, ack_wait_s=1.0)
    want = {f"r{i}" for i in range(10, 30)}
    await wait_until(lambda: want <= set(second.ids()), what="remaining 20 messages after resume")
    await _quiet_period(1.2)
    assert set(second.ids()) == want  # acked r0..r9 never come back
    assert next(g for g in second.got if g.msg_id == "r10").num_delivered >= 2
    # first deliveries of the new messages keep publish order
    fresh = [int(g.data) for g in second.got if g.msg_id != "r10"]
    assert fresh == list(range(11, 30))
    await sub2.stop()


async def test_two_durables_each_get_every_message(bus: Bus) -> None:
    a, b = Recorder(), Recorder()
    await bus.subscribe(["demand.quote_status"], "fanout-a", a.handler)
    await bus.subscribe(["demand.quote_status"], "fanout-b", b.handler)
    for i in range(50):
        await bus.publish("demand.quote_status", b"q", msg_id=f"q{i}")
    await wait_until(lambda: len(a.got) >= 50 and len(b.got) >= 50, what="50 messages on both durables")
    await _quiet_period(0.2)
    assert a.ids() == b.ids() == [f"q{i}" for i in range(50)]


async def test_wildcard_subscriptions(bus: Bus) -> None:
    star, tail, everything, several = Recorder(), Recorder(), Recorder(), Recorder()
    await bus.subscribe(["demand.*"], "wc-star", star.handler)
    await bus.subscribe(["market.>"], "wc-tail", tail.handler)
    await bus.subscribe([">"], "wc-all", everything.handler)
    await bus.subscribe(["exec.trade_result", "control.*"], "wc-several", several.handler)
    for i, subject in enumerate(ALL_SUBJECTS):
        await bus.publish(subject, subject.encode(), msg_id=f"w{i}")
    await bus.publish("market.reference_price.detail", b"deep", msg_id="deep")
    await wait_until(lambda: len(everything.got) >= len(ALL_SUBJECTS) + 1, what="all subjects on '>'")
    await wait_until(lambda: len(several.got) >= 2 and len(star.got) >= 2 and len(tail.got) >= 2)
    await _quiet_period(0.3)
    assert [g.subject for g in star.got] == ["demand.swap_request", "demand.quote_status"]
    assert [g.subject for g in tail.got] == ["market.reference_price", "market.reference_price.detail"]
    assert [g.subject for g in everything.got] == [*ALL_SUBJECTS, "market.reference_price.detail"]
    assert [g.subject for g in several.got] == ["exec.trade_result", "control.operator_action"]
    assert all(g.data == g.subject.encode() for g in everything.got if g.msg_id != "deep")


async def test_second_subscriber_on_same_durable_is_refused(bus: Bus) -> None:
    rec = Recorder()
    sub = await bus.subscribe(["demand.swap_request"], "single", rec.handler)
    with pytest.raises(BusError):
        await bus.subscribe(["demand.swap_request"], "single", rec.handler)
    await sub.stop()
    sub2 = await bus.subscribe(["demand.swap_request"], "single", rec.handler)
    await sub2.stop()


async def test_malformed_subjects_and_names_are_refused(bus: Bus) -> None:
    rec = Recorder()
    for bad in ("", "demand..x", "demand.*", "demand.>", "a b"):
        with pytest.raises(InputError):
            await bus.publish(bad, b"x", msg_id="bad")
    with pytest.raises(InputError):
        await bus.subscribe(["demand.>.x"], "bad-pattern", rec.handler)
    with pytest.raises(InputError):
        await bus.subscribe(["demand.*"], "bad.name", rec.handler)
    with pytest.raises(InputError):
        await bus.subscribe([], "no-subjects", rec.handler)


async def test_closed_bus_refuses_use(bus: Bus) -> None:
    await bus.close()
    assert not bus.healthy()
    with pytest.raises(BusError):
        await bus.publish("demand.swap_request", b"x", msg_id="late")
    with pytest.raises(BusError):
        await bus.subscribe(["demand.swap_request"], "late", Recorder().handler)


async def test_memory_backpressure_blocks_publisher_and_drops_nothing() -> None:
    bus = MemoryBus(max_queue=5)
    await bus.start()
    try:
        rec = Recorder(decide=lambda d: "hold")
        await bus.subscribe(["demand.swap_request"], "slow", rec.handler, max_in_flight=100)
        published: list[int] = []

        async def producer() -> None:
            for i in range(20):
                await bus.publish("demand.swap_request", str(i).encode(), msg_id=f"b{i}")
                published.append(i)

        task = asyncio.create_task(producer())
        await wait_until(lambda: len(rec.got) >= 5, what="first 5 deliveries")
        await _quiet_period(0.1)
        assert not task.done()  # publisher is blocked by the full queue
        assert published == [0, 1, 2, 3, 4]
        consumers = bus.describe()["consumers"]
        assert isinstance(consumers, dict)
        assert consumers["slow"]["unacked"] == 5
        while not task.done() or len(rec.got) < 20:  # a slow consumer: ack what it has, wait
            held, rec.held = rec.held, []
            for d in held:
                await d.ack()
            await asyncio.sleep(0.001)
            assert bus.describe()["consumers"]["slow"]["unacked"] <= 5  # type: ignore[index]
        await task
        assert [int(g.data) for g in rec.got] == list(range(20))
        counters = bus.describe()["counters"]
        assert isinstance(counters, dict)
        assert counters["publish_waits"] > 0
    finally:
        await bus.close()
