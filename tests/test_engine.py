"""fit_arrays end to end on synthetic sessions: quality, modes, baselines, checkpoints, errors."""

from __future__ import annotations

import json
import resource

import numpy as np
import pytest
import torch

from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine import (
    Checkpoint,
    FitResult,
    compute_metrics,
    fit_arrays,
    load_checkpoint,
    predict_arrays,
    regression_metrics,
    save_checkpoint,
)
from nwb_llmdecode.errors import ConfigError, DataError, OutputExistsError
from nwb_llmdecode.models import Decoder, LSTMDecoder, ReservoirDecoder, RidgeDecoder
from nwb_llmdecode.windows import min_frames_for_split, split_blocks

# Short runs: the default fit's quality over seeds is tests/test_default_fit.py and
# benchmarks/RESULTS.md.
QUICK = {"seq_len": 10, "epochs": 1, "max_windows_per_epoch": 48, "eval_batch_size": 256}


@pytest.fixture(scope="session")
def session(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    """A small synthetic session: 360 frames x 24 ROIs, 3 tail-angle channels."""
    from nwb_llmdecode import load_session
    from nwb_llmdecode.synthetic import make_session

    path = tmp_path_factory.mktemp("sessions") / "small.nwb"
    make_session(path, frames=360, rois=24, planes=1, n_drivers=4, seed=3)
    ds = load_session(path)
    return ds.activity.values, ds.behavior.values


def _check_result(res: FitResult, activity: np.ndarray, behavior: np.ndarray) -> None:
    t, c = behavior.shape
    assert res.predictions.shape == (t, c) and res.predictions.dtype == np.float32
    assert [s[0] for s in res.splits] == ["train", "validation", "test"]
    assert len(res.metrics) == 3 * c
    assert {r["split"] for r in res.metrics} == {"train", "validation", "test"}
    for row in res.metrics:
        assert set(row) == {"channel", "split", "rmse", "r2", "pearson", "n_frames"}
        assert row["n_frames"] > 0 and np.isfinite(row["rmse"])
    # the gaps between blocks get no prediction; the blocks get one everywhere
    gap = slice(res.splits[0][2], res.splits[1][1])
    assert np.isnan(res.predictions[gap]).all()
    for _, start, stop in res.splits:
        assert np.isfinite(res.predictions[start:stop]).all()
    # predictions are in original units (radians), not z-scores
    test = slice(res.splits[2][1], res.splits[2][2])
    scale = np.nanstd(behavior, axis=0)
    assert np.all(np.abs(np.nanmean(res.predictions[test], axis=0)) < 5 * scale + 1.0)


# ----------------------------------------------------------------------------------------
# every backbone, mode and baseline runs end to end
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "model_type"),
    [
        ({"train_mode": "frozen"}, Decoder),
        ({"train_mode": "lora", "embedding": "positional"}, Decoder),
        ({"train_mode": "full", "init": "random"}, Decoder),
        ({"backbone": "lstm", "lstm": {"hidden": 16}}, LSTMDecoder),
        ({"backbone": "ridge"}, RidgeDecoder),
        ({"backbone": "reservoir", "reservoir": {"size": 100}}, ReservoirDecoder),
    ],
    ids=[
        "minilm-frozen",
        "minilm-lora-positional",
        "minilm-random-full",
        "lstm",
        "ridge",
        "reservoir",
    ],
)
def test_backbones_modes_and_baselines_run_end_to_end(session, options, model_type):
    activity, behavior = session
    res = fit_arrays(activity, behavior, config=FitConfig(**{**QUICK, **options}))
    assert isinstance(res.model, model_type)
    _check_result(res, activity, behavior)
    assert res.device == "cpu" and res.duration_s > 0
    if isinstance(res.model, Decoder):
        assert res.model.train_mode == res.config.train_mode
        assert len(res.history) == 1 and res.best_epoch in (0, 1)  # 0: the ridge base kept


def test_smollm2_lora_runs_end_to_end(session, tmp_path):
    activity, behavior = session
    cfg = FitConfig(backbone="smollm2", train_mode="lora", **{**QUICK, "max_windows_per_epoch": 16})
    res = fit_arrays(activity, behavior, config=cfg)
    assert isinstance(res.model, Decoder)
    assert res.model.model_type == "llama" and res.model.causal
    lora = [n for n, p in res.model.named_parameters() if p.requires_grad and "lora_" in n]
    assert any(".q_proj." in n for n in lora) and any(".v_proj." in n for n in lora)
    _check_result(res, activity, behavior)
    # adapters only: the checkpoint is tiny compared with the 135 M parameter backbone
    d = save_checkpoint(res, tmp_path / "ckpt")
    assert (d / "weights.pt").stat().st_size < 5_000_000


