"""torch.distributed for plans over processes, GPUs and nodes (started by torchrun or --workers): who this process
is, a share of the cells per rank balanced by model calls, and the bytes ranks exchange over gloo. Everything
travels as CPU uint8 tensors holding JSON and raw tensor bytes: no pickles cross a process boundary."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from .errors import SchedcmpError

JOIN_TIMEOUT = timedelta(minutes=30)  # the slowest rank's model load, at most
FINAL_KINDS = ("done", "stopped", "failed")  # a worker's last message to rank 0


class RankLostError(SchedcmpError):
    """Another rank of the world went away (its process died, its node dropped) while this one needed it."""


@dataclass(frozen=True)
class World:
    """This process's place among the processes torchrun started: its rank, how many there are, and its rank on its
    own node (which picks its GPU)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def host(self) -> str:
        return socket.gethostname()


def world_from_environment() -> World:
    """The world torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK (one process when they are absent)."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if "WORLD_SIZE" not in os.environ:
        return World()
    try:
        rank, size, local = (int(os.environ.get(name, "0")) for name in names)
    except ValueError:
        shown = ", ".join(f"{name}={os.environ.get(name)!r}" for name in names)
        raise SchedcmpError(f"RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun sets them); got "
                            f"{shown}") from None
    if not 0 <= rank < size or local < 0:
        raise SchedcmpError(f"RANK {rank} is outside WORLD_SIZE {size} (torchrun sets both)")
    return World(rank, size, local)


def join(world: World) -> None:
    """Join the process group torchrun's rendezvous set up (MASTER_ADDR / MASTER_PORT); gloo on every device,
    since ranks exchange only results, never tensors on a GPU."""
    import torch.distributed as dist

    if world.distributed and not dist.is_initialized():
        dist.init_process_group("gloo", rank=world.rank, world_size=world.size, timeout=JOIN_TIMEOUT)


def leave() -> None:
    """Leave the process group (after every message was delivered)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def share_by_calls(costs: Sequence[int], ranks: int) -> list[int]:
    """The rank of each job: longest processing time first (Graham 1969), each job in turn, most model calls first
    (ties in their order), to the rank with the fewest calls so far (ties: the lowest rank); the busiest rank ends
    at most one job's calls above the mean plus the largest job."""
    loads = [0] * ranks
    owners = [0] * len(costs)
    for job in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(ranks), key=lambda r: (loads[r], r))
        owners[job] = rank
        loads[rank] += costs[job]
    return owners


def pack(header: dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    """One message: an 8-byte length, a JSON header (with the blobs' lengths), then the blobs."""
    meta = json.dumps({**header, "_blobs": [len(b) for b in blobs]}, allow_nan=False).encode("utf-8")
    return struct.pack("<Q", len(meta)) + meta + b"".join(blobs)


def unpack(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """A message back into its header and blobs (see ``pack``)."""
    (length,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + length].decode("utf-8"))
    blobs, offset = [], 8 + length
    for size in header.pop("_blobs"):
        blobs.append(data[offset:offset + size])
        offset += size
    return header, blobs


def tensor_blob(tensor: torch.Tensor) -> tuple[dict[str, Any], bytes]:
    """A tensor's dtype and shape, and its bytes (moved to the CPU), to send exactly."""
    cpu = tensor.detach().to("cpu").contiguous()
    return ({"dtype": str(cpu.dtype).removeprefix("torch."), "shape": list(cpu.shape)},
            cpu.reshape(-1).view(torch.uint8).numpy().tobytes())  # [numel * itemsize] bytes


def blob_tensor(meta: dict[str, Any], data: bytes, device: torch.device) -> torch.Tensor:
    """The tensor ``tensor_blob`` described, bit for bit, on ``device``."""
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8)  # [numel * itemsize]
    return flat.view(getattr(torch, meta["dtype"])).reshape(meta["shape"]).to(device)


def _as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


@contextmanager
def _peers_needed(what: str) -> Iterator[None]:
    """A collective's gloo error (a rank's connection closed) as the one line it means."""
    try:
        yield
    except RuntimeError as err:
        raise RankLostError(f"a rank went away while the ranks {what} ({gloo_reason(err)})") from None


