"""`bess-edge api` served over TLS with a CORS allow-list, as a site LAN deployment would be."""

from __future__ import annotations

import ssl
import subprocess

import httpx
from api_support import start_site


def test_https_and_only_listed_origins_get_cors_headers(tmp_path):
    cert, key = tmp_path / "api.crt", tmp_path / "api.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    site = start_site(
        tmp_path,
        api_options={"tls_cert_file": str(cert), "tls_key_file": str(key),
                     "cors_origins": ["https://scada.example"]},
    )  # fmt: skip
    try:
        assert site.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(cert))  # the cert really is the one used
        with httpx.Client(base_url=site.url, verify=trust) as c:
            assert c.get("/health").json()["status"] == "ok"
        preflight = {"Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "authorization"}  # fmt: skip
        with site.client() as c:
            ok = c.options(
                "/api/v1/devices", headers={"Origin": "https://scada.example", **preflight}
            )
            assert ok.headers["access-control-allow-origin"] == "https://scada.example"
            bad = c.options(
                "/api/v1/devices", headers={"Origin": "https://evil.example", **preflight}
            )
            assert "access-control-allow-origin" not in bad.headers
        with site.client("viewer") as c:
            got = c.get("/api/v1/devices", headers={"Origin": "https://evil.example"})
            assert got.status_code == 200 and "access-control-allow-origin" not in got.headers
    finally:
        site.stop()
