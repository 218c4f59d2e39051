"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot, no display), and
`png_data_uri`, which embeds them in the page as PNG data URIs."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from squadft.report.runs import BREAKDOWN_LABELS, Evaluation, Run, is_number, num

_FIGSIZE = (6.4, 3.6)
_DPI = 100
_BASELINE_COLOR = "#9a9a9a"
# (id, title, metrics.jsonl key, y label) of the training curves drawn one line per run
_LINE_FIGURES = (
    ("loss", "Training loss", "loss", "loss (mean over the logging window)"),
    ("learning-rate", "Learning rate", "lr", "learning rate"),
    ("grad-norm", "Gradient norm (before clipping)", "grad_norm", "grad norm"),
    ("gpu-memory", "Peak GPU memory", "gpu_mem_gib", "GiB"),
)


def _figure(size: tuple[float, float] = _FIGSIZE) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return FigureCanvasAgg(Figure(figsize=size, dpi=_DPI, layout="constrained")).figure


def png_data_uri(fig: Any) -> str:
    """The figure as a data:image/png;base64 URI (no Software metadata, no URL inside)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _color(i: int) -> str:
    return f"C{i % 10}"


def _plain(text: Any) -> str:
    """Text from the run as matplotlib draws it: a `$` as itself, not the start of math text
    (where "$MODEL_$LR" is a syntax error)."""
    return str(text).replace("$", r"\$")


def _legend(ax: Any, runs: Sequence[Run], **kwargs: Any) -> None:
    if len(runs) > 1:  # one run: the title says it all
        ax.legend(fontsize=8, **kwargs)


def training_figures(runs: Sequence[Run]) -> list[tuple[str, str, Any]]:
    """(id, title, matplotlib Figure) of the training curves that have data in some run: one
    line per run, overlaid."""
    logged = [(i, r) for i, r in enumerate(runs) if r.log is not None and r.log.steps]
    if not logged:
        return []
    out = []
    for fig_id, title, key, ylabel in _LINE_FIGURES:
        series = [(i, r, r.log.series(key)) for i, r in logged]  # type: ignore[union-attr]
        if not any(len(s[0]) for _, _, s in series):
            continue
        fig = _figure()
        ax = fig.add_subplot()
        for i, run, (x, y) in series:
            if len(x):
                ax.plot(x, y, color=_color(i), label=_plain(run.label),
                        marker="." if len(x) < 40 else None)
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
        _legend(ax, runs)
        out.append((fig_id, title, fig))
    figure = held_out_figure(runs)
    if figure is not None:
        out.append(("heldout", "F1 on the held-out articles during training", figure))
    # throughput: tokens/s above samples/s, one colour per run
    series = [(i, r, r.log.series("tokens_per_s"), r.log.series("samples_per_s"))  # type: ignore[union-attr]
              for i, r in logged]
    if any(len(t[0]) or len(s[0]) for _, _, t, s in series):
        fig = _figure()
        top, bottom = fig.subplots(2, 1, sharex=True)
        for i, run, (tx, ty), (sx, sy) in series:
            top.plot(tx, ty, color=_color(i), label=_plain(run.label))
            bottom.plot(sx, sy, color=_color(i), label=_plain(run.label))
        top.set(title="Throughput", ylabel="tokens/s")
        bottom.set(ylabel="samples/s", xlabel="step")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.set_ylim(bottom=0)
        _legend(top, runs)
        out.append(("throughput", "Throughput", fig))
    return out


def held_out_figure(runs: Sequence[Run]) -> Any:
    """Held-out F1 (each evaluation at its own calibrated threshold) per run, with "always no
    answer" dotted and the step chosen for final/ ringed; None when no run evaluated."""
    curves = [(i, r, r.log.held_out_series("f1")) for i, r in enumerate(runs)
              if r.log is not None and r.log.held_out]
    if not curves:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for i, run, (x, y) in curves:
        ax.plot(x, y, color=_color(i), marker=".", label=_plain(run.label))
        baseline = run.log.held_out_series("always_no_answer_f1")  # type: ignore[union-attr]
        if len(baseline[0]):
            ax.plot(*baseline, color=_color(i), linestyle=":", alpha=0.7)
        selection = (run.train_results or {}).get("selection")
        chosen = selection.get("chosen_step") if isinstance(selection, dict) else None
        if is_number(chosen) and chosen in x:
            ax.plot([chosen], [y[list(x).index(chosen)]], "o", markersize=12,
                    markerfacecolor="none", color=_color(i))
    ax.set(title="F1 on the held-out articles (dotted: always no answer)", xlabel="step",
           ylabel="F1")
    ax.grid(alpha=0.3)
    _legend(ax, runs)
    return fig


