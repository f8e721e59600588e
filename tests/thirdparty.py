"""Where the third-party test data lives: ``../shared/thirdparty`` beside the checkout, or one
level further up from a worktree kept in a subdirectory (``wt/<name>``)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_CANDIDATES = [p / "shared" / "thirdparty" for p in (REPO.parent, REPO.parent.parent)]
THIRDPARTY = next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[0])
FOXBMS = THIRDPARTY / "foxbms"
