"""Cancelling our own signed quotes on today's Verifier (the trade executor's emergency stop and
cancel-on-move).

The Verifier has no ``invalidate_nonces`` any more (removed before salted nonces arrived). A quote is
cancelled by getting a payload signed with the same key and the SAME nonce, whose ``intents`` is empty,
executed first (protocol reference 4.3; :func:`intents_mm.near.payload.sign_cancel`). Two paths, each
chosen per call:

1. **relay** — all cancel payloads in ONE ``publish_intents`` to the Solver Relay's JSON-RPC (fast, free;
   the relay then refuses those nonces). When the relay answers ``FAILED`` for a batch of several, each
   payload is sent again on its own to learn which one it refused and why.
2. **chain** — the same payloads in ``execute_intents`` transactions from our account, at most
   ``chain_batch`` payloads a transaction (within the gas limit). One used nonce reverts the whole
   transaction, so nonces are checked with ``is_nonce_used`` first (on the latest state: a ``final`` view
   lags a settlement by blocks), and a transaction that still fails with ``nonce was already used`` (a
   settlement raced us) is retried once without the nonces now used; when no view can tell which, each
   payload goes in a transaction of its own.

Each quote gets one :class:`CancelOutcome`: ``cancelled`` (on chain, or at the relay when the chain path
is off), ``already_settled`` (its nonce was used before our cancel: the quote settled), ``expired`` (its
deadline had passed: it can no longer settle, nothing sent), ``voided`` (the key was removed) or
``failed`` with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from intents_mm.clock import Clock
from intents_mm.errors import ContractError, IntentsMMError
from intents_mm.near.encoding import b64decode
from intents_mm.near.keys import SigningKey
from intents_mm.near.payload import Standard, sign_cancel
from intents_mm.near.sender import TransactionSender
from intents_mm.near.verifier import VerifierClient
from intents_mm.venues.relay_rpc import RelayRpcClient

__all__ = ["CancelOutcome", "CancelTarget", "QuoteCanceller", "is_nonce_used_error"]

EXECUTE_INTENTS_GAS: Final = 300 * 10**12
REMOVE_KEY_GAS: Final = 100 * 10**12
RELAY_SPLIT_CONCURRENCY: Final = 16

Outcome = Literal["cancelled", "already_settled", "expired", "voided", "failed"]


def is_nonce_used_error(message: str | None) -> bool:
    return message is not None and "nonce was already used" in message.lower()


@dataclass(frozen=True)
class CancelTarget:
    """A live signed quote to cancel: what the cancel payload needs (the nonce and its deadline)."""

    command_id: str
    quote_hash: str
    nonce_b64: str
    deadline_ns: int


@dataclass
class CancelOutcome:
    """What happened to one quote's cancel, per path (``None`` = path not used)."""

    target: CancelTarget
    outcome: Outcome = "failed"
    reason: str | None = None
    relay: str | None = None  # "ok" | "refused: <reason>" | "failed: <error>"
    chain: str | None = None  # "cancelled" | "used" | "failed: <error>"
    chain_tx_hash: str | None = None
    relay_sent_ns: int | None = None
    unused_on_chain: bool = False  # the relay refused it as used, but the chain has not used it

    def to_json(self) -> dict[str, object]:
        t = self.target
        return {
            "command_id": t.command_id,
            "quote_hash": t.quote_hash,
            "nonce": t.nonce_b64,
            "deadline_ns": t.deadline_ns,
            "outcome": self.outcome,
            "reason": self.reason,
            "relay": self.relay,
            "chain": self.chain,
            "chain_tx_hash": self.chain_tx_hash,
        }


