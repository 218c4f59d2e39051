"""`squadft predict --input FILE`: streamed in chunks, malformed lines, whole output or none,
SQuAD files, and two ranks under torchrun."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from squadft.cli import app
from squadft.data import features as features_module
from squadft.errors import DataError
from squadft.flows.prediction import BadLine, Question, read_questions
from typer.testing import CliRunner

from tests.conftest import DEV_SAMPLE
from tests.train.common import REPO_ROOT, free_port, subprocess_env, wait_for

runner = CliRunner()
WINDOW = ["--max-seq-length", "128", "--doc-stride", "48"]
RUN = ["--precision", "fp32", "--device", "cpu"]
FLAGS = [*WINDOW, *RUN, "--null-threshold", "0"]
FIELDS = {"id", "answer", "decision", "score", "null_score", "best_span", "null_score_diff",
          "no_answer_probability", "null_threshold"}


@pytest.fixture(scope="module", autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`squadft evaluate` here caches its parsed data in a folder of this module's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SQUADFT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def first_article(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sample's first article (208 questions) as a SQuAD file and as JSON lines."""
    with gzip.open(DEV_SAMPLE, "rt", encoding="utf-8") as handle:
        data = json.load(handle)
    folder = tmp_path_factory.mktemp("questions")
    squad = folder / "article.json"
    squad.write_text(json.dumps({"version": "v2.0", "data": data["data"][:1]}))
    jsonl = folder / "article.jsonl"
    jsonl.write_text("".join(json.dumps({"id": qa["id"], "question": qa["question"],
                                         "context": p["context"]}) + "\n"
                             for p in data["data"][0]["paragraphs"] for qa in p["qas"]))
    return squad, jsonl


def _predict(model: Path, source: Path, output: Path, *more: str, flags: list[str] = FLAGS,
             prefix: tuple[str, ...] = (sys.executable, "-m")) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, "squadft", "predict", "--model", str(model), "--input",
                           str(source), "--output", str(output), *flags, *more],
                          env=subprocess_env(GLOO_SOCKET_IFNAME="lo"), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_batch_answers_equal_evaluates_predictions(tiny_model_dir: Path, tmp_path: Path,
                                                   first_article: tuple[Path, Path]) -> None:
    """A real `squadft predict` over 208 questions, in chunks of 16 x 4, as JSON lines and as
    the SQuAD file, at the model's calibrated threshold: every field, and the answers
    evaluate gives at that threshold."""
    import math
    import shutil
    import statistics

    from squadft.config import Config
    from squadft.evaluate.calibration import Calibration, InferenceSettings

    squad, jsonl = first_article
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)

    def evaluate(out: str) -> dict[str, Any]:
        done = runner.invoke(app, ["evaluate", "--model", str(model), "--data", str(squad),
                                   "--output-dir", str(tmp_path / out), *WINDOW, *RUN,
                                   "--batch-size", "32"])
        assert done.exit_code == 0, done.output
        return json.loads((tmp_path / out / "predictions.json").read_text())

    evaluate("first")  # a threshold at the median null score difference: both decisions
    probability = statistics.median(json.loads((tmp_path / "first" / "na_probs.json").read_text())
                                    .values())
    calibration = Calibration(null_threshold=math.log(probability / (1 - probability)),
                              source="test", questions=208, unanswerable=104,
                              scores={"exact": 50.0, "f1": 50.0, "total": 208}, f1_at_zero=50.0,
                              always_no_answer_f1=50.0)
    InferenceSettings.from_config(Config(max_seq_length=128, doc_stride=48),
                                  calibration).save(model)
    done = _predict(model, jsonl, tmp_path / "answers.jsonl", "--batch-size", "4",
                    flags=RUN)
    assert done.returncode == 0, done.stderr
    assert "predict: 100%" in done.stderr and "208/208" in done.stderr  # the bar, in questions
    answers = _records(tmp_path / "answers.jsonl")
    predictions = evaluate("calibrated")
    assert len(answers) == 208 and sorted(predictions) == sorted(a["id"] for a in answers)
    assert {a["id"]: a["answer"] for a in answers} == predictions
    assert sum(a["decision"] == "answered" for a in answers) in range(90, 119)
    for a in answers:
        assert set(a) == FIELDS and a["null_threshold"] == calibration.null_threshold
        assert a["null_score_diff"] == pytest.approx(a["null_score"] - a["score"], abs=1e-4)
        assert a["decision"] == ("answered" if a["null_score_diff"] <= a["null_threshold"]
                                 else "no_answer")
        assert a["answer"] == (a["best_span"] if a["decision"] == "answered" else "")
    from_squad = _predict(model, squad, tmp_path / "from-squad.jsonl", flags=RUN)
    assert from_squad.returncode == 0, from_squad.stderr
    assert _records(tmp_path / "from-squad.jsonl") == answers


