"""Parsing and validation of SQuAD JSON (squadft.data.squad) on the bundled real subsets."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from squadft.data.squad import (
    PARSER_VERSION,
    CachedExamples,
    Example,
    ParseReport,
    align_answer,
    load_squad,
    load_squad_cached,
    parse_squad,
)
from squadft.errors import DataError
from squadft.io import sha256_file

from tests.conftest import DEV_SAMPLE, TRAIN_SAMPLE

IMPOSSIBLE_ID = "5a8d7bf7df8bba001a0f9ab1"  # "What category of game is Legend of Zelda: Australia…"
REPEATED_ANSWER_ID = "56bf91c6a10cfb1400551181"  # 'Destiny Fulfilled' at 513, 664 (gold), 848


def _by_id(examples: list[Example]) -> dict[str, Example]:
    return {example.id: example for example in examples}


def _find_qa(data: dict[str, Any], question_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                if qa["id"] == question_id:
                    return paragraph, qa
    raise KeyError(question_id)


def _one_article(train_json: dict[str, Any], article: int = 0) -> dict[str, Any]:
    return {"version": "v2.0", "data": [copy.deepcopy(train_json["data"][article])]}


def _parse_error(data: Any) -> str:
    with pytest.raises(DataError) as caught:
        parse_squad(data, source="bad.json")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("bad.json: ")
    return message


# --- the real subsets ----------------------------------------------------------------------------


def test_train_subset_counts_match_its_readme(train_parsed: tuple[list[Example], ParseReport]):
    examples, report = train_parsed
    assert (report.articles, report.paragraphs, report.examples, report.impossible) == (
        10, 694, 4719, 348)
    assert report.is_v2 and report.version == "v2.0"
    assert report.answers == 4371 and report.repaired == report.dropped_answers == 0
    assert len({example.id for example in examples}) == 4719
    for example in examples:
        assert example.is_impossible == (not example.answers)
        for answer in example.answers:
            assert example.context[answer.start:answer.end] == answer.text
    assert "4719 examples (348 impossible)" in report.summary()


def test_impossible_questions_never_get_plausible_answers(
    train_json: dict[str, Any], train_parsed: tuple[list[Example], ParseReport]
):
    _, qa = _find_qa(train_json, IMPOSSIBLE_ID)
    assert qa["is_impossible"] and qa["plausible_answers"][0]["text"] == "action-adventure"
    example = _by_id(train_parsed[0])[IMPOSSIBLE_ID]
    assert example.is_impossible and example.answers == ()
    # The seed's bug, across the whole subset: no impossible example carries any answer.
    impossible = [example for example in train_parsed[0] if example.is_impossible]
    assert len(impossible) == 348 and all(example.answers == () for example in impossible)


def test_dev_keeps_every_reference_answer_including_duplicates(
    dev_json: dict[str, Any], dev_parsed: tuple[list[Example], ParseReport]
):
    examples, report = dev_parsed
    assert (report.examples, report.impossible, report.answers) == (4449, 2342, 6674)
    first = examples[0]
    assert first.question == "In what country is Normandy located?"
    assert [answer.text for answer in first.answers] == ["France"] * 4
    raw_total = sum(len(qa["answers"]) for article in dev_json["data"]
                    for paragraph in article["paragraphs"] for qa in paragraph["qas"])
    assert sum(len(example.answers) for example in examples) == raw_total


def test_question_whitespace_is_stripped(
    dev_json: dict[str, Any], dev_parsed: tuple[list[Example], ParseReport]
):
    raw = {qa["id"]: qa["question"] for article in dev_json["data"]
           for paragraph in article["paragraphs"] for qa in paragraph["qas"]}
    padded = [question_id for question_id, text in raw.items() if text != text.strip()]
    assert len(padded) > 100  # the dev subset really has such questions
    examples = _by_id(dev_parsed[0])
    for question_id in padded:
        assert examples[question_id].question == raw[question_id].strip()
    assert dev_parsed[1].stripped_questions == len(padded)


def test_v11_file_parses_as_v1(train_json: dict[str, Any]):
    data = _one_article(train_json)
    data["version"] = "1.1"
    for paragraph in data["data"][0]["paragraphs"]:
        paragraph["qas"] = [qa for qa in paragraph["qas"] if not qa["is_impossible"]]
        for qa in paragraph["qas"]:
            del qa["is_impossible"]
            qa.pop("plausible_answers", None)
    examples, report = parse_squad(data)
    assert not report.is_v2 and report.version == "1.1"
    assert report.examples == len(examples) > 0 and report.impossible == 0
    assert all(example.answers for example in examples)


def test_v2_is_detected_from_the_data_without_a_version(train_json: dict[str, Any]):
    data = _one_article(train_json, article=4)  # the Zelda article has impossible questions
    del data["version"]
    examples, report = parse_squad(data)
    assert report.is_v2 and report.version is None and report.impossible > 0
    assert _by_id(examples)[IMPOSSIBLE_ID].answers == ()


# --- files ---------------------------------------------------------------------------------------


def test_load_plain_and_gzip_by_magic_bytes(tmp_path: Path):
    raw = gzip.decompress(DEV_SAMPLE.read_bytes())
    plain = tmp_path / "dev.json"
    plain.write_bytes(raw)
    misnamed = tmp_path / "dev-compressed.json"  # gzip data under a .json name
    misnamed.write_bytes(DEV_SAMPLE.read_bytes())
    from_gzip, report = load_squad(DEV_SAMPLE)
    assert report.source == str(DEV_SAMPLE)
    assert load_squad(plain)[0] == from_gzip == load_squad(misnamed)[0]


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path):
    with_bom = tmp_path / "dev-bom.json"  # as Windows editors save it
    with_bom.write_bytes(b"\xef\xbb\xbf" + gzip.decompress(DEV_SAMPLE.read_bytes()))
    examples, report = load_squad(with_bom)
    assert examples == load_squad(DEV_SAMPLE)[0] and report.examples == 4449


def test_impossible_with_answers_is_answerable_and_reported(train_json: dict[str, Any]):
    """Training goes by `answers`, like the official scorer and HF's squad_v2 loader."""
    data = _one_article(train_json)
    qa = data["data"][0]["paragraphs"][0]["qas"][0]
    assert qa["answers"] and not qa["is_impossible"]
    qa["is_impossible"] = True  # contradicts its own answers
    examples, report = parse_squad(data, source="mixed.json")
    example = _by_id(examples)[qa["id"]]
    assert not example.is_impossible and example.answers[0].text == qa["answers"][0]["text"]
    assert report.contradictory == 1
    assert "1 questions marked is_impossible carry answers" in report.summary()
    untouched, clean = parse_squad(_one_article(train_json), source="clean.json")
    assert clean.contradictory == 0 and "is_impossible" not in clean.summary()
    assert len(untouched) == len(examples)


