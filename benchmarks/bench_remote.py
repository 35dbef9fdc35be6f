"""Streaming layers side by side: ours (io/remote.py), remfile and fsspec, on one archive.

Every layer opens the same assets of the local DANDI test server of
``tests/dandi_server.py`` (real HTTP on 127.0.0.1, real dandi client resolving the
identifier), throttled alike: every response body at ``--bandwidth`` bytes/s and
``--latency`` seconds added to every request. Layers:

- ``ours``: ``nwb_llmdecode.io.remote`` (64 KiB blocks, growing read-ahead, LRU disk cache);
- ``remfile``: ``remfile.File`` with its ``DiskCache`` (library defaults: 100 KiB chunks,
  read-ahead growing by 1.7x);
- ``fsspec-block``: fsspec's ``HTTPFileSystem.open(cache_type="blockcache")`` (library
  default 5 MiB blocks, in memory only: a new open starts cold);
- ``fsspec-cached``: fsspec's ``CachingFileSystem`` (``blockcache::http``: the same
  blocks kept on disk in sparse files);
- ``fsspec-simple``: fsspec's ``simplecache::http`` (downloads the whole file on first
  open, then reads the local copy).

Cases, each run for every layer before the next case starts (the layers interleaved, so
they share the same machine load): cold and warm ``load_session`` and ``inspect_source``
of a 114 MB session and a full ``fit --backbone ridge`` (``pipeline.fit``, which opens the
source twice) of a 23 MB session (ridge fitting of the larger one is 30 s of CPU per run)
at 20 and 80 ms per request; cold
and warm ``load_session`` and ``inspect_source`` of a 1 GB session (written once into
``--work``, not committed); and an expiring-URL case (the server presigns blob URLs that
expire after ``--expiry`` seconds, shorter than the read).

"MB" and "req." are what the server's blob route sent and answered, counted by the
server; seconds are wall time of the call, including the identifier's resolution through
the API (the same 4 API requests for every layer).

Run from the repository root::

    .venv/bin/python benchmarks/bench_remote.py                # all cases (~8 min)
    .venv/bin/python benchmarks/bench_remote.py --no-big       # without the 1 GB asset
    .venv/bin/python benchmarks/bench_remote.py --expiry-only  # the expiring URL only

Prints Markdown tables (recorded in ``benchmarks/REMOTE.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dandi_server import DandiTestServer

PATH = "sub-fish01/sub-fish01_ses-01_ophys.nwb"
FIT_PATH = "sub-fish01/sub-fish01_ses-02_ophys.nwb"
BIG_PATH = "sub-fish02/sub-fish02_ses-01_ophys.nwb"
LAYERS = ("ours", "remfile", "fsspec-block", "fsspec-cached", "fsspec-simple")


# ----------------------------------------------------------------------------------------
# the layers: each opens a resolved URL as a file object for h5py
# ----------------------------------------------------------------------------------------


class _RenewingURL:
    """remfile's URL-renewal protocol (an object with ``get_url()``): re-resolve the
    source through the DANDI API when the presigned URL is about to expire."""

    def __init__(self, resolved: Any, resolve: Callable[[str], Any]) -> None:
        self.source, self.resolve = resolved.source, resolve
        self.url = resolved.url

    def get_url(self) -> str:
        from urllib.parse import parse_qs, urlsplit

        q = parse_qs(urlsplit(self.url).query)
        if "X-Amz-Expires" in q:
            deadline = float(q["X-Amz-Date"][0]) + float(q["X-Amz-Expires"][0])
            if time.time() > deadline - 0.2:
                self.url = self.resolve(self.source).url
        return self.url


@contextlib.contextmanager
def _open_layer(layer: str, resolved: Any, cache: Path) -> Iterator[tuple[Any, dict]]:
    """(h5py.File, stats) of a resolved source through ``layer``, as ``open_nwb`` wants."""
    import h5py

    from nwb_llmdecode.io.dandi import resolve_source

    url, size = resolved.url, resolved.size
    closers: list[Callable[[], Any]] = []
    if layer == "remfile":
        import remfile

        (cache / "remfile").mkdir(parents=True, exist_ok=True)
        fobj: Any = remfile.File(
            _RenewingURL(resolved, resolve_source),
            disk_cache=remfile.DiskCache(str(cache / "remfile")),
            _size=size,
        )
    elif layer == "fsspec-block":
        from fsspec.implementations.http import HTTPFileSystem

        fs = HTTPFileSystem(skip_instance_cache=True)
        fobj = fs.open(url, "rb", cache_type="blockcache", size=size)
        closers.append(fobj.close)
    elif layer in ("fsspec-cached", "fsspec-simple"):
        import fsspec

        proto = "blockcache" if layer == "fsspec-cached" else "simplecache"
        fs = fsspec.filesystem(
            proto,
            target_protocol="http",
            cache_storage=str(cache / proto),
            skip_instance_cache=True,
        )
        fobj = fs.open(url, "rb")
        closers.append(fobj.close)
    else:
        raise ValueError(layer)
    h5 = h5py.File(fobj, "r")
    try:
        yield h5, {"url": url}
    finally:
        h5.close()
        for close in closers:
            close()


@contextlib.contextmanager
def _using(layer: str) -> Iterator[None]:
    """Route ``open_nwb``'s opening of a resolved remote HDF5 file through ``layer``."""
    if layer == "ours":
        yield
        return
    import nwb_llmdecode.io.sources as sources

    def opener(resolved: Any, *, cache_dir: Any = None, **_: Any) -> Any:
        return _open_layer(layer, resolved, Path(cache_dir))

    saved = sources._open_blob
    sources._open_blob = opener
    try:
        yield
    finally:
        sources._open_blob = saved


