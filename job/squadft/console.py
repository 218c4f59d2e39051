"""What squadft tells the person running it, and on which stream.

The rule: stdout carries what a command produces and reports as its result, and the steps
said between progress bars (pull, prepare, evaluate: "squadft: train: ... downloaded"), so
`squadft evaluate > log` keeps the story; stderr carries warnings, the bars, and anything said
while a bar is drawn (the training loop, inference, uploads), so the two never interleave on
one line. Every line starts with "squadft: " (warnings with "squadft: warning: "), is flushed at
once (a job log must show where a killed process was), and never contains a credential: the
callers redact URLs (config.redact_url) before saying them.
"""

from __future__ import annotations

import os
import sys

PREFIX = "squadft: "


def say(message: str, *, err: bool = False) -> None:
    """A step or a result; `err`: while a progress bar may be drawing (training, uploads)."""
    print(PREFIX + message, file=sys.stderr if err else sys.stdout, flush=True)


def warn(message: str) -> None:
    """Something the user should act on, never fatal by itself: always stderr."""
    print(f"{PREFIX}warning: {message}", file=sys.stderr, flush=True)


def say_from_signal_handler(message: str) -> None:
    """stderr through os.write: a handler that prints while the main thread prints to the same
    buffered stream raises "reentrant call"."""
    try:
        os.write(2, (PREFIX + message + "\n").encode())
    except OSError:
        pass
