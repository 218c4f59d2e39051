"""Data file specs, as --train-file, --dev-file, --calibration-file and `evaluate --data`
take them: `name` or `name[a:b]`, a Python slice over the file's *articles* (like the
`split="train[:10]"` slicing of Hugging Face datasets, but by article, so a slice never cuts a
paragraph's questions apart); --train-file takes several, comma-separated.

Parsed when the Config is validated (a bad spec fails before any work), and by the data stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from squadft.errors import ConfigError

_SPEC = re.compile(r"^(?P<name>[^\[\]]+?)(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


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

    def __str__(self) -> str:
        if not self.sliced:
            return self.name
        return f"{self.name}[{'' if self.start is None else self.start}:" \
               f"{'' if self.stop is None else self.stop}]"


def parse_file_spec(text: str) -> FileSpec:
    """`name`, `name[a:b]`, `name[:b]` or `name[a:]` (article indices, negative from the end)."""
    match = _SPEC.match(text.strip())
    if match is None:
        raise ConfigError(f"invalid data file {text!r}: expected NAME or NAME[START:STOP] "
                          "(a slice of its articles, e.g. dev-v2.0.json[:8])")

    def bound(value: str | None) -> int | None:
        return int(value) if value not in (None, "", "-") else None

    if match["start"] == "-" or match["stop"] == "-":
        raise ConfigError(f"invalid article slice in {text!r}")
    return FileSpec(match["name"].strip(), bound(match["start"]), bound(match["stop"]))


def parse_file_list(text: str) -> list[FileSpec]:
    """Comma-separated file specs (at least one, no duplicates)."""
    specs = [parse_file_spec(part) for part in text.split(",") if part.strip()]
    if not specs:
        raise ConfigError("no data file given")
    seen = set()
    for spec in specs:
        if str(spec) in seen:
            raise ConfigError(f"data file {spec} is listed twice")
        seen.add(str(spec))
    return specs
