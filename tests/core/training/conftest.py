"""The noisy scene of the auto tests (scoring, quality estimate, race), made once per test module."""

from __future__ import annotations

import pytest
from scored_scene import make_scene


@pytest.fixture(scope="module")
def scene():
    return make_scene()
