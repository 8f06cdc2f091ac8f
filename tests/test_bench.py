"""`intents-mm bench` end to end: a subprocess drives the whole system and writes its JSON report.

Correctness only (the report has its fields and quotes were answered); no assertion on speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from intents_mm.bench import CpuSampler, bench_scenario
from intents_mm.domain.assets import AssetRegistry

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
    assert not list(tmp_path.glob("*.sqlite3")), "the bench keeps its history store in a temporary directory"


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
