"""`squadft report`: one self-contained HTML page about one or more run directories.

Read from each run directory (nothing is required but one of them; whatever is missing is
said on the page):

- metrics.jsonl            training curves: loss, learning rate, grad norm, throughput (and GPU
                           memory) against step; a run still going may end in a half-written
                           line, which is skipped and reported;
- eval_results.json        the official keys at the threshold in effect (else the `eval` line
                           of metrics.jsonl), the "always no answer" baseline, the oracle;
- nbest_predictions.json   each question's best span and null score difference (null score -
                           best span score, exactly as `postprocess_predictions` computed it):
                           with the dev data's gold answers, the EM/F1 curve against the
                           no-answer threshold and a table of EM, F1, HasAns F1 and NoAns F1
                           at a few thresholds (`squadft report --thresholds` prints it);
- predictions.json         the answers at the threshold in effect: F1 by question word and by
                           answer length, the worst errors;
- squadft_config.json      which dev file (and article slice) was evaluated, and the settings;
- final/squadft_inference.json, train_results.json   calibration and training summaries.

Figures are PNG data URIs drawn with matplotlib's Agg canvas (no pyplot, no display); the page
has no external reference (no network, no CSS or JS file), so it reads the same after
`aws s3 cp` to a laptop. Every text from the data is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from squadft.data.selection import FileSpec, parse_file_spec, select_raw_articles
from squadft.errors import ConfigError, DataError
from squadft.evaluate.report import gold_from_squad
from squadft.evaluate.squad_metrics import raw_scores
from squadft.io import atomic_write_text, read_json_file

REPORT_FILE = "report.html"
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
DEFAULT_ERRORS = 25


# --- metrics.jsonl ------------------------------------------------------------------------------

@dataclass
class TrainingLog:
    """The parsed lines of metrics.jsonl."""

    steps: list[dict[str, Any]]  # training records in step order, the last record of a step
    evals: list[dict[str, Any]]  # {"step": N, "eval": {...}} lines
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of unreadable lines
    partial_last_line: bool = False  # the last line is unterminated and unreadable

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the records that have a finite number for `key`."""
        pairs = [(r["step"], r[key]) for r in self.steps if _is_number(r.get(key))
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
    raw = Path(path).read_bytes()
    lines = raw.split(b"\n")
    unterminated = lines[-1] != b""
    if not unterminated:
        lines.pop()
    by_step: dict[int, dict[str, Any]] = {}
    evals: list[dict[str, Any]] = []
    bad: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            bad.append(number)
            continue
        if not isinstance(record, dict) or not _is_number(record.get("step")):
            bad.append(number)
            continue
        if isinstance(record.get("eval"), dict):
            evals.append(record)
        else:
            by_step[int(record["step"])] = record
    partial = unterminated and bool(bad) and bad[-1] == len(lines)
    return TrainingLog([by_step[s] for s in sorted(by_step)], evals, bad, partial)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- the no-answer threshold curve --------------------------------------------------------------

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
        if span is None or null is None:
            diffs[qid] = math.inf
        else:
            diffs[qid] = _as_float(null["score"]) - _as_float(span["score"])
    return spans, diffs


def _as_float(value: Any) -> float:
    return float(value)  # also "Infinity"/"-Infinity"/"NaN" spelled as JSON strings


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
        _sorted_diffs=sorted_diffs, _gain_exact=gain_exact, _gain_f1=gain_f1,
    )


def logit(p: float) -> float:
    """The null score difference whose sigmoid is p (na_probs.json thresholds -> scores)."""
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p) - math.log1p(-p)


# --- per-question breakdowns --------------------------------------------------------------------

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


# --- reading a run ------------------------------------------------------------------------------

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
            return float(value) if _is_number(value) or isinstance(value, str) else None
        except ValueError:
            return None

    @property
    def oracle_threshold(self) -> float | None:
        """best_f1_thresh (a no-answer probability) as a null score difference."""
        value = self.results.get("best_f1_thresh")
        return logit(float(value)) if _is_number(value) else None


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
            epoch = f", epoch {last['epoch']:.2f}" if _is_number(last.get("epoch")) else ""
            parts.append(f"training in progress or interrupted: last logged step "
                         f"{last['step']}{epoch}")
        else:
            parts.append("no training step logged yet")
        if self.evaluation is None:
            parts.append("no evaluation yet (eval_results.json missing): curves only")
        elif not self.evaluation.from_file:
            parts.append("eval_results.json missing: scores from the eval line of "
                         "metrics.jsonl")
        return "; ".join(parts)


