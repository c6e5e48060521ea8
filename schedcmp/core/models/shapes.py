"""The built-in, exactly solvable diffusion model ``builtin:shapes``.

The "training set" is a small, deterministic set of captioned shape images drawn with Pillow. The denoiser
returns the exact posterior mean of that set under the DDPM forward process, the prompt selects the subset of
images whose caption it names, and the probability-flow ODE therefore has a ground truth
(:func:`probability_flow_reference`) against which schedulers and step counts can be measured.

Notation: ``abar`` is ``alphas_cumprod[t]``, ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` (DDPM space), and
``sigma = sqrt((1 - abar) / abar)``, ``x = x_t / sqrt(abar) = x0 + sigma eps`` (k-diffusion / EDM space).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 230),
    "yellow": (245, 215, 30),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "orange": (245, 135, 20),
    "purple": (140, 50, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
BACKGROUNDS: tuple[str, ...] = ("black", "white", "blue", "green")
RADII: tuple[float, ...] = (0.28, 0.36)  # shape radius as a fraction of the image size
OFFSETS: tuple[tuple[float, float], ...] = ((0.0, 0.0), (-0.07, -0.05), (0.06, 0.07))  # centre shift (x, y)

PredictionType = Literal["epsilon", "v_prediction", "sample"]


class ShapesPromptWarning(UserWarning):
    """A prompt named nothing that builtin:shapes can draw; the whole data set is used instead."""


# --------------------------------------------------------------------------------------------------- data set


@dataclass(frozen=True)
class ShapesItem:
    """Attributes of one data set image; ``center`` is (x, y) in pixels, ``radius`` in pixels."""

    color: str
    shape: str
    background: str
    center: tuple[float, float]
    radius: float

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape} on a {self.background} background"


@dataclass(frozen=True, eq=False)
class ShapesDataset:
    """The images and their attributes, stored factored (shared and cached: do not modify).

    Every image is a background color plus one shape mask times (shape color - background color), and only
    a few masks exist (one per shape, radius and position), so images = coefficients @ masks exactly:
    ``images[i, c] = sum_k coefficients[i, c, k] * masks[k]`` with ``masks[0]`` the all-ones image.
    """

    size: int
    items: tuple[ShapesItem, ...]
    masks: torch.Tensor  # [K, H, W] float32 in {0, 1}
    coefficients: torch.Tensor  # [N, 3, K] float32

    def __len__(self) -> int:
        return len(self.items)

    @functools.cached_property
    def images(self) -> torch.Tensor:
        """The images [N, 3, H, W], float32 in [-1, 1]."""
        return torch.einsum("nck,khw->nchw", self.coefficients.double(), self.masks.double()).float()


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: int) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        h = 0.82 * r
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "triangle":  # equilateral, pointing up, centroid at (cx, cy)
        angles = (-90.0, 30.0, 150.0)
        draw.polygon([(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in angles],
                     fill=fill)
    elif shape == "star":  # five points, inner radius 0.45 r
        points = []
        for k in range(10):
            rk = r if k % 2 == 0 else 0.45 * r
            a = math.radians(-90.0 + 36.0 * k)
            points.append((cx + rk * math.cos(a), cy + rk * math.sin(a)))
        draw.polygon(points, fill=fill)
    elif shape == "cross":  # a plus sign, arms r / 3 wide on each side
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _to_unit(rgb: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float64) / 127.5 - 1  # [3] in [-1, 1]


@functools.lru_cache(maxsize=4)
def _build_dataset(size: int) -> ShapesDataset:
    geometries = [(shape, radius, offset) for shape in SHAPES for radius in RADII for offset in OFFSETS]
    masks = [np.ones((size, size), dtype=np.float32)]
    for shape, radius, (dx, dy) in geometries:
        mask = Image.new("L", (size, size), 0)
        _draw_shape(ImageDraw.Draw(mask), shape, (0.5 + dx) * size, (0.5 + dy) * size, radius * size, 255)
        masks.append(np.asarray(mask, dtype=np.float32) / 255)
    items: list[ShapesItem] = []
    coefficients: list[torch.Tensor] = []
    for background in BACKGROUNDS:
        for color, rgb in COLORS.items():
            if color == background:
                continue
            for k, (shape, radius, (dx, dy)) in enumerate(geometries, start=1):
                items.append(ShapesItem(color, shape, background, ((0.5 + dx) * size, (0.5 + dy) * size),
                                        radius * size))
                coef = torch.zeros(3, len(masks), dtype=torch.float64)  # [3, K]
                coef[:, 0] = _to_unit(COLORS[background])
                coef[:, k] = _to_unit(rgb) - _to_unit(COLORS[background])
                coefficients.append(coef)
    return ShapesDataset(size=size, items=tuple(items), masks=torch.from_numpy(np.stack(masks)),
                         coefficients=torch.stack(coefficients).float())


def shapes_dataset(size: int = 64) -> ShapesDataset:
    """The deterministic builtin:shapes data set at ``size`` x ``size`` pixels (built once per size)."""
    if not isinstance(size, int) or size < 32 or size % 8:
        raise ValueError(f"builtin:shapes needs an image size that is an integer >= 32 and a multiple of 8, "
                         f"got {size!r}")
    return _build_dataset(size)


# --------------------------------------------------------------------------------------------------- prompts

_SHAPE_WORDS: dict[str, str] = {s: s for s in SHAPES} | {s + ("es" if s.endswith("s") else "s"): s for s in SHAPES}
_BACKGROUND_WORDS = frozenset({"background", "backgrounds"})
# Words that may follow a color without naming an object the data set lacks ("a red and blue ...", "red shapes").
_FILLER_WORDS = frozenset({"a", "an", "the", "and", "or", "on", "in", "of", "with", "one", "shape", "shapes",
                           "object", "objects", "thing", "things", "colored", "coloured"})


@dataclass(frozen=True)
class ShapesQuery:
    """The attributes a prompt names; an attribute named with two different values matches nothing."""

    colors: frozenset[str] = frozenset()
    shapes: frozenset[str] = frozenset()
    backgrounds: frozenset[str] = frozenset()

    @property
    def names_anything(self) -> bool:
        return bool(self.colors or self.shapes or self.backgrounds)

    def matches(self, item: ShapesItem) -> bool:
        pairs = ((self.colors, item.color), (self.shapes, item.shape), (self.backgrounds, item.background))
        return all(not named or named == {value} for named, value in pairs)


def parse_prompt(prompt: str) -> ShapesQuery:
    """Read shape color, shape and background color from a prompt such as "a red circle on a blue background".

    A color word is the background color when followed by "background" or preceded by "on" / "on a"; otherwise
    it is the shape color, unless the next word is an unknown noun ("a purple dragon"), which the data set
    cannot show and which therefore matches nothing. Other unknown words are ignored.
    """
    words = re.findall(r"[a-z]+", prompt.lower())
    colors: set[str] = set()
    shapes: set[str] = set()
    backgrounds: set[str] = set()
    for i, word in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if word in _SHAPE_WORDS:
            shapes.add(_SHAPE_WORDS[word])
        elif word in COLORS:
            before = words[max(i - 2, 0): i]
            after_on = before[-1:] == ["on"] or (before[:1] == ["on"] and before[-1] in ("a", "an", "the"))
            if nxt in _BACKGROUND_WORDS or (after_on and nxt not in _SHAPE_WORDS):
                backgrounds.add(word)
            elif nxt and nxt not in _SHAPE_WORDS and nxt not in COLORS and nxt not in _FILLER_WORDS:
                shapes.add(nxt)  # "a purple dragon": an object the data set does not have
            else:
                colors.add(word)
    return ShapesQuery(frozenset(colors), frozenset(shapes), frozenset(backgrounds))


def known_words_message() -> str:
    """The vocabulary of builtin:shapes, as the prompt warning states it."""
    return (f"Known words: colors: {', '.join(COLORS)}; shapes: {', '.join(SHAPES)}; "
            f"backgrounds: {', '.join(BACKGROUNDS)}")


class ShapesTextEncoder:
    """Prompt -> log-weights over the data set (0 for images the prompt names, -inf otherwise): the "text
    embedding" of builtin:shapes. The empty prompt selects the whole set (the unconditional embedding)."""

    def __init__(self, dataset: ShapesDataset) -> None:
        self.dataset = dataset

    def mask(self, prompt: str) -> torch.Tensor:
        """Boolean membership [N] of the images the prompt names; warns and selects all when it names none."""
        everything = torch.ones(len(self.dataset), dtype=torch.bool)  # [N]
        if not re.search(r"[a-z]", prompt.lower()):
            return everything
        query = parse_prompt(prompt)
        members = torch.tensor([query.matches(item) for item in self.dataset.items], dtype=torch.bool)  # [N]
        if query.names_anything and bool(members.any()):
            return members
        warnings.warn(f'no image in builtin:shapes matches "{prompt}"; using the whole data set. '
                      f"{known_words_message()}", ShapesPromptWarning, stacklevel=3)
        return everything

    def __call__(self, prompts: str | Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Log-weights [B, N], float32: 0 for members of each prompt's subset, -inf for the rest."""
        if isinstance(prompts, str):
            prompts = [prompts]
        members = torch.stack([self.mask(p) for p in prompts])  # [B, N]
        log_weights = torch.zeros(members.shape, dtype=torch.float32).masked_fill(~members, -math.inf)
        return log_weights.to(device) if device is not None else log_weights


# --------------------------------------------------------------------------------------------------- denoiser


def _half_sq_norms(dataset: ShapesDataset) -> torch.Tensor:
    """|x_i|^2 / 2 [N] in float64, from the factors: sum_c coef_ic^T G coef_ic with the mask Gram matrix G."""
    masks = dataset.masks.reshape(len(dataset.masks), -1).double()  # [K, P]
    coefficients = dataset.coefficients.double()  # [N, 3, K]
    return 0.5 * torch.einsum("nck,kl,ncl->n", coefficients, masks @ masks.T, coefficients)


def _dots_with_data(x: torch.Tensor, masks: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """x.x_i for every data-set image x_i = coef_i @ masks, from the factors: x [B, 3, P] -> [B, N]."""
    return (x @ masks.T).reshape(x.shape[0], -1) @ coefficients.T  # [B, 3, K] -> [B, 3K] -> [B, N]


def _posterior_mean(x: torch.Tensor, sigma: torch.Tensor | float, masks: torch.Tensor, coefficients: torch.Tensor,
                    half_sq_norms: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """E[x0 | x] for x = x0 + sigma eps with x0 drawn from the weighted data set (the ideal denoiser of Karras
    et al. 2022, eq. 2, for an empirical distribution).

    x [B, 3, P], sigma [B, 1] or a number, masks [K, P], coefficients [N, 3K], half_sq_norms [N],
    log_weights [B, N] -> [B, 3, P]. -|x - x_i|^2 / (2 sigma^2) = (x.x_i - |x_i|^2 / 2) / sigma^2 - |x|^2 / (2 sigma^2),
    and the last term is the same for every i, so softmax drops it. With x_i = coef_i @ masks, x.x_i is
    (x @ masks.T) . coef_i: two small matmuls instead of one over all pixels of all images.
    """
    b, k = x.shape[0], masks.shape[0]
    logits = (_dots_with_data(x, masks, coefficients) - half_sq_norms) / sigma**2 + log_weights  # [B, N]
    weights = torch.softmax(logits, dim=-1)  # subtracts the row max; [B, N]
    return (weights @ coefficients).reshape(b, 3, k) @ masks  # [B, 3K] -> [B, 3, K] -> [B, 3, P]


def timestep_to_sigma(log_sigmas: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """sigma at (fractional) timesteps, log sigma interpolated linearly between integer steps and t clamped to
    [0, T-1]: the exact inverse of how diffusers' Euler-type schedulers map sigmas to timesteps."""
    last = log_sigmas.shape[0] - 1
    t = timestep.to(log_sigmas.dtype).clamp(0, last)
    lo = t.floor().long().clamp(max=last - 1)
    return torch.lerp(log_sigmas[lo], log_sigmas[lo + 1], t - lo).exp()


class ShapesDenoiser(torch.nn.Module):
    """The exact noise prediction of builtin:shapes: the posterior mean of the data set under the DDPM forward
    process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4), in the requested
    parametrisation.

    Computes in float32 (float64 if the module is converted to float64; reduced precision buffers are upcast to
    float32); the output has the sample's dtype.
    """

    def __init__(self, dataset: ShapesDataset, alphas_cumprod: torch.Tensor,
                 prediction_type: PredictionType = "epsilon") -> None:
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', "
                             f"got {prediction_type!r}")
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()  # [T]
        if abar.numel() < 2:
            raise ValueError("alphas_cumprod needs at least two timesteps")
        self.prediction_type = prediction_type
        self.in_channels = 3
        self.sample_size = dataset.size
        self.num_train_timesteps = abar.numel()
        masks = dataset.masks.reshape(len(dataset.masks), -1)  # [K, H*W]
        coefficients = dataset.coefficients.reshape(len(dataset), -1)  # [N, 3, K] -> [N, 3K]
        self.register_buffer("masks", masks.clone(), persistent=False)
        self.register_buffer("coefficients", coefficients.clone(), persistent=False)
        self.register_buffer("half_sq_norms", _half_sq_norms(dataset).float(), persistent=False)  # [N]
        self.register_buffer("log_sigmas", 0.5 * torch.log((1 - abar) / abar).float(), persistent=False)  # [T]

    def _compute_dtype(self) -> torch.dtype:
        return torch.promote_types(self.masks.dtype, torch.float32)

    def sigmas(self, timestep: torch.Tensor | float, batch_size: int) -> torch.Tensor:
        """sigma_t = sqrt((1 - abar_t) / abar_t) for a scalar or per-sample timestep, as a [B] vector."""
        dtype = self._compute_dtype()
        t = torch.as_tensor(timestep, device=self.log_sigmas.device).to(dtype).reshape(-1)  # [1] or [B]
        return timestep_to_sigma(self.log_sigmas.to(dtype), t.expand(batch_size))  # [B]

    def _predict(self, sample: torch.Tensor, timestep: torch.Tensor | float,
                 log_weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, x0_hat, sigma) in the sigma space: x [B, 3, P], x0_hat [B, 3, P], sigma [B, 1, 1]."""
        dtype = self._compute_dtype()
        b = sample.shape[0]
        sigma = self.sigmas(timestep, b)[:, None, None]  # [B, 1, 1]
        x = sample.reshape(b, 3, -1).to(dtype) * torch.sqrt(1 + sigma**2)  # x_t / sqrt(abar); [B, 3, P]
        if log_weights is None:  # no prompt: the whole data set
            log_weights = torch.zeros((), dtype=dtype, device=x.device)
        log_weights = log_weights.to(dtype).expand(b, -1) if log_weights.dim() else log_weights  # [B, N]
        x0 = _posterior_mean(x, sigma[:, :, 0], self.masks.to(dtype), self.coefficients.to(dtype),
                             self.half_sq_norms.to(dtype), log_weights)
        return x, x0, sigma

    def posterior_mean(self, sample: torch.Tensor, timestep: torch.Tensor | float,
                       log_weights: torch.Tensor | None = None) -> torch.Tensor:
        """x0_hat = E[x0 | x_t] = sum_i softmax_i(-|x_t - sqrt(abar) x_i|^2 / (2 (1 - abar)) + logw_i) x_i."""
        _, x0, _ = self._predict(sample, timestep, log_weights)
        return x0.reshape(sample.shape).to(sample.dtype)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float,
                encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """Exact eps, v or x0 prediction for x_t [B, 3, H, W] at timestep(s) t, given log-weights [B, N]."""
        x, x0, sigma = self._predict(sample, timestep, encoder_hidden_states)
        if self.prediction_type == "sample":
            out = x0
        else:
            eps = (x - x0) / sigma  # == (x_t - sqrt(abar) x0) / sqrt(1 - abar); [B, 3, P]
            # v = sqrt(abar) eps - sqrt(1 - abar) x0, with sqrt(abar) = 1 / sqrt(1 + sigma^2)
            out = eps if self.prediction_type == "epsilon" else (eps - sigma * x0) / torch.sqrt(1 + sigma**2)
        return out.reshape(sample.shape).to(sample.dtype)


# --------------------------------------------------------------------------------------------------- decode


def to_uint8(samples: torch.Tensor) -> np.ndarray:
    """Model-space samples [B, 3, H, W] in ~[-1, 1] -> uint8 pixels [B, H, W, 3]."""
    pixels = ((samples.detach().float().cpu() + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()  # [B, H, W, 3]


# --------------------------------------------------------------------------------------------------- reference


def probability_flow_reference(x_T: torch.Tensor, log_weights: torch.Tensor, sigma_start: float,
                               guidance_scale: float = 1.0, uncond_log_weights: torch.Tensor | None = None,
                               steps: int = 200, *, sigma_end: float = 1e-3,
                               dataset: ShapesDataset | None = None) -> torch.Tensor:
    """Converged float64 solution x0 [B, 3, H, W] of the PF-ODE dx/dsigma = (x - D(x; sigma)) / sigma (Karras
    et al. 2022, eqs. 1 and 3 with sigma(t) = t), from x = x_T at sigma_start to sigma = 0.

    ``x_T`` is in the sigma space (x = x_t / sqrt(abar), what Euler-type schedulers hold: noise times
    init_noise_sigma); convert a DDPM-space x_t with x = x_t * sqrt(1 + sigma_start^2). D is the posterior mean,
    guided as D_u + g (D_c - D_u) when ``guidance_scale`` != 1 (``uncond_log_weights`` default: the whole set).
    RK4 on ``steps`` steps uniform in log sigma down to ``sigma_end``, where the posterior is one-hot, then one
    last step to sigma = 0, which lands exactly on D.
    """
    ds = dataset if dataset is not None else shapes_dataset(x_T.shape[-1])
    b, n = x_T.shape[0], len(ds)
    f64 = {"dtype": torch.float64, "device": x_T.device}
    masks = ds.masks.reshape(len(ds.masks), -1).to(**f64)  # [K, P]
    coefficients = ds.coefficients.reshape(n, -1).to(**f64)  # [N, 3K]
    half_sq_norms = _half_sq_norms(ds).to(**f64)  # [N]
    weights = torch.as_tensor(log_weights).to(**f64).reshape(-1, n).expand(b, n)  # [B, N]
    guided = guidance_scale != 1.0
    if guided:
        uncond = (torch.zeros_like(weights) if uncond_log_weights is None
                  else torch.as_tensor(uncond_log_weights).to(**f64).reshape(-1, n).expand(b, n))  # [B, N]
        weights = torch.cat([weights, uncond])  # [2B, N]

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:  # [B, 3, P] -> [B, 3, P]
        if not guided:
            return _posterior_mean(x, sigma, masks, coefficients, half_sq_norms, weights)
        both = _posterior_mean(torch.cat([x, x]), sigma, masks, coefficients, half_sq_norms, weights)
        d_cond, d_uncond = both.chunk(2)  # [2B, 3, P] -> 2 x [B, 3, P]
        return d_uncond + guidance_scale * (d_cond - d_uncond)

    def velocity(x: torch.Tensor, log_sigma: float) -> torch.Tensor:  # dx / dlog(sigma) = x - D
        return x - denoise(x, math.exp(log_sigma))

    x = x_T.reshape(b, 3, -1).to(torch.float64)  # [B, 3, P]
    if sigma_start > sigma_end:
        grid = np.linspace(math.log(sigma_start), math.log(sigma_end), steps + 1)
        for s, s_next in itertools.pairwise(grid):
            h = float(s_next - s)
            k1 = velocity(x, s)
            k2 = velocity(x + 0.5 * h * k1, s + 0.5 * h)
            k3 = velocity(x + 0.5 * h * k2, s + 0.5 * h)
            k4 = velocity(x + h * k3, s_next)
            x = x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return denoise(x, min(sigma_start, sigma_end)).reshape(x_T.shape)


def nearest_images(samples: torch.Tensor, dataset: ShapesDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSE [B], index [B]) of the data-set image closest to each sample [B, 3, H, W], in float64.

    |x - x_i|^2 = |x|^2 - 2 x.x_i + |x_i|^2 with x.x_i from the factors, as in the posterior mean.
    """
    b, n = samples.shape[0], len(dataset)
    x = samples.detach().reshape(b, 3, -1).to(torch.float64)  # [B, 3, P]
    masks = dataset.masks.reshape(len(dataset.masks), -1).to(x)  # [K, P]
    coefficients = dataset.coefficients.reshape(n, -1).to(x)  # [N, 3K]
    squares = (x.square().sum(dim=(1, 2))[:, None] - 2 * _dots_with_data(x, masks, coefficients)
               + 2 * _half_sq_norms(dataset).to(x))  # |x - x_i|^2; [B, N]
    best, index = squares.min(dim=1)
    return (best.clamp(min=0) / x[0].numel()).sqrt(), index
