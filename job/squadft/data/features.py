"""Sliding-window features for extractive QA, stored columnar and cached on disk.

Each example becomes one or more windows `[CLS] question [SEP] context-part [SEP]` (the fast
tokenizer's `truncation="only_second"` with `stride` overlap). Windows are concatenated without
padding: window i is `input_ids[row_splits[i]:row_splits[i + 1]]`; the train loop pads each batch
to its own longest window.

Labels (the seed got these wrong): start/end are the token indices of the first gold answer
when it lies entirely inside the window's context; otherwise, and always for unanswerable
questions, both point at the CLS token, which is what SQuAD 2.0 models learn as "no answer".

Speed: SQuAD has ~7 questions per paragraph, so each distinct context is tokenized once (with
offsets) and all questions once, and the windows are cut from those tokens with numpy, exactly
as the tokenizer's own overflow would cut them (same starts, special tokens, type ids, offsets;
the template is derived from the tokenizer and checked on probes, see `pair_template`). That is
~5x faster than tokenizing every (question, context) pair, which remains as the fallback and
test reference (`build_features_tokenizer_windows`). Per-token work never runs in a Python loop:
the full SQuAD 2.0 train set (130k questions) takes ~20 s on two cores.

Cache: the key needs neither the parsed examples nor a loaded tokenizer (see
`features_cache_key`, `LazyTokenizer`), so a cached `squadft prepare` takes under a second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import weakref
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from squadft.data.squad import PARSER_VERSION, CachedExamples, Example
from squadft.errors import ConfigError, StorageError
from squadft.io import (
    ErrorKeepingWriter,
    atomic_write_json,
    describe_os_error,
    fsync_dir,
    make_temp_dir,
    removed_on_failure,
    replace_directory,
    sha256_file,
)

# Bump when the stored arrays or the labelling rules change: old caches then miss.
FEATURES_FORMAT_VERSION = 2
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
        token_index = _concatenated_ranges(self.row_splits[indices], lengths)
        return Features(
            input_ids=np.asarray(self.input_ids[token_index]),
            token_type_ids=None if self.token_type_ids is None
            else np.asarray(self.token_type_ids[token_index]),
            offsets=np.asarray(self.offsets[token_index]),
            row_splits=_row_splits(lengths),
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


def build_features(examples: Sequence[Example], tokenizer: Any, *, max_seq_length: int,
                   doc_stride: int, max_query_length: int) -> tuple[Features, FeatureReport]:
    """Tokenize examples into labelled sliding windows (pure: no I/O), cut with numpy where
    `pair_template` can reproduce the tokenizer, else by `build_features_tokenizer_windows`."""
    return _build(examples, tokenizer, max_seq_length, doc_stride, max_query_length,
                  pair_template(tokenizer))


def build_features_tokenizer_windows(
    examples: Sequence[Example], tokenizer: Any, *, max_seq_length: int, doc_stride: int,
    max_query_length: int,
) -> tuple[Features, FeatureReport]:
    """The same features, windowed by the tokenizer itself on every (question, context) pair."""
    return _build(examples, tokenizer, max_seq_length, doc_stride, max_query_length, None)


def _build(
    examples: Sequence[Example], tokenizer: Any, max_seq_length: int, doc_stride: int,
    max_query_length: int, template: PairTemplate | None,
) -> tuple[Features, FeatureReport]:
    question_limit = question_token_limit(tokenizer, max_seq_length, doc_stride, max_query_length)
    with_token_types = "token_type_ids" in tokenizer.model_input_names
    report = FeatureReport(examples=len(examples))
    backend = _untruncated_backend(tokenizer) if template is not None else None
    chunks: list[dict[str, np.ndarray]] = []
    for begin in range(0, len(examples), CHUNK_EXAMPLES):
        chunk = examples[begin:begin + CHUNK_EXAMPLES]
        if template is not None:
            arrays = _build_chunk_from_contexts(chunk, tokenizer, backend, template,
                                                max_seq_length, doc_stride, question_limit,
                                                with_token_types, report)
        else:
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


def question_token_limit(
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
        if len(ids) > limit:
            truncated += 1
            questions[i], _ = _cut_question(
                questions[i], encoded["offset_mapping"][i], limit,
                lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])
    return questions, truncated


def _cut_question(question: str, offsets: Sequence[Any], limit: int,
                  encode: Callable[[str], list[int]]) -> tuple[str, list[int]]:
    """The question cut after its `limit`-th token, and its ids. Cutting inside a word can
    re-tokenize into more pieces: shorten a token at a time until it fits."""
    for keep in range(limit, 0, -1):
        text = question[: offsets[keep - 1][1]]
        ids = encode(text)
        if len(ids) <= limit:
            break
    return text, ids


def _build_chunk(
    examples: Sequence[Example], tokenizer: Any, max_seq_length: int, doc_stride: int,
    question_limit: int, with_token_types: bool, report: FeatureReport,
) -> dict[str, np.ndarray]:
    questions, truncated = _truncate_questions(
        [example.question for example in examples], tokenizer, question_limit
    )
    report.truncated_questions += truncated
    encoded = tokenizer(
        questions, [example.context for example in examples], truncation="only_second",
        max_length=max_seq_length, stride=doc_stride, return_overflowing_tokens=True,
        return_offsets_mapping=True, return_token_type_ids=with_token_types,
        return_attention_mask=False, padding=False)
    ids_lists = encoded["input_ids"]
    n_windows = len(ids_lists)
    lengths = np.fromiter(map(len, ids_lists), dtype=np.int64, count=n_windows)
    row_splits = _row_splits(lengths)
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

    context_first, context_last = _context_ends(encoded.encodings)
    window_of_token = np.repeat(np.arange(n_windows), lengths)
    position = np.arange(total) - row_splits[:-1][window_of_token]
    is_context = (position >= context_first[window_of_token]) & (
        position <= context_last[window_of_token])
    offsets[~is_context] = -1

    return _labelled_chunk(
        examples, tokenizer, report, input_ids=input_ids, token_type_ids=token_type_ids,
        offsets=offsets, row_splits=row_splits, example_index=example_index,
        is_context=is_context, window_of_token=window_of_token, context_first=context_first,
        context_last=context_last,
    )


def _context_ends(encodings: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """First and last token of each window's context. The context of a window is one
    contiguous run of sequence-1 tokens: find its ends once per window (C-level list
    searches); the caller marks tokens with numpy."""
    context_first = np.empty(len(encodings), dtype=np.int64)
    context_last = np.empty(len(encodings), dtype=np.int64)
    for w, encoding in enumerate(encodings):
        sequence_ids = encoding.sequence_ids
        try:
            context_first[w] = sequence_ids.index(1)
            context_last[w] = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
        except ValueError:  # an empty context: the window has no context tokens
            context_first[w], context_last[w] = 0, -1
    return context_first, context_last


# --- windows cut from tokenized contexts ---------------------------------------------------------


@dataclass(frozen=True)
class PairTemplate:
    """Where a tokenizer puts its special tokens around a (question, context) pair.

    BERT: [CLS] q [SEP] c [SEP] (type ids 0 0 0 1 1); RoBERTa: <s> q </s></s> c </s>.
    """

    prefix_ids: tuple[int, ...]
    middle_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    prefix_types: tuple[int, ...]
    middle_types: tuple[int, ...]
    suffix_types: tuple[int, ...]
    question_type: int
    context_type: int

    @property
    def special_tokens(self) -> int:
        return len(self.prefix_ids) + len(self.middle_ids) + len(self.suffix_ids)


# Probes for deriving and checking a template: words most vocabularies split differently, a
# context long enough for several overflow windows, and a question that must be truncated.
_PROBE_QUESTIONS = ("What is it?", "Who wrote the Zweihänder  treatise, and when?")
_PROBE_CONTEXT = (
    "The quick brown fox jumps over the lazy dog. Sphinx of black quartz, judge my vow! "
    "In 1887, Zamenhof's Unua Libro appeared; its 16 rules fit on two pages.  Naïve "
    "café-owners (e.g. in Zürich) pay 3.5% tax. The end."
)
_template_cache: weakref.WeakKeyDictionary[Any, tuple[int, PairTemplate | None]] = (
    weakref.WeakKeyDictionary())


def pair_template(tokenizer: Any) -> PairTemplate | None:
    """The tokenizer's single-pair template, or None when numpy windows cannot reproduce it.

    Derived by encoding probe pairs (never hard-coded), then checked end to end: probe examples
    windowed with numpy must equal the tokenizer's own overflow windows, labels included.
    """
    cached = _template_cache.get(tokenizer)  # (vocabulary size, template)
    if cached is not None and cached[0] == len(tokenizer):
        return cached[1]
    template = _derive_template(tokenizer)
    if template is not None and not _template_reproduces_tokenizer(tokenizer, template):
        template = None
    _template_cache[tokenizer] = (len(tokenizer), template)
    return template


def _untruncated_backend(tokenizer: Any) -> Any:
    """A private copy of the Rust tokenizer without truncation or padding.

    transformers leaves per-call truncation/padding settings on the shared backend (and
    tokenizer.json may ship some), so calling the original directly could silently truncate.
    """
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def _derive_template(tokenizer: Any) -> PairTemplate | None:
    if not getattr(tokenizer, "is_fast", False) or not hasattr(tokenizer, "backend_tokenizer"):
        return None
    try:
        backend = _untruncated_backend(tokenizer)
        templates = set()
        for question in _PROBE_QUESTIONS:
            context = _PROBE_CONTEXT[: 20 + 7 * len(question)]
            alone = [backend.encode(text, add_special_tokens=False).ids
                     for text in (question, context)]
            pair = backend.encode(question, context, add_special_tokens=True)
            templates.add(_split_pair(pair, alone[0], alone[1]))
    except Exception:  # any surprise from an exotic tokenizer means: use the tokenizer windows
        return None
    if len(templates) != 1:
        return None
    template = templates.pop()
    if template is None or template.special_tokens != tokenizer.num_special_tokens_to_add(
            pair=True):
        return None
    return template


def _split_pair(pair: Any, question_ids: list[int], context_ids: list[int]
                ) -> PairTemplate | None:
    """Cut an encoded pair into prefix, question, middle, context, suffix; None if it isn't."""
    sequence_ids = pair.sequence_ids
    positions = {sequence: [i for i, s in enumerate(sequence_ids) if s == sequence]
                 for sequence in (0, 1)}
    q_first, q_last = positions[0][0], positions[0][-1]
    c_first, c_last = positions[1][0], positions[1][-1]
    ids, types = pair.ids, pair.type_ids
    if (positions[0] != list(range(q_first, q_last + 1))
            or positions[1] != list(range(c_first, c_last + 1))
            or ids[q_first:q_last + 1] != question_ids or ids[c_first:c_last + 1] != context_ids
            or not q_last < c_first or len(set(types[q_first:q_last + 1])) != 1
            or len(set(types[c_first:c_last + 1])) != 1):
        return None
    special = [i for i, s in enumerate(sequence_ids) if s is None]
    if any(pair.special_tokens_mask[i] != 1 for i in special):
        return None
    return PairTemplate(
        prefix_ids=tuple(ids[:q_first]), middle_ids=tuple(ids[q_last + 1:c_first]),
        suffix_ids=tuple(ids[c_last + 1:]), prefix_types=tuple(types[:q_first]),
        middle_types=tuple(types[q_last + 1:c_first]), suffix_types=tuple(types[c_last + 1:]),
        question_type=types[q_first], context_type=types[c_first],
    )


