"""Command line: ``nwb-llmdecode inspect|synth|fit|predict|dandi``.

A thin layer over :mod:`nwb_llmdecode.pipeline` and the readers. Errors that are the
user's to fix print as one line on stderr with exit code 2 (``--debug`` shows the
traceback). Heavy imports happen inside the commands so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

log = logging.getLogger("nwb_llmdecode")


# ----------------------------------------------------------------------------------------
# output helpers
# ----------------------------------------------------------------------------------------


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list | tuple):
            return "x".join(str(x) for x in v)
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


class _TqdmProgress:
    """``progress(stage, done, total)`` drawn as one tqdm bar per stage."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.stage: str | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=stage, leave=False, file=sys.stderr)
        if self.bar is not None:
            self.bar.total = total
            self.bar.n = done
            self.bar.refresh()
            if done >= total:
                self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.stage = None, None


# ----------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .io.read import inspect_source

    info = inspect_source(args.source, cache_dir=args.cache_dir)
    if args.json:
        print(json.dumps(info, default=str))
        return 0
    s = info["session"]
    print(
        f"{s['source']}\n  {s['session_description']}\n  identifier {s['identifier']}, "
        f"start {s['session_start_time']}"
        + ("  [has llmdecode results]" if s.get("has_results") else "")
    )
    print("\nROI response series")
    print(
        _table(
            info["roi_series"],
            ["path", "n_rois", "n_frames", "rate", "timestamps", "start", "plane_segmentation"],
        )
    )
    print("\nBehaviour candidates")
    print(
        _table(
            info["behavior_series"],
            ["path", "type", "n_channels", "n_samples", "rate", "timestamps", "unit"],
        )
    )
    print("\nSummary images")
    print(_table(info["images"], ["path", "type", "shape"]))
    print("\nImaging planes")
    print(
        _table(
            info["imaging_planes"],
            ["name", "imaging_rate", "grid_spacing", "origin_coords", "location"],
        )
    )
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synthetic import make_session

    truth = make_session(
        args.out,
        frames=args.frames,
        rois=args.rois,
        planes=args.planes,
        seed=args.seed,
        frame_rate=args.frame_rate,
        n_drivers=args.drivers,
        n_channels=args.channels,
        readout=args.readout,
        mask=args.mask,
        behavior_timestamps=args.behavior_timestamps,
        raw_imaging=args.raw_imaging,
        overwrite=args.overwrite,
    )
    if args.json:
        print(truth.to_json())
    else:
        print(
            f"wrote {truth.path}: {truth.n_frames} frames, {truth.n_rois} ROIs in "
            f"{truth.n_planes} plane(s); driver ROIs {truth.driver_rois.tolist()}"
        )
    return 0


_FIT_KEYS = (
    "backbone",
    "init",
    "train_mode",
    "embedding",
    "embedding_kernel",
    "seq_len",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "device",
    "quantize",
    "gradient_checkpointing",
    "trust_remote_code",
    "patience",
    "salience",
)


def _load_config_file(path: str) -> dict[str, Any]:
    from .errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{p}: config files are TOML (.toml) or YAML (.yaml/.yml)")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{p}: cannot parse ({exc}); fix the syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: must hold a table/mapping of options")
    data = data.get("fit", data)  # allow a [fit] table
    return {k.replace("-", "_"): v for k, v in data.items()}


