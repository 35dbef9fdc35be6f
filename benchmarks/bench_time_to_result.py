"""Time to result of the default ``fit`` (issue 14, target 1), ways of running it side by side.

Writes the demo's session once (``nwb-llmdecode synth``, the arguments of ``make demo``),
then runs ``nwb-llmdecode fit`` on it as a user would, in turn for each variant and
repeat (alternating, so that a change of load hits every variant alike):

- ``default``: ``nwb-llmdecode fit session.nwb``, torch's own thread count;
- ``1thread``: the same with ``OMP_NUM_THREADS=1``;
- ``torchrun2``: ``torchrun --standalone --nproc-per-node 2 -m nwb_llmdecode fit`` with one
  thread per process (the engine's data-parallel path over gloo, engine/distributed.py).

Each run prints one JSON line: wall seconds of the command, peak RSS of the process
(of the largest one for torchrun), the seconds at which the first and last epoch lines and
the final table appeared (start-up, training, evaluation + salience + writing), epochs
run and best epoch, test R² (mean over channels) and how many of the planted drivers are
among the top-k salient ROIs (k = number of drivers). Run it with nothing else running.

    python benchmarks/bench_time_to_result.py --repeats 2 \\
        --out benchmarks/results/time_to_result.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent
EPOCH = re.compile(r"epoch (\d+)/(\d+): .*validation loss ([0-9.]+).*?(\(best\))?, [0-9.]+ s")
VARIANTS = ("default", "1thread", "torchrun2")


def command(variant: str, session: Path, out: Path, extra: list[str]) -> tuple[list, dict]:
    env = dict(os.environ)
    fit = ["fit", str(session), "--out", str(out), "--overwrite", "--json", *extra]
    if variant == "default":
        return [str(BIN / "nwb-llmdecode"), *fit], env
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if variant == "1thread":
        return [str(BIN / "nwb-llmdecode"), *fit], env
    if variant == "torchrun2":
        launch = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2"]
        return [*launch, "-m", "nwb_llmdecode", *fit], env
    raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def run_once(
    variant: str, session: Path, out: Path, drivers: list[int], extra: list[str], log: Path | None
) -> dict:
    cmd, env = command(variant, session, out, extra)
    stamps: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stamps.append((time.perf_counter() - t0, line.rstrip()))

    reader = threading.Thread(target=read_err)
    reader.start()
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    reader.join()
    if log is not None:  # the command's stderr, each line with its second since the start
        log.write_text("".join(f"{t:7.2f} {line}\n" for t, line in stamps))
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "\n".join(line for _, line in stamps[-15:])
        raise SystemExit(f"{variant}: fit failed (exit {proc.returncode}):\n{tail}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    epochs = [(t, EPOCH.search(line)) for t, line in stamps]
    epochs = [(t, m) for t, m in epochs if m]
    best = [int(m.group(1)) for _, m in epochs if m.group(4)]
    # the salience table: "rank roi plane roi_id salience" rows after "Most salient ROIs"
    top: list[int] = []
    after = False
    for _, line in stamps:
        if line.startswith("Most salient ROIs"):
            after = True
            continue
        cells = line.split()
        if after and len(cells) >= 5 and cells[0].isdigit():
            top.append(int(cells[1]))
    done = next((t for t, line in stamps if line.startswith("wrote ")), wall)
    test = [m["r2"] for m in summary["metrics"] if m["split"] == "test"]
    k = len(drivers)
    return {
        "variant": variant,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "first_epoch_line_s": round(epochs[0][0], 1) if epochs else None,
        "last_epoch_line_s": round(epochs[-1][0], 1) if epochs else None,
        "results_written_s": round(done, 1),
        "epochs_run": int(epochs[-1][1].group(1)) if epochs else 0,
        "best_epoch": best[-1] if best else 0,
        "test_r2_mean": round(sum(test) / len(test), 4),
        "test_r2": [round(x, 4) for x in test],
        "top_k_salient": top[:k],
        "drivers_in_top_k": len(set(top[:k]) & set(drivers)),
        "k": k,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--frames", type=int, default=900)
    p.add_argument("--rois", type=int, default=40)
    p.add_argument("--drivers", type=int, default=5)
    p.add_argument("--readout", default="bouts")
    p.add_argument("--fit-args", default="", help="extra fit options, one string")
    p.add_argument("--out", type=Path, help="append the JSON lines here")
    p.add_argument("--logs", type=Path, help="folder for each run's time-stamped stderr")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ttr-"))
    try:
        session = work / "sample_session.nwb"
        synth = [str(BIN / "nwb-llmdecode"), "synth", str(session), "--frames", str(args.frames)]
        synth += ["--rois", str(args.rois), "--drivers", str(args.drivers)]
        synth += ["--readout", args.readout, "--overwrite"]
        t0 = time.perf_counter()
        text = subprocess.run(synth, check=True, capture_output=True, text=True).stdout
        synth_s = time.perf_counter() - t0
        m = re.search(r"driver ROIs \[([0-9, ]*)\]", text)
        if m is None:
            raise SystemExit(f"synth did not print its driver ROIs:\n{text}")
        drivers = [int(x) for x in m.group(1).split(",") if x.strip()]
        print(json.dumps({"synth_s": round(synth_s, 1), "drivers": drivers}), flush=True)
        extra = args.fit_args.split()
        for rep in range(args.repeats):
            for variant in args.variants:
                log = None
                if args.logs is not None:
                    args.logs.mkdir(parents=True, exist_ok=True)
                    log = args.logs / f"{variant}-{rep}.log"
                row = run_once(variant, session, work / f"{variant}.nwb", drivers, extra, log)
                row.update(
                    repeat=rep,
                    session=f"{args.frames}x{args.rois} {args.readout}",
                    fit_args=args.fit_args,
                    cpu_count=os.cpu_count(),
                )
                print(json.dumps(row), flush=True)
                if args.out is not None:
                    with args.out.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
