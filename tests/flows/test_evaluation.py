"""`squadft score`, `evaluate` and `predict`: output formats, warnings and one-line errors."""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from squadft.cli import app
from squadft.errors import DataError
from squadft.evaluate.calibration import SCORE_KEYS
from squadft.evaluate.gold import gold_from_squad
from squadft.evaluate.scoring import score_files
from typer.testing import CliRunner

from tests.conftest import DEV_SAMPLE
from tests.helpers import fill_disk

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _one_examples_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`squadft evaluate` parses a data file once per content into its cache: one cache for
    this module, so the 4,449-question sample is parsed once, not at every call."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SQUADFT_CACHE_DIR", str(tmp_path_factory.mktemp("evaluate-cache")))
        yield


def _first_answers(dev_json: dict[str, Any]) -> dict[str, str]:
    return {qa["id"]: (qa["answers"][0]["text"] if qa["answers"] else "")
            for article in dev_json["data"] for p in article["paragraphs"] for qa in p["qas"]}


def _write(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path


# --- score ------------------------------------------------------------------------------------


def test_score_perfect_predictions(dev_json: dict[str, Any], tmp_path: Path) -> None:
    predictions = _write(tmp_path / "p.json", _first_answers(dev_json))
    result = runner.invoke(app, ["score", str(predictions), "--data", str(DEV_SAMPLE)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["exact"] == metrics["f1"] == 100.0
    assert metrics["total"] == 4449 and metrics["NoAns_total"] == 2342
    assert "best_f1" not in metrics and result.stderr == ""


def test_score_always_no_answer_baseline_with_na_probs(
    dev_json: dict[str, Any], tmp_path: Path
) -> None:
    ids = list(_first_answers(dev_json))
    predictions = _write(tmp_path / "p.json", dict.fromkeys(ids, ""))
    na_probs = _write(tmp_path / "na.json", dict.fromkeys(ids, 1.0))
    result = runner.invoke(app, ["score", str(predictions), "--data", str(DEV_SAMPLE),
                                 "--na-probs", str(na_probs)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["exact"] == metrics["f1"] == pytest.approx(100 * 2342 / 4449)  # 52.64
    assert metrics["HasAns_exact"] == 0.0 and metrics["NoAns_exact"] == 100.0
    assert metrics["best_f1"] == pytest.approx(100 * 2342 / 4449)


def test_score_warns_about_missing_and_extra_ids(dev_json: dict[str, Any], tmp_path: Path) -> None:
    answers = _first_answers(dev_json)
    ids = list(answers)
    kept = {qid: answers[qid] for qid in ids[100:]}
    kept["not-a-question"] = "x"
    predictions = _write(tmp_path / "p.json", kept)
    result = runner.invoke(app, ["score", str(predictions), "--data", str(DEV_SAMPLE)])
    assert result.exit_code == 0, result.output
    assert "100 of 4449 questions have no prediction and count as wrong" in result.stderr
    assert "1 predicted ids are not in the dataset" in result.stderr
    assert json.loads(result.stdout)["exact"] == pytest.approx(100 * 4349 / 4449)


@pytest.mark.parametrize(("content", "message"), [
    ("", "the file is empty"),
    ("{\"a\": ", "invalid JSON at line 1"),
    ("[1, 2]", "expected a JSON object"),
])
def test_score_rejects_bad_prediction_files(tmp_path: Path, content: str, message: str) -> None:
    predictions = tmp_path / "p.json"
    predictions.write_text(content)
    result = runner.invoke(app, ["score", str(predictions), "--data", str(DEV_SAMPLE)])
    assert result.exit_code == 3
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_score_rejects_non_string_answers(dev_json: dict[str, Any], tmp_path: Path) -> None:
    answers: dict[str, Any] = _first_answers(dev_json)
    first = next(iter(answers))
    answers[first] = ["a", "list"]
    result = runner.invoke(app, ["score", str(_write(tmp_path / "p.json", answers)),
                                 "--data", str(DEV_SAMPLE)])
    assert result.exit_code == 3
    assert f"answer for {first} is a list, not a string" in result.stderr


def test_score_rejects_predictions_for_another_dataset(tmp_path: Path) -> None:
    predictions = _write(tmp_path / "p.json", {"x": "y"})
    result = runner.invoke(app, ["score", str(predictions), "--data", str(DEV_SAMPLE)])
    assert result.exit_code == 3 and "no prediction matches" in result.stderr


def test_score_warns_on_dataset_version(dev_json: dict[str, Any], tmp_path: Path) -> None:
    old = dict(dev_json, version="1.1")
    data = tmp_path / "dev.json.gz"
    with gzip.open(data, "wt", encoding="utf-8") as handle:
        json.dump(old, handle)
    predictions = _write(tmp_path / "p.json", _first_answers(dev_json))
    result = runner.invoke(app, ["score", str(predictions), "--data", str(data)])
    assert result.exit_code == 0
    assert "dataset version is '1.1', not v2.0" in result.stderr


def test_score_rejects_bad_na_probs(dev_json: dict[str, Any], tmp_path: Path) -> None:
    answers = _first_answers(dev_json)
    predictions = _write(tmp_path / "p.json", answers)
    na_probs = _write(tmp_path / "na.json", dict.fromkeys(list(answers)[:5], 0.5))
    result = runner.invoke(app, ["score", str(predictions), "--data", str(DEV_SAMPLE),
                                 "--na-probs", str(na_probs)])
    assert result.exit_code == 3 and "na_probs has no value for 4444" in result.stderr


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_score_rejects_non_finite_na_probs(dev_json: dict[str, Any], tmp_path: Path,
                                           bad: str) -> None:
    answers = _first_answers(dev_json)
    predictions = _write(tmp_path / "p.json", answers)
    qid = next(iter(answers))
    text = json.dumps(dict.fromkeys(answers, 0.5)).replace(f'"{qid}": 0.5', f'"{qid}": {bad}')
    na_probs = tmp_path / "na.json"
    na_probs.write_text(text)
    result = runner.invoke(app, ["score", str(predictions), "--data", str(DEV_SAMPLE),
                                 "--na-probs", str(na_probs)])
    assert result.exit_code == 3, result.output
    assert f"value for {qid} is" in result.stderr and result.stdout == ""
    nan_flag = runner.invoke(app, ["score", str(predictions), "--data", str(DEV_SAMPLE),
                                   "--na-prob-thresh", "nan"])
    assert nan_flag.exit_code == 2 and "not NaN" in nan_flag.stderr


def test_score_accepts_byte_order_marks(dev_json: dict[str, Any], tmp_path: Path) -> None:
    answers = _first_answers(dev_json)
    bom = b"\xef\xbb\xbf"
    predictions = tmp_path / "p.json"
    predictions.write_bytes(bom + json.dumps(answers).encode())
    na_probs = tmp_path / "na.json"
    na_probs.write_bytes(bom + json.dumps(dict.fromkeys(answers, 0.0)).encode())
    data = tmp_path / "dev.json"
    data.write_bytes(bom + gzip.decompress(DEV_SAMPLE.read_bytes()))
    result = runner.invoke(app, ["score", str(predictions), "--data", str(data),
                                 "--na-probs", str(na_probs)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["exact"] == 100.0


def test_score_rejects_duplicate_ids_like_prepare(dev_json: dict[str, Any], tmp_path: Path
                                                  ) -> None:
    data = json.loads(json.dumps(dev_json))
    qas = data["data"][0]["paragraphs"][0]["qas"]
    qas.append({**qas[0], "answers": [{"text": "something else", "answer_start": 0}]})
    path = _write(tmp_path / "dup.json", data)
    predictions = _write(tmp_path / "p.json", _first_answers(dev_json))
    result = runner.invoke(app, ["score", str(predictions), "--data", str(path)])
    assert result.exit_code == 3 and f"duplicate question id '{qas[0]['id']}'" in result.stderr
    with pytest.raises(DataError, match="duplicate question id"):
        from squadft.data.squad import load_squad

        load_squad(path)


def test_score_reports_is_impossible_with_answers(dev_json: dict[str, Any],
                                                  tmp_path: Path) -> None:
    data = json.loads(json.dumps(dev_json))
    qa = next(q for q in data["data"][0]["paragraphs"][0]["qas"] if q["answers"])
    qa["is_impossible"] = True
    path = _write(tmp_path / "mixed.json", data)
    answers = _first_answers(dev_json)
    result = runner.invoke(app, ["score", str(_write(tmp_path / "p.json", answers)),
                                 "--data", str(path)])
    assert result.exit_code == 0, result.output
    assert "1 questions are marked is_impossible but carry answers" in result.stderr
    # scored as answerable: its (correct) answer counts, so the total stays perfect
    metrics = json.loads(result.stdout)
    assert metrics["exact"] == 100.0 and metrics["HasAns_total"] == 4449 - 2342


def test_gold_is_read_like_the_official_script(dev_json: dict[str, Any]) -> None:
    gold = gold_from_squad(dev_json)
    assert len(gold.answers) == 4449 and gold.version == "v2.0"
    assert sum(1 for texts in gold.answers.values() if not texts) == 2342
    with pytest.raises(DataError, match="no top-level 'data' list"):
        gold_from_squad({"version": "v2.0"})


def test_score_files_returns_metrics_and_warnings(
    dev_json: dict[str, Any], tmp_path: Path
) -> None:
    answers = _first_answers(dev_json)
    del answers[next(iter(answers))]
    report = score_files(_write(tmp_path / "p.json", answers), DEV_SAMPLE)
    assert report.warnings == [f"1 of 4449 questions have no prediction and count as wrong "
                               f"(first: {next(iter(_first_answers(dev_json)))})"]
    assert report.metrics["exact"] == pytest.approx(100 * 4448 / 4449)


# --- evaluate ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_writes_official_formats(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = runner.invoke(app, [
        "evaluate", "--model", str(tiny_model_dir), "--data", str(DEV_SAMPLE),
        "--output-dir", str(out), "--max-eval-samples", "60", "--max-seq-length", "128",
        "--doc-stride", "48", "--batch-size", "32", "--precision", "fp32",
    ])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # the first number shown is at a threshold fixed in advance, and says which one
    assert lines[0].startswith("60 questions at null threshold 0, no calibrated threshold")
    assert lines[1].startswith("always no answer: EM ")
    assert lines[2] == "no 95% interval: the questions come from one article"
    assert lines[3].startswith("oracle (threshold tuned on these same questions): best_exact")
    assert "has no squadft_inference.json" in result.stderr

    predictions = json.loads((out / "predictions.json").read_text())
    na_probs = json.loads((out / "na_probs.json").read_text())
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    metrics = json.loads((out / "eval_results.json").read_text())
    assert len(predictions) == 60 and all(isinstance(v, str) for v in predictions.values())
    assert set(na_probs) == set(predictions) == set(nbest)
    assert all(0.0 <= p <= 1.0 for p in na_probs.values())
    entry = next(iter(nbest.values()))
    assert set(entry[0]) == {"text", "probability", "start_logit", "end_logit", "score",
                             "answer_start"}
    assert sum(e["probability"] for e in entry) == pytest.approx(1.0)
    for key in SCORE_KEYS + ("best_exact", "best_f1", "best_exact_thresh", "best_f1_thresh"):
        assert key in metrics, key
    # tuned numbers appear only as the official best_* keys
    assert not [key for key in metrics if key.startswith(("raw_", "tuned_"))]
    assert metrics["null_threshold"] == 0.0 and metrics["null_threshold_kind"] == "default"
    assert metrics["always_no_answer_f1"] == pytest.approx(100 * metrics["NoAns_total"] / 60)
    assert metrics["total"] == 60 and metrics["examples"] == 60
    # predictions.json holds the answers at that threshold, not at the oracle's
    assert all((predictions[q] == "") == (na_probs[q] > 0.5) for q in predictions)

    # Scoring the written files reproduces the written metrics (what evaluate-v2.0.py would do).
    # Only the 60 evaluated questions: the rest of the dev file would count as missing.
    subset = tmp_path / "dev60.json"
    _write(subset, _subset(DEV_SAMPLE, set(predictions)))
    rescored = runner.invoke(app, ["score", str(out / "predictions.json"), "--data", str(subset),
                                   "--na-probs", str(out / "na_probs.json")])
    assert rescored.exit_code == 0, rescored.output
    again = json.loads(rescored.stdout)
    for key, value in again.items():
        assert metrics[key] == pytest.approx(value), key


def _subset(path: Path, ids: set[str]) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        data = json.load(handle)
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            paragraph["qas"] = [qa for qa in paragraph["qas"] if qa["id"] in ids]
    return data


def test_evaluate_rejects_a_bad_null_threshold(tiny_model_dir: Path) -> None:
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_model_dir), "--data",
                                 str(DEV_SAMPLE), "--null-threshold", "sometimes"])
    assert result.exit_code == 2 and "null_threshold must be 'auto' or a number" in result.stderr


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_windows_longer_than_the_model_fail_at_start(tiny_model_dir: Path, tmp_path: Path,
                                                     command: str) -> None:
    data = (["--data", str(DEV_SAMPLE), "--output-dir", str(tmp_path / "out")]
            if command == "evaluate" else ["--question", "Who?", "--context", CONTEXT])
    result = runner.invoke(app, [command, "--model", str(tiny_model_dir), *data,
                                 "--max-seq-length", "1024"])
    assert result.exit_code == 2, result.output
    assert "max_seq_length 1024 is longer than" in result.stderr
    assert "(512 positions)" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


# --- predict ----------------------------------------------------------------------------------


CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to "
           "Normandy, a region in France.")


def test_predict_single_question(tiny_model_dir: Path) -> None:
    args = ["predict", "--model", str(tiny_model_dir), "--question", "Who gave their name?",
            "--context", CONTEXT, "--max-seq-length", "64", "--doc-stride", "16"]
    answered = runner.invoke(app, [*args, "--null-threshold", "1e9"])
    assert answered.exit_code == 0, answered.output
    record = json.loads(answered.stdout)
    assert set(record) == {"id", "answer", "decision", "score", "null_score", "best_span",
                           "null_score_diff", "no_answer_probability", "null_threshold"}
    assert record["null_threshold"] == 1e9
    assert record["answer"] and record["answer"] == record["best_span"]
    assert record["answer"] in CONTEXT
    refused = json.loads(runner.invoke(app, [*args, "--null-threshold", "-1e9"]).stdout)
    assert refused["answer"] == "" and refused["best_span"] == record["best_span"]
    # its id: a digest of the question and the context (SQuAD's 24 hex digits), the same on
    # every run, another for another pair
    assert re.fullmatch(r"[0-9a-f]{24}", record["id"]) and refused["id"] == record["id"]
    other = runner.invoke(app, [*args[:4], "Who were the Normans?", *args[5:]])
    assert json.loads(other.stdout)["id"] not in (record["id"], "question")


def test_predict_jsonl_batch(tiny_model_dir: Path, tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    lines = [{"id": f"q{i}", "question": f"Question number {i}?", "context": CONTEXT * (i + 1)}
             for i in range(5)]
    questions.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    out = tmp_path / "answers.jsonl"
    result = runner.invoke(app, ["predict", "--model", str(tiny_model_dir), "--input",
                                 str(questions), "--output", str(out), "--max-seq-length", "64",
                                 "--doc-stride", "16", "--null-threshold", "1e9"])
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in answers] == [f"q{i}" for i in range(5)]
    assert all(a["answer"] and a["answer"] in line["context"]
               for a, line in zip(answers, lines, strict=True))


def test_predict_reports_bad_input_in_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": "a", "question": "Q?", "context": CONTEXT}) + "\n"
                         + json.dumps({"id": "b", "question": "", "context": CONTEXT}) + "\n")
    result = runner.invoke(app, ["predict", "--model", str(tiny_model_dir), "--input",
                                 str(questions)])
    assert result.exit_code == 3
    assert "line 2: 'question' must be a non-empty string" in result.stderr
    neither = runner.invoke(app, ["predict", "--model", str(tiny_model_dir)])
    assert neither.exit_code == 2 and "--input" in neither.stderr
    half = runner.invoke(app, ["predict", "--model", str(tiny_model_dir), "--question", "Q?"])
    assert half.exit_code == 2 and "go together" in half.stderr
    empty = runner.invoke(app, ["predict", "--model", str(tiny_model_dir), "--question", " ",
                                "--context", CONTEXT])
    assert empty.exit_code == 2 and "must not be empty" in empty.stderr


