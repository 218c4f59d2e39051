"""`squadft` command line: parse flags into a Config, call a flow, map errors to exits.

A command here only checks how its own options combine (predict's --question/--input), calls
a flow or a report function and prints what it returns; the work is in flows/ and report/.
Every setting is a field of `squadft.config.Config`: the flags of `pull`, `prepare`, `train`,
`demo` and `upload` are generated from those fields, and the settings of `evaluate` and
`predict` take their help and defaults from the same fields (`_config_option`), so Config is
the one source of every setting's default and help (tests/test_cli.py checks every command's
help against it). The options that are not settings belong to their command: inputs and
outputs (--model, --data, --output...), which have no default or one derived from a setting,
and a few with a default of their own, such as `score --na-prob-thresh` (1.0, the official
script's) and `report --errors` (25).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from squadft import __version__
from squadft.config import ENV_PREFIX, Config, field_type
from squadft.console import say, warn
from squadft.errors import EXIT_INTERNAL, SquadftError

app = typer.Typer(
    name="squadft",
    # the commands are named at the end of this module, once they are all registered
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"squadft {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True,
                     help="Print the version and exit."),
    ] = False,
) -> None:
    """Fine-tune extractive QA models on SQuAD 2.0."""


# --- flags generated from Config ------------------------------------------------------------

_CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_FROM_MODEL = "the model's squadft_inference.json, else "


def _config_option(name: str, flag: str | None = None, *, saved: bool = False,
                   panel: str | None = None) -> Any:
    """The option of Config field `name`: that field's type, help, variable and default
    (`saved`: the model's squadft_inference.json, when it has one, comes first)."""
    f = _CONFIG_FIELDS[name]
    tp = field_type(f)
    flag = flag or "--" + name.replace("_", "-")
    shown = "none" if f.default is None else str(f.default)
    help_text = (f"{f.metadata['help']} [env {ENV_PREFIX}{name.upper()}; default: "
                 f"{_FROM_MODEL if saved else ''}{shown}]")
    decls = [f"{flag}/--no-{flag[2:]}"] if tp is bool else [flag]
    option = typer.Option(*decls, help=help_text, show_default=False, rich_help_panel=panel)
    return Annotated[tp | None, option]


def _command(func: Callable[..., None], generated: list[str],
             call: Callable[[dict[str, Any], dict[str, Any]], None],
             options: Callable[[str], Any], target: typer.Typer | None = None,
             **command_kwargs: Any) -> Callable[..., None]:
    """Register `func` (on `target`, default the app) with its own parameters plus one option
    per name in `generated`; `call(overrides, own_kwargs)` runs it, inside handle_errors."""
    hints = typing.get_type_hints(func, include_extras=True)
    own = [p.replace(annotation=hints[name])
           for name, p in inspect.signature(func).parameters.items()
           if name not in ("cfg", "settings")]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                               annotation=options(name)) for name in generated]

    def wrapper(**kwargs: Any) -> None:
        overrides = {k: kwargs.pop(k) for k in generated}
        with handle_errors():
            call(overrides, kwargs)

    wrapper.__signature__ = inspect.Signature(own + added)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in own + added}
    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return (target or app).command(**command_kwargs)(wrapper)


