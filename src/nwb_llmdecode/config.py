"""Run options of a decoding fit, as one validated, frozen, JSON-serialisable object.

:class:`FitConfig` holds every option of :func:`nwb_llmdecode.engine.fit_arrays`. Values are
checked in ``__post_init__``; a bad value raises :class:`~nwb_llmdecode.errors.ConfigError`
that quotes it. ``to_json`` / ``from_json`` round-trip exactly, so the effective
configuration can be stored with results and checkpoints.

Options shared by every decoder are fields of :class:`FitConfig`; options of one model
family live in their own small section: :class:`LoRAOptions` (``lora``),
:class:`RidgeOptions` (``ridge``), :class:`LSTMOptions` (``lstm``) and
:class:`ReservoirOptions` (``reservoir``). In JSON, TOML and YAML a section is a nested
table (``[fit.ridge]`` / ``{"ridge": {"alphas": [...]}}``); the flat names of earlier
versions (``ridge_alphas``, ``lstm_hidden``, ``lora_r``...) are still read.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = [
    "BACKBONE_ALIASES",
    "BASELINE_NAMES",
    "DEFAULT_SEARCH_PARAMS",
    "DEVICES",
    "EMBEDDINGS",
    "INITS",
    "PRECISIONS",
    "QUANTIZE",
    "RESIDUALS",
    "SALIENCE_METHODS",
    "SEARCH_SPACE",
    "TRAIN_MODES",
    "FitConfig",
    "LSTMOptions",
    "LoRAOptions",
    "ReservoirOptions",
    "RidgeOptions",
    "SearchOptions",
]

#: Packaged offline backbones, by alias.
BACKBONE_ALIASES: tuple[str, ...] = ("minilm", "smollm2")
#: Baseline decoders selected through ``backbone``.
BASELINE_NAMES: tuple[str, ...] = ("ridge", "lstm", "reservoir")
INITS: tuple[str, ...] = ("pretrained", "random")
TRAIN_MODES: tuple[str, ...] = ("frozen", "lora", "full")
EMBEDDINGS: tuple[str, ...] = ("linear", "positional", "temporal")
QUANTIZE: tuple[str | None, ...] = (None, "4bit", "8bit")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
SALIENCE_METHODS: tuple[str, ...] = ("integrated-gradients", "saliency", "grad-x-input", "none")
RESIDUALS: tuple[str, ...] = ("blend", "ridge", "none")
#: Numeric precision of the backbone's matrix products (see ``FitConfig.precision``).
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


def _default_ridge_alphas() -> tuple[float, ...]:
    return tuple(float(10.0**e) for e in range(-2, 6))


def _bad(section: str, name: str, value: Any, expected: str) -> None:
    raise ConfigError(f"{section}{name}={value!r} is not valid: expected {expected}")


def _int_at_least(section: str, name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _bad(section, name, value, f"an integer >= {minimum}")


def _number(section: str, name: str, value: Any, *, positive: bool) -> None:
    if not _is_number(value) or not math.isfinite(value) or value < 0 or (positive and value == 0):
        _bad(section, name, value, "a positive number" if positive else "a number >= 0")


@dataclass(frozen=True)
class LoRAOptions:
    """LoRA adapters of ``train_mode="lora"``: rank ``r``, scaling ``alpha``, ``dropout``.

    Examples
    --------
    >>> LoRAOptions(r=4).alpha
    16.0
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05

    def __post_init__(self) -> None:
        _int_at_least("lora.", "r", self.r, 1)
        _number("lora.", "alpha", self.alpha, positive=True)
        _number("lora.", "dropout", self.dropout, positive=False)
        if self.dropout >= 1.0:
            _bad("lora.", "dropout", self.dropout, "a number in [0, 1)")


