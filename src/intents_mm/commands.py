"""Long-running commands (migrate, run, run-all, simulate, sim-venue, watch, bench).

Kept apart from ``cli.py`` so the quick commands stay light; each handler imports what it needs.
"""

from __future__ import annotations

import argparse
from typing import Any

from intents_mm.errors import IntentsMMError


def _not_built(what: str) -> Any:
    def handler(args: argparse.Namespace) -> int:
        raise IntentsMMError(f"{what} is not built yet")

    return handler


def register(sub: Any) -> None:
    p = sub.add_parser("simulate", help="run the whole system against the simulated venue (play money)")
    p.add_argument("--duration", type=float, default=120.0, help="seconds (default 120)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--scenario", help="scenario TOML file")
    p.add_argument("--summary-json", help="write the end-of-run summary here")
    p.set_defaults(func=_not_built("simulate (needs the simulated venue and the services)"))
