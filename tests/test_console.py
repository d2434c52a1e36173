"""The web console and its API, as a user meets them: a real nats-server, a real agent,
`flowctl ui` as a real process, the page in a real headless Chromium (Debian's
`chromium`, driven by Playwright), and the API fuzzed from its OpenAPI document by
schemathesis (no answer may be a server error).

The flow: ``orders`` (generate) -> ``price`` (python; fails every 25th order while the
file ``broken`` exists: dead letters) -> ``big`` (filter: ``filtered``) -> ``books``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.programs.cli_helpers import (  # noqa: F401  (fixtures)
    Flowctl,
    cli_agent_fixture,
    cli_processes_cleaned_up,
    flowctl,
    free_port,
    ok,
    read_kv,
    wait_for,
)

TOKEN = "console-test-token"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLOW = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {name: shop}
spec:
  sources:
    - {id: orders, type: generate, config: {rate: 40, template: {qty: "{seq}"}}}
  processors:
    - {id: price, type: python, inputs: [orders], config: {function: "shop_price:handle"}}
    - {id: big, type: filter, inputs: [price], config: {where: "qty %% 3 != 0"}}
  sinks:
    - {id: books, type: file, inputs: [big], config: {path: "%s"}}
"""
PRICE = """\
import os

def handle(event):
    if event["seq"] %% 25 == 7 and os.path.exists(%r):
        raise ValueError(f"cannot price order {event['seq']}")
    event["total"] = event["qty"] * 10
    return event
"""


def post(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, method="POST", data=b"")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def console(nats_url: str, tmp_path: Path, cli_agent: Callable[..., Flowctl]) -> str:
    cli_agent("ui-agent")
    flow = tmp_path / "shop.yaml"
    flow.write_text(FLOW % (tmp_path / "books.jsonl"))
    (tmp_path / "broken").touch()
    (tmp_path / "shop_price.py").write_text(PRICE % str(tmp_path / "broken"))
    ok(flowctl("up", "-f", str(flow), nats_url=nats_url))
    port = free_port()
    ui = Flowctl("ui", "--port", str(port), "--allow-control", "--ui-token", TOKEN,
                 log_dir=tmp_path, nats_url=nats_url, name="ui")
    ui.wait_output("console: http://127.0.0.1:")
    assert TOKEN not in ui.err()  # a given token is never echoed
    yield f"http://127.0.0.1:{port}"
    assert ui.stop() == 0, ui.err()[-2000:]


def test_control_needs_the_token(console: str) -> None:
    stop = f"{console}/api/flows/shop/actions/stop"
    assert post(stop) == 401 and post(stop, "wrong") == 401
    assert post(stop, TOKEN) == 200 and post(stop, TOKEN) == 200  # idempotent
    with urllib.request.urlopen(f"{console}/api/flows", timeout=10) as response:
        assert response.status == 200  # reading on 127.0.0.1 needs none


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_the_icon_is_served(console: str) -> None:
    with urllib.request.urlopen(f"{console}/favicon.ico", timeout=10) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "image/x-icon"
        assert response.read()[:4] == b"\x00\x00\x01\x00"  # an ICO file


