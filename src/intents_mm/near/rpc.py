"""NEAR JSON-RPC client with endpoint failover (reference section 5).

Every request is a JSON-RPC 2.0 POST with ``id: "dontcare"``. Transport failures (connection
errors, timeouts, HTTP 5xx and 429, bodies that are not JSON-RPC) move on to the next endpoint,
round robin starting at the last endpoint that answered; when every endpoint fails the call raises
``TransportError``. A JSON-RPC ``error`` becomes ``RpcError`` (``code`` = ``cause.name`` when present),
a contract panic becomes ``ContractError``, a missing access key ``UnknownAccessKeyError`` and a
stale transaction nonce ``InvalidNonceError``.

Endpoint URLs are shown in messages as ``host:port`` only (a query string may hold an API key).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp

from intents_mm.errors import ContractError, InputError, RpcError, TransportError
from intents_mm.near.encoding import b58decode, b64encode
from intents_mm.near.keys import PublicKey
from intents_mm.near.transaction import SignedTransaction

log = logging.getLogger(__name__)

DEFAULT_WAIT_UNTIL = "EXECUTED_OPTIMISTIC"
WAIT_UNTIL_VALUES = frozenset(
    {"NONE", "INCLUDED", "INCLUDED_FINAL", "EXECUTED", "EXECUTED_OPTIMISTIC", "FINAL"}
)
FINALITY_VALUES = frozenset({"optimistic", "near-final", "final"})
_MAX_DETAIL = 300


class UnknownAccessKeyError(RpcError):
    """The queried access key does not exist for the account (``UNKNOWN_ACCESS_KEY``)."""


class InvalidNonceError(RpcError):
    """The transaction nonce is not greater than the access key's nonce (``InvalidNonce``)."""

    def __init__(self, message: str, *, code: int | str | None = None, data: object = None) -> None:
        super().__init__(message, code=code, data=data)
        found = _find_key(data, "InvalidNonce")
        self.ak_nonce: int | None = None
        if isinstance(found, dict) and isinstance(found.get("ak_nonce"), int):
            self.ak_nonce = found["ak_nonce"]


class ExpiredTransactionError(RpcError):
    """The transaction's block hash is too old (``Expired``)."""


@dataclass(frozen=True)
class AccessKeyView:
    """``view_access_key`` result. ``block_hash`` is base58 (32 bytes)."""

    nonce: int
    permission: object
    block_height: int
    block_hash: str


@dataclass(frozen=True)
class BlockView:
    height: int
    hash_b58: str


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _find_key(value: object, key: str, depth: int = 0) -> object:
    """Depth-first search for ``key`` in nested dicts/lists; the value found, or ``None``."""
    if depth > 12:
        return None
    if isinstance(value, dict):
        if key in value:
            return value[key]
        items: Sequence[object] = list(value.values())
    elif isinstance(value, list):
        items = value
    else:
        return None
    for item in items:
        found = _find_key(item, key, depth + 1)
        if found is not None:
            return found
    return None


def _mentions(value: object, word: str, depth: int = 0) -> bool:
    """True if ``word`` is a key or an exact string value anywhere in nested dicts/lists."""
    if depth > 12:
        return False
    if isinstance(value, str):
        return value == word
    if isinstance(value, dict):
        return word in value or any(_mentions(v, word, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, word, depth + 1) for v in value)
    return False


