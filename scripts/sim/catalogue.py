"""Run the scenario catalogue and print what today's strategy scores in each (a markdown table).

For every named scenario (``intents_mm.sim.scenario.BUILTIN_SCENARIOS``) and every seed, runs

    intents-mm simulate --scenario S --seed N --duration D --summary-json <tmp>/S-N.json

one after the other (the seven services on ``--port-base`` .. +6, default 28081, the venue on free
ports), each with its own ``INTENTS_MM_VAR_DIR`` so the runs never touch ``./var``, and prints one
row per run: our trade PnL and flow-adjusted mark-to-market PnL (the history-writer's figures in the
summary), our fills, our markouts at 1 s / 10 s / 60 s and the share of our fills taken by informed
users (the venue's scoreboard), and each competitor's PnL (the scoreboard: Verifier balance change
at the final true price).

    .venv/bin/python scripts/sim/catalogue.py --duration 60
    .venv/bin/python scripts/sim/catalogue.py --duration 20 --seeds 1 --scenarios calm toxic --out table.md

A failed run is a row saying so (with its exit code); the script goes on and exits 1 at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from intents_mm.config import SERVICES, port_var
from intents_mm.sim.scenario import BUILTIN_SCENARIOS

HEADER = (
    "| scenario | seed | trade PnL EURe | flow-adj. MtM PnL EURe | fills | mk 1s | mk 10s | mk 60s "
    "| informed fills | competitors' PnL EUR |"
)


def intents_mm_command() -> list[str]:
    """``intents-mm`` beside this interpreter (the venv's), else ``python -m intents_mm``."""
    exe = Path(sys.executable).parent / "intents-mm"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("intents-mm")
    return [found] if found else [sys.executable, "-m", "intents_mm"]


def run_one(
    scenario: str, seed: int, duration: float, workdir: Path, port_base: int
) -> tuple[dict[str, Any] | None, str]:
    """One ``simulate`` run; ``(summary or None, failure text)``."""
    summary_path = workdir / f"{scenario}-{seed}.json"
    env = dict(os.environ, INTENTS_MM_VAR_DIR=str(workdir / f"var-{scenario}-{seed}"))
    if port_base:
        env.update({port_var(name): str(port_base + i) for i, name in enumerate(SERVICES)})
    cmd = [
        *intents_mm_command(),
        "simulate",
        "--scenario",
        scenario,
        "--seed",
        str(seed),
        "--duration",
        f"{duration:g}",
        "--summary-json",
        str(summary_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not summary_path.exists():
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        return None, f"failed (exit {proc.returncode}): {tail[0][:120]}"
    return json.loads(summary_path.read_text(encoding="utf-8")), ""


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    try:
        return f"{Decimal(str(value)):.{digits}f}"
    except ArithmeticError:
        return str(value)


def row(scenario: str, seed: int, summary: dict[str, Any]) -> str:
    pnl = summary.get("pnl") or {}
    board = summary.get("scoreboard") or {"solvers": []}
    ours = next((r for r in board["solvers"] if r["role"] == "ours"), None)
    competitors = [r for r in board["solvers"] if r["role"] == "competitor"]
    mk = (ours or {}).get("markouts_bps") or {}
    informed = "n/a"
    if ours is not None and ours["fills"]:
        informed = f"{ours['informed_fills']}/{ours['fills']}"
    comp = ", ".join(f"{r['label'].removeprefix('sim-')}: {_fmt(r['pnl_eur'], 4)}" for r in competitors)
    cells = [
        scenario,
        str(seed),
        _fmt(pnl.get("trade_pnl_eure"), 4),
        _fmt(pnl.get("flow_adjusted_mark_to_market_pnl_eure"), 4),
        str(summary.get("settled", "n/a")),
        _fmt(mk.get("1s")),
        _fmt(mk.get("10s")),
        _fmt(mk.get("60s")),
        informed,
        comp or "none",
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of flow per run (default 60)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="default: 1 2 3")
    parser.add_argument("--scenarios", nargs="+", default=list(BUILTIN_SCENARIOS), choices=BUILTIN_SCENARIOS)
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    parser.add_argument(
        "--port-base",
        type=int,
        default=28081,
        help="the seven services' control ports from here (default 28081, away from a running "
        "`intents-mm run-all` or `simulate` on 8081..); 0 = the configured ports",
    )
    parser.add_argument("--keep", help="keep each run's summary JSON in this directory")
    args = parser.parse_args(argv)

    lines = [
        f"Catalogue: {args.duration:g} s of flow per run, seeds {' '.join(map(str, args.seeds))} "
        f"(`scripts/sim/catalogue.py --duration {args.duration:g}`).",
        "",
        HEADER,
        "|" + "|".join("---" for _ in range(HEADER.count("|") - 1)) + "|",
    ]
    failed = 0
    with tempfile.TemporaryDirectory(prefix="intents-mm-catalogue-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for scenario in args.scenarios:
            for seed in args.seeds:
                t0 = time.monotonic()
                print(f"running {scenario} seed {seed} ...", file=sys.stderr, flush=True)
                summary, failure = run_one(scenario, seed, args.duration, workdir, args.port_base)
                if summary is None:
                    failed += 1
                    lines.append(f"| {scenario} | {seed} | {failure} |" + " |" * 7)
                else:
                    lines.append(row(scenario, seed, summary))
                print(f"  done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
