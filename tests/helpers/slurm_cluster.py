"""A throw-away one-node SLURM cluster on this machine (for tests/test_slurm.py, or by hand).

Installs Debian's `slurm-wlm` and `munge` when they are missing (root and apt-get
needed), then starts munged, slurmctld and slurmd as child processes in the
foreground, with every file -- slurm.conf, gres.conf, munge key and socket, state,
spool, logs -- in one directory. Beyond the package install nothing under /etc is
written and no system service is touched; the daemons listen on free ports, so a
system SLURM or a second test cluster does not get in the way. Clients find the
cluster by `SLURM_CONF` (see `LocalSlurm.env`, and the srun shim it puts on PATH).

The node has the partitions `cpu` (default) and `gpu` that
workflow/profiles/slurm/profile.yaml names, and one GPU that is only a name
(File=/dev/null), so the profile's `gpu: 1` requests are accepted as they are. Facts
that make Slurm 22.05 work in containers: proctrack/linuxproc, task/none (no
cgroups), `SlurmdParameters=config_overrides` (the node claims the memory jobs ask
for), and a MinJobAge (here an hour) that keeps finished jobs visible to `squeue`
(there is no slurmdbd, hence no `sacct`).

By hand:
    python tests/helpers/slurm_cluster.py start /tmp/slurm   # prints `export SLURM_CONF=...`
    python tests/helpers/slurm_cluster.py stop /tmp/slurm
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("munge", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
PACKAGES = ("slurm-wlm", "munge")
SBIN = ("/usr/sbin", "/sbin")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def installed() -> bool:
    return all(_which(x) for x in DAEMONS + CLIENTS)


def unavailable_reason() -> str | None:
    """Why a local cluster cannot be started here, or None when it can (maybe after installing)."""
    if not sys.platform.startswith("linux"):
        return f"a local SLURM cluster needs Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "starting slurmd (and installing slurm-wlm/munge) needs root"
    if not installed() and not shutil.which("apt-get"):
        return "slurm-wlm and munge are not installed and there is no apt-get to install them"
    return None


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def install(timeout: float = 300) -> str | None:
    """apt-get install the packages if missing; returns None on success, else why not."""
    if installed():
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0", *PACKAGES]
    start = time.monotonic()
    try:
        result = _run(cmd, timeout, env)
        if result.returncode != 0:  # no package lists yet (fresh container): update once, retry
            update = _run(["apt-get", "update"], timeout, env)
            if update.returncode != 0:
                return f"apt-get update failed: {update.stderr.strip()[-500:]}"
            result = _run(cmd, max(30.0, timeout - (time.monotonic() - start)), env)
    except subprocess.TimeoutExpired:
        return f"apt-get install {' '.join(PACKAGES)} took more than {timeout:.0f} s"
    if result.returncode != 0:
        return f"apt-get install {' '.join(PACKAGES)} failed: {result.stderr.strip()[-500:]}"
    if not installed():
        return f"after installing {' '.join(PACKAGES)}, some of {DAEMONS + CLIENTS} are still missing"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _meminfo_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


class LocalSlurm:
    """munged + slurmctld + slurmd for this host, all state in `root`."""

    def __init__(self, root: str | Path, cpus: int | None = None, real_memory_mb: int | None = None):
        self.root = Path(root).resolve()
        self.conf = self.root / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        # jobs ask for what the profile says (GBs per model job); with config_overrides
        # the node claims at least 64 GB whatever it has (nothing enforces it: no cgroups)
        self.real_memory_mb = real_memory_mb or max(_meminfo_mb(), 64_000)
        self.procs: dict[str, subprocess.Popen] = {}

    # -- environment --------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """The environment for clients (sbatch, squeue, snakemake) to use this cluster."""
        path = os.environ.get("PATH", "")
        extra = [p for p in SBIN if p not in path.split(os.pathsep)]
        path = os.pathsep.join([str(self.root / "bin"), path, *extra])
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}

    def _write_config(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # munged insists that only its owner can write here
        key = self.root / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        r, log = self.root, self.root / "log"
        self.conf.write_text(
            f"""# written by tests/helpers/slurm_cluster.py -- a one-node test cluster
