"""Sweeps on Dask (issue 15): real schedulers and workers as processes on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from nwb_llmdecode.config import FitConfig
from nwb_llmdecode.errors import ConfigError
from nwb_llmdecode.sweep import (
    CsvSink,
    SchedulerSpec,
    fit_run,
    parse_scheduler,
    read_rows,
    run_tasks,
)
from nwb_llmdecode.synthetic import make_session


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return make_session(
        tmp_path_factory.mktemp("sweep") / "s.nwb", frames=300, rois=12, planes=1, n_drivers=2
    )


def _tasks(path: Path, n_seeds: int = 3) -> list[dict]:
    tasks = []
    for backbone in ("ridge", "lstm"):
        for seed in range(n_seeds):
            cfg = FitConfig(backbone=backbone, seq_len=8, seed=seed, epochs=3, lstm={"hidden": 8})
            tasks.append(
                {
                    "source": str(path),
                    "config": cfg.to_json(),
                    "run": {"backbone": backbone, "seed": seed},
                    "threads": 1,
                }
            )
    return tasks


def _collect(spec: SchedulerSpec, tasks: list[dict], **kw) -> tuple[dict, list]:
    got: dict = {}

    def keep(task, out):
        got[(out["run"]["backbone"], out["run"]["seed"])] = out
        if kw.get("after_first") and len(got) == 1:
            kw["after_first"]()

    failures = run_tasks(
        fit_run, tasks, scheduler=spec, on_result=keep, retries=kw.get("retries", 3)
    )
    return got, failures


@pytest.mark.parametrize(
    "text,kind,workers",
    [("local", "local", 1), (None, "local", 1), ("processes:3", "processes", 3)],
)
def test_parse_scheduler(text, kind, workers):
    spec = parse_scheduler(text)
    assert (spec.kind, spec.workers) == (kind, workers)


@pytest.mark.parametrize("text", ["processes:0", "yarn", "tcp://", "http://x:1"])
def test_bad_schedulers_are_refused(text):
    with pytest.raises(ConfigError, match="--scheduler"):
        parse_scheduler(text)


def test_local_processes_give_the_same_numbers_as_serial(session):
    tasks = _tasks(session.path)
    serial, failures = _collect(SchedulerSpec("local"), tasks)
    assert not failures and len(serial) == len(tasks)
    pooled, failures = _collect(parse_scheduler("processes:2"), tasks)
    assert not failures and set(pooled) == set(serial)
    for key, out in serial.items():
        a = [(m["split"], m["channel"], m["r2"], m["rmse"]) for m in out["metrics"]]
        b = [(m["split"], m["channel"], m["r2"], m["rmse"]) for m in pooled[key]["metrics"]]
        assert [x[:2] for x in a] == [x[:2] for x in b]
        np.testing.assert_allclose([x[2:] for x in a], [x[2:] for x in b], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            out["test_predictions"], pooled[key]["test_predictions"], rtol=1e-4, atol=1e-5
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=[3, 0], ids=["reschedules-3", "reschedules-0"])
def dask_cluster(tmp_path, request):
    """``dask scheduler`` and two ``dask worker`` processes, as a user starts them; the
    scheduler reschedules a run whose worker died ``request.param`` times at most."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [str(Path(sys.executable).with_name("dask"))]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    # the scheduler's own bound on reschedules of a run whose worker died
    env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = str(request.param)
    logs = [open(tmp_path / f"{n}.log", "w") for n in ("scheduler", "w1", "w2")]
    procs = [
        subprocess.Popen(
            [*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=logs[0],
            stderr=subprocess.STDOUT,
            env=env,
        )
    ]
    time.sleep(2.0)
    for log in logs[1:]:
        procs.append(
            subprocess.Popen(
                [*dask, "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(2, timeout=60)
    try:
        yield address, procs[1:], request.param
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()


def test_a_killed_worker_loses_only_its_runs_retried_or_reported(session, dask_cluster):
    from distributed import Client

    address, workers, reschedules = dask_cluster
    tasks = _tasks(session.path, n_seeds=4)
    killed: list[tuple[int, list]] = []
    with Client(address, timeout="30s") as probe:
        pids = probe.run(os.getpid)  # worker address -> process id

        def kill_one():  # mid-grid, a worker that is running a run right now
            for _ in range(200):
                busy = {a: k for a, k in probe.processing().items() if k}
                if busy:
                    addr, keys = next(iter(busy.items()))
                    os.kill(pids[addr], signal.SIGKILL)
                    killed.append((pids[addr], list(keys)))
                    return
                time.sleep(0.05)

        got, failures = _collect(parse_scheduler(address), tasks, after_first=kill_one)
    assert killed, "no worker was busy to be killed"
    pid, lost = killed[0]
    victim = next(w for w in workers if w.pid == pid)
    assert victim.wait(timeout=10) == -signal.SIGKILL and lost
    if reschedules:
        assert failures == []
        assert len(got) == len(tasks)  # every run finished, the lost one on the other worker
    else:  # no reschedule allowed: the lost runs are reported, the others finish
        assert failures and all("KilledWorker" in f.error for f in failures)
        assert len(got) + len(failures) == len(tasks)
    for out in got.values():
        assert np.isfinite([m["r2"] for m in out["metrics"]]).all()


def test_an_unreachable_cluster_is_one_clear_error(session):
    port = _free_port()
    with pytest.raises(ConfigError, match="cannot reach a Dask scheduler"):
        run_tasks(
            fit_run,
            _tasks(session.path, 1),
            scheduler=parse_scheduler(f"tcp://127.0.0.1:{port}"),
            on_result=lambda t, o: None,
        )


def test_csv_sink_appends_whole_lines_and_survives_a_torn_one(tmp_path):
    path = tmp_path / "results.csv"
    sink = CsvSink(path)
    sink.append({"model": "ridge", "seed": 0, "r2": 0.5})
    sink.append({"model": "lstm", "seed": 0, "r2": 0.25})
    with open(path, "ab") as fh:  # a kill in the middle of the third line
        fh.write(b"lstm,1,0.3")
    assert read_rows(path)["model"].tolist() == ["ridge", "lstm"]
    again = CsvSink(path)  # --resume: the torn line is cut, appending goes on
    again.append({"model": "lstm", "seed": 1, "r2": 0.75})
    rows = read_rows(path)
    assert rows["seed"].tolist() == [0, 0, 1] and rows["r2"].tolist() == [0.5, 0.25, 0.75]
    with pytest.raises(ConfigError, match="columns the file has not"):
        again.append({"model": "x", "seed": 2, "r2": 1.0, "extra": 1})


def test_slurm_job_script_from_a_cluster_config(tmp_path):
    pytest.importorskip("dask_jobqueue")
    from nwb_llmdecode.sweep import slurm_cluster

    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(
        "slurm:\n  queue: gpu\n  cores: 4\n  memory: 16GB\n  walltime: '02:00:00'\n"
        "  gpus: 1\n  jobs: 3\n"
    )
    spec = parse_scheduler("slurm", cluster_config=cfg)
    assert spec.workers == 3
    with slurm_cluster(spec) as cluster:
        script = cluster.job_script()
    for line in ("#SBATCH -p gpu", "#SBATCH -t 02:00:00", "#SBATCH --gres=gpu:1"):
        assert line in script, script
    assert "--nthreads" in script and "4" in script
    bad = tmp_path / "bad.yaml"
    bad.write_text("slurm:\n  queues: gpu\n")
    with pytest.raises(ConfigError, match="unknown cluster option"):
        parse_scheduler("slurm", cluster_config=bad)
    with pytest.raises(ConfigError, match="only applies to --scheduler slurm"):
        parse_scheduler("local", cluster_config=cfg)


def test_compare_on_processes_writes_the_same_results_as_serial(session, tmp_path):
    from nwb_llmdecode.compare import CompareGrid, run_compare

    grid = CompareGrid(models=("ridge", "lstm"), seq_lens=(6,), seeds=2)
    base = FitConfig(epochs=2, lstm={"hidden": 8})
    seen = []
    tables = {}
    for name in ("local", "processes:2"):
        report = run_compare(
            session.path,
            grid=grid,
            base=base,
            report_dir=tmp_path / name.replace(":", "-"),
            scheduler=name,
            progress=lambda stage, done, total: seen.append((stage, done, total)),
        )
        tables[name] = (
            read_rows(report.directory / "results.csv")
            .drop(columns=["train_time_s"])
            .sort_values(["model", "seed"])
            .reset_index(drop=True)
        )
        assert sorted(p.name for p in (report.directory / "runs").glob("*.npz")) == [
            "lstm_L6_seed0.npz",
            "lstm_L6_seed1.npz",
            "ridge_L6_seed0.npz",
            "ridge_L6_seed1.npz",
        ]
    a, b = tables["local"], tables["processes:2"]
    assert list(a.columns) == list(b.columns) and len(a) == 4
    for col in a.columns:
        if a[col].dtype.kind == "f":
            np.testing.assert_allclose(a[col], b[col], rtol=1e-4, atol=1e-5, err_msg=col)
        else:
            assert a[col].tolist() == b[col].tolist(), col
    assert ("compare runs", 4, 4) in seen


def test_compare_on_a_real_slurm_cluster(session, tmp_path, monkeypatch):
    """compare --scheduler slurm: dask-jobqueue submits worker jobs to a real single-node
    Slurm (munge, slurmctld, slurmd started here), the runs come back as with local."""
    pytest.importorskip("dask_jobqueue")
    import slurm_cluster

    if slurm_cluster.missing():
        pytest.skip(f"Slurm is not installed here (missing {slurm_cluster.missing()})")
    from nwb_llmdecode.compare import CompareGrid, run_compare

    logs = tmp_path / "slurm-logs"
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(
        "slurm:\n  queue: debug\n  cores: 1\n  memory: 2GB\n  walltime: '00:10:00'\n"
        f"  jobs: 2\n  log_directory: {logs}\n  interface: lo\n"
    )
    grid = CompareGrid(models=("ridge",), seq_lens=(6, 8), seeds=1)
    with slurm_cluster.slurm_cluster(tmp_path / "slurm") as env:
        monkeypatch.setenv("SLURM_CONF", env["SLURM_CONF"])
        report = run_compare(
            session.path,
            grid=grid,
            report_dir=tmp_path / "on-slurm",
            scheduler="slurm",
            cluster_config=cfg,
        )
    local = run_compare(session.path, grid=grid, report_dir=tmp_path / "local")
    a = read_rows(report.directory / "results.csv").sort_values("seq_len")
    b = read_rows(local.directory / "results.csv").sort_values("seq_len")
    np.testing.assert_allclose(a["test_r2_mean"], b["test_r2_mean"], rtol=1e-6)
    assert list(logs.glob("*.err")), "no Slurm job ran a worker"
