"""near-intents-ingest: runtime shell; /state says what it does not do yet."""

from __future__ import annotations

from typing import Any

from intents_mm.services.runtime import Service


class NearIntentsIngest(Service):
    name = "near-intents-ingest"

    def state(self) -> dict[str, Any]:
        return {"implemented": False, "note": "near-intents-ingest only runs its control API so far"}
