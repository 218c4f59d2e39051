"""What SIGTERM and SIGUSR1 do to a squadft process, from its first training step to its exit.

Slurm (--signal=B:USR1@N, forwarded by slurm/train.sh), Kubernetes and torchrun stop a job
with these signals; the answer is always a complete checkpoint and exit 75 (requeue), never
lost work. Training, calibration, evaluation and the last upload all run under one
PreemptionWatcher, which is why it lives here and not in the training loop.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from squadft.console import say_from_signal_handler as _say
from squadft.errors import EXIT_PREEMPTED, Preempted
from squadft.io import interrupt

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionWatcher:
    """What SIGTERM/SIGUSR1 do, from the first training step until the job ends.

    Training (until `trained`): a signal sets `received`, which the loop checks after each
    step: it checkpoints, then raises Preempted (exit 75). A second signal exits at once with
    128 + the signal number (143 for SIGTERM), without a checkpoint, and says so.
    After training (`trained` ... `final_saved`, then calibration and evaluation): the weights
    are in a checkpoint, so a signal raises Preempted at once (at the end of an
    `io.uninterruptible` block such as writing final/ or renaming output files into place):
    exit 75, and a rerun with --resume auto only saves final/ again, calibrates and evaluates.
    Stopping (once Preempted is raised, until the process exits): the process is on its way to
    exit 75 and has said so; another signal exits 75 at once rather than 143. The handlers are
    therefore left installed after a Preempted: restoring the default ones would turn a second
    signal into 143 after an "exit 75" message.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.phase = "training"
        self.activity = "work"  # what runs after training: "calibration", "final evaluation"
        self.final_dir: str | None = None
        self.step = 0
        self.drain_activity: str | None = None  # see draining()
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.drain_activity is not None:
            # torchrun sends its workers another TERM when a peer has exited (75); cutting
            # the final upload short would leave the bucket without the checkpoint
            if self.received is None:
                self.received = signum
            _say(f"{name} during the {self.drain_activity}: finishing it first (the "
                      "launcher's SIGKILL after its grace period still ends it)")
            return
        if self.phase == "stopping":
            _say(f"{name} again: already stopping after a checkpoint; exit "
                      f"{EXIT_PREEMPTED} now")
            os._exit(EXIT_PREEMPTED)
        if self.phase == "training":
            if self.received is not None:
                _say(f"second {name}: exiting at once with {128 + signum}, without a "
                          "checkpoint")
                os._exit(128 + signum)
            self.received = signum
            _say(f"received {name}: finishing the current step, then checkpointing")
            return
        if self.received is not None:  # a second one while final/ is written
            _say(f"second {name}: exiting at once; the last checkpoint (step "
                      f"{self.step}) is complete, exit {EXIT_PREEMPTED}")
            os._exit(EXIT_PREEMPTED)
        self.received = signum
        interrupt(self._after_training(name, self.activity))

    def _after_training(self, name: str, activity: str) -> Preempted:
        saved = (f"final/ ({self.final_dir}) is saved" if self.final_dir is not None
                 else f"checkpoint-{self.step} is complete")
        return self.stop(Preempted(
            f"stopped by {name} during the {activity} after training: {saved} at step "
            f"{self.step}; exit {EXIT_PREEMPTED} means requeue: rerun with --resume auto, which "
            "does not train again (it saves final/, calibrates and evaluates)"))

    @contextmanager
    def draining(self, activity: str, *, then_stop: bool = True) -> Iterator[None]:
        """Run `activity` (the last upload) to its end whatever signals arrive; the
        launcher's SIGKILL after its grace period, and the upload deadline, still bound it.
        A signal received meanwhile raises Preempted once the activity is done, unless the
        process is already stopping or `then_stop` is false (an error is on its way out)."""
        received_before, self.drain_activity = self.received, activity
        try:
            yield
        finally:
            self.drain_activity = None
        if (then_stop and self.received is not None and received_before is None
                and self.phase != "stopping"):
            raise self._after_training(signal.Signals(self.received).name, activity)

    def stop(self, exc: Preempted) -> Preempted:
        """`exc`, about to be raised: from now on a signal exits 75 at once."""
        self.phase = "stopping"
        return exc

    def trained(self, step: int) -> None:
        """Training is over and its last step is in a checkpoint."""
        self.phase, self.step = "after training", step

    def final_saved(self, final_dir: str | None) -> None:
        self.final_dir = final_dir

    def install(self) -> PreemptionWatcher:
        if not self._previous:
            for sig in PREEMPTION_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Restore the previous handlers, unless the process is stopping with exit 75."""
        if self.phase != "stopping":
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()

    def __enter__(self) -> PreemptionWatcher:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


def signal_name(watcher: PreemptionWatcher) -> str:
    return signal.Signals(watcher.received or signal.SIGTERM).name
