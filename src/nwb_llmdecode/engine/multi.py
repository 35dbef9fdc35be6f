"""Fit one decoder on several sessions (animals): :func:`fit_sessions`, :func:`adapt_session`.

Each session keeps the single-session pieces: its own time-ordered split
(:func:`~nwb_llmdecode.windows.split_blocks`), its own
:class:`~nwb_llmdecode.engine.result.Normalization` from its training block, windows that
never cross a block. Each batch holds windows of one session; batches of all sessions are
shuffled together in every epoch. Early stopping watches the validation loss pooled over
sessions. Every session gets a :class:`~nwb_llmdecode.engine.result.FitResult` whose model
is that session's view of the shared decoder, so writing, prediction and salience work on
it as on a single-session fit.

Sessions must share the imaging rate: sessions at different rates are refused
(:class:`~nwb_llmdecode.errors.DataError`), never resampled or silently mixed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import FitConfig
from ..errors import ConfigError, DataError
from ..models.multi import MultiSessionDecoder, build_multi_model, make_embedding
from ..windows import iter_batches, split_blocks, window_starts
from .evaluate import compute_metrics, predict_blocks, regression_metrics
from .loop import (
    _embedding_penalty,
    _improves,
    _masked_mse,
    _param_groups,
    _snapshot,
    _warmup_scheduler,
    make_optimizer,
    progress_log,
)
from .result import FitResult, Normalization, check_arrays, resolve_device

__all__ = [
    "MultiFitResult",
    "SessionArrays",
    "adapt_session",
    "fit_sessions",
    "load_multi_checkpoint",
    "save_multi_checkpoint",
]

log = logging.getLogger(__name__)


@dataclass
class SessionArrays:
    """One session's arrays and what its behaviour channels are.

    Attributes
    ----------
    key
        Unique name of the session (e.g. its file name).
    activity, behavior
        (frames, ROIs) and (frames, channels) float32.
    series
        Behaviour series name of every channel (channels of one series are contiguous).
    units
        Unit of every channel.
    frame_rate
        Imaging (volume) rate in Hz.
    """

    key: str
    activity: np.ndarray
    behavior: np.ndarray
    series: list[str]
    units: list[str]
    frame_rate: float

    def heads(self) -> list[tuple[str, int, str]]:
        """(series name, channel count, unit) of each behaviour series, in order."""
        out: list[tuple[str, int, str]] = []
        for name, unit in zip(self.series, self.units, strict=True):
            if out and out[-1][0] == name:
                out[-1] = (name, out[-1][1] + 1, unit)
            else:
                out.append((name, 1, unit))
        return out


@dataclass
class MultiFitResult:
    """Result of :func:`fit_sessions`: the shared model and one FitResult per session."""

    model: MultiSessionDecoder
    sessions: dict[str, FitResult]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    head_units: dict[str, str] = field(default_factory=dict)
    frame_rate: float = float("nan")

    def pooled_metrics(self, split: str = "test") -> dict[str, float]:
        """R², Pearson r and RMSE pooled over the ``split`` frames of all sessions.

        Pooled in z-scored units (each session's training-block normalisation), so
        sessions with different behaviour scales weigh alike.
        """
        preds, targs = [], []
        for res in self.sessions.values():
            blk = dict(zip([s[0] for s in res.splits], res.splits, strict=True))[split]
            sl = slice(blk[1], blk[2])
            norm = res.normalization
            preds.append(norm.behavior(res.predictions[sl]))
            targs.append(norm.behavior(res.targets[sl]))  # type: ignore[attr-defined]
        return regression_metrics(np.concatenate(preds), np.concatenate(targs))


def _check_sessions(sessions: Sequence[SessionArrays]) -> dict[str, tuple[int, str]]:
    if len(sessions) < 1:
        raise ConfigError("fit_sessions needs at least one session")
    keys = [s.key for s in sessions]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"session keys must be unique, got {keys}")
    rates = {s.key: float(s.frame_rate) for s in sessions}
    if len({round(r, 6) for r in rates.values()}) > 1:
        raise DataError(
            f"sessions have different imaging rates {rates} (Hz); multi-session fit does "
            "not resample: fit sessions recorded at one rate together"
        )
    heads: dict[str, tuple[int, str, str]] = {}
    for s in sessions:
        for name, n, unit in s.heads():
            if name in heads:
                n0, unit0, key0 = heads[name]
                if unit != unit0:
                    raise DataError(
                        f"{s.key}: behaviour {name!r} is in {unit!r} but in {unit0!r} in "
                        f"{key0}; one head per behaviour needs one unit: convert or rename it"
                    )
                if n != n0:
                    raise DataError(
                        f"{s.key}: behaviour {name!r} has {n} channel(s) but {n0} in {key0}; "
                        "select the same channels in every session"
                    )
            else:
                heads[name] = (n, unit, s.key)
    return {k: (n, u) for k, (n, u, _) in heads.items()}


@dataclass
class _Prepared:
    data: SessionArrays
    blocks: list
    norm: Normalization
    zt: torch.Tensor
    yn: np.ndarray
    yt: torch.Tensor
    starts: np.ndarray
    behavior: np.ndarray


def _prepare(s: SessionArrays, config: FitConfig, device: torch.device) -> _Prepared:
    a, b = check_arrays(s.activity, s.behavior)
    if b is None:
        raise DataError(f"{s.key}: behavior is required to fit a decoder")
    blocks = split_blocks(a.shape[0], seq_len=config.seq_len, fractions=config.split)
    by = {blk.name: blk for blk in blocks}
    for name in ("train", "validation"):
        blk = by[name]
        if not np.isfinite(b[blk.start : blk.stop]).any():
            raise DataError(f"{s.key}: the {name} block has no behaviour sample")
    norm = Normalization.from_block(a, b, by["train"])
    z, yn = norm.activity(a), norm.behavior(b)
    train = by["train"]
    starts = window_starts(train.start, train.stop, config.seq_len, config.train_stride)
    idx = starts[:, None] + np.arange(config.seq_len)
    starts = starts[np.isfinite(yn[idx]).any(axis=(1, 2))]
    return _Prepared(
        s,
        blocks,
        norm,
        torch.from_numpy(z).to(device),
        yn,
        torch.from_numpy(yn).to(device),
        starts,
        b,
    )


def _val_loss(model: MultiSessionDecoder, preps: Sequence[_Prepared], config: FitConfig) -> float:
    se, n = 0.0, 0
    for p in preps:
        val = next(b for b in p.blocks if b.name == "validation")
        pred = predict_blocks(
            model.session_view(p.data.key),
            p.zt,
            [val],
            seq_len=config.seq_len,
            batch_size=config.eval_batch_size,
        )[val.start : val.stop]
        y = p.yn[val.start : val.stop]
        ok = np.isfinite(pred) & np.isfinite(y)
        se += float(((pred[ok] - y[ok]) ** 2).sum())
        n += int(ok.sum())
    return se / max(n, 1)


def _train(
    model: MultiSessionDecoder, preps: Sequence[_Prepared], config: FitConfig
) -> tuple[list[dict[str, Any]], int]:
    rng = np.random.default_rng(config.seed)
    groups = _param_groups(model.base, config)
    extra = [
        p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("base.")
    ]
    if groups[0]["params"] or extra:
        groups[0]["params"] = list(groups[0]["params"]) + extra
    groups = [g for g in groups if g["params"]]
    params = [p for g in groups for p in g["params"]]
    opt = make_optimizer(groups, weight_decay=config.weight_decay)
    # the single-session fit's warm-up (FitConfig.lr_warmup), over the batches of all sessions
    per_session = [min(len(p.starts), config.max_windows_per_epoch or len(p.starts)) for p in preps]
    sched = _warmup_scheduler(
        opt, config, sum(math.ceil(n / config.batch_size) for n in per_session)
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    history: list[dict[str, Any]] = []
    best, best_epoch, best_state = float("inf"), 0, None
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        batches = [
            (i, batch)
            for i, p in enumerate(preps)
            for batch in iter_batches(
                p.starts, config.batch_size, rng=rng, max_windows=config.max_windows_per_epoch
            )
        ]
        order = rng.permutation(len(batches))
        total, count = 0.0, 0
        for j in order:
            i, batch = batches[j]
            p = preps[i]
            seq = torch.arange(config.seq_len, device=p.zt.device)
            ii = torch.as_tensor(batch, device=p.zt.device)[:, None] + seq
            x, y = p.zt[ii], p.yt[ii]
            if config.input_dropout > 0:
                x = torch.nn.functional.dropout(x, p=config.input_dropout, training=True)
            loss = _masked_mse(model(x, p.data.key), y)
            # the batch's own session's projection carries the embedding penalties
            penalty = _embedding_penalty(model.embeddings[p.data.key], config)
            opt.zero_grad(set_to_none=True)
            (loss if penalty is None else loss + penalty).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        train_loss = total / max(count, 1)
        if not math.isfinite(train_loss):
            raise DataError(f"training diverged (loss {train_loss}) in epoch {epoch}; lower lr")
        model.eval()
        val = _val_loss(model, preps, config)
        improved = _improves(val, best, config)
        if improved:
            best, best_epoch = val, epoch
            best_state = _snapshot(model, trainable)
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val,
                "best": improved,
                "seconds": time.perf_counter() - t0,
            }
        )
        progress_log.info(
            "epoch %d/%d (%d sessions): train loss %.4f, validation loss %.4f%s",
            epoch,
            config.epochs,
            len(preps),
            train_loss,
            val,
            " (best)" if improved else "",
        )
        if (
            config.patience > 0
            and epoch >= config.min_epochs
            and epoch - best_epoch >= config.patience
        ):
            break
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    model.eval()
    return history, best_epoch


def _results(
    model: MultiSessionDecoder,
    preps: Sequence[_Prepared],
    config: FitConfig,
    device: torch.device,
    t_start: float,
    history: list,
    best_epoch: int,
) -> dict[str, FitResult]:
    out = {}
    for p in preps:
        view = model.session_view(p.data.key)
        pred_n = predict_blocks(
            view,
            p.zt,
            p.blocks,
            seq_len=config.seq_len,
            batch_size=config.eval_batch_size,
            device=device,
        )
        predictions = p.norm.behavior_units(pred_n)
        res = FitResult(
            predictions=predictions,
            splits=[blk.as_tuple() for blk in p.blocks],
            metrics=compute_metrics(predictions, p.behavior, p.blocks),
            config=config,
            device=str(device),
            duration_s=time.perf_counter() - t_start,
            history=history,
            model=view,
            normalization=p.norm,
            best_epoch=best_epoch,
            stopped_early=len(history) < config.epochs,
            n_rois=p.data.activity.shape[1],
            n_channels=p.data.behavior.shape[1],
        )
        res.targets = p.behavior  # type: ignore[attr-defined]
        out[p.data.key] = res
    return out


def fit_sessions(sessions: Sequence[SessionArrays], *, config: FitConfig) -> MultiFitResult:
    """Train one decoder on several sessions and evaluate it on each.

    Parameters
    ----------
    sessions
        The sessions; same imaging rate; a behaviour name shared by sessions must have the
        same unit and channel count in each (one head per behaviour name).
    config
        Run options; the backbone must be a transformer (any ``train_mode``).

    Returns
    -------
    MultiFitResult

    Raises
    ------
    DataError
        Different imaging rates, or one behaviour name with different units / channels.
    ConfigError
        A closed-form or LSTM backbone, duplicate session keys, a seed ensemble or a
        hyperparameter search (single-session options).
    """
    if not isinstance(config, FitConfig):
        raise ConfigError(f"config must be a FitConfig, got {type(config).__name__}")
    for option, value, flag in (
        ("ensemble", config.ensemble > 1, "--ensemble"),
        ("search.trials", config.search.trials > 0, "--search"),
    ):
        if value:
            raise ConfigError(
                f"{option} applies to a fit of one session; a fit across sessions trains one "
                f"shared decoder: drop {flag}, or fit each session on its own"
            )
    t_start = time.perf_counter()
    heads = _check_sessions(sessions)
    device = resolve_device(config.device)
    preps = [_prepare(s, config, device) for s in sessions]
    fork = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(config.seed)
        model = build_multi_model(
            config,
            n_rois={s.key: s.activity.shape[1] for s in sessions},
            heads={k: n for k, (n, _u) in heads.items()},
            session_heads={s.key: [h[0] for h in s.heads()] for s in sessions},
            device=device,
        )
        history, best_epoch = _train(model, preps, config)
        results = _results(model, preps, config, device, t_start, history, best_epoch)
    return MultiFitResult(
        model,
        results,
        history,
        best_epoch,
        {k: u for k, (_n, u) in heads.items()},
        float(sessions[0].frame_rate),
    )


def adapt_session(
    model: MultiSessionDecoder,
    session: SessionArrays,
    *,
    config: FitConfig,
    head_units: dict[str, str] | None = None,
    frame_rate: float | None = None,
) -> MultiFitResult:
    """Fit only a new input embedding for ``session``; backbone and heads stay frozen.

    Parameters
    ----------
    model
        A trained multi-session decoder (modified in place: it gains the session).
    session
        The new session; its behaviour names must be among the model's heads.
    config
        Run options (epochs, lr, seq_len... of the adaptation).
    head_units
        Unit of each head, checked against the session's units when given.
    frame_rate
        Imaging rate the decoder was trained at; a session at another rate is refused.
    """
    if frame_rate is not None and abs(float(session.frame_rate) - frame_rate) > 1e-6:
        raise DataError(
            f"{session.key}: imaging rate {session.frame_rate} Hz, but the decoder was "
            f"trained at {frame_rate} Hz; adaptation does not resample"
        )
    for name, n, unit in session.heads():
        if name not in model.heads:
            raise DataError(
                f"{session.key}: behaviour {name!r} has no head in this decoder "
                f"(heads {sorted(model.heads)})"
            )
        if model.heads[name].out_features != n:
            raise DataError(
                f"{session.key}: behaviour {name!r} has {n} channels, head has "
                f"{model.heads[name].out_features}"
            )
        if head_units and head_units.get(name, unit) != unit:
            raise DataError(
                f"{session.key}: behaviour {name!r} is in {unit!r}, the decoder's head in "
                f"{head_units[name]!r}; convert it"
            )
    t_start = time.perf_counter()
    device = next(model.parameters()).device
    prep = _prepare(session, config, device)
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    fork = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork):
            torch.manual_seed(config.seed)
            hidden = next(iter(model.heads.values())).in_features
            emb = make_embedding(config, session.activity.shape[1], hidden).to(device)
            model.add_session(session.key, emb, [h[0] for h in session.heads()])
            for p in emb.parameters():
                p.requires_grad_(True)
            history, best_epoch = _train(model, [prep], config)
            results = _results(model, [prep], config, device, t_start, history, best_epoch)
    finally:
        for n, p in model.named_parameters():
            if n in frozen:
                p.requires_grad_(frozen[n])
    return MultiFitResult(
        model, results, history, best_epoch, dict(head_units or {}), float(session.frame_rate)
    )


MULTI_FORMAT = "nwb-llmdecode-multi/1"


def save_multi_checkpoint(
    result: MultiFitResult, directory: str | Path, *, overwrite: bool = False
) -> Path:
    """Write the shared decoder as data only: ``weights.pt`` (tensors) and JSON.

    Pretrained backbone weights that did not train are left out (reloaded from their
    source), as single-session checkpoints do.
    """
    from ..errors import OutputExistsError
    from .checkpoint import _atomic_write, package_versions

    d = Path(directory)
    if (d / "multi.json").exists() and not overwrite:
        raise OutputExistsError(f"{d}: holds a checkpoint; pass overwrite=True (--overwrite)")
    d.mkdir(parents=True, exist_ok=True)
    model = result.model
    whole = model.base.saves_whole_backbone
    state = {
        f"model.{k}": v.detach().cpu().clone().contiguous()
        for k, v in model.state_dict().items()
        if whole or not k.startswith("base.backbone.") or "lora_" in k
    }
    for key, res in result.sessions.items():
        state.update({f"norm.{key}.{k}": v for k, v in res.normalization.state_dict().items()})
    config = next(iter(result.sessions.values())).config
    meta = {
        "format": MULTI_FORMAT,
        "backbone": config.backbone,
        "n_rois": {k: int(e.n_rois) for k, e in model.embeddings.items()},
        "heads": {k: int(h.out_features) for k, h in model.heads.items()},
        "head_units": result.head_units,
        "session_heads": model.session_heads,
        "whole_backbone_saved": bool(whole),
        "frame_rate": result.frame_rate,
        "test_metrics": {
            k: [m for m in r.metrics if m["split"] == "test"] for k, r in result.sessions.items()
        },
        "versions": package_versions(),
    }
    _atomic_write(d / "weights.pt", lambda p: torch.save(state, p))
    _atomic_write(d / "config.json", lambda p: p.write_text(config.to_json(indent=2)))
    _atomic_write(d / "multi.json", lambda p: p.write_text(json.dumps(meta, indent=2)))
    return d


def load_multi_checkpoint(
    directory: str | Path, *, device: str = "cpu"
) -> tuple[MultiSessionDecoder, FitConfig, dict[str, Any]]:
    """Rebuild a multi-session decoder from :func:`save_multi_checkpoint` (data only).

    Returns the model, its config and the checkpoint's metadata.
    """
    from .checkpoint import _read_weights

    d = Path(directory)
    meta_path = d / "multi.json"
    if not meta_path.is_file():
        raise DataError(
            f"{d}: not a multi-session checkpoint (no multi.json); give the checkpoint "
            "directory that a multi-session fit wrote"
        )
    try:
        meta = json.loads(meta_path.read_text())
        config = FitConfig.from_json((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{d}: unreadable checkpoint metadata ({e}); fit again") from None
    if meta.get("format") != MULTI_FORMAT:
        raise DataError(f"{meta_path}: format {meta.get('format')!r}, expected {MULTI_FORMAT}")
    dev = resolve_device(device)
    config = config.replace(device=str(dev))
    model = build_multi_model(
        config,
        n_rois=meta["n_rois"],
        heads=meta["heads"],
        session_heads=meta["session_heads"],
        device=dev,
    )
    state = _read_weights(d / "weights.pt", dev)
    model_state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    bad = [k for k in missing if not k.startswith("base.backbone.") or meta["whole_backbone_saved"]]
    if bad or unexpected:
        raise DataError(
            f"{d}: weights do not fit the decoder (missing {bad[:3]}, unexpected "
            f"{list(unexpected)[:3]}); fit again"
        )
    model.eval()
    return model, config, meta