def threshold_figure(runs: Sequence[Run]) -> Any:
    """EM and F1 against the null threshold, the threshold in effect and the oracle marked."""
    curved = [(i, r, r.evaluation) for i, r in enumerate(runs)
              if r.evaluation is not None and r.evaluation.curve is not None]
    if not curved:
        return None
    several = len(curved) > 1
    fig = _figure((12.0, 4.6) if several else (9.6, 4.6))
    ax = fig.add_subplot()
    lows, highs = [], []
    for _, _, evaluation in curved:  # x: the middle 99% of the differences, the marked ones
        diffs = evaluation.curve.thresholds  # type: ignore[union-attr]
        marks = [t for t in (evaluation.threshold, evaluation.oracle_threshold)
                 if t is not None and math.isfinite(t)]
        ends = [float(np.quantile(diffs, q)) for q in (0.005, 0.995)] if len(diffs) else []
        if ends or marks:
            lows.append(min(ends[:1] + marks))
            highs.append(max(ends[1:] + marks))
    low, high = (min(lows), max(highs)) if lows else (-1.0, 1.0)
    pad = max(0.5, 0.05 * (high - low))
    low, high = low - pad, high + pad
    for i, run, evaluation in curved:
        name = f"{_plain(run.label)}: " if len(runs) > 1 else ""
        curve = evaluation.curve
        assert curve is not None
        color = _color(i)
        inside = (curve.thresholds > low) & (curve.thresholds < high)
        x = np.concatenate([[low], curve.thresholds[inside], [high]])
        for values, start, style, metric in ((curve.f1, curve.none_f1, "-", "F1"),
                                             (curve.exact, curve.none_exact, "--", "EM")):
            before = values[curve.thresholds <= low]
            first = float(before[-1]) if len(before) else start
            y = np.concatenate([[first], values[inside], [values[inside][-1] if inside.any()
                                                          else first]])
            ax.plot(x, y, drawstyle="steps-post", color=color, linestyle=style,
                    linewidth=1.6 if metric == "F1" else 1.2, label=f"{name}{metric}")
        # an infinite threshold (answer nothing / everything) inside the plot, off the axis
        _mark_thresholds(ax, evaluation, color, name, (low + pad / 2, high - pad / 2))
        if i == curved[0][0]:  # the baseline once (of the first run's questions)
            always = evaluation.results.get("always_no_answer_f1")
            if is_number(always):
                ax.axhline(always, color=_BASELINE_COLOR, linewidth=1, linestyle="-.",
                           label=f"always no answer: F1 {always:.2f}")
    ax.set(xlim=(low, high), ylim=(0, 100), ylabel="percent",
           xlabel="no-answer threshold on null score - best span score (answer \"\" above it)",
           title="EM / F1 against the no-answer threshold")
    ax.grid(alpha=0.3)
    if several:  # beside the plot: a legend per run would cover the curves
        ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=7.5, loc="lower left")
    return fig


def threshold_marks(evaluation: Evaluation) -> dict[str, tuple[float, float]]:
    """(threshold, F1) of the points marked on a run's threshold curve, by kind: "in effect"
    (dot), "oracle" (star: best_f1_thresh as a score difference and best_f1), "maximum"
    (triangle: the curve's own maximum, where it is above the oracle). A threshold may be
    infinite (answer nothing / everything)."""
    curve = evaluation.curve
    marks: dict[str, tuple[float, float]] = {}
    if curve is None:
        return marks
    if evaluation.threshold is not None:
        marks["in effect"] = (evaluation.threshold, curve.at(evaluation.threshold)[1])
    oracle, best_f1 = evaluation.oracle_threshold, evaluation.results.get("best_f1")
    if oracle is not None and is_number(best_f1):
        marks["oracle"] = (oracle, float(best_f1))
    top_f1, top_at = curve.best()
    if is_number(best_f1) and top_f1 > best_f1 + 0.005 and math.isfinite(top_at):
        marks["maximum"] = (top_at, top_f1)
    return marks


def _mark_thresholds(ax: Any, evaluation: Evaluation, color: str, name: str,
                     inner: tuple[float, float]) -> None:
    """The `threshold_marks`: dot, star and triangle, drawn within `inner` (a threshold
    outside it, such as an infinite one, at its edge)."""
    marks = threshold_marks(evaluation)

    def shown(t: float) -> float:
        return min(max(t, inner[0]), inner[1])

    if "in effect" in marks:
        threshold, f1 = marks["in effect"]
        exact = evaluation.curve.at(threshold)[0]  # type: ignore[union-attr]
        kind = _plain(evaluation.results.get("null_threshold_kind", "in effect"))
        if math.isfinite(threshold):
            ax.axvline(threshold, color=color, linestyle=":", linewidth=1.2)
        ax.plot([shown(threshold)], [f1], marker="o", color=color, markersize=7,
                label=f"{name}threshold in effect ({kind}) {threshold:.3g}: "
                      f"F1 {f1:.2f}, EM {exact:.2f}")
    if "oracle" in marks:
        oracle, best_f1 = marks["oracle"]
        where = f"{oracle:.3g}" if math.isfinite(oracle) else (
            "answer nothing" if oracle < 0 else "answer everything")
        ax.plot([shown(oracle)], [best_f1], marker="*", color=color, markersize=13,
                markeredgecolor="black", linestyle="none",
                label=f"{name}oracle (tuned on these questions) {where}: F1 {best_f1:.2f}")
    if "maximum" in marks:
        top_at, top_f1 = marks["maximum"]
        ax.plot([shown(top_at)], [top_f1], marker="^", color=color,
                markersize=8, markeredgecolor="black", linestyle="none",
                label=f"{name}curve maximum {top_at:.3g}: F1 {top_f1:.2f}")


