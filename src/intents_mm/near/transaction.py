"""NEAR transactions (V0) in Borsh, signed with ed25519 (reference section 5.5).

``tx_hash = sha256(borsh(Transaction))``; ``SignedTransaction = borsh(Transaction) || 0x00 || sig64``.
Only the ``FunctionCall`` (tag 2) and ``Transfer`` (tag 3) actions are supported; other action
kinds are rejected as unsupported when decoding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from intents_mm.errors import InputError
from intents_mm.near.borsh import BorshReader, BorshWriter
from intents_mm.near.encoding import b58encode, b64encode
from intents_mm.near.keys import PublicKey, SigningKey

KEY_TYPE_ED25519 = 0
ACTION_FUNCTION_CALL = 2
ACTION_TRANSFER = 3
_ACTION_NAMES = {
    0: "CreateAccount",
    1: "DeployContract",
    4: "Stake",
    5: "AddKey",
    6: "DeleteKey",
    7: "DeleteAccount",
    8: "Delegate",
}


@dataclass(frozen=True)
class FunctionCall:
    method_name: str
    args: bytes
    gas: int
    deposit: int


@dataclass(frozen=True)
class Transfer:
    deposit: int


Action = FunctionCall | Transfer


@dataclass(frozen=True)
class Transaction:
    signer_id: str
    public_key: PublicKey
    nonce: int
    receiver_id: str
    block_hash: bytes
    actions: list[Action]


@dataclass(frozen=True)
class SignedTransaction:
    transaction: Transaction
    signature: bytes

    def hash(self) -> bytes:
        return transaction_hash(self.transaction)

    def hash_b58(self) -> str:
        """The NEAR transaction hash (base58 of sha256 of the unsigned transaction bytes)."""
        return b58encode(self.hash())

    def to_bytes(self) -> bytes:
        return serialize_signed_transaction(self)

    def to_base64(self) -> str:
        """What ``send_tx`` takes as ``signed_tx_base64``."""
        return b64encode(serialize_signed_transaction(self))


def _write_action(w: BorshWriter, action: Action) -> None:
    if isinstance(action, FunctionCall):
        w.u8(ACTION_FUNCTION_CALL).string(action.method_name).bytes(action.args)
        w.u64(action.gas).u128(action.deposit)
    elif isinstance(action, Transfer):
        w.u8(ACTION_TRANSFER).u128(action.deposit)
    else:
        raise InputError(f"unsupported action {type(action).__name__}")


def _write_transaction(w: BorshWriter, tx: Transaction) -> None:
    w.string(tx.signer_id)
    w.u8(KEY_TYPE_ED25519).fixed_bytes(tx.public_key.raw, 32)
    w.u64(tx.nonce)
    w.string(tx.receiver_id)
    w.fixed_bytes(tx.block_hash, 32)
    w.vec(tx.actions, _write_action)


def serialize_transaction(tx: Transaction) -> bytes:
    w = BorshWriter()
    _write_transaction(w, tx)
    return w.getvalue()


def transaction_hash(tx: Transaction) -> bytes:
    return hashlib.sha256(serialize_transaction(tx)).digest()


def sign_transaction(tx: Transaction, key: SigningKey) -> SignedTransaction:
    """Sign ``tx``; ``InputError`` if the key is not the transaction's public key."""
    if key.public_key != tx.public_key:
        raise InputError("signing key does not match the transaction's public key")
    return SignedTransaction(tx, key.sign(transaction_hash(tx)))


def serialize_signed_transaction(stx: SignedTransaction) -> bytes:
    w = BorshWriter()
    _write_transaction(w, stx.transaction)
    w.u8(KEY_TYPE_ED25519).fixed_bytes(stx.signature, 64)
    return w.getvalue()


def _read_key_type(r: BorshReader, what: str) -> None:
    key_type = r.u8()
    if key_type != KEY_TYPE_ED25519:
        raise InputError(f"unsupported {what} key type {key_type} (only ed25519)")


def _read_action(r: BorshReader) -> Action:
    tag = r.u8()
    if tag == ACTION_FUNCTION_CALL:
        return FunctionCall(method_name=r.string(), args=r.bytes(), gas=r.u64(), deposit=r.u128())
    if tag == ACTION_TRANSFER:
        return Transfer(deposit=r.u128())
    if tag in _ACTION_NAMES:
        raise InputError(f"unsupported transaction action {_ACTION_NAMES[tag]} (tag {tag})")
    raise InputError(f"unknown transaction action tag {tag}")


def _read_transaction(r: BorshReader) -> Transaction:
    signer_id = r.string()
    _read_key_type(r, "public")
    public_key = PublicKey(r.fixed_bytes(32))
    nonce = r.u64()
    receiver_id = r.string()
    block_hash = r.fixed_bytes(32)
    actions = r.vec(_read_action)
    return Transaction(signer_id, public_key, nonce, receiver_id, block_hash, actions)


def deserialize_transaction(data: bytes) -> Transaction:
    r = BorshReader(data)
    tx = _read_transaction(r)
    r.finish()
    return tx


def deserialize_signed_transaction(data: bytes) -> SignedTransaction:
    """Decode ``borsh(SignedTransaction)``; ``InputError`` on bad or trailing bytes or unknown actions."""
    r = BorshReader(data)
    tx = _read_transaction(r)
    _read_key_type(r, "signature")
    signature = r.fixed_bytes(64)
    r.finish()
    return SignedTransaction(tx, signature)