def _read_optional_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return read_json_file(path)
    except DataError as exc:
        notes.append(f"{exc}; left out")
        return None


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
    run.config = _read_optional_json(path / CONFIG_FILE, run.notes)
    if (path / METRICS_FILE).is_file():
        run.log = read_metrics(path / METRICS_FILE)
        run.notes.extend(run.log.notes())
    else:
        run.notes.append("no metrics.jsonl: no training curves")
    run.train_results = _read_optional_json(path / TRAIN_RESULTS_FILE, run.notes)
    run.inference = _read_optional_json(path / INFERENCE_PATH, run.notes)
    results = _read_optional_json(path / RESULTS_FILE, run.notes)
    if isinstance(results, dict):
        run.evaluation = Evaluation(results=results, from_file=True)
    elif run.log is not None and run.log.evals:
        run.evaluation = Evaluation(results=dict(run.log.evals[-1]["eval"]), from_file=False)
    if run.evaluation is not None:
        _load_details(run, run.evaluation, data)
    return run


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
        spec = parse_file_spec(data)
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
    predictions = _read_optional_json(run.path / PREDICTIONS_FILE, run.notes)
    if not isinstance(predictions, dict):
        run.notes.append(f"no {PREDICTIONS_FILE}: no per-question figures")
        return
    limited = bool(run.config and run.config.get("max_eval_samples") is not None)
    if limited:
        # the run scored only its first max_eval_samples questions: those it predicted
        gold = {qid: answers for qid, answers in gold.items() if qid in predictions}
    total = evaluation.results.get("total")
    if _is_number(total) and total != len(gold):
        run.notes.append(f"dev data {how}: {len(gold)} questions, but the evaluation scored "
                         f"{total}: not the evaluated data (pass --data PATH); no per-question "
                         "figures")
        return
    if not gold:
        run.notes.append(f"dev data {how}: none of its questions was predicted; no "
                         "per-question figures")
        return
    evaluation.gold, evaluation.questions, evaluation.data_source = gold, questions, how
    evaluation.predictions = {k: v for k, v in predictions.items() if isinstance(v, str)}
    _, f1 = raw_scores(gold, evaluation.predictions)
    evaluation.f1 = {qid: f1.get(qid, 0.0) for qid in gold}
    evaluation.by_word = breakdown(
        evaluation.f1, {q: question_word(questions.get(q, "")) for q in gold}, QUESTION_WORDS)
    evaluation.by_length = breakdown(
        evaluation.f1, {q: answer_length_bucket(a) for q, a in gold.items()},
        [label for label, _, _ in LENGTH_BUCKETS] + [NO_ANSWER_BUCKET])
    nbest = _read_optional_json(run.path / NBEST_FILE, run.notes)
    if not isinstance(nbest, dict):
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
        if not (math.isclose(exact, _num(evaluation.results.get("exact")), abs_tol=1e-6)
                and math.isclose(f1_value, _num(evaluation.results.get("f1")), abs_tol=1e-6)):
            run.notes.append(
                f"the threshold curve gives EM {exact:.2f} / F1 {f1_value:.2f} at the "
                f"threshold in effect, eval_results.json says {evaluation.results.get('exact')}"
                f" / {evaluation.results.get('f1')}: the files are not one set")


def load_runs(run_dirs: Sequence[str | Path], *, data: str | None = None) -> list[Run]:
    if not run_dirs:
        raise ConfigError("give at least one run directory")
    paths = [Path(p) for p in run_dirs]
    labels = _labels(paths)
    return [load_run(p, data=data, label=label) for p, label in zip(paths, labels, strict=True)]


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


# --- the threshold trade-off table --------------------------------------------------------------

ALWAYS_ANSWER = "always answer"
ORACLE_LABEL = "oracle: tuned on these same questions"
SPREAD_COUNT = 6  # thresholds between the 5th and 95th percentiles of the differences
# how eval_results.json's null_threshold_kind was chosen, as the table says it
_KIND_LABELS = {"calibrated": "calibrated", "given": "--null-threshold", "default": "0"}


@dataclass(frozen=True)
class ThresholdRow:
    """EM, F1, HasAns F1 and NoAns F1 (percent, official SQuAD 2.0 definitions) of answering
    with the best span when the null score difference is at most `threshold` (+inf: always
    answer). HasAns/NoAns are None when no question of the kind was scored."""

    threshold: float
    exact: float
    f1: float
    has_ans_f1: float | None
    no_ans_f1: float | None
    label: str = ""  # how the threshold was chosen ("" for a plain one)

    @property
    def name(self) -> str:
        """The threshold as the tables show it: "0.37 (calibrated)", "always answer"."""
        if self.threshold == math.inf:
            return ALWAYS_ANSWER if self.label in ("", ALWAYS_ANSWER) else \
                f"always answer ({self.label})"
        value = "answer nothing" if self.threshold == -math.inf else f"{self.threshold:.6g}"
        return f"{value} ({self.label})" if self.label else value


def threshold_table(gold: Mapping[str, list[str]], best_spans: Mapping[str, str],
                    null_score_diff: Mapping[str, float], thresholds: Sequence[float],
                    labels: Sequence[str] | None = None) -> list[ThresholdRow]:
    """One row per threshold, in the order given: `threshold_curve` of all the gold questions,
    of the answerable ones (HasAns: gold answers) and of the unanswerable ones (NoAns: gold
    []), each at the threshold. +inf answers every question with its best span."""
    if labels is not None and len(labels) != len(thresholds):
        raise ValueError("one label per threshold")
    whole = threshold_curve(gold, best_spans, null_score_diff)
    parts = []
    for answerable in (True, False):
        subset = {q: a for q, a in gold.items() if bool(a) == answerable}
        parts.append(threshold_curve(subset, best_spans, null_score_diff) if subset else None)
    has_ans, no_ans = parts
    rows = []
    for i, t in enumerate(thresholds):
        t = float(t)
        if math.isnan(t):
            raise ValueError("a threshold is NaN")
        exact, f1 = whole.at(t)
        rows.append(ThresholdRow(
            t, exact, f1, has_ans.at(t)[1] if has_ans is not None else None,
            no_ans.at(t)[1] if no_ans is not None else None,
            labels[i] if labels is not None else ""))
    return rows


