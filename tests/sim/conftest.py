"""One simulated session shared by the simulator tests (a few seconds to make)."""

from __future__ import annotations

import pytest

from usx_stream.sim.session import simulate_session

SEED = 4
N_FRAMES = 45


@pytest.fixture(scope="session")
def sim_session():
    return simulate_session(SEED, n_frames=N_FRAMES, passes=3)
