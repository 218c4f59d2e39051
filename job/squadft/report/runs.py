"""A run directory read into a `Run`, with the numbers computed from its files: the EM/F1 curve
against the no-answer threshold, F1 by question word and by answer length. Pure apart from
reading; no matplotlib. Nothing is required but one of these files; whatever is missing is said
in the run's notes (and so on the page):

- metrics.jsonl: training curves (loss, learning rate, grad norm, throughput, GPU memory)
  against step; a run still going may end in a half-written line, skipped and reported;
- eval_results.json: the official keys at the threshold in effect (else the `eval` line of
  metrics.jsonl), the "always no answer" baseline, the oracle;
- nbest_predictions.json: each question's best span and null score difference (null score -
  best span score, exactly as `postprocess_predictions` computed it): with the dev data's gold
  answers, the EM/F1 curve against the no-answer threshold and the threshold table;
- predictions.json: the answers at the threshold in effect: F1 by question word and by answer
  length, the worst errors;
- squadft_config.json: which dev file (and article slice) was evaluated, and the settings;
- final/squadft_inference.json, train_results.json: calibration and training summaries.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from squadft.data.selection import select_raw_articles
from squadft.errors import ConfigError, DataError
from squadft.evaluate.gold import gold_from_squad
from squadft.evaluate.squad_metrics import raw_scores
from squadft.filespec import FileSpec, parse_file_spec, parse_local_spec
from squadft.io import read_json_file

METRICS_FILE = "metrics.jsonl"  # as squadft.train.loop writes it (not imported: no torch here)
CONFIG_FILE = "squadft_config.json"
RESULTS_FILE = "eval_results.json"
PREDICTIONS_FILE = "predictions.json"
NBEST_FILE = "nbest_predictions.json"
TRAIN_RESULTS_FILE = "train_results.json"
INFERENCE_PATH = Path("final") / "squadft_inference.json"
QUESTION_WORDS = ("what", "who", "when", "where", "which", "how", "why", "other")
_WORD_ALIASES = {"whom": "who", "whose": "who"}
# (label, fewest words, most words) of the gold answer; unanswerable questions on their own
LENGTH_BUCKETS: tuple[tuple[str, int, float], ...] = (
    ("1", 1, 1), ("2", 2, 2), ("3", 3, 3), ("4-5", 4, 5), ("6-10", 6, 10), ("11+", 11, math.inf))
NO_ANSWER_BUCKET = "no answer"
LENGTH_LABELS = (*(label for label, _, _ in LENGTH_BUCKETS), NO_ANSWER_BUCKET)
BREAKDOWN_LABELS = {"word": QUESTION_WORDS, "length": LENGTH_LABELS}  # in the order shown


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def num(value: Any) -> float:
    return float(value) if is_number(value) else math.nan


@dataclass
class TrainingLog:
    """The parsed lines of metrics.jsonl."""

    steps: list[dict[str, Any]]  # training records in step order, the last record of a step
    evals: list[dict[str, Any]]  # {"step": N, "eval": {...}} lines
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of unreadable lines
    partial_last_line: bool = False  # the last line is unterminated and unreadable
    # {"step": N, "heldout": {...}} lines: evaluations on the held-out articles, step order
    held_out: list[dict[str, Any]] = field(default_factory=list)

    def held_out_series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the held-out evaluations with a finite number for `key`."""
        pairs = [(r["step"], r["heldout"][key]) for r in self.held_out
                 if is_number(r["heldout"].get(key)) and math.isfinite(r["heldout"][key])]
        steps, values = zip(*pairs, strict=True) if pairs else ((), ())
        return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the records that have a finite number for `key`."""
        pairs = [(r["step"], r[key]) for r in self.steps if is_number(r.get(key))
                 and math.isfinite(r[key])]
        if not pairs:
            return np.zeros(0), np.zeros(0)
        steps, values = zip(*pairs, strict=True)
        return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)

    def notes(self) -> list[str]:
        out = []
        if self.partial_last_line:
            out.append("the last line of metrics.jsonl is incomplete (the run is still writing "
                       "it, or was killed while writing); it is left out")
        others = [n for n in self.bad_lines if not (self.partial_last_line
                                                    and n == self.bad_lines[-1])]
        if others:
            out.append(f"{len(others)} unreadable line(s) of metrics.jsonl left out (first: "
                       f"line {others[0]})")
        return out


def read_metrics(path: str | Path) -> TrainingLog:
    """metrics.jsonl as it is now, also while a run appends to it: a line that does not parse
    (the half-written last one) is skipped and counted; of several records of one step (a
    run resumed by an older version) the last one counts."""
    lines = Path(path).read_bytes().split(b"\n")
    unterminated = lines[-1] != b""
    if not unterminated:
        lines.pop()
    by_step: dict[int, dict[str, Any]] = {}
    held_out: dict[int, dict[str, Any]] = {}
    evals: list[dict[str, Any]] = []
    bad: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            record = None
        if not isinstance(record, dict) or not math.isfinite(num(record.get("step"))):
            bad.append(number)
        elif isinstance(record.get("eval"), dict):
            evals.append(record)
        elif isinstance(record.get("heldout"), dict):
            held_out[int(record["step"])] = record
        else:
            by_step[int(record["step"])] = record
    partial = unterminated and bool(bad) and bad[-1] == len(lines)
    return TrainingLog([by_step[s] for s in sorted(by_step)], evals, bad, partial,
                       [held_out[s] for s in sorted(held_out)])


def best_spans_from_nbest(nbest: Mapping[str, Sequence[Mapping[str, Any]]]
                          ) -> tuple[dict[str, str], dict[str, float]]:
    """Each question's best span and null score difference, read back from
    nbest_predictions.json: the lists are best first, the null answer is the entry with
    answer_start -1, and null score - best span score is the same float64 subtraction
    `postprocess_predictions` made (the scores are written with repr, so they read back
    exactly). No span: "" and +inf; no null answer (no window): +inf."""
    spans: dict[str, str] = {}
    diffs: dict[str, float] = {}
    for qid, candidates in nbest.items():
        span = next((c for c in candidates if c.get("answer_start") != -1), None)
        null = next((c for c in candidates if c.get("answer_start") == -1), None)
        spans[qid] = str(span["text"]) if span is not None else ""
        # float(): also "Infinity"/"-Infinity"/"NaN" spelled as JSON strings
        diffs[qid] = (math.inf if span is None or null is None
                      else float(null["score"]) - float(span["score"]))
    return spans, diffs


@dataclass(frozen=True)
class ThresholdCurve:
    """EM and F1 (percent) of answering a question with its best span when its null score
    difference is at most the threshold, and "" otherwise, for every threshold.

    The values change only at the questions' differences: `thresholds` are those (sorted,
    distinct, finite) and exact[i]/f1[i] hold from thresholds[i] up to the next one; below
    the first, every question with a difference is answered "" (`none_exact`/`none_f1`).
    """

    thresholds: np.ndarray
    exact: np.ndarray
    f1: np.ndarray
    none_exact: float
    none_f1: float
    total: int
    _sorted_diffs: np.ndarray = field(repr=False)
    _gain_exact: np.ndarray = field(repr=False)
    _gain_f1: np.ndarray = field(repr=False)

    def at(self, threshold: float) -> tuple[float, float]:
        """(EM, F1) at `threshold`: what eval_results.json reports for a run evaluated there."""
        k = int(np.searchsorted(self._sorted_diffs, threshold, side="right"))
        return float(self._gain_exact[k]), float(self._gain_f1[k])

    def best(self) -> tuple[float, float]:
        """(highest F1, the lowest threshold reaching it; -inf: answer nothing). Unlike the
        official best_f1, which sweeps predictions.json and so cannot answer a question the
        threshold in effect turned into "", this answers best spans at every threshold."""
        if not len(self.f1) or self.f1.max() <= self.none_f1:
            return self.none_f1, -math.inf
        i = int(np.argmax(self.f1))
        return float(self.f1[i]), float(self.thresholds[i])


def threshold_curve(gold: Mapping[str, list[str]], best_spans: Mapping[str, str],
                    null_score_diff: Mapping[str, float]) -> ThresholdCurve:
    """The EM/F1 curve against the null threshold, with the official per-question scores.

    gold: id -> answer texts ([] = unanswerable), every scored question (the denominator);
    best_spans/null_score_diff: per question id (see `best_spans_from_nbest`). A question
    answered at threshold t when null_score_diff <= t (the rule of `predictions_at`) scores
    `raw_scores` of its best span, otherwise `raw_scores` of "" - so at the threshold a run was
    evaluated with, the curve gives eval_results.json's exact and f1. A gold question without
    a span or difference scores 0 at every threshold, as a missing prediction does there.

    The official best_f1 (eval_results.json) is this curve's maximum up to the threshold in
    effect (it sweeps predictions.json, whose answers above that threshold are already ""),
    but for one quirk it keeps from evaluate-v2.0.py: an unanswerable question answered with a
    span that normalises to nothing ("the") costs a point in its sweep and none in its F1.
    """
    if not gold:
        raise DataError("no gold questions to draw the threshold curve with")
    present = [q for q in gold if q in best_spans and q in null_score_diff]
    spans = {q: best_spans[q] for q in present}
    exact_span, f1_span = raw_scores(gold, spans)
    exact_none, f1_none = raw_scores(gold, {q: "" for q in present})
    diffs = np.array([float(null_score_diff[q]) for q in present], dtype=np.float64)
    if np.isnan(diffs).any():
        raise DataError("a null score difference is NaN: the threshold curve is undefined")
    order = np.argsort(diffs, kind="stable")
    sorted_diffs = diffs[order]
    total = len(gold)

    def cumulative(span: Mapping[str, float], none: Mapping[str, float]) -> np.ndarray:
        gains = np.array([span[q] - none[q] for q in present], dtype=np.float64)[order]
        base = math.fsum(none[q] for q in present)
        # value after answering the first k questions in difference order, k = 0..n
        return 100.0 * (base + np.concatenate([[0.0], np.cumsum(gains)])) / total

    gain_exact = cumulative(exact_span, exact_none)
    gain_f1 = cumulative(f1_span, f1_none)
    thresholds = np.unique(sorted_diffs[np.isfinite(sorted_diffs)])
    answered = np.searchsorted(sorted_diffs, thresholds, side="right")
    return ThresholdCurve(
        thresholds=thresholds, exact=gain_exact[answered], f1=gain_f1[answered],
        none_exact=float(gain_exact[0]), none_f1=float(gain_f1[0]), total=total,
        _sorted_diffs=sorted_diffs, _gain_exact=gain_exact, _gain_f1=gain_f1)


def logit(p: float) -> float:
    """The null score difference whose sigmoid is p (na_probs.json thresholds -> scores)."""
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p) - math.log1p(-p)


def question_word(question: str) -> str:
    """The first of what/who/when/where/which/how/why in the question (whom/whose count as
    who), else "other"."""
    for word in re.findall(r"[a-z]+", question.lower()):
        word = _WORD_ALIASES.get(word, word)
        if word in QUESTION_WORDS:
            return word
    return "other"


def answer_length_bucket(answers: Sequence[str]) -> str:
    """The bucket of the first gold answer's length in words ("no answer" when none)."""
    if not answers:
        return NO_ANSWER_BUCKET
    words = len(answers[0].split())
    for label, low, high in LENGTH_BUCKETS:
        if low <= words <= high:
            return label
    return LENGTH_BUCKETS[0][0]  # an all-whitespace answer: counts as one word


