"""liquidity-manager: runtime shell; /state says what it does not do yet."""

from __future__ import annotations

from typing import Any

from intents_mm.services.runtime import Service


class LiquidityManager(Service):
    name = "liquidity-manager"

    def state(self) -> dict[str, Any]:
        return {"implemented": False, "note": "liquidity-manager only runs its control API so far"}
