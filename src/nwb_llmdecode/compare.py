"""``compare``: the paper's experiments as one command.

Runs a grid of decoders (backbones and baselines x init x embedding x train mode x sequence
length x seeds) on one session with the same preprocessing and splits, then writes

* ``results.csv``: one row per run (model x setting x seed) with every test metric per
  channel and the training time; rows are appended as runs finish, so ``--resume``
  continues a killed comparison where it stopped;
* ``stats.csv``: pairwise tests across seeds between models at each setting (sequence
  length x embedding): Wilcoxon signed-rank when both models ran the same seeds
  (paired), Mann-Whitney U otherwise, with rank-biserial effect sizes and Holm-corrected
  p-values over the whole table;
* figures (PNG): test RMSE per model and sequence length (mean ± SEM over seeds),
  predicted vs actual behaviour of the best model on the test block, and the salience of
  the most salient ROIs at their positions;
* ``report.html``: one self-contained page (figures embedded) readable offline.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from .config import FitConfig
from .errors import ConfigError, OutputExistsError

__all__ = ["BASELINES", "CompareGrid", "holm", "pairwise_stats", "run_compare"]

log = logging.getLogger(__name__)

#: Backbone names that are baselines (no init / embedding / train mode variants).
BASELINES = ("ridge", "lstm", "reservoir")
_KEYS = ("model", "backbone", "init", "embedding", "train_mode", "seq_len", "seed")


@dataclass(frozen=True)
class CompareGrid:
    """The grid of a comparison; baselines ignore ``inits``, ``embeddings``, ``train_modes``."""

    models: tuple[str, ...] = ("minilm", "ridge", "lstm", "reservoir")
    inits: tuple[str, ...] = ("pretrained", "random")
    seq_lens: tuple[int, ...] = (5, 10, 20)
    embeddings: tuple[str, ...] = ("temporal",)
    train_modes: tuple[str, ...] = ("full",)
    seeds: int = 3

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("compare: --models is empty; name at least one backbone or baseline")
        if self.seeds < 1:
            raise ConfigError(f"compare: --seeds must be >= 1 (got {self.seeds})")
        if any(int(s) < 2 for s in self.seq_lens):
            raise ConfigError(f"compare: sequence lengths must be >= 2 (got {self.seq_lens})")

    def runs(self, base: FitConfig) -> list[dict[str, Any]]:
        """Every run of the grid as the settings that vary."""
        out = []
        for backbone in self.models:
            baseline = backbone in BASELINES
            for init in ("-",) if baseline else self.inits:
                for emb in ("-",) if baseline else self.embeddings:
                    for mode in ("-",) if baseline else self.train_modes:
                        for L in self.seq_lens:
                            for seed in range(base.seed, base.seed + self.seeds):
                                model = backbone if baseline else f"{backbone}/{init}/{emb}/{mode}"
                                out.append(
                                    {
                                        "model": model,
                                        "backbone": backbone,
                                        "init": init,
                                        "embedding": emb,
                                        "train_mode": mode,
                                        "seq_len": int(L),
                                        "seed": int(seed),
                                    }
                                )
        return out


def _config_for(base: FitConfig, run: dict[str, Any]) -> FitConfig:
    kw: dict[str, Any] = {
        "backbone": run["backbone"],
        "seq_len": run["seq_len"],
        "seed": run["seed"],
        "salience": "none",
    }
    for k in ("init", "embedding", "train_mode"):
        if run[k] != "-":
            kw[k] = run[k]
    return base.replace(**kw)


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1).

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    order = np.argsort(p)
    adj = np.empty(m)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, (m - i) * p[j])
        adj[j] = min(1.0, running)
    return adj


def pairwise_stats(results: Any, metric: str = "test_rmse_mean") -> Any:
    """Pairwise tests between models at each (seq_len, embedding) setting.

    Parameters
    ----------
    results
        The ``results.csv`` table as a pandas DataFrame.
    metric
        Column compared (lower RMSE is better).

    Returns
    -------
    pandas.DataFrame
        Rows: ``seq_len``, ``model_a``, ``model_b``, ``n_a``, ``n_b``, ``mean_a``,
        ``mean_b``, ``test`` (wilcoxon/mannwhitney), ``statistic``, ``p``,
        ``effect_size`` (rank-biserial correlation; positive when ``model_a`` has the
        larger values), ``p_holm``.
    """
    import pandas as pd
    from scipy import stats

    rows = []
    for L, group in results.groupby("seq_len", sort=True):
        by_model = {m: g.set_index("seed")[metric] for m, g in group.groupby("model", sort=True)}
        for a, b in combinations(sorted(by_model), 2):
            xa, xb = by_model[a], by_model[b]
            common = xa.index.intersection(xb.index)
            paired = len(common) >= 2 and len(common) == len(xa) == len(xb)
            if paired:
                d = (xa.loc[common] - xb.loc[common]).to_numpy()
                if np.allclose(d, 0):
                    stat, p, effect = 0.0, 1.0, 0.0
                else:
                    res = stats.wilcoxon(xa.loc[common], xb.loc[common], zero_method="wilcox")
                    stat, p = float(res.statistic), float(res.pvalue)
                    nz = d[d != 0]
                    ranks = stats.rankdata(np.abs(nz))
                    effect = float((ranks[nz > 0].sum() - ranks[nz < 0].sum()) / ranks.sum())
                test = "wilcoxon"
            else:
                res = stats.mannwhitneyu(xa, xb, alternative="two-sided")
                stat, p = float(res.statistic), float(res.pvalue)
                effect = float(2 * stat / (len(xa) * len(xb)) - 1)
                test = "mannwhitney"
            rows.append(
                {
                    "seq_len": int(L),
                    "model_a": a,
                    "model_b": b,
                    "n_a": len(xa),
                    "n_b": len(xb),
                    "mean_a": float(xa.mean()),
                    "mean_b": float(xb.mean()),
                    "test": test,
                    "statistic": stat,
                    "p": p,
                    "effect_size": effect,
                }
            )
    out = pd.DataFrame(
        rows,
        columns=[
            "seq_len",
            "model_a",
            "model_b",
            "n_a",
            "n_b",
            "mean_a",
            "mean_b",
            "test",
            "statistic",
            "p",
            "effect_size",
        ],
    )
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else []
    return out


@dataclass
class CompareReport:
    """Where a comparison's files went and its tables."""

    directory: Path
    results: Any
    stats: Any
    figures: dict[str, Path] = field(default_factory=dict)
    html: Path | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "report": str(self.html) if self.html else None,
                "directory": str(self.directory),
                "results_csv": str(self.directory / "results.csv"),
                "stats_csv": str(self.directory / "stats.csv"),
                "figures": {k: str(v) for k, v in self.figures.items()},
                "n_runs": len(self.results),
            }
        )


