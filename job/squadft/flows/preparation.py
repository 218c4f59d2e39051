"""Data preparation, the first step of every flow that trains: pull the files into the
verified cache, parse them, choose which questions train, calibrate and are scored, and
tokenize them into cached windows. Rank 0 prepares while the other ranks wait
(squadft.runtime.distributed.prepare_in_turn), then everyone reads the same cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squadft.config import Config
from squadft.console import say, warn
from squadft.data.features import FeatureReport, Features, LazyTokenizer, load_or_build_features
from squadft.data.pull import FetchedFile, pull_dataset, split_files
from squadft.data.selection import (
    holdout_articles,
    overlap,
    select_articles,
    stratified_sample,
    unanswerable_share,
)
from squadft.data.squad import Example, ParseReport, load_squad_cached
from squadft.errors import ConfigError, DataError
from squadft.filespec import FileSpec
from squadft.io import (
    remove_stale_temps,
)


def remove_leftovers(*directories: Path, recursive: bool = False) -> None:
    """Delete what interrupted squadft processes of this host left under temporary names
    in `directories` (see squadft.io), and say so on stderr."""
    for directory in directories:
        for path in remove_stale_temps(directory, recursive=recursive):
            say(f"removed {path}, left by an interrupted squadft process", err=True)


@dataclass
class PreparedSplit:
    split: str
    files: list[FetchedFile]
    specs: list[FileSpec]
    examples: Sequence[Example]
    parse_reports: list[ParseReport]
    features: Features
    feature_report: FeatureReport
    cache_hit: bool
    selection: str  # in words: which questions of which files
    overlap_with_train: int = 0  # calibration: questions sharing an id or paragraph with train


@dataclass
class PreparedData:
    train: PreparedSplit | None
    dev: PreparedSplit | None
    calibration: PreparedSplit | None = None

    @property
    def is_v2(self) -> bool:
        return any(report.is_v2 for s in (self.train, self.dev, self.calibration)
                   if s is not None for report in s.parse_reports)


def pull(cfg: Config, *, splits: tuple[str, ...] = ("train", "dev"),
         verbose: bool = True) -> dict[str, list[FetchedFile]]:
    """Fetch the configured files into the cache; one summary line per file."""
    fetched = pull_dataset(cfg, splits, progress=verbose)
    if verbose:
        shown = set()
        for split, items in fetched.items():
            for item in items:
                if item.path not in shown:  # a file used twice (two slices) was fetched once
                    shown.add(item.path)
                    how = item.note or ("cached" if item.from_cache else "downloaded")
                    say(f"{split}: {item.path} ({item.size:,} bytes, sha256 {item.sha256}, "
                        f"{how})")
    return fetched


@dataclass
class _Loaded:
    """One file's parsed examples, restricted to the articles its spec selects."""

    spec: FileSpec
    file: FetchedFile
    examples: Sequence[Example]
    report: ParseReport


def _load(cfg: Config, spec: FileSpec, item: FetchedFile) -> _Loaded:
    try:
        examples, report = load_squad_cached(item.path, cache_dir=cfg.cache_dir,
                                             sha256=item.sha256)
    except DataError as exc:
        if not item.from_cache:
            raise
        raise DataError(f"{exc} (this copy came from the download cache: `squadft pull "
                        f"--refresh` fetches it again, or delete {item.path.parent})") from None
    if spec.sliced:
        examples = select_articles(examples, spec, report.articles)
    return _Loaded(spec, item, examples, report)


def _union(parts: Sequence[_Loaded]) -> Sequence[Example]:
    """The examples of several files; a question id in two of them is an error."""
    if len(parts) == 1:
        return parts[0].examples
    seen: dict[str, FileSpec] = {}
    union: list[Example] = []
    for part in parts:
        for example in part.examples:
            if example.id in seen:
                raise DataError(f"question id {example.id!r} is in both {seen[example.id]} "
                                f"and {part.spec}: training files must not overlap")
            seen[example.id] = part.spec
            union.append(example)
    return union


def _select_training(cfg: Config, parts: list[_Loaded], calibration_part: _Loaded | None
                     ) -> tuple[Sequence[Example], Sequence[Example] | None, str, str]:
    """(training examples, calibration examples or None, the training selection in words,
    the calibration selection in words or, without one, why)."""
    calibration: Sequence[Example] | None = None
    if calibration_part is not None:
        calibration = calibration_part.examples
        calibration_words = f"calibration file {calibration_part.spec}"
    elif cfg.calibration_fraction == 0:
        calibration_words = "calibration_fraction is 0"
    elif not any(part.report.impossible and any(e.is_impossible for e in part.examples)
                 for part in parts):  # the parse report first: SQuAD 1.1 reads no examples
        calibration_words = "the training data has no unanswerable questions"
    else:
        parts, calibration, calibration_words = _hold_out(cfg, parts)
    train = _union(parts)
    train_words = " + ".join(str(part.spec) for part in parts)
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train):
        train = stratified_sample(train, cfg.max_train_samples, cfg.seed, "train")
        train_words += (f", a seeded sample of {len(train)} questions "
                        f"({unanswerable_share(train):.0%} unanswerable)")
    if calibration is not None and cfg.max_calibration_samples is not None:
        calibration = stratified_sample(calibration, cfg.max_calibration_samples, cfg.seed,
                                        "calibration")
        calibration_words += f", a seeded sample of {len(calibration)} questions"
    missing = {True, False} - {e.is_impossible for e in calibration or ()}
    if calibration is not None and missing:  # no threshold can be tuned on one kind
        calibration_words += (f" has no {'unanswerable' if True in missing else 'answerable'} "
                              f"questions (of its {len(calibration)})")
        calibration = None
    return train, calibration, train_words, calibration_words


