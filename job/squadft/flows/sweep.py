"""`squadft sweep`: hyper-parameter trials on the cluster's own scheduler, chosen on held-out
articles only.

- plan: a grid (`--grid name=v1,v2`, the cartesian product of every --grid) or a list of trials
  (a JSON or YAML file) is checked against Config and written into a sweep directory:
  sweep.json (the trials and the settings they share; never a credential), sweep.sbatch (a
  Slurm array whose tasks run slurm/train.sh, so each trial checkpoints and is requeued on
  preemption like a single run) and sweep-job.yaml (a Kubernetes Indexed Job, the pod failure
  policy of k8s/train-job.yaml applied per index).
- trial (`squadft sweep train`): the trial that SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX
  names runs the normal training flow in <sweep>/trial-NNN (S3: <s3_uri>/trial-NNN) and
  records its state (running, preempted, failed, done) in that directory.
- status: `rank_trials` ranks the trials by held-out F1 (the F1 at the calibrated threshold on
  the articles held out of training, final/squadft_inference.json) and marks the best one;
  only that trial's dev F1 is shown, so the choice never sees dev.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
import os
import re
import shlex
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squadft import __version__
from squadft.config import ENV_PREFIX, Config, parse_value, redact_url, values_from_env
from squadft.console import say, warn
from squadft.errors import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_DIVERGED,
    EXIT_INTERNAL,
    EXIT_OOM,
    EXIT_PREEMPTED,
    ConfigError,
    SquadftError,
)
from squadft.evaluate.calibration import INFERENCE_FILE, InferenceSettings
from squadft.evaluate.uncertainty import article_bootstrap
from squadft.io import atomic_write_json, atomic_write_text, read_json_file
from squadft.train.selection import HELD_OUT_SCORES_FILE

PLAN_FILE = "sweep.json"
SLURM_FILE = "sweep.sbatch"
K8S_FILE = "sweep-job.yaml"
STATE_FILE = "sweep_trial.json"
PLAN_FORMAT = "squadft-sweep/1"
INDEX_VARIABLES = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")
PER_TRIAL = ("output_dir", "s3_uri")  # set by the sweep for each trial
DEFAULT_IMAGE = f"squadft:{__version__}"
# The repository's slurm/train.sh, when squadft runs from a checkout (not from a wheel).
TRAIN_SCRIPT = Path(__file__).resolve().parents[3] / "slurm" / "train.sh"
K8S_SWEEPS = "/workspace/sweeps"  # the sweep directories on the run claim, in the pod
K8S_PLAN_DIR = "/etc/squadft-sweep"  # the plan's ConfigMap, in the pod
_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


# --- trials: a grid or a file, checked against Config ----------------------------------------

def setting_name(name: str, where: str) -> str:
    """The Config field a --grid or trial-file name means: learning_rate, learning-rate and
    --learning-rate are the same."""
    key = name.strip().lstrip("-").replace("-", "_")
    if key not in _FIELDS:
        close = difflib.get_close_matches(key, list(_FIELDS), n=1)
        raise ConfigError(f"{where}: unknown setting {name.strip()!r}"
                          + (f" (did you mean {close[0]}?)" if close else ""))
    if key in PER_TRIAL:
        raise ConfigError(f"{where}: {key} is set per trial by the sweep (<sweep dir>/trial-NNN, "
                          "<s3_uri>/trial-NNN); give --s3-uri once, for all trials")
    return key


def setting_value(key: str, raw: Any, where: str) -> Any:
    if isinstance(raw, list | dict):
        raise ConfigError(f"{where}: {key} takes one value, not {type(raw).__name__} {raw!r}")
    return parse_value(_FIELDS[key], "none" if raw is None else str(raw), where)


def parse_grid(specs: Sequence[str]) -> list[dict[str, Any]]:
    """`--grid name=v1,v2` options -> the trials of their cartesian product, in order (the
    last --grid varies fastest)."""
    axes: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise ConfigError(f"--grid {spec!r}: expected NAME=VALUE[,VALUE...]")
        key = setting_name(name, f"--grid {spec}")
        if key in axes:
            raise ConfigError(f"--grid: {key} is given twice")
        axes[key] = [setting_value(key, value, f"--grid {name.strip()}")
                     for value in values.split(",")]
    return [dict(zip(axes, combination, strict=True))
            for combination in itertools.product(*axes.values())]


def read_trials(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A trials file: a JSON (or, named .yaml/.yml, YAML) list of {setting: value} objects."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
        if Path(path).suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--trials {path}: cannot read it ({exc})") from None
    except ValueError as exc:  # json.JSONDecodeError and yaml.YAMLError's parse errors
        raise ConfigError(f"--trials {path}: not valid: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # yaml.YAMLError is not a ValueError
        raise ConfigError(f"--trials {path}: not valid YAML: {str(exc).splitlines()[0]}"
                          ) from None
    if not isinstance(data, list) or not data or not all(
            isinstance(item, dict) and item for item in data):
        raise ConfigError(f"--trials {path}: expected a non-empty list of "
                          "{setting: value} objects, one per trial")
    trials = []
    for i, item in enumerate(data):
        where = f"--trials {path} trial {i}"
        keys = {setting_name(str(name), where): value for name, value in item.items()}
        if len(keys) < len(item):
            raise ConfigError(f"{where}: a setting is given twice ({', '.join(map(str, item))})")
        trials.append({key: setting_value(key, value, f"{where} {key}")
                       for key, value in keys.items()})
    return trials


def describe(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={show(value)}" for key, value in settings.items()) or "base"


def show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --- plan --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Planned:
    sweep_dir: Path
    trials: int
    parallel: int
    files: list[Path]

    def summary(self) -> list[str]:
        lines = [f"planned {self.trials} trials in {self.sweep_dir}, at most {self.parallel} at "
                 f"a time; wrote {', '.join(p.name for p in self.files)}"]
        for path in self.files:
            if path.name == SLURM_FILE:
                lines.append(f"Slurm: sbatch {shlex.quote(str(path))}")
            elif path.name == K8S_FILE:
                lines.append(f"Kubernetes: kubectl apply -f {shlex.quote(str(path))}")
        lines.append(f"then: squadft sweep status {shlex.quote(str(self.sweep_dir))}")
        return lines


def plan(sweep_dir: str, overrides: Mapping[str, Any], *, preset: str | None,
         grid: Sequence[str], trials_file: str | None, max_parallel: int | None,
         image: str = DEFAULT_IMAGE, train_script: str | None = None) -> Planned:
    """Check every trial against Config (base settings: preset < SQUADFT_* < flags; the trial's
    own settings over them) and write sweep.json, sweep.sbatch and sweep-job.yaml."""
    if bool(grid) == (trials_file is not None):
        raise ConfigError("give either --grid NAME=V1,V2 (repeatable) or --trials FILE")
    trials = parse_grid(grid) if grid else read_trials(trials_file or "")
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"--max-parallel must be >= 1 (got {max_parallel})")
    parallel = min(max_parallel or len(trials), len(trials))
    # preset < SQUADFT_* < flags, the environment read (and its typos warned about) once
    given = {**values_from_env(os.environ),
             **{k: v for k, v in overrides.items() if v is not None}}
    given.pop("output_dir", None)
    for index, settings in enumerate(trials):
        try:
            Config.resolve({**given, **settings}, env={}, preset=preset)
        except ConfigError as exc:
            raise ConfigError(f"trial {index} ({describe(settings)}): {exc}") from None
        for key, value in settings.items():
            if isinstance(value, str) and redact_url(value) != value:
                raise ConfigError(f"trial {index}: {key} holds a credential, which the plan "
                                  "would write: give it in the jobs' environment instead")
    for first, second in itertools.combinations(range(len(trials)), 2):
        if trials[first] == trials[second]:
            raise ConfigError(f"trials {first} and {second} are the same "
                              f"({describe(trials[first])})")
    base, secret = base_settings(given, preset)
    record = {"format": PLAN_FORMAT, "preset": preset, "base": base,
              "from_environment": secret, "max_parallel": parallel, "image": image,
              "trials": [{"name": trial_name(i), "settings": s} for i, s in enumerate(trials)]}
    directory = Path(sweep_dir).resolve()
    _check_not_replacing(directory, record)
    return _write_plan(directory, record, image, _slurm_train_script(train_script))


def base_settings(given: Mapping[str, Any], preset: str | None) -> tuple[dict[str, Any],
                                                                          list[str]]:
    """The settings every trial shares: what `given` (SQUADFT_* and flags) changes from the
    defaults (and the preset). A value holding a credential (user:password@, a signed URL) is
    not written: its name is returned, for the jobs' environment to set."""
    resolved = Config.resolve(given, env={}, preset=preset).to_dict(redact=False)
    reference = Config.resolve({}, env={}, preset=preset).to_dict(redact=False)
    base, secret = {}, []
    for key, value in resolved.items():
        if key == "output_dir" or value == reference[key]:
            continue
        if isinstance(value, str) and redact_url(value) != value:
            secret.append(key)
        else:
            base[key] = value
    return base, secret


