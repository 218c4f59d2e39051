"""In-process runs of the real pipeline on a few hundred real SQuAD questions (tiny model)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from squadft.config import Config
from squadft.errors import ModelLoadError, OutOfMemory, StorageError
from squadft.flows import preparation, training
from squadft.runtime.distributed import setup_distributed
from squadft.storage.manifest import verify_manifest
from squadft.train.loop import train_model

from tests.train.common import (
    ADAM_COMPARABLE,
    load_weights,
    max_weight_difference,
    read_metrics,
    step_losses,
)


def test_loss_falls_and_final_model_loads_without_squadft(tiny_settings: Any) -> None:
    settings = tiny_settings(max_steps=40, save_steps=15, save_total_limit=1, do_eval=True,
                             logging_steps=2)
    result = training.train(Config(**settings))
    out = Path(settings["output_dir"])
    losses = [m["loss"] for m in read_metrics(out)]
    assert len(losses) == 20 and result.steps == 40
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.4, losses
    metrics = {m["step"]: m for m in read_metrics(out)}
    assert metrics[4]["lr"] == pytest.approx(1e-3)  # peak after 4 warmup steps (10% of 40)
    assert metrics[40]["lr"] == pytest.approx(1e-3 / 36)  # then linear decay
    assert metrics[40]["tokens_per_s"] > 0 and metrics[40]["grad_norm"] > 0
    # checkpoints at 15, 30 and the end; only the newest survives save_total_limit=1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-40"]
    assert verify_manifest(out / "checkpoint-40") and verify_manifest(out / "final")
    assert json.loads((out / "train_results.json").read_text())["steps"] == 40
    assert "exact" in json.loads((out / "eval_results.json").read_text())
    saved = json.loads((out / "final" / "squadft_config.json").read_text())
    assert saved["max_steps"] == 40
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    model = AutoModelForQuestionAnswering.from_pretrained(out / "final")
    assert len(tokenizer) == 30522
    trained = load_weights(out / "final")
    assert max_weight_difference(trained, {k: v for k, v in model.state_dict().items()}) == 0


def _steps_in_memory(settings: dict[str, Any], steps: int) -> tuple[list[float], dict]:
    """`steps` optimizer steps of the product's Trainer.train_step, in this process, from the
    same initial weights: (the loss of each step, the weights after)."""
    from squadft.modeling import load_model, load_tokenizer
    from squadft.train.checkpoint import seed_everything
    from squadft.train.loop import Trainer, batches_from
    from squadft.train.tracking import MetricsLogger

    cfg = Config(**settings)
    features = preparation.prepare(cfg, splits=("train",), verbose=False).train.features
    seed_everything(cfg.seed)  # the QA head starts the same in both runs
    model = load_model(cfg.model)
    trainer = Trainer(cfg, model, load_tokenizer(cfg.model), features,
                      setup_distributed({}, device="cpu"),
                      metrics=MetricsLogger(cfg, enabled=False))
    data = batches_from(trainer.loader, trainer.sampler, 0, 0)
    model.train()
    losses = []
    for _ in range(steps):
        trainer.train_step(data)
        losses.append(float(trainer.step_loss))
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_gradient_accumulation_matches_the_large_batch(tiny_settings: Any) -> None:
    common = {"max_steps": 3, "length_bucketing": False, **ADAM_COMPARABLE}
    big_losses, big = _steps_in_memory(tiny_settings("big", batch_size=8, **common), 3)
    acc_losses, accumulated = _steps_in_memory(
        tiny_settings("accum", batch_size=4, grad_accum_steps=2, **common), 3)
    assert max_weight_difference(big, accumulated) < 1e-5
    assert acc_losses == pytest.approx(big_losses, abs=1e-5)
    # and the steps did train: the weights moved and the losses differ from step to step
    initial = _steps_in_memory(tiny_settings("none", batch_size=8, **common), 0)[1]
    assert max_weight_difference(big, initial) > 1e-3
    assert len(set(big_losses)) == 3


def test_resume_skips_incomplete_and_corrupt_checkpoints(
    tiny_settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tiny_settings(max_steps=6, save_steps=2, save_total_limit=0)
    training.train(Config(**settings))
    out = Path(settings["output_dir"])
    reference_losses = step_losses(out)
    reference = load_weights(out / "final")
    (out / "checkpoint-6" / "manifest.json").unlink()  # as if killed while writing it
    (out / "finished.json").unlink()  # (so the run never finished)
    optimizer = out / "checkpoint-4" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:-10])  # truncated by a full disk
    capsys.readouterr()

    result = training.train(Config(**settings))
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "checkpoint-6: no manifest.json" in err
    assert "checkpoint-4: optimizer.pt has" in err
    assert result.resumed_from == str(out / "checkpoint-2")
    assert step_losses(out) == reference_losses  # steps 3-6 re-logged, identical
    assert max_weight_difference(load_weights(out / "final"), reference) == 0
    assert verify_manifest(out / "checkpoint-6") and verify_manifest(out / "checkpoint-4")


def test_resume_with_another_model_is_refused_and_changed_settings_are_listed(
    tiny_settings: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from squadft.cli import app
    from typer.testing import CliRunner

    from tests.train.common import cli_flags

    settings = tiny_settings(max_steps=2, save_steps=2)
    training.train(Config(**settings))
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    result = CliRunner().invoke(app, ["train", *cli_flags({**settings, "model": str(other),
                                                           "max_steps": 3})])
    assert result.exit_code == 2, result.output
    assert f"trained from model {tiny_model_dir}" in result.stderr
    assert f"this run uses --model {other}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (Path(settings["output_dir"]) / "checkpoint-3").exists()

    # the same model spelt another way resumes; changed hyper-parameters are named
    spelt = str(tiny_model_dir) + "/."
    result = CliRunner().invoke(app, ["train", *cli_flags(
        {**settings, "model": spelt, "max_steps": 3, "learning_rate": 5e-4})])
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.stderr.splitlines() if "changed settings" in line)
    assert "learning_rate: 0.001 -> 0.0005" in warning and "max_steps: 2 -> 3" in warning
    assert "batch_size" not in warning


def test_unknown_model_and_unwritable_output(tiny_settings: Any, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="pass a local save_pretrained directory"):
        training.train(Config(**tiny_settings(model="no-such-org/no-such-model")))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StorageError, match="cannot write"):
        training.train(Config(**tiny_settings(output_dir=str(blocker / "out"))))


class RunsOutOfMemory(torch.nn.Module):
    """Fault injection: a real CPU cannot run out of GPU memory on demand."""

    def __init__(self, model: torch.nn.Module, fail_on_call: int,
                 error: Exception | None = None) -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self.fail_on_call = fail_on_call
        self.error = error or torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB")

    def forward(self, **batch: torch.Tensor) -> Any:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise self.error
        return self.model(**batch)

    def save_pretrained(self, directory: Path) -> None:
        self.model.save_pretrained(directory)


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    # what cuBLAS raises when it cannot get its workspace: a RuntimeError, same cause
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously "
                 "reported"),
], ids=["OutOfMemoryError", "cublas", "cuda-error"])
def test_out_of_memory_keeps_the_last_step_and_suggests_smaller_batches(
    tiny_settings: Any, tiny_model_dir: Path, error: Exception
) -> None:
    from squadft.modeling import load_model, load_tokenizer

    cfg = Config(**tiny_settings(max_steps=10))
    data = preparation.prepare(cfg, splits=("train",), verbose=False)
    model = RunsOutOfMemory(load_model(str(tiny_model_dir)), fail_on_call=4, error=error)
    with pytest.raises(OutOfMemory, match="smaller --batch-size .* --grad-accum-steps"):
        train_model(cfg, model, load_tokenizer(str(tiny_model_dir)), data.train.features,
                    setup_distributed({}))
    out = Path(cfg.output_dir)
    assert verify_manifest(out / "checkpoint-3")
    assert not (out / "final").exists()


def test_other_runtime_errors_are_not_called_out_of_memory(
    tiny_settings: Any, tiny_model_dir: Path
) -> None:
    from squadft.modeling import load_model, load_tokenizer

    cfg = Config(**tiny_settings(max_steps=10))
    data = preparation.prepare(cfg, splits=("train",), verbose=False)
    model = RunsOutOfMemory(load_model(str(tiny_model_dir)), fail_on_call=2,
                            error=RuntimeError("CUDA error: device-side assert triggered"))
    with pytest.raises(RuntimeError, match="device-side assert"):
        train_model(cfg, model, load_tokenizer(str(tiny_model_dir)), data.train.features,
                    setup_distributed({}))


def test_answerability_loss_adds_a_cross_entropy_on_the_null_score_difference() -> None:
    import torch
    from squadft.train.loop import qa_loss

    from tests.helpers import make_tiny_model

    model = make_tiny_model()
    torch.manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 2000, (3, 12)),
        "attention_mask": torch.tensor([[1] * 12, [1] * 9 + [0] * 3, [1] * 7 + [0] * 5]),
        "start_positions": torch.tensor([0, 4, 0]),  # windows 0 and 2 are unanswerable
        "end_positions": torch.tensor([0, 6, 0]),
    }
    with torch.no_grad():
        plain = qa_loss(model, batch)
        assert qa_loss(model, batch, 0.0) == plain
        weighted = qa_loss(model, batch, 0.5)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    diffs, targets = [], [1.0, 0.0, 1.0]
    for row, length in enumerate((12, 9, 7)):
        start, end = out.start_logits[row, :length], out.end_logits[row, :length]
        diffs.append(float(start[0] + end[0] - start[1:].max() - end[1:].max()))
    expected = sum(math.log1p(math.exp(-d)) if t else math.log1p(math.exp(d))
                   for d, t in zip(diffs, targets, strict=True)) / 3
    assert float(weighted) == pytest.approx(float(plain) + 0.5 * expected, rel=1e-5)


def test_ddp_wrapper_does_not_broadcast_buffers_before_each_forward(tmp_path: Path) -> None:
    """DistilBERT's position_ids buffer is a constant: no broadcast per synced forward."""
    import warnings

    import torch.distributed as dist
    from squadft.train.loop import wrap_ddp

    from tests.helpers import make_tiny_model

    model = make_tiny_model()
    assert any(name.endswith("position_ids") for name, _ in model.named_buffers())
    ids = torch.randint(1000, 2000, (2, 10))
    with torch.no_grad():
        expected = model(input_ids=ids).start_logits
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1),
                            rank=0, world_size=1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ddp = wrap_ddp(model, torch.device("cpu"))
        assert ddp.module is model and ddp.device_ids is None
        assert ddp.broadcast_buffers is False
        assert ddp.require_forward_param_sync  # a forward that syncs gradients...
        assert not ddp.will_sync_module_buffers()  # ...and does not broadcast the buffers
        # torch >= 2.13 deprecates the broadcast_buffers argument: not passed where it does
        assert not [w for w in caught if "broadcast_buffers" in str(w.message)]
        with torch.no_grad():
            torch.testing.assert_close(ddp(input_ids=ids).start_logits, expected)
    finally:
        dist.destroy_process_group()


