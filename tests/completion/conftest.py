"""Fixtures of the completion tests (the tiny configurations live in tiny_models.py)."""

from __future__ import annotations

import pytest
from tiny_models import tiny_config

from usx_stream.completion.nets import ModelConfig


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return tiny_config()
