"""Helpers shared by the bus test files: a recording handler and a bounded wait."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from intents_mm.bus.port import Delivery


async def wait_until(pred: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``pred`` every 5 ms; fail the test if it is not true within ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)


@dataclass
class Got:
    subject: str
    msg_id: str
    data: bytes
    num_delivered: int


@dataclass
class Recorder:
    """Records every delivery; acks it unless ``decide`` says otherwise.

    ``decide(delivery)`` may return "ack", "nak", "hold" (keep un-acked in ``held``) or "raise".
    """

    decide: Callable[[Delivery], str] | None = None
    got: list[Got] = field(default_factory=list)
    held: list[Delivery] = field(default_factory=list)
    on_delivery: Callable[[Delivery], Awaitable[None]] | None = None

    async def handler(self, d: Delivery) -> None:
        self.got.append(Got(d.subject, d.msg_id, d.data, d.num_delivered))
        if self.on_delivery is not None:
            await self.on_delivery(d)
        action = self.decide(d) if self.decide is not None else "ack"
        if action == "ack":
            await d.ack()
        elif action == "nak":
            await d.nak()
        elif action == "hold":
            self.held.append(d)
        elif action == "raise":
            raise RuntimeError(f"handler refuses {d.msg_id}")
        else:  # pragma: no cover - test bug
            raise AssertionError(action)

    def ids(self) -> list[str]:
        return [g.msg_id for g in self.got]

    def count(self, msg_id: str) -> int:
        return sum(1 for g in self.got if g.msg_id == msg_id)
