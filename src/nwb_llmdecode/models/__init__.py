"""Decoder models: backbones, input embeddings, the LLM decoder and the baselines."""

from .backbones import (
    WORKING_NAMES,
    Backbone,
    accepts_inputs_embeds,
    apply_train_mode,
    load_backbone,
    lora_target_modules,
    resolve_backbone,
)
from .baselines import (
    ClosedFormDecoder,
    LSTMDecoder,
    ReservoirDecoder,
    RidgeDecoder,
    lag_candidates,
)
from .decoder import Decoder, Model, build_model
from .embeddings import (
    LinearEmbedding,
    PositionalEmbedding,
    TemporalEmbedding,
    build_embedding,
    sinusoidal_positions,
)

__all__ = [
    "WORKING_NAMES",
    "Backbone",
    "ClosedFormDecoder",
    "Decoder",
    "LSTMDecoder",
    "LinearEmbedding",
    "Model",
    "PositionalEmbedding",
    "ReservoirDecoder",
    "RidgeDecoder",
    "TemporalEmbedding",
    "accepts_inputs_embeds",
    "apply_train_mode",
    "build_embedding",
    "build_model",
    "lag_candidates",
    "load_backbone",
    "lora_target_modules",
    "resolve_backbone",
    "sinusoidal_positions",
]
