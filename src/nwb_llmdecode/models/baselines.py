"""Baseline decoders, run through the same engine and evaluation as the LLM decoders.

* :class:`RidgeDecoder` — ridge regression on time-lagged activity (lags 0 .. n-1 frames,
  history before a block's first frame counts as the training mean). The number of lags
  and the penalty are chosen on the validation block; solved in closed form, in the
  primal (features <= frames) or in the dual through a lagged Gram matrix, so 20,000 ROIs
  x 20 lags never builds a (frames x 400,000) design matrix.
* :class:`LSTMDecoder` — a torch LSTM, seq-to-seq over the same windows as the
  transformers (trained by the engine's loop).
* :class:`ReservoirDecoder` — an echo-state network (the paper's reservoir baseline): a
  fixed random recurrent reservoir with spectral radius < 1, run through each block from a
  zero state, and a ridge readout whose penalty is chosen on the validation block.

All work in normalised units (activity z-scored per ROI, behaviour per channel); the
engine converts back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataError
from ..progress import Progress
from ..windows import Block
from .embeddings import LinearEmbedding

__all__ = [
    "ClosedFormDecoder",
    "LSTMDecoder",
    "LaggedLinear",
    "ReservoirDecoder",
    "RidgeDecoder",
    "lag_candidates",
]

log = logging.getLogger(__name__)


def lag_candidates(seq_len: int) -> list[int]:
    """Numbers of lags tried by the ridge baseline: a geometric-ish ladder up to seq_len.

    Examples
    --------
    >>> lag_candidates(20)
    [1, 2, 3, 4, 6, 8, 12, 16, 20]
    """
    ladder = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    out = [n for n in ladder if n < seq_len]
    return [*out, seq_len]


def _lagged(z: np.ndarray, n_lags: int) -> np.ndarray:
    """Design matrix [z(t), z(t-1), ..., z(t-n+1)] of one block, zero history before it."""
    t, n = z.shape
    out = np.zeros((t, n * n_lags), dtype=np.float64)
    for lag in range(n_lags):
        out[lag:, lag * n : (lag + 1) * n] = z[: t - lag]
    return out


def _add_lag(kernel: np.ndarray, gram: np.ndarray, lag: int) -> None:
    """kernel[i, j] += gram[i - lag, j - lag] (zero history before each block), in place."""
    if lag == 0:
        kernel += gram
    elif lag < min(gram.shape):  # rows and columns may be different blocks
        kernel[lag:, lag:] += gram[:-lag, :-lag]


def _valid_rows(y: np.ndarray) -> np.ndarray:
    return np.all(np.isfinite(y), axis=1)


def _mse(pred: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(y)
    if not ok.any():
        return float("inf")
    return float(np.mean((pred[ok] - y[ok]) ** 2))


class ClosedFormDecoder:
    """Common interface of the baselines fitted in closed form (ridge, reservoir).

    ``fit(z, y, blocks)`` chooses hyperparameters on the validation block and fits on the
    training block; ``predict(z, blocks)`` returns (frames, channels) in normalised units,
    NaN outside the blocks; ``state_dict()`` / ``load_state_dict()`` give plain tensors
    for checkpoints.
    """

    kind: str = ""
    n_rois: int
    n_channels: int

    def fit(
        self,
        z: np.ndarray,
        y: np.ndarray,
        blocks: Sequence[Block],
        *,
        progress: Progress | None = None,
    ) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def predict_block(self, z: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, z: np.ndarray, blocks: Sequence[Block]) -> np.ndarray:
        """Predictions (frames, channels), float32, NaN outside ``blocks``."""
        if z.ndim != 2 or z.shape[1] != self.n_rois:
            raise DataError(
                f"{self.kind}: activity must be (frames, {self.n_rois} ROIs), got {z.shape}"
            )
        out = np.full((z.shape[0], self.n_channels), np.nan, dtype=np.float32)
        for b in blocks:
            out[b.start : b.stop] = self.predict_block(z[b.start : b.stop])
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:  # pragma: no cover
        raise NotImplementedError


def _blocks_by_name(blocks: Sequence[Block]) -> tuple[Block, Block]:
    by = {b.name: b for b in blocks}
    if "train" not in by or "validation" not in by:
        raise DataError("baselines need a 'train' and a 'validation' block")
    return by["train"], by["validation"]


class RidgeDecoder(ClosedFormDecoder):
    """Ridge regression of behaviour on lagged activity.

    Parameters
    ----------
    n_rois, n_channels
        Input and output sizes.
    seq_len
        Largest number of lags (0 .. seq_len-1 frames), the same history a window gives.
    lags
        Fixed number of lags; ``None`` chooses it on the validation block among
        :func:`lag_candidates`.
    alphas
        Penalties tried on the validation block.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> z = rng.standard_normal((300, 4))
    >>> y = np.stack([np.r_[0.0, z[:-1, 0]]], axis=1)  # behaviour = ROI 0, one frame ago
    >>> blocks = [Block("train", 0, 200), Block("validation", 210, 300)]
    >>> info = RidgeDecoder(4, 1, seq_len=4, alphas=(0.1, 10.0)).fit(z, y, blocks)
    >>> info["lags"] >= 2
    True
    """

    kind = "ridge"

    def __init__(
        self,
        n_rois: int,
        n_channels: int,
        *,
        seq_len: int,
        lags: int | None = None,
        alphas: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0),
    ) -> None:
        self.n_rois = int(n_rois)
        self.n_channels = int(n_channels)
        self.seq_len = int(seq_len)
        self.lags = lags
        self.alphas = tuple(float(a) for a in alphas)
        self.weights: np.ndarray | None = None  # (n_lags, n_rois, n_channels)
        self.bias: np.ndarray | None = None  # (n_channels,)
        self.alpha: float | None = None

    # -- selection and fit ----------------------------------------------------------------
    def fit(
        self,
        z: np.ndarray,
        y: np.ndarray,
        blocks: Sequence[Block],
        *,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Choose lags and alpha on the validation block, then fit on the training block.

        Returns a dict with the chosen ``lags``, ``alpha``, the validation MSE of every
        candidate (``scores``: list of (lags, alpha, mse)) and the ``solver`` used.
        """
        train, val = _blocks_by_name(blocks)
        ztr = np.asarray(z[train.start : train.stop], dtype=np.float32)
        zva = np.asarray(z[val.start : val.stop], dtype=np.float32)
        ytr_all = np.asarray(y[train.start : train.stop], dtype=np.float64)
        yva = np.asarray(y[val.start : val.stop], dtype=np.float64)
        rows = _valid_rows(ytr_all)
        if rows.sum() < 2:
            raise DataError("ridge: fewer than 2 training frames have behaviour")
        ytr = ytr_all[rows]
        cands = [self.lags] if self.lags is not None else lag_candidates(self.seq_len)
        n_train = int(rows.sum())
        dual = self.n_rois * max(cands) + 1 > n_train
        scores: list[tuple[int, float, float]] = []
        total = len(cands)
        gram_tt: np.ndarray | None = None
        if dual:
            # float32 products, float64 accumulation of lags and solves
            gram_tt = (ztr @ ztr.T).astype(np.float64)
            gram_vt = (zva @ ztr.T).astype(np.float64)
            k_tt = np.ones_like(gram_tt)  # the intercept as a constant feature
            k_vt = np.ones_like(gram_vt)
            done_lag = 0
            for i, n_lags in enumerate(cands):
                for lag in range(done_lag, n_lags):
                    _add_lag(k_tt, gram_tt, lag)
                    _add_lag(k_vt, gram_vt, lag)
                done_lag = n_lags
                ktr = k_tt[np.ix_(rows, rows)]
                s, u = np.linalg.eigh(ktr)
                uty = u.T @ ytr
                kv = k_vt[:, rows] @ u
                for a in self.alphas:
                    pred = kv @ (uty / (s + a)[:, None])
                    scores.append((n_lags, a, _mse(pred, yva)))
                if progress is not None:
                    progress("ridge", i + 1, total)
        else:
            for i, n_lags in enumerate(cands):
                xtr = _with_ones(_lagged(ztr, n_lags)[rows])
                xva = _with_ones(_lagged(zva, n_lags))
                s, u = np.linalg.eigh(xtr.T @ xtr)
                uxy = u.T @ (xtr.T @ ytr)
                xvu = xva @ u
                for a in self.alphas:
                    pred = xvu @ (uxy / (s + a)[:, None])
                    scores.append((n_lags, a, _mse(pred, yva)))
                if progress is not None:
                    progress("ridge", i + 1, total)
        best = min(scores, key=lambda r: (r[2], -r[1]))
        n_lags, alpha = best[0], best[1]
        self._solve(ztr, ytr, rows, n_lags, alpha, gram_tt)
        self.alpha = alpha
        log.info("ridge: %d lags, alpha %g (validation MSE %.4g)", n_lags, alpha, best[2])
        return {
            "lags": n_lags,
            "alpha": alpha,
            "solver": "dual" if dual else "primal",
            "scores": [list(r) for r in scores],
        }

    def _solve(
        self,
        ztr: np.ndarray,
        ytr: np.ndarray,
        rows: np.ndarray,
        n_lags: int,
        alpha: float,
        gram: np.ndarray | None,
    ) -> None:
        n = self.n_rois
        if gram is not None:  # dual solution, turned into primal weights
            k = np.ones_like(gram)
            for lag in range(n_lags):
                _add_lag(k, gram, lag)
            k = k[np.ix_(rows, rows)]
            coef = np.linalg.solve(k + alpha * np.eye(len(k)), ytr)  # (n_train, C)
            full = np.zeros((len(ztr), self.n_channels))
            full[rows] = coef
            w = np.zeros((n_lags, n, self.n_channels))
            for lag in range(n_lags):
                # d/dW_lag of sum_t z(t-lag) W_lag: primal weights = X^T coef, lag block
                w[lag] = ztr[: len(ztr) - lag].T @ full[lag:].astype(np.float32)
            b = full.sum(axis=0)
        else:
            x = _with_ones(_lagged(ztr, n_lags)[rows])
            ytr = ytr.astype(np.float64)
            sol = np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ ytr)
            w = sol[:-1].reshape(n_lags, n, self.n_channels)
            b = sol[-1]
        self.weights = w.astype(np.float32)
        self.bias = np.asarray(b, dtype=np.float32)
        self.lags = n_lags

    # -- prediction ---------------------------------------------------------------------
    def predict_block(self, z: np.ndarray) -> np.ndarray:
        """Predictions for one contiguous block (zero history before its first frame)."""
        if self.weights is None or self.bias is None:
            raise DataError("ridge: predict called before fit (or load_state_dict)")
        z = np.asarray(z, dtype=np.float32)
        out = np.broadcast_to(self.bias, (len(z), self.n_channels)).astype(np.float64)
        for lag in range(self.weights.shape[0]):
            if lag < len(z):
                out[lag:] += z[: len(z) - lag] @ self.weights[lag]
        return out.astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Weights (lags, ROIs, channels), bias and the chosen alpha, as tensors."""
        if self.weights is None or self.bias is None:
            raise DataError("ridge: nothing to save before fit")
        return {
            "weights": torch.from_numpy(np.ascontiguousarray(self.weights)),
            "bias": torch.from_numpy(np.ascontiguousarray(self.bias)),
            "alpha": torch.tensor(float(self.alpha or 0.0), dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_dict`."""
        w = state["weights"].numpy()
        if w.ndim != 3 or w.shape[1:] != (self.n_rois, self.n_channels):
            raise DataError(
                f"ridge checkpoint has weights {tuple(w.shape)}, expected "
                f"(lags, {self.n_rois}, {self.n_channels})"
            )
        self.weights = w.astype(np.float32)
        self.bias = state["bias"].numpy().astype(np.float32)
        self.alpha = float(state["alpha"])
        self.lags = int(w.shape[0])


