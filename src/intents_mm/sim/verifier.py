"""The simulated ``intents.near`` Verifier: an in-memory copy of the contract's ledger and rules.

Behaviour follows the ``near/intents`` ``defuse`` contract (reference sections 3.4, 3.8, 3.9, 4):

* Ledger ``(account, token_id) -> int`` (u128, never negative), per-account public keys (a 64-hex
  implicit account owns its own key until it removes it), per-account used nonces (any unused 32-byte
  value is accepted once), a salt registry (current + previous valid salts), ``fee_pips`` and
  ``fee_collector``.
* ``execute_intents`` checks and executes each signed payload in order (signature, message,
  verifying contract, deadline, public key, versioned nonce, nonce reuse, then each intent), then
  checks the batch invariant ``Σ deltas + Σ fees == 0`` per token. Any error reverts everything the
  call did (an undo journal) and raises :class:`VerifierError` whose ``reason`` is the contract's
  panic text.
* A payload whose ``intents`` is ``[]`` or absent (``#[serde(default)]``; an explicit ``null`` is a
  JSON error) is valid: it passes the same checks, commits its nonce and moves no balance. That is
  how a signed quote is cancelled today (same key, same nonce, executed first). A nonce already used
  fails with ``nonce was already used`` and the whole call reverts, so a batch of cancels with one
  used nonce marks none of them.
* There is no ``invalidate_nonces`` (removed from the contract in near/intents #122/#128): as a
  change method it fails like any unknown method (``MethodNotFoundError``, ``MethodNotFound`` on the
  chain); as an intent it is an unknown variant (``JSON: unknown variant …``).
* ``simulate_intents`` runs the same code and always rolls back.
* Block history (:meth:`Verifier.track_blocks`, wired by the simulated chain): before the first change
  in block ``M`` the state is captured; :meth:`Verifier.at_height` answers views from the state as it
  was at the end of block ``h`` (balances, keys, nonces, salts, auth flag), so a ``final`` view a few
  blocks behind does not show a fill the latest view shows. Changes at the genesis height (scenario
  funding) are the genesis state. History older than ``keep_blocks`` is dropped (:class:`HistoryGoneError`).

``call`` and ``view`` dispatch the contract's change and view methods by name with JSON arguments,
exactly as a NEAR transaction or ``call_function`` query would; the NEAR RPC simulator uses them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from intents_mm.clock import Clock
from intents_mm.errors import InputError, IntentsMMError
from intents_mm.near.encoding import b64decode, b64encode
from intents_mm.near.keys import PublicKey, is_implicit_account, validate_account_id
from intents_mm.near.nonce import LegacyNonce, VersionedNonce, decode_nonce
from intents_mm.near.payload import SignedPayload, parse_multipayload
from intents_mm.near.timefmt import format_deadline, parse_deadline

U128_MAX = 2**128 - 1
I128_MIN = -(2**127)
I128_MAX = 2**127 - 1
PIPS_MAX = 1_000_000
SALT_LEN = 4
NONCE_LEN = 32
WITHDRAW_TO_PREFIX = "WITHDRAW_TO:"
MAX_DEADLINE_TEXT = "+262142-12-31T23:59:59.999999999Z"
"""``min_deadline`` of a simulation without payloads (the contract's ``Deadline::MAX``)."""

DIP4 = "dip4"
NEP245 = "nep245"

# The contract's panic texts (``DefuseError`` Display and near-sdk guards).
ERR_INVALID_SIGNATURE = "invalid signature"
ERR_WRONG_CONTRACT = "wrong verifying_contract"
ERR_DEADLINE_EXPIRED = "deadline has expired"
ERR_INVALID_SALT = "invalid salt"
ERR_DEADLINE_GT_NONCE = "deadline is greater than nonce"
ERR_NONCE_EXPIRED = "nonce was already expired"
ERR_INVALID_NONCE = "invalid nonce"
ERR_NONCE_USED = "nonce was already used"
ERR_INVALID_INTENT = "invalid intent"
ERR_BALANCE = "insufficient balance or overflow"
ERR_BAD_ARGS = "Failed to deserialize input from JSON."
ERR_ONE_YOCTO = "Requires attached deposit of exactly 1 yoctoNEAR"

_DECIMAL_RE = re.compile(r"^[+-]?[0-9]+\Z")
_UNSIGNED_RE = re.compile(r"^\+?[0-9]+\Z")
_KNOWN_UNSUPPORTED_INTENTS = (
    "nft_withdraw",
    "mt_withdraw",
    "native_withdraw",
    "storage_deposit",
    "set_auth_by_predecessor_id",
    "auth_call",
    "imt_mint",
    "imt_burn",
)
_SUPPORTED_INTENTS = (
    "add_public_key",
    "remove_public_key",
    "transfer",
    "ft_withdraw",
    "token_diff",
)


class VerifierError(IntentsMMError):
    """The Verifier panicked; ``reason`` is the contract's panic text (e.g. ``invalid salt``)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class MethodNotFoundError(VerifierError):
    """The contract has no method of that name (NEAR reports ``MethodResolveError(MethodNotFound)``)."""

    def __init__(self, method_name: str) -> None:
        self.method_name = method_name
        super().__init__(f"method {method_name!r} not found")


class ProhibitedInViewError(VerifierError):
    """A change method was called through a view query."""

    def __init__(self, method_name: str) -> None:
        self.method_name = method_name
        super().__init__(f"method {method_name!r} writes state and cannot run in a view")


@dataclass(frozen=True)
class Withdrawal:
    """Tokens that left the Verifier through ``ft_withdraw`` (direct call or intent)."""

    account_id: str
    token: str
    receiver_id: str
    amount: int
    memo: str | None
    msg: str | None

    @property
    def asset_id(self) -> str:
        return "nep141:" + self.token

    @property
    def poa_destination(self) -> str | None:
        """The external address of a PoA bridge burn (``receiver_id == token`` and memo
        ``WITHDRAW_TO:<address>[:<tag>]``), else ``None``."""
        if self.receiver_id != self.token or self.memo is None:
            return None
        if not self.memo.startswith(WITHDRAW_TO_PREFIX):
            return None
        address = self.memo[len(WITHDRAW_TO_PREFIX) :].split(":", 1)[0]
        return address or None


@dataclass
class ExecutionOutcome:
    """Result of a successful ``execute_intents``."""

    intent_hashes: list[str]
    logs: list[str]
    fees_collected: dict[str, int]
    withdrawals: list[Withdrawal] = field(default_factory=list)
    signer_ids: list[str] = field(default_factory=list)


@dataclass
class CallResult:
    """Result of a change method: its JSON return value (``None`` for void), logs, withdrawals."""

    value: object
    logs: list[str]
    withdrawals: list[Withdrawal] = field(default_factory=list)


# --- the protocol fee and TokenDiff::closure --------------------------------------------------------


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def _token_fee_pips(token_id: str, amount: int, fee_pips: int) -> int:
    """The fee rate applying to ``amount`` of ``token_id``: NEP-141 always, NEP-245 when the amount
    exceeds 1, NFTs never (``TokenDiff::token_fee``)."""
    if token_id.startswith("nep141:"):
        return fee_pips
    if token_id.startswith("nep245:") and amount > 1:
        return fee_pips
    return 0


def protocol_fee(token_id: str, delta: int, fee_pips: int) -> int:
    """The fee the Verifier takes on one ``token_diff`` delta: ``ceil(|delta|·fee/1e6)`` when negative."""
    if delta >= 0:
        return 0
    amount = -delta
    return _ceil_div(amount * _token_fee_pips(token_id, amount, fee_pips), PIPS_MAX)


def _supply_delta(token_id: str, delta: int, fee_pips: int) -> int:
    if delta < 0:
        rate = PIPS_MAX - _token_fee_pips(token_id, -delta, fee_pips)
        return _ceil_div(delta * rate, PIPS_MAX)
    return delta


def _closure_supply_delta(token_id: str, supply: int, fee_pips: int) -> int:
    closure = -supply
    if closure < 0:
        rate = PIPS_MAX - _token_fee_pips(token_id, abs(supply), fee_pips)
        if rate == 0:
            raise InputError(f"no closure exists for {token_id} at a fee of {fee_pips} pips")
        return (closure * PIPS_MAX) // rate
    return closure


def counterparty_diff(mm_diff: dict[str, int], fee_pips: int) -> dict[str, int]:
    """The counterparty's ``token_diff`` that exactly closes ``mm_diff`` under ``fee_pips``
    (``TokenDiff::closure``): for a positive MM delta ``A`` the counterparty gives
    ``U = ceil(A·1e6/(1e6−fee))``; for a negative MM delta ``−X`` it receives ``X − ceil(X·fee/1e6)``.
    Deltas that close to zero are left out. ``InputError`` on a zero delta or a fee out of range.
    """
    if isinstance(fee_pips, bool) or not isinstance(fee_pips, int) or not 0 <= fee_pips <= PIPS_MAX:
        raise InputError(f"fee must be an int in 0..{PIPS_MAX} pips, got {fee_pips!r}")
    out: dict[str, int] = {}
    for token_id, delta in mm_diff.items():
        if isinstance(delta, bool) or not isinstance(delta, int) or delta == 0:
            raise InputError(f"delta for {token_id} must be a non-zero int, got {delta!r}")
        closure = _closure_supply_delta(token_id, _supply_delta(token_id, delta, fee_pips), fee_pips)
        if not I128_MIN <= closure <= I128_MAX:
            raise InputError(f"closure for {token_id} does not fit in i128")
        if closure != 0:
            out[token_id] = closure
    return out


# --- parsing the contract's JSON --------------------------------------------------------------------


class _JsonError(Exception):
    """A serde-style deserialisation failure (reported as ``JSON: <detail>``)."""


def _event(standard: str, version: str, event: str, data: object) -> str:
    body = {"standard": standard, "version": version, "event": event, "data": data}
    return "EVENT_JSON:" + json.dumps(body, separators=(",", ":"))


def _req(obj: dict[str, Any], name: str) -> Any:
    if name not in obj:
        raise _JsonError(f"missing field `{name}`")
    return obj[name]


def _opt_str(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _JsonError(f"invalid type for `{name}`, expected a string")
    return value


def _str(obj: dict[str, Any], name: str) -> str:
    value = _req(obj, name)
    if not isinstance(value, str):
        raise _JsonError(f"invalid type for `{name}`, expected a string")
    return value


def _account(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise _JsonError(f"invalid type for `{name}`, expected an account id string")
    try:
        return validate_account_id(value)
    except InputError as exc:
        raise _JsonError(f"invalid `{name}`: {exc}") from None


def _token_id(value: str) -> str:
    kind, sep, rest = value.partition(":")
    if not sep or kind not in ("nep141", "nep171", "nep245"):
        raise _JsonError(f"token_id: unknown token standard in {value[:80]!r}")
    if kind == "nep141":
        _account(rest, "token_id")
    else:
        contract, sep2, token = rest.partition(":")
        if not sep2 or not token:
            raise _JsonError(f"token_id: {value[:80]!r} must be {kind}:<contract>:<token_id>")
        _account(contract, "token_id")
    return value


def _i128_str(value: object, name: str) -> int:
    if not isinstance(value, str) or not _DECIMAL_RE.match(value):
        raise _JsonError(f"invalid value for `{name}`, expected a decimal i128 string")
    number = int(value)
    if not I128_MIN <= number <= I128_MAX:
        raise _JsonError(f"`{name}` does not fit in i128")
    return number


def _u128_str(value: object, name: str) -> int:
    if not isinstance(value, str) or not _UNSIGNED_RE.match(value):
        raise _JsonError(f"invalid value for `{name}`, expected a decimal u128 string")
    number = int(value)
    if number > U128_MAX:
        raise _JsonError(f"`{name}` does not fit in u128")
    return number


def _public_key(value: object, name: str = "public_key") -> str:
    if not isinstance(value, str):
        raise _JsonError(f"invalid type for `{name}`, expected a string")
    try:
        return PublicKey.from_string(value).to_string()
    except InputError as exc:
        raise _JsonError(f"invalid `{name}`: {exc}") from None


def _nonce_b64(value: object, name: str = "nonce") -> bytes:
    if not isinstance(value, str):
        raise _JsonError(f"invalid type for `{name}`, expected a base64 string")
    try:
        raw = b64decode(value)
    except InputError as exc:
        raise _JsonError(f"invalid `{name}`: {exc}") from None
    if len(raw) != NONCE_LEN:
        raise _JsonError(f"invalid `{name}`: expected {NONCE_LEN} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True)
class _TokenDiff:
    diff: tuple[tuple[str, int], ...]  # sorted by token id
    memo: str | None
    referral: str | None


@dataclass(frozen=True)
class _Transfer:
    receiver_id: str
    tokens: tuple[tuple[str, int], ...]
    memo: str | None


@dataclass(frozen=True)
class _FtWithdraw:
    token: str
    receiver_id: str
    amount: int
    memo: str | None
    msg: str | None


@dataclass(frozen=True)
class _AddPublicKey:
    public_key: str


@dataclass(frozen=True)
class _RemovePublicKey:
    public_key: str


_Intent = _TokenDiff | _Transfer | _FtWithdraw | _AddPublicKey | _RemovePublicKey


def _parse_amount_map(value: object, name: str, *, signed: bool) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, dict):
        raise _JsonError(f"invalid type for `{name}`, expected a map")
    out: dict[str, int] = {}
    for key, raw in value.items():
        token = _token_id(key)
        out[token] = _i128_str(raw, name) if signed else _u128_str(raw, name)
    return tuple(sorted(out.items()))


def _parse_intent(obj: object) -> _Intent:
    if not isinstance(obj, dict):
        raise _JsonError("invalid type for intent, expected an object")
    item = cast(dict[str, Any], obj)
    kind = _req(item, "intent")
    if not isinstance(kind, str):
        raise _JsonError("invalid type for `intent`, expected a string")
    if kind == "token_diff":
        referral = item.get("referral")
        return _TokenDiff(
            diff=_parse_amount_map(_req(item, "diff"), "diff", signed=True),
            memo=_opt_str(item, "memo"),
            referral=None if referral is None else _account(referral, "referral"),
        )
    if kind == "transfer":
        return _Transfer(
            receiver_id=_account(_req(item, "receiver_id"), "receiver_id"),
            tokens=_parse_amount_map(_req(item, "tokens"), "tokens", signed=False),
            memo=_opt_str(item, "memo"),
        )
    if kind == "ft_withdraw":
        if item.get("storage_deposit") is not None:
            raise VerifierError("ft_withdraw with storage_deposit is not simulated")
        return _FtWithdraw(
            token=_account(_req(item, "token"), "token"),
            receiver_id=_account(_req(item, "receiver_id"), "receiver_id"),
            amount=_u128_str(_req(item, "amount"), "amount"),
            memo=_opt_str(item, "memo"),
            msg=_opt_str(item, "msg"),
        )
    if kind == "add_public_key":
        return _AddPublicKey(_public_key(_req(item, "public_key")))
    if kind == "remove_public_key":
        return _RemovePublicKey(_public_key(_req(item, "public_key")))
    if kind in _KNOWN_UNSUPPORTED_INTENTS:
        raise VerifierError(f"intent '{kind}' is not simulated")
    expected = ", ".join(f"`{k}`" for k in (*_SUPPORTED_INTENTS, *_KNOWN_UNSUPPORTED_INTENTS))
    raise _JsonError(f"unknown variant `{kind[:60]}`, expected one of {expected}")


@dataclass(frozen=True)
class _Message:
    signer_id: str
    deadline_ns: int
    intents: tuple[_Intent, ...]


def _parse_message(signed: SignedPayload) -> _Message:
    """The signed message's ``signer_id``, ``deadline`` and ``intents`` (``VerifierError("JSON: …")``)."""
    try:
        try:
            obj = json.loads(signed.message)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise _JsonError(str(exc)) from None
        if not isinstance(obj, dict):
            raise _JsonError("invalid type, expected a JSON object")
        message = cast(dict[str, Any], obj)
        signer_id = _account(_req(message, "signer_id"), "signer_id")
        deadline = _req(message, "deadline")
        if not isinstance(deadline, str):
            raise _JsonError("invalid type for `deadline`, expected an RFC 3339 string")
        try:
            deadline_ns = parse_deadline(deadline)
        except InputError as exc:
            raise _JsonError(str(exc)) from None
        # ``#[serde(default)]``: an absent list is empty (a cancel); an explicit null is not a list
        raw_intents = message.get("intents", [])
        if not isinstance(raw_intents, list):
            raise _JsonError("invalid type for `intents`, expected a list")
        intents = tuple(_parse_intent(i) for i in raw_intents)
    except _JsonError as exc:
        raise VerifierError(f"JSON: {exc}") from None
    return _Message(signer_id, deadline_ns, intents)


def _parse_envelopes(signed: object) -> list[SignedPayload]:
    if not isinstance(signed, list):
        raise VerifierError(ERR_BAD_ARGS)
    out: list[SignedPayload] = []
    for item in signed:
        try:
            out.append(parse_multipayload(item))
        except InputError:
            raise VerifierError(ERR_BAD_ARGS) from None
    return out


def _diff_json(pairs: tuple[tuple[str, int], ...] | dict[str, int]) -> dict[str, str]:
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return {token: str(amount) for token, amount in sorted(items)}


# --- the Verifier ------------------------------------------------------------------------------------


class _Batch:
    """Per-``execute_intents`` bookkeeping: per-token net of deltas + fees, fees, events."""

    def __init__(self) -> None:
        self.net: dict[str, int] = {}
        self.fees: dict[str, int] = {}
        self.logs: list[str] = []
        self.deferred_logs: list[str] = []
        self.executed: list[dict[str, str]] = []
        self.hashes: list[str] = []
        self.signers: list[str] = []
        self.withdrawals: list[Withdrawal] = []
        self.min_deadline_ns: int | None = None

    def add_net(self, token_id: str, amount: int) -> None:
        total = self.net.get(token_id, 0) + amount
        if total:
            self.net[token_id] = total
        else:
            self.net.pop(token_id, None)


class HistoryGoneError(IntentsMMError):
    """The state at that height is older than the kept history (a node's garbage-collected block)."""


@dataclass(frozen=True)
class _State:
    """Everything a view reads except nonces (those carry the height they were used at)."""

    balances: dict[str, dict[str, int]]
    keys: dict[str, dict[str, None]]
    implicit_key_removed: set[str]
    auth_disabled: set[str]
    current_salt: bytes
    previous_salts: dict[bytes, int | None]


class Verifier:
    """The simulated ``intents.near`` contract. All amounts are ``int``; all methods are synchronous
    and atomic (no partial effects on error)."""

    def __init__(
        self,
        clock: Clock,
        *,
        contract_id: str = "intents.near",
        fee_pips: int = 1,
        fee_collector: str = "fees.intents.near",
        salt: bytes | None = None,
        accept_legacy_nonces: bool = True,
        salt_grace_ns: int | None = None,
    ) -> None:
        """``salt`` is the initial current salt (derived from ``contract_id`` when ``None``).
        ``salt_grace_ns``: how long a rotated-out salt stays valid (``None`` = until
        :meth:`invalidate_salt`, as the contract)."""
        if isinstance(fee_pips, bool) or not isinstance(fee_pips, int) or not 0 <= fee_pips <= PIPS_MAX:
            raise InputError(f"fee_pips must be an int in 0..{PIPS_MAX}, got {fee_pips!r}")
        validate_account_id(contract_id)
        validate_account_id(fee_collector)
        if salt is not None and len(salt) != SALT_LEN:
            raise InputError(f"salt must be {SALT_LEN} bytes, got {len(salt)}")
        self._clock = clock
        self.contract_id = contract_id
        self.fee_pips = fee_pips
        self.fee_collector = fee_collector
        self.accept_legacy_nonces = accept_legacy_nonces
        self.salt_grace_ns = salt_grace_ns
        self._balances: dict[str, dict[str, int]] = {}
        self._keys: dict[str, dict[str, None]] = {}  # insertion-ordered set per account
        self._implicit_key_removed: set[str] = set()
        self._nonces: dict[str, set[bytes]] = {}
        self._auth_disabled: set[str] = set()
        self._salt_counter = 0
        # previous salts -> valid until (ns since the epoch; None = until invalidated; -1 = invalid)
        self._previous_salts: dict[bytes, int | None] = {}
        self._current_salt = b""
        self._current_salt = bytes(salt) if salt is not None else self._derive_salt()
        self._undo: list[Callable[[], None]] = []
        self._depth = 0
        # block history: see track_blocks / at_height
        self._height: Callable[[], int] | None = None
        self._genesis_height = 0
        self._keep_blocks = 0
        self._history_floor = 0  # the lowest height whose state is still known exactly
        self._pre_state: dict[int, _State] = {}  # block M -> the state before M's first change
        self._nonce_height: dict[tuple[str, bytes], int] = {}  # nonces used after genesis -> block
        self._view_height: int | None = None  # set on a past view (at_height): a read-only copy
        self._view_nonces: set[tuple[str, bytes]] = set()  # nonces a past view's sandbox committed

    # --- block history ---------------------------------------------------------------------------

    def track_blocks(self, height: Callable[[], int], *, genesis_height: int, keep_blocks: int) -> None:
        """Record history per block: ``height()`` is the block current at each change (the chain's)."""
        if keep_blocks < 1:
            raise InputError("keep_blocks must be >= 1")
        self._height = height
        self._genesis_height = self._history_floor = genesis_height
        self._keep_blocks = keep_blocks

    def _capture(self) -> _State:
        return _State(
            balances={a: dict(t) for a, t in self._balances.items()},
            keys={a: dict(k) for a, k in self._keys.items()},
            implicit_key_removed=set(self._implicit_key_removed),
            auth_disabled=set(self._auth_disabled),
            current_salt=self._current_salt,
            previous_salts=dict(self._previous_salts),
        )

    def _changing(self) -> int | None:
        """Called before every state change: captures the state before this block's first change.
        Returns the block height of the change (``None`` untracked or at genesis)."""
        if self._height is None:
            return None
        height = self._height()
        if height <= self._genesis_height:
            return None
        if height not in self._pre_state:
            self._pre_state[height] = self._capture()
            cutoff = height - self._keep_blocks
            for old in [m for m in self._pre_state if m <= cutoff]:
                del self._pre_state[old]
                self._history_floor = max(self._history_floor, old)
        return height

    def at_height(self, height: int) -> Verifier:
        """A read-only view of the state at the end of block ``height`` (``self`` when nothing changed
        since). Its views and ``simulate_intents`` answer as the contract did then; never mutate it.
        Raises :class:`HistoryGoneError` below the kept history."""
        if self._height is None or self._view_height is not None:
            return self
        later = [m for m in self._pre_state if m > height]
        if not later:
            return self
        if height < self._history_floor:
            raise HistoryGoneError(f"state at block {height} is no longer kept")
        state = self._pre_state[min(later)]
        past = copy.copy(self)
        past._balances = state.balances
        past._keys = state.keys
        past._implicit_key_removed = state.implicit_key_removed
        past._auth_disabled = state.auth_disabled
        past._current_salt = state.current_salt
        past._previous_salts = state.previous_salts
        past._undo = []
        past._depth = 0
        past._height = None
        past._view_height = height
        past._view_nonces = set()
        return past

    # --- journal ---------------------------------------------------------------------------------

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Everything done inside is undone if the block raises (nests)."""
        mark = len(self._undo)
        self._depth += 1
        try:
            yield
        except BaseException:
            self._rollback(mark)
            raise
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._undo.clear()

    @contextmanager
    def _sandbox(self) -> Iterator[None]:
        """Everything done inside is always undone."""
        mark = len(self._undo)
        self._depth += 1
        try:
            yield
        finally:
            self._rollback(mark)
            self._depth -= 1

    def _rollback(self, mark: int) -> None:
        while len(self._undo) > mark:
            self._undo.pop()()

    def _record(self, undo: Callable[[], None]) -> None:
        if self._depth:
            self._undo.append(undo)

    def _set_balance(self, account_id: str, token_id: str, amount: int) -> None:
        self._changing()
        tokens = self._balances.setdefault(account_id, {})
        old = tokens.get(token_id)

        def undo() -> None:
            mine = self._balances.setdefault(account_id, {})
            if old is None:
                mine.pop(token_id, None)
            else:
                mine[token_id] = old

        self._record(undo)
        if amount:
            tokens[token_id] = amount
        else:
            tokens.pop(token_id, None)

    def _add_balance(self, account_id: str, token_id: str, amount: int) -> None:
        if amount <= 0:
            raise VerifierError(ERR_INVALID_INTENT)
        new = self.balance_of(account_id, token_id) + amount
        if new > U128_MAX:
            raise VerifierError(ERR_BALANCE)
        self._set_balance(account_id, token_id, new)

    def _sub_balance(self, account_id: str, token_id: str, amount: int) -> None:
        if amount <= 0:
            raise VerifierError(ERR_INVALID_INTENT)
        new = self.balance_of(account_id, token_id) - amount
        if new < 0:
            raise VerifierError(ERR_BALANCE)
        self._set_balance(account_id, token_id, new)

    def _commit_nonce(self, account_id: str, nonce: bytes) -> None:
        if self.is_nonce_used(account_id, nonce):
            raise VerifierError(ERR_NONCE_USED)
        key = (account_id, bytes(nonce))
        if self._view_height is not None:  # a past view's sandbox: never touch the shared nonce sets
            self._view_nonces.add(key)
            self._record(lambda: self._view_nonces.discard(key))
            return
        height = self._changing()
        self._nonces.setdefault(account_id, set()).add(nonce)
        if height is not None:
            self._nonce_height[key] = height

        def undo() -> None:
            self._nonces[account_id].discard(nonce)
            self._nonce_height.pop(key, None)

        self._record(undo)

    def _insert_key(self, account_id: str, public_key: str) -> None:
        if self.has_public_key(account_id, public_key):
            raise VerifierError(f"public key '{public_key}' already exists for account '{account_id}'")
        self._changing()
        if public_key == self._implicit_key_of(account_id):
            self._implicit_key_removed.discard(account_id)
            self._record(lambda: self._implicit_key_removed.add(account_id))
            return
        self._keys.setdefault(account_id, {})[public_key] = None
        self._record(lambda: self._keys[account_id].pop(public_key, None))

    def _delete_key(self, account_id: str, public_key: str) -> None:
        if not self.has_public_key(account_id, public_key):
            raise VerifierError(f"public key '{public_key}' doesn't exist for account '{account_id}'")
        self._changing()
        if public_key == self._implicit_key_of(account_id):
            self._implicit_key_removed.add(account_id)
            self._record(lambda: self._implicit_key_removed.discard(account_id))
            return
        keys = self._keys[account_id]
        order = list(keys)
        del keys[public_key]

        def undo() -> None:  # undo runs LIFO, so ``keys`` is back to ``order`` minus this key
            keys.clear()
            keys.update(dict.fromkeys(order))

        self._record(undo)

    # --- seeding and plain reads -----------------------------------------------------------------------

    def credit(self, account_id: str, token_id: str, amount: int) -> None:
        """Add ``amount`` of ``token_id`` to ``account_id`` (a deposit, or scenario seeding)."""
        validate_account_id(account_id)
        try:
            _token_id(token_id)
        except _JsonError as exc:
            raise InputError(str(exc)) from None
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise InputError(f"credit amount must be a positive int, got {amount!r}")
        try:
            self._add_balance(account_id, token_id, amount)
        except VerifierError as exc:
            raise InputError(f"cannot credit {amount} {token_id} to {account_id}: {exc.reason}") from None

    def balance_of(self, account_id: str, token_id: str) -> int:
        return self._balances.get(account_id, {}).get(token_id, 0)

    def balances(self, account_id: str) -> dict[str, int]:
        """Non-zero balances of ``account_id`` (a copy)."""
        return dict(self._balances.get(account_id, {}))

    def total_of(self, token_id: str) -> int:
        """Σ over every account (fee collector included) of ``token_id``."""
        return sum(tokens.get(token_id, 0) for tokens in self._balances.values())

    def accounts(self) -> list[str]:
        """Every account holding a non-zero balance."""
        return [a for a, tokens in self._balances.items() if tokens]

    @staticmethod
    def _implicit_key_of(account_id: str) -> str | None:
        if not is_implicit_account(account_id):
            return None
        return PublicKey(bytes.fromhex(account_id)).to_string()

    def add_public_key(self, account_id: str, public_key: str) -> None:
        """Register ``public_key`` for ``account_id``; ``VerifierError`` if it already is."""
        validate_account_id(account_id)
        pk = PublicKey.from_string(public_key).to_string()
        with self.atomic():
            self._insert_key(account_id, pk)

    def remove_public_key(self, account_id: str, public_key: str) -> None:
        """Unregister ``public_key``; ``VerifierError`` if it is not registered."""
        pk = PublicKey.from_string(public_key).to_string()
        with self.atomic():
            self._delete_key(account_id, pk)

    def has_public_key(self, account_id: str, public_key: str) -> bool:
        try:
            pk = PublicKey.from_string(public_key).to_string()
        except InputError:
            return False
        if pk in self._keys.get(account_id, {}):
            return True
        return pk == self._implicit_key_of(account_id) and account_id not in self._implicit_key_removed

    def public_keys_of(self, account_id: str) -> list[str]:
        keys = list(self._keys.get(account_id, {}))
        implicit = self._implicit_key_of(account_id)
        if implicit is not None and account_id not in self._implicit_key_removed and implicit not in keys:
            keys.append(implicit)
        return keys

    def is_nonce_used(self, account_id: str, nonce: bytes) -> bool:
        nonce = bytes(nonce)
        used = nonce in self._nonces.get(account_id, ())
        if self._view_height is not None:
            key = (account_id, nonce)
            if used and self._nonce_height.get(key, 0) > self._view_height:
                used = False
            used = used or key in self._view_nonces
        return used

    def is_auth_by_predecessor_id_enabled(self, account_id: str) -> bool:
        return account_id not in self._auth_disabled

    def disable_auth_by_predecessor_id(self, account_id: str) -> None:
        self._ensure_predecessor_auth(account_id)
        self._changing()
        self._auth_disabled.add(account_id)
        self._record(lambda: self._auth_disabled.discard(account_id))

    def _ensure_predecessor_auth(self, account_id: str) -> None:
        if account_id in self._auth_disabled:
            raise VerifierError(f"authentication by PREDECESSOR_ID is disabled for account '{account_id}'")

    # --- salts -----------------------------------------------------------------------------------

    def _derive_salt(self) -> bytes:
        while True:
            seed = f"{self.contract_id}:salt:{self._salt_counter}".encode()
            self._salt_counter += 1
            salt = hashlib.sha256(seed).digest()[:SALT_LEN]
            if salt != self._current_salt and salt not in self._previous_salts:
                return salt

    def current_salt(self) -> bytes:
        return self._current_salt

    def rotate_salt(self) -> bytes:
        """Make a fresh salt current; the old one stays valid (for ``salt_grace_ns`` when set)."""
        self._changing()
        old = self._current_salt
        until = None if self.salt_grace_ns is None else self._clock.now_ns() + self.salt_grace_ns
        self._previous_salts[old] = until
        self._current_salt = self._derive_salt()
        return self._current_salt

    def invalidate_salt(self, salt: bytes) -> None:
        """Make ``salt`` invalid (rotating first when it is current); ``VerifierError`` if unknown."""
        salt = bytes(salt)
        if salt == self._current_salt:
            self.rotate_salt()
        if salt not in self._previous_salts:
            raise VerifierError(ERR_INVALID_SALT)
        self._changing()
        self._previous_salts[salt] = -1

    def is_valid_salt(self, salt: bytes) -> bool:
        salt = bytes(salt)
        if salt == self._current_salt:
            return True
        if salt not in self._previous_salts:
            return False
        until = self._previous_salts[salt]
        return until is None or self._clock.now_ns() <= until

    # --- signed payloads ---------------------------------------------------------------------------

    def _check_payload(self, signed: SignedPayload, batch: _Batch | None) -> _Message:
        """Checks 1–6 of section 3.8 (signature … versioned nonce); no state change."""
        if not signed.verify():
            raise VerifierError(ERR_INVALID_SIGNATURE)
        message = _parse_message(signed)
        if signed.recipient != self.contract_id:
            raise VerifierError(ERR_WRONG_CONTRACT)
        if batch is not None:
            current = batch.min_deadline_ns
            batch.min_deadline_ns = (
                message.deadline_ns if current is None else min(current, message.deadline_ns)
            )
        now = self._clock.now_ns()
        if message.deadline_ns < now:
            raise VerifierError(ERR_DEADLINE_EXPIRED)
        public_key = signed.public_key.to_string()
        if not self.has_public_key(message.signer_id, public_key):
            raise VerifierError(f"public key '{public_key}' doesn't exist for account '{message.signer_id}'")
        try:
            nonce = decode_nonce(signed.nonce)
        except InputError:
            raise VerifierError(ERR_INVALID_NONCE) from None
        if isinstance(nonce, VersionedNonce):
            if not self.is_valid_salt(nonce.salt):
                raise VerifierError(ERR_INVALID_SALT)
            if message.deadline_ns > nonce.deadline_ns:
                raise VerifierError(ERR_DEADLINE_GT_NONCE)
            if nonce.deadline_ns < now:
                raise VerifierError(ERR_NONCE_EXPIRED)
        elif isinstance(nonce, LegacyNonce) and not self.accept_legacy_nonces:
            raise VerifierError(ERR_INVALID_NONCE)
        return message

    def check_signed(self, signed: dict[str, Any]) -> SignedPayload:
        """Checks 1–6 of section 3.8 plus "nonce already used", committing nothing.

        Returns the parsed payload; raises :class:`VerifierError` with the contract's text.
        """
        try:
            payload = parse_multipayload(signed)
        except InputError:
            raise VerifierError(ERR_BAD_ARGS) from None
        message = self._check_payload(payload, None)
        if self.is_nonce_used(message.signer_id, payload.nonce):
            raise VerifierError(ERR_NONCE_USED)
        return payload

    def _run_batch(self, payloads: list[SignedPayload], batch: _Batch) -> None:
        for signed in payloads:
            message = self._check_payload(signed, batch)
            signer = message.signer_id
            self._commit_nonce(signer, signed.nonce)
            intent_hash = signed.hash_b58()
            for intent in message.intents:
                self._execute_intent(signer, intent, intent_hash, batch)
            batch.hashes.append(intent_hash)
            batch.signers.append(signer)
            batch.executed.append(
                {"intent_hash": intent_hash, "account_id": signer, "nonce": b64encode(signed.nonce)}
            )

    def _invariant_violation(self, batch: _Batch) -> dict[str, object] | None:
        if not batch.net:
            return None
        return {"error": "unmatched_deltas", "unmatched_deltas": _diff_json(batch.net)}

    def _execute_intent(self, signer: str, intent: _Intent, intent_hash: str, batch: _Batch) -> None:
        if isinstance(intent, _TokenDiff):
            self._token_diff(signer, intent, intent_hash, batch)
        elif isinstance(intent, _Transfer):
            if intent.receiver_id == signer or not intent.tokens:
                raise VerifierError(ERR_INVALID_INTENT)
            for token_id, amount in intent.tokens:
                self._sub_balance(signer, token_id, amount)
            for token_id, amount in intent.tokens:
                self._add_balance(intent.receiver_id, token_id, amount)
            data: dict[str, object] = {
                "intent_hash": intent_hash,
                "account_id": signer,
                "receiver_id": intent.receiver_id,
                "tokens": _diff_json(intent.tokens),
            }
            if intent.memo is not None:
                data["memo"] = intent.memo
            batch.logs.append(_event(DIP4, "0.3.0", "transfer", [data]))
        elif isinstance(intent, _FtWithdraw):
            withdrawal = Withdrawal(
                signer, intent.token, intent.receiver_id, intent.amount, intent.memo, intent.msg
            )
            burn = self._withdraw(withdrawal)
            event: dict[str, object] = {
                "intent_hash": intent_hash,
                "account_id": signer,
                "token": intent.token,
                "receiver_id": intent.receiver_id,
                "amount": str(intent.amount),
            }
            if intent.memo is not None:
                event["memo"] = intent.memo
            if intent.msg is not None:
                event["msg"] = intent.msg
            batch.logs.append(_event(DIP4, "0.3.0", "ft_withdraw", [event]))
            batch.deferred_logs.append(burn)
            batch.withdrawals.append(withdrawal)
        elif isinstance(intent, _AddPublicKey):
            self._insert_key(signer, intent.public_key)
            batch.logs.append(self._key_event("public_key_added", signer, intent.public_key))
        else:
            self._delete_key(signer, intent.public_key)
            batch.logs.append(self._key_event("public_key_removed", signer, intent.public_key))

    @staticmethod
    def _key_event(event: str, account_id: str, public_key: str) -> str:
        return _event(DIP4, "0.3.0", event, {"account_id": account_id, "public_key": public_key})

    def _token_diff(self, signer: str, intent: _TokenDiff, intent_hash: str, batch: _Batch) -> None:
        if not intent.diff:
            raise VerifierError(ERR_INVALID_INTENT)
        fees: dict[str, int] = {}
        for token_id, delta in intent.diff:
            if delta == 0:
                raise VerifierError(ERR_INVALID_INTENT)
            if delta > 0:
                self._add_balance(signer, token_id, delta)
            else:
                self._sub_balance(signer, token_id, -delta)
            batch.add_net(token_id, delta)
            fee = protocol_fee(token_id, delta, self.fee_pips)
            if fee:
                fees[token_id] = fees.get(token_id, 0) + fee
        data: dict[str, object] = {
            "intent_hash": intent_hash,
            "account_id": signer,
            "diff": _diff_json(intent.diff),
        }
        if intent.memo is not None:
            data["memo"] = intent.memo
        if intent.referral is not None:
            data["referral"] = intent.referral
        if fees:
            data["fees_collected"] = _diff_json(fees)
        batch.logs.append(_event(DIP4, "0.3.0", "token_diff", [data]))
        for token_id, fee in sorted(fees.items()):
            self._add_balance(self.fee_collector, token_id, fee)
            batch.add_net(token_id, fee)
            batch.fees[token_id] = batch.fees.get(token_id, 0) + fee

    def _withdraw(self, withdrawal: Withdrawal) -> str:
        """Debit ``nep141:<token>``; returns the NEP-245 ``mt_burn`` log line."""
        self._sub_balance(withdrawal.account_id, withdrawal.asset_id, withdrawal.amount)
        burn = {
            "owner_id": withdrawal.account_id,
            "token_ids": [withdrawal.asset_id],
            "amounts": [str(withdrawal.amount)],
            "memo": "withdraw",
        }
        return _event(NEP245, "1.0.0", "mt_burn", [burn])

    def execute_intents(self, signed: list[dict[str, Any]]) -> ExecutionOutcome:
        """Execute a batch of signed payloads all-or-nothing (section 3.8 order, 3.9 fees, invariant).

        Raises :class:`VerifierError` with the contract's panic text; state is then unchanged.
        """
        payloads = _parse_envelopes(signed)
        batch = _Batch()
        with self.atomic():
            self._run_batch(payloads, batch)
            violation = self._invariant_violation(batch)
            if violation is not None:
                raise VerifierError("invariant violated: " + json.dumps(violation, separators=(",", ":")))
        logs = list(batch.logs)
        if batch.executed:
            logs.append(_event(DIP4, "0.3.1", "intents_executed", batch.executed))
        logs.extend(batch.deferred_logs)
        return ExecutionOutcome(
            intent_hashes=list(batch.hashes),
            logs=logs,
            fees_collected=dict(batch.fees),
            withdrawals=list(batch.withdrawals),
            signer_ids=list(batch.signers),
        )

    def simulate_intents(self, signed: list[dict[str, Any]]) -> dict[str, Any]:
        """The ``simulate_intents`` view (section 4.1): never changes state. An invariant violation is
        reported in ``invariant_violated``; any other failure raises :class:`VerifierError`."""
        payloads = _parse_envelopes(signed)
        batch = _Batch()
        with self._sandbox():
            self._run_batch(payloads, batch)
            violation = self._invariant_violation(batch)
        out: dict[str, Any] = {
            "intents_executed": batch.executed,
            "logs": batch.logs,
            "min_deadline": (
                MAX_DEADLINE_TEXT if batch.min_deadline_ns is None else format_deadline(batch.min_deadline_ns)
            ),
        }
        if violation is not None:
            out["invariant_violated"] = violation
        out["state"] = {"fee": self.fee_pips, "current_salt": self._current_salt.hex()}
        return out

    # --- direct change methods ---------------------------------------------------------------------

    def ft_withdraw(  # noqa: PLR0917 - the agreed sim-api signature
        self,
        account_id: str,
        token: str,
        receiver_id: str,
        amount: int,
        memo: str | None = None,
        msg: str | None = None,
    ) -> int:
        """Withdraw ``amount`` of ``nep141:<token>`` from ``account_id`` to ``receiver_id`` outside the
        Verifier. Returns the amount. (The chain reports PoA burns to the bridge; see
        :attr:`Withdrawal.poa_destination`.)"""
        return self._ft_withdraw_call(Withdrawal(account_id, token, receiver_id, amount, memo, msg))[0].amount

    def _ft_withdraw_call(self, withdrawal: Withdrawal) -> tuple[Withdrawal, str]:
        if isinstance(withdrawal.amount, bool) or not isinstance(withdrawal.amount, int):
            raise InputError("withdraw amount must be an int")
        try:
            _account(withdrawal.token, "token")
            _account(withdrawal.receiver_id, "receiver_id")
        except _JsonError as exc:
            raise VerifierError(f"JSON: {exc}") from None
        with self.atomic():
            self._ensure_predecessor_auth(withdrawal.account_id)
            burn = self._withdraw(withdrawal)
        return withdrawal, burn

    # --- dispatch by method name (what the chain and the RPC use) -----------------------------------

    VIEW_METHODS = (
        "mt_balance_of",
        "mt_batch_balance_of",
        "has_public_key",
        "public_keys_of",
        "is_nonce_used",
        "current_salt",
        "is_valid_salt",
        "fee",
        "fee_collector",
        "is_auth_by_predecessor_id_enabled",
        "simulate_intents",
        "mt_tokens_for_owner",
    )
    CHANGE_METHODS = (
        "add_public_key",
        "remove_public_key",
        "ft_withdraw",
        "execute_intents",
        "disable_auth_by_predecessor_id",
    )

    def view(self, method_name: str, args: object) -> object:
        """Run a view method with JSON ``args``; returns its JSON result. ``MethodNotFoundError``,
        ``ProhibitedInViewError`` or ``VerifierError`` (bad arguments, contract panic)."""
        if method_name in self.CHANGE_METHODS:
            raise ProhibitedInViewError(method_name)
        if method_name not in self.VIEW_METHODS:
            raise MethodNotFoundError(method_name)
        if not isinstance(args, dict):
            raise VerifierError(ERR_BAD_ARGS)
        a = cast(dict[str, Any], args)
        try:
            return self._view(method_name, a)
        except (_JsonError, InputError, KeyError, TypeError, ValueError):
            raise VerifierError(ERR_BAD_ARGS) from None

    def _view(self, method: str, a: dict[str, Any]) -> object:
        if method == "mt_balance_of":
            return str(self.balance_of(_account(a["account_id"], "account_id"), _str(a, "token_id")))
        if method == "mt_batch_balance_of":
            account = _account(a["account_id"], "account_id")
            token_ids = a["token_ids"]
            if not isinstance(token_ids, list) or not all(isinstance(t, str) for t in token_ids):
                raise _JsonError("token_ids must be a list of strings")
            return [str(self.balance_of(account, t)) for t in token_ids]
        if method == "has_public_key":
            account = _account(a["account_id"], "account_id")
            return self.has_public_key(account, _public_key(a["public_key"]))
        if method == "public_keys_of":
            return self.public_keys_of(_account(a["account_id"], "account_id"))
        if method == "is_nonce_used":
            return self.is_nonce_used(_account(a["account_id"], "account_id"), _nonce_b64(a["nonce"]))
        if method == "current_salt":
            return self._current_salt.hex()
        if method == "is_valid_salt":
            salt = bytes.fromhex(_str(a, "salt"))
            return len(salt) == SALT_LEN and self.is_valid_salt(salt)
        if method == "fee":
            return self.fee_pips
        if method == "fee_collector":
            return self.fee_collector
        if method == "is_auth_by_predecessor_id_enabled":
            return self.is_auth_by_predecessor_id_enabled(_account(a["account_id"], "account_id"))
        if method == "simulate_intents":
            return self.simulate_intents(a["signed"])
        return self._mt_tokens_for_owner(a)

    def _mt_tokens_for_owner(self, a: dict[str, Any]) -> list[dict[str, str]]:
        account = _account(a["account_id"], "account_id")
        from_index = a.get("from_index")
        start = 0 if from_index is None else _u128_str(from_index, "from_index")
        limit = a.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise _JsonError("limit must be a non-negative integer")
        tokens = list(self._balances.get(account, {}))[start:]
        if limit is not None:
            tokens = tokens[:limit]
        return [{"token_id": t} for t in tokens]

    def call(self, predecessor_id: str, method_name: str, args: object, deposit: int) -> CallResult:
        """Run a change (or view) method as a transaction from ``predecessor_id`` with ``deposit``
        yoctoNEAR attached. All-or-nothing; raises ``VerifierError`` / ``MethodNotFoundError``."""
        if method_name in self.VIEW_METHODS:
            return CallResult(self.view(method_name, args), [])
        if method_name not in self.CHANGE_METHODS:
            raise MethodNotFoundError(method_name)
        if method_name == "execute_intents":
            if deposit != 0:
                raise VerifierError(f"Method {method_name} doesn't accept deposit")
        elif deposit != 1:
            raise VerifierError(ERR_ONE_YOCTO)
        if not isinstance(args, dict):
            raise VerifierError(ERR_BAD_ARGS)
        a = cast(dict[str, Any], args)
        with self.atomic():
            try:
                return self._call(predecessor_id, method_name, a)
            except (_JsonError, InputError, KeyError, TypeError, ValueError):
                raise VerifierError(ERR_BAD_ARGS) from None

    def _call(self, predecessor: str, method: str, a: dict[str, Any]) -> CallResult:
        if method == "execute_intents":
            signed = a["signed"]
            outcome = self.execute_intents(signed)
            return CallResult(None, outcome.logs, outcome.withdrawals)
        if method in ("add_public_key", "remove_public_key"):
            pk = _public_key(a["public_key"])
            self._ensure_predecessor_auth(predecessor)
            if method == "add_public_key":
                self._insert_key(predecessor, pk)
                return CallResult(None, [self._key_event("public_key_added", predecessor, pk)])
            self._delete_key(predecessor, pk)
            return CallResult(None, [self._key_event("public_key_removed", predecessor, pk)])
        if method == "ft_withdraw":
            memo = _opt_str(a, "memo")
            msg = _opt_str(a, "msg")
            amount = _u128_str(a["amount"], "amount")
            token = _account(a["token"], "token")
            receiver = _account(a["receiver_id"], "receiver_id")
            withdrawal, burn = self._ft_withdraw_call(
                Withdrawal(predecessor, token, receiver, amount, memo, msg)
            )
            return CallResult(str(amount), [burn], [withdrawal])
        self.disable_auth_by_predecessor_id(predecessor)
        return CallResult(None, [])
