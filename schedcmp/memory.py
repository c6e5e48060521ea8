"""How many lanes fit in one batched model call: a lane's measured activation memory against free memory."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Share of the free memory batched calls may use: the rest is headroom for the allocator, decode and the OS.
MEMORY_HEADROOM = 0.7


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of every tensor the ops inside the mode create while they are alive, and the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._owned: set[int] = set()

    def _release(self, key: int, size: int) -> None:
        self._owned.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if key in self._owned or size == 0:
                continue  # a view of a tensor already counted
            self._owned.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(tensor, self._release, key, size)
        return out


def peak_call_bytes(call: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes of the tensors ``call`` allocates while it runs (its activations; weights are not counted)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = call()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del result
        return peak
    with _LiveTensorBytes() as counter:
        result = call()
    del result
    return counter.peak


def free_memory_bytes(device: torch.device) -> int:
    """Memory a batch may still use: free CUDA memory plus what torch holds cached, or the host's available RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def lanes_that_fit(bytes_per_lane: int, free_bytes: int, lanes: int) -> int:
    """The largest lane count (1 to ``lanes``) whose activations fit in ``MEMORY_HEADROOM`` of the free memory."""
    if bytes_per_lane <= 0:
        return lanes
    return max(1, min(lanes, int(free_bytes * MEMORY_HEADROOM) // bytes_per_lane))
