"""The report's figures: PNG data URIs, one line per run in the overlaid curves."""

from __future__ import annotations

import json
import re
from pathlib import Path

from squadft.report.figures import threshold_figure, training_figures
from squadft.report.page import write_report

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
    assert header == "<th></th><th>base</th><th>higher-lr</th>"
    f1_row = re.search(r"<tr><th>F1</th>(.*?)</tr>", page).group(1)
    scores = [json.loads((d / "eval_results.json").read_text())["f1"] for d in (first, second)]
    assert scores[0] != scores[1]
    assert f1_row == "".join(f'<td class="num">{s:.2f}</td>' for s in scores)
    # settings that differ are listed
    assert re.search(r"<tr><th>learning_rate</th><td[^>]*>0.0003</td><td[^>]*>0.001</td>",
                     page)
