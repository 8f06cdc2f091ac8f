"""trade-executor (8087): signs and sends quote responses, each command at most once; emergency stop.

Contract
--------
* Starts DISARMED, always (also after a restart). ``POST /arm`` re-checks that the signer key is
  registered for the account on the Verifier (``has_public_key``; an implicit account owns its own key)
  and answers 409 with the reason when it is not, when the check cannot be made, or when no key is
  configured. ``POST /disarm`` disarms. Both are audited by the runtime.
* Consumes ``cmd.execute_trade`` (durable ``trade-executor-commands``). Every command gets exactly one
  ``exec.trade_result`` (msg_id ``result:<command_id>``, so a republished result is deduplicated):

  0. already signed (memory or ledger) → ``error`` with the first signature's quote hash, and its nonce
     and deadline while it is live (its reservation and settlement matching stay alive);
  1. disarmed → ``skipped_disarmed``, nothing is signed or sent;
  2. ``now > relay_deadline_ns`` (the relay's answer window has passed) or the request waited more than
     ``SHED_REQUEST_AGE_MS`` since its relay frame was read (overload: shed, not queued; the frame's
     time is ``relay_deadline_ns - INGEST_RELAY_WINDOW_MS``) →
     ``dropped_late``, never signed; a relay rejection that arrives after the window is noted as such
     in ``error`` (the strategy does not count our lateness as a venue error);
  3. signed at most once: the command id is written to the executor's append-only ledger file
     (:mod:`intents_mm.services.executor_ledger`, one ``O_APPEND`` ``write()``) BEFORE anything is sent,
     and mirrored asynchronously, in batches, into the store's ``signed_commands`` table (a row the
     store refuses is skipped and counted, ``mirror_rejected``; a mirror failing for
     ``MIRROR_UNHEALTHY_S`` turns ``/healthz`` to 503); at start both are read back (the last 15
     minutes). A command the ledger already holds is not signed again (``error``); an unwritable
     ledger file sends nothing (``error``). An in-memory set and the results
     of this process are the fast path: a redelivered command gets its first result republished, never
     a second signature. Why a crash cannot lead to a second signature: ``docs/services/trade-executor.md``;
  4. the signed ``token_diff`` is from our side: ``{asset_in: +amount_in, asset_out: -amount_out}``,
     deadline ``now + min_deadline_ms + EXECUTOR_DEADLINE_BUFFER_MS`` (floored to the ms), a fresh
     versioned nonce with the Verifier's cached salt and nonce deadline = intent deadline, NEP-413 (or
     raw_ed25519, ``EXECUTOR_SIGNING_STANDARD``). The ``quote_response`` goes over the executor's own
     Solver Relay connection (no subscriptions), or the ingest's (``EXECUTOR_QUOTE_SOCKET=ingest``).
     A relay/Verifier ``invalid salt`` refreshes the salt and retries the command once with a fresh
     nonce while the relay window is open;
  5. outcome ``accepted`` (relay said OK), ``rejected`` (relay error reply) or ``error`` (no reply,
     ledger unavailable, already signed), with the relay reply, quote hash, nonce, deadline and the
     latency from command receipt to relay reply.

  The hot path makes no RPC call (salt and key are cached; the salt is refreshed in the background)
  and logs nothing above DEBUG per command. Commands are processed concurrently (bounded).
* ``POST /kill`` (emergency stop): disarms the executor and the strategy (a ``control.operator_action``
  for ``strategy-engine``/``disarm`` with actor ``trade-executor/kill``, plus the composition root's
  ``overrides["disarm_strategy"]`` callable when present), then cancels every signed quote whose deadline
  has not passed. The Verifier has no ``invalidate_nonces``: a quote is cancelled by an empty-intents
  payload signed with the same key and nonce (:mod:`intents_mm.services.quote_canceller`), sent to the
  relay's ``publish_intents`` and executed on chain in ``execute_intents`` transactions (each path
  configurable). The answer is per nonce (cancelled, already settled, expired, voided, failed with the
  reason), kept in ``/state``, published as ``control.operator_action`` ``kill_result`` and stored in
  ``quote_cancels``. ``{"remove_public_key": true, "confirm": <public key>}`` voids every quote with one
  ``remove_public_key`` transaction instead (quoting stops until the key is registered again).
* Cancel-on-move (``EXECUTOR_CANCEL_ON_MOVE``): live quotes the reference mid moved against by more than
  ``EXECUTOR_CANCEL_ON_MOVE_BPS`` from their priced mid, and every live quote on a stale reference, a
  jump, a disarm of the executor or the strategy, or a restart, are cancelled in one batch at the relay
  (on chain too by configuration), in a task of their own. The live list survives restarts (ledger file
  and the store's ``signed_commands``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import inspect
import json
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, cast

from aiohttp import web

from intents_mm.bus.port import Delivery, Subscription
from intents_mm.domain.cancel import MoveWatch, WatchedQuote
from intents_mm.domain.stats import ms_summary
from intents_mm.errors import InputError, IntentsMMError, StoreError
from intents_mm.messages import (
    EXECUTE_TRADE,
    OPERATOR_ACTION,
    REFERENCE_PRICE,
    TRADE_RESULT,
    ExecuteTrade,
    OperatorAction,
    ReferencePrice,
    TradeOutcome,
    TradeResult,
    decode,
)
from intents_mm.near.encoding import b64encode
from intents_mm.near.keys import SigningKey, is_implicit_account
from intents_mm.near.nonce import random_versioned_nonce
from intents_mm.near.payload import SignedPayload, sign_intents, token_diff_intent
from intents_mm.near.rpc import NearRpcClient
from intents_mm.near.sender import TransactionSender
from intents_mm.near.verifier import VerifierClient
from intents_mm.services.executor_ledger import FILE_NAME, LedgerEntry, LedgerError, SignedLedger
from intents_mm.services.quote_canceller import CancelOutcome, CancelTarget, QuoteCanceller
from intents_mm.services.runtime import Check, HttpError, Route, Service, json_response, read_json_object
from intents_mm.storage.store import StoreRejectedError
from intents_mm.venues.relay import RelayReply, SolverRelayClient
from intents_mm.venues.relay_rpc import RelayRpcClient

log = logging.getLogger(__name__)

MS: Final = 1_000_000
S: Final = 1_000_000_000
KEY_CHECK_INTERVAL_NS: Final = 30 * S
SALT_REFRESH_INTERVAL_NS: Final = 60 * S
TICK_S: Final = 0.5
MAX_IN_FLIGHT: Final = 64
REMEMBERED_COMMANDS: Final = 100_000
LAST_RESULTS: Final = 20
CANCEL_REACTION_SAMPLES: Final = 10_000
CANCEL_HISTORY: Final = 20
CANCEL_WRITE_RETRY_S: Final = 2.0
RELAY_OVERRIDE: Final = "trade_executor_relay"  # ctx.overrides key: a pre-built SolverRelayClient
DISARM_STRATEGY_OVERRIDE: Final = "disarm_strategy"  # ctx.overrides key: callable, sync or async
LEDGER_PATH_OVERRIDE: Final = "trade_executor_ledger_path"  # ctx.overrides key: the ledger file (tests)
MIRROR_BATCH: Final = 500
MIRROR_DELAY_S: Final = 0.25  # gather a batch this long after the first new entry (like the fdatasync)
MIRROR_RETRY_MAX_S: Final = 5.0
MIRROR_FLUSH_TIMEOUT_S: Final = 5.0
MIRROR_UNHEALTHY_S: Final = 30.0  # /healthz fails once the ledger mirror has been failing this long
OUTCOMES: Final[tuple[TradeOutcome, ...]] = (
    "accepted",
    "rejected",
    "skipped_disarmed",
    "dropped_late",
    "error",
)

Standard = Literal["nep413", "raw_ed25519"]


# ----------------------------------------------------------------------------- signing (pure)


@dataclass(frozen=True)
class SignedQuote:
    """One signed quote: the ``quote_response`` params and what identifies it."""

    params: dict[str, Any]
    payload: SignedPayload
    quote_hash: str
    nonce: bytes
    nonce_b64: str
    deadline_ns: int


def quote_token_diff(cmd: ExecuteTrade) -> dict[str, int]:
    """Our side of the swap: we receive ``asset_in`` (positive) and give ``asset_out`` (negative)."""
    if cmd.asset_in == cmd.asset_out:
        raise InputError(f"command {cmd.command_id}: asset_in and asset_out are the same asset")
    if cmd.amount_in <= 0 or cmd.amount_out <= 0:
        raise InputError(f"command {cmd.command_id}: amounts must be positive")
    return {cmd.asset_in: cmd.amount_in, cmd.asset_out: -cmd.amount_out}


def quote_deadline_ns(cmd: ExecuteTrade, now_ns: int, buffer_ms: int) -> int:
    """``now + min_deadline_ms + buffer``, floored to the millisecond (what RFC 3339 carries)."""
    return (now_ns + (cmd.min_deadline_ms + buffer_ms) * MS) // MS * MS


def sign_quote(
    cmd: ExecuteTrade,
    *,
    key: SigningKey,
    signer_id: str,
    contract_id: str,
    salt: bytes,
    now_ns: int,
    buffer_ms: int,
    standard: Standard = "nep413",
) -> SignedQuote:
    """Sign ``cmd`` as a ``token_diff`` and build the ``quote_response`` params.

    ``quote_output`` carries the side the request left open: ``amount_out`` for exact-in,
    ``amount_in`` for exact-out. The nonce is a fresh V1 versioned nonce with ``salt`` whose deadline
    equals the intent deadline.
    """
    deadline_ns = quote_deadline_ns(cmd, now_ns, buffer_ms)
    nonce = random_versioned_nonce(salt, deadline_ns)
    payload = sign_intents(
        key,
        signer_id=signer_id,
        contract_id=contract_id,
        nonce=nonce,
        deadline_ns=deadline_ns,
        intents=[token_diff_intent(quote_token_diff(cmd))],
        standard=standard,
    )
    params = SolverRelayClient.quote_response_params(
        cmd.quote_id,
        exact_side=cmd.exact_side,
        amount_in=cmd.amount_in,
        amount_out=cmd.amount_out,
        signed_data=payload.to_json_obj(),
    )
    return SignedQuote(params, payload, payload.hash_b58(), nonce, b64encode(nonce), deadline_ns)


def is_invalid_salt(message: str | None) -> bool:
    return message is not None and "invalid salt" in message.lower()


# ----------------------------------------------------------------------------- bookkeeping


@dataclass(frozen=True)
class Outstanding:
    """A quote we signed; it can settle until ``deadline_ns`` unless its nonce is spent first (a cancel).

    ``reference_mid`` and ``buys_base`` (what cancel-on-move needs) are known for quotes signed by this
    process; quotes read back after a restart have neither and are cancelled only by the all-quotes
    triggers (stale reference, jump, disarm, restart, ``/kill``)."""

    command_id: str
    quote_hash: str
    nonce_b64: str
    deadline_ns: int
    reference_mid: Decimal | None = None
    buys_base: bool | None = None

    def target(self) -> CancelTarget:
        return CancelTarget(self.command_id, self.quote_hash, self.nonce_b64, self.deadline_ns)


class _Work:
    """One command being processed; ``done`` resolves with its result."""

    __slots__ = ("cmd", "done", "recv_mono_ns")

    def __init__(self, cmd: ExecuteTrade, recv_mono_ns: int) -> None:
        self.cmd = cmd
        self.recv_mono_ns = recv_mono_ns
        self.done: asyncio.Future[TradeResult] = asyncio.get_running_loop().create_future()


class TradeExecutor(Service):
    name = "trade-executor"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.config
        secret: str | None = c["NEAR_INTENTS_SIGNER_PRIVATE_KEY"]
        self._key: SigningKey | None = SigningKey.from_string(secret) if secret else None
        configured_account: str | None = c["NEAR_INTENTS_ACCOUNT_ID"] or None
        self.account_id: str | None = configured_account or (
            self._key.public_key.implicit_account_id() if self._key else None
        )
        self.public_key: str | None = self._key.public_key.to_string() if self._key else None
        self.contract_id: str = c["NEAR_INTENTS_CONTRACT_ID"]
        self.buffer_ms: int = c["EXECUTOR_DEADLINE_BUFFER_MS"]
        self.window_ns: int = c["INGEST_RELAY_WINDOW_MS"] * MS
        self.shed_age_ns: int = c["SHED_REQUEST_AGE_MS"] * MS  # 0 = only the relay window
        self.standard: Standard = cast(Standard, c["EXECUTOR_SIGNING_STANDARD"])
        self.armed = False
        self.disarm_reason: str | None = "starts disarmed"
        # Verifier views
        self.rpc: NearRpcClient | None = None
        self.verifier: VerifierClient | None = None
        self.sender: TransactionSender | None = None
        self.relay: SolverRelayClient | None = None
        self._owns_relay = True
        self.key_registered: bool | None = None
        self.key_source: str | None = None  # "implicit" | "verifier"
        self.key_checked_ts_ns: int | None = None
        self.key_check_error: str | None = None
        self._key_checked_mono: int | None = None
        self.salt: bytes | None = None
        self.salt_fetched_ts_ns: int | None = None
        self.salt_error: str | None = None
        self.salt_refreshes = 0
        self._salt_lock = asyncio.Lock()
        self._salt_mono: int | None = None
        # commands
        self._sub: Subscription | None = None
        self._watch_subs: list[Subscription] = []
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._inflight: dict[str, _Work] = {}
        self._work_tasks: set[asyncio.Task[None]] = set()
        self._results: collections.OrderedDict[str, TradeResult] = collections.OrderedDict()
        # command id -> its quote hash when known (signed here, or read back from the ledger file)
        self._signed: collections.OrderedDict[str, str | None] = collections.OrderedDict()
        self.counts: collections.Counter[str] = collections.Counter({o: 0 for o in OUTCOMES})
        self.salt_retries = 0
        # how long each sent quote's request had waited since its relay frame was read (bench figures)
        self.send_ages_ns: collections.deque[int] = collections.deque(maxlen=REMEMBERED_COMMANDS)
        self.last_results: collections.deque[dict[str, Any]] = collections.deque(maxlen=LAST_RESULTS)
        self.last_error: str | None = None
        # signed-command ledger: the local file, mirrored into the store's signed_commands table
        ledger_path = self.ctx.overrides.get(LEDGER_PATH_OVERRIDE)
        self.ledger = SignedLedger(
            Path(ledger_path)
            if ledger_path is not None
            else Path(c["INTENTS_MM_VAR_DIR"]) / "trade-executor" / FILE_NAME,
            clock=self.clock,
        )
        self.ledger_ready = False  # the file is open and the store's recent records are read back
        self.ledger_load_error: str | None = None
        self._mirror: list[LedgerEntry] = []
        self._mirror_wake = asyncio.Event()
        self.mirrored = 0
        self.mirror_error: str | None = None
        self.mirror_failing_since: float | None = None  # monotonic s of the first failure in a row
        self.mirror_rejected = 0  # entries the store refuses (they stay in the local ledger file)
        # live signed quotes, the emergency stop and cancel-on-move
        self.outstanding: dict[str, Outstanding] = {}  # nonce -> quote
        self._by_command: dict[str, str] = {}  # command id -> nonce, over outstanding
        self._expiries: list[tuple[int, str]] = []  # heap of (deadline_ns, nonce) over outstanding
        self._kill_lock = asyncio.Lock()
        self.last_kill: dict[str, Any] | None = None
        self.kill_via_relay: bool = c["EXECUTOR_KILL_VIA_RELAY"]
        self.kill_on_chain: bool = c["EXECUTOR_KILL_ON_CHAIN"]
        self.chain_batch: int = c["EXECUTOR_CANCEL_CHAIN_BATCH"]
        self.cancel_on_move: bool = c["EXECUTOR_CANCEL_ON_MOVE"]
        self.cancel_move_bps: Decimal = c["EXECUTOR_CANCEL_ON_MOVE_BPS"]
        self.cancel_move_on_chain: bool = c["EXECUTOR_CANCEL_ON_MOVE_ON_CHAIN"]
        self.reference_stale_ns: int = c["REFERENCE_STALE_MS"] * MS
        self.base_token: str = self.ctx.assets.active_pair.base.token_id
        self.watch = MoveWatch(self.cancel_move_bps)
        self.relay_cancelled: set[str] = set()  # nonces cancelled at the relay only (not yet on chain)
        self.relay_rpc: RelayRpcClient | None = None
        self.canceller: QuoteCanceller | None = None
        self.cancel_counts: collections.Counter[str] = collections.Counter()  # by trigger
        self.cancel_outcomes: collections.Counter[str] = collections.Counter()  # by outcome
        self.last_cancels: collections.deque[dict[str, Any]] = collections.deque(maxlen=CANCEL_HISTORY)
        self.cancel_reaction_ns: collections.deque[int] = collections.deque(maxlen=CANCEL_REACTION_SAMPLES)
        self._cancel_rows: list[dict[str, Any]] = []  # waiting to be written to quote_cancels
        self.cancel_write_error: str | None = None
        self._cancel_tasks: set[asyncio.Task[None]] = set()
        self._ref_mid: Decimal | None = None
        self._ref_computed_ns: int | None = None
        self._ref_rx_mono: int | None = None
        self._ref_stale = False

    # -- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self.rpc = NearRpcClient(list(self.config["NEAR_RPC_URLS"]))
        self.verifier = VerifierClient(self.rpc, self.contract_id)
        if self._key is not None and self.account_id is not None:
            self.sender = TransactionSender(self.rpc, self.account_id, self._key, clock=self.clock)
        override = self.ctx.overrides.get(RELAY_OVERRIDE)
        if override is not None:
            self.relay, self._owns_relay = cast(SolverRelayClient, override), False
        else:
            self.relay = SolverRelayClient(
                self.config["NEAR_INTENTS_RELAY_WS_URL"],
                api_key=self.config["NEAR_INTENTS_API_KEY"],
                clock=self.clock,
                request_timeout_s=3.0,
            )
        await self.relay.start()
        if self._key is not None and self.account_id is not None:
            self.relay_rpc = RelayRpcClient(
                self.config["NEAR_INTENTS_RELAY_RPC_URL"], api_key=self.config["NEAR_INTENTS_API_KEY"]
            )
            self.canceller = QuoteCanceller(
                key=self._key,
                signer_id=self.account_id,
                contract_id=self.contract_id,
                standard=self.standard,
                clock=self.clock,
                relay_rpc=self.relay_rpc,
                sender=self.sender,
                # nonce checks read the latest state: a `final` view is blocks behind a settlement
                verifier=VerifierClient(self.rpc, self.contract_id, finality="optimistic"),
                chain_batch=self.chain_batch,
            )
        await self._load_store_ledger()
        self.spawn(self.ledger.sync_forever(), "ledger-sync")
        self.spawn(self._mirror_forever(), "ledger-mirror")
        self.spawn(self._cancel_rows_forever(), "cancel-rows")
        self._sub = await self.subscribe([EXECUTE_TRADE], f"{self.name}-commands", self._on_command)
        if self.cancel_on_move:
            self._watch_subs = [
                await self.subscribe([REFERENCE_PRICE], f"{self.name}-reference", self._on_reference),
                await self.subscribe([OPERATOR_ACTION], f"{self.name}-control", self._on_control),
            ]
            if self.outstanding:  # read back after a restart: nobody watches them any more
                self._spawn_cancel(list(self.outstanding.values()), "restart")

    async def run(self) -> None:
        """Housekeeping: key registration and salt checks, expiry of signed quotes, persistence."""
        while True:
            now_mono = self.clock.monotonic_ns()
            if self._key_checked_mono is None or now_mono - self._key_checked_mono >= KEY_CHECK_INTERVAL_NS:
                registered = await self.check_key()
                if registered is False and self.armed:
                    self.armed = False
                    self.disarm_reason = "signer key is no longer registered on the Verifier"
                    log.error("%s: disarmed: %s", self.name, self.disarm_reason)
            if self._key is not None and (
                self._salt_mono is None or now_mono - self._salt_mono >= SALT_REFRESH_INTERVAL_NS
            ):
                with contextlib.suppress(IntentsMMError):
                    await self.refresh_salt()
            if not self.ledger_ready and self.ledger_load_error is not None:
                await self._load_store_ledger()
            self._expire_outstanding()
            self._check_reference_age()
            await asyncio.sleep(TICK_S)

    async def stop(self) -> None:
        for sub in self._watch_subs:
            await sub.stop()
        self._watch_subs = []
        if self._sub is not None:
            await self._sub.stop()
            self._sub = None
        if self._cancel_tasks:
            await asyncio.wait(list(self._cancel_tasks), timeout=5.0)
            for ctask in list(self._cancel_tasks):
                ctask.cancel()
            await asyncio.gather(*self._cancel_tasks, return_exceptions=True)
        if self._cancel_rows:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(MIRROR_FLUSH_TIMEOUT_S):
                    await self._write_cancel_rows()
        if self._work_tasks:
            await asyncio.wait(list(self._work_tasks), timeout=5.0)
            for task in list(self._work_tasks):
                task.cancel()
            await asyncio.gather(*self._work_tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MIRROR_FLUSH_TIMEOUT_S):
                while self._mirror and await self._mirror_once():
                    pass
        self.ledger.close()
        if self.relay is not None and self._owns_relay:
            await self.relay.close()
        self.relay = None
        if self.relay_rpc is not None:
            await self.relay_rpc.close()
            self.relay_rpc = None
        if self.rpc is not None:
            await self.rpc.close()
            self.rpc = None

    # -- Verifier views (never on the hot path) --------------------------------------------------
    async def check_key(self) -> bool | None:
        """Is the signer key registered for the account? ``None`` when it cannot be told now."""
        self._key_checked_mono = self.clock.monotonic_ns()
        if self._key is None or self.account_id is None or self.public_key is None:
            self.key_registered, self.key_source = None, None
            self.key_check_error = "NEAR_INTENTS_SIGNER_PRIVATE_KEY is not set"
            return None
        if (
            is_implicit_account(self.account_id)
            and self.account_id == self._key.public_key.implicit_account_id()
        ):
            self.key_registered, self.key_source, self.key_check_error = True, "implicit", None
            self.key_checked_ts_ns = self.clock.now_ns()
            return True
        assert self.verifier is not None
        try:
            registered = await self.verifier.has_public_key(self.account_id, self.public_key)
        except IntentsMMError as exc:
            self.key_check_error = f"has_public_key failed: {exc}"
            return None
        self.key_registered, self.key_source, self.key_check_error = registered, "verifier", None
        self.key_checked_ts_ns = self.clock.now_ns()
        return registered

    async def refresh_salt(self) -> bytes:
        """Read the Verifier's current salt into the cache (one RPC; concurrent callers share it)."""
        assert self.verifier is not None
        started = self.clock.monotonic_ns()
        async with self._salt_lock:
            if self.salt is not None and self._salt_mono is not None and self._salt_mono >= started:
                return self.salt  # refreshed by someone else while we waited
            try:
                salt = await self.verifier.current_salt()
            except IntentsMMError as exc:
                self.salt_error = f"current_salt failed: {exc}"
                raise
            if self.salt is not None and salt != self.salt:
                log.info("%s: Verifier salt changed %s -> %s", self.name, self.salt.hex(), salt.hex())
            self.salt, self.salt_error = salt, None
            self.salt_fetched_ts_ns = self.clock.now_ns()
            self._salt_mono = self.clock.monotonic_ns()
            self.salt_refreshes += 1
            return salt

    # -- commands --------------------------------------------------------------------------------
    async def _on_command(self, delivery: Delivery) -> None:
        recv_mono = self.clock.monotonic_ns()
        payload = decode(delivery.data, subject=EXECUTE_TRADE).payload  # InputError: a dead letter
        if not isinstance(payload, ExecuteTrade):  # pragma: no cover - decode checks the type
            await delivery.ack()
            return
        cmd = payload
        known = self._results.get(cmd.command_id)
        if known is not None:  # redelivery: the first result stands (republished; the bus dedupes)
            await self._publish_result(known)
            await delivery.ack()
            return
        running = self._inflight.get(cmd.command_id)
        if running is not None:  # redelivered while the first delivery is still being processed
            self.spawn_work(self._after(running, delivery))
            return
        await self._slots.acquire()
        work = _Work(cmd, recv_mono)
        self._inflight[cmd.command_id] = work
        self.spawn_work(self._process(work, delivery))

    def spawn_work(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._work_tasks.add(task)
        task.add_done_callback(self._work_tasks.discard)

    async def _after(self, work: _Work, delivery: Delivery) -> None:
        try:
            await asyncio.shield(work.done)
        except asyncio.CancelledError:
            if work.done.cancelled():
                return  # the first delivery was abandoned (stop): leave this one un-acked
            raise
        await delivery.ack()

    async def _process(self, work: _Work, delivery: Delivery) -> None:
        cmd = work.cmd
        try:
            try:
                result = await self.execute(cmd, work.recv_mono_ns)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every command gets a result, whatever happened
                log.exception("%s: command %s failed", self.name, cmd.command_id)
                result = self._result(cmd, "error", error=f"internal error: {exc.__class__.__name__}")
            self._remember(result)
            if not work.done.done():
                work.done.set_result(result)
            try:
                await self._publish_result(result)
            except IntentsMMError as exc:
                self.last_error = f"could not publish the result of {cmd.command_id}: {exc}"
                await delivery.nak(1.0)  # redelivered: the remembered result is published then
                return
            await delivery.ack()
        finally:
            self._inflight.pop(cmd.command_id, None)
            if not work.done.done():
                work.done.cancel()
            self._slots.release()

    async def execute(self, cmd: ExecuteTrade, recv_mono_ns: int) -> TradeResult:
        """Decide, sign, record and send one command; returns its result (not yet published)."""
        if cmd.command_id in self._signed or cmd.command_id in self.ledger:
            # Signed before (e.g. redelivered after a crash before its result was published): never
            # again, and the result carries the signed quote's hash so a settlement can still be matched.
            # The quote may be live (signed before a crash): its nonce and deadline keep the
            # reservation and the settlement matching alive until the deadline.
            live = self.outstanding.get(self._by_command.get(cmd.command_id, ""))
            return self._result(
                cmd,
                "error",
                error="command was already signed; not signed or sent again",
                quote_hash=live.quote_hash if live else self._signed.get(cmd.command_id),
                nonce_b64=live.nonce_b64 if live else None,
                deadline_ns=live.deadline_ns if live else None,
            )
        if not self.armed:
            return self._result(cmd, "skipped_disarmed")
        late = self._lateness(cmd)
        if late is not None:
            return self._result(cmd, "dropped_late", error=late)
        if self._key is None or self.account_id is None:
            return self._result(cmd, "error", error="no signer key configured")
        attempt = await self._sign_record_send(cmd, recv_mono_ns, cmd.command_id)
        if isinstance(attempt, TradeResult):
            return attempt
        signed, reply, error = attempt
        if error is None and reply is not None and not reply.ok and is_invalid_salt(reply.error_message):
            self._drop_outstanding(signed.nonce_b64)  # a quote with an invalid salt can never settle
            try:
                await self.refresh_salt()
            except IntentsMMError as exc:
                error = f"relay refused an invalid salt and the salt refresh failed: {exc}"
            else:
                if self.armed and self.clock.now_ns() <= cmd.relay_deadline_ns:
                    self.salt_retries += 1
                    retry = await self._sign_record_send(cmd, recv_mono_ns, f"{cmd.command_id}:salt-retry")
                    if isinstance(retry, TradeResult):
                        return retry
                    signed, reply, error = retry
        latency_us = (self.clock.monotonic_ns() - recv_mono_ns) // 1000
        if error is not None or reply is None:
            outcome: TradeOutcome = "error"
        else:
            outcome = "accepted" if reply.ok else "rejected"
            if not reply.ok and self.clock.now_ns() > cmd.relay_deadline_ns:  # our lateness, not the venue's
                error = f"{reply.error_message} (the relay window had passed before the reply)"
        return self._result(
            cmd,
            outcome,
            relay_reply=_reply_text(reply),
            error=error if error is not None else (reply.error_message if reply is not None else None),
            signed=signed,
            latency_us=latency_us,
        )

    def _lateness(self, cmd: ExecuteTrade) -> str | None:
        """Why ``cmd`` is too late to sign (its relay window passed, or overload), or None."""
        now = self.clock.now_ns()
        if now > cmd.relay_deadline_ns:
            return "the relay's answer window had passed"
        age_ns = now - (cmd.relay_deadline_ns - self.window_ns)
        if self.shed_age_ns and age_ns > self.shed_age_ns:
            return (
                f"shed_overload: the request waited {age_ns / MS:.1f} ms (bound {self.shed_age_ns // MS} ms)"
            )
        return None

    async def _sign_record_send(
        self, cmd: ExecuteTrade, recv_mono_ns: int, ledger_id: str
    ) -> TradeResult | tuple[SignedQuote, RelayReply | None, str | None]:
        """Sign, write the ledger, re-check, send. A ``TradeResult`` when nothing was sent."""
        assert self._key is not None and self.account_id is not None
        if ledger_id in self.ledger:  # signed by an earlier run of this executor (file or table)
            return self._result(
                cmd, "error", error="command was already signed (ledger); not signed or sent again"
            )
        if not self.ledger_ready:
            return self._result(
                cmd, "error", error=f"signed-command ledger not loaded, not sent: {self.ledger_load_error}"
            )
        salt = self.salt
        if salt is None:
            try:
                salt = await self.refresh_salt()
            except IntentsMMError as exc:
                return self._result(cmd, "error", error=f"no Verifier salt: {exc}")
        now_ns = self.clock.now_ns()
        signed = sign_quote(
            cmd,
            key=self._key,
            signer_id=self.account_id,
            contract_id=self.contract_id,
            salt=salt,
            now_ns=now_ns,
            buffer_ms=self.buffer_ms,
            standard=self.standard,
        )
        self._mark_signed(cmd.command_id, signed.quote_hash)
        entry = LedgerEntry(ledger_id, signed.quote_hash, signed.nonce_b64, signed.deadline_ns, now_ns)
        try:
            self.ledger.append(entry)  # durable against a crash of this process once it returns
        except LedgerError as exc:
            return self._result(cmd, "error", error=f"signed-command ledger unavailable, not sent: {exc}")
        self._queue_mirror(entry)
        # No await between these checks and the registration below: /kill disarms first and then
        # collects the outstanding quotes, so every quote that gets sent is one /kill will see.
        if not self.armed:
            return self._result(cmd, "skipped_disarmed")
        if self.clock.now_ns() > cmd.relay_deadline_ns:
            return self._result(cmd, "dropped_late", error="the relay's answer window passed while signing")
        self._add_outstanding(
            Outstanding(
                cmd.command_id,
                signed.quote_hash,
                signed.nonce_b64,
                signed.deadline_ns,
                reference_mid=cmd.reference_mid,
                buys_base=cmd.asset_in == self.base_token,
            )
        )
        assert self.relay is not None
        self.send_ages_ns.append(self.clock.now_ns() - (cmd.relay_deadline_ns - self.window_ns))
        try:
            reply = await self.relay.send_quote_response(signed.params)
        except IntentsMMError as exc:
            self.last_error = str(exc)
            return signed, None, f"quote_response not answered: {exc}"
        return signed, reply, None

    # -- signed-command ledger ---------------------------------------------------------------------
    def _open_ledger(self) -> None:
        """Open the local file; recent entries become known ids and (when live) outstanding quotes."""
        try:
            entries = self.ledger.open()
        except LedgerError as exc:
            self.ledger_load_error = str(exc)
            log.error("%s: %s", self.name, exc)
            return
        now = self.clock.now_ns()
        for entry in entries:
            self._mark_signed(entry.command_id.removesuffix(":salt-retry"), entry.quote_hash)
            if entry.deadline_ns >= now:  # still live: /kill must see it
                self._restore_outstanding(
                    Outstanding(entry.command_id, entry.quote_hash, entry.nonce_b64, entry.deadline_ns)
                )
        self._mirror.extend(entries)  # idempotent: the store keeps the first record of an id
        if self._mirror:
            self._mirror_wake.set()

    async def _load_store_ledger(self) -> None:
        """Read back the store's recent ``signed_commands`` (a new machine has no local file)."""
        if not self.ledger.is_open:
            self._open_ledger()
            if not self.ledger.is_open:
                return  # the file cannot be opened: stay not ready (ledger_load_error says why)
        store = self.ctx.store
        if store is not None:
            since = self.clock.now_ns() - self.ledger.lookback_ns
            try:
                recorded = await store.signed_commands_since(since)
            except StoreError as exc:
                self.ledger_load_error = f"could not read the signed commands back from the store: {exc}"
                return
            for command_id, signed_ts_ns in recorded:
                self.ledger.remember(command_id, signed_ts_ns)
            try:
                live = await store.live_signed_quotes(self.clock.now_ns())
            except StoreError as exc:
                self.ledger_load_error = f"could not read the live signed quotes back from the store: {exc}"
                return
            for command_id, quote_hash, nonce_b64, deadline_ns in live:
                self._restore_outstanding(Outstanding(command_id, quote_hash, nonce_b64, deadline_ns))
        self.ledger_ready = True
        self.ledger_load_error = None

    def _queue_mirror(self, entry: LedgerEntry) -> None:
        self._mirror.append(entry)
        if len(self._mirror) == 1:
            self._mirror_wake.set()

    async def _mirror_once(self) -> bool:
        """Write one batch of ledger entries to the store; False (entries kept) when the store fails."""
        store = self.ctx.store
        if store is None:
            self._mirror.clear()
            return True
        batch = self._mirror[:MIRROR_BATCH]
        rows = [(e.command_id, e.quote_hash, e.nonce_b64, e.signed_ts_ns, e.deadline_ns) for e in batch]
        try:
            try:
                await store.record_signed_commands(rows)
            except StoreRejectedError:  # one row the store cannot hold must not block the others
                for row in rows:
                    try:
                        await store.record_signed_commands([row])
                    except StoreRejectedError as exc:
                        self.mirror_rejected += 1
                        log.error(
                            "%s: ledger entry %r not mirrored (kept in the file): %s", self.name, row[0], exc
                        )
        except StoreError as exc:
            self.mirror_error = str(exc)
            if self.mirror_failing_since is None:
                self.mirror_failing_since = self.clock.monotonic_ns() / 1e9
            return False
        del self._mirror[: len(batch)]
        self.mirrored += len(batch)
        self.mirror_error = None
        self.mirror_failing_since = None
        return True

    async def _mirror_forever(self) -> None:
        """Mirror the ledger into the store in batches, off the hot path; retries while the store is down."""
        delay = MIRROR_DELAY_S
        while True:
            if not self._mirror:
                self._mirror_wake.clear()
                await self._mirror_wake.wait()
            await asyncio.sleep(MIRROR_DELAY_S)  # let a burst gather into one transaction
            if await self._mirror_once():
                delay = MIRROR_DELAY_S
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, MIRROR_RETRY_MAX_S)

    def _mark_signed(self, command_id: str, quote_hash: str | None) -> None:
        self._signed[command_id] = quote_hash
        if len(self._signed) > REMEMBERED_COMMANDS:
            self._signed.popitem(last=False)

    def _remember(self, result: TradeResult) -> None:
        self._results[result.command_id] = result
        if len(self._results) > REMEMBERED_COMMANDS:
            self._results.popitem(last=False)
        self.counts[result.outcome] += 1
        if result.outcome == "error" and result.error:
            self.last_error = result.error
        self.last_results.append(
            {
                "command_id": result.command_id,
                "quote_id": result.quote_id,
                "outcome": result.outcome,
                "relay_reply": result.relay_reply,
                "error": result.error,
                "quote_hash": result.quote_hash,
                "latency_us": result.latency_us,
                "amount_in": result.amount_in,
                "amount_out": result.amount_out,
            }
        )
        log.debug("%s: command %s -> %s", self.name, result.command_id, result.outcome)

    def _result(
        self,
        cmd: ExecuteTrade,
        outcome: TradeOutcome,
        *,
        relay_reply: str | None = None,
        error: str | None = None,
        signed: SignedQuote | None = None,
        latency_us: int | None = None,
        quote_hash: str | None = None,
        nonce_b64: str | None = None,
        deadline_ns: int | None = None,
    ) -> TradeResult:
        return TradeResult(
            command_id=cmd.command_id,
            quote_id=cmd.quote_id,
            outcome=outcome,
            relay_reply=relay_reply,
            error=error,
            quote_hash=signed.quote_hash if signed else quote_hash,
            nonce_b64=signed.nonce_b64 if signed else nonce_b64,
            deadline_ns=signed.deadline_ns if signed else deadline_ns,
            latency_us=latency_us,
            amount_in=cmd.amount_in,
            amount_out=cmd.amount_out,
            asset_in=cmd.asset_in,
            asset_out=cmd.asset_out,
        )

    async def _publish_result(self, result: TradeResult) -> None:
        await self.publish(TRADE_RESULT, result, msg_id=f"result:{result.command_id}")

    # -- outstanding signed quotes -----------------------------------------------------------------
    def _add_outstanding(self, entry: Outstanding) -> None:
        self.outstanding[entry.nonce_b64] = entry
        self._by_command[entry.command_id.removesuffix(":salt-retry")] = entry.nonce_b64
        heapq.heappush(self._expiries, (entry.deadline_ns, entry.nonce_b64))
        if self.cancel_on_move and entry.reference_mid is not None and entry.buys_base is not None:
            self.watch.add(WatchedQuote(entry.nonce_b64, entry.reference_mid, entry.buys_base))

    def _restore_outstanding(self, entry: Outstanding) -> None:
        if entry.nonce_b64 not in self.outstanding:
            self._add_outstanding(entry)

    def _drop_outstanding(self, nonce: str) -> None:
        entry = self.outstanding.pop(nonce, None)
        if entry is not None:
            command = entry.command_id.removesuffix(":salt-retry")
            if self._by_command.get(command) == nonce:
                del self._by_command[command]
        self.watch.remove(nonce)
        self.relay_cancelled.discard(nonce)

    def _expire_outstanding(self) -> None:
        """Drop the quotes whose deadline has passed (from a heap: nothing is scanned)."""
        now = self.clock.now_ns()
        expiries, outstanding = self._expiries, self.outstanding
        while expiries and expiries[0][0] < now:
            deadline_ns, nonce = heapq.heappop(expiries)
            entry = outstanding.get(nonce)
            if entry is not None and entry.deadline_ns == deadline_ns:
                self._drop_outstanding(nonce)

    # -- cancel-on-move ----------------------------------------------------------------------------
    async def _on_reference(self, d: Delivery) -> None:
        payload = decode(d.data, subject=REFERENCE_PRICE).payload  # InputError: a dead letter
        if isinstance(payload, ReferencePrice):
            self.on_reference(payload)
        await d.ack()

    def on_reference(self, ref: ReferencePrice) -> None:
        """A new reference price: cancel the live quotes it makes dangerous (in a task of its own)."""
        self._ref_rx_mono = self.clock.monotonic_ns()
        self._ref_computed_ns = ref.computed_ts_ns
        if ref.mid is None or ref.quality == "stale":
            self._ref_mid = None
            if not self._ref_stale:
                self._ref_stale = True
                self._cancel_all("reference_stale", ref.computed_ts_ns)
            return
        self._ref_stale = False
        self._ref_mid = ref.mid
        if ref.jump_detected:
            self._cancel_all("jump", ref.computed_ts_ns)
            return
        if not self.watch:
            return
        moved = self.watch.moved(ref.mid)
        if moved:
            quotes = [self.outstanding[q.nonce_b64] for q in moved if q.nonce_b64 in self.outstanding]
            self._spawn_cancel(quotes, "move", ref.computed_ts_ns)

    def _check_reference_age(self) -> None:
        """No reference update for longer than the stale bound: the quotes are priced blind."""
        if not self.cancel_on_move or self._ref_stale or self._ref_rx_mono is None:
            return
        if self.clock.monotonic_ns() - self._ref_rx_mono > self.reference_stale_ns:
            self._ref_stale = True
            self._cancel_all("reference_stale", None)

    async def _on_control(self, d: Delivery) -> None:
        """A disarm of the strategy (operator, loss or jump guard, another executor's /kill) cancels."""
        env = decode(d.data, subject=OPERATOR_ACTION)  # InputError: a dead letter
        action = env.payload
        if (
            isinstance(action, OperatorAction)
            and env.ts_ns >= self.started_ns
            and action.service == "strategy-engine"
            and action.action in ("disarm", "pause")
            and action.result == "ok"
            and not action.actor.startswith(f"{self.name}/")  # our own /kill cancels by itself
        ):
            self._cancel_all(f"strategy_{action.action}", None)
        await d.ack()

    def _cancel_all(self, trigger: str, ref_ts_ns: int | None) -> None:
        self._expire_outstanding()
        self._spawn_cancel(list(self.outstanding.values()), trigger, ref_ts_ns)

    def _spawn_cancel(self, quotes: list[Outstanding], trigger: str, ref_ts_ns: int | None = None) -> None:
        """Cancel at the relay (and on chain when configured) the quotes not already cancelled there."""
        todo = [q for q in quotes if q.nonce_b64 not in self.relay_cancelled]
        if not todo or self.canceller is None:
            return
        for q in todo:  # claimed now, so a second trigger meanwhile does not send them again
            self.relay_cancelled.add(q.nonce_b64)
            self.watch.remove(q.nonce_b64)
        task = asyncio.get_running_loop().create_task(self._auto_cancel(todo, trigger, ref_ts_ns))
        self._cancel_tasks.add(task)
        task.add_done_callback(self._cancel_tasks.discard)

    async def _auto_cancel(self, quotes: list[Outstanding], trigger: str, ref_ts_ns: int | None) -> None:
        assert self.canceller is not None
        try:
            outcomes = await self.canceller.cancel(
                [q.target() for q in quotes],
                via_relay=True,
                on_chain=self.cancel_move_on_chain,
                precheck=self.cancel_move_on_chain,
            )
        except Exception as exc:  # a cancel must never take the executor down; say why
            log.exception("%s: automatic cancel (%s) failed", self.name, trigger)
            for q in quotes:
                self.relay_cancelled.discard(q.nonce_b64)
            self.last_error = f"automatic cancel ({trigger}) failed: {exc.__class__.__name__}: {exc}"
            return
        sent_ns = next((o.relay_sent_ns for o in outcomes if o.relay_sent_ns is not None), None)
        if ref_ts_ns is not None and sent_ns is not None:  # reference computed -> cancel leaving
            self.cancel_reaction_ns.append(sent_ns - ref_ts_ns)
        summary = self._apply_cancels(outcomes, trigger, definitive_chain=self.cancel_move_on_chain)
        log.info("%s: cancel-on-move (%s): %s", self.name, trigger, summary)

    def _apply_cancels(
        self, outcomes: list[CancelOutcome], trigger: str, *, definitive_chain: bool
    ) -> dict[str, int]:
        """Book the outcomes: quotes that can no longer settle leave the live list; rows are queued."""
        cancel_id = f"cancel:{trigger}:{uuid.uuid4().hex[:12]}"
        now = self.clock.now_ns()
        counts: collections.Counter[str] = collections.Counter()
        for o in outcomes:
            nonce = o.target.nonce_b64
            counts[o.outcome] += 1
            if o.outcome in ("already_settled", "expired", "voided") or (
                o.outcome == "cancelled" and (definitive_chain and o.chain in ("cancelled", "used"))
            ):
                self._drop_outstanding(nonce)
            elif o.outcome == "cancelled":
                self.relay_cancelled.add(nonce)  # at the relay: /kill still spends it on chain
            else:
                self.relay_cancelled.discard(nonce)  # failed: a later trigger may try again
            self._cancel_rows.append(
                {
                    "cancel_id": cancel_id,
                    "trigger": trigger,
                    "command_id": o.target.command_id,
                    "quote_hash": o.target.quote_hash,
                    "nonce": nonce,
                    "deadline_ns": o.target.deadline_ns,
                    "outcome": o.outcome,
                    "reason": o.reason,
                    "relay": o.relay,
                    "chain": o.chain,
                    "chain_tx_hash": o.chain_tx_hash,
                    "ts_ns": now,
                }
            )
        self.cancel_counts[trigger] += len(outcomes)
        self.cancel_outcomes.update(counts)
        self.last_cancels.append(
            {"cancel_id": cancel_id, "trigger": trigger, "ts_ns": now, "quotes": len(outcomes), **counts}
        )
        return dict(counts)

    async def _write_cancel_rows(self) -> bool:
        store = self.ctx.store
        if store is None:
            self._cancel_rows.clear()
            return True
        batch = self._cancel_rows[:MIRROR_BATCH]
        try:
            await store.record_quote_cancels(batch)
        except StoreError as exc:
            self.cancel_write_error = str(exc)
            return False
        del self._cancel_rows[: len(batch)]
        self.cancel_write_error = None
        return True

    async def _cancel_rows_forever(self) -> None:
        while True:
            await asyncio.sleep(MIRROR_DELAY_S if not self.cancel_write_error else CANCEL_WRITE_RETRY_S)
            while self._cancel_rows and await self._write_cancel_rows():
                pass

    # -- emergency stop ----------------------------------------------------------------------------
    async def kill(self, *, reason: str | None = None, remove_key: bool = False) -> dict[str, Any]:
        """Disarm the executor and the strategy, then cancel every live signed quote (or, with
        ``remove_key``, void them all by removing the executor key from the account)."""
        async with self._kill_lock:
            self.armed = False
            self.disarm_reason = "emergency stop (/kill)"
            started_ns = self.clock.now_ns()
            strategy = await self._disarm_strategy(reason)
            self._expire_outstanding()
            live = sorted(self.outstanding.values(), key=lambda o: o.deadline_ns)
            outcome: dict[str, Any] = {
                "ts_ns": started_ns,
                "reason": reason,
                "executor_disarmed": True,
                "strategy": strategy,
                "outstanding": len(live),
                "paths": {"relay": self.kill_via_relay, "chain": self.kill_on_chain and not remove_key},
            }
            outcomes, key_removal = await self._kill_cancels(live, remove_key)
            self._apply_cancels(outcomes, "kill", definitive_chain=True)
            failed = [o for o in outcomes if o.outcome == "failed"]
            # cancelled at the relay, but the configured on-chain cancel failed: not definitive
            relay_only = [
                o
                for o in outcomes
                if o.outcome == "cancelled"
                and self.kill_on_chain
                and not remove_key
                and o.chain not in ("cancelled", "used")
            ]
            cancels = [o.to_json() for o in outcomes]
            counts = collections.Counter(o.outcome for o in outcomes)
            problems = []
            if failed:
                problems.append(f"{len(failed)} of {len(outcomes)} quotes not cancelled: {failed[0].reason}")
            if relay_only:
                problems.append(
                    f"{len(relay_only)} of {len(outcomes)} quotes cancelled at the relay only "
                    f"(on chain {relay_only[0].chain}); run /kill again"
                )
            error = "; ".join(problems) or None
            if key_removal is not None and key_removal.get("error"):
                error = f"remove_public_key failed: {key_removal['error']}" + (f"; {error}" if error else "")
            tx_hashes = sorted({o.chain_tx_hash for o in outcomes if o.chain_tx_hash})
            if key_removal is not None and key_removal.get("tx_hash"):
                tx_hashes.append(key_removal["tx_hash"])
            outcome.update(
                ok=error is None,
                error=error,
                counts=dict(counts),
                cancels=cancels,
                tx_hashes=tx_hashes,
                tx_hash=tx_hashes[0] if tx_hashes else None,
                nonces_cancelled=[
                    o.target.nonce_b64 for o in outcomes if o.outcome in ("cancelled", "voided")
                ],
                already_used=[o.target.nonce_b64 for o in outcomes if o.outcome == "already_settled"],
                key_removal=key_removal,
            )
            self.last_kill = outcome
            detail = json.dumps(
                {"ok": outcome["ok"], "outstanding": len(live), "tx_hashes": tx_hashes, **counts},
                separators=(",", ":"),
            )
            record = OperatorAction(
                service=self.name,
                action="kill_result",
                params={
                    "tx_hash": outcome["tx_hash"],
                    "tx_hashes": tx_hashes,
                    "counts": dict(counts),
                    "nonces_cancelled": outcome["nonces_cancelled"],
                    "already_used": outcome["already_used"],
                    "failed": [{"nonce": o.target.nonce_b64, "reason": o.reason} for o in failed],
                    "key_removed": bool(key_removal and key_removal.get("tx_hash")),
                    "strategy": strategy,
                },
                actor=f"{self.name}/kill",
                remote="",
                result="ok" if outcome["ok"] else "refused",
                detail=detail if outcome["ok"] else f"{error} | {detail}",
            )
            try:
                await self.publish(OPERATOR_ACTION, record)
            except IntentsMMError as exc:
                outcome["record_error"] = f"could not publish the kill outcome: {exc}"
            if outcome["ok"]:
                log.warning("%s: emergency stop: %s", self.name, detail)
            else:
                log.error("%s: emergency stop incomplete: %s", self.name, error)
            return outcome

    async def _kill_cancels(
        self, live: list[Outstanding], remove_key: bool
    ) -> tuple[list[CancelOutcome], dict[str, Any] | None]:
        targets = [o.target() for o in live]
        if self.canceller is None:
            outcomes = [CancelOutcome(t, reason="cannot cancel: no signer key configured") for t in targets]
            key = {"error": "no signer key configured"} if remove_key else None
            return outcomes, key
        if not remove_key:
            outcomes = await self.canceller.cancel(
                targets,
                via_relay=self.kill_via_relay,
                on_chain=self.kill_on_chain,
                precheck=True,
                relay_done=set(self.relay_cancelled),
            )
            return outcomes, None
        # last resort: relay cancels first (fast), then one transaction that voids every quote
        outcomes = await self.canceller.cancel(
            targets,
            via_relay=self.kill_via_relay,
            on_chain=False,
            precheck=True,
            relay_done=set(self.relay_cancelled),
        )
        assert self.public_key is not None
        try:
            tx_hash = await self.canceller.remove_public_key(self.public_key)
        except IntentsMMError as exc:
            return outcomes, {"public_key": self.public_key, "tx_hash": None, "error": str(exc)}
        self.key_registered = False
        self.disarm_reason = "emergency stop (/kill): executor key removed; register it again to quote"
        for o in outcomes:
            if o.outcome not in ("already_settled", "expired"):
                o.outcome, o.reason = "voided", "executor key removed (remove_public_key)"
                o.chain_tx_hash = tx_hash
        return outcomes, {"public_key": self.public_key, "tx_hash": tx_hash, "error": None}

    async def _disarm_strategy(self, reason: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        action = OperatorAction(
            service="strategy-engine",
            action="disarm",
            params={"reason": reason or "emergency stop"},
            actor=f"{self.name}/kill",
            remote="",
            result="ok",
            detail="emergency stop from trade-executor /kill",
        )
        try:
            await self.publish(OPERATOR_ACTION, action)
            out["bus"] = "published"
        except IntentsMMError as exc:
            out["bus"] = f"failed: {exc}"
        hook = self.ctx.overrides.get(DISARM_STRATEGY_OVERRIDE)
        if callable(hook):
            try:
                value = cast(Callable[[], Any], hook)()
                if inspect.isawaitable(value):
                    await value
                out["local"] = "called"
            except Exception as exc:
                out["local"] = f"failed: {exc.__class__.__name__}: {exc}"
        return out

    # -- control -----------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [
            Route("POST", "/arm", self._arm, mutating=True, action="arm"),
            Route("POST", "/disarm", self._disarm, mutating=True, action="disarm"),
            Route("POST", "/kill", self._kill, mutating=True, action="kill"),
        ]

    async def _arm(self, request: web.Request) -> web.Response:
        await read_json_object(request, allow_empty=True)
        if self._key is None:
            raise HttpError(409, "cannot arm: NEAR_INTENTS_SIGNER_PRIVATE_KEY is not set", armed=False)
        registered = await self.check_key()
        if registered is None:
            raise HttpError(
                409,
                f"cannot arm: could not confirm that {self.public_key} is registered for {self.account_id} "
                f"on {self.contract_id}: {self.key_check_error}",
                armed=False,
            )
        if not registered:
            raise HttpError(
                409,
                f"cannot arm: public key {self.public_key} is not registered for {self.account_id} on "
                f"{self.contract_id}; register it with add_public_key first (runbook)",
                armed=False,
            )
        if self.salt is None:
            try:
                await self.refresh_salt()
            except IntentsMMError as exc:
                raise HttpError(409, f"cannot arm: {exc}", armed=False) from None
        if not self.ledger_ready:
            await self._load_store_ledger()
            if not self.ledger_ready:
                raise HttpError(409, f"cannot arm: {self.ledger_load_error}", armed=False)
        self.armed = True
        self.disarm_reason = None
        return json_response({"armed": True, "account_id": self.account_id, "public_key": self.public_key})

    async def _disarm(self, request: web.Request) -> web.Response:
        await read_json_object(request, allow_empty=True)
        self.armed = False
        self.disarm_reason = "disarmed by operator"
        if self.cancel_on_move:
            self._cancel_all("disarm", None)
        return json_response({"armed": False})

    async def _kill(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, allow_empty=True)
        unknown = sorted(set(body) - {"reason", "remove_public_key", "confirm"})
        if unknown:
            raise HttpError(
                400, f"unknown field(s): {', '.join(unknown)}; known: reason, remove_public_key, confirm"
            )
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise HttpError(400, "reason must be a string")
        remove_key = body.get("remove_public_key", False)
        if not isinstance(remove_key, bool):
            raise HttpError(400, "remove_public_key must be true or false")
        if remove_key:
            if self.public_key is None:
                raise HttpError(409, "cannot remove the executor key: no signer key configured")
            if body.get("confirm") != self.public_key:
                raise HttpError(
                    400,
                    "remove_public_key voids every signed quote AND stops all quoting until the key is "
                    f'registered again; to confirm, send "confirm": "{self.public_key}"',
                )
        elif "confirm" in body:
            raise HttpError(400, "confirm goes with remove_public_key: true")
        outcome = await self.kill(reason=reason[:200] if reason else None, remove_key=remove_key)
        return json_response(outcome, status=200 if outcome["ok"] else 502)

    # -- introspection -----------------------------------------------------------------------------
    def checks(self) -> dict[str, Check]:
        checks = super().checks()
        relay_ok = self.relay is not None and self.relay.connected
        if self.armed and not relay_ok:
            state = self.relay.state.value if self.relay is not None else "absent"
            checks["relay"] = Check(False, f"armed but the Solver Relay connection is {state}")
        else:
            checks["relay"] = Check(True, "" if relay_ok else "not connected (disarmed)")
        if not self.ledger_ready:
            checks["ledger"] = Check(False, self.ledger_load_error or "signed-command ledger not loaded")
        elif self.ledger.write_failing:
            checks["ledger"] = Check(False, self.ledger.last_error or "signed-command ledger write failed")
        else:
            checks["ledger"] = Check(True)
        since = self.mirror_failing_since
        failing_s = self.clock.monotonic_ns() / 1e9 - since if since is not None else 0.0
        if since is not None and failing_s >= MIRROR_UNHEALTHY_S:
            checks["ledger_mirror"] = Check(
                False,
                f"signed commands not mirrored to the store for {failing_s:.0f} s "
                f"({len(self._mirror)} waiting): {self.mirror_error}",
            )
        else:
            checks["ledger_mirror"] = Check(
                True, f"failing: {self.mirror_error}" if since is not None else ""
            )
        return checks

    def state(self) -> dict[str, Any]:
        live = list(self.outstanding.values())
        relay = self.relay.snapshot() if self.relay is not None else None
        return {
            "armed": self.armed,
            "disarm_reason": self.disarm_reason,
            "account_id": self.account_id,
            "public_key": self.public_key,
            "contract_id": self.contract_id,
            "signing_standard": self.standard,
            "deadline_buffer_ms": self.buffer_ms,
            "key_registered": self.key_registered,
            "key_check": {
                "source": self.key_source,
                "checked_ts_ns": self.key_checked_ts_ns,
                "error": self.key_check_error,
            },
            "salt": {
                "current": self.salt.hex() if self.salt is not None else None,
                "fetched_ts_ns": self.salt_fetched_ts_ns,
                "refreshes": self.salt_refreshes,
                "retries_after_invalid_salt": self.salt_retries,
                "error": self.salt_error,
            },
            "relay": {
                "state": relay["state"] if relay else "absent",
                "url": relay["url"] if relay else None,
                "connected_since_ts_ns": relay["connected_since_ts_ns"] if relay else None,
                "last_error": relay["last_error"] if relay else None,
                "auth_problem": relay["auth_problem"] if relay else None,
            },
            "counts": dict(self.counts),
            "in_flight": len(self._inflight),
            "last_results": list(self.last_results),
            "last_error": self.last_error,
            "outstanding_quotes": {
                "count": len(live),
                "latest_deadline_ns": max((o.deadline_ns for o in live), default=None),
            },
            "last_kill": self.last_kill,
            "cancels": {
                "on_move": self.cancel_on_move,
                "move_threshold_bps": str(self.cancel_move_bps),
                "on_move_on_chain": self.cancel_move_on_chain,
                "kill_paths": {"relay": self.kill_via_relay, "chain": self.kill_on_chain},
                "by_trigger": dict(self.cancel_counts),
                "by_outcome": dict(self.cancel_outcomes),
                "watched_quotes": len(self.watch),
                "cancelled_at_relay_only": len(self.relay_cancelled),
                "in_flight": len(self._cancel_tasks),
                "reaction_ms": ms_summary(self.cancel_reaction_ns),
                "last": list(self.last_cancels),
                "unwritten_rows": len(self._cancel_rows),
                "write_error": self.cancel_write_error,
            },
            "ledger": {
                "path": str(self.ledger.path),
                "ready": self.ledger_ready,
                "load_error": self.ledger_load_error,
                "known_ids": len(self.ledger),
                "loaded_from_file": self.ledger.loaded,
                "skipped_lines": self.ledger.skipped_lines,
                "appended": self.ledger.appended,
                "last_error": self.ledger.last_error,
                "mirrored_to_store": self.mirrored,
                "mirror_backlog": len(self._mirror),
                "mirror_error": self.mirror_error,
                "mirror_rejected": self.mirror_rejected,
            },
        }


def _reply_text(reply: RelayReply | None) -> str | None:
    if reply is None:
        return None
    if reply.ok:
        return reply.result if isinstance(reply.result, str) else json.dumps(reply.result)
    return (
        f"error {reply.error_code}: {reply.error_message}"
        if reply.error_code is not None
        else reply.error_message
    )
