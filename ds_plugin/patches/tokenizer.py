"""Load byte-level BPE tokenizers mislabelled as Llama faithfully, and name a missing
tokenizer.json (see the ledger in ds_plugin/patches/__init__.py)."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("vllm.ds_plugin")

_MARK = "__ds_plugin_tokenizer_patch__"


def is_mislabelled_byte_level(path: str | Path) -> bool:
    """True when `path` is a local folder whose tokenizer_config.json names a Llama
    tokenizer class but whose tokenizer.json is byte-level BPE (DeepSeek's layout)."""
    p = Path(path)
    cfg_file, tok_file = p / "tokenizer_config.json", p / "tokenizer.json"
    if not (cfg_file.is_file() and tok_file.is_file()):
        return False
    try:
        cls = json.loads(cfg_file.read_text()).get("tokenizer_class") or ""
    except (OSError, ValueError):
        return False
    if cls.removesuffix("Fast") != "LlamaTokenizer":
        return False
    try:
        tok = json.loads(tok_file.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{tok_file} is not valid JSON: {e}") from e
    model = (tok.get("model") or {}).get("type")
    byte_level = "ByteLevel" in json.dumps([tok.get("pre_tokenizer"), tok.get("decoder")])
    return model == "BPE" and byte_level


def missing_tokenizer_json(path: str | Path) -> Path | None:
    """`path`/tokenizer.json when `path` is a local folder that lacks it, else None."""
    p = Path(path)
    tok = p / "tokenizer.json"
    return tok if p.is_dir() and not tok.is_file() else None


def load_byte_level(path: str | Path, **kwargs: Any):
    """Load tokenizer.json exactly as written, keeping tokenizer_config's special tokens
    and chat template."""
    from transformers import TokenizersBackend

    # vLLM's loader passes options meant for AutoTokenizer's class selection.
    for key in ("mistral_format", "config", "trust_remote_code", "download_dir"):
        kwargs.pop(key, None)
    return TokenizersBackend.from_pretrained(str(path), **kwargs)


def apply(loader_cls: type, cache: Any) -> None:
    """Wrap `loader_cls.from_pretrained` (vLLM's CachedHfTokenizer); `cache` is vLLM's
    get_cached_tokenizer. Idempotent."""
    original = loader_cls.from_pretrained
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def from_pretrained(path_or_repo_id, *args, **kwargs):
        if not args and is_mislabelled_byte_level(path_or_repo_id):
            log.info("ds-plugin: %s labels a byte-level BPE tokenizer.json as a Llama "
                     "tokenizer; loading tokenizer.json as written", path_or_repo_id)
            return cache(load_byte_level(path_or_repo_id, **kwargs))
        try:
            return original(path_or_repo_id, *args, **kwargs)
        except (ValueError, OSError) as e:
            missing = missing_tokenizer_json(path_or_repo_id)
            if missing is None:
                raise
            # transformers' own message asks for sentencepiece or tiktoken instead.
            raise FileNotFoundError(f"tokenizer file {missing} is missing: the tokenizer "
                                    f"cannot be built from the rest of the folder") from e

    setattr(from_pretrained, _MARK, True)
    loader_cls.from_pretrained = staticmethod(from_pretrained)
