"""The notebook flow: xarray in, xarray out, NWB at the end.

load a session -> ``Decoder().fit`` -> ``predict`` on a second session of the same animal
-> ``explain`` -> plot with xarray -> ``to_nwb`` -> ``read_results``.

Run it with ``python examples/notebook_flow.py`` (add ``--fast`` for a short version that
uses the LSTM baseline and few epochs). Paste the body of ``main`` into a notebook cell by
cell; nothing here needs the command line.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nwb_llmdecode import Decoder, load_session, read_results
from nwb_llmdecode.synthetic import make_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fast", action="store_true", help="LSTM baseline and few epochs")
    parser.add_argument("--out", type=Path, default=None, help="working directory")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="llmdecode-notebook-"))
    work.mkdir(parents=True, exist_ok=True)

    # Two recordings of one (synthetic) fish: same ROIs, same planted driver ROIs.
    kw = dict(frames=600, rois=30, planes=2, n_drivers=4, seed=3, overwrite=True)
    day1 = make_session(work / "sub-fish3_ses-1_ophys.nwb", **kw)
    day2 = make_session(work / "sub-fish3_ses-2_ophys.nwb", recording=1, **kw)
    print(f"driver ROIs planted: {day1.driver_rois.tolist()}")

    # 1. load: an xarray.Dataset with activity (time, roi) and behavior (time, channel)
    ds1, ds2 = load_session(day1.path), load_session(day2.path)

    # 2. fit the decoder on day 1 (time-ordered train / validation / test split)
    options = dict(backbone="lstm", epochs=10, seq_len=10) if args.fast else {}
    dec = Decoder(**options).fit(ds1)
    print(dec)
    print(dec.score()["r2"].to_pandas().round(3))

    # 3. predict day 2 with the day-1 decoder: a DataArray on day 2's time and channels
    pred = dec.predict(ds2)
    print(f"day 2, test of transfer: R² {dec.score(ds2)['r2'].values.round(3).tolist()}")

    # 4. which ROIs carry the tail angles? salience on the ROIs, with their coordinates
    sal = dec.explain(method="grad-x-input" if args.fast else None)
    top = sal.sortby("rank").isel(roi=slice(0, 5))
    rows = zip(top["roi"].values, top["plane"].values, top["roi_id"].values, strict=True)
    print("most salient ROIs (roi, plane, roi_id):", [(int(r), str(p), int(i)) for r, p, i in rows])

    # 5. plot with xarray: the coordinates label the axes
    fig, axes = plt.subplots(2, 1, figsize=(8, 5))
    ds2["behavior"].isel(channel=0).plot(ax=axes[0], label="day 2 tail angle")
    pred.isel(channel=0).plot(ax=axes[0], label="decoded from day 1's decoder")
    axes[0].set_title("tail_angles[0] on day 2: recorded and decoded")
    axes[0].legend()
    sal["salience"].plot.line("o", ax=axes[1])
    fig.tight_layout()
    fig.savefig(work / "notebook_flow.png")
    print(f"figure: {work / 'notebook_flow.png'}")

    # 6. results as NWB, and back
    out = dec.to_nwb(ds1, salience=sal, overwrite=True)
    res = read_results(out)
    print(f"results: {out}")
    print(
        f"read back: test R² {res['r2'].sel(split='test').values.round(3).tolist()}, "
        f"rank-1 ROI {int(res['roi'].values[res['rank'].values == 1][0])}"
    )


if __name__ == "__main__":
    main()
