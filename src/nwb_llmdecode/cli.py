"""Command line: ``nwb-llmdecode inspect|synth|fit|predict|dandi``.

A thin layer over :mod:`nwb_llmdecode.pipeline` and the readers. Errors that are the
user's to fix print as one line on stderr with exit code 2 (``--debug`` shows the
traceback). Heavy imports happen inside the commands so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

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
    """``progress(stage, done, total)`` drawn as one tqdm bar per stage (on a terminal)."""

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
            self.bar.update(max(0, done - self.bar.n))  # update(): a true rate and ETA
            if done >= total:
                self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.stage = None, None


def _progress(quiet: bool) -> _TqdmProgress:
    """Bars on a terminal; elsewhere (logs, batch jobs) one line per epoch and per
    salience chunk, from the ``nwb_llmdecode.progress`` logger."""
    tty = sys.stderr.isatty()
    if not quiet and not tty:
        plog = logging.getLogger("nwb_llmdecode.progress")
        for h in [h for h in plog.handlers if getattr(h, "_llmdecode_lines", False)]:
            plog.removeHandler(h)  # main() may run more than once in a process
        if not logging.getLogger("nwb_llmdecode").isEnabledFor(logging.INFO):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("nwb-llmdecode: %(message)s"))
            handler._llmdecode_lines = True  # type: ignore[attr-defined]
            plog.addHandler(handler)
            plog.propagate = False
        else:  # -v: the root handler shows it already
            plog.propagate = True
        plog.setLevel(logging.INFO)
    return _TqdmProgress(enabled=not quiet and tty)


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
    from .synthetic import make_session, make_sessions

    common = dict(
        frames=args.frames,
        planes=args.planes,
        frame_rate=args.frame_rate,
        n_drivers=args.drivers,
        n_channels=args.channels,
        readout=args.readout,
        population=args.population,
        decoys=args.decoys,
        spread_drivers=args.spread_drivers,
        noise=args.noise,
        mask=args.mask,
        behavior_timestamps=args.behavior_timestamps,
        raw_imaging=args.raw_imaging,
        recording=args.recording,
        overwrite=args.overwrite,
    )
    if args.sessions is not None:
        truths = make_sessions(
            args.out,
            args.sessions,
            rois=args.rois,
            roi_step=args.roi_step,
            seed=args.seed,
            **common,
        )
    else:
        truths = [make_session(args.out, rois=args.rois, seed=args.seed, **common)]
    for truth in truths:
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
    "residual",
    "blend_lstm",
    "screen",
    "embedding_kernel",
    "seq_len",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "ensemble",
    "device",
    "quantize",
    "gradient_checkpointing",
    "trust_remote_code",
    "patience",
    "train_stride",
    "backbone_dropout",
    "precision",
    "compile",
    "salience",
    "salience_stride",
)
_JOB_KEYS = ("rois", "behavior", "out")


def _load_config_file(path: str) -> dict[str, Any]:
    from .errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    if p.suffix.lower() not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"{p}: config files are TOML (.toml) or YAML (.yaml/.yml)")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte {e.start}); save the config file as UTF-8"
        ) from None
    try:
        if p.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"{p}: cannot parse ({reason}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: must hold a table/mapping of options, not a {type(data).__name__}")
    if "fit" in data:  # allow a [fit] table
        data = data["fit"]
        if not isinstance(data, dict):
            raise ConfigError(
                f"{p}: 'fit' must be a table of options ([fit] in TOML, a mapping in YAML), "
                f"not a {type(data).__name__}"
            )
    options = {str(k).replace("-", "_"): v for k, v in data.items()}
    if "trust_remote_code" in options:
        raise ConfigError(
            f"{p}: trust_remote_code cannot be set in a config file (a file never switches "
            "on code execution); pass --trust-remote-code on the command line"
        )
    for key in ("rois", "behavior"):
        v = options.get(key)
        if v is not None and not (
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
        ):
            raise ConfigError(
                f"{p}: {key} = {v!r} is not valid: expected a series name or a list of names"
            )
    v = options.get("out")
    if v is not None and (not isinstance(v, str) or not v.strip()):
        raise ConfigError(f"{p}: out = {v!r} is not valid: expected an output file name")
    return options


def _parse_split(text: str) -> tuple[float, ...]:
    from .errors import ConfigError

    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--split {text}: expected three comma-separated fractions (train,validation,test) "
            "summing to 1, e.g. --split 0.7,0.1,0.2"
        ) from None


def _fit_config(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from .config import FitConfig
    from .errors import ConfigError

    options: dict[str, Any] = _load_config_file(args.config) if args.config else {}
    job = {k: options.pop(k) for k in _JOB_KEYS if k in options}
    if args.config:
        try:  # a bad value in the file: name the file
            FitConfig.from_dict(options)
        except ConfigError as e:
            raise ConfigError(f"{args.config}: {e}") from None
    for k in _FIT_KEYS:
        v = getattr(args, k, None)
        if v is not None:
            options[k] = v
    if getattr(args, "split", None):
        options["split"] = _parse_split(args.split)
    if getattr(args, "screen_rois", None):
        options["screen_rois"] = _csv(args.screen_rois, int, "--screen-rois")
    search = {
        k: v
        for k, v in (
            ("trials", getattr(args, "search", None)),
            ("timeout", getattr(args, "search_timeout", None)),
        )
        if v is not None
    }
    if search:  # merged into the file's [search] table (checked above), the command line winning
        options["search"] = {**options.get("search", {}), **search}
    return FitConfig.from_dict(options), job


def _print_metrics(metrics: list[dict[str, Any]], stream: Any) -> None:
    print(
        _table(metrics, ["behavior", "channel", "split", "rmse", "r2", "pearson", "n_frames"]),
        file=stream,
    )


def _cmd_fit(args: argparse.Namespace) -> int:
    config, job = _fit_config(args)  # options first: a bad one costs no heavy import
    ablation = _csv(args.ablation, int, "--ablation")
    if len(args.source) > 1:
        return _cmd_fit_many(args, config, job, ablation)
    args.source = args.source[0]

    from .engine.distributed import is_main_process
    from .pipeline import fit

    main_process = is_main_process()  # [distributed] other ranks: no bars, no report
    progress = _progress(args.quiet or not main_process)
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
            ablation=ablation,
            progress=progress,
        )
    finally:
        progress.close()
    if not main_process:
        return 0
    stream = sys.stderr if args.json else sys.stdout
    if report.results is not None and report.results.ablation:
        _print_ablation(report.results.ablation, stream)
    print(
        f"\nwrote {report.output}"
        + (f" (decoder: {report.checkpoint})" if report.checkpoint else ""),
        file=stream,
    )
    _print_metrics(report.metrics, stream)
    if report.results is not None:
        _print_decoder(report.results.run, stream)
        _print_ensemble(report.results.run, stream)
    if report.results is not None and report.results.salience is not None:
        _print_top_salience(report.results, stream)
    if args.json:
        print(report.to_json())
    return 0


def _fit_record(run: dict[str, Any]) -> dict[str, Any]:
    """``decoding_run``'s ``fit_json`` as a dict (empty when absent or unreadable)."""
    try:
        record = json.loads(run.get("fit_json") or "{}")
    except (TypeError, ValueError, AttributeError):
        return {}
    return record if isinstance(record, dict) else {}


