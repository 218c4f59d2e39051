"""Sliding-window features (squadft.data.features): real subsets, real BERT tokenizer."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from squadft.data.features import (
    FEATURES_FORMAT_VERSION,
    FeatureReport,
    Features,
    LazyTokenizer,
    PairTemplate,
    _template_reproduces_tokenizer,
    build_features,
    build_features_tokenizer_windows,
    features_cache_key,
    load_or_build_features,
    pair_template,
    tokenizer_files_key,
    tokenizer_fingerprint,
)
from squadft.data.squad import CachedExamples, Example, ParseReport, load_squad_cached
from squadft.errors import EXIT_STORAGE, ConfigError, StorageError
from squadft.io import sha256_file
from squadft.modeling import load_tokenizer

IMPOSSIBLE_ID = "5a8d7bf7df8bba001a0f9ab1"  # has plausible_answers "action-adventure" in the file
FULL = {"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64}
SMALL = {"max_seq_length": 128, "doc_stride": 32, "max_query_length": 64}
# 48-token windows: ~33 context tokens overlapping by 8, and most questions cut to 12 tokens
TIGHT = {"max_seq_length": 48, "doc_stride": 8, "max_query_length": 12}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def roberta_tokenizer(train_parsed: tuple[list[Example], ParseReport]) -> Any:
    """A RoBERTa-style tokenizer: byte-level BPE (2,000 tokens, trained here on the train
    contexts), <s> q </s></s> c </s> with offset trimming, no token_type_ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(list(dict.fromkeys(e.context for e in train_parsed[0])), trainer)
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", backend.token_to_id("</s>")), ("<s>", backend.token_to_id("<s>")),
        trim_offsets=True, add_prefix_space=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>",
        cls_token="<s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
        model_input_names=["input_ids", "attention_mask"])
    assert len(tokenizer) == 2000 and tokenizer.num_special_tokens_to_add(pair=True) == 4
    return tokenizer


@pytest.fixture(scope="module")
def train_features(train_parsed: tuple[list[Example], ParseReport], bert_tokenizer: Any
                   ) -> tuple[Features, FeatureReport]:
    return build_features(train_parsed[0], bert_tokenizer, **FULL)


@pytest.fixture(scope="module")
def dev_features(dev_parsed: tuple[list[Example], ParseReport], bert_tokenizer: Any
                 ) -> tuple[Features, FeatureReport]:
    return build_features(dev_parsed[0], bert_tokenizer, **FULL)


@pytest.fixture(scope="module")
def small_window_features(train_parsed: tuple[list[Example], ParseReport], bert_tokenizer: Any
                          ) -> tuple[list[Example], Features, FeatureReport]:
    examples = train_parsed[0][:600]
    features, report = build_features(examples, bert_tokenizer, **SMALL)
    return examples, features, report


def _windows_of(features: Features, example_number: int) -> np.ndarray:
    return np.flatnonzero(np.asarray(features.example_index) == example_number)


def _context_span_of_window(features: Features, window: int) -> tuple[int, int]:
    offsets = features.window(window)["offsets"]
    context = offsets[offsets[:, 0] >= 0]
    return int(context[0, 0]), int(context[-1, 1])


# --- layout --------------------------------------------------------------------------------------


def test_layout_dtypes_and_non_context_offsets(
    train_parsed: tuple[list[Example], ParseReport], train_features: tuple[Features, FeatureReport],
    bert_tokenizer: Any,
):
    features, report = train_features
    examples = train_parsed[0]
    assert features.input_ids.dtype == np.int32 and features.offsets.dtype == np.int32
    assert features.token_type_ids is not None and features.token_type_ids.dtype == np.int8
    assert features.row_splits.dtype == np.int64 and features.row_splits[0] == 0
    assert features.row_splits[-1] == len(features.input_ids) == len(features.offsets)
    for name in ("example_index", "start_positions", "end_positions", "cls_index"):
        assert getattr(features, name).dtype == np.int32 and len(getattr(features, name)) == len(
            features)
    assert len(features) == report.features == 4812
    assert int(features.lengths.max()) <= 384 and int(features.lengths.min()) > 0
    assert (np.asarray(features.cls_index) == 0).all()
    assert np.array_equal(np.unique(features.example_index), np.arange(len(examples)))

    # Window 0 against the tokenizer itself: [CLS] question [SEP] context [SEP], with the
    # offsets of everything but the context set to (-1, -1).
    window = features.window(0)
    encoded = bert_tokenizer(examples[0].question, examples[0].context)
    assert window["input_ids"].tolist() == encoded["input_ids"]
    assert window["token_type_ids"].tolist() == encoded["token_type_ids"]
    question_tokens = len(bert_tokenizer(examples[0].question, add_special_tokens=False)
                          ["input_ids"])
    offsets = window["offsets"]
    assert (offsets[: question_tokens + 2] == -1).all() and (offsets[-1] == -1).all()
    assert (offsets[question_tokens + 2: -1] >= 0).all()
    assert (np.diff(offsets[question_tokens + 2: -1, 0]) > 0).all()