def _grouped_bars(ax: Any, groups: Sequence[str],
                  bars: Sequence[tuple[str, Sequence[float], str]]) -> None:
    width = 0.8 / max(1, len(bars))
    x = np.arange(len(groups))
    for j, (label, values, color) in enumerate(bars):
        positions = x - 0.4 + width * (j + 0.5)
        rects = ax.bar(positions, [0 if v is None or math.isnan(v) else v for v in values],
                       width * 0.92, label=label, color=color)
        for rect, value in zip(rects, values, strict=True):
            if value is not None and not math.isnan(value):
                ax.annotate(f"{value:.1f}", (rect.get_x() + rect.get_width() / 2,
                                             rect.get_height()), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 122)  # room above the bars for a one-row legend
    ax.set_yticks(range(0, 101, 20))
    ax.grid(axis="y", alpha=0.3)


def answerability_figure(runs: Sequence[Run]) -> Any:
    """EM and F1 overall / HasAns / NoAns next to the "always no answer" baseline."""
    scored = [(i, r, r.evaluation.results) for i, r in enumerate(runs)
              if r.evaluation is not None]
    if not scored:
        return None
    fig = _figure((9.6, 3.8))
    axes = fig.subplots(1, 2, sharey=True)
    groups = ("all", "HasAns", "NoAns")
    keys = {"all": "", "HasAns": "HasAns_", "NoAns": "NoAns_"}
    results0 = scored[0][2]
    for ax, metric, title in zip(axes, ("exact", "f1"), ("Exact match", "F1"), strict=True):
        bars: list[tuple[str, Sequence[float], str]] = []
        for i, run, results in scored:
            values = [num(results.get(keys[g] + metric)) for g in groups]
            label = _plain(run.label) if len(runs) > 1 else "at the threshold in effect"
            bars.append((label, values, _color(i)))
        # EM = F1 for "always no answer" (the eval line of metrics.jsonl has only the F1)
        always = num(results0.get(f"always_no_answer_{metric}",
                                  results0.get("always_no_answer_f1")))
        bars.append(("always no answer", [always, 0.0 if "HasAns_f1" in results0 else math.nan,
                                          100.0 if "NoAns_f1" in results0 else math.nan],
                     _BASELINE_COLOR))
        ticks = [g + (f"\nn={results0[keys[g] + 'total']}" if keys[g] + "total" in results0
                      else "") for g in groups]
        _grouped_bars(ax, ticks, bars)
        ax.set_title(title)
    axes[0].set_ylabel("percent")
    # one legend above both plots, in as many columns as its labels fit (a sweep's trial
    # labels, with their settings, are long: in one row inside each plot they ran off it)
    handles, labels = axes[0].get_legend_handles_labels()
    columns = 130 // (max(len(label) for label in labels) + 6)
    fig.legend(handles, labels, fontsize=8, loc="outside upper center",
               ncol=max(1, min(len(labels), columns)))
    return fig


def breakdown_figure(runs: Sequence[Run], which: str) -> Any:
    """F1 by question word ("word") or by gold answer length ("length")."""
    parts = [(i, r, getattr(r.evaluation, "by_" + which)) for i, r in enumerate(runs)
             if r.evaluation is not None and getattr(r.evaluation, "by_" + which) is not None]
    if not parts:
        return None
    labels = [label for label in BREAKDOWN_LABELS[which]
              if any(label in b.labels for _, _, b in parts)]
    counts = [{label: b.count.get(label, 0) for label in labels} for _, _, b in parts]
    same = all(c == counts[0] for c in counts)
    ticks = [f"{label}\nn={counts[0][label]}" if same else label for label in labels]
    fig = _figure((9.6, 3.6))
    ax = fig.add_subplot()
    bars = [(_plain(run.label), [b.f1.get(label, math.nan) for label in labels], _color(i))
            for i, run, b in parts]
    _grouped_bars(ax, ticks, bars)
    what = "question word" if which == "word" else "gold answer length in words"
    ax.set(ylabel="F1 (percent)", title=f"F1 by {what} (at the threshold in effect)")
    _legend(ax, runs, loc="upper center", ncol=len(parts))
    return fig
