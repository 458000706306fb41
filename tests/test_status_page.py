"""The installer's status page, looked at in a real headless Chromium (Debian's chromium + chromium-driver, driven
by selenium): reader, SAM, sync backlog, open alarm, last decisions, last self-test; read-only, no secrets."""

import datetime as dt
import json
import urllib.error
import urllib.request

import pytest

from common.config import ConfigError, load_config
from simulator.inprocess import InProcessReader
from terminal.status_page import StatusPage, selftest_path
from tests.support import MONDAY_10AM, make_card, make_sam, make_terminal


@pytest.fixture
def page(tmp_path):
    sam = make_sam()
    term, _ = make_terminal(tmp_path, sam, "door")
    reader = InProcessReader("ACS ACR1252 PICC 00 00")
    reader.tap(make_card(sam))
    term.handle_tap(reader.wait_for_card(1), MONDAY_10AM)
    term.reader_status = {"name": reader.name, "state": "ready for taps"}
    term.event_log.append(
        MONDAY_10AM + dt.timedelta(minutes=1),
        "door.forced_open",
        asn=None,
        reason_code="forced_open",
        message="Door forced open: security has been alerted",
        detail={},
    )
    selftest_path(term.config).write_text(
        json.dumps(
            {
                "time": "2026-11-23T10:00:00+08:00",
                "summary": "all checks passed",
                "results": [{"check": "reader", "status": "PASS", "found": "ACS ACR1252 PICC 00 00 present"}],
            }
        )
    )
    status = StatusPage(term.config, term.live_status, "127.0.0.1", 0)
    yield term, f"http://127.0.0.1:{status.port}/"
    status.close()
    term.event_log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()


def test_status_page_in_a_real_browser(page, browser):
    from selenium.webdriver.common.by import By

    term, url = page
    browser.get(url)
    assert browser.title == "onecard 000000000101 status"
    text = lambda element_id: browser.find_element(By.ID, element_id).text  # noqa: E731
    assert text("reader") == "ACS ACR1252 PICC 00 00: ready for taps"
    assert text("sam") == "keystore, not bound"
    assert text("sync") == "no sync agent configured"
    assert "door.forced_open" in text("alarms") and "security has been alerted" in text("alarms")
    rows = browser.find_elements(By.CSS_SELECTOR, "#decisions tr")
    assert len(rows) == 2 and "door.grant" in rows[1].text and "Welcome, Zhang Wei" in rows[1].text
    assert "reader PASS" in text("selftest")
    # Read-only: nothing to press or fill in, and nothing secret in the page.
    assert not browser.find_elements(By.CSS_SELECTOR, "form, input, button, textarea, select")
    source = browser.page_source
    assert "unused.pass" not in source and "keystore" not in source.split("<h2>SAM</h2>")[0]


def test_status_json_and_no_actions(page):
    term, url = page
    with urllib.request.urlopen(url + "status.json", timeout=5) as r:
        data = json.loads(r.read())
    assert data["open_alarms"][0]["kind"] == "door.forced_open"
    assert [d["kind"] for d in data["decisions"]] == ["door.grant"]
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(urllib.request.Request(url, data=b"x", method="POST"), timeout=5)
    assert exc.value.code == 405
    term.event_log.append(
        MONDAY_10AM + dt.timedelta(minutes=2),
        "door.closed",
        asn=None,
        reason_code="closed",
        message="Door closed",
        detail={"alarm": "door.forced_open"},
    )
    with urllib.request.urlopen(url + "status.json", timeout=5) as r:
        assert json.loads(r.read())["open_alarms"] == []


@pytest.mark.parametrize(
    "listen, ok", [('"127.0.0.1:8080"', True), ('""', True), ('"8080"', False), ('"127.0.0.1:99999"', False)]
)
def test_status_listen_setting(tmp_path, listen, ok):
    from tests.support import TERMINAL_TOML

    cfg = tmp_path / "t.toml"
    cfg.write_text(
        TERMINAL_TOML.format(kind="door", db=tmp_path / "e.db", bl=tmp_path / "b.db") + f"[status]\nlisten = {listen}\n"
    )
    if ok:
        load_config(cfg)
    else:
        with pytest.raises(ConfigError, match=r"\[status\].listen"):
            load_config(cfg)
