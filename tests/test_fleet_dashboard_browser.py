"""The fleet's dashboard in a real headless Chromium against a real PostgreSQL.

A cloud engineer signs in on the fleet page, sees every site, opens one and lands on that site's
dashboard (the gateway's own pages, served under /sites/<site>/) already signed in.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import uvicorn
from conftest import free_port, wait_until
from test_dashboard_browser import _click, _wait, browser  # noqa: F401  (fixture)
from test_dashboard_browser import pytestmark as needs_chromium
from test_ingest_storage import filled  # noqa: F401  (fixture)
from test_ingest_writer import store  # noqa: F401  (fixture)

from bess_edge.cloud.api import fleet_app
from bess_edge.cloud.keys import PgKeyStore

pytestmark = needs_chromium


@pytest.fixture
def fleet_url(filled, pg_url) -> Iterator[str]:  # noqa: F811
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(fleet_app(pg_url), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_a_fleet_viewer_lists_the_sites_and_opens_one_signed_in(fleet_url, pg_url, browser):  # noqa: F811
    key = PgKeyStore(pg_url).create("fleet-viewer", "viewer")
    d = browser
    d.get(fleet_url + "/")
    d.execute_script("localStorage.clear()")
    d.refresh()
    _wait(d, "document.querySelector('#login-dialog').open")
    d.find_element("id", "key").send_keys(key)
    d.find_element("id", "login").click()
    _wait(d, "document.querySelectorAll('.site-card').length === 2")
    found = d.find_elements("css selector", ".site-card")
    cards = {c.get_attribute("data-site"): c.text for c in found}
    assert set(cards) == {"site-a", "site-b"}
    assert "Active alerts\n1" in cards["site-a"], cards["site-a"]

    _click(d, ".site-card[data-site='site-a']")
    wait_until(lambda: d.current_url.endswith("/sites/site-a/"), timeout=10)
    # The site's dashboard asks its API relative to the page, so it reads site-a's devices.
    _wait(d, "document.querySelector(\".device-card[data-device='rack-1']\")")
    assert "fleet-viewer · viewer" in d.find_element("id", "who").text
    assert not d.execute_script("return document.querySelector('#login-dialog').open")