def _template_reproduces_tokenizer(tokenizer: Any, template: PairTemplate) -> bool:
    """Probe examples through both paths, at settings that force overflow and truncation."""
    from squadft.data.squad import Answer

    context = _PROBE_CONTEXT
    answer = "Unua Libro"
    probes = [Example(f"probe{i}", "", context, question, (Answer(answer, context.index(answer)),),
                      False) for i, question in enumerate(_PROBE_QUESTIONS)]
    settings = {"max_seq_length": template.special_tokens + 4 + 12, "doc_stride": 5,
                "max_query_length": 4}
    try:
        expected, expected_report = _build(probes, tokenizer, **settings, template=None)
        actual, actual_report = _build(probes, tokenizer, **settings, template=template)
    except Exception:
        return False
    return expected_report == actual_report and all(
        _same_array(getattr(expected, field.name), getattr(actual, field.name))
        for field in dataclasses.fields(Features))


def _same_array(left: np.ndarray | None, right: np.ndarray | None) -> bool:
    if left is None or right is None:
        return left is None and right is None
    return left.dtype == right.dtype and np.array_equal(left, right)


@dataclasses.dataclass
class _Pool:
    """One pool holds every piece a window is made of: the template's special tokens, all
    questions, all contexts. A window is five ranges of it, gathered in one fancy index."""

    ids: np.ndarray
    types: np.ndarray
    offsets: np.ndarray
    question_base: int  # where the questions start in the pool
    context_base: int  # where the contexts start
    question_lengths: np.ndarray  # per example
    context_lengths: np.ndarray  # per distinct context
    context_of_example: np.ndarray


