"""The web UI at /ui/: its files as the daemon serves them, and the page used as a person uses it.

The serving tests run in process against a stand-in build. The browser test drives Debian's
headless Chromium with Playwright against a real daemon behind an admin token, through the whole
way a data scientist goes: sign in, push a model (dropped on the page), deploy it at 10 % (the
standby pool's warm-up shows), move its slider to 50 %, add a shadow, watch the shadow's agreement
and divergence and the drift per feature appear in their charts while traffic flows, roll back,
take the version out of service, release the previous pool that keeps it and delete it from the
store. Then the read-only view without a token: the overview and the model page show the data the
API answers anyone, no control that changes something, and the sections that need the token say
so. After each step it checks the daemon's state through the admin API, not only the page; a
screenshot of each page goes to ``build/ui-screenshots/``; axe-core, injected into each page, must
find no serious or critical accessibility violation, in the light theme and the dark one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import ROOT, Daemon, free_port
from multidict import CIMultiDict

from router import ui

CHROMIUM = Path("/usr/bin/chromium")
AXE = ROOT / "ui" / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = ROOT / "build" / "ui-screenshots"
TOKEN = "ui-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Generous: the page waits for blue-green deploys, each starting worker processes on a busy machine.
WAIT_MS = 90_000
#: Chromium as root, with no network beyond loopback: no sandbox, no background fetches.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


# -- serving the built files (in process) ----------------------------------------------------------------

def fetch(root: Path, *requests: tuple[str, dict[str, str]]) -> list[tuple[int, CIMultiDict[str], bytes]]:
    """GET each (path, headers) from an app serving ``root`` at /ui/; (status, headers, body) each."""
    async def run() -> list[tuple[int, CIMultiDict[str], bytes]]:
        app = web.Application()
        ui.add_routes(app, root)
        async with TestClient(TestServer(app)) as client:
            out = []
            for path, headers in requests:
                r = await client.get(path, headers=headers, allow_redirects=False)
                out.append((r.status, r.headers.copy(), await r.read()))
            return out

    return asyncio.run(run())


@pytest.fixture
def built(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text("<!doctype html><title>ui</title>")
    (tmp_path / "app-ABCDEFGH.js").write_text("console.log(1)")
    (tmp_path / "style-ABCDEFGH.css").write_text("body{}")
    (tmp_path / ".built").write_text("")
    return tmp_path


def test_the_built_files_are_served_with_their_types_and_cache_rules(built: Path) -> None:
    (index, script, style, route, missing, hidden, dotdot, bare) = fetch(
        built, ("/ui/", {}), ("/ui/app-ABCDEFGH.js", {}), ("/ui/style-ABCDEFGH.css", {}),
        ("/ui/models/fraud", {}), ("/ui/app-OTHER123.js", {}), ("/ui/.built", {}),
        ("/ui/%2e%2e/%2e%2e/etc/passwd", {}), ("/ui", {}))
    assert index[0] == 200 and index[1]["Content-Type"] == "text/html; charset=utf-8"
    assert index[1]["Cache-Control"] == "no-cache" and index[2].startswith(b"<!doctype html>")
    assert "frame-ancestors 'none'" in index[1]["Content-Security-Policy"]
    assert script[1]["Content-Type"] == "text/javascript; charset=utf-8"
    assert script[1]["Cache-Control"] == "public, max-age=31536000, immutable"
    assert style[1]["Content-Type"] == "text/css; charset=utf-8"
    # A route of the page itself gets the page; a file that is not there is a 404 in the API's shape.
    assert route[0] == 200 and route[2] == index[2]
    assert missing[0] == 404 and json.loads(missing[2])["error"].startswith("no such file in the UI")
    assert hidden[0] == 404 and dotdot[0] == 404
    assert bare[0] == 308 and bare[1]["Location"] == "/ui/"
    # A browser that has the page revalidates it for nothing.
    again = fetch(built, ("/ui/", {"If-None-Match": index[1]["ETag"]}))[0]
    assert again[0] == 304 and again[2] == b""


def test_without_a_build_the_ui_says_how_to_make_one(tmp_path: Path) -> None:
    for status, headers, body in fetch(tmp_path, ("/ui/", {}), ("/ui/app.js", {})):
        assert status == 503 and headers["Content-Type"].startswith("application/json")
        assert json.loads(body) == {"error": "the UI is not built: run make ui"}


# -- the page in a browser, against a daemon -------------------------------------------------------------

def fraud_v3(path: Path) -> bytes:
    """A push archive of a new fraud version: the demo's signature (features FP32 [-1, 8] -> probabilities)."""
    import torch
    from torch import nn

    from modelkit import package

    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(8, 2), nn.Softmax(dim=1))
    x = torch.randn(64, 8)
    package(net, {"features": x[:4]}, path, output_names=["probabilities"], reference_sample={"features": x})
    return path.read_bytes()


