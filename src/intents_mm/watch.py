"""``watch``: the live market-maker loop in a terminal, from the history store plus each service's ``/state``.

Shown (runbook "Live watch"): matching quotes (``swap_demand_events``, requests on the active pair),
decisions (``trade_decisions``), emitted commands (``execute_trade_commands``), execution results
(``trade_execution_results``), settlements (``settlements``), current credited BTC and EURe
(inventory-sync ``/state``, else the latest ``intent_inventory_snapshots`` row), strategy and executor
arming (8086/8087 ``/state``), every service up or down (``/healthz``) and the portfolio metrics
(history-writer ``/portfolio-metrics``, else the latest ``portfolio_metrics_snapshots`` row).

Modes: ``--once`` prints the picture (with the last ``--backfill`` events of each stream, default 3)
and exits 0; otherwise the picture, the last ``--backfill`` events (default 0), then new events as
they are stored, change lines (service up/down, arming, inventory, PnL), and a one-line heartbeat
after ``--heartbeat-every`` idle seconds. ``--json`` prints one JSON object per line instead.
A service or store that cannot be reached is shown as down; watch never ends in a traceback.

Used by ``intents-mm watch`` and ``scripts/ops/watch_live_mm.py`` (same code). Module import is
light (stdlib only) so the CLI stays fast; the store, HTTP and message code is imported when run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from intents_mm.domain.amounts import format_units, from_units

if TYPE_CHECKING:
    import aiohttp

    from intents_mm.clock import Clock
    from intents_mm.config import Config
    from intents_mm.domain.assets import AssetRegistry
    from intents_mm.storage.store import HistoryStore

#: (event kind, history table) of the tailed event streams, in display order.
STREAMS: Final = (
    ("quote", "swap_demand_events"),
    ("decision", "trade_decisions"),
    ("command", "execute_trade_commands"),
    ("result", "trade_execution_results"),
)
STRATEGY: Final = "strategy-engine"
EXECUTOR: Final = "trade-executor"
INVENTORY: Final = "inventory-sync"
HISTORY: Final = "history-writer"
PAGE: Final = 500
NS: Final = 1_000_000_000


# --------------------------------------------------------------------------------------- options


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The watch options (shared by ``intents-mm watch`` and ``scripts/ops/watch_live_mm.py``)."""
    p.add_argument("--once", action="store_true", help="print the current picture and exit 0")
    p.add_argument(
        "--backfill",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="show the last N events of each stream first (default: 3 with --once, else 0)",
    )
    p.add_argument(
        "--heartbeat-every",
        type=_non_negative_float,
        default=10.0,
        metavar="S",
        help="print a one-line heartbeat after S idle seconds (default 10; 0 = never)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line (for scripts)")
    p.add_argument(
        "--store-url",
        default=None,
        help="history store URL (default: POSTGRES_URL, else the embedded SQLite under INTENTS_MM_VAR_DIR)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="host of the services' control APIs (ports from config, default 8081-8087)",
    )
    p.add_argument(
        "--service-url",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="base URL of one service's control API, e.g. strategy-engine=http://10.0.0.5:8086 (repeatable)",
    )
    p.add_argument(
        "--poll-interval", type=_positive_float, default=1.0, metavar="S", help="seconds between polls"
    )
    p.add_argument(
        "--duration",
        type=_non_negative_float,
        default=0.0,
        metavar="S",
        help="stop tailing after S seconds (default 0 = until Ctrl-C)",
    )


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number >= 0")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


@dataclass(frozen=True)
class WatchOptions:
    once: bool = False
    backfill: int = 0
    heartbeat_every_s: float = 10.0
    json: bool = False
    store_url: str | None = None  # SQLAlchemy URL; None = no store
    store_missing: str | None = None  # why there is no store URL (e.g. no embedded file yet)
    service_urls: dict[str, str] = field(default_factory=dict)
    poll_interval_s: float = 1.0
    duration_s: float = 0.0
    http_timeout_s: float = 2.0