def _token_pool(examples: Sequence[Example], backend: Any, template: PairTemplate,
                question_limit: int, report: FeatureReport) -> _Pool:
    question_ids = _encode_questions(examples, backend, question_limit, report)
    context_number: dict[str, int] = {}
    context_of_example = np.fromiter(
        (context_number.setdefault(example.context, len(context_number))
         for example in examples), dtype=np.int64, count=len(examples))
    context_encodings = backend.encode_batch(list(context_number), add_special_tokens=False)
    question_lengths = np.fromiter(map(len, question_ids), dtype=np.int64,
                                   count=len(question_ids))
    context_lengths = np.fromiter((len(e.ids) for e in context_encodings), dtype=np.int64,
                                  count=len(context_encodings))
    question_tokens = np.fromiter(chain.from_iterable(question_ids), dtype=np.int64,
                                  count=int(question_lengths.sum()))
    context_total = int(context_lengths.sum())
    context_tokens = np.fromiter(chain.from_iterable(e.ids for e in context_encodings),
                                 dtype=np.int64, count=context_total)
    context_offsets = np.fromiter(
        chain.from_iterable(chain.from_iterable(e.offsets for e in context_encodings)),
        dtype=np.int64, count=2 * context_total).reshape(context_total, 2)
    specials = np.asarray(template.prefix_ids + template.middle_ids + template.suffix_ids,
                          dtype=np.int64)
    question_base = len(specials)
    context_base = question_base + len(question_tokens)
    types = np.concatenate([
        np.asarray(template.prefix_types + template.middle_types + template.suffix_types,
                   dtype=np.int8),
        np.full(len(question_tokens), template.question_type, dtype=np.int8),
        np.full(context_total, template.context_type, dtype=np.int8)])
    return _Pool(
        ids=np.concatenate([specials, question_tokens, context_tokens]), types=types,
        offsets=np.concatenate([np.full((context_base, 2), -1, dtype=np.int64),
                                context_offsets]),
        question_base=question_base, context_base=context_base,
        question_lengths=question_lengths, context_lengths=context_lengths,
        context_of_example=context_of_example)