def trial_name(index: int) -> str:
    return f"trial-{index:03d}"


def _check_not_replacing(directory: Path, record: Mapping[str, Any]) -> None:
    path = directory / PLAN_FILE
    if not path.exists():
        return
    old = load_plan(directory)
    if old["trials"] != record["trials"] and any(
            (directory / trial["name"]).exists() for trial in old["trials"]):
        raise ConfigError(f"{directory} holds a sweep whose trials have started and differ "
                          "from these; plan into another directory")


def _slurm_train_script(given: str | None) -> Path | None:
    path = Path(given).resolve() if given else TRAIN_SCRIPT
    if path.is_file():
        return path
    if given:
        raise ConfigError(f"--train-script {given}: no such file (slurm/train.sh)")
    warn(f"no {TRAIN_SCRIPT} (squadft installed from a wheel?): no Slurm array script; "
         "pass --train-script with the path of slurm/train.sh on the cluster")
    return None


def _write_plan(directory: Path, record: dict[str, Any], image: str,
                train_script: Path | None) -> Planned:
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2) + "\n"
    atomic_write_text(directory / PLAN_FILE, text)
    files = [directory / PLAN_FILE]
    count, parallel = len(record["trials"]), record["max_parallel"]
    if train_script is not None:
        atomic_write_text(directory / SLURM_FILE,
                          slurm_array(directory, count, parallel, train_script))
        (directory / SLURM_FILE).chmod(0o755)
        files.append(directory / SLURM_FILE)
    atomic_write_text(directory / K8S_FILE, indexed_job(directory.name, text, count, parallel,
                                                        image))
    files.append(directory / K8S_FILE)
    return Planned(directory, count, parallel, files)


