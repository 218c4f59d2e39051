"""bench/gpu_train.py on the CPU: the smoke run end to end, that its step is squadft's own
training step, and that what it switches on for speed (torch.compile, fused AdamW) leaves the
loss curve where the plain step puts it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / "bench"
if str(BENCH_DIR) not in sys.path:  # as `python bench/gpu_train.py` runs it
    sys.path.insert(0, str(BENCH_DIR))

import gpu_train  # noqa: E402

CPU = torch.device("cpu")
SEED = 42
# the smoke run's table, as docs/PERFORMANCE.md describes it
EXPECTED_COLUMNS = [
    "torch.compile", "batch", "timed steps", "windows/s", "real tokens/s", "model TFLOP/s",
    "MFU", "host syncs/step", "peak GiB", "pad share", "warm-up s", "s per 132k-window epoch",
]
# a learning rate at which a few steps move the loss, from the first step on
MOVING = {"learning_rate": 1e-3, "warmup_ratio": 0.0}


@pytest.fixture(scope="module")
def features() -> Any:
    """160 windows with the real window lengths of the bench's data (varied: the batches
    are padded, so a loss that counted padding would differ)."""
    lengths = json.loads(gpu_train.LENGTHS_FILE.read_text())["lengths"][:160]
    return gpu_train.synthetic_features(np.asarray(lengths), seed=0)


def tiny_model(dropout: float = 0.1) -> torch.nn.Module:
    config = gpu_train.distilbert_base_config(True, dropout=dropout, attention_dropout=dropout,
                                              qa_dropout=dropout)
    return gpu_train.new_model(config, SEED)


def bench_losses(path: Path, model: torch.nn.Module, features: Any, steps: int,
                 tokenizer: Any = None, **overrides: Any) -> tuple[list[float], Any]:
    """Losses of `steps` steps of the bench's runner (batch 8, no DataLoader workers)."""
    cfg = gpu_train.bench_config(path, 8, steps, num_workers=0, seed=SEED, **overrides)
    runner = gpu_train.build_runner(cfg, model, tokenizer or gpu_train.PadOnly(), features,
                                    CPU)
    losses = []
    try:
        for _ in range(steps):
            runner.step()
            losses.append(float(runner.trainer.step_loss))
    finally:
        runner.close()
    return losses, runner


def test_smoke_run_writes_the_table(tmp_path: Path) -> None:
    markdown = tmp_path / "gpu_train.md"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "gpu_train.py"), "--smoke",
                           "--markdown", str(markdown)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not recorded" in proc.stdout  # a smoke run never lands in docs/PERFORMANCE.md
    text = markdown.read_text()
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == EXPECTED_COLUMNS
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in lines[2:]]
    assert [(r["torch.compile"], r["batch"], r["timed steps"]) for r in rows] == [
        ("off", "4", "2"), ("off", "8", "2")]
    for row in rows:
        windows_per_s = float(row["windows/s"].replace(",", ""))
        tokens_per_s = float(row["real tokens/s"].replace(",", ""))
        assert windows_per_s > 0 and tokens_per_s > windows_per_s
        epoch = float(row["s per 132k-window epoch"].replace(",", ""))
        assert epoch == pytest.approx(132_000 / windows_per_s, rel=0.01)
        assert row["MFU"] == row["host syncs/step"] == row["peak GiB"] == "n/a"  # not a GPU
    assert "Trainer.train_step" in text and "precision fp32" in text
    assert "TINY smoke config" in text


def test_defaults_fit_one_short_gpu_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUT", "/somewhere/out")
    args = gpu_train.parse_args([])
    assert (args.batch_sizes, args.compile, args.steps, args.warmup) == ("32,64", "off", 30, 5)
    assert args.markdown == Path("/somewhere/out/gpu_train.md")
    monkeypatch.delenv("OUT")
    assert gpu_train.parse_args([]).markdown is None
    cfg = gpu_train.bench_config("/tmp/x", 64, 35)
    assert (cfg.max_seq_length, cfg.doc_stride, cfg.precision) == (384, 128, "auto")
    assert cfg.report_to == "none" and cfg.resume == "never" and cfg.save_steps > 35