def options_from_args(args: argparse.Namespace, config: Config) -> WatchOptions:
    """Resolve the store URL and the service URLs from the arguments and the configuration."""
    from intents_mm.config import SERVICES
    from intents_mm.errors import InputError
    from intents_mm.storage.migrate import resolve_store_url

    urls = {name: f"http://{args.host}:{config.port(name)}" for name in SERVICES}
    for item in args.service_url:
        name, sep, url = item.partition("=")
        if not sep or name not in SERVICES or not url.startswith(("http://", "https://")):
            raise InputError(
                f"--service-url wants NAME=http://host:port with NAME one of {', '.join(SERVICES)}"
            )
        urls[name] = url.rstrip("/")
    store_url: str | None
    missing = None
    raw = args.store_url or config["POSTGRES_URL"]
    if raw:
        store_url = resolve_store_url(raw, Path(config["INTENTS_MM_VAR_DIR"]))
    else:
        path = Path(config["INTENTS_MM_VAR_DIR"]) / "history.sqlite3"
        if path.is_file():
            store_url = f"sqlite+aiosqlite:///{path.resolve()}"
        else:
            store_url = None
            missing = f"no embedded history store at {path} (set POSTGRES_URL or --store-url)"
    once = bool(args.once)
    return WatchOptions(
        once=once,
        backfill=args.backfill if args.backfill is not None else (3 if once else 0),
        heartbeat_every_s=args.heartbeat_every,
        json=bool(args.json),
        store_url=store_url,
        store_missing=missing,
        service_urls=urls,
        poll_interval_s=args.poll_interval,
        duration_s=args.duration,
    )


def _load_config() -> Config:
    from intents_mm.config import load_config
    from intents_mm.errors import ConfigError

    try:
        return load_config(strict_unknown=False)
    except ConfigError as exc:
        print(f"watch: configuration has problems, using defaults: {exc}", file=sys.stderr)
        env = {k: v for k, v in os.environ.items() if k in ("POSTGRES_URL", "INTENTS_MM_VAR_DIR")}
        try:
            return load_config(env, dotenv=None)
        except ConfigError:
            return load_config({}, dotenv=None)


