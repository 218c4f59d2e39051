"""Run tracking: metrics.jsonl, TensorBoard, MLflow (local file store) and W&B (offline mode),
read back after a run that crashed past its last kept checkpoint and was resumed."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from squadft.config import Config, report_targets
from squadft.errors import ConfigError
from squadft.flows import training
from squadft.train.tracking import TRACKING_FILE, JsonlFile, MetricsLogger, wandb_history

from tests.train.common import read_metrics, run_settings

# credentials in a URL, as an S3 endpoint can carry them: never in any tracker's files
SECRET_URL = "https://AKIDUSER:s3cr3t-Passw0rd@minio.example:9000/?X-Amz-Credential=tok3nS3CRET"
SECRETS = (b"s3cr3t-Passw0rd", b"tok3nS3CRET")
STEPS = 6


def tracker_env(root: Path) -> dict[str, str]:
    """MLflow's local file store and W&B offline, everything under `root`: no network."""
    return {
        "MLFLOW_TRACKING_URI": (root / "mlruns").as_uri(),
        "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3 keeps the file store opt-in
        "MLFLOW_EXPERIMENT_NAME": "squadft-test",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_PROJECT": "squadft-test",
        "WANDB_CONFIG_DIR": str(root / "wandb-config"),
        "WANDB_CACHE_DIR": str(root / "wandb-cache"),
        "WANDB_DATA_DIR": str(root / "wandb-data"),
    }


class Crash(RuntimeError):
    pass


def crash_at(step: int):
    def on_checkpoint(path: Path) -> None:
        if path.name == f"checkpoint-{step}":
            raise Crash(f"simulated crash after {path.name}")

    return on_checkpoint


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path,
                tiny_model_dir: Path, shared_cache: Path) -> Iterator[dict[str, Any]]:
    """A run with every tracker that logs steps 1-6 and dies right after checkpoint-6; the
    checkpoints 4 and 6 are then made unusable, so the rerun resumes from checkpoint-2 and
    trains (and logs) steps 3-6 again before it evaluates."""
    root = tmp_path_factory.mktemp("tracking")
    out = root / "run"
    settings = run_settings(sample_dir, tiny_model_dir, shared_cache, output_dir=str(out),
                            max_steps=STEPS, save_steps=2, save_total_limit=0, do_eval=True,
                            max_eval_samples=20, report_to="tensorboard,mlflow,wandb",
                            s3_endpoint_url=SECRET_URL)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in tracker_env(root).items():
            patch.setenv(key, value)
        patch.delenv("WANDB_SERVICE", raising=False)  # wandb sets it: unset again afterwards
        with pytest.raises(Crash):
            training.train(Config(**settings), on_checkpoint=crash_at(STEPS))
        first = {"metrics": read_metrics(out),
                 "tensorboard": sorted((out / "tensorboard").iterdir()),
                 "wandb": sorted((out / "wandb").glob("offline-run-*"))}
        for step in (4, 6):
            (out / f"checkpoint-{step}" / "manifest.json").unlink()
        result = training.train(Config(**settings))
    assert result.resumed_from == str(out / "checkpoint-2")
    yield {"out": out, "root": root, "first": first, "cfg": Config(**settings)}


def _losses(out: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(out)}


def _no_secret_under(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret in data for secret in SECRETS), path


def test_metrics_jsonl_keeps_its_format(resumed_run: dict[str, Any]) -> None:
    out = resumed_run["out"]
    assert [m["step"] for m in resumed_run["first"]["metrics"]] == list(range(1, STEPS + 1))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # every step, the held-out evaluation after the last one, the dev evaluation
    assert [m["step"] for m in lines] == list(range(1, STEPS + 1)) + [STEPS, STEPS]
    assert "heldout" in lines[-2] and "eval" in lines[-1]
    assert set(lines[0]) == {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s",
                             "samples_per_s"}
    assert set(lines[-1]) == {"step", "eval"} and "f1" in lines[-1]["eval"]
    # the resumed steps are the interrupted run's steps (bitwise resume)
    assert _losses(out) == {m["step"]: m["loss"] for m in resumed_run["first"]["metrics"]}


