"""LICENSE: the Apache-2.0 text that pyproject.toml and the image label name, carried by the
wheel and by the image.

The wheel is built for real, from a folder holding only what the Dockerfile's builder stage
copies before its `pip wheel`, so it is the wheel the image installs.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from squadft import __version__

from tests.deploy.manifests import REPO
from tests.deploy.test_dockerfile import (
    DOCKERFILE,
    DOCKERIGNORE,
    IMAGE_LICENSE,
    ignored,
    instructions,
    stages,
)

LICENSE = REPO / "LICENSE"
# sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt, the unmodified license text
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_license_is_the_apache_2_text_that_the_metadata_and_label_name() -> None:
    assert hashlib.sha256(LICENSE.read_bytes()).hexdigest() == APACHE_2_SHA256
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    labels = " ".join(a for k, a in instructions(DOCKERFILE.read_text()) if k == "LABEL")
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels


def _builder_context(tmp_path: Path) -> Path:
    """A folder with what the builder stage has in /src when it runs `pip wheel .`."""
    builder = stages(DOCKERFILE.read_text())[1]
    context = tmp_path / "src"
    context.mkdir()
    for keyword, arguments in builder:
        if keyword == "RUN" and "pip wheel" in arguments:
            break
        if keyword == "COPY" and not arguments.startswith("--"):
            *sources, destination = arguments.split()
            for source in sources:
                target = context / (source if destination == "./" else destination)
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns(
                        "__pycache__", "*.egg-info"))
                else:
                    shutil.copy2(REPO / source, target)
    return context


def test_wheel_built_like_the_image_carries_the_license(tmp_path: Path) -> None:
    context = _builder_context(tmp_path)
    assert (context / "LICENSE").is_file(), "the builder stage does not copy LICENSE"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--wheel-dir", str(tmp_path / "dist"), str(context)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob(f"squadft-{__version__}-*.whl")
    info = f"squadft-{__version__}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(f"{info}/licenses/LICENSE") == LICENSE.read_bytes()
        metadata = archive.read(f"{info}/METADATA").decode().splitlines()
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata


def test_image_carries_the_license() -> None:
    final = stages(DOCKERFILE.read_text())[-1]
    assert ("COPY", f"LICENSE {IMAGE_LICENSE}") in final
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not ignored("LICENSE", patterns), "LICENSE is not in the build context"
    # The real build (CI) checks both copies inside the built image.
    script = (REPO / ".ci" / "build-image.sh").read_text()
    assert f'in_image cat {IMAGE_LICENSE} | cmp -s - "$ROOT/LICENSE"' in script
    assert "dist-info/licenses/LICENSE" in script