# ----------------------------------------------------------------------------------------
# the cases
# ----------------------------------------------------------------------------------------


def _fit(source: str, cache: Path, out: Path) -> None:
    from nwb_llmdecode.config import FitConfig
    from nwb_llmdecode.pipeline import fit

    fit(
        source,
        config=FitConfig(backbone="ridge"),
        out=out,
        overwrite=True,
        cache_dir=cache,
        checkpoint=False,
    )


def _measure(archive: DandiTestServer, layer: str, call: Callable[[], Any]) -> dict[str, Any]:
    # No garbage collection while a call runs: a collection in a server thread that frees
    # an h5py object waits for h5py's global lock, which the reading thread holds while it
    # waits for that server's answer (a deadlock of the in-process server, not of a layer).
    gc.collect()
    gc.disable()
    archive.reset_counts()
    t0 = time.perf_counter()
    error = None
    with _using(layer):
        try:
            call()
        except Exception as exc:  # the expiring-URL case: layers that cannot renew fail
            error = " ".join(f"{type(exc).__name__}: {exc}".split())[:90]
            if os.environ.get("BENCH_DEBUG"):
                traceback.print_exc()
        finally:
            gc.enable()
    return {
        "s": time.perf_counter() - t0,
        "bytes": archive.blob_bytes,
        "req": archive.requests["blob"],
        "expired": archive.expired,
        "error": error,
    }


def _table(title: str, rows: dict[str, dict[str, dict[str, Any]]], size: int) -> str:
    cases = list(next(iter(rows.values())))
    head = "| case | " + " | ".join(f"{layer} s / MB / req." for layer in rows) + " |"
    out = [f"**{title}**", "", head, "|---|" + "---:|" * len(rows)]
    for case in cases:
        cells = []
        for layer in rows:
            r = rows[layer][case]
            if r["error"]:
                cells.append(f"failed after {r['s']:.2f} s ({r['error']})")
            else:
                cells.append(f"{r['s']:.2f} / {r['bytes'] / 1e6:.2f} / {r['req']}")
        out.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _run_cases(
    archive: DandiTestServer,
    source: str,
    work: Path,
    tag: str,
    cases: list[tuple[str, str]],
    fit_source: str = "",
) -> dict[str, dict[str, dict[str, Any]]]:
    """``cases``: (name, kind) with kind load/inspect/fit; cold = fresh cache dir."""
    from nwb_llmdecode import inspect_source, load_session

    rows: dict[str, dict[str, dict[str, Any]]] = {layer: {} for layer in LAYERS}
    # untimed: the server's first reads of an asset's pages (from disk) and first imports
    # would otherwise be charged to whichever layer goes first
    warmup = work / f"cache-{tag}-warmup"
    load_session(source, cache_dir=warmup)
    if fit_source:
        load_session(fit_source, cache_dir=warmup)
    shutil.rmtree(warmup)
    for n, (case, kind) in enumerate(cases):
        order = LAYERS[n % len(LAYERS) :] + LAYERS[: n % len(LAYERS)]  # rotate who goes first
        for layer in order:
            warm = case.startswith("warm")
            cache = work / f"cache-{tag}-{kind}-{layer}"
            if not warm and cache.exists():
                shutil.rmtree(cache)
            cache.mkdir(parents=True, exist_ok=True)
            out = work / f"fit-{layer}.nwb"

            def call(kind: str = kind, c: Path = cache, out: Path = out) -> Any:
                if kind == "load":
                    return load_session(source, cache_dir=c)
                if kind == "inspect":
                    return inspect_source(source, cache_dir=c)
                return _fit(fit_source, c, out)

            rows[layer][case] = _measure(archive, layer, call)
        print(f"  {tag}: {case} done", file=sys.stderr, flush=True)
    return rows


