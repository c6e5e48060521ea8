"""k-diffusion 0.1.1.post1, the oracle of the k-sampler tests, loaded without its training-side imports.

k-diffusion's package ``__init__`` imports its training code (clean-fid, kornia, wandb ...) and ``utils`` imports
torchvision for two image helpers the samplers never call. The test extra installs k-diffusion without those
dependencies (``pip install --no-deps``), so this loader imports ``sampling`` and ``external`` as submodules of an
empty package, with a stand-in for torchvision when it is missing. Noise: ``hijacked_noise`` routes the
samplers' ``torch.randn_like`` to a generator, as A1111's TorchHijack does.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch


def _package_dir() -> Path | None:
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _load() -> tuple[types.ModuleType, types.ModuleType]:
    if "k_diffusion.sampling" in sys.modules and "k_diffusion.external" in sys.modules:
        return sys.modules["k_diffusion.sampling"], sys.modules["k_diffusion.external"]
    folder = _package_dir()
    if folder is None:
        pytest.fail("k-diffusion, the samplers' oracle, is not installed: `make test` installs it, or run "
                    "pip install --no-deps k-diffusion==0.1.1.post1", pytrace=False)
    stand_ins = []
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:  # absent, or a build that does not match this torch
        stand_ins = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional"]
        for name in stand_ins:
            sys.modules[name] = types.ModuleType(name)
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(folder)]
    sys.modules["k_diffusion"] = package
    loaded = []
    for name in ("utils", "sampling", "external"):
        spec = importlib.util.spec_from_file_location(f"k_diffusion.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        setattr(package, name, module)
        loaded.append(module)
        if name == "utils":  # utils holds its stand-in; nothing else may find a torchvision that is not there
            for stand_in in stand_ins:
                sys.modules.pop(stand_in, None)
    return loaded[1], loaded[2]


def sampling() -> types.ModuleType:
    """``k_diffusion.sampling``."""
    return _load()[0]


def external() -> types.ModuleType:
    """``k_diffusion.external`` (the DDPM denoiser wrappers)."""
    return _load()[1]


class _TorchWithGenerator:
    """``torch`` as k-diffusion's sampling module sees it, but ``randn_like`` draws from one generator."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def randn_like(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


@contextmanager
def hijacked_noise(generator: torch.Generator) -> Iterator[None]:
    """Within the block, k-diffusion's ``torch.randn_like`` draws from ``generator`` (one randn per call)."""
    module = sampling()
    original = module.torch
    module.torch = _TorchWithGenerator(generator)
    try:
        yield
    finally:
        module.torch = original


def generator_noise_sampler(generator: torch.Generator, like: torch.Tensor):
    """A k-diffusion ``noise_sampler`` drawing one randn of ``like``'s shape from ``generator`` per call."""
    return lambda sigma, sigma_next: torch.randn(like.shape, generator=generator, dtype=like.dtype)
