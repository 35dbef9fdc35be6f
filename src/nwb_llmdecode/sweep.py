"""Run many independent fits (a ``compare`` grid) serially or on a Dask cluster.

Each run is one task: a worker opens the source itself (a local path on a shared file
system, a URL or a DANDI identifier, streamed), fits one configuration and returns a small
row of test metrics and its test-block predictions; the session is never pickled to the
workers, and no model comes back. Schedulers (:func:`parse_scheduler`):

``local``
    Today's serial loop in this process (the default).
``processes:N``
    A :class:`dask.distributed.LocalCluster` of N worker processes on this machine.
``tcp://HOST:PORT``
    An existing Dask cluster (``dask scheduler`` + ``dask worker``).
``slurm``
    A :class:`dask_jobqueue.SLURMCluster`; ``cluster_config`` (a YAML or TOML file) sets
    ``queue``, ``cores``, ``memory``, ``walltime``, ``gpus``, ``jobs`` and any other
    ``SLURMCluster`` keyword.

Results are handed to ``on_result`` in this process as tasks finish (in completion
order), so one writer appends them to ``results.csv`` (:class:`CsvSink`: whole lines,
flushed and synced, a torn last line dropped on reading). A worker that dies loses only
the task it was running: Dask reschedules it, up to ``retries`` times, then it is
reported through ``on_error`` and the others go on.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, MissingDependencyError
from .progress import Progress

__all__ = [
    "CsvSink",
    "RunFailure",
    "SchedulerSpec",
    "fit_run",
    "parse_scheduler",
    "read_rows",
    "remember_session",
    "run_tasks",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerSpec:
    """Where the runs of a sweep execute (see :func:`parse_scheduler`)."""

    kind: str  # "local", "processes", "address", "slurm"
    workers: int = 1
    address: str | None = None
    cluster_options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.kind == "local"


_SLURM_KEYS = {
    "queue",
    "account",
    "cores",
    "processes",
    "memory",
    "walltime",
    "job_extra_directives",
    "job_script_prologue",
    "local_directory",
    "log_directory",
    "python",
    "interface",
    "scheduler_options",
    "worker_extra_args",
    "job_directives_skip",
    "name",
}


def _load_cluster_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such cluster config file (YAML or TOML)")
    try:
        text = p.read_bytes().decode("utf-8")
        if p.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # syntax errors of either format, bad UTF-8
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{p}: cannot parse the cluster config ({first}); fix it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the cluster config must be a table of options")
    data = data.get("slurm", data)
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: [slurm] must be a table of options")
    opts = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(opts) - _SLURM_KEYS - {"gpus", "jobs"})
    if unknown:
        raise ConfigError(
            f"{p}: unknown cluster option(s) {', '.join(map(repr, unknown))}; known: "
            + ", ".join(sorted(_SLURM_KEYS | {"gpus", "jobs"}))
        )
    for key in ("cores", "processes", "gpus", "jobs"):
        v = opts.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ConfigError(f"{p}: {key} = {v!r}, expected a whole number")
    return opts


def parse_scheduler(
    text: str | None, *, cluster_config: str | os.PathLike[str] | None = None
) -> SchedulerSpec:
    """``local``, ``processes:N``, ``tcp://HOST:PORT`` or ``slurm`` as a :class:`SchedulerSpec`.

    Examples
    --------
    >>> parse_scheduler("processes:2")
    SchedulerSpec(kind='processes', workers=2, address=None, cluster_options={})
    >>> parse_scheduler("tcp://127.0.0.1:8786").address
    'tcp://127.0.0.1:8786'
    """
    s = (text or "local").strip()
    if cluster_config is not None and s != "slurm":
        raise ConfigError("--cluster-config only applies to --scheduler slurm")
    if s == "local":
        return SchedulerSpec("local")
    m = re.fullmatch(r"processes(?::(\d+))?", s)
    if m:
        n = int(m.group(1) or (os.cpu_count() or 1))
        if n < 1:
            raise ConfigError(f"--scheduler {s}: need at least one worker process")
        return SchedulerSpec("processes", workers=n)
    if re.fullmatch(r"(tcp|tls|ws|wss|inproc)://[^\s/]+", s):
        return SchedulerSpec("address", address=s)
    if s == "slurm":
        opts = _load_cluster_config(cluster_config) if cluster_config is not None else {}
        return SchedulerSpec("slurm", workers=int(opts.pop("jobs", 1) or 1), cluster_options=opts)
    raise ConfigError(
        f"--scheduler {s!r}: expected local, processes:N, tcp://HOST:PORT (a running Dask "
        "scheduler) or slurm"
    )


def slurm_cluster(spec: SchedulerSpec) -> Any:
    """The ``dask_jobqueue.SLURMCluster`` of a ``slurm`` spec (not yet scaled)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise MissingDependencyError(
            "--scheduler slurm needs dask-jobqueue: pip install 'nwb-llmdecode[cluster]'"
        ) from None
    opts = dict(spec.cluster_options)
    gpus = opts.pop("gpus", None)
    opts.setdefault("cores", 1)
    opts.setdefault("memory", "8GB")
    opts.setdefault("processes", 1)
    if gpus:
        extra = list(opts.get("job_extra_directives") or [])
        extra.append(f"--gres=gpu:{int(gpus)}")
        opts["job_extra_directives"] = extra
    return SLURMCluster(**opts)