def run_compare(
    source: str | os.PathLike[str],
    *,
    grid: CompareGrid,
    base: FitConfig | None = None,
    report_dir: str | os.PathLike[str] = "compare-report",
    rois: str | Sequence[str] | None = None,
    behavior: str | Sequence[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> CompareReport:
    """Run the grid on one session and write the report (see the module docstring).

    Examples
    --------
    >>> grid = CompareGrid(models=("minilm", "ridge"), seq_lens=(10,), seeds=3)
    >>> run_compare("session.nwb", grid=grid, report_dir="report")  # doctest: +SKIP
    """
    import pandas as pd

    from .engine import fit_arrays
    from .io.read import channel_labels, read_session
    from .io.sources import open_nwb

    base = base or FitConfig()
    out = Path(report_dir)
    csv_path = out / "results.csv"
    if csv_path.exists() and not (resume or overwrite):
        raise OutputExistsError(
            f"{csv_path}: a comparison is already there; pass --resume to continue it or "
            "--overwrite to start again"
        )
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume:
        for name in ("results.csv", "stats.csv", "report.html"):
            (out / name).unlink(missing_ok=True)

    with open_nwb(source, cache_dir=cache_dir) as src:
        ds = read_session(src, rois=rois, behavior=behavior)
    x = np.asarray(ds["activity"].values, dtype=np.float32)
    y = np.asarray(ds["behavior"].values, dtype=np.float32)
    labels = channel_labels(ds)

    done = pd.read_csv(csv_path) if (resume and csv_path.exists()) else None
    finished = set()
    if done is not None and len(done):
        finished = {tuple(str(r[k]) for k in _KEYS) for _, r in done.iterrows()}
    runs = grid.runs(base)
    best: tuple[float, dict[str, Any], Any] | None = None
    best_grad: tuple[float, dict[str, Any], Any] | None = None  # best run with gradients
    for i, run in enumerate(runs):
        key = tuple(str(run[k]) for k in _KEYS)
        if key in finished:
            continue
        if progress:
            progress("compare runs", i, len(runs))
        cfg = _config_for(base, run)
        t0 = time.perf_counter()
        result = fit_arrays(x, y, config=cfg)
        row = dict(run, train_time_s=round(time.perf_counter() - t0, 3), device=str(result.device))
        test = [m for m in result.metrics if m["split"] == "test"]
        for m in test:
            lab = labels[int(m["channel"])]
            for k in ("rmse", "r2", "pearson"):
                row[f"test_{k}_{lab}"] = float(m[k])
        for k in ("rmse", "r2", "pearson"):
            row[f"test_{k}_mean"] = float(np.mean([m[k] for m in test]))
        pd.DataFrame([row]).to_csv(csv_path, mode="a", header=not csv_path.exists(), index=False)
        if best is None or row["test_rmse_mean"] < best[0]:
            best = (row["test_rmse_mean"], run, result)
        if run["backbone"] not in ("ridge", "reservoir") and (
            best_grad is None or row["test_rmse_mean"] < best_grad[0]
        ):
            best_grad = (row["test_rmse_mean"], run, result)
    if progress:
        progress("compare runs", len(runs), len(runs))

    results = pd.read_csv(csv_path)
    stats_df = pairwise_stats(results)
    stats_df.to_csv(out / "stats.csv", index=False)

    def refit(rows: Any) -> tuple[float, dict[str, Any], Any] | None:
        if not len(rows):
            return None
        top = rows.sort_values("test_rmse_mean").iloc[0]
        run = {k: (int(top[k]) if k in ("seq_len", "seed") else str(top[k])) for k in _KEYS}
        return (float(top["test_rmse_mean"]), run, fit_arrays(x, y, config=_config_for(base, run)))

    # runs done before a resume are not in memory: refit the best ones for the figures
    if best is None or best[0] > results["test_rmse_mean"].min():
        best = refit(results)
    grad_rows = results[~results["backbone"].isin(["ridge", "reservoir"])]
    if best_grad is None or (len(grad_rows) and best_grad[0] > grad_rows["test_rmse_mean"].min()):
        best_grad = (
            best
            if best is not None and best[1]["backbone"] not in ("ridge", "reservoir")
            else refit(grad_rows)
        )
    assert best is not None
    figures = _figures(out, results, ds, best, best_grad, labels)
    report = CompareReport(directory=out, results=results, stats=stats_df, figures=figures)
    report.html = _html(out, source, grid, results, stats_df, figures, best[1])
    return report


# ----------------------------------------------------------------------------------------
# figures and the HTML page
# ----------------------------------------------------------------------------------------


def _figures(
    out: Path,
    results: Any,
    ds: Any,
    best: tuple[float, dict[str, Any], Any],
    best_grad: tuple[float, dict[str, Any], Any] | None,
    labels: list[str],
) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .salience import salience_order

    figs: dict[str, Path] = {}
    # 1. grouped bars: test RMSE per model and seq_len, mean ± SEM over seeds
    agg = results.groupby(["model", "seq_len"])["test_rmse_mean"].agg(["mean", "sem", "count"])
    models = sorted(results["model"].unique())
    lens = sorted(results["seq_len"].unique())
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(models) * len(lens) / 2 + 3), 4.2), dpi=120)
    width = 0.8 / len(lens)
    cmap = plt.get_cmap("viridis")
    for j, L in enumerate(lens):
        means = [agg.loc[(m, L), "mean"] if (m, L) in agg.index else np.nan for m in models]
        sems = [agg.loc[(m, L), "sem"] if (m, L) in agg.index else np.nan for m in models]
        ax.bar(
            np.arange(len(models)) + (j - (len(lens) - 1) / 2) * width,
            means,
            width,
            yerr=np.nan_to_num(sems),
            capsize=3,
            label=f"L = {L}",
            color=cmap(j / max(1, len(lens) - 1) * 0.85),
        )
    ax.set_xticks(np.arange(len(models)))
    ax.set_xticklabels(models, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test RMSE (mean over channels)")
    # the figure is narrow for small grids: keep the title short enough not to be clipped
    ax.set_title("Test RMSE per model and sequence length", fontsize=10)
    ax.legend(title="sequence length", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    figs["rmse_bars"] = out / "rmse_by_model.png"
    fig.savefig(figs["rmse_bars"])
    plt.close(fig)

    # 2. predicted vs actual on the test block for the best run
    _, run, result = best
    start, stop = next((s, e) for name, s, e in result.splits if name == "test")
    t = ds["time"].values[start:stop]
    n_ch = len(labels)
    fig, axes = plt.subplots(
        n_ch, 1, figsize=(9, 1.9 * n_ch + 0.6), dpi=120, sharex=True, squeeze=False
    )
    for c in range(n_ch):
        a = axes[c, 0]
        a.plot(t, ds["behavior"].values[start:stop, c], color="0.25", lw=1.2, label="actual")
        a.plot(t, result.predictions[start:stop, c], color="tab:orange", lw=1.2, label="predicted")
        a.set_ylabel(f"{labels[c]}\n({ds['unit'].values[c]})", fontsize=8)
        a.spines[["top", "right"]].set_visible(False)
    axes[0, 0].legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(
        f"Best run on the test block: {run['model']}, L = {run['seq_len']}, seed {run['seed']}",
        fontsize=10,
    )
    fig.tight_layout()
    figs["traces"] = out / "best_model_test_traces.png"
    fig.savefig(figs["traces"])
    plt.close(fig)

    # 3. salience map of the top ROIs of the best run that has gradients
    sal = None
    if best_grad is not None:
        _, run, result = best_grad
        sal = _salience_of_best(result, ds, run)
    if sal is not None:
        xs, ys = ds["x"].values, ds["y"].values
        fig, ax = plt.subplots(figsize=(6.5, 5.2), dpi=120)
        known = np.isfinite(xs) & np.isfinite(ys)
        if not known.any():  # no positions: lay ROIs out by index
            side = int(np.ceil(np.sqrt(len(xs))))
            xs, ys = np.arange(len(xs)) % side, np.arange(len(xs)) // side
            ax.set_title("Salience per ROI (positions unknown: ROIs laid out by index)", fontsize=9)
        else:
            ax.set_title(f"Salience of the ROIs ({run['model']}); top 20 outlined", fontsize=9)
        top = salience_order(sal)[:20]
        sc = ax.scatter(
            xs, ys, c=sal, s=12 + 120 * sal / max(sal.max(), 1e-12), cmap="magma", edgecolors="none"
        )
        ax.scatter(xs[top], ys[top], s=140, facecolors="none", edgecolors="tab:cyan", lw=1.2)
        for r in top[:10]:
            ax.annotate(
                str(int(r)),
                (xs[r], ys[r]),
                fontsize=7,
                color="tab:cyan",
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.invert_yaxis()
        ax.set_aspect("equal")
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)")
        fig.colorbar(sc, ax=ax, label="salience (mean |attribution|)")
        fig.tight_layout()
        figs["salience_map"] = out / "salience_map.png"
        fig.savefig(figs["salience_map"])
        plt.close(fig)
    return figs


def _salience_of_best(result: Any, ds: Any, run: dict[str, Any]) -> np.ndarray | None:
    """Per-ROI grad x input salience of a run on its test block (None without gradients)."""
    from .salience import compute_salience

    model = result.model
    if not hasattr(model, "parameters"):
        return None
    start, stop = next((s, e) for name, s, e in result.splits if name == "test")
    x = result.normalization.activity(np.asarray(ds["activity"].values, dtype=np.float32))
    device = next(model.parameters()).device
    sal = compute_salience(
        model,
        x,
        block=(start, stop),
        seq_len=int(run["seq_len"]),
        method="grad-x-input",
        device=str(device),
    )
    return np.asarray(sal["salience"].values)


def _table_html(df: Any, float_fmt: str = "{:.4g}") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for _, r in df.iterrows():
        cells = []
        for v in r.to_numpy():
            s = float_fmt.format(v) if isinstance(v, float | np.floating) else str(v)
            cells.append(f"<td>{html.escape(s)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    # wide tables (one column per metric and channel) scroll inside their box, not the page
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _html(
    out: Path,
    source: Any,
    grid: CompareGrid,
    results: Any,
    stats_df: Any,
    figures: dict[str, Path],
    best: dict[str, Any],
) -> Path:
    from . import __version__

    summary = (
        results.groupby(["model", "seq_len"])
        .agg(
            n=("seed", "count"),
            test_rmse=("test_rmse_mean", "mean"),
            test_rmse_sem=("test_rmse_mean", "sem"),
            test_r2=("test_r2_mean", "mean"),
            train_time_s=("train_time_s", "mean"),
        )
        .reset_index()
    )
    imgs = []
    captions = {
        "rmse_bars": "Test RMSE per model and sequence length (mean ± SEM over seeds).",
        "traces": "Predicted vs actual behaviour of the best run on the test block.",
        "salience_map": "Salience of each ROI at its position (best run).",
    }
    for key, path in figures.items():
        b64 = base64.b64encode(path.read_bytes()).decode()
        imgs.append(
            f'<figure><img alt="{html.escape(captions.get(key, key))}" '
            f'src="data:image/png;base64,{b64}"><figcaption>'
            f"{html.escape(captions.get(key, key))}</figcaption></figure>"
        )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>nwb-llmdecode comparison</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }}
th {{ background: #f2f2f2; }} td:first-child, th:first-child {{ text-align: left; }}
.table-wrap {{ overflow-x: auto; max-width: 100%; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; height: auto; }}
figcaption {{ color: #555; font-size: 0.9em; }}
code {{ background: #f6f6f6; padding: 0 0.2em; }}
</style></head><body>
<h1>Decoder comparison</h1>
<p>Session <code>{html.escape(str(source))}</code>; {len(results)} runs;
models {html.escape(", ".join(grid.models))}; sequence lengths
{html.escape(", ".join(map(str, grid.seq_lens)))}; {grid.seeds} seed(s) each.
Best run: <b>{html.escape(str(best["model"]))}</b>, L = {best["seq_len"]}, seed {best["seed"]}.
Made with nwb-llmdecode {html.escape(__version__)}.</p>
<h2>Summary (test block)</h2>
{_table_html(summary)}
<h2>Figures</h2>
{"".join(imgs)}
<h2>Statistics across seeds</h2>
<p>Wilcoxon signed-rank when both models ran the same seeds (paired), Mann-Whitney U
otherwise; effect size = rank-biserial correlation (positive: model A has the larger RMSE);
p-values Holm-corrected over the whole table.</p>
{_table_html(stats_df)}
<h2>All runs</h2>
{_table_html(results)}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
