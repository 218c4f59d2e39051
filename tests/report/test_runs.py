"""A run directory read into a `Run`: metrics.jsonl, the dev data, the threshold curve
behind the figures and tables, F1 by question word and by answer length."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from squadft.evaluate.gold import load_gold
from squadft.evaluate.squad_metrics import evaluate_predictions
from squadft.filespec import parse_file_spec
from squadft.report.page import write_report
from squadft.report.runs import (
    QUESTION_WORDS,
    answer_length_bucket,
    best_spans_from_nbest,
    breakdown,
    logit,
    question_word,
    read_metrics,
    threshold_curve,
)

from tests.report.builders import (
    DEV_FILE,
    DEV_NAME,
    EVAL_FIGURES,
    TRAINING_FIGURES,
    figure_uris,
    make_run,
    synthetic_result,
)


def test_threshold_curve_at_the_threshold_in_effect_is_eval_results(evaluated_run: Path,
                                                                     source_dir: Path) -> None:
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    nbest = json.loads((evaluated_run / "nbest_predictions.json").read_text())
    gold = load_gold(source_dir / DEV_NAME, parse_file_spec(DEV_FILE)).answers
    spans, diffs = best_spans_from_nbest(nbest)
    curve = threshold_curve(gold, spans, diffs)
    exact, f1 = curve.at(results["null_threshold"])
    assert exact == pytest.approx(results["exact"], abs=1e-9)
    assert f1 == pytest.approx(results["f1"], abs=1e-9)
    # the official oracle sweeps predictions.json, where questions above the threshold in
    # effect already answer "": it is the best point of the curve up to that threshold
    upto = curve.thresholds <= results["null_threshold"]
    assert max(curve.none_f1, *curve.f1[upto]) == pytest.approx(results["best_f1"], abs=1e-9)
    assert max(curve.none_exact, *curve.exact[upto]) == pytest.approx(results["best_exact"],
                                                                      abs=1e-9)
    oracle = logit(results["best_f1_thresh"])
    assert curve.at(oracle)[1] == pytest.approx(results["best_f1"], abs=1e-6)
    # over all thresholds (best spans answered above it too) the curve is at least as high
    assert curve.best()[0] >= results["best_f1"]
    # answering nothing is "always no answer" (two questions have no span at all)
    assert curve.none_f1 == pytest.approx(results["always_no_answer_f1"], abs=1e-9)


def test_threshold_curve_is_the_official_score_at_every_threshold(source_dir: Path) -> None:
    result = synthetic_result(source_dir, seed=7)
    gold = load_gold(source_dir / DEV_NAME, parse_file_spec(DEV_FILE)).answers
    curve = threshold_curve(gold, result.best_spans, result.null_score_diff)
    finite = sorted(d for d in result.null_score_diff.values() if math.isfinite(d))
    shared = list(result.null_score_diff.values())[3]  # two questions sit exactly on it
    probes = [finite[0] - 1, finite[0], shared, math.nextafter(shared, -math.inf),
              *finite[::97], 0.0, finite[-1], finite[-1] + 1]
    for t in probes:
        official = evaluate_predictions(gold, result.predictions_at(t))
        assert curve.at(t) == pytest.approx((official["exact"], official["f1"]), abs=1e-9), t
    # the arrays hold the same values from each threshold on
    for i in range(0, len(curve.thresholds), 53):
        assert (curve.exact[i], curve.f1[i]) == pytest.approx(curve.at(curve.thresholds[i]))


def test_threshold_curve_by_hand() -> None:
    gold = {"a": ["Paris"], "b": [], "c": ["Rome"], "d": ["Oslo"]}
    curve = threshold_curve(gold, {"a": "Paris", "b": "x", "d": "Oslo"},
                                   {"a": -1.0, "b": 1.0, "d": 0.5})
    assert curve.total == 4  # c has no prediction: wrong at every threshold
    assert curve.at(-5.0) == pytest.approx((25, 25))  # only b right ("")
    assert curve.at(-1.0) == pytest.approx((50, 50))  # a answered at its own difference
    assert curve.at(0.7) == pytest.approx((75, 75))  # and d
    assert curve.at(5.0) == pytest.approx((50, 50))  # b answered "x": wrong
    assert list(curve.thresholds) == [-1.0, 0.5, 1.0]
    assert list(curve.f1) == pytest.approx([50, 75, 50])
    assert curve.best() == (pytest.approx(75), 0.5)


def test_run_still_writing_its_metrics(tmp_path: Path, source_dir: Path) -> None:
    run = make_run(tmp_path / "going", source_dir, evaluated=False, steps=60)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 65, "epoch": 0.54, "loss": 1.7')  # half-written, no newline
    log = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in log.steps] == list(range(5, 61, 5))
    assert log.partial_last_line and log.bad_lines == [13]
    path, runs = write_report([run])
    page = path.read_text(encoding="utf-8")
    assert set(figure_uris(page)) == set(TRAINING_FIGURES)
    assert "the last line of metrics.jsonl is incomplete" in page
    assert "last logged step 60" in page
    # a broken line in the middle is reported as such, not as the half-written last one
    lines = (run / "metrics.jsonl").read_text().split("\n")
    lines[2] = "garbage"
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    log = read_metrics(run / "metrics.jsonl")
    assert not log.partial_last_line and log.bad_lines == [3]
    assert log.notes() == ["1 unreadable line(s) of metrics.jsonl left out (first: line 3)"]


def test_scores_from_the_eval_line_while_eval_results_is_missing(tmp_path: Path,
                                                                  source_dir: Path) -> None:
    # an evaluation rewriting the set in the run directory removes eval_results.json first
    run = make_run(tmp_path / "rewriting", source_dir)
    f1 = json.loads((run / "eval_results.json").read_text())["f1"]
    (run / "eval_results.json").unlink()
    path, runs = write_report([run])
    page = path.read_text(encoding="utf-8")
    assert "eval_results.json missing: scores from the eval line of metrics.jsonl" in page
    assert re.search(rf'<tr><th>F1</th><td class="num">{f1:.2f}</td></tr>', page)
    assert set(figure_uris(page)) == set(TRAINING_FIGURES + EVAL_FIGURES)


def test_metrics_of_a_step_logged_twice_count_once(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0}, {"step": 20, "loss": 2.5},
        {"step": 20, "eval": {"f1": 50.0}})))
    log = read_metrics(path)
    assert [(r["step"], r["loss"]) for r in log.steps] == [(10, 3.0), (20, 2.5)]
    assert log.evals == [{"step": 20, "eval": {"f1": 50.0}}] and not log.notes()


def test_dev_data_not_found_says_so_and_data_flag_finds_it(tmp_path: Path,
                                                            source_dir: Path) -> None:
    run = make_run(tmp_path / "moved", source_dir)
    config = json.loads((run / "squadft_config.json").read_text())
    config["source"] = (tmp_path / "gone").as_uri()
    (run / "squadft_config.json").write_text(json.dumps(config))
    path, runs = write_report([run])
    page = path.read_text(encoding="utf-8")
    assert "dev data dev-small.json.gz[1:] not found" in page
    assert set(figure_uris(page)) == set(TRAINING_FIGURES) | {"answerability"}
    # --data without a slice takes the run's slice
    path, runs = write_report([run], data=str(source_dir / DEV_NAME))
    assert set(figure_uris(path.read_text(encoding="utf-8"))) == set(
        TRAINING_FIGURES + EVAL_FIGURES)
    assert runs[0].evaluation.data_source == f"--data {source_dir / DEV_NAME}[1:]"
    # the wrong file (the whole of it) is refused for the per-question figures
    path, runs = write_report([run], data=str(source_dir / DEV_NAME) + "[0:3]")
    assert "not the evaluated data" in " ".join(runs[0].notes)
    assert "threshold" not in figure_uris(path.read_text(encoding="utf-8"))


def test_question_words_and_answer_lengths() -> None:
    assert question_word("In what year did it end?") == "what"
    assert question_word("Whose army won?") == "who"
    assert question_word("How many were there?") == "how"
    assert question_word("Name the river.") == "other"
    assert answer_length_bucket([]) == "no answer"
    assert [answer_length_bucket([t]) for t in ("1066", "the Normans", "a b c d e",
                                                      " ".join("x" * 12))] == \
        ["1", "2", "4-5", "11+"]
    counts = breakdown({"a": 1.0, "b": 0.5, "c": 0.0},
                              {"a": "what", "b": "what", "c": "why"}, QUESTION_WORDS)
    assert counts.labels == ("what", "why")
    assert counts.f1 == {"what": 75.0, "why": 0.0} and counts.count == {"what": 2, "why": 1}


def _edit_json(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# (a fault in one run file, the note it gets on the page)
BROKEN_FILES = {
    "train_results.json is a list": (
        lambda run: (run / "train_results.json").write_text("[1, 2]"),
        "train_results.json: a JSON list where an object belongs; left out"),
    "squadft_config.json is a list": (
        lambda run: (run / "squadft_config.json").write_text('["dev_file"]'),
        "squadft_config.json: a JSON list where an object belongs; left out"),
    "squadft_inference.json is a list": (
        lambda run: (run / "final" / "squadft_inference.json").write_text("[{}]"),
        "final/squadft_inference.json: a JSON list where an object belongs; left out"),
    "calibration scores are a list": (
        lambda run: _edit_json(run / "final" / "squadft_inference.json",
                               lambda d: d["calibration"].update(scores=[61.0, 64.5])),
        "final/squadft_inference.json: its calibration scores are a JSON list where an "
        "object belongs; left out"),
    "calibration is a list": (
        lambda run: _edit_json(run / "final" / "squadft_inference.json",
                               lambda d: d.update(calibration=[0.37])),
        "final/squadft_inference.json: its calibration is a JSON list where an object "
        "belongs; left out"),
    "eval_results.json is a list": (
        lambda run: (run / "eval_results.json").write_text("[]"),
        "eval_results.json: a JSON list where an object belongs; left out"),
    "a NaN step in metrics.jsonl": (
        lambda run: open(run / "metrics.jsonl", "a").write('{"step": NaN, "loss": 1.0}\n'),
        "1 unreadable line(s) of metrics.jsonl left out (first: line 22)"),
    "an infinite step in metrics.jsonl": (
        lambda run: open(run / "metrics.jsonl", "a").write('{"step": Infinity, "loss": 1}\n'),
        "1 unreadable line(s) of metrics.jsonl left out (first: line 22)"),
    "a NaN best_f1_thresh": (
        lambda run: _edit_json(run / "eval_results.json",
                               lambda d: d.update(best_f1_thresh=math.nan)),
        "eval_results.json: best_f1_thresh is nan, not a probability from 0 to 1; no oracle "
        "threshold"),
    "a NaN null_threshold": (
        lambda run: _edit_json(run / "eval_results.json",
                               lambda d: d.update(null_threshold="nan")),
        "eval_results.json: null_threshold is 'nan', not a number; no threshold in effect"),
}


@pytest.mark.parametrize("fault", list(BROKEN_FILES))
def test_a_structurally_wrong_run_file_becomes_a_note(fault: str, tmp_path: Path,
                                                      evaluated_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    (run / "report.html").unlink(missing_ok=True)
    damage, note = BROKEN_FILES[fault]
    damage(run)
    path, runs = write_report([run])
    page = path.read_text(encoding="utf-8")
    assert note in runs[0].notes
    assert f'<div class="note">{html.escape(note)}</div>' in page
    # the rest of the page is still drawn
    assert set(TRAINING_FIGURES) <= set(figure_uris(page))
    assert '<h2 id="metrics">' in page and "</body></html>" in page


def test_a_report_on_broken_run_files_exits_0_with_notes(tmp_path: Path,
                                                         evaluated_run: Path) -> None:
    """Six of the faults in one run, in a real `squadft report` process."""
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    together = ("train_results.json is a list", "squadft_config.json is a list",
                "calibration scores are a list", "a NaN best_f1_thresh",
                "a NaN step in metrics.jsonl", "an infinite step in metrics.jsonl")
    for fault in together:
        BROKEN_FILES[fault][0](run)
    out = tmp_path / "report.html"
    proc = subprocess.run([sys.executable, "-m", "squadft", "report", str(run), "--output",
                           str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    page = out.read_text(encoding="utf-8")
    notes = [BROKEN_FILES[fault][1] for fault in together[:4]]
    notes.append("2 unreadable line(s) of metrics.jsonl left out (first: line 22)")
    for note in notes:
        assert f"squadft: run: {note}" in proc.stderr.splitlines()
        assert f'<div class="note">{html.escape(note)}</div>' in page


def test_held_out_lines_are_their_own_series_and_keep_the_training_record(tmp_path: Path):
    from squadft.report.runs import read_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5},
             {"step": 2, "heldout": {"f1": 41.0, "always_no_answer_f1": 50.0}},
             {"step": 3, "loss": 2.0}, {"step": 3, "heldout": {"f1": 44.0}},
             {"step": 3, "eval": {"f1": 40.0}}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    log = read_metrics(path)
    steps, losses = log.series("loss")
    assert list(steps) == [1, 2, 3] and list(losses) == [3.0, 2.5, 2.0]
    steps, f1 = log.held_out_series("f1")
    assert list(steps) == [2, 3] and list(f1) == [41.0, 44.0]
    assert len(log.evals) == 1 and not log.bad_lines