def test_chunks_bound_the_questions_in_flight(tiny_model_dir: Path, tmp_path: Path,
                                              first_article: tuple[Path, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """16 x --batch-size questions are tokenized and answered at a time, never the file."""
    sizes: list[int] = []
    build = features_module.build_features

    def counted(examples: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(examples))
        return build(examples, *args, **kwargs)

    monkeypatch.setattr(features_module, "build_features", counted)
    _, jsonl = first_article
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(jsonl.read_text().splitlines(keepends=True)[:70]))
    result = runner.invoke(app, ["predict", "--model", str(tiny_model_dir), "--input",
                                 str(questions), "--output", str(tmp_path / "a.jsonl"), *FLAGS,
                                 "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert sizes == [32, 32, 6]
    assert len(_records(tmp_path / "a.jsonl")) == 70


GOOD = {"question": "Who?", "context": "Ada wrote it."}
BAD_LINES = [
    ("{not json", "line 2: invalid JSON: Expecting property name enclosed in double quotes"),
    (json.dumps({"id": "c", "context": "Ada."}), "line 3: 'question' must be a non-empty string"),
    (json.dumps({"id": "d", "question": "Q?", "context": " "}),
     "line 4: 'context' must be a non-empty string"),
    (json.dumps({"id": ["e"], **GOOD}), "line 5: 'id' must be a non-empty string or an integer"),
    (json.dumps({"id": "a", **GOOD}), "line 6: duplicate id 'a' (first on line 1)"),
    (json.dumps([1, 2]), "line 7: expected a JSON object"),
    (json.dumps({"id": "h", "question": 3, "context": "Ada."}),
     "line 8: 'question' must be a non-empty string"),
]


def _mixed_file(path: Path) -> None:
    lines = [json.dumps({"id": "a", **GOOD}), *(line for line, _ in BAD_LINES),
             json.dumps({"id": 9, **GOOD}), ""]
    path.write_text("\n".join(lines) + "\n")


def test_malformed_lines_stop_by_default_and_leave_the_output_alone(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    questions = tmp_path / "q.jsonl"
    _mixed_file(questions)
    output = tmp_path / "out" / "answers.jsonl"
    output.parent.mkdir()
    output.write_text("yesterday's answers\n")
    result = runner.invoke(app, ["predict", "--model", str(tiny_model_dir), "--input",
                                 str(questions), "--output", str(output), *FLAGS])
    assert result.exit_code == 3, result.output
    assert result.stderr.strip() == (f"squadft: error: questions {questions} {BAD_LINES[0][1]}"
                                     " (--on-bad-line skip answers the other lines)")
    assert output.read_text() == "yesterday's answers\n"
    assert [p.name for p in output.parent.iterdir()] == ["answers.jsonl"]  # no temp file left
    wrong = runner.invoke(app, ["predict", "--model", str(tiny_model_dir), "--input",
                                str(questions), "--on-bad-line", "ignore"])
    assert wrong.exit_code == 2 and "--on-bad-line must be one of stop, skip" in wrong.stderr


def test_malformed_lines_are_skipped_and_listed_on_request(tiny_model_dir: Path,
                                                           tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    _mixed_file(questions)
    output = tmp_path / "answers.jsonl"
    result = runner.invoke(app, ["predict", "--model", str(tiny_model_dir), "--input",
                                 str(questions), "--output", str(output), *FLAGS,
                                 "--on-bad-line", "skip"])
    assert result.exit_code == 0, result.output
    assert [a["id"] for a in _records(output)] == ["a", "9"]
    summary = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert len(summary) == 1 and f"skipped {len(BAD_LINES)} malformed line(s)" in summary[0]
    assert all(problem in summary[0] for _, problem in BAD_LINES)
    questions.write_text("{bad\n[]\n")
    nothing = runner.invoke(app, ["predict", "--model", str(tiny_model_dir), "--input",
                                  str(questions), "--output", str(tmp_path / "none.jsonl"),
                                  *FLAGS, "--on-bad-line", "skip"])
    assert nothing.exit_code == 3 and "no questions to answer (2 malformed lines skipped)" in \
        nothing.stderr
    assert not (tmp_path / "none.jsonl").exists()


def test_a_line_break_inside_a_json_string_is_not_a_new_record(tmp_path: Path) -> None:
    """Only "\\n" ends a JSON line: U+2028 and other breaks of str.splitlines stay in the
    record (JSON writes them raw), and a BOM before the first record is ignored."""
    context = "Ada wrote it.\u2028Then\x1cshe\x85left."
    path = tmp_path / "q.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps({"id": "a", "question": "Who?",
                                                    "context": context}, ensure_ascii=False)
                                        + "\r\n\n" + json.dumps(GOOD) + "\n").encode())
    stream, total = read_questions(path)
    assert total == 2
    assert list(stream) == [Question("a", "Who?", context), Question("line-3", "Who?",
                                                                     "Ada wrote it.")]
    (tmp_path / "q.gz").write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(DataError, match="q.gz"):
        read_questions(tmp_path / "q.gz")
    with pytest.raises(DataError, match="file not found"):
        read_questions(tmp_path / "missing.jsonl")
    path.write_bytes(b'{"id": "x", "question": "Q?", "context": "\xff"}\n')
    assert list(read_questions(path)[0]) == [BadLine(1, "not UTF-8 text (byte 42)")]


def test_sigterm_mid_run_leaves_no_output_and_no_temp_file(
    tiny_model_dir: Path, tmp_path: Path, first_article: tuple[Path, Path]
) -> None:
    _, jsonl = first_article
    many = tmp_path / "many.jsonl"
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    many.write_text("".join(json.dumps({**r, "id": f"{r['id']}-{n}"}) + "\n"
                            for n in range(20) for r in records))
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "squadft", "predict", "--model", str(tiny_model_dir), "--input",
         str(many), "--output", str(out / "answers.jsonl"), *FLAGS, "--batch-size", "4"],
        env=subprocess_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    # the temp file has the first chunk's answers: the run is under way, 4,000 questions to go
    wait_for(lambda: any(p.stat().st_size > 0 for p in out.iterdir()), 120,
             "the first answers", process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_two_ranks_under_torchrun_write_what_one_process_writes(
    tiny_model_dir: Path, tmp_path: Path, first_article: tuple[Path, Path]
) -> None:
    _, jsonl = first_article
    single = _predict(tiny_model_dir, jsonl, tmp_path / "one.jsonl", "--batch-size", "4")
    assert single.returncode == 0, single.stderr
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "-m")
    two = _predict(tiny_model_dir, jsonl, tmp_path / "two.jsonl", "--batch-size", "4",
                   prefix=torchrun)
    assert two.returncode == 0, two.stderr
    assert two.stderr.count("predict: 100%") == 1  # rank 0's bar only
    one, both = _records(tmp_path / "one.jsonl"), _records(tmp_path / "two.jsonl")
    assert [(a["id"], a["answer"], a["decision"]) for a in both] == [
        (a["id"], a["answer"], a["decision"]) for a in one]
    for a, b in zip(one, both, strict=True):
        for key in ("score", "null_score", "null_score_diff"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), key  # batches differ: ~1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "two.jsonl"]
