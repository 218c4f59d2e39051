"""The no-answer threshold: calibrated on held-out questions, resolved without looking at the
evaluated ones, saved with the model; a question's answer never depends on its neighbours."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from squadft.config import Config
from squadft.data.squad import Example
from squadft.errors import ConfigError, DataError
from squadft.evaluate.calibration import (
    INFERENCE_FILE,
    InferenceSettings,
    NullThreshold,
    calibrate,
    resolve_null_threshold,
)
from squadft.evaluate.postprocess import PostprocessResult
from squadft.evaluate.squad_metrics import evaluate_predictions
from squadft.flows.evaluation import evaluate_model

from tests.evaluate.windows import build_windows
from tests.helpers import make_tiny_model


def _result(spans: dict[str, str], diffs: dict[str, float]) -> PostprocessResult:
    return PostprocessResult(predictions={}, best_spans=spans, null_score_diff=diffs,
                             null_threshold=0.0)


def test_calibrate_picks_the_f1_best_threshold_on_the_held_out_questions() -> None:
    # a, b answerable and found; c, d unanswerable. Diffs: a -3, b 1, c 2, d 4.
    gold = {"a": ["x"], "b": ["y"], "c": [], "d": []}
    result = _result({"a": "x", "b": "y", "c": "z", "d": "w"},
                     {"a": -3.0, "b": 1.0, "c": 2.0, "d": 4.0})
    calibration = calibrate(result, gold, source="2 articles")
    # any threshold in [1, 2) answers a and b and abstains on c and d: all four right
    assert 1.0 <= calibration.null_threshold < 2.0
    assert calibration.scores["f1"] == 100.0 and calibration.scores["exact"] == 100.0
    assert calibration.f1_at_zero == 75.0  # b is refused at 0
    assert calibration.always_no_answer_f1 == 50.0
    assert (calibration.questions, calibration.unanswerable) == (4, 2)
    # brute force over thresholds: nothing beats it
    for t in (-4.0, -3.0, 0.0, 1.0, 1.5, 2.0, 3.0, 5.0):
        predicted = result.predictions_at(t)
        assert evaluate_predictions(gold, predicted)["f1"] <= calibration.scores["f1"]
    assert "calibration: null threshold" in calibration.summary()
    with pytest.raises(DataError, match="empty"):
        calibrate(result, {}, source="none")


def test_resolve_null_threshold_never_looks_at_the_evaluated_data() -> None:
    calibration = calibrate(_result({"a": "x"}, {"a": -1.0}), {"a": ["x"]}, source="held out")
    auto = resolve_null_threshold("auto", calibration)
    assert (auto.value, auto.kind) == (calibration.null_threshold, "calibrated")
    assert "calibrated on 1 held-out questions (held out)" in auto.describe()
    assert resolve_null_threshold("AUTO", None).value == 0.0
    assert resolve_null_threshold("auto", None).kind == "default"
    given = resolve_null_threshold("-1.5", calibration)
    assert (given.value, given.kind) == (-1.5, "given")
    for bad in ("tuned", "nan", "inf"):
        with pytest.raises(ConfigError):
            resolve_null_threshold(bad, None)


def test_inference_settings_round_trip_and_reject_damage(tmp_path: Path) -> None:
    calibration = calibrate(_result({"a": "x", "b": "y"}, {"a": -1.0, "b": 2.0}),
                            {"a": ["x"], "b": []}, source="held out")
    cfg = Config(max_seq_length=256, doc_stride=96, max_query_length=48, n_best=10,
                 max_answer_length=20)
    settings = InferenceSettings.from_config(cfg, calibration)
    settings.save(tmp_path)
    loaded = InferenceSettings.load(tmp_path)
    assert loaded == settings
    assert loaded.config_values() == {"max_seq_length": 256, "doc_stride": 96,
                                      "max_query_length": 48, "n_best": 10,
                                      "max_answer_length": 20}
    data = json.loads((tmp_path / INFERENCE_FILE).read_text())
    assert data["null_threshold"] == calibration.null_threshold
    # the model's settings sit under env and flags
    assert Config.resolve({"doc_stride": 64}, env={"SQUADFT_N_BEST": "5"},
                          base=loaded.config_values()).to_dict()["max_seq_length"] == 256
    layered = Config.resolve({"doc_stride": 64}, env={"SQUADFT_N_BEST": "5"},
                             base=loaded.config_values())
    assert (layered.doc_stride, layered.n_best, layered.max_answer_length) == (64, 5, 20)
    assert InferenceSettings.load(tmp_path / "missing") is None
    (tmp_path / INFERENCE_FILE).write_text('{"format": "squadft-inference/1"}')
    with pytest.raises(DataError, match="malformed inference settings"):
        InferenceSettings.load(tmp_path)
    (tmp_path / INFERENCE_FILE).write_text("{")
    with pytest.raises(DataError, match="unreadable inference settings"):
        InferenceSettings.load(tmp_path)


# An edited or damaged threshold would otherwise be used as it is: NaN answers every question
# (no comparison with NaN is true), a string "0.5" was parsed as if it were a number.
@pytest.mark.parametrize("key", ["null_threshold", "calibration.null_threshold"])
@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", '"0.5"', '"nan"', "true",
                                 "[1.0]"])
def test_inference_settings_reject_a_threshold_that_is_not_a_finite_number(
    tmp_path: Path, key: str, raw: str
) -> None:
    calibration = calibrate(_result({"a": "x", "b": "y"}, {"a": -1.0, "b": 2.0}),
                            {"a": ["x"], "b": []}, source="held out")
    InferenceSettings.from_config(Config(), calibration).save(tmp_path)
    path = tmp_path / INFERENCE_FILE
    data = json.loads(path.read_text())
    holder = data["calibration"] if key.startswith("calibration.") else data
    holder["null_threshold"] = "@"
    path.write_text(json.dumps(data).replace('"@"', raw))
    with pytest.raises(DataError) as info:
        InferenceSettings.load(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and f"{key} must be a finite number" in message
    assert "\n" not in message


def test_inference_settings_reject_two_different_thresholds(tmp_path: Path) -> None:
    calibration = calibrate(_result({"a": "x", "b": "y"}, {"a": -1.0, "b": 2.0}),
                            {"a": ["x"], "b": []}, source="held out")
    InferenceSettings.from_config(Config(), calibration).save(tmp_path)
    path = tmp_path / INFERENCE_FILE
    data = json.loads(path.read_text())
    data["null_threshold"] = calibration.null_threshold + 1.0  # edited in one place only
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="null_threshold .* differs from calibration"):
        InferenceSettings.load(tmp_path)
    data["null_threshold"], data["calibration"] = calibration.null_threshold, None
    path.write_text(json.dumps(data))  # a threshold without its calibration
    with pytest.raises(DataError, match="null_threshold .* differs from calibration"):
        InferenceSettings.load(tmp_path)


@pytest.fixture(scope="module")
def scored_alone_and_together(dev_subset_examples: list[Example], bert_tokenizer: Any,
                              tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """Predictions of 24 dev questions, each scored alone and all scored together."""
    examples = dev_subset_examples[200:224]
    model = make_tiny_model(len(bert_tokenizer))
    cfg = Config(eval_batch_size=8, precision="fp32")
    out = tmp_path_factory.mktemp("alone")
    threshold = resolve_null_threshold("auto", None)

    def predictions(chosen: list[Example], name: str) -> dict[str, str]:
        features = build_windows(chosen, bert_tokenizer, max_seq_length=96, doc_stride=32)
        evaluate_model(model, chosen, features, cfg=cfg, threshold=threshold,
                       output_dir=out / name, device="cpu")
        return json.loads((out / name / "predictions.json").read_text())

    # a threshold fixed in advance that falls among these questions' scores (the untrained
    # model's median null score difference), as a calibrated one would
    predictions(examples, "probe")
    probe = json.loads((out / "probe" / "na_probs.json").read_text())
    median = sorted(math.log(p / (1 - p)) for p in probe.values())[len(probe) // 2]
    threshold = NullThreshold(median, "calibrated", "test")
    together = predictions(examples, "together")
    alone = {}
    for i, example in enumerate(examples):
        alone.update(predictions([example], f"alone-{i}"))
    na_probs = json.loads((out / "together" / "na_probs.json").read_text())
    return together, alone | {"_na_probs": na_probs, "_threshold": threshold.value}


def test_a_questions_answer_does_not_depend_on_the_other_questions(
    scored_alone_and_together: tuple[dict, dict]
) -> None:
    together, alone = scored_alone_and_together
    na_probs, threshold = alone.pop("_na_probs"), alone.pop("_threshold")
    assert alone == together
    # the case is not trivial: the threshold in effect answers some and refuses others
    refused = {q for q, p in na_probs.items() if p > 1 / (1 + math.exp(-threshold))}
    assert refused and refused != set(together)
    assert {q for q, text in together.items() if text == ""} >= refused
