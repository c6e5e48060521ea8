"""The CLIP text encoders (Radford et al. 2021) that condition Stable Diffusion, built from their ``config.json``.

The module tree is transformers' ``CLIPTextModel`` (``text_model.embeddings.token_embedding``, ...,
``text_model.encoder.layers.{i}.self_attn.q_proj``, ..., ``text_model.final_layer_norm``), so the state-dict keys
of a Hub checkpoint load with ``load_state_dict(strict=True)``; :class:`CLIPTextModelWithProjection` (SDXL's second
encoder) adds ``text_projection.weight``, as transformers' class of that name does. :func:`convert_state_dict`
accepts the two other layouts found in the wild: transformers >= 5 saves a ``CLIPTextModel`` without the
``text_model.`` prefix (its ``CLIPTextModelWithProjection`` keeps it), and transformers < 4.31 saved a
``position_ids`` buffer that carries no weights.

SD 1.x/2.x condition on the last layer's hidden states after the final LayerNorm (:meth:`CLIPTextModel.forward`);
SDXL (Podell et al. 2023) conditions on a layer's hidden states without it, by default the penultimate layer's,
plus a pooled embedding of the end-of-text token (:meth:`CLIPTextModel.encode`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import PositiveFloat, PositiveInt, check_fields, config_source
from ..errors import ConfigError, ConfigWarning
from .layers import read_json_config

HIDDEN_ACTS: tuple[str, ...] = ("quick_gelu", "gelu")  # SD 1.x (OpenAI CLIP) and SD 2.x (OpenCLIP)

# Keys that must keep a neutral value: training-only, or features this encoder does not implement.
_NEUTRAL: dict[str, tuple[Any, str]] = {
    "dropout": (0.0, "dropout only acts in training"),
    "attention_dropout": (0.0, "dropout only acts in training"),
    "use_attention_mask": (False, "padding is handled by the causal mask, as in Stable Diffusion"),
    "model_type": ("clip_text_model", "this is CLIP's text encoder"),
}
# Keys read by other parts (tokenizer ids, weight init) or by nobody: ignored silently.
_INFORMATIONAL = frozenset(
    {
        "_class_name",
        "_commit_hash",
        "_diffusers_version",
        "_name_or_path",
        "architectures",
        "bos_token_id",
        "dtype",
        "initializer_factor",
        "initializer_range",
        "output_attentions",
        "output_hidden_states",
        "pad_token_id",
        "return_dict",
        "torch_dtype",
        "transformers_version",
    }
)
_PREFIX = "text_model."
_UNPREFIXED_ROOTS = ("embeddings.", "encoder.", "final_layer_norm.")
_LEGACY_POSITION_IDS = "text_model.embeddings.position_ids"
# transformers' configs written before its PR #24773 carry eos_token_id=2; for them the end-of-text token is found
# as the highest id of each row (it is CLIP's last vocabulary entry), for newer ones by its id.
_LEGACY_EOS_TOKEN_ID = 2


@dataclass(frozen=True)
class CLIPTextConfig:
    """The shape of a CLIP text transformer: transformers' ``CLIPTextConfig`` keys that change the forward pass."""

    vocab_size: PositiveInt = 49408
    hidden_size: PositiveInt = 512
    intermediate_size: PositiveInt = 2048
    num_hidden_layers: PositiveInt = 12
    num_attention_heads: PositiveInt = 8
    max_position_embeddings: PositiveInt = 77
    hidden_act: str = "quick_gelu"  # transformers takes any activation name; we build HIDDEN_ACTS (checked below)
    layer_norm_eps: PositiveFloat = 1e-5
    eos_token_id: int = _LEGACY_EOS_TOKEN_ID  # transformers 4's default, in every SD config; 5 defaults to 49407
    projection_dim: PositiveInt = 512  # the width of CLIPTextModelWithProjection's pooled embedding

    def __post_init__(self) -> None:
        check_fields(self)
        if self.hidden_act not in HIDDEN_ACTS:
            raise ConfigError(
                f"hidden_act={self.hidden_act!r} is not supported; only 'quick_gelu' (SD 1.x) and 'gelu' (SD 2.x)"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size={self.hidden_size} is not supported with num_attention_heads="
                f"{self.num_attention_heads}; the hidden size must split evenly into heads"
            )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], source: str = "text encoder config") -> CLIPTextConfig:
        """Keep the keys this encoder uses; refuse non-neutral unsupported ones; warn about unknown ones.

        Every error and warning starts with ``source`` (the file, when read by ``from_file``).
        """
        with config_source(source):
            for key, (neutral, reason) in _NEUTRAL.items():
                if key in config and config[key] != neutral:
                    raise ConfigError(f"{key}={config[key]!r} is not supported; only {neutral!r} ({reason})")
            names = {field.name for field in dataclasses.fields(cls)}
            unknown = sorted(set(config) - names - set(_NEUTRAL) - _INFORMATIONAL)
            if unknown:
                warnings.warn(f"{source}: ignoring unknown keys {unknown}", ConfigWarning, stacklevel=2)
            return cls(**{key: value for key, value in config.items() if key in names})

    @classmethod
    def from_file(cls, path: str | Path) -> CLIPTextConfig:
        """Read a text encoder's ``config.json``; an error in it is a ConfigError starting with the file."""
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path} is missing: a CLIP text encoder needs its config.json")
        return cls.from_dict(read_json_config(path), source=str(path))


