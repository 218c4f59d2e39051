"""k8s/*.yaml: schema-valid for Kubernetes 1.34 and true to the rules the schema cannot see.

No API server can run here, so the API server's own rules for Jobs (restartPolicy with
podFailurePolicy, exit-code rules naming a real container), what the image expects
(its user, its writable directories) and what the CLI accepts (sub-command, flags, option
environment variables) are asserted below; the args are parsed by the CLI's own parser.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from squadft.errors import EXIT_CONFIG, EXIT_DATA, EXIT_PREEMPTED

from tests.deploy.manifests import (
    IMAGE,
    IMAGE_UID,
    K8S_DIR,
    all_documents,
    config_for,
    find,
    parse_cli,
    pod_templates,
)

K8S_VERSION = "1.34.0"
MANIFESTS = sorted(K8S_DIR.glob("*.yaml"))
JOBS = [(path.name, doc) for path, doc in all_documents() if doc["kind"] == "Job"]
POD_TEMPLATES = list(pod_templates())
CONFIGMAP = find("ConfigMap", "squadft-config")
SECRET = find("Secret", "squadft-s3")


def ids(items: list[tuple[str, Any]]) -> list[str]:
    return [label for label, _ in items]


def main_container(template: dict[str, Any]) -> dict[str, Any]:
    containers = template["spec"]["containers"]
    assert len(containers) == 1, "one container per training pod"
    return containers[0]


def squadft_args(container: dict[str, Any]) -> list[str]:
    """The `squadft ...` part of the container's command line (after torchrun's own flags)."""
    argv = [*container.get("command", []), *container.get("args", [])]
    if not argv or argv[0] != "torchrun":
        assert "command" not in container, "plain pods rely on the image's ENTRYPOINT [squadft]"
        return argv
    assert "--no-python" in argv, "torchrun must exec the squadft entry point, not python"
    return argv[argv.index("squadft") + 1 :]


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    env = dict(CONFIGMAP["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


# --- schema --------------------------------------------------------------------------------


def test_every_manifest_passes_strict_schema_validation_cli() -> None:
    assert {p.name for p in MANIFESTS} >= {
        "train-job.yaml",
        "train-multinode.yaml",
        "configmap.yaml",
        "secret.example.yaml",
        "pvc.yaml",
    }
    tool = shutil.which("kubernetes-validate") or str(
        Path(sys.executable).parent / "kubernetes-validate"
    )
    result = subprocess.run(
        [tool, "--strict", "-k", K8S_VERSION, *map(str, MANIFESTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout, result.stdout


def test_strict_validation_rejects_a_misspelled_field() -> None:
    import kubernetes_validate

    job = find("Job", "squadft-train")
    broken = {**job, "spec": {**job["spec"], "backofLimit": 3}}
    with pytest.raises(kubernetes_validate.ValidationError, match="backofLimit"):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("label,template", POD_TEMPLATES, ids=ids(POD_TEMPLATES))
def test_pod_templates_are_valid_pods(label: str, template: dict[str, Any]) -> None:
    # The PyTorchJob's CRD schema is not bundled, so check its templates as core Pods.
    import kubernetes_validate

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "check"},
        "spec": template["spec"],
    }
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


# --- Job rules the API server enforces -----------------------------------------------------


@pytest.mark.parametrize("name,job", JOBS, ids=ids(JOBS))
def test_job_restart_and_failure_policy(name: str, job: dict[str, Any]) -> None:
    spec = job["spec"]
    pod_spec = spec["template"]["spec"]
    # podFailurePolicy is only accepted with restartPolicy Never (Always is never valid).
    assert pod_spec["restartPolicy"] == "Never"
    assert spec.get("podReplacementPolicy", "Failed") == "Failed"
    for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        assert isinstance(spec[key], int) and spec[key] > 0, key

    containers = {c["name"] for c in pod_spec["containers"]}
    rules = spec["podFailurePolicy"]["rules"]
    assert 0 < len(rules) <= 20
    by_code: dict[int, str] = {}
    for rule in rules:
        assert rule["action"] in {"Ignore", "FailJob", "FailIndex", "Count"}
        assert ("onExitCodes" in rule) != ("onPodConditions" in rule), rule
        if "onExitCodes" in rule:
            codes = rule["onExitCodes"]
            assert codes["containerName"] in containers
            assert codes["operator"] in {"In", "NotIn"}
            assert codes["values"] == sorted(set(codes["values"])) and codes["values"]
            assert 0 not in codes["values"]
            for code in codes["values"]:
                by_code.setdefault(code, rule["action"])  # the first matching rule wins
    assert by_code[EXIT_PREEMPTED] == "Ignore"
    assert by_code[EXIT_CONFIG] == "FailJob" and by_code[EXIT_DATA] == "FailJob"
    disruption = [
        r
        for r in rules
        if any(c["type"] == "DisruptionTarget" for c in r.get("onPodConditions", []))
    ]
    assert disruption and disruption[0]["action"] == "Ignore"


@pytest.mark.parametrize("name,job", JOBS, ids=ids(JOBS))
def test_grace_period_leaves_time_to_checkpoint(name: str, job: dict[str, Any]) -> None:
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["terminationGracePeriodSeconds"] >= 300
    env = {
        e["name"]: e.get("value") for e in main_container(job["spec"]["template"]).get("env", [])
    }
    if "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" in env:
        # torchrun must not kill its workers before the checkpoint is written.
        assert (
            30
            < int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"])
            < pod_spec["terminationGracePeriodSeconds"]
        )


# --- the container: image, user, resources, secrets, volumes -------------------------------


@pytest.mark.parametrize("label,template", POD_TEMPLATES, ids=ids(POD_TEMPLATES))
def test_security_context(label: str, template: dict[str, Any]) -> None:
    pod_security = template["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == IMAGE_UID
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    container_security = main_container(template)["securityContext"]
    assert container_security["allowPrivilegeEscalation"] is False
    assert container_security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in container_security["capabilities"]
    assert not container_security.get("privileged", False)


@pytest.mark.parametrize("label,template", POD_TEMPLATES, ids=ids(POD_TEMPLATES))
def test_gpu_resources_and_image(label: str, template: dict[str, Any]) -> None:
    container = main_container(template)
    assert container["image"] == IMAGE
    resources = container["resources"]
    gpus = resources["limits"]["nvidia.com/gpu"]
    assert int(gpus) >= 1
    # Extended resources cannot be overcommitted: a request must equal the limit.
    assert resources.get("requests", {}).get("nvidia.com/gpu", gpus) == gpus


@pytest.mark.parametrize("label,template", POD_TEMPLATES, ids=ids(POD_TEMPLATES))
def test_secrets_come_from_the_secret_never_literal(label: str, template: dict[str, Any]) -> None:
    container = main_container(template)
    secret_keys = set(SECRET["stringData"])
    referenced = set()
    for entry in container.get("env", []):
        if "SECRET" in entry["name"] or "ACCESS_KEY" in entry["name"] or "TOKEN" in entry["name"]:
            assert "value" not in entry, f"{entry['name']} must come from a Secret"
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == SECRET["metadata"]["name"]
            assert ref["key"] in secret_keys, f"{ref['key']} missing from the example Secret"
            referenced.add(ref["key"])
    assert referenced == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for source in container.get("envFrom", []):
        assert (
            "secretRef" not in source or source["secretRef"]["name"] == SECRET["metadata"]["name"]
        )
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] == CONFIGMAP["metadata"]["name"]
    assert not any("SECRET" in key or "ACCESS_KEY" in key for key in CONFIGMAP["data"])


def test_example_secret_holds_only_marked_placeholders() -> None:
    assert "data" not in SECRET, "base64 values would hide whether they are placeholders"
    for key, value in SECRET["stringData"].items():
        assert value.startswith("PLACEHOLDER"), key
    assert "EXAMPLE ONLY" in (K8S_DIR / "secret.example.yaml").read_text()


@pytest.mark.parametrize("label,template", POD_TEMPLATES, ids=ids(POD_TEMPLATES))
def test_volumes(label: str, template: dict[str, Any]) -> None:
    spec = template["spec"]
    container = main_container(template)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert set(mounts) >= {"/cache", "/workspace", "/tmp"}
    assert all(name in volumes for name in mounts.values())
    if container["securityContext"].get("readOnlyRootFilesystem"):
        # Everything squadft writes must then be on a volume.
        cfg = config_for(squadft_args(container), literal_env(container))
        for path in (
            cfg.cache_dir,
            cfg.output_dir,
            literal_env(container).get("HF_HOME", "/cache"),
        ):
            assert any(str(path).startswith(mount + "/") for mount in mounts), path


def test_pvcs_of_the_single_node_job_exist() -> None:
    job = find("Job", "squadft-train")
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims
    for claim in claims:
        find("PersistentVolumeClaim", claim)


# --- the command line matches the real CLI -------------------------------------------------


@pytest.mark.parametrize("label,template", POD_TEMPLATES, ids=ids(POD_TEMPLATES))
def test_args_parse_with_the_cli_and_make_a_valid_config(
    label: str, template: dict[str, Any]
) -> None:
    container = main_container(template)
    args = squadft_args(container)
    command, params = parse_cli(args)
    assert command == "train"
    assert params["output_dir"].startswith("/workspace/")
    cfg = config_for(args, literal_env(container))
    assert cfg.output_dir == params["output_dir"]
    assert cfg.s3_uri == CONFIGMAP["data"]["SQUADFT_S3_URI"]
    assert cfg.resume == "auto"


def test_cli_parser_check_can_fail() -> None:
    with pytest.raises(Exception, match="bogus"):
        parse_cli(["train", "--bogus", "1"])
    with pytest.raises(Exception, match="integer"):
        parse_cli(["train", "--batch-size", "many"])
    with pytest.raises(ValueError, match="SQUADFT_BATCHSIZE"):
        config_for(["train"], {"SQUADFT_BATCHSIZE": "8"})


def test_multinode_rendezvous_matches_service_and_job() -> None:
    service = find("Service", "squadft-multinode")
    job = find("Job", "squadft-multinode")
    spec = job["spec"]
    pod_spec = spec["template"]["spec"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    assert pod_spec["subdomain"] == service["metadata"]["name"]
    assert spec["completionMode"] == "Indexed"

    container = main_container(spec["template"])
    argv = container["args"]
    flags = dict(a.split("=", 1) for a in argv[: argv.index("--no-python")])
    assert int(flags["--nnodes"]) == spec["completions"] == spec["parallelism"]
    host, port = flags["--rdzv-endpoint"].rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert flags["--rdzv-backend"] == "c10d"
    env = {e["name"]: e for e in container["env"]}
    # $(VAR) in args expands only variables the container defines.
    assert flags["--node-rank"] == "$(NODE_RANK)"
    assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert flags["--rdzv-id"] == "$(RDZV_ID)" and "RDZV_ID" in env
    # Checkpoints must outlive a pod on another node: S3 is set.
    assert CONFIGMAP["data"]["SQUADFT_S3_URI"].startswith("s3://")


def test_pytorchjob_uses_the_operator_container_name_and_restarts_on_failure() -> None:
    job = find("PyTorchJob", "squadft-pytorchjob")
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        # The operator only injects its environment into a container named "pytorch".
        assert spec["template"]["spec"]["containers"][0]["name"] == "pytorch"
        # ExitCode would treat 75 and torchrun's 1 as permanent failures.
        assert spec["restartPolicy"] == "OnFailure"


def test_readme_style_commands_in_manifest_headers_name_real_files() -> None:
    for path in MANIFESTS:
        for line in path.read_text().splitlines():
            if "kubectl apply" in line:
                words = shlex.split(line.lstrip("# "))
                for word in words:
                    if word.startswith("k8s/"):
                        assert (K8S_DIR.parent / word).exists(), f"{path.name}: {word}"
