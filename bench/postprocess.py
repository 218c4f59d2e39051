"""Post-processing speed: squadft's vectorised decoding vs a utils_qa-style per-window loop.

    python bench/postprocess.py [--repeats 3] [--seed 0] [--no-record]

Both decode the same seeded random logits for the windows of the shared dev subset (squadft
build_features, 384/128) with n_best 20 and max_answer_length 30, and must give identical
predictions (the script exits with status 1 otherwise). The baseline follows transformers'
examples/pytorch/question-answering/utils_qa.py `postprocess_qa_predictions` (SQuAD 2.0 mode):
for each question, for each of its windows, the top-20 start and top-20 end logits by argsort,
every start x end pair checked in Python, then sorted, softmaxed and compared to the minimum
null score. Its per-window offset lists (None outside the context) are built before timing.

Logits: standard normal over the context tokens, N(-4, 1) at [CLS] (the null score) and -1e4
elsewhere (question, separators, padding), as a trained model scores them; so utils_qa's
argsort over all positions picks context tokens, like squadft's context-only top-k. Identity is
checked on the predictions at threshold 0 and at the median null-score difference (about half of
the questions answered ""), on the best span and on the null-score differences.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from typing import Any

import _benchlib as lib
import numpy as np

N_BEST = 20
MAX_ANSWER_LENGTH = 30


def utils_qa_postprocess(
    examples: list[Any], feature_example_index: list[int], feature_offsets: list[list[Any]],
    all_start_logits: np.ndarray, all_end_logits: np.ndarray, *, n_best_size: int = N_BEST,
    max_answer_length: int = MAX_ANSWER_LENGTH, null_score_diff_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, str], dict[str, float]]:
    """(predictions, best non-null span, null score diff) per question id, utils_qa's way."""
    features_per_example: dict[int, list[int]] = defaultdict(list)
    for feature_index, example_index in enumerate(feature_example_index):
        features_per_example[example_index].append(feature_index)

    all_predictions: dict[str, str] = {}
    best_spans: dict[str, str] = {}
    scores_diff: dict[str, float] = {}
    all_nbest: dict[str, list[dict[str, Any]]] = {}
    for example_index, example in enumerate(examples):
        min_null_prediction = None
        prelim_predictions = []
        for feature_index in features_per_example[example_index]:
            # float64 like squadft, so that near-ties rank the same way in both
            start_logits = all_start_logits[feature_index].astype(np.float64)
            end_logits = all_end_logits[feature_index].astype(np.float64)
            offset_mapping = feature_offsets[feature_index]
            feature_null_score = start_logits[0] + end_logits[0]
            if min_null_prediction is None or min_null_prediction["score"] > feature_null_score:
                min_null_prediction = {"offsets": (0, 0), "score": feature_null_score,
                                       "start_logit": start_logits[0],
                                       "end_logit": end_logits[0]}
            start_indexes = np.argsort(start_logits)[-1: -n_best_size - 1: -1].tolist()
            end_indexes = np.argsort(end_logits)[-1: -n_best_size - 1: -1].tolist()
            for start_index in start_indexes:
                for end_index in end_indexes:
                    if (start_index >= len(offset_mapping) or end_index >= len(offset_mapping)
                            or offset_mapping[start_index] is None
                            or len(offset_mapping[start_index]) < 2
                            or offset_mapping[end_index] is None
                            or len(offset_mapping[end_index]) < 2):
                        continue
                    if end_index < start_index or end_index - start_index + 1 > max_answer_length:
                        continue
                    prelim_predictions.append({
                        "offsets": (offset_mapping[start_index][0], offset_mapping[end_index][1]),
                        "score": start_logits[start_index] + end_logits[end_index],
                        "start_logit": start_logits[start_index],
                        "end_logit": end_logits[end_index],
                    })
        if min_null_prediction is None:  # no window at all
            all_predictions[example.id] = best_spans[example.id] = ""
            scores_diff[example.id] = float("inf")
            continue
        prelim_predictions.append(min_null_prediction)
        null_score = min_null_prediction["score"]
        predictions = sorted(prelim_predictions, key=lambda x: x["score"],
                             reverse=True)[:n_best_size]
        if not any(p["offsets"] == (0, 0) for p in predictions):
            predictions.append(min_null_prediction)
        context = example.context
        for prediction in predictions:
            offsets = prediction.pop("offsets")
            prediction["text"] = context[offsets[0]: offsets[1]]
        if len(predictions) == 0 or (len(predictions) == 1 and predictions[0]["text"] == ""):
            predictions.insert(0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0,
                                   "score": 0.0})
        scores = np.array([prediction.pop("score") for prediction in predictions])
        exp_scores = np.exp(scores - np.max(scores))
        probs = exp_scores / exp_scores.sum()
        for prob, prediction in zip(probs, predictions, strict=True):
            prediction["probability"] = prob
        i = 0
        while predictions[i]["text"] == "":
            i += 1
        best_non_null = predictions[i]
        score_diff = null_score - best_non_null["start_logit"] - best_non_null["end_logit"]
        scores_diff[example.id] = float(score_diff)
        best_spans[example.id] = best_non_null["text"]
        # utils_qa keeps the n-best lists as JSON-ready dicts of Python floats
        all_nbest[example.id] = [
            {k: (float(v) if isinstance(v, np.floating) else v) for k, v in prediction.items()}
            for prediction in predictions
        ]
        all_predictions[example.id] = ("" if score_diff > null_score_diff_threshold
                                       else best_non_null["text"])
    return all_predictions, best_spans, scores_diff


