"""``intents-mm simulate --distributed``: the production topology (compose / k3s) run here.

The simulated venue runs in this process, as in ``intents-mm simulate``; the seven services run as
SEPARATE processes (``python -m intents_mm run <service>``), each configured only through its
environment: the venue's URLs and play-money account, NATS JetStream (``NATS_URL``, default
``nats://127.0.0.1:4222``; a stream and subject prefix of this run's own, the stream deleted at the
end) and PostgreSQL (``POSTGRES_URL``; when unset a fresh database is created for the run, said so,
and kept for inspection, on the server libpq's ``PGHOST`` / ``PGPORT`` / ``PGUSER`` name, by default
127.0.0.1:5432 as user postgres). The run:

1. starts the venue, creates the run's stream, prepares the database and runs ``intents-mm migrate``;
2. starts the seven processes (logs in ``<INTENTS_MM_VAR_DIR>/distributed/<run>/<service>.log``) and
   waits for every ``/healthz``;
3. warms up (fresh reference, credited inventory, protocol fee, registered key, read from the
   services' ``/state`` over HTTP) and arms strategy-engine and trade-executor through their audited
   ``POST /arm``;
4. runs the user flow for the duration with progress lines, then prints the same summary as
   ``simulate`` (computed from the store, the venue and the services' ``/state`` over HTTP).

Every process it started is stopped, always (also on Ctrl-C and on failure): SIGTERM, then SIGKILL
after a timeout; producers first, history-writer last so that it stores the tail. The children run in
their own process group (a terminal Ctrl-C reaches only this process, which then stops them in order)
and, where ``setpriv`` exists, get SIGTERM should this process die without cleaning up.
A service process that exits on its own (a crash, a ``kill -9``) is restarted, as compose and k3s
restart a container; it starts disarmed, as after any restart. After five restarts of one service the
run ends with an error.

:class:`DistributedSimulation` is also the harness of the distributed end-to-end tests: the phase
methods, :meth:`DistributedSimulation.kill_service` and :meth:`DistributedSimulation.restart_service`
drive fault drills (``docs/fault-drills.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TextIO

import aiohttp

from intents_mm.app import START_ORDER, Running
from intents_mm.bus import make_bus
from intents_mm.config import SERVICES, VAR_BY_NAME, Config, load_config, port_var
from intents_mm.errors import IntentsMMError
from intents_mm.sim.scenario import Scenario
from intents_mm.sim.venue import SimVenue
from intents_mm.simulate import WARMUP_TIMEOUT_S, Simulation, simulation_config
from intents_mm.storage.migrate import redact_url, resolve_store_url
from intents_mm.storage.store import HistoryStore

log = logging.getLogger("intents_mm.distributed")

DEFAULT_NATS_URL: Final = "nats://127.0.0.1:4222"
#: Where a database is created for a run when ``POSTGRES_URL`` is unset (trust auth, user postgres),
#: unless libpq's own ``PGHOST`` / ``PGPORT`` / ``PGUSER`` say otherwise (:func:`database_server`).
DEFAULT_PG_HOST: Final = "127.0.0.1"
DEFAULT_PG_PORT: Final = 5432
DEFAULT_PG_USER: Final = "postgres"
START_TIMEOUT_S: Final = 90.0
STOP_TIMEOUT_S: Final = 10.0
MIGRATE_TIMEOUT_S: Final = 120.0
STATE_POLL_S: Final = 1.0
HTTP_TIMEOUT_S: Final = 5.0
LOG_TAIL_LINES: Final = 15
#: A service process that exits on its own is started again at most this often (then the run fails).
MAX_RESTARTS: Final = 5
RESTART_PAUSE_S: Final = 1.0

# variables the venue or the run supplies; never inherited from the environment or a live .env
_RUN_OWNED: Final = (
    "NEAR_INTENTS_API_KEY",
    "NEAR_INTENTS_ACCOUNT_ID",
    "NEAR_INTENTS_SIGNER_PRIVATE_KEY",
    "NEAR_INTENTS_INSTANCE_ID",
)


class ServiceProcess:
    """One service in its own OS process: ``python -m intents_mm run <name>``, output to a log file."""

    def __init__(
        self, name: str, *, python: str, env: Mapping[str, str], cwd: Path, log_path: Path, url: str
    ):
        self.name = name
        self.url = url
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.argv = [python, "-m", "intents_mm", "run", name, "--log-level", "warning"]
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.expected_exit = False  # set while a stop or a drill's kill is under way

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        """Spawn the process (a second call after it ended restarts it)."""
        if self.running():
            raise IntentsMMError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as logfile:
            logfile.write(f"--- start {self.starts + 1}: {' '.join(self.argv)}\n".encode())
            logfile.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *_with_parent_death_signal(self.argv),
                env=self.env,
                cwd=self.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # a terminal Ctrl-C reaches the parent only; it stops us in order
            )
        self.starts += 1
        self.expected_exit = False

    def send(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def kill(self) -> int | None:
        """SIGKILL now (a drill); returns the exit status."""
        self.expected_exit = True
        if self.proc is None:
            return None
        self.send(signal.SIGKILL)
        return await self.proc.wait()

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL when it has not exited within ``timeout_s``; returns the exit status."""
        self.expected_exit = True
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            self.send(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                log.warning(
                    "%s did not stop within %g s after SIGTERM; sending SIGKILL", self.name, timeout_s
                )
                self.send(signal.SIGKILL)
                await proc.wait()
        return proc.returncode

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of its log (for error messages)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _with_parent_death_signal(argv: list[str]) -> list[str]:
    """Prefix ``setpriv --pdeathsig TERM`` (Linux util-linux) when available: the child then gets
    SIGTERM should the parent die without stopping it (SIGKILL, a crash)."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


def child_environment(
    environ: Mapping[str, str], run_env: Mapping[str, str], *, system: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of one service process.

    System variables (``PATH``, ``HOME``, ``LANG``, ...) come from ``system`` (default: this process's
    environment); configuration variables only from ``environ`` (the run's view of the configuration),
    less those the venue and the run own; ``run_env`` (venue URLs, account, bus, store, ports) is laid
    over them.
    """
    system = os.environ if system is None else system
    env = {k: v for k, v in system.items() if k not in VAR_BY_NAME}
    env.update({k: v for k, v in environ.items() if k in VAR_BY_NAME and k not in _RUN_OWNED})
    env["NEAR_INTENTS_INSTANCE_ID"] = ""  # guaranteed delivery is the live relay's; not set in a play run
    env.update(run_env)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def database_server(environ: Mapping[str, str]) -> tuple[str, int, str]:
    """(host, port, user) of the PostgreSQL server a run without ``POSTGRES_URL`` creates its database
    on: libpq's ``PGHOST``, ``PGPORT`` and ``PGUSER`` when set, else 127.0.0.1, 5432, postgres.

    ``PGHOST`` must be a host name or address (a Unix socket directory cannot be put in the
    ``postgresql://`` URL the services are given); a bad value is an :class:`IntentsMMError`.
    """
    host = environ.get("PGHOST", "").strip() or DEFAULT_PG_HOST
    if host.startswith("/") or "," in host or any(c.isspace() for c in host):
        raise IntentsMMError(
            f"PGHOST={host!r} is not one TCP host name or address; set POSTGRES_URL, or PGHOST to a host"
        )
    raw_port = environ.get("PGPORT", "").strip()
    if not raw_port:
        port = DEFAULT_PG_PORT
    elif raw_port.isascii() and raw_port.isdigit() and 0 < int(raw_port) < 65536:
        port = int(raw_port)
    else:
        raise IntentsMMError(f"PGPORT={raw_port!r} is not a TCP port (1-65535)")
    user = environ.get("PGUSER", "").strip() or DEFAULT_PG_USER
    return host, port, user


def dropdb_command(host: str, port: int, user: str, name: str) -> str:
    """The ``dropdb`` command line that removes a database a run created."""
    port_arg = "" if port == DEFAULT_PG_PORT else f" -p {port}"
    return f"dropdb -h {host}{port_arg} -U {user} {name}"


async def create_database(
    *, host: str = DEFAULT_PG_HOST, port: int = DEFAULT_PG_PORT, user: str = DEFAULT_PG_USER, name: str
) -> str:
    """Create an empty PostgreSQL database ``name``; returns its ``postgresql://`` URL."""
    import psycopg

    admin = f"host={host} port={port} user={user} dbname=postgres connect_timeout=5"
    try:
        conn = await psycopg.AsyncConnection.connect(admin, autocommit=True)
    except psycopg.Error as exc:
        raise IntentsMMError(
            f"POSTGRES_URL is not set and PostgreSQL on {host}:{port} (user {user}) is not reachable to "
            f"create a database for the run: {' '.join(str(exc).split())}"
        ) from None
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise IntentsMMError(f"could not create database {name}: {' '.join(str(exc).split())}") from None
    finally:
        await conn.close()
    return f"postgresql://{user}@{host}:{port}/{name}"


async def delete_stream(url: str, stream: str) -> bool:
    """Delete a JetStream stream; False (logged) when it could not be deleted."""
    import nats

    try:
        nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=1)
    except Exception as exc:
        log.warning("could not connect to NATS to delete stream %s: %s", stream, exc)
        return False
    try:
        await nc.jetstream().delete_stream(stream)
        return True
    except Exception as exc:
        log.warning("could not delete NATS stream %s: %s", stream, exc)
        return False
    finally:
        await nc.close()


