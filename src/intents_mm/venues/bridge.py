"""PoA bridge (Passive Deposit/Withdrawal Service) JSON-RPC client — the live adapter.

Wire format (protocol reference section 6): ``POST <url>?method=<name>`` with body
``{"jsonrpc":"2.0","id":"dontcare","method":<name>,"params":[{…}]}``, like the official SDK. Replies are
``{"result":…}`` or ``{"error":"<plain string>"}``; this module is the one place that knows the shapes
and translates them into typed, frozen dataclasses with ``int`` amounts.

Contract:

* Amounts are parsed exactly: JSON is read with ``json.loads`` (integers arbitrary precision, other
  numbers as ``Decimal`` from their raw text, no float ever). An amount in smallest units is a JSON
  integer, a digit string, or a JSON number whose value is whole in any form (``1.5e8``, ``1e+21``);
  a fractional value or another string is malformed → :class:`RpcError`. All must fit u128.
* Token minimums and fees (``supported_tokens``, the estimate's ``token``): digit strings / integers are
  smallest units; a decimal string (``"0.001"``, the docs' example) or fractional JSON number is in
  whole units of the asset and converted exactly; more decimals than the asset has → :class:`RpcError`.
  Withdrawal minimums come from ``supported_tokens`` (:meth:`BridgeClient.supported_token`), as in the
  SDK; the estimate's ``token`` is informational (:class:`EstimateToken`, every field optional).
* ``recent_deposits``: a bad entry is skipped and reported in :attr:`DepositPage.skipped`, never
  failing the page; ``tx_hash`` ("EVM networks only") and ``near_token_id`` are optional, and
  :attr:`Deposit.deposit_id` gives a stable id either way. ``notify_deposit`` accepts a reply
  without ``result`` (the docs' example).
* A plain-string (or JSON-RPC object) ``error`` → :class:`RpcError`; its ``data`` holds the bridge's
  raw message. HTTP 5xx, any other non-200 answer without an error body, connection failures and
  timeouts → :class:`TransportError` (retryable). Malformed 200 replies → :class:`RpcError`.
* ``withdrawal_status`` accepts both the SDK list shape ``{"withdrawals":[{status,data}]}`` and the
  docs shape ``{status,data}`` (``data.near_token_id`` optional), and maps the transient
  ``"Withdrawals not found"`` error to a :attr:`WithdrawalState.NOT_FOUND` status instead of raising.
* Deposit addresses returned for ``btc:mainnet`` and EVM chains are checked with
  :func:`intents_mm.domain.addresses.validate_destination` before they are handed out.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn

import aiohttp
from yarl import URL

from intents_mm.domain.addresses import validate_destination
from intents_mm.domain.assets import U128_MAX
from intents_mm.errors import InputError, RpcError, TransportError

log = logging.getLogger(__name__)

__all__ = [
    "BridgeClient",
    "BridgeToken",
    "Deposit",
    "DepositAddress",
    "DepositPage",
    "DepositStatus",
    "EstimateToken",
    "WithdrawalData",
    "WithdrawalEstimate",
    "WithdrawalState",
    "WithdrawalStatus",
]

WITHDRAWALS_NOT_FOUND = "Withdrawals not found"


class DepositStatus(enum.StrEnum):
    PENDING = "PENDING"  # seen on the external chain, not yet minted: not spendable
    CREDITED = "CREDITED"  # minted to the account on intents.near: spendable
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class WithdrawalState(enum.StrEnum):
    PENDING = "PENDING"
    AWAITING = "AWAITING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    RETURNING = "RETURNING"
    RETURNED = "RETURNED"
    NOT_FOUND = "NOT_FOUND"  # also what the transient "Withdrawals not found" error maps to

    @property
    def is_final(self) -> bool:
        """True when the bridge will not change this withdrawal any more."""
        return self in (
            WithdrawalState.COMPLETED,
            WithdrawalState.FAILED,
            WithdrawalState.REJECTED,
            WithdrawalState.RETURNED,
        )


@dataclass(frozen=True, slots=True)
class BridgeToken:
    defuse_asset_identifier: str
    near_token_id: str  # unprefixed NEAR contract, e.g. "btc.omft.near"
    intents_token_id: str  # Verifier asset id, e.g. "nep141:btc.omft.near" ("nep141:"+near id if absent)
    standard: str
    asset_name: str
    decimals: int
    min_deposit_amount: int
    min_withdrawal_amount: int
    withdrawal_fee: int
    multi_token_id: str | None = None


@dataclass(frozen=True, slots=True)
class DepositAddress:
    address: str
    chain: str
    memo: str | None = None


@dataclass(frozen=True, slots=True)
class Deposit:
    tx_hash: str | None  # the docs: "EVM networks only"; absent, null or "" elsewhere (BTC) -> None
    chain: str
    defuse_asset_identifier: str
    near_token_id: str | None  # the SDK's field; the docs' example has only defuse_asset_identifier
    decimals: int
    amount: int
    account_id: str
    address: str
    status: DepositStatus
    mint_tx_hash: str | None = None
    created_at: str | None = None
    from_address: str | None = None  # wire field "from"

    @property
    def deposit_id(self) -> str:
        """A stable id: the transaction hash, or (none given) ``nohash:`` + 32 hex of a SHA-256 over
        chain, asset, deposit address, amount and ``created_at`` (fields that do not change with the
        status). Two hash-less deposits of the same amount to the same address without ``created_at``
        share an id."""
        if self.tx_hash:
            return self.tx_hash
        parts = (
            self.chain,
            self.defuse_asset_identifier,
            self.address,
            str(self.amount),
            self.created_at or "",
        )
        return "nohash:" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class DepositPage:
    deposits: tuple[Deposit, ...]
    total: int
    limit: int
    offset: int
    skipped: tuple[str, ...] = ()  # one line per entry that could not be parsed (left out of deposits)


@dataclass(frozen=True, slots=True)
class EstimateToken:
    """The ``token`` object of a ``withdrawal_estimate`` reply: informational only.

    The docs' example carries only some of the ``supported_tokens`` fields (and ``min_deposit_amount``
    as a decimal in whole units, ``"0.001"``); the SDK types it differently again. Minimums are taken
    from ``supported_tokens`` (:meth:`BridgeClient.supported_token`), as the SDK does.
    """

    near_token_id: str | None = None
    defuse_asset_identifier: str | None = None
    asset_name: str | None = None
    decimals: int | None = None
    min_deposit_amount: int | None = None
    min_withdrawal_amount: int | None = None
    withdrawal_fee: int | None = None


@dataclass(frozen=True, slots=True)
class WithdrawalEstimate:
    token_address: str
    user_address: str
    withdrawal_fee: int
    withdrawal_fee_decimals: int
    token: EstimateToken


@dataclass(frozen=True, slots=True)
class WithdrawalData:
    tx_hash: str  # the NEAR transaction that burned the tokens
    transfer_tx_hash: str | None  # the destination-chain transaction (set once COMPLETED)
    chain: str
    defuse_asset_identifier: str
    near_token_id: str | None  # the SDK's field; the docs' example leaves it out
    decimals: int
    amount: int  # burned, including the fee
    account_id: str
    address: str  # destination
    created_at: str | None = None  # "created_at" (docs) or "created" (SDK)
    withdrawal_fee: int | None = None
    withdraw_amount: int | None = None  # amount − withdrawal_fee, what reaches the destination


@dataclass(frozen=True, slots=True)
class WithdrawalStatus:
    withdrawal_hash: str
    status: WithdrawalState
    data: WithdrawalData | None = None  # None for NOT_FOUND


class _Reply:
    """Typed field access to one JSON object of a reply; every defect is an RpcError naming the field."""

    def __init__(self, method: str, obj: object, where: str) -> None:
        if not isinstance(obj, dict):
            _malformed(method, f"{where} is not an object")
        self._m = method
        self._o: dict[str, Any] = obj
        self._w = where

    def _bad(self, key: str, why: str) -> NoReturn:
        _malformed(self._m, f"{self._w}.{key} {why}")

    def has(self, key: str) -> bool:
        return self._o.get(key) is not None

    def raw(self, key: str) -> object:
        return self._o.get(key)

    def text(self, key: str) -> str:
        value = self._o.get(key)
        if not isinstance(value, str):
            self._bad(key, "is missing or not a string")
        return value

    def opt_str(self, key: str) -> str | None:
        value = self._o.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self._bad(key, "is not a string")
        return value

    def integer(self, key: str) -> int:
        value = self._o.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            self._bad(key, "is missing or not an integer")
        return value

    def decimals(self, key: str = "decimals") -> int:
        """A token precision: an integer within 0..38 (u128 holds 38 full decimal digits)."""
        value = self.integer(key)
        if not 0 <= value <= 38:
            self._bad(key, f"{value} is outside 0..38")
        return value

    def opt_text(self, key: str) -> str | None:
        """A string field that may be absent, ``null`` or empty (all three are ``None``)."""
        return self.opt_str(key) or None

    def amount(self, key: str) -> int:
        """A u128 amount in smallest units: a JSON integer, a JSON number in any form whose value is a
        whole number (``1.5e8``, ``1e+21``: exact, from the raw text), or a string of digits."""
        value = self._o.get(key)
        if isinstance(value, Decimal):
            whole = _whole_number(value)
            if whole is None:
                self._bad(key, f"is {value}, not a whole number of smallest units")
            value = whole
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 39:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self._bad(key, "is missing or not an integer amount")
        if not 0 <= value <= U128_MAX:
            self._bad(key, "is out of the u128 range")
        return value

    def opt_amount(self, key: str) -> int | None:
        return None if self._o.get(key) is None else self.amount(key)

    def token_amount(self, key: str, decimals: int) -> int:
        """A token's minimum or fee: smallest units as :meth:`amount` takes them, or a decimal in the
        asset's whole units (``"0.001"`` as in the docs' example, or the older docs' JSON ``0.001``),
        converted exactly; more fractional digits than ``decimals`` allows are refused."""
        value = self._o.get(key)
        text: str | None = None
        if isinstance(value, str) and "." in value:
            text = value
        elif isinstance(value, Decimal) and _whole_number(value) is None:
            exponent = value.as_tuple().exponent
            if not isinstance(exponent, int) or exponent < -80:
                self._bad(key, f"is {value}, not a decimal amount")
            text = format(value, "f")
        if text is None:
            return self.amount(key)
        match = _DECIMAL.fullmatch(text)
        if match is None:
            self._bad(key, f"is {text[:40]!r}, not a decimal amount")
        whole, frac = match.group(1), match.group(2)
        if len(frac.rstrip("0")) > decimals:
            self._bad(key, f"{text} has more than {decimals} decimals")
        frac = frac[:decimals] if len(frac) > decimals else frac
        units: int = int(whole) * 10**decimals + int(frac.ljust(decimals, "0") or "0")
        if units > U128_MAX:
            self._bad(key, "is out of the u128 range")
        return units

    def opt_token_amount(self, key: str, decimals: int) -> int | None:
        return None if self._o.get(key) is None else self.token_amount(key, decimals)


_DECIMAL = re.compile(r"([0-9]{1,39})\.([0-9]{1,80})")


def _whole_number(value: Decimal) -> int | None:
    """The exact int a finite, non-negative Decimal stands for, or None if it has a fractional part.

    Works on the digits and exponent, never on a context (no rounding); exponents that could not fit
    u128 are not expanded (the caller's range check refuses them)."""
    if not value.is_finite():
        return None
    if value.is_zero():
        return 0
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if value.adjusted() > 40 or len(digits) > 120:  # far outside u128 (or absurd): never expanded
        return -1 if sign else U128_MAX + 1
    text = "".join(map(str, digits))
    if exponent >= 0:
        whole: int = int(text) * 10**exponent
    else:
        if text[exponent:].strip("0"):
            return None
        whole = int(text[:exponent] or "0")
    return -whole if sign else whole


def _malformed(method: str, why: str) -> NoReturn:
    raise RpcError(f"bridge {method}: malformed reply: {why}", data=why)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"non-finite number {name}")


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


