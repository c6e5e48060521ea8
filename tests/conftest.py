"""Shared test setup: one torch thread per test process, a quiet diffusers oracle, and the real command line."""

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
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


@pytest.fixture(scope="session")
def schedcmp() -> Iterator[Callable[..., subprocess.CompletedProcess]]:
    """`schedcmp ARGS` in a working folder: each call a fresh process running the real entry point, forked from
    one that imported torch once (tests/cli_forks.py)."""
    # CUDA_VISIBLE_DEVICES="": --device auto means the CPU on every machine, so a GPU box runs the same checks
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("SCHEDCMP_DEBUG", None)
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("cli_forks.py"))], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def call(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        server.stdin.write(json.dumps({"args": list(args), "cwd": str(cwd)}) + "\n")
        server.stdin.flush()
        answer = json.loads(server.stdout.readline())
        return subprocess.CompletedProcess(["schedcmp", *args], answer["code"], answer["stdout"], answer["stderr"])

    yield call
    server.stdin.close()
    server.wait(timeout=30)
