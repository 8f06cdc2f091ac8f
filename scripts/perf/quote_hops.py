"""Per-hop timing of the quote path during an ``intents-mm bench`` run (a development tool).

Wraps the functions each hop passes through with ``time.perf_counter_ns`` stamps keyed by quote id,
runs one bench in this process and prints p50 / p90 / p99 of every hop (microseconds), from the
relay queueing the quote event to the relay reading our ``quote_response``. The wrappers add a few
microseconds per hop; the totals are therefore slightly above the bench's own figures.

    .venv/bin/python scripts/perf/quote_hops.py [--mode memory|nats] [--rate 200] [--duration 20]

The simulated venue runs in this process (``--in-process-venue``), so its stamps can be taken.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from intents_mm import bench
from intents_mm.messages import ExecuteTrade, decode
from intents_mm.services import executor_ledger, strategy_engine, trade_executor
from intents_mm.services import near_intents_ingest as ingest
from intents_mm.sim import relay as sim_relay
from intents_mm.venues import relay as client_relay

STAMPS: dict[str, dict[str, int]] = defaultdict(dict)
HOPS = (
    "relay queued the event",
    "relay wrote the frame",
    "client parsed the frame",
    "ingest handles it",
    "ingest published",
    "strategy decides",
    "command published",
    "executor got the command",
    "executor signs",
    "signed",
    "ledger written",
    "quote_response sent",
    "relay read the response",
)


def stamp(quote_id: object, hop: str) -> None:
    STAMPS[str(quote_id)].setdefault(hop, time.perf_counter_ns())


def wrap_sync(
    cls: Any, name: str, before: Callable[..., None] | None, after: Callable[..., None] | None
) -> None:
    original = getattr(cls, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(*args, **kwargs)
        result = original(*args, **kwargs)
        if after is not None:
            after(result, *args, **kwargs)
        return result

    setattr(cls, name, wrapper)


def wrap_async(
    cls: Any, name: str, before: Callable[..., None] | None, after: Callable[..., None] | None
) -> None:
    original = getattr(cls, name)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(*args, **kwargs)
        result = await original(*args, **kwargs)
        if after is not None:
            after(result, *args, **kwargs)
        return result

    setattr(cls, name, wrapper)


def install() -> None:
    wrap_sync(sim_relay.SimRelay, "_broadcast_quote", lambda s, req, *a: stamp(req.quote_id, HOPS[0]), None)

    original_send_str = web.WebSocketResponse.send_str

    async def send_str(self: web.WebSocketResponse, data: str, compress: int | None = None) -> None:
        await original_send_str(self, data, compress)
        if '"method":"event"' in data and '"quote_id":"' in data:  # a quote event, now on the socket
            start = data.index('"quote_id":"') + 12
            stamp(data[start : data.index('"', start)], HOPS[1])

    web.WebSocketResponse.send_str = send_str  # type: ignore[method-assign,assignment]

    def parsed(event: Any, *args: Any) -> None:
        if isinstance(event, client_relay.QuoteRequestEvent):
            stamp(event.quote_id, HOPS[2])

    wrap_sync(client_relay.SolverRelayClient, "_on_event", None, parsed)
    wrap_async(
        ingest.NearIntentsIngest,
        "_on_quote",
        lambda s, ev: stamp(ev.quote_id, HOPS[3]),
        lambda r, s, ev: stamp(ev.quote_id, HOPS[4]),
    )
    wrap_sync(strategy_engine.StrategyEngine, "_prepare", lambda s, req: stamp(req.quote_id, HOPS[5]), None)

    def published(result: Any, s: Any, subject: str, payload: Any, **kw: Any) -> None:
        if isinstance(payload, ExecuteTrade):
            stamp(payload.quote_id, HOPS[6])

    wrap_async(strategy_engine.StrategyEngine, "publish", None, published)

    def delivered(s: Any, delivery: Any) -> None:
        payload = decode(delivery.data).payload
        if isinstance(payload, ExecuteTrade):
            stamp(payload.quote_id, HOPS[7])

    wrap_async(trade_executor.TradeExecutor, "_on_command", delivered, None)
    wrap_async(
        trade_executor.TradeExecutor,
        "_sign_record_send",
        lambda s, cmd, *a: stamp(cmd.quote_id, HOPS[8]),
        None,
    )

    def quote_of(entry: Any) -> str:
        return str(entry.command_id).removeprefix("cmd:").removesuffix(":salt-retry")

    wrap_sync(
        executor_ledger.SignedLedger,
        "append",
        lambda s, entry: stamp(quote_of(entry), HOPS[9]),
        lambda r, s, entry: stamp(quote_of(entry), HOPS[10]),
    )
    wrap_async(
        client_relay.SolverRelayClient,
        "send_quote_response",
        lambda s, params: stamp(params["quote_id"], HOPS[11]),
        None,
    )
    wrap_sync(
        sim_relay.SimRelay,
        "_ws_quote_response",
        lambda s, conn, params, recv_ns: stamp(params[0]["quote_id"], HOPS[12]),
        None,
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mode", choices=("memory", "nats"), default="memory")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args()
    install()

    async def run(var_dir: Path) -> dict[str, Any]:
        b = bench.Bench(
            mode=args.mode,
            rate=args.rate,
            duration_s=args.duration,
            seed=7,
            var_dir=var_dir,
            cpu_split=False,
            venue_process=False,  # the relay's stamps must be taken in this process
        )
        return await b.run_bench()

    with tempfile.TemporaryDirectory(prefix="quote-hops-") as tmp:
        report = asyncio.run(run(Path(tmp)))
    print(bench.render_report(report))
    complete = [s for s in STAMPS.values() if all(h in s for h in HOPS)]
    if not complete:
        raise SystemExit("no quote went through every stamped hop (the code changed under the wrappers?)")
    print(f"\n{len(complete)} quotes with every stamp; microseconds per hop: p50 p90 p99")
    for a, b in itertools.pairwise(HOPS):
        d = [(s[b] - s[a]) / 1e3 for s in complete]
        print(f"  {a:>26} -> {b:<26} {pct(d, 50):7.0f} {pct(d, 90):7.0f} {pct(d, 99):7.0f}")
    total = [(s[HOPS[-1]] - s[HOPS[0]]) / 1e3 for s in complete]
    print(f"  {'total':>56} {pct(total, 50):7.0f} {pct(total, 90):7.0f} {pct(total, 99):7.0f}")
    # The tail: for the slowest 1 % of quotes, which hop took the longest.
    slowest = sorted(complete, key=lambda s: s[HOPS[-1]] - s[HOPS[0]])[-max(1, len(complete) // 100) :]
    worst: dict[str, int] = defaultdict(int)
    for s in slowest:
        a, b = max(itertools.pairwise(HOPS), key=lambda ab: s[ab[1]] - s[ab[0]])
        worst[f"{a} -> {b}"] += 1
    print(f"\nslowest {len(slowest)} quotes, the hop that took the longest:")
    for hop, count in sorted(worst.items(), key=lambda kv: -kv[1]):
        print(f"  {count:4d}  {hop}")


if __name__ == "__main__":
    main()
