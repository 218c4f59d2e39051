"""The HTML page and `squadft report`: scores, worst errors, escaping, a run not
evaluated yet, the threshold table's place on the page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from squadft.cli import app
from squadft.report.figures import threshold_marks
from squadft.report.page import DEFAULT_ERRORS, render_html, write_report
from squadft.report.runs import (
    load_runs,
)
from squadft.report.tables import (
    SPREAD_COUNT,
    worst_errors,
)
from typer.testing import CliRunner

from tests.report.builders import (
    TRAINING_FIGURES,
    assert_self_contained,
    figure_uris,
    make_run,
)


def test_report_shows_the_scores_and_the_worst_errors(evaluated_run: Path,
                                                      evaluated_report: str) -> None:
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    assert f"<td class=\"num\">{results['f1']:.2f}</td>" in evaluated_report
    assert f"<td class=\"num\">{results['best_f1']:.2f} / " not in evaluated_report
    assert f"{results['best_exact']:.2f} / {results['best_f1']:.2f}" in evaluated_report
    assert "0.3700 (calibrated)" in evaluated_report
    errors = evaluated_report.split('<table class="errors">', 1)[1].split("</table>", 1)[0]
    assert errors.count("<tr>") == 1 + DEFAULT_ERRORS
    # the most confident miss (diff 12 over a threshold of 0.37, F1 0) leads
    first = errors.split("<tr>")[2]
    assert "alert(" in first and "no answer, but one was expected" in first
    assert "a confident wrong answer" in first  # its best span is shown too
    assert '<div class="note">' not in evaluated_report  # nothing went missing


def test_question_text_with_markup_is_escaped(evaluated_report: str) -> None:
    assert "<script" not in evaluated_report and "<b>ruled" not in evaluated_report
    assert ("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; Who &amp; what "
            "&lt;b&gt;ruled&lt;/b&gt;?") in evaluated_report
    assert "&lt;i&gt;&amp;amp;&lt;/i&gt;" in evaluated_report  # the gold answer, escaped


def test_run_without_evaluation_gets_curves_only(tmp_path: Path, source_dir: Path) -> None:
    run = make_run(tmp_path / "training", source_dir, evaluated=False)
    path, runs = write_report([run], output=tmp_path / "out" / "r.html")
    assert path == tmp_path / "out" / "r.html" and not (run / "report.html").exists()
    page = path.read_text(encoding="utf-8")
    assert set(figure_uris(page)) == set(TRAINING_FIGURES)
    assert "No evaluation yet" in page
    assert "no evaluation yet (eval_results.json missing): curves only" in runs[0].status
    assert "training in progress or interrupted: last logged step 100" in page
    assert_self_contained(page)


def test_report_command(tmp_path: Path, evaluated_run: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(evaluated_run), "--output", str(out),
                                 "--errors", "3"])
    assert result.exit_code == 0, result.output
    assert f"report written to {out}" in result.output
    page = out.read_text(encoding="utf-8")
    assert page.split('<table class="errors">', 1)[1].split("</table>")[0].count("<tr>") == 4
    missing = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["report", str(empty)]).exit_code == 2
    help_text = " ".join(runner.invoke(app, ["report", "--help"]).output.split())
    assert "into the first one" in help_text and "--output" in help_text


def test_report_has_the_threshold_table(evaluated_run: Path, evaluated_report: str) -> None:
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    table = evaluated_report.split('<table class="thresholds">', 1)[1].split("</table>", 1)[0]
    assert "F1 at other no-answer thresholds</h3>" in evaluated_report
    # header, in effect, oracle, six spread thresholds, always answer
    assert table.count("<tr>") == 1 + 1 + 1 + SPREAD_COUNT + 1
    assert ("<tr><th>0.37 (in effect: calibrated)</th>" + "".join(
        f'<td class="num">{results[k]:.2f}</td>'
        for k in ("exact", "f1", "HasAns_f1", "NoAns_f1")) + "</tr>") in table
    assert "(oracle: tuned on these same questions)</th><td class=\"num\">" in table
    assert table.split("<tr>")[-1].startswith("<th>always answer</th>")


def test_threshold_table_label_is_escaped(tmp_path: Path, source_dir: Path) -> None:
    first = make_run(tmp_path / "a", source_dir)
    second = make_run(tmp_path / "<b>&run", source_dir, seed=2)
    page = render_html(load_runs([first, second]))
    assert page.count('<table class="thresholds">') == 2
    assert "F1 at other no-answer thresholds: &lt;b&gt;&amp;run</h3>" in page
    assert "<b>&run" not in page


def _caption(page: str, fig_id: str) -> str:
    return page.split(f'<figure id="fig-{fig_id}">', 1)[1].split("<figcaption>", 1)[1].split(
        "</figcaption>", 1)[0]


def test_the_threshold_caption_names_only_the_markers_drawn(tmp_path: Path,
                                                            evaluated_run: Path,
                                                            evaluated_report: str) -> None:
    evaluation = load_runs([evaluated_run])[0].evaluation
    assert set(threshold_marks(evaluation)) == {"in effect", "oracle"}  # no triangle drawn
    caption = _caption(evaluated_report, "threshold")
    assert "Dot: the threshold in effect" in caption and "Star: the official oracle" in caption
    assert "riangle" not in caption
    # an oracle that answers nothing lies below the curve's maximum: the triangle is drawn
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    results = json.loads((run / "eval_results.json").read_text())
    results.update(best_f1_thresh=0.0, best_f1=results["always_no_answer_f1"])
    (run / "eval_results.json").write_text(json.dumps(results))
    assert "maximum" in threshold_marks(load_runs([run])[0].evaluation)
    assert "Triangle: the curve&#x27;s own maximum" in _caption(render_html(load_runs([run])),
                                                          "threshold")


def test_the_metrics_table_says_the_status_once_and_names_its_columns(
        tmp_path: Path, evaluated_run: Path, evaluated_report: str) -> None:
    status = load_runs([evaluated_run])[0].status
    assert evaluated_report.count(status) == 1  # the line above the table, not a row again
    assert "<tr><th>status</th>" not in evaluated_report
    assert '<table class="metrics"><tr><th>metric</th><th>value</th></tr>' in evaluated_report
    assert '<table class="settings"><tr><th>setting</th><th>value</th></tr>' in \
        evaluated_report
    assert "<th></th>" not in evaluated_report


def _errors_tables(page: str) -> list[str]:
    return [table.split("</table>", 1)[0]
            for table in page.split('<table class="errors">')[1:]]


def test_worst_errors_show_both_kinds_of_squad2_error(evaluated_run: Path,
                                                      evaluated_report: str) -> None:
    missed, answered = worst_errors(load_runs([evaluated_run])[0].evaluation, DEFAULT_ERRORS)
    assert len(missed) == len(answered) == DEFAULT_ERRORS
    assert all(row.gold for row in missed)  # answerable: missed or answered wrong
    assert {row.kind for row in answered} == {"answered an unanswerable question"}
    assert all(not row.gold and row.prediction for row in answered)
    # the most confident first: farthest below the threshold
    assert [row.diff for row in answered] == sorted(row.diff for row in answered)
    assert "Answerable questions missed or answered wrong" in evaluated_report
    assert "Unanswerable questions given an answer" in evaluated_report
    first, second = _errors_tables(evaluated_report)
    assert "no answer, but one was expected" in first
    assert "answered an unanswerable question" not in first
    assert second.count("<tr>") == 1 + DEFAULT_ERRORS
    assert second.count("answered an unanswerable question") == DEFAULT_ERRORS


def test_the_metrics_table_shows_the_intervals_over_articles(tmp_path: Path,
                                                            source_dir: Path) -> None:
    import json

    from squadft.report.page import write_report

    from tests.report.builders import make_run

    run_dir = make_run(tmp_path / "run", source_dir)
    results = json.loads((run_dir / "eval_results.json").read_text())
    results["ci95"] = {"articles": 4, "method": "bootstrap", "f1": [49.43, 57.92],
                       "f1_minus_no_answer": [0.94, 6.1]}
    (run_dir / "eval_results.json").write_text(json.dumps(results))
    page = write_report([run_dir])[0].read_text(encoding="utf-8")
    assert ("<tr><th>F1 95% interval (over articles)</th>"
            '<td>[49.43, 57.92] (4 articles)</td></tr>') in page
    assert "[0.94, 6.10] (4 articles)" in page
    results["ci95"] = {"articles": 1, "method": "none: the questions come from one article"}
    (run_dir / "eval_results.json").write_text(json.dumps(results))
    page = write_report([run_dir])[0].read_text(encoding="utf-8")
    assert "<tr><th>F1 95% interval (over articles)</th><td>—</td></tr>" in page