def test_predict_defaults_to_the_models_calibrated_threshold(tiny_model_dir: Path,
                                                             tmp_path: Path) -> None:
    import shutil

    from squadft.config import Config
    from squadft.evaluate.calibration import Calibration, InferenceSettings

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    refuse_all = Calibration(null_threshold=-1e9, source="test", questions=2, unanswerable=1,
                             scores={"exact": 50.0, "f1": 50.0, "total": 2}, f1_at_zero=50.0,
                             always_no_answer_f1=50.0)
    cfg = Config(max_seq_length=64, doc_stride=16)
    InferenceSettings.from_config(cfg, refuse_all).save(model)
    args = ["predict", "--model", str(model), "--question", "Who gave their name?",
            "--context", CONTEXT]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["null_threshold"] == -1e9 and record["answer"] == ""
    assert record["best_span"] in CONTEXT and record["best_span"]
    given = json.loads(runner.invoke(app, [*args, "--null-threshold", "1e9"]).stdout)
    assert given["answer"] == record["best_span"]


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_nan_threshold_in_the_models_settings_is_exit_3_naming_file_and_key(
    tiny_model_dir: Path, tmp_path: Path, command: str
) -> None:
    import shutil

    from squadft.config import Config
    from squadft.evaluate.calibration import INFERENCE_FILE, Calibration, InferenceSettings

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    calibration = Calibration(null_threshold=1.5, source="test", questions=2, unanswerable=1,
                              scores={"exact": 50.0, "f1": 50.0, "total": 2}, f1_at_zero=50.0,
                              always_no_answer_f1=50.0)
    InferenceSettings.from_config(Config(max_seq_length=64, doc_stride=16), calibration).save(model)
    path = model / INFERENCE_FILE
    path.write_text(path.read_text().replace("1.5", "NaN"))  # both keys, as a NaN run writes
    data = (["--data", str(DEV_SAMPLE), "--output-dir", str(tmp_path / "out")]
            if command == "evaluate" else ["--question", "Who?", "--context", CONTEXT])
    result = runner.invoke(app, [command, "--model", str(model), *data])
    assert result.exit_code == 3, result.output
    assert result.stderr.strip() == (f"squadft: error: {path}: calibration.null_threshold must "
                                     "be a finite number (got NaN)")
    assert not (tmp_path / "out").exists()


