"""The ``intents-mm`` command line: the operator's entry point and the composition root's front door.

Every command reports bad input as one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from intents_mm.errors import ConfigError, IntentsMMError

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2

REGISTER_COMMAND = (
    "near contract call-function as-transaction \\\n"
    "  {contract} add_public_key json-args '{{\n"
    '    "public_key": "{public_key}"\n'
    "  }}' prepaid-gas '100.0 Tgas' attached-deposit '1 yoctoNEAR' \\\n"
    "  sign-as {account} network-config mainnet sign-with-keychain send"
)


def _err(message: str) -> None:
    print(f"intents-mm: {message}", file=sys.stderr)


def _load_config() -> Any:
    from intents_mm.config import load_config

    return load_config()


# --------------------------------------------------------------------------- verify-signed-data
def cmd_verify_signed_data(args: argparse.Namespace) -> int:
    from intents_mm.near.payload import parse_multipayload

    raw = sys.stdin.read() if args.file == "-" else _read_file(args.file)
    report = verify_signed_data(raw, parse_multipayload)
    print(json.dumps(report, indent=None if args.compact else 2))
    return EXIT_OK if report["valid"] else EXIT_INVALID


def _read_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IntentsMMError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IntentsMMError(f"{path}: cannot read ({exc.__class__.__name__})") from None


def verify_signed_data(raw: str, parse: Callable[[object], Any]) -> dict[str, Any]:
    """Parse a signed MultiPayload (or an object carrying one under ``signed_data``) and describe it."""
    from intents_mm.errors import InputError
    from intents_mm.near.nonce import LegacyNonce, decode_nonce
    from intents_mm.near.timefmt import format_deadline

    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"input is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if isinstance(doc, dict) and "params" in doc and isinstance(doc["params"], list) and doc["params"]:
        doc = doc["params"][0]  # a whole quote_response / publish_intent frame
    if isinstance(doc, dict) and "signed_data" in doc:
        doc = doc["signed_data"]
    payload = parse(doc)
    report: dict[str, Any] = {
        "valid": payload.verify(),
        "standard": payload.standard,
        "hash": payload.hash_b58(),
        "public_key": payload.public_key.to_string(),
        "recipient": payload.recipient,
    }
    nonce = decode_nonce(payload.nonce)
    if isinstance(nonce, LegacyNonce):
        report["nonce"] = {"kind": "legacy"}
    else:
        report["nonce"] = {
            "kind": "versioned",
            "salt": nonce.salt.hex(),
            "deadline": format_deadline(nonce.deadline_ns),
            "deadline_ns": nonce.deadline_ns,
        }
    try:
        report["signer_id"] = payload.signer_id
        report["deadline"] = format_deadline(payload.deadline_ns)
        report["intents"] = payload.intents
    except InputError as exc:
        report.setdefault("signer_id", None)
        report.setdefault("deadline", None)
        report.setdefault("intents", None)
        report["message_error"] = str(exc)
    return report


# --------------------------------------------------------------------------- keys
def cmd_keys_show(args: argparse.Namespace) -> int:
    from intents_mm.near.keys import SigningKey

    config = _load_config()
    secret = config["NEAR_INTENTS_SIGNER_PRIVATE_KEY"]
    if not secret:
        raise IntentsMMError(
            "NEAR_INTENTS_SIGNER_PRIVATE_KEY is not set (intents-mm keys generate makes one)"
        )
    key = SigningKey.from_string(secret)
    public = key.public_key
    account = config["NEAR_INTENTS_ACCOUNT_ID"] or public.implicit_account_id()
    info = {
        "account_id": account,
        "account_kind": "named" if config["NEAR_INTENTS_ACCOUNT_ID"] else "implicit (derived from the key)",
        "public_key": public.to_string(),
        "implicit_account_id": public.implicit_account_id(),
        "register_command": REGISTER_COMMAND.format(
            contract=config["NEAR_INTENTS_CONTRACT_ID"], public_key=public.to_string(), account=account
        ),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(f"executor account : {info['account_id']} ({info['account_kind']})")
    print(f"public key       : {info['public_key']}")
    print(f"implicit account : {info['implicit_account_id']}")
    print()
    if config["NEAR_INTENTS_ACCOUNT_ID"]:
        print("Register the key on the Verifier from the named account before the first live attempt:")
        print()
        print(info["register_command"])
    else:
        print("An implicit account owns its own key on the Verifier: no registration needed.")
    return EXIT_OK


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from intents_mm.near.keys import SigningKey

    key = SigningKey.generate()
    line = f"NEAR_INTENTS_SIGNER_PRIVATE_KEY={key.to_secret_string()}\n"
    if args.out:
        out = Path(args.out)
        if out.exists() and not args.force:
            raise IntentsMMError(f"{out} exists; pass --force to overwrite")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(line)
        print(f"secret key written to {out} (mode 600)")
    else:
        print("# keep this secret; put it in .env", file=sys.stderr)
        sys.stdout.write(line)
    print(f"public key       : {key.public_key.to_string()}", file=sys.stderr if not args.out else sys.stdout)
    print(
        f"implicit account : {key.public_key.implicit_account_id()}",
        file=sys.stderr if not args.out else sys.stdout,
    )
    return EXIT_OK


# --------------------------------------------------------------------------- check-config
def cmd_check_config(args: argparse.Namespace) -> int:
    from intents_mm.config import load_config

    try:
        config = load_config()
    except ConfigError as exc:
        print("configuration is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_INVALID
    shown = config.redacted()
    warnings = config.live_problems()
    if args.json:
        print(
            json.dumps(
                {"config": shown, "sources": dict(config.sources), "live_warnings": warnings}, indent=2
            )
        )
        return EXIT_OK
    width = max(len(k) for k in shown)
    for name, value in shown.items():
        print(f"{name:<{width}}  {value}  [{config.sources.get(name, '')}]")
    for warning in warnings:
        print(f"warning: {warning} (needed for live trading, not for simulate)", file=sys.stderr)
    return EXIT_OK


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="intents-mm", description="Market maker for NEAR Intents (BTC/EURe)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("verify-signed-data", help="verify a signed MultiPayload (nep413 or raw_ed25519)")
    p.add_argument("file", help="JSON file, or - for standard input")
    p.add_argument("--compact", action="store_true", help="one-line JSON")
    p.set_defaults(func=cmd_verify_signed_data)

    keys = sub.add_parser("keys", help="executor key: show or generate")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    keys_sub.required = True
    p = keys_sub.add_parser("show", help="executor account, public key and the registration command")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_show)
    p = keys_sub.add_parser("generate", help="make a new ed25519 keypair for a fresh executor")
    p.add_argument("--out", help="write NEAR_INTENTS_SIGNER_PRIVATE_KEY=... to this file (mode 600)")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(func=cmd_keys_generate)

    p = sub.add_parser("check-config", help="print the effective configuration (secrets redacted)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check_config)

    from intents_mm import commands

    commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print("configuration is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_INVALID
    except IntentsMMError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