def _print_decoder(run: dict[str, Any], stream: Any) -> None:
    """What the default decoder is made of: the blend weights chosen on validation and the
    ROIs the screen kept."""
    record = _fit_record(run)
    parts = []
    if "blend_weight" in record:
        weights = [("transformer", record["blend_weight"])]
        if "blend_lstm_weight" in record:
            weights.append(("LSTM", record["blend_lstm_weight"]))
        ridge = record.get("blend_ridge_weight", round(1.0 - record["blend_weight"], 1))
        weights.append(("ridge", ridge))
        parts.append(
            " + ".join(f"{w:.1f} {name}" for name, w in weights) + " (chosen on validation)"
        )
    if "screen_n_rois" in record:
        kept = record["screen_n_rois"]
        parts.append(
            "the ROI screen kept every ROI"
            if record.get("screen_rois") is None
            else f"the ROI screen kept {kept} ROIs for the transformer and the LSTM"
        )
    if parts:
        print("\ndecoder: " + "; ".join(parts), file=stream)


def _print_ensemble(run: dict[str, Any], stream: Any) -> None:
    """With --ensemble: each seed's test R² next to the averaged decoder's table."""
    try:
        record = json.loads(run.get("fit_json") or "{}").get("ensemble")
    except (TypeError, ValueError, AttributeError):
        return
    if not record:
        return
    per_seed = ", ".join(f"seed {m['seed']}: {m['test_r2']:.3f}" for m in record["members"])
    print(
        f"\nseed ensemble of {len(record['members'])} (the table above is their average): "
        f"test R² {per_seed}; mean {record['member_test_r2_mean']:.3f} "
        f"± {record['member_test_r2_sd']:.3f}",
        file=stream,
    )