def enabled(page: Any) -> list[str]:
    """The lifecycle buttons that can be pressed now."""
    return page.eval_on_selector_all("button[data-action]",
                                     "bs => bs.filter(b => !b.disabled).map(b => b.dataset.action)")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_console_in_a_real_browser(console: str, tmp_path: Path, nats_url: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{console}/#token={TOKEN}")
            row = page.locator("#flows tr", has_text="shop")
            expect(row).to_contain_text("running", timeout=15_000)

            row.get_by_role("link", name="shop").click()
            nodes = page.locator("svg.graph g[data-node]")
            expect(nodes).to_have_count(4)
            assert [nodes.nth(i).get_attribute("data-node") for i in range(4)] == \
                ["orders", "price", "big", "books"]
            edges = page.locator("svg.graph path[data-edge]")
            assert sorted(edges.nth(i).get_attribute("data-edge") for i in range(3)) == \
                ["big.out->books.in", "orders.out->price.in", "price.out->big.in"]
            assert enabled(page) == ["stop"]  # running: only Stop applies

            price = page.locator('g[data-node="price"]')
            expect(price).to_have_attribute("data-state", "running", timeout=15_000)
            first = int(price.get_attribute("data-in") or 0)
            page.wait_for_function(  # counters move by the event stream, no reload
                "n => (e => e && +e.dataset.in > n)("
                "document.querySelector('g[data-node=price]'))", arg=first, timeout=15_000)
            # the chart's data moves: more points, a later last one, a rate in it
            chart = "document.querySelector('[data-chart=price]').dataset"
            page.wait_for_function(f"{chart}.lastIn > 0", timeout=15_000)
            before = page.evaluate(f"[+{chart}.points, +{chart}.lastT]")
            page.wait_for_function(f"+{chart}.points > {before[0]} && +{chart}.lastT > "
                                   f"{before[1]}", timeout=10_000)
            expect(page.locator("[data-chart] canvas")).to_have_count(4)
            # edges show their own rate; filtered and dead letters are on the cards
            page.wait_for_function("+document.querySelector("
                                   "'[data-edge-rate=\"price.out->big.in\"]').dataset.rate > 0",
                                   timeout=15_000)
            page.wait_for_function("(e => +e.dataset.filtered > 0 && /filtered [1-9]/.test("
                                   "e.textContent))(document.querySelector('g[data-node=big]'))",
                                   timeout=15_000)
            page.wait_for_function("+document.querySelector('g[data-node=price]')"
                                   ".dataset.deadLetters > 0", timeout=20_000)
            if os.environ.get("FLOWCTL_SCREENSHOT"):
                page.wait_for_timeout(12_000)  # some seconds more on the charts
                page.screenshot(path=os.environ["FLOWCTL_SCREENSHOT"], full_page=True)

            # the dead letters shown, then replayed after the fix
            page.locator('button[data-dlq-show="price"]').click()
            expect(page.locator("#dlq-shown tbody tr").first).to_contain_text("cannot price order")
            (tmp_path / "broken").unlink()
            page.locator('button[data-dlq-replay="price"]').click()
            expect(page.locator("#dlq-note")).to_contain_text("dead letter(s) of price into "
                                                              "flowctl.shop.orders.out")
            expect(page.locator("#dead-letters")).to_contain_text("No dead letters")
            assert get_json(f"{console}/api/flows/shop/dlq") == {}
            page.wait_for_function("+document.querySelector('g[data-node=price]')"
                                   ".dataset.deadLetters === 0", timeout=10_000)

            # the agents: heartbeat age, loop lag and what each runs
            page.get_by_role("link", name="Agents").click()
            agent = page.locator("#agents tr", has_text="ui-agent")
            expect(agent).to_contain_text("s ago")
            expect(agent).to_contain_text(" ms")
            expect(agent.locator("td.runs")).to_contain_text("shop: big.0, books.0, orders.0, "
                                                             "price.0")
            page.go_back()

            page.get_by_role("button", name="Stop").click()
            state = page.locator("#flow-state")
            expect(state).to_have_attribute("data-desired", "deployed_stopped", timeout=15_000)
            expect(state).to_have_attribute("data-observed", "stopped", timeout=20_000)
            expect(page.locator("#error")).to_be_hidden()
            expect(page.locator("button[data-action=start]")).to_be_enabled()
            assert enabled(page) == ["start", "undeploy"]
            # a stopped replica's rate is 0: in the API and on the page
            for replica in get_json(f"{console}/api/flows/shop/status"):
                assert replica["state"] == "stopped" and replica["rate"] == {"in": 0, "out": 0}
            expect(price).to_have_attribute("data-rate-in", "0", timeout=5_000)
            expect(price.locator(".rates")).to_contain_text("in/s 0 · out/s 0")
            assert errors == []  # no script error on the way
        finally:
            browser.close()
    # and the agent itself wrote it so: the record says 0, not the last rate it measured
    for value in read_kv(nats_url, "flowctl_status", "shop.>").values():
        assert json.loads(value)["rate"] == {"in": 0.0, "out": 0.0}


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_a_flow_not_deployed_says_what_is_empty_then_a_failed_node_says_why(
        console: str) -> None:
    """Applied, not deployed: only Deploy applies; charts, dead letters and logs say
    that there is nothing yet instead of being blank. Deployed and started, a node whose
    module is missing is drawn failed, with the reason."""
    from playwright.sync_api import expect, sync_playwright

    document = {"apiVersion": "flowctl/v1", "kind": "Flow", "metadata": {"name": "idle"},
                "spec": {"sources": [{"id": "gen", "type": "generate", "config": {"count": 1}}],
                         "processors": [{"id": "fix", "type": "python", "inputs": ["gen"],
                                         "config": {"function": "no_such_module:handle"}}],
                         "sinks": [{"id": "out", "type": "stdout", "inputs": ["fix"]}]}}
    request = urllib.request.Request(f"{console}/api/flows/idle", method="PUT",
                                     data=json.dumps(document).encode(),
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{console}/#token={TOKEN}")
            page.goto(f"{console}/#/flows/idle")
            expect(page.locator("#flow-state")).to_have_attribute("data-desired", "not_deployed")
            assert enabled(page) == ["deploy"]
            expect(page.locator("#charts .empty")).to_contain_text("No samples yet")
            expect(page.locator("#dead-letters .empty")).to_contain_text("No dead letters")
            expect(page.locator("#logs-empty")).to_contain_text("No log lines")
            expect(page.locator("g[data-node=gen]")).to_contain_text("state: no status")

            page.get_by_role("button", name="Deploy", exact=True).click()
            expect(page.locator("button[data-action=start]")).to_be_enabled(timeout=15_000)
            assert enabled(page) == ["start", "undeploy"]
            page.get_by_role("button", name="Start").click()
            fix = page.locator("g[data-node=fix]")
            expect(fix).to_have_class("card state-failed", timeout=20_000)
            expect(fix.locator(".reason")).to_contain_text("ImportError")  # cut to fit
            expect(fix.locator("title")).to_contain_text("no_such_module")  # all of it
            expect(page.locator("#nodes-table tr", has_text="fix")).to_contain_text(
                "no_such_module")
        finally:
            browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_a_late_list_redraw_does_not_replace_the_flow_opened_meanwhile(console: str) -> None:
    """The flow list redraws on every status change; its fetch is held in the browser until
    the user has opened a flow, then answered: the flow's page stays (it was replaced by
    the list before, so the figures stopped moving for the user and a CI run)."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{console}/#token={TOKEN}")
            expect(page.locator("#flows tr", has_text="shop")).to_contain_text("running",
                                                                              timeout=15_000)
            held: list[Any] = []

            def hold(route: Any) -> None:  # the first, and only the first, waits
                if held:
                    route.continue_()
                else:
                    held.append(route)

            page.route("**/api/flows", hold)  # the list's next redraw waits
            for _ in range(150):
                if held:
                    break
                page.wait_for_timeout(100)
            assert held, "no status change redrew the flow list in 15 s"
            page.get_by_role("link", name="shop").click()
            expect(page.locator("svg.graph g[data-node]")).to_have_count(4)
            with page.expect_response("**/api/flows"):
                held[0].continue_()
            page.wait_for_timeout(300)  # (its answer is read and would be drawn now)
            expect(page.locator("h2")).to_have_text("flow/shop")
            expect(page.locator("svg.graph g[data-node]")).to_have_count(4)
        finally:
            browser.close()


def test_api_fuzzed_from_its_openapi_document(console: str, tmp_path: Path) -> None:
    """Every operation, generated inputs (valid and not): never a 5xx. The two event
    streams are left out: they never end by design."""
    st = Path(sys.executable).parent / "st"
    result = subprocess.run(
        [str(st), "run", f"{console}/openapi.json", "--checks", "not_a_server_error",
         "-H", f"Authorization: Bearer {TOKEN}", "--exclude-path-regex", "/(events|logs)$",
         "-n", "15", "--phases", "coverage,fuzzing", "--request-timeout", "20",
         "--generation-deterministic"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)  # its cache goes there
    assert result.returncode == 0, result.stdout[-4000:]
    assert "passed" in result.stdout


def test_beyond_localhost_without_a_token_is_refused(nats_url: str) -> None:
    refused = flowctl("ui", "--host", "0.0.0.0", "--port", "0", nats_url=nats_url)
    assert refused.returncode == 2 and "needs" not in refused.stdout
    assert "give a token (--ui-token or FLOWCTL_UI_TOKEN)" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_run_serves_the_console_beside_its_flow(tmp_path: Path) -> None:
    flow = tmp_path / "tiny.yaml"
    flow.write_text("apiVersion: flowctl/v1\nkind: Flow\nmetadata: {name: tiny}\nspec:\n"
                    "  sources:\n    - {id: gen, type: generate, config: {count: 3}}\n"
                    "  sinks:\n    - {id: out, type: stdout, inputs: [gen]}\n")
    result = flowctl("run", str(flow), "--until-done", "--ui", "--ui-port", "0",
                     timeout=120)
    assert result.returncode == 0, result.stderr
    assert "console: http://127.0.0.1:" in result.stderr and "(read-only)" in result.stderr
