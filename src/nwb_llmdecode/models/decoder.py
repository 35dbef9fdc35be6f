"""The LLM decoder: input embedding -> backbone(inputs_embeds) -> Linear head, seq-to-seq.

``Decoder.forward(x)`` takes a batch of windows of normalised activity, shape
(batch, seq_len, n_rois), float32, and returns behaviour for every frame of every window,
shape (batch, seq_len, n_channels), float32. Salience methods (captum) call it directly.

:func:`build_model` turns a :class:`~nwb_llmdecode.config.FitConfig` into the model the
engine trains: a :class:`Decoder` around a transformer backbone, an
:class:`~nwb_llmdecode.models.baselines.LSTMDecoder`, or a closed-form baseline.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import FitConfig
from ..progress import Progress
from .backbones import Backbone, apply_train_mode, load_backbone, set_dropout
from .baselines import LaggedLinear, LSTMDecoder, ReservoirDecoder, RidgeDecoder
from .embeddings import LinearEmbedding, build_embedding

__all__ = ["Decoder", "Model", "autocast_dtype", "build_model", "cpu_supports_bf16"]

log = logging.getLogger(__name__)

Model = nn.Module | RidgeDecoder | ReservoirDecoder
"""Anything :func:`build_model` returns."""


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 dot products (AVX512-BF16 or AMX), so that
    bf16 autocast speeds matrix products up instead of emulating them."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch built without oneDNN
        return False


def autocast_dtype(precision: str, device: str | torch.device) -> torch.dtype:
    """The dtype of the backbone's matrix products for a ``FitConfig.precision``.

    ``"auto"``: bfloat16 on CUDA and on CPUs with native bf16 (:func:`cpu_supports_bf16`),
    else float32. ``"bf16"``: bfloat16 anywhere. ``"fp32"``: float32 (no autocast).

    Examples
    --------
    >>> autocast_dtype("fp32", "cuda")
    torch.float32
    >>> autocast_dtype("bf16", "cpu")
    torch.bfloat16
    """
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    kind = torch.device(device).type
    if kind == "cuda" or (kind == "cpu" and cpu_supports_bf16()):
        return torch.bfloat16
    return torch.float32


class Decoder(nn.Module):
    """Behaviour decoder on a transformer backbone.

    Parameters
    ----------
    embedding
        Input embedding (ROIs -> hidden), see :mod:`~nwb_llmdecode.models.embeddings`.
    backbone
        The loaded backbone (:func:`~nwb_llmdecode.models.backbones.load_backbone`).
    n_channels
        Number of behaviour channels.
    train_mode
        ``"frozen"``, ``"lora"`` or ``"full"`` (recorded; apply it with
        :func:`~nwb_llmdecode.models.backbones.apply_train_mode`).
    base
        Optional fixed :class:`~nwb_llmdecode.models.baselines.LaggedLinear` (a fitted
        ridge model) whose output is added to the head's: the ridge-residual decoder, or
        the blended decoder (``FitConfig.residual``), whose head and base are scaled by the
        blend weight. With ``zero_head`` the head starts at zero, so the untrained decoder
        predicts exactly what the base predicts.
    lstm
        Optional :class:`~nwb_llmdecode.models.baselines.LSTMDecoder` whose output is added
        too: the third part of the blend (``FitConfig.blend_lstm``), its head scaled by
        its blend weight. It runs in float32, outside the backbone's autocast.

    Notes
    -----
    Encoders (BERT) get an all-ones attention mask, so every frame attends to the whole
    window; decoder-only models (GPT-2, Llama) are causal by construction. The backbone
    runs under autocast to ``autocast`` (see :func:`autocast_dtype`; ``None``: bfloat16
    on CUDA, float32 on CPU); the input embedding and the head always run in float32.
    """

    def __init__(
        self,
        embedding: LinearEmbedding,
        backbone: Backbone,
        n_channels: int,
        *,
        train_mode: str = "full",
        base: LaggedLinear | None = None,
        autocast: torch.dtype | None = None,
        zero_head: bool = True,
        lstm: LSTMDecoder | None = None,
    ) -> None:
        super().__init__()
        self.autocast = autocast
        self.embedding = embedding
        self.backbone = backbone.model
        self.head = nn.Linear(backbone.hidden_size, n_channels)
        self.base = base
        self.lstm = lstm
        if base is not None and zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.train_mode = train_mode
        self.causal = backbone.causal
        self.backbone_name = backbone.name
        self.model_type = backbone.model_type
        self.init = backbone.init
        params = inspect.signature(self.backbone.forward).parameters
        self._extra: dict[str, Any] = {}
        if "use_cache" in params:
            self._extra["use_cache"] = False
        self._takes_mask = "attention_mask" in params

    @property
    def _recomputes(self) -> bool:
        """True when the backbone recomputes activations (gradient checkpointing)."""
        kind = type(self.backbone)
        for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):
            if hasattr(kind, attr):  # the first is the name of transformers >= 5
                return bool(getattr(self.backbone, attr))
        return False

    @property
    def n_rois(self) -> int:
        """Number of ROIs the decoder expects."""
        return self.embedding.n_rois

    @property
    def n_channels(self) -> int:
        """Number of behaviour channels predicted."""
        return self.head.out_features

    @property
    def warmup(self) -> int:
        """Leading frames of a window whose prediction lacks history (the base's lags).

        Stitching and the training loss skip them wherever a window with full history
        covers the frame, so the base reproduces its ridge model exactly.
        """
        return 0 if self.base is None else self.base.warmup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict behaviour for every frame of every window.

        Parameters
        ----------
        x
            (batch, seq_len, n_rois) float32, activity z-scored per ROI.

        Returns
        -------
        torch.Tensor
            (batch, seq_len, n_channels) float32, behaviour z-scored per channel.
        """
        emb = self.embedding(x)
        kwargs = dict(self._extra)
        if self._takes_mask:
            kwargs["attention_mask"] = torch.ones(
                emb.shape[:2], dtype=torch.long, device=emb.device
            )
        dtype = self.autocast
        if dtype is None:
            dtype = torch.bfloat16 if emb.is_cuda else torch.float32
        with contextlib.ExitStack() as stack:
            if dtype != torch.float32 and emb.device.type in ("cuda", "cpu"):
                stack.enter_context(torch.autocast(device_type=emb.device.type, dtype=dtype))
            if emb.device.type == "cpu" and not self._recomputes:
                # windows are short (tens of frames): torch's CPU flash-attention kernel
                # is slower there, 2.7x in its bf16 backward (benchmarks/RESULTS.md).
                # Not with gradient checkpointing: its recomputation in the backward pass
                # runs outside this context and must pick the same kernel.
                stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            out = self.backbone(inputs_embeds=emb, **kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        pred = self.head(hidden.float())
        if self.base is not None:
            pred = pred + self.base(x.float())
        if self.lstm is not None:
            pred = pred + self.lstm(x.float())
        return pred

    @property
    def saves_whole_backbone(self) -> bool:
        """True when backbone weights were trained (not only adapters) or are random."""
        if self.init == "random":
            return True
        return any(
            p.requires_grad and "lora_" not in n for n, p in self.backbone.named_parameters()
        )

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint must hold to rebuild this decoder.

        Input embedding and head always; LoRA adapters in ``lora`` mode; the whole
        backbone when its own weights train (``full`` mode) or when it was randomly
        initialised (random weights
        cannot be reloaded from anywhere else). Pretrained, untouched backbone weights are
        reloaded from their source instead.
        """
        whole = self.saves_whole_backbone
        out: dict[str, torch.Tensor] = {}
        for name, t in self.state_dict().items():
            if name.startswith("backbone.") and not whole and "lora_" not in name:
                continue
            out[name] = t.detach().to("cpu").clone().contiguous()
        return out


def build_model(
    config: FitConfig,
    *,
    n_rois: int,
    n_channels: int,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> Model:
    """Build the (untrained) model a configuration asks for.

    Seed torch before calling: weight initialisation (embedding, head, LoRA, random
    backbones) uses the global torch generator.

    Parameters
    ----------
    config
        The run options (``backbone``, ``init``, ``train_mode``, ``embedding``...).
    n_rois, n_channels
        Input and output sizes.
    device
        Where torch models are put.
    progress
        Called as ``progress("load backbone", done, 1)``.

    Returns
    -------
    Decoder, LSTMDecoder, RidgeDecoder or ReservoirDecoder

    Examples
    --------
    >>> m = build_model(FitConfig(backbone="lstm", lstm={"hidden": 8}), n_rois=5, n_channels=2)
    >>> m(torch.zeros(1, 20, 5)).shape
    torch.Size([1, 20, 2])
    """
    name = config.backbone
    if name == "ridge":
        return RidgeDecoder(
            n_rois,
            n_channels,
            seq_len=config.seq_len,
            lags=config.ridge.lags,
            alphas=config.ridge.alphas,
        )
    if name == "reservoir":
        return ReservoirDecoder(
            n_rois,
            n_channels,
            size=config.reservoir.size,
            spectral_radius=config.reservoir.spectral_radius,
            leak=config.reservoir.leak,
            input_scale=config.reservoir.input_scale,
            alphas=config.ridge.alphas,
            seed=config.seed,
        )
    if name == "lstm":
        return LSTMDecoder(
            n_rois, n_channels, hidden_size=config.lstm.hidden, num_layers=config.lstm.layers
        ).to(device)
    if progress is not None:
        progress("load backbone", 0, 1)
    backbone = load_backbone(
        name,
        init=config.init,
        trust_remote_code=config.trust_remote_code,
        quantize=config.quantize,
        device=device,
        gradient_checkpointing=config.gradient_checkpointing,
    )
    if config.backbone_dropout is not None:
        n = set_dropout(backbone.model, config.backbone_dropout)
        log.debug("backbone dropout %g in %d places", config.backbone_dropout, n)
    apply_train_mode(
        backbone,
        config.train_mode,
        lora_r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        gradient_checkpointing=config.gradient_checkpointing,
    )
    embedding = build_embedding(
        config.embedding,
        n_rois=n_rois,
        hidden_size=backbone.hidden_size,
        seq_len=config.seq_len,
        kernel=config.embedding_kernel,
    )
    base = (
        LaggedLinear(n_rois, n_channels, max_lags=config.seq_len)
        if config.residual in ("ridge", "blend")
        else None
    )
    model = Decoder(
        embedding,
        backbone,
        n_channels,
        train_mode=config.train_mode,
        base=base,
        autocast=autocast_dtype(config.precision, device),
        # blend: the transformer is trained alone first (engine/train.py), its head as usual
        zero_head=config.residual == "ridge",
    )
    if config.residual == "blend" and config.blend_lstm:
        # its own generator state (the seed's, as a plain LSTM fit), so that adding it
        # changes nothing in the transformer's initialisation or training
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model.lstm = LSTMDecoder(
                n_rois, n_channels, hidden_size=config.lstm.hidden, num_layers=config.lstm.layers
            )
        model.lstm.to(device)
    if config.compile:  # in place: state_dict keys stay those of the plain module
        model.backbone.compile(dynamic=False)
    model.embedding.to(device)
    model.head.to(device)
    if base is not None:
        base.to(device)
    if progress is not None:
        progress("load backbone", 1, 1)
    log.info(
        "backbone %s (%s, %s, %.1f M parameters, hidden %d, %s), train mode %s",
        name,
        backbone.model_type,
        "causal" if backbone.causal else "bidirectional",
        backbone.n_parameters / 1e6,
        backbone.hidden_size,
        config.init,
        config.train_mode,
    )
    return model
