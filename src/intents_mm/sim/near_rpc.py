"""The simulated NEAR chain (:class:`SimNear`) and its JSON-RPC server (:class:`SimNearRpcServer`).

``SimNear`` holds accounts with full-access keys and access-key nonces, blocks that advance with the
injected clock (one every ``block_time_ms``), and the record of every transaction. Transactions are
executed at once, in the block current when they arrive; FunctionCalls on the Verifier's account run
through :meth:`Verifier.call`, all actions of a transaction atomically. A successful PoA burn
(``ft_withdraw`` of a token to its own contract with memo ``WITHDRAW_TO:<address>``, as a direct call
or as an intent) is reported to ``on_withdraw(tx_hash, account, asset_id, amount, destination)``.

``SimNearRpcServer`` speaks NEAR JSON-RPC 2.0 at ``POST /`` (reference section 5): ``query``
(``call_function`` on every Verifier view, ``view_access_key``), ``block``, ``send_tx``,
``broadcast_tx_commit``, ``broadcast_tx_async``, ``tx`` / ``EXPERIMENTAL_tx_status`` and ``status``,
with nearcore's error shapes. Views read the Verifier's state at the block they name: ``optimistic``
the latest, ``near-final`` one block behind, ``final`` ``final_lag_blocks`` behind (default 2), a
``block_id`` that block (``GARBAGE_COLLECTED_BLOCK`` once older than ``history_blocks``), so a
``final`` view misses a fill the latest view shows until the chain moves on
(with ``lagged_views``; the venue's scenario turns it on by default, ``[near] lagged_views``; a bare
``SimNear`` reads the latest state in every view). Access keys are always the latest.
Faults: :meth:`SimNearRpcServer.fail_next`, :meth:`SimNearRpcServer.set_fault_rate`,
:meth:`SimNearRpcServer.set_latency_ms`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from aiohttp import web

from intents_mm.clock import Clock
from intents_mm.errors import InputError, IntentsMMError
from intents_mm.near.encoding import b58decode, b58encode, b64encode
from intents_mm.near.keys import PublicKey, SigningKey, format_signature, is_implicit_account
from intents_mm.near.transaction import (
    Action,
    FunctionCall,
    SignedTransaction,
    Transaction,
    Transfer,
    deserialize_signed_transaction,
    sign_transaction,
)
from intents_mm.sim.verifier import (
    ERR_BAD_ARGS,
    HistoryGoneError,
    MethodNotFoundError,
    ProhibitedInViewError,
    Verifier,
    VerifierError,
    Withdrawal,
)

log = logging.getLogger(__name__)

OnWithdraw = Callable[[str, str, str, int, str], object]
"""``(tx_hash, account_id, asset_id, amount, destination)``; the return value is ignored."""

FaultKind = Literal["timeout", "500", "rpc_error", "tx_timeout"]
FAULT_KINDS: tuple[str, ...] = ("timeout", "500", "rpc_error", "tx_timeout")
FINALITIES = ("optimistic", "near-final", "final")
WAIT_UNTIL = ("NONE", "INCLUDED", "INCLUDED_FINAL", "EXECUTED", "EXECUTED_OPTIMISTIC", "FINAL")
_BRIEF_STATUSES = ("NONE", "INCLUDED", "INCLUDED_FINAL")
_NO_DEPOSIT_METHODS = ("execute_intents", *Verifier.VIEW_METHODS)
INTERNAL_GAS = 300_000_000_000_000
_GAS_BURNT = 2_428_000_000_000
_WASM_PREFIX = "wasm execution failed with error: "


class InvalidTransactionError(IntentsMMError):
    """The chain refused a transaction before executing it (nearcore ``InvalidTxError``).

    ``info`` is the JSON of the error, e.g. ``"Expired"`` or ``{"InvalidNonce": {...}}``.
    """

    def __init__(self, info: object, message: str) -> None:
        self.info = info
        super().__init__(message)


@dataclass
class AccessKey:
    """A full-access key's nonce (the last nonce used; a transaction must use a larger one)."""

    nonce: int
    permission: str = "FullAccess"