def test_select_repacks_windows(train_features: tuple[Features, FeatureReport]):
    features, _ = train_features
    chosen = np.array([17, 3, 4000, 3])
    subset = features.select(chosen)
    assert len(subset) == 4 and subset.lengths.tolist() == features.lengths[chosen].tolist()
    for new, old in enumerate(chosen):
        for key, value in subset.window(new).items():
            assert np.array_equal(value, features.window(int(old))[key])
    for name in ("example_index", "start_positions", "end_positions", "cls_index"):
        assert np.array_equal(getattr(subset, name), getattr(features, name)[chosen])
    assert len(features.select(np.array([], dtype=np.int64))) == 0


# --- labels --------------------------------------------------------------------------------------


def test_impossible_questions_are_labelled_cls_despite_plausible_answers(
    train_json: dict[str, Any], train_parsed: tuple[list[Example], ParseReport],
    train_features: tuple[Features, FeatureReport],
):
    qa = next(qa for article in train_json["data"] for paragraph in article["paragraphs"]
              for qa in paragraph["qas"] if qa["id"] == IMPOSSIBLE_ID)
    plausible = qa["plausible_answers"][0]
    assert qa["is_impossible"] and plausible["text"] == "action-adventure"
    examples = train_parsed[0]
    number = next(i for i, example in enumerate(examples) if example.id == IMPOSSIBLE_ID)
    features, report = train_features
    windows = _windows_of(features, number)
    assert len(windows) >= 1
    for window in windows:
        # The plausible answer IS inside this window, yet the label must be "no answer".
        begin, end = _context_span_of_window(features, int(window))
        assert begin <= plausible["answer_start"] < end
        assert features.start_positions[window] == features.end_positions[window] == \
            features.cls_index[window]
    impossible = np.array([example.is_impossible for example in examples])
    of_impossible = impossible[features.example_index]
    assert (features.start_positions[of_impossible] == features.cls_index[of_impossible]).all()
    assert (features.end_positions[of_impossible] == features.cls_index[of_impossible]).all()
    assert report.impossible_examples == 348


def test_long_contexts_give_overlapping_windows_labelled_exactly_where_the_answer_fits(
    small_window_features: tuple[list[Example], Features, FeatureReport],
):
    examples, features, report = small_window_features
    example_index = np.asarray(features.example_index)
    windows_per_example = np.bincount(example_index, minlength=len(examples))
    assert windows_per_example.max() >= 4 and report.features == len(features) > len(examples)

    labelled_twice = 0
    for number in np.flatnonzero(windows_per_example >= 2):
        example = examples[number]
        windows = _windows_of(features, int(number))
        # Consecutive windows overlap by exactly doc_stride context tokens.
        for a, b in zip(windows[:-1], windows[1:], strict=True):
            context_a = features.window(int(a))["offsets"]
            context_b = features.window(int(b))["offsets"]
            context_a = context_a[context_a[:, 0] >= 0]
            context_b = context_b[context_b[:, 0] >= 0]
            assert np.array_equal(context_a[-SMALL["doc_stride"]:],
                                  context_b[: SMALL["doc_stride"]])
        if example.is_impossible:
            continue
        answer = example.answers[0]
        labelled = 0
        for window in windows:
            begin, end = _context_span_of_window(features, int(window))
            fits = begin <= answer.start and answer.end <= end
            is_labelled = features.start_positions[window] != features.cls_index[window]
            assert is_labelled == fits, (example.id, int(window))
            if fits:
                labelled += 1
                offsets = features.window(int(window))["offsets"]
                start, stop = features.start_positions[window], features.end_positions[window]
                assert offsets[start, 0] <= answer.start < offsets[start, 1]
                assert offsets[stop, 0] < answer.end <= offsets[stop, 1]
        labelled_twice += labelled >= 2
    assert labelled_twice > 10  # answers in the overlap are labelled in both windows


