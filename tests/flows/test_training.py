from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from squadft.cli import app
from squadft.config import Config
from squadft.errors import ConfigError, DataError, StorageError
from squadft.flows import preparation, training
from typer.testing import CliRunner

from tests.train.common import cli_flags, run_settings


@pytest.fixture
def settings(sample_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> dict:
    return run_settings(sample_dir, tiny_model_dir, tmp_path / "cache",
                        output_dir=str(tmp_path / "out"), max_train_samples=60,
                        max_eval_samples=20)


def test_pull_reports_each_split_and_then_the_cache(
    settings: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = Config(**settings)
    fetched = preparation.pull(cfg, verbose=True)
    first = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].strip() for line in first] == ["train", "dev"]
    assert fetched["train"][0].sha256 in first[0] and first[0].endswith("downloaded)")
    assert f"{fetched['dev'][0].size:,} bytes" in first[1]
    preparation.pull(cfg, verbose=True)
    assert all(line.endswith("cached)") for line in capsys.readouterr().out.splitlines())


def test_prepare_samples_detects_v2_and_reuses_cached_features(
    settings: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = Config(**settings)
    data = preparation.prepare(cfg)
    out = capsys.readouterr().out
    assert data.train is not None and data.dev is not None
    assert len(data.train.examples) == 60 and len(data.dev.examples) == 20
    assert data.is_v2 and "data is SQuAD 2.0" in out
    assert "a seeded sample of 60 questions" in out and "built and cached" in out
    assert "dev: " in out and "4449 examples" in out  # the parse report of the whole file
    assert not data.train.cache_hit
    again = preparation.prepare(cfg)
    assert again.train.cache_hit and again.dev.cache_hit and again.calibration.cache_hit
    assert "cache hit" in capsys.readouterr().out
    assert (again.train.features.input_ids == data.train.features.input_ids).all()
    other = preparation.prepare(cfg.replace(max_train_samples=30), splits=("train",),
                             verbose=False)
    assert not other.train.cache_hit and len(other.train.examples) == 30


def _ids(examples) -> set[str]:
    return {e.id for e in examples}


def test_calibration_holds_out_whole_articles_of_the_training_data(
    settings: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = Config(**{**settings, "max_train_samples": None})
    data = preparation.prepare(cfg, splits=("train",))
    train, held = data.train.examples, data.calibration.examples
    assert not _ids(train) & _ids(held)
    assert len(train) + len(held) == 4719  # nothing lost, nothing shared
    # whole articles: every question of a held-out article is held out, none of it trains
    held_articles = {e.article for e in held}
    assert len(held_articles) == 1  # 2% of 10 articles, at least one
    assert not held_articles & {e.article for e in train}
    out = capsys.readouterr().out
    assert "calibration questions: 1 training articles held out of training" in out
    # seeded: the same articles on a rerun, other ones (eventually) with other seeds
    again = preparation.prepare(cfg, splits=("train",), verbose=False)
    assert _ids(again.calibration.examples) == _ids(held)
    choices = {frozenset(e.article for e in preparation.prepare(
        cfg.replace(seed=seed), splits=("train",), verbose=False).calibration.examples)
        for seed in range(6)}
    assert len(choices) > 1
    # off: everything trains and the run says the threshold stays 0
    off = preparation.prepare(cfg.replace(calibration_fraction=0.0), splits=("train",))
    assert off.calibration is None and len(off.train.examples) == 4719
    assert "no calibration set (calibration_fraction is 0)" in capsys.readouterr().out


def test_max_train_samples_is_a_seeded_sample_keeping_the_unanswerable_share(
    settings: dict,
) -> None:
    cfg = Config(**{**settings, "train_file": "dev-v2.0-first12.json.gz",
                    "calibration_fraction": 0.0, "max_train_samples": 400})
    sample = preparation.prepare(cfg, splits=("train",), verbose=False).train.examples
    share = sum(e.is_impossible for e in sample) / len(sample)
    assert len(sample) == 400 and share == pytest.approx(2342 / 4449, abs=1 / 400)
    # spread over the file, not its first 400 questions (which cover two articles)
    assert len({e.article for e in sample}) == 12
    again = preparation.prepare(cfg, splits=("train",), verbose=False).train.examples
    assert [e.id for e in again] == [e.id for e in sample]
    other = preparation.prepare(cfg.replace(seed=7), splits=("train",), verbose=False)
    assert _ids(other.train.examples) != _ids(sample)


def test_several_training_files_train_on_their_union(
    settings: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = Config(**{**settings, "max_train_samples": None, "calibration_fraction": 0.0,
                    "train_file": "train-v2.0-first10.json.gz,dev-v2.0-first12.json.gz[:2]"})
    data = preparation.prepare(cfg, splits=("train",))
    out = capsys.readouterr().out
    assert len(data.train.examples) == 4719 + 208 + 418  # all of train + 2 dev articles
    assert _ids(data.train.examples) >= _ids(
        preparation.prepare(cfg.replace(train_file="dev-v2.0-first12.json.gz[:2]"),
                         splits=("train",), verbose=False).train.examples)
    # one parse report per file, the slice said in words
    reports = [line for line in out.splitlines() if line.startswith("squadft: train: ")
               and "SQuAD 2.0" in line]
    assert len(reports) == 2 and reports[1].endswith("articles [:2]: 626 questions")
    assert len(data.train.files) == 2 and len(data.train.parse_reports) == 2
    # the same question in two files is an error, not a silent double weight
    overlap = cfg.replace(train_file="dev-v2.0-first12.json.gz[:2],dev-v2.0-first12.json.gz[1:3]")
    with pytest.raises(DataError, match="must not overlap"):
        preparation.prepare(overlap, splits=("train",), verbose=False)


@pytest.mark.parametrize("flags, code, message", [
    (["--learning-rate", "-1"], 2, "learning_rate must be > 0"),
    (["--batch-size", "0"], 2, "batch_size must be > 0"),
    (["--doc-stride", "128", "--max-seq-length", "128"], 2, "doc_stride (128) must be <"),
    (["--precision", "fp8"], 2, "precision must be one of"),
    # found at start, not after training (inf, 1e309 and nan all parse as floats)
    (["--null-threshold", "inf"], 2, "null_threshold must be a finite number (got 'inf')"),
    (["--null-threshold", "1e309"], 2, "null_threshold must be a finite number"),
    (["--learning-rate", "nan"], 2, "learning_rate must be a finite number (got nan)"),
    (["--epochs", "1e309"], 2, "epochs must be a finite number (got inf)"),
    (["--model", "no-such-org/no-such-model"], 6, "pass a local save_pretrained directory"),
    # the tiny model has 512 positions: caught before any data is pulled, not at the first
    # long batch hours into training
    (["--max-seq-length", "1024", "--doc-stride", "128"], 2,
     "max_seq_length 1024 is longer than"),
    (["--max-seq-length", "64", "--doc-stride", "61"], 2, "leaves no room for a question"),
])
def test_bad_input_is_one_line_and_an_exit_code(settings: dict, flags: list[str], code: int,
                                                message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", *cli_flags(settings), *flags])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "cache" / "downloads").exists()  # failed before pulling anything


def test_unwritable_output_dir_fails_before_any_work(settings: dict, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = CliRunner().invoke(
        app, ["train", *cli_flags({**settings, "output_dir": str(blocker / "run")})])
    assert result.exit_code == 5 and "cannot write" in result.output
    assert not (tmp_path / "cache").exists()  # nothing was downloaded first


def test_train_writes_the_run_directory(settings: dict) -> None:
    result = training.train(Config(**{**settings, "max_steps": 3, "do_eval": True}))
    out = Path(settings["output_dir"])
    assert result.steps == 3 and Path(result.final_dir) == out / "final"
    for name in ("squadft_config.json", "metrics.jsonl", "train_results.json",
                 "eval_results.json", "predictions.json", "checkpoint-3/manifest.json",
                 "final/manifest.json", "final/model.safetensors", "final/tokenizer.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "squadft_config.json").read_text())["max_steps"] == 3



def test_a_finished_run_started_again_says_so_and_does_nothing(
    settings: dict, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`squadft demo` twice: the second run says at once that the run is finished and how to
    start again; it loads no model, prepares no data and rewrites nothing. A run stopped after
    final/ was saved (a preemption during the evaluation) is not finished: the requeue trains
    nothing and evaluates; other settings continue the run from its checkpoint."""
    import shutil

    from squadft.errors import Preempted

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = Config(**{**settings, "model": str(model), "max_steps": 2, "do_eval": True})
    out, cache = Path(cfg.output_dir), Path(cfg.cache_dir)

    def preempted(*args, **kwargs):
        raise Preempted("stopped by SIGTERM during the final evaluation")

    with monkeypatch.context() as patch:
        patch.setattr(training, "evaluate_dev", preempted)
        with pytest.raises(Preempted):
            training.train(cfg)
    assert (out / "final" / "manifest.json").is_file()
    assert not (out / "eval_results.json").exists()
    capsys.readouterr()
    first = training.train(cfg)
    said = capsys.readouterr()
    assert first.steps == 2 and first.tokens_per_second == 0.0
    assert "training is already complete at step 2" in said.err
    # the held-out evaluation of step 2 is in checkpoint-2: its calibration is reused, not
    # computed again; the dev evaluation draws its bar on stderr, as training does
    assert "calibrate: " not in said.err and "evaluate: 100%" in said.err
    assert "calibration: null threshold" in said.out
    assert "100%" not in said.out
    assert "no step left to train in this process" in said.out and "tokens/s;" not in said.out
    assert (out / "eval_results.json").is_file()
    size = sum(f.stat().st_size for f in (out / "checkpoint-2").iterdir()) / 1e6
    assert said.out.splitlines()[-1] == (
        f"squadft: finished: model in {out / 'final'}; {out / 'checkpoint-2'} ({size:,.0f} MB) "
        "is kept only to train further (with the optimizer state): delete it if you will not")

    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    model.rename(tmp_path / "moved-model")  # a run that loaded the model or tokenizer fails
    cache.rename(tmp_path / "moved-cache")
    again = training.train(cfg)
    said = capsys.readouterr()
    assert again == first
    assert said.out.splitlines() == [
        f"squadft: {out} holds this run, finished: final/ at step 2, evaluated "
        "(eval_results.json); nothing is trained or evaluated again. To start over, delete "
        f"{out} or pass another --output-dir; to train longer, raise --epochs or --max-steps "
        "(it continues from checkpoint-2)."]
    assert said.err == "" and not cache.exists()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == files
    (tmp_path / "moved-model").rename(model)
    (tmp_path / "moved-cache").rename(cache)

    # other settings: not this run; it continues (and is then finished with those settings)
    longer = training.train(cfg.replace(max_steps=3))
    assert longer.steps == 3 and longer.resumed_from == str(out / "checkpoint-2")
    assert "nothing is trained" not in capsys.readouterr().out
    # without its checkpoints (deleted to save space) the run is still finished, not redone
    for checkpoint in out.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    assert training.train(cfg.replace(max_steps=3)) == longer
    said = capsys.readouterr().out
    assert "nothing is trained" in said and "to train longer" not in said


def _corrupted_dev(dev_json: dict, directory: Path) -> tuple[Path, str]:
    """Article 11 of the dev subset, with one answerable question whose answers the parser
    cannot align (their text is not in the context): it is dropped from the parsed examples
    but stays in the raw file's gold answers."""
    article = copy.deepcopy(dev_json["data"][11])
    qa = next(q for q in article["paragraphs"][0]["qas"] if q["answers"])
    for answer in qa["answers"]:
        answer["text"] = "words that are nowhere in the paragraph"
    data = {"version": "v2.0", "data": [*dev_json["data"][:11], article]}
    path = directory / "dev-corrupt.json"
    path.write_text(json.dumps(data))
    return path, qa["id"]


def test_train_calibrates_on_held_out_articles_and_evaluate_reproduces_it(
    settings: dict, sample_dir: Path, dev_json: dict, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "train-v2.0-first10.json.gz").symlink_to(sample_dir / "train-v2.0-first10.json.gz")
    dev_path, dropped_id = _corrupted_dev(dev_json, source)
    cfg = Config(**{**settings, "source": source.as_uri(), "dev_file": f"{dev_path.name}[11:]",
                    "max_eval_samples": None, "max_steps": 4, "do_eval": True})
    training.train(cfg)
    out, err = capsys.readouterr()
    run_dir = Path(cfg.output_dir)

    settings_file = json.loads((run_dir / "final" / "squadft_inference.json").read_text())
    assert {k: settings_file[k] for k in ("max_seq_length", "doc_stride", "max_query_length",
                                          "n_best", "max_answer_length")} == {
        "max_seq_length": 128, "doc_stride": 32, "max_query_length": 32, "n_best": 20,
        "max_answer_length": 30}
    calibration = settings_file["calibration"]
    assert calibration["source"].startswith("1 training articles held out of training")
    assert settings_file["null_threshold"] == calibration["null_threshold"]
    # the manifest of final/ covers the settings file (rewritten last)
    manifest = json.loads((run_dir / "final" / "manifest.json").read_text())
    assert "squadft_inference.json" in json.dumps(manifest)
    assert "calibration: null threshold" in out

    results = json.loads((run_dir / "eval_results.json").read_text())
    assert results["null_threshold"] == calibration["null_threshold"]
    assert results["null_threshold_kind"] == "calibrated"
    # scored against the raw file: the question the parser dropped counts, as wrong
    assert results["total"] == 384 and dropped_id not in json.loads(
        (run_dir / "predictions.json").read_text())
    # a warning: on stderr (squadft.console's rule), the scores on stdout
    assert ("squadft: warning: 1 questions of dev-corrupt.json[11:] could not be parsed"
            in err)
    first = next(line for line in out.splitlines() if " questions at null threshold " in line)
    assert first.startswith("squadft: 384 questions at null threshold ")
    assert "calibrated on" in first
    eval_line = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert eval_line["eval"]["null_threshold_kind"] == "calibrated"

    # `squadft evaluate` with no other flags reproduces the evaluation after training
    again = CliRunner().invoke(app, ["evaluate", "--model", str(run_dir / "final"), "--data",
                                     f"{dev_path}[11:]", "--output-dir", str(tmp_path / "ev")])
    assert again.exit_code == 0, again.output
    for name in ("predictions.json", "na_probs.json"):
        assert json.loads((tmp_path / "ev" / name).read_text()) == json.loads(
            (run_dir / name).read_text()), name
    reproduced = json.loads((tmp_path / "ev" / "eval_results.json").read_text())
    timing = {"inference_seconds", "postprocess_seconds"}
    # how training chose its weights is the run's to say, not the evaluation's
    selection = results["selection"]
    assert selection["chosen_step"] == selection["last_step"] and "selection" not in reproduced
    assert {k: v for k, v in reproduced.items() if k not in timing} == {
        k: v for k, v in results.items() if k not in timing | {"selection"}}
    # flags still override the model's settings
    other = CliRunner().invoke(app, ["evaluate", "--model", str(run_dir / "final"), "--data",
                                     f"{dev_path}[11:]", "--output-dir", str(tmp_path / "ev2"),
                                     "--null-threshold=-1e9", "--max-seq-length", "96"])
    assert other.exit_code == 0, other.output
    overridden = json.loads((tmp_path / "ev2" / "eval_results.json").read_text())
    assert overridden["null_threshold_kind"] == "given" and overridden["NoAns_exact"] == 100.0
    assert overridden["features"] != results["features"]  # 96-token windows: more of them


@pytest.mark.slow
def test_two_runs_sharing_one_cache_both_finish_and_leave_it_valid(
    sample_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Two `squadft train` jobs on one node, one cache directory (a common pattern): both
    download, parse and tokenize the same files at the same time. Neither may fail, wait for
    good, or leave a cache that a third run cannot use as it is."""
    import subprocess

    from tests.train.common import REPO_ROOT, run_settings, squadft_command, subprocess_env

    cache = tmp_path / "shared-cache"
    runs = [run_settings(sample_dir, tiny_model_dir, cache, output_dir=str(tmp_path / f"run{i}"),
                         max_steps=2, do_eval=True, max_eval_samples=20) for i in (1, 2)]
    jobs = [subprocess.Popen(squadft_command(s), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=subprocess_env(), cwd=REPO_ROOT) for s in runs]
    for job in jobs:
        out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err
    for s in runs:
        assert (Path(s["output_dir"]) / "eval_results.json").is_file()
    assert not list(cache.rglob("*.part")) and not list(cache.rglob("*.tmp*"))
    # the cache they left is whole: a third run needs no download and no tokenization
    third = preparation.prepare(Config(**runs[0]), verbose=False)
    assert third.train.cache_hit and third.dev.cache_hit and third.calibration.cache_hit
    assert not any(f.from_cache is False for files in preparation.pull(Config(**runs[0]),
                                                                    verbose=False).values()
                   for f in files)


@pytest.mark.parametrize("make, problem", [
    (lambda root: root / "missing", "does not exist"),
    (lambda root: root, "is not a squadft checkpoint (no manifest.json, no trainer_state.json)"),
])
def test_a_wrong_resume_path_fails_before_any_data_is_prepared(
    settings: dict, tmp_path: Path, make, problem: str
) -> None:
    target = make(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    result = CliRunner().invoke(app, ["train", *cli_flags({**settings, "resume": str(target)})])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"squadft: error: --resume {target}: {problem}"
    assert not (tmp_path / "cache").exists()  # nothing pulled, parsed or tokenized


def test_a_full_cache_disk_says_disk_full(settings: dict, small_disk) -> None:
    """Downloads (~0.7 MB) and parsed examples (~2.5 MB) fit, the features (~2.3 MB) do not."""
    cache = small_disk(3800 << 10)
    with pytest.raises(StorageError) as failure:
        preparation.prepare(Config(**{**settings, "cache_dir": str(cache)}), verbose=False)
    message = str(failure.value)
    assert failure.value.exit_code == 5
    assert message.startswith(f"cannot write {cache}/features/") and message.endswith(
        ": disk full"), message
    leftovers = [p for p in cache.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_leftovers_of_killed_processes_are_removed_at_the_next_start(
    settings: dict, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.train.common import REPO_ROOT, subprocess_env

    out, features = Path(settings["output_dir"]), Path(settings["cache_dir"]) / "features"
    # a writer killed while a checkpoint, final/ and a features entry were half-written
    code = ("import sys; from pathlib import Path; from squadft.io import make_temp_dir, "
            "temp_name\nout, features = Path(sys.argv[1]), Path(sys.argv[2])\n"
            "(out / temp_name('checkpoint-20')).mkdir(parents=True)\n"
            "(out / temp_name('checkpoint-20') / 'model.safetensors').write_bytes(b'x' * 9)\n"
            "(out / temp_name('final')).mkdir()\n"
            "features.mkdir(parents=True); make_temp_dir(features, '0123abcd')\n"
            "print('ready', flush=True); sys.stdin.readline()\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(out), str(features)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=REPO_ROOT, env=subprocess_env())
    assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    left = sorted(p.name for p in [*out.iterdir(), *features.iterdir()])
    assert len(left) == 3

    result = CliRunner().invoke(app, ["train", *cli_flags({**settings, "max_steps": 1})])
    assert result.exit_code == 0, result.output
    for name in left:
        assert f"removed {name}" not in result.output  # the full path is said
        assert name in result.output and "left by an interrupted squadft process" in \
            result.output
    assert not [p for p in [*out.iterdir(), *features.iterdir()] if p.name.startswith(".")]


def _source_with(sample_dir: Path, directory: Path, **files: dict) -> Path:
    """A --source folder: the bundled samples (linked) and `files` (name -> SQuAD JSON)."""
    directory.mkdir()
    for sample in ("train-v2.0-first10.json.gz", "dev-v2.0-first12.json.gz"):
        (directory / sample).symlink_to(sample_dir / sample)
    for name, data in files.items():
        (directory / name).write_text(json.dumps(data))
    return directory


def _renamed(article: dict, prefix: str, paragraphs: slice = slice(None)) -> dict:
    """A copy of an article whose questions have new ids (the same paragraphs)."""
    copy_ = copy.deepcopy(article)
    copy_["paragraphs"] = copy_["paragraphs"][paragraphs]
    for paragraph in copy_["paragraphs"]:
        for qa in paragraph["qas"]:
            qa["id"] = prefix + qa["id"]
    return copy_


def test_calibrating_on_the_scored_questions_is_refused_before_training(
    settings: dict, sample_dir: Path, dev_json: dict, tmp_path: Path
) -> None:
    from tests.train.common import run, squadft_command

    dev = "dev-v2.0-first12.json.gz"
    flags = {**settings, "dev_file": f"{dev}[10:]", "calibration_file": f"{dev}[11:]",
             "max_eval_samples": None, "do_eval": True, "max_steps": 2}
    done = run(squadft_command(flags))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert (f"384 of the 384 calibration questions (calibration file {dev}[11:]) share an id "
            f"or a paragraph with the dev questions ({dev}[10:])") in done.stderr
    # found while choosing the questions: nothing tokenized, no model, no training
    assert " windows" not in done.stdout and not (Path(flags["output_dir"]) / "final").exists()
    assert not list((Path(flags["cache_dir"]) / "features").glob("*"))
    # the same paragraphs under other question ids are not held out either
    source = _source_with(sample_dir, tmp_path / "source",
                          **{"renamed.json": {"version": "v2.0", "data": [
                              _renamed(dev_json["data"][11], "copy-")]}})
    cfg = Config(**{**flags, "source": source.as_uri(), "calibration_file": "renamed.json"})
    with pytest.raises(ConfigError, match="384 of the 384 calibration questions"):
        preparation.prepare(cfg, verbose=False)
    # the default holdout of training articles is fine with the same dev file
    fine = preparation.prepare(cfg.replace(calibration_file=None), verbose=False)
    assert fine.calibration is not None and fine.calibration.overlap_with_train == 0


def test_calibrating_on_trained_questions_warns_and_is_recorded(
    settings: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    trained = "train-v2.0-first10.json.gz[5:6]"
    cfg = Config(**{**settings, "train_file": trained, "calibration_file": trained,
                    "max_train_samples": None, "max_calibration_samples": 40,
                    "dev_file": "dev-v2.0-first12.json.gz[11:]", "do_eval": True,
                    "max_steps": 2})
    training.train(cfg)
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if "share an id or a paragraph" in line]
    assert warnings == [
        f"squadft: warning: 40 of the 40 calibration questions (calibration file {trained}, "
        "a seeded sample of 40 questions) share an id or a paragraph with the training "
        "questions: the threshold is tuned on questions the model trained on"]
    run_dir = Path(cfg.output_dir)
    results = json.loads((run_dir / "eval_results.json").read_text())
    assert results["calibration_overlap_with_train"] == 40
    assert results["null_threshold_kind"] == "calibrated"
    assert "held-out" not in results["null_threshold_source"]
    assert "40 of them share an id or a paragraph with the training data" in \
        results["null_threshold_source"]
    saved = json.loads((run_dir / "final" / "squadft_inference.json").read_text())
    assert saved["calibration"]["overlap_with_train"] == 40
    assert "held-out" not in out


def test_the_default_holdout_is_held_out_and_has_both_kinds(
    settings: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seed 42 used to hold out article 7 of the bundled train file (no unanswerable
    questions) and report the threshold tuned there as calibrated."""
    cfg = Config(**{**settings, "max_steps": 2, "do_eval": True})
    training.train(cfg)
    out, err = capsys.readouterr()
    run_dir = Path(cfg.output_dir)
    calibration = json.loads(
        (run_dir / "final" / "squadft_inference.json").read_text())["calibration"]
    assert 0 < calibration["unanswerable"] < calibration["questions"]
    assert calibration["overlap_with_train"] == 0
    assert json.loads((run_dir / "eval_results.json").read_text())[
        "calibration_overlap_with_train"] == 0
    assert "share an id or a paragraph" not in err and "(0 unanswerable" not in out
    for seed in range(6):
        data = preparation.prepare(cfg.replace(seed=seed, max_train_samples=None),
                                   splits=("train",), verbose=False)
        held, train = data.calibration.examples, data.train.examples
        assert {e.is_impossible for e in held} == {True, False}
        assert not _ids(held) & _ids(train)
        assert not {e.context for e in held} & {e.context for e in train}
        assert data.calibration.overlap_with_train == 0


def test_the_default_holdout_leaves_out_paragraphs_shared_with_other_articles(
    settings: dict, sample_dir: Path, dev_json: dict, tmp_path: Path,
) -> None:
    # article 2 repeats the first paragraph of article 0 under other question ids
    articles = [dev_json["data"][0], dev_json["data"][4],
                _renamed(dev_json["data"][0], "copy-", slice(0, 1))]
    shared = sum(len(p["qas"]) for p in articles[2]["paragraphs"])
    source = _source_with(sample_dir, tmp_path / "source",
                          **{"shared.json": {"version": "v2.0", "data": articles}})
    cfg = Config(**{**settings, "source": source.as_uri(), "train_file": "shared.json",
                    "calibration_fraction": 0.34, "max_train_samples": None})
    held_articles = set()
    for seed in range(6):
        data = preparation.prepare(cfg.replace(seed=seed), splits=("train",), verbose=False)
        held, train = data.calibration.examples, data.train.examples
        held_articles |= {e.article for e in held}
        assert not {e.context for e in held} & {e.context for e in train}
        assert data.calibration.overlap_with_train == 0
        left_out = shared if {e.article for e in held} & {0, 2} else 0
        assert len(held) + len(train) == 208 + 255 + shared - left_out
    assert held_articles & {0, 2}  # the shared paragraph was held out at least once


def test_no_calibration_says_why(
    settings: dict, sample_dir: Path, train_json: dict, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    answerable_only, mixed = train_json["data"][0], copy.deepcopy(train_json["data"][4])
    for paragraph in mixed["paragraphs"]:
        paragraph["qas"] = [qa for qa in paragraph["qas"] if qa.get("is_impossible")]
    source = _source_with(sample_dir, tmp_path / "source", **{
        "pure.json": {"version": "v2.0", "data": [answerable_only, mixed]}})
    cfg = Config(**{**settings, "source": source.as_uri(), "max_train_samples": None})
    train = "train-v2.0-first10.json.gz"
    for changes, questions, reason in [
        ({"train_file": "dev-v2.0-first12.json.gz[3:4]"}, 444,
         "each training file has a single article, and only whole articles are held out"),
        ({"train_file": f"{train}[:4]"}, 2068, "the training data has no unanswerable questions"),
        ({"train_file": "pure.json"}, 753 + 160,
         "no choice of whole training articles has both answerable and unanswerable "
         "questions and leaves each file an article to train on"),
        ({"train_file": f"{train}[4:6]", "calibration_file": f"{train}[:1]"}, 836,
         f"calibration file {train}[:1] has no unanswerable questions (of its 753)"),
    ]:
        data = preparation.prepare(cfg.replace(**changes), splits=("train",))
        out = capsys.readouterr().out
        assert data.calibration is None and len(data.train.examples) == questions, changes
        assert f"no calibration set ({reason}" in out, out
        if changes["train_file"] != f"{train}[:4]":  # the one where it is true
            assert "the training data has no unanswerable questions" not in out
    # a sample too small for both kinds: said, and the default threshold
    data = preparation.prepare(cfg.replace(train_file=f"{train}[4:6]",
                                           max_calibration_samples=1), splits=("train",))
    assert data.calibration is None
    assert "a seeded sample of 1 questions has no unanswerable questions (of its 1)" in \
        capsys.readouterr().out
