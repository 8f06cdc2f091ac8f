"""Shared fixtures: real PostgreSQL and NATS JetStream servers, isolated per test run.

Each test session creates its own PostgreSQL database and its own stream-name prefix and removes
them at the end, so two runs on the same machine never see each other's data. When a server is
not running, the fixture starts it with the machine's documented command first.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TEST_PG_USER", "postgres")
NATS_URL = os.environ.get("TEST_NATS_URL", "nats://127.0.0.1:4222")

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
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if versions:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
            check=False,
            capture_output=True,
        )


def stop_postgres() -> None:
    versions = sorted(os.listdir("/etc/postgresql"))
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "stop", "-m", "fast"],
        check=True,
        capture_output=True,
    )


def ensure_postgres() -> None:
    if not _port_open(PG_HOST, PG_PORT):
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
    if not _port_open("127.0.0.1", 4222):
        start_nats()
        if not _wait_port("127.0.0.1", 4222, 30):
            pytest.fail("NATS is not reachable on 127.0.0.1:4222 and could not be started")


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
