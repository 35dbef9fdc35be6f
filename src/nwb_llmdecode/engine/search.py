"""Hyperparameters chosen on the validation block: a small optuna study around a fit.

``FitConfig(search=SearchOptions(trials=N))`` (``fit --search N``) makes
:func:`~nwb_llmdecode.engine.fit_arrays` run :func:`search_fit`: ``N`` ordinary fits
(trials) whose options named in ``search.params`` are drawn by optuna's TPE sampler
within :data:`~nwb_llmdecode.config.SEARCH_SPACE`, the first trial being the
configuration as given (so the search starts at the defaults and can only match or beat
them on validation). Every trial uses the same seed, splits and normalisation, so trials
differ by their hyperparameters only. The score is the fitted decoder's validation R²
(mean over channels, after the blend with ridge); the test block is never looked at.
With ``search.prune`` optuna's median pruner stops a trial whose network-alone
validation R² after an epoch is below the median of the earlier trials at that epoch.

The fit returned is the best trial's, with its configuration (``search`` kept, so a
result says it was searched) and every trial in ``extra["fit"]["search"]`` (written to
``decoding_run.fit_json``). Only the best trial's model is kept in memory.

optuna is an optional dependency (``pip install "nwb-llmdecode[search]"``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import numpy as np

from ..config import SEARCH_SPACE, FitConfig, SearchOptions
from ..errors import ConfigError, DataError, MissingDependencyError
from ..progress import Progress
from .distributed import is_launched
from .result import FitResult
from .train import fit_arrays  # fit_arrays imports this module only when it is called

__all__ = ["search_fit"]

log = logging.getLogger(__name__)
progress_log = logging.getLogger("nwb_llmdecode.progress")

#: Pruning starts after this many completed trials and this many epochs of a trial.
_PRUNE_STARTUP_TRIALS = 2
_PRUNE_WARMUP_EPOCHS = 4


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise MissingDependencyError(
            'the hyperparameter search needs optuna: pip install "nwb-llmdecode[search]" '
            "(or pip install optuna), or run without --search"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _suggest(trial: Any, name: str) -> Any:
    kind, spec = SEARCH_SPACE[name]
    if kind == "log":
        return trial.suggest_float(name, spec[0], spec[1], log=True)
    if kind == "float":
        return trial.suggest_float(name, spec[0], spec[1])
    return trial.suggest_categorical(name, list(spec))


def _in_space(name: str, value: Any) -> bool:
    kind, spec = SEARCH_SPACE[name]
    if kind == "choice":
        return value in spec
    return isinstance(value, int | float) and spec[0] <= value <= spec[1]


def _mean_r2(res: FitResult, split: str) -> float:
    v = np.asarray(res.metric("r2", split), dtype=float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else -math.inf


def search_fit(
    activity: np.ndarray,
    behavior: np.ndarray,
    *,
    config: FitConfig,
    progress: Progress | None = None,
) -> FitResult:
    """Fit ``config.search.trials`` decoders with hyperparameters drawn by optuna; return
    the one with the best validation R².

    Raises
    ------
    ConfigError
        A multi-process launch (a search of a closed-form baseline is refused by
        :class:`~nwb_llmdecode.config.FitConfig` itself).
    MissingDependencyError
        optuna is not installed.
    DataError
        Every trial failed (the last trial's error).
    """
    opts = config.search  # FitConfig refuses a search of the closed-form baselines
    if is_launched():
        raise ConfigError(
            "the hyperparameter search runs in one process; start fit without accelerate "
            "launch / torchrun, or drop --search"
        )
    optuna = _optuna()
    t0 = time.perf_counter()
    plain = config.replace(search=SearchOptions())  # each trial: an ordinary fit
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=_PRUNE_STARTUP_TRIALS, n_warmup_steps=_PRUNE_WARMUP_EPOCHS
        )
        if opts.prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed), pruner=pruner
    )
    # the first trial is the configuration as given (options outside the space: sampled)
    given = {p: getattr(config, p) for p in opts.params if _in_space(p, getattr(config, p))}
    study.enqueue_trial(given)
    best: dict[str, Any] = {"result": None, "value": -math.inf}
    rows: list[dict[str, Any]] = []
    errors: list[DataError] = []

    def objective(trial: Any) -> float:
        params = {p: _suggest(trial, p) for p in opts.params}
        cfg = plain.replace(**params)
        t_trial = time.perf_counter()
        row: dict[str, Any] = {"trial": trial.number, "params": params}
        rows.append(row)
        described = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
        )

        def on_epoch(epoch: int, val_loss: float, val_r2: float) -> None:
            row["epochs"] = epoch
            if math.isfinite(val_r2):
                trial.report(val_r2, epoch)
                if trial.should_prune():
                    row.update(state="pruned", seconds=round(time.perf_counter() - t_trial, 1))
                    progress_log.info(
                        "search trial %d/%d (%s): pruned after epoch %d (validation R² %.3f)",
                        trial.number + 1,
                        opts.trials,
                        described,
                        epoch,
                        val_r2,
                    )
                    raise optuna.TrialPruned()

        try:
            res = fit_arrays(activity, behavior, config=cfg, progress=progress, on_epoch=on_epoch)
        except DataError as e:  # e.g. training diverged at this learning rate
            row.update(
                state="failed", error=str(e), seconds=round(time.perf_counter() - t_trial, 1)
            )
            errors.append(e)
            progress_log.info(
                "search trial %d/%d (%s): failed: %s", trial.number + 1, opts.trials, described, e
            )
            raise
        value = _mean_r2(res, "validation")
        row.update(
            state="complete",
            value=value,
            epochs=sum(1 for h in res.history if "epoch" in h),
            best_epoch=res.best_epoch,
            seconds=round(time.perf_counter() - t_trial, 1),
        )
        improved = value > best["value"]
        if improved or best["result"] is None:
            best.update(result=res, value=value, trial=trial.number)
        progress_log.info(
            "search trial %d/%d (%s): validation R² %.3f%s",
            trial.number + 1,
            opts.trials,
            described,
            value,
            " (best)" if improved else "",
        )
        return value

    study.optimize(objective, n_trials=opts.trials, timeout=opts.timeout, catch=(DataError,))
    result: FitResult | None = best["result"]
    if result is None:
        if errors:
            raise errors[-1]
        raise DataError(
            f"the hyperparameter search completed no trial in {opts.timeout} s "
            "(search.timeout): raise it or drop it"
        )
    states = [r.get("state", "failed") for r in rows]
    record = {
        "objective": "validation R² (mean over channels) of the fitted decoder",
        "sampler": f"optuna TPE, seed {config.seed}; trial 0 = the configuration as given",
        "pruner": (
            f"median (after {_PRUNE_STARTUP_TRIALS} trials and {_PRUNE_WARMUP_EPOCHS} epochs)"
            if opts.prune
            else "none"
        ),
        "trials_run": len(rows),
        "completed": states.count("complete"),
        "pruned": states.count("pruned"),
        "failed": states.count("failed"),
        "best_trial": int(best["trial"]),
        "best_value": float(best["value"]),
        "chosen": {p: getattr(result.config, p) for p in opts.params},
        "trials": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    fit = dict(result.extra.get("fit", {}))
    fit["search"] = record
    log.info(
        "search: %d trials (%d pruned, %d failed) in %.0f s; trial %d chosen: %s",
        len(rows),
        record["pruned"],
        record["failed"],
        record["seconds"],
        record["best_trial"],
        record["chosen"],
    )
    return dataclasses.replace(
        result,
        config=result.config.replace(search=opts),
        duration_s=time.perf_counter() - t0,
        extra={**result.extra, "fit": fit},
    )
