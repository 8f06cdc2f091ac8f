"""strategy-engine: runtime shell; /state says what it does not do yet."""

from __future__ import annotations

from typing import Any

from intents_mm.services.runtime import Service


class StrategyEngine(Service):
    name = "strategy-engine"

    def state(self) -> dict[str, Any]:
        return {"implemented": False, "note": "strategy-engine only runs its control API so far"}