ClusterName=tilesamtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge.socket
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={log}/slurmctld.log
SlurmdLogFile={log}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
DefMemPerCPU=1000
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
GresTypes=gpu
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.real_memory_mb} Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={self.node} MaxTime=INFINITE State=UP
"""
        )
        # One GPU for `--gpus=1` requests. Slurm drops GPUs without a device file; with
        # task/none nothing opens it, so /dev/null will do.
        (self.root / "gres.conf").write_text(f"NodeName={self.node} Name=gpu File=/dev/null Count=1\n")
        # snakemake's slurm-jobstep removes SLURM_* variables -- SLURM_CONF too -- before
        # it runs `srun` inside a job; a real cluster's /etc/slurm/slurm.conf does not
        # need it, this one does. An srun first on the (exported) PATH puts it back.
        shim = self.root / "bin" / "srun"
        shim.parent.mkdir(exist_ok=True)
        shim.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {_which("srun")} "$@"\n')
        shim.chmod(0o755)

    # -- daemons ------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.root / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True
        )
        out.close()
        (self.root / "pids.json").write_text(json.dumps({k: p.pid for k, p in self.procs.items()}))

    def _wait(self, what: str, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n{self.logs()}")
            try:
                if check():
                    return
            except (subprocess.TimeoutExpired, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs()}")

    def client(self, cmd: list[str], timeout: float = 10) -> subprocess.CompletedProcess:
        """Run a SLURM client command (squeue, scontrol, ...) against this cluster."""
        return _run(cmd, timeout, self.env)

    def start(self, timeout: float = 60) -> None:
        """Start the daemons and wait until the node takes jobs. Stops what it started on failure."""
        self._write_config()
        r = self.root
        try:
            self._spawn(
                "munged",
                [
                    _which("munged"),
                    "--foreground",
                    "--force",
                    f"--socket={r}/munge.socket",
                    f"--key-file={r}/munge.key",
                    f"--pid-file={r}/munged.pid",
                    f"--log-file={r}/log/munged.log",
                    f"--seed-file={r}/munged.seed",
                ],
            )
            self._wait(
                "munged",
                lambda: self.client([_which("munge"), "-n", f"--socket={r}/munge.socket"]).returncode == 0,
                timeout,
            )
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)])
            self._wait("slurmctld", lambda: "UP" in self.client(["scontrol", "ping"]).stdout, timeout)
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
            self._wait("the node to be idle", self._node_idle, timeout)
        except BaseException:
            self.stop()
            raise

    def _node_idle(self) -> bool:
        state = self.client(["sinfo", "-h", "-N", "-o", "%T"]).stdout.split()
        return bool(state) and all(s.rstrip("*") in ("idle", "mixed", "allocated") for s in state)

    def stop(self, timeout: float = 20) -> None:
        """Cancel all jobs of this cluster, then stop the daemons this object started (by pid)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                ids = self.client(["squeue", "-h", "-o", "%i"]).stdout.split()
                if ids:
                    self.client(["scancel", *ids])
                    deadline = time.monotonic() + timeout
                    while (
                        time.monotonic() < deadline
                        and self.client(["squeue", "-h", "-t", "RUNNING,COMPLETING", "-o", "%i"]).stdout.strip()
                    ):
                        time.sleep(0.5)
            except (subprocess.TimeoutExpired, OSError):
                pass
        for name in reversed(DAEMONS):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        (self.root / "pids.json").unlink(missing_ok=True)

    # -- diagnostics --------------------------------------------------------------
    def logs(self, n: int = 2000) -> str:
        out = []
        for path in sorted((self.root / "log").glob("*")):
            text = path.read_text(errors="replace")
            if text.strip():
                out.append(f"--- {path.name} (tail)\n{text[-n:]}")
        return "\n".join(out)

    def queue(self) -> str:
        """All jobs the controller still knows (MinJobAge keeps finished ones): id, name, state, exit code."""
        fmt = "%.8i %.14P %.30j %.12T %.10M %.8C %.10m %.12b %k"
        return self.client(["squeue", "-a", "-t", "all", "-o", fmt]).stdout


def _stop_by_pidfile(root: Path) -> None:
    """`stop` from another process: end the daemons recorded in root/pids.json, by pid."""
    pids = json.loads((root / "pids.json").read_text()) if (root / "pids.json").exists() else {}
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    if pids.get("slurmctld"):
        ids = _run(["squeue", "-h", "-o", "%i"], 10, env).stdout.split()
        if ids:
            _run(["scancel", *ids], 10, env)
    for name in reversed(DAEMONS):
        pid = pids.get(name)
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    (root / "pids.json").unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__)
        return 2
    root = Path(argv[1]).resolve()
    if argv[0] == "stop":
        _stop_by_pidfile(root)
        return 0
    reason = unavailable_reason() or install()
    if reason:
        print(f"cannot start a local SLURM cluster: {reason}", file=sys.stderr)
        return 1
    cluster = LocalSlurm(root)
    cluster.start()  # the daemons outlive this process (own sessions); `stop` ends them
    print(f"export SLURM_CONF={cluster.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
