"""Start/end logits of every window -> answer text per question, vectorised over all windows.

For each window the `n_best` highest context start logits and the `n_best` highest context end
logits are paired ([windows, n_best, n_best] arrays); a pair is a valid span when start <= end,
both tokens belong to the context and the span has at most `max_answer_length` tokens. The
best `n_best` valid spans of each window are pooled per question, spans that several
overlapping windows share are kept once (highest score), and the `n_best` best remain.

The null ("no answer") score of a question is the minimum over its windows of
start_logit[CLS] + end_logit[CLS]; `null_score_diff` = null score - best span score, and the
prediction is "" when `null_score_diff > null_threshold`.

Nothing here loops in Python over windows or span pairs; the only per-question Python work is
slicing the answer text out of the context and building the n-best records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from squadft.evaluate.squad_metrics import evaluate_predictions, find_best_threshold, raw_scores


class _Example(Protocol):
    id: str
    context: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """One n-best entry; the null answer has text "" and answer_start -1."""

    text: str
    score: float  # start_logit + end_logit
    start_logit: float
    end_logit: float
    answer_start: int  # character offset into the context, -1 for the null answer
    probability: float  # softmax over the question's n-best scores, null answer included

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "probability": self.probability,
            "start_logit": self.start_logit,
            "end_logit": self.end_logit,
            "score": self.score,
            "answer_start": self.answer_start,
        }


@dataclass
class PostprocessResult:
    """Per question id: the prediction, the best span and the null score difference."""

    predictions: dict[str, str]  # "" where null_score_diff > null_threshold
    best_spans: dict[str, str]  # best non-null span ("" only when no valid span exists)
    null_score_diff: dict[str, float]  # null score - best span score (inf: no valid span)
    null_threshold: float
    nbest: dict[str, list[Candidate]] = field(default_factory=dict)  # best first

    def predictions_at(self, null_threshold: float) -> dict[str, str]:
        return {
            qid: "" if self.null_score_diff[qid] > null_threshold else text
            for qid, text in self.best_spans.items()
        }

    def na_probs(self) -> dict[str, float]:
        """Probability of "no answer" per id: sigmoid(null_score_diff).

        Monotone in null_score_diff, so a threshold on these probabilities (what the official
        evaluation script sweeps for best_exact/best_f1) is a threshold on the score difference:
        p > sigmoid(t) exactly when null_score_diff > t.
        """
        return {qid: sigmoid(diff) for qid, diff in self.null_score_diff.items()}


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x)) if x != math.inf else 1.0
    z = math.exp(x)
    return z / (1.0 + z)


def postprocess_predictions(
    examples: Sequence[_Example],
    features: Any,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_threshold: float = 0.0,
    with_nbest: bool = True,
) -> PostprocessResult:
    """Decode the logits of all windows into one prediction per example.

    examples: the list the features were built from (`features.example_index` indexes it);
        each needs `.id` and `.context`. Every example gets a prediction; one without any
        window predicts "" (null_score_diff = inf).
    features: `squadft.data.features.Features` (uses offsets, row_splits, example_index,
        cls_index); offsets are character offsets into the context, (-1, -1) off-context.
    start_logits, end_logits: float arrays [len(features), L], L >= the longest window;
        positions past a window's end are ignored.
    n_best: start and end candidates per window, and spans kept per example.
    max_answer_length: longest span in tokens.
    null_threshold: predict "" when null score - best span score is above it.
    with_nbest: also build the n-best lists (skip for threshold sweeps).
    """
    if n_best <= 0 or max_answer_length <= 0:
        raise ValueError("n_best and max_answer_length must be positive")
    start_logits = np.asarray(start_logits)
    end_logits = np.asarray(end_logits)
    n_windows = len(features)
    if start_logits.shape != end_logits.shape or start_logits.ndim != 2:
        raise ValueError(f"start/end logits must be equal 2-d shapes, got "
                         f"{start_logits.shape} and {end_logits.shape}")
    if start_logits.shape[0] != n_windows:
        raise ValueError(f"{start_logits.shape[0]} rows of logits for {n_windows} windows")
    width = start_logits.shape[1]
    lengths = np.diff(np.asarray(features.row_splits)).astype(np.int64)
    if n_windows and int(lengths.max()) > width:
        raise ValueError(f"logits have {width} columns but a window has {lengths.max()} tokens")

    example_index = np.asarray(features.example_index, dtype=np.int64)
    n_examples = len(examples)
    rows = np.arange(n_windows)

    # Character offsets laid out like the logits; -1 marks everything that is not context.
    start_char = np.full((n_windows, width), -1, dtype=np.int64)
    end_char = np.full((n_windows, width), -1, dtype=np.int64)
    token_row = np.repeat(rows, lengths)
    token_col = np.arange(int(lengths.sum())) - np.repeat(np.asarray(features.row_splits)[:-1],
                                                         lengths)
    offsets = np.asarray(features.offsets)
    start_char[token_row, token_col] = offsets[:, 0]
    end_char[token_row, token_col] = offsets[:, 1]
    is_context = start_char >= 0

    masked_start = np.where(is_context, start_logits, -np.inf)
    masked_end = np.where(is_context, end_logits, -np.inf)

    # Top-k context starts and ends per window, then every start x end pair.
    k = min(n_best, width)
    top_start = _top_k_indices(masked_start, k)  # [n, k]
    top_end = _top_k_indices(masked_end, k)
    # float64: the sum of two float32 logits is exact, so ranks do not depend on rounding.
    start_values = np.take_along_axis(masked_start, top_start, axis=1).astype(np.float64)
    end_values = np.take_along_axis(masked_end, top_end, axis=1).astype(np.float64)
    pair_scores = start_values[:, :, None] + end_values[:, None, :]
    span_tokens = top_end[:, None, :] - top_start[:, :, None]
    valid = (span_tokens >= 0) & (span_tokens < max_answer_length) & np.isfinite(pair_scores)
    pair_scores = np.where(valid, pair_scores, -np.inf).reshape(n_windows, k * k)

    # The n_best best pairs of each window, then drop the invalid ones.
    m = min(n_best, k * k)
    best_pairs = _top_k_indices(pair_scores, m)  # [n, m]
    scores = np.take_along_axis(pair_scores, best_pairs, axis=1).ravel()
    window = np.repeat(rows, m)
    span_start = top_start[window, best_pairs.ravel() // k]
    span_end = top_end[window, best_pairs.ravel() % k]
    keep = np.isfinite(scores)
    window, span_start, span_end, scores = (
        window[keep], span_start[keep], span_end[keep], scores[keep])
    owner = example_index[window]
    first_char = start_char[window, span_start]
    last_char = end_char[window, span_end]

    # Overlapping windows see the same span: keep it once, with its highest score.
    order = np.lexsort((-scores, last_char, first_char, owner))
    owner, first_char, last_char, scores, window, span_start, span_end = (
        a[order] for a in (owner, first_char, last_char, scores, window, span_start, span_end))
    first_of_span = np.ones(len(owner), dtype=bool)
    first_of_span[1:] = ((owner[1:] != owner[:-1]) | (first_char[1:] != first_char[:-1])
                         | (last_char[1:] != last_char[:-1]))
    owner, first_char, last_char, scores, window, span_start, span_end = (
        a[first_of_span]
        for a in (owner, first_char, last_char, scores, window, span_start, span_end))

    # Best first within each example; ties broken by position so the result is deterministic.
    order = np.lexsort((last_char, first_char, -scores, owner))
    owner, first_char, last_char, scores, window, span_start, span_end = (
        a[order] for a in (owner, first_char, last_char, scores, window, span_start, span_end))
    group_start = np.searchsorted(owner, np.arange(n_examples))
    rank = np.arange(len(owner)) - group_start[owner]
    top = rank < n_best
    owner, first_char, last_char, scores, window, span_start, span_end = (
        a[top] for a in (owner, first_char, last_char, scores, window, span_start, span_end))
    group_start = np.searchsorted(owner, np.arange(n_examples))
    group_end = np.searchsorted(owner, np.arange(n_examples), side="right")
    has_span = group_end > group_start

    best_score = np.full(n_examples, -np.inf)
    best_score[has_span] = scores[group_start[has_span]]

    # Null score: the minimum over an example's windows of the [CLS] start + end logits.
    cls_index = np.asarray(features.cls_index, dtype=np.int64)
    cls_start = start_logits[rows, cls_index].astype(np.float64)
    cls_end = end_logits[rows, cls_index].astype(np.float64)
    null_scores = cls_start + cls_end
    null_order = np.lexsort((null_scores, example_index))
    null_first = np.ones(n_windows, dtype=bool)
    null_first[1:] = example_index[null_order][1:] != example_index[null_order][:-1]
    null_window = np.full(n_examples, -1, dtype=np.int64)
    null_window[example_index[null_order][null_first]] = null_order[null_first]
    has_window = null_window >= 0
    null_score = np.full(n_examples, np.inf)
    null_score[has_window] = null_scores[null_window[has_window]]

    with np.errstate(invalid="ignore"):
        diff = null_score - best_score
    diff[~has_span] = np.inf  # nothing to answer with

    ids = [example.id for example in examples]
    best_text = [""] * n_examples
    best_first = first_char[group_start[has_span]].tolist()
    best_last = last_char[group_start[has_span]].tolist()
    for i, a, b in zip(np.flatnonzero(has_span).tolist(), best_first, best_last, strict=True):
        best_text[i] = examples[i].context[a:b]
    best_spans = dict(zip(ids, best_text, strict=True))
    null_score_diff = dict(zip(ids, diff.tolist(), strict=True))
    predictions = {qid: "" if d > null_threshold else text
                   for qid, text, d in zip(ids, best_text, null_score_diff.values(), strict=True)}

    nbest: dict[str, list[Candidate]] = {}
    if with_nbest:
        nbest = _nbest_lists(
            examples, ids, owner, first_char, last_char, scores,
            start_logits[window, span_start].astype(np.float64),
            end_logits[window, span_end].astype(np.float64),
            null_window, null_score, cls_start, cls_end,
        )
    return PostprocessResult(
        predictions=predictions, best_spans=best_spans, null_score_diff=null_score_diff,
        null_threshold=float(null_threshold), nbest=nbest,
    )


def _top_k_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest values of each row (in no particular order)."""
    if k >= values.shape[1]:
        return np.broadcast_to(np.arange(values.shape[1]), values.shape).copy()
    return np.argpartition(-values, k - 1, axis=1)[:, :k]


