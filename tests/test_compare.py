"""compare: the grid, resumable results, statistics against scipy, figures and the report."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nwb_llmdecode import compare as compare_mod
from nwb_llmdecode.compare import (
    PAPER_SEEDS,
    CompareGrid,
    CompareReport,
    holm,
    median_run,
    pairwise_stats,
    run_compare,
    smallest_p,
)
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
            rows.append(
                {
                    "model": model,
                    "seq_len": 10,
                    "seed": s,
                    "test_rmse_mean": 1 + shift + 0.1 * rng.standard_normal(),
                }
            )
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


@dataclass
class _Compared:
    source: Path
    grid: CompareGrid
    base: FitConfig
    report: CompareReport
    page: Path  # a copy of report.html alone in a folder: it must need nothing beside it
    logged: list[logging.LogRecord]  # what run_compare logged


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> _Compared:
    """One small comparison (2 models x 2 lengths x 3 seeds, 2 planes), run once."""
    tmp = tmp_path_factory.mktemp("compare")
    truth = make_session(tmp / "s.nwb", frames=300, rois=24, planes=2, seed=2, n_drivers=4)
    grid = CompareGrid(models=("ridge", "lstm"), seq_lens=(5, 8), seeds=3)
    base = FitConfig(epochs=1)
    keep = _Keep()
    logger = logging.getLogger("nwb_llmdecode.compare")
    logger.addHandler(keep)
    try:
        report = run_compare(truth.path, grid=grid, base=base, report_dir=tmp / "r")
    finally:
        logger.removeHandler(keep)
    alone = tmp / "alone"
    alone.mkdir()
    assert report.html is not None
    page = Path(shutil.copy(report.html, alone / "report.html"))
    return _Compared(truth.path, grid, base, report, page, keep.records)


def test_compare_writes_everything_and_resumes(compared, caplog, tmp_path):
    grid, base, report = compared.grid, compared.base, compared.report
    d = report.directory
    results = pd.read_csv(d / "results.csv")
    assert len(results) == 2 * 2 * 3
    assert {
        "model",
        "seq_len",
        "seed",
        "train_time_s",
        "test_rmse_mean",
        "test_r2_tail_angles[0]",
    } <= set(results.columns)
    st = pd.read_csv(d / "stats.csv")
    assert set(st["seq_len"]) == {5, 8} and (st["test"] == "wilcoxon").all()
    for name in ("rmse_by_model.png", "best_model_test_traces.png", "salience_map.png"):
        assert (d / name).stat().st_size > 5000
    html = (d / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "Holm" in html
    assert report.html == d / "report.html"

    # every run left its test-block predictions beside the table, as plain arrays
    assert len(list((d / "runs").glob("*.npz"))) == len(results)
    for _, row in results.iterrows():
        rec = compare_mod._load_run(d, compare_mod._run_of(row))
        assert rec is not None and rec["predictions"].shape[1] == 3
        assert rec["salience"].size == (24 if row["backbone"] == "lstm" else 0)

    # a killed comparison: drop the last rows, resume, and only those runs are redone;
    # the figures come from the stored runs, nothing is refitted for them
    results.iloc[:5].to_csv(d / "results.csv", index=False)
    with pytest.raises(OutputExistsError, match="--resume"):
        run_compare(compared.source, grid=grid, base=base, report_dir=d)
    caplog.set_level(logging.INFO, logger="nwb_llmdecode.compare")
    again = run_compare(compared.source, grid=grid, base=base, report_dir=d, resume=True)
    assert not [r for r in caplog.records if "refitting" in r.getMessage()]
    assert len(again.results) == 12
    keys = ["model", "seq_len", "seed"]
    assert not again.results.duplicated(keys).any()
    # the resumed ridge runs are deterministic: same numbers as the first time
    merged = results.merge(again.results, on=keys, suffixes=("", "_2"))
    ridge = merged[merged.model == "ridge"]
    np.testing.assert_allclose(ridge["test_rmse_mean"], ridge["test_rmse_mean_2"])

    # a report directory from before runs/ existed: only the runs shown are refitted
    old = Path(shutil.copytree(d, tmp_path / "old"))
    shutil.rmtree(old / "runs")
    caplog.clear()
    third = run_compare(compared.source, grid=grid, base=base, report_dir=old, resume=True)
    refits = [r for r in caplog.records if "refitting" in r.getMessage()]
    assert 1 <= len(refits) <= 2 and set(third.figures) == set(report.figures)


def test_figures_say_what_they_show(compared):
    """Units, n and error measure on the bar chart; one salience panel per imaging plane."""
    from nwb_llmdecode.io.read import read_session
    from nwb_llmdecode.io.sources import open_nwb

    report = compared.report
    with open_nwb(compared.source) as src:
        ds = read_session(src)
    units = [str(u) for u in ds["unit"].values]
    assert units == ["radians"] * 3

    bars = compare_mod._rmse_figure(report.results, units)
    ylabel = bars.axes[0].get_ylabel()
    assert "test RMSE (radians)" in ylabel and "mean over 3 channels" in ylabel
    title = bars.get_suptitle()
    assert "mean ± SEM over n = 3 seeds" in title
    panels = [ax for ax in bars.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["L = 5 frames", "L = 8 frames"]
    # x: one tick per model, readable and level; colours: one legend entry per init
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["ridge", "lstm"]
    assert all(t.get_rotation() == 0 and t.get_fontsize() >= 9 for t in panels[0].get_xticklabels())
    assert [t.get_text() for t in bars.legends[0].get_texts()] == ["baseline"]
    # channels of different units are averaged honestly, not given one unit
    mixed = compare_mod._rmse_label(["radians", "mm"])
    assert "mixed units (radians, mm)" in mixed and "(radians)" not in mixed

    shown = report.shown["salience_map"]
    rec = compare_mod._load_run(report.directory, shown["run"])
    assert rec is not None
    fig = compare_mod._salience_figure(ds, shown, rec["salience"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    planes = list(dict.fromkeys(str(p) for p in ds["plane"].values))
    assert len(planes) == 2 and len(titles) == len(planes)
    for title, plane in zip(titles, planes, strict=True):
        n = int((ds["plane"].values == plane).sum())
        assert title.startswith(f"{compare_mod._plane_name(plane)}: {n} ROIs")
    # each plane's panel draws that plane's ROIs only
    drawn = [len(ax.collections[0].get_offsets()) for ax in fig.axes if ax.get_title()]
    assert drawn == [int((ds["plane"].values == p).sum()) for p in planes]

    page = report.html.read_text()
    assert "test RMSE (radians)" in page


def test_median_seed_smallest_p_and_the_seed_warning(compared, tmp_path):
    """Figures show the median seed (and say so); the report states the p floor; few seeds warn."""
    # the median, not the best, of the setting with the lowest mean
    df = pd.DataFrame(
        {
            "model": ["a"] * 3 + ["b"] * 3,
            "seq_len": 5,
            "seed": [0, 1, 2, 0, 1, 2],
            "test_rmse_mean": [0.3, 0.1, 0.2, 0.5, 0.6, 0.7],
        }
    )
    m = median_run(df)
    assert (m["model"], m["seed"], m["rank"], m["n"]) == ("a", 2, 2, 3)
    report, results = compared.report, compared.report.results
    for key, shown in report.shown.items():
        rows = results[(results.model == shown["model"]) & (results.seq_len == shown["seq_len"])]
        assert len(rows) == 3, key
        assert shown["test_rmse_mean"] == pytest.approx(rows["test_rmse_mean"].median())
    page = report.html.read_text()
    tr = report.shown["traces"]
    assert f"median seed ({tr['seed']}, rank 2 of 3 by test RMSE)" in page

    # the smallest p the tests can give is the one scipy gives on the most extreme data
    assert smallest_p("wilcoxon", 3) == pytest.approx(0.25)
    assert smallest_p("wilcoxon", 6) == pytest.approx(stats.wilcoxon(np.arange(1, 7)).pvalue)
    st = report.stats
    assert (st["p"] >= 0.25 - 1e-12).all()  # no row can beat the floor
    m = len(st)
    assert (
        "With 3 paired seeds, a two-sided Wilcoxon signed-rank test cannot give a p-value "
        f"below 0.25, whatever the data; after Holm correction over the {m} comparisons the "
        f"smallest reachable adjusted p is {min(1.0, m * 0.25):.3g}."
    ) in page
    assert "No comparison in this report can be significant at p &lt; 0.05" in page

    # fewer than 6 seeds: a warning from the library, which the command line shows
    warned = [r for r in compared.logged if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "only 3 seed(s)" in warned[0].getMessage()
    assert "--seeds 6" in warned[0].getMessage()
    proc = subprocess.run(
        [sys.executable, "-m", "nwb_llmdecode.cli", "compare", str(compared.source),
         "--models", "ridge", "--seq-len", "5", "--seeds", "2", "--report", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "only 2 seed(s) per setting" in proc.stderr and "below 0.5" in proc.stderr


def test_grid_validation():
    with pytest.raises(ConfigError, match="seeds"):
        CompareGrid(seeds=0)
    assert CompareGrid().seeds == PAPER_SEEDS == 10
    runs = CompareGrid(
        models=("minilm", "ridge"), inits=("pretrained", "random"), seq_lens=(5,), seeds=2
    ).runs(FitConfig())
    assert len(runs) == 2 * 2 + 2  # baselines have no init variants


# ----------------------------------------------------------------------------------------
# the report in a real browser
# ----------------------------------------------------------------------------------------

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome", "headless_shell")


def _chromium() -> str:
    """The headless browser; CI installs Debian's ``chromium`` with ``make setup``."""
    found = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, _BROWSERS)), None)
    if not found:
        pytest.fail(
            "headless Chromium is needed to check report.html and none was found on PATH "
            f"(looked for {', '.join(_BROWSERS)}): run `make setup` (as root it installs the "
            "Debian `chromium` package) or set CHROMIUM=/path/to/chromium"
        )
    return found


