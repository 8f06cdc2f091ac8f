"""Configuration: every environment variable, read once into one typed, frozen object.

The table :data:`VARIABLES` is the single source of truth: it drives parsing, ``check-config``
output (secrets redacted) and ``.env.example`` (a test keeps them in step). A malformed value fails
start-up with a message naming the variable; every problem is collected, not just the first.
``.env`` in the working directory is read when present; real environment variables win over it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from intents_mm.errors import ConfigError
from intents_mm.eventloop import DEFAULT_EVENT_LOOP, parse_event_loop

SERVICES: tuple[str, ...] = (
    "near-intents-ingest",
    "market-reference-ingest",
    "inventory-sync",
    "liquidity-manager",
    "history-writer",
    "strategy-engine",
    "trade-executor",
)
DEFAULT_PORTS: dict[str, int] = {name: 8081 + i for i, name in enumerate(SERVICES)}
EXCHANGES: tuple[str, ...] = ("kraken", "bitstamp", "coinbase", "binance")


def port_var(service: str) -> str:
    return service.upper().replace("-", "_") + "_PORT"


Parser = Callable[[str], Any]


@dataclass(frozen=True)
class Var:
    name: str
    parse: Parser
    default: str | None  # None = no default (optional unless required)
    doc: str
    secret: bool = False
    required_live: bool = False  # needed for live trading; check-config reports it when missing


def _str(value: str) -> str:
    return value


def _int(lo: int, hi: int) -> Parser:
    def parse(value: str) -> int:
        if not re.fullmatch(r"-?[0-9]+", value.strip()):
            raise ValueError(f"must be an integer, got {value!r}")
        number = int(value)
        if not lo <= number <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {number}")
        return number

    return parse


def _dec(lo: Decimal, hi: Decimal | None = None) -> Parser:
    def parse(value: str) -> Decimal:
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"must be a decimal number, got {value!r}") from None
        if not number.is_finite():
            raise ValueError("must be finite")
        if number < lo or (hi is not None and number > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"must be {bound}, got {number}")
        return number

    return parse


def _dec_or_off(value: str) -> Decimal:
    """A non-negative decimal; empty means 0 (off)."""
    return _dec(Decimal(0))(value) if value.strip() else Decimal(0)


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"must be true or false, got {value!r}")


def _url(*schemes: str) -> Parser:
    def parse(value: str) -> str:
        parsed = urlparse(value.strip())
        if parsed.scheme not in schemes or not parsed.netloc:
            raise ValueError(f"must be a {'/'.join(schemes)} URL, got {value!r}")
        return value.strip()

    return parse


def _url_list(*schemes: str) -> Parser:
    one = _url(*schemes)

    def parse(value: str) -> tuple[str, ...]:
        items = tuple(one(v) for v in value.split(",") if v.strip())
        if not items:
            raise ValueError("must list at least one URL")
        return items

    return parse


def _optional_url(*schemes: str) -> Parser:
    one = _url(*schemes)

    def parse(value: str) -> str | None:
        return one(value) if value.strip() else None

    return parse


def _postgres_url(value: str) -> str | None:
    if not value.strip():
        return None
    parsed = urlparse(value.strip())
    if not parsed.scheme.startswith(("postgres", "postgresql")):
        raise ValueError("must be a postgresql:// URL")
    return value.strip()


_ACCOUNT = re.compile(r"^(([a-z\d]+[-_])*[a-z\d]+\.)*([a-z\d]+[-_])*[a-z\d]+$")


def _account(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    if not 2 <= len(value) <= 64 or not _ACCOUNT.fullmatch(value):
        raise ValueError(f"is not a valid NEAR account id: {value!r}")
    return value


def _secret_key(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    from intents_mm.errors import InputError

    try:
        from intents_mm.near.keys import SigningKey

        SigningKey.from_string(value)
    except InputError as exc:
        raise ValueError(f"is not a usable ed25519 secret key ({exc})") from None
    return value


def _sources(value: str) -> tuple[str, ...]:
    items = tuple(v.strip().lower() for v in value.split(",") if v.strip())
    unknown = [v for v in items if v not in EXCHANGES]
    if unknown:
        raise ValueError(f"unknown exchange(s) {unknown}; known: {', '.join(EXCHANGES)}")
    return items


def _host(value: str) -> str:
    value = value.strip()
    if not value or " " in value:
        raise ValueError(f"must be a host name or IP address, got {value!r}")
    return value


def _host_list(value: str) -> tuple[str, ...]:
    items = tuple(v.strip().lower() for v in value.split(",") if v.strip())
    for item in items:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", item):
            raise ValueError(f"must list host names (letters, digits, dots, hyphens), got {item!r}")
    return items


def _optional_str(value: str) -> str | None:
    return value.strip() or None


D = Decimal
VARIABLES: tuple[Var, ...] = (
    # -- runbook: required runtime values and secrets
    Var(
        "NEAR_INTENTS_API_KEY",
        _optional_str,
        "",
        "Solver Relay API key (JWT from the Partner Portal)",
        secret=True,
        required_live=True,
    ),
    Var(
        "NEAR_INTENTS_ACCOUNT_ID",
        _account,
        "",
        "NEAR account that holds inventory on intents.near and signs quotes",
        required_live=True,
    ),
    Var(
        "NEAR_INTENTS_SIGNER_PRIVATE_KEY",
        _secret_key,
        "",
        "executor signing key, ed25519:<base58>; register its public key with add_public_key",
        secret=True,
        required_live=True,
    ),
    Var(
        "POSTGRES_URL",
        _postgres_url,
        "",
        "PostgreSQL URL for history; empty = embedded SQLite under ./var/",
        secret=True,
        required_live=True,
    ),
    Var(
        "STRATEGY_MAX_NOTIONAL_EURE",
        _dec(D(0)),
        "5",
        "largest quote notional in EURe (runbook first-live value 5)",
    ),
    Var("TRADING_BTC_WITHDRAW_ADDRESS", _optional_str, "", "default BTC withdrawal destination (bc1...)"),
    Var(
        "TRADING_EURE_WITHDRAW_ADDRESS",
        _optional_str,
        "",
        "default EURe withdrawal destination on Gnosis (0x...)",
    ),
    # -- bus and control plane
    Var("NATS_URL", _optional_url("nats", "tls"), "", "NATS JetStream URL; empty = in-process memory bus"),
    Var("NATS_STREAM", _str, "INTENTS_MM", "JetStream stream name"),
    Var("NATS_SUBJECT_PREFIX", _str, "imm", "prefix of every bus subject on NATS"),
    Var("NATS_MAX_AGE_S", _int(60, 365 * 86400), "604800", "stream retention by age, seconds"),
    Var("NATS_MAX_BYTES", _int(1 << 20, 1 << 40), str(1 << 30), "stream retention by size, bytes"),
    Var("CONTROL_API_HOST", _host, "127.0.0.1", "bind address of every control API"),
    Var(
        "CONTROL_API_TOKEN",
        _optional_str,
        "",
        "bearer token for mutating control calls; required off loopback",
        secret=True,
    ),
    Var(
        "CONTROL_API_ALLOWED_HOSTS",
        _host_list,
        "",
        "extra host names a control call may address in Host/Origin (loopback and IPs always pass)",
    ),
    Var(
        "CONTROL_RATE_LIMIT_PER_S",
        _dec(Decimal("0.01"), Decimal(1000)),
        "2",
        "refill rate of each costly read-only control endpoint (POST /refresh, /withdrawal-estimate)",
    ),
    Var(
        "CONTROL_RATE_LIMIT_BURST", _int(1, 1000), "5", "burst of each costly control endpoint's token bucket"
    ),
    Var("INTENTS_MM_VAR_DIR", _str, "./var", "directory for the embedded SQLite store and local state"),
    Var(
        "INTENTS_MM_EVENT_LOOP",
        parse_event_loop,
        DEFAULT_EVENT_LOOP,
        "event loop of run, run-all and simulate: uvloop (default) or asyncio",
    ),
    *(Var(port_var(s), _int(1, 65535), str(p), f"control API port of {s}") for s, p in DEFAULT_PORTS.items()),
    # -- venue endpoints (live defaults)
    Var(
        "NEAR_INTENTS_RELAY_WS_URL",
        _url("ws", "wss"),
        "wss://solver-relay-v2.chaindefuser.com/ws",
        "Solver Relay WebSocket",
    ),
    Var(
        "NEAR_INTENTS_RELAY_RPC_URL",
        _url("http", "https"),
        "https://solver-relay-v2.chaindefuser.com/rpc",
        "Solver Relay frontend JSON-RPC",
    ),
    Var(
        "NEAR_INTENTS_INSTANCE_ID",
        _optional_str,
        "",
        "guaranteed-delivery instance id for quote_status; empty = off",
    ),
    Var(
        "NEAR_RPC_URLS",
        _url_list("http", "https"),
        "https://free.rpc.fastnear.com,https://near.lava.build,https://rpc.mainnet.near.org",
        "NEAR JSON-RPC endpoints, comma separated, tried in order on failure",
    ),
    Var("NEAR_INTENTS_CONTRACT_ID", _account, "intents.near", "the Verifier contract"),
    Var(
        "NEAR_INTENTS_BRIDGE_RPC_URL",
        _url("http", "https"),
        "https://bridge.chaindefuser.com/rpc",
        "PoA bridge (Passive Deposit/Withdrawal Service) JSON-RPC",
    ),
    Var("REFERENCE_SOURCES", _sources, ",".join(EXCHANGES), "enabled BTC/EUR sources"),
    Var("KRAKEN_WS_URL", _url("ws", "wss"), "wss://ws.kraken.com/v2", "Kraken v2 WebSocket"),
    Var("KRAKEN_REST_URL", _url("http", "https"), "https://api.kraken.com", "Kraken REST base"),
    Var("BITSTAMP_WS_URL", _url("ws", "wss"), "wss://ws.bitstamp.net", "Bitstamp WebSocket"),
    Var("BITSTAMP_REST_URL", _url("http", "https"), "https://www.bitstamp.net", "Bitstamp REST base"),
    Var(
        "COINBASE_WS_URL",
        _url("ws", "wss"),
        "wss://ws-feed.exchange.coinbase.com",
        "Coinbase Exchange WebSocket",
    ),
    Var(
        "COINBASE_REST_URL",
        _url("http", "https"),
        "https://api.exchange.coinbase.com",
        "Coinbase Exchange REST",
    ),
    Var(
        "BINANCE_WS_URL",
        _url("ws", "wss"),
        "wss://stream.binance.com:9443/ws/btceur@bookTicker",
        "Binance bookTicker stream",
    ),
    Var("BINANCE_REST_URL", _url("http", "https"), "https://api.binance.com", "Binance REST base"),
    # -- pair
    Var("EURE_PER_EUR", _dec(D("0.5"), D(2)), "1", "explicit EURe/EUR rate applied to the BTC/EUR reference"),
    # -- reference price
    Var("REFERENCE_STALE_MS", _int(100, 600_000), "3000", "a source older than this is stale"),
    Var("REFERENCE_QUORUM", _int(1, 4), "2", "fresh sources needed for a price"),
    Var("REFERENCE_OUTLIER_BPS", _dec(D(1)), "50", "a source this far from the median is dropped"),
    Var("REFERENCE_JUMP_BPS", _dec(D(1)), "150", "aggregate move that counts as a jump"),
    Var("REFERENCE_JUMP_WINDOW_MS", _int(100, 600_000), "5000", "window of the jump guard"),
    Var("REFERENCE_PUBLISH_MS", _int(20, 60_000), "250", "how often the reference price is published"),
    # -- strategy (prices in bps of the reference mid)
    Var("STRATEGY_BASE_EDGE_BPS", _dec(D(0)), "20", "base edge charged on every quote"),
    Var("STRATEGY_VOL_MULTIPLIER", _dec(D(0)), "1", "volatility term = k * sigma * sqrt(relay window)"),
    Var("STRATEGY_OPTION_MULTIPLIER", _dec(D(0)), "0.4", "free-option term = k * sigma * sqrt(deadline)"),
    Var("STRATEGY_SKEW_BPS", _dec(D(0)), "30", "inventory skew at the inventory limit"),
    Var("STRATEGY_SIZE_BPS_PER_EURE", _dec(D(0)), "0.5", "size term per EURe of notional"),
    Var("STRATEGY_MIN_EDGE_BPS", _dec(D(0)), "5", "decline quotes whose total edge is below this"),
    Var("STRATEGY_PRICE_BAND_BPS", _dec(D(1)), "300", "never quote further than this from the reference"),
    Var(
        "STRATEGY_MAX_MIN_DEADLINE_MS",
        _int(1000, 3_600_000),
        "60000",
        "decline requests asking longer validity",
    ),
    Var("STRATEGY_MAX_OUTSTANDING_EURE", _dec(D(0)), "50", "total notional of live quotes at once"),
    Var("STRATEGY_MIN_BTC", _dec(D(0)), "0", "keep at least this BTC"),
    Var("STRATEGY_MAX_BTC", _dec(D(0)), "0.1", "hold at most this BTC (skew centres on [min, max])"),
    Var("STRATEGY_MIN_EURE", _dec(D(0)), "0", "keep at least this EURe"),
    Var("STRATEGY_MAX_EURE", _dec(D(0)), "100000", "hold at most this EURe"),
    Var(
        "STRATEGY_DAILY_LOSS_LIMIT_EURE",
        _dec(D(0)),
        "25",
        "pause quoting after this mark-to-market loss (flow-adjusted) in a UTC day",
    ),
    Var(
        "STRATEGY_MAX_DRAWDOWN_EURE",
        _dec(D(0)),
        "50",
        "pause quoting after this drawdown from peak mark-to-market PnL (flow-adjusted)",
    ),
    Var(
        "STRATEGY_MAX_PORTFOLIO_DROP_EURE",
        _dec_or_off,
        "0",
        "pause quoting after the portfolio value (flow-adjusted) falls this far from its peak; 0/empty = off",
    ),
    Var(
        "STRATEGY_INVENTORY_STALE_MS",
        _int(1000, 3_600_000),
        "60000",
        "inventory older than this stops quoting",
    ),
    Var(
        "STRATEGY_FILL_CONFIRM_TIMEOUT_MS",
        _int(60_000, 86_400_000),
        "600000",
        "a filled reservation no inventory snapshot confirms is released after this (logged, counted)",
    ),
    Var("STRATEGY_ALLOWED_PARTNER_IDS", _optional_str, "", "comma list of partner ids to serve; empty = all"),
    Var(
        "STRATEGY_FEE_IN_PRICE",
        _bool,
        "true",
        "price the Verifier protocol fee into the edge (how the relay nets it is undocumented)",
    ),
    Var(
        "BUS_MAX_DELIVERIES",
        _int(1, 1000),
        "10",
        "a message whose handler keeps failing is dead-lettered (bus.dead_letter) on this delivery",
    ),
    Var("EXECUTOR_DEADLINE_BUFFER_MS", _int(0, 600_000), "10000", "added to min_deadline_ms when signing"),
    Var("EXECUTOR_SIGNING_STANDARD", _str, "nep413", "nep413 (default) or raw_ed25519"),
    Var(
        "EXECUTOR_KILL_VIA_RELAY",
        _bool,
        "true",
        "POST /kill sends the cancel payloads to the relay's publish_intents (fast, free)",
    ),
    Var(
        "EXECUTOR_KILL_ON_CHAIN",
        _bool,
        "true",
        "POST /kill also executes the cancel payloads on chain (execute_intents; definitive, costs gas)",
    ),
    Var(
        "EXECUTOR_CANCEL_CHAIN_BATCH",
        _int(1, 100),
        "10",
        "cancel payloads per execute_intents transaction (stay within the 300 TGas limit)",
    ),
    Var(
        "EXECUTOR_CANCEL_ON_MOVE",
        _bool,
        "true",
        "cancel live quotes automatically on an adverse reference move, a stale reference, a jump, a disarm",
    ),
    Var(
        "EXECUTOR_CANCEL_ON_MOVE_BPS",
        _dec(Decimal("0.01"), Decimal(10_000)),
        "10",
        "cancel a live quote when the reference mid moved this far against it from its priced mid",
    ),
    Var(
        "EXECUTOR_CANCEL_ON_MOVE_ON_CHAIN",
        _bool,
        "false",
        "automatic cancels also go on chain (execute_intents); default: relay only",
    ),
    Var(
        "EXECUTOR_QUOTE_SOCKET",
        _str,
        "executor",
        "which relay connection sends quote_response: executor (its own) or ingest (the one that got "
        "the request; run-all/simulate only)",
    ),
    Var("INVENTORY_POLL_MS", _int(200, 3_600_000), "5000", "inventory-sync cadence"),
    Var("LIQUIDITY_POLL_MS", _int(200, 3_600_000), "10000", "liquidity-manager bridge polling cadence"),
    Var(
        "LIQUIDITY_RESERVATIONS_MAX_AGE_MS",
        _int(500, 3_600_000),
        "5000",
        "withdrawals are refused when strategy-engine's reservation summary is older than this",
    ),
    Var(
        "INGEST_DISCONNECT_GRACE_MS",
        _int(0, 3_600_000),
        "15000",
        "healthz fails after this long disconnected",
    ),
    Var(
        "INVENTORY_MAX_READ_FAILURES",
        _int(1, 10_000),
        "3",
        "inventory-sync /healthz fails after this many balance reads failed in a row",
    ),
    Var(
        "INGEST_RELAY_WINDOW_MS",
        _int(200, 60_000),  # above the 100 ms the strategy keeps to sign and send a quote
        "3000",
        "how long the Solver Relay waits for quote responses; sets relay_deadline_ns of a swap request",
    ),
    Var(
        "SHED_REQUEST_AGE_MS",
        _int(0, 60_000),
        "50",
        "shed (decline as shed_overload) a quote request that waited longer than this since its frame "
        "was read, in ingest, strategy or executor; 0 = only the relay window bounds the wait",
    ),
    Var(
        "INGEST_MAX_MIN_DEADLINE_MS",
        _int(1000, 86_400_000),
        "600000",
        "near-intents-ingest drops quote requests asking a longer min_deadline_ms than this",
    ),
    Var(
        "HISTORY_METRICS_MS",
        _int(200, 3_600_000),
        "5000",
        "how often history-writer publishes portfolio.metrics",
    ),
    Var(
        "REFERENCE_REST_POLL_MS",
        _int(500, 3_600_000),
        "5000",
        "how often market-reference-ingest polls each REST ticker (fallback and WebSocket sanity check)",
    ),
)
VAR_BY_NAME = {v.name: v for v in VARIABLES}


@dataclass(frozen=True)
class Config:
    """The effective configuration; ``values`` maps every variable name to its parsed value."""

    values: Mapping[str, Any] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)  # name -> "env" | ".env" | "default"

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def get(self, name: str) -> Any:
        return self.values.get(name)

    def port(self, service: str) -> int:
        port: int = self.values[port_var(service)]
        return port

    def live_problems(self) -> list[str]:
        """What is missing for live trading (not an error in simulate mode)."""
        return [
            f"{v.name} is not set ({v.doc})"
            for v in VARIABLES
            if v.required_live and not self.values.get(v.name)
        ]

    def redacted(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for var in VARIABLES:
            value = self.values.get(var.name)
            if var.secret:
                out[var.name] = "<set>" if value else "<unset>"
            elif isinstance(value, tuple):
                out[var.name] = ",".join(str(v) for v in value)
            else:
                out[var.name] = "" if value is None else str(value)
        return out

    def with_overrides(self, **overrides: Any) -> Config:
        values = dict(self.values)
        values.update(overrides)
        return Config(values=values, sources=self.sources)


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines; ``#`` comments; optional ``export``; single or double quotes stripped."""
    out: dict[str, str] = {}
    problems: list[str] = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            problems.append(f"{path}:{lineno}: expected KEY=VALUE")
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key] = value
    if problems:
        raise ConfigError(problems)
    return out


