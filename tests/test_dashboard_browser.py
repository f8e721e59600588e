"""The dashboard in a real headless Chromium against a real daemon and `bess-edge api`.

An operator signs in, sees the device and its cells, acknowledges an active alert and sees it
acknowledged; a viewer is refused the acknowledgement; a revoked key brings the sign-in prompt
back. Screenshots at laptop and phone width go to docs/ (the README shows them).
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import Site, bess_edge, start_site
from bess_edge.drivers.sim import SimOptions, SimulatedString
from conftest import sim_device, wait_until

from bess_edge.chemistry import NMC
from bess_edge.diagnostics import Diagnostician

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="chromium and chromium-driver are not installed (scripts/test.sh installs them)",
)
LAPTOP, PHONE = (1366, 1200), (390, 844)
# The screenshots docs/ shows are refreshed on request only, so a test run leaves the clone clean:
# BESS_EDGE_SCREENSHOTS=docs scripts/test.sh tests/test_dashboard_browser.py
SHOTS = Path(
    os.environ.get("BESS_EDGE_SCREENSHOTS")
    or Path(tempfile.gettempdir(), "bess-edge-screenshots")  # one folder, overwritten each run
)
SECOND_RULE = {"name": "pack-high-2", "metric": "pack_voltage_v", "above": 2.0}


def _device() -> dict:
    # Cell 5 heated: its sensor shows hot; frequency regulation gives the trend a shape.
    fault = {"kind": "over_temperature", "cell": 5, "heat_w": 25.0, "at_s": 0.0}
    return sim_device(
        poll_interval_s=0.5,
        options={"profile": "regulation", "time_scale": 30.0, "c_rate": 0.5,
                 "initial_soc_pct": 55, "faults": [fault]},
    )  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    s = start_site(tmp_path_factory.mktemp("dash"), [_device()], extra_rules=[SECOND_RULE])
    wait_until(lambda: len(s.get("/api/v1/alerts", state="active")) == 2, timeout=30)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium look for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(*LAPTOP)
    yield driver
    driver.quit()


def _wait(driver, js: str, timeout: float = 20.0):
    """Poll a JavaScript expression in the page until it is truthy."""
    return wait_until(lambda: driver.execute_script(f"return {js}"), timeout=timeout)


def _sign_in(driver, site: Site, key: str) -> None:
    driver.get(site.url + "/#/")
    driver.execute_script("localStorage.clear()")
    driver.refresh()  # a new page: a hash-only navigation would keep the signed-in one
    _wait(driver, "document.querySelector('#login-dialog').open")
    driver.find_element("id", "key").send_keys(key)
    driver.find_element("id", "login").click()
    _wait(driver, "!document.querySelector('#login-dialog').open")


def _click(driver, selector: str) -> None:
    """Click what the selector finds: pages re-render every 2 s, so an element found just before
    a refresh is stale by the click; find it again until one click lands."""
    from selenium.common.exceptions import StaleElementReferenceException

    def attempt() -> bool:
        try:
            driver.find_element("css selector", selector).click()
        except StaleElementReferenceException:
            return False
        return True

    wait_until(attempt, timeout=10)


def _shot(driver, name: str) -> None:
    driver.execute_script("document.querySelector('#toast').hidden = true")
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one


def _samples(site: Site) -> int:
    conn = sqlite3.connect(f"file:{site.db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM samples").fetchone()[0])
    finally:
        conn.close()


def _alert_row(site: Site, rule: str) -> dict:
    (alert,) = site.get("/api/v1/alerts", state="active", rule=rule)
    return alert


def test_operator_sees_the_device_and_cells_and_acks_an_alert(site, browser):
    d = browser
    _sign_in(d, site, site.keys["operator"])
    _wait(d, "document.querySelector('.device-card[data-device=\"rack-1\"] .soc')")
    assert "operator" in d.find_element("id", "who").text
    # Give the trend a few minutes of simulated cycling and the heated cell time to stand out.
    wait_until(lambda: _samples(site) >= 150, timeout=120)
    _wait(d, "document.querySelector('.device-card .soc').textContent !== '–'", timeout=30)
    _shot(d, "dashboard-overview.png")
    _click(d, '.device-card[data-device="rack-1"]')
    _wait(d, "document.querySelectorAll('#cells .cell').length === 16")
    _click(d, 'button[data-range="5m"]')
    _wait(d, "document.querySelector('button[data-range=\"5m\"]').classList.contains('on')")
    _wait(d, "document.querySelectorAll('#temps .temp').length === 16")
    _wait(d, "document.querySelector('#temps .temp.hot')", timeout=60)
    hot = d.execute_script(
        "return [...document.querySelectorAll('#temps .temp.hot')].map((e) => e.dataset.sensor)"
    )
    assert "5" in hot  # the heated cell's sensor (its neighbours may warm up past the mark too)
    assert "hot" in d.find_element("css selector", '#cells .cell[data-index="5"]').get_attribute(
        "class"
    )
    # The trend was drawn: the canvas holds non-background pixels.
    drawn = d.execute_script(
        "const c = document.querySelector('#trend'); const g = c.getContext('2d');"
        "const px = g.getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i]) n++; return n;"
    )
    assert drawn > 1000
    assert "SOC" in d.find_element("id", "diagnosis").text
    source = site.get("/api/v1/devices/rack-1")["diagnosis"]["ocv_source"]
    assert _panel(d)["ocv"].startswith(source)
    _shot(d, "dashboard-device.png")

    alert = _alert_row(site, "pack-high")
    d.get(site.url + "/#/alerts")
    button = f'tr[data-alert-id="{alert["id"]}"] button.ack'
    _wait(d, f"document.querySelector('{button}') && !document.querySelector('{button}').disabled")
    _click(d, button)
    _wait(d, f"document.querySelector('#active-alerts tr[data-alert-id=\"{alert['id']}\"] .acked')")
    text = d.find_element("css selector", f'#active-alerts tr[data-alert-id="{alert["id"]}"]').text
    assert "acknowledged by api:op-key" in text
    assert site.get(f"/api/v1/alerts/{alert['id']}")["acked_by"] == "api:op-key"
    _shot(d, "dashboard-alerts.png")

    d.set_window_size(*PHONE)
    d.get(site.url + "/#/device/rack-1")
    _wait(d, "document.querySelectorAll('#cells .cell').length === 16")
    _wait(d, "document.querySelector('#dev-comms').textContent === 'ok'")
    width = d.execute_script("return document.documentElement.scrollWidth")
    assert width <= PHONE[0]  # no sideways scrolling on a phone
    _shot(d, "dashboard-phone.png")
    d.set_window_size(*LAPTOP)


def _panel(driver) -> dict[str, str]:
    """The diagnosis panel's values by their data-field."""
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#diagnosis [data-field]')]"
        ".map((e) => [e.dataset.field, e.textContent]))"
    )