def slurm_array(sweep_dir: Path, count: int, parallel: int, train_script: Path) -> str:
    """One array task per trial, at most `parallel` at a time; each runs slurm/train.sh, whose
    traps checkpoint and `scontrol requeue` that task (its own SLURM_JOB_ID) on preemption."""
    name = k8s_name(sweep_dir.name)
    return f"""#!/bin/bash
#SBATCH --job-name=squadft-sweep-{name}
#SBATCH --array=0-{count - 1}%{parallel}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output={sweep_dir}/slurm-%A_%a.out
#
# The {count} trials of the squadft sweep in {sweep_dir} ({PLAN_FILE}), one array task each,
# at most {parallel} at a time (written by `squadft sweep plan`):
#   sbatch {shlex.quote(str(sweep_dir / SLURM_FILE))}
#   squadft sweep status {shlex.quote(str(sweep_dir))}
# Each task runs slurm/train.sh, which starts `squadft sweep train` on the trial that
# SLURM_ARRAY_TASK_ID names (output in trial-NNN) and, on preemption, checkpoints and requeues
# that task alone, as for a single run. Its launcher variables (SQUADFT_LAUNCHER, SQUADFT_VENV,
# SQUADFT_WRAP for a container image...) and the sbatch command line work as there.
set -euo pipefail
export SQUADFT_CMD="${{SQUADFT_CMD:-squadft}} sweep"
exec {shlex.quote(str(train_script))} {shlex.quote(str(sweep_dir))}
"""


def k8s_name(text: str) -> str:
    """A DNS-1123 label piece for Kubernetes object names."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-") or "sweep"


def indexed_job(name: str, plan_text: str, count: int, parallel: int, image: str) -> str:
    """The Kubernetes objects of the sweep as YAML: the plan as a ConfigMap, the two claims
    (ReadWriteMany: trials run on several nodes at once) and the Indexed Job."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True  # no &id001 anchors: every object spelt out

    def literal(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:str", text,
                                       style="|" if "\n" in text else None)

    Dumper.add_representer(str, literal)
    job_name, pod_dir = f"squadft-sweep-{k8s_name(name)}", f"{K8S_SWEEPS}/{k8s_name(name)}"
    labels = {"app.kubernetes.io/name": "squadft", "app.kubernetes.io/component": "sweep"}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": job_name, "labels": labels},
                  "data": {PLAN_FILE: plan_text}}
    claims = [{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": f"squadft-sweep-{kind}", "labels": labels},
               "spec": {"accessModes": ["ReadWriteMany"],
                        "resources": {"requests": {"storage": size}}}}
              for kind, size in (("cache", "20Gi"), ("runs", "50Gi"))]
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": job_name, "labels": labels},
           "spec": _job_spec(job_name, pod_dir, count, parallel, image, labels)}
    header = (f"# The {count} trials of the squadft sweep {name}, written by `squadft sweep "
              f"plan`: one pod per index\n# (JOB_COMPLETION_INDEX), at most {parallel} at a time"
              f", each training in {pod_dir}/trial-NNN\n# on the squadft-sweep-runs claim.\n"
              "# The plan's paths (model, source, cache_dir) must exist in the pod. Needs "
              "Kubernetes 1.29 or newer\n# (backoffLimitPerIndex, podReplacementPolicy).\n"
              f"#   kubectl apply -f {K8S_FILE}\n#   squadft sweep status {pod_dir}   "
              "# in a pod that mounts the claim, or on a copy\n")
    return header + yaml.dump_all([config_map, *claims, job], Dumper=Dumper, sort_keys=False)


