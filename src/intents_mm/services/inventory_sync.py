"""inventory-sync: runtime shell; /state says what it does not do yet."""

from __future__ import annotations

from typing import Any

from intents_mm.services.runtime import Service


class InventorySync(Service):
    name = "inventory-sync"

    def state(self) -> dict[str, Any]:
        return {"implemented": False, "note": "inventory-sync only runs its control API so far"}