def _hold_out(cfg: Config, parts: list[_Loaded]
              ) -> tuple[list[_Loaded], Sequence[Example] | None, str]:
    """(each training file less its held-out articles and any paragraph they share with
    other articles, the held-out questions, them in words), or (the files as they are, None,
    why nothing is held out): the held-out part needs both kinds of question."""
    chosen = [holdout_articles(part.examples, cfg.calibration_fraction, cfg.seed,
                               str(part.spec)) for part in parts]
    held = [e for part, c in zip(parts, chosen, strict=True) for e in part.examples
            if e.article in c]
    if {e.is_impossible for e in held} != {True, False}:
        if all(len({e.article for e in part.examples}) < 2 for part in parts):
            return parts, None, ("each training file has a single article, and only whole "
                                 "articles are held out; --calibration-file names other data")
        return parts, None, ("no choice of whole training articles has both answerable and "
                             "unanswerable questions and leaves each file an article to train "
                             "on; --calibration-file names other data")
    contexts = {e.context for e in held}  # whole articles, and no paragraph seen in training
    kept = [_Loaded(part.spec, part.file, [e for e in part.examples if e.article not in c
                                           and e.context not in contexts], part.report)
            for part, c in zip(parts, chosen, strict=True)]
    titles = [f"{part.spec.name}#{i} {e.title}" for part, c in zip(parts, chosen, strict=True)
              for i, e in sorted({e.article: e for e in part.examples if e.article in c}.items())]
    words = f"{len(titles)} training articles held out of training ({', '.join(titles)})"
    shared = sum(len(p.examples) for p in parts) - len(held) - sum(len(p.examples) for p in kept)
    if shared:
        words += f"; {shared} questions of other articles share their paragraphs, not trained on"
    return kept, held, words


def _selection_key(files: Sequence[FetchedFile], specs: Sequence[FileSpec],
                   **choices: Any) -> str:
    """What decides a split's questions, as a features-cache key (no parse needed)."""
    return json.dumps({"files": [[f.sha256, str(s)] for f, s in zip(files, specs, strict=True)],
                       **choices}, sort_keys=True)


def prepare(cfg: Config, tokenizer: Any = None, *, splits: tuple[str, ...] = ("train", "dev"),
            verbose: bool = True) -> PreparedData:
    """Pull, parse, select and tokenize; features are cached under cfg.cache_dir.

    train: the union of the training files, less the articles held out for calibration (a
    seeded fraction of each file when the data has unanswerable questions, unless a
    calibration file is given), then a seeded stratified sample when max_train_samples is set.
    calibration (only with train): those held-out questions, when they have both answerable
    and unanswerable ones. dev: the dev file's questions (the first max_eval_samples).
    Calibration questions that share an id or a paragraph with the dev questions are a
    ConfigError; with the training questions, a warning and `overlap_with_train`.
    """
    if tokenizer is None:
        from squadft.modeling import load_tokenizer

        # loaded only if some features must be built: a cached re-run never imports
        # transformers (and torch behind it)
        tokenizer = LazyTokenizer(cfg.model, load_tokenizer, cache_dir=cfg.cache_dir)
    cache = Path(cfg.cache_dir)
    remove_leftovers(cache / "features", cache / "examples")
    remove_leftovers(cache / "downloads", recursive=True)
    fetched, loaded = _pull_and_parse(cfg, splits, verbose)
    selected, no_calibration = _choose_questions(cfg, fetched, loaded)
    trained_on = _check_held_out(selected)  # before the slow part
    if trained_on and verbose:
        calibration, words, _ = selected["calibration"]
        warn(f"{trained_on} of the {len(calibration)} calibration questions ({words}) share "
             "an id or a paragraph with the training questions: the threshold is tuned on "
             "questions the model trained on")
    prepared = {split: _tokenize(cfg, tokenizer, split, chosen, loaded, verbose)
                for split, chosen in selected.items()}
    data = PreparedData(prepared.get("train"), prepared.get("dev"), prepared.get("calibration"))
    if data.calibration is not None:
        data.calibration.overlap_with_train = trained_on
    if verbose:
        _say_kind(data, no_calibration)
    return data


