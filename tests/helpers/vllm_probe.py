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


def v2_thinking_budget_source() -> tuple[str, str]:
    """(path, source) of the V2 model runner's thinking-budget module (its Triton kernels)."""
    from vllm.v1.worker.gpu.sample import thinking_budget as module

    with open(module.__file__) as f:
        return module.__file__, f.read()


# Every place vLLM 0.32 reads the tensor-parallel rank or size while it builds a linear or
# MoE layer and shards what its weight loaders copy (linear.py: the layers; parameter.py:
# BasevLLMParameter's stamp; fused_moe/layer.py: the MoE's TP size; fused_moe/config.py:
# FusedMoEParallelConfig's rank). Each module bound the function by name at import.
_TP_READERS = (
    ("vllm.model_executor.layers.linear", "get_tensor_model_parallel_rank"),
    ("vllm.model_executor.layers.linear", "get_tensor_model_parallel_world_size"),
    ("vllm.model_executor.parameter", "get_tensor_model_parallel_rank"),
    ("vllm.model_executor.parameter", "get_tensor_model_parallel_world_size"),
    ("vllm.model_executor.layers.fused_moe.layer", "get_tensor_model_parallel_world_size"),
    ("vllm.model_executor.layers.fused_moe.config", "get_tensor_model_parallel_rank"),
)


@contextlib.contextmanager
def as_tp_rank(tp: int, rank: int):
    """Inside single_rank_context: layers built here are rank `rank` of `tp` to vLLM.

    Building a layer and loading its weights communicate nothing; they only read the
    rank and size, which this answers at the places listed above (as ColumnParallelLinear's
    own tp_rank / tp_size override does for that class). Callers check the built layer's
    tp_rank / tp_size, so a vLLM that reads them elsewhere fails loudly, not silently.
    """
    import importlib

    answers = {"get_tensor_model_parallel_rank": lambda: rank,
               "get_tensor_model_parallel_world_size": lambda: tp}
    saved = []
    try:
        for module, name in _TP_READERS:
            mod = importlib.import_module(module)
            saved.append((mod, name, getattr(mod, name)))
            setattr(mod, name, answers[name])
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


def stand_in_gpu_backends(monkeypatch) -> None:
    """Let vLLM build AWQ / ModelOpt NVFP4 / Quark MXFP4 layers on this CPU.

    Their constructors pick a kernel backend first and refuse when none runs here (the AWQ
    MoE backends need AMX or CUDA, NVFP4 and MXFP4 need a GPU). For load proofs (build every
    layer, load every tensor, no forward pass) each selection is answered with what vLLM's own
    tables list for other hardware: the AWQ MoE gets its CPU (AMX) backend, NVFP4 and MXFP4
    their emulation kernels. Weight creation does not depend on that choice.
    """
    import vllm.model_executor.kernels.linear as kernels
    import vllm.model_executor.kernels.linear.mxfp4.emulation as mx_emulation
    import vllm.model_executor.layers.quantization.auto_awq as auto_awq
    import vllm.model_executor.layers.quantization.modelopt as modelopt
    import vllm.model_executor.layers.quantization.quark.quark_moe as quark_moe
    from vllm.model_executor.kernels.linear.mxfp4.emulation import EmulationMxfp4LinearKernel
    from vllm.model_executor.kernels.linear.nvfp4.emulation import EmulationNvFp4LinearKernel
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUExpertsInt4
    from vllm.model_executor.layers.fused_moe.experts.nvfp4_emulation_moe import (
        Nvfp4QuantizationEmulationTritonExperts)
    from vllm.model_executor.layers.fused_moe.oracle.int_wna16 import WNA16MoEBackend
    from vllm.model_executor.layers.fused_moe.oracle.mxfp4 import Mxfp4MoeBackend
    from vllm.model_executor.layers.fused_moe.oracle.nvfp4 import NvFp4MoeBackend
    from vllm.platforms import PlatformEnum

    monkeypatch.setattr(auto_awq, "select_wna16_moe_backend",
                        lambda *a, **k: (WNA16MoEBackend.CPU, CPUExpertsInt4))
    monkeypatch.setattr(modelopt, "select_nvfp4_moe_backend",
                        lambda *a, **k: (NvFp4MoeBackend.EMULATION,
                                         Nvfp4QuantizationEmulationTritonExperts))
    # Quark's MXFP4 MoE fills in its experts class from the backend it gets.
    monkeypatch.setattr(quark_moe, "select_mxfp4_moe_backend",
                        lambda *a, **k: (Mxfp4MoeBackend.EMULATION, None))
    monkeypatch.setitem(kernels._POSSIBLE_NVFP4_KERNELS, PlatformEnum.CPU,
                        [EmulationNvFp4LinearKernel])
    monkeypatch.setitem(kernels._POSSIBLE_MXFP4_KERNELS, PlatformEnum.CPU,
                        [EmulationMxfp4LinearKernel])
    monkeypatch.setattr(mx_emulation, "has_quark", lambda: True)  # the emulation's QDQ package
