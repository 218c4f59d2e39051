"""`squadft` command line: parse flags into a Config, call the pipeline, map errors to exits.

This module holds no logic. The flags of `pull`, `prepare`, `train` and `demo` are generated
from the fields of `squadft.config.Config`, so the dataclass stays the single source of
defaults and help text.
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
from squadft.errors import EXIT_INTERNAL, SquadftError

app = typer.Typer(
    name="squadft",
    help="Fine-tune extractive question-answering models on SQuAD 2.0 (pull, prepare, train, "
    "evaluate, predict, upload). Every option also reads SQUADFT_<OPTION> from the environment.",
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

def _config_parameters(groups: tuple[str, ...] | None) -> list[inspect.Parameter]:
    params = []
    for f in dataclasses.fields(Config):
        if groups is not None and f.metadata["group"] not in groups:
            continue
        tp = field_type(f)
        flag = "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if tp is bool else [flag]
        default = f.default
        shown = "none" if default is None else str(default)
        help_text = f"{f.metadata['help']} [env {ENV_PREFIX}{f.name.upper()}; default: {shown}]"
        option = typer.Option(*decls, help=help_text, show_default=False,
                              rich_help_panel=f.metadata["group"])
        params.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[tp | None, option],
        ))
    return params


def config_command(
    groups: tuple[str, ...] | None = None, preset: str | None = None, **command_kwargs: Any
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register `func(cfg: Config, **own_params)` as a command taking every Config flag."""

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        hints = typing.get_type_hints(func, include_extras=True)
        own = [
            p.replace(annotation=hints[name])
            for name, p in inspect.signature(func).parameters.items()
            if name != "cfg"
        ]
        config_params = _config_parameters(groups)
        config_names = {p.name for p in config_params}

        def wrapper(**kwargs: Any) -> None:
            overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in config_names}
            with handle_errors():
                cfg = Config.resolve(overrides, preset=kwargs.pop("preset", None) or preset)
                func(cfg, **kwargs)

        wrapper.__signature__ = inspect.Signature(own + config_params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in own + config_params}
        wrapper.__name__ = func.__name__
        wrapper.__doc__ = func.__doc__
        return app.command(**command_kwargs)(wrapper)

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
    typer.Option("--preset", help="Start from a named preset (demo) before env and flags."),
]


# --- commands -------------------------------------------------------------------------------

@config_command(groups=("data",), help="Download SQuAD (train and dev) into the cache and verify it.")
def pull(cfg: Config, preset: PresetOption = None) -> None:
    from squadft import pipeline

    pipeline.pull(cfg)


@config_command(
    groups=("data", "features", "model"),
    help="Pull, parse and tokenize SQuAD into cached sliding-window features; print counts.",
)
def prepare(cfg: Config, preset: PresetOption = None) -> None:
    from squadft import pipeline

    pipeline.prepare(cfg)


@config_command(help="Run the whole job: pull, prepare, train, save, evaluate, upload.")
def train(cfg: Config, preset: PresetOption = None) -> None:
    from squadft import pipeline

    pipeline.train(cfg)


@config_command(
    preset="demo",
    help="Offline demo: a bundled real SQuAD 2.0 sample and a small pretrained model "
    "(all-MiniLM-L6-v2), a few minutes on 2 CPU cores. Same as `train --preset demo`.",
)
def demo(cfg: Config) -> None:
    from squadft import pipeline

    pipeline.train(cfg)


# --- evaluation commands (evaluate, score, predict) go here ----------------------------------
# EVALUATION-COMMANDS-END

# --- storage commands (upload) go here -------------------------------------------------------
# STORAGE-COMMANDS-END


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("squadft: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
