"""`squadft report`: the HTML page, its figures, and the threshold curve behind them.

The run directories are built the way a run writes them, without training: real dev articles
(one question rewritten to carry markup), made-up best spans and scores per question, then the
real `score_postprocessed` and `write_prediction_files` write predictions.json, na_probs.json,
nbest_predictions.json and eval_results.json, and `InferenceSettings` final/.
"""

from __future__ import annotations

import base64
import copy
import gzip
import io
import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from squadft.cli import app
from squadft.config import Config
from squadft.data.selection import parse_file_spec
from squadft.evaluate import visual
from squadft.evaluate.calibration import Calibration, InferenceSettings, NullThreshold
from squadft.evaluate.postprocess import Candidate, PostprocessResult
from squadft.evaluate.report import load_gold, score_postprocessed, write_prediction_files
from squadft.evaluate.squad_metrics import evaluate_predictions, normalize_answer
from typer.testing import CliRunner

SCRIPT_QUESTION = "<script>alert('x')</script> Who & what <b>ruled</b>?"
DEV_NAME = "dev-small.json.gz"
DEV_FILE = DEV_NAME + "[1:]"  # the report must apply the run's article slice
THRESHOLD = 0.37
TRAINING_FIGURES = ("loss", "learning-rate", "grad-norm", "throughput")
EVAL_FIGURES = ("threshold", "answerability", "by-word", "by-length")


# --- building run directories -----------------------------------------------------------------

@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory, dev_json: dict[str, Any]) -> Path:
    """Three real dev articles as a file:// source; article 0 lies outside DEV_FILE's slice."""
    directory = tmp_path_factory.mktemp("source")
    data = {"version": dev_json["version"], "data": copy.deepcopy(dev_json["data"][9:12])}
    qa = next(qa for qa in data["data"][1]["paragraphs"][0]["qas"] if qa["answers"])
    qa["question"] = SCRIPT_QUESTION
    qa["answers"][0]["text"] = qa["answers"][0]["text"] + " <i>&amp;</i>"
    with gzip.open(directory / DEV_NAME, "wt", encoding="utf-8") as handle:
        json.dump(data, handle)
    return directory


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


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory, source_dir: Path) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "run-a", source_dir)


@pytest.fixture(scope="module")
def evaluated_report(evaluated_run: Path) -> str:
    path, _ = visual.write_report([evaluated_run])
    assert path == evaluated_run / "report.html"
    return path.read_text(encoding="utf-8")


# --- reading the page ---------------------------------------------------------------------------

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


# --- the page -----------------------------------------------------------------------------------

def test_report_embeds_every_figure_as_a_png_data_uri(evaluated_report: str) -> None:
    uris = figure_uris(evaluated_report)
    assert set(uris) == set(TRAINING_FIGURES + EVAL_FIGURES)
    for uri in uris.values():
        image = decode_png(uri)
        assert image.format == "PNG" and image.width >= 400 and image.height >= 250
        # a drawn figure, not a blank canvas
        assert sum(1 for count in image.convert("L").histogram() if count) > 10
    assert_self_contained(evaluated_report)


def test_report_shows_the_scores_and_the_worst_errors(evaluated_run: Path,
                                                      evaluated_report: str) -> None:
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    assert f"<td class=\"num\">{results['f1']:.2f}</td>" in evaluated_report
    assert f"<td class=\"num\">{results['best_f1']:.2f} / " not in evaluated_report
    assert f"{results['best_exact']:.2f} / {results['best_f1']:.2f}" in evaluated_report
    assert "0.3700 (calibrated)" in evaluated_report
    errors = evaluated_report.split('<table class="errors">', 1)[1].split("</table>", 1)[0]
    assert errors.count("<tr>") == 1 + visual.DEFAULT_ERRORS
    # the most confident miss (diff 12 over a threshold of 0.37, F1 0) leads
    first = errors.split("<tr>")[2]
    assert "alert(" in first and "no answer, but one was expected" in first
    assert "a confident wrong answer" in first  # its best span is shown too
    assert '<div class="note">' not in evaluated_report  # nothing went missing


def test_question_text_with_markup_is_escaped(evaluated_report: str) -> None:
    assert "<script" not in evaluated_report and "<b>ruled" not in evaluated_report
    assert ("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; Who &amp; what "
            "&lt;b&gt;ruled&lt;/b&gt;?") in evaluated_report
    assert "&lt;i&gt;&amp;amp;&lt;/i&gt;" in evaluated_report  # the gold answer, escaped