@dataclass(frozen=True)
class Block:
    height: int
    hash: str
    prev_hash: str
    timestamp_ns: int

    def to_json(self, author: str) -> dict[str, Any]:
        return {
            "author": author,
            "header": {
                "height": self.height,
                "prev_height": self.height - 1,
                "hash": self.hash,
                "prev_hash": self.prev_hash,
                "timestamp": self.timestamp_ns,
                "timestamp_nanosec": str(self.timestamp_ns),
                "epoch_id": "11111111111111111111111111111111",
                "chunks_included": 1,
                "gas_price": "100000000",
            },
            "chunks": [],
        }


def _action_json(action: Action) -> dict[str, Any]:
    if isinstance(action, FunctionCall):
        return {
            "FunctionCall": {
                "method_name": action.method_name,
                "args": b64encode(action.args),
                "gas": action.gas,
                "deposit": str(action.deposit),
            }
        }
    return {"Transfer": {"deposit": str(action.deposit)}}


@dataclass
class TxRecord:
    """One executed transaction: what it asked, in which block, and how it ended."""

    tx_hash: str
    signer_id: str
    public_key: str
    nonce: int
    receiver_id: str
    actions: list[Action]
    signature: str
    block_height: int
    block_hash: str
    receipt_id: str
    success: bool
    return_value: bytes = b""
    failure: dict[str, Any] | None = None
    error: str | None = None
    logs: list[str] = field(default_factory=list)
    withdrawals: list[Withdrawal] = field(default_factory=list)
    method_not_found: bool = False

    def status_json(self) -> dict[str, Any]:
        if self.success:
            return {"SuccessValue": b64encode(self.return_value)}
        return {"Failure": self.failure}

    def outcome_json(self, final_execution_status: str = "FINAL") -> dict[str, Any]:
        """The FinalExecutionOutcome view, as ``send_tx`` / ``tx`` return it."""
        metadata = {"version": 1, "gas_profile": None}
        return {
            "final_execution_status": final_execution_status,
            "status": self.status_json(),
            "transaction": {
                "signer_id": self.signer_id,
                "public_key": self.public_key,
                "nonce": self.nonce,
                "receiver_id": self.receiver_id,
                "actions": [_action_json(a) for a in self.actions],
                "priority_fee": 0,
                "signature": self.signature,
                "hash": self.tx_hash,
            },
            "transaction_outcome": {
                "proof": [],
                "block_hash": self.block_hash,
                "id": self.tx_hash,
                "outcome": {
                    "logs": [],
                    "receipt_ids": [self.receipt_id],
                    "gas_burnt": _GAS_BURNT,
                    "tokens_burnt": "0",
                    "executor_id": self.signer_id,
                    "status": {"SuccessReceiptId": self.receipt_id},
                    "metadata": metadata,
                },
            },
            "receipts_outcome": [
                {
                    "proof": [],
                    "block_hash": self.block_hash,
                    "id": self.receipt_id,
                    "outcome": {
                        "logs": list(self.logs),
                        "receipt_ids": [],
                        "gas_burnt": _GAS_BURNT,
                        "tokens_burnt": "0",
                        "executor_id": self.receiver_id,
                        "status": self.status_json(),
                        "metadata": metadata,
                    },
                }
            ],
        }


def _panic_failure(index: int, reason: str) -> dict[str, Any]:
    kind = {"FunctionCallError": {"ExecutionError": f"Smart contract panicked: {reason}"}}
    return {"ActionError": {"index": index, "kind": kind}}


