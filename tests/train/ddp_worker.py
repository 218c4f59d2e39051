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
    code = 0
    try:
        outcome = {"steps": train_model(cfg, model, tokenizer, data.train.features, ctx).steps}
    except Preempted as exc:
        outcome, code = {"preempted": str(exc)}, EXIT_PREEMPTED
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, dump / f"rank-{ctx.rank}.safetensors")
    (dump / f"outcome-{ctx.rank}.json").write_text(json.dumps(outcome))
    cleanup(ctx)
    return code


if __name__ == "__main__":
    sys.exit(main())