def test_threshold_curve_at_the_threshold_in_effect_is_eval_results(evaluated_run: Path,
                                                                     source_dir: Path) -> None:
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    nbest = json.loads((evaluated_run / "nbest_predictions.json").read_text())
    gold = load_gold(source_dir / DEV_NAME, parse_file_spec(DEV_FILE)).answers
    spans, diffs = visual.best_spans_from_nbest(nbest)
    curve = visual.threshold_curve(gold, spans, diffs)
    exact, f1 = curve.at(results["null_threshold"])
    assert exact == pytest.approx(results["exact"], abs=1e-9)
    assert f1 == pytest.approx(results["f1"], abs=1e-9)
    # the official oracle sweeps predictions.json, where questions above the threshold in
    # effect already answer "": it is the best point of the curve up to that threshold
    upto = curve.thresholds <= results["null_threshold"]
    assert max(curve.none_f1, *curve.f1[upto]) == pytest.approx(results["best_f1"], abs=1e-9)
    assert max(curve.none_exact, *curve.exact[upto]) == pytest.approx(results["best_exact"],
                                                                      abs=1e-9)
    oracle = visual.logit(results["best_f1_thresh"])
    assert curve.at(oracle)[1] == pytest.approx(results["best_f1"], abs=1e-6)
    # over all thresholds (best spans answered above it too) the curve is at least as high
    assert curve.best()[0] >= results["best_f1"]
    # answering nothing is "always no answer" (two questions have no span at all)
    assert curve.none_f1 == pytest.approx(results["always_no_answer_f1"], abs=1e-9)


def test_threshold_curve_is_the_official_score_at_every_threshold(source_dir: Path) -> None:
    result = synthetic_result(source_dir, seed=7)
    gold = load_gold(source_dir / DEV_NAME, parse_file_spec(DEV_FILE)).answers
    curve = visual.threshold_curve(gold, result.best_spans, result.null_score_diff)
    finite = sorted(d for d in result.null_score_diff.values() if math.isfinite(d))
    shared = list(result.null_score_diff.values())[3]  # two questions sit exactly on it
    probes = [finite[0] - 1, finite[0], shared, math.nextafter(shared, -math.inf),
              *finite[::97], 0.0, finite[-1], finite[-1] + 1]
    for t in probes:
        official = evaluate_predictions(gold, result.predictions_at(t))
        assert curve.at(t) == pytest.approx((official["exact"], official["f1"]), abs=1e-9), t
    # the arrays hold the same values from each threshold on
    for i in range(0, len(curve.thresholds), 53):
        assert (curve.exact[i], curve.f1[i]) == pytest.approx(curve.at(curve.thresholds[i]))


def test_threshold_curve_by_hand() -> None:
    gold = {"a": ["Paris"], "b": [], "c": ["Rome"], "d": ["Oslo"]}
    curve = visual.threshold_curve(gold, {"a": "Paris", "b": "x", "d": "Oslo"},
                                   {"a": -1.0, "b": 1.0, "d": 0.5})
    assert curve.total == 4  # c has no prediction: wrong at every threshold
    assert curve.at(-5.0) == pytest.approx((25, 25))  # only b right ("")
    assert curve.at(-1.0) == pytest.approx((50, 50))  # a answered at its own difference
    assert curve.at(0.7) == pytest.approx((75, 75))  # and d
    assert curve.at(5.0) == pytest.approx((50, 50))  # b answered "x": wrong
    assert list(curve.thresholds) == [-1.0, 0.5, 1.0]
    assert list(curve.f1) == pytest.approx([50, 75, 50])
    assert curve.best() == (pytest.approx(75), 0.5)


