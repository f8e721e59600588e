"""The PostgreSQL test server: a real cluster the tests can crash and start again."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest


def test_server_listens_on_its_own_port_and_survives_a_crash(pg_server: Any, pg_url: str) -> None:
    assert pg_server.port != 5432
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
        port = conn.execute("SHOW port").fetchone()
    assert port == (str(pg_server.port),)

    pg_server.kill()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_url, connect_timeout=2).close()
    pg_server.start()
    with psycopg.connect(pg_url) as conn:  # committed rows survive the crash
        assert conn.execute("SELECT sum(x) FROM t").fetchone() == (3,)
