"""`squadft report SWEEP_DIR`: the ranking of the trials on top, the chosen one marked with its
dev F1 alone, then the done trials as runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from squadft.cli import app
from squadft.flows import sweep
from squadft.report.page import write_report
from typer.testing import CliRunner

from tests.report.builders import EVAL_FIGURES, TRAINING_FIGURES, figure_uris, make_run
from tests.train.common import REPO_ROOT, subprocess_env

MARKUP_MODEL = "<i>m</i>$x_$y"  # a setting with markup and mathtext in the chosen one's label
TRIALS = [{"learning_rate": 1e-5}, {"learning_rate": 2e-5, "model": MARKUP_MODEL},
          *({"learning_rate": lr} for lr in (3e-5, 4e-5, 5e-5, 6e-5, 7e-5))]
CHOSEN_LABEL = f"trial-001 learning_rate=2e-05 model={MARKUP_MODEL}"
ARTICLES = [f"{i // 10}:title" for i in range(40)]  # 4 held-out articles of 10 questions


def done_trial(trial_dir: Path, source_dir: Path, heldout_f1: float, f1s: list[float],
               seed: int, lr: float) -> None:
    """A finished trial: a run as `squadft train` leaves it, its held-out F1 in the calibration
    and its per-question held-out scores."""
    make_run(trial_dir, source_dir, seed=seed, lr=lr)
    inference = trial_dir / "final" / "squadft_inference.json"
    record = json.loads(inference.read_text())
    record["calibration"]["scores"]["f1"] = heldout_f1
    inference.write_text(json.dumps(record))
    (trial_dir / "heldout_scores.json").write_text(json.dumps(
        {"step": 100, "articles": ARTICLES, "f1": f1s}))
    sweep.record_state(trial_dir, "done", 0)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory, source_dir: Path) -> Path:
    directory = tmp_path_factory.mktemp("sweeps") / "lr"
    trials = directory.parent / "trials.json"
    trials.write_text(json.dumps(TRIALS))
    plan = CliRunner().invoke(app, ["sweep", "plan", str(directory), "--trials", str(trials)])
    assert plan.exit_code == 0, plan.output
    done_trial(directory / "trial-001", source_dir, 75.0, [1.0] * 40, seed=1, lr=2e-5)  # chosen
    # behind on one held-out article only: within the noise; behind on all: clearly worse
    done_trial(directory / "trial-000", source_dir, 70.0, [1.0] * 30 + [0.0] * 10, seed=2,
               lr=1e-5)
    done_trial(directory / "trial-006", source_dir, 20.0, [0.0] * 40, seed=3, lr=7e-5)
    sweep.record_state(directory / "trial-002", "failed", 7)
    sweep.record_state(directory / "trial-003", "preempted", 75)
    make_run(directory / "trial-004", source_dir, evaluated=False)  # still training
    sweep.record_state(directory / "trial-004", "running")
    return directory


@pytest.fixture(scope="module")
def sweep_page(sweep_dir: Path) -> str:
    path, runs = write_report([sweep_dir])
    assert path == sweep_dir / "report.html"
    assert [run.path.name for run in runs] == ["trial-001", "trial-000", "trial-006"]
    return path.read_text(encoding="utf-8")


def _ranking(page: str) -> list[list[str]]:
    table = page.split('<table class="sweep">', 1)[1].split("</table>", 1)[0]
    return [[re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>",
                                                                  row)]
            for row in table.split("<tr")[1:]]


def test_sweep_page_ranks_the_trials_and_marks_the_chosen_one(sweep_dir: Path,
                                                             sweep_page: str) -> None:
    assert sweep_page.index('<h2 id="sweep">') < sweep_page.index('<h2 id="metrics">')
    dev_f1 = json.loads((sweep_dir / "trial-001" / "eval_results.json").read_text())["f1"]
    rows = _ranking(sweep_page)
    assert rows[0] == ["", "rank", "trial", "state", "held-out F1", "chosen minus this [95%]",
                       "dev F1", "learning_rate", "model"]
    markup = "&lt;i&gt;m&lt;/i&gt;$x_$y"
    assert rows[1] == ["★ chosen", "1", "trial-001", "done", "75.00", "—", f"{dev_f1:.2f}",
                       "2e-05", markup]
    assert rows[2][:5] == ["", "2", "trial-000", "done", "70.00"]
    assert rows[2][5].startswith("+25.00 [+0.00, ") and rows[2][6] == "—"
    assert rows[3][:7] == ["", "3", "trial-006", "done", "20.00",
                           "+100.00 [+100.00, +100.00]", "—"]
    assert [row[2:5] for row in rows[4:]] == [["trial-002", "failed (exit 7)", "—"],
                                              ["trial-003", "preempted (exit 75)", "—"],
                                              ["trial-004", "running", "—"],
                                              ["trial-005", "pending", "—"]]
    assert all(row[6] == "—" for row in rows[2:])  # dev F1 for the chosen one only
    assert sweep_page.count('<tr class="chosen">') == 1
    assert "The selection used only those held-out articles and never saw dev" in sweep_page
    assert ("The chosen trial&#x27;s lead over trial-000 is within the noise" in sweep_page
            and "over trial-000, trial-006" not in sweep_page)


def test_done_trials_are_reported_as_runs_labelled_by_their_settings(sweep_page: str) -> None:
    assert set(figure_uris(sweep_page)) == {*TRAINING_FIGURES, *EVAL_FIGURES}
    metrics = sweep_page.split('<table class="metrics">', 1)[1].split("</tr>", 1)[0]
    assert re.findall(r"<th>(.*?)</th>", metrics)[1:] == [
        "trial-001 learning_rate=2e-05 model=&lt;i&gt;m&lt;/i&gt;$x_$y",
        "trial-000 learning_rate=1e-05", "trial-006 learning_rate=7e-05"]
    assert "<i>m</i>" not in sweep_page and CHOSEN_LABEL not in sweep_page
    assert "<title>squadft sweep report: lr</title>" in sweep_page


def test_a_broken_trial_file_is_a_note(tmp_path: Path, source_dir: Path) -> None:
    directory = tmp_path / "sweep"
    assert CliRunner().invoke(app, ["sweep", "plan", str(directory), "--grid",
                                    "learning_rate=1e-5,2e-5,3e-5"]).exit_code == 0
    done_trial(directory / "trial-000", source_dir, 70.0, [1.0] * 40, seed=1, lr=1e-5)
    sweep.record_state(directory / "trial-001", "done", 0)  # done, but its files are gone
    path, runs = write_report([directory])
    page = path.read_text(encoding="utf-8")
    assert [run.label for run in runs] == ["trial-000 learning_rate=1e-05"]
    assert "trial-001 is done but not reported:" in page and "★ chosen" in page
    # a state file that is no JSON object: that trial's state is unknown, the others ranked
    (directory / "trial-001" / sweep.STATE_FILE).write_text("[1, 2]")
    path, runs = write_report([directory])
    page = path.read_text(encoding="utf-8")
    assert [run.label for run in runs] == ["trial-000 learning_rate=1e-05"]
    assert f"unknown ({sweep.STATE_FILE} is not an object)" in page
    # one that is not JSON at all: no ranking, the runs still reported, a note
    (directory / "trial-001" / sweep.STATE_FILE).write_text("{")
    path, runs = write_report([directory])
    page = path.read_text(encoding="utf-8")
    assert [run.label for run in runs] == ["trial-000"]
    assert "the trials cannot be ranked (" in page and sweep.STATE_FILE in page
    assert '<h2 id="trials">Trials</h2>' in page and '<table class="sweep">' not in page


def test_squadft_report_on_a_sweep_directory(sweep_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "sweep.html"
    proc = subprocess.run([sys.executable, "-m", "squadft", "report", str(sweep_dir),
                           "--output", str(output)], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"report written to {output}" in proc.stdout
    assert "★ chosen" in output.read_text(encoding="utf-8")
    # a sweep directory with others, and a sweep.json that is no plan: one line, exit 2
    mixed = CliRunner().invoke(app, ["report", str(sweep_dir), str(sweep_dir / "trial-001")])
    assert mixed.exit_code == 2 and "is a sweep directory (it holds sweep.json): report it " \
        "alone" in mixed.output
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "sweep.json").write_text('{"format": "other"}')
    broken = CliRunner().invoke(app, ["report", str(tmp_path / "broken")])
    assert broken.exit_code == 2 and "not a squadft sweep plan" in broken.output
    assert len(broken.output.strip().splitlines()) == 1
