"""compare: the grid, resumable results, statistics against scipy, figures and the report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nwb_llmdecode.compare import (
    CompareGrid,
    CompareReport,
    holm,
    pairwise_stats,
    run_compare,
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


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> _Compared:
    """One small comparison (2 models x 2 lengths x 2 seeds), run once for this module."""
    tmp = tmp_path_factory.mktemp("compare")
    truth = make_session(tmp / "s.nwb", frames=300, rois=24, planes=1, seed=2, n_drivers=4)
    grid = CompareGrid(models=("ridge", "lstm"), seq_lens=(5, 8), seeds=2)
    base = FitConfig(epochs=2)
    report = run_compare(truth.path, grid=grid, base=base, report_dir=tmp / "r")
    alone = tmp / "alone"
    alone.mkdir()
    assert report.html is not None
    page = Path(shutil.copy(report.html, alone / "report.html"))
    return _Compared(truth.path, grid, base, report, page)


def test_compare_writes_everything_and_resumes(compared):
    grid, base, report = compared.grid, compared.base, compared.report
    d = report.directory
    results = pd.read_csv(d / "results.csv")
    assert len(results) == 2 * 2 * 2
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

    # a killed comparison: drop the last rows, resume, and only those runs are redone
    results.iloc[:5].to_csv(d / "results.csv", index=False)
    with pytest.raises(OutputExistsError, match="--resume"):
        run_compare(compared.source, grid=grid, base=base, report_dir=d)
    again = run_compare(compared.source, grid=grid, base=base, report_dir=d, resume=True)
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
    _browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000")
    import matplotlib.image as mpimg

    rgb = mpimg.imread(shot)[..., :3]
    assert rgb.shape[:2] == (2000, 1280)
    assert rgb.std() > 0.05, "the screenshot is blank"
    # the page's own styles are all greys: coloured pixels come from the decoded figures
    coloured = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.25
    assert coloured.mean() > 0.01, f"figures not drawn ({coloured.mean():.2%} coloured pixels)"
