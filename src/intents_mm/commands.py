"""Long-running commands (migrate, run, run-all, simulate, sim-venue, watch, bench).

Kept apart from ``cli.py`` so the quick commands stay light; each handler imports what it needs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from intents_mm import eventloop
from intents_mm.config import SERVICES
from intents_mm.eventloop import DEFAULT_EVENT_LOOP, EVENT_LOOPS


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def cmd_migrate(args: argparse.Namespace) -> int:
    from intents_mm.config import load_config
    from intents_mm.storage.migrate import migrate, redact_url, resolve_store_url

    config = load_config()
    url = resolve_store_url(config["POSTGRES_URL"], Path(config["INTENTS_MM_VAR_DIR"]))
    applied = asyncio.run(migrate(url))
    if applied:
        print(f"applied {', '.join(applied)} to {redact_url(url)}")
    else:
        print(f"{redact_url(url)} is up to date")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from intents_mm.app import serve
    from intents_mm.config import load_config

    _setup_logging(args.log_level)
    config = load_config()
    return eventloop.run(serve([args.service], config, distributed=True), config["INTENTS_MM_EVENT_LOOP"])


def cmd_run_all(args: argparse.Namespace) -> int:
    from intents_mm.app import serve
    from intents_mm.config import load_config

    _setup_logging(args.log_level)
    config = load_config()
    return eventloop.run(serve(list(SERVICES), config, distributed=False), config["INTENTS_MM_EVENT_LOOP"])


def cmd_sim_venue(args: argparse.Namespace) -> int:
    from intents_mm.sim.scenario import load_scenario
    from intents_mm.sim.venue import DEFAULT_PORT_BASE, run_standalone

    _setup_logging(args.log_level)
    scenario = load_scenario(args.scenario)
    if args.allow_anonymous:
        scenario = scenario.with_allow_anonymous()
    port_base = DEFAULT_PORT_BASE if args.port_base is None else args.port_base
    return asyncio.run(run_standalone(scenario, seed=args.seed, port_base=port_base))


def cmd_simulate(args: argparse.Namespace) -> int:
    from intents_mm.simulate import Simulation, run_simulate, simulation_event_loop

    _setup_logging(args.log_level)
    make: type[Simulation] = Simulation
    if args.distributed:
        from intents_mm.distributed import DistributedSimulation

        make = DistributedSimulation
    return run_simulate(
        duration_s=args.duration,
        seed=args.seed,
        scenario=args.scenario,
        summary_json=args.summary_json,
        make=make,
        event_loop=simulation_event_loop(os.environ, Path(".env")),
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from intents_mm.bench import run_bench

    _setup_logging(args.log_level)
    return run_bench(
        mode=args.mode,
        rate=args.rate,
        duration_s=args.duration,
        seed=args.seed,
        json_path=args.json,
        accept_share=args.accept_share,
        cpu_split=not args.no_cpu_split,
        profile_path=args.profile,
        venue_process=not args.in_process_venue,
        event_loop=args.event_loop,
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "migrate", help="apply history-store migrations (PostgreSQL from POSTGRES_URL, else SQLite)"
    )
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("run", help="run one service (NATS bus, PostgreSQL)")
    p.add_argument("service", choices=SERVICES)
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("run-all", help="run all seven services in one process")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_run_all)

    p = sub.add_parser("simulate", help="run the whole system against the simulated venue (play money)")
    p.add_argument("--duration", type=float, default=120.0, help="seconds (default 120)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--scenario", help="scenario TOML file, or a built-in name (docs/sim-venue.md)")
    p.add_argument("--summary-json", help="write the end-of-run summary here")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="each service in its own process on NATS JetStream and PostgreSQL (the compose/k3s topology)",
    )
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "bench", help="drive quote requests at a constant rate through the simulated venue; latency and CPU"
    )
    p.add_argument("--mode", choices=("memory", "nats"), default="memory", help="bus (default memory)")
    p.add_argument("--rate", type=float, default=200.0, help="quote requests per second (default 200)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of driving (default 20)")
    p.add_argument("--json", help="write the report here as JSON")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--accept-share", type=float, default=0.0, help="share of quotes the user accepts (default 0)"
    )
    p.add_argument("--no-cpu-split", action="store_true", help="do not sample where the CPU time goes")
    p.add_argument("--profile", help="run cProfile over the driving phase and write its statistics here")
    p.add_argument(
        "--in-process-venue",
        action="store_true",
        help="run the simulated venue and the driver in the market maker's process "
        "(default: a child process of their own, like a remote venue)",
    )
    p.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=DEFAULT_EVENT_LOOP,
        help=f"event loop of the market maker's process (default {DEFAULT_EVENT_LOOP})",
    )
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("sim-venue", help="run the simulated venue alone (play money) until Ctrl-C")
    p.add_argument("--scenario", help="scenario TOML file, or a built-in name (docs/sim-venue.md)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="let solvers connect without an API key (solvers built before relay keys existed)",
    )
    p.add_argument("--port-base", type=int, help="first of 8 fixed ports (default 18700); 0 = any free ports")
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=cmd_sim_venue)

    from intents_mm import watch

    p = sub.add_parser(
        "watch", help="tail the live market-maker loop (history store plus every service's /state)"
    )
    watch.add_arguments(p)
    p.set_defaults(func=watch.cmd_watch)
