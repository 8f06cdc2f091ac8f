"""Integer amounts in smallest units, and their conversion to and from human decimals (pure).

Money is never a float. Parsing rejects floats, NaN, infinities, negatives where not allowed and values
beyond u128; converting a human decimal to units that do not divide exactly requires an explicit
rounding direction, and the market maker always rounds against itself.
"""

from __future__ import annotations

import enum
import re
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation, localcontext

from intents_mm.domain.assets import I128_MAX, I128_MIN, U128_MAX, Asset
from intents_mm.errors import InputError

_DIGITS = re.compile(r"[0-9]+")
_SIGNED_DIGITS = re.compile(r"-?[0-9]+")


class Rounding(enum.Enum):
    FLOOR = "floor"  # toward minus infinity (round what we give down)
    CEIL = "ceil"  # toward plus infinity (round what we ask for up)
    EXACT = "exact"  # refuse anything that does not convert exactly


def parse_u128(value: object, *, name: str = "amount", allow_zero: bool = False) -> int:
    """A u128 given as a decimal string of digits (the wire form) or an int. No floats, no signs."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be a string of digits, not a boolean")
    if isinstance(value, int):
        units = value
    elif isinstance(value, str):
        if not _DIGITS.fullmatch(value):
            raise InputError(f"{name} must be a string of digits, got {value[:40]!r}")
        if len(value) > 39:
            raise InputError(f"{name} exceeds u128")
        units = int(value)
    elif isinstance(value, float):
        raise InputError(f"{name} must be an integer string, not a float")
    else:
        raise InputError(f"{name} must be a string of digits, got {type(value).__name__}")
    if units < 0:
        raise InputError(f"{name} must not be negative")
    if units > U128_MAX:
        raise InputError(f"{name} exceeds u128")
    if units == 0 and not allow_zero:
        raise InputError(f"{name} must be greater than zero")
    return units


def parse_i128(value: object, *, name: str = "delta") -> int:
    """A signed i128 as a decimal string (``-`` allowed, no ``+``), as in ``token_diff``."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{name} must be a signed integer string")
    if isinstance(value, str):
        if not _SIGNED_DIGITS.fullmatch(value) or len(value) > 40:
            raise InputError(f"{name} must be a signed integer string, got {value[:40]!r}")
        value = int(value)
    if not I128_MIN <= value <= I128_MAX:
        raise InputError(f"{name} is outside i128")
    return value


def to_decimal(value: object, *, name: str = "value") -> Decimal:
    """A finite Decimal from a string, int or Decimal; floats are refused (they are not exact)."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be a number, not a boolean")
    if isinstance(value, float):
        raise InputError(f"{name} must be given as a string or integer, not a float")
    if isinstance(value, Decimal):
        dec = value
    elif isinstance(value, (int, str)):
        try:
            dec = Decimal(value)
        except InvalidOperation:
            raise InputError(f"{name} is not a decimal number: {str(value)[:40]!r}") from None
    else:
        raise InputError(f"{name} must be a decimal string, got {type(value).__name__}")
    if not dec.is_finite():
        raise InputError(f"{name} must be finite")
    return dec


def parse_plain_decimal(
    value: object, *, name: str, max_int_digits: int = 16, max_frac_digits: int = 18
) -> Decimal:
    r"""An operator's non-negative decimal, strictly: ASCII digits with an optional ``.fraction``
    (``^[0-9]+(\.[0-9]+)?$``), at most ``max_int_digits`` before and ``max_frac_digits`` after the point.

    Given as a JSON string or number; its text must match, so ``5_0``, signs, spaces, exponents such as
    ``1e-400`` and non-ASCII digits (which ``Decimal`` would otherwise accept) are refused, as are
    booleans and binary floats."""
    if isinstance(value, (bool, float)) or not isinstance(value, (int, Decimal, str)):
        raise InputError(f'{name} must be a decimal string such as "5" or "0.25"')
    text = str(value)
    pattern = re.compile(rf"[0-9]{{1,{max_int_digits}}}(?:\.[0-9]{{1,{max_frac_digits}}})?")
    if not pattern.fullmatch(text):
        raise InputError(
            f"{name} must be ASCII digits with an optional fraction (at most {max_int_digits} digits before "
            f"and {max_frac_digits} after the point), got {text[:40]!r}"
        )
    return Decimal(text)


def to_units(asset: Asset, human: object, rounding: Rounding, *, name: str = "amount") -> int:
    """Human amount (e.g. ``"0.0001"`` BTC) to smallest units, rounding in the given direction."""
    dec = to_decimal(human, name=name)
    if dec < 0:
        raise InputError(f"{name} must not be negative")
    with localcontext() as ctx:
        ctx.prec = 80
        scaled = dec.scaleb(asset.decimals)
        if rounding is Rounding.EXACT:
            if scaled != scaled.to_integral_value():
                raise InputError(f"{name} {dec} has more than {asset.decimals} decimals for {asset.symbol}")
            units = int(scaled)
        else:
            mode = ROUND_FLOOR if rounding is Rounding.FLOOR else ROUND_CEILING
            units = int(scaled.to_integral_value(rounding=mode))
    if units > U128_MAX:
        raise InputError(f"{name} exceeds u128")
    return units


def from_units(asset: Asset, units: int) -> Decimal:
    """Smallest units to an exact human Decimal."""
    if isinstance(units, bool) or not isinstance(units, int):
        raise InputError("units must be an int")
    with localcontext() as ctx:
        ctx.prec = 80
        return Decimal(units).scaleb(-asset.decimals)


def format_units(asset: Asset, units: int) -> str:
    """Human string without exponent and without trailing zeros, e.g. ``0.0001 BTC`` -> ``"0.0001"``."""
    text = format(from_units(asset, units), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def mul_div_floor(a: int, b: int, c: int) -> int:
    """floor(a*b/c) for non-negative ints, exact."""
    if c <= 0:
        raise InputError("division by a non-positive number")
    return (a * b) // c


def mul_div_ceil(a: int, b: int, c: int) -> int:
    """ceil(a*b/c) for non-negative ints, exact."""
    if c <= 0:
        raise InputError("division by a non-positive number")
    return -((-a * b) // c)
