"""Loading models and tokenizers by hub name or local directory, with offline-friendly errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from squadft.console import say, warn
from squadft.errors import ConfigError, ModelLoadError


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, name_or_path, "tokenizer")
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{name_or_path}: a fast (Rust) tokenizer is required for offsets")
    return tokenizer


def load_model(name_or_path: str, **kwargs: Any) -> Any:
    """AutoModelForQuestionAnswering; checks that only the QA head was newly initialised."""
    from transformers import AutoModelForQuestionAnswering
    from transformers.utils import logging as transformers_logging

    # transformers prints a multi-line "LOAD REPORT" table; the check below says what matters
    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # "Loading weights" bar: noise in job logs
    try:
        model, info = _from_pretrained(AutoModelForQuestionAnswering, name_or_path, "model",
                                       output_loading_info=True, **kwargs)
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()
    new_head = [k for k in info.get("missing_keys", []) if k.startswith("qa_outputs.")]
    if new_head:
        say(f"{name_or_path}: new question-answering head initialised "
            f"({', '.join(sorted(new_head))})")
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("qa_outputs.")]
    if missing:
        raise ModelLoadError(
            f"{name_or_path}: {len(missing)} weights were not found in the checkpoint "
            f"(e.g. {missing[0]}); is it the right architecture?"
        )
    return model


# Models whose position ids start after the padding index (RoBERTa's "padding_idx + 1" offset):
# max_position_embeddings counts those reserved positions too.
_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "camembert", "longformer",
                               "bart", "mbart", "xmod", "data2vec-text"})


def max_positions(model_config: Any) -> int | None:
    """Longest input the model's absolute position embeddings allow, or None when it has
    none (relative positions) or does not say."""
    limit = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    if getattr(model_config, "position_biased_input", True) is False:  # DeBERTa-v2/v3
        return None
    if getattr(model_config, "model_type", "") in _OFFSET_POSITIONS:
        limit -= (getattr(model_config, "pad_token_id", None) or 1) + 1
    return limit


def check_window(name_or_path: str, tokenizer: Any, *, max_seq_length: int, doc_stride: int,
                 max_query_length: int, model_config: Any = None) -> None:
    """Fail at start (ConfigError, exit 2), not at the first long batch hours later, when the
    windows cannot fit the model or leave no room for the context after the question."""
    if model_config is None:
        from transformers import AutoConfig

        model_config = _from_pretrained(AutoConfig, name_or_path, "model config")
    limit = max_positions(model_config)
    if limit is not None and max_seq_length > limit:
        raise ConfigError(
            f"max_seq_length {max_seq_length} is longer than {name_or_path} allows "
            f"({limit} positions); use --max-seq-length {limit} or less")
    from squadft.data.features import question_token_limit

    question_limit = question_token_limit(tokenizer, max_seq_length, doc_stride,
                                           max_query_length)  # ConfigError: no room at all
    if question_limit < max_query_length:
        warn(f"doc_stride {doc_stride} in {max_seq_length}-token windows "
             f"leaves room for {question_limit} question tokens, fewer than max_query_length "
             f"{max_query_length}: longer questions are cut (counted in the feature report)")


def _from_pretrained(auto_class: Any, name_or_path: str, what: str, **kwargs: Any) -> Any:
    """`auto_class.from_pretrained`, failing with a one-line, offline-friendly ModelLoadError."""
    try:
        return auto_class.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if os.path.isdir(name_or_path):
            hint = f"cannot load {what} from {name_or_path}: {first}"
        elif Path(name_or_path).expanduser().exists() or name_or_path.startswith((".", "/", "~")):
            hint = f"cannot load {what} from {name_or_path}: not a save_pretrained directory"
        else:
            hint = (f"cannot load {what} {name_or_path!r} (not in the local Hugging Face cache "
                    "and the hub is unreachable?); pass a local save_pretrained directory "
                    "with --model")
        raise ModelLoadError(hint) from None