# ----------------------------------------------------------------------------------------
# training behaviour
# ----------------------------------------------------------------------------------------


def test_seed_makes_cpu_runs_reproducible(session):
    activity, behavior = session
    cfg = FitConfig(backbone="lstm", lstm={"hidden": 16}, **{**QUICK, "epochs": 2})
    a = fit_arrays(activity, behavior, config=cfg)
    b = fit_arrays(activity, behavior, config=cfg)
    c = fit_arrays(activity, behavior, config=cfg.replace(seed=1))
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert not np.allclose(a.predictions, c.predictions, equal_nan=True)


def test_progress_reports_loading_epochs_and_evaluation(session):
    activity, behavior = session
    calls: list[tuple[str, int, int]] = []
    fit_arrays(
        activity,
        behavior,
        config=FitConfig(train_mode="frozen", **{**QUICK, "epochs": 2}),
        progress=lambda *a: calls.append(a),
    )
    stages = [c[0] for c in calls]
    assert stages[0] == "load backbone" and ("load backbone", 1, 1) in calls
    assert "epoch 1/2" in stages and "epoch 2/2" in stages
    assert stages[-1] == "evaluate" and calls[-1][1] == calls[-1][2]
    epoch1 = [c for c in calls if c[0] == "epoch 1/2"]
    assert epoch1[-1][1] == epoch1[-1][2] == 2  # 48 windows / batch 32


def test_early_stopping_restores_the_best_state(session):
    activity, _ = session
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((activity.shape[0], 1)).astype(np.float32)  # undecodable
    cfg = FitConfig(
        backbone="lstm",
        lstm={"hidden": 32},
        lr=1e-2,
        embedding_l2=0.0,
        patience=2,
        seq_len=10,
        epochs=30,
    )
    res = fit_arrays(activity, noise, config=cfg)
    assert res.stopped_early and len(res.history) < 30
    assert len(res.history) - res.best_epoch == 2
    best = res.history[res.best_epoch - 1]
    assert best["best"] and best["val_loss"] == min(h["val_loss"] for h in res.history)
    # the returned model is the best epoch's: its validation loss is the recorded one
    _, v0, v1 = res.splits[1]
    norm = res.normalization
    pred = norm.behavior(res.predictions[v0:v1])
    target = norm.behavior(noise[v0:v1])
    assert float(np.mean((pred - target) ** 2)) == pytest.approx(best["val_loss"], rel=1e-4)


def test_blend_weight_is_chosen_on_validation_and_folded_into_the_model(session):
    from nwb_llmdecode.engine.train import BLEND_WEIGHTS

    activity, behavior = session
    cfg = FitConfig(**{**QUICK, "epochs": 2, "precision": "fp32", "blend_lstm": False})
    assert cfg.residual == "blend"  # the default
    res = fit_arrays(activity, behavior, config=cfg)
    chosen = res.extra["fit"]
    w = chosen["blend_weight"]
    losses = chosen["blend_val_losses"]
    assert w in BLEND_WEIGHTS and list(losses) == [str(x) for x in BLEND_WEIGHTS]
    # the kept weight is the best on validation: no worse than either part alone
    assert chosen["blend_val_loss"] == min(losses.values()) == losses[str(w)]
    assert chosen["transformer_val_loss"] == losses["1.0"]
    # ridge alone (w = 0), stitched through the decoder, is the ridge baseline itself
    assert losses["0.0"] == pytest.approx(chosen["residual_ridge_val_loss"], rel=1e-5)
    ridge = fit_arrays(activity, behavior, config=FitConfig(backbone="ridge", seq_len=10))
    lags = chosen["residual_ridge_lags"]
    assert lags == ridge.model.lags
    # folded in: the base holds (1 - w) x ridge's weights, and the model is head + base
    model = res.model
    assert model.lstm is None
    np.testing.assert_allclose(
        model.base.weights[:lags].numpy(), (1 - w) * ridge.model.weights, rtol=1e-5, atol=1e-7
    )
    x = torch.randn(2, cfg.seq_len, activity.shape[1])
    with torch.no_grad():
        out = model(x)
        base_only = model.base(x)
    assert not torch.allclose(out, base_only) or w == 0.0
    # nothing of the base survives in training: a blend with w = 1 is the transformer alone
    alone = fit_arrays(activity, behavior, config=cfg.replace(residual="none"))
    assert alone.history[0]["train_loss"] == pytest.approx(res.history[0]["train_loss"], rel=1e-5)


