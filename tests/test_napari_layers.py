"""The plugin's pure parts (no Qt): reader probe, NWB -> layer data, manifest.

Real NWB files are generated (synthetic sessions with planted driver ROIs) and results
files are written by the real writer; nothing is mocked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from napari_data import PlantedFiles, make_planted_files
from napari_llmdecode._layers import (
    _CHAR_HEIGHT,
    _CHAR_WIDTH,
    OUTLINE_COLOUR,
    SALIENCE_COLORMAP,
    TEXT_POINTS,
    colour_update,
    contrast_limits,
    nominal_pixel,
    paint,
    read_source,
    roi_edges,
    roi_on_ray,
    roi_world_position,
    salient_rois,
    session_layers,
    top_rows,
    trace_data,
)
from napari_llmdecode._reader import is_nwb_source, napari_get_reader
from nwb_llmdecode import load_session
from nwb_llmdecode.io.sources import open_nwb
from nwb_llmdecode.synthetic import make_session

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> PlantedFiles:
    return make_planted_files(tmp_path_factory.mktemp("napari_layers"))


# ----------------------------------------------------------------------------------------
# reader probe
# ----------------------------------------------------------------------------------------


def test_reader_claims_nwb_and_nothing_else(files: PlantedFiles, tmp_path: Path) -> None:
    not_nwb_h5 = tmp_path / "plain.nwb"
    with h5py.File(not_nwb_h5, "w") as f:
        f["x"] = np.arange(3)
    text = tmp_path / "text.nwb"
    text.write_text("not an HDF5 file")
    empty = tmp_path / "empty.nwb"
    empty.touch()
    tif = tmp_path / "image.tif"
    tif.write_bytes(b"II*\x00" + bytes(100))
    truncated = tmp_path / "truncated.nwb"
    truncated.write_bytes(files.session.read_bytes()[:4096])
    for path in (not_nwb_h5, text, empty, tif, truncated, tmp_path, tmp_path / "missing.nwb"):
        assert napari_get_reader(str(path)) is None, path
    for odd in ([], None, 3, [str(files.session), str(tif)], "", "https://example.org/a.png"):
        assert napari_get_reader(odd) is None, odd  # type: ignore[arg-type]

    reader = napari_get_reader(str(files.session))
    assert callable(reader)
    assert napari_get_reader([str(files.session), str(files.results)]) is reader
    assert napari_get_reader(files.session) is reader  # Path objects too


@pytest.mark.parametrize(
    "source",
    [
        "DANDI:000123/draft/sub-1/sub-1_ses-1.nwb",
        "dandi://dandi/000123@draft/sub-1/sub-1_ses-1.nwb",
        "https://api.dandiarchive.org/api/assets/0f2c/download/",
        "http://127.0.0.1:8000/api/dandisets/000123/versions/draft/assets/?path=a.nwb",
        "https://example.org/data/session.nwb",
    ],
)
def test_reader_claims_remote_nwb_without_touching_the_network(source: str) -> None:
    assert is_nwb_source(source)
    assert napari_get_reader(source) is not None


def test_reader_reads_a_dandi_asset_like_the_local_file(files: PlantedFiles, monkeypatch, tmp_path):
    from dandi_server import DandiTestServer

    with DandiTestServer() as archive:
        archive.add_dandiset("000321")
        archive.add_asset("000321", "sub-1/sub-1_ophys.nwb", files.results)
        monkeypatch.setenv("NWB_LLMDECODE_DANDI_API", archive.api_url)
        monkeypatch.setenv("NWB_LLMDECODE_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("DANDI_NO_ET", "1")
        source = "DANDI:000321/draft/sub-1/sub-1_ophys.nwb"
        reader = napari_get_reader(source)
        assert reader is not None
        remote = reader(source)
    local = session_layers(read_source(files.results))
    assert [t[1]["name"].split(": ", 1)[-1] for t in remote] == [
        t[1]["name"].split(": ", 1)[-1] for t in local
    ]
    for (rd, rmeta, rtype), (ld, _, ltype) in zip(remote, local, strict=True):
        assert rtype == ltype
        np.testing.assert_array_equal(rd, ld)
        assert rmeta["scale"] == (12.0, 1.0, 1.0)


# ----------------------------------------------------------------------------------------
# session -> layers
# ----------------------------------------------------------------------------------------


def test_labels_images_and_geometry_of_a_session(files: PlantedFiles) -> None:
    data = read_source(files.session)
    ds = load_session(files.session)
    assert data.results is None
    assert data.n_rois == ds.sizes["roi"] == 60
    assert data.plane_names == ["PlaneSegmentation_plane0", "PlaneSegmentation_plane1"]
    assert data.labels.dtype == np.int32 and data.labels.shape[0] == 2
    # label k+1 is global ROI k: one plane per z slice, centroids where the masks are
    np.testing.assert_array_equal(
        data.roi_plane, (ds["plane"].values == "PlaneSegmentation_plane1")
    )
    np.testing.assert_array_equal(data.centroids[:, 0], data.roi_plane)
    np.testing.assert_allclose(data.centroids[:, 2], ds["x"].values)
    np.testing.assert_allclose(data.centroids[:, 1], ds["y"].values)
    # each ROI's drawn voxels lie around its centroid (ROIs hidden by overlaps excepted)
    drawn = np.unique(data.labels)[1:] - 1
    assert len(drawn) >= 55
    for k in drawn[::7]:
        zz, yy, xx = np.nonzero(data.labels == k + 1)
        assert np.all(zz == data.roi_plane[k])
        assert abs(yy.mean() - data.centroids[k, 1]) < 4  # ROI radius: partly covered ROIs
        assert abs(xx.mean() - data.centroids[k, 2]) < 4
    # summary images stacked per plane, exactly as stored
    assert list(data.images) == ["mean", "correlation"]
    with open_nwb(files.session) as src:
        for p in range(2):
            stored = src.nwbfile.processing["ophys"][f"SummaryImages_plane{p}"]["mean"].data[:]
            np.testing.assert_array_equal(data.images["mean"][p, : stored.shape[0]], stored)
    # physical scale from the planes' grid spacing (1 µm) and origins (12 µm apart)
    assert data.scale == (12.0, 1.0, 1.0) and data.translate == (0.0, 0.0, 0.0)
    assert data.unit == "micrometers"
    np.testing.assert_array_equal(data.activity, ds["activity"].values)

    layers = session_layers(data)
    assert [(t[2], t[1]["name"]) for t in layers] == [
        ("image", "planted: mean image"),
        ("image", "planted: correlation image"),
        ("labels", "planted: ROIs"),
    ]
    assert [t[1]["visible"] for t in layers[:2]] == [True, False]
    for data_, meta, _ in layers:
        assert meta["scale"] == (12.0, 1.0, 1.0)
        assert data_.shape == data.labels.shape
    feats = layers[2][1]["features"]
    assert feats["index"][5] == 5 and feats["roi"][5] == 4
    # the viewer's axes are named, and a session shows its ROIs filled
    assert {t[1]["axis_labels"] for t in layers} == {("plane", "y", "x")}
    assert layers[2][1].get("visible", True) and layers[2][0] is data.labels


def test_scale_follows_the_imaging_planes(files: PlantedFiles, tmp_path: Path) -> None:
    path = tmp_path / "scaled.nwb"
    shutil.copy(files.session, path)
    with h5py.File(path, "r+") as f:
        for p, z in ((0, 10.0), (1, 30.0)):
            plane = f[f"general/optophysiology/ImagingPlane_plane{p}"]
            plane["grid_spacing"][...] = [0.5, 0.75]
            plane["origin_coords"][...] = [4.0, 2.0, z]
    data = read_source(path)
    assert data.scale == (20.0, 0.75, 0.5)
    assert data.translate == (10.0, 2.0, 4.0)
    # world position of a ROI = voxel centroid * scale + origin
    roi = 37
    expected = data.centroids[roi] * [20.0, 0.75, 0.5] + [10.0, 2.0, 4.0]
    np.testing.assert_allclose(roi_world_position(data, roi), expected)


def test_pixel_and_voxel_masks_and_no_summary_image(tmp_path: Path) -> None:
    pix = make_session(
        tmp_path / "pix.nwb",
        frames=60,
        rois=12,
        planes=2,
        mask="pixel",
        summary_images=False,
        seed=4,
        n_drivers=2,
    )
    data = read_source(pix.path)
    assert np.unique(data.labels).max() == 12 and data.labels.dtype == np.int32
    layers = session_layers(data)
    # no summary image: a projection of the activity (s.d. over time per ROI)
    assert [t[2] for t in layers] == ["image", "labels"]
    assert "s.d." in layers[0][1]["name"]
    sd = np.nanstd(data.activity, axis=0)
    np.testing.assert_allclose(layers[0][0], paint(data.labels, sd, background=0.0))

    vox = make_session(
        tmp_path / "vox.nwb", frames=60, rois=9, planes=3, mask="voxel", seed=5, n_drivers=2
    )
    vdata = read_source(vox.path)
    assert vdata.labels.shape[0] == 3
    np.testing.assert_array_equal(np.round(vdata.centroids[:, 0]), vdata.roi_plane)


# ----------------------------------------------------------------------------------------
# results -> salience layers
# ----------------------------------------------------------------------------------------


def test_results_file_salience_is_mapped_to_the_right_rois(files: PlantedFiles) -> None:
    data = read_source(files.results)
    res = data.results
    assert res is not None and len(res.salience) == 1
    sset = res.salience[0]
    written = files.planted.salience
    assert sset.method == "grad-x-input"
    np.testing.assert_allclose(sset.salience, written["salience"].values, rtol=1e-6)
    np.testing.assert_allclose(sset.by_output, written["salience_by_output"].values, rtol=1e-6)
    np.testing.assert_allclose(sset.timecourse, written["timecourse"].values, rtol=1e-6)
    # the planted drivers are exactly the salient ROIs, ranked as written
    top = np.argsort(-sset.salience)[: len(files.truth.driver_rois)]
    assert set(top.tolist()) == set(files.truth.driver_rois.tolist())
    assert sset.rank[top[0]] == 1
    # behaviour channels, targets, predictions, splits as written
    assert res.channels == ["tail_angles[0]", "tail_angles[1]", "tail_angles[2]"]
    ds = files.planted.session
    np.testing.assert_array_equal(res.targets, ds["behavior"].values)
    np.testing.assert_array_equal(res.predictions, files.planted.predictions)
    np.testing.assert_allclose(res.times, ds["time"].values)
    assert [s[0] for s in res.splits] == ["train", "validation", "test"]
    assert res.splits[2][1] == pytest.approx(ds["time"].values[files.planted.splits[2][1]])
    assert res.run["backbone"] == "planted-readout"
    assert {m["split"] for m in res.metrics} == {"train", "validation", "test"}


def test_results_layers_colour_rois_by_salience(files: PlantedFiles) -> None:
    data = read_source(files.results)
    sset = data.results.salience[0]
    layers = session_layers(data)
    kinds = [(t[2], t[1]["name"]) for t in layers]
    assert kinds[-4:] == [
        ("labels", "planted_desc-llmdecode: ROIs (outlines)"),
        ("image", "grad-x-input salience (a.u.)"),
        ("labels", "planted_desc-llmdecode: salient ROIs"),
        ("points", "planted_desc-llmdecode: salience ranks"),
    ]
    labels, sal, outl, ranks = layers[-4:]
    # every ROI is shown (by its outline, so the salience fill stays visible)
    assert labels[1].get("visible", True)
    np.testing.assert_array_equal(labels[0], data.edges)
    assert set(np.unique(labels[0])) == set(np.unique(data.labels))
    vol = sal[0]
    assert vol.dtype == np.float32 and vol.shape == data.labels.shape
    assert np.isnan(vol[data.labels == 0]).all()  # transparent outside ROIs
    inside = data.labels > 0
    np.testing.assert_array_equal(vol[inside], sset.salience[data.labels[inside] - 1])
    assert sal[1]["colormap"] is SALIENCE_COLORMAP
    assert sal[1]["contrast_limits"] == (0.0, pytest.approx(float(sset.salience.max())))
    # the salient ROIs (the planted drivers) are outlined by their own mask's edge, in one
    # colour; no other ROI has an outline there
    drivers = np.sort(files.truth.driver_rois)
    np.testing.assert_array_equal(salient_rois(data, sset.salience, sset.salience.max()), drivers)
    out = outl[0]
    assert set(np.unique(out)) - {0} == set((drivers + 1).tolist())
    assert outl[1]["colormap"] == {None: OUTLINE_COLOUR, 0: "transparent"}
    for k in drivers:
        mask = data.labels == k + 1
        ring = out == k + 1
        assert ring.any() and np.all(mask[ring])  # inside the ROI's own mask ...
        assert ring.sum() < mask.sum()  # ... only its edge
        # an outline is no wider than the ROI itself: a ring around its centroid
        _, yy, xx = np.nonzero(ring)
        r = np.hypot(yy - data.centroids[k, 1], xx - data.centroids[k, 2])
        assert r.max() <= data.roi_diameter
    # rank labels: the drivers, in rank order, white over a dark halo, apart from each other
    feats = ranks[1]["features"]
    white = feats["text_colour"] == "white"
    assert white.sum() == len(drivers) and (~white).sum() == 8 * len(drivers)
    assert np.all(white[-len(drivers) :])  # the text is drawn after its halo
    order = np.argsort(-sset.salience, kind="stable")[: len(drivers)]
    assert feats["roi"][white].tolist() == order.tolist()
    assert [t.split()[0] for t in feats["label"][white]] == [f"#{i + 1}" for i in range(5)]
    assert feats["label"][white][0] == f"#1 {sset.salience[order[0]]:.3g}"
    # fixed size on screen, laid out for a field of view about 800 pixels wide
    assert ranks[1]["text"]["size"] == TEXT_POINTS and not ranks[1]["text"].get("scaling")
    assert ranks[1]["text"]["color"] == {"feature": "text_colour"}
    pos = ranks[0][white][:, 1:] * np.asarray(data.scale[1:])
    size = TEXT_POINTS * nominal_pixel(data)
    h = _CHAR_HEIGHT * size
    for i in range(len(pos)):
        for j in range(i):
            wi = _CHAR_WIDTH * size * len(feats["label"][white][i]) / 2
            wj = _CHAR_WIDTH * size * len(feats["label"][white][j]) / 2
            dy, dx = np.abs(pos[i] - pos[j])
            assert dy >= h - 1e-6 or dx >= wi + wj - 1e-6, (i, j)


def test_outlines_are_the_in_plane_edges_of_each_roi() -> None:
    lab = np.zeros((2, 12, 12), dtype=np.int32)
    lab[0, 2:7, 2:7] = 1
    lab[0, 2:7, 7:10] = 2  # touching ROI 1: both keep their own edge
    lab[1, 0:4, 0:4] = 3  # at the image border
    edges = roi_edges(lab)
    assert edges[0, 4, 4] == 0 and edges[0, 4, 6] == 1 and edges[0, 4, 7] == 2
    assert edges[1, 0, 2] == 3  # the border counts as outside
    assert edges[1, 1, 1] == 0 and edges[1, 3, 3] == 3
    thick = roi_edges(lab, thickness=2)
    assert thick[0, 4, 3] == 1 and edges[0, 4, 3] == 0 and thick[0, 4, 4] == 0
    # an outline pixel belongs to its own ROI's mask
    assert np.all(edges[edges > 0] == lab[edges > 0])
    assert np.all(thick[thick > 0] == lab[thick > 0])


def _rename_split_column(path: Path, to: str) -> None:
    """Give the results file's ``decoding_splits`` name column the name ``to`` (files
    written before the pynapple-friendly rename call it ``split``, later ``split_name``)."""
    with h5py.File(path, "r+") as f:
        table = f["processing/llmdecode/decoding_splits"]
        (old,) = [c for c in ("split", "split_name") if c in table]
        if old != to:
            table.move(old, to)
            cols = [c.decode() if isinstance(c, bytes) else str(c) for c in table.attrs["colnames"]]
            table.attrs["colnames"] = np.array([to if c == old else c for c in cols], dtype=object)


@pytest.mark.parametrize("column", ["split", "split_name"])
def test_splits_read_from_old_and_new_column_names(
    files: PlantedFiles, tmp_path: Path, column: str
) -> None:
    path = tmp_path / f"{column}.nwb"
    shutil.copy(files.results, path)
    _rename_split_column(path, column)
    with h5py.File(path, "r") as f:
        assert column in f["processing/llmdecode/decoding_splits"]
    res = read_source(path).results
    ds = files.planted.session
    assert [s[0] for s in res.splits] == ["train", "validation", "test"]
    assert res.splits[2][1] == pytest.approx(ds["time"].values[files.planted.splits[2][1]])


def test_plane_short_names_and_axis_labels(files: PlantedFiles) -> None:
    from napari_llmdecode._layers import plane_short_names

    data = read_source(files.results)
    assert data.plane_short_names == ["plane0", "plane1"]
    assert set(top_rows(data, data.results.salience[0], n=60)["plane"]) == {"plane0", "plane1"}
    assert plane_short_names(["PlaneSegmentation"]) == ["PlaneSegmentation"]
    assert plane_short_names(["ps_a", "ps_a2"]) == ["a", "a2"]
    assert plane_short_names(["cells", "cells"]) == ["cells", "cells"]
    assert data.axis_labels == ("plane", "y", "x")


def test_colouring_by_channel_and_frame(files: PlantedFiles) -> None:
    data = read_source(files.results)
    sset = data.results.salience[0]
    for channel in (None, 0, 2):
        v = sset.values(channel)
        upd = colour_update(data, v)
        inside = data.labels > 0
        np.testing.assert_array_equal(upd["volume"][inside], v[data.labels[inside] - 1])
        assert upd["contrast_limits"] == contrast_limits(v)
        # outlines for the salient ROIs only (>= 20 % of the maximum)
        expected = np.flatnonzero(v >= 0.2 * np.nanmax(v))
        np.testing.assert_array_equal(upd["rois"], expected)
        assert set(np.unique(upd["outlines"])) - {0} == set((expected + 1).tolist())
        np.testing.assert_array_equal(upd["outlines"] > 0, np.isin(data.edges, expected + 1))
        top = np.argsort(-np.nan_to_num(v, nan=-1), kind="stable")[:10]
        white = upd["features"]["text_colour"] == "white"
        assert upd["features"]["roi"][white].tolist() == top[v[top] > 0].tolist()
        assert upd["outline_features"]["rank"][top[0] + 1] == 1
    frame = int(np.flatnonzero(np.isfinite(sset.timecourse).all(axis=1))[3])
    v = sset.values(frame=frame)
    np.testing.assert_array_equal(v, sset.timecourse[frame])
    fixed = colour_update(data, v, limits=(0.0, 5.0))
    assert fixed["contrast_limits"] == (0.0, 5.0)
    rows = top_rows(data, sset, channel=1, n=4)
    assert rows["roi"].tolist() == np.argsort(-sset.by_output[:, 1])[:4].tolist()
    assert rows["rank"].tolist() == [1, 2, 3, 4]
    np.testing.assert_array_equal(rows["by_output"], sset.by_output[rows["roi"]])
    assert set(rows["plane"]) <= set(data.plane_short_names)


def test_trace_data_is_the_rois_activity_and_the_decoded_channel(files: PlantedFiles) -> None:
    data = read_source(files.results)
    ds = files.planted.session
    roi = int(files.truth.driver_rois[0])
    d = trace_data(data, roi, 1)
    np.testing.assert_array_equal(d["activity"], ds["activity"].values[:, roi])
    np.testing.assert_array_equal(d["target"], ds["behavior"].values[:, 1])
    np.testing.assert_array_equal(d["prediction"], files.planted.predictions[:, 1])
    assert d["channel_name"] == "tail_angles[1]" and d["unit"] == "radians"
    assert d["activity_label"] == "ΔF/F"
    # large sessions keep no activity in memory and read one ROI from the file instead
    lazy = read_source(files.results, max_activity_values=10)
    assert lazy.activity is None
    np.testing.assert_array_equal(trace_data(lazy, roi, 1)["activity"], d["activity"])


def test_click_ray_picks_the_nearest_rois_centroid(files: PlantedFiles) -> None:
    data = read_source(files.session)
    world = np.array([roi_world_position(data, k) for k in range(data.n_rois)])
    down = np.array([1.0, 0.0, 0.0])  # looking along z, from above the first plane
    for roi in (41, 3):
        z, y, x = world[roi]
        hit = roi_on_ray(data, np.array([z - 100, y, x]), down)
        # the hit is within one ROI diameter of the ray, and no such ROI is nearer
        near = np.flatnonzero(np.hypot(world[:, 1] - y, world[:, 2] - x) <= data.roi_diameter)
        assert hit in near and world[hit, 0] == world[near, 0].min()
        up = roi_on_ray(data, np.array([z + 100, y, x]), -down)
        assert up in near and world[up, 0] == world[near, 0].max()
    assert roi_on_ray(data, np.array([0.0, -50.0, -50.0]), np.array([0.0, -1.0, 0.0])) is None


# ----------------------------------------------------------------------------------------
# packaging: manifest, samples, no Qt
# ----------------------------------------------------------------------------------------


def test_installed_manifest_is_the_top_level_one_and_validates() -> None:
    npe2 = pytest.importorskip("npe2", reason="npe2 is in the [napari] extra")
    from npe2 import PluginManifest

    mf = PluginManifest.from_distribution("nwb-llmdecode")
    assert mf.name == "nwb-llmdecode"
    pm = npe2.PluginManager()
    pm.discover()
    assert pm.get_manifest("nwb-llmdecode").display_name == "NWB LLM decode"
    installed = Path(sys.modules["napari_llmdecode"].__file__).parent / "napari.yaml"
    assert installed.resolve() == (REPO / "napari.yaml").resolve()
    assert {w.display_name for w in mf.contributions.widgets} == {
        "Salience explorer",
        "Fit decoder",
    }
    assert {s.key for s in mf.contributions.sample_data} == {
        "synthetic_session",
        "synthetic_results",
    }
    assert "*.nwb" in mf.contributions.readers[0].filename_patterns
    exe = Path(sys.executable).parent / "npe2"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "npe2"]
    out = subprocess.run(
        [*cmd, "validate", "nwb-llmdecode", "--imports"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_sample_data_generates_real_files(tmp_path: Path, monkeypatch) -> None:
    from napari_llmdecode import _sample_data

    monkeypatch.setenv("NAPARI_LLMDECODE_CACHE", str(tmp_path))
    session_layers_ = _sample_data.sample_session()
    results_layers = _sample_data.sample_results()
    assert [t[2] for t in session_layers_] == ["image", "image", "labels"]
    assert [t[2] for t in results_layers][-3:] == ["image", "labels", "points"]
    files = sorted(p.name for p in tmp_path.rglob("*.nwb"))
    assert files == ["synthetic_session.nwb", "synthetic_session_desc-llmdecode.nwb"]
    data = read_source(next(tmp_path.rglob("*_desc-llmdecode.nwb")))
    truth_drivers = np.flatnonzero(data.results.salience[0].salience > 0)
    assert len(truth_drivers) == _sample_data.SAMPLE_KWARGS["n_drivers"]


def test_library_and_reader_import_and_read_without_qt(files: PlantedFiles) -> None:
    code = textwrap.dedent(
        f"""
        import sys

        class NoQt:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("PyQt6", "PyQt5", "PySide2", "PySide6", "qtpy"):
                    raise ImportError(f"{{name}} is blocked in this test")
                return None

        sys.meta_path.insert(0, NoQt())
        import nwb_llmdecode, napari_llmdecode, napari_llmdecode._reader
        import napari_llmdecode._layers, napari_llmdecode._sample_data
        from napari_llmdecode._reader import napari_get_reader
        path = {str(files.results)!r}
        layers = napari_get_reader(path)(path)
        print(len(layers), sorted({{t[2] for t in layers}}))
        try:
            import qtpy
        except ImportError:
            print("qt blocked")
        assert not [m for m in sys.modules if m.split(".")[0] in ("PyQt6", "qtpy")]
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["6 ['image', 'labels', 'points']", "qt blocked"]


def test_viewer_axes_are_named_where_napari_left_numbers() -> None:
    from types import SimpleNamespace

    from napari_llmdecode._viewer import name_axes

    viewer = SimpleNamespace(dims=SimpleNamespace(axis_labels=("-3", "-2", "-1")))
    name_axes(viewer, ("plane", "y", "x"))
    assert viewer.dims.axis_labels == ("plane", "y", "x")
    viewer.dims.axis_labels = ("0", "1", "2", "3")  # a 4D viewer: the last three
    name_axes(viewer, ("plane", "y", "x"))
    assert viewer.dims.axis_labels == ("0", "plane", "y", "x")
    viewer.dims.axis_labels = ("depth", "row", "col")  # named by the user: kept
    name_axes(viewer, ("plane", "y", "x"))
    assert viewer.dims.axis_labels == ("depth", "row", "col")
