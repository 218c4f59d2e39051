"""Logits from a tiny DistilBERT: batching/padding invariance, precision, and 2-process DDP."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from squadft.config import Config
from squadft.data.features import Features
from squadft.data.squad import Example
from squadft.evaluate.calibration import resolve_null_threshold
from squadft.evaluate.inference import PADDING_LOGIT, predict_logits
from squadft.runtime.precision import autocast_dtype, resolve_precision

from tests.evaluate.windows import build_windows
from tests.helpers import make_tiny_model

ZERO = resolve_null_threshold("auto", None)  # no calibration: 0


@pytest.fixture(scope="module")
def small_set(dev_subset_examples: list[Example], bert_tokenizer: Any
              ) -> tuple[list[Example], Features]:
    examples = dev_subset_examples[:40]
    return examples, build_windows(examples, bert_tokenizer, max_seq_length=128, doc_stride=48)


def test_logits_shape_padding_and_batch_invariance(small_set: tuple[list, Features]) -> None:
    _, features = small_set
    model = make_tiny_model()
    model.train()
    start, end = predict_logits(model, features, batch_size=16, device="cpu", precision="fp32")
    assert model.training  # the caller's mode is restored
    lengths = features.lengths
    assert start.shape == end.shape == (len(features), lengths.max())
    assert start.dtype == np.float32
    past_end = np.arange(start.shape[1])[None, :] >= lengths[:, None]
    assert past_end.any() and (start[past_end] == PADDING_LOGIT).all()
    assert (end[past_end] == PADDING_LOGIT).all()
    assert np.isfinite(start).all() and start[~past_end].std() > 0

    # One window at a time, no padding at all: the same logits (first 12 windows).
    few = features.select(np.arange(12))
    one_by_one_start, one_by_one_end = predict_logits(model, few, batch_size=1,
                                                      device="cpu", precision="fp32")
    width = one_by_one_start.shape[1]
    np.testing.assert_allclose(start[:12, :width], one_by_one_start, atol=1e-5)
    np.testing.assert_allclose(end[:12, :width], one_by_one_end, atol=1e-5)
    assert (start[:12, width:] == PADDING_LOGIT).all()

    # Straight from the model (DistilBERT: no token_type_ids) for window 3.
    window = features.window(3)
    with torch.no_grad():
        model.eval()
        out = model(input_ids=torch.from_numpy(window["input_ids"].astype(np.int64))[None])
    n = len(window["input_ids"])
    np.testing.assert_allclose(start[3, :n], out.start_logits[0].numpy(), atol=1e-5)


def test_bf16_autocast_runs_close_to_fp32(small_set: tuple[list, Features]) -> None:
    _, features = small_set
    model = make_tiny_model()
    start, _ = predict_logits(model, features, batch_size=32, device="cpu", precision="fp32")
    low, _ = predict_logits(model, features, batch_size=32, device="cpu", precision="bf16")
    assert low.dtype == np.float32
    assert np.abs(low - start).max() < 0.1
    assert autocast_dtype(resolve_precision("auto", torch.device("cpu"))) is None
    assert autocast_dtype(resolve_precision("fp16", torch.device("cpu"))) is torch.float16


def _real_columns(features: Features, logits: np.ndarray) -> np.ndarray:
    return logits[np.arange(logits.shape[1])[None, :] < features.lengths[:, None]]


def test_bf16_evaluation_computes_the_qa_head_in_fp32(small_set: tuple[list, Features]) -> None:
    """The encoder runs under bf16 autocast, the QA head in fp32: logits are not rounded to
    bfloat16 (no ties between span scores, fine null-score differences)."""
    _, features = small_set
    model = make_tiny_model()
    start, end = predict_logits(model, features, batch_size=32, device="cpu", precision="fp32")
    low_start, low_end = predict_logits(model, features, batch_size=32, device="cpu",
                                        precision="bf16")
    assert "forward" not in vars(model.qa_outputs)  # the head is itself again afterwards
    for exact, low in ((start, low_start), (end, low_end)):
        exact, low = _real_columns(features, exact), _real_columns(features, low)
        as_bf16 = torch.from_numpy(low).bfloat16().float().numpy()
        # a bf16 head gives only bfloat16 values (the old behaviour: all of them)
        assert (as_bf16 != low).mean() > 0.9
        assert np.abs(low - exact).max() < 0.01
        assert len(np.unique(low)) > 0.9 * len(np.unique(exact))


def test_bf16_evaluation_of_a_model_without_a_linear_qa_head(
    small_set: tuple[list, Features],
) -> None:
    """Any other head runs as it is, under autocast, and is left untouched."""
    _, features = small_set

    class Head(torch.nn.Module):
        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            self.linear = linear

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            return self.linear(hidden)

    model = make_tiny_model()
    start, _ = predict_logits(model, features, batch_size=32, device="cpu", precision="fp32")
    model.qa_outputs = Head(model.qa_outputs)
    low, _ = predict_logits(model, features, batch_size=32, device="cpu", precision="bf16")
    assert "forward" not in vars(model.qa_outputs)
    low, start = _real_columns(features, low), _real_columns(features, start)
    np.testing.assert_array_equal(torch.from_numpy(low).bfloat16().float().numpy(), low)
    assert np.abs(low - start).max() < 0.1


def _distributed_worker(rank: int, init_file: str, model_dir: str, features: Features,
                        examples: list[Example], out_dir: str) -> None:
    from squadft.flows.evaluation import calibrate_model, evaluate_model
    from squadft.modeling import load_model

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=2)
    try:
        torch.manual_seed(0)
        model = load_model(model_dir)
        start, end = predict_logits(model, features, batch_size=8, device="cpu",
                                    precision="fp32")
        np.save(Path(out_dir) / f"start-{rank}.npy", start)
        np.save(Path(out_dir) / f"end-{rank}.npy", end)
        cfg = Config(eval_batch_size=8, precision="fp32")
        metrics = evaluate_model(model, examples, features, cfg=cfg, threshold=ZERO,
                                 output_dir=Path(out_dir) / "eval", device="cpu")
        (Path(out_dir) / f"metrics-{rank}.json").write_text(json.dumps(metrics))
        calibration = calibrate_model(model, examples, features, cfg=cfg, device="cpu",
                                      source="test")
        (Path(out_dir) / f"calibration-{rank}.json").write_text(
            json.dumps(dataclasses.asdict(calibration)))
        torch.distributed.barrier()  # as the CLI does: no teardown while a peer is mid-collective
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_equals_single_process(
    small_set: tuple[list[Example], Features], tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch.multiprocessing as mp
    from squadft.flows.evaluation import calibrate_model, evaluate_model
    from squadft.modeling import load_model

    examples, features = small_set
    shared = tmp_path / "ddp"
    shared.mkdir()
    mp.spawn(_distributed_worker, nprocs=2, join=True,
             args=(str(tmp_path / "rendezvous"), str(tiny_model_dir), features, examples,
                   str(shared)))

    model = load_model(str(tiny_model_dir))
    start, end = predict_logits(model, features, batch_size=8, device="cpu", precision="fp32")
    gathered_start = np.load(shared / "start-0.npy")
    np.testing.assert_allclose(gathered_start, start, atol=1e-5)
    np.testing.assert_allclose(np.load(shared / "end-0.npy"), end, atol=1e-5)
    assert np.load(shared / "start-1.npy").shape == (0, start.shape[1])  # only rank 0 gathers

    cfg = Config(eval_batch_size=8, precision="fp32")
    single = evaluate_model(model, examples, features, cfg=cfg, threshold=ZERO,
                            output_dir=tmp_path / "single", device="cpu")
    calibration = dataclasses.asdict(calibrate_model(model, examples, features, cfg=cfg,
                                                     device="cpu", source="test"))
    # every rank gets the threshold rank 0 tuned on the gathered logits
    calibrated = [json.loads((shared / f"calibration-{r}.json").read_text()) for r in (0, 1)]
    assert calibrated[0] == calibrated[1]
    assert calibrated[0]["null_threshold"] == pytest.approx(calibration["null_threshold"],
                                                            abs=1e-4)
    assert calibrated[0]["scores"] == pytest.approx(calibration["scores"])
    ranks = [json.loads((shared / f"metrics-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every rank gets rank 0's metrics
    timing = {"inference_seconds", "postprocess_seconds"}
    for key, value in single.items():
        if key not in timing | {"ci95"}:
            assert ranks[0][key] == pytest.approx(value), key
    assert ranks[0]["ci95"] == single["ci95"]  # the same answers, the same resamples
    single_predictions = json.loads((tmp_path / "single" / "predictions.json").read_text())
    ddp_predictions = json.loads((shared / "eval" / "predictions.json").read_text())
    assert ddp_predictions == single_predictions


class _FailsWith(torch.nn.Module):
    """A QA model whose forward raises `error` (a CPU cannot run out of GPU memory)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        raise self.error


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
], ids=["OutOfMemoryError", "cublas"])
def test_evaluation_out_of_memory_names_the_batch_and_the_flag(
    small_set: tuple[list, Features], error: Exception
) -> None:
    from squadft.errors import OutOfMemory

    _, features = small_set
    with pytest.raises(OutOfMemory, match="lower --eval-batch-size"):
        predict_logits(_FailsWith(error), features, batch_size=4, device="cpu")
    with pytest.raises(RuntimeError, match="device-side assert"):
        predict_logits(_FailsWith(RuntimeError("CUDA error: device-side assert triggered")),
                       features, batch_size=4, device="cpu")


def test_a_named_run_draws_a_bar_of_windows_on_stderr(
    small_set: tuple[list, Features], capsys: pytest.CaptureFixture[str]
) -> None:
    """Like training's bar: on stderr (stdout keeps the results), in windows, closed at the
    end; no bar without a name (predict, tests)."""
    _, features = small_set
    model = make_tiny_model()
    predict_logits(model, features, batch_size=16, device="cpu", progress="evaluate")
    out, err = capsys.readouterr()
    n = len(features)
    assert out == "" and err.lstrip("\r").startswith("evaluate:") and err.endswith("\n")
    assert "evaluate: 100%" in err and f"{n}/{n}" in err and "window/s" in err
    predict_logits(model, features, batch_size=16, device="cpu")
    assert capsys.readouterr() == ("", "")
