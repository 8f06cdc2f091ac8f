"""The Verifier's signed envelope (``MultiPayload``) for the ``nep413`` and ``raw_ed25519`` standards.

* ``nep413``: ``{"standard":"nep413","payload":{"message","nonce","recipient"[,"callbackUrl"]},
  "public_key","signature"}``; the signature is over ``nep413_hash(...)``; the message is JSON with
  ``signer_id``, ``deadline`` and ``intents`` (nonce and verifying contract come from the payload).
* ``raw_ed25519``: ``{"standard":"raw_ed25519","payload":"<JSON string>","public_key","signature"}``;
  the signature is over the payload's UTF-8 bytes; the payload JSON carries ``signer_id``,
  ``verifying_contract``, ``deadline``, ``nonce`` and ``intents``.

The intent hash (``hash()``) is what the Verifier and the relay call the intent / quote hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal, cast

from intents_mm.errors import InputError
from intents_mm.near.encoding import b58encode, b64decode, b64encode
from intents_mm.near.keys import PublicKey, SigningKey, format_signature, parse_signature
from intents_mm.near.nep413 import NONCE_LEN, nep413_hash
from intents_mm.near.timefmt import format_deadline, parse_deadline

Standard = Literal["nep413", "raw_ed25519"]
DEFAULT_VERIFIER = "intents.near"
_I128_MIN = -(2**127)
_I128_MAX = 2**127 - 1


def _decode_nonce_b64(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise InputError(f"{where} must be a base64 string")
    raw = b64decode(value)
    if len(raw) != NONCE_LEN:
        raise InputError(f"{where} must decode to {NONCE_LEN} bytes, got {len(raw)}")
    return raw


def _json_object(text: str, what: str) -> dict[str, object]:
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{what} must be a JSON object")
    return cast(dict[str, object], obj)


@dataclass(frozen=True)
class SignedPayload:
    """One signed payload, standard-neutral.

    ``message`` is the signed string: the NEP-413 ``payload.message`` or the raw_ed25519 payload.
    ``nonce`` and ``recipient`` (the verifying contract) are the values that take part in the hash.
    """

    standard: Standard
    message: str
    nonce: bytes
    recipient: str
    callback_url: str | None
    public_key: PublicKey
    signature: bytes

    def hash(self) -> bytes:
        """The 32-byte intent hash: NEP-413 prehash, or sha256 of the raw payload bytes."""
        if self.standard == "nep413":
            return nep413_hash(self.message, self.nonce, self.recipient, self.callback_url)
        return hashlib.sha256(self.message.encode("utf-8")).digest()

    def hash_b58(self) -> str:
        return b58encode(self.hash())

    def signed_bytes(self) -> bytes:
        """The exact bytes the Ed25519 signature covers."""
        if self.standard == "nep413":
            return self.hash()
        return self.message.encode("utf-8")

    def verify(self) -> bool:
        """True iff the signature is valid for the public key over ``signed_bytes()``."""
        return self.public_key.verify(self.signed_bytes(), self.signature)

    def message_obj(self) -> dict[str, object]:
        """The signed message parsed as a JSON object (``InputError`` otherwise)."""
        return _json_object(self.message, "signed message")

    @property
    def signer_id(self) -> str:
        value = self.message_obj().get("signer_id")
        if not isinstance(value, str) or not value:
            raise InputError("signed message has no string signer_id")
        return value

    @property
    def deadline_ns(self) -> int:
        obj = self.message_obj()
        if "deadline" not in obj:
            raise InputError("signed message has no deadline")
        value = obj["deadline"]
        if not isinstance(value, str | dict):
            raise InputError("signed message deadline must be an RFC 3339 string")
        return parse_deadline(cast("str | dict[str, object]", value))

    @property
    def intents(self) -> list[dict[str, object]]:
        """The intent list (empty when absent, as the Verifier's serde default)."""
        value = self.message_obj().get("intents", [])
        if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
            raise InputError("signed message intents must be a list of objects")
        return cast(list[dict[str, object]], value)

    def to_json_obj(self) -> dict[str, object]:
        """The exact wire JSON of this envelope."""
        if self.standard == "nep413":
            payload: dict[str, object] = {
                "message": self.message,
                "nonce": b64encode(self.nonce),
                "recipient": self.recipient,
            }
            if self.callback_url is not None:
                payload["callbackUrl"] = self.callback_url
            return {
                "standard": "nep413",
                "payload": payload,
                "public_key": self.public_key.to_string(),
                "signature": format_signature(self.signature),
            }
        return {
            "standard": "raw_ed25519",
            "payload": self.message,
            "public_key": self.public_key.to_string(),
            "signature": format_signature(self.signature),
        }


def _field(obj: dict[str, object], name: str, where: str) -> object:
    if name not in obj:
        raise InputError(f"{where} is missing {name!r}")
    return obj[name]


def _str_field(obj: dict[str, object], name: str, where: str) -> str:
    value = _field(obj, name, where)
    if not isinstance(value, str):
        raise InputError(f"{where} field {name!r} must be a string")
    return value


def parse_multipayload(obj: object) -> SignedPayload:
    """Parse a ``MultiPayload`` JSON object (already decoded); ``InputError`` on any malformed shape.

    Only ``nep413`` and ``raw_ed25519`` are supported. The signature is not checked here; call
    ``verify()``.
    """
    if not isinstance(obj, dict):
        raise InputError("signed payload must be a JSON object")
    env = cast(dict[str, object], obj)
    standard = _str_field(env, "standard", "signed payload")
    public_key = PublicKey.from_string(_str_field(env, "public_key", "signed payload"))
    signature = parse_signature(_str_field(env, "signature", "signed payload"))
    if standard == "nep413":
        payload = _field(env, "payload", "nep413 payload")
        if not isinstance(payload, dict):
            raise InputError("nep413 'payload' must be an object")
        p = cast(dict[str, object], payload)
        message = _str_field(p, "message", "nep413 payload")
        nonce = _decode_nonce_b64(_field(p, "nonce", "nep413 payload"), "nep413 payload nonce")
        recipient = _str_field(p, "recipient", "nep413 payload")
        callback = p.get("callbackUrl")
        if callback is not None and not isinstance(callback, str):
            raise InputError("nep413 payload 'callbackUrl' must be a string")
        return SignedPayload("nep413", message, nonce, recipient, callback, public_key, signature)
    if standard == "raw_ed25519":
        text = _str_field(env, "payload", "raw_ed25519 payload")
        inner = _json_object(text, "raw_ed25519 payload")
        nonce = _decode_nonce_b64(_field(inner, "nonce", "raw_ed25519 payload"), "raw_ed25519 nonce")
        contract = _str_field(inner, "verifying_contract", "raw_ed25519 payload")
        return SignedPayload("raw_ed25519", text, nonce, contract, None, public_key, signature)
    raise InputError(f"unsupported signature standard {standard[:40]!r} (nep413 or raw_ed25519 expected)")


def sign_nep413(
    key: SigningKey, message: str, nonce: bytes, recipient: str = DEFAULT_VERIFIER
) -> SignedPayload:
    """Sign ``message`` as a NEP-413 payload (no callback URL)."""
    if len(nonce) != NONCE_LEN:
        raise InputError(f"nonce must be {NONCE_LEN} bytes, got {len(nonce)}")
    digest = nep413_hash(message, nonce, recipient, None)
    return SignedPayload("nep413", message, bytes(nonce), recipient, None, key.public_key, key.sign(digest))


def sign_raw_ed25519(key: SigningKey, payload: str) -> SignedPayload:
    """Sign a raw_ed25519 payload string (must carry ``nonce`` and ``verifying_contract``)."""
    inner = _json_object(payload, "raw_ed25519 payload")
    nonce = _decode_nonce_b64(_field(inner, "nonce", "raw_ed25519 payload"), "raw_ed25519 nonce")
    contract = _str_field(inner, "verifying_contract", "raw_ed25519 payload")
    signature = key.sign(payload.encode("utf-8"))
    return SignedPayload("raw_ed25519", payload, nonce, contract, None, key.public_key, signature)


def build_intent_message(signer_id: str, deadline_ns: int, intents: list[dict[str, object]]) -> str:
    """The NEP-413 intent message: compact JSON ``{"signer_id","deadline","intents"}`` in that order."""
    body = {"signer_id": signer_id, "deadline": format_deadline(deadline_ns), "intents": intents}
    return json.dumps(body, separators=(",", ":"))


def token_diff_intent(diff: dict[str, int]) -> dict[str, object]:
    """``{"intent":"token_diff","diff":{asset: "<signed int>"}}``; empty diff or a zero delta is an
    ``InputError`` (the Verifier rejects both)."""
    if not diff:
        raise InputError("token_diff must not be empty")
    out: dict[str, str] = {}
    for asset, delta in diff.items():
        if not isinstance(asset, str) or not asset:
            raise InputError("token_diff asset id must be a non-empty string")
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise InputError(f"token_diff delta for {asset} must be an int")
        if delta == 0:
            raise InputError(f"token_diff delta for {asset} is zero")
        if not _I128_MIN <= delta <= _I128_MAX:
            raise InputError(f"token_diff delta for {asset} does not fit in i128")
        out[asset] = str(delta)
    return {"intent": "token_diff", "diff": out}


def sign_intents(
    key: SigningKey,
    *,
    signer_id: str,
    contract_id: str,
    nonce: bytes,
    deadline_ns: int,
    intents: list[dict[str, object]],
    standard: Standard = "nep413",
) -> SignedPayload:
    """Sign ``intents`` for ``signer_id`` with ``nonce`` under either standard.

    ``nep413`` puts nonce and contract in the envelope; ``raw_ed25519`` signs a JSON body with all five
    fields (``signer_id``, ``verifying_contract``, ``deadline``, ``nonce``, ``intents``) in that order.
    """
    if len(nonce) != NONCE_LEN:
        raise InputError(f"nonce must be {NONCE_LEN} bytes, got {len(nonce)}")
    if standard == "nep413":
        return sign_nep413(key, build_intent_message(signer_id, deadline_ns, intents), nonce, contract_id)
    if standard == "raw_ed25519":
        body = {
            "signer_id": signer_id,
            "verifying_contract": contract_id,
            "deadline": format_deadline(deadline_ns),
            "nonce": b64encode(nonce),
            "intents": intents,
        }
        return sign_raw_ed25519(key, json.dumps(body, separators=(",", ":")))
    raise InputError(f"unsupported signature standard {standard!r} (nep413 or raw_ed25519 expected)")


def sign_cancel(
    key: SigningKey,
    *,
    signer_id: str,
    contract_id: str,
    nonce: bytes,
    deadline_ns: int,
    standard: Standard = "nep413",
) -> SignedPayload:
    """The cancel payload of a signed quote (protocol reference 4.3): same key, same ``nonce``,
    ``intents: []``. Executed first (relay ``publish_intents`` or ``execute_intents``) it spends the nonce,
    so the quote signed with it can never settle. ``deadline_ns`` must not be later than the nonce's
    deadline (a versioned nonce carries it; the Verifier refuses ``deadline is greater than nonce``)."""
    return sign_intents(
        key,
        signer_id=signer_id,
        contract_id=contract_id,
        nonce=nonce,
        deadline_ns=deadline_ns,
        intents=[],
        standard=standard,
    )
