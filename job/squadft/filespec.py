r"""Data file specs, as --train-file, --dev-file, --calibration-file and `evaluate --data`
take them: `name` or `name[a:b]`, a Python slice over the file's *articles* (like the
`split="train[:10]"` slicing of Hugging Face datasets, but by article, so a slice never cuts a
paragraph's questions apart); --train-file takes several, comma-separated.

A name with `,`, `[`, `]` or `\` in it writes them `\,`, `\[`, `\]`, `\\` (`a\,b.json` is one
file, `dev\[v2\].json[:8]` a slice of dev[v2].json); any other `\`, and a bracket that is not
the final slice, is an error. Escapes rather than a guess: the names are under --source, often
remote, so whether a file exists cannot decide what a bracket means. `--data PATH` names a
local file, so there an existing file named exactly PATH is also taken as written (what a
shell's completion passes for dev[v2].json), unless PATH also reads as a slice of another
existing file: that is an error naming the escaped form.

Parsed when the Config is validated (a bad spec fails before any work), and by the data stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from squadft.errors import ConfigError

# a name: escaped \ , [ ] or any other character than those three, then an optional slice
_SPEC = re.compile(r"^(?P<name>(?:\\[\\,\[\]]|[^\\\[\]])+?)"
                   r"(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")
_ESCAPES = r"write \[ \] \, \\ for [ ] , \ in a name"


@dataclass(frozen=True)
class FileSpec:
    """A data file under --source and, optionally, a slice of its articles."""

    name: str
    start: int | None = None
    stop: int | None = None

    @property
    def sliced(self) -> bool:
        return self.start is not None or self.stop is not None

    def articles(self, count: int) -> range:
        """The article indices this spec selects in a file of `count` articles."""
        return range(count)[slice(self.start, self.stop)]

    def __str__(self) -> str:  # as written: it parses back to this spec
        name = re.sub(r"([\\,\[\]])", r"\\\1", self.name)
        if not self.sliced:
            return name
        return f"{name}[{'' if self.start is None else self.start}:" \
               f"{'' if self.stop is None else self.stop}]"


def parse_file_spec(text: str) -> FileSpec:
    """`name`, `name[a:b]`, `name[:b]` or `name[a:]` (article indices, negative from the end)."""
    match = _SPEC.match(text.strip())
    if match is None:
        raise ConfigError(f"invalid data file {text!r}: expected NAME or NAME[START:STOP] "
                          f"(a slice of its articles, e.g. dev-v2.0.json[:8]); {_ESCAPES}")

    def bound(value: str | None) -> int | None:
        return int(value) if value not in (None, "", "-") else None

    if match["start"] == "-" or match["stop"] == "-":
        raise ConfigError(f"invalid article slice in {text!r}")
    name = re.sub(r"\\(.)", r"\1", match["name"].strip())
    return FileSpec(name, bound(match["start"]), bound(match["stop"]))


def parse_local_spec(text: str) -> FileSpec:
    """`--data PATH[A:B]`: as parse_file_spec, but an existing file named exactly `text` is that
    file; an error when `text` is also a slice of another existing file."""
    if not Path(text).is_file():
        return parse_file_spec(text)
    literal = FileSpec(text)
    try:
        spec = parse_file_spec(text)
    except ConfigError:
        return literal
    if spec != literal and Path(spec.name).is_file():
        raise ConfigError(f"data file {text!r} is ambiguous: the files {text} and {spec.name} "
                          f"both exist; write {literal} for the first")
    return literal


def parse_file_list(text: str) -> list[FileSpec]:
    """Comma-separated file specs (at least one, no duplicates); an escaped comma is part of
    a name."""
    parts = re.findall(r"(?:[^,\\]|\\.?)+", text)  # a trailing lone \ stays, to be refused
    specs = [parse_file_spec(part) for part in parts if part.strip()]
    if not specs:
        raise ConfigError("no data file given")
    seen = set()
    for spec in specs:
        if str(spec) in seen:
            raise ConfigError(f"data file {spec} is listed twice")
        seen.add(str(spec))
    return specs