@dataclass(frozen=True)
class Breakdown:
    labels: tuple[str, ...]
    f1: dict[str, float]  # label -> mean F1 (percent) of its questions
    count: dict[str, int]


def breakdown(f1: Mapping[str, float], groups: Mapping[str, str],
              labels: Sequence[str]) -> Breakdown:
    """Mean per-question F1 (0..1 in, percent out) by group; labels without questions omitted."""
    sums: dict[str, list[float]] = {label: [] for label in labels}
    for qid, group in groups.items():
        sums.setdefault(group, []).append(f1.get(qid, 0.0))
    kept = tuple(label for label in sums if sums[label])
    return Breakdown(kept, {label: 100.0 * math.fsum(sums[label]) / len(sums[label])
                            for label in kept},
                     {label: len(sums[label]) for label in kept})


@dataclass
class Evaluation:
    results: dict[str, Any]  # eval_results.json (or the eval line of metrics.jsonl)
    from_file: bool  # results came from eval_results.json
    gold: dict[str, list[str]] | None = None
    questions: dict[str, str] = field(default_factory=dict)
    data_source: str = ""
    predictions: dict[str, str] | None = None
    best_spans: dict[str, str] = field(default_factory=dict)
    diffs: dict[str, float] = field(default_factory=dict)
    curve: ThresholdCurve | None = None
    f1: dict[str, float] = field(default_factory=dict)  # per question at the threshold in effect
    by_word: Breakdown | None = None
    by_length: Breakdown | None = None

    @property
    def threshold(self) -> float | None:
        """The null threshold in effect (a score difference); None when not recorded."""
        value = self.results.get("null_threshold")
        try:  # +-inf is written as a string ("inf") in eval_results.json
            return float(value) if is_number(value) or isinstance(value, str) else None
        except ValueError:
            return None

    @property
    def oracle_threshold(self) -> float | None:
        """best_f1_thresh (a no-answer probability) as a null score difference."""
        value = self.results.get("best_f1_thresh")
        return logit(float(value)) if is_number(value) else None


