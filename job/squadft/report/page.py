"""The HTML page and `write_report`, the entry point of `squadft report`. The page has no
external reference (no network, no CSS or JS file), so it reads the same after `aws s3 cp` to a
laptop. Every text from the data is HTML-escaped."""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from squadft.console import say
from squadft.errors import ConfigError
from squadft.io import atomic_write_text
from squadft.report import figures, tables
from squadft.report.runs import Run, is_number, load_runs
from squadft.report.sweeps import Sweep, is_sweep, load_sweep, sweep_html

REPORT_FILE = "report.html"
DEFAULT_ERRORS = 25

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1180px;color:#1d1d1f;line-height:1.4;padding:0 12px}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;
padding-bottom:.2em}.muted{color:#666}.note{background:#fff6d6;border-left:4px solid #e0b000;
padding:6px 10px;margin:6px 0}table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
figure{margin:0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}table.errors td{max-width:360px;word-wrap:break-word}
code{background:#f4f4f6;padding:0 3px}tr.chosen td{background:#e6f4e6;font-weight:600}
"""
_THRESHOLD_CAPTION = (
    "Each question is answered with its best span when null score - best span score is at most "
    "the threshold, else with \"\".")
# what each marker of `figures.threshold_marks` is, as the caption says it
_MARKERS = {
    "in effect": "Dot: the threshold in effect (its values are eval_results.json's exact and "
                 "f1).",
    "oracle": "Star: the official oracle best_f1 (threshold tuned on these questions, "
              "sweeping predictions.json, which already answers \"\" above the threshold in "
              "effect); at the edge of the plot when it answers nothing (or everything).",
    "maximum": "Triangle: the curve's own maximum where it is higher than the star (also "
               "tuned on these questions).",
}
_ANSWERABILITY_CAPTION = (
    "HasAns: questions with an answer; NoAns: unanswerable ones. \"Always no answer\" scores "
    "the unanswerable share overall, 0 on HasAns, 100 on NoAns.")
_NO_ANSWER = '<span class="muted">(no answer)</span>'


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    return str(value)


def _figure_html(fig_id: str, title: str, fig: Any, caption: str = "") -> str:
    uri = figures.png_data_uri(fig)
    return (f'<figure id="fig-{esc(fig_id)}"><img alt="{esc(title)}" src="{uri}">'
            + (f"<figcaption>{esc(caption)}</figcaption>" if caption else "") + "</figure>")


_NUMBER = r"[-+]?(?:\d[\d.]*(?:e[-+]?\d+)?|inf)"


def _numeric_text(text: str) -> bool:
    """A number, or two joined by " / " (right-aligned in tables)."""
    return re.fullmatch(f"{_NUMBER}(?: / {_NUMBER})?", text) is not None


def _table(header: Sequence[str], rows: Iterable[tuple[str, Sequence[str]]],
           css_class: str = "") -> str:
    out = [f'<table class="{esc(css_class)}">' if css_class else "<table>", "<tr>",
           *(f"<th>{esc(h)}</th>" for h in header), "</tr>"]
    for name, values in rows:
        out.append(f"<tr><th>{esc(name)}</th>" + "".join(
            f'<td class="num">{esc(v)}</td>' if _numeric_text(v) else f"<td>{esc(v)}</td>"
            for v in values) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _result(run: Run, key: str, digits: int = 2) -> str:
    return "–" if run.evaluation is None else _fmt(run.evaluation.results.get(key), digits)


def _train_result(run: Run, key: str, digits: int = 2) -> str:
    results = run.train_results or {}
    return _fmt(results[key], digits) if key in results else "–"


def _last_logged(run: Run, key: str) -> str:
    return "–" if run.log is None or not run.log.steps else _fmt(run.log.steps[-1].get(key), 4)


def _calibration(run: Run, key: str) -> str:
    cal = (run.inference or {}).get("calibration")
    if not isinstance(cal, dict):
        return "–"
    return _fmt(cal.get(key) if key == "questions" else (cal.get("scores") or {}).get(key))


def _threshold_in_effect(run: Run) -> str:
    if run.evaluation is None or "null_threshold" not in run.evaluation.results:
        return "–"
    r = run.evaluation.results
    return f"{_fmt(r['null_threshold'], 4)} ({r.get('null_threshold_kind', '?')})"


def _oracle(run: Run) -> str:
    if run.evaluation is None or "best_f1_thresh" not in run.evaluation.results:
        return "–"
    t = run.evaluation.oracle_threshold
    where = _fmt(t, 4) if t is not None and math.isfinite(t) else "answer nothing"
    return f"{where} (p = {_fmt(run.evaluation.results['best_f1_thresh'], 4)})"


def _results_pair(run: Run, first: str, second: str) -> str:
    return f"{_result(run, first)} / {_result(run, second)}"


def _interval(run: Run, key: str) -> str:
    """ci95's bounds of `key` from eval_results.json; "—" without them (one article, or an
    older run)."""
    ci = run.evaluation.results.get("ci95") if run.evaluation is not None else None
    bounds = ci.get(key) if isinstance(ci, dict) else None
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(is_number, bounds))):
        return "—"
    return f"[{bounds[0]:.2f}, {bounds[1]:.2f}] ({ci.get('articles')} articles)"


def _metrics_rows(runs: Sequence[Run]) -> list[tuple[str, list[str]]]:
    return [  # (the status is the line above the table)
        ("steps (last logged)", [_last_logged(r, "step") for r in runs]),
        ("epoch (last logged)", [_last_logged(r, "epoch") for r in runs]),
        ("loss (last logged)", [_last_logged(r, "loss") for r in runs]),
        ("train tokens/s (whole run)", [_train_result(r, "tokens_per_second", 0) for r in runs]),
        ("evaluated questions", [_result(r, "total") for r in runs]),
        ("EM", [_result(r, "exact") for r in runs]),
        ("F1", [_result(r, "f1") for r in runs]),
        ("HasAns EM / F1", [_results_pair(r, "HasAns_exact", "HasAns_f1") for r in runs]),
        ("NoAns EM / F1", [_results_pair(r, "NoAns_exact", "NoAns_f1") for r in runs]),
        ("always no answer F1", [_result(r, "always_no_answer_f1") for r in runs]),
        ("F1 95% interval (over articles)", [_interval(r, "f1") for r in runs]),
        ("F1 minus always no answer, 95% interval",
         [_interval(r, "f1_minus_no_answer") for r in runs]),
        ("null threshold in effect", [_threshold_in_effect(r) for r in runs]),
        ("oracle best EM / F1 (tuned on these questions)",
         [_results_pair(r, "best_exact", "best_f1") for r in runs]),
        ("oracle threshold", [_oracle(r) for r in runs]),
        ("calibration questions", [_calibration(r, "questions") for r in runs]),
        ("calibration F1 (held out)", [_calibration(r, "f1") for r in runs]),
    ]


_SETTINGS = ("model", "train_file", "dev_file", "max_train_samples", "max_eval_samples",
             "epochs", "max_steps", "batch_size", "grad_accum_steps", "learning_rate",
             "warmup_ratio", "max_seq_length", "doc_stride", "precision", "seed",
             "null_threshold")


def _settings_rows(runs: Sequence[Run]) -> list[tuple[str, list[str]]]:
    configs = [r.config if isinstance(r.config, dict) else {} for r in runs]
    keys = list(_SETTINGS)
    if len(runs) > 1:  # every other setting that differs between the runs
        every = sorted({k for c in configs for k in c} - set(keys))
        keys += [k for k in every if len({json.dumps(c.get(k), sort_keys=True)
                                          for c in configs}) > 1]
    values = {key: [c.get(key) for c in configs] for key in keys}
    return [(key, ["–" if v is None else str(v) for v in vs]) for key, vs in values.items()
            if key == "max_steps" or any(v is not None for v in vs)]


def _errors_html(run: Run, count: int) -> str:
    """The worst errors of both kinds: answerable questions missed or answered wrong, and
    unanswerable questions given an answer."""
    evaluation = run.evaluation
    if evaluation is None or evaluation.gold is None:
        return ""
    missed, answered = tables.worst_errors(evaluation, count)
    has_ans, no_ans = tables.answerability_counts(evaluation.gold)
    wrong = [q for q, f1 in evaluation.f1.items() if f1 < 1.0]
    wrong_has = sum(1 for q in wrong if evaluation.gold[q])
    parts = [f"<p>{len(wrong)} of {len(evaluation.gold)} questions score below F1 100 at the "
             f"threshold in effect: {wrong_has} of the {has_ans} answerable ones are missed or "
             f"answered wrong, {len(wrong) - wrong_has} of the {no_ans} unanswerable ones are "
             "given an answer. The worst of each kind follow (lowest F1, then the most "
             "confident: farthest from the threshold). The score diff is null score - best "
             "span score; above the threshold the answer is \"\".</p>"]
    for title, rows, total in (
            ("Answerable questions missed or answered wrong", missed, wrong_has),
            ("Unanswerable questions given an answer", answered, len(wrong) - wrong_has)):
        parts.append(f"<h3>{title} ({len(rows)} of {total})</h3>")
        parts.append(_errors_table(rows, evaluation.threshold) if rows else "<p>None.</p>")
    return "".join(parts)


def _errors_table(rows: Sequence[tables.ErrorRow], threshold: float | None) -> str:
    body = ['<table class="errors"><tr><th>#</th><th>question</th><th>gold</th>'
            "<th>prediction</th><th>score diff</th><th>F1</th><th>error</th></tr>"]
    for n, row in enumerate(rows, start=1):
        gold = "<br>".join(esc(a) for a in row.gold) if row.gold else _NO_ANSWER
        if row.prediction:
            prediction = esc(row.prediction)
        else:
            prediction = _NO_ANSWER
            if row.best_span:
                prediction += f'<br><span class="muted">best span: {esc(row.best_span)}</span>'
        diff = _fmt(row.diff, 3)
        if threshold is not None and math.isfinite(row.diff):
            diff += " &gt; t" if row.diff > threshold else " &le; t"
        body.append(f"<tr><td class=\"num\">{n}</td><td>{esc(row.question)}<br>"
                    f"<span class=\"muted\">{esc(row.qid)}</span></td><td>{gold}</td>"
                    f"<td>{prediction}</td><td class=\"num\">{diff}</td>"
                    f"<td class=\"num\">{100 * row.f1:.1f}</td><td>{esc(row.kind)}</td></tr>")
    body.append("</table>")
    return "".join(body)


def _thresholds_html(run: Run, several: bool) -> str:
    """The run's "F1 at other no-answer thresholds" table ("" without a threshold curve)."""
    evaluation = run.evaluation
    rows = tables.evaluation_threshold_table(evaluation) if evaluation is not None else None
    if evaluation is None or not rows:
        return ""
    has_ans, no_ans = tables.answerability_counts(evaluation.gold or {})
    title = "F1 at other no-answer thresholds" + (f": {run.label}" if several else "")
    return (f'<h3 id="thresholds-{esc(run.label)}">{esc(title)}</h3>'
            + _table(tables.THRESHOLD_HEADER, tables.threshold_rows_text(rows), "thresholds")
            + '<p class="muted">Each question is answered with its best span when null score - '
            "best span score is at most the threshold, else with \"\" (always answer: every "
            f"question gets its best span). HasAns: the {has_ans} questions with an answer; "
            f"NoAns: the {no_ans} unanswerable ones (n/a: none). The oracle is "
            "tuned on these same questions: optimistic, not a result. The other thresholds "
            "spread from the 5th to the 95th percentile of the score differences; "
            "<code>squadft report --thresholds</code> prints the table at thresholds of your "
            "choice.</p>")


