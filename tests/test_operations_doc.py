"""docs/operations.md is true: every command in it runs, against a live ``intents-mm simulate``.

The test parses every fenced ``bash`` block of ``docs/operations.md`` into commands (backslash
continuations and multi-line quotes joined) and classifies each one:

- **not runnable here**: listed in :data:`NOT_RUNNABLE` by prefix with a reason; its block must start
  with ``# not runnable here: <the same reason>`` (docker compose, kubectl, the ``near`` CLI, live
  endpoints, the NATS CLI);
- **the fixture**: ``make simulate``; the test runs that target's recipe from the ``Makefile`` (with a
  PostgreSQL history store and free control ports) and runs every other command against it;
- **a tail** (``watch`` without ``--once``/``--duration``): run for a few seconds, then Ctrl-C, exit 0;
- **everything else** is run with ``bash -o pipefail -c`` and must exit 0. A plain ``curl`` must answer
  200 with JSON holding the key its route promises (:data:`EXPECTED_KEY`); a ``| jq`` pipeline must print
  JSON that is not just ``null``.

A command that is neither run nor listed cannot exist: anything not listed is run, and fails if it cannot
run here. A listed prefix that no command uses fails too, so the lists stay honest.

Substitutions (the commands are otherwise run exactly as written):

- ``127.0.0.1:808N`` -> the port the test's simulation bound for that runbook service. The runbook ports
  may be busy on a development machine (another simulation), so the test always binds free ports and
  rewrites the URLs; ``*_PORT`` variables in the commands' environment point ``watch`` at the same ports.
- ``0xYourGnosisAddress`` -> a valid Gnosis address; ``bc1YourBitcoinAddress`` -> a valid bech32 address.
- ``<near-burn-tx-hash>`` -> the NEAR transaction hash of a real burn of that asset made earlier in the
  doc (the ``/withdraw`` of the same ``asset_id`` against the simulated chain).
- ``$POSTGRES_URL`` is the simulation's database; ``$CONTROL_API_TOKEN`` is set in the commands'
  environment while the simulation has no token configured, so the token form is accepted there as on
  any loopback deployment; ``test_token_form_is_what_a_token_protected_service_needs`` checks the same
  commands against a strategy-engine that does require the token.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from intents_mm.config import DEFAULT_PORTS, SERVICES, port_var

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "operations.md"
BIN = Path(sys.executable).parent

COMMAND_LANGS = frozenset({"bash", "sh", "shell"})
OTHER_LANGS = frozenset({"json", "text"})
MARKER = "# not runnable here: "

LIVE = "it connects to the live NEAR Intents and exchange endpoints"
#: Commands that cannot run on a development machine: prefix -> the reason the doc states.
UNTRACK = (
    "needs a burn tracked from outside the service, and this doc's burns are its own /withdraws "
    "(tests/test_liquidity_manager.py runs these against the simulated venue)"
)
NOT_RUNNABLE: dict[str, str] = {
    "near contract call-function": "needs the near CLI and the named mainnet account's keychain",
    "docker compose": "no container engine on this machine",
    "kubectl": "no Kubernetes cluster on this machine",
    "intents-mm run-all": LIVE,
    "intents-mm run ": LIVE,
    "nats ": "no NATS CLI on this machine (simulate's bus is in-process)",
    "curl -s -X DELETE http://127.0.0.1:8084/track-withdrawal": UNTRACK,
    "curl -s -X POST http://127.0.0.1:8084/untrack-withdrawal": UNTRACK,
}
FIXTURE = "make simulate"
TOOLS = ("bash", "curl", "jq", "psql", "grep")  # what the doc's runnable commands use besides intents-mm
TAIL_SECONDS = 3.0
COMMAND_TIMEOUT_S = 30.0
WARMUP_TIMEOUT_S = 60.0

GNOSIS_ADDRESS = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # EIP-55 test vector
BTC_ADDRESS = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
NAMED_ACCOUNT = "mm-operator.near"

#: The key a 200 JSON answer of each route must hold (``/refresh`` differs per service).
EXPECTED_KEY: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "checks",
    ("GET", "/state"): "service",
    ("GET", "/portfolio-metrics"): "trade_pnl_eure",
    ("GET", "/limits"): "limits",
    ("PUT", "/limits"): "limits",
    ("POST", "/arm"): "armed",
    ("POST", "/disarm"): "armed",
    ("POST", "/kill"): "executor_disarmed",
    ("POST", "/withdrawal-estimate"): "receive_amount",
    ("POST", "/freeze-withdrawals"): "withdrawals_frozen",
    ("POST", "/withdraw"): "near_tx_hash",
    ("POST", "/track-withdrawal"): "near_tx_hash",
}
REFRESH_KEY = {
    "market-reference-ingest": "reference",
    "inventory-sync": "credited",
    "liquidity-manager": "deposit_addresses",
}
#: What some commands must print (prefix of the normalised command -> regular expression).
EXPECTED_OUTPUT: dict[str, str] = {
    "intents-mm keys generate": r"NEAR_INTENTS_SIGNER_PRIVATE_KEY=ed25519:",
    "intents-mm keys show": r"add_public_key",
    "intents-mm check-config": r"STRATEGY_MAX_NOTIONAL_EURE\s+5",
    "intents-mm migrate": r"up to date|applied",
    "python3 scripts/ops/watch_live_mm.py --once": r"intents-mm watch",
    "intents-mm watch --once --json": r'"event"',
    "psql ": r"\(\d+ rows?\)",
}

#: The runbook's own commands (operator-runbook.md), which the doc must carry exactly as written.
RUNBOOK_COMMANDS: tuple[str, ...] = (
    "curl -s http://127.0.0.1:8081/healthz",
    "curl -s http://127.0.0.1:8081/state",
    "curl -s http://127.0.0.1:8085/portfolio-metrics",
    "curl -s http://127.0.0.1:8086/state",
    "curl -s http://127.0.0.1:8087/state",
    "python3 scripts/ops/watch_live_mm.py --once",
    "python3 scripts/ops/watch_live_mm.py --backfill 3",
    "curl -s -X POST http://127.0.0.1:8082/refresh",
    "curl -s -X POST http://127.0.0.1:8083/refresh",
    "curl -s -X POST http://127.0.0.1:8084/refresh",
    "curl -s -X POST http://127.0.0.1:8084/withdrawal-estimate \\\n"
    "  -H 'content-type: application/json' \\\n"
    '  -d \'{"asset_id":"nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near",'
    '"amount":"5000000000000000000","destination_address":"0xYourGnosisAddress"}\'',
    "curl -s -X POST http://127.0.0.1:8084/freeze-withdrawals \\\n"
    "  -H 'content-type: application/json' \\\n"
    "  -d '{\"frozen\":false}'",
    "curl -s -X POST http://127.0.0.1:8084/withdraw \\\n"
    "  -H 'content-type: application/json' \\\n"
    '  -d \'{"asset_id":"nep141:gnosis-0x420ca0f9b9b604ce0fd9c18ef134c705e5fa3430.omft.near",'
    '"amount":"5000000000000000000","destination_address":"0xYourGnosisAddress"}\'',
    "curl -s -X POST http://127.0.0.1:8086/arm",
    "curl -s -X POST http://127.0.0.1:8086/disarm",
    "curl -s -X PUT http://127.0.0.1:8086/limits \\\n"
    "  -H 'content-type: application/json' \\\n"
    "  -d '{\"max_notional_eure\":5}'",
    "curl -s -X POST http://127.0.0.1:8087/arm",
    "curl -s -X POST http://127.0.0.1:8087/disarm",
    "curl -s -X POST http://127.0.0.1:8084/track-withdrawal \\\n"
    "  -H 'content-type: application/json' \\\n"
    '  -d \'{"withdrawal_hash":"<near-burn-tx-hash>","asset_id":"nep141:btc.omft.near",'
    '"chain":"btc:mainnet","amount":"1000"}\'',
    "near contract call-function as-transaction \\\n"
    "  intents.near add_public_key json-args '{\n"
    '    "public_key": "ed25519:<executor-public-key>"\n'
    "  }' prepaid-gas '100.0 Tgas' attached-deposit '1 yoctoNEAR' \\\n"
    "  sign-as <ACCOUNT_ID> network-config mainnet sign-with-keychain send",
    "cp .env.example .env",
    "docker compose up -d --build",
)

PORT_URL = re.compile(r"\b(127\.0\.0\.1|localhost):(80[0-9]{2})\b")
PLACEHOLDER = re.compile(r"<[A-Za-z][A-Za-z0-9_-]*>|\b0xYour\w*|\bbc1Your\w*")
SHELL_OPERATORS = frozenset({"|", "||", "&&", ";", "&", ">", ">>", "<"})
SERVICE_OF_PORT = {port: name for name, port in DEFAULT_PORTS.items()}


# ----------------------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # line of the opening fence
    body: tuple[str, ...]


@dataclass(frozen=True)
class DocCommand:
    text: str  # as written (continuation lines kept)
    line: int
    not_runnable: str | None  # the reason of its block's "# not runnable here:" marker

    @property
    def normalized(self) -> str:
        return normalize(self.text)


def normalize(text: str) -> str:
    return " ".join(text.replace("\\\n", " ").split())


def fenced_blocks(markdown: str) -> list[Block]:
    """Every fenced code block; an unclosed fence is an error."""
    blocks: list[Block] = []
    lang: str | None = None
    start = 0
    body: list[str] = []
    for no, raw in enumerate(markdown.splitlines(), 1):
        fence = re.match(r"^\s*```(.*)$", raw)
        if lang is None:
            if fence:
                lang, start, body = fence.group(1).strip(), no, []
        elif fence and not fence.group(1).strip():
            blocks.append(Block(lang, start, tuple(body)))
            lang = None
        else:
            body.append(raw)
    if lang is not None:
        raise AssertionError(f"docs/operations.md:{start}: unclosed code fence")
    return blocks


def _complete(text: str) -> bool:
    if text.endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:  # an open quote: the command goes on on the next line
        return False
    return True


def commands_of(block: Block) -> list[DocCommand]:
    """The commands of one shell block; a first line ``# not runnable here: <reason>`` marks them all."""
    marker: str | None = None
    commands: list[DocCommand] = []
    buf: list[str] = []
    start = 0
    first = True
    for offset, raw in enumerate(block.body):
        no = block.line + 1 + offset
        line = raw.rstrip()
        if not buf:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                if stripped.startswith(MARKER):
                    assert first, f"docs/operations.md:{no}: the not-runnable marker must open its block"
                    marker = stripped[len(MARKER) :].strip()
                first = False
                continue
            first = False
            start = no
        buf.append(line)
        joined = "\n".join(buf)
        if _complete(joined):
            commands.append(DocCommand(joined, start, marker))
            buf = []
    assert not buf, f"docs/operations.md:{start}: unterminated command"
    return commands


