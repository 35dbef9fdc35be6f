"""NWB Zarr sources (``.nwb.zarr``): local stores and DANDI Zarr assets, read with
hdmf-zarr's NWBZarrIO through the same ``open_nwb`` seam as HDF5. The stores are written
here by hdmf-zarr (an export of a ``make_session`` HDF5 file) and served by the local
DANDI test server (tests/dandi_server.py)."""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from dandi_server import DandiTestServer
from nwb_llmdecode import inspect_source, load_session
from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.errors import RemoteError, SourceError
from nwb_llmdecode.io.dandi import resolve_source
from nwb_llmdecode.io.sources import is_zarr_store, open_nwb
from nwb_llmdecode.synthetic import make_session

DANDISET = "000456"
ZPATH = "sub-fish01/sub-fish01_ses-01_ophys.nwb.zarr"


@pytest.fixture(scope="module")
def hdf5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zarr") / "session.nwb"
    make_session(path, frames=240, rois=16, planes=2, seed=3, n_drivers=3, raw_imaging=True)
    return path


@pytest.fixture(scope="module")
def store(hdf5: Path) -> Path:
    """The same session as an NWB Zarr store, exported by hdmf-zarr."""
    from hdmf_zarr.nwb import NWBZarrIO
    from pynwb import NWBHDF5IO

    out = hdf5.with_name("session.nwb.zarr")
    with NWBHDF5IO(str(hdf5), "r") as src, NWBZarrIO(str(out), mode="w") as dst:
        dst.export(src_io=src, write_args={"link_data": False})
    return out


@pytest.fixture(scope="module")
def archive(store: Path) -> DandiTestServer:
    with DandiTestServer() as server:
        server.add_dandiset(DANDISET)
        server.add_zarr_asset(DANDISET, ZPATH, store)
        yield server