def test_truncated_json_names_file_line_and_column(tmp_path: Path):
    text = gzip.decompress(TRAIN_SAMPLE.read_bytes()).decode("utf-8")
    text = json.dumps(json.loads(text), indent=1)[: 200_000]  # cut mid-file, multi-line JSON
    path = tmp_path / "train-v2.0.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(json.JSONDecodeError) as reference:
        json.loads(text)
    with pytest.raises(DataError) as caught:
        load_squad(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid JSON at line {reference.value.lineno} "
                              f"column {reference.value.colno}")
    assert reference.value.lineno > 1000 and "\n" not in message


def test_truncated_gzip_and_missing_file(tmp_path: Path):
    path = tmp_path / "train.json.gz"
    path.write_bytes(TRAIN_SAMPLE.read_bytes()[:50_000])
    with pytest.raises(DataError, match=r"train\.json\.gz: corrupt or truncated gzip"):
        load_squad(path)
    with pytest.raises(DataError, match="file not found"):
        load_squad(tmp_path / "absent.json")


# --- validation ----------------------------------------------------------------------------------


def test_missing_keys_name_the_place(train_json: dict[str, Any]):
    assert "top level: missing key 'data'" in _parse_error({"version": "v2.0"})

    data = _one_article(train_json)
    del data["data"][0]["paragraphs"][3]["context"]
    assert "article 0 (Beyoncé) paragraph 3: missing key 'context'" in _parse_error(data)

    data = _one_article(train_json)
    del data["data"][0]["paragraphs"][0]["qas"][2]["answers"]
    question_id = data["data"][0]["paragraphs"][0]["qas"][2]["id"]
    assert (f"article 0 (Beyoncé) paragraph 0 question {question_id!r}: missing key 'answers'"
            in _parse_error(data))

    data = _one_article(train_json)
    del data["data"][0]["paragraphs"][0]["qas"][1]["id"]
    assert "paragraph 0 question 1: missing key 'id'" in _parse_error(data)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("answers", 0, "answer_start"), "269", "'answer_start' must be an integer, got a string"),
        (("answers", 0, "answer_start"), True, "'answer_start' must be an integer, got a boolean"),
        (("answers", 0, "text"), None, "'text' must be a string, got null"),
        (("answers",), {"text": "x"}, "'answers' must be a list, got an object"),
        (("question",), 42, "'question' must be a string, got an integer"),
        (("is_impossible",), "false", "'is_impossible' must be true or false, got a string"),
    ],
)
def test_wrong_types_name_the_question(
    train_json: dict[str, Any], path: tuple[Any, ...], value: Any, expected: str
):
    data = _one_article(train_json)
    qa = data["data"][0]["paragraphs"][0]["qas"][0]
    target = qa
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    message = _parse_error(data)
    assert f"question '{qa['id']}'" in message and expected in message


