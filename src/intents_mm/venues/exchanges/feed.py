"""The live feed runner: one WebSocket per venue, parsed into ticks, reconnected forever.

``ExchangeFeed`` connects, sends the venue's exact subscribe frame(s) at once (Coinbase closes a
connection that does not subscribe within 5 s), parses every frame with the venue's parser and
hands prices to ``on_tick`` and connection news to ``on_status``. It never dies of a bad frame
(counted by reason in ``stats.bad_frames``) nor of a callback that raises (counted too). When the
connection ends it reports ``down`` and reconnects after an exponential backoff with jitter
(``backoff_initial_s`` doubling up to ``backoff_max_s``, each delay drawn in [50 %, 100 %] of
that; reset once a connection delivered a price). Planned reconnects — the venue's maximum
connection age (Binance: 24 h) or its own reconnect request (Bitstamp) — happen after a short
pause (a fifth of ``backoff_initial_s``) and are not reported as ``down``. A connection with no
frame for ``idle_timeout_s`` is treated as dead.

Timestamps come from the injected clock; waiting (backoff, timeouts) uses the event loop's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import aiohttp

from intents_mm.clock import Clock
from intents_mm.domain.reference import SourceTick
from intents_mm.errors import InputError, TransportError
from intents_mm.venues.exchanges import binance, bitstamp, coinbase, kraken
from intents_mm.venues.exchanges.common import FrameError, Liveness, VenueRejected, VenueSpec

log = logging.getLogger(__name__)
_T = TypeVar("_T")

VENUES: dict[str, VenueSpec] = {
    spec.source: spec for spec in (kraken.SPEC, bitstamp.SPEC, coinbase.SPEC, binance.SPEC)
}

FeedState = Literal["connecting", "connected", "subscribed", "alive", "down"]


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """Connection news: ``connected`` (socket open, subscribe sent), ``subscribed`` (venue ack),
    ``alive`` (heartbeat, pong, status frame), ``down`` (connection lost or refused; ``reason``)."""

    source: str
    state: FeedState
    ts_ns: int
    reason: str | None = None


@dataclass(slots=True)
class FeedStats:
    connects: int = 0
    """WebSocket handshakes that succeeded."""
    reconnects: int = 0
    """Connection attempts after the first one."""
    frames: int = 0
    ticks: int = 0
    liveness: int = 0
    bad_frames: Counter[str] = field(default_factory=Counter)
    callback_errors: int = 0
    connected: bool = False
    subscribed: bool = False
    last_frame_ns: int | None = None
    last_tick_ns: int | None = None
    last_error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "connects": self.connects,
            "reconnects": self.reconnects,
            "frames": self.frames,
            "ticks": self.ticks,
            "liveness": self.liveness,
            "bad_frames": dict(self.bad_frames),
            "callback_errors": self.callback_errors,
            "connected": self.connected,
            "subscribed": self.subscribed,
            "last_frame_ns": self.last_frame_ns,
            "last_tick_ns": self.last_tick_ns,
            "last_error": self.last_error,
        }


TickCallback = Callable[[SourceTick], Awaitable[None] | None]
StatusCallback = Callable[[FeedStatus], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class _SessionEnd:
    reason: str
    planned: bool
    healthy: bool


class ExchangeFeed:
    """One venue's market-data feed. ``run()`` (or ``start()``/``stop()``) drives it."""

    def __init__(  # noqa: PLR0917 (the documented positional signature)
        self,
        source: str,
        ws_url: str,
        rest_url: str,
        clock: Clock,
        on_tick: TickCallback,
        on_status: StatusCallback,
        session: aiohttp.ClientSession,
        *,
        spec: VenueSpec | None = None,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 4.0,
        idle_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        close_timeout_s: float = 2.0,
        rest_timeout_s: float = 5.0,
        ws_ping_s: float | None = 15.0,
        max_connection_age_s: float | None = None,
        keepalive_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if spec is None:
            spec = VENUES.get(source)
            if spec is None:
                raise InputError(f"unknown exchange {source!r}; known: {', '.join(VENUES)}")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise InputError("backoff_initial_s must be positive and not above backoff_max_s")
        self.source = source
        self.spec = spec
        self.ws_url = ws_url
        self.rest_url = rest_url.rstrip("/")
        self._clock = clock
        self._on_tick = on_tick
        self._on_status = on_status
        self._session = session
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.idle_timeout_s = idle_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.close_timeout_s = close_timeout_s
        self.rest_timeout_s = rest_timeout_s
        self.ws_ping_s = ws_ping_s
        self.max_connection_age_s = (
            max_connection_age_s if max_connection_age_s is not None else spec.max_connection_age_s
        )
        self.keepalive_s = keepalive_s if keepalive_s is not None else spec.keepalive_s
        self._rng = rng or random.Random()
        self.stats = FeedStats()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Run the feed in a task this object owns; ``stop()`` ends it."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"exchange-feed-{self.source}")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def backoff_delay_s(self, attempt: int) -> float:
        """The wait before reconnect attempt ``attempt`` (0-based), jittered into [50 %, 100 %]."""
        base: float = min(self.backoff_max_s, self.backoff_initial_s * float(2 ** min(attempt, 30)))
        return base * (0.5 + 0.5 * self._rng.random())

    async def run(self) -> None:
        """Connect, read and reconnect until cancelled."""
        attempt = 0
        first = True
        try:
            while True:
                if not first:
                    self.stats.reconnects += 1
                first = False
                await self._status("connecting")
                end = await self._session_once()
                self.stats.connected = False
                self.stats.subscribed = False
                if end.healthy:
                    attempt = 0
                if end.planned:
                    log.info("%s feed reconnecting: %s", self.source, end.reason)
                    # A short pause so a venue repeating its reconnect request cannot spin us.
                    await asyncio.sleep(self.backoff_initial_s / 5)
                    continue
                self.stats.last_error = end.reason
                log.warning("%s feed down: %s", self.source, end.reason)
                await self._status("down", end.reason)
                await asyncio.sleep(self.backoff_delay_s(attempt))
                attempt += 1
        finally:
            self.stats.connected = False
            self.stats.subscribed = False

    # --- one connection ---------------------------------------------------------------------

    async def _session_once(self) -> _SessionEnd:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                ws = await self._session.ws_connect(
                    self.ws_url,
                    heartbeat=self.ws_ping_s,
                    autoping=True,
                    max_msg_size=8 * 1024 * 1024,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.close_timeout_s),
                )
        except aiohttp.WSServerHandshakeError as exc:
            return _SessionEnd(f"websocket handshake refused: HTTP {exc.status}", False, False)
        except (aiohttp.ClientError, OSError) as exc:
            return _SessionEnd(f"cannot connect: {_describe(exc)}", False, False)
        except TimeoutError:
            return _SessionEnd(
                f"cannot connect: no handshake within {self.connect_timeout_s} s", False, False
            )

        keepalive: asyncio.Task[None] | None = None
        try:
            self.stats.connects += 1
            self.stats.connected = True
            for frame in self.spec.subscribe(self.ws_url):
                await ws.send_str(frame)
            await self._status("connected")
            if self.spec.keepalive is not None and self.keepalive_s > 0:
                keepalive = asyncio.create_task(self._keepalive(ws, self.spec.keepalive))
            return await self._read(ws)
        except (aiohttp.ClientError, OSError) as exc:
            return _SessionEnd(f"connection failed: {_describe(exc)}", False, False)
        finally:
            if keepalive is not None:
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keepalive
            await ws.close()

    async def _keepalive(self, ws: aiohttp.ClientWebSocketResponse, frame: str) -> None:
        while not ws.closed:
            await asyncio.sleep(self.keepalive_s)
            with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
                await ws.send_str(frame)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> _SessionEnd:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_connection_age_s if self.max_connection_age_s else None
        healthy = False
        while True:
            timeout = self.idle_timeout_s
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return _SessionEnd("maximum connection age reached", True, healthy)
                timeout = min(timeout, remaining)
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    return _SessionEnd("maximum connection age reached", True, healthy)
                return _SessionEnd(f"no frame for {self.idle_timeout_s} s", False, healthy)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return _SessionEnd(f"closed by venue (code {ws.close_code})", False, healthy)
            if msg.type == aiohttp.WSMsgType.ERROR:
                return _SessionEnd(f"websocket error: {_describe(ws.exception())}", False, healthy)
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                continue
            end = await self._handle(msg.data)
            if end is True:
                healthy = True
            elif isinstance(end, _SessionEnd):
                return _SessionEnd(end.reason, end.planned, healthy)

    async def _handle(self, data: str | bytes) -> _SessionEnd | bool:
        """Parse and dispatch one frame; True when it was a price, a _SessionEnd to hang up."""
        now = self._clock.now_ns()
        self.stats.frames += 1
        self.stats.last_frame_ns = now
        try:
            event = self.spec.parse_ws(data, now)
        except VenueRejected as exc:
            self.stats.bad_frames[exc.reason] += 1
            return _SessionEnd(str(exc), False, False)
        except FrameError as exc:
            self.stats.bad_frames[exc.reason] += 1
            log.debug("%s", exc)
            return False
        except Exception:  # a parser defect must not kill the feed either
            self.stats.bad_frames["parser_error"] += 1
            log.exception("%s parser failed on a frame", self.source)
            return False
        if isinstance(event, Liveness):
            self.stats.liveness += 1
            if event.kind == "reconnect_requested":
                return _SessionEnd("venue asked to reconnect", True, False)
            if event.kind == "subscribed":
                self.stats.subscribed = True
                await self._status("subscribed", event.detail or None)
            else:
                await self._status("alive", event.kind)
            return False
        self.stats.ticks += 1
        self.stats.last_tick_ns = now
        self.stats.subscribed = True  # a price proves it (Binance streams named in the URL send no ack)
        await self._call(self._on_tick, event)
        return True

    async def _status(self, state: FeedState, reason: str | None = None) -> None:
        await self._call(self._on_status, FeedStatus(self.source, state, self._clock.now_ns(), reason))

    async def _call(self, callback: Callable[[_T], Awaitable[None] | None], arg: _T) -> None:
        try:
            result = callback(arg)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.stats.callback_errors += 1
            log.exception("%s feed callback failed", self.source)

    # --- REST -------------------------------------------------------------------------------

    async def poll_rest(self) -> SourceTick:
        """One REST ticker, parsed. Raises ``TransportError`` (unreachable, HTTP error, timeout) or
        ``FrameError`` (an answer we cannot use; ``VenueRejected`` when it is the venue's error)."""
        url = self.rest_url + self.spec.rest_path
        try:
            async with asyncio.timeout(self.rest_timeout_s):
                async with self._session.get(url) as resp:
                    body = await resp.read()
                    status = resp.status
        except TimeoutError:
            raise TransportError(
                f"{self.source} REST ticker: no answer within {self.rest_timeout_s} s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"{self.source} REST ticker: {_describe(exc)}") from None
        received = self._clock.now_ns()
        if status != 200:
            snippet = body[:120].decode("utf-8", "replace").replace("\n", " ")
            raise TransportError(f"{self.source} REST ticker answered HTTP {status}: {snippet}")
        return self.spec.parse_rest(body, received)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc).replace("\n", " ").strip()
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
