"""Where training metrics go: a small logger with one backend per destination (rank 0 only).

Always: metrics.jsonl in the run directory (one JSON object per logging step, then one
{"step", "eval"} line per evaluation) and the progress bar on stderr. Besides those, the
trackers --report-to names (comma-separated; "none" for none):

- tensorboard (the default): event files in <output_dir>/tensorboard;
- mlflow (`pip install 'squadft[mlflow]'`): a run in MLFLOW_EXPERIMENT_NAME (default squadft)
  of the store MLFLOW_TRACKING_URI names;
- wandb (`pip install 'squadft[wandb]'`): a run in WANDB_PROJECT (default squadft), files
  under <output_dir>/wandb; WANDB_MODE=offline keeps it on disk for `wandb sync`.

Every tracker gets the same scalars: train/loss, train/learning_rate, train/grad_norm,
train/tokens_per_s, train/samples_per_s, train/epoch and, on GPUs, train/gpu_mem_gib; then the
evaluation (eval/exact, eval/f1, eval/HasAns_f1, eval/NoAns_f1, eval/null_threshold...). MLflow
and W&B also get the resolved configuration as params, credentials redacted exactly as in
squadft_config.json. MLflow and W&B are imported only when named.

Resuming continues every curve at the checkpoint's step without duplicated points:
metrics.jsonl drops its lines after that step and TensorBoard hides its events after it
(SummaryWriter's purge_step), so both are logged again; MLflow and W&B cannot forget points,
so the same run is reopened (its id is in tracking.json and in every checkpoint) and the steps
it already holds are skipped.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from squadft.config import Config, redact_url, report_targets
from squadft.errors import ConfigError, DownloadError, Preempted, SquadftError, StorageError
from squadft.io import atomic_write_json, atomic_write_text, ensure_writable_dir, uninterruptible
from squadft.train.checkpoint import warn

METRICS_FILE = "metrics.jsonl"
TRACKING_FILE = "tracking.json"  # the trackers' run ids and how far each one got
TENSORBOARD_DIR = "tensorboard"

# metrics.jsonl key -> tracker scalar name
SCALARS = {
    "loss": "train/loss",
    "lr": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s",
    "samples_per_s": "train/samples_per_s",
    "epoch": "train/epoch",
    "gpu_mem_gib": "train/gpu_mem_gib",
    "skipped_steps": "train/skipped_steps",  # only once a non-finite step was skipped
}
FINISHED, PREEMPTED, FAILED = "finished", "preempted", "failed"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _missing(name: str) -> ConfigError:
    return ConfigError(f"--report-to {name}: the {name} package is not installed; "
                       f"pip install 'squadft[{name}]' (or drop {name} from --report-to)")


def train_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    return {SCALARS[key]: float(value) for key, value in record.items() if key in SCALARS}


def eval_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {f"eval/{key}": float(value) for key, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)}


def outcome_of(exc: BaseException) -> str:
    """How a run that raised `exc` ended, for the trackers' run status."""
    return PREEMPTED if isinstance(exc, Preempted) else FAILED


def run_name(cfg: Config) -> str:
    return Path(cfg.output_dir).resolve().name or "squadft"


# --- the two files ---------------------------------------------------------------------------

class JsonlFile:
    """metrics.jsonl: the record every other view is built from (squadft report reads it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def restart(self, step: int) -> None:
        """Forget the lines logged after `step` (a resumed run logs those steps again) and
        those that do not parse: the torn last line a node crash or a full disk leaves."""
        if not self.path.is_file():
            return
        kept, bad = [], []
        for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except (ValueError, AttributeError, TypeError):  # torn, or not a {"step"} record
                bad += [number] if line.strip() else []
        if bad and step:  # (a run from step 0 keeps no line anyway)
            where = f"line {bad[0]}" if len(bad) == 1 else f"first: line {bad[0]}"
            warn(f"{self.path}: dropped {len(bad)} unreadable line{'s' * (len(bad) > 1)} "
                 f"({where}, torn by a crash or a full disk?); the resume goes on without "
                 f"{'it' if len(bad) == 1 else 'them'}")
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def append(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_state(output_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((output_dir / TRACKING_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- trackers --------------------------------------------------------------------------------

def wandb_history(path: Path) -> Iterator[dict[str, Any]]:
    """The history rows of a W&B run file (<dir>/wandb/[offline-]run-*-ID/run-ID.wandb):
    {key: value} per row. The file is a LevelDB log (32 KiB blocks of records, each with a
    7-byte header: crc32c, length, type) of wandb_internal_pb2.Record messages, after a
    7-byte file header ":W&B", 0xBEE1, version."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    block, pos, pending = 32768, 7, b""
    if data[:4] != b":W&B":
        return
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST (FIRST and MIDDLE continue a record)
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                yield {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in record.history.item}


