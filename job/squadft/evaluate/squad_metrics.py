"""The official SQuAD 2.0 metric (exact match and token F1), reimplemented.

Behaviour follows the official `evaluate-v2.0.py` (SQuAD-explorer) key for key:

- answers are normalised by lower-casing, dropping punctuation, dropping the articles
  a/an/the and collapsing whitespace;
- a question's score is the maximum over its gold answers; gold answers that normalise to
  nothing are ignored, and a question left without any (every unanswerable question) has the
  single gold answer "" - only an empty prediction scores on it;
- `na_probs` (probability that a question has no answer) above `na_prob_thresh` turn the
  prediction into "no answer"; `best_exact`/`best_f1` are the scores at the best such threshold
  (searched exactly as the official `find_best_thresh`).

One deliberate difference: the official script skips questions without a prediction when it
computes `exact`/`f1` (and crashes on the HasAns/NoAns breakdowns). Here a missing prediction
counts as wrong (0 for EM and F1, whatever the threshold) and every total is over all gold
questions; callers report how many were missing (see `check_predictions`). With no missing
predictions the results are identical to the official script.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass

from squadft.errors import DataError

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower-case, strip punctuation and the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def compute_exact(gold: str, prediction: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(prediction))


def compute_f1(gold: str, prediction: str) -> float:
    gold_tokens = answer_tokens(gold)
    predicted_tokens = answer_tokens(prediction)
    if not gold_tokens or not predicted_tokens:
        # "No answer" on either side: full marks only when both agree there is none.
        return float(gold_tokens == predicted_tokens)
    common = collections.Counter(gold_tokens) & collections.Counter(predicted_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class PredictionCheck:
    """How a predictions mapping lines up with the gold questions."""

    missing: tuple[str, ...]  # gold ids without a prediction (scored as wrong)
    extra: tuple[str, ...]  # predicted ids that are not gold questions (ignored)
    non_string: tuple[str, ...]  # ids whose prediction is not a string (an error)

    def warnings(self, total: int) -> list[str]:
        out = []
        if self.missing:
            out.append(
                f"{len(self.missing)} of {total} questions have no prediction and count as "
                f"wrong (first: {self.missing[0]})"
            )
        if self.extra:
            out.append(
                f"{len(self.extra)} predicted ids are not in the dataset and are ignored "
                f"(first: {self.extra[0]})"
            )
        return out


def check_predictions(
    gold: Mapping[str, list[str]], predictions: Mapping[str, object]
) -> PredictionCheck:
    missing = tuple(qid for qid in gold if qid not in predictions)
    extra = tuple(qid for qid in predictions if qid not in gold)
    non_string = tuple(
        qid for qid, text in predictions.items() if qid in gold and not isinstance(text, str)
    )
    return PredictionCheck(missing=missing, extra=extra, non_string=non_string)


def raw_scores(
    gold: Mapping[str, list[str]], predictions: Mapping[str, str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-question EM and F1 (0/1 and 0..1) for the gold questions that have a prediction."""
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    for qid, answers in gold.items():
        if qid not in predictions:
            continue
        prediction = predictions[qid]
        references = [a for a in answers if normalize_answer(a)] or [""]
        exact[qid] = float(max(compute_exact(a, prediction) for a in references))
        f1[qid] = max(compute_f1(a, prediction) for a in references)
    return exact, f1


def apply_no_answer_threshold(scores: Mapping[str, float], na_probs: Mapping[str, float],
                              has_answer: Mapping[str, bool], na_prob_thresh: float
                              ) -> dict[str, float]:
    return {qid: (float(not has_answer[qid]) if na_probs[qid] > na_prob_thresh else score)
            for qid, score in scores.items()}


def find_best_threshold(
    predictions: Mapping[str, str], scores: Mapping[str, float], na_probs: Mapping[str, float],
    has_answer: Mapping[str, bool], total: int | None = None, start_threshold: float = 0.0,
) -> tuple[float, float]:
    """(best score in percent, threshold): the official sweep over na_probs in rising order.

    Starts from "every scored question predicted unanswerable" and answers one more question
    per step; the threshold is the na_prob of the last question answered at the best step
    (`start_threshold` when answering none is best; the official script uses 0.0).
    `total` is the denominator (default: the scored questions, as in the official script).
    """
    current = sum(1 for qid in scores if not has_answer[qid])
    best, best_threshold = current, start_threshold
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best, best_threshold = current, na_probs[qid]
    denominator = len(scores) if total is None else total
    return 100.0 * best / denominator, best_threshold


def _probability(qid: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"na_prob for {qid} is a {type(value).__name__}, not a number")
    return float(value)


def _summary(exact: Mapping[str, float], f1: Mapping[str, float], qids: list[str]) -> dict:
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact.get(q, 0.0) for q in qids) / total,
        "f1": 100.0 * sum(f1.get(q, 0.0) for q in qids) / total,
        "total": total,
    }


def evaluate_predictions(
    gold: Mapping[str, list[str]], predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None, na_prob_thresh: float = 1.0,
) -> dict[str, float | int]:
    """The official SQuAD 2.0 results dict (percentages) for `predictions` against `gold`.

    gold: question id -> reference answer texts (an empty list = unanswerable).
    predictions: question id -> predicted text ("" = no answer); ids not in `gold` are
        ignored, gold ids without a prediction count as wrong.
    na_probs: question id -> probability of "no answer" for every predicted gold id; when
        given, the result also has best_exact/best_f1 and their thresholds.
    Raises DataError for a non-string prediction or na_probs lacking predicted ids.
    """
    if not gold:
        raise DataError("the dataset has no questions to score")
    check = check_predictions(gold, predictions)
    if check.non_string:
        qid = check.non_string[0]
        raise DataError(
            f"prediction for {qid} is a {type(predictions[qid]).__name__}, not a string "
            f"({len(check.non_string)} such predictions)"
        )
    scored = {qid: predictions[qid] for qid in gold if qid in predictions}
    has_answer = {qid: bool(answers) for qid, answers in gold.items()}
    if na_probs is None:
        probs: Mapping[str, float] = {qid: 0.0 for qid in scored}
    else:
        lacking = [qid for qid in scored if qid not in na_probs]
        if lacking:
            raise DataError(
                f"na_probs has no value for {len(lacking)} predicted questions "
                f"(first: {lacking[0]})"
            )
        # Keep na_probs' own order: the official sweep breaks ties between equal
        # probabilities in file order, and so must we to match it exactly.
        probs = {qid: _probability(qid, value) for qid, value in na_probs.items() if qid in scored}

    exact_raw, f1_raw = raw_scores(gold, scored)
    exact = apply_no_answer_threshold(exact_raw, probs, has_answer, na_prob_thresh)
    f1 = apply_no_answer_threshold(f1_raw, probs, has_answer, na_prob_thresh)

    all_qids = list(gold)
    results: dict[str, float | int] = dict(_summary(exact, f1, all_qids))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [qid for qid in all_qids if has_answer[qid] == wanted]
        if qids:
            results.update({f"{prefix}_{k}": v for k, v in _summary(exact, f1, qids).items()})
    if na_probs is not None:
        for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
            results[f"best_{name}"], results[f"best_{name}_thresh"] = find_best_threshold(
                scored, raw, probs, has_answer, len(all_qids))
    return results
