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
* ``runs/``: one small ``.npz`` per run (its test-block predictions and, for decoders with
  gradients, its per-ROI salience), written as the run finishes, so the figures of a
  resumed comparison need no refits;
* figures (PNG): test RMSE per model, init and sequence length in the behaviour's unit
  (mean ± SEM over seeds, every seed drawn), predicted vs actual behaviour on the test
  block for the median seed of the best model (the other seeds drawn faintly), and the
  salience of each ROI at its position, one panel per imaging plane;
* ``report.html``: one self-contained page (figures embedded) readable offline, whose
  summary states the smallest p-value the tests can reach with the seeds run.

The tests run across seeds, so the seed count bounds what they can show: with ``n`` paired
seeds a two-sided Wilcoxon signed-rank test cannot go below ``p = 2 / 2**n`` (0.25 for 3
seeds). The default is the paper's 10 seeds; fewer than 6 log a warning.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from .config import FitConfig
from .errors import ConfigError, DataError, OutputExistsError
from .progress import Progress
from .sweep import (
    CsvSink,
    SchedulerSpec,
    fit_run,
    parse_scheduler,
    read_rows,
    remember_session,
    run_tasks,
)

__all__ = [
    "BASELINES",
    "MIN_SEEDS",
    "PAPER_SEEDS",
    "CompareGrid",
    "holm",
    "median_run",
    "pairwise_stats",
    "run_compare",
    "smallest_p",
]

log = logging.getLogger(__name__)

#: Backbone names that are baselines (no init / embedding / train mode variants).
BASELINES = ("ridge", "lstm", "reservoir")
#: Models fitted in closed form: no gradients, so no salience.
_NO_GRADIENTS = ("ridge", "reservoir")
#: Seeds per setting in the paper (and ``compare``'s default).
PAPER_SEEDS = 10
#: Below this many seeds ``compare`` warns: a two-sided Wilcoxon signed-rank test on 5 seeds
#: cannot go below p = 0.0625, so no comparison can reach p < 0.05.
MIN_SEEDS = 6
_KEYS = ("model", "backbone", "init", "embedding", "train_mode", "seq_len", "seed")


@dataclass(frozen=True)
class CompareGrid:
    """The grid of a comparison; baselines ignore ``inits``, ``embeddings``, ``train_modes``."""

    models: tuple[str, ...] = ("minilm", "ridge", "lstm", "reservoir")
    inits: tuple[str, ...] = ("pretrained", "random")
    seq_lens: tuple[int, ...] = (5, 10, 20)
    embeddings: tuple[str, ...] = ("temporal",)
    train_modes: tuple[str, ...] = ("full",)
    seeds: int = PAPER_SEEDS

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


