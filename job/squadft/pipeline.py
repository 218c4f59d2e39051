"""Wires the stages together: pull -> parse -> features -> train -> evaluate (-> upload).

Each public function is one CLI command. Stages stay ignorant of each other; this module is
where their reports are printed and where the distributed choreography lives (rank 0 pulls and
tokenizes while the other ranks wait, then everyone reads the same cache).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squadft.config import Config
from squadft.data.features import FeatureReport, Features, LazyTokenizer, load_or_build_features
from squadft.data.pull import FetchedFile, pull_dataset, split_files
from squadft.data.selection import (
    FileSpec,
    holdout_articles,
    select_articles,
    stratified_sample,
    unanswerable_share,
)
from squadft.data.squad import Example, ParseReport, load_squad_cached
from squadft.errors import DataError, StorageError
from squadft.evaluate.calibration import (
    INFERENCE_FILE,
    Calibration,
    InferenceSettings,
    resolve_null_threshold,
)
from squadft.io import ensure_writable_dir, remove_stale_temps, uninterruptible


def say(message: str) -> None:
    print(f"squadft: {message}", flush=True)


def remove_leftovers(*directories: Path, recursive: bool = False) -> None:
    """Delete what interrupted squadft processes of this host left under temporary names
    in `directories` (see squadft.io), and say so on stderr."""
    import sys

    for directory in directories:
        for path in remove_stale_temps(directory, recursive=recursive):
            print(f"squadft: removed {path}, left by an interrupted squadft process",
                  file=sys.stderr, flush=True)


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
    """(training examples, calibration examples or None, and each selection in words)."""
    calibration: Sequence[Example] | None = None
    calibration_words = ""
    has_unanswerable = any(part.report.impossible for part in parts)
    if calibration_part is not None:
        calibration = calibration_part.examples
        calibration_words = f"calibration file {calibration_part.spec}"
    elif has_unanswerable and cfg.calibration_fraction > 0:
        kept_parts, held, titles = [], [], []
        for part in parts:
            chosen = holdout_articles(part.examples, cfg.calibration_fraction, cfg.seed,
                                      str(part.spec))
            kept_parts.append(_Loaded(part.spec, part.file,
                                      [e for e in part.examples if e.article not in chosen],
                                      part.report))
            held.extend(e for e in part.examples if e.article in chosen)
            named = {e.article: e.title for e in part.examples if e.article in chosen}
            titles.extend(f"{part.spec.name}#{i} {named[i]}" for i in sorted(named))
        parts = kept_parts
        if held:
            calibration = held
            calibration_words = (f"{len(titles)} training articles held out of training "
                                 f"({', '.join(titles)})")
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
    return train, calibration, train_words, calibration_words


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
    calibration (only with train): those held-out questions. dev: the dev file's questions
    (the first max_eval_samples).
    """
    if tokenizer is None:
        from squadft.modeling import load_tokenizer

        # loaded only if some features must be built: a cached re-run never imports
        # transformers (and torch behind it)
        tokenizer = LazyTokenizer(cfg.model, load_tokenizer, cache_dir=cfg.cache_dir)
    cache = Path(cfg.cache_dir)
    remove_leftovers(cache / "features", cache / "examples")
    remove_leftovers(cache / "downloads", recursive=True)
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

    selected: dict[str, tuple[Sequence[Example], str, str]] = {}
    if "train" in loaded:
        calibration_part = loaded["calibration"][0] if "calibration" in loaded else None
        train, calibration, train_words, calibration_words = _select_training(
            cfg, loaded["train"], calibration_part)
        choices = {"holdout": [cfg.calibration_fraction, cfg.seed]
                   if calibration_part is None else None}
        selected["train"] = (train, train_words, _selection_key(
            fetched["train"], [p.spec for p in loaded["train"]], **choices,
            sample=[cfg.max_train_samples, cfg.seed]))
        if calibration is not None:
            selected["calibration"] = (calibration, calibration_words, _selection_key(
                fetched["train"], [p.spec for p in loaded["train"]], **choices,
                calibration=[str(calibration_part.spec), calibration_part.file.sha256]
                if calibration_part else None,
                sample=[cfg.max_calibration_samples, cfg.seed]))
    if "dev" in loaded:
        part = loaded["dev"][0]
        dev = part.examples
        words = str(part.spec)
        if cfg.max_eval_samples is not None:
            dev = dev[:cfg.max_eval_samples]
            words += f", the first {len(dev)} questions"
        selected["dev"] = (dev, words, _selection_key(fetched["dev"], [part.spec],
                                                      first=cfg.max_eval_samples))

    prepared: dict[str, PreparedSplit] = {}
    for split, (examples, words, key) in selected.items():
        if not examples:
            raise DataError(f"{split}: no questions selected ({words})")
        features, feature_report, hit = load_or_build_features(
            examples, tokenizer, cache_dir=cfg.cache_dir, data_key=key,
            max_seq_length=cfg.max_seq_length, doc_stride=cfg.doc_stride,
            max_query_length=cfg.max_query_length,
        )
        source = "train" if split == "calibration" and "calibration" not in loaded else split
        parts = loaded.get(source, [])
        prepared[split] = PreparedSplit(split, [p.file for p in parts], [p.spec for p in parts],
                                        examples, [p.report for p in parts], features,
                                        feature_report, hit, words)
        if verbose:
            say(f"{split} questions: {words}")
            say(f"{split} features ({'cache hit' if hit else 'built and cached'}): "
                f"{feature_report.summary()}")
    data = PreparedData(prepared.get("train"), prepared.get("dev"), prepared.get("calibration"))
    if verbose:
        say("data is SQuAD 2.0 (detected: unanswerable questions present)" if data.is_v2
            else "data is SQuAD 1.1 (no unanswerable questions)")
        if "train" in prepared and data.calibration is None:
            say("no-answer threshold: no calibration set (" + (
                "calibration_fraction is 0" if cfg.calibration_fraction == 0 else
                "the training data has no unanswerable questions") + "); evaluation uses 0 "
                "unless --null-threshold is given")
    return data


