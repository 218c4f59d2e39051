from __future__ import annotations

import subprocess
import sys

from squadft import __version__
from squadft.cli import app
from typer.testing import CliRunner

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"squadft {__version__}"


COMMANDS = ("pull", "prepare", "train", "demo", "evaluate", "score", "predict", "report",
            "upload", "sweep")


def test_every_command_has_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0, sub.output
    train_help = runner.invoke(app, ["train", "--help"]).output
    # flags are generated from the config: defaults and env var names are shown
    assert "--max-seq-length" in train_help and "SQUADFT_MAX_SEQ_LENGTH" in train_help
    assert "--doc-stride" in train_help and "default: 128" in train_help


def test_bad_flag_is_one_line_error_with_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "squadft", "train", "--doc-stride", "400"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "squadft: error: invalid configuration: doc_stride (400) must be < max_seq_length (384)"
    ]
    assert "Traceback" not in proc.stderr


def test_every_command_s_help_defaults_are_the_config_s() -> None:
    """Every option that is a Config setting, in every command, names its SQUADFT_ variable
    and shows the default the code uses (Config's), never one typed into a help string."""
    import dataclasses
    import re

    import typer
    from squadft.config import Config

    fields = {f.name: f for f in dataclasses.fields(Config)}
    group = typer.main.get_command(app)
    assert set(group.commands) == set(COMMANDS)
    checked = set()
    commands = {**group.commands, **{f"sweep {sub}": command for sub, command
                                     in group.commands["sweep"].commands.items()}}
    for name, command in commands.items():
        for param in command.params:
            text = getattr(param, "help", None) or ""
            setting = re.search(r"\[env SQUADFT_(\w+); default: ([^\]]*)\]$", text)
            if setting is None:
                # not a Config setting: then it is none by name either (eval's --batch-size is
                # eval_batch_size, and says so through its variable), except evaluate's and
                # predict's --model (the saved model to load) and --output-dir (checked below)
                own = {"model", "output_dir"} if name in ("evaluate", "predict") else set()
                assert param.name not in fields or param.name in own, (name, param.name)
                continue
            field = fields[setting.group(1).lower()]
            shown = "none" if field.default is None else str(field.default)
            assert setting.group(2).endswith(shown), (name, param.name, setting.group(2))
            assert field.metadata["help"] in text, (name, param.name)
            checked.add((name, field.name))
    for command in ("evaluate", "predict"):
        for field in ("max_seq_length", "doc_stride", "max_query_length", "n_best",
                      "max_answer_length", "null_threshold", "eval_batch_size", "precision",
                      "device"):
            assert (command, field) in checked, (command, field)
    # sweep plan takes every setting but --output-dir (each trial's is SWEEP_DIR/trial-NNN)
    assert {field for command, field in checked if command == "sweep plan"} == set(fields) - {
        "output_dir"}
    output_dir = next(p for p in group.commands["evaluate"].params if p.name == "output_dir")
    assert f"{Config().output_dir}/evaluate" in output_dir.help


def test_module_docstring_is_true_about_defaults() -> None:
    """cli.py's docstring: Config is the one source of every setting's default (the test
    above), an option named like a setting never types a default of its own, and the options
    it names with their own default have that default."""
    import dataclasses
    import re
    from collections.abc import Iterator
    from typing import Any

    import typer
    from squadft import cli
    from squadft.config import Config

    settings = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(Config)}

    def walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, (*path, name))
        if not hasattr(command, "commands"):
            yield " ".join(path), command

    own = {}
    for name, command in walk(typer.main.get_command(app), ()):
        for param in command.params:
            if "[env SQUADFT_" in (getattr(param, "help", None) or ""):
                continue
            for opt in param.opts:
                own[f"{name} {opt}"] = param.default
                if opt in settings:  # e.g. evaluate --output-dir: derived from the setting
                    assert param.default is None, f"{name} {opt} types its own default"
    doc = " ".join((cli.__doc__ or "").split())
    named = re.findall(r"`([a-z ]+ --[a-z-]+)` \(([^,)]+)", doc)
    assert len(named) >= 2, doc
    for option, default in named:
        assert option in own and str(own[option]) == default, (option, own.get(option))
    assert "no logic" not in doc


def test_root_help_names_every_command() -> None:
    """`squadft --help` names every command, demo, score and report included, in the order
    of its command list (the names come from the registered commands)."""
    import re

    import typer

    group = typer.main.get_command(app)
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    named = re.search(r"Commands: ([a-z, -]+)\.", " ".join(result.output.split()))
    assert named is not None, result.output
    assert named.group(1).split(", ") == list(group.commands)


def test_evaluate_output_dir_default_is_under_the_run_directory_setting(
    tiny_model_dir, tmp_path, monkeypatch
) -> None:
    """evaluate --help says whose output directory the default is under (SQUADFT_OUTPUT_DIR,
    train's --output-dir; not --model's), and that is where the outputs go."""
    from tests.conftest import DEV_SAMPLE

    text = " ".join(runner.invoke(app, ["evaluate", "--help"]).output.split())
    assert ("[default: evaluate/ in the run directory that SQUADFT_OUTPUT_DIR names (train's "
            "--output-dir), else output/evaluate in the current directory; never beside "
            "--model]") in text
    monkeypatch.setenv("SQUADFT_OUTPUT_DIR", str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_model_dir), "--data",
                                 f"{DEV_SAMPLE}[11:]", "--max-eval-samples", "4",
                                 "--max-seq-length", "64", "--doc-stride", "16"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "evaluate" / "eval_results.json").is_file()
    assert not (tmp_path / "output").exists() and not (tiny_model_dir / "evaluate").exists()
