"""builtin:shapes: the data set, prompt parsing, the exact denoiser and the reference PF-ODE solution."""

import math
import warnings

import numpy as np
import pytest
import torch

from schedcmp.core.models.shapes import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    ShapesDenoiser,
    ShapesPromptWarning,
    ShapesTextEncoder,
    parse_prompt,
    probability_flow_reference,
    shapes_dataset,
    to_uint8,
)
from schedcmp.core.pipeline import to_pil_images, to_unit_images

PROMPT = "a red circle on a blue background"
KNOWN = ("Known words: colors: red, green, blue, yellow, white, black, orange, purple; "
         "shapes: circle, square, triangle, star, cross; backgrounds: black, white, blue, green")


def sd15_alphas_cumprod() -> torch.Tensor:
    """Stable Diffusion 1.5's training schedule ("scaled_linear", 1000 steps), float64."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


@pytest.fixture(scope="module")
def dataset():
    return shapes_dataset(64)


@pytest.fixture(scope="module")
def encoder(dataset):
    return ShapesTextEncoder(dataset)


def encode_quietly(encoder: ShapesTextEncoder, prompts) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return encoder(prompts)


def brute_force_posterior_mean(images, alphas_cumprod, x_t, t, log_weights):
    """float64, one image at a time: sum_i softmax_i(-|x_t - sqrt(abar) x_i|^2 / (2 (1 - abar)) + logw_i) x_i."""
    log_sigmas = 0.5 * torch.log((1 - alphas_cumprod) / alphas_cumprod)
    lo = min(math.floor(t), len(log_sigmas) - 2)
    sigma = math.exp(float(log_sigmas[lo] + (t - lo) * (log_sigmas[lo + 1] - log_sigmas[lo])))
    abar = 1 / (1 + sigma**2)
    x_t = x_t.double()
    logits = torch.empty(len(images), dtype=torch.float64)
    for i, image in enumerate(images.double()):
        logits[i] = -(x_t - math.sqrt(abar) * image).square().sum() / (2 * (1 - abar)) + log_weights[i]
    weights = torch.exp(logits - torch.logsumexp(logits, 0))
    return torch.einsum("n,nchw->chw", weights, images.double())


# --------------------------------------------------------------------------------------------------- data set


def test_dataset_layout_and_size(dataset):
    n = len(BACKGROUNDS) * (len(COLORS) - 1) * len(SHAPES) * 6  # 6 = 2 radii x 3 positions per caption
    assert len(dataset) == n == 840
    assert dataset.images.shape == (n, 3, 64, 64)
    assert dataset.images.dtype == torch.float32
    assert dataset.images.min() >= -1 and dataset.images.max() <= 1
    assert shapes_dataset(64) is dataset  # cached
    assert all(item.color != item.background for item in dataset.items)
    assert len(torch.unique(dataset.images.reshape(n, -1), dim=0)) == n  # no two images alike
    assert shapes_dataset(32).images.shape == (n, 3, 32, 32)


@pytest.mark.parametrize("size", [16, 36, 64.0])
def test_dataset_rejects_bad_sizes(size):
    with pytest.raises(ValueError, match="multiple of 8"):
        shapes_dataset(size)


@pytest.mark.parametrize("size", [32, 64])
def test_images_are_crisp_and_show_the_named_colors(size):
    ds = shapes_dataset(size)
    pixels = to_uint8(ds.images)  # [N, H, W, 3]
    for item, image in zip(ds.items, pixels, strict=True):
        fg, bg = np.array(COLORS[item.color]), np.array(COLORS[item.background])
        cx, cy = (int(c) for c in item.center)
        assert (image[cy, cx] == fg).all(), item.caption
        for corner in (image[0, 0], image[0, -1], image[-1, 0], image[-1, -1]):
            assert (corner == bg).all(), item.caption
        is_fg = (image == fg).all(-1)
        assert (is_fg | (image == bg).all(-1)).all(), f"{item.caption}: a third color (blur?)"
        assert 0.05 < is_fg.mean() < 0.5, item.caption


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, r: float, margin: float) -> np.ndarray:
    """Analytic membership of pixel offsets (dx, dy) from the centre, the boundary moved out by ``margin``."""
    if shape == "circle":
        return np.hypot(dx, dy) <= r + margin
    if shape == "square":
        return np.maximum(abs(dx), abs(dy)) <= 0.82 * r + margin
    if shape == "cross":
        w = r / 3
        return (((abs(dx) <= r + margin) & (abs(dy) <= w + margin))
                | ((abs(dx) <= w + margin) & (abs(dy) <= r + margin)))
    assert shape == "triangle"  # edges at distance r / 2 from the centroid, outward normals at 90, 210, 330 deg
    normals = [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in (90, 210, 330)]
    return np.all([nx * dx + ny * dy <= r / 2 + margin for nx, ny in normals], axis=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_have_the_right_geometry(dataset, shape):
    ys, xs = np.mgrid[0:64, 0:64] + 0.5  # Pillow's pixel (i, j) covers [j, j + 1) x [i, i + 1)
    for item, image in zip(dataset.items, to_uint8(dataset.images), strict=True):
        if item.shape != shape or item.color != "white" or item.background != "black":
            continue
        is_fg = image[..., 0] == 255  # [H, W]
        dx, dy, r = xs - item.center[0], ys - item.center[1], item.radius
        if shape == "star":  # the five tips are filled, the five notches between them are not
            for k in range(10):
                a = math.radians(-90 + 36 * k)
                px, py = item.center[0] + 0.8 * r * math.cos(a), item.center[1] + 0.8 * r * math.sin(a)
                assert is_fg[int(py), int(px)] == (k % 2 == 0), (item.caption, k)
            continue
        assert is_fg[_inside(shape, dx, dy, r, -1.5)].all(), item
        assert not is_fg[~_inside(shape, dx, dy, r, 1.5)].any(), item


def test_decode_round_trips_pixels(dataset):
    images = dataset.images[:3]
    pil = to_pil_images(to_unit_images(images))
    assert [p.size for p in pil] == [(64, 64)] * 3 and pil[0].mode == "RGB"
    back = torch.from_numpy(np.stack([np.asarray(p) for p in pil])).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(back, images, atol=1e-6)
    assert (to_uint8(torch.full((1, 3, 8, 8), 3.0)) == 255).all()  # out of range: clamped
    assert (to_uint8(torch.full((1, 3, 8, 8), -3.0)) == 0).all()


# --------------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize(("prompt", "colors", "shapes", "backgrounds", "size"), [
    (PROMPT, {"red"}, {"circle"}, {"blue"}, 6),
    ("A RED CIRCLE ON A BLUE BACKGROUND.", {"red"}, {"circle"}, {"blue"}, 6),
    ("a red circle on blue", {"red"}, {"circle"}, {"blue"}, 6),
    ("on a white background, a black triangle", {"black"}, {"triangle"}, {"white"}, 6),
    ("red circles", {"red"}, {"circle"}, set(), 24),
    ("crosses", set(), {"cross"}, set(), 168),
    ("purple", {"purple"}, set(), set(), 120),
    ("blue background", set(), set(), {"blue"}, 210),
    ("a green star, high quality, 4k", {"green"}, {"star"}, set(), 18),  # unknown words elsewhere: ignored
])
def test_prompt_selects_the_named_subset(encoder, dataset, prompt, colors, shapes, backgrounds, size):
    query = parse_prompt(prompt)
    assert (query.colors, query.shapes, query.backgrounds) == (colors, shapes, backgrounds)
    log_weights = encode_quietly(encoder, prompt)  # [1, N]
    assert log_weights.shape == (1, len(dataset)) and log_weights.dtype == torch.float32
    members = log_weights[0] == 0
    assert ((log_weights[0] == -math.inf) | members).all()
    assert int(members.sum()) == size
    assert all(query.matches(item) == bool(m) for item, m in zip(dataset.items, members, strict=True))


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_the_whole_set_without_warning(encoder, dataset, prompt):
    assert torch.equal(encode_quietly(encoder, prompt), torch.zeros(1, len(dataset)))


@pytest.mark.parametrize("prompt", [
    "a purple dragon",  # an object the data set lacks
    "a dragon",  # no known word at all
    "a red and blue circle",  # two shape colors
    "a red circle on a red background",  # red is not a background
    "a white square on a white background",  # shape color == background color: never drawn
])
def test_unmatched_prompt_warns_and_uses_the_whole_set(encoder, dataset, prompt):
    with pytest.warns(ShapesPromptWarning) as record:
        log_weights = encoder(prompt)
    assert torch.equal(log_weights, torch.zeros(1, len(dataset)))
    assert len(record) == 1
    assert str(record[0].message) == (
        f'no image in builtin:shapes matches "{prompt}"; using the whole data set. {KNOWN}')
    assert issubclass(ShapesPromptWarning, UserWarning)


def test_batch_of_prompts(encoder, dataset):
    log_weights = encode_quietly(encoder, [PROMPT, "", "stars"])
    assert log_weights.shape == (3, len(dataset))
    assert (torch.isfinite(log_weights).sum(1) == torch.tensor([6, 840, 168])).all()


# --------------------------------------------------------------------------------------------------- denoiser


@pytest.mark.parametrize("t", [0, 0.5, 10.25, 250, 499.5, 998.75, 999])
@pytest.mark.parametrize("prompt", [PROMPT, "stars", ""])
def test_posterior_mean_equals_brute_force(dataset, encoder, t, prompt):
    abar = sd15_alphas_cumprod()
    model = ShapesDenoiser(dataset, abar.float())
    log_weights = encode_quietly(encoder, prompt)[0]  # [N]
    gen = torch.Generator().manual_seed(round(4 * t))
    # halfway between two images plus noise, so that the posterior is genuinely split at mid t
    x0 = 0.5 * (dataset.images[5] + dataset.images[300]) + 0.1 * torch.randn(3, 64, 64, generator=gen)
    lo = min(math.floor(t), 998)
    a = float(abar[lo] + (t - lo) * (abar[lo + 1] - abar[lo]))
    x_t = (math.sqrt(a) * x0 + math.sqrt(1 - a) * torch.randn(3, 64, 64, generator=gen)).float()
    expected = brute_force_posterior_mean(dataset.images, abar, x_t, t, log_weights)
    got = model.posterior_mean(x_t[None], t, log_weights[None])[0]
    assert got.dtype == torch.float32
    assert (got.double() - expected).abs().max() < 1e-5
    got64 = model.double().posterior_mean(x_t[None].double(), torch.tensor([t]), log_weights[None])[0]
    assert (got64 - expected).abs().max() < 1e-6  # the data set is stored in float32


def test_per_sample_timesteps_and_cfg_batch(dataset, encoder):
    model = ShapesDenoiser(dataset, sd15_alphas_cumprod().float())
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([999.0, 500.5, 20.0, 0.0])
    log_weights = encode_quietly(encoder, [PROMPT, PROMPT, "", ""])
    batched = model(x, t, log_weights)
    assert batched.shape == x.shape and batched.dtype == x.dtype
    for i in range(4):
        alone = model(x[i:i + 1], t[i], log_weights[i:i + 1])
        assert torch.allclose(batched[i:i + 1], alone, atol=1e-5)
    assert torch.allclose(model(x, t, None), model(x, t, torch.zeros(4, len(dataset))))
    assert model(x.double(), t, log_weights).dtype == torch.float64


def test_sigmas_and_clamping():
    abar = sd15_alphas_cumprod()
    model = ShapesDenoiser(shapes_dataset(32), abar)
    sigmas = torch.sqrt((1 - abar) / abar)
    t = torch.tensor([0.0, 1.0, 500.0, 999.0])
    assert torch.allclose(model.sigmas(t, 4).double(), sigmas[[0, 1, 500, 999]], rtol=1e-6)
    half = model.sigmas(torch.tensor(10.5), 1).double()
    assert torch.allclose(half, torch.sqrt(sigmas[10] * sigmas[11]), rtol=1e-6)  # log-linear: geometric mean
    clamped = model.sigmas(torch.tensor([-3.0, 1234.0]), 2).double()
    assert torch.allclose(clamped, sigmas[[0, 999]], rtol=1e-6)


def test_fractional_timesteps_invert_diffusers_sigma_to_t():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                                 beta_schedule="scaled_linear", use_karras_sigmas=True)
    scheduler.set_timesteps(25)
    model = ShapesDenoiser(shapes_dataset(32), scheduler.alphas_cumprod)
    assert not torch.equal(scheduler.timesteps, scheduler.timesteps.round())  # really fractional
    got = model.sigmas(scheduler.timesteps, len(scheduler.timesteps))
    assert torch.allclose(got, scheduler.sigmas[:-1].float(), rtol=1e-5)


@pytest.mark.parametrize("t", [0, 3.5, 400, 999])
def test_epsilon_v_and_sample_predictions_agree(dataset, encoder, t):
    abar = sd15_alphas_cumprod()
    models = {p: ShapesDenoiser(dataset, abar, p).double() for p in ("epsilon", "v_prediction", "sample")}
    x_t = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    log_weights = encode_quietly(encoder, [PROMPT, ""])
    sigma = models["sample"].sigmas(t, 1).double()
    sqrt_abar, sqrt_one_minus = 1 / torch.sqrt(1 + sigma**2), sigma / torch.sqrt(1 + sigma**2)
    x0 = models["sample"](x_t, t, log_weights)
    assert torch.allclose(x0, models["sample"].posterior_mean(x_t, t, log_weights))
    from_eps = (x_t - sqrt_one_minus * models["epsilon"](x_t, t, log_weights)) / sqrt_abar
    from_v = sqrt_abar * x_t - sqrt_one_minus * models["v_prediction"](x_t, t, log_weights)
    assert (from_eps - x0).abs().max() < 1e-9
    assert (from_v - x0).abs().max() < 1e-9
    eps32 = ShapesDenoiser(dataset, abar)(x_t.float(), t, log_weights)
    assert (eps32.double() - models["epsilon"](x_t, t, log_weights)).abs().max() < 1e-3


def test_rejects_unknown_prediction_type(dataset):
    with pytest.raises(ValueError, match="prediction_type"):
        ShapesDenoiser(dataset, sd15_alphas_cumprod(), "flow")  # type: ignore[arg-type]


def test_at_t0_a_data_image_is_its_own_posterior_mean(dataset):
    model = ShapesDenoiser(dataset, sd15_alphas_cumprod())
    picks = [0, 17, 421, 839]
    x0 = model.posterior_mean(dataset.images[picks], 0)
    assert (x0 - dataset.images[picks]).abs().max() < 1e-5


def test_at_high_noise_the_posterior_mean_is_the_subset_mean(dataset, encoder):
    # a schedule ending at abar = 1e-12 (sigma = 1e6), where the data term no longer tells images apart
    abar = torch.cat([sd15_alphas_cumprod()[:-1], torch.tensor([1e-12], dtype=torch.float64)])
    model = ShapesDenoiser(dataset, abar)
    log_weights = encode_quietly(encoder, [PROMPT, ""])
    x_t = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    x0 = model.posterior_mean(x_t, 999, log_weights)
    subset_mean = dataset.images[log_weights[0] == 0].mean(0)
    assert (x0[0] - subset_mean).abs().max() < 2e-3
    assert (x0[1] - dataset.images.mean(0)).abs().max() < 2e-3
    assert (subset_mean - dataset.images.mean(0)).abs().max() > 0.5


# --------------------------------------------------------------------------------------------------- sampling


def euler_pf_ode(model, encoder, prompt, seed, steps=50, guidance_scale=1.0, batch=1):
    """Euler on dx/dsigma = (x - D) / sigma from seeded noise, calling the epsilon model at fractional t."""
    timesteps = torch.linspace(999, 0, steps, dtype=torch.float64)  # diffusers' "linspace" spacing
    sigmas = torch.cat([model.sigmas(timesteps, steps).double(), torch.zeros(1, dtype=torch.float64)])
    noise = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = noise * math.sqrt(1 + sigmas[0] ** 2)
    log_weights = encode_quietly(encoder, [prompt] * batch + [""] * batch)  # cond rows, then uncond rows
    for i in range(steps):
        x_t = torch.cat([x, x]) / math.sqrt(1 + sigmas[i] ** 2)  # the DDPM-space model input
        eps_cond, eps_uncond = model(x_t, timesteps[i], log_weights).chunk(2)
        eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        denoised = x - sigmas[i] * eps
        x = x + (sigmas[i + 1] - sigmas[i]) * (x - denoised) / sigmas[i]
    return x, noise, log_weights[:batch], sigmas[0]


@pytest.mark.parametrize("guidance_scale", [1.0, 7.5])
def test_sampling_draws_a_red_circle_on_blue(dataset, encoder, guidance_scale):
    model = ShapesDenoiser(dataset, sd15_alphas_cumprod().float())
    x, noise, log_weights, sigma_max = euler_pf_ode(model, encoder, PROMPT, seed=8,
                                                    guidance_scale=guidance_scale, batch=3)
    pixels = to_uint8(x)
    for image in pixels:
        assert (image[28:36, 28:36] == COLORS["red"]).all()
        for corner in (image[:4, :4], image[:4, -4:], image[-4:, :4], image[-4:, -4:]):
            assert (corner == COLORS["blue"]).all()
    # the exact model reproduces a member of the conditional subset ...
    members = dataset.images[log_weights[0] == 0].double()  # [6, 3, H, W]
    distances = (x[:, None] - members[None]).flatten(2).abs().amax(-1)  # [3, 6]
    assert (distances.amin(1) < 1e-3).all()
    # ... and the same one as the converged reference solution
    reference = probability_flow_reference(noise * math.sqrt(1 + sigma_max**2), log_weights, float(sigma_max),
                                           guidance_scale)
    assert (x - reference).abs().max() < 1e-3


def test_reference_is_converged():
    dataset = shapes_dataset(32)
    encoder = ShapesTextEncoder(dataset)
    sigma_max = float(ShapesDenoiser(dataset, sd15_alphas_cumprod()).sigmas(999, 1))
    x_T = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * sigma_max
    log_weights = encode_quietly(encoder, [PROMPT, "stars", "purple", ""])
    for guidance_scale in (1.0, 5.0):
        kwargs = {"guidance_scale": guidance_scale, "dataset": dataset}
        fine = probability_flow_reference(x_T, log_weights, sigma_max, **kwargs)  # default: 200 steps
        coarse = probability_flow_reference(x_T, log_weights, sigma_max, steps=100, **kwargs)
        assert fine.dtype == torch.float64 and fine.shape == x_T.shape
        assert (fine - coarse).abs().max() < 1e-4
        # Which image the end point is gets decided long before sigma = 0, so also check where the posterior is
        # still split: D(x(sigma = 5); 5) depends smoothly on the ODE solution.
        fine = probability_flow_reference(x_T, log_weights, sigma_max, steps=100, sigma_end=5.0, **kwargs)
        coarse = probability_flow_reference(x_T, log_weights, sigma_max, steps=50, sigma_end=5.0, **kwargs)
        rough = probability_flow_reference(x_T, log_weights, sigma_max, steps=5, sigma_end=5.0, **kwargs)
        assert (fine - coarse).abs().max() < 1e-6
        assert (fine - rough).abs().max() > 1e-4  # the check above is not vacuous