def all_gather_bytes(data: bytes, world: World) -> list[bytes]:
    """Every rank's ``data``, in rank order, on every rank."""
    with _peers_needed("started"):
        return _all_gather_bytes(data, world)


def _all_gather_bytes(data: bytes, world: World) -> list[bytes]:
    import torch.distributed as dist

    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world.size)]
    dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64))
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[:len(data)] = _as_tensor(data)
    gathered = [torch.empty(longest, dtype=torch.uint8) for _ in range(world.size)]
    dist.all_gather(gathered, padded)
    return [g[:int(s)].numpy().tobytes() for g, s in zip(gathered, sizes, strict=True)]


def broadcast_bytes(data: bytes | None, source: int) -> bytes:
    """``data`` of rank ``source``, on every rank (the others pass None)."""
    with _peers_needed("shared the plan and its references"):
        return _broadcast_bytes(data, source)


def _broadcast_bytes(data: bytes | None, source: int) -> bytes:
    import torch.distributed as dist

    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64)
    dist.broadcast(size, source)
    buffer = _as_tensor(data) if data is not None else torch.empty(int(size), dtype=torch.uint8)
    if int(size):
        dist.broadcast(buffer, source)
    return buffer.numpy().tobytes()


def gloo_reason(err: BaseException) -> str:
    """gloo's error without its source location and advice: 'Connection closed by peer [10.0.0.2]:40011'."""
    text = re.sub(r"^\[[^\]]*\.cc:\d+\]\s*", "", " ".join(str(err).split()))
    return text.split(". This is typically")[0][:200]


def send_to_main(header: dict[str, Any], blobs: Sequence[bytes] = ()) -> None:
    """Send one message to rank 0 (blocking until it is delivered: rank 0 always listens)."""
    import torch.distributed as dist

    frame = _as_tensor(pack(header, blobs))
    try:
        dist.send(torch.tensor([frame.numel()], dtype=torch.int64), dst=0)
        dist.send(frame, dst=0)
    except RuntimeError as err:  # gloo: the connection to rank 0 closed
        raise RankLostError(f"rank 0 went away ({gloo_reason(err)})") from None


@dataclass
class Message:
    """What a worker sent rank 0, or ``kind`` 'lost' when its connection broke before its last message."""

    source: int
    header: dict[str, Any]
    blobs: list[bytes] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.header["kind"]


class Inbox:
    """Rank 0's ears: one thread per worker blocks on that worker's next message (gloo, point to point) and queues
    it; the main thread takes them between its own model calls. A broken connection is queued as a 'lost'
    message; a worker's last message ('done', 'stopped', 'failed') ends its thread."""

    def __init__(self, world: World):
        self.queue: queue.Queue[Message] = queue.Queue()
        self.open = set(range(1, world.size))  # workers whose last message has not come
        self._threads = [threading.Thread(target=self._listen, args=(rank,), daemon=True, name=f"rank{rank}")
                         for rank in sorted(self.open)]
        for thread in self._threads:
            thread.start()

    def _listen(self, source: int) -> None:
        import torch.distributed as dist

        try:
            while True:
                size = torch.zeros(1, dtype=torch.int64)
                dist.recv(size, src=source)
                frame = torch.empty(int(size), dtype=torch.uint8)
                dist.recv(frame, src=source)
                header, blobs = unpack(frame.numpy().tobytes())
                self.queue.put(Message(source, header, blobs))
                if header["kind"] in FINAL_KINDS:
                    return
        except Exception as err:  # gloo's "Connection closed by peer": the process or its node is gone
            self.queue.put(Message(source, {"kind": "lost", "error": gloo_reason(err)}))

    def take(self, timeout: float = 0.0) -> list[Message]:
        """The messages that came, waiting up to ``timeout`` seconds for the first when none has."""
        messages = []
        try:
            messages.append(self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait())
            while True:
                messages.append(self.queue.get_nowait())
        except queue.Empty:
            pass
        for message in messages:
            if message.kind in (*FINAL_KINDS, "lost"):
                self.open.discard(message.source)
        return messages

    def close(self) -> None:
        """Wait for the listening threads that ended (those of workers still silent are left to the process)."""
        for thread in self._threads:
            if not thread.is_alive():
                thread.join()
