"""Shared test setup: quiet the diffusers oracle's logging so failures stay readable."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _quiet_diffusers_logging():
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    yield
