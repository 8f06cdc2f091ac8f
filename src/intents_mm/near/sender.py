"""Signs and submits function-call transactions from one account/access key.

The access-key nonce is read once with ``view_access_key`` and then advanced locally under an
``asyncio.Lock``, so concurrent ``call``s get distinct, increasing nonces. When the node answers
``InvalidNonce`` (someone else used the key) or ``Expired`` (stale block hash), the nonce and block
hash are re-read and the call is retried once with a freshly signed transaction.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from intents_mm.clock import SYSTEM_CLOCK, Clock
from intents_mm.errors import InputError
from intents_mm.near.encoding import b58decode
from intents_mm.near.keys import SigningKey
from intents_mm.near.rpc import (
    DEFAULT_WAIT_UNTIL,
    ExpiredTransactionError,
    InvalidNonceError,
    NearRpcClient,
)
from intents_mm.near.transaction import FunctionCall, Transaction, sign_transaction

DEFAULT_GAS = 100 * 10**12
BLOCK_HASH_MAX_AGE_NS = 60 * 10**9


@dataclass(frozen=True)
class TxResult:
    tx_hash: str
    outcome: dict[str, Any]


class TransactionSender:
    """Submits ``FunctionCall`` transactions signed by ``key`` on behalf of ``account_id``."""

    def __init__(
        self, rpc: NearRpcClient, account_id: str, key: SigningKey, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.rpc = rpc
        self.account_id = account_id
        self._key = key
        self._clock = clock
        self._lock = asyncio.Lock()
        self._nonce: int | None = None
        self._block_hash: bytes | None = None
        self._block_hash_at_ns = 0

    def __repr__(self) -> str:
        return f"TransactionSender(account_id={self.account_id!r}, public_key={self._key.public_key})"

    async def _refresh(self) -> None:
        """Re-read the access key (nonce and block hash); never moves the local nonce backwards."""
        view = await self.rpc.view_access_key(self.account_id, self._key.public_key)
        self._nonce = view.nonce if self._nonce is None else max(self._nonce, view.nonce)
        self._block_hash = b58decode(view.block_hash)
        self._block_hash_at_ns = self._clock.monotonic_ns()

    async def _next_nonce_and_hash(self) -> tuple[int, bytes]:
        async with self._lock:
            if self._nonce is None:
                await self._refresh()
            elif self._clock.monotonic_ns() - self._block_hash_at_ns > BLOCK_HASH_MAX_AGE_NS:
                block = await self.rpc.block()
                self._block_hash = b58decode(block.hash_b58)
                self._block_hash_at_ns = self._clock.monotonic_ns()
            assert self._nonce is not None and self._block_hash is not None
            self._nonce += 1
            return self._nonce, self._block_hash

    async def _force_refresh(self) -> None:
        async with self._lock:
            await self._refresh()

    async def call(
        self,
        receiver_id: str,
        method_name: str,
        args: dict[str, Any],
        *,
        gas: int = DEFAULT_GAS,
        deposit: int = 1,
        wait_until: str = DEFAULT_WAIT_UNTIL,
    ) -> TxResult:
        """Sign and submit one function call; ``ContractError`` if it or any receipt failed."""
        if gas <= 0 or deposit < 0:
            raise InputError("gas must be positive and deposit non-negative")
        action = FunctionCall(method_name, json.dumps(args, separators=(",", ":")).encode(), gas, deposit)
        for attempt in range(2):
            nonce, block_hash = await self._next_nonce_and_hash()
            tx = Transaction(self.account_id, self._key.public_key, nonce, receiver_id, block_hash, [action])
            signed = sign_transaction(tx, self._key)
            try:
                outcome = await self.rpc.send_tx(signed, wait_until=wait_until)
            except (InvalidNonceError, ExpiredTransactionError):
                if attempt == 1:
                    raise
                await self._force_refresh()
                continue
            return TxResult(signed.hash_b58(), outcome)
        raise AssertionError("unreachable")  # pragma: no cover
