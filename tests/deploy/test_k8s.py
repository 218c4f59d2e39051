"""k8s/*.yaml: schema-valid for every Kubernetes version from the documented minimum to the
newest that kubernetes-validate bundles, and true to the rules the schema cannot see.

No API server can run here, so the API server's own rules for Jobs (restartPolicy with
podFailurePolicy, exit-code rules naming a real container), what the image expects
(its user, its writable directories) and what the CLI accepts (sub-command, flags, option
environment variables) are asserted below; the args are parsed by the CLI's own parser.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from squadft.errors import EXIT_CONFIG, EXIT_DATA, EXIT_DIVERGED, EXIT_OOM, EXIT_PREEMPTED

from tests.deploy.manifests import (
    IMAGE,
    IMAGE_UID,
    K8S_DIR,
    all_documents,
    config_for,
    dangling_references,
    find,
    load_documents,
    parse_cli,
    pod_templates,
)

K8S_VERSION = "1.34.0"
# The oldest Kubernetes the docs and the Job manifests' headers claim; validated from there up.
_CLAIMS = [K8S_DIR.parent / "docs" / "DEPLOY.md", K8S_DIR / "train-job.yaml",
           K8S_DIR / "train-multinode.yaml"]
_MINIMUM = {m for path in _CLAIMS
            for m in re.findall(r"Kubernetes (\d+\.\d+) or\s+newer", path.read_text())}
MANIFESTS = sorted(K8S_DIR.glob("*.yaml"))
# What the README and docs/DEPLOY.md tell users to `kubectl apply -f`, each file on its own.
ENTRY_MANIFESTS = ["train-job.yaml", "train-multinode.yaml", "pytorchjob.yaml"]
JOBS = [(path.name, doc) for path, doc in all_documents() if doc["kind"] == "Job"]
POD_TEMPLATES = list(pod_templates())
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


def manifest_of(label: str) -> Path:
    """The file a pod template's label (from pod_templates) comes from."""
    return K8S_DIR / label.split(":", 1)[0]


def configmap_of(label: str, container: dict[str, Any]) -> dict[str, Any]:
    """The ConfigMap the container's envFrom names, from the container's own file."""
    (name,) = [
        s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s
    ]
    (configmap,) = [
        doc
        for doc in load_documents(manifest_of(label))
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name
    ]
    return configmap


