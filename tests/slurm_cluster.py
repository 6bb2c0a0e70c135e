"""A real single-node SLURM for the tests: munged, slurmctld and slurmd started by hand (no systemd)
on a minimal slurm.conf for this host, jobs submitted with sbatch and waited for with a bound.

Needs Debian's slurmctld, slurmd, slurm-client and munge packages (.ci/run installs them where it
can) and root (slurmd launches jobs as their users); `start_cluster` says why it cannot start
otherwise, and the tests are skipped with that reason.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "scancel", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing() -> str:
    """Why a cluster cannot start here ("" when it can)."""
    absent = [b for b in DAEMONS + CLIENTS if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} not found): apt-get install slurmctld slurmd slurm-client munge"
    if os.geteuid() != 0:
        return "a SLURM test cluster needs root (slurmd launches the jobs)"
    return ""


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@dataclass
class Cluster:
    """A running test cluster under `root`; `env` is what its clients need (SLURM_CONF)."""

    root: Path
    env: dict
    cpus: int
    procs: list = field(default_factory=list)

    def sbatch(self, script: Path | str, *args: str, script_args: tuple[str, ...] = (), env: dict | None = None) -> int:
        """Submits `script` (with `script_args`) with sbatch's options `args`; the job id."""
        done = subprocess.run([_binary("sbatch"), "--parsable", *args, str(script), *script_args], capture_output=True,
                              text=True,
                              env={**os.environ, **self.env, **(env or {})}, timeout=60)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, StartTime, EndTime, Reason, ...)."""
        done = subprocess.run([_binary("scontrol"), "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                              env={**os.environ, **self.env}, timeout=60)
        assert done.returncode == 0, done.stderr
        return dict(re.findall(r"(\w+)=(\S*)", done.stdout))

    def control(self, *args: str) -> None:
        done = subprocess.run([_binary(args[0]), *args[1:]], capture_output=True, text=True,
                              env={**os.environ, **self.env}, timeout=60)
        assert done.returncode == 0, done.stderr

    def wait(self, job_id: int, timeout: float, *, until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                          "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"),
             release_requeued: bool = True) -> dict[str, str]:
        """Polls the job until its state is in `until`; a requeued job waiting for its begin time
        (SLURM holds it about two minutes) is let start at once. Fails after `timeout` seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in until:
                return info
            if release_requeued and info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
                self.control("scontrol", "update", f"JobId={job_id}", "StartTime=now")
            time.sleep(1)
        raise AssertionError(f"job {job_id} did not finish within {timeout:.0f} s: {self.job(job_id)}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        pid = self.root / "munge" / "munged.pid"
        if pid.is_file():
            try:
                os.kill(int(pid.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass


def start_cluster(root: Path, cpus: int = 4, timeout: float = 60.0) -> Cluster:
    """munged, slurmctld and slurmd for this host under `root`; the node offers `cpus` CPUs (more
    than the machine has, so that two small jobs can run at once), one partition `debug`."""
    root.mkdir(parents=True, exist_ok=True)
    munge = root / "munge"
    munge.mkdir(mode=0o700, exist_ok=True)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    socket_path = munge / "munge.sock"
    subprocess.run([_binary("munged"), "--force", f"--key-file={key}", f"--socket={socket_path}",
                    f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                    f"--seed-file={munge / 'seed'}"], check=True, timeout=30)
    host = socket.gethostname().split(".")[0]
    for d in ("state", "spool"):
        (root / d).mkdir(exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=klastest", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge", f"AuthInfo=socket={socket_path}", "CredType=cred/munge",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "ReturnToService=2",
        "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "SlurmdParameters=config_overrides", "MpiDefault=none", "JobCompType=jobcomp/none",
        "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
        "MinJobAge=600", "KillWait=10",
        f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}",
        f"NodeName={host} CPUs={cpus} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {"SLURM_CONF": str(conf)}
    cluster = Cluster(root, env, cpus)
    full = {**os.environ, **env}
    for cmd in ([_binary("slurmctld"), "-D", "-i", "-f", str(conf)], [_binary("slurmd"), "-D", "-f", str(conf)]):
        cluster.procs.append(subprocess.Popen(cmd, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = subprocess.run([_binary("sinfo"), "-h", "-o", "%t"], capture_output=True, text=True, env=full)
        if done.returncode == 0 and done.stdout.strip() in ("idle", "mix", "alloc"):
            return cluster
        time.sleep(0.5)
    cluster.stop()
    raise RuntimeError(f"the test cluster did not come up within {timeout:.0f} s (logs under {root})")