def wandb_logged_through(output_dir: Path, run_id: str) -> int:
    """The last step the local files of W&B run `run_id` hold (0: none)."""
    last = 0
    for path in (output_dir / "wandb").glob(f"*run-*-{run_id}/run-{run_id}.wandb"):
        try:
            steps = [row.get("_step", 0) for row in wandb_history(path)]
        except Exception as exc:  # a file of another W&B version, say: skip nothing
            warn(f"wandb: cannot read {path} ({_first_line(exc)})")
            continue
        last = max([last] + [int(step) for step in steps])
    return last


class Tracker:
    """One destination besides metrics.jsonl. `open` gets the run id a checkpoint or
    tracking.json remembers (None: a new run) and returns the id to remember."""

    name = ""

    def open(self, step: int, run_id: str | None) -> str | None:
        return None

    def log(self, step: int, values: dict[str, float]) -> None: ...

    def log_eval(self, step: int, values: dict[str, float], text: dict[str, str]) -> None: ...

    def flush(self) -> None: ...

    def close(self, outcome: str) -> None: ...


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, cfg: Config) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard") from None
        self._writer_class = SummaryWriter
        self.log_dir = Path(cfg.output_dir) / TENSORBOARD_DIR
        self.writer: Any = None
        try:  # now, before any work: SummaryWriter fails in its writer thread (a traceback)
            ensure_writable_dir(self.log_dir)
        except StorageError as exc:
            raise StorageError(f"--report-to tensorboard: {exc}") from None

    def open(self, step: int, run_id: str | None) -> str | None:
        # purge_step: TensorBoard hides the events of earlier files from this step on, i.e.
        # what an interrupted run logged after the checkpoint this run resumes from
        self.writer = self._writer_class(str(self.log_dir), purge_step=step + 1, flush_secs=30)
        return None

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def log_eval(self, step: int, values: dict[str, float], text: dict[str, str]) -> None:
        self.log(step, values)
        self.writer.flush()

    def flush(self) -> None:
        self.writer.flush()

    def close(self, outcome: str) -> None:
        self.writer.close()


class MlflowTracker(Tracker):
    """Through MlflowClient (no global active run): MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME
    and MLflow's credentials variables apply as usual."""

    name = "mlflow"
    STATUS = {FINISHED: "FINISHED", PREEMPTED: "KILLED", FAILED: "FAILED"}

    def __init__(self, cfg: Config) -> None:
        try:
            import mlflow
            from mlflow import MlflowClient
        except ImportError:
            raise _missing("mlflow") from None
        self.cfg = cfg
        self.uri = redact_url(mlflow.get_tracking_uri())
        try:
            self.client = MlflowClient()
        except Exception as exc:
            raise ConfigError(f"--report-to mlflow: cannot use the tracking store {self.uri} "
                              f"({_first_line(exc)}); set MLFLOW_TRACKING_URI") from None
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "squadft"
        self.run_id = ""
        self.logged_through = 0

    def open(self, step: int, run_id: str | None) -> str | None:
        try:
            self._open(run_id)
        except SquadftError:
            raise
        except Exception as exc:
            raise DownloadError(f"--report-to mlflow: {self.uri}: {_first_line(exc)}") from None
        return self.run_id

    def _open(self, run_id: str | None) -> None:
        from mlflow.entities import Param

        run = self._existing(run_id)
        if run is None:
            found = self.client.get_experiment_by_name(self.experiment)
            experiment = (found.experiment_id if found is not None
                          else self.client.create_experiment(self.experiment))
            run = self.client.create_run(experiment, run_name=run_name(self.cfg))
        else:  # the same run goes on: skip the steps it holds (MLflow cannot delete points;
            # it writes each one before log_batch returns, so its history is exact)
            self.client.update_run(run.info.run_id, status="RUNNING")
            history = self.client.get_metric_history(run.info.run_id, SCALARS["loss"])
            self.logged_through = max([0] + [point.step for point in history])
        self.run_id = run.info.run_id
        # params cannot change in MLflow: a resumed run adds only those it lacks (the resume
        # itself warns about changed settings)
        params = [Param(key, str(value)[:6000])
                  for key, value in sorted(self.cfg.to_dict(redact=True).items())
                  if key not in run.data.params]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def _existing(self, run_id: str | None) -> Any:
        if not run_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            warn(f"MLflow run {run_id} is not in {self.uri}: starting a new run")
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def _log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log(self, step: int, values: dict[str, float]) -> None:
        if step > self.logged_through:
            self._log(step, values)
            self.logged_through = step

    def log_eval(self, step: int, values: dict[str, float], text: dict[str, str]) -> None:
        self._log(step, values)
        for key, value in text.items():
            self.client.set_tag(self.run_id, f"eval/{key}", value)

    def close(self, outcome: str) -> None:
        self.client.set_terminated(self.run_id, status=self.STATUS[outcome])


