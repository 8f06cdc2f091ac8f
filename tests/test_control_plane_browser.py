"""The control plane against the threat itself: a hostile web page, opened in a real browser.

A page served by a test HTTP server on another loopback port (and the same page addressed as
``localhost``, a cross-site origin) is opened in headless Chromium (Debian's ``chromium`` package,
installed by ``scripts/ensure-tools.sh``). It tries what a malicious page can: ``fetch`` POSTs with
and without ``mode: "no-cors"``, with a text/plain body, a JSON body declared as JSON (a CORS
preflight first) and no body, and auto-submitted HTML forms (urlencoded, and the text/plain trick
that makes the body valid JSON), against ``/arm`` of strategy-engine and trade-executor,
``/freeze-withdrawals {"frozen":false}`` and ``/withdraw`` of liquidity-manager. The services run
in-process with their real control servers on real sockets, with no ``CONTROL_API_TOKEN`` (the
documented loopback default). Every attempt must be refused and audited as refused, and nothing
may change: both services stay disarmed, withdrawals stay frozen, no withdrawal is made.
Skipped, with the reason, only when no Chromium binary is installed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from conftest import free_port
from e2e_kit import EURE, InProcessRun, e2e_scenario, stored
from intents_mm import messages as m

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

WITHDRAW = {"asset_id": EURE, "amount": "5000000000000000000", "destination_address": "0x" + "ab" * 20}

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>totally harmless</title></head>
<body>
<pre id="log"></pre>
<script>
const TARGETS = %(targets)s;
const results = [];
function note(r) { results.push(r); document.getElementById("log").textContent += JSON.stringify(r) + "\\n"; }
async function attempt(target, kind, init) {
  try {
    const resp = await fetch(target.url, Object.assign({method: "POST", credentials: "include"}, init));
    note({target: target.name, kind, outcome: resp.type === "opaque" ? "opaque" : "status " + resp.status});
  } catch (e) {
    note({target: target.name, kind, outcome: "error " + e.name});
  }
}
function form(target, enctype, fields, frame) {
  return new Promise((resolve) => {
    const iframe = document.createElement("iframe");
    iframe.name = frame;
    document.body.appendChild(iframe);
    // resolve once the answer (a cross-origin document) is in the frame, not on about:blank's load
    iframe.onload = () => {
      try { iframe.contentWindow.location.href; } catch (e) { resolve(); }
    };
    const f = document.createElement("form");
    f.method = "POST"; f.action = target.url; f.enctype = enctype; f.target = frame;
    for (const [k, v] of Object.entries(fields)) {
      const input = document.createElement("input");
      input.type = "hidden"; input.name = k; input.value = v; f.appendChild(input);
    }
    document.body.appendChild(f);
    f.submit();
    setTimeout(resolve, 15000);
  });
}
async function main() {
  let n = 0;
  for (const t of TARGETS) {
    const body = JSON.stringify(t.body);
    await attempt(t, "no-cors text/plain", {mode: "no-cors", body, headers: {"Content-Type": "text/plain"}});
    await attempt(t, "no-cors no body", {mode: "no-cors"});
    await attempt(t, "no-cors default type", {mode: "no-cors", body});
    await attempt(t, "cors json", {body, headers: {"Content-Type": "application/json"}});
    await attempt(t, "cors text/plain", {body, headers: {"Content-Type": "text/plain"}});
    // text/plain form trick: name + "=" + value is the JSON body {"...":"=", ...}
    const trick = body.slice(0, -1) + ',"pad":"';
    await form(t, "text/plain", {[trick]: '"}'}, "f" + (n++));
    await form(t, "application/x-www-form-urlencoded", {frozen: "false"}, "f" + (n++));
    note({target: t.name, kind: "forms", outcome: "submitted"});
  }
  await fetch("/report", {method: "POST", body: JSON.stringify(results)});
}
main();
</script>
</body></html>
"""


