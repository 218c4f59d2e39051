"""How much a score would move on other articles: percentile intervals from a bootstrap over
whole articles.

The questions about one article share its paragraphs, its style and its difficulty, so they are
not independent draws: resampling questions would make intervals too narrow. Articles are
resampled instead (with replacement, seeded), and every score column is recomputed on the same
resampled articles. A column of per-question differences (model minus "always no answer", or
checkpoint A minus checkpoint B) therefore gives a paired interval for the difference.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from squadft.evaluate.squad_metrics import raw_scores

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True, slots=True)
class Interval:
    """A score in percent and the bounds of its bootstrap interval."""

    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def to_json(self) -> list[float]:
        return [round(self.low, 4), round(self.high, 4)]

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"


def article_bootstrap(
    articles: Sequence[Hashable],
    columns: Mapping[str, Sequence[float]],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Interval]:
    """The mean of each column (x100) with its `level` interval over resampled articles.

    articles[i] is the article of question i; each column holds one value per question.
    """
    if len(articles) == 0:
        raise ValueError("no questions to resample")
    _, inverse = np.unique([str(article) for article in articles], return_inverse=True)
    n_articles = int(inverse.max()) + 1
    counts = np.bincount(inverse, minlength=n_articles)
    draws = np.random.default_rng(seed).multinomial(
        n_articles, np.full(n_articles, 1.0 / n_articles), size=resamples)
    questions = draws @ counts  # questions in each resample (>= 1: every article has one)
    tail = 50.0 * (1.0 - level)
    intervals = {}
    for name, column in columns.items():
        values = np.asarray(column, dtype=np.float64)
        if values.shape != inverse.shape:
            raise ValueError(f"column {name!r} has {values.size} values for {inverse.size} "
                             "questions")
        means = draws @ np.bincount(inverse, weights=values, minlength=n_articles) / questions
        low, high = np.percentile(means, [tail, 100.0 - tail])
        intervals[name] = Interval(100.0 * float(values.mean()), 100.0 * float(low),
                                  100.0 * float(high))
    return intervals


def score_intervals(
    gold: Mapping[str, list[str]],
    predictions: Mapping[str, str],
    article_of: Mapping[str, Hashable],
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> dict[str, Interval]:
    """EM and F1 of `predictions` (thresholds already applied) and their paired differences
    from "always no answer", each with its interval. A gold question without a prediction
    scores 0, as in the official script."""
    qids = list(gold)
    exact, f1 = raw_scores(gold, predictions)
    no_answer = np.array([0.0 if gold[qid] else 1.0 for qid in qids])
    em = np.array([exact.get(qid, 0.0) for qid in qids])
    f = np.array([f1.get(qid, 0.0) for qid in qids])
    return article_bootstrap(
        [article_of[qid] for qid in qids],
        {"exact": em, "f1": f, "exact_minus_no_answer": em - no_answer,
         "f1_minus_no_answer": f - no_answer},
        seed=seed, resamples=resamples)


def paired_f1_difference(
    gold: Mapping[str, list[str]],
    first: Mapping[str, str],
    second: Mapping[str, str],
    article_of: Mapping[str, Hashable],
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> Interval:
    """F1 of `first` minus F1 of `second` on the same questions, with its paired interval."""
    qids = list(gold)
    _, f1_first = raw_scores(gold, first)
    _, f1_second = raw_scores(gold, second)
    difference = [f1_first.get(qid, 0.0) - f1_second.get(qid, 0.0) for qid in qids]
    return article_bootstrap([article_of[qid] for qid in qids], {"d": difference},
                             seed=seed, resamples=resamples)["d"]


def interval_report(
    gold: Mapping[str, list[str]],
    predictions: Mapping[str, str],
    article_of: Mapping[str, Hashable],
) -> dict[str, object]:
    """eval_results.json's `ci95`: the bounds of each score's interval, and how they were
    made; none from a single article (its questions cannot show how scores vary between
    articles). A question without a known article (dropped by the parser) is its own article."""
    articles = {qid: article_of.get(qid, f"question {qid}") for qid in gold}
    n_articles = len(set(map(str, articles.values())))
    if n_articles < 2:
        return {"method": "none: the questions come from one article", "articles": n_articles}
    intervals = score_intervals(gold, predictions, articles)
    return {
        "method": f"bootstrap over {n_articles} articles (whole articles resampled, "
                  f"{RESAMPLES} resamples, seed 0), percentile interval",
        "articles": n_articles,
        **{name: interval.to_json() for name, interval in intervals.items()},
    }


def format_intervals(report: Mapping[str, object]) -> str:
    """The printed line: the 95% intervals of EM, F1 and F1 minus "always no answer"."""
    if "f1" not in report:
        return "no 95% interval: the questions come from one article"

    def bounds(key: str) -> str:
        low, high = report[key]  # type: ignore[misc]
        return f"[{low:.2f}, {high:.2f}]"

    return (f"95% interval over {report['articles']} articles: EM {bounds('exact')}, "
            f"F1 {bounds('f1')}, F1 minus always no answer {bounds('f1_minus_no_answer')}")
