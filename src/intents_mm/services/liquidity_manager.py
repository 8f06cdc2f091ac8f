"""liquidity-manager (8084): funding handles, pending deposits and guarded withdrawals via the PoA bridge.

- Deposit addresses: bridge ``deposit_address`` for the treasury chain of each active asset
  (``btc:mainnet``, ``eth:100``), on start and on ``POST /refresh``; shown in ``/state``.
- Deposits: ``recent_deposits`` is polled every ``LIQUIDITY_POLL_MS``. A deposit the bridge lists as
  ``PENDING`` is pending (never spendable); when one turns ``CREDITED``/``COMPLETED`` a ``liquidity.action``
  ``deposit_credited`` (status ``completed``, ``detail.tx_hash``) is published once. A deposit is known
  by its :attr:`~intents_mm.venues.bridge.Deposit.deposit_id`: the tx hash, or a stable ``nohash:`` id
  when the bridge gives none (BTC: "EVM networks only"); that id is the ``tx_hash`` of pending deposits
  and of ``detail``. Deposits already credited at the first poll are history and publish nothing; the
  pending set is kept in the store so a deposit credited while the service was down is still announced.
  A page entry the client cannot parse is skipped (the rest are followed), logged once per distinct
  entry and counted in ``/state`` ``skipped_deposit_entries``.
- Withdrawal terms: the fee from bridge ``withdrawal_estimate``, the minimum from the token's
  ``supported_tokens`` entry (as the SDK does; the estimate's ``token`` object is informational).
- ``liquidity.state`` (deposit addresses by chain, pending deposits, tracked withdrawals, frozen flag) is
  published whenever it changes and at least every ``STATE_REPUBLISH_NS``.
- Withdrawals are FROZEN at every start, whatever was stored (the start-up log says so in one INFO
  line); ``POST /freeze-withdrawals`` changes that for the running process only. The flag is still
  written to the store (``liquidity-manager.withdrawals_frozen``) as a record of the last change, but it
  is never read back: a restart always comes up frozen.
- ``POST /withdraw`` (see :meth:`LiquidityManager._withdraw`): checks, then ``intents.near::ft_withdraw``
  ``{"token","receiver_id"=token,"amount","memo":"WITHDRAW_TO:<destination>"}`` with 1 yocto and 100 TGas,
  signed by the executor key; the NEAR tx hash is then followed through bridge ``withdrawal_status`` until
  a final state. Every step is a ``liquidity.action`` (``requested`` → ``submitted`` → ``pending`` →
  ``completed``/``failed``, or ``refused`` with the reason). Idempotent per request id (``request_id`` in
  the body, else a hash of asset, amount, destination and the current minute): the record of every
  request that got as far as ``requested`` is stored (``liquidity-manager.withdrawals``) BEFORE the
  transaction is sent, so a retried call answers the first outcome and never withdraws twice.
- Withdrawals never take funds live quotes could take: ``/withdraw`` and ``/withdrawal-estimate`` check
  credited minus what strategy-engine's ``risk.reservations`` summary reserves and holds (409 when it is
  missing or older than ``LIQUIDITY_RESERVATIONS_MAX_AGE_MS``, or the balance read is from a block
  behind the summary's ``balances_block_height``); after ``requested`` the withdrawal waits until the
  summary shows strategy-engine's hold, reads the balance again and checks once more, so no quote can
  be promised the same funds (otherwise it fails unsent, 409).
- ``POST /track-withdrawal`` follows an existing burn transaction the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
from aiohttp import web

from intents_mm.domain.addresses import validate_destination, withdraw_memo
from intents_mm.domain.amounts import format_units, parse_u128
from intents_mm.domain.assets import Asset
from intents_mm.errors import ContractError, InputError, IntentsMMError, RpcError, StoreError
from intents_mm.messages import (
    LIQUIDITY_ACTION,
    LIQUIDITY_STATE,
    RESERVATIONS,
    LiquidityAction,
    LiquidityActionKind,
    LiquidityActionStatus,
    LiquidityState,
    PendingDeposit,
    ReservationSummary,
    TrackedWithdrawal,
    decode,
)
from intents_mm.near.encoding import b58decode
from intents_mm.near.keys import SigningKey
from intents_mm.near.rpc import NearRpcClient
from intents_mm.near.sender import TransactionSender
from intents_mm.near.verifier import VerifierClient, parse_ft_withdraw_tx
from intents_mm.services.inventory_sync import FINAL_WITHDRAWAL_STATUSES, trading_account
from intents_mm.services.runtime import (
    Check,
    HttpError,
    Route,
    Service,
    json_response,
    read_json_object,
)
from intents_mm.venues.bridge import (
    BridgeClient,
    BridgeToken,
    DepositAddress,
    DepositStatus,
    WithdrawalEstimate,
    WithdrawalState,
)

log = logging.getLogger(__name__)

FROZEN_KEY = "liquidity-manager.withdrawals_frozen"
RECORDS_KEY = "liquidity-manager.withdrawals"
PENDING_KEY = "liquidity-manager.pending_deposits"
MS = 1_000_000
S = 1_000_000_000
STATE_REPUBLISH_NS = 60 * S
WITHDRAW_GAS = 100 * 10**12
ONE_YOCTO = 1
BRIDGE_TIMEOUT_S = 5.0
KEEP_FINAL_RECORDS = 500
STATE_FINAL_WITHDRAWALS = 20
BRIDGE_FAILURES_UNHEALTHY = 3
SKIPPED_REASONS_KEPT = 200  # distinct skipped-entry reasons remembered (each is logged once)
STATE_SKIPPED = 10  # newest distinct reasons shown in /state
HOLD_ACK_TIMEOUT_S = 2.0  # strategy-engine must show the withdrawal's hold in its summary within this
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_ENTRY_INDEX = re.compile(r"deposits\[[0-9]+\]")

# Record statuses besides the bridge's (``WithdrawalState``): before and around submission.
REQUESTED = "REQUESTED"  # checks passed, request id stored, transaction not sent yet
SUBMITTED = "SUBMITTED"  # burn transaction succeeded; the bridge does not list it yet
SUBMIT_FAILED = "SUBMIT_FAILED"  # the transaction failed on chain: nothing was withdrawn
SUBMIT_UNKNOWN = "SUBMIT_UNKNOWN"  # no answer to the submission: check the account before retrying
_NOT_TRACKED = frozenset({REQUESTED, SUBMIT_FAILED, SUBMIT_UNKNOWN})
_FINAL = FINAL_WITHDRAWAL_STATUSES | {SUBMIT_FAILED, SUBMIT_UNKNOWN}

_ACTION_STATUS: dict[str, LiquidityActionStatus] = {
    REQUESTED: "requested",
    SUBMITTED: "submitted",
    SUBMIT_FAILED: "failed",
    SUBMIT_UNKNOWN: "failed",
    WithdrawalState.PENDING.value: "pending",
    WithdrawalState.AWAITING.value: "pending",
    WithdrawalState.RETURNING.value: "pending",
    WithdrawalState.COMPLETED.value: "completed",
    WithdrawalState.FAILED.value: "failed",
    WithdrawalState.REJECTED.value: "failed",
    WithdrawalState.RETURNED.value: "failed",
}


@dataclass
class WithdrawalRecord:
    """One withdrawal operation (ours via ``/withdraw`` or tracked via ``/track-withdrawal``)."""

    action_id: str  # the request id; "track:<hash>" for tracked burns
    kind: LiquidityActionKind  # "withdraw" or "track_withdrawal"
    asset_id: str
    chain: str
    amount: int
    destination: str | None
    status: str
    created_ns: int
    updated_ns: int
    near_tx_hash: str | None = None
    transfer_tx_hash: str | None = None
    withdrawal_fee: int | None = None
    withdraw_amount: int | None = None
    error: str | None = None

    @property
    def final(self) -> bool:
        return self.status in _FINAL

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        for name in ("amount", "withdrawal_fee", "withdraw_amount"):
            if doc[name] is not None:
                doc[name] = str(doc[name])
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WithdrawalRecord:
        def opt_int(name: str) -> int | None:
            value = doc.get(name)
            return None if value is None else int(value)

        return cls(
            action_id=str(doc["action_id"]),
            kind="track_withdrawal" if doc["kind"] == "track_withdrawal" else "withdraw",
            asset_id=str(doc["asset_id"]),
            chain=str(doc["chain"]),
            amount=int(doc["amount"]),
            destination=doc.get("destination"),
            status=str(doc["status"]),
            created_ns=int(doc["created_ns"]),
            updated_ns=int(doc["updated_ns"]),
            near_tx_hash=doc.get("near_tx_hash"),
            transfer_tx_hash=doc.get("transfer_tx_hash"),
            withdrawal_fee=opt_int("withdrawal_fee"),
            withdraw_amount=opt_int("withdraw_amount"),
            error=doc.get("error"),
        )


@dataclass(frozen=True)
class _Request:
    asset: Asset
    amount: int
    destination: str


def _only_fields(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise HttpError(400, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def _text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise HttpError(400, f"{name} is required and must be a non-empty string")
    return value.strip()


def _amount_field(body: dict[str, Any]) -> int:
    if "amount" not in body:
        raise HttpError(400, "amount is required: a string of digits in the asset's smallest units")
    try:
        return parse_u128(body["amount"], name="amount")
    except InputError as exc:
        raise HttpError(400, f'{exc} (smallest units, e.g. "5000000000000000000" for 5 EURe)') from None


class LiquidityManager(Service):
    name = "liquidity-manager"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.assets: list[Asset] = list(self.ctx.assets.active_pair.assets())
        self.chains: list[str] = list(dict.fromkeys(a.chain for a in self.assets))
        self.account: str | None = trading_account(self.config)
        self.contract_id: str = self.config["NEAR_INTENTS_CONTRACT_ID"]
        self.poll_s = self.config["LIQUIDITY_POLL_MS"] / 1000
        secret: str | None = self.config["NEAR_INTENTS_SIGNER_PRIVATE_KEY"]
        self._key = SigningKey.from_string(secret) if secret else None
        self.default_destinations: dict[str, str | None] = {
            "BTC": self.config["TRADING_BTC_WITHDRAW_ADDRESS"],
            "EURe": self.config["TRADING_EURE_WITHDRAW_ADDRESS"],
        }
        self.frozen = True
        self.deposit_addresses: dict[str, DepositAddress] = {}
        self.addresses_refreshed_ns: int | None = None
        self.pending: dict[tuple[str, str], PendingDeposit] = {}
        self._deposit_status: dict[tuple[str, str], str] = {}
        self._baselined: set[str] = set()  # chains whose deposits were read once
        self._was_pending: set[tuple[str, str]] = set()  # pending before a restart (from the store)
        self.credited_deposits: list[dict[str, Any]] = []
        self.failed_deposits: list[dict[str, Any]] = []
        self.skipped_deposits_total = 0  # recent_deposits entries skipped (counted at every poll)
        self.skipped_deposits_last_poll: dict[str, int] = {}
        self.skipped_deposits_recent: list[str] = []  # the newest distinct reasons
        self._skipped_seen: dict[str, None] = {}  # reasons already logged (bounded, oldest dropped)
        self.records: dict[str, WithdrawalRecord] = {}
        self.last_errors: dict[str, dict[str, Any]] = {}
        self.bridge_failures = 0
        self._last_state: LiquidityState | None = None
        self._last_state_mono_ns = 0
        self._session: aiohttp.ClientSession | None = None
        self.bridge: BridgeClient | None = None
        self.rpc: NearRpcClient | None = None
        self.verifier: VerifierClient | None = None
        self.sender: TransactionSender | None = None
        self._poll_lock = asyncio.Lock()
        self._withdraw_lock = asyncio.Lock()
        # what strategy-engine has promised (risk.reservations), for the withdrawal checks
        self.reservations_max_age_ns: int = self.config["LIQUIDITY_RESERVATIONS_MAX_AGE_MS"] * MS
        self.reservations: ReservationSummary | None = None
        self._reservations_rx_mono_ns = 0
        self._reservations_event = asyncio.Event()
        self._reservations_sub: Any = None

    # -- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self.bridge = BridgeClient(
            self.config["NEAR_INTENTS_BRIDGE_RPC_URL"], self._session, BRIDGE_TIMEOUT_S
        )
        self.rpc = NearRpcClient(list(self.config["NEAR_RPC_URLS"]))
        self.verifier = VerifierClient(self.rpc, self.contract_id)
        if self.account is not None and self._key is not None:
            self.sender = TransactionSender(self.rpc, self.account, self._key, clock=self.clock)
        self.frozen = True  # every start, whatever was stored (runbook: withdrawals stay frozen)
        self._reservations_sub = await self.subscribe(
            [RESERVATIONS], f"{self.name}-reservations", self._on_reservations
        )
        await self._load()
        log.info(
            '%s: withdrawals frozen (every start; unfreeze with POST /freeze-withdrawals {"frozen":false})',
            self.name,
        )
        if self.account is not None:
            await self._refresh_addresses()

    async def run(self) -> None:
        while True:
            if self.account is not None:
                try:
                    async with self._poll_lock:
                        await self._poll()
                except Exception as exc:  # a defect must not stop the polling; logged with its trace
                    log.exception("%s: poll failed unexpectedly", self.name)
                    self._error("poll", f"unexpected {type(exc).__name__}: {exc}")
            await asyncio.sleep(self.poll_s)

    async def stop(self) -> None:
        if self._reservations_sub is not None:
            await self._reservations_sub.stop()
            self._reservations_sub = None
        if self.rpc is not None:
            await self.rpc.close()
            self.rpc = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- reservations ----------------------------------------------------------------------------
    async def _on_reservations(self, delivery: Any) -> None:
        payload = decode(delivery.data).payload  # InputError: a dead letter (Service.subscribe)
        if isinstance(payload, ReservationSummary):
            known = self.reservations
            if known is None or (payload.started_ns, payload.seq) >= (known.started_ns, known.seq):
                self.reservations = payload
                self._reservations_rx_mono_ns = self.clock.monotonic_ns()
                self._reservations_event.set()
        await delivery.ack()

    def reservations_age_ms(self) -> int | None:
        if self.reservations is None:
            return None
        return (self.clock.monotonic_ns() - self._reservations_rx_mono_ns) // MS

    def reservation_problem(
        self, asset_id: str, amount: int, credited: int, height: int, *, own_hold: str | None = None
    ) -> tuple[str | None, dict[str, str]]:
        """Why ``amount`` cannot leave ``credited`` (read at block ``height``) given what strategy-engine
        promised (None: it can), with the figures. ``own_hold``: a withdrawal whose hold the summary
        may already include. A read from before the block the summary's releases are based on is
        refused (it would count released funds twice)."""
        summary, age_ms = self.reservations, self.reservations_age_ms()
        if summary is None or age_ms is None:
            return (
                "no reservation summary (risk.reservations) from strategy-engine yet: withdrawals wait "
                "for it so funds promised to live quotes are not withdrawn",
                {},
            )
        if age_ms * MS > self.reservations_max_age_ns:
            return (
                f"the reservation summary from strategy-engine is {age_ms} ms old (limit "
                f"{self.reservations_max_age_ns // MS} ms, LIQUIDITY_RESERVATIONS_MAX_AGE_MS): "
                "is strategy-engine running?",
                {},
            )
        if height < summary.balances_block_height:
            return (
                f"the credited balance was read at block {height}, behind block "
                f"{summary.balances_block_height} that strategy-engine's reservations are based on "
                "(a lagging NEAR RPC node): try again",
                {},
            )
        reserved = summary.reserved_out.get(asset_id, 0)
        held = summary.held.get(asset_id, 0)
        if own_hold is not None and own_hold in summary.hold_ids:
            held -= amount
        available = credited - reserved - held
        figures = {
            "credited": str(credited),
            "reserved_by_quotes": str(reserved),
            "held_by_withdrawals": str(held),
            "available": str(available),
        }
        if amount > available:
            return (
                f"amount {amount} exceeds credited minus reserved: credited {credited}, reserved by live "
                f"quotes {reserved}, held by withdrawals in flight {held}, available {available}",
                figures,
            )
        return None, figures

    async def _await_first_summary(self) -> None:
        """Right after a start the first summary may not have arrived yet: wait for it a little."""
        if self.reservations is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reservations_event.wait(), timeout=HOLD_ACK_TIMEOUT_S)

    async def _await_hold(self, request_id: str) -> bool:
        """Wait until strategy-engine's summary shows the hold of ``request_id`` (True) or time out."""
        loop = asyncio.get_running_loop()
        end = loop.time() + HOLD_ACK_TIMEOUT_S
        while self.reservations is None or request_id not in self.reservations.hold_ids:
            left = end - loop.time()
            if left <= 0:
                return False
            self._reservations_event.clear()
            try:
                await asyncio.wait_for(self._reservations_event.wait(), timeout=left)
            except TimeoutError:
                return False
        return True

    # -- persistence -----------------------------------------------------------------------------
    async def _load(self) -> None:
        store = self.ctx.store
        if store is None:
            return
        try:
            records = await store.get_state(RECORDS_KEY)
            pending = await store.get_state(PENDING_KEY)
        except StoreError as exc:
            self._error("store", f"could not load saved state (withdrawals stay frozen): {exc}")
            return
        for doc in records.get("records", []) if isinstance(records, dict) else []:
            try:
                record = WithdrawalRecord.from_json(doc)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("%s: skipping a malformed saved withdrawal record: %s", self.name, exc)
                continue
            self.records[record.action_id] = record
        for item in pending if isinstance(pending, list) else []:
            if isinstance(item, list) and len(item) == 2:
                self._was_pending.add((str(item[0]), str(item[1])))

    async def _save_records(self) -> None:
        """Store the records (all unfinished ones and the newest finished ones); raises StoreError."""
        if self.ctx.store is None:
            return
        finished = sorted((r for r in self.records.values() if r.final), key=lambda r: r.updated_ns)
        for old in finished[:-KEEP_FINAL_RECORDS]:
            del self.records[old.action_id]
        await self.ctx.store.put_state(RECORDS_KEY, {"records": [r.to_json() for r in self.records.values()]})

    async def _save_pending(self) -> None:
        if self.ctx.store is None:
            return
        try:
            keys = sorted(set(self.pending) | self._was_pending)  # not yet re-read ones are kept
            await self.ctx.store.put_state(PENDING_KEY, [list(k) for k in keys])
        except StoreError as exc:
            self._error("store", f"could not save the pending deposits: {exc}")

    # -- errors ----------------------------------------------------------------------------------
    def _error(self, where: str, message: str) -> None:
        log.warning("%s: %s: %s", self.name, where, message)
        self.last_errors[where] = {"error": message, "ts_ns": self.clock.now_ns()}

    def _ok(self, where: str) -> None:
        self.last_errors.pop(where, None)

    # -- bridge polling --------------------------------------------------------------------------
    async def _refresh_addresses(self) -> list[str]:
        assert self.bridge is not None and self.account is not None
        errors: list[str] = []
        changed = False
        for chain in self.chains:
            try:
                got = await self.bridge.deposit_address(self.account, chain)
            except IntentsMMError as exc:
                self._error(f"deposit_address:{chain}", str(exc))
                errors.append(f"deposit_address {chain}: {exc}")
                continue
            self._ok(f"deposit_address:{chain}")
            changed |= self.deposit_addresses.get(chain) != got
            self.deposit_addresses[chain] = got
        if not errors:
            self.addresses_refreshed_ns = self.clock.now_ns()
        if changed:
            await self._publish_action(
                LiquidityAction(
                    action_id=f"deposit-addresses:{self.clock.now_ns()}",
                    kind="deposit_address_refresh",
                    status="completed",
                    detail={c: a.address for c, a in self.deposit_addresses.items()},
                )
            )
        return errors

    async def _poll(self, *, force_state: bool = False) -> list[str]:
        """One round: missing addresses, deposits, withdrawals, then ``liquidity.state``; the errors."""
        errors: list[str] = []
        if len(self.deposit_addresses) < len(self.chains):
            errors += await self._refresh_addresses()
        errors += await self._poll_deposits()
        errors += await self._poll_withdrawals()
        self.bridge_failures = self.bridge_failures + 1 if errors else 0
        await self._publish_state(force=force_state)
        return errors

    async def _poll_deposits(self) -> list[str]:
        assert self.bridge is not None and self.account is not None
        errors: list[str] = []
        contracts = {a.contract_id: a for a in self.assets}
        defuse_ids = {a.defuse_asset_id.lower(): a for a in self.assets if a.defuse_asset_id}
        changed = False
        polled: set[str] = set()
        for chain in self.chains:
            try:
                page = await self.bridge.recent_deposits(self.account, chain=chain, limit=100)
            except IntentsMMError as exc:
                self._error(f"recent_deposits:{chain}", str(exc))
                errors.append(f"recent_deposits {chain}: {exc}")
                continue
            self._ok(f"recent_deposits:{chain}")
            polled.add(chain)
            self._count_skipped(chain, page.skipped)
            baseline = chain not in self._baselined
            self._baselined.add(chain)
            for dep in page.deposits:
                asset = contracts.get(dep.near_token_id or "") or defuse_ids.get(
                    dep.defuse_asset_identifier.lower()
                )
                if asset is None or dep.account_id != self.account:
                    continue
                dep_id = dep.deposit_id  # the tx hash, or a stable synthetic id (BTC: none given)
                key = (dep.chain, dep_id)
                before = self._deposit_status.get(key)
                if before is None and key in self._was_pending:
                    before = DepositStatus.PENDING.value
                self._deposit_status[key] = dep.status.value
                if dep.status is DepositStatus.PENDING:
                    if key not in self.pending:
                        self.pending[key] = PendingDeposit(
                            tx_hash=dep_id,
                            chain=dep.chain,
                            asset_id=asset.token_id,
                            amount=dep.amount,
                            status=dep.status.value,
                        )
                        changed = True
                    continue
                if self.pending.pop(key, None) is not None:
                    changed = True
                fresh = before == DepositStatus.PENDING.value or (before is None and not baseline)
                if not fresh:
                    continue
                if dep.status in (DepositStatus.CREDITED, DepositStatus.COMPLETED):
                    await self._on_credited(asset, dep.chain, dep_id, dep.amount, dep.mint_tx_hash)
                else:
                    self.failed_deposits = [
                        *self.failed_deposits[-19:],
                        {
                            "tx_hash": dep_id,
                            "chain": dep.chain,
                            "asset_id": asset.token_id,
                            "amount": str(dep.amount),
                            "status": dep.status.value,
                        },
                    ]
                    self._error(f"deposit:{dep_id}", f"deposit {dep_id} on {dep.chain} FAILED")
        still_unseen = {k for k in self._was_pending if k[0] not in polled}
        if changed or still_unseen != self._was_pending:
            self._was_pending = still_unseen
            await self._save_pending()
        return errors

    def _count_skipped(self, chain: str, skipped: tuple[str, ...]) -> None:
        """Count the ``recent_deposits`` entries the client could not parse; log each new one once."""
        self.skipped_deposits_last_poll[chain] = len(skipped)
        self.skipped_deposits_total += len(skipped)
        for reason in skipped:
            seen = _ENTRY_INDEX.sub("deposits[]", reason)  # the same entry moves down the page
            if seen in self._skipped_seen:
                continue
            if len(self._skipped_seen) >= SKIPPED_REASONS_KEPT:
                self._skipped_seen.pop(next(iter(self._skipped_seen)))
            self._skipped_seen[seen] = None
            log.warning("%s: recent_deposits %s: entry skipped: %s", self.name, chain, reason)
            self.skipped_deposits_recent = [*self.skipped_deposits_recent[-(STATE_SKIPPED - 1) :], reason]

    async def _on_credited(
        self, asset: Asset, chain: str, tx_hash: str, amount: int, mint: str | None
    ) -> None:
        self.credited_deposits = [
            *self.credited_deposits[-19:],
            {
                "tx_hash": tx_hash,
                "chain": chain,
                "asset_id": asset.token_id,
                "amount": str(amount),
                "mint_tx_hash": mint,
                "ts_ns": self.clock.now_ns(),
            },
        ]
        await self._publish_action(
            LiquidityAction(
                action_id=f"deposit:{chain}:{tx_hash}",
                kind="deposit_credited",
                asset_id=asset.token_id,
                amount=amount,
                chain=chain,
                status="completed",
                near_tx_hash=mint,
                detail={"tx_hash": tx_hash},
            ),
            msg_id=f"liquidity:deposit_credited:{chain}:{tx_hash}",
        )

    async def _poll_withdrawals(self) -> list[str]:
        assert self.bridge is not None
        errors: list[str] = []
        changed = False
        for record in list(self.records.values()):
            if record.final or record.near_tx_hash is None:
                continue
            asset = self.ctx.assets.get(record.asset_id)
            try:
                status = await self.bridge.withdrawal_status(
                    record.near_tx_hash, near_token_id=asset.contract_id
                )
            except IntentsMMError as exc:
                self._error(f"withdrawal_status:{record.near_tx_hash}", str(exc))
                errors.append(f"withdrawal_status {record.near_tx_hash}: {exc}")
                continue
            self._ok(f"withdrawal_status:{record.near_tx_hash}")
            new = SUBMITTED if status.status is WithdrawalState.NOT_FOUND else status.status.value
            if new == record.status:
                continue
            record.status, record.updated_ns = new, self.clock.now_ns()
            if status.data is not None:
                record.transfer_tx_hash = status.data.transfer_tx_hash
                record.withdrawal_fee = status.data.withdrawal_fee
                record.withdraw_amount = status.data.withdraw_amount
            changed = True
            await self._publish_step(record)
        if changed:
            try:
                await self._save_records()
            except StoreError as exc:
                self._error("store", f"could not save withdrawal records: {exc}")
        return errors

    # -- publishing ------------------------------------------------------------------------------
    async def _publish_action(self, action: LiquidityAction, *, msg_id: str | None = None) -> None:
        try:
            await self.publish(LIQUIDITY_ACTION, action, msg_id=msg_id)
        except IntentsMMError as exc:
            self._error("publish", f"could not publish liquidity.action {action.kind}: {exc}")

    async def _publish_step(self, record: WithdrawalRecord, detail: dict[str, Any] | None = None) -> None:
        info: dict[str, Any] = {"record_status": record.status}
        if record.transfer_tx_hash:
            info["transfer_tx_hash"] = record.transfer_tx_hash
        if record.withdraw_amount is not None:
            info["withdraw_amount"] = str(record.withdraw_amount)
        if record.error:
            info["error"] = record.error
        info.update(detail or {})
        await self._publish_action(
            LiquidityAction(
                action_id=record.action_id,
                kind=record.kind,
                asset_id=record.asset_id,
                amount=record.amount,
                destination=record.destination,
                chain=record.chain,
                status=_ACTION_STATUS[record.status],
                near_tx_hash=record.near_tx_hash,
                detail=info,
            ),
            msg_id=f"liquidity:{record.action_id}:{record.status}",
        )

    def liquidity_state(self) -> LiquidityState:
        tracked = [
            r for r in self.records.values() if r.near_tx_hash is not None and r.status not in _NOT_TRACKED
        ]
        live = [r for r in tracked if not r.final]
        done = sorted((r for r in tracked if r.final), key=lambda r: r.updated_ns)[-STATE_FINAL_WITHDRAWALS:]
        return LiquidityState(
            deposit_addresses={c: a.address for c, a in self.deposit_addresses.items()},
            pending_deposits=list(self.pending.values()),
            withdrawals=[
                TrackedWithdrawal(
                    withdrawal_hash=r.near_tx_hash or "",
                    asset_id=r.asset_id,
                    chain=r.chain,
                    amount=r.amount,
                    status=r.status,
                    transfer_tx_hash=r.transfer_tx_hash,
                )
                for r in sorted(live + done, key=lambda r: r.created_ns)
            ],
            withdrawals_frozen=self.frozen,
        )

    async def _publish_state(self, *, force: bool = False) -> None:
        state = self.liquidity_state()
        mono = self.clock.monotonic_ns()
        if not force and state == self._last_state and mono - self._last_state_mono_ns < STATE_REPUBLISH_NS:
            return
        try:
            await self.publish(LIQUIDITY_STATE, state)
        except IntentsMMError as exc:
            self._error("publish", f"could not publish liquidity.state: {exc}")
            return
        self._last_state, self._last_state_mono_ns = state, mono

    # -- request parsing -------------------------------------------------------------------------
    def _asset(self, body: dict[str, Any]) -> Asset:
        asset_id = _text_field(body, "asset_id")
        for asset in self.assets:
            if asset.token_id == asset_id:
                return asset
        known = ", ".join(a.token_id for a in self.assets)
        raise HttpError(400, f"unknown asset_id {asset_id!r}; withdrawals support the active assets: {known}")

    def _destination(self, body: dict[str, Any], asset: Asset) -> str:
        raw = body.get("destination_address")
        if raw is None:
            raw = self.default_destinations.get(asset.symbol)
            if not raw:
                var = (
                    "TRADING_BTC_WITHDRAW_ADDRESS"
                    if asset.symbol == "BTC"
                    else "TRADING_EURE_WITHDRAW_ADDRESS"
                )
                raise HttpError(
                    400, f"destination_address is required: no default {asset.symbol} address ({var}) is set"
                )
        elif not isinstance(raw, str) or not raw.strip():
            raise HttpError(400, "destination_address must be a non-empty string")
        try:
            return validate_destination(asset.chain, raw.strip())
        except InputError as exc:
            raise HttpError(
                400, f"bad destination_address for {asset.symbol} on {asset.chain}: {exc}"
            ) from None

    def _parse_request(self, body: dict[str, Any], allowed: tuple[str, ...]) -> _Request:
        _only_fields(body, allowed)
        asset = self._asset(body)
        amount = _amount_field(body)
        return _Request(asset, amount, self._destination(body, asset))

    def _request_id(self, body: dict[str, Any], req: _Request) -> str:
        given = body.get("request_id")
        if given is not None:
            if not isinstance(given, str) or not _REQUEST_ID.fullmatch(given):
                raise HttpError(400, "request_id must be 1-100 characters of A-Z a-z 0-9 _ . -")
            return given
        minute = self.clock.now_ns() // (60 * S)
        text = f"{req.asset.token_id}|{req.amount}|{req.destination}|{minute}"
        return "wd-" + hashlib.sha256(text.encode()).hexdigest()[:32]

    def _view(self, record: WithdrawalRecord, **extra: Any) -> dict[str, Any]:
        asset = self.ctx.assets.get(record.asset_id)
        doc = record.to_json()
        doc["request_id"] = doc.pop("action_id")
        doc["human_amount"] = format_units(asset, record.amount)
        doc.update(extra)
        return doc

    # -- control API -----------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [
            Route("POST", "/refresh", self._refresh),
            Route("POST", "/withdrawal-estimate", self._estimate),
            Route("POST", "/freeze-withdrawals", self._freeze, mutating=True),
            Route("POST", "/withdraw", self._withdraw, mutating=True),
            Route("POST", "/track-withdrawal", self._track, mutating=True),
            Route("DELETE", "/track-withdrawal", self._untrack, mutating=True, action="untrack-withdrawal"),
            Route("POST", "/untrack-withdrawal", self._untrack, mutating=True),
        ]

    def _require_account(self) -> str:
        if self.account is None:
            raise HttpError(503, "no account: set NEAR_INTENTS_ACCOUNT_ID or NEAR_INTENTS_SIGNER_PRIVATE_KEY")
        return self.account

    async def _refresh(self, request: web.Request) -> web.Response:
        self._require_account()
        async with self._poll_lock:
            errors = await self._refresh_addresses()
            errors += await self._poll(force_state=True)
        state = self.base_state() | self.state()
        if errors:
            return json_response({"error": "; ".join(errors), "errors": errors, "state": state}, status=502)
        return json_response(state)

    async def _bridge_terms(self, req: _Request) -> tuple[WithdrawalEstimate, BridgeToken]:
        """The bridge's fee (``withdrawal_estimate``) and the token's listed minimums
        (``supported_tokens``, as the SDK takes them); raises the bridge client's errors."""
        assert self.bridge is not None
        est = await self.bridge.withdrawal_estimate(req.asset.chain, req.asset.contract_id, req.destination)
        listed = await self.bridge.supported_token(req.asset.token_id, req.asset.chain)
        if listed.decimals != req.asset.decimals:
            raise RpcError(
                f"bridge supported_tokens lists {req.asset.symbol} with {listed.decimals} decimals, "
                f"not {req.asset.decimals}: not withdrawing on terms in another unit"
            )
        return est, listed

    async def _estimate(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        req = self._parse_request(body, ("asset_id", "amount", "destination_address"))
        assert self.bridge is not None
        est, listed = await self._bridge_terms(req)
        fee, minimum = est.withdrawal_fee, listed.min_withdrawal_amount
        receive = max(0, req.amount - fee)
        problems = []
        if req.amount < minimum:
            problems.append(f"amount is below the bridge minimum withdrawal {minimum}")
        if req.amount <= fee:
            problems.append(f"amount does not exceed the withdrawal fee {fee}")
        figures: dict[str, str] = {}
        if self.account is None or self.verifier is None:
            problems.append("no trading account: the credited balance cannot be checked")
        else:
            try:
                balances, height = await self.verifier.mt_batch_balance_of(self.account, [req.asset.token_id])
            except IntentsMMError as exc:
                problems.append(f"credited balance read failed: {exc}")
            else:
                credited = balances[req.asset.token_id]
                figures = {"credited": str(credited)}
                if req.amount > credited:
                    problems.append(f"amount {req.amount} exceeds the credited balance {credited}")
                else:
                    await self._await_first_summary()
                    problem, figures = self.reservation_problem(
                        req.asset.token_id, req.amount, credited, height
                    )
                    figures.setdefault("credited", str(credited))
                    if problem is not None:
                        problems.append(problem)
        result = {
            "asset_id": req.asset.token_id,
            "chain": req.asset.chain,
            "token": req.asset.contract_id,
            "destination_address": req.destination,
            "amount": str(req.amount),
            "withdrawal_fee": str(fee),
            "withdrawal_fee_decimals": est.withdrawal_fee_decimals,
            "min_withdrawal_amount": str(minimum),
            "receive_amount": str(receive),
            "ok": not problems,
            "problems": problems,
            "balance": figures,
            "human": {
                "amount": format_units(req.asset, req.amount),
                "withdrawal_fee": format_units(req.asset, fee),
                "min_withdrawal_amount": format_units(req.asset, minimum),
                "receive_amount": format_units(req.asset, receive),
                "symbol": req.asset.symbol,
            },
        }
        await self._publish_action(
            LiquidityAction(
                action_id=f"estimate:{self.clock.now_ns()}",
                kind="withdrawal_estimate",
                asset_id=req.asset.token_id,
                amount=req.amount,
                destination=req.destination,
                chain=req.asset.chain,
                status="completed",
                detail={
                    "withdrawal_fee": str(fee),
                    "min_withdrawal_amount": str(minimum),
                    "receive_amount": str(receive),
                },
            )
        )
        return json_response(result)

    async def _freeze(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        _only_fields(body, ("frozen",))
        frozen = body.get("frozen")
        if not isinstance(frozen, bool):
            raise HttpError(400, 'frozen is required and must be true or false, e.g. {"frozen":false}')
        if frozen:
            self.frozen = True  # freezing takes effect even if it cannot be stored
        if self.ctx.store is not None:
            try:
                await self.ctx.store.put_state(FROZEN_KEY, frozen)
            except StoreError as exc:
                raise HttpError(
                    503, f"could not store the frozen flag ({exc}); withdrawals stay frozen"
                ) from None
        self.frozen = frozen
        await self._publish_action(
            LiquidityAction(
                action_id=f"freeze:{self.clock.now_ns()}",
                kind="freeze_withdrawals",
                status="completed",
                detail={"frozen": frozen},
                actor=request.headers.get("X-Operator"),
            )
        )
        await self._publish_state(force=True)
        return json_response({"withdrawals_frozen": self.frozen})

    async def _refuse(self, req: _Request, request_id: str, status: int, reason: str) -> HttpError:
        await self._publish_action(
            LiquidityAction(
                action_id=request_id,
                kind="withdraw",
                asset_id=req.asset.token_id,
                amount=req.amount,
                destination=req.destination,
                chain=req.asset.chain,
                status="refused",
                detail={"reason": reason},
            )
        )
        return HttpError(status, reason, request_id=request_id)

    async def _withdraw(self, request: web.Request) -> web.Response:
        """Checks in order: body (400), known request id (answers the first outcome), frozen (409), signer
        key (503), bridge estimate: amount >= min_withdrawal_amount and > fee (400), fresh credited balance
        >= amount (409), credited minus what strategy-engine reserved and holds >= amount (409; also when
        its ``risk.reservations`` summary is missing or older than ``LIQUIDITY_RESERVATIONS_MAX_AGE_MS``).
        Then the request id is stored and ``requested`` published; once strategy-engine's summary shows
        the hold (within ``HOLD_ACK_TIMEOUT_S``) the balance is read again and the reservation check made
        again against that summary (the read must be at or after its ``balances_block_height``), then the
        burn submitted; otherwise the record fails unsent (409) and the hold is released."""
        body = await read_json_object(request)
        req = self._parse_request(body, ("asset_id", "amount", "destination_address", "request_id"))
        request_id = self._request_id(body, req)
        account = self._require_account()
        async with self._withdraw_lock:
            known = self.records.get(request_id)
            if known is not None:
                same = (known.asset_id, known.amount, known.destination) == (
                    req.asset.token_id,
                    req.amount,
                    req.destination,
                )
                if not same:
                    raise HttpError(
                        409, f"request_id {request_id} was already used for a different withdrawal"
                    )
                return json_response(self._view(known, duplicate=True))
            if self.frozen:
                raise await self._refuse(
                    req,
                    request_id,
                    409,
                    'withdrawals are frozen: POST /freeze-withdrawals {"frozen":false} first',
                )
            if self.sender is None or self.bridge is None or self.verifier is None:
                raise await self._refuse(
                    req,
                    request_id,
                    503,
                    "withdrawals need NEAR_INTENTS_SIGNER_PRIVATE_KEY (the executor key)",
                )
            try:
                est, listed = await self._bridge_terms(req)
            except IntentsMMError as exc:
                raise await self._refuse(
                    req, request_id, 502, f"bridge withdrawal terms failed: {exc}"
                ) from None
            fee, minimum = est.withdrawal_fee, listed.min_withdrawal_amount
            if req.amount < minimum:
                raise await self._refuse(
                    req,
                    request_id,
                    400,
                    f"amount {req.amount} is below the bridge minimum withdrawal {minimum}",
                )
            if req.amount <= fee:
                raise await self._refuse(
                    req, request_id, 400, f"amount {req.amount} does not exceed the withdrawal fee {fee}"
                )
            try:
                balances, height = await self.verifier.mt_batch_balance_of(account, [req.asset.token_id])
            except IntentsMMError as exc:
                raise await self._refuse(
                    req, request_id, 502, f"credited balance read failed: {exc}"
                ) from None
            credited = balances[req.asset.token_id]
            if req.amount > credited:
                raise await self._refuse(
                    req, request_id, 409, f"amount {req.amount} exceeds the credited balance {credited}"
                )
            await self._await_first_summary()
            problem, _figures = self.reservation_problem(req.asset.token_id, req.amount, credited, height)
            if problem is not None:
                raise await self._refuse(req, request_id, 409, problem)
            now = self.clock.now_ns()
            record = WithdrawalRecord(
                action_id=request_id,
                kind="withdraw",
                asset_id=req.asset.token_id,
                chain=req.asset.chain,
                amount=req.amount,
                destination=req.destination,
                status=REQUESTED,
                created_ns=now,
                updated_ns=now,
                withdrawal_fee=fee,
            )
            self.records[request_id] = record
            try:
                await self._save_records()
            except StoreError as exc:
                del self.records[request_id]
                raise await self._refuse(
                    req, request_id, 503, f"could not store the request id, not withdrawing: {exc}"
                ) from None
            await self._publish_step(record, {"withdrawal_fee": str(fee), "credited": str(credited)})
            # strategy-engine holds the amount on seeing "requested"; only once its summary shows the
            # hold can no new quote promise these funds, so check again against that summary, with a
            # balance read at or after the block its releases are based on
            problem = await self._recheck_with_hold(req, request_id)
            if problem is not None:
                await self._fail_unsent(record, problem)
                raise HttpError(409, problem, request_id=request_id)
            await self._submit(record, req)
        await self._publish_state(force=True)
        status = 200 if record.status == SUBMITTED else 502
        return json_response(self._view(record, duplicate=False), status=status)

    async def _recheck_with_hold(self, req: _Request, request_id: str) -> str | None:
        """The second check of ``/withdraw`` (see :meth:`_withdraw`); the reason to stop, or None."""
        if not await self._await_hold(request_id):
            return (
                f"strategy-engine did not show a hold for this withdrawal within {HOLD_ACK_TIMEOUT_S} s; "
                "nothing was withdrawn"
            )
        assert self.verifier is not None and self.account is not None
        try:
            balances, height = await self.verifier.mt_batch_balance_of(self.account, [req.asset.token_id])
        except IntentsMMError as exc:
            return f"credited balance read failed: {exc}; nothing was withdrawn"
        credited = balances[req.asset.token_id]
        if req.amount > credited:
            return f"amount {req.amount} exceeds the credited balance {credited}"
        problem, _figures = self.reservation_problem(
            req.asset.token_id, req.amount, credited, height, own_hold=request_id
        )
        return problem

    async def _fail_unsent(self, record: WithdrawalRecord, reason: str) -> None:
        """A requested withdrawal that is not sent after all: final, nothing withdrawn (hold released)."""
        record.status, record.error = SUBMIT_FAILED, f"not sent: {reason}"
        record.updated_ns = self.clock.now_ns()
        try:
            await self._save_records()
        except StoreError as exc:
            self._error("store", f"could not save withdrawal {record.action_id}: {exc}")
        await self._publish_step(record)
        await self._publish_state(force=True)

    async def _submit(self, record: WithdrawalRecord, req: _Request) -> None:
        assert self.sender is not None
        args = {
            "token": req.asset.contract_id,
            "receiver_id": req.asset.contract_id,
            "amount": str(req.amount),
            "memo": withdraw_memo(req.asset.chain, req.destination),
        }
        detail: dict[str, Any] = {}
        try:
            result = await self.sender.call(
                self.contract_id, "ft_withdraw", args, gas=WITHDRAW_GAS, deposit=ONE_YOCTO
            )
        except ContractError as exc:
            record.status, record.error = SUBMIT_FAILED, f"ft_withdraw failed on chain: {exc}"
        except IntentsMMError as exc:
            record.status = SUBMIT_UNKNOWN
            record.error = (
                f"no answer to the ft_withdraw submission, check the account before retrying: {exc}"
            )
            detail["outcome_unknown"] = True
        else:
            record.status, record.near_tx_hash = SUBMITTED, result.tx_hash
        record.updated_ns = self.clock.now_ns()
        if record.error:
            self._error(f"withdraw:{record.action_id}", record.error)
        try:
            await self._save_records()
        except StoreError as exc:
            self._error("store", f"could not save withdrawal {record.action_id}: {exc}")
        await self._publish_step(record, detail)

    async def _track(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        fields = ("withdrawal_hash", "asset_id", "chain", "amount")
        _only_fields(body, fields)
        for name in fields:
            if name not in body:
                raise HttpError(400, f"{name} is required; body: {{{', '.join(repr(f) for f in fields)}}}")
        tx_hash = _text_field(body, "withdrawal_hash")
        try:
            valid_hash = len(b58decode(tx_hash)) == 32
        except InputError:
            valid_hash = False
        if not valid_hash:
            raise HttpError(400, "withdrawal_hash must be a NEAR transaction hash (base58 of 32 bytes)")
        asset = self._asset(body)
        chain = _text_field(body, "chain")
        if chain != asset.chain:
            raise HttpError(
                400, f"chain {chain!r} does not match {asset.symbol}, which withdraws to {asset.chain}"
            )
        amount = _amount_field(body)
        for existing in self.records.values():
            if existing.near_tx_hash == tx_hash and existing.asset_id == asset.token_id:
                return json_response(self._view(existing, duplicate=True))
        amount = await self._verify_burn(tx_hash, asset, amount)
        now = self.clock.now_ns()
        record = WithdrawalRecord(
            action_id=f"track:{tx_hash}:{asset.symbol}",
            kind="track_withdrawal",
            asset_id=asset.token_id,
            chain=chain,
            amount=amount,
            destination=None,
            status=SUBMITTED,
            created_ns=now,
            updated_ns=now,
            near_tx_hash=tx_hash,
        )
        self.records[record.action_id] = record
        try:
            await self._save_records()
        except StoreError as exc:
            self._error("store", f"could not save tracked withdrawal {tx_hash}: {exc}")
        await self._publish_action(
            LiquidityAction(
                action_id=record.action_id,
                kind="track_withdrawal",
                asset_id=asset.token_id,
                amount=amount,
                chain=chain,
                status="requested",
                near_tx_hash=tx_hash,
            ),
            msg_id=f"liquidity:{record.action_id}:requested",
        )
        async with self._poll_lock:
            await self._poll_withdrawals()
            await self._publish_state(force=True)
        return json_response(self._view(record, duplicate=False))

    async def _verify_burn(self, tx_hash: str, asset: Asset, amount: int) -> int:
        """The tracked hash must be an ``ft_withdraw`` of ``asset`` from our account on the Verifier,
        executed successfully; the amount is the chain's (the request's must match it)."""
        if self.rpc is None or self.account is None:
            raise HttpError(503, "cannot check the transaction: no NEAR account configured")
        try:
            outcome = await self.rpc.tx_status(tx_hash, self.account)
        except ContractError as exc:
            raise HttpError(409, f"transaction {tx_hash} failed on chain, nothing to track: {exc}") from None
        except RpcError as exc:
            if "UNKNOWN_TRANSACTION" in str(exc) or "doesn't exist" in str(exc):
                raise HttpError(
                    409, f"no transaction {tx_hash} signed by {self.account} is known to NEAR"
                ) from None
            raise HttpError(502, f"could not look the transaction up on NEAR: {exc}") from None
        except IntentsMMError as exc:
            raise HttpError(502, f"could not look the transaction up on NEAR: {exc}") from None
        try:
            token, burned, _receiver = parse_ft_withdraw_tx(
                outcome, signer_id=self.account, contract_id=self.contract_id
            )
        except InputError as exc:
            raise HttpError(409, f"transaction {tx_hash} is not a withdrawal of ours: {exc}") from None
        contract = asset.token_id.removeprefix("nep141:")
        if token != contract:
            raise HttpError(409, f"transaction {tx_hash} withdraws {token}, not {asset.symbol} ({contract})")
        if burned != amount:
            raise HttpError(
                409, f"transaction {tx_hash} burned {burned} smallest units of {asset.symbol}, not {amount}"
            )
        return burned

    async def _untrack(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        fields = ("withdrawal_hash", "asset_id")
        _only_fields(body, fields)
        for name in fields:
            if name not in body:
                raise HttpError(400, f"{name} is required; body: {{{', '.join(repr(f) for f in fields)}}}")
        tx_hash = _text_field(body, "withdrawal_hash")
        asset = self._asset(body)
        found = [
            r for r in self.records.values() if r.near_tx_hash == tx_hash and r.asset_id == asset.token_id
        ]
        if not found:
            raise HttpError(404, f"no tracked withdrawal {tx_hash} of {asset.symbol}")
        (record,) = found
        if record.kind != "track_withdrawal":
            raise HttpError(
                409,
                f"{tx_hash} is a withdrawal made by this service ({record.action_id}); only tracked "
                "ones can be untracked",
            )
        del self.records[record.action_id]
        try:
            await self._save_records()
        except StoreError as exc:
            self.records[record.action_id] = record
            raise HttpError(503, f"could not store the change, still tracked: {exc}") from None
        log.info("%s: untracked withdrawal %s (%s)", self.name, tx_hash, asset.symbol)
        await self._publish_action(
            LiquidityAction(
                action_id=record.action_id,
                kind="track_withdrawal",
                asset_id=asset.token_id,
                amount=record.amount,
                chain=record.chain,
                status="failed",
                near_tx_hash=tx_hash,
                detail={"untracked": True, "reason": "untracked by the operator"},
            ),
            msg_id=f"liquidity:{record.action_id}:untracked",
        )
        await self._publish_state(force=True)
        return json_response({"untracked": True, **self._view(record)})

    # -- introspection ---------------------------------------------------------------------------
    def checks(self) -> dict[str, Check]:
        checks = super().checks()
        if self.account is None:
            checks["account"] = Check(False, "set NEAR_INTENTS_ACCOUNT_ID or NEAR_INTENTS_SIGNER_PRIVATE_KEY")
        failing = self.bridge_failures >= BRIDGE_FAILURES_UNHEALTHY
        checks["bridge"] = Check(
            not failing, f"{self.bridge_failures} bridge polls failed in a row" if failing else ""
        )
        return checks

    def state(self) -> dict[str, Any]:
        now = self.clock.now_ns()
        by_symbol = {a.chain: [x.symbol for x in self.assets if x.chain == a.chain] for a in self.assets}
        return {
            "account_id": self.account,
            "contract_id": self.contract_id,
            "withdrawals_frozen": self.frozen,
            "signer_configured": self.sender is not None,
            "reservations": None
            if self.reservations is None
            else {
                "age_ms": self.reservations_age_ms(),
                "max_age_ms": self.reservations_max_age_ns // MS,
                "seq": self.reservations.seq,
                "reserved_out": {k: str(v) for k, v in self.reservations.reserved_out.items()},
                "held": {k: str(v) for k, v in self.reservations.held.items()},
                "hold_ids": self.reservations.hold_ids,
                "live": self.reservations.live,
            },
            "deposit_addresses": {
                chain: {"address": a.address, "memo": a.memo, "assets": by_symbol.get(chain, [])}
                for chain, a in self.deposit_addresses.items()
            },
            "deposit_addresses_refreshed_ts_ns": self.addresses_refreshed_ns,
            "pending_deposits": [
                {**_pending_view(p), "human_amount": format_units(self.ctx.assets.get(p.asset_id), p.amount)}
                for p in self.pending.values()
            ],
            "recent_credited_deposits": self.credited_deposits,
            "recent_failed_deposits": self.failed_deposits,
            "skipped_deposit_entries": {
                "total": self.skipped_deposits_total,
                "last_poll": self.skipped_deposits_last_poll,
                "recent": self.skipped_deposits_recent,
            },
            "withdrawals": [
                self._view(r, age_ms=(now - r.created_ns) // MS)
                for r in sorted(self.records.values(), key=lambda r: r.created_ns)[-50:]
            ],
            "default_destinations": {k: v for k, v in self.default_destinations.items() if v},
            "poll_ms": self.config["LIQUIDITY_POLL_MS"],
            "bridge_failures_in_a_row": self.bridge_failures,
            "last_errors": self.last_errors,
        }


def _pending_view(p: PendingDeposit) -> dict[str, Any]:
    return {
        "tx_hash": p.tx_hash,
        "chain": p.chain,
        "asset_id": p.asset_id,
        "amount": str(p.amount),
        "status": p.status,
    }