def _nbest_lists(
    examples: Sequence[_Example],
    ids: list[str],
    owner: np.ndarray,
    first_char: np.ndarray,
    last_char: np.ndarray,
    scores: np.ndarray,
    start_values: np.ndarray,
    end_values: np.ndarray,
    null_window: np.ndarray,
    null_score: np.ndarray,
    cls_start: np.ndarray,
    cls_end: np.ndarray,
) -> dict[str, list[Candidate]]:
    """Spans plus the null answer per example, best first, with softmax probabilities."""
    with_null = np.flatnonzero(null_window >= 0)
    null_rows = null_window[with_null]
    owner = np.concatenate([owner, with_null])
    first_char = np.concatenate([first_char, np.full(len(with_null), -1)])
    last_char = np.concatenate([last_char, np.full(len(with_null), -1)])
    scores = np.concatenate([scores, null_score[with_null]])
    start_values = np.concatenate([start_values, cls_start[null_rows]])
    end_values = np.concatenate([end_values, cls_end[null_rows]])
    order = np.lexsort((first_char, -scores, owner))
    owner, first_char, last_char, scores, start_values, end_values = (
        a[order] for a in (owner, first_char, last_char, scores, start_values, end_values))

    n_examples = len(ids)
    group_start = np.searchsorted(owner, np.arange(n_examples))
    group_end = np.searchsorted(owner, np.arange(n_examples), side="right")
    nonempty = group_end > group_start
    # Softmax within each example: the first score of a group is its maximum.
    shift = np.zeros(n_examples)
    shift[nonempty] = scores[group_start[nonempty]]
    weights = np.exp(scores - shift[owner])
    totals = np.zeros(n_examples)
    np.add.at(totals, owner, weights)
    probabilities = weights / totals[owner]

    nbest: dict[str, list[Candidate]] = {qid: [] for qid in ids}
    for i, a, b, score, start_value, end_value, probability in zip(
        owner.tolist(), first_char.tolist(), last_char.tolist(), scores.tolist(),
        start_values.tolist(), end_values.tolist(), probabilities.tolist(), strict=True,
    ):
        text = examples[i].context[a:b] if a >= 0 else ""
        nbest[ids[i]].append(Candidate(text, score, start_value, end_value, a, probability))
    return nbest


