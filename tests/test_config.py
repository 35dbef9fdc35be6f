"""FitConfig: validated options, model-family sections, one JSON round trip."""

from __future__ import annotations

import json

import pytest

from nwb_llmdecode.config import (
    FitConfig,
    LoRAOptions,
    LSTMOptions,
    ReservoirOptions,
    RidgeOptions,
)
from nwb_llmdecode.errors import ConfigError


def test_sections_round_trip_through_json():
    cfg = FitConfig(
        backbone="ridge",
        ridge={"alphas": [1.0, 10.0], "lags": 4},
        lstm=LSTMOptions(hidden=16),
        lora={"r": 4},
    )
    assert cfg.ridge == RidgeOptions(alphas=(1.0, 10.0), lags=4)
    assert cfg.lora == LoRAOptions(r=4) and cfg.reservoir == ReservoirOptions()
    data = json.loads(cfg.to_json())
    assert data["ridge"] == {"alphas": [1.0, 10.0], "lags": 4}
    assert not any(k.startswith(("ridge_", "lstm_", "lora_", "reservoir_")) for k in data)
    assert FitConfig.from_json(cfg.to_json()) == cfg
    assert hash(cfg) == hash(FitConfig.from_json(cfg.to_json()))


def test_flat_names_of_earlier_versions_are_still_read():
    old = {"backbone": "lstm", "lstm_hidden": 8, "ridge_alphas": [2.0], "spectral_radius": 0.5}
    cfg = FitConfig.from_dict(old)
    assert cfg.lstm.hidden == 8 and cfg.ridge.alphas == (2.0,)
    assert cfg.reservoir.spectral_radius == 0.5 and cfg.reservoir.size == 500
    changed = cfg.replace(lstm_layers=2, lora_r=2)
    assert changed.lstm == LSTMOptions(hidden=8, layers=2) and changed.lora.r == 2


@pytest.mark.parametrize(
    "options,needle",
    [
        ({"ridge": {"alphas": []}}, "ridge.alphas"),
        ({"ridge": {"lags": 30}, "seq_len": 20}, "ridge.lags=30"),
        ({"ridge_lags": 0}, "ridge.lags=0"),
        ({"lstm": {"hidden": "big"}}, "lstm.hidden='big'"),
        ({"reservoir": {"spectral_radius": 1.5}}, "reservoir.spectral_radius"),
        ({"lora": {"dropout": 1.0}}, "lora.dropout"),
        ({"lstm": {"width": 3}}, "unknown lstm option(s) 'width'"),
        ({"ridge": 3}, "expected a table of ridge options"),
        ({"lstm_width": 3}, "unknown option(s) 'lstm_width'"),
    ],
)
def test_bad_section_values_name_the_option(options, needle):
    with pytest.raises(ConfigError) as exc:
        FitConfig.from_dict(options)
    assert needle in str(exc.value)
