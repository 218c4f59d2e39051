"""What README.md, docs/*.md and the deployment files' comments say about the code, checked.

Every default they state for a `squadft` flag is compared with the default the CLI really
uses (Config's for the generated flags, the option's own for the others). The forms used: the
configuration table (`| flag | env | default |`), a tracker-style table headed by the flag with
a "`value` (default)" row, and in prose "`--flag VALUE` (the default)", "--flag VALUE is the
default", "`--flag` (default VALUE)", "`--flag N`, default VALUE", "the default `--flag
VALUE`" and "`field/` (default `VALUE`)". Also: README examples and stated durations, and the
paths that the docs and the package's docstrings cite, which must exist in the repository.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import typer
from squadft.cli import app
from squadft.config import ENV_PREFIX, Config, default_cache_dir

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FIELDS = {f.name: f for f in dataclasses.fields(Config)}

_FLAG = r"(--[a-z][a-z0-9-]*)"
_PROSE = [
    # `--flag VALUE` (the default) / `--flag VALUE`, the default / **`--flag VALUE`** (the
    # default); in comments also --flag VALUE is the default
    re.compile(rf"`?{_FLAG} ([\w./$-]+)`?\**,? \(?(?:is )?the default\b"),
    # `--flag` (default VALUE / `--flag N`, default VALUE / `--flag` (default `VALUE`)
    re.compile(rf"`{_FLAG}(?: [A-Z][A-Z_]*)?`,? \(?default:? `?([^`,;)\s]+)`?"),
    # the default `--flag VALUE`
    re.compile(rf"the default `{_FLAG} ([^`]+)`"),
    # `output_dir/` (default `output/`): a Config field by name
    re.compile(r"`([a-z][a-z0-9_]*)/?` \(default `([^`]+)`\)"),
]


def documented_defaults() -> list[tuple[str, str, str]]:
    """(where, flag, documented default) for every default the docs state."""
    claims: list[tuple[str, str, str]] = []
    for path in [*DOCS, *sorted(REPO.glob("k8s/*.yaml")), *sorted(REPO.glob("slurm/*.sh"))]:
        name = path.relative_to(REPO).as_posix()
        lines = path.read_text().splitlines()
        prose = " ".join(line.strip() for line in lines)
        for pattern in _PROSE:
            for match in pattern.finditer(prose):
                flag, value = match.groups()
                if not flag.startswith("--"):
                    if flag not in FIELDS:
                        continue
                    flag, value = "--" + flag.replace("_", "-"), value.rstrip("/")
                claims.append((name, flag, value))
        claims += _table_claims(name, lines)
    return claims


def _table_claims(name: str, lines: list[str]) -> list[tuple[str, str, str]]:
    claims = []
    header: list[str] = []
    for line in lines:
        if not line.startswith("|"):
            header = []
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header:
            header = cells
        elif set("".join(cells)) <= set("-: "):
            continue
        elif header[:3] == ["flag", "env", "default"]:
            claims.append((name, cells[0].strip("`"), cells[2].strip("`")))
        elif re.fullmatch(rf"`{_FLAG}`", header[0]) and cells[0].endswith(" (default)"):
            claims.append((name, header[0].strip("`"), cells[0].removesuffix(" (default)")
                           .strip("`")))
    return claims


def real_defaults() -> dict[str, list[object]]:
    """flag -> the defaults it has in the commands that take it."""
    defaults: dict[str, list[object]] = {}
    commands = list(typer.main.get_command(app).commands.values())
    for command in commands:
        commands += getattr(command, "commands", {}).values()  # a group's own commands
        for param in command.params:
            setting = re.search(rf"\[env {ENV_PREFIX}(\w+); default: ", getattr(param, "help", "")
                                or "")
            value = FIELDS[setting.group(1).lower()].default if setting else param.default
            for opt in param.opts:
                defaults.setdefault(opt, []).append(value)
    return defaults


def same(documented: str, real: object) -> bool:
    if "$XDG_CACHE_HOME" in documented:  # the cache directory's documented form
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        documented = documented.replace("$XDG_CACHE_HOME", xdg)
    if real is None:
        return documented == "none"
    if isinstance(real, bool):
        return documented == str(real)
    if isinstance(real, int | float):
        try:
            return float(documented) == float(real)
        except ValueError:
            return False
    return documented == str(real)


def test_every_documented_flag_default_is_the_code_s() -> None:
    defaults = real_defaults()
    claims = documented_defaults()
    drift = []
    for where, flag, value in claims:
        if flag not in defaults:
            drift.append(f"{where}: {flag} is not a squadft flag")
        elif not any(same(value, real) for real in defaults[flag]):
            drift.append(f"{where}: {flag} documented default {value!r}, code {defaults[flag]}")
    assert drift == []
    # Not vacuous: the table, each prose form and the tracker table were all read.
    assert len({flag for where, flag, _ in claims if where == "README.md"}) >= len(FIELDS)
    assert {"--errors", "--cache-dir", "--calibration-fraction", "--null-threshold",
            "--resume", "--device", "--output-dir", "--report-to",
            "--answerability-loss-weight"} <= {flag for _, flag, _ in claims}
    assert default_cache_dir() == Config().cache_dir


@pytest.mark.parametrize("text,expected", [
    ("`--errors N`, default 7", ("--errors", "7")),
    ("uses `--device cpu` (the default) here", ("--device", "cpu")),
    ("# resumed (--resume never is the default).", ("--resume", "never")),
    ("`--seed`\n  (default 3, always)", ("--seed", "3")),
    ("`--cache-dir` (default `/x`) holds", ("--cache-dir", "/x")),
    ("lands in the default `--output-dir out` there", ("--output-dir", "out")),
    ("`output_dir/` (default `runs/`):", ("--output-dir", "runs")),
    ("| `--report-to` | needs |\n|---|---|\n| `none` (default) | x |", ("--report-to", "none")),
])
def test_the_check_reads_each_form_and_catches_a_wrong_default(
    text: str, expected: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(f"intro\n\n{text}\n")
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    monkeypatch.setitem(globals(), "DOCS", [tmp_path / "README.md"])
    claims = documented_defaults()
    assert claims == [("README.md", *expected)]
    flag, value = expected
    assert not any(same(value, real) for real in real_defaults()[flag])


# --- README examples and facts ------------------------------------------------------------


def test_readme_evaluate_example_fetches_its_local_data_file_first() -> None:
    """`squadft evaluate --data X` reads X as a path, never from the download cache: every
    README example on a bare file name downloads that file (from the default source) first."""
    from tests.deploy.test_dockerfile import _documented_commands

    commands = _documented_commands(REPO / "README.md")
    fetched: set[str] = set()
    checked = 0
    for argv in commands:
        if argv[0] in ("curl", "wget"):
            (url,) = [a for a in argv[1:] if "://" in a]
            assert url.startswith(Config().source), url
            fetched.add(url.rsplit("/", 1)[1])
        elif argv[:2] == ["squadft", "evaluate"]:
            data = argv[argv.index("--data") + 1]
            if "/" not in data and not data.startswith("<"):
                assert data.split("[")[0] in fetched, " ".join(argv)
                checked += 1
    assert checked >= 1


@pytest.mark.slow
def test_evaluate_reads_the_path_pull_prints_and_no_cache_lookup(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The README's way to evaluate on the cached dev file: the path `squadft pull` prints.
    The bare name, with that file in the cache but not in the working directory, is an
    error naming it (exit 3), not a cache hit."""
    import subprocess
    import sys

    from tests.conftest import SAMPLE_DIR

    env = {**os.environ, "SQUADFT_CACHE_DIR": str(tmp_path / "cache"),
           "SQUADFT_SOURCE": SAMPLE_DIR.as_uri(), "SQUADFT_DEV_FILE": "dev-v2.0-first12.json.gz",
           "SQUADFT_TRAIN_FILE": "train-v2.0-first10.json.gz"}
    work = tmp_path / "work"
    work.mkdir()

    def squadft(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "squadft", *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)

    pulled = squadft("pull")
    assert pulled.returncode == 0, pulled.stderr
    (line,) = [x for x in pulled.stdout.splitlines() if x.startswith("squadft: dev: ")]
    cached = line.removeprefix("squadft: dev: ").split(" (")[0]
    assert Path(cached).is_file() and str(tmp_path / "cache") in cached

    flags = ["--model", str(tiny_model_dir), "--max-eval-samples", "8", "--max-seq-length",
             "128", "--doc-stride", "48", "--precision", "fp32", "--device", "cpu"]
    bare = squadft("evaluate", "--data", "dev-v2.0-first12.json.gz", *flags)
    assert bare.returncode == 3, bare.stderr
    (error,) = [x for x in bare.stderr.splitlines() if "error" in x]
    assert "dev-v2.0-first12.json.gz" in error and "Traceback" not in bare.stderr

    result = squadft("evaluate", "--data", cached, *flags)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("8 questions at null threshold 0")


