"""GPU training throughput, peak memory and MFU of our engine, per backbone and option.

Configurations: ``minilm`` and ``smollm2`` with full fine-tuning and LoRA, and a
~1B-parameter Llama-shaped backbone built from a config (random init, no download:
hidden 2048, 16 layers, MLP 8192, 32 heads / 8 KV heads, as Llama-3.2-1B without its
token embeddings) in bf16 autocast, full and LoRA, with and without 4-bit quantisation
(bitsandbytes; the random weights are saved once so that they load as "pretrained")
and gradient checkpointing. Each one runs :func:`nwb_llmdecode.engine.fit_arrays` for
one epoch of ``--steps`` batches; the training loop is timed through the progress
callback (batches 2..n, so loading, compilation of kernels, validation and evaluation are
not counted). FLOP per window are counted by ``torch.utils.flop_counter`` on one training
step; MFU = FLOP/window x windows/s / the device's dense bf16 peak (looked up from the
device name; ``--peak-tflops`` overrides it).

``--dry-run`` builds every configuration tiny on the CPU and runs one step of each (the
quantised ones are listed as skipped: bitsandbytes needs CUDA), then prints the table.

Examples
--------
python benchmarks/bench_gpu.py --dry-run
python benchmarks/bench_gpu.py --batch 256 --steps 10
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine import fit_arrays
from nwb_llmdecode.models.decoder import build_model

#: Dense bf16 tensor-core peak in TFLOP/s by a substring of the device name (first match).
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("T4", 65.0),  # fp16 (no bf16 tensor cores)
    ("V100", 125.0),  # fp16 (no bf16 tensor cores)
)


def bf16_peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of a device by its name, or ``None`` when unknown.

    Examples
    --------
    >>> bf16_peak_tflops("NVIDIA H200")
    989.0
    >>> bf16_peak_tflops("NVIDIA H100 PCIe")
    756.0
    """
    for key, peak in BF16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


@dataclass(frozen=True)
class Case:
    """One configuration to time."""

    name: str
    backbone: str  # "minilm", "smollm2" or "llama1b"
    train_mode: str
    quantize: str | None = None
    gradient_checkpointing: bool = False


CASES = (
    Case("minilm full", "minilm", "full"),
    Case("minilm lora", "minilm", "lora"),
    Case("smollm2 full", "smollm2", "full"),
    Case("smollm2 lora", "smollm2", "lora"),
    Case("llama-1B full bf16", "llama1b", "full"),
    Case("llama-1B full bf16 + grad ckpt", "llama1b", "full", gradient_checkpointing=True),
    Case("llama-1B lora bf16", "llama1b", "lora"),
    Case("llama-1B lora 4-bit", "llama1b", "lora", quantize="4bit"),
    Case("llama-1B lora 4-bit + grad ckpt", "llama1b", "lora", "4bit", True),
)


def _llama_config(tiny: bool) -> Any:
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=128,
        )
    return LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=1024,  # unused (inputs_embeds); keeps the count to the transformer
        max_position_embeddings=2048,
    )


def _tiny_config(kind: str) -> Any:
    from transformers import BertConfig, LlamaConfig

    if kind == "minilm":
        return BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=128,
        )
    if kind == "smollm2":
        return LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=128,
        )
    return _llama_config(tiny=True)


def backbone_dirs(root: Path, *, tiny: bool, need_weights: bool) -> dict[str, tuple[str, str]]:
    """Backbone name -> (FitConfig.backbone, init) for every case kind.

    Real runs use the packaged minilm/smollm2 and a config directory for the 1B Llama
    (random init; its random weights are saved in bf16 too when quantised cases run).
    The dry run writes tiny configs of all three.
    """
    out: dict[str, tuple[str, str]] = {}
    for kind in ("minilm", "smollm2", "llama1b"):
        if not tiny and kind != "llama1b":
            out[kind] = (kind, "pretrained")
            continue
        d = root / kind
        d.mkdir(parents=True, exist_ok=True)
        cfg = _tiny_config(kind) if tiny else _llama_config(tiny=False)
        cfg.save_pretrained(d)
        out[kind] = (str(d), "random")
    if need_weights:
        from transformers import AutoModel

        d = root / "llama1b"
        torch.manual_seed(0)
        model = AutoModel.from_config(_llama_config(tiny=tiny), dtype=torch.bfloat16)
        model.save_pretrained(d)
        del model
        out["llama1b-weights"] = (str(d), "pretrained")
    return out