def _endpoint_label(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def _require_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RpcError(f"malformed NEAR RPC answer: {what} is not an integer")
    return value


def _require_hash(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise RpcError(f"malformed NEAR RPC answer: {what} is not a string")
    try:
        raw = b58decode(value)
    except InputError:
        raw = b""
    if len(raw) != 32:
        raise RpcError(f"malformed NEAR RPC answer: {what} is not a base58 32-byte hash")
    return value


def _error_from_jsonrpc(method: str, err: object) -> RpcError:
    """Translate a JSON-RPC ``error`` member into the project's error type."""
    if not isinstance(err, dict):
        return RpcError(f"NEAR RPC {method} failed: {_short(err)}", data=err)
    cause = err.get("cause")
    cause_name = cause.get("name") if isinstance(cause, dict) else None
    info = cause.get("info") if isinstance(cause, dict) else None
    raw_code = err.get("code")
    code: int | str | None = (
        cause_name if isinstance(cause_name, str) else raw_code if isinstance(raw_code, int | str) else None
    )
    detail = err.get("data") if err.get("data") is not None else info
    label = cause_name or err.get("name") or err.get("message") or "error"
    message = f"NEAR RPC {method} failed: {label}" + (f": {_short(detail)}" if detail is not None else "")
    if cause_name == "CONTRACT_EXECUTION_ERROR":
        return ContractError(message, code=code, data=err)
    if cause_name == "UNKNOWN_ACCESS_KEY":
        return UnknownAccessKeyError(message, code=code, data=err)
    if _find_key(err, "InvalidNonce") is not None:
        return InvalidNonceError(message, code=code, data=err)
    if _mentions(err, "Expired"):
        return ExpiredTransactionError(message, code=code, data=err)
    return RpcError(message, code=code, data=err)


def _failure_text(failure: object) -> str:
    """The most specific human text inside an outcome ``Failure`` (panic message if any)."""
    for key in ("ExecutionError", "MethodResolveError", "CompilationError", "LinkError"):
        found = _find_key(failure, key)
        if isinstance(found, str):
            return found
    return _short(failure)


def check_execution_outcome(outcome: dict[str, Any]) -> None:
    """Raise ``ContractError`` if the transaction or any receipt outcome has ``Failure`` status."""
    status = outcome.get("status")
    tx_hash = _find_key(outcome.get("transaction"), "hash")
    label = f"transaction {tx_hash}" if isinstance(tx_hash, str) else "transaction"
    if isinstance(status, dict) and "Failure" in status:
        raise ContractError(f"{label} failed: {_failure_text(status['Failure'])}", data=outcome)
    receipts = outcome.get("receipts_outcome")
    if isinstance(receipts, list):
        for receipt in receipts:
            rstatus = _find_key(receipt.get("outcome") if isinstance(receipt, dict) else None, "status")
            if isinstance(rstatus, dict) and "Failure" in rstatus:
                raise ContractError(
                    f"{label} has a failed receipt: {_failure_text(rstatus['Failure'])}", data=outcome
                )


class NearRpcClient:
    """Async NEAR JSON-RPC client over several endpoints with failover.

    Pass ``session`` to share an ``aiohttp.ClientSession`` (it is then not closed by ``close()``).
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout_s: float = 5.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if isinstance(urls, str) or not urls:
            raise InputError("NEAR RPC needs at least one endpoint URL (a list)")
        for url in urls:
            if urlsplit(url).scheme not in ("http", "https"):
                raise InputError(f"NEAR RPC endpoint {_endpoint_label(url)} must be an http(s) URL")
        if timeout_s <= 0:
            raise InputError("NEAR RPC timeout must be positive")
        self._urls = list(urls)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._owns_session = session is None
        self._good = 0

    @property
    def urls(self) -> list[str]:
        return list(self._urls)

    async def __aenter__(self) -> NearRpcClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None if self._owns_session else self._session

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _post_once(self, url: str, body: bytes) -> dict[str, Any]:
        """One POST; ``TransportError`` for anything that another endpoint might do better."""
        session = self._get_session()
        async with session.post(
            url, data=body, headers={"Content-Type": "application/json"}, timeout=self._timeout
        ) as resp:
            raw = await resp.read()
            if resp.status >= 500 or resp.status == 429:
                raise TransportError(f"HTTP {resp.status}")
            try:
                doc = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise TransportError(f"HTTP {resp.status} with a non-JSON body") from None
            if not isinstance(doc, dict) or ("result" not in doc and "error" not in doc):
                raise TransportError(f"HTTP {resp.status} without a JSON-RPC result or error")
            return cast(dict[str, Any], doc)

    async def request(self, method: str, params: object) -> Any:
        """Send one JSON-RPC call; return its ``result`` or raise (see the module docstring)."""
        body = json.dumps(
            {"jsonrpc": "2.0", "id": "dontcare", "method": method, "params": params}, separators=(",", ":")
        ).encode()
        failures: list[str] = []
        n = len(self._urls)
        start = self._good
        for step in range(n):
            index = (start + step) % n
            url = self._urls[index]
            try:
                doc = await self._post_once(url, body)
            except TransportError as exc:
                failures.append(f"{_endpoint_label(url)}: {exc}")
            except TimeoutError:
                failures.append(f"{_endpoint_label(url)}: timed out")
            except aiohttp.ClientError as exc:
                failures.append(f"{_endpoint_label(url)}: {type(exc).__name__}")
            else:
                self._good = index
                if "error" in doc and doc["error"] is not None:
                    raise _error_from_jsonrpc(method, doc["error"])
                return doc.get("result")
            log.warning("NEAR RPC %s failed on %s; trying the next endpoint", method, failures[-1])
        raise TransportError(f"NEAR RPC {method}: all {n} endpoints failed ({'; '.join(failures)})")

    # ------------------------------------------------------------------------------ typed calls

    async def call_function(
        self, account_id: str, method_name: str, args: dict[str, Any], *, finality: str = "final"
    ) -> tuple[object, int]:
        """View call; returns (decoded JSON result, block height). Empty result → ``None``."""
        if finality not in FINALITY_VALUES:
            raise InputError(f"unknown finality {finality!r}")
        args_b64 = b64encode(json.dumps(args, separators=(",", ":")).encode())
        params = {
            "request_type": "call_function",
            "finality": finality,
            "account_id": account_id,
            "method_name": method_name,
            "args_base64": args_b64,
        }
        where = f"{account_id}.{method_name}"
        result = await self.request("query", params)
        if not isinstance(result, dict):
            raise RpcError(f"malformed NEAR RPC answer to {where}: result is not an object")
        if isinstance(result.get("error"), str):
            raise ContractError(f"{where} failed: {_short(result['error'])}", data=result)
        data = result.get("result")
        if not isinstance(data, list) or not all(
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in data
        ):
            raise RpcError(f"malformed NEAR RPC answer to {where}: result.result is not a byte array")
        height = _require_int(result.get("block_height"), "block_height")
        raw = bytes(data)
        if not raw:
            return None, height
        try:
            return json.loads(raw), height
        except (ValueError, UnicodeDecodeError):
            raise RpcError(f"{where} returned non-JSON bytes: {_short(raw[:80].hex())}") from None

    async def view_access_key(
        self, account_id: str, public_key: PublicKey | str, *, finality: str = "final"
    ) -> AccessKeyView:
        key = public_key.to_string() if isinstance(public_key, PublicKey) else public_key
        params = {
            "request_type": "view_access_key",
            "finality": finality,
            "account_id": account_id,
            "public_key": key,
        }
        result = await self.request("query", params)
        if not isinstance(result, dict):
            raise RpcError("malformed NEAR RPC answer to view_access_key: result is not an object")
        if isinstance(result.get("error"), str):  # older nodes: error string inside a normal result
            text = result["error"]
            if "does not exist" in text:
                raise UnknownAccessKeyError(
                    f"access key {key} does not exist for {account_id}",
                    code="UNKNOWN_ACCESS_KEY",
                    data=result,
                )
            raise RpcError(f"view_access_key failed: {_short(text)}", data=result)
        permission = result.get("permission")
        if not (permission == "FullAccess" or isinstance(permission, dict)):
            raise RpcError("malformed NEAR RPC answer to view_access_key: bad permission")
        return AccessKeyView(
            nonce=_require_int(result.get("nonce"), "access key nonce"),
            permission=permission,
            block_height=_require_int(result.get("block_height"), "block_height"),
            block_hash=_require_hash(result.get("block_hash"), "block_hash"),
        )

    async def block(self, finality: str = "final") -> BlockView:
        result = await self.request("block", {"finality": finality})
        header = result.get("header") if isinstance(result, dict) else None
        if not isinstance(header, dict):
            raise RpcError("malformed NEAR RPC answer to block: no header")
        return BlockView(
            height=_require_int(header.get("height"), "block height"),
            hash_b58=_require_hash(header.get("hash"), "block hash"),
        )

    def _outcome(self, method: str, result: object) -> dict[str, Any]:
        if not isinstance(result, dict):
            raise RpcError(f"malformed NEAR RPC answer to {method}: result is not an object")
        outcome = cast(dict[str, Any], result)
        check_execution_outcome(outcome)
        return outcome

    async def send_tx(
        self, signed: SignedTransaction, wait_until: str = DEFAULT_WAIT_UNTIL
    ) -> dict[str, Any]:
        """Submit a signed transaction; the FinalExecutionOutcome (``ContractError`` on any Failure)."""
        if wait_until not in WAIT_UNTIL_VALUES:
            raise InputError(f"unknown wait_until {wait_until!r}")
        params = {"signed_tx_base64": signed.to_base64(), "wait_until": wait_until}
        return self._outcome("send_tx", await self.request("send_tx", params))

    async def tx_status(
        self, tx_hash: str, sender_account_id: str, wait_until: str = DEFAULT_WAIT_UNTIL
    ) -> dict[str, Any]:
        """Status of a submitted transaction (method ``tx``); ``ContractError`` on any Failure."""
        if wait_until not in WAIT_UNTIL_VALUES:
            raise InputError(f"unknown wait_until {wait_until!r}")
        params = {"tx_hash": tx_hash, "sender_account_id": sender_account_id, "wait_until": wait_until}
        return self._outcome("tx", await self.request("tx", params))

    async def broadcast_tx_commit(self, signed: SignedTransaction) -> dict[str, Any]:
        """Legacy submit (params ``[base64]``); ``ContractError`` on any Failure."""
        result = await self.request("broadcast_tx_commit", [signed.to_base64()])
        return self._outcome("broadcast_tx_commit", result)
