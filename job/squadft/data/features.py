"""Sliding-window features for extractive QA, stored columnar and cached on disk.

Each example becomes one or more windows `[CLS] question [SEP] context-part [SEP]` (the fast
tokenizer's `truncation="only_second"` with `stride` overlap). Windows are concatenated without
padding: window i is `input_ids[row_splits[i]:row_splits[i + 1]]`; the train loop pads each batch
to its own longest window.

Labels (the seed got these wrong): start/end are the token indices of the first gold answer
when it lies entirely inside the window's context; otherwise, and always for unanswerable
questions, both point at the CLS token, which is what SQuAD 2.0 models learn as "no answer".

Everything after the tokenizer call is numpy over whole chunks: per-token work never runs in a
Python loop, so the full SQuAD 2.0 train set (130k questions) takes well under two minutes on
two cores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from squadft.data.squad import Example
from squadft.errors import ConfigError, StorageError
from squadft.io import atomic_write_json, describe_os_error, fsync_dir

# Bump when the stored arrays or the labelling rules change: old caches then miss.
FEATURES_FORMAT_VERSION = 1
# Examples per tokenizer call: large enough for the tokenizer's own thread pool to pay off,
# small enough that the intermediate Python lists stay a few hundred MB at most.
CHUNK_EXAMPLES = 4096
META_FILE = "meta.json"
_ARRAY_NAMES = ("input_ids", "token_type_ids", "offsets", "row_splits", "example_index",
                "start_positions", "end_positions", "cls_index")


@dataclass
class Features:
    """Windows of all examples, concatenated (no padding stored); arrays may be memory-mapped."""

    input_ids: np.ndarray  # int32 [total_tokens]
    token_type_ids: np.ndarray | None  # int8 [total_tokens], when the model takes them
    offsets: np.ndarray  # int32 [total_tokens, 2]; (-1, -1) where the token is not context
    row_splits: np.ndarray  # int64 [n + 1]
    example_index: np.ndarray  # int32 [n]
    start_positions: np.ndarray  # int32 [n]
    end_positions: np.ndarray  # int32 [n]
    cls_index: np.ndarray  # int32 [n]

    def __len__(self) -> int:
        return len(self.row_splits) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.row_splits).astype(np.int32)

    def window(self, i: int) -> dict[str, np.ndarray]:
        begin, end = int(self.row_splits[i]), int(self.row_splits[i + 1])
        result = {"input_ids": self.input_ids[begin:end], "offsets": self.offsets[begin:end]}
        if self.token_type_ids is not None:
            result["token_type_ids"] = self.token_type_ids[begin:end]
        return result

    def select(self, indices: np.ndarray) -> Features:
        """The given windows, in the given order, re-packed into new contiguous arrays."""
        indices = np.asarray(indices, dtype=np.int64)
        lengths = np.diff(self.row_splits)[indices]
        row_splits = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=row_splits[1:])
        token_index = _concatenated_ranges(self.row_splits[indices], lengths)
        return Features(
            input_ids=np.asarray(self.input_ids[token_index]),
            token_type_ids=None if self.token_type_ids is None
            else np.asarray(self.token_type_ids[token_index]),
            offsets=np.asarray(self.offsets[token_index]),
            row_splits=row_splits,
            example_index=np.asarray(self.example_index[indices]),
            start_positions=np.asarray(self.start_positions[indices]),
            end_positions=np.asarray(self.end_positions[indices]),
            cls_index=np.asarray(self.cls_index[indices]),
        )


@dataclass
class FeatureReport:
    examples: int = 0
    features: int = 0
    impossible_examples: int = 0
    answers: int = 0  # answerable examples (their first gold answer is what gets labelled)
    answer_features: int = 0  # windows labelled with an answer span
    cls_features: int = 0  # windows labelled CLS (impossible, or answer not fully inside)
    answers_outside_every_window: int = 0  # answerable examples no window could label
    truncated_questions: int = 0  # questions cut to max_query_length tokens
    unaligned_answers: int = 0  # answer inside a window but covering no token (e.g. only spaces)

    def summary(self) -> str:
        return (
            f"{self.examples} examples ({self.impossible_examples} impossible, {self.answers} "
            f"answerable) -> {self.features} windows ({self.answer_features} with an answer "
            f"span, {self.cls_features} CLS); {self.answers_outside_every_window} answers "
            f"outside every window; {self.truncated_questions} questions truncated"
        )


# --- building ---------------------------------------------------------------------------------


def build_features(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int,
) -> tuple[Features, FeatureReport]:
    """Tokenize examples into labelled sliding windows (pure: no I/O)."""
    question_limit = _question_token_limit(tokenizer, max_seq_length, doc_stride, max_query_length)
    with_token_types = "token_type_ids" in tokenizer.model_input_names
    report = FeatureReport(examples=len(examples))
    chunks: list[dict[str, np.ndarray]] = []
    for begin in range(0, len(examples), CHUNK_EXAMPLES):
        chunk = examples[begin:begin + CHUNK_EXAMPLES]
        arrays = _build_chunk(chunk, tokenizer, max_seq_length, doc_stride, question_limit,
                              with_token_types, report)
        arrays["example_index"] += begin
        chunks.append(arrays)
    features = _concatenate(chunks, with_token_types)

    answerable = np.array([not example.is_impossible for example in examples], dtype=bool)
    labelled = features.start_positions != features.cls_index
    labelled_per_example = np.bincount(features.example_index[labelled], minlength=len(examples))
    report.features = len(features)
    report.impossible_examples = int((~answerable).sum())
    report.answers = int(answerable.sum())
    report.answer_features = int(labelled.sum())
    report.cls_features = report.features - report.answer_features
    report.answers_outside_every_window = int((answerable & (labelled_per_example == 0)).sum())
    return features, report


def _question_token_limit(
    tokenizer: Any, max_seq_length: int, doc_stride: int, max_query_length: int
) -> int:
    # The tokenizer panics (a Rust panic, not an exception) unless every window keeps more than
    # `doc_stride` context tokens, so the question must leave room for them.
    special = tokenizer.num_special_tokens_to_add(pair=True)
    limit = min(max_query_length, max_seq_length - special - doc_stride - 1)
    if doc_stride < 0 or limit < 1:
        raise ConfigError(
            f"max_seq_length={max_seq_length} leaves no room for a question: it must exceed "
            f"doc_stride ({doc_stride}) + {special} special tokens + 1 "
            f"(and max_query_length={max_query_length} must be positive)"
        )
    return limit


def _truncate_questions(questions: list[str], tokenizer: Any, limit: int) -> tuple[list[str], int]:
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True,
                        return_attention_mask=False, return_token_type_ids=False)
    truncated = 0
    for i, ids in enumerate(encoded["input_ids"]):
        if len(ids) <= limit:
            continue
        truncated += 1
        offsets = encoded["offset_mapping"][i]
        keep = limit
        # Cutting inside a word can re-tokenize into more pieces; shorten until it fits.
        while True:
            text = questions[i][: offsets[keep - 1][1]]
            if keep == 1 or len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= limit:
                break
            keep -= 1
        questions[i] = text
    return questions, truncated


def _build_chunk(
    examples: Sequence[Example], tokenizer: Any, max_seq_length: int, doc_stride: int,
    question_limit: int, with_token_types: bool, report: FeatureReport,
) -> dict[str, np.ndarray]:
    questions, truncated = _truncate_questions(
        [example.question for example in examples], tokenizer, question_limit
    )
    report.truncated_questions += truncated
    encoded = tokenizer(
        questions,
        [example.context for example in examples],
        truncation="only_second",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=with_token_types,
        return_attention_mask=False,
        padding=False,
    )
    ids_lists = encoded["input_ids"]
    n_windows = len(ids_lists)
    lengths = np.fromiter(map(len, ids_lists), dtype=np.int64, count=n_windows)
    row_splits = np.zeros(n_windows + 1, dtype=np.int64)
    np.cumsum(lengths, out=row_splits[1:])
    total = int(row_splits[-1])
    input_ids = np.fromiter(chain.from_iterable(ids_lists), dtype=np.int32, count=total)
    token_type_ids = None
    if with_token_types:
        token_type_ids = np.fromiter(chain.from_iterable(encoded["token_type_ids"]),
                                     dtype=np.int8, count=total)
    offsets = np.fromiter(
        chain.from_iterable(chain.from_iterable(encoded["offset_mapping"])),
        dtype=np.int32, count=2 * total,
    ).reshape(total, 2)
    example_index = np.asarray(encoded["overflow_to_sample_mapping"], dtype=np.int32)

    # The context of a window is one contiguous run of sequence-1 tokens: find its ends once per
    # window (C-level list searches), then mark tokens with numpy.
    context_first = np.empty(n_windows, dtype=np.int64)
    context_last = np.empty(n_windows, dtype=np.int64)
    for w, encoding in enumerate(encoded.encodings):
        sequence_ids = encoding.sequence_ids
        try:
            context_first[w] = sequence_ids.index(1)
            context_last[w] = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
        except ValueError:  # an empty context: the window has no context tokens
            context_first[w], context_last[w] = 0, -1

    window_of_token = np.repeat(np.arange(n_windows), lengths)
    position = np.arange(total) - row_splits[:-1][window_of_token]
    is_context = (position >= context_first[window_of_token]) & (
        position <= context_last[window_of_token])
    offsets[~is_context] = -1

    cls_index = _first_position_of(input_ids, tokenizer.cls_token_id, row_splits)
    start_positions, end_positions = _label_windows(
        examples, example_index, offsets, is_context, window_of_token, row_splits[:-1],
        context_first, context_last, cls_index, report,
    )
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "offsets": offsets,
            "row_splits": row_splits, "example_index": example_index,
            "start_positions": start_positions, "end_positions": end_positions,
            "cls_index": cls_index}


def _label_windows(
    examples: Sequence[Example], example_index: np.ndarray, offsets: np.ndarray,
    is_context: np.ndarray, window_of_token: np.ndarray, window_begin: np.ndarray,
    context_first: np.ndarray, context_last: np.ndarray, cls_index: np.ndarray,
    report: FeatureReport,
) -> tuple[np.ndarray, np.ndarray]:
    n_windows = len(example_index)
    # Character span of each example's first gold answer, without surrounding whitespace (no
    # token covers a space, so a span ending in one could never be matched exactly); -1 = none.
    answer_start = np.full(len(examples), -1, dtype=np.int64)
    answer_end = np.full(len(examples), -1, dtype=np.int64)
    for i, example in enumerate(examples):
        if example.answers:
            answer = example.answers[0]
            text = answer.text
            stripped = text.lstrip()
            answer_start[i] = answer.start + len(text) - len(stripped)
            answer_end[i] = answer_start[i] + len(stripped.rstrip())
    window_start = answer_start[example_index]
    window_end = answer_end[example_index]

    has_context = context_last >= context_first
    first = np.where(has_context, context_first, 0)
    last = np.where(has_context, context_last, 0)
    context_begin_char = offsets[window_begin + first, 0]
    context_end_char = offsets[window_begin + last, 1]
    inside = (has_context & (window_start >= 0) & (context_begin_char <= window_start)
              & (context_end_char >= window_end))

    # Offsets increase along the context, so "first token ending after the answer starts" and
    # "last token starting before it ends" are counts of context tokens on either side.
    token_answer_start = window_start[window_of_token]
    token_answer_end = window_end[window_of_token]
    before_start = is_context & (offsets[:, 1] <= token_answer_start)
    before_end = is_context & (offsets[:, 0] < token_answer_end)
    start_token = first + np.bincount(window_of_token, weights=before_start,
                                      minlength=n_windows).astype(np.int64)
    end_token = first + np.bincount(window_of_token, weights=before_end,
                                    minlength=n_windows).astype(np.int64) - 1
    aligned = inside & (start_token <= end_token)
    report.unaligned_answers += int((inside & ~aligned).sum())
    start_positions = np.where(aligned, start_token, cls_index).astype(np.int32)
    end_positions = np.where(aligned, end_token, cls_index).astype(np.int32)
    return start_positions, end_positions


def _first_position_of(input_ids: np.ndarray, token_id: int | None,
                       row_splits: np.ndarray) -> np.ndarray:
    """Position of the first `token_id` in each window (0 where absent)."""
    n_windows = len(row_splits) - 1
    result = np.zeros(n_windows, dtype=np.int32)
    if token_id is None:
        return result
    hits = np.flatnonzero(input_ids == token_id)
    hit_window = np.searchsorted(row_splits, hits, side="right") - 1
    windows, first_hit = np.unique(hit_window, return_index=True)
    result[windows] = hits[first_hit] - row_splits[windows]
    return result


def _concatenate(chunks: list[dict[str, np.ndarray]], with_token_types: bool) -> Features:
    if not chunks:
        empty = np.zeros(0, dtype=np.int32)
        return Features(empty, np.zeros(0, np.int8) if with_token_types else None,
                        np.zeros((0, 2), np.int32), np.zeros(1, np.int64), empty.copy(),
                        empty.copy(), empty.copy(), empty.copy())
    row_splits = [np.zeros(1, dtype=np.int64)]
    base = 0
    for chunk in chunks:
        row_splits.append(chunk["row_splits"][1:] + base)
        base += int(chunk["row_splits"][-1])

    def joined(name: str) -> np.ndarray:
        return np.concatenate([chunk[name] for chunk in chunks])

    return Features(
        input_ids=joined("input_ids"),
        token_type_ids=joined("token_type_ids") if with_token_types else None,
        offsets=joined("offsets"),
        row_splits=np.concatenate(row_splits),
        example_index=joined("example_index"),
        start_positions=joined("start_positions"),
        end_positions=joined("end_positions"),
        cls_index=joined("cls_index"),
    )


def _concatenated_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)]), vectorized."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets_in_output = np.cumsum(lengths) - lengths
    return np.arange(total) - np.repeat(offsets_in_output - starts, lengths)


# --- cache ------------------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's full definition (vocab, normalizer, templates) and class."""
    definition = json.loads(tokenizer.backend_tokenizer.to_str())
    # Truncation/padding are per-call settings the tokenizer keeps from its last call; they do
    # not change how text is tokenized, and would otherwise make the key depend on call history.
    definition.pop("truncation", None)
    definition.pop("padding", None)
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    digest.update(json.dumps(list(tokenizer.model_input_names)).encode())
    digest.update(json.dumps(definition, sort_keys=True).encode())
    return digest.hexdigest()