@dataclass(frozen=True)
class RidgeOptions:
    """The ridge baseline: penalties ``alphas`` tried on the validation block (also used
    by the reservoir's readout) and the number of time ``lags`` (``None``: chosen on the
    validation block among counts up to ``seq_len``).

    Examples
    --------
    >>> RidgeOptions(lags=4).alphas[:3]
    (0.01, 0.1, 1.0)
    """

    alphas: tuple[float, ...] = field(default_factory=_default_ridge_alphas)
    lags: int | None = None

    def __post_init__(self) -> None:
        v = self.alphas
        if isinstance(v, str | bytes) or not hasattr(v, "__iter__"):
            _bad("ridge.", "alphas", v, "a non-empty list of positive numbers")
        object.__setattr__(self, "alphas", tuple(v))
        if not self.alphas or any(
            not _is_number(a) or not math.isfinite(a) or a <= 0 for a in self.alphas
        ):
            _bad("ridge.", "alphas", self.alphas, "a non-empty list of positive numbers")
        if self.lags is not None:
            _int_at_least("ridge.", "lags", self.lags, 1)


@dataclass(frozen=True)
class LSTMOptions:
    """The LSTM baseline: ``hidden`` units per layer and the number of ``layers``."""

    hidden: int = 128
    layers: int = 1

    def __post_init__(self) -> None:
        _int_at_least("lstm.", "hidden", self.hidden, 1)
        _int_at_least("lstm.", "layers", self.layers, 1)


@dataclass(frozen=True)
class ReservoirOptions:
    """The echo-state-network baseline: ``size`` units, ``spectral_radius`` (< 1),
    ``leak`` rate in (0, 1] and ``input_scale`` of the random input weights."""

    size: int = 500
    spectral_radius: float = 0.9
    leak: float = 1.0
    input_scale: float = 1.0

    def __post_init__(self) -> None:
        _int_at_least("reservoir.", "size", self.size, 1)
        _number("reservoir.", "spectral_radius", self.spectral_radius, positive=True)
        if self.spectral_radius >= 1.0:
            _bad("reservoir.", "spectral_radius", self.spectral_radius, "a number in (0, 1)")
        _number("reservoir.", "leak", self.leak, positive=True)
        if self.leak > 1.0:
            _bad("reservoir.", "leak", self.leak, "a number in (0, 1]")
        _number("reservoir.", "input_scale", self.input_scale, positive=True)


#: What :class:`SearchOptions` may choose, and how: ``("log", (low, high))`` sampled on a
#: log scale, ``("float", (low, high))`` uniformly, ``("choice", values)`` among values.
#: The ranges bracket the defaults (about 3x either way for the learning rates, 10x for
#: the group lasso).
SEARCH_SPACE: dict[str, tuple[str, tuple[Any, ...]]] = {
    "lr": ("log", (1e-3, 1e-2)),
    "backbone_lr": ("log", (1e-4, 1e-3)),
    "embedding_group_l1": ("log", (3e-3, 0.3)),
    "embedding_kernel": ("choice", (1, 3, 5)),
    "seq_len": ("choice", (10, 20)),
    "embedding_l2": ("log", (1e-3, 1e-1)),
    "input_dropout": ("float", (0.0, 0.3)),
}
#: The options a search chooses unless ``search.params`` says otherwise.
DEFAULT_SEARCH_PARAMS: tuple[str, ...] = (
    "lr",
    "backbone_lr",
    "embedding_group_l1",
    "embedding_kernel",
)


