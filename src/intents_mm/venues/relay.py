"""Solver Relay (Message Bus) WebSocket client — the live adapter for protocol reference section 1.

One :class:`SolverRelayClient` keeps one solver socket open for as long as it runs:

* Connects to the relay's ``/ws`` URL with ``Authorization: Bearer <api key>`` (no header when there is no
  key) and, when an ``instance_id`` is configured, ``?instance_id=<id>`` for guaranteed delivery of
  ``quote_status`` (1.1, 1.7).
* Requests are JSON-RPC 2.0 with integer ids (a counter that never repeats, also across connections) and
  a per-request timeout (5 s by default, like the reference solver). Frames are routed by shape (1.2): a
  frame with an ``id`` is a response; a frame without one whose ``method`` is ``"event"`` (the form every
  working client uses) or ``"subscribe"`` (the docs' form, fields flattened into ``params``) is an event;
  anything else is ignored and counted. ``error`` may be a JSON-RPC object or a bare string. A malformed
  frame never closes the socket: it is counted by reason in :meth:`SolverRelayClient.snapshot`.
* Subscriptions are *desired state*: :meth:`subscribe_quotes` / :meth:`subscribe_status` register them and
  every (re)connection subscribes all of them again, because subscription ids are per connection (1.9).
* Reconnects forever with exponential backoff and jitter (0.25 s doubling to a 10 s cap by default; the
  backoff resets once a connection has stayed up for a second). An HTTP 401/403 on the upgrade puts the
  client in state ``auth_failed`` with an operator-readable :attr:`SolverRelayClient.auth_problem` and is
  retried only every ``auth_retry_s`` (30 s), never in a tight loop.
* Events are delivered in arrival order through a bounded queue (:meth:`next_event` / :meth:`events`); a
  full queue pushes back on the socket rather than dropping. Event fields are the wire values *as
  received* (JSON types unchanged, ``None`` when absent): the consumer validates them (the ingest service
  does, and counts every rejection by reason).
* aiohttp and socket failures surface as :class:`TransportError`; relay error replies to ``subscribe`` /
  ``unsubscribe`` as :class:`RpcError`. :meth:`send_quote_response` returns a :class:`RelayReply` for any
  relay answer (accepted or rejected) and raises :class:`TransportError` when it cannot get one. The
  relay's free text in a reply (error message, string code, string result) is passed through
  :func:`intents_mm.messages.safe_text`: NUL and control characters arrive escaped, never raw.

The API key never appears in logs, errors or :meth:`snapshot`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import msgspec
from yarl import URL

from intents_mm.clock import SYSTEM_CLOCK, Clock
from intents_mm.errors import InputError, RpcError, TransportError
from intents_mm.messages import safe_text

__all__ = [
    "ConnectionState",
    "QuoteRequestEvent",
    "QuoteStatusEvent",
    "RelayEvent",
    "RelayReply",
    "SolverRelayClient",
]

log = logging.getLogger(__name__)

_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder()
_EVENT_METHODS: Final = frozenset(("event", "subscribe"))
_MAX_MESSAGE_CHARS: Final = 300


class ConnectionState(enum.StrEnum):
    IDLE = "idle"  # not started
    CONNECTING = "connecting"  # opening the socket
    SUBSCRIBING = "subscribing"  # socket open, (re)subscribing
    CONNECTED = "connected"  # socket open and every desired subscription attempted
    DISCONNECTED = "disconnected"  # waiting to reconnect (backoff)
    AUTH_FAILED = "auth_failed"  # the relay refused the API key; retried slowly
    CLOSED = "closed"  # closed by the owner


@dataclass(frozen=True, slots=True)
class QuoteRequestEvent:
    """A ``quote`` event (a user's quote request), fields exactly as on the wire.

    ``quote_id``, ``asset_in`` (``defuse_asset_identifier_in``), ``asset_out``, ``exact_amount_in``,
    ``exact_amount_out`` and ``min_deadline_ms`` are the raw JSON values (``None`` when absent) and
    must be validated by the consumer. ``partner_id`` / ``traceparent`` come from ``metadata`` and are
    kept only when they are strings. ``received_ts_ns`` is the client clock's ``now_ns()`` when the frame
    was read; ``raw`` is the event's data object (not a copy).
    """

    quote_id: object
    asset_in: object
    asset_out: object
    exact_amount_in: object
    exact_amount_out: object
    min_deadline_ms: object
    partner_id: str | None
    traceparent: str | None
    subscription: str | None
    received_ts_ns: int
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class QuoteStatusEvent:
    """A ``quote_status`` event: one of our quotes was used in an executed intent.

    ``quote_hash``, ``intent_hash`` and ``tx_hash`` are the raw JSON values (``None`` when absent).
    ``seq`` is the guaranteed-delivery sequence number (``None`` when absent or not an integer);
    ``guaranteed`` is true when the event arrived on a subscription made with the guaranteed flag, i.e.
    it must be acknowledged with :meth:`SolverRelayClient.acknowledge` after processing.
    """

    quote_hash: object
    intent_hash: object
    tx_hash: object
    seq: int | None
    subscription: str | None
    guaranteed: bool
    received_ts_ns: int
    raw: Mapping[str, Any]


RelayEvent = QuoteRequestEvent | QuoteStatusEvent


@dataclass(frozen=True, slots=True)
class RelayReply:
    """The relay's answer to a request: ``ok`` with ``result``, or not ok with the error's message/code."""

    ok: bool
    result: Any = None
    error_message: str | None = None
    error_code: int | str | None = None


@dataclass
class _Subscription:
    """A desired subscription; ``sub_id`` is its id on the current connection (None when not subscribed)."""

    kind: str  # "quote" | "quote_status"
    params: list[Any]
    guaranteed: bool = False
    sub_id: str | None = None
    error: str | None = None


@dataclass
class _Pending:
    future: asyncio.Future[dict[str, Any]]
    method: str
    subscription: _Subscription | None = None
    timer: asyncio.TimerHandle | None = None


class _AuthRefused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _one_line(text: str) -> str:
    line = " ".join(safe_text(text).split())  # no NUL or control character reaches a record
    return line if len(line) <= _MAX_MESSAGE_CHARS else line[: _MAX_MESSAGE_CHARS - 3] + "..."


def rpc_error_parts(error: object) -> tuple[str, int | str | None, object]:
    """``(message, code, data)`` of a JSON-RPC ``error`` that is an object or a bare string."""
    if isinstance(error, str):
        return _one_line(error) or "relay error", None, None
    if isinstance(error, dict):
        message = error.get("message")
        code = error.get("code")
        code = code if isinstance(code, (int, str)) and not isinstance(code, bool) else None
        code = safe_text(code)[:_MAX_MESSAGE_CHARS] if isinstance(code, str) else code
        text = message if isinstance(message, str) and message else _ENCODER.encode(error).decode()
        return _one_line(text), code, error.get("data")
    return _one_line(_ENCODER.encode(error).decode()), None, None


class SolverRelayClient:
    """The solver WebSocket client. See the module docstring for the contract.

    Life cycle: register subscriptions (before or after :meth:`start`), ``await start()`` (returns at
    once; the connection is made in the background — :meth:`wait_connected` waits for it), consume
    events with :meth:`next_event`, ``await close()``. One consumer of events per client.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        instance_id: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        request_timeout_s: float = 5.0,
        connect_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 10.0,
        auth_retry_s: float = 30.0,
        stable_after_s: float = 1.0,
        heartbeat_s: float | None = 20.0,
        event_queue_size: int = 10_000,
        max_message_bytes: int = 4 * 1024 * 1024,
        rng: random.Random | None = None,
    ) -> None:
        parsed = URL(url)
        if parsed.scheme not in ("ws", "wss", "http", "https") or not parsed.host:
            raise InputError(f"relay URL must be a ws:// or wss:// URL, got {url!r}")
        if request_timeout_s <= 0 or backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise InputError("relay client timeouts and backoff must be positive (initial <= cap)")
        self.instance_id = instance_id or None
        self._url = parsed.update_query(instance_id=self.instance_id) if self.instance_id else parsed
        self._public_url = str(parsed.with_query(None).with_user(None).with_password(None))
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._has_key = bool(api_key)
        self._clock = clock
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.auth_retry_s = auth_retry_s
        self.stable_after_s = stable_after_s
        self._heartbeat_s = heartbeat_s
        self._max_message_bytes = max_message_bytes
        self._rng = rng or random.Random()

        self._state = ConnectionState.IDLE
        self._state_changed = asyncio.Event()
        self._desired: list[_Subscription] = []
        self._subs: dict[str, _Subscription] = {}
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0
        self._events: asyncio.Queue[RelayEvent] = asyncio.Queue(maxsize=event_queue_size)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

        self.counts: Counter[str] = Counter()
        self.auth_problem: str | None = None
        self.last_error: str | None = None
        self.connections = 0
        self.reconnects = 0
        self.connected_since_ts_ns: int | None = None
        self.last_event_ts_ns: int | None = None
        self.last_event_mono_ns: int | None = None
        self._down_since_mono_ns: int = clock.monotonic_ns()

    # ------------------------------------------------------------------ introspection

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state is ConnectionState.CONNECTED

    @property
    def subscription_ids(self) -> dict[str, str]:
        """Current connection's subscription ids → kind."""
        return {sub_id: sub.kind for sub_id, sub in self._subs.items()}

    def disconnected_for_ns(self) -> int:
        """How long the client has not been connected (0 while connected), by the clock's monotonic time."""
        if self._state is ConnectionState.CONNECTED:
            return 0
        return max(0, self._clock.monotonic_ns() - self._down_since_mono_ns)

    def subscription_errors(self) -> dict[str, str]:
        """Desired subscriptions the relay refused on the current connection: kind → error message."""
        return {s.kind: s.error for s in self._desired if s.error is not None}

    def snapshot(self) -> dict[str, Any]:
        """State for operators (no secrets): connection, subscriptions, counters, last event and errors."""
        return {
            "state": self._state.value,
            "url": self._public_url,
            "instance_id": self.instance_id,
            "api_key": "<set>" if self._has_key else "<unset>",
            "connections": self.connections,
            "reconnects": self.reconnects,
            "connected_since_ts_ns": self.connected_since_ts_ns,
            "disconnected_for_ms": self.disconnected_for_ns() // 1_000_000,
            "subscriptions": [
                {
                    "kind": s.kind,
                    "params": s.params,
                    "id": s.sub_id,
                    **({"error": s.error} if s.error else {}),
                }
                for s in self._desired
            ],
            "last_event_ts_ns": self.last_event_ts_ns,
            "event_queue": self._events.qsize(),
            "pending_requests": len(self._pending),
            "last_error": self.last_error,
            "auth_problem": self.auth_problem,
            "counts": dict(self.counts),
        }

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Start the connection loop in the background (idempotent)."""
        if self._task is not None:
            return
        if self._closing:
            raise TransportError("the Solver Relay client is closed")
        self._session = aiohttp.ClientSession()
        self._down_since_mono_ns = self._clock.monotonic_ns()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="solver-relay-client")

    async def close(self) -> None:
        """Stop reconnecting, close the socket and fail every pending request."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None
        self._fail_pending("the Solver Relay client was closed")
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._set_state(ConnectionState.CLOSED)

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait until connected (True), or until the timeout or an auth failure (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._state is not ConnectionState.CONNECTED:
            if self._state in (ConnectionState.AUTH_FAILED, ConnectionState.CLOSED):
                return False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            event = self._state_changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)
        return True

    # ------------------------------------------------------------------ events

    async def next_event(self) -> RelayEvent:
        """The next event, in arrival order (waits for one)."""
        return await self._events.get()

    async def events(self) -> AsyncIterator[RelayEvent]:
        """Every event, in arrival order, for as long as the caller iterates."""
        while True:
            yield await self._events.get()

    # ------------------------------------------------------------------ subscriptions

    async def subscribe_quotes(
        self, tokens_in: Sequence[str] | None = None, tokens_out: Sequence[str] | None = None
    ) -> str | None:
        """Subscribe to ``quote`` events, filtered to the given token lists (2nd positional param).

        The subscription is kept and made again on every connection. Returns its id when connected now
        (:class:`RpcError` if the relay refuses it), else None (it is made when the connection opens).
        """
        params: list[Any] = ["quote"]
        if tokens_in is not None or tokens_out is not None:
            token_filter: dict[str, list[str]] = {}
            if tokens_in is not None:
                token_filter["tokens_in"] = list(tokens_in)
            if tokens_out is not None:
                token_filter["tokens_out"] = list(tokens_out)
            params.append(token_filter)
        return await self._add(_Subscription("quote", params))

    async def subscribe_status(self, guaranteed: bool = False) -> str | None:
        """Subscribe to ``quote_status`` events; ``guaranteed`` sends ``["quote_status", null, true]``.

        Guaranteed delivery also needs the client's ``instance_id``. Same keep/return contract as
        :meth:`subscribe_quotes`.
        """
        params: list[Any] = ["quote_status", None, True] if guaranteed else ["quote_status"]
        return await self._add(_Subscription("quote_status", params, guaranteed=guaranteed))

    async def unsubscribe(self, sub_id: str) -> None:
        """Drop a subscription (also from the desired set); raises :class:`RpcError` when refused."""
        sub = self._subs.pop(sub_id, None)
        if sub is None:
            raise InputError(f"no subscription {sub_id!r} on the current connection")
        with contextlib.suppress(ValueError):
            self._desired.remove(sub)
        sub.sub_id = None
        await self._call("unsubscribe", [sub_id])

    async def acknowledge(self, sub_id: str, seq: int, *, wait: bool = False) -> bool:
        """Acknowledge a guaranteed ``quote_status`` event (``["<subscription id>", seq]``).

        Returns False without sending when ``sub_id`` is not a subscription of the current connection
        (the relay redelivers unacknowledged events after a reconnect) or when the socket is down.
        With ``wait=False`` the reply is not awaited (it is counted when it arrives), so the event
        consumer never waits on the socket reader; ``wait=True`` raises :class:`RpcError` on a refusal.
        """
        if sub_id not in self._subs:
            self.counts["acks_skipped_stale"] += 1
            return False
        try:
            pending = await self._send("acknowledge", [sub_id, seq])
        except TransportError:
            self.counts["acks_skipped_down"] += 1
            return False
        if wait:
            self._result(await pending.future, "acknowledge")
            self.counts["acks_ok"] += 1
        else:
            pending.future.add_done_callback(self._ack_done)
        return True

    # ------------------------------------------------------------------ quote responses

    @staticmethod
    def quote_response_params(
        quote_id: str, *, exact_side: str, amount_in: int, amount_out: int, signed_data: dict[str, Any]
    ) -> dict[str, Any]:
        """The ``quote_response`` object (section 1.5): ``quote_output`` carries the side the request left
        open (``amount_out`` for an exact-in request, ``amount_in`` for exact-out), one key only, as the
        reference solver sends it; amounts as decimal strings."""
        output = {"amount_out": str(amount_out)} if exact_side == "in" else {"amount_in": str(amount_in)}
        return {"quote_id": quote_id, "quote_output": output, "signed_data": signed_data}

    async def send_quote_response(self, params: dict[str, Any]) -> RelayReply:
        """Send ``quote_response`` with ``params`` as the single positional object and wait for the reply.

        Returns ``RelayReply(ok=True, result=...)`` when the relay answers with a result (``"OK"`` on
        acceptance), ``RelayReply(ok=False, error_message=..., error_code=...)`` when it answers with an
        error. Raises :class:`TransportError` when not connected, on a send failure, on a lost
        connection or when no reply arrives within the request timeout; :class:`InputError` when
        ``params`` cannot be encoded as JSON.
        """
        pending = await self._send("quote_response", [params])
        reply = await pending.future
        error = reply.get("error")
        if error is not None:
            message, code, _ = rpc_error_parts(error)
            self.counts["quote_responses_rejected"] += 1
            return RelayReply(ok=False, result=None, error_message=message, error_code=code)
        self.counts["quote_responses_ok"] += 1
        result = reply.get("result")
        return RelayReply(ok=True, result=safe_text(result) if isinstance(result, str) else result)

    # ------------------------------------------------------------------ internals: requests

    async def _add(self, sub: _Subscription) -> str | None:
        self._desired.append(sub)
        if self._state is not ConnectionState.CONNECTED:
            return None
        await self._subscribe(sub)
        return sub.sub_id

    async def _subscribe(self, sub: _Subscription) -> None:
        pending = await self._send("subscribe", sub.params, subscription=sub)
        try:
            result = self._result(await pending.future, "subscribe")
        except RpcError as exc:
            sub.error = str(exc)
            sub.sub_id = None
            self.counts["subscribe_refused"] += 1
            raise
        if sub.sub_id is None:  # the reader registers a string result; anything else is a bad answer
            sub.error = f"relay answered subscribe {sub.kind} with {result!r}, not a subscription id"
            self.counts["subscribe_refused"] += 1
            raise RpcError(sub.error)
        sub.error = None

    async def _call(self, method: str, params: list[Any]) -> Any:
        pending = await self._send(method, params)
        return self._result(await pending.future, method)

    @staticmethod
    def _result(reply: dict[str, Any], method: str) -> Any:
        error = reply.get("error")
        if error is not None:
            message, code, data = rpc_error_parts(error)
            raise RpcError(f"relay refused {method}: {message}", code=code, data=data)
        return reply.get("result")

    async def _send(
        self, method: str, params: list[Any], *, subscription: _Subscription | None = None
    ) -> _Pending:
        ws = self._ws
        if ws is None or ws.closed:
            raise TransportError(f"not connected to the Solver Relay (state {self._state.value})")
        request_id = self._next_id
        self._next_id += 1
        try:
            text = _ENCODER.encode(
                {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
            ).decode()
        except (TypeError, OverflowError) as exc:
            raise InputError(f"{method} params cannot be encoded as JSON: {exc}") from None
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future(), method, subscription)
        self._pending[request_id] = pending
        try:
            await ws.send_str(text)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            self._pending.pop(request_id, None)
            pending.future.cancel()
            raise TransportError(
                f"could not send {method} to the Solver Relay: {exc.__class__.__name__}"
            ) from None
        if not pending.future.done():
            pending.timer = loop.call_later(self.request_timeout_s, self._expire, request_id)
        self.counts[f"requests_{method}"] += 1
        return pending

    def _expire(self, request_id: int) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is not None and not pending.future.done():
            self.counts["request_timeouts"] += 1
            pending.future.set_exception(
                TransportError(
                    f"the Solver Relay did not answer {pending.method} within {self.request_timeout_s:g} s"
                )
            )

    def _ack_done(self, future: asyncio.Future[dict[str, Any]]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.counts["acks_lost"] += 1
        elif future.result().get("error") is not None:
            self.counts["acks_refused"] += 1
            self.last_error = "relay refused acknowledge: " + rpc_error_parts(future.result()["error"])[0]
        else:
            self.counts["acks_ok"] += 1

    def _fail_pending(self, message: str) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if entry.timer is not None:
                entry.timer.cancel()
            if not entry.future.done():
                entry.future.set_exception(TransportError(message))
                if entry.method == "acknowledge":  # nobody awaits fire-and-forget futures
                    entry.future.exception()

    # ------------------------------------------------------------------ internals: connection loop

    def _set_state(self, state: ConnectionState) -> None:
        if state is self._state:
            return
        if state is ConnectionState.CONNECTED:
            self.connected_since_ts_ns = self._clock.now_ns()
        elif self._state is ConnectionState.CONNECTED:
            self._down_since_mono_ns = self._clock.monotonic_ns()
            self.connected_since_ts_ns = None
        self._state = state
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    def backoff_delay_s(self, failures: int) -> float:
        """Delay before reconnecting after ``failures`` consecutive failures: doubling, capped, jittered."""
        base = min(self.backoff_max_s, self.backoff_initial_s * float(1 << min(30, max(0, failures - 1))))
        return base * (0.5 + 0.5 * self._rng.random())

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            self._set_state(ConnectionState.CONNECTING)
            up_since: int | None = None
            try:
                up_since = await self._connect_and_serve()
            except _AuthRefused as exc:
                self.counts["auth_failures"] += 1
                first_refusal = self.auth_problem is None
                self.auth_problem = (
                    f"the Solver Relay refused the connection with HTTP {exc.status}: "
                    + (
                        "NEAR_INTENTS_API_KEY is not accepted"
                        if self._has_key
                        else "NEAR_INTENTS_API_KEY is not set"
                    )
                    + f"; retrying every {self.auth_retry_s:g} s"
                )
                self.last_error = self.auth_problem
                if first_refusal:
                    log.error("solver relay: %s", self.auth_problem)
                self._set_state(ConnectionState.AUTH_FAILED)
                await asyncio.sleep(self.auth_retry_s)
                continue
            except TransportError as exc:
                self.last_error = str(exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the loop die
                log.exception("solver relay: connection loop failed")
                self.last_error = f"internal error: {exc.__class__.__name__}"
            lived_s = (self._clock.monotonic_ns() - up_since) / 1e9 if up_since is not None else 0.0
            failures = 1 if up_since is not None and lived_s >= self.stable_after_s else failures + 1
            self.reconnects += 1
            self._set_state(ConnectionState.DISCONNECTED)
            delay = self.backoff_delay_s(failures)
            log.warning("solver relay: disconnected (%s); reconnecting in %.2f s", self.last_error, delay)
            await asyncio.sleep(delay)

    async def _connect_and_serve(self) -> int | None:
        """One connection: open, subscribe, read until it closes. Returns when it came up (monotonic ns)."""
        assert self._session is not None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                ws = await self._session.ws_connect(
                    self._url,
                    headers=self._headers,
                    heartbeat=self._heartbeat_s,
                    max_msg_size=self._max_message_bytes,
                    autoping=True,
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise _AuthRefused(exc.status) from None
            raise TransportError(
                f"the Solver Relay refused the WebSocket upgrade: HTTP {exc.status}"
            ) from None
        except TimeoutError:
            raise TransportError(
                f"connecting to the Solver Relay timed out after {self.connect_timeout_s:g} s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(
                f"cannot connect to the Solver Relay at {self._public_url}: {exc.__class__.__name__}"
            ) from None
        self._ws = ws
        self.connections += 1
        self.auth_problem = None
        up_since = self._clock.monotonic_ns()
        reader = asyncio.get_running_loop().create_task(self._read_loop(ws), name="solver-relay-reader")
        try:
            self._set_state(ConnectionState.SUBSCRIBING)
            index = 0
            while index < len(self._desired):  # subscriptions added meanwhile are included
                sub = self._desired[index]
                index += 1
                try:
                    await self._subscribe(sub)
                except RpcError as exc:
                    log.error("solver relay: %s subscription refused: %s", sub.kind, exc)
            if not reader.done():
                self._set_state(ConnectionState.CONNECTED)
                log.info("solver relay: connected, subscriptions %s", self.subscription_ids)
            await reader
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
            self._ws = None
            self._subs.clear()
            for sub in self._desired:
                sub.sub_id = None
            self._fail_pending("the connection to the Solver Relay was lost")
            with contextlib.suppress(Exception):
                await ws.close()
        self.last_error = f"the Solver Relay closed the connection (code {ws.close_code})"
        return up_since

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Read frames until the socket closes; events go to the queue (waiting when it is full).

        When the socket ends, every pending request fails at once (not at its timeout)."""
        events = self._events
        try:
            while True:
                msg = await ws.receive()
                kind = msg.type
                if kind is aiohttp.WSMsgType.TEXT:
                    event = self._on_text(msg.data, self._clock.now_ns())
                    if event is not None:
                        if events.full():
                            self.counts["event_queue_full_waits"] += 1
                            await events.put(event)
                        else:
                            events.put_nowait(event)
                elif kind is aiohttp.WSMsgType.BINARY:
                    self.counts["malformed_binary_frame"] += 1
                elif kind is aiohttp.WSMsgType.ERROR:
                    self.counts["socket_errors"] += 1
                    return
                elif kind in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    return
        except (aiohttp.ClientError, ConnectionError) as exc:
            self.counts["socket_errors"] += 1
            self.last_error = f"Solver Relay socket failed: {exc.__class__.__name__}"
        finally:
            self._fail_pending("the connection to the Solver Relay was lost")

    def _on_text(self, text: str, received_ts_ns: int) -> RelayEvent | None:
        """Route one text frame: resolve a response, or return an event, or count why it was ignored."""
        self.counts["frames_in"] += 1
        try:
            msg = _DECODER.decode(text)
        except (msgspec.DecodeError, RecursionError, ValueError):  # bad JSON, too deep
            self.counts["malformed_not_json"] += 1
            return None
        if type(msg) is not dict:
            self.counts["malformed_not_object"] += 1
            return None
        request_id = msg.get("id")
        if request_id is not None:
            self._on_response(request_id, msg)
            return None
        params = msg.get("params")
        if msg.get("method") in _EVENT_METHODS and type(params) is dict:
            return self._on_event(params, received_ts_ns)
        if msg.get("error") is not None:
            self.counts["ignored_error_without_id"] += 1
            self.last_error = "relay error without a request id: " + rpc_error_parts(msg["error"])[0]
        else:
            self.counts["ignored_other"] += 1
        return None

    def _on_response(self, request_id: object, msg: dict[str, Any]) -> None:
        if type(request_id) is not int:
            self.counts["ignored_response_non_integer_id"] += 1
            return
        pending = self._pending.pop(request_id, None)
        if pending is None:
            self.counts["ignored_response_unknown_id"] += 1
            return
        if pending.timer is not None:
            pending.timer.cancel()
        self.counts["responses"] += 1
        sub = pending.subscription
        if sub is not None and msg.get("error") is None:
            result = msg.get("result")
            if isinstance(result, str) and result:
                # Registered here, before any event that follows the reply in the same read burst.
                sub.sub_id = result
                self._subs[result] = sub
        if not pending.future.done():
            pending.future.set_result(msg)

    def _on_event(self, params: dict[str, Any], received_ts_ns: int) -> RelayEvent | None:
        data = params.get("data")
        if data is None:
            body = params  # the docs' form: event fields flattened next to "subscription"
        elif type(data) is dict:
            body = data
        else:
            self.counts["malformed_event_data"] += 1
            return None
        sub_id = params.get("subscription")
        if type(sub_id) is not str:
            sub_id = None
        sub = self._subs.get(sub_id) if sub_id is not None else None
        if sub is not None:
            kind = sub.kind
        else:
            self.counts["events_unknown_subscription"] += 1
            if "quote_id" in body:
                kind = "quote"
            elif "quote_hash" in body:
                kind = "quote_status"
            else:
                self.counts["malformed_event_kind"] += 1
                return None
        self.last_event_ts_ns = received_ts_ns
        self.last_event_mono_ns = self._clock.monotonic_ns()
        if kind == "quote":
            self.counts["events_quote"] += 1
            metadata = params.get("metadata")
            partner_id = traceparent = None
            if type(metadata) is dict:
                partner_id = metadata.get("partner_id")
                traceparent = metadata.get("traceparent")
            return QuoteRequestEvent(
                quote_id=body.get("quote_id"),
                asset_in=body.get("defuse_asset_identifier_in"),
                asset_out=body.get("defuse_asset_identifier_out"),
                exact_amount_in=body.get("exact_amount_in"),
                exact_amount_out=body.get("exact_amount_out"),
                min_deadline_ms=body.get("min_deadline_ms"),
                partner_id=partner_id if type(partner_id) is str else None,
                traceparent=traceparent if type(traceparent) is str else None,
                subscription=sub_id,
                received_ts_ns=received_ts_ns,
                raw=body,
            )
        self.counts["events_quote_status"] += 1
        seq = params.get("seq")
        if seq is None:
            seq = body.get("seq")
        if seq is not None and type(seq) is not int:
            self.counts["malformed_event_seq"] += 1
            seq = None
        return QuoteStatusEvent(
            quote_hash=body.get("quote_hash"),
            intent_hash=body.get("intent_hash"),
            tx_hash=body.get("tx_hash"),
            seq=seq,
            subscription=sub_id,
            guaranteed=sub.guaranteed if sub is not None else False,
            received_ts_ns=received_ts_ns,
            raw=body,
        )
