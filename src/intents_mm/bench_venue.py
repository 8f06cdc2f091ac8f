"""The venue side of ``intents-mm bench``: the open-loop request driver and the venue's own process.

:class:`VenueDriver` drives quote requests through a :class:`~intents_mm.sim.venue.SimVenue`'s relay
at a constant rate (open loop: each request is scheduled by time, never waiting for answers).

By default the bench runs the venue and the driver in a child process (``python -m
intents_mm.bench_venue``), so the market maker's process holds only the market maker, as in
production where the venue is remote. The protocol between the two, all on loopback:

* the parent writes one JSON line on the child's stdin: ``{"seed": N}``; the child builds the same
  scenario as the bench (:func:`intents_mm.bench.bench_scenario`) and starts the venue on ephemeral
  loopback ports. The child keeps reading stdin and stops when it closes (the parent died);
* the child prints one JSON line on stdout when ready: ``{"env": <SimVenue.env()>, "control_url":
  "http://127.0.0.1:PORT", "admin_url": ..., "pid": N}``;
* ``POST {control_url}/drive`` with ``{"rate": R, "duration_s": S, "accept_share": F,
  "min_notional_eur": "1", "max_notional_eur": "4"}`` drives ``round(R*S)`` requests at R/s, waits
  for the last ones (relay window + grace) and answers ``{"sent", "drive_s", "wall_s",
  "max_lag_ms", "outcomes", "cpu_s"}`` (``cpu_s``: the child's process CPU over the drive);
* ``GET {control_url}/samples?partner=market-maker`` answers ``{"samples": [[sent_ns, response_ns
  | null, accepted | null], ...]}`` from the relay's :meth:`~intents_mm.sim.relay.SimRelay.latency_samples`
  (the relay's monotonic clock: only differences mean anything);
* SIGTERM (or SIGINT) stops the venue and the child exits 0. :class:`VenueProcess` (the parent's
  handle) always stops it: SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from decimal import Decimal, localcontext
from typing import Any, Final

import aiohttp
from aiohttp import web

from intents_mm.domain.amounts import Rounding, to_units
from intents_mm.domain.assets import AssetRegistry
from intents_mm.errors import InputError, IntentsMMError
from intents_mm.sim.relay import RelayRequestError
from intents_mm.sim.venue import SimVenue

DRAIN_GRACE_S: Final = 1.0
REQUEST_MIN_DEADLINE_MS: Final = 30_000
BENCH_PARTNER: Final = "bench"
READY_TIMEOUT_S: Final = 60.0
STOP_GRACE_S: Final = 5.0


class VenueDriver:
    """Open-loop quote requests through ``venue``'s relay (in-process ``request_quote`` hook).

    Requests are 50 % each direction, 70 % exact-in, of ``min_notional``-``max_notional`` EUR at the
    venue's price path; ``accept_share`` of them are accepted by the venue's first user.
    """

    def __init__(
        self,
        venue: SimVenue,
        *,
        seed: int,
        min_notional: Decimal = Decimal(1),
        max_notional: Decimal = Decimal(4),
        stop: asyncio.Event | None = None,
    ) -> None:
        self.venue = venue
        self.min_notional = min_notional
        self.max_notional = max_notional
        self.stop = stop or asyncio.Event()
        self.rng = random.Random(seed)
        self.outcomes: Counter[str] = Counter()
        self.max_lag_s = 0.0

    def request(self, mid_eur: Decimal) -> dict[str, Any]:
        pair = AssetRegistry.default().active_pair
        base, quote = pair.base, pair.quote
        sell_base = self.rng.random() < 0.5
        exact_in = self.rng.random() < 0.7
        notional = self.min_notional + (self.max_notional - self.min_notional) * Decimal(
            f"{self.rng.random():.6f}"
        )
        asset_in, asset_out = (base, quote) if sell_base else (quote, base)
        fixed_asset = asset_in if exact_in else asset_out
        with localcontext() as ctx:
            ctx.prec = 40
            human = notional / mid_eur if fixed_asset == base else notional * pair.quote_per_fiat
        fixed = max(1, to_units(fixed_asset, human, Rounding.FLOOR))
        return {
            "defuse_asset_identifier_in": asset_in.token_id,
            "defuse_asset_identifier_out": asset_out.token_id,
            ("exact_amount_in" if exact_in else "exact_amount_out"): str(fixed),
            "min_deadline_ms": REQUEST_MIN_DEADLINE_MS,
        }

    async def one(self, req: dict[str, Any], accept: bool) -> None:
        venue = self.venue
        try:
            quotes = await venue.relay.request_quote(req, partner_id=BENCH_PARTNER)
        except RelayRequestError:
            self.outcomes["request_refused"] += 1
            return
        if not quotes:
            self.outcomes["no_quote"] += 1
            return
        self.outcomes["quoted"] += 1
        if accept and venue.users:
            user = venue.users[0]
            try:
                result = await venue.relay.publish_intent(
                    [quotes[0]["quote_hash"]], user.sign_acceptance(quotes[0])
                )
            except IntentsMMError:
                self.outcomes["publish_error"] += 1
                return
            self.outcomes["published_ok" if result.get("status") == "OK" else "published_failed"] += 1

    async def drive(self, rate: float, duration_s: float, accept_share: float) -> tuple[int, float]:
        """Send ``round(rate*duration_s)`` requests at ``rate``/s, then wait for the last answers.

        Returns (requests sent, seconds the sending took). Stops sending early when :attr:`stop` is
        set. Requests still open after the relay window + :data:`DRAIN_GRACE_S` are cancelled.
        """
        venue = self.venue
        loop = asyncio.get_running_loop()
        total = max(1, round(rate * duration_s))
        interval = 1.0 / rate
        tasks: set[asyncio.Task[None]] = set()
        wall0 = time.perf_counter()
        start = loop.time() + 0.01
        for i in range(total):
            if self.stop.is_set():
                total = i
                break
            due = start + i * interval
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                self.max_lag_s = max(self.max_lag_s, now - due)
            mid = venue.price_at(venue.clock.now_ns())
            accept = accept_share > 0 and self.rng.random() < accept_share
            task = loop.create_task(self.one(self.request(mid), accept))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        drive_s = time.perf_counter() - wall0
        if tasks:
            await asyncio.wait(set(tasks), timeout=venue.relay.window_ms / 1000 + DRAIN_GRACE_S)
        for task in list(tasks):
            task.cancel()
        return total, drive_s


#: The driver's frames, for the CPU sampler (``driver`` rather than ``market_maker``).
DRIVER_CODE: Final = frozenset(f.__code__ for f in (VenueDriver.drive, VenueDriver.one, VenueDriver.request))


# ------------------------------------------------------------------------------ the child process


def _samples_doc(venue: SimVenue, partner: str) -> dict[str, Any]:
    return {
        "samples": [
            [s.sent_ns, s.response_ns, s.accepted]
            for s in venue.relay.latency_samples()
            if s.partner_id == partner
        ]
    }


async def serve_child(seed: int) -> int:
    """Run the bench venue and its control endpoint until SIGTERM/SIGINT or stdin closes."""
    from intents_mm.bench import bench_scenario

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:  # the parent holds our stdin open; EOF means it is gone
        with contextlib.suppress(Exception):
            while sys.stdin.readline():
                pass
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, name="bench-venue-stdin", daemon=True).start()
    venue = SimVenue(bench_scenario(), seed=seed)
    runner: web.AppRunner | None = None
    busy = asyncio.Lock()

    async def drive(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            rate = float(body["rate"])
            duration_s = float(body["duration_s"])
            accept_share = float(body.get("accept_share", 0.0))
            lo = Decimal(str(body.get("min_notional_eur", "1")))
            hi = Decimal(str(body.get("max_notional_eur", "4")))
            if rate <= 0 or duration_s <= 0 or not 0 <= accept_share <= 1 or not 0 < lo <= hi:
                raise ValueError("out of range")
        except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
            return web.json_response({"error": f"bad drive request: {exc}"}, status=400)
        if busy.locked():
            return web.json_response({"error": "already driving"}, status=409)
        async with busy:
            venue.relay.clear_latency_samples()
            driver = VenueDriver(venue, seed=seed, min_notional=lo, max_notional=hi, stop=stop)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            sent, drive_s = await driver.drive(rate, duration_s, accept_share)
            cpu_s = time.process_time() - cpu0
        return web.json_response(
            {
                "sent": sent,
                "drive_s": drive_s,
                "wall_s": time.perf_counter() - wall0,
                "max_lag_ms": driver.max_lag_s * 1000,
                "outcomes": dict(driver.outcomes),
                "cpu_s": cpu_s,
            }
        )

    async def samples(request: web.Request) -> web.Response:
        return web.json_response(_samples_doc(venue, request.query.get("partner", "market-maker")))

    try:
        await venue.start()
        app = web.Application()
        app.router.add_post("/drive", drive)
        app.router.add_get("/samples", samples)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        ready = {
            "env": venue.env(),
            "control_url": f"http://127.0.0.1:{port}",
            "admin_url": venue.urls["admin"],
            "pid": os.getpid(),
        }
        print(json.dumps(ready), flush=True)
        await stop.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        await venue.stop()
    return 0


def child_main() -> int:
    line = sys.stdin.readline()
    try:
        doc = json.loads(line)
        seed = int(doc["seed"])
    except (ValueError, KeyError, TypeError) as exc:
        print(f"bench venue: expected one JSON line {{'seed': N}} on stdin: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve_child(seed))


# ------------------------------------------------------------------------------ the parent's handle


class VenueProcess:
    """The parent's handle on the child venue process (see the module docstring for the protocol)."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.env: dict[str, str] = {}
        self.control_url = ""
        self.admin_url = ""
        self.pid: int | None = None

    async def start(self, seed: int) -> dict[str, str]:
        """Start the child, send it the seed, wait for its ready line; returns its venue ``env()``."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "intents_mm.bench_venue",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches the parent only; the parent stops the child
        )
        self.pid = self.proc.pid
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"seed": seed}).encode() + b"\n")
        await self.proc.stdin.drain()
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=READY_TIMEOUT_S)
        except TimeoutError:
            raise IntentsMMError(f"the bench venue process was not ready in {READY_TIMEOUT_S:g} s") from None
        if not line:
            code = await self.proc.wait()
            raise IntentsMMError(f"the bench venue process exited with code {code} before it was ready")
        try:
            doc = json.loads(line)
            self.env = {str(k): str(v) for k, v in doc["env"].items()}
            self.control_url = str(doc["control_url"])
            self.admin_url = str(doc["admin_url"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntentsMMError(f"the bench venue process printed a bad ready line: {exc}") from None
        if not self.control_url.startswith("http://127.0.0.1:"):
            raise InputError(f"the bench venue's control URL is not on loopback: {self.control_url}")
        return dict(self.env)

    async def drive(
        self,
        *,
        rate: float,
        duration_s: float,
        accept_share: float,
        min_notional: Decimal,
        max_notional: Decimal,
    ) -> dict[str, Any]:
        body = {
            "rate": rate,
            "duration_s": duration_s,
            "accept_share": accept_share,
            "min_notional_eur": str(min_notional),
            "max_notional_eur": str(max_notional),
        }
        timeout = aiohttp.ClientTimeout(total=duration_s + 120.0)
        return await self._call("POST", "/drive", body, timeout)

    async def samples(self, partner: str = "market-maker") -> list[tuple[int, int | None, bool | None]]:
        doc = await self._call("GET", f"/samples?partner={partner}", None, aiohttp.ClientTimeout(total=60))
        return [(int(s), None if r is None else int(r), a) for s, r, a in doc["samples"]]

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None, limit: aiohttp.ClientTimeout
    ) -> dict[str, Any]:
        try:
            async with (
                aiohttp.ClientSession(timeout=limit) as http,
                http.request(method, self.control_url + path, json=body) as resp,
            ):
                doc: dict[str, Any] = await resp.json()
                if resp.status != 200:
                    raise IntentsMMError(
                        f"bench venue {method} {path}: HTTP {resp.status} {doc.get('error')}"
                    )
                return doc
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise IntentsMMError(f"bench venue {method} {path} failed: {exc or type(exc).__name__}") from None

    async def stop(self) -> int | None:
        """Stop the child: SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`; returns its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        return proc.returncode


if __name__ == "__main__":
    sys.exit(child_main())
