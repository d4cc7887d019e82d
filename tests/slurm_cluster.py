"""A real one-node SLURM with accounting, started and stopped by the tests (REFERENCE.md, "SLURM on
one machine"): munged, MariaDB, slurmdbd, slurmctld and slurmd, each with its own files under
STATE and its own ports, so that nothing of a SLURM already on the machine is touched. Clients
(sbatch, squeue, sacct, scontrol) find it through SLURM_CONF, which `start` returns for the
environment; the jobs inherit it.

Needs root and Debian's slurm-wlm, slurmdbd, munge and mariadb-server (`make slurm`). A second
start on the same machine first stops what an earlier session left running (by the pid files it
wrote) and begins from an empty STATE.

    python tests/slurm_cluster.py start|stop     # by hand, e.g. to look at a job: SLURM_CONF=... squeue
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STATE = Path("/tmp/flythinker-slurm")
LOCK = Path("/tmp/flythinker-slurm.lock")  # one test session at a time holds the fixed ports
CLUSTER = "flythinker"
PORTS = {"slurmctld": 16817, "slurmd": 16818, "slurmdbd": 16819, "mariadbd": 13306}
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")  # in start order
COMMANDS = (
    "munged",
    "mariadbd",
    "mariadb-install-db",
    "mariadb",
    "slurmdbd",
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "squeue",
    "sacct",
    "sacctmgr",
    "scontrol",
    "sinfo",
)
DB_PASSWORD = "flythinker"


class Unavailable(RuntimeError):
    """SLURM cannot run here (no root, packages missing): a reason to skip, outside CI."""


def missing() -> str | None:
    """Why a cluster cannot be started on this machine, or None."""
    if os.geteuid() != 0:
        return "starting SLURM's daemons needs root"
    absent = [command for command in COMMANDS if shutil.which(command) is None]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} not found): run `make slurm` as root"
    return None


def pid_file(daemon: str) -> Path:
    return STATE / "run" / f"{daemon}.pid"


def _alive(pid: int, daemon: str) -> bool:
    """Whether `pid` is still `daemon` (not a recycled pid) and not a zombie (reaped here if it is
    this process's child: MariaDB, which does not fork away)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
    if state == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return name == daemon[:15]


def stop() -> None:
    """Stop every daemon a start left running (newest first), waiting until each has exited, so
    that its port is free for the next start."""
    for daemon in reversed(DAEMONS):
        path = pid_file(daemon)
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        for sig, patience in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
            if not _alive(pid, daemon):
                break
            os.kill(pid, sig)
            deadline = time.time() + patience
            while _alive(pid, daemon) and time.time() < deadline:
                time.sleep(0.1)
        path.unlink(missing_ok=True)


def _wait(what: str, ready, timeout: float, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while not ready():
        if time.time() > deadline:
            tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"SLURM test cluster: {what} not ready after {timeout:g} s\n{tail}")
        time.sleep(0.2)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _run(command: list[str], env: dict | None = None, **kwargs) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"SLURM test cluster: {' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def _own(path: Path, user: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, user, user)
    return path


def _start_munge() -> Path:
    folder = _own(STATE / "munge", "munge")
    folder.chmod(0o711)  # munged: clients must reach the socket, nobody may list or write
    key = folder / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    socket_path = folder / "munge.socket"
    _run(
        [
            "munged",
            f"--socket={socket_path}",
            f"--key-file={key}",
            f"--pid-file={pid_file('munged')}",
            f"--log-file={folder / 'munged.log'}",
            f"--seed-file={folder / 'munged.seed'}",
        ],
        user="munge",
        group="munge",
    )
    _wait("munged", socket_path.exists, 30, folder / "munged.log")
    return socket_path


def _start_mariadb() -> None:
    folder = _own(STATE / "mysql", "mysql")
    data = folder / "data"
    _run(
        [
            "mariadb-install-db",
            "--no-defaults",
            "--user=mysql",
            f"--datadir={data}",
            "--skip-test-db",
            "--auth-root-authentication-method=socket",
        ]
    )
    socket_path, log = folder / "mysqld.sock", folder / "mysqld.log"
    with open(log, "w") as out:
        subprocess.Popen(
            [
                "mariadbd",
                "--no-defaults",
                "--user=mysql",
                f"--datadir={data}",
                f"--socket={socket_path}",
                f"--port={PORTS['mariadbd']}",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                f"--pid-file={pid_file('mariadbd')}",
                f"--log-error={log}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _wait("MariaDB", lambda: socket_path.exists() and _listening(PORTS["mariadbd"]), 60, log)
    _run(
        [
            "mariadb",
            "--no-defaults",
            f"--socket={socket_path}",
            "-u",
            "root",
            "-e",
            f"CREATE DATABASE slurm_acct_db; CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}'; "
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';",
        ]
    )


def _write_configs(munge_socket: Path) -> Path:
    folder = STATE / "etc"
    folder.mkdir(parents=True)
    logs = STATE / "log"
    logs.mkdir()
    auth = f"AuthType=auth/munge\nAuthInfo=socket={munge_socket}\n"
    dbd = folder / "slurmdbd.conf"
    dbd.write_text(
        f"{auth}DbdHost=localhost\nDbdPort={PORTS['slurmdbd']}\nSlurmUser=root\n"
        f"PidFile={pid_file('slurmdbd')}\nLogFile={logs / 'slurmdbd.log'}\n"
        "StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
        f"StoragePort={PORTS['mariadbd']}\nStorageUser=slurm\nStoragePass={DB_PASSWORD}\n"
        "StorageLoc=slurm_acct_db\n"
    )
    dbd.chmod(0o600)  # slurmdbd refuses a readable password file
    # This machine's CPUs, sockets, cores and memory as slurmd sees them (a node line that matches)
    node = next(line for line in _run(["slurmd", "-C"]).splitlines() if line.startswith("NodeName="))
    host = node.split()[0].removeprefix("NodeName=")
    conf = folder / "slurm.conf"
    conf.write_text(
        f"ClusterName={CLUSTER}\nSlurmctldHost={host}\nSlurmctldPort={PORTS['slurmctld']}\n"
        f"SlurmdPort={PORTS['slurmd']}\nSlurmUser=root\nSlurmdUser=root\n{auth}"
        f"StateSaveLocation={STATE / 'ctld'}\nSlurmdSpoolDir={STATE / 'd'}\n"
        f"SlurmctldPidFile={pid_file('slurmctld')}\nSlurmdPidFile={pid_file('slurmd')}\n"
        f"SlurmctldLogFile={logs / 'slurmctld.log'}\nSlurmdLogFile={logs / 'slurmd.log'}\n"
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\n"
        "SelectTypeParameters=CR_Core\nMpiDefault=none\nReturnToService=2\nJobAcctGatherType=jobacct_gather/none\n"
        f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
        # (AccountingStoragePass: the munge socket that messages to slurmdbd are signed with)
        f"AccountingStoragePort={PORTS['slurmdbd']}\nAccountingStoragePass={munge_socket}\nJobCompType=jobcomp/none\nSchedulerType=sched/backfill\n"
        # a cancelled job's processes get SIGKILL 10 s after SIGTERM; ended jobs stay in squeue 10 min
        "KillWait=10\nMinJobAge=600\nInactiveLimit=0\n"
        f"{node}\nPartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
    )
    return conf


def start() -> dict[str, str]:
    """Start the cluster from an empty STATE; returns the environment its clients need."""
    reason = missing()
    if reason:
        raise Unavailable(reason)
    stop()
    shutil.rmtree(STATE, ignore_errors=True)
    (STATE / "run").mkdir(parents=True)
    (STATE / "run").chmod(0o1777)  # pid files of daemons running as munge and mysql too
    for daemon, port in PORTS.items():
        if _listening(port):
            raise RuntimeError(f"SLURM test cluster: port {port} ({daemon}) is taken by another program")
    munge_socket = _start_munge()
    _start_mariadb()
    conf = _write_configs(munge_socket)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    _run(["slurmdbd"], env)
    _wait("slurmdbd", lambda: _listening(PORTS["slurmdbd"]), 60, STATE / "log" / "slurmdbd.log")
    _run(["sacctmgr", "-i", "add", "cluster", CLUSTER], env)
    for daemon in ("slurmctld", "slurmd"):
        _run([daemon], env)
    _wait(
        "the node",
        lambda: _run(["sinfo", "-h", "-o", "%T"], env).strip() == "idle",
        60,
        STATE / "log" / "slurmctld.log",
    )
    return {"SLURM_CONF": str(conf)}


if __name__ == "__main__":
    if sys.argv[1:] == ["start"]:
        print(" ".join(f"{k}={v}" for k, v in start().items()))
    elif sys.argv[1:] == ["stop"]:
        stop()
    else:
        sys.exit(__doc__)
