"""One checkpoint file, read lazily: key names and shapes without loading, each tensor loaded when asked for.

``.safetensors`` is opened with ``safe_open`` (one tensor at a time, so a model's weights are in memory once);
pickled ``.ckpt`` / ``.pt`` / ``.bin`` files only with ``allow_pickle``, through ``torch.load(weights_only=True)``,
with the nested ``state_dict`` of CompVis checkpoints unwrapped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import WeightsError
from ..models.loading import PICKLE_SUFFIXES, SAFETENSORS, read_state_dict

SINGLE_FILE_SUFFIXES = (SAFETENSORS, *PICKLE_SUFFIXES)
_HASH_CHUNK = 1 << 20


def is_single_file(model: str | Path) -> bool:
    """Whether ``model`` names a checkpoint file (by its suffix) rather than a folder or hub id."""
    return Path(model).suffix.lower() in SINGLE_FILE_SUFFIXES


def file_sha256(path: Path) -> str:
    """The file's sha256 in hex, read in 1 MiB chunks (A1111's model hash is its first 10 digits)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Checkpoint:
    """The tensors of one file by key, with their shapes known before any is loaded."""

    def __init__(self, path: str | Path, allow_pickle: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsError(f"{self.path} does not exist" if not self.path.exists() else
                               f"{self.path} is not a file")
        suffix = self.path.suffix.lower()
        self._loaded: dict[str, torch.Tensor] | None = None
        if suffix == SAFETENSORS:
            try:
                self._file = safe_open(str(self.path), framework="pt", device="cpu")
                self.shapes = {key: tuple(self._file.get_slice(key).get_shape()) for key in self._file.keys()}
            except (SafetensorError, OSError) as err:
                raise WeightsError(f"{self.path} is not a readable safetensors file ({err}); it may be truncated: "
                                   "download it again") from None
        elif suffix in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise WeightsError(f"{self.path} is a pickled checkpoint, which can run code when loaded; convert "
                                   "it to safetensors or pass --allow-pickle to load it with "
                                   "torch.load(weights_only=True)")
            self._loaded = {k: v for k, v in read_state_dict([self.path]).items() if isinstance(v, torch.Tensor)}
            self.shapes = {key: tuple(tensor.shape) for key, tensor in self._loaded.items()}
        else:
            raise WeightsError(f"{self.path}: a checkpoint file ends in {', '.join(SINGLE_FILE_SUFFIXES)}")

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def keys_under(self, prefix: str) -> list[str]:
        """The keys that start with ``prefix``."""
        return [key for key in self.shapes if key.startswith(prefix)]

    def tensor(self, key: str) -> torch.Tensor:
        """The stored tensor (on the CPU, in the file's dtype)."""
        if self._loaded is not None:
            return self._loaded[key]
        try:
            return self._file.get_tensor(key)
        except (SafetensorError, OSError) as err:
            raise WeightsError(f"{self.path}: tensor {key} cannot be read ({err}); the file may be truncated") from None

    def float_dtypes(self) -> set[torch.dtype]:
        """The dtypes of the floating tensors (read from the header only for safetensors)."""
        if self._loaded is not None:
            return {t.dtype for t in self._loaded.values() if t.is_floating_point()}
        names = {self._file.get_slice(key).get_dtype() for key in self.shapes}
        table = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
        return {table[name] for name in names if name in table}