@pytest.fixture(autouse=True)
def _no_collection_in_server_threads() -> Iterator[None]:
    """The test archive serves from threads of this process. A garbage collection that
    runs in one of them and frees an h5py object waits for h5py's global lock, which the
    reading thread holds while it waits for that server's answer: a deadlock of the
    in-process server (a real archive is another process). No automatic collection
    during a test, then a full one."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


@pytest.fixture(autouse=True)
def _remote_env(monkeypatch: pytest.MonkeyPatch, archive: DandiTestServer, tmp_path: Path) -> None:
    archive.clear()
    monkeypatch.setenv("NWB_LLMDECODE_DANDI_API", archive.api_url)
    monkeypatch.setenv("NWB_LLMDECODE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NWB_LLMDECODE_TIMEOUT", "2")
    monkeypatch.setenv("NWB_LLMDECODE_RETRIES", "2")
    monkeypatch.setenv("NWB_LLMDECODE_BACKOFF", "0.01")
    monkeypatch.setenv("DANDI_NO_ET", "1")
    monkeypatch.delenv("DANDI_API_KEY", raising=False)


def _same(a: xr.Dataset, b: xr.Dataset) -> None:
    a, b = a.copy(), b.copy()
    a.attrs.pop("source")
    b.attrs.pop("source")
    xr.testing.assert_identical(a, b)


def _digest(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(directory.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(directory).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------
# local stores
# ----------------------------------------------------------------------------------------


def test_a_local_store_is_read_like_the_hdf5_file(hdf5: Path, store: Path) -> None:
    assert is_zarr_store(store) and not is_zarr_store(hdf5) and not is_zarr_store(store.parent)
    with open_nwb(store) as src:
        assert src.backend == "zarr" and src.path == store.resolve() and not src.is_remote
    _same(load_session(store), load_session(hdf5))
    zinfo, hinfo = inspect_source(store), inspect_source(hdf5)
    for key in ("roi_series", "behavior_series", "images", "plane_segmentations"):
        assert zinfo[key] == hinfo[key]


def test_a_directory_that_is_no_store_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="is a directory, not an NWB file nor an NWB Zarr"):
        load_session(tmp_path)
    bad = tmp_path / "bad.nwb.zarr"
    bad.mkdir()
    (bad / ".zgroup").write_text("not json")
    with pytest.raises(SourceError) as exc:
        load_session(bad)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)


def test_fit_on_a_store_writes_hdf5_results_equal_to_those_of_the_hdf5_file(
    hdf5: Path, store: Path, tmp_path: Path
) -> None:
    from pynwb import NWBHDF5IO

    from nwb_llmdecode.pipeline import fit

    before = _digest(store)
    config = FitConfig(backbone="ridge")
    fit(store, config=config, out=tmp_path / "from-zarr.nwb", checkpoint=False)
    fit(hdf5, config=config, out=tmp_path / "from-hdf5.nwb", checkpoint=False)
    assert _digest(store) == before  # the source is never changed
    assert h5py.is_hdf5(tmp_path / "from-zarr.nwb")
    with (
        NWBHDF5IO(str(tmp_path / "from-zarr.nwb"), "r") as z,
        NWBHDF5IO(str(tmp_path / "from-hdf5.nwb"), "r") as h,
    ):
        zmod, hmod = z.read().processing["llmdecode"], h.read().processing["llmdecode"]
        assert sorted(zmod.data_interfaces) == sorted(hmod.data_interfaces)
        # a deterministic ridge fit: the same predictions and metrics from either store
        zpred, hpred = zmod["predictions"].time_series, hmod["predictions"].time_series
        assert sorted(zpred) == sorted(hpred) and hpred
        for name, ts in hpred.items():
            np.testing.assert_array_equal(zpred[name].data[:], ts.data[:])
            assert (zpred[name].rate, zpred[name].starting_time) == (ts.rate, ts.starting_time)
        zmet, hmet = (
            zmod["decoding_metrics"].to_dataframe(),
            hmod["decoding_metrics"].to_dataframe(),
        )
        assert len(hmet) > 0
        assert zmet.equals(hmet)


def test_in_place_on_a_store_is_refused_and_leaves_it_untouched(
    store: Path, tmp_path: Path
) -> None:
    from nwb_llmdecode.pipeline import fit

    before = _digest(store)
    with pytest.raises(SourceError) as exc:
        fit(store, config=FitConfig(backbone="ridge"), in_place=True, checkpoint=False)
    text = str(exc.value)
    assert "\n" not in text and str(store) in text and "omit --in-place" in text
    assert _digest(store) == before


def test_the_napari_reader_opens_a_store_like_the_hdf5_file(hdf5: Path, store: Path) -> None:
    pytest.importorskip("napari")
    from napari_llmdecode._layers import read_source, session_layers
    from napari_llmdecode._reader import is_nwb_source, napari_get_reader

    assert is_nwb_source(store) and is_nwb_source(str(store))
    assert not is_nwb_source(store.parent)  # a plain directory
    reader = napari_get_reader(str(store))
    assert reader is not None
    zlayers = reader(str(store))
    hlayers = session_layers(read_source(hdf5))
    # layers are named "<source name>: <what>"
    assert [t[1]["name"].split(": ", 1)[1] for t in zlayers] == [
        t[1]["name"].split(": ", 1)[1] for t in hlayers
    ]
    for (zd, _, ztype), (hd, _, htype) in zip(zlayers, hlayers, strict=True):
        assert ztype == htype
        np.testing.assert_array_equal(zd, hd)


def test_the_napari_manifest_accepts_store_directories() -> None:
    import yaml

    manifest = yaml.safe_load((Path(__file__).parents[1] / "napari.yaml").read_text())
    (reader,) = manifest["contributions"]["readers"]
    assert reader["accepts_directories"] is True
    assert "*.nwb.zarr" in reader["filename_patterns"]


# ----------------------------------------------------------------------------------------
# DANDI Zarr assets, streamed
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["DANDI", "dandi://", "asset-id"])
def test_a_dandi_zarr_asset_resolves_to_its_store(archive: DandiTestServer, form: str) -> None:
    asset = next(iter(archive.assets.values()))
    source = {
        "DANDI": f"DANDI:{DANDISET}/draft/{ZPATH}",
        "dandi://": f"dandi://dandi/{DANDISET}@draft/{ZPATH}",
        "asset-id": f"{archive.api_url}/assets/{asset.asset_id}/download/",
    }[form]
    resolved = resolve_source(source)
    assert resolved.kind == "zarr"
    assert resolved.url == archive.zarr_url(asset)
    assert resolved.digest == f"dandi:dandi-zarr-checksum:{asset.etag}"
    assert resolved.size == asset.size


def test_a_streamed_store_is_read_like_the_local_one(
    archive: DandiTestServer, hdf5: Path, store: Path
) -> None:
    source = f"DANDI:{DANDISET}/draft/{ZPATH}"
    remote = load_session(source)
    _same(remote, load_session(hdf5))
    assert remote.attrs["source"] == source
    served = archive.bytes_served["zarr"]
    # the raw imaging stays where it is: far less than the store is transferred
    assert 0 < served < 0.5 * archive.assets[next(iter(archive.assets))].size
    info = inspect_source(source)
    assert info["roi_series"] == inspect_source(store)["roi_series"]
    assert info["session"]["transfer"]["url"] == archive.zarr_url(
        next(iter(archive.assets.values()))
    )
    with open_nwb(source) as src:
        assert src.is_remote and src.backend == "zarr"
    # the store's URL itself (no DANDI API): a plain https URL ending in .zarr/ is a store
    plain = archive.zarr_url(next(iter(archive.assets.values())))
    archive.reset_counts()
    _same(load_session(plain), load_session(hdf5))
    assert archive.requests["dandiset"] == archive.requests["asset-metadata"] == 0


def test_a_streamed_store_retries_by_the_same_policy(archive: DandiTestServer, hdf5: Path) -> None:
    source = f"DANDI:{DANDISET}/draft/{ZPATH}"
    archive.fail("zarr", 503, times=2)
    _same(load_session(source), load_session(hdf5))
    assert archive.faults["zarr"].times == 0
    archive.fail("zarr", 502)
    archive.reset_counts()
    with pytest.raises(RemoteError) as exc:
        load_session(source)
    text = str(exc.value)
    assert "\n" not in text and "HTTP 502" in text and "gave up after 3 tries" in text
    assert archive.zarr_url(next(iter(archive.assets.values()))) in text
    assert archive.requests["zarr"] == 3  # NWB_LLMDECODE_RETRIES=2: three tries, no more


def test_the_command_line_inspects_a_local_and_a_streamed_store(
    archive: DandiTestServer, store: Path
) -> None:
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONWARNINGS="ignore")
    for source in (str(store), f"DANDI:{DANDISET}/draft/{ZPATH}"):
        proc = subprocess.run(
            [sys.executable, "-m", "nwb_llmdecode.cli", "inspect", "--json", source],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        assert info["roi_series"] == inspect_source(store)["roi_series"]
