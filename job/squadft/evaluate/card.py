"""The model card (README.md in final/), so that final/ can be published as it is.

Its YAML metadata holds `model-index` with the dev scores at the calibrated threshold, HasAns
and NoAns, the "always no answer" baseline and the oracle, named as tuned on the same
questions. The text says what the model was trained from and how, which step was chosen and
on what, and how far the scores can be trusted (95% intervals over articles).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

CARD_FILE = "README.md"
_OFFICIAL_HOST = "rajpurkar.github.io"
_SETTINGS = ("learning_rate", "epochs", "max_steps", "batch_size", "grad_accum_steps",
             "max_seq_length", "doc_stride", "warmup_ratio", "weight_decay", "precision", "seed",
             "eval_steps", "select_best", "early_stopping_patience")


def _metric(kind: str, value: Any, name: str) -> dict[str, Any]:
    return {"type": kind, "value": round(float(value), 2), "name": name}


def _metrics(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    at = "at the calibrated threshold" if results.get("null_threshold_kind") == "calibrated" \
        else f"at the {results.get('null_threshold_kind', 'given')} threshold"
    metrics = [_metric("exact_match", results["exact"], f"EM {at}"),
               _metric("f1", results["f1"], f"F1 {at}")]
    for group in ("HasAns", "NoAns"):
        if f"{group}_f1" in results:
            metrics += [_metric("exact_match", results[f"{group}_exact"], f"{group} EM"),
                        _metric("f1", results[f"{group}_f1"], f"{group} F1")]
    if "always_no_answer_f1" in results:
        metrics.append(_metric("f1", results["always_no_answer_f1"],
                               "F1 of always answering no answer (baseline)"))
    if "best_f1" in results:
        metrics.append(_metric("f1", results["best_f1"],
                               "oracle F1 (threshold tuned on these same questions)"))
    return metrics


def _metadata(config: Mapping[str, Any], results: Mapping[str, Any], name: str
              ) -> dict[str, Any]:
    official = _OFFICIAL_HOST in str(config.get("source", ""))
    dataset = {"name": f"SQuAD 2.0 ({config.get('dev_file')})", "type": "squad_v2",
               "split": "validation"}
    data: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "question-answering",
                            "tags": ["squadft", "extractive-qa", "squad_v2"]}
    model = str(config.get("model", ""))
    if model and not model.startswith(("/", ".")) and model.count("/") <= 1:
        data["base_model"] = model  # a hub name; a local path means nothing to a reader
    if official:
        data["datasets"] = ["rajpurkar/squad_v2"]
    data["model-index"] = [{"name": name, "results": [{
        "task": {"type": "question-answering", "name": "Extractive question answering"},
        "dataset": dataset, "metrics": _metrics(results)}]}]
    return data


def _selection_lines(selection: Mapping[str, Any] | None) -> list[str]:
    if not selection:
        return ["- Weights: the last training step (no held-out evaluation during training)."]
    lines = [f"- Weights: step {selection.get('chosen_step')} of {selection.get('last_step')}, "
             f"chosen on {selection.get('chosen_on')}."]
    if selection.get("stopped_early_at") is not None:
        lines.append(f"- Training stopped early at step {selection['stopped_early_at']}.")
    if "margin_over_runner_up" in selection:
        value, low, high = selection["margin_over_runner_up"]
        verdict = ("within the noise: the choice is not better than the runner-up beyond "
                   "chance" if selection.get("within_noise") else "beyond the noise")
        lines.append(f"- Margin over the runner-up (step {selection.get('runner_up_step')}): "
                     f"{value:+.2f} F1 on the held-out articles, 95% interval "
                     f"[{low:+.2f}, {high:+.2f}], {verdict}.")
    curve = ", ".join(f"step {p['step']}: {p['f1']:.2f}"
                      for p in selection.get("held_out_curve", []))
    if curve:
        lines.append(f"- Held-out F1 during training: {curve}.")
    return lines


def model_card(config: Mapping[str, Any], results: Mapping[str, Any], *,
               selection: Mapping[str, Any] | None = None, name: str = "squadft") -> str:
    """The card's text: YAML metadata, then what a reader needs to trust the numbers.

    config: the run's saved configuration (credentials already redacted); results: its
    eval_results.json; selection: how the weights were chosen (train_results' `selection`).
    """
    settings = ", ".join(f"{key}={config[key]}" for key in _SETTINGS
                         if config.get(key) is not None)
    lines = ["---", yaml.safe_dump(_metadata(config, results, name), sort_keys=False).rstrip(),
             "---", "", f"# {name}", "",
             "Extractive question answering (SQuAD 2.0: a question may have no answer), "
             "fine-tuned with squadft.", "",
             "## Training", "",
             f"- Base model: {config.get('model')}",
             f"- Training data: {config.get('train_file')} from {config.get('source')}",
             f"- Settings: {settings}", *_selection_lines(selection), "",
             "## No-answer threshold", "",
             f"- {results.get('null_threshold_source', 'not recorded')}: the model answers "
             f"\"\" when null score - best span score > {results.get('null_threshold')}. "
             "It travels in squadft_inference.json.", "",
             "## Evaluation", "",
             f"{results.get('total')} questions of {config.get('dev_file')}, scored once, "
             "on these weights, with the official SQuAD 2.0 metric: "
             f"EM {results['exact']:.2f}, F1 {results['f1']:.2f} "
             f"(always no answer: F1 {results.get('always_no_answer_f1', float('nan')):.2f}). "
             "The oracle F1 in the metadata tunes the threshold on these same questions and "
             "is not an estimate of the score on new data."]
    ci = results.get("ci95")
    if isinstance(ci, Mapping) and "f1" in ci:
        lines += ["", f"95% intervals ({ci.get('method')}): EM {ci['exact']}, F1 {ci['f1']}, "
                      f"F1 minus always no answer {ci['f1_minus_no_answer']}."]
    return "\n".join(lines) + "\n"