# ----------------------------------------------------------------------------------------
# one run, as a worker executes it
# ----------------------------------------------------------------------------------------


_SESSIONS: dict[tuple[Any, ...], Any] = {}


def _session_key(task: dict[str, Any]) -> tuple[Any, ...]:
    return (str(task["source"]), task.get("rois"), task.get("behavior"), task.get("cache_dir"))


def remember_session(task: dict[str, Any], ds: Any) -> None:
    """Give this process the session of ``task`` (already read), so that a local sweep
    does not read it again."""
    _SESSIONS.clear()
    _SESSIONS[_session_key(task)] = ds


def _session(task: dict[str, Any]) -> Any:
    """The session of a task, read once per worker process (selections as JSON lists)."""
    from .io.read import load_session

    key = _session_key(task)
    if key not in _SESSIONS:
        _SESSIONS.clear()  # one session at a time per worker
        _SESSIONS[key] = load_session(
            str(task["source"]),
            rois=json.loads(task["rois"]) if task.get("rois") else None,
            behavior=json.loads(task["behavior"]) if task.get("behavior") else None,
            cache_dir=task.get("cache_dir"),
        )
    return _SESSIONS[key]


def fit_run(task: dict[str, Any]) -> dict[str, Any]:
    """Fit one configuration on one source with a :class:`~nwb_llmdecode.Decoder`; what
    a worker runs for one task.

    ``task`` holds ``source``, ``rois`` / ``behavior`` (JSON lists or ``None``),
    ``cache_dir``, ``config`` (the :class:`~nwb_llmdecode.config.FitConfig` as JSON),
    ``run`` (the grid keys, returned as they are), optionally ``salience`` (a method, for
    decoders with gradients) and ``threads`` (torch threads for this run). Returns
    ``run``, ``device``, ``train_time_s``, ``metrics`` rows (``channel``, ``split``,
    ``rmse``, ``r2``, ``pearson``, ``n_frames``), ``test_block`` and the test block's
    ``test_predictions`` (original units) and per-ROI ``salience`` (or ``None``).
    """
    import time

    import numpy as np

    from .config import FitConfig
    from .estimator import Decoder

    if task.get("threads"):
        import torch

        torch.set_num_threads(int(task["threads"]))
    ds = _session(task)
    t0 = time.perf_counter()
    dec = Decoder(FitConfig.from_json(task["config"])).fit(ds)
    train_time = time.perf_counter() - t0
    splits = dec.splits_
    start, stop = (int(splits[k].sel(split="test")) for k in ("start", "stop"))
    salience = None
    if task.get("salience") and dec.has_gradients:
        sal = dec.explain(method=task["salience"])
        salience = np.asarray(sal["salience"].values, dtype=np.float32)
    score = dec.score()
    metrics = [
        {
            "channel": c,
            "split": str(split),
            **{m: score[m].values[i, c].item() for m in ("rmse", "r2", "pearson", "n_frames")},
        }
        for c in range(score.sizes["channel"])
        for i, split in enumerate(score["split"].values)
    ]
    return {
        "run": dict(task["run"]),
        "device": str(dec.device_),
        "train_time_s": round(train_time, 3),
        "metrics": metrics,
        "test_block": [start, stop],
        "test_predictions": dec.predictions_.values[start:stop].astype(np.float32),
        "salience": salience,
    }


# ----------------------------------------------------------------------------------------
# running the tasks
# ----------------------------------------------------------------------------------------


@dataclass
class RunFailure:
    """A task that failed for good (its error, after Dask's retries)."""

    task: dict[str, Any]
    error: str


