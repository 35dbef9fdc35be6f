"""Results fit for sharing: traceable to their source, named as DANDI expects, and read
cleanly by pynapple (issue 17, "Sharing")."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from pynwb import NWBHDF5IO

from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.io.read import AlignmentWarning, read_session
from nwb_llmdecode.io.sources import open_nwb
from nwb_llmdecode.io.write import default_output_path, derived_name, write_derived
from nwb_llmdecode.pipeline import fit
from nwb_llmdecode.synthetic import make_session


@pytest.mark.parametrize(
    "source,name",
    [
        ("data/sub-fish1_ses-2_ophys.nwb", "sub-fish1_ses-2_desc-llmdecode_ophys.nwb"),
        (
            "sub-1_ses-a_obj-x_desc-raw_ophys+behavior.nwb",
            "sub-1_ses-a_obj-x_desc-llmdecode_ophys+behavior.nwb",
        ),
        ("sub-1.nwb", "sub-1_desc-llmdecode.nwb"),
        ("session.nwb", "session_desc-llmdecode.nwb"),
        ("https://host/a/..%2F..%2Fevil.nwb", "evil_desc-llmdecode.nwb"),
        ("https://host/a/%2E%2E%2F.hidden.nwb?sig=1", "hidden_desc-llmdecode.nwb"),
        ("https://host/data/..", "data_desc-llmdecode.nwb"),
        ("..", "session_desc-llmdecode.nwb"),
        ("https://host/api/assets/3f2a-b1/download/", "asset-3f2a-b1_desc-llmdecode.nwb"),
        ("DANDI:000123/draft/sub-7/sub-7_ses-1_ophys.nwb", "sub-7_ses-1_desc-llmdecode_ophys.nwb"),
        ("weird name;$(rm -rf).nwb", "weird_name_rm_-rf_desc-llmdecode.nwb"),
    ],
)
def test_default_names_are_visible_sane_and_dandi_shaped(source, name, tmp_path):
    out = default_output_path(source, directory=tmp_path)
    assert out == tmp_path / name
    assert not out.name.startswith(".")
    # a DANDI-named source gives a name DANDI's own layout check accepts
    from dandi.organize import ORGANIZED_FILENAME_REGEX

    src_name = Path(source.split("?")[0]).name
    if re.fullmatch(ORGANIZED_FILENAME_REGEX, src_name):
        assert re.fullmatch(ORGANIZED_FILENAME_REGEX, out.name), out.name
    assert derived_name(out.stem) == out.name  # deriving twice does not stack entities


def test_remote_sources_default_to_the_current_directory():
    out = default_output_path("https://host/x/sub-1_ses-1_ophys.nwb")
    assert out.parent == Path.cwd()
    assert default_output_path("data/s.nwb").parent == Path("data")


@pytest.fixture(scope="module")
def dandiset(tmp_path_factory):
    """A local dandiset folder with one DANDI-named session and its fitted results."""
    root = tmp_path_factory.mktemp("dandiset")
    (root / "dandiset.yaml").write_text("identifier: DANDI:000123\nname: llmdecode results\n")
    sub = root / "sub-synthetic-fish"  # make_session's subject_id
    truth = make_session(
        sub / "sub-synthetic-fish_ses-1_ophys.nwb", frames=300, rois=12, planes=1, n_drivers=2
    )
    report = fit(truth.path, config=FitConfig(backbone="ridge", salience="none"))
    return root, truth, report


def test_results_of_a_dandi_named_session_pass_dandi_validate(dandiset):
    root, truth, report = dandiset
    assert report.output == truth.path.with_name(
        "sub-synthetic-fish_ses-1_desc-llmdecode_ophys.nwb"
    )
    dandi = Path(sys.executable).with_name("dandi")
    proc = subprocess.run(
        [str(dandi), "validate", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, DANDI_NO_ET="1"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No errors found" in proc.stdout + proc.stderr


def test_results_record_where_they_came_from(dandiset):
    _root, truth, report = dandiset
    with NWBHDF5IO(str(truth.path), "r") as io:
        identifier = io.read().identifier
    with NWBHDF5IO(str(report.output), "r") as io:
        f = io.read()
        run = f.processing["llmdecode"]["decoding_run"].to_dataframe().iloc[0]
        assert f.identifier != identifier  # a new file, traced to the old one
    assert run["source"] == str(truth.path.resolve())
    assert run["source_identifier"] == identifier
    assert run["source_sha256"] == hashlib.sha256(truth.path.read_bytes()).hexdigest()
    assert json.loads(run["sessions"]) == [identifier]


def test_pynapple_loads_every_written_object_without_warnings(multiplane_ts, tmp_path):
    import numpy as np
    import pynapple as nap

    from test_write import _results

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlignmentWarning)
        with open_nwb(multiplane_ts.path) as src:
            ds = read_session(src)
            res = _results(ds)
            out = write_derived(src, res, tmp_path / "r.nwb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = nap.load_file(str(out))
        loaded = {k: data[k] for k in data.keys()}
    assert [str(w.message) for w in caught] == []
    splits = loaded["decoding_splits"]
    assert isinstance(splits, nap.IntervalSet)
    assert splits["split_name"].tolist() == ["train", "validation", "test"]
    pred = loaded["predictions/tail_angles"]
    assert isinstance(pred, nap.TsdFrame)
    np.testing.assert_array_equal(pred.values, res.predictions)
    assert any(k.startswith("salience_timecourse") for k in loaded)
