"""GPU checks (``pytest -m gpu``; skipped without CUDA): a bf16 fit on CUDA and batched
salience equal to captum's there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.engine import fit_arrays
from nwb_llmdecode.salience import compute_salience

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 12)).astype(np.float32)
    return x, np.tanh(x[:, :2]).astype(np.float32)


def test_fit_on_cuda_in_bf16() -> None:
    x, y = _data()
    res = fit_arrays(x, y, config=FitConfig(epochs=2, device="cuda", salience="none"))
    assert res.device.startswith("cuda")
    assert res.model.autocast == torch.bfloat16
    assert np.isfinite(res.predictions[res.splits[2][1] : res.splits[2][2]]).all()
    assert float(np.mean(res.metric("r2", "test"))) > 0.0


def test_batched_salience_equals_captum_on_cuda() -> None:
    x, y = _data()
    res = fit_arrays(x, y, config=FitConfig(epochs=1, device="cuda", precision="fp32"))
    kw = {"block": (400, 500), "seq_len": 20, "device": "cuda", "n_steps": 8}
    a = compute_salience(res.model, x, implementation="captum", **kw)
    b = compute_salience(res.model, x, **kw)
    np.testing.assert_allclose(b["salience"].values, a["salience"].values, rtol=1e-3)
