"""A bad-input storm against every control endpoint of one running service set.

The in-process composition (``simulate``'s: memory bus, SQLite store, every service with its real
control server on a real socket) runs in an event loop of its own thread; hypothesis sends it
requests that are each bad in at least one way, drawn from what the issue measured:

- a browser's request: an ``Origin`` that is not the API's own (another loopback port, ``null``,
  random text), ``Sec-Fetch-Site: cross-site``/``same-site``, a ``Host`` that is a foreign name,
  ``127.``-prefixed names, or the wrong port (DNS rebinding), with a valid JSON body or none;
- a body not declared as JSON (text/plain, form types, random types);
- a body declared as JSON that is not a JSON object (malformed, truncated, invalid UTF-8, NaN,
  deep nesting, scalars and arrays, strings with lone surrogates and NUL).

Every answer must be a JSON 4xx with the expected status (403, 415, 400), every attempt on a
mutating endpoint must leave exactly one ``refused`` audit row (matched by its ``X-Operator``),
none an ``attempt`` or ``ok`` row, nothing may change (both services disarmed, limits as they
were, withdrawals frozen, none made) and the services answer ``/healthz`` as before. The HTTP
server's own errors (too-long URL, bad method, too many or oversized headers) are sent to every
endpoint too. The example count is kept modest so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2e_kit import InProcessRun, e2e_scenario, stored
from intents_mm import messages as m

pytestmark = pytest.mark.slow

T = TypeVar("T")

#: (service, method, path, mutating): every body-taking control endpoint
ENDPOINTS: list[tuple[str, str, str, bool]] = [
    ("strategy-engine", "POST", "/arm", True),
    ("strategy-engine", "POST", "/disarm", True),
    ("strategy-engine", "PUT", "/limits", True),
    ("trade-executor", "POST", "/arm", True),
    ("trade-executor", "POST", "/disarm", True),
    ("trade-executor", "POST", "/kill", True),
    ("liquidity-manager", "POST", "/freeze-withdrawals", True),
    ("liquidity-manager", "POST", "/withdraw", True),
    ("liquidity-manager", "POST", "/track-withdrawal", True),
    ("liquidity-manager", "POST", "/refresh", False),
    ("liquidity-manager", "POST", "/withdrawal-estimate", False),
    ("market-reference-ingest", "POST", "/refresh", True),
    ("inventory-sync", "POST", "/refresh", False),
]

#: valid bodies an attacker would send (they must still be refused for their headers)
TEMPTING: list[dict[str, Any]] = [
    {},
    {"frozen": False},
    {"max_notional_eure": 1000000},
    {"asset_id": "nep141:btc.omft.near", "amount": "1000", "destination_address": "0x" + "ab" * 20},
    {"reason": "\ud800\u0000"},
]

printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
json_text = st.text(max_size=20)  # any code point, lone surrogates and NUL included
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | json_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_text, inner, max_size=4),
    max_leaves=12,
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # ensure_ascii: lone surrogates travel as \ud800 escapes


def _is_object(raw: bytes) -> bool:
    """True when the service would take ``raw`` as parameters (a JSON object, or no body at all)."""
    if not raw.strip():
        return True
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, RecursionError):
        return False


@dataclass(frozen=True)
class Case:
    endpoint: tuple[str, str, str, bool]
    headers: dict[str, str]
    body: bytes
    expect: int


@st.composite
def cases(draw: st.DrawFn) -> Case:
    endpoint = draw(st.sampled_from(ENDPOINTS))
    kind = draw(st.sampled_from(["browser", "content-type", "malformed"]))
    if kind == "browser":
        header = draw(st.sampled_from(["Origin", "Sec-Fetch-Site", "Host"]))
        if header == "Origin":
            value = draw(
                st.sampled_from(["http://127.0.0.1:9", "null", "http://localhost:1", "https://evil.example"])
                | printable
            )
        elif header == "Sec-Fetch-Site":
            value = draw(st.sampled_from(["cross-site", "same-site"]) | printable.filter(_not_fetch_ok))
        else:
            value = draw(
                st.sampled_from(["evil.example", "127.evil.example", "127.0.0.1.nip.io", "localhost.evil"])
                | printable.filter(lambda v: ":" not in v)
            )
            value += ":{port}"
        body = draw(st.sampled_from(TEMPTING).map(_dumps) | st.just(b""))
        return Case(endpoint, {header: value, "content-type": "application/json"}, body, 403)
    if kind == "content-type":
        content_type = draw(
            st.sampled_from(
                [
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "multipart/form-data; boundary=x",
                    "application/jsonx",
                    "text/json",
                    "application/octet-stream",
                ]
            )
            | st.from_regex(r"[a-z]{1,8}/[a-z+.-]{1,12}", fullmatch=True).filter(
                lambda t: t != "application/json"
            )
        )
        body = draw(st.sampled_from(TEMPTING).map(_dumps) | st.binary(min_size=1, max_size=200))
        if not body.strip():
            body = b"{}"
        return Case(endpoint, {"content-type": content_type}, body, 415)
    body = draw(
        json_values.filter(lambda v: not isinstance(v, dict)).map(_dumps)
        | st.binary(min_size=1, max_size=200)
        | st.sampled_from(
            [
                b"{",
                b'{"a":',
                b"[1]",
                b"\xff\xfe",
                b'{"a": NaN}',
                b'{"a": Infinity}',
                b"[" * 5000,
                b'"\\ud800"',
            ]
        )
    )
    if _is_object(body):
        body = b"[" + body
    return Case(endpoint, {"content-type": "application/json"}, body, 400)


def _not_fetch_ok(value: str) -> bool:
    return value.strip().lower() not in ("same-origin", "none")


class Storm:
    """The service set and an HTTP client, on their own event loop in a thread."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="storm-loop", daemon=True)
        self.thread.start()
        self.run: InProcessRun | None = None
        self.http: aiohttp.ClientSession | None = None
        self.tmp = tmp

    def call(self, coro: Awaitable[T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    async def start(self) -> None:
        self.run = InProcessRun(tmp=self.tmp, scenario=e2e_scenario())
        await self.run.start()
        # one connection per request: aiohttp retries an idempotent request (PUT) once when the
        # server closed a reused connection, and each of the two would be audited (rightly)
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=20), connector=aiohttp.TCPConnector(force_close=True)
        )

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.run is not None:
            await self.run.shutdown()

    async def send(self, case: Case, operator: str) -> tuple[int, str]:
        assert self.run is not None and self.http is not None
        service, method, path, _ = case.endpoint
        url = self.run.url(service)
        port = url.rsplit(":", 1)[1]
        headers = {k: v.replace("{port}", port) for k, v in case.headers.items()}
        headers["X-Operator"] = operator
        async with self.http.request(method, url + path, data=case.body, headers=headers) as resp:
            return resp.status, await resp.text()

    async def raw(self, service: str, request: bytes) -> tuple[int, str]:
        assert self.run is not None
        host, port = self.run.url(service).removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request.replace(b"{host}", f"{host}:{port}".encode()))
        await writer.drain()
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in head.lower(), head
        return int(head.split(b" ", 2)[1]), body.decode()

    async def snapshot(self) -> dict[str, Any]:
        assert self.run is not None and self.http is not None
        se = await self.run.state("strategy-engine")
        te = await self.run.state("trade-executor")
        lm = await self.run.state("liquidity-manager")
        health = {}
        for name in (
            "strategy-engine",
            "trade-executor",
            "liquidity-manager",
            "market-reference-ingest",
            "inventory-sync",
            "history-writer",
            "near-intents-ingest",
        ):
            async with self.http.get(self.run.url(name) + "/healthz") as resp:
                health[name] = resp.status
        return {
            "armed": (se["armed"], te["armed"]),
            "limits": se["limits"],
            "frozen": lm["withdrawals_frozen"],
            "withdrawals": lm["withdrawals"],
            "health": health,
        }


