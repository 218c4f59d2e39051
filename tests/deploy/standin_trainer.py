"""A stand-in for `squadft train` that slurm/train.sh can run via SQUADFT_CMD.

It behaves like the real trainer where the launcher can see it, and nothing more: it reports
the rank variables it was started with and the CPUs it may run on (cpus-rank<RANK>.json: the
size of its CPU affinity, and the CPU and thread variables that Slurm, slurm/train.sh and
torchrun set), waits (optionally) for SIGUSR1/SIGTERM, then writes a "checkpoint" and exits 75
(a second signal makes it exit 1 at once, as squadft does); started again with a checkpoint
present it resumes and finishes with exit code 0. This lets the Slurm tests exercise the CPU
allocation, the signal forwarding and the requeue mechanics in seconds, independently of the
training pipeline.

    python standin_trainer.py train --output-dir DIR [--wait-for-signal]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

EXIT_PREEMPTED = 75
SIGNAL_DEADLINE_S = 300.0
CPU_VARIABLES = ("SLURM_CPUS_PER_TASK", "SRUN_CPUS_PER_TASK", "OMP_NUM_THREADS")


def write_json(path: Path, data: dict[str, object]) -> None:
    # a part file per process: several workers of one job may write the same file
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    part.write_text(json.dumps(data))
    os.replace(part, path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="standin_trainer")
    parser.add_argument("command", choices=["train"])
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--wait-for-signal", action="store_true")
    args = parser.parse_args(argv)

    rank = os.environ.get("RANK", "?")
    world = os.environ.get("WORLD_SIZE", "?")
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    print(f"standin: start rank={rank} world={world} SLURM_RESTART_COUNT={restart}", flush=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    cpus = {
        "affinity": len(os.sched_getaffinity(0)),
        **{name: os.environ.get(name) for name in CPU_VARIABLES},
    }
    print(f"standin: rank {rank} cpus {json.dumps(cpus, sort_keys=True)}", flush=True)
    write_json(args.output_dir / f"cpus-rank{rank}.json", cpus)
    checkpoint = args.output_dir / "checkpoint.json"

    if checkpoint.exists():
        state = json.loads(checkpoint.read_text())
        print(f"standin: resumed from step {state['step']}", flush=True)
        write_json(args.output_dir / "final.json", {"resumed_from": state["step"]})
        return 0

    if args.wait_for_signal:
        received: list[str] = []
        stop = threading.Event()

        def on_signal(signum: int, frame: object) -> None:
            # Like squadft: a second signal means "stop now", without a checkpoint.
            if received:
                print(f"standin: second signal {signal.Signals(signum).name}", flush=True)
                os._exit(1)
            received.append(signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGUSR1, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        write_json(args.output_dir / "started.json", {"pid": os.getpid(), "restart": restart})
        if not stop.wait(SIGNAL_DEADLINE_S):
            print("standin: no signal arrived", flush=True)
            return 1
        write_json(checkpoint, {"step": 7, "signal": received[0]})
        print(f"standin: got {received[0]}, checkpoint at step 7, exiting 75", flush=True)
        return EXIT_PREEMPTED

    write_json(args.output_dir / "final.json", {"resumed_from": None})
    print("standin: finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
