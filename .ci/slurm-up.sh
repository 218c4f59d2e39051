#!/usr/bin/env bash
# Bring up a real single-node Slurm (Debian 12 packages, as root, no systemd) for the tests in
# tests/deploy/test_slurm.py. Idempotent: returns at once when a node already answers idle.
#
# Usage (root): .ci/slurm-up.sh        Stop: .ci/slurm-up.sh stop
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

CONF=/etc/slurm/slurm.conf
LOGS=/var/log/slurm

node_ready() {
    timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

stop() {
    local pidfile pid
    for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    done
}

if [ "${1:-}" = stop ]; then stop; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "slurm-up: must run as root" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

host=$(hostname -s)
# Half the memory: slurmd drains a node whose RealMemory exceeds what it finds.
cpus=$(($(nproc) > 16 ? $(nproc) : 16))
cores=$(((cpus + 1) / 2))
mem_mb=$(($(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) / 2))
conf=$(cat <<CONF
# Written by squadft .ci/slurm-up.sh: one node, root daemons, no database, no cgroups.
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
# Tasks are bound to CPUs, as on clusters that bind by default: task/affinity pins every task
# of a step to CPUs of that step, one hardware thread per CPU the task asked for
# (TaskPluginParam=Threads). So a step that asks for fewer CPUs than the job holds (a plain
# srun since Slurm 22.05, which no longer inherits the --cpus-per-task of sbatch) really runs
# on fewer, and tests/deploy/test_slurm.py sees that in the trainer's CPU affinity.
TaskPlugin=task/affinity
TaskPluginParam=Threads
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
MpiDefault=none
# A node as slurm/train.sh's header asks for (16 CPUs, one GPU) whatever this machine has:
# config_overrides trusts these numbers instead of draining the node, and the pretend GPU is
# /dev/null. Binding folds the pretend CPUs onto the real ones (slurmd wraps CPU numbers
# modulo the CPUs that exist): a task asking for up to as many CPUs as the machine has is
# bound to that many, one asking for more gets all of them. The pretend CPUs are threads
# (2 per core) on purpose: with one thread per core task/affinity refuses to lay out a task
# asking for more CPUs than exist ("Unable to layout tasks on given cpus"), which the header's
# 8 CPUs per task would be on a small machine; with threads it caps the task at what exists.
SlurmdParameters=config_overrides
GresTypes=gpu
KillWait=30
MinJobAge=600
NodeName=localhost NodeHostname=$host CPUs=$((cores * 2)) Sockets=1 CoresPerSocket=$cores ThreadsPerCore=2 RealMemory=$mem_mb Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
)

# Up already with this very configuration: nothing to do. Any other (an older version of this
# script, a hand-edited file) is rewritten and the daemons restarted below.
if [ -s "$CONF" ] && [ "$(cat "$CONF")" = "$conf" ] && node_ready; then
    echo "slurm-up: already up"
    exit 0
fi

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS" /run/munge
chown munge:munge /run/munge
printf '%s\n' "$conf" >"$CONF"
echo "NodeName=localhost Name=gpu File=/dev/null" >/etc/slurm/gres.conf

if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
# Probe the socket, not the process list: a dead munged can linger as a zombie.
if ! munge -n >/dev/null 2>&1; then
    su -s /bin/sh munge -c /usr/sbin/munged
fi
for _ in $(seq 100); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null

# Restart the daemons so they read this slurm.conf (a stale pair may hold old settings).
stop
for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
    pid=$(cat "$pidfile" 2>/dev/null || true)
    for _ in $(seq 100); do
        if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
        sleep 0.1
    done
done
slurmctld
slurmd
for _ in $(seq 100); do
    if node_ready; then
        echo "slurm-up: node localhost idle ($(sinfo --version))"
        exit 0
    fi
    # A node left DOWN/DRAINED by an earlier run comes back once told so.
    scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
    sleep 0.3
done
echo "slurm-up: slurm did not come up" >&2
tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2
exit 1
