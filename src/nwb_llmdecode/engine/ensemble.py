"""Seed ensembles: ``FitConfig(ensemble=N)`` (``fit --ensemble N``).

:func:`fit_ensemble` fits N ordinary decoders with seeds ``seed, seed + 1, ...`` on the
same split and normalisation (the split and the training-block statistics do not depend
on the seed) and returns one :class:`FitResult` for their average, a
:class:`~nwb_llmdecode.models.ensemble.SeedEnsemble`. Its predictions are the mean of the
members' predictions and its metrics are computed on them; each member's choices
(best epoch, blend weight...) and validation and test R² are kept in
``extra["fit"]["ensemble"]`` together with the spread of the members' test R², so the
result says how much the seeds disagree. Nothing is chosen on the test block: every
member is an ordinary fit, and all of them are kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

import numpy as np
from torch import nn

from ..config import FitConfig
from ..errors import ConfigError
from ..models.ensemble import SeedEnsemble
from ..progress import Progress
from .distributed import is_launched
from .evaluate import compute_metrics
from .result import FitResult, check_arrays

__all__ = ["fit_ensemble"]

log = logging.getLogger(__name__)
progress_log = logging.getLogger("nwb_llmdecode.progress")  # the lines of batch jobs


def _member_progress(progress: Progress | None, i: int, n: int) -> Progress | None:
    if progress is None:
        return None

    def tagged(stage: str, done: int, total: int) -> None:
        progress(f"seed {i + 1}/{n}: {stage}", done, total)

    return tagged


def _mean_r2(result: FitResult, split: str) -> float:
    return float(np.nanmean(result.metric("r2", split)))


def fit_ensemble(
    activity: np.ndarray,
    behavior: np.ndarray,
    *,
    config: FitConfig,
    progress: Progress | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> FitResult:
    """Fit ``config.ensemble`` decoders with consecutive seeds; return their average.

    Parameters are those of :func:`~nwb_llmdecode.engine.fit_arrays` (which calls this
    when ``config.ensemble > 1``); ``on_epoch`` is called for every member's epochs.

    Raises
    ------
    ConfigError
        A multi-process launch (each member would be a distributed fit; run the members
        as separate jobs, or drop ``--ensemble``).
    """
    from .train import fit_arrays  # the members are ordinary fits

    if is_launched():
        raise ConfigError(
            "a seed ensemble is fitted in one process; start fit without accelerate "
            "launch / torchrun, or drop --ensemble"
        )
    t0 = time.perf_counter()
    n = config.ensemble
    members: list[FitResult] = []
    for i in range(n):
        cfg = config.replace(ensemble=1, seed=config.seed + i)
        progress_log.info("seed ensemble: member %d/%d, seed %d", i + 1, n, cfg.seed)
        members.append(
            fit_arrays(
                activity,
                behavior,
                config=cfg,
                progress=_member_progress(progress, i, n),
                on_epoch=on_epoch,
            )
        )
    first = members[0]  # split and training-block statistics do not depend on the seed
    predictions = np.mean(np.stack([m.predictions for m in members]), axis=0).astype(np.float32)
    _, b = check_arrays(activity, behavior)  # the members checked it: not None here
    metrics = compute_metrics(predictions, cast(np.ndarray, b), first.blocks)
    per_member = [
        {
            "seed": m.config.seed,
            "validation_r2": _mean_r2(m, "validation"),
            "test_r2": _mean_r2(m, "test"),
            **m.extra.get("fit", {}),
        }
        for m in members
    ]
    test = np.array([r["test_r2"] for r in per_member])
    record = {
        "seeds": [m.config.seed for m in members],
        "member_test_r2_mean": float(test.mean()),
        "member_test_r2_sd": float(test.std(ddof=1)),
        "members": per_member,
    }
    history = [{**h, "seed": m.config.seed} for m in members for h in m.history]
    result = FitResult(
        predictions=predictions,
        splits=first.splits,
        metrics=metrics,
        config=config,
        device=first.device,
        duration_s=time.perf_counter() - t0,
        history=history,
        # FitConfig refuses closed-form baselines: every member is a torch module
        model=SeedEnsemble([cast(nn.Module, m.model) for m in members]),
        normalization=first.normalization,
        best_epoch=first.best_epoch,
        stopped_early=all(m.stopped_early for m in members),
        n_rois=first.n_rois,
        n_channels=first.n_channels,
        extra={"fit": {"ensemble": record}},
    )
    log.info(
        "ensemble of %d seeds: test R² %.3f (members %.3f ± %.3f)",
        n,
        _mean_r2(result, "test"),
        record["member_test_r2_mean"],
        record["member_test_r2_sd"],
    )
    return result
