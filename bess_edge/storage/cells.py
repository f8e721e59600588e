"""How per-cell arrays are stored: little-endian float32 BLOBs (0.1 mV at 4 V is plenty).

Shared by the write path (Store), the read path (SqliteStorage, export) and the sync encoder.
"""

from __future__ import annotations

import numpy as np

CELL_DTYPE = np.dtype("<f4")  # cell arrays on disk: 4 bytes a value


def pack_cells(values: np.ndarray) -> bytes | None:
    return values.astype(CELL_DTYPE).tobytes() if values.size else None


def unpack_cells(blob: bytes | None) -> np.ndarray:
    if not blob:
        return np.empty(0, dtype=np.float64)
    return np.frombuffer(blob, dtype=CELL_DTYPE).astype(np.float64)
