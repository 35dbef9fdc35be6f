"""Screenshots of the main views, compared with stored reference images.

The canvas of a real napari viewer (under Xvfb) is captured at a fixed size for a
10,000-ROI results file and for the real zebrafish example (``../shared/data``; skipped
when absent), and compared with ``tests/data/screenshot_*.png`` after averaging over
8 x 8 pixel blocks: tiny rendering differences (antialiasing, fonts) pass, a view that
changes materially (outlines, colours, labels, layout) fails.

To refresh the references after an intended change of the views::

    NAPARI_LLMDECODE_UPDATE_SCREENSHOTS=1 xvfb-run -a .venv/bin/python -m pytest \\
        tests/test_napari_screenshots.py

and look at the new PNGs before committing them. With ``NAPARI_LLMDECODE_SCREENSHOT_DIR``
set, the full-size screenshots are written there too (for a person to look at; never
into the repository).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari", reason="napari is in the [napari] extra")
pytest.importorskip("pytestqt", reason="pytest-qt is in the [dev] extra")

from napari_llmdecode._widgets._explorer import _camera
from test_napari_widgets import PLUGIN, _has_display, _layer

pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(
        not _has_display(),
        reason="no display with OpenGL for napari's canvas; run under xvfb-run (make test does)",
    ),
]

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = ROOT / "tests" / "data"
ZEBRAFISH = ROOT.parent / "shared" / "data" / "zebrafish_legare2025_fish6"
#: Canvas size of the screenshots (pixels); references are stored at half this size.
CANVAS = (440, 440)
#: Comparison over 8 x 8 pixel blocks: the mean absolute difference (0-255) ...
MAX_MEAN_DIFF = 1.5
#: ... and the fraction of blocks whose mean differs by more than BLOCK_CHANGE in some
#: colour channel. Repeated runs here differ by < 0.1 on average and in no block by 5;
#: dropping the salient-ROI outlines of the zebrafish view changes 0.8 % of its blocks.
BLOCK_CHANGE = 25.0
MAX_CHANGED_BLOCKS = 0.0025


def _reduce(img: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k pixel blocks (RGB, float)."""
    img = np.asarray(img, dtype=np.float64)[..., :3]
    h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    return img[:h, :w].reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3))