def _check_round_trip(examples: list[Example], features: Features, name: str
                      ) -> tuple[int, int]:
    """Every labelled window maps back to the gold text; returns (exact, subword) counts."""
    labelled = np.flatnonzero(np.asarray(features.start_positions) != features.cls_index)
    exact = subword = 0
    others = []
    for window in labelled:
        example = examples[features.example_index[window]]
        answer = example.answers[0]
        offsets = features.window(int(window))["offsets"]
        start = offsets[features.start_positions[window]]
        end = offsets[features.end_positions[window]]
        recovered = example.context[start[0]:end[1]]
        if recovered == answer.text:
            exact += 1
        elif (start[0] <= answer.start < start[1] and end[0] < answer.end <= end[1]
              and answer.text in recovered):
            # WordPiece cannot split inside a piece: gold "Tibet" in "Tibetan" is one token, so
            # the tightest token span is the whole word. Allowed, counted.
            subword += 1
        else:
            others.append((example.id, answer.text, recovered))
    print(f"{name}: {len(labelled)} labelled windows, {exact} exact, {subword} inside a "
          f"WordPiece token, {len(others)} other mismatches {others[:5]}")
    assert not others
    return exact, subword


def test_offsets_round_trip_to_the_gold_text_on_the_real_subsets(
    train_parsed: tuple[list[Example], ParseReport], train_features: tuple[Features, FeatureReport],
    dev_parsed: tuple[list[Example], ParseReport], dev_features: tuple[Features, FeatureReport],
):
    for name, examples, (features, report) in (("train", train_parsed[0], train_features),
                                               ("dev", dev_parsed[0], dev_features)):
        exact, subword = _check_round_trip(examples, features, name)
        assert exact + subword == report.answer_features
        assert subword <= 0.01 * report.answer_features  # measured: train 29, dev 1
        # No answer is lost silently: each answerable example is labelled or counted.
        answerable = np.array([not example.is_impossible for example in examples])
        labelled = np.asarray(features.start_positions) != features.cls_index
        per_example = np.bincount(features.example_index[labelled], minlength=len(examples))
        outside = int((answerable & (per_example == 0)).sum())
        print(f"{name}: {report.summary()}")
        assert report.answers_outside_every_window == outside
        assert report.answers == int(answerable.sum())
        assert report.cls_features + report.answer_features == report.features
    assert train_features[1].answers_outside_every_window == 0  # 384/128 fits every answer here


def test_answers_outside_every_window_are_counted(
    small_window_features: tuple[list[Example], Features, FeatureReport], bert_tokenizer: Any,
):
    examples, features, report = small_window_features
    # 48-token windows keep about 33 context tokens and overlap by 8: an answer longer than the
    # overlap that straddles a window boundary fits in no window at all.
    tight, tight_report = build_features(examples, bert_tokenizer, max_seq_length=48,
                                         doc_stride=8, max_query_length=12)
    answerable = [i for i, example in enumerate(examples) if not example.is_impossible]
    labelled = np.asarray(tight.start_positions) != tight.cls_index
    per_example = np.bincount(tight.example_index[labelled], minlength=len(examples))
    outside = [i for i in answerable if per_example[i] == 0]
    print(f"48/8: {tight_report.summary()}")
    assert tight_report.answers_outside_every_window == len(outside) > 0
    assert tight_report.truncated_questions > 0  # questions were cut to fit 48 tokens
    for i in outside:  # independently: no window's context covers the whole answer
        answer = examples[i].answers[0]
        for window in _windows_of(tight, i):
            begin, end = _context_span_of_window(tight, int(window))
            assert not (begin <= answer.start and answer.end <= end)
    _check_round_trip(examples, tight, "train[:600] at 48/8")


