"""Data file names with `,`, `[`, `]` or `\\` in them: backslash escapes in every file spec, and
`--data PATH` (a local file) also taken as it is written when that file exists."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from squadft.errors import ConfigError
from squadft.filespec import FileSpec, parse_file_list, parse_file_spec, parse_local_spec


def test_escaped_commas_and_brackets_are_part_of_the_name() -> None:
    specs = parse_file_list(r"a\,b.json, c\[v2\].json[:3] ,back\\slash\\,d.json")
    assert specs == [FileSpec("a,b.json"), FileSpec("c[v2].json", None, 3),
                     FileSpec("back\\slash\\"), FileSpec("d.json")]
    # printed as it is written: each one reads back as itself, alone or in a list
    assert [parse_file_spec(str(spec)) for spec in specs] == specs
    assert parse_file_list(",".join(map(str, specs))) == specs
    assert str(FileSpec("train-v2.0.json", 8, None)) == "train-v2.0.json[8:]"  # plain: as before
    assert parse_file_list(r"x.json[:2],x.json\[:2\]") == [FileSpec("x.json", None, 2),
                                                           FileSpec("x.json[:2]")]


@pytest.mark.parametrize(("text", "problem"), [
    ("c[v2].json", r"invalid data file 'c\[v2\]\.json'"),
    ("c[1:2].json", r"invalid data file"),
    (r"a\b.json", r"invalid data file"),
    ("a.json\\", r"invalid data file"),
])
def test_an_unescaped_bracket_or_a_stray_backslash_is_one_line_naming_the_escapes(
    text: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as error:
        parse_file_spec(text)
    message = str(error.value)
    assert "\n" not in message and r"\[" in message and r"\," in message


def test_local_paths_are_taken_as_written_when_they_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("dev[v2].json", "dev,1.json", "dev.json", "dev.json[:2]", "d.json[1:]"):
        Path(name).write_text("{}")
    assert parse_local_spec("dev[v2].json") == FileSpec("dev[v2].json")
    assert parse_local_spec("dev,1.json") == FileSpec("dev,1.json")
    assert parse_local_spec(r"dev\[v2\].json[:2]") == FileSpec("dev[v2].json", None, 2)
    assert parse_local_spec("dev.json[1:]") == FileSpec("dev.json", 1, None)  # no such file
    assert parse_local_spec("d.json[1:]") == FileSpec("d.json[1:]")  # no file d.json
    with pytest.raises(ConfigError, match=r"ambiguous: .* write dev\.json\\\[:2\\\] for") as error:
        parse_local_spec("dev.json[:2]")  # both the file and a slice of dev.json exist
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="invalid data file"):
        parse_local_spec("missing[v2].json")


def test_pull_fetches_names_with_commas_and_brackets(tmp_path: Path, sample_dir: Path) -> None:
    """A real `squadft pull` from a file:// source whose files have awkward names."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(sample_dir / "train-v2.0-first10.json.gz", source / "train,[a].json.gz")
    shutil.copy(sample_dir / "dev-v2.0-first12.json.gz", source / "dev[1].json.gz")
    command = [sys.executable, "-m", "squadft", "pull", "--source", source.as_uri(),
               "--cache-dir", str(tmp_path / "cache"), "--dev-file", r"dev\[1\].json.gz[:2]"]
    done = subprocess.run([*command, "--train-file", r"train\,\[a\].json.gz"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train,[a].json.gz" in done.stdout and "dev[1].json.gz" in done.stdout
    done = subprocess.run([*command, "--train-file", "train,[a].json.gz"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("squadft: error: ") and "'[a].json.gz'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
