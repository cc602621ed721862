"""Session fixtures: tiny DeepSeek checkpoints and ONE real vLLM server for the whole run.

A server start costs one to two minutes on a 2-core CPU, so features that need a server
flag add it to SESSION_SERVER_ARGS below instead of starting a server of their own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ds_plugin.testing.checkpoint import TinyConfig, write_checkpoint, write_tokenizer
from ds_plugin.testing.server import CPU_DEFAULT_ARGS, VllmServer

SERVED_NAME = "tiny"

# Flags of the session server beyond the CPU defaults.
SESSION_SERVER_ARGS: list[str] = []

# Peaked so that greedy decoding is stable across runs and near-tie free.
SESSION_CONFIG = TinyConfig(logit_peak=2.0)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bf16 tiny DeepSeek-V3 checkpoint (real tokenizer, MTP layer included)."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-v3-bf16", SESSION_CONFIG)


@pytest.fixture(scope="session")
def tiny_ckpt_fp8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights as block-FP8, exactly as DeepSeek ships them."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-v3-fp8", SESSION_CONFIG,
                            quant="fp8")


@pytest.fixture(scope="session")
def tokenizer_only_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The released V3 tokenizer files with no config.json beside them."""
    return write_tokenizer(tmp_path_factory.mktemp("tok") / "deepseek-v3-tokenizer")


@pytest.fixture(scope="session")
def server(tiny_ckpt: Path, tokenizer_only_dir: Path):
    """The session's vLLM OpenAI server with ds-plugin loaded.

    It reads the tokenizer from a tokenizer-only folder (`--tokenizer`), the case in which
    transformers alone would corrupt DeepSeek tokenization; the plugin must keep it exact.
    """
    args = [*CPU_DEFAULT_ARGS, "--served-model-name", SERVED_NAME,
            "--tokenizer", str(tokenizer_only_dir), *SESSION_SERVER_ARGS]
    with VllmServer(tiny_ckpt, args=args, log_path=tiny_ckpt.parent / "session-server.log") as srv:
        yield srv
