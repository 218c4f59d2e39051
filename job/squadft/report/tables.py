"""The threshold trade-off table (EM, F1, HasAns F1 and NoAns F1 at a few no-answer thresholds;
`squadft report --thresholds` prints it in markdown) and the worst errors of a run."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from squadft.errors import ConfigError
from squadft.report.runs import Evaluation, Run, threshold_curve

ALWAYS_ANSWER = "always answer"
ORACLE_LABEL = "oracle: tuned on these same questions"
SPREAD_COUNT = 6  # thresholds between the 5th and 95th percentiles of the differences
# how eval_results.json's null_threshold_kind was chosen, as the table says it
_KIND_LABELS = {"calibrated": "calibrated", "given": "--null-threshold", "default": "0"}
THRESHOLD_HEADER = ("threshold", "EM", "F1", "HasAns F1", "NoAns F1")


@dataclass(frozen=True)
class ThresholdRow:
    """EM, F1, HasAns F1 and NoAns F1 (percent, official SQuAD 2.0 definitions) of answering
    with the best span when the null score difference is at most `threshold` (+inf: always
    answer). HasAns/NoAns are None when no question of the kind was scored."""

    threshold: float
    exact: float
    f1: float
    has_ans_f1: float | None
    no_ans_f1: float | None
    label: str = ""  # how the threshold was chosen ("" for a plain one)

    @property
    def name(self) -> str:
        """The threshold as the tables show it: "0.37 (calibrated)", "always answer"."""
        if self.threshold == math.inf:
            return ALWAYS_ANSWER if self.label in ("", ALWAYS_ANSWER) else \
                f"always answer ({self.label})"
        value = "answer nothing" if self.threshold == -math.inf else f"{self.threshold:.6g}"
        return f"{value} ({self.label})" if self.label else value


def threshold_table(gold: Mapping[str, list[str]], best_spans: Mapping[str, str],
                    null_score_diff: Mapping[str, float], thresholds: Sequence[float],
                    labels: Sequence[str] | None = None) -> list[ThresholdRow]:
    """One row per threshold, in the order given: `threshold_curve` of all the gold questions,
    of the answerable ones (HasAns: gold answers) and of the unanswerable ones (NoAns: gold
    []), each at the threshold. +inf answers every question with its best span."""
    if labels is not None and len(labels) != len(thresholds):
        raise ValueError("one label per threshold")
    whole = threshold_curve(gold, best_spans, null_score_diff)
    answerable = {q: a for q, a in gold.items() if a}
    unanswerable = {q: a for q, a in gold.items() if not a}
    has_ans, no_ans = (threshold_curve(part, best_spans, null_score_diff) if part else None
                       for part in (answerable, unanswerable))
    rows = []
    for i, t in enumerate(thresholds):
        t = float(t)
        if math.isnan(t):
            raise ValueError("a threshold is NaN")
        exact, f1 = whole.at(t)
        rows.append(ThresholdRow(
            t, exact, f1, has_ans.at(t)[1] if has_ans is not None else None,
            no_ans.at(t)[1] if no_ans is not None else None,
            labels[i] if labels is not None else ""))
    return rows


def spread_thresholds(diffs: Iterable[float], count: int = SPREAD_COUNT) -> list[float]:
    """`count` evenly spread thresholds from the 5th to the 95th percentile of the finite
    differences, rounded to 2 decimals (so that --thresholds can repeat them); [] if none."""
    finite = np.array([d for d in diffs if math.isfinite(d)], dtype=np.float64)
    if not len(finite) or count <= 0:
        return []
    low, high = np.percentile(finite, [5.0, 95.0])
    values = np.round(np.linspace(low, high, count), 2)
    return list(dict.fromkeys(float(v) + 0.0 for v in values))  # distinct, no -0.0


def threshold_in_effect_label(evaluation: Evaluation) -> str:
    """"in effect" and how it was chosen (calibrated / --null-threshold / 0)."""
    kind = evaluation.results.get("null_threshold_kind")
    how = _KIND_LABELS.get(kind, str(kind)) if isinstance(kind, str) and kind else ""
    return f"in effect: {how}" if how else "in effect"


def evaluation_threshold_table(evaluation: Evaluation, thresholds: Sequence[float] | None = None
                               ) -> list[ThresholdRow] | None:
    """A run's trade-off table (None without a threshold curve), by threshold, always answer
    last: the threshold in effect, then `thresholds`, or without them the oracle and
    `SPREAD_COUNT` thresholds spread over the differences of the scored questions."""
    if evaluation.curve is None or evaluation.gold is None:
        return None
    chosen: list[tuple[float, str]] = []
    threshold = evaluation.threshold
    if threshold is not None and not math.isnan(threshold):
        chosen.append((threshold, threshold_in_effect_label(evaluation)))
    if thresholds is None:
        oracle = evaluation.oracle_threshold
        if oracle is not None:
            chosen.append((oracle, ORACLE_LABEL))
        extra = spread_thresholds(evaluation.diffs[q] for q in evaluation.gold
                                  if q in evaluation.diffs)
    else:
        extra = list(thresholds)
    labelled = {t for t, _ in chosen}
    chosen += [(t, "") for t in dict.fromkeys(extra) if t not in labelled]
    chosen.sort(key=lambda pair: pair[0])
    chosen.append((math.inf, ALWAYS_ANSWER))
    return threshold_table(evaluation.gold, evaluation.best_spans, evaluation.diffs,
                           [t for t, _ in chosen], [label for _, label in chosen])


def parse_thresholds(text: str) -> list[float]:
    """--thresholds "-14,-12,-10,-8,0": finite numbers, comma-separated."""
    values = []
    for item in text.split(","):
        try:
            value = float(item.strip())
        except ValueError:
            raise ConfigError(f"--thresholds must be comma-separated numbers, like "
                              f"\"-14,-12,-10,-8,0\" (got {text!r})") from None
        if not math.isfinite(value):
            raise ConfigError(f"--thresholds must be finite numbers (got {item.strip()!r}); "
                              "always answer is listed anyway")
        values.append(value)
    return values


def threshold_rows_text(rows: Sequence[ThresholdRow]) -> list[tuple[str, list[str]]]:
    """(threshold, [EM, F1, HasAns F1, NoAns F1]) as the tables print them."""
    return [(row.name, ["n/a" if v is None else f"{v:.2f}"
                        for v in (row.exact, row.f1, row.has_ans_f1, row.no_ans_f1)])
            for row in rows]


def threshold_markdown(rows: Sequence[ThresholdRow]) -> str:
    """The table in markdown: threshold | EM | F1 | HasAns F1 | NoAns F1."""
    lines = ["| " + " | ".join(THRESHOLD_HEADER) + " |",
             "|" + "---|" * len(THRESHOLD_HEADER)]
    for name, values in threshold_rows_text(rows):
        cells = [c.replace("|", "\\|") for c in (name, *values)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def answerability_counts(gold: Mapping[str, list[str]]) -> tuple[int, int]:
    """(HasAns, NoAns): how many gold questions have answers, and how many have none."""
    has_ans = sum(1 for answers in gold.values() if answers)
    return has_ans, len(gold) - has_ans


def run_threshold_markdown(run: Run, thresholds: Sequence[float]) -> str | None:
    """`squadft report --thresholds`: a heading line and the run's table at `thresholds`,
    the threshold in effect and always answer; None when the run has no threshold curve."""
    if run.evaluation is None:
        return None
    rows = evaluation_threshold_table(run.evaluation, thresholds)
    if rows is None:
        return None
    gold = run.evaluation.gold or {}
    has_ans, no_ans = answerability_counts(gold)
    head = (f"{run.label}: EM/F1 against the no-answer threshold on null score - best span "
            f"score ({len(gold)} questions: {has_ans} HasAns, {no_ans} NoAns)")
    return head + "\n\n" + threshold_markdown(rows) + "\n"


@dataclass(frozen=True)
class ErrorRow:
    qid: str
    question: str
    gold: list[str]
    prediction: str
    best_span: str
    diff: float
    f1: float
    kind: str


def worst_errors(evaluation: Evaluation, count: int) -> tuple[list[ErrorRow], list[ErrorRow]]:
    """The two kinds of SQuAD 2.0 error at the threshold in effect: (answerable questions
    missed or answered wrong, unanswerable questions given an answer), the `count` worst of
    each: lowest F1, then the most confident (farthest from the threshold)."""
    if evaluation.gold is None or evaluation.predictions is None or count <= 0:
        return [], []
    threshold = evaluation.threshold or 0.0
    rows = []
    for qid, answers in evaluation.gold.items():
        f1 = evaluation.f1.get(qid, 0.0)
        if f1 >= 1.0:
            continue
        prediction = evaluation.predictions.get(qid)
        diff = evaluation.diffs.get(qid, math.nan)
        if prediction is None:
            kind = "no prediction"
        elif not answers:
            kind = "answered an unanswerable question"
        elif prediction == "":
            kind = "no answer, but one was expected"
        else:
            kind = "wrong span" if f1 == 0 else "partial span"
        rows.append(ErrorRow(qid, evaluation.questions.get(qid, ""), list(dict.fromkeys(answers)),
                             prediction if prediction is not None else "",
                             evaluation.best_spans.get(qid, ""), diff, f1, kind))
    rows.sort(key=lambda r: (r.f1, -(abs(r.diff - threshold) if math.isfinite(r.diff)
                                     else math.inf), r.qid))
    return [r for r in rows if r.gold][:count], [r for r in rows if not r.gold][:count]
