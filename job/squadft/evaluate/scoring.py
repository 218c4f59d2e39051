"""Scores in the official SQuAD 2.0 way: of a model's decoded answers at a fixed no-answer
threshold (`score_postprocessed`), of prediction files (`score_files`, what `squadft score` and
evaluate-v2.0.py compute), and the lines that report them (`format_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from squadft.errors import ConfigError, DataError
from squadft.evaluate.calibration import NullThreshold
from squadft.evaluate.gold import load_gold
from squadft.evaluate.postprocess import PostprocessResult, sigmoid
from squadft.evaluate.squad_metrics import check_predictions, evaluate_predictions
from squadft.evaluate.uncertainty import format_intervals, interval_report
from squadft.io import read_json_file


def load_predictions(path: str | Path) -> dict[str, Any]:
    data = read_json_file(path, "predictions")
    if not isinstance(data, dict):
        raise DataError(f"predictions {path}: expected a JSON object {{id: answer text}}, "
                        f"got {type(data).__name__}")
    return data


def load_na_probs(path: str | Path) -> dict[str, float]:
    data = read_json_file(path, "na_probs")
    if not isinstance(data, dict):
        raise DataError(f"na_probs {path}: expected a JSON object {{id: probability}}, "
                        f"got {type(data).__name__}")
    for qid, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DataError(f"na_probs {path}: value for {qid} is not a number")
        if not math.isfinite(value):
            raise DataError(f"na_probs {path}: value for {qid} is {value} (NaN and Infinity "
                            "are not probabilities or scores)")
    return data


@dataclass
class ScoreReport:
    metrics: dict[str, float | int]
    warnings: list[str] = field(default_factory=list)


def score_files(
    predictions_path: str | Path,
    data_path: str | Path,
    *,
    na_probs_path: str | Path | None = None,
    na_prob_thresh: float = 1.0,
) -> ScoreReport:
    """What `evaluate-v2.0.py data predictions [--na-prob-file]` computes, plus warnings."""
    if math.isnan(na_prob_thresh):
        raise ConfigError("na_prob_thresh must be a number, not NaN (a NaN threshold would "
                          "make every comparison false and silently answer everything)")
    gold = load_gold(data_path)
    predictions = load_predictions(predictions_path)
    na_probs = load_na_probs(na_probs_path) if na_probs_path is not None else None
    warnings = gold.warnings()
    check = check_predictions(gold.answers, predictions)
    if check.non_string:
        qid = check.non_string[0]
        raise DataError(
            f"predictions {predictions_path}: answer for {qid} is a "
            f"{type(predictions[qid]).__name__}, not a string ({len(check.non_string)} such)"
        )
    if len(check.missing) == len(gold.answers):
        raise DataError(f"predictions {predictions_path}: no prediction matches a question "
                        f"id of {data_path}")
    warnings.extend(check.warnings(len(gold.answers)))
    metrics = evaluate_predictions(gold.answers, predictions, na_probs, na_prob_thresh)
    return ScoreReport(metrics=metrics, warnings=warnings)


def score_postprocessed(
    result: PostprocessResult,
    gold: Mapping[str, list[str]],
    threshold: NullThreshold,
    article_of: Mapping[str, Hashable] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """(metrics, predictions to write) at a threshold fixed before these questions were seen.

    Each question's answer depends on its own scores and the threshold alone, never on which
    other questions are evaluated. The official best_* keys (threshold tuned on `gold` itself)
    come from na_probs, as evaluate-v2.0.py computes them: an oracle, labelled as such.
    `article_of` (question id -> article): adds `ci95`, the scores' 95% intervals from a
    bootstrap over articles.
    """
    predictions = result.predictions_at(threshold.value)
    metrics: dict[str, Any] = dict(evaluate_predictions(
        gold, _only(predictions, gold), _only(result.na_probs(), gold)))
    metrics["null_threshold"] = threshold.value
    metrics["null_threshold_kind"] = threshold.kind
    metrics["null_threshold_source"] = threshold.source
    if threshold.calibration_overlap_with_train is not None:
        metrics["calibration_overlap_with_train"] = threshold.calibration_overlap_with_train
    metrics["no_answer_probability_threshold"] = sigmoid(threshold.value)
    share = 100.0 * sum(1 for answers in gold.values() if not answers) / len(gold)
    metrics["always_no_answer_exact"] = metrics["always_no_answer_f1"] = share
    if article_of is not None:
        metrics["ci95"] = interval_report(gold, _only(predictions, gold), article_of)
    return metrics, predictions


def _only(values: Mapping[str, Any], gold: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k in gold}


def _score_line(label: str, metrics: Mapping[str, Any]) -> str:
    parts = [f"EM {metrics['exact']:.2f}", f"F1 {metrics['f1']:.2f}"]
    for group in ("HasAns", "NoAns"):
        if group + "_exact" in metrics:
            parts.append(f"{group} EM {metrics[group + '_exact']:.2f} "
                         f"F1 {metrics[group + '_f1']:.2f} (n={metrics[group + '_total']})")
    return f"{label}: " + ", ".join(parts)


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """The scores at the threshold in effect (saying how it was chosen) first, then the
    "always no answer" baseline and the official oracle best_* (tuned on these questions)."""
    threshold = (f"null threshold {metrics['null_threshold']:.4g}, "
                 f"{metrics['null_threshold_source']}")
    lines = [_score_line(f"{metrics['total']} questions at {threshold}", metrics)]
    if "always_no_answer_f1" in metrics:
        lines.append(f"always no answer: EM {metrics['always_no_answer_exact']:.2f}, "
                     f"F1 {metrics['always_no_answer_f1']:.2f}")
    if "ci95" in metrics:
        lines.append(format_intervals(metrics["ci95"]))
    if "best_f1" in metrics:
        lines.append(
            f"oracle (threshold tuned on these same questions): best_exact "
            f"{metrics['best_exact']:.2f}, best_f1 {metrics['best_f1']:.2f} (no-answer "
            f"probability threshold {metrics['best_f1_thresh']:.4g})")
    return "\n".join(lines)