@pytest.fixture
def daemon(tmp_path: Path, store: Path) -> Iterator[Daemon]:
    """fraud v1 alone serving, behind a token; v2 stored but not deployed; history every second; drift
    judged from a few rows (a version without a reference sample takes its first 50 live rows)."""
    shutil.copytree(store, tmp_path / "store")  # the test pushes into it and deletes from it
    config = tmp_path / "config.toml"
    config.write_text("[server]\nhistory_interval_s = 1\n\n"
                      f"[store]\npath = {json.dumps(str(tmp_path / 'store'))}\n\n"
                      '[[models]]\nname = "fraud"\nrouting_key = "x-user-id"\n'
                      '  [models.drift]\n  reference_rows = 50\n  min_window = 20\n'
                      '  [[models.versions]]\n  version = "1"\n  weight = 100\n')
    d = Daemon(config, free_port(), free_port(), {**os.environ, "ROUTER_ADMIN_TOKEN": TOKEN})
    try:
        d.wait_ready()
        yield d
    finally:
        assert d.stop() == 0


def admin(d: Daemon, method: str, path: str) -> dict:
    status, body = d.call(method, path, headers=AUTH)
    assert status == 200, body
    return body


def fraud_status(d: Daemon) -> dict:
    return next(m for m in admin(d, "GET", "/admin/models")["models"] if m["model"] == "fraud")


def states(d: Daemon) -> dict[str, str]:
    return {v["version"]: v["state"] for v in admin(d, "GET", "/admin/models/fraud/versions")["versions"]}


class Traffic:
    """Callers of fraud in a background thread, until stopped: what the shadow gets copies of."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        body = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                                       "data": [4.5, 0.2, 0.9, 0.7, 3.1, 2, 1.5, 0]}]}).encode()
        while not self.stop.wait(0.02) and self.sent < 20_000:
            status, _, reply = self.d.post("/v2/models/fraud/infer", body,
                                           {"Content-Type": "application/json", "x-user-id": f"u{self.sent % 50}"})
            assert status == 200, reply
            self.sent += 1

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def chart_points(page: Any, series: str) -> dict[str, int]:
    """Per version (per feature for ``feature_psi``), how many points of ``series`` the chart draws
    (its ``data-points``)."""
    text = page.locator(f"figure[data-series={series}]").get_attribute("data-points") or ""
    return {v: int(n) for v, n in (item.split("=") for item in text.split())}


def outcome(page: Any, name: str) -> Any:
    """Where the page shows the answer to one kind of action (the API's error, or what changed)."""
    return page.locator(f'.outcome[data-for="{name}"]')


def check_accessibility(page: Any, what: str) -> None:
    """axe-core in the page: no serious or critical violation."""
    page.evaluate(AXE.read_text())
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    bad = [f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:3]}"
           for v in result["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, f"{what}: accessibility violations:\n" + "\n".join(bad)


@pytest.mark.timeout(300)  # under a minute: three blue-green deploys and a push, each starting workers
def test_a_data_scientist_deploys_steers_watches_and_rolls_back(daemon: Daemon, tmp_path: Path) -> None:
    pytest.importorskip("playwright")
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "tests/test_ui.py drives Debian's chromium: apt-get install chromium (make tools)"
    assert (ui.DIST / "index.html").is_file(), "the UI is not built: run make ui"
    assert AXE.is_file(), "axe-core is not installed: run make ui (npm ci in ui/)"
    d = daemon
    archive = fraud_v3(tmp_path / "fraud-3.tar.gz")
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    expect.set_options(timeout=WAIT_MS)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme="light")
            page.set_default_timeout(WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda dialog: dialog.accept())

            def shot(name: str) -> None:
                page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

            _walk(page, d, archive, shot, expect)
            assert not errors, errors

            # A second visitor, in a tab of their own, with no token at all.
            viewer = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light").new_page()
            viewer.set_default_timeout(WAIT_MS)
            viewer.on("pageerror", lambda e: errors.append(str(e)))
            _read_only_without_token(viewer, d, lambda name: viewer.screenshot(path=str(SHOTS / f"{name}.png"),
                                                                               full_page=True), expect)
            assert not errors, errors
        finally:
            browser.close()


