"""trade-executor: runtime shell; /state says what it does not do yet."""

from __future__ import annotations

from typing import Any

from intents_mm.services.runtime import Service


class TradeExecutor(Service):
    name = "trade-executor"

    def state(self) -> dict[str, Any]:
        return {"implemented": False, "note": "trade-executor only runs its control API so far"}