def test_the_bench_steps_are_squadfts_training_steps(tmp_path: Path, features: Any,
                                                     bert_tokenizer: Any) -> None:
    """The bench's losses are those of squadft's own train_model on the same config."""
    from squadft.train.loop import DistributedContext, train_model
    from squadft.train.tracking import METRICS_FILE

    steps = 6
    ours, _ = bench_losses(tmp_path / "bench", tiny_model(), features, steps, bert_tokenizer,
                           **MOVING)
    cfg = gpu_train.bench_config(tmp_path / "product", 8, steps, num_workers=0, seed=SEED,
                                 logging_steps=1, **MOVING)
    train_model(cfg, tiny_model(), bert_tokenizer, features,
                DistributedContext(0, 0, 1, CPU, None))
    records = [json.loads(line) for line in (tmp_path / "product" / METRICS_FILE).open()]
    product = [r["loss"] for r in records if "loss" in r]
    assert len(product) == steps and len(set(ours)) == steps  # the loss moves every step
    assert ours == pytest.approx(product, rel=1e-6, abs=0)


def test_measure_times_trainer_train_step(tmp_path: Path, features: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Every warm-up and timed step is a Trainer.train_step; the row's windows and tokens are
    those the Trainer itself counted in the timed steps."""
    from squadft.train.loop import Trainer

    calls: list[int] = []
    original = Trainer.train_step

    def counting(self: Any, data: Any) -> None:
        calls.append(self.state.step)
        original(self, data)

    monkeypatch.setattr(Trainer, "train_step", counting)
    cfg = gpu_train.bench_config(tmp_path, 8, 5, num_workers=0, seed=SEED)
    model = tiny_model()
    runner = gpu_train.build_runner(cfg, model, gpu_train.PadOnly(), features, CPU)
    params, layers, hidden = gpu_train.matmul_parameters(model), 2, 32
    row = gpu_train.measure(runner, 2, 3, params=params, layers=layers, hidden=hidden,
                            compiled=False)
    runner.close()
    assert calls == [0, 1, 2, 3, 4] and runner.trainer.state.step == 5
    assert len(runner.batches) == 5
    warm, timed = runner.batches[:2], runner.batches[2:]
    counted = runner.trainer.window  # the Trainer's own tallies over all 5 steps
    assert row.windows + sum(len(b["input_ids"]) for b in warm) == counted["samples"]
    assert row.real_tokens + sum(int(b["attention_mask"].sum()) for b in warm) == \
        counted["tokens"]
    lengths = np.concatenate([b["attention_mask"].sum(dim=1).numpy() for b in timed])
    assert row.windows == len(lengths) == 24 and row.steps == 3
    assert row.model_flops == pytest.approx(
        float(np.sum(6 * params * lengths + 12 * layers * hidden * lengths.astype(float)**2)))
    assert row.padded_tokens == sum(b["attention_mask"].numel() for b in timed)
    assert row.syncs is None and row.peak_memory_gib is None and row.seconds > 0
    assert row.loss == float(runner.trainer.step_loss)


def test_fused_adamw_on_the_cpu_gives_the_unfused_loss_curve(
        tmp_path: Path, features: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = 8
    fused, fused_runner = bench_losses(tmp_path / "fused", tiny_model(), features, steps,
                                       **MOVING)
    assert fused_runner.trainer.optimizer.param_groups[0]["fused"] is True  # build_optimizer
    real_adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW",
                        lambda *args, **kwargs: real_adamw(*args, **{**kwargs, "fused": None}))
    plain, plain_runner = bench_losses(tmp_path / "plain", tiny_model(), features, steps,
                                       **MOVING)
    assert not plain_runner.trainer.optimizer.param_groups[0]["fused"]
    assert len(set(plain)) == steps
    assert fused == pytest.approx(plain, rel=1e-5)
    a, b = fused_runner.trainer.model.state_dict(), plain_runner.trainer.model.state_dict()
    # qa_outputs.bias: its gradient is rounding noise (see tests/train/common.ADAM_COMPARABLE)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if k != "qa_outputs.bias")
    assert worst < 1e-5


@pytest.mark.slow  # torch.compile (inductor, C++ kernels) takes 1-2 minutes on 2 cores
def test_compiled_model_gives_the_eager_loss_curve(tmp_path: Path, features: Any) -> None:
    from torch._dynamo.utils import counters

    steps = 4
    # no dropout: compiled code draws its own random masks
    eager, _ = bench_losses(tmp_path / "eager", tiny_model(dropout=0.0), features, steps,
                            **MOVING)
    torch._dynamo.reset()
    counters.clear()
    compiled_model = gpu_train.compile_model(tiny_model(dropout=0.0))
    compiled, runner = bench_losses(tmp_path / "compiled", compiled_model, features, steps,
                                    **MOVING)
    assert runner.trainer.forward_model is compiled_model
    assert counters["stats"]["unique_graphs"] >= 1  # it ran compiled, not in eager fallback
    assert len({len(b["input_ids"][0]) for b in runner.batches}) > 1  # several widths
    assert len(set(eager)) == steps
    assert compiled == pytest.approx(eager, rel=1e-4)
