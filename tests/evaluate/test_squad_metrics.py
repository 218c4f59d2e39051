"""The SQuAD 2.0 metric: hand-made cases per rule, and equivalence with an independent reference."""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

import pytest
from squadft.errors import DataError
from squadft.evaluate.squad_metrics import (
    check_predictions,
    compute_exact,
    compute_f1,
    evaluate_predictions,
    find_best_threshold,
    normalize_answer,
)

# --- normalisation, one rule at a time ---------------------------------------------------------


def test_lower_cases() -> None:
    assert normalize_answer("Denver BRONCOS") == "denver broncos"


def test_removes_punctuation() -> None:
    assert normalize_answer("Paris, France!") == "paris france"
    assert normalize_answer("U.S.") == "us"
    # Punctuation goes before articles are matched: "the-cat" becomes one word.
    assert normalize_answer("the-cat") == "thecat"


def test_removes_articles_as_whole_words_only() -> None:
    assert normalize_answer("The cat and an owl saw a dog") == "cat and owl saw dog"
    assert normalize_answer("theatre another anthem") == "theatre another anthem"


def test_collapses_whitespace() -> None:
    assert normalize_answer("  New \t York\n City ") == "new york city"


def test_exact_uses_normalisation() -> None:
    assert compute_exact("The Eiffel Tower", "eiffel tower.") == 1
    assert compute_exact("Eiffel Tower", "Eiffel") == 0


def test_f1_token_overlap() -> None:
    assert compute_f1("the cat sat", "cat sat on mat") == pytest.approx(2 * 0.5 * 1 / 1.5)
    # Repeated tokens count as often as they occur on both sides.
    assert compute_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert compute_f1("alpha", "beta") == 0.0


def test_f1_with_empty_sides() -> None:
    assert compute_f1("", "") == 1.0
    assert compute_f1("", "something") == 0.0
    assert compute_f1("something", "") == 0.0
    # An answer that normalises to nothing behaves like "no answer".
    assert compute_f1("the", "") == 1.0


# --- whole-dataset scoring ----------------------------------------------------------------------


def test_multi_reference_takes_the_max() -> None:
    gold = {"q": ["Paris", "the city of Paris", "France"]}
    result = evaluate_predictions(gold, {"q": "city of Paris"})
    assert result["exact"] == 100.0
    partial = evaluate_predictions(gold, {"q": "Paris France"})
    # Best reference: "Paris" (P=1/2, R=1) or "France" (same) -> 2/3; never averaged.
    assert partial["exact"] == 0.0
    assert partial["f1"] == pytest.approx(100 * 2 / 3)


def test_unanswerable_questions_score_only_the_empty_prediction() -> None:
    gold = {"impossible": [], "possible": ["Normandy"]}
    both_right = evaluate_predictions(gold, {"impossible": "", "possible": "Normandy"})
    assert both_right["exact"] == both_right["f1"] == 100.0
    assert both_right["NoAns_total"] == 1 and both_right["HasAns_total"] == 1
    wrong = evaluate_predictions(gold, {"impossible": "Normandy", "possible": ""})
    assert wrong["exact"] == wrong["f1"] == 0.0
    assert wrong["HasAns_f1"] == wrong["NoAns_f1"] == 0.0


def test_answerable_gold_that_normalises_to_nothing_counts_as_has_answer() -> None:
    # Official behaviour: has-answer is decided by the raw list, the references by normalisation.
    result = evaluate_predictions({"q": ["The"]}, {"q": ""})
    assert result["exact"] == 100.0
    assert result["HasAns_total"] == 1 and "NoAns_total" not in result


def test_keys_and_breakdowns() -> None:
    gold = {"a": ["x"], "b": ["y"], "c": []}
    result = evaluate_predictions(gold, {"a": "x", "b": "z", "c": ""})
    assert list(result) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                            "NoAns_exact", "NoAns_f1", "NoAns_total"]
    assert result["exact"] == pytest.approx(200 / 3)
    assert result["HasAns_exact"] == 50.0 and result["NoAns_exact"] == 100.0


def test_na_prob_threshold_turns_predictions_into_no_answer() -> None:
    gold = {"a": ["x"], "b": []}
    predictions = {"a": "x", "b": "wrong"}
    na_probs = {"a": 0.2, "b": 0.9}
    assert evaluate_predictions(gold, predictions, na_probs, na_prob_thresh=1.0)["exact"] == 50.0
    result = evaluate_predictions(gold, predictions, na_probs, na_prob_thresh=0.5)
    assert result["exact"] == 100.0
    # Above 0.1 even the right answer to "a" becomes "no answer".
    assert evaluate_predictions(gold, predictions, na_probs, na_prob_thresh=0.1)["exact"] == 50.0


