"""Column types that keep money exact on both PostgreSQL and SQLite.

- :class:`Amount`: Python ``int`` in and out (never float); NUMERIC(39,0) on PostgreSQL, TEXT on SQLite.
  Holds every u128 and i128 value (any integer of at most 39 digits).
- :class:`Price`: ``Decimal`` in and out; NUMERIC(38,18) on PostgreSQL, TEXT on SQLite. Values are
  rounded half-even to 18 decimal places on both engines, and must be finite with fewer than 20
  integer digits.
- :class:`UtcDateTime`: timezone-aware UTC ``datetime`` in and out on both engines (SQLite stores
  naive UTC text).

A value that does not fit raises :class:`InputError` at bind time (SQLAlchemy wraps it in a
``StatementError``, which the store reports as a rejected write, never as an outage).
"""

from __future__ import annotations

import datetime as dt
import decimal
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

from intents_mm.errors import InputError

AMOUNT_ABS_LIMIT: Final = 10**39
PRICE_ABS_LIMIT: Final = Decimal(10) ** 20
_PRICE_QUANTUM: Final = Decimal(1).scaleb(-18)
_PRICE_CONTEXT: Final = decimal.Context(prec=80, rounding=decimal.ROUND_HALF_EVEN)


def ns_to_datetime(ts_ns: int) -> dt.datetime:
    """Nanoseconds since the epoch → aware UTC datetime (truncated to microseconds, exact arithmetic)."""
    seconds, rem_ns = divmod(ts_ns, 1_000_000_000)
    return dt.datetime.fromtimestamp(seconds, dt.UTC) + dt.timedelta(microseconds=rem_ns // 1000)


def datetime_to_ns(value: dt.datetime) -> int:
    """Aware datetime → nanoseconds since the epoch (exact arithmetic)."""
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


class Amount(sa.types.TypeDecorator[int]):
    """An integer amount in the asset's smallest unit; exact on both engines."""

    impl = sa.Numeric(39, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.Text())
        return dialect.type_descriptor(sa.Numeric(39, 0, asdecimal=True))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if type(value) is not int:
            raise InputError(f"amount must be an int, got {type(value).__name__}")
        if abs(value) >= AMOUNT_ABS_LIMIT:
            raise InputError(f"amount {value} has more than 39 digits")
        if dialect.name == "sqlite":
            return str(value)
        return Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        if isinstance(value, Decimal):
            return int(value)
        return int(str(value))


class Price(sa.types.TypeDecorator[Decimal]):
    """A decimal price or EUR figure with 18 decimal places."""

    impl = sa.Numeric(38, 18)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.Text())
        return dialect.type_descriptor(sa.Numeric(38, 18, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise InputError(f"price must be a Decimal, got {type(value).__name__}")
        if not value.is_finite() or abs(value) >= PRICE_ABS_LIMIT:
            raise InputError(f"price {value} is not finite or has 20 or more integer digits")
        quantized = value.quantize(_PRICE_QUANTUM, context=_PRICE_CONTEXT)
        if dialect.name == "sqlite":
            return str(quantized)
        return quantized

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, Decimal):
            return value
        return Decimal(str(value))


class UtcDateTime(sa.types.TypeDecorator[dt.datetime]):
    """``TIMESTAMP WITH TIME ZONE``; aware UTC datetimes in and out on both engines."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise InputError("timestamps must be timezone-aware")
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise InputError(f"unexpected timestamp value {value!r}")
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)