def _learned_diagnosis() -> dict:
    """23 h of a simulated 8-cell rack (a 6-h daily cycle with rests) through the engine, as
    the API serves it: the OCV learned, capacity, usable energy and forecast known. The last
    hour is polled every 2 s, which sees a 0.2C step (the small-signal R0; a pulse value
    needs 0.4C)."""
    options = SimOptions(cells=8, profile="daily", seed=2, day_length_s=21_600.0)
    sim = SimulatedString(options, NMC, 100.0)
    diag = Diagnostician("rack-2", NMC, 100.0)
    for reading in itertools.chain(
        sim.readings(duration_s=79_200, poll_s=60.0),
        sim.readings(duration_s=3_600, poll_s=2.0, start_ms=79_200_000),
    ):
        d = diag.update(reading)
    return d.to_dict(cell_arrays=False)


def test_the_diagnosis_panel_shows_each_estimate_with_its_sigma(site, browser):
    g = _learned_diagnosis()
    assert g["ocv_source"] == "learned" and g["usable_energy_wh"] is not None  # the case tested
    d = browser
    _sign_in(d, site, site.keys["viewer"])
    # The page's own renderer on a panel outside the view it refreshes.
    d.execute_script(
        "document.body.insertAdjacentHTML('beforeend', '<div id=\"diagnosis\"></div>');"
        "renderDiagnosis({diagnosis: arguments[0]})",
        g,
    )
    shown = _panel(d)
    soh_sigma = g["soh_pct"] * g["capacity_uncertainty_ah"] / g["capacity_ah"]
    assert shown["soh"] == f"{g['soh_pct']:.1f} ± {soh_sigma:.1f} %"
    assert shown["capacity"] == f"{g['capacity_ah']:.1f} ± {g['capacity_uncertainty_ah']:.1f} Ah"
    assert shown["soh-energy"] == (
        f"{g['soh_energy_pct']:.1f} ± {g['soh_energy_uncertainty_pct']:.1f} %"
    )
    assert shown["usable"] == (
        f"{g['usable_capacity_ah']:.1f} ± {g['usable_capacity_uncertainty_ah']:.1f} Ah · "
        f"{g['usable_energy_wh'] / 1e3:.2f} ± {g['usable_energy_uncertainty_wh'] / 1e3:.2f} kWh"
    )
    assert shown["recoverable"] == f"{g['recoverable_capacity_ah']:.1f} Ah"
    ten_years = (g["soh_forecast_pct"][2], g["soh_forecast_low_pct"][2],
                 g["soh_forecast_high_pct"][2])  # fmt: skip
    assert shown["forecast"].endswith("10 y {:.0f} ({:.0f}–{:.0f}) %".format(*ten_years))
    assert shown["ocv"] == f"learned (rests fit to {1e3 * g['ocv_fit_residual_v']:.1f} mV)"
    # No step of 0.4C: no pulse value, no sigma; the small-signal R0 (no sigma of its own).
    assert g["r0_pulse_1s_ohm"] is None and shown["r0-pulse"] == "– mΩ"
    assert shown["r0-small"] == f"{1e3 * g['r0_small_signal_ohm']:.2f} mΩ"


