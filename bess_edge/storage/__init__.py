"""Read access to bess-edge data for the API: an interface and its backends (see base.py)."""

from bess_edge.storage.base import Storage

__all__ = ["Storage"]
