from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from intents_mm.domain.amounts import (
    Rounding,
    format_units,
    from_units,
    mul_div_ceil,
    mul_div_floor,
    parse_i128,
    parse_u128,
    to_decimal,
    to_units,
)
from intents_mm.domain.assets import BTC, EURE, U128_MAX, AssetRegistry
from intents_mm.errors import InputError


def test_active_pair_assets_are_exact() -> None:
    reg = AssetRegistry.default()
    assert reg.active_pair.base.token_id == "nep141:btc.omft.near"
    assert reg.active_pair.base.decimals == 8
    assert reg.active_pair.base.chain == "btc:mainnet"
    assert reg.active_pair.quote.token_id == (
        "nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"
    )
    assert reg.active_pair.quote.decimals == 18
    assert reg.active_pair.quote.chain == "eth:100"
    assert reg.active_pair.quote_per_fiat == Decimal(1)
    assert EURE.contract_id == "gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near"


def test_second_pair_by_configuration() -> None:
    reg = AssetRegistry.from_json(
        '{"assets":[{"symbol":"USDC","token_id":"nep141:usdc.omft.near","decimals":6,"chain":"eth:1"}],'
        '"pairs":[{"base":"BTC","quote":"USDC","reference_symbol":"BTC/USD","quote_per_fiat":"1.0001"}],'
        '"active_pair":"BTC/USDC"}'
    )
    assert reg.active_pair.name == "BTC/USDC"
    assert reg.active_pair.quote_per_fiat == Decimal("1.0001")
    assert len(reg.pairs) == 2
    assert reg.find("usdc.omft.near").decimals == 6
    with pytest.raises(InputError, match="active_pair"):
        AssetRegistry.from_json('{"active_pair":"ETH/EURe"}')
    with pytest.raises(InputError, match="malformed"):
        AssetRegistry.from_json("{not json")


def test_to_units_rounds_in_the_requested_direction() -> None:
    assert to_units(BTC, "0.000000015", Rounding.FLOOR) == 1
    assert to_units(BTC, "0.000000015", Rounding.CEIL) == 2
    assert to_units(BTC, "1", Rounding.EXACT) == 100_000_000
    assert to_units(EURE, "5", Rounding.EXACT) == 5 * 10**18
    with pytest.raises(InputError, match="more than 8 decimals"):
        to_units(BTC, "0.000000015", Rounding.EXACT)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, "not a float"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        ("-1", "negative"),
        ("abc", "not a decimal"),
        (True, "boolean"),
    ],
)
def test_to_units_rejects_bad_values(value: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        to_units(BTC, value, Rounding.FLOOR)


def test_beyond_u128_rejected() -> None:
    with pytest.raises(InputError, match="u128"):
        to_units(EURE, Decimal(f"{U128_MAX + 1}E-18"), Rounding.EXACT)
    with pytest.raises(InputError, match="u128"):
        parse_u128(str(U128_MAX + 1))
    assert parse_u128(str(U128_MAX)) == U128_MAX


@pytest.mark.parametrize("bad", ["", "1.5", "+1", "-1", " 1", "1e5", "0x10", 1.0, None, "9" * 40])
def test_parse_u128_rejects(bad: object) -> None:
    with pytest.raises(InputError):
        parse_u128(bad)


def test_parse_u128_zero_needs_permission() -> None:
    with pytest.raises(InputError, match="greater than zero"):
        parse_u128("0")
    assert parse_u128("0", allow_zero=True) == 0


def test_parse_i128() -> None:
    assert parse_i128("-95000000000000000000") == -95 * 10**18
    assert parse_i128("100000") == 100000
    for bad in ["+1", "1.0", "", str(2**127), "--1"]:
        with pytest.raises(InputError):
            parse_i128(bad)


def test_format_units() -> None:
    assert format_units(BTC, 10_000) == "0.0001"
    assert format_units(BTC, 0) == "0"
    assert format_units(EURE, 5 * 10**18) == "5"
    assert to_decimal("1.50") == Decimal("1.50")


def test_mul_div() -> None:
    assert mul_div_floor(7, 3, 2) == 10
    assert mul_div_ceil(7, 3, 2) == 11
    assert mul_div_ceil(6, 3, 2) == 9
    with pytest.raises(InputError):
        mul_div_floor(1, 1, 0)


@given(st.integers(min_value=0, max_value=U128_MAX))
def test_units_round_trip_exact(units: int) -> None:
    assert to_units(EURE, from_units(EURE, units), Rounding.EXACT) == units
    assert to_units(BTC, format_units(BTC, units), Rounding.EXACT) == units


@given(st.decimals(min_value=0, max_value=10**12, allow_nan=False, allow_infinity=False, places=12))
def test_rounding_brackets_the_exact_value(human: Decimal) -> None:
    lo = to_units(BTC, human, Rounding.FLOOR)
    hi = to_units(BTC, human, Rounding.CEIL)
    assert from_units(BTC, lo) <= human <= from_units(BTC, hi)
    assert hi - lo in (0, 1)