def _is_withdrawals_not_found(message: object) -> bool:
    return isinstance(message, str) and message.strip().lower() in (
        WITHDRAWALS_NOT_FOUND.lower(),
        "withdrawal not found",
    )


class BridgeClient:
    """Client for the PoA bridge JSON-RPC at ``url`` (e.g. ``https://bridge.chaindefuser.com/rpc``).

    ``session`` is owned by the caller; every call is bounded by ``timeout_s``.
    """

    def __init__(self, url: str, session: aiohttp.ClientSession, timeout_s: float = 10.0) -> None:
        if timeout_s <= 0:
            raise InputError("bridge timeout_s must be positive")
        self._url = URL(url)
        if self._url.scheme not in ("http", "https") or not self._url.host:
            raise InputError(f"bridge URL must be http(s)://host/…, got {url!r}")
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s

    # --- transport ---------------------------------------------------------------------------------

    async def call(self, method: str, params: dict[str, Any], *, result_optional: bool = False) -> Any:
        """One raw JSON-RPC call; returns ``result`` (ints exact, other numbers as ``Decimal`` made from
        their raw text, never a float) or raises. With ``result_optional`` a reply with neither
        ``result`` nor ``error`` (the docs' ``notify_deposit`` example) returns ``None``."""
        url = self._url.update_query(method=method)
        body = json.dumps({"jsonrpc": "2.0", "id": "dontcare", "method": method, "params": [params]})
        try:
            async with self._session.post(
                url, data=body, headers={"Content-Type": "application/json"}, timeout=self._timeout
            ) as resp:
                status = resp.status
                raw = await resp.read()
        except TimeoutError:
            raise TransportError(f"bridge {method}: no answer within {self._timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"bridge {method}: {type(exc).__name__}: {_one_line(str(exc))}") from None
        if status >= 500:
            raise TransportError(
                f"bridge {method}: HTTP {status}: {_one_line(raw.decode('utf-8', 'replace'))}"
            )
        try:
            doc = json.loads(raw.decode("utf-8"), parse_float=Decimal, parse_constant=_reject_constant)
        except ValueError:
            if status != 200:
                raise TransportError(f"bridge {method}: HTTP {status}") from None
            _malformed(method, "body is not JSON")
        if not isinstance(doc, dict):
            _malformed(method, "body is not a JSON object")
        error = doc.get("error")
        if error is not None:
            if isinstance(error, dict):  # tolerate a standard JSON-RPC error object
                message = error.get("message") if isinstance(error.get("message"), str) else json.dumps(error)
                code = error.get("code") if isinstance(error.get("code"), (int, str)) else None
                raise RpcError(f"bridge {method}: {_one_line(str(message))}", code=code, data=message)
            text = error if isinstance(error, str) else json.dumps(error, default=str)
            raise RpcError(f"bridge {method}: {_one_line(text)}", code=status, data=text)
        if status != 200:
            raise TransportError(f"bridge {method}: HTTP {status}")
        if "result" not in doc:
            if result_optional:
                return None
            _malformed(method, "neither result nor error")
        result = doc["result"]
        if isinstance(result, dict) and isinstance(result.get("error"), str) and result["error"]:
            raise RpcError(
                f"bridge {method}: {_one_line(result['error'])}", code=status, data=result["error"]
            )
        return result

    # --- typed methods -----------------------------------------------------------------------------

    async def supported_tokens(self, chains: list[str] | None = None) -> tuple[BridgeToken, ...]:
        """Tokens the bridge handles (optionally only on ``chains``), with minimums and fees."""
        params: dict[str, Any] = {} if chains is None else {"chains": list(chains)}
        reply = _Reply("supported_tokens", await self.call("supported_tokens", params), "result")
        tokens = reply.raw("tokens")
        if not isinstance(tokens, list):
            _malformed("supported_tokens", "result.tokens is not an array")
        return tuple(_token("supported_tokens", t, f"tokens[{i}]") for i, t in enumerate(tokens))

    async def supported_token(self, intents_token_id: str, chain: str) -> BridgeToken:
        """The ``supported_tokens`` entry of ``intents_token_id`` on ``chain``: where the minimums and the
        listed fee come from (the SDK's ``validateWithdrawal`` reads ``min_withdrawal_amount`` here).

        Only that entry is parsed, so a malformed entry for another token does not matter; not listed
        → :class:`RpcError`."""
        _require(intents_token_id=intents_token_id, chain=chain)
        reply = _Reply("supported_tokens", await self.call("supported_tokens", {"chains": [chain]}), "result")
        tokens = reply.raw("tokens")
        if not isinstance(tokens, list):
            _malformed("supported_tokens", "result.tokens is not an array")
        for i, item in enumerate(tokens):
            if not isinstance(item, dict):
                continue
            near = item.get("near_token_id")
            listed = item.get("intents_token_id") or (f"nep141:{near}" if isinstance(near, str) else None)
            if listed == intents_token_id:
                return _token("supported_tokens", item, f"tokens[{i}]")
        raise RpcError(f"bridge supported_tokens: {intents_token_id} is not listed on {chain}")

    async def deposit_address(self, account_id: str, chain: str) -> DepositAddress:
        """The address on ``chain`` whose deposits are credited to ``account_id`` on intents.near."""
        _require(account_id=account_id, chain=chain)
        result = await self.call("deposit_address", {"account_id": account_id, "chain": chain})
        reply = _Reply("deposit_address", result, "result")
        got = DepositAddress(
            address=reply.text("address"), chain=reply.text("chain"), memo=reply.opt_str("memo")
        )
        if got.chain != chain:
            _malformed("deposit_address", f"asked for chain {chain}, got {got.chain}")
        if chain == "btc:mainnet" or chain.startswith("eth:"):
            try:
                validate_destination(chain, got.address)
            except InputError as exc:
                _malformed("deposit_address", f"address is not valid on {chain}: {exc}")
        return got

    async def recent_deposits(
        self,
        account_id: str,
        chain: str | None = None,
        status: DepositStatus | str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> DepositPage:
        """Recent deposits to ``account_id`` (newest first as the bridge orders them); limit 1..100."""
        _require(account_id=account_id)
        if not 1 <= limit <= 100 or offset < 0:
            raise InputError("recent_deposits: limit must be within 1..100 and offset not negative")
        params: dict[str, Any] = {"account_id": account_id, "limit": limit, "offset": offset}
        if chain is not None:
            params["chain"] = chain
        if status is not None:
            if status not in DepositStatus.__members__:
                raise InputError(f"recent_deposits: unknown deposit status {status!r}")
            params["status"] = DepositStatus(status).value
        reply = _Reply("recent_deposits", await self.call("recent_deposits", params), "result")
        items = reply.raw("deposits")
        if not isinstance(items, list):
            _malformed("recent_deposits", "result.deposits is not an array")
        deposits: list[Deposit] = []
        skipped: list[str] = []
        for i, item in enumerate(items):
            try:
                deposits.append(_deposit(item, f"deposits[{i}]"))
            except RpcError as exc:  # one bad entry must not hide the others (BTC deposits, say)
                tx = item.get("tx_hash") if isinstance(item, dict) else None
                ident = f" (tx_hash {tx[:80]})" if isinstance(tx, str) and tx else ""
                skipped.append(_one_line(f"{exc}{ident}"))
        if skipped:
            log.debug("bridge recent_deposits: %d entries skipped: %s", len(skipped), "; ".join(skipped))
        total = reply.integer("total") if reply.has("total") else len(items)
        got_limit = reply.integer("limit") if reply.has("limit") else limit
        got_offset = reply.integer("offset") if reply.has("offset") else offset
        return DepositPage(
            deposits=tuple(deposits),
            total=total,
            limit=got_limit,
            offset=got_offset,
            skipped=tuple(skipped),
        )

    async def notify_deposit(
        self,
        chain: str,
        deposit_address: str,
        tx_hash: str,
        near_sender_account: str | None = None,
        memo: str | None = None,
    ) -> None:
        """Tell the bridge about a deposit transaction so it looks at it sooner (optional)."""
        _require(chain=chain, deposit_address=deposit_address, tx_hash=tx_hash)
        params: dict[str, Any] = {"chain": chain, "deposit_address": deposit_address, "tx_hash": tx_hash}
        if near_sender_account is not None:
            params["near_sender_account"] = near_sender_account
        if memo is not None:
            params["memo"] = memo
        result = await self.call("notify_deposit", params, result_optional=True)
        if result is not None and not isinstance(result, dict):
            _malformed("notify_deposit", "result is not an object")

    async def withdrawal_estimate(self, chain: str, token: str, address: str) -> WithdrawalEstimate:
        """Fee for withdrawing ``token`` (unprefixed NEAR id, e.g. ``btc.omft.near``) to ``address``."""
        _require(chain=chain, token=token, address=address)
        if token.startswith(("nep141:", "nep245:")):
            raise InputError(f"withdrawal_estimate wants the unprefixed NEAR token id, got {token!r}")
        params = {"chain": chain, "token": token, "address": address}
        reply = _Reply("withdrawal_estimate", await self.call("withdrawal_estimate", params), "result")
        fee_decimals = reply.decimals("withdrawalFeeDecimals")
        raw_token = reply.raw("token")
        return WithdrawalEstimate(
            token_address=reply.text("tokenAddress"),
            user_address=reply.text("userAddress"),
            withdrawal_fee=reply.amount("withdrawalFee"),
            withdrawal_fee_decimals=fee_decimals,
            token=EstimateToken()
            if raw_token is None
            else _estimate_token(raw_token, "result.token", fee_decimals),
        )

    async def withdrawal_statuses(self, withdrawal_hash: str) -> tuple[WithdrawalStatus, ...]:
        """Every withdrawal in NEAR transaction ``withdrawal_hash``; empty when the bridge has none yet."""
        _require(withdrawal_hash=withdrawal_hash)
        try:
            result = await self.call("withdrawal_status", {"withdrawal_hash": withdrawal_hash})
        except RpcError as exc:
            if _is_withdrawals_not_found(exc.data):
                return ()
            raise
        if isinstance(result, dict) and "withdrawals" in result:
            entries = result["withdrawals"]
            if not isinstance(entries, list):
                _malformed("withdrawal_status", "result.withdrawals is not an array")
            where = "withdrawals"
        elif isinstance(result, dict) and "status" in result:
            entries, where = [result], "result"
        else:
            _malformed("withdrawal_status", "result has neither withdrawals nor status")
        parsed = [
            _withdrawal("withdrawal_status", withdrawal_hash, e, f"{where}[{i}]")
            for i, e in enumerate(entries)
        ]
        return tuple(w for w in parsed if w.status is not WithdrawalState.NOT_FOUND)

    async def withdrawal_status(
        self, withdrawal_hash: str, near_token_id: str | None = None
    ) -> WithdrawalStatus:
        """Status of the withdrawal burned in ``withdrawal_hash``.

        With ``near_token_id`` the entry for that token is picked (list shape); without it the reply
        must hold at most one entry. Nothing found (including the transient ``"Withdrawals not
        found"`` error) is a :attr:`WithdrawalState.NOT_FOUND` status, not an exception.
        """
        entries = await self.withdrawal_statuses(withdrawal_hash)
        if near_token_id is not None:
            # an entry without near_token_id (the docs' shape) is taken when it is the only one
            entries = tuple(
                e
                for e in entries
                if e.data is not None
                and (
                    e.data.near_token_id == near_token_id
                    or (e.data.near_token_id is None and len(entries) == 1)
                )
            )
        if not entries:
            return WithdrawalStatus(withdrawal_hash=withdrawal_hash, status=WithdrawalState.NOT_FOUND)
        if len(entries) > 1 and near_token_id is None:
            tokens = ", ".join(str(e.data.near_token_id) for e in entries if e.data is not None)
            raise RpcError(
                f"bridge withdrawal_status: {withdrawal_hash} holds {len(entries)} withdrawals ({tokens}); "
                "pass near_token_id"
            )
        return entries[0]

    async def recent_withdrawals(
        self, account_id: str, chain: str | None = None
    ) -> tuple[WithdrawalStatus, ...]:
        """Recent withdrawals of ``account_id`` (optionally on ``chain``)."""
        _require(account_id=account_id)
        params: dict[str, Any] = {"account_id": account_id}
        if chain is not None:
            params["chain"] = chain
        reply = _Reply("recent_withdrawals", await self.call("recent_withdrawals", params), "result")
        entries = reply.raw("withdrawals")
        if not isinstance(entries, list):
            _malformed("recent_withdrawals", "result.withdrawals is not an array")
        out = []
        for i, entry in enumerate(entries):
            data = entry.get("data") if isinstance(entry, dict) else None
            tx_hash = data.get("tx_hash") if isinstance(data, dict) else None
            if not isinstance(tx_hash, str):
                _malformed("recent_withdrawals", f"withdrawals[{i}].data.tx_hash is missing")
            out.append(_withdrawal("recent_withdrawals", tx_hash, entry, f"withdrawals[{i}]"))
        return tuple(out)


def _require(**values: str) -> None:
    for name, value in values.items():
        if not isinstance(value, str) or not value:
            raise InputError(f"bridge call needs a non-empty {name}")


def _token(method: str, obj: object, where: str) -> BridgeToken:
    r = _Reply(method, obj, where)
    near_token_id = r.text("near_token_id")
    intents_token_id = r.opt_str("intents_token_id") or f"nep141:{near_token_id}"
    decimals = r.decimals()
    return BridgeToken(
        defuse_asset_identifier=r.text("defuse_asset_identifier"),
        near_token_id=near_token_id,
        intents_token_id=intents_token_id,
        standard=r.opt_str("standard") or intents_token_id.split(":", 1)[0],
        asset_name=r.text("asset_name"),
        decimals=decimals,
        min_deposit_amount=r.token_amount("min_deposit_amount", decimals),
        min_withdrawal_amount=r.token_amount("min_withdrawal_amount", decimals),
        withdrawal_fee=r.token_amount("withdrawal_fee", decimals),
        multi_token_id=r.opt_str("multi_token_id"),
    )


def _estimate_token(obj: object, where: str, fee_decimals: int) -> EstimateToken:
    """Every field optional; whole-unit decimals use the token's ``decimals`` (else the fee's)."""
    r = _Reply("withdrawal_estimate", obj, where)
    decimals = r.decimals() if r.has("decimals") else None
    scale = fee_decimals if decimals is None else decimals
    return EstimateToken(
        near_token_id=r.opt_str("near_token_id"),
        defuse_asset_identifier=r.opt_str("defuse_asset_identifier"),
        asset_name=r.opt_str("asset_name"),
        decimals=decimals,
        min_deposit_amount=r.opt_token_amount("min_deposit_amount", scale),
        min_withdrawal_amount=r.opt_token_amount("min_withdrawal_amount", scale),
        withdrawal_fee=r.opt_token_amount("withdrawal_fee", scale),
    )


def _deposit(obj: object, where: str) -> Deposit:
    r = _Reply("recent_deposits", obj, where)
    status = r.text("status")
    if status not in DepositStatus.__members__:
        _malformed("recent_deposits", f"{where}.status {status!r} is not a known deposit status")
    return Deposit(
        tx_hash=r.opt_text("tx_hash"),
        chain=r.text("chain"),
        defuse_asset_identifier=r.text("defuse_asset_identifier"),
        near_token_id=r.opt_text("near_token_id"),
        decimals=r.integer("decimals"),
        amount=r.amount("amount"),
        account_id=r.text("account_id"),
        address=r.text("address"),
        status=DepositStatus(status),
        mint_tx_hash=r.opt_str("mint_tx_hash"),
        created_at=r.opt_str("created_at"),
        from_address=r.opt_str("from"),
    )


def _withdrawal(method: str, withdrawal_hash: str, obj: object, where: str) -> WithdrawalStatus:
    r = _Reply(method, obj, where)
    status_text = r.text("status")
    if status_text not in WithdrawalState.__members__:
        _malformed(method, f"{where}.status {status_text!r} is not a known withdrawal status")
    status = WithdrawalState(status_text)
    raw_data = r.raw("data")
    if status is WithdrawalState.NOT_FOUND:
        return WithdrawalStatus(withdrawal_hash=withdrawal_hash, status=status)
    d = _Reply(method, raw_data, f"{where}.data")
    data = WithdrawalData(
        tx_hash=d.text("tx_hash"),
        transfer_tx_hash=d.opt_str("transfer_tx_hash") or None,
        chain=d.text("chain"),
        defuse_asset_identifier=d.text("defuse_asset_identifier"),
        near_token_id=d.opt_text("near_token_id"),
        decimals=d.integer("decimals"),
        amount=d.amount("amount"),
        account_id=d.text("account_id"),
        address=d.text("address"),
        created_at=d.opt_str("created_at") or d.opt_str("created"),
        withdrawal_fee=d.opt_amount("withdrawal_fee"),
        withdraw_amount=d.opt_amount("withdraw_amount"),
    )
    if status is WithdrawalState.COMPLETED and data.transfer_tx_hash is None:
        _malformed(method, f"{where} is COMPLETED without transfer_tx_hash")
    return WithdrawalStatus(withdrawal_hash=withdrawal_hash, status=status, data=data)