def flop_per_window(cfg: FitConfig, *, n_rois: int, n_channels: int, device: str) -> float:
    """FLOP of one training step (forward + backward) per window, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = build_model(cfg, n_rois=n_rois, n_channels=n_channels, device=device)
    x = torch.randn(2, cfg.seq_len, n_rois, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).float().pow(2).mean().backward()
    del model
    return counter.get_total_flops() / 2


def time_case(cfg: FitConfig, x: np.ndarray, y: np.ndarray) -> tuple[float, float | None, float]:
    """(windows/s of the training loop, peak GPU GiB, seconds of the whole fit)."""
    marks: dict[int, float] = {}
    cuda = cfg.device.startswith("cuda")

    def progress(stage: str, done: int, total: int) -> None:
        if stage.startswith("epoch"):
            if cuda:
                torch.cuda.synchronize()
            marks[done] = time.perf_counter()

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fit_arrays(x, y, config=cfg, progress=progress)
    total = time.perf_counter() - t0
    last = max(marks)
    wps = (
        (last - 1) * cfg.batch_size / (marks[last] - marks[1])
        if last > 1
        else last * cfg.batch_size / (marks[last] - marks[0])
    )
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return wps, peak, total


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny models on CPU, 1 step each")
    p.add_argument("--batch", type=int, default=256, help="windows per step (1B cases)")
    p.add_argument("--small-batch", type=int, default=128, help="minilm/smollm2 cases")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seq-len", type=int, default=20)
    p.add_argument("--rois", type=int, default=300)
    p.add_argument("--frames", type=int, default=None, help="default: enough for the steps")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None, help="override the bf16 peak")
    p.add_argument("--only", nargs="+", default=None, help="case names to run (substrings)")
    p.add_argument("--out", type=Path, default=None, help="append JSON lines to this file")
    args = p.parse_args(argv)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device; use --dry-run on a CPU machine")
    device = "cpu" if dry else "cuda"
    name = "CPU (dry run)" if dry else torch.cuda.get_device_name(0)
    peak = args.peak_tflops or (None if dry else bf16_peak_tflops(name))
    steps = 1 if dry else args.steps
    cases = [c for c in CASES if not args.only or any(o in c.name for o in args.only)]
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    rows: list[dict[str, Any]] = []
    print(f"# device: {name}; bf16 peak: {peak} TFLOP/s; L={args.seq_len}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        need_weights = not dry and has_bnb and any(c.quantize for c in cases)
        dirs = backbone_dirs(Path(tmp), tiny=dry, need_weights=need_weights)
        for case in cases:
            row: dict[str, Any] = {"case": case.name, "device": name}
            if case.quantize and (dry or not has_bnb):
                row["skipped"] = "needs CUDA" if dry else "bitsandbytes is not installed"
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            key = "llama1b-weights" if case.quantize else case.backbone
            backbone, init = dirs[key]
            batch = 4 if dry else (args.batch if case.backbone == "llama1b" else args.small_batch)
            frames = args.frames or max(int((steps + 1) * batch / 0.7) + 4 * args.seq_len + 64, 400)
            rng = np.random.default_rng(0)
            x = rng.standard_normal((frames, args.rois), dtype=np.float32)
            y = np.tanh(x[:, : args.channels]).astype(np.float32)
            cfg = FitConfig(
                backbone=backbone,
                init=init,
                train_mode=case.train_mode,
                quantize=case.quantize,
                gradient_checkpointing=case.gradient_checkpointing,
                seq_len=args.seq_len,
                batch_size=batch,
                eval_batch_size=max(batch, 128),
                epochs=1,
                max_windows_per_epoch=(steps + 1) * batch,
                salience="none",
                device=device,
            )
            try:
                fpw = flop_per_window(
                    cfg, n_rois=args.rois, n_channels=args.channels, device=device
                )
                wps, mem, total = time_case(cfg, x, y)
            except Exception as e:  # one failing case must not hide the others' figures
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            tflops = wps * fpw / 1e12
            row.update(
                {
                    "batch": batch,
                    "windows_per_s": round(wps, 1),
                    "gflop_per_window": round(fpw / 1e9, 3),
                    "achieved_tflops": round(tflops, 3),
                    "mfu_pct": round(100 * tflops / peak, 1) if peak else None,
                    "peak_gpu_gib": round(mem, 2) if mem is not None else None,
                    "fit_seconds": round(total, 1),
                }
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print_table(rows)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """The figures as a Markdown table (for benchmarks/RESULTS.md)."""
    print("\n| case | batch | windows/s | GFLOP/window | TFLOP/s | MFU % | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "windows_per_s" not in r:
            print(f"| {r['case']} | {r.get('skipped') or r.get('error')} ||||||")
            continue
        print(
            f"| {r['case']} | {r['batch']} | {r['windows_per_s']} | {r['gflop_per_window']} | "
            f"{r['achieved_tflops']} | {r['mfu_pct']} | {r['peak_gpu_gib']} |"
        )


if __name__ == "__main__":
    main()
