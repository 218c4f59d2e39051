"""The report's figures: PNG data URIs, one line per run in the overlaid curves."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from squadft.report.figures import answerability_figure, threshold_figure, training_figures
from squadft.report.page import write_report
from squadft.report.runs import load_runs

from tests.report.builders import (
    EVAL_FIGURES,
    TRAINING_FIGURES,
    assert_self_contained,
    decode_png,
    figure_uris,
    make_run,
)


def test_report_embeds_every_figure_as_a_png_data_uri(evaluated_report: str) -> None:
    uris = figure_uris(evaluated_report)
    assert set(uris) == set(TRAINING_FIGURES + EVAL_FIGURES)
    for uri in uris.values():
        image = decode_png(uri)
        assert image.format == "PNG" and image.width >= 400 and image.height >= 250
        # a drawn figure, not a blank canvas
        assert sum(1 for count in image.convert("L").histogram() if count) > 10
    assert_self_contained(evaluated_report)


def test_two_runs_are_overlaid_and_side_by_side(tmp_path: Path, source_dir: Path) -> None:
    first = make_run(tmp_path / "base", source_dir, seed=1)
    second = make_run(tmp_path / "higher-lr", source_dir, seed=2, lr=1e-3, steps=80)
    path, runs = write_report([first, second])
    assert path == first / "report.html"
    page = path.read_text(encoding="utf-8")
    assert set(figure_uris(page)) == set(TRAINING_FIGURES + EVAL_FIGURES)
    assert_self_contained(page)
    # one figure per curve, one line per run in it, the legend naming the runs
    figures = {fig_id: fig for fig_id, _, fig in training_figures(runs)}
    assert set(figures) == set(TRAINING_FIGURES)
    loss = figures["loss"].axes[0]
    assert [line.get_label() for line in loss.get_lines()] == ["base", "higher-lr"]
    assert [len(line.get_xdata()) for line in loss.get_lines()] == [20, 16]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["base", "higher-lr"]
    curve = threshold_figure(runs).axes[0]
    labels = [line.get_label() for line in curve.get_lines()]
    assert {"base: F1", "base: EM", "higher-lr: F1", "higher-lr: EM"} <= set(labels)
    # the metrics table has a column per run with each run's own F1
    header = re.search(r'<table class="metrics"><tr>(.*?)</tr>', page).group(1)
    assert header == "<th>metric</th><th>base</th><th>higher-lr</th>"
    f1_row = re.search(r"<tr><th>F1</th>(.*?)</tr>", page).group(1)
    scores = [json.loads((d / "eval_results.json").read_text())["f1"] for d in (first, second)]
    assert scores[0] != scores[1]
    assert f1_row == "".join(f'<td class="num">{s:.2f}</td>' for s in scores)
    # settings that differ are listed
    assert re.search(r"<tr><th>learning_rate</th><td[^>]*>0.0003</td><td[^>]*>0.001</td>",
                     page)


def _set_results(run: Path, **values: object) -> None:
    path = run / "eval_results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def test_a_dollar_in_a_label_is_drawn_as_it_is(tmp_path: Path, evaluated_run: Path) -> None:
    # matplotlib reads $...$ as math text: "$MODEL_$LR" was a ValueError (a "_" at the end)
    first = tmp_path / "m" / "$MODEL_$LR"
    second = tmp_path / "m" / "$OTHER"
    for run in (first, second):
        shutil.copytree(evaluated_run, run)
    _set_results(second, null_threshold_kind="$given_$")
    path, runs = write_report([first, second], output=tmp_path / "r.html")
    page = path.read_text(encoding="utf-8")
    assert set(figure_uris(page)) == set(TRAINING_FIGURES + EVAL_FIGURES)
    assert "<th>$MODEL_$LR</th>" in page
    shown = []
    for fig in [fig for _, _, fig in training_figures(runs)] + [threshold_figure(runs)]:
        for text in fig.axes[0].get_legend().get_texts():
            plain, math_text = text._preprocess_math(text.get_text())
            assert not math_text
            shown.append(plain)
    assert "$MODEL_$LR" in shown
    assert any(t.startswith("$OTHER: threshold in effect ($given_$)") for t in shown)


def _marker_inside(ax: object, line: object) -> bool:
    """The whole marker of a one-point line lies inside the axes."""
    fig = ax.figure  # type: ignore[attr-defined]
    fig.canvas.draw()
    x, y = ax.transData.transform((line.get_xdata()[0], line.get_ydata()[0]))  # type: ignore
    radius = line.get_markersize() * fig.dpi / 72 / 2  # type: ignore[attr-defined]
    box = ax.bbox  # type: ignore[attr-defined]
    return (box.x0 + radius <= x <= box.x1 - radius) and (box.y0 + radius <= y <= box.y1 - radius)


def test_markers_at_an_infinite_threshold_sit_inside_the_plot(tmp_path: Path,
                                                             evaluated_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    results = json.loads((run / "eval_results.json").read_text())
    # the oracle answers nothing (p = 0), the threshold in effect answers everything
    _set_results(run, best_f1_thresh=0.0, best_f1=results["always_no_answer_f1"],
                 null_threshold="inf")
    ax = threshold_figure(load_runs([run])).axes[0]
    marked = {line.get_marker(): line for line in ax.get_lines() if line.get_marker() in "*o"}
    assert set(marked) == {"*", "o"}
    star, dot = marked["*"], marked["o"]
    assert "answer nothing" in star.get_label() and "inf" in dot.get_label()
    assert _marker_inside(ax, star) and _marker_inside(ax, dot)
    assert star.get_clip_on() and dot.get_clip_on()


def test_the_held_out_curve_rings_the_step_chosen_for_final(tmp_path: Path,
                                                            source_dir: Path) -> None:
    from squadft.report.figures import held_out_figure

    run_dir = make_run(tmp_path / "selected", source_dir, steps=30)
    (_, runs) = write_report([run_dir])
    assert held_out_figure(runs) is None  # no held-out evaluations logged: no figure
    with open(run_dir / "metrics.jsonl", "a") as handle:
        for step, f1 in ((10, 40.0), (20, 55.0), (30, 50.0)):
            handle.write(json.dumps({"step": step, "heldout": {
                "f1": f1, "always_no_answer_f1": 46.7}}) + "\n")
    results = json.loads((run_dir / "train_results.json").read_text())
    results["selection"] = {"chosen_step": 20, "last_step": 30}
    (run_dir / "train_results.json").write_text(json.dumps(results))
    path, runs = write_report([run_dir])
    assert "heldout" in figure_uris(path.read_text(encoding="utf-8"))
    lines = held_out_figure(runs).axes[0].get_lines()
    curve, baseline, ring = lines
    assert list(curve.get_xdata()) == [10, 20, 30] and list(curve.get_ydata()) == [40, 55, 50]
    assert baseline.get_linestyle() == ":" and set(baseline.get_ydata()) == {46.7}
    assert (list(ring.get_xdata()), list(ring.get_ydata())) == ([20], [55.0])


def test_long_labels_keep_the_answerability_legend_inside_the_figure(evaluated_run: Path
                                                                      ) -> None:
    # a sweep labels its trials with their settings: in one row inside each plot, three such
    # labels ran off the figure
    runs = load_runs([evaluated_run, evaluated_run, evaluated_run])
    for n, run in enumerate(runs):
        run.label = f"trial-00{n} learning_rate={n + 1}e-05 model=/models/distilbert-base-uncased"
    fig = answerability_figure(runs)
    fig.canvas.draw()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends and all(fig.bbox.contains(*corner) for legend in legends
                           for corner in legend.get_window_extent().corners())
    labels = [t.get_text() for legend in legends for t in legend.get_texts()]
    assert labels == [run.label for run in runs] + ["always no answer"]
