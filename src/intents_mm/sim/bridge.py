"""Simulated PoA bridge (Passive Deposit/Withdrawal Service) speaking the real JSON-RPC wire format.

``SimBridge`` serves ``POST /rpc`` (the method comes from the body, or from ``?method=`` on the URL
when the body has none) with the methods of protocol reference section 6: ``supported_tokens``,
``deposit_address``, ``recent_deposits``, ``notify_deposit``, ``withdrawal_estimate``,
``withdrawal_status`` and ``recent_withdrawals``. Replies are ``{"jsonrpc":"2.0","id":<id>,"result":…}``;
errors are plain strings, ``{"jsonrpc":"2.0","id":<id>,"error":"<message>"}``, like the real service.

Life cycles, driven by the injected clock (monotonic time) through :meth:`SimBridge.advance`, which a
background ticker calls every ``tick_s`` seconds while the server runs (tests may call it directly):

* deposit (:meth:`SimBridge.simulate_deposit`): ``PENDING`` for ``deposit_pending_s``, then
  ``CREDITED`` — at that moment ``credit(account, asset_id, amount)`` is called once, so the Verifier
  simulator can credit the account — then ``COMPLETED`` after a further ``deposit_credit_s``. A
  deposit below the token's ``min_deposit_amount`` goes ``FAILED`` instead of ``CREDITED`` and is never
  credited. If ``credit`` raises, the deposit stays ``PENDING`` and is retried on the next tick.
* withdrawal (:meth:`SimBridge.register_withdrawal`, called by the Verifier simulator when it executes an
  ``ft_withdraw`` burn with memo ``WITHDRAW_TO:<address>``): invisible (``"Withdrawals not found"``)
  for ``withdrawal_visible_s`` (default 0, the real service's transient), ``PENDING``, then after
  ``withdrawal_complete_s`` ``COMPLETED`` with a synthetic ``transfer_tx_hash`` and
  ``withdraw_amount = amount − withdrawal_fee``; or ``FAILED`` when scripted
  (:meth:`fail_next_withdrawal`, :meth:`fail_withdrawals_of`); or ``REJECTED`` when the amount is below
  ``min_withdrawal_amount`` (or does not exceed the fee) or the destination is not a valid address.

Reply shapes: ``reply_shape="docs"`` (the default) answers as the docs' examples do —
``recent_deposits`` entries carry ``tx_hash`` only on EVM chains (none for BTC: "EVM networks only") and
no ``near_token_id``; the ``withdrawal_estimate`` token has the docs' five fields with
``min_deposit_amount`` a decimal string in whole units (``"0.0001"``, ``"1.0"``); ``notify_deposit``
answers with neither ``result`` nor ``error``. ``reply_shape="sdk"`` answers with every field the SDK's
types have. ``deposit_amount_form`` writes deposit amounts as JSON integers (default), digit strings or
exact JSON numbers in exponent form (``25e4``). ``withdrawal_status_shape`` is separate (see above).

Faults: :meth:`set_error_rate` and :meth:`fail_method` make calls answer a plain-string error or a bare
HTTP 500; :meth:`add_raw_deposit_entry` slips a malformed entry into ``recent_deposits`` pages.
Wire details that the reference leaves open are marked [inferred] in ``docs/bridge.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import inspect
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from aiohttp import web

from intents_mm.clock import Clock
from intents_mm.domain.addresses import encode_segwit_address, to_checksum_address, validate_destination
from intents_mm.domain.amounts import format_units
from intents_mm.domain.assets import BTC, EURE, Asset
from intents_mm.errors import InputError
from intents_mm.near.encoding import b58encode

__all__ = [
    "DEFAULT_TOKENS",
    "CreditCallback",
    "SimBridge",
    "SimBridgeToken",
    "SimDeposit",
    "SimWithdrawal",
    "derive_deposit_address",
]

log = logging.getLogger(__name__)

ReplyShape = Literal["docs", "sdk"]
AmountForm = Literal["number", "string", "exponent"]

CreditCallback = Callable[[str, str, int], Awaitable[None] | None]
"""``credit(account_id, asset_id, amount)``: mint ``amount`` of ``asset_id`` to the account (Verifier)."""

DEPOSIT_STATUSES = ("PENDING", "CREDITED", "COMPLETED", "FAILED")
WITHDRAWALS_NOT_FOUND = "Withdrawals not found"
_NS = 1_000_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class SimBridgeToken:
    """One bridged token as the simulator lists it in ``supported_tokens`` (amounts in smallest units)."""

    asset: Asset
    min_deposit_amount: int
    min_withdrawal_amount: int
    withdrawal_fee: int

    @property
    def token_address(self) -> str:
        """The token on its home chain: the contract in the defuse id, or ``native`` (BTC)."""
        return self.asset.defuse_asset_id.rsplit(":", 1)[-1]

    def estimate_wire(self) -> dict[str, Any]:
        """The ``token`` of a ``withdrawal_estimate`` reply as the docs' example has it: five fields,
        ``min_deposit_amount`` a decimal string in whole units (always with a point, ``"1.0"``)."""
        whole = format_units(self.asset, self.min_deposit_amount)
        return {
            "defuse_asset_identifier": self.asset.defuse_asset_id,
            "near_token_id": self.asset.contract_id,
            "decimals": self.asset.decimals,
            "asset_name": self.asset.symbol,
            "min_deposit_amount": whole if "." in whole else whole + ".0",
        }

    def wire(self) -> dict[str, Any]:
        return {
            "defuse_asset_identifier": self.asset.defuse_asset_id,
            "near_token_id": self.asset.contract_id,
            "intents_token_id": self.asset.token_id,
            "standard": self.asset.token_id.split(":", 1)[0],
            "asset_name": self.asset.symbol,
            "decimals": self.asset.decimals,
            "min_deposit_amount": str(self.min_deposit_amount),
            "min_withdrawal_amount": str(self.min_withdrawal_amount),
            "withdrawal_fee": str(self.withdrawal_fee),
        }


DEFAULT_TOKENS: tuple[SimBridgeToken, ...] = (
    # BTC numbers are the SDK test fixture's (reference 6.1); EURe's are plausible placeholders.
    SimBridgeToken(BTC, min_deposit_amount=10_000, min_withdrawal_amount=700, withdrawal_fee=1_500),
    SimBridgeToken(
        EURE,
        min_deposit_amount=10**18,
        min_withdrawal_amount=10**18,
        withdrawal_fee=10**17,
    ),
)


def derive_deposit_address(account_id: str, chain: str) -> str:
    """The simulator's deterministic deposit address for ``(account_id, chain)``.

    ``btc:mainnet``: a P2WPKH ``bc1q…`` address (valid bech32) whose program is the first 20 bytes of a
    SHA-256 of the pair; EVM chains: ``0x`` + the same 20 bytes in EIP-55 spelling.
    """
    program = hashlib.sha256(f"intents-mm sim deposit|{chain}|{account_id}".encode()).digest()[:20]
    if chain == "btc:mainnet":
        return encode_segwit_address(0, program)
    if chain.startswith("eth:"):
        return to_checksum_address("0x" + program.hex())
    raise InputError(f"the simulator cannot derive deposit addresses on {chain}")


@dataclasses.dataclass(slots=True)
class SimDeposit:
    """A deposit as the simulator tracks it (mutable; read it, don't change it)."""

    tx_hash: str
    token: SimBridgeToken
    chain: str
    amount: int
    account_id: str
    address: str
    created_ns: int
    created_mono_ns: int
    status: str = "PENDING"
    mint_tx_hash: str | None = None
    credited_mono_ns: int | None = None

    def wire(self, *, shape: ReplyShape = "docs", amount_form: AmountForm = "number") -> dict[str, Any]:
        """The ``recent_deposits`` entry. Docs shape: ``tx_hash`` only on EVM chains ("EVM networks
        only"), no ``near_token_id``; SDK shape: both always. ``amount_form`` picks how the amount is
        written: a JSON integer, a digit string, or a JSON number in exponent form (``25e4``)."""
        out: dict[str, Any] = {}
        if shape == "sdk" or self.chain.startswith("eth:"):
            out["tx_hash"] = self.tx_hash
        if self.mint_tx_hash is not None:
            out["mint_tx_hash"] = self.mint_tx_hash
        amount: Any = self.amount
        if amount_form == "string":
            amount = str(self.amount)
        elif amount_form == "exponent":
            amount = _exponent_mark(self.amount)
        out.update(
            {
                "chain": self.chain,
                "defuse_asset_identifier": self.token.asset.defuse_asset_id,
                "decimals": self.token.asset.decimals,
                "amount": amount,
                "account_id": self.account_id,
                "address": self.address,
                "status": self.status,
                "created_at": _iso(self.created_ns),
            }
        )
        if shape == "sdk":
            out["near_token_id"] = self.token.asset.contract_id
        return out


@dataclasses.dataclass(slots=True)
class SimWithdrawal:
    """A withdrawal (one burned token inside one NEAR transaction) as the simulator tracks it."""

    tx_hash: str
    token: SimBridgeToken
    amount: int
    account_id: str
    address: str
    withdrawal_fee: int
    created_ns: int
    created_mono_ns: int
    status: str = "PENDING"
    transfer_tx_hash: str | None = None
    fail_reason: str | None = None  # scripted FAILED / REJECTED reason (kept off the wire)
    outcome: str = "COMPLETED"  # the status it will reach when due

    @property
    def withdraw_amount(self) -> int:
        return max(self.amount - self.withdrawal_fee, 0)

    def wire(self, *, shape: Literal["sdk", "docs"]) -> dict[str, Any]:
        data: dict[str, Any] = {
            "tx_hash": self.tx_hash,
            "transfer_tx_hash": self.transfer_tx_hash,
            "chain": self.token.asset.chain,
            "defuse_asset_identifier": self.token.asset.defuse_asset_id,
            "near_token_id": self.token.asset.contract_id,
            "decimals": self.token.asset.decimals,
            "amount": self.amount,
            "account_id": self.account_id,
            "address": self.address,
            "created_at": _iso(self.created_ns),
            "withdrawal_fee": self.withdrawal_fee,
            "withdraw_amount": self.withdraw_amount,
        }
        if shape == "sdk":
            data["created"] = data["created_at"]
        return {"status": self.status, "data": data}


class _RpcFault(Exception):
    """A plain-string JSON-RPC error to send back."""


@dataclasses.dataclass(slots=True)
class _ScriptedFault:
    remaining: int
    http_500: bool
    message: str


class SimBridge:
    """The simulated PoA bridge. See the module docstring for behaviour; all amounts are ``int``."""

    def __init__(
        self,
        clock: Clock,
        credit: CreditCallback,
        *,
        deposit_pending_s: float = 2.0,
        deposit_credit_s: float = 4.0,
        withdrawal_complete_s: float = 3.0,
        withdrawal_visible_s: float = 0.0,
        withdrawal_status_shape: Literal["sdk", "docs"] = "sdk",
        reply_shape: ReplyShape = "docs",
        deposit_amount_form: AmountForm = "number",
        tokens: Sequence[SimBridgeToken] = DEFAULT_TOKENS,
        tick_s: float = 0.05,
        seed: int = 0,
    ) -> None:
        if withdrawal_status_shape not in ("sdk", "docs"):
            raise InputError(
                f"withdrawal_status_shape must be 'sdk' or 'docs', got {withdrawal_status_shape!r}"
            )
        if reply_shape not in ("sdk", "docs"):
            raise InputError(f"reply_shape must be 'sdk' or 'docs', got {reply_shape!r}")
        if deposit_amount_form not in ("number", "string", "exponent"):
            raise InputError(
                f"deposit_amount_form must be 'number', 'string' or 'exponent', got {deposit_amount_form!r}"
            )
        for name, value in (
            ("deposit_pending_s", deposit_pending_s),
            ("deposit_credit_s", deposit_credit_s),
            ("withdrawal_complete_s", withdrawal_complete_s),
            ("withdrawal_visible_s", withdrawal_visible_s),
        ):
            if value < 0:
                raise InputError(f"{name} must not be negative")
        if tick_s <= 0:
            raise InputError("tick_s must be positive")
        self._clock = clock
        self._credit = credit
        self._deposit_pending_ns = int(deposit_pending_s * _NS)
        self._deposit_credit_ns = int(deposit_credit_s * _NS)
        self._withdrawal_complete_ns = int(withdrawal_complete_s * _NS)
        self._withdrawal_visible_ns = int(withdrawal_visible_s * _NS)
        self._shape: Literal["sdk", "docs"] = withdrawal_status_shape
        self._reply_shape: ReplyShape = reply_shape
        self._amount_form: AmountForm = deposit_amount_form
        self._tokens = tuple(tokens)
        self._tick_s = tick_s
        self._rng = random.Random(seed)
        self._seq = 0
        self._seed = seed
        self.deposits: list[SimDeposit] = []
        self.withdrawals: dict[str, list[SimWithdrawal]] = {}
        self.notifications: list[dict[str, Any]] = []  # notify_deposit params received
        self.calls: dict[str, int] = {}  # method -> requests served (including faults)
        self._fail_next: list[str] = []
        self._fail_assets: dict[str, str] = {}
        self._error_rate = 0.0
        self._error_rate_http_500 = False
        self._error_rate_message = "Internal error"
        self._scripted: dict[str, _ScriptedFault] = {}
        self._raw_deposits: list[tuple[str | None, object]] = []
        self._lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.url: str | None = None

    # --- server lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 = any free port) and start the ticker; returns ``http://host:port/rpc``."""
        if self._runner is not None:
            raise RuntimeError("SimBridge already started")
        app = web.Application()
        app.router.add_post("/rpc", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        self.url = f"http://{host}:{bound_port}/rpc"
        self._ticker = asyncio.create_task(self._tick_forever(), name="sim-bridge-ticker")
        return self.url

    async def stop(self) -> None:
        """Stop the ticker and the server. Safe to call twice."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            try:
                await self.advance()
            except Exception:  # the ticker must survive a misbehaving credit callback
                log.exception("sim bridge: advance failed")

    # --- scenario controls -------------------------------------------------------------------------

    def token_for(self, *, asset_id: str | None = None, chain: str | None = None) -> SimBridgeToken:
        """The listed token with this intents asset id, or the only token on ``chain``."""
        found = [
            t
            for t in self._tokens
            if (asset_id is None or t.asset.token_id == asset_id)
            and (chain is None or t.asset.chain == chain)
        ]
        if len(found) != 1:
            what = asset_id if asset_id is not None else chain
            raise InputError(f"sim bridge: no single supported token for {what!r}")
        return found[0]

    def simulate_deposit(
        self,
        account_id: str,
        chain: str,
        amount: int,
        tx_hash: str | None = None,
        *,
        asset_id: str | None = None,
    ) -> str:
        """Someone sent ``amount`` (smallest units) to ``account_id``'s deposit address on ``chain``.

        Returns the external-chain transaction hash (synthetic unless given). The deposit starts
        ``PENDING`` now; :meth:`advance` moves it on.
        """
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise InputError(f"deposit amount must be a positive int, got {amount!r}")
        token = self.token_for(asset_id=asset_id, chain=chain)
        if tx_hash is None:
            digest = self._next_hash("deposit", account_id, chain, str(amount))
            tx_hash = digest.hex() if chain == "btc:mainnet" else "0x" + digest.hex()
        if any(d.tx_hash == tx_hash and d.chain == chain for d in self.deposits):
            raise InputError(f"deposit {tx_hash} on {chain} already exists")
        self.deposits.append(
            SimDeposit(
                tx_hash=tx_hash,
                token=token,
                chain=chain,
                amount=amount,
                account_id=account_id,
                address=derive_deposit_address(account_id, chain),
                created_ns=self._clock.now_ns(),
                created_mono_ns=self._clock.monotonic_ns(),
            )
        )
        return tx_hash

    def register_withdrawal(
        self, near_tx_hash: str, account_id: str, asset_id: str, amount: int, destination: str
    ) -> SimWithdrawal:
        """Record a burn of ``amount`` of ``asset_id`` (NEAR tx ``near_tx_hash``) bound for ``destination``.

        Called by the Verifier simulator for ``ft_withdraw`` with memo ``WITHDRAW_TO:<destination>``
        (``destination`` is the memo's address part). Raises ``InputError`` for an unlisted asset or a
        second burn of the same asset in the same transaction.
        """
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise InputError(f"withdrawal amount must be a positive int, got {amount!r}")
        token = self.token_for(asset_id=asset_id)
        entries = self.withdrawals.setdefault(near_tx_hash, [])
        if any(w.token.asset.token_id == asset_id for w in entries):
            raise InputError(f"withdrawal of {asset_id} in {near_tx_hash} already registered")
        w = SimWithdrawal(
            tx_hash=near_tx_hash,
            token=token,
            amount=amount,
            account_id=account_id,
            address=destination,
            withdrawal_fee=token.withdrawal_fee,
            created_ns=self._clock.now_ns(),
            created_mono_ns=self._clock.monotonic_ns(),
        )
        try:
            validate_destination(token.asset.chain, destination)
        except InputError as exc:
            w.outcome, w.fail_reason = "REJECTED", str(exc)
        if w.outcome == "COMPLETED" and (
            amount < token.min_withdrawal_amount or amount <= token.withdrawal_fee
        ):
            w.outcome = "REJECTED"
            w.fail_reason = f"amount {amount} below minimum withdrawal {token.min_withdrawal_amount}"
        if w.outcome == "COMPLETED" and asset_id in self._fail_assets:
            w.outcome, w.fail_reason = "FAILED", self._fail_assets[asset_id]
        elif w.outcome == "COMPLETED" and self._fail_next:
            w.outcome, w.fail_reason = "FAILED", self._fail_next.pop(0)
        entries.append(w)
        return w

    def add_raw_deposit_entry(self, entry: object, *, chain: str | None = None) -> None:
        """Serve ``entry`` (any JSON value, e.g. a deposit with a fractional amount) verbatim at the end
        of every ``recent_deposits`` page for ``chain`` and of unfiltered pages (``None``: every page): a
        malformed entry among good ones, as a client must survive it."""
        self._raw_deposits.append((chain, entry))

    def fail_next_withdrawal(self, reason: str = "destination transfer failed") -> None:
        """The next registered withdrawal (that would otherwise complete) ends ``FAILED``."""
        self._fail_next.append(reason)

    def fail_withdrawals_of(self, asset_id: str, reason: str | None = "destination transfer failed") -> None:
        """Every withdrawal of ``asset_id`` registered from now on ends ``FAILED``; ``reason=None`` clears."""
        if reason is None:
            self._fail_assets.pop(asset_id, None)
        else:
            self._fail_assets[asset_id] = reason

    def set_error_rate(self, rate: float, *, http_500: bool = False, message: str = "Internal error") -> None:
        """Each request fails with probability ``rate`` (seeded RNG): plain-string ``message`` or HTTP 500."""
        if not 0.0 <= rate <= 1.0:
            raise InputError("error rate must be within 0..1")
        self._error_rate = rate
        self._error_rate_http_500 = http_500
        self._error_rate_message = message

    def fail_method(
        self, name: str, n: int = 1, *, http_500: bool = False, message: str | None = None
    ) -> None:
        """The next ``n`` calls of ``name`` fail with a plain-string ``message`` or a bare HTTP 500."""
        if n < 0:
            raise InputError("n must not be negative")
        self._scripted[name] = _ScriptedFault(n, http_500, message or "Internal error")

    # --- the clock-driven state machine ------------------------------------------------------------

    async def advance(self) -> None:
        """Apply every transition that is due at the clock's current monotonic time."""
        async with self._lock:
            now = self._clock.monotonic_ns()
            for d in self.deposits:
                await self._advance_deposit(d, now)
            for entries in self.withdrawals.values():
                for w in entries:
                    if w.status == "PENDING" and now >= w.created_mono_ns + self._withdrawal_complete_ns:
                        w.status = w.outcome
                        if w.outcome == "COMPLETED":
                            digest = self._next_hash("transfer", w.tx_hash, w.token.asset.token_id)
                            btc = w.token.asset.chain == "btc:mainnet"
                            w.transfer_tx_hash = digest.hex() if btc else "0x" + digest.hex()

    async def _advance_deposit(self, d: SimDeposit, now: int) -> None:
        if d.status == "PENDING" and now >= d.created_mono_ns + self._deposit_pending_ns:
            if d.amount < d.token.min_deposit_amount:
                d.status = "FAILED"
                return
            try:
                result = self._credit(d.account_id, d.token.asset.token_id, d.amount)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("sim bridge: credit callback failed for deposit %s; retrying", d.tx_hash)
                return
            d.status = "CREDITED"
            d.credited_mono_ns = now
            d.mint_tx_hash = b58encode(self._next_hash("mint", d.tx_hash))
        if (
            d.status == "CREDITED"
            and d.credited_mono_ns is not None
            and now >= d.credited_mono_ns + self._deposit_credit_ns
        ):
            d.status = "COMPLETED"

    def _next_hash(self, *parts: str) -> bytes:
        self._seq += 1
        return hashlib.sha256("|".join((str(self._seed), str(self._seq), *parts)).encode()).digest()

    # --- JSON-RPC ----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        req_id: Any = None
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _error_response(None, "Parse error: request body is not JSON")
        if not isinstance(body, dict):
            return _error_response(None, "Invalid request: body must be a JSON object")
        req_id = body.get("id")
        method = body.get("method") or request.query.get("method")
        if not isinstance(method, str) or not method:
            return _error_response(req_id, "Invalid request: method is missing")
        self.calls[method] = self.calls.get(method, 0) + 1
        fault = self._fault_for(method)
        if fault is not None:
            http_500, message = fault
            if http_500:
                return web.Response(status=500, text="Internal Server Error")
            return _error_response(req_id, message)
        handler = self._methods().get(method)
        if handler is None:
            return _error_response(req_id, f"Method not found: {method}")
        params = body.get("params", [])
        if params is None:
            params = []
        if not isinstance(params, list) or len(params) > 1 or (params and not isinstance(params[0], dict)):
            return _error_response(req_id, "Invalid params: expected a one-element array with an object")
        try:
            result = await handler(params[0] if params else {})
        except _RpcFault as exc:
            return _error_response(req_id, str(exc))
        if result is None:
            return _json_response({"jsonrpc": "2.0", "id": req_id})
        return _json_response({"jsonrpc": "2.0", "id": req_id, "result": result})

    def _fault_for(self, method: str) -> tuple[bool, str] | None:
        scripted = self._scripted.get(method)
        if scripted is not None and scripted.remaining > 0:
            scripted.remaining -= 1
            return scripted.http_500, scripted.message
        if self._error_rate > 0 and self._rng.random() < self._error_rate:
            return self._error_rate_http_500, self._error_rate_message
        return None

    def _methods(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        return {
            "supported_tokens": self._supported_tokens,
            "deposit_address": self._deposit_address,
            "recent_deposits": self._recent_deposits,
            "notify_deposit": self._notify_deposit,
            "withdrawal_estimate": self._withdrawal_estimate,
            "withdrawal_status": self._withdrawal_status,
            "recent_withdrawals": self._recent_withdrawals,
        }

    async def _supported_tokens(self, p: dict[str, Any]) -> Any:
        chains = p.get("chains")
        if chains is not None and (
            not isinstance(chains, list) or not all(isinstance(c, str) for c in chains)
        ):
            raise _RpcFault("Invalid params: chains must be an array of strings")
        tokens = [t.wire() for t in self._tokens if chains is None or t.asset.chain in chains]
        return {"tokens": tokens}

    def _optional_chain(self, p: dict[str, Any]) -> str | None:
        return None if p.get("chain") is None else self._chain_param(p)

    def _chain_param(self, p: dict[str, Any]) -> str:
        chain = p.get("chain")
        if not isinstance(chain, str) or not chain:
            raise _RpcFault("Invalid params: chain is required")
        if not any(t.asset.chain == chain for t in self._tokens):
            raise _RpcFault(f"Unsupported chain: {chain}")
        return chain

    async def _deposit_address(self, p: dict[str, Any]) -> Any:
        account_id = _str_param(p, "account_id")
        chain = self._chain_param(p)
        mode = p.get("deposit_mode", "SIMPLE")
        if mode != "SIMPLE":
            raise _RpcFault(f"Unsupported deposit mode {mode} for chain {chain}")
        return {"address": derive_deposit_address(account_id, chain), "chain": chain}

    async def _recent_deposits(self, p: dict[str, Any]) -> Any:
        account_id = _str_param(p, "account_id")
        chain = self._optional_chain(p)
        status = p.get("status")
        if status is not None and status not in DEPOSIT_STATUSES:
            raise _RpcFault(f"Invalid params: unknown status {status}")
        limit = _int_param(p, "limit", 20)
        offset = _int_param(p, "offset", 0)
        if limit < 1 or offset < 0:
            raise _RpcFault("Invalid params: limit must be positive and offset not negative")
        limit = min(limit, 100)
        rows = [
            d
            for d in reversed(self.deposits)
            if d.account_id == account_id
            and (chain is None or d.chain == chain)
            and (status is None or d.status == status)
        ]
        page = rows[offset : offset + limit]
        deposits: list[Any] = [d.wire(shape=self._reply_shape, amount_form=self._amount_form) for d in page]
        deposits += [e for where, e in self._raw_deposits if where is None or chain is None or where == chain]
        return {"deposits": deposits, "total": len(rows), "limit": limit, "offset": offset}

    async def _notify_deposit(self, p: dict[str, Any]) -> Any:
        self._chain_param(p)
        _str_param(p, "deposit_address")
        _str_param(p, "tx_hash")
        self.notifications.append(dict(p))
        return None if self._reply_shape == "docs" else {}  # the docs' example has no result at all

    async def _withdrawal_estimate(self, p: dict[str, Any]) -> Any:
        chain = self._chain_param(p)
        token_id = _str_param(p, "token")
        address = _str_param(p, "address")
        matches = [t for t in self._tokens if t.asset.chain == chain and t.asset.contract_id == token_id]
        if not matches:
            raise _RpcFault(f"Token {token_id} is not supported on {chain}")
        token = matches[0]
        try:
            validate_destination(chain, address)
        except InputError:
            raise _RpcFault(f"Invalid address {address} for chain {chain}") from None
        return {
            "tokenAddress": token.token_address,
            "userAddress": address,
            "withdrawalFee": str(token.withdrawal_fee),
            "withdrawalFeeDecimals": token.asset.decimals,
            "token": token.estimate_wire() if self._reply_shape == "docs" else token.wire(),
        }

    def _visible(self, w: SimWithdrawal) -> bool:
        return self._clock.monotonic_ns() >= w.created_mono_ns + self._withdrawal_visible_ns

    async def _withdrawal_status(self, p: dict[str, Any]) -> Any:
        withdrawal_hash = _str_param(p, "withdrawal_hash")
        entries = [w for w in self.withdrawals.get(withdrawal_hash, []) if self._visible(w)]
        if not entries:
            raise _RpcFault(WITHDRAWALS_NOT_FOUND)
        if self._shape == "docs":
            return entries[0].wire(shape="docs")
        return {"withdrawals": [w.wire(shape="sdk") for w in entries]}

    async def _recent_withdrawals(self, p: dict[str, Any]) -> Any:
        account_id = _str_param(p, "account_id")
        chain = self._optional_chain(p)
        rows = [
            w
            for entries in reversed(list(self.withdrawals.values()))
            for w in entries
            if w.account_id == account_id
            and (chain is None or w.token.asset.chain == chain)
            and self._visible(w)
        ]
        return {"withdrawals": [w.wire(shape="sdk") for w in rows]}


def _str_param(p: dict[str, Any], name: str) -> str:
    value = p.get(name)
    if not isinstance(value, str) or not value:
        raise _RpcFault(f"Invalid params: {name} is required")
    return value


def _int_param(p: dict[str, Any], name: str, default: int) -> int:
    value = p.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _RpcFault(f"Invalid params: {name} must be an integer")
    return value


_EXPONENT_MARK = "__sim_exponent__:"
_EXPONENT_RE = re.compile('"' + _EXPONENT_MARK + '([0-9]+)"')


def _exponent_mark(amount: int) -> str:
    """A placeholder that :func:`_json_response` writes as a JSON number in exponent form."""
    return f"{_EXPONENT_MARK}{amount}"


def _exponent_text(match: re.Match[str]) -> str:
    digits = match.group(1)
    stripped = digits.rstrip("0") or "0"
    zeros = len(digits) - len(stripped)
    if zeros == 0:  # no trailing zero to fold: write d.ddde+N, still exact
        return f"{digits[0]}.{digits[1:]}e+{len(digits) - 1}" if len(digits) > 1 else f"{digits}e0"
    return f"{stripped}e{zeros}"


def _json_response(doc: dict[str, Any]) -> web.Response:
    text = _EXPONENT_RE.sub(_exponent_text, json.dumps(doc, separators=(",", ":")))
    return web.Response(text=text, content_type="application/json")


def _error_response(req_id: Any, message: str) -> web.Response:
    return _json_response({"jsonrpc": "2.0", "id": req_id, "error": message})


def _iso(ns: int) -> str:
    seconds, rem = divmod(ns, _NS)
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).replace(microsecond=rem // 1000)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