def test_viewer_is_refused_the_ack(site, browser):
    d = browser
    _sign_in(d, site, site.keys["viewer"])
    alert = _alert_row(site, "pack-high-2")
    d.get(site.url + "/#/alerts")
    button = f'tr[data-alert-id="{alert["id"]}"] button.ack'
    _wait(d, f"document.querySelector('{button}')")
    assert d.execute_script(f"return document.querySelector('{button}').disabled") is True
    # Forced past the disabled button, the server refuses and the page says why.
    d.execute_script(f"window.bess.ack({alert['id']})")
    _wait(d, "!document.querySelector('#toast').hidden")
    assert "needs the operator role" in d.find_element("id", "toast").text
    conn = sqlite3.connect(f"file:{site.db}?mode=ro", uri=True)
    (acked,) = conn.execute(
        "SELECT acked_ts_ms FROM alerts WHERE id = ?", (alert["id"],)
    ).fetchone()
    conn.close()
    assert acked is None


def test_a_revoked_key_brings_back_the_sign_in_prompt(site, browser):
    d = browser
    out = bess_edge("api-key", "create", "temp", "--role", "viewer", "--config", str(site.config))
    _sign_in(d, site, out.stdout.strip().splitlines()[-1])
    _wait(d, "document.querySelector('.device-card')")
    assert bess_edge("api-key", "revoke", "temp", "--config", str(site.config)).returncode == 0
    _wait(d, "document.querySelector('#login-dialog').open", timeout=10)
    assert "sign in again" in d.find_element("id", "login-error").text


def test_operator_adds_a_threshold_and_admin_creates_a_key_in_the_page(site, browser):
    d = browser
    _sign_in(d, site, site.keys["operator"])
    d.get(site.url + "/#/thresholds")
    _wait(d, "document.querySelector('tr[data-rule=\"pack-high\"]')")
    form = d.find_element("id", "rule-form")
    for name, value in (("name", "cell-cold"), ("metric", "cell_temperature_c"),
                        ("level", "5"), ("for_s", "10")):  # fmt: skip
        form.find_element("name", name).send_keys(value)
    form.find_element("name", "dir").send_keys("below")
    form.find_element("css selector", "button[type=submit]").click()
    _wait(d, "document.querySelector('tr[data-rule=\"cell-cold\"]')")
    row = d.find_element("css selector", 'tr[data-rule="cell-cold"]').text
    assert "< 5" in row and "api" in row
    rules = {r["rule"]["name"]: r for r in site.get("/api/v1/thresholds")}
    assert rules["cell-cold"]["rule"]["below"] == 5 and rules["cell-cold"]["rule"]["for_s"] == 10

    _sign_in(d, site, site.keys["admin"])
    d.get(site.url + "/#/keys")
    _wait(d, "document.querySelector('#key-form')")
    d.find_element("css selector", "#key-form input[name=name]").send_keys("night-shift")
    d.find_element("css selector", "#key-form button[type=submit]").click()
    _wait(d, "document.querySelector('#new-key .created-key')")
    key = d.find_element("css selector", "#new-key .created-key").text
    with site.client(key=key) as c:
        assert c.get("/api/v1/me").json() == {"name": "night-shift", "role": "viewer"}
