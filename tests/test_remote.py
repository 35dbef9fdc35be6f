"""Streaming NWB from a DANDI archive: a real HTTP server speaking the DANDI API
(tests/dandi_server.py), the real dandi client, remfile, h5py and pynwb; no network beyond
127.0.0.1."""

from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from dandi_server import Asset, DandiTestServer
from nwb_llmdecode import inspect_source, load_session
from nwb_llmdecode.errors import ConfigError, RemoteError, SourceError
from nwb_llmdecode.io.dandi import list_assets, resolve_source
from nwb_llmdecode.io.http import RemoteOptions
from nwb_llmdecode.io.remote import BlockCache
from nwb_llmdecode.io.sources import is_remote, open_nwb
from nwb_llmdecode.synthetic import make_session

PATH = "sub-fish01/sub-fish01_ses-01_ophys.nwb"
DANDISET = "000123"
PUBLISHED = "0.250101.1200"
EMBARGOED = "000999"


# ----------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_nwb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session whose raw TwoPhotonSeries is > 90 % of the file (23 MB)."""
    path = tmp_path_factory.mktemp("remote") / "big.nwb"
    make_session(
        path,
        frames=1200,
        rois=150,
        planes=1,
        seed=5,
        behavior_rate=20.0,
        mask="pixel",
        fluorescence=False,
        raw_imaging=True,
    )
    return path


@pytest.fixture(scope="module")
def small_nwb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("remote") / "small.nwb"
    make_session(path, frames=60, rois=12, planes=2, seed=6, n_drivers=2, raw_imaging=True)
    return path


