"""Gold answers: what the official SQuAD 2.0 script scores against, read from the raw file."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squadft.data.selection import select_raw_articles
from squadft.data.squad import V2_VERSIONS
from squadft.errors import DataError
from squadft.filespec import FileSpec
from squadft.io import read_json_file


@dataclass(frozen=True)
class GoldStandard:
    """Reference answers exactly as the dataset file has them (no offset repairs)."""

    answers: dict[str, list[str]]  # id -> answer texts; [] = unanswerable
    version: str | None
    contradictory: int = 0  # is_impossible: true with answers (scored as answerable)

    def warnings(self) -> list[str]:
        notes = []
        if self.version not in V2_VERSIONS:
            notes.append(f"dataset version is {self.version!r}, not v2.0; scoring with the "
                         "SQuAD 2.0 rules anyway (questions without answers count as "
                         "unanswerable)")
        if self.contradictory:
            notes.append(f"{self.contradictory} questions are marked is_impossible but carry "
                         "answers; they are scored as answerable (the answers decide, as in "
                         "the official scorer and in training)")
        return notes


def gold_from_squad(data: Any, source: str = "<memory>") -> GoldStandard:
    """Id -> answer texts from decoded SQuAD JSON, read the way the official script reads it."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{source}: not a SQuAD file (no top-level 'data' list)")
    answers: dict[str, list[str]] = {}
    contradictory = 0
    try:
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    # Like the official script: `answers` alone decides (plausible_answers of
                    # unanswerable questions are never gold).
                    texts = [answer["text"] for answer in qa.get("answers", [])]
                    if not all(isinstance(text, str) for text in texts):
                        raise DataError(f"{source}: question {qa['id']}: non-string answer text")
                    qid = str(qa["id"])
                    if qid in answers:
                        # the official script silently keeps the last; prepare and evaluate
                        # reject the file, so scoring does too
                        raise DataError(f"{source}: duplicate question id {qid!r}: question "
                                        "ids must be unique")
                    answers[qid] = texts
                    contradictory += bool(texts) and qa.get("is_impossible") is True
    except (KeyError, TypeError) as exc:
        raise DataError(f"{source}: malformed SQuAD structure ({type(exc).__name__}: {exc})"
                        ) from None
    if not answers:
        raise DataError(f"{source}: the dataset has no questions")
    version = data.get("version")
    return GoldStandard(answers, version if isinstance(version, str) else None, contradictory)


def load_gold(path: str | Path, spec: FileSpec | None = None) -> GoldStandard:
    """Gold answers of a SQuAD file, or of the articles `spec` slices out of it."""
    data = read_json_file(path, "dataset")
    if spec is not None:
        data = select_raw_articles(data, spec)
    return gold_from_squad(data, str(path) if spec is None or not spec.sliced
                           else f"{path} {str(spec)[len(spec.name):]}")


def gold_for_examples(gold: GoldStandard, examples: Sequence[Any], *, limited: bool,
                      source: str) -> tuple[dict[str, list[str]], list[str]]:
    """The raw file's answers for the evaluated questions, and warnings about questions the
    parser changed or dropped (a dropped question still counts, as wrong, like the official
    script would count it). `limited`: only the examples' questions are evaluated (a sample),
    so questions beyond them are left out rather than counted."""
    warnings = gold.warnings()
    parsed = {example.id: example for example in examples}
    answers = {qid: texts for qid, texts in gold.answers.items() if not limited or qid in parsed}
    dropped = [qid for qid in answers if qid not in parsed]
    if dropped:
        warnings.append(f"{len(dropped)} questions of {source} could not be parsed (no answer "
                        f"text found in the context, e.g. {dropped[0]}) and count as wrong")
    changed = sum(1 for qid, texts in answers.items() if qid in parsed and sorted(texts) != sorted(
        a.text for a in parsed[qid].answers))
    if changed:
        warnings.append(f"{changed} questions of {source} lost an answer the parser could not "
                        "align; they are scored against every answer of the file")
    return answers, warnings


def gold_from_examples(examples: Iterable[Any]) -> dict[str, list[str]]:
    return {e.id: [] if e.is_impossible else [a.text for a in e.answers] for e in examples}
