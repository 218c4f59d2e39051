"""Loading the repository's deployment files for the tests in tests/deploy/."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from squadft import __version__
from squadft.config import Config, unknown_env

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
    unknown = unknown_env(env)  # what squadft would warn about: in a manifest, an error
    if unknown:
        raise ValueError(f"environment variables that match no option: {unknown}")
    overrides = {key: value for key, value in params.items() if key in fields}
    return Config.resolve(overrides, env=env, preset=params.get("preset"))


# --- references between objects ------------------------------------------------------------


def _pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(role suffix, pod spec) of every pod template in a workload document."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind == "Pod":
        yield "", spec
    elif kind in {"Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}:
        yield "", spec["template"]["spec"]
    elif kind == "CronJob":
        yield "", spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "PyTorchJob":
        for role, replica in spec["pytorchReplicaSpecs"].items():
            yield f":{role}", replica["template"]["spec"]


def _rendezvous_hosts(container: dict[str, Any]) -> Iterator[tuple[str, str, int | None]]:
    """(flag, host, port) of torchrun's --rdzv-endpoint / --master-addr in the command line."""
    argv = [*container.get("command", []), *container.get("args", [])]
    for i, arg in enumerate(argv):
        for flag in ("--rdzv-endpoint", "--rdzv_endpoint", "--master-addr", "--master_addr"):
            if arg == flag and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(flag + "="):
                value = arg.split("=", 1)[1]
            else:
                continue
            host, _, port = value.partition(":")
            yield flag, host, int(port) if port.isdigit() else None


def dangling_references(documents: Sequence[dict[str, Any]]) -> list[str]:
    """What the workloads in `documents` refer to that `documents` do not define.

    `kubectl apply -f FILE` alone must give every pod what it needs. A reference counts as
    resolved when an object of the right kind and name is among `documents` (and, for a key
    reference, that object holds the key), or when Kubernetes lets the pod run without it
    (`optional: true`). Checked: envFrom configMapRef/secretRef, env configMapKeyRef/
    secretKeyRef, volumes (persistentVolumeClaim, configMap, secret, projected),
    serviceAccountName, imagePullSecrets, priorityClassName, subdomain (a headless Service),
    and the Service named by a torchrun rendezvous host (`--rdzv-endpoint host[:port]`,
    `<pod>.<service>` or `<service>`). Returns one line per problem; empty when all resolve.
    """
    defined: dict[tuple[str, str], dict[str, Any]] = {
        (doc["kind"], doc["metadata"]["name"]): doc for doc in documents
    }
    problems: list[str] = []

    def need(
        where: str, kind: str, name: str, optional: bool = False, key: str | None = None
    ) -> None:
        if optional:
            return
        target = defined.get((kind, name))
        if target is None:
            problems.append(f"{where}: {kind} {name!r} is not defined here and not optional")
        elif key is not None:
            keys = {**(target.get("data") or {}), **(target.get("stringData") or {})}
            if key not in keys:
                problems.append(f"{where}: {kind} {name!r} has no key {key!r}")

    for doc in documents:
        for role, pod in _pod_specs(doc):
            owner = f"{doc['kind']}/{doc['metadata']['name']}{role}"
            account = pod.get("serviceAccountName") or pod.get("serviceAccount")
            if account and account != "default":  # every namespace has "default"
                need(f"{owner} serviceAccountName", "ServiceAccount", account)
            for secret in pod.get("imagePullSecrets", []):
                need(f"{owner} imagePullSecrets", "Secret", secret["name"])
            if pod.get("priorityClassName"):
                need(f"{owner} priorityClassName", "PriorityClass", pod["priorityClassName"])
            if pod.get("subdomain"):
                need(f"{owner} subdomain", "Service", pod["subdomain"])
            for volume in pod.get("volumes", []):
                where = f"{owner} volume {volume['name']}"
                if "persistentVolumeClaim" in volume:
                    claim = volume["persistentVolumeClaim"]["claimName"]
                    need(where, "PersistentVolumeClaim", claim)
                sources = [volume, *volume.get("projected", {}).get("sources", [])]
                for source in sources:
                    if "configMap" in source:
                        ref = source["configMap"]
                        need(where, "ConfigMap", ref["name"], ref.get("optional", False))
                    if "secret" in source:
                        ref = source["secret"]
                        name = ref.get("secretName") or ref.get("name")
                        need(where, "Secret", name, ref.get("optional", False))
            containers = [*pod.get("initContainers", []), *pod.get("containers", [])]
            for container in containers:
                where = f"{owner} container {container['name']}"
                for source in container.get("envFrom", []):
                    for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                        if field in source:
                            ref = source[field]
                            need(f"{where} envFrom", kind, ref["name"], ref.get("optional", False))
                for entry in container.get("env", []):
                    value_from = entry.get("valueFrom", {})
                    for field, kind in (
                        ("configMapKeyRef", "ConfigMap"),
                        ("secretKeyRef", "Secret"),
                    ):
                        if field in value_from:
                            ref = value_from[field]
                            need(
                                f"{where} env {entry['name']}",
                                kind,
                                ref["name"],
                                ref.get("optional", False),
                                key=ref["key"],
                            )
                for flag, host, port in _rendezvous_hosts(container):
                    if "$(" in host or host in {"localhost", "127.0.0.1"}:
                        continue  # filled in at run time, or this pod itself
                    # <service>[.<namespace>...] or <pod>.<service>[.<namespace>...]
                    labels = host.split(".")
                    candidates = [n for n in labels[:2] if ("Service", n) in defined]
                    service_name = candidates[0] if candidates else labels[min(1, len(labels) - 1)]
                    need(f"{where} {flag} {host}", "Service", service_name)
                    service = defined.get(("Service", service_name))
                    ports = {p["port"] for p in (service or {}).get("spec", {}).get("ports", [])}
                    if service is not None and port is not None and port not in ports:
                        problems.append(
                            f"{where} {flag}: Service {service_name!r} has no port {port}"
                        )
    return problems
