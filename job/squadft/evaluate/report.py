"""Evaluation and prediction at the I/O edge: read files, run the model, write SQuAD-format outputs.

Files written by `evaluate_model` (atomically) into its output directory:

- predictions.json        {id: answer text}, "" = no answer (official evaluate-v2.0.py format),
                          at the null threshold in effect (tuned when null_threshold is "auto");
- na_probs.json           {id: sigmoid(null score - best span score)}: the official script's
                          --na-prob-file; a threshold p on it is the score threshold logit(p);
- nbest_predictions.json  {id: [{text, probability, start_logit, end_logit, score,
                          answer_start}, ...]} best first, the null answer ("" / -1) included;
- eval_results.json       the official keys for predictions.json + na_probs.json, plus
                          raw_* (at the fixed threshold, 0.0 under "auto") and tuned_* (at the
                          F1-maximising threshold found on this data: optimistic) variants.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from squadft.config import Config
from squadft.errors import ConfigError, DataError
from squadft.evaluate.postprocess import (
    PostprocessResult,
    nbest_json_arrays,
    postprocess_predictions,
    sigmoid,
    tune_null_threshold,
)
from squadft.evaluate.squad_metrics import check_predictions, evaluate_predictions
from squadft.io import atomic_open, atomic_write_json, read_json_file

V2_VERSIONS = frozenset({"v2.0", "2.0"})
OFFICIAL_KEYS = (
    "exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
    "NoAns_exact", "NoAns_f1", "NoAns_total",
)


# --- reading ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class GoldStandard:
    """Reference answers exactly as the dataset file has them (no offset repairs)."""

    answers: dict[str, list[str]]  # id -> answer texts; [] = unanswerable
    version: str | None

    def version_warning(self) -> str | None:
        if self.version in V2_VERSIONS:
            return None
        return (f"dataset version is {self.version!r}, not v2.0; scoring with the SQuAD 2.0 "
                "rules anyway (questions without answers count as unanswerable)")


def gold_from_squad(data: Any, source: str = "<memory>") -> GoldStandard:
    """Id -> answer texts from decoded SQuAD JSON, read the way the official script reads it."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{source}: not a SQuAD file (no top-level 'data' list)")
    answers: dict[str, list[str]] = {}
    try:
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    # Like the official script: `answers` alone decides (plausible_answers of
                    # unanswerable questions are never gold).
                    texts = [answer["text"] for answer in qa.get("answers", [])]
                    if not all(isinstance(text, str) for text in texts):
                        raise DataError(f"{source}: question {qa['id']}: non-string answer text")
                    answers[str(qa["id"])] = texts
    except (KeyError, TypeError) as exc:
        raise DataError(f"{source}: malformed SQuAD structure ({type(exc).__name__}: {exc})"
                        ) from None
    if not answers:
        raise DataError(f"{source}: the dataset has no questions")
    version = data.get("version")
    return GoldStandard(answers, version if isinstance(version, str) else None)


def load_gold(path: str | Path) -> GoldStandard:
    return gold_from_squad(read_json_file(path, "dataset"), str(path))


def gold_from_examples(examples: Iterable[Any]) -> dict[str, list[str]]:
    return {e.id: [] if e.is_impossible else [a.text for a in e.answers] for e in examples}


def load_predictions(path: str | Path) -> dict[str, Any]:
    data = read_json_file(path, "predictions")
    if not isinstance(data, dict):
        raise DataError(f"predictions {path}: expected a JSON object {{id: answer text}}, "
                        f"got {type(data).__name__}")
    return data


def load_na_probs(path: str | Path) -> dict[str, float]:
    data = read_json_file(path, "na_probs")
    if not isinstance(data, dict):
        raise DataError(f"na_probs {path}: expected a JSON object {{id: probability}}, "
                        f"got {type(data).__name__}")
    for qid, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DataError(f"na_probs {path}: value for {qid} is not a number")
    return data


# --- scoring files ------------------------------------------------------------------------------

@dataclass
class ScoreReport:
    metrics: dict[str, float | int]
    warnings: list[str] = field(default_factory=list)


