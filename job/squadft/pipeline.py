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
from squadft.data.pull import FetchedFile, pull_dataset
from squadft.data.squad import Example, ParseReport, load_squad_cached
from squadft.errors import StorageError
from squadft.io import ensure_writable_dir


def say(message: str) -> None:
    print(f"squadft: {message}", flush=True)


@dataclass
class PreparedSplit:
    split: str
    file: FetchedFile
    examples: Sequence[Example]
    parse_report: ParseReport
    features: Features
    feature_report: FeatureReport
    cache_hit: bool


@dataclass
class PreparedData:
    train: PreparedSplit | None
    dev: PreparedSplit | None

    @property
    def is_v2(self) -> bool:
        return any(s.parse_report.is_v2 for s in (self.train, self.dev) if s is not None)


def pull(cfg: Config, *, splits: tuple[str, ...] = ("train", "dev"),
         verbose: bool = True) -> dict[str, FetchedFile]:
    """Fetch the configured files into the cache; one summary line per split."""
    fetched = pull_dataset(cfg, splits, progress=verbose)
    if verbose:
        for split, item in fetched.items():
            how = "cached" if item.from_cache else "downloaded"
            say(f"{split}: {item.path} ({item.size:,} bytes, sha256 {item.sha256}, {how})")
    return fetched


def prepare(cfg: Config, tokenizer: Any = None, *, splits: tuple[str, ...] = ("train", "dev"),
            verbose: bool = True) -> PreparedData:
    """Pull, parse and tokenize; features are cached under cfg.cache_dir."""
    if tokenizer is None:
        from squadft.modeling import load_tokenizer

        # loaded only if some features must be built: a cached re-run never imports
        # transformers (and torch behind it), nor parses the JSON (load_squad_cached)
        tokenizer = LazyTokenizer(cfg.model, load_tokenizer, cache_dir=cfg.cache_dir)
    fetched = pull(cfg, splits=splits, verbose=verbose)
    limits = {"train": cfg.max_train_samples, "dev": cfg.max_eval_samples}
    prepared: dict[str, PreparedSplit] = {}
    for split, item in fetched.items():
        examples, parse_report = load_squad_cached(item.path, cache_dir=cfg.cache_dir,
                                                   sha256=item.sha256)
        limit = limits[split]
        if limit is not None:
            examples = examples[:limit]
        features, feature_report, hit = load_or_build_features(
            examples, tokenizer, cache_dir=cfg.cache_dir,
            data_key=f"{item.sha256}:{limit if limit is not None else 'all'}",
            max_seq_length=cfg.max_seq_length, doc_stride=cfg.doc_stride,
            max_query_length=cfg.max_query_length,
        )
        prepared[split] = PreparedSplit(split, item, examples, parse_report, features,
                                        feature_report, hit)
        if verbose:
            say(f"{split}: {parse_report.summary()}")
            used = f"first {len(examples)} questions" if limit is not None else "all questions"
            say(f"{split} features ({used}, {'cache hit' if hit else 'built and cached'}): "
                f"{feature_report.summary()}")
    data = PreparedData(prepared.get("train"), prepared.get("dev"))
    if verbose:
        say("data is SQuAD 2.0 (detected: unanswerable questions present)" if data.is_v2
            else "data is SQuAD 1.1 (no unanswerable questions)")
    return data


def train(cfg: Config, *, on_checkpoint: Any = None, remote_finder: Any = None) -> Any:
    """The whole job: prepare, train (DDP when launched so), save final/, evaluate."""
    from transformers.utils import logging as transformers_logging

    from squadft.modeling import load_model, load_tokenizer
    from squadft.train.checkpoint import seed_everything
    from squadft.train.distributed import barrier, cleanup, setup_distributed
    from squadft.train.loop import train_model

    transformers_logging.disable_progress_bar()  # "Writing model shards" at every checkpoint
    ctx = setup_distributed()
    try:
        output_dir = Path(cfg.output_dir)
        if ctx.is_main:
            ensure_writable_dir(output_dir)  # fail now, not after hours of training
            cfg.save(output_dir)
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
        splits = ("train", "dev") if cfg.do_eval else ("train",)
        # rank 0 downloads and tokenizes; the others then find everything in the cache
        # (or, without a shared filesystem, build their own copy)
        data = prepare(cfg, tokenizer, splits=splits, verbose=True) if ctx.is_main else None
        barrier(ctx)
        if data is None:
            data = prepare(cfg, tokenizer, splits=splits, verbose=False)
        assert data.train is not None
        seed_everything(cfg.seed)  # the new QA head starts the same on every rank
        model = load_model(cfg.model)
        if ctx.is_main:
            say(f"training {cfg.model} on {len(data.train.features):,} windows, "
                f"{ctx.world_size} process(es) on {ctx.device.type}, output in {output_dir}")
        try:
            result = train_model(cfg, model, tokenizer, data.train.features, ctx,
                                 on_checkpoint=on_checkpoint, remote_finder=remote_finder)
        except BaseException:
            # preempted (or failed after saving): the last checkpoint should still reach the
            # bucket; if the grace period ends first, SIGKILL leaves it without a manifest,
            # so the previous complete checkpoint is used on resume
            if uploader is not None:
                try:
                    uploader.close(timeout=cfg.s3_upload_deadline)
                except StorageError as exc:
                    say(f"warning: {exc}")
            raise
        if uploader is not None:
            say(f"waiting for the upload of {result.final_dir} to {cfg.s3_uri}")
            uploader.close(timeout=cfg.s3_upload_deadline)
        if ctx.is_main:
            loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
            say(f"trained {result.steps} steps ({result.epochs} epochs), final loss {loss}, "
                f"{result.tokens_per_second:,.0f} tokens/s; "
                f"model saved to {result.final_dir}")
        # final/ is on disk before evaluation starts: an evaluation crash loses no training
        if cfg.do_eval and data.dev is not None:
            evaluate(cfg, model, tokenizer, data.dev, ctx, result.steps)
        barrier(ctx)  # nobody tears the group down while a peer is still in a collective
        return result
    finally:
        cleanup(ctx)


def evaluate(cfg: Config, model: Any, tokenizer: Any, dev: PreparedSplit, ctx: Any,
             step: int) -> dict[str, Any]:
    """Official SQuAD 2.0 EM/F1 on the dev data: files in output_dir, a line in metrics.jsonl."""
    from squadft.evaluate.report import evaluate_model, format_metrics
    from squadft.train.loop import METRICS_FILE

    model.eval()
    metrics = evaluate_model(model, tokenizer, dev.examples, dev.features, cfg=cfg,
                             output_dir=cfg.output_dir, device=ctx.device)
    if ctx.is_main:
        for line in format_metrics(metrics).splitlines():
            say(line)
        keys = ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1",
                "best_exact", "best_f1", "best_f1_thresh", "null_threshold")
        record = {"step": step, "eval": {k: metrics[k] for k in keys if k in metrics}}
        with open(Path(cfg.output_dir) / METRICS_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")
    return metrics