def _build_chunk_from_contexts(
    examples: Sequence[Example], tokenizer: Any, backend: Any, template: PairTemplate,
    max_seq_length: int, doc_stride: int, question_limit: int, with_token_types: bool,
    report: FeatureReport,
) -> dict[str, np.ndarray]:
    pool = _token_pool(examples, backend, template, question_limit, report)
    question_lengths, context_lengths = pool.question_lengths, pool.context_lengths
    context_of_example = pool.context_of_example
    prefix, middle, suffix = (len(template.prefix_ids), len(template.middle_ids),
                              len(template.suffix_ids))

    capacity = max_seq_length - template.special_tokens - question_lengths
    example_index, window_start, window_stop = _window_spans(
        capacity, doc_stride, context_lengths[context_of_example])

    question_start = np.cumsum(question_lengths) - question_lengths
    context_start = np.cumsum(context_lengths) - context_lengths
    n_windows = len(example_index)
    segment_starts = np.stack([
        np.zeros(n_windows, dtype=np.int64),
        pool.question_base + question_start[example_index],
        np.full(n_windows, prefix, dtype=np.int64),
        pool.context_base + context_start[context_of_example[example_index]] + window_start,
        np.full(n_windows, prefix + middle, dtype=np.int64),
    ], axis=1)
    context_in_window = window_stop - window_start
    segment_lengths = np.stack([
        np.full(n_windows, prefix, dtype=np.int64),
        question_lengths[example_index],
        np.full(n_windows, middle, dtype=np.int64),
        context_in_window,
        np.full(n_windows, suffix, dtype=np.int64),
    ], axis=1)
    gather = _concatenated_ranges(segment_starts.ravel(), segment_lengths.ravel())
    lengths = segment_lengths.sum(axis=1)
    row_splits = _row_splits(lengths)

    input_ids = pool.ids[gather].astype(np.int32)
    token_type_ids = pool.types[gather] if with_token_types else None
    offsets = pool.offsets[gather].astype(np.int32)
    is_context = gather >= pool.context_base
    has_context = context_in_window > 0
    context_first = np.where(has_context, prefix + question_lengths[example_index] + middle, 0)
    context_last = np.where(has_context, context_first + context_in_window - 1, -1)
    window_of_token = np.repeat(np.arange(n_windows), lengths)
    example_index = example_index.astype(np.int32)
    return _labelled_chunk(
        examples, tokenizer, report, input_ids=input_ids, token_type_ids=token_type_ids,
        offsets=offsets, row_splits=row_splits, example_index=example_index,
        is_context=is_context, window_of_token=window_of_token, context_first=context_first,
        context_last=context_last,
    )