def test_tensorboard_curves_continue_at_the_checkpoint_without_duplicates(
    resumed_run: dict[str, Any]
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = resumed_run["out"]
    # the interrupted run's file holds steps 1-6: without purging them, 3-6 would be twice
    (first_file,) = resumed_run["first"]["tensorboard"]
    raw = [event.step for event in EventFileLoader(str(first_file)).Load()
           if any(value.tag == "train/loss" for value in event.summary.value)]
    assert raw == list(range(1, STEPS + 1))
    files = sorted((out / "tensorboard").iterdir())
    assert len(files) == 2

    events = EventAccumulator(str(out / "tensorboard"))  # what TensorBoard shows
    events.Reload()
    losses = _losses(out)
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, STEPS + 1))
    assert [e.value for e in loss] == pytest.approx([losses[s] for s in losses], rel=1e-6)
    metrics = {m["step"]: m for m in read_metrics(out)}
    for tag, key in (("train/learning_rate", "lr"), ("train/grad_norm", "grad_norm"),
                     ("train/tokens_per_s", "tokens_per_s"), ("train/epoch", "epoch"),
                     ("train/samples_per_s", "samples_per_s")):
        series = events.Scalars(tag)
        assert [e.step for e in series] == list(range(1, STEPS + 1)), tag
        assert series[-1].value == pytest.approx(metrics[STEPS][key], rel=1e-6), tag
    results = json.loads((out / "eval_results.json").read_text())
    for key in ("exact", "f1", "HasAns_f1", "NoAns_f1", "null_threshold", "best_f1"):
        (point,) = events.Scalars(f"eval/{key}")
        assert point.step == STEPS and point.value == pytest.approx(results[key], rel=1e-6)