def test_two_runs_are_overlaid_and_side_by_side(tmp_path: Path, source_dir: Path) -> None:
    first = make_run(tmp_path / "base", source_dir, seed=1)
    second = make_run(tmp_path / "higher-lr", source_dir, seed=2, lr=1e-3, steps=80)
    path, runs = visual.write_report([first, second])
    assert path == first / "report.html"
    page = path.read_text(encoding="utf-8")
    assert set(figure_uris(page)) == set(TRAINING_FIGURES + EVAL_FIGURES)
    assert_self_contained(page)
    # one figure per curve, one line per run in it, the legend naming the runs
    figures = {fig_id: fig for fig_id, _, fig in visual.training_figures(runs)}
    assert set(figures) == set(TRAINING_FIGURES)
    loss = figures["loss"].axes[0]
    assert [line.get_label() for line in loss.get_lines()] == ["base", "higher-lr"]
    assert [len(line.get_xdata()) for line in loss.get_lines()] == [20, 16]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["base", "higher-lr"]
    curve = visual.threshold_figure(runs).axes[0]
    labels = [line.get_label() for line in curve.get_lines()]
    assert {"base: F1", "base: EM", "higher-lr: F1", "higher-lr: EM"} <= set(labels)
    # the metrics table has a column per run with each run's own F1
    header = re.search(r'<table class="metrics"><tr>(.*?)</tr>', page).group(1)
    assert header == "<th></th><th>base</th><th>higher-lr</th>"
    f1_row = re.search(r"<tr><th>F1</th>(.*?)</tr>", page).group(1)
    scores = [json.loads((d / "eval_results.json").read_text())["f1"] for d in (first, second)]
    assert scores[0] != scores[1]
    assert f1_row == "".join(f'<td class="num">{s:.2f}</td>' for s in scores)
    # settings that differ are listed
    assert re.search(r"<tr><th>learning_rate</th><td[^>]*>0.0003</td><td[^>]*>0.001</td>",
                     page)


def test_run_without_evaluation_gets_curves_only(tmp_path: Path, source_dir: Path) -> None:
    run = make_run(tmp_path / "training", source_dir, evaluated=False)
    path, runs = visual.write_report([run], output=tmp_path / "out" / "r.html")
    assert path == tmp_path / "out" / "r.html" and not (run / "report.html").exists()
    page = path.read_text(encoding="utf-8")
    assert set(figure_uris(page)) == set(TRAINING_FIGURES)
    assert "No evaluation yet" in page
    assert "no evaluation yet (eval_results.json missing): curves only" in runs[0].status
    assert "training in progress or interrupted: last logged step 100" in page
    assert_self_contained(page)


def test_run_still_writing_its_metrics(tmp_path: Path, source_dir: Path) -> None:
    run = make_run(tmp_path / "going", source_dir, evaluated=False, steps=60)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 65, "epoch": 0.54, "loss": 1.7')  # half-written, no newline
    log = visual.read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in log.steps] == list(range(5, 61, 5))
    assert log.partial_last_line and log.bad_lines == [13]
    path, runs = visual.write_report([run])
    page = path.read_text(encoding="utf-8")
    assert set(figure_uris(page)) == set(TRAINING_FIGURES)
    assert "the last line of metrics.jsonl is incomplete" in page
    assert "last logged step 60" in page
    # a broken line in the middle is reported as such, not as the half-written last one
    lines = (run / "metrics.jsonl").read_text().split("\n")
    lines[2] = "garbage"
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    log = visual.read_metrics(run / "metrics.jsonl")
    assert not log.partial_last_line and log.bad_lines == [3]
    assert log.notes() == ["1 unreadable line(s) of metrics.jsonl left out (first: line 3)"]


def test_scores_from_the_eval_line_while_eval_results_is_missing(tmp_path: Path,
                                                                  source_dir: Path) -> None:
    # an evaluation rewriting the set in the run directory removes eval_results.json first
    run = make_run(tmp_path / "rewriting", source_dir)
    f1 = json.loads((run / "eval_results.json").read_text())["f1"]
    (run / "eval_results.json").unlink()
    path, runs = visual.write_report([run])
    page = path.read_text(encoding="utf-8")
    assert "eval_results.json missing: scores from the eval line of metrics.jsonl" in page
    assert re.search(rf'<tr><th>F1</th><td class="num">{f1:.2f}</td></tr>', page)
    assert set(figure_uris(page)) == set(TRAINING_FIGURES + EVAL_FIGURES)


def test_metrics_of_a_step_logged_twice_count_once(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0}, {"step": 20, "loss": 2.5},
        {"step": 20, "eval": {"f1": 50.0}})))
    log = visual.read_metrics(path)
    assert [(r["step"], r["loss"]) for r in log.steps] == [(10, 3.0), (20, 2.5)]
    assert log.evals == [{"step": 20, "eval": {"f1": 50.0}}] and not log.notes()


