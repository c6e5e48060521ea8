"""The output folder changes only when new results exist: after any failure the old results are byte-identical,
--overwrite swaps new for old at the end, files of the user's own stay, and symlinks are never followed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

QUICK = ("--schedulers", "ddim,euler", "--steps", "3")


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file's bytes and every symlink's target under ``root``, by relative path."""
    shot: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            shot[key] = f"-> {os.readlink(path)}"
        elif path.is_file():
            shot[key] = path.read_bytes()
    return shot


@pytest.fixture
def previous(schedcmp, tmp_path: Path) -> dict[str, bytes | str]:
    """A finished comparison in tmp_path/out, plus a file of the user's own; returns its snapshot."""
    assert schedcmp("run", *QUICK, "--out", "out", cwd=tmp_path).returncode == 0
    (tmp_path / "out" / "notes.txt").write_text("mine")
    return snapshot(tmp_path / "out")


FAILURES = [
    ("a plan error", ["--schedulers", "eulr"]),
    ("a model that is nowhere", ["--prompt", "x", "--model", "no-such-model"]),
    ("an error found once the model is loaded", ["--size", "128x128"]),
    ("a device this machine lacks", ["--cuda-graphs", "--device", "cpu"]),
    ("--expect naming the output folder itself", ["--expect", "out"]),
]


@pytest.mark.parametrize("arguments", [f[1] for f in FAILURES], ids=[f[0] for f in FAILURES])
def test_a_failure_leaves_the_old_results_byte_identical(schedcmp, tmp_path: Path, previous, arguments) -> None:
    result = schedcmp("run", *QUICK, *arguments, "--out", "out", "--overwrite", cwd=tmp_path)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert snapshot(tmp_path / "out") == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind


def test_without_overwrite_the_old_results_are_refused_and_kept(schedcmp, tmp_path: Path, previous) -> None:
    result = schedcmp("run", *QUICK, "--out", "out", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: out already holds results (grid.png, timings.csv, results.json, images, ")
    assert snapshot(tmp_path / "out") == previous


def test_overwrite_replaces_every_result_and_keeps_the_users_files(schedcmp, tmp_path: Path, previous) -> None:
    result = schedcmp("run", "--schedulers", "dpm", "--steps", "4", "--reference", "none", "--out", "out",
                      "--overwrite", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    now = snapshot(tmp_path / "out")
    assert now["notes.txt"] == b"mine"
    assert sorted(k for k in now if k.startswith("images/")) == ["images/001-dpm-4.png"]
    assert "reference.png" not in now and "error_vs_calls.png" not in now  # the old run's, gone with it
    assert json.loads(now["results.json"])["runs"][0]["scheduler"] == "dpm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_symlinked_images_folder_is_replaced_not_followed(schedcmp, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.png").write_bytes(b"not ours")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "images").symlink_to(elsewhere, target_is_directory=True)
    result = schedcmp("run", *QUICK, "--out", "out", "--overwrite", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert snapshot(elsewhere) == {"precious.png": b"not ours"}
    images = tmp_path / "out" / "images"
    assert not images.is_symlink() and sorted(p.name for p in images.iterdir()) == ["001-ddim-3.png", "002-euler-3.png"]


def test_a_symlinked_result_file_is_replaced_not_written_through(schedcmp, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "theirs.json").write_text("keep me")
    (tmp_path / "out" / "results.json").symlink_to(tmp_path / "theirs.json")
    assert schedcmp("run", *QUICK, "--out", "out", "--overwrite", cwd=tmp_path).returncode == 0
    assert (tmp_path / "theirs.json").read_text() == "keep me"
    assert not (tmp_path / "out" / "results.json").is_symlink()


def test_a_killed_run_leaves_the_old_results_and_its_finished_images(schedcmp, tmp_path: Path, previous) -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "schedcmp", "run", "--schedulers", ",".join(["euler", "dpm"] * 10), "--steps", "1000",
         "--reference", "none", "--out", "out", "--overwrite"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".schedcmp-incomplete-out-*/images/*.png")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert snapshot(tmp_path / "out") == previous
    (staging,) = tmp_path.glob(".schedcmp-incomplete-out-*")
    kept = sorted((staging / "images").glob("*.png"))
    assert kept and kept[0].name == "001-euler-1000.png"