async def _run_page(page_url: str, reports: asyncio.Queue[list[dict[str, Any]]], tmp: Path) -> list[Any]:
    assert CHROMIUM is not None
    profile = tmp / f"chromium-{free_port()}"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",  # root in a container: the setuid sandbox is unavailable
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        page_url,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            return await asyncio.wait_for(reports.get(), timeout=90)
        except TimeoutError:
            proc.kill()
            _, err = await proc.communicate()
            pytest.fail(f"the page never reported; chromium said: {err.decode(errors='replace')[-2000:]}")
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium or chromium-browser on PATH: run scripts/ensure-tools.sh (apt package 'chromium')",
)
async def test_a_hostile_page_in_chromium_cannot_arm_unfreeze_or_withdraw(tmp_path: Path) -> None:
    run = InProcessRun(tmp=tmp_path, scenario=e2e_scenario())
    attacker: web.AppRunner | None = None
    try:
        await run.start()  # nothing armed, withdrawals frozen: what a fresh start gives
        targets = [
            {"name": "strategy-engine /arm", "url": run.url("strategy-engine") + "/arm", "body": {}},
            {"name": "trade-executor /arm", "url": run.url("trade-executor") + "/arm", "body": {}},
            {
                "name": "liquidity-manager /freeze-withdrawals",
                "url": run.url("liquidity-manager") + "/freeze-withdrawals",
                "body": {"frozen": False},
            },
            {
                "name": "liquidity-manager /withdraw",
                "url": run.url("liquidity-manager") + "/withdraw",
                "body": WITHDRAW,
            },
        ]
        before = {
            name: await run.state(name) for name in ("strategy-engine", "trade-executor", "liquidity-manager")
        }
        assert before["strategy-engine"]["armed"] is False and before["trade-executor"]["armed"] is False
        assert before["liquidity-manager"]["withdrawals_frozen"] is True

        reports: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()

        async def page(request: web.Request) -> web.Response:
            return web.Response(text=PAGE % {"targets": json.dumps(targets)}, content_type="text/html")

        async def report(request: web.Request) -> web.Response:
            await reports.put(json.loads(await request.read()))
            return web.Response(text="thanks")

        app = web.Application()
        app.router.add_get("/", page)
        app.router.add_post("/report", report)
        attacker = web.AppRunner(app, access_log=None)
        await attacker.setup()
        port = free_port()
        await web.TCPSite(attacker, "127.0.0.1", port).start()

        # same-site (another port of 127.0.0.1), then cross-site (the page addressed as localhost)
        results: dict[str, list[Any]] = {}
        for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
            results[origin] = await _run_page(origin + "/", reports, tmp_path)

        for origin, got in results.items():
            kinds = {(r["target"], r["kind"]) for r in got}
            assert len(kinds) == len(targets) * 6, (origin, got)
            for r in got:  # a readable answer would be a same-origin one: only 403s, opaque or failed
                assert r["outcome"] in ("opaque", "status 403", "submitted") or r["outcome"].startswith(
                    "error"
                ), r

        after = {name: await run.state(name) for name in before}
        assert after["strategy-engine"]["armed"] is False
        assert after["trade-executor"]["armed"] is False
        assert after["liquidity-manager"]["withdrawals_frozen"] is True
        assert after["liquidity-manager"]["withdrawals"] == before["liquidity-manager"]["withdrawals"]

        assert run.store is not None
        keys = [
            ("strategy-engine", "arm"),
            ("trade-executor", "arm"),
            ("liquidity-manager", "freeze-withdrawals"),
            ("liquidity-manager", "withdraw"),
        ]
        by_target: dict[tuple[str, str], list[m.OperatorAction]] = {}
        audited: list[m.OperatorAction] = []
        for _ in range(100):  # the history writer stores what the bus carried
            actions = [env.payload for env in await stored(run.store, "operator_actions")]
            audited = [a for a in actions if isinstance(a, m.OperatorAction)]
            by_target = {}
            for a in audited:
                by_target.setdefault((a.service, a.action), []).append(a)
            if all(len(by_target.get(key, [])) >= 2 * 5 for key in keys):
                break
            await asyncio.sleep(0.1)
        assert audited, "no audit record at all"
        assert [a for a in audited if a.result != "refused"] == []  # no attempt ran, nothing accepted
        # per origin: 3 no-cors fetches and 2 forms reach each endpoint (the CORS ones stop at the
        # preflight, which no browser sends the POST after)
        for key in keys:
            rows = by_target.get(key, [])
            assert len(rows) >= 2 * 5, (key, len(rows))
            assert all("Origin" in (a.detail or "") or "Sec-Fetch-Site" in (a.detail or "") for a in rows), [
                a.detail for a in rows
            ]
        # and the operator's own curl (no Origin) still works
        async with aiohttp.ClientSession() as http, http.post(run.url("strategy-engine") + "/arm") as resp:
            assert resp.status == 200, await resp.text()
    finally:
        if attacker is not None:
            await attacker.cleanup()
        await run.shutdown()
