"""One decoder across sessions: per-session input embeddings, a shared backbone and heads.

:class:`MultiSessionDecoder` holds one input embedding per session (ROI sets differ between
sessions and animals), one backbone shared by all sessions, and one output head per
behaviour series name (shared by every session recording that series, with the same unit
and channel count). :meth:`MultiSessionDecoder.session_view` returns a plain
``forward(x) -> y`` module for one session, which the single-session evaluation and
salience code use unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..config import FitConfig
from ..errors import ConfigError
from ..progress import Progress
from .decoder import Decoder, build_model
from .embeddings import build_embedding

__all__ = ["MultiSessionDecoder", "SessionView", "build_multi_model"]


class MultiSessionDecoder(nn.Module):
    """Per-session embeddings -> shared backbone -> per-behaviour heads.

    Parameters
    ----------
    base
        A single-session :class:`~nwb_llmdecode.models.decoder.Decoder` whose backbone is
        shared (its own embedding and head are dropped).
    embeddings
        Session key -> input embedding of that session's ROIs.
    heads
        Behaviour series name -> number of channels of its head.
    session_heads
        Session key -> the behaviour series names it records, in its channel order.
    """

    def __init__(
        self,
        base: Decoder,
        embeddings: Mapping[str, nn.Module],
        heads: Mapping[str, int],
        session_heads: Mapping[str, Sequence[str]],
    ) -> None:
        super().__init__()
        self.base = base
        hidden = base.head.in_features
        base.embedding = nn.Identity()  # type: ignore[assignment]
        base.head = nn.Identity()  # type: ignore[assignment]
        base.lstm = None  # the blend's LSTM part decodes ROIs of one session: not shared
        self.embeddings = nn.ModuleDict(dict(embeddings))
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, n) for k, n in heads.items()})
        self.session_heads = {k: list(v) for k, v in session_heads.items()}

    @property
    def sessions(self) -> list[str]:
        """Keys of the sessions this decoder has an embedding for."""
        return list(self.embeddings.keys())

    def forward(self, x: torch.Tensor, session: str) -> torch.Tensor:
        """Predict ``session``'s behaviour channels, shape (batch, seq_len, channels)."""
        if session not in self.embeddings:
            raise ConfigError(f"no input embedding for session {session!r}; adapt one first")
        hidden = self.base(self.embeddings[session](x))
        return torch.cat([self.heads[h](hidden) for h in self.session_heads[session]], dim=-1)

    def session_view(self, session: str) -> SessionView:
        """A ``forward(x) -> y`` module for one session."""
        return SessionView(self, session)

    def add_session(self, session: str, embedding: nn.Module, heads: Sequence[str]) -> None:
        """Add (or replace) the input embedding of a session that records ``heads``."""
        missing = [h for h in heads if h not in self.heads]
        if missing:
            raise ConfigError(
                f"session {session!r}: behaviour {missing} has no head in this decoder "
                f"(it has {sorted(self.heads)}); select behaviour it was trained on"
            )
        self.embeddings[session] = embedding
        self.session_heads[session] = list(heads)


class SessionView(nn.Module):
    """One session's decoder as a plain seq-to-seq module (for evaluation and salience)."""

    def __init__(self, multi: MultiSessionDecoder, session: str) -> None:
        super().__init__()
        self.multi = multi
        self.session = session

    @property
    def embedding(self) -> nn.Module:
        """This session's input embedding."""
        return self.multi.embeddings[self.session]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seq_len, n_rois) -> (batch, seq_len, n_channels)."""
        return self.multi(x, self.session)


def build_multi_model(
    config: FitConfig,
    *,
    n_rois: Mapping[str, int],
    heads: Mapping[str, int],
    session_heads: Mapping[str, Sequence[str]],
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> MultiSessionDecoder:
    """Build an untrained multi-session decoder (transformer backbones only).

    Parameters
    ----------
    config
        Run options; ``backbone`` must be a transformer (not ridge, reservoir or lstm).
    n_rois
        Session key -> ROI count.
    heads
        Behaviour series name -> channel count.
    session_heads
        Session key -> its behaviour series names, in channel order.
    device, progress
        As :func:`~nwb_llmdecode.models.decoder.build_model`.
    """
    first = next(iter(n_rois.values()))
    base = build_model(config, n_rois=first, n_channels=1, device=device, progress=progress)
    if not isinstance(base, Decoder):
        raise ConfigError(
            f"multi-session fit needs a transformer backbone, not {config.backbone!r}; "
            "fit such sessions one by one"
        )
    hidden = base.head.in_features
    embeddings = {k: make_embedding(config, n, hidden).to(device) for k, n in n_rois.items()}
    model = MultiSessionDecoder(base, embeddings, heads, session_heads)
    model.heads.to(device)
    return model


def make_embedding(config: FitConfig, n_rois: int, hidden: int) -> nn.Module:
    """A fresh input embedding of ``n_rois`` ROIs, as ``config.embedding`` asks."""
    return build_embedding(
        config.embedding,
        n_rois=n_rois,
        hidden_size=hidden,
        seq_len=config.seq_len,
        kernel=config.embedding_kernel,
    )
