"""`intents-mm migrate` as an operator runs it: every table on an empty database; twice is a no-op."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

TABLES = {
    "swap_demand_events",
    "market_price_events",
    "intent_inventory_snapshots",
    "portfolio_metrics_snapshots",
    "liquidity_actions",
    "trade_decisions",
    "execute_trade_commands",
    "trade_execution_results",
    "quote_status_events",
    "operator_actions",
}


def migrate_cli(env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES", "NATS"))}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "intents_mm", "migrate"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_migrate_postgres_twice(pg_url: str, tmp_path: Path) -> None:
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    first = migrate_cli({"POSTGRES_URL": plain}, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "applied 0001" in first.stdout
    with psycopg.connect(plain) as conn:
        rows = conn.execute("select table_name from information_schema.tables where table_schema='public'")
        tables = {r[0] for r in rows}
    assert tables >= TABLES
    second = migrate_cli({"POSTGRES_URL": plain}, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout


def test_migrate_sqlite_default_under_var(tmp_path: Path) -> None:
    out = migrate_cli({"INTENTS_MM_VAR_DIR": str(tmp_path / "var")}, tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "var" / "history.sqlite3").is_file()


def test_migrate_unreachable_database_is_one_line(tmp_path: Path) -> None:
    out = migrate_cli({"POSTGRES_URL": "postgresql://nobody@127.0.0.1:1/none"}, tmp_path)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