# --- signals during the last upload ----------------------------------------------------------

_DRAIN_SCRIPT = """
import os, signal, sys
from squadft.errors import Preempted
from squadft.runtime.preemption import PreemptionWatcher

watcher = PreemptionWatcher().install()
watcher.trained(5)
if sys.argv[1] == "stopping":
    try:
        raise watcher.stop(Preempted("stopped at step 5"))
    except Preempted:
        with watcher.draining("upload to s3://bucket/run", then_stop=False):
            # torchrun's follow-up TERM once a peer has exited 75, and one more
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            print("upload finished", flush=True)
        sys.exit(75)
else:
    try:
        with watcher.draining("upload of final/ to s3://bucket/run"):
            os.kill(os.getpid(), signal.SIGTERM)
            print("upload finished", flush=True)
        print("went on to evaluate", flush=True)
    except Preempted as exc:
        print(f"preempted: {exc}", flush=True)
        sys.exit(75)
"""


@pytest.mark.parametrize("phase", ["stopping", "after training"])
def test_a_signal_during_the_last_upload_lets_it_finish(phase: str) -> None:
    """Old behaviour: a second signal while stopping exited at once (os._exit), and one after
    training raised in the middle of the upload: the bucket lost the checkpoint."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _DRAIN_SCRIPT, phase], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 75, done.stderr
    assert "upload finished" in done.stdout
    assert "SIGTERM during the upload" in done.stderr and "finishing it first" in done.stderr
    assert "went on to evaluate" not in done.stdout
    if phase == "after training":
        # then it stops, as the signal asked, saying what is saved
        assert "preempted: stopped by SIGTERM during the upload of final/" in done.stdout
        assert "checkpoint-5 is complete" in done.stdout


# --- non-finite steps: skipped and counted, too many in a row stop the run -------------------


def poison_logits(model: torch.nn.Module, calls: set[int]) -> None:
    """Fault injection: the forward calls numbered in `calls` (from 1) return NaN start logits,
    so that their loss and, through backward, their gradients are NaN, as in a diverged run."""
    count = [0]

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        count[0] += 1
        if count[0] in calls:
            output.start_logits = output.start_logits * math.nan
        return output

    model.register_forward_hook(hook)


def _trainer(cfg: Config, bad_calls: set[int]) -> tuple[Any, Any]:
    from squadft.modeling import load_model, load_tokenizer
    from squadft.train.loop import Trainer, batches_from
    from squadft.train.tracking import MetricsLogger

    features = preparation.prepare(cfg, splits=("train",), verbose=False).train.features
    model = load_model(cfg.model)
    poison_logits(model, bad_calls)
    trainer = Trainer(cfg, model, load_tokenizer(cfg.model), features,
                      setup_distributed({}, device="cpu"),
                      metrics=MetricsLogger(cfg, enabled=False))
    model.train()
    return trainer, batches_from(trainer.loader, trainer.sampler, 0, 0)


def _snapshot(trainer: Any) -> tuple[dict, dict]:
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    moments = {(i, key): value.detach().clone()
               for i, state in trainer.optimizer.state.items() for key, value in state.items()}
    return weights, moments


@pytest.mark.parametrize("optimizer", ["fused", "unfused", "fp16-scaler"])
def test_a_step_with_a_non_finite_loss_changes_nothing_and_is_counted(
    tiny_settings: Any, optimizer: str
) -> None:
    from squadft.errors import TrainingDiverged

    cfg = Config(**tiny_settings(max_steps=20, max_skipped_steps=3))
    trainer, data = _trainer(cfg, bad_calls={2, 4, 5, 7, 8, 9})
    if optimizer == "unfused":  # as resumed from a checkpoint saved without fused AdamW
        for group in trainer.optimizer.param_groups:
            group["fused"] = None
    if optimizer == "fp16-scaler":  # the fp16 path's GradScaler, on the CPU
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    losses = []

    def step() -> None:
        trainer.train_step(data)
        losses.append(float(trainer.step_loss))

    step()  # 1: a normal step
    before = _snapshot(trainer)
    step()  # 2: NaN loss: nothing moves, not even Adam's step count or moments
    after = _snapshot(trainer)
    assert math.isnan(losses[-1]) and math.isnan(float(trainer.grad_norm))
    assert max_weight_difference(before[0], after[0]) == 0
    assert before[1].keys() == after[1].keys()
    assert all(torch.equal(before[1][k], after[1][k]) for k in before[1])
    step()  # 3: trains again
    assert max_weight_difference(after[0], _snapshot(trainer)[0]) > 0
    trainer.check_skipped()
    assert trainer.state.skipped_steps == 1 and trainer.state.step == 3
    trainer.log()  # the window's loss is the mean of the steps that were not skipped
    assert trainer.state.loss_history[-1] == (3, pytest.approx((losses[0] + losses[2]) / 2))
    for _ in range(3):
        step()  # 4, 5 skipped: two in a row, under the limit of 3; 6 trains
    trainer.check_skipped()
    assert trainer.state.skipped_steps == 3
    for _ in range(3):
        step()  # 7, 8, 9: three in a row
    with pytest.raises(TrainingDiverged, match="not finite for 3 optimizer steps in a row "
                       r"\(--max-skipped-steps 3\), by step 9"):
        trainer.check_skipped()
    assert trainer.state.skipped_steps == 6
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())


def test_an_infinite_loss_is_skipped_even_when_its_gradients_are_finite(
    tiny_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cross-entropy's gradient does not depend on the loss's value, so an infinite loss can
    come with finite gradients; the step is skipped all the same (and under DDP on every
    rank, as the gradients it poisons are all-reduced)."""
    from squadft.train import loop

    real = loop.qa_loss
    calls: list[int] = []

    def infinite_once(*args: Any, **kwargs: Any) -> torch.Tensor:
        loss = real(*args, **kwargs)
        calls.append(1)
        return loss + (math.inf - loss.detach()) if len(calls) == 2 else loss

    monkeypatch.setattr(loop, "qa_loss", infinite_once)
    trainer, data = _trainer(Config(**tiny_settings(max_steps=5)), bad_calls=set())
    trainer.train_step(data)
    before = _snapshot(trainer)
    trainer.train_step(data)
    assert float(trainer.step_loss) == math.inf
    assert max_weight_difference(before[0], _snapshot(trainer)[0]) == 0
    trainer.check_skipped()
    assert trainer.state.skipped_steps == 1


