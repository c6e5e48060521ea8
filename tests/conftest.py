"""Shared test setup: one torch thread per test process, and a quiet diffusers oracle."""

from pathlib import Path

import pytest
import torch
from browser import headless_chromium

# Tests run tiny models in parallel processes (pytest -n 2 on two cores): extra OpenMP threads only add barriers,
# and on busy cores they stall (a 0.4 ms call took 70 ms with two threads while another process ran).
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _quiet_diffusers_logging():
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    yield


@pytest.fixture
def chromium(tmp_path: Path):
    """Headless Chromium (skipped with the reason where it is not installed)."""
    return headless_chromium(tmp_path)
