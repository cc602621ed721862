"""ds-plugin: DeepSeek-V3/R1/V3.1 serving for vLLM.

`import ds_plugin` imports nothing heavy and works where vLLM is absent (the GPU kernel
machine has none). vLLM calls `register()` through the `vllm.general_plugins` entry point
in every process it starts; it is the only place that touches vLLM's registries.
"""

from __future__ import annotations

import logging
import os

__version__ = "0.1.0"
__all__ = ["register", "PLUGIN_NAME", "MODELS", "TOOL_PARSERS", "REASONING_PARSERS",
           "QUANT_CONFIGS", "ATTENTION_BACKENDS", "CONFIG_CHECKS"]

PLUGIN_NAME = "ds_plugin"

# Every registration the plugin makes. Targets are strings so registration imports no
# model code; later issues add rows here and nowhere else.
MODELS: dict[str, str] = {
    "DeepseekV3ForCausalLM": "ds_plugin.model.deepseek_v3:DeepseekV3ForCausalLM",
    # The draft vLLM builds for `--speculative-config '{"method": "mtp", ...}'` on a
    # deepseek_v3 checkpoint (its speculative config renames the architecture to this).
    "DeepSeekMTPModel": "ds_plugin.spec.mtp:DeepSeekMTP",
}
# Config checks vLLM runs for an architecture while it validates flags (before any engine
# process starts): arch -> (module, class), a VerifyAndUpdateConfig; an in-tree check for
# the same arch still runs after ours.
CONFIG_CHECKS: dict[str, tuple[str, str]] = {
    "DeepseekV3ForCausalLM": ("ds_plugin.spec.startup", "SpeculativeStartupCheck"),
}
# Parsers answer to SGLang's names and replace vLLM's in-tree ones of the same format.
_TOOLS = "ds_plugin.parsers.vllm_tool_parser"
_REASONING = "ds_plugin.parsers.vllm_reasoning_parser"
TOOL_PARSERS: dict[str, tuple[str, str]] = {
    "deepseekv3": (_TOOLS, "DeepSeekV3ToolParser"),
    "deepseek_v3": (_TOOLS, "DeepSeekV3ToolParser"),
    "deepseekv31": (_TOOLS, "DeepSeekV31ToolParser"),
    "deepseek_v31": (_TOOLS, "DeepSeekV31ToolParser"),
}
REASONING_PARSERS: dict[str, tuple[str, str]] = {
    "deepseek-r1": (_REASONING, "DeepSeekR1ReasoningParser"),
    "deepseek_r1": (_REASONING, "DeepSeekR1ReasoningParser"),
    "deepseek-v3": (_REASONING, "DeepSeekV3ReasoningParser"),
    "deepseek_v3": (_REASONING, "DeepSeekV3ReasoningParser"),
}
# Quantization configs: vLLM's decorator needs the class, so its module is imported at
# registration (it imports only vLLM's quantization bases; kernels load on first use).
QUANT_CONFIGS: dict[str, tuple[str, str]] = {
    "ds_fp8": ("ds_plugin.quant.block_fp8", "DSBlockFp8Config"),
    "w4afp8": ("ds_plugin.quant.w4afp8", "DSW4AFp8Config"),
    "w8a8_int8": ("ds_plugin.quant.int8", "DSW8A8Int8Config"),
    "blockwise_int8": ("ds_plugin.quant.int8", "DSBlockInt8Config"),
}
# Attention backends: vLLM enum member -> ("module.Class", opt-in env var or None). Existing
# members only (a new name breaks spawned workers). CUDA: `--attention-backend CUSTOM`, its
# decode kernel picked by DS_PLUGIN_MLA_KERNEL or the measured default. CPU: our backend
# replaces vLLM's CPU_MLA only with DS_PLUGIN_CPU_MLA=1, so an engine test can compare it with
# vLLM's own and other CPU tests keep vLLM's faster C++ decode.
ATTENTION_BACKENDS: dict[str, tuple[str, str | None]] = {
    "CUSTOM": ("ds_plugin.attention.mla_backend.DSMLABackend", None),
    "CPU_MLA": ("ds_plugin.attention.mla_backend.DSCpuMLABackend", "DS_PLUGIN_CPU_MLA"),
}

# A child of vLLM's logger, so plugin lines go through whatever logging vLLM configures
# (format, level, VLLM_LOGGING_LEVEL) without importing vLLM here.
log = logging.getLogger("vllm.ds_plugin")


def _allowed_by_vllm_plugins() -> bool:
    # vLLM filters entry points by VLLM_PLUGINS itself; checking again here keeps a
    # direct call (tests, other launchers) consistent with what vLLM would do.
    allow = os.environ.get("VLLM_PLUGINS")
    if allow is None:
        return True
    return PLUGIN_NAME in {p.strip() for p in allow.split(",")}


def register() -> None:
    """Register ds-plugin's models, parsers and backends with vLLM.

    Lazy (string targets), idempotent (each registry call writes the same entry again),
    and silent on an unsupported vLLM beyond one error line.
    """
    if not _allowed_by_vllm_plugins():
        return
    from ds_plugin import _vllm, envs, patches

    if not _vllm.version_supported():
        return
    _vllm.patch_tokenizer_loading()
    patches.apply_parser_patches()
    _vllm.patch_weight_loading()
    for arch, target in MODELS.items():
        _vllm.register_model(arch, target)
    for arch, (module, cls) in CONFIG_CHECKS.items():
        _vllm.register_config_check(arch, module, cls)
    for name, (module, cls) in TOOL_PARSERS.items():
        _vllm.register_tool_parser(name, module, cls)
    for name, (module, cls) in REASONING_PARSERS.items():
        _vllm.register_reasoning_parser(name, module, cls)
    for name, (module, cls) in QUANT_CONFIGS.items():
        _vllm.register_quantization_config(name, module, cls)
    for name, (path, opt_in) in ATTENTION_BACKENDS.items():
        if opt_in is None or envs.flag(opt_in):
            _vllm.register_attention_backend(name, path)