def convert_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIP text checkpoint in this module's key layout (prefix ``text_model.``, no ``position_ids``)."""
    converted = {}
    for key, tensor in state.items():
        if key.startswith(_UNPREFIXED_ROOTS):
            key = _PREFIX + key
        if key != _LEGACY_POSITION_IDS:
            converted[key] = tensor
    return converted


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the GELU approximation OpenAI's CLIP was trained with (Hendrycks & Gimpel 2016)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class CLIPTextEmbeddings(nn.Module):
    """Token embedding plus a learned absolute position embedding (Radford et al. 2021)."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[-1]
        if length > self.position_embedding.num_embeddings:
            raise ValueError(
                f"input_ids has {length} tokens but the text encoder has "
                f"{self.position_embedding.num_embeddings} positions; tokenize with truncation"
            )
        # Positions are 0..T-1 for every prompt: the first T rows of the table, [T, D], broadcast over the batch.
        return self.token_embedding(input_ids) + self.position_embedding.weight[:length]


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention (Vaswani et al. 2017): token i attends to tokens 0..i."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        # [B, T, D] -> [B, T, H, D/H] -> [B, H, T, D/H]
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        query, key, value = (self._heads(proj(hidden_states)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        attended = F.scaled_dot_product_attention(query, key, value, is_causal=True)  # scale 1/sqrt(D/H)
        # [B, H, T, D/H] -> [B, T, H, D/H] -> [B, T, D]
        return self.out_proj(attended.transpose(1, 2).reshape(batch, length, width))


class CLIPMLP(nn.Module):
    """The transformer's position-wise feed-forward block, ``fc2(act(fc1(x)))`` (Vaswani et al. 2017)."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = QuickGELU() if config.hidden_act == "quick_gelu" else nn.GELU()
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class CLIPEncoderLayer(nn.Module):
    """A pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))`` (Radford et al. 2019)."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states))
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class CLIPEncoder(nn.Module):
    """The stack of ``num_hidden_layers`` encoder layers."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor, num_layers: int) -> torch.Tensor:
        """The hidden states after the first ``num_layers`` layers."""
        for layer in self.layers[:num_layers]:
            hidden_states = layer(hidden_states)
        return hidden_states

    def run_keeping(self, hidden_states: torch.Tensor, keep_after: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass through every layer: the last layer's output and the state after ``keep_after`` layers (0: the
        input), i.e. transformers' ``hidden_states[keep_after]``."""
        kept = hidden_states
        for index, layer in enumerate(self.layers, start=1):
            hidden_states = layer(hidden_states)
            if index == keep_after:
                kept = hidden_states
        return hidden_states, kept


def eos_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """The end-of-text position of each row of ``input_ids`` [B, T] -> [B], where CLIP pools (Radford et al. 2021).

    With the legacy ``eos_token_id=2`` it is the first highest id of the row; otherwise the first position holding
    ``eos_token_id`` (position 0 where none does), the rules of transformers' CLIP text model.
    """
    ids = input_ids.to(torch.int)
    if eos_token_id == _LEGACY_EOS_TOKEN_ID:
        return ids.argmax(dim=-1)
    return (ids == eos_token_id).int().argmax(dim=-1)  # argmax returns the first of equal maxima