def test_dev_data_not_found_says_so_and_data_flag_finds_it(tmp_path: Path,
                                                            source_dir: Path) -> None:
    run = make_run(tmp_path / "moved", source_dir)
    config = json.loads((run / "squadft_config.json").read_text())
    config["source"] = (tmp_path / "gone").as_uri()
    (run / "squadft_config.json").write_text(json.dumps(config))
    path, runs = visual.write_report([run])
    page = path.read_text(encoding="utf-8")
    assert "dev data dev-small.json.gz[1:] not found" in page
    assert set(figure_uris(page)) == set(TRAINING_FIGURES) | {"answerability"}
    # --data without a slice takes the run's slice
    path, runs = visual.write_report([run], data=str(source_dir / DEV_NAME))
    assert set(figure_uris(path.read_text(encoding="utf-8"))) == set(
        TRAINING_FIGURES + EVAL_FIGURES)
    assert runs[0].evaluation.data_source == f"--data {source_dir / DEV_NAME}[1:]"
    # the wrong file (the whole of it) is refused for the per-question figures
    path, runs = visual.write_report([run], data=str(source_dir / DEV_NAME) + "[0:3]")
    assert "not the evaluated data" in " ".join(runs[0].notes)
    assert "threshold" not in figure_uris(path.read_text(encoding="utf-8"))


def test_question_words_and_answer_lengths() -> None:
    assert visual.question_word("In what year did it end?") == "what"
    assert visual.question_word("Whose army won?") == "who"
    assert visual.question_word("How many were there?") == "how"
    assert visual.question_word("Name the river.") == "other"
    assert visual.answer_length_bucket([]) == "no answer"
    assert [visual.answer_length_bucket([t]) for t in ("1066", "the Normans", "a b c d e",
                                                      " ".join("x" * 12))] == \
        ["1", "2", "4-5", "11+"]
    counts = visual.breakdown({"a": 1.0, "b": 0.5, "c": 0.0},
                              {"a": "what", "b": "what", "c": "why"}, visual.QUESTION_WORDS)
    assert counts.labels == ("what", "why")
    assert counts.f1 == {"what": 75.0, "why": 0.0} and counts.count == {"what": 2, "why": 1}


def test_report_command(tmp_path: Path, evaluated_run: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(evaluated_run), "--output", str(out),
                                 "--errors", "3"])
    assert result.exit_code == 0, result.output
    assert f"report written to {out}" in result.output
    page = out.read_text(encoding="utf-8")
    assert page.split('<table class="errors">', 1)[1].split("</table>")[0].count("<tr>") == 4
    missing = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["report", str(empty)]).exit_code == 2
    help_text = " ".join(runner.invoke(app, ["report", "--help"]).output.split())
    assert "into the first one" in help_text and "--output" in help_text


# --- the threshold trade-off table --------------------------------------------------------------

def official_at(gold: dict[str, list[str]], result: PostprocessResult, t: float
                ) -> tuple[float, float, float, float]:
    """(EM, F1, HasAns F1, NoAns F1) of the official metric at threshold t."""
    scores = evaluate_predictions(gold, result.predictions_at(t))
    return scores["exact"], scores["f1"], scores["HasAns_f1"], scores["NoAns_f1"]


def test_threshold_table_of_a_run_is_the_official_score_at_each_row(evaluated_run: Path,
                                                                    source_dir: Path) -> None:
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    evaluation = visual.load_run(evaluated_run).evaluation
    rows = visual.evaluation_threshold_table(evaluation)
    assert rows is not None
    in_effect = [r for r in rows if r.label == "in effect: calibrated"]
    assert len(in_effect) == 1 and in_effect[0].threshold == THRESHOLD
    # at the threshold in effect: eval_results.json, overall and HasAns / NoAns
    assert in_effect[0].exact == pytest.approx(results["exact"], abs=1e-9)
    assert in_effect[0].f1 == pytest.approx(results["f1"], abs=1e-9)
    assert in_effect[0].has_ans_f1 == pytest.approx(results["HasAns_f1"], abs=1e-9)
    assert in_effect[0].no_ans_f1 == pytest.approx(results["NoAns_f1"], abs=1e-9)
    oracle = [r for r in rows if r.label == visual.ORACLE_LABEL]
    assert len(oracle) == 1 and oracle[0].f1 == pytest.approx(results["best_f1"], abs=1e-6)
    # six thresholds spread between the 5th and 95th percentiles, sorted, always answer last
    gold = load_gold(source_dir / DEV_NAME, parse_file_spec(DEV_FILE)).answers
    result = synthetic_result(source_dir, seed=1)  # what make_run wrote
    finite = [d for q, d in result.null_score_diff.items() if q in gold and math.isfinite(d)]
    low, high = (float(v) for v in visual.np.percentile(finite, [5, 95]))
    spread = [r.threshold for r in rows if r.label == ""]
    assert len(spread) == visual.SPREAD_COUNT
    assert spread[0] == pytest.approx(low, abs=0.005)
    assert spread[-1] == pytest.approx(high, abs=0.005)
    assert [r.threshold for r in rows[:-1]] == sorted(r.threshold for r in rows[:-1])
    assert rows[-1].threshold == math.inf and rows[-1].name == "always answer"
    # every row, always answer included, is the official metric of the predictions there
    for row in rows:
        assert (row.exact, row.f1, row.has_ans_f1, row.no_ans_f1) == pytest.approx(
            official_at(gold, result, row.threshold), abs=1e-9), row