def test_long_questions_are_truncated_not_fatal(
    train_parsed: tuple[list[Example], ParseReport], bert_tokenizer: Any
):
    base = train_parsed[0][0]
    long_question = dataclasses.replace(base, id="long", question=" ".join([base.question] * 30))
    examples = [base, long_question]
    features, report = build_features(examples, bert_tokenizer, max_seq_length=128,
                                      doc_stride=32, max_query_length=16)
    assert report.truncated_questions == 1
    for window in range(len(features)):
        ids = features.window(window)["input_ids"]
        offsets = features.window(window)["offsets"]
        question_tokens = int((offsets[:, 0] < 0).sum()) - 3
        assert question_tokens <= 16 and len(ids) <= 128
    long_windows = _windows_of(features, 1)
    assert (features.start_positions[long_windows] != features.cls_index[long_windows]).any()
    # max_query_length larger than the window allows is clamped instead of crashing the
    # tokenizer (which panics when a window has no more than doc_stride context tokens).
    _, clamped = build_features(examples, bert_tokenizer, max_seq_length=64, doc_stride=32,
                                max_query_length=64)
    assert clamped.truncated_questions == 1


def test_impossible_window_settings_are_a_config_error(bert_tokenizer: Any,
                                                       train_parsed: tuple[list[Example], Any]):
    with pytest.raises(ConfigError, match="max_seq_length=40 leaves no room"):
        build_features(train_parsed[0][:2], bert_tokenizer, max_seq_length=40, doc_stride=40,
                       max_query_length=8)


def _assert_same(a: Features, b: Features) -> None:
    for field in dataclasses.fields(Features):
        left, right = getattr(a, field.name), getattr(b, field.name)
        assert (left is None) == (right is None)
        if left is not None:
            assert left.dtype == right.dtype and np.array_equal(left, right), field.name


# --- numpy windows vs the tokenizer's own windows ------------------------------------------------


def test_pair_templates_are_derived_from_the_tokenizer(bert_tokenizer: Any,
                                                       roberta_tokenizer: Any):
    cls, sep = bert_tokenizer.cls_token_id, bert_tokenizer.sep_token_id
    assert pair_template(bert_tokenizer) == PairTemplate(
        prefix_ids=(cls,), middle_ids=(sep,), suffix_ids=(sep,), prefix_types=(0,),
        middle_types=(0,), suffix_types=(1,), question_type=0, context_type=1)
    begin, end = roberta_tokenizer.cls_token_id, roberta_tokenizer.sep_token_id
    template = pair_template(roberta_tokenizer)
    assert template is not None
    assert (template.prefix_ids, template.middle_ids, template.suffix_ids) == (
        (begin,), (end, end), (end,))


@pytest.mark.slow
@pytest.mark.parametrize("settings", [FULL, TIGHT], ids=["384-128", "48-8-q12"])
def test_numpy_windows_equal_the_bert_tokenizers_windows(
    settings: dict[str, int], bert_tokenizer: Any,
    train_parsed: tuple[list[Example], ParseReport], dev_parsed: tuple[list[Example], ParseReport],
):
    for examples in (train_parsed[0], dev_parsed[0]):
        # The reference leaves its truncation settings on the tokenizer's backend (and the
        # bundled tokenizer.json ships truncation + padding to 128): the numpy path must not
        # inherit them.
        reference, reference_report = build_features_tokenizer_windows(
            examples, bert_tokenizer, **settings)
        fast, fast_report = build_features(examples, bert_tokenizer, **settings)
        _assert_same(fast, reference)
        assert fast_report == reference_report
    if settings is TIGHT:
        assert fast_report.truncated_questions > 1000 and fast_report.features > 25000


@pytest.mark.slow
@pytest.mark.parametrize("settings", [FULL, TIGHT], ids=["384-128", "48-8-q12"])
def test_numpy_windows_equal_a_roberta_style_tokenizers_windows(
    settings: dict[str, int], roberta_tokenizer: Any,
    train_parsed: tuple[list[Example], ParseReport], dev_parsed: tuple[list[Example], ParseReport],
):
    for examples in (train_parsed[0], dev_parsed[0]):
        reference, reference_report = build_features_tokenizer_windows(
            examples, roberta_tokenizer, **settings)
        fast, fast_report = build_features(examples, roberta_tokenizer, **settings)
        assert fast.token_type_ids is None and (fast.cls_index == 0).all()
        _assert_same(fast, reference)
        assert fast_report == reference_report
        assert fast_report.answer_features > 0.9 * fast_report.answers