def _print_multi(report: Any, stream: Any) -> None:
    for key, path in report.outputs.items():
        rows = [m for m in report.metrics[key] if m["split"] == "test"]
        r2 = sum(m["r2"] for m in rows) / max(len(rows), 1)
        print(f"wrote {path} (test R² mean over channels {r2:.3f})", file=stream)
    if report.checkpoint:
        print(f"shared decoder: {report.checkpoint}", file=stream)
    if len(report.outputs) > 1:
        print(f"pooled test R² (z-scored units) {report.pooled['r2']:.3f}", file=stream)


def _cmd_fit_many(args: argparse.Namespace, config: Any, job: dict, ablation: Any) -> int:
    from .errors import ConfigError

    if args.in_place or ablation:
        raise ConfigError(
            "--in-place and --ablation are single-session options; fit one source with them"
        )
    from .multisession import fit_many

    report = fit_many(
        args.source,
        config=config,
        out_dir=args.out or job.get("out"),
        checkpoint=args.checkpoint,
        overwrite=args.overwrite,
        rois=args.rois or job.get("rois"),
        behavior=args.behavior or job.get("behavior"),
        cache_dir=args.cache_dir,
    )
    _print_multi(report, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps({k: str(v) for k, v in report.outputs.items()}))
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    from .multisession import adapt

    report = adapt(
        args.checkpoint,
        args.source,
        out=args.out,
        save_checkpoint=args.save_checkpoint,
        overwrite=args.overwrite,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        rois=args.rois,
        behavior=args.behavior,
        cache_dir=args.cache_dir,
    )
    _print_multi(report, sys.stdout)
    return 0


def _print_top_salience(results: Any, stream: Any, n: int = 10) -> None:
    import numpy as np

    from .salience import salience_order

    sal = results.salience
    values = np.asarray(sal["salience"].values, dtype=float)
    session = results.session
    rows = []
    # ROIs with no salience at all (those the screen left out, when ridge has no share)
    # are not "most salient"
    order = [i for i in salience_order(values)[:n] if values[i] > 0]
    for rank, i in enumerate(order, start=1):
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
    ks = None if args.k is None else _csv(args.k, int, "--k")

    from .pipeline import ABLATION_KS, ablate

    rows = ablate(
        args.results,
        checkpoint=args.checkpoint,
        ks=ABLATION_KS if ks is None else ks,
        draws=args.draws,
        trust_remote_code=args.trust_remote_code,
    )
    stream = sys.stderr if args.json else sys.stdout
    _print_ablation(rows, stream)
    print(f"wrote processing/llmdecode/salience_ablation into {args.results}", file=stream)
    if args.json:
        print(json.dumps({"results": str(args.results), "ablation": rows}))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .pipeline import predict

    progress = _TqdmProgress(enabled=sys.stderr.isatty())
    try:
        report = predict(
            args.checkpoint,
            args.source,
            rois=args.rois,
            behavior=args.behavior,
            out=args.out,
            overwrite=args.overwrite,
            cache_dir=args.cache_dir,
            trust_remote_code=args.trust_remote_code,
            progress=progress,
        )
    finally:
        progress.close()
    stream = sys.stderr if args.json else sys.stdout
    print(f"wrote {report.output}", file=stream)
    _print_metrics(report.metrics, stream)
    if args.json:
        print(report.to_json())
    return 0


