"""history-writer: runtime shell; /state says what it does not do yet."""

from __future__ import annotations

from typing import Any

from intents_mm.services.runtime import Service


class HistoryWriter(Service):
    name = "history-writer"

    def state(self) -> dict[str, Any]:
        return {"implemented": False, "note": "history-writer only runs its control API so far"}
