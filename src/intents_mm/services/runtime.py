"""Service runtime: the lifecycle and control API every runbook service shares.

A :class:`Service` is a thin shell around domain logic. The runtime gives it:

- a life cycle: ``start()`` (open connections; readiness is reported only after it returns),
  ``run()`` (long-running work, owned by the runtime's task group), ``stop()`` (clean shutdown);
- crash-only tasks: ``run()`` and every task started with :meth:`Service.spawn` are watched. One that
  raises (anything but cancellation) is logged once with its traceback and recorded as the service's
  :attr:`Service.failure`; from then on the ``tasks`` check fails (``/healthz`` 503 naming the task
  and the exception in one line), ``/state`` shows it, :attr:`Service.died` is set, and the composition
  root (``app.serve``, ``simulate``) stops the process with a non-zero exit so that its supervisor
  (compose, k3s) restarts it; a restarted process comes up disarmed. Nothing is restarted in-process;
  a task that returns normally is simply done;
- a control API (aiohttp) on its runbook port, bound to ``CONTROL_API_HOST`` (127.0.0.1 by default):
  ``GET /healthz`` (200 only when every check passes; the body names the failing checks),
  ``GET /state`` (JSON, secrets redacted) and ``GET /metrics`` (Prometheus text), plus the
  service's own routes;
- control-plane security (``docs/operations.md`` "How the control plane is protected"), checked in
  this order, each refusal a one-line JSON error that changes nothing:

  1. browsers and DNS rebinding, every route: the ``Host`` header must name the bound port and a
     loopback name or address (``localhost``, 127.0.0.0/8, ``[::1]``), the bound address, any IP
     literal when bound to a wildcard address, or a name in ``CONTROL_API_ALLOWED_HOSTS``; an
     ``Origin`` header must be exactly the API's own origin as addressed (``http://`` + ``Host``);
     ``Sec-Fetch-Site`` when sent must be ``same-origin`` or ``none`` (``same-site`` is refused too: a
     page on another port of the same host is same-site). Refusal: 403;
  2. mutating routes require ``Authorization: Bearer CONTROL_API_TOKEN`` when a token is configured
     (and a token is mandatory off loopback: config refuses to start without one). Refusal: 401;
  3. a non-empty body must be ``Content-Type: application/json`` (parameters allowed): a browser
     sends a cross-origin "simple" POST as text/plain or a form type, never as JSON. Refusal: 415;
     then the body must be a JSON object (400; 413 above 64 KiB), and the handler sees its strings
     with NUL and lone surrogates escaped (:func:`parse_json_object`);
  4. costly read-only routes (a body-taking route that is not mutating, or ``rate_limited=True``)
     are rate limited per endpoint by a token bucket (``CONTROL_RATE_LIMIT_PER_S``,
     ``CONTROL_RATE_LIMIT_BURST``). Refusal: 429 with ``Retry-After``;
- auditing: every mutating call is audited as ``control.operator_action`` with who, when and what.
  A call refused before its handler runs gets one ``refused`` record. A call that reaches its
  handler gets an ``attempt`` record published BEFORE the handler runs (when that publish fails the
  call is refused with 503 and nothing is done), then an ``ok``/``refused`` record with the outcome.
  Every string in a record (params, actor, detail) is made storable first: NUL and lone surrogates
  become the six-character text escape ``\\u0000`` / ``\\ud800`` (:func:`escape_unstorable`), and
  nesting beyond :data:`AUDIT_MAX_DEPTH` is cut, so no valid JSON body can make the record fail;
- errors: every answer is JSON, including the HTTP server's own (bad request line, unknown method
  characters, too-long URL, oversized or too many headers: :class:`_JsonErrorRequestHandler`).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from intents_mm.bus.dead_letter import with_dead_letters
from intents_mm.bus.port import Delivery, Subscription
from intents_mm.bus.port import Handler as BusHandler
from intents_mm.clock import SYSTEM_CLOCK, Clock
from intents_mm.config import Config, is_loopback, port_var
from intents_mm.domain.assets import AssetRegistry
from intents_mm.errors import InputError, IntentsMMError

if TYPE_CHECKING:
    from intents_mm.bus.port import Bus
    from intents_mm.messages import OperatorResult as OperatorResultT
    from intents_mm.storage.store import HistoryStore

log = logging.getLogger("intents_mm.services")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(IntentsMMError):
    """Raised by a route handler to answer with a JSON error and the given status."""

    def __init__(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})
        self.extra = extra


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    mutating: bool = False
    action: str = ""  # audit name; defaults to the path
    #: per-endpoint token bucket; None = automatic: a body-taking route that is not mutating (a
    #: read-only call that costs an RPC or bridge call on request) is limited, others are not
    rate_limited: bool | None = None


@dataclass
class Check:
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class TaskFailure:
    """The first task of a service that died: its name and the exception, in one line."""

    task: str
    error: str
    ts_ns: int

    def describe(self) -> str:
        return f"task {self.task} died: {self.error}"


def one_line_error(exc: BaseException, limit: int = 300) -> str:
    """``ExceptionClass: message`` on one line (whitespace folded), at most ``limit`` characters."""
    text = " ".join(str(exc).split())
    line = f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass
class ServiceContext:
    """What a service is given: configuration, bus, clock, assets and (optionally) the store."""

    config: Config
    bus: Bus
    clock: Clock = SYSTEM_CLOCK
    assets: AssetRegistry = field(default_factory=AssetRegistry.default)
    store: HistoryStore | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # composition-root hooks (simulation, tests)


#: ``gc.set_threshold`` once the services run (CPython's default is (700, 10, 10)).
GC_THRESHOLDS: Final = (10_000, 20, 20)


def freeze_startup_heap() -> None:
    """Collect once, then exempt every object alive now from future cyclic-GC passes (``gc.freeze``).

    Call it once the services have started (run-all, run, simulate, bench): the modules, clients,
    caches and tables built at start-up live for the whole process, and without this every full
    collection walks all of them again (a 50-90 ms pause of the event loop in a measured bench run).
    Objects created later are collected as usual, with a larger young generation
    (:data:`GC_THRESHOLDS`): a quote allocates a few hundred short-lived objects, and with CPython's
    default of 700 the collector ran several times per quote; with 10 000 it runs ~14 times less often
    and older generations less often still (bench, memory bus, 200/s: the largest stall fell from
    ~15 ms to ~6 ms, p99 unchanged; ``docs/performance.md``).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def to_jsonable(value: Any) -> Any:
    """JSON-safe view: Decimals and big ints as strings, structs and dataclasses as dicts."""
    import dataclasses

    import msgspec

    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        return value if abs(value) < (1 << 53) else str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, msgspec.Struct):
        return to_jsonable(msgspec.structs.asdict(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    return str(value)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(to_jsonable(data), separators=(",", ":")),
        status=status,
        content_type="application/json",
        headers=headers,
    )


#: Characters no store can hold as text: NUL (PostgreSQL text/JSONB) and lone surrogates (UTF-8).
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")

#: Nesting kept in an audit record's params; deeper values are replaced by a marker.
AUDIT_MAX_DEPTH: Final = 16


def escape_unstorable(text: str) -> str:
    """``text`` with NUL and every lone surrogate written as a ``\\uXXXX`` text escape.

    A valid JSON string may hold both (``"\\u0000"``, ``"\\ud800"``); neither can be encoded as UTF-8
    text for PostgreSQL, and a lone surrogate not even for the bus. The escape is visible, so the
    record shows what was sent. (A surrogate *pair* in JSON is one character and is kept as is.)
    """
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def audit_safe(value: Any, depth: int = 0) -> Any:
    """``value`` (a parsed JSON body or part of it) made storable: strings and keys escaped with
    :func:`escape_unstorable`, nesting beyond :data:`AUDIT_MAX_DEPTH` replaced by a marker."""
    if isinstance(value, str):
        return escape_unstorable(value)
    if isinstance(value, Mapping):
        if depth >= AUDIT_MAX_DEPTH:
            return "<nested too deep>"
        return {escape_unstorable(str(k)): audit_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if depth >= AUDIT_MAX_DEPTH:
            return "<nested too deep>"
        return [audit_safe(v, depth + 1) for v in value]
    return value


def _one_line(text: str, limit: int = 200) -> str:
    return escape_unstorable(" ".join(text.split()))[:limit]


class TokenBucket:
    """A token bucket: ``rate`` tokens a second up to ``burst``; :meth:`take` spends one."""

    def __init__(self, rate: float, burst: int, now: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._now = now
        self._tokens = float(burst)
        self._at = now()

    def take(self) -> float:
        """0.0 when a token was spent, else the seconds until one is available (nothing spent)."""
        now = self._now()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


def split_host_port(value: str) -> tuple[str, int | None] | None:
    """``Host``/authority ``value`` as (lower-case host without brackets, port or None); None when it
    is not a host[:port] at all."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_ = value.rpartition(":")
        if not sep:
            host, port_text_ = value, ""
        elif ":" in host:  # an unbracketed IPv6 address is not a valid Host
            return None
        port_text = port_text_ if sep else None
    if not host:
        return None
    if port_text is None:
        return host, None
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > 65535:
        return None
    return host, int(port_text)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class _JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, with its own error answers (bad request line, unknown method
    characters, too-long URL, oversized or too many headers, an error escaping the middlewares) as
    one-line JSON instead of plain text or HTML; a bad request is logged on one line."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("control API: internal error answering %s", request.remote, exc_info=exc)
            error = "internal error"
        else:
            reason = message or (str(exc) if exc is not None else "") or "malformed HTTP request"
            error = f"bad HTTP request: {_one_line(reason)}"
            log.warning("control API: %s (from %s)", error, request.remote)
        if request.writer.output_size > 0:
            raise ConnectionError("response already sent; cannot send the error")
        response = json_response({"error": error}, status=status)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class _ControlRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # same state; only the connection handler class differs
        return server


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_object(raw: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    """A request body as a JSON object, or HttpError 400 naming the problem.

    Whatever the bytes, the outcome is a dict or an HttpError (never another exception): invalid
    UTF-8, nesting too deep for the parser, integers beyond Python's digit limit and the non-JSON
    constants NaN / Infinity are all malformed JSON. Every string in the result (keys included) is
    storable: NUL and lone surrogates, which valid JSON may carry as ``\\u0000`` / ``\\ud800``, come
    out as those six characters of text (:func:`escape_unstorable`), so no handler, message or store
    downstream meets a character it cannot encode.
    """
    if not raw.strip():
        if allow_empty:
            return {}
        raise HttpError(400, "request body must be a JSON object")
    if len(raw) > 64 * 1024:
        raise HttpError(413, "request body too large (max 64 KiB)")
    try:
        doc = json.loads(raw, parse_float=Decimal, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise HttpError(400, f"malformed JSON: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(doc, dict):
        raise HttpError(400, "request body must be a JSON object")
    try:  # (json.loads also lets raw surrogate bytes through: it decodes with "surrogatepass")
        storable: dict[str, Any] = _storable(doc)
    except RecursionError:
        raise HttpError(400, "malformed JSON: nested too deep") from None
    return storable


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return escape_unstorable(value)
    if isinstance(value, dict):
        return {escape_unstorable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


async def read_json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object, or HttpError 400 naming the problem."""
    return parse_json_object(await request.read(), allow_empty=allow_empty)


class Service:
    """Base of the seven runbook services. Subclasses override what they need."""

    name: str = "service"

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.bus = ctx.bus
        self.clock = ctx.clock
        self.metrics = CollectorRegistry(auto_describe=True)
        self.started_ns = ctx.clock.now_ns()
        self.ready = False
        #: the first task that died (crash-only: the service is down from then on); None while all live
        self.failure: TaskFailure | None = None
        #: set when a task dies; the composition root waits on it to stop the process
        self.died = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._m_requests = Counter(
            "control_requests", "Control API requests", ["method", "path", "status"], registry=self.metrics
        )
        self._m_ready = Gauge("service_ready", "1 when the service is ready", registry=self.metrics)
        self.max_deliveries: int = ctx.config["BUS_MAX_DELIVERIES"]
        self.dead_letters = 0
        self.last_dead_letter: dict[str, Any] | None = None
        self._m_task_failures = Counter(
            "service_task_failures", "Service tasks that died (the service is then down)", ["task"],
            registry=self.metrics,
        )  # fmt: skip

    # -- life cycle (override) -------------------------------------------------------------------
    async def start(self) -> None:
        """Open connections; the service is ready when this returns."""

    async def run(self) -> None:
        """Long-running work. Returns when the service has nothing more to do (or is cancelled)."""
        await asyncio.Event().wait()

    async def stop(self) -> None:
        """Release resources. Called once, after ``run`` is cancelled."""

    # -- introspection (override) ----------------------------------------------------------------
    def routes(self) -> list[Route]:
        return []

    def state(self) -> dict[str, Any]:
        return {}

    def checks(self) -> dict[str, Check]:
        return {"bus": Check(self.bus.healthy(), "" if self.bus.healthy() else "bus disconnected")}

    def task_checks(self) -> dict[str, Check]:
        """The runtime's own check, whatever :meth:`checks` a subclass defines: ``tasks`` fails once a
        task died (the detail names the task and the exception)."""
        failure = self.failure
        return {"tasks": Check(True) if failure is None else Check(False, failure.describe())}

    # -- helpers ---------------------------------------------------------------------------------
    async def subscribe(
        self,
        subjects: Sequence[str],
        durable: str,
        handler: BusHandler,
        *,
        ack_wait_s: float = 30.0,
        max_in_flight: int = 256,
    ) -> Subscription:
        """Subscribe under the one message policy (:mod:`intents_mm.bus.dead_letter`): an undecodable
        message, or one whose handler keeps failing, becomes a ``bus.dead_letter`` and is acked."""

        async def on_dead(d: Delivery, reason: str) -> None:
            from intents_mm.messages import DEAD_LETTER, DeadLetter

            letter = DeadLetter.of(durable, d.subject, d.msg_id, d.num_delivered, reason, d.data)
            await self.publish(DEAD_LETTER, letter, msg_id=f"dead:{durable}:{d.msg_id}")
            self.dead_letters += 1
            self.last_dead_letter = {
                "consumer": durable,
                "subject": d.subject,
                "msg_id": d.msg_id,
                "deliveries": d.num_delivered,
                "error": letter.error,
                "ts_ns": self.clock.now_ns(),
            }
            log.warning(
                "%s: dead letter from %s on %s msg_id=%s: %s", self.name, durable, d.subject, d.msg_id, reason
            )

        return await self.bus.subscribe(
            subjects,
            durable,
            with_dead_letters(handler, on_dead, max_deliveries=self.max_deliveries),
            ack_wait_s=ack_wait_s,
            max_in_flight=max_in_flight,
        )

    async def publish(self, subject: str, payload: Any, *, msg_id: str | None = None) -> str:
        from intents_mm.messages import encode, new_envelope

        env = new_envelope(subject, payload, clock=self.clock, msg_id=msg_id)
        await self.bus.publish(subject, encode(env), msg_id=env.msg_id)
        return env.msg_id

    def spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        """Start a background task owned by the service; it is cancelled on stop.

        Crash-only: should the task raise (anything but cancellation), the service is down
        (:meth:`task_died`); the task itself then ends without an exception of its own (it was
        handled there), so nothing else reports it again.
        """

        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.task_died(name, exc)

        task = asyncio.get_running_loop().create_task(guarded(), name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def task_died(self, name: str, exc: BaseException) -> None:
        """Record that task ``name`` died of ``exc``: logged once with the traceback; the first such
        failure is the service's :attr:`failure` (``/healthz`` 503) and sets :attr:`died`."""
        error = one_line_error(exc)
        self._m_task_failures.labels(name).inc()
        first = self.failure is None
        if first:
            self.failure = TaskFailure(task=name, error=error, ts_ns=self.clock.now_ns())
        log.error(
            "%s: task %s died: %s; %s",
            self.name,
            name,
            error,
            "the service is down (the process stops so that it is restarted)"
            if first
            else "the service was already down",
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        self.died.set()

    async def cancel_tasks(self) -> None:
        """Cancel every task and wait for them; one that raises while being cancelled is a failure too
        (:meth:`task_died`, logged), never an exception here."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def base_state(self) -> dict[str, Any]:
        failure = self.failure
        return {
            "service": self.name,
            "ready": self.ready,
            "uptime_s": round((self.clock.now_ns() - self.started_ns) / 1e9, 3),
            "bus": self.bus.describe(),
            "dead_letters": {"count": self.dead_letters, "last": self.last_dead_letter},
            "failure": None
            if failure is None
            else {"task": failure.task, "error": failure.error, "ts_ns": failure.ts_ns},
        }


#: Method labels of ``control_requests``; any other method is counted as ``OTHER``.
_METRIC_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class ControlServer:
    """The aiohttp control API of one service (security and audit rules: the module docstring)."""

    def __init__(self, service: Service, host: str, port: int, token: str | None) -> None:
        if not is_loopback(host) and not token:
            raise IntentsMMError(f"{service.name}: refusing to bind {host} without CONTROL_API_TOKEN")
        self.service = service
        self.host = host
        self.port = port
        self.token = token
        config = service.config
        self._allowed_names: frozenset[str] = frozenset(
            [*(config.get("CONTROL_API_ALLOWED_HOSTS") or ()), *([host.lower()] if _ip(host) is None else [])]
        )
        bound = _ip(host)
        self._bound_ip = bound
        self._bound_wildcard = bound is not None and bound.is_unspecified
        self._rate = float(config.get("CONTROL_RATE_LIMIT_PER_S") or 2)
        self._burst = int(config.get("CONTROL_RATE_LIMIT_BURST") or 5)
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._routes: dict[tuple[str, str], Route] = {}
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[self._errors, self._guard], client_max_size=64 * 1024)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/state", self._state)
        self.app.router.add_get("/metrics", self._metrics)
        for route in service.routes():
            self._routes[(route.method.upper(), route.path)] = route
            self.app.router.add_route(route.method, route.path, self._wrap(route))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._runner = _ControlRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise IntentsMMError(
                f"{self.service.name}: cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                f"is another intents-mm running? set {port_var(self.service.name)} to another port"
            ) from None
        if self.port == 0:  # ephemeral (tests): learn the real port
            sockets = getattr(site._server, "sockets", None) or []
            if sockets:
                self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except HttpError as exc:
            response = json_response({"error": str(exc), **exc.extra}, status=exc.status, headers=exc.headers)
        except InputError as exc:
            response = json_response({"error": str(exc)}, status=400)
        except web.HTTPException as exc:
            response = json_response({"error": exc.reason}, status=exc.status)
        except IntentsMMError as exc:
            response = json_response({"error": str(exc)}, status=502)
        except Exception as exc:  # never a stack trace to the caller
            log.exception("%s: %s %s failed", self.service.name, request.method, request.path)
            response = json_response({"error": f"internal error: {exc.__class__.__name__}"}, status=500)
        method = request.method if request.method in _METRIC_METHODS else "OTHER"
        self.service._m_requests.labels(method, self._metric_path(request), str(response.status)).inc()
        return response

    def _metric_path(self, request: web.Request) -> str:
        """The path label: a known route's path, else ``other`` (a fuzzed path must not add a series)."""
        path = request.path
        known = path in ("/healthz", "/state", "/metrics") or any(p == path for _, p in self._routes)
        return path if known else "other"

    # -- browsers, DNS rebinding -----------------------------------------------------------------
    def _host_allowed(self, host: str) -> bool:
        if host == "localhost" or host in self._allowed_names:
            return True
        address = _ip(host)
        if address is None:
            return False  # a name that is not ours: DNS rebinding
        if is_loopback(host) or self._bound_wildcard:
            return True  # an address literal cannot be rebound
        return address == self._bound_ip

    def _browser_refusal(self, request: web.Request) -> str | None:
        """Why this request must be refused as a browser's cross-origin or rebound request, or None."""
        raw_host = request.headers.get("Host")
        if raw_host is None:
            return "the Host header is missing"
        parsed = split_host_port(raw_host)
        if parsed is None or not self._host_allowed(parsed[0]):
            return f"Host {_one_line(raw_host, 80)!r} is not this control API (loopback or the bound address)"
        if (parsed[1] if parsed[1] is not None else 80) != self.port:
            return f"Host {_one_line(raw_host, 80)!r} does not name this control API's port {self.port}"
        origin = request.headers.get("Origin")
        if origin is not None and origin.strip().lower() != f"http://{raw_host.strip().lower()}":
            return f"cross-origin request from Origin {_one_line(origin, 80)!r} (a web page, not an operator)"
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.strip().lower() not in ("same-origin", "none"):
            return f"cross-site request (Sec-Fetch-Site: {_one_line(site, 40)}) (a web page, not an operator)"
        return None

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        reason = self._browser_refusal(request)
        if reason is not None:
            route = self._routes.get((request.method.upper(), request.path))
            if route is not None and route.mutating:
                await self._audit(request, route, "refused", reason, {})
            raise HttpError(403, f"refused: {reason}")
        return await handler(request)

    def _authorized(self, request: web.Request) -> bool:
        if not self.token:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode("utf-8", "surrogateescape"), self.token.encode()
        )

    def _rate_limit(self, route: Route) -> None:
        takes_body = route.method.upper() not in ("GET", "HEAD", "OPTIONS")
        limited = route.rate_limited if route.rate_limited is not None else takes_body and not route.mutating
        if not limited:
            return
        key = (route.method.upper(), route.path)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst)
        wait = bucket.take()
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise HttpError(
                429,
                f"rate limited: {route.method.upper()} {route.path} takes {self._rate:g}/s "
                f"(burst {self._burst}); retry after {retry} s",
                headers={"Retry-After": str(retry)},
                retry_after_s=retry,
            )

    async def _body(self, request: web.Request, takes_body: bool) -> dict[str, Any]:
        """The request's parameters: {} without a body; HttpError 413/415/400 for a body that is too
        large, not declared as JSON, or not a JSON object."""
        if not takes_body:
            return {}
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise HttpError(413, "request body too large (max 64 KiB)") from None
        if raw.strip() and request.content_type != "application/json":
            raise HttpError(
                415,
                "a request body must be Content-Type: application/json, "
                f"not {_one_line(request.content_type, 60)!r}",
            )
        return parse_json_object(raw, allow_empty=True)

    def _wrap(self, route: Route) -> Handler:
        takes_body = route.method.upper() not in ("GET", "HEAD", "OPTIONS")

        async def handler(request: web.Request) -> web.StreamResponse:
            if not route.mutating:
                await self._body(request, takes_body)  # a body, when given, must be a JSON object
                self._rate_limit(route)
                return await route.handler(request)
            if not self._authorized(request):
                await self._audit(request, route, "refused", "missing or wrong bearer token", {})
                raise HttpError(401, "this control call needs Authorization: Bearer <CONTROL_API_TOKEN>")
            try:
                params = await self._body(request, takes_body)
                self._rate_limit(route)
            except HttpError as exc:  # refused before the handler runs: nothing changed
                body = {} if exc.status == 429 else {"body": "<malformed>"}
                await self._audit(request, route, "refused", str(exc), body)
                raise
            # the record that the action is about to run is written first; without it, nothing runs
            try:
                await self._publish_audit(request, route, "attempt", None, params)
            except Exception as exc:
                log.error(
                    "%s: %s refused: the audit record could not be written (%s)",
                    self.service.name,
                    route.path,
                    _one_line(str(exc) or exc.__class__.__name__),
                )
                raise HttpError(
                    503, "refused: the audit record could not be written; nothing was done", retry=True
                ) from None
            try:
                response = await route.handler(request)
            except (HttpError, IntentsMMError) as exc:
                await self._audit(request, route, "refused", str(exc), params)
                raise
            except Exception as exc:
                await self._audit(
                    request, route, "refused", f"internal error: {exc.__class__.__name__}", params
                )
                raise
            await self._audit(request, route, "ok" if response.status < 400 else "refused", None, params)
            return response

        return handler

    async def _publish_audit(
        self,
        request: web.Request,
        route: Route,
        result: OperatorResultT,
        detail: str | None,
        params: dict[str, Any],
    ) -> None:
        """Publish one ``control.operator_action`` record (every string made storable first)."""
        from intents_mm.messages import OperatorAction

        actor = request.headers.get("X-Operator") or (
            "token" if self.token and result != "refused" else "anonymous"
        )
        action = OperatorAction(
            service=self.service.name,
            action=route.action or route.path.strip("/"),
            params=to_jsonable(audit_safe(params)),
            actor=escape_unstorable(actor[:64]),
            remote=escape_unstorable(request.remote or ""),
            result=result,
            detail=None if detail is None else escape_unstorable(detail),
        )
        await self.service.publish("control.operator_action", action)

    async def _audit(
        self,
        request: web.Request,
        route: Route,
        result: OperatorResultT,
        detail: str | None,
        params: dict[str, Any],
    ) -> None:
        """Publish an outcome record; a failure is logged (the answer is not hidden by it)."""
        try:
            await self._publish_audit(request, route, result, detail, params)
        except Exception:
            log.exception("%s: could not publish the audit record", self.service.name)

    async def _healthz(self, request: web.Request) -> web.Response:
        checks = {"ready": Check(self.service.ready, "" if self.service.ready else "starting")}
        try:
            checks.update(self.service.checks())
        except Exception as exc:
            checks["checks"] = Check(False, f"health check failed: {exc.__class__.__name__}")
        checks.update(self.service.task_checks())  # crash-only: a dead task fails /healthz
        failing = {k: c.detail or "failing" for k, c in checks.items() if not c.ok}
        body = {
            "service": self.service.name,
            "ok": not failing,
            "checks": {k: {"ok": c.ok, "detail": c.detail} for k, c in checks.items()},
            "failing": failing,
        }
        return json_response(body, status=200 if not failing else 503)

    async def _state(self, request: web.Request) -> web.Response:
        state = self.service.base_state()
        state.update(self.service.state())
        return json_response(state)

    async def _metrics(self, request: web.Request) -> web.Response:
        self.service._m_ready.set(1 if self.service.ready else 0)
        return web.Response(
            body=generate_latest(self.service.metrics), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