@dataclass
class Run:
    path: Path
    label: str
    config: dict[str, Any] | None = None
    log: TrainingLog | None = None
    evaluation: Evaluation | None = None
    train_results: dict[str, Any] | None = None
    inference: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        parts = []
        if self.train_results is not None:
            steps = self.train_results.get("steps")
            parts.append(f"training finished ({steps} steps)" if steps is not None
                         else "training finished")
        elif self.log is not None and self.log.steps:
            last = self.log.steps[-1]
            epoch = f", epoch {last['epoch']:.2f}" if is_number(last.get("epoch")) else ""
            parts.append(f"training in progress or interrupted: last logged step "
                         f"{last['step']}{epoch}")
        else:
            parts.append("no training step logged yet")
        if self.evaluation is None:
            parts.append("no evaluation yet (eval_results.json missing): curves only")
        elif not self.evaluation.from_file:
            parts.append("eval_results.json missing: scores from the eval line of metrics.jsonl")
        return "; ".join(parts)


def _not_object(name: str, value: Any) -> str | None:
    """A note when `value` is not a JSON object (None when it is)."""
    if isinstance(value, dict):
        return None
    kind = "null" if value is None else type(value).__name__
    return f"{name} a JSON {kind} where an object belongs; left out"


def _read_object(run_dir: Path, name: str | Path, notes: list[str]) -> dict[str, Any] | None:
    """The JSON object in run_dir/name; None (and a note) when it is missing, unreadable, or
    not an object."""
    path = run_dir / name
    if not path.is_file():
        return None
    try:
        value = read_json_file(path)
    except DataError as exc:
        notes.append(f"{exc}; left out")
        return None
    wrong = _not_object(f"{Path(name).as_posix()}:", value)
    if wrong:
        notes.append(wrong)
        return None
    return value


