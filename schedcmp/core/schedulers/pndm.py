"""PNDM: Liu, Ren, Lin & Zhao 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds" (arXiv:2202.09778).

F-PNDM: a pseudo Runge-Kutta (PRK) warm-up followed by pseudo linear multistep (PLMS) steps, every update
going through the DDIM-style transfer function phi of eq. 9. With ``skip_prk_steps`` the warm-up is replaced by
the cheaper start of the PLMS sampler Stable Diffusion uses (one step, then a Heun-like redo of it).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import torch

from ..configuration import NonNegativeInt, PositiveInt, register_to_config
from ..errors import ConfigError
from .base import SchedulerOutput, step_scalars
from .schedules import Beta, BetaSchedule, TimestepSpacing, TrainedBetas, make_betas
from .vp import VPScheduler, alpha_bars_at, check_timesteps_in_range, training_timesteps

# The numbers of the PRK and PLMS combinations, keyed by themselves, as 0-dim tensors (see ``step_scalars``): the
# float32 values diffusers' Python numbers take in float32 arithmetic.
_NUMBERS = (1 / 6, 1 / 3, 1 / 24, 2, 3, 5, 9, 12, 16, 23, 37, 55, 59)
K = dict(zip(_NUMBERS, step_scalars(_NUMBERS), strict=True))


class _Stage(NamedTuple):
    """What one model call does: how eps is combined, and what the history records (see ``step``).

    The coefficients are 0-dim tensors (see ``step_scalars``), diffusers' float32 values.
    """

    kind: str  # "rk1".."rk4" (PRK stages), "first", "redo" (PLMS start), "ab2".."ab4" (PLMS orders)
    sample_coeff: torch.Tensor  # sqrt(abar_prev / abar_t)
    eps_numerator: torch.Tensor  # abar_prev - abar_t
    eps_denominator: torch.Tensor  # abar_t sqrt(1 - abar_prev) + sqrt(abar_t (1 - abar_t) abar_prev)
    sqrt_alpha_bar: torch.Tensor | None = None  # sqrt(abar_t), for v-prediction (None otherwise)
    sqrt_beta_bar: torch.Tensor | None = None  # sqrt(1 - abar_t), for v-prediction (None otherwise)


class PNDMScheduler(VPScheduler):
    """Pseudo numerical sampling (Liu et al. 2022): PRK warm-up then fourth-order PLMS (F-PNDM), or PLMS alone.

    ``set_timesteps`` (and ``set_begin_index``) lays out every model call's stage and float32 coefficients as
    diffusers' ``counter`` / ``ets`` / ``cur_sample`` bookkeeping would.
    """

    order = 1
    pndm_order = 4

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: PositiveInt = 1000,
        beta_start: Beta = 0.0001,
        beta_end: Beta = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: TrainedBetas | None = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        timestep_spacing: TimestepSpacing = "leading",
        steps_offset: NonNegativeInt = 0,
    ) -> None:
        self._set_training_schedule(make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas))
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps: int | None = None
        self.timesteps: torch.Tensor | None = None
        self.prk_timesteps: np.ndarray | None = None
        self.plms_timesteps: np.ndarray | None = None
        self._schedule = np.zeros(0, dtype=np.int64)
        self._stages: list[_Stage | None] = []
        self._clear_history()

    @property
    def is_stochastic(self) -> bool:
        """False: PNDM is a deterministic ODE solver."""
        return False

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Lay out the PRK warm-up calls and the PLMS steps of F-PNDM (Liu et al. 2022 sec. 3)."""
        config = self.config
        num_train = config.num_train_timesteps
        n = self._checked_steps(num_inference_steps, num_train)
        if not config.skip_prk_steps and n < 4:
            raise ConfigError(
                f"PNDMScheduler: skip_prk_steps=False needs num_inference_steps >= 4 for its three Runge-Kutta "
                f"warm-up steps, got {n}; use more steps or skip_prk_steps=True"
            )
        ascending = training_timesteps("PNDMScheduler", config.timestep_spacing, num_train, n, config.steps_offset)
        ascending = ascending[::-1]
        if config.skip_prk_steps:
            # PLMS start: the second-to-last timestep is visited twice (one step, then its Heun-like redo).
            self.prk_timesteps = np.zeros(0, dtype=np.int64)
            self.plms_timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1].copy()
        else:
            # Three PRK steps over the largest four timesteps, each 4 calls at t, t - h, t - h, t - r.
            half = num_train // n // 2
            a, b, c, d = ascending[-4:].tolist()
            self.prk_timesteps = np.array(
                [d, c + half, c + half, c, c, b + half, b + half, b, b, a + half, a + half, a], dtype=np.int64
            )
            self.plms_timesteps = ascending[:-3][::-1].copy()
        self._schedule = np.concatenate([self.prk_timesteps, self.plms_timesteps])
        self.num_inference_steps = n
        self._reset_step_counter()
        self._build_stages(begin=0)
        self.timesteps = torch.from_numpy(self._schedule).to(device)
        self._snapshot_options(config)

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at schedule index ``begin_index``, the warm-up restarting there as diffusers' counter does."""
        super().set_begin_index(begin_index)
        if self.num_inference_steps is not None:
            self._build_stages(begin=begin_index)

    def _build_stages(self, begin: int) -> None:
        """Replay diffusers' counter logic for a loop starting at ``begin``; coefficients in float32 as diffusers."""
        num_train, n = self.config.num_train_timesteps, self.num_inference_steps
        stride, half = num_train // n, num_train // n // 2
        num_prk = len(self.prk_timesteps)
        kinds: list[str] = []
        current: list[int] = []
        previous: list[int] = []
        history = 0  # len(ets) in diffusers
        for index in range(begin, len(self._schedule)):
            counter, t = index - begin, int(self._schedule[index])
            if counter < num_prk:
                # PRK: every call of a block uses the block's start timestep as "t"
                kinds.append(f"rk{counter % 4 + 1}")
                current.append(int(self.prk_timesteps[counter // 4 * 4]))
                previous.append(t - (0 if counter % 2 else half))
                history += counter % 4 == 0
            elif counter == 1:
                # diffusers quirk, matched: the redo goes from t + T // n to t, whatever the spacing
                kinds.append("redo")
                current.append(t + stride)
                previous.append(t)
            else:
                history = 1 if counter == 0 else min(history, 3) + 1
                kinds.append("first" if counter == 0 else f"ab{history}")
                current.append(t)
                previous.append(t - stride)
        current_np, previous_np = np.array(current, dtype=np.int64), np.array(previous, dtype=np.int64)
        check_timesteps_in_range(
            "PNDMScheduler", current_np, num_train, self.config.timestep_spacing, self.config.steps_offset
        )
        alpha_bar = self.alphas_cumprod[torch.from_numpy(current_np)]
        alpha_bar_prev = alpha_bars_at(self.alphas_cumprod, previous_np, self.final_alpha_cumprod)
        beta_bar, beta_bar_prev = 1 - alpha_bar, 1 - alpha_bar_prev
        # phi of eq. 9, written as diffusers writes it
        sample_coeff = (alpha_bar_prev / alpha_bar) ** 0.5
        denominator = alpha_bar * beta_bar_prev**0.5 + (alpha_bar * beta_bar * alpha_bar_prev) ** 0.5
        tables = [step_scalars(sample_coeff), step_scalars(alpha_bar_prev - alpha_bar), step_scalars(denominator)]
        if self.config.prediction_type == "v_prediction":  # its factors only where step uses them (~0.4 us an entry)
            tables += [step_scalars(alpha_bar**0.5), step_scalars(beta_bar**0.5)]
        self._stages = [None] * begin + [_Stage(*column) for column in zip(kinds, *tables, strict=True)]
        self._clear_history()

    def _clear_history(self) -> None:
        self._ets: list[torch.Tensor] = []  # past model outputs, newest last (at most 4)
        self._cur_sample: torch.Tensor | None = None  # x_t at the start of the current RK block / PLMS start
        self._rk_sum: torch.Tensor | None = None  # running 1/6, 1/3, 1/3 weighted sum of the RK stages

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One model call of PRK or PLMS (Liu et al. 2022 sec. 3) moved through phi (eq. 9)."""
        # Notation (Liu et al. 2022):
        #   e_k           model outputs (eps; v is converted inside phi), newest e_1
        #   x_t           the sample the transfer starts from (block start for RK stages and the PLMS redo)
        #   phi(x, e)     sqrt(abar_prev / abar_t) x - (abar_prev - abar_t) e / denominator   (eq. 9)
        i = self._step_in_schedule(None if self.num_inference_steps is None else len(self._stages))
        stage = self._stages[i]
        base = sample

        # 1. combine the model outputs into the eps used by phi (diffusers' operations in its order, in place on
        #    the fresh tensors of the combination)
        if stage.kind == "rk1":  # first RK stage: remember x_t and e_1
            self._rk_sum = model_output * K[1 / 6]
            self._ets.append(model_output)
            self._cur_sample = sample
            eps = model_output
        elif stage.kind in ("rk2", "rk3"):  # intermediate stages move from x_t with their own eps
            self._rk_sum.add_(model_output * K[1 / 3])
            base, eps = self._cur_sample, model_output
        elif stage.kind == "rk4":  # e' = (e_1 + 2 e_2 + 2 e_3 + e_4) / 6
            base, eps = self._cur_sample, self._rk_sum.add_(model_output * K[1 / 6])
            self._rk_sum = None
        elif stage.kind == "first":  # PLMS start: plain first-order step, x_t kept for the redo
            self._ets.append(model_output)
            self._cur_sample = sample
            eps = model_output
        elif stage.kind == "redo":  # redo the first step with the mean of both ends (not stored in ets)
            base, eps = self._cur_sample, (model_output + self._ets[-1]).div_(K[2])
            self._cur_sample = None
        else:  # PLMS: Adams-Bashforth combinations (orders 2 and 3 while the history fills up)
            self._ets = [*self._ets[-3:], model_output]
            e = self._ets
            if stage.kind == "ab2":  # (3 e_1 - e_2) / 2
                eps = (e[-1] * K[3]).sub_(e[-2]).div_(K[2])
            elif stage.kind == "ab3":  # (23 e_1 - 16 e_2 + 5 e_3) / 12
                eps = (e[-1] * K[23]).sub_(e[-2] * K[16]).add_(e[-3] * K[5]).div_(K[12])
            else:  # (55 e_1 - 59 e_2 + 37 e_3 - 9 e_4) / 24, written (1 / 24) (...) as diffusers does
                eps = (e[-1] * K[55]).sub_(e[-2] * K[59]).add_(e[-3] * K[37]).sub_(e[-4] * K[9]).mul_(K[1 / 24])

        # 2. v-prediction: convert the combined output to eps at t (diffusers converts after combining)
        if self._options.prediction_type == "v_prediction":
            eps = eps * stage.sqrt_alpha_bar + base * stage.sqrt_beta_bar

        # 3. transfer x_t -> x_{t - delta} with phi (eq. 9)
        prev_sample = base * stage.sample_coeff - (eps * stage.eps_numerator).div_(stage.eps_denominator)

        return self._finish_step(i, prev_sample, None, return_dict)
