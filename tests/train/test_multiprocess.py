"""Real processes: torchrun DDP on gloo (one node and two "nodes"), SIGKILL and SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file
from squadft.errors import EXIT_PREEMPTED
from squadft.storage.manifest import verify_manifest

from tests.helpers import make_tiny_model
from tests.train.common import (
    ADAM_COMPARABLE,
    REPO_ROOT,
    free_port,
    load_weights,
    max_weight_difference,
    read_metrics,
    run,
    run_settings,
    squadft_command,
    step_losses,
    subprocess_env,
    wait_for,
)

pytestmark = pytest.mark.slow

STEPS = 40
# one process with batch 8 == two ranks with batch 4 each (the sampler slices global batches)
REFERENCE: dict[str, Any] = {"max_steps": STEPS, "save_steps": 10, "save_total_limit": 0,
                             "batch_size": 8, **ADAM_COMPARABLE}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
GLOO_ENV = {"GLOO_SOCKET_IFNAME": "lo"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path, tiny_model_dir: Path,
              shared_cache: Path) -> Path:
    """An uninterrupted single-process run everything else is compared with."""
    out = tmp_path_factory.mktemp("reference")
    settings = run_settings(sample_dir, tiny_model_dir, shared_cache, output_dir=str(out),
                            **REFERENCE)
    done = run(squadft_command(settings))
    assert done.returncode == 0, done.stderr
    assert len(step_losses(out)) == STEPS
    return out


def start(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    handle = open(log, "w")  # a file, not a pipe: a full pipe would block the child
    return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                            env=subprocess_env(**GLOO_ENV, **env))


def test_two_process_ddp_matches_one_process(tiny_settings: Any, tmp_path: Path,
                                             reference: Path) -> None:
    settings = tiny_settings("ddp", **{**REFERENCE, "batch_size": 4})
    dump = tmp_path / "dump"
    dump.mkdir()
    port = free_port()
    done = run([*TORCHRUN, "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{port}", "tests/train/ddp_worker.py",
                json.dumps(settings), str(dump)], env=subprocess_env(**GLOO_ENV))
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = load_file(dump / "rank-0.safetensors")
    rank1 = load_file(dump / "rank-1.safetensors")
    assert max_weight_difference(rank0, rank1) == 0  # DDP keeps the replicas identical
    assert max_weight_difference(rank0, load_weights(reference / "final")) < 1e-5
    out = Path(settings["output_dir"])
    assert max_weight_difference(rank0, load_weights(out / "final")) == 0
    for step, loss in step_losses(reference).items():
        assert step_losses(out)[step] == pytest.approx(loss, abs=1e-5)
    assert sorted(p.name for p in (out / "checkpoint-40").glob("rng_state_*")) == [
        "rng_state_0.pt", "rng_state_1.pt"]


def run_worker(settings: dict[str, Any], dump: Path, timeout: float = 180,
               **env: str) -> subprocess.CompletedProcess[str]:
    """tests/train/ddp_worker.py on 2 gloo ranks under torchrun, with its hook variables."""
    dump.mkdir()
    return run([*TORCHRUN, "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "tests/train/ddp_worker.py",
                json.dumps(settings), str(dump)], timeout=timeout,
               env=subprocess_env(**GLOO_ENV, **env))


def test_a_nan_loss_on_one_rank_skips_the_step_on_every_rank(tiny_settings: Any,
                                                           tmp_path: Path) -> None:
    """Rank 1's loss is NaN at step 3, rank 0's is finite: both ranks skip that update (the
    decision is taken on the all-reduced gradient norm), so the replicas stay identical."""
    settings = tiny_settings("nan-ddp", max_steps=6, batch_size=4, logging_steps=3)
    dump = tmp_path / "dump"
    done = run_worker(settings, dump, DDP_WORKER_NAN_AT="1:3")
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = [json.loads((dump / f"outcome-{r}.json").read_text()) for r in (0, 1)]
    assert outcomes == [{"steps": 6, "skipped_steps": 1}] * 2
    assert max_weight_difference(load_file(dump / "rank-0.safetensors"),
                                 load_file(dump / "rank-1.safetensors")) == 0
    out = Path(settings["output_dir"])
    assert [(r["step"], r["skipped_steps"]) for r in read_metrics(out)] == [(3, 1), (6, 1)]
    assert all(r["loss"] > 0 for r in read_metrics(out))  # the mean of the updated steps
    assert json.loads((out / "train_results.json").read_text())["skipped_steps"] == 1
    assert verify_manifest(out / "final")


def test_every_rank_takes_the_same_held_out_decisions(tiny_settings: Any,
                                                       tmp_path: Path) -> None:
    """Held-out F1 30, 50, 40, 35 at steps 2-8 (only rank 0 computes it; rank 1 learns it from
    the evaluator's broadcast): both ranks record the same evaluations, choose step 4, stop
    early at step 8 of 12, and end with step 4's weights, bit for bit, as final/ does."""
    settings = tiny_settings("ddp-select", max_steps=12, eval_steps=2, batch_size=4,
                             early_stopping_patience=2, save_total_limit=1)
    dump = tmp_path / "dump"
    done = run_worker(settings, dump, DDP_WORKER_HELD_OUT_F1="30,50,40,35")
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (json.loads((dump / f"outcome-{r}.json").read_text()) for r in (0, 1))
    assert rank0["calibrations"] == [1, 2, 3, 4] and rank1["calibrations"] == []
    assert rank0["selection"] == rank1["selection"]  # curve, choice, stop, calibration
    selection = rank0["selection"]
    assert rank0["steps"] == rank1["steps"] == 8
    assert [(p["step"], p["f1"]) for p in selection["held_out_curve"]] == [
        (2, 30.0), (4, 50.0), (6, 40.0), (8, 35.0)]
    assert selection["chosen_step"] == 4 and selection["stopped_early_at"] == 8
    assert selection["calibration"]["null_threshold"] == 5.0
    weights = [load_file(dump / f"rank-{r}.safetensors") for r in (0, 1)]
    assert max_weight_difference(weights[0], weights[1]) == 0
    out = Path(settings["output_dir"])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert max_weight_difference(weights[0], load_weights(out / "checkpoint-4")) == 0
    assert max_weight_difference(weights[0], load_weights(out / "final")) == 0
    assert max_weight_difference(weights[0], load_weights(out / "checkpoint-8")) > 0
    assert verify_manifest(out / "final")


def test_an_unreadable_best_checkpoint_fails_every_rank_with_the_same_error(
    tiny_settings: Any, tmp_path: Path
) -> None:
    """Rank 0 cannot read the best checkpoint's weights for final/: every rank raises its
    StorageError (exit 5), none is left waiting in the broadcast or dies of a lost peer."""
    settings = tiny_settings("ddp-lost-best", max_steps=4, eval_steps=2, batch_size=4)
    dump = tmp_path / "dump"
    done = run_worker(settings, dump, timeout=120, DDP_WORKER_HELD_OUT_F1="50,40",
                      DDP_WORKER_LOSE_BEST="1")
    assert done.returncode != 0
    assert (dump / "outcome-1.json").is_file(), done.stderr[-3000:]
    outcomes = [json.loads((dump / f"outcome-{r}.json").read_text()) for r in (0, 1)]
    assert outcomes[0] == outcomes[1], done.stderr[-3000:]
    assert "cannot read the best checkpoint" in outcomes[0]["error"]
    assert "chose step 2" in outcomes[0]["error"]
    assert not (Path(settings["output_dir"]) / "final").exists()


def test_two_torchrun_nodes_with_c10d_rendezvous(tiny_settings: Any, tmp_path: Path,
                                                  reference: Path) -> None:
    settings = tiny_settings("nodes", **{**REFERENCE, "batch_size": 4})
    port = free_port()
    nodes = [
        start([*TORCHRUN, "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", "squadft-test", "-m", "squadft", *squadft_command(settings)[3:]],
              tmp_path / f"node{node}.log")
        for node in (0, 1)
    ]
    for node, process in enumerate(nodes):
        code = process.wait(timeout=240)
        assert code == 0, (tmp_path / f"node{node}.log").read_text()[-3000:]
    out = Path(settings["output_dir"])
    assert max_weight_difference(load_weights(out / "final"),
                                 load_weights(reference / "final")) < 1e-5
    assert json.loads((out / "train_results.json").read_text())["world_size"] == 2


@pytest.fixture(scope="module")
def dropout_reference(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path,
                      shared_cache: Path, bert_tokenizer: Any) -> tuple[Path, Path]:
    """A tiny model WITH dropout and its uninterrupted run: exact resume then needs the saved
    RNG states (with dropout 0 a resume that reseeded the RNGs would still match)."""
    model_dir = tmp_path_factory.mktemp("dropout-model")
    make_tiny_model(len(bert_tokenizer), dropout=0.1).save_pretrained(model_dir)
    bert_tokenizer.save_pretrained(model_dir)
    out = tmp_path_factory.mktemp("dropout-reference")
    settings = run_settings(sample_dir, model_dir, shared_cache, output_dir=str(out),
                            **REFERENCE)
    done = run(squadft_command(settings))
    assert done.returncode == 0, done.stderr
    return model_dir, out


def test_sigkill_then_resume_is_exact(tiny_settings: Any, tmp_path: Path,
                                      dropout_reference: tuple[Path, Path]) -> None:
    model_dir, reference = dropout_reference
    settings = tiny_settings("killed", **REFERENCE, model=str(model_dir))
    out = Path(settings["output_dir"])
    process = start(squadft_command(settings), tmp_path / "killed.log")
    wait_for(lambda: (out / "checkpoint-10" / "manifest.json").is_file(), 120,
             "checkpoint-10", process)
    process.kill()
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert not (out / "final").exists(), "the run ended before it could be killed"

    resumed = run(squadft_command(settings))
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"resuming from .*checkpoint-(10|20|30)", resumed.stderr)
    assert step_losses(out) == step_losses(reference)  # bitwise, every step
    assert max_weight_difference(load_weights(out / "final"),
                                 load_weights(reference / "final")) == 0