def test_best_threshold_search_by_hand() -> None:
    # Sorted by na_prob: a (has, right) 0.1, b (no, answered) 0.3, c (has, right) 0.5,
    # d (no, answered) 0.7, e (has, F1 0.5) 0.8.
    gold = {"a": ["x"], "b": [], "c": ["y"], "d": [], "e": ["p q"]}
    predictions = {"a": "x", "b": "oops", "c": "y", "d": "oops", "e": "p"}
    na_probs = {"a": 0.1, "b": 0.3, "c": 0.5, "d": 0.7, "e": 0.8}
    # Start (all no-answer): 2 right. +a=3 @0.1, -b=2 @0.3, +c=3 @0.5, -d=2, +e: EM 2 / F1 2.67.
    # The best EM (3) is reached first at 0.1; the best F1 is also 3 at 0.1.
    result = evaluate_predictions(gold, predictions, na_probs)
    assert result["best_exact"] == pytest.approx(60.0)
    assert result["best_exact_thresh"] == 0.1
    assert result["best_f1"] == pytest.approx(60.0)
    assert result["best_f1_thresh"] == 0.1
    # Make "e" fully right and answering everything past d pays off: 3 at 0.8 is not > 3 at 0.1,
    # so the first best stays (strict improvement, as in the official sweep).
    predictions["e"] = "p q"
    assert evaluate_predictions(gold, predictions, na_probs)["best_exact_thresh"] == 0.1
    predictions["b"] = ""
    result = evaluate_predictions(gold, predictions, na_probs)
    assert result["best_exact"] == pytest.approx(80.0)  # a, b(empty), c, then -d +e = 4
    assert result["best_exact_thresh"] == 0.5
    best, threshold = find_best_threshold(predictions, {k: 0.0 for k in gold}, na_probs,
                                          {k: bool(v) for k, v in gold.items()},
                                          start_threshold=-1.0)
    # Nothing right when answering: "answer nothing" (2 of 5) wins at the start threshold.
    assert (best, threshold) == (pytest.approx(40.0), -1.0)


def test_missing_predictions_count_as_wrong_and_extras_are_ignored() -> None:
    gold = {"a": ["x"], "b": ["y"], "c": [], "d": []}
    predictions = {"a": "x", "c": "", "zzz": "extra"}
    check = check_predictions(gold, predictions)
    assert check.missing == ("b", "d") and check.extra == ("zzz",)
    assert any("2 of 4" in w for w in check.warnings(len(gold)))
    result = evaluate_predictions(gold, predictions, {"a": 0.9, "c": 0.9, "zzz": 0.0})
    assert result["total"] == 4
    assert result["exact"] == 50.0
    assert result["HasAns_exact"] == 50.0 and result["NoAns_exact"] == 50.0
    # The missing unanswerable "d" stays wrong whatever the threshold.
    assert result["best_exact"] == 50.0


def test_non_string_prediction_is_a_data_error() -> None:
    with pytest.raises(DataError, match="prediction for a is a int"):
        evaluate_predictions({"a": ["x"]}, {"a": 3})  # type: ignore[dict-item]


def test_na_probs_must_cover_the_predictions() -> None:
    with pytest.raises(DataError, match="na_probs has no value for 1"):
        evaluate_predictions({"a": ["x"], "b": []}, {"a": "x", "b": ""}, {"a": 0.5})
    with pytest.raises(DataError, match="not a number"):
        evaluate_predictions({"a": ["x"]}, {"a": "x"}, {"a": "high"})  # type: ignore[dict-item]


def test_empty_gold_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no questions"):
        evaluate_predictions({}, {})


# --- equivalence with a straightforward reference on real data -----------------------------------


def _reference_normalize(text: str) -> str:
    punctuation = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    text = "".join(c for c in text.lower() if c not in punctuation)
    words = re.sub(r"\b(a|an|the)\b", " ", text).split()
    return " ".join(words)


