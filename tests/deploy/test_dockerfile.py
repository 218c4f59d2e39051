"""The Dockerfile, .dockerignore and docker/constraints*.txt, checked without building.

The real build runs in CI as its own step (.ci/build-image.sh, a few minutes); these checks
are the fast part: hadolint, the structure the issue asks for, and pins that cover exactly
what the package needs (tests/deploy/test_pins.py checks them against the lock).
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from squadft import __version__

from tests.deploy.manifests import IMAGE_UID, REPO, pod_templates
from tests.deploy.pins import LOCK, pins

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
IMAGE_LICENSE = "/usr/share/doc/squadft/LICENSE"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):  # Docker drops comments inside RUNs too
            continue
        pending += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            result.append((keyword.upper(), arguments.strip()))
            pending = ""
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    groups: list[list[tuple[str, str]]] = [[]]
    for keyword, arguments in instructions(text):
        if keyword == "FROM":
            groups.append([])
        groups[-1].append((keyword, arguments))
    return groups  # groups[0]: the global ARGs before the first FROM


# --- lint and structure ----------------------------------------------------------------------


def test_hadolint_reports_nothing() -> None:
    tool = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [tool, "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    # Every inline ignore must say why on the same line.
    for line in DOCKERFILE.read_text().splitlines():
        if "hadolint ignore" in line:
            assert re.search(r"hadolint ignore=\S+\s+#?\s*\w+", line), line


def test_base_image_is_a_pinned_cuda_pytorch_runtime_by_default() -> None:
    head = stages(DOCKERFILE.read_text())[0]
    args = dict(arguments.partition("=")[::2] for keyword, arguments in head if keyword == "ARG")
    image = args["BASE_IMAGE"]
    repository, _, tag = image.rpartition(":")
    assert repository == "pytorch/pytorch"
    assert re.fullmatch(r"\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", tag), tag


def test_multi_stage_and_the_final_stage_installs_nothing() -> None:
    all_stages = stages(DOCKERFILE.read_text())[1:]
    assert len(all_stages) >= 2
    assert all(stage[0][1].startswith("${BASE_IMAGE}") for stage in all_stages)
    builder = all_stages[0][0][1]
    assert builder.endswith(" AS builder")
    final = all_stages[-1]
    runs = " ".join(arguments for keyword, arguments in final if keyword == "RUN")
    for tool in ("pip", "apt-get", "apk", "conda", "gcc", "make"):
        assert tool not in runs, f"{tool} in the final stage"
    copies = [arguments for keyword, arguments in final if keyword == "COPY"]
    # the venv and the license text (tests/deploy/test_license.py), no sources
    assert copies == ["--from=builder /opt/venv /opt/venv", f"LICENSE {IMAGE_LICENSE}"]


def test_final_stage_user_entrypoint_labels_and_writable_dirs() -> None:
    final = stages(DOCKERFILE.read_text())[-1]
    keywords = [keyword for keyword, _ in final]
    values = {keyword: arguments for keyword, arguments in final}  # last one wins
    assert values["USER"] == f"{IMAGE_UID}:{IMAGE_UID}"  # numeric: runAsNonRoot can verify it
    assert keywords.index("USER") > keywords.index("RUN")  # nothing runs as root after USER
    assert values["ENTRYPOINT"] == '["squadft"]'
    assert values["CMD"] == '["--help"]'
    assert "HEALTHCHECK" not in keywords
    assert "No HEALTHCHECK" in DOCKERFILE.read_text()  # and the reason is written down
    assert values["VOLUME"] == '["/cache", "/workspace"]'
    assert values["WORKDIR"] == "/workspace"
    env = " ".join(arguments for keyword, arguments in final if keyword == "ENV")
    for setting in ("HF_HOME=/cache/", "SQUADFT_CACHE_DIR=/cache/", "XDG_CACHE_HOME=/cache"):
        assert setting in env
    labels = " ".join(arguments for keyword, arguments in final if keyword == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    args = dict(arguments.partition("=")[::2] for keyword, arguments in final if keyword == "ARG")
    assert args["VERSION"] == __version__


def test_kubernetes_runs_the_image_as_its_user() -> None:
    for label, template in pod_templates():
        assert template["spec"]["securityContext"]["runAsUser"] == IMAGE_UID, label


def _documented_commands(path: Path) -> list[list[str]]:
    """The shell commands shown in a file: ```bash/sh/shell blocks of a Markdown file, `#   `
    comment lines of the Dockerfile; continuation lines and multi-line quoted strings joined,
    trailing comments dropped."""
    blocks: list[list[str]] = []
    if path.suffix == ".md":
        fenced = False
        for line in path.read_text().splitlines():
            if line.startswith("```"):
                fenced = not fenced
                if fenced:
                    blocks.append([])
                    shell = line[3:].strip() in {"bash", "sh", "shell"}
            elif fenced and shell:
                blocks[-1].append(line)
    else:
        blocks = [[line[4:] for line in path.read_text().splitlines() if line.startswith("#   ")]]
    commands: list[list[str]] = []
    for lines in blocks:
        pending = ""
        for line in lines:
            pending += " " + line.strip().removesuffix("\\")
            if line.rstrip().endswith("\\"):
                continue
            try:
                commands.append(shlex.split(pending, comments=True))
            except ValueError:  # a quoted string that goes on in the next line
                pending += "\n"
                continue
            pending = ""
        assert "docker" not in pending, f"{path.name}: unterminated command {pending!r}"
    return [c for c in commands if c]


def test_documented_build_tags_latest_and_the_version() -> None:
    # `docker run --gpus all squadft train` (the README) means squadft:latest, while the
    # manifests pin squadft:<version>: every documented build must tag both, every documented
    # `docker run` must use one of them, and the CI build script must tag both too.
    wanted = {"squadft", f"squadft:{__version__}"}
    builds = runs = 0
    for path in (REPO / "README.md", REPO / "docs" / "DEPLOY.md", DOCKERFILE):
        for argv in _documented_commands(path):
            if argv[:2] == ["docker", "build"]:
                tags = {argv[i + 1] for i, a in enumerate(argv) if a in {"-t", "--tag"}}
                tags |= {a.split("=", 1)[1] for a in argv if a.startswith("--tag=")}
                assert tags >= wanted, f"{path.name}: {' '.join(argv)}"
                builds += 1
            elif argv[:2] == ["docker", "run"]:
                images = [a for a in argv if re.fullmatch(r"squadft(:[\w.-]+)?", a)]
                assert images and images[0] in wanted, f"{path.name}: {' '.join(argv)}"
                runs += 1
    assert builds >= 3 and runs >= 3
    readme = _documented_commands(REPO / "README.md")
    assert ["docker", "run", "--gpus", "all", "squadft", "train"] in readme
    assert readme.index(["docker", "run", "--gpus", "all", "squadft", "train"]) > next(
        i for i, argv in enumerate(readme) if argv[:2] == ["docker", "build"]
    ), "the README builds the image before running it"

    script = (REPO / ".ci" / "build-image.sh").read_text()
    # The script's own line that reads the version, run as written, gives the package version.
    (line,) = [line for line in script.splitlines() if line.startswith("version=")]
    result = subprocess.run(
        ["bash", "-c", f'set -euo pipefail; ROOT="$1"; {line}; echo "$version"', "_", str(REPO)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == __version__
    assert "IMAGE_TAG=${IMAGE_TAG:-squadft:$version}" in script
    assert "IMAGE_LATEST_TAG=${IMAGE_LATEST_TAG-squadft:latest}" in script
    assert 'buildah tag "$IMAGE_TAG" "$IMAGE_LATEST_TAG"' in script


def test_pip_installs_are_pinned_and_offline_capable() -> None:
    text = DOCKERFILE.read_text()
    demo = re.search(r'ARG DEMO_MODEL_REQUIREMENT="([^"]+)"', text)
    assert demo, "the demo model requirement must be a build argument"
    name, _, version = demo.group(1).partition("==")
    assert pins(LOCK)[name] == version  # the image's demo model is the tested one
    for keyword, arguments in instructions(text):
        if keyword == "RUN" and "pip" in arguments:
            assert "--no-cache-dir" in arguments
            # A mounted wheelhouse at /wheels switches pip to it alone (CI, air-gapped sites).
            assert "PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels" in arguments


# --- the build context -------------------------------------------------------------------------


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            result = not negate
    return result


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = [
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "docker/constraints.txt",
        "docker/constraints-torch.txt",
        "docker/constraints-build.txt",
    ]
    needed += [
        str(p.relative_to(REPO))
        for p in (REPO / "job").rglob("*")
        if p.is_file()
        and not any(part == "__pycache__" or part.endswith(".egg-info") for part in p.parts)
    ]
    for path in needed:
        assert not ignored(path, patterns), path
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "k8s/train-job.yaml",
        "job/squadft/__pycache__/cli.cpython-311.pyc",
        "output/demo/final/x",
        "squadft.egg-info/PKG-INFO",
        "Dockerfile",
    ):
        assert ignored(path, patterns), path
    sources = [
        arguments.split()[0]
        for keyword, arguments in instructions(DOCKERFILE.read_text())
        if keyword == "COPY" and not arguments.startswith("--from")
    ]
    for source in sources:
        assert not ignored(source.rstrip("/"), patterns), source
        assert (REPO / source).exists(), source
