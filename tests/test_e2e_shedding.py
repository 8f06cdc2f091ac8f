"""End to end: our own lateness is not a venue error (issue 13 item 5), over real sockets.

A running, armed market maker (``simulate``'s composition, memory bus) against the simulated venue
without competing solvers, so every relay answer injected below lands on our quotes. The relay first
refuses six of our quotes with its own "window closed" text (what it answers to a late
``quote_response``): quoting goes on, no venue-error pause. Then it refuses three with a genuine
error: the venue-error pause trips and its declines carry the reason. Every invariant of
:func:`e2e_kit.check_invariants` holds afterwards.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from e2e_kit import E2ERun, InProcessRun, e2e_scenario, exercise, wait_accepted, wait_for

pytestmark = pytest.mark.slow

LATE = "quote window closed: quote_id q no longer accepts responses"


async def test_late_rejections_never_pause_quoting_and_venue_errors_still_do(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def drill(run: E2ERun) -> None:
        assert run.venue is not None
        relay = run.venue.relay
        await wait_accepted(run, 2, what="quotes before the late rejections")

        def injected() -> int:
            count: int = relay.stats()["counts"].get("faults_injected", 0)
            return count

        relay.fail_next_responses(6, LATE)
        await wait_for(lambda: injected() == 6, timeout_s=20, what="six late rejections")
        await wait_accepted(run, 3, what="quotes after the late rejections")
        seen["after_late"] = await run.state("strategy-engine")

        relay.fail_next_responses(3, "relay overloaded")
        await wait_for(lambda: injected() == 9, timeout_s=20, what="three venue errors")

        async def paused() -> bool:
            st = await run.state("strategy-engine")
            return bool(st["declined_by_reason"].get("venue_errors", 0) >= 1)

        await wait_for(paused, timeout_s=20, what="the venue-error pause to decline a request")
        seen["after_errors"] = await run.state("strategy-engine")

    scenario = e2e_scenario(rate_per_s=8.0)
    scenario = dataclasses.replace(scenario, solvers=())
    run = InProcessRun(tmp=tmp_path, scenario=scenario)
    ex = await exercise(run, drill=drill)
    late = seen["after_late"]
    assert late["counters"]["late_rejections"] == 6
    assert late["counters"]["venue_error_pauses"] == 0 and "venue_errors" not in late["declined_by_reason"]
    errors = seen["after_errors"]
    assert errors["counters"]["venue_error_pauses"] == 1
    assert errors["counters"]["late_rejections"] == 6
    assert ex.states["trade-executor"]["counts"]["rejected"] == 9
