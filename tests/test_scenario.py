"""Scenario files: defaults, every section, one-line errors naming the key, the shipped scenarios."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from intents_mm.domain.assets import BTC, EURE
from intents_mm.errors import InputError
from intents_mm.near.keys import SigningKey
from intents_mm.sim.scenario import (
    BUILTIN_SCENARIOS,
    FAULT_KINDS,
    VENUES,
    Fault,
    Scenario,
    builtin_scenario,
    key_from_label,
    load_scenario,
    parse_fault,
)

FULL = """
name = "everything"
description = "every section once"

[price]
start_price = 65000.5
vol_annual = 0.8
jump_rate_per_hour = 4
jump_size_bps = 25.5
tick_s = 0.2

[exchanges]
venues = ["kraken", "binance", "coinbase"]
update_interval_s = [0.05, 0.1]
heartbeat_s = 0.5

[exchanges.kraken]
half_spread_bps = [2, 3]
basis_bps = -1.5
noise_bps = 2.5

[relay]
window_ms = 1500
min_deadline_ms = 30000
envelope = "docs"
allow_anonymous = true
accept_legacy_nonces = false
early_close = false
api_keys = ["ext-key-1", "ext-key-2"]

[verifier]
fee_pips = 100
salt_rotation_s = 30
salt_grace_s = 5

[near]
block_time_ms = 1000
timeout_fault_hold_s = 2.5
contract_error_shape = "rpc_error"

[bridge]
deposit_pending_s = 0.5
deposit_credit_s = 1
withdrawal_complete_s = 2
withdrawal_visible_s = 0.25
withdrawal_status_shape = "docs"

[flow]
rate_per_s = 2.5
users = 3
median_notional_eur = 4.5
notional_sigma = 0.5
min_notional_eur = 1
max_notional_eur = 100
sell_base_share = 0.4
exact_in_share = 0.6
informed_share = 0.2
informed_horizon_ms = 3000
informed_edge_bps = 7
tolerance_bps = 80
min_deadline_ms = 45000
alt_min_deadline_ms = 20000
alt_deadline_share = 0.25
intent_ttl_ms = 30000
wait_ms = 800
max_in_flight = 8
transport = "http"
balances = { BTC = 2, EURe = "250000.5" }

[[solvers]]
spread_bps = 30.5
response_delay_ms = 100
deadline_margin_ms = 5000
max_min_deadline_ms = 120000
instance_id = "rival-a"
balances = { btc = 0.5 }

[[solvers]]

[[accounts]]
seed = "external-solver"
balances = { EURe = 1000 }

[[accounts]]
account_id = "solver.sim.near"
public_key = "ed25519:ANhDru5cP4NZd87MDDnS4CSP5NwqtdeUryEokTNYHbH3"
balances = { "nep141:btc.omft.near" = "0.001" }

[market_maker]
key_seed = "my-mm"
balances = { BTC = 0.1, EURe = 10000 }

[[faults]]
at_s = 5
kind = "exchange_outlier"
venue = "coinbase"
bps = -250
duration_s = 3

