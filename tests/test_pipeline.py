from __future__ import annotations

import json
from pathlib import Path

import pytest
from squadft import pipeline
from squadft.cli import app
from squadft.config import Config
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
    fetched = pipeline.pull(cfg, verbose=True)
    first = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].strip() for line in first] == ["train", "dev"]
    assert fetched["train"].sha256 in first[0] and first[0].endswith("downloaded)")
    assert f"{fetched['dev'].size:,} bytes" in first[1]
    pipeline.pull(cfg, verbose=True)
    assert all(line.endswith("cached)") for line in capsys.readouterr().out.splitlines())


def test_prepare_limits_samples_detects_v2_and_reuses_cached_features(
    settings: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = Config(**settings)
    data = pipeline.prepare(cfg)
    out = capsys.readouterr().out
    assert data.train is not None and data.dev is not None
    assert len(data.train.examples) == 60 and len(data.dev.examples) == 20
    assert data.is_v2 and "data is SQuAD 2.0" in out
    assert "train features (first 60 questions, built and cached)" in out
    assert "dev: " in out and "4449 examples" in out  # the parse report of the whole file
    assert not data.train.cache_hit
    again = pipeline.prepare(cfg)
    assert again.train.cache_hit and again.dev.cache_hit
    assert "cache hit" in capsys.readouterr().out
    assert (again.train.features.input_ids == data.train.features.input_ids).all()
    other = pipeline.prepare(cfg.replace(max_train_samples=30), splits=("train",),
                             verbose=False)
    assert not other.train.cache_hit and len(other.train.examples) == 30


@pytest.mark.parametrize("flags, code, message", [
    (["--learning-rate", "-1"], 2, "learning_rate must be > 0"),
    (["--batch-size", "0"], 2, "batch_size must be > 0"),
    (["--doc-stride", "128", "--max-seq-length", "128"], 2, "doc_stride (128) must be <"),
    (["--precision", "fp8"], 2, "precision must be one of"),
    (["--model", "no-such-org/no-such-model"], 6, "pass a local save_pretrained directory"),
])
def test_bad_input_is_one_line_and_an_exit_code(settings: dict, flags: list[str], code: int,
                                                message: str) -> None:
    result = CliRunner().invoke(app, ["train", *cli_flags(settings), *flags])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unwritable_output_dir_fails_before_any_work(settings: dict, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = CliRunner().invoke(
        app, ["train", *cli_flags({**settings, "output_dir": str(blocker / "run")})])
    assert result.exit_code == 5 and "cannot write" in result.output
    assert not (tmp_path / "cache").exists()  # nothing was downloaded first


def test_train_writes_the_run_directory(settings: dict) -> None:
    result = pipeline.train(Config(**{**settings, "max_steps": 3, "do_eval": True}))
    out = Path(settings["output_dir"])
    assert result.steps == 3 and Path(result.final_dir) == out / "final"
    for name in ("squadft_config.json", "metrics.jsonl", "train_results.json",
                 "eval_results.json", "predictions.json", "checkpoint-3/manifest.json",
                 "final/manifest.json", "final/model.safetensors", "final/tokenizer.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "squadft_config.json").read_text())["max_steps"] == 3
