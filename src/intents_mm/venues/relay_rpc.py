"""Solver Relay frontend JSON-RPC client (``POST <relay>/rpc``) — the live adapter for ``publish_intents``.

Wire format (protocol reference 2.2 and 4.3): ``{"jsonrpc":"2.0","id":1,"method":"publish_intents",
"params":[{"quote_hashes":[…],"signed_datas":[…]}]}``; the answer's ``result`` is
``{"status":"OK","intent_hashes":[…]}`` or ``{"status":"FAILED","reason":"…","intent_hashes":[…]}``.
The docs ask for ``X-API-Key: <key>``, the official SDK sends ``Authorization: Bearer <key>``: both are
sent when a key is configured.

The market maker uses it for one thing: cancelling its own signed quotes by publishing, with the same
key and nonce, payloads whose ``intents`` is empty (the official SDK's way; the relay then refuses
those nonces). Errors: no answer, a connection failure or HTTP 5xx → :class:`TransportError`; a JSON-RPC
error object, an HTTP 4xx or a malformed answer → :class:`RpcError`. A ``FAILED`` status is not an
error: it is returned as :class:`PublishResult` with its reason.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from intents_mm.errors import InputError, RpcError, TransportError

__all__ = ["PublishResult", "RelayRpcClient"]


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


@dataclass(frozen=True)
class PublishResult:
    """The relay's answer to one ``publish_intents``: ``ok`` with the intent hashes, or the reason."""

    ok: bool
    reason: str | None
    intent_hashes: tuple[str, ...]


class RelayRpcClient:
    """``publish_intents`` on the relay's frontend JSON-RPC at ``url``; owns its HTTP session."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 5.0) -> None:
        if timeout_s <= 0:
            raise InputError("relay RPC timeout_s must be positive")
        self.url = URL(url)
        if self.url.scheme not in ("http", "https") or not self.url.host:
            raise InputError(f"relay RPC URL must be http(s)://host/…, got {url!r}")
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
            self._headers["X-API-Key"] = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)

    def __repr__(self) -> str:  # never shows the key
        return f"RelayRpcClient(url={str(self.url)!r})"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call; returns ``result`` or raises (see the module docstring)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = json.dumps(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params},
            separators=(",", ":"),
        )
        try:
            async with self._session.post(
                self.url, data=body, headers=self._headers, timeout=self._timeout
            ) as resp:
                status, raw = resp.status, await resp.read()
        except TimeoutError:
            raise TransportError(f"relay {method}: no answer within {self._timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"relay {method}: {type(exc).__name__}: {_one_line(str(exc))}") from None
        text = raw.decode("utf-8", "replace")
        if status >= 500:
            raise TransportError(f"relay {method}: HTTP {status}: {_one_line(text)}")
        try:
            doc = json.loads(text)
        except ValueError:
            raise RpcError(f"relay {method}: HTTP {status}, body is not JSON: {_one_line(text)}") from None
        if not isinstance(doc, dict):
            raise RpcError(f"relay {method}: the answer is not a JSON object")
        error = doc.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            code = error.get("code") if isinstance(error, dict) else status
            raise RpcError(f"relay {method}: {_one_line(str(message))}", code=code, data=error)
        if status != 200:
            raise RpcError(f"relay {method}: HTTP {status}: {_one_line(text)}", code=status)
        if "result" not in doc:
            raise RpcError(f"relay {method}: neither result nor error in the answer")
        return doc["result"]

    async def publish_intents(
        self, signed_datas: list[dict[str, Any]], quote_hashes: list[str] | None = None
    ) -> PublishResult:
        """Publish signed payloads (all in one call); a ``FAILED`` status comes back with its reason."""
        if not signed_datas:
            raise InputError("publish_intents needs at least one signed payload")
        result = await self.call(
            "publish_intents", [{"quote_hashes": list(quote_hashes or []), "signed_datas": signed_datas}]
        )
        if not isinstance(result, dict) or result.get("status") not in ("OK", "FAILED"):
            raise RpcError("relay publish_intents: result has no status OK/FAILED")
        hashes = result.get("intent_hashes")
        if hashes is None and isinstance(result.get("intent_hash"), str):
            hashes = [result["intent_hash"]]
        if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
            hashes = []
        reason = result.get("reason")
        return PublishResult(
            ok=result["status"] == "OK",
            reason=_one_line(str(reason)) if reason is not None else None,
            intent_hashes=tuple(hashes),
        )