def _csv(text: str | None, cast: Any = str, option: str = "") -> tuple[Any, ...] | None:
    from .errors import ConfigError

    if text is None:
        return None
    try:
        values = tuple(cast(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        kind = "whole numbers" if cast is int else "numbers"
        raise ConfigError(
            f"{option} {text}: expected comma-separated {kind}, e.g. {option} 10,50"
        ) from None
    if not values:
        raise ConfigError(f"{option} {text!r}: give at least one value")
    return values


def _cmd_compare(args: argparse.Namespace) -> int:
    from .errors import ConfigError

    base, job = _fit_config(args)
    if args.protocol == "pooled-vs-single":
        from .compare_pooled import run_pooled_vs_single

        models = _csv(args.models, str, "--models") or (base.backbone,)
        if len(models) != 1:
            raise ConfigError(
                f"--protocol pooled-vs-single compares one backbone, got --models {args.models}"
            )
        out, st = run_pooled_vs_single(
            args.source,
            base=base.replace(backbone=models[0]),
            seeds=args.seeds if args.seeds is not None else 3,
            report_dir=args.report,
            rois=args.rois or job.get("rois"),
            behavior=args.behavior or job.get("behavior"),
            cache_dir=args.cache_dir,
        )
        print(st.to_string(index=False))
        print(f"\nwrote {out / 'results.csv'}, {out / 'stats.csv'}, {out / 'report.md'}")
        return 0
    if len(args.source) != 1:
        raise ConfigError(
            f"compare's grid protocol takes one session, got {len(args.source)}; pass "
            "--protocol pooled-vs-single to compare pooling across sessions"
        )
    args.source = args.source[0]
    from .compare import CompareGrid, run_compare

    defaults = CompareGrid()
    grid = CompareGrid(
        models=_csv(args.models, str, "--models") or defaults.models,
        inits=_csv(args.init_list, str, "--init") or defaults.inits,
        seq_lens=_csv(args.seq_lens, int, "--seq-len") or defaults.seq_lens,
        embeddings=_csv(args.embeddings, str, "--embedding") or (base.embedding,),
        train_modes=_csv(args.train_modes, str, "--train-mode") or (base.train_mode,),
        seeds=args.seeds if args.seeds is not None else defaults.seeds,
    )
    progress = _progress(args.quiet)
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
            scheduler=args.scheduler,
            cluster_config=args.cluster_config,
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


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        prefix = f"{where}: " if where else ""
        self.exit(
            2,
            f"nwb-llmdecode: error: {prefix}{' '.join(message.split())} (see {self.prog} --help)\n",
        )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` after every option that has one; options whose default
    comes from :class:`~nwb_llmdecode.config.FitConfig` say it in their own help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return text + " (default: %(default)s)"


def _fit_default(name: str) -> str:
    """``(default: X)`` with the FitConfig default of ``name``."""
    import dataclasses

    from .config import FitConfig

    f = next(f for f in dataclasses.fields(FitConfig) if f.name == name)
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if isinstance(value, tuple):
        value = ",".join(str(v) for v in value)
    return f"(default: {value})"


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rois",
        action="append",
        metavar="SERIES",
        help="ROI series by path or name (repeat for several planes) (default: the ΔF/F "
        "series of every plane)",
    )
    p.add_argument(
        "--behavior",
        action="append",
        metavar="SERIES",
        help="behaviour series by path or name (repeat for several) (default: every "
        "behaviour series)",
    )
    p.add_argument(
        "--cache-dir", help="block cache for remote sources (default: the user cache directory)"
    )


def _trust_arg(p: Any, what: str) -> None:
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None if what == "fit" else False,
        help=f"allow the backbone's own model code to run while {what} loads it; never "
        "switched on by a file (config, checkpoint) (default: off)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = _Parser(
        prog="nwb-llmdecode",
        description="Decode behaviour from calcium imaging in NWB with language-model "
        "backbones; write predictions, metrics and salience back as NWB.",
        formatter_class=_HelpFormatter,
    )
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=_HelpFormatter, **kw)

    p = add("inspect", help="list ROI series, behaviour, images and planes of a file")
    p.add_argument("source", help="NWB file, URL or DANDI identifier")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--cache-dir", help="block cache for remote sources (default: the user cache directory)"
    )
    p.set_defaults(func=_cmd_inspect)

    p = add("synth", help="write synthetic session(s) with planted driver ROIs")
    p.add_argument("out", help="output .nwb file (a folder with --sessions)")
    p.add_argument(
        "--sessions",
        type=int,
        default=None,
        metavar="N",
        help="write N sessions of N animals (OUT/animal<i>.nwb: subject synthetic-fish-<i>, "
        "ROI count --rois + i x --roi-step, seed --seed + i) with the same readout planted "
        "in different ROI sets (default: one session)",
    )
    p.add_argument(
        "--roi-step", type=int, default=20, help="with --sessions: ROIs added per animal"
    )
    p.add_argument("--frames", type=int, default=1200, help="imaging frames (volumes)")
    p.add_argument("--rois", type=int, default=300, help="ROIs over all planes")
    p.add_argument("--planes", type=int, default=2, help="imaging planes")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--frame-rate", type=float, default=2.0, help="volume rate in Hz")
    p.add_argument("--drivers", type=int, default=10, help="number of driver ROIs")
    p.add_argument("--channels", type=int, default=3, help="tail-angle channels")
    p.add_argument(
        "--readout",
        choices=["linear", "bouts", "interaction"],
        default="linear",
        help="driver -> tail angle mapping: near-linear, swim bouts (vigour x bend, which "
        "linear decoders cannot represent) or a lagged interaction tanh(u + 0.9ab)",
    )
    p.add_argument(
        "--population",
        type=float,
        default=0.8,
        help="weight of the slow population factors shared by all ROIs",
    )
    p.add_argument(
        "--decoys",
        type=int,
        default=0,
        help="non-driver ROIs given a driver's slow component (correlate, do not drive)",
    )
    p.add_argument(
        "--spread-drivers", action="store_true", help="put drivers on every plane in turn"
    )
    p.add_argument(
        "--noise",
        choices=["iid", "heteroscedastic", "correlated"],
        default="iid",
        help="observation noise added to the recorded dF/F",
    )
    p.add_argument(
        "--recording",
        type=int,
        default=0,
        help="recording number of the same animal: same ROIs and drivers, new activity",
    )
    p.add_argument(
        "--mask", choices=["image", "pixel", "voxel"], default="image", help="ROI mask type"
    )
    p.add_argument(
        "--behavior-timestamps",
        action="store_true",
        help="store behaviour with timestamps instead of a rate",
    )
    p.add_argument("--raw-imaging", action="store_true", help="add a raw TwoPhotonSeries")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.add_argument("--json", action="store_true", help="print the planted truth as JSON")
    p.set_defaults(func=_cmd_synth)

    p = add("fit", help="train a decoder and write the results as NWB")
    p.add_argument(
        "source",
        nargs="+",
        help="NWB file, URL or DANDI identifier; several train ONE decoder across sessions "
        "(per-session input embedding, shared backbone, one head per behaviour name; "
        "sessions must share the imaging rate: different rates are refused, not "
        "resampled), writing one results file per session into --out (a folder) and one "
        "shared checkpoint (--checkpoint)",
    )
    p.add_argument(
        "--checkpoint",
        help="with several sources: the shared checkpoint directory "
        "(default: <out>/multisession_checkpoint)",
    )
    _selection_args(p)
    g = p.add_argument_group("model")
    g.add_argument(
        "--backbone",
        help="minilm, smollm2, ridge, lstm, reservoir, a HuggingFace model id or a local "
        f"model directory {_fit_default('backbone')}",
    )
    g.add_argument(
        "--init",
        choices=["pretrained", "random"],
        help=f"backbone weights {_fit_default('init')}",
    )
    g.add_argument(
        "--train-mode",
        choices=["frozen", "lora", "full"],
        help=f"what of the backbone trains {_fit_default('train_mode')}",
    )
    g.add_argument(
        "--embedding",
        choices=["temporal", "linear", "positional"],
        help=f"input embedding {_fit_default('embedding')}",
    )
    g.add_argument(
        "--embedding-kernel",
        type=int,
        help=f"frames per token of the temporal embedding {_fit_default('embedding_kernel')}",
    )
    g.add_argument(
        "--residual",
        choices=["blend", "ridge", "none"],
        help="blend: the transformer averaged with lagged ridge regression, the weight "
        "chosen on validation; ridge: the transformer learns what ridge cannot, on top of a "
        "ridge fit; none: the transformer alone (the paper's decoder) "
        f"{_fit_default('residual')}",
    )
    g.add_argument(
        "--blend-lstm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --residual blend: blend an LSTM decoder (same prior, a few seconds) too, "
        f"the three weights chosen on validation {_fit_default('blend_lstm')}",
    )
    g.add_argument(
        "--screen",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="screen the ROIs first: LSTMs on the top 8, 16, 32, ... ROIs by group-lasso "
        "weight, the count chosen on validation; the transformer and the LSTM part see "
        f"only those (ridge sees all) {_fit_default('screen')}",
    )
    g.add_argument(
        "--screen-rois",
        metavar="M,M,...",
        help="ROI counts the screen tries besides all ROIs (default: 8, 16, 32, ... below the "
        "ROI count, at most 1024)",
    )
    g.add_argument("--seq-len", type=int, help=f"window length in frames {_fit_default('seq_len')}")
    _trust_arg(g, "fit")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, help=f"maximum epochs {_fit_default('epochs')}")
    g.add_argument("--batch-size", type=int, help=f"windows per step {_fit_default('batch_size')}")
    g.add_argument("--lr", type=float, help=f"learning rate of the new layers {_fit_default('lr')}")
    g.add_argument(
        "--patience",
        type=int,
        help=f"early-stopping patience in epochs {_fit_default('patience')}",
    )
    g.add_argument(
        "--train-stride",
        type=int,
        help="frames between training windows of an epoch (from a random offset each "
        f"epoch) {_fit_default('train_stride')}",
    )
    g.add_argument(
        "--backbone-dropout",
        type=float,
        metavar="P",
        help="every dropout rate inside the backbone while it trains (default: the "
        "backbone's own, 0.1 for MiniLM)",
    )
    g.add_argument("--seed", type=int, help=f"random seed {_fit_default('seed')}")
    g.add_argument(
        "--ensemble",
        type=int,
        metavar="N",
        help="fit N decoders with seeds seed..seed+N-1 and keep their average (predictions, "
        "salience, checkpoint); each seed's R² is reported; costs N fits (default: 1)",
    )
    g.add_argument(
        "--split", help=f"train,validation,test fractions in time order {_fit_default('split')}"
    )
    g.add_argument(
        "--device", help=f"auto (CUDA when available), cpu, cuda or cuda:N {_fit_default('device')}"
    )
    g.add_argument(
        "--quantize",
        choices=["4bit", "8bit"],
        help="load the backbone quantised (bitsandbytes, CUDA; transformer backbones only) "
        "(default: no quantisation)",
    )
    g.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        default=None,
        help="trade compute for memory in the backbone (default: off)",
    )
    g.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        help="auto: bf16 autocast where the CPU or GPU supports it, else fp32 "
        f"{_fit_default('precision')}",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the backbone (pays off only on long runs; default: off)",
    )
    g = p.add_argument_group("hyperparameter search (optuna; pip install 'nwb-llmdecode[search]')")
    g.add_argument(
        "--search",
        type=int,
        metavar="N",
        help="choose lr, backbone_lr, embedding_group_l1 and embedding_kernel on the "
        "validation block with N optuna trials, each about one fit; the first trial is the "
        "configuration as given (default: 0, no search)",
    )
    g.add_argument(
        "--search-timeout",
        type=float,
        metavar="S",
        help="stop starting new trials after S seconds (default: no limit)",
    )
    g = p.add_argument_group("salience")
    g.add_argument(
        "--salience",
        choices=["integrated-gradients", "saliency", "grad-x-input", "none"],
        help=f"attribution per ROI and frame on the test block {_fit_default('salience')}",
    )
    g.add_argument(
        "--salience-stride",
        type=int,
        metavar="N",
        help="attribute every N-th window of the test block, every frame still covered "
        "(default: seq_len // 4; 1: every window)",
    )
    g.add_argument(
        "--ablation",
        nargs="?",
        const="10,50,100",
        default=None,
        metavar="K,K,...",
        help="ablate the top-k salient vs k random ROIs; --ablation alone uses k 10,50,100 "
        "(default: no ablation check)",
    )
    g = p.add_argument_group("output")
    g.add_argument(
        "--out", help="output file (default: <stem>_desc-llmdecode.nwb beside the source)"
    )
    g.add_argument("--in-place", action="store_true", help="add results to the source file")
    g.add_argument("--overwrite", action="store_true", help="replace existing results")
    g.add_argument(
        "--config", help="TOML or YAML file of options; the command line wins (default: none)"
    )
    g.add_argument(
        "--json", action="store_true", help="print a JSON summary as the last line of stdout"
    )
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=_cmd_fit)

    p = add("compare", help="run a grid of decoders and seeds; write a report")
    p.add_argument(
        "source",
        nargs="+",
        help="NWB file, URL or DANDI identifier (several, at least 3, with "
        "--protocol pooled-vs-single)",
    )
    p.add_argument(
        "--protocol",
        choices=["grid", "pooled-vs-single"],
        default="grid",
        help="grid: models x inits x windows x seeds on one session; pooled-vs-single: for "
        "each held-out session, a decoder fitted on the others and adapted (only a new "
        "input embedding trains) vs one fitted on it alone, --seeds seeds each (default 3 "
        "here), Wilcoxon signed-rank and effect size in stats.csv",
    )
    _selection_args(p)
    p.add_argument(
        "--models",
        help="comma-separated backbones and baselines (default: minilm,ridge,lstm,reservoir)",
    )
    p.add_argument(
        "--init", dest="init_list", help="comma-separated inits (default: pretrained,random)"
    )
    p.add_argument("--seq-len", dest="seq_lens", help="comma-separated (default: 5,10,20)")
    p.add_argument(
        "--embedding",
        dest="embeddings",
        help=f"comma-separated: temporal, linear, positional {_fit_default('embedding')}",
    )
    p.add_argument(
        "--train-mode",
        dest="train_modes",
        help=f"comma-separated: frozen, lora, full {_fit_default('train_mode')}",
    )
    p.add_argument(
        "--seeds",
        type=int,
        help="seeds per setting (default: 10, the paper's; fewer than 6 warn: no test across "
        "seeds could reach p < 0.05)",
    )
    p.add_argument("--epochs", type=int, help=f"maximum epochs {_fit_default('epochs')}")
    p.add_argument("--batch-size", type=int, help=f"windows per step {_fit_default('batch_size')}")
    p.add_argument("--lr", type=float, help=f"learning rate {_fit_default('lr')}")
    p.add_argument("--patience", type=int, help=f"early stopping {_fit_default('patience')}")
    p.add_argument("--seed", type=int, help=f"first seed {_fit_default('seed')}")
    p.add_argument("--device", help=f"auto, cpu, cuda or cuda:N {_fit_default('device')}")
    p.add_argument("--split", help=f"train,validation,test fractions {_fit_default('split')}")
    p.add_argument("--config", help="TOML or YAML file of fit options (default: none)")
    p.add_argument("--report", default="compare-report", help="output directory")
    p.add_argument(
        "--scheduler",
        default="local",
        help="where the runs go: local (serial, in this process), processes:N (a local Dask "
        "cluster of N worker processes), tcp://HOST:PORT (a running Dask scheduler) or slurm "
        "(dask-jobqueue; see --cluster-config)",
    )
    p.add_argument(
        "--cluster-config",
        help="YAML or TOML file of Slurm options for --scheduler slurm (queue, cores, memory, "
        "walltime, gpus, jobs...) (default: none)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted comparison")
    p.add_argument("--overwrite", action="store_true", help="start again in --report")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=_cmd_compare)

    p = add("ablate", help="the ablation check on a results file")
    p.add_argument("results", help="a *_desc-llmdecode.nwb file written by fit with salience")
    p.add_argument(
        "--checkpoint", help="decoder directory (default: <results stem>_checkpoint/ beside it)"
    )
    p.add_argument("--k", help="comma-separated numbers of ROIs (default: 10,50,100)")
    p.add_argument("--draws", type=int, default=5, help="random draws per k")
    _trust_arg(p, "ablate")
    p.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    p.set_defaults(func=_cmd_ablate)

    p = add(
        "adapt",
        help="fit only a new input embedding for a new session on a shared (multi-session) "
        "decoder; backbone and heads stay frozen",
    )
    p.add_argument("checkpoint", help="shared checkpoint directory written by a multi-session fit")
    p.add_argument("source", help="NWB file, URL or DANDI identifier of the new session")
    _selection_args(p)
    p.add_argument("--epochs", type=int, help="adaptation epochs (default: the checkpoint's)")
    p.add_argument("--lr", type=float, help="embedding learning rate (default: the checkpoint's)")
    p.add_argument("--seed", type=int, help="seed (default: the checkpoint's)")
    p.add_argument(
        "--out", help="output file (default: <stem>_desc-llmdecode.nwb beside the source)"
    )
    p.add_argument(
        "--save-checkpoint",
        metavar="DIR",
        help="also write the decoder with the new session's embedding here (default: none)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=_cmd_adapt)

    p = add("predict", help="apply a saved decoder to another session")
    p.add_argument("checkpoint", help="the *_checkpoint directory written by fit")
    p.add_argument("source", help="NWB file, URL or DANDI identifier (same ROIs)")
    _selection_args(p)
    p.add_argument(
        "--out", help="output file (default: <stem>_desc-llmdecode.nwb beside the source)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _trust_arg(p, "predict")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=_cmd_predict)

    p = add("convert-nlp4neuro", help="turn NLP4Neuro .npy files (doi:10.7910/DVN/I8LULX) into NWB")
    p.add_argument("neural", help="fishN_neural_data_matched.npy (neurons x (frames + 2))")
    p.add_argument("tail", help="fishN_tail_data_matched.npy (frames x 6)")
    p.add_argument("out", help="output .nwb file")
    p.add_argument(
        "--frame-rate",
        type=float,
        required=True,
        help="imaging volume rate in Hz (not stored in the files; required)",
    )
    p.add_argument("--tail-full", help="fishN_tail_data_full.npy (200 Hz samples) (default: none)")
    p.add_argument(
        "--positions", help=".npy of ROI positions (neurons x 2 or 3, pixels) (default: none)"
    )
    p.add_argument("--subject-id", default="fish", help="subject_id of the NWB Subject")
    p.add_argument("--age", help="age in ISO 8601, e.g. P7D (default: not recorded)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=_cmd_convert)

    p = add("dandi", help="browse the DANDI archive")
    dsub = p.add_subparsers(dest="dandi_command", required=True, metavar="SUBCOMMAND")
    q = dsub.add_parser(
        "ls", help="list assets of a dandiset with their sizes", formatter_class=_HelpFormatter
    )
    q.add_argument("spec", help="DANDISET[@VERSION][/PATH-PREFIX], e.g. 000123@draft/sub-1")
    q.add_argument("--json", action="store_true", help="print one JSON list")
    q.set_defaults(func=_cmd_dandi_ls)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` removes its temporaries."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _quiet_broken_pipe() -> None:
    """stdout's reader went away (``| head``): not an error; silence the final flush."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - no file descriptor
        pass


def _check_launch(args: argparse.Namespace) -> None:
    """Under ``accelerate launch`` / ``torchrun`` only ``fit`` shares its work between the
    processes (and rank 0 alone writes); any other command would run, and write, once
    per process. ``WORLD_SIZE`` is read here directly: no torch import for ``--help``."""
    import os

    from .errors import ConfigError

    world = os.environ.get("WORLD_SIZE", "1").strip()
    if world.isdigit() and int(world) > 1 and args.func is not _cmd_fit:
        raise ConfigError(
            f"{args.command} was started on {world} processes (accelerate launch / torchrun); "
            "only fit trains on several processes: run it as one process (compare spreads "
            "its grid with --scheduler)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nwb-llmdecode`` command."""
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    import warnings

    from .errors import LLMDecodeError

    def _one_line(message: Any, category: Any, filename: str, lineno: int, line: Any = None) -> str:
        return f"nwb-llmdecode: warning: {' '.join(str(message).split())}\n"

    warnings.formatwarning = _one_line
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _check_launch(args)
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _quiet_broken_pipe()
        return 0
    except LLMDecodeError as exc:
        if args.debug:
            raise
        print(f"nwb-llmdecode: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    except _Terminated:
        print("nwb-llmdecode: terminated", file=sys.stderr)
        return 143
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
    finally:
        if previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