def _check_calibration(inference: dict[str, Any], notes: list[str]) -> None:
    """Drops a calibration (or its scores) that is not an object, with a note."""
    calibration = inference.get("calibration")
    where = f"{INFERENCE_PATH.as_posix()}: its calibration"
    wrong = _not_object(where + " is", calibration) if calibration is not None else None
    if not wrong and calibration is not None and calibration.get("scores") is not None:
        wrong = _not_object(where + " scores are", calibration["scores"])
    if wrong:
        notes.append(wrong)
        inference.pop("calibration")


def _check_results(results: dict[str, Any], source: str, notes: list[str]) -> None:
    """Drops a null_threshold that is no number and a best_f1_thresh that is no probability,
    with a note: the figures and tables do without them."""
    value = results.get("null_threshold")
    if value is not None:
        try:  # +-inf is written as a string ("inf") in eval_results.json
            bad = math.isnan(float(value)) or isinstance(value, bool)
        except (TypeError, ValueError):
            bad = True
        if bad:
            notes.append(f"{source}: null_threshold is {value!r}, not a number; no threshold "
                         "in effect")
            results.pop("null_threshold")
    value = results.get("best_f1_thresh")
    if value is not None and not (is_number(value) and 0.0 <= value <= 1.0):
        notes.append(f"{source}: best_f1_thresh is {value!r}, not a probability from 0 to 1; "
                     "no oracle threshold")
        results.pop("best_f1_thresh")


