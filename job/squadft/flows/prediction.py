"""`squadft predict`: answers for questions given on the command line, in a JSON-lines file or
in a SQuAD file, at the model's calibrated no-answer threshold; files are streamed in chunks of
questions (bounded memory), across ranks under torchrun like evaluate.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squadft.config import Config
from squadft.errors import ConfigError, DataError
from squadft.evaluate.calibration import InferenceSettings, NullThreshold, resolve_null_threshold
from squadft.evaluate.postprocess import postprocess_predictions, sigmoid
from squadft.io import atomic_open, interrupt


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


@dataclass(frozen=True)
class BadLine:
    """A line of a JSON-lines input that holds no usable question."""

    number: int
    problem: str


def read_questions(path: str | Path) -> tuple[Iterator[Question | BadLine], int]:
    """The questions of `path` as they are read, and how many records it holds (for the bar).

    A .json or .gz file is a SQuAD file (the parser in squadft.data.squad; it is read whole,
    as evaluate reads it). Anything else is JSON lines, read one line at a time:
    {"id", "question", "context"} per line, blank lines skipped, id defaulting to line-N;
    a line without a usable question comes as a BadLine, a repeated id too."""
    path = Path(path)
    if path.suffix in (".json", ".gz"):
        from squadft.data.squad import load_squad

        examples, _ = load_squad(path)
        return iter([Question(e.id, e.question, e.context) for e in examples]), len(examples)
    try:
        with path.open("rb") as handle:
            total = sum(1 for line in handle if line.strip())
    except FileNotFoundError:
        raise DataError(f"questions {path}: file not found") from None
    except OSError as exc:
        raise DataError(f"questions {path}: cannot read: {exc.strerror or exc}") from None
    return _jsonl_questions(path), total


def _jsonl_questions(path: Path) -> Iterator[Question | BadLine]:
    first_line: dict[str, int] = {}
    with path.open("rb") as handle:
        # Split on b"\n" only: JSON strings may hold U+2028 and other line breaks of str.
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)  # a BOM is not a record
            if not raw.strip():
                continue
            record = _question_record(raw, number)
            if isinstance(record, str):
                yield BadLine(number, record)
            elif record.id in first_line:
                yield BadLine(number, f"duplicate id {record.id!r} (first on line "
                                      f"{first_line[record.id]})")
            else:
                first_line[record.id] = number
                yield record


def _question_record(raw: bytes, number: int) -> Question | str:
    """One line's question, or what is wrong with the line."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {exc.start})"
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg}"
    if not isinstance(record, dict):
        return "expected a JSON object"
    qid = record.get("id", f"line-{number}")
    if isinstance(qid, bool) or not isinstance(qid, str | int) or not str(qid).strip():
        return "'id' must be a non-empty string or an integer"
    for name in ("question", "context"):
        value = record.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"'{name}' must be a non-empty string"
    return Question(str(qid), record["question"], record["context"])


def answer_questions(
    model: Any,
    tokenizer: Any,
    questions: Sequence[Question],
    *,
    cfg: Config,
    threshold: NullThreshold,
    device: Any,
) -> list[dict[str, Any]]:
    """One {"id", "answer", "decision", "score", "null_score", "best_span", "null_score_diff",
    "no_answer_probability", "null_threshold"} per question; answer is "" (decision
    "no_answer") when null_score_diff = null_score - score > the threshold. score: the best
    span's start + end logit (null without a span); null_score: the [CLS] one.

    Under torch.distributed every rank calls it with the same questions and runs its share of
    the windows; rank 0 gets the answers, the other ranks []."""
    from squadft.data.features import build_features
    from squadft.data.squad import Example
    from squadft.evaluate.inference import predict_logits
    from squadft.runtime.distributed import current_group

    # Ids need not be unique in a batch file: decode under positional ids, report the given ones.
    examples = [Example(id=str(i), title="", context=q.context, question=q.question.strip(),
                        answers=(), is_impossible=True) for i, q in enumerate(questions)]
    features, _ = build_features(examples, tokenizer, max_seq_length=cfg.max_seq_length,
                                 doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length)
    start, end = predict_logits(model, features, batch_size=cfg.eval_batch_size, device=device,
                                precision=cfg.precision)
    if current_group()[0] != 0:
        return []
    result = postprocess_predictions(examples, features, start, end, n_best=cfg.n_best,
                                     max_answer_length=cfg.max_answer_length,
                                     null_threshold=threshold.value)
    answers = []
    for example, question in zip(examples, questions, strict=True):
        diff = result.null_score_diff[example.id]
        best = result.best_spans[example.id]
        candidates = result.nbest[example.id]  # best first, the null answer among them
        answered = diff <= threshold.value
        answers.append({
            "id": question.id,
            "answer": best if answered else "",
            "decision": "answered" if answered else "no_answer",
            "score": next((c.score for c in candidates if c.answer_start >= 0), None),
            "null_score": next((c.score for c in candidates if c.answer_start < 0), None),
            "best_span": best,
            "null_score_diff": diff if math.isfinite(diff) else str(diff),
            "no_answer_probability": sigmoid(diff),
            "null_threshold": threshold.value,
        })
    return answers