def test_sigterm_checkpoints_exits_75_and_resume_continues(tiny_settings: Any,
                                                          tmp_path: Path) -> None:
    settings = tiny_settings("preempted", max_steps=100_000)
    out = Path(settings["output_dir"])
    process = start(squadft_command(settings), tmp_path / "preempted.log")
    wait_for(lambda: len(read_metrics(out)) >= 3, 120, "3 logged steps", process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == EXIT_PREEMPTED
    log = (tmp_path / "preempted.log").read_text()
    assert "received SIGTERM" in log and "squadft: error: stopped at step" in log
    (checkpoint,) = out.glob("checkpoint-*")
    step = int(checkpoint.name.split("-")[1])
    assert verify_manifest(checkpoint) and step == len(read_metrics(out)) >= 3
    assert not (out / "final").exists()

    resumed = run(squadft_command({**settings, "max_steps": step + 2}))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {checkpoint}" in resumed.stderr
    assert [m["step"] for m in read_metrics(out)] == list(range(1, step + 3))
    assert verify_manifest(out / "final")


def test_sigusr1_on_one_rank_stops_every_rank_at_the_same_step(tiny_settings: Any,
                                                               tmp_path: Path) -> None:
    settings = tiny_settings("ddp-preempted", max_steps=100_000, batch_size=4)
    out = Path(settings["output_dir"])
    dump = tmp_path / "dump"
    dump.mkdir()
    port = free_port()
    launcher = start([*TORCHRUN, "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                      "--rdzv-endpoint", f"127.0.0.1:{port}", "tests/train/ddp_worker.py",
                      json.dumps(settings), str(dump)], tmp_path / "torchrun.log")
    wait_for(lambda: len(read_metrics(out)) >= 3 and (dump / "pid-1").is_file(), 120,
             "3 logged steps", launcher)
    os.kill(int((dump / "pid-1").read_text()), signal.SIGUSR1)  # rank 1 only
    launcher.wait(timeout=120)
    outcomes = [json.loads((dump / f"outcome-{r}.json").read_text()) for r in (0, 1)]
    steps = {int(re.search(r"stopped at step (\d+)", o["preempted"]).group(1)) for o in outcomes}
    (checkpoint,) = out.glob("checkpoint-*")
    assert steps == {int(checkpoint.name.split("-")[1])}
    assert verify_manifest(checkpoint)
    assert (checkpoint / "rng_state_1.pt").is_file()


def _log_has(log: Path, text: str) -> bool:
    return log.is_file() and text in log.read_text()


def _evaluating_run(tiny_settings: Any, tmp_path: Path, name: str, steps: int
                    ) -> tuple[dict[str, Any], Path, Path, Any]:
    """A squadft process that has trained `steps` steps and is now evaluating the whole dev
    sample (4,449 questions: seconds of evaluation to send signals into)."""
    settings = tiny_settings(name, max_steps=steps, do_eval=True, max_eval_samples=None)
    log = tmp_path / f"{name}.log"
    process = start(squadft_command(settings), log)
    wait_for(lambda: _log_has(log, f"squadft: trained {steps} steps"), 240,
             "the end of training", process)
    return settings, Path(settings["output_dir"]), log, process


def test_sigterm_during_the_final_evaluation_exits_75_and_a_requeue_only_evaluates(
    tiny_settings: Any, tmp_path: Path
) -> None:
    """final/ is saved when the evaluation starts: the job is requeueable, not killed (143).
    The whole dev sample (4,449 questions) keeps the evaluation running for seconds."""
    settings, out, log, process = _evaluating_run(tiny_settings, tmp_path, "eval-preempted", 3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == EXIT_PREEMPTED, log.read_text()[-3000:]
    text = log.read_text()
    assert (f"squadft: error: stopped by SIGTERM during the final evaluation after training: "
            f"final/ ({out / 'final'}) is saved at step 3; exit 75 means requeue") in text
    assert verify_manifest(out / "final") and not (out / "eval_results.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left

    resumed = run(squadft_command(settings), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-3'} (step 3/3)" in resumed.stderr
    assert "training is already complete at step 3" in resumed.stderr
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3]  # no step trained again
    assert json.loads((out / "eval_results.json").read_text())["total"] == 4449


def test_two_signals_during_training_exit_143_and_never_mention_exit_75(
    tiny_settings: Any, tmp_path: Path
) -> None:
    settings = tiny_settings("twice", max_steps=100_000)
    out = Path(settings["output_dir"])
    log = tmp_path / "twice.log"
    process = start(squadft_command(settings), log)
    wait_for(lambda: len(read_metrics(out)) >= 2, 120, "2 logged steps", process)
    # stopped, both signals pend and arrive together: the first asks for a checkpoint, the
    # second means "now"
    process.send_signal(signal.SIGSTOP)
    process.send_signal(signal.SIGUSR1)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGCONT)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    text = log.read_text()
    assert "received SIGUSR1: finishing the current step" in text
    assert "second SIGTERM: exiting at once with 143, without a checkpoint" in text
    assert "exit 75" not in text and "75" not in text.split("second SIGTERM")[1]
    assert not list(out.glob("checkpoint-*"))


def test_a_second_signal_while_stopping_still_exits_75(tiny_settings: Any,
                                                        tmp_path: Path) -> None:
    settings, out, log, process = _evaluating_run(tiny_settings, tmp_path, "stopping", 2)
    process.send_signal(signal.SIGSTOP)
    process.send_signal(signal.SIGUSR1)  # stops the evaluation: Preempted, exit 75 ...
    process.send_signal(signal.SIGTERM)  # ... which a second signal must not turn into 143
    process.send_signal(signal.SIGCONT)
    assert process.wait(timeout=120) == EXIT_PREEMPTED, log.read_text()[-3000:]
    assert "SIGTERM again: already stopping after a checkpoint; exit 75 now" in log.read_text()
    assert verify_manifest(out / "final")


def test_disk_full_at_a_checkpoint_is_exit_5_naming_it_and_leaves_no_temporary_dir(
    tiny_settings: Any, small_disk
) -> None:
    disk = small_disk(2 << 20)  # room for the run's small files, not for the ~4 MB model
    settings = tiny_settings(max_steps=4, save_steps=1, output_dir=str(disk / "run"))
    done = run(squadft_command(settings))
    assert done.returncode == 5, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"squadft: error: cannot write checkpoint {disk / 'run' / 'checkpoint-1'}: disk full")
    assert sorted(os.listdir(disk / "run")) == ["metrics.jsonl", "squadft_config.json",
                                                "tensorboard"]
