from __future__ import annotations

import json

import pytest
from squadft.config import OFFICIAL_SQUAD_BASE_URL, Config, redact_url
from squadft.errors import ConfigError


def test_defaults_are_the_real_job() -> None:
    cfg = Config.resolve(env={})
    assert cfg.source == OFFICIAL_SQUAD_BASE_URL
    assert cfg.train_file == "train-v2.0.json" and cfg.dev_file == "dev-v2.0.json"
    assert cfg.model == "distilbert-base-uncased"
    assert (cfg.max_seq_length, cfg.doc_stride) == (384, 128)
    assert (cfg.n_best, cfg.max_answer_length) == (20, 30)


def test_precedence_default_preset_env_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "SQUADFT_BATCH_SIZE": "7",
        "SQUADFT_LENGTH_BUCKETING": "false",
        "SQUADFT_MAX_STEPS": "none",
    }
    cfg = Config.resolve({"learning_rate": 1e-3}, env=env, preset="demo")
    assert cfg.batch_size == 7  # env beats preset (demo says 16)
    assert cfg.learning_rate == 1e-3  # flag beats preset
    assert cfg.max_seq_length == 192  # preset beats default
    assert cfg.length_bucketing is False and cfg.max_steps is None
    cfg = Config.resolve({"batch_size": 3}, env=env)
    assert cfg.batch_size == 3  # flag beats env


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"learning_rate": -1.0}, "learning_rate must be > 0"),
        ({"batch_size": 0}, "batch_size must be > 0"),
        ({"doc_stride": 384}, "doc_stride (384) must be < max_seq_length (384)"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"null_threshold": "high"}, "null_threshold must be 'auto' or a number"),
        ({"s3_uri": "http://bucket"}, "s3_uri must start with s3://"),
        ({"train_sha256": "abc"}, "train_sha256 must be 64 hex digits"),
    ],
)
def test_bad_values_are_one_line_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.resolve(overrides, env={})
    assert message in str(info.value) and "\n" not in str(info.value)


# Every float option must be a finite number: inf or nan passes a "> 0" or ">= 0" check and
# fails only after hours of training (--null-threshold inf failed at evaluation).
@pytest.mark.parametrize("name", ["null_threshold", "learning_rate", "weight_decay",
                                  "adam_epsilon", "warmup_ratio", "max_grad_norm",
                                  "answerability_loss_weight", "epochs", "calibration_fraction",
                                  "s3_upload_deadline"])
@pytest.mark.parametrize("raw", ["inf", "-inf", "1e309", "nan", "-nan", "Infinity"])
def test_float_options_must_be_finite(name: str, raw: str) -> None:
    value = raw if name == "null_threshold" else float(raw)
    with pytest.raises(ConfigError) as info:
        Config.resolve({name: value}, env={})
    assert f"{name} must be a finite number (got {value!r})" in str(info.value)
    assert "\n" not in str(info.value)
    # the same value from the environment
    with pytest.raises(ConfigError, match=f"{name} must be a finite number"):
        Config.resolve(env={f"SQUADFT_{name.upper()}": raw})


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="SQUADFT_EPOCHS='two'"):
        Config.resolve(env={"SQUADFT_EPOCHS": "two"})


def test_unknown_squadft_variables_are_warned_about_with_the_likely_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = Config.resolve(env={"SQUADFT_BATCHSIZE": "8", "SQUADFT_FROBNICATE": "1",
                              "SQUADFT_LAUNCHER": "srun", "SQUADFT_EPOCHS": "2"})
    assert cfg.batch_size == Config().batch_size and cfg.epochs == 2  # the typo changes nothing
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "squadft: warning: SQUADFT_BATCHSIZE is not a squadft setting (did you mean "
        "SQUADFT_BATCH_SIZE?); ignored",
        "squadft: warning: SQUADFT_FROBNICATE is not a squadft setting; ignored",
    ]  # SQUADFT_LAUNCHER is slurm/train.sh's: no warning
    Config.resolve(env={"SQUADFT_BATCH_SIZE": "8", "SQUADFT_DEBUG": "1"})
    assert capsys.readouterr().err == ""


def test_saved_config_has_no_secrets(tmp_path) -> None:
    cfg = Config.resolve(
        {"source": "https://user:hunter2@example.com/squad/?X-Amz-Signature=deadbeef&v=1",
         "s3_endpoint_url": "http://key:secret@127.0.0.1:9000"},
        env={},
    )
    path = cfg.save(tmp_path)
    text = path.read_text()
    assert "hunter2" not in text and "deadbeef" not in text and "secret" not in text
    data = json.loads(text)
    assert data["source"] == "https://***@example.com/squad/?X-Amz-Signature=***&v=1"
    assert Config.load(path).batch_size == cfg.batch_size


def test_redact_url_leaves_plain_values() -> None:
    assert redact_url("distilbert-base-uncased") == "distilbert-base-uncased"
    assert redact_url("s3://bucket/prefix") == "s3://bucket/prefix"


def test_redact_url_keeps_uris_without_credentials_byte_for_byte() -> None:
    # sqlite:////abs and sqlite:///rel have an empty authority: urlunsplit would drop a "//"
    for uri in ("sqlite:////data/mlflow.db", "sqlite:///mlruns.db", "file:///tmp/x",
                "postgresql+psycopg2://host:5432/db", "https://host/path?", "mlruns"):
        assert redact_url(uri) == uri


def test_redact_url_still_removes_credentials_from_database_uris() -> None:
    assert redact_url("postgres://user:pass@host/db") == "postgres://***@host/db"
    assert redact_url("mysql+pymysql://u:p%40ss@db.internal:3306/mlflow?password=x&ssl=1") \
        == "mysql+pymysql://***@db.internal:3306/mlflow?password=***&ssl=1"
    assert redact_url("sqlite:////data/mlflow.db?token=abc") == "sqlite:////data/mlflow.db?token=***"


def test_readme_configuration_table_is_current() -> None:
    from pathlib import Path

    from squadft.config import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("<!-- config-table:start -->") + len("<!-- config-table:start -->")
    end = readme.index("<!-- config-table:end -->")
    assert readme[start:end].strip() == markdown_table().strip(), (
        "README configuration table is stale: regenerate it from squadft.config.markdown_table()"
    )
