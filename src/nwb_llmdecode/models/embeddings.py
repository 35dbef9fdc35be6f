"""Input embeddings: one imaging frame (a vector of ROI activity) -> one backbone token.

The paper (NLP4Neuro) projects each frame's neural activity linearly into the backbone's
hidden size and feeds the result as ``inputs_embeds``. :class:`LinearEmbedding` is that
projection; :class:`PositionalEmbedding` adds a learned position table (initialised with
sinusoids) on top, for backbones without position information of their own and as the
paper's "positional" variant.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

__all__ = [
    "LinearEmbedding",
    "PositionalEmbedding",
    "TemporalEmbedding",
    "build_embedding",
    "sinusoidal_positions",
]


class LinearEmbedding(nn.Module):
    """Linear projection of ROI activity to the hidden size: (B, L, N) -> (B, L, H).

    Parameters
    ----------
    n_rois
        Number of ROIs (input features per frame).
    hidden_size
        Hidden size of the backbone.

    Examples
    --------
    >>> emb = LinearEmbedding(30, 8)
    >>> emb(torch.zeros(2, 5, 30)).shape
    torch.Size([2, 5, 8])
    """

    def __init__(self, n_rois: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(n_rois, hidden_size)
        # (n_rois,) 0/1 once restrict() chose the ROIs this projection sees; None: all.
        # A buffer, so it is saved and loaded with the weights (see _load_from_state_dict).
        self.roi_mask: torch.Tensor | None
        self.register_buffer("roi_mask", None)

    @property
    def n_rois(self) -> int:
        """Number of ROIs the projection expects."""
        return self.proj.in_features

    def restrict(self, rois: torch.Tensor | list[int]) -> None:
        """See only ``rois`` (indices) from now on: the activity of every other ROI is
        multiplied by zero before the projection, so it neither changes the output nor
        receives a gradient, and its weights are set to zero. The kept ROIs' initial weights
        are rescaled to the scale a projection of that many inputs starts with (as
        ``nn.Linear`` initialises, times the lag scaling of a temporal embedding), so a
        restricted projection trains like a small one. Call it before training.

        Examples
        --------
        >>> emb = LinearEmbedding(6, 4)
        >>> emb.restrict([1, 4])
        >>> emb.roi_mask.tolist()
        [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
        >>> x = torch.randn(2, 3, 6)
        >>> y = x.clone()
        >>> y[..., 0] = 5.0  # a ROI it does not see
        >>> bool(torch.equal(emb(x), emb(y)))
        True
        """
        weights = self.roi_weights()
        idx = torch.as_tensor(rois, dtype=torch.long, device=weights[0].device).unique()
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= self.n_rois:
            raise ConfigError(
                f"cannot restrict a projection of {self.n_rois} ROIs to indices {idx.tolist()[:8]}"
            )
        mask = torch.zeros(self.n_rois, device=weights[0].device)
        mask[idx] = 1.0
        scale = math.sqrt(self.n_rois / idx.numel())
        with torch.no_grad():
            for w in weights:
                w.mul_(mask * scale)
        self.roi_mask = mask

    def _masked(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.roi_mask is None else x * self.roi_mask.to(x.dtype)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # the mask exists only in restricted projections: take it when the state has one
        # (a freshly built projection has none), and leave the others seeing every ROI
        mask = state_dict.get(prefix + "roi_mask")
        if mask is not None and self.roi_mask is None:
            self.roi_mask = torch.empty_like(mask, device=self.proj.weight.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def roi_weights(self) -> list[torch.Tensor]:
        """The weight matrices applied to ROI activity (hidden x ROIs), one per lag."""
        return [self.proj.weight]

    def roi_sq_norms(self) -> torch.Tensor:
        """Squared L2 norm of each ROI's weights over every hidden unit and lag, shape
        ``(n_rois,)``, in float32 and differentiable (the penalties of training use it)."""
        return sum((w.float() ** 2).sum(dim=0) for w in self.roi_weights())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project every frame of every window."""
        return self.proj(self._masked(x))


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """The sinusoidal position table of "Attention is all you need", shape (length, dim).

    Examples
    --------
    >>> sinusoidal_positions(4, 6).shape
    torch.Size([4, 6])
    """
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    i = torch.arange(0, dim, 2, dtype=torch.float32)
    freq = torch.exp(-math.log(10000.0) * i / dim)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


class PositionalEmbedding(LinearEmbedding):
    """Linear projection plus a learned position vector per window position.

    Parameters
    ----------
    n_rois, hidden_size
        As in :class:`LinearEmbedding`.
    max_len
        Longest window (``seq_len``).

    Examples
    --------
    >>> emb = PositionalEmbedding(30, 8, max_len=5)
    >>> out = emb(torch.zeros(2, 5, 30))
    >>> d = emb.position[1] - emb.position[0]
    >>> bool(torch.allclose(out[0, 1] - out[0, 0], d, atol=1e-6))
    True
    """

    def __init__(self, n_rois: int, hidden_size: int, *, max_len: int) -> None:
        super().__init__(n_rois, hidden_size)
        self.position = nn.Parameter(sinusoidal_positions(max_len, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project every frame and add the position vector of its place in the window."""
        length = x.shape[-2]
        if length > self.position.shape[0]:
            raise ConfigError(
                f"window of {length} frames is longer than the {self.position.shape[0]} "
                "positions of this embedding (seq_len it was built with)"
            )
        return self.proj(self._masked(x)) + self.position[:length]


class TemporalEmbedding(LinearEmbedding):
    """Causal temporal convolution: each token sees its frame and ``kernel - 1`` before it.

    ``e(t) = sum_{l < kernel} W_l x(t - l) + b``, with frames before the window start
    counted as zero (the training mean). ``proj`` holds the lag-0 weights, ``lags`` the
    others, so the ROI weights of every lag are inspectable.

    Examples
    --------
    >>> emb = TemporalEmbedding(3, 4, kernel=2)
    >>> x = torch.zeros(1, 5, 3)
    >>> x[0, 2, 0] = 1.0
    >>> out = emb(x) - emb.proj.bias
    >>> [bool(out[0, t].abs().sum() > 0) for t in range(5)]
    [False, False, True, True, False]
    """

    def __init__(self, n_rois: int, hidden_size: int, *, kernel: int = 3) -> None:
        super().__init__(n_rois, hidden_size)
        if kernel < 1:
            raise ConfigError(f"embedding_kernel={kernel!r} is not valid: expected >= 1")
        self.lags = nn.ModuleList(
            nn.Linear(n_rois, hidden_size, bias=False) for _ in range(kernel - 1)
        )
        scale = 1.0 / math.sqrt(kernel)
        with torch.no_grad():
            self.proj.weight.mul_(scale)
            for lin in self.lags:
                lin.weight.mul_(scale)

    def roi_weights(self) -> list[torch.Tensor]:
        """Lag-0 weights first, then those of 1, 2, ... frames before."""
        return [self.proj.weight, *(lin.weight for lin in self.lags)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project every frame together with its ``kernel - 1`` predecessors."""
        x = self._masked(x)
        out = self.proj(x)
        for lag, lin in enumerate(self.lags, start=1):
            if lag < x.shape[-2]:
                shifted = torch.nn.functional.pad(x[..., :-lag, :], (0, 0, lag, 0))
                out = out + lin(shifted)
        return out


def build_embedding(
    kind: str, *, n_rois: int, hidden_size: int, seq_len: int, kernel: int = 3
) -> LinearEmbedding:
    """Make the input embedding named by ``FitConfig.embedding``.

    Parameters
    ----------
    kind
        ``"linear"``, ``"positional"`` or ``"temporal"``.
    n_rois, hidden_size, seq_len
        Input size, output size and window length.
    kernel
        Frames seen by each token of the ``"temporal"`` embedding.

    Examples
    --------
    >>> type(build_embedding("positional", n_rois=3, hidden_size=4, seq_len=2)).__name__
    'PositionalEmbedding'
    """
    if kind == "linear":
        return LinearEmbedding(n_rois, hidden_size)
    if kind == "positional":
        return PositionalEmbedding(n_rois, hidden_size, max_len=seq_len)
    if kind == "temporal":
        return TemporalEmbedding(n_rois, hidden_size, kernel=kernel)
    raise ConfigError(
        f"embedding={kind!r} is not valid: expected one of linear, positional, temporal"
    )
