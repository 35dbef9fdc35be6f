"""compare: the grid, resumable results, statistics against scipy, figures and the report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nwb_llmdecode.compare import CompareGrid, holm, pairwise_stats, run_compare
from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.errors import ConfigError, OutputExistsError
from nwb_llmdecode.synthetic import make_session


def test_holm_matches_definition():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    # sorted: 0.01*4, 0.03*3, 0.04*2, 0.5*1 -> monotone running max, capped at 1
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, 0.5])


def test_pairwise_stats_against_scipy():
    rng = np.random.default_rng(0)
    rows = []
    for model, shift in (("a", 0.0), ("b", 0.3), ("c", 0.1)):
        seeds = range(6) if model != "c" else range(4)  # c ran fewer seeds: unpaired
        for s in seeds:
            rows.append({"model": model, "seq_len": 10, "seed": s,
                         "test_rmse_mean": 1 + shift + 0.1 * rng.standard_normal()})
    df = pd.DataFrame(rows)
    out = pairwise_stats(df).set_index(["model_a", "model_b"])
    a = df[df.model == "a"].set_index("seed").test_rmse_mean
    b = df[df.model == "b"].set_index("seed").test_rmse_mean
    c = df[df.model == "c"].set_index("seed").test_rmse_mean
    w = stats.wilcoxon(a, b)
    assert out.loc[("a", "b"), "test"] == "wilcoxon"
    assert out.loc[("a", "b"), "p"] == pytest.approx(w.pvalue)
    mw = stats.mannwhitneyu(a, c, alternative="two-sided")
    assert out.loc[("a", "c"), "test"] == "mannwhitney"
    assert out.loc[("a", "c"), "p"] == pytest.approx(mw.pvalue)
    assert out.loc[("a", "c"), "effect_size"] == pytest.approx(2 * mw.statistic / 24 - 1)
    np.testing.assert_allclose(out["p_holm"].to_numpy(), holm(out["p"].to_numpy()))
    # a is lower than b in every seed: rank-biserial -1
    assert out.loc[("a", "b"), "effect_size"] == pytest.approx(-1.0)


def test_compare_writes_everything_and_resumes(tmp_path):
    truth = make_session(tmp_path / "s.nwb", frames=300, rois=24, planes=1, seed=2, n_drivers=4)
    grid = CompareGrid(models=("ridge", "lstm"), seq_lens=(5, 8), seeds=2)
    base = FitConfig(epochs=2)
    report = run_compare(truth.path, grid=grid, base=base, report_dir=tmp_path / "r")
    d = tmp_path / "r"
    results = pd.read_csv(d / "results.csv")
    assert len(results) == 2 * 2 * 2
    assert {"model", "seq_len", "seed", "train_time_s", "test_rmse_mean",
            "test_r2_tail_angles[0]"} <= set(results.columns)
    st = pd.read_csv(d / "stats.csv")
    assert set(st["seq_len"]) == {5, 8} and (st["test"] == "wilcoxon").all()
    for name in ("rmse_by_model.png", "best_model_test_traces.png", "salience_map.png"):
        assert (d / name).stat().st_size > 5000
    html = (d / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "Holm" in html
    assert report.html == d / "report.html"

    # a killed comparison: drop the last rows, resume, and only those runs are redone
    results.iloc[:5].to_csv(d / "results.csv", index=False)
    with pytest.raises(OutputExistsError, match="--resume"):
        run_compare(truth.path, grid=grid, base=base, report_dir=d)
    again = run_compare(truth.path, grid=grid, base=base, report_dir=d, resume=True)
    assert len(again.results) == 8
    keys = ["model", "seq_len", "seed"]
    assert not again.results.duplicated(keys).any()
    # the resumed ridge runs are deterministic: same numbers as the first time
    merged = results.merge(again.results, on=keys, suffixes=("", "_2"))
    ridge = merged[merged.model == "ridge"]
    np.testing.assert_allclose(ridge["test_rmse_mean"], ridge["test_rmse_mean_2"])


def test_grid_validation():
    with pytest.raises(ConfigError, match="seeds"):
        CompareGrid(seeds=0)
    runs = CompareGrid(models=("minilm", "ridge"), inits=("pretrained", "random"),
                       seq_lens=(5,), seeds=2).runs(FitConfig())
    assert len(runs) == 2 * 2 + 2  # baselines have no init variants
