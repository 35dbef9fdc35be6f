"""Time and bytes to load a session streamed from a DANDI archive vs downloading it.

A synthetic session with a large raw TwoPhotonSeries is served by the test archive of
``tests/dandi_server.py`` (real HTTP on 127.0.0.1, real dandi client), throttled to a
realistic link: ``--bandwidth`` bytes/s per response and ``--latency`` seconds added to
every request. Compared:

- download: the dandi client downloads the whole asset, then ``load_session`` reads it;
- stream (cold): ``load_session("DANDI:…")`` with an empty block cache;
- stream (warm): the same again, with the cache of the cold run;
- inspect (cold): ``inspect_source("DANDI:…")`` with an empty cache;
- a sweep of the block size (cold ``load_session``).

Run from the repository root::

    .venv/bin/python benchmarks/bench_remote.py            # ~110 MB file, 20 MB/s, 20 ms
    .venv/bin/python benchmarks/bench_remote.py --frames 1200 --rois 150   # 23 MB file

Prints a Markdown table (results are recorded in ``benchmarks/REMOTE.md``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dandi_server import DandiTestServer

PATH = "sub-fish01/sub-fish01_ses-01_ophys.nwb"


def _row(name: str, seconds: float, nbytes: int, requests: int, size: int) -> str:
    return (
        f"| {name} | {seconds:.2f} | {nbytes / 1e6:.2f} | {100 * nbytes / size:.1f} % "
        f"| {requests} |"
    )


def _stream_with(source: str, cache: str, block_size: int) -> dict[str, Any]:
    """Cold load through open_remote_h5 with a given block size."""
    from pynwb import NWBHDF5IO

    from nwb_llmdecode.io.read import read_session
    from nwb_llmdecode.io.remote import RemoteOptions, open_remote_h5
    from nwb_llmdecode.io.sources import NWBSource

    opts = RemoteOptions.from_env(block_size=block_size)
    with open_remote_h5(source, cache_dir=cache, options=opts) as (h5, url, stats):
        io = NWBHDF5IO(file=h5, mode="r", load_namespaces=True)
        try:
            read_session(NWBSource(nwbfile=io.read(), label=source, url=url, stats=stats))
        finally:
            io.close()
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--rois", type=int, default=300)
    parser.add_argument("--bandwidth", type=float, default=20e6, help="bytes/s")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    args = parser.parse_args()

    os.environ.setdefault("DANDI_NO_ET", "1")
    from dandi.dandiapi import DandiAPIClient

    from nwb_llmdecode import inspect_source, load_session
    from nwb_llmdecode.synthetic import make_session

    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    nwb = work / "session.nwb"
    make_session(
        nwb,
        frames=args.frames,
        rois=args.rois,
        planes=1,
        seed=0,
        behavior_rate=20.0,
        mask="pixel",
        fluorescence=False,
        raw_imaging=True,
    )
    size = nwb.stat().st_size
    import h5py

    with h5py.File(nwb, "r") as f:
        raw = f["acquisition/TwoPhotonSeries/data"]
        raw_bytes = raw.id.get_storage_size()
        raw_shape = raw.shape

    rows = []
    with DandiTestServer(bandwidth=args.bandwidth, latency=args.latency) as archive:
        archive.add_dandiset("000123")
        archive.add_asset("000123", PATH, nwb)
        os.environ["NWB_LLMDECODE_DANDI_API"] = archive.api_url
        source = f"DANDI:000123/draft/{PATH}"
        # warm-up, not timed: imports (dandi, pynwb) and instance discovery
        from nwb_llmdecode.io.dandi import list_assets

        list_assets("000123")
        inspect_source(nwb)

        archive.reset_counts()
        t0 = time.perf_counter()
        with DandiAPIClient(api_url=archive.api_url) as client:
            asset = client.get_dandiset("000123", "draft").get_asset_by_path(PATH)
            asset.download(work / "downloaded.nwb")
        load_session(work / "downloaded.nwb")
        rows.append(
            _row(
                "download whole file + load",
                time.perf_counter() - t0,
                archive.blob_bytes,
                archive.requests["blob"],
                size,
            )
        )

        cache = str(work / "cache")
        archive.reset_counts()
        t0 = time.perf_counter()
        load_session(source, cache_dir=cache)
        rows.append(
            _row(
                "stream, cold cache: load_session",
                time.perf_counter() - t0,
                archive.blob_bytes,
                archive.requests["blob"],
                size,
            )
        )
        archive.reset_counts()
        t0 = time.perf_counter()
        load_session(source, cache_dir=cache)
        rows.append(
            _row(
                "stream, warm cache: load_session",
                time.perf_counter() - t0,
                archive.blob_bytes,
                archive.requests["blob"],
                size,
            )
        )
        archive.reset_counts()
        t0 = time.perf_counter()
        inspect_source(source, cache_dir=str(work / "cache-inspect"))
        rows.append(
            _row(
                "stream, cold cache: inspect",
                time.perf_counter() - t0,
                archive.blob_bytes,
                archive.requests["blob"],
                size,
            )
        )
        for bs in (16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024):
            archive.reset_counts()
            t0 = time.perf_counter()
            _stream_with(source, str(work / f"cache-{bs}"), bs)
            rows.append(
                _row(
                    f"stream, cold, block {bs // 1024} KiB",
                    time.perf_counter() - t0,
                    archive.blob_bytes,
                    archive.requests["blob"],
                    size,
                )
            )

    print(
        f"File: {size / 1e6:.1f} MB, raw TwoPhotonSeries {raw_shape} = {raw_bytes / 1e6:.1f} MB "
        f"({100 * raw_bytes / size:.1f} %); link {args.bandwidth / 1e6:g} MB/s, "
        f"{args.latency * 1e3:g} ms per request.\n"
    )
    print("| case | seconds | MB from blob | of file | blob requests |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