def literal_env(label: str, container: dict[str, Any]) -> dict[str, str]:
    env = dict(configmap_of(label, container)["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def uncommented_configmap(path: Path) -> dict[str, Any]:
    """The file's ConfigMap with its commented-out `KEY: value` settings switched on."""
    (chunk,) = [c for c in re.split(r"(?m)^---$", path.read_text()) if "kind: ConfigMap" in c]
    lines = [re.sub(r"^  # ([A-Z][A-Z0-9_]*: )", r"  \1", line) for line in chunk.splitlines()]
    return yaml.safe_load("\n".join(lines))


# --- schema --------------------------------------------------------------------------------


def claimed_versions() -> list[str]:
    from kubernetes_validate.utils import all_versions

    (minimum,) = _MINIMUM or {"no claim"}  # one minimum, stated in every file that claims it

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split("."))

    return sorted({v for v in all_versions() if key(v) >= key(minimum + ".0")}, key=key)


def test_the_minimum_kubernetes_version_is_stated_once_and_in_every_job_file() -> None:
    assert len(_MINIMUM) == 1, _MINIMUM
    for path in _CLAIMS:
        assert re.search(r"Kubernetes \d+\.\d+ or\s+newer", path.read_text()), path.name
    assert claimed_versions()[0] == f"{next(iter(_MINIMUM))}.0"
    assert K8S_VERSION in claimed_versions()


@pytest.mark.parametrize("version", claimed_versions() if len(_MINIMUM) == 1 else ["no claim"])
def test_every_manifest_passes_strict_schema_validation_cli(version: str) -> None:
    assert {p.name for p in MANIFESTS} >= {*ENTRY_MANIFESTS, "secret.example.yaml"}
    tool = shutil.which("kubernetes-validate") or str(
        Path(sys.executable).parent / "kubernetes-validate"
    )
    result = subprocess.run(
        [tool, "--strict", "-k", version, *map(str, MANIFESTS)],
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
    container = main_container(spec["template"])
    if "torchrun" in container.get("command", []):
        # torchrun exits 1 for any failed worker: a rule on squadft's codes would be dead
        assert not by_code, by_code
    else:
        assert by_code[EXIT_PREEMPTED] == "Ignore"
        # retrying cannot help: bad flags, bad data, the same batch out of memory again, a
        # diverged run diverging again
        for code in (EXIT_CONFIG, EXIT_DATA, EXIT_OOM, EXIT_DIVERGED):
            assert by_code[code] == "FailJob", code
    disruption = [
        r
        for r in rules
        if any(c["type"] == "DisruptionTarget" for c in r.get("onPodConditions", []))
    ]
    assert disruption and disruption[0]["action"] == "Ignore"


@pytest.mark.parametrize("label,template", POD_TEMPLATES, ids=ids(POD_TEMPLATES))
def test_grace_period_leaves_time_to_checkpoint(label: str, template: dict[str, Any]) -> None:
    pod_spec = template["spec"]
    assert pod_spec["terminationGracePeriodSeconds"] >= 300
    container = main_container(template)
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    runs_torchrun = "torchrun" in container.get("command", []) + container.get("args", [])
    if runs_torchrun:
        # torchrun SIGKILLs its workers 30 s after a SIGTERM unless told otherwise: too short
        # for a checkpoint and its upload. Every pod that starts torchrun must set it, and
        # below the pod's grace period (the kubelet's SIGKILL ends torchrun itself).
        assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" in env, label
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
def test_gpu_pods_never_fall_back_to_the_cpu(label: str, template: dict[str, Any]) -> None:
    """A pod with GPUs whose torch cannot use them must fail, not train on the CPU: the
    GPU request is invisible to the process (NVIDIA_VISIBLE_DEVICES is "all" in any CUDA
    image), so the manifest says it with SQUADFT_DEVICE, and the CLI accepts the value."""
    container = main_container(template)
    assert literal_env(label, container)["SQUADFT_DEVICE"] == "cuda"
    from squadft.config import DEVICES

    assert "cuda" in DEVICES


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
            # The Secret is only for S3, which is off by default: the pod starts without it.
            assert ref.get("optional") is True, f"{entry['name']}: secretKeyRef not optional"
            referenced.add(ref["key"])
    assert referenced == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for source in container.get("envFrom", []):
        assert (
            "secretRef" not in source or source["secretRef"]["name"] == SECRET["metadata"]["name"]
        )
    for configmap in (configmap_of(label, container), uncommented_configmap(manifest_of(label))):
        assert not any("SECRET" in key or "ACCESS_KEY" in key for key in configmap["data"])


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
        cfg = config_for(squadft_args(container), literal_env(label, container))
        for path in (
            cfg.cache_dir,
            cfg.output_dir,
            literal_env(label, container).get("HF_HOME", "/cache"),
        ):
            assert any(str(path).startswith(mount + "/") for mount in mounts), path


@pytest.mark.parametrize("label,template", POD_TEMPLATES, ids=ids(POD_TEMPLATES))
def test_run_directory_outlives_the_pod_without_s3(label: str, template: dict[str, Any]) -> None:
    # S3 is off by default, so checkpoints and the final model must stay on a claim defined in
    # the same file; with several pods (multi-node), one that every pod can mount.
    container = main_container(template)
    cfg = config_for(squadft_args(container), literal_env(label, container))
    assert cfg.s3_uri is None, "S3 must be opt-in: the manifest runs without a bucket"
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    (runs,) = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/workspace"]
    claim_name = volumes[runs]["persistentVolumeClaim"]["claimName"]
    (claim,) = [
        doc
        for doc in load_documents(manifest_of(label))
        if doc["kind"] == "PersistentVolumeClaim" and doc["metadata"]["name"] == claim_name
    ]
    multi_pod = "torchrun" in container.get("command", [])
    assert ("ReadWriteMany" in claim["spec"]["accessModes"]) == multi_pod, claim["spec"]


@pytest.mark.parametrize("label,template", POD_TEMPLATES, ids=ids(POD_TEMPLATES))
def test_commented_s3_settings_switch_s3_on(label: str, template: dict[str, Any]) -> None:
    # The ConfigMap's commented-out S3 lines are the documented way to enable S3: uncommented,
    # they must be valid settings that the CLI resolves to an S3 run.
    container = main_container(template)
    env = dict(uncommented_configmap(manifest_of(label))["data"])
    assert set(env) - set(configmap_of(label, container)["data"]) >= {
        "SQUADFT_S3_URI",
        "AWS_ENDPOINT_URL",
        "SQUADFT_S3_ADDRESSING_STYLE",
    }
    cfg = config_for(squadft_args(container), env)
    assert cfg.s3_uri is not None and cfg.s3_uri.startswith("s3://")
    assert cfg.s3_addressing_style == "path"


# --- each manifest applied alone creates what it refers to ---------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_is_self_contained(path: Path) -> None:
    """`kubectl apply -f k8s/<file>` alone: every reference resolves in the file or is optional."""
    documents = load_documents(path)
    assert dangling_references(documents) == []
    # Objects come before the workloads that use them, so no pod starts before its ConfigMap.
    kinds = [doc["kind"] for doc in documents]
    workloads = [i for i, kind in enumerate(kinds) if kind in {"Job", "PyTorchJob"}]
    for i, kind in enumerate(kinds):
        if kind in {"ConfigMap", "PersistentVolumeClaim", "Service"}:
            assert all(i < w for w in workloads), f"{path.name}: {kind} after the workload"


def test_entry_manifests_refer_to_things_and_only_the_secret_is_shared() -> None:
    # Not vacuous: each entry manifest really refers to a ConfigMap and claims of its own.
    for name in ENTRY_MANIFESTS:
        documents = load_documents(K8S_DIR / name)
        defined = {(d["kind"], d["metadata"]["name"]) for d in documents}
        assert {kind for kind, _ in defined} >= {"ConfigMap", "PersistentVolumeClaim"}, name
        without = [d for d in documents if d["kind"] not in {"ConfigMap", "PersistentVolumeClaim"}]
        missing = dangling_references(without)
        assert any("ConfigMap" in m for m in missing), name
        assert any("PersistentVolumeClaim" in m for m in missing), name
    # Applying several files must not overwrite one file's object with another's different
    # one (settings silently swapped, or an immutable claim spec changed): a name defined in
    # two files must have identical content. Today every file uses names of its own.
    seen: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for path, doc in all_documents():
        key = (doc["kind"], doc["metadata"]["name"])
        if key in seen:
            other, first = seen[key]
            assert first == doc, f"{key} differs between {other} and {path.name}"
        seen[key] = (path.name, doc)


def _job_doc(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = [d for d in documents if d["kind"] == "Job"]
    return job


def _break_claim(docs: list[dict[str, Any]]) -> None:
    volumes = _job_doc(docs)["spec"]["template"]["spec"]["volumes"]
    next(v for v in volumes if "persistentVolumeClaim" in v)["persistentVolumeClaim"][
        "claimName"
    ] = "squadft-nowhere"


def _drop_configmap(docs: list[dict[str, Any]]) -> None:
    docs[:] = [d for d in docs if d["kind"] != "ConfigMap"]


def _secret_not_optional(docs: list[dict[str, Any]]) -> None:
    container = _job_doc(docs)["spec"]["template"]["spec"]["containers"][0]
    for entry in container["env"]:
        entry.get("valueFrom", {}).get("secretKeyRef", {}).pop("optional", None)


def _missing_configmap_key(docs: list[dict[str, Any]]) -> None:
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    container = _job_doc(docs)["spec"]["template"]["spec"]["containers"][0]
    container["env"].append(
        {
            "name": "SQUADFT_SEED",
            "valueFrom": {"configMapKeyRef": {"name": configmap["metadata"]["name"], "key": "X"}},
        }
    )


def _service_account(docs: list[dict[str, Any]]) -> None:
    _job_doc(docs)["spec"]["template"]["spec"]["serviceAccountName"] = "squadft-trainer"


def _secret_volume(docs: list[dict[str, Any]]) -> None:
    spec = _job_doc(docs)["spec"]["template"]["spec"]
    spec["volumes"].append({"name": "creds", "secret": {"secretName": "squadft-creds"}})


BREAKAGES = [
    ("train-job.yaml", _break_claim, "PersistentVolumeClaim 'squadft-nowhere'"),
    ("train-job.yaml", _drop_configmap, "ConfigMap 'squadft-train-config'"),
    ("train-job.yaml", _secret_not_optional, "Secret 'squadft-s3'"),
    ("train-job.yaml", _missing_configmap_key, "has no key 'X'"),
    ("train-job.yaml", _service_account, "ServiceAccount 'squadft-trainer'"),
    ("train-job.yaml", _secret_volume, "Secret 'squadft-creds'"),
    ("train-multinode.yaml", _break_claim, "PersistentVolumeClaim 'squadft-nowhere'"),
    ("train-multinode.yaml", _secret_not_optional, "Secret 'squadft-s3'"),
]


@pytest.mark.parametrize(
    "name,breakage,expected",
    BREAKAGES,
    ids=[f"{name}-{breakage.__name__.strip('_')}" for name, breakage, _ in BREAKAGES],
)
def test_self_containment_check_catches_a_broken_copy(
    name: str, breakage: Any, expected: str
) -> None:
    documents = copy.deepcopy(load_documents(K8S_DIR / name))
    assert dangling_references(documents) == []
    breakage(documents)
    problems = dangling_references(documents)
    assert problems and any(expected in p for p in problems), problems


def test_self_containment_check_reads_a_broken_file(tmp_path: Path) -> None:
    # The same through a file on disk: a copy of train-job.yaml with a dangling claimName and
    # without its ConfigMap document, as a hand edit would leave it.
    text = (K8S_DIR / "train-job.yaml").read_text()
    assert text.count("claimName: squadft-runs") == 1
    text = text.replace("claimName: squadft-runs", "claimName: squadft-runz")
    chunks = [c for c in re.split(r"(?m)^---$", text) if "kind: ConfigMap" not in c]
    broken = tmp_path / "train-job.yaml"
    broken.write_text("---".join(chunks))
    problems = dangling_references(load_documents(broken))
    assert len(problems) == 2, problems
    assert "PersistentVolumeClaim 'squadft-runz'" in problems[0] + problems[1]
    assert "ConfigMap 'squadft-train-config'" in problems[0] + problems[1]


def test_self_containment_check_follows_the_rendezvous_host() -> None:
    documents = copy.deepcopy(load_documents(K8S_DIR / "train-multinode.yaml"))
    container = _job_doc(documents)["spec"]["template"]["spec"]["containers"][0]
    container["args"] = [
        a.replace(":29400", ":29500") if a.startswith("--rdzv-endpoint") else a
        for a in container["args"]
    ]
    assert any("has no port 29500" in p for p in dangling_references(documents))
    without_service = [d for d in documents if d["kind"] != "Service"]
    problems = dangling_references(without_service)
    assert any("subdomain" in p for p in problems), problems
    assert any("--rdzv-endpoint" in p and "Service 'squadft-multinode'" in p for p in problems)


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
    cfg = config_for(args, literal_env(label, container))
    assert cfg.output_dir == params["output_dir"]
    assert cfg.s3_uri is None  # S3 is opt-in (test_commented_s3_settings_switch_s3_on)
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
    # Checkpoints must outlive a pod on another node: /workspace is a ReadWriteMany claim
    # (test_run_directory_outlives_the_pod_without_s3), S3 optional.


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


def test_every_mention_of_a_manifest_names_a_real_file() -> None:
    # k8s/configmap.yaml and k8s/pvc.yaml were folded into the manifests; no doc, header,
    # script or test may still send users to a file that is gone.
    repo = K8S_DIR.parent
    texts = [
        repo / "README.md",
        *sorted((repo / "docs").glob("*.md")),
        *MANIFESTS,
        *sorted((repo / ".ci").iterdir()),
        *sorted((repo / "slurm").iterdir()),
        repo / "Dockerfile",
    ]
    mentioned = set()
    for path in texts:
        for name in re.findall(r"k8s/([\w.-]+\.ya?ml)", path.read_text()):
            assert (K8S_DIR / name).exists(), f"{path.relative_to(repo)} names k8s/{name}"
            mentioned.add(name)
    assert mentioned >= set(ENTRY_MANIFESTS)