def _fit_config(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from .config import FitConfig

    options: dict[str, Any] = _load_config_file(args.config) if args.config else {}
    job = {k: options.pop(k) for k in ("rois", "behavior", "out") if k in options}
    for k in _FIT_KEYS:
        v = getattr(args, k, None)
        if v is not None:
            options[k] = v
    if getattr(args, "split", None):
        options["split"] = tuple(float(x) for x in args.split.split(","))
    return FitConfig.from_dict(options), job


def _print_metrics(metrics: list[dict[str, Any]], stream: Any) -> None:
    print(
        _table(metrics, ["behavior", "channel", "split", "rmse", "r2", "pearson", "n_frames"]),
        file=stream,
    )


def _cmd_fit(args: argparse.Namespace) -> int:
    from .pipeline import fit

    config, job = _fit_config(args)
    progress = _TqdmProgress(enabled=not args.quiet and sys.stderr.isatty())
    try:
        report = fit(
            args.source,
            config=config,
            rois=args.rois or job.get("rois"),
            behavior=args.behavior or job.get("behavior"),
            out=args.out or job.get("out"),
            in_place=args.in_place,
            overwrite=args.overwrite,
            cache_dir=args.cache_dir,
            ablation=_csv(args.ablation, int),
            progress=progress,
        )
    finally:
        progress.close()
    stream = sys.stderr if args.json else sys.stdout
    if report.results is not None and report.results.ablation:
        _print_ablation(report.results.ablation, stream)
    print(
        f"\nwrote {report.output}"
        + (f" (decoder: {report.checkpoint})" if report.checkpoint else ""),
        file=stream,
    )
    _print_metrics(report.metrics, stream)
    if report.results is not None and report.results.salience is not None:
        _print_top_salience(report.results, stream)
    if args.json:
        print(report.to_json())
    return 0


def _print_top_salience(results: Any, stream: Any, n: int = 10) -> None:
    import numpy as np

    from .salience import salience_order

    sal = results.salience
    values = np.asarray(sal["salience"].values, dtype=float)
    session = results.session
    rows = []
    for rank, i in enumerate(salience_order(values)[:n], start=1):
        rows.append(
            {
                "rank": rank,
                "roi": int(session["roi"].values[i]),
                "plane": str(session["plane"].values[i]),
                "roi_id": int(session["roi_id"].values[i]),
                "salience": f"{values[i]:.4g}",
            }
        )
    print(f"\nMost salient ROIs ({sal.attrs.get('method', 'salience')}, test block)", file=stream)
    print(_table(rows, ["rank", "roi", "plane", "roi_id", "salience"]), file=stream)


def _print_ablation(rows: list[dict[str, Any]], stream: Any) -> None:
    import numpy as np

    summary = []
    for k in sorted({r["k"] for r in rows}):
        sal = [r["delta_rmse"] for r in rows if r["k"] == k and r["kind"] == "salient"]
        rnd = [r["delta_rmse"] for r in rows if r["k"] == k and r["kind"] == "random"]
        summary.append(
            {
                "k": k,
                "salient_delta_rmse": float(np.mean(sal)),
                "random_delta_rmse": float(np.mean(rnd)) if rnd else None,
                "random_draws": len(rnd),
            }
        )
    print("\nAblation check (test RMSE increase)", file=stream)
    print(
        _table(summary, ["k", "salient_delta_rmse", "random_delta_rmse", "random_draws"]),
        file=stream,
    )


def _cmd_ablate(args: argparse.Namespace) -> int:
    from .pipeline import ABLATION_KS, ablate

    rows = ablate(
        args.results,
        checkpoint=args.checkpoint,
        ks=_csv(args.k, int) or ABLATION_KS,
        draws=args.draws,
    )
    stream = sys.stderr if args.json else sys.stdout
    _print_ablation(rows, stream)
    print(f"wrote processing/llmdecode/salience_ablation into {args.results}", file=stream)
    if args.json:
        print(json.dumps({"results": str(args.results), "ablation": rows}))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .pipeline import predict

    report = predict(
        args.checkpoint,
        args.source,
        rois=args.rois,
        behavior=args.behavior,
        out=args.out,
        overwrite=args.overwrite,
        cache_dir=args.cache_dir,
    )
    stream = sys.stderr if args.json else sys.stdout
    print(f"wrote {report.output}", file=stream)
    _print_metrics(report.metrics, stream)
    if args.json:
        print(report.to_json())
    return 0


def _csv(text: str | None, cast: Any = str) -> tuple[Any, ...] | None:
    return None if text is None else tuple(cast(v.strip()) for v in text.split(",") if v.strip())


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import CompareGrid, run_compare

    base, job = _fit_config(args)
    defaults = CompareGrid()
    grid = CompareGrid(
        models=_csv(args.models) or defaults.models,
        inits=_csv(args.init_list) or defaults.inits,
        seq_lens=_csv(args.seq_lens, int) or defaults.seq_lens,
        embeddings=_csv(args.embeddings) or (base.embedding,),
        train_modes=_csv(args.train_modes) or (base.train_mode,),
        seeds=args.seeds if args.seeds is not None else defaults.seeds,
    )
    progress = _TqdmProgress(enabled=not args.quiet and sys.stderr.isatty())
    try:
        report = run_compare(
            args.source,
            grid=grid,
            base=base,
            report_dir=args.report,
            rois=args.rois or job.get("rois"),
            behavior=args.behavior or job.get("behavior"),
            resume=args.resume,
            overwrite=args.overwrite,
            cache_dir=args.cache_dir,
            progress=progress,
        )
    finally:
        progress.close()
    stream = sys.stderr if args.json else sys.stdout
    print(f"wrote {report.html} ({len(report.results)} runs)", file=stream)
    if args.json:
        print(report.to_json())
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .io.convert import convert_nlp4neuro

    out = convert_nlp4neuro(
        args.neural,
        args.tail,
        args.out,
        frame_rate=args.frame_rate,
        tail_full=args.tail_full,
        positions=args.positions,
        subject_id=args.subject_id,
        age=args.age,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


def _cmd_dandi_ls(args: argparse.Namespace) -> int:
    from .io.dandi import list_assets

    assets = list_assets(args.spec)
    if args.json:
        print(json.dumps(assets, default=str))
    else:
        for a in assets:
            a["size_mb"] = round(a.get("size", 0) / 1e6, 2)
        print(_table(assets, ["path", "size_mb", "asset_id"]))
    return 0


# ----------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rois",
        action="append",
        metavar="SERIES",
        help="ROI series by path or name (repeat for several planes); default: "
        "the ΔF/F series of every plane",
    )
    p.add_argument(
        "--behavior",
        action="append",
        metavar="SERIES",
        help="behaviour series by path or name (repeat for several)",
    )
    p.add_argument("--cache-dir", help="block cache for remote sources")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="nwb-llmdecode",
        description="Decode behaviour from calcium imaging in NWB with language-model "
        "backbones; write predictions, metrics and salience back as NWB.",
    )
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="list ROI series, behaviour, images and planes of a file")
    p.add_argument("source", help="NWB file, URL or DANDI identifier")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cache-dir", help="block cache for remote sources")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("synth", help="write a synthetic session with planted driver ROIs")
    p.add_argument("out", help="output .nwb file")
    p.add_argument("--frames", type=int, default=1200)
    p.add_argument("--rois", type=int, default=300)
    p.add_argument("--planes", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frame-rate", type=float, default=2.0)
    p.add_argument("--drivers", type=int, default=10, help="number of driver ROIs")
    p.add_argument("--channels", type=int, default=3, help="tail-angle channels")
    p.add_argument(
        "--readout",
        choices=["linear", "bouts"],
        default="linear",
        help="driver -> tail angle mapping: near-linear, or swim bouts (vigour x "
        "bend, which linear decoders cannot represent)",
    )
    p.add_argument("--mask", choices=["image", "pixel", "voxel"], default="image")
    p.add_argument(
        "--behavior-timestamps",
        action="store_true",
        help="store behaviour with timestamps instead of a rate",
    )
    p.add_argument("--raw-imaging", action="store_true", help="add a raw TwoPhotonSeries")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true", help="print the planted truth as JSON")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("fit", help="train a decoder and write the results as NWB")
    p.add_argument("source", help="NWB file, URL or DANDI identifier")
    _selection_args(p)
    g = p.add_argument_group("model")
    g.add_argument(
        "--backbone",
        help="minilm (default), smollm2, ridge, lstm, reservoir, a "
        "HuggingFace model id or a local model directory",
    )
    g.add_argument("--init", choices=["pretrained", "random"], help="backbone weights")
    g.add_argument("--train-mode", choices=["frozen", "lora", "full"])
    g.add_argument(
        "--embedding",
        choices=["temporal", "linear", "positional"],
        help="input embedding (default temporal)",
    )
    g.add_argument(
        "--embedding-kernel",
        type=int,
        help="frames per token of the temporal embedding (default 3)",
    )
    g.add_argument("--seq-len", type=int, help="window length in frames (default 20)")
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="allow a hub model's own code to run (off by default)",
    )
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    g.add_argument("--seed", type=int)
    g.add_argument("--split", help="train,validation,test fractions (default 0.7,0.1,0.2)")
    g.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--quantize", choices=["4bit", "8bit"], help="load the backbone quantised")
    g.add_argument("--gradient-checkpointing", action="store_true", default=None)
    g = p.add_argument_group("salience")
    g.add_argument(
        "--salience",
        choices=["integrated-gradients", "saliency", "grad-x-input", "none"],
        help="attribution per ROI and frame on the test block (default integrated-gradients)",
    )
    g.add_argument(
        "--ablation",
        nargs="?",
        const="10,50,100",
        default=None,
        metavar="K,K,...",
        help="ablate the top-k salient vs k random ROIs (default k: 10,50,100)",
    )
    g = p.add_argument_group("output")
    g.add_argument("--out", help="output file (default <stem>_desc-llmdecode.nwb)")
    g.add_argument("--in-place", action="store_true", help="add results to the source file")
    g.add_argument("--overwrite", action="store_true", help="replace existing results")
    g.add_argument("--config", help="TOML or YAML file of options (the command line wins)")
    g.add_argument(
        "--json", action="store_true", help="print a JSON summary as the last line of stdout"
    )
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("compare", help="run a grid of decoders and seeds; write a report")
    p.add_argument("source", help="NWB file, URL or DANDI identifier")
    _selection_args(p)
    p.add_argument(
        "--models",
        help="comma-separated backbones and baselines (default minilm,ridge,lstm,reservoir)",
    )
    p.add_argument("--init", dest="init_list", help="pretrained,random (default both)")
    p.add_argument("--seq-len", dest="seq_lens", help="comma-separated (default 5,10,20)")
    p.add_argument(
        "--embedding", dest="embeddings", help="temporal,linear,positional (default temporal)"
    )
    p.add_argument("--train-mode", dest="train_modes", help="frozen,lora,full (default full)")
    p.add_argument("--seeds", type=int, help="seeds per setting (default 3)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--patience", type=int)
    p.add_argument("--seed", type=int, help="first seed")
    p.add_argument("--device")
    p.add_argument("--split", help="train,validation,test fractions")
    p.add_argument("--config", help="TOML or YAML file of fit options")
    p.add_argument("--report", default="compare-report", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted comparison")
    p.add_argument("--overwrite", action="store_true", help="start again in --report")
    p.add_argument("--json", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("ablate", help="the ablation check on a results file")
    p.add_argument("results", help="a *_desc-llmdecode.nwb file written by fit with salience")
    p.add_argument("--checkpoint", help="decoder directory (default <results stem>_checkpoint)")
    p.add_argument("--k", help="comma-separated numbers of ROIs (default 10,50,100)")
    p.add_argument("--draws", type=int, default=5, help="random draws per k")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_ablate)

    p = sub.add_parser("predict", help="apply a saved decoder to another session")
    p.add_argument("checkpoint", help="the *_checkpoint directory written by fit")
    p.add_argument("source", help="NWB file, URL or DANDI identifier (same ROIs)")
    _selection_args(p)
    p.add_argument("--out")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "convert-nlp4neuro", help="turn NLP4Neuro .npy files (doi:10.7910/DVN/I8LULX) into NWB"
    )
    p.add_argument("neural", help="fishN_neural_data_matched.npy (neurons x (frames + 2))")
    p.add_argument("tail", help="fishN_tail_data_matched.npy (frames x 6)")
    p.add_argument("out", help="output .nwb file")
    p.add_argument(
        "--frame-rate",
        type=float,
        required=True,
        help="imaging volume rate in Hz (not stored in the files)",
    )
    p.add_argument("--tail-full", help="fishN_tail_data_full.npy (200 Hz samples)")
    p.add_argument("--positions", help=".npy of ROI positions (neurons x 2 or 3, pixels)")
    p.add_argument("--subject-id", default="fish")
    p.add_argument("--age", help="age in ISO 8601 (e.g. P7D)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("dandi", help="browse the DANDI archive")
    dsub = p.add_subparsers(dest="dandi_command", required=True, metavar="SUBCOMMAND")
    q = dsub.add_parser("ls", help="list assets of a dandiset with their sizes")
    q.add_argument("spec", help="DANDISET[@VERSION][/PATH-PREFIX], e.g. 000123@draft/sub-1")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_cmd_dandi_ls)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nwb-llmdecode`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    import warnings

    from .errors import LLMDecodeError

    def _one_line(message: Any, category: Any, filename: str, lineno: int, line: Any = None) -> str:
        return f"nwb-llmdecode: warning: {message}\n"

    warnings.formatwarning = _one_line
    try:
        return int(args.func(args) or 0)
    except LLMDecodeError as exc:
        if args.debug:
            raise
        print(f"nwb-llmdecode: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("nwb-llmdecode: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if args.debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"nwb-llmdecode: internal error: {type(exc).__name__}: {msg} "
            "(rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