@dataclass(frozen=True)
class SearchOptions:
    """Hyperparameters chosen on the validation block by an optuna study (off by default).

    ``trials`` fits (0: no search; the first trial is the configuration as given), at most
    ``timeout`` seconds in all (``None``: no limit), over the options named in ``params``
    (ranges: :data:`SEARCH_SPACE`); with ``prune`` a trial whose validation R² after an
    epoch falls below the median of earlier trials at that epoch is stopped (optuna's
    median pruner). The fit kept is the trial with the best validation R².

    Examples
    --------
    >>> SearchOptions(trials=8).params
    ('lr', 'backbone_lr', 'embedding_group_l1', 'embedding_kernel')
    """

    trials: int = 0
    timeout: float | None = None
    params: tuple[str, ...] = DEFAULT_SEARCH_PARAMS
    prune: bool = True

    def __post_init__(self) -> None:
        _int_at_least("search.", "trials", self.trials, 0)
        if self.timeout is not None:
            _number("search.", "timeout", self.timeout, positive=True)
        v = self.params
        if isinstance(v, str | bytes) or not hasattr(v, "__iter__"):
            _bad("search.", "params", v, "a list of option names: " + ", ".join(SEARCH_SPACE))
        object.__setattr__(self, "params", tuple(v))
        unknown = [p for p in self.params if p not in SEARCH_SPACE]
        if unknown or not self.params or len(set(self.params)) != len(self.params):
            _bad(
                "search.",
                "params",
                list(self.params),
                "distinct option names among " + ", ".join(SEARCH_SPACE),
            )
        if not isinstance(self.prune, bool):
            _bad("search.", "prune", self.prune, "true or false")


#: Model-family sections of :class:`FitConfig`: attribute -> options class.
SECTIONS: dict[str, type] = {
    "lora": LoRAOptions,
    "ridge": RidgeOptions,
    "lstm": LSTMOptions,
    "reservoir": ReservoirOptions,
    "search": SearchOptions,
}
#: Flat option names of earlier versions -> (section, option); still read everywhere.
LEGACY_NAMES: dict[str, tuple[str, str]] = {
    "lora_r": ("lora", "r"),
    "lora_alpha": ("lora", "alpha"),
    "lora_dropout": ("lora", "dropout"),
    "ridge_alphas": ("ridge", "alphas"),
    "ridge_lags": ("ridge", "lags"),
    "lstm_hidden": ("lstm", "hidden"),
    "lstm_layers": ("lstm", "layers"),
    "reservoir_size": ("reservoir", "size"),
    "spectral_radius": ("reservoir", "spectral_radius"),
    "reservoir_leak": ("reservoir", "leak"),
    "reservoir_input_scale": ("reservoir", "input_scale"),
}


def _section(name: str, value: Any) -> Any:
    """A section object from itself or from a mapping of its options."""
    cls = SECTIONS[name]
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{name}={value!r} is not valid: expected a table of {name} options "
            f"({', '.join(f.name for f in dataclasses.fields(cls))})"
        )
    known = {f.name for f in dataclasses.fields(cls)}
    kw = {str(k).replace("-", "_"): v for k, v in value.items()}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise ConfigError(
            f"unknown {name} option(s) {', '.join(map(repr, unknown))}; known: "
            + ", ".join(sorted(known))
        )
    return cls(**kw)


def _fold_legacy(kw: dict[str, Any], base: Any = None) -> dict[str, Any]:
    """Move flat legacy names (``ridge_alphas``...) into their sections (merged with
    ``base``'s sections, or the defaults)."""
    flat = {k: kw.pop(k) for k in list(kw) if k in LEGACY_NAMES}
    for key, value in flat.items():
        section, option = LEGACY_NAMES[key]
        current = kw.get(section, getattr(base, section, None) if base is not None else None)
        current = _section(section, current if current is not None else {})
        kw[section] = dataclasses.replace(current, **{option: value})
    return kw


