from __future__ import annotations

import pytest
import torch
from squadft.train.schedule import linear_warmup_decay, make_scheduler, warmup_steps_for


def test_warmup_then_linear_decay_values() -> None:
    values = [linear_warmup_decay(step, 2, 10) for step in range(10)]
    assert values[:2] == [0.5, 1.0]
    assert values[2] == 1.0
    assert values[2:] == pytest.approx([8 / 8, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
    assert linear_warmup_decay(10, 2, 10) == 0.0


def test_no_warmup_and_all_warmup() -> None:
    assert linear_warmup_decay(0, 0, 4) == 1.0
    assert linear_warmup_decay(3, 0, 4) == 0.25
    assert [linear_warmup_decay(s, 4, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_warmup_steps_round_up() -> None:
    assert warmup_steps_for(100, 0.1) == 10
    assert warmup_steps_for(7, 0.1) == 1
    assert warmup_steps_for(7, 0.0) == 0
    assert warmup_steps_for(5, 1.0) == 5


def test_scheduler_drives_optimizer_lr() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, warmup_steps=2, total_steps=6)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