@pytest.fixture(scope="module")
def storm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storm]:
    s = Storm(tmp_path_factory.mktemp("storm"))
    try:
        s.call(s.start(), timeout=120)
        yield s
    finally:
        s.call(s.close(), timeout=60)
        s.loop.call_soon_threadsafe(s.loop.stop)
        s.thread.join(timeout=10)
        s.loop.close()


def _json_error(text: str) -> bool:
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("error"), str) and "Traceback" not in doc["error"]


def test_a_fuzzed_storm_is_refused_audited_and_changes_nothing(storm: Storm) -> None:
    before = storm.call(storm.snapshot())
    assert before["armed"] == (False, False) and before["frozen"] is True
    sent: list[tuple[Case, str]] = []
    bad: list[str] = []

    @settings(
        max_examples=120,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=cases())
    def one(case: Case) -> None:
        operator = f"storm-{len(sent)}"
        sent.append((case, operator))
        status, text = storm.call(storm.send(case, operator))
        if status != case.expect or not _json_error(text):
            bad.append(f"{case.endpoint[:3]} {case.headers} {case.body[:60]!r} -> {status} {text[:160]}")

    one()
    assert len(sent) >= 100 and {case.expect for case, _ in sent} == {400, 403, 415}
    assert not bad, f"{len(bad)} of {len(sent)} bad answers:\n" + "\n".join(bad[:30])

    # the HTTP server's own errors, on every endpoint
    for service, method, path, _ in ENDPOINTS:
        for request in (
            f"{method} {path}?{'a' * 9000} HTTP/1.1\r\nHost: {{host}}\r\n\r\n".encode(),
            f"B@D {path} HTTP/1.1\r\nHost: {{host}}\r\n\r\n".encode(),
            f"{method} {path} HTTP/1.1\r\nHost: {{host}}\r\n".encode()
            + b"".join(b"X-%d: y\r\n" % i for i in range(200))
            + b"\r\n",
            f"{method} {path} HTTP/1.1\r\nHost: {{host}}\r\nX-Big: {'y' * 9000}\r\n\r\n".encode(),
        ):
            status, text = storm.call(storm.raw(service, request))
            assert 400 <= status < 500 and _json_error(text), (service, path, request[:40], status, text)

    async def audits() -> list[m.OperatorAction]:
        assert storm.run is not None and storm.run.store is not None
        rows = [env.payload for env in await stored(storm.run.store, "operator_actions")]
        return [a for a in rows if isinstance(a, m.OperatorAction) and a.actor.startswith("storm-")]

    expected = {op for case, op in sent if case.endpoint[3]}
    got: list[m.OperatorAction] = []
    for _ in range(100):
        got = storm.call(audits())
        if {a.actor for a in got} >= expected:
            break
        storm.call(asyncio.sleep(0.1))
    by_actor: dict[str, list[m.OperatorAction]] = {}
    for a in got:
        by_actor.setdefault(a.actor, []).append(a)
    assert set(by_actor) == expected  # one row per mutating attempt, none for read-only endpoints
    wrong = {op: rows for op, rows in by_actor.items() if len(rows) != 1 or rows[0].result != "refused"}
    assert not wrong, [(op, rows, next(c for c, o in sent if o == op)) for op, rows in wrong.items()][:5]
    assert all(rows[0].detail for rows in by_actor.values())
    for case, op in sent:  # each row names the endpoint it was sent to
        if case.endpoint[3]:
            (row,) = by_actor[op]
            assert (row.service, row.action) == (case.endpoint[0], _action(case.endpoint[2])), (row, case)

    after = storm.call(storm.snapshot())
    assert after == before


