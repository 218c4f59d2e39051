"""final/README.md is a Hugging Face model card: huggingface_hub reads its metadata."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard
from squadft.evaluate.card import model_card

RESULTS = {
    "exact": 52.1, "f1": 53.004, "total": 1644, "HasAns_exact": 30.0, "HasAns_f1": 37.68,
    "HasAns_total": 829, "NoAns_exact": 68.59, "NoAns_f1": 68.59, "NoAns_total": 815,
    "null_threshold": -6.707, "null_threshold_kind": "calibrated",
    "null_threshold_source": "calibrated on 676 held-out questions (dev[4:6])",
    "always_no_answer_f1": 49.57, "best_exact": 54.0, "best_f1": 54.96, "best_f1_thresh": 0.3,
    "ci95": {"method": "bootstrap over 4 articles", "articles": 4, "exact": [48.0, 56.0],
             "f1": [49.0, 57.0], "f1_minus_no_answer": [-1.0, 7.5],
             "exact_minus_no_answer": [-2.0, 6.0]},
}
SELECTION = {"chosen_step": 560, "last_step": 974, "chosen_on": "F1 on the held-out articles",
             "stopped_early_at": None, "runner_up_step": 974,
             "margin_over_runner_up": [0.8, -0.5, 2.1], "within_noise": True,
             "held_out_curve": [{"step": 280, "f1": 50.1}, {"step": 560, "f1": 54.2},
                                {"step": 974, "f1": 53.4}]}
CONFIG = {"model": "distilbert-base-uncased",
          "source": "https://rajpurkar.github.io/SQuAD-explorer/dataset/",
          "train_file": "train-v2.0.json", "dev_file": "dev-v2.0.json", "learning_rate": 3e-5,
          "epochs": 2.0, "batch_size": 32, "seed": 42}


def _card(tmp_path: Path, **kwargs) -> ModelCard:
    path = tmp_path / "README.md"
    path.write_text(model_card(CONFIG, RESULTS, **kwargs), encoding="utf-8")
    return ModelCard.load(path)


def test_the_card_holds_a_model_index_that_huggingface_hub_reads(tmp_path: Path) -> None:
    card = _card(tmp_path, selection=SELECTION, name="run-7")
    data = card.data.to_dict()
    assert data["base_model"] == "distilbert-base-uncased"
    assert data["datasets"] == ["rajpurkar/squad_v2"]
    assert data["pipeline_tag"] == "question-answering"
    assert card.data.eval_results
    (result,) = data["model-index"][0]["results"]
    assert data["model-index"][0]["name"] == "run-7"
    assert result["dataset"]["type"] == "squad_v2"
    metrics = {m["name"]: m["value"] for m in result["metrics"]}
    assert metrics["F1 at the calibrated threshold"] == 53.0
    assert metrics["EM at the calibrated threshold"] == 52.1
    assert metrics["HasAns F1"] == 37.68 and metrics["NoAns F1"] == 68.59
    assert metrics["F1 of always answering no answer (baseline)"] == 49.57
    assert metrics["oracle F1 (threshold tuned on these same questions)"] == 54.96
    # huggingface_hub's own view of the results
    assert {r.metric_name for r in card.data.eval_results} == set(metrics)


def test_the_card_says_what_was_chosen_how_and_how_sure(tmp_path: Path) -> None:
    text = _card(tmp_path, selection=SELECTION).text
    assert "Weights: step 560 of 974, chosen on F1 on the held-out articles." in text
    assert "within the noise" in text and "[-0.50, +2.10]" in text
    assert "step 280: 50.10, step 560: 54.20, step 974: 53.40" in text
    assert "calibrated on 676 held-out questions (dev[4:6])" in text and "-6.707" in text
    assert "F1 minus always no answer [-1.0, 7.5]" in text
    assert "learning_rate=3e-05" in text and "Base model: distilbert-base-uncased" in text
    plain = _card(tmp_path, selection=None).text
    assert "the last training step (no held-out evaluation during training)" in plain


def test_a_local_base_model_and_data_are_not_named_as_hub_ids(tmp_path: Path) -> None:
    config = {**CONFIG, "model": "/models/minilm", "source": "file:///data/squad"}
    data = _card_data(tmp_path, config)
    assert "base_model" not in data and "datasets" not in data


def _card_data(tmp_path: Path, config: dict) -> dict:
    path = tmp_path / "local.md"
    path.write_text(model_card(config, RESULTS), encoding="utf-8")
    return ModelCard.load(path).data.to_dict()
