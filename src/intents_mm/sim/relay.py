"""Simulated Solver Relay (Message Bus): the solver WebSocket ``/ws`` and the frontend JSON-RPC ``/rpc``.

Wire formats follow ``reference/near-intents-protocol.md`` sections 1 and 2 byte for byte:

* ``GET /ws`` upgrades only with ``Authorization: Bearer <key>`` for a key in ``api_keys`` (HTTP 403
  otherwise, unless ``allow_anonymous``). ``?instance_id=<id>`` binds the connection to the guaranteed
  delivery queue ``QS_<partner>_<instance_id>``, which lives for the process lifetime.
* Socket methods: ``subscribe`` (1-3 positional params), ``unsubscribe``, ``acknowledge``,
  ``quote_response``. Malformed frames get a JSON-RPC error reply and the socket stays up.
* ``POST /rpc`` methods: ``quote``, ``publish_intent``, ``publish_intents``, ``get_status``.

A quote request is broadcast to every matching ``quote`` subscription; responses are validated
(signature, Verifier checks, deadline, ``token_diff`` shape and amounts, balance) and collected for the
request's window; the caller gets the valid quotes best first. ``publish_intent`` executes the user's
signed intent together with the chosen quotes in one ``execute_intents`` transaction on the simulated
chain and pushes ``quote_status`` only to the partners whose quotes were used.

Cancels (reference section 4.3, the official SDK's ``invalidateNonces``): a ``publish_intents`` /
``publish_intent`` with no quote hashes whose every payload has empty (or absent) ``intents`` is
verified as the Verifier would (nothing committed), and on success every ``(signer_id, nonce)`` is
remembered as cancelled in memory; nothing goes on chain. The batch is all or nothing (one answer, one
status). From then on the relay refuses those nonces: a ``quote_response``, a publish whose payloads or
chosen quotes use one fails with ``nonce was already used``, and the ``quote`` answer drops every
candidate whose nonce is cancelled here or used on the Verifier, so the user gets the next best quote.

Settlement takes ``settlement_delay_ms`` (default 0): the intent is ``PENDING`` meanwhile and the
``execute_intents`` transaction lands in the block current when the delay ends (it may then fail,
e.g. when another batch used a nonce first); the publish answer comes when it has landed.

Waiting windows run on the event loop's timer (real time); every timestamp the protocol checks
(deadlines) comes from the injected clock, and latency samples use ``clock.monotonic_ns()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import msgspec
from aiohttp import WSMsgType, web

from intents_mm.clock import Clock
from intents_mm.domain.amounts import parse_i128, parse_u128
from intents_mm.errors import InputError
from intents_mm.near.nonce import LegacyNonce, VersionedNonce, decode_nonce
from intents_mm.near.payload import SignedPayload, parse_multipayload
from intents_mm.near.timefmt import format_deadline
from intents_mm.sim.near_rpc import SimNear
from intents_mm.sim.verifier import ERR_NONCE_USED, Verifier, VerifierError

log = logging.getLogger(__name__)

Envelope = Literal["event", "docs"]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
QUOTE_REJECTED = -32000
UNAUTHORIZED = -32001

_NS_PER_MS = 1_000_000
_OUTBOX_LIMIT = 4096
_CLOSED_QUOTES_KEPT = 100_000
_LATENCY_KEPT = 200_000
_STATUSES_KEPT = 100_000
_QUEUE_KEPT = 100_000  # unacknowledged events per guaranteed queue (the real relay keeps 7 days)
_FILLS_KEPT = 200_000  # settled quotes kept for the scoreboard (sim/scoreboard.py)

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()


class RelayRequestError(InputError):
    """A request the relay refuses; ``code`` is the JSON-RPC error code of the reply."""

    def __init__(self, message: str, code: int = INVALID_PARAMS) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class LatencySample:
    """One quote event sent to one solver connection, and its first ``quote_response`` (if any).

    Times are the relay clock's ``monotonic_ns()``: ``sent_ns`` when the event was queued for the
    socket, ``response_ns`` when the response frame was read.
    """

    quote_id: str
    connection_id: int
    partner_id: str
    sent_ns: int
    response_ns: int | None
    accepted: bool | None

    @property
    def latency_ns(self) -> int | None:
        return None if self.response_ns is None else self.response_ns - self.sent_ns


@dataclass(frozen=True)
class FillRecord:
    """One solver quote settled by a successful publish (the scoreboard's input, ``sim/scoreboard.py``).

    ``amount_in`` / ``amount_out`` are the request's sides as quoted: the solver ``signer_id``
    receives ``amount_in`` of ``asset_in`` and gives ``amount_out`` of ``asset_out`` (fees aside).
    ``intent_hash`` is the first user intent of the publish, ``users`` every user signer in it,
    ``at_ns`` the relay clock's ``now_ns()`` when the chain accepted the batch.
    """

    quote_hash: str
    quote_id: str
    partner_id: str
    signer_id: str
    intent_hash: str
    users: tuple[str, ...]
    asset_in: str
    asset_out: str
    amount_in: int
    amount_out: int
    at_ns: int
    tx_hash: str


@dataclass
class _LatencyRecord:
    quote_id: str
    connection_id: int
    partner_id: str
    sent_ns: int
    response_ns: int | None = None
    accepted: bool | None = None


@dataclass(frozen=True)
class _Subscription:
    id: str
    kind: Literal["quote", "quote_status"]
    tokens_in: frozenset[str] | None
    tokens_out: frozenset[str] | None
    guaranteed: bool

    def matches(self, asset_in: str, asset_out: str) -> bool:
        if self.tokens_in is not None and asset_in not in self.tokens_in:
            return False
        return not (self.tokens_out is not None and asset_out not in self.tokens_out)


class _Connection:
    """One solver socket: its identity, subscriptions and a bounded outbox drained by one writer task."""

    def __init__(self, conn_id: int, ws: web.WebSocketResponse, partner_id: str, instance_id: str | None):
        self.id = conn_id
        self.ws = ws
        self.partner_id = partner_id
        self.instance_id = instance_id
        self.subs: dict[str, _Subscription] = {}
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue(maxsize=_OUTBOX_LIMIT)
        self.closed = False
        self.writer: asyncio.Task[None] | None = None

    @property
    def queue_key(self) -> tuple[str, str] | None:
        return None if self.instance_id is None else (self.partner_id, self.instance_id)

    def send(self, text: str) -> bool:
        """Queue a frame; a connection whose outbox is full is too slow and gets closed."""
        if self.closed:
            return False
        try:
            self.outbox.put_nowait(text)
        except asyncio.QueueFull:
            log.warning("relay: connection %d is not reading; closing it", self.id)
            self.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                self.outbox.put_nowait(None)
            return False
        return True

    async def write_loop(self) -> None:
        try:
            while True:
                text = await self.outbox.get()
                if text is None:
                    break
                await self.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.closed = True
            with contextlib.suppress(Exception):
                await self.ws.close()


@dataclass
class _GuaranteedQueue:
    """``QS_<partner>_<instance_id>``: unacknowledged ``quote_status`` events by seq, in order."""

    partner_id: str
    instance_id: str
    next_seq: int = 1
    pending: OrderedDict[int, dict[str, Any]] = field(default_factory=OrderedDict)

    @property
    def name(self) -> str:
        return f"QS_{self.partner_id}_{self.instance_id}"


@dataclass(frozen=True)
class _Candidate:
    quote_hash: str
    quote_id: str
    partner_id: str
    connection_id: int
    signer_id: str
    nonce: bytes
    signed_data: dict[str, Any]
    asset_in: str
    asset_out: str
    amount_in: int
    amount_out: int
    deadline_ns: int
    arrival: int


@dataclass
class _QuoteRequest:
    quote_id: str
    asset_in: str
    asset_out: str
    exact_in: bool
    fixed_amount: int
    min_deadline_ms: int
    open: bool = True
    candidates: list[_Candidate] = field(default_factory=list)
    expected: set[int] = field(default_factory=set)
    responded: set[int] = field(default_factory=set)
    partner_of: dict[int, str] = field(default_factory=dict)  # connection that got the event -> its partner
    all_answered: asyncio.Event = field(default_factory=asyncio.Event)

    def note_response(self, conn_id: int, partner_id: str | None = None) -> None:
        """A solver answered. A partner may answer on another connection than the one that got the
        event (a market maker with separate ingest and executor sockets): that answers for all of its
        connections."""
        self.responded.add(conn_id)
        if partner_id is not None:
            self.responded.update(c for c, p in self.partner_of.items() if p == partner_id)
        self.check_complete()

    def forget_connection(self, conn_id: int) -> None:
        self.expected.discard(conn_id)
        self.check_complete()

    def check_complete(self) -> None:
        if self.expected <= self.responded:
            self.all_answered.set()


@dataclass
class _IntentStatus:
    intent_hash: str
    status: str
    tx_hash: str | None = None
    details: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"intent_hash": self.intent_hash, "status": self.status}
        if self.tx_hash is not None:
            out["data"] = {"hash": self.tx_hash}
        if self.details is not None:
            out["status_details"] = self.details
        return out


def _partner_of_key(key: str, named: Mapping[str, str]) -> str:
    """The partner id for an API key: its configured name, else a short digest (never the key)."""
    if key in named:
        return named[key]
    return "partner-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _reply(req_id: Any, result: Any) -> str:
    return _json_encoder.encode({"jsonrpc": "2.0", "id": req_id, "result": result}).decode()


def _error(req_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": req_id, "error": err}


def _error_text(req_id: Any, code: int, message: str, data: Any = None) -> str:
    return _json_encoder.encode(_error(req_id, code, message, data)).decode()


def _traceparent() -> str:
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


def _first_param(params: Any, method: str) -> dict[str, Any]:
    """The single object parameter: ``[ {...} ]`` (wire form) or ``{...}`` (tolerated)."""
    if isinstance(params, list):
        if len(params) != 1 or not isinstance(params[0], dict):
            raise RelayRequestError(f"{method} expects params [ {{...}} ] with one object")
        return cast(dict[str, Any], params[0])
    if isinstance(params, dict):
        return cast(dict[str, Any], params)
    raise RelayRequestError(f"{method} expects params [ {{...}} ]")


def _token_list(value: Any, name: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RelayRequestError(f"subscribe filter {name} must be a list of token id strings")
    return frozenset(value)


def _int_ms(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RelayRequestError(f"{name} must be a non-negative integer number of milliseconds")
    return value


def _opt_ms(req: dict[str, Any], name: str, default: int) -> int:
    """An optional millisecond field of a request; absent or null gives ``default``."""
    value = req.get(name)
    return default if value is None else _int_ms(value, name)


def _is_cancel(payload: SignedPayload) -> bool:
    """A cancel payload: its signed message is a JSON object whose ``intents`` is ``[]`` or absent."""
    try:
        obj = payload.message_obj()
    except InputError:
        return False
    intents = obj.get("intents", [])
    return isinstance(intents, list) and not intents


def _signer_nonce(payload: SignedPayload) -> tuple[str, bytes] | None:
    """``(signer_id, nonce)`` of a payload, or ``None`` when its message names no signer."""
    try:
        return payload.signer_id, payload.nonce
    except InputError:
        return None


class SimRelay:
    """The simulated Solver Relay. See the module docstring for the protocol.

    ``api_keys`` is a set of accepted keys, or a mapping key -> partner id (the partner names the
    guaranteed-delivery queues and routes ``quote_status``). Anonymous connections (only with
    ``allow_anonymous``) are each their own partner, or share ``anonymous:<instance_id>``.
    """

    def __init__(
        self,
        clock: Clock,
        chain: SimNear,
        verifier: Verifier,
        *,
        api_keys: Iterable[str] | Mapping[str, str],
        allow_anonymous: bool = False,
        window_ms: int = 3000,
        min_deadline_ms: int = 60000,
        envelope: Envelope = "event",
        relay_account: str = "solver-relay.near",
        accept_legacy_nonces: bool = True,
        early_close: bool = True,
        settlement_delay_ms: int = 0,
        frontend_partner_id: str = "1click",
    ) -> None:
        if envelope not in ("event", "docs"):
            raise InputError(f"envelope must be 'event' or 'docs', got {envelope!r}")
        self._clock = clock
        self._chain = chain
        self._verifier = verifier
        named = dict(api_keys) if isinstance(api_keys, Mapping) else {}
        self._api_keys: dict[str, str] = {k: _partner_of_key(k, named) for k in api_keys}
        self.allow_anonymous = allow_anonymous
        self.window_ms = _int_ms(window_ms, "window_ms")
        self.min_deadline_ms = _int_ms(min_deadline_ms, "min_deadline_ms")
        self.envelope: Envelope = envelope
        self.relay_account = relay_account
        self.accept_legacy_nonces = accept_legacy_nonces
        self.early_close = early_close
        self.settlement_delay_ms = _int_ms(settlement_delay_ms, "settlement_delay_ms")
        self.frontend_partner_id = frontend_partner_id

        self._conns: dict[int, _Connection] = {}
        self._next_conn_id = 1
        self._queues: dict[tuple[str, str], _GuaranteedQueue] = {}
        self._open: dict[str, _QuoteRequest] = {}
        self._closed_quotes: OrderedDict[str, None] = OrderedDict()
        self._candidates: dict[str, _Candidate] = {}
        self._expiries: list[tuple[int, str]] = []  # heap of (deadline_ns, quote_hash) for pruning
        self._arrivals = 0
        self._statuses: OrderedDict[str, _IntentStatus] = OrderedDict()
        self._latency: deque[_LatencyRecord] = deque(maxlen=_LATENCY_KEPT)
        self._latency_index: dict[tuple[str, int], _LatencyRecord] = {}
        self._latency_by_partner: dict[tuple[str, str], _LatencyRecord] = {}
        self._fail_next = 0
        self._fail_message = "relay unavailable"
        # per-partner scoreboard counters (requests_seen, quotes, quotes_rejected, wins, fills) and
        # which signer accounts each partner quoted for; settled quotes in order
        self._partner_counts: dict[str, Counter[str]] = {}
        self._partner_signers: dict[str, set[str]] = {}
        self.fills: deque[FillRecord] = deque(maxlen=_FILLS_KEPT)
        self._counts: Counter[str] = Counter()
        self._rejections: Counter[str] = Counter()
        # nonces cancelled at the relay (publish of empty-intents payloads), never put on chain:
        # (signer_id, nonce) -> the versioned nonce's deadline (ns), None for a legacy nonce (kept)
        self._cancelled: dict[tuple[str, bytes], int | None] = {}
        self._cancel_expiries: list[tuple[int, str, bytes]] = []
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self._ws_handler)
        app.router.add_post("/rpc", self._rpc_handler)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 = any free port); returns ``http://host:port`` (ws at ``/ws``)."""
        if self._runner is not None:
            raise RuntimeError("relay already started")
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_port = runner.addresses[0][1] if runner.addresses else port
        self._base_url = f"http://{host}:{bound_port}"
        return self._base_url

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("relay not started")
        return self._base_url

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/ws"

    @property
    def rpc_url(self) -> str:
        return self.base_url + "/rpc"

    async def stop(self) -> None:
        """Close every socket, end every open window and stop serving."""
        for req in list(self._open.values()):
            req.all_answered.set()
        await self.disconnect_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ faults and introspection

    async def disconnect_all(self) -> int:
        """Close every solver socket (code 1012); guaranteed-delivery queues survive. Returns the count."""
        conns = list(self._conns.values())
        for conn in conns:
            conn.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                conn.outbox.put_nowait(None)
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1012, message=b"relay restart")
            if conn.writer is not None:
                conn.writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await conn.writer
        self._counts["disconnects_forced"] += len(conns)
        return len(conns)

    def fail_next_responses(self, n: int, message: str = "relay unavailable") -> None:
        """Answer the next ``n`` well-formed ``quote_response`` frames with an error carrying ``message``."""
        if n < 0:
            raise InputError("fail_next_responses needs n >= 0")
        self._fail_next = n
        self._fail_message = message

    def set_window_ms(self, window_ms: int) -> None:
        self.window_ms = _int_ms(window_ms, "window_ms")

    def stats(self) -> dict[str, Any]:
        """Counters and gauges (no secrets): connections, subscriptions, quotes, responses, publishes."""
        subs = Counter(s.kind for c in self._conns.values() for s in c.subs.values())
        return {
            "connections_open": len(self._conns),
            "connections_by_partner": dict(Counter(c.partner_id for c in self._conns.values())),
            "subscriptions": {"quote": subs["quote"], "quote_status": subs["quote_status"]},
            "open_quote_requests": len(self._open),
            "live_candidates": len(self._candidates),
            "cancelled_nonces": len(self._cancelled),
            "window_ms": self.window_ms,
            "guaranteed_queues": {
                q.name: {"pending": len(q.pending), "next_seq": q.next_seq} for q in self._queues.values()
            },
            "counts": dict(self._counts),
            "rejections": dict(self._rejections),
        }

    def latency_samples(self) -> list[LatencySample]:
        """Per quote event and solver connection: send time and first response time (monotonic ns)."""
        return [
            LatencySample(r.quote_id, r.connection_id, r.partner_id, r.sent_ns, r.response_ns, r.accepted)
            for r in self._latency
        ]

    def _partner_count(self, partner_id: str, what: str, n: int = 1) -> None:
        self._partner_counts.setdefault(partner_id, Counter())[what] += n

    def partner_stats(self) -> dict[str, dict[str, Any]]:
        """Per partner: ``requests_seen`` (quote events sent, once per request), ``quotes`` (valid
        responses), ``quotes_rejected``, ``wins`` (ranked best), ``fills`` and the ``signers`` quoted for."""
        out: dict[str, dict[str, Any]] = {}
        for partner in sorted(set(self._partner_counts) | set(self._partner_signers)):
            counts = self._partner_counts.get(partner, Counter())
            out[partner] = {
                k: counts[k] for k in ("requests_seen", "quotes", "quotes_rejected", "wins", "fills")
            }
            out[partner]["signers"] = sorted(self._partner_signers.get(partner, ()))
        return out

    def clear_latency_samples(self) -> None:
        self._latency.clear()
        self._latency_index.clear()
        self._latency_by_partner.clear()

    def is_nonce_cancelled(self, signer_id: str, nonce: bytes) -> bool:
        """True when ``(signer_id, nonce)`` was cancelled at the relay and its nonce has not expired."""
        self._prune_cancelled()
        return (signer_id, bytes(nonce)) in self._cancelled

    def _prune_cancelled(self) -> None:
        """Forget cancelled versioned nonces whose deadline has passed (the Verifier refuses them anyway)."""
        now = self._clock.now_ns()
        expiries = self._cancel_expiries
        while expiries and expiries[0][0] < now:
            deadline_ns, signer_id, nonce = heapq.heappop(expiries)
            if self._cancelled.get((signer_id, nonce)) == deadline_ns:
                del self._cancelled[(signer_id, nonce)]

    def _nonce_usable(self, signer_id: str, nonce: bytes) -> bool:
        """Neither cancelled at the relay nor used on the Verifier."""
        return (signer_id, nonce) not in self._cancelled and not self._verifier.is_nonce_used(
            signer_id, nonce
        )

    def intent_status(self, intent_hash: str) -> dict[str, Any]:
        """``get_status`` result for an intent hash."""
        st = self._statuses.get(intent_hash)
        if st is None:
            return {"intent_hash": intent_hash, "status": "NOT_FOUND_OR_NOT_VALID"}
        return st.to_json()

    # ------------------------------------------------------------------ WebSocket side

    def _authenticate_ws(self, request: web.Request) -> str:
        key = _bearer(request.headers.get("Authorization"))
        if key is not None and key in self._api_keys:
            return self._api_keys[key]
        if self.allow_anonymous and key is None:
            instance = request.query.get("instance_id")
            return f"anonymous:{instance}" if instance else f"anonymous:{uuid.uuid4().hex[:12]}"
        self._counts["ws_rejected_auth"] += 1
        raise web.HTTPForbidden(text="a valid solver API key is required (Authorization: Bearer <key>)")

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        partner_id = self._authenticate_ws(request)
        instance_id = request.query.get("instance_id") or None
        ws = web.WebSocketResponse(autoping=True, max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        conn = _Connection(self._next_conn_id, ws, partner_id, instance_id)
        self._next_conn_id += 1
        self._conns[conn.id] = conn
        self._counts["ws_connections"] += 1
        conn.writer = asyncio.create_task(conn.write_loop(), name=f"relay-ws-writer-{conn.id}")
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._handle_frame(conn, cast(str, msg.data))
                elif msg.type == WSMsgType.BINARY:
                    self._counts["malformed_frames"] += 1
                    conn.send(_error_text(None, PARSE_ERROR, "Parse error: binary frames are not supported"))
                elif msg.type == WSMsgType.ERROR:
                    break
                if conn.closed:
                    break
        finally:
            self._drop_connection(conn)
            with contextlib.suppress(asyncio.QueueFull):
                conn.outbox.put_nowait(None)
            if conn.writer is not None and not conn.writer.done():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(conn.writer, 1.0)
        return ws

    def _drop_connection(self, conn: _Connection) -> None:
        conn.closed = True
        if self._conns.pop(conn.id, None) is not None:
            self._counts["ws_disconnects"] += 1
        for req in self._open.values():
            req.forget_connection(conn.id)

    def _handle_frame(self, conn: _Connection, text: str) -> None:
        recv_ns = self._clock.monotonic_ns()
        self._counts["ws_frames_in"] += 1
        try:
            msg = _json_decoder.decode(text)
        except (msgspec.DecodeError, RecursionError) as exc:  # too deep a nesting is malformed too
            self._counts["malformed_frames"] += 1
            conn.send(_error_text(None, PARSE_ERROR, f"Parse error: {exc}"))
            return
        if not isinstance(msg, dict):
            self._counts["malformed_frames"] += 1
            conn.send(_error_text(None, INVALID_REQUEST, "Invalid Request: a JSON-RPC object is expected"))
            return
        req_id = msg.get("id")
        method = msg.get("method")
        if msg.get("jsonrpc") != "2.0" or not isinstance(method, str):
            self._counts["malformed_frames"] += 1
            conn.send(
                _error_text(req_id, INVALID_REQUEST, 'Invalid Request: needs "jsonrpc":"2.0" and a method')
            )
            return
        if req_id is None or isinstance(req_id, bool) or not isinstance(req_id, int | str):
            self._counts["malformed_frames"] += 1
            conn.send(_error_text(None, INVALID_REQUEST, "Invalid Request: id must be a string or a number"))
            return
        params = msg.get("params", [])
        try:
            if method == "subscribe":
                result: Any = self._ws_subscribe(conn, params)
            elif method == "unsubscribe":
                result = self._ws_unsubscribe(conn, params)
            elif method == "acknowledge":
                result = self._ws_acknowledge(conn, params)
            elif method == "quote_response":
                result = self._ws_quote_response(conn, params, recv_ns)
            else:
                raise RelayRequestError(f"Method not found: {method[:64]}", METHOD_NOT_FOUND)
        except RelayRequestError as exc:
            conn.send(_error_text(req_id, exc.code, str(exc)))
            return
        conn.send(_reply(req_id, result))
        # Redelivery of a guaranteed queue happens after the subscribe reply, so the client
        # knows the subscription id before its first event.
        if method == "subscribe" and isinstance(result, str):
            sub = conn.subs.get(result)
            if sub is not None and sub.guaranteed:
                self._redeliver(conn, sub)

    def _ws_subscribe(self, conn: _Connection, params: Any) -> str:
        if not isinstance(params, list) or not 1 <= len(params) <= 3:
            raise RelayRequestError("subscribe expects 1 to 3 positional params")
        kind = params[0]
        if kind not in ("quote", "quote_status"):
            raise RelayRequestError("subscribe: first param must be 'quote' or 'quote_status'")
        flt = params[1] if len(params) >= 2 else None
        if flt is not None and not isinstance(flt, dict):
            raise RelayRequestError("subscribe: second param must be a filter object or null")
        tokens_in = tokens_out = None
        if flt is not None:
            unknown = set(flt) - {"tokens_in", "tokens_out"}
            if unknown:
                raise RelayRequestError(f"subscribe filter has unknown fields {sorted(unknown)}")
            tokens_in = _token_list(flt.get("tokens_in"), "tokens_in")
            tokens_out = _token_list(flt.get("tokens_out"), "tokens_out")
        guaranteed = params[2] if len(params) == 3 else False
        if not isinstance(guaranteed, bool):
            raise RelayRequestError("subscribe: third param (guaranteed delivery) must be a boolean")
        if guaranteed:
            if kind != "quote_status":
                raise RelayRequestError("guaranteed delivery is only available for quote_status")
            key = conn.queue_key
            if key is None:
                raise RelayRequestError("guaranteed delivery needs ?instance_id=<id> on the connection")
            self._queues.setdefault(key, _GuaranteedQueue(*key))
        sub = _Subscription(str(uuid.uuid4()), kind, tokens_in, tokens_out, guaranteed)
        conn.subs[sub.id] = sub
        self._counts[f"subscribe_{kind}"] += 1
        return sub.id

    def _ws_unsubscribe(self, conn: _Connection, params: Any) -> str:
        if not isinstance(params, list) or len(params) != 1 or not isinstance(params[0], str):
            raise RelayRequestError("unsubscribe expects [subscription_id]")
        if conn.subs.pop(params[0], None) is None:
            raise RelayRequestError(f"unknown subscription {params[0][:64]!r}")
        self._counts["unsubscribe"] += 1
        return "OK"

    def _ws_acknowledge(self, conn: _Connection, params: Any) -> str:
        if (
            not isinstance(params, list)
            or len(params) != 2
            or not isinstance(params[0], str)
            or isinstance(params[1], bool)
            or not isinstance(params[1], int)
        ):
            raise RelayRequestError("acknowledge expects [subscription_id, seq]")
        sub = conn.subs.get(params[0])
        if sub is None:
            raise RelayRequestError(f"unknown subscription {params[0][:64]!r}")
        key = conn.queue_key
        if not sub.guaranteed or key is None:
            raise RelayRequestError("acknowledge applies only to a guaranteed quote_status subscription")
        queue = self._queues[key]
        if queue.pending.pop(params[1], None) is not None:
            self._counts["acknowledged"] += 1
        return "OK"

    # ------------------------------------------------------------------ quote responses

    def _ws_quote_response(self, conn: _Connection, params: Any, recv_ns: int) -> str:
        self._counts["quote_responses"] += 1
        body = _first_param(params, "quote_response")
        quote_id = body.get("quote_id")
        if not isinstance(quote_id, str):
            raise RelayRequestError("quote_response needs a string quote_id")
        record = self._latency_index.get((quote_id, conn.id)) or self._latency_by_partner.get(
            (quote_id, conn.partner_id)
        )
        if record is not None and record.response_ns is None:
            record.response_ns = recv_ns
        try:
            if self._fail_next > 0:
                self._fail_next -= 1
                self._counts["faults_injected"] += 1
                raise RelayRequestError(self._fail_message, QUOTE_REJECTED)
            candidate = self._validate_quote(conn, quote_id, body)
        except RelayRequestError as exc:
            self._counts["quote_responses_rejected"] += 1
            self._rejections[str(exc).split(":", 1)[0]] += 1
            if record is not None and record.accepted is None:
                record.accepted = False
            self._partner_count(conn.partner_id, "quotes_rejected")
            req = self._open.get(quote_id)
            if req is not None:
                # a refused answer counts for its own socket only: the partner may still retry (e.g. a
                # fresh nonce after "invalid salt") on another socket before the window closes
                req.note_response(conn.id)
            raise
        req = self._open[quote_id]
        req.candidates.append(candidate)
        self._candidates[candidate.quote_hash] = candidate
        heapq.heappush(self._expiries, (candidate.deadline_ns, candidate.quote_hash))
        if record is not None and record.accepted is None:
            record.accepted = True
        self._counts["quote_responses_accepted"] += 1
        self._partner_count(conn.partner_id, "quotes")
        self._partner_signers.setdefault(conn.partner_id, set()).add(candidate.signer_id)
        req.note_response(conn.id, conn.partner_id)
        return "OK"

    def _validate_quote(self, conn: _Connection, quote_id: str, body: dict[str, Any]) -> _Candidate:
        """Every check of a ``quote_response``; ``RelayRequestError`` (code -32000) names the reason."""

        def reject(reason: str) -> RelayRequestError:
            return RelayRequestError(reason, QUOTE_REJECTED)

        req = self._open.get(quote_id)
        if req is None:
            if quote_id in self._closed_quotes:
                raise reject(f"quote window closed: quote_id {quote_id} no longer accepts responses")
            raise reject(f"unknown quote_id {quote_id[:64]}")
        output = body.get("quote_output")
        if not isinstance(output, dict):
            raise reject("invalid quote_output: an object with amount_out or amount_in is required")
        amount_in, amount_out = self._quoted_amounts(req, output)

        signed_data = body.get("signed_data")
        try:
            payload = parse_multipayload(signed_data)
        except InputError as exc:
            raise reject(f"invalid signed_data: {exc}") from None
        signed = cast(dict[str, Any], signed_data)
        other = body.get("other_quote_hashes")
        if other is not None and (not isinstance(other, list) or not all(isinstance(h, str) for h in other)):
            raise reject("invalid other_quote_hashes: a list of base58 strings is expected")
        try:
            self._verifier.check_signed(signed)
        except VerifierError as exc:
            raise reject(f"verifier check failed: {exc.reason}") from None
        except InputError as exc:
            raise reject(f"invalid signed_data: {exc}") from None
        key = _signer_nonce(payload)
        if key is not None and self.is_nonce_cancelled(*key):
            raise reject(f"{ERR_NONCE_USED}: the nonce was cancelled at the relay")
        return self._check_intent(
            conn, req=req, payload=payload, signed=signed, amount_in=amount_in, amount_out=amount_out
        )

    def _quoted_amounts(self, req: _QuoteRequest, output: dict[str, Any]) -> tuple[int, int]:
        def amount(name: str) -> int | None:
            value = output.get(name)
            if value is None:
                return None
            try:
                return parse_u128(value, name=f"quote_output.{name}")
            except InputError as exc:
                raise RelayRequestError(f"invalid quote_output: {exc}", QUOTE_REJECTED) from None

        quoted_in, quoted_out = amount("amount_in"), amount("amount_out")
        if req.exact_in:
            if quoted_out is None:
                raise RelayRequestError(
                    "invalid quote_output: amount_out is required for an exact_amount_in request",
                    QUOTE_REJECTED,
                )
            if quoted_in is not None and quoted_in != req.fixed_amount:
                raise RelayRequestError(
                    f"fixed amount mismatch: quote_output.amount_in {quoted_in} != exact_amount_in "
                    f"{req.fixed_amount}",
                    QUOTE_REJECTED,
                )
            return req.fixed_amount, quoted_out
        if quoted_in is None:
            raise RelayRequestError(
                "invalid quote_output: amount_in is required for an exact_amount_out request", QUOTE_REJECTED
            )
        if quoted_out is not None and quoted_out != req.fixed_amount:
            raise RelayRequestError(
                f"fixed amount mismatch: quote_output.amount_out {quoted_out} != exact_amount_out "
                f"{req.fixed_amount}",
                QUOTE_REJECTED,
            )
        return quoted_in, req.fixed_amount

    def _check_intent(
        self,
        conn: _Connection,
        *,
        req: _QuoteRequest,
        payload: SignedPayload,
        signed: dict[str, Any],
        amount_in: int,
        amount_out: int,
    ) -> _Candidate:
        def reject(reason: str) -> RelayRequestError:
            return RelayRequestError(reason, QUOTE_REJECTED)

        try:
            nonce = decode_nonce(payload.nonce)
            signer_id = payload.signer_id
            deadline_ns = payload.deadline_ns
            intents = payload.intents
        except InputError as exc:
            raise reject(f"invalid signed_data: {exc}") from None
        if isinstance(nonce, LegacyNonce) and not self.accept_legacy_nonces:
            raise reject("legacy nonce not accepted: use a versioned nonce with the current salt")
        needed_ns = self._clock.now_ns() + req.min_deadline_ms * _NS_PER_MS
        if deadline_ns < needed_ns:
            remaining_ms = (deadline_ns - self._clock.now_ns()) // _NS_PER_MS
            raise reject(
                f"deadline too short: quote valid for {remaining_ms} ms, request needs at least "
                f"{req.min_deadline_ms} ms"
            )
        if len(intents) != 1 or intents[0].get("intent") != "token_diff":
            raise reject(f"invalid intents: exactly one token_diff intent is required, got {len(intents)}")
        diff_obj = intents[0].get("diff")
        if not isinstance(diff_obj, dict):
            raise reject("invalid token_diff: diff must be an object")
        diff_raw = cast(dict[str, Any], diff_obj)
        if set(diff_raw) != {req.asset_in, req.asset_out}:
            raise reject(
                f"invalid token_diff: diff must hold exactly {req.asset_in} and {req.asset_out}, "
                f"got {sorted(diff_raw)}"
            )
        try:
            delta_in = parse_i128(diff_raw[req.asset_in], name=f"diff[{req.asset_in}]")
            delta_out = parse_i128(diff_raw[req.asset_out], name=f"diff[{req.asset_out}]")
        except InputError as exc:
            raise reject(f"invalid token_diff: {exc}") from None
        if delta_in <= 0 or delta_out >= 0:
            raise reject(
                "wrong token_diff signs: the solver receives asset_in (positive) "
                "and gives asset_out (negative)"
            )
        if delta_in != amount_in:
            raise reject(
                f"token_diff amount mismatch: {req.asset_in} is {delta_in}, quote amount_in is {amount_in}"
            )
        if -delta_out != amount_out:
            raise reject(
                f"token_diff amount mismatch: {req.asset_out} is {delta_out}, quote amount_out is "
                f"-{amount_out} expected"
            )
        balance = self._verifier.balance_of(signer_id, req.asset_out)
        if balance < amount_out:
            raise reject(
                f"insufficient balance: {signer_id} holds {balance} of {req.asset_out}, "
                f"quote gives {amount_out}"
            )
        quote_hash = payload.hash_b58()
        if quote_hash in self._candidates:
            raise reject(f"duplicate quote: {quote_hash} was already submitted")
        self._arrivals += 1
        return _Candidate(
            quote_hash=quote_hash,
            quote_id=req.quote_id,
            partner_id=conn.partner_id,
            connection_id=conn.id,
            signer_id=signer_id,
            nonce=payload.nonce,
            signed_data=signed,
            asset_in=req.asset_in,
            asset_out=req.asset_out,
            amount_in=amount_in,
            amount_out=amount_out,
            deadline_ns=deadline_ns,
            arrival=self._arrivals,
        )

    # ------------------------------------------------------------------ events

    def _event_frame(
        self, sub_id: str, data: dict[str, Any], *, metadata: dict[str, Any] | None, seq: int | None
    ) -> str:
        if self.envelope == "event":
            params: dict[str, Any] = {"subscription": sub_id, "data": data}
            if metadata is not None:
                params["metadata"] = metadata
            if seq is not None:
                params["seq"] = seq
            frame = {"jsonrpc": "2.0", "method": "event", "params": params}
        else:
            flat: dict[str, Any] = {"subscription": sub_id, **data}
            if metadata is not None:
                flat["metadata"] = metadata
            if seq is not None:
                flat["seq"] = seq
            frame = {"jsonrpc": "2.0", "method": "subscribe", "params": flat}
        return _json_encoder.encode(frame).decode()

    def _broadcast_quote(self, req: _QuoteRequest, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        for conn in list(self._conns.values()):
            sent = False
            for sub in list(conn.subs.values()):
                if sub.kind != "quote" or not sub.matches(req.asset_in, req.asset_out):
                    continue
                if conn.send(self._event_frame(sub.id, data, metadata=metadata, seq=None)):
                    sent = True
                    self._counts["quote_events_sent"] += 1
            if sent:
                req.expected.add(conn.id)
                req.partner_of[conn.id] = conn.partner_id
                if (req.quote_id, conn.partner_id) not in self._latency_by_partner:
                    self._partner_count(conn.partner_id, "requests_seen")
                rec = _LatencyRecord(req.quote_id, conn.id, conn.partner_id, self._clock.monotonic_ns())
                self._latency.append(rec)
                self._latency_index[(req.quote_id, conn.id)] = rec
                self._latency_by_partner.setdefault((req.quote_id, conn.partner_id), rec)

    def _push_status(self, partner_id: str, data: dict[str, Any]) -> None:
        """Send ``quote_status`` to one partner: plain subscriptions now, guaranteed queues until acked.

        Every guaranteed queue of the partner (one per ``instance_id`` ever subscribed) stores the event
        under its next seq, whether or not a connection is attached to it right now.
        """
        seqs: dict[tuple[str, str], int] = {}
        for key, queue in self._queues.items():
            if key[0] != partner_id:
                continue
            seqs[key] = queue.next_seq
            queue.pending[queue.next_seq] = data
            queue.next_seq += 1
            while len(queue.pending) > _QUEUE_KEPT:
                queue.pending.popitem(last=False)
                self._counts["guaranteed_dropped"] += 1
        for conn in list(self._conns.values()):
            if conn.partner_id != partner_id:
                continue
            for sub in list(conn.subs.values()):
                if sub.kind != "quote_status":
                    continue
                seq: int | None = None
                if sub.guaranteed:
                    conn_key = conn.queue_key
                    if conn_key is None or conn_key not in seqs:
                        continue
                    seq = seqs[conn_key]
                if conn.send(self._event_frame(sub.id, data, metadata=None, seq=seq)):
                    self._counts["quote_status_sent"] += 1

    def _redeliver(self, conn: _Connection, sub: _Subscription) -> None:
        key = conn.queue_key
        if key is None:
            return
        for seq, data in list(self._queues[key].pending.items()):
            if conn.send(self._event_frame(sub.id, data, metadata=None, seq=seq)):
                self._counts["quote_status_redelivered"] += 1

    # ------------------------------------------------------------------ frontend: quote

    def _parse_quote_request(self, req: dict[str, Any]) -> tuple[_QuoteRequest, dict[str, Any], float, float]:
        asset_in = req.get("defuse_asset_identifier_in")
        asset_out = req.get("defuse_asset_identifier_out")
        if not isinstance(asset_in, str) or not asset_in or not isinstance(asset_out, str) or not asset_out:
            raise RelayRequestError("quote needs defuse_asset_identifier_in and defuse_asset_identifier_out")
        if asset_in == asset_out:
            raise RelayRequestError("quote assets in and out must differ")
        has_in = req.get("exact_amount_in") is not None
        has_out = req.get("exact_amount_out") is not None
        if has_in == has_out:
            raise RelayRequestError("quote needs exactly one of exact_amount_in / exact_amount_out")
        name = "exact_amount_in" if has_in else "exact_amount_out"
        try:
            fixed = parse_u128(req[name], name=name)
        except InputError as exc:
            raise RelayRequestError(str(exc)) from None
        min_deadline_ms = _opt_ms(req, "min_deadline_ms", self.min_deadline_ms)
        window_ms = _opt_ms(req, "wait_ms", self.window_ms)
        if req.get("max_wait_ms") is not None:
            window_ms = min(window_ms, _opt_ms(req, "max_wait_ms", window_ms))
        min_wait_ms = _opt_ms(req, "min_wait_ms", 0)
        min_wait_ms = min(min_wait_ms, window_ms)
        quote = _QuoteRequest(
            quote_id=str(uuid.uuid4()),
            asset_in=asset_in,
            asset_out=asset_out,
            exact_in=has_in,
            fixed_amount=fixed,
            min_deadline_ms=min_deadline_ms,
        )
        data = {
            "quote_id": quote.quote_id,
            "defuse_asset_identifier_in": asset_in,
            "defuse_asset_identifier_out": asset_out,
            name: str(fixed),
            "min_deadline_ms": min_deadline_ms,
        }
        return quote, data, window_ms / 1000, min_wait_ms / 1000

    async def request_quote(
        self, req: dict[str, Any], *, partner_id: str | None = None
    ) -> list[dict[str, Any]] | None:
        """RPC ``quote``: broadcast, collect valid responses for the window, return them best first.

        ``None`` when no valid quote arrived. The window ends early once every solver the event went
        to has answered (and ``min_wait_ms`` has passed), unless ``early_close`` is off.
        Raises ``RelayRequestError`` on a malformed request.
        """
        quote, data, window_s, min_wait_s = self._parse_quote_request(req)
        self._counts["quote_requests"] += 1
        self._prune_candidates()
        metadata = {"partner_id": partner_id or self.frontend_partner_id, "traceparent": _traceparent()}
        self._open[quote.quote_id] = quote
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            self._broadcast_quote(quote, data, metadata)
            if quote.expected:
                if self.early_close:
                    quote.check_complete()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(quote.all_answered.wait(), window_s)
                    rest = min_wait_s - (loop.time() - started)
                    if rest > 0:
                        await asyncio.sleep(rest)
                else:
                    await asyncio.sleep(window_s)
        finally:
            quote.open = False
            self._open.pop(quote.quote_id, None)
            self._closed_quotes[quote.quote_id] = None
            while len(self._closed_quotes) > _CLOSED_QUOTES_KEPT:
                self._closed_quotes.popitem(last=False)
            for conn_id in quote.expected | quote.responded:
                self._latency_index.pop((quote.quote_id, conn_id), None)
            for partner in set(quote.partner_of.values()):
                self._latency_by_partner.pop((quote.quote_id, partner), None)
        # a quote whose nonce was cancelled (at the relay or on chain) or used meanwhile is not offered
        self._prune_cancelled()
        live = [c for c in quote.candidates if self._nonce_usable(c.signer_id, c.nonce)]
        if len(live) < len(quote.candidates):
            self._counts["quote_candidates_dropped_nonce"] += len(quote.candidates) - len(live)
        if not live:
            self._counts["quote_requests_unanswered"] += 1
            return None
        if quote.exact_in:
            ranked = sorted(live, key=lambda c: (-c.amount_out, c.arrival))
        else:
            ranked = sorted(live, key=lambda c: (c.amount_in, c.arrival))
        self._partner_count(ranked[0].partner_id, "wins")
        return [
            {
                "quote_hash": c.quote_hash,
                "defuse_asset_identifier_in": c.asset_in,
                "defuse_asset_identifier_out": c.asset_out,
                "amount_in": str(c.amount_in),
                "amount_out": str(c.amount_out),
                "expiration_time": format_deadline(c.deadline_ns),
            }
            for c in ranked
        ]

    def _prune_candidates(self) -> None:
        """Drop the candidates whose deadline has passed (heap: O(log n) per candidate, not O(n) per call)."""
        now = self._clock.now_ns()
        expiries, candidates = self._expiries, self._candidates
        while expiries and expiries[0][0] < now:
            deadline_ns, quote_hash = heapq.heappop(expiries)
            cand = candidates.get(quote_hash)
            if cand is not None and cand.deadline_ns == deadline_ns:
                del candidates[quote_hash]

    # ------------------------------------------------------------------ frontend: publish

    async def publish_intent(self, quote_hashes: list[str], signed_data: dict[str, Any]) -> dict[str, Any]:
        """RPC ``publish_intent``: ``{"status":"OK","intent_hash"}`` or ``{"status":"FAILED","reason",
        "intent_hash"}``. Raises ``RelayRequestError`` when ``signed_data`` is not a signed payload."""
        result = await self.publish_intents(quote_hashes, [signed_data])
        out: dict[str, Any] = {"status": result["status"]}
        if "reason" in result:
            out["reason"] = result["reason"]
        out["intent_hash"] = result["intent_hashes"][0]
        return out

    async def publish_intents(
        self, quote_hashes: list[str], signed_datas: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """RPC ``publish_intents``: the user's intents and the chosen quotes in one ``execute_intents``.

        Result ``{"status":"OK","intent_hashes":[...]}`` or ``{"status":"FAILED","reason",
        "intent_hashes"}``. On success the quotes are consumed and each one's partner gets
        ``quote_status {quote_hash, intent_hash, tx_hash}`` (``intent_hash`` of the first user intent).

        A cancel batch (no quote hashes, every payload with empty intents) is checked but not put on
        chain: see :meth:`_publish_cancels`. Any payload or chosen quote whose nonce was cancelled
        that way fails the publish with ``nonce was already used``.
        """
        if not isinstance(quote_hashes, list) or not all(isinstance(h, str) for h in quote_hashes):
            raise RelayRequestError("quote_hashes must be a list of strings")
        if not isinstance(signed_datas, list) or not signed_datas:
            raise RelayRequestError("at least one signed_data is required")
        payloads: list[SignedPayload] = []
        for signed in signed_datas:
            try:
                payloads.append(parse_multipayload(signed))
            except InputError as exc:
                raise RelayRequestError(f"invalid signed_data: {exc}") from None
        hashes = [p.hash_b58() for p in payloads]
        self._counts["publish_requests"] += 1

        def failed(reason: str) -> dict[str, Any]:
            self._counts["publish_failed"] += 1
            for h in hashes:
                self._set_status(_IntentStatus(h, "NOT_FOUND_OR_NOT_VALID", details="FAILED"))
            return {"status": "FAILED", "reason": reason, "intent_hashes": hashes}

        if any(h in self._statuses and self._statuses[h].status != "NOT_FOUND_OR_NOT_VALID" for h in hashes):
            self._counts["publish_failed"] += 1
            return {"status": "FAILED", "reason": "intent already published", "intent_hashes": hashes}
        if not quote_hashes and all(_is_cancel(p) for p in payloads):
            return self._publish_cancels(payloads, signed_datas, hashes, failed)
        if not quote_hashes:
            return failed("no quote_hashes given")
        if len(set(quote_hashes)) != len(quote_hashes):
            return failed("duplicate quote_hashes")
        quotes: list[_Candidate] = []
        for qh in quote_hashes:
            cand = self._candidates.get(qh)
            if cand is None:
                return failed(f"quote {qh} not found, expired or already used")
            quotes.append(cand)
        self._prune_cancelled()
        keys = [_signer_nonce(p) for p in payloads] + [(c.signer_id, c.nonce) for c in quotes]
        if any(k is not None and k in self._cancelled for k in keys):
            self._counts["publish_refused_cancelled"] += 1
            return failed(ERR_NONCE_USED)
        for h in hashes:
            self._set_status(_IntentStatus(h, "PENDING"))
        if self.settlement_delay_ms:  # the transaction lands in a block this long after the publish
            await asyncio.sleep(self.settlement_delay_ms / 1000)
        batch = [*signed_datas, *(c.signed_data for c in quotes)]
        try:
            record = await self._chain.submit_internal(
                self.relay_account, self._verifier.contract_id, "execute_intents", {"signed": batch}
            )
        except VerifierError as exc:
            return failed(exc.reason)
        tx_hash = record.tx_hash
        for c in quotes:
            self._candidates.pop(c.quote_hash, None)
        for h in hashes:
            self._set_status(_IntentStatus(h, "SETTLED", tx_hash=tx_hash))
        self._counts["publish_ok"] += 1
        settled_ns = self._clock.now_ns()
        users = tuple(p.signer_id for p in payloads)
        for c in quotes:
            self._partner_count(c.partner_id, "fills")
            self.fills.append(
                FillRecord(
                    c.quote_hash, c.quote_id, c.partner_id, c.signer_id, hashes[0], users,
                    c.asset_in, c.asset_out, c.amount_in, c.amount_out, settled_ns, tx_hash,
                )
            )  # fmt: skip
        for c in quotes:
            self._push_status(
                c.partner_id, {"quote_hash": c.quote_hash, "intent_hash": hashes[0], "tx_hash": tx_hash}
            )
        return {"status": "OK", "intent_hashes": hashes}

    def _publish_cancels(
        self,
        payloads: list[SignedPayload],
        signed_datas: list[dict[str, Any]],
        hashes: list[str],
        failed: Callable[[str], dict[str, Any]],
    ) -> dict[str, Any]:
        """Cancel payloads: verify each as the Verifier would (signature, verifying contract, deadline,
        registered key, versioned-nonce rules, nonce not used on chain), and not cancelled here before
        nor twice in the batch; then remember every ``(signer_id, nonce)`` as cancelled. Nothing goes
        on chain. All or nothing, as one ``publish_intents`` answer carries one status: the first
        failing payload's reason fails the batch and no nonce is remembered."""
        self._counts["cancel_requests"] += 1
        self._prune_cancelled()
        accepted: list[tuple[tuple[str, bytes], int | None]] = []
        seen: set[tuple[str, bytes]] = set()
        for payload, signed in zip(payloads, signed_datas, strict=True):
            try:
                self._verifier.check_signed(signed)
                key = (payload.signer_id, payload.nonce)
                nonce = decode_nonce(payload.nonce)
            except VerifierError as exc:
                self._counts["cancel_failed"] += 1
                return failed(exc.reason)
            except InputError as exc:
                self._counts["cancel_failed"] += 1
                return failed(f"invalid signed_data: {exc}")
            if key in seen or key in self._cancelled:
                self._counts["cancel_failed"] += 1
                return failed(ERR_NONCE_USED)
            if isinstance(nonce, LegacyNonce) and not self.accept_legacy_nonces:
                self._counts["cancel_failed"] += 1
                return failed("legacy nonce not accepted: use a versioned nonce with the current salt")
            seen.add(key)
            accepted.append((key, nonce.deadline_ns if isinstance(nonce, VersionedNonce) else None))
        for key, expiry in accepted:
            self._cancelled[key] = expiry
            if expiry is not None:
                heapq.heappush(self._cancel_expiries, (expiry, key[0], key[1]))
        self._counts["cancel_ok"] += 1
        self._counts["nonces_cancelled"] += len(accepted)
        return {"status": "OK", "intent_hashes": hashes}

    def _set_status(self, status: _IntentStatus) -> None:
        self._statuses[status.intent_hash] = status
        self._statuses.move_to_end(status.intent_hash)
        while len(self._statuses) > _STATUSES_KEPT:
            self._statuses.popitem(last=False)

    # ------------------------------------------------------------------ frontend HTTP

    def _authorized_frontend(self, request: web.Request) -> bool:
        key = _bearer(request.headers.get("Authorization")) or request.headers.get("X-API-Key")
        if key:
            return key in self._api_keys
        return self.allow_anonymous

    async def _rpc_handler(self, request: web.Request) -> web.StreamResponse:
        self._counts["rpc_requests"] += 1
        if not self._authorized_frontend(request):
            self._counts["rpc_rejected_auth"] += 1
            return self._json(_error(None, UNAUTHORIZED, "unauthorized: API key required"), status=401)
        raw = await request.read()
        try:
            msg = _json_decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:  # too deep a nesting is malformed too
            return self._json(_error(None, PARSE_ERROR, f"Parse error: {exc}"))
        if not isinstance(msg, dict):
            return self._json(_error(None, INVALID_REQUEST, "Invalid Request: a JSON-RPC object is expected"))
        req_id = msg.get("id")
        if isinstance(req_id, bool) or not isinstance(req_id, int | str | None):
            return self._json(
                _error(None, INVALID_REQUEST, "Invalid Request: id must be a string or a number")
            )
        method = msg.get("method")
        if msg.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return self._json(
                _error(req_id, INVALID_REQUEST, 'Invalid Request: needs "jsonrpc":"2.0" and a method')
            )
        try:
            result = await self._dispatch_frontend(method, msg.get("params", []))
        except RelayRequestError as exc:
            return self._json(_error(req_id, exc.code, str(exc)))
        except InputError as exc:
            return self._json(_error(req_id, INVALID_PARAMS, str(exc)))
        return self._json({"jsonrpc": "2.0", "id": req_id, "result": result})

    async def _dispatch_frontend(self, method: str, params: Any) -> Any:
        if method == "quote":
            return await self.request_quote(_first_param(params, "quote"))
        if method == "publish_intent":
            body = _first_param(params, "publish_intent")
            signed = body.get("signed_data")
            if not isinstance(signed, dict):
                raise RelayRequestError("publish_intent needs signed_data (an object)")
            return await self.publish_intent(cast(list[str], body.get("quote_hashes")), signed)
        if method == "publish_intents":
            body = _first_param(params, "publish_intents")
            signed_list = body.get("signed_datas")
            if not isinstance(signed_list, list) or not all(isinstance(s, dict) for s in signed_list):
                raise RelayRequestError("publish_intents needs signed_datas (a list of objects)")
            return await self.publish_intents(cast(list[str], body.get("quote_hashes")), signed_list)
        if method == "get_status":
            body = _first_param(params, "get_status")
            intent_hash = body.get("intent_hash")
            if not isinstance(intent_hash, str) or not intent_hash:
                raise RelayRequestError("get_status needs an intent_hash string")
            return self.intent_status(intent_hash)
        raise RelayRequestError(f"Method not found: {method[:64]}", METHOD_NOT_FOUND)

    @staticmethod
    def _json(body: dict[str, Any], status: int = 200) -> web.Response:
        return web.Response(body=_json_encoder.encode(body), status=status, content_type="application/json")
