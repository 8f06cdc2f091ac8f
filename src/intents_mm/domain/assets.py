"""Assets and trading pairs (pure).

An :class:`Asset` is a Verifier multi-token (``nep141:<contract>``) with its decimals and the PoA bridge
chain it comes from. A :class:`Pair` is what the market maker quotes: a base asset priced in a quote
asset, with the quote asset's explicit rate to the fiat the reference price is expressed in (EURe is
1:1 with EUR by default, but the rate is configuration, never an implicit assumption).

The registry is data: a second pair is added by configuration (:meth:`AssetRegistry.from_json`), not
by code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from intents_mm.errors import InputError

U128_MAX = (1 << 128) - 1
I128_MIN = -(1 << 127)
I128_MAX = (1 << 127) - 1


@dataclass(frozen=True, slots=True)
class Asset:
    symbol: str
    token_id: str  # Verifier multi-token id, e.g. "nep141:btc.omft.near"
    decimals: int
    chain: str  # PoA bridge chain id, e.g. "btc:mainnet"
    defuse_asset_id: str = ""  # bridge's "defuse_asset_identifier", e.g. "btc:mainnet:native"

    def __post_init__(self) -> None:
        if not self.token_id.startswith(("nep141:", "nep245:", "nep171:")):
            raise InputError(
                f"asset {self.symbol}: token id {self.token_id!r} must start with nep141:/nep245:/nep171:"
            )
        if not 0 <= self.decimals <= 38:
            raise InputError(f"asset {self.symbol}: decimals {self.decimals} out of range 0..38")

    @property
    def contract_id(self) -> str:
        """The NEAR token contract (unprefixed), as withdraw calls and the bridge use it."""
        return self.token_id.split(":", 1)[1]

    @property
    def unit(self) -> int:
        """Smallest units in one whole token."""
        unit: int = 10**self.decimals
        return unit


@dataclass(frozen=True, slots=True)
class Pair:
    base: Asset
    quote: Asset
    reference_symbol: str = "BTC/EUR"  # the reference price's pair (base in fiat)
    quote_per_fiat: Decimal = Decimal(1)  # how many quote-asset tokens one fiat unit is worth (EURe per EUR)

    @property
    def name(self) -> str:
        return f"{self.base.symbol}/{self.quote.symbol}"

    def assets(self) -> tuple[Asset, Asset]:
        return (self.base, self.quote)

    def has(self, token_id: str) -> bool:
        return token_id in (self.base.token_id, self.quote.token_id)

    def other(self, token_id: str) -> Asset:
        if token_id == self.base.token_id:
            return self.quote
        if token_id == self.quote.token_id:
            return self.base
        raise InputError(f"{token_id} is not in pair {self.name}")


BTC = Asset(
    symbol="BTC",
    token_id="nep141:btc.omft.near",
    decimals=8,
    chain="btc:mainnet",
    defuse_asset_id="btc:mainnet:native",
)
EURE = Asset(
    symbol="EURe",
    token_id="nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near",
    decimals=18,
    chain="eth:100",
    defuse_asset_id="eth:100:0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430",
)
BTC_EURE = Pair(base=BTC, quote=EURE, reference_symbol="BTC/EUR", quote_per_fiat=Decimal(1))


@dataclass(frozen=True)
class AssetRegistry:
    assets: Mapping[str, Asset] = field(default_factory=dict)  # by token id
    pairs: tuple[Pair, ...] = ()
    active_pair: Pair = BTC_EURE

    @classmethod
    def default(cls, eure_per_eur: Decimal = Decimal(1)) -> AssetRegistry:
        pair = Pair(base=BTC, quote=EURE, reference_symbol="BTC/EUR", quote_per_fiat=eure_per_eur)
        return cls(assets={BTC.token_id: BTC, EURE.token_id: EURE}, pairs=(pair,), active_pair=pair)

    def get(self, token_id: str) -> Asset:
        try:
            return self.assets[token_id]
        except KeyError:
            raise InputError(f"unknown asset {token_id!r}") from None

    def by_symbol(self, symbol: str) -> Asset:
        for asset in self.assets.values():
            if asset.symbol.lower() == symbol.lower():
                return asset
        raise InputError(f"unknown asset symbol {symbol!r}")

    def find(self, key: str) -> Asset:
        """An asset by token id, unprefixed contract id or symbol."""
        if key in self.assets:
            return self.assets[key]
        for asset in self.assets.values():
            if key in (asset.contract_id, asset.symbol) or key.lower() == asset.symbol.lower():
                return asset
        raise InputError(f"unknown asset {key!r}")

    @classmethod
    def from_json(cls, text: str, *, base: AssetRegistry | None = None) -> AssetRegistry:
        """Extend (or replace) the registry from JSON configuration.

        Shape: ``{"assets":[{"symbol","token_id","decimals","chain","defuse_asset_id"?}],
        "pairs":[{"base":"BTC","quote":"EURe","reference_symbol":"BTC/EUR","quote_per_fiat":"1"}],
        "active_pair":"BTC/EURe"}``. Assets and pairs are added to ``base`` (default registry).
        """
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"asset registry JSON is malformed: {exc.msg} at char {exc.pos}") from None
        if not isinstance(doc, dict):
            raise InputError("asset registry JSON must be an object")
        reg = base or cls.default()
        assets = dict(reg.assets)
        for item in _list(doc.get("assets", []), "assets"):
            asset = Asset(
                symbol=_str(item, "symbol"),
                token_id=_str(item, "token_id"),
                decimals=_int(item, "decimals"),
                chain=_str(item, "chain"),
                defuse_asset_id=str(item.get("defuse_asset_id", "")),
            )
            assets[asset.token_id] = asset
        tmp = cls(assets=assets, pairs=reg.pairs, active_pair=reg.active_pair)
        pairs = list(reg.pairs)
        for item in _list(doc.get("pairs", []), "pairs"):
            try:
                rate = Decimal(str(item.get("quote_per_fiat", "1")))
            except InvalidOperation:
                raise InputError("pairs[].quote_per_fiat must be a decimal number") from None
            if not rate.is_finite() or rate <= 0:
                raise InputError("pairs[].quote_per_fiat must be a positive finite number")
            pairs.append(
                Pair(
                    base=tmp.find(_str(item, "base")),
                    quote=tmp.find(_str(item, "quote")),
                    reference_symbol=_str(item, "reference_symbol"),
                    quote_per_fiat=rate,
                )
            )
        active = reg.active_pair
        if "active_pair" in doc:
            wanted = str(doc["active_pair"])
            matches = [p for p in pairs if p.name == wanted]
            if not matches:
                raise InputError(f"active_pair {wanted!r} is not one of {[p.name for p in pairs]}")
            active = matches[-1]
        return cls(assets=assets, pairs=tuple(pairs), active_pair=active)


def _list(value: object, name: str) -> Iterable[dict[str, object]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InputError(f"asset registry: {name} must be a list of objects")
    return value


def _str(item: Mapping[str, object], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(f"asset registry: {key} must be a non-empty string")
    return value


def _int(item: Mapping[str, object], key: str) -> int:
    value = item.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"asset registry: {key} must be an integer")
    return value