class CLIPTextTransformer(nn.Module):
    """Embeddings, encoder layers and the final LayerNorm of CLIP's text tower (Radford et al. 2021)."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, clip_skip: int | None = None) -> torch.Tensor:
        num_layers = len(self.encoder.layers)
        skip = 0 if clip_skip is None else clip_skip
        if not 0 <= skip <= num_layers:
            raise ConfigError(f"clip_skip={clip_skip} is not supported; this text encoder has {num_layers} layers")
        hidden_states = self.encoder(self.embeddings(input_ids), num_layers - skip)
        return self.final_layer_norm(hidden_states)

    def encode(self, input_ids: torch.Tensor, hidden_state_from_end: int, eos_token_id: int) -> CLIPTextEncoding:
        """transformers' ``hidden_states[-hidden_state_from_end]`` and ``pooler_output`` from one pass (SDXL)."""
        num_layers = len(self.encoder.layers)
        valid = isinstance(hidden_state_from_end, int) and not isinstance(hidden_state_from_end, bool)
        if not (valid and 1 <= hidden_state_from_end <= num_layers + 1):
            raise ConfigError(
                f"hidden_state_from_end={hidden_state_from_end!r} is not supported; only 1 to {num_layers + 1} "
                f"(1 is the last of this text encoder's {num_layers} layers, {num_layers + 1} its embeddings)"
            )
        # The states are [embeddings, layer 1, ..., layer L]: the k-th from the end follows L + 1 - k layers.
        last, kept = self.encoder.run_keeping(self.embeddings(input_ids), num_layers + 1 - hidden_state_from_end)
        normed = self.final_layer_norm(last)
        rows = torch.arange(normed.shape[0], device=normed.device)
        # [B, T, D] indexed at (row b, eos position of row b) for every b -> [B, D]
        pooled = normed[rows, eos_positions(input_ids, eos_token_id).to(normed.device)]
        return CLIPTextEncoding(hidden_states=kept, pooled=pooled)


@dataclass(frozen=True)
class CLIPTextEncoding:
    """What SDXL (Podell et al. 2023) takes from a CLIP text encoder: one layer's states and a pooled embedding.

    ``hidden_states`` [B, T, D] is a layer's output without the final LayerNorm (transformers'
    ``hidden_states[-k]``); ``pooled`` is the final-LayerNormed last layer at each row's end-of-text token, [B, D]
    (transformers' ``pooler_output``), projected to [B, projection_dim] by :class:`CLIPTextModelWithProjection`
    (its ``text_embeds``).
    """

    hidden_states: torch.Tensor
    pooled: torch.Tensor


_Model = TypeVar("_Model", bound="CLIPTextModel")


class CLIPTextModel(nn.Module):
    """CLIP's text encoder (Radford et al. 2021): ``input_ids`` [B, T] -> hidden states [B, T, D]."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.text_model = CLIPTextTransformer(config)

    @classmethod
    def from_config(cls: type[_Model], config: Mapping[str, Any] | CLIPTextConfig) -> _Model:
        """Build the module (weights randomly initialised) from a ``config.json`` mapping or a config."""
        return cls(config if isinstance(config, CLIPTextConfig) else CLIPTextConfig.from_dict(config))

    @classmethod
    def from_config_file(cls: type[_Model], path: str | Path) -> _Model:
        """Build the module (weights randomly initialised) from a text encoder's ``config.json``."""
        return cls(CLIPTextConfig.from_file(path))

    def forward(self, input_ids: torch.Tensor, clip_skip: int | None = None) -> torch.Tensor:
        """The last layer's hidden states after the final LayerNorm, or with ``clip_skip=k`` those of the layer k
        from the end (diffusers: ``hidden_states[-(k + 1)]``, then the final LayerNorm); ``clip_skip=0`` is None.
        """
        return self.text_model(input_ids, clip_skip)

    def encode(self, input_ids: torch.Tensor, hidden_state_from_end: int = 1) -> CLIPTextEncoding:
        """SDXL's conditioning (Podell et al. 2023): the hidden states of the layer ``hidden_state_from_end`` from
        the end without the final LayerNorm (1: the last layer, ``num_hidden_layers + 1``: the embeddings; SDXL
        asks for ``clip_skip + 2``), and the pooled end-of-text embedding, in one pass.
        """
        return self.text_model.encode(input_ids, hidden_state_from_end, self.config.eos_token_id)


class CLIPTextModelWithProjection(CLIPTextModel):
    """CLIP's text encoder with its projection head (Radford et al. 2021), SDXL's second (OpenCLIP) encoder."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    def encode(self, input_ids: torch.Tensor, hidden_state_from_end: int = 1) -> CLIPTextEncoding:
        """As :meth:`CLIPTextModel.encode`, with the pooled embedding projected to ``projection_dim`` (transformers'
        ``text_embeds``, the pooled OpenCLIP embedding SDXL adds to its time embedding; Podell et al. 2023).
        """
        encoding = super().encode(input_ids, hidden_state_from_end)
        return dataclasses.replace(encoding, pooled=self.text_projection(encoding.pooled))
