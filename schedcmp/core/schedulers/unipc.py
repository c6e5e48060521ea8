"""UniPC multistep sampler: Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models" (arXiv:2302.04867).

Each step first corrects the previous step's prediction with the model output just computed (UniC, Sec. 3.1,
no extra model call), then predicts the next sample (UniP, Sec. 3.2). Both are exponential integrators in
lambda = log(alpha_t / sigma_t) whose weights depend only on the schedule, so they are all solved in
``set_timesteps`` and ``step`` is a handful of tensor multiply-adds.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..configuration import Fraction, NonNegativeInt, PositiveFloat, PositiveInt, register_to_config
from ..errors import ConfigError
from .base import SchedulerMixin, SchedulerOutput
from .multistep import MultistepScheduler
from .schedules import Beta, BetaSchedule, TimestepSpacing, TrainedBetas
from .vp import SolverPredictionType, reject_flow_options

# Per step: (A, B, w, z) for x_next = A x - B m0 - sum_k w_k (m_k - m0) - z, where the corrector's last weight is
# that of (m_new - m0) and z is diffusers' C(h) * 0 (NaN when C(h) is infinite). None where the solve is singular.
Coefficients = tuple[float, float, list[float], float] | None


def _solve_vandermonde(
    big_r: torch.Tensor, g: torch.Tensor, nodes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve R rho = g row by row, R[j, k] = nodes[k]^j (Zhao et al. 2023, Sec. 3.2); also which rows are regular.

    A row is singular when two of its finite nodes are equal (det R = prod_{k<l} (r_l - r_k) = 0). Rows with a
    non-finite node (h = 0 at a repeated timestep) solve to NaN, the value diffusers' arithmetic gives there.
    """
    rho, _ = torch.linalg.solve_ex(big_r, g)  # LAPACK's own singularity flag is platform-dependent: not used
    finite = nodes.isfinite().all(dim=1)
    repeated = (nodes[:, :, None] == nodes[:, None, :]).sum(dim=(1, 2)) > nodes.shape[1]  # off-diagonal equals
    rho = torch.where(finite[:, None], rho, torch.full_like(rho, torch.nan))
    return rho, ~(finite & repeated)


