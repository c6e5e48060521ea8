"""Stopping a comparison with real signals (Ctrl-C's SIGINT, SIGTERM from CI timeouts, SIGHUP from a closed
terminal): the runs that finished are written, the exit code is 128 + the signal, the terminal is restored."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# Enough work that a signal lands mid-plan: 24 runs of 1000 model calls on the built-in model (~0.3 s each).
LONG_RUN = ("run", "--schedulers", ",".join(["euler", "dpm", "unipc"] * 8), "--steps", "1000", "--reference", "none",
            "--out", "out")


def start(cwd: Path, *args: str, **streams) -> subprocess.Popen:
    """`python -m schedcmp ARGS` in ``cwd``, stdout and stderr piped unless given."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "CUDA_VISIBLE_DEVICES": ""}  # auto = the CPU everywhere
    env.pop("SCHEDCMP_DEBUG", None)
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **streams}
    return subprocess.Popen([sys.executable, "-m", "schedcmp", *args], cwd=cwd, env=env, text=True, **streams)


def wait_for(condition: Callable[[], object], process: subprocess.Popen, limit: float = 60) -> None:
    """Poll until ``condition()`` holds; fail if the process ended first or the limit passed."""
    deadline = time.monotonic() + limit
    while not condition():
        assert process.poll() is None, f"schedcmp ended early with {process.returncode}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def first_image_staged(root: Path) -> Callable[[], bool]:
    return lambda: any(root.glob(".schedcmp-incomplete-out-*/images/*.png"))


def catches(pid: int, number: int) -> bool:
    """Whether the process has installed a handler for signal ``number`` (the SigCgt mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask >> (number - 1) & 1)


@pytest.mark.parametrize(("number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_stop_signal_writes_the_finished_runs(tmp_path: Path, number: int, code: int) -> None:
    process = start(tmp_path, *LONG_RUN)
    wait_for(first_image_staged(tmp_path), process)
    process.send_signal(number)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert stderr.splitlines()[-1] == "interrupted: wrote the runs that finished to out"
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    statuses = [run["status"] for run in record["runs"]]
    assert record["interrupted"] is True and statuses[0] == "ok" and statuses[-1] == "not run"
    finished = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    assert len(finished) == statuses.count("ok")
    assert not list(tmp_path.glob(".schedcmp-incomplete-*"))  # the staging folder was moved in


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see when handlers are installed")
def test_a_stop_signal_during_start_up_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    process = start(tmp_path, *LONG_RUN)
    wait_for(lambda: catches(process.pid, signal.SIGTERM), process)  # the boundary is up; torch is still importing
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert (process.returncode, stderr.splitlines()) == (
        143, ["interrupted: SIGTERM before any run finished; nothing was written"])
    assert sorted(tmp_path.iterdir()) == []


def test_sigterm_restores_the_terminal_cursor(tmp_path: Path) -> None:
    """Under a terminal the progress bar hides the cursor; a SIGTERM must still show it again."""
    controller, terminal = pty.openpty()
    process = start(tmp_path, *LONG_RUN, stdout=terminal, stderr=terminal)
    os.close(terminal)
    screen = b""
    try:
        wait_for(first_image_staged(tmp_path), process)
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the other side closed
                    break
                if not chunk:
                    break
                screen += chunk
            elif process.poll() is not None:
                break
        process.wait(timeout=60)
    finally:
        os.close(controller)
    assert process.returncode == 143
    hidden, shown = screen.rfind(b"\x1b[?25l"), screen.rfind(b"\x1b[?25h")
    assert hidden >= 0, "the progress bar never hid the cursor: was this a terminal?"
    assert shown > hidden
