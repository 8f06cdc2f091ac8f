"""The foundation's operator commands, run as a person would: the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from intents_mm.config import VARIABLES, env_example, load_config
from intents_mm.errors import ConfigError
from intents_mm.near.keys import SigningKey
from intents_mm.near.nonce import encode_versioned_nonce
from intents_mm.near.payload import build_intent_message, sign_nep413, token_diff_intent

ROOT = Path(__file__).resolve().parents[1]
RAW_VECTOR = {
    "standard": "raw_ed25519",
    "payload": (
        '{"signer_id":"74affa71ab030d400fdfa1bed033dfa6fd3ae34f92d17c046ebe368e80d53751",'
        '"verifying_contract":"intents.near","deadline":{"timestamp":1732035219},'
        '"nonce":"XVoKfmScb3G+XqH9ke/fSlJ/3xO59sNhCxhpG821BH8=","intents":[{"intent":"token_diff","diff":'
        '{"nep141:base-0x833589fcd6edb6e08f4c7c32d4f71b54bda02913.omft.near":"-1000",'
        '"nep141:eth-0xdac17f958d2ee523a2206206994597c13d831ec7.omft.near":"998"}}]}'
    ),
    "public_key": "ed25519:8rVvtHWFr8hasdQGGD5WiQBTyr4iH2ruEPPVfj491RPN",
    "signature": "ed25519:3vtbNQJHZfuV1s5DykzyjkbNLc583hnkrhTz57eDhd966iqzkor6Twgr4Loh2C195SCSEsiGfrd6KcxpjNq9ZbVj",  # noqa: E501
}


def run_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("NEAR_", "STRATEGY_", "POSTGRES"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "intents_mm", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT / "tests",  # no .env there
        timeout=60,
        check=False,
    )


def signed_quote(key: SigningKey) -> dict[str, object]:
    salt = bytes.fromhex("252812b3")
    deadline_ns = 2_280_047_743_000_000_000
    message = build_intent_message(
        "solver.near",
        deadline_ns,
        [token_diff_intent({"nep141:btc.omft.near": 1000, "nep141:gnosis-0x42.omft.near": -5 * 10**17})],
    )
    nonce = encode_versioned_nonce(salt, deadline_ns, bytes(range(15)))
    return sign_nep413(key, message, nonce).to_json_obj()


def test_verify_raw_ed25519_vector() -> None:
    out = run_cli("verify-signed-data", "-", stdin=json.dumps(RAW_VECTOR))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["valid"] is True
    assert report["hash"] == "8LKE47o44ybZQR9ozLyDnvMDTh4Ao5ipy2mJWsYByG5Q"
    assert report["signer_id"] == "74affa71ab030d400fdfa1bed033dfa6fd3ae34f92d17c046ebe368e80d53751"
    assert report["nonce"]["kind"] == "legacy"
    assert report["deadline"] == "2024-11-19T16:53:39.000Z"


def test_verify_nep413_quote_and_tampering(tmp_path: Path) -> None:
    key = SigningKey.generate()
    doc = signed_quote(key)
    path = tmp_path / "quote.json"
    path.write_text(json.dumps({"quote_id": "q", "signed_data": doc}))
    out = run_cli("verify-signed-data", str(path))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["valid"] is True
    assert report["signer_id"] == "solver.near"
    assert report["nonce"] == {
        "kind": "versioned",
        "salt": "252812b3",
        "deadline": "2042-04-02T10:35:43.000Z",
        "deadline_ns": 2_280_047_743_000_000_000,
    }
    assert report["intents"][0]["diff"]["nep141:btc.omft.near"] == "1000"

    payload = doc["payload"]
    assert isinstance(payload, dict)
    tampered = dict(doc, payload=dict(payload, message=str(payload["message"]).replace("1000", "1001")))
    out = run_cli("verify-signed-data", "-", stdin=json.dumps(tampered))
    assert out.returncode == 1
    assert json.loads(out.stdout)["valid"] is False


@pytest.mark.parametrize(
    "stdin",
    ["not json", "[]", '{"standard":"erc191"}', '{"standard":"nep413","payload":{}}'],
)
def test_verify_malformed_input_is_one_line_exit_2(stdin: str) -> None:
    out = run_cli("verify-signed-data", "-", stdin=stdin)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_keys_show_never_prints_the_secret() -> None:
    key = SigningKey.generate()
    secret = key.to_secret_string()
    env = {"NEAR_INTENTS_SIGNER_PRIVATE_KEY": secret, "NEAR_INTENTS_ACCOUNT_ID": "mm-desk.near"}
    out = run_cli("keys", "show", "--json", env=env)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["public_key"] == key.public_key.to_string()
    assert info["account_id"] == "mm-desk.near"
    assert "intents.near add_public_key" in info["register_command"]
    assert "sign-as mm-desk.near network-config mainnet" in info["register_command"]
    assert secret.split(":")[1] not in out.stdout + out.stderr


def test_keys_generate_writes_private_file(tmp_path: Path) -> None:
    target = tmp_path / "signer.env"
    out = run_cli("keys", "generate", "--out", str(target))
    assert out.returncode == 0, out.stderr
    assert target.stat().st_mode & 0o777 == 0o600
    secret = target.read_text().strip().split("=", 1)[1]
    assert SigningKey.from_string(secret).public_key.to_string() in out.stdout
    assert run_cli("keys", "generate", "--out", str(target)).returncode == 2


def test_check_config_lists_every_problem() -> None:
    env = {
        "STRATEGY_MAX_NOTIONAL_EURE": "five",
        "NEAR_INTENTS_SIGNER_PRIVATE_KEY": "ed25519:notbase58!",
        "TRADE_EXECUTOR_PORT": "99999",
    }
    out = run_cli("check-config", env=env)
    assert out.returncode == 1
    assert "STRATEGY_MAX_NOTIONAL_EURE" in out.stderr
    assert "NEAR_INTENTS_SIGNER_PRIVATE_KEY" in out.stderr
    assert "TRADE_EXECUTOR_PORT" in out.stderr
    assert "Traceback" not in out.stderr
    assert "notbase58" not in out.stderr  # never echo a secret back


def test_check_config_redacts_secrets() -> None:
    key = SigningKey.generate().to_secret_string()
    out = run_cli(
        "check-config", "--json", env={"NEAR_INTENTS_SIGNER_PRIVATE_KEY": key, "NEAR_INTENTS_API_KEY": "jwt"}
    )
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)["config"]
    assert shown["NEAR_INTENTS_SIGNER_PRIVATE_KEY"] == "<set>"
    assert shown["NEAR_INTENTS_API_KEY"] == "<set>"
    assert key not in out.stdout


def test_dotenv_is_read_and_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nSTRATEGY_MAX_NOTIONAL_EURE=7\nexport NATS_URL='nats://127.0.0.1:4222'\n")
    config = load_config({}, dotenv=dotenv)
    assert str(config["STRATEGY_MAX_NOTIONAL_EURE"]) == "7"
    assert config["NATS_URL"] == "nats://127.0.0.1:4222"
    config = load_config({"STRATEGY_MAX_NOTIONAL_EURE": "3"}, dotenv=dotenv)
    assert str(config["STRATEGY_MAX_NOTIONAL_EURE"]) == "3"
    dotenv.write_text("UNKNOWN_THING=1\n")
    with pytest.raises(ConfigError, match="UNKNOWN_THING"):
        load_config({}, dotenv=dotenv)


def test_non_loopback_bind_needs_token() -> None:
    with pytest.raises(ConfigError, match="CONTROL_API_TOKEN"):
        load_config({"CONTROL_API_HOST": "0.0.0.0"}, dotenv=None)
    assert load_config({"CONTROL_API_HOST": "0.0.0.0", "CONTROL_API_TOKEN": "t"}, dotenv=None)


def test_env_example_lists_every_variable() -> None:
    text = (ROOT / ".env.example").read_text()
    assert text == env_example()
    for var in VARIABLES:
        assert f"\n{var.name}=" in text


def test_verify_nep413_vector_a_from_the_verifier_tests() -> None:
    """Vector A signs a plain message (not an intent): the signature and hash still verify."""
    doc = {
        "standard": "nep413",
        "payload": {"message": "Hello, world!", "nonce": "A" * 43 + "=", "recipient": "intents.near"},
        "public_key": "ed25519:GGmuj19BsuQ4fwgk3rMsWyDuxEPcTttWjtdqFPfLtPX5",
        "signature": "ed25519:5YED3xqeBL4b8bbdvtD27X9DnmtGqHb2sDfHJawpPghHHoYJciRJfjzrEPLRZwVBjjdQdF4RpMTSaPTV6Jc6B9ie",  # noqa: E501
    }
    out = run_cli("verify-signed-data", "-", stdin=json.dumps(doc))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["valid"] is True
    assert report["hash"] == "AzGGZxvTRTNbjp9NX6YpgUsLeeZ8oenamuG1cqdgNV44"
    assert report["nonce"] == {"kind": "legacy"}
    assert report["signer_id"] is None and "message_error" in report
    doc["public_key"] = "ed25519:8rVvtHWFr8hasdQGGD5WiQBTyr4iH2ruEPPVfj491RPN"  # someone else's key
    assert run_cli("verify-signed-data", "-", stdin=json.dumps(doc)).returncode == 1
