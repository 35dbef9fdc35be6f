"""``compare --protocol pooled-vs-single``: does pooling animals help on held-out ones?

For every held-out session and seed: (a) *pooled*: one decoder is fitted on all other
sessions (:func:`~nwb_llmdecode.engine.multi.fit_sessions`) and adapted to the held-out
session (:func:`~nwb_llmdecode.engine.multi.adapt_session`: only its input embedding
trains, on its training block); (b) *single*: a decoder is fitted on the held-out session
alone from scratch (:func:`~nwb_llmdecode.engine.fit_arrays`). Both are scored on the
held-out session's test block (the same time-ordered split). ``results.csv`` has one row
per (session, seed, protocol); ``stats.csv`` the paired Wilcoxon signed-rank test across
(session, seed) pairs, per held-out session and over all, with the rank-biserial effect
size (positive when pooled has the larger test R²) and Holm-corrected p values.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import FitConfig
from .errors import ConfigError

__all__ = ["paired_stats", "run_pooled_vs_single"]

log = logging.getLogger(__name__)


def _score(res: Any) -> dict[str, float]:
    return {
        "test_r2_mean": float(np.nanmean(res.metric("r2", "test"))),
        "test_rmse_mean": float(np.nanmean(res.metric("rmse", "test"))),
    }


def paired_stats(results: Any, metric: str = "test_r2_mean") -> Any:
    """Wilcoxon signed-rank of pooled vs single per held-out session and over all.

    Returns a DataFrame with ``session`` (``"all"`` for every pair), ``n``, ``mean_pooled``,
    ``mean_single``, ``test``, ``statistic``, ``p``, ``effect_size`` (rank-biserial,
    positive when pooled is larger) and ``p_holm``.
    """
    import pandas as pd
    from scipy import stats

    from .compare import holm

    wide = results.pivot_table(index=["session", "seed"], columns="protocol", values=metric)
    rows = []
    groups = [(s, g) for s, g in wide.groupby(level="session")] + [("all", wide)]
    for name, g in groups:
        d = (g["pooled"] - g["single"]).to_numpy()
        if len(d) < 2 or np.allclose(d, 0):
            stat, p, effect = float("nan"), 1.0, 0.0
        else:
            r = stats.wilcoxon(g["pooled"], g["single"], zero_method="wilcox")
            stat, p = float(r.statistic), float(r.pvalue)
            nz = d[d != 0]
            ranks = stats.rankdata(np.abs(nz))
            effect = float((ranks[nz > 0].sum() - ranks[nz < 0].sum()) / ranks.sum())
        rows.append(
            {
                "session": name,
                "n": len(d),
                "mean_pooled": float(g["pooled"].mean()),
                "mean_single": float(g["single"].mean()),
                "test": "wilcoxon",
                "statistic": stat,
                "p": p,
                "effect_size": effect,
            }
        )
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"].to_numpy())
    return out


def run_pooled_vs_single(
    sources: Sequence[str | os.PathLike[str]],
    *,
    base: FitConfig,
    seeds: int = 3,
    report_dir: str | os.PathLike[str] = "compare-report",
    adapt_epochs: int | None = None,
    rois: Any = None,
    behavior: Any = None,
    cache_dir: Any = None,
) -> tuple[Path, Any]:
    """Run the protocol; write ``results.csv``, ``stats.csv`` and ``report.md``.

    Parameters
    ----------
    sources
        At least three sessions (each held out in turn; at least two are pooled).
    base
        Run options of every fit (a transformer backbone); ``seed`` is replaced by
        ``0..seeds-1``.
    seeds
        Seeds per held-out session.
    report_dir
        Output folder.
    adapt_epochs
        Epochs of the adaptation (default: ``base.epochs``).

    Returns
    -------
    (report folder, stats DataFrame)
    """
    import pandas as pd

    from .engine import fit_arrays
    from .engine.multi import adapt_session, fit_sessions
    from .io.atomic import check_writable_dir
    from .multisession import _key, load_arrays

    if len(sources) < 3:
        raise ConfigError(
            f"pooled-vs-single needs at least 3 sessions (got {len(sources)}): each is held "
            "out in turn and at least two are pooled"
        )
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_writable_dir(out, what="report folder")
    used: set[str] = set()
    sessions = [
        load_arrays(s, _key(str(s), used), rois=rois, behavior=behavior, cache_dir=cache_dir)[1]
        for s in sources
    ]
    rows = []
    for i, held in enumerate(sessions):
        others = [s for j, s in enumerate(sessions) if j != i]
        for seed in range(seeds):
            cfg = base.replace(seed=seed)
            pooled = fit_sessions(others, config=cfg)
            acfg = cfg if adapt_epochs is None else cfg.replace(epochs=adapt_epochs)
            ad = adapt_session(
                pooled.model,
                held,
                config=acfg,
                head_units=pooled.head_units,
                frame_rate=pooled.frame_rate,
            )
            rows.append(
                {
                    "session": held.key,
                    "seed": seed,
                    "protocol": "pooled",
                    **_score(ad.sessions[held.key]),
                }
            )
            single = fit_arrays(held.activity, held.behavior, config=cfg)
            rows.append({"session": held.key, "seed": seed, "protocol": "single", **_score(single)})
            log.info(
                "%s seed %d: pooled %.3f, single %.3f",
                held.key,
                seed,
                rows[-2]["test_r2_mean"],
                rows[-1]["test_r2_mean"],
            )
    results = pd.DataFrame(rows)
    st = paired_stats(results)
    tmp = out / ".results.csv.partial"
    results.to_csv(tmp, index=False)
    os.replace(tmp, out / "results.csv")
    tmp = out / ".stats.csv.partial"
    st.to_csv(tmp, index=False)
    os.replace(tmp, out / "stats.csv")
    lines = [
        "# Multi-session pretrained (pooled, adapted) vs single-session from scratch",
        "",
        f"{len(sessions)} sessions, {seeds} seed(s), backbone {base.backbone}; test R² "
        "(mean over channels) on each held-out session's test block.",
        "",
        "Wilcoxon signed-rank across (session, seed) pairs; effect size = rank-biserial "
        "correlation (positive: pooling helps); p_holm = Holm-corrected.",
        "",
        st.to_markdown(index=False) if _has_tabulate() else st.to_string(index=False),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    return out, st


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
