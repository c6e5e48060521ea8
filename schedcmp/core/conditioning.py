"""What a denoiser is conditioned on, as one batch-first container: the text sequence and, for SDXL, the pooled
text vector and the micro-conditioning time ids (Podell et al. 2023, sec. 2.2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class Conditioning:
    """Per-sample conditioning: ``embeddings`` [B, ...] always, ``pooled`` [B, P] and ``time_ids`` [B, K] where the
    model takes them (SDXL's ``text_embeds`` and ``time_ids``)."""

    embeddings: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name, value in self._present():
            if value.shape[0] != self.batch_size:
                raise ValueError(f"conditioning: {name} has batch {value.shape[0]}, embeddings {self.batch_size}")

    def _present(self) -> list[tuple[str, torch.Tensor]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]

    @property
    def batch_size(self) -> int:
        return self.embeddings.shape[0]

    @property
    def added_cond_kwargs(self) -> dict[str, torch.Tensor] | None:
        """The extra UNet inputs under diffusers' names (None where the model takes only the text sequence)."""
        if self.pooled is None and self.time_ids is None:
            return None
        return {"text_embeds": self.pooled, "time_ids": self.time_ids}

    @staticmethod
    def concat(parts: Sequence[Conditioning]) -> Conditioning:
        """The samples of ``parts`` one after another along the batch dimension."""
        first = parts[0]
        return replace(first, **{name: torch.cat([getattr(p, name) for p in parts]) for name, _ in first._present()})

    def repeat(self, times: int) -> Conditioning:
        """The whole batch ``times`` times over: [B, ...] -> [times * B, ...] (b0, b1, b0, b1, ...)."""
        return replace(self, **{name: value.repeat(times, *([1] * (value.dim() - 1)))
                                for name, value in self._present()})

    def repeat_each(self, times: int) -> Conditioning:
        """Each sample ``times`` times in a row: [B, ...] -> [B * times, ...] (b0, b0, b1, b1, ...)."""
        return replace(self, **{name: value.repeat_interleave(times, dim=0) for name, value in self._present()})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Conditioning:
        """Every tensor on ``device``; the floating ones in ``dtype``."""
        return replace(self, **{name: value.to(device=device, dtype=dtype if value.is_floating_point() else None)
                                for name, value in self._present()})