class QuoteCanceller:
    """Builds and sends cancel payloads for one signer; no state but its collaborators."""

    def __init__(
        self,
        *,
        key: SigningKey,
        signer_id: str,
        contract_id: str,
        standard: Standard,
        clock: Clock,
        relay_rpc: RelayRpcClient | None,
        sender: TransactionSender | None,
        verifier: VerifierClient | None,
        chain_batch: int = 10,
    ) -> None:
        if chain_batch < 1:
            raise ValueError("chain_batch must be at least 1")
        self._key = key
        self.signer_id = signer_id
        self.contract_id = contract_id
        self.standard: Standard = standard
        self.clock = clock
        self.relay_rpc = relay_rpc
        self.sender = sender
        self.verifier = verifier
        self.chain_batch = chain_batch

    def payload(self, target: CancelTarget) -> dict[str, object]:
        """The cancel payload (JSON object) of ``target``: same key and nonce, ``intents: []``."""
        signed = sign_cancel(
            self._key,
            signer_id=self.signer_id,
            contract_id=self.contract_id,
            nonce=b64decode(target.nonce_b64),
            deadline_ns=target.deadline_ns,
            standard=self.standard,
        )
        return signed.to_json_obj()

    async def cancel(
        self,
        targets: Sequence[CancelTarget],
        *,
        via_relay: bool,
        on_chain: bool,
        precheck: bool,
        relay_done: frozenset[str] | set[str] = frozenset(),
    ) -> list[CancelOutcome]:
        """Cancel ``targets`` by the chosen paths; one outcome each, in the order given. Nonces in
        ``relay_done`` were cancelled at the relay before: they are not sent there again (the relay
        would refuse the whole batch for them)."""
        outcomes = [CancelOutcome(t) for t in targets]
        now = self.clock.now_ns()
        todo: list[CancelOutcome] = []
        for o in outcomes:
            if o.target.deadline_ns < now:
                o.outcome, o.reason = "expired", "deadline passed: the quote can no longer settle"
            else:
                todo.append(o)
        if not todo:
            return outcomes
        if not via_relay and not on_chain:
            for o in todo:
                o.reason = "no cancel path enabled"
            return outcomes
        if precheck and self.verifier is not None:
            used = await self.used_nonces([o.target for o in todo])
            for o in todo:
                if o.target.nonce_b64 in used:
                    o.outcome, o.reason = "already_settled", "nonce was already used"
            todo = [o for o in todo if o.outcome != "already_settled"]
        payloads = {o.target.nonce_b64: self.payload(o.target) for o in todo}
        if via_relay and todo:
            for o in todo:
                if o.target.nonce_b64 in relay_done:
                    o.relay = "ok"
            fresh = [o for o in todo if o.relay is None]
            if fresh:
                await self._via_relay(fresh, payloads)
        if on_chain and todo:
            await self._on_chain(todo, payloads)
        for o in todo:
            self._settle_outcome(o, on_chain=on_chain)
        return outcomes

    @staticmethod
    def _settle_outcome(o: CancelOutcome, *, on_chain: bool) -> None:
        relay_ok = o.relay == "ok"
        if on_chain:
            if o.chain == "cancelled":
                o.outcome, o.reason = "cancelled", None
            elif o.chain == "used":
                # used before our transaction: by our relay cancel, or by a settlement
                if relay_ok:
                    o.outcome, o.reason = "cancelled", "nonce spent by the relay cancel"
                else:
                    o.outcome, o.reason = "already_settled", "nonce was already used"
            elif relay_ok:
                o.outcome, o.reason = "cancelled", f"at the relay only; on chain {o.chain}"
            else:
                o.outcome = "failed"
                o.reason = "; ".join(
                    x for x in (o.relay and f"relay {o.relay}", o.chain and f"chain {o.chain}") if x
                )
        elif relay_ok:
            o.outcome, o.reason = "cancelled", None
        elif o.relay is not None and is_nonce_used_error(o.relay):
            # the relay refuses a nonce used on chain (settled) and one it cancelled before
            if o.unused_on_chain:
                o.outcome, o.reason = "cancelled", "already cancelled at the relay (unused on chain)"
            else:
                o.outcome, o.reason = "already_settled", "nonce was already used"
        else:
            o.outcome, o.reason = "failed", f"relay {o.relay}"

    async def used_nonces(self, targets: Sequence[CancelTarget]) -> set[str]:
        """Nonces the Verifier reports used; a failed view counts as unused (the panic path covers it)."""
        verifier = self.verifier
        if verifier is None:
            return set()

        async def used(target: CancelTarget) -> bool:
            try:
                return await verifier.is_nonce_used(self.signer_id, b64decode(target.nonce_b64))
            except IntentsMMError:
                return False

        flags = await asyncio.gather(*(used(t) for t in targets))
        return {t.nonce_b64 for t, flag in zip(targets, flags, strict=True) if flag}

    # -- relay ------------------------------------------------------------------------------------
    @staticmethod
    async def _publish(
        relay: RelayRpcClient, batch: list[CancelOutcome], payloads: dict[str, dict[str, object]]
    ) -> str | None:
        """One ``publish_intents`` of ``batch``; marks each ``ok`` or ``failed``. The reason when the
        relay refused the batch (nothing marked then)."""
        try:
            result = await relay.publish_intents([payloads[o.target.nonce_b64] for o in batch])
        except IntentsMMError as exc:
            for o in batch:
                o.relay = f"failed: {exc}"
            return None
        if result.ok:
            for o in batch:
                o.relay = "ok"
            return None
        return result.reason or "refused"

    async def _via_relay(self, todo: list[CancelOutcome], payloads: dict[str, dict[str, object]]) -> None:
        relay = self.relay_rpc
        if relay is None:
            for o in todo:
                o.relay = "failed: no relay RPC configured"
            return
        sent_ns = self.clock.now_ns()  # the payloads are signed: the cancel leaves now
        for o in todo:
            o.relay_sent_ns = sent_ns
        refused = await self._publish(relay, todo, payloads)
        # The relay takes a batch all or nothing: one refused payload fails the whole call.
        if refused is not None and is_nonce_used_error(refused) and self.verifier:
            # the usual cause: a quote settled meanwhile; leave the used nonces out and send again once
            used = await self.used_nonces([o.target for o in todo])
            for o in todo:
                if o.target.nonce_b64 in used:
                    o.relay = f"refused: {refused}"
                else:  # the relay refuses a nonce it cancelled before, too: unused on chain says which
                    o.unused_on_chain = True
            todo = [o for o in todo if o.target.nonce_b64 not in used]
            if used and todo:
                refused = await self._publish(relay, todo, payloads)
        if refused is None:
            return
        if len(todo) <= 1:
            for o in todo:
                o.relay = f"refused: {refused}"
            return
        # still refused: find out which payload, one call each
        slots = asyncio.Semaphore(RELAY_SPLIT_CONCURRENCY)

        async def one(o: CancelOutcome) -> None:
            async with slots:
                reason = await self._publish(relay, [o], payloads)
                if reason is not None:
                    o.relay = f"refused: {reason}"

        await asyncio.gather(*(one(o) for o in todo))

    # -- chain ------------------------------------------------------------------------------------
    async def _on_chain(self, todo: list[CancelOutcome], payloads: dict[str, dict[str, object]]) -> None:
        if self.sender is None:
            for o in todo:
                o.chain = "failed: no signer account for transactions"
            return
        for start in range(0, len(todo), self.chain_batch):
            await self._chain_batch(todo[start : start + self.chain_batch], payloads)

    async def _chain_batch(self, batch: list[CancelOutcome], payloads: dict[str, dict[str, object]]) -> None:
        assert self.sender is not None
        pending = batch
        for attempt in range(2):
            try:
                tx = await self.sender.call(
                    self.contract_id,
                    "execute_intents",
                    {"signed": [payloads[o.target.nonce_b64] for o in pending]},
                    gas=EXECUTE_INTENTS_GAS,
                    deposit=0,
                )
            except ContractError as exc:
                if attempt == 0 and is_nonce_used_error(str(exc)):
                    used = await self.used_nonces([o.target for o in pending])
                    if not used and len(pending) > 1:
                        # the views cannot tell which (they lag, or failed): one transaction each
                        for o in pending:
                            await self._chain_batch([o], payloads)
                        return
                    if not used:
                        pending[0].chain = "used"  # its own transaction said so
                        return
                    for o in pending:
                        if o.target.nonce_b64 in used:
                            o.chain = "used"
                    pending = [o for o in pending if o.target.nonce_b64 not in used]
                    if not pending:
                        return
                    continue
                for o in pending:
                    o.chain = f"failed: {exc}"
                return
            except IntentsMMError as exc:
                for o in pending:
                    o.chain = f"failed: not sent or not confirmed: {exc}"
                return
            for o in pending:
                o.chain, o.chain_tx_hash = "cancelled", tx.tx_hash
            return

    # -- last resort ------------------------------------------------------------------------------
    async def remove_public_key(self, public_key: str) -> str:
        """``remove_public_key`` of our key (1 yocto): voids every quote signed by it. Returns the tx hash."""
        if self.sender is None:
            raise ContractError("no signer account for transactions")
        tx = await self.sender.call(
            self.contract_id, "remove_public_key", {"public_key": public_key}, gas=REMOVE_KEY_GAS, deposit=1
        )
        return tx.tx_hash
