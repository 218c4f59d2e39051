"""Start/end logits of every window -> answer text per question, vectorised over all windows.

For each window the `n_best` highest context start logits and the `n_best` highest context end
logits are paired ([windows, n_best, n_best] arrays); a pair is a valid span when start <= end,
both tokens belong to the context and the span has at most `max_answer_length` tokens. The
best `n_best` valid spans of each window are pooled per question, spans that several
overlapping windows share are kept once (highest score), and the `n_best` best remain.

The null ("no answer") score of a question is the minimum over its windows of
start_logit[CLS] + end_logit[CLS]; `null_score_diff` = null score - best span score, and the
prediction is "" when `null_score_diff > null_threshold`.

Nothing here loops in Python over windows or span pairs; the only Python loop slices the
answer texts out of the contexts. The n-best lists stay column-wise (`NBestLists`): records are
built when a question's list is read, and nbest_predictions.json is formatted from the columns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
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

    def to_json(self) -> dict[str, Any]:  # keys in the order NBestLists.json_arrays writes
        return {key: getattr(self, key) for key in (
            "text", "probability", "start_logit", "end_logit", "score", "answer_start")}


@dataclass(eq=False)  # compared as a Mapping
class NBestLists(Mapping[str, list[Candidate]]):
    """The n-best lists of all questions, stored column-wise: question i owns rows
    bounds[i]:bounds[i + 1] of every column, best first.

    Building ~20 records per question in Python costs more than decoding every window, so the
    candidates stay in flat columns (their texts included) and become `Candidate` records only
    when one question's list is read; `json_arrays` serialises them without records.
    """

    ids: list[str]
    bounds: np.ndarray  # int64 [len(ids) + 1]
    texts: list[str]
    scores: np.ndarray
    start_logits: np.ndarray
    end_logits: np.ndarray
    answer_starts: np.ndarray
    probabilities: np.ndarray

    def __post_init__(self) -> None:
        self._position = {qid: i for i, qid in enumerate(self.ids)}

    def __getitem__(self, qid: str) -> list[Candidate]:
        i = self._position[qid]
        a, b = int(self.bounds[i]), int(self.bounds[i + 1])
        return [
            Candidate(*row) for row in zip(
                self.texts[a:b], self.scores[a:b].tolist(), self.start_logits[a:b].tolist(),
                self.end_logits[a:b].tolist(), self.answer_starts[a:b].tolist(),
                self.probabilities[a:b].tolist(), strict=True)
        ]

    def __iter__(self) -> Iterator[str]:
        return iter(self._position)

    def __len__(self) -> int:
        return len(self._position)

    def json_arrays(self) -> Iterator[tuple[str, str]]:
        """(id, json.dumps(list of Candidate.to_json())) per question, the same text, formatted
        straight from the columns without building a dict per candidate."""
        floats = [_json_floats(column) for column in (
            self.probabilities, self.start_logits, self.end_logits, self.scores)]
        records = [
            f'{{"text": {text}, "probability": {probability}, "start_logit": {start_logit}, '
            f'"end_logit": {end_logit}, "score": {score}, "answer_start": {answer_start}}}'
            for text, probability, start_logit, end_logit, score, answer_start in zip(
                map(_json_string, self.texts), *floats, self.answer_starts.tolist(),
                strict=True)
        ]
        bounds = self.bounds.tolist()
        for qid, i in self._position.items():
            yield qid, "[" + ", ".join(records[bounds[i]:bounds[i + 1]]) + "]"


_json_string = json.encoder.encode_basestring_ascii  # what json.dumps uses for str


def _json_floats(values: np.ndarray) -> list[str]:
    """json.dumps' spelling of each float: repr, and Infinity / -Infinity / NaN."""
    if np.isfinite(values).all():
        return list(map(float.__repr__, values.tolist()))
    return [json.dumps(value) for value in values.tolist()]


