"""Wires the stages together: pull -> parse -> features -> train -> evaluate -> upload."""

from __future__ import annotations

from squadft.config import Config


def pull(cfg: Config) -> None:
    raise NotImplementedError("pipeline.pull is being wired")


def prepare(cfg: Config) -> None:
    raise NotImplementedError("pipeline.prepare is being wired")


def train(cfg: Config) -> None:
    raise NotImplementedError("pipeline.train is being wired")