class LaggedLinear(nn.Module):
    """A fixed lagged linear map on windows: the torch form of a fitted :class:`RidgeDecoder`.

    ``out[:, p] = bias + sum_{l <= p, l < lags} x[:, p - l] @ weights[l]``, i.e. zero history
    before the window's first frame, exactly as the ridge baseline treats a block's first
    frames. Weights are buffers (never trained) and are saved with the decoder. Used as the
    base of the ridge-residual decoder (``FitConfig.residual="ridge"``).

    Parameters
    ----------
    n_rois, n_channels
        Input and output sizes.
    max_lags
        Capacity in lags (the window length); :meth:`load_ridge` fills the first ones.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> z = rng.standard_normal((300, 4))
    >>> y = z[:, :1] + 0.5 * np.r_[0.0, z[:-1, 1]][:, None]
    >>> blocks = [Block("train", 0, 200), Block("validation", 210, 300)]
    >>> ridge = RidgeDecoder(4, 1, seq_len=5, alphas=(0.1,))
    >>> _ = ridge.fit(z, y, blocks)
    >>> base = LaggedLinear(4, 1, max_lags=5)
    >>> base.load_ridge(ridge)
    >>> x = torch.from_numpy(z[:5].astype(np.float32))[None]
    >>> bool(np.allclose(base(x)[0].numpy(), ridge.predict_block(z[:5]), atol=1e-5))
    True
    """

    def __init__(self, n_rois: int, n_channels: int, *, max_lags: int) -> None:
        super().__init__()
        self.register_buffer("weights", torch.zeros(max_lags, n_rois, n_channels))
        self.register_buffer("bias", torch.zeros(n_channels))
        self.register_buffer("lags", torch.zeros((), dtype=torch.long))

    @property
    def warmup(self) -> int:
        """Frames at the start of a window whose prediction lacks part of its history."""
        return max(int(self.lags) - 1, 0)

    def load_ridge(self, ridge: RidgeDecoder) -> None:
        """Copy a fitted ridge model's weights (its lags must fit ``max_lags``)."""
        if ridge.weights is None or ridge.bias is None:
            raise DataError("ridge: load_ridge called before fit")
        n = ridge.weights.shape[0]
        if n > self.weights.shape[0] or ridge.weights.shape[1:] != self.weights.shape[1:]:
            raise DataError(
                f"ridge weights {ridge.weights.shape} do not fit a lagged map of "
                f"{tuple(self.weights.shape)}"
            )
        with torch.no_grad():
            self.weights.zero_()
            self.weights[:n] = torch.from_numpy(ridge.weights)
            self.bias.copy_(torch.from_numpy(ridge.bias))
            self.lags.fill_(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seq_len, n_rois) -> (batch, seq_len, n_channels), float32."""
        n_lags = min(int(self.lags), x.shape[1])
        out = self.bias.to(x.dtype).expand(x.shape[0], x.shape[1], -1)
        if n_lags == 0:
            return out.clone()
        # every lag's contribution at once: (B, L, N) @ (N, lags*C), then shift and sum
        w = self.weights[:n_lags].to(x.dtype)  # (lags, N, C)
        proj = (x @ w.permute(1, 0, 2).reshape(w.shape[1], -1)).unflatten(-1, w.shape[::2])
        acc = proj[:, :, 0, :]
        for lag in range(1, n_lags):
            acc = acc + torch.nn.functional.pad(proj[:, :-lag, lag, :], (0, 0, lag, 0))
        return out + acc


def _with_ones(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


class ReservoirDecoder(ClosedFormDecoder):
    """Echo-state network: fixed random leaky-tanh reservoir and a ridge readout.

    ``h(t) = (1 - leak) h(t-1) + leak * tanh(z(t) W_in + h(t-1) W + b)``, run through each
    block from ``h = 0``; behaviour is read out linearly from ``h(t)``.

    Parameters
    ----------
    n_rois, n_channels
        Input and output sizes.
    size
        Number of reservoir units.
    spectral_radius
        Largest absolute eigenvalue of the recurrent weights (< 1: fading memory).
    leak
        Leak rate in (0, 1].
    input_scale
        Scale of the random input weights (each unit sums ROIs with weights ~ N(0, s²/N)).
    alphas
        Readout penalties tried on the validation block.
    seed
        Seed of the random weights.

    Examples
    --------
    >>> res = ReservoirDecoder(5, 2, size=20, seed=0)
    >>> float(np.max(np.abs(np.linalg.eigvals(res.w_res)))) < 1
    True
    """

    kind = "reservoir"

    def __init__(
        self,
        n_rois: int,
        n_channels: int,
        *,
        size: int = 500,
        spectral_radius: float = 0.9,
        leak: float = 1.0,
        input_scale: float = 1.0,
        alphas: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0),
        seed: int = 0,
        density: float = 0.1,
    ) -> None:
        self.n_rois = int(n_rois)
        self.n_channels = int(n_channels)
        self.leak = float(leak)
        self.alphas = tuple(float(a) for a in alphas)
        rng = np.random.default_rng(seed)
        self.w_in = (rng.standard_normal((n_rois, size)) * input_scale / np.sqrt(n_rois)).astype(
            np.float32
        )
        w = rng.standard_normal((size, size)) * (rng.random((size, size)) < density)
        radius = float(np.max(np.abs(np.linalg.eigvals(w)))) if size > 0 else 0.0
        if radius == 0.0:  # pragma: no cover - astronomically unlikely for size > 1
            w = np.eye(size)
            radius = 1.0
        self.w_res = (w * (spectral_radius / radius)).astype(np.float32)
        self.b = (0.1 * rng.standard_normal(size)).astype(np.float32)
        self.readout: np.ndarray | None = None  # (size + 1, channels)
        self.alpha: float | None = None

    @property
    def size(self) -> int:
        """Number of reservoir units."""
        return self.w_res.shape[0]

    def states(self, z: np.ndarray) -> np.ndarray:
        """Reservoir states (frames, size) for one contiguous block, from a zero state."""
        drive = np.asarray(z, dtype=np.float32) @ self.w_in + self.b
        h = np.zeros(self.size, dtype=np.float32)
        out = np.empty((len(z), self.size), dtype=np.float32)
        a = self.leak
        for t in range(len(z)):
            h = (1.0 - a) * h + a * np.tanh(drive[t] + h @ self.w_res)
            out[t] = h
        return out

    def fit(
        self,
        z: np.ndarray,
        y: np.ndarray,
        blocks: Sequence[Block],
        *,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Run the reservoir over train and validation, choose the penalty, fit the readout."""
        train, val = _blocks_by_name(blocks)
        htr = _with_ones(self.states(z[train.start : train.stop]).astype(np.float64))
        if progress is not None:
            progress("reservoir", 1, 2)
        hva = _with_ones(self.states(z[val.start : val.stop]).astype(np.float64))
        if progress is not None:
            progress("reservoir", 2, 2)
        ytr = np.asarray(y[train.start : train.stop], dtype=np.float64)
        yva = np.asarray(y[val.start : val.stop], dtype=np.float64)
        rows = _valid_rows(ytr)
        if rows.sum() < 2:
            raise DataError("reservoir: fewer than 2 training frames have behaviour")
        x, yt = htr[rows], ytr[rows]
        s, u = np.linalg.eigh(x.T @ x)
        uxy = u.T @ (x.T @ yt)
        hvu = hva @ u
        scores = []
        for a in self.alphas:
            scores.append((a, _mse(hvu @ (uxy / (s + a)[:, None]), yva)))
        alpha, mse = min(scores, key=lambda r: (r[1], -r[0]))
        self.readout = (u @ (uxy / (s + alpha)[:, None])).astype(np.float32)
        self.alpha = alpha
        log.info("reservoir: alpha %g (validation MSE %.4g)", alpha, mse)
        return {"alpha": alpha, "scores": [list(r) for r in scores]}

    def predict_block(self, z: np.ndarray) -> np.ndarray:
        """Predictions for one contiguous block (reservoir starts from zero)."""
        if self.readout is None:
            raise DataError("reservoir: predict called before fit (or load_state_dict)")
        h = self.states(z)
        return (h @ self.readout[:-1] + self.readout[-1]).astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Random weights and the readout, as tensors."""
        if self.readout is None:
            raise DataError("reservoir: nothing to save before fit")
        return {
            "w_in": torch.from_numpy(self.w_in.copy()),
            "w_res": torch.from_numpy(self.w_res.copy()),
            "b": torch.from_numpy(self.b.copy()),
            "readout": torch.from_numpy(self.readout.copy()),
            "leak": torch.tensor(self.leak, dtype=torch.float64),
            "alpha": torch.tensor(float(self.alpha or 0.0), dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_dict`."""
        w_in = state["w_in"].numpy()
        if w_in.shape[0] != self.n_rois:
            raise DataError(
                f"reservoir checkpoint expects {w_in.shape[0]} ROIs, this model {self.n_rois}"
            )
        self.w_in = w_in.astype(np.float32)
        self.w_res = state["w_res"].numpy().astype(np.float32)
        self.b = state["b"].numpy().astype(np.float32)
        self.readout = state["readout"].numpy().astype(np.float32)
        self.leak = float(state["leak"])
        self.alpha = float(state["alpha"])


class LSTMDecoder(nn.Module):
    """LSTM seq-to-seq decoder: (B, L, N) -> (B, L, C), causal within the window.

    Same parts as :class:`~nwb_llmdecode.models.decoder.Decoder`: an input ``embedding``
    (Linear ROIs -> hidden), the recurrent core, a ``head`` (Linear hidden -> channels).

    Examples
    --------
    >>> m = LSTMDecoder(10, 2, hidden_size=8)
    >>> m(torch.zeros(3, 5, 10)).shape
    torch.Size([3, 5, 2])
    """

    kind = "lstm"

    def __init__(
        self, n_rois: int, n_channels: int, *, hidden_size: int = 128, num_layers: int = 1
    ) -> None:
        super().__init__()
        self.embedding = LinearEmbedding(n_rois, hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, n_channels)

    @property
    def n_rois(self) -> int:
        """Number of ROIs the decoder expects."""
        return self.embedding.n_rois

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict behaviour for every frame of every window."""
        h, _ = self.lstm(self.embedding(x))
        return self.head(h)
