"""Evaluation and prediction at the I/O edge: read files, run the model, write SQuAD-format outputs.

Files written by `evaluate_model` (atomically) into its output directory:

- predictions.json        {id: answer text}, "" = no answer (official evaluate-v2.0.py format),
                          at the null threshold in effect, which is fixed before the questions
                          are seen (calibrated with the model, given, or 0);
- na_probs.json           {id: sigmoid(null score - best span score)}: the official script's
                          --na-prob-file; a threshold p on it is the score threshold logit(p);
- nbest_predictions.json  {id: [{text, probability, start_logit, end_logit, score,
                          answer_start}, ...]} best first, the null answer ("" / -1) included;
- eval_results.json       the official keys for predictions.json + na_probs.json: exact, f1,
                          HasAns_*, NoAns_* at that threshold; best_exact/best_f1 (+ _thresh)
                          are the official script's oracle, tuned on these same questions;
                          plus null_threshold, null_threshold_kind/_source (how it was chosen)
                          and always_no_answer_exact/_f1 (the baseline to beat).

These files are one set, replaced as a whole or not at all (see `write_prediction_files`), and
the output directory is checked (created, a probe written) before inference starts.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from squadft.config import Config
from squadft.data.selection import FileSpec, parse_file_spec, select_raw_articles
from squadft.errors import ConfigError, DataError, StorageError
from squadft.evaluate.calibration import (
    INFERENCE_FILE,
    Calibration,
    InferenceSettings,
    NullThreshold,
    calibrate,
    resolve_null_threshold,
)
from squadft.evaluate.postprocess import (
    PostprocessResult,
    nbest_json_arrays,
    postprocess_predictions,
    sigmoid,
)
from squadft.evaluate.squad_metrics import check_predictions, evaluate_predictions
from squadft.io import (
    atomic_open,
    describe_os_error,
    ensure_writable_dir,
    fsync_dir,
    is_temp_name,
    make_temp_dir,
    read_json_file,
    remove_stale_temps,
    remove_temp_tree,
    temp_name,
    uninterruptible,
)

V2_VERSIONS = frozenset({"v2.0", "2.0"})


# --- reading ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class GoldStandard:
    """Reference answers exactly as the dataset file has them (no offset repairs)."""

    answers: dict[str, list[str]]  # id -> answer texts; [] = unanswerable
    version: str | None
    contradictory: int = 0  # is_impossible: true with answers (scored as answerable)

    def warnings(self) -> list[str]:
        notes = []
        if self.version not in V2_VERSIONS:
            notes.append(f"dataset version is {self.version!r}, not v2.0; scoring with the "
                         "SQuAD 2.0 rules anyway (questions without answers count as "
                         "unanswerable)")
        if self.contradictory:
            notes.append(f"{self.contradictory} questions are marked is_impossible but carry "
                         "answers; they are scored as answerable (the answers decide, as in "
                         "the official scorer and in training)")
        return notes


def gold_from_squad(data: Any, source: str = "<memory>") -> GoldStandard:
    """Id -> answer texts from decoded SQuAD JSON, read the way the official script reads it."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{source}: not a SQuAD file (no top-level 'data' list)")
    answers: dict[str, list[str]] = {}
    contradictory = 0
    try:
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    # Like the official script: `answers` alone decides (plausible_answers of
                    # unanswerable questions are never gold).
                    texts = [answer["text"] for answer in qa.get("answers", [])]
                    if not all(isinstance(text, str) for text in texts):
                        raise DataError(f"{source}: question {qa['id']}: non-string answer text")
                    qid = str(qa["id"])
                    if qid in answers:
                        # the official script silently keeps the last; prepare and evaluate
                        # reject the file, so scoring does too
                        raise DataError(f"{source}: duplicate question id {qid!r}: question "
                                        "ids must be unique")
                    answers[qid] = texts
                    contradictory += bool(texts) and qa.get("is_impossible") is True
    except (KeyError, TypeError) as exc:
        raise DataError(f"{source}: malformed SQuAD structure ({type(exc).__name__}: {exc})"
                        ) from None
    if not answers:
        raise DataError(f"{source}: the dataset has no questions")
    version = data.get("version")
    return GoldStandard(answers, version if isinstance(version, str) else None, contradictory)


