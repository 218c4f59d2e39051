"""Evaluation flows: run a model over windows (`decode`), score it on the dev data at a
threshold fixed beforehand (`evaluate_model`; `evaluate_dev` at the end of training), tune the
threshold on held-out questions (`calibrate_model`), and `squadft evaluate` on a saved model
(`run_evaluation`). Under torch.distributed every rank runs its share of the windows and
rank 0 post-processes, scores and writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from squadft.config import Config
from squadft.console import say, warn
from squadft.data.features import build_features
from squadft.data.selection import select_articles
from squadft.data.squad import load_squad_cached
from squadft.evaluate.calibration import (
    INFERENCE_FILE,
    Calibration,
    InferenceSettings,
    NullThreshold,
    calibrate,
    resolve_null_threshold,
)
from squadft.evaluate.gold import gold_for_examples, gold_from_examples, load_gold
from squadft.evaluate.inference import predict_logits, window_loss
from squadft.evaluate.outputs import check_output_dir, write_prediction_files
from squadft.evaluate.postprocess import PostprocessResult, postprocess_predictions
from squadft.evaluate.scoring import format_metrics, score_postprocessed
from squadft.evaluate.squad_metrics import raw_scores
from squadft.filespec import parse_local_spec
from squadft.flows.preparation import PreparedSplit
from squadft.io import remove_stale_temps, sha256_file
from squadft.modeling import check_window, load_model, load_tokenizer
from squadft.runtime.distributed import (
    DistributedContext,
    barrier,
    broadcast_from_main,
    cleanup,
    current_group,
    detect_launch,
    setup_distributed,
)
from squadft.train.selection import HeldOutResult
from squadft.train.tracking import METRICS_FILE, MetricsLogger


def decode(model: Any, examples: Sequence[Any], features: Any, *, cfg: Config, device: Any,
           with_nbest: bool = True, progress: str | None = None, with_loss: bool = False
           ) -> tuple[PostprocessResult | None, dict[str, float]]:
    """Logits of every window -> per-question spans and null scores (rank 0; None elsewhere),
    and timings (with `with_loss`, also the windows' QA "loss" against their labels).

    Call it on every rank when torch.distributed is initialised: each rank runs its share of
    the windows. cfg supplies eval_batch_size, precision, n_best and max_answer_length;
    `progress` names rank 0's progress bar on stderr.
    """
    began = time.perf_counter()
    start_logits, end_logits = predict_logits(
        model, features, batch_size=cfg.eval_batch_size, device=device,
        precision=cfg.precision, progress=progress,
    )
    timings = {"inference_seconds": round(time.perf_counter() - began, 3)}
    if current_group()[0] != 0:
        return None, timings
    if with_loss:
        timings["loss"] = window_loss(start_logits, end_logits, features)
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
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Logits -> predictions -> metrics at `threshold`, with their 95% intervals over
    articles; rank 0 writes the files (`extra` goes into eval_results.json as it is).

    Every rank returns the same metrics dict. `gold` defaults to the examples' answers; pass
    the raw file's answers (`gold_for_examples`) to score like the official script.
    """
    if current_group()[0] == 0:
        # fail before inference, not after it, when the outputs cannot be written
        check_output_dir(output_dir)
    result, timings = decode(model, examples, features, cfg=cfg, device=device,
                             progress="evaluate")
    metrics: dict[str, Any] | None = None
    if result is not None:
        article_of = {example.id: (example.article, example.title) for example in examples}
        metrics, predictions = score_postprocessed(
            result, gold if gold is not None else gold_from_examples(examples), threshold,
            article_of=article_of)
        metrics.update(examples=len(examples), features=len(features), **timings,
                       **(extra or {}))
        write_prediction_files(output_dir, predictions, result, metrics)
    metrics = broadcast_from_main(None, metrics)
    assert metrics is not None
    return metrics


def calibrate_model(model: Any, examples: Sequence[Any], features: Any, *, cfg: Config,
                    device: Any, source: str, overlap_with_train: int | None = None,
                    step: int | None = None) -> Calibration:
    """The F1-best null threshold on held-out questions, with the scores there and the
    held-out loss (every rank gets the same)."""
    return evaluate_held_out(model, examples, features, cfg=cfg, device=device, source=source,
                             overlap_with_train=overlap_with_train, step=step).calibration


def evaluate_held_out(model: Any, examples: Sequence[Any], features: Any, *, cfg: Config,
                      device: Any, source: str, overlap_with_train: int | None = None,
                      step: int | None = None) -> HeldOutResult:
    """calibrate_model's calibration, and each question's F1 at its threshold with the
    question's article, for paired comparisons of checkpoints (every rank gets the same)."""
    result, stats = decode(model, examples, features, cfg=cfg, device=device,
                           with_nbest=False, progress="calibrate", with_loss=True)
    held_out = None
    if result is not None:
        gold = gold_from_examples(examples)
        calibration = calibrate(result, gold, source=source,
                                overlap_with_train=overlap_with_train)
        calibration = replace(calibration, loss=stats.get("loss"), step=step)
        _, f1 = raw_scores(gold, result.predictions_at(calibration.null_threshold))
        held_out = HeldOutResult(calibration, [f1.get(e.id, 0.0) for e in examples],
                                 [f"{e.article}:{e.title}" for e in examples])
    return broadcast_from_main(None, held_out)


@dataclass
class EvaluationRun:
    metrics: dict[str, Any]
    warnings: list[str]
    output_dir: Path
    is_main: bool  # False on ranks > 0 of a distributed run (they print nothing)
    notes: list[str] = field(default_factory=list)  # the parse report, leftovers removed


def run_evaluation(
    cfg: Config, *, model_dir: str, data_path: str, output_dir: str | Path,
    settings: InferenceSettings | None = None,
) -> EvaluationRun:
    """`squadft evaluate`: load a save_pretrained model, tokenize `data_path` (optionally
    `path[A:B]`, a slice of its articles), score at the model's calibrated threshold unless
    told otherwise, write the outputs.

    Runs distributed when launched with torchrun/srun (each rank its share of the windows).
    """
    threshold = resolve_null_threshold(
        cfg.null_threshold, settings.calibration if settings is not None else None)
    tokenizer = load_tokenizer(model_dir)
    check_window(model_dir, tokenizer, max_seq_length=cfg.max_seq_length,
                 doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length)
    output_dir = Path(output_dir)
    notes = _check_output_dir(output_dir)  # before anything slow
    examples, answers, warnings, parse_report = _evaluation_questions(cfg, data_path)
    notes.append(f"data: {parse_report}")  # the parse report the warnings refer to
    if settings is None:
        warnings.append(f"{model_dir} has no {INFERENCE_FILE}: using the flags and defaults "
                        f"(max_seq_length {cfg.max_seq_length}, doc_stride {cfg.doc_stride})")
    features, _ = build_features(examples, tokenizer, max_seq_length=cfg.max_seq_length,
                                 doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length)
    with ExitStack() as stack:
        ctx = setup_distributed(device=cfg.device)
        stack.callback(cleanup, ctx)
        model = load_model(model_dir).to(ctx.device)
        metrics = evaluate_model(model, examples, features, cfg=cfg, threshold=threshold,
                                 output_dir=output_dir, device=ctx.device, gold=answers)
        barrier(ctx)  # nobody tears the group down while a peer is still in a collective
    return EvaluationRun(metrics, warnings, output_dir, ctx.is_main, notes)


def _check_output_dir(output_dir: Path) -> list[str]:
    """Rank 0: an output folder that cannot take the files fails now; leftovers of
    interrupted runs are removed (and said)."""
    notes: list[str] = []
    if detect_launch().rank == 0:
        check_output_dir(output_dir)
        for directory in (output_dir.parent, output_dir):
            notes.extend(f"removed {leftover}, left by an interrupted squadft process"
                         for leftover in remove_stale_temps(directory))
    return notes


def _evaluation_questions(
    cfg: Config, data_path: str
) -> tuple[Sequence[Any], dict[str, list[str]], list[str], str]:
    """(the questions to score, their gold answers from the raw file, warnings, the parse
    report in words) of `data_path` = PATH or PATH[A:B]."""
    spec = parse_local_spec(data_path)
    gold = load_gold(spec.name, spec)
    # parsed once per file content: evaluating checkpoint after checkpoint on one dev file
    # parses it once (a damaged or unwritable cache only costs the parse)
    examples, report = load_squad_cached(spec.name, cache_dir=cfg.cache_dir,
                                         sha256=sha256_file(spec.name))
    examples = select_articles(examples, spec, report.articles)
    limited = cfg.max_eval_samples is not None
    if limited:
        examples = examples[:cfg.max_eval_samples]
    answers, warnings = gold_for_examples(gold, examples, limited=limited, source=data_path)
    return examples, answers, warnings, report.summary()


def evaluate_dev(cfg: Config, model: Any, dev: PreparedSplit, ctx: DistributedContext,
                 step: int, calibration: Calibration | None = None,
                 metrics: MetricsLogger | None = None,
                 selection: dict[str, Any] | None = None) -> dict[str, Any]:
    """Official SQuAD 2.0 EM/F1 on the dev data, against the raw file's gold answers, at the
    threshold --null-threshold names (auto: the calibrated one); files in output_dir, a line
    in metrics.jsonl and, through `metrics` (a squadft.train.tracking.MetricsLogger), the
    trackers. `selection`: how the weights were chosen, for eval_results.json."""
    threshold = resolve_null_threshold(cfg.null_threshold, calibration)
    answers = None
    if ctx.is_main:
        gold = load_gold(dev.files[0].path, dev.specs[0])
        answers, warnings = gold_for_examples(gold, dev.examples,
                                              limited=cfg.max_eval_samples is not None,
                                              source=str(dev.specs[0]))
        for warning in warnings:
            warn(warning)
    model.eval()
    extra = None
    if selection is not None:
        extra = {"selection": {k: v for k, v in selection.items()
                               if k not in ("calibration", "question_f1")}}
    scores = evaluate_model(model, dev.examples, dev.features, cfg=cfg, threshold=threshold,
                            output_dir=cfg.output_dir, device=ctx.device, gold=answers,
                            extra=extra)
    if ctx.is_main:
        for line in format_metrics(scores).splitlines():
            say(line)
        keys = ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1",
                "null_threshold", "null_threshold_kind", "always_no_answer_f1",
                "best_exact", "best_f1", "best_f1_thresh")
        results = {k: scores[k] for k in keys if k in scores}
        if metrics is not None:
            metrics.log_eval(step, results)
        else:
            with open(Path(cfg.output_dir) / METRICS_FILE, "a") as handle:
                handle.write(json.dumps({"step": step, "eval": results}) + "\n")
    return scores
