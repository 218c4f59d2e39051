"""Model selection on the held-out articles: evaluation points, the best checkpoint in final/,
early stopping, and a resume that neither repeats nor loses an evaluation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from squadft.config import Config
from squadft.evaluate.calibration import Calibration
from squadft.flows import training
from squadft.storage.manifest import verify_manifest
from squadft.train.selection import HeldOutResult, Selection, eval_points

from .common import load_weights, max_weight_difference, read_metrics


def _calibration(f1: float, step: int | None = None, threshold: float = 0.5) -> Calibration:
    return Calibration(null_threshold=threshold, source="held out", questions=10,
                       unanswerable=5, scores={"exact": f1, "f1": f1, "total": 10},
                       f1_at_zero=f1 - 1, always_no_answer_f1=50.0, loss=2.0, step=step)


def test_eval_points_by_steps_and_by_epoch_always_end_with_the_last_step():
    assert eval_points(10, 4, steps_per_epoch=100) == [4, 8, 10]
    assert eval_points(12, 4, steps_per_epoch=100) == [4, 8, 12]
    # 0: at each epoch's end, a fractional last epoch included
    assert eval_points(25, 0, steps_per_epoch=10) == [10, 20, 25]
    assert eval_points(30, 0, steps_per_epoch=10) == [10, 20, 30]
    assert eval_points(7, 0, steps_per_epoch=10) == [7]
    assert eval_points(10, 0, steps_per_epoch=3.5) == [4, 7, 10]


def test_selection_keeps_the_best_and_counts_evaluations_since():
    selection = Selection()
    assert selection.record(_calibration(40.0, 2), 2)
    assert selection.record(_calibration(45.0, 4), 4)
    assert not selection.record(_calibration(45.0, 6), 6)  # equal is not better
    assert not selection.record(_calibration(45.4, 8), 8, min_delta=0.5)  # not by enough
    assert selection.best_step == 4 and selection.since_best == 2
    assert selection.should_stop(2) and not selection.should_stop(3)
    assert not selection.should_stop(0)  # 0: never
    assert selection.best_calibration() == _calibration(45.0, 4)
    assert [e["step"] for e in selection.history] == [2, 4, 6, 8]
    assert selection.history[0] == {"step": 2, "f1": 40.0, "exact": 40.0,
                                    "null_threshold": 0.5, "f1_at_zero": 39.0,
                                    "always_no_answer_f1": 50.0, "loss": 2.0}
    again = Selection.from_dict(json.loads(json.dumps(selection.to_dict())))
    assert again == selection and Selection.from_dict({}) == Selection()


class ScriptedHeldOut:
    """Stands in for the held-out evaluation: the F1 of each step comes from a script (the
    model's own scores would not peak where a test needs them to)."""

    def __init__(self, f1_by_step: dict[int, float]) -> None:
        self.f1_by_step = f1_by_step
        self.calls: list[int] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = training.held_out_evaluator

        def evaluator(cfg: Config, ctx: Any, data: Any) -> Any:
            evaluate = real(cfg, ctx, data)
            assert evaluate is not None  # the tiny runs hold articles out

            def scripted(model: Any, step: int) -> HeldOutResult:
                self.calls.append(step)
                result = evaluate(model, step)  # the real thing, then its F1 rewritten
                calibration = result.calibration
                return replace(result, calibration=replace(
                    calibration, scores={**calibration.scores, "f1": self.f1_by_step[step]},
                    null_threshold=float(step)))
            return scripted

        monkeypatch.setattr(training, "held_out_evaluator", evaluator)


def test_the_best_held_out_step_becomes_final_with_its_threshold(
    tiny_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    held_out = ScriptedHeldOut({2: 30.0, 4: 50.0, 6: 40.0})
    held_out.install(monkeypatch)
    settings = tiny_settings(max_steps=6, eval_steps=2, save_total_limit=1, do_eval=True)
    result = training.train(Config(**settings))
    out = Path(settings["output_dir"])
    assert held_out.calls == [2, 4, 6] and result.steps == 6
    # final/ holds step 4's weights and threshold, not the last ones
    assert max_weight_difference(load_weights(out / "final"),
                                 load_weights(out / "checkpoint-4")) == 0
    assert max_weight_difference(load_weights(out / "final"),
                                 load_weights(out / "checkpoint-6")) > 0
    inference = json.loads((out / "final" / "squadft_inference.json").read_text())
    assert inference["null_threshold"] == 4.0 and inference["calibration"]["step"] == 4
    # the best checkpoint survives rotation (limit 1) next to the newest
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["null_threshold"] == 4.0
    assert results["selection"]["chosen_step"] == 4 and results["selection"]["last_step"] == 6
    assert [p["f1"] for p in results["selection"]["held_out_curve"]] == [30.0, 50.0, 40.0]
    assert "dev data took no part" in results["selection"]["chosen_on"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "heldout" in x] == [2, 4, 6]
    assert [x["step"] for x in lines if "eval" in x] == [6]  # the dev data: once, at the end
    # the model card: the dev scores in its metadata, the choice in its text
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "final" / "README.md")
    f1 = {m.metric_name: m.metric_value for m in card.data.eval_results}
    assert f1["F1 at the calibrated threshold"] == round(results["f1"], 2)
    assert "Weights: step 4 of 6" in card.text
    assert verify_manifest(out / "final")  # the card is in final/'s manifest
    # the chosen step's per-question held-out F1, for paired comparisons across a sweep
    scores = json.loads((out / "heldout_scores.json").read_text())
    assert scores["step"] == 4 and len(scores["f1"]) == len(scores["articles"]) > 100
    assert "question_f1" not in json.loads((out / "train_results.json").read_text())["selection"]


def test_early_stopping_saves_the_best_and_says_why(
    tiny_settings: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    held_out = ScriptedHeldOut({2: 50.0, 4: 45.0, 6: 50.2, 8: 60.0, 10: 60.0})
    held_out.install(monkeypatch)
    settings = tiny_settings(max_steps=10, eval_steps=2, early_stopping_patience=2,
                             early_stopping_threshold=0.5)
    result = training.train(Config(**settings))
    out = Path(settings["output_dir"])
    err = capsys.readouterr().err
    assert held_out.calls == [2, 4, 6] and result.steps == 6
    assert ("early stopping at step 6/10: 2 held-out evaluations in a row did not beat F1 "
            "50.00 (step 2) by 0.5 points") in err
    assert max_weight_difference(load_weights(out / "final"),
                                 load_weights(out / "checkpoint-2")) == 0
    assert result.selection["stopped_early_at"] == 6 and result.selection["chosen_step"] == 2
    # started again, the early-stopped run neither trains nor evaluates further
    (out / "finished.json").unlink()  # as if preempted after the stop was decided
    held_out.calls.clear()
    again = training.train(Config(**settings))
    assert held_out.calls == [] and again.steps == 6
    assert again.selection["chosen_step"] == 2


def test_without_select_best_final_is_the_last_step_and_its_evaluation_is_reused(
    tiny_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    held_out = ScriptedHeldOut({2: 50.0, 4: 40.0})
    held_out.install(monkeypatch)
    settings = tiny_settings(max_steps=4, eval_steps=2, select_best=False, save_total_limit=1)
    result = training.train(Config(**settings))
    out = Path(settings["output_dir"])
    assert held_out.calls == [2, 4]  # no calibration of its own after training
    inference = json.loads((out / "final" / "squadft_inference.json").read_text())
    assert inference["null_threshold"] == 4.0 and result.selection["chosen_step"] == 4
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]


def test_a_resume_neither_repeats_nor_loses_an_evaluation(
    tiny_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .test_tracking import Crash, crash_at

    held_out = ScriptedHeldOut({2: 30.0, 4: 50.0, 6: 40.0, 8: 45.0})
    held_out.install(monkeypatch)
    settings = tiny_settings(max_steps=8, eval_steps=2, save_total_limit=1)
    with pytest.raises(Crash):
        training.train(Config(**settings), on_checkpoint=crash_at(6))
    assert held_out.calls == [2, 4, 6]
    held_out.calls.clear()
    result = training.train(Config(**settings))
    out = Path(settings["output_dir"])
    assert result.resumed_from == str(out / "checkpoint-6")
    assert held_out.calls == [8]
    assert result.selection["chosen_step"] == 4
    assert [p["step"] for p in result.selection["held_out_curve"]] == [2, 4, 6, 8]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "heldout" in x] == [2, 4, 6, 8]
    assert [m["step"] for m in read_metrics(out)] == list(range(1, 9))
    assert max_weight_difference(load_weights(out / "final"),
                                 load_weights(out / "checkpoint-4")) == 0


def test_the_margin_over_the_runner_up_is_paired_over_articles_and_says_when_it_is_noise():
    articles = [f"a{i // 10}" for i in range(40)]  # 4 articles of 10 questions
    last = [0.0] * 40
    clear = [1.0] * 40  # better on every article
    one_article = [1.0] * 10 + [0.0] * 30  # better on one article only
    selection = Selection()
    selection.record(HeldOutResult(_calibration(0.0, 2), last, articles), 2)
    selection.record(HeldOutResult(_calibration(100.0, 4), clear, articles), 4)
    summary = selection.summary(4)
    assert summary["runner_up_step"] == 2 and summary["within_noise"] is False
    assert summary["margin_over_runner_up"] == [100.0, 100.0, 100.0]

    noisy = Selection()
    noisy.record(HeldOutResult(_calibration(0.0, 2), last, articles), 2)
    noisy.record(HeldOutResult(_calibration(25.0, 4), one_article, articles), 4)
    value, low, high = noisy.summary(4)["margin_over_runner_up"]
    assert value == 25.0 and low == 0.0 and high > 25.0  # resamples without that article
    assert noisy.summary(4)["within_noise"] is True
    # one evaluation, or none with per-question scores: nothing to compare
    single = Selection()
    single.record(_calibration(10.0, 2), 2)
    assert single.margin() is None and "within_noise" not in single.summary(2)


def test_a_failed_held_out_evaluation_loses_no_training_and_is_redone_on_resume(
    tiny_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    held_out = ScriptedHeldOut({2: 30.0, 4: 50.0, 6: 40.0})
    held_out.install(monkeypatch)
    real = training.held_out_evaluator
    failed: list[int] = []

    def failing_once(cfg: Config, ctx: Any, data: Any) -> Any:
        evaluate = real(cfg, ctx, data)

        def run(model: Any, step: int) -> Any:
            if step == 4 and not failed:
                failed.append(step)
                raise MemoryError("the evaluation ran out of memory")
            return evaluate(model, step)
        return run

    monkeypatch.setattr(training, "held_out_evaluator", failing_once)
    settings = tiny_settings(max_steps=6, eval_steps=2, save_total_limit=0)
    out = Path(settings["output_dir"])
    with pytest.raises(MemoryError):
        training.train(Config(**settings))
    assert held_out.calls == [2] and (out / "checkpoint-4" / "manifest.json").is_file()
    result = training.train(Config(**settings))
    assert result.resumed_from == str(out / "checkpoint-4")
    assert held_out.calls == [2, 4, 6]  # step 4 evaluated first, nothing trained twice
    assert result.selection["chosen_step"] == 4
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "heldout" in x] == [2, 4, 6]
    assert [m["step"] for m in read_metrics(out)] == list(range(1, 7))