def _pull_and_parse(cfg: Config, splits: tuple[str, ...], verbose: bool
                    ) -> tuple[dict[str, list[FetchedFile]], dict[str, list[_Loaded]]]:
    wanted = splits + (("calibration",) if "train" in splits and cfg.calibration_file else ())
    fetched = pull(cfg, splits=wanted, verbose=verbose)
    specs = split_files(cfg)
    loaded = {split: [_load(cfg, spec, item) for (spec, _), item in
                      zip(specs[split], fetched[split], strict=True)] for split in fetched}
    if verbose:
        for split, parts in loaded.items():
            for part in parts:
                say(f"{split}: {part.report.summary()}"
                    + (f"; articles {str(part.spec)[len(part.spec.name):]}: "
                       f"{len(part.examples)} questions" if part.spec.sliced else ""))
    return fetched, loaded


# split -> (its questions, the selection in words, the features-cache key)
Chosen = tuple[Sequence[Example], str, str]


def _choose_questions(cfg: Config, fetched: dict[str, list[FetchedFile]],
                      loaded: dict[str, list[_Loaded]]) -> tuple[dict[str, Chosen], str]:
    """The questions of each split, and why there is no calibration split when there is
    none (with training)."""
    selected: dict[str, Chosen] = {}
    no_calibration = ""
    if "train" in loaded:
        calibration_part = loaded["calibration"][0] if "calibration" in loaded else None
        train, calibration, train_words, calibration_words = _select_training(
            cfg, loaded["train"], calibration_part)
        train_specs = [p.spec for p in loaded["train"]]
        # "both kinds": the holdout rule (earlier holdouts could lack unanswerable questions)
        choices = {"holdout": [cfg.calibration_fraction, cfg.seed, "both kinds"]
                   if calibration_part is None else None}
        selected["train"] = (train, train_words, _selection_key(
            fetched["train"], train_specs, **choices, sample=[cfg.max_train_samples, cfg.seed]))
        if calibration is not None:
            selected["calibration"] = (calibration, calibration_words, _selection_key(
                fetched["train"], train_specs, **choices,
                calibration=[str(calibration_part.spec), calibration_part.file.sha256]
                if calibration_part else None,
                sample=[cfg.max_calibration_samples, cfg.seed]))
        else:
            no_calibration = calibration_words
    if "dev" in loaded:
        part = loaded["dev"][0]
        dev = part.examples
        words = str(part.spec)
        if cfg.max_eval_samples is not None:
            dev = dev[:cfg.max_eval_samples]
            words += f", the first {len(dev)} questions"
        selected["dev"] = (dev, words, _selection_key(fetched["dev"], [part.spec],
                                                      first=cfg.max_eval_samples))
    return selected, no_calibration


def _check_held_out(selected: dict[str, Chosen]) -> int:
    """Calibration questions sharing an id or a paragraph with the dev questions are a
    ConfigError (the threshold would be tuned on the questions it is scored on); returns how
    many share one with the training questions."""
    if "calibration" not in selected:
        return 0
    calibration, words, _ = selected["calibration"]
    if "dev" in selected and (shared := overlap(calibration, selected["dev"][0])):
        raise ConfigError(
            f"{shared} of the {len(calibration)} calibration questions ({words}) share an id "
            f"or a paragraph with the dev questions ({selected['dev'][1]}): the threshold "
            "would be tuned on the questions it is scored on; calibrate on other articles")
    return overlap(calibration, selected["train"][0])


def _tokenize(cfg: Config, tokenizer: Any, split: str, chosen: Chosen,
              loaded: dict[str, list[_Loaded]], verbose: bool) -> PreparedSplit:
    examples, words, key = chosen
    if not examples:
        raise DataError(f"{split}: no questions selected ({words})")
    features, feature_report, hit = load_or_build_features(
        examples, tokenizer, cache_dir=cfg.cache_dir, data_key=key,
        max_seq_length=cfg.max_seq_length, doc_stride=cfg.doc_stride,
        max_query_length=cfg.max_query_length,
    )
    source = "train" if split == "calibration" and "calibration" not in loaded else split
    parts = loaded.get(source, [])
    if verbose:
        say(f"{split} questions: {words}")
        say(f"{split} features ({'cache hit' if hit else 'built and cached'}): "
            f"{feature_report.summary()}")
    return PreparedSplit(split, [p.file for p in parts], [p.spec for p in parts], examples,
                         [p.report for p in parts], features, feature_report, hit, words)


def _say_kind(data: PreparedData, no_calibration: str) -> None:
    say("data is SQuAD 2.0 (detected: unanswerable questions present)" if data.is_v2
        else "data is SQuAD 1.1 (no unanswerable questions)")
    if data.train is not None and data.calibration is None:
        say(f"no-answer threshold: no calibration set ({no_calibration}), so none is "
            "calibrated; evaluation uses the default, 0, unless --null-threshold is given")
