"""Can this machine run a config? The checks of ``run`` and ``check-config`` beyond its syntax.

A config can be valid TOML with valid values and still not run: a TLS file that is not there, a
password file that is a directory or unreadable by the service's user, a storage path that is a
directory or on a virtual filesystem, an HTTP address that is not on this machine. Each would
otherwise surface later, as a crash loop or a sync that never connects; here it is refused with
its key path.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from bess_edge.config import HttpConfig, StorageConfig

Loc = tuple[str | int, ...]
T = TypeVar("T")
# Kernel views, not disks: SQLite cannot keep a database there.
VIRTUAL_FILESYSTEMS = (Path("/proc"), Path("/sys"), Path("/dev"))


def preflight(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """Problems that stop ``data`` (the merged config tables) from running here. Each value is
    read on its own, so that a mistake elsewhere in its section does not hide it."""
    problems: list[tuple[Loc, str]] = []
    path = _value(data, ("storage", "path"), Path, StorageConfig.model_fields["path"].default)
    if path is not None:
        problems += [(("storage", "path"), why) for why in storage_path_problems(path)]
    if _value(data, ("mqtt", "enabled"), bool, False):
        files: list[Loc] = [("mqtt", "password_file")]
        if _value(data, ("mqtt", "tls", "enabled"), bool, False):
            files += [("mqtt", "tls", key) for key in ("ca_file", "cert_file", "key_file")]
        for loc in files:
            file = _value(data, loc, Path, None)
            if file is not None:
                problems += [(loc, why) for why in readable_file_problems(file)]
    if _value(data, ("http", "enabled"), bool, False):
        host = _value(data, ("http", "host"), str, HttpConfig.model_fields["host"].default)
        if host is not None:
            problems += [(("http", "host"), why) for why in bindable_host_problems(host)]
    return problems


def _value(data: Any, loc: Loc, kind: type[T], default: T | None) -> T | None:
    """The value at ``loc`` as ``kind`` (the default when absent), or None when it is not a
    valid ``kind``: the config check reports that one with its key path."""
    for part in loc:
        if not isinstance(data, dict):
            return None
        if part not in data:
            return default
        data = data[part]
    try:
        return TypeAdapter(kind).validate_python(data)
    except ValidationError:
        return None


def readable_file_problems(path: Path) -> list[str]:
    """Why the service could not read ``path``, if it could not."""
    if "\0" in str(path):
        return []  # refused by the model, with its key path
    try:
        with path.open("rb") as f:
            empty = not f.read(1)
    except FileNotFoundError:
        return [f"{str(path)!r}: file not found"]
    except IsADirectoryError:
        return [f"{str(path)!r} is a directory, not a file"]
    except PermissionError:
        return [f"{str(path)!r} cannot be read by this user (uid {os.getuid()}): permission denied"]
    except OSError as exc:
        return [f"{str(path)!r} cannot be read: {exc.strerror or exc}"]
    return [f"{str(path)!r} is empty"] if empty else []


def storage_path_problems(path: Path) -> list[str]:
    """Why SQLite could not keep its database at ``path``, if it could not."""
    if "\0" in str(path):
        return []  # refused by the model, with its key path
    resolved = path.resolve()
    for root in VIRTUAL_FILESYSTEMS:
        if resolved == root or root in resolved.parents:
            return [f"{str(path)!r} is under {root}, a kernel filesystem, not a disk"]
    if resolved.is_dir():
        return [f"{str(path)!r} is a directory; give a file, e.g. {str(path / 'bess-edge.db')!r}"]
    if resolved.exists():
        if not resolved.is_file():
            return [f"{str(path)!r} is not a regular file"]
        if not os.access(resolved, os.R_OK | os.W_OK):
            return [f"{str(path)!r} cannot be written by this user (uid {os.getuid()})"]
        return []
    ancestor = resolved.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return [f"{str(path)!r} cannot be created: {str(ancestor)!r} is a file, not a directory"]
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return [
            f"{str(path)!r} cannot be created: {str(ancestor)!r} is not writable by this user "
            f"(uid {os.getuid()})"
        ]
    return []


def bindable_host_problems(host: str) -> list[str]:
    """An IP address must be one of this machine's (a name is resolved only when serving: a DNS
    lookup is no business of a config check)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return []
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return [f"{host!r} is not an address of this machine"]
            return [f"{host!r} cannot be listened on: {exc.strerror or exc}"]
    return []