def _minutes_near(text: str, word: str) -> list[int]:
    """The minutes stated within a few words after each mention of `word`."""
    text = " ".join(text.split())
    return [int(m.group(1)) for m in re.finditer(
        rf"{re.escape(word)}\W[^.]{{0,60}}?(\d+) min", text)]


def test_minilm_cpu_duration_is_the_measured_one_everywhere() -> None:
    # docs/ACCURACY.md's run 1 is `--preset minilm-cpu` as shipped; its wall time is the one
    # the README and the preset's docstring may state (49-50 minutes).
    accuracy = (REPO / "docs" / "ACCURACY.md").read_text()
    (row,) = [x for x in accuracy.splitlines() if x.startswith("| 1: QA loss (the preset) |")]
    minutes, seconds = map(int, re.search(r"(\d+) min (\d+) s \|$", row).groups())
    measured = minutes + seconds / 60
    config = (REPO / "job" / "squadft" / "config.py").read_text()
    stated = _minutes_near((REPO / "README.md").read_text(), "minilm-cpu")
    stated += _minutes_near(config, "minilm-cpu:")
    assert len(stated) >= 2, stated
    for value in stated:
        assert abs(value - measured) <= 1, (value, measured)
    assert _minutes_near("`--preset minilm-cpu`: ~40 min on 2 cores", "minilm-cpu") == [40]


