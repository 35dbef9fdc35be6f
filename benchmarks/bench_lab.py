"""Decoders at the shapes labs record: the default fit against ridge, LSTM and random init.

Issue 13's benchmark. For each shape (``FRAMESxROIS``), readout and seed it writes a
synthetic session with ``make_session`` using generator settings the defaults were not
tuned on: strong shared slow population factors (``population``), decoy ROIs that carry a
driver's slow component (``decoys``), drivers spread over planes, heteroscedastic or
correlated noise, and a lagged nonlinear readout with interactions (``interaction``) or
bouts. Every model is fitted on the same split (``fit_arrays``, as ``fit`` does); the
default decoder is then explained with the default salience method on the test block and
precision@k (k = number of planted drivers) is computed. One JSON line per fit; a
Markdown table at the end.

Models: ``default`` (``FitConfig()``: the transformer blended with ridge), ``default-random``
(init random), ``ridge`` (lags and penalty chosen on validation), ``lstm``, ``residual``
(``residual="ridge"``, the ridge-residual decoder), ``no-residual`` (``residual="none"``,
the transformer alone), ``frozen``.

``--zebrafish [DIR]`` adds rows on real whole-brain zebrafish activity (70 regions,
``../shared/data``) with the **simulated** tail angle of ``examples/zebrafish_real_data.py``
(4 driver regions, nonlinear lagged readout); its seeds change the simulated noise only.

Examples
--------
python benchmarks/bench_lab.py --shapes 1200x300 --readouts interaction bouts --seeds 0 1 \\
    --out benchmarks/results/lab.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine import fit_arrays
from nwb_llmdecode.io.read import load_session
from nwb_llmdecode.models.ensemble import SeedEnsemble
from nwb_llmdecode.salience import compute_salience, precision_at_k
from nwb_llmdecode.synthetic import make_session

MODELS: dict[str, dict[str, Any]] = {
    "default": {},
    "default-random": {"init": "random"},
    "ridge": {"backbone": "ridge"},
    "lstm": {"backbone": "lstm"},
    "residual": {"residual": "ridge"},
    "no-residual": {"residual": "none"},
    "frozen": {"train_mode": "frozen"},
}

#: Generator settings per readout: none of them is what the defaults were developed on.
READOUTS: dict[str, dict[str, Any]] = {
    "interaction": {"readout": "interaction", "noise": "heteroscedastic"},
    "bouts": {"readout": "bouts", "noise": "correlated"},
    "linear": {"readout": "linear", "noise": "heteroscedastic"},
}


def session_kwargs(frames: int, rois: int, readout: str, seed: int) -> dict[str, Any]:
    """make_session arguments of one benchmark case."""
    n_drivers = 8 if rois <= 500 else 12
    return {
        "frames": frames,
        "rois": rois,
        "planes": 2 if rois <= 500 else 4,
        "n_drivers": n_drivers,
        "population": 1.0,
        "decoys": n_drivers // 2,
        "spread_drivers": True,
        "seed": 1000 + seed,  # not the seeds the defaults were looked at with
        "mask": "image" if rois <= 2000 else "pixel",
        "summary_images": False,
        "fluorescence": False,
        **READOUTS[readout],
    }


def lab_session(
    frames: int, rois: int, readout: str, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(activity, behaviour, driver ROIs, row key) of one synthetic lab-shape session."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "session.nwb"
        truth = make_session(path, **session_kwargs(frames, rois, readout, seed))
        a, b = _arrays(path)
    return a, b, truth.driver_rois, {"shape": f"{frames}x{rois}", "readout": readout, "seed": seed}


def zebrafish_session(
    data: Path, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The same for real zebrafish region activity with the example's simulated tail."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "zebrafish_real_data",
        Path(__file__).resolve().parents[1] / "examples" / "zebrafish_real_data.py",
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "zebrafish.nwb"
        drivers = example.build_session(data, path, frame_rate=1.0, seed=seed)
        a, b = _arrays(path)
    key = {"shape": f"{a.shape[0]}x{a.shape[1]} real", "readout": "simulated tail", "seed": seed}
    return a, b, np.asarray(drivers), key


def run_case(
    frames: int,
    rois: int,
    readout: str,
    seed: int,
    models: list[str],
    steps: int,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Fit every model on one synthetic session; precision@k for the default's salience."""
    a, b, drivers, key = lab_session(frames, rois, readout, seed)
    return run_models(a, b, drivers, key, models, steps, overrides)