@dataclass(frozen=True)
class TunedThreshold:
    null_threshold: float
    metrics: dict[str, float | int]  # official keys for the predictions at null_threshold
    predictions: dict[str, str]


def tune_null_threshold(
    result: PostprocessResult, gold: Mapping[str, list[str]]
) -> TunedThreshold:
    """The null threshold that maximises F1 on `gold`, and the scores at that threshold.

    Sweeps the thresholds exactly like the official best_f1 search, but over the best span of
    every question (so a question the raw threshold made unanswerable can be answered again).
    The scores are tuned on the evaluation data itself: an optimistic estimate, to be reported
    next to the raw ones, never instead of them.
    """
    scored = {qid: text for qid, text in result.best_spans.items() if qid in gold}
    diffs = {qid: result.null_score_diff[qid] for qid in scored}
    has_answer = {qid: bool(answers) for qid, answers in gold.items()}
    _, f1 = raw_scores(gold, scored)
    finite = [d for d in diffs.values() if math.isfinite(d)]
    # "Answer nothing" needs a threshold below every difference.
    below_all = math.nextafter(min(finite), -math.inf) if finite else 0.0
    _, threshold = find_best_threshold(
        scored, f1, diffs, has_answer, total=len(gold), start_threshold=below_all
    )
    predictions = result.predictions_at(threshold)
    metrics = evaluate_predictions(gold, {q: predictions[q] for q in scored})
    return TunedThreshold(null_threshold=float(threshold), metrics=metrics,
                          predictions=predictions)
