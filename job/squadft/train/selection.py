"""Which weights become the model: evaluations on the held-out articles during training, the
best of them, and when to stop early.

Every choice is made on the held-out articles (the same ones that calibrate the threshold),
never on the dev data, which is scored once, on the chosen weights. The record lives in the
trainer state, so it is saved with every checkpoint (local and remote) and a resumed run
continues it: no evaluation is repeated or lost.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from squadft.evaluate.calibration import Calibration
from squadft.evaluate.uncertainty import Interval, article_bootstrap

HELD_OUT_KEYS = ("f1", "exact", "HasAns_f1", "NoAns_f1")
# a run's held-out questions (articles) and their F1 at the chosen step, to compare runs paired
HELD_OUT_SCORES_FILE = "heldout_scores.json"


@dataclass(frozen=True)
class HeldOutResult:
    """One evaluation on the held-out articles: the calibration (threshold and scores) and,
    for paired comparisons between checkpoints, each question's F1 at that threshold with
    its article, in a fixed question order."""

    calibration: Calibration
    question_f1: list[float] = field(default_factory=list)
    articles: list[str] = field(default_factory=list)


def eval_points(total_steps: int, eval_steps: int, steps_per_epoch: float) -> list[int]:
    """The optimizer steps after which the weights are evaluated: every `eval_steps` steps,
    or (0) at the end of each epoch; always after the last step."""
    if eval_steps > 0:
        points = set(range(eval_steps, total_steps, eval_steps))
    else:
        epochs = math.ceil(total_steps / steps_per_epoch - 1e-9)
        points = {math.ceil(k * steps_per_epoch - 1e-9) for k in range(1, epochs)}
    return sorted(p for p in points | {total_steps} if 0 < p <= total_steps)


def held_out_record(calibration: Calibration, step: int) -> dict[str, Any]:
    """What one evaluation records: F1 and EM at the threshold calibrated on these same
    held-out questions (so the held-out oracle), HasAns/NoAns F1, F1 at threshold 0, the
    "always no answer" F1 and the held-out loss."""
    scores = calibration.scores
    record: dict[str, Any] = {"step": step}
    record.update({key: float(scores[key]) for key in HELD_OUT_KEYS if key in scores})
    record.update(null_threshold=calibration.null_threshold, f1_at_zero=calibration.f1_at_zero,
                  always_no_answer_f1=calibration.always_no_answer_f1)
    if calibration.loss is not None and math.isfinite(calibration.loss):
        record["loss"] = calibration.loss
    return record


@dataclass
class Selection:
    """The held-out evaluations so far and the best of them."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # a history entry, with its calibration
    since_best: int = 0  # evaluations in a row that did not beat the best by min_delta
    stopped_early_at: int | None = None
    articles: list[str] = field(default_factory=list)  # of the held-out questions, in order
    question_f1: dict[str, list[float]] = field(default_factory=dict)  # str(step) -> F1s

    def record(self, result: HeldOutResult | Calibration, step: int, *,
               min_delta: float = 0.0) -> bool:
        """Add an evaluation; True when it is the new best (the first one always is)."""
        if isinstance(result, Calibration):
            result = HeldOutResult(result)
        calibration = result.calibration
        if result.question_f1 and len(result.question_f1) == len(result.articles):
            self.articles = list(result.articles)
            self.question_f1[str(step)] = list(result.question_f1)
        entry = held_out_record(calibration, step)
        self.history.append(entry)
        if self.best is None or entry["f1"] > self.best["f1"] + min_delta:
            self.best = {**entry, "calibration": asdict(calibration)}
            self.since_best = 0
            return True
        self.since_best += 1
        return False

    def should_stop(self, patience: int) -> bool:
        return patience > 0 and self.since_best >= patience

    @property
    def best_step(self) -> int | None:
        return None if self.best is None else int(self.best["step"])

    def best_calibration(self) -> Calibration | None:
        return None if self.best is None else Calibration(**self.best["calibration"])

    def margin(self) -> tuple[int, Interval] | None:
        """(runner-up step, best F1 minus the runner-up's with its paired 95% interval over
        the held-out articles); None with fewer than two evaluations of per-question F1."""
        best = self.best_step
        others = [e for e in self.history if e["step"] != best
                  and str(e["step"]) in self.question_f1]
        if best is None or str(best) not in self.question_f1 or not others:
            return None
        runner_up = max(others, key=lambda e: e["f1"])["step"]
        first, second = self.question_f1[str(best)], self.question_f1[str(runner_up)]
        difference = [a - b for a, b in zip(first, second, strict=True)]
        return runner_up, article_bootstrap(self.articles, {"d": difference})["d"]

    def summary(self, last_step: int) -> dict[str, Any]:
        """What eval_results.json and the model card say about the choice."""
        summary: dict[str, Any] = {
            "chosen_step": self.best_step,
            "last_step": last_step,
            "chosen_on": "F1 on the held-out articles at each checkpoint's own calibrated "
                         "threshold; the dev data took no part",
            "stopped_early_at": self.stopped_early_at,
            "held_out_curve": [{k: v for k, v in e.items() if k in ("step", "f1", "loss")}
                               for e in self.history],
        }
        margin = self.margin()
        if margin is not None:
            runner_up, interval = margin
            summary.update(runner_up_step=runner_up,
                           margin_over_runner_up=[round(interval.value, 4),
                                                  *interval.to_json()],
                           within_noise=interval.low <= 0.0)
        return summary

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Selection:
        return cls(**(data or {}))