def test_wrong_container_types(train_json: dict[str, Any]):
    assert "top level must be a JSON object, got a list" in _parse_error([])
    assert "'data' must be a list, got an object" in _parse_error({"data": {}})
    data = _one_article(train_json)
    data["data"][0]["paragraphs"] = "none"
    assert "article 0 (Beyoncé): 'paragraphs' must be a list" in _parse_error(data)


def test_unknown_version_is_rejected(train_json: dict[str, Any]):
    data = _one_article(train_json)
    data["version"] = "v3.0"
    assert "unknown SQuAD version 'v3.0'" in _parse_error(data)
    data["version"] = 2.0
    assert "'version' must be a string" in _parse_error(data)


def test_duplicate_question_ids_are_rejected(train_json: dict[str, Any]):
    data = _one_article(train_json)
    qas = data["data"][0]["paragraphs"][1]["qas"]
    qas[1]["id"] = data["data"][0]["paragraphs"][0]["qas"][0]["id"]
    assert "duplicate question id" in _parse_error(data)


# --- answer alignment ----------------------------------------------------------------------------


def test_misaligned_answers_are_repaired_and_counted(train_json: dict[str, Any]):
    data = _one_article(train_json)
    examples_before = _by_id(parse_squad(data)[0])
    qas = data["data"][0]["paragraphs"][0]["qas"]  # unique multi-word answers in this paragraph
    shifts = {qas[0]["id"]: 1, qas[1]["id"]: -1, qas[2]["id"]: 2, qas[3]["id"]: -2}
    for qa in qas[:4]:
        qa["answers"][0]["answer_start"] += shifts[qa["id"]]
    examples, report = parse_squad(data)
    assert (report.repaired_shift, report.repaired_search, report.repaired) == (4, 0, 4)
    assert report.dropped_answers == report.dropped_examples == 0
    repaired = _by_id(examples)
    for question_id in shifts:
        assert repaired[question_id].answers == examples_before[question_id].answers


def test_far_misaligned_answer_is_refound_at_the_nearest_occurrence(train_json: dict[str, Any]):
    data = _one_article(train_json)
    paragraph, qa = _find_qa(data, REPEATED_ANSWER_ID)
    context = paragraph["context"]
    text = qa["answers"][0]["text"]
    assert [i for i in range(len(context)) if context.startswith(text, i)] == [513, 664, 848]
    qa["answers"][0]["answer_start"] = 664 + 40  # nearest is 664, not the first (513)
    examples, report = parse_squad(data)
    assert _by_id(examples)[REPEATED_ANSWER_ID].answers[0].start == 664
    assert (report.repaired_shift, report.repaired_search) == (0, 1)

    qa["answers"][0]["answer_start"] = 664 + 100  # now 848 is nearer
    assert _by_id(parse_squad(data)[0])[REPEATED_ANSWER_ID].answers[0].start == 848


def test_unfindable_answers_are_dropped_and_counted(
    train_json: dict[str, Any], dev_json: dict[str, Any]
):
    data = _one_article(train_json)
    qa = data["data"][0]["paragraphs"][0]["qas"][0]
    qa["answers"][0]["text"] = "words that are nowhere in this paragraph"
    examples, report = parse_squad(data)
    assert qa["id"] not in _by_id(examples)
    assert (report.dropped_answers, report.dropped_examples) == (1, 1)
    total = sum(len(paragraph["qas"]) for paragraph in data["data"][0]["paragraphs"])
    assert report.examples == len(examples) == total - 1

    dev = {"version": "v2.0", "data": [copy.deepcopy(dev_json["data"][0])]}
    dev_qa = dev["data"][0]["paragraphs"][0]["qas"][0]  # four "France" references
    dev_qa["answers"][1]["text"] = "Atlantis"
    examples, report = parse_squad(dev)
    kept = _by_id(examples)[dev_qa["id"]]
    assert [answer.text for answer in kept.answers] == ["France"] * 3
    assert (report.dropped_answers, report.dropped_examples) == (1, 0)


