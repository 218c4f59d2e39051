"""squadft.flows.sweep: trials from a grid or a file, checked against Config; each trial's
index, settings, directories and recorded state; the ranking by held-out F1.

The generated Slurm array and Indexed Job are checked, run and submitted in
tests/deploy/test_sweep.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from squadft.cli import app
from squadft.config import Config
from squadft.errors import ConfigError, ModelLoadError, Preempted
from squadft.evaluate.calibration import Calibration, InferenceSettings
from squadft.flows import sweep, training
from typer.testing import CliRunner

from tests.train.common import REPO_ROOT, subprocess_env


def plan_in(directory: Path, *flags: str) -> Any:
    return CliRunner().invoke(app, ["sweep", "plan", str(directory), *flags])


# --- trials ----------------------------------------------------------------------------------


def test_grid_is_the_cartesian_product_of_typed_config_values() -> None:
    trials = sweep.parse_grid(["learning-rate=3e-5,5e-5", "--epochs=2,3", "length_bucketing=no"])
    assert trials == [
        {"learning_rate": 3e-5, "epochs": 2.0, "length_bucketing": False},
        {"learning_rate": 3e-5, "epochs": 3.0, "length_bucketing": False},
        {"learning_rate": 5e-5, "epochs": 2.0, "length_bucketing": False},
        {"learning_rate": 5e-5, "epochs": 3.0, "length_bucketing": False},
    ]
    assert sweep.parse_grid(["max_steps=none,10"]) == [{"max_steps": None}, {"max_steps": 10}]


def test_trials_file_json_and_yaml(tmp_path: Path) -> None:
    as_json = tmp_path / "trials.json"
    as_json.write_text(json.dumps([{"learning-rate": 3e-5, "epochs": 2},
                                   {"learning_rate": "5e-5", "do_eval": False}]))
    as_yaml = tmp_path / "trials.yaml"
    # PyYAML reads 3e-5 as a string (YAML 1.1 floats need a dot): Config's parser takes it
    as_yaml.write_text("- {learning_rate: 3e-5, epochs: 2}\n- learning_rate: 5.0e-5\n"
                       "  do_eval: false\n")
    expected = [{"learning_rate": 3e-5, "epochs": 2.0},
                {"learning_rate": 5e-5, "do_eval": False}]
    assert sweep.read_trials(as_json) == expected
    assert sweep.read_trials(as_yaml) == expected


@pytest.mark.parametrize(("flags", "message"), [
    (["--grid", "lerning_rate=1e-5"], "unknown setting 'lerning_rate' (did you mean "
     "learning_rate?)"),
    (["--grid", "epochs=two"], "--grid epochs='two' is not a valid float for epochs"),
    (["--grid", "batch_size=8,0"], "trial 1 (batch_size=0): invalid configuration: batch_size "
     "must be > 0 (got 0)"),
    (["--grid", "output_dir=a,b"], "output_dir is set per trial by the sweep"),
    (["--grid", "epochs"], "--grid 'epochs': expected NAME=VALUE[,VALUE...]"),
    (["--grid", "epochs=1,1"], "trials 0 and 1 are the same (epochs=1)"),
    (["--grid", "epochs=1", "--grid", "epochs=2"], "--grid: epochs is given twice"),
    ([], "give either --grid NAME=V1,V2 (repeatable) or --trials FILE"),
    (["--grid", "epochs=1", "--max-parallel", "0"], "--max-parallel must be >= 1 (got 0)"),
    (["--grid", "epochs=1", "--doc-stride", "500"], "trial 0 (epochs=1): invalid "
     "configuration: doc_stride (500) must be < max_seq_length (384)"),
    (["--grid", "source=https://u:pw@mirror/squad/"], "trial 0: source holds a credential"),
])
def test_bad_trials_are_refused_at_plan_time_with_exit_2(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    result = plan_in(tmp_path / "sweep", *flags)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "sweep" / sweep.PLAN_FILE).exists()


@pytest.mark.parametrize(("content", "message"), [
    ('{"epochs": 2}', "expected a non-empty list of {setting: value} objects"),
    ("[{}]", "expected a non-empty list"),
    ('[{"epochs": [1, 2]}]', "epochs takes one value, not list"),
    ('[{"epochs": 1, "--epochs": 2}]', "a setting is given twice"),
    ("[{", "not valid:"),
])
def test_bad_trials_file_is_one_line_exit_2(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "trials.json"
    path.write_text(content)
    result = plan_in(tmp_path / "sweep", "--trials", str(path))
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_plan_shares_the_base_settings_and_never_writes_a_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SQUADFT_SEED", "7")  # the submitting environment is shared too
    endpoint = "https://user:hunter2@minio.example:9000"
    result = plan_in(tmp_path / "sweep", "--grid", "learning_rate=3e-5,5e-5",
                     "--s3-uri", "s3://bucket/sweeps/a", "--s3-endpoint-url", endpoint,
                     "--batch-size", "4", "--max-parallel", "1")
    assert result.exit_code == 0, result.output
    assert "planned 2 trials" in result.output and "at most 1 at a time" in result.output
    for name in (sweep.PLAN_FILE, sweep.SLURM_FILE, sweep.K8S_FILE):
        assert "hunter2" not in (tmp_path / "sweep" / name).read_text(), name
    record = sweep.load_plan(tmp_path / "sweep")
    assert record["base"] == {"batch_size": 4, "seed": 7, "s3_uri": "s3://bucket/sweeps/a"}
    assert record["from_environment"] == ["s3_endpoint_url"]
    assert [t["name"] for t in record["trials"]] == ["trial-000", "trial-001"]

    env = {"SLURM_ARRAY_TASK_ID": "1"}
    with pytest.raises(ConfigError, match="SQUADFT_S3_ENDPOINT_URL must be set"):
        sweep.trial_config(record, 1, tmp_path / "sweep", env)
    cfg = sweep.trial_config(record, 1, tmp_path / "sweep",
                             {**env, "SQUADFT_S3_ENDPOINT_URL": endpoint, "SQUADFT_SEED": "9"})
    assert cfg.learning_rate == 5e-5 and cfg.batch_size == 4 and cfg.s3_endpoint_url == endpoint
    assert cfg.seed == 7  # the plan's settings win over the job's environment
    assert cfg.output_dir == str(tmp_path / "sweep" / "trial-001")
    assert cfg.s3_uri == "s3://bucket/sweeps/a/trial-001"


def test_s3_prefix_from_the_job_environment_is_per_trial_too(tmp_path: Path) -> None:
    assert plan_in(tmp_path / "sweep", "--grid", "epochs=1,2").exit_code == 0
    record = sweep.load_plan(tmp_path / "sweep")
    cfg = sweep.trial_config(record, 0, tmp_path / "sweep", {"SQUADFT_S3_URI": "s3://b/p/"})
    assert cfg.s3_uri == "s3://b/p/trial-000" and cfg.epochs == 1.0
    assert sweep.trial_config(record, 0, tmp_path / "sweep", {}).s3_uri is None


def test_a_plan_whose_trials_started_is_not_replaced(tmp_path: Path) -> None:
    directory = tmp_path / "sweep"
    assert plan_in(directory, "--grid", "epochs=1,2").exit_code == 0
    assert plan_in(directory, "--grid", "epochs=1,2").exit_code == 0  # the same plan again
    (directory / "trial-000").mkdir()
    result = plan_in(directory, "--grid", "epochs=1,3")
    assert result.exit_code == 2 and "plan into another directory" in result.output


# --- the trial's index -----------------------------------------------------------------------


@pytest.mark.parametrize(("env", "expected"), [
    ({"SLURM_ARRAY_TASK_ID": "2"}, 2),
    ({"JOB_COMPLETION_INDEX": "0"}, 0),
    ({"SLURM_ARRAY_TASK_ID": "", "JOB_COMPLETION_INDEX": "1"}, 1),
    ({}, "no trial index: `squadft sweep train` runs as a Slurm array task"),
    ({"JOB_COMPLETION_INDEX": "3"}, "JOB_COMPLETION_INDEX=3 is out of range: the sweep has 3 "
     "trials (0 to 2)"),
    ({"SLURM_ARRAY_TASK_ID": "-1"}, "SLURM_ARRAY_TASK_ID='-1' is not a trial index"),
])
def test_trial_index_from_slurm_or_kubernetes(env: dict[str, str], expected: int | str) -> None:
    if isinstance(expected, int):
        assert sweep.trial_index(env, 3) == expected
    else:
        with pytest.raises(ConfigError, match="^" + re.escape(expected)):
            sweep.trial_index(env, 3)


def test_trial_without_an_index_is_one_line_exit_2(tmp_path: Path) -> None:
    assert plan_in(tmp_path / "sweep", "--grid", "epochs=1,2").exit_code == 0
    env = subprocess_env()
    env.pop("JOB_COMPLETION_INDEX", None)
    proc = subprocess.run([sys.executable, "-m", "squadft", "sweep", "train",
                           str(tmp_path / "sweep")], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "squadft: error: no trial index: `squadft sweep train` runs as a Slurm array task "
        "(SLURM_ARRAY_TASK_ID) or a Kubernetes Indexed Job pod (JOB_COMPLETION_INDEX); set "
        "one of them to run a trial by hand"]


def test_status_of_a_directory_that_is_no_sweep_is_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sweep", "status", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"squadft: error: {tmp_path}/sweep.json: no such file; is "
                                     f"{tmp_path} a sweep directory (`squadft sweep plan` "
                                     "writes it)?")


# --- the trial's state -----------------------------------------------------------------------


def test_a_failing_trial_records_its_exit_code(tmp_path: Path) -> None:
    directory = tmp_path / "sweep"
    result = plan_in(directory, "--grid", "epochs=1,2", "--model", str(tmp_path / "no-model"),
                     "--cache-dir", str(tmp_path / "cache"), "--report-to", "none")
    assert result.exit_code == 0, result.output
    with pytest.raises(ModelLoadError):
        sweep.run_trial(str(directory), env={"JOB_COMPLETION_INDEX": "1"})
    state = json.loads((directory / "trial-001" / sweep.STATE_FILE).read_text())
    assert state["state"] == "failed" and state["exit_code"] == 6
    assert not (directory / "trial-000").exists()


def test_a_preempted_trial_is_recorded_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "sweep"
    assert plan_in(directory, "--grid", "epochs=1,2").exit_code == 0
    seen: list[Config] = []
    during: list[str | None] = []  # the recorded state while training

    def preempted(cfg: Config) -> None:
        seen.append(cfg)
        path = Path(cfg.output_dir) / sweep.STATE_FILE
        during.append(json.loads(path.read_text())["state"] if path.exists() else None)
        raise Preempted("stopped by SIGTERM")

    monkeypatch.setattr(training, "train", preempted)
    with pytest.raises(Preempted):
        sweep.run_trial(str(directory), env={"SLURM_ARRAY_TASK_ID": "0"})
    assert seen[0].output_dir == str(directory / "trial-000") and seen[0].epochs == 1.0
    assert during == ["running"]
    state = json.loads((directory / "trial-000" / sweep.STATE_FILE).read_text())
    assert (state["state"], state["exit_code"]) == ("preempted", 75)
    # another rank of the same trial records nothing: rank 0 does
    (directory / "trial-001").mkdir()
    with pytest.raises(Preempted):
        sweep.run_trial(str(directory), env={"SLURM_ARRAY_TASK_ID": "1", "RANK": "1",
                                             "WORLD_SIZE": "2"})
    assert not (directory / "trial-001" / sweep.STATE_FILE).exists() and during[1] is None


# --- status ----------------------------------------------------------------------------------


def finish_trial(trial_dir: Path, heldout_f1: float | None, dev_f1: float) -> None:
    """What a finished trial leaves for the ranking: its state, the calibration in final/
    (None: trained without held-out data) and the dev results."""
    calibration = None if heldout_f1 is None else Calibration(
        null_threshold=-1.5, source="1 training articles held out of training", questions=30,
        unanswerable=15, scores={"exact": heldout_f1 - 2, "f1": heldout_f1, "total": 30},
        f1_at_zero=40.0, always_no_answer_f1=50.0)
    (trial_dir / "final").mkdir(parents=True)
    InferenceSettings.from_config(Config(), calibration).save(trial_dir / "final")
    (trial_dir / "eval_results.json").write_text(json.dumps({"f1": dev_f1, "exact": 1.0}))
    sweep.record_state(trial_dir, "done", 0)


def test_status_ranks_done_trials_by_held_out_f1_and_shows_the_others(tmp_path: Path) -> None:
    directory = tmp_path / "sweep"
    assert plan_in(directory, "--grid", "learning_rate=1e-5,2e-5,3e-5,4e-5,5e-5,6e-5,7e-5"
                   ).exit_code == 0
    # trial-000 has the best dev F1 but not the best held-out F1: it is not chosen
    finish_trial(directory / "trial-000", heldout_f1=50.0, dev_f1=70.0)
    finish_trial(directory / "trial-001", heldout_f1=60.0, dev_f1=55.0)
    sweep.record_state(directory / "trial-002", "failed", 7)
    sweep.record_state(directory / "trial-003", "preempted", 75)
    sweep.record_state(directory / "trial-004", "running")
    finish_trial(directory / "trial-006", heldout_f1=None, dev_f1=40.0)

    rows = sweep.rank_trials(directory)
    assert [(r.name, r.state, r.exit_code, r.rank, r.chosen, r.heldout_f1, r.dev_f1)
            for r in rows] == [
        ("trial-001", "done", 0, 1, True, 60.0, 55.0),
        ("trial-000", "done", 0, 2, False, 50.0, None),
        ("trial-002", "failed", 7, None, False, None, None),
        ("trial-003", "preempted", 75, None, False, None, None),
        ("trial-004", "running", None, None, False, None, None),
        ("trial-005", "pending", None, None, False, None, None),
        ("trial-006", "done", 0, None, False, None, None),
    ]
    assert rows[0].settings == {"learning_rate": 2e-5}

    result = CliRunner().invoke(app, ["sweep", "status", str(directory)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["rank", "trial", "state", "held-out", "F1", "dev", "F1",
                                "learning_rate"]
    assert lines[1].split() == ["*", "1", "trial-001", "done", "60.00", "55.00", "2e-05"]
    assert lines[2].split() == ["2", "trial-000", "done", "50.00", "—", "1e-05"]
    assert "failed (exit 7)" in lines[3] and "preempted (exit 75)" in lines[4]
    assert "running" in lines[5] and "pending" in lines[6]
    assert "* chosen: trial-001, the highest held-out F1" in result.output
    assert "dev F1 is shown for the chosen trial only: the selection never saw dev" in lines[-1]


def test_status_before_any_trial_is_done(tmp_path: Path) -> None:
    directory = tmp_path / "sweep"
    assert plan_in(directory, "--grid", "epochs=1,2").exit_code == 0
    sweep.record_state(directory / "trial-000", "running")
    rows = sweep.rank_trials(directory)
    assert [(r.state, r.chosen) for r in rows] == [("running", False), ("pending", False)]
    assert "none chosen" in sweep.format_status(rows)


def test_status_says_when_the_chosen_trial_leads_only_within_the_noise(tmp_path: Path) -> None:
    directory = tmp_path / "sweep"
    assert plan_in(directory, "--grid", "learning_rate=1e-5,2e-5,3e-5").exit_code == 0
    articles = [f"{i // 10}:title" for i in range(40)]  # 4 held-out articles of 10 questions
    scores = {"trial-000": [1.0] * 40,                 # chosen: right everywhere
              "trial-001": [1.0] * 30 + [0.0] * 10,    # behind on one article only
              "trial-002": [0.0] * 40}                 # behind on every article
    for (name, f1s), heldout in zip(scores.items(), (100.0, 75.0, 0.0), strict=True):
        finish_trial(directory / name, heldout_f1=heldout, dev_f1=50.0)
        (directory / name / "heldout_scores.json").write_text(json.dumps(
            {"step": 10, "articles": articles, "f1": f1s}))
    rows = sweep.rank_trials(directory)
    assert [r.name for r in rows] == ["trial-000", "trial-001", "trial-002"]
    assert rows[0].margin is None
    value, low, high = rows[1].margin
    assert value == pytest.approx(25.0) and low == 0.0 and high > 25.0
    assert rows[2].margin == [100.0, 100.0, 100.0]
    text = sweep.format_status(rows)
    assert "chosen minus this [95%]" in text.splitlines()[0]
    assert "+100.00 [+100.00, +100.00]" in text
    assert ("the chosen trial's lead over trial-001 is within the noise (its 95% interval over "
            "the held-out articles reaches 0): not a clear winner") in text
    # different held-out questions cannot be paired: no margin rather than a wrong one
    (directory / "trial-002" / "heldout_scores.json").write_text(json.dumps(
        {"step": 10, "articles": articles[:20], "f1": [0.0] * 20}))
    assert sweep.rank_trials(directory)[2].margin is None


def test_a_trial_state_file_of_the_wrong_shape_is_shown_not_a_crash(tmp_path: Path) -> None:
    directory = tmp_path / "sweep"
    assert plan_in(directory, "--grid", "epochs=1,2").exit_code == 0
    finish_trial(directory / "trial-000", heldout_f1=50.0, dev_f1=40.0)
    (directory / "trial-001").mkdir()
    (directory / "trial-001" / sweep.STATE_FILE).write_text("[1, 2]")
    result = CliRunner().invoke(app, ["sweep", "status", str(directory)])
    assert result.exit_code == 0, result.output
    assert f"unknown ({sweep.STATE_FILE} is not an object)" in result.output
    assert "* chosen: trial-000" in result.output