@dataclass
class PredictionRun:
    answered: int
    skipped: list[BadLine]
    is_main: bool  # False on ranks > 0 of a distributed run (they print nothing)


# Questions tokenized and answered at a time: memory is bounded by this many questions' windows
# and logits, whatever the size of the input.
CHUNK_BATCHES = 16  # x eval_batch_size questions


def run_prediction(
    cfg: Config,
    *,
    model_dir: str,
    questions: Iterable[Question | BadLine],
    settings: InferenceSettings | None = None,
    output_path: str | Path | None = None,
    on_bad_line: str = "stop",
    total: int | None = None,
    source: str = "questions",
) -> PredictionRun:
    """`squadft predict`: answers for `questions` at the model's calibrated threshold unless
    cfg.null_threshold says otherwise, CHUNK_BATCHES x eval_batch_size questions at a time,
    written as JSON lines to output_path (temp file renamed at the end: nothing half-written
    on an error, SIGTERM or Ctrl-C), else to stdout. A BadLine stops the run (DataError) or,
    with on_bad_line "skip", is counted. `total`: the records expected (a progress bar).

    Runs distributed when launched with torchrun/srun (each rank its share of the windows;
    rank 0 writes)."""
    from squadft.modeling import check_window, load_model, load_tokenizer
    from squadft.runtime.distributed import barrier, cleanup, setup_distributed

    if on_bad_line not in BAD_LINE_CHOICES:
        raise ConfigError(f"--on-bad-line must be one of {', '.join(BAD_LINE_CHOICES)}")
    threshold = resolve_null_threshold(
        cfg.null_threshold, settings.calibration if settings is not None else None)
    tokenizer = load_tokenizer(model_dir)
    check_window(model_dir, tokenizer, max_seq_length=cfg.max_seq_length,
                 doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length)
    skipped: list[BadLine] = []
    answered = 0
    with ExitStack() as stack:
        ctx = setup_distributed(device=cfg.device)
        stack.callback(cleanup, ctx)
        model = load_model(model_dir).to(ctx.device)
        write = _writer(stack, output_path) if ctx.is_main else None
        advance = _progress(stack, total if ctx.is_main else None)
        chunk_size = CHUNK_BATCHES * cfg.eval_batch_size
        for chunk in _chunks(questions, chunk_size, skipped, on_bad_line, source):
            answers = answer_questions(model, tokenizer, chunk, cfg=cfg, threshold=threshold,
                                       device=ctx.device)
            if write is not None:
                write("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers))
            answered += len(chunk)
            advance(answered + len(skipped))
        if not answered:
            raise DataError(f"{source}: no questions to answer"
                            + (f" ({len(skipped)} malformed lines skipped)" if skipped else ""))
        barrier(ctx)  # nobody tears the group down while a peer is still in a collective
    return PredictionRun(answered, skipped, ctx.is_main)


BAD_LINE_CHOICES = ("stop", "skip")


def _chunks(questions: Iterable[Question | BadLine], size: int, skipped: list[BadLine],
            on_bad_line: str, source: str) -> Iterator[list[Question]]:
    """Lists of up to `size` questions; bad lines raise, or are appended to `skipped`."""
    chunk: list[Question] = []
    for item in questions:
        if isinstance(item, BadLine):
            if on_bad_line == "stop":
                raise DataError(f"{source} line {item.number}: {item.problem} (--on-bad-line "
                                "skip answers the other lines)")
            skipped.append(item)
            continue
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _progress(stack: ExitStack, total: int | None) -> Callable[[int], None]:
    """`advance(records read)` of a bar on stderr (none without a total), drawn from the
    first answers on: a file stopped at its first lines gets its one-line error alone."""
    from squadft.evaluate.inference import progress_bar

    bars: list[Any] = []

    def advance(done: int) -> None:
        if total is None:
            return
        if not bars:
            bars.append(progress_bar("predict", total, unit="question"))
            stack.callback(bars[0].close)  # before an error is printed: it stays the last line
        bars[0].update(done - bars[0].n)

    return advance


def _writer(stack: ExitStack, output_path: str | Path | None) -> Callable[[str], None]:
    """Rank 0's writer: a temp file next to output_path, renamed when the stack closes
    without an error (SIGTERM ends the run like Ctrl-C: the temp file is removed); else
    stdout."""
    if output_path is None:
        def to_stdout(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        return to_stdout
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM,
                                 lambda signum, _: interrupt(SystemExit(128 + signum)))
        stack.callback(signal.signal, signal.SIGTERM, previous)
    handle = stack.enter_context(atomic_open(output_path, "wb"))
    return lambda text: handle.write(text.encode("utf-8")) and None


def skipped_summary(source: str, skipped: Sequence[BadLine], shown: int = 20) -> str:
    """One line: how many lines were skipped, and which (the first `shown`), and why."""
    listed = "; ".join(f"line {bad.number}: {bad.problem}" for bad in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"{source}: skipped {len(skipped)} malformed line(s): {listed}{more}"
