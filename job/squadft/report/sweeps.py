"""A sweep directory (`squadft sweep plan`) on the page: the ranking of its trials by held-out
F1 (`squadft.flows.sweep.rank_trials`), the chosen one marked, and its done trials read as runs
labelled by their settings. A trial file that cannot be read is a note, not an error."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from squadft.errors import ConfigError, SquadftError
from squadft.evaluate.calibration import INFERENCE_FILE
from squadft.flows.sweep import PLAN_FILE, TrialRow, load_plan, rank_trials, show
from squadft.report.runs import Run, is_number, load_run


@dataclass
class Sweep:
    path: Path
    rows: list[TrialRow] | None  # None: the trials could not be ranked (see the notes)
    notes: list[str] = field(default_factory=list)


def is_sweep(directory: str | Path) -> bool:
    return (Path(directory) / PLAN_FILE).is_file()


def trial_label(row: TrialRow) -> str:
    """"trial-001 learning_rate=3e-05": the trial and its own settings."""
    return " ".join([row.name, *(f"{key}={show(value)}" for key, value in row.settings.items())])


def load_sweep(sweep_dir: str | Path, *, data: str | None = None) -> tuple[Sweep, list[Run]]:
    """The ranking and the done trials as runs. ConfigError/DataError when sweep.json is no
    plan; a trial whose files cannot be read is a note."""
    path = Path(sweep_dir)
    load_plan(path)
    sweep = Sweep(path, None)
    try:
        sweep.rows = rank_trials(path)
    except (SquadftError, AttributeError, KeyError, TypeError, ValueError) as exc:
        why = str(exc) if isinstance(exc, SquadftError) else (
            f"a trial file is not as squadft writes it: {type(exc).__name__}: {exc}")
        sweep.notes.append(f"the trials cannot be ranked ({why}); the trial directories that "
                           "hold a run are reported below, unranked")
    if sweep.rows is None:
        trials = [(p.name, p.name) for p in sorted(path.glob("trial-*")) if p.is_dir()]
    else:
        trials = [(row.name, trial_label(row)) for row in sweep.rows if row.state == "done"]
    runs = []
    for name, label in trials:
        try:
            runs.append(load_run(path / name, data=data, label=label))
        except ConfigError as exc:
            if sweep.rows is not None:  # (unranked: a trial not started has no run yet)
                sweep.notes.append(f"{name} is done but not reported: {exc}")
    return sweep, runs


def _state(row: TrialRow) -> str:
    return row.state if row.exit_code in (None, 0) else f"{row.state} (exit {row.exit_code})"


def _score(value: object) -> str:
    return "—" if value is None else f"{value:.2f}" if is_number(value) else str(value)


def sweep_html(sweep: Sweep) -> str:
    """The "Sweep" section: the ranking table and what it means."""
    parts = ['<h2 id="sweep">Sweep</h2>',
             *(f'<div class="note">{html.escape(note)}</div>' for note in sweep.notes)]
    if sweep.rows is None:
        return "".join(parts)
    rows = sweep.rows
    keys = list(dict.fromkeys(key for row in rows for key in row.settings))
    margins = any(row.margin is not None for row in rows)
    header = ["", "rank", "trial", "state", "held-out F1",
              *(["chosen minus this [95%]"] if margins else []), "dev F1", *keys]
    parts.append('<table class="sweep"><tr>' + "".join(
        f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        margin = "—" if row.margin is None else (
            f"{row.margin[0]:+.2f} [{row.margin[1]:+.2f}, {row.margin[2]:+.2f}]")
        cells = [("", "★ chosen" if row.chosen else ""), ("num", str(row.rank or "—")),
                 ("", row.name), ("", _state(row)), ("num", _score(row.heldout_f1)),
                 *([("num", margin)] if margins else []),
                 ("num", _score(row.dev_f1) if row.chosen else "—"),
                 *(("", show(row.settings[k]) if k in row.settings else "") for k in keys)]
        parts.append(('<tr class="chosen">' if row.chosen else "<tr>") + "".join(
            f'<td class="{css}">{html.escape(text)}</td>' if css else
            f"<td>{html.escape(text)}</td>" for css, text in cells) + "</tr>")
    parts.append("</table>")
    parts += [f"<p>{html.escape(text)}</p>" for text in _sweep_sentences(rows, margins)]
    return "".join(parts)


def _sweep_sentences(rows: list[TrialRow], margins: bool) -> list[str]:
    chosen = next((row for row in rows if row.chosen), None)
    if chosen is None:
        return ["No trial is done with a held-out F1 yet: none is chosen."]
    dev = (f"its dev F1, {_score(chosen.dev_f1)}," if chosen.dev_f1 is not None
           else "its dev F1 (not there yet: no eval_results.json)")
    out = [f"★ Chosen: {trial_label(chosen)}, the highest held-out F1 (the F1 at the trial's "
           "calibrated no-answer threshold on training articles held out of training, "
           f"{INFERENCE_FILE}). The selection used only those held-out articles and never saw "
           f"dev, so {dev} is the one honest report of the sweep; the other trials' dev "
           "scores are not shown, since choosing by them would tune on dev."]
    if margins:
        out.append("Chosen minus this: the chosen trial's held-out F1 minus this trial's, with "
                   "its 95% interval from a bootstrap over the held-out articles, paired "
                   "question by question (— where the two were not scored on the same "
                   "questions).")
    close = [row.name for row in rows if row.margin is not None and row.margin[1] <= 0.0]
    if close:
        out.append(f"The chosen trial's lead over {', '.join(close)} is within the noise: the "
                   "95% interval of the difference reaches 0, so it is not a clear winner.")
    return out