# --- paths the docs cite --------------------------------------------------------------------

_IGNORED = {line.strip().strip("/") for line in (REPO / ".gitignore").read_text().splitlines()}
_TOP = sorted(p.name for p in REPO.iterdir()
              if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED)
# a path under a top-level directory of the repository or outside it (../), or any relative
# path to a source or document file (train/checkpoint.py, notes/interfaces.md)
_CITED = re.compile(r"(?<![\w./$<~:-])((?:\.\./|\.ci/|(?:" + "|".join(map(re.escape, _TOP))
                    + r")/)[\w./*-]*[\w/]|[\w-]+(?:/[\w.-]+)+\.(?:py|md|ya?ml|sh|toml|txt))\b/?")


def cited_paths(text: str) -> list[str]:
    return [m.group(0) for m in _CITED.finditer(text)]


def resolves(cited: str, source: Path) -> bool:
    """A cited path exists relative to the repository, the package or the citing file."""
    if cited.startswith("../"):
        return False
    if re.fullmatch(r"job/[\w-]+", cited) and not cited.startswith("job/squadft/"):
        return True  # kubectl's job/NAME, not a directory
    bases = [REPO, REPO / "job" / "squadft", REPO / "job", source.parent]
    return any(any(base.glob(cited)) for base in bases)


def test_paths_cited_in_the_docs_and_docstrings_exist_in_the_repository() -> None:
    sources = [*DOCS, *sorted((REPO / "job" / "squadft").rglob("*.py")),
               *sorted((REPO / "k8s").glob("*.yaml")), REPO / "Dockerfile"]
    missing = []
    for path in sources:
        for cited in cited_paths(path.read_text()):
            if not resolves(cited, path):
                missing.append(f"{path.relative_to(REPO)}: {cited}")
        if path.suffix == ".md":  # relative link targets, from the document's folder
            for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", path.read_text()):
                if not (path.parent / target).exists():
                    missing.append(f"{path.relative_to(REPO)}: link {target}")
    assert missing == []


def test_cited_path_check_sees_outside_and_missing_paths() -> None:
    text = ("samples (`job/squadft/data/sample/`, identical to `../shared/squad/`); the format "
            "in notes/interfaces.md and train/checkpoint.py; see docs/DEPLOY.md.")
    assert cited_paths(text) == ["job/squadft/data/sample/", "../shared/squad/",
                                 "notes/interfaces.md", "train/checkpoint.py", "docs/DEPLOY.md"]
    source = REPO / "job" / "squadft" / "storage" / "manifest.py"
    assert [resolves(c, source) for c in cited_paths(text)] == [True, False, False, True, True]