# --- the output set: whole or not at all, checked before inference, umask --------------------

EVAL_FLAGS = ["--max-seq-length", "128", "--doc-stride", "48", "--precision", "fp32",
              "--batch-size", "32"]


def _evaluate(model: Path, out: Path, *flags: str) -> Any:
    return runner.invoke(app, ["evaluate", "--model", str(model), "--data", str(DEV_SAMPLE),
                               "--output-dir", str(out), *EVAL_FLAGS, *flags])


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_full_disk_during_evaluate_leaves_the_previous_outputs_whole(
    small_disk, tiny_model_dir: Path
) -> None:
    disk = small_disk(4 << 20)
    out = disk / "evaluate"
    first = _evaluate(tiny_model_dir, out, "--max-eval-samples", "300")
    assert first.exit_code == 0, first.output
    before = _contents(out)
    assert set(before) == {"predictions.json", "na_probs.json", "nbest_predictions.json",
                           "eval_results.json"}
    size = sum(len(data) for data in before.values())
    # room for the pre-inference probe and for some files, not for the whole new set
    free = fill_disk(disk, size // 3)
    assert 64 << 10 < free < size, (free, size)

    second = _evaluate(tiny_model_dir, out, "--max-eval-samples", "300",
                       "--null-threshold=-1e9")  # different predictions, if it got through
    assert second.exit_code == 5, second.output
    last = second.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"squadft: error: cannot write {re.escape(str(out))}/"
                        r"(predictions|na_probs|nbest_predictions|eval_results)\.json: disk full",
                        last), last
    assert _contents(out) == before  # no new predictions.json next to the old eval_results
    assert sorted(os.listdir(disk)) == ["evaluate", "filler"]  # no staging directory left