class SimNear:
    """The simulated chain. Synchronous except :meth:`submit_internal` (async for its callers)."""

    def __init__(
        self,
        clock: Clock,
        verifier: Verifier,
        *,
        block_time_ms: int = 600,
        on_withdraw: OnWithdraw | None = None,
        genesis_height: int = 100_000_000,
        validity_blocks: int = 86_400,
        chain_id: str = "sim-mainnet",
        auto_create_implicit: bool = True,
        final_lag_blocks: int = 2,
        lagged_views: bool = False,
        history_blocks: int = 600,
    ) -> None:
        """``validity_blocks``: how old a transaction's block hash may be. ``auto_create_implicit``:
        a 64-hex implicit account signing with its own key gets that key on first use.
        ``final_lag_blocks``: how far ``final`` is behind the latest block (``near-final`` is
        ``min(1, final_lag_blocks)``). ``lagged_views``: views read the state at their block (the
        Verifier keeps ``history_blocks`` blocks of history), else always the latest state."""
        if block_time_ms <= 0:
            raise InputError("block_time_ms must be positive")
        if not 0 <= final_lag_blocks <= 1000 or history_blocks <= final_lag_blocks:
            raise InputError("final_lag_blocks must be in 0..1000 and below history_blocks")
        self.final_lag_blocks = final_lag_blocks
        self.lagged_views = lagged_views
        if validity_blocks <= 0 or genesis_height <= 0:
            raise InputError("validity_blocks and genesis_height must be positive")
        self.clock = clock
        self.verifier = verifier
        self.on_withdraw = on_withdraw
        self.chain_id = chain_id
        self.auto_create_implicit = auto_create_implicit
        self._block_ns = block_time_ms * 1_000_000
        self._genesis_height = genesis_height
        self._genesis_ns = clock.now_ns()
        self._validity_blocks = validity_blocks
        self._keys: dict[tuple[str, str], AccessKey] = {}
        self._internal_keys: dict[str, SigningKey] = {}
        self._txs: dict[str, TxRecord] = {}
        self._hash_by_height: dict[int, str] = {}
        self._height_by_hash: dict[str, int] = {}
        if lagged_views:
            verifier.track_blocks(
                lambda: self.height, genesis_height=genesis_height, keep_blocks=history_blocks
            )

    def state_at(self, height: int) -> Verifier:
        """The Verifier as it was at the end of block ``height`` (read-only; the latest when
        ``lagged_views`` is off). ``HistoryGoneError`` below the kept history."""
        return self.verifier.at_height(height) if self.lagged_views else self.verifier

    # --- accounts --------------------------------------------------------------------------------

    def add_account(self, account_id: str, public_key: str, *, nonce: int = 0) -> None:
        """Give ``account_id`` a full-access key ``public_key`` whose nonce starts at ``nonce``."""
        pk = PublicKey.from_string(public_key).to_string()
        if nonce < 0:
            raise InputError("access key nonce must not be negative")
        self._keys[(account_id, pk)] = AccessKey(nonce)

    def access_key(self, account_id: str, public_key: str) -> AccessKey | None:
        try:
            pk = PublicKey.from_string(public_key).to_string()
        except InputError:
            return None
        key = self._keys.get((account_id, pk))
        implicit = self.auto_create_implicit and is_implicit_account(account_id)
        if key is None and implicit and PublicKey(bytes.fromhex(account_id)).to_string() == pk:
            key = self._keys[(account_id, pk)] = AccessKey(0)
        return key

    # --- blocks ------------------------------------------------------------------------------------

    def _hash_of(self, height: int) -> str:
        known = self._hash_by_height.get(height)
        if known is None:
            digest = hashlib.sha256(f"{self.chain_id}:block:{height}".encode()).digest()
            known = b58encode(digest)
            self._hash_by_height[height] = known
            self._height_by_hash[known] = height
        return known

    @property
    def height(self) -> int:
        elapsed = max(0, self.clock.now_ns() - self._genesis_ns)
        return self._genesis_height + elapsed // self._block_ns

    def block_at(self, height: int) -> Block | None:
        """The block at ``height``, or ``None`` before genesis or in the future."""
        if not self._genesis_height <= height <= self.height:
            return None
        prev = self._hash_of(height - 1) if height > self._genesis_height else "1" * 32
        timestamp = self._genesis_ns + (height - self._genesis_height) * self._block_ns
        return Block(height, self._hash_of(height), prev, timestamp)

    def latest_block(self) -> Block:
        block = self.block_at(self.height)
        assert block is not None
        return block

    def block_by_hash(self, block_hash: str) -> Block | None:
        height = self._height_by_hash.get(block_hash)
        return None if height is None else self.block_at(height)

    def block_for_finality(self, finality: str) -> Block:
        """``optimistic`` → latest, ``near-final`` → latest−min(1, lag), ``final`` → latest−lag (lag =
        ``final_lag_blocks``, default 2; never before genesis)."""
        lag = {"optimistic": 0, "near-final": min(1, self.final_lag_blocks), "final": self.final_lag_blocks}[
            finality
        ]
        block = self.block_at(max(self._genesis_height, self.height - lag))
        assert block is not None
        return block

    # --- transactions ------------------------------------------------------------------------------

    def tx_record(self, tx_hash: str) -> TxRecord | None:
        return self._txs.get(tx_hash)

    @property
    def transactions(self) -> list[TxRecord]:
        return list(self._txs.values())

    def submit_signed(self, raw: bytes) -> TxRecord:
        """Validate and execute ``borsh(SignedTransaction)``. An already executed transaction returns its
        record again. ``InputError`` for bytes that do not decode; ``InvalidTransactionError`` when the
        chain refuses it (signature, access key, nonce, expired block hash)."""
        stx = deserialize_signed_transaction(raw)
        tx_hash = stx.hash_b58()
        existing = self._txs.get(tx_hash)
        if existing is not None:
            return existing
        tx = stx.transaction
        if not tx.public_key.verify(stx.hash(), stx.signature):
            raise InvalidTransactionError("InvalidSignature", "transaction signature does not verify")
        pk = tx.public_key.to_string()
        key = self.access_key(tx.signer_id, pk)
        if key is None:
            info = {
                "InvalidAccessKeyError": {"AccessKeyNotFound": {"account_id": tx.signer_id, "public_key": pk}}
            }
            raise InvalidTransactionError(info, f"access key {pk} of {tx.signer_id} does not exist")
        if tx.nonce <= key.nonce:
            raise InvalidTransactionError(
                {"InvalidNonce": {"ak_nonce": key.nonce, "tx_nonce": tx.nonce}},
                f"transaction nonce {tx.nonce} must be larger than the access key nonce {key.nonce}",
            )
        block = self.block_by_hash(b58encode(tx.block_hash))
        if block is None or block.height < self.height - self._validity_blocks:
            raise InvalidTransactionError("Expired", "transaction block hash is unknown or too old")
        key.nonce = tx.nonce
        record = self._execute(stx, tx_hash)
        self._txs[tx_hash] = record
        self._report_withdrawals(record)
        return record

    def _execute(self, stx: SignedTransaction, tx_hash: str) -> TxRecord:
        tx = stx.transaction
        block = self.latest_block()
        receipt_id = b58encode(hashlib.sha256(b"receipt:" + stx.hash()).digest())
        record = TxRecord(
            tx_hash=tx_hash,
            signer_id=tx.signer_id,
            public_key=tx.public_key.to_string(),
            nonce=tx.nonce,
            receiver_id=tx.receiver_id,
            actions=list(tx.actions),
            signature=format_signature(stx.signature),
            block_height=block.height,
            block_hash=block.hash,
            receipt_id=receipt_id,
            success=True,
        )
        index = 0
        logs: list[str] = []
        withdrawals: list[Withdrawal] = []
        value = b""
        try:
            with self.verifier.atomic():
                for index, action in enumerate(tx.actions):
                    if isinstance(action, Transfer):
                        continue
                    if tx.receiver_id != self.verifier.contract_id:
                        record.failure = {
                            "ActionError": {
                                "index": index,
                                "kind": {
                                    "FunctionCallError": {
                                        "CompilationError": {
                                            "CodeDoesNotExist": {"account_id": tx.receiver_id}
                                        }
                                    }
                                },
                            }
                        }
                        record.error = f"account {tx.receiver_id} has no contract"
                        raise _Abort
                    try:
                        args = json.loads(action.args) if action.args else {}
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise VerifierError(ERR_BAD_ARGS) from None
                    result = self.verifier.call(tx.signer_id, action.method_name, args, action.deposit)
                    logs.extend(result.logs)
                    withdrawals.extend(result.withdrawals)
                    value = b"" if result.value is None else _compact(result.value)
        except _Abort:
            record.success = False
        except MethodNotFoundError:
            record.success = False
            record.method_not_found = True
            record.error = "MethodNotFound"
            kind = {"FunctionCallError": {"MethodResolveError": "MethodNotFound"}}
            record.failure = {"ActionError": {"index": index, "kind": kind}}
        except VerifierError as exc:
            record.success = False
            record.error = exc.reason
            record.failure = _panic_failure(index, exc.reason)
        record.logs = logs
        if record.success:
            record.return_value = value
            record.withdrawals = withdrawals
        return record

    def _report_withdrawals(self, record: TxRecord) -> None:
        if self.on_withdraw is None:
            return
        for w in record.withdrawals:
            destination = w.poa_destination
            if destination is None:
                continue
            try:
                self.on_withdraw(record.tx_hash, w.account_id, w.asset_id, w.amount, destination)
            except Exception:
                log.exception("on_withdraw failed for %s in tx %s", w.asset_id, record.tx_hash)

    def _internal_key(self, signer_id: str) -> SigningKey:
        key = self._internal_keys.get(signer_id)
        if key is None:
            key = SigningKey.from_seed(hashlib.sha256(f"sim-near-internal:{signer_id}".encode()).digest())
            self._internal_keys[signer_id] = key
            self._keys.setdefault((signer_id, key.public_key.to_string()), AccessKey(0))
        return key

    async def submit_internal(
        self,
        signer_id: str,
        receiver_id: str,
        method_name: str,
        args: dict[str, Any],
        *,
        deposit: int | None = None,
    ) -> TxRecord:
        """Sign (with a key the chain keeps for ``signer_id``) and execute one FunctionCall, recording a
        real transaction. ``deposit`` defaults to what the method requires (0 for ``execute_intents``,
        else 1 yocto). Raises ``VerifierError`` (``MethodNotFoundError``) when it fails; the failed
        transaction stays recorded."""
        key = self._internal_key(signer_id)
        access = self._keys[(signer_id, key.public_key.to_string())]
        if deposit is None:
            deposit = 0 if method_name in _NO_DEPOSIT_METHODS else 1
        tx = Transaction(
            signer_id=signer_id,
            public_key=key.public_key,
            nonce=access.nonce + 1,
            receiver_id=receiver_id,
            block_hash=b58decode(self.latest_block().hash),
            actions=[FunctionCall(method_name, _compact(args), INTERNAL_GAS, deposit)],
        )
        record = self.submit_signed(sign_transaction(tx, key).to_bytes())
        if not record.success:
            if record.method_not_found:
                raise MethodNotFoundError(method_name)
            raise VerifierError(record.error or "transaction failed")
        return record