def run_zebrafish(
    data: Path, seed: int, models: list[str], steps: int, overrides: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The same on real zebrafish region activity with the example's simulated tail angle."""
    a, b, drivers, key = zebrafish_session(data, seed)
    return run_models(a, b, drivers, key, models, steps, overrides)


def _arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    ds = load_session(path)
    a = np.asarray(ds["activity"].values, np.float32)
    b = np.asarray(ds["behavior"].values, np.float32)
    return a, b


def _salience(
    model: Any, z: np.ndarray, block: tuple[int, int], cfg: FitConfig, steps: int
) -> np.ndarray:
    """Per-ROI salience of ``model``'s default method on the test block."""
    sal = compute_salience(
        model,
        z,
        block=block,
        seq_len=cfg.seq_len,
        method=cfg.salience,
        n_steps=steps,
        stride=cfg.salience_window_stride,
    )
    return np.asarray(sal["salience"].values)


def run_models(
    a: np.ndarray,
    b: np.ndarray,
    drivers: np.ndarray,
    key: dict[str, Any],
    models: list[str],
    steps: int,
    overrides: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """Fit ``models`` on (activity, behaviour); one JSON-able row each."""
    seed = int(key["seed"])
    rows = []
    for name in models:
        extra = overrides if MODELS[name].get("backbone") not in ("ridge", "lstm") else {}
        cfg = FitConfig.from_dict({"seed": seed, **MODELS[name], **(extra or {})})
        t0 = time.perf_counter()
        res = fit_arrays(a, b, config=cfg)
        fit_s = time.perf_counter() - t0
        row: dict[str, Any] = {
            **key,
            "model": name,
            "test_r2": float(np.nanmean(res.metric("r2", "test"))),
            "val_r2": float(np.nanmean(res.metric("r2", "validation"))),
            "train_r2": float(np.nanmean(res.metric("r2", "train"))),
            "fit_s": round(fit_s, 1),
            "fit": res.extra.get("fit", {}),
            "curve": [
                [round(h["seconds"], 1), round(h["val_loss"], 4)]
                for h in res.history
                if "val_loss" in h
            ],
        }
        if name == "default" and cfg.salience != "none" and cfg.backbone != "ridge":
            test = next(blk for blk in res.blocks if blk.name == "test")
            z = res.normalization.activity(a)
            block = (test.start, test.stop)
            t1 = time.perf_counter()
            row["precision_at_k"] = precision_at_k(
                _salience(res.model, z, block, cfg, steps), drivers
            )
            row["salience_s"] = round(time.perf_counter() - t1, 1)
            row["k"] = len(drivers)
            if isinstance(res.model, SeedEnsemble):
                members = row["fit"]["ensemble"]["members"]
                row["member_test_r2"] = [round(m["test_r2"], 4) for m in members]
                # each member's own salience (the first is the plain fit) and their mean,
                # against the salience of the averaged decoder above
                each = [_salience(m, z, block, cfg, steps) for m in res.model.members]
                row["member_precision_at_k"] = [precision_at_k(v, drivers) for v in each]
                row["member0_precision_at_k"] = row["member_precision_at_k"][0]
                row["mean_of_members_precision_at_k"] = precision_at_k(
                    np.mean(each, axis=0), drivers
                )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (shape, readout, seed); test R² per model, p@k, the ROIs the
    default's screen kept and its blend weights (transformer, LSTM, ridge) where recorded,
    fit and salience seconds."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    keys = list(dict.fromkeys((r["shape"], r["readout"], r["seed"]) for r in rows))
    head = ["shape", "readout", "seed", *models, "p@k (default)", "screen ROIs"]
    head += ["blend (T, L, R)", "default fit s", "salience s"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        sel = {r["model"]: r for r in rows if (r["shape"], r["readout"], r["seed"]) == key}
        d = sel.get("default", {})
        fit = d.get("fit", {})
        cells = [*map(str, key)]
        cells += [f"{sel[m]['test_r2']:.3f}" if m in sel else "–" for m in models]
        cells += [f"{d['precision_at_k']:.2f}" if "precision_at_k" in d else "–"]
        cells += [str(fit["screen_n_rois"]) if "screen_n_rois" in fit else "–"]
        weights = [fit.get(k) for k in ("blend_weight", "blend_lstm_weight", "blend_ridge_weight")]
        cells += [", ".join(f"{w:.1f}" for w in weights) if None not in weights else "–"]
        cells += [f"{d['fit_s']:.0f}" if d else "–"]
        cells += [f"{d['salience_s']:.0f}" if "salience_s" in d else "–"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["1200x300"], help="FRAMESxROIS")
    p.add_argument("--readouts", nargs="+", default=["interaction"], choices=sorted(READOUTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--models", nargs="+", default=["default", "ridge", "lstm"])
    p.add_argument("--steps", type=int, default=16, help="integrated-gradients steps")
    p.add_argument("--out", type=Path, help="append JSON lines here")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="OPTION=JSON",
        help="override FitConfig options of the LLM models (e.g. train_stride=5)",
    )
    p.add_argument(
        "--zebrafish",
        nargs="?",
        type=Path,
        const=Path(__file__).resolve().parents[2]
        / "shared"
        / "data"
        / "zebrafish_legare2025_fish6",
        help="also run the real zebrafish regions with a simulated tail (default: ../shared/data)",
    )
    p.add_argument("--no-synthetic", action="store_true", help="only the --zebrafish rows")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    rows = []

    def keep(got: list[dict[str, Any]]) -> None:
        rows.extend(got)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in got)

    if args.zebrafish is not None:
        for seed in args.seeds:
            keep(run_zebrafish(args.zebrafish, seed, args.models, args.steps, overrides))
    for shape in [] if args.no_synthetic else args.shapes:
        frames, rois = (int(v) for v in shape.lower().split("x"))
        for readout in args.readouts:
            for seed in args.seeds:
                keep(run_case(frames, rois, readout, seed, args.models, args.steps, overrides))
    print(table(rows))


if __name__ == "__main__":
    main()
