"""A scripted Solver Relay WebSocket server for socket tests of the relay client and the ingest service.

Unlike ``intents_mm.sim.relay.SimRelay`` (the simulated venue, which validates everything it sends),
this server sends exactly what a test tells it to: recorded fixture frames, malformed frames, odd
envelopes. It answers requests through per-method reply templates and records what it received.
:class:`SimVenue` wraps the simulated venue with the signing helpers a settled quote needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from intents_mm.app import Running, start_services, stop_services
from intents_mm.bus.memory import MemoryBus
from intents_mm.bus.port import Bus, Delivery
from intents_mm.clock import SystemClock
from intents_mm.config import load_config
from intents_mm.messages import Envelope, decode
from intents_mm.near.keys import SigningKey
from intents_mm.near.nonce import encode_versioned_nonce
from intents_mm.near.payload import build_intent_message, sign_nep413, token_diff_intent
from intents_mm.services.near_intents_ingest import NearIntentsIngest
from intents_mm.sim.near_rpc import SimNear
from intents_mm.sim.relay import SimRelay
from intents_mm.sim.verifier import Verifier
from intents_mm.storage.store import HistoryStore
from intents_mm.venues.relay import QuoteRequestEvent, SolverRelayClient

FIXTURES = Path(__file__).parent / "fixtures" / "relay"

Reply = Callable[[int, list[Any]], str | None]  # (request id, params) -> frame text, or None = no answer


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text().strip()


def with_id(template: str, request_id: int) -> str:
    """A response template with its ``"{ID}"`` placeholder replaced by ``request_id``."""
    return template.replace('"{ID}"', str(request_id))


def ok_reply(result: Any = "OK") -> Reply:
    return lambda rid, _params: json.dumps({"jsonrpc": "2.0", "id": rid, "result": result})


@dataclass
class Conn:
    ws: web.WebSocketResponse
    headers: dict[str, str]
    query: dict[str, str]
    subs: dict[str, list[Any]] = field(default_factory=dict)  # sub id -> subscribe params


class ScriptedRelay:
    """``/ws`` with Bearer auth (403 otherwise) and scripted replies; ``push()`` sends raw frames."""

    def __init__(self, api_key: str | None = "test-key") -> None:
        self.api_key = api_key
        self.replies: dict[str, Reply] = {}
        self.requests: list[tuple[str, list[Any]]] = []
        self.conns: list[Conn] = []
        self.connection_attempts = 0
        self.refused = 0
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._connected = asyncio.Condition()

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/ws", self._handler)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self.ws_url

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/ws"

    async def stop(self) -> None:
        await self.disconnect_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def live(self) -> list[Conn]:
        return [c for c in self.conns if not c.ws.closed]

    async def wait_subscribed(self, count: int, *, connections: int = 1, timeout: float = 5.0) -> Conn:
        """Wait until connection number ``connections`` (1-based) holds ``count`` subscriptions."""

        def ready() -> bool:
            return len(self.conns) >= connections and len(self.conns[connections - 1].subs) >= count

        async with self._connected:
            await asyncio.wait_for(self._connected.wait_for(ready), timeout)
        return self.conns[connections - 1]

    async def push(self, text: str, conn: Conn | None = None) -> None:
        target = conn or self.live[-1]
        await target.ws.send_str(text)

    async def push_bytes(self, data: bytes) -> None:
        await self.live[-1].ws.send_bytes(data)

    async def disconnect_all(self) -> None:
        for conn in list(self.conns):
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1012, message=b"restart")

    def sub_id(self, kind: str, conn: Conn | None = None) -> str:
        target = conn or self.live[-1]
        return next(s for s, p in target.subs.items() if p[0] == kind)

    async def _notify(self) -> None:
        async with self._connected:
            self._connected.notify_all()

    async def _handler(self, request: web.Request) -> web.StreamResponse:
        self.connection_attempts += 1
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.refused += 1
            raise web.HTTPForbidden(text="bad key")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = Conn(ws, dict(request.headers), dict(request.query))
        self.conns.append(conn)
        await self._notify()
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            method, params, rid = frame["method"], frame.get("params", []), frame["id"]
            self.requests.append((method, params))
            reply = self.replies.get(method)
            if reply is not None:
                text = reply(rid, params)
            elif method == "subscribe":
                sub = str(uuid.uuid4())
                conn.subs[sub] = params
                text = json.dumps({"jsonrpc": "2.0", "id": rid, "result": sub})
            else:
                text = json.dumps({"jsonrpc": "2.0", "id": rid, "result": "OK"})
            if text is not None:
                await ws.send_str(text)
            await self._notify()
        return ws


# ---------------------------------------------------------------------------- the simulated venue


BTC = "nep141:btc.omft.near"
EURE = "nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"
EUR = 10**18
NS_PER_MS = 1_000_000


def sign_diff(
    key: SigningKey, signer_id: str, diff: dict[str, int], *, deadline_ns: int, salt: bytes
) -> dict[str, Any]:
    """A NEP-413 ``token_diff`` signed with the ``intents_mm.near`` primitives."""
    deadline_ns = deadline_ns // NS_PER_MS * NS_PER_MS
    message = build_intent_message(signer_id, deadline_ns, [token_diff_intent(diff)])
    nonce = encode_versioned_nonce(salt, deadline_ns, os.urandom(15))
    return sign_nep413(key, message, nonce, "intents.near").to_json_obj()


def closure(mm_diff: dict[str, int], fee_pips: int) -> dict[str, int]:
    """The user's side of a two-party swap with the Verifier's fee (protocol reference 3.9)."""

    def ceil_div(a: int, b: int) -> int:
        return -(-a // b)

    out = {}
    for token, delta in mm_diff.items():
        if delta > 0:  # we receive delta: the user gives ceil(delta * 1e6 / (1e6 - fee))
            out[token] = -ceil_div(delta * 1_000_000, 1_000_000 - fee_pips)
        else:  # we give -delta: the user receives it minus the fee
            out[token] = -delta - ceil_div(-delta * fee_pips, 1_000_000)
    return out


@dataclass
class SimVenue:
    """SimRelay with its simulated Verifier and chain, serving on loopback."""

    clock: SystemClock
    verifier: Verifier
    chain: SimNear
    relay: SimRelay

    @classmethod
    async def start(cls, keys: dict[str, str], **relay_kw: Any) -> SimVenue:
        clock = SystemClock()
        verifier = Verifier(clock)
        chain = SimNear(clock, verifier)
        relay_kw.setdefault("window_ms", 500)
        relay = SimRelay(clock, chain, verifier, api_keys=keys, **relay_kw)
        await relay.start()
        return cls(clock, verifier, chain, relay)

    async def stop(self) -> None:
        await self.relay.stop()

    def account(self, label: str, balances: dict[str, int]) -> tuple[SigningKey, str]:
        key = SigningKey.from_seed(label.encode().ljust(32, b"\0"))
        account = key.public_key.implicit_account_id()
        for token, amount in balances.items():
            self.verifier.credit(account, token, amount)
        return key, account

    def deadline(self, ms: int = 70_000) -> int:
        return self.clock.now_ns() + ms * NS_PER_MS

    async def answer_and_settle(
        self,
        solver: SolverRelayClient,
        *,
        amount_in: int = 1000,
        amount_out: int = EUR,
        solver_label: str = "solver",
        user_label: str = "user",
    ) -> tuple[str, str]:
        """A user asks (exact in BTC → EURe), ``solver`` answers over its socket, the user publishes.

        Returns ``(quote_hash, intent_hash)``. ``solver`` must hold a ``quote`` subscription and be the
        only consumer of its events.
        """
        s_key, s_acc = self.account(solver_label, {EURE: 100 * EUR})
        u_key, u_acc = self.account(user_label, {BTC: 10**8})
        salt = self.verifier.current_salt()
        asking = asyncio.create_task(
            self.relay.request_quote(
                {
                    "defuse_asset_identifier_in": BTC,
                    "defuse_asset_identifier_out": EURE,
                    "exact_amount_in": str(amount_in),
                    "min_deadline_ms": 60000,
                }
            )
        )
        event = await asyncio.wait_for(solver.next_event(), 5)
        assert isinstance(event, QuoteRequestEvent)
        mm_diff = {BTC: amount_in, EURE: -amount_out}
        signed = sign_diff(s_key, s_acc, mm_diff, deadline_ns=self.deadline(), salt=salt)
        reply = await solver.send_quote_response(
            {
                "quote_id": event.quote_id,
                "quote_output": {"amount_out": str(amount_out)},
                "signed_data": signed,
            }
        )
        assert reply.ok, reply
        quotes = await asking
        assert quotes is not None
        quote_hash = str(quotes[0]["quote_hash"])
        user = sign_diff(
            u_key, u_acc, closure(mm_diff, self.verifier.fee_pips), deadline_ns=self.deadline(), salt=salt
        )
        published = await self.relay.publish_intent([quote_hash], user)
        assert published["status"] == "OK", published
        return quote_hash, str(published["intent_hash"])


# ---------------------------------------------------------------------------- the ingest service


INGEST = "near-intents-ingest"


@dataclass
class Ingest:
    """near-intents-ingest started by the composition root on an ephemeral port, on a memory bus whose
    ``demand.>`` messages are collected in ``published``."""

    running: Running
    bus: Bus
    session: aiohttp.ClientSession
    published: list[Envelope[Any]]

    @classmethod
    async def start(cls, env: dict[str, str], *, bus: Bus | None = None, tmp: Path | None = None) -> Ingest:
        config = load_config(env, dotenv=None)
        the_bus: Bus = bus or MemoryBus()
        await the_bus.start()
        published: list[Envelope[Any]] = []

        async def collect(delivery: Delivery) -> None:
            published.append(decode(delivery.data, subject=delivery.subject))
            await delivery.ack()

        await the_bus.subscribe(["demand.>"], "test-collector", collect)
        store = HistoryStore(f"sqlite+aiosqlite:///{tmp or Path('/nonexistent')}/unused.sqlite3")
        running = await start_services([INGEST], config, bus=the_bus, store=store, ports={INGEST: 0})
        return cls(running, the_bus, aiohttp.ClientSession(), published)

    @property
    def service(self) -> NearIntentsIngest:
        svc = self.running.service(INGEST)
        assert isinstance(svc, NearIntentsIngest)
        return svc

    async def stop(self) -> None:
        await self.session.close()
        await stop_services(self.running, close_bus=False)
        await self.bus.close()

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        async with self.session.get(self.running.url(INGEST) + path) as resp:
            body: dict[str, Any] = await resp.json()
            return resp.status, body

    def payloads(self, subject: str) -> list[Any]:
        return [env.payload for env in self.published if env.subject == subject]

    async def wait_published(self, subject: str, count: int, timeout: float = 5.0) -> list[Any]:
        await wait_until(lambda: len(self.payloads(subject)) >= count, timeout)
        return self.payloads(subject)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` every 10 ms until it holds; TimeoutError after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not reached in time")
        await asyncio.sleep(0.01)
