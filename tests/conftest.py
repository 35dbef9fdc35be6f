"""Shared fixtures: synthetic sessions generated once per test run into a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nwb_llmdecode.synthetic import SyntheticTruth, make_session

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DANDI_NO_ET", "1")

# Under pytest-xdist (``make test`` runs two workers) each worker gets its share of the
# cores, so two torch fits side by side do not oversubscribe them; subprocesses inherit it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    import torch

    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
    torch.set_num_threads(_THREADS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the test files that hold ``slow`` tests first (stable otherwise): with one file
    per xdist worker (``--dist loadfile --no-loadscope-reorder``) the long files start at
    once instead of ending the run on one worker while the other sits idle."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sessions")


@pytest.fixture(scope="session")
def multiplane_ts(session_dir: Path) -> SyntheticTruth:
    """Two planes, image masks, timestamped behaviour with a tracking gap."""
    return make_session(
        session_dir / "multiplane_ts.nwb",
        frames=240,
        rois=40,
        planes=2,
        seed=1,
        behavior_timestamps=True,
        behavior_gap=(40.0, 44.0),
    )


@pytest.fixture(scope="session")
def singleplane_rate(session_dir: Path) -> SyntheticTruth:
    """One plane, pixel masks, rate-based behaviour in acquisition."""
    return make_session(
        session_dir / "singleplane_rate.nwb",
        frames=200,
        rois=24,
        planes=1,
        seed=2,
        mask="pixel",
        fluorescence=False,
    )


@pytest.fixture(scope="session")
def voxel_session(session_dir: Path) -> SyntheticTruth:
    """Three planes with voxel masks and a raw TwoPhotonSeries."""
    return make_session(
        session_dir / "voxel.nwb",
        frames=120,
        rois=30,
        planes=3,
        seed=3,
        mask="voxel",
        raw_imaging=True,
    )