def _reference_f1(gold: str, prediction: str) -> float:
    g = _reference_normalize(gold).split()
    p = _reference_normalize(prediction).split()
    if len(g) == 0 or len(p) == 0:
        return 1.0 if g == p else 0.0
    same = sum((Counter(g) & Counter(p)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def _reference_evaluate(
    dataset: dict[str, Any], predictions: dict[str, str], na_probs: dict[str, float],
    thresh: float,
) -> dict[str, float]:
    """evaluate-v2.0.py's algorithm, written out plainly from its description."""
    has_answer, exact, f1 = {}, {}, {}
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qid = qa["id"]
                has_answer[qid] = len(qa["answers"]) > 0
                references = [a["text"] for a in qa["answers"] if _reference_normalize(a["text"])]
                if not references:
                    references = [""]
                guess = predictions[qid]
                exact[qid] = max(
                    float(_reference_normalize(r) == _reference_normalize(guess))
                    for r in references)
                f1[qid] = max(_reference_f1(r, guess) for r in references)

    def thresholded(scores: dict[str, float]) -> dict[str, float]:
        out = {}
        for qid, value in scores.items():
            out[qid] = (0.0 if has_answer[qid] else 1.0) if na_probs[qid] > thresh else value
        return out

    def summary(e: dict[str, float], f: dict[str, float], ids: list[str]) -> list[float]:
        n = len(ids)
        return [100.0 * sum(e[i] for i in ids) / n, 100.0 * sum(f[i] for i in ids) / n, n]

    def best(scores: dict[str, float]) -> tuple[float, float]:
        score = sum(1 for q in has_answer if not has_answer[q])
        top, top_thresh = score, 0.0
        for qid in sorted(na_probs, key=lambda q: na_probs[q]):
            if has_answer[qid]:
                score += scores[qid]
            elif predictions[qid] != "":
                score -= 1
            if score > top:
                top, top_thresh = score, na_probs[qid]
        return 100.0 * top / len(scores), top_thresh

    e, f = thresholded(exact), thresholded(f1)
    ids = list(exact)
    out: dict[str, float] = {}
    for prefix, subset in (("", ids), ("HasAns_", [q for q in ids if has_answer[q]]),
                           ("NoAns_", [q for q in ids if not has_answer[q]])):
        for key, value in zip(("exact", "f1", "total"), summary(e, f, subset), strict=True):
            out[prefix + key] = value
    out["best_exact"], out["best_exact_thresh"] = best(exact)
    out["best_f1"], out["best_f1_thresh"] = best(f1)
    return out


def _perturb(answer: str, context: str, rng: random.Random) -> str:
    words = answer.split()
    choice = rng.randrange(7)
    if choice == 0:
        return answer
    if choice == 1:
        return "The " + answer.upper() + "."
    if choice == 2 and len(words) > 1:
        return " ".join(words[: rng.randrange(1, len(words))])
    if choice == 3:
        return answer + " " + " ".join(rng.sample(context.split(), 2))
    if choice == 4:
        start = rng.randrange(max(1, len(context) - 30))
        return context[start:start + rng.randrange(1, 30)]
    if choice == 5:
        return ""
    return "  " + answer.replace(" ", " , ") + " an "


def test_equivalent_to_reference_on_the_dev_subset(dev_json: dict[str, Any]) -> None:
    rng = random.Random(1234)
    gold: dict[str, list[str]] = {}
    predictions: dict[str, str] = {}
    na_probs: dict[str, float] = {}
    for article in dev_json["data"]:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                texts = [a["text"] for a in qa["answers"]]
                gold[qa["id"]] = texts
                source = rng.choice(texts) if texts and rng.random() < 0.8 else (
                    rng.choice(qa.get("plausible_answers") or [{"text": ""}])["text"])
                predictions[qa["id"]] = _perturb(source, context, rng) if source else (
                    "" if rng.random() < 0.5 else _perturb("x", context, rng))
                # Two decimals: many ties, which the sweep must break in file order.
                na_probs[qa["id"]] = round(rng.random(), 2)
    assert len(gold) == 4449
    for thresh in (1.0, 0.5):
        ours = evaluate_predictions(gold, predictions, na_probs, na_prob_thresh=thresh)
        reference = _reference_evaluate(dev_json, predictions, na_probs, thresh)
        assert set(ours) == set(reference)
        for key, value in reference.items():
            assert ours[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
        # The perturbations must exercise the metric, not trivially score 0 or 100.
        for key in ("HasAns_exact", "HasAns_f1", "NoAns_exact", "best_exact", "best_f1"):
            assert 5 < ours[key] < 95, key
