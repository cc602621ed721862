"""What vLLM's registries hold, and how to build vLLM layers outside an engine (tests only)."""

from __future__ import annotations

import contextlib
import socket
from types import SimpleNamespace


def registered_model_target(arch: str) -> str | None:
    """The "module:Class" a lazily registered architecture resolves to, if lazy."""
    from vllm.model_executor.models.registry import ModelRegistry, _LazyRegisteredModel

    entry = ModelRegistry.models.get(arch)
    if isinstance(entry, _LazyRegisteredModel):
        return f"{entry.module_name}:{entry.class_name}"
    return None


def model_registry_snapshot(archs) -> dict:
    from vllm.model_executor.models.registry import ModelRegistry

    return {"models": {a: repr(ModelRegistry.models.get(a)) for a in archs},
            "model_count": len(ModelRegistry.models)}


def registered_parsers(kind: str) -> dict[str, str]:
    """Name -> target of every tool ("tool") or reasoning ("reasoning") parser vLLM knows;
    an eagerly registered class wins over a lazy entry, as in vLLM's lookup."""
    if kind == "tool":
        from vllm.tool_parsers import ToolParserManager as manager

        eager = manager.tool_parsers
    else:
        from vllm.reasoning import ReasoningParserManager as manager

        eager = manager.reasoning_parsers
    out = {name: ":".join(map(str, lazy)) for name, lazy in manager.lazy_parsers.items()}
    out.update({name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in eager.items()})
    return out


def registered_quantization_config(name: str) -> type | None:
    """The config class vLLM resolves quantization method `name` to, or None."""
    from vllm.model_executor.layers.quantization import (QUANTIZATION_METHODS,
                                                         get_quantization_config)

    return get_quantization_config(name) if name in QUANTIZATION_METHODS else None


def attention_backend_path(enum_name: str) -> str | None:
    """The class path AttentionBackendEnum.<enum_name> resolves to now (overrides first)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    return AttentionBackendEnum[enum_name].get_path()


def intree_deepseek_parsers() -> dict[str, type]:
    """vLLM's own DeepSeek parser classes, for side-by-side comparison."""
    from vllm.reasoning.deepseek_r1_reasoning_parser import DeepSeekR1ReasoningParser
    from vllm.reasoning.deepseek_v3_reasoning_parser import DeepSeekV3ReasoningParser
    from vllm.tool_parsers.deepseekv3_tool_parser import DeepSeekV3ToolParser
    from vllm.tool_parsers.deepseekv31_tool_parser import DeepSeekV31ToolParser

    return {"deepseek_v3": DeepSeekV3ToolParser, "deepseek_v31": DeepSeekV31ToolParser,
            "deepseek_r1": DeepSeekR1ReasoningParser,
            "deepseek_v3_reasoning": DeepSeekV3ReasoningParser}


def delegating_parser_base() -> type:
    from vllm.parser.abstract_parser import DelegatingParser

    return DelegatingParser


def get_tokenizer(name: str, **kwargs):
    """vLLM's own tokenizer loading path (what the server uses)."""
    from vllm.tokenizers import get_tokenizer as _get

    return _get(name, **kwargs)


@contextlib.contextmanager
def single_rank_context():
    """Build vLLM layers outside an engine: a default VllmConfig is current, and a one-rank
    tensor-parallel group exists (gloo, loopback). The process group outlives the context,
    as vLLM's own does; a second entry reuses it."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import (init_distributed_environment, initialize_model_parallel,
                                  model_parallel_is_initialized)

    with set_current_vllm_config(VllmConfig()):
        if not model_parallel_is_initialized():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            init_distributed_environment(world_size=1, rank=0, local_rank=0,
                                         distributed_init_method=f"tcp://127.0.0.1:{port}",
                                         backend="gloo")
            initialize_model_parallel(1, 1)
        yield


def linear_layers() -> SimpleNamespace:
    """vLLM's parallel linear layer classes (to build layers a quant method serves)."""
    from vllm.model_executor.layers.linear import (MergedColumnParallelLinear,
                                                   ReplicatedLinear, RowParallelLinear)

    return SimpleNamespace(MergedColumnParallelLinear=MergedColumnParallelLinear,
                           ReplicatedLinear=ReplicatedLinear, RowParallelLinear=RowParallelLinear)
