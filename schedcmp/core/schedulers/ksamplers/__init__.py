"""The k-diffusion, A1111 and ComfyUI samplers, each a ``KSampler`` with diffusers' step contract.

One module per algorithm; the registry (``..registry``) names them as each tool does and imports a module the
first time one of its samplers is asked for, so importing this package costs every module at once.
"""

from __future__ import annotations

from ..k_sampler import KSampler
from .a1111_ddim import A1111DDIMSampler
from .a1111_ddim_cfgpp import A1111DDIMCFGPPSampler
from .a1111_lcm import A1111LCMSampler
from .a1111_plms import A1111PLMSSampler
from .a1111_unipc import A1111UniPCSampler
from .cfg_pp import (
    DPMPP2MCFGPPSampler,
    DPMPP2SAncestralCFGPPSampler,
    EulerAncestralCFGPPSampler,
    EulerCFGPPSampler,
    GradientEstimationCFGPPSampler,
    ResMultistepAncestralCFGPPSampler,
    ResMultistepCFGPPSampler,
)
from .comfy_unipc import ComfyUniPCSampler
from .ddpm import DDPMSampler
from .deis import DEISSampler
from .dpm2 import DPM2Sampler
from .dpm2_ancestral import DPM2AncestralSampler
from .dpm_adaptive import DPMAdaptiveSampler
from .dpm_fast import DPMFastSampler
from .dpmpp_2m import DPMPP2MSampler
from .dpmpp_2m_sde import DPMPP2MSDESampler
from .dpmpp_2s_ancestral import DPMPP2SAncestralSampler
from .dpmpp_3m_sde import DPMPP3MSDESampler
from .dpmpp_sde import DPMPPSDESampler
from .er_sde import ERSDESampler
from .euler import EulerSampler
from .euler_ancestral import EulerAncestralSampler
from .exp_heun_2_x0 import ExpHeun2X0Sampler, ExpHeun2X0SDESampler
from .gradient_estimation import GradientEstimationSampler
from .heun import HeunSampler
from .heunpp2 import HeunPP2Sampler
from .ipndm import IPNDMSampler
from .ipndm_v import IPNDMVSampler
from .lcm import LCMSampler
from .lms import LMSSampler
from .res_multistep import ResMultistepAncestralSampler, ResMultistepSampler
from .restart import RestartSampler
from .sa_solver import SASolverPECESampler, SASolverSampler
from .seeds import SEEDS2Sampler, SEEDS3Sampler

KSAMPLER_CLASSES: tuple[type[KSampler], ...] = (
    EulerSampler,
    EulerAncestralSampler,
    HeunSampler,
    DPM2Sampler,
    DPM2AncestralSampler,
    LMSSampler,
    DPMFastSampler,
    DPMAdaptiveSampler,
    DPMPP2SAncestralSampler,
    DPMPPSDESampler,
    DPMPP2MSampler,
    DPMPP2MSDESampler,
    DPMPP3MSDESampler,
    RestartSampler,
    A1111DDIMSampler,
    A1111DDIMCFGPPSampler,
    A1111PLMSSampler,
    A1111UniPCSampler,
    A1111LCMSampler,
    EulerCFGPPSampler,
    EulerAncestralCFGPPSampler,
    DPMPP2SAncestralCFGPPSampler,
    DPMPP2MCFGPPSampler,
    ResMultistepSampler,
    ResMultistepCFGPPSampler,
    ResMultistepAncestralSampler,
    ResMultistepAncestralCFGPPSampler,
    GradientEstimationSampler,
    GradientEstimationCFGPPSampler,
    HeunPP2Sampler,
    ExpHeun2X0Sampler,
    ExpHeun2X0SDESampler,
    DDPMSampler,
    LCMSampler,
    IPNDMSampler,
    IPNDMVSampler,
    DEISSampler,
    ERSDESampler,
    SEEDS2Sampler,
    SEEDS3Sampler,
    SASolverSampler,
    SASolverPECESampler,
    ComfyUniPCSampler,
)

__all__ = ["KSAMPLER_CLASSES", "KSampler", *(cls.__name__ for cls in KSAMPLER_CLASSES)]