def doc_commands(markdown: str) -> list[DocCommand]:
    out: list[DocCommand] = []
    for block in fenced_blocks(markdown):
        if block.lang in COMMAND_LANGS:
            out.extend(commands_of(block))
        else:
            assert block.lang in OTHER_LANGS, (
                f"docs/operations.md:{block.line}: code block language {block.lang!r}: use bash for commands "
                f"(they are run) or one of {sorted(OTHER_LANGS)} for output"
            )
    return out


def not_runnable_reason(command: DocCommand) -> str | None:
    for prefix, reason in NOT_RUNNABLE.items():
        if command.normalized.startswith(prefix):
            return reason
    return None


def is_tail(command: DocCommand) -> bool:
    words = command.normalized.split()
    watch = words[:2] == ["python3", "scripts/ops/watch_live_mm.py"] or words[:2] == ["intents-mm", "watch"]
    return watch and "--once" not in words and "--duration" not in words


def shell_tokens(text: str) -> list[str]:
    lexer = shlex.shlex(text.replace("\\\n", " "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


@dataclass(frozen=True)
class Curl:
    method: str
    port: int
    path: str
    headers: tuple[str, ...]
    body: dict[str, Any] | None


def plain_curl(text: str) -> Curl | None:
    """A ``curl`` that is the whole command (no pipe, redirection or list), parsed; else None."""
    tokens = shell_tokens(text)
    if not tokens or tokens[0] != "curl" or any(t in SHELL_OPERATORS for t in tokens):
        return None
    words = shlex.split(text.replace("\\\n", " "))
    method, url, headers, body = "GET", None, [], None
    i = 1
    while i < len(words):
        word = words[i]
        if word == "-X":
            method, i = words[i + 1], i + 1
        elif word == "-H":
            headers.append(words[i + 1])
            i += 1
        elif word == "-d":
            body = json.loads(words[i + 1])
            method = "POST" if method == "GET" else method
            i += 1
        elif word.startswith("http"):
            url = word
        i += 1
    assert url is not None, f"no URL in {text!r}"
    m = re.match(r"^https?://[^/:]+:(\d+)(/[^?]*)", url)
    assert m, f"unexpected URL {url!r}"
    return Curl(method, int(m.group(1)), m.group(2), tuple(headers), body)


# ------------------------------------------------------------------------------- static doc checks
@pytest.fixture(scope="module")
def commands() -> list[DocCommand]:
    return doc_commands(DOC.read_text(encoding="utf-8"))


def test_parser_joins_continuations_and_multiline_quotes() -> None:
    block = Block(
        "bash",
        10,
        (
            "# not runnable here: because",
            "near x \\",
            "  y '{",
            '    "k": 1',
            "  }' z",
            "",
            "# a comment",
            "echo 'a # not a comment'  # trailing",
        ),
    )
    parsed = commands_of(block)
    assert [c.line for c in parsed] == [12, 18]
    assert parsed[0].text == "near x \\\n  y '{\n    \"k\": 1\n  }' z"
    assert parsed[0].normalized == "near x y '{ \"k\": 1 }' z"
    assert all(c.not_runnable == "because" for c in parsed)
    curl = plain_curl("curl -s -X PUT http://127.0.0.1:8086/limits \\\n  -H 'a: b' \\\n  -d '{\"x\":5}'")
    assert curl == Curl("PUT", 8086, "/limits", ("a: b",), {"x": 5})
    assert plain_curl("curl -s http://127.0.0.1:8086/state | jq .armed") is None
    assert plain_curl("psql x") is None
    with pytest.raises(AssertionError, match="unterminated"):
        commands_of(Block("bash", 1, ("echo 'open",)))
    with pytest.raises(AssertionError, match="must open its block"):
        commands_of(Block("bash", 1, ("echo a", "# not runnable here: late")))


def test_every_block_is_labelled_and_every_command_is_classified(commands: list[DocCommand]) -> None:
    assert len(commands) > 50
    used: set[str] = set()
    for command in commands:
        where = f"docs/operations.md:{command.line}: {command.normalized[:80]!r}"
        reason = not_runnable_reason(command)
        if reason is not None:
            used.update(p for p, r in NOT_RUNNABLE.items() if command.normalized.startswith(p))
            assert command.not_runnable == reason, (
                f"{where} cannot run here; its block must start with '{MARKER}{reason}'"
            )
        else:
            assert command.not_runnable is None, (
                f"{where} is marked not runnable ({command.not_runnable}) but is not listed in NOT_RUNNABLE"
            )
    assert used == set(NOT_RUNNABLE), f"NOT_RUNNABLE entries no command uses: {set(NOT_RUNNABLE) - used}"
    assert [c.normalized for c in commands].count(FIXTURE) == 1


def test_the_runbook_commands_are_there_exactly_as_written(commands: list[DocCommand]) -> None:
    written = {c.normalized for c in commands}
    missing = [cmd for cmd in RUNBOOK_COMMANDS if normalize(cmd) not in written]
    assert not missing, f"runbook commands missing from docs/operations.md: {missing}"


def _routes() -> dict[str, list[tuple[str, str, bool]]]:
    from intents_mm.app import service_class
    from intents_mm.bus import make_bus
    from intents_mm.config import load_config
    from intents_mm.services.runtime import ServiceContext

    config = load_config({}, dotenv=None)
    out: dict[str, list[tuple[str, str, bool]]] = {}
    for name in SERVICES:
        svc = service_class(name)(ServiceContext(config=config, bus=make_bus(None)))
        common = [("GET", "/healthz", False), ("GET", "/state", False), ("GET", "/metrics", False)]
        out[name] = common + [(r.method, r.path, r.mutating) for r in svc.routes()]
    return out


def test_every_endpoint_of_every_service_has_an_example(commands: list[DocCommand]) -> None:
    examples: dict[tuple[int, str, str], list[Curl]] = {}
    for command in commands:
        curl = plain_curl(command.text)
        if curl is not None:
            examples.setdefault((curl.port, curl.method, curl.path), []).append(curl)
    routes = _routes()
    missing, untokened = [], []
    known: set[tuple[int, str, str]] = set()
    for name, service_routes in routes.items():
        port = DEFAULT_PORTS[name]
        for method, path, mutating in service_routes:
            known.add((port, method, path))
            found = examples.get((port, method, path), [])
            if not found:
                missing.append(f"{method} {port}{path}")
            if mutating and not any(
                any(h == "Authorization: Bearer $CONTROL_API_TOKEN" for h in c.headers) for c in found
            ):
                untokened.append(f"{method} {port}{path}")
    assert not missing, f"endpoints without a curl example: {missing}"
    assert not untokened, f"mutating endpoints without the bearer-token form: {untokened}"
    unknown = sorted(f"{m} {p}{path}" for (p, m, path) in examples if (p, m, path) not in known)
    assert not unknown, f"curl examples for routes that do not exist: {unknown}"


# ----------------------------------------------------------------------------------- the live run
@dataclass
class Simulation:
    proc: subprocess.Popen[str]
    ports: dict[str, int]
    postgres_url: str
    lines: list[str] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)

    def output(self) -> str:
        return "".join(self.lines)


def _fixture_argv() -> list[str]:
    """The recipe of the Makefile's ``simulate`` target, with ``$(BIN)`` resolved."""
    lines = (REPO / "Makefile").read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("simulate:"))
    recipe = lines[index + 1]
    assert recipe.startswith("\t"), "the simulate target must have a one-line recipe"
    argv = shlex.split(recipe.strip().replace("$(BIN)", str(BIN)))
    assert argv[0] == str(BIN / "intents-mm") and argv[1] == "simulate", argv
    return argv


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _base_env(tmp_path: Path, ports: dict[str, int], postgres_url: str) -> dict[str, str]:
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "LANG": "C.UTF-8",
        "INTENTS_MM_VAR_DIR": str(tmp_path / "var"),
        "POSTGRES_URL": postgres_url,
    }
    env.update({port_var(name): str(port) for name, port in ports.items()})
    return env