def load_run(run_dir: str | Path, *, data: str | None = None, label: str | None = None) -> Run:
    """Everything the report shows about one run directory. ConfigError when it is not a run
    directory; DataError when `data` (given explicitly) cannot be read."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError(f"run directory {path} does not exist")
    known = [CONFIG_FILE, METRICS_FILE, RESULTS_FILE, NBEST_FILE]
    if not any((path / name).is_file() for name in known):
        raise ConfigError(f"{path} is not a squadft run directory (none of "
                          f"{', '.join(known)} is there)")
    run = Run(path=path, label=label or path.resolve().name or str(path))
    run.config = _read_object(path, CONFIG_FILE, run.notes)
    if (path / METRICS_FILE).is_file():
        run.log = read_metrics(path / METRICS_FILE)
        run.notes.extend(run.log.notes())
    else:
        run.notes.append("no metrics.jsonl: no training curves")
    run.train_results = _read_object(path, TRAIN_RESULTS_FILE, run.notes)
    run.inference = _read_object(path, INFERENCE_PATH, run.notes)
    if run.inference is not None:
        _check_calibration(run.inference, run.notes)
    results = _read_object(path, RESULTS_FILE, run.notes)
    if results is not None:
        run.evaluation = Evaluation(results=results, from_file=True)
    elif run.log is not None and run.log.evals:
        run.evaluation = Evaluation(results=dict(run.log.evals[-1]["eval"]), from_file=False)
    if run.evaluation is not None:
        _check_results(run.evaluation.results, RESULTS_FILE if run.evaluation.from_file
                       else f"the eval line of {METRICS_FILE}", run.notes)
        _load_details(run, run.evaluation, data)
    return run


def load_runs(run_dirs: Sequence[str | Path], *, data: str | None = None) -> list[Run]:
    if not run_dirs:
        raise ConfigError("give at least one run directory")
    paths = [Path(p) for p in run_dirs]
    return [load_run(p, data=data, label=label)
            for p, label in zip(paths, _labels(paths), strict=True)]


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short distinct names: the directory name, with parents added while two are equal."""
    resolved = [p.resolve() for p in paths]
    depth = 1
    while True:
        labels = ["/".join(r.parts[-depth:]) or str(r) for r in resolved]
        if len(set(labels)) == len(labels) or depth > max(len(r.parts) for r in resolved):
            break
        depth += 1
    seen: dict[str, int] = {}
    out = []
    for label in labels:  # the same directory twice
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def find_dev_data(config: Mapping[str, Any] | None, data: str | None
                  ) -> tuple[Path | None, FileSpec | None, str]:
    """(path, article slice, how it was found or why not) of the dev file a run evaluated.

    `data` (--data PATH or PATH[A:B]) wins; without a slice of its own it takes the run's.
    Otherwise: the file under a local (file://) source, then the download cache's copy
    (`cache_folder` of the run's cache_dir and source).
    """
    run_spec = None
    if config and isinstance(config.get("dev_file"), str):
        try:
            run_spec = parse_file_spec(config["dev_file"])
        except ConfigError:
            run_spec = None
    if data is not None:
        spec = parse_local_spec(data)
        if not spec.sliced and run_spec is not None and run_spec.sliced:
            spec = FileSpec(spec.name, run_spec.start, run_spec.stop)
        path = Path(spec.name)
        if not path.is_file():
            raise DataError(f"--data {path}: file not found")
        return path, spec, f"--data {spec}"
    if run_spec is None:
        return None, None, f"{CONFIG_FILE} names no dev_file: pass --data PATH"
    source = config.get("source") if config else None
    candidates: list[Path] = []
    if isinstance(source, str):
        from squadft.data.pull import cache_folder, file_url_to_path

        scheme = source.split("://", 1)[0].lower() if "://" in source else ""
        if scheme == "file":
            candidates.append(file_url_to_path(source) / run_spec.name)
        elif scheme == "":
            candidates.append(Path(source) / run_spec.name)
        cache_dir = config.get("cache_dir") if config else None
        if isinstance(cache_dir, str):
            candidates.append(cache_folder(cache_dir, source) / run_spec.name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate, run_spec, f"{run_spec} found at {candidate}"
    where = ", ".join(str(c) for c in candidates) or "nowhere to look"
    return None, None, (f"dev data {run_spec} not found ({where}): pass --data PATH for the "
                        "threshold curve, the breakdowns and the errors")


def _load_details(run: Run, evaluation: Evaluation, data: str | None) -> None:
    """Gold answers, questions, predictions and n-best lists: the per-question figures."""
    path, spec, how = find_dev_data(run.config, data)
    if path is None or spec is None:
        run.notes.append(how)
        return
    try:
        raw = select_raw_articles(read_json_file(path, "dataset"), spec)
        gold = gold_from_squad(raw, str(spec)).answers
    except (DataError, ConfigError) as exc:
        if data is not None:
            raise
        run.notes.append(f"dev data: {exc}; no per-question figures")
        return
    questions = {str(qa["id"]): str(qa.get("question", "")) for article in raw["data"]
                 for paragraph in article["paragraphs"] for qa in paragraph["qas"]}
    predictions = _read_object(run.path, PREDICTIONS_FILE, run.notes)
    if predictions is None:
        run.notes.append(f"no {PREDICTIONS_FILE}: no per-question figures")
        return
    if run.config and run.config.get("max_eval_samples") is not None:
        # the run scored only its first max_eval_samples questions: those it predicted
        gold = {qid: answers for qid, answers in gold.items() if qid in predictions}
    total = evaluation.results.get("total")
    if is_number(total) and total != len(gold):
        run.notes.append(f"dev data {how}: {len(gold)} questions, but the evaluation scored "
                         f"{total}: not the evaluated data (pass --data PATH); no per-question "
                         "figures")
        return
    if not gold:
        run.notes.append(f"dev data {how}: none of its questions was predicted; no "
                         "per-question figures")
        return
    _score_questions(run, evaluation, gold, questions, predictions, how)


def _score_questions(run: Run, evaluation: Evaluation, gold: dict[str, list[str]],
                     questions: dict[str, str], predictions: dict[str, Any], how: str) -> None:
    """Per-question F1 at the threshold in effect and its breakdowns, then the threshold
    curve from the n-best lists, checked against eval_results.json."""
    evaluation.gold, evaluation.questions, evaluation.data_source = gold, questions, how
    evaluation.predictions = {k: v for k, v in predictions.items() if isinstance(v, str)}
    _, f1 = raw_scores(gold, evaluation.predictions)
    evaluation.f1 = {qid: f1.get(qid, 0.0) for qid in gold}
    evaluation.by_word = breakdown(evaluation.f1, {
        q: question_word(questions.get(q, "")) for q in gold}, QUESTION_WORDS)
    evaluation.by_length = breakdown(evaluation.f1, {
        q: answer_length_bucket(a) for q, a in gold.items()}, LENGTH_LABELS)
    nbest = _read_object(run.path, NBEST_FILE, run.notes)
    if nbest is None:
        run.notes.append(f"no {NBEST_FILE}: no threshold curve")
        return
    try:
        evaluation.best_spans, evaluation.diffs = best_spans_from_nbest(nbest)
        evaluation.curve = threshold_curve(gold, evaluation.best_spans, evaluation.diffs)
    except (DataError, KeyError, TypeError, ValueError, AttributeError) as exc:
        run.notes.append(f"{NBEST_FILE}: unreadable n-best lists ({exc}); no threshold curve")
        return
    threshold = evaluation.threshold
    if threshold is not None and evaluation.from_file:
        exact, f1_value = evaluation.curve.at(threshold)
        if not (math.isclose(exact, num(evaluation.results.get("exact")), abs_tol=1e-6)
                and math.isclose(f1_value, num(evaluation.results.get("f1")), abs_tol=1e-6)):
            run.notes.append(
                f"the threshold curve gives EM {exact:.2f} / F1 {f1_value:.2f} at the "
                f"threshold in effect, eval_results.json says {evaluation.results.get('exact')}"
                f" / {evaluation.results.get('f1')}: the files are not one set")