def test_three_way_blend_holds_the_lstm_baseline_and_leaves_the_transformer_alone(session):
    from nwb_llmdecode.engine.train import BLEND3_WEIGHTS

    activity, behavior = session
    cfg = FitConfig(**{**QUICK, "epochs": 2, "precision": "fp32", "screen": False})
    res = fit_arrays(activity, behavior, config=cfg)
    chosen = res.extra["fit"]
    wt, wl, wr = chosen["blend_weight"], chosen["blend_lstm_weight"], chosen["blend_ridge_weight"]
    losses = chosen["blend_val_losses"]
    assert list(losses) == [f"{a},{b},{c}" for a, b, c in BLEND3_WEIGHTS]
    assert len(losses) == 66 and all(abs(a + b + c - 1) < 1e-9 for a, b, c in BLEND3_WEIGHTS)
    assert chosen["blend_val_loss"] == min(losses.values()) == losses[f"{wt},{wl},{wr}"]
    assert chosen["transformer_val_loss"] == losses["1.0,0.0,0.0"]
    assert chosen["blend_lstm_val_loss"] == losses["0.0,1.0,0.0"]
    assert losses["0.0,0.0,1.0"] == pytest.approx(chosen["residual_ridge_val_loss"], rel=1e-5)
    # the LSTM part is the LSTM baseline with the same options, its output layer x wl
    lstm = fit_arrays(activity, behavior, config=cfg.replace(backbone="lstm")).model
    part = res.model.lstm.state_dict()
    for name, t in lstm.state_dict().items():
        want = t * wl if name.startswith("head.") else t
        torch.testing.assert_close(part[name], want, rtol=1e-5, atol=1e-7, msg=name)
    # and adding it changes nothing in the transformer's training
    two_way = fit_arrays(activity, behavior, config=cfg.replace(blend_lstm=False))
    assert [h["val_loss"] for h in two_way.history] == [h["val_loss"] for h in res.history]
    assert two_way.extra["fit"]["transformer_val_loss"] == chosen["transformer_val_loss"]
    # the three parts add up to the model's output
    m = res.model
    x = torch.randn(2, cfg.seq_len, activity.shape[1])
    with torch.no_grad():
        out = m(x)
        lstm_out, base_out = m.lstm(x), m.base(x)
        m.lstm, m.base = None, None
        head_out = m(x)
    torch.testing.assert_close(out, head_out + lstm_out + base_out, rtol=1e-5, atol=1e-6)


def test_lr_warmup_starts_the_learning_rate_near_zero(session):
    from nwb_llmdecode.models import build_model

    activity, behavior = session
    cfg = FitConfig(backbone="lstm", lstm={"hidden": 8}, **{**QUICK, "epochs": 1})
    torch.manual_seed(cfg.seed)
    init = build_model(cfg, n_rois=activity.shape[1], n_channels=behavior.shape[1])
    # a warm-up of a billion epochs: the first epoch's steps are ~1e-9 of the learning rate
    frozen = fit_arrays(activity, behavior, config=cfg.replace(lr_warmup=1e9)).model
    moved = fit_arrays(activity, behavior, config=cfg.replace(lr_warmup=0.0)).model
    before, after = init.state_dict(), moved.state_dict()
    for name, p1 in frozen.state_dict().items():
        assert torch.allclose(before[name], p1, atol=1e-6), name
    assert any(not torch.allclose(before[n], p, atol=1e-4) for n, p in after.items())