def load_gold(path: str | Path, spec: FileSpec | None = None) -> GoldStandard:
    """Gold answers of a SQuAD file, or of the articles `spec` slices out of it."""
    data = read_json_file(path, "dataset")
    if spec is not None:
        data = select_raw_articles(data, spec)
    return gold_from_squad(data, str(path) if spec is None or not spec.sliced
                           else f"{path} {str(spec)[len(spec.name):]}")


def gold_for_examples(gold: GoldStandard, examples: Sequence[Any], *, limited: bool,
                      source: str) -> tuple[dict[str, list[str]], list[str]]:
    """The raw file's answers for the evaluated questions, and warnings about questions the
    parser changed or dropped (a dropped question still counts, as wrong, like the official
    script would count it). `limited`: only the examples' questions are evaluated (a sample),
    so questions beyond them are left out rather than counted."""
    warnings = gold.warnings()
    if limited:
        kept = {example.id for example in examples}
        answers = {qid: texts for qid, texts in gold.answers.items() if qid in kept}
    else:
        answers = dict(gold.answers)
    parsed = {example.id: example for example in examples}
    dropped = [qid for qid in answers if qid not in parsed]
    if dropped:
        warnings.append(f"{len(dropped)} questions of {source} could not be parsed (no answer "
                        f"text found in the context, e.g. {dropped[0]}) and count as wrong")
    changed = sum(1 for qid, texts in answers.items() if qid in parsed and sorted(texts) != sorted(
        a.text for a in parsed[qid].answers))
    if changed:
        warnings.append(f"{changed} questions of {source} lost an answer the parser could not "
                        "align; they are scored against every answer of the file")
    return answers, warnings


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
        if not math.isfinite(value):
            raise DataError(f"na_probs {path}: value for {qid} is {value} (NaN and Infinity "
                            "are not probabilities or scores)")
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
    if math.isnan(na_prob_thresh):
        raise ConfigError("na_prob_thresh must be a number, not NaN (a NaN threshold would "
                          "make every comparison false and silently answer everything)")
    gold = load_gold(data_path)
    predictions = load_predictions(predictions_path)
    na_probs = load_na_probs(na_probs_path) if na_probs_path is not None else None
    warnings = gold.warnings()
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

OUTPUT_FILES = {"predictions": "predictions.json", "na_probs": "na_probs.json",
                "nbest": "nbest_predictions.json", "results": "eval_results.json"}
# Before inference: the output directory is created and this much is written to it (an empty
# probe file still fits on a full disk).
OUTPUT_PROBE_BYTES = 64 << 10


def check_output_dir(output_dir: str | Path) -> Path:
    """Fail now (StorageError, exit 5) when the outputs could not be written: a missing parent
    that cannot be created, no permission, a full disk. Call it before inference."""
    return ensure_writable_dir(output_dir, probe_bytes=OUTPUT_PROBE_BYTES)