def _action(path: str) -> str:
    return path.strip("/")  # every audited route here is named after its path


#: (service, method, path, body): bodies holding lone surrogates and NUL, to every mutating route
UNSTORABLE_CALLS: list[tuple[str, str, str, str]] = [
    ("strategy-engine", "POST", "/disarm", '{"reason": "\\ud800"}'),
    ("strategy-engine", "POST", "/arm", '{"note": "a\\u0000b"}'),
    ("strategy-engine", "PUT", "/limits", '{"\\ud800": 1}'),
    ("strategy-engine", "PUT", "/limits", '{"max_notional_eure": "\\u0000"}'),
    ("trade-executor", "POST", "/disarm", '{"reason": "\\udfff\\u0000"}'),
    ("trade-executor", "POST", "/arm", '{"note": "\\ud800"}'),
    ("trade-executor", "POST", "/kill", '{"reason": "\\ud800 \\u0000"}'),
    ("liquidity-manager", "POST", "/freeze-withdrawals", '{"frozen": true, "why": "\\u0000"}'),
    (
        "liquidity-manager",
        "POST",
        "/withdraw",
        '{"asset_id": "\\ud800", "amount": "1", "destination_address": "\\u0000"}',
    ),
    (
        "liquidity-manager",
        "POST",
        "/track-withdrawal",
        '{"withdrawal_hash": "\\u0000", "asset_id": "\\ud800", "chain": "btc:mainnet", "amount": "1"}',
    ),
    ("market-reference-ingest", "POST", "/refresh", '{"sources": ["\\ud800"]}'),
]


