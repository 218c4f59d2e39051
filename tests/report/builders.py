"""Run directories for the `squadft report` tests, and readers of the page.

The run directories are built the way a run writes them, without training: real dev articles
(one question rewritten to carry markup), made-up best spans and scores per question, then the
real `score_postprocessed` and `write_prediction_files` write predictions.json, na_probs.json,
nbest_predictions.json and eval_results.json, and `InferenceSettings` final/.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import math
import random
import re
from pathlib import Path
from typing import Any

from squadft.config import Config
from squadft.evaluate.calibration import Calibration, InferenceSettings, NullThreshold
from squadft.evaluate.gold import load_gold
from squadft.evaluate.outputs import write_prediction_files
from squadft.evaluate.postprocess import Candidate, PostprocessResult
from squadft.evaluate.scoring import score_postprocessed
from squadft.evaluate.squad_metrics import evaluate_predictions, normalize_answer
from squadft.filespec import parse_file_spec

SCRIPT_QUESTION = "<script>alert('x')</script> Who & what <b>ruled</b>?"
DEV_NAME = "dev-small.json.gz"
DEV_FILE = DEV_NAME + "[1:]"  # the report must apply the run's article slice
THRESHOLD = 0.37
TRAINING_FIGURES = ("loss", "learning-rate", "grad-norm", "throughput")
EVAL_FIGURES = ("threshold", "answerability", "by-word", "by-length")


def _questions(source_dir: Path) -> list[tuple[str, str, list[str], str]]:
    """(id, question, answers, context) of the questions DEV_FILE selects."""
    with gzip.open(source_dir / DEV_NAME, "rt", encoding="utf-8") as handle:
        data = json.load(handle)
    return [(qa["id"], qa["question"], [a["text"] for a in qa["answers"]], p["context"])
            for article in data["data"][1:] for p in article["paragraphs"] for qa in p["qas"]]


def synthetic_result(source_dir: Path, seed: int) -> PostprocessResult:
    """Best spans (right, partial or wrong), null score differences and n-best lists like
    postprocess_predictions makes them: best first, the null answer with answer_start -1."""
    rng = random.Random(seed)
    spans: dict[str, str] = {}
    diffs: dict[str, float] = {}
    nbest: dict[str, list[Candidate]] = {}
    shared_diff = None
    for n, (qid, question, answers, context) in enumerate(_questions(source_dir)):
        words = context.split()
        draw = rng.random()
        if answers and draw < 0.55:
            span = answers[0]
        elif answers and draw < 0.7:
            span = f"{answers[0].split()[0]} {rng.choice(words)}"
        else:
            span = ""
            while not normalize_answer(span):
                # (the official best_f1 sweep counts a span that normalises to nothing, "the",
                # as an answer, where the official F1 counts it as "": keep clear of that)
                start = rng.randrange(len(words) - 3)
                span = " ".join(words[start:start + rng.randint(1, 3)])
        score = rng.gauss(6.0, 2.0)
        null = score + rng.gauss(-1.5 if answers else 1.0, 2.0)
        if question == SCRIPT_QUESTION:
            span, null = "a confident wrong answer", score + 12.0  # "" above the threshold
        if n in (3, 4):  # two questions with the same difference: ties at a threshold
            shared_diff = shared_diff if shared_diff is not None else null - score
            null = score + shared_diff
        if n in (5, 6):  # no valid span at all: "" at every threshold
            spans[qid], diffs[qid] = "", math.inf
            nbest[qid] = [Candidate("", null, null / 2, null / 2, -1, 1.0)]
            continue
        second = " ".join(words[:2])
        candidates = sorted(
            [Candidate(span, score, score / 2, score / 2, max(0, context.find(span)), 0.0),
             Candidate(second, score - 1.0 - rng.random(), score / 2, score / 2 - 1, 0, 0.0),
             Candidate("", null, null / 2, null / 2, -1, 0.0)],
            key=lambda c: -c.score)
        weights = [math.exp(c.score - candidates[0].score) for c in candidates]
        nbest[qid] = [Candidate(c.text, c.score, c.start_logit, c.end_logit, c.answer_start,
                                w / sum(weights)) for c, w in zip(candidates, weights,
                                                                  strict=True)]
        spans[qid], diffs[qid] = span, null - score  # the subtraction postprocess makes
    return PostprocessResult(
        predictions={q: "" if diffs[q] > THRESHOLD else s for q, s in spans.items()},
        best_spans=spans, null_score_diff=diffs, null_threshold=THRESHOLD, nbest=nbest)


def write_metrics(path: Path, steps: int, *, lr: float = 3e-4, seed: int = 0,
                  eval_line: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records = []
    for step in range(5, steps + 1, 5):
        warm = min(1.0, step / 20)
        records.append({
            "step": step, "epoch": round(step / 120, 4),
            "loss": 1.2 + 4.0 * math.exp(-step / 30) + rng.random() * 0.2,
            "lr": lr * warm * (1 - step / (steps + 20)),
            "grad_norm": 2.0 + 6.0 * math.exp(-step / 25) + rng.random(),
            "tokens_per_s": 2400 + rng.gauss(0, 80), "samples_per_s": 18 + rng.gauss(0, 0.6),
        })
    lines = [json.dumps(r) + "\n" for r in records]
    if eval_line is not None:
        lines.append(json.dumps({"step": steps, "eval": eval_line}) + "\n")
    path.write_text("".join(lines))
    return records


def make_run(directory: Path, source_dir: Path, *, evaluated: bool = True, seed: int = 1,
             lr: float = 3e-4, steps: int = 100) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    Config(source=source_dir.as_uri(), dev_file=DEV_FILE, output_dir=str(directory),
           cache_dir=str(directory.parent / "cache"), learning_rate=lr,
           max_eval_samples=None).save(directory)
    if not evaluated:
        write_metrics(directory / "metrics.jsonl", steps, lr=lr, seed=seed)
        return directory
    result = synthetic_result(source_dir, seed)
    gold = load_gold(source_dir / DEV_NAME, parse_file_spec(DEV_FILE)).answers
    calibration = Calibration(
        null_threshold=THRESHOLD, source="2 training articles held out of training",
        questions=300, unanswerable=140,
        scores={"exact": 61.0, "f1": 64.5, "total": 300}, f1_at_zero=60.2,
        always_no_answer_f1=46.7)
    threshold = NullThreshold(THRESHOLD, "calibrated", calibration.describe())
    metrics, predictions = score_postprocessed(result, gold, threshold)
    write_metrics(directory / "metrics.jsonl", steps, lr=lr, seed=seed,
                  eval_line={k: metrics[k] for k in ("exact", "f1", "null_threshold")})
    (directory / "train_results.json").write_text(json.dumps(
        {"steps": steps, "epochs": 1.0, "final_loss": 1.3, "tokens_per_second": 2410.0}))
    (directory / "final").mkdir()
    (directory / "final" / "squadft_inference.json").write_text(json.dumps(InferenceSettings(
        384, 128, 64, 20, 30, calibration=calibration).to_json()))
    write_prediction_files(directory, predictions, result, metrics)
    return directory


def figure_uris(page: str) -> dict[str, str]:
    """figure id -> the src of its image."""
    return dict(re.findall(r'<figure id="fig-([\w-]+)"><img alt="[^"]*" src="([^"]*)"', page))


def decode_png(uri: str) -> Any:
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    raw = base64.b64decode(uri[len(prefix):], validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def assert_self_contained(page: str) -> None:
    assert not re.search(r"https?://", page)
    # nothing is fetched: every src is a data URI, no stylesheet, script or link elsewhere
    assert all(src.startswith("data:image/png;base64,")
               for src in re.findall(r'\bsrc="([^"]*)"', page))
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page, re.IGNORECASE)
    assert "url(" not in page and "@import" not in page


def official_at(gold: dict[str, list[str]], result: PostprocessResult, t: float
                ) -> tuple[float, float, float, float]:
    """(EM, F1, HasAns F1, NoAns F1) of the official metric at threshold t."""
    scores = evaluate_predictions(gold, result.predictions_at(t))
    return scores["exact"], scores["f1"], scores["HasAns_f1"], scores["NoAns_f1"]