def train(cfg: Config, *, on_checkpoint: Any = None, remote_finder: Any = None) -> Any:
    """The whole job: prepare, train (DDP when launched so), save final/, calibrate the
    no-answer threshold on held-out questions, evaluate on the dev data."""
    from transformers.utils import logging as transformers_logging

    from squadft.modeling import check_window, load_model, load_tokenizer
    from squadft.train.checkpoint import check_resume_path, seed_everything
    from squadft.train.distributed import barrier, cleanup, prepare_in_turn, setup_distributed
    from squadft.train.loop import PreemptionWatcher, train_model
    from squadft.train.tracking import FINISHED, MetricsLogger, outcome_of

    transformers_logging.disable_progress_bar()  # "Writing model shards" at every checkpoint
    ctx = setup_distributed(device=cfg.device)
    watcher = PreemptionWatcher()  # installed for training, kept through the evaluation
    metrics: MetricsLogger | None = None
    try:
        output_dir = Path(cfg.output_dir)
        if ctx.is_main:
            # a wrong --resume PATH fails before any work (sizes now, sha256 at the resume)
            check_resume_path(cfg.resume, hashes=False)
            ensure_writable_dir(output_dir)  # fail now, not after hours of training
            remove_leftovers(output_dir, output_dir / "final")
            cfg.save(output_dir)
        # rank 0's metrics destinations; a tracker whose package is missing fails now
        metrics = MetricsLogger(cfg, enabled=ctx.is_main)
        uploader = None
        if cfg.s3_uri and ctx.is_main and on_checkpoint is None:
            # checks the bucket and credentials now: a wrong key fails before training, not
            # after the first checkpoint hours later
            from squadft.storage.checkpoints import CheckpointUploader
            from squadft.storage.checkpoints import remote_finder as s3_remote_finder

            uploader = CheckpointUploader.from_config(cfg)
            on_checkpoint = uploader
            remote_finder = remote_finder or s3_remote_finder(cfg)
        tokenizer = load_tokenizer(cfg.model)
        check_window(cfg.model, tokenizer, max_seq_length=cfg.max_seq_length,
                     doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length)
        splits = ("train", "dev") if cfg.do_eval else ("train",)
        # rank 0 downloads and tokenizes; then one process per node finds it in the cache
        # (or, without a shared filesystem, builds the node's copy); then all the others.
        # --refresh is rank 0's to do: the others use what it just fetched.
        data = prepare_in_turn(
            ctx, lambda: prepare(cfg, tokenizer, splits=splits, verbose=True),
            lambda: prepare(cfg.replace(refresh=False), tokenizer, splits=splits,
                            verbose=False))
        assert data.train is not None
        seed_everything(cfg.seed)  # the new QA head starts the same on every rank
        model = load_model(cfg.model)
        if ctx.is_main:
            say(f"training {cfg.model} on {len(data.train.features):,} windows, "
                f"{ctx.world_size} process(es) on {ctx.device.type}, output in {output_dir}")
        watcher.install()
        try:
            result = train_model(cfg, model, tokenizer, data.train.features, ctx,
                                 on_checkpoint=on_checkpoint, remote_finder=remote_finder,
                                 watcher=watcher, metrics=metrics)
            # final/ is on disk before calibration and evaluation start: a crash in either
            # loses no training, and final/ is uploaded (uncalibrated) even then
            watcher.activity = "calibration"
            calibration = finish_model(cfg, model, data.calibration, ctx, result,
                                       on_checkpoint)
        except BaseException:
            # preempted (or failed after saving): the last checkpoint should still reach the
            # bucket; if the grace period ends first, SIGKILL leaves it without a manifest,
            # so the previous complete checkpoint is used on resume
            if uploader is not None:
                try:
                    with watcher.draining(f"upload to {cfg.s3_uri}", then_stop=False):
                        uploader.close(timeout=cfg.s3_upload_deadline)
                except StorageError as exc:
                    say(f"warning: {exc}")
            raise
        if uploader is not None:
            say(f"waiting for the upload of {result.final_dir} to {cfg.s3_uri}")
            with watcher.draining(f"upload of final/ to {cfg.s3_uri}"):
                uploader.close(timeout=cfg.s3_upload_deadline)
        if ctx.is_main:
            loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
            speed = (f"{result.tokens_per_second:,.0f} tokens/s" if result.tokens_per_second
                     else "no step left to train in this process")
            say(f"trained {result.steps} steps ({result.epochs} epochs), final loss {loss}, "
                f"{speed}; model saved to {result.final_dir}")
        if cfg.do_eval and data.dev is not None:
            watcher.activity = "final evaluation"
            evaluate(cfg, model, data.dev, ctx, result.steps, calibration, metrics)
        metrics.close(FINISHED)
        barrier(ctx)  # nobody tears the group down while a peer is still in a collective
        return result
    except BaseException as exc:
        if metrics is not None:
            metrics.close(outcome_of(exc))
        raise
    finally:
        watcher.uninstall()
        cleanup(ctx)


