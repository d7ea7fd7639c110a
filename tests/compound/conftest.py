"""Fixtures of the compounding tests."""

from __future__ import annotations

import pytest

from compound_frames import sweep_frames


@pytest.fixture
def frames():
    return sweep_frames(12)
