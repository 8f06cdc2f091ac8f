"""One message policy for every consumer on both buses: poison goes to a dead letter, never round forever.

:func:`with_dead_letters` wraps a bus handler:

* the handler raises :class:`~intents_mm.errors.InputError` (the message cannot be decoded or is not a
  valid payload): it can never succeed, so it is dead-lettered at once and acked;
* the handler raises anything else, or naks: the bus redelivers it with back-off
  (:func:`~intents_mm.bus.port.redelivery_delay_s`) until its ``num_delivered`` reaches
  ``max_deliveries``; that delivery is dead-lettered and acked instead;
* ``on_dead(delivery, reason)`` records the dead letter (the runtime publishes a ``bus.dead_letter``
  message that history-writer stores in ``dead_letters``). When recording fails (the bus itself is
  down), the message is nak'ed, not acked: it is never dropped without a record.

A handler that returns normally keeps the bus contract of :mod:`intents_mm.bus.port` unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

from intents_mm.bus.port import Delivery, Handler, redelivery_delay_s
from intents_mm.errors import InputError

__all__ = ["DEFAULT_MAX_DELIVERIES", "OnDead", "with_dead_letters"]

log = logging.getLogger(__name__)

DEFAULT_MAX_DELIVERIES: Final = 10

OnDead = Callable[[Delivery, str], Awaitable[None]]


def _one_line(text: str, limit: int = 500) -> str:
    return " ".join(text.split())[:limit]


class _Watched:
    """A delivery whose last nak becomes a dead letter."""

    __slots__ = ("_d", "_max", "_on_dead", "data", "msg_id", "num_delivered", "settled", "subject")

    def __init__(self, d: Delivery, max_deliveries: int, on_dead: OnDead) -> None:
        self._d = d
        self._max = max_deliveries
        self._on_dead = on_dead
        self.subject = d.subject
        self.msg_id = d.msg_id
        self.data = d.data
        self.num_delivered = d.num_delivered
        self.settled = False

    async def ack(self) -> None:
        self.settled = True
        await self._d.ack()

    async def nak(self, delay_s: float | None = None) -> None:
        self.settled = True
        if self.num_delivered >= self._max:
            await _bury(self._d, f"nak'ed on delivery {self.num_delivered} of {self._max}", self._on_dead)
            return
        await self._d.nak(delay_s)


async def _bury(d: Delivery, reason: str, on_dead: OnDead) -> None:
    try:
        await on_dead(d, reason)
    except Exception as exc:  # no record, no ack: the message must come back
        log.error("dead letter for %s msg_id=%s not recorded (%s); redelivering", d.subject, d.msg_id, exc)
        await d.nak(redelivery_delay_s(d.num_delivered))
        return
    await d.ack()


def with_dead_letters(
    handler: Handler, on_dead: OnDead, *, max_deliveries: int = DEFAULT_MAX_DELIVERIES
) -> Handler:
    """``handler`` under the dead-letter policy (see the module docstring)."""
    if max_deliveries < 1:
        raise ValueError("max_deliveries must be at least 1")

    async def guarded(d: Delivery) -> None:
        # Only the last allowed delivery needs its nak watched (it becomes the dead letter); earlier
        # ones go to the handler as they are (no wrapper object on the hot path).
        watched = _Watched(d, max_deliveries, on_dead) if d.num_delivered >= max_deliveries else None
        try:
            await handler(d if watched is None else watched)
        except InputError as exc:
            if watched is None or not watched.settled:
                await _bury(d, f"undecodable: {_one_line(str(exc))}", on_dead)
        except Exception as exc:
            if watched is not None and watched.settled:
                raise
            if watched is not None:
                log.error(
                    "handler failed on %s msg_id=%s, delivery %d of %d: dead-lettered",
                    d.subject,
                    d.msg_id,
                    d.num_delivered,
                    max_deliveries,
                    exc_info=True,
                )
                reason = f"handler failed {d.num_delivered} times: {exc.__class__.__name__}: {exc}"
                await _bury(d, _one_line(reason), on_dead)
                return
            raise  # the bus logs it and naks with back-off

    return guarded