HAND_GOLD = {"a": ["Paris"], "b": ["Rome"], "c": [], "d": []}
HAND_SPANS = {"a": "Paris", "b": "Rome city", "c": "x", "d": "y"}
HAND_DIFFS = {"a": -2.0, "b": 1.0, "c": -1.0, "d": 3.0}


def test_threshold_table_by_hand() -> None:
    rows = visual.threshold_table(HAND_GOLD, HAND_SPANS, HAND_DIFFS,
                                  [-3.0, -2.0, 0.0, 2.0, math.inf],
                                  ["", "x", "", "", visual.ALWAYS_ANSWER])
    got = [(r.threshold, r.exact, r.f1, r.has_ans_f1, r.no_ans_f1) for r in rows]
    # b's span "Rome city" against "Rome": precision 1/2, recall 1, F1 2/3, EM 0
    expected = [
        (-3.0, 50.0, 50.0, 0.0, 100.0),  # nothing answered: c, d right
        (-2.0, 75.0, 75.0, 50.0, 100.0),  # a answered, at its own difference
        (0.0, 50.0, 50.0, 50.0, 50.0),  # and c: wrong
        (2.0, 50.0, 100 * (2 + 2 / 3) / 4, 100 * (1 + 2 / 3) / 2, 50.0),  # and b: partly
        (math.inf, 25.0, 100 * (1 + 2 / 3) / 4, 100 * (1 + 2 / 3) / 2, 0.0),  # and d
    ]
    assert len(got) == len(expected)
    for row, want in zip(got, expected, strict=True):
        assert row == pytest.approx(want), row
    assert [r.name for r in rows] == ["-3", "-2 (x)", "0", "2", "always answer"]
    assert visual.threshold_markdown(rows[2:]) == (
        "| threshold | EM | F1 | HasAns F1 | NoAns F1 |\n"
        "|---|---|---|---|---|\n"
        "| 0 | 50.00 | 50.00 | 50.00 | 50.00 |\n"
        "| 2 | 50.00 | 66.67 | 83.33 | 50.00 |\n"
        "| always answer | 25.00 | 41.67 | 83.33 | 0.00 |")


def test_threshold_table_with_an_empty_subset_says_n_a() -> None:
    answerable = {q: a for q, a in HAND_GOLD.items() if a}
    unanswerable = {q: a for q, a in HAND_GOLD.items() if not a}
    only_has = visual.threshold_table(answerable, HAND_SPANS, HAND_DIFFS, [2.0])
    only_no = visual.threshold_table(unanswerable, HAND_SPANS, HAND_DIFFS, [0.0])
    assert only_has[0].no_ans_f1 is None
    assert only_has[0].has_ans_f1 == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert only_has[0].f1 == only_has[0].has_ans_f1
    assert only_no[0].has_ans_f1 is None and only_no[0].no_ans_f1 == pytest.approx(50.0)
    assert visual.threshold_markdown(only_no).endswith("| 0 | 50.00 | 50.00 | n/a | 50.00 |")


def test_spread_and_parsed_thresholds() -> None:
    spread = visual.spread_thresholds([float(v) for v in range(101)] + [math.inf, -math.inf])
    assert spread == [5.0, 23.0, 41.0, 59.0, 77.0, 95.0]
    assert visual.spread_thresholds([math.inf]) == []
    assert visual.parse_thresholds("-14, -12,-10.5,0") == [-14.0, -12.0, -10.5, 0.0]
    for bad in ("", "-14,,0", "-14;-12", "a,b", "nan", "1,inf"):
        with pytest.raises(visual.ConfigError, match="--thresholds"):
            visual.parse_thresholds(bad)


