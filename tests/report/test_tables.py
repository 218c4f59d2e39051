"""The threshold trade-off table (on the page and `squadft report --thresholds`)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from squadft.cli import app
from squadft.errors import ConfigError
from squadft.evaluate.gold import load_gold
from squadft.filespec import parse_file_spec
from squadft.report.runs import (
    Evaluation,
    load_run,
)
from squadft.report.tables import (
    ALWAYS_ANSWER,
    ORACLE_LABEL,
    SPREAD_COUNT,
    evaluation_threshold_table,
    parse_thresholds,
    spread_thresholds,
    threshold_in_effect_label,
    threshold_markdown,
    threshold_table,
)
from typer.testing import CliRunner

from tests.report.builders import (
    DEV_FILE,
    DEV_NAME,
    THRESHOLD,
    make_run,
    official_at,
    synthetic_result,
)


def test_threshold_table_of_a_run_is_the_official_score_at_each_row(evaluated_run: Path,
                                                                    source_dir: Path) -> None:
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    evaluation = load_run(evaluated_run).evaluation
    rows = evaluation_threshold_table(evaluation)
    assert rows is not None
    in_effect = [r for r in rows if r.label == "in effect: calibrated"]
    assert len(in_effect) == 1 and in_effect[0].threshold == THRESHOLD
    # at the threshold in effect: eval_results.json, overall and HasAns / NoAns
    assert in_effect[0].exact == pytest.approx(results["exact"], abs=1e-9)
    assert in_effect[0].f1 == pytest.approx(results["f1"], abs=1e-9)
    assert in_effect[0].has_ans_f1 == pytest.approx(results["HasAns_f1"], abs=1e-9)
    assert in_effect[0].no_ans_f1 == pytest.approx(results["NoAns_f1"], abs=1e-9)
    oracle = [r for r in rows if r.label == ORACLE_LABEL]
    assert len(oracle) == 1 and oracle[0].f1 == pytest.approx(results["best_f1"], abs=1e-6)
    # six thresholds spread between the 5th and 95th percentiles, sorted, always answer last
    gold = load_gold(source_dir / DEV_NAME, parse_file_spec(DEV_FILE)).answers
    result = synthetic_result(source_dir, seed=1)  # what make_run wrote
    finite = [d for q, d in result.null_score_diff.items() if q in gold and math.isfinite(d)]
    low, high = (float(v) for v in np.percentile(finite, [5, 95]))
    spread = [r.threshold for r in rows if r.label == ""]
    assert len(spread) == SPREAD_COUNT
    assert spread[0] == pytest.approx(low, abs=0.005)
    assert spread[-1] == pytest.approx(high, abs=0.005)
    assert [r.threshold for r in rows[:-1]] == sorted(r.threshold for r in rows[:-1])
    assert rows[-1].threshold == math.inf and rows[-1].name == "always answer"
    # every row, always answer included, is the official metric of the predictions there
    for row in rows:
        assert (row.exact, row.f1, row.has_ans_f1, row.no_ans_f1) == pytest.approx(
            official_at(gold, result, row.threshold), abs=1e-9), row

HAND_GOLD = {"a": ["Paris"], "b": ["Rome"], "c": [], "d": []}

HAND_SPANS = {"a": "Paris", "b": "Rome city", "c": "x", "d": "y"}

HAND_DIFFS = {"a": -2.0, "b": 1.0, "c": -1.0, "d": 3.0}


def test_threshold_table_by_hand() -> None:
    rows = threshold_table(HAND_GOLD, HAND_SPANS, HAND_DIFFS,
                                  [-3.0, -2.0, 0.0, 2.0, math.inf],
                                  ["", "x", "", "", ALWAYS_ANSWER])
    got = [(r.threshold, r.exact, r.f1, r.has_ans_f1, r.no_ans_f1) for r in rows]
    # b's span "Rome city" against "Rome": precision 1/2, recall 1, F1 2/3, EM 0
    expected = [
        (-3.0, 50.0, 50.0, 0.0, 100.0),  # nothing answered: c, d right
        (-2.0, 75.0, 75.0, 50.0, 100.0),  # a answered, at its own difference
        (0.0, 50.0, 50.0, 50.0, 50.0),  # and c: wrong
        (2.0, 50.0, 100 * (2 + 2 / 3) / 4, 100 * (1 + 2 / 3) / 2, 50.0),  # and b: partly
        (math.inf, 25.0, 100 * (1 + 2 / 3) / 4, 100 * (1 + 2 / 3) / 2, 0.0),  # and d
    ]
    assert len(got) == len(expected)
    for row, want in zip(got, expected, strict=True):
        assert row == pytest.approx(want), row
    assert [r.name for r in rows] == ["-3", "-2 (x)", "0", "2", "always answer"]
    assert threshold_markdown(rows[2:]) == (
        "| threshold | EM | F1 | HasAns F1 | NoAns F1 |\n"
        "|---|---|---|---|---|\n"
        "| 0 | 50.00 | 50.00 | 50.00 | 50.00 |\n"
        "| 2 | 50.00 | 66.67 | 83.33 | 50.00 |\n"
        "| always answer | 25.00 | 41.67 | 83.33 | 0.00 |")


def test_threshold_table_with_an_empty_subset_says_n_a() -> None:
    answerable = {q: a for q, a in HAND_GOLD.items() if a}
    unanswerable = {q: a for q, a in HAND_GOLD.items() if not a}
    only_has = threshold_table(answerable, HAND_SPANS, HAND_DIFFS, [2.0])
    only_no = threshold_table(unanswerable, HAND_SPANS, HAND_DIFFS, [0.0])
    assert only_has[0].no_ans_f1 is None
    assert only_has[0].has_ans_f1 == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert only_has[0].f1 == only_has[0].has_ans_f1
    assert only_no[0].has_ans_f1 is None and only_no[0].no_ans_f1 == pytest.approx(50.0)
    assert threshold_markdown(only_no).endswith("| 0 | 50.00 | 50.00 | n/a | 50.00 |")


def test_spread_and_parsed_thresholds() -> None:
    spread = spread_thresholds([float(v) for v in range(101)] + [math.inf, -math.inf])
    assert spread == [5.0, 23.0, 41.0, 59.0, 77.0, 95.0]
    assert spread_thresholds([math.inf]) == []
    assert parse_thresholds("-14, -12,-10.5,0") == [-14.0, -12.0, -10.5, 0.0]
    for bad in ("", "-14,,0", "-14;-12", "a,b", "nan", "1,inf"):
        with pytest.raises(ConfigError, match="--thresholds"):
            parse_thresholds(bad)


def test_threshold_in_effect_says_how_it_was_chosen() -> None:
    def label(kind: str | None) -> str:
        results = {"null_threshold": 0.0} | ({} if kind is None else
                                             {"null_threshold_kind": kind})
        return threshold_in_effect_label(Evaluation(results, from_file=True))

    assert [label(k) for k in ("calibrated", "given", "default", None)] == [
        "in effect: calibrated", "in effect: --null-threshold", "in effect: 0", "in effect"]


def test_report_command_prints_the_threshold_table(tmp_path: Path, evaluated_run: Path,
                                                    source_dir: Path) -> None:
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    gold = load_gold(source_dir / DEV_NAME, parse_file_spec(DEV_FILE)).answers
    result = synthetic_result(source_dir, seed=1)
    out = tmp_path / "r.html"
    run = CliRunner().invoke(app, ["report", str(evaluated_run), "--output", str(out),
                                   "--thresholds", "-2,0,1.5"])
    assert run.exit_code == 0, run.output
    lines = [line for line in run.stdout.splitlines() if line.startswith("|")]
    assert lines[:2] == ["| threshold | EM | F1 | HasAns F1 | NoAns F1 |",
                         "|---|---|---|---|---|"]

    def row(name: str, values: tuple[float, ...]) -> str:
        return "| " + " | ".join([name, *(f"{v:.2f}" for v in values)]) + " |"

    assert lines[2:] == [
        row("-2", official_at(gold, result, -2.0)),
        row("0", official_at(gold, result, 0.0)),
        row("0.37 (in effect: calibrated)",
            tuple(results[k] for k in ("exact", "f1", "HasAns_f1", "NoAns_f1"))),
        row("1.5", official_at(gold, result, 1.5)),
        row("always answer", official_at(gold, result, math.inf)),
    ]
    assert f"{evaluated_run.name}: EM/F1 against the no-answer threshold" in run.stdout


def test_report_command_refuses_bad_thresholds(tmp_path: Path, evaluated_run: Path) -> None:
    out = tmp_path / "r.html"
    proc = subprocess.run(
        [sys.executable, "-m", "squadft", "report", str(evaluated_run), "--output", str(out),
         "--thresholds", "-14,x,0"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "squadft: error: --thresholds must be comma-separated numbers, like "
        "\"-14,-12,-10,-8,0\" (got '-14,x,0')"]
    assert not out.exists()  # refused before anything was read or written


def test_report_command_thresholds_without_a_curve(tmp_path: Path, source_dir: Path) -> None:
    run = make_run(tmp_path / "training", source_dir, evaluated=False)
    result = CliRunner().invoke(app, ["report", str(run), "--thresholds", "0"])
    assert result.exit_code == 3
    assert "training: no threshold curve, so no --thresholds table" in result.stderr
    assert "squadft: error: --thresholds: no run has a threshold curve" in result.stderr
    assert "| threshold |" not in result.stdout
