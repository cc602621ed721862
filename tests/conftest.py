"""Session fixtures: tiny DeepSeek checkpoints and ONE real vLLM server for the whole run.

A server start costs one to two minutes on a 2-core CPU, so features that need a server
flag add it to SESSION_SERVER_ARGS below instead of starting a server of their own.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Test modules may import ds_plugin (and so its Triton kernels) only after pytest_configure
# below has run: nothing from ds_plugin is imported at this module's top.

SERVED_NAME = "tiny"


def pytest_configure(config: pytest.Config) -> None:
    # CPU runs only: kernel tests run under the Triton interpreter. `@triton.jit` reads the
    # switch when a kernel module is imported, so it is set here, before collection imports
    # any test module; on a CUDA machine nothing is set and the compiled kernels are tested
    # (tests/kernels/test_compiled_path.py fails otherwise). Engine children drop it
    # (ds_plugin.testing.server.child_env) unless a test asks for the interpreter.
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
        # Every engine the tests start (children inherit this) gets 1 GiB of CPU KV cache
        # (~470k tokens of the tiny models) instead of 30% of RAM: allocating 7 GiB costs a
        # server start ~8 s on a 2-core box (measured 2026-12-02), ~15 starts a run. A
        # value the caller set is kept.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# Flags of the session server beyond the CPU defaults.
SESSION_SERVER_ARGS: list[str] = [
    # Parsers (tests/e2e/test_parsers_e2e.py). Requests without tools or without
    # chat_template_kwargs.thinking are untouched: tool_choice defaults to "none" and
    # `deepseek-v3` reasoning is off unless the request turns thinking on.
    "--enable-auto-tool-choice", "--tool-call-parser", "deepseekv3",
    "--reasoning-parser", "deepseek-v3",
    # Test-only: forces `vllm_xargs.force_ids` as the output; a no-op for other requests.
    # vLLM's V1 runner refuses --logits-processors together with a speculative config.
    "--logits-processors", "ds_plugin.testing.forced_output:ForcedOutput",
]

# Peaked so that greedy decoding is stable across runs and near-tie free.
SESSION_LOGIT_PEAK = 2.0


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_ckpt_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bf16 tiny DeepSeek-V3 checkpoint (real tokenizer, MTP layer included): the exact bf16
    twin of `tiny_ckpt_fp8` (its weights dequantized, as ds_fp8 computes with on a CPU), so
    the session server and `fp8_server` must agree token for token."""
    from ds_plugin.testing.checkpoint import write_bf16_twin

    return write_bf16_twin(tiny_ckpt_fp8, tmp_path_factory.mktemp("ckpt") / "tiny-v3-bf16")


@pytest.fixture(scope="session")
def tiny_ckpt_fp8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session checkpoint as block-FP8, exactly as DeepSeek ships it."""
    from ds_plugin.testing.checkpoint import TinyConfig, write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-v3-fp8",
                            TinyConfig(logit_peak=SESSION_LOGIT_PEAK), quant="fp8")


@pytest.fixture(scope="session")
def tokenizer_only_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The released V3 tokenizer files with no config.json beside them."""
    from ds_plugin.testing.checkpoint import write_tokenizer

    return write_tokenizer(tmp_path_factory.mktemp("tok") / "deepseek-v3-tokenizer")


@pytest.fixture(scope="session")
def server(tiny_ckpt: Path, tokenizer_only_dir: Path):
    """The session's vLLM OpenAI server with ds-plugin loaded.

    It reads the tokenizer from a tokenizer-only folder (`--tokenizer`), the case in which
    transformers alone would corrupt DeepSeek tokenization; the plugin must keep it exact.
    """
    from ds_plugin.testing.server import CPU_DEFAULT_ARGS, VllmServer

    args = [*CPU_DEFAULT_ARGS, "--served-model-name", SERVED_NAME,
            "--tokenizer", str(tokenizer_only_dir), *SESSION_SERVER_ARGS]
    with VllmServer(tiny_ckpt, args=args, log_path=tiny_ckpt.parent / "session-server.log") as srv:
        yield srv


@pytest.fixture(scope="session")
def fp8_server(tiny_ckpt_fp8: Path):
    """A second server, on the block-FP8 checkpoint (started only if a test asks for it),
    in vLLM's default compiled mode: how users serve it (issue 10's NaN output showed only
    there)."""
    from ds_plugin.testing.server import CPU_DEFAULT_ARGS, VllmServer

    args = [*CPU_DEFAULT_ARGS, "--served-model-name", SERVED_NAME]
    with VllmServer(tiny_ckpt_fp8, args=args,
                    log_path=tiny_ckpt_fp8.parent / "fp8-server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def r1_server(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server as DeepSeek-R1 is served: R1's tokenizer (<think>/</think> single tokens),
    `--reasoning-parser deepseek-r1` (always thinking) and the plugin's R1 template, whose
    generation prompt opens the thoughts with "<think>\\n" as R1-0528's does.

    The session server cannot be this one: its V3 tokenizer spells <think> as plain text
    (no budget can count from it) and its `deepseek-v3` parser thinks only when asked,
    which its other tests rely on. Module-scoped (tests/e2e/test_parsers_e2e.py only) and
    small: it runs beside the session server. Eager, as fp8_server: it tests parsing and
    the thinking budget (sampler code), which compilation does not touch.
    """
    from ds_plugin.parsers.templates import template_path
    from ds_plugin.testing.checkpoint import write_tokenizer
    from ds_plugin.testing.server import CPU_DEFAULT_ARGS, VllmServer

    tokenizer = write_tokenizer(tmp_path_factory.mktemp("tok") / "deepseek-r1-tokenizer",
                                name="deepseek-r1")
    args = [*CPU_DEFAULT_ARGS, "--gpu-memory-utilization", "0.1", "--enforce-eager",
            "--served-model-name", SERVED_NAME, "--tokenizer", str(tokenizer),
            "--chat-template", str(template_path("deepseekr1")),
            "--enable-auto-tool-choice", "--tool-call-parser", "deepseekv3",
            "--reasoning-parser", "deepseek-r1",
            "--logits-processors", "ds_plugin.testing.forced_output:ForcedOutput"]
    with VllmServer(tiny_ckpt, args=args, log_path=tiny_ckpt.parent / "r1-server.log") as srv:
        yield srv
