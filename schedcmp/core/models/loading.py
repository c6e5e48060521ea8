"""Strict weight loading: safetensors files into modules whose attribute names are the checkpoint's keys.

Nothing from a model folder is executed: weights come from ``.safetensors``; pickled ``.bin`` / ``.ckpt`` files
are refused unless the caller opts in, and are then read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import WeightsError

SAFETENSORS = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
_SHOWN = 8  # keys listed per kind in an error before "and N more"


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def weight_files(folder: Path, stem: str, variant: str | None = None, allow_pickle: bool = False) -> list[Path]:
    """The files holding a component's weights: ``<stem>[.<variant>].safetensors`` or its sharded index.

    Falls back to ``<stem>[.<variant>].bin`` only with ``allow_pickle``; says what it looked for otherwise.
    """
    name = f"{stem}.{variant}" if variant else stem
    single = folder / f"{name}{SAFETENSORS}"
    if single.is_file():
        return [single]
    index = folder / f"{name}{SAFETENSORS}.index.json"
    if index.is_file():
        return _shards(index)
    pickled = [folder / f"{name}{suffix}" for suffix in PICKLE_SUFFIXES if (folder / f"{name}{suffix}").is_file()]
    if pickled and not allow_pickle:
        raise WeightsError(
            f"{pickled[0]} is a pickled checkpoint, which can run code when loaded; convert it to safetensors or "
            "pass --allow-pickle to load it with torch.load(weights_only=True)"
        )
    if pickled:
        return pickled[:1]
    expected = f"{name}{SAFETENSORS}"
    raise WeightsError(f"no weights in {folder}: expected {expected} (or a sharded {expected}.index.json)")


def _shards(index: Path) -> list[Path]:
    """The shard files a ``*.safetensors.index.json`` names, in order, each checked to exist."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise WeightsError(f"{index}: not a safetensors index (expected a JSON object with a weight_map)") from None
    shards = [index.parent / name for name in dict.fromkeys(weight_map.values())]
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise WeightsError(f"{index} names shards that are missing: {_listing(missing)}")
    return shards


def read_state_dict(files: list[Path], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of the given files; a truncated or corrupt file is reported with its path."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == SAFETENSORS:
            try:
                state.update(load_file(file, device=str(device)))
            except (SafetensorError, OSError) as err:
                raise WeightsError(
                    f"{file} is not a readable safetensors file ({err}); it may be truncated: download it again"
                ) from None
        else:
            try:
                with warnings.catch_warnings():  # torch's note on the pickle protocol is not the user's business
                    warnings.simplefilter("ignore", UserWarning)
                    loaded = torch.load(file, map_location=device, weights_only=True)
            except pickle.UnpicklingError as err:  # torch's refusal of objects that could run code
                found = _refused_global(str(err))
                raise WeightsError(
                    f"{file} holds Python objects{found} that a weights-only load refuses because loading them could "
                    "run code; if you trust its source, convert it to .safetensors where that is safe (load its "
                    "state dict and write it with safetensors.torch.save_file), then load the .safetensors file"
                ) from None
            except Exception as err:  # torch raises several types for corrupt pickles
                reason = " ".join(str(err).split())[:200]
                raise WeightsError(f"{file} could not be read as a weights-only checkpoint ({type(err).__name__}: "
                                   f"{reason}); it may be truncated or not a PyTorch checkpoint") from None
            state.update(loaded.get("state_dict", loaded) if isinstance(loaded, dict) else {})
    return state


def _refused_global(message: str) -> str:
    """' (such as collections.OrderedDict)' for the global named in torch's refusal message, else ''."""
    match = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"Unsupported global: ([\w.]+)", message)
    return f" (such as {match[1]})" if match else ""


def check_state_dict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise one error listing every missing, unexpected and mis-shaped key of ``state`` for ``module``."""
    expected = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    persistent = set(module.state_dict().keys())
    expected = {k: v for k, v in expected.items() if k in persistent}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys ({_listing(missing)})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys ({_listing(unexpected)})")
    if misshaped:
        problems.append(f"{len(misshaped)} keys of the wrong shape ({_listing(misshaped)})")
    if problems:
        raise WeightsError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))


def load_weights(
    build: Callable[[], torch.nn.Module],
    files: list[Path],
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> torch.nn.Module:
    """Build a module without allocating its weights, then assign the checkpoint's tensors to it strictly."""
    with torch.device("meta"):
        module = build()
    state = read_state_dict(files)
    if convert is not None:
        state = convert(state)
    source = files[0] if len(files) == 1 else files[0].parent
    check_state_dict(module, state, str(source))
    module.load_state_dict(state, strict=True, assign=True)
    leftover = [name for name, tensor in (*module.named_parameters(), *module.named_buffers()) if tensor.is_meta]
    if leftover:
        raise WeightsError(f"{source}: {type(module).__name__} left tensors without values: {_listing(leftover)}")
    return module.to(device=device, dtype=dtype).eval()
