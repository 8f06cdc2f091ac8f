"""Double-fault drill: PostgreSQL down, ``kill -9`` of ``run-all``, PostgreSQL up, restart: nothing lost.

``intents-mm run-all`` (memory bus) runs as a subprocess against the simulated venue (in this process)
with a **private** PostgreSQL cluster (``initdb`` in a temporary directory, a free port, run as the
``postgres`` user: never the machine's shared server) as its history store. Armed and quoting, the
store is stopped; the market maker keeps signing and sending quotes, and history-writer spills what it
cannot store to its journal (``<var>/history-writer/journal``). Once the flow has stopped and the
journal holds everything received, the process is killed with SIGKILL, PostgreSQL is started again
and ``run-all`` restarted with the same var directory: history-writer replays the journal, and every
command in the executor's signed-command ledger file has exactly one ``cmd.execute_trade``, one
``exec.trade_result`` and one ``decision.trade_decision`` row (and its ``signed_commands`` row).

With the memory bus a message is durable once history-writer has spilled it (a batch interval after
it was published), so the drill stops the flow and waits for the journal to settle before the kill;
what a crash can lose is that fraction of a second, see ``docs/operations.md``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import psycopg
import pytest

from conftest import free_port
from e2e_kit import e2e_env, e2e_scenario, wait_for
from intents_mm.config import SERVICES, port_var
from intents_mm.services.executor_ledger import FILE_NAME, LedgerEntry
from intents_mm.sim.venue import SimVenue

pytestmark = pytest.mark.slow

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
OPERATOR = {"X-Operator": "journal-drill"}


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own: ``initdb`` in ``root``, run as ``postgres`` on a free port."""

    def __init__(self, root: Path) -> None:
        if not PG_BIN:
            pytest.skip("no PostgreSQL binaries under /usr/lib/postgresql")
        self.bin = PG_BIN[-1]
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        proc = subprocess.run(
            [*self.as_postgres, *args], check=False, capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            log = self.root / "postgres.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise AssertionError(f"{args[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}\n{tail}")

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "postgres.log")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    if shutil.which("runuser") is None and os.geteuid() == 0:
        pytest.skip("runuser is needed to run initdb as postgres")
    with tempfile.TemporaryDirectory(prefix="journal-drill-pg-") as tmp:
        pg = PrivatePostgres(Path(tmp))  # owned by postgres, mode 0700
        pg.init()
        pg.start()
        try:
            yield pg
        finally:
            if pg.running():
                pg.stop("fast")


class RunAll:
    """``intents-mm run-all`` as a subprocess with a fixed environment (restartable)."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = cwd / "run-all.log"
        self.ports = {name: int(env[port_var(name)]) for name in SERVICES}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "intents_mm", "run-all"],
            env=self.env,
            cwd=self.cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    try:
        async with http.get(url) as resp:
            body = await resp.json(content_type=None)
            return resp.status, body if isinstance(body, dict) else {}
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return 0, {}


def rows(pg_url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg_url, connect_timeout=5) as conn:
        return list(conn.execute(sql).fetchall())


def signed_ids(ledger: Path) -> dict[str, LedgerEntry]:
    decoder = msgspec.json.Decoder(LedgerEntry)
    out: dict[str, LedgerEntry] = {}
    for line in ledger.read_bytes().splitlines():
        if line:
            entry = decoder.decode(line)
            out[entry.command_id.removesuffix(":salt-retry")] = entry
    return out


async def test_store_down_kill_9_store_up_restart_every_signed_command_has_its_rows_once(
    private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    venue = SimVenue(e2e_scenario(rate_per_s=10.0), seed=11)
    await venue.start()
    var_dir = tmp_path / "var"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NEAR_", "POSTGRES_", "NATS_"))},
        **e2e_env(tmp_path),
        **venue.env(),
        "POSTGRES_URL": private_pg.url,
        "INTENTS_MM_VAR_DIR": str(var_dir),
        **{port_var(name): str(free_port()) for name in SERVICES},
    }
    env.pop("NATS_URL", None)  # the memory bus: what is not spilled is in this process only
    env.pop("CONTROL_API_TOKEN", None)
    run = RunAll(env, tmp_path)
    hw, se, te = "history-writer", "strategy-engine", "trade-executor"
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    try:
        run.start()

        async def all_up() -> bool:
            if run.proc is not None and run.proc.poll() is not None:
                raise AssertionError(f"run-all exited with {run.proc.returncode}:\n{run.tail()}")
            return all([(await get_json(http, f"{run.url(n)}/healthz"))[0] == 200 for n in SERVICES])

        await wait_for(all_up, timeout_s=90, what="run-all healthy")

        async def warm() -> bool:
            _, s = await get_json(http, f"{run.url(se)}/state")
            _, e = await get_json(http, f"{run.url(te)}/state")
            return bool(
                s.get("reference", {}).get("quality") in ("ok", "degraded")
                and s.get("inventory", {}).get("credited") is not None
                and s.get("fee_pips") is not None
                and e.get("key_registered")
            )

        await wait_for(warm, timeout_s=60, what="warm-up (reference, inventory, fee, key)")
        for name in (se, te):
            async with http.post(f"{run.url(name)}/arm", headers=OPERATOR) as resp:
                assert resp.status == 200, await resp.text()
        await venue.start_flow()

        async def accepted() -> int:
            _, e = await get_json(http, f"{run.url(te)}/state")
            return int(e.get("counts", {}).get("accepted", 0))

        await wait_for(
            lambda: _at_least(accepted(), 3), timeout_s=90, what="quotes accepted before the outage"
        )
        before_outage = await accepted()

        # fault 1: the history store goes away while the market maker keeps quoting
        private_pg.stop("immediate")
        outage_ns = time.time_ns()
        await wait_for(
            lambda: _at_least(accepted(), before_outage + 10),
            timeout_s=120,
            what="quotes signed during the outage",
        )

        async def spilling() -> bool:
            _, body = await get_json(http, f"{run.url(hw)}/healthz")
            _, st = await get_json(http, f"{run.url(hw)}/state")
            journal = (st.get("persister") or {}).get("journal") or {}
            return bool(body.get("failing", {}).get("store")) and journal.get("rows_pending", 0) > 0

        await wait_for(spilling, timeout_s=30, what="history-writer 503 and spilling to its journal")
        for user in venue.users:  # the flow stops: let the last messages reach the journal
            await user.stop()
        settled: list[int] = []

        async def quiet() -> bool:
            # no more commands signed or answered, and history-writer holds nothing unspilled (other
            # producers, prices and snapshots, keep publishing and spilling meanwhile)
            _, e = await get_json(http, f"{run.url(te)}/state")
            _, st = await get_json(http, f"{run.url(hw)}/state")
            settled.append(sum(int(v) for v in (e.get("counts") or {}).values()))
            backlog = (st.get("persister") or {}).get("backlog")
            return backlog == 0 and len(settled) >= 4 and len(set(settled[-4:])) == 1

        await wait_for(quiet, timeout_s=60, what="signing to stop and the journal to catch up", every_s=0.5)
        await asyncio.sleep(1.0)  # a batch interval and a spill, many times over
        ledger = var_dir / "trade-executor" / FILE_NAME
        signed = signed_ids(ledger)
        during = [c for c, e in signed.items() if e.signed_ts_ns >= outage_ns]
        assert len(during) >= 8, f"only {len(during)} commands signed during the outage"
        journal_dir = var_dir / "history-writer" / "journal"
        assert list(journal_dir.glob("spill-*.jnl")), "nothing in the journal before the kill"

        # fault 2: the process dies (SIGKILL: no shutdown, no flush)
        run.kill9()
        private_pg.start()
        run.start()
        await wait_for(all_up, timeout_s=90, what="run-all healthy after the restart")

        async def replayed() -> bool:
            _, st = await get_json(http, f"{run.url(hw)}/state")
            journal = (st.get("persister") or {}).get("journal") or {}
            return journal.get("rows_pending") == 0 and journal.get("last_replay_ts_ns") is not None

        await wait_for(replayed, timeout_s=60, what="the journal replayed into the store")
        assert not list(journal_dir.glob("spill-*.jnl")), "replayed segments must be deleted"
        _, state = await get_json(http, f"{run.url(hw)}/state")
        assert state["persister"]["journal"]["replayed"] > 0

        async def mirrored() -> bool:
            _, e = await get_json(http, f"{run.url(te)}/state")
            return (e.get("ledger") or {}).get("mirror_backlog") == 0

        await wait_for(mirrored, timeout_s=30, what="the executor's ledger mirrored to the store")
    finally:
        await http.close()
        run.stop()
        await venue.stop()

    def by_id(table: str, column: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for (value,) in rows(private_pg.url, f"SELECT {column} FROM {table}"):  # fixed table names
            out[value] = out.get(value, 0) + 1
        return out

    commands = by_id("execute_trade_commands", "command_id")
    results = by_id("trade_execution_results", "command_id")
    decisions = by_id("trade_decisions", "decision_id")
    mirror = by_id("signed_commands", "command_id")
    decision_of = dict(rows(private_pg.url, "SELECT command_id, decision_id FROM execute_trade_commands"))
    missing = {
        "cmd.execute_trade": sorted(c for c in signed if commands.get(c) != 1),
        "exec.trade_result": sorted(c for c in signed if results.get(c) != 1),
        "decision.trade_decision": sorted(
            c for c in signed if c not in decision_of or decisions.get(decision_of[c]) != 1
        ),
    }
    assert missing == {"cmd.execute_trade": [], "exec.trade_result": [], "decision.trade_decision": []}, (
        f"{len(signed)} signed, {len(during)} during the outage; rows missing or doubled: {missing}"
    )
    print(
        f"\njournal drill: {len(signed)} commands signed, {len(during)} during the outage; "
        f"{state['persister']['journal']['replayed']} rows replayed from the journal after the kill -9"
    )
    assert {e.command_id for e in signed.values()} <= set(mirror)
    assert all(n == 1 for n in mirror.values())


async def _at_least(value: Any, n: int) -> bool:
    return int(await value) >= n
