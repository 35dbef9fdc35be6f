"""``fit`` on several processes (accelerate launch / torchrun, DDP) equals one process.

Real processes: ``accelerate launch`` (and ``torchrun``) start two ranks that talk over
gloo on the CPU; the single-process reference runs the same options with the same
global batch. The tiny backbone has no dropout, so the two trainings are the same up to
float rounding (DDP all-reduces the gradients of the two half batches).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate")

import nwb_llmdecode
from nwb_llmdecode.synthetic import make_session
from tiny_models import bert_dir

#: Options shared by every run: 17 windows per epoch in global batches of 8 make a last
#: batch of one window, so rank 1's shard of it is empty (the weight-0 stand-in).
OPTIONS = {
    "init": "random",
    "epochs": 3,
    "batch_size": 8,
    "max_windows_per_epoch": 17,
    "seq_len": 10,
    "patience": 0,
    "salience": "saliency",
    "device": "cpu",
    "eval_batch_size": 16,
    # bf16 autocast (the CPU default where supported) rounds differently when the batch
    # is split over processes; the equality checked here is that of fp32 arithmetic
    "precision": "fp32",
}
TIMEOUT = 300


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ddp")
    # a tracking gap (NaN behaviour) in the training block: shards hold unequal numbers
    # of targets, so only the global-count weighting of the masked MSE matches one process
    make_session(
        d / "s.nwb",
        frames=240,
        rois=16,
        planes=1,
        n_drivers=3,
        n_channels=2,
        seed=0,
        behavior_timestamps=True,
        behavior_gap=(20.0, 31.0),
    )
    bert_dir(d / "tinybert")
    return d


def _toml(path: Path, options: dict[str, Any]) -> Path:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return repr(v)

    path.write_text("[fit]\n" + "".join(f"{k} = {value(v)}\n" for k, v in options.items()))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    import accelerate

    paths = [
        str(Path(nwb_llmdecode.__file__).parents[1]),
        str(Path(accelerate.__file__).parents[1]),
    ]
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    env.update(
        PYTHONPATH=os.pathsep.join([*paths, env.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def _accelerate(n: int, *extra: str) -> list[str]:
    # On a machine without GPUs accelerate's --multi_gpu launcher starts n processes that
    # use gloo on the CPU (accelerate launch --cpu alone starts a single process).
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        *extra,
        "-m",
        "nwb_llmdecode",
    ]


def _torchrun(n: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(n),
        "--master-port",
        str(_free_port()),
        "-m",
        "nwb_llmdecode",
    ]


def _fit(launcher: list[str], work: Path, out: Path, config: Path) -> subprocess.CompletedProcess:
    cmd = [
        *launcher,
        "-v",
        "fit",
        str(work / "s.nwb"),
        "--config",
        str(config),
        "--out",
        str(out),
        "--json",
    ]
    proc = subprocess.run(
        cmd, cwd=work, env=_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _report(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{"output"')]
    assert len(lines) == 1, f"expected one JSON report (rank 0 only), got {len(lines)}"
    return json.loads(lines[0])


def _metrics(report: dict[str, Any]) -> dict[tuple[str, int, str], dict[str, float]]:
    return {(r["behavior"], r["channel"], r["split"]): r for r in report["metrics"]}


def _assert_same_fit(one: Path, two: Path, rtol: float, atol: float) -> None:
    from nwb_llmdecode.io.results import read_results

    w1 = torch.load(one.with_name(f"{one.stem}_checkpoint") / "weights.pt", weights_only=True)
    w2 = torch.load(two.with_name(f"{two.stem}_checkpoint") / "weights.pt", weights_only=True)
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k].float(), w1[k].float(), rtol=rtol, atol=atol, msg=k)
    r1, r2 = read_results(one, session=False), read_results(two, session=False)
    np.testing.assert_allclose(
        r2["predictions"].values, r1["predictions"].values, rtol=rtol, atol=atol
    )
    if "salience" in r1:
        np.testing.assert_allclose(r2["salience"].values, r1["salience"].values, rtol=1e-3)


def _only_outputs(directory: Path, name: str) -> None:
    """Exactly one results file and one checkpoint: nothing from rank 1, no temporaries."""
    entries = sorted(p.name for p in directory.iterdir())
    assert entries == [name, f"{Path(name).stem}_checkpoint"], entries


def _compare(a: dict[str, Any], b: dict[str, Any], rtol: float, atol: float) -> None:
    ma, mb = _metrics(a), _metrics(b)
    assert ma.keys() == mb.keys()
    for key, row in ma.items():
        for m in ("rmse", "r2", "pearson"):
            assert mb[key][m] == pytest.approx(row[m], rel=rtol, abs=atol), (key, m)
        assert mb[key]["n_frames"] == row["n_frames"]


def test_accelerate_two_processes_equal_one_process(work: Path) -> None:
    config = _toml(work / "tiny.toml", {"backbone": str(work / "tinybert"), **OPTIONS})
    (work / "one").mkdir()
    (work / "two").mkdir()
    single = _fit([sys.executable, "-m", "nwb_llmdecode"], work, work / "one" / "r.nwb", config)
    double = _fit(_accelerate(2, "--mixed_precision", "no"), work, work / "two" / "r.nwb", config)
    assert "distributed" not in single.stderr
    assert "distributed fit: DDP, 2 processes (gloo), rank 0" in double.stderr
    assert "distributed fit: DDP, 2 processes (gloo), rank 1" in double.stderr
    _compare(_report(single), _report(double), rtol=1e-4, atol=1e-5)
    _assert_same_fit(work / "one" / "r.nwb", work / "two" / "r.nwb", rtol=1e-4, atol=1e-5)
    _only_outputs(work / "two", "r.nwb")
    # the checkpoint written by rank 0 is a normal one: it says where it ran
    meta = json.loads((work / "two" / "r_checkpoint" / "checkpoint.json").read_text())
    assert meta["device"] == "cpu"


def test_torchrun_lstm_two_processes_equal_one_process(work: Path) -> None:
    options = {**OPTIONS, "backbone": "lstm", "lstm": {"hidden": 16}, "init": "pretrained"}
    config = _toml(work / "lstm.toml", options)
    (work / "lstm1").mkdir()
    (work / "lstm2").mkdir()
    single = _fit([sys.executable, "-m", "nwb_llmdecode"], work, work / "lstm1" / "r.nwb", config)
    double = _fit(_torchrun(2), work, work / "lstm2" / "r.nwb", config)
    assert "distributed fit: DDP, 2 processes (gloo)" in double.stderr
    _compare(_report(single), _report(double), rtol=1e-4, atol=1e-5)
    _assert_same_fit(work / "lstm1" / "r.nwb", work / "lstm2" / "r.nwb", rtol=1e-4, atol=1e-5)
    _only_outputs(work / "lstm2", "r.nwb")


# ----------------------------------------------------------------------------------------
# CUDA (two GPUs): bf16, and a 4-bit quantised backbone with LoRA
# ----------------------------------------------------------------------------------------

needs_two_gpus = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="needs two CUDA devices (NCCL puts one process on each)",
)


@pytest.mark.gpu
@needs_two_gpus
def test_cuda_bf16_two_processes_match_one(work: Path) -> None:
    options = {**OPTIONS, "backbone": str(work / "tinybert"), "device": "cuda"}
    config = _toml(work / "cuda.toml", options)
    (work / "cuda1").mkdir()
    (work / "cuda2").mkdir()
    single = _fit([sys.executable, "-m", "nwb_llmdecode"], work, work / "cuda1" / "r.nwb", config)
    double = _fit(
        _accelerate(2, "--mixed_precision", "bf16"), work, work / "cuda2" / "r.nwb", config
    )
    assert "distributed fit: DDP, 2 processes (nccl)" in double.stderr
    # the backbone runs in bf16 in both (autocast): rounding differs between batch shapes
    _compare(_report(single), _report(double), rtol=5e-2, atol=2e-2)
    _only_outputs(work / "cuda2", "r.nwb")


@pytest.mark.gpu
@needs_two_gpus
def test_cuda_4bit_lora_two_processes_match_one(work: Path) -> None:
    pytest.importorskip("bitsandbytes")
    bert = bert_dir(work / "tinybert64", hidden=64)  # saved weights: "pretrained"
    options = {
        **OPTIONS,
        "backbone": str(bert),
        "init": "pretrained",
        "device": "cuda",
        "quantize": "4bit",
        "train_mode": "lora",
        "lora": {"r": 4, "dropout": 0.0},
    }
    config = _toml(work / "qlora.toml", options)
    (work / "q1").mkdir()
    (work / "q2").mkdir()
    single = _fit([sys.executable, "-m", "nwb_llmdecode"], work, work / "q1" / "r.nwb", config)
    double = _fit(_accelerate(2, "--mixed_precision", "bf16"), work, work / "q2" / "r.nwb", config)
    assert "distributed fit: DDP, 2 processes (nccl)" in double.stderr
    _compare(_report(single), _report(double), rtol=5e-2, atol=2e-2)
    _only_outputs(work / "q2", "r.nwb")


def test_fsdp_transformer_wrap_finds_the_backbone_layers(work: Path) -> None:
    """FSDP itself needs GPUs (accelerate trains CPU processes with DDP); what can be
    checked here is the wiring: accelerate's TRANSFORMER_BASED_WRAP policy, given no
    layer class, shards the decoder per transformer layer of its backbone."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from nwb_llmdecode.config import FitConfig
    from nwb_llmdecode.engine.distributed import expose_layer_classes
    from nwb_llmdecode.models.decoder import build_model

    cfg = FitConfig(backbone=str(work / "tinybert"), init="random", device="cpu")
    model = build_model(cfg, n_rois=16, n_channels=2)
    assert "BertLayer" in expose_layer_classes(model)
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap"
    )
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [type(m).__name__ for m in model.modules() if policy(m)]
    assert wrapped.count("BertLayer") == 2  # both layers of the tiny backbone


def test_other_commands_refuse_a_multi_process_launch(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only fit shares its work; inspect, predict, compare... would write once per rank."""
    from nwb_llmdecode.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["inspect", str(work / "s.nwb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only fit trains on several processes" in err[0]