@contextlib.contextmanager
def _client_for(spec: SchedulerSpec, retries: int) -> Iterator[Any]:
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise MissingDependencyError(
            f"--scheduler {spec.kind} needs dask.distributed: pip install 'nwb-llmdecode[cluster]'"
        ) from None
    # a worker that dies mid-task: its task is rescheduled, `retries` times at most
    with dask.config.set({"distributed.scheduler.allowed-failures": int(retries)}):
        if spec.kind == "processes":
            cluster = LocalCluster(
                n_workers=spec.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            )
            with cluster, Client(cluster) as client:
                yield client
        elif spec.kind == "address":
            try:
                client = Client(spec.address, timeout="20s")
            except OSError as exc:
                raise ConfigError(
                    f"--scheduler {spec.address}: cannot reach a Dask scheduler there "
                    f"({' '.join(str(exc).split())[:160]}); start one with `dask scheduler`"
                ) from None
            with client:
                yield client
        else:
            cluster = slurm_cluster(spec)
            with cluster:
                cluster.scale(jobs=spec.workers)
                with Client(cluster) as client:
                    yield client


def run_tasks(
    func: Callable[[dict[str, Any]], dict[str, Any]],
    tasks: Sequence[dict[str, Any]],
    *,
    scheduler: SchedulerSpec,
    on_result: Callable[[dict[str, Any], dict[str, Any]], None],
    retries: int = 2,
    progress: Progress | None = None,
) -> list[RunFailure]:
    """Run ``func(task)`` for every task and hand each result to ``on_result(task, out)``.

    Local: in order, in this process; an exception stops the sweep (as a serial run
    does). On Dask: in completion order; a task whose worker died is rescheduled up to
    ``retries`` times, and a task that keeps failing (or raises) is returned as a
    :class:`RunFailure` while the others finish. ``progress("runs", done, total)``.
    """
    total = len(tasks)
    if progress:
        progress("runs", 0, total)
    if scheduler.is_local:
        for i, task in enumerate(tasks):
            on_result(task, func(task))
            if progress:
                progress("runs", i + 1, total)
        return []
    from distributed import as_completed

    failures: list[RunFailure] = []
    with _client_for(scheduler, retries) as client:
        log.info("sweep of %d runs on %s", total, client.scheduler)
        # no retries of runs that raise (a bad option fails the same way again); a run
        # whose worker died is rescheduled by the scheduler (allowed-failures)
        token = uuid.uuid4().hex[:12]  # keys unique on a cluster shared by other sweeps
        futures = {
            client.submit(func, task, pure=False, key=f"nwb-llmdecode-{token}-run-{i}"): task
            for i, task in enumerate(tasks)
        }
        done = 0
        for fut in as_completed(futures):
            task = futures[fut]
            try:
                out = fut.result()
            except Exception as exc:  # a run that failed for good: report, go on
                text = " ".join(str(exc).split())[:300] or type(exc).__name__
                log.warning("run %s failed: %s: %s", task.get("run"), type(exc).__name__, text)
                failures.append(RunFailure(task, f"{type(exc).__name__}: {text}"))
            else:
                on_result(task, out)
            done += 1
            if progress:
                progress("runs", done, total)
    return failures


# ----------------------------------------------------------------------------------------
# results.csv
# ----------------------------------------------------------------------------------------


class CsvSink:
    """Append rows to a CSV file as whole lines, each flushed and synced to disk.

    The header is that of the first row (or of the file if it exists); a row with other
    keys is written in the header's order (missing keys empty, extra keys refused). A
    kill while a line is written leaves at most that one torn line, which
    :func:`read_rows` drops.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, newline="", encoding="utf-8") as fh:
                self.columns = next(csv.reader(fh), None)
            self._repair()

    def _repair(self) -> None:
        """Cut a torn last line (no newline at the end) left by a kill."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
                os.fsync(fh.fileno())
            log.warning("%s: dropped a torn last line left by an interrupted run", self.path)

    def append(self, row: dict[str, Any]) -> None:
        """Write one row (and the header first, for a new file)."""
        lines = io.StringIO()
        writer = csv.writer(lines, lineterminator="\n")
        if self.columns is None:
            self.columns = list(row)
            writer.writerow(self.columns)
        extra = sorted(set(row) - set(self.columns))
        if extra:
            raise ConfigError(
                f"{self.path}: a run has columns the file has not ({', '.join(extra)}); start "
                "the comparison again in a new --report directory"
            )
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in self.columns])
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines.getvalue().encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)


def read_rows(path: str | os.PathLike[str]) -> Any:
    """``results.csv`` as a DataFrame, without a torn last line; empty when absent."""
    import pandas as pd

    p = Path(path)
    if not p.exists() or not p.stat().st_size:
        return pd.DataFrame()
    data = p.read_bytes()
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
    return pd.read_csv(io.BytesIO(data))