def finish_model(cfg: Config, model: Any, calibration_split: PreparedSplit | None, ctx: Any,
                 result: Any, on_checkpoint: Any) -> Calibration | None:
    """Calibrate the no-answer threshold on the held-out questions, write it with the
    inference settings into final/, and hand final/ to the uploader (also when calibrating
    fails: the trained weights must reach the bucket either way)."""
    from squadft.evaluate.report import calibrate_model
    from squadft.train.checkpoint import add_to_final

    calibration = None
    try:
        if calibration_split is not None:
            calibration = calibrate_model(
                model, calibration_split.examples, calibration_split.features, cfg=cfg,
                device=ctx.device, source=calibration_split.selection)
            if ctx.is_main:
                say(calibration.summary())
    finally:
        if ctx.is_main and result.final_dir is not None:
            settings = InferenceSettings.from_config(cfg, calibration)
            with uninterruptible():  # a SIGTERM now stops the job right after this
                add_to_final(result.final_dir, INFERENCE_FILE, settings.to_json(),
                             result.steps)
                if on_checkpoint is not None:
                    on_checkpoint(Path(result.final_dir))
    return calibration


def evaluate(cfg: Config, model: Any, dev: PreparedSplit, ctx: Any, step: int,
             calibration: Calibration | None = None, metrics: Any = None) -> dict[str, Any]:
    """Official SQuAD 2.0 EM/F1 on the dev data, against the raw file's gold answers, at the
    threshold --null-threshold names (auto: the calibrated one); files in output_dir, a line
    in metrics.jsonl and, through `metrics` (a squadft.train.tracking.MetricsLogger), the
    trackers."""
    from squadft.evaluate.report import evaluate_model, format_metrics, gold_for_examples, load_gold
    from squadft.train.loop import METRICS_FILE

    threshold = resolve_null_threshold(cfg.null_threshold, calibration)
    answers = None
    if ctx.is_main:
        gold = load_gold(dev.files[0].path, dev.specs[0])
        answers, warnings = gold_for_examples(gold, dev.examples,
                                              limited=cfg.max_eval_samples is not None,
                                              source=str(dev.specs[0]))
        for warning in warnings:
            say(f"warning: {warning}")
    model.eval()
    scores = evaluate_model(model, dev.examples, dev.features, cfg=cfg, threshold=threshold,
                            output_dir=cfg.output_dir, device=ctx.device, gold=answers)
    if ctx.is_main:
        for line in format_metrics(scores).splitlines():
            say(line)
        keys = ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1",
                "null_threshold", "null_threshold_kind", "always_no_answer_f1",
                "best_exact", "best_f1", "best_f1_thresh")
        results = {k: scores[k] for k in keys if k in scores}
        if metrics is not None:
            metrics.log_eval(step, results)
        else:
            with open(Path(cfg.output_dir) / METRICS_FILE, "a") as handle:
                handle.write(json.dumps({"step": step, "eval": results}) + "\n")
    return scores