def load_config(
    environ: Mapping[str, str] | None = None,
    *,
    dotenv: Path | None = Path(".env"),
    strict_unknown: bool = True,
) -> Config:
    """Read, parse and validate every variable. Raises ConfigError listing every problem."""
    env = dict(os.environ if environ is None else environ)
    file_values: dict[str, str] = {}
    if dotenv is not None and dotenv.is_file():
        file_values = read_dotenv(dotenv)
    problems: list[str] = []
    if strict_unknown:
        for key in file_values:
            if key not in VAR_BY_NAME:
                problems.append(f"{key} in {dotenv} is not a known variable")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for var in VARIABLES:
        if var.name in env:
            raw, source = env[var.name], "env"
        elif var.name in file_values:
            raw, source = file_values[var.name], ".env"
        else:
            raw, source = var.default or "", "default"
        try:
            values[var.name] = var.parse(raw)
        except ValueError as exc:
            problems.append(f"{var.name} {exc}")
            continue
        sources[var.name] = source
    if not problems:
        problems.extend(_cross_checks(values))
    if problems:
        raise ConfigError(problems)
    return Config(values=values, sources=sources)


def _cross_checks(values: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    ports = [values[port_var(s)] for s in SERVICES]
    if len(set(ports)) != len(ports):
        problems.append("the seven *_PORT variables must be distinct")
    if values["EXECUTOR_SIGNING_STANDARD"] not in ("nep413", "raw_ed25519"):
        problems.append("EXECUTOR_SIGNING_STANDARD must be nep413 or raw_ed25519")
    if values["EXECUTOR_QUOTE_SOCKET"] not in ("executor", "ingest"):
        problems.append("EXECUTOR_QUOTE_SOCKET must be executor or ingest")
    if values["STRATEGY_MIN_BTC"] > values["STRATEGY_MAX_BTC"]:
        problems.append("STRATEGY_MIN_BTC must not exceed STRATEGY_MAX_BTC")
    if values["STRATEGY_MIN_EURE"] > values["STRATEGY_MAX_EURE"]:
        problems.append("STRATEGY_MIN_EURE must not exceed STRATEGY_MAX_EURE")
    if values["REFERENCE_QUORUM"] > len(values["REFERENCE_SOURCES"]):
        problems.append("REFERENCE_QUORUM exceeds the number of REFERENCE_SOURCES")
    host = values["CONTROL_API_HOST"]
    if not is_loopback(host) and not values["CONTROL_API_TOKEN"]:
        problems.append(f"CONTROL_API_TOKEN must be set when CONTROL_API_HOST={host} is not loopback")
    return problems


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and for a loopback IP address (127.0.0.0/8, ``::1``, bracketed or not).

    Parsed as an IP address, never by prefix: ``127.evil.example`` is a host name, not loopback.
    """
    name = host.strip().lower()
    if name == "localhost":
        return True
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def env_example() -> str:
    """The text of ``.env.example``, generated from :data:`VARIABLES`."""
    lines = [
        "# intents-mm configuration. Copy to .env and fill the secrets; every variable is optional in",
        "# `intents-mm simulate`. Generated from src/intents_mm/config.py (a test keeps them in step).",
        "",
    ]
    for var in VARIABLES:
        lines.append(f"# {var.doc}{' (secret)' if var.secret else ''}")
        lines.append(f"{var.name}={var.default or ''}")
    return "\n".join(lines) + "\n"
