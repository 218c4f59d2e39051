"""Started by torchrun in the DDP tests: the pipeline's training steps, then a per-rank dump.

Only rank 0 writes the run directory, so to compare the replicas each rank saves its own
parameters (and how its run ended) into a test-owned directory.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    from safetensors.torch import save_file
    from squadft.config import Config
    from squadft.errors import EXIT_PREEMPTED, Preempted, SquadftError
    from squadft.flows import preparation
    from squadft.modeling import load_model, load_tokenizer
    from squadft.runtime.distributed import cleanup, setup_distributed
    from squadft.train.checkpoint import seed_everything
    from squadft.train.loop import train_model

    cfg = Config(**json.loads(sys.argv[1]))
    dump = Path(sys.argv[2])
    ctx = setup_distributed()
    (dump / f"pid-{ctx.rank}").write_text(str(os.getpid()))
    tokenizer = load_tokenizer(cfg.model)
    data = preparation.prepare(cfg, tokenizer, splits=("train",), verbose=False)
    seed_everything(cfg.seed)
    model = load_model(cfg.model)
    poison_one_forward(model, ctx.rank, os.environ.get("DDP_WORKER_NAN_AT"))
    if os.environ.get("DDP_WORKER_LOSE_BEST"):
        lose_the_best_checkpoint()
    held_out, calibrations = scripted_held_out(cfg, ctx, data,
                                               os.environ.get("DDP_WORKER_HELD_OUT_F1"))
    code = 0
    try:
        result = train_model(cfg, model, tokenizer, data.train.features, ctx, held_out=held_out)
        outcome = {"steps": result.steps, "skipped_steps": result.skipped_steps}
        if held_out is not None:
            outcome.update(selection=result.selection, calibrations=calibrations)
    except Preempted as exc:
        outcome, code = {"preempted": str(exc)}, EXIT_PREEMPTED
    except SquadftError as exc:  # every rank should learn the error, none hang or crash
        outcome, code = {"error": str(exc)}, exc.exit_code
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, dump / f"rank-{ctx.rank}.safetensors")
    (dump / f"outcome-{ctx.rank}.json").write_text(json.dumps(outcome))
    cleanup(ctx)
    return code


def scripted_held_out(cfg: object, ctx: object, data: object, script: str | None
                      ) -> tuple[object, list[int]]:
    """DDP_WORKER_HELD_OUT_F1=F1,F1,...: the pipeline's held-out evaluator, with the F1 of its
    n-th evaluation taken from the list. The F1 is rewritten where it is computed, in the
    calibration, which only rank 0 runs: the other ranks learn it from the evaluator's
    broadcast, as in a real run. Also returns the list of this rank's calibrations (their
    evaluation numbers)."""
    from dataclasses import replace

    from squadft.flows import evaluation
    from squadft.flows.training import held_out_evaluator

    calls: list[int] = []
    if not script:
        return None, calls
    f1s = [float(x) for x in script.split(",")]
    real = evaluation.calibrate

    def calibrate(*args: object, **kwargs: object) -> object:
        calls.append(len(calls) + 1)
        calibration = real(*args, **kwargs)
        f1 = f1s[len(calls) - 1]
        return replace(calibration, scores={**calibration.scores, "f1": f1},
                       null_threshold=f1 / 10)

    evaluation.calibrate = calibrate
    return held_out_evaluator(cfg, ctx, data), calls


def lose_the_best_checkpoint() -> None:
    """DDP_WORKER_LOSE_BEST=1: the best checkpoint's weights are gone from the disk (and there
    is no bucket) when final/ is to be made from them."""
    from squadft.train.loop import Trainer

    real = Trainer.use_best_weights

    def use_best_weights(self: Trainer) -> None:
        best = self.selection.best_step
        if self.ctx.is_main and best is not None:
            (self.output_dir / f"checkpoint-{best}" / "model.safetensors").unlink()
        real(self)

    Trainer.use_best_weights = use_best_weights


def poison_one_forward(model: object, rank: int, where: str | None) -> None:
    """DDP_WORKER_NAN_AT=RANK:CALL: on that rank only, forward call CALL (from 1) returns NaN
    start logits (a NaN loss on one rank, finite on the others)."""
    if not where or int(where.split(":")[0]) != rank:
        return
    call, count = int(where.split(":")[1]), [0]

    def hook(module: object, args: object, output: object) -> object:
        count[0] += 1
        if count[0] == call:
            output.start_logits = output.start_logits * float("nan")
        return output

    model.register_forward_hook(hook)


if __name__ == "__main__":
    sys.exit(main())
