"""Evaluation and prediction at the I/O edge: read files, run the model, write SQuAD-format outputs.

Files written by `evaluate_model` (atomically) into its output directory:

- predictions.json        {id: answer text}, "" = no answer (official evaluate-v2.0.py format),
                          at the null threshold in effect, which is fixed before the questions
                          are seen (calibrated with the model, given, or 0);
- na_probs.json           {id: sigmoid(null score - best span score)}: the official script's
                          --na-prob-file; a threshold p on it is the score threshold logit(p);
- nbest_predictions.json  {id: [{text, probability, start_logit, end_logit, score,
                          answer_start}, ...]} best first, the null answer ("" / -1) included;
- eval_results.json       the official keys for predictions.json + na_probs.json: exact, f1,
                          HasAns_*, NoAns_* at that threshold; best_exact/best_f1 (+ _thresh)
                          are the official script's oracle, tuned on these same questions;
                          plus null_threshold, null_threshold_kind/_source (how it was chosen)
                          and always_no_answer_exact/_f1 (the baseline to beat).

These files are one set, replaced as a whole or not at all (see `write_prediction_files`), and
the output directory is checked (created, a probe written) before inference starts.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from squadft.errors import StorageError
from squadft.evaluate.postprocess import PostprocessResult, nbest_json_arrays
from squadft.io import (
    describe_os_error,
    ensure_writable_dir,
    fsync_dir,
    is_temp_name,
    make_temp_dir,
    remove_temp_tree,
    replace_directory,
    uninterruptible,
)

OUTPUT_FILES = {"predictions": "predictions.json", "na_probs": "na_probs.json",
                "nbest": "nbest_predictions.json", "results": "eval_results.json"}
# Before inference: the output directory is created and this much is written to it (an empty
# probe file still fits on a full disk).


OUTPUT_PROBE_BYTES = 64 << 10


def check_output_dir(output_dir: str | Path) -> Path:
    """Fail now (StorageError, exit 5) when the outputs could not be written: a missing parent
    that cannot be created, no permission, a full disk. Call it before inference."""
    return ensure_writable_dir(output_dir, probe_bytes=OUTPUT_PROBE_BYTES)


def write_prediction_files(
    output_dir: str | Path,
    predictions: Mapping[str, str],
    result: PostprocessResult,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """predictions.json, na_probs.json, nbest_predictions.json (+ eval_results.json with
    `metrics`): one set, replaced as a whole or not at all.

    1. Stage: every file is written and fsynced into a new temporary directory (a squadft temp
       name, see squadft.io) on the same filesystem. Any failure here (disk full, quota,
       permissions) removes it, and the previous set stays exactly as it was.
    2. Commit, without an allocation that could fail half-way and without an interruption by
       SIGTERM (`io.uninterruptible`):
       - a directory of its own (it holds nothing but these files, as `squadft evaluate`'s
         <output_dir>/evaluate does): the staging directory was made beside it and takes its
         place in one atomic rename(2) exchange (RENAME_EXCHANGE; where the filesystem lacks
         it, the old directory is renamed aside first, so that for an instant there is no
         directory). A reader sees the old set or the new one.
       - a shared directory (the training run directory): the staging directory is inside it;
         the old set's files are unlinked first (eval_results.json first), then the new ones
         renamed in (eval_results.json last). A reader may catch an incomplete set, whose
         eval_results.json is then missing, never old files next to new ones.
    A process killed in the middle leaves its staging directory, which a later squadft run
    removes (see `remove_stale_temps`).
    """
    output_dir = Path(os.path.abspath(output_dir))
    writers: dict[str, Callable[[BinaryIO], None]] = {
        "predictions": lambda handle: _write_json(handle, dict(predictions)),
        "na_probs": lambda handle: _write_json(handle, result.na_probs()),
        "nbest": lambda handle: _write_nbest(handle, result),
    }
    if metrics is not None:
        writers["results"] = lambda handle: _write_json(handle, _json_safe(metrics))
    staging, swap = _staging_dir(output_dir)
    current = output_dir
    try:
        for name, write in writers.items():
            current = output_dir / OUTPUT_FILES[name]  # named in an error: not the temp dir
            with open(staging / OUTPUT_FILES[name], "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
        current = output_dir
        fsync_dir(staging)
        with uninterruptible():
            if swap:
                replace_directory(staging, output_dir)
            else:
                _replace_files(staging, output_dir, [OUTPUT_FILES[n] for n in writers])
    except OSError as exc:
        message = describe_os_error(exc, current)  # before the staged files free the space
        remove_temp_tree(staging)
        raise StorageError(message) from None
    except BaseException:
        remove_temp_tree(staging)
        raise
    return {name: output_dir / OUTPUT_FILES[name] for name in writers}


def _write_json(handle: BinaryIO, obj: Any) -> None:
    handle.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _write_nbest(handle: BinaryIO, result: PostprocessResult) -> None:
    # Written in pieces: the full dev set's n-best lists are ~100 MB as one string.
    handle.write(b"{\n")
    for i, (qid, candidates) in enumerate(nbest_json_arrays(result.nbest)):
        entry = json.dumps(qid) + ": " + candidates
        handle.write(((",\n" if i else "") + entry).encode("utf-8"))
    handle.write(b"\n}\n")


def _holds_only_outputs(directory: Path) -> bool:
    """`directory` is missing, or a plain directory (no symlink, no mount point, not the
    working directory) holding nothing but output files and squadft temporary names."""
    if not directory.exists():
        return not directory.is_symlink()
    if directory.is_symlink() or not directory.is_dir() or os.path.ismount(directory):
        return False
    if directory.resolve() == Path.cwd().resolve():
        return False  # swapped away, it would leave the shell in a deleted directory
    try:
        entries = os.listdir(directory)
    except OSError:
        return False
    allowed = set(OUTPUT_FILES.values())
    return all(name in allowed or is_temp_name(name) for name in entries)


def _staging_dir(output_dir: Path) -> tuple[Path, bool]:
    """(a new staging directory, whether it is swapped in whole): beside a directory of its
    own, else inside it."""
    if _holds_only_outputs(output_dir):
        try:
            output_dir.parent.mkdir(parents=True, exist_ok=True)
            staging = make_temp_dir(output_dir.parent, output_dir.name)
        except OSError:
            pass  # the parent is not ours to write: stage inside the directory instead
        else:
            try:
                os.chmod(staging, stat.S_IMODE(output_dir.stat().st_mode))
            except OSError:
                pass
            return staging, True
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        return make_temp_dir(output_dir, "evaluate"), False
    except OSError as exc:
        raise StorageError(describe_os_error(exc, output_dir)) from None


def _replace_files(staging: Path, output_dir: Path, names: list[str]) -> None:
    """Old set out (eval_results.json first), new set in (eval_results.json last)."""
    results = OUTPUT_FILES["results"]
    for name in sorted(OUTPUT_FILES.values(), key=lambda n: n != results):
        (output_dir / name).unlink(missing_ok=True)
    for name in sorted(names, key=lambda n: n == results):
        os.rename(staging / name, output_dir / name)
    fsync_dir(output_dir)
    remove_temp_tree(staging)


def _json_safe(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Strict JSON has no infinities: a threshold of +-inf is written as a string."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in metrics.items()}
