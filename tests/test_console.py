"""The web console and its API, as a user meets them: a real nats-server, a real agent,
`flowctl ui` as a real process, the page in a real headless Chromium (Debian's
`chromium`, driven by Playwright), and the API fuzzed from its OpenAPI document by
schemathesis (no answer may be a server error)."""

from __future__ import annotations

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
    - {id: orders, type: generate, config: {rate: 50, template: {qty: 2}}}
  processors:
    - {id: price, type: transform, inputs: [orders], config: {set: {total: "qty * 10"}}}
  sinks:
    - {id: books, type: file, inputs: [price], config: {path: "%s"}}
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


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_console_in_a_real_browser(console: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(f"{console}/#token={TOKEN}")
            row = page.locator("#flows tr", has_text="shop")
            expect(row).to_contain_text("running", timeout=15_000)

            row.get_by_role("link", name="shop").click()
            nodes = page.locator("svg.graph g[data-node]")
            expect(nodes).to_have_count(3)
            assert [nodes.nth(i).get_attribute("data-node") for i in range(3)] == \
                ["orders", "price", "books"]
            edges = page.locator("svg.graph path[data-edge]")
            assert sorted(edges.nth(i).get_attribute("data-edge") for i in range(2)) == \
                ["orders.out->price.in", "price.out->books.in"]

            price = page.locator('g[data-node="price"]')
            expect(price).to_have_attribute("data-state", "running", timeout=15_000)
            first = int(price.get_attribute("data-in") or 0)
            page.wait_for_function(  # counters move by the event stream, no reload
                "n => (e => e && +e.dataset.in > n)("
                "document.querySelector('g[data-node=price]'))", arg=first, timeout=15_000)
            if os.environ.get("FLOWCTL_SCREENSHOT"):
                page.wait_for_timeout(3000)
                page.screenshot(path=os.environ["FLOWCTL_SCREENSHOT"], full_page=True)

            page.get_by_role("button", name="Stop").click()
            state = page.locator("#flow-state")
            expect(state).to_have_attribute("data-desired", "deployed_stopped", timeout=15_000)
            expect(state).to_have_attribute("data-observed", "stopped", timeout=20_000)
            expect(page.locator("#error")).to_be_hidden()
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
            expect(page.locator("svg.graph g[data-node]")).to_have_count(3)
            with page.expect_response("**/api/flows"):
                held[0].continue_()
            page.wait_for_timeout(300)  # (its answer is read and would be drawn now)
            expect(page.locator("h2")).to_have_text("flow/shop")
            expect(page.locator("svg.graph g[data-node]")).to_have_count(3)
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