class UniPCMultistepScheduler(MultistepScheduler):
    """UniPC (UniP-p predictor + UniC-p corrector) with B(h) variants bh1 / bh2, in data or noise prediction.

    ``disable_corrector`` lists step indices whose output is not corrected by the following step.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: PositiveInt = 1000,
        beta_start: Beta = 0.0001,
        beta_end: Beta = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: TrainedBetas | None = None,
        solver_order: PositiveInt = 2,
        prediction_type: SolverPredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: Fraction = 0.995,
        sample_max_value: PositiveFloat = 1.0,
        predict_x0: bool = True,
        solver_type: Literal["bh1", "bh2", "midpoint", "heun", "logrho"] = "bh2",
        lower_order_final: bool = True,
        disable_corrector: list[NonNegativeInt] = [],  # noqa: B006 - diffusers' default, never mutated
        solver_p: SchedulerMixin | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: PositiveFloat = 1.0,
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: NonNegativeInt = 0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
        sigma_min: PositiveFloat | None = None,
        sigma_max: PositiveFloat | None = None,
        shift_terminal: float | None = None,
    ) -> None:
        self._setup(rescale_betas_zero_snr, shift_terminal=(shift_terminal, None), solver_p=(solver_p, None))
        if not predict_x0 and prediction_type == "flow_prediction":
            raise ConfigError(
                f"{type(self).__name__}: prediction_type='flow_prediction' needs predict_x0=True; with "
                "predict_x0=False use 'epsilon', 'sample' or 'v_prediction'"
            )
        # diffusers quirk: other solvers' names are accepted and replaced by bh2.
        if solver_type not in ("bh1", "bh2"):
            self.register_to_config(solver_type="bh2")
        self.disable_corrector = frozenset(disable_corrector)
        self.predict_x0 = predict_x0
        self.last_sample: torch.Tensor | None = None
        self.this_order = 0

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """Place the steps and solve every step's UniP / UniC weights (Zhao et al. 2023, Sec. 3.1-3.2)."""
        name = type(self).__name__
        reject_flow_options(name, mu=(mu, None))
        if sigmas is not None:
            raise ConfigError(
                f"{name}: custom sigmas are only accepted with use_flow_sigmas=True (diffusers' rule), and "
                "flow-matching models are not supported by schedcmp; pass num_inference_steps instead"
            )
        final = "zero" if self.config.final_sigmas_type == "zero" else "schedule_min"
        alpha, sigma_t = self._place_timesteps(num_inference_steps, device, final=final)
        n = self.num_inference_steps
        self._predictor: dict[int, list[Coefficients]] = {}
        self._corrector: dict[int, list[Coefficients]] = {}
        for p in range(1, min(self._solver_order, n) + 1):
            self._predictor[p], self._corrector[p] = self._unipc_coefficients(alpha, sigma_t, p)

        order, low_final = self._solver_order, self.config.lower_order_final
        self._max_order = [min(order, n - i) if low_final else order for i in range(n)]
        self.last_sample = None
        self._last_dtype = torch.float32

    def _unipc_coefficients(
        self, alpha: torch.Tensor, sigma_t: torch.Tensor, p: int
    ) -> tuple[list[Coefficients], list[Coefficients]]:
        """Order-p UniP and UniC weights of every step (Zhao et al. 2023 Sec. 3), float32 like diffusers."""
        lam = torch.log(alpha) - torch.log(sigma_t)
        i = torch.arange(p - 1, len(alpha) - 1)  # steps with p - 1 earlier outputs available
        h = lam[i + 1] - lam[i]
        rks = torch.stack([(lam[i - k] - lam[i]) / h for k in range(1, p)] + [torch.ones_like(h)], dim=1)  # [m, p]
        hh = -h if self.predict_x0 else h
        h_phi_1 = torch.expm1(hh)  # h phi_1(h) = e^h - 1
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.config.solver_type == "bh1" else torch.expm1(hh)  # B(h) = h or e^h - 1
        rows, rhs = [], []
        factorial = 1
        for j in range(1, p + 1):
            rows.append(rks ** (j - 1))
            rhs.append(h_phi_k * factorial / b_h)
            factorial *= j + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        big_r, g = torch.stack(rows, dim=1), torch.stack(rhs, dim=1)  # R: [m, p, p], g: [m, p]

        half = torch.full((len(i), 1), 0.5)  # diffusers fixes the weight at 0.5 where the system is 1x1
        ok = torch.ones(len(i), dtype=torch.bool)
        # R is a Vandermonde matrix in the nodes r_k, singular exactly when two nodes are equal (a repeated timestep).
        # That is decided here from the nodes, not from LAPACK's pivots, which on some CPUs come out tiny but non-zero.
        if p <= 2:
            rho_p, ok_p = half[:, : p - 1], ok
        else:
            rho_p, ok_p = _solve_vandermonde(big_r[:, :-1, :-1], g[:, :-1], rks[:, :-1])
        if p == 1:
            rho_c, ok_c = half, ok
        else:
            rho_c, ok_c = _solve_vandermonde(big_r, g, rks)

        lead, other = (sigma_t, alpha) if self.predict_x0 else (alpha, sigma_t)
        a = lead[i + 1] / lead[i]
        b = other[i + 1] * h_phi_1
        c = (other[i + 1] * b_h).double().unsqueeze(1)  # [m, 1]
        inv_r = 1 / rks[:, : p - 1].double()  # D_k = (m_k - m0) / r_k
        pred_w = (c * rho_p.double() * inv_r).tolist()
        corr_w = torch.cat([c * rho_c[:, :-1].double() * inv_r, c * rho_c[:, -1:].double()], dim=1).tolist()
        # diffusers quirk: order 1 still subtracts C(h) * 0, which is NaN at a zero final sigma with bh1 (C = -inf)
        # or predict_x0=False (C = 0 * inf); the last sample is then all NaN, as in diffusers.
        zero_term = (c[:, 0] * 0.0 if p == 1 else torch.zeros(len(i), dtype=torch.float64)).tolist()

        pad: list[Coefficients] = [None] * (p - 1)
        predictor, corrector = list(pad), list(pad)
        for ai, bi, pw, cw, zi, okp, okc in zip(
            a.tolist(), b.tolist(), pred_w, corr_w, zero_term, ok_p.tolist(), ok_c.tolist(), strict=True
        ):
            predictor.append((ai, bi, pw, zi) if okp else None)
            corrector.append((ai, bi, cw, 0.0) if okc else None)
        return predictor, corrector

    def _convert(self, model_output: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        """The model output as x0 (``predict_x0``, thresholded if asked) or as epsilon (Zhao et al. 2023 Sec. 2)."""
        if self.predict_x0:
            return self._x0(model_output, sample, i)
        kind, alpha_t, sigma_t = self._prediction_type, self._alpha[i], self._sigma_t[i]
        if kind == "epsilon":
            return model_output
        if kind == "sample":
            return (sample - alpha_t * model_output) / sigma_t
        return alpha_t * model_output + sigma_t * sample  # v_prediction

    def _coefficients(self, table: dict[int, list[Coefficients]], i: int, p: int, what: str) -> tuple:
        """The precomputed weights of step ``i`` at order ``p``; raises where diffusers' solve would fail."""
        found = table[p][i]
        if found is None:
            raise ConfigError(
                f"{type(self).__name__}: the order-{p} {what} system at step {i} is singular (repeated timesteps: "
                f"too many steps for this timestep_spacing); use fewer steps or a lower solver_order"
            )
        return found

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | float | None,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One UniPC step: UniC-p corrects x_i with the new output, UniP-p predicts x_{i+1} (Zhao et al. 2023)."""
        i = self._step_in_schedule(self.num_inference_steps)
        # Notation (lambda = log(alpha_t / sigma_t), h = lambda_{i+1} - lambda_i):
        #   x_i     -> `sample` (predicted by the previous step), x_{i+1} -> `prev_sample`
        #   m_i     -> the converted model output at step i (x0 if predict_x0, else epsilon)
        #   D_k     -> (m_{i-k} - m_i) / r_k, the scaled differences with r_k = (lambda_{i-k} - lambda_i) / h
        #   A, B, w -> precomputed: x_{i+1} = A x_i - B m_i - sum_k w_k (m_{i-k} - m_i), w_k = C(h) rho_k / r_k
        x = sample.float()

        # 1. convert the model output to the solver's parametrisation (data or noise prediction)
        m_new = self._convert(model_output.float(), x, i)

        # 2. UniC-p (Sec. 3.1): redo the previous step with m_new as one more interpolation point, rho_c solving
        #    R_p rho_c = g / B(h) (order p + 1, no extra model call)
        out_dtype = sample.dtype
        if i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None:
            a, b, weights, _ = self._coefficients(self._corrector, i - 1, self.this_order, "corrector")
            m0 = self.model_outputs[-1]
            x = a * self.last_sample - b * m0
            for k, w in enumerate(weights[:-1], start=1):
                x.sub_(self.model_outputs[-1 - k] - m0, alpha=w)
            x.sub_(m_new - m0, alpha=weights[-1])
            out_dtype = self._last_dtype

        # 3. remember m_new; the order is lowered while warming up and, optionally, for the last steps
        self.model_outputs.append(m_new)
        del self.model_outputs[: -self._solver_order]
        self.this_order = p = min(self._max_order[i], self.lower_order_nums + 1)
        self.last_sample, self._last_dtype = x, out_dtype

        # 4. UniP-p (Sec. 3.2): x_{i+1} from x_i and the last p outputs, rho_p solving R_{p-1} rho_p = g / B(h)
        a, b, weights, zero_term = self._coefficients(self._predictor, i, p, "predictor")
        prev_sample = a * x - b * m_new
        for k, w in enumerate(weights, start=1):
            prev_sample.sub_(self.model_outputs[-1 - k] - m_new, alpha=w)
        if zero_term != 0.0:  # NaN only: see _unipc_coefficients
            prev_sample -= zero_term

        self.lower_order_nums = min(self.lower_order_nums + 1, self._solver_order)
        return self._finish_step(i, prev_sample.to(out_dtype), None, return_dict)
