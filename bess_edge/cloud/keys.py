"""API keys of the cloud in the ``users`` table, behind the API's :class:`KeyStore` protocol.

Only the SHA-256 of each key is stored (bess_edge/storage/keys.py says why one fast hash is right
for 256-bit random keys). A key is found by its hash through the unique index: the lookup's
timing depends on the hash of a secret the caller sent, which tells nothing about any stored key.
"""

from __future__ import annotations

import psycopg

from bess_edge.cloud.writer import now_ms
from bess_edge.storage.keys import ApiKeyInfo, KeyRefused, Role, hash_key, new_key


class PgKeyStore:
    def __init__(self, database_url: str) -> None:
        self.url = database_url

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    def create(self, name: str, role: Role) -> str:
        key = new_key()
        ApiKeyInfo(name=name, role=role, created_ts_ms=0, key_hint="")  # validates the name
        with self._connect() as conn:
            try:
                conn.execute(
                    "INSERT INTO users (name, role, key_sha256, key_hint, created_ms) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (name, role, hash_key(key), key[-4:], now_ms()),
                )
            except psycopg.errors.UniqueViolation:
                raise KeyRefused(
                    f"a key named {name!r} exists; revoke it first or pick another"
                ) from None
        return key

    def list(self) -> list[ApiKeyInfo]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT name, role, created_ms, key_hint FROM users WHERE NOT disabled "
                "ORDER BY name"
            ).fetchall()
        return [ApiKeyInfo(name=n, role=r, created_ts_ms=c, key_hint=h) for n, r, c, h in rows]

    def revoke(self, name: str) -> None:
        with self._connect() as conn:
            if conn.execute("DELETE FROM users WHERE name = %s", (name,)).rowcount == 0:
                raise KeyRefused(f"no key named {name!r}")

    def verify(self, key: str) -> ApiKeyInfo | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT name, role, created_ms, key_hint FROM users "
                "WHERE key_sha256 = %s AND NOT disabled",
                (hash_key(key),),
            ).fetchone()
        if row is None:
            return None
        return ApiKeyInfo(name=row[0], role=row[1], created_ts_ms=row[2], key_hint=row[3])
