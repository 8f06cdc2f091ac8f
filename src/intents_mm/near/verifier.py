"""Typed views of the ``intents.near`` Verifier contract (reference section 4.1).

Each helper validates the shape of the answer: a malformed answer raises ``RpcError`` and never
returns garbage. Contract panics surface as ``ContractError`` (from ``NearRpcClient``).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from intents_mm.errors import InputError, RpcError
from intents_mm.near.encoding import b64encode
from intents_mm.near.keys import PublicKey
from intents_mm.near.rpc import NearRpcClient
from intents_mm.near.sender import TransactionSender, TxResult

__all__ = [
    "DEFAULT_VERIFIER_CONTRACT",
    "TransactionSender",
    "TxResult",
    "VerifierClient",
    "parse_ft_withdraw_tx",
]

DEFAULT_VERIFIER_CONTRACT = "intents.near"
_U128_MAX = 2**128 - 1
_MAX_FEE_PIPS = 1_000_000


def _parse_u128(value: object, what: str) -> int:
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        raise RpcError(f"malformed Verifier answer: {what} is not a decimal u128 string")
    if len(value) > 1 and value[0] == "0":
        raise RpcError(f"malformed Verifier answer: {what} has leading zeros")
    number = int(value)
    if number > _U128_MAX:
        raise RpcError(f"malformed Verifier answer: {what} exceeds u128")
    return number


def _require_bool(value: object, method: str) -> bool:
    if not isinstance(value, bool):
        raise RpcError(f"malformed Verifier answer to {method}: expected true/false")
    return value


class VerifierClient:
    """View calls on the Verifier contract through a ``NearRpcClient``."""

    def __init__(
        self, rpc: NearRpcClient, contract_id: str = DEFAULT_VERIFIER_CONTRACT, *, finality: str = "final"
    ) -> None:
        self.rpc = rpc
        self.contract_id = contract_id
        self.finality = finality

    async def _view(self, method: str, args: dict[str, Any]) -> tuple[object, int]:
        return await self.rpc.call_function(self.contract_id, method, args, finality=self.finality)

    async def mt_batch_balance_of(self, account_id: str, token_ids: list[str]) -> tuple[dict[str, int], int]:
        """Balances (smallest units) of ``token_ids`` for ``account_id`` and the block height read."""
        if len(set(token_ids)) != len(token_ids):
            raise InputError("mt_batch_balance_of token ids must be distinct")
        value, height = await self._view(
            "mt_batch_balance_of", {"account_id": account_id, "token_ids": list(token_ids)}
        )
        if not isinstance(value, list) or len(value) != len(token_ids):
            expected = f"expected a list of {len(token_ids)} balances"
            raise RpcError(f"malformed Verifier answer to mt_batch_balance_of: {expected}")
        balances = {tid: _parse_u128(v, f"balance of {tid}") for tid, v in zip(token_ids, value, strict=True)}
        return balances, height

    async def has_public_key(self, account_id: str, public_key: PublicKey | str) -> bool:
        key = public_key.to_string() if isinstance(public_key, PublicKey) else public_key
        value, _ = await self._view("has_public_key", {"account_id": account_id, "public_key": key})
        return _require_bool(value, "has_public_key")

    async def public_keys_of(self, account_id: str) -> list[str]:
        value, _ = await self._view("public_keys_of", {"account_id": account_id})
        if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
            raise RpcError("malformed Verifier answer to public_keys_of: expected a list of key strings")
        for key in value:
            try:
                PublicKey.from_string(key)
            except InputError as exc:
                raise RpcError(f"malformed Verifier answer to public_keys_of: {exc}") from None
        return list(value)

    async def is_nonce_used(self, account_id: str, nonce: bytes) -> bool:
        if len(nonce) != 32:
            raise InputError(f"nonce must be 32 bytes, got {len(nonce)}")
        value, _ = await self._view("is_nonce_used", {"account_id": account_id, "nonce": b64encode(nonce)})
        return _require_bool(value, "is_nonce_used")

    async def current_salt(self) -> bytes:
        """The contract's current nonce salt (4 bytes; the view returns 8 hex characters)."""
        value, _ = await self._view("current_salt", {})
        if not isinstance(value, str) or len(value) != 8:
            raise RpcError("malformed Verifier answer to current_salt: expected 8 hex characters")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise RpcError("malformed Verifier answer to current_salt: expected 8 hex characters") from None

    async def is_valid_salt(self, salt: bytes) -> bool:
        if len(salt) != 4:
            raise InputError(f"salt must be 4 bytes, got {len(salt)}")
        value, _ = await self._view("is_valid_salt", {"salt": salt.hex()})
        return _require_bool(value, "is_valid_salt")

    async def fee(self) -> int:
        """The protocol fee in pips (1 pip = 1e-6)."""
        value, _ = await self._view("fee", {})
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_FEE_PIPS:
            raise RpcError("malformed Verifier answer to fee: expected an integer 0..1000000 (pips)")
        return value

    async def simulate_intents(self, signed: list[dict[str, Any]]) -> dict[str, Any]:
        """Dry-run signed payloads; the contract's report (``intents_executed``, ``state``, ...)."""
        value, _ = await self._view("simulate_intents", {"signed": signed})
        if not isinstance(value, dict):
            raise RpcError("malformed Verifier answer to simulate_intents: expected an object")
        if not isinstance(value.get("intents_executed", []), list):
            raise RpcError("malformed Verifier answer to simulate_intents: intents_executed is not a list")
        return value


def parse_ft_withdraw_tx(
    outcome: dict[str, Any], *, signer_id: str, contract_id: str
) -> tuple[str, int, str]:
    """``(token, amount, receiver_id)`` of the ``ft_withdraw`` call in a transaction's final outcome
    (RPC ``tx``), checked to be signed by ``signer_id`` and sent to ``contract_id``.

    ``token`` is the unprefixed NEP-141 contract (``btc.omft.near``). :class:`InputError` with the reason
    when the transaction is not such a call (another signer or receiver, no ``ft_withdraw``, malformed
    arguments, or more than one withdrawal)."""
    tx = outcome.get("transaction")
    if not isinstance(tx, dict):
        raise InputError("the transaction outcome has no transaction")
    if tx.get("signer_id") != signer_id:
        raise InputError(f"the transaction was signed by {tx.get('signer_id')!r}, not by {signer_id!r}")
    if tx.get("receiver_id") != contract_id:
        raise InputError(f"the transaction was sent to {tx.get('receiver_id')!r}, not to {contract_id!r}")
    calls = []
    for action in tx.get("actions") or []:
        call = action.get("FunctionCall") if isinstance(action, dict) else None
        if isinstance(call, dict) and call.get("method_name") == "ft_withdraw":
            calls.append(call)
    if len(calls) != 1:
        raise InputError(f"the transaction has {len(calls)} ft_withdraw calls, not exactly one")
    try:
        args = json.loads(base64.b64decode(str(calls[0].get("args", "")), validate=True))
    except ValueError:
        raise InputError("the ft_withdraw arguments are not base64 JSON") from None
    if not isinstance(args, dict):
        raise InputError("the ft_withdraw arguments are not a JSON object")
    token, receiver = args.get("token"), args.get("receiver_id")
    if not isinstance(token, str) or not isinstance(receiver, str):
        raise InputError("the ft_withdraw arguments have no token or receiver_id")
    try:
        amount = _parse_u128(args.get("amount"), "ft_withdraw amount")
    except RpcError as exc:
        raise InputError(str(exc)) from None
    return token, amount, receiver