def test_nan_weights_are_never_saved_as_final(tiny_settings: Any) -> None:
    """Even when no step was skipped (here the weights turn NaN right after the last update),
    neither the last checkpoint nor final/ is written from them."""
    from squadft.errors import TrainingDiverged
    from squadft.runtime.preemption import PreemptionWatcher

    cfg = Config(**tiny_settings(max_steps=3))
    trainer, _ = _trainer(cfg, bad_calls=set())
    steps: list[int] = []

    def corrupt(optimizer: Any, args: Any, kwargs: Any) -> None:
        steps.append(1)
        if len(steps) == 3:
            trainer.model.qa_outputs.weight.data.fill_(math.nan)

    trainer.optimizer.register_step_post_hook(corrupt)
    trainer.resume()
    with PreemptionWatcher() as watcher, pytest.raises(
            TrainingDiverged, match="the weights are not finite at step 3; no checkpoint and no "
                                    "final/ written"):
        trainer.train(watcher)
    assert trainer.state.skipped_steps == 0
    out = Path(cfg.output_dir)
    assert not (out / "final").exists() and not list(out.glob("checkpoint-*"))


def test_an_absurd_learning_rate_exits_8_and_writes_no_final(tiny_settings: Any) -> None:
    """`squadft train --learning-rate 1e12`: NaN from the second step on. Every such step is
    skipped; the tenth in a row stops the run with exit 8 and one line, before final/."""
    from safetensors.torch import load_file
    from squadft.errors import EXIT_DIVERGED

    from tests.train.common import run, squadft_command

    settings = tiny_settings(max_steps=40, learning_rate=1e12, save_steps=5)
    done = run(squadft_command(settings))
    assert done.returncode == EXIT_DIVERGED == 8, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == ["squadft: error: training diverged: the loss or gradient norm was not "
                      "finite for 10 optimizer steps in a row (--max-skipped-steps 10), by step "
                      "11; those updates were skipped and final/ was not written; lower "
                      "--learning-rate (now 1e+12)"]
    out = Path(settings["output_dir"])
    assert not (out / "final").exists() and not (out / "train_results.json").exists()
    records = read_metrics(out)
    assert [r.get("skipped_steps", 0) for r in records] == [0, *range(1, 10)]
    assert records[0]["loss"] > 0 and all(math.isnan(r["loss"]) for r in records[1:])
    for checkpoint in out.glob("checkpoint-*"):  # 5 and 10: written from finite weights
        assert verify_manifest(checkpoint)
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(v).all() for v in weights.values()), checkpoint.name
