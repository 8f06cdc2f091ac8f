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
- control-plane security: mutating routes require ``Authorization: Bearer CONTROL_API_TOKEN`` when
  a token is configured (and a token is mandatory off loopback: config refuses to start without
  one); every mutating call is audited as ``control.operator_action`` with who, when and what;
- JSON body parsing that answers malformed bodies with 400 and a JSON error naming the problem.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
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
    from intents_mm.storage.store import HistoryStore

log = logging.getLogger("intents_mm.services")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(IntentsMMError):
    """Raised by a route handler to answer with a JSON error and the given status."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    mutating: bool = False
    action: str = ""  # audit name; defaults to the path


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


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(to_jsonable(data), separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_object(raw: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    """A request body as a JSON object, or HttpError 400 naming the problem.

    Whatever the bytes, the outcome is a dict or an HttpError (never another exception): invalid
    UTF-8, nesting too deep for the parser, integers beyond Python's digit limit and the non-JSON
    constants NaN / Infinity are all malformed JSON.
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
    return doc


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


class ControlServer:
    """The aiohttp control API of one service."""

    def __init__(self, service: Service, host: str, port: int, token: str | None) -> None:
        if not is_loopback(host) and not token:
            raise IntentsMMError(f"{service.name}: refusing to bind {host} without CONTROL_API_TOKEN")
        self.service = service
        self.host = host
        self.port = port
        self.token = token
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/state", self._state)
        self.app.router.add_get("/metrics", self._metrics)
        for route in service.routes():
            self.app.router.add_route(route.method, route.path, self._wrap(route))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
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
            response = json_response({"error": str(exc), **exc.extra}, status=exc.status)
        except InputError as exc:
            response = json_response({"error": str(exc)}, status=400)
        except web.HTTPException as exc:
            response = json_response({"error": exc.reason}, status=exc.status)
        except IntentsMMError as exc:
            response = json_response({"error": str(exc)}, status=502)
        except Exception as exc:  # never a stack trace to the caller
            log.exception("%s: %s %s failed", self.service.name, request.method, request.path)
            response = json_response({"error": f"internal error: {exc.__class__.__name__}"}, status=500)
        self.service._m_requests.labels(request.method, request.path, str(response.status)).inc()
        return response

    def _authorized(self, request: web.Request) -> bool:
        if not self.token:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), self.token)

    def _wrap(self, route: Route) -> Handler:
        takes_body = route.method.upper() not in ("GET", "HEAD", "OPTIONS")

        async def handler(request: web.Request) -> web.StreamResponse:
            if not route.mutating:
                if takes_body:  # a body, when given, must be a JSON object (even where none is needed)
                    parse_json_object(await request.read(), allow_empty=True)
                return await route.handler(request)
            if not self._authorized(request):
                await self._audit(request, route, "refused", "missing or wrong bearer token", {})
                raise HttpError(401, "this control call needs Authorization: Bearer <CONTROL_API_TOKEN>")
            try:
                params = parse_json_object(await request.read(), allow_empty=True) if takes_body else {}
            except HttpError as exc:  # refused before the handler runs: nothing changed
                await self._audit(request, route, "refused", str(exc), {"body": "<malformed>"})
                raise
            try:
                response = await route.handler(request)
            except HttpError as exc:
                await self._audit(request, route, "refused", str(exc), params)
                raise
            except IntentsMMError as exc:
                await self._audit(request, route, "refused", str(exc), params)
                raise
            await self._audit(request, route, "ok" if response.status < 400 else "refused", None, params)
            return response

        return handler

    async def _audit(
        self, request: web.Request, route: Route, result: str, detail: str | None, params: dict[str, Any]
    ) -> None:
        from intents_mm.messages import OperatorAction

        actor = request.headers.get("X-Operator") or (
            "token" if self.token and result == "ok" else "anonymous"
        )
        action = OperatorAction(
            service=self.service.name,
            action=route.action or route.path.strip("/"),
            params=to_jsonable(params),
            actor=actor[:64],
            remote=request.remote or "",
            result="ok" if result == "ok" else "refused",
            detail=detail,
        )
        try:
            await self.service.publish("control.operator_action", action)
        except Exception:  # auditing must not hide the answer; it is logged
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