def render_html(runs: Sequence[Run], *, errors: int = DEFAULT_ERRORS,
                sweep: Sweep | None = None) -> str:
    """The whole page (figures embedded); pure apart from drawing. With a sweep: its ranking
    first, then `runs`, its done trials."""
    names = ", ".join(r.label for r in runs)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    title, h1 = f"squadft report: {names}", f"squadft run report: {names}"
    if sweep is not None:
        title = h1 = f"squadft sweep report: {sweep.path.resolve().name}"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(title)}</title>", f"<style>{_CSS}</style>",
             "</head><body>", f"<h1>{esc(h1)}</h1>",
             f'<p class="muted">Written {esc(now)} by <code>squadft report</code> from '
             + ", ".join(f"<code>{esc(p)}</code>" for p in (
                 [sweep.path] if sweep is not None else [r.path for r in runs])) + ".</p>"]
    if sweep is not None:
        parts.append(sweep_html(sweep))
        if not runs:
            parts.append("<p>No trial is done yet: no run to report.</p></body></html>\n")
            return "\n".join(parts)
        parts.append('<h2 id="trials">Done trials</h2>' if sweep.rows is not None
                     else '<h2 id="trials">Trials</h2>')
    named = len(runs) > 1 or sweep is not None  # which run each line and column is
    for run in runs:
        prefix = f"{run.label}: " if named else ""
        parts.append(f"<p><b>{esc(prefix)}</b>{esc(run.status)}</p>")
        for note in run.notes:
            parts.append(f'<div class="note">{esc(prefix + note)}</div>')
    columns = [r.label for r in runs] if named else ["value"]
    parts.append('<h2 id="metrics">Metrics</h2>')
    parts.append(_table(["metric", *columns], _metrics_rows(runs), "metrics"))
    parts.append("<p class=\"muted\">EM/F1: official SQuAD 2.0 scores at the no-answer "
                 "threshold in effect (fixed before the dev questions were seen: calibrated "
                 "on held-out training articles, given, or 0). The oracle is the official "
                 "best_exact/best_f1, with the threshold tuned on the dev questions "
                 "themselves: optimistic, not a result.</p>")
    training = figures.training_figures(runs)
    parts.append('<h2 id="training">Training</h2>')
    if training:
        parts.append('<div class="grid">' + "".join(
            _figure_html(fig_id, title, fig) for fig_id, title, fig in training) + "</div>")
    else:
        parts.append("<p>No training step logged yet.</p>")
    parts += _evaluation_html(runs, errors)
    settings = _settings_rows(runs)
    if settings:
        parts.append('<h2 id="settings">Settings</h2>')
        parts.append(_table(["setting", *columns], settings, "settings"))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _evaluation_html(runs: Sequence[Run], errors: int) -> list[str]:
    """The evaluation section: figures, threshold tables, breakdowns, worst errors."""
    parts = ['<h2 id="evaluation">Evaluation</h2>']
    if not any(r.evaluation is not None for r in runs):
        return [*parts, "<p>No evaluation yet: eval_results.json is missing (the run is still "
                "training, or ran with --no-do-eval). Run <code>squadft evaluate</code>, "
                "or report again when the run has finished.</p>"]
    marked = {kind for r in runs if r.evaluation is not None
              for kind in figures.threshold_marks(r.evaluation)}
    threshold_caption = " ".join([_THRESHOLD_CAPTION, *(text for kind, text in _MARKERS.items()
                                                         if kind in marked)])
    for fig_id, title, draw, caption in (
            ("threshold", "EM and F1 against the no-answer threshold", figures.threshold_figure,
             threshold_caption),
            ("answerability", "HasAns / NoAns against always no answer",
             figures.answerability_figure, _ANSWERABILITY_CAPTION)):
        fig = draw(runs)
        if fig is not None:
            parts.append(_figure_html(fig_id, title, fig, caption))
    several = len(runs) > 1
    parts += [table for table in (_thresholds_html(run, several) for run in runs) if table]
    for which, title in (("word", "F1 by question word"),
                         ("length", "F1 by gold answer length")):
        fig = figures.breakdown_figure(runs, which)
        if fig is not None:
            parts.append(_figure_html(f"by-{which}", title, fig))
    if not any(r.evaluation is not None and r.evaluation.gold is not None for r in runs):
        parts.append("<p>The per-question figures need the dev data (see the notes "
                     "above; pass <code>--data PATH</code>).</p>")
    for run in runs:
        table = _errors_html(run, errors)
        if table:
            title = "Worst errors" + (f": {run.label}" if several else "")
            parts.append(f"<h2 id=\"errors-{esc(run.label)}\">{esc(title)}</h2>{table}")
    return parts


def write_report(run_dirs: Sequence[str | Path], *, output: str | Path | None = None,
                 data: str | None = None, errors: int = DEFAULT_ERRORS
                 ) -> tuple[Path, list[Run]]:
    """Read the runs (a sweep directory alone: its done trials), draw, write the page
    (atomically); (its path, the runs read)."""
    if errors < 0:
        raise ConfigError("--errors must be 0 or more")
    sweep = None
    if any(is_sweep(p) for p in run_dirs):
        if len(run_dirs) > 1:
            raise ConfigError(f"{next(p for p in run_dirs if is_sweep(p))} is a sweep directory "
                              "(it holds sweep.json): report it alone")
        sweep, runs = load_sweep(run_dirs[0], data=data)
        for note in sweep.notes:
            say(f"{sweep.path.resolve().name}: {note}", err=True)
    else:
        runs = load_runs(run_dirs, data=data)
    target = Path(output) if output is not None else Path(run_dirs[0]) / REPORT_FILE
    atomic_write_text(target, render_html(runs, errors=errors, sweep=sweep))
    return target, runs
