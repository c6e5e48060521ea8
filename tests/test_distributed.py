"""Plans over torch.distributed ranks (torchrun, --workers, gloo on the CPU): the same outputs as one process, the
cells shared by model calls, and a rank that dies costs only its unfinished cells, which --resume completes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_interrupts import start, wait_for
from tiny_sd import build_tiny_sd

from schedcmp.distributed import gloo_reason, pack, share_by_calls, tensor_blob, unpack
from schedcmp.launch import without_workers_flag

SWEEP = ("--schedulers", "euler,heun,dpm,Euler a", "--steps", "5,10", "--seeds", "1-3")
LONG_SWEEP = ("--schedulers", "euler,heun,dpm", "--steps", "100,200", "--seeds", "1-8")
# What may differ between two runs of the same plan: clocks, who ran a cell, and the machine's description.
TIMING_KEYS = {"seconds", "seconds_per_call", "scheduler_seconds", "median_seconds", "wall_seconds", "rank", "ranks",
               "environment"}


def _environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "CUDA_VISIBLE_DEVICES": "", **extra}
    env.pop("SCHEDCMP_DEBUG", None)
    return env


def torchrun(cwd: Path, *args: str, ranks: int = 2, **extra: str) -> subprocess.Popen:
    """`torchrun --standalone --nproc-per-node RANKS -m schedcmp run ARGS` in ``cwd``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", "-m",
               "schedcmp", "run", *args]
    return subprocess.Popen(command, cwd=cwd, env=_environment(**extra), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    """The process's exit code and output; killed (and the test failed) when it outlives ``timeout``."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return process.returncode, stdout, stderr


def alone(cwd: Path, *args: str, **extra: str) -> tuple[int, str, str]:
    """The same command in one process."""
    return finish(subprocess.Popen([sys.executable, "-m", "schedcmp", "run", *args], cwd=cwd, text=True,
                                   env=_environment(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE))


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _lines(path: Path) -> list[str]:
    return sorted(json.dumps(_without_timings(json.loads(line)), sort_keys=True)
                  for line in path.read_text().splitlines())


def assert_same_outputs(expected: Path, actual: Path) -> None:
    """Both folders hold the same files; every image is equal pixel for pixel and every record value for value,
    clocks and ranks aside (grids and reports show the clocks, so they are left out)."""
    names = sorted(str(p.relative_to(expected)) for p in expected.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(actual)) for p in actual.rglob("*") if p.is_file())
    images = [n for n in names if n.endswith(".png") and ("images/" in n or n.endswith("reference.png"))]
    assert images
    for name in images:
        assert np.array_equal(np.asarray(Image.open(expected / name)), np.asarray(Image.open(actual / name))), name
    for name in (n for n in names if n.endswith(".json")):
        before, after = (json.loads((folder / name).read_text()) for folder in (expected, actual))
        assert _without_timings(before) == _without_timings(after), name
    for name in (n for n in names if n.endswith(".jsonl")):
        assert _lines(expected / name) == _lines(actual / name), name


def _records(folder: Path) -> list[dict]:
    return [run for results in sorted(folder.glob("pages/*/results.json"))
            for run in json.loads(results.read_text())["runs"]]


# --- the pieces -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("costs", "ranks", "owners"), [
    ([10, 10, 10, 10], 2, [0, 1, 0, 1]),  # equal jobs alternate
    ([19, 10, 10], 2, [0, 1, 1]),  # a Heun cell (19 calls) weighs two Euler cells, not one
    ([5, 19, 10, 9], 2, [0, 0, 1, 1]),  # longest first: 19 -> 0, 10 -> 1, 9 -> 1, then 5 to the lower tied rank
    ([7, 7, 7], 4, [0, 1, 2]),  # more ranks than jobs: one rank stays idle
    ([], 3, []),
])
def test_cells_are_shared_longest_first_to_the_least_loaded_rank(costs, ranks, owners) -> None:
    assert share_by_calls(costs, ranks) == owners


def test_no_rank_ends_more_than_one_cell_above_the_mean() -> None:
    costs = [int(c) for c in torch.randint(1, 200, (500,), generator=torch.Generator().manual_seed(0))]
    owners = share_by_calls(costs, 8)
    loads = [sum(c for c, o in zip(costs, owners, strict=True) if o == rank) for rank in range(8)]
    assert max(loads) - sum(costs) / 8 <= max(costs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_tensors_cross_between_ranks_bit_for_bit(dtype) -> None:
    tensor = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    meta, data = tensor_blob(tensor)
    header, blobs = unpack(pack({"latents": meta}, [b"image", data]))
    from schedcmp.distributed import blob_tensor

    back = blob_tensor(header["latents"], blobs[1], torch.device("cpu"))
    assert blobs[0] == b"image" and back.dtype == dtype and torch.equal(back, tensor)


def test_a_broken_connection_reads_as_gloo_says_it_without_its_source_line() -> None:
    error = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                         "[127.0.0.1]:25497. This is typically caused by a remote worker crashing. Check the logs")
    assert gloo_reason(error) == "Connection closed by peer [127.0.0.1]:25497"


@pytest.mark.parametrize(("argv", "rest"), [
    (["--workers", "2", "--steps", "5"], ["--steps", "5"]),
    (["--steps", "5", "--workers=3"], ["--steps", "5"]),
    (["plan.yaml", "--workers", "4", "--batched"], ["plan.yaml", "--batched"]),
])
def test_each_worker_runs_the_command_without_workers(argv, rest) -> None:
    assert without_workers_flag(argv) == rest


# --- torchrun on the built-in model ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def single_sweep(tmp_path_factory) -> Path:
    """The sweep in one process: what every world must write."""
    cwd = tmp_path_factory.mktemp("alone")
    code, _, stderr = alone(cwd, *SWEEP, "--out", "out")
    assert code == 0, stderr
    return cwd / "out"


def test_two_ranks_write_the_sweep_one_process_writes(tmp_path: Path, single_sweep: Path) -> None:
    code, stdout, stderr = finish(torchrun(tmp_path, *SWEEP, "--out", "out"))
    assert code == 0, stderr
    assert_same_outputs(single_sweep, tmp_path / "out")
    assert {run["rank"] for run in _records(tmp_path / "out")} == {0, 1}
    assert "2 ranks: rank 0 (cpu) 12 cells" in stdout


def test_cells_go_to_ranks_by_model_calls(tmp_path: Path) -> None:
    code, _, stderr = finish(torchrun(tmp_path, "--schedulers", "heun,euler", "--steps", "5,10,40", "--out", "out"))
    assert code == 0, stderr
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    calls = [run["model_calls"] for run in record["runs"]]  # heun 9, 19, 79; euler 5, 10, 40
    assert [run["rank"] for run in record["runs"]] == share_by_calls(calls, 2)
    loads = record["ranks"]["ranks"]
    assert [(load["cells"], load["model_calls"]) for load in loads] == [(1, 79), (5, 83)]  # Heun 40 alone on rank 0


def test_batched_ranks_match_one_batched_process(tmp_path: Path) -> None:
    code, _, stderr = alone(tmp_path, *SWEEP, "--batched", "--out", "one")
    assert code == 0, stderr
    code, _, stderr = finish(torchrun(tmp_path, *SWEEP, "--batched", "--out", "two"))
    assert code == 0, stderr
    for name, image in ((p.relative_to(tmp_path / "one"), p) for p in (tmp_path / "one").glob("pages/*/images/*")):
        difference = np.abs(np.asarray(Image.open(image), dtype=int) - np.asarray(Image.open(tmp_path / "two" / name)))
        assert difference.max() <= 1, name


def test_one_page_over_two_ranks_is_the_comparison_one_process_writes(tmp_path: Path) -> None:
    args = ("--schedulers", "euler,heun,dpm,unipc", "--steps", "5,10")
    assert alone(tmp_path, *args, "--out", "one")[0] == 0
    code, _, stderr = finish(torchrun(tmp_path, *args, "--out", "two"))
    assert code == 0, stderr
    assert_same_outputs(tmp_path / "one", tmp_path / "two")
    ranks = json.loads((tmp_path / "two" / "results.json").read_text())["ranks"]
    assert [load["cells"] for load in ranks["ranks"]] == [4, 4]


# --- tiny Stable Diffusion ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-sd") / "sd1"
    build_tiny_sd(folder)
    return folder


def test_two_ranks_sample_tiny_sd_as_one_process_at_the_same_threads(tmp_path: Path, tiny_sd: Path) -> None:
    # oneDNN's reductions round by thread count, so the equality holds at equal threads per process (torchrun: 1)
    args = ("--model", str(tiny_sd), "--prompt", "a cat", "--schedulers", "euler,dpm,heun,DPM++ 2M SDE",
            "--steps", "4", "--seeds", "1,2", "--reference", "dpm:12")
    assert alone(tmp_path, *args, "--out", "one", OMP_NUM_THREADS="1")[0] == 0
    code, _, stderr = finish(torchrun(tmp_path, *args, "--out", "two"))
    assert code == 0, stderr
    assert_same_outputs(tmp_path / "one", tmp_path / "two")


# --- faults -------------------------------------------------------------------------------------------------------

def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the launcher's child process that is ``rank`` (its RANK variable)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            variables = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher and f"RANK={rank}".encode() in variables:
            return int(entry.name)
    return None


def _staged_lines(cwd: Path, rank: int | None = None) -> int:
    lines = [json.loads(line) for path in cwd.glob(".schedcmp-incomplete-out-*/pages/*/runs.jsonl")
             for line in path.read_text().splitlines() if line.endswith("}")]
    return sum(1 for line in lines if rank is None or line["rank"] == rank)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_killed_rank_is_named_and_resume_completes_the_sweep(tmp_path: Path) -> None:
    launcher = torchrun(tmp_path, *LONG_SWEEP, "--out", "out")
    wait_for(lambda: _staged_lines(tmp_path, rank=1) >= 2, launcher, limit=120)
    assert _staged_lines(tmp_path) < 48, "the sweep ended before the kill"
    os.kill(_rank_pid(launcher.pid, 1), signal.SIGKILL)
    code, _, stderr = finish(launcher)
    assert code == 1
    error = next(line for line in stderr.splitlines() if line.startswith("error: "))
    assert error.startswith("error: rank 1 (") and " went away with " in error
    assert error.endswith("cells that finished are kept in out; run the same command with --resume to finish the "
                          "rest (on any number of ranks)")
    sweep = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert not sweep["complete"] and sweep["ranks"]["ranks"][1]["status"] == "lost"
    finished = sum(1 for run in _records(tmp_path / "out") if run["status"] == "ok")
    assert 0 < finished < 48

    code, _, stderr = alone(tmp_path, *LONG_SWEEP, "--out", "out", "--resume")
    assert code == 0, stderr
    code, _, stderr = alone(tmp_path, *LONG_SWEEP, "--out", "expected")
    assert code == 0, stderr
    assert_same_outputs(tmp_path / "expected", tmp_path / "out")


def test_workers_run_the_ranks_and_ctrl_c_stops_them_all(tmp_path: Path) -> None:
    process = start(tmp_path, "run", *LONG_SWEEP, "--workers", "2", "--out", "out")
    wait_for(lambda: _staged_lines(tmp_path, rank=1) >= 1, process, limit=120)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "interrupted: wrote the pages that finished to out"
    sweep = json.loads((tmp_path / "out" / "sweep.json").read_text())
    rank0, rank1 = (load["status"] for load in sweep["ranks"]["ranks"])
    assert not sweep["complete"] and rank1 == "stopped"
    assert rank0 in ("stopped", "done")  # rank 0 may have ended its share and been waiting for rank 1's


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _world(cwd: Path | list[Path], per_rank: list[list[str]]) -> list[tuple[int, str, str]]:
    """Start the ranks of a world by hand (what torchrun's rendezvous sets up), each with its own arguments (and
    working folder, when given one per rank)."""
    port = str(_free_port())
    folders = cwd if isinstance(cwd, list) else [cwd] * len(per_rank)
    processes = [subprocess.Popen([sys.executable, "-m", "schedcmp", "run", *args], cwd=folders[rank], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=_environment(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2",
                                                   RANK=str(rank), LOCAL_RANK=str(rank)))
                 for rank, args in enumerate(per_rank)]
    return [finish(process, timeout=120) for process in processes]


def test_ranks_with_different_plans_are_refused(tmp_path: Path) -> None:
    (main, _, stderr), (worker, _, worker_stderr) = _world(tmp_path, [["--schedulers", "euler", "--steps", "5"],
                                                                   ["--schedulers", "euler", "--steps", "6"]])
    assert (main, worker) == (1, 1)
    host = socket.gethostname()
    assert stderr.startswith(f"error: rank 1 ({host}) has another plan (its file and flags) than rank 0 ({host}): "
                             "plan digest ")
    assert stderr.rstrip().endswith("start every rank with the same plan, flags and model files")
    assert worker_stderr == "" and not (tmp_path / "out").exists()


def test_ranks_with_different_weights_under_one_name_are_refused(tmp_path: Path) -> None:
    folders = [tmp_path / "node0", tmp_path / "node1"]
    for seed, folder in enumerate(folders):
        build_tiny_sd(folder / "sd", seed=seed)  # the same path on each "node", other weights
    args = ["--model", "sd", "--prompt", "a cat", "--schedulers", "euler", "--steps", "2"]
    (main, _, stderr), (worker, _, _) = _world(folders, [args, args])
    assert (main, worker) == (1, 1)
    host = socket.gethostname()
    assert stderr.startswith(f"error: rank 1 ({host}) has another model weights than rank 0 ({host}): weights digest ")


def test_two_nodes_by_torchruns_static_rendezvous(tmp_path: Path, single_sweep: Path) -> None:
    # the README's two-node commands, both "nodes" on this machine
    port = str(_free_port())
    for node in (0, 1):
        (tmp_path / f"node{node}").mkdir()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port, "-m",
                               "schedcmp", "run", *SWEEP, "--out", "out"], cwd=tmp_path / f"node{node}", text=True,
                              env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for node in (0, 1)]
    (code, _, stderr), (other, _, other_stderr) = (finish(node) for node in nodes)
    assert (code, other) == (0, 0), stderr + other_stderr
    assert_same_outputs(single_sweep, tmp_path / "node0" / "out")
    assert not (tmp_path / "node1" / "out").exists()  # only rank 0 writes


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "nowhere", "--prompt", "a cat"],  # the plan builds, the model does not load
     "model 'nowhere' is neither 'builtin:shapes', an existing folder, nor a hub id (owner/name)"),
    (["--model", "nowhere"],  # the plan does not build
     "no prompt: pass --prompt TEXT or set prompt: in the plan file (only builtin:shapes has a default prompt)"),
])
def test_a_rank_that_cannot_start_stops_the_world_in_one_line(tmp_path: Path, args, message) -> None:
    (main, _, stderr), (worker, _, worker_stderr) = _world(tmp_path, [["--schedulers", "euler"],
                                                                     ["--schedulers", "euler", *args]])
    assert (main, worker) == (1, 1)
    assert stderr == f"error: rank 1 ({socket.gethostname()}): {message}\n"
    assert worker_stderr == ""


def test_torchrun_within_workers_is_refused(tmp_path: Path) -> None:
    (code, _, stderr), _ = _world(tmp_path, [["--schedulers", "euler", "--workers", "2"]] * 2)  # finish() bounds it
    assert code == 1
    assert stderr == ("error: --workers starts its own processes; under torchrun leave it out (torchrun's "
                      "--nproc-per-node says how many)\n")
