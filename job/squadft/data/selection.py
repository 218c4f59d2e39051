"""Which questions train, which calibrate the no-answer threshold, which are scored.

Pure functions over parsed examples (and, for gold answers, over the decoded JSON):

* the articles a file spec (squadft.filespec: `name` or `name[a:b]`) selects;
* the calibration holdout: a seeded fraction of whole articles of every training file, kept out
  of training so the no-answer threshold is tuned on questions the model never saw (whole
  articles, because questions of one paragraph share their context and would leak);
* a seeded sample of N questions that keeps the share of unanswerable questions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from squadft.data.squad import Example
from squadft.errors import ConfigError
from squadft.filespec import FileSpec


def select_articles(examples: Sequence[Example], spec: FileSpec,
                    article_count: int) -> list[Example]:
    """The examples of the articles `spec` selects (all of them when it has no slice)."""
    if not spec.sliced:
        return list(examples)
    wanted = spec.articles(article_count)
    if len(wanted) == 0:
        raise ConfigError(f"{spec}: the slice selects none of the file's {article_count} "
                          "articles")
    low, high = wanted.start, wanted.stop
    return [e for e in examples if low <= e.article < high]


def select_raw_articles(data: Any, spec: FileSpec) -> Any:
    """The decoded SQuAD JSON restricted to the articles `spec` selects (for gold answers)."""
    if not spec.sliced or not isinstance(data, dict) or not isinstance(data.get("data"), list):
        return data
    articles = data["data"]
    return {**data, "data": [articles[i] for i in spec.articles(len(articles))]}


def _rng(seed: int, *salt: str) -> np.random.Generator:
    # A stable seed from the run seed and a label (the same choice on every rank and rerun).
    digest = hashlib.sha256(":".join([str(seed), *salt]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def holdout_articles(examples: Sequence[Example], fraction: float, seed: int,
                     label: str) -> set[int]:
    """A seeded choice of round(fraction x articles) whole articles (at least one, never all)
    with every kind of question the file has: a threshold cannot be calibrated without both
    answerable and unanswerable questions.

    `examples` are one file's selected examples; `label` (the file name) makes the choice of
    each file independent. Returns the chosen article indices; empty when the file has fewer
    than two articles, `fraction` is 0, or no choice of whole articles has every kind and
    leaves an article to train on.
    """
    articles = sorted({e.article for e in examples})
    if fraction <= 0 or len(articles) < 2:
        return set()
    count = min(len(articles) - 1, max(1, round(fraction * len(articles))))
    rng = _rng(seed, "calibration", label)
    chosen = [articles[i] for i in rng.choice(len(articles), size=count, replace=False).tolist()]
    kinds: dict[int, set[bool]] = {}
    for e in examples:
        kinds.setdefault(e.article, set()).add(e.is_impossible)
    wanted = set().union(*kinds.values())

    def covered(picks: list[int]) -> set[bool]:
        return set().union(*(kinds[a] for a in picks))

    # a kind missing: add, in a seeded order, articles that have it, then drop the picks the
    # others make redundant (the same choice as before whenever that one had every kind)
    for article in (articles[i] for i in rng.permutation(len(articles)).tolist()):
        if article not in chosen and kinds[article] & (wanted - covered(chosen)):
            chosen.append(article)
    for article in list(chosen):
        rest = [a for a in chosen if a != article]
        if len(chosen) > count and covered(rest) == wanted:
            chosen = rest
    return set(chosen) if len(chosen) < len(articles) else set()


def stratified_sample(examples: Sequence[Example], count: int, seed: int,
                      label: str = "sample") -> list[Example]:
    """A seeded sample of `count` examples with the unanswerable share of `examples`.

    The sample keeps file order (neighbouring questions share contexts, which keeps features
    and caches compact), and a larger `count` with the same seed contains a smaller one.
    """
    if count >= len(examples):
        return list(examples)
    impossible = np.array([e.is_impossible for e in examples], dtype=bool)
    groups = [np.flatnonzero(impossible), np.flatnonzero(~impossible)]
    want_impossible = round(count * len(groups[0]) / len(examples))
    wanted = [want_impossible, count - want_impossible]
    rng = _rng(seed, label)
    chosen = []
    for group, n in zip(groups, wanted, strict=True):
        # A random priority per example, the n lowest win: nested samples for growing n.
        priority = rng.random(len(group))
        chosen.append(group[np.argsort(priority, kind="stable")[:n]])
    keep = np.sort(np.concatenate(chosen))
    return [examples[i] for i in keep.tolist()]


def overlap(questions: Sequence[Example], others: Sequence[Example]) -> int:
    """How many of `questions` share an id or a paragraph (context) with `others`: questions
    not held out of them."""
    ids, contexts = {e.id for e in others}, {e.context for e in others}
    return sum(1 for e in questions if e.id in ids or e.context in contexts)


def unanswerable_share(examples: Sequence[Example]) -> float:
    return sum(e.is_impossible for e in examples) / len(examples) if examples else 0.0