def test_embedding_penalty_adds_ridge_and_group_lasso_terms():
    from nwb_llmdecode.engine.loop import _embedding_penalty
    from nwb_llmdecode.models import build_model

    cfg = FitConfig(backbone="lstm", lstm={"hidden": 8}, embedding_l2=0.0, embedding_group_l1=0.0)
    model = build_model(cfg, n_rois=5, n_channels=1)
    assert _embedding_penalty(model.embedding, cfg) is None
    w = torch.stack([w.detach() for w in model.embedding.roi_weights()])  # (lags, H, N)
    hidden = w.shape[1]
    sq = (w**2).sum(dim=(0, 1))  # per ROI, over lags and hidden units
    torch.testing.assert_close(model.embedding.roi_sq_norms().detach(), sq)
    got = _embedding_penalty(model.embedding, cfg.replace(embedding_l2=0.5, embedding_group_l1=0.2))
    want = 0.5 * sq.sum() / hidden + 0.2 * sq.sqrt().sum() / hidden**0.5
    assert float(got.detach()) == pytest.approx(float(want), rel=1e-5)
    with pytest.raises(ConfigError, match="embedding_group_l1"):
        FitConfig(embedding_group_l1=-1.0)


def test_group_lasso_shrinks_the_rois_that_carry_nothing():
    # 3 of 40 ROIs drive the target; the rest are independent noise
    rng = np.random.default_rng(0)
    activity = rng.standard_normal((600, 40)).astype(np.float32)
    drivers = [3, 17, 30]
    target = activity[:, drivers] @ np.array([1.0, -0.8, 0.6], np.float32)
    behavior = (target + 0.3 * rng.standard_normal(600).astype(np.float32))[:, None]
    cfg = FitConfig(
        backbone="lstm", lstm={"hidden": 16}, seq_len=5, epochs=12, patience=12, lr=1e-2,
        embedding_l2=0.0, embedding_group_l1=0.0,
    )  # fmt: skip

    def share_of_drivers(config: FitConfig) -> float:
        model = fit_arrays(activity, behavior, config=config).model
        norms = model.embedding.roi_sq_norms().detach().sqrt()
        return float(norms[drivers].sum() / norms.sum())

    plain = share_of_drivers(cfg)
    sparse = share_of_drivers(cfg.replace(embedding_group_l1=0.05))
    assert sparse > max(1.5 * plain, 0.3), (plain, sparse)


def test_nan_behaviour_frames_are_masked(session):
    activity, behavior = session
    b = behavior.copy()
    b[50:80] = np.nan  # training frames without behaviour
    b[-20:] = np.nan  # test frames without behaviour
    res = fit_arrays(activity, b, config=FitConfig(backbone="lstm", lstm={"hidden": 8}, **QUICK))
    assert all(np.isfinite(h["train_loss"]) for h in res.history)
    test = {r["channel"]: r for r in res.metrics if r["split"] == "test"}
    _, t0, t1 = res.splits[2]
    assert test[0]["n_frames"] == (t1 - t0) - 20
    assert np.isfinite(res.predictions[-20:]).all()  # predicted even without a target


def test_normalisation_uses_the_training_block_only(session):
    activity, behavior = session
    a = activity.copy()
    test = split_blocks(len(a), seq_len=10)[2]
    a[test.start : test.stop] += (
        100.0  # a huge shift in the test block must not change the statistics
    )
    res = fit_arrays(a, behavior, config=FitConfig(backbone="ridge", seq_len=10))
    tr0, tr1 = res.splits[0][1], res.splits[0][2]
    np.testing.assert_allclose(
        res.normalization.activity_mean, activity[tr0:tr1].mean(0), rtol=1e-5
    )
    np.testing.assert_allclose(res.normalization.behavior_std, behavior[tr0:tr1].std(0), rtol=1e-4)


