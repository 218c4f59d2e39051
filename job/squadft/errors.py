"""Errors a user can act on. The CLI prints them as one line and exits with their code.

Exit codes (documented in the README, used by the Kubernetes and Slurm launchers):

====  ==========================================================================
0     success
1     unexpected internal error (one-line message; SQUADFT_DEBUG=1 shows the traceback)
2     bad flags or configuration
3     bad input data (corrupt, wrong format, checksum mismatch)
4     a source or endpoint could not be reached (download failed after retries)
5     storage error (S3 upload/download, credentials, unwritable or full disk)
6     model or tokenizer could not be loaded
7     out of memory
8     training diverged: the loss or gradient norm was not finite for --max-skipped-steps
      optimizer steps in a row (each was skipped); final/ is not written
75    preempted: SIGTERM/SIGUSR1 received, a checkpoint was written, requeue me
====  ==========================================================================
"""

from __future__ import annotations

EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_NETWORK = 4
EXIT_STORAGE = 5
EXIT_MODEL = 6
EXIT_OOM = 7
EXIT_DIVERGED = 8
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"


class SquadftError(Exception):
    """Base class: an error with a one-line, user-facing message and an exit code."""

    exit_code: int = EXIT_INTERNAL


class ConfigError(SquadftError):
    exit_code = EXIT_CONFIG


class DataError(SquadftError):
    exit_code = EXIT_DATA


class DownloadError(SquadftError):
    exit_code = EXIT_NETWORK


class ChecksumError(DataError):
    pass


class StorageError(SquadftError):
    exit_code = EXIT_STORAGE


class ModelLoadError(SquadftError):
    exit_code = EXIT_MODEL


class OutOfMemory(SquadftError):
    exit_code = EXIT_OOM


class TrainingDiverged(SquadftError):
    """Too many optimizer steps in a row with a non-finite loss or gradient norm: retrying
    with the same settings diverges again, so it has its own exit code."""

    exit_code = EXIT_DIVERGED


class Preempted(SquadftError):
    """Raised after a checkpoint was written in response to SIGTERM/SIGUSR1."""

    exit_code = EXIT_PREEMPTED


# How CUDA memory exhaustion surfaces besides torch.cuda.OutOfMemoryError: from cuBLAS (its
# workspace or handle), or as a raw CUDA error from a kernel launch or the caching allocator.
OUT_OF_MEMORY_MARKERS = (
    "CUDA out of memory",
    "CUDA error: out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch.cuda.OutOfMemoryError and the RuntimeErrors that mean the same thing,
    so that every out-of-memory ends as exit 7 (which the Kubernetes Job does not retry)."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in OUT_OF_MEMORY_MARKERS)