def test_numpy_windows_equal_the_tokenizers_for_long_questions(
    train_parsed: tuple[list[Example], ParseReport], bert_tokenizer: Any, roberta_tokenizer: Any,
):
    base = train_parsed[0][0]
    examples = [base] + [
        dataclasses.replace(base, id=f"long{n}", question=" ".join([base.question] * n))
        for n in (2, 5, 30)]
    examples.append(dataclasses.replace(base, id="empty-context", context="   ", answers=(),
                                        is_impossible=True))
    for tokenizer in (bert_tokenizer, roberta_tokenizer):
        for settings in ({"max_seq_length": 128, "doc_stride": 32, "max_query_length": 16},
                         {"max_seq_length": 64, "doc_stride": 32, "max_query_length": 64}):
            reference, reference_report = build_features_tokenizer_windows(
                examples, tokenizer, **settings)
            fast, fast_report = build_features(examples, tokenizer, **settings)
            _assert_same(fast, reference)
            assert fast_report == reference_report and fast_report.truncated_questions >= 2


def test_a_template_numpy_cannot_reproduce_falls_back_to_the_tokenizer(
    train_parsed: tuple[list[Example], ParseReport], bert_tokenizer: Any,
):
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    # Context before question: not the single-pair layout the numpy windows assume.
    backend = Tokenizer.from_str(bert_tokenizer.backend_tokenizer.to_str())
    cls, sep = bert_tokenizer.cls_token_id, bert_tokenizer.sep_token_id
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $B:1 [SEP] $A:0 [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    swapped = PreTrainedTokenizerFast(
        tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
        unk_token="[UNK]", mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    assert pair_template(swapped) is None
    examples = train_parsed[0][:200]
    features, report = build_features(examples, swapped, **SMALL)
    reference, reference_report = build_features_tokenizer_windows(examples, swapped, **SMALL)
    _assert_same(features, reference)
    assert report == reference_report and report.answer_features > 100
    first = features.window(0)
    assert first["offsets"][1, 0] == 0  # the context really comes first here

    # A derived template that disagrees with the tokenizer is caught by the probe check.
    template = pair_template(bert_tokenizer)
    assert template is not None and _template_reproduces_tokenizer(bert_tokenizer, template)
    for wrong in (dataclasses.replace(template, context_type=0),
                  dataclasses.replace(template, suffix_ids=(sep, sep),
                                      suffix_types=(1, 1))):
        assert not _template_reproduces_tokenizer(bert_tokenizer, wrong)


# --- cache ---------------------------------------------------------------------------------------


def test_cache_hit_miss_and_stride_change(
    tmp_path: Path, train_parsed: tuple[list[Example], ParseReport], bert_tokenizer: Any
):
    examples = train_parsed[0][:300]
    built, built_report = build_features(examples, bert_tokenizer, **SMALL)
    first, first_report, hit = load_or_build_features(
        examples, bert_tokenizer, cache_dir=tmp_path, data_key="sha:abc", **SMALL)
    assert not hit
    _assert_same(first, built)
    assert first_report == built_report
    entries = list((tmp_path / "features").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")
    meta = json.loads((entries[0] / "meta.json").read_text())
    assert meta["format"] == FEATURES_FORMAT_VERSION and meta["report"]["features"] == len(built)

    second, second_report, hit = load_or_build_features(
        examples, bert_tokenizer, cache_dir=tmp_path, data_key="sha:abc", **SMALL)
    assert hit and second_report == built_report
    assert isinstance(second.input_ids, np.memmap)  # memory-mapped, not read into RAM
    _assert_same(second, built)

    changed = dict(SMALL, doc_stride=16)
    _, _, hit = load_or_build_features(
        examples, bert_tokenizer, cache_dir=tmp_path, data_key="sha:abc", **changed)
    assert not hit
    _, _, hit = load_or_build_features(
        examples, bert_tokenizer, cache_dir=tmp_path, data_key="sha:other", **SMALL)
    assert not hit
    _, _, hit = load_or_build_features(
        examples[:299], bert_tokenizer, cache_dir=tmp_path, data_key="sha:abc", **SMALL)
    assert not hit  # a different parse (here: fewer examples) never reuses example indices
    assert len(list((tmp_path / "features").iterdir())) == 4


def test_incomplete_or_temporary_cache_dirs_are_never_used(
    tmp_path: Path, train_parsed: tuple[list[Example], ParseReport], bert_tokenizer: Any
):
    examples = train_parsed[0][:200]
    key = features_cache_key(examples, bert_tokenizer, data_key="k", **SMALL)
    root = tmp_path / "features"
    # What an interrupted writer leaves behind: a temp dir with a full-looking meta.json...
    leftover = root / f".{key}.abc123.tmp"
    leftover.mkdir(parents=True)
    (leftover / "meta.json").write_text("{}")
    # ...and, worse, a final-named dir with arrays but no metadata (copied by hand, say).
    incomplete = root / key
    incomplete.mkdir()
    np.save(incomplete / "input_ids.npy", np.zeros(3, dtype=np.int32))

    built, _ = build_features(examples, bert_tokenizer, **SMALL)
    features, _, hit = load_or_build_features(examples, bert_tokenizer, cache_dir=tmp_path,
                                              data_key="k", **SMALL)
    assert not hit
    _assert_same(features, built)
    assert (incomplete / "meta.json").exists()

    # A truncated array behind a valid meta.json is also rebuilt, not trusted.
    (incomplete / "offsets.npy").write_bytes((incomplete / "offsets.npy").read_bytes()[:100])
    features, _, hit = load_or_build_features(examples, bert_tokenizer, cache_dir=tmp_path,
                                              data_key="k", **SMALL)
    assert not hit
    _assert_same(features, built)
    _, _, hit = load_or_build_features(examples, bert_tokenizer, cache_dir=tmp_path,
                                       data_key="k", **SMALL)
    assert hit
    assert not any(path.name.endswith(".tmp") and path != leftover for path in root.iterdir())


def test_tokenizer_fingerprint_tracks_the_vocabulary_not_call_history(bert_tokenizer: Any):
    before = tokenizer_fingerprint(bert_tokenizer)
    bert_tokenizer(["a question"], ["a context"], truncation="only_second", max_length=16,
                   stride=2, return_overflowing_tokens=True)
    assert tokenizer_fingerprint(bert_tokenizer) == before
    extended = copy.deepcopy(bert_tokenizer)
    extended.add_tokens(["squadftnewtoken"])
    assert tokenizer_fingerprint(extended) != before
    assert len(before) == 64


def test_same_data_key_and_count_but_other_examples_is_rebuilt(
    tmp_path: Path, train_parsed: tuple[list[Example], ParseReport], bert_tokenizer: Any
):
    examples = train_parsed[0][:100]
    edited = list(examples)
    edited[7] = dataclasses.replace(edited[7], question="Which edited question is this?")
    _, _, hit = load_or_build_features(examples, bert_tokenizer, cache_dir=tmp_path,
                                       data_key="k", **SMALL)
    assert not hit
    features, _, hit = load_or_build_features(edited, bert_tokenizer, cache_dir=tmp_path,
                                              data_key="k", **SMALL)
    assert not hit  # same key (data key, parser, count), but the stored fingerprint differs
    _assert_same(features, build_features(edited, bert_tokenizer, **SMALL)[0])
    _, _, hit = load_or_build_features(edited, bert_tokenizer, cache_dir=tmp_path,
                                       data_key="k", **SMALL)
    assert hit


def _save_tokenizer_dir(tokenizer: Any, path: Path) -> Path:
    tokenizer.save_pretrained(path)
    return path


def test_lazy_tokenizer_fingerprint_is_remembered_by_its_files(tmp_path: Path,
                                                               bert_tokenizer: Any):
    model_dir = _save_tokenizer_dir(bert_tokenizer, tmp_path / "model")
    loads: list[str] = []

    def loader(name: str) -> Any:
        loads.append(name)
        return load_tokenizer(name)

    first = LazyTokenizer(str(model_dir), loader, cache_dir=tmp_path / "cache")
    expected = tokenizer_fingerprint(load_tokenizer(str(model_dir)))
    assert tokenizer_fingerprint(first) == expected and loads == [str(model_dir)]
    second = LazyTokenizer(str(model_dir), loader, cache_dir=tmp_path / "cache")
    assert tokenizer_fingerprint(second) == expected and not second.loaded
    assert len(loads) == 1

    # Any change to a file the tokenizer is loaded from is a new key: loaded again.
    key = tokenizer_files_key(model_dir)
    config = model_dir / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"do_lower_case": true',
                                                 '"do_lower_case": false'))
    assert tokenizer_files_key(model_dir) != key
    third = LazyTokenizer(str(model_dir), loader, cache_dir=tmp_path / "cache")
    assert tokenizer_fingerprint(third) != expected and len(loads) == 2
    # Weights are not tokenizer files; a hub name has no files key.
    (model_dir / "model.safetensors").write_bytes(b"weights")
    assert tokenizer_files_key(model_dir) == tokenizer_files_key(model_dir)
    before = tokenizer_files_key(model_dir)
    (model_dir / "model.safetensors").write_bytes(b"other weights")
    assert tokenizer_files_key(model_dir) == before
    assert tokenizer_files_key("distilbert-base-uncased") is None


# A cached run in a fresh interpreter, as `squadft prepare` re-runs: it must find everything
# without parsing the JSON or importing transformers/torch (seconds each).
_CACHED_RUN = r"""
import json, sys
from squadft.data.features import LazyTokenizer, load_or_build_features
from squadft.data.squad import load_squad_cached
from squadft.modeling import load_tokenizer
data, sha, cache, model = sys.argv[1:5]
examples, report = load_squad_cached(data, cache_dir=cache, sha256=sha)
tokenizer = LazyTokenizer(model, load_tokenizer, cache_dir=cache)
features, feature_report, hit = load_or_build_features(
    examples[:300], tokenizer, cache_dir=cache, data_key=sha + ":300",
    max_seq_length=128, doc_stride=32, max_query_length=64)
print(json.dumps({"hit": hit, "windows": len(features),
                  "examples_read": getattr(examples, "loaded", True),
                  "tokenizer_loaded": tokenizer.loaded, "questions": report.examples,
                  "heavy": sorted({"transformers", "torch"} & set(sys.modules))}))
"""


@pytest.mark.slow
def test_a_cached_run_reads_neither_the_json_nor_the_tokenizer(
    tmp_path: Path, train_parsed: tuple[list[Example], ParseReport], bert_tokenizer: Any,
):
    from tests.conftest import TRAIN_SAMPLE

    model_dir = _save_tokenizer_dir(bert_tokenizer, tmp_path / "model")
    cache = tmp_path / "cache"
    sha = sha256_file(TRAIN_SAMPLE)
    command = [sys.executable, "-c", _CACHED_RUN, str(TRAIN_SAMPLE), sha, str(cache),
               str(model_dir)]
    env = {"PYTHONPATH": str(REPO / "job"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    runs = []
    for _ in range(2):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120,
                                check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert not first["hit"] and first["tokenizer_loaded"] and "transformers" in first["heavy"]
    assert second == {"hit": True, "windows": first["windows"], "examples_read": False,
                      "tokenizer_loaded": False, "questions": 4719, "heavy": []}
    # ...and what it found is what this process builds from the parsed file.
    examples, _ = load_squad_cached(TRAIN_SAMPLE, cache_dir=cache, sha256=sha)
    assert isinstance(examples, CachedExamples)
    features, _, hit = load_or_build_features(
        examples[:300], bert_tokenizer, cache_dir=cache, data_key=f"{sha}:300", **SMALL)
    assert hit
    _assert_same(features, build_features(train_parsed[0][:300], bert_tokenizer, **SMALL)[0])


def test_a_full_cache_disk_says_disk_full_and_leaves_no_temporary_dir(
    small_disk, train_parsed: tuple[list[Example], ParseReport], bert_tokenizer: Any
) -> None:
    """numpy alone would say "N requested and M written"."""
    cache = small_disk(64 << 10)  # the arrays of 300 questions need ~10 times that
    examples = train_parsed[0][:300]
    with pytest.raises(StorageError) as failure:
        load_or_build_features(examples, bert_tokenizer, cache_dir=cache, data_key="k", **SMALL)
    key = features_cache_key(examples, bert_tokenizer, data_key="k", **SMALL)
    assert failure.value.exit_code == EXIT_STORAGE
    assert str(failure.value) == f"cannot write {cache / 'features' / key}: disk full"
    assert os.listdir(cache / "features") == []


def test_the_features_cache_follows_the_umask(
    tmp_path: Path, train_parsed: tuple[list[Example], ParseReport], bert_tokenizer: Any
) -> None:
    """mkdtemp makes 0700 directories: a cache shared by several users must stay readable."""
    old = os.umask(0o022)
    try:
        load_or_build_features(train_parsed[0][:20], bert_tokenizer, cache_dir=tmp_path,
                               data_key="k", **SMALL)
    finally:
        os.umask(old)
    (entry,) = (tmp_path / "features").iterdir()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in entry.iterdir()} == {0o644}