def write_prediction_files(
    output_dir: str | Path,
    predictions: Mapping[str, str],
    result: PostprocessResult,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """predictions.json, na_probs.json, nbest_predictions.json (+ eval_results.json with
    `metrics`): one set, replaced as a whole or not at all.

    1. Stage: every file is written and fsynced into a new temporary directory (a squadft temp
       name, see squadft.io) on the same filesystem. Any failure here (disk full, quota,
       permissions) removes it, and the previous set stays exactly as it was.
    2. Commit, without an allocation that could fail half-way and without an interruption by
       SIGTERM (`io.uninterruptible`):
       - a directory of its own (it holds nothing but these files, as `squadft evaluate`'s
         <output_dir>/evaluate does): the staging directory was made beside it and takes its
         place in one atomic rename(2) exchange (RENAME_EXCHANGE; where the filesystem lacks
         it, the old directory is renamed aside first, so that for an instant there is no
         directory). A reader sees the old set or the new one.
       - a shared directory (the training run directory): the staging directory is inside it;
         the old set's files are unlinked first (eval_results.json first), then the new ones
         renamed in (eval_results.json last). A reader may catch an incomplete set, whose
         eval_results.json is then missing, never old files next to new ones.
    A process killed in the middle leaves its staging directory, which a later squadft run
    removes (see `remove_stale_temps`).
    """
    output_dir = Path(os.path.abspath(output_dir))
    writers: dict[str, Callable[[BinaryIO], None]] = {
        "predictions": lambda handle: _write_json(handle, dict(predictions)),
        "na_probs": lambda handle: _write_json(handle, result.na_probs()),
        "nbest": lambda handle: _write_nbest(handle, result),
    }
    if metrics is not None:
        writers["results"] = lambda handle: _write_json(handle, _json_safe(metrics))
    staging, swap = _staging_dir(output_dir)
    current = output_dir
    try:
        for name, write in writers.items():
            current = output_dir / OUTPUT_FILES[name]  # named in an error: not the temp dir
            with open(staging / OUTPUT_FILES[name], "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
        current = output_dir
        fsync_dir(staging)
        with uninterruptible():
            if swap:
                _swap_directory(staging, output_dir)
            else:
                _replace_files(staging, output_dir, [OUTPUT_FILES[n] for n in writers])
    except OSError as exc:
        message = describe_os_error(exc, current)  # before the staged files free the space
        remove_temp_tree(staging)
        raise StorageError(message) from None
    except BaseException:
        remove_temp_tree(staging)
        raise
    return {name: output_dir / OUTPUT_FILES[name] for name in writers}


def _write_json(handle: BinaryIO, obj: Any) -> None:
    handle.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _write_nbest(handle: BinaryIO, result: PostprocessResult) -> None:
    # Written in pieces: the full dev set's n-best lists are ~100 MB as one string.
    handle.write(b"{\n")
    for i, (qid, candidates) in enumerate(nbest_json_arrays(result.nbest)):
        entry = json.dumps(qid) + ": " + candidates
        handle.write(((",\n" if i else "") + entry).encode("utf-8"))
    handle.write(b"\n}\n")


def _holds_only_outputs(directory: Path) -> bool:
    """`directory` is missing, or a plain directory (no symlink, no mount point, not the
    working directory) holding nothing but output files and squadft temporary names."""
    if not directory.exists():
        return not directory.is_symlink()
    if directory.is_symlink() or not directory.is_dir() or os.path.ismount(directory):
        return False
    if directory.resolve() == Path.cwd().resolve():
        return False  # swapped away, it would leave the shell in a deleted directory
    try:
        entries = os.listdir(directory)
    except OSError:
        return False
    allowed = set(OUTPUT_FILES.values())
    return all(name in allowed or is_temp_name(name) for name in entries)


def _staging_dir(output_dir: Path) -> tuple[Path, bool]:
    """(a new staging directory, whether it is swapped in whole): beside a directory of its
    own, else inside it."""
    if _holds_only_outputs(output_dir):
        try:
            output_dir.parent.mkdir(parents=True, exist_ok=True)
            staging = make_temp_dir(output_dir.parent, output_dir.name)
        except OSError:
            pass  # the parent is not ours to write: stage inside the directory instead
        else:
            try:
                os.chmod(staging, stat.S_IMODE(output_dir.stat().st_mode))
            except OSError:
                pass
            return staging, True
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        return make_temp_dir(output_dir, "evaluate"), False
    except OSError as exc:
        raise StorageError(describe_os_error(exc, output_dir)) from None


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system or
    the filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second),
                 _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _swap_directory(staging: Path, output_dir: Path) -> None:
    """Put `staging` where `output_dir` is, in one step where the filesystem allows it."""
    if not output_dir.exists():
        os.rename(staging, output_dir)
    elif _exchange(staging, output_dir):
        remove_temp_tree(staging)  # now holds the old set
    else:
        aside = output_dir.with_name(temp_name(output_dir.name, "old"))
        os.rename(output_dir, aside)
        try:
            os.rename(staging, output_dir)
        except BaseException:
            os.rename(aside, output_dir)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(output_dir.parent)


def _replace_files(staging: Path, output_dir: Path, names: list[str]) -> None:
    """Old set out (eval_results.json first), new set in (eval_results.json last)."""
    results = OUTPUT_FILES["results"]
    for name in sorted(OUTPUT_FILES.values(), key=lambda n: n != results):
        (output_dir / name).unlink(missing_ok=True)
    for name in sorted(names, key=lambda n: n == results):
        os.rename(staging / name, output_dir / name)
    fsync_dir(output_dir)
    remove_temp_tree(staging)


def _json_safe(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Strict JSON has no infinities: a threshold of +-inf is written as a string."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in metrics.items()}


# --- evaluating a model -------------------------------------------------------------------------

def score_postprocessed(
    result: PostprocessResult,
    gold: Mapping[str, list[str]],
    threshold: NullThreshold,
) -> tuple[dict[str, Any], dict[str, str]]:
    """(metrics, predictions to write) at a threshold fixed before these questions were seen.

    Each question's answer depends on its own scores and the threshold alone, never on which
    other questions are evaluated. The official best_* keys (threshold tuned on `gold` itself)
    come from na_probs, as evaluate-v2.0.py computes them: an oracle, labelled as such.
    """
    predictions = result.predictions_at(threshold.value)
    metrics: dict[str, Any] = dict(evaluate_predictions(
        gold, _only(predictions, gold), _only(result.na_probs(), gold)))
    metrics["null_threshold"] = threshold.value
    metrics["null_threshold_kind"] = threshold.kind
    metrics["null_threshold_source"] = threshold.source
    metrics["no_answer_probability_threshold"] = sigmoid(threshold.value)
    share = 100.0 * sum(1 for answers in gold.values() if not answers) / len(gold)
    metrics["always_no_answer_exact"] = metrics["always_no_answer_f1"] = share
    return metrics, predictions


def _only(values: Mapping[str, Any], gold: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k in gold}


def _distributed_rank() -> int:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _broadcast(value: Any) -> Any:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return value


def decode(model: Any, examples: Sequence[Any], features: Any, *, cfg: Config, device: Any,
           with_nbest: bool = True) -> tuple[PostprocessResult | None, dict[str, float]]:
    """Logits of every window -> per-question spans and null scores (rank 0; None elsewhere).

    Call it on every rank when torch.distributed is initialised: each rank runs its share of
    the windows. cfg supplies eval_batch_size, precision, n_best and max_answer_length.
    """
    from squadft.evaluate.inference import predict_logits

    began = time.perf_counter()
    start_logits, end_logits = predict_logits(
        model, features, batch_size=cfg.eval_batch_size, device=device,
        precision=cfg.precision,
    )
    timings = {"inference_seconds": round(time.perf_counter() - began, 3)}
    if _distributed_rank() != 0:
        return None, timings
    began = time.perf_counter()
    result = postprocess_predictions(
        examples, features, start_logits, end_logits, n_best=cfg.n_best,
        max_answer_length=cfg.max_answer_length, with_nbest=with_nbest,
    )
    timings["postprocess_seconds"] = round(time.perf_counter() - began, 3)
    return result, timings


def evaluate_model(
    model: Any,
    examples: Sequence[Any],
    features: Any,
    *,
    cfg: Config,
    threshold: NullThreshold,
    output_dir: str | Path,
    device: Any,
    gold: Mapping[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Logits -> predictions -> metrics at `threshold`; rank 0 writes the files.

    Every rank returns the same metrics dict. `gold` defaults to the examples' answers; pass
    the raw file's answers (`gold_for_examples`) to score like the official script.
    """
    if _distributed_rank() == 0:
        # fail before inference, not after it, when the outputs cannot be written
        check_output_dir(output_dir)
    result, timings = decode(model, examples, features, cfg=cfg, device=device)
    metrics: dict[str, Any] | None = None
    if result is not None:
        metrics, predictions = score_postprocessed(
            result, gold if gold is not None else gold_from_examples(examples), threshold)
        metrics.update(examples=len(examples), features=len(features), **timings)
        write_prediction_files(output_dir, predictions, result, metrics)
    metrics = _broadcast(metrics)
    assert metrics is not None
    return metrics


def calibrate_model(model: Any, examples: Sequence[Any], features: Any, *, cfg: Config,
                    device: Any, source: str) -> Calibration:
    """The F1-best null threshold on held-out questions (every rank gets the same)."""
    result, _ = decode(model, examples, features, cfg=cfg, device=device, with_nbest=False)
    calibration = None
    if result is not None:
        calibration = calibrate(result, gold_from_examples(examples), source=source)
    return _broadcast(calibration)


def _score_line(label: str, metrics: Mapping[str, Any]) -> str:
    parts = [f"EM {metrics['exact']:.2f}", f"F1 {metrics['f1']:.2f}"]
    for group in ("HasAns", "NoAns"):
        if group + "_exact" in metrics:
            parts.append(f"{group} EM {metrics[group + '_exact']:.2f} "
                         f"F1 {metrics[group + '_f1']:.2f} (n={metrics[group + '_total']})")
    return f"{label}: " + ", ".join(parts)


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """The scores at the threshold in effect (saying how it was chosen) first, then the
    "always no answer" baseline and the official oracle best_* (tuned on these questions)."""
    threshold = (f"null threshold {metrics['null_threshold']:.4g}, "
                 f"{metrics['null_threshold_source']}")
    lines = [_score_line(f"{metrics['total']} questions at {threshold}", metrics)]
    if "always_no_answer_f1" in metrics:
        lines.append(f"always no answer: EM {metrics['always_no_answer_exact']:.2f}, "
                     f"F1 {metrics['always_no_answer_f1']:.2f}")
    if "best_f1" in metrics:
        lines.append(
            f"oracle (threshold tuned on these same questions): best_exact "
            f"{metrics['best_exact']:.2f}, best_f1 {metrics['best_f1']:.2f} (no-answer "
            f"probability threshold {metrics['best_f1_thresh']:.4g})")
    return "\n".join(lines)


# --- commands: evaluate a saved model, answer questions -----------------------------------------

@dataclass
class EvaluationRun:
    metrics: dict[str, Any]
    warnings: list[str]
    output_dir: Path
    is_main: bool  # False on ranks > 0 of a distributed run (they print nothing)
    notes: list[str] = field(default_factory=list)  # the parse report, leftovers removed


def model_settings(model_dir: str | Path) -> InferenceSettings | None:
    """The inference settings saved with a model (None for a model squadft did not train)."""
    return InferenceSettings.load(model_dir)


def run_evaluation(
    cfg: Config, *, model_dir: str, data_path: str, output_dir: str | Path,
    settings: InferenceSettings | None = None,
) -> EvaluationRun:
    """`squadft evaluate`: load a save_pretrained model, tokenize `data_path` (optionally
    `path[A:B]`, a slice of its articles), score at the model's calibrated threshold unless
    told otherwise, write the outputs.

    Runs distributed when launched with torchrun/srun (each rank its share of the windows).
    """
    from squadft.data.features import build_features
    from squadft.data.selection import select_articles
    from squadft.data.squad import load_squad
    from squadft.modeling import check_window, load_model, load_tokenizer
    from squadft.train.distributed import barrier, cleanup, detect_launch, setup_distributed

    spec = parse_file_spec(data_path)
    path = spec.name
    threshold = resolve_null_threshold(
        cfg.null_threshold, settings.calibration if settings is not None else None)
    tokenizer = load_tokenizer(model_dir)
    check_window(model_dir, tokenizer, max_seq_length=cfg.max_seq_length,
                 doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length)
    output_dir = Path(output_dir)
    notes = []
    if detect_launch().rank == 0:
        # before anything slow: an output folder that cannot take the files fails now
        check_output_dir(output_dir)
        for directory in (output_dir.parent, output_dir):
            notes.extend(f"removed {leftover}, left by an interrupted squadft process"
                         for leftover in remove_stale_temps(directory))
    gold = load_gold(path, spec)
    examples, report = load_squad(path)
    notes.append(f"data: {report.summary()}")  # the parse report the warnings refer to
    examples = select_articles(examples, spec, report.articles)
    limited = cfg.max_eval_samples is not None
    if limited:
        examples = examples[:cfg.max_eval_samples]
    answers, warnings = gold_for_examples(gold, examples, limited=limited, source=data_path)
    if settings is None:
        warnings.append(f"{model_dir} has no {INFERENCE_FILE}: using the flags and defaults "
                        f"(max_seq_length {cfg.max_seq_length}, doc_stride {cfg.doc_stride})")
    features, _ = build_features(examples, tokenizer, max_seq_length=cfg.max_seq_length,
                                 doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length)
    ctx = setup_distributed(device=cfg.device)
    try:
        model = load_model(model_dir).to(ctx.device)
        metrics = evaluate_model(model, examples, features, cfg=cfg, threshold=threshold,
                                 output_dir=output_dir, device=ctx.device, gold=answers)
        barrier(ctx)  # nobody tears the group down while a peer is still in a collective
    finally:
        cleanup(ctx)
    return EvaluationRun(metrics, warnings, output_dir, ctx.is_main, notes)


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
    from squadft.train.distributed import resolve_device

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