def spread_thresholds(diffs: Iterable[float], count: int = SPREAD_COUNT) -> list[float]:
    """`count` evenly spread thresholds from the 5th to the 95th percentile of the finite
    differences, rounded to 2 decimals (so that --thresholds can repeat them); [] if none."""
    finite = np.array([d for d in diffs if math.isfinite(d)], dtype=np.float64)
    if not len(finite) or count <= 0:
        return []
    low, high = np.percentile(finite, [5.0, 95.0])
    values = np.round(np.linspace(low, high, count), 2)
    return list(dict.fromkeys(float(v) + 0.0 for v in values))  # distinct, no -0.0


def threshold_in_effect_label(evaluation: Evaluation) -> str:
    """"in effect" and how it was chosen (calibrated / --null-threshold / 0)."""
    kind = evaluation.results.get("null_threshold_kind")
    how = _KIND_LABELS.get(kind, str(kind)) if isinstance(kind, str) and kind else ""
    return f"in effect: {how}" if how else "in effect"


def evaluation_threshold_table(evaluation: Evaluation, thresholds: Sequence[float] | None = None
                               ) -> list[ThresholdRow] | None:
    """A run's trade-off table (None without a threshold curve), by threshold, always answer
    last: the threshold in effect, then `thresholds`, or without them the oracle and
    `SPREAD_COUNT` thresholds spread over the differences of the scored questions."""
    if evaluation.curve is None or evaluation.gold is None:
        return None
    chosen: list[tuple[float, str]] = []
    threshold = evaluation.threshold
    if threshold is not None and not math.isnan(threshold):
        chosen.append((threshold, threshold_in_effect_label(evaluation)))
    if thresholds is None:
        oracle = evaluation.oracle_threshold
        if oracle is not None:
            chosen.append((oracle, ORACLE_LABEL))
        extra = spread_thresholds(evaluation.diffs[q] for q in evaluation.gold
                                  if q in evaluation.diffs)
    else:
        extra = list(thresholds)
    labelled = {t for t, _ in chosen}
    chosen += [(t, "") for t in dict.fromkeys(extra) if t not in labelled]
    chosen.sort(key=lambda pair: pair[0])
    chosen.append((math.inf, ALWAYS_ANSWER))
    return threshold_table(evaluation.gold, evaluation.best_spans, evaluation.diffs,
                           [t for t, _ in chosen], [label for _, label in chosen])


def parse_thresholds(text: str) -> list[float]:
    """--thresholds "-14,-12,-10,-8,0": finite numbers, comma-separated."""
    values = []
    for item in text.split(","):
        try:
            value = float(item.strip())
        except ValueError:
            raise ConfigError(f"--thresholds must be comma-separated numbers, like "
                              f"\"-14,-12,-10,-8,0\" (got {text!r})") from None
        if not math.isfinite(value):
            raise ConfigError(f"--thresholds must be finite numbers (got {item.strip()!r}); "
                              "always answer is listed anyway")
        values.append(value)
    return values


def _score_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def threshold_rows_text(rows: Sequence[ThresholdRow]) -> list[tuple[str, list[str]]]:
    """(threshold, [EM, F1, HasAns F1, NoAns F1]) as the tables print them."""
    return [(row.name, [_score_text(row.exact), _score_text(row.f1),
                        _score_text(row.has_ans_f1), _score_text(row.no_ans_f1)])
            for row in rows]


THRESHOLD_HEADER = ("threshold", "EM", "F1", "HasAns F1", "NoAns F1")


