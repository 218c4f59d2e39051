"""`squadft predict`: answers for questions given on the command line or in a JSON-lines file,
at the model's calibrated no-answer threshold.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squadft.config import Config
from squadft.errors import ConfigError, DataError
from squadft.evaluate.calibration import InferenceSettings, NullThreshold, resolve_null_threshold
from squadft.evaluate.postprocess import postprocess_predictions, sigmoid
from squadft.io import (
    atomic_open,
)


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str


def question_from_flags(question: str, context: str) -> Question:
    """One --question/--context pair. Its id is a digest of the two, 24 hex digits like
    SQuAD's ids: the same pair gets the same id on every run, another pair another id."""
    if not question.strip() or not context.strip():
        raise ConfigError("--question and --context must not be empty")
    digest = hashlib.sha256(json.dumps([question, context]).encode("utf-8")).hexdigest()
    return Question(digest[:24], question, context)


def read_questions_jsonl(path: str | Path) -> list[Question]:
    """{"id", "question", "context"} per line (blank lines skipped; id defaults to line-N)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM is not a record
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
    threshold: NullThreshold,
    device: Any,
) -> list[dict[str, Any]]:
    """One {"id", "answer", "best_span", "null_score_diff", "no_answer_probability",
    "null_threshold"} per question; answer is "" when null_score_diff > the threshold."""
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
                                     null_threshold=threshold.value, with_nbest=False)
    answers = []
    for example, question in zip(examples, questions, strict=True):
        diff = result.null_score_diff[example.id]
        best = result.best_spans[example.id]
        answers.append({
            "id": question.id,
            "answer": "" if diff > threshold.value else best,
            "best_span": best,
            "null_score_diff": diff if math.isfinite(diff) else str(diff),
            "no_answer_probability": sigmoid(diff),
            "null_threshold": threshold.value,
        })
    return answers


def run_prediction(
    cfg: Config,
    *,
    model_dir: str,
    questions: Sequence[Question],
    settings: InferenceSettings | None = None,
    output_path: str | Path | None = None,
) -> list[dict[str, Any]]:
    """`squadft predict`: answers for `questions` at the model's calibrated threshold unless
    cfg.null_threshold says otherwise; written as JSON lines to output_path if given."""
    from squadft.modeling import check_window, load_model, load_tokenizer
    from squadft.runtime.distributed import resolve_device

    threshold = resolve_null_threshold(
        cfg.null_threshold, settings.calibration if settings is not None else None)
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(model_dir)
    check_window(model_dir, tokenizer, max_seq_length=cfg.max_seq_length,
                 doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length)
    model = load_model(model_dir).to(device)
    answers = answer_questions(model, tokenizer, questions, cfg=cfg, threshold=threshold,
                               device=device)
    if output_path is not None:
        with atomic_open(output_path, "wb") as handle:
            for answer in answers:
                handle.write((json.dumps(answer, ensure_ascii=False) + "\n").encode("utf-8"))
    return answers
