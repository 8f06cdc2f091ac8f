"""Which asyncio event loop the market maker's processes run on (``INTENTS_MM_EVENT_LOOP``).

``uvloop`` (the default) is libuv's loop for asyncio: the same tasks, futures and streams, with the
loop's own scheduling, timers and socket I/O in C. On the quote path it took ~8 % of the CPU per
quote off and the memory-bus p99 from 2.6-2.7 to 2.35-2.5 ms (``docs/performance.md``).
``asyncio`` is the standard library's loop, for debugging or a platform without uvloop. The tests
that run the services in the test process use the standard loop; the commands (``run``,
``run-all``, ``simulate``, ``bench``) that the end-to-end tests start use the configured one, so
both are exercised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

from intents_mm.errors import InputError

T = TypeVar("T")

EVENT_LOOPS: Final = ("uvloop", "asyncio")
DEFAULT_EVENT_LOOP: Final = "uvloop"


def parse_event_loop(value: str) -> str:
    """``uvloop`` or ``asyncio``; ValueError naming the choices otherwise."""
    choice = value.strip().lower()
    if choice not in EVENT_LOOPS:
        raise ValueError(f"must be one of {', '.join(EVENT_LOOPS)}, got {value!r}")
    return choice


def run(main: Coroutine[Any, Any, T], event_loop: str = DEFAULT_EVENT_LOOP) -> T:
    """``asyncio.run(main)`` on the chosen loop; :class:`InputError` when uvloop is chosen but missing."""
    if parse_event_loop(event_loop) == "asyncio":
        return asyncio.run(main)
    try:
        import uvloop
    except ImportError:
        main.close()
        raise InputError(
            "INTENTS_MM_EVENT_LOOP=uvloop but the uvloop package is not installed: "
            "install the project's dependencies or set INTENTS_MM_EVENT_LOOP=asyncio"
        ) from None
    result: T = uvloop.run(main)
    return result
