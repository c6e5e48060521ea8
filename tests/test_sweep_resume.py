"""A long sweep survives: Ctrl-C keeps the pages and runs that finished, --resume runs only the missing ones, and
the result equals an uninterrupted sweep's; a resume that would mix plans is refused in one line."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
from PIL import Image
from test_interrupts import start, wait_for

SWEEP = ("run", "--schedulers", "euler,dpm,heun,unipc,Euler a,DPM++ 2M", "--steps", "300", "--seeds", "1-3",
         "--reference", "exact", "--out")


def _run(cwd: Path, *args: str) -> tuple[int, str, str]:
    process = start(cwd, *args)
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


def _images(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): np.asarray(Image.open(p)) for p in sorted(folder.glob("pages/*/images/*.png"))}


def _statistics(folder: Path) -> list[dict]:
    cells = json.loads((folder / "sweep.json").read_text())["statistics"]
    return [{k: v for k, v in cell.items() if k != "median_seconds"} for cell in cells]


def test_ctrl_c_then_resume_equals_an_uninterrupted_sweep(tmp_path: Path) -> None:
    process = start(tmp_path, *SWEEP, "out")
    # Stop part way through the second page: its first runs are written, the rest are not.
    wait_for(lambda: any(tmp_path.glob(".schedcmp-incomplete-out-*/pages/seed2/images/*heun*.png")), process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "interrupted: wrote the pages that finished to out"
    record = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert not record["complete"]
    assert [(page["name"], page["complete"]) for page in record["pages"]][:2] == [("seed1", True), ("seed2", False)]
    statuses = [run["status"] for run in json.loads((tmp_path / "out/pages/seed2/results.json").read_text())["runs"]]
    assert statuses[:3] == ["ok", "ok", "ok"] and "not run" in statuses
    ended = statuses.count("ok")

    code, _, stderr = _run(tmp_path, *SWEEP, "out", "--resume")
    assert code == 0, stderr
    assert (f"resume: 1 of 3 pages are finished and {ended} runs of unfinished ones; running the others"
            in " ".join(stderr.split()))
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["complete"]

    code, _, stderr = _run(tmp_path, *SWEEP, "whole")
    assert code == 0, stderr
    resumed, whole = _images(tmp_path / "out"), _images(tmp_path / "whole")
    assert resumed.keys() == whole.keys() and len(whole) == 18
    assert all(np.array_equal(resumed[name], whole[name]) for name in whole)
    assert _statistics(tmp_path / "out") == _statistics(tmp_path / "whole")


def test_a_killed_sweep_resumes_from_what_it_left_on_disk(tmp_path: Path) -> None:
    process = start(tmp_path, *SWEEP, "out")
    wait_for(lambda: any(tmp_path.glob(".schedcmp-incomplete-out-*/pages/seed2/images/*heun*.png")), process)
    process.kill()  # SIGKILL: no handler runs, nothing is committed to out
    process.wait(timeout=60)
    assert not (tmp_path / "out").exists()
    code, _, stderr = _run(tmp_path, *SWEEP, "out", "--resume")
    assert code == 0, stderr
    assert "resume: 1 of 3 pages are finished and" in " ".join(stderr.split())
    assert not list(tmp_path.glob(".schedcmp-incomplete-out-*"))  # the killed run's leftovers are in the sweep now
    code, _, stderr = _run(tmp_path, *SWEEP, "whole")
    assert code == 0, stderr
    resumed, whole = _images(tmp_path / "out"), _images(tmp_path / "whole")
    assert resumed.keys() == whole.keys()
    assert all(np.array_equal(resumed[name], whole[name]) for name in whole)
    assert _statistics(tmp_path / "out") == _statistics(tmp_path / "whole")


def test_resume_keeps_finished_pages_of_a_grown_sweep(tmp_path: Path) -> None:
    small = ("run", "--schedulers", "euler", "--steps", "4", "--reference", "none", "--out", "out")
    assert _run(tmp_path, *small, "--seeds", "1,2")[0] == 0
    code, _, stderr = _run(tmp_path, *small, "--seeds", "1-4", "--resume")
    assert code == 0, stderr
    assert "resume: 2 of 4 pages are finished; running the others" in " ".join(stderr.split())


def test_resume_refuses_a_changed_plan(tmp_path: Path) -> None:
    small = ("run", "--schedulers", "euler", "--reference", "none", "--seeds", "1,2", "--out", "out")
    assert _run(tmp_path, *small, "--steps", "4")[0] == 0
    code, _, stderr = _run(tmp_path, *small, "--steps", "5", "--resume")
    assert code == 1
    assert stderr.splitlines()[-1] == ("error: --resume: the plan changed since out was written (runs[0].steps: 4 -> "
                                       "5), so its finished pages would not match; run with --overwrite to start over")


def test_resume_needs_a_sweep_to_finish(tmp_path: Path) -> None:
    code, _, stderr = _run(tmp_path, "run", "--schedulers", "euler", "--steps", "4", "--seeds", "1,2", "--out",
                           "out", "--resume")
    assert code == 1
    assert stderr.splitlines()[-1] == ("error: --resume: out holds no sweep.json, so there is no sweep to finish; "
                                       "run without --resume")
    code, _, stderr = _run(tmp_path, "run", "--schedulers", "euler", "--steps", "4", "--out", "out", "--resume")
    assert code == 1
    assert stderr.splitlines()[-1] == ("error: --resume finishes a sweep (--seeds, a guidance list, prompt axes); "
                                       "this plan has one page: run it again with --overwrite")