class DistributedSimulation(Simulation):
    """One distributed run; :meth:`run` returns the summary (same shape as ``simulate`` plus a
    ``distributed`` section). ``ports`` maps services to control ports (default: the configured
    ``*_PORT`` values); ``python`` is the interpreter the services run under."""

    banner = "intents-mm simulate --distributed"
    failure_label = "distributed run"

    def __init__(
        self,
        *,
        duration_s: float,
        seed: int,
        scenario: str | Scenario | None,
        environ: Mapping[str, str] | None = None,
        dotenv: Path | None = Path(".env"),
        ports: dict[str, int] | None = None,
        venue_ports: dict[str, int] | None = None,
        out: TextIO = sys.stdout,
        progress_every_s: float = 5.0,
        python: str = sys.executable,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        super().__init__(
            duration_s=duration_s,
            seed=seed,
            scenario=scenario,
            environ=environ,
            dotenv=dotenv,
            ports=ports,
            venue_ports=venue_ports,
            out=out,
            progress_every_s=progress_every_s,
        )
        self.python = python
        self.stop_timeout_s = stop_timeout_s
        self.run_id = uuid.uuid4().hex[:8]
        self.processes: dict[str, ServiceProcess] = {}
        self.service_env: dict[str, str] = {}
        self.nats_url = ""
        self.subject_prefix = ""
        self.postgres_url = ""
        self.created_database: str | None = None
        self.database_server: tuple[str, int, str] | None = None  # (host, port, user) it was created on
        self.run_dir: Path | None = None
        self._states_cache: dict[str, dict[str, Any]] = {name: {} for name in SERVICES}
        self._http: aiohttp.ClientSession | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._restarts: list[asyncio.Task[None]] = []

    # -- the run (Simulation.run: a failure prints the summary, then "distributed run failed: ...") --
    async def _start(self) -> None:
        self.venue = SimVenue(self.scenario, seed=self.seed, ports=self.venue_ports)
        await self.venue.start()
        base = simulation_config(self.environ, self.venue.env(), self.dotenv)
        var_dir = Path(base["INTENTS_MM_VAR_DIR"])
        self.run_dir = (var_dir / "distributed" / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.run_id}").resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))

        ports = {name: (self.ports or {}).get(name) or base.port(name) for name in SERVICES}
        busy = [f"{port_var(n)}={p}" for n, p in ports.items() if not _port_free(base["CONTROL_API_HOST"], p)]
        if busy:  # another run's services would answer our health checks
            raise IntentsMMError(f"control port(s) in use: {', '.join(busy)}; set other *_PORT values")

        # bus: this run's own stream, created here first (and so checked reachable)
        self.nats_url = base["NATS_URL"] or DEFAULT_NATS_URL
        self.nats_stream = f"{base['NATS_STREAM']}_DIST_{self.run_id.upper()}"
        self.subject_prefix = f"{base['NATS_SUBJECT_PREFIX']}dist{self.run_id[:6]}"
        self.bus = make_bus(
            self.nats_url,
            stream=self.nats_stream,
            subject_prefix=self.subject_prefix,
            max_age_s=float(base["NATS_MAX_AGE_S"]),
            max_bytes=base["NATS_MAX_BYTES"],
        )
        await self.bus.start()

        # store: POSTGRES_URL, or a fresh database for this run
        self.postgres_url = base["POSTGRES_URL"] or ""
        if not self.postgres_url:
            name = f"intents_mm_dist_{time.strftime('%Y%m%d_%H%M%S')}_{self.run_id}"
            host, port, user = self.database_server = database_server(self.environ)
            self.postgres_url = await create_database(host=host, port=port, user=user, name=name)
            self.created_database = name
            self.say(f"POSTGRES_URL is not set: created database {name} on {host}:{port}")
        self.store_url = resolve_store_url(self.postgres_url, var_dir)
        if not self.store_url.startswith("postgresql"):
            raise IntentsMMError(
                "the distributed mode keeps its history in PostgreSQL: POSTGRES_URL must be postgresql://"
            )

        run_env = {
            **self.venue.env(),
            "NATS_URL": self.nats_url,
            "NATS_STREAM": self.nats_stream,
            "NATS_SUBJECT_PREFIX": self.subject_prefix,
            "POSTGRES_URL": self.postgres_url,
            # the run's own local state (the executor's signed-commands ledger file survives a restart
            # of its process within the run, and never mixes with another run's)
            "INTENTS_MM_VAR_DIR": str(self.run_dir / "var"),
            **{port_var(name): str(port) for name, port in ports.items()},
        }
        cwd = self.dotenv.resolve().parent if self.dotenv is not None else self.run_dir
        self.service_env = child_environment(self.environ, run_env)
        self.config = self._check_config(cwd)

        await self._migrate(cwd)
        self.store = HistoryStore(self.store_url)
        await self.store.connect()

        host = self.config["CONTROL_API_HOST"]
        shown = f"[{host}]" if ":" in host else host
        for name in START_ORDER:
            self.processes[name] = ServiceProcess(
                name,
                python=self.python,
                env=self.service_env,
                cwd=cwd,
                log_path=self.run_dir / f"{name}.log",
                url=f"http://{shown}:{ports[name]}",
            )
        for proc in self.processes.values():
            await proc.start()
        # the summary code of ``simulate`` wants a Running: here it holds no in-process service
        self.running = Running(services=[], servers=[], bus=self.bus, store=self.store)
        await self.wait_healthy(list(self.processes))
        self._watchers.append(asyncio.create_task(self._watch(), name="distributed-watch"))

        self.say(
            f"{self.banner}: PLAY MONEY on a simulated NEAR Intents venue (loopback only); "
            f"seed {self.seed}, scenario {self.scenario.name}"
        )
        for name, proc in self.processes.items():
            self.say(f"  {name:<24} {proc.url}  (pid {proc.pid})")
        self.say(f"  history store            {redact_url(self.store_url)}")
        self.say(f"  bus                      NATS {redact_url(self.nats_url)} stream {self.nats_stream}")
        self.say(f"  service logs             {self.run_dir}")
        self.say(f"  venue admin (faults)     {self.venue.urls['admin']}")

    def _check_config(self, cwd: Path) -> Config:
        """The services' configuration, validated here first (a bad value is one clear error, not
        seven crashed processes)."""
        dotenv = cwd / ".env" if self.dotenv is not None else None
        return load_config(self.service_env, dotenv=dotenv)

    async def _migrate(self, cwd: Path) -> None:
        assert self.run_dir is not None
        log_path = self.run_dir / "migrate.log"
        with log_path.open("wb") as logfile:
            proc = await asyncio.create_subprocess_exec(
                *_with_parent_death_signal([self.python, "-m", "intents_mm", "migrate"]),
                env=self.service_env,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = await asyncio.wait_for(proc.wait(), MIGRATE_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise IntentsMMError(
                    f"intents-mm migrate did not finish in {MIGRATE_TIMEOUT_S:g} s"
                ) from None
        output = log_path.read_text(encoding="utf-8", errors="replace").strip()
        if code != 0:
            raise IntentsMMError(
                f"intents-mm migrate failed (exit {code}): {' | '.join(output.splitlines()[-5:])}"
            )
        if output:
            self.say(f"migrate: {output.splitlines()[-1]}")

    # -- processes -------------------------------------------------------------------------------
    def url(self, name: str) -> str:
        return self.processes[name].url

    async def wait_healthy(self, names: list[str], timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until every named service answers ``/healthz`` 200; an error names the laggards (and
        the log tail of a process that exited)."""
        deadline = time.monotonic() + timeout_s
        pending = set(names)
        last: dict[str, str] = {}
        while pending:
            for name in sorted(pending):
                proc = self.processes[name]
                if not proc.running():
                    raise IntentsMMError(
                        f"{name} exited with status {proc.returncode} while starting; "
                        f"log {proc.log_path}:\n{proc.tail()}"
                    )
                status, body = await self._get(name, "/healthz")
                if status == 200:
                    pending.discard(name)
                else:
                    last[name] = f"HTTP {status}: {body.get('failing', body)}" if status else "not answering"
            if not pending:
                break
            if self.stop.is_set():
                raise IntentsMMError("interrupted while the services were starting")
            if time.monotonic() > deadline:
                detail = "; ".join(f"{n}: {last.get(n, 'no answer')}" for n in sorted(pending))
                raise IntentsMMError(f"services not healthy after {timeout_s:g} s: {detail}")
            await asyncio.sleep(0.25)

    async def kill_service(self, name: str) -> int | None:
        """SIGKILL one service process and keep it down (the watcher does not restart it); see
        :meth:`restart_service`. A process killed from outside is restarted by the watcher."""
        return await self.processes[name].kill()

    async def stop_service(self, name: str) -> int | None:
        """SIGTERM (then SIGKILL) one service process; not counted as a failure."""
        return await self.processes[name].stop(self.stop_timeout_s)

    async def restart_service(self, name: str) -> None:
        """Start a stopped or killed service process again and wait for its ``/healthz``. It starts
        disarmed, as after any restart: arm it again through :meth:`arm_service`."""
        proc = self.processes[name]
        if proc.running():
            await proc.stop(self.stop_timeout_s)
        await proc.start()
        await self.wait_healthy([name])

    async def arm_service(self, name: str) -> dict[str, Any]:
        """``POST /arm`` on one service, audited as ``simulate``; IntentsMMError when refused."""
        return await self._post(name, "/arm")

    async def _stop_processes(self) -> None:
        """Producers first (together), history-writer last so that it stores the tail."""
        if not self.processes:
            return
        first = [p for n, p in self.processes.items() if n != "history-writer"]
        await asyncio.gather(*(p.stop(self.stop_timeout_s) for p in first), return_exceptions=True)
        writer = self.processes.get("history-writer")
        if writer is not None:
            await writer.stop(self.stop_timeout_s)

    async def _watch(self) -> None:
        """Refresh the services' ``/state`` for progress lines, and restart a process that exited on its
        own, as compose (``restart: unless-stopped``) and Kubernetes do: after a pause growing with
        each restart, at most :data:`MAX_RESTARTS` times per service; then the run ends with an error.
        """
        while True:
            await self.refresh_states()
            for name, proc in self.processes.items():
                if proc.proc is not None and not proc.running() and not proc.expected_exit:
                    proc.expected_exit = True  # handled once
                    self._restarts.append(
                        asyncio.create_task(self._restart_crashed(name), name=f"restart-{name}")
                    )
            await asyncio.sleep(STATE_POLL_S)

    async def _restart_crashed(self, name: str) -> None:
        proc = self.processes[name]
        exited = f"{name} (pid {proc.pid}) exited on its own with status {proc.returncode}"
        if proc.starts > MAX_RESTARTS:
            self.failure = f"{exited} after {MAX_RESTARTS} restarts; log {proc.log_path}:\n{proc.tail()}"
            self.say(f"!! {self.failure}")
            self.stop.set()
            return
        self.say(f"!! {exited}; restarting it (log {proc.log_path})")
        await asyncio.sleep(RESTART_PAUSE_S * proc.starts)
        try:
            await proc.start()
            await self.wait_healthy([name])
        except IntentsMMError as exc:
            self.failure = f"{exited} and could not be restarted: {exc}"
            self.say(f"!! {self.failure}")
            self.stop.set()
            return
        armed = name in ("strategy-engine", "trade-executor")
        self.say(
            f"{name} restarted (pid {proc.pid})"
            + (f"; it starts DISARMED: curl -s -X POST {proc.url}/arm to arm it again" if armed else "")
        )

    # -- HTTP ------------------------------------------------------------------------------------
    async def _get(self, name: str, path: str) -> tuple[int, dict[str, Any]]:
        """(status, JSON body); status 0 when the service does not answer."""
        assert self._http is not None
        try:
            async with self._http.get(f"{self.url(name)}{path}") as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = {}
                return resp.status, body if isinstance(body, dict) else {"body": body}
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0, {}

    async def _post(self, name: str, path: str) -> dict[str, Any]:
        assert self._http is not None
        headers = {"X-Operator": "simulate"}
        token = self.config["CONTROL_API_TOKEN"]
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self._http.post(f"{self.url(name)}{path}", headers=headers) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise IntentsMMError(f"{name} {path}: HTTP {resp.status} {text[:200]}")
                body = await resp.json(content_type=None)
                return body if isinstance(body, dict) else {"body": body}
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise IntentsMMError(f"{name} {path} failed: {exc.__class__.__name__}: {exc}") from None

    async def state(self, name: str) -> dict[str, Any]:
        """One service's ``GET /state`` (empty when it does not answer)."""
        status, body = await self._get(name, "/state")
        return body if status == 200 else {}

    async def refresh_states(self) -> dict[str, dict[str, Any]]:
        names = list(self.processes)
        states = await asyncio.gather(*(self.state(n) for n in names))
        for name, st in zip(names, states, strict=True):
            if st:
                self._states_cache[name] = st
        return self._states_cache

    def _states(self) -> dict[str, dict[str, Any]]:
        return {name: dict(st) for name, st in self._states_cache.items()}

    # -- warm-up, arming, summary ----------------------------------------------------------------
    async def _warm_up_and_arm(self) -> None:
        """Wait for a fresh reference, credited inventory, the fee and a registered key (each read
        from the services' ``/state``), then arm strategy-engine and trade-executor over HTTP."""
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        waiting: list[str] = ["everything"]
        s_state: dict[str, Any] = {}
        while time.monotonic() < deadline and not self.stop.is_set():
            s_state = await self.state("strategy-engine")
            e_state = await self.state("trade-executor")
            waiting = warmup_waiting(s_state, e_state)
            if not waiting:
                break
            await asyncio.sleep(0.25)
        if self.failure is not None:
            raise IntentsMMError(self.failure)
        if waiting:
            raise IntentsMMError(
                f"warm-up did not complete in {WARMUP_TIMEOUT_S:g} s: waiting for {', '.join(waiting)}"
            )
        assert self.venue is not None
        self.start_inventory = self.venue.verifier.balances(self.venue.mm_account)
        self.say(
            f"warm-up done: reference {s_state['reference']['mid']} EUR/BTC, "
            f"inventory {s_state['inventory']['credited']}"
        )
        self.say("arming strategy-engine and trade-executor (PLAY MONEY: simulated venue, simulated funds)")
        for name in ("strategy-engine", "trade-executor"):
            try:
                await self.arm_service(name)
            except IntentsMMError as exc:
                raise IntentsMMError(f"could not arm {name}: {exc}") from None
        self.armed_at_ns = time.time_ns()

    async def _metrics(self) -> dict[str, Any]:
        status, body = await self._get("history-writer", "/portfolio-metrics")
        return (
            body
            if status == 200
            else {"error": f"HTTP {status}" if status else "history-writer not answering"}
        )

    async def summary(self, elapsed_s: float) -> dict[str, Any]:
        await self.refresh_states()
        summary = await super().summary(elapsed_s)
        summary["distributed"] = {
            "processes": {
                name: {"pid": p.pid, "starts": p.starts, "restarts": p.starts - 1, "log": str(p.log_path)}
                for name, p in self.processes.items()
            },
            "nats_stream": self.nats_stream,
            "database_created": self.created_database,
            "failure": self.failure,
        }
        return summary

    # -- shutdown --------------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        """Stop everything this run started, each step on its own (one failing does not skip the rest)."""
        tasks = [*self._watchers, *self._restarts]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._watchers.clear()
        self._restarts.clear()
        await _quietly(self._stop_processes(), "stopping the service processes")
        self.running = None
        if self.venue is not None:
            await _quietly(self.venue.stop(), "stopping the simulated venue")
        if self.bus is not None:
            await _quietly(self.bus.close(), "closing the bus")
            self.bus = None
        if self.nats_stream is not None and self.nats_url:
            await delete_stream(self.nats_url, self.nats_stream)
        if self.store is not None:
            await _quietly(self.store.close(), "closing the store")
        if self._http is not None:
            await _quietly(self._http.close(), "closing the HTTP client")
            self._http = None
        if self.created_database is not None:
            host, port, user = self.database_server or (DEFAULT_PG_HOST, DEFAULT_PG_PORT, DEFAULT_PG_USER)
            self.say(
                f"database {self.created_database} kept for inspection; drop it with: "
                f"{dropdb_command(host, port, user, self.created_database)}"
            )


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


async def _quietly(coro: Any, what: str) -> None:
    try:
        await coro
    except Exception:
        log.exception("distributed: %s failed", what)


def warmup_waiting(strategy_state: Mapping[str, Any], executor_state: Mapping[str, Any]) -> list[str]:
    """What the warm-up still waits for, from strategy-engine's and trade-executor's ``/state``."""
    waiting: list[str] = []
    reference = strategy_state.get("reference") or {}
    inventory = strategy_state.get("inventory") or {}
    if reference.get("quality") not in ("ok", "degraded"):
        waiting.append("reference price")
    if inventory.get("credited") is None:
        waiting.append("inventory snapshot")
    if strategy_state.get("fee_pips") is None:
        waiting.append("protocol fee")
    if not executor_state.get("key_registered"):
        waiting.append("executor key registration check")
    return waiting