def test_memory_windows_are_never_materialised(tmp_path):
    # 1,500 frames x 6,000 ROIs: all windows as a copy would be 1,471 x 20 x 6,000 x 4 B
    # = 706 MB; index-based batches keep the fit far below that.
    rng = np.random.default_rng(0)
    activity = rng.standard_normal((1500, 6000), dtype=np.float32)
    behavior = activity[:, :2] * 0.5
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    cfg = FitConfig(
        backbone="lstm", lstm={"hidden": 8}, epochs=1, max_windows_per_epoch=64, eval_batch_size=64
    )
    res = fit_arrays(activity, behavior, config=cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert res.predictions.shape == (1500, 2)
    assert peak - before < 300, f"peak RSS grew by {peak - before:.0f} MiB"


# ----------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"train_mode": "lora"},
        {"train_mode": "full", "init": "random", "backbone": "minilm"},
        {"backbone": "ridge"},
        {"backbone": "reservoir", "reservoir": {"size": 50}},
        {"backbone": "lstm", "lstm": {"hidden": 8}},
    ],
    ids=["lora", "random-full", "ridge", "reservoir", "lstm"],
)
def test_checkpoint_round_trip_gives_identical_predictions(session, tmp_path, options):
    activity, behavior = session
    res = fit_arrays(activity, behavior, config=FitConfig(**{**QUICK, **options}))
    d = save_checkpoint(res, tmp_path / "ckpt")
    assert {p.name for p in d.iterdir()} == {"config.json", "checkpoint.json", "weights.pt"}
    meta = json.loads((d / "checkpoint.json").read_text())
    assert meta["n_rois"] == activity.shape[1] and meta["versions"]["torch"] == torch.__version__
    assert FitConfig.from_json((d / "config.json").read_text()) == res.config
    state = torch.load(d / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    if options.get("train_mode") == "lora":
        backbone = [k for k in state if k.startswith("model.backbone.")]
        assert backbone and all("lora_" in k for k in backbone)
    ckpt = load_checkpoint(d)
    assert isinstance(ckpt, Checkpoint) and type(ckpt.model) is type(res.model)
    # another "session" with the same ROIs: a shifted copy of this one
    other = np.roll(activity, 37, axis=0)
    want = predict_arrays(res, other)
    got = predict_arrays(d, other)
    assert got.shape == behavior.shape and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(OutputExistsError, match="overwrite"):
        save_checkpoint(res, d)
    save_checkpoint(res, d, overwrite=True)
    with pytest.raises(DataError, match="ROIs"):
        predict_arrays(ckpt, activity[:, :-1])


def test_load_checkpoint_refuses_other_directories(tmp_path):
    with pytest.raises(DataError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


# ----------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------


def test_nan_in_activity_says_how_many_and_where(session):
    activity, behavior = session
    a = activity.copy()
    a[7, 3] = np.nan
    a[9, [1, 3]] = np.nan
    a[11, 2] = np.inf
    with pytest.raises(DataError) as e:
        fit_arrays(a, behavior, config=FitConfig(backbone="ridge"))
    msg = str(e.value)
    assert "3 NaN and 1 infinite" in msg and "3 frame(s)" in msg and "3 ROI(s)" in msg
    assert "(frame 7, ROI 3)" in msg and "(frame 9, ROI 1)" in msg
    assert "\n" not in msg


def test_too_few_frames_says_the_minimum(session):
    activity, behavior = session
    need = min_frames_for_split(20, (0.7, 0.1, 0.2))
    with pytest.raises(DataError, match=f"need at least {need} frames"):
        fit_arrays(activity[:200], behavior[:200], config=FitConfig(backbone="ridge"))


@pytest.mark.parametrize(
    ("activity", "behavior", "message"),
    [
        (np.zeros(300, np.float32), np.zeros((300, 1), np.float32), "2-D"),
        (np.zeros((300, 4), np.float32), np.zeros((299, 1), np.float32), "299"),
        (np.zeros((300, 4, 2), np.float32), np.zeros((300, 1), np.float32), r"\(300, 4, 2\)"),
        (np.zeros((300, 0), np.float32), np.zeros((300, 1), np.float32), "empty"),
        (np.zeros((300, 4), np.float32), np.full((300, 2), np.nan, np.float32), "NaN in every"),
        (np.zeros((300, 4), np.float32), np.full((300, 2), np.inf, np.float32), "infinite"),
    ],
    ids=["1d-activity", "frame-mismatch", "3d-activity", "no-rois", "all-nan", "inf-behavior"],
)
def test_bad_shapes_raise_data_error(activity, behavior, message):
    with pytest.raises(DataError, match=message):
        fit_arrays(activity, behavior, config=FitConfig(backbone="ridge"))


def test_config_must_be_a_fitconfig(session):
    activity, behavior = session
    with pytest.raises(ConfigError, match="FitConfig"):
        fit_arrays(activity, behavior, config={"backbone": "ridge"})  # type: ignore[arg-type]


def test_metrics_helpers():
    rows = compute_metrics(np.array([[1.0], [2.0], [np.nan]]), np.array([[1.0], [3.0], [2.0]]), [])
    assert rows == []
    m = regression_metrics(np.array([1.0, 2.0, np.nan]), np.array([1.0, 3.0, 2.0]))
    assert m["n_frames"] == 2 and m["rmse"] == pytest.approx(np.sqrt(0.5))
    assert regression_metrics(np.array([1.0]), np.array([np.nan]))["n_frames"] == 0
