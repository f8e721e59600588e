"""API keys: who may call the API, with which role; only hashes are kept.

Keys are 256 random bits (``bek_`` + 43 URL-safe characters), so one SHA-256 is enough: a slow
password hash only helps against guessing low-entropy secrets, and a 2^256 search needs no
slowing down, while a fast hash keeps each request cheap. A presented key is hashed and compared
with every stored hash by :func:`hmac.compare_digest`, so timing says nothing about which
prefix matched; the plain key exists only in the ``create`` answer and the caller's hands.

On the gateway keys live in their own JSON file (:class:`FileKeyStore`), not in the daemon's
SQLite file: they are credentials, not telemetry, so they are never synced, exported or dropped
with old data; the file is 0600 and can be backed up or wiped on its own; and writing a key
never takes the write lock that the daemon's poll commits need. The cloud keeps them in
PostgreSQL behind the same :class:`KeyStore` protocol.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

Role = Literal["viewer", "operator", "admin"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}
KEY_PREFIX = "bek_"


class ApiKeyInfo(BaseModel):
    """A key as listed: never the key itself."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.@\-]{1,64}$")
    role: Role
    created_ts_ms: int
    key_hint: str  # the key's last 4 characters, to tell keys apart


class KeyRefused(ValueError):
    """A key operation refused, with a message for the user (duplicate name, unknown name)."""


@runtime_checkable
class KeyStore(Protocol):
    def create(self, name: str, role: Role) -> str:
        """Store a new key; return the plain key (shown once). Duplicate name -> KeyRefused."""
        ...

    def list(self) -> list[ApiKeyInfo]: ...

    def revoke(self, name: str) -> None:
        """Forget a key at once; an unknown name -> KeyRefused."""
        ...

    def verify(self, key: str) -> ApiKeyInfo | None:
        """The key's entry, or None when it is unknown or revoked."""
        ...


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class FileKeyStore:
    """Keys in a JSON file, re-read whenever it changes (a CLI revoke takes effect at once)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._entries: list[dict[str, object]] = []

    def _load(self) -> list[dict[str, object]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._entries = None, []
            return self._entries
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._entries = list(json.loads(self.path.read_text(encoding="utf-8"))["keys"])
            self._stamp = stamp
        return self._entries

    @contextmanager
    def _locked(self) -> Iterator[list[dict[str, object]]]:
        """Read-modify-write under an exclusive lock; written atomically, mode 0600."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = [dict(e) for e in self._load()]
            yield entries
            tmp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"keys": entries}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self._stamp = None

    def create(self, name: str, role: Role) -> str:
        key = new_key()
        info = ApiKeyInfo(name=name, role=role, created_ts_ms=int(time.time() * 1000),
                          key_hint=key[-4:])  # fmt: skip
        with self._locked() as entries:
            if any(e["name"] == name for e in entries):
                raise KeyRefused(f"a key named {name!r} exists; revoke it first or pick another")
            entries.append({**info.model_dump(), "sha256": hash_key(key)})
        return key

    def list(self) -> list[ApiKeyInfo]:
        return [ApiKeyInfo.model_validate(_public(e)) for e in self._load()]

    def revoke(self, name: str) -> None:
        with self._locked() as entries:
            kept = [e for e in entries if e["name"] != name]
            if len(kept) == len(entries):
                raise KeyRefused(f"no key named {name!r}")
            entries[:] = kept

    def verify(self, key: str) -> ApiKeyInfo | None:
        digest = hash_key(key)
        found = None
        for entry in self._load():  # every entry compared: no early exit to time
            if hmac.compare_digest(digest, str(entry["sha256"])):
                found = entry
        return ApiKeyInfo.model_validate(_public(found)) if found else None


def _public(entry: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in entry.items() if k != "sha256"}
