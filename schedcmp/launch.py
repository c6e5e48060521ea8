"""`schedcmp run --workers N`: the same command in N local processes, started through torch's own elastic launcher
(what `torchrun --standalone --nproc-per-node N` does), each process a rank of one world."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Sequence

from .errors import SchedcmpError

MAX_WORKERS = 256


def without_workers_flag(argv: Sequence[str]) -> list[str]:
    """The command's arguments with --workers and its value taken out (each process is one worker)."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            args.append(arg)
    return args


def threads_per_worker(count: int) -> int:
    """CPU threads for each of ``count`` processes sharing this machine's cores (at least one)."""
    return max(1, (os.cpu_count() or 1) // count)


def launch_workers(count: int, argv: Sequence[str]) -> int:
    """Run ``python -m schedcmp run ARGV`` (without --workers) as ``count`` ranks on this node and return rank 0's exit
    code (or the first failed rank's); the launcher's own report is folded into that code, never printed."""
    if "WORLD_SIZE" in os.environ:
        raise SchedcmpError("--workers starts its own processes; under torchrun leave it out (torchrun's "
                            "--nproc-per-node says how many)")
    if not 1 <= count <= MAX_WORKERS:
        raise SchedcmpError(f"--workers must be between 1 and {MAX_WORKERS}; got {count}")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in [*logging.root.manager.loggerDict, "torch.distributed.elastic"]:  # the launcher's own chatter
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_worker(count)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=count, run_id=f"schedcmp-{uuid.uuid4().hex}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, sys.executable)("-m", "schedcmp", "run", *without_workers_flag(argv))
    except ChildFailedError as failed:
        failures = failed.failures
        first = failures.get(0) or failures[min(failures)]
        return first.exitcode if first.exitcode > 0 else 128 - first.exitcode
    except SignalException as stopped:
        return 128 + int(stopped.sigval)
    return 0
