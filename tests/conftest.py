"""Shared fixtures. Real reference data lives in ../shared/data (never copied into the repository).

Tests that need it use the ``shared_data`` fixture: they skip when the folder is absent, and fail
instead when ``USX_REQUIRE_SHARED_DATA=1`` (CI sets it), so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("USX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def require_shared(*relative: str) -> Path:
    """Path under the shared data folder; skip (or fail under USX_REQUIRE_SHARED_DATA=1) if missing."""
    path = SHARED_DATA.joinpath(*relative)
    if not path.exists():
        msg = f"shared reference data not found: {path}"
        if os.environ.get("USX_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg + " (USX_REQUIRE_SHARED_DATA=1)")
        pytest.skip(msg)
    return path


@pytest.fixture
def shared_data() -> Path:
    return require_shared()


@pytest.fixture
def plus_data() -> Path:
    return require_shared("plus")


@pytest.fixture
def vertebrae_data() -> Path:
    return require_shared("vertebrae")