def config_command(
    groups: tuple[str, ...] | None = None, preset: str | None = None, **command_kwargs: Any
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register `func(cfg: Config, **own_params)` as a command taking every Config flag of
    `groups` (all when None)."""
    names = [f.name for f in dataclasses.fields(Config)
             if groups is None or f.metadata["group"] in groups]

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        def call(overrides: dict[str, Any], kwargs: dict[str, Any]) -> None:
            cfg = Config.resolve(overrides, preset=kwargs.pop("preset", None) or preset)
            func(cfg, **kwargs)

        return _command(func, names, call, lambda name: _config_option(
            name, panel=_CONFIG_FIELDS[name].metadata["group"]), **command_kwargs)

    return decorate


# The settings of a command on a saved model; the window and answer settings default to the
# ones saved with it.
MODEL_SETTINGS = ("eval_batch_size", "n_best", "max_answer_length", "null_threshold",
                  "max_seq_length", "doc_stride", "max_query_length", "precision", "device")
_SAVED = {"max_seq_length", "doc_stride", "max_query_length", "n_best", "max_answer_length"}


def model_command(settings: tuple[str, ...] = MODEL_SETTINGS, **command_kwargs: Any
                  ) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register `func(cfg, settings, model, **own_params)` as a command on a saved model
    (--model): cfg = defaults < the model's squadft_inference.json < SQUADFT_* < the flags;
    settings = that file's InferenceSettings (None for a model squadft did not train)."""

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        def call(overrides: dict[str, Any], kwargs: dict[str, Any]) -> None:
            from squadft.evaluate.calibration import InferenceSettings

            saved = InferenceSettings.load(kwargs["model"])
            base = saved.config_values() if saved is not None else None
            func(Config.resolve(overrides, base=base), saved, **kwargs)

        flags = {"eval_batch_size": "--batch-size"}
        return _command(func, list(settings), call, lambda name: _config_option(
            name, flags.get(name), saved=name in _SAVED), **command_kwargs)

    return decorate


class handle_errors:
    """Known errors → one line on stderr and their exit code; never a raw traceback."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, typer.Exit | typer.Abort | SystemExit):
            return False
        if isinstance(exc, KeyboardInterrupt):
            typer.echo("squadft: interrupted", err=True)
            raise SystemExit(130)
        if os.environ.get("SQUADFT_DEBUG"):
            return False
        if isinstance(exc, SquadftError):
            typer.echo(f"squadft: error: {exc}", err=True)
            raise SystemExit(exc.exit_code)
        if isinstance(exc, Exception):
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            typer.echo(
                f"squadft: internal error: {type(exc).__name__}: {message} "
                "(set SQUADFT_DEBUG=1 for the traceback)",
                err=True,
            )
            raise SystemExit(EXIT_INTERNAL)
        return False


PresetOption = Annotated[
    str | None,
    typer.Option("--preset",
                 help="Start from a named preset (demo, minilm-cpu) before env and flags."),
]


# --- commands -------------------------------------------------------------------------------

@config_command(
    groups=("data", "storage"),
    help="Download SQuAD (train and dev) into the cache and verify it.",
)
def pull(cfg: Config, preset: PresetOption = None) -> None:
    from squadft.flows import preparation

    preparation.pull(cfg)


@config_command(
    groups=("data", "features", "model", "storage"),
    help="Pull, parse and tokenize SQuAD into cached sliding-window features; print counts.",
)
def prepare(cfg: Config, preset: PresetOption = None) -> None:
    from squadft.flows import preparation

    preparation.prepare(cfg)


@config_command(help="Run the whole job: pull, prepare, train, save, evaluate, upload.")
def train(cfg: Config, preset: PresetOption = None) -> None:
    from squadft.flows import training

    training.train(cfg)


@config_command(
    preset="demo",
    help="Offline demo: a bundled real SQuAD 2.0 sample and a small pretrained model "
    "(all-MiniLM-L6-v2), a few minutes on 2 CPU cores. Same as `train --preset demo`.",
)
def demo(cfg: Config) -> None:
    from squadft.flows import training

    training.train(cfg)


# --- evaluation commands: evaluate, score, predict, report ----------------------------------

ModelDirOption = Annotated[
    str, typer.Option("--model", help="A save_pretrained directory (model + tokenizer).")
]


@model_command(MODEL_SETTINGS + ("max_eval_samples",),
               help="Evaluate a saved model on a SQuAD file: write predictions.json, "
               "na_probs.json, nbest_predictions.json and eval_results.json; print EM/F1 at "
               "the model's calibrated no-answer threshold, the \"always no answer\" baseline "
               "and the oracle best_*. With no flags it reproduces the evaluation that ran "
               "after training.")
def evaluate(
    cfg: Config,
    settings: Any,
    model: ModelDirOption,
    data: Annotated[str, typer.Option(
        "--data", help="SQuAD .json or .json.gz to score on; PATH[A:B] scores articles A "
        "to B-1 only (an existing PATH is taken as written; a backslash makes a , [ ] or \\ "
        "part of PATH).")],
    output_dir: Annotated[
        str | None,
        typer.Option("--output-dir", help="Where the outputs go [default: evaluate/ in the run "
                     "directory that SQUADFT_OUTPUT_DIR names (train's --output-dir), else "
                     f"{_CONFIG_FIELDS['output_dir'].default}/evaluate in the current "
                     "directory; never beside --model]."),
    ] = None,
) -> None:
    from squadft.evaluate.scoring import format_metrics
    from squadft.flows.evaluation import run_evaluation

    target = output_dir or os.path.join(cfg.output_dir, "evaluate")
    run = run_evaluation(cfg, model_dir=model, data_path=data, output_dir=target,
                         settings=settings)
    if run.is_main:
        for note in run.notes:
            say(note, err=True)
        for warning in run.warnings:
            warn(warning)
        typer.echo(format_metrics(run.metrics))
        typer.echo(f"outputs in {run.output_dir}")


@app.command(help="Score an existing predictions.json against a SQuAD file, like the official "
             "evaluate-v2.0.py; prints the results as JSON.")
def score(
    predictions: Annotated[str, typer.Argument(help="predictions.json: {id: answer text}.")],
    data: Annotated[str, typer.Option("--data", help="SQuAD .json or .json.gz with the answers.")],
    na_probs: Annotated[
        str | None, typer.Option("--na-probs", help="na_probs.json: {id: no-answer probability}.")
    ] = None,
    na_prob_thresh: Annotated[
        float, typer.Option("--na-prob-thresh", help="Predict no answer above this probability.")
    ] = 1.0,
) -> None:
    with handle_errors():
        import json

        from squadft.evaluate.scoring import score_files

        result = score_files(predictions, data, na_probs_path=na_probs,
                             na_prob_thresh=na_prob_thresh)
        for warning in result.warnings:
            warn(warning)
        typer.echo(json.dumps(result.metrics, indent=2))


@model_command(help="Answer questions with a saved model: one --question/--context pair, "
               "or --input FILE: JSON lines ({\"id\", \"question\", \"context\"} per line; "
               "without an id, line-N) or a SQuAD .json/.json.gz file, answered in chunks of "
               "16 x --batch-size questions (bounded memory), across ranks under torchrun. "
               "Writes JSON lines (to stdout unless --output): id, answer (\"\" when the "
               "model finds no answer), decision (answered/no_answer), score, null_score, "
               "null_score_diff, no_answer_probability, best_span, null_threshold. A "
               "--question/--context pair's id is a digest of the two, the same on every run.")
def predict(
    cfg: Config,
    settings: Any,
    model: ModelDirOption,
    question: Annotated[str | None, typer.Option("--question", help="The question.")] = None,
    context: Annotated[
        str | None, typer.Option("--context", help="The passage holding the answer.")
    ] = None,
    input: Annotated[
        str | None, typer.Option("--input", help="JSON-lines or SQuAD file of questions "
                                 "(batch mode).")
    ] = None,
    output: Annotated[
        str | None, typer.Option("--output", help="Write the JSON lines here, not to stdout "
                                 "(whole or not at all: a temp file renamed at the end).")
    ] = None,
    on_bad_line: Annotated[
        str, typer.Option("--on-bad-line", help="A malformed --input line (bad JSON, a "
                          "missing/empty/wrong-typed field, a repeated id): 'stop' ends the "
                          "run with exit 3 naming the line and writes nothing, so a broken "
                          "file is never mistaken for a complete answer set; 'skip' answers "
                          "the other lines and lists the skipped ones on stderr.")
    ] = "stop",
) -> None:
    from squadft.errors import ConfigError
    from squadft.flows import prediction

    if (input is None) == (question is None and context is None):
        raise ConfigError("give either --input FILE or both --question and --context")
    if input is None and (question is None or context is None):
        raise ConfigError("--question and --context go together")
    if input is not None:
        questions, total = prediction.read_questions(input)
    else:
        questions, total = iter([prediction.question_from_flags(question or "",
                                                                context or "")]), None
    run = prediction.run_prediction(cfg, model_dir=model, questions=questions, total=total,
                                    settings=settings, output_path=output,
                                    on_bad_line=on_bad_line, source=f"questions {input}")
    if run.is_main and run.skipped:
        warn(prediction.skipped_summary(f"questions {input}", run.skipped))


@app.command(name="report", help="Write a self-contained HTML report of one or more run "
             "directories (figures embedded, no network needed to read it): training loss, "
             "learning rate, grad norm and throughput; EM/F1 against the no-answer threshold "
             "with the threshold in effect and the oracle marked; HasAns/NoAns against "
             "\"always no answer\"; F1 by question word and by answer length; the worst "
             "errors. Several runs: curves overlaid, metrics side by side. Also works on a "
             "run still training or not evaluated yet. Writes RUN_DIR/report.html (with "
             "several runs: into the first one) unless --output says where. A sweep "
             "directory (given alone): its trials ranked by held-out F1, the chosen one "
             "marked, then its done trials as runs.")
def report_command(
    run_dirs: Annotated[list[str], typer.Argument(
        help="Run directories (output_dir of `squadft train`), or one sweep directory "
        "(`squadft sweep plan`).", metavar="RUN_DIR")],
    output: Annotated[str | None, typer.Option(
        "--output", help="Write the HTML here [default: report.html in the first RUN_DIR].")
    ] = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="The evaluated SQuAD file (PATH or PATH[A:B]; without a slice the "
        "run's own applies), for the per-question figures of every RUN_DIR [default: the "
        "run's dev_file under its file:// source or in its download cache].")] = None,
    errors: Annotated[int, typer.Option(
        "--errors", help="How many of the worst errors of each kind (answerable questions "
        "missed or answered wrong; unanswerable questions given an answer) to list per run.")
    ] = 25,
    thresholds: Annotated[str | None, typer.Option(
        "--thresholds", help="Also print per run a markdown table (threshold | EM | F1 | "
        "HasAns F1 | NoAns F1) at these no-answer thresholds, comma-separated (e.g. "
        "\"-14,-12,-10,-8,0\"), plus the threshold in effect and always answer.")] = None,
) -> None:
    with handle_errors():
        from squadft.errors import DataError
        from squadft.report.page import write_report
        from squadft.report.tables import parse_thresholds, run_threshold_markdown

        wanted = parse_thresholds(thresholds) if thresholds is not None else None
        path, runs = write_report(run_dirs, output=output, data=data, errors=errors)
        for run in runs:
            for note in run.notes:
                typer.echo(f"squadft: {run.label}: {note}", err=True)
        typer.echo(f"report written to {path}")
        if wanted is not None:
            tables = [(run, run_threshold_markdown(run, wanted)) for run in runs]
            for run, table in tables:
                if table is None:
                    typer.echo(f"squadft: {run.label}: no threshold curve, so no --thresholds "
                               "table", err=True)
                else:
                    typer.echo("\n" + table, nl=False)
            if all(table is None for _, table in tables):
                raise DataError("--thresholds: no run has a threshold curve (it needs "
                                "eval_results.json, nbest_predictions.json and the dev data)")

# --- storage commands: upload ----------------------------------------------------------------
@config_command(
    groups=("storage",),
    help="Upload a directory (a checkpoint, final/, any folder) to s3://bucket/prefix: checks "
    "access first, sha256 per file, verified after upload, manifest.json written last.",
)
def upload(
    cfg: Config,
    directory: Annotated[str, typer.Argument(help="Local directory to upload.")],
    destination: Annotated[str, typer.Argument(help="s3://bucket/prefix to upload into.")],
) -> None:
    from squadft.storage.s3 import upload_command

    typer.echo(upload_command(cfg, directory, destination))



# --- sweep: trials on the cluster's own scheduler --------------------------------------------
sweep_app = typer.Typer(
    name="sweep", no_args_is_help=True, rich_markup_mode=None,
    help="Hyper-parameter sweeps on the cluster's own scheduler: `plan` writes the trials, a "
    "Slurm array script and a Kubernetes Indexed Job; each array task or pod runs `train` on "
    "its trial; `status` ranks the trials by held-out F1.")
app.add_typer(sweep_app)
SweepDir = Annotated[str, typer.Argument(
    help="The sweep directory: sweep.json, and each trial's run directory trial-NNN.",
    metavar="SWEEP_DIR")]


def sweep_plan(
    sweep_dir: SweepDir,
    grid: Annotated[list[str] | None, typer.Option(
        "--grid", help="NAME=V1,V2,...: a setting (learning_rate or learning-rate) and its "
        "values; several --grid make their cartesian product (a value holding a comma needs "
        "--trials).")] = None,
    trials: Annotated[str | None, typer.Option(
        "--trials", help="A JSON list (or, named .yaml/.yml, a YAML list) of {setting: value} "
        "objects, one per trial, instead of --grid.")] = None,
    max_parallel: Annotated[int | None, typer.Option(
        "--max-parallel", help="Trials running at once: %N of the Slurm array, parallelism "
        "of the Indexed Job [default: all].")] = None,
    image: Annotated[str, typer.Option(
        "--image", help="The Indexed Job's image.")] = f"squadft:{__version__}",
    train_script: Annotated[str | None, typer.Option(
        "--train-script", help="slurm/train.sh as the cluster sees it, which each array task "
        "runs [default: this checkout's].")] = None,
    preset: PresetOption = None,
) -> None:
    """Plan a sweep: the trials of --grid or --trials over the settings given here."""


def _sweep_plan_call(overrides: dict[str, Any], kwargs: dict[str, Any]) -> None:
    from squadft.flows import sweep

    planned = sweep.plan(kwargs["sweep_dir"], overrides, preset=kwargs["preset"],
                         grid=kwargs["grid"] or [], trials_file=kwargs["trials"],
                         max_parallel=kwargs["max_parallel"], image=kwargs["image"],
                         train_script=kwargs["train_script"])
    for line in planned.summary():
        say(line)


_command(sweep_plan, [name for name in _CONFIG_FIELDS if name != "output_dir"],
         _sweep_plan_call, lambda name: _config_option(
             name, panel=_CONFIG_FIELDS[name].metadata["group"]), target=sweep_app,
         name="plan", help="Write a sweep into SWEEP_DIR: sweep.json (every trial's settings, "
         "checked now; the settings given here and SQUADFT_* are shared by all), sweep.sbatch "
         "(a Slurm array, one task per trial, each preemptible and requeued like "
         "slurm/train.sh) and sweep-job.yaml (a Kubernetes Indexed Job).")


@sweep_app.command("train", help="Train the trial that SLURM_ARRAY_TASK_ID or "
                   "JOB_COMPLETION_INDEX names, in SWEEP_DIR/trial-NNN (and <s3-uri>/trial-NNN), "
                   "as `squadft train` would; record its state for `status`.")
def sweep_train(
    sweep_dir: SweepDir,
    plan: Annotated[str | None, typer.Option(
        "--plan", help="The sweep.json to read, when it is not in SWEEP_DIR (a Kubernetes "
        "ConfigMap); copied there.")] = None,
) -> None:
    with handle_errors():
        from squadft.flows import sweep

        sweep.run_trial(sweep_dir, plan)


@sweep_app.command("status", help="Rank the trials by held-out F1 (at the calibrated "
                   "threshold, on articles held out of training), mark the chosen one and show "
                   "its dev F1 only; trials running, preempted or failed are shown as such.")
def sweep_status(sweep_dir: SweepDir) -> None:
    with handle_errors():
        from squadft.flows import sweep

        typer.echo(sweep.format_status(sweep.rank_trials(sweep_dir)))


def _command_names() -> list[str]:
    """Every registered command and command group, in the order --help lists them."""
    commands = [c.name or typer.main.get_command_name(c.callback.__name__)
                for c in app.registered_commands if c.callback is not None]
    return commands + [str(g.typer_instance.info.name) for g in app.registered_groups]


app.info.help = (f"Fine-tune extractive question-answering models on SQuAD 2.0. Commands: "
                 f"{', '.join(_command_names())}. Every option also reads SQUADFT_<OPTION> "
                 "from the environment.")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("squadft: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
