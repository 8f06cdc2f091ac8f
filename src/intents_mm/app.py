"""Composition root: builds the bus, the store and the services, and runs them until a signal.

``intents-mm run <service>`` runs one service (NATS bus, PostgreSQL); ``intents-mm run-all`` runs all
seven in one process (memory bus unless ``NATS_URL`` is set). ``simulate`` uses the same code with the
simulated venue's URLs. This module and ``cli.py`` are the only ones that import everything.

Crash-only: :func:`serve` runs until SIGTERM/SIGINT (exit 0) or until a task of any service it runs
dies (``Service.died``, see ``services/runtime.py``): then it logs which service and task and the
exception, stops every service as on a signal and returns :data:`EXIT_TASK_DIED`, so that compose
and k3s restart the process (which comes up disarmed). Nothing is restarted inside the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from intents_mm.bus import make_bus
from intents_mm.bus.port import Bus
from intents_mm.clock import SYSTEM_CLOCK, Clock
from intents_mm.config import SERVICES, Config
from intents_mm.domain.assets import AssetRegistry
from intents_mm.errors import IntentsMMError
from intents_mm.services.near_intents_ingest import NearIntentsIngest
from intents_mm.services.runtime import ControlServer, Service, ServiceContext, freeze_startup_heap
from intents_mm.services.strategy_engine import StrategyEngine
from intents_mm.storage.store import HistoryStore

log = logging.getLogger("intents_mm.app")

#: exit status of ``run`` / ``run-all`` when a service task died (the supervisor restarts the process)
EXIT_TASK_DIED: Final = 3

SERVICE_CLASSES: dict[str, str] = {
    "near-intents-ingest": "intents_mm.services.near_intents_ingest:NearIntentsIngest",
    "market-reference-ingest": "intents_mm.services.market_reference_ingest:MarketReferenceIngest",
    "inventory-sync": "intents_mm.services.inventory_sync:InventorySync",
    "liquidity-manager": "intents_mm.services.liquidity_manager:LiquidityManager",
    "history-writer": "intents_mm.services.history_writer:HistoryWriter",
    "strategy-engine": "intents_mm.services.strategy_engine:StrategyEngine",
    "trade-executor": "intents_mm.services.trade_executor:TradeExecutor",
}
assert tuple(SERVICE_CLASSES) == SERVICES
START_ORDER: tuple[str, ...] = (
    "history-writer",
    "strategy-engine",
    "trade-executor",
    "inventory-sync",
    "liquidity-manager",
    "market-reference-ingest",
    "near-intents-ingest",
)
assert sorted(START_ORDER) == sorted(SERVICES)


def service_class(name: str) -> type[Service]:
    if name not in SERVICE_CLASSES:
        raise IntentsMMError(f"unknown service {name!r}; known: {', '.join(SERVICES)}")
    module_name, _, attr = SERVICE_CLASSES[name].partition(":")
    cls: type[Service] = getattr(importlib.import_module(module_name), attr)
    return cls


def store_url_for(config: Config, *, require_postgres: bool) -> str:
    from intents_mm.storage.migrate import resolve_store_url

    if require_postgres and not config["POSTGRES_URL"]:
        raise IntentsMMError(
            "POSTGRES_URL is not set (a single service process keeps its history in PostgreSQL)"
        )
    return resolve_store_url(config["POSTGRES_URL"], Path(config["INTENTS_MM_VAR_DIR"]))


def bus_for(config: Config, *, require_nats: bool) -> Bus:
    url = config["NATS_URL"]
    if require_nats and not url:
        raise IntentsMMError("NATS_URL is not set (services in separate processes talk over NATS JetStream)")
    return (
        make_bus(
            url,
            stream=config["NATS_STREAM"],
            subject_prefix=config["NATS_SUBJECT_PREFIX"],
            max_age_s=float(config["NATS_MAX_AGE_S"]),
            max_bytes=config["NATS_MAX_BYTES"],
        )
        if url
        else make_bus(None)
    )


@dataclass
class Running:
    """A started set of services with their control servers."""

    services: list[Service]
    servers: list[ControlServer]
    bus: Bus
    store: HistoryStore
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def service(self, name: str) -> Service:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)

    def url(self, name: str) -> str:
        for server in self.servers:
            if server.service.name == name:
                return server.url
        raise KeyError(name)

    def failures(self) -> list[str]:
        """``<service>: task <name> died: <exception>`` for every service that is down."""
        return [f"{svc.name}: {svc.failure.describe()}" for svc in self.services if svc.failure is not None]

    async def wait_died(self) -> str:
        """Wait until a task of any of the services dies; returns :meth:`failures`, joined."""
        waits = [asyncio.ensure_future(svc.died.wait()) for svc in self.services]
        if not waits:
            await asyncio.Event().wait()
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        return "; ".join(self.failures())


async def start_services(
    names: Sequence[str],
    config: Config,
    *,
    bus: Bus,
    store: HistoryStore,
    clock: Clock = SYSTEM_CLOCK,
    overrides: dict[str, Any] | None = None,
    ports: dict[str, int] | None = None,
) -> Running:
    """Start the named services (bus and store already started) and their control APIs.

    Every control API is bound first (``/healthz`` answers 503 "starting" until its service is
    ready), then the services start one by one, consumers before producers, so that nothing a
    producer publishes at start-up predates the durable consumers that must see it.
    """
    assets = AssetRegistry.default(eure_per_eur=config["EURE_PER_EUR"])
    ctx_overrides = overrides or {}
    answer_on_ingest = config["EXECUTOR_QUOTE_SOCKET"] == "ingest" and "trade-executor" in names
    if answer_on_ingest and "near-intents-ingest" not in names:
        raise IntentsMMError(
            "EXECUTOR_QUOTE_SOCKET=ingest needs near-intents-ingest in the same process (run-all or "
            "simulate); one process per service answers on the executor's own connection (executor)"
        )
    running = Running(services=[], servers=[], bus=bus, store=store)
    try:
        for name in names:
            ctx = ServiceContext(
                config=config, bus=bus, clock=clock, assets=assets, store=store, overrides=ctx_overrides
            )
            svc = service_class(name)(ctx)
            running.services.append(svc)
            if answer_on_ingest and isinstance(svc, NearIntentsIngest):
                # quote_response goes out on the connection that received the request
                ctx_overrides.setdefault("trade_executor_relay", svc.client)
            if isinstance(svc, StrategyEngine):
                # in one process the executor's emergency stop disarms the strategy directly (and via the bus)
                ctx_overrides.setdefault("disarm_strategy", svc.disarm)
            port = (ports or {}).get(name, config.port(name))
            server = ControlServer(svc, config["CONTROL_API_HOST"], port, config["CONTROL_API_TOKEN"])
            await server.start()
            running.servers.append(server)
        for svc in sorted(running.services, key=lambda s: START_ORDER.index(s.name)):
            await svc.start()
            svc.ready = True
            running.tasks.append(svc.spawn(svc.run(), "run"))
    except BaseException:
        await stop_services(running, close_bus=False)
        raise
    return running


async def stop_services(running: Running, *, close_bus: bool = True) -> None:
    for server in reversed(running.servers):
        await server.stop()
    for svc in reversed(running.services):
        svc.ready = False
        await svc.cancel_tasks()
        with contextlib.suppress(Exception):
            await svc.stop()
    if close_bus:
        await running.bus.close()
        await running.store.close()


async def serve(names: Sequence[str], config: Config, *, distributed: bool) -> int:
    """Run services until SIGTERM/SIGINT (returns 0) or until a service task dies (logged, every
    service stopped, returns :data:`EXIT_TASK_DIED`)."""
    from intents_mm.storage.migrate import current_revision, head_revision, migrate

    store_url = store_url_for(config, require_postgres=distributed)
    if distributed:
        if await current_revision(store_url) != head_revision():
            raise IntentsMMError("the history store is not migrated: run `intents-mm migrate` first")
    else:
        await migrate(store_url)
    bus = bus_for(config, require_nats=distributed)
    store = HistoryStore(store_url)
    await bus.start()
    await store.connect()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(start_services(names, config, bus=bus, store=store))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # a signal during start-up: abandon it cleanly
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await bus.close()
        await store.close()
        return 0
    running = starting.result()
    freeze_startup_heap()
    for server in running.servers:
        log.info("%s control API on %s", server.service.name, server.url)
    print(
        f"intents-mm: {', '.join(names)} running; control APIs on "
        + ", ".join(f"{s.service.name}={s.url}" for s in running.servers),
        flush=True,
    )
    died = asyncio.ensure_future(running.wait_died())
    try:
        await asyncio.wait({stopping, died}, return_when=asyncio.FIRST_COMPLETED)
        crashed = died.done()  # a task died before any signal (one failing while stopping is only logged)
        if crashed:
            log.error(
                "%s; stopping every service, then exiting with status %d", died.result(), EXIT_TASK_DIED
            )
    finally:
        stopping.cancel()
        died.cancel()
        await asyncio.wait_for(stop_services(running), timeout=10)
    if crashed:
        print(
            f"intents-mm: {died.result()}; exited with status {EXIT_TASK_DIED}", file=sys.stderr, flush=True
        )
        return EXIT_TASK_DIED
    return 0
