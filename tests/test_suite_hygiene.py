"""The suite respects a shared machine: markers come from fixtures, drills that stop PostgreSQL use a
private cluster of their own, and every test has a time limit (tests/conftest.py, pyproject.toml)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import psycopg
import pytest

from conftest import PrivatePostgres

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def test_a_pg_fixture_marks_its_test_pg(request: pytest.FixtureRequest, pg_url: str) -> None:
    assert pg_url.startswith("postgresql+psycopg://")
    assert request.node.get_closest_marker("pg") is not None
    assert request.node.get_closest_marker("nats") is None


def test_a_nats_fixture_marks_its_test_nats(request: pytest.FixtureRequest, stream_prefix: str) -> None:
    assert stream_prefix
    assert request.node.get_closest_marker("nats") is not None
    assert request.node.get_closest_marker("pg") is None


def test_a_test_without_server_fixtures_has_neither_marker(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("pg") is None
    assert request.node.get_closest_marker("nats") is None


def test_no_hand_written_server_markers_and_no_stopping_the_shared_postgresql() -> None:
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        if path.name in ("conftest.py", Path(__file__).name):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"mark\.(pg|nats)\b", line):
                offenders.append(f"{path.name}:{number}: a hand-written pg/nats mark")
            if "pg_ctlcluster" in line and re.search(r"\b(stop|restart|reload)\b", line):
                offenders.append(f"{path.name}:{number}: stops the machine's PostgreSQL cluster")
    conftest = (TESTS / "conftest.py").read_text(encoding="utf-8")
    assert [ln for ln in conftest.splitlines() if "pg_ctlcluster" in ln and re.search(r"\bstop\b", ln)] == []
    assert offenders == []


def test_every_test_has_a_generous_timeout() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    options = config["tool"]["pytest"]["ini_options"]
    assert int(options["timeout"]) >= 300
    pins = (ROOT / "constraints.txt").read_text(encoding="utf-8").split()
    assert any(p.startswith("pytest-timeout==") for p in pins)
    assert any(d.startswith("pytest-timeout") for d in config["project"]["optional-dependencies"]["dev"])


async def test_private_postgres_survives_a_stop_and_is_removed(private_postgres: PrivatePostgres) -> None:
    url = private_postgres.create_database("imm_hygiene")
    assert f"127.0.0.1:{private_postgres.port}/imm_hygiene" in url
    dsn = private_postgres.admin_dsn.replace("dbname=postgres", "dbname=imm_hygiene")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v int); INSERT INTO t VALUES (7)")
    private_postgres.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn).close()
    private_postgres.start()  # same port, same data
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [(7,)]
    base = private_postgres.base
    private_postgres.remove()
    assert not base.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn).close()
