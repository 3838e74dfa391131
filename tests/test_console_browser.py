"""The web console in a real browser: Playwright (the PyPI package) driving the
machine's Chromium against a real server, settling through real gRPC while the
journal page is open. Screenshots go to reports/console/ (git-ignored)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CANCER_HOSPITAL, refused
from settlesim.clients.hospital import Fee, Hospital
from settlesim.server.app import RunningServer, ServerConfig, start

pw = pytest.importorskip("playwright.sync_api", reason="the test extras install playwright")

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "reports" / "console"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
QINGHAI = "63000000000000000001"
HOTAN = "65320000000000000001"


@pytest.fixture
def console_server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start(ServerConfig(port=0, db_path=tmp_path / "ledger.db", max_workers=8, console_port=0))
    yield running
    running.stop(grace=1)


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[object]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(chromium).exists(), "headless Chromium is needed (scripts/test installs it)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with pw.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh user-data dir per test
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1300, "height": 900},
        )
        page = context.new_page()
        page.set_default_timeout(15_000)
        yield page
        context.close()


def test_a_settle_appears_live_and_its_page_explains_the_qinghai_amounts(console_server, browser_page):
    page = browser_page
    page.goto(f"{console_server.console.url}/journal")
    pw.expect(page.locator("#journal-rows")).to_contain_text("No calls yet")

    # Settled through gRPC while the page is open: it must appear without a reload.
    his = Hospital.connect(console_server.target, CANCER_HOSPITAL)
    try:
        answer = his.settle(
            QINGHAI, "M00503", "2021-12-09", [Fee("A-CONSULT-001", 5000), Fee("A-CHEMO-001", 12963)]
        )
    finally:
        his.close()
    msgid = answer.settlement.msgid
    row = page.locator("#journal-rows tr", has_text=msgid)
    pw.expect(row).to_contain_text("SettleVisit", timeout=10_000)
    pw.expect(row).to_contain_text("OK")
    page.screenshot(path=str(SHOTS / "journal-live.png"), full_page=True)

    row.locator("a").first.click()
    page.locator("#settlement-link").click()
    pw.expect(page).to_have_url(re.compile(f"/settlements/{answer.settlement.settlement_id}$"))
    # Qinghai 2021 (docs/domain.md): in scope 50.00 + 129.63 = 179.63, all class A; the
    # deductible 50.00 is the patient's; the fund pays 100 % of 179.63 − 50.00 = 129.63;
    # the patient pays 179.63 − 129.63 = 50.00.
    assert page.locator("#total").inner_text() == "179.63"
    assert page.locator("#fund").inner_text() == "129.63"
    assert page.locator("#patient").inner_text() == "50.00"
    why = page.locator("#why").inner_text()
    assert "The year's deductible is 50.00; 0.00 of it was already used" in why
    assert "100% of 129.63 = 129.63" in why
    assert "179.63 − 129.63 = 50.00" in why
    assert "cap left after this visit: 49870.37".lower() in why.lower()  # cap 50,000.00 − 129.63
    policy = page.locator("#why a", has_text="policy 630000 · 390/M00503 since 2021-01-01").first
    assert policy.get_attribute("href") == "/world/policies/630000#terms-390-M00503"
    lines = page.locator("#lines").inner_text()
    assert "门诊诊查费" in lines and "catalog 110000 · A-CHEMO-001 since 2021-01-01" in lines
    page.screenshot(path=str(SHOTS / "settlement-qinghai.png"), full_page=True)

    policy.click()  # the link leads to the terms and their effective date
    terms = page.locator("#terms-390-M00503 + table")
    pw.expect(terms).to_contain_text("2021-01-01")
    pw.expect(terms).to_contain_text("50.00")


def test_a_refused_visit_shows_its_reason(console_server, browser_page):
    page = browser_page
    page.goto(f"{console_server.console.url}/journal?outcome=refused")
    his = Hospital.connect(console_server.target, CANCER_HOSPITAL)
    try:  # nobody of that number lives in the bundled world
        rejection = refused(
            lambda: his.settle("99999999999999999999", "M00503", "2021-12-09", [Fee("A-CONSULT-001", 5000)])
        )
    finally:
        his.close()
    assert rejection.reason == "PERSON_NOT_FOUND"
    row = page.locator("#journal-rows tr", has_text="PERSON_NOT_FOUND")
    pw.expect(row).to_contain_text("NOT_FOUND", timeout=10_000)
    row.locator("a").first.click()
    pw.expect(page.locator("#outcome")).to_contain_text("PERSON_NOT_FOUND")
    pw.expect(page.locator("#reason-meaning")).not_to_be_empty()
    assert page.locator("#settlement-link").count() == 0  # nothing was settled
    page.screenshot(path=str(SHOTS / "journal-refused.png"), full_page=True)


def test_the_person_page_shows_the_cap_left_after_the_hotan_visits(console_server, browser_page):
    his = Hospital.connect(console_server.target, CANCER_HOSPITAL)
    try:
        his.settle(HOTAN, "M00503", "2025-03-01", [Fee("A-TARGET-001", 1_000_000, 12)])
        his.settle(HOTAN, "M00503", "2025-04-01", [Fee("A-TARGET-001", 400_000)])
    finally:
        his.close()
    # Hotan 390/M00503 from 2025-01-01: deductible 0, ratio 75 %, cap 100,000.00 a year.
    # Visit 1: 12 × 10,000.00 = 120,000.00 -> fund 75 % = 90,000.00 (under the cap).
    # Visit 2: 4,000.00 -> fund 75 % = 3,000.00; fund paid 93,000.00; cap left 7,000.00.
    page = browser_page
    page.goto(f"{console_server.console.url}/people")
    page.fill("input[name=person_no]", HOTAN)
    page.click("button[type=submit]")
    row = page.locator("#totals tr[data-disease=M00503][data-year='2025']")
    pw.expect(row.locator(".cap-left")).to_have_text("7000.00")
    pw.expect(row).to_contain_text("93000.00")  # fund paid
    pw.expect(row).to_contain_text("100000.00")  # the cap
    pw.expect(page.locator("body")).to_contain_text("HT-R-0001")  # the registration
    page.screenshot(path=str(SHOTS / "person-hotan.png"), full_page=True)