def threshold_markdown(rows: Sequence[ThresholdRow]) -> str:
    """The table in markdown: threshold | EM | F1 | HasAns F1 | NoAns F1."""
    lines = ["| " + " | ".join(THRESHOLD_HEADER) + " |",
             "|" + "---|" * len(THRESHOLD_HEADER)]
    for name, values in threshold_rows_text(rows):
        cells = [c.replace("|", "\\|") for c in (name, *values)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _answerability_counts(gold: Mapping[str, list[str]]) -> tuple[int, int]:
    """(HasAns, NoAns): how many gold questions have answers, and how many have none."""
    has_ans = sum(1 for answers in gold.values() if answers)
    return has_ans, len(gold) - has_ans


def run_threshold_markdown(run: Run, thresholds: Sequence[float]) -> str | None:
    """`squadft report --thresholds`: a heading line and the run's table at `thresholds`,
    the threshold in effect and always answer; None when the run has no threshold curve."""
    if run.evaluation is None:
        return None
    rows = evaluation_threshold_table(run.evaluation, thresholds)
    if rows is None:
        return None
    gold = run.evaluation.gold or {}
    has_ans, no_ans = _answerability_counts(gold)
    head = (f"{run.label}: EM/F1 against the no-answer threshold on null score - best span "
            f"score ({len(gold)} questions: {has_ans} HasAns, {no_ans} NoAns)")
    return head + "\n\n" + threshold_markdown(rows) + "\n"


# --- figures ------------------------------------------------------------------------------------

_FIGSIZE = (6.4, 3.6)
_DPI = 100
_BASELINE_COLOR = "#9a9a9a"


def _figure(size: tuple[float, float] = _FIGSIZE) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_data_uri(fig: Any) -> str:
    """The figure as a data:image/png;base64 URI (no Software metadata, no URL inside)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _color(i: int) -> str:
    return f"C{i % 10}"


def _legend(ax: Any, runs: Sequence[Run], **kwargs: Any) -> None:
    if len(runs) > 1:  # one run: the title says it all
        ax.legend(fontsize=8, **kwargs)


def training_figures(runs: Sequence[Run]) -> list[tuple[str, str, Any]]:
    """(id, title, matplotlib Figure) of the training curves that have data in some run: one
    line per run, overlaid."""
    logged = [(i, r) for i, r in enumerate(runs) if r.log is not None and r.log.steps]
    if not logged:
        return []
    out = []
    specs = [
        ("loss", "Training loss", "loss", "loss (mean over the logging window)"),
        ("learning-rate", "Learning rate", "lr", "learning rate"),
        ("grad-norm", "Gradient norm (before clipping)", "grad_norm", "grad norm"),
        ("gpu-memory", "Peak GPU memory", "gpu_mem_gib", "GiB"),
    ]
    for fig_id, title, key, ylabel in specs:
        series = [(i, r, r.log.series(key)) for i, r in logged]  # type: ignore[union-attr]
        if not any(len(s[0]) for _, _, s in series):
            continue
        fig = _figure()
        ax = fig.add_subplot()
        for i, run, (x, y) in series:
            if len(x):
                ax.plot(x, y, color=_color(i), label=run.label, marker="." if len(x) < 40
                        else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
        _legend(ax, runs)
        out.append((fig_id, title, fig))
    # throughput: tokens/s above samples/s, one colour per run
    series = [(i, r, r.log.series("tokens_per_s"), r.log.series("samples_per_s"))  # type: ignore[union-attr]
              for i, r in logged]
    if any(len(t[0]) or len(s[0]) for _, _, t, s in series):
        fig = _figure()
        top, bottom = fig.subplots(2, 1, sharex=True)
        for i, run, (tx, ty), (sx, sy) in series:
            top.plot(tx, ty, color=_color(i), label=run.label)
            bottom.plot(sx, sy, color=_color(i), label=run.label)
        top.set_title("Throughput")
        top.set_ylabel("tokens/s")
        bottom.set_ylabel("samples/s")
        bottom.set_xlabel("step")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.set_ylim(bottom=0)
        _legend(top, runs)
        out.append(("throughput", "Throughput", fig))
    return out


def threshold_figure(runs: Sequence[Run]) -> Any:
    """EM and F1 against the null threshold, the threshold in effect and the oracle marked."""
    curved = [(i, r, r.evaluation) for i, r in enumerate(runs)
              if r.evaluation is not None and r.evaluation.curve is not None]
    if not curved:
        return None
    several = len(curved) > 1
    fig = _figure((12.0, 4.6) if several else (9.6, 4.6))
    ax = fig.add_subplot()
    lows, highs = [], []
    for _, _, evaluation in curved:
        curve = evaluation.curve
        assert curve is not None
        marks = [t for t in (evaluation.threshold, evaluation.oracle_threshold)
                 if t is not None and math.isfinite(t)]
        if len(curve.thresholds):
            # the middle 99% of the differences and the marked thresholds
            lows.append(min([float(np.quantile(curve.thresholds, 0.005))] + marks))
            highs.append(max([float(np.quantile(curve.thresholds, 0.995))] + marks))
        elif marks:
            lows.append(min(marks))
            highs.append(max(marks))
    low, high = (min(lows), max(highs)) if lows else (-1.0, 1.0)
    pad = max(0.5, 0.05 * (high - low))
    low, high = low - pad, high + pad
    for i, run, evaluation in curved:
        curve = evaluation.curve
        assert curve is not None
        color = _color(i)
        inside = (curve.thresholds > low) & (curve.thresholds < high)
        x = np.concatenate([[low], curve.thresholds[inside], [high]])
        name = f"{run.label}: " if len(runs) > 1 else ""
        for values, start, style, metric in ((curve.f1, curve.none_f1, "-", "F1"),
                                             (curve.exact, curve.none_exact, "--", "EM")):
            before = values[curve.thresholds <= low]
            first = float(before[-1]) if len(before) else start
            y = np.concatenate([[first], values[inside], [values[inside][-1] if inside.any()
                                                          else first]])
            ax.plot(x, y, drawstyle="steps-post", color=color, linestyle=style,
                    linewidth=1.6 if metric == "F1" else 1.2, label=f"{name}{metric}")
        threshold = evaluation.threshold
        if threshold is not None:
            exact, f1 = curve.at(threshold)
            kind = evaluation.results.get("null_threshold_kind", "in effect")
            ax.axvline(threshold, color=color, linestyle=":", linewidth=1.2)
            ax.plot([threshold], [f1], marker="o", color=color, markersize=7,
                    label=f"{name}threshold in effect ({kind}) {threshold:.3g}: "
                          f"F1 {f1:.2f}, EM {exact:.2f}")
        oracle = evaluation.oracle_threshold
        best_f1 = evaluation.results.get("best_f1")
        if oracle is not None and _is_number(best_f1):
            shown = min(max(oracle, low), high)  # -inf ("answer nothing"): the left edge
            where = f"{oracle:.3g}" if math.isfinite(oracle) else "answer nothing"
            ax.plot([shown], [best_f1], marker="*", color=color, markersize=13,
                    markeredgecolor="black", linestyle="none", clip_on=False,
                    label=f"{name}oracle (tuned on these questions) {where}: "
                          f"F1 {best_f1:.2f}")
        top_f1, top_at = curve.best()
        if _is_number(best_f1) and top_f1 > best_f1 + 0.005 and math.isfinite(top_at):
            ax.plot([min(max(top_at, low), high)], [top_f1], marker="^", color=color,
                    markersize=8, markeredgecolor="black", linestyle="none",
                    label=f"{name}curve maximum {top_at:.3g}: F1 {top_f1:.2f}")
        if i == curved[0][0]:  # the baseline once (of the first run's questions)
            always = evaluation.results.get("always_no_answer_f1")
            if _is_number(always):
                ax.axhline(always, color=_BASELINE_COLOR, linewidth=1, linestyle="-.",
                           label=f"always no answer: F1 {always:.2f}")
    ax.set_xlim(low, high)
    ax.set_ylim(0, 100)
    ax.set_xlabel("no-answer threshold on null score - best span score "
                  "(answer \"\" above it)")
    ax.set_ylabel("percent")
    ax.set_title("EM / F1 against the no-answer threshold")
    ax.grid(alpha=0.3)
    if several:  # beside the plot: a legend per run would cover the curves
        ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=7.5, loc="lower left")
    return fig


def _grouped_bars(ax: Any, groups: Sequence[str], bars: Sequence[tuple[str, Sequence[float],
                  str]], *, annotate: bool = True) -> None:
    width = 0.8 / max(1, len(bars))
    x = np.arange(len(groups))
    for j, (label, values, color) in enumerate(bars):
        positions = x - 0.4 + width * (j + 0.5)
        rects = ax.bar(positions, [0 if v is None or math.isnan(v) else v for v in values],
                       width * 0.92, label=label, color=color)
        if annotate:
            for rect, value in zip(rects, values, strict=True):
                if value is not None and not math.isnan(value):
                    ax.annotate(f"{value:.1f}", (rect.get_x() + rect.get_width() / 2,
                                                 rect.get_height()),
                                ha="center", va="bottom", fontsize=7,
                                xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 122)  # room above the bars for a one-row legend
    ax.set_yticks(range(0, 101, 20))
    ax.grid(axis="y", alpha=0.3)


def answerability_figure(runs: Sequence[Run]) -> Any:
    """EM and F1 overall / HasAns / NoAns next to the "always no answer" baseline."""
    scored = [(i, r, r.evaluation.results) for i, r in enumerate(runs)
              if r.evaluation is not None]
    if not scored:
        return None
    fig = _figure((9.6, 3.8))
    axes = fig.subplots(1, 2, sharey=True)
    groups = ("all", "HasAns", "NoAns")
    keys = {"all": "", "HasAns": "HasAns_", "NoAns": "NoAns_"}
    results0 = scored[0][2]
    for ax, metric, title in zip(axes, ("exact", "f1"), ("Exact match", "F1"), strict=True):
        bars: list[tuple[str, Sequence[float], str]] = []
        for i, run, results in scored:
            values = [_num(results.get(keys[g] + metric)) for g in groups]
            label = run.label if len(runs) > 1 else "at the threshold in effect"
            bars.append((label, values, _color(i)))
        # EM = F1 for "always no answer" (the eval line of metrics.jsonl has only the F1)
        always = _num(results0.get(f"always_no_answer_{metric}",
                                   results0.get("always_no_answer_f1")))
        bars.append(("always no answer", [always, 0.0 if "HasAns_f1" in results0
                                          else math.nan,
                                          100.0 if "NoAns_f1" in results0 else math.nan],
                     _BASELINE_COLOR))
        ticks = [g + (f"\nn={results0[keys[g] + 'total']}" if keys[g] + "total" in results0
                      else "") for g in groups]
        _grouped_bars(ax, ticks, bars)
        ax.set_title(title)
    axes[0].set_ylabel("percent")
    for ax in axes:
        ax.legend(fontsize=8, loc="upper center", ncol=len(scored) + 1)
    return fig


def _num(value: Any) -> float:
    return float(value) if _is_number(value) else math.nan


def breakdown_figure(runs: Sequence[Run], which: str) -> Any:
    """F1 by question word ("word") or by gold answer length ("length")."""
    parts = [(i, r, getattr(r.evaluation, "by_" + which)) for i, r in enumerate(runs)
             if r.evaluation is not None and getattr(r.evaluation, "by_" + which) is not None]
    if not parts:
        return None
    order = QUESTION_WORDS if which == "word" else tuple(
        [label for label, _, _ in LENGTH_BUCKETS] + [NO_ANSWER_BUCKET])
    labels = [label for label in order if any(label in b.labels for _, _, b in parts)]
    counts = [{label: b.count.get(label, 0) for label in labels} for _, _, b in parts]
    same = all(c == counts[0] for c in counts)
    ticks = [f"{label}\nn={counts[0][label]}" if same else label for label in labels]
    fig = _figure((9.6, 3.6))
    ax = fig.add_subplot()
    bars = [(run.label, [b.f1.get(label, math.nan) for label in labels], _color(i))
            for i, run, b in parts]
    _grouped_bars(ax, ticks, bars)
    ax.set_ylabel("F1 (percent)")
    if which == "word":
        ax.set_title("F1 by question word (at the threshold in effect)")
    else:
        ax.set_title("F1 by gold answer length in words (at the threshold in effect)")
    _legend(ax, runs, loc="upper center", ncol=len(parts))
    return fig


# --- HTML ---------------------------------------------------------------------------------------

def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1180px;color:#1d1d1f;line-height:1.4;padding:0 12px}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;
padding-bottom:.2em}.muted{color:#666}.note{background:#fff6d6;border-left:4px solid #e0b000;
padding:6px 10px;margin:6px 0}table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
figure{margin:0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}table.errors td{max-width:360px;word-wrap:break-word}
code{background:#f4f4f6;padding:0 3px}
"""


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    return str(value)


def _figure_html(fig_id: str, title: str, fig: Any, caption: str = "") -> str:
    uri = png_data_uri(fig)
    return (f'<figure id="fig-{esc(fig_id)}"><img alt="{esc(title)}" src="{uri}">'
            + (f"<figcaption>{esc(caption)}</figcaption>" if caption else "") + "</figure>")


def _metrics_rows(runs: Sequence[Run]) -> list[tuple[str, list[str]]]:
    def results(run: Run, key: str, digits: int = 2) -> str:
        if run.evaluation is None:
            return "–"
        return _fmt(run.evaluation.results.get(key), digits)

    def train(run: Run, key: str, digits: int = 2) -> str:
        if run.train_results is not None and key in run.train_results:
            return _fmt(run.train_results[key], digits)
        return "–"

    def last_logged(run: Run, key: str) -> str:
        if run.log is None or not run.log.steps:
            return "–"
        return _fmt(run.log.steps[-1].get(key), 4)

    def calibration(run: Run, key: str) -> str:
        cal = (run.inference or {}).get("calibration")
        if not isinstance(cal, dict):
            return "–"
        if key == "null_threshold":
            return _fmt(cal.get(key), 4)
        if key == "questions":
            return _fmt(cal.get(key))
        return _fmt((cal.get("scores") or {}).get(key))

    def threshold(run: Run) -> str:
        if run.evaluation is None or "null_threshold" not in run.evaluation.results:
            return "–"
        r = run.evaluation.results
        return f"{_fmt(r['null_threshold'], 4)} ({r.get('null_threshold_kind', '?')})"

    def oracle(run: Run) -> str:
        if run.evaluation is None or "best_f1_thresh" not in run.evaluation.results:
            return "–"
        p = run.evaluation.results["best_f1_thresh"]
        t = run.evaluation.oracle_threshold
        where = _fmt(t, 4) if t is not None and math.isfinite(t) else "answer nothing"
        return f"{where} (p = {_fmt(p, 4)})"

    rows: list[tuple[str, list[str]]] = [
        ("status", [r.status for r in runs]),
        ("steps (last logged)", [last_logged(r, "step") for r in runs]),
        ("epoch (last logged)", [last_logged(r, "epoch") for r in runs]),
        ("loss (last logged)", [last_logged(r, "loss") for r in runs]),
        ("train tokens/s (whole run)", [train(r, "tokens_per_second", 0) for r in runs]),
        ("evaluated questions", [results(r, "total") for r in runs]),
        ("EM", [results(r, "exact") for r in runs]),
        ("F1", [results(r, "f1") for r in runs]),
        ("HasAns EM / F1", [f"{results(r, 'HasAns_exact')} / {results(r, 'HasAns_f1')}"
                            for r in runs]),
        ("NoAns EM / F1", [f"{results(r, 'NoAns_exact')} / {results(r, 'NoAns_f1')}"
                           for r in runs]),
        ("always no answer F1", [results(r, "always_no_answer_f1") for r in runs]),
        ("null threshold in effect", [threshold(r) for r in runs]),
        ("oracle best EM / F1 (tuned on these questions)",
         [f"{results(r, 'best_exact')} / {results(r, 'best_f1')}" for r in runs]),
        ("oracle threshold", [oracle(r) for r in runs]),
        ("calibration questions", [calibration(r, "questions") for r in runs]),
        ("calibration F1 (held out)", [calibration(r, "f1") for r in runs]),
    ]
    return rows


_SETTINGS = ("model", "train_file", "dev_file", "max_train_samples", "max_eval_samples",
             "epochs", "max_steps", "batch_size", "grad_accum_steps", "learning_rate",
             "warmup_ratio", "max_seq_length", "doc_stride", "precision", "seed",
             "null_threshold")


def _settings_rows(runs: Sequence[Run]) -> list[tuple[str, list[str]]]:
    configs = [r.config if isinstance(r.config, dict) else {} for r in runs]
    keys = list(_SETTINGS)
    if len(runs) > 1:  # every other setting that differs between the runs
        every = sorted({k for c in configs for k in c} - set(keys))
        keys += [k for k in every if len({json.dumps(c.get(k), sort_keys=True)
                                          for c in configs}) > 1]
    rows = []
    for key in keys:
        values = [c.get(key) for c in configs]
        if all(v is None for v in values) and key not in ("max_steps",):
            continue
        rows.append((key, ["–" if v is None else str(v) for v in values]))
    return rows


def _table(header: Sequence[str], rows: Iterable[tuple[str, Sequence[str]]],
           css_class: str = "") -> str:
    out = [f'<table class="{esc(css_class)}">' if css_class else "<table>", "<tr>"]
    out += [f"<th>{esc(h)}</th>" for h in header]
    out.append("</tr>")
    for name, values in rows:
        out.append(f"<tr><th>{esc(name)}</th>" + "".join(
            f'<td class="num">{esc(v)}</td>' if _numeric_text(v) else f"<td>{esc(v)}</td>"
            for v in values) + "</tr>")
    out.append("</table>")
    return "".join(out)


_NUMBER = r"[-+]?(?:\d[\d.]*(?:e[-+]?\d+)?|inf)"


def _numeric_text(text: str) -> bool:
    """A number, or two joined by " / " (right-aligned in tables)."""
    return re.fullmatch(f"{_NUMBER}(?: / {_NUMBER})?", text) is not None


@dataclass(frozen=True)
class ErrorRow:
    qid: str
    question: str
    gold: list[str]
    prediction: str
    best_span: str
    diff: float
    f1: float
    kind: str


def worst_errors(evaluation: Evaluation, count: int) -> list[ErrorRow]:
    """The questions scored below F1 1 at the threshold in effect, the most confident first:
    lowest F1, then farthest from the threshold on the wrong side."""
    if evaluation.gold is None or evaluation.predictions is None or count <= 0:
        return []
    threshold = evaluation.threshold or 0.0
    rows = []
    for qid, answers in evaluation.gold.items():
        f1 = evaluation.f1.get(qid, 0.0)
        if f1 >= 1.0:
            continue
        prediction = evaluation.predictions.get(qid)
        diff = evaluation.diffs.get(qid, math.nan)
        if prediction is None:
            kind = "no prediction"
        elif not answers:
            kind = "answered an unanswerable question"
        elif prediction == "":
            kind = "no answer, but one was expected"
        else:
            kind = "wrong span" if f1 == 0 else "partial span"
        rows.append(ErrorRow(qid, evaluation.questions.get(qid, ""), list(dict.fromkeys(answers)),
                             prediction if prediction is not None else "",
                             evaluation.best_spans.get(qid, ""), diff, f1, kind))
    rows.sort(key=lambda r: (r.f1, -(abs(r.diff - threshold) if math.isfinite(r.diff)
                                     else math.inf), r.qid))
    return rows[:count]


def _errors_html(run: Run, count: int) -> str:
    evaluation = run.evaluation
    if evaluation is None or evaluation.gold is None:
        return ""
    rows = worst_errors(evaluation, count)
    wrong = sum(1 for v in evaluation.f1.values() if v < 1.0)
    head = (f"<p>{wrong} of {len(evaluation.gold)} questions score below F1 100 at the "
            f"threshold in effect; the {len(rows)} worst (lowest F1, then the most confident: "
            "farthest from the threshold) follow. The score diff is null score - best span "
            "score; above the threshold the answer is \"\".</p>")
    if not rows:
        return head
    threshold = evaluation.threshold
    body = ['<table class="errors"><tr><th>#</th><th>question</th><th>gold</th>'
            "<th>prediction</th><th>score diff</th><th>F1</th><th>error</th></tr>"]
    for n, row in enumerate(rows, start=1):
        gold = "<br>".join(esc(a) for a in row.gold) if row.gold else \
            '<span class="muted">(no answer)</span>'
        if row.prediction:
            prediction = esc(row.prediction)
        else:
            prediction = '<span class="muted">(no answer)</span>'
            if row.best_span:
                prediction += f'<br><span class="muted">best span: {esc(row.best_span)}</span>'
        diff = _fmt(row.diff, 3)
        if threshold is not None and math.isfinite(row.diff):
            diff += " &gt; t" if row.diff > threshold else " &le; t"
        body.append(
            f"<tr><td class=\"num\">{n}</td><td>{esc(row.question)}<br>"
            f"<span class=\"muted\">{esc(row.qid)}</span></td><td>{gold}</td>"
            f"<td>{prediction}</td><td class=\"num\">{diff}</td>"
            f"<td class=\"num\">{100 * row.f1:.1f}</td><td>{esc(row.kind)}</td></tr>")
    body.append("</table>")
    return head + "".join(body)


def _thresholds_html(run: Run, several: bool) -> str:
    """The run's "F1 at other no-answer thresholds" table ("" without a threshold curve)."""
    evaluation = run.evaluation
    rows = evaluation_threshold_table(evaluation) if evaluation is not None else None
    if evaluation is None or not rows:
        return ""
    has_ans, no_ans = _answerability_counts(evaluation.gold or {})
    title = "F1 at other no-answer thresholds" + (f": {run.label}" if several else "")
    return (f'<h3 id="thresholds-{esc(run.label)}">{esc(title)}</h3>'
            + _table(THRESHOLD_HEADER, threshold_rows_text(rows), "thresholds")
            + '<p class="muted">Each question is answered with its best span when null score - '
            "best span score is at most the threshold, else with \"\" (always answer: every "
            f"question gets its best span). HasAns: the {has_ans} questions with an answer; "
            f"NoAns: the {no_ans} unanswerable ones (n/a: none). The oracle is "
            "tuned on these same questions: optimistic, not a result. The other thresholds "
            "spread from the 5th to the 95th percentile of the score differences; "
            "<code>squadft report --thresholds</code> prints the table at thresholds of your "
            "choice.</p>")


def render_html(runs: Sequence[Run], *, errors: int = DEFAULT_ERRORS) -> str:
    """The whole page (figures embedded); pure apart from drawing."""
    names = ", ".join(r.label for r in runs)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>squadft report: {esc(names)}</title>", f"<style>{_CSS}</style>",
             "</head><body>", f"<h1>squadft run report: {esc(names)}</h1>",
             f'<p class="muted">Written {esc(now)} by <code>squadft report</code> from '
             + ", ".join(f"<code>{esc(r.path)}</code>" for r in runs) + ".</p>"]
    for run in runs:
        prefix = f"{run.label}: " if len(runs) > 1 else ""
        parts.append(f"<p><b>{esc(prefix)}</b>{esc(run.status)}</p>")
        for note in run.notes:
            parts.append(f'<div class="note">{esc(prefix + note)}</div>')

    header = ["", *[r.label for r in runs]] if len(runs) > 1 else ["", "value"]
    parts.append('<h2 id="metrics">Metrics</h2>')
    parts.append(_table(header, _metrics_rows(runs), "metrics"))
    parts.append("<p class=\"muted\">EM/F1: official SQuAD 2.0 scores at the no-answer "
                 "threshold in effect (fixed before the dev questions were seen: calibrated "
                 "on held-out training articles, given, or 0). The oracle is the official "
                 "best_exact/best_f1, with the threshold tuned on the dev questions "
                 "themselves: optimistic, not a result.</p>")

    training = training_figures(runs)
    parts.append('<h2 id="training">Training</h2>')
    if training:
        parts.append('<div class="grid">' + "".join(
            _figure_html(fig_id, title, fig) for fig_id, title, fig in training) + "</div>")
    else:
        parts.append("<p>No training step logged yet.</p>")

    parts.append('<h2 id="evaluation">Evaluation</h2>')
    if not any(r.evaluation is not None for r in runs):
        parts.append("<p>No evaluation yet: eval_results.json is missing (the run is still "
                     "training, or ran with --no-do-eval). Run <code>squadft evaluate</code>, "
                     "or report again when the run has finished.</p>")
    else:
        fig = threshold_figure(runs)
        if fig is not None:
            parts.append(_figure_html(
                "threshold", "EM and F1 against the no-answer threshold", fig,
                "Each question is answered with its best span when null score - best span "
                "score is at most the threshold, else with \"\". Dot: the threshold in "
                "effect (its values are eval_results.json's exact and f1); star: the "
                "official oracle best_f1 (threshold tuned on these questions, sweeping "
                "predictions.json, which already answers \"\" above the threshold in "
                "effect); triangle: the curve's own maximum where it is higher (also tuned "
                "on these questions)."))
        fig = answerability_figure(runs)
        if fig is not None:
            parts.append(_figure_html(
                "answerability", "HasAns / NoAns against always no answer", fig,
                "HasAns: questions with an answer; NoAns: unanswerable ones. \"Always no "
                "answer\" scores the unanswerable share overall, 0 on HasAns, 100 on NoAns."))
        for run in runs:
            table = _thresholds_html(run, len(runs) > 1)
            if table:
                parts.append(table)
        for which, title in (("word", "F1 by question word"),
                             ("length", "F1 by gold answer length")):
            fig = breakdown_figure(runs, which)
            if fig is not None:
                parts.append(_figure_html(f"by-{which}", title, fig))
        if not any(r.evaluation is not None and r.evaluation.gold is not None for r in runs):
            parts.append("<p>The per-question figures need the dev data (see the notes "
                         "above; pass <code>--data PATH</code>).</p>")
        for run in runs:
            table = _errors_html(run, errors)
            if table:
                title = "Worst errors" + (f": {run.label}" if len(runs) > 1 else "")
                parts.append(f"<h2 id=\"errors-{esc(run.label)}\">{esc(title)}</h2>{table}")
    settings = _settings_rows(runs)
    if settings:
        parts.append('<h2 id="settings">Settings</h2>')
        parts.append(_table(header if len(runs) > 1 else ["", "value"], settings, "settings"))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def default_output(run_dirs: Sequence[str | Path]) -> Path:
    return Path(run_dirs[0]) / REPORT_FILE


def write_report(run_dirs: Sequence[str | Path], *, output: str | Path | None = None,
                 data: str | None = None, errors: int = DEFAULT_ERRORS
                 ) -> tuple[Path, list[Run]]:
    """Read the runs, draw, write the page (atomically); (its path, the runs read)."""
    if errors < 0:
        raise ConfigError("--errors must be 0 or more")
    runs = load_runs(run_dirs, data=data)
    page = render_html(runs, errors=errors)
    target = Path(output) if output is not None else default_output(run_dirs)
    atomic_write_text(target, page)
    return target, runs
