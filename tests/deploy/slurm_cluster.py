"""A real single-node Slurm of the tests' own, started for tests/deploy/test_slurm.py and
stopped when they end.

Everything it uses is private to one temporary directory: its slurm.conf (clients find it
through SLURM_CONF), ports, spool and state directories, PID and log files, and its own munged
with its own key and socket (AuthInfo=socket=...). So a Slurm already on the machine, running
or not, is neither read nor touched, and nothing is left behind: the daemons are stopped and
the directory removed at teardown. Starting slurmd needs root; the Debian packages (slurmctld,
slurmd, slurm-client, munge) are installed with apt when missing, as .ci/run does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO / "slurm" / "train.sh"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["slurmctld", "slurmd", "munged"]
POLL_S = 0.25
NEEDS_ROOT = (
    "the Slurm tests start their own slurmd, which needs root: run pytest as root "
    "(CI does, in .ci/run)"
)


def run(argv: list[str], timeout: float = 60, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def wait_until(
    condition: Callable[[], bool], deadline_s: float, describe: Callable[[], str]
) -> None:
    """Poll `condition` until it holds; fail with `describe()` after `deadline_s`."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s:.0f} s: {describe()}")
        time.sleep(POLL_S)


def sbatch_options(script: Path = TRAIN_SCRIPT) -> dict[str, str]:
    """The `#SBATCH KEY=VALUE` header lines of a batch script."""
    options = {}
    for line in script.read_text().splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH ").partition("=")
            options[key] = value
    return options


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, which PID 1 may reap late, counts as stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def slurm_conf(root: Path, host: str, ports: tuple[int, int]) -> str:
    """One node as slurm/train.sh's header asks for (16 CPUs, one GPU) whatever this machine has.

    - root daemons, no database, no cgroups; everything under `root`;
    - tasks bound to CPUs, as on clusters that bind by default: task/affinity pins every task
      of a step to CPUs of that step, one hardware thread per CPU the task asked for
      (TaskPluginParam=Threads). So a step that asks for fewer CPUs than the job holds (a plain
      srun since Slurm 22.05, which no longer inherits the --cpus-per-task of sbatch) really
      runs on fewer, and test_slurm.py sees that in the trainer's CPU affinity;
    - config_overrides trusts the node's numbers instead of draining it, and the pretend GPU is
      /dev/null. Binding folds the pretend CPUs onto the real ones (slurmd wraps CPU numbers
      modulo the CPUs that exist): a task asking for up to as many CPUs as the machine has is
      bound to that many, one asking for more gets all of them. The pretend CPUs are threads
      (2 per core) on purpose: with one thread per core task/affinity refuses to lay out a
      task asking for more CPUs than exist ("Unable to layout tasks on given cpus"), which the
      header's 8 CPUs per task would be on a small machine; with threads it caps the task.
    """
    cpus = max(os.cpu_count() or 1, 16)
    cores = (cpus + 1) // 2
    # Half the memory: slurmd drains a node whose RealMemory exceeds what it finds.
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    ctld_port, slurmd_port = ports
    return f"""\
# Written by tests/deploy/slurm_cluster.py for the tests' own cluster; removed at teardown.
ClusterName=squadft-test
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
TaskPluginParam=Threads
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
MpiDefault=none
SlurmdParameters=config_overrides
GresTypes=gpu
KillWait=30
MinJobAge=600
NodeName=localhost NodeHostname={host} Port={slurmd_port} CPUs={cores * 2} Sockets=1 \
CoresPerSocket={cores} ThreadsPerCore=2 RealMemory={mem_mb} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    """The tests' Slurm: `start()` brings it up, `stop()` leaves the machine as it was."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="squadft-slurm-"))
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        install_packages()
        self.root.chmod(0o755)  # munged checks every directory on the way to its socket
        for name in ("state", "spool", "log"):
            (self.root / name).mkdir()
        self._start_munge()
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(slurm_conf(self.root, host, (free_port(), free_port())))
        (self.root / "gres.conf").write_text("NodeName=localhost Name=gpu File=/dev/null\n")
        for daemon in ("slurmctld", "slurmd"):  # each forks and returns once it runs
            result = run([daemon], env=self.env, timeout=60)
            if result.returncode != 0:
                raise RuntimeError(f"{daemon} did not start: {result.stderr}{self.logs()}")

        def ready() -> bool:
            if self.node_states() in (["idle"], ["mixed"], ["allocated"]):
                return True
            # a node left DOWN by slurmd's first registration comes back once told so
            self.scontrol("update", "NodeName=localhost", "State=RESUME")
            return False

        wait_until(ready, 60, lambda: f"node states {self.node_states()}{self.logs()}")

    def _start_munge(self) -> None:
        key_dir, run_dir = self.root / "munge-key", self.root / "munge"
        key_dir.mkdir(mode=0o700)
        run_dir.mkdir(mode=0o755)
        key = key_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for path in (key_dir, run_dir, key):
            shutil.chown(path, "munge", "munge")
        munged = shutil.which("munged") or "/usr/sbin/munged"
        command = [
            munged, f"--socket={run_dir}/munge.socket", f"--key-file={key}",
            f"--pid-file={run_dir}/munged.pid", f"--log-file={run_dir}/munged.log",
            f"--seed-file={run_dir}/munged.seed",
        ]  # fmt: skip
        # munged refuses to run as root; it forks and returns once its socket listens
        result = run(["su", "-s", "/bin/sh", "munge", "-c", " ".join(command)], timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"munged did not start: {result.stdout}{result.stderr}")

    def pids(self) -> dict[str, int]:
        found = {}
        for name, path in (
            ("slurmd", self.root / "slurmd.pid"),
            ("slurmctld", self.root / "slurmctld.pid"),
            ("munged", self.root / "munge" / "munged.pid"),
        ):
            try:
                found[name] = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return found

    def stop(self) -> None:
        """Cancel what still runs, stop the daemons (slurmd first, munged last) and remove the
        directory. Safe to call on a half-started cluster."""
        if self.conf.exists() and (self.root / "slurmctld.pid").exists():
            run(["scancel", "--full", "--user=root"], env=self.env, timeout=30)
            try:
                wait_until(lambda: not self.jobs(), 60, lambda: f"jobs left: {self.jobs()}")
            except AssertionError as error:
                print(f"slurm_cluster: {error}", file=sys.stderr)
        for name, pid in self.pids().items():
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
            try:
                wait_until(lambda pid=pid: not _alive(pid), 30, lambda n=name: f"{n} still runs")
            except AssertionError:
                os.kill(pid, signal.SIGKILL)  # a slurmd stuck on munge may ignore SIGTERM
        shutil.rmtree(self.root, ignore_errors=True)

    def scontrol(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(["scontrol", *args], env=self.env, timeout=20)

    def node_states(self) -> list[str]:
        try:
            result = run(["sinfo", "-h", "-o", "%T"], env=self.env, timeout=10)
        except subprocess.TimeoutExpired:
            return []
        return [state.rstrip("*") for state in result.stdout.split()]

    def jobs(self) -> list[str]:
        result = run(["squeue", "-h", "-o", "%i %T"], env=self.env, timeout=10)
        return result.stdout.split("\n") if result.stdout.strip() else []

    def logs(self) -> str:
        tails = []
        for path in sorted((self.root / "log").glob("*.log")):
            tails.append(f"\n--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-20:]))
        return "".join(tails)


def install_packages() -> None:
    """Install the Debian packages the cluster needs when one of its programs is missing."""
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "munge")):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env, timeout=600, check=True)
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    run(install, env=env, timeout=600, check=True)


def job_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The submitting environment (sbatch exports it): this venv first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def job_fields(job_id: str) -> dict[str, str]:
    result = run(["scontrol", "show", "job", "-o", job_id], timeout=20)
    assert result.returncode == 0, result.stderr
    fields = {}
    for token in result.stdout.split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    return fields


def cluster_config() -> dict[str, str]:
    """The running slurmctld's configuration (`scontrol show config`), by parameter name."""
    result = run(["scontrol", "show", "config"], timeout=20)
    config = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    return config


def node_idle() -> bool:
    result = run(["sinfo", "-h", "-o", "%T"], timeout=10)
    return result.stdout.split() == ["idle"]


def submit(args: list[str], env: Mapping[str, str], workdir: Path) -> str:
    result = run(
        ["sbatch", "--parsable", f"--chdir={workdir}", f"--output={workdir}/slurm-%j.out", *args],
        env=job_environment(env),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]
