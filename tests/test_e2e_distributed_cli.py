"""End to end: ``intents-mm simulate --distributed`` as an operator runs it, stopped with Ctrl-C.

Without ``POSTGRES_URL`` it creates a database for the run and says so (on the suite's PostgreSQL,
``TEST_PG_*`` in tests/conftest.py, named to it by libpq's ``PGHOST`` / ``PGPORT`` / ``PGUSER``); it
prints the seven service processes, runs the flow, and on SIGINT stops the flow, prints the same
summary as ``simulate`` (and writes it as JSON), stops every process it started, deletes its NATS
stream and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import psycopg
import pytest

from conftest import PG_HOST, PG_PORT, PG_USER, free_port
from intents_mm.config import SERVICES, VAR_BY_NAME, port_var
from intents_mm.distributed import dropdb_command

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _wait_output(path: Path, pattern: str, proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} in the output (exit {proc.poll()}):\n{text[-3000:]}")
        time.sleep(0.2)


def test_simulate_distributed_creates_a_database_and_stops_everything_on_ctrl_c(
    tmp_path: Path, pg_admin_dsn: str, nats_server_url: str, stream_prefix: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in VAR_BY_NAME}
    env.update(
        {
            "INTENTS_MM_VAR_DIR": str(tmp_path / "var"),
            "NATS_URL": nats_server_url,
            "NATS_STREAM": stream_prefix,
            "NATS_MAX_BYTES": str(64 << 20),
            # where the run creates its database: the suite's server, not a fixed port
            "PGHOST": PG_HOST,
            "PGPORT": str(PG_PORT),
            "PGUSER": PG_USER,
            **{port_var(name): str(free_port()) for name in SERVICES},
        }
    )
    out = tmp_path / "out.txt"
    summary_path = tmp_path / "summary.json"
    argv = [sys.executable, "-m", "intents_mm", "simulate", "--distributed", "--duration", "120"]
    argv += ["--summary-json", str(summary_path)]
    found_db: list[str] = []
    with out.open("wb") as sink:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        _run_and_check(proc, out, summary_path, tmp_path, nats_server_url, stream_prefix, found_db)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if found_db:
            with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{found_db[0]}" WITH (FORCE)')


def _run_and_check(
    proc: subprocess.Popen[bytes],
    out: Path,
    summary_path: Path,
    tmp_path: Path,
    nats_url: str,
    stream_prefix: str,
    found_db: list[str],
) -> None:
    try:
        text = _wait_output(out, r"user flow started", proc, 90)
        found = re.search(r"created database (\S+) on", text)
        assert found, text
        database = found.group(1)
        found_db.append(database)
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", text)]
        assert len(pids) == 7 and all(_alive(p) for p in pids), text
        assert "venue admin (faults)" in text
        time.sleep(3)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    assert "=== simulate summary (PLAY MONEY; seed 7" in text
    assert f"created database {database} on {PG_HOST}:{PG_PORT}" in text
    assert f"kept for inspection; drop it with: {dropdb_command(PG_HOST, PG_PORT, PG_USER, database)}" in text
    assert not [p for p in pids if _alive(p)], "every service process is stopped"
    summary = json.loads(summary_path.read_text())
    assert summary["requests_seen"] >= 1 and summary["history_store"].startswith("postgresql")
    assert set(summary["distributed"]["processes"]) == set(SERVICES)
    assert summary["distributed"]["database_created"] == database
    assert summary["store_rows"]["swap_demand_events"] >= 1 and "inventory_end" in summary
    # the service logs are kept; the run's stream is gone
    run_dir = next((tmp_path / "var" / "distributed").iterdir())
    assert {p.name for p in run_dir.glob("*.log")} >= {f"{name}.log" for name in SERVICES}
    assert asyncio.run(_streams(nats_url, stream_prefix)) == []


async def _streams(url: str, prefix: str) -> list[str]:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        return [
            str(i.config.name)
            for i in await nc.jetstream().streams_info()
            if (i.config.name or "").startswith(prefix)
        ]
    finally:
        await nc.close()
