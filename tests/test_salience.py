"""Salience with captum: checked against direct gradient computations on real torch models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nwb_llmdecode.errors import ConfigError
from nwb_llmdecode.salience import ablation_check, compute_salience, precision_at_k


class _Seq(torch.nn.Module):
    """A small nonlinear seq-to-seq model: per-frame MLP plus a one-frame lag path."""

    def __init__(self, n: int, c: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(n, 8)
        self.b = torch.nn.Linear(8, c)
        self.lag = torch.nn.Linear(n, c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        return self.b(torch.tanh(self.a(x))) + self.lag(prev)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 12)).astype(np.float32)
    return _Seq(12, 2), x


def _reference(model, x, block, seq_len, method):
    """Per-window, per-channel loop with plain autograd (no captum)."""
    starts = np.arange(block[0], block[1] - seq_len + 1)
    n_frames, n = x.shape
    by_out = np.zeros((2, n))
    course = np.zeros((n_frames, n))
    count = np.zeros(n_frames)
    for s in starts:
        w = torch.tensor(x[s : s + seq_len])[None]
        total = np.zeros((seq_len, n))
        for c in range(2):
            if method == "integrated-gradients":
                steps = 64
                grads = []
                for a in (np.arange(steps) + 0.5) / steps:  # midpoint rule
                    wi = (w * float(a)).requires_grad_(True)
                    model(wi)[..., c].sum().backward()
                    grads.append(wi.grad[0].numpy())
                attr = np.mean(grads, axis=0) * w[0].numpy()
            else:
                wi = w.clone().requires_grad_(True)
                model(wi)[..., c].sum().backward()
                g = wi.grad[0].numpy()
                attr = g if method == "saliency" else g * w[0].numpy()
            a = np.abs(attr)
            by_out[c] += a.sum(axis=0)
            total += a
        course[s : s + seq_len] += total / 2
        count[s : s + seq_len] += 1
    by_out /= len(starts) * seq_len
    with np.errstate(invalid="ignore"):
        course = course / count[:, None]
    course[count == 0] = np.nan
    return by_out.T, course


@pytest.mark.parametrize("method", ["saliency", "grad-x-input", "integrated-gradients"])
def test_matches_direct_autograd(setup, method):
    model, x = setup
    sal = compute_salience(
        model, x, block=(60, 120), seq_len=8, method=method, batch_size=7, n_steps=64
    )
    ref_by_out, ref_course = _reference(model, x, (60, 120), 8, method)
    tol = 2e-2 if method == "integrated-gradients" else 1e-5
    np.testing.assert_allclose(sal["salience_by_output"].values, ref_by_out, rtol=tol, atol=1e-6)
    np.testing.assert_allclose(sal["salience"].values, ref_by_out.mean(axis=1), rtol=tol, atol=1e-6)
    np.testing.assert_allclose(sal["timecourse"].values, ref_course, rtol=tol, atol=1e-6)
    assert np.isnan(sal["timecourse"].values[:60]).all()
    assert sal.attrs["method"] == method
    if method == "integrated-gradients":
        assert sal.attrs["convergence_delta"] < 0.05
        assert "training-block mean" in sal.attrs["baseline"]


def test_finds_planted_inputs():
    torch.manual_seed(0)
    lin = torch.nn.Linear(30, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, [3, 7]] = 2.0
        lin.weight[1, 11] = -1.0
    x = np.random.default_rng(1).standard_normal((200, 30)).astype(np.float32)
    sal = compute_salience(lin, x, block=(100, 200), seq_len=10)
    assert precision_at_k(sal["salience"].values, [3, 7, 11]) == 1.0
    # channel 1 depends on ROI 11 only
    assert np.argmax(sal["salience_by_output"].values[:, 1]) == 11
    assert sal["salience_by_output"].values[3, 1] == 0


def test_bad_arguments(setup):
    model, x = setup
    with pytest.raises(ConfigError, match="unknown"):
        compute_salience(model, x, block=(0, 50), seq_len=5, method="shap")
    with pytest.raises(ConfigError, match="shorter than seq_len"):
        compute_salience(model, x, block=(0, 4), seq_len=5)


def test_ablation_salient_hurts_more_than_random():
    rng = np.random.default_rng(0)
    weights = np.zeros(40)
    weights[:5] = 1.0
    x = rng.standard_normal((300, 40))
    y = x @ weights

    def evaluate(rois):
        xa = x.copy()
        xa[:, rois] = 0.0
        return float(np.sqrt(np.mean((xa @ weights - y) ** 2)))

    rows = ablation_check(evaluate, weights + 0.01 * rng.random(40), ks=(2, 5, 50), draws=4)
    assert {r["k"] for r in rows} == {2, 5}  # k above half the ROIs is dropped
    for k in (2, 5):
        sal = next(r for r in rows if r["k"] == k and r["kind"] == "salient")
        rand = [r["delta_rmse"] for r in rows if r["k"] == k and r["kind"] == "random"]
        assert len(rand) == 4
        assert sal["delta_rmse"] > max(rand)


@pytest.mark.parametrize("method", ["integrated-gradients", "saliency", "grad-x-input"])
def test_batched_equals_captum_reference(method):
    """The default (batched) path gives captum's attributions, delta and timecourse, and
    leaves the model's trainable weights trainable."""
    from nwb_llmdecode.models.baselines import LSTMDecoder

    torch.manual_seed(0)
    model = LSTMDecoder(6, 2, hidden_size=8)
    x = np.random.default_rng(0).standard_normal((80, 6)).astype(np.float32)
    kw = {"block": (10, 70), "seq_len": 10, "method": method, "batch_size": 8, "n_steps": 8}
    ref = compute_salience(model, x, implementation="captum", **kw)
    new = compute_salience(model, x, internal_batch_size=20, **kw)  # chunks split steps
    np.testing.assert_allclose(new["salience_by_output"], ref["salience_by_output"], rtol=1e-5)
    np.testing.assert_allclose(new["timecourse"], ref["timecourse"], rtol=1e-5)
    if method == "integrated-gradients":
        assert new.attrs["convergence_delta"] == pytest.approx(
            ref.attrs["convergence_delta"], rel=0.05, abs=1e-6
        )
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="implementation"):
        compute_salience(model, x, implementation="fast", **kw)