def test_align_answer_edge_cases():
    context = "abc abc"
    assert align_answer(context, "abc", 4).start == 4
    assert align_answer(context, "abc", 0).start == 0
    assert align_answer(context, "", 0) is None
    assert align_answer(context, "abc", -1).start == 0  # shifted +1 from a negative offset
    assert align_answer(context, "c a", 40).start == 2  # past the end: nearest occurrence
    report = ParseReport(source="x")
    assert align_answer(context, "xyz", 0, report) is None and report.dropped_answers == 1


# --- parsed-examples cache ---------------------------------------------------------------------


def test_cached_parse_is_identical_and_read_only_when_used(tmp_path: Path):
    sha = sha256_file(TRAIN_SAMPLE)
    parsed, report = load_squad(TRAIN_SAMPLE)
    first, first_report = load_squad_cached(TRAIN_SAMPLE, cache_dir=tmp_path, sha256=sha)
    assert isinstance(first, list) and first == parsed and first_report == report
    files = sorted(p.name for p in (tmp_path / "examples").iterdir())
    assert files == [f"{sha[:32]}-p{PARSER_VERSION}.columns.json",
                     f"{sha[:32]}-p{PARSER_VERSION}.meta.json"]

    # A copy elsewhere (same content, other name) hits; the report names the file read now.
    copy_path = tmp_path / "renamed.json.gz"
    copy_path.write_bytes(TRAIN_SAMPLE.read_bytes())
    cached, cached_report = load_squad_cached(copy_path, cache_dir=tmp_path, sha256=sha)
    assert isinstance(cached, CachedExamples) and not cached.loaded
    assert cached_report == ParseReport(**{**report.__dict__, "source": str(copy_path)})
    assert len(cached) == len(parsed) == 4719 and not cached.loaded
    head = cached[:10]  # max_train_samples: a prefix stays lazy
    assert isinstance(head, CachedExamples) and len(head) == 10 and not cached.loaded
    assert list(head) == parsed[:10] and cached.loaded and head.loaded
    assert list(cached) == parsed  # titles, contexts, answers (duplicates kept), flags
    assert cached[-1] == parsed[-1] and cached[5:9:2] == parsed[5:9:2]
    assert sum(e.is_impossible for e in cached) == 348
    with pytest.raises(IndexError):
        cached[4719]
    with pytest.raises(IndexError):
        head[10]


def test_damaged_examples_cache_is_reparsed_not_trusted(tmp_path: Path):
    sha = sha256_file(DEV_SAMPLE)
    parsed, _ = load_squad(DEV_SAMPLE)
    load_squad_cached(DEV_SAMPLE, cache_dir=tmp_path, sha256=sha)
    columns = next((tmp_path / "examples").glob("*.columns.json"))
    columns.write_bytes(columns.read_bytes()[:-100])  # truncated after the metadata was written
    again, _ = load_squad_cached(DEV_SAMPLE, cache_dir=tmp_path, sha256=sha)
    assert isinstance(again, list) and again == parsed
    cached, _ = load_squad_cached(DEV_SAMPLE, cache_dir=tmp_path, sha256=sha)
    assert isinstance(cached, CachedExamples) and list(cached) == parsed
    # Another file's digest never finds this entry.
    other, _ = load_squad_cached(DEV_SAMPLE, cache_dir=tmp_path, sha256="0" * 64)
    assert isinstance(other, list)


def test_unreadable_columns_behind_valid_metadata_is_a_one_line_data_error(tmp_path: Path):
    sha = sha256_file(DEV_SAMPLE)
    load_squad_cached(DEV_SAMPLE, cache_dir=tmp_path, sha256=sha)
    columns = next((tmp_path / "examples").glob("*.columns.json"))
    size = columns.stat().st_size
    columns.write_bytes(b"[" + b" " * (size - 1))  # same size, not the columns
    cached, _ = load_squad_cached(DEV_SAMPLE, cache_dir=tmp_path, sha256=sha)
    assert isinstance(cached, CachedExamples)
    with pytest.raises(DataError, match="unreadable examples cache") as caught:
        cached[0]
    assert "\n" not in str(caught.value) and str(columns) in str(caught.value)


def test_unwritable_cache_still_parses(tmp_path: Path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    examples, report = load_squad_cached(DEV_SAMPLE, cache_dir=blocker,
                                         sha256=sha256_file(DEV_SAMPLE))
    assert isinstance(examples, list) and report.examples == len(examples) == 4449
