"""A scripted Solver Relay WebSocket server for socket tests of the relay client and the ingest service.

Unlike ``intents_mm.sim.relay.SimRelay`` (the simulated venue, which validates everything it sends),
this server sends exactly what a test tells it to: recorded fixture frames, malformed frames, odd
envelopes. It answers requests through per-method reply templates and records what it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

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
