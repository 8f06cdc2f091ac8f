"""Test kit for inventory-sync and liquidity-manager: the simulated venue over loopback sockets.

``sim_venue()`` composes the simulated ``intents.near`` Verifier, the NEAR chain and its JSON-RPC server,
and the PoA bridge (its credit callback credits the Verifier; the chain reports PoA burns to the bridge).
``run_services()`` starts the named services with ``start_services`` on ephemeral ports against it, on a
memory bus and a migrated SQLite store, and collects every published message by subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from intents_mm.app import Running, start_services, stop_services
from intents_mm.bus import Bus, Delivery, make_bus
from intents_mm.clock import SYSTEM_CLOCK, Clock
from intents_mm.config import Config, load_config
from intents_mm.domain.assets import BTC, EURE
from intents_mm.messages import ALL_SUBJECTS, Envelope, Payload, decode
from intents_mm.near.keys import SigningKey
from intents_mm.sim.bridge import SimBridge
from intents_mm.sim.near_rpc import SimNear, SimNearRpcServer
from intents_mm.sim.verifier import Verifier
from intents_mm.storage.migrate import migrate
from intents_mm.storage.store import HistoryStore

BTC_ID, EURE_ID = BTC.token_id, EURE.token_id
EURE_UNIT = 10**18
GNOSIS_ADDRESS = "0x52908400098527886E0F7030069857D2E4169EE7"  # an EIP-55 address (EIP-55 test vector)
BTC_ADDRESS = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"  # BIP-173 test vector


@dataclass
class Venue:
    clock: Clock
    verifier: Verifier
    chain: SimNear
    rpc: SimNearRpcServer
    bridge: SimBridge
    key: SigningKey
    account: str
    rpc_url: str
    bridge_url: str

    def config(self, **extra: str) -> Config:
        env = {
            "NEAR_RPC_URLS": self.rpc_url,
            "NEAR_INTENTS_BRIDGE_RPC_URL": self.bridge_url,
            "NEAR_INTENTS_SIGNER_PRIVATE_KEY": self.key.to_secret_string(),
            "INVENTORY_POLL_MS": "200",
            "LIQUIDITY_POLL_MS": "200",
        }
        env.update(extra)
        return load_config(env, dotenv=None)


@contextlib.asynccontextmanager
async def sim_venue(
    *, btc: int = 2_000_000, eure: int = 100 * EURE_UNIT, **bridge_options: Any
) -> AsyncIterator[Venue]:
    """The simulated venue with an implicit trading account funded with ``btc`` and ``eure`` units;
    ``bridge_options`` go to :class:`SimBridge` (e.g. ``reply_shape``, ``deposit_amount_form``)."""
    clock = SYSTEM_CLOCK
    verifier = Verifier(clock, fee_pips=1)
    bridge = SimBridge(
        clock,
        verifier.credit,
        deposit_pending_s=0.4,
        deposit_credit_s=0.4,
        withdrawal_complete_s=0.4,
        tick_s=0.05,
        **bridge_options,
    )
    chain = SimNear(
        clock,
        verifier,
        block_time_ms=50,
        on_withdraw=bridge.register_withdrawal,
    )
    rpc = SimNearRpcServer(chain, fault_timeout_s=1.0)
    key = SigningKey.generate()
    account = key.public_key.implicit_account_id()
    if btc:
        verifier.credit(account, BTC_ID, btc)
    if eure:
        verifier.credit(account, EURE_ID, eure)
    rpc_url = await rpc.start()
    bridge_url = await bridge.start()
    try:
        yield Venue(clock, verifier, chain, rpc, bridge, key, account, rpc_url, bridge_url)
    finally:
        await bridge.stop()
        await rpc.stop()


@dataclass
class Services:
    running: Running
    bus: Bus
    store: HistoryStore
    session: aiohttp.ClientSession
    received: dict[str, list[Envelope[Payload]]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.running.services]

    def url(self, name: str) -> str:
        return self.running.url(name)

    def payloads(self, subject: str) -> list[Any]:
        return [env.payload for env in self.received.get(subject, [])]

    async def get(self, name: str, path: str) -> tuple[int, Any]:
        async with self.session.get(self.url(name) + path) as resp:
            return resp.status, await resp.json()

    async def post(
        self, name: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else _json_bytes(body))
        headers = {"content-type": "application/json"} if data is not None else {}
        async with self.session.post(self.url(name) + path, data=data, headers=headers) as resp:
            return resp.status, await resp.json()

    async def curl(self, command: str, ports: dict[str, str]) -> tuple[int, Any]:
        """Replay a runbook ``curl`` command (method, headers, body, URL as written) with aiohttp.

        ``ports`` maps the runbook base URL (``http://127.0.0.1:8083``) to the running service's URL.
        """
        args = shlex.split(command.replace("\\\n", " "))
        assert args[0] == "curl", command
        method, headers, data, url = "GET", {}, None, None
        i = 1
        while i < len(args):
            arg = args[i]
            if arg == "-s":
                i += 1
            elif arg == "-X":
                method, i = args[i + 1], i + 2
            elif arg == "-H":
                name, _, value = args[i + 1].partition(":")
                headers[name.strip()] = value.strip()
                i += 2
            elif arg == "-d":
                data, i = args[i + 1].encode(), i + 2
                if method == "GET":
                    method = "POST"
            else:
                assert arg.startswith("http://"), f"unexpected curl argument {arg!r}"
                url, i = arg, i + 1
        assert url is not None
        for base, real in ports.items():
            url = url.replace(base, real)
        async with self.session.request(method, url, data=data, headers=headers) as resp:
            return resp.status, await resp.json()


def _json_bytes(body: Any) -> bytes:
    import json

    return json.dumps(body).encode()


@contextlib.asynccontextmanager
async def run_services(
    names: list[str],
    config: Config,
    store_url: str,
    *,
    bus: Bus | None = None,
    overrides: dict[str, Any] | None = None,
) -> AsyncIterator[Services]:
    """Start ``names`` on ephemeral ports, on a memory bus (or ``bus``) and a migrated ``store_url``."""
    own_bus = bus is None
    if bus is None:
        bus = make_bus(None)
        await bus.start()
    await migrate(store_url)
    store = HistoryStore(store_url)
    await store.connect()
    received: dict[str, list[Envelope[Payload]]] = {}

    async def collect(delivery: Delivery) -> None:
        env = decode(delivery.data)
        received.setdefault(env.subject, []).append(env)
        await delivery.ack()

    sub = await bus.subscribe(list(ALL_SUBJECTS), f"testkit-{id(received)}", collect)
    session = aiohttp.ClientSession()
    running = await start_services(
        names, config, bus=bus, store=store, ports=dict.fromkeys(names, 0), overrides=overrides
    )
    try:
        yield Services(running, bus, store, session, received)
    finally:
        await stop_services(running, close_bus=False)
        await sub.stop()
        await session.close()
        await store.close()
        if own_bus:
            await bus.close()


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout_s: float = 8.0
) -> None:
    """Wait until ``check()`` is true (polling every 50 ms); AssertionError after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.05)
