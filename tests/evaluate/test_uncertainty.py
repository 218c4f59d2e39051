import math

import numpy as np
import pytest
from squadft.evaluate.uncertainty import (
    article_bootstrap,
    paired_f1_difference,
    score_intervals,
)


def _width(interval):
    return interval.high - interval.low


def test_one_dominant_article_gives_a_wide_interval_that_narrows_as_articles_are_added():
    # article 0: 40 questions all right; articles 1-3: 5 questions each, all wrong
    articles = [0] * 40 + [1] * 5 + [2] * 5 + [3] * 5
    values = [1.0] * 40 + [0.0] * 15
    few = article_bootstrap(articles, {"f1": values})["f1"]
    assert few.value == pytest.approx(100 * 40 / 55)
    assert _width(few) > 40  # whether article 0 is drawn decides almost everything
    widths = [_width(few)]
    for extra in (8, 32):  # add articles like the small ones, half right, half wrong
        more_articles, more_values = list(articles), list(values)
        for a in range(4, 4 + extra):
            more_articles += [a] * 5
            more_values += [float(a % 2)] * 5
        widths.append(_width(article_bootstrap(more_articles, {"f1": more_values})["f1"]))
    assert widths[0] > widths[1] > widths[2]


def test_articles_are_resampled_whole_not_questions():
    # 10 articles of 20 questions; each article is all right or all wrong
    articles = np.repeat(np.arange(10), 20)
    values = np.repeat([1.0, 0.0] * 5, 20)
    by_article = article_bootstrap(articles, {"f1": values})["f1"]
    by_question = article_bootstrap(np.arange(200), {"f1": values})["f1"]
    assert by_article.value == by_question.value == 50.0
    # clustered questions carry the information of 10 draws, not 200
    assert _width(by_article) > 3 * _width(by_question)


def test_the_interval_is_seeded_and_constant_columns_have_no_spread():
    articles = [i // 3 for i in range(30)]
    values = list(np.random.default_rng(0).random(30))
    first = article_bootstrap(articles, {"f1": values, "c": [1.0] * 30}, seed=7)
    again = article_bootstrap(articles, {"f1": values, "c": [1.0] * 30}, seed=7)
    other = article_bootstrap(articles, {"f1": values}, seed=8)
    assert first == again
    assert first["f1"] != other["f1"]
    assert (first["c"].low, first["c"].high) == (100.0, 100.0)
    assert first["f1"].low <= first["f1"].value <= first["f1"].high


def test_a_column_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="3 values for 2 questions"):
        article_bootstrap(["a", "b"], {"f1": [1.0, 0.0, 1.0]})
    with pytest.raises(ValueError, match="no questions"):
        article_bootstrap([], {"f1": []})


GOLD = {f"q{i}": ([] if i % 2 else [f"answer {i}"]) for i in range(40)}
ARTICLE_OF = {f"q{i}": i // 10 for i in range(40)}


def test_score_intervals_pair_the_model_with_always_no_answer():
    # right on every answerable question of articles 0-1, and abstains everywhere else
    predictions = {qid: (gold[0] if gold and ARTICLE_OF[qid] < 2 else "")
                   for qid, gold in GOLD.items()}
    intervals = score_intervals(GOLD, predictions, ARTICLE_OF)
    assert intervals["f1"].value == pytest.approx(75.0)
    assert intervals["exact"].value == pytest.approx(75.0)
    # always-no-answer scores 50; the paired difference is +25 and never below 0
    assert intervals["f1_minus_no_answer"].value == pytest.approx(25.0)
    assert intervals["f1_minus_no_answer"].low >= 0.0
    assert intervals["f1_minus_no_answer"].high > 25.0
    # the unpaired intervals are wider than the paired difference's
    assert _width(intervals["f1"]) >= _width(intervals["f1_minus_no_answer"])
    # a question without a prediction counts as wrong
    missing = dict(predictions)
    del missing["q0"]
    assert score_intervals(GOLD, missing, ARTICLE_OF)["f1"].value == pytest.approx(72.5)


def test_paired_difference_is_zero_for_identical_predictions_and_signed_otherwise():
    base = {qid: "" for qid in GOLD}
    better = dict(base, q0="answer 0", q2="answer 2")
    same = paired_f1_difference(GOLD, base, base, ARTICLE_OF)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    diff = paired_f1_difference(GOLD, better, base, ARTICLE_OF)
    assert diff.value == pytest.approx(100 * 2 / 40)
    assert diff.low == 0.0  # resamples without article 0 see no difference
    assert diff.contains(0.0) and not math.isclose(diff.high, 0.0)
    assert paired_f1_difference(GOLD, base, better, ARTICLE_OF).value == pytest.approx(-5.0)


def test_the_report_gives_bounds_from_two_articles_on_and_says_why_not_from_one():
    from squadft.evaluate.uncertainty import format_intervals, interval_report

    predictions = {qid: "" for qid in GOLD}
    report = interval_report(GOLD, predictions, ARTICLE_OF)
    assert report["articles"] == 4 and report["f1"][0] <= 50.0 <= report["f1"][1]
    assert report["f1_minus_no_answer"] == [0.0, 0.0]  # it is "always no answer"
    assert format_intervals(report).startswith("95% interval over 4 articles: EM [")
    one = interval_report(GOLD, predictions, {qid: 0 for qid in GOLD})
    assert "f1" not in one and one["articles"] == 1
    assert format_intervals(one) == "no 95% interval: the questions come from one article"
    # a question the parser dropped (no known article) counts as an article of its own
    partial = {qid: a for qid, a in ARTICLE_OF.items() if qid != "q0"}
    assert interval_report(GOLD, predictions, partial)["articles"] == 5
