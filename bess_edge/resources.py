"""Files shipped with bess-edge (DBCs, example configs), found the same way installed or not.

Installed from a wheel they live inside the package (``bess_edge/_data/dbc``); in a checkout or an
editable install they are the repository's ``dbc/`` and ``config/`` folders.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The folder of shipped ``name`` files: ``"dbc"`` or ``"config"``."""
    installed = _PACKAGE / "_data" / name
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / name


def shipped_file(kind: str, name: str) -> Path | None:
    """A shipped file by name (``shipped_file("dbc", "pylontech")`` finds pylontech.dbc)."""
    folder = data_dir(kind)
    for candidate in (folder / name, *folder.glob(f"{name}.*")):
        if candidate.is_file():
            return candidate
    return None
