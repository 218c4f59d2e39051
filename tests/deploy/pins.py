"""Reading the pin files: the lock (constraints.txt) and the image's subsets (docker/)."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "constraints.txt"
CONSTRAINTS = REPO / "docker" / "constraints.txt"
TORCH_CONSTRAINTS = REPO / "docker" / "constraints-torch.txt"
BUILD_CONSTRAINTS = REPO / "docker" / "constraints-build.txt"
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")


def pins(path: Path) -> dict[str, str]:
    """{canonical name: version} of a pin file; every requirement line must be `name==version`."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = PIN.fullmatch(line)
            assert match, f"{path.name}: {line!r} is not pinned with =="
            name = canonicalize_name(match.group(1))
            assert name not in found, f"{path.name}: {name} pinned twice"
            found[name] = match.group(2)
    return found


def requirement_closure(roots: list[str], skip: set[str]) -> set[str]:
    """Names of the installed distributions `roots` need at run time, not descending into skip."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen or name in skip:
            continue
        seen.add(name)
        for spec in importlib.metadata.distribution(name).requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def installed_version(name: str) -> str:
    """The installed version without its local label (torch 2.13.0+cpu is the lock's 2.13.0)."""
    return importlib.metadata.version(name).split("+")[0]


def installed() -> dict[str, str]:
    """What is installed in this environment's site-packages: not the packages that others
    vendor and put on sys.path once imported (setuptools' _vendor, after torch.compile)."""
    import sysconfig

    where = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    return {
        canonicalize_name(dist.metadata["Name"]): dist.version.split("+")[0]
        for dist in importlib.metadata.distributions(path=where)
    }