def _session(path: Path, frames: int, rois: int) -> Path:
    from nwb_llmdecode.synthetic import make_session

    if not path.exists():
        tmp = path.with_suffix(".tmp.nwb")
        make_session(
            tmp,
            frames=frames,
            rois=rois,
            planes=1,
            seed=0,
            behavior_rate=20.0,
            mask="pixel",
            fluorescence=False,
            raw_imaging=True,
            overwrite=True,
        )
        os.replace(tmp, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bandwidth", type=float, default=20e6, help="bytes/s")
    parser.add_argument("--latencies", default="0.02,0.08", help="seconds per request")
    parser.add_argument("--expiry", type=float, default=0.5, help="URL lifetime, seconds")
    parser.add_argument("--no-big", action="store_true", help="skip the 1 GB asset")
    parser.add_argument("--no-fit", action="store_true", help="skip the fit cases")
    parser.add_argument("--expiry-only", action="store_true", help="only the expiring-URL case")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "nwb-llmdecode-bench-remote",
        help="where the sessions (and the 1 GB one) are written once and kept",
    )
    args = parser.parse_args()

    os.environ.setdefault("DANDI_NO_ET", "1")
    from nwb_llmdecode import inspect_source
    from nwb_llmdecode.io.dandi import list_assets

    args.work.mkdir(parents=True, exist_ok=True)
    nwb = _session(args.work / "session-114MB.nwb", frames=3000, rois=300)
    big = (
        None
        if args.no_big or args.expiry_only
        else _session(args.work / "session-1GB.nwb", frames=8500, rois=1000)
    )
    fit_nwb = _session(args.work / "session-23MB.nwb", frames=1200, rois=150)
    size = nwb.stat().st_size
    runs = Path(tempfile.mkdtemp(prefix="runs-", dir=args.work))

    tables = []
    with DandiTestServer(bandwidth=args.bandwidth) as archive:
        archive.add_dandiset("000123")
        archive.add_asset("000123", PATH, nwb)
        archive.add_asset("000123", FIT_PATH, fit_nwb)
        if big is not None:
            archive.add_asset("000123", BIG_PATH, big)
        os.environ["NWB_LLMDECODE_DANDI_API"] = archive.api_url
        source = f"DANDI:000123/draft/{PATH}"
        list_assets("000123")  # warm-up, not timed: imports and instance discovery
        inspect_source(nwb)

        cases = [
            ("cold load_session", "load"),
            ("warm load_session", "load"),
            ("cold inspect", "inspect"),
            ("warm inspect", "inspect"),
        ]
        if not args.no_fit:
            cases += [("cold fit ridge (23 MB)", "fit"), ("warm fit ridge (23 MB)", "fit")]
        latencies = [] if args.expiry_only else [float(x) for x in args.latencies.split(",")]
        for latency in latencies:
            archive.latency = latency
            rows = _run_cases(
                archive,
                source,
                runs,
                f"{latency * 1e3:g}ms",
                cases,
                fit_source=f"DANDI:000123/draft/{FIT_PATH}",
            )
            tables.append(
                _table(
                    f"{size / 1e6:.0f} MB session, {args.bandwidth / 1e6:g} MB/s, "
                    f"{latency * 1e3:g} ms per request",
                    rows,
                    size,
                )
            )
        if big is not None and not args.expiry_only:
            archive.latency = 0.02
            rows = _run_cases(
                archive,
                f"DANDI:000123/draft/{BIG_PATH}",
                runs,
                "big",
                [
                    ("cold load_session", "load"),
                    ("warm load_session", "load"),
                    ("cold inspect", "inspect"),
                ],
            )
            tables.append(
                _table(
                    f"{big.stat().st_size / 1e9:.2f} GB session, {args.bandwidth / 1e6:g} MB/s, "
                    "20 ms per request",
                    rows,
                    big.stat().st_size,
                )
            )
        archive.latency = 0.08
        archive.url_expiry = args.expiry
        rows = _run_cases(archive, source, runs, "expiry", [("cold load_session", "load")])
        tables.append(
            _table(
                f"Expiring URL: blob URLs expire {args.expiry:g} s after signing; "
                f"{size / 1e6:.0f} MB session, 80 ms per request",
                rows,
                size,
            )
        )
    shutil.rmtree(runs, ignore_errors=True)
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
