"""Loading the repository's deployment files for the tests in tests/deploy/."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from squadft import __version__
from squadft.config import ENV_PREFIX, Config

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "k8s"
IMAGE = f"squadft:{__version__}"
IMAGE_UID = 10001


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(K8S_DIR.glob("*.yaml")) for doc in load_documents(path)]


def find(kind: str, name: str) -> dict[str, Any]:
    for _, doc in all_documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in {K8S_DIR}")


def pod_templates() -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, pod template) for every workload, Jobs and the PyTorchJob alike."""
    for path, doc in all_documents():
        label = f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Job":
            yield label, doc["spec"]["template"]
        elif doc["kind"] == "PyTorchJob":
            for role, spec in doc["spec"]["pytorchReplicaSpecs"].items():
                yield f"{label}:{role}", spec["template"]


def parse_cli(args: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Parse `squadft ARGS` with the CLI's own parser, without running anything.

    Returns the sub-command and the options given; raises the parser's error on an unknown
    sub-command, an unknown flag or a value of the wrong type.
    """
    import typer
    from squadft.cli import app

    group = typer.main.get_command(app)
    group_ctx = group.make_context("squadft", list(args))
    # The group keeps the sub-command's name apart from the arguments that follow it.
    protected = getattr(group_ctx, "_protected_args", None)
    if protected is None:
        protected = group_ctx.protected_args
    name, command, rest = group.resolve_command(group_ctx, [*protected, *group_ctx.args])
    if command is None:
        raise ValueError(f"unknown sub-command in {list(args)}")
    ctx = command.make_context(name, rest, parent=group_ctx)
    return name, {key: value for key, value in ctx.params.items() if value is not None}


def config_for(args: Sequence[str], env: dict[str, str]) -> Config:
    """The Config a container with these args and environment would run with."""
    _, params = parse_cli(args)
    fields = {f.name for f in dataclasses.fields(Config)}
    unknown = [
        key
        for key in env
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() not in fields
    ]
    if unknown:
        raise ValueError(f"environment variables that match no option: {unknown}")
    overrides = {key: value for key, value in params.items() if key in fields}
    return Config.resolve(overrides, env=env, preset=params.get("preset"))