def nbest_json_arrays(nbest: Mapping[str, Sequence[Candidate]]) -> Iterator[tuple[str, str]]:
    """(id, JSON array of the candidates' to_json() records) per question, as json.dumps
    writes it, for nbest_predictions.json."""
    if isinstance(nbest, NBestLists):
        yield from nbest.json_arrays()
        return
    for qid, candidates in nbest.items():
        yield qid, json.dumps([candidate.to_json() for candidate in candidates])


@dataclass
class PostprocessResult:
    """Per question id: the prediction, the best span and the null score difference."""

    predictions: dict[str, str]  # "" where null_score_diff > null_threshold
    best_spans: dict[str, str]  # best non-null span ("" only when no valid span exists)
    null_score_diff: dict[str, float]  # null score - best span score (inf: no valid span)
    null_threshold: float
    # id -> candidates, best first (an NBestLists from postprocess_predictions)
    nbest: Mapping[str, list[Candidate]] = field(default_factory=dict)

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
    examples: Sequence[_Example], features: Any, start_logits: np.ndarray,
    end_logits: np.ndarray, *, n_best: int = 20, max_answer_length: int = 30,
    null_threshold: float = 0.0, with_nbest: bool = True,
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
    start_logits, end_logits, row_splits = _checked_logits(
        features, start_logits, end_logits, n_best, max_answer_length)
    example_index = np.asarray(features.example_index, dtype=np.int64)
    n_examples = len(examples)
    offsets = np.asarray(features.offsets)
    # Each phase leaves its intermediate arrays in `scratch`, released when this returns as
    # they were when it was one function: released phase by phase they let glibc give part of
    # its heap back, and the next call page-faults ~20 MB in again (~25 ms of a ~0.15 s call
    # on the dev subset, measured with bench/postprocess.py).
    scratch: list[Any] = []
    spans = _window_spans(start_logits, end_logits, row_splits, offsets, example_index,
                          n_best, max_answer_length, scratch)
    spans, bounds = _best_spans_per_example(spans, n_examples, n_best, scratch)
    null = _null_scores(start_logits, end_logits, features.cls_index, example_index, n_examples,
                        scratch)
    ids = [example.id for example in examples]
    predictions, best_spans, null_score_diff = _answers(
        examples, ids, spans, bounds, null.score, null_threshold, scratch)
    nbest: Mapping[str, list[Candidate]] = {}
    if with_nbest:
        nbest = _nbest_lists(examples, ids, bounds, spans, null, start_logits, end_logits)
    return PostprocessResult(
        predictions=predictions, best_spans=best_spans, null_score_diff=null_score_diff,
        null_threshold=float(null_threshold), nbest=nbest,
    )


@dataclass(frozen=True, slots=True)
class _Spans:
    """Candidate answer spans, one row each: the example owning it, its characters
    context[first_char:last_char], its score (start + end logit, float64) and where it comes
    from (window, and the span's first and last token in that window)."""

    owner: np.ndarray
    first_char: np.ndarray
    last_char: np.ndarray
    scores: np.ndarray
    window: np.ndarray
    span_start: np.ndarray
    span_end: np.ndarray

    def take(self, index: np.ndarray) -> _Spans:
        """The rows `index` (integers or a boolean mask) of every column."""
        return _Spans(self.owner[index], self.first_char[index], self.last_char[index],
                      self.scores[index], self.window[index], self.span_start[index],
                      self.span_end[index])


@dataclass(frozen=True, slots=True)
class _NullScores:
    """Per example: the window with the lowest [CLS] start + end logit (-1: no window) and
    that score (inf: no window); per window: its [CLS] start and end logits (float64)."""

    window: np.ndarray
    score: np.ndarray
    cls_start: np.ndarray
    cls_end: np.ndarray


