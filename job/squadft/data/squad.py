"""Parse SQuAD v1.1 / v2.0 JSON into typed examples, validating and repairing answer offsets.

The blog script this project replaces had two data bugs fixed here:

* unanswerable SQuAD 2.0 questions were trained on their `plausible_answers` (distractors written
  by annotators precisely because they are *wrong*); here an impossible question has no answer;
* an answer whose `answer_start` was off by more than two characters kept a wrong offset; here it
  is re-found in the context (nearest occurrence) or dropped and counted.

Parsing is a pure function of the decoded JSON (`parse_squad`); `load_squad` is the I/O edge.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from squadft.errors import DataError, StorageError
from squadft.io import atomic_write_json, read_json_file

# Version strings seen in the official files (v1.1 writes "1.1") and in common redistributions.
V1_VERSIONS = frozenset({"1.0", "1.1", "v1.0", "v1.1"})
V2_VERSIONS = frozenset({"2.0", "v2.0"})
# Tried in this order before searching the whole context (the seed tried -1 and -2 only).
REPAIR_SHIFTS = (-1, 1, -2, 2)
# Bump when parsing or answer repair changes what a file parses into: cached parses (and the
# features built from them, whose cache key includes this) then miss.
PARSER_VERSION = 2  # 2: is_impossible questions that carry answers count as answerable
EXAMPLES_CACHE_FORMAT = "squadft-examples/2"


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    start: int  # character offset into the context; context[start:start + len(text)] == text

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclass(frozen=True, slots=True)
class Example:
    id: str
    title: str
    context: str
    question: str
    answers: tuple[Answer, ...]  # empty exactly when is_impossible
    is_impossible: bool
    article: int = 0  # index of the article in its file (for article slices and holdouts)


@dataclass
class ParseReport:
    source: str
    version: str | None = None
    is_v2: bool = False
    articles: int = 0
    paragraphs: int = 0
    examples: int = 0  # examples kept
    impossible: int = 0  # kept examples without an answer
    answers: int = 0  # answers kept (duplicates included)
    repaired: int = 0  # repaired_shift + repaired_search
    repaired_shift: int = 0  # found 1 or 2 characters away from answer_start
    repaired_search: int = 0  # re-found elsewhere in the context (nearest occurrence)
    dropped_answers: int = 0  # answer text not in the context at all
    dropped_examples: int = 0  # answerable questions left without any answer
    stripped_questions: int = 0  # questions that had leading/trailing whitespace
    contradictory: int = 0  # is_impossible: true, yet non-empty answers (answers decide)

    def summary(self) -> str:
        kind = "SQuAD 2.0" if self.is_v2 else "SQuAD 1.x"
        return (
            f"{self.source}: {kind} (version {self.version or 'unset'}), "
            f"{self.articles} articles, {self.paragraphs} paragraphs, "
            f"{self.examples} examples ({self.impossible} impossible), {self.answers} answers, "
            f"{self.repaired} repaired ({self.repaired_shift} shifted, "
            f"{self.repaired_search} re-found), {self.dropped_answers} answers dropped, "
            f"{self.dropped_examples} examples dropped"
            + (f"; {self.contradictory} questions marked is_impossible carry answers and count "
               "as answerable (the answers decide, as in the official scorer)"
               if self.contradictory else "")
        )


def load_squad(path: str | Path) -> tuple[list[Example], ParseReport]:
    """Read a SQuAD .json file, gzip-compressed or not (decided by its magic bytes)."""
    return parse_squad(read_json_file(path), source=str(Path(path)))


def parse_squad(data: Any, source: str = "<memory>") -> tuple[list[Example], ParseReport]:
    """Turn decoded SQuAD JSON into examples; raise DataError naming the first malformed place."""
    report = ParseReport(source=source)
    if not isinstance(data, dict):
        raise DataError(f"{source}: top level must be a JSON object, got {_kind(data)}")
    version = data.get("version")
    if version is not None:
        if not isinstance(version, str):
            raise DataError(f"{source}: 'version' must be a string, got {_kind(version)}")
        if version not in V1_VERSIONS | V2_VERSIONS:
            raise DataError(
                f"{source}: unknown SQuAD version {version!r} (expected 1.1 or v2.0)"
            )
    report.version = version
    articles = _field(data, "data", list, source, "top level")
    report.articles = len(articles)
    # SQuAD 2.0 is recognised from the data, so no flag is needed (and a missing or stale
    # version string cannot hide unanswerable questions).
    saw_v2_marker = version in V2_VERSIONS
    examples: list[Example] = []
    seen_ids: dict[str, str] = {}
    for article_number, article in enumerate(articles):
        title, paragraphs, where_article = _article(article, article_number, source)
        report.paragraphs += len(paragraphs)
        for paragraph_number, paragraph in enumerate(paragraphs):
            where_paragraph = f"{where_article} paragraph {paragraph_number}"
            if not isinstance(paragraph, dict):
                raise DataError(f"{source}: {where_paragraph} must be an object")
            context = _field(paragraph, "context", str, source, where_paragraph)
            questions = _field(paragraph, "qas", list, source, where_paragraph)
            for question_number, qa in enumerate(questions):
                example_id, where = _question_id(qa, question_number, where_paragraph,
                                                 seen_ids, source)
                example = _parse_question(qa, context, title, example_id, source, where, report,
                                          article_number)
                if "is_impossible" in qa or "plausible_answers" in qa:
                    saw_v2_marker = True
                if example is not None:
                    examples.append(example)
    report.is_v2 = saw_v2_marker
    report.examples = len(examples)
    report.impossible = sum(example.is_impossible for example in examples)
    report.answers = sum(len(example.answers) for example in examples)
    report.repaired = report.repaired_shift + report.repaired_search
    return examples, report


def _article(article: Any, number: int, source: str) -> tuple[str, list[Any], str]:
    """(title, paragraphs, where in words) of one article, checked."""
    where = f"article {number}"
    if not isinstance(article, dict):
        raise DataError(f"{source}: {where} must be an object, got {_kind(article)}")
    title = article.get("title", "")
    if not isinstance(title, str):
        raise DataError(f"{source}: {where}: 'title' must be a string")
    if title:
        where += f" ({_short(title)})"
    return title, _field(article, "paragraphs", list, source, where), where


def _question_id(qa: Any, number: int, where_paragraph: str, seen_ids: dict[str, str],
                 source: str) -> tuple[str, str]:
    """(id, where in words) of one question; a duplicate id is an error."""
    where = f"{where_paragraph} question {number}"
    if not isinstance(qa, dict):
        raise DataError(f"{source}: {where} must be an object")
    example_id = _field(qa, "id", str, source, where)
    where = f"{where_paragraph} question {example_id!r}"
    if example_id in seen_ids:
        raise DataError(f"{source}: {where}: duplicate question id "
                        f"(first in {seen_ids[example_id]})")
    seen_ids[example_id] = where_paragraph
    return example_id, where


def _parse_question(
    qa: dict[str, Any], context: str, title: str, example_id: str, source: str, where: str,
    report: ParseReport, article: int,
) -> Example | None:
    raw_question = _field(qa, "question", str, source, where)
    # Some SQuAD questions carry long runs of leading spaces; they only waste question tokens.
    question = raw_question.strip()
    if question != raw_question:
        report.stripped_questions += 1
    if not question:
        raise DataError(f"{source}: {where}: empty question")
    is_impossible = qa.get("is_impossible", False)
    if not isinstance(is_impossible, bool):
        raise DataError(
            f"{source}: {where}: 'is_impossible' must be true or false, got {_kind(is_impossible)}"
        )
    if is_impossible:
        if not qa.get("answers"):
            # Never read `plausible_answers`: they are deliberate distractors, and training on
            # them teaches the model to answer the unanswerable.
            return Example(example_id, title, context, question, (), True, article)
        # A contradiction: the official scorer (and Hugging Face's squad_v2 loader) go by
        # `answers`, so training does too, and the parse report says so.
        report.contradictory += 1

    raw_answers = _field(qa, "answers", list, source, where)
    answers: list[Answer] = []
    for answer_number, raw in enumerate(raw_answers):
        where_answer = f"{where} answer {answer_number}"
        if not isinstance(raw, dict):
            raise DataError(f"{source}: {where_answer} must be an object, got {_kind(raw)}")
        text = _field(raw, "text", str, source, where_answer)
        start = _field(raw, "answer_start", int, source, where_answer)
        answer = align_answer(context, text, start, report)
        if answer is not None:
            # Every reference answer is kept, duplicates included: the official EM/F1 take the
            # maximum over them, and duplicates are how the dev set is distributed.
            answers.append(answer)
    if not answers:
        report.dropped_examples += 1
        return None
    return Example(example_id, title, context, question, tuple(answers), False, article)


def align_answer(
    context: str, text: str, start: int, report: ParseReport | None = None
) -> Answer | None:
    """Return the answer with a verified offset, or None when `text` is not in `context`.

    Order: the given offset; then 1 and 2 characters either side (annotation tools in SQuAD 1.x
    shifted some offsets by whitespace or by a character); then the occurrence nearest to the
    given offset anywhere in the context.
    """
    report = report if report is not None else ParseReport(source="")
    if not text:
        report.dropped_answers += 1
        return None
    if context.startswith(text, start) and start >= 0:
        return Answer(text, start)
    for shift in REPAIR_SHIFTS:
        candidate = start + shift
        if candidate >= 0 and context.startswith(text, candidate):
            report.repaired_shift += 1
            return Answer(text, candidate)
    nearest = _nearest_occurrence(context, text, start)
    if nearest is None:
        report.dropped_answers += 1
        return None
    report.repaired_search += 1
    return Answer(text, nearest)


def _nearest_occurrence(context: str, text: str, start: int) -> int | None:
    best: int | None = None
    position = context.find(text)
    while position != -1:
        if best is None or abs(position - start) < abs(best - start):
            best = position
        if position > start:  # later occurrences are only farther away
            break
        position = context.find(text, position + 1)
    return best


def _field(obj: dict[str, Any], key: str, kind: type, source: str, where: str) -> Any:
    if key not in obj:
        raise DataError(f"{source}: {where}: missing key {key!r}")
    value = obj[key]
    # bool is an int subclass: `"answer_start": true` is a type error, not offset 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataError(
            f"{source}: {where}: {key!r} must be {_KIND_NAMES[kind]}, got {_kind(value)}"
        )
    return value


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list",
               dict: "an object", bool: "a boolean", type(None): "null"}


def _kind(value: Any) -> str:
    return _KIND_NAMES.get(type(value), type(value).__name__)


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())  # keep messages on one line
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- parsed-examples cache ----------------------------------------------------------------------


def load_squad_cached(
    path: str | Path, *, cache_dir: str | Path, sha256: str
) -> tuple[Sequence[Example], ParseReport]:
    """`load_squad`, remembered under <cache_dir>/examples/ by the file's sha256.

    On a hit nothing is parsed: the report comes from a small metadata file and the examples
    are a `CachedExamples` sequence that reads its compact columnar copy only when indexed or
    iterated (a cached `prepare` or a training run never looks at the training questions).
    A damaged or unwritable cache only costs the parse.
    """
    stem = Path(cache_dir) / "examples" / f"{sha256[:32]}-p{PARSER_VERSION}"
    meta_path, columns_path = stem.with_suffix(".meta.json"), stem.with_suffix(".columns.json")
    with suppress(OSError, ValueError, KeyError, TypeError):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if (meta["format"] == EXAMPLES_CACHE_FORMAT and meta["parser"] == PARSER_VERSION
                and meta["sha256"] == sha256
                and columns_path.stat().st_size == meta["columns_bytes"]):
            report = ParseReport(**dict(meta["report"], source=str(path)))
            return CachedExamples(columns_path, int(meta["count"])), report
    examples, report = load_squad(path)
    # a read-only or full cache disk: the parse is still good, only not remembered
    with suppress(OSError, StorageError):
        atomic_write_json(columns_path, _to_columns(examples))
        atomic_write_json(meta_path, {
            "format": EXAMPLES_CACHE_FORMAT, "parser": PARSER_VERSION, "sha256": sha256,
            "count": len(examples), "columns_bytes": columns_path.stat().st_size,
            "report": dataclasses.asdict(report),
        })
    return examples, report


def _to_columns(examples: Sequence[Example]) -> dict[str, Any]:
    """Examples as parallel lists; titles and contexts stored once (~7 questions share one)."""
    titles = {title: i for i, title in enumerate(dict.fromkeys(e.title for e in examples))}
    contexts = {text: i for i, text in enumerate(dict.fromkeys(e.context for e in examples))}
    answers = [answer for e in examples for answer in e.answers]
    return {
        "titles": list(titles), "contexts": list(contexts),
        "id": [e.id for e in examples], "question": [e.question for e in examples],
        "title": [titles[e.title] for e in examples],
        "context": [contexts[e.context] for e in examples],
        "impossible": [int(e.is_impossible) for e in examples],
        "answer_count": [len(e.answers) for e in examples],
        "answer_text": [a.text for a in answers], "answer_start": [a.start for a in answers],
        "article": [e.article for e in examples],
    }


def _from_columns(columns: dict[str, Any]) -> list[Example]:
    titles, contexts = columns["titles"], columns["contexts"]
    texts, starts = columns["answer_text"], columns["answer_start"]
    examples = []
    position = 0
    for example_id, question, title, context, impossible, count, article in zip(
            columns["id"], columns["question"], columns["title"], columns["context"],
            columns["impossible"], columns["answer_count"], columns["article"], strict=True):
        answers = tuple(Answer(texts[i], starts[i]) for i in range(position, position + count))
        position += count
        examples.append(Example(example_id, titles[title], contexts[context], question,
                                answers, bool(impossible), article))
    return examples


class CachedExamples(Sequence[Example]):
    """Parsed examples read from the columnar cache file on first use; `len` needs no read.

    Slicing from the start (`examples[:limit]`, as for max_train_samples) stays lazy.
    """

    def __init__(self, columns_path: Path, count: int, *, source: CachedExamples | None = None):
        self._path = columns_path
        self._count = count
        self._source = source  # a prefix slice shares its parent's loaded list
        self._examples: list[Example] | None = None

    @property
    def loaded(self) -> bool:
        return (self._source if self._source is not None else self)._examples is not None

    def _all(self) -> list[Example]:
        if self._source is not None:
            return self._source._all()
        if self._examples is None:
            try:
                columns = json.loads(self._path.read_text(encoding="utf-8"))
                examples = _from_columns(columns)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{self._path}: unreadable examples cache ({exc}); delete it "
                                "to re-parse the data file") from None
            if len(examples) < self._count:
                raise DataError(f"{self._path}: examples cache holds {len(examples)} examples, "
                                f"expected {self._count}; delete it to re-parse the data file")
            self._examples = examples
        return self._examples

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Example: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Example]: ...

    def __getitem__(self, index: int | slice) -> Example | Sequence[Example]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            if start == 0 and step == 1:
                return CachedExamples(self._path, stop, source=self._source or self)
            return self._all()[: self._count][index]
        if not -self._count <= index < self._count:
            raise IndexError(f"example index {index} out of range ({self._count} examples)")
        return self._all()[index % self._count]

    def __iter__(self) -> Iterator[Example]:
        return iter(self._all()[: self._count])