@dataclass(frozen=True)
class FitConfig:
    """Every option of a decoding fit.

    Parameters
    ----------
    backbone
        ``"minilm"`` (default, offline BERT-family MiniLM-L6), ``"smollm2"`` (offline
        Llama-family SmolLM2-135M, GGUF), a HuggingFace model id or a local model
        directory, or a baseline: ``"ridge"``, ``"lstm"``, ``"reservoir"``.
    init
        ``"pretrained"`` weights or ``"random"`` (same architecture from its config; the
        control that tells whether pre-training helps).
    train_mode
        ``"full"`` (default: backbone fine-tuned with its own, smaller learning rate),
        ``"lora"`` (LoRA adapters on the attention projections) or ``"frozen"`` (backbone
        weights fixed; gradients still flow through it to the input embedding). Full
        fine-tuning is the default because it decodes best on our synthetic benchmark
        (``benchmarks/RESULTS.md``) at MiniLM size on a CPU: the frozen MiniLM's last
        layer does not keep per-frame content linearly readable.
    embedding
        Input embedding: ``"temporal"`` (default: each token is a linear projection of
        its frame and the ``embedding_kernel - 1`` frames before it, a causal temporal
        convolution), ``"linear"`` (Linear ROIs -> hidden, the paper's embedding) or
        ``"positional"`` (linear plus a learned position table initialised with
        sinusoids). Temporal is the default because behaviour follows neural activity
        with a lag and calcium smears it over frames: with the frame-by-frame linear
        embedding MiniLM decodes far worse on our synthetic benchmark
        (``benchmarks/RESULTS.md``).
    residual
        How lagged ridge regression (lags and penalty chosen on the validation block, the
        ``ridge`` baseline itself) enters the decoder. ``"blend"`` (default): the
        transformer decoder is trained alone, then its predictions and ridge's are
        averaged with the weight (0, 0.1, ..., 1) that scores best on the validation
        block; the weight is folded into the model (its head scaled by ``w``, a fixed
        ridge base by ``1 - w``), so predictions, salience and checkpoints are those of
        one model, and on validation it can only match or beat both parts.
        ``"ridge"``: a ridge-residual decoder, the transformer learns on top of a fixed
        ridge base with its head starting at zero (early stopping includes the untrained
        state). ``"none"``: the transformer alone (the paper's architecture). Measured in
        ``benchmarks/RESULTS.md``: the residual ties ridge at lab shapes but loses much of
        what the transformer alone gains on small sessions; the blend keeps both. Ignored
        by the baselines.
    blend_lstm
        With ``residual="blend"``: blend an LSTM decoder too (``lstm`` options, the same
        prior and training settings, fitted on the same split; seconds on the CPU). The
        three weights (transformer, LSTM, ridge) are chosen on the simplex grid of step 0.1
        by validation loss, ties going to the larger ridge share, then the larger LSTM
        share, and folded into the one model. On by default: never below the two-way
        blend on the 18 sessions of ``benchmarks/RESULTS.md`` ("A blend that can pick the
        LSTM"), far above it where the LSTM is the better decoder.
    screen
        Screen the ROIs before training (``engine/screen.py``; transformer decoders only,
        single-session fits): an LSTM with the group-lasso prior is fitted on every ROI,
        the ROIs are ranked by their weight norm in its input projection, the LSTM is
        fitted again on the top 8, 16, 32, ... of them, and the count with the lowest
        validation loss (all ROIs being one candidate) is kept. The transformer's input
        projection (and the blend's LSTM part) then see only those ROIs; ridge keeps
        every ROI. The relaxed group lasso: on by default because it lifts the default on
        every session of ``benchmarks/RESULTS.md`` ("ROI screening"), most where few
        ROIs drive the behaviour among many; it costs a few LSTM fits (seconds to a
        minute on a CPU). The choice is recorded in ``fit_json`` (``screen_n_rois``,
        ``screen_rois``, the validation loss of every count).
    screen_rois
        The ROI counts the screen tries besides all ROIs (``None``: 8, 16, 32, ... below
        the ROI count, at most 1,024).
    embedding_kernel
        Frames seen by each token of the ``"temporal"`` embedding (the current one and
        ``embedding_kernel - 1`` before it).
    seq_len
        Window length in imaging frames; also the gap between train/validation/test.
    epochs
        Maximum number of passes over the training windows.
    batch_size
        Windows per optimisation step.
    lr
        Learning rate of the new layers (input embedding, output head; LSTM weights).
    backbone_lr
        Learning rate of the backbone weights (``full``) or of the LoRA adapters.
    weight_decay
        AdamW decoupled weight decay of all trained weights.
    embedding_l2
        Penalty ``embedding_l2 * mean(W**2) * n_rois`` on the input projection added to
        the loss: a ridge-like prior that keeps the decoder from fitting noise in the many
        ROIs that carry no behaviour signal.
    embedding_group_l1
        Group-lasso penalty on the input projection, one group per ROI (all its weights,
        every hidden unit and lag): ``embedding_group_l1 * sum_roi ||W_roi|| / sqrt(hidden)``
        added to the loss. A prior that most ROIs carry nothing of this behaviour: unlike
        ``embedding_l2`` it shrinks whole ROIs towards zero. 0.03 by default: on 300 ROIs x
        1,200 frames (bouts) it is what lifts the default from ridge's level (0.36 with it
        off) to 0.51, and it helps on every session measured (``benchmarks/RESULTS.md``,
        issue 13); 0 turns it off.
    input_dropout
        Dropout on the normalised activity during training (whole ROI values).
    backbone_dropout
        Every dropout rate inside the backbone (hidden states, attention probabilities)
        while it trains; ``None`` keeps the rates of the backbone's own configuration
        (0.1 for MiniLM). LoRA adapters have their own (``lora.dropout``).
    patience
        Stop after this many epochs without a lower validation loss; the best state is
        restored. 8 by default: with the group-lasso prior the validation loss falls
        slowly and unevenly, and 5 stopped a real-data fit on a plateau (test R² 0.70
        instead of 0.91, ``benchmarks/RESULTS.md``).
    min_epochs
        Never stop before this many epochs.
    min_improvement
        Relative decrease of the validation loss that counts as an improvement for early
        stopping and for the state kept (0: any decrease).
    lr_warmup
        Epochs over which the learning rates rise linearly from almost zero to ``lr`` and
        ``backbone_lr`` (counted in the steps of one epoch), then stay constant; 0: no
        warm-up. The usual fine-tuning warm-up: without it the pretrained MiniLM's first
        large updates throw it onto a plateau that early stopping mistakes for the end
        (real zebrafish regions with a simulated tail: test R² 0.73 without, 0.86 with;
        ``benchmarks/RESULTS.md``).
    train_stride
        Step in frames between the training windows of one epoch, from a random offset
        drawn each epoch: every frame is still trained on, about ``seq_len / train_stride``
        times an epoch instead of ``seq_len`` times, so an epoch (and each early-stopping
        check) comes sooner. 2 by default (``benchmarks/RESULTS.md``, issue 14).
    max_windows_per_epoch
        Use at most this many (randomly chosen) training windows per epoch.
    eval_batch_size
        Windows per batch when predicting (no gradients).
    seed
        Seed of weight initialisation, data order and dropout.
    ensemble
        Number of decoders fitted with seeds ``seed, seed + 1, ...`` on the same split
        (1: one decoder). The result is their average: predictions, metrics, salience
        and the checkpoint are those of the averaged decoder, and each member's
        validation and test R² is recorded (``fit_json``) so the spread across seeds is
        reported. Costs ``ensemble`` fits; ``benchmarks/RESULTS.md`` (seed ensembles)
        has what it buys.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    quantize
        ``None``, ``"4bit"`` or ``"8bit"`` loading of the backbone (bitsandbytes, CUDA).
    gradient_checkpointing
        Trade compute for memory in the backbone.
    trust_remote_code
        Allow a hub model to run its own code. Never on unless asked for.
    split
        Fractions (train, validation, test) of the frames, in time order.
    lora
        :class:`LoRAOptions` (rank ``r``, ``alpha``, ``dropout``) of ``train_mode="lora"``;
        a mapping of them is accepted.
    ridge
        :class:`RidgeOptions` (``alphas`` tried on the validation block, number of
        ``lags``) of the ridge baseline and the reservoir's readout.
    lstm
        :class:`LSTMOptions` (``hidden``, ``layers``) of the LSTM baseline.
    reservoir
        :class:`ReservoirOptions` (``size``, ``spectral_radius``, ``leak``,
        ``input_scale``) of the echo-state-network baseline.
    salience
        Attribution method used by the salience step: ``"integrated-gradients"``,
        ``"saliency"``, ``"grad-x-input"`` or ``"none"``.
    salience_stride
        Attribute every ``salience_stride``-th window of the block (the last window still
        ends at the block's end, so every frame is covered, by about ``seq_len /
        salience_stride`` windows instead of ``seq_len``). ``None`` (default):
        ``max(1, seq_len // 4)``, 5 at the default window: about 4x less work with the
        same ranking of the planted drivers (``benchmarks/RESULTS.md``, salience); 1:
        every window.
    precision
        ``"auto"`` (default: the backbone runs under bfloat16 autocast on CUDA and on CPUs
        with native bf16 dot products, AVX512-BF16/AMX; float32 elsewhere), ``"fp32"`` or
        ``"bf16"``. Weights, the input embedding, the head and the loss stay float32;
        salience runs in the precision the model trained in. ``benchmarks/RESULTS.md``
        (bench_recipe) has the measured speed and validation loss of each.
    compile
        ``torch.compile`` the backbone (opt-in: it pays only for long fits, as the
        compile time counts; see ``benchmarks/RESULTS.md``).
    search
        :class:`SearchOptions`: choose learning rates, penalty and embedding kernel on the
        validation block with an optuna study of ``trials`` fits (off by default; each
        trial costs about one fit). The chosen values are this configuration's in the
        result, and every trial is recorded in ``fit_json``.

    Examples
    --------
    >>> cfg = FitConfig(epochs=5)
    >>> FitConfig.from_json(cfg.to_json()) == cfg
    True
    >>> cfg.replace(backbone="ridge").backbone
    'ridge'
    >>> FitConfig(backbone="lstm", lstm={"hidden": 32}).lstm
    LSTMOptions(hidden=32, layers=1)
    >>> FitConfig.from_dict({"ridge_lags": 4}).ridge.lags  # the flat name of earlier versions
    4
    """

    backbone: str = "minilm"
    init: str = "pretrained"
    train_mode: str = "full"
    embedding: str = "temporal"
    residual: str = "blend"
    blend_lstm: bool = True
    screen: bool = True
    screen_rois: tuple[int, ...] | None = None
    embedding_kernel: int = 3
    seq_len: int = 20
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    backbone_lr: float = 3e-4
    weight_decay: float = 0.0
    embedding_l2: float = 1e-2
    embedding_group_l1: float = 0.03
    input_dropout: float = 0.0
    backbone_dropout: float | None = None
    patience: int = 8
    min_epochs: int = 1
    min_improvement: float = 0.0
    lr_warmup: float = 1.0
    train_stride: int = 2
    max_windows_per_epoch: int | None = None
    eval_batch_size: int = 128
    seed: int = 0
    ensemble: int = 1
    device: str = "auto"
    quantize: str | None = None
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    salience: str = "integrated-gradients"
    salience_stride: int | None = None
    precision: str = "auto"
    compile: bool = False
    lora: LoRAOptions = field(default_factory=LoRAOptions)
    ridge: RidgeOptions = field(default_factory=RidgeOptions)
    lstm: LSTMOptions = field(default_factory=LSTMOptions)
    reservoir: ReservoirOptions = field(default_factory=ReservoirOptions)
    search: SearchOptions = field(default_factory=SearchOptions)

    # ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        # JSON gives lists: store tuples so that equality and hashing work.
        object.__setattr__(self, "split", tuple(self._seq("split", self.split)))
        for name in SECTIONS:  # mappings (from JSON, TOML, keywords) become sections
            object.__setattr__(self, name, _section(name, getattr(self, name)))
        self._check_choice("init", INITS)
        self._check_choice("train_mode", TRAIN_MODES)
        self._check_choice("embedding", EMBEDDINGS)
        self._check_choice("residual", RESIDUALS)
        self._check_choice("quantize", QUANTIZE)
        self._check_choice("salience", SALIENCE_METHODS)
        self._check_choice("precision", PRECISIONS)
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            self._bad("backbone", "a backbone name, HuggingFace model id or local directory")
        dev = self.device
        if not isinstance(dev, str) or not (
            dev in DEVICES or (dev.startswith("cuda:") and dev[5:].isdigit())
        ):
            self._bad("device", "one of auto, cpu, cuda, cuda:N")
        for name in ("seq_len", "epochs", "batch_size", "eval_batch_size", "train_stride"):
            self._check_int(name, 1)
        for name in ("embedding_kernel", "min_epochs"):
            self._check_int(name, 1)
        self._check_int("patience", 0)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            self._bad("seed", "an integer")
        self._check_int("ensemble", 1)
        if self.ensemble > 1 and self.backbone in BASELINE_NAMES and self.backbone != "lstm":
            raise ConfigError(
                f"ensemble={self.ensemble} applies to trained decoders; the {self.backbone} "
                "baseline is fitted in closed form: drop --ensemble"
            )
        if self.ensemble > 1 and self.search.trials:
            raise ConfigError(
                f"ensemble={self.ensemble} cannot be combined with search.trials="
                f"{self.search.trials} (every trial would be an ensemble): search first, then "
                "fit the chosen configuration with --ensemble"
            )
        if self.max_windows_per_epoch is not None:
            self._check_int("max_windows_per_epoch", 1)
        if self.salience_stride is not None:
            self._check_int("salience_stride", 1)
        if self.ridge.lags is not None and self.ridge.lags > self.seq_len:
            raise ConfigError(
                f"ridge.lags={self.ridge.lags!r} is not valid: expected at most seq_len "
                f"({self.seq_len}) or None"
            )
        for name in ("lr", "backbone_lr"):
            self._check_float(name, positive=True)
        for name in (
            "weight_decay",
            "embedding_l2",
            "embedding_group_l1",
            "input_dropout",
            "min_improvement",
            "lr_warmup",
        ):
            self._check_float(name, positive=False)
        if self.input_dropout >= 1.0:
            self._bad("input_dropout", "a number in [0, 1)")
        if self.backbone_dropout is not None:
            self._check_float("backbone_dropout", positive=False)
            if self.backbone_dropout >= 1.0:
                self._bad("backbone_dropout", "a number in [0, 1) or None")
        if len(self.split) != 3 or any(
            not _is_number(f) or not math.isfinite(f) or f <= 0 for f in self.split
        ):
            self._bad("split", "three fractions > 0 (train, validation, test) summing to 1")
        if abs(sum(self.split) - 1.0) > 1e-6:
            self._bad("split", "three fractions > 0 (train, validation, test) summing to 1")
        if self.screen_rois is not None:
            v = self.screen_rois
            if isinstance(v, str | bytes) or not hasattr(v, "__iter__"):
                self._bad("screen_rois", "a list of ROI counts >= 1, or None")
            object.__setattr__(self, "screen_rois", tuple(v))
            if not self.screen_rois or any(
                not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in self.screen_rois
            ):
                self._bad("screen_rois", "a non-empty list of ROI counts >= 1, or None")
        for name in (
            "blend_lstm",
            "screen",
            "gradient_checkpointing",
            "trust_remote_code",
            "compile",
        ):
            if not isinstance(getattr(self, name), bool):
                self._bad(name, "true or false")
        if self.search.trials and self.backbone in BASELINE_NAMES and self.backbone != "lstm":
            raise ConfigError(
                f"search.trials={self.search.trials} does nothing for the {self.backbone} "
                "baseline (its penalty is already chosen on the validation block): drop "
                "--search"
            )
        if self.quantize is not None and self.backbone in BASELINE_NAMES:
            raise ConfigError(
                f"quantize={self.quantize!r} applies to transformer backbones only; the "
                f"{self.backbone} baseline has no backbone to quantise: drop quantize"
            )
        if self.quantize is not None and self.train_mode == "full":
            raise ConfigError(
                f"quantize={self.quantize!r} cannot be combined with train_mode='full' "
                "(quantised weights are not trainable); use train_mode 'lora' or 'frozen'"
            )
        if self.quantize is not None and self.device == "cpu":
            raise ConfigError(
                f"quantize={self.quantize!r} needs a CUDA device (bitsandbytes); got device='cpu'"
            )

    # ------------------------------------------------------------------------------------
    def _bad(self, name: str, expected: str) -> None:
        raise ConfigError(f"{name}={getattr(self, name)!r} is not valid: expected {expected}")

    def _check_choice(self, name: str, choices: tuple[Any, ...]) -> None:
        if getattr(self, name) not in choices:
            self._bad(name, "one of " + ", ".join(str(c) for c in choices))

    def _check_int(self, name: str, minimum: int) -> None:
        v = getattr(self, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            self._bad(name, f"an integer >= {minimum}")

    def _check_float(self, name: str, *, positive: bool) -> None:
        v = getattr(self, name)
        if not _is_number(v) or not math.isfinite(v) or v < 0 or (positive and v == 0):
            self._bad(name, "a positive number" if positive else "a number >= 0")

    @staticmethod
    def _seq(name: str, v: Any) -> list[Any]:
        if isinstance(v, str | bytes) or not hasattr(v, "__iter__"):
            raise ConfigError(f"{name}={v!r} is not valid: expected a list of numbers")
        return list(v)

    # ------------------------------------------------------------------------------------
    @property
    def is_baseline(self) -> bool:
        """True for the ``ridge``, ``lstm`` and ``reservoir`` baselines."""
        return self.backbone in BASELINE_NAMES

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of JSON types (tuples become lists, sections nested dicts)."""

        def plain(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return list(v) if isinstance(v, tuple) else v

        return plain(dataclasses.asdict(self))

    def to_json(self, **kwargs: Any) -> str:
        """The configuration as a JSON object (keyword arguments go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitConfig:
        """Build from a mapping; unknown keys raise :class:`ConfigError` naming them.

        Dashes in keys are accepted for underscores (``seq-len`` as in the CLI); sections
        are nested mappings, and the flat names of earlier versions (``ridge_alphas``,
        ``lstm_hidden``...) are read into their sections.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"configuration must be a mapping of options, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        kw = _fold_legacy({str(k).replace("-", "_"): v for k, v in data.items()})
        unknown = sorted(set(kw) - known)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(map(repr, unknown))}; known options: "
                + ", ".join(sorted(known))
            )
        try:
            return cls(**kw)
        except TypeError as e:  # pragma: no cover - all fields have defaults
            raise ConfigError(f"configuration {dict(data)!r}: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> FitConfig:
        """Inverse of :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"configuration is not valid JSON: {e}") from None
        return cls.from_dict(data)

    @property
    def salience_window_stride(self) -> int:
        """The window stride salience uses: ``salience_stride``, or ``max(1, seq_len // 4)``
        when that is ``None``."""
        return self.salience_stride or max(1, self.seq_len // 4)

    def replace(self, **changes: Any) -> FitConfig:
        """A copy with some options changed (validated again)."""
        known = {f.name for f in dataclasses.fields(self)}
        changes = _fold_legacy(dict(changes), base=self)
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(map(repr, unknown))}")
        return dataclasses.replace(self, **changes)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