def _window_spans(capacity: np.ndarray, doc_stride: int, context_length: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(example of each window, its first context token, one past its last), as the
    tokenizer's overflow (tokenizers' Encoding::truncate) cuts them: with L context tokens per
    window, window k covers context tokens [k * (L - stride), min(k * (L - stride) + L, n)),
    and windows stop at the first one that reaches the end of the context."""
    step = capacity - doc_stride
    windows_per_example = np.where(
        context_length <= capacity, 1,
        1 + (context_length - capacity + step - 1) // np.maximum(step, 1))
    example_index = np.repeat(np.arange(len(capacity)), windows_per_example)
    first_window = np.cumsum(windows_per_example) - windows_per_example
    k = np.arange(len(example_index)) - np.repeat(first_window, windows_per_example)
    window_start = k * step[example_index]
    window_stop = np.minimum(window_start + capacity[example_index],
                             context_length[example_index])
    return example_index, window_start, window_stop


def _encode_questions(examples: Sequence[Example], backend: Any, limit: int,
                      report: FeatureReport) -> list[list[int]]:
    """Question token ids, each cut to `limit` tokens exactly as `_truncate_questions` cuts."""
    questions = [example.question for example in examples]
    encodings = backend.encode_batch(questions, add_special_tokens=False)
    result = []
    for question, encoding in zip(questions, encodings, strict=True):
        ids = encoding.ids
        if len(ids) > limit:
            report.truncated_questions += 1
            _, ids = _cut_question(question, encoding.offsets, limit,
                                   lambda text: backend.encode(text, add_special_tokens=False).ids)
        result.append(ids)
    return result


def _labelled_chunk(
    examples: Sequence[Example], tokenizer: Any, report: FeatureReport, *,
    input_ids: np.ndarray, token_type_ids: np.ndarray | None, offsets: np.ndarray,
    row_splits: np.ndarray, example_index: np.ndarray, is_context: np.ndarray,
    window_of_token: np.ndarray, context_first: np.ndarray, context_last: np.ndarray,
) -> dict[str, np.ndarray]:
    """A chunk's arrays plus each window's answer labels (its CLS position when unanswerable)."""
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
    def joined(name: str) -> np.ndarray:
        return np.concatenate([chunk[name] for chunk in chunks])

    return Features(
        input_ids=joined("input_ids"),
        token_type_ids=joined("token_type_ids") if with_token_types else None,
        offsets=joined("offsets"),
        row_splits=_row_splits(np.concatenate([np.diff(c["row_splits"]) for c in chunks])),
        example_index=joined("example_index"),
        start_positions=joined("start_positions"),
        end_positions=joined("end_positions"),
        cls_index=joined("cls_index"),
    )


def _row_splits(lengths: np.ndarray) -> np.ndarray:
    """int64 [n + 1] offsets of windows with these lengths, laid end to end."""
    row_splits = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=row_splits[1:])
    return row_splits


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
    if isinstance(tokenizer, LazyTokenizer):
        return tokenizer.fingerprint()
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


# Files AutoTokenizer reads from a model directory (config.json picks the class when
# tokenizer_config.json does not name one); weights and training state are left out.
_TOKENIZER_FILE_NAMES = frozenset({"config.json", "special_tokens_map.json", "added_tokens.json",
                                   "merges.txt", "chat_template.jinja"})


def _is_tokenizer_file(name: str) -> bool:
    return (name in _TOKENIZER_FILE_NAMES or name.startswith("tokenizer") or "vocab" in name
            or name.endswith(".model"))


def tokenizer_files_key(name_or_path: str | Path) -> str | None:
    """sha256 of a local model directory's tokenizer files and the tokenizer libraries'
    versions (what determines the loaded tokenizer), or None for a hub name."""
    from importlib import metadata

    directory = Path(name_or_path)
    if not directory.is_dir():
        return None
    digest = hashlib.sha256()
    for package in ("transformers", "tokenizers"):  # both are dependencies of squadft
        digest.update(f"{package}={metadata.version(package)}\n".encode())
    try:
        for file in sorted(directory.iterdir()):
            if _is_tokenizer_file(file.name) and file.is_file():
                digest.update(f"{file.name}\0{sha256_file(file)}\n".encode())
    except OSError:
        return None
    return digest.hexdigest()


class LazyTokenizer:
    """A tokenizer named by model directory, loaded only if features must be built.

    Its fingerprint (for the features cache key) is remembered under
    <cache_dir>/tokenizers/ by `tokenizer_files_key`, so a fully cached run never imports
    transformers (and torch behind it), which takes seconds.
    """

    def __init__(self, name_or_path: str, loader: Callable[[str], Any], *,
                 cache_dir: str | Path):
        self.name_or_path = name_or_path
        self._loader = loader
        self._index = Path(cache_dir) / "tokenizers"
        self._tokenizer: Any = None
        self._fingerprint: str | None = None

    @property
    def loaded(self) -> bool:
        return self._tokenizer is not None

    def get(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = self._loader(self.name_or_path)
        return self._tokenizer

    def fingerprint(self) -> str:
        if self._fingerprint is not None:
            return self._fingerprint
        files_key = tokenizer_files_key(self.name_or_path)
        entry = self._index / f"{files_key}.json"
        if files_key is not None:
            with suppress(OSError, ValueError, KeyError, TypeError):
                remembered = json.loads(entry.read_text(encoding="utf-8"))["fingerprint"]
                self._fingerprint = str(remembered)
                return self._fingerprint
        self._fingerprint = tokenizer_fingerprint(self.get())
        if files_key is not None:
            with suppress(StorageError):  # only costs loading the tokenizer again next time
                atomic_write_json(entry, {"fingerprint": self._fingerprint,
                                          "model": self.name_or_path})
        return self._fingerprint


def _examples_fingerprint(examples: Sequence[Example]) -> str:
    # Guards against reusing features with a different list of examples under the same data
    # key (example_index would silently point at the wrong questions).
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
    """Key from what determines the features without reading the examples themselves (the data
    file's sha256 and sample limit in `data_key`, the parser version, their number), so a
    cached run needs no parse; their content is checked against the entry when at hand."""
    inputs = {
        "format": FEATURES_FORMAT_VERSION,
        "data_key": data_key,
        "parser": PARSER_VERSION,
        "examples": len(examples),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_seq_length": max_seq_length,
        "doc_stride": doc_stride,
        "max_query_length": max_query_length,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def load_or_build_features(
    examples: Sequence[Example], tokenizer: Any, *, cache_dir: str | Path, data_key: str,
    max_seq_length: int, doc_stride: int, max_query_length: int,
) -> tuple[Features, FeatureReport, bool]:
    """Features from <cache_dir>/features/<key>/ when complete there, else built and stored.

    Returns (features, report, cache_hit). The directory appears under its final name only
    once every array and the metadata are on disk (built in a temp dir, then renamed), so an
    interrupted run leaves nothing that a later run could mistake for a valid cache.
    `tokenizer` may be a `LazyTokenizer` and `examples` a `CachedExamples`: a hit then loads
    neither.
    """
    key = features_cache_key(examples, tokenizer, data_key=data_key,
                             max_seq_length=max_seq_length, doc_stride=doc_stride,
                             max_query_length=max_query_length)
    root = Path(cache_dir) / "features"
    final = root / key
    cached = _load_cached(final, key, len(examples))
    not_parsed_yet = isinstance(examples, CachedExamples) and not examples.loaded
    fingerprint = None if not_parsed_yet else _examples_fingerprint(examples)
    if cached is not None and fingerprint in (None, cached[2]):
        return cached[0], cached[1], True

    if isinstance(tokenizer, LazyTokenizer):
        tokenizer = tokenizer.get()
    features, report = build_features(examples, tokenizer, max_seq_length=max_seq_length,
                                      doc_stride=doc_stride, max_query_length=max_query_length)
    if fingerprint is None:
        fingerprint = _examples_fingerprint(examples)
    _store(features, report, root, final, key, len(examples), fingerprint)
    stored = _load_cached(final, key, len(examples))
    if stored is None:  # pragma: no cover - only if the disk lies to us
        raise StorageError(f"features cache {final} is unreadable right after writing it")
    return stored[0], stored[1], False


def _store(features: Features, report: FeatureReport, root: Path, final: Path, key: str,
           num_examples: int, examples_fingerprint: str) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        temp = make_temp_dir(root, key)  # 0777 & ~umask: a shared cache stays readable
    except OSError as exc:
        raise StorageError(describe_os_error(exc, root)) from None
    # numpy says "N requested and M written" on a full disk: the reason is told from the free
    # space, so before the partial arrays are deleted
    with removed_on_failure(temp, final):
        shapes = {}
        for name in _ARRAY_NAMES:
            array = getattr(features, name)
            if array is None:
                continue
            with open(temp / f"{name}.npy", "wb") as handle:
                # through `write`: numpy's own tofile loses the errno ("N requested and M
                # written"), and a full disk must be called one
                np.save(ErrorKeepingWriter(handle), np.ascontiguousarray(array),
                        allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            shapes[name] = {"shape": list(array.shape), "dtype": str(array.dtype)}
        atomic_write_json(temp / META_FILE, {
            "format": FEATURES_FORMAT_VERSION, "key": key, "examples": num_examples,
            "examples_fingerprint": examples_fingerprint, "arrays": shapes,
            "report": dataclasses.asdict(report),
        })
        fsync_dir(temp)
        existing = _load_cached(final, key, num_examples)
        if final.exists() and (existing is None or existing[2] != examples_fingerprint):
            # A damaged entry under the final name (copied by hand, disk trouble), or one built
            # from other examples under the same data key: replace it.
            replace_directory(temp, final)
        else:
            try:
                os.rename(temp, final)
            except OSError:
                # Another process (a concurrent rank or job) finished the same key first;
                # theirs is equivalent, so keep it and drop ours.
                if not final.is_dir():
                    raise
                shutil.rmtree(temp, ignore_errors=True)
            fsync_dir(root)


def _load_cached(directory: Path, key: str, num_examples: int
                 ) -> tuple[Features, FeatureReport, str] | None:
    """(features, report, examples fingerprint) cached under `directory`, or None unless the
    directory is complete and matches `key`."""
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        if (meta.get("format") != FEATURES_FORMAT_VERSION or meta.get("key") != key
                or meta.get("examples") != num_examples):
            return None
        arrays: dict[str, np.ndarray | None] = dict.fromkeys(_ARRAY_NAMES)
        for name in _ARRAY_NAMES:
            expected = meta["arrays"].get(name)
            if expected is not None:
                array = np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                if list(array.shape) != expected["shape"] or str(array.dtype) != expected["dtype"]:
                    return None
                arrays[name] = array
        report = FeatureReport(**meta["report"])
        examples_fingerprint = str(meta["examples_fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if arrays["row_splits"] is None or arrays["input_ids"] is None:
        return None
    return Features(**arrays), report, examples_fingerprint  # type: ignore[arg-type]
