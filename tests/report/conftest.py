"""Run directories shared by the `squadft report` tests: built once for the package."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from squadft.report.page import write_report

from tests.report.builders import DEV_NAME, SCRIPT_QUESTION, make_run


@pytest.fixture(scope="package")
def source_dir(tmp_path_factory: pytest.TempPathFactory, dev_json: dict[str, Any]) -> Path:
    """Three real dev articles as a file:// source; article 0 lies outside DEV_FILE's slice."""
    directory = tmp_path_factory.mktemp("source")
    data = {"version": dev_json["version"], "data": copy.deepcopy(dev_json["data"][9:12])}
    qa = next(qa for qa in data["data"][1]["paragraphs"][0]["qas"] if qa["answers"])
    qa["question"] = SCRIPT_QUESTION
    qa["answers"][0]["text"] = qa["answers"][0]["text"] + " <i>&amp;</i>"
    with gzip.open(directory / DEV_NAME, "wt", encoding="utf-8") as handle:
        json.dump(data, handle)
    return directory


@pytest.fixture(scope="package")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory, source_dir: Path) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "run-a", source_dir)


@pytest.fixture(scope="package")
def evaluated_report(evaluated_run: Path) -> str:
    path, _ = write_report([evaluated_run])
    assert path == evaluated_run / "report.html"
    return path.read_text(encoding="utf-8")
