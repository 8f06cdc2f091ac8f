"""`intents-mm bench` end to end: a subprocess drives the whole system and writes its JSON report.

Correctness only (the report has its fields and quotes were answered); no assertion on speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from intents_mm.bench import CpuSampler, bench_scenario, overload_figures
from intents_mm.bench_venue import VenueProcess
from intents_mm.domain.assets import AssetRegistry
from intents_mm.errors import IntentsMMError

REPORT_FIELDS = (
    "mode",
    "rate_per_s",
    "duration_s",
    "sent",
    "answered",
    "dropped",
    "rejected_by_relay",
    "latency_ms",
    "cpu",
    "strategy",
    "executor_outcomes",
)


def _run_bench(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "intents_mm", "bench", "--json", str(out), *extra],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, object] = json.loads(out.read_text(encoding="utf-8"))
    return proc, report


def test_bench_in_process_venue_still_works(tmp_path: Path) -> None:
    proc, report = _run_bench(tmp_path, "--in-process-venue", "--duration", "2", "--rate", "50")
    assert report["venue"] == "in-process"
    assert report["sent"] == 100
    assert isinstance(report["answered"], int) and report["answered"] > 0
    assert report["venue_cpu"] is None
    assert "venue in-process" in proc.stdout and "whole process" in proc.stdout


def test_bench_memory_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "intents_mm",
            "bench",
            "--duration",
            "3",
            "--rate",
            "50",
            "--json",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    for name in REPORT_FIELDS:
        assert name in report, name
    assert report["mode"] == "memory"
    assert report["venue"] == "process", "the venue runs in a child process by default"
    assert report["sent"] == 150
    assert report["answered"] > 0
    assert report["answered"] + report["dropped"] == report["sent"]
    lat = report["latency_ms"]
    assert set(lat) >= {"p50", "p90", "p99", "max"}
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    cpu = report["cpu"]
    assert cpu["process_s"] > 0 and cpu["per_answered_quote_us"] > 0
    assert report["executor_outcomes"]["accepted"] >= report["answered"] - report["rejected_by_relay"]
    assert "p50" in proc.stdout and "dropped" in proc.stdout
    over = report["overload"]
    assert over["requests"] == 150 and over["answered"] == report["answered"]
    assert over["unaccounted"] == 0, over  # every request answered or declined with a reason
    assert over["pauses"] == {"venue_error_pauses": 0, "pause_declines": 0}
    assert "overload" in proc.stdout and "answered latency ms" in proc.stdout
    ours = over["our_side_ms"]
    assert 0 <= ours["p50"] <= ours["p99"] <= ours["max"]
    assert not list(tmp_path.glob("*.sqlite3")), "the bench keeps its history store in a temporary directory"
    venue_cpu = report["venue_cpu"]
    assert venue_cpu["process_s"] > 0 and venue_cpu["per_answered_quote_us"] > 0
    assert "market maker's process only" in proc.stdout and "venue process CPU" in proc.stdout
    with pytest.raises(ProcessLookupError):  # the child venue process was stopped
        os.kill(venue_cpu["pid"], 0)


async def test_venue_process_serves_loopback_refuses_bad_drive_and_stops_on_sigterm() -> None:
    venue = VenueProcess()
    try:
        env = await venue.start(seed=3)
        assert env["NEAR_INTENTS_RELAY_WS_URL"].startswith("ws://127.0.0.1:")
        assert venue.control_url.startswith("http://127.0.0.1:")
        assert await venue.samples() == []
        with pytest.raises(IntentsMMError, match="HTTP 400"):
            await venue.drive(
                rate=-1, duration_s=1, accept_share=0, min_notional=Decimal(1), max_notional=Decimal(4)
            )
    finally:
        code = await venue.stop()
    assert code == 0, "SIGTERM stops the venue cleanly"
    assert venue.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(venue.pid, 0)


def test_bench_scenario_has_no_competitors_or_jumps_and_funds_the_market_maker() -> None:
    s = bench_scenario()
    assert s.solvers == ()
    assert s.price.jump_rate_per_hour == 0
    pair = AssetRegistry.default().active_pair
    assert s.market_maker.balances[pair.base.token_id] == 10 * 10**8
    assert s.market_maker.balances[pair.quote.token_id] == 1_000_000 * 10**18


def test_cpu_sampler_attributes_frames_by_module() -> None:
    sampler = CpuSampler()
    assert sampler._classify(sys._getframe()) == "other"  # a test frame: neither venue nor market maker
    assert sampler.shares() == {}
    sampler.counts.update({"venue": 1, "market_maker": 3})
    assert sampler.shares() == {"market_maker": 0.75, "venue": 0.25}
    assert sampler.top_tasks() == {}
    sampler.by_task.update({"market_maker solver-relay-reader": 3, "venue relay-ws-writer-1": 1})
    assert sampler.top_tasks(1) == {"market_maker solver-relay-reader": 0.75}


def test_overload_figures_account_for_every_request_where_it_was_declined() -> None:
    over = overload_figures(
        sent=100,
        answered=60,
        ingest_quotes={"received": 100, "published": 80, "shed_overload": 15, "relay_window_passed": 5},
        strategy={
            "declined_by_reason": {"shed_overload": 10, "venue_errors": 2},
            "counters": {"venue_error_pauses": 1, "late_rejections": 4},
        },
        executor_counts={"accepted": 58, "rejected": 2, "dropped_late": 6, "error": 1},
    )
    assert over["declined_by_reason"] == {
        "executor:dropped_late": 6,
        "ingest:relay_window_passed": 5,
        "ingest:shed_overload": 15,
        "strategy:shed_overload": 10,
        "strategy:venue_errors": 2,
    }
    assert (over["declined"], over["unaccounted"]) == (38, 2)  # 100 - 60 answered - 38 declined
    assert over["pauses"] == {"venue_error_pauses": 1, "pause_declines": 2}
    assert (over["late_rejections"], over["executor_errors"]) == (4, 1)
