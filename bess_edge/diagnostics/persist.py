"""Estimator state as bytes: a versioned ``.npz`` archive of plain arrays.

``numpy.savez`` with ``allow_pickle=False`` on load means a corrupt or hostile blob can only
fail to parse, never run code; the version and the device's identity travel in a small JSON
header so an incompatible blob is recognised and ignored.
"""

from __future__ import annotations

import io
import json
from typing import Any, cast

import numpy as np

FORMAT_VERSION = 1


def pack(header: dict[str, Any], parts: dict[str, dict[str, Any]]) -> bytes:
    """Serialise ``{component: {field: array}}`` with a JSON header into one blob."""
    arrays = {
        f"{component}/{name}": np.asarray(value)
        for component, fields in parts.items()
        for name, value in fields.items()
    }
    meta = json.dumps({**header, "version": FORMAT_VERSION}).encode()
    buffer = io.BytesIO()
    arrays["__header__"] = np.frombuffer(meta, dtype=np.uint8)
    np.savez_compressed(buffer, **cast(dict[str, Any], arrays))  # no key is "allow_pickle"
    return buffer.getvalue()


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The header and components of a blob; ValueError if it is not one of ours."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            header = json.loads(bytes(archive["__header__"]).decode())
            parts: dict[str, dict[str, Any]] = {}
            for key in archive.files:
                if key == "__header__":
                    continue
                component, _, name = key.partition("/")
                parts.setdefault(component, {})[name] = archive[key]
    except Exception as exc:  # zipfile, numpy and json each raise their own kinds
        raise ValueError(f"not a diagnostics state blob: {exc}") from exc
    version = header.get("version") if isinstance(header, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"state version {version!r}, expected {FORMAT_VERSION}")
    return header, parts