def test_threshold_in_effect_says_how_it_was_chosen() -> None:
    def label(kind: str | None) -> str:
        results = {"null_threshold": 0.0} | ({} if kind is None else
                                             {"null_threshold_kind": kind})
        return visual.threshold_in_effect_label(visual.Evaluation(results, from_file=True))

    assert [label(k) for k in ("calibrated", "given", "default", None)] == [
        "in effect: calibrated", "in effect: --null-threshold", "in effect: 0", "in effect"]


def test_report_has_the_threshold_table(evaluated_run: Path, evaluated_report: str) -> None:
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    table = evaluated_report.split('<table class="thresholds">', 1)[1].split("</table>", 1)[0]
    assert "F1 at other no-answer thresholds</h3>" in evaluated_report
    # header, in effect, oracle, six spread thresholds, always answer
    assert table.count("<tr>") == 1 + 1 + 1 + visual.SPREAD_COUNT + 1
    assert ("<tr><th>0.37 (in effect: calibrated)</th>" + "".join(
        f'<td class="num">{results[k]:.2f}</td>'
        for k in ("exact", "f1", "HasAns_f1", "NoAns_f1")) + "</tr>") in table
    assert "(oracle: tuned on these same questions)</th><td class=\"num\">" in table
    assert table.split("<tr>")[-1].startswith("<th>always answer</th>")


def test_threshold_table_label_is_escaped(tmp_path: Path, source_dir: Path) -> None:
    first = make_run(tmp_path / "a", source_dir)
    second = make_run(tmp_path / "<b>&run", source_dir, seed=2)
    page = visual.render_html(visual.load_runs([first, second]))
    assert page.count('<table class="thresholds">') == 2
    assert "F1 at other no-answer thresholds: &lt;b&gt;&amp;run</h3>" in page
    assert "<b>&run" not in page


def test_report_command_prints_the_threshold_table(tmp_path: Path, evaluated_run: Path,
                                                    source_dir: Path) -> None:
    results = json.loads((evaluated_run / "eval_results.json").read_text())
    gold = load_gold(source_dir / DEV_NAME, parse_file_spec(DEV_FILE)).answers
    result = synthetic_result(source_dir, seed=1)
    out = tmp_path / "r.html"
    run = CliRunner().invoke(app, ["report", str(evaluated_run), "--output", str(out),
                                   "--thresholds", "-2,0,1.5"])
    assert run.exit_code == 0, run.output
    lines = [line for line in run.stdout.splitlines() if line.startswith("|")]
    assert lines[:2] == ["| threshold | EM | F1 | HasAns F1 | NoAns F1 |",
                         "|---|---|---|---|---|"]

    def row(name: str, values: tuple[float, ...]) -> str:
        return "| " + " | ".join([name, *(f"{v:.2f}" for v in values)]) + " |"

    assert lines[2:] == [
        row("-2", official_at(gold, result, -2.0)),
        row("0", official_at(gold, result, 0.0)),
        row("0.37 (in effect: calibrated)",
            tuple(results[k] for k in ("exact", "f1", "HasAns_f1", "NoAns_f1"))),
        row("1.5", official_at(gold, result, 1.5)),
        row("always answer", official_at(gold, result, math.inf)),
    ]
    assert f"{evaluated_run.name}: EM/F1 against the no-answer threshold" in run.stdout


def test_report_command_refuses_bad_thresholds(tmp_path: Path, evaluated_run: Path) -> None:
    out = tmp_path / "r.html"
    proc = subprocess.run(
        [sys.executable, "-m", "squadft", "report", str(evaluated_run), "--output", str(out),
         "--thresholds", "-14,x,0"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "squadft: error: --thresholds must be comma-separated numbers, like "
        "\"-14,-12,-10,-8,0\" (got '-14,x,0')"]
    assert not out.exists()  # refused before anything was read or written


def test_report_command_thresholds_without_a_curve(tmp_path: Path, source_dir: Path) -> None:
    run = make_run(tmp_path / "training", source_dir, evaluated=False)
    result = CliRunner().invoke(app, ["report", str(run), "--thresholds", "0"])
    assert result.exit_code == 3
    assert "training: no threshold curve, so no --thresholds table" in result.stderr
    assert "squadft: error: --thresholds: no run has a threshold curve" in result.stderr
    assert "| threshold |" not in result.stdout