[[faults]]
at_s = 1.5
kind = "rpc_5xx"
n = 2
method = "query"
"""


def test_empty_file_is_the_default_market() -> None:
    s = Scenario.from_toml("", "empty.toml")
    assert s == Scenario(name="custom")
    assert s.price.start_price == Decimal(60000)
    assert s.exchanges.venues == VENUES
    assert s.relay.window_ms == 3000 and s.relay.envelope == "event" and not s.relay.allow_anonymous
    assert s.verifier.fee_pips == 1 and s.verifier.salt_rotation_s is None
    assert s.bridge.withdrawal_status_shape == "sdk"
    assert 3 <= s.flow.rate_per_s <= 5
    assert s.solvers == () and s.accounts == () and s.faults == ()
    # the market maker: 0.05 BTC and 5000 EURe on the implicit account of a fixed key
    assert dict(s.market_maker.balances) == {BTC.token_id: 5_000_000, EURE.token_id: 5000 * 10**18}
    assert s.market_maker.signing_key() == key_from_label("market-maker:market-maker")


def test_every_section_is_read() -> None:
    s = Scenario.from_toml(FULL, "full.toml")
    assert s.name == "everything" and s.description == "every section once"
    assert s.price.start_price == Decimal("65000.5") and s.price.vol_annual == 0.8
    assert (s.price.jump_rate_per_hour, s.price.jump_size_bps, s.price.tick_s) == (4.0, 25.5, 0.2)
    assert s.exchanges.venues == ("kraken", "binance", "coinbase")
    assert s.exchanges.update_interval_s == (0.05, 0.1) and s.exchanges.heartbeat_s == 0.5
    assert s.exchanges.per_venue["kraken"].half_spread_bps == (2.0, 3.0)
    assert s.exchanges.per_venue["kraken"].basis_bps == -1.5
    assert s.exchanges.per_venue["kraken"].noise_bps == 2.5
    assert "binance" not in s.exchanges.per_venue
    r = s.relay
    assert (r.window_ms, r.min_deadline_ms, r.envelope) == (1500, 30000, "docs")
    assert r.allow_anonymous and not r.accept_legacy_nonces and not r.early_close
    assert r.api_keys == ("ext-key-1", "ext-key-2")
    assert (s.verifier.fee_pips, s.verifier.salt_rotation_s, s.verifier.salt_grace_s) == (100, 30.0, 5.0)
    assert (s.near.block_time_ms, s.near.timeout_fault_hold_s, s.near.contract_error_shape) == (
        1000,
        2.5,
        "rpc_error",
    )
    b = s.bridge
    assert (b.deposit_pending_s, b.deposit_credit_s, b.withdrawal_complete_s) == (0.5, 1.0, 2.0)
    assert (b.withdrawal_visible_s, b.withdrawal_status_shape) == (0.25, "docs")
    f = s.flow
    assert (f.rate_per_s, f.users, f.median_notional_eur, f.notional_sigma) == (2.5, 3, Decimal("4.5"), 0.5)
    assert (f.min_notional_eur, f.max_notional_eur) == (Decimal(1), Decimal(100))
    assert (f.sell_base_share, f.exact_in_share, f.informed_share) == (0.4, 0.6, 0.2)
    assert (f.informed_horizon_ms, f.informed_edge_bps, f.tolerance_bps) == (3000, Decimal(7), Decimal(80))
    assert (f.min_deadline_ms, f.alt_min_deadline_ms, f.alt_deadline_share) == (45000, 20000, 0.25)
    assert (f.intent_ttl_ms, f.wait_ms, f.max_in_flight, f.transport) == (30000, 800, 8, "http")
    assert dict(f.balances) == {BTC.token_id: 2 * 10**8, EURE.token_id: 250000 * 10**18 + 5 * 10**17}
    assert len(s.solvers) == 2
    a = s.solvers[0]
    assert (a.spread_bps, a.response_delay_ms, a.deadline_margin_ms) == (Decimal("30.5"), 100, 5000)
    assert (a.max_min_deadline_ms, a.instance_id) == (120000, "rival-a")
    assert dict(a.balances) == {BTC.token_id: 50_000_000}
    assert s.solvers[1].spread_bps == Decimal(40)  # an empty table takes the defaults
    seeded, named = s.accounts
    assert seeded.account_id == key_from_label("account:external-solver").public_key.implicit_account_id()
    assert seeded.secret_seed == "external-solver"
    assert dict(seeded.balances) == {EURE.token_id: 1000 * 10**18}
    assert named.account_id == "solver.sim.near" and named.secret_seed is None
    assert named.public_key == "ed25519:ANhDru5cP4NZd87MDDnS4CSP5NwqtdeUryEokTNYHbH3"
    assert dict(named.balances) == {BTC.token_id: 100_000}
    assert s.market_maker.key_seed == "my-mm"
    assert dict(s.market_maker.balances) == {BTC.token_id: 10**7, EURE.token_id: 10**22}
    # faults come out sorted by time, with their kind's parameters
    assert [x.kind for x in s.faults] == ["rpc_5xx", "exchange_outlier"]
    assert s.faults[0] == Fault(kind="rpc_5xx", at_s=1.5, n=2, method="query")
    assert s.faults[1].to_json() == {
        "kind": "exchange_outlier",
        "at_s": 5.0,
        "venue": "coinbase",
        "bps": -250.0,
        "duration_s": 3.0,
    }


BAD = [
    ("[relay]\nwindow_ms = 'soon'", "[relay] window_ms: must be an integer"),
    ("[relay]\nwindow_ms = 0", "[relay] window_ms: must be an integer >= 1, got 0"),
    ("[relay]\nenvelope = 'flat'", "[relay] envelope: must be one of event, docs"),
    ("[relay]\nallow_anonymous = 'yes'", "[relay] allow_anonymous: must be true or false"),
    ("[relay]\nwindow = 5", "[relay]: unknown key 'window'"),
    ("[relay]\napi_keys = ['a', 'a']", "[relay] api_keys: must not repeat a key"),
    ("colour = 'blue'", "bad.toml: unknown key 'colour'"),
    ("relay = 5", "[relay]: must be a table"),
    ("[price]\nstart_price = -1", "[price] start_price: must be >="),
    ("[price]\nvol_annual = 'high'", "[price] vol_annual: must be a number"),
    ("[price]\nvol_annual = nan", "[price] vol_annual: must be finite"),
    ("[exchanges]\nvenues = ['kraken', 'ftx']", "[exchanges] venues: unknown venue 'ftx'"),
    ("[exchanges]\nvenues = []", "[exchanges] venues: must name at least one venue"),
    ("[exchanges.kraken]\nhalf_spread_bps = [3, 1]", "[exchanges.kraken] half_spread_bps: must satisfy"),
    ("[exchanges.kraken]\nnoise = 1", "[exchanges.kraken]: unknown key 'noise'"),
    ("[verifier]\nfee_pips = 2000000", "[verifier] fee_pips: must be an integer <= 1000000"),
    ("[verifier]\nsalt_rotation_s = 0", "[verifier] salt_rotation_s: must be positive"),
    ("[bridge]\nwithdrawal_status_shape = 'v2'", "[bridge] withdrawal_status_shape: must be one of"),
    ("[bridge]\ndeposit_pending_s = -1", "[bridge] deposit_pending_s: must be >= 0"),
    ("[near]\ncontract_error_shape = 'x'", "[near] contract_error_shape: must be one of"),
    ("[flow]\nrate_per_s = 0", "[flow] rate_per_s: must be positive"),
    ("[flow]\ninformed_share = 1.5", "[flow] informed_share: must be <= 1"),
    ("[flow]\nmin_notional_eur = 10\nmax_notional_eur = 5", "[flow] max_notional_eur: must be >="),
    ("[flow]\nbalances = { BTC = '0.000000001' }", "[flow] balances.BTC: amount"),
    ("[flow]\nbalances = { DOGE = 1 }", "[flow] balances.DOGE: unknown asset"),
    ("[flow]\nbalances = { BTC = true }", "[flow] balances.BTC: must be an amount"),
    ("[flow]\ntransport = 'pigeon'", "[flow] transport: must be one of inprocess, http"),
    ("[[solvers]]\nspread_bps = -3", "[[solvers]] #1 spread_bps: must be >= 0"),
    ("solvers = 3", "solvers: must be an array of tables"),
    ("[[accounts]]\nbalances = {}", "[[accounts]] #1: give exactly one of public_key or seed"),
    ("[[accounts]]\npublic_key = 'ed25519:zzz'", "[[accounts]] #1 public_key:"),
    ("[[accounts]]\nseed = 'a'\naccount_id = 'Bad..Id'", "[[accounts]] #1 account_id:"),
    ("[[accounts]]\nseed = 'a'\n[[accounts]]\nseed = 'a'", "is listed twice"),
    ("[market_maker]\naccount_id = '" + "0" * 64 + "'", "[market_maker] account_id: is an implicit account"),
    ("[market_maker]\nkey_seed = ''", "[market_maker] key_seed: must not be empty"),
    ("[[faults]]\nkind = 'relay_disconnect'", "[[faults]] #1 at_s: missing"),
    ("[[faults]]\nat_s = 1\nkind = 'meteor'", "[[faults]] #1 kind: must be one of"),
    ("[[faults]]\nat_s = 1", "[[faults]] #1 kind: missing"),
    ("[[faults]]\nat_s = -1\nkind = 'relay_disconnect'", "[[faults]] #1 at_s: must be >= 0"),
    ("[[faults]]\nat_s = 1\nkind = 'relay_disconnect'\nn = 2", "[[faults]] #1: unknown key 'n'"),
    ("[[faults]]\nat_s = 1\nkind = 'rpc_timeouts'\nn = 0", "[[faults]] #1 n: must be an integer >= 1"),
    ("[[faults]]\nat_s = 1\nkind = 'exchange_down'", "[[faults]] #1 venue: missing"),
    ("[[faults]]\nat_s = 1\nkind = 'exchange_down'\nvenue = 'ftx'", "[[faults]] #1 venue: must be one of"),
    ("[[faults]]\nat_s = 1\nkind = 'exchange_stale'\nvenue = 'kraken'\nduration_s = 0", "duration_s"),
    ("[[faults]]\nat_s = 1\nkind = 'price_shock'", "[[faults]] #1 bps: missing"),
    ("[[faults]]\nat_s = 1\nkind = 'price_shock'\nbps = 0", "[[faults]] #1 bps: must not be zero"),
    (
        "[exchanges]\nvenues = ['kraken', 'coinbase']\n[[faults]]\nat_s = 1\nkind = 'exchange_down'\n"
        "venue = 'binance'",
        "venue binance is not enabled",
    ),
    ("[relay\nwindow_ms = 1", "bad.toml: not valid TOML"),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[b[1][:40] for b in BAD])
def test_bad_values_are_one_line_input_errors_naming_the_key(text: str, expected: str) -> None:
    with pytest.raises(InputError) as info:
        Scenario.from_toml(text, "bad.toml")
    message = str(info.value)
    assert expected in message
    assert message.startswith("bad.toml")
    assert "\n" not in message


def test_shipped_default_is_moderate_flow_two_competitors_no_faults() -> None:
    s = load_scenario()
    assert s == builtin_scenario("default") == load_scenario("default")
    assert s.name == "default"
    assert 3 <= s.flow.rate_per_s <= 5
    assert len(s.solvers) == 2 and s.faults == ()
    assert s.exchanges.venues == VENUES


def test_shipped_fault_drill_has_each_kind_once() -> None:
    s = builtin_scenario("faults")
    assert sorted(f.kind for f in s.faults) == sorted(FAULT_KINDS)
    times = [f.at_s or 0.0 for f in s.faults]
    assert times == sorted(times) and all(f.at_s is not None and f.at_s > 0 for f in s.faults)
    assert len(s.solvers) == 2


def test_shipped_files_are_the_package_data(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1] / "src" / "intents_mm" / "sim" / "scenarios"
    assert sorted(p.stem for p in root.glob("*.toml")) == sorted(BUILTIN_SCENARIOS)
    for name in BUILTIN_SCENARIOS:
        copy = tmp_path / f"copy-{name}.toml"
        copy.write_text((root / f"{name}.toml").read_text(encoding="utf-8"), encoding="utf-8")
        assert load_scenario(copy) == builtin_scenario(name)


def test_load_from_path_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\n[flow]\nrate_per_s = 1\n', encoding="utf-8")
    assert load_scenario(path).name == "mine"
    assert load_scenario(str(path)).flow.rate_per_s == 1.0
    with pytest.raises(InputError, match=r"no such file \(built-in scenarios: calm, default, .*, faults\)"):
        load_scenario(tmp_path / "absent.toml")
    path.write_text("[flow]\nrate_per_s = 'fast'\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"^mine\.toml: \[flow\] rate_per_s: must be a number"):
        load_scenario(path)
    with pytest.raises(InputError, match="unknown built-in scenario"):
        builtin_scenario("chaos")


def test_on_demand_faults_parse_like_scheduled_ones() -> None:
    fault = parse_fault(
        {"kind": "exchange_outlier", "venue": "kraken", "bps": Decimal(200)}, "fault", scheduled=False
    )
    assert fault == Fault(kind="exchange_outlier", venue="kraken", bps=200.0, duration_s=10.0)
    assert parse_fault({"kind": "relay_error_replies"}, "fault", scheduled=False).to_json() == {
        "kind": "relay_error_replies",
        "n": 1,
        "message": "relay unavailable",
    }
    with pytest.raises(InputError, match="fault: unknown key 'at_s'"):
        parse_fault({"kind": "relay_disconnect", "at_s": 3}, "fault", scheduled=False)
    with pytest.raises(InputError, match="fault: must be a table"):
        parse_fault(["relay_disconnect"], "fault", scheduled=False)


def test_with_allow_anonymous_keeps_everything_else() -> None:
    s = Scenario.from_toml(FULL)
    t = Scenario.from_toml("[relay]\nallow_anonymous = false").with_allow_anonymous()
    assert t.relay.allow_anonymous
    assert s.with_allow_anonymous(False).relay.allow_anonymous is False
    assert s.with_allow_anonymous(False).flow == s.flow


def test_named_market_maker_account_and_key_seed() -> None:
    s = Scenario.from_toml('[market_maker]\naccount_id = "mm.sim.near"\nkey_seed = "x"\n')
    assert s.market_maker.account_id == "mm.sim.near"
    assert isinstance(s.market_maker.signing_key(), SigningKey)
    assert s.market_maker.signing_key() != Scenario().market_maker.signing_key()
