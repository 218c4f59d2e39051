"""Which questions train, which calibrate the no-answer threshold, which are scored.

Pure functions over parsed examples (and, for gold answers, over the decoded JSON):

* file specs: `name` or `name[a:b]`, a Python slice over the file's *articles* (like the
  `split="train[:10]"` slicing of Hugging Face datasets, but by article, so a slice never cuts a
  paragraph's questions apart); `--train-file` takes several, comma-separated;
* the calibration holdout: a seeded fraction of whole articles of every training file, kept out
  of training so the no-answer threshold is tuned on questions the model never saw (whole
  articles, because questions of one paragraph share their context and would leak);
* a seeded sample of N questions that keeps the share of unanswerable questions.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from squadft.data.squad import Example
from squadft.errors import ConfigError

_SPEC = re.compile(r"^(?P<name>[^\[\]]+?)(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


@dataclass(frozen=True)
class FileSpec:
    """A data file under --source and, optionally, a slice of its articles."""

    name: str
    start: int | None = None
    stop: int | None = None

    @property
    def sliced(self) -> bool:
        return self.start is not None or self.stop is not None

    def articles(self, count: int) -> range:
        """The article indices this spec selects in a file of `count` articles."""
        return range(count)[slice(self.start, self.stop)]

    def __str__(self) -> str:
        if not self.sliced:
            return self.name
        return f"{self.name}[{'' if self.start is None else self.start}:" \
               f"{'' if self.stop is None else self.stop}]"


def parse_file_spec(text: str) -> FileSpec:
    """`name`, `name[a:b]`, `name[:b]` or `name[a:]` (article indices, negative from the end)."""
    match = _SPEC.match(text.strip())
    if match is None:
        raise ConfigError(f"invalid data file {text!r}: expected NAME or NAME[START:STOP] "
                          "(a slice of its articles, e.g. dev-v2.0.json[:8])")

    def bound(value: str | None) -> int | None:
        return int(value) if value not in (None, "", "-") else None

    if match["start"] == "-" or match["stop"] == "-":
        raise ConfigError(f"invalid article slice in {text!r}")
    return FileSpec(match["name"].strip(), bound(match["start"]), bound(match["stop"]))


def parse_file_list(text: str) -> list[FileSpec]:
    """Comma-separated file specs (at least one, no duplicates)."""
    specs = [parse_file_spec(part) for part in text.split(",") if part.strip()]
    if not specs:
        raise ConfigError("no data file given")
    seen = set()
    for spec in specs:
        if str(spec) in seen:
            raise ConfigError(f"data file {spec} is listed twice")
        seen.add(str(spec))
    return specs


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
    """A seeded choice of round(fraction x articles) whole articles (at least one, never all).

    `examples` are one file's selected examples; `label` (the file name) makes the choice of
    each file independent. Returns the chosen article indices; empty when the file has fewer
    than two articles or `fraction` is 0.
    """
    articles = sorted({e.article for e in examples})
    if fraction <= 0 or len(articles) < 2:
        return set()
    count = min(len(articles) - 1, max(1, round(fraction * len(articles))))
    chosen = _rng(seed, "calibration", label).choice(len(articles), size=count, replace=False)
    return {articles[i] for i in chosen.tolist()}


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


def unanswerable_share(examples: Sequence[Example]) -> float:
    return sum(e.is_impossible for e in examples) / len(examples) if examples else 0.0
