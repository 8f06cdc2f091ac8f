"""Memory-backend specifics and the bus helpers: dedupe window, stop/close edges, factory, subjects."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from bus_helpers import Recorder, wait_until
from intents_mm.bus import ALL_SUBJECTS, MemoryBus, make_bus, redelivery_delay_s
from intents_mm.bus.nats import NatsBus
from intents_mm.bus.port import Delivery
from intents_mm.bus.subjects import (
    disjoint,
    matcher,
    part_durable,
    pattern_matches,
    patterns_overlap,
    validate_subject,
)
from intents_mm.errors import BusError, InputError


@pytest.fixture
async def mbus() -> AsyncIterator[MemoryBus]:
    bus = MemoryBus()
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


async def test_payload_is_handed_over_without_copy(mbus: MemoryBus) -> None:
    payload = b"x" * 4096
    seen: list[bytes] = []

    async def handler(d: Delivery) -> None:
        seen.append(d.data)
        await d.ack()

    await mbus.subscribe(["demand.swap_request"], "nocopy", handler)
    await mbus.publish("demand.swap_request", payload, msg_id="p")
    await wait_until(lambda: bool(seen))
    assert seen[0] is payload


async def test_dedupe_window_is_bounded_and_forgets_oldest() -> None:
    bus = MemoryBus(dedupe_window=3)
    await bus.start()
    try:
        rec = Recorder()
        await bus.subscribe(["portfolio.metrics"], "window", rec.handler)
        for msg_id in ["a", "b", "c", "a", "d", "a", "b", "a"]:
            # "a" is a duplicate while remembered; "d" pushes it out ({b,c,d}), so it is new again,
            # which pushes out "b" ({c,d,a}); then "b" is new and "a" a duplicate again
            await bus.publish("portfolio.metrics", msg_id.encode(), msg_id=msg_id)
        await wait_until(lambda: len(rec.got) >= 6)
        await asyncio.sleep(0.05)
        assert rec.ids() == ["a", "b", "c", "d", "a", "b"]
        assert len(bus._seen) == 3
    finally:
        await bus.close()


async def test_publish_before_start_is_refused() -> None:
    bus = MemoryBus()
    with pytest.raises(BusError):
        await bus.publish("demand.swap_request", b"x", msg_id="early")
    assert not bus.healthy()


async def test_messages_without_subscribers_are_not_kept(mbus: MemoryBus) -> None:
    await mbus.publish("demand.swap_request", b"nobody", msg_id="gone")
    rec = Recorder()
    await mbus.subscribe(["demand.swap_request"], "late", rec.handler)
    await mbus.publish("demand.swap_request", b"seen", msg_id="kept")
    await wait_until(lambda: len(rec.got) >= 1)
    await asyncio.sleep(0.05)
    assert rec.ids() == ["kept"]


async def test_stop_waits_for_running_handler_then_cancels_a_hung_one(mbus: MemoryBus) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hung(d: Delivery) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sub = await mbus.subscribe(["liquidity.action"], "hung", hung, ack_wait_s=0.3)
    await mbus.publish("liquidity.action", b"x", msg_id="h1")
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(sub.stop(), 5)
    assert cancelled.is_set()
    # the cancelled delivery was never acked, so the next subscriber gets it again
    rec = Recorder()
    await mbus.subscribe(["liquidity.action"], "hung", rec.handler, ack_wait_s=0.3)
    await wait_until(lambda: len(rec.got) >= 1)
    assert (rec.got[0].msg_id, rec.got[0].num_delivered) == ("h1", 2)


async def test_handler_may_stop_its_own_subscription(mbus: MemoryBus) -> None:
    got: list[str] = []
    holder: list[object] = []

    async def handler(d: Delivery) -> None:
        got.append(d.msg_id)
        await d.ack()
        sub = holder[0]
        assert hasattr(sub, "stop")
        await sub.stop()

    holder.append(await mbus.subscribe(["demand.swap_request"], "selfstop", handler))
    await mbus.publish("demand.swap_request", b"1", msg_id="s1")
    await mbus.publish("demand.swap_request", b"2", msg_id="s2")
    await wait_until(lambda: len(got) >= 1)
    await asyncio.sleep(0.05)
    assert got == ["s1"]
    rec = Recorder()
    await mbus.subscribe(["demand.swap_request"], "selfstop", rec.handler)
    await wait_until(lambda: len(rec.got) >= 1)
    assert rec.ids() == ["s2"]


async def test_close_releases_blocked_publishers_with_bus_error() -> None:
    bus = MemoryBus(max_queue=1)
    await bus.start()
    rec = Recorder(decide=lambda d: "hold")
    await bus.subscribe(["demand.swap_request"], "full", rec.handler)
    await bus.publish("demand.swap_request", b"1", msg_id="c1")
    blocked = asyncio.create_task(bus.publish("demand.swap_request", b"2", msg_id="c2"))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    await bus.close()
    with pytest.raises(BusError):
        await asyncio.wait_for(blocked, 5)
    with pytest.raises(BusError):
        await rec.held[0].ack()


async def test_stopped_durable_keeps_queueing_and_pushes_back() -> None:
    bus = MemoryBus(max_queue=3)
    await bus.start()
    try:
        sub = await bus.subscribe(["demand.swap_request"], "paused", Recorder().handler)
        await sub.stop()
        for i in range(3):
            await bus.publish("demand.swap_request", b"q", msg_id=f"q{i}")
        blocked = asyncio.create_task(bus.publish("demand.swap_request", b"q", msg_id="q3"))
        await asyncio.sleep(0.05)
        assert not blocked.done()
        rec = Recorder()
        await bus.subscribe(["demand.swap_request"], "paused", rec.handler)
        await asyncio.wait_for(blocked, 5)
        await wait_until(lambda: len(rec.got) >= 4)
        assert rec.ids() == ["q0", "q1", "q2", "q3"]
    finally:
        await bus.close()


async def test_make_bus_picks_backend_and_filters_options() -> None:
    mem = make_bus(None, max_queue=7, stream="IGNORED", subject_prefix="ignored")
    assert isinstance(mem, MemoryBus)
    assert mem.describe()["max_queue"] == 7
    assert isinstance(make_bus(""), MemoryBus)
    nb = make_bus("nats://127.0.0.1:4222", stream="S1", subject_prefix="p1", max_queue=7)
    assert isinstance(nb, NatsBus)
    assert nb.describe()["stream"] == "S1"
    with pytest.raises(TypeError):
        make_bus(None, no_such_option=1)
    with pytest.raises(InputError):
        make_bus("nats://127.0.0.1:4222", stream="bad.name")
    with pytest.raises(InputError):
        make_bus("nats://127.0.0.1:4222", subject_prefix="imm.*")


def test_subject_patterns_follow_nats_rules() -> None:
    assert pattern_matches(">", "demand.swap_request")
    assert pattern_matches("demand.*", "demand.swap_request")
    assert not pattern_matches("demand.*", "demand.swap_request.x")
    assert pattern_matches("demand.>", "demand.swap_request.x")
    assert not pattern_matches("demand.>", "demand")
    assert not pattern_matches("demand.swap_request", "demand.quote_status")
    assert pattern_matches("*.snapshot", "inventory.snapshot")
    m = matcher(["exec.*", "control.operator_action"])
    assert [s for s in ALL_SUBJECTS if m(s)] == ["exec.trade_result", "control.operator_action"]
    assert len(ALL_SUBJECTS) == 12
    for subject in ALL_SUBJECTS:
        assert validate_subject(subject) == subject


def test_redelivery_backoff_grows_and_is_capped() -> None:
    delays = [redelivery_delay_s(n) for n in range(1, 12)]
    assert delays[0] == pytest.approx(0.05)
    assert delays == sorted(delays)
    assert max(delays) == 5.0


def test_patterns_overlap_when_some_subject_matches_both() -> None:
    cases = [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.*", "a.b", True),
        ("a.>", "a", False),
        ("a.>", "a.b.c", True),
        (">", "x", True),
        ("*", ">", True),
        ("a.*", "a.b.c", False),
        ("a.*.c", "a.b.*", True),
        ("a", "a.b", False),
        ("*.>", "a", False),
    ]
    for a, b, expected in cases:
        assert patterns_overlap(a, b) is expected, (a, b)
        assert patterns_overlap(b, a) is expected, (b, a)
    # checked against the matcher on concrete subjects: an overlap is a subject both match
    subjects = [".".join(t) for n in (1, 2, 3, 4) for t in itertools.product("abc", repeat=n)]
    patterns = ["a", "a.*", "*.c", "a.>", "*.*.c", ">", "b.>", "a.b"]
    for a in patterns:
        for b in patterns:
            both = any(pattern_matches(a, s) and pattern_matches(b, s) for s in subjects)
            assert patterns_overlap(a, b) is both, (a, b)
    assert disjoint(["exec.trade_result", "cmd.*", "demand.quote_status"])
    assert not disjoint(["exec.trade_result", "exec.*"])


def test_part_durable_names_are_distinct_and_valid() -> None:
    names = {part_durable("d", p) for p in ("a.b", "a_b", "a_db", "a.*", "a.>", "a__b")}
    assert len(names) == 6
    assert part_durable("hw", "exec.trade_result") == "hw--exec_dtrade__result"
    with pytest.raises(InputError):
        part_durable("d" * 199, "a.b")