def image_difference(shot: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(mean absolute difference, fraction of changed blocks) of a screenshot (full size)
    against a reference stored at half size, over 8 x 8 blocks of the screenshot."""
    a = _reduce(_reduce(shot, 2), 4)
    b = _reduce(reference, 4)
    if a.shape != b.shape:
        return float("inf"), 1.0
    diff = np.abs(a - b)
    return float(diff.mean()), float((diff.max(axis=-1) > BLOCK_CHANGE).mean())


def compare_with_reference(shot: np.ndarray, name: str, tmp_path: Path) -> None:
    """Assert that ``shot`` matches ``tests/data/<name>.png`` (or write it, when asked)."""
    from imageio.v3 import imread, imwrite

    ref_path = REFERENCES / f"{name}.png"
    half = np.round(_reduce(shot, 2)).astype(np.uint8)
    look = os.environ.get("NAPARI_LLMDECODE_SCREENSHOT_DIR")
    if look:
        Path(look).mkdir(parents=True, exist_ok=True)
        imwrite(Path(look) / f"{name}.png", shot)
    if os.environ.get("NAPARI_LLMDECODE_UPDATE_SCREENSHOTS"):
        REFERENCES.mkdir(parents=True, exist_ok=True)
        imwrite(ref_path, half)
    assert ref_path.exists(), (
        f"{ref_path} is missing; make it with NAPARI_LLMDECODE_UPDATE_SCREENSHOTS=1"
    )
    mean, changed = image_difference(shot, imread(ref_path))
    if mean > MAX_MEAN_DIFF or changed > MAX_CHANGED_BLOCKS:
        imwrite(tmp_path / f"{name}_actual.png", half)
        pytest.fail(
            f"{name}: the view differs from {ref_path.name} (mean difference {mean:.2f}, "
            f"{changed:.1%} of blocks changed); this screenshot: {tmp_path / name}_actual.png"
        )


def _view(viewer, qtbot, path: Path, *, ndisplay: int = 2):
    """Open ``path``, select its most salient ROI (its plane) and fit the view to a canvas
    of :data:`CANVAS` pixels; return the canvas screenshot."""
    from napari_llmdecode._widgets._explorer import SalienceExplorer

    viewer.window._qt_window.resize(1100, 800)
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFixedSize(CANVAS[1], CANVAS[0])
    viewer.open(str(path), plugin=PLUGIN)
    explorer = SalienceExplorer(viewer)  # not docked: the canvas keeps its size
    explorer.select_roi(explorer.table_rois()[0])
    viewer.dims.ndisplay = ndisplay
    viewer.reset_view()
    if ndisplay == 3:  # tilted, so that the planes' depth shows
        _camera(viewer).angles = (0.0, -35.0, 70.0)
    qtbot.wait(50)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.shape[:2] == CANVAS, shot.shape
    return shot, explorer


@pytest.fixture(scope="module")
def big_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10,000-ROI results file (10 planes, few frames: the view, not the traces)."""
    from napari_llmdecode._sample_data import planted_results
    from nwb_llmdecode.io.sources import open_nwb
    from nwb_llmdecode.io.write import write_derived
    from nwb_llmdecode.synthetic import make_session

    d = tmp_path_factory.mktemp("screenshots_10k")
    truth = make_session(
        d / "rois10k.nwb",
        frames=40,
        rois=10_000,
        planes=10,
        mask="pixel",
        fluorescence=False,
        n_drivers=20,
        seed=3,
    )
    with open_nwb(truth.path) as src:
        return write_derived(src, planted_results(truth), d / "rois10k_desc-llmdecode.nwb")


@pytest.fixture(scope="module")
def zebrafish_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real zebrafish example's session (as ``examples/zebrafish_real_data.py`` builds
    it), decoded by a one-epoch LSTM with grad x input salience."""
    if not (ZEBRAFISH / "timeseries_regions_fish6.npy").is_file():
        pytest.skip(f"the shared zebrafish data folder is not at {ZEBRAFISH}")
    from nwb_llmdecode.config import FitConfig
    from nwb_llmdecode.pipeline import fit

    spec = importlib.util.spec_from_file_location(
        "zebrafish_real_data", ROOT / "examples" / "zebrafish_real_data.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    d = tmp_path_factory.mktemp("screenshots_zebrafish")
    session = d / "legare2025_fish6_simulated.nwb"
    with np.errstate(invalid="ignore"):  # a constant region: the example's own z-scoring
        example.build_session(ZEBRAFISH, session, frame_rate=1.0)
    # the reference picture was made with these training and salience options (lr and
    # strides of the defaults of the time): the screenshot checks the viewer, not the decoder
    config = FitConfig(
        backbone="lstm",
        epochs=1,
        salience="grad-x-input",
        seed=0,
        lr=1e-3,
        train_stride=1,
        lr_warmup=0.0,
        salience_stride=1,
    )
    return fit(session, config=config, checkpoint=False).output


def test_screenshot_10k_rois(make_napari_viewer, qtbot, big_results: Path, tmp_path) -> None:
    viewer = make_napari_viewer(show=True)
    shot, _ = _view(viewer, qtbot, big_results)
    # the salient ROIs of the shown plane are outlined (cyan), the colourbar is on
    assert _layer(viewer, "salience").colorbar.visible
    rgb = shot[..., :3].astype(int)
    cyan = (rgb[..., 2] > 200) & (rgb[..., 1] > 180) & (rgb[..., 0] < 90)
    assert cyan.sum() > 10
    compare_with_reference(shot, "screenshot_10k_rois", tmp_path)


def test_screenshot_10k_rois_3d(make_napari_viewer, qtbot, big_results: Path, tmp_path) -> None:
    viewer = make_napari_viewer(show=True)
    shot, _ = _view(viewer, qtbot, big_results, ndisplay=3)
    compare_with_reference(shot, "screenshot_10k_rois_3d", tmp_path)


def test_screenshot_zebrafish(make_napari_viewer, qtbot, zebrafish_results: Path, tmp_path) -> None:
    viewer = make_napari_viewer(show=True)
    shot, explorer = _view(viewer, qtbot, zebrafish_results)
    assert explorer.data.n_rois == 70
    compare_with_reference(shot, "screenshot_zebrafish", tmp_path)


def test_comparison_tells_a_changed_view_from_rendering_noise() -> None:
    rng = np.random.default_rng(0)
    shot = rng.integers(0, 255, (*CANVAS, 3)).astype(np.uint8)
    ref = np.round(_reduce(shot, 2)).astype(np.uint8)
    noisy = np.clip(shot.astype(int) + rng.integers(-6, 7, shot.shape), 0, 255)
    mean, frac = image_difference(noisy, ref)  # antialiasing-like noise passes
    assert mean < 1.0 and frac == 0.0
    changed = shot.copy()
    changed[100:200, 100:200] = [0, 229, 255]  # a new cyan patch of 100 x 100 pixels
    mean, frac = image_difference(changed, ref)
    assert frac > MAX_CHANGED_BLOCKS
    assert image_difference(shot[:-8], ref) == (float("inf"), 1.0)  # another size