def _walk(page: Any, d: Daemon, archive: bytes, shot: Callable[[str], None], expect: Any) -> None:
    # Sign in: a wrong token gets the API's own refusal (the check is a call that needs the token); the
    # right one is kept for the tab.
    page.goto(d.url + "/ui/")
    expect(page.get_by_role("heading", name="Sign in to model-router")).to_be_visible()
    check_accessibility(page, "sign-in")
    shot("01-sign-in")
    page.get_by_label("Admin token").fill("wrong")
    page.get_by_label("Admin token").press("Enter")  # the keyboard submits
    expect(page.get_by_role("alert")).to_have_text("Refused — 403: invalid admin token")
    page.get_by_label("Your name (optional)").fill("ada")
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Models", level=1)).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('model-router.admin-token')") == TOKEN
    assert page.evaluate("localStorage.length") == 0
    card = page.locator("article", has=page.get_by_role("heading", name="fraud"))
    expect(card.get_by_role("row", name=re.compile(r"^v1 "))).to_contain_text("100.0 % (weight 100)")
    expect(card).to_contain_text("1/1 live")
    check_accessibility(page, "overview")
    shot("02-overview")

    # Push: the archive dropped on the page, its upload's progress, then the signature the daemon found.
    page.get_by_role("link", name="fraud").click()
    expect(page.get_by_role("heading", name="fraud", level=1)).to_be_visible()
    transfer = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: "application/gzip"}));
            return dt;
        }""", ["fraud-3.tar.gz", base64.b64encode(archive).decode()])
    page.dispatch_event(".dropzone", "drop", {"dataTransfer": transfer})
    expect(page.locator(".dropzone")).to_contain_text("fraud-3.tar.gz")
    push = page.locator("form.push")
    push.get_by_label("Version").fill("3")
    push.get_by_label("Description (optional)").fill("a linear model, from the UI test")
    push.get_by_role("button", name="Push").click()
    expect(outcome(page, "push")).to_contain_text("Stored fraud v3")
    expect(push.locator("dl.meta")).to_contain_text("features FP32 [-1, 8] → probabilities FP32 [-1, 2]")
    assert push.locator("progress").get_attribute("value") == "100"
    listing = admin(d, "GET", "/admin/models/fraud/versions")
    v3 = next(v for v in listing["versions"] if v["version"] == "3")
    assert v3["state"] == "stored" and v3["meta"]["description"] == "a linear model, from the UI test"
    expect(page.locator("table.versions").get_by_role("row", name=re.compile(r"^v3 "))).to_contain_text("stored only")
    shot("03-pushed")

    # Deploy v3 at 10 %: blue-green; the standby pool's warm-up shows while its workers start, then the
    # blue pool stays warm for a rollback, with its time left.
    bluegreen = page.locator("#bluegreen")
    deploy = page.locator("form.deploy")
    deploy.get_by_label("Version").select_option("3")
    deploy.get_by_label("Share of live traffic (%)").check()
    deploy.get_by_label("Amount").fill("10")
    deploy.get_by_role("button", name="Roll out").click()
    expect(bluegreen).to_contain_text("Deploy in progress: the green pool (versions v1, v3) is warming up")
    expect(bluegreen.get_by_role("progressbar", name=re.compile(r"^Warm-up of the green pool"))).to_be_visible()
    bluegreen.screenshot(path=str(SHOTS / "04-warming-up.png"))
    expect(outcome(page, "deploy")).to_contain_text("v3: deployed blue-green")
    status = fraud_status(d)
    assert status["weights"] == {"1": 90, "3": 10} and status["pool"] == "green" and status["standby"] is None
    previous = status["previous"]
    assert previous["pool"] == "blue" and previous["versions"] == ["1"] and 0 < previous["expires_in_s"] <= 300
    expect(bluegreen).to_contain_text(re.compile(r"Previous pool: blue \(versions v1\), kept warm for a rollback "
                                                 r"for another \d+ min \d\d s"))
    expect(bluegreen).to_contain_text("No standby pool: no deploy in progress.")
    expect(bluegreen.get_by_role("button", name="Release previous pool")).to_be_visible()
    shot("04-deployed-10")

    # Its slider to 50 %, the last step by keyboard; v1 follows so the shares add up; the preview shows it.
    slider = page.get_by_label("Share of live traffic for v3")
    expect(slider).to_have_value("10")
    slider.fill("49")
    slider.press("ArrowRight")
    expect(slider).to_have_value("50")
    expect(page.get_by_label("Share of live traffic for v1")).to_have_value("50")
    change = page.locator("table.change")
    expect(change.get_by_role("row", name=re.compile(r"^v3 "))).to_have_text(re.compile(r"weight = 10\s*weight = 50"))
    expect(change.get_by_role("row", name=re.compile(r"^v1 "))).to_have_text(re.compile(r"weight = 90\s*weight = 50"))
    expect(page.locator(".request code")).to_have_text(
        'PUT /admin/models/fraud/traffic {"weights":{"1":50,"3":50}}')
    shot("05-slider-preview")
    page.get_by_role("button", name="Apply traffic change").click()
    expect(outcome(page, "traffic")).to_have_text("Applied: v1 weight 50, v3 weight 50.")
    assert admin(d, "GET", "/admin/models/fraud/traffic")["weights"] == {"1": 50, "3": 50}

    # A shadow: stored v2 gets a copy of all live traffic (a second blue-green deploy).
    deploy.get_by_label("Version").select_option("2")
    deploy.get_by_label("Shadow (fraction mirrored, 0–1)").check()
    deploy.get_by_label("Amount").fill("1")
    deploy.get_by_role("button", name="Roll out").click()
    expect(outcome(page, "deploy")).to_contain_text("v2: deployed blue-green")
    traffic = admin(d, "GET", "/admin/models/fraud/traffic")
    assert traffic["shadow"] == {"2": 1} and traffic["weights"] == {"1": 50, "3": 50, "2": 0}
    previous = fraud_status(d)["previous"]
    assert previous["pool"] == "green" and previous["versions"] == ["1", "3"]
    expect(page.get_by_label("Role of v2")).to_have_value("shadow")

    # Traffic flows: the shadow's agreement with the live answers and its divergence from them appear in
    # their charts, and so does each feature's drift (v3's reference sample is nothing like the callers'
    # rows: it drifts, and the drift view says since when).
    with Traffic(d):
        for series in ("agreement", "divergence"):
            expect(page.locator(f"figure[data-series={series}]")).to_have_attribute(
                "data-points", re.compile(r"\b2=[1-9]"))
        features = page.locator("figure[data-series=feature_psi]")
        expect(features).to_have_attribute("data-points", re.compile(r"=[1-9]"))
        expect(page.locator("#drift .drift-version", has=page.get_by_role("heading", name=re.compile(r"^v3 ")))
               ).to_contain_text(re.compile(r"drifting since \d\d:\d\d:\d\d"))
    history = admin(d, "GET", "/admin/models/fraud/history?series=agreement,divergence,feature_psi&since=-3600")
    shadow = history["versions"]["2"]
    assert any(a is not None for a in shadow["agreement"]) and any(x is not None for x in shadow["divergence"])
    assert chart_points(page, "agreement")["2"] >= 1 and chart_points(page, "divergence")["2"] >= 1
    expect(page.locator("figure[data-series=agreement] .chart-summary")).to_contain_text(re.compile(r"v2: \d"))
    # Drift per feature: one version's features, at most eight lines (fraud has ten features), each a
    # feature the API reports for that version.
    shown = features.get_attribute("data-version")
    reported = history["versions"][shown]["feature_psi"]
    names = {f"{io}/{n}" for io in ("inputs", "outputs") for n in reported[io]}
    lines = chart_points(page, "feature_psi")
    assert len(names) == 10 and len(lines) == 8 and set(lines) <= names, (lines, names)
    expect(features.locator(".u-legend .u-series")).to_have_count(1 + 8)  # the time, then the lines
    expect(features.locator(".chart-summary")).to_contain_text(f"v{shown}, highest PSI now — ")
    drift = d.call("GET", "/admin/models/fraud/drift")[1]
    assert drift["versions"]["3"]["drifting"] and drift["versions"]["3"]["since"] is not None
    predlog_status, predlog = d.call("GET", "/admin/models/fraud/predlog", headers=AUTH)
    if predlog_status == 200:  # where the router has the endpoint, the page says where the log is
        expect(page.locator("#predlog")).to_contain_text(predlog["path"])
    check_accessibility(page, "model detail")
    shot("06-agreement")
    # The top of the model page, as the README shows it.
    page.screenshot(path=str(SHOTS / "06-model-page-top.png"), full_page=True,
                    clip={"x": 0, "y": 0, "width": 1280, "height": 1320})
    page.emulate_media(color_scheme="dark")
    page.wait_for_timeout(300)  # the charts redraw in the dark theme's colours
    check_accessibility(page, "model detail, dark theme")
    shot("07-agreement-dark")
    page.emulate_media(color_scheme="light")

    # Roll back: the green pool (v1 and v3 at 50/50, no shadow) serves again, in one swap.
    page.get_by_role("button", name="Roll back to the green pool").click()
    expect(outcome(page, "bluegreen")).to_contain_text("The green pool is active again")
    status = fraud_status(d)
    assert status["pool"] == "green" and status["weights"] == {"1": 50, "3": 50} and status["shadow"] == {}
    assert status["previous"]["pool"] == "blue" and status["previous"]["versions"] == ["1", "3", "2"]
    shot("08-rolled-back")

    # Retire v3: out of the active set (a deploy of v1 alone); while the previous pool keeps it warm the
    # store refuses to delete it, and the page says so in the API's words.
    versions = page.locator("#versions")
    versions.get_by_role("button", name="Take out of service v3").click()
    expect(outcome(page, "versions")).to_contain_text("v3 is out of the active set")
    assert admin(d, "GET", "/admin/models/fraud/traffic")["weights"] == {"1": 50}
    assert states(d) == {"1": "serving", "2": "stored", "3": "previous"}
    versions.get_by_role("button", name="Delete from store v3").click()
    refused = outcome(page, "versions")
    expect(refused).to_have_attribute("role", "alert")
    expect(refused).to_contain_text("Refused — 409: model 'fraud' version '3' is kept warm in the previous (green) "
                                    "pool for a rollback for another")
    assert "3" in states(d)
    # Release the previous pool now: no rollback to it, and v3, which only it held, can go.
    expect(bluegreen).to_contain_text("Previous pool: green (versions v1, v3)")
    bluegreen.get_by_role("button", name="Release previous pool").click()
    expect(outcome(page, "bluegreen")).to_contain_text("Released the green pool (versions v1, v3)")
    assert fraud_status(d)["previous"] is None
    expect(bluegreen).to_contain_text("No previous pool is warm: nothing to roll back to.")
    expect(bluegreen.get_by_role("button", name="Release previous pool")).to_have_count(0)
    v3_row = page.locator("table.versions").get_by_role("row", name=re.compile(r"^v3 "))
    expect(v3_row).to_contain_text("stored only")  # its workers have stopped
    versions.get_by_role("button", name="Delete from store v3").click()
    expect(outcome(page, "versions")).to_contain_text("Deleted v3 from the store")
    assert states(d) == {"1": "serving", "2": "stored"}
    assert fraud_status(d)["previous"] is None
    expect(v3_row).to_have_count(0)
    shot("09-retired")

    # The page in a narrow window, and the audit trail.
    page.set_viewport_size({"width": 420, "height": 900})
    expect(page.get_by_label("Share of live traffic for v1")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 420  # wide tables scroll on their own
    check_accessibility(page, "model detail, narrow window")
    shot("10-narrow")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("link", name="Audit trail").click()
    expect(page.get_by_role("heading", name="Audit trail", level=1)).to_be_visible()
    audit = admin(d, "GET", "/admin/audit?limit=50")["entries"]
    for action in ("rollout", "release", "remove"):
        assert any(e["who"] == "ada@127.0.0.1" and e["action"] == action and e["result"] == "ok" for e in audit), audit
    table = page.locator("table.audit")
    expect(table.get_by_role("row", name=re.compile(r"ada@127\.0\.0\.1 rollout fraud v3")).first).to_contain_text("ok")
    expect(table.get_by_role("row", name=re.compile(r"ada@127\.0\.0\.1 release fraud")).first).to_contain_text("ok")
    check_accessibility(page, "audit trail")
    shot("11-audit")

    # Signing out forgets the token; a read-only sign-in with it shows everything and offers no change.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to model-router")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('model-router.admin-token')") is None
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_label("Read-only view").check()
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="fraud").click()
    expect(page.get_by_label("Share of live traffic for v1")).to_be_disabled()
    expect(page.locator("table.versions")).to_contain_text("v2")
    for name in ("Apply traffic change", "Roll out", "Push", "Take out of service v1", "Delete from store v2"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    shot("12-read-only")


def _read_only_without_token(page: Any, d: Daemon, shot: Callable[[str], None], expect: Any) -> None:
    """The view that needs no token, on a router that has one: what the API answers anyone, and no more."""
    page.goto(d.url + "/ui/")
    page.get_by_role("button", name="View read-only").click()  # its check of the token-only reads gets a 401
    expect(page.get_by_role("heading", name="Models", level=1)).to_be_visible()
    refused: list[str] = []
    page.on("response", lambda r: refused.append(f"{r.status} {r.url}") if r.status in (401, 403) else None)
    assert page.evaluate("sessionStorage.getItem('model-router.admin-token')") is None
    expect(page.locator("#banner")).to_contain_text("Read-only view without the admin token")
    card = page.locator("article", has=page.get_by_role("heading", name="fraud"))
    expect(card.get_by_role("row", name=re.compile(r"^v1 "))).to_contain_text("100.0 % (weight 50)")
    expect(card).to_contain_text("1/1 live")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Audit trail")).to_have_count(0)
    expect(nav.get_by_role("button", name="Sign in")).to_be_visible()
    check_accessibility(page, "overview without a token")
    shot("13-no-token-overview")

    page.get_by_role("link", name="fraud").click()
    expect(page.get_by_role("heading", name="fraud", level=1)).to_be_visible()
    expect(page.locator("#bluegreen")).to_contain_text("Active pool: blue, serving versions v1.")
    expect(page.get_by_label("Share of live traffic for v1")).to_be_disabled()
    expect(page.get_by_label("Share of live traffic for v1")).to_have_value("100")
    expect(page.locator("figure[data-series=rate]")).to_have_attribute("data-points", re.compile(r"\b1=[1-9]"))
    expect(page.locator("figure[data-series=feature_psi]")).to_have_attribute("data-points", re.compile(r"=[1-9]"))
    expect(page.locator("#drift .drift-version", has=page.get_by_role("heading", name=re.compile(r"^v1 ")))
           ).to_contain_text("Window of")
    for section in ("#versions", "#predlog", "#audit"):
        expect(page.locator(section)).to_contain_text("Needs signing in")
    expect(page.locator("#push")).to_have_count(0)
    expect(page.locator("table.versions")).to_have_count(0)
    for name in ("Apply traffic change", "Roll out", "Push", "Release previous pool", "Take out of service v1",
                 "Delete from store v2"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile(r"^Roll back"))).to_have_count(0)
    check_accessibility(page, "model detail without a token")
    shot("14-no-token-model")
    # The page asked only for what the API answers anyone: nothing was refused.
    assert not refused, refused