def score_files(
    predictions_path: str | Path,
    data_path: str | Path,
    *,
    na_probs_path: str | Path | None = None,
    na_prob_thresh: float = 1.0,
) -> ScoreReport:
    """What `evaluate-v2.0.py data predictions [--na-prob-file]` computes, plus warnings."""
    gold = load_gold(data_path)
    predictions = load_predictions(predictions_path)
    na_probs = load_na_probs(na_probs_path) if na_probs_path is not None else None
    warnings = []
    if (message := gold.version_warning()) is not None:
        warnings.append(message)
    check = check_predictions(gold.answers, predictions)
    if check.non_string:
        qid = check.non_string[0]
        raise DataError(
            f"predictions {predictions_path}: answer for {qid} is a "
            f"{type(predictions[qid]).__name__}, not a string ({len(check.non_string)} such)"
        )
    if len(check.missing) == len(gold.answers):
        raise DataError(f"predictions {predictions_path}: no prediction matches a question "
                        f"id of {data_path}")
    warnings.extend(check.warnings(len(gold.answers)))
    metrics = evaluate_predictions(gold.answers, predictions, na_probs, na_prob_thresh)
    return ScoreReport(metrics=metrics, warnings=warnings)


# --- writing ------------------------------------------------------------------------------------

def write_prediction_files(
    output_dir: str | Path,
    predictions: Mapping[str, str],
    result: PostprocessResult,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """predictions.json, na_probs.json, nbest_predictions.json (+ eval_results.json), atomically."""
    output_dir = Path(output_dir)
    paths = {
        "predictions": output_dir / "predictions.json",
        "na_probs": output_dir / "na_probs.json",
        "nbest": output_dir / "nbest_predictions.json",
    }
    atomic_write_json(paths["predictions"], dict(predictions))
    atomic_write_json(paths["na_probs"], result.na_probs())
    with atomic_open(paths["nbest"], "wb") as handle:
        # Written in pieces: the full dev set's n-best lists are ~100 MB as one string.
        handle.write(b"{\n")
        for i, (qid, candidates) in enumerate(nbest_json_arrays(result.nbest)):
            entry = json.dumps(qid) + ": " + candidates
            handle.write(((",\n" if i else "") + entry).encode("utf-8"))
        handle.write(b"\n}\n")
    if metrics is not None:
        paths["results"] = output_dir / "eval_results.json"
        atomic_write_json(paths["results"], _json_safe(metrics))
    return paths


def _json_safe(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Strict JSON has no infinities: a threshold of +-inf is written as a string."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in metrics.items()}


# --- evaluating a model -------------------------------------------------------------------------

def parse_null_threshold(value: str | float) -> float | None:
    """None for "auto" (tune on the data), else the fixed threshold."""
    if isinstance(value, int | float):
        return float(value)
    if value.strip().lower() == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"null threshold must be 'auto' or a number (got {value!r})") from None


def score_postprocessed(
    result: PostprocessResult,
    gold: Mapping[str, list[str]],
    *,
    null_threshold: str | float,
) -> tuple[dict[str, Any], dict[str, str]]:
    """(metrics, predictions to write) for post-processed logits: raw, tuned and final scores."""
    fixed = parse_null_threshold(null_threshold)
    raw_threshold = 0.0 if fixed is None else fixed
    na_probs = result.na_probs()
    raw_predictions = result.predictions_at(raw_threshold)
    raw = evaluate_predictions(gold, _only(raw_predictions, gold), None)
    tuned = tune_null_threshold(result, gold)
    final_threshold = tuned.null_threshold if fixed is None else raw_threshold
    final_predictions = tuned.predictions if fixed is None else raw_predictions

    metrics: dict[str, Any] = dict(
        evaluate_predictions(gold, _only(final_predictions, gold), _only(na_probs, gold))
    )
    metrics["null_threshold"] = final_threshold
    metrics["null_threshold_mode"] = "auto" if fixed is None else "fixed"
    metrics["no_answer_probability_threshold"] = sigmoid(final_threshold)
    metrics["raw_null_threshold"] = raw_threshold
    metrics.update({f"raw_{k}": raw[k] for k in OFFICIAL_KEYS if k in raw})
    metrics["tuned_null_threshold"] = tuned.null_threshold
    metrics.update({f"tuned_{k}": tuned.metrics[k] for k in OFFICIAL_KEYS if k in tuned.metrics})
    return metrics, final_predictions


def _only(values: Mapping[str, Any], gold: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k in gold}


def _distributed_rank() -> int:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def evaluate_model(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Any],
    features: Any,
    *,
    cfg: Config,
    output_dir: str | Path,
    device: Any,
    gold: Mapping[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Logits -> predictions -> metrics; rank 0 writes the files into `output_dir`.

    Call it on every rank when torch.distributed is initialised (each rank runs its share of
    the windows); every rank returns the same metrics dict. `gold` defaults to the examples'
    answers; pass `load_gold(...)`'s answers to score against the raw file like the official
    script. cfg supplies eval_batch_size, precision, n_best, max_answer_length and
    null_threshold. `tokenizer` is unused today and kept so callers need not change when
    decoding needs it (e.g. for tokenizers without offsets).
    """
    import torch

    from squadft.evaluate.inference import predict_logits

    del tokenizer
    began = time.perf_counter()
    start_logits, end_logits = predict_logits(
        model, features, batch_size=cfg.eval_batch_size, device=device,
        precision=cfg.precision,
    )
    inference_seconds = time.perf_counter() - began
    metrics: dict[str, Any] | None = None
    if _distributed_rank() == 0:
        began = time.perf_counter()
        result = postprocess_predictions(
            examples, features, start_logits, end_logits, n_best=cfg.n_best,
            max_answer_length=cfg.max_answer_length,
            null_threshold=parse_null_threshold(cfg.null_threshold) or 0.0,
        )
        postprocess_seconds = time.perf_counter() - began
        metrics, predictions = score_postprocessed(
            result, gold if gold is not None else gold_from_examples(examples),
            null_threshold=cfg.null_threshold,
        )
        metrics.update(
            examples=len(examples), features=len(features),
            inference_seconds=round(inference_seconds, 3),
            postprocess_seconds=round(postprocess_seconds, 3),
        )
        write_prediction_files(output_dir, predictions, result, metrics)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [metrics]
        torch.distributed.broadcast_object_list(box, src=0)
        metrics = box[0]
    assert metrics is not None
    return metrics


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A short human summary: final, raw and tuned EM/F1 with the HasAns/NoAns split."""
    def line(label: str, prefix: str) -> str:
        parts = [f"EM {metrics[prefix + 'exact']:.2f}", f"F1 {metrics[prefix + 'f1']:.2f}"]
        for group in ("HasAns", "NoAns"):
            if prefix + group + "_exact" in metrics:
                parts.append(f"{group} EM {metrics[prefix + group + '_exact']:.2f} "
                             f"F1 {metrics[prefix + group + '_f1']:.2f} "
                             f"(n={metrics[prefix + group + '_total']})")
        return f"{label}: " + ", ".join(parts)

    lines = [line(f"questions {metrics['total']}", "")]
    if "raw_exact" in metrics:
        lines.append(line(f"raw (null threshold {metrics['raw_null_threshold']:g})", "raw_"))
    if "tuned_exact" in metrics:
        lines.append(line(f"tuned on this data (null threshold "
                          f"{metrics['tuned_null_threshold']:.4g})", "tuned_"))
    if "best_f1" in metrics:
        lines.append(f"best_exact {metrics['best_exact']:.2f}, best_f1 {metrics['best_f1']:.2f}")
    return "\n".join(lines)


# --- commands: evaluate a saved model, answer questions -----------------------------------------

@dataclass
class EvaluationRun:
    metrics: dict[str, Any]
    warnings: list[str]
    output_dir: Path
    is_main: bool  # False on ranks > 0 of a distributed run (they print nothing)


def run_evaluation(
    cfg: Config, *, model_dir: str, data_path: str | Path, output_dir: str | Path
) -> EvaluationRun:
    """`squadft evaluate`: load a save_pretrained model, tokenize `data_path`, score, write.

    Runs distributed when launched with torchrun/srun (each rank its share of the windows).
    """
    from squadft.data.features import build_features
    from squadft.data.squad import load_squad
    from squadft.modeling import load_model, load_tokenizer
    from squadft.train.distributed import barrier, cleanup, setup_distributed

    gold = load_gold(data_path)
    examples, _ = load_squad(data_path)
    warnings = [message] if (message := gold.version_warning()) is not None else []
    answers = gold.answers
    if cfg.max_eval_samples is not None:
        examples = examples[:cfg.max_eval_samples]
        kept = {example.id for example in examples}
        answers = {qid: texts for qid, texts in answers.items() if qid in kept}
    unparsed = len(answers) - sum(1 for example in examples if example.id in answers)
    if unparsed and cfg.max_eval_samples is None:
        warnings.append(f"{unparsed} questions of {data_path} could not be used (see the "
                        "parse report) and count as wrong")
    tokenizer = load_tokenizer(model_dir)
    features, _ = build_features(examples, tokenizer, max_seq_length=cfg.max_seq_length,
                                 doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length)
    ctx = setup_distributed()
    try:
        model = load_model(model_dir).to(ctx.device)
        metrics = evaluate_model(model, tokenizer, examples, features, cfg=cfg,
                                 output_dir=output_dir, device=ctx.device, gold=answers)
        barrier(ctx)  # nobody tears the group down while a peer is still in a collective
    finally:
        cleanup(ctx)
    return EvaluationRun(metrics, warnings, Path(output_dir), ctx.is_main)


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str


def question_from_flags(question: str, context: str, qid: str = "question") -> Question:
    if not question.strip() or not context.strip():
        raise ConfigError("--question and --context must not be empty")
    return Question(qid, question, context)


def read_questions_jsonl(path: str | Path) -> list[Question]:
    """{"id", "question", "context"} per line (blank lines skipped; id defaults to line-N)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"questions {path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"questions {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"questions {path}: cannot read: {exc.strerror or exc}") from None
    questions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"questions {path} line {number}: invalid JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise DataError(f"questions {path} line {number}: expected a JSON object")
        qid = record.get("id", f"line-{number}")
        fields = {"question": record.get("question"), "context": record.get("context")}
        for name, value in fields.items():
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"questions {path} line {number}: '{name}' must be a "
                                "non-empty string")
        questions.append(Question(str(qid), fields["question"], fields["context"]))
    if not questions:
        raise DataError(f"questions {path}: no questions in the file")
    return questions


def answer_questions(
    model: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    *,
    cfg: Config,
    null_threshold: float,
    device: Any,
) -> list[dict[str, Any]]:
    """One {"id", "answer", "best_span", "null_score_diff", "no_answer_probability"} per question;
    answer is "" when the model finds the question unanswerable at `null_threshold`."""
    from squadft.data.features import build_features
    from squadft.data.squad import Example
    from squadft.evaluate.inference import predict_logits

    # Ids need not be unique in a batch file: decode under positional ids, report the given ones.
    examples = [Example(id=str(i), title="", context=q.context, question=q.question.strip(),
                        answers=(), is_impossible=True) for i, q in enumerate(questions)]
    features, _ = build_features(examples, tokenizer, max_seq_length=cfg.max_seq_length,
                                 doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length)
    start, end = predict_logits(model, features, batch_size=cfg.eval_batch_size, device=device,
                                precision=cfg.precision)
    result = postprocess_predictions(examples, features, start, end, n_best=cfg.n_best,
                                     max_answer_length=cfg.max_answer_length,
                                     null_threshold=null_threshold, with_nbest=False)
    answers = []
    for example, question in zip(examples, questions, strict=True):
        diff = result.null_score_diff[example.id]
        best = result.best_spans[example.id]
        answers.append({
            "id": question.id,
            "answer": "" if diff > null_threshold else best,
            "best_span": best,
            "null_score_diff": diff if math.isfinite(diff) else str(diff),
            "no_answer_probability": sigmoid(diff),
        })
    return answers


def run_prediction(
    cfg: Config,
    *,
    model_dir: str,
    questions: Sequence[Question],
    null_threshold: float,
    output_path: str | Path | None = None,
) -> list[dict[str, Any]]:
    """`squadft predict`: answers for `questions`; written as JSON lines to output_path if given."""
    import torch

    from squadft.modeling import load_model, load_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir).to(device)
    answers = answer_questions(model, tokenizer, questions, cfg=cfg,
                               null_threshold=null_threshold, device=device)
    if output_path is not None:
        with atomic_open(output_path, "wb") as handle:
            for answer in answers:
                handle.write((json.dumps(answer, ensure_ascii=False) + "\n").encode("utf-8"))
    return answers