def _browse(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", f"--user-data-dir={tmp / 'profile'}", *args, page.as_uri(),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"chromium did not finish on {page} within {e.timeout} s: {' '.join(cmd)}")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


class _Dom(HTMLParser):
    """Elements and the URLs a page would load (attributes and CSS ``url(...)``)."""

    _URL_ATTRS = frozenset({"src", "href", "srcset", "data", "poster", "action", "background"})

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.imgs: list[str] = []
        self.urls: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self._style = False
        self.css = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = {k: v or "" for k, v in attrs}
        self.urls += [v for k, v in a.items() if k in self._URL_ATTRS]
        self.css += a.get("style", "")
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        self._style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        self._style = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._style:
            self.css += data


def _page_requests(netlog: Path) -> list[str]:
    """URLs the page itself asked the network for (Chromium's own background calls aside)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    out = []
    for e in log["events"]:
        p = e.get("params", {})
        # requests made for a file:// document are keyed by it; the browser's own are not
        keys = f"{p.get('network_isolation_key')} {p.get('site_for_cookies')}"
        if e["type"] == start and "file://" in keys:
            out.append(p["url"])
    return out


def test_report_renders_offline_in_headless_chromium(compared, tmp_path):
    """report.html, copied alone into an empty folder, renders fully in Chromium, offline."""
    page = compared.page
    results = compared.report.results
    netlog = tmp_path / "netlog.json"
    dom_html = _browse(page, tmp_path, f"--log-net-log={netlog}", "--dump-dom").stdout

    dom = _Dom()
    dom.feed(dom_html)
    # the tables as the browser parsed them: summary, statistics, every run
    assert len(dom.tables) == 3, f"expected 3 tables in the rendered page, got {len(dom.tables)}"
    summary, st, runs = dom.tables
    assert summary[0][:2] == ["model", "seq_len"] and len(summary) == 1 + 4
    assert {"model_a", "model_b", "test", "p", "effect_size", "p_holm"} <= set(st[0])
    assert len(st) == 1 + len(compared.report.stats)
    assert runs[0] == list(results.columns) and len(runs) == 1 + len(results)
    assert all(len(row) == len(runs[0]) for row in runs)
    # figures: embedded, nothing fetched
    assert len(dom.imgs) == 3
    assert all(src.startswith("data:image/png;base64,") for src in dom.imgs), [
        s[:40] for s in dom.imgs
    ]
    assert not {"script", "link", "iframe", "object", "embed"} & set(dom.tags)
    remote = [u for u in dom.urls if not u.startswith(("data:", "#"))]
    assert not remote, f"report.html refers to files or URLs outside itself: {remote}"
    assert "url(" not in dom.css and "@import" not in dom.css
    assert _page_requests(netlog) == [], "report.html made network requests"

    shot = tmp_path / "shot.png"
    _browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,4000")
    import matplotlib.image as mpimg

    rgb = mpimg.imread(shot)[..., :3]
    assert rgb.shape[:2] == (4000, 1280)
    assert rgb.std() > 0.05, "the screenshot is blank"
    # the page's own styles are greys (and one thin red rule): coloured pixels come from the
    # decoded figures (orange traces, the salience colour bar, cyan rings)
    coloured = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.25
    assert coloured.mean() > 0.002, f"figures not drawn ({coloured.mean():.2%} coloured pixels)"


_MEASURE = """<!DOCTYPE html><html><body>
<iframe id="f" src="{src}" style="width: 1280px; height: 900px; border: 0"></iframe>
<script>
document.getElementById("f").onload = function () {{
  const boxes = this.contentDocument.querySelectorAll(".table-wrap");
  const out = document.createElement("pre");
  out.id = "widths";
  out.textContent = Array.from(boxes, (b) => b.scrollWidth + "/" + b.clientWidth).join(" ");
  document.body.appendChild(out);
}};
</script></body></html>
"""


def test_report_tables_fit_the_page_in_chromium(compared, tmp_path):
    """With the paper's long model names the summary and statistics tables fit a 1280 px
    window (no column such as p_holm cut off); only the all-runs table scrolls in its box."""
    report = compared.report
    long = {"ridge": "minilm/pretrained/temporal/full", "lstm": "smollm2/random/positional/lora"}
    st = pd.concat([report.stats] * 6, ignore_index=True)
    st[["model_a", "model_b"]] = st[["model_a", "model_b"]].replace(long)
    res = report.results.replace({"model": long})
    page = compare_mod._html(
        tmp_path, compared.source, compared.grid, res, st, {}, report.shown, ["radians"] * 3
    )
    harness = tmp_path / "measure.html"
    harness.write_text(_MEASURE.format(src=page.as_uri()))
    dom = _browse(
        harness, tmp_path, "--allow-file-access-from-files", "--virtual-time-budget=10000",
        "--dump-dom",
    ).stdout  # fmt: skip
    found = re.search(r'<pre id="widths">([^<]*)</pre>', dom)
    assert found, f"the measuring page did not run:\n{dom[-2000:]}"
    widths = [tuple(map(int, w.split("/"))) for w in found.group(1).split()]
    assert len(widths) == 3, widths
    (sum_w, sum_box), (st_w, st_box), (_, runs_box) = widths
    assert sum_w <= sum_box, f"summary table {sum_w} px wide in a {sum_box} px box"
    assert st_w <= st_box, f"statistics table {st_w} px wide in a {st_box} px box (p_holm cut)"
    assert runs_box == st_box  # the wide all-runs table scrolls inside a page-wide box