class WandbTracker(Tracker):
    """wandb.init with the usual WANDB_* variables (WANDB_MODE, WANDB_API_KEY, WANDB_ENTITY);
    the project is WANDB_PROJECT or squadft. Neither the command line (it may hold a URL with
    credentials) nor the console output are sent: x_disable_meta, console="off"."""

    name = "wandb"

    def __init__(self, cfg: Config) -> None:
        try:
            import wandb
        except ImportError:
            raise _missing("wandb") from None
        self.wandb = wandb
        self.cfg = cfg
        self.run: Any = None
        self.logged_through = 0
        self.open_step: int | None = None  # the row this process logged last (still open)

    def open(self, step: int, run_id: str | None) -> str | None:
        wandb = self.wandb
        settings = wandb.Settings(x_disable_meta=True, console="off", save_code=False,
                                  disable_git=True)
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or "squadft",
                id=run_id or _new_id(), resume="allow", name=run_name(self.cfg),
                dir=str(Path(self.cfg.output_dir)), settings=settings)
        except (wandb.errors.UsageError, wandb.errors.AuthenticationError) as exc:
            raise ConfigError(f"--report-to wandb: {_first_line(exc)} (set WANDB_API_KEY, or "
                              "WANDB_MODE=offline)") from None
        except Exception as exc:
            raise DownloadError(f"--report-to wandb: {_first_line(exc)}") from None
        # The steps this run already holds are skipped. Online, a resumed run knows them
        # (run.step); offline, the earlier run files in <output_dir>/wandb hold them.
        self.logged_through = max(int(self.run.step) - 1,
                                  wandb_logged_through(Path(self.cfg.output_dir), self.run.id))
        self.run.config.update(self.cfg.to_dict(redact=True), allow_val_change=True)
        return str(self.run.id)

    def log(self, step: int, values: dict[str, float]) -> None:
        if step > self.logged_through:
            self.run.log(values, step=step)
            self.logged_through = self.open_step = step

    def log_eval(self, step: int, values: dict[str, float], text: dict[str, str]) -> None:
        self.run.summary.update({**values, **{f"eval/{k}": v for k, v in text.items()}})
        # a point at `step` only while that row is open or new: W&B keeps one row per step
        if step == self.open_step or step > self.logged_through:
            self.run.log(values, step=step)
            self.logged_through = self.open_step = step

    def close(self, outcome: str) -> None:
        if outcome == PREEMPTED:
            self.run.mark_preempting()
        self.run.finish(exit_code={FINISHED: 0, PREEMPTED: 75, FAILED: 1}[outcome])