def _escaped(value: Any) -> Any:
    """What the audit record must hold for ``value``: NUL and lone surrogates as text escapes."""
    if isinstance(value, str):
        return "".join(f"\\u{ord(c):04x}" if c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


async def test_every_operator_action_is_audited_whatever_its_bytes(store_url: str, tmp_path: Path) -> None:
    """The issue's finding: such bodies left no ``operator_actions`` row. Now each call, accepted or
    refused by its handler, has its ``attempt`` row and its outcome row, escaped, on either store,
    and the services answer JSON (never a 5xx) and stay healthy."""
    from e2e_kit import e2e_env

    extra = {} if store_url.startswith("sqlite") else {"POSTGRES_URL": store_url}
    run = InProcessRun(tmp=tmp_path, scenario=e2e_scenario(), env=e2e_env(tmp_path, **extra))
    try:
        async with asyncio.timeout(120):
            await run.start()
            await run.arm()
            async with aiohttp.ClientSession() as http:
                for i, (service, method, path, body) in enumerate(UNSTORABLE_CALLS):
                    headers = {"content-type": "application/json", "X-Operator": f"bytes-{i}"}
                    async with http.request(
                        method, run.url(service) + path, data=body, headers=headers
                    ) as resp:
                        text = await resp.text()
                        assert (resp.status < 500 and _json_error(text)) or resp.status < 300, (
                            path,
                            body,
                            text,
                        )
            assert run.store is not None
            rows: list[m.OperatorAction] = []
            for _ in range(100):
                envs = await stored(run.store, "operator_actions")
                rows = [
                    e.payload
                    for e in envs
                    if isinstance(e.payload, m.OperatorAction) and e.payload.actor.startswith("bytes-")
                ]
                if len(rows) >= 2 * len(UNSTORABLE_CALLS):
                    break
                await asyncio.sleep(0.1)
            for i, (service, _, path, body) in enumerate(UNSTORABLE_CALLS):
                mine = [a for a in rows if a.actor == f"bytes-{i}"]
                assert [a.result for a in mine][:1] == ["attempt"] and len(mine) == 2, (path, mine)
                assert mine[1].result in ("ok", "refused")
                assert all(a.service == service and a.action == _action(path) for a in mine)
                assert mine[0].params == mine[1].params == _escaped(json.loads(body)), (path, mine[0].params)
            async with aiohttp.ClientSession() as http:
                for name in ("strategy-engine", "trade-executor", "liquidity-manager", "history-writer"):
                    async with http.get(run.url(name) + "/healthz") as resp:
                        assert resp.status == 200, (name, await resp.text())
    finally:
        await run.shutdown()
