"""One message policy on both buses: poison becomes a ``bus.dead_letter`` and is acked, never looped.

Run on the memory backend and on the real NATS JetStream (the conformance suite's ``bus`` fixture).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bus_helpers import wait_until
from intents_mm.bus.dead_letter import with_dead_letters
from intents_mm.bus.port import Bus, Delivery
from intents_mm.clock import SYSTEM_CLOCK
from intents_mm.config import load_config
from intents_mm.errors import InputError
from intents_mm.messages import DeadLetter, SwapRequest, decode, encode, new_envelope
from intents_mm.services.runtime import Service, ServiceContext
from test_bus_conformance import bus  # noqa: F401 - the fixture, memory and NATS

MAX = 3


class _Svc(Service):
    name = "test-service"


def _service(b: Bus) -> _Svc:
    config = load_config({"BUS_MAX_DELIVERIES": str(MAX)}, dotenv=None)
    return _Svc(ServiceContext(config=config, bus=b))


class _Letters:
    def __init__(self) -> None:
        self.got: list[DeadLetter] = []

    async def handler(self, d: Delivery) -> None:
        payload = decode(d.data, subject=d.subject).payload
        assert isinstance(payload, DeadLetter)
        self.got.append(payload)
        await d.ack()


def _request(quote_id: str) -> bytes:
    now = SYSTEM_CLOCK.now_ns()
    req = SwapRequest(
        quote_id=quote_id,
        asset_in="nep141:btc.omft.near",
        asset_out="nep141:eure.omft.near",
        exact_amount_in=1000,
        min_deadline_ms=60_000,
        received_ts_ns=now,
        relay_deadline_ns=now + 3_000_000_000,
    )
    return encode(new_envelope("demand.swap_request", req, clock=SYSTEM_CLOCK))


async def test_an_undecodable_message_is_dead_lettered_at_once_and_acked(bus: Bus) -> None:  # noqa: F811
    svc = _service(bus)
    letters = _Letters()
    await bus.subscribe(["bus.dead_letter"], "letters", letters.handler)
    calls: list[int] = []

    async def handler(d: Delivery) -> None:
        calls.append(d.num_delivered)
        decode(d.data, subject=d.subject)  # raises InputError on the poison
        await d.ack()

    await svc.subscribe(["demand.swap_request"], "consumer-a", handler, ack_wait_s=0.5)
    await bus.publish("demand.swap_request", b"\x00not json\xff", msg_id="poison-1")
    await bus.publish("demand.swap_request", _request("q-ok"), msg_id="fine-1")
    await wait_until(lambda: len(letters.got) == 1, what="one dead letter")
    await asyncio.sleep(1.2)  # past the ack wait: nothing comes back
    assert calls == [1, 1]
    (letter,) = letters.got
    assert letter.consumer == "consumer-a" and letter.subject == "demand.swap_request"
    assert letter.original_msg_id == "poison-1" and letter.deliveries == 1
    assert letter.error.startswith("undecodable:")
    assert letter.data == "\\x00not json\\xff"  # shown escaped
    assert svc.base_state()["dead_letters"]["count"] == 1


async def test_a_handler_that_keeps_failing_is_dead_lettered_after_the_bound(bus: Bus) -> None:  # noqa: F811
    svc = _service(bus)
    letters = _Letters()
    await bus.subscribe(["bus.dead_letter"], "letters", letters.handler)
    deliveries: list[int] = []

    async def failing(d: Delivery) -> None:
        deliveries.append(d.num_delivered)
        raise RuntimeError("downstream broken")

    await svc.subscribe(["demand.swap_request"], "consumer-b", failing, ack_wait_s=0.5)
    await bus.publish("demand.swap_request", _request("q-1"), msg_id="keeps-failing")
    await wait_until(lambda: len(letters.got) == 1, timeout_s=30, what="the dead letter")
    await asyncio.sleep(1.2)
    assert deliveries == [1, 2, 3]  # bounded: never a fourth
    (letter,) = letters.got
    assert letter.deliveries == MAX and "RuntimeError: downstream broken" in letter.error
    assert decode(letter.data.encode(), subject="demand.swap_request").payload.quote_id == "q-1"  # type: ignore[attr-defined]


async def test_a_handler_that_naks_forever_is_dead_lettered_too(bus: Bus) -> None:  # noqa: F811
    svc = _service(bus)
    letters = _Letters()
    await bus.subscribe(["bus.dead_letter"], "letters", letters.handler)
    deliveries: list[int] = []

    async def naks(d: Delivery) -> None:
        deliveries.append(d.num_delivered)
        await d.nak(0.05)

    await svc.subscribe(["demand.swap_request"], "consumer-c", naks, ack_wait_s=0.5)
    await bus.publish("demand.swap_request", _request("q-2"), msg_id="naked")
    await wait_until(lambda: len(letters.got) == 1, timeout_s=30, what="the dead letter")
    await asyncio.sleep(0.6)
    assert deliveries == [1, 2, 3] and "nak'ed on delivery 3" in letters.got[0].error


async def test_a_dead_letter_that_cannot_be_recorded_is_not_acked() -> None:
    acked: list[str] = []

    class _D:
        subject, msg_id, data, num_delivered = "demand.swap_request", "m", b"x", 1

        async def ack(self) -> None:
            acked.append("ack")

        async def nak(self, delay_s: float | None = None) -> None:
            acked.append("nak")

    async def bad(d: Delivery) -> None:
        raise InputError("malformed")

    async def cannot_record(d: Delivery, reason: str) -> None:
        raise RuntimeError("bus down")

    await with_dead_letters(bad, cannot_record)(_D())
    assert acked == ["nak"]


@pytest.mark.parametrize("bound", [0, -1])
def test_the_bound_must_be_positive(bound: int) -> None:
    async def h(d: Any) -> None:
        return None

    with pytest.raises(ValueError):
        with_dead_letters(h, h, max_deliveries=bound)  # type: ignore[arg-type]