def smallest_p(test: str, n_a: int, n_b: int | None = None) -> float:
    """The smallest two-sided p-value a test in ``stats.csv`` can give with these seed counts.

    Computed with the same scipy call as :func:`pairwise_stats`, on the most extreme data
    possible: every paired difference of one sign (Wilcoxon), or the two samples completely
    separated (Mann-Whitney U). With few seeds no data can reach a small p.

    Parameters
    ----------
    test
        ``"wilcoxon"`` (``n_a`` pairs) or ``"mannwhitney"`` (``n_a`` and ``n_b`` seeds).
    n_a, n_b
        Seeds of each model (``n_b`` defaults to ``n_a``).

    Examples
    --------
    >>> smallest_p("wilcoxon", 3), smallest_p("wilcoxon", 6), smallest_p("wilcoxon", 10)
    (0.25, 0.03125, 0.001953125)
    >>> round(smallest_p("mannwhitney", 3, 3), 3)
    0.1
    """
    from scipy import stats

    n_b = n_a if n_b is None else n_b
    if test == "wilcoxon":
        if n_a < 2:
            return 1.0
        return float(stats.wilcoxon(np.arange(1.0, n_a + 1), zero_method="wilcox").pvalue)
    if test == "mannwhitney":
        if n_a < 1 or n_b < 1:
            return 1.0
        lo, hi = np.arange(float(n_a)), np.arange(float(n_a), float(n_a + n_b))
        return float(stats.mannwhitneyu(lo, hi, alternative="two-sided").pvalue)
    raise ConfigError(f"smallest_p: unknown test {test!r}; use 'wilcoxon' or 'mannwhitney'")


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1).

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    q = np.asarray(p, dtype=np.float64)
    m = len(q)
    order = np.argsort(q)
    adj = np.empty(m)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, (m - i) * q[j])
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
    """Where a comparison's files went, its tables, and which runs its figures show.

    ``shown`` maps a figure (``"traces"``, ``"salience_map"``) to the run it draws: the
    ``model`` and ``seq_len`` with the lowest mean test RMSE over seeds (among decoders with
    gradients for the salience map) and its median seed (``seed``, ``rank`` of ``n`` seeds
    ordered by test RMSE, ``test_rmse_mean``).
    """

    directory: Path
    results: Any
    stats: Any
    figures: dict[str, Path] = field(default_factory=dict)
    html: Path | None = None
    shown: dict[str, dict[str, Any]] = field(default_factory=dict)

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
    scheduler: str | SchedulerSpec | None = None,
    cluster_config: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> CompareReport:
    """Run the grid on one session and write the report (see the module docstring).

    Logs a warning when ``grid.seeds`` is below :data:`MIN_SEEDS`: the tests across seeds
    could not reach p < 0.05 whatever the data.

    ``scheduler`` runs each (model, init, seq_len, seed) as one task: ``"local"``
    (default, serial in this process), ``"processes:N"``, ``"tcp://HOST:PORT"`` or
    ``"slurm"`` with ``cluster_config`` (see :mod:`nwb_llmdecode.sweep`). Workers read the
    source themselves; rows reach ``results.csv`` as runs finish. Runs that fail for good
    (a worker died too often, or the fit raised) are left out of the report and named in
    the :class:`~nwb_llmdecode.errors.DataError` raised after it is written; ``--resume``
    runs them again.

    Examples
    --------
    >>> grid = CompareGrid(models=("minilm", "ridge"), seq_lens=(10,), seeds=10)
    >>> run_compare("session.nwb", grid=grid, report_dir="report")  # doctest: +SKIP
    """
    from .io.read import channel_labels, read_session
    from .io.sources import is_remote, open_nwb

    spec = (
        scheduler
        if isinstance(scheduler, SchedulerSpec)
        else parse_scheduler(scheduler, cluster_config=cluster_config)
    )
    base = base or FitConfig()
    out = Path(report_dir)
    csv_path = out / "results.csv"
    if csv_path.exists() and not (resume or overwrite):
        raise OutputExistsError(
            f"{csv_path}: a comparison is already there; pass --resume to continue it or "
            "--overwrite to start again"
        )
    _warn_few_seeds(grid.seeds)
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume:
        for name in ("results.csv", "stats.csv", "report.html"):
            (out / name).unlink(missing_ok=True)
        for pattern in ("*.npz", "*.npz.part"):
            for old in (out / _RUNS).glob(pattern):
                old.unlink()

    with open_nwb(source, cache_dir=cache_dir) as src:
        ds = read_session(src, rois=rois, behavior=behavior)
    labels = channel_labels(ds)
    # workers open the source themselves, from wherever they were started
    where = os.fspath(source) if is_remote(source) else str(Path(source).expanduser().resolve())

    def task_of(run: dict[str, Any]) -> dict[str, Any]:
        return {
            "source": where,
            "rois": None
            if rois is None
            else json.dumps([rois] if isinstance(rois, str) else list(rois)),
            "behavior": None
            if behavior is None
            else json.dumps([behavior] if isinstance(behavior, str) else list(behavior)),
            "cache_dir": None if cache_dir is None else os.fspath(cache_dir),
            "config": _config_for(base, run).to_json(),
            "run": run,
            "salience": None if run["backbone"] in _NO_GRADIENTS else "grad-x-input",
            "threads": max(1, (os.cpu_count() or 1) // spec.workers)
            if spec.kind == "processes"
            else None,
        }

    done = read_rows(csv_path) if resume else None
    finished = set()
    if done is not None and len(done):
        finished = {tuple(str(r[k]) for k in _KEYS) for _, r in done.iterrows()}
    runs = grid.runs(base)
    todo = [r for r in runs if tuple(str(r[k]) for k in _KEYS) not in finished]
    if todo:
        remember_session(task_of(todo[0]), ds)  # a local sweep reads the session once
    sink = CsvSink(csv_path)

    def on_result(task: dict[str, Any], fitted: dict[str, Any]) -> None:
        # the run's file before its row: every row of results.csv has its predictions
        _save_run(out, task["run"], fitted)
        sink.append(_row(task["run"], fitted, labels))

    def runs_progress(stage: str, done_: int, total: int) -> None:
        if progress:
            progress("compare runs", len(runs) - len(todo) + done_, len(runs))

    failures = run_tasks(
        fit_run,
        [task_of(r) for r in todo],
        scheduler=spec,
        on_result=on_result,
        progress=runs_progress,
    )

    results = read_rows(csv_path)
    if not len(results):
        raise DataError(
            f"{csv_path}: no run finished ({len(failures)} failed, first: "
            f"{failures[0].error if failures else '-'}); nothing to report"
        )
    stats_df = pairwise_stats(results)
    stats_df.to_csv(out / "stats.csv", index=False)

    def load(run: dict[str, Any]) -> dict[str, np.ndarray]:
        rec = _load_run(out, run)
        if rec is None:  # a report directory written before runs/ existed: refit this run
            log.info(
                "no stored predictions for %s, L = %d, seed %d; refitting it for the figures",
                run["model"],
                run["seq_len"],
                run["seed"],
            )
            _save_run(out, run, fit_run(task_of(run)))
            rec = _load_run(out, run)
            assert rec is not None
        return rec

    shown = {"traces": median_run(results)}
    grad = results[~results["backbone"].isin(_NO_GRADIENTS)]
    if len(grad):
        shown["salience_map"] = median_run(grad)
    # every seed of the shown setting drawn faintly, from its file (the median one refit if
    # need be)
    seeds = shown["traces"]["seeds"]
    records = {int(r["seed"]): _load_run(out, _run_of(r)) for _, r in seeds.iterrows()}
    records[shown["traces"]["seed"]] = load(shown["traces"]["run"])
    salience = None
    if "salience_map" in shown:
        salience = load(shown["salience_map"]["run"])["salience"]
    figures = _figures(out, results, ds, labels, shown, records, salience)
    report = CompareReport(
        directory=out,
        results=results,
        stats=stats_df,
        figures=figures,
        shown={k: {kk: vv for kk, vv in v.items() if kk != "seeds"} for k, v in shown.items()},
    )
    report.html = _html(out, source, grid, results, stats_df, figures, shown, _units(ds))
    if failures:
        names = "; ".join(
            f"{f.task['run']['model']} L={f.task['run']['seq_len']} seed "
            f"{f.task['run']['seed']} ({f.error[:80]})"
            for f in failures[:3]
        )
        raise DataError(
            f"{len(failures)} of {len(runs)} runs failed and are not in {report.html}: "
            f"{names}; run compare again with --resume to retry them"
        )
    return report


def _row(run: dict[str, Any], fitted: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """The ``results.csv`` row of a finished run: its settings and test metrics."""
    row = dict(run, train_time_s=fitted["train_time_s"], device=fitted["device"])
    test = [m for m in fitted["metrics"] if m["split"] == "test"]
    for m in test:
        lab = labels[int(m["channel"])]
        for k in ("rmse", "r2", "pearson"):
            row[f"test_{k}_{lab}"] = float(m[k])
    for k in ("rmse", "r2", "pearson"):
        row[f"test_{k}_mean"] = float(np.mean([m[k] for m in test]))
    return row


def _warn_few_seeds(seeds: int) -> None:
    if seeds >= MIN_SEEDS:
        return
    if seeds < 2:
        why = "no test across seeds is possible with 1 seed"
    else:
        why = (
            f"a two-sided Wilcoxon signed-rank test on {seeds} seeds cannot give p below "
            f"{smallest_p('wilcoxon', seeds):.3g}, so no difference can be significant"
        )
    log.warning(
        "only %d seed(s) per setting: %s; use --seeds %d or more (the paper used %d)",
        seeds,
        why,
        MIN_SEEDS,
        PAPER_SEEDS,
    )


def median_run(results: Any) -> dict[str, Any]:
    """The setting with the lowest mean test RMSE over seeds, and its median seed.

    The figures show this run rather than the single best seed, which would be a
    cherry-pick among seeds chosen on the test block itself.

    Parameters
    ----------
    results
        Rows of ``results.csv`` (a pandas DataFrame).

    Returns
    -------
    dict
        ``model``, ``seq_len``, ``seed``, ``test_rmse_mean`` of the median seed, its
        ``rank`` among the ``n`` seeds of that setting ordered by test RMSE (for an even
        ``n`` the lower median, rank ``n / 2``), ``run`` (the grid settings of that run)
        and ``seeds`` (that setting's rows, ordered by test RMSE).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"model": ["a"] * 3 + ["b"] * 3, "seq_len": 5,
    ...                    "seed": [0, 1, 2] * 2, "test_rmse_mean": [3, 1, 2, 5, 6, 7]})
    >>> m = median_run(df)
    >>> m["model"], m["seed"], m["rank"], m["n"]
    ('a', 2, 2, 3)
    """
    means = results.groupby(["model", "seq_len"])["test_rmse_mean"].mean()
    model, seq_len = means.idxmin()
    group = results[(results["model"] == model) & (results["seq_len"] == seq_len)]
    group = group.sort_values(["test_rmse_mean", "seed"], kind="stable")
    k = (len(group) - 1) // 2
    top = group.iloc[k]
    return {
        "model": str(model),
        "seq_len": int(seq_len),
        "seed": int(top["seed"]),
        "test_rmse_mean": float(top["test_rmse_mean"]),
        "rank": k + 1,
        "n": len(group),
        "run": _run_of(top),
        "seeds": group,
    }


def _run_of(row: Any) -> dict[str, Any]:
    """Grid settings of a ``results.csv`` row (what :meth:`CompareGrid.runs` yields)."""
    out = {}
    for k in _KEYS:
        v = row[k] if k in row else "-"
        out[k] = int(v) if k in ("seq_len", "seed") else str(v)
    return out


# ----------------------------------------------------------------------------------------
# one file per run: test-block predictions and salience, so figures survive a resume
# ----------------------------------------------------------------------------------------

_RUNS = "runs"


def _run_path(out: Path, run: dict[str, Any]) -> Path:
    model = re.sub(r"[^A-Za-z0-9._-]+", "-", str(run["model"]))
    return out / _RUNS / f"{model}_L{int(run['seq_len'])}_seed{int(run['seed'])}.npz"


def _run_key(run: dict[str, Any]) -> np.ndarray:
    return np.array([str(run[k]) for k in _KEYS])


def _save_run(out: Path, run: dict[str, Any], fitted: dict[str, Any]) -> None:
    """Write a run's test-block predictions (and salience) atomically to ``runs/``."""
    sal = fitted.get("salience")
    path = _run_path(out, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            key=_run_key(run),
            test_block=np.asarray(fitted["test_block"], dtype=np.int64),
            predictions=np.asarray(fitted["test_predictions"], dtype=np.float32),
            salience=np.zeros(0, np.float32) if sal is None else np.asarray(sal, np.float32),
        )
    os.replace(tmp, path)


def _load_run(out: Path, run: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """A run's stored arrays, or None when missing or written for another run."""
    path = _run_path(out, run)
    if not path.is_file():
        return None
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            rec = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        log.warning("%s is unreadable (%s); ignoring it (refitted if a figure needs it)", path, e)
        return None
    if not {"key", "test_block", "predictions", "salience"} <= set(rec):
        return None
    if not np.array_equal(rec["key"], _run_key(run)):
        return None
    return rec


# ----------------------------------------------------------------------------------------
# figures and the HTML page
# ----------------------------------------------------------------------------------------

#: Bar colours by init; baselines ("-") are grey.
_INIT_COLOURS = {"pretrained": "#1f77b4", "random": "#ff7f0e", "-": "#8c8c8c"}
_INIT_NAMES = {"pretrained": "pretrained", "random": "random init", "-": "baseline"}


def _units(ds: Any) -> list[str]:
    return [str(u) for u in ds["unit"].values]


def _rmse_label(units: Sequence[str]) -> str:
    """Axis label of the channel-mean test RMSE, in the behaviour's unit when it has one."""
    distinct = list(dict.fromkeys(units))
    n = len(units)
    if len(distinct) == 1:
        over = f",\nmean over {n} channels" if n > 1 else ""
        return f"test RMSE ({distinct[0]}){over}"
    # an average over channels of different units has no unit: say so
    return f"test RMSE, mean over {n} channels\nof mixed units ({', '.join(distinct)})"


def _seed_counts(counts: Any) -> str:
    lo, hi = int(counts.min()), int(counts.max())
    return f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"


def _rmse_figure(results: Any, units: Sequence[str]) -> Any:
    """Grouped bars: one panel per sequence length, a group per model, a colour per init."""
    import pandas as pd
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    df = results.assign(_init=results["init"].astype(str))
    learnt = df[df["_init"] != "-"]
    several = len(learnt[["embedding", "train_mode"]].astype(str).drop_duplicates()) > 1

    def group_of(r: Any) -> str:
        name = str(r["backbone"]).replace("/", "/\n")
        if several and str(r["init"]) != "-":
            name += f"\n{r['embedding']}, {r['train_mode']}"
        return name

    df["_group"] = [group_of(r) for _, r in df.iterrows()]
    groups = list(pd.unique(df["_group"]))
    known = list(_INIT_COLOURS)
    inits = sorted(pd.unique(df["_init"]), key=lambda i: (known.index(i) if i in known else 1.5, i))
    spare = iter(["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"] * 9)
    colours = {i: _INIT_COLOURS.get(i) or next(spare) for i in inits}
    pos: dict[tuple[str, str], float] = {}
    ticks, xpos = [], 0.0
    for g in groups:
        first = xpos
        for i in inits:
            if ((df["_group"] == g) & (df["_init"] == i)).any():
                pos[(g, i)] = xpos
                xpos += 1.0
        ticks.append((first + xpos - 1.0) / 2)
        xpos += 0.6
    lens = sorted(int(v) for v in df["seq_len"].unique())
    counts = df.groupby(["_group", "_init", "seq_len"]).size()

    panel_w = max(2.4, 0.45 * xpos + 0.5)
    # side by side while the figure stays page-wide (~14 in), else one row per length
    ncol = max(1, min(len(lens), int(14 // panel_w)))
    nrow = int(np.ceil(len(lens) / ncol))
    fig = Figure(figsize=(panel_w * ncol + 2.8, 3.7 * nrow + 0.8), dpi=130, layout="constrained")
    grid = fig.subplots(nrow, ncol, sharey=True, squeeze=False)
    for ax in grid.ravel()[len(lens) :]:
        ax.set_visible(False)
    axes = grid.ravel()[: len(lens)]
    rng = np.random.default_rng(0)  # jitter of the seed dots only
    for ax, L in zip(axes, lens, strict=True):
        for (g, i), x0 in pos.items():
            v = df[(df["_group"] == g) & (df["_init"] == i) & (df["seq_len"] == L)]
            vals = v["test_rmse_mean"].to_numpy(dtype=float)
            if not len(vals):
                continue
            sem = float(np.std(vals, ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0
            ax.bar(
                x0,
                vals.mean(),
                0.8,
                color=colours[i],
                yerr=sem,
                capsize=4,
                error_kw={"lw": 1.2},
                zorder=2,
            )
            jit = rng.uniform(-0.22, 0.22, len(vals)) if len(vals) > 1 else np.zeros(1)
            ax.scatter(x0 + jit, vals, s=9, color="black", alpha=0.75, lw=0, zorder=3)
        ax.set_xticks(ticks)
        ax.set_xticklabels(groups, fontsize=10)
        ax.set_title(f"L = {L} frames", fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", color="0.9", zorder=0)
        ax.set_axisbelow(True)
    for ax in grid[:, 0]:
        ax.set_ylabel(_rmse_label(units), fontsize=10)
    axes[0].set_ylim(bottom=0)
    handles = [Patch(color=colours[i], label=_INIT_NAMES.get(i, i)) for i in inits]
    fig.legend(handles=handles, title="init", loc="outside right upper", fontsize=9)
    note = f"bars: mean ± SEM over {_seed_counts(counts)} seeds; dots: single seeds"
    if int(counts.min()) == 1:
        note += " (no error bar where n = 1)"
    fig.suptitle(f"Test RMSE per model and sequence length L\n{note}", fontsize=10)
    return fig


def _traces_figure(
    ds: Any,
    labels: Sequence[str],
    shown: dict[str, Any],
    records: dict[int, dict[str, np.ndarray] | None],
) -> Any:
    """Actual vs predicted on the test block: the median seed bold, the other seeds faint."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    med = records[shown["seed"]]
    assert med is not None
    start, stop = (int(v) for v in med["test_block"])
    t = ds["time"].values[start:stop]
    units = _units(ds)
    others = [
        r
        for s, r in records.items()
        if s != shown["seed"]
        and r is not None
        and r["predictions"].shape == med["predictions"].shape
    ]
    n_ch = len(labels)
    fig = Figure(figsize=(9, 1.8 * n_ch + 1.3), dpi=130, layout="constrained")
    axes = fig.subplots(n_ch, 1, sharex=True, squeeze=False)[:, 0]
    for c, ax in enumerate(axes):
        for r in others:
            ax.plot(t, r["predictions"][:, c], color="tab:orange", lw=0.7, alpha=0.3)
        ax.plot(t, ds["behavior"].values[start:stop, c], color="0.15", lw=1.3)
        ax.plot(t, med["predictions"][:, c], color="tab:orange", lw=1.5)
        ax.set_ylabel(f"{labels[c]}\n({units[c]})", fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1].set_xlabel("time (s)")
    handles = [
        Line2D([], [], color="0.15", lw=1.3, label="actual"),
        Line2D([], [], color="tab:orange", lw=1.5, label=f"predicted, median seed {shown['seed']}"),
    ]
    if others:
        handles.append(
            Line2D(
                [],
                [],
                color="tab:orange",
                lw=1.2,
                alpha=0.45,
                label=f"predicted, the other {len(others)} seed(s)",
            )
        )
    fig.legend(
        handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False
    )
    rmse = shown["seeds"]["test_rmse_mean"]
    u = list(dict.fromkeys(units))
    unit = f" {u[0]}" if len(u) == 1 else ""
    if np.isclose(rmse.min(), rmse.max()):
        spread = f"all {shown['n']} seeds give the same RMSE"
    else:
        spread = f"seeds range {rmse.min():.3g} to {rmse.max():.3g}{unit}"
    fig.suptitle(
        f"Test block, {shown['model']}, L = {shown['seq_len']} (lowest mean test RMSE): "
        f"median seed {shown['seed']}, rank {shown['rank']} of {shown['n']} by test RMSE\n"
        f"test RMSE (mean over channels) {shown['test_rmse_mean']:.3g}{unit}; {spread}",
        fontsize=10,
    )
    return fig


def _plane_name(name: str) -> str:
    """Short plane name: ``PlaneSegmentation_plane0`` -> ``plane0``."""
    short = re.sub(r"^PlaneSegmentation_?", "", name) or name
    return short if short.lower().startswith("plane") else f"plane {short}"


def _salience_figure(ds: Any, shown: dict[str, Any], sal: np.ndarray, top_k: int = 20) -> Any:
    """Salience of each ROI at its position: one panel per imaging plane, one colour scale."""
    import pandas as pd
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from .salience import salience_order

    xs = np.asarray(ds["x"].values, dtype=float).copy()
    ys = np.asarray(ds["y"].values, dtype=float).copy()
    planes = np.asarray(ds["plane"].values).astype(str)
    names = list(pd.unique(planes))
    unknown = ~(np.isfinite(xs) & np.isfinite(ys))
    for p in names:  # no positions in a plane: lay its ROIs out by index
        idx = np.flatnonzero((planes == p) & unknown)
        side = int(np.ceil(np.sqrt(max(len(idx), 1))))
        xs[idx], ys[idx] = np.arange(len(idx)) % side, np.arange(len(idx)) // side
    order = salience_order(sal)
    top = order[:top_k]
    rank = {int(r): k + 1 for k, r in enumerate(order[:10])}
    ncol = min(len(names), 3)
    nrow = int(np.ceil(len(names) / ncol))
    fig = Figure(figsize=(4.6 * ncol + 1.2, 4.3 * nrow + 0.9), dpi=130, layout="constrained")
    axes = fig.subplots(nrow, ncol, sharex=True, sharey=True, squeeze=False).ravel()
    norm = Normalize(vmin=0.0, vmax=max(float(np.nanmax(sal)), 1e-12))
    for ax, p in zip(axes, names, strict=False):
        here = planes == p
        ax.scatter(
            xs[here],
            ys[here],
            c=sal[here],
            norm=norm,
            cmap="magma",
            s=12 + 110 * sal[here] / norm.vmax,
            edgecolors="0.6",
            linewidths=0.3,
        )
        mine = [int(r) for r in top if here[r]]
        ax.scatter(xs[mine], ys[mine], s=150, facecolors="none", edgecolors="tab:cyan", lw=1.3)
        for r in mine:
            if r in rank:
                ax.annotate(
                    str(rank[r]),
                    (xs[r], ys[r]),
                    fontsize=8,
                    color="#005f73",
                    fontweight="bold",
                    xytext=(5, 4),
                    textcoords="offset points",
                )
        where = " (positions unknown: laid out by index)" if unknown[here].any() else ""
        ax.set_title(
            f"{_plane_name(p)}: {int(here.sum())} ROIs, {len(mine)} of the top {len(top)}{where}",
            fontsize=9,
        )
        ax.set_aspect("equal")
        ax.set_xlabel("x (pixels)")
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("y (pixels)")
    axes[0].invert_yaxis()  # shared: image orientation in every panel
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.colorbar(
        ScalarMappable(norm=norm, cmap="magma"),
        ax=list(axes[: len(names)]),
        label="salience (mean |grad × input|)",
        shrink=0.9,
    )
    fig.suptitle(
        f"Salience per ROI on the test block: {shown['model']}, L = {shown['seq_len']}, "
        f"median seed {shown['seed']} of {shown['n']}\n"
        f"rings: the {len(top)} most salient ROIs; numbers: rank 1-10",
        fontsize=10,
    )
    return fig


def _figures(
    out: Path,
    results: Any,
    ds: Any,
    labels: list[str],
    shown: dict[str, dict[str, Any]],
    records: dict[int, dict[str, np.ndarray] | None],
    salience: np.ndarray | None,
) -> dict[str, Path]:
    figs: dict[str, Path] = {}
    todo = [
        ("rmse_bars", "rmse_by_model.png", lambda: _rmse_figure(results, _units(ds))),
        (
            "traces",
            "best_model_test_traces.png",
            lambda: _traces_figure(ds, labels, shown["traces"], records),
        ),
    ]
    if salience is not None and salience.size:
        todo.append(
            (
                "salience_map",
                "salience_map.png",
                lambda: _salience_figure(ds, shown["salience_map"], salience),
            )
        )
    for key, name, make in todo:
        fig = make()
        figs[key] = out / name
        # constrained layout places everything; "tight" makes sure nothing is cut at the edges
        fig.savefig(figs[key], bbox_inches="tight", pad_inches=0.08)
    return figs


def _p_floor(stats_df: Any) -> tuple[str, bool]:
    """Summary sentence on the smallest p the tests can reach; True if none can be < 0.05."""
    if not len(stats_df):
        return "No pairwise test was run (fewer than two models at every setting).", False
    floors = np.array(
        [smallest_p(r["test"], int(r["n_a"]), int(r["n_b"])) for _, r in stats_df.iterrows()]
    )
    m = len(stats_df)
    i = int(np.argmin(floors))
    row = stats_df.iloc[i]
    if row["test"] == "wilcoxon":
        what = f"{int(row['n_a'])} paired seeds, a two-sided Wilcoxon signed-rank test"
    else:
        what = (
            f"{int(row['n_a'])} and {int(row['n_b'])} unpaired seeds, a two-sided "
            "Mann-Whitney U test"
        )
    floor, holm_floor = float(floors[i]), min(1.0, m * float(floors[i]))
    text = f"With {what} cannot give a p-value below {floor:.3g}, whatever the data"
    if m == 1:
        text += " (one comparison: Holm correction leaves it as it is)."
    else:
        text += (
            f"; after Holm correction over the {m} comparisons the smallest reachable "
            f"adjusted p is {holm_floor:.3g}."
        )
    if not np.allclose(floors, floor):
        text = "The comparisons here ran different numbers of seeds. " + text
    if holm_floor < 0.05:
        return text, False
    need = next((n for n in range(2, 60) if m * smallest_p("wilcoxon", n) < 0.05), None)
    text += (
        " No comparison in this report can be significant at p < 0.05"
        + (" even before correction" if floor >= 0.05 else " after correction")
        + ", so the table below cannot show a difference between models."
    )
    if need is not None:
        text += (
            f" With {'one comparison' if m == 1 else f'{m} comparisons'}, at least {need} "
            f"paired seeds are needed for {'a' if m == 1 else 'an adjusted'} p < 0.05 to be "
            f"possible (the paper used {PAPER_SEEDS}; run with --seeds)."
        )
    return text, True


def _cell(v: Any, float_fmt: str, wrap: bool = True) -> str:
    """HTML text of one table cell."""
    if isinstance(v, float | np.floating):
        return html.escape(float_fmt.format(v))
    s = html.escape(str(v))
    # long names (model/init/embedding/mode, test_rmse_channel[0]) may wrap at / and _
    return s.replace("/", "/<wbr>").replace("_", "_<wbr>") if wrap else s


def _table_html(df: Any, float_fmt: str = "{:.4g}", css: str = "", wrap_first: bool = True) -> str:
    from pandas.api.types import is_numeric_dtype

    num = [is_numeric_dtype(df[c]) for c in df.columns]
    td = ['<td class="num">' if n else "<td>" for n in num]
    head = "".join(
        f"{'<th class=num>' if n else '<th>'}{_cell(str(c), float_fmt)}</th>"
        for c, n in zip(df.columns, num, strict=True)
    )
    body = [
        "<tr>"
        + "".join(
            f"{t}{_cell(v, float_fmt, wrap_first or j > 0)}</td>"
            for j, (t, v) in enumerate(zip(td, row, strict=True))
        )
        + "</tr>"
        for row in df.itertuples(index=False)
    ]
    # tables wrap their long names to fit the page; one still too wide (one column per
    # metric and channel) scrolls inside its own box, its first column staying in view
    cls = f' class="{css}"' if css else ""
    return (
        f'<div class="table-wrap"><table{cls}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _html(
    out: Path,
    source: Any,
    grid: CompareGrid,
    results: Any,
    stats_df: Any,
    figures: dict[str, Path],
    shown: dict[str, dict[str, Any]],
    units: Sequence[str],
) -> Path:
    from ._version import __version__

    distinct = list(dict.fromkeys(units))
    unit = f" ({distinct[0]})" if len(distinct) == 1 else ""
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
        .rename(
            columns={
                "n": "seeds",
                "test_rmse": f"test RMSE{unit}",
                "test_rmse_sem": "± SEM",
                "test_r2": "test R²",
                "train_time_s": "train time (s)",
            }
        )
    )
    tr = shown["traces"]
    seeds_run = sorted(int(n) for n in results.groupby(["model", "seq_len"]).size().unique())
    n_seeds = str(seeds_run[0]) if len(seeds_run) == 1 else f"{seeds_run[0]}–{seeds_run[-1]}"
    floor_text, hopeless = _p_floor(stats_df)
    note_cls = "note warn" if hopeless else "note"
    captions = {
        "rmse_bars": "Test RMSE per model, init and sequence length, mean over channels"
        f"{unit}; bars: mean ± SEM over seeds, dots: single seeds.",
        "traces": f"Predicted vs actual behaviour on the test block: {tr['model']}, "
        f"L = {tr['seq_len']}, its median seed ({tr['seed']}, rank {tr['rank']} of "
        f"{tr['n']} by test RMSE), the other seeds faint.",
    }
    if "salience_map" in shown:
        sm = shown["salience_map"]
        captions["salience_map"] = (
            f"Salience of each ROI at its position, one panel per plane: {sm['model']}, "
            f"L = {sm['seq_len']}, median seed {sm['seed']} (the decoder with gradients "
            "with the lowest mean test RMSE)."
        )
    imgs = []
    for key, path in figures.items():
        b64 = base64.b64encode(path.read_bytes()).decode()
        cap = html.escape(captions.get(key, key))
        imgs.append(
            f'<figure><img alt="{cap}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{cap}</figcaption></figure>"
        )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>nwb-llmdecode comparison</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
  padding: 0 1em; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 0.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.45em; text-align: left;
  vertical-align: top; }}
th {{ background: #f2f2f2; }} th.num, td.num {{ text-align: right; }}
td.num {{ white-space: nowrap; font-variant-numeric: tabular-nums; }}
.table-wrap {{ overflow-x: auto; max-width: 100%; margin-bottom: 1.5em; }}
table.runs {{ font-size: 0.78em; }}
table.runs th:first-child, table.runs td:first-child {{ position: sticky; left: 0;
  background: #fff; white-space: nowrap; }}
table.runs th:first-child {{ background: #f2f2f2; }}
.note {{ border-left: 4px solid #888; background: #f6f6f6; padding: 0.5em 0.8em; }}
.warn {{ border-left-color: #c0392b; background: #fdf0ee; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; height: auto; }}
figcaption {{ color: #555; font-size: 0.9em; }}
code {{ background: #f6f6f6; padding: 0 0.2em; }}
@media print {{ .table-wrap {{ overflow: visible; }} table {{ font-size: 0.7em; }} }}
</style></head><body>
<h1>Decoder comparison</h1>
<p>Session <code>{html.escape(str(source))}</code>; {len(results)} runs;
models {html.escape(", ".join(grid.models))}; sequence lengths
{html.escape(", ".join(map(str, grid.seq_lens)))}; {n_seeds} seed(s) per setting.
Lowest mean test RMSE over seeds: <b>{html.escape(tr["model"])}</b>, L = {tr["seq_len"]}
({tr["n"]} seeds); the figures show its median seed ({tr["seed"]}), not its best one.
Made with nwb-llmdecode {html.escape(__version__)}.</p>
<h2>Summary (test block)</h2>
<p class="{note_cls}" id="p-floor">{html.escape(floor_text)}</p>
{_table_html(summary)}
<h2>Figures</h2>
{"".join(imgs)}
<h2>Statistics across seeds</h2>
<p>Test RMSE (mean over channels) compared between models at each sequence length:
Wilcoxon signed-rank when both models ran the same seeds (paired), Mann-Whitney U
otherwise, both two-sided; effect size = rank-biserial correlation (positive: model A has
the larger RMSE); p-values Holm-corrected over the whole table.</p>
{_table_html(stats_df, float_fmt="{:.3g}")}
<h2>All runs</h2>
<p>One row per run, as in <code>results.csv</code>; {results.shape[1]} columns (every test
metric per channel): the table scrolls sideways inside its box, the model column stays in
view.</p>
{_table_html(results, css="runs", wrap_first=False)}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
