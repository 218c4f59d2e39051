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
    from squadft.errors import EXIT_PREEMPTED, Preempted
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
    code = 0
    try:
        result = train_model(cfg, model, tokenizer, data.train.features, ctx)
        outcome = {"steps": result.steps, "skipped_steps": result.skipped_steps}
    except Preempted as exc:
        outcome, code = {"preempted": str(exc)}, EXIT_PREEMPTED
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, dump / f"rank-{ctx.rank}.safetensors")
    (dump / f"outcome-{ctx.rank}.json").write_text(json.dumps(outcome))
    cleanup(ctx)
    return code


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