def _checked_logits(
    features: Any, start_logits: np.ndarray, end_logits: np.ndarray, n_best: int,
    max_answer_length: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The logits as arrays and the windows' row splits, after checking that they fit."""
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
    row_splits = np.asarray(features.row_splits, dtype=np.int64)
    lengths = np.diff(row_splits)
    if n_windows and int(lengths.max()) > width:
        raise ValueError(f"logits have {width} columns but a window has {lengths.max()} tokens")
    return start_logits, end_logits, row_splits


def _window_spans(
    start_logits: np.ndarray, end_logits: np.ndarray, row_splits: np.ndarray,
    offsets: np.ndarray, example_index: np.ndarray, n_best: int, max_answer_length: int,
    scratch: list[Any],
) -> _Spans:
    """The valid spans among the n_best best pairs of each window, window by window."""
    n_windows, width = start_logits.shape
    lengths = np.diff(row_splits)
    # Context tokens laid out like the logits: a row-major boolean assignment fills each
    # window's cells in the order its tokens are stored.
    is_context = np.zeros((n_windows, width), dtype=bool)
    is_context[np.arange(width) < lengths[:, None]] = offsets[:, 0] >= 0
    # Negated, with +inf off-context, so that the k smallest are the k best context logits.
    neg_start = np.where(is_context, -start_logits, np.inf)
    neg_end = np.where(is_context, -end_logits, np.inf)

    # Top-k context starts and ends per window, then every start x end pair.
    k = min(n_best, width)
    top_start = _smallest_k(neg_start, k)  # [n, k]
    top_end = _smallest_k(neg_end, k)
    # float64: the sum of two float32 logits is exact, so ranks do not depend on rounding.
    start_values = -np.take_along_axis(neg_start, top_start, axis=1).astype(np.float64)
    end_values = -np.take_along_axis(neg_end, top_end, axis=1).astype(np.float64)
    pair_scores = start_values[:, :, None] + end_values[:, None, :]
    span_tokens = top_end[:, None, :] - top_start[:, :, None]
    valid = (span_tokens >= 0) & (span_tokens < max_answer_length) & np.isfinite(pair_scores)
    neg_pairs = np.where(valid, -pair_scores, np.inf).reshape(n_windows, k * k)

    # The n_best best pairs of each window, then drop the invalid ones.
    m = min(n_best, k * k)
    best_pairs = _smallest_k(neg_pairs, m)  # [n, m]
    scores = -np.take_along_axis(neg_pairs, best_pairs, axis=1).ravel()
    window = np.repeat(np.arange(n_windows), m)
    span_start = top_start[window, best_pairs.ravel() // k]
    span_end = top_end[window, best_pairs.ravel() % k]
    keep = np.isfinite(scores)
    window, span_start, span_end, scores = (
        window[keep], span_start[keep], span_end[keep], scores[keep])
    first_char = offsets[row_splits[window] + span_start, 0].astype(np.int64)
    last_char = offsets[row_splits[window] + span_end, 1].astype(np.int64)
    scratch += (lengths, is_context, neg_start, neg_end, top_start, top_end, start_values,
                end_values, pair_scores, span_tokens, valid, neg_pairs, best_pairs, keep, window,
                span_start, span_end, scores, first_char, last_char)
    return _Spans(example_index[window], first_char, last_char, scores, window, span_start,
                  span_end)


def _best_spans_per_example(
    spans: _Spans, n_examples: int, n_best: int, scratch: list[Any],
) -> tuple[_Spans, np.ndarray]:
    """The n_best best distinct spans of each example, grouped by example and best first
    (example i owns rows bounds[i]:bounds[i + 1])."""
    # Overlapping windows see the same span: keep it once, with its highest score (the first
    # candidate holding it on ties). The survivors come out in (owner, first, last) order.
    chosen = _best_per_span(spans.owner, spans.first_char, spans.last_char, spans.scores)
    # Best first within each example; spans of equal score stay in character order.
    chosen = chosen[_stable_order_by_owner_and_score(spans.owner[chosen], spans.scores[chosen])]
    spans = spans.take(chosen)
    group_start = np.searchsorted(spans.owner, np.arange(n_examples))
    rank = np.arange(len(spans.owner)) - group_start[spans.owner]
    top = rank < n_best
    scratch += (chosen, group_start, rank, top)
    spans = spans.take(top)
    return spans, np.searchsorted(spans.owner, np.arange(n_examples + 1))


def _null_scores(
    start_logits: np.ndarray, end_logits: np.ndarray, cls_index: Any, example_index: np.ndarray,
    n_examples: int, scratch: list[Any],
) -> _NullScores:
    """Null score: the minimum over an example's windows of the [CLS] start + end logits."""
    n_windows = start_logits.shape[0]
    rows = np.arange(n_windows)
    cls_index = np.asarray(cls_index, dtype=np.int64)
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
    scratch += (rows, cls_index, null_scores, null_order, null_first, has_window)
    return _NullScores(null_window, null_score, cls_start, cls_end)


def _answers(
    examples: Sequence[_Example], ids: list[str], spans: _Spans, bounds: np.ndarray,
    null_score: np.ndarray, null_threshold: float, scratch: list[Any],
) -> tuple[dict[str, str], dict[str, str], dict[str, float]]:
    """Per id: the prediction, the best span's text and null score - best span score."""
    n_examples = len(ids)
    group_start, group_end = bounds[:-1], bounds[1:]
    has_span = group_end > group_start
    best_score = np.full(n_examples, -np.inf)
    best_score[has_span] = spans.scores[group_start[has_span]]
    with np.errstate(invalid="ignore"):
        diff = null_score - best_score
    diff[~has_span] = np.inf  # nothing to answer with

    best_text = [""] * n_examples
    best_first = spans.first_char[group_start[has_span]].tolist()
    best_last = spans.last_char[group_start[has_span]].tolist()
    for i, a, b in zip(np.flatnonzero(has_span).tolist(), best_first, best_last, strict=True):
        best_text[i] = examples[i].context[a:b]
    best_spans = dict(zip(ids, best_text, strict=True))
    null_score_diff = dict(zip(ids, diff.tolist(), strict=True))
    predictions = {qid: "" if d > null_threshold else text
                   for qid, text, d in zip(ids, best_text, null_score_diff.values(), strict=True)}
    scratch += (has_span, best_score, diff, best_first, best_last)
    return predictions, best_spans, null_score_diff


def _smallest_k(values: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k smallest values of each row (in no particular order)."""
    if k >= values.shape[1]:
        return np.broadcast_to(np.arange(values.shape[1]), values.shape).copy()
    return np.argpartition(values, k - 1, axis=1)[:, :k]


def _best_per_span(
    owner: np.ndarray, first_char: np.ndarray, last_char: np.ndarray, scores: np.ndarray,
) -> np.ndarray:
    """Indices of one candidate per distinct (owner, first, last): the highest score, the
    lowest index among equal scores; in (owner, first, last) order."""
    if len(owner) == 0:
        return np.zeros(0, dtype=np.int64)
    # One integer key per span sorts faster than a lexsort over three columns.
    chars = int(last_char.max()) + 1
    if (int(owner.max()) + 1) * chars * chars < 2**62:
        by_span = np.argsort((owner * chars + first_char) * chars + last_char, kind="stable")
    else:
        by_span = np.lexsort((last_char, first_char, owner))
    owner, first_char, last_char, scores = (
        a[by_span] for a in (owner, first_char, last_char, scores))
    new_span = np.ones(len(owner), dtype=bool)
    new_span[1:] = ((owner[1:] != owner[:-1]) | (first_char[1:] != first_char[:-1])
                    | (last_char[1:] != last_char[:-1]))
    span_id = np.cumsum(new_span) - 1
    span_best = np.maximum.reduceat(scores, np.flatnonzero(new_span))
    at_best = np.flatnonzero(scores == span_best[span_id])
    # by_span is stable, so the first candidate at a span's best score has the lowest index.
    first_at_best = np.ones(len(at_best), dtype=bool)
    first_at_best[1:] = span_id[at_best[1:]] != span_id[at_best[:-1]]
    return by_span[at_best[first_at_best]]


def _stable_order_by_owner_and_score(owner: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Stable order by owner, then score descending (what np.lexsort((-scores, owner)) gives)."""
    if len(owner) == 0:
        return np.zeros(0, dtype=np.int64)
    # Dense ranks of the scores (equal scores, -0.0 and 0.0 included, share one) make the two
    # keys one integer.
    _, rank = np.unique(-scores, return_inverse=True)
    return np.argsort(owner * (int(rank.max()) + 1) + rank.reshape(-1), kind="stable")


def _nbest_lists(
    examples: Sequence[_Example], ids: list[str], bounds: np.ndarray, spans: _Spans,
    null: _NullScores, start_logits: np.ndarray, end_logits: np.ndarray,
) -> NBestLists:
    """Spans plus the null answer per example, best first, with softmax probabilities.

    The spans arrive grouped by example (rows bounds[i]:bounds[i + 1]), best first; the null
    answer of each example with a window is inserted after the spans scoring strictly more
    (among equal scores it comes first: it has the lowest character offset, -1).
    """
    start_values = start_logits[spans.window, spans.span_start].astype(np.float64)
    end_values = end_logits[spans.window, spans.span_end].astype(np.float64)
    n_examples = len(ids)
    owner, null_window = spans.owner, null.window
    has_null = null_window >= 0
    span_rank = np.arange(len(owner)) - bounds[owner]
    above_null = spans.scores > null.score[owner]
    null_rank = np.bincount(owner, weights=above_null, minlength=n_examples).astype(np.int64)
    counts = np.diff(bounds) + has_null
    new_bounds = np.zeros(n_examples + 1, dtype=np.int64)
    np.cumsum(counts, out=new_bounds[1:])
    total = int(new_bounds[-1])
    span_row = new_bounds[owner] + span_rank + (has_null[owner] & ~above_null)
    with_null = np.flatnonzero(has_null)
    null_row = new_bounds[with_null] + null_rank[with_null]
    null_of = null_window[with_null]

    def merged(span_values: np.ndarray, null_values: np.ndarray) -> np.ndarray:
        out = np.empty(total, dtype=np.result_type(span_values, null_values))
        out[span_row] = span_values
        out[null_row] = null_values
        return out

    all_owner = merged(owner, with_null)
    all_scores = merged(spans.scores, null.score[with_null])
    answer_starts = merged(spans.first_char, np.full(len(with_null), -1, dtype=np.int64))
    # The null answer's text is the empty slice context[0:0].
    text_start = merged(spans.first_char, np.zeros(len(with_null), dtype=np.int64))
    text_end = merged(spans.last_char, np.zeros(len(with_null), dtype=np.int64))
    probabilities = _softmax_per_example(all_scores, all_owner, new_bounds)

    contexts = [example.context for example in examples]
    texts = [contexts[i][a:b] for i, a, b in zip(
        all_owner.tolist(), text_start.tolist(), text_end.tolist(), strict=True)]
    return NBestLists(
        ids, new_bounds, texts, all_scores,
        merged(start_values, null.cls_start[null_of]), merged(end_values, null.cls_end[null_of]),
        answer_starts, probabilities,
    )


def _softmax_per_example(scores: np.ndarray, owner: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Softmax of the scores within each example's rows bounds[i]:bounds[i + 1], whose first
    score is the example's maximum."""
    n_examples = len(bounds) - 1
    nonempty = np.diff(bounds) > 0
    shift = np.zeros(n_examples)
    shift[nonempty] = scores[bounds[:-1][nonempty]]
    weights = np.exp(scores - shift[owner])
    totals = np.bincount(owner, weights=weights, minlength=n_examples)
    return weights / totals[owner]


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
