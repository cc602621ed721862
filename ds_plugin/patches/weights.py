"""Name the shard when a safetensors file is truncated or its header is unreadable (see
the ledger in ds_plugin/patches/__init__.py)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

_MARK = "__ds_plugin_weights_patch__"
_HEADER_LEN = 8  # safetensors: little-endian u64 header size, JSON header, tensor data


def check_safetensors_file(path: str | Path) -> None:
    """Raise ValueError naming `path` unless its header parses and describes exactly the
    bytes the file has. Reads the header only."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(_HEADER_LEN)
        if len(head) < _HEADER_LEN:
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        n = int.from_bytes(head, "little")
        if _HEADER_LEN + n > size:
            raise ValueError(f"{path}: truncated safetensors file: the header alone is {n} "
                             f"bytes, the file has {size}")
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items()
                       if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise ValueError(f"{path}: unreadable safetensors header: {e}") from e
    want = _HEADER_LEN + n + end
    if want != size:
        what = "truncated" if size < want else "oversized"
        raise ValueError(f"{path}: {what} safetensors file: its header describes {want} "
                         f"bytes, the file has {size}")


def apply(loader_cls: type) -> None:
    """Wrap `loader_cls._prepare_weights` (vLLM's DefaultModelLoader) so every safetensors
    file it returns is checked before the first tensor is read. Idempotent."""
    original = loader_cls._prepare_weights
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def _prepare_weights(self, *args: Any, **kwargs: Any):
        prepared = original(self, *args, **kwargs)
        _, files, use_safetensors, _ = prepared
        if use_safetensors:
            for path in files:
                check_safetensors_file(path)
        return prepared

    setattr(_prepare_weights, _MARK, True)
    loader_cls._prepare_weights = _prepare_weights
