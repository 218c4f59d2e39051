#!/bin/bash
#SBATCH --job-name=squadft
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=squadft-%j.out
#
# Fine-tune with `squadft train` under Slurm; checkpoint and requeue on preemption.
#
#   sbatch slurm/train.sh [squadft train flags...]
#   sbatch --nodes=2 --gpus-per-node=4 slurm/train.sh --s3-uri s3://bucket/runs/exp1
#
# Every `#SBATCH` line above can be overridden on the sbatch command line. Arguments after
# the script name go to `squadft train`; so do SQUADFT_<OPTION> variables (sbatch exports the
# submitting environment), e.g. SQUADFT_OUTPUT_DIR, SQUADFT_CACHE_DIR, SQUADFT_MODEL,
# SQUADFT_S3_URI, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE.
# Run the job from a shared filesystem: the output directory must be the same on every node
# and across restarts (checkpoints are resumed from it; --resume auto is the default).
#
# Launcher variables (all optional):
#   SQUADFT_LAUNCHER        torchrun (default): one `torchrun` per node (srun, one task per
#                           node) starting SQUADFT_NPROC_PER_NODE processes, c10d rendezvous
#                           on the first node of the allocation.
#                           srun: one Slurm task per process, no torchrun; submit with
#                           --ntasks-per-node=<GPUs per node> (and --gpus-per-task=1); each task
#                           gets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT from Slurm's.
#   SQUADFT_NPROC_PER_NODE  processes per node for torchrun (default: GPUs on the node, else 1)
#   SQUADFT_RDZV_PORT       rendezvous port on the first node (default: 20000 + job id % 20000)
#   SQUADFT_VENV            a virtualenv to activate first (default: whatever PATH has)
#   SQUADFT_WRAP            a command prefix for what each srun task runs, for containers:
#                           SQUADFT_WRAP="apptainer exec --nv squadft_0.1.0.sif"
#   SQUADFT_SRUN_ARGS       extra srun options, e.g. for enroot/pyxis:
#                           SQUADFT_SRUN_ARGS="--container-image=squadft+0.1.0.sqsh
#                           --container-mounts=/shared:/shared --container-workdir=$PWD"
#   SQUADFT_MAX_REQUEUES    stop requeueing after this many restarts (default 20)
#   OMP_NUM_THREADS         threads per training process (default: its share of the CPUs, below)
#   SQUADFT_CMD             the program run per process instead of `squadft` (default squadft);
#                           the CI tests use it to exercise the requeue mechanics with a small
#                           stand-in (tests/deploy/standin_trainer.py).
#
# Preemption: 120 s before the time limit Slurm sends USR1 to this batch shell only (B:).
# The trap forwards it to the training processes with `scancel --signal=USR1`; squadft writes
# a checkpoint and exits 75. The script then runs `scontrol requeue`, and the next start
# resumes from the newest complete checkpoint. A TERM from Slurm (preemption, scancel) reaches the training processes
# directly and ends the same way.
set -uo pipefail

launcher=${SQUADFT_LAUNCHER:-torchrun}
max_requeues=${SQUADFT_MAX_REQUEUES:-20}
read -r -a program <<<"${SQUADFT_CMD:-squadft}"
read -r -a wrap <<<"${SQUADFT_WRAP:-}"
read -r -a srun_args <<<"${SQUADFT_SRUN_ARGS:-}"
job_id=${SLURM_JOB_ID:?run this script with sbatch}
restarts=${SLURM_RESTART_COUNT:-0}

log() { echo "squadft-slurm[$job_id]: $*"; }

if [ -n "${SQUADFT_VENV:-}" ]; then
    # shellcheck disable=SC1091  # the venv is the user's, not part of this repository
    . "$SQUADFT_VENV/bin/activate"
fi

mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${hosts[0]}
port=${SQUADFT_RDZV_PORT:-$((20000 + job_id % 20000))}
gpus=${SLURM_GPUS_ON_NODE:-0}
gpus=${gpus##*:}  # "gpu:a100:4" style values: the count is last
nproc=${SQUADFT_NPROC_PER_NODE:-$((gpus > 0 ? gpus : 1))}

# CPUs. Since Slurm 22.05 srun no longer takes the job's --cpus-per-task from sbatch (it reads
# only its own option or SRUN_CPUS_PER_TASK), so a plain `srun` step runs each task with one
# CPU per task; where the site binds tasks to cores or threads (task/affinity, task/cgroup),
# torchrun, all its GPU workers and all their DataLoader workers then share one CPU. The step
# asks for its CPUs itself (older srun versions take the option too): with torchrun its one
# task per node gets every CPU the job has per node (cpus-per-task x ntasks-per-node, normally
# just cpus-per-task) for all the workers; with srun each task (one process) gets
# cpus-per-task. Without a --cpus-per-task in the job, srun keeps Slurm's default.
# A --cpus-per-task in SQUADFT_SRUN_ARGS comes later on the srun line and wins.
cpus_per_task=${SLURM_CPUS_PER_TASK:-}
tasks_per_node=${SLURM_NTASKS_PER_NODE:-1}
is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
is_count "$tasks_per_node" || tasks_per_node=1
task_cpus=""
cpu_args=()
if is_count "$cpus_per_task"; then
    task_cpus=$cpus_per_task
    if [ "$launcher" = torchrun ]; then task_cpus=$((cpus_per_task * tasks_per_node)); fi
    export SRUN_CPUS_PER_TASK=$task_cpus
    cpu_args=(--cpus-per-task="$task_cpus")
fi
# Threads per training process. squadft sets no thread count of its own, so torch starts one
# intra-op thread per CPU the process may use, and torchrun, when it starts several workers,
# sets OMP_NUM_THREADS=1 for each. Give each process its share of its task's CPUs instead
# (DataLoader workers use one thread each regardless); an OMP_NUM_THREADS set by the caller wins.
if [ -z "${OMP_NUM_THREADS:-}" ] && [ -n "$task_cpus" ]; then
    procs_per_task=1
    if [ "$launcher" = torchrun ] && is_count "$nproc"; then procs_per_task=$nproc; fi
    threads=$((task_cpus / procs_per_task))
    export OMP_NUM_THREADS=$((threads > 0 ? threads : 1))
fi

# torchrun gives its workers this long to checkpoint after a TERM before it kills them
# (default 30 s; older torch versions ignore the variable and keep 30 s). Keep it below the
# 120 s warning of --signal so the job is done before Slurm's own kill at the time limit.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-100}

case "$launcher" in
    torchrun)
        # Slurm signals every process of a step, workers included, and squadft takes a second
        # signal as "exit now, no checkpoint". So torchrun itself must ignore USR1 and TERM
        # (ignored signals survive exec; PET_SIGNALS_TO_HANDLE stops torchrun from installing
        # its own TERM handler, which would pass TERM on to the workers a second time).
        # Each worker installs its own handler and gets the signal once, from Slurm.
        export PET_SIGNALS_TO_HANDLE=SIGINT,SIGHUP,SIGQUIT
        # shellcheck disable=SC2016  # expanded by the task's shell, not this one
        step=(srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks="$SLURM_JOB_NUM_NODES"
              --ntasks-per-node=1 "${cpu_args[@]}" --kill-on-bad-exit=1 "${srun_args[@]}"
              "${wrap[@]}"
              bash -c 'trap "" USR1 TERM; exec "$@"' squadft-node
              torchrun --nnodes="$SLURM_JOB_NUM_NODES" --nproc-per-node="$nproc"
              --rdzv-backend=c10d --rdzv-endpoint="$head_node:$port" --rdzv-id="$job_id"
              --no-python "${program[@]}" train "$@")
        ;;
    srun)
        export MASTER_ADDR="$head_node" MASTER_PORT="$port"
        # Each task maps its Slurm ranks to the variables torchrun would set, then execs.
        # shellcheck disable=SC2016  # expanded by the task's shell, not this one
        step=(srun "${cpu_args[@]}" --kill-on-bad-exit=1 "${srun_args[@]}" "${wrap[@]}" bash -c
              'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS
               exec "$@"' squadft-task "${program[@]}" train "$@")
        ;;
    *)
        log "SQUADFT_LAUNCHER must be torchrun or srun (got '$launcher')"
        exit 2
        ;;
esac

signalled=""
# shellcheck disable=SC2329  # called from the traps below
on_usr1() {
    if [ -n "$signalled" ]; then return; fi
    signalled=USR1
    log "received SIGUSR1 (time limit near); asking the training processes to checkpoint"
    # slurmstepd delivers it to every process of the running step (not to srun, which would
    # answer a signal like TERM by cancelling the step); each squadft process checkpoints.
    scancel --signal=USR1 "$job_id" || log "scancel --signal=USR1 failed"
}
# shellcheck disable=SC2329  # called from the traps below
on_term() {
    # Slurm sends TERM (cancel, preemption, time limit) to every process of the job at once,
    # so the step already has it: forwarding would be a second signal. Only remember it.
    if [ -z "$signalled" ]; then signalled=TERM; fi
    log "received SIGTERM; the training processes got it too and checkpoint"
}
trap on_usr1 USR1
trap on_term TERM

log "start on ${hosts[*]} (restart $restarts, launcher $launcher, $nproc per node," \
    "${task_cpus:-default} CPUs per task, OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}) $(date -u +%FT%TZ)"
"${step[@]}" &
step_pid=$!
# `wait` returns early when a trapped signal arrives; keep waiting until the step has ended.
while :; do
    wait "$step_pid"
    rc=$?
    if ! kill -0 "$step_pid" 2>/dev/null; then break; fi
done
log "training step exited with $rc"

# 75 = preempted after writing a checkpoint. torchrun reports a failed worker as 1, so after
# a forwarded signal any failure counts as a preemption too: the restart resumes anyway.
if [ "$rc" -eq 75 ] || { [ -n "$signalled" ] && [ "$rc" -ne 0 ]; }; then
    if [ "$restarts" -ge "$max_requeues" ]; then
        log "not requeueing: already restarted $restarts times (SQUADFT_MAX_REQUEUES)"
        exit 75
    fi
    log "requeueing (restart $((restarts + 1))); the next start resumes from the checkpoint"
    if scontrol requeue "$job_id"; then exit 0; fi
    log "scontrol requeue failed"
    exit 75
fi
exit "$rc"