@pytest.fixture(scope="module")
def archive(big_nwb: Path, small_nwb: Path) -> DandiTestServer:
    with DandiTestServer(page_size=2) as server:
        server.add_dandiset(DANDISET)
        server.add_asset(DANDISET, PATH, big_nwb)
        server.add_asset(DANDISET, "sub-fish01/sub-fish01_ses-02_ophys.nwb", small_nwb)
        server.add_asset(DANDISET, "sub-fish02/sub-fish02_ses-01_ophys.nwb", b"not nwb" * 10)
        server.add_asset(DANDISET, "dataset_description.json", b"{}")
        server.publish(DANDISET, PUBLISHED)
        server.add_dandiset(EMBARGOED, embargoed=True)
        server.add_asset(EMBARGOED, "sub-x/sub-x_ophys.nwb", small_nwb)
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
    monkeypatch.setenv("NWB_LLMDECODE_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.setenv("NWB_LLMDECODE_TIMEOUT", "2")
    monkeypatch.setenv("NWB_LLMDECODE_RETRIES", "2")
    monkeypatch.setenv("NWB_LLMDECODE_BACKOFF", "0.01")
    monkeypatch.setenv("DANDI_NO_ET", "1")
    for var in (
        "DANDI_API_KEY",
        "DANDI_API_URL",
        "DANDI_INSTANCE",
        "NWB_LLMDECODE_CACHE_SIZE",
        "NWB_LLMDECODE_BLOCK_SIZE",
    ):
        monkeypatch.delenv(var, raising=False)


def _asset(archive: DandiTestServer, path: str = PATH, version: str = "draft") -> Asset:
    return next(a for a in archive.assets.values() if a.path == path and a.version == version)


def _raw_byte_mask(path: Path) -> np.ndarray:
    """True at every byte of the file that belongs to the raw TwoPhotonSeries chunks."""
    mask = np.zeros(path.stat().st_size, dtype=bool)
    with h5py.File(path, "r") as f:
        dset = f["acquisition/TwoPhotonSeries/data"]
        for i in range(dset.id.get_num_chunks()):
            info = dset.id.get_chunk_info(i)
            mask[info.byte_offset : info.byte_offset + info.size] = True
    return mask


def _same(remote: xr.Dataset, local: xr.Dataset) -> None:
    remote, local = remote.copy(), local.copy()
    remote.attrs.pop("source")
    local.attrs.pop("source")
    xr.testing.assert_identical(remote, local)


# ----------------------------------------------------------------------------------------
# bytes transferred
# ----------------------------------------------------------------------------------------


def test_raw_imaging_dominates_the_served_file(big_nwb: Path) -> None:
    raw = _raw_byte_mask(big_nwb)
    assert raw.mean() > 0.9, raw.mean()


def test_inspect_reads_under_10_percent_then_nothing_from_cache(
    archive: DandiTestServer, big_nwb: Path, tmp_path: Path
) -> None:
    size = big_nwb.stat().st_size
    source = f"DANDI:{DANDISET}/draft/{PATH}"
    info = inspect_source(source, cache_dir=tmp_path / "cache")
    served = archive.blob_bytes
    assert 0 < served < 0.10 * size, served / size
    transfer = info["session"]["transfer"]
    # the client's count is the server's count, and the archive redirect was followed once
    assert transfer["bytes_fetched"] == served
    assert transfer["requests"] == archive.requests["blob"]
    assert archive.requests["download"] == 1
    assert transfer["url"] == archive.blob_url(_asset(archive))
    local = inspect_source(big_nwb)
    for key in ("roi_series", "behavior_series", "images", "plane_segmentations"):
        assert info[key] == local[key]
    assert info["session"]["identifier"] == local["session"]["identifier"]

    archive.reset_counts()
    again = inspect_source(source, cache_dir=tmp_path / "cache")
    assert archive.blob_bytes == 0 and archive.requests["blob"] == 0
    assert again["session"]["transfer"]["cache_hits"] > 0
    assert again["roi_series"] == info["roi_series"]


def test_load_session_reads_under_10_percent_and_equals_local(
    archive: DandiTestServer, big_nwb: Path, tmp_path: Path
) -> None:
    size = big_nwb.stat().st_size
    source = f"dandi://dandi/{DANDISET}@draft/{PATH}"
    remote = load_session(source, cache_dir=tmp_path / "cache")
    served = archive.blob_bytes
    assert 0 < served < 0.10 * size, served / size
    assert archive.requests["download"] == 1  # resolved once, never per read
    # raw imaging chunks were not transferred (at most bytes sharing a block with metadata)
    raw = _raw_byte_mask(big_nwb)
    raw_served = sum(int(raw[lo : hi + 1].sum()) for lo, hi in archive.ranges)
    assert raw_served < 0.01 * raw.sum(), raw_served
    local = load_session(big_nwb)
    _same(remote, local)
    assert remote.attrs["source"] == source

    archive.reset_counts()
    again = load_session(source, cache_dir=tmp_path / "cache")
    assert archive.blob_bytes == 0 and archive.requests["blob"] == 0
    _same(again, local)


# ----------------------------------------------------------------------------------------
# identifier forms
# ----------------------------------------------------------------------------------------


def _forms(archive: DandiTestServer) -> dict[str, str]:
    a = _asset(archive)
    api = archive.api_url
    return {
        "DANDI:id/version/path": f"DANDI:{DANDISET}/draft/{PATH}",
        "DANDI:id/path (latest published)": f"DANDI:{DANDISET}/{PATH}",
        "DANDI:id/published/path": f"DANDI:{DANDISET}/{PUBLISHED}/{PATH}",
        "dandi://instance/id@version/path": f"dandi://dandi/{DANDISET}@draft/{PATH}",
        "API ?path= URL": f"{api}/dandisets/{DANDISET}/versions/draft/assets/?path={PATH}",
        "API asset download URL": f"{api}/assets/{a.asset_id}/download/",
        "API asset URL": f"{api}/assets/{a.asset_id}/",
        "API dandiset asset download URL": (
            f"{api}/dandisets/{DANDISET}/versions/draft/assets/{a.asset_id}/download/"
        ),
    }


@pytest.mark.parametrize(
    "form",
    [
        "DANDI:id/version/path",
        "DANDI:id/path (latest published)",
        "DANDI:id/published/path",
        "dandi://instance/id@version/path",
        "API ?path= URL",
        "API asset download URL",
        "API asset URL",
        "API dandiset asset download URL",
    ],
)
def test_identifier_forms_resolve_to_the_blob(
    archive: DandiTestServer, big_nwb: Path, form: str
) -> None:
    source = _forms(archive)[form]
    assert is_remote(source)
    resolved = resolve_source(source)
    version = PUBLISHED if "published" in form else "draft"
    asset = _asset(archive, version=version)
    assert resolved.url == archive.blob_url(asset)
    assert resolved.size == big_nwb.stat().st_size
    assert resolved.path == PATH
    assert resolved.digest == f"dandi:dandi-etag:{asset.etag}"
    if "asset" not in form:  # asset-id URLs do not name the version
        assert (resolved.dandiset_id, resolved.version_id) == (DANDISET, version)
    assert archive.requests["download"] == 1 and archive.requests["blob"] == 0


def test_forms_open_the_same_file_and_share_the_cache(
    archive: DandiTestServer, big_nwb: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = inspect_source(f"DANDI:{DANDISET}/draft/{PATH}", cache_dir=cache)
    archive.reset_counts()
    a = _asset(archive)
    other = inspect_source(f"{archive.api_url}/assets/{a.asset_id}/download/", cache_dir=cache)
    assert archive.blob_bytes == 0  # the cache is named by content, not by identifier
    assert other["roi_series"] == first["roi_series"]


def test_plain_https_url_of_a_blob(archive: DandiTestServer, big_nwb: Path, tmp_path: Path) -> None:
    url = archive.blob_url(_asset(archive))
    remote = load_session(url, cache_dir=tmp_path / "cache")
    assert archive.requests["dandiset"] == archive.requests["download"] == 0  # no DANDI API
    assert 0 < archive.blob_bytes < 0.10 * big_nwb.stat().st_size
    _same(remote, load_session(big_nwb))
    archive.reset_counts()
    with open_nwb(url, cache_dir=tmp_path / "cache") as src:
        assert src.is_remote and src.url == url
    # a second open only re-checks the file's identity (ETag, size) with one small request
    assert archive.requests["blob"] == 1
    assert archive.blob_bytes <= RemoteOptions().block_size


def test_identifiers_that_do_not_name_one_asset(archive: DandiTestServer) -> None:
    with pytest.raises(SourceError, match="names dandiset 000123, not one asset"):
        resolve_source(f"DANDI:{DANDISET}/draft")
    with pytest.raises(SourceError, match="several assets"):
        resolve_source(f"dandi://dandi/{DANDISET}@draft/sub-fish01/")
    with pytest.raises(SourceError, match="not a DANDI identifier"):
        resolve_source(f"NOSUCHINSTANCE:{DANDISET}/draft/{PATH}")
    with pytest.raises(SourceError, match="not an HDF5 file"):
        inspect_source(f"DANDI:{DANDISET}/draft/sub-fish02/sub-fish02_ses-01_ophys.nwb")


# ----------------------------------------------------------------------------------------
# listing
# ----------------------------------------------------------------------------------------


def test_list_assets_with_version_and_prefix(archive: DandiTestServer) -> None:
    rows = list_assets(DANDISET)  # most recent published version
    assert [r["path"] for r in rows] == sorted(
        a.path for a in archive.assets.values() if a.version == PUBLISHED
    )
    assert archive.requests["assets"] >= 2  # the listing is paginated (page size 2)
    assert {r["version"] for r in rows} == {PUBLISHED}
    rows = list_assets(f"{DANDISET}@draft/sub-fish01")
    assert [r["path"] for r in rows] == [PATH, "sub-fish01/sub-fish01_ses-02_ophys.nwb"]
    first = rows[0]
    assert first["size"] == _asset(archive).size
    assert first["asset_id"] == _asset(archive).asset_id
    assert first["modified"].startswith("2025-01-02")
    assert resolve_source(first["source"]).url == archive.blob_url(_asset(archive))
    assert list_assets(f"{DANDISET}@draft/sub-nobody") == []
    with pytest.raises(RemoteError, match="no dandiset 000404"):
        list_assets("000404")
    with pytest.raises(ConfigError, match="DANDISET"):
        list_assets("not a spec")


# ----------------------------------------------------------------------------------------
# network faults
# ----------------------------------------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_server_down(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = DandiTestServer().start()
    dead.stop()
    monkeypatch.setenv("NWB_LLMDECODE_DANDI_API", dead.api_url)
    t0 = time.perf_counter()
    with pytest.raises(RemoteError) as exc:
        inspect_source(f"DANDI:{DANDISET}/draft/{PATH}")
    text = _one_line(exc)
    assert dead.api_url in text and "connection refused" in text and "3 tries" in text
    with pytest.raises(RemoteError, match="connection refused"):
        inspect_source(f"{dead.api_url}/assets/0000/download/")
    with pytest.raises(RemoteError, match="connection refused"):
        inspect_source(f"{dead.url}/blobs/0000")
    assert time.perf_counter() - t0 < 10


def test_5xx_is_retried_then_succeeds(archive: DandiTestServer, big_nwb: Path, tmp_path: Path):
    archive.fail("blob", 500, times=2)
    archive.fail("assets", 503, times=2)
    remote = load_session(f"DANDI:{DANDISET}/draft/{PATH}", cache_dir=tmp_path / "c")
    _same(remote, load_session(big_nwb))
    assert archive.faults["blob"].times == 0 and archive.faults["assets"].times == 0


def test_5xx_forever_gives_up_with_one_line(archive: DandiTestServer, tmp_path: Path) -> None:
    archive.fail("blob", 502)
    url = archive.blob_url(_asset(archive))
    with pytest.raises(RemoteError) as exc:
        load_session(url, cache_dir=tmp_path / "c")
    text = _one_line(exc)
    assert url in text and "HTTP 502" in text and "gave up after 3 tries" in text
    assert archive.requests["blob"] == 3


def test_connection_reset_mid_body_is_retried(
    archive: DandiTestServer, big_nwb: Path, tmp_path: Path
) -> None:
    archive.reset_connections("blob", times=2)
    remote = load_session(f"DANDI:{DANDISET}/draft/{PATH}", cache_dir=tmp_path / "c")
    _same(remote, load_session(big_nwb))
    assert archive.faults["blob"].times == 0


def test_failure_in_the_middle_of_reading_names_the_url(
    archive: DandiTestServer, tmp_path: Path
) -> None:
    """A fault after the file is open (while pynwb/h5py read) still surfaces as the
    RemoteError, not as an h5py or NWB error."""
    url = archive.blob_url(_asset(archive))
    with open_nwb(url, cache_dir=tmp_path / "c") as src:
        archive.fail("blob", 500)
        series = src.nwbfile.processing["ophys"]["DfOverF"]["RoiResponseSeries_plane0"]
        with pytest.raises(RemoteError, match="HTTP 500"):
            series.data[:]
    with pytest.raises(RemoteError, match="HTTP 500"):
        load_session(url, cache_dir=tmp_path / "other")


@pytest.mark.parametrize("after", [1, 4])
def test_failure_while_pynwb_reads_the_file_is_the_remote_error(
    archive: DandiTestServer, tmp_path: Path, after: int
) -> None:
    """The blob fails after ``after`` good answers: inside h5py's open or pynwb's read,
    which wrap exceptions; the error is still the one-line RemoteError naming the URL."""
    archive.fail("blob", 503, after=after)
    with pytest.raises(RemoteError) as exc:
        inspect_source(f"DANDI:{DANDISET}/draft/{PATH}", cache_dir=tmp_path / "c")
    text = _one_line(exc)
    assert archive.blob_url(_asset(archive)) in text and "HTTP 503" in text
    assert archive.requests["blob"] == after + 3


def test_a_kept_error_from_a_failed_open_does_not_crash_python_at_exit(
    archive: DandiTestServer, tmp_path: Path
) -> None:
    """h5py's frames in the error hold HDF5 state that references the remote file; if it
    outlived the interpreter, HDF5's own shutdown would segfault the process."""
    archive.fail("blob", 503, after=1)
    script = (
        "import sys\n"
        "from nwb_llmdecode import inspect_source\n"
        "try:\n"
        f"    inspect_source('DANDI:{DANDISET}/draft/{PATH}', cache_dir=sys.argv[1])\n"
        "except Exception as exc:\n"
        "    KEPT = exc\n"
        "print(type(KEPT).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "RemoteError"


def test_server_that_ignores_range(archive: DandiTestServer, big_nwb: Path, tmp_path: Path):
    archive.ignore_range = True
    with pytest.raises(RemoteError) as exc:
        inspect_source(f"DANDI:{DANDISET}/draft/{PATH}", cache_dir=tmp_path / "c")
    text = _one_line(exc)
    assert "server ignores Range requests; download the file and open it locally" in text
    assert archive.blob_url(_asset(archive)) in text
    assert archive.blob_bytes < 0.5 * big_nwb.stat().st_size  # the body was not read


def test_unknown_path_lists_near_matches(archive: DandiTestServer) -> None:
    typo = "sub-fish01/sub-fish01_ses-1_ophys.nwb"
    with pytest.raises(RemoteError) as exc:
        inspect_source(f"DANDI:{DANDISET}/draft/{typo}")
    text = _one_line(exc)
    assert f"no asset {typo!r}" in text and PATH in text and "did you mean" in text
    with pytest.raises(RemoteError, match="is a folder"):
        resolve_source(
            f"{archive.api_url}/dandisets/{DANDISET}/versions/draft/assets/?path=sub-fish02"
        )


def test_404s_say_what_was_not_found(
    archive: DandiTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(RemoteError, match="no asset with id 'deadbeef'"):
        resolve_source(f"{archive.api_url}/assets/deadbeef/download/")
    with pytest.raises(RemoteError, match="no dandiset 000404"):
        resolve_source(f"DANDI:000404/draft/{PATH}")
    with pytest.raises(RemoteError, match=r"has no version '0\.990101\.0000'"):
        resolve_source(f"DANDI:{DANDISET}/0.990101.0000/{PATH}")
    with pytest.raises(RemoteError, match=r"not found \(HTTP 404\)"):
        inspect_source(f"{archive.url}/blobs/no-such-blob")
    # the dandi client's own error logs (it logs each failed request) stay out of sight
    assert not [r for r in caplog.records if r.name.startswith("dandi") and r.levelno > 10]


def test_slow_server_times_out_quickly(
    archive: DandiTestServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NWB_LLMDECODE_TIMEOUT", "0.3")
    monkeypatch.setenv("NWB_LLMDECODE_RETRIES", "1")
    archive.delay("blob", 5.0)
    t0 = time.perf_counter()
    with pytest.raises(RemoteError) as exc:
        inspect_source(f"DANDI:{DANDISET}/draft/{PATH}", cache_dir=tmp_path / "c")
    assert time.perf_counter() - t0 < 3
    text = _one_line(exc)
    assert "no response within 0.3 s" in text and archive.blob_url(_asset(archive)) in text
    archive.delay("server-info", 5.0)  # an API that hangs while the client discovers it
    t0 = time.perf_counter()
    with pytest.raises(RemoteError, match=r"no response within 0\.3 s"):
        resolve_source(f"{archive.api_url}/assets/{_asset(archive).asset_id}/download/")
    assert time.perf_counter() - t0 < 3


def test_embargoed_asset_needs_the_api_key_which_stays_with_the_api(
    archive: DandiTestServer, small_nwb: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = f"DANDI:{EMBARGOED}/draft/sub-x/sub-x_ophys.nwb"
    with pytest.raises(RemoteError, match="DANDI_API_KEY"):
        inspect_source(source, cache_dir=tmp_path / "c")
    monkeypatch.setenv("DANDI_API_KEY", "wrong")
    with pytest.raises(RemoteError, match="rejected"):
        inspect_source(source, cache_dir=tmp_path / "c")
    monkeypatch.setenv("DANDI_API_KEY", archive.api_key)
    archive.reset_counts()
    remote = load_session(source, cache_dir=tmp_path / "c")
    _same(remote, load_session(small_nwb))
    api = {auth for route, auth in archive.auth_seen if route != "blob"}
    blob = {auth for route, auth in archive.auth_seen if route == "blob"}
    assert api == {f"token {archive.api_key}"}
    assert blob == {None}  # the key never reaches the blob host


# ----------------------------------------------------------------------------------------
# the block cache
# ----------------------------------------------------------------------------------------


def test_block_cache_is_bounded_lru_and_named_by_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_walk(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache walked the tree")

    cache = BlockCache(tmp_path, max_bytes=10 * 1024)
    # writes and evictions keep to the index: no listing of the cache's directories
    for name in ("walk", "scandir", "listdir"):
        monkeypatch.setattr(os, name, no_walk)
    monkeypatch.setattr(Path, "rglob", no_walk)
    monkeypatch.setattr(Path, "iterdir", no_walk)
    key = hashlib.sha256(b"an asset digest").hexdigest()
    for i in range(8):
        cache.put(key, 1024, i, bytes([i]) * 1024)
        time.sleep(0.01)
    assert cache.get(key, 1024, 0, expected=1024) is not None  # block 0 is now recent
    for i in range(8, 14):
        cache.put(key, 1024, i, bytes([i]) * 1024)
        time.sleep(0.01)
    monkeypatch.undo()
    files = list((tmp_path / "blocks-v2").rglob("*.blk"))
    assert sum(f.stat().st_size for f in files) <= 10 * 1024
    assert cache.total() == sum(f.stat().st_size for f in files)
    assert cache.get(key, 1024, 0, expected=1024) == b"\x00" * 1024  # kept (recently used)
    assert cache.get(key, 1024, 1, expected=1024) is None  # evicted (least recently used)
    assert cache.get(key, 1024, 13, expected=1024) == bytes([13]) * 1024
    assert {f.parent.name for f in files} == {key}
    with pytest.raises(ValueError, match="hex SHA-256"):
        cache.put("../../etc", 1024, 0, b"x")


def test_cache_size_bound_holds_for_a_real_load(
    archive: DandiTestServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NWB_LLMDECODE_CACHE_SIZE", "256K")
    load_session(f"DANDI:{DANDISET}/draft/{PATH}", cache_dir=tmp_path / "c")
    files = list((tmp_path / "c").rglob("*.blk"))
    assert files and sum(f.stat().st_size for f in files) <= 256 * 1024


def test_bad_settings_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NWB_LLMDECODE_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="NWB_LLMDECODE_TIMEOUT='soon'"):
        RemoteOptions.from_env()
    monkeypatch.setenv("NWB_LLMDECODE_TIMEOUT", "5")
    monkeypatch.setenv("NWB_LLMDECODE_CACHE_SIZE", "lots")
    with pytest.raises(ConfigError, match="NWB_LLMDECODE_CACHE_SIZE"):
        RemoteOptions.from_env()
    with pytest.raises(ConfigError, match="retries must be >= 0"):
        RemoteOptions(retries=-1)


def test_a_damaged_block_is_not_trusted(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path, max_bytes=1 << 20)
    key = hashlib.sha256(b"an asset digest").hexdigest()
    cache.put(key, 1024, 0, b"a" * 1024)
    (path,) = (tmp_path / "blocks-v2").rglob("*.blk")
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # same length, one bit pattern changed
    path.write_bytes(bytes(raw))
    assert cache.get(key, 1024, 0, expected=1024) is None
    assert not path.exists() and cache.total() == 0


def test_corrupted_cached_blocks_are_fetched_again(
    archive: DandiTestServer, big_nwb: Path, tmp_path: Path
) -> None:
    """Blocks of the right length but wrong content (a disk fault, a foreign write) are
    refetched; the session read is still the file's."""
    source = f"DANDI:{DANDISET}/draft/{PATH}"
    local = load_session(big_nwb)
    load_session(source, cache_dir=tmp_path / "c")
    blocks = sorted((tmp_path / "c").rglob("*.blk"))
    assert blocks
    for path in blocks:  # zero the content, keep the length (and the stored checksum)
        raw = path.read_bytes()
        path.write_bytes(raw[:16] + bytes(len(raw) - 16))
    archive.reset_counts()
    again = load_session(source, cache_dir=tmp_path / "c")
    _same(again, local)
    assert archive.requests["blob"] > 0  # refetched, not trusted
    # and the refetched blocks are good again: a third load reads nothing from the blob
    archive.reset_counts()
    _same(load_session(source, cache_dir=tmp_path / "c"), local)
    assert archive.requests["blob"] == 0


def test_a_changed_asset_never_meets_its_old_blocks(
    archive: DandiTestServer, big_nwb: Path, small_nwb: Path, tmp_path: Path
) -> None:
    """The cache is keyed on the asset's digest from the API: the same identifier with
    new content (a re-uploaded draft asset) reads the new content only."""
    path = "sub-fish03/sub-fish03_ses-01_ophys.nwb"
    asset = archive.add_asset(DANDISET, path, big_nwb)
    source = f"DANDI:{DANDISET}/draft/{path}"
    cache = tmp_path / "c"
    _same(load_session(source, cache_dir=cache), load_session(big_nwb))
    archive.replace_asset(asset, small_nwb)
    archive.reset_counts()
    _same(load_session(source, cache_dir=cache), load_session(small_nwb))
    assert archive.requests["blob"] > 0
    del archive.assets[asset.asset_id]


# ----------------------------------------------------------------------------------------
# expiring links
# ----------------------------------------------------------------------------------------


def test_an_expired_link_is_renewed_through_the_api_and_the_read_goes_on(
    archive: DandiTestServer, big_nwb: Path, tmp_path: Path
) -> None:
    archive.url_expiry = 1.0
    with h5py.File(big_nwb, "r") as f:
        want = f["processing/ophys/DfOverF/RoiResponseSeries_plane0/data"][:]
    with open_nwb(f"DANDI:{DANDISET}/draft/{PATH}", cache_dir=tmp_path / "c") as src:
        first_url = src.stats["url"]
        time.sleep(1.5)  # the presigned URL has expired; nothing of the traces is read yet
        series = src.nwbfile.processing["ophys"]["DfOverF"]["RoiResponseSeries_plane0"]
        data = series.data[:]
        assert archive.expired >= 1  # the blob store refused the old link...
        assert src.stats["renewals"] >= 1  # ...which was renewed through the API
        assert src.stats["url"] != first_url
    np.testing.assert_array_equal(data, want)
    assert archive.requests["download"] >= 2


def test_a_long_load_outlives_its_link(
    archive: DandiTestServer, big_nwb: Path, tmp_path: Path
) -> None:
    """load_session on a link that expires while it reads returns the whole session."""
    archive.url_expiry = 1.0
    # each blob answer waits 0.25 s, so a read of 8 range requests or more lasts at least
    # 2 s: longer than the link, whatever the machine's speed
    archive.delay("blob", 0.25)
    remote = load_session(f"DANDI:{DANDISET}/draft/{PATH}", cache_dir=tmp_path / "c")
    assert archive.requests["blob"] >= 8
    assert archive.expired >= 1
    _same(remote, load_session(big_nwb))


def test_an_asset_changed_under_an_expired_link_is_an_error(
    archive: DandiTestServer, big_nwb: Path, small_nwb: Path, tmp_path: Path
) -> None:
    path = "sub-fish03/sub-fish03_ses-02_ophys.nwb"
    asset = archive.add_asset(DANDISET, path, big_nwb)
    archive.url_expiry = 1.0
    try:
        with open_nwb(f"DANDI:{DANDISET}/draft/{path}", cache_dir=tmp_path / "c") as src:
            archive.replace_asset(asset, small_nwb)
            time.sleep(1.5)
            with pytest.raises(RemoteError) as exc:
                src.nwbfile.processing["ophys"]["DfOverF"]["RoiResponseSeries_plane0"].data[:]
        text = _one_line(exc)
        assert "the asset changed while it was read" in text and "open it again" in text
    finally:
        archive.assets.pop(asset.asset_id, None)


def test_an_expired_plain_url_says_so(archive: DandiTestServer, tmp_path: Path) -> None:
    """A plain URL cannot be renewed: one line naming it and the fix."""
    archive.url_expiry = 1.0
    url = archive.blob_url(_asset(archive))
    time.sleep(1.5)
    with pytest.raises(RemoteError) as exc:
        inspect_source(url, cache_dir=tmp_path / "c")
    text = _one_line(exc)
    assert url in text and "HTTP 403" in text and "expired" in text


# ----------------------------------------------------------------------------------------
# one retry policy
# ----------------------------------------------------------------------------------------


def test_api_failures_are_retried_by_one_policy_only(archive: DandiTestServer) -> None:
    """NWB_LLMDECODE_RETRIES=2: three tries of an API request in all, not the dandi
    client's retries on top of ours."""
    archive.fail("assets", 503)
    with pytest.raises(RemoteError) as exc:
        resolve_source(f"DANDI:{DANDISET}/draft/{PATH}")
    text = _one_line(exc)
    assert "HTTP 503" in text and "gave up after 3 tries" in text
    assert archive.requests["assets"] == 3


def test_cache_off_reads_from_the_blob_every_time(
    archive: DandiTestServer, big_nwb: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NWB_LLMDECODE_CACHE", "off")
    source = f"DANDI:{DANDISET}/draft/{PATH}"
    local = load_session(big_nwb)
    with open_nwb(source) as src:
        assert src.stats["cache_dir"] is None
    archive.reset_counts()
    _same(load_session(source), local)
    first = archive.blob_bytes
    archive.reset_counts()
    _same(load_session(source), local)
    assert first > 0 and archive.blob_bytes == first  # nothing was kept
    assert not (tmp_path / "default-cache").exists()


def test_the_streaming_modules_import_one_way() -> None:
    """HTTP policy in io/http.py, resolving in io/dandi.py, opening in io/remote.py,
    "resolve, then open" in io/sources.py: the arrows run sources -> dandi/remote -> http,
    never back (also not inside functions)."""
    import ast

    import nwb_llmdecode.io as io_pkg

    root = Path(io_pkg.__file__).parent

    def imports(name: str) -> set[str]:
        tree = ast.parse((root / f"{name}.py").read_text())
        return {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        }

    assert imports("http").isdisjoint({"dandi", "remote", "sources"})
    assert imports("dandi").isdisjoint({"remote", "sources"})
    assert imports("remote").isdisjoint({"dandi", "sources"})
    assert {"dandi", "remote", "http"} <= imports("sources")


def test_results_of_a_streamed_asset_record_the_asset(
    archive: DandiTestServer, tmp_path: Path
) -> None:
    """The derived file of a DANDI source names the asset, its version and its digest."""
    from pynwb import NWBHDF5IO

    from nwb_llmdecode.config import FitConfig
    from nwb_llmdecode.pipeline import fit

    asset = _asset(archive)
    source = f"DANDI:{DANDISET}/draft/{PATH}"
    report = fit(
        source,
        config=FitConfig(backbone="ridge", salience="none", seq_len=10),
        out=tmp_path / "r.nwb",
        checkpoint=False,
    )
    with NWBHDF5IO(str(report.output), "r") as io:
        run = io.read().processing["llmdecode"]["decoding_run"].to_dataframe().iloc[0]
    assert run["source"] == f"{source} (DANDI asset {asset.asset_id}, version draft)"
    assert run["source_sha256"] == f"sha256:{asset.sha256}"
    assert run["source_identifier"]
