"""The message bus: one port (:mod:`.port`), two backends (:mod:`.memory`, :mod:`.nats`).

Use :func:`make_bus` to pick the backend from configuration; see :mod:`intents_mm.bus.port` for the
delivery contract and ``docs/bus.md`` for the design.
"""

from __future__ import annotations

from typing import Any

from intents_mm.bus.memory import MemoryBus
from intents_mm.bus.port import Bus, Delivery, Handler, Subscription, redelivery_delay_s
from intents_mm.bus.subjects import ALL_SUBJECTS

__all__ = [
    "ALL_SUBJECTS",
    "Bus",
    "Delivery",
    "Handler",
    "MemoryBus",
    "Subscription",
    "make_bus",
    "redelivery_delay_s",
]

_MEMORY_OPTIONS = frozenset({"max_queue", "dedupe_window"})
_NATS_OPTIONS = frozenset(
    {
        "stream",
        "subject_prefix",
        "max_age_s",
        "max_bytes",
        "duplicate_window_s",
        "connect_timeout_s",
        "reconnect_wait_s",
        "publish_timeout_s",
        "api_timeout_s",
        "pull_expires_s",
    }
)


def make_bus(nats_url: str | None, **kw: Any) -> Bus:
    """A :class:`MemoryBus` when ``nats_url`` is None or empty, else a :class:`NatsBus` for it.

    ``kw`` are the chosen backend's constructor options; options meant for the other backend are
    ignored, so callers can pass one set of settings either way. Unknown names raise ``TypeError``.
    The bus is not started: call ``await bus.start()``.
    """
    unknown = set(kw) - _MEMORY_OPTIONS - _NATS_OPTIONS
    if unknown:
        raise TypeError(f"make_bus got unknown options: {', '.join(sorted(unknown))}")
    if not nats_url:
        return MemoryBus(**{k: v for k, v in kw.items() if k in _MEMORY_OPTIONS})
    from intents_mm.bus.nats import NatsBus

    return NatsBus(nats_url, **{k: v for k, v in kw.items() if k in _NATS_OPTIONS})