def test_evaluate_draws_a_progress_bar_on_stderr_sparingly_in_a_log(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A real `squadft evaluate` writing to files (a batch job's log): the bar is on stderr
    and, as training's, drawn at its start and end only (every 30 s off a terminal), though
    the run has 20 batches; stdout keeps the results alone."""
    import subprocess
    import sys

    from tests.train.common import REPO_ROOT, subprocess_env

    done = subprocess.run(
        [sys.executable, "-m", "squadft", "evaluate", "--model", str(tiny_model_dir), "--data",
         f"{DEV_SAMPLE}[11:]", "--output-dir", str(tmp_path / "ev"), "--max-eval-samples",
         "300", *EVAL_FLAGS[:-1], "16"],
        capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    windows = json.loads((tmp_path / "ev" / "eval_results.json").read_text())["features"]
    assert windows > 19 * 16
    draws = [part for part in re.split(r"[\r\n]", done.stderr) if part.startswith("evaluate:")]
    assert len(draws) == 2 and re.match(rf"evaluate: +0%\| +\| 0/{windows} ", draws[0])
    assert re.match(rf"evaluate: 100%\|\S+\| {windows}/{windows} \[", draws[1]), draws
    assert "evaluate:" not in done.stdout and "it/s" not in done.stdout
    assert "300 questions at null threshold" in done.stdout


def test_evaluate_checks_the_output_folder_before_inference(
    small_disk, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from squadft.flows import evaluation

    def no_inference(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("inference started")

    monkeypatch.setattr(evaluation, "decode", no_inference)
    monkeypatch.setattr(evaluation, "load_gold", no_inference)  # not even the data is read
    disk = small_disk(256 << 10)
    assert fill_disk(disk, 0) == 0  # an empty file still fits: the probe writes bytes
    result = _evaluate(tiny_model_dir, disk / "evaluate", "--max-eval-samples", "20")
    assert result.exit_code == 5, result.output
    assert result.stderr.strip() == (
        f"squadft: error: cannot write {disk / 'evaluate'}: disk full")


def test_evaluate_prints_the_parse_report_its_warnings_refer_to(
    tiny_model_dir: Path, dev_json: dict[str, Any], tmp_path: Path
) -> None:
    data = copy.deepcopy(dev_json)
    qa = next(q for q in data["data"][0]["paragraphs"][0]["qas"] if q["answers"])
    for answer in qa["answers"]:
        answer["text"] = "words that are nowhere in the paragraph"
    path = _write(tmp_path / "dev.json", data)
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_model_dir), "--data",
                                 f"{path}[0:1]", "--output-dir", str(tmp_path / "ev"),
                                 *EVAL_FLAGS])
    assert result.exit_code == 0, result.output
    report_line = next(line for line in result.stderr.splitlines()
                       if line.startswith("squadft: data: "))
    assert f"{path}: SQuAD 2.0" in report_line and "1 examples dropped" in report_line
    assert f"1 questions of {path}[0:1] could not be parsed" in result.stderr


def test_evaluate_data_names_a_file_with_brackets_and_commas(
    tiny_model_dir: Path, dev_json: dict[str, Any], tmp_path: Path
) -> None:
    """--data takes an existing file as it is written, or escaped with a slice after it."""
    data = {**dev_json, "data": dev_json["data"][:1]}
    path = _write(tmp_path / "dev[v2],a.json", data)
    for given in (str(path), str(tmp_path / "dev\\[v2\\]\\,a.json[0:1]")):
        result = runner.invoke(app, ["evaluate", "--model", str(tiny_model_dir), "--data",
                                     given, "--output-dir", str(tmp_path / "ev"), *EVAL_FLAGS])
        assert result.exit_code == 0, result.output
        assert f"squadft: data: {path}: SQuAD 2.0" in result.stderr
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_model_dir), "--data",
                                 f"{path}[0:1]", "--output-dir", str(tmp_path / "ev")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "invalid data file" in result.output and "\\[" in result.output


def _set_of(texts: dict[str, str]) -> tuple[dict[str, str], Any]:
    from squadft.evaluate.postprocess import PostprocessResult

    diffs = {qid: -1.0 for qid in texts}
    return dict(texts), PostprocessResult(dict(texts), dict(texts), diffs, 0.0)


def test_the_output_set_is_swapped_in_whole_or_renamed_after_the_old_one_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from squadft.evaluate import outputs

    old_umask = os.umask(0o022)
    try:
        # a folder of its own: one rename(2) exchange, the folder is a new inode
        own = tmp_path / "evaluate"
        outputs.write_prediction_files(own, *_set_of({"q1": "old"}), {"exact": 1.0})
        inode = own.stat().st_ino
        outputs.write_prediction_files(own, *_set_of({"q1": "new"}))  # no metrics this time
        assert own.stat().st_ino != inode
        assert sorted(os.listdir(own)) == ["na_probs.json", "nbest_predictions.json",
                                           "predictions.json"]  # no stale eval_results.json
        assert json.loads((own / "predictions.json").read_text()) == {"q1": "new"}
        assert stat.S_IMODE(own.stat().st_mode) == 0o755
        assert {stat.S_IMODE(p.stat().st_mode) for p in own.iterdir()} == {0o644}

        # without RENAME_EXCHANGE (NFS, old kernels): renamed aside, then in
        from squadft import io

        monkeypatch.setattr(io, "_exchange", lambda first, second: False)
        outputs.write_prediction_files(own, *_set_of({"q1": "newer"}), {"exact": 0.0})
        assert json.loads((own / "eval_results.json").read_text()) == {"exact": 0.0}
        assert sorted(os.listdir(tmp_path)) == ["evaluate"]

        # a shared folder (the training run directory): file by file, nothing else touched
        run = tmp_path / "run"
        (run / "checkpoint-3").mkdir(parents=True)
        (run / "metrics.jsonl").write_text("{}\n")
        outputs.write_prediction_files(run, *_set_of({"q1": "old"}), {"exact": 1.0})
        inode = run.stat().st_ino
        outputs.write_prediction_files(run, *_set_of({"q1": "new"}))
        assert run.stat().st_ino == inode
        assert sorted(os.listdir(run)) == ["checkpoint-3", "metrics.jsonl", "na_probs.json",
                                           "nbest_predictions.json", "predictions.json"]
        assert json.loads((run / "na_probs.json").read_text()) == {"q1": pytest.approx(0.2689,
                                                                                       abs=1e-4)}

        # the working directory is never swapped away from under the shell
        here = tmp_path / "here"
        here.mkdir()
        monkeypatch.chdir(here)
        outputs.write_prediction_files(Path("."), *_set_of({"q1": "x"}))
        assert here.stat().st_ino == Path.cwd().stat().st_ino
        assert (here / "predictions.json").is_file()
    finally:
        os.umask(old_umask)
