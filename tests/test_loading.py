"""Strict weight loading: safetensors only by default, one clear error for every kind of bad checkpoint."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from schedcmp.core.errors import WeightsError
from schedcmp.core.models.loading import load_weights, weight_files


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)


def toy_state(**changes: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in Toy().state_dict().items()}
    state.update(changes)
    return state


def save(folder: Path, state: dict[str, torch.Tensor], name: str = "model.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / name)
    return folder / name


def test_loads_strictly_into_the_right_dtype(tmp_path: Path) -> None:
    state = toy_state()
    save(tmp_path, state)
    module = load_weights(Toy, weight_files(tmp_path, "model"), torch.float16)
    assert module.proj.weight.dtype == torch.float16
    assert torch.equal(module.proj.weight.float(), state["proj.weight"].half().float())
    assert not module.training


def test_variant_file_is_chosen(tmp_path: Path) -> None:
    save(tmp_path, toy_state(), "model.fp16.safetensors")
    assert weight_files(tmp_path, "model", variant="fp16") == [tmp_path / "model.fp16.safetensors"]


def test_sharded_index_loads_every_shard(tmp_path: Path) -> None:
    state = toy_state()
    save(tmp_path, {k: v for k, v in state.items() if k.startswith("proj")}, "model-00001-of-00002.safetensors")
    save(tmp_path, {k: v for k, v in state.items() if k.startswith("norm")}, "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" if k.startswith("proj") else "model-00002-of-00002.safetensors"
                  for k in state}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    module = load_weights(Toy, weight_files(tmp_path, "model"), torch.float32)
    assert torch.equal(module.norm.weight, state["norm.weight"])


def test_missing_weights_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as error:
        weight_files(tmp_path, "diffusion_pytorch_model")
    assert str(error.value) == (
        f"no weights in {tmp_path}: expected diffusion_pytorch_model.safetensors "
        "(or a sharded diffusion_pytorch_model.safetensors.index.json)"
    )


def test_truncated_file_is_named(tmp_path: Path) -> None:
    file = save(tmp_path, toy_state())
    file.write_bytes(file.read_bytes()[:-20])
    with pytest.raises(WeightsError, match=rf"^{file} is not a readable safetensors file .*it may be truncated"):
        load_weights(Toy, weight_files(tmp_path, "model"), torch.float32)


def test_missing_unexpected_and_misshaped_keys_in_one_error(tmp_path: Path) -> None:
    state = toy_state(**{"proj.weight": torch.zeros(5, 4), "extra.bias": torch.zeros(2)})
    del state["norm.bias"]
    file = save(tmp_path, state)
    with pytest.raises(WeightsError) as error:
        load_weights(Toy, weight_files(tmp_path, "model"), torch.float32)
    assert str(error.value) == (
        f"{file} does not fit Toy: missing 1 keys (norm.bias); unexpected 1 keys (extra.bias); "
        "1 keys of the wrong shape (proj.weight (5, 4) (expected (3, 4)))"
    )


def test_pickle_is_refused_without_opt_in(tmp_path: Path) -> None:
    torch.save(toy_state(), tmp_path / "model.bin")
    with pytest.raises(WeightsError) as error:
        weight_files(tmp_path, "model")
    assert str(error.value) == (
        f"{tmp_path / 'model.bin'} is a pickled checkpoint, which can run code when loaded; convert it to "
        "safetensors or pass --allow-pickle to load it with torch.load(weights_only=True)"
    )


def test_pickle_with_opt_in_loads_weights_only(tmp_path: Path) -> None:
    state = toy_state()
    torch.save(state, tmp_path / "model.bin")
    module = load_weights(Toy, weight_files(tmp_path, "model", allow_pickle=True), torch.float32)
    assert torch.equal(module.proj.bias, state["proj.bias"])


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_that_would_run_code_is_refused_even_with_opt_in(tmp_path: Path, capsys) -> None:
    (tmp_path / "model.bin").write_bytes(pickle.dumps({"proj.weight": _Payload()}))
    with pytest.raises(WeightsError) as refused:
        load_weights(Toy, weight_files(tmp_path, "model", allow_pickle=True), torch.float32)
    assert "this must never run" not in capsys.readouterr().out
    assert str(refused.value).startswith(
        f"{tmp_path / 'model.bin'} holds Python objects")
    assert str(refused.value).endswith(
        "that a weights-only load refuses because loading them could run code; if you trust its source, convert it "
        "to .safetensors where that is safe (load its state dict and write it with safetensors.torch.save_file), then "
        "load the .safetensors file")
    assert "\n" not in str(refused.value) and "weights_only=False" not in str(refused.value)