def cmd_watch(args: argparse.Namespace) -> int:
    """``intents-mm watch``: run until done (``--once``, ``--duration``) or Ctrl-C; exit 0."""
    opts = options_from_args(args, _load_config())
    try:
        return asyncio.run(Watcher(opts).run())
    except KeyboardInterrupt:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scripts/ops/watch_live_mm.py``."""
    from intents_mm.errors import IntentsMMError

    parser = argparse.ArgumentParser(
        prog="watch_live_mm.py", description="Tail the live market-maker loop (same as `intents-mm watch`)."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_watch(args)
    except IntentsMMError as exc:
        print(f"watch: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


# --------------------------------------------------------------------------------------- formatting


def clock_text(ts_ns: int) -> str:
    """``HH:MM:SS.mmm`` UTC."""
    return datetime.fromtimestamp(ts_ns / NS, tz=UTC).strftime("%H:%M:%S.%f")[:-3]


def dec_text(value: Decimal | str | None, places: int = 4) -> str:
    """A decimal rounded to ``places`` with trailing zeros trimmed; ``-`` for None."""
    if value is None:
        return "-"
    d = Decimal(value)
    with localcontext() as ctx:
        ctx.prec = 80  # exact for any u128 amount (the default 28 digits round above 10^10 EURe)
        text = format(d.quantize(Decimal(1).scaleb(-places)) if d.is_finite() else d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


class Formatter:
    """Turns stored events and /state answers into lines (text) or objects (JSON)."""

    def __init__(self, assets: AssetRegistry) -> None:
        self.assets = assets
        self.pair = assets.active_pair

    def symbol(self, token_id: str) -> str:
        try:
            return self.assets.get(token_id).symbol
        except Exception:
            return token_id

    def amount(self, token_id: str, units: int | None) -> str:
        if units is None:
            return "?"
        try:
            asset = self.assets.get(token_id)
        except Exception:
            return f"{units} {token_id}"
        return f"{format_units(asset, units)} {asset.symbol}"

    def matches_pair(self, asset_in: str, asset_out: str) -> bool:
        return self.pair.has(asset_in) and self.pair.has(asset_out) and asset_in != asset_out

    def event_text(self, kind: str, payload: Any) -> str:
        from intents_mm import messages as m

        p = payload
        if kind == "quote" and isinstance(p, m.SwapRequest):
            if p.exact_amount_in is not None:
                what = (
                    f"{self.amount(p.asset_in, p.exact_amount_in)} -> {self.symbol(p.asset_out)} (exact in)"
                )
            else:
                what = (
                    f"{self.symbol(p.asset_in)} -> {self.amount(p.asset_out, p.exact_amount_out)} (exact out)"
                )
            partner = f" partner={p.partner_id}" if p.partner_id else ""
            return f"{p.quote_id}  {what}  min_deadline={p.min_deadline_ms}ms{partner}"
        if kind == "decision" and isinstance(p, m.TradeDecision):
            amounts = ""
            if p.amount_in is not None and p.amount_out is not None:
                receive = self.amount(p.asset_in, p.amount_in)
                amounts = f"  receive {receive} give {self.amount(p.asset_out, p.amount_out)}"
            mid = f"  mid {dec_text(p.reference_mid, 2)}" if p.reference_mid is not None else ""
            armed = "armed" if p.armed else "disarmed"
            return f"{p.quote_id}  {p.outcome.upper()} ({p.reason}) [{armed}]{amounts}{mid}"
        if kind == "command" and isinstance(p, m.ExecuteTrade):
            return (
                f"{p.quote_id}  cmd={p.command_id}  receive {self.amount(p.asset_in, p.amount_in)} "
                f"give {self.amount(p.asset_out, p.amount_out)}  mid {dec_text(p.reference_mid, 2)}"
            )
        if kind == "result" and isinstance(p, m.TradeResult):
            extra = f" hash={p.quote_hash}" if p.quote_hash else ""
            if p.error:
                extra += f" error={p.error}"
            if p.latency_us is not None:
                extra += f" latency={p.latency_us}us"
            return f"{p.quote_id}  cmd={p.command_id}  {p.outcome.upper()}{extra}"
        if kind == "settlement" and isinstance(p, m.Settlement):
            side = "bought" if p.asset_in == self.pair.base.token_id else "sold"
            base_leg = p.amount_in if side == "bought" else p.amount_out
            quote_leg = p.amount_out if side == "bought" else p.amount_in
            marks = " ".join(
                f"{h}={dec_text(getattr(p, f'markout_{h}_bps'), 2)}" for h in ("1s", "10s", "60s", "300s")
            )
            base = self.amount(self.pair.base.token_id, base_leg)
            quote = self.amount(self.pair.quote.token_id, quote_leg)
            return (
                f"{p.quote_hash}  {side} {base} for {quote}  mid@fill {dec_text(p.reference_mid_at_fill, 2)}"
                f"  tx={p.tx_hash}  markouts(bps) {marks}"
            )
        return str(p)


# --------------------------------------------------------------------------------------- the picture


@dataclass
class ServiceView:
    name: str
    url: str
    up: bool
    healthy: bool | None = None
    detail: str = ""
    state: dict[str, Any] | None = None


@dataclass
class Picture:
    ts_ns: int
    store_url: str | None
    store_ok: bool
    store_detail: str
    services: dict[str, ServiceView]
    inventory: dict[str, Any] | None
    portfolio: dict[str, Any] | None

    def armed(self, name: str) -> bool | None:
        view = self.services.get(name)
        if view is None or view.state is None:
            return None
        value = view.state.get("armed")
        return value if isinstance(value, bool) else None

    def as_json(self) -> dict[str, Any]:
        return {
            "event": "picture",
            "ts_ns": str(self.ts_ns),
            "store": {"url": self.store_url, "ok": self.store_ok, "detail": self.store_detail},
            "services": {
                n: {"url": v.url, "up": v.up, "healthy": v.healthy, "detail": v.detail}
                for n, v in self.services.items()
            },
            "strategy": {"up": self.services[STRATEGY].up, "armed": self.armed(STRATEGY)},
            "executor": {"up": self.services[EXECUTOR].up, "armed": self.armed(EXECUTOR)},
            "inventory": self.inventory,
            "portfolio": self.portfolio,
        }


class Watcher:
    """Polls the store and the control APIs and prints what changed; see the module docstring."""

    def __init__(self, opts: WatchOptions, *, out: TextIO | None = None, clock: Clock | None = None) -> None:
        from intents_mm.clock import SYSTEM_CLOCK
        from intents_mm.domain.assets import AssetRegistry

        self.opts = opts
        self.out = out or sys.stdout
        self.clock = clock or SYSTEM_CLOCK
        self.fmt = Formatter(AssetRegistry.default())
        self.store: HistoryStore | None = None
        self.store_detail = opts.store_missing or ""
        self.cursors: dict[str, int] = {}
        self.settled_seen: set[str] = set()
        self.settled_cursor: int | None = None
        self.cursors_ready = False
        self.http: aiohttp.ClientSession | None = None
        self.last_output_ns = 0
        self._last_changes: dict[str, Any] = {}

    # -- output ---------------------------------------------------------------------------------
    def emit(self, text: str, obj: dict[str, Any]) -> None:
        from intents_mm.services.runtime import to_jsonable

        line = json.dumps(to_jsonable(obj), separators=(",", ":")) if self.opts.json else text
        self.out.write(line + "\n")
        self.out.flush()
        self.last_output_ns = self.clock.monotonic_ns()

    def emit_event(self, ts_ns: int, kind: str, payload: Any, row_id: int | None = None) -> None:
        from intents_mm.services.runtime import to_jsonable

        obj: dict[str, Any] = {"event": kind, "ts_ns": str(ts_ns), "data": to_jsonable(payload)}
        if row_id is not None:
            obj["id"] = row_id
        self.emit(f"{clock_text(ts_ns)} {kind:<10} {self.fmt.event_text(kind, payload)}", obj)

    # -- store ----------------------------------------------------------------------------------
    async def _store(self) -> HistoryStore | None:
        from intents_mm.errors import IntentsMMError
        from intents_mm.storage.store import HistoryStore

        if self.store is not None:
            return self.store
        if self.opts.store_url is None:
            return None
        store = HistoryStore(self.opts.store_url)
        try:
            await store.connect()
        except IntentsMMError as exc:
            self.store_detail = str(exc)
            await store.close()
            return None
        self.store = store
        self.store_detail = ""
        return store

    async def _store_failed(self, exc: Exception) -> None:
        self.store_detail = str(exc)
        if self.store is not None:
            store, self.store = self.store, None
            await store.close()

    def store_label(self) -> str | None:
        if self.opts.store_url is None:
            return None
        from intents_mm.storage.migrate import redact_url

        return redact_url(self.opts.store_url)

    # -- HTTP -----------------------------------------------------------------------------------
    async def _get(self, url: str) -> tuple[int, Any]:
        import aiohttp

        if self.http is None:
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.opts.http_timeout_s))
        async with self.http.get(url) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            return resp.status, body

    async def _service(self, name: str) -> ServiceView:
        import aiohttp

        url = self.opts.service_urls[name]
        try:
            status, health = await self._get(url + "/healthz")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = (
                "connection refused" if isinstance(exc, aiohttp.ClientConnectorError) else type(exc).__name__
            )
            return ServiceView(name, url, up=False, detail=f"down ({reason})")
        view = ServiceView(name, url, up=True, healthy=status == 200)
        if isinstance(health, dict) and health.get("failing"):
            failing = health["failing"]
            view.detail = (
                "; ".join(f"{k}: {v}" for k, v in failing.items()) if isinstance(failing, dict) else ""
            )
        if name in (STRATEGY, EXECUTOR, INVENTORY):
            try:
                _, state = await self._get(url + "/state")
            except (aiohttp.ClientError, TimeoutError, OSError):
                state = None
            view.state = state if isinstance(state, dict) else None
        return view

    async def _portfolio(self, history: ServiceView, store: HistoryStore | None) -> dict[str, Any] | None:
        import aiohttp

        from intents_mm import messages as m
        from intents_mm.errors import StoreError
        from intents_mm.services.history_writer import metrics_view

        if history.up:
            try:
                status, body = await self._get(history.url + "/portfolio-metrics")
                if status == 200 and isinstance(body, dict):
                    return {"source": HISTORY, **body}
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
        if store is not None:
            try:
                rows = await store.recent("portfolio_metrics_snapshots", limit=1)
            except StoreError as exc:
                await self._store_failed(exc)
                return None
            if rows and isinstance(rows[-1].envelope.payload, m.PortfolioMetrics):
                view = metrics_view(rows[-1].envelope.payload, self.fmt.pair, now_ns=self.clock.now_ns())
                return {"source": "portfolio_metrics_snapshots", **view}
        return None

    async def _inventory(self, inv: ServiceView, store: HistoryStore | None) -> dict[str, Any] | None:
        from intents_mm.errors import StoreError

        pair = self.fmt.pair
        credited: dict[str, int] | None = None
        source = ""
        extra: dict[str, Any] = {}
        state = inv.state
        if state is not None and isinstance(state.get("credited"), dict):
            try:
                credited = {str(k): int(v) for k, v in state["credited"].items()}
                source = INVENTORY
                extra = {"stale": state.get("stale"), "age_ms": state.get("age_ms")}
            except (TypeError, ValueError):
                credited = None
        if credited is None and store is not None:
            try:
                snap = await store.latest_inventory()
            except StoreError as exc:
                await self._store_failed(exc)
                snap = None
            if snap is not None:
                credited = dict(snap.credited)
                source = "intent_inventory_snapshots"
                extra = {"stale": snap.stale, "age_ms": (self.clock.now_ns() - snap.read_ts_ns) // 1_000_000}
        if credited is None:
            return None
        out: dict[str, Any] = {"source": source, **extra}
        for asset in pair.assets():
            units = credited.get(asset.token_id, 0)
            out[asset.symbol] = dec_text(from_units(asset, units), asset.decimals)
            out[f"{asset.symbol}_units"] = str(units)
        return out

    async def picture(self) -> Picture:
        from intents_mm.config import SERVICES

        views = await asyncio.gather(*(self._service(name) for name in SERVICES))
        services = {v.name: v for v in views}
        store = await self._store()
        inventory = await self._inventory(services[INVENTORY], store)
        portfolio = await self._portfolio(services[HISTORY], store)
        return Picture(
            ts_ns=self.clock.now_ns(),
            store_url=self.store_label(),
            store_ok=self.store is not None,
            store_detail=self.store_detail,
            services=services,
            inventory=inventory,
            portfolio=portfolio,
        )

    def picture_lines(self, pic: Picture) -> list[str]:
        store = f"{pic.store_url or '-'} ({'ok' if pic.store_ok else 'DOWN: ' + (pic.store_detail or '?')})"
        lines = [f"intents-mm watch  {datetime.fromtimestamp(pic.ts_ns / NS, tz=UTC):%Y-%m-%d %H:%M:%S} UTC"]
        lines.append(f"  store     : {store}")
        parts = []
        for v in pic.services.values():
            if not v.up:
                parts.append(f"{v.name} DOWN")
            elif v.healthy:
                parts.append(f"{v.name} up")
            else:
                parts.append(f"{v.name} UNHEALTHY ({v.detail or 'failing'})")
        lines.append("  services  : " + " | ".join(parts))
        lines.append("  arming    : " + " | ".join(self._arming_text(pic, n) for n in (STRATEGY, EXECUTOR)))
        lines.append("  inventory : " + self._inventory_text(pic.inventory))
        lines.append("  portfolio : " + self._portfolio_text(pic.portfolio))
        return lines

    def _arming_text(self, pic: Picture, name: str) -> str:
        view = pic.services[name]
        if not view.up:
            return f"{name} down"
        armed = pic.armed(name)
        if armed is None:
            return f"{name} arming unknown"
        text = f"{name} {'ARMED' if armed else 'disarmed'}"
        if view.state and name == STRATEGY and armed:
            paused = view.state.get("paused_reason")
            text += f" (paused: {paused})" if paused else " (quoting)"
        return text

    def _inventory_text(self, inv: dict[str, Any] | None) -> str:
        if inv is None:
            return "unknown (inventory-sync down and no snapshot stored)"
        pair = self.fmt.pair
        base, quote = pair.base.symbol, pair.quote.symbol
        text = f"{inv[base]} {base}  {inv[quote]} {quote}  credited"
        age = inv.get("age_ms")
        text += f" ({inv['source']}{f', {age} ms old' if age is not None else ''})"
        if inv.get("stale"):
            text += " STALE"
        return text

    def _portfolio_text(self, pf: dict[str, Any] | None) -> str:
        if pf is None:
            return "unknown (history-writer down and no metrics stored)"
        parts = [f"value {dec_text(pf.get('portfolio_value_eure'), 2)} EURe"]
        if pf.get("trade_pnl_eure") is not None:
            parts.append(f"trade PnL {dec_text(pf.get('trade_pnl_eure'))}")
            parts.append(f"MtM {dec_text(pf.get('mark_to_market_pnl_eure'))}")
            parts.append(f"price move {dec_text(pf.get('price_move_pnl_eure'))}")
            if pf.get("net_deposits"):
                parts.append(f"flow-adj trade PnL {dec_text(pf.get('flow_adjusted_trade_pnl_eure'))}")
        parts.append(f"fills {pf.get('fills', '0')}")
        parts.append(f"volume {dec_text(pf.get('volume_eure'), 2)} EURe")
        parts.append(f"avg edge {dec_text(pf.get('avg_edge_bps'), 2)} bps")
        parts.append(
            f"price {dec_text(pf.get('current_price'), 2)} EUR/BTC"
            + (" STALE" if pf.get("price_stale") else "")
        )
        text = " | ".join(parts)
        if pf.get("source") != HISTORY:
            text += "  (last stored snapshot)"
        if pf.get("reason"):
            text += f"  [{pf['reason']}]"
        return text

    def emit_picture(self, pic: Picture) -> None:
        self.emit("\n".join(self.picture_lines(pic)), pic.as_json())

    # -- events ---------------------------------------------------------------------------------
    async def _backfill(self, store: HistoryStore, n: int) -> list[tuple[int, str, Any, int | None]]:
        """The last ``n`` events of each stream (cursors set to the newest row either way)."""
        events: list[tuple[int, str, Any, int | None]] = []
        for kind, table in STREAMS:
            rows = await store.recent(table, limit=max(n, 1) if kind != "quote" else max(n * 20, 1))
            self.cursors[table] = rows[-1].id if rows else 0
            picked = [r for r in rows if self._wanted(kind, r.envelope.payload)][-n:] if n else []
            events.extend((r.envelope.ts_ns, kind, r.envelope.payload, r.id) for r in picked)
        settled = await store.settlements(limit=max(n, 1), order="newest_first")
        for s in settled:
            self.settled_seen.add(s.quote_hash)
        self.settled_cursor = settled[0].settled_ts_ns if settled else None
        events.extend((s.settled_ts_ns, "settlement", s, None) for s in reversed(settled[:n]))
        self.cursors_ready = True
        events.sort(key=lambda e: e[0])
        return events

    def _wanted(self, kind: str, payload: Any) -> bool:
        from intents_mm import messages as m

        if kind == "quote" and isinstance(payload, m.SwapRequest):
            return self.fmt.matches_pair(payload.asset_in, payload.asset_out)
        return True

    async def _new_events(self, store: HistoryStore) -> list[tuple[int, str, Any, int | None]]:
        events: list[tuple[int, str, Any, int | None]] = []
        for kind, table in STREAMS:
            while True:
                rows = await store.recent(table, limit=PAGE, since_id=self.cursors.get(table, 0))
                if rows:
                    self.cursors[table] = rows[-1].id
                events.extend(
                    (r.envelope.ts_ns, kind, r.envelope.payload, r.id)
                    for r in rows
                    if self._wanted(kind, r.envelope.payload)
                )
                if len(rows) < PAGE:
                    break
        settled = await store.settlements(limit=PAGE, since_ts_ns=self.settled_cursor)
        for s in settled:
            if s.quote_hash not in self.settled_seen:
                self.settled_seen.add(s.quote_hash)
                events.append((s.settled_ts_ns, "settlement", s, None))
        if settled:
            self.settled_cursor = max(self.settled_cursor or 0, settled[-1].settled_ts_ns)
        events.sort(key=lambda e: e[0])
        return events

    async def _poll_events(self, backfill: int | None) -> None:
        from intents_mm.errors import StoreError

        store = await self._store()
        if store is None:
            return
        try:
            if not self.cursors_ready:
                events = await self._backfill(store, backfill or 0)
            else:
                events = await self._new_events(store)
        except StoreError as exc:
            await self._store_failed(exc)
            self._change(
                "store", False, f"store DOWN: {exc}", {"event": "store", "ok": False, "detail": str(exc)}
            )
            return
        self._change("store", True, "store ok", {"event": "store", "ok": True})
        for ts_ns, kind, payload, row_id in events:
            self.emit_event(ts_ns, kind, payload, row_id)

    # -- changes and heartbeat ----------------------------------------------------------------
    def _change(self, key: str, value: Any, text: str, obj: dict[str, Any]) -> None:
        """Print ``text`` when ``value`` differs from the last one seen for ``key`` (not the first)."""
        first = key not in self._last_changes
        previous = self._last_changes.get(key)
        self._last_changes[key] = value
        if not first and previous != value:
            now = self.clock.now_ns()
            self.emit(f"{clock_text(now)} {'change':<10} {text}", {"ts_ns": str(now), **obj})

    def changes(self, pic: Picture) -> None:
        for name, view in pic.services.items():
            self._change(
                f"up:{name}",
                view.up,
                f"{name} {'up' if view.up else 'DOWN'}",
                {"event": "service", "service": name, "up": view.up},
            )
        for name in (STRATEGY, EXECUTOR):
            armed = pic.armed(name)
            self._change(
                f"armed:{name}",
                armed,
                f"{name} {'ARMED' if armed else 'disarmed' if armed is False else 'arming unknown'}",
                {"event": "arming", "service": name, "armed": armed},
            )
        inv = pic.inventory
        if inv is not None:
            key = tuple(inv.get(f"{a.symbol}_units") for a in self.fmt.pair.assets())
            self._change(
                "inventory", key, "inventory " + self._inventory_text(inv), {"event": "inventory", **inv}
            )
        pf = pic.portfolio
        if pf is not None:
            key = (pf.get("fills"), pf.get("trade_pnl_eure"), pf.get("status"))
            self._change(
                "portfolio", key, "portfolio " + self._portfolio_text(pf), {"event": "portfolio", **pf}
            )

    def heartbeat(self, pic: Picture) -> None:
        up = sum(1 for v in pic.services.values() if v.up)
        inv = pic.inventory
        pair = self.fmt.pair
        holdings = (
            f"{inv[pair.base.symbol]} {pair.base.symbol} {inv[pair.quote.symbol]} {pair.quote.symbol}"
            if inv
            else "inventory ?"
        )
        pf = pic.portfolio
        pnl = f"trade PnL {dec_text(pf.get('trade_pnl_eure'))} EURe" if pf else "PnL ?"
        text = (
            f"{clock_text(pic.ts_ns)} {'heartbeat':<10} {up}/{len(pic.services)} services up | "
            f"{self._arming_text(pic, STRATEGY)} | {self._arming_text(pic, EXECUTOR)} | {holdings} | {pnl} | "
            f"store {'ok' if pic.store_ok else 'DOWN'}"
        )
        obj = {
            "event": "heartbeat",
            "ts_ns": str(pic.ts_ns),
            "services_up": up,
            "services": len(pic.services),
            "strategy_armed": pic.armed(STRATEGY),
            "executor_armed": pic.armed(EXECUTOR),
            "inventory": inv,
            "trade_pnl_eure": pf.get("trade_pnl_eure") if pf else None,
            "store_ok": pic.store_ok,
        }
        self.emit(text, obj)

    # -- main loop ------------------------------------------------------------------------------
    async def run(self) -> int:
        try:
            return await self._run()
        finally:
            if self.http is not None:
                await self.http.close()
            if self.store is not None:
                await self.store.close()

    async def _run(self) -> int:
        opts = self.opts
        if opts.once:
            pic = await self.picture()
            await self._poll_events(opts.backfill)
            self.emit_picture(pic)
            return 0
        start = self.clock.monotonic_ns()
        pic = await self.picture()
        self.emit_picture(pic)
        await self._poll_events(opts.backfill)
        self.changes(pic)
        while True:
            if opts.duration_s and self.clock.monotonic_ns() - start >= opts.duration_s * NS:
                return 0
            await asyncio.sleep(opts.poll_interval_s)
            pic = await self.picture()
            await self._poll_events(opts.backfill)
            self.changes(pic)
            idle_ns = self.clock.monotonic_ns() - self.last_output_ns
            if opts.heartbeat_every_s and idle_ns >= opts.heartbeat_every_s * NS:
                self.heartbeat(pic)


__all__ = ["WatchOptions", "Watcher", "add_arguments", "cmd_watch", "main", "options_from_args"]
