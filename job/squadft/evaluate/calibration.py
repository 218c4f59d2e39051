"""The no-answer threshold: calibrated on held-out questions, saved with the model, and always
reported with how it was chosen.

SQuAD 2.0 scores hinge on one number, the threshold on `null score - best span score` above
which a question is answered with "". Tuned on the questions being reported, it inflates the
score (that is the official script's `best_f1`, an oracle). Here the threshold is fixed before
the reported questions are seen: calibrated on training articles held out of training (or a
calibration file), given with --null-threshold, or 0; `final/squadft_inference.json` carries it
together with the tokenization and decoding settings the model was evaluated with.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from squadft.config import Config
from squadft.errors import ConfigError, DataError
from squadft.evaluate.postprocess import PostprocessResult, tune_null_threshold
from squadft.evaluate.squad_metrics import evaluate_predictions
from squadft.io import atomic_write_json

INFERENCE_FILE = "squadft_inference.json"
INFERENCE_FORMAT = "squadft-inference/1"
# What `evaluate` and `predict` take from the model directory unless a flag says otherwise.
INFERENCE_FIELDS = ("max_seq_length", "doc_stride", "max_query_length", "n_best",
                    "max_answer_length")
SCORE_KEYS = ("exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
              "NoAns_exact", "NoAns_f1", "NoAns_total")


@dataclass(frozen=True)
class Calibration:
    """A threshold tuned for F1 on questions the model did not train on, with its scores."""

    null_threshold: float
    source: str  # e.g. "3 training articles held out of training"
    questions: int
    unanswerable: int
    scores: dict[str, float | int]  # official keys at null_threshold, on the calibration set
    f1_at_zero: float  # F1 at threshold 0, for comparison
    always_no_answer_f1: float
    # how many share an id or a paragraph with the training questions (None: not recorded)
    overlap_with_train: int | None = None
    loss: float | None = None  # the QA loss of the held-out windows
    step: int | None = None  # the optimizer step of the weights calibrated

    def describe(self) -> str:
        if self.overlap_with_train:
            return (f"calibrated on {self.questions} questions, {self._overlap()} "
                    f"({self.source})")
        return f"calibrated on {self.questions} held-out questions ({self.source})"

    def _overlap(self) -> str:
        return (f"{self.overlap_with_train} of them share an id or a paragraph with the "
                "training data")

    def summary(self) -> str:
        s = self.scores
        parts = [f"calibration: null threshold {self.null_threshold:.4g} from "
                 f"{self.questions} questions ({self.unanswerable} unanswerable; {self.source}"
                 + (f"; {self._overlap()})" if self.overlap_with_train else ")"),
                 f"EM {s['exact']:.2f}, F1 {s['f1']:.2f} there"]
        if "HasAns_f1" in s:
            parts.append(f"HasAns F1 {s['HasAns_f1']:.2f}")
        if "NoAns_f1" in s:
            parts.append(f"NoAns F1 {s['NoAns_f1']:.2f}")
        parts.append(f"vs F1 {self.f1_at_zero:.2f} at threshold 0 and "
                     f"{self.always_no_answer_f1:.2f} for always no answer")
        return "; ".join(parts[:1]) + ": " + ", ".join(parts[1:])


def calibrate(result: PostprocessResult, gold: Mapping[str, list[str]], *,
              source: str, overlap_with_train: int | None = None) -> Calibration:
    """Tune the null threshold for F1 on held-out questions (`gold`: id -> answers, [] for
    unanswerable; `overlap_with_train` of them not really held out). Pure: the scores are
    those of `result` on `gold` only."""
    if not gold:
        raise DataError("calibration set is empty")
    tuned = tune_null_threshold(result, gold)
    at_zero = evaluate_predictions(gold, {q: result.predictions_at(0.0)[q] for q in gold})
    unanswerable = sum(1 for answers in gold.values() if not answers)
    return Calibration(
        null_threshold=float(tuned.null_threshold), source=source, questions=len(gold),
        unanswerable=unanswerable,
        scores={k: tuned.metrics[k] for k in SCORE_KEYS if k in tuned.metrics},
        f1_at_zero=float(at_zero["f1"]),
        always_no_answer_f1=100.0 * unanswerable / len(gold),
        overlap_with_train=overlap_with_train,
    )


@dataclass(frozen=True)
class NullThreshold:
    """The threshold in effect and, in words, how it was chosen."""

    value: float
    kind: str  # "calibrated", "given" or "default"
    source: str
    calibration_overlap_with_train: int | None = None  # calibrated: Calibration's

    def describe(self) -> str:
        return f"null threshold {self.value:.4g} ({self.source})"


def resolve_null_threshold(setting: str | float, calibration: Calibration | None
                           ) -> NullThreshold:
    """--null-threshold: a number is used as given; "auto" is the calibrated threshold, or 0
    when there is none. Never a value tuned on the data being evaluated."""
    if isinstance(setting, str) and setting.strip().lower() == "auto":
        if calibration is not None:
            return NullThreshold(calibration.null_threshold, "calibrated",
                                 calibration.describe(), calibration.overlap_with_train)
        return NullThreshold(0.0, "default", "no calibrated threshold with this model: 0")
    try:
        value = float(setting)
    except ValueError:
        raise ConfigError(f"null_threshold must be 'auto' or a number (got {setting!r})"
                          ) from None
    if not math.isfinite(value):
        raise ConfigError(f"null_threshold must be finite (got {setting!r})")
    return NullThreshold(value, "given", "given with --null-threshold")


@dataclass(frozen=True)
class InferenceSettings:
    """What `final/` needs besides its weights to reproduce the evaluation after training."""

    max_seq_length: int
    doc_stride: int
    max_query_length: int
    n_best: int
    max_answer_length: int
    calibration: Calibration | None = None

    @classmethod
    def from_config(cls, cfg: Config, calibration: Calibration | None) -> InferenceSettings:
        return cls(**{name: getattr(cfg, name) for name in INFERENCE_FIELDS},
                   calibration=calibration)

    def config_values(self) -> dict[str, Any]:
        """The Config fields these settings fix (a layer under env and flags)."""
        return {name: getattr(self, name) for name in INFERENCE_FIELDS}

    def to_json(self) -> dict[str, Any]:
        data = {"format": INFERENCE_FORMAT, **self.config_values(),
                "null_threshold": None, "calibration": None}
        if self.calibration is not None:
            data["null_threshold"] = self.calibration.null_threshold
            data["calibration"] = asdict(self.calibration)
        return data

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / INFERENCE_FILE
        atomic_write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> InferenceSettings | None:
        """The settings saved in a model directory; None when it has none (a model not
        trained by squadft, or by an older version)."""
        path = Path(directory) / INFERENCE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable inference settings ({exc})") from None
        try:
            if data.get("format") != INFERENCE_FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            values = {name: int(data[name]) for name in INFERENCE_FIELDS}
            calibration = None
            if data.get("calibration") is not None:
                raw = data["calibration"]
                calibration = Calibration(**{**raw, "null_threshold": _finite(
                    raw["null_threshold"], "calibration.null_threshold")})
            top = data.get("null_threshold")
            saved = calibration.null_threshold if calibration is not None else None
            if (top if top is None else _finite(top, "null_threshold")) != saved:
                raise _Bad(f"null_threshold ({json.dumps(top)}) differs from "
                           f"calibration.null_threshold ({json.dumps(saved)}): edited in one "
                           "place only?")
        except _Bad as exc:
            raise DataError(f"{path}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{path}: malformed inference settings ({exc})") from None
        return cls(**values, calibration=calibration)


class _Bad(ValueError):
    """A value of the inference settings that would be used wrongly, named by its key."""


def _finite(value: Any, key: str) -> float:
    """A threshold from the file: a JSON number and finite (NaN would answer every question,
    a string is a hand edit), else _Bad naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Bad(f"{key} must be a finite number (got {json.dumps(value)})")
    return float(value)
