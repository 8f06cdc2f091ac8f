"""The message bus port: what every service, the history writer and the simulator code against.

Two backends implement it, :class:`~intents_mm.bus.memory.MemoryBus` (one process, asyncio) and
:class:`~intents_mm.bus.nats.NatsBus` (NATS JetStream), and one conformance suite
(``tests/test_bus_conformance.py``) runs on both.

Delivery contract
-----------------

Subjects
    Publishers use concrete logical subjects (``demand.swap_request``, see :mod:`.subjects`); no
    namespace prefix. Subscribers give patterns with NATS wildcards (``*`` one token, final ``>`` one or
    more tokens; ``[">"]`` is everything). Malformed subjects, patterns or durable names raise
    :class:`~intents_mm.errors.InputError`.

Publish
    ``await publish(subject, data, msg_id=...)`` returns once the message is durable in the bus (memory:
    enqueued for every matching durable consumer; NATS: the stream's PubAck arrived). A second publish
    with a ``msg_id`` seen within the dedupe window is dropped silently: it returns normally and is
    never delivered again (memory: the last ``dedupe_window`` ids; NATS: ``duplicate_window_s``). The
    ``data`` bytes are handed over as they are (never copied or re-encoded by the memory backend, so do
    not mutate them). Memory: publish *awaits* while any matching consumer's queue is full
    (backpressure). NATS: publish retries with the same ``msg_id`` across disconnects until it is
    acknowledged, so it may wait through a server restart; cancel it (e.g. ``asyncio.timeout``) to bound.

Durable consumers
    ``subscribe(subjects, durable, handler)`` attaches to the durable consumer named ``durable``,
    creating it when missing (and updating its settings when it exists). Its position survives
    ``Subscription.stop()`` and a later ``subscribe`` with the same name resumes after the last acked
    message: nothing acked is delivered again and nothing un-acked is lost (memory: for the lifetime of
    the bus object; NATS: for the stream's retention). A durable only sees messages published after it
    was first created (memory) or everything still in the stream (NATS, first creation only). Different
    durables are independent: each gets every matching message. One subscriber per durable per bus
    object; a second concurrent ``subscribe`` with the same name raises :class:`BusError`.

Handler, ack and nak
    The handler is awaited for one delivery at a time per subscription, in delivery order, so messages
    on one subject reach the handler in publish order (first deliveries; a redelivery may come after
    later messages). Acks are explicit:

    - ``await delivery.ack()``: done; never delivered to this durable again. It may be called after the
      handler returned (from another task), e.g. after a batch was committed. An ack that arrives after
      ``ack_wait_s`` still acks the message (a redelivery already handed out may still arrive).
    - ``await delivery.nak(delay_s)``: redeliver, after ``delay_s`` (None: at once).
    - the handler raises: logged, and the delivery is nak'ed with backoff
      (:func:`redelivery_delay_s`) unless it was already acked or nak'ed.
    - the handler returns without settling: the delivery stays in flight until acked; a delivery not
      acked within ``ack_wait_s`` of being handed out is redelivered with ``num_delivered`` + 1.

    ``num_delivered`` is 1 on the first delivery and counts every redelivery. Delivery is
    at-least-once: handlers must be idempotent by ``msg_id``. At most ``max_in_flight`` messages are
    delivered and un-acked per subscription; then new deliveries wait for acks (redeliveries still come).
    ack/nak are idempotent per delivery (the first settles it, later calls do nothing).

Stop and close
    ``Subscription.stop()`` stops delivering, waits up to ``ack_wait_s`` for a running handler to
    return (then cancels it), and returns once its acks reached the bus. Un-acked messages stay pending
    for the durable: deliveries the handler saw are redelivered to the next subscriber of that durable
    after ``ack_wait_s``; messages fetched but not yet handed to the handler come back at once.
    ``Bus.close()`` refuses new publishes and subscriptions at once (blocked publishers get
    :class:`BusError`), stops every subscription (handlers finishing meanwhile may still ack), then
    releases the connection; ack/nak after ``close()`` returned raise :class:`BusError`. Idempotent.

Errors
    Backend failures surface as :class:`~intents_mm.errors.BusError` with a one-line message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

__all__ = ["Bus", "Delivery", "Handler", "Subscription", "redelivery_delay_s"]


class Delivery(Protocol):
    """One delivered message."""

    subject: str
    """Logical subject, e.g. ``demand.swap_request`` (no namespace prefix)."""
    msg_id: str
    data: bytes
    num_delivered: int
    """1 on the first delivery, more on redeliveries."""

    async def ack(self) -> None:
        """Mark the message done for this durable; it is never delivered to it again."""

    async def nak(self, delay_s: float | None = None) -> None:
        """Ask for redelivery, after ``delay_s`` seconds (None or 0: at once)."""


Handler = Callable[[Delivery], Awaitable[None]]


class Subscription(Protocol):
    async def stop(self) -> None:
        """Stop receiving; un-acked messages stay pending for the durable."""


class Bus(Protocol):
    async def start(self) -> None:
        """Connect, create streams and consumers idempotently."""

    async def close(self) -> None:
        """Stop every subscription and disconnect. Idempotent."""

    async def publish(self, subject: str, data: bytes, *, msg_id: str) -> None:
        """Return once the message is durable; a duplicate ``msg_id`` within the window is dropped."""

    async def subscribe(
        self,
        subjects: Sequence[str],
        durable: str,
        handler: Handler,
        *,
        ack_wait_s: float = 30.0,
        max_in_flight: int = 256,
    ) -> Subscription:
        """Attach ``handler`` to the durable consumer ``durable`` over ``subjects`` (patterns)."""

    def healthy(self) -> bool:
        """Connected and usable."""

    def describe(self) -> dict[str, object]:
        """Backend, server, stream and counters, for ``/state``."""


def redelivery_delay_s(num_delivered: int) -> float:
    """Backoff before redelivering a message whose handler raised on delivery ``num_delivered``.

    50 ms after the first failure, doubling, at most 5 s.
    """
    return float(min(0.05 * 2.0 ** max(num_delivered - 1, 0), 5.0))