def _job_spec(job_name: str, pod_dir: str, count: int, parallel: int, image: str,
              labels: dict[str, str]) -> dict[str, Any]:
    """k8s/train-job.yaml's Job, per index: exit 75 and disruptions are not failures; bad
    settings or data, out of memory and divergence (2, 3, 7, 8) end that trial (FailIndex),
    not the sweep; other failures are retried 3 times."""
    def on_codes(action: str, codes: list[int]) -> dict[str, Any]:
        return {"action": action, "onExitCodes": {"containerName": "train", "operator": "In",
                                                  "values": codes}}

    secret = [{"name": key, "valueFrom": {"secretKeyRef": {
        "name": "squadft-s3", "key": key, "optional": True}}}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    container = {
        "name": "train", "image": image, "imagePullPolicy": "IfNotPresent",
        "args": ["sweep", "train", pod_dir, "--plan", f"{K8S_PLAN_DIR}/{PLAN_FILE}"],
        "env": [{"name": "SQUADFT_DEVICE", "value": "cuda"},
                {"name": "SQUADFT_CACHE_DIR", "value": "/cache/squadft"},
                {"name": "HF_HOME", "value": "/cache/huggingface"}, *secret],
        "resources": {"requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"},
                      "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},
                         {"name": "cache", "mountPath": "/cache"},
                         {"name": "runs", "mountPath": "/workspace"},
                         {"name": "tmp", "mountPath": "/tmp"},
                         {"name": "plan", "mountPath": K8S_PLAN_DIR, "readOnly": True}]}
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
               {"name": "cache", "persistentVolumeClaim": {"claimName": "squadft-sweep-cache"}},
               {"name": "runs", "persistentVolumeClaim": {"claimName": "squadft-sweep-runs"}},
               {"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}},
               {"name": "plan", "configMap": {"name": job_name}}]
    pod = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 600,
           "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                               "fsGroup": 10001, "fsGroupChangePolicy": "OnRootMismatch",
                               "seccompProfile": {"type": "RuntimeDefault"}},
           "containers": [container], "volumes": volumes}
    return {"completionMode": "Indexed", "completions": count, "parallelism": parallel,
            "backoffLimitPerIndex": 3,
            # 48 h per wave of `parallel` trials, restarts included
            "activeDeadlineSeconds": 172800 * math.ceil(count / parallel),
            "ttlSecondsAfterFinished": 604800, "podReplacementPolicy": "Failed",
            "podFailurePolicy": {"rules": [
                on_codes("Ignore", [EXIT_PREEMPTED]),
                {"action": "Ignore",
                 "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                on_codes("FailIndex", [EXIT_CONFIG, EXIT_DATA, EXIT_OOM, EXIT_DIVERGED])]},
            "template": {"metadata": {"labels": labels}, "spec": pod}}


# --- one trial ---------------------------------------------------------------------------------

def load_plan(sweep_dir: str | os.PathLike[str], plan_file: str | None = None) -> dict[str, Any]:
    path = Path(plan_file) if plan_file else Path(sweep_dir) / PLAN_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; is {sweep_dir} a sweep directory "
                          "(`squadft sweep plan` writes it)?")
    record = read_json_file(path, "sweep plan")
    if not isinstance(record, dict) or record.get("format") != PLAN_FORMAT:
        raise ConfigError(f"{path}: not a squadft sweep plan ({PLAN_FORMAT})")
    return record


def trial_index(env: Mapping[str, str], count: int) -> int:
    """The trial this process runs: SLURM_ARRAY_TASK_ID (Slurm array) or JOB_COMPLETION_INDEX
    (Kubernetes Indexed Job)."""
    for name in INDEX_VARIABLES:
        raw = env.get(name, "").strip()
        if not raw:
            continue
        if not re.fullmatch(r"[0-9]+", raw):
            raise ConfigError(f"{name}={raw!r} is not a trial index")
        if int(raw) >= count:
            raise ConfigError(f"{name}={raw} is out of range: the sweep has {count} trials "
                              f"(0 to {count - 1})")
        return int(raw)
    raise ConfigError("no trial index: `squadft sweep train` runs as a Slurm array task "
                      "(SLURM_ARRAY_TASK_ID) or a Kubernetes Indexed Job pod "
                      "(JOB_COMPLETION_INDEX); set one of them to run a trial by hand")


def trial_config(record: Mapping[str, Any], index: int, sweep_dir: str | os.PathLike[str],
                 env: Mapping[str, str]) -> Config:
    """preset < the job's SQUADFT_* < the shared settings < the trial's own; its own output
    directory and S3 prefix."""
    missing = [ENV_PREFIX + key.upper() for key in record["from_environment"]
               if ENV_PREFIX + key.upper() not in env]
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set in the job's environment (it held "
                          "a credential, so the plan did not record it)")
    trial = record["trials"][index]
    cfg = Config.resolve({**record["base"], **trial["settings"]}, env=env,
                         preset=record["preset"])
    s3_uri = f"{cfg.s3_uri.rstrip('/')}/{trial['name']}" if cfg.s3_uri else None
    return cfg.replace(output_dir=str(Path(sweep_dir) / trial["name"]), s3_uri=s3_uri)


def run_trial(sweep_dir: str, plan_file: str | None = None,
              env: Mapping[str, str] | None = None) -> Any:
    """Train the trial this process's index names (every rank of a DDP trial runs this; rank
    0 records the state). `plan_file`: the plan elsewhere (a ConfigMap); it is copied into
    the sweep directory for `squadft sweep status`."""
    env = os.environ if env is None else env
    record = load_plan(sweep_dir, plan_file)
    index = trial_index(env, len(record["trials"]))
    from squadft.runtime.distributed import detect_launch  # torch: after the checks above

    trial = record["trials"][index]
    out = Path(sweep_dir) / trial["name"]
    main = detect_launch(env).rank == 0
    try:
        cfg = trial_config(record, index, sweep_dir, env)
        if main:
            if plan_file and not (Path(sweep_dir) / PLAN_FILE).exists():
                Path(sweep_dir).mkdir(parents=True, exist_ok=True)
                atomic_write_json(Path(sweep_dir) / PLAN_FILE, record)
            record_state(out, "running")
            say(f"sweep trial {trial['name']} ({index + 1} of {len(record['trials'])}): "
                f"{describe(trial['settings'])}")
        from squadft.flows import training

        result = training.train(cfg)
    except BaseException as exc:
        code = exc.exit_code if isinstance(exc, SquadftError) else (
            130 if isinstance(exc, KeyboardInterrupt) else EXIT_INTERNAL)
        if main:
            record_state(out, "preempted" if code == EXIT_PREEMPTED else "failed", code)
        raise
    if main:
        record_state(out, "done", 0)
    return result


def record_state(trial_dir: Path, state: str, exit_code: int | None = None) -> None:
    try:
        trial_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(trial_dir / STATE_FILE, {
            "state": state, "exit_code": exit_code, "host": socket.gethostname(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    except (OSError, SquadftError) as exc:
        if state == "running":
            raise
        warn(f"cannot record the trial's state in {trial_dir}: {exc}")


# --- status ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialRow:
    """One trial in the ranking. `rank` and `heldout_f1` only for done trials with a held-out
    score; `dev_f1` only for the chosen one."""

    name: str
    settings: dict[str, Any]
    state: str  # pending, running, preempted, failed, done
    exit_code: int | None
    heldout_f1: float | None
    rank: int | None = None
    chosen: bool = False
    dev_f1: float | None = None
    # the chosen trial's held-out F1 minus this one's, [value, low, high] of its paired 95%
    # interval over the held-out articles (both need heldout_scores.json on the same questions)
    margin: list[float] | None = None


def rank_trials(sweep_dir: str | os.PathLike[str]) -> list[TrialRow]:
    """The trials of a sweep, best held-out F1 first, then those without one (not done, or
    without held-out data) in plan order. The first is the chosen one when it has a score."""
    record = load_plan(sweep_dir)
    rows = [_read_trial(Path(sweep_dir) / trial["name"], trial) for trial in record["trials"]]
    scored = sorted((r for r in rows if r.heldout_f1 is not None),
                    key=lambda r: -(r.heldout_f1 or 0.0))
    ranked = [dataclasses.replace(row, rank=i + 1) for i, row in enumerate(scored)]
    if ranked:
        dev = Path(sweep_dir) / ranked[0].name / "eval_results.json"
        dev_f1 = read_json_file(dev, "dev results").get("f1") if dev.is_file() else None
        ranked[0] = dataclasses.replace(ranked[0], chosen=True, dev_f1=dev_f1)
        ranked = _with_margins(Path(sweep_dir), ranked)
    return ranked + [r for r in rows if r.heldout_f1 is None]


def _held_out_scores(trial_dir: Path) -> dict[str, Any] | None:
    path = trial_dir / HELD_OUT_SCORES_FILE
    data = read_json_file(path, "held-out scores") if path.is_file() else None
    return data if isinstance(data, dict) and {"articles", "f1"} <= set(data) else None


def _with_margins(sweep_dir: Path, ranked: list[TrialRow]) -> list[TrialRow]:
    """Each scored trial's distance from the chosen one, paired over the held-out articles."""
    chosen = _held_out_scores(sweep_dir / ranked[0].name)
    if chosen is None:
        return ranked
    out = [ranked[0]]
    for row in ranked[1:]:
        other = _held_out_scores(sweep_dir / row.name)
        if other is not None and other["articles"] == chosen["articles"]:
            difference = [a - b for a, b in zip(chosen["f1"], other["f1"], strict=True)]
            interval = article_bootstrap(chosen["articles"], {"d": difference})["d"]
            row = dataclasses.replace(row, margin=[interval.value, interval.low, interval.high])
        out.append(row)
    return out


def _read_trial(trial_dir: Path, trial: Mapping[str, Any]) -> TrialRow:
    state, code, f1 = "pending", None, None
    if (trial_dir / STATE_FILE).is_file():
        saved = read_json_file(trial_dir / STATE_FILE, "trial state")
        if not isinstance(saved, dict):  # not written by squadft: say so, rank the others
            return TrialRow(trial["name"], dict(trial["settings"]),
                            f"unknown ({STATE_FILE} is not an object)", None, None)
        state, code = saved.get("state", "unknown"), saved.get("exit_code")
    if state == "done":
        settings = InferenceSettings.load(trial_dir / "final")
        if settings is not None and settings.calibration is not None:
            f1 = float(settings.calibration.scores["f1"])
    return TrialRow(trial["name"], dict(trial["settings"]), state, code, f1)


def format_status(rows: Sequence[TrialRow]) -> str:
    """The ranking as a text table, with what the chosen mark and the dev column mean."""
    keys = list(dict.fromkeys(key for row in rows for key in row.settings))
    margins = any(row.margin is not None for row in rows)
    header = ["", "rank", "trial", "state", "held-out F1",
              *(["chosen minus this [95%]"] if margins else []), "dev F1", *keys]
    table = [header]
    for row in rows:
        state = row.state if row.exit_code in (None, 0) else f"{row.state} (exit {row.exit_code})"
        margin = "—" if row.margin is None else \
            f"{row.margin[0]:+.2f} [{row.margin[1]:+.2f}, {row.margin[2]:+.2f}]"
        table.append(["*" if row.chosen else "", str(row.rank or "-"), row.name, state,
                      "—" if row.heldout_f1 is None else f"{row.heldout_f1:.2f}",
                      *([margin] if margins else []),
                      "—" if row.dev_f1 is None else f"{row.dev_f1:.2f}",
                      *(show(row.settings[k]) if k in row.settings else "" for k in keys)])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)
                       ).rstrip() for line in table]
    chosen = next((row for row in rows if row.chosen), None)
    if chosen is None:
        lines.append("no trial is done with a held-out F1 yet: none chosen")
    else:
        lines.append(f"* chosen: {chosen.name}, the highest held-out F1 (F1 at its calibrated "
                     f"no-answer threshold on articles held out of training, {INFERENCE_FILE})")
    close = [row.name for row in rows if row.margin is not None and row.margin[1] <= 0.0]
    if close:
        lines.append(f"the chosen trial's lead over {', '.join(close)} is within the noise (its "
                     "95% interval over the held-out articles reaches 0): not a clear winner")
    lines.append("dev F1 is shown for the chosen trial only: the selection never saw dev")
    return "\n".join(lines)