@pytest.fixture
def simulation(tmp_path: Path, pg_url: str) -> Iterator[Simulation]:
    from conftest import free_port

    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(SERVICES):
        ports = {name: free_port() for name in SERVICES}
    sim_dir = tmp_path / "sim"
    sim_dir.mkdir()
    postgres_url = _libpq(pg_url)
    proc = subprocess.Popen(
        _fixture_argv(),
        cwd=sim_dir,
        env=_base_env(tmp_path, ports, postgres_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    sim = Simulation(proc, ports, postgres_url)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sim.lines.append(line)
            if "user flow started" in line:
                sim.started.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        while not sim.started.wait(0.2):
            assert proc.poll() is None, f"simulate exited early:\n{sim.output()}"
            assert time.monotonic() < deadline, f"simulate did not warm up:\n{sim.output()}"
        yield sim
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class Runner:
    sim: Simulation
    cwd: Path
    env: dict[str, str]
    burns: dict[str, str] = field(default_factory=dict)  # asset_id -> near_tx_hash of a /withdraw

    def substitute(self, command: DocCommand) -> str:
        def port(m: re.Match[str]) -> str:
            number = int(m.group(2))
            assert number in SERVICE_OF_PORT, f"line {command.line}: port {number} is no runbook port"
            return f"{m.group(1)}:{self.sim.ports[SERVICE_OF_PORT[number]]}"

        text = PORT_URL.sub(port, command.text)
        text = text.replace("0xYourGnosisAddress", GNOSIS_ADDRESS).replace(
            "bc1YourBitcoinAddress", BTC_ADDRESS
        )
        if "<near-burn-tx-hash>" in text:
            asset = re.search(r'"asset_id":"([^"]+)"', text)
            assert asset, f"line {command.line}: <near-burn-tx-hash> without an asset_id"
            burn = self.burns.get(asset.group(1))
            assert burn, f"line {command.line}: no burn of {asset.group(1)} earlier in the doc to track"
            text = text.replace("<near-burn-tx-hash>", burn)
        left = PLACEHOLDER.findall(text)
        assert not left, f"line {command.line}: placeholder(s) {left} the test does not know how to fill"
        return text

    def run(self, command: DocCommand) -> None:
        text = self.substitute(command)
        where = f"docs/operations.md:{command.line}: {command.normalized[:100]}"
        if is_tail(command):
            self._tail(text, where)
            return
        curl = plain_curl(text)
        if curl is not None:
            text += " -w '\\n%{http_code}'"
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", text],
            check=False,
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        detail = f"{where}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
        assert result.returncode == 0, f"exit {result.returncode}: {detail}"
        if curl is not None:
            body, _, status = result.stdout.rpartition("\n")
            self._check_curl(curl, int(status), body, detail)
        elif re.search(r"\|\s*jq\b[^|]*$", text):
            values = _json_values(result.stdout)
            assert values and any(v is not None for v in values), f"jq printed nothing useful: {detail}"
        for prefix, pattern in EXPECTED_OUTPUT.items():
            if command.normalized.startswith(prefix):
                assert re.search(pattern, result.stdout), f"expected /{pattern}/ in the output: {detail}"

    def _tail(self, text: str, where: str) -> None:
        proc = subprocess.Popen(
            ["bash", "-c", text],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            time.sleep(TAIL_SECONDS)
            assert proc.poll() is None, f"{where}: a tail ended by itself (exit {proc.returncode})"
            os.killpg(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == 0, f"{where}: exit {proc.returncode} after Ctrl-C\n{err[-2000:]}"
        assert "intents-mm watch" in out, f"{where}: no picture printed\n{out[-2000:]}"

    def _check_curl(self, curl: Curl, status: int, body: str, detail: str) -> None:
        service = self._service_of(curl.port)
        assert status == 200, f"HTTP {status}: {detail}"
        if curl.path == "/metrics":
            assert "service_ready" in body, f"not Prometheus text: {detail}"
            return
        doc = json.loads(body)
        assert isinstance(doc, dict), detail
        key = REFRESH_KEY[service] if curl.path == "/refresh" else EXPECTED_KEY[(curl.method, curl.path)]
        assert key in doc, f"no {key!r} in the answer: {detail}"
        if curl.path in ("/state", "/healthz"):
            assert doc["service"] == service, f"answered by {doc['service']}, not {service}: {detail}"
        elif curl.path in ("/arm", "/disarm"):
            assert doc["armed"] is (curl.path == "/arm"), detail
        elif curl.path == "/freeze-withdrawals":
            assert curl.body is not None and doc["withdrawals_frozen"] is curl.body["frozen"], detail
        elif curl.path == "/kill":
            assert doc["ok"] is True and doc["executor_disarmed"] is True, detail
        elif curl.path in ("/withdraw", "/track-withdrawal"):
            assert doc["near_tx_hash"] and doc["error"] is None, detail
            if curl.path == "/withdraw":
                self.burns[doc["asset_id"]] = doc["near_tx_hash"]

    def _service_of(self, port: int) -> str:
        for name, bound in self.sim.ports.items():
            if bound == port:
                return name
        raise AssertionError(f"port {port} is none of the simulation's")


def _json_values(text: str) -> list[Any]:
    decoder = json.JSONDecoder()
    values: list[Any] = []
    i, text = 0, text.strip()
    while i < len(text):
        value, end = decoder.raw_decode(text, i)
        values.append(value)
        i = end
        while i < len(text) and text[i].isspace():
            i += 1
    return values


def _alert_tables(markdown: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(port, metric) and (port, field) rows of the alert tables in section 8."""
    section = markdown.split("## 8.", 1)[1].split("\n## ", 1)[0]
    metrics: list[tuple[int, str]] = []
    fields: list[tuple[int, str]] = []
    table: list[tuple[int, str]] | None = None
    for line in section.splitlines():
        if line.startswith("| port | metric |"):
            table = metrics
        elif line.startswith("| port | field |"):
            table = fields
        row = re.match(r"^\| (80\d\d) \| `([^`]+)` \|", line)
        if row and table is not None:
            table.append((int(row.group(1)), row.group(2)))
    return metrics, fields


def _get(url: str) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as exc:  # /healthz answers 503 with the same JSON
        return str(exc.read().decode())


def test_every_command_runs_against_a_live_simulation(
    simulation: Simulation, commands: list[DocCommand], tmp_path: Path
) -> None:
    from intents_mm.near.keys import SigningKey

    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    packages = " ".join(sorted({"psql": "postgresql-client"}.get(t, t) for t in missing))
    assert not missing, f"the doc's commands need {missing} on PATH (apt-get install {packages})"
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / ".env.example").write_text((REPO / ".env.example").read_text(encoding="utf-8"))
    (workdir / "scripts").symlink_to(REPO / "scripts")
    env = _base_env(tmp_path, simulation.ports, simulation.postgres_url)
    env.update(
        CONTROL_API_TOKEN="doc-check-token",  # the simulation has none: accepted as on any loopback setup
        NEAR_INTENTS_SIGNER_PRIVATE_KEY=SigningKey.generate().to_secret_string(),
        NEAR_INTENTS_ACCOUNT_ID=NAMED_ACCOUNT,
    )
    runner = Runner(simulation, workdir, env)
    ran = 0
    for command in commands:
        if command.normalized == FIXTURE or not_runnable_reason(command) is not None:
            continue
        runner.run(command)
        ran += 1
    assert ran > 50
    assert "nep141:btc.omft.near" in runner.burns

    metrics_rows, field_rows = _alert_tables(DOC.read_text(encoding="utf-8"))
    assert len(metrics_rows) >= 5 and len(field_rows) >= 5
    for port, name in metrics_rows:
        url = f"http://127.0.0.1:{simulation.ports[SERVICE_OF_PORT[port]]}/metrics"
        text = _get(url)
        assert re.search(rf"^(# HELP )?{re.escape(name)}[ {{]", text, re.M), f"{name} not exported on {port}"
    for port, path in field_rows:
        base = f"http://127.0.0.1:{simulation.ports[SERVICE_OF_PORT[port]]}"
        doc: Any = json.loads(_get(base + ("/healthz" if path.startswith(".checks") else "/state")))
        for key in path.strip(".").split("."):
            assert isinstance(doc, dict) and key in doc, f"{path} is not a field of {port}"
            doc = doc[key]

    proc = simulation.proc
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=40) == 0, simulation.output()[-3000:]
    time.sleep(0.2)
    assert "simulate summary" in simulation.output()


async def test_token_form_is_what_a_token_protected_service_needs(
    commands: list[DocCommand], sqlite_url: str
) -> None:
    """The doc's ``Authorization: Bearer $CONTROL_API_TOKEN`` commands against a service that has a token.

    The live simulation above has no token configured (the runbook's plain curls must work on it), so
    here a strategy-engine with ``CONTROL_API_TOKEN`` set answers each token-form command for port 8086:
    200 with the right token in the environment, 401 with a wrong one or without the header.
    """
    import asyncio

    from intents_mm.app import start_services, stop_services
    from intents_mm.bus import make_bus
    from intents_mm.config import load_config
    from intents_mm.storage.migrate import migrate
    from intents_mm.storage.store import HistoryStore

    token_header = '-H "Authorization: Bearer $CONTROL_API_TOKEN"'
    chosen: list[tuple[DocCommand, Curl]] = []
    for command in commands:
        curl = plain_curl(command.text)
        if token_header in command.text and curl is not None and curl.port == 8086:
            chosen.append((command, curl))
    assert {curl.path for _, curl in chosen} == {"/arm", "/disarm", "/limits"}

    await migrate(sqlite_url)
    bus = make_bus(None)
    await bus.start()
    store = HistoryStore(sqlite_url)
    await store.connect()
    config = load_config({"CONTROL_API_TOKEN": "0123abcd-token"}, dotenv=None)
    running = await start_services(
        ["strategy-engine"], config, bus=bus, store=store, ports={"strategy-engine": 0}
    )
    port = int(running.url("strategy-engine").rsplit(":", 1)[1])

    async def status(text: str, token: str) -> int:
        text = text.replace("127.0.0.1:8086", f"127.0.0.1:{port}") + " -o /dev/null -w '%{http_code}'"
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            text,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CONTROL_API_TOKEN": token},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, text
        return int(out)

    try:
        for command, _ in chosen:
            assert await status(command.text, "0123abcd-token") == 200, command.text
            assert await status(command.text, "wrong") == 401, command.text
            stripped = command.text.replace(token_header, "")
            assert await status(stripped, "0123abcd-token") == 401, stripped
    finally:
        await stop_services(running)


def test_readme_opens_with_the_whole_setup_and_points_at_real_things() -> None:
    from intents_mm.cli import build_parser

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    lines = [line for line in readme.splitlines() if line.strip()]
    assert lines[0] == "# intents-mm"
    assert lines[1:5] == ["```", "make simulate", "make test", "```"], (
        "README must open with the two commands"
    )
    for path in re.findall(r"`(docs/[\w./-]*)`", readme):
        assert (REPO / path).exists(), f"README names {path}, which does not exist"
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    known = set(getattr(subparsers, "choices", {}) or {})
    named = set(re.findall(r"^\| `intents-mm ([a-z-]+)", readme, re.M))
    assert named and named <= known, f"README names commands that do not exist: {named - known}"
    assert known <= named, f"commands missing from the README table: {known - named}"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for target in re.findall(r"`make ([a-z-]+)`", readme):
        assert re.search(rf"^{target}:", makefile, re.M), f"README names make {target}, which does not exist"


def test_the_route_table_matches_the_services() -> None:
    """The Conventions table: every service's own routes, ``*`` exactly on the mutating ones."""
    text = DOC.read_text(encoding="utf-8")
    table: dict[str, set[tuple[str, str, bool]]] = {}
    for port, name, routes in re.findall(r"^\s*\| (80\d\d) \| ([a-z-]+) \| (.*) \|$", text, re.M):
        assert DEFAULT_PORTS[name] == int(port), f"{name} is not on {port}"
        table[name] = {
            (m, path, star == "*")
            for m, path, star in re.findall(r"`(GET|POST|PUT|DELETE) (/[a-z-]+)`(\*?)", routes)
        }
    expected = {
        name: {r for r in routes if r[1] not in ("/healthz", "/state", "/metrics")}
        for name, routes in _routes().items()
    }
    assert table == expected
