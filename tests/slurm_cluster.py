"""A real single-node Slurm cluster (munge, slurmctld, slurmd) for the tests, on this
machine, with its own configuration and ports in a temporary directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")


def missing() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _start_munge() -> None:
    probe = subprocess.run(
        "munge -n | unmunge", shell=True, capture_output=True, text=True, timeout=20
    )
    if probe.returncode == 0:
        return  # a munged is running already
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run([_binary("mungekey"), "-c"], check=True, timeout=30)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    for path in (
        key,
        key.parent,
        Path("/run/munge"),
        Path("/var/log/munge"),
        Path("/var/lib/munge"),
    ):
        if path.exists():
            shutil.chown(path, "munge", "munge")
    key.chmod(0o400)
    subprocess.run(
        ["su", "-s", "/bin/sh", "munge", "-c", _binary("munged")], check=True, timeout=30
    )


@contextlib.contextmanager
def slurm_cluster(root: Path) -> Iterator[dict[str, str]]:
    """Start munge (if needed), slurmctld and slurmd; yield the environment (SLURM_CONF)
    that sbatch/squeue need; stop the daemons on exit."""
    _start_munge()
    host = socket.gethostname().split(".")[0]
    for d in ("state", "spool", "log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=llmdecode-test",
                f"SlurmctldHost={host}",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "MpiDefault=none",
                "ReturnToService=2",
                "SchedulerType=sched/builtin",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "AuthType=auth/munge",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                f"NodeName={host} CPUs={os.cpu_count() or 1} RealMemory=4000 State=UNKNOWN",
                f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    env = dict(os.environ, SLURM_CONF=str(conf))
    procs = [
        subprocess.Popen([_binary("slurmctld"), "-D", "-f", str(conf)], env=env),
    ]
    time.sleep(1.0)
    procs.append(subprocess.Popen([_binary("slurmd"), "-D", "-f", str(conf)], env=env))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=20
            )
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc"):
                break
            if any(p.poll() is not None for p in procs):
                logs = "".join(
                    f.read_text()[-2000:] for f in (root / "log").glob("*.log") if f.exists()
                )
                raise RuntimeError(f"a Slurm daemon exited at start: {logs}")
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the Slurm node never became idle: {out.stdout} {out.stderr}")
        yield env
    finally:
        subprocess.run(
            ["scancel", "--full", "-u", "root"], env=env, capture_output=True, timeout=20
        )
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
