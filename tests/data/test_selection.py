"""Article slices, the calibration holdout and the stratified sample, on the real subsets."""

from __future__ import annotations

from typing import Any

import pytest
from squadft.data.selection import (
    holdout_articles,
    select_articles,
    select_raw_articles,
    stratified_sample,
)
from squadft.data.squad import Example, parse_squad
from squadft.errors import ConfigError
from squadft.filespec import FileSpec, parse_file_list, parse_file_spec


@pytest.fixture(scope="module")
def dev_examples(dev_json: dict[str, Any]) -> list[Example]:
    return parse_squad(dev_json)[0]


@pytest.mark.parametrize(("text", "spec"), [
    ("dev.json", FileSpec("dev.json")),
    ("dev.json[2:5]", FileSpec("dev.json", 2, 5)),
    ("dev.json[:8]", FileSpec("dev.json", None, 8)),
    ("dev.json[8:]", FileSpec("dev.json", 8, None)),
    (" sub/dev.json.gz[-2:] ", FileSpec("sub/dev.json.gz", -2, None)),
])
def test_file_specs(text: str, spec: FileSpec) -> None:
    assert parse_file_spec(text) == spec
    assert parse_file_spec(str(spec)) == spec  # printed as written


@pytest.mark.parametrize("text", ["dev.json[2]", "dev.json[a:b]", "dev.json[1:2", "[1:2]",
                                  "dev.json[1:2:3]"])
def test_bad_file_specs_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid"):
        parse_file_spec(text)


def test_file_lists() -> None:
    assert parse_file_list("a.json, b.json[:3]") == [FileSpec("a.json"),
                                                     FileSpec("b.json", None, 3)]
    with pytest.raises(ConfigError, match="listed twice"):
        parse_file_list("a.json,a.json")
    with pytest.raises(ConfigError, match="no data file"):
        parse_file_list(" , ")


def test_article_slices_select_whole_articles(dev_examples: list[Example],
                                              dev_json: dict[str, Any]) -> None:
    spec = parse_file_spec("dev[8:]")
    chosen = select_articles(dev_examples, spec, 12)
    assert {e.article for e in chosen} == {8, 9, 10, 11} and len(chosen) == 1644
    raw = select_raw_articles(dev_json, spec)
    assert [a["title"] for a in raw["data"]] == [a["title"] for a in dev_json["data"][8:]]
    assert raw["version"] == "v2.0" and len(dev_json["data"]) == 12  # input untouched
    # the negative form and the complementary slice partition the file
    assert select_articles(dev_examples, parse_file_spec("dev[-4:]"), 12) == chosen
    rest = select_articles(dev_examples, parse_file_spec("dev[:8]"), 12)
    assert len(rest) + len(chosen) == len(dev_examples)
    with pytest.raises(ConfigError, match="selects none"):
        select_articles(dev_examples, parse_file_spec("dev[12:]"), 12)


def test_holdout_takes_whole_articles_seeded_and_never_all(dev_examples: list[Example]) -> None:
    chosen = holdout_articles(dev_examples, 0.25, seed=1, label="dev")
    assert len(chosen) == 3  # 25% of 12 articles
    assert holdout_articles(dev_examples, 0.25, seed=1, label="dev") == chosen
    picks = {frozenset(holdout_articles(dev_examples, 0.25, seed=s, label="dev"))
             for s in range(8)}
    assert len(picks) > 1  # the seed matters
    assert len(holdout_articles(dev_examples, 0.01, seed=1, label="dev")) == 1  # at least one
    assert len(holdout_articles(dev_examples, 0.99, seed=1, label="dev")) == 11  # never all
    assert holdout_articles(dev_examples, 0.0, seed=1, label="dev") == set()
    one_article = [e for e in dev_examples if e.article == 3]
    assert holdout_articles(one_article, 0.5, seed=1, label="dev") == set()


def test_stratified_sample_keeps_the_unanswerable_share(dev_examples: list[Example]) -> None:
    share = sum(e.is_impossible for e in dev_examples) / len(dev_examples)  # 52.6%
    for count in (10, 100, 1000):
        sample = stratified_sample(dev_examples, count, seed=3)
        assert len(sample) == count
        assert sum(e.is_impossible for e in sample) == round(count * share)
        positions = [dev_examples.index(e) for e in sample[:20]]
        assert positions == sorted(positions)  # file order kept
    small = {e.id for e in stratified_sample(dev_examples, 100, seed=3)}
    large = {e.id for e in stratified_sample(dev_examples, 1000, seed=3)}
    assert small <= large  # nested: growing N only adds questions
    assert small != {e.id for e in stratified_sample(dev_examples, 100, seed=4)}
    assert stratified_sample(dev_examples, 10**6, seed=3) == dev_examples


def _kinds(examples: list[Example], articles: set[int]) -> set[bool]:
    return {e.is_impossible for e in examples if e.article in articles}


def test_holdout_has_answerable_and_unanswerable_questions(
    train_parsed: tuple[list[Example], Any],
) -> None:
    # the bundled train file: only articles 4 and 5 have unanswerable questions
    examples = train_parsed[0]
    label = "train-v2.0-first10.json.gz"
    picks = [holdout_articles(examples, 0.02, seed=s, label=label) for s in range(12)]
    assert all(_kinds(examples, chosen) == {True, False} for chosen in picks)
    assert all(len(chosen) == 1 for chosen in picks)  # one article has both kinds: enough
    assert {frozenset(chosen) for chosen in picks} == {frozenset({4}), frozenset({5})}
    assert holdout_articles(examples, 0.02, seed=3, label=label) == picks[3]  # seeded
    # no article has both kinds: one of each, still whole articles, one left to train on
    pure = [e for e in examples if e.article in (0, 1) or (e.article == 4 and e.is_impossible)]
    for seed in range(6):
        chosen = holdout_articles(pure, 0.02, seed=seed, label=label)
        assert _kinds(pure, chosen) == {True, False} and len(chosen) == 2 and 4 in chosen
    # no such choice leaves an article to train on: nothing is held out
    two = [e for e in pure if e.article != 1]
    assert holdout_articles(two, 0.5, seed=1, label=label) == set()