def _mlflow_client(root: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient((root / "mlruns").as_uri())


def test_mlflow_continues_the_same_run_without_duplicated_points(
    resumed_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out, root, cfg = resumed_run["out"], resumed_run["root"], resumed_run["cfg"]
    client = _mlflow_client(root)
    experiment = client.get_experiment_by_name("squadft-test")
    (run,) = client.search_runs([experiment.experiment_id])
    state = json.loads((out / TRACKING_FILE).read_text())
    assert run.info.run_id == state["mlflow"]["run_id"]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    steps = Counter(point.step for point in history)
    assert sorted(steps) == list(range(1, STEPS + 1)) and set(steps.values()) == {1}, steps
    losses = _losses(out)
    assert {p.step: p.value for p in history} == pytest.approx(losses, rel=1e-9)
    for key in ("train/learning_rate", "train/grad_norm", "train/tokens_per_s",
                "train/samples_per_s", "train/epoch"):
        assert len(client.get_metric_history(run.info.run_id, key)) == STEPS, key
    results = json.loads((out / "eval_results.json").read_text())
    (f1,) = client.get_metric_history(run.info.run_id, "eval/f1")
    assert f1.step == STEPS and f1.value == pytest.approx(results["f1"])
    assert run.data.metrics["eval/NoAns_f1"] == pytest.approx(results["NoAns_f1"])
    # params: the resolved config, redacted exactly as squadft_config.json
    saved = json.loads((out / "squadft_config.json").read_text())
    assert run.data.params == {key: str(value) for key, value in saved.items()}
    assert run.data.params["s3_endpoint_url"] == cfg.to_dict(redact=True)["s3_endpoint_url"]
    _no_secret_under(root / "mlruns")


def test_wandb_offline_resumes_the_same_run_without_duplicated_points(
    resumed_run: dict[str, Any]
) -> None:
    out = resumed_run["out"]
    state = json.loads((out / TRACKING_FILE).read_text())
    run_id = state["wandb"]["run_id"]
    runs = sorted((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 2 and resumed_run["first"]["wandb"] == runs[:1]
    rows = [[row for row in wandb_history(run / f"run-{run_id}.wandb")] for run in runs]
    first_steps = [row["_step"] for row in rows[0] if "train/loss" in row]
    assert first_steps == list(range(1, STEPS + 1))
    # the resumed run skips steps 3-6: W&B already holds them
    assert not [row for row in rows[1] if "train/loss" in row]
    losses = _losses(out)
    assert {row["_step"]: row["train/loss"] for row in rows[0]} == pytest.approx(losses)
    assert {"train/learning_rate", "train/grad_norm", "train/tokens_per_s",
            "train/samples_per_s", "train/epoch"} <= set(rows[0][-1])
    config, summary = _wandb_config_and_summary(runs[1] / f"run-{run_id}.wandb")
    assert config["s3_endpoint_url"] == resumed_run["cfg"].to_dict(redact=True)[
        "s3_endpoint_url"]
    assert {k: v for k, v in config.items() if not k.startswith("_")} == json.loads(
        (out / "squadft_config.json").read_text())
    results = json.loads((out / "eval_results.json").read_text())
    assert summary["eval/f1"] == pytest.approx(results["f1"])
    _no_secret_under(out / "wandb")


def _wandb_config_and_summary(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config and the final summary a W&B run file records (read as wandb_history
    reads it)."""
    from wandb.proto import wandb_internal_pb2

    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    data = path.read_bytes()
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        kind_name = record.WhichOneof("record_type")
        items = {"run": lambda r: r.run.config.update, "config": lambda r: r.config.update,
                 "summary": lambda r: r.summary.update}.get(kind_name)
        if items is not None:
            target = summary if kind_name == "summary" else config
            for item in items(record):
                target[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config, summary


def test_run_ids_travel_with_the_checkpoints(resumed_run: dict[str, Any]) -> None:
    """A resume from a checkpoint on another machine (S3) continues the same runs."""
    out = resumed_run["out"]
    state = json.loads((out / TRACKING_FILE).read_text())
    trainer_state = json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json")
                               .read_text())
    assert trainer_state["trackers"] == {"mlflow": state["mlflow"]["run_id"],
                                         "wandb": state["wandb"]["run_id"]}


# --- a torn metrics.jsonl ---------------------------------------------------------------------

TORN = '{"step": 13, "epoch": 1.44, "lo'  # what a node crash or a full disk leaves


def test_restart_drops_only_the_torn_line_and_leaves_a_valid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": step, "loss": 1.0 / step}) for step in (1, 2, 3)]
    path.write_text("\n".join(lines) + "\n" + TORN)
    JsonlFile(path).restart(2)
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
    assert capsys.readouterr().err == (
        f"squadft: warning: {path}: dropped 1 unreadable line (line 4, torn by a crash or a "
        "full disk?); the resume goes on without it\n")
    JsonlFile(path).restart(2)  # nothing left to drop: nothing said
    assert capsys.readouterr().err == ""
    # zeros a crashed filesystem left mid-file, a JSON list, and the torn tail
    path.write_text(lines[0] + "\n\0\0\0\n[1, 2]\n" + lines[1] + "\n" + TORN)
    JsonlFile(path).restart(2)
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
    assert capsys.readouterr().err == (
        f"squadft: warning: {path}: dropped 3 unreadable lines (first: line 2, torn by a crash "
        "or a full disk?); the resume goes on without them\n")


def test_a_torn_last_metrics_line_does_not_stop_the_resume(tiny_settings: Any) -> None:
    """The run dies right after checkpoint-2 with a half-written line; `squadft train` then
    resumes from checkpoint-2, warns once and leaves every line of metrics.jsonl valid."""
    from tests.train.common import run, squadft_command

    settings = tiny_settings(max_steps=3, save_steps=2, save_total_limit=0, report_to="none")
    with pytest.raises(Crash):
        training.train(Config(**settings), on_checkpoint=crash_at(2))
    out = Path(settings["output_dir"])
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write(TORN)
    resumed = run(squadft_command(settings))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "checkpoint-2" in resumed.stderr
    assert [line for line in resumed.stderr.splitlines() if "unreadable line" in line] == [
        f"squadft: warning: {out / 'metrics.jsonl'}: dropped 1 unreadable line (line 3, torn "
        "by a crash or a full disk?); the resume goes on without it"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "heldout" not in line] == [1, 2, 3]


# --- an unwritable TensorBoard directory ------------------------------------------------------

@pytest.mark.parametrize("blocker", ["a file", "a link to a directory in /sys"])
def test_an_unwritable_tensorboard_directory_is_exit_5_before_any_work(
    blocker: str, tmp_path: Path, sample_dir: Path, tiny_model_dir: Path
) -> None:
    """<output_dir>/tensorboard cannot be a directory (a file is in the way), or cannot be
    written even by root (sysfs refuses new files): one line naming it, exit 5, no thread
    traceback, and nothing downloaded or trained first."""
    from tests.train.common import run, squadft_command

    out = tmp_path / "out"
    out.mkdir()
    if blocker == "a file":
        (out / "tensorboard").write_text("")
    else:
        (out / "tensorboard").symlink_to("/sys/kernel")  # EACCES to root too
    settings = run_settings(sample_dir, tiny_model_dir, tmp_path / "cache",
                            output_dir=str(out), max_steps=2, report_to="tensorboard")
    result = run(squadft_command(settings))
    assert result.returncode == 5, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("squadft: error: ") \
        and str(out / "tensorboard") in lines[0], result.stderr
    assert result.stdout == "" and not (tmp_path / "cache").exists()
    assert not (out / "metrics.jsonl").exists()


# --- --report-to ------------------------------------------------------------------------------

def test_report_to_is_validated() -> None:
    assert Config().report_to == "tensorboard"
    assert report_targets(Config(report_to="wandb, MLflow,wandb").report_to) == ("wandb",
                                                                                  "mlflow")
    assert report_targets("none") == () and report_targets("") == ()
    with pytest.raises(ConfigError, match="unknown tracker 'comet'"):
        Config(report_to="tensorboard,comet")
    with pytest.raises(ConfigError, match="none cannot be combined"):
        Config(report_to="none,wandb")
    cfg = Config.resolve(env={"SQUADFT_REPORT_TO": "mlflow"})
    assert cfg.report_to == "mlflow"


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_missing_tracker_package_is_one_line_exit_2(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample_dir: Path,
    tiny_model_dir: Path
) -> None:
    from squadft.cli import app
    from typer.testing import CliRunner

    from tests.train.common import cli_flags

    monkeypatch.setitem(sys.modules, name, None)  # `import NAME` raises ImportError
    settings = run_settings(sample_dir, tiny_model_dir, tmp_path / "cache",
                            output_dir=str(tmp_path / "out"), report_to=f"tensorboard,{name}")
    result = CliRunner().invoke(app, ["train", *cli_flags(settings)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"squadft: error: --report-to {name}: the {name} package is not installed; "
        f"pip install 'squadft[{name}]' (or drop {name} from --report-to)"]
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_mlflow_store_that_cannot_be_used_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus-scheme://user:pw@host/x")
    with pytest.raises(ConfigError, match=r"--report-to mlflow: cannot use the tracking store "
                                          r"bogus-scheme://\*\*\*@host/x"):
        MetricsLogger(Config(report_to="mlflow", output_dir=str(tmp_path)))


def test_report_to_none_writes_only_metrics_jsonl(tiny_settings: Any) -> None:
    settings = tiny_settings(max_steps=2, report_to="none")
    training.train(Config(**settings))
    out = Path(settings["output_dir"])
    assert [m["step"] for m in read_metrics(out)] == [1, 2]
    assert not (out / "tensorboard").exists() and not (out / "wandb").exists()
    assert not (out / TRACKING_FILE).exists()


def test_other_ranks_log_nothing(tmp_path: Path) -> None:
    logger = MetricsLogger(Config(output_dir=str(tmp_path), report_to="tensorboard"),
                           enabled=False)
    assert logger.start(0, 10) == {}
    logger.advance()
    logger.log({"step": 1, "loss": 1.0, "lr": 1e-3, "tokens_per_s": 1.0})
    logger.log_eval(1, {"f1": 50.0})
    logger.close()
    assert list(tmp_path.iterdir()) == []


# --- a real SIGKILL ---------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_then_resume_every_tracker_holds_each_step_once(
    tmp_path: Path, sample_dir: Path, tiny_model_dir: Path, shared_cache: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run is killed between checkpoints; the credentials are on the command line, which
    W&B would record with the run's metadata if it were let."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.train.common import REPO_ROOT, run, squadft_command, subprocess_env, wait_for

    out = tmp_path / "run"
    settings = run_settings(sample_dir, tiny_model_dir, shared_cache, output_dir=str(out),
                            max_steps=40, save_steps=10, save_total_limit=0,
                            report_to="tensorboard,mlflow,wandb", s3_endpoint_url=SECRET_URL)
    env = subprocess_env(**tracker_env(tmp_path))
    # not the W&B service of this pytest process (wandb exports its address to children),
    # which would outlive the killed run and still hold its run id
    env.pop("WANDB_SERVICE", None)
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(squadft_command(settings), stdout=log, stderr=subprocess.STDOUT,
                                   cwd=REPO_ROOT, env=env)
        wait_for(lambda: (out / "checkpoint-10" / "manifest.json").is_file(), 120,
                 "checkpoint-10", process)
        process.kill()
        assert process.wait(timeout=30) == -signal.SIGKILL
    assert not (out / "final").exists(), "the run ended before it could be killed"
    killed_at = max(m["step"] for m in read_metrics(out))

    resumed = run(squadft_command(settings), env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = int(re.search(r"resuming from .*checkpoint-(\d+)", resumed.stderr).group(1))
    assert start < 40 and [m["step"] for m in read_metrics(out)] == list(range(1, 41))

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 41))

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = _mlflow_client(tmp_path)
    (mlflow_run,) = client.search_runs(
        [client.get_experiment_by_name("squadft-test").experiment_id])
    steps = [p.step for p in client.get_metric_history(mlflow_run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 41)), (killed_at, start, Counter(steps))

    run_id = json.loads((out / TRACKING_FILE).read_text())["wandb"]["run_id"]
    files = sorted(out.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2
    steps = [row["_step"] for path in files for row in wandb_history(path)
             if "train/loss" in row]
    # W&B writes its file in 32 KiB blocks: a SIGKILL loses the steps not yet written, but
    # the resumed run never logs a step twice, and logs every step after its checkpoint
    assert len(steps) == len(set(steps)) and set(range(start + 1, 41)) <= set(steps)
    for directory in (out, tmp_path / "mlruns"):
        _no_secret_under(directory)


def test_evaluating_again_adds_no_point_and_a_purged_one_is_logged_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A requeue that only evaluates again (training complete) logs nothing new; a resume
    from an earlier checkpoint, whose TensorBoard purge hides the evaluation, logs it again."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for key, value in tracker_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    cfg = Config(output_dir=str(tmp_path / "run"), report_to="tensorboard,mlflow")
    (tmp_path / "run").mkdir()
    record = {"loss": 1.0, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1.0,
              "samples_per_s": 1.0, "epoch": 0.1}
    results = {"f1": 55.5, "exact": 50.0, "null_threshold_kind": "calibrated"}

    def session(start: int, run_ids: dict[str, str]) -> dict[str, str]:
        logger = MetricsLogger(cfg)
        ids = logger.start(start, 2, run_ids)
        for step in range(start + 1, 3):
            logger.log({"step": step, **record})
        logger.log_eval(2, results)
        logger.close()
        return ids

    ids = session(0, {})
    assert session(2, ids) == ids  # training complete: evaluation only
    assert session(1, ids) == ids  # from checkpoint-1: step 2 and the evaluation again
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("eval/f1")] == [(2, 55.5)]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    client = _mlflow_client(tmp_path)
    assert [p.step for p in client.get_metric_history(ids["mlflow"], "eval/f1")] == [2]
    assert [p.step for p in client.get_metric_history(ids["mlflow"], "train/loss")] == [1, 2]
    assert client.get_run(ids["mlflow"]).data.tags["eval/null_threshold_kind"] == "calibrated"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 2]