def seeded_logits(features: Any, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = len(features)
    is_context = np.zeros((n, width), dtype=bool)
    lengths = features.lengths.astype(np.int64)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(int(lengths.sum())) - np.repeat(features.row_splits[:-1], lengths)
    is_context[rows, cols] = np.asarray(features.offsets)[:, 0] >= 0
    logits = []
    for _ in range(2):
        values = np.where(is_context, rng.standard_normal((n, width)), -1e4)
        values[np.arange(n), features.cls_index] = rng.normal(-4.0, 1.0, n)
        logits.append(values.astype(np.float32))
    return logits[0], logits[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    lib.add_common_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random logits")
    args = parser.parse_args()

    from squadft.data.features import build_features
    from squadft.data.squad import load_squad
    from squadft.evaluate.postprocess import postprocess_predictions

    machine = lib.machine_line()
    tokenizer = lib.load_bert_tokenizer()
    examples, _ = load_squad(lib.squad_dir() / lib.DEV_FILE)
    features, _ = build_features(examples, tokenizer, max_seq_length=lib.MAX_SEQ_LENGTH,
                                 doc_stride=lib.DOC_STRIDE, max_query_length=lib.MAX_QUERY_LENGTH)
    if not np.all(features.cls_index == 0):
        raise SystemExit("utils_qa reads the null score at position 0; [CLS] is elsewhere here")
    start_logits, end_logits = seeded_logits(features, lib.MAX_SEQ_LENGTH, args.seed)
    # what run_qa's prepare_validation_features leaves in the dataset: None off-context
    feature_offsets = [
        [None if a < 0 else (a, b) for a, b in features.window(i)["offsets"].tolist()]
        for i in range(len(features))
    ]
    feature_example_index = features.example_index.tolist()
    outputs: dict[str, Any] = {}

    def ours() -> None:
        outputs["ours"] = postprocess_predictions(
            examples, features, start_logits, end_logits, n_best=N_BEST,
            max_answer_length=MAX_ANSWER_LENGTH, null_threshold=0.0)

    def ours_decode_only() -> None:
        postprocess_predictions(examples, features, start_logits, end_logits, n_best=N_BEST,
                                max_answer_length=MAX_ANSWER_LENGTH, null_threshold=0.0,
                                with_nbest=False)

    def baseline() -> None:
        outputs["baseline"] = utils_qa_postprocess(
            examples, feature_example_index, feature_offsets, start_logits, end_logits)

    print(f"dev subset: {len(examples)} questions, {len(features)} windows; timing "
          f"{args.repeats} runs of each ...", flush=True)
    timings = lib.time_round_robin(
        {"ours": ours, "baseline": baseline, "decode_only": ours_decode_only}, args.repeats)
    ours_time, baseline_time = timings["ours"], timings["baseline"]

    result = outputs["ours"]
    base_predictions, base_spans, base_diffs = outputs["baseline"]
    problems = []
    if result.predictions != base_predictions:
        problems.append("predictions at threshold 0")
    if result.best_spans != base_spans:
        problems.append("best spans")
    ids = list(base_diffs)
    ours_diff = np.array([result.null_score_diff[i] for i in ids])
    base_diff = np.array([base_diffs[i] for i in ids])
    if not np.allclose(ours_diff, base_diff, rtol=0, atol=1e-6):
        problems.append(f"null score differences (max gap {np.abs(ours_diff - base_diff).max()})")
    median_diff = float(np.median(base_diff))
    base_at_median = {i: "" if base_diffs[i] > median_diff else base_spans[i] for i in ids}
    if result.predictions_at(median_diff) != base_at_median:
        problems.append("predictions at the median threshold")
    differing = [i for i in ids if result.best_spans[i] != base_spans[i]]
    for qid in differing[:5]:
        print(f"  {qid}: ours {result.best_spans[qid]!r} baseline {base_spans[qid]!r}")

    ratio = baseline_time.median / ours_time.median
    answered_at_median = sum(1 for text in base_at_median.values() if text)
    rows = [[name, len(examples), len(features), f"{timing.median:.3f} ({timing.spread()})",
             f"{len(features) / timing.median:,.0f}"]
            for name, timing in (
                ("squadft postprocess_predictions (vectorised, with n-best lists)", ours_time),
                ("utils_qa-style loop (with n-best lists)", baseline_time),
                ("squadft, with_nbest=False (predictions + null diffs only)",
                 timings["decode_only"]))]
    table = lib.markdown_table(
        ["path", "questions", "windows", "median s (min-max)", "windows/s"], rows)
    verdict = ("identical" if not problems
               else f"DIFFERENT ({', '.join(problems)}; {len(differing)} best spans differ)")
    notes = [
        f"speed-up (both building n-best lists): {lib.goal_text(ratio, 5)}; without n-best "
        f"lists squadft is {baseline_time.median / timings['decode_only'].median:.2f}x the "
        "baseline",
        f"predictions: {verdict} (threshold 0: {sum(1 for t in base_predictions.values() if t)} "
        f"answered; median threshold {median_diff:.3f}: {answered_at_median} answered)",
        f"n_best {N_BEST}, max_answer_length {MAX_ANSWER_LENGTH}, logits seed {args.seed}, "
        f"width {lib.MAX_SEQ_LENGTH}; both build n-best lists with probabilities",
    ]
    lib.report("Post-processing (bench/postprocess.py)", table, notes,
               record=not args.no_record, machine=machine)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