def _examples_fingerprint(examples: Sequence[Example]) -> str:
    # Guards against reusing features with a different parse of the same file (example_index
    # would silently point at the wrong questions); contexts are covered by the data key.
    digest = hashlib.sha256()
    for example in examples:
        first = example.answers[0] if example.answers else None
        digest.update(
            f"{example.id}\x1f{example.question}\x1f{int(example.is_impossible)}\x1f"
            f"{first.start if first else -1}\x1f{first.text if first else ''}\x1e".encode()
        )
    return digest.hexdigest()


def features_cache_key(
    examples: Sequence[Example], tokenizer: Any, *, data_key: str, max_seq_length: int,
    doc_stride: int, max_query_length: int,
) -> str:
    inputs = {
        "format": FEATURES_FORMAT_VERSION,
        "data_key": data_key,
        "examples": _examples_fingerprint(examples),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_seq_length": max_seq_length,
        "doc_stride": doc_stride,
        "max_query_length": max_query_length,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def load_or_build_features(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    cache_dir: str | Path,
    data_key: str,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int,
) -> tuple[Features, FeatureReport, bool]:
    """Features from <cache_dir>/features/<key>/ when complete there, else built and stored.

    Returns (features, report, cache_hit). The directory appears under its final name only
    once every array and the metadata are on disk (built in a temp dir, then renamed), so an
    interrupted run leaves nothing that a later run could mistake for a valid cache.
    """
    key = features_cache_key(examples, tokenizer, data_key=data_key,
                             max_seq_length=max_seq_length, doc_stride=doc_stride,
                             max_query_length=max_query_length)
    root = Path(cache_dir) / "features"
    final = root / key
    cached = _load_cached(final, key, len(examples))
    if cached is not None:
        return cached[0], cached[1], True

    features, report = build_features(examples, tokenizer, max_seq_length=max_seq_length,
                                      doc_stride=doc_stride, max_query_length=max_query_length)
    _store(features, report, root, final, key, len(examples))
    stored = _load_cached(final, key, len(examples))
    if stored is None:  # pragma: no cover - only if the disk lies to us
        raise StorageError(f"features cache {final} is unreadable right after writing it")
    return stored[0], stored[1], False


def _store(features: Features, report: FeatureReport, root: Path, final: Path, key: str,
           num_examples: int) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=root))
    except OSError as exc:
        raise StorageError(describe_os_error(exc, root)) from None
    try:
        shapes = {}
        for name in _ARRAY_NAMES:
            array = getattr(features, name)
            if array is None:
                continue
            with open(temp / f"{name}.npy", "wb") as handle:
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            shapes[name] = {"shape": list(array.shape), "dtype": str(array.dtype)}
        atomic_write_json(temp / META_FILE, {
            "format": FEATURES_FORMAT_VERSION, "key": key, "examples": num_examples,
            "arrays": shapes, "report": dataclasses.asdict(report),
        })
        fsync_dir(temp)
        if final.exists() and _load_cached(final, key, num_examples) is None:
            # A damaged entry under the final name (copied by hand, disk trouble): replace it.
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(temp, final)
        except OSError:
            # Another process (a concurrent rank or job) finished the same key first; theirs is
            # equivalent, so keep it and drop ours.
            if not final.is_dir():
                raise
            shutil.rmtree(temp, ignore_errors=True)
        fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise StorageError(describe_os_error(exc, final)) from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _load_cached(directory: Path, key: str, num_examples: int
                 ) -> tuple[Features, FeatureReport] | None:
    """The cached features, or None unless the directory is complete and matches `key`."""
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        if (meta.get("format") != FEATURES_FORMAT_VERSION or meta.get("key") != key
                or meta.get("examples") != num_examples):
            return None
        arrays: dict[str, np.ndarray | None] = {}
        for name in _ARRAY_NAMES:
            expected = meta["arrays"].get(name)
            if expected is None:
                arrays[name] = None
                continue
            array = np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            if list(array.shape) != expected["shape"] or str(array.dtype) != expected["dtype"]:
                return None
            arrays[name] = array
        report = FeatureReport(**meta["report"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if arrays["row_splits"] is None or arrays["input_ids"] is None:
        return None
    return Features(**arrays), report  # type: ignore[arg-type]
