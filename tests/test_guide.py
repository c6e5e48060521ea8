"""The guide schedcmp grew from runs on ``schedcmp.core`` with only its imports swapped, with diffusers' results.

Every PyTorch statement of ``fixtures/guide/schedulers-guide.ko.md`` (the diffusers "Schedulers" guide) runs twice in
a fresh process (tests/guide_runner.py): as written, on diffusers, and with ``from schedcmp.core import``. The model
the guide downloads is the tiny SD 1.x model, placed in an offline hub cache under the guide's hub id.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from filelock import FileLock
from tiny_sd import build_tiny_sd

GUIDE = Path(__file__).parent / "fixtures" / "guide" / "schedulers-guide.ko.md"
RUNNER = Path(__file__).with_name("guide_runner.py")
HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
REVISION = "0" * 40


def cache_as_hub_download(folder: Path, cache: Path, hub_id: str) -> None:
    """Lay a saved model out as huggingface_hub's cache keeps a download (refs/main -> snapshots/<revision>)."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)


def run_guide(root: Path) -> list[dict]:
    """What each statement of the guide gave on both libraries, run in a fresh process against ``root``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_tiny_sd(root / "saved", "sd1")
    cache_as_hub_download(root / "saved", root / "hub", HUB_ID)
    env = {**os.environ, "HF_HUB_CACHE": str(root / "hub"), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(RUNNER), str(GUIDE), str(root / "report.json")], env=env, check=True,
                   cwd=root, timeout=600)
    return json.loads((root / "report.json").read_text())


@pytest.fixture(scope="module")
def report(tmp_path_factory, worker_id) -> list[dict]:
    """The guide's report, computed once per test session: under pytest-xdist the first worker to ask runs the
    guide and the others read its report (the session's shared temporary folder, under a file lock)."""
    if worker_id == "master":
        return run_guide(tmp_path_factory.mktemp("guide"))
    shared = tmp_path_factory.getbasetemp().parent / "guide-report.json"
    with FileLock(f"{shared}.lock"):
        if not shared.is_file():
            shared.write_text(json.dumps(run_guide(tmp_path_factory.mktemp("guide"))))
        return json.loads(shared.read_text())


def of_kind(report: list[dict], kind: str) -> list[dict]:
    return [entry["comparison"] for entry in report if entry.get("comparison", {}).get("kind") == kind]


def test_the_guide_has_its_pytorch_statements(report):
    assert len(report) == 38
    assert all(entry["theirs_error"] is None for entry in report), [e for e in report if e["theirs_error"]]


def test_every_statement_runs_on_schedcmp_core(report):
    failed = [(entry["source"], entry["ours_error"]) for entry in report if entry["ours_error"]]
    assert failed == []


def test_every_image_is_diffusers_image_within_one_level(report):
    images = of_kind(report, "image")
    assert len(images) == 6
    assert all(image["same_size"] and image["max_level_difference"] <= 1 for image in images), images


def test_the_scheduler_prints_as_diffusers_prints_it(report):
    (scheduler,) = of_kind(report, "scheduler")
    assert scheduler["ours"] == scheduler["theirs"]
    assert scheduler["ours_repr"] == scheduler["theirs_repr"]


def test_compatibles_are_diffusers_compatibles(report):
    (compatibles,) = of_kind(report, "classes")
    assert compatibles["ours"] == compatibles["theirs"]


def test_the_config_is_a_frozen_dict_with_diffusers_items(report):
    (config,) = of_kind(report, "config")
    assert config["ours"] == config["theirs"]
    assert config["ours_repr_head"] == config["theirs_repr_head"] == "FrozenDict([("
