"""Training: the loop, checkpoints, distributed set-up, schedule and batching."""