class _Abort(Exception):
    """Aborts a transaction whose failure JSON is already set."""


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# --- JSON-RPC server ---------------------------------------------------------------------------------


class _RpcFailure(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error
        super().__init__(str(error.get("name")))


def _handler_error(name: str, info: object, data: object) -> _RpcFailure:
    return _RpcFailure(
        {
            "name": "HANDLER_ERROR",
            "cause": {"name": name, "info": info},
            "code": -32000,
            "message": "Server error",
            "data": data,
        }
    )


def _parse_error(message: str) -> _RpcFailure:
    return _RpcFailure(
        {
            "name": "REQUEST_VALIDATION_ERROR",
            "cause": {"name": "PARSE_ERROR", "info": {"error_message": message}},
            "code": -32700,
            "message": "Parse error",
            "data": message,
        }
    )


def _internal_error(message: str) -> dict[str, Any]:
    return {
        "name": "INTERNAL_ERROR",
        "cause": {"name": "INTERNAL_ERROR", "info": {"error_message": message}},
        "code": -32000,
        "message": "Server error",
        "data": message,
    }


def _timeout_error() -> dict[str, Any]:
    return {
        "name": "HANDLER_ERROR",
        "cause": {"name": "TIMEOUT_ERROR", "info": {}},
        "code": -32000,
        "message": "Server error",
        "data": "Timeout",
    }


def _vm_error(exc: VerifierError) -> str:
    if isinstance(exc, MethodNotFoundError):
        return _WASM_PREFIX + "FunctionCallError(MethodResolveError(MethodNotFound))"
    if isinstance(exc, ProhibitedInViewError):
        return _WASM_PREFIX + 'HostError(ProhibitedInView { method_name: "storage_write" })'
    return (
        _WASM_PREFIX
        + f"FunctionCallError(ExecutionError({json.dumps('Smart contract panicked: ' + exc.reason)}))"
    )


def _params_dict(params: object, what: str) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise _parse_error(f"{what} params must be an object")
    return cast(dict[str, Any], params)


def _param_str(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str):
        raise _parse_error(f"missing field `{name}`")
    return value


class SimNearRpcServer:
    """NEAR JSON-RPC 2.0 over aiohttp, serving a :class:`SimNear`."""

    def __init__(
        self,
        chain: SimNear,
        *,
        contract_error_shape: Literal["result_error", "rpc_error"] = "result_error",
        fault_timeout_s: float = 30.0,
        seed: int = 0,
    ) -> None:
        """``contract_error_shape``: a view that panics answers ``result.error`` (a string in a normal
        result, older nodes) or a ``CONTRACT_EXECUTION_ERROR`` JSON-RPC error (newer nodes).
        ``fault_timeout_s``: how long a ``timeout`` fault holds the request before answering
        ``TIMEOUT_ERROR`` (pick more than the client's timeout)."""
        if contract_error_shape not in ("result_error", "rpc_error"):
            raise InputError(
                f"contract_error_shape must be result_error or rpc_error, got {contract_error_shape!r}"
            )
        self.chain = chain
        self.contract_error_shape = contract_error_shape
        self.fault_timeout_s = fault_timeout_s
        self.calls: dict[str, int] = {}
        self.url: str | None = None
        self._rng = random.Random(seed)
        self._fail_next: list[tuple[str, str | None]] = []
        self._fault_rate = 0.0
        self._fault_rate_kind = "timeout"
        self._fault_rate_method: str | None = None
        self._latency_s = 0.0
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 = any free port); returns the base URL (POST there)."""
        if self._runner is not None:
            raise InputError("the NEAR RPC simulator is already running")
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_host, bound_port = cast(tuple[str, int], runner.addresses[0][:2])
        self.url = f"http://{bound_host}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        """Stop serving; requests held by a ``timeout`` fault are answered at once."""
        self._stopping.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self.url = None

    # --- faults --------------------------------------------------------------------------------------------

    def fail_next(self, n: int = 1, kind: str = "timeout", *, method: str | None = None) -> None:
        """The next ``n`` requests (of ``method`` only, when given) fail with ``kind``:

        * ``timeout``: held ``fault_timeout_s`` unprocessed, then ``TIMEOUT_ERROR``;
        * ``500``: HTTP 500, unprocessed;
        * ``rpc_error``: JSON-RPC ``INTERNAL_ERROR``, unprocessed;
        * ``tx_timeout``: processed (a transaction IS executed), then answered ``TIMEOUT_ERROR`` at once.
        """
        if kind not in FAULT_KINDS:
            raise InputError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        if n < 0:
            raise InputError("fault count must not be negative")
        self._fail_next.extend([(kind, method)] * n)

    def set_fault_rate(self, rate: float, kind: str = "timeout", *, method: str | None = None) -> None:
        """Fail a random ``rate`` (0..1) of requests (of ``method`` only, when given) with ``kind``."""
        if kind not in FAULT_KINDS:
            raise InputError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        if not 0.0 <= rate <= 1.0:
            raise InputError("fault rate must be within 0..1")
        self._fault_rate, self._fault_rate_kind, self._fault_rate_method = rate, kind, method

    def set_timeout_rate(self, rate: float) -> None:
        self.set_fault_rate(rate, "timeout")

    def set_latency_ms(self, ms: int) -> None:
        """Delay every answer by ``ms`` milliseconds (transport latency)."""
        if ms < 0:
            raise InputError("latency must not be negative")
        self._latency_s = ms / 1000

    def _take_fault(self, method: str) -> str | None:
        for i, (kind, only) in enumerate(self._fail_next):
            if only is None or only == method:
                del self._fail_next[i]
                return kind
        applies = self._fault_rate and self._fault_rate_method in (None, method)
        if applies and self._rng.random() < self._fault_rate:
            return self._fault_rate_kind
        return None

    # --- request handling ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _reply(None, error=_parse_error(f"invalid JSON: {exc}").error)
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            return _reply(
                body.get("id") if isinstance(body, dict) else None,
                error={"name": "REQUEST_VALIDATION_ERROR", "code": -32600, "message": "Invalid Request"},
            )
        req_id = body.get("id")
        method = cast(str, body["method"])
        self.calls[method] = self.calls.get(method, 0) + 1
        fault = self._take_fault(method)
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        if fault == "500":
            return web.Response(status=500, text="Internal Server Error")
        if fault == "rpc_error":
            return _reply(req_id, error=_internal_error("simulated internal error"))
        if fault == "timeout":
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=self.fault_timeout_s)
            except TimeoutError:
                pass
            return _reply(req_id, error=_timeout_error())
        try:
            result = self._dispatch(method, body.get("params"))
        except _RpcFailure as failure:
            return _reply(req_id, error=failure.error)
        if fault == "tx_timeout":
            return _reply(req_id, error=_timeout_error())
        return _reply(req_id, result=result)

    def _dispatch(self, method: str, params: object) -> object:
        if method == "query":
            return self._query(_params_dict(params, "query"))
        if method == "block":
            return self._block(params)
        if method == "send_tx":
            p = _params_dict(params, "send_tx")
            wait_until = p.get("wait_until", "EXECUTED_OPTIMISTIC")
            return self._send(_param_str(p, "signed_tx_base64"), wait_until)
        if method in ("broadcast_tx_commit", "broadcast_tx_async"):
            if not isinstance(params, list) or len(params) != 1 or not isinstance(params[0], str):
                raise _parse_error(f'{method} params must be ["<base64 signed transaction>"]')
            if method == "broadcast_tx_async":
                record = self._submit(params[0])
                return record.tx_hash
            return self._send(params[0], "EXECUTED_OPTIMISTIC")
        if method in ("tx", "EXPERIMENTAL_tx_status"):
            return self._tx_status(params)
        if method == "status":
            block = self.chain.latest_block()
            return {
                "chain_id": self.chain.chain_id,
                "protocol_version": 73,
                "version": {"version": "sim", "build": "intents-mm"},
                "sync_info": {
                    "latest_block_hash": block.hash,
                    "latest_block_height": block.height,
                    "latest_block_time": str(block.timestamp_ns),
                    "syncing": False,
                },
            }
        raise _RpcFailure(
            {
                "name": "REQUEST_VALIDATION_ERROR",
                "cause": {"name": "METHOD_NOT_FOUND", "info": {"method_name": method}},
                "code": -32601,
                "message": "Method not found",
                "data": method,
            }
        )

    def _block_ref(self, p: dict[str, Any]) -> Block:
        if "block_id" in p:
            block_id = p["block_id"]
            block: Block | None
            if isinstance(block_id, int) and not isinstance(block_id, bool):
                block = self.chain.block_at(block_id)
            elif isinstance(block_id, str):
                block = self.chain.block_by_hash(block_id)
            else:
                raise _parse_error("block_id must be a height or a block hash")
            if block is None:
                raise _handler_error(
                    "UNKNOWN_BLOCK",
                    {"block_reference": {"block_id": block_id}},
                    f"DB Not Found Error: BLOCK: {block_id}",
                )
            return block
        finality = p.get("finality")
        if finality not in FINALITIES:
            raise _parse_error(f"finality must be one of {', '.join(FINALITIES)} (or give block_id)")
        return self.chain.block_for_finality(cast(str, finality))

    def _block(self, params: object) -> dict[str, Any]:
        if isinstance(params, list) and len(params) == 1:
            params = {"block_id": params[0]}
        return self._block_ref(_params_dict(params, "block")).to_json("sim-validator.near")

    def _query(self, p: dict[str, Any]) -> dict[str, Any]:
        block = self._block_ref(p)
        request_type = p.get("request_type")
        if request_type == "call_function":
            return self._call_function(p, block)
        if request_type == "view_access_key":
            account_id = _param_str(p, "account_id")
            public_key = _param_str(p, "public_key")
            key = self.chain.access_key(account_id, public_key)
            if key is None:
                raise _handler_error(
                    "UNKNOWN_ACCESS_KEY",
                    {"public_key": public_key, "block_height": block.height, "block_hash": block.hash},
                    f"Access key for public key {public_key} has never been observed on the node",
                )
            return {
                "nonce": key.nonce,
                "permission": key.permission,
                "block_height": block.height,
                "block_hash": block.hash,
            }
        raise _parse_error(f"unsupported request_type {str(request_type)[:40]!r}")

    def _call_function(self, p: dict[str, Any], block: Block) -> dict[str, Any]:
        account_id = _param_str(p, "account_id")
        method_name = _param_str(p, "method_name")
        args_b64 = p.get("args_base64", "")
        if not isinstance(args_b64, str):
            raise _parse_error("args_base64 must be a string")
        try:
            args_bytes = base64.b64decode(args_b64, validate=True)
        except (binascii.Error, ValueError):
            raise _parse_error("args_base64 is not valid base64") from None
        try:
            verifier = self.chain.state_at(block.height)
        except HistoryGoneError:
            raise _handler_error(
                "GARBAGE_COLLECTED_BLOCK",
                {"block_height": block.height, "block_hash": block.hash},
                f"The data for block #{block.height} is garbage collected on this node, "
                "use an archival node to fetch historical data",
            ) from None
        if account_id != verifier.contract_id:
            raise _handler_error(
                "UNKNOWN_ACCOUNT",
                {"requested_account_id": account_id, "block_height": block.height, "block_hash": block.hash},
                f"account {account_id} does not exist while viewing",
            )
        try:
            try:
                args = json.loads(args_bytes) if args_bytes else {}
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise VerifierError(ERR_BAD_ARGS) from None
            value = verifier.view(method_name, args)
        except VerifierError as exc:
            vm_error = _vm_error(exc)
            if self.contract_error_shape == "rpc_error":
                raise _handler_error(
                    "CONTRACT_EXECUTION_ERROR",
                    {"vm_error": vm_error, "block_height": block.height, "block_hash": block.hash},
                    f"Function call returned an error: {vm_error}",
                ) from None
            return {"error": vm_error, "logs": [], "block_height": block.height, "block_hash": block.hash}
        return {
            "result": list(_compact(value)),
            "logs": [],
            "block_height": block.height,
            "block_hash": block.hash,
        }

    def _submit(self, signed_tx_base64: str) -> TxRecord:
        try:
            raw = base64.b64decode(signed_tx_base64, validate=True)
        except (binascii.Error, ValueError):
            raise _parse_error("signed transaction is not valid base64") from None
        try:
            return self.chain.submit_signed(raw)
        except InputError as exc:
            raise _parse_error(f"failed to decode transaction: {exc}") from None
        except InvalidTransactionError as exc:
            raise _handler_error(
                "INVALID_TRANSACTION", exc.info, {"TxExecutionError": {"InvalidTxError": exc.info}}
            ) from None

    def _send(self, signed_tx_base64: str, wait_until: object) -> dict[str, Any]:
        if wait_until not in WAIT_UNTIL:
            raise _parse_error(f"wait_until must be one of {', '.join(WAIT_UNTIL)}")
        record = self._submit(signed_tx_base64)
        status = str(wait_until)
        if status in _BRIEF_STATUSES:
            return {"final_execution_status": status}
        return record.outcome_json(status)

    def _tx_status(self, params: object) -> dict[str, Any]:
        if isinstance(params, list) and len(params) == 2:
            params = {"tx_hash": params[0], "sender_account_id": params[1]}
        p = _params_dict(params, "tx")
        tx_hash = _param_str(p, "tx_hash")
        sender = _param_str(p, "sender_account_id")
        record = self.chain.tx_record(tx_hash)
        if record is None or record.signer_id != sender:
            raise _handler_error(
                "UNKNOWN_TRANSACTION",
                {"requested_transaction_hash": tx_hash},
                f"Transaction {tx_hash} doesn't exist",
            )
        return record.outcome_json("FINAL")


def _reply(req_id: object, *, result: object = None, error: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id}
    if error is not None:
        body["error"] = error
    else:
        body["result"] = result
    return web.Response(text=json.dumps(body, separators=(",", ":")), content_type="application/json")
