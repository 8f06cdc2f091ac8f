"""Shared fixtures: real PostgreSQL and NATS JetStream servers, isolated per test run.

Each test session creates its own PostgreSQL database and its own stream-name prefix and removes
them at the end, so two runs on the same machine never see each other's data. When a server is
not running, the fixture starts it with the machine's documented command first. The suite never
stops, restarts or reconfigures those shared servers: a drill that needs an outage makes a server
of its own (:class:`PrivatePostgres`, ``private_postgres``; ``e2e_kit.PrivateNats``) on a free port.

Markers come from fixtures (:func:`pytest_collection_modifyitems`): a test that uses a PostgreSQL
fixture is marked ``pg``, one that uses a NATS fixture ``nats``, so ``-m "not pg and not nats"``
selects exactly the tests that need neither. The per-test timeout is pytest-timeout's ``timeout``
in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TEST_PG_USER", "postgres")
NATS_URL = os.environ.get("TEST_NATS_URL", "nats://127.0.0.1:4222")
NATS_HOST = urlsplit(NATS_URL).hostname or "127.0.0.1"
NATS_PORT = urlsplit(NATS_URL).port or 4222

#: fixtures that give a test PostgreSQL / NATS; the conftest hook marks their users ``pg`` / ``nats``
PG_FIXTURES = frozenset({"pg_admin_dsn", "pg_url", "private_postgres"})
NATS_FIXTURES = frozenset({"nats_server_url", "stream_prefix", "private_nats"})
#: parametrized fixtures that ask for one of those at run time (``request.getfixturevalue``) for one
#: parameter: (fixture, parameter) -> the fixture it then uses
RUNTIME_FIXTURES: dict[tuple[str, str], str] = {
    ("store_url", "postgresql"): "pg_url",  # this file
    ("bus", "nats"): "nats_server_url",  # tests/test_bus_conformance.py
}

RUN_ID = uuid.uuid4().hex[:10]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_port(host: str, port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _port_open(host, port):
            return True
        time.sleep(0.2)
    return False


def start_postgres() -> None:
    """Start the machine's own cluster when it is down (never used to restart or stop it)."""
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if versions:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
            check=False,
            capture_output=True,
        )


def ensure_postgres() -> None:
    if not _port_open(PG_HOST, PG_PORT):
        if (PG_HOST, PG_PORT) == ("127.0.0.1", 5432):  # the machine's own cluster, documented command
            start_postgres()
        if not _wait_port(PG_HOST, PG_PORT, 30):
            pytest.fail(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} and could not be started")


def start_nats() -> None:
    subprocess.run(
        [
            "start-stop-daemon",
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/nats-server",
            "--",
            "-a",
            "127.0.0.1",
            "-p",
            "4222",
            "-js",
            "-sd",
            "/var/lib/nats-server",
            "-l",
            "/var/log/nats-server.log",
        ],
        check=False,
        capture_output=True,
    )


def ensure_nats() -> None:
    if not _port_open(NATS_HOST, NATS_PORT):
        if (NATS_HOST, NATS_PORT) == ("127.0.0.1", 4222):  # the machine's own server, documented command
            start_nats()
        if not _wait_port(NATS_HOST, NATS_PORT, 30):
            pytest.fail(f"NATS is not reachable on {NATS_HOST}:{NATS_PORT} and could not be started")


@pytest.fixture(scope="session")
def pg_admin_dsn() -> str:
    ensure_postgres()
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"


def _create_database(admin_dsn: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def _drop_database(admin_dsn: str, name: str) -> None:
    import psycopg

    ensure_postgres()
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    name = f"imm_test_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    _create_database(pg_admin_dsn, name)
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        _drop_database(pg_admin_dsn, name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'history.sqlite3'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs a store test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'history.sqlite3'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture(scope="session")
def nats_server_url() -> str:
    ensure_nats()
    return NATS_URL


@pytest.fixture
def stream_prefix(nats_server_url: str) -> Iterator[str]:
    """A unique stream-name prefix for one test; every stream with it is deleted afterwards."""
    prefix = f"T{RUN_ID}{uuid.uuid4().hex[:6]}".upper()
    yield prefix

    async def cleanup() -> None:
        import nats

        ensure_nats()
        nc = await nats.connect(nats_server_url, connect_timeout=5, max_reconnect_attempts=3)
        try:
            js = nc.jetstream()
            for info in await js.streams_info():
                if info.config.name and info.config.name.startswith(prefix):
                    await js.delete_stream(info.config.name)
        finally:
            await nc.close()

    asyncio.run(cleanup())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ------------------------------------------------------------------------------ markers from fixtures


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test ``pg`` / ``nats`` from the fixtures it uses (directly or through others).

    A parametrized fixture that asks for a server fixture at run time for one of its parameters
    (:data:`RUNTIME_FIXTURES`) marks that variant from its parameter.
    """
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        if callspec is not None:
            for (fixture, param), uses in RUNTIME_FIXTURES.items():
                if fixture in names and callspec.params.get(fixture) == param:
                    names.add(uses)
        if names & PG_FIXTURES:
            item.add_marker(pytest.mark.pg)
        if names & NATS_FIXTURES:
            item.add_marker(pytest.mark.nats)


# ------------------------------------------------------------------------------ a private PostgreSQL


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has ``initdb`` and ``pg_ctl``."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [d for d in found if (d / "pg_ctl").exists()]
    found.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    return found[-1] if found else None


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own: ``initdb`` into a fresh temporary directory, served on a
    free loopback port with its socket in that directory, stoppable and restartable on the same port
    and data (an outage drill), removed by :meth:`remove`. Never the machine's shared cluster.

    ``initdb`` refuses to run as root: as root the cluster belongs to the ``postgres`` user and every
    server command runs through ``runuser -u postgres --``.
    """

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            pytest.fail("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (package postgresql)")
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            if shutil.which("runuser") is None:
                pytest.fail("as root, a private PostgreSQL needs runuser (package util-linux)")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self.bin_dir = bin_dir
        self.port = free_port()
        self.user = "postgres"
        # not under pytest's tmp_path: as root that is private to root and the postgres user cannot enter
        self.base = Path(tempfile.mkdtemp(prefix="imm-private-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        try:
            if self._as_user:
                shutil.chown(self.base, user="postgres", group="postgres")
            self._run(
                "initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8", "--locale=C",
                "--no-sync",
            )  # fmt: skip
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise

    def _run(self, tool: str, *args: str) -> None:
        argv = [*self._as_user, str(self.bin_dir / tool), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise AssertionError(
                f"private PostgreSQL: {tool} {' '.join(args)} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-2000:]}\n{log}"
            )

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres connect_timeout=5"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        """A fast shutdown (the outage of a drill); the data stays for :meth:`start`."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its SQLAlchemy URL."""
        _create_database(self.admin_dsn, name)
        return self.url(name)

    def remove(self) -> None:
        """Stop the server (immediately) and delete the cluster's directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started private PostgreSQL cluster (see :class:`PrivatePostgres`), removed afterwards."""
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()