TRACKER_CLASSES: dict[str, type[Tracker]] = {
    "tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}


# --- the logger ------------------------------------------------------------------------------

class MetricsLogger:
    """The run's metrics destinations. Build it early (it imports the trackers --report-to
    names and fails with a one-line ConfigError when one is missing), `start` it once the
    resume step is known, then `advance` per step, `log` per logging step, `checkpoint` when
    one is written, `log_eval` after the evaluation, and `close` at the end.

    On ranks other than 0 (enabled=False) every method does nothing.
    """

    def __init__(self, cfg: Config, *, enabled: bool = True) -> None:
        self.cfg = cfg
        self.enabled = enabled
        self.output_dir = Path(cfg.output_dir)
        self.jsonl = JsonlFile(self.output_dir / METRICS_FILE)
        names = report_targets(cfg.report_to) if enabled else ()
        self.trackers: list[Tracker] = [TRACKER_CLASSES[name](cfg) for name in names]
        self.opened: list[Tracker] = []  # those started, in the order of --report-to
        self.state: dict[str, Any] = {}
        self.bar: Any = None
        self.started = False
        self.closed = False

    def start(self, step: int, total_steps: int, run_ids: Mapping[str, str] | None = None,
              fresh: bool = False) -> dict[str, str]:
        """Open every destination at `step`; `run_ids`: those of the checkpoint resumed from;
        `fresh`: a new run in this directory (--resume never) gets new tracker runs.
        Returns the trackers' run ids, for the checkpoints."""
        if not self.enabled or self.started:
            return self.run_ids()
        self.started = True
        from tqdm.auto import tqdm

        self.jsonl.restart(step)
        self.state = {} if fresh else read_state(self.output_dir)
        evals = self.state.get("eval")
        self.state["eval"] = evals = evals if isinstance(evals, dict) else {}
        if evals.get("tensorboard", {}).get("step", 0) > step:
            del evals["tensorboard"]  # TensorBoard hides it from now on: log it again
        remembered = {name: entry.get("run_id") for name, entry in self.state.items()
                      if isinstance(entry, dict) and entry.get("run_id")}
        remembered.update(run_ids or {})
        with _same_random_state():  # tracker libraries must not shift the training's RNGs
            for tracker in self.trackers:
                run_id = tracker.open(step, remembered.get(tracker.name))
                self.opened.append(tracker)
                if run_id is not None:
                    self.state[tracker.name] = {"run_id": run_id}
        self._save_state(force=fresh)
        self.bar = tqdm(total=total_steps, initial=step, desc="train", dynamic_ncols=True,
                        mininterval=1.0 if sys.stderr.isatty() else 30.0)
        return self.run_ids()

    def run_ids(self) -> dict[str, str]:
        return {name: entry["run_id"] for name, entry in self.state.items()
                if name in TRACKER_CLASSES and isinstance(entry, dict) and "run_id" in entry}

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, record: dict[str, Any], held_out: Mapping[str, Any] | None = None) -> None:
        """One logging step: a line of metrics.jsonl, the bar's postfix, every tracker.
        `held_out`: the evaluation on the held-out articles at this step, a line of its own
        ({"step": N, "heldout": {...}}), heldout/* in the trackers (with the step's training
        scalars: trackers keep one point per step)."""
        if not self.enabled:
            return
        self.jsonl.append(record)
        scalars = train_scalars(record)
        if held_out is not None:
            self.jsonl.append({"step": record["step"], "heldout": dict(held_out)})
            scalars.update({f"heldout/{k}": float(v) for k, v in held_out.items()
                            if isinstance(v, int | float)})
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                 tok_s=f"{record['tokens_per_s']:.0f}")
        self._each("log", record["step"], scalars)

    def log_held_out(self, step: int, held_out: Mapping[str, Any]) -> None:
        """A held-out evaluation without a training record of its step (one redone after a
        resume): its line, and heldout/* where a tracker still takes points at that step."""
        if not self.enabled:
            return
        self.jsonl.append({"step": step, "heldout": dict(held_out)})
        self._each("log", step, {f"heldout/{k}": float(v) for k, v in held_out.items()
                                 if isinstance(v, int | float)})

    def log_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
        """The evaluation: its line in metrics.jsonl, and each tracker once per step and
        result (evaluating a finished run again with the same outcome adds no point)."""
        if not self.enabled:
            return
        self.jsonl.append({"step": step, "eval": dict(metrics)})
        values = eval_scalars(metrics)
        text = {k: v for k, v in metrics.items() if isinstance(v, str)}
        logged = {"step": step, "metrics": {**values, **text}}
        evals = self.state.setdefault("eval", {})
        new = [tracker for tracker in self.opened if evals.get(tracker.name) != logged]
        if not new:
            return
        with uninterruptible():  # a signal now stops the job right after these few writes
            self._each("log_eval", step, values, text, trackers=new)
            evals.update({tracker.name: logged for tracker in new if tracker in self.opened})
            self._save_state()

    def checkpoint(self) -> None:
        """A checkpoint is on disk: what the trackers hold up to it should be too."""
        self._each("flush")

    def close_progress(self) -> None:
        """Close the bar (before an error is printed, so that it stays the last line)."""
        if self.bar is not None:
            self.bar.close()

    def close(self, outcome: str = FINISHED) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_progress()
        for tracker in self.opened:
            try:
                tracker.close(outcome)
            except SquadftError:
                raise
            except Exception as exc:
                warn(f"{tracker.name}: closing the run failed: {_first_line(exc)}")
        self.opened = []

    @contextmanager
    def closing(self) -> Iterator[MetricsLogger]:
        """close() at the end, with the outcome the block had."""
        try:
            yield self
        except BaseException as exc:
            self.close(outcome_of(exc))
            raise
        self.close(FINISHED)

    def _each(self, method: str, *args: Any, trackers: list[Tracker] | None = None) -> None:
        """Call `method` on every tracker; one that fails is warned about and dropped (a
        tracker outage must not stop hours of training: metrics.jsonl keeps everything)."""
        for tracker in list(self.opened if trackers is None else trackers):
            try:
                getattr(tracker, method)(*args)
            except SquadftError:
                raise  # Preempted from a signal handler, among others
            except Exception as exc:
                warn(f"{tracker.name}: {_first_line(exc)}; no more metrics go to "
                     f"{tracker.name} in this run")
                self.opened.remove(tracker)

    def _save_state(self, force: bool = False) -> None:
        """tracking.json, once there is something in it (or, `force`, to forget the last)."""
        if force and (self.output_dir / TRACKING_FILE).exists() or \
                any(value for value in self.state.values()):
            atomic_write_json(self.output_dir / TRACKING_FILE, self.state)


def _new_id() -> str:
    """A W&B-style run id (`secrets`: the training's `random` stream stays untouched)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


@contextmanager
def _same_random_state() -> Iterator[None]:
    from squadft.train.checkpoint import rng_state, set_rng_state

    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)
