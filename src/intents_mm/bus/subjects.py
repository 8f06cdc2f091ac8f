"""Logical bus subjects, subject patterns and durable names.

A logical subject is dot-separated tokens of ``[A-Za-z0-9_-]``, e.g. ``demand.swap_request``; it carries
no namespace prefix (the NATS backend adds one). A subscription pattern may also use NATS wildcards:
``*`` matches exactly one token and ``>`` (last token only) matches one or more tokens, so ``[">"]``
means every subject. Malformed subjects, patterns and durable names raise :class:`InputError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Final

from intents_mm.errors import InputError

SWAP_REQUEST: Final = "demand.swap_request"
QUOTE_STATUS: Final = "demand.quote_status"
REFERENCE_PRICE: Final = "market.reference_price"
INVENTORY_SNAPSHOT: Final = "inventory.snapshot"
LIQUIDITY_ACTION: Final = "liquidity.action"
LIQUIDITY_STATE: Final = "liquidity.state"
TRADE_DECISION: Final = "decision.trade_decision"
EXECUTE_TRADE: Final = "cmd.execute_trade"
TRADE_RESULT: Final = "exec.trade_result"
OPERATOR_ACTION: Final = "control.operator_action"
PORTFOLIO_METRICS: Final = "portfolio.metrics"
DEAD_LETTER: Final = "bus.dead_letter"
RESERVATIONS: Final = "risk.reservations"

ALL_SUBJECTS: Final[tuple[str, ...]] = (
    SWAP_REQUEST,
    QUOTE_STATUS,
    REFERENCE_PRICE,
    INVENTORY_SNAPSHOT,
    LIQUIDITY_ACTION,
    LIQUIDITY_STATE,
    TRADE_DECISION,
    EXECUTE_TRADE,
    TRADE_RESULT,
    OPERATOR_ACTION,
    PORTFOLIO_METRICS,
    DEAD_LETTER,
)
"""Every subject history-writer persists (each has its table)."""

#: Subjects that are state broadcasts, not history: no table, the persister acks and skips them.
#: ``risk.reservations`` is the strategy's reservation summary (on change and as a 1 s heartbeat).
EPHEMERAL_SUBJECTS: Final[tuple[str, ...]] = (RESERVATIONS,)

_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_DURABLE = re.compile(r"[A-Za-z0-9_-]{1,200}")


def validate_subject(subject: str) -> str:
    """Return ``subject`` if it is a concrete logical subject (no wildcards), else raise InputError."""
    tokens = subject.split(".")
    if not subject or not all(_TOKEN.fullmatch(t) for t in tokens):
        raise InputError(f"invalid bus subject {subject!r}: want dot-separated [A-Za-z0-9_-] tokens")
    return subject


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid subscription pattern (``*`` and a final ``>`` allowed)."""
    tokens = pattern.split(".")
    for i, tok in enumerate(tokens):
        if tok == "*" or (tok == ">" and i == len(tokens) - 1) or _TOKEN.fullmatch(tok):
            continue
        raise InputError(f"invalid bus subject pattern {pattern!r}")
    return pattern


def validate_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    """Validate a subscription's patterns; at least one, duplicates removed, order kept."""
    if isinstance(patterns, str):
        raise InputError("bus subjects must be a sequence of patterns, not one string")
    out = tuple(dict.fromkeys(validate_pattern(p) for p in patterns))
    if not out:
        raise InputError("a bus subscription needs at least one subject pattern")
    return out


def validate_durable(name: str) -> str:
    """Return ``name`` if it is a usable durable consumer name (``[A-Za-z0-9_-]``, 1-200 chars)."""
    if not _DURABLE.fullmatch(name):
        raise InputError(f"invalid durable consumer name {name!r}: want 1-200 chars of [A-Za-z0-9_-]")
    return name


def validate_subscription(
    patterns: Sequence[str], durable: str, ack_wait_s: float, max_in_flight: int
) -> tuple[str, ...]:
    """Every check ``Bus.subscribe`` makes on its arguments, for both backends; returns the patterns."""
    checked = validate_patterns(patterns)
    validate_durable(durable)
    if not ack_wait_s > 0 or max_in_flight < 1:
        raise InputError("subscribe needs ack_wait_s > 0 and max_in_flight >= 1")
    return checked


def pattern_matches(pattern: str, subject: str) -> bool:
    """True when the concrete ``subject`` matches ``pattern`` under NATS wildcard rules."""
    ptoks = pattern.split(".")
    stoks = subject.split(".")
    for i, p in enumerate(ptoks):
        if p == ">":
            return len(stoks) > i
        if i >= len(stoks) or (p != "*" and p != stoks[i]):
            return False
    return len(ptoks) == len(stoks)


def matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """A predicate for "subject matches any of ``patterns``", caching answers per subject."""
    pats = tuple(patterns)
    if ">" in pats:
        return lambda _subject: True
    cache: dict[str, bool] = {}

    def matches(subject: str) -> bool:
        hit = cache.get(subject)
        if hit is None:
            hit = any(pattern_matches(p, subject) for p in pats)
            if len(cache) < 4096:
                cache[subject] = hit
        return hit

    return matches


def patterns_overlap(a: str, b: str) -> bool:
    """True when some concrete subject matches both patterns (NATS wildcard rules)."""
    at, bt = a.split("."), b.split(".")
    for i in range(max(len(at), len(bt))):
        x = at[i] if i < len(at) else None
        y = bt[i] if i < len(bt) else None
        if x == ">" or y == ">":
            # ">" needs at least one more token: the other pattern must still have one here
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if "*" not in (x, y) and x != y:
            return False
    return True


def disjoint(patterns: Sequence[str]) -> bool:
    """True when no subject matches two of ``patterns``."""
    return not any(patterns_overlap(a, b) for i, a in enumerate(patterns) for b in patterns[i + 1 :])


def part_durable(durable: str, pattern: str) -> str:
    """The durable name of ``durable``'s consumer for ``pattern`` when a subscription is split per
    pattern: ``<durable>--<pattern>`` with ``_`` → ``__``, ``.`` → ``_d``, ``*`` → ``_s``, ``>`` →
    ``_g`` (one-to-one, so two patterns never share a name). :class:`InputError` past 200 chars."""
    slug = pattern.replace("_", "__").replace(".", "_d").replace("*", "_s").replace(">", "_g")
    return validate_durable(f"{durable}--{slug}")
